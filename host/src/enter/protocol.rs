//! The `enter` wire protocol, version 1: what `planet-image enter` (the client, on the host)
//! and planet-init (the server, in the guest) say over the virtio-serial port.
//!
//! A virtio-serial port is a byte pipe that outlives connections: the guest keeps its end
//! open across sessions, and a client that dies mid-frame leaves half a frame behind. So
//! every session starts with an 8-byte [`MAGIC`] the reader hunts for, discarding everything
//! before it, and both ends check lengths before they allocate.
//!
//! ```text
//! session start:  MAGIC frame(HELLO)             client → server
//!                 MAGIC frame(WELCOME)           server → client (echoes the client's nonce)
//! frame:          type:u8 length:u32be payload[length]      length ≤ MAX_PAYLOAD
//! ```
//!
//! | type | name | direction | payload |
//! |---|---|---|---|
//! | 0x01 | HELLO | c→s | version:u16 nonce:[8] flags:u16 (bit 0: tty) rows:u16 cols:u16 term:str16 argc:u16 argv:str16… |
//! | 0x02 | WELCOME | s→c | version:u16 nonce:[8] |
//! | 0x10 | STDIN | c→s | bytes; empty: end of input (on a terminal: its EOF character, ^D) |
//! | 0x11 | STDOUT | s→c | bytes (the terminal's output in tty mode) |
//! | 0x12 | STDERR | s→c | bytes |
//! | 0x20 | RESIZE | c→s | rows:u16 cols:u16 |
//! | 0x30 | EXIT | s→c | code:i32 signal:i32 (0: exited normally; else the signal that killed it, code = 128+signal) |
//! | 0x31 | ERROR | s→c | status:u8 (what the client should exit with: 126, 127 or 255) message:utf-8 |
//!
//! `str16` is a u16 big-endian length and that many bytes; all integers are big-endian.
//! An empty argv runs the container's login shell. The server answers a HELLO whose version and
//! nonce it can read with a WELCOME carrying its own version, then either an ERROR (wrong
//! version, malformed request, no container, the command cannot run) or the command's output
//! followed by EXIT. Nothing else is accepted: an unknown type, an oversized length or a
//! malformed payload ends the session with an ERROR, and the server hunts for the next MAGIC
//! (a MAGIC between frames is a new session's and is read as such). A client that goes away
//! ends its session: the command is hung up (SIGHUP, then SIGKILL a few seconds later).
//! A version change bumps [`VERSION`]; the HELLO and WELCOME keep version and nonce first.

use std::fmt;

/// Marks the start of a session in either direction.
pub const MAGIC: [u8; 8] = *b"\x89PLENTER";
pub const VERSION: u16 = 1;
/// Largest payload accepted; a length above it is an error, not an allocation.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Largest data frame anyone sends (output is split into frames of at most this).
pub const DATA_CHUNK: usize = 32 * 1024;
const HEADER: usize = 5;
/// Bounds of a request, checked by both ends.
pub const MAX_ARGS: usize = 4096;
pub const MAX_TERM: usize = 64;

pub const T_HELLO: u8 = 0x01;
pub const T_WELCOME: u8 = 0x02;
pub const T_STDIN: u8 = 0x10;
pub const T_STDOUT: u8 = 0x11;
pub const T_STDERR: u8 = 0x12;
pub const T_RESIZE: u8 = 0x20;
pub const T_EXIT: u8 = 0x30;
pub const T_ERROR: u8 = 0x31;

