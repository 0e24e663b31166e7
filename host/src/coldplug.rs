//! Coldplug: load the modules the hardware asks for. Every device in sysfs exposes a
//! `modalias`; the builder ships depmod's `modules.alias` (glob patterns → module names) and
//! `modules.dep` (module → its dependencies), so no device list is hard-coded here.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use planet_config::glob::glob_match;

/// The module tables of one kernel.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// Directory holding the tables; module paths in modules.dep are relative to it.
    pub dir: PathBuf,
    /// `(pattern, module)` in file order.
    aliases: Vec<(String, String)>,
    /// Module name → (path, direct-and-transitive dependency paths as listed).
    deps: HashMap<String, (String, Vec<String>)>,
    builtin: HashSet<String>,
}

/// `kernel/drivers/block/virtio_blk.ko` → `virtio_blk` (dashes normalised as depmod does).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Reads `modules.alias`, `modules.dep` and (optionally) `modules.builtin` from `dir`.
    pub fn load(dir: &Path) -> Result<ModuleIndex> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let alias = read("modules.alias")?;
        let dep = read("modules.dep")?;
        let builtin = read("modules.builtin").unwrap_or_default();
        Ok(ModuleIndex::parse(dir, &alias, &dep, &builtin))
    }

    pub fn parse(dir: &Path, alias: &str, dep: &str, builtin: &str) -> ModuleIndex {
        let aliases = alias
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some("alias"), Some(pat), Some(m)) => Some((pat.to_string(), m.replace('-', "_"))),
                    _ => None,
                }
            })
            .collect();
        let deps = dep
            .lines()
            .filter_map(|l| {
                let (m, rest) = l.split_once(':')?;
                let m = m.trim();
                Some((module_name(m), (m.to_string(), rest.split_whitespace().map(String::from).collect())))
            })
            .collect();
        let builtin = builtin.lines().map(str::trim).filter(|l| !l.is_empty()).map(module_name).collect();
        ModuleIndex { dir: dir.to_path_buf(), aliases, deps, builtin }
    }

    /// Modules whose alias pattern matches `modalias` (or whose name it is), in table order,
    /// without duplicates.
    pub fn resolve(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let direct = modalias.replace('-', "_");
        if self.deps.contains_key(&direct) || self.builtin.contains(&direct) {
            out.push(direct);
        }
        for (pat, m) in &self.aliases {
            if glob_match(pat.as_bytes(), modalias.as_bytes()) && !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }

    pub fn is_builtin(&self, module: &str) -> bool {
        self.builtin.contains(module)
    }

    /// Module files to insert for `module`, dependencies first; empty for built-ins.
    pub fn load_order(&self, module: &str) -> Result<Vec<String>> {
        if self.is_builtin(module) {
            return Ok(Vec::new());
        }
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        self.visit(module, &mut order, &mut seen, 0)?;
        Ok(order)
    }

    fn visit(&self, module: &str, order: &mut Vec<String>, seen: &mut HashSet<String>, depth: usize) -> Result<()> {
        if !seen.insert(module.to_string()) || self.is_builtin(module) {
            return Ok(());
        }
        anyhow::ensure!(depth < 64, "module dependencies of {module} are too deep (a cycle?)");
        let (path, deps) = self.deps.get(module).with_context(|| format!("module {module} is not in modules.dep"))?;
        // depmod lists the transitive closure with the last entry loaded first; visiting each
        // dependency's own entry gives a correct order whatever the listing order.
        for d in deps.iter().rev() {
            self.visit(&module_name(d), order, seen, depth + 1)?;
        }
        order.push(path.clone());
        Ok(())
    }
}

/// Every `modalias` value under `<sysfs>/devices`, deduplicated, in walk order. Symlinks are not
/// followed (sysfs is full of cycles).
pub fn scan_modaliases(sysfs: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(sysfs.join("devices"), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut subdirs = Vec::new();
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && depth < 32 {
                subdirs.push(e.path());
            } else if ft.is_file() && e.file_name() == "modalias" {
                if let Ok(v) = std::fs::read_to_string(e.path()) {
                    let v = v.trim().to_string();
                    if !v.is_empty() && seen.insert(v.clone()) {
                        out.push(v);
                    }
                }
            }
        }
        subdirs.sort();
        for d in subdirs.into_iter().rev() {
            stack.push((d, depth + 1));
        }
    }
    out
}

/// Inserts one module file into the kernel.
pub trait Loader {
    fn insert(&mut self, path: &Path) -> io::Result<()>;
}

/// The real loader: `finit_module(2)`.
pub struct KernelLoader;

impl Loader for KernelLoader {
    fn insert(&mut self, path: &Path) -> io::Result<()> {
        let f = std::fs::File::open(path)?;
        use std::os::fd::AsFd;
        match crate::sys::system::finit_module(f.as_fd()) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }
}

/// Coldplug state across rounds: what is loaded and what failed (never retried).
pub struct Coldplug<L: Loader> {
    pub index: ModuleIndex,
    pub loader: L,
    loaded: HashSet<String>,
    failed: HashSet<String>,
    /// No console events (the kernel's module helper has no console to write to).
    pub quiet: bool,
}

impl<L: Loader> Coldplug<L> {
    pub fn new(index: ModuleIndex, loader: L) -> Self {
        Coldplug { index, loader, loaded: HashSet::new(), failed: HashSet::new(), quiet: false }
    }

