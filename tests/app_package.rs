//! App packages through the command line (issue 15), checked with tools nobody here wrote:
//! `app build` packs a directory holding a docker archive that scripts/lib/docker-archive.py
//! makes, or refuses it naming the missing image; `build --app` and `bundle --app` put the
//! package into the slot, where `unsquashfs` finds every file and the list of apps; a package
//! altered after it was built is refused and leaves no image behind.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A docker archive of one busybox image tagged `tag`.
fn image_archive(out: &Path, tag: &str) {
    ok(Command::new("python3")
        .arg(repo().join("scripts/lib/docker-archive.py"))
        .args(["--tag", tag, "--cmd", "/bin/sh", "--busybox", "/bin/busybox", "-o"])
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1700000000"));
}

/// An app directory `web` whose Deployment runs `uses`; the package carries `planet/web:2`.
fn app_dir(s: &Scratch, uses: &str) -> PathBuf {
    let dir = s.path("web");
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::write(
        dir.join("app.yaml"),
        "name: web\nversion: 2.0.0\nmanifests: [manifests/web.yaml]\nimages: [images/web.tar]\n\
         health:\n  - ready: deployment/web\n",
    )
    .unwrap();
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  \
         template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - {{name: web, image: '{uses}'}}\n"
    );
    std::fs::write(dir.join("manifests/web.yaml"), manifest).unwrap();
    image_archive(&dir.join("images/web.tar"), "planet/web:2");
    dir
}

fn app_build(dir: &Path, out: &Path) -> std::process::Output {
    planet_image().arg("app").arg("build").arg(dir).arg("-o").arg(out).output().unwrap()
}

fn sha256(path: &Path) -> String {
    stdout(Command::new("sha256sum").arg(path)).split_whitespace().next().unwrap().to_string()
}

#[test]
fn an_app_goes_into_the_slot_and_unsquashfs_finds_it() {
    let s = Scratch::new("app-slot");
    let dir = app_dir(&s, "planet/web:2");
    let app = s.path("web.app");
    let out = app_build(&dir, &app);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["name"], "web");
    assert_eq!(report["sha256"], sha256(&app));
    assert_eq!(report["images"][0]["tags"][0], "planet/web:2");
    // The package is a tar that GNU tar reads, index first.
    let members = stdout(Command::new("tar").arg("-tf").arg(&app));
    assert_eq!(
        members.lines().collect::<Vec<_>>(),
        ["package.json", "app.yaml", "manifests/web.yaml", "images/web.tar"]
    );
    // Reproducible: the same directory gives the same bytes.
    let again = s.path("again.app");
    assert!(app_build(&dir, &again).status.success());
    assert_eq!(sha256(&app), sha256(&again));

    let image = s.path("disk.raw");
    let built = build("raw", &fixture("demo.tar"), &image, &["--app", app.to_str().unwrap()]);
    let result: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(result["manifest"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(manifest["rootfs"]["apps"][0]["sha256"], sha256(&app), "{}", manifest["rootfs"]);

    let slot = s.path("slot.sqfs");
    extract_partition(&image, "planet-a", &slot);
    let listing = stdout(Command::new("unsquashfs").arg("-l").arg(&slot));
    for f in [
        "apps/apps.json",
        "apps/web/package.json",
        "apps/web/app.yaml",
        "apps/web/manifests/web.yaml",
        "apps/web/images/web.tar",
    ] {
        assert!(listing.contains(&format!("squashfs-root/usr/share/planet/{f}")), "{f} not in the slot:\n{listing}");
    }
    let list = stdout(Command::new("unsquashfs").arg("-cat").arg(&slot).arg("usr/share/planet/apps/apps.json"));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["version"], "2.0.0");
    assert_eq!(list[0]["sha256"], sha256(&app));
    let archive = s.path("from-slot.tar");
    let bytes = Command::new("unsquashfs")
        .arg("-cat")
        .arg(&slot)
        .arg("usr/share/planet/apps/web/images/web.tar")
        .output()
        .unwrap();
    std::fs::write(&archive, &bytes.stdout).unwrap();
    assert_eq!(
        sha256(&archive),
        sha256(&dir.join("images/web.tar")),
        "the image archive changed on its way into the slot"
    );

    // An update bundle carries the apps the same way.
    let key = s.path("k");
    ok(planet_image().arg("keygen").arg("-o").arg(&key));
    let bundle = make_bundle(
        &fixture("demo.tar"),
        &s.path("k.key"),
        &s.path("b.planet"),
        "2.0",
        &["--app", app.to_str().unwrap()],
    );
    let result: serde_json::Value = serde_json::from_slice(&bundle.stdout).unwrap();
    assert_eq!(result["apps"][0]["name"], "web", "{result}");
}

#[test]
fn a_missing_image_or_an_altered_package_is_refused_by_name() {
    let s = Scratch::new("app-refused");
    let dir = app_dir(&s, "planet/db:1");
    let app = s.path("web.app");
    let out = app_build(&dir, &app);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(r#"image "planet/db:1" is not in the package"#), "{err}");
    assert!(err.contains("manifests/web.yaml: Deployment/web container web"), "{err}");
    assert!(!app.exists(), "a refused package was written");

    // A good package, then one byte of its image archive changed after it was built.
    let dir = {
        std::fs::remove_dir_all(s.path("web")).unwrap();
        app_dir(&s, "planet/web:2")
    };
    assert!(app_build(&dir, &app).status.success());
    let mut bytes = std::fs::read(&app).unwrap();
    // 20 000 bytes into the image archive's data (its tar header is the 512 bytes at its name).
    let header = bytes.windows(14).position(|w| w == b"images/web.tar").unwrap();
    bytes[header + 512 + 20_000] ^= 0xff;
    std::fs::write(&app, &bytes).unwrap();
    let image = s.path("disk.raw");
    let out = planet_image()
        .args(["build", "--target", "raw", "--rootfs"])
        .arg(fixture("demo.tar"))
        .arg("-o")
        .arg(&image)
        .arg("--app")
        .arg(&app)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not match its digest in package.json"), "{err}");
    assert!(!image.exists(), "an image was written from an altered package");
}
