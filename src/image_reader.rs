//! Reading built images back: raw or qcow2, the GPT, partitions by label and the ESP's files.
//! Used by `inspect` and `run`.

use crate::util::command::CommandExt;
use crate::util::digest::{sha256_file, sha256_range};
use anyhow::{bail, Context, Result};
use planet_config::contract::{ESP_LABEL, LOADER_ENTRIES_DIR};
use planet_gpt::{Gpt, Partition};
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

pub struct DiskImage {
    pub path: PathBuf,
    pub format: Format,
}

/// What the ESP's default entry boots.
pub struct BootEntry {
    pub options: String,
    pub vmlinuz: Vec<u8>,
    pub initramfs: Vec<u8>,
}

impl DiskImage {
    pub fn open(path: &Path) -> Result<DiskImage> {
        let mut f = std::fs::File::open(path).with_context(|| format!("opening the image {}", path.display()))?;
        let mut magic = [0u8; 4];
        let n = f.read(&mut magic)?;
        let format = if n == 4 && &magic == b"QFI\xfb" { Format::Qcow2 } else { Format::Raw };
        let image = DiskImage { path: path.to_path_buf(), format };
        // QEMU (run) and qemu-img (inspect) would read through a file the image names.
        check_self_contained(&image)?;
        Ok(image)
    }

    pub fn format_name(&self) -> &'static str {
        match self.format {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Size of the disk the image represents.
    pub fn disk_size(&self) -> Result<u64> {
        match self.format {
            Format::Raw => Ok(std::fs::metadata(&self.path)?.len()),
            Format::Qcow2 => {
                let out = Command::new("qemu-img").args(["info", "--output=json"]).arg(&self.path).run_checked()?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                v["virtual-size"].as_u64().context("qemu-img info gave no virtual-size")
            }
        }
    }

    /// Reads `len` bytes of the disk at `offset` (small reads: headers, the GPT). A range past
    /// the end of the disk is an error; unallocated qcow2 clusters read as zeros.
    pub fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        anyhow::ensure!(len <= MAX_READ_AT, "refusing to read {len} bytes of {} into memory", self.path.display());
        let scratch = crate::util::tempdir("planet-image-read")?;
        let out = scratch.path().join("part.raw");
        self.extract(offset, len, &out)?;
        Ok(std::fs::read(&out)?)
    }

    /// Copies `len` bytes of the disk at `offset` into the file `out`, which then has exactly
    /// `len` bytes: through a file, so no partition is ever read whole into memory.
    fn extract(&self, offset: u64, len: u64, out: &Path) -> Result<()> {
        offset.checked_add(len).filter(|e| *e <= self.disk_size().unwrap_or(0)).with_context(|| {
            format!(
                "{}: bytes {offset}..+{len} lie past the end of the disk (a truncated or damaged image)",
                self.path.display()
            )
        })?;
        match self.format {
            Format::Raw => {
                let mut f = std::fs::File::open(&self.path)?;
                f.seek(SeekFrom::Start(offset))?;
                let mut o = std::fs::File::create(out)?;
                let copied = std::io::copy(&mut (&mut f).take(len), &mut o)?;
                anyhow::ensure!(copied == len, "{}: short read at {offset}", self.path.display());
            }
            Format::Qcow2 => {
                // qemu-img dd reads through the qcow2 mapping; block size 512 addresses any sector.
                // Its `count` counts from the start of the input, skipped blocks included
                // (qemu-img 7.2: count=N skip=S copies N-S blocks, none when S >= N: an empty
                // read of planet-b is what made `inspect` panic), so ask for skip + blocks and
                // keep exactly `len` bytes, which is right under either reading of `count`.
                anyhow::ensure!(offset % 512 == 0 && len % 512 == 0, "unaligned qcow2 read");
                Command::new("qemu-img")
                    .args(["dd", "-f", "qcow2", "-O", "raw", "bs=512"])
                    .arg(format!("if={}", self.path.display()))
                    .arg(format!("of={}", out.display()))
                    .arg(format!("skip={}", offset / 512))
                    .arg(format!("count={}", (offset + len) / 512))
                    .run_checked()
                    .with_context(|| format!("reading {} (a truncated or damaged qcow2?)", self.path.display()))?;
                let o = std::fs::OpenOptions::new().write(true).open(out)?;
                let got = o.metadata()?.len();
                anyhow::ensure!(
                    got >= len,
                    "{}: qemu-img dd returned {got} of {len} bytes at {offset}",
                    self.path.display()
                );
                o.set_len(len)?;
            }
        }
        Ok(())
    }

