//! Signed update bundles: what `planet-image bundle` writes and planet-init verifies before it
//! fills the other slot.
//!
//! Keys and signatures are minisign's (Ed25519, prehashed with BLAKE2b-512), so anyone can check
//! a bundle's signed part with the `minisign` tool. The bundle file (format 1, integers
//! little-endian):
//!
//! - bytes `[0, 4096)`, the prelude: magic `PLBUNDLE`, u32 format, u32 length of the signature
//!   text, the signature text (a `.minisig` file: untrusted comment, signature, trusted comment,
//!   global signature), zero padding;
//! - from byte 4096 to the end, the signed message: u32 header length, the JSON header, then the
//!   sections (rootfs, vmlinuz, initramfs) at 4096-aligned absolute offsets, zero padding
//!   between them, the file ending right after the last one.
//!
//! The trusted comment, `planet-bundle format=1 release=R bytes=N[ expires=T][ revokes=ID,…][
//! head=SHA256]`, tells a verifier the release, the total size, when the bundle stops being
//! valid (Unix seconds), which older keys it revokes and the digest of the header, from the
//! first 4096 bytes alone, authenticated by the global signature. (A machine older than the
//! optional fields refuses bundles that carry them: it parses the comment exactly.)
//! Verification streams: nothing is held in memory but the header.
//!
//! A chunked bundle (`head=` present) carries, before the data sections, one chunk index
//! section per data section (`chunks-rootfs`, …: [`chunks`]). The header's digest in the
//! trusted comment authenticates the header, the header the indexes' digests, and the indexes
//! every chunk: a machine that fetches the prelude, header and indexes can check each chunk it
//! fetches by range before writing it, long before it has the whole file to check the signature.

pub mod assemble;
pub mod chunks;

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blake2::digest::consts::U32;
use blake2::{Blake2b, Blake2b512, Digest as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::cmp::Ordering;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The prelude's length: the signed message starts here.
pub const PRELUDE_LEN: u64 = 4096;
/// The bundle's first 8 bytes.
pub const MAGIC: &[u8; 8] = b"PLBUNDLE";
/// The bundle format this crate writes and understands.
pub const FORMAT: u32 = 1;
/// Sections start at multiples of this (absolute file offsets).
pub const SECTION_ALIGN: u64 = 4096;
/// The largest JSON header accepted: a verifier never allocates more for it.
pub const MAX_HEADER_LEN: u32 = 64 * 1024;
/// The section holding the slot's squashfs.
pub const SECTION_ROOTFS: &str = "rootfs";
/// The section holding the kernel the slot boots with.
pub const SECTION_KERNEL: &str = "vmlinuz";
/// The section holding the initramfs the slot boots with.
pub const SECTION_INITRAMFS: &str = "initramfs";
/// The sections every bundle carries, in this order.
pub const REQUIRED_SECTIONS: [&str; 3] = [SECTION_ROOTFS, SECTION_KERNEL, SECTION_INITRAMFS];
/// Where the public key that updates must be signed with lives in the initramfs.
pub const UPDATE_KEY_PATH: &str = "etc/planet/update.pub";

/// Room for the signature text in the prelude: after magic, format and length.
const SIG_TEXT_MAX: usize = PRELUDE_LEN as usize - 16;
/// minisign's algorithm tags: "Ed" keys; "ED" prehashed signatures.
const KEY_ALG: &[u8; 2] = b"Ed";
const PREHASHED_ALG: &[u8; 2] = b"ED";
const KDF_NONE: [u8; 2] = [0, 0];
const KDF_SCRYPT: &[u8; 2] = b"Sc";
const CHECKSUM_ALG: &[u8; 2] = b"B2";
const UNTRUSTED: &str = "untrusted comment: ";
const TRUSTED: &str = "trusted comment: ";
/// Secret key file: algorithms (6), salt (32), opslimit (8), memlimit (8), key id (8),
/// secret key (64), checksum (32).
const SECRET_KEY_BYTES: usize = 6 + 32 + 8 + 8 + 8 + 64 + 32;

// ---------------------------------------------------------------------------------------------
// Keys

/// An Ed25519 public key with its minisign key id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key_id: [u8; 8],
    key: VerifyingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.key_id_hex())
    }
}

impl PublicKey {
    /// Parses a minisign public key file (`untrusted comment: …` then the base64 line), or the
    /// base64 line alone (what `minisign -P` takes).
    pub fn parse(text: &str) -> Result<PublicKey> {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let line = match lines.as_slice() {
            [comment, line] if comment.starts_with("untrusted comment:") => line,
            [line] => line,
            _ => bail!(
                "not a minisign public key: expected an `untrusted comment:` line and a base64 line, got {} lines",
                lines.len()
            ),
        };
        PublicKey::from_base64(line)
    }

    /// The base64 form: `"Ed"` ‖ key id ‖ public key.
    pub fn from_base64(line: &str) -> Result<PublicKey> {
        let bytes = BASE64.decode(line.trim()).context("not a minisign public key: bad base64")?;
        ensure!(bytes.len() == 42, "not a minisign public key: {} bytes where 42 are expected", bytes.len());
        ensure!(
            &bytes[0..2] == KEY_ALG,
            "not a minisign Ed25519 public key (algorithm {:?})",
            String::from_utf8_lossy(&bytes[0..2])
        );
        let key_id: [u8; 8] = bytes[2..10].try_into().expect("8 bytes");
        let raw: [u8; 32] = bytes[10..42].try_into().expect("32 bytes");
        let key = VerifyingKey::from_bytes(&raw).context("not a valid Ed25519 public key")?;
        Ok(PublicKey { key_id, key })
    }

    /// The key id as minisign prints it: 16 upper-case hex digits of the little-endian u64.
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key_id)
    }

    pub fn key_id(&self) -> [u8; 8] {
        self.key_id
    }

    /// The base64 line.
    pub fn to_base64(&self) -> String {
        let mut bytes = Vec::with_capacity(42);
        bytes.extend_from_slice(KEY_ALG);
        bytes.extend_from_slice(&self.key_id);
        bytes.extend_from_slice(self.key.as_bytes());
        BASE64.encode(bytes)
    }

    /// The public key file, as `minisign -G` writes it.
    pub fn to_text(&self) -> String {
        format!("{UNTRUSTED}minisign public key {}\n{}\n", self.key_id_hex(), self.to_base64())
    }
}

