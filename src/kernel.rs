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
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>> {
    if elf.len() < 64 || &elf[0..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a little-endian ELF64 object");
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| -> Result<usize> {
        let b = elf.get(o..o + 8).context("truncated ELF")?;
        Ok(u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let shoff = u64_at(0x28)?;
    let shentsize = u16_at(0x3A);
    let shnum = u16_at(0x3C);
    let shstrndx = u16_at(0x3E);
    let section = |i: usize| -> Result<(usize, usize, usize)> {
        let base = shoff + i * shentsize;
        let name = u32::from_le_bytes(elf.get(base..base + 4).context("truncated section header")?.try_into().unwrap())
            as usize;
        Ok((name, u64_at(base + 24)?, u64_at(base + 32)?))
    };
    let (_, str_off, str_size) = section(shstrndx)?;
    let strtab = elf.get(str_off..str_off + str_size).context("truncated section names")?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i)?;
        let name_end = strtab[name_off..].iter().position(|b| *b == 0).map(|p| name_off + p).unwrap_or(strtab.len());
        if &strtab[name_off..name_end] == b".modinfo" {
            let data = elf.get(off..off + size).context("truncated .modinfo")?;
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
}
