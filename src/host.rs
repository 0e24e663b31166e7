//! Stage 2, the host: the kernel and its modules from the kernel package, and the initramfs
//! (planet-init, the layout's module classes, the update key when there is one).
//!
//! Its inputs rarely change from one build to the next while reading the kernel package (an
//! xz-compressed data.tar) and compressing the initramfs cost seconds every time, so the result
//! is cached under the package cache's `host/`, keyed by the digest of every input and of the
//! code that makes it. An entry is checked against the digests recorded with it before it is
//! used: a corrupted one is rebuilt, never built in.

use crate::fetch::PackageRecord;
use crate::util::digest::sha256_hex;
use crate::util::progress::Step;
use crate::{initramfs, kernel};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The initramfs's zstd level: the host is read once per boot and kept for many, so it is
/// worth a slower level than the slot's default.
const INITRAMFS_ZSTD_LEVEL: i32 = 9;
/// Entries kept in the cache: the newest by use; older ones are removed after a store.
const KEEP_ENTRIES: usize = 8;
/// The code that makes a host, as compiled into this binary: a change to any of it changes
/// every key, so an entry made by other code is never used.
const STAGE_CODE: [&str; 4] =
    [include_str!("host.rs"), include_str!("kernel.rs"), include_str!("initramfs.rs"), include_str!("deb.rs")];

/// What the host stage makes: what the ESP and a bundle carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// `uname -r` of the kernel.
    pub kernel_version: String,
    /// How many modules the initramfs carries.
    pub modules: usize,
    pub vmlinuz: Vec<u8>,
    pub initramfs: Vec<u8>,
}

/// Everything a host is made from.
#[derive(Clone, Copy)]
pub struct HostInputs<'a> {
    pub kernel_package: &'a PackageRecord,
    /// The layout's module classes.
    pub modules: &'a [String],
    pub planet_init: &'a [u8],
    pub update_key: Option<&'a planet_bundle::KeyRing>,
    pub epoch: u64,
}

impl HostInputs<'_> {
    /// The cache key: the digest of every input, of the code and of the zstd library.
    pub fn key(&self) -> String {
        let mut text = String::from("planet-image host stage\n");
        for code in STAGE_CODE {
            text.push_str(&format!("code={}\n", sha256_hex(code.as_bytes())));
        }
        text.push_str(&format!("zstd={} level={INITRAMFS_ZSTD_LEVEL}\n", zstd::zstd_safe::version_number()));
        text.push_str(&format!("kernel-package={}\n", self.kernel_package.sha256.to_ascii_lowercase()));
        for m in self.modules {
            text.push_str(&format!("module-class={m}\n"));
        }
        text.push_str(&format!("planet-init={}\n", sha256_hex(self.planet_init)));
        if let Some(k) = self.update_key {
            text.push_str(&format!("update-key={}\n", sha256_hex(k.to_text().as_bytes())));
        }
        text.push_str(&format!("epoch={}\n", self.epoch));
        sha256_hex(text.as_bytes())
    }

    /// Makes the host from the packages, without the cache.
    pub fn make(&self) -> Result<Host> {
        let kernel = kernel::extract(&self.kernel_package.file, self.modules)?;
        let extra: Vec<initramfs::ExtraFile> = self
            .update_key
            .map(|k| initramfs::ExtraFile {
                path: planet_bundle::UPDATE_KEY_PATH.to_string(),
                mode: 0o644,
                data: k.to_text().into_bytes(),
            })
            .into_iter()
            .collect();
        let initramfs = initramfs::build(self.planet_init, &kernel, &extra, self.epoch, INITRAMFS_ZSTD_LEVEL)?;
        Ok(Host { kernel_version: kernel.version, modules: kernel.modules.len(), vmlinuz: kernel.vmlinuz, initramfs })
    }
}