fn key_id_hex(id: &[u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(*id))
}

/// The keys a machine trusts, oldest first: one or more minisign public keys in one file (the
/// `.pub` files concatenated). Two keys are the overlap window of a key rotation: bundles signed
/// by either are accepted while machines move to a release that trusts only the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRing {
    keys: Vec<PublicKey>,
}

/// More keys than this in one file is a mistake, not a rotation.
const MAX_KEYS: usize = 16;

impl KeyRing {
    /// Parses one or more public keys, each an optional `untrusted comment:` line and its base64
    /// line; duplicates are refused.
    pub fn parse(text: &str) -> Result<KeyRing> {
        let mut keys: Vec<PublicKey> = Vec::new();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty()).peekable();
        while let Some(line) = lines.next() {
            let b64 = if line.starts_with("untrusted comment:") {
                lines
                    .next()
                    .context("not a minisign public key: an `untrusted comment:` line without a key after it")?
            } else {
                line
            };
            let key = PublicKey::from_base64(b64).with_context(|| format!("key {} of the file", keys.len() + 1))?;
            ensure!(!keys.iter().any(|k| k.key_id == key.key_id), "key {} appears twice", key.key_id_hex());
            keys.push(key);
            ensure!(keys.len() <= MAX_KEYS, "more than {MAX_KEYS} keys in one file");
        }
        ensure!(!keys.is_empty(), "not a minisign public key: the file is empty");
        Ok(KeyRing { keys })
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The key with this id (16 hex digits as minisign prints them) and its age rank (0 =
    /// oldest).
    pub fn find(&self, key_id_hex: &str) -> Option<(usize, &PublicKey)> {
        self.keys.iter().enumerate().find(|(_, k)| k.key_id_hex().eq_ignore_ascii_case(key_id_hex))
    }

    /// The ring without the keys whose ids are listed (revoked keys).
    pub fn without(&self, revoked: &[String]) -> KeyRing {
        let keys = self.keys.iter().filter(|k| !revoked.iter().any(|r| r.eq_ignore_ascii_case(&k.key_id_hex())));
        KeyRing { keys: keys.cloned().collect() }
    }

    /// The key ids, comma-separated, oldest first.
    pub fn key_id_hex(&self) -> String {
        self.keys.iter().map(PublicKey::key_id_hex).collect::<Vec<_>>().join(",")
    }

    /// The keys' base64 lines, comma-separated (one key: exactly its line).
    pub fn to_base64(&self) -> String {
        self.keys.iter().map(PublicKey::to_base64).collect::<Vec<_>>().join(",")
    }

    /// The file: each key as `minisign -G` writes it, oldest first.
    pub fn to_text(&self) -> String {
        self.keys.iter().map(PublicKey::to_text).collect()
    }
}

impl From<PublicKey> for KeyRing {
    fn from(key: PublicKey) -> KeyRing {
        KeyRing { keys: vec![key] }
    }
}

/// An unencrypted minisign secret key.
#[derive(Clone)]
pub struct SecretKey {
    key_id: [u8; 8],
    signing: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", key_id_hex(&self.key_id))
    }
}

impl SecretKey {
    /// A key from 32 random bytes (the Ed25519 seed) and 8 random bytes (the key id).
    pub fn from_seed(seed: [u8; 32], key_id: [u8; 8]) -> SecretKey {
        SecretKey { key_id, signing: SigningKey::from_bytes(&seed) }
    }

    /// Parses a minisign secret key file. Only unencrypted keys (`minisign -G -W`, `planet-image
    /// keygen`) are accepted: an update is signed by a program, not at a password prompt.
    pub fn parse(text: &str) -> Result<SecretKey> {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let line = match lines.as_slice() {
            [comment, line] if comment.starts_with("untrusted comment:") => line,
            _ => bail!("not a minisign secret key: expected an `untrusted comment:` line and a base64 line"),
        };
        let bytes = BASE64.decode(line).context("not a minisign secret key: bad base64")?;
        ensure!(
            bytes.len() == SECRET_KEY_BYTES,
            "not a minisign secret key: {} bytes where {SECRET_KEY_BYTES} are expected",
            bytes.len()
        );
        ensure!(
            &bytes[0..2] == KEY_ALG,
            "not a minisign Ed25519 secret key (algorithm {:?})",
            String::from_utf8_lossy(&bytes[0..2])
        );
        match &bytes[2..4] {
            kdf if kdf == KDF_NONE => {}
            kdf if kdf == KDF_SCRYPT => bail!(
                "the secret key is encrypted with a password; bundles are signed with an unencrypted key: \
                 create one with `minisign -G -W` or `planet-image keygen`"
            ),
            kdf => bail!("the secret key uses an unknown key derivation {:?}", String::from_utf8_lossy(kdf)),
        }
        ensure!(
            &bytes[4..6] == CHECKSUM_ALG,
            "the secret key uses an unknown checksum {:?}",
            String::from_utf8_lossy(&bytes[4..6])
        );
        let key_id: [u8; 8] = bytes[54..62].try_into().expect("8 bytes");
        let secret: [u8; 64] = bytes[62..126].try_into().expect("64 bytes");
        let checksum = &bytes[126..158];
        // minisign 0.11 leaves the checksum of an unencrypted key zero; anything else must match.
        ensure!(
            checksum.iter().all(|b| *b == 0) || checksum == secret_checksum(&key_id, &secret),
            "the secret key's checksum does not match: the key file is corrupt"
        );
        let key = SecretKey::from_seed(secret[..32].try_into().expect("32 bytes"), key_id);
        ensure!(
            key.signing.verifying_key().as_bytes()[..] == secret[32..],
            "the secret key's public half does not match its seed: the key file is corrupt"
        );
        Ok(key)
    }