/// What the client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// Chosen by the client, echoed in the WELCOME: output from an older session never
    /// passes for this one's.
    pub nonce: [u8; 8],
    pub tty: bool,
    pub rows: u16,
    pub cols: u16,
    /// The client's TERM (tty mode); empty: none.
    pub term: String,
    /// The command; empty: the container's login shell.
    pub argv: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome { version: u16, nonce: [u8; 8] },
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Resize { rows: u16, cols: u16 },
    Exit { code: i32, signal: i32 },
    Error { status: u8, message: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    UnknownType(u8),
    Oversized {
        kind: u8,
        len: u64,
    },
    Malformed {
        kind: u8,
        what: &'static str,
    },
    /// A HELLO whose version and nonce could be read, but not the rest: the server still
    /// answers with a WELCOME, so the client sees why.
    BadHello {
        version: u16,
        nonce: [u8; 8],
        what: &'static str,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownType(t) => write!(f, "unknown frame type 0x{t:02x}"),
            ProtocolError::Oversized { kind, len } => {
                write!(f, "frame type 0x{kind:02x} of {len} bytes is over the limit of {MAX_PAYLOAD}")
            }
            ProtocolError::Malformed { kind, what } => write!(f, "malformed frame type 0x{kind:02x}: {what}"),
            ProtocolError::BadHello { what, .. } => write!(f, "malformed request: {what}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

fn known(kind: u8) -> bool {
    matches!(kind, T_HELLO | T_WELCOME | T_STDIN | T_STDOUT | T_STDERR | T_RESIZE | T_EXIT | T_ERROR)
}

impl Frame {
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => T_HELLO,
            Frame::Welcome { .. } => T_WELCOME,
            Frame::Stdin(_) => T_STDIN,
            Frame::Stdout(_) => T_STDOUT,
            Frame::Stderr(_) => T_STDERR,
            Frame::Resize { .. } => T_RESIZE,
            Frame::Exit { .. } => T_EXIT,
            Frame::Error { .. } => T_ERROR,
        }
    }

    /// Appends the frame (with [`MAGIC`] in front of HELLO and WELCOME). Payloads over
    /// [`MAX_PAYLOAD`] are the caller's bug; they are cut, never sent oversized: data is
    /// chunked by [`DATA_CHUNK`], requests checked by [`Hello::check`], messages truncated.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut p = Vec::new();
        match self {
            Frame::Hello(h) => {
                out.extend_from_slice(&MAGIC);
                p.extend_from_slice(&h.version.to_be_bytes());
                p.extend_from_slice(&h.nonce);
                p.extend_from_slice(&u16::from(h.tty).to_be_bytes());
                p.extend_from_slice(&h.rows.to_be_bytes());
                p.extend_from_slice(&h.cols.to_be_bytes());
                put_str16(&mut p, h.term.as_bytes());
                p.extend_from_slice(&(h.argv.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
                for a in h.argv.iter().take(usize::from(u16::MAX)) {
                    put_str16(&mut p, a);
                }
            }
            Frame::Welcome { version, nonce } => {
                out.extend_from_slice(&MAGIC);
                p.extend_from_slice(&version.to_be_bytes());
                p.extend_from_slice(nonce);
            }
            Frame::Stdin(d) | Frame::Stdout(d) | Frame::Stderr(d) => p.extend_from_slice(d),
            Frame::Resize { rows, cols } => {
                p.extend_from_slice(&rows.to_be_bytes());
                p.extend_from_slice(&cols.to_be_bytes());
            }
            Frame::Exit { code, signal } => {
                p.extend_from_slice(&code.to_be_bytes());
                p.extend_from_slice(&signal.to_be_bytes());
            }
            Frame::Error { status, message } => {
                p.push(*status);
                let mut end = message.len().min(MAX_PAYLOAD - 1);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                p.extend_from_slice(message.as_bytes().get(..end).unwrap_or_default());
            }
        }
        p.truncate(MAX_PAYLOAD);
        out.push(self.kind());
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(&p);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

fn put_str16(p: &mut Vec<u8>, s: &[u8]) {
    let s = s.get(..s.len().min(usize::from(u16::MAX))).unwrap_or_default();
    p.extend_from_slice(&(s.len() as u16).to_be_bytes());
    p.extend_from_slice(s);
}

impl Hello {
    /// Whether a request fits the limits (the client checks before sending, the server on
    /// receipt): the encoded HELLO within [`MAX_PAYLOAD`], at most [`MAX_ARGS`] arguments
    /// without NUL bytes, a printable TERM of at most [`MAX_TERM`] bytes.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.argv.len() > MAX_ARGS {
            return Err("too many arguments");
        }
        if self.argv.iter().any(|a| a.contains(&0)) {
            return Err("an argument contains a NUL byte");
        }
        if self.argv.first().is_some_and(|a| a.is_empty()) {
            return Err("the command is empty");
        }
        if self.term.len() > MAX_TERM || !self.term.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("TERM is too long or not printable");
        }
        let size = 18 + self.term.len() + self.argv.iter().map(|a| 2 + a.len()).sum::<usize>();
        if size > MAX_PAYLOAD {
            return Err("the command line is too long");
        }
        Ok(())
    }
}

/// A cursor over a payload; every read is bounds-checked.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.b.get(..n)?, self.b.get(n..)?);
        self.b = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).and_then(|s| s.try_into().ok()).map(u16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4).and_then(|s| s.try_into().ok()).map(i32::from_be_bytes)
    }
    fn str16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn done(&self) -> bool {
        self.b.is_empty()
    }
}