/// The host for `inputs`: from the cache under `cache_dir` when it holds a sound entry for
/// them, else made and stored there; `cache_dir` `None` makes it without the cache.
pub fn build(inputs: &HostInputs<'_>, cache_dir: Option<&Path>) -> Result<Host> {
    let step = Step::start("kernel + initramfs", 0);
    let cache = cache_dir.map(|d| HostCache { dir: d.join("host") });
    let key = inputs.key();
    let found = match &cache {
        Some(c) => c.load(&key),
        None => None,
    };
    let (host, how) = match found {
        Some(host) => (host, "from the cache"),
        None => {
            let host = inputs.make()?;
            if let Some(c) = &cache {
                // A cache that cannot be written costs the next build time, not this one.
                if let Err(e) = c.store(&key, &host) {
                    eprintln!("planet-image: warning: could not cache the host in {}: {e:#}", c.dir.display());
                }
            }
            (host, "made")
        }
    };
    step.finish(&format!(
        "{how}: kernel={} modules={} initramfs={} KiB",
        host.kernel_version,
        host.modules,
        host.initramfs.len() >> 10
    ));
    Ok(host)
}

/// Runs `slot` (the squashfs stage) on this thread while [`build`] makes the host on another:
/// the slot's time goes to tar2sqfs, the host's to xz and zstd. The slot's error comes first.
pub fn beside<T>(
    inputs: &HostInputs<'_>,
    cache_dir: Option<&Path>,
    slot: impl FnOnce() -> Result<T>,
) -> Result<(T, Host)> {
    let (slot, host) = std::thread::scope(|s| {
        let host = s.spawn(|| build(inputs, cache_dir));
        let slot = slot();
        (slot, host.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the host stage panicked"))))
    });
    Ok((slot?, host?))
}

/// What an entry records beside its two files.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    kernel_version: String,
    modules: usize,
    vmlinuz_sha256: String,
    initramfs_sha256: String,
}

const ENTRY_FILE: &str = "entry.json";
const VMLINUZ_FILE: &str = "vmlinuz";
const INITRAMFS_FILE: &str = "initramfs.img";

/// The directory of entries, `<key>/{entry.json,vmlinuz,initramfs.img}` each.
pub struct HostCache {
    pub dir: PathBuf,
}

impl HostCache {
    fn entry_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The entry for `key` if there is one and its files match its record. A damaged entry is
    /// reported, removed and treated as absent.
    pub fn load(&self, key: &str) -> Option<Host> {
        let dir = self.entry_dir(key);
        if !dir.is_dir() {
            return None;
        }
        match read_entry(&dir) {
            Ok(host) => {
                // Its use keeps it among the newest, which pruning keeps.
                let _ = std::fs::File::open(dir.join(ENTRY_FILE))
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                Some(host)
            }
            Err(e) => {
                eprintln!("planet-image: the cached host {} is damaged ({e:#}): making it again", dir.display());
                let _ = std::fs::remove_dir_all(&dir);
                None
            }
        }
    }