    /// The GPT, trying 512- then 4096-byte sectors. Every partition must lie on the disk.
    pub fn gpt(&self) -> Result<Gpt> {
        let size = self.disk_size()?;
        let head = self.read_at(0, (64 * 1024).min(size / 512 * 512))?;
        for ss in [512u64, 4096] {
            if let Ok(g) = Gpt::read_from(&mut Cursor::new(&head), ss, size / ss) {
                for p in &g.partitions {
                    let end = p.last_lba.checked_add(1).and_then(|e| e.checked_mul(ss));
                    if p.last_lba < p.first_lba || !end.is_some_and(|e| e <= size) {
                        bail!(
                            "{}: partition {:?} (LBA {}..={}) does not lie on the disk of {size} bytes \
                             (a truncated or damaged image)",
                            self.path.display(),
                            p.name,
                            p.first_lba,
                            p.last_lba
                        );
                    }
                }
                return Ok(g);
            }
        }
        bail!("{} has no valid GPT (not a planet-image disk, or corrupt)", self.path.display())
    }

    /// SHA-256 of a partition's bytes, streamed (qcow2 through a scratch file).
    pub fn partition_sha256(&self, gpt: &Gpt, p: &Partition) -> Result<String> {
        let (offset, len) = (p.first_lba * gpt.sector_size, p.sectors() * gpt.sector_size);
        if self.format == Format::Raw {
            let mut f = std::fs::File::open(&self.path)?;
            return sha256_range(&mut f, offset, len).with_context(|| format!("hashing partition {:?}", p.name));
        }
        let scratch = crate::util::tempdir("planet-image-read")?;
        let out = scratch.path().join("part.raw");
        self.extract(offset, len, &out)?;
        sha256_file(&out)
    }