fn parse_hello(p: &[u8]) -> Result<Hello, ProtocolError> {
    let mut c = Cursor { b: p };
    let head = (c.u16(), c.take(8).and_then(|n| <[u8; 8]>::try_from(n).ok()));
    let (Some(version), Some(nonce)) = head else {
        return Err(ProtocolError::Malformed { kind: T_HELLO, what: "too short for a version and nonce" });
    };
    let bad = |what| ProtocolError::BadHello { version, nonce, what };
    if version != VERSION {
        // Its layout past the nonce is unknown: only the version is answered.
        return Ok(Hello { version, nonce, tty: false, rows: 0, cols: 0, term: String::new(), argv: Vec::new() });
    }
    let flags = c.u16().ok_or_else(|| bad("truncated flags"))?;
    let rows = c.u16().ok_or_else(|| bad("truncated window size"))?;
    let cols = c.u16().ok_or_else(|| bad("truncated window size"))?;
    let term = c.str16().ok_or_else(|| bad("truncated TERM"))?;
    let term = String::from_utf8(term.to_vec()).map_err(|_| bad("TERM is not UTF-8"))?;
    let argc = c.u16().ok_or_else(|| bad("truncated argument count"))?;
    if usize::from(argc) > MAX_ARGS {
        return Err(bad("too many arguments"));
    }
    let mut argv = Vec::new();
    for _ in 0..argc {
        argv.push(c.str16().ok_or_else(|| bad("truncated argument"))?.to_vec());
    }
    if !c.done() {
        return Err(bad("trailing bytes"));
    }
    let h = Hello { version, nonce, tty: flags & 1 != 0, rows, cols, term, argv };
    h.check().map_err(bad)?;
    Ok(h)
}

fn parse(kind: u8, p: &[u8]) -> Result<Frame, ProtocolError> {
    let bad = |what| ProtocolError::Malformed { kind, what };
    let mut c = Cursor { b: p };
    let f = match kind {
        T_HELLO => return parse_hello(p).map(Frame::Hello),
        T_WELCOME => {
            let version = c.u16().ok_or_else(|| bad("truncated version"))?;
            let nonce = c.take(8).and_then(|n| <[u8; 8]>::try_from(n).ok()).ok_or_else(|| bad("truncated nonce"))?;
            Frame::Welcome { version, nonce }
        }
        T_STDIN => return Ok(Frame::Stdin(p.to_vec())),
        T_STDOUT => return Ok(Frame::Stdout(p.to_vec())),
        T_STDERR => return Ok(Frame::Stderr(p.to_vec())),
        T_RESIZE => {
            let rows = c.u16().ok_or_else(|| bad("truncated"))?;
            let cols = c.u16().ok_or_else(|| bad("truncated"))?;
            Frame::Resize { rows, cols }
        }
        T_EXIT => {
            let code = c.i32().ok_or_else(|| bad("truncated"))?;
            let signal = c.i32().ok_or_else(|| bad("truncated"))?;
            Frame::Exit { code, signal }
        }
        T_ERROR => {
            let status = c.take(1).and_then(|s| s.first().copied()).ok_or_else(|| bad("empty"))?;
            let message = String::from_utf8_lossy(c.take(c.b.len()).unwrap_or_default()).into_owned();
            Frame::Error { status, message }
        }
        other => return Err(ProtocolError::UnknownType(other)),
    };
    if !c.done() {
        return Err(bad("trailing bytes"));
    }
    Ok(f)
}