    /// Loads `module` (a name or an alias like `fs-squashfs`) with its dependencies; returns how
    /// many files were inserted. Failures are printed and remembered, not fatal: a missing
    /// driver for some unused device must not stop the boot.
    pub fn load(&mut self, name_or_alias: &str) -> usize {
        let mut inserted = 0;
        for module in self.index.resolve(name_or_alias) {
            if self.loaded.contains(&module) || self.failed.contains(&module) || self.index.is_builtin(&module) {
                continue;
            }
            let order = match self.index.load_order(&module) {
                Ok(o) => o,
                Err(e) => {
                    if !self.quiet {
                        crate::event!("module failed", name = module, error = format!("{e:#}"));
                    }
                    self.failed.insert(module);
                    continue;
                }
            };
            let mut ok = true;
            for path in order {
                let name = module_name(&path);
                if self.loaded.contains(&name) {
                    continue;
                }
                match self.loader.insert(&self.index.dir.join(&path)) {
                    Ok(()) => {
                        if !self.quiet {
                            crate::event!("module loaded", name = name);
                        }
                        self.loaded.insert(name);
                        inserted += 1;
                    }
                    Err(e) => {
                        if !self.quiet {
                            crate::event!("module failed", name = name, error = e);
                        }
                        self.failed.insert(name);
                        ok = false;
                        break;
                    }
                }
            }
            if !ok {
                self.failed.insert(module);
            }
        }
        inserted
    }

    /// One pass over sysfs; returns how many modules were inserted. Loading a bus driver makes
    /// new devices appear, so callers repeat until a pass inserts nothing.
    pub fn round(&mut self, sysfs: &Path) -> usize {
        scan_modaliases(sysfs).iter().map(|a| self.load(a)).sum()
    }

    pub fn is_loaded(&self, module: &str) -> bool {
        self.loaded.contains(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIAS: &str = "# Aliases extracted from modules themselves.\n\
        alias virtio:d00000002v* virtio_blk\n\
        alias virtio:d00000001v* virtio_net\n\
        alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
        alias acpi*:LNXPWRBN:* button\n\
        alias input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev\n\
        alias fs-squashfs squashfs\n\
        alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n\
        alias usb:v[0-9]*p1234* fancy_usb\n";
    const DEP: &str = "kernel/drivers/block/virtio_blk.ko:\n\
        kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
        kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
        kernel/net/core/failover.ko:\n\
        kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko\n\
        kernel/drivers/virtio/virtio_pci_modern_dev.ko:\n\
        kernel/drivers/acpi/button.ko:\n\
        kernel/drivers/input/evdev.ko:\n\
        kernel/fs/squashfs/squashfs.ko:\n";
    const BUILTIN: &str = "kernel/fs/ext4/ext4.ko\nkernel/lib/crc32c.ko\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(Path::new("/lib/modules/6.1.0-test"), ALIAS, DEP, BUILTIN)
    }

    #[test]
    fn modaliases_resolve_to_modules() {
        let i = index();
        assert_eq!(i.resolve("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00"), ["virtio_pci"]);
        assert_eq!(i.resolve("virtio:d00000002v00001AF4"), ["virtio_blk"]);
        assert_eq!(i.resolve("acpi:LNXPWRBN:"), ["button"]);
        assert_eq!(i.resolve("input:b0019v0000p0001e0000-e0,1,k74,ramlsfw"), ["evdev"]);
        assert_eq!(i.resolve("fs-squashfs"), ["squashfs"]);
        assert_eq!(i.resolve("squashfs"), ["squashfs"]);
        assert_eq!(i.resolve("usb:v9p1234"), ["fancy_usb"]);
        assert!(i.resolve("pci:v00001234d00001111sv0sd0bc03sc00i00").is_empty());
    }

    #[test]
    fn dependencies_load_first() {
        let i = index();
        assert_eq!(
            i.load_order("virtio_net").unwrap(),
            ["kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko"]
        );
        assert!(i.load_order("ext4").unwrap().is_empty());
        assert!(i.load_order("nonexistent").is_err());
    }

    struct Recorder(Vec<PathBuf>);
    impl Loader for Recorder {
        fn insert(&mut self, path: &Path) -> io::Result<()> {
            self.0.push(path.to_path_buf());
            Ok(())
        }
    }

    #[test]
    fn rounds_walk_a_fake_sysfs() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path();
        let write = |rel: &str, v: &str| {
            let p = sys.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        write("devices/pci0000:00/0000:00:04.0/modalias", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n");
        write("devices/pci0000:00/0000:00:04.0/virtio1/modalias", "virtio:d00000002v00001AF4\n");
        write("devices/pci0000:00/0000:00:05.0/modalias", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n");
        write("devices/pci0000:00/0000:00:05.0/virtio2/modalias", "virtio:d00000001v00001AF4\n");
        write("devices/LNXSYSTM:00/LNXPWRBN:00/modalias", "acpi:LNXPWRBN:\n");
        let mut c = Coldplug::new(index(), Recorder(Vec::new()));
        assert_eq!(c.round(sys), 7);
        assert_eq!(c.round(sys), 0, "a second pass loads nothing new");
        let names: Vec<String> = c.loader.0.iter().map(|p| module_name(&p.display().to_string())).collect();
        assert_eq!(
            names,
            ["button", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk", "failover", "net_failover", "virtio_net"]
        );
        assert!(c.loader.0[0].starts_with("/lib/modules/6.1.0-test/kernel"));
    }
}
