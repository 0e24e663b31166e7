//! Getting a bundle onto the disk: download to the state partition (nothing of the boot path is
//! touched before the whole bundle is verified), then write the inactive slot, its kernel and
//! initramfs on the ESP, and last a counted boot entry — the only step that makes the new
//! release bootable. A power cut before that last rename leaves the machine on its old release.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use planet_bundle::assemble::{LocalData, RangeSource};
use planet_bundle::{Header, KeyRing, Prelude, PRELUDE_LEN};
use planet_config::bootentry::{self, EntryName};
use planet_config::contract;

use super::esp::{sync_dir, write_durably, Esp};
use crate::event;
use crate::http;

/// The slot an install writes: the one not running.
#[derive(Clone, Debug)]
pub struct Target {
    pub slot: char,
    pub dev: PathBuf,
    pub bytes: u64,
    /// The running slot's device: a chunked download takes the chunks it holds from there.
    pub running_dev: Option<PathBuf>,
}

/// Progress lines are printed every this many bytes written to the slot.
const PROGRESS_EVERY: u64 = 4 << 20;
const COPY_CHUNK: usize = 1 << 20;

/// Whether a bundle of release `candidate` may replace `running`; the error says why not.
/// `allow_downgrade` comes only from an operator's explicit socket request.
pub fn check_wanted(candidate: &str, running: &str, allow_downgrade: bool, failed: &[String]) -> Result<()> {
    match planet_bundle::compare_releases(candidate, running) {
        std::cmp::Ordering::Equal => bail!("release {candidate} is already running"),
        std::cmp::Ordering::Less if !allow_downgrade => bail!(
            "release {candidate} is older than the running release {running}: a downgrade \
             (only an explicit `install --allow-downgrade` on the update socket allows one)"
        ),
        _ => {}
    }
    if failed.iter().any(|f| f == candidate) {
        bail!("release {candidate} already failed its trial on this machine; it is not installed again");
    }
    Ok(())
}

/// Refuses a bundle whose signed expiry (Unix seconds) has passed by `now`.
pub fn check_fresh(release: &str, expires: Option<u64>, now: u64) -> Result<()> {
    if let Some(t) = expires {
        ensure!(
            now < t,
            "the bundle of release {release} expired at {} (this machine's clock says {}): publish a fresh \
             bundle (planet-image bundle --expires), or fix the clock",
            planet_bundle::format_utc(t),
            planet_bundle::format_utc(now)
        );
    }
    Ok(())
}

/// The part of the state filesystem a download must leave free, for etcd, the container runtime
/// and the kubelet that share it: a tenth of it, at least 64 MiB.
pub fn reserve_bytes(fs_bytes: u64) -> u64 {
    (fs_bytes / 10).max(64 << 20)
}

/// Room for staging: free bytes above the reserve.
#[derive(Clone, Copy, Debug)]
pub struct Room {
    pub free: u64,
    pub reserve: u64,
}

impl Room {
    /// Unlimited (tests, and callers that checked already).
    pub const ANY: Room = Room { free: u64::MAX, reserve: 0 };

    pub fn check(&self, bundle_bytes: u64) -> Result<()> {
        let fits = matches!(bundle_bytes.checked_add(self.reserve), Some(need) if need <= self.free);
        if !fits {
            bail!(
                "the bundle ({} MiB) does not fit on the state partition: {} MiB free, of which {} MiB stay \
                 free for etcd and the container runtime (a tenth of the partition, at least 64 MiB)",
                bundle_bytes.div_ceil(1 << 20),
                self.free >> 20,
                self.reserve >> 20
            );
        }
        Ok(())
    }
}

/// A reader that fails once `until` has passed (checked before each read; each read is itself
/// bounded by the source's own timeout), so no peer can hold an install open for ever.
pub struct Deadline<R> {
    pub inner: R,
    pub until: Instant,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if Instant::now() >= self.until {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the transfer took too long"));
        }
        self.inner.read(buf)
    }
}

/// How long a transfer of `bytes` may take: 5 minutes, plus a second for every 256 KiB.
pub fn transfer_time(bytes: u64) -> Duration {
    Duration::from_secs(300u64.saturating_add(bytes / (256 << 10)))
}