    /// The ESP as a FAT filesystem over a scratch copy of the partition (removed with `.0`).
    fn esp(&self) -> Result<(tempfile::TempDir, fatfs::FileSystem<std::fs::File>)> {
        let gpt = self.gpt()?;
        let esp = gpt.find(ESP_LABEL).with_context(|| format!("the image has no partition labelled {ESP_LABEL}"))?;
        let scratch = crate::util::tempdir("planet-image-esp")?;
        let path = scratch.path().join("esp.raw");
        self.extract(esp.first_lba * gpt.sector_size, esp.sectors() * gpt.sector_size, &path)?;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
        let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).context("opening the ESP")?;
        Ok((scratch, fs))
    }

    /// The ESP's default loader entry and the files it names.
    pub fn default_boot_entry(&self) -> Result<BootEntry> {
        let (_scratch, fs) = self.esp()?;
        let root = fs.root_dir();
        // systemd-boot's choice: the newest generation with tries left (loader.conf names none).
        let mut names = Vec::new();
        for e in
            root.open_dir(LOADER_ENTRIES_DIR).with_context(|| format!("the ESP has no {LOADER_ENTRIES_DIR}"))?.iter()
        {
            if let Some(n) = planet_config::bootentry::EntryName::parse(&e?.file_name()) {
                names.push(n);
            }
        }
        let default =
            planet_config::bootentry::default_entry(&names).context("the ESP has no planet boot entry")?.file_name();
        let entry = String::from_utf8_lossy(&read_fat(&root, &format!("{LOADER_ENTRIES_DIR}/{default}"))?).into_owned();
        let field = |k: &str| {
            entry
                .lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                .with_context(|| format!("entry {default} has no {k}"))
        };
        let (linux, initrd, options) = (field("linux ")?, field("initrd ")?, field("options ")?);
        Ok(BootEntry { options, vmlinuz: read_fat(&root, &linux)?, initramfs: read_fat(&root, &initrd)? })
    }

    /// Names of the loader entries on the ESP, with their options lines.
    pub fn loader_entries(&self) -> Result<Vec<(String, String)>> {
        let (_scratch, fs) = self.esp()?;
        let root = fs.root_dir();
        let dir = root.open_dir(LOADER_ENTRIES_DIR)?;
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e?;
            if e.is_file() {
                let text =
                    String::from_utf8_lossy(&read_fat(&root, &format!("{LOADER_ENTRIES_DIR}/{}", e.file_name()))?)
                        .into_owned();
                let options = text.lines().find_map(|l| l.strip_prefix("options ")).unwrap_or("").to_string();
                out.push((e.file_name(), options));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Refuses a qcow2 that names another file (a backing file or an external data file): QEMU
/// would open that file and hand its contents to the guest, so an untrusted image could read
/// e.g. `~/.aws/credentials`. Raw images are always opened with `format=raw`.
/// The header is read here rather than through `qemu-img info`, which would itself open the
/// named files.
fn check_self_contained(image: &DiskImage) -> Result<()> {
    if image.format != Format::Qcow2 {
        return Ok(());
    }
    let path = &image.path;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = [0u8; 80];
    f.read_exact(&mut h[..72]).with_context(|| format!("{}: truncated qcow2 header", path.display()))?;
    let be64 = |h: &[u8; 80], o: usize| u64::from_be_bytes(h[o..o + 8].try_into().expect("8 bytes"));
    let version = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
    let (backing_offset, backing_len) = (be64(&h, 8), u32::from_be_bytes(h[16..20].try_into().expect("4 bytes")));
    if backing_offset != 0 {
        let mut name = vec![0u8; backing_len.min(1023) as usize];
        let shown = match f.seek(SeekFrom::Start(backing_offset)).and_then(|_| f.read_exact(&mut name)) {
            Ok(()) => format!("{:?}", String::from_utf8_lossy(&name)),
            Err(_) => "(unreadable)".into(),
        };
        bail!(
            "{} names a backing file {shown}: `run` boots only self-contained images (QEMU would give the \
             guest that file); flatten it first with `qemu-img convert -O qcow2 IN OUT`",
            path.display()
        );
    }
    if version >= 3 {
        f.read_exact(&mut h[72..80]).with_context(|| format!("{}: truncated qcow2 header", path.display()))?;
        // Incompatible feature bit 2: the guest data lives in an external data file.
        if be64(&h, 72) & (1 << 2) != 0 {
            bail!(
                "{} keeps its data in an external data file: `run` boots only self-contained images \
                 (QEMU would give the guest that file); flatten it first with `qemu-img convert -O qcow2 IN OUT`",
                path.display()
            );
        }
    }
    Ok(())
}

/// Largest `read_at`: headers and the GPT, never whole partitions.
const MAX_READ_AT: u64 = 16 << 20;

/// Largest file `inspect`/`run` reads from an ESP (a kernel or initramfs is far smaller).
const MAX_ESP_FILE: u64 = 512 << 20;

fn read_fat<T: fatfs::ReadWriteSeek>(root: &fatfs::Dir<'_, T>, path: &str) -> Result<Vec<u8>> {
    let mut f = root.open_file(path.trim_start_matches('/')).with_context(|| format!("opening {path} on the ESP"))?;
    let mut b = Vec::new();
    (&mut f).take(MAX_ESP_FILE + 1).read_to_end(&mut b)?;
    anyhow::ensure!(b.len() as u64 <= MAX_ESP_FILE, "{path} on the ESP is larger than {MAX_ESP_FILE} bytes");
    Ok(b)
}

/// The fields of a squashfs superblock worth showing.
#[derive(Debug)]
pub struct SquashfsInfo {
    pub inodes: u32,
    pub block_size: u32,
    pub compression: &'static str,
    pub bytes_used: u64,
}

pub fn squashfs_info(sb: &[u8]) -> Option<SquashfsInfo> {
    if sb.len() < 96 || &sb[0..4] != b"hsqs" {
        return None;
    }
    let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap());
    let compression = match u16::from_le_bytes([sb[20], sb[21]]) {
        1 => "gzip",
        2 => "lzma",
        3 => "lzo",
        4 => "xz",
        5 => "lz4",
        6 => "zstd",
        _ => "unknown",
    };
    Some(SquashfsInfo {
        inodes: u32_at(4),
        block_size: u32_at(12),
        compression,
        bytes_used: u64::from_le_bytes(sb[40..48].try_into().unwrap()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qcow2_naming_another_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let backed = tmp.path().join("e.qcow2");
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw"])
            .arg(&backed)
            .run_checked()
            .unwrap();
        let err = format!("{:#}", DiskImage::open(&backed).err().expect("refused"));
        assert!(err.contains("backing file") && err.contains("/etc/hostname"), "{err}");

        let data = tmp.path().join("data.raw");
        let external = tmp.path().join("x.qcow2");
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!("data_file={}", data.display()))
            .arg(&external)
            .arg("1M")
            .run_checked()
            .unwrap();
        let err = format!("{:#}", DiskImage::open(&external).err().expect("refused"));
        assert!(err.contains("data file"), "{err}");

        let plain = tmp.path().join("ok.qcow2");
        Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&plain).arg("1M").run_checked().unwrap();
        DiskImage::open(&plain).unwrap();
    }
}
