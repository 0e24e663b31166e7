//! `planet-node load-images`: the container images a release ships (docker archives under
//! `/usr/share/planet/images`) and those of the slot's apps are loaded into docker, so the
//! kubelet finds the pause image and the apps' images without asking any registry. An app
//! image docker already holds (same ID under every tag: a reboot, or an update that kept it) is
//! not loaded again; loading hundreds of MiB costs minutes on a slow machine.
//!
//! When: the release's own images at boot, before the kubelet. The apps' images on a node and
//! on a dev machine also before the kubelet (no pod lands there before its image does); on a
//! master (role `master`) only once its API server is ready, by `planet-node apps` just before
//! it applies them: dockerd unpacking an app's layers beside a starting etcd and API server
//! kept a cluster's master from becoming ready for over twenty minutes on an emulated machine,
//! while every node waited. A dev machine has nobody waiting on it, and there loading after
//! the API server made the app ready later (26 minutes instead of 8 in `scripts/demo --app
//! wordpress` under TCG), so it keeps the first order.

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

fn load(archive: &Path) -> Result<String> {
    let out = Command::new("docker").arg("load").arg("-i").arg(archive).output().context("running docker load")?;
    if !out.status.success() {
        bail!("docker load -i {} failed: {}", archive.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().replace('\n', "; "))
}

/// Whether every tag already names the image `id` in docker.
fn present(id: &str, tags: &[String]) -> bool {
    tags.iter().all(|t| {
        Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", t])
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == id)
    })
}

pub fn run() -> Result<()> {
    let dir = Path::new(crate::cluster::IMAGES_DIR);
    let list = archives(dir)?;
    if list.is_empty() {
        bail!("no image archives in {}", dir.display());
    }
    for a in list {
        println!("planet-node: {} ({})", load(&a)?, a.display());
    }
    if crate::env::load()?.role == crate::env::Role::Master {
        println!("planet-node: the apps' images are loaded by planet-apps once the API server is ready");
        return Ok(());
    }
    load_app_images(Path::new("/"))
}

/// Loads the images of the slot's apps (under `root`) that docker does not hold yet; an image
/// that fails does not stop the others, and the error names each that failed.
pub fn load_app_images(root: &Path) -> Result<()> {
    let mut failed = Vec::new();
    for (app, index) in crate::apps::slot_apps(root)? {
        let base = crate::apps::app_dir(root, &app.name);
        for img in &index.images {
            let tags = img.tags.join(", ");
            if present(&img.id, &img.tags) {
                println!("planet-node: app {}: image {tags} already loaded", app.name);
                continue;
            }
            match load(&base.join(&img.file)) {
                Ok(_) => println!("planet-node: app {}: image {tags} loaded", app.name),
                Err(e) => {
                    println!("planet-node: app {}: image {tags}: {e:#}", app.name);
                    failed.push(tags);
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!("app images not loaded: {}", failed.join("; "));
    }
    Ok(())
}