/// Reads a bundle from `src` into `dest` (through `dest.tmp`, renamed when complete and
/// synced). The prelude is checked first — right key, wanted release (`wanted`), size — so an
/// unwanted or foreign bundle costs 4 KiB, not its whole size. Then the whole file is verified.
pub fn receive(
    src: &mut impl Read,
    announced_len: Option<u64>,
    dest: &Path,
    keys: &KeyRing,
    room: Room,
    wanted: impl FnOnce(&Prelude) -> Result<()>,
) -> Result<(Prelude, Header)> {
    let mut first = vec![0u8; PRELUDE_LEN as usize];
    let got = read_full(src, &mut first).context("reading the bundle's first 4 KiB")?;
    first.truncate(got);
    let prelude = planet_bundle::read_prelude_ring(&first, keys)?;
    wanted(&prelude)?;
    if let Some(n) = announced_len {
        if n != prelude.total_bytes {
            bail!("truncated or padded: the server sends {n} bytes, the signature says {}", prelude.total_bytes);
        }
    }
    room.check(prelude.total_bytes)?;
    let dir = dest.parent().context("the staging path has no directory")?;
    let name = dest.file_name().context("the staging path has no file name")?.to_string_lossy();
    write_durably(dir, &name, |f| {
        f.write_all(&first)?;
        let rest = prelude.total_bytes - first.len() as u64;
        let copied = std::io::copy(&mut src.take(rest), f).context("receiving the bundle")?;
        if copied != rest {
            bail!(
                "truncated: the bundle ended after {} bytes, the signature says {}",
                first.len() as u64 + copied,
                prelude.total_bytes
            );
        }
        Ok(())
    })?;
    event!("update verifying", release = prelude.release, bytes = prelude.total_bytes);
    match planet_bundle::verify_file_ring(dest, keys) {
        Ok(v) => Ok(v),
        Err(e) => {
            let _ = std::fs::remove_file(dest);
            Err(e)
        }
    }
}

/// The signed prelude of the bundle at `url`, by a range request for its first 4 KiB: the key,
/// the release (`wanted`) and the size the server announces are checked, nothing more is
/// fetched. Returns the endpoint and request path for the rest, and whether the server
/// answered the range request with a range (206).
fn fetch_prelude(
    url: &str,
    keys: &KeyRing,
    wanted: impl FnOnce(&Prelude) -> Result<()>,
) -> Result<(Prelude, http::Endpoint, &'static str, bool)> {
    let ep = http::Endpoint::parse(url, None)?;
    let path = if ep.prefix.is_empty() { "/" } else { "" };
    let mut head = http::get_stream(&ep, path, Some((0, PRELUDE_LEN - 1)), HTTP_TIMEOUT)
        .with_context(|| format!("fetching {url}"))?;
    if !matches!(head.status, 200 | 206) {
        bail!("{url} answered HTTP {}", head.status);
    }
    let ranges = head.status == 206;
    let server_total = if ranges { head.range_total } else { head.length };
    let mut first = vec![0u8; PRELUDE_LEN as usize];
    // 4 KiB within a minute, however slowly the server drips them.
    let got = read_full(&mut Deadline { inner: &mut head, until: Instant::now() + PRELUDE_TIME }, &mut first)
        .context("reading the bundle's first 4 KiB")?;
    first.truncate(got);
    drop(head);
    let prelude = planet_bundle::read_prelude_ring(&first, keys)?;
    wanted(&prelude)?;
    if let Some(n) = server_total {
        if n != prelude.total_bytes {
            bail!("truncated or padded: {url} holds {n} bytes, the signature says {}", prelude.total_bytes);
        }
    }
    Ok((prelude, ep, path, ranges))
}

/// Checks the bundle at `url` without fetching more than its first 4 KiB (see
/// [`fetch_prelude`]), and that it would fit in `room`.
pub fn check_remote(
    url: &str,
    keys: &KeyRing,
    room: Room,
    wanted: impl FnOnce(&Prelude) -> Result<()>,
) -> Result<Prelude> {
    let (prelude, _, _, _) = fetch_prelude(url, keys, wanted)?;
    room.check(prelude.total_bytes)?;
    Ok(prelude)
}

