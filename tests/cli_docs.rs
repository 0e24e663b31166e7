//! docs/cli/ is generated from the command-line definition; this test regenerates it with the
//! real binary into a temporary directory and fails when anything differs from what is
//! committed, so a help text changed without regenerating the pages fails the suite.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const REGENERATE: &str = "cargo run -q --bin planet-image -- generate-docs --markdown docs/cli";

fn read_pages(dir: &Path) -> BTreeMap<String, String> {
    let mut pages = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            pages.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    pages
}

fn generate(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_planet-image"))
        .arg("generate-docs")
        .arg("--markdown")
        .arg(dir)
        .output()
        .expect("running planet-image generate-docs");
    assert!(out.status.success(), "generate-docs failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn committed_cli_docs_match_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    generate(tmp.path());
    let fresh = read_pages(tmp.path());
    let committed = read_pages(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli"));

    let mut problems = Vec::new();
    for (name, text) in &fresh {
        match committed.get(name) {
            None => problems.push(format!("docs/cli/{name} is missing")),
            Some(old) if old != text => {
                let line = old
                    .lines()
                    .zip(text.lines())
                    .position(|(a, b)| a != b)
                    .map_or_else(|| old.lines().count().min(text.lines().count()) + 1, |i| i + 1);
                problems.push(format!("docs/cli/{name} differs from the command line, first at line {line}"));
            }
            Some(_) => {}
        }
    }
    for name in committed.keys().filter(|n| !fresh.contains_key(*n)) {
        problems.push(format!("docs/cli/{name} documents no command"));
    }
    assert!(problems.is_empty(), "{}\nRegenerate the pages with: {REGENERATE}", problems.join("\n"));
}

/// The generator is the one the test and scripts/package rely on: a page of a command that no
/// longer exists is removed, other files are left alone, and hidden commands get no page.
#[test]
fn generate_docs_removes_stale_pages_only() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("planet-image-gone.md"), "old").unwrap();
    std::fs::write(tmp.path().join("README.md"), "keep").unwrap();
    generate(tmp.path());
    assert!(!tmp.path().join("planet-image-gone.md").exists());
    assert_eq!(std::fs::read_to_string(tmp.path().join("README.md")).unwrap(), "keep");
    let pages = read_pages(tmp.path());
    assert!(pages.contains_key("planet-image-publish-aws.md"), "{:?}", pages.keys());
    assert!(!pages.keys().any(|n| n.contains("guestfwd") || n.contains("generate-docs")), "{:?}", pages.keys());
    let build = &pages["planet-image-build.md"];
    assert!(build.contains("### `--rootfs <PATH>`"), "{build}");
}

/// Man pages and completions come from the same generator (scripts/package installs them).
#[test]
fn generate_docs_writes_man_pages_and_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_planet-image"))
        .arg("generate-docs")
        .arg("--man")
        .arg(tmp.path().join("man"))
        .arg("--completions")
        .arg(tmp.path().join("completions"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(tmp.path().join("man/planet-image-build.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH planet-image-build 1"), "{page}");
    assert!(page.contains("rootfs"), "{page}");
    assert!(tmp.path().join("man/planet-image.1").exists());
    assert!(tmp.path().join("man/planet-image-publish-gce.1").exists());
    assert!(!tmp.path().join("man/planet-image-guestfwd-relay.1").exists());
    for (file, marker) in [
        ("planet-image.bash", "complete -F"),
        ("_planet-image", "#compdef planet-image"),
        ("planet-image.fish", "complete -c planet-image"),
    ] {
        let script = std::fs::read_to_string(tmp.path().join("completions").join(file)).unwrap();
        assert!(script.contains(marker), "{file}: {script}");
    }
}

/// `--version` names the planet-init a build would use, how it was found, and its digest; an
/// installed layout (PREFIX/bin/planet-image, PREFIX/lib/planet-image/planet-init) is found
/// without $PLANET_INIT, and without any planet-init it says how to get one.
#[test]
fn version_names_the_planet_init_and_its_digest() {
    let version = |exe: &Path, planet_init: Option<&Path>| {
        let mut cmd = Command::new(exe);
        cmd.arg("--version").env_remove("PLANET_INIT");
        if let Some(p) = planet_init {
            cmd.env("PLANET_INIT", p);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let sha256 = |p: &Path| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
    };
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();

    let given = tmp.path().join("given-planet-init");
    std::fs::write(&given, b"not even an ELF").unwrap();
    let text = version(Path::new(env!("CARGO_BIN_EXE_planet-image")), Some(&given));
    assert!(text.starts_with(&format!("planet-image {}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains(&format!("planet-init: {} ($PLANET_INIT)", given.display())), "{text}");
    assert!(text.contains(&format!("planet-init sha256: {}", sha256(&given))), "{text}");

    // An install tree: the lookup must not depend on this workspace's target directory.
    let prefix = tmp.path().join("usr");
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    let exe = prefix.join("bin/planet-image");
    std::fs::hard_link(env!("CARGO_BIN_EXE_planet-image"), &exe)
        .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_planet-image"), &exe).map(drop))
        .unwrap();
    let packaged = Path::new("/usr/lib/planet-image/planet-init");
    let text = version(&exe, None);
    if packaged.exists() {
        assert!(text.contains("(the planet-image package)"), "{text}");
    } else {
        assert!(text.contains("planet-init: none: no static planet-init found"), "{text}");
        assert!(text.contains("install the planet-image package"), "{text}");
    }
    // A static planet-init (the suite's $PLANET_INIT) in PREFIX/lib/planet-image is found.
    let Some(built) = std::env::var_os("PLANET_INIT").filter(|p| !p.is_empty()) else {
        return;
    };
    let installed = prefix.join("lib/planet-image/planet-init");
    std::fs::create_dir_all(installed.parent().unwrap()).unwrap();
    std::fs::copy(&built, &installed).unwrap();
    let text = version(&exe, None);
    assert!(text.contains(&format!("planet-init: {} (installed beside planet-image)", installed.display())), "{text}");
    assert!(text.contains(&format!("planet-init sha256: {}", sha256(&installed))), "{text}");
}