/// A streaming frame reader. It starts out hunting for [`MAGIC`]; after an error it hunts
/// again from where the bad frame began, so a new session's MAGIC right behind the garbage is
/// still found. Its buffer holds at most one frame plus the caller's last read.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    synced: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether a MAGIC was seen and frames are being read.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Forgets everything (the peer went away): hunt for a MAGIC in what comes next.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.synced = false;
    }

    /// Hunts for the next MAGIC, keeping the buffered bytes (after a protocol error).
    pub fn resync(&mut self) {
        self.synced = false;
    }

    /// The next complete frame; `Ok(None)` when more bytes are needed. After an error the
    /// decoder is hunting again ([`Decoder::resync`]).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if !self.synced {
            match find(&self.buf, &MAGIC) {
                Some(i) => {
                    self.buf.drain(..i + MAGIC.len());
                    self.synced = true;
                }
                None => {
                    // Keep a possible MAGIC prefix at the end.
                    let keep = self.buf.len().min(MAGIC.len() - 1);
                    self.buf.drain(..self.buf.len() - keep);
                    return Ok(None);
                }
            }
        }
        // A MAGIC between frames marks a new session (the type 0x89 means nothing else).
        while self.buf.first() == Some(&MAGIC[0]) {
            let n = self.buf.len().min(MAGIC.len());
            if self.buf.get(..n) != MAGIC.get(..n) {
                break;
            }
            if n < MAGIC.len() {
                return Ok(None);
            }
            self.buf.drain(..MAGIC.len());
        }
        let Some(&kind) = self.buf.first() else { return Ok(None) };
        if !known(kind) {
            self.synced = false;
            return Err(ProtocolError::UnknownType(kind));
        }
        let Some(len) = self.buf.get(1..HEADER).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_PAYLOAD {
            self.synced = false;
            return Err(ProtocolError::Oversized { kind, len: len as u64 });
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..HEADER + len).collect();
        let r = parse(kind, frame.get(HEADER..).unwrap_or_default());
        if r.is_err() {
            self.synced = false;
        }
        r.map(Some)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits output into data frames of at most [`DATA_CHUNK`] bytes.