/// Downloads the bundle at `url` into `dest`. The first 4 KiB come first (see
/// [`fetch_prelude`]), so a foreign, unwanted or truncated bundle is refused without fetching
/// it. A chunked bundle from a server that answers range requests is then made from `local`
/// data (called only now: it may copy files) and the chunks it lacks (see [`fetch_chunked`]);
/// any other is fetched whole (see [`receive`]). Either way the prelude fetched again must be
/// byte for byte the one checked: a server (or a man in the middle) that answers the requests
/// with different bundles gets nothing installed.
pub fn download(
    url: &str,
    dest: &Path,
    keys: &KeyRing,
    room: Room,
    wanted: impl FnOnce(&Prelude) -> Result<()>,
    local: &dyn Fn() -> Vec<LocalData>,
) -> Result<(Prelude, Header)> {
    let (prelude, ep, path, ranges) = fetch_prelude(url, keys, wanted)?;
    let until = Instant::now() + transfer_time(prelude.total_bytes);
    if prelude.head.is_some() && ranges {
        room.check(prelude.total_bytes)?;
        return fetch_chunked(url, &ep, path, until, dest, keys, &prelude, &local())
            .with_context(|| format!("downloading {url} by chunks"));
    }
    let body = http::get_stream(&ep, path, None, HTTP_TIMEOUT).with_context(|| format!("fetching {url}"))?;
    if body.status != 200 {
        bail!("{url} answered HTTP {}", body.status);
    }
    let len = body.length;
    let mut body = Deadline { inner: body, until };
    receive(&mut body, len, dest, keys, room, |second| {
        // Both preludes verified against the same keys: equal texts mean the same signed bytes.
        ensure!(
            second.signature_text == prelude.signature_text,
            "{url} sent release {} in full, not the bundle whose first 4 KiB were checked (release {}): \
             the file changed between the two requests, or someone on the way swapped it",
            second.release,
            prelude.release
        );
        Ok(())
    })
    .with_context(|| format!("downloading {url}"))
}

/// The bundle's bytes by HTTP range requests, each read bounded by the transfer's deadline.
struct HttpRanges<'a> {
    ep: &'a http::Endpoint,
    path: &'a str,
    until: Instant,
}

impl RangeSource for HttpRanges<'_> {
    fn open_range(&mut self, offset: u64, len: u64) -> Result<Box<dyn Read + '_>> {
        ensure!(len > 0, "an empty range");
        let body = http::get_stream(self.ep, self.path, Some((offset, offset + len - 1)), HTTP_TIMEOUT)?;
        ensure!(body.status == 206, "answered HTTP {} to a range request (206 expected)", body.status);
        ensure!(
            body.length == Some(len),
            "answered {} bytes to a range request of {len}",
            body.length.map_or("an unknown number of".to_string(), |n| n.to_string())
        );
        Ok(Box::new(Deadline { inner: body, until: self.until }))
    }
}

/// Makes the chunked bundle at `url` in `dest` from `local` data and the chunks it lacks
/// (`planet_bundle::assemble`: each chunk checked against the signed index before it is
/// written; `DEST.partial` keeps them across a broken connection or a reboot).
#[allow(clippy::too_many_arguments)]
fn fetch_chunked(
    url: &str,
    ep: &http::Endpoint,
    path: &str,
    until: Instant,
    dest: &Path,
    keys: &KeyRing,
    checked: &Prelude,
    local: &[LocalData],
) -> Result<(Prelude, Header)> {
    let mut remote = HttpRanges { ep, path, until };
    let mut last = Instant::now();
    let mut progress = |line: &str| {
        if last.elapsed() >= Duration::from_secs(10) {
            event!("update fetching", release = checked.release, detail = line);
            last = Instant::now();
        }
    };
    let (prelude, header, a) = planet_bundle::assemble::assemble(&mut remote, keys, local, dest, &mut progress)?;
    if prelude.signature_text != checked.signature_text {
        let _ = std::fs::remove_file(dest);
        bail!(
            "{url} sent release {} by chunks, not the bundle whose first 4 KiB were checked (release {}): the \
             file changed between the requests, or someone on the way swapped it",
            prelude.release,
            checked.release
        );
    }
    event!(
        "update fetched",
        release = prelude.release,
        bytes = a.total_bytes,
        fetched = a.fetched_bytes,
        requests = a.requests,
        reused = a.reused_bytes,
        resumed = a.resumed_bytes
    );
    Ok((prelude, header))
}