    /// The secret key file (unencrypted, as `minisign -G -W` writes it, with its checksum).
    pub fn to_text(&self) -> String {
        let secret = self.secret_bytes();
        let mut bytes = Vec::with_capacity(SECRET_KEY_BYTES);
        bytes.extend_from_slice(KEY_ALG);
        bytes.extend_from_slice(&KDF_NONE);
        bytes.extend_from_slice(CHECKSUM_ALG);
        bytes.extend_from_slice(&[0; 32 + 8 + 8]); // no KDF: salt, opslimit, memlimit unused
        bytes.extend_from_slice(&self.key_id);
        bytes.extend_from_slice(&secret);
        bytes.extend_from_slice(&secret_checksum(&self.key_id, &secret));
        format!("{UNTRUSTED}minisign secret key\n{}\n", BASE64.encode(bytes))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey { key_id: self.key_id, key: self.signing.verifying_key() }
    }

    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.key_id)
    }

    /// The 64-byte secret key: seed ‖ public key.
    fn secret_bytes(&self) -> [u8; 64] {
        let mut out = [0; 64];
        out[..32].copy_from_slice(self.signing.as_bytes());
        out[32..].copy_from_slice(self.signing.verifying_key().as_bytes());
        out
    }

    /// A minisign prehashed signature of a message whose BLAKE2b-512 is `hash`, with its trusted
    /// comment: the `.minisig` text.
    pub fn sign_prehashed(&self, hash: &[u8; 64], untrusted_comment: &str, trusted_comment: &str) -> String {
        let signature = self.signing.sign(hash).to_bytes();
        let mut global_message = signature.to_vec();
        global_message.extend_from_slice(trusted_comment.as_bytes());
        let global = self.signing.sign(&global_message).to_bytes();
        let mut sig_line = Vec::with_capacity(74);
        sig_line.extend_from_slice(PREHASHED_ALG);
        sig_line.extend_from_slice(&self.key_id);
        sig_line.extend_from_slice(&signature);
        format!(
            "{UNTRUSTED}{untrusted_comment}\n{}\n{TRUSTED}{trusted_comment}\n{}\n",
            BASE64.encode(sig_line),
            BASE64.encode(global)
        )
    }
}

/// BLAKE2b-256 of the algorithm, the key id and the secret key, as minisign checks it.
fn secret_checksum(key_id: &[u8; 8], secret: &[u8; 64]) -> [u8; 32] {
    let mut h = Blake2b::<U32>::new();
    h.update(KEY_ALG);
    h.update(key_id);
    h.update(secret);
    h.finalize().into()
}

// ---------------------------------------------------------------------------------------------
// Signatures (.minisig text)

/// A parsed `.minisig` text.
struct Minisig {
    untrusted_comment: String,
    key_id: [u8; 8],
    signature: [u8; 64],
    trusted_comment: String,
    global_signature: [u8; 64],
}

/// Parses exactly four `\n`-terminated lines, as minisign writes them.
fn parse_minisig(text: &str) -> Result<Minisig> {
    let body = text.strip_suffix('\n').context("the signature text does not end with a newline")?;
    let lines: Vec<&str> = body.split('\n').collect();
    ensure!(lines.len() == 4, "the signature text has {} lines, not 4", lines.len());
    ensure!(!text.chars().any(|c| c.is_control() && c != '\n'), "the signature text holds control characters");
    let untrusted =
        lines[0].strip_prefix(UNTRUSTED).context("the signature's first line is not an untrusted comment")?;
    let sig = BASE64.decode(lines[1]).context("the signature line is not base64")?;
    ensure!(sig.len() == 74, "the signature line holds {} bytes, not 74", sig.len());
    match &sig[0..2] {
        alg if alg == PREHASHED_ALG => {}
        alg if alg == KEY_ALG => bail!("the signature is not prehashed (minisign -S without -H, algorithm Ed)"),
        alg => bail!("unknown signature algorithm {:?}", String::from_utf8_lossy(alg)),
    }
    let trusted = lines[2].strip_prefix(TRUSTED).context("the signature's third line is not a trusted comment")?;
    let global = BASE64.decode(lines[3]).context("the global signature line is not base64")?;
    ensure!(global.len() == 64, "the global signature holds {} bytes, not 64", global.len());
    Ok(Minisig {
        untrusted_comment: untrusted.to_string(),
        key_id: sig[2..10].try_into().expect("8 bytes"),
        signature: sig[10..74].try_into().expect("64 bytes"),
        trusted_comment: trusted.to_string(),
        global_signature: global.try_into().expect("64 bytes"),
    })
}

// ---------------------------------------------------------------------------------------------
// The prelude

/// What the first 4096 bytes of a bundle say.
#[derive(Debug, Clone)]
pub struct Prelude {
    pub format: u32,
    pub release: String,
    /// The size of the whole bundle file.
    pub total_bytes: u64,
    /// The id of the key that signed the bundle (16 hex digits, as minisign prints it).
    pub key_id: String,
    /// Unix seconds after which machines refuse the bundle (`bundle --expires`).
    pub expires: Option<u64>,
    /// Key ids (16 hex digits) the signer revokes: machines that trust the signer and see this
    /// stop trusting those keys for good (only keys older than the signer in their key ring).
    pub revokes: Vec<String>,
    /// SHA-256 (lower-case hex) of the header (its u32 length and JSON): chunked bundles only.
    pub head: Option<String>,
    /// The minisign signature text: a `.minisig` file for the bytes from `PRELUDE_LEN` on.
    pub signature_text: String,
    signature: [u8; 64],
    /// The key the prelude was checked against; `None` when read without one.
    key: Option<VerifyingKey>,
}

impl Prelude {
    /// Whether the prelude's signature was checked against a trusted key (`read_prelude`).
    pub fn is_verified(&self) -> bool {
        self.key.is_some()
    }
}

/// Whether `first` starts like a bundle.
pub fn is_bundle(first: &[u8]) -> bool {
    first.starts_with(MAGIC)
}

/// Parses the first `PRELUDE_LEN` bytes (fewer → error "truncated"), checks magic and format,
/// parses the signature text, checks its key id against `key` and verifies the global signature
/// over the trusted comment, which gives the release and the total size.
pub fn read_prelude(first: &[u8], key: &PublicKey) -> Result<Prelude> {
    let (format, text, sig) = read_envelope(first)?;
    if sig.key_id != key.key_id {
        bail!("signed by another key (key id {}, this machine trusts {})", key_id_hex(&sig.key_id), key.key_id_hex());
    }
    verify_prelude(format, text, sig, key)
}

