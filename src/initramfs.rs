//! The initramfs, which is the whole minimal host: planet-init as `/init`, the kernel modules
//! it may need with their tables, and nothing else. Written as cpio "newc", zstd-compressed,
//! in a fixed order with fixed inode numbers and times so it is reproducible.

use crate::kernel::Kernel;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::Write;

/// Files placed into the initramfs beyond planet-init and the modules.
pub struct ExtraFile {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Builds the compressed initramfs image.
pub fn build(planet_init: &[u8], kernel: &Kernel, extra: &[ExtraFile], mtime: u64, zstd_level: i32) -> Result<Vec<u8>> {
    check_static(planet_init)?;
    let mut w = CpioWriter::new(mtime);
    for dir in ["dev", "proc", "sys", "run", "tmp", "mnt", "etc", "lib", "lib/modules"] {
        w.dir(dir, 0o755)?;
    }
    // The kernel opens /dev/console for PID 1 before anything can mount devtmpfs.
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.file("init", 0o755, planet_init)?;

    let base = format!("lib/modules/{}", kernel.version);
    let mut dirs = BTreeSet::new();
    for m in &kernel.modules {
        let mut p = format!("{base}/{}", m.rel_path);
        while let Some((parent, _)) = p.rsplit_once('/') {
            dirs.insert(parent.to_string());
            p = parent.to_string();
        }
    }
    dirs.insert(base.clone());
    for d in dirs.iter().filter(|d| d.starts_with(&base)) {
        w.dir(d, 0o755)?;
    }
    for m in &kernel.modules {
        w.file(&format!("{base}/{}", m.rel_path), 0o644, &m.data)?;
    }
    w.file(&format!("{base}/modules.dep"), 0o644, kernel.modules_dep().as_bytes())?;
    w.file(&format!("{base}/modules.alias"), 0o644, kernel.modules_alias().as_bytes())?;
    w.file(&format!("{base}/modules.builtin"), 0o644, kernel.builtin.as_bytes())?;
    for f in extra {
        if let Some((parent, _)) = f.path.rsplit_once('/') {
            let mut acc = String::new();
            for part in parent.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(part);
                w.dir(&acc, 0o755)?;
            }
        }
        w.file(&f.path, f.mode, &f.data)?;
    }
    let cpio = w.finish()?;
    let mut enc = zstd::Encoder::new(Vec::new(), zstd_level)?;
    enc.multithread(std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)).ok();
    enc.write_all(&cpio)?;
    Ok(enc.finish()?)
}

/// planet-init runs with no libc, no loader, nothing: it must be a static executable.
pub fn check_static(elf: &[u8]) -> Result<()> {
    if elf.len() < 64 || &elf[0..4] != b"\x7fELF" || elf[4] != 2 {
        bail!("the planet-init binary is not an x86-64 ELF executable");
    }
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes([elf[0x36], elf[0x37]]) as usize;
    let phnum = u16::from_le_bytes([elf[0x38], elf[0x39]]) as usize;
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let p_type =
            u32::from_le_bytes(elf.get(off..off + 4).context("truncated ELF program headers")?.try_into().unwrap());
        if p_type == 3 {
            bail!(
                "the planet-init binary is dynamically linked (it has an ELF interpreter); build it static with \
                 `RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p planet-host --target x86_64-unknown-linux-gnu`"
            );
        }
    }
    Ok(())
}

/// cpio "newc" (SVR4 without CRC), the format the kernel unpacks.
pub struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
    mtime: u64,
    seen: BTreeSet<String>,
}

impl CpioWriter {
    pub fn new(mtime: u64) -> Self {
        CpioWriter { out: Vec::new(), next_ino: 1, mtime, seen: BTreeSet::new() }
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> Result<()> {
        if self.seen.contains(path) {
            return Ok(());
        }
        self.entry(path, 0o040000 | perm, 2, (0, 0), &[])
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.entry(path, 0o100000 | perm, 1, (0, 0), data)
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(path, 0o020000 | perm, 1, (major, minor), &[])
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        if !self.seen.insert(path.to_string()) && path != "TRAILER!!!" {
            bail!("initramfs entry {path} written twice");
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = path.len() + 1;
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
            0,
            0,
            self.mtime as u32,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        // Pad the archive to a 512-byte multiple, as cpio(1) does.
        while self.out.len() % 512 != 0 {
            self.out.push(0);
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_headers_are_well_formed() {
        let mut w = CpioWriter::new(7);
        w.dir("etc", 0o755).unwrap();
        w.file("etc/x", 0o644, b"hello").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(&bytes[0..6], b"070701");
        assert_eq!(bytes.len() % 512, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("etc/x\0"));
        assert!(text.contains("TRAILER!!!"));
        // The second header starts 4-byte aligned after the first name.
        let second = 116; // 110-byte header + "etc\0", padded to 4
        assert_eq!(&bytes[second..second + 6], b"070701");
    }

    #[test]
    fn dynamic_binaries_are_refused() {
        let exe = std::fs::read("/bin/true").unwrap();
        let err = check_static(&exe).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"));
    }
}
