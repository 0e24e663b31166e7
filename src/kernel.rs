//! The kernel and its modules, straight out of Debian's `linux-image-*` package: `vmlinuz`, the
//! `.ko` files the layout asks for (by directory class) plus everything they depend on, and the
//! dependency and alias tables computed from each module's `.modinfo` section — what depmod
//! would write, without running it.

use crate::deb;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One loadable module.
#[derive(Debug, Clone)]
pub struct Module {
    /// Path below `/lib/modules/<version>/`, e.g. `kernel/fs/squashfs/squashfs.ko`.
    pub rel_path: String,
    /// Module name as the kernel knows it (`-` folded to `_`).
    pub name: String,
    pub depends: Vec<String>,
    pub aliases: Vec<String>,
    pub data: Vec<u8>,
}

#[derive(Debug)]
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-cloud-amd64`.
    pub version: String,
    pub vmlinuz: Vec<u8>,
    /// The selected modules and their dependencies, in path order.
    pub modules: Vec<Module>,
    /// `modules.builtin` as shipped.
    pub builtin: String,
}

/// Reads the kernel package, keeping modules whose path starts with one of `classes`
/// (e.g. `kernel/drivers/block/`, `kernel/fs/squashfs/`) and their dependencies.
pub fn extract(deb_path: &Path, classes: &[String]) -> Result<Kernel> {
    let mut vmlinuz: Option<(String, Vec<u8>)> = None;
    let mut all: BTreeMap<String, Module> = BTreeMap::new();
    let mut builtin = String::new();
    deb::for_each_data_entry(deb_path, |path, _header, data| {
        if let Some(ver) = path.strip_prefix("boot/vmlinuz-") {
            let mut bytes = Vec::new();
            data.read_to_end(&mut bytes)?;
            vmlinuz = Some((ver.to_string(), bytes));
        } else if let Some(rest) = path.strip_prefix("lib/modules/").or_else(|| path.strip_prefix("usr/lib/modules/")) {
            let Some((_ver, rel)) = rest.split_once('/') else { return Ok(()) };
            if rel == "modules.builtin" {
                data.read_to_string(&mut builtin)?;
            } else if rel.ends_with(".ko") {
                let mut bytes = Vec::new();
                data.read_to_end(&mut bytes)?;
                let info = modinfo(&bytes).with_context(|| format!("reading .modinfo of {rel}"))?;
                let name = info
                    .iter()
                    .find(|(k, _)| k == "name")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| file_stem_name(rel));
                let depends = info
                    .iter()
                    .filter(|(k, _)| k == "depends")
                    .flat_map(|(_, v)| v.split(',').filter(|s| !s.is_empty()).map(normalize_name).collect::<Vec<_>>())
                    .collect();
                let aliases = info.iter().filter(|(k, _)| k == "alias").map(|(_, v)| v.clone()).collect();
                let name = normalize_name(&name);
                all.insert(name.clone(), Module { rel_path: rel.to_string(), name, depends, aliases, data: bytes });
            } else if rel.ends_with(".ko.xz") || rel.ends_with(".ko.zst") || rel.ends_with(".ko.gz") {
                bail!("{rel}: compressed modules are not supported yet (Debian bookworm ships them uncompressed)");
            }
        }
        Ok(())
    })
    .with_context(|| format!("reading the kernel package {}", deb_path.display()))?;
    let (version, vmlinuz) = vmlinuz.with_context(|| {
        format!(
            "{} holds no boot/vmlinuz-*: pass the versioned package (linux-image-6.1.0-…-cloud-amd64), not the meta package",
            deb_path.display()
        )
    })?;

    let mut wanted: BTreeSet<String> = all
        .values()
        .filter(|m| classes.iter().any(|c| m.rel_path.starts_with(c.as_str())))
        .map(|m| m.name.clone())
        .collect();
    let mut queue: Vec<String> = wanted.iter().cloned().collect();
    while let Some(name) = queue.pop() {
        let deps = all.get(&name).map(|m| m.depends.clone()).unwrap_or_default();
        for dep in deps {
            if !all.contains_key(&dep) {
                bail!("module {name} depends on {dep}, which the kernel package does not ship");
            }
            if wanted.insert(dep.clone()) {
                queue.push(dep);
            }
        }
    }
    let mut modules: Vec<Module> = all.into_values().filter(|m| wanted.contains(&m.name)).collect();
    modules.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    Ok(Kernel { version, vmlinuz, modules, builtin })
}

impl Kernel {
    /// `modules.dep` in depmod's format: each module with the transitive closure of its
    /// dependencies, ordered so that loading the list from the end to the start works.
    pub fn modules_dep(&self) -> String {
        let by_name: BTreeMap<&str, &Module> = self.modules.iter().map(|m| (m.name.as_str(), m)).collect();
        let mut out = String::new();
        for m in &self.modules {
            let mut order = Vec::new();
            let mut seen = BTreeSet::new();
            post_order(&m.name, &by_name, &mut seen, &mut order);
            order.pop(); // the module itself comes last in post-order
            order.reverse();
            let deps: Vec<&str> =
                order.iter().filter_map(|n| by_name.get(n.as_str()).map(|d| d.rel_path.as_str())).collect();
            out.push_str(&m.rel_path);
            out.push(':');
            for d in deps {
                out.push(' ');
                out.push_str(d);
            }
            out.push('\n');
        }
        out
    }

    /// `modules.alias` in depmod's format.
    pub fn modules_alias(&self) -> String {
        let mut out = String::new();
        for m in &self.modules {
            for a in &m.aliases {
                out.push_str(&format!("alias {a} {}\n", m.name));
            }
        }
        out
    }
}

fn post_order(name: &str, by_name: &BTreeMap<&str, &Module>, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
    if !seen.insert(name.to_string()) {
        return;
    }
    if let Some(m) = by_name.get(name) {
        for d in &m.depends {
            post_order(d, by_name, seen, order);
        }
    }
    order.push(name.to_string());
}

fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

fn file_stem_name(rel: &str) -> String {
    rel.rsplit('/').next().unwrap_or(rel).trim_end_matches(".ko").to_string()
}

/// The `key=value` strings of an ELF64 module's `.modinfo` section.
///
/// Every offset and size comes from the file: all arithmetic is checked and every slice is
/// taken with `get`, so a malformed module is an error, never a panic.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>> {
    if elf.len() < 64 || &elf[0..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a little-endian ELF64 object");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| -> Result<usize> {
        let b = o.checked_add(8).and_then(|end| elf.get(o..end)).context("truncated ELF")?;
        usize::try_from(u64::from_le_bytes(b.try_into().unwrap())).context("ELF offset out of range")
    };
    let range = |off: usize, len: usize, what: &str| -> Result<&[u8]> {
        off.checked_add(len).and_then(|end| elf.get(off..end)).with_context(|| format!("truncated {what}"))
    };
    let shoff = u64_at(0x28)?;
    let shentsize = u16_at(0x3A);
    let shnum = u16_at(0x3C);
    let shstrndx = u16_at(0x3E);
    if shentsize < 40 {
        bail!("ELF section header size {shentsize} is too small");
    }
    let section = |i: usize| -> Result<(usize, usize, usize)> {
        let base =
            i.checked_mul(shentsize).and_then(|o| o.checked_add(shoff)).context("section header out of range")?;
        let hdr = range(base, 40, "section header")?;
        let name = u32::from_le_bytes(hdr[0..4].try_into().unwrap()) as usize;
        let at = |o: usize| usize::try_from(u64::from_le_bytes(hdr[o..o + 8].try_into().unwrap()));
        Ok((name, at(24).context("section offset out of range")?, at(32).context("section size out of range")?))
    };
    if shstrndx >= shnum {
        bail!("ELF section-name table index {shstrndx} is not below the section count {shnum}");
    }
    let (_, str_off, str_size) = section(shstrndx)?;
    let strtab = range(str_off, str_size, "section names")?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i)?;
        let name = strtab.get(name_off..).with_context(|| format!("section {i}'s name is outside the name table"))?;
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        if name == b".modinfo" {
            let data = range(off, size, ".modinfo")?;
            return Ok(data
                .split(|b| *b == 0)
                .filter_map(|kv| {
                    let s = String::from_utf8_lossy(kv);
                    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect());
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, deps: &[&str]) -> Module {
        Module {
            rel_path: format!("kernel/{name}.ko"),
            name: name.into(),
            depends: deps.iter().map(|s| s.to_string()).collect(),
            aliases: vec![format!("pci:v00001AF4d*{name}*")],
            data: vec![],
        }
    }

    #[test]
    fn dep_table_lists_transitive_dependencies_loadable_from_the_end() {
        let k = Kernel {
            version: "x".into(),
            vmlinuz: vec![],
            modules: vec![module("a", &["b"]), module("b", &["c"]), module("c", &[])],
            builtin: String::new(),
        };
        let dep = k.modules_dep();
        assert!(dep.contains("kernel/a.ko: kernel/b.ko kernel/c.ko\n"), "{dep}");
        assert!(dep.contains("kernel/c.ko:\n"));
        assert!(k.modules_alias().contains("alias pci:v00001AF4d*a* a\n"));
    }

    /// A minimal ELF64 module: header, `.shstrtab`, `.modinfo`, then three section headers
    /// (null, names, modinfo).
    fn elf(modinfo_text: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.modinfo\0";
        let mut e = vec![0u8; 64];
        e[0..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        let names_off = e.len();
        e.extend_from_slice(names);
        let info_off = e.len();
        e.extend_from_slice(modinfo_text);
        let shoff = e.len();
        e[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        e[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        e[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        e[0x3E..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, off, size) in
            [(0u32, 0usize, 0usize), (1, names_off, names.len()), (11, info_off, modinfo_text.len())]
        {
            let mut sh = [0u8; 64];
            sh[0..4].copy_from_slice(&name.to_le_bytes());
            sh[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            sh[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            e.extend_from_slice(&sh);
        }
        e
    }

    fn set_u64(e: &mut [u8], at: usize, v: u64) {
        e[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn modinfo_reads_a_well_formed_module() {
        let e = elf(b"alias=pci:v1\0depends=a,b\0\0");
        assert_eq!(
            modinfo(&e).unwrap(),
            [("alias".to_string(), "pci:v1".to_string()), ("depends".to_string(), "a,b".to_string())]
        );
    }

    /// Malformed modules are errors, never panics (in any profile).
    #[test]
    fn modinfo_refuses_malformed_modules() {
        let good = elf(b"alias=x\0");
        let shoff = u64::from_le_bytes(good[0x28..0x30].try_into().unwrap()) as usize;
        let sh = |i: usize| shoff + 64 * i;
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut e = good.clone();
        e[sh(2)..sh(2) + 4].copy_from_slice(&0xffffu32.to_le_bytes());
        cases.push(("sh_name 0xffff", e));
        let mut e = good.clone();
        e[sh(1)..sh(1) + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(("sh_name u32::MAX", e));
        let mut e = good.clone();
        set_u64(&mut e, 0x28, u64::MAX - 3);
        cases.push(("shoff near u64::MAX", e));
        let mut e = good.clone();
        set_u64(&mut e, sh(1) + 24, u64::MAX);
        cases.push(("names offset u64::MAX", e));
        let mut e = good.clone();
        set_u64(&mut e, sh(2) + 32, u64::MAX - 10);
        cases.push((".modinfo size overflowing", e));
        let mut e = good.clone();
        e[0x3E..0x40].copy_from_slice(&0xffffu16.to_le_bytes());
        cases.push(("shstrndx past the sections", e));
        let mut e = good.clone();
        e[0x3A..0x3C].copy_from_slice(&0u16.to_le_bytes());
        cases.push(("shentsize 0", e));
        let mut e = good.clone();
        e[0x3C..0x3E].copy_from_slice(&0xffffu16.to_le_bytes());
        e[sh(2)..sh(2) + 4].copy_from_slice(&1u32.to_le_bytes());
        cases.push(("shnum 0xffff", e));
        cases.push(("truncated", good[..good.len() - 30].to_vec()));
        cases.push(("header only", good[..64].to_vec()));
        for (what, e) in cases {
            let r = std::panic::catch_unwind(|| modinfo(&e));
            assert!(matches!(r, Ok(Err(_))), "{what}: {r:?}");
        }
        // Every truncation of a good module: an error or a result, never a panic.
        for n in 0..good.len() {
            assert!(std::panic::catch_unwind(|| modinfo(&good[..n])).is_ok(), "truncated at {n}");
        }
    }
}