/// `read_prelude` against whichever key of `ring` signed the bundle.
pub fn read_prelude_ring(first: &[u8], ring: &KeyRing) -> Result<Prelude> {
    let (format, text, sig) = read_envelope(first)?;
    let Some(key) = ring.keys.iter().find(|k| k.key_id == sig.key_id) else {
        if ring.keys.is_empty() {
            bail!("signed by key {}, and this machine trusts no key any more (all revoked)", key_id_hex(&sig.key_id));
        }
        bail!("signed by another key (key id {}, this machine trusts {})", key_id_hex(&sig.key_id), ring.key_id_hex());
    };
    verify_prelude(format, text, sig, key)
}

fn verify_prelude(format: u32, text: String, sig: Minisig, key: &PublicKey) -> Result<Prelude> {
    let mut global_message = sig.signature.to_vec();
    global_message.extend_from_slice(sig.trusted_comment.as_bytes());
    key.key.verify_strict(&global_message, &Signature::from_bytes(&sig.global_signature)).map_err(|_| {
        anyhow::anyhow!(
            "the signature of the trusted comment does not match: the bundle's prelude is corrupt or was altered"
        )
    })?;
    finish_prelude(format, text, sig, Some(key.key))
}

/// Parses the prelude like `read_prelude` but checks no signature: what a bundle claims, for
/// `inspect` without a key. Nothing it returns is authenticated.
pub fn read_prelude_unverified(first: &[u8]) -> Result<Prelude> {
    let (format, text, sig) = read_envelope(first)?;
    finish_prelude(format, text, sig, None)
}

fn read_envelope(first: &[u8]) -> Result<(u32, String, Minisig)> {
    if first.len() < PRELUDE_LEN as usize {
        if first.len() >= MAGIC.len() && !is_bundle(first) {
            bail!("not a planet update bundle (bad magic)");
        }
        bail!("truncated: {} bytes, shorter than the {PRELUDE_LEN}-byte prelude", first.len());
    }
    let first = &first[..PRELUDE_LEN as usize];
    if !is_bundle(first) {
        bail!("not a planet update bundle (bad magic)");
    }
    let format = u32::from_le_bytes(first[8..12].try_into().expect("4 bytes"));
    if format > FORMAT {
        bail!("bundle format {format} is newer than this planet-init understands ({FORMAT})");
    }
    ensure!(format == FORMAT, "bad bundle format {format}");
    let sig_len = u32::from_le_bytes(first[12..16].try_into().expect("4 bytes")) as usize;
    ensure!(
        (1..=SIG_TEXT_MAX).contains(&sig_len),
        "bad prelude: a signature of {sig_len} bytes does not fit (at most {SIG_TEXT_MAX})"
    );
    let text = std::str::from_utf8(&first[16..16 + sig_len]).context("bad prelude: the signature is not UTF-8")?;
    ensure!(first[16 + sig_len..].iter().all(|b| *b == 0), "bad prelude: the padding after the signature is not zero");
    let sig = parse_minisig(text).context("bad prelude")?;
    Ok((format, text.to_string(), sig))
}

/// The trusted comment's fields, cross-checked with the rest of the prelude.
fn finish_prelude(format: u32, text: String, sig: Minisig, key: Option<VerifyingKey>) -> Result<Prelude> {
    let (tc_format, release, total_bytes, claims) = parse_trusted_comment(&sig.trusted_comment)?;
    ensure!(tc_format == format, "the prelude says format {format}, its signed comment format {tc_format}");
    ensure!(
        sig.untrusted_comment == untrusted_comment(&release),
        "bad prelude: unexpected untrusted comment {:?}",
        sig.untrusted_comment
    );
    ensure!(
        total_bytes >= PRELUDE_LEN + 4 + SECTION_ALIGN,
        "bad prelude: a bundle of {total_bytes} bytes cannot hold a header and sections"
    );
    Ok(Prelude {
        format,
        release,
        total_bytes,
        key_id: key_id_hex(&sig.key_id),
        expires: claims.expires,
        revokes: claims.revokes,
        head: claims.head,
        signature_text: text,
        signature: sig.signature,
        key,
    })
}

/// The optional signed claims of a bundle, beyond its release and size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// Unix seconds after which machines refuse the bundle.
    pub expires: Option<u64>,
    /// Ids (16 hex digits) of older keys the signing key revokes.
    pub revokes: Vec<String>,
    /// The header's SHA-256: set by the writer of a chunked bundle, never by its caller.
    pub head: Option<String>,
}

/// At most this many revoked key ids in one bundle (they share the prelude with the signature).
pub const MAX_REVOKES: usize = 16;

fn trusted_comment(release: &str, total_bytes: u64, claims: &Claims) -> String {
    let mut tc = format!("planet-bundle format={FORMAT} release={release} bytes={total_bytes}");
    if let Some(t) = claims.expires {
        tc.push_str(&format!(" expires={t}"));
    }
    if !claims.revokes.is_empty() {
        tc.push_str(&format!(" revokes={}", claims.revokes.join(",")));
    }
    if let Some(h) = &claims.head {
        tc.push_str(&format!(" head={h}"));
    }
    tc
}

fn untrusted_comment(release: &str) -> String {
    format!("planet update bundle, release {release}")
}

/// `planet-bundle format=F release=R bytes=N[ expires=T][ revokes=ID,…][ head=SHA256]`,
/// exactly (it is re-made and compared).
fn parse_trusted_comment(tc: &str) -> Result<(u32, String, u64, Claims)> {
    let bad = || format!("the signature's trusted comment {tc:?} is not a planet bundle's");
    let rest = tc.strip_prefix("planet-bundle ").with_context(bad)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let [f, r, b, optional @ ..] = fields.as_slice() else { bail!(bad()) };
    let format: u32 = f.strip_prefix("format=").and_then(|v| v.parse().ok()).with_context(bad)?;
    let release = r.strip_prefix("release=").with_context(bad)?.to_string();
    let bytes: u64 = b.strip_prefix("bytes=").and_then(|v| v.parse().ok()).with_context(bad)?;
    check_release(&release).with_context(bad)?;
    let mut claims = Claims::default();
    for field in optional {
        if let Some(v) = field.strip_prefix("expires=") {
            ensure!(claims.expires.is_none() && claims.revokes.is_empty(), bad());
            claims.expires = Some(v.parse().ok().with_context(bad)?);
        } else if let Some(v) = field.strip_prefix("revokes=") {
            ensure!(claims.revokes.is_empty() && claims.head.is_none(), bad());
            claims.revokes = v.split(',').map(str::to_string).collect();
            check_revokes(&claims.revokes).with_context(bad)?;
        } else if let Some(v) = field.strip_prefix("head=") {
            ensure!(claims.head.is_none() && is_sha256_hex(v), bad());
            claims.head = Some(v.to_string());
        } else {
            bail!(bad());
        }
    }
    ensure!(trusted_comment(&release, bytes, &claims) == tc, bad());
    Ok((format, release, bytes, claims))
}

