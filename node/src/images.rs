//! `planet-node load-images` and `load-app-images`: the container images a release ships
//! (docker archives under `/usr/share/planet/images`) and those of the slot's apps are loaded
//! into docker, so the kubelet finds the pause image and the apps' images without asking any
//! registry. An app image docker already holds (same ID under every tag: a reboot, or an update
//! that kept it) is not loaded again; loading hundreds of MiB costs minutes on a slow machine.
//! Once docker holds every image of the slot's apps, [`APP_IMAGES_RECORD`] lists their IDs
//! ([`loaded`] compares it with the slot), which the node's health and its Node report.
//!
//! When: the release's own images at boot, before the kubelet (`load-images`). The apps' images:
//! - on a node, once its kubelet runs (`load-app-images`, planet-app-images.service): the node
//!   joins and is Ready in minutes instead of after every image (18 minutes for WordPress's
//!   under TCG), registered with the [`APP_IMAGES_TAINT`] taint so no pod lands before its
//!   image; a master takes the taint off once the node's agent reports them loaded;
//! - on a master (role `master`) once its API server is ready, by `planet-node apps` just before
//!   it applies them: dockerd unpacking an app's layers beside a starting etcd and API server
//!   kept a cluster's master from becoming ready for over twenty minutes on an emulated
//!   machine, while every node waited;
//! - on a dev machine before the kubelet: nobody waits on it, and there loading after the API
//!   server made the app ready later (26 minutes instead of 8 in `scripts/demo --app wordpress`
//!   under TCG).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cluster::{APP_IMAGES_RECORD, APP_IMAGES_TAINT};
use crate::env::Role;

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
    match crate::env::load()?.role {
        Role::Master => {
            println!("planet-node: the apps' images are loaded by planet-apps once the API server is ready");
            Ok(())
        }
        Role::Node => {
            println!("planet-node: the apps' images are loaded by planet-app-images once the kubelet runs");
            Ok(())
        }
        Role::Dev => load_app_images(Path::new("/")),
    }
}

/// `planet-node load-app-images` (planet-app-images.service, after the kubelet): a node's apps'
/// images; other roles load them elsewhere (see the module's documentation).
pub fn run_app_images() -> Result<()> {
    if crate::env::load()?.role != Role::Node {
        println!("planet-node: the apps' images are loaded before the kubelet (dev) or by planet-apps (master)");
        return Ok(());
    }
    load_app_images(Path::new("/"))?;
    println!("planet-node: the apps' images are loaded; a master now takes the {APP_IMAGES_TAINT} taint off this Node");
    Ok(())
}

/// What [`APP_IMAGES_RECORD`] holds for the slot's apps under `root`: their image IDs, sorted,
/// one a line.
pub fn record_text(root: &Path) -> Result<String> {
    let mut ids: Vec<String> =
        crate::apps::slot_apps(root)?.iter().flat_map(|(_, index)| index.images.iter().map(|i| i.id.clone())).collect();
    ids.sort();
    ids.dedup();
    Ok(ids.iter().map(|id| format!("{id}\n")).collect())
}

/// Whether this boot's record says docker holds every image of the slot's apps under `root`
/// (true for a slot without apps).
pub fn loaded(root: &Path) -> Result<bool> {
    let want = record_text(root)?;
    if want.is_empty() {
        return Ok(true);
    }
    Ok(std::fs::read_to_string(root.join(APP_IMAGES_RECORD.trim_start_matches('/'))).is_ok_and(|r| r == want))
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
    let record = root.join(APP_IMAGES_RECORD.trim_start_matches('/'));
    crate::files::write_if_changed(&record, record_text(root)?.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", record.display()))?;
    Ok(())
}