    /// Stores `host` as the entry for `key`: written under a temporary name and renamed, so an
    /// entry is whole or absent; then prunes the oldest entries beyond [`KEEP_ENTRIES`].
    pub fn store(&self, key: &str, host: &Host) -> Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let temp = self.dir.join(format!(".{key}.partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&temp);
        let _registered = crate::util::interrupt::register_path(&temp);
        let written = (|| -> Result<()> {
            std::fs::create_dir(&temp)?;
            std::fs::write(temp.join(VMLINUZ_FILE), &host.vmlinuz)?;
            std::fs::write(temp.join(INITRAMFS_FILE), &host.initramfs)?;
            let entry = Entry {
                kernel_version: host.kernel_version.clone(),
                modules: host.modules,
                vmlinuz_sha256: sha256_hex(&host.vmlinuz),
                initramfs_sha256: sha256_hex(&host.initramfs),
            };
            std::fs::write(temp.join(ENTRY_FILE), serde_json::to_vec_pretty(&entry)?)?;
            let dest = self.entry_dir(key);
            if let Err(e) = std::fs::rename(&temp, &dest) {
                // Another build stored the same entry meanwhile; theirs is as good.
                if !dest.is_dir() {
                    return Err(e.into());
                }
                std::fs::remove_dir_all(&temp)?;
            }
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&temp);
        }
        written.with_context(|| format!("writing {}", temp.display()))?;
        self.prune();
        Ok(())
    }

    /// Removes all but the [`KEEP_ENTRIES`] most recently used entries.
    fn prune(&self) {
        let Ok(list) = std::fs::read_dir(&self.dir) else { return };
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = list
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let used = std::fs::metadata(e.path().join(ENTRY_FILE)).and_then(|m| m.modified()).ok()?;
                Some((used, e.path()))
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (_, old) in entries.into_iter().skip(KEEP_ENTRIES) {
            let _ = std::fs::remove_dir_all(old);
        }
    }
}

fn read_entry(dir: &Path) -> Result<Host> {
    let record = std::fs::read(dir.join(ENTRY_FILE)).context(ENTRY_FILE)?;
    let entry: Entry = serde_json::from_slice(&record).context(ENTRY_FILE)?;
    let vmlinuz = std::fs::read(dir.join(VMLINUZ_FILE)).context(VMLINUZ_FILE)?;
    let initramfs = std::fs::read(dir.join(INITRAMFS_FILE)).context(INITRAMFS_FILE)?;
    for (name, bytes, want) in
        [(VMLINUZ_FILE, &vmlinuz, &entry.vmlinuz_sha256), (INITRAMFS_FILE, &initramfs, &entry.initramfs_sha256)]
    {
        let got = sha256_hex(bytes);
        anyhow::ensure!(&got == want, "{name} has sha256 {got}, recorded {want}");
    }
    Ok(Host { kernel_version: entry.kernel_version, modules: entry.modules, vmlinuz, initramfs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            kernel_version: "6.1.0-99-cloud-amd64".into(),
            modules: 3,
            vmlinuz: b"MZ kernel".repeat(1000),
            initramfs: b"\x28\xb5\x2f\xfd cpio".repeat(500),
        }
    }

    fn package(sha256: &str) -> PackageRecord {
        PackageRecord {
            role: "kernel".into(),
            source: "linux-image-cloud-amd64".into(),
            name: "linux-image-6.1.0-99-cloud-amd64".into(),
            version: "6.1.99-1".into(),
            sha256: sha256.into(),
            file: PathBuf::from("/nonexistent.deb"),
        }
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let (a, b) = (package(&"a".repeat(64)), package(&"b".repeat(64)));
        let classes = vec!["kernel/fs/squashfs/".to_string()];
        let more = vec!["kernel/fs/squashfs/".to_string(), "kernel/fs/fat/".to_string()];
        let base =
            HostInputs { kernel_package: &a, modules: &classes, planet_init: b"init", update_key: None, epoch: 1 };
        let key = base.key();
        assert_eq!(key, HostInputs { ..base }.key(), "the key is a function of the inputs");
        let variants = [
            HostInputs { kernel_package: &b, ..base },
            HostInputs { modules: &more, ..base },
            HostInputs { planet_init: b"init2", ..base },
            HostInputs { epoch: 2, ..base },
        ];
        for v in &variants {
            assert_ne!(v.key(), key);
        }
    }

    #[test]
    fn an_entry_is_read_back_and_a_damaged_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HostCache { dir: dir.path().join("host") };
        assert_eq!(cache.load("k1"), None);
        cache.store("k1", &host()).unwrap();
        assert_eq!(cache.load("k1"), Some(host()));

        // One byte of the initramfs flipped: not used, and gone.
        let file = cache.entry_dir("k1").join(INITRAMFS_FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        assert_eq!(cache.load("k1"), None);
        assert!(!cache.entry_dir("k1").exists());

        // A truncated vmlinuz, or a record that does not parse: the same.
        cache.store("k2", &host()).unwrap();
        std::fs::write(cache.entry_dir("k2").join(VMLINUZ_FILE), b"MZ").unwrap();
        assert_eq!(cache.load("k2"), None);
        cache.store("k3", &host()).unwrap();
        std::fs::write(cache.entry_dir("k3").join(ENTRY_FILE), b"{").unwrap();
        assert_eq!(cache.load("k3"), None);
        // No temporary directory is left behind.
        let left: Vec<_> = std::fs::read_dir(&cache.dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn only_the_newest_entries_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HostCache { dir: dir.path().to_path_buf() };
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for i in 0..KEEP_ENTRIES + 2 {
            cache.store(&format!("k{i}"), &host()).unwrap();
            // Older the smaller i: k0 and k1 are the oldest.
            let t = old + std::time::Duration::from_secs(i as u64);
            std::fs::File::open(cache.entry_dir(&format!("k{i}")).join(ENTRY_FILE)).unwrap().set_modified(t).unwrap();
        }
        cache.prune();
        let mut left: Vec<String> =
            std::fs::read_dir(&cache.dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
        left.sort();
        assert_eq!(left.len(), KEEP_ENTRIES);
        assert!(!left.contains(&"k0".to_string()) && !left.contains(&"k1".to_string()), "{left:?}");
    }
}