/// Revoked key ids: 1 to `MAX_REVOKES` of them, 16 upper-case hex digits each, no repeats.
fn check_revokes(ids: &[String]) -> Result<()> {
    ensure!((1..=MAX_REVOKES).contains(&ids.len()), "1 to {MAX_REVOKES} revoked keys, not {}", ids.len());
    for (i, id) in ids.iter().enumerate() {
        ensure!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
            "bad key id {id:?}: 16 hex digits (A-F upper case), as minisign prints it"
        );
        ensure!(!ids[..i].contains(id), "key id {id} appears twice");
    }
    Ok(())
}

/// A release version: 1-64 characters of `A-Z a-z 0-9 . - _ + ~`, starting with a letter or a
/// digit (it goes into the trusted comment, boot entries and file names).
pub fn check_release(release: &str) -> Result<()> {
    ensure!(
        planet_config::is_version_text(release),
        "release version {release:?} is not valid: use 1-64 characters of A-Z a-z 0-9 . - _ + ~, \
         starting with a letter or a digit"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The signed part

/// Incremental verification of the signed part: feed every byte from `PRELUDE_LEN` to the end.
pub struct Verifier {
    hasher: Blake2b512,
    signature: Signature,
    key: Option<VerifyingKey>,
    expected: u64,
    fed: u64,
}

impl Verifier {
    pub fn new(prelude: &Prelude) -> Verifier {
        Verifier {
            hasher: Blake2b512::new(),
            signature: Signature::from_bytes(&prelude.signature),
            key: prelude.key,
            expected: prelude.total_bytes.saturating_sub(PRELUDE_LEN),
            fed: 0,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.fed += bytes.len() as u64;
    }

    /// Bytes fed so far.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    pub fn finish(self) -> Result<()> {
        if self.fed < self.expected {
            bail!("truncated: {} bytes, the signature says {}", self.fed + PRELUDE_LEN, self.expected + PRELUDE_LEN);
        }
        ensure!(
            self.fed == self.expected,
            "{} bytes, the signature says {}: data was appended",
            self.fed + PRELUDE_LEN,
            self.expected + PRELUDE_LEN
        );
        let key = self.key.context("the bundle's prelude was read without a key: nothing to verify against")?;
        let hash = self.hasher.finalize();
        key.verify_strict(&hash, &self.signature)
            .map_err(|_| anyhow::anyhow!("signature does not match: the bundle is corrupt or was altered"))
    }
}

// ---------------------------------------------------------------------------------------------
// The header

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: u32,
    pub release: String,
    /// Unix seconds (the build's SOURCE_DATE_EPOCH).
    pub created: u64,
    /// The kernel release of `vmlinuz`, e.g. `6.1.0-56-cloud-amd64`.
    pub kernel: String,
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    pub name: String,
    /// Absolute offset in the bundle file, a multiple of `SECTION_ALIGN`.
    pub offset: u64,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

impl Header {
    pub fn section(&self, name: &str) -> Result<&Section> {
        self.sections.iter().find(|s| s.name == name).with_context(|| format!("the bundle has no {name} section"))
    }
}

/// How many bytes from `PRELUDE_LEN` on hold the header (its u32 length and the JSON), read from
/// the first 4 of them; a length over `MAX_HEADER_LEN` is refused.
pub fn header_bytes_needed(after_prelude: &[u8]) -> Result<usize> {
    ensure!(after_prelude.len() >= 4, "truncated: the bundle ends before its header");
    let len = u32::from_le_bytes(after_prelude[..4].try_into().expect("4 bytes"));
    ensure!(
        (1..=MAX_HEADER_LEN).contains(&len),
        "bad bundle header: its length {len} is out of range (1 to {MAX_HEADER_LEN} bytes)"
    );
    Ok(4 + len as usize)
}

/// Parses the header from bytes starting at offset `PRELUDE_LEN` (at least `4 + header_len` of
/// them); checks that sections are aligned, in order, non-overlapping, inside `total_bytes`,
/// that the file ends with the last one, that the release is the prelude's and that the
/// required sections are there.
pub fn parse_header(after_prelude: &[u8], prelude: &Prelude) -> Result<Header> {
    let needed = header_bytes_needed(after_prelude)?;
    let header_end = PRELUDE_LEN + needed as u64;
    ensure!(
        header_end <= prelude.total_bytes,
        "bad bundle header: {} bytes long, past the end of the bundle ({} bytes)",
        needed - 4,
        prelude.total_bytes
    );
    ensure!(
        after_prelude.len() >= needed,
        "truncated: the header needs {needed} bytes after the prelude, only {} are there",
        after_prelude.len()
    );
    if let Some(head) = &prelude.head {
        let actual = hex(&Sha256::digest(&after_prelude[..needed]));
        ensure!(
            actual == *head,
            "bad bundle header: its sha256 is {actual}, the signed comment says {head}: the header was altered"
        );
    }
    let header: Header = serde_json::from_slice(&after_prelude[4..needed]).context("bad bundle header")?;
    check_header(&header, prelude, header_end).context("bad bundle header")?;
    if prelude.head.is_some() {
        for name in REQUIRED_SECTIONS {
            header.section(&chunks::index_section(name)).context("bad bundle header: a chunked bundle")?;
        }
    }
    Ok(header)
}

/// Whether `v` is 64 lower-case hex digits.
fn is_sha256_hex(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_header(h: &Header, prelude: &Prelude, header_end: u64) -> Result<()> {
    ensure!(h.format == prelude.format, "format {} where the signature says {}", h.format, prelude.format);
    ensure!(h.release == prelude.release, "release {:?} where the signature says {:?}", h.release, prelude.release);
    ensure!(!h.kernel.trim().is_empty(), "no kernel release");
    let mut end = header_end;
    for (i, s) in h.sections.iter().enumerate() {
        ensure!(
            !s.name.is_empty()
                && s.name.len() <= 32
                && s.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "bad section name {:?}",
            s.name
        );
        ensure!(!h.sections[..i].iter().any(|o| o.name == s.name), "section {} appears twice", s.name);
        ensure!(
            s.offset % SECTION_ALIGN == 0,
            "section {} at offset {} is not {SECTION_ALIGN}-aligned",
            s.name,
            s.offset
        );
        ensure!(
            s.offset >= end,
            "section {} at offset {} overlaps what comes before it (up to {end})",
            s.name,
            s.offset
        );
        ensure!(s.size > 0, "section {} is empty", s.name);
        let s_end = s.offset.checked_add(s.size).filter(|e| *e <= prelude.total_bytes);
        let Some(s_end) = s_end else {
            bail!(
                "section {} ({} bytes at {}) runs past the end of the bundle ({} bytes)",
                s.name,
                s.size,
                s.offset,
                prelude.total_bytes
            )
        };
        ensure!(is_sha256_hex(&s.sha256), "section {}: bad sha256 {:?}", s.name, s.sha256);
        end = s_end;
    }
    ensure!(
        end == prelude.total_bytes,
        "{} bytes follow the last section (the bundle is {} bytes)",
        prelude.total_bytes - end,
        prelude.total_bytes
    );
    for name in REQUIRED_SECTIONS {
        h.section(name)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Whole files

/// Whole-file verification of a bundle on disk (streams, constant memory): prelude, size ==
/// total_bytes, signature, header, and every section's SHA-256. Returns both.
pub fn verify_file(path: &Path, key: &PublicKey) -> Result<(Prelude, Header)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata().with_context(|| format!("reading {}", path.display()))?.len();
    // No context of our own: the first line of the error names the problem.
    verify_reader(&mut f, len, key)
}

/// `verify_file` against whichever key of `ring` signed the bundle.
pub fn verify_file_ring(path: &Path, ring: &KeyRing) -> Result<(Prelude, Header)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata().with_context(|| format!("reading {}", path.display()))?.len();
    verify_reader_ring(&mut f, len, ring)
}

/// `verify_file` over any reader of `len` bytes.
pub fn verify_reader(r: &mut impl Read, len: u64, key: &PublicKey) -> Result<(Prelude, Header)> {
    verify_reader_ring(r, len, &KeyRing::from(key.clone()))
}

/// `verify_reader` against whichever key of `ring` signed the bundle.
pub fn verify_reader_ring(r: &mut impl Read, len: u64, ring: &KeyRing) -> Result<(Prelude, Header)> {
    let mut first = vec![0; PRELUDE_LEN.min(len) as usize];
    r.read_exact(&mut first)?;
    let prelude = read_prelude_ring(&first, ring)?;
    if len < prelude.total_bytes {
        bail!("truncated: {len} bytes, the signature says {}", prelude.total_bytes);
    }
    ensure!(len == prelude.total_bytes, "{len} bytes, the signature says {}: data was appended", prelude.total_bytes);

    let mut verifier = Verifier::new(&prelude);
    // The header first: its length, then (when sane) the JSON, fed to the verifier like the rest.
    let mut head = vec![0; 4];
    r.read_exact(&mut head)?;
    verifier.update(&head);
    let header = match header_bytes_needed(&head) {
        Ok(needed) if PRELUDE_LEN + needed as u64 <= len => {
            head.resize(needed, 0);
            r.read_exact(&mut head[4..])?;
            verifier.update(&head[4..]);
            parse_header(&head, &prelude)
        }
        Ok(_) => parse_header(&head, &prelude),
        Err(e) => Err(e),
    };
    let mut pos = PRELUDE_LEN + verifier.fed();
    let mut digests: Vec<Sha256> = match &header {
        Ok(h) => h.sections.iter().map(|_| Sha256::new()).collect(),
        Err(_) => Vec::new(),
    };
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the bundle"),
        };
        let chunk = &buf[..n];
        if let Ok(h) = &header {
            for (s, d) in h.sections.iter().zip(digests.iter_mut()) {
                let from = s.offset.max(pos);
                let to = (s.offset + s.size).min(pos + n as u64);
                if from < to {
                    d.update(&chunk[(from - pos) as usize..(to - pos) as usize]);
                }
            }
        }
        verifier.update(chunk);
        pos += n as u64;
    }
    // The signature first: a header that does not parse is most likely a damaged bundle.
    verifier.finish()?;
    let header = header?;
    for (s, d) in header.sections.iter().zip(digests) {
        let actual = hex(&d.finalize());
        ensure!(actual == s.sha256, "section {}: sha256 is {actual}, the header says {}", s.name, s.sha256);
    }
    Ok((prelude, header))
}

/// Reads a bundle's prelude and header without verifying anything (`inspect` without a key).
pub fn read_unverified(path: &Path) -> Result<(Prelude, Header)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut first = Vec::new();
    (&mut f).take(PRELUDE_LEN + 4).read_to_end(&mut first)?;
    let prelude = read_prelude_unverified(&first)?;
    let needed = header_bytes_needed(&first[PRELUDE_LEN as usize..])?;
    let mut head = first[PRELUDE_LEN as usize..].to_vec();
    (&mut f).take(needed as u64 - 4).read_to_end(&mut head)?;
    let header = parse_header(&head, &prelude)?;
    Ok((prelude, header))
}

