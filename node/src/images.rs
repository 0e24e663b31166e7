//! `planet-node load-images`: the container images a release ships (docker archives under
//! `/usr/share/planet/images`) are loaded into docker at boot, so the kubelet finds the pause
//! image and the apps' images without asking any registry.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn archives(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    v.sort();
    Ok(v)
}

pub fn run() -> Result<()> {
    let dir = Path::new(crate::cluster::IMAGES_DIR);
    let list = archives(dir)?;
    if list.is_empty() {
        bail!("no image archives in {}", dir.display());
    }
    for a in list {
        let out = Command::new("docker").arg("load").arg("-i").arg(&a).output().context("running docker load")?;
        if !out.status.success() {
            bail!("docker load -i {} failed: {}", a.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        println!("planet-node: {} ({})", String::from_utf8_lossy(&out.stdout).trim(), a.display());
    }
    Ok(())
}