pub fn encode_data(stderr: bool, data: &[u8], out: &mut Vec<u8>) {
    for chunk in data.chunks(DATA_CHUNK) {
        let f = if stderr { Frame::Stderr(chunk.to_vec()) } else { Frame::Stdout(chunk.to_vec()) };
        f.encode(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: VERSION,
            nonce: *b"12345678",
            tty: true,
            rows: 40,
            cols: 132,
            term: "xterm-256color".into(),
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo \xff; exit 7".to_vec()],
        }
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Hello(hello()),
            Frame::Hello(Hello { tty: false, term: String::new(), argv: vec![], ..hello() }),
            Frame::Welcome { version: VERSION, nonce: [9; 8] },
            Frame::Stdin(b"input".to_vec()),
            Frame::Stdin(vec![]),
            Frame::Stdout(vec![0, 1, 2, 255]),
            Frame::Stderr(b"err\n".to_vec()),
            Frame::Resize { rows: 24, cols: 80 },
            Frame::Exit { code: 137, signal: 9 },
            Frame::Exit { code: -1, signal: 0 },
            Frame::Error { status: 255, message: "the Planet container is not running".into() },
        ]
    }

    fn decode_all(d: &mut Decoder) -> Vec<Result<Frame, ProtocolError>> {
        let mut v = Vec::new();
        for _ in 0..1000 {
            match d.next_frame() {
                Ok(None) => break,
                r => v.push(r.map(|f| f.unwrap_or(Frame::Stdin(vec![])))),
            }
        }
        v
    }

    #[test]
    fn every_frame_round_trips_whole_and_byte_by_byte() {
        let mut wire = MAGIC.to_vec();
        for f in all_frames() {
            f.encode(&mut wire);
        }
        let mut d = Decoder::new();
        d.push(&wire);
        let got: Vec<Frame> = decode_all(&mut d).into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(got, all_frames());

        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, all_frames());
    }

    #[test]
    fn garbage_before_the_magic_is_skipped_and_garbage_after_it_is_an_error() {
        let mut d = Decoder::new();
        d.push(b"line noise \x89PLEN");
        assert_eq!(d.next_frame(), Ok(None));
        assert!(!d.synced());
        d.push(b"TER");
        let mut rest = Vec::new();
        Frame::Resize { rows: 1, cols: 2 }.encode(&mut rest);
        d.push(&rest);
        assert_eq!(d.next_frame(), Ok(Some(Frame::Resize { rows: 1, cols: 2 })));

        // An unknown type, then a new session's hello right behind it.
        let mut d = Decoder::new();
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(b"\x7fjunk");
        Frame::Hello(hello()).encode(&mut wire);
        d.push(&wire);
        assert_eq!(d.next_frame(), Err(ProtocolError::UnknownType(0x7f)));
        assert_eq!(d.next_frame(), Ok(Some(Frame::Hello(hello()))));
    }

    #[test]
    fn random_garbage_never_panics_and_a_hello_afterwards_is_found() {
        // A small xorshift: deterministic, no dependency.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..200 {
            let mut d = Decoder::new();
            let mut wire = Vec::new();
            if round % 2 == 0 {
                wire.extend_from_slice(&MAGIC);
            }
            for _ in 0..(next() % 4096) {
                let b = next() as u8;
                // Mostly known frame types, so lengths and payloads get exercised too.
                wire.push(if next() % 3 == 0 {
                    [T_HELLO, T_EXIT, T_RESIZE, T_WELCOME, T_ERROR][b as usize % 5]
                } else {
                    b
                });
            }
            d.push(&wire);
            let _ = decode_all(&mut d);
            assert!(d.buf.len() <= HEADER + MAX_PAYLOAD, "the buffer is bounded");
            d.reset();
            d.push(&Frame::Hello(hello()).to_bytes());
            assert_eq!(d.next_frame(), Ok(Some(Frame::Hello(hello()))), "round {round}");
        }
    }

    #[test]
    fn truncated_frames_wait_for_more_and_an_abandoned_one_is_dropped_by_reset() {
        let wire = Frame::Hello(hello()).to_bytes();
        for cut in 0..wire.len() {
            let mut d = Decoder::new();
            d.push(&wire[..cut]);
            assert_eq!(d.next_frame(), Ok(None), "cut at {cut}");
            // The client went away mid-frame; a new one starts over.
            d.reset();
            d.push(&wire);
            assert_eq!(d.next_frame(), Ok(Some(Frame::Hello(hello()))));
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_any_allocation() {
        let mut d = Decoder::new();
        let mut wire = MAGIC.to_vec();
        wire.push(T_STDIN);
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        d.push(&wire);
        assert_eq!(d.next_frame(), Err(ProtocolError::Oversized { kind: T_STDIN, len: u32::MAX as u64 }));
        assert!(!d.synced());
        let mut d = Decoder::new();
        let mut wire = MAGIC.to_vec();
        wire.push(T_STDOUT);
        wire.extend_from_slice(&((MAX_PAYLOAD + 1) as u32).to_be_bytes());
        d.push(&wire);
        assert!(matches!(d.next_frame(), Err(ProtocolError::Oversized { .. })));
        // Exactly the limit is fine.
        let mut d = Decoder::new();
        let mut wire = MAGIC.to_vec();
        Frame::Stdout(vec![7; MAX_PAYLOAD]).encode(&mut wire);
        d.push(&wire);
        assert_eq!(d.next_frame(), Ok(Some(Frame::Stdout(vec![7; MAX_PAYLOAD]))));
    }

    #[test]
    fn malformed_payloads_are_errors_and_bad_hellos_keep_their_nonce() {
        let frame = |kind: u8, payload: &[u8]| {
            let mut w = MAGIC.to_vec();
            w.push(kind);
            w.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            w.extend_from_slice(payload);
            let mut d = Decoder::new();
            d.push(&w);
            d.next_frame()
        };
        assert!(matches!(frame(T_RESIZE, &[0, 1, 2]), Err(ProtocolError::Malformed { .. })));
        assert!(matches!(frame(T_RESIZE, &[0, 1, 2, 3, 4]), Err(ProtocolError::Malformed { .. })));
        assert!(matches!(frame(T_EXIT, &[0; 7]), Err(ProtocolError::Malformed { .. })));
        assert!(matches!(frame(T_ERROR, &[]), Err(ProtocolError::Malformed { .. })));
        assert!(matches!(frame(T_HELLO, &[0, 1, 2]), Err(ProtocolError::Malformed { .. })));
        // Version and nonce readable, an argument count beyond the payload.
        let mut p = VERSION.to_be_bytes().to_vec();
        p.extend_from_slice(b"nonce-42");
        p.extend_from_slice(&[0, 0, 0, 24, 0, 80, 0, 0, 0, 3, 0, 1, b'x']);
        assert_eq!(
            frame(T_HELLO, &p),
            Err(ProtocolError::BadHello { version: VERSION, nonce: *b"nonce-42", what: "truncated argument" })
        );
        // Another version: only version and nonce are read, for the answer.
        let mut p = 2u16.to_be_bytes().to_vec();
        p.extend_from_slice(b"nonce-43whatever follows");
        assert!(matches!(frame(T_HELLO, &p), Ok(Some(Frame::Hello(Hello { version: 2, .. })))));
        // A NUL inside an argument, an empty command, a control character in TERM.
        for h in [
            Hello { argv: vec![b"a\0b".to_vec()], ..hello() },
            Hello { argv: vec![vec![]], ..hello() },
            Hello { term: "x\ny".into(), ..hello() },
        ] {
            assert!(h.check().is_err());
            assert!(matches!(frame(T_HELLO, &Frame::Hello(h).to_bytes()[13..]), Err(ProtocolError::BadHello { .. })));
        }
    }

    #[test]
    fn long_command_lines_are_refused_by_check_and_output_is_chunked() {
        let h = Hello { argv: vec![vec![b'a'; 40_000], vec![b'b'; 40_000]], ..hello() };
        assert_eq!(h.check(), Err("the command line is too long"));
        let mut out = Vec::new();
        encode_data(true, &vec![1u8; DATA_CHUNK * 2 + 5], &mut out);
        let mut d = Decoder::new();
        d.push(&MAGIC);
        d.push(&out);
        let sizes: Vec<usize> = decode_all(&mut d)
            .into_iter()
            .map(|f| match f {
                Ok(Frame::Stderr(b)) => b.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [DATA_CHUNK, DATA_CHUNK, 5]);
        let e = Frame::Error { status: 1, message: "é".repeat(MAX_PAYLOAD) }.to_bytes();
        assert!(e.len() <= HEADER + MAX_PAYLOAD);
    }
}