/// Writes a bundle atomically (temporary name in the same directory, fsync, rename) from
/// section files, in the order given; `REQUIRED_SECTIONS` must be among them.
pub fn write_bundle(
    out: &Path,
    release: &str,
    created: u64,
    kernel: &str,
    sections: &[(&str, &Path)],
    key: &SecretKey,
) -> Result<()> {
    write_bundle_with(out, release, created, kernel, sections, key, &Claims::default())
}

/// `write_bundle` with an expiry and revoked keys in the signed trusted comment.
pub fn write_bundle_with(
    out: &Path,
    release: &str,
    created: u64,
    kernel: &str,
    sections: &[(&str, &Path)],
    key: &SecretKey,
    claims: &Claims,
) -> Result<()> {
    let options = WriteOptions { claims: claims.clone(), chunks: None };
    write_bundle_opts(out, release, created, kernel, sections, key, &options)
}

/// What a bundle says beyond its sections.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub claims: Claims,
    /// Write a chunked bundle: an index of each section's chunks, and the header's digest in
    /// the signed comment (machines before chunked bundles refuse it).
    pub chunks: Option<chunks::ChunkParams>,
}

/// Where a section's bytes come from.
enum SectionSource<'a> {
    File(&'a Path),
    Bytes(Vec<u8>),
}