/// How long the first 4 KiB of a download may take.
const PRELUDE_TIME: Duration = Duration::from_secs(60);
/// How long connecting and each read of a download may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Fills `buf` as far as the stream allows; returns the bytes read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies `len` bytes at `offset` of `src` to `dst`, checking their SHA-256 against `sha256`
/// on the way (the staged file could have changed since it was verified).
fn copy_section(
    src: &mut File,
    offset: u64,
    len: u64,
    sha256: &str,
    dst: &mut File,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    use sha2::Digest;
    src.seek(SeekFrom::Start(offset))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(COPY_CHUNK as u64) as usize;
        src.read_exact(&mut buf[..want]).context("reading the staged bundle")?;
        hasher.update(&buf[..want]);
        dst.write_all(&buf[..want])?;
        done += want as u64;
        progress(done);
    }
    let got = planet_bundle::hex(&hasher.finalize());
    if got != sha256 {
        bail!("the staged bundle changed after it was verified (sha256 {got}, expected {sha256})");
    }
    Ok(())
}

/// What an install needs to know about the running system.
pub struct InstallPlan<'a> {
    pub staged: &'a Path,
    pub header: &'a Header,
    pub target: &'a Target,
    pub esp: &'a Esp,
    /// The running entry's kernel options; the new entry gets them with its own slot.
    pub options: &'a str,
    pub tries: u32,
    /// Where the in-progress marker goes (on the state partition).
    pub marker: &'a Path,
}