impl SectionSource<'_> {
    fn open(&self) -> Result<Box<dyn Read + '_>> {
        Ok(match self {
            SectionSource::File(p) => {
                Box::new(std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?)
            }
            SectionSource::Bytes(b) => Box::new(&b[..]),
        })
    }

    fn describe(&self) -> String {
        match self {
            SectionSource::File(p) => p.display().to_string(),
            SectionSource::Bytes(_) => "a chunk index".into(),
        }
    }
}

/// `write_bundle` with every option.
pub fn write_bundle_opts(
    out: &Path,
    release: &str,
    created: u64,
    kernel: &str,
    sections: &[(&str, &Path)],
    key: &SecretKey,
    options: &WriteOptions,
) -> Result<()> {
    let mut claims = options.claims.clone();
    ensure!(claims.head.is_none(), "the header's digest is the writer's to set");
    check_release(release)?;
    if !claims.revokes.is_empty() {
        check_revokes(&claims.revokes)?;
        ensure!(
            !claims.revokes.contains(&key.key_id_hex()),
            "the bundle cannot revoke the key that signs it ({})",
            key.key_id_hex()
        );
    }
    ensure!(!kernel.trim().is_empty(), "the bundle needs the kernel release");
    let mut header =
        Header { format: FORMAT, release: release.to_string(), created, kernel: kernel.into(), sections: vec![] };
    // The indexes come first, so that the header and all of them are one range of the file.
    let mut sources = Vec::new();
    let mut data = Vec::new();
    for (name, path) in sections {
        let (size, sha256) = match options.chunks {
            Some(params) => {
                let mut f = HashingReader {
                    inner: std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
                    hash: Sha256::new(),
                    len: 0,
                };
                let list = chunks::ChunkList::of_reader(&mut f, params)
                    .with_context(|| format!("chunking {}", path.display()))?;
                let index = list.to_index();
                header.sections.push(Section {
                    name: chunks::index_section(name),
                    offset: 0,
                    size: index.len() as u64,
                    sha256: hex(&Sha256::digest(&index)),
                });
                sources.push(SectionSource::Bytes(index));
                (f.len, hex(&f.hash.finalize()))
            }
            None => sha256_file(path)?,
        };
        data.push(Section { name: name.to_string(), offset: 0, size, sha256 });
    }
    header.sections.extend(data);
    sources.extend(sections.iter().map(|(_, p)| SectionSource::File(p)));
    // Offsets depend on the header's length, which depends on the offsets' digits: settle.
    let mut json = Vec::new();
    for _ in 0..8 {
        json = serde_json::to_vec(&header)?;
        let mut at = PRELUDE_LEN + 4 + json.len() as u64;
        let mut changed = false;
        for s in &mut header.sections {
            let offset = at.div_ceil(SECTION_ALIGN) * SECTION_ALIGN;
            changed |= s.offset != offset;
            s.offset = offset;
            at = offset + s.size;
        }
        if !changed {
            break;
        }
    }
    ensure!(json == serde_json::to_vec(&header)?, "laying out the bundle header did not settle");
    ensure!(json.len() <= MAX_HEADER_LEN as usize, "the bundle header is too long ({} bytes)", json.len());
    let total_bytes = header.sections.last().map(|s| s.offset + s.size).context("a bundle needs sections")?;
    let prelude = Prelude {
        format: FORMAT,
        release: release.into(),
        total_bytes,
        key_id: String::new(),
        expires: None,
        revokes: Vec::new(),
        head: None,
        signature_text: String::new(),
        signature: [0; 64],
        key: None,
    };
    check_header(&header, &prelude, PRELUDE_LEN + 4 + json.len() as u64)
        .context("the sections do not make a valid bundle")?;

    if options.chunks.is_some() {
        let mut head = (json.len() as u32).to_le_bytes().to_vec();
        head.extend_from_slice(&json);
        claims.head = Some(hex(&Sha256::digest(&head)));
    }
    let temp = TempFile::new(out)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.path)
        .with_context(|| format!("creating {}", temp.path.display()))?;
    let mut w = BodyWriter { out: std::io::BufWriter::with_capacity(1 << 20, file), hash: Blake2b512::new(), pos: 0 };
    w.out.write_all(&[0; PRELUDE_LEN as usize])?;
    w.write_all(&(json.len() as u32).to_le_bytes())?;
    w.write_all(&json)?;
    for (source, s) in sources.iter().zip(&header.sections) {
        w.pad_to(s.offset - PRELUDE_LEN)?;
        let mut f = source.open()?;
        let mut digest = Sha256::new();
        let mut buf = vec![0; 1 << 20];
        let mut copied = 0u64;
        loop {
            let n = f.read(&mut buf).with_context(|| format!("reading {}", source.describe()))?;
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            copied += n as u64;
        }
        ensure!(
            copied == s.size && hex(&digest.finalize()) == s.sha256,
            "{} changed while the bundle was being written",
            source.describe()
        );
    }
    let hash: [u8; 64] = w.hash.finalize().into();
    let text = key.sign_prehashed(&hash, &untrusted_comment(release), &trusted_comment(release, total_bytes, &claims));
    let prelude_bytes = prelude_bytes(&text)?;
    let mut file = w.out.into_inner().map_err(|e| e.into_error()).context("writing the bundle")?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&prelude_bytes)?;
    file.sync_all().with_context(|| format!("syncing {}", temp.path.display()))?;
    drop(file);
    temp.commit()
}

/// A reader that hashes and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// The prelude holding the signature text `text`.
fn prelude_bytes(text: &str) -> Result<Vec<u8>> {
    ensure!(text.len() <= SIG_TEXT_MAX, "the signature text is too long for the prelude ({} bytes)", text.len());
    let mut out = Vec::with_capacity(PRELUDE_LEN as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.resize(PRELUDE_LEN as usize, 0);
    Ok(out)
}

/// The signed part being written: hashed as it goes.
struct BodyWriter {
    out: std::io::BufWriter<std::fs::File>,
    hash: Blake2b512,
    /// Bytes written after the prelude.
    pos: u64,
}

impl BodyWriter {
    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).context("writing the bundle")?;
        self.hash.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, pos: u64) -> Result<()> {
        let zeros = [0u8; SECTION_ALIGN as usize];
        while self.pos < pos {
            let n = (pos - self.pos).min(zeros.len() as u64) as usize;
            self.write_all(&zeros[..n])?;
        }
        Ok(())
    }
}

/// A file being written under a temporary name beside its destination; removed unless committed.
struct TempFile {
    path: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl TempFile {
    fn new(dest: &Path) -> Result<TempFile> {
        let name = dest.file_name().with_context(|| format!("{} has no file name", dest.display()))?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let path = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        let _ = std::fs::remove_file(&path);
        Ok(TempFile { path, dest: dest.to_path_buf(), committed: false })
    }

    fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.path, &self.dest)
            .with_context(|| format!("renaming {} to {}", self.path.display(), self.dest.display()))?;
        self.committed = true;
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The rename is durable once the directory is synced.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut digest = Sha256::new();
    let n = std::io::copy(&mut f, &mut digest).with_context(|| format!("reading {}", path.display()))?;
    Ok((n, hex(&digest.finalize())))
}

/// Lower-case hex, as digests appear in bundle headers.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Expiry dates

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_date(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) of a day count since 1970-01-01, proleptic Gregorian; public so
/// the builder's FAT timestamps use the same conversion.
pub fn date_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = date_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `bundle --expires`: a UTC date `YYYY-MM-DD` (its midnight), a time `YYYY-MM-DDTHH:MM[:SS][Z]`,
/// or a duration from `now` such as `90d`, `12h`, `2w`; Unix seconds, which must lie after `now`.
pub fn parse_expiry(text: &str, now: u64) -> Result<u64> {
    let t = text.trim();
    let usage = "expected a UTC date (2027-01-31), a time (2027-01-31T12:00Z) or a duration (90d, 12h, 2w)";
    let at = if t.len() >= 10 && t.as_bytes()[4] == b'-' {
        let (date, time) = t.split_once(['T', ' ']).unwrap_or((t, ""));
        let num = |s: &str| -> Result<u32> {
            ensure!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()), "{t:?}: {usage}");
            s.parse().with_context(|| format!("{t:?}: {usage}"))
        };
        let parts: Vec<&str> = date.split('-').collect();
        let [y, m, d] = parts.as_slice() else { bail!("{t:?}: {usage}") };
        let (y, m, d) = (num(y)?, num(m)?, num(d)?);
        ensure!((1970..=9999).contains(&y) && (1..=12).contains(&m) && d >= 1, "{t:?} is not a valid date");
        let days = days_from_date(y.into(), m, d);
        ensure!(date_from_days(days) == (y.into(), m, d), "{t:?} is not a valid date");
        let time = time.strip_suffix('Z').unwrap_or(time);
        let secs = if time.is_empty() {
            0
        } else {
            let hms: Vec<&str> = time.split(':').collect();
            let (h, mi, s) = match hms.as_slice() {
                [h, mi] => (num(h)?, num(mi)?, 0),
                [h, mi, s] => (num(h)?, num(mi)?, num(s)?),
                _ => bail!("{t:?}: {usage}"),
            };
            ensure!(h < 24 && mi < 60 && s < 60, "{t:?} is not a valid time");
            u64::from(h * 3600 + mi * 60 + s)
        };
        days as u64 * 86_400 + secs
    } else {
        let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let n: u64 = n.parse().with_context(|| format!("{t:?}: {usage}"))?;
        let unit = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => bail!("{t:?}: {usage}"),
        };
        n.checked_mul(unit).and_then(|s| now.checked_add(s)).with_context(|| format!("{t:?} is too far ahead"))?
    };
    ensure!(at > now, "{t:?} ({}) is not in the future", format_utc(at));
    Ok(at)
}

// ---------------------------------------------------------------------------------------------
// Release order

/// Release ordering for the downgrade check. A release is `MAIN[-PRE]` or `MAIN[~PRE]`: the
/// first `-` or `~` starts a pre-release, which sorts before its release (`1.2.0-rc1` <
/// `1.2.0`, as in semver and Debian; use `+` for a later build of a release: `1.2.0+1` >
/// `1.2.0`). Each part is in natural order, digit runs compared as numbers and other runs
/// bytewise (`"1.10" > "1.9"`, `"2" > "1.9.9"`); a prefix sorts first. Only equal strings are
/// `Equal`: releases equal as numbers (`"1.01"`, `"1.1"`) are ordered bytewise.
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    let (am, ap) = split_pre_release(a);
    let (bm, bp) = split_pre_release(b);
    natural_order(am, bm)
        .then_with(|| match (ap, bp) {
            (None, None) => Ordering::Equal,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => natural_order(x, y),
        })
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// The release before its first `-` or `~`, and the pre-release after it.
fn split_pre_release(r: &str) -> (&str, Option<&str>) {
    match r.find(['-', '~']) {
        Some(i) => (&r[..i], Some(&r[i + 1..])),
        None => (r, None),
    }
}

/// Natural order of run sequences; `Equal` when every run compares equal.
fn natural_order(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.is_empty(), y.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let (rx, tx) = split_run(x);
        let (ry, ty) = split_run(y);
        let ord = if rx[0].is_ascii_digit() && ry[0].is_ascii_digit() { compare_numbers(rx, ry) } else { rx.cmp(ry) };
        if ord != Ordering::Equal {
            return ord;
        }
        (x, y) = (tx, ty);
    }
}

/// The leading run of digits or of non-digits, and the rest.
fn split_run(s: &[u8]) -> (&[u8], &[u8]) {
    let digits = s[0].is_ascii_digit();
    let n = s.iter().position(|b| b.is_ascii_digit() != digits).unwrap_or(s.len());
    s.split_at(n)
}

/// Digit strings by value, however long.
fn compare_numbers(a: &[u8], b: &[u8]) -> Ordering {
    let strip = |s: &[u8]| -> usize { s.iter().position(|b| *b != b'0').unwrap_or(s.len()) };
    let (a, b) = (&a[strip(a)..], &b[strip(b)..]);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests;