/// Writes the slot, the boot files and the counted entry. Returns the new entry's name.
pub fn install(p: &InstallPlan<'_>) -> Result<EntryName> {
    let slot = p.target.slot;
    let rootfs = p.header.section(planet_bundle::SECTION_ROOTFS)?;
    let vmlinuz = p.header.section(planet_bundle::SECTION_KERNEL)?;
    let initramfs = p.header.section(planet_bundle::SECTION_INITRAMFS)?;
    if rootfs.size > p.target.bytes {
        bail!(
            "the new rootfs ({} MiB) is larger than slot {slot} ({} MiB); build an image with larger slots",
            rootfs.size >> 20,
            p.target.bytes >> 20
        );
    }
    let boot_bytes = vmlinuz.size.saturating_add(initramfs.size);
    let esp_room = p.esp.free_bytes()?.saturating_add(p.esp.slot_files_bytes(slot));
    if boot_bytes.saturating_add(1 << 20) > esp_room {
        bail!(
            "the new kernel and initramfs ({} KiB) do not fit on the ESP ({} KiB available)",
            boot_bytes >> 10,
            esp_room >> 10
        );
    }
    let mut src = File::open(p.staged).with_context(|| format!("opening {}", p.staged.display()))?;

    // 1. Nothing may boot the slot while it changes; remember that an install is under way.
    std::fs::write(p.marker, format!("slot={slot} release={}\n", p.header.release))
        .and_then(|_| File::open(p.marker)?.sync_all())
        .with_context(|| format!("writing {}", p.marker.display()))?;
    if let Some(dir) = p.marker.parent() {
        sync_dir(dir)?;
    }
    for removed in p.esp.remove_entries_of(slot)? {
        event!("update entry removed", entry = removed);
    }
    // The slot's old boot files are unused now; removing them first makes the room counted above.
    p.esp.remove_slot_files(slot)?;
    let generation = p.esp.next_generation()?;

    // 2. The slot.
    event!("update writing", slot = slot, release = p.header.release, bytes = rootfs.size);
    let mut dev = OpenOptions::new()
        .write(true)
        .open(&p.target.dev)
        .with_context(|| format!("opening {}", p.target.dev.display()))?;
    let mut next = PROGRESS_EVERY;
    copy_section(&mut src, rootfs.offset, rootfs.size, &rootfs.sha256, &mut dev, |done| {
        if done >= next {
            event!("update progress", slot = slot, written = done, of = rootfs.size);
            next += PROGRESS_EVERY;
        }
    })
    .with_context(|| format!("writing slot {slot} ({})", p.target.dev.display()))?;
    dev.sync_all().with_context(|| format!("syncing {}", p.target.dev.display()))?;
    drop(dev);

    // 3. Kernel and initramfs, each through a temporary name.
    let dir = p.esp.slot_dir(slot);
    for (section, name) in [(vmlinuz, contract::KERNEL_FILE), (initramfs, contract::INITRAMFS_FILE)] {
        write_durably(&dir, name, |f| copy_section(&mut src, section.offset, section.size, &section.sha256, f, |_| {}))
            .with_context(|| format!("writing {name} of slot {slot} on the ESP"))?;
    }
    sync_dir(&p.esp.root)?;

    // 4. The entry: from now on systemd-boot tries the new release.
    let name = EntryName::counted(generation, slot, p.tries);
    let title = format!("Planet {} (slot {slot})", p.header.release);
    let options = bootentry::options_for_slot(p.options, slot);
    p.esp.add_entry(&name, &bootentry::entry_conf(&title, &p.header.release, slot, &options))?;
    // Durably gone, or the new release would report this finished install as interrupted.
    if std::fs::remove_file(p.marker).is_ok() {
        if let Some(dir) = p.marker.parent() {
            let _ = sync_dir(dir);
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use planet_bundle::SecretKey;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32], [n; 8])
    }

    /// A bundle of release `release` with the given section contents, written by the crate.
    fn bundle(dir: &Path, release: &str, rootfs: &[u8], sk: &SecretKey) -> PathBuf {
        let files = [("rootfs", rootfs.to_vec()), ("vmlinuz", b"KERNEL".to_vec()), ("initramfs", b"INITRD".to_vec())];
        let mut sections = Vec::new();
        for (n, b) in &files {
            let p = dir.join(format!("{release}-{n}"));
            std::fs::write(&p, b).unwrap();
            sections.push((*n, p));
        }
        let refs: Vec<(&str, &Path)> = sections.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let out = dir.join(format!("{release}.planet"));
        planet_bundle::write_bundle(&out, release, 1_700_000_000, "6.1.0-test", &refs, sk).unwrap();
        out
    }

    /// A chunked bundle (64 KiB chunks on average, as `planet-image bundle` makes them).
    fn chunked_bundle(dir: &Path, release: &str, rootfs: &[u8], sk: &SecretKey) -> PathBuf {
        let mut sections = Vec::new();
        for (n, b) in [("rootfs", rootfs), ("vmlinuz", b"KERNEL".as_slice()), ("initramfs", b"INITRD".as_slice())] {
            let p = dir.join(format!("{release}-{n}"));
            std::fs::write(&p, b).unwrap();
            sections.push((n, p));
        }
        let refs: Vec<(&str, &Path)> = sections.iter().map(|(n, p)| (*n, p.as_path())).collect();
        let out = dir.join(format!("{release}.planet"));
        let options = planet_bundle::WriteOptions {
            chunks: Some(planet_bundle::chunks::ChunkParams::DEFAULT),
            ..Default::default()
        };
        planet_bundle::write_bundle_opts(&out, release, 1, "6.1.0-test", &refs, sk, &options).unwrap();
        out
    }

    /// Serves `data` on 127.0.0.1 with byte ranges (or ignoring them), counting the body bytes
    /// sent; at most `requests` requests.
    fn range_server(
        data: Vec<u8>,
        honour_ranges: bool,
        requests: usize,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
        use std::io::BufRead;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/b.planet", l.local_addr().unwrap());
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            for c in l.incoming().take(requests) {
                let Ok(mut c) = c else { return };
                let mut r = std::io::BufReader::new(c.try_clone().unwrap());
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        let (a, z) = v.trim().split_once('-').unwrap();
                        range = Some((a.parse::<usize>().unwrap(), z.parse::<usize>().unwrap()));
                    }
                }
                let (head, body) = match range.filter(|_| honour_ranges) {
                    Some((a, z)) => (
                        format!(
                            "HTTP/1.1 206 P\r\nContent-Range: bytes {a}-{z}/{}\r\nContent-Length: {}\r\n",
                            data.len(),
                            z + 1 - a
                        ),
                        &data[a..=z],
                    ),
                    None => (format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", data.len()), &data[..]),
                };
                let _ = c.write_all((head + "Connection: close\r\n\r\n").as_bytes());
                if c.write_all(body).is_ok() {
                    counter.fetch_add(body.len() as u64, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        (url, sent)
    }

    #[test]
    fn a_chunked_bundle_is_fetched_by_ranges_taking_what_the_running_slot_holds() {
        let t = tempfile::tempdir().unwrap();
        let sk = key(3);
        let mut x = 1u64;
        let old: Vec<u8> = (0..3_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let mut new = old.clone();
        new[1_500_000..1_500_100].fill(7);
        let b2 = std::fs::read(chunked_bundle(t.path(), "2", &new, &sk)).unwrap();
        let slot_a = t.path().join("slot-a");
        let mut dev = old.clone();
        dev.extend_from_slice(&[1; 65536]);
        std::fs::write(&slot_a, &dev).unwrap();
        let local = || vec![LocalData::file(slot_a.clone(), Some(old.len() as u64))];
        let dest = t.path().join("incoming.planet");
        let ring = KeyRing::from(sk.public());
        let (url, sent) = range_server(b2.clone(), true, 50);
        let (p, h) = download(&url, &dest, &ring, Room::ANY, |_| Ok(()), &local).unwrap();
        assert_eq!((p.release.as_str(), h.kernel.as_str()), ("2", "6.1.0-test"));
        assert_eq!(std::fs::read(&dest).unwrap(), b2, "the bundle made is the one signed");
        let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
        // The start of the file, the changed chunk or two, kernel and initramfs: well under a tenth.
        assert!(sent < b2.len() as u64 / 10, "{sent} of {} bytes sent", b2.len());

        // A server that ignores ranges gets the whole file fetched, as before chunks.
        std::fs::remove_file(&dest).unwrap();
        let (url, sent) = range_server(b2.clone(), false, 5);
        download(&url, &dest, &ring, Room::ANY, |_| Ok(()), &local).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b2);
        assert!(sent.load(std::sync::atomic::Ordering::SeqCst) >= b2.len() as u64);
    }

    /// An install from a machine running slot a, its marker in `dir`.
    fn install_from_slot_a(
        dir: &Path,
        staged: &Path,
        header: &Header,
        target: &Target,
        esp: &Esp,
    ) -> Result<EntryName> {
        let marker = dir.join("m");
        install(&InstallPlan { staged, header, target, esp, options: "planet.slot=a", tries: 3, marker: &marker })
    }

    fn esp(dir: &Path) -> Esp {
        let esp = Esp::new(dir.join("esp"));
        std::fs::create_dir_all(esp.entries_dir()).unwrap();
        let text = bootentry::entry_conf("Planet 1 (slot a)", "1", 'a', "console=ttyS0 planet.slot=a planet.role=dev");
        std::fs::write(esp.entries_dir().join("planet-0001-a.conf"), text).unwrap();
        esp
    }

    #[test]
    fn downgrades_repeats_and_failed_releases_are_refused() {
        assert!(check_wanted("2", "1", false, &[]).is_ok());
        assert!(check_wanted("1.10", "1.9", false, &[]).is_ok());
        let e = check_wanted("1", "2", false, &[]).unwrap_err().to_string();
        assert!(e.contains("downgrade"), "{e}");
        assert!(check_wanted("1", "2", true, &[]).is_ok());
        assert!(check_wanted("2", "2", true, &[]).unwrap_err().to_string().contains("already running"));
        let e = check_wanted("3", "2", false, &["3".into()]).unwrap_err().to_string();
        assert!(e.contains("already failed"), "{e}");
    }

    #[test]
    fn a_bundle_is_received_verified_and_installed() {
        let t = tempfile::tempdir().unwrap();
        let sk = key(7);
        let rootfs: Vec<u8> = (0..(9u32 << 20) / 4).flat_map(|i| i.to_le_bytes()).collect();
        let b = bundle(t.path(), "2", &rootfs, &sk);
        let staged = t.path().join("incoming.planet");
        let mut src = File::open(&b).unwrap();
        let len = src.metadata().unwrap().len();
        let (pre, header) = receive(&mut src, Some(len), &staged, &sk.public().into(), Room::ANY, |p| {
            check_wanted(&p.release, "1", false, &[])
        })
        .unwrap();
        assert_eq!((pre.release.as_str(), header.release.as_str()), ("2", "2"));

        let slot_dev = t.path().join("slot-b");
        std::fs::write(&slot_dev, vec![0xeeu8; 16 << 20]).unwrap();
        let esp = esp(t.path());
        std::fs::create_dir_all(esp.slot_dir('b')).unwrap();
        std::fs::write(esp.slot_dir('b').join("vmlinuz.tmp"), b"left by a power cut").unwrap();
        std::fs::write(esp.slot_dir('b').join("vmlinuz"), b"OLD").unwrap();
        let target = Target { slot: 'b', dev: slot_dev.clone(), bytes: 16 << 20, running_dev: None };
        let marker = t.path().join("installing");
        let name = install(&InstallPlan {
            staged: &staged,
            header: &header,
            target: &target,
            esp: &esp,
            options: "console=ttyS0 planet.slot=a planet.role=dev",
            tries: 3,
            marker: &marker,
        })
        .unwrap();
        assert_eq!(name.file_name(), "planet-0002-b+3.conf");
        assert!(!marker.exists());
        let slot = std::fs::read(&slot_dev).unwrap();
        assert_eq!(&slot[..rootfs.len()], &rootfs[..]);
        assert_eq!(std::fs::read(esp.slot_dir('b').join("vmlinuz")).unwrap(), b"KERNEL");
        assert_eq!(std::fs::read(esp.slot_dir('b').join("initramfs.img")).unwrap(), b"INITRD");
        assert!(!esp.slot_dir('b').join("vmlinuz.tmp").exists());
        let entries = esp.entries().unwrap();
        assert_eq!(entries[0].name, name);
        assert_eq!(entries[0].version, "2");
        assert_eq!(entries[0].options, "console=ttyS0 planet.slot=b planet.role=dev");
        assert_eq!(entries[1].name.file_name(), "planet-0001-a.conf");
    }

    #[test]
    fn bad_bundles_change_nothing() {
        let t = tempfile::tempdir().unwrap();
        let sk = key(1);
        let b = bundle(t.path(), "2", &[5u8; 100_000], &sk);
        let good = std::fs::read(&b).unwrap();
        let staged = t.path().join("incoming.planet");
        let try_bytes = |bytes: &[u8], k: &planet_bundle::PublicKey| {
            let r = receive(&mut &bytes[..], None, &staged, &k.clone().into(), Room::ANY, |_| Ok(()));
            assert!(!staged.exists() && !t.path().join("incoming.planet.tmp").exists());
            format!("{:#}", r.unwrap_err())
        };
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 10] ^= 1;
        let e = try_bytes(&flipped, &sk.public());
        assert!(e.contains("signature"), "{e}");
        let e = try_bytes(&good[..good.len() - 5000], &sk.public());
        assert!(e.contains("truncated"), "{e}");
        let e = try_bytes(&good, &key(2).public());
        assert!(e.contains("another key"), "{e}");
        let e = try_bytes(b"GET / HTTP/1.0\r\n\r\n", &sk.public());
        assert!(!e.is_empty());
        // The release check runs on the prelude, before anything is stored.
        let r = receive(&mut &good[..], None, &staged, &sk.public().into(), Room::ANY, |p| {
            check_wanted(&p.release, "2", false, &[])
        });
        assert!(r.unwrap_err().to_string().contains("already running"));
        // Too big for the state partition.
        let r =
            receive(&mut &good[..], None, &staged, &sk.public().into(), Room { free: 1000, reserve: 0 }, |_| Ok(()));
        assert!(r.unwrap_err().to_string().contains("does not fit"));
        assert!(!staged.exists());
    }

    #[test]
    fn a_rootfs_larger_than_the_slot_is_refused_before_any_write() {
        let t = tempfile::tempdir().unwrap();
        let sk = key(3);
        let b = bundle(t.path(), "2", &[1u8; 3 << 20], &sk);
        let (_, header) = planet_bundle::verify_file(&b, &sk.public()).unwrap();
        let esp = esp(t.path());
        let slot_dev = t.path().join("slot-b");
        std::fs::write(&slot_dev, vec![0u8; 1 << 20]).unwrap();
        let target = Target { slot: 'b', dev: slot_dev.clone(), bytes: 1 << 20, running_dev: None };
        let e = install_from_slot_a(t.path(), &b, &header, &target, &esp).unwrap_err();
        assert!(e.to_string().contains("larger than slot b"), "{e}");
        assert_eq!(std::fs::read(&slot_dev).unwrap(), vec![0u8; 1 << 20]);
        assert_eq!(esp.entries().unwrap().len(), 1);
    }

    /// Finding 12: a download must leave a tenth of the state filesystem free, not 16 MiB.
    #[test]
    fn a_download_leaves_a_tenth_of_the_state_filesystem_free() {
        assert_eq!(reserve_bytes(10 << 30), 1 << 30);
        assert_eq!(reserve_bytes(100 << 20), 64 << 20);
        let t = tempfile::tempdir().unwrap();
        let sk = key(4);
        let good = std::fs::read(bundle(t.path(), "2", &[5u8; 100_000], &sk)).unwrap();
        let staged = t.path().join("incoming.planet");
        let total = good.len() as u64;
        let room = Room { free: total + (16 << 20) + 1, reserve: reserve_bytes(10 << 30) };
        let e = receive(&mut &good[..], None, &staged, &sk.public().into(), room, |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("1024 MiB stay free for etcd"), "{e}");
        assert!(!staged.exists());
        let room = Room { free: total + (1 << 30), reserve: reserve_bytes(10 << 30) };
        receive(&mut &good[..], None, &staged, &sk.public().into(), room, |_| Ok(())).unwrap();
        // Sums that overflow are refused, not wrapped.
        let room = Room { free: u64::MAX, reserve: u64::MAX };
        assert!(receive(&mut &good[..], None, &staged, &sk.public().into(), room, |_| Ok(())).is_err());
    }

    #[test]
    fn expired_bundles_are_refused() {
        assert!(check_fresh("2", None, 5).is_ok());
        assert!(check_fresh("2", Some(6), 5).is_ok());
        let e = check_fresh("2", Some(1_764_000_000), 1_764_000_000).unwrap_err().to_string();
        assert!(e.contains("release 2 expired at 2025-11-24 16:00:00 UTC"), "{e}");
    }

    /// Finding 6: generation numbers at their end are an error, not an overflow panic.
    #[test]
    fn the_last_generation_number_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let sk = key(3);
        let b = bundle(t.path(), "2", &[1u8; 1000], &sk);
        let (_, header) = planet_bundle::verify_file(&b, &sk.public()).unwrap();
        let esp = esp(t.path());
        let text = bootentry::entry_conf("Planet 1", "1", 'a', "planet.slot=a");
        std::fs::write(esp.entries_dir().join(format!("planet-{}-a.conf", u32::MAX)), text).unwrap();
        let slot_dev = t.path().join("slot-b");
        std::fs::write(&slot_dev, vec![0u8; 1 << 20]).unwrap();
        let target = Target { slot: 'b', dev: slot_dev, bytes: 1 << 20, running_dev: None };
        let e = install_from_slot_a(t.path(), &b, &header, &target, &esp).unwrap_err();
        assert!(e.to_string().contains("generation numbers are used up"), "{e}");
    }
}
