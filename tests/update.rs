//! Self-updating machines, on real boots (OVMF → systemd-boot → planet-init), with reboots inside
//! one QEMU process so the firmware's variables and the disk are kept across them: a machine of
//! release 1 takes bundle 2 from a test server on 127.0.0.1 (reached through guestfwd), reboots
//! into slot b and blesses it; bundle 3, whose init fails, is rolled back by systemd-boot's boot
//! counting; bad, truncated and foreign bundles are refused without touching the boot path; a
//! power cut in the middle of a slot write leaves the previous release running. Bundles are
//! chunked: the machine fetches what `bundle --estimate-from` said, a chunk altered on the
//! server is refused, and a download broken half-way resumes without fetching again what it
//! had verified.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::bundles::BundleServer;
use common::*;

const BOOT: Duration = Duration::from_secs(300);

/// The demo rootfs with `/etc/demo-release` (and optionally more files, a replaced init).
fn demo_release(s: &Scratch, release: &str, extra_py: &str) -> PathBuf {
    let out = s.path(&format!("demo-{release}.tar"));
    let script = format!(
        r#"
import tarfile, io, sys, os
src, dst, release = sys.argv[1], sys.argv[2], sys.argv[3]
def add_file(t, name, data, mode=0o644):
    ti = tarfile.TarInfo(name); ti.size = len(data); ti.mode = mode; ti.mtime = 1700000000
    t.addfile(ti, io.BytesIO(data))
replaced = set()
{extra_py}
with tarfile.open(src) as i, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as o:
    for m in i.getmembers():
        if m.name.lstrip("./") in replaced:
            continue
        o.addfile(m, i.extractfile(m) if m.isreg() else None)
    add_file(o, "etc/demo-release", (release + "\n").encode())
    extra(o)
"#
    );
    ok(Command::new("python3").arg("-c").arg(script).arg(fixture("demo.tar")).arg(&out).arg(release));
    out
}

/// No extra content.
const PLAIN: &str = "def extra(o):\n    pass\n";

fn keygen(s: &Scratch, name: &str) -> (PathBuf, PathBuf) {
    let base = s.path(name);
    ok(planet_image().arg("keygen").arg("-o").arg(&base));
    (base.with_extension("key"), base.with_extension("pub"))
}

fn bundle(s: &Scratch, rootfs: &Path, release: &str, key: &Path) -> PathBuf {
    let out = s.path(&format!("update-{release}-{}.planet", key.file_stem().unwrap().to_string_lossy()));
    make_bundle(rootfs, key, &out, release, &[]);
    out
}

/// A bundle made with `--estimate-from old`, and the bytes the estimate says a machine on
/// `old`'s release downloads.
fn bundle_estimated(s: &Scratch, rootfs: &Path, release: &str, key: &Path, old: &Path) -> (PathBuf, u64) {
    let out = s.path(&format!("update-{release}-estimated.planet"));
    let o = make_bundle(rootfs, key, &out, release, &["--estimate-from", &old.display().to_string()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["chunked"], true, "{v}");
    let bytes = v["estimate"]["download_bytes"].as_u64().unwrap_or_else(|| panic!("no estimate: {v}"));
    assert!(bytes < v["total_bytes"].as_u64().unwrap(), "{v}");
    (out, bytes)
}

/// A bundle's header sections: (name, offset, size).
fn sections(bundle: &[u8]) -> Vec<(String, u64, u64)> {
    let len = u32::from_le_bytes(bundle[4096..4100].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&bundle[4100..4100 + len]).unwrap();
    h["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["offset"].as_u64().unwrap(), s["size"].as_u64().unwrap()))
        .collect()
}

/// A number field of the last console line starting with `prefix`.
fn console_field(console: &str, prefix: &str, field: &str) -> u64 {
    let line = console.lines().rfind(|l| l.contains(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{field}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field}= in {line:?}"))
}

/// The largest chunk (`ChunkParams::DEFAULT.max`): an estimate is exact up to one chunk.
const MAX_CHUNK: u64 = 256 << 10;

/// A raw image of release 1 trusting `pubkey`, with a disk 1 GiB larger than the image so the
/// state partition (where bundles are staged) grows at first boot.
fn release_1_image(s: &Scratch, pubkey: &Path, extra: &[&str]) -> PathBuf {
    let rootfs = demo_release(s, "1", PLAIN);
    let image = s.path("release-1.raw");
    let key = pubkey.display().to_string();
    let mut args = vec!["--update-key", &key, "--release-version", "1"];
    args.extend_from_slice(extra);
    build("raw", &rootfs, &image, &args);
    let len = std::fs::metadata(&image).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&image).unwrap().set_len(len + (1 << 30)).unwrap();
    image
}

/// A NoCloud seed (`planet-image seed --update …`) pointing the update agent at the test server.
fn seed(s: &Scratch) -> PathBuf {
    let img = s.path("seed.img");
    ok(planet_image()
        .args(["seed", "--role", "dev", "--hostname", "upd-1"])
        .args(["--update", "url=http://10.0.2.100/update.planet", "--update", "check_every=3s"])
        .args(["--update", "bless_after=5s", "--update", "trial_timeout=240s"])
        .args(["--update", "health_url=http://127.0.0.1:2379/health"])
        .arg("-o")
        .arg(&img)
        .env("SOURCE_DATE_EPOCH", "1700000000"));
    img
}

fn boot_guest(image: &Path, seed: &Path, server: &BundleServer, etcd_port: u16, s: &Scratch) -> Guest {
    Guest::start(
        image,
        s,
        &[
            "--seed",
            &seed.display().to_string(),
            "--guestfwd",
            &format!("10.0.2.100:80={}", server.port),
            "--forward",
            &format!("{etcd_port}:2379"),
        ],
    )
}

/// Waits until `needle` has appeared `n` times on the console.
fn wait_count(g: &mut Guest, needle: &str, n: usize, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = g.console();
        if text.matches(needle).count() >= n {
            return text;
        }
        if g.wait_exit(Duration::from_millis(0)).is_some() {
            panic!("the guest exited before {needle:?} appeared {n} times; console:\n{text}");
        }
        assert!(start.elapsed() < timeout, "{needle:?} did not appear {n} times within {timeout:?}; console:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn etcd_release(port: u16) -> Option<String> {
    let body = etcd_range(port, "/release")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let value = v["kvs"][0]["value"].as_str()?;
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()
        .and_then(|mut c| {
            c.stdin.take()?.write_all(value.as_bytes()).ok()?;
            c.wait_with_output().ok()
        })?;
    Some(String::from_utf8_lossy(&decoded.stdout).trim().to_string())
}

fn wait_etcd_release(port: u16, want: &str, g: &Guest) {
    let got = poll(Duration::from_secs(180), || etcd_release(port).filter(|r| r == want));
    assert!(
        got.is_some(),
        "etcd never showed release {want} (last: {:?}); console:\n{}",
        etcd_release(port),
        g.console()
    );
}

/// SHA-256 of each boot-path partition: ESP and both slots.
fn boot_path_digests(image: &Path) -> Vec<(String, String)> {
    let (ss, parts) = sfdisk(image);
    let mut out = Vec::new();
    for p in parts.iter().filter(|p| ["esp", "planet-a", "planet-b"].contains(&p.name.as_str())) {
        let dd = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "dd if='{}' bs={ss} skip={} count={} status=none | sha256sum",
                image.display(),
                p.start,
                p.size
            ))
            .output()
            .unwrap();
        out.push((
            p.name.clone(),
            String::from_utf8_lossy(&dd.stdout).split_whitespace().next().unwrap_or("").to_string(),
        ));
    }
    out
}

#[test]
fn an_update_is_installed_blessed_and_a_failing_one_rolls_back() {
    let s = Scratch::new("update-flow");
    let (key, pubkey) = keygen(&s, "release");
    let image = release_1_image(&s, &pubkey, &[]);
    // Bundle 1 only tells the estimate what a machine on release 1 holds.
    let b1 = bundle(&s, &demo_release(&s, "1", PLAIN), "1", &key);
    let (b2, estimate) = bundle_estimated(&s, &demo_release(&s, "2", PLAIN), "2", &key, &b1);
    let failing = "replaced.add('sbin/init')\ndef extra(o):\n    add_file(o, 'sbin/init', b'#!/bin/sh\\necho release 3 init fails\\nexit 3\\n', 0o755)\n";
    let b3 = bundle(&s, &demo_release(&s, "3", failing), "3", &key);
    let seed = seed(&s);
    let server = BundleServer::start(Duration::from_secs(1800));
    server.serve(Some(std::fs::read(&b2).unwrap()));
    let etcd = free_port();
    let mut g = boot_guest(&image, &seed, &server, etcd, &s);

    // Release 1 finds bundle 2, installs it into slot b and reboots.
    g.wait_for("planet-init: release running=1 slot=a entry=planet-0001-a.conf trial=false", BOOT);
    // Fetched by chunks: what the estimate said (up to one chunk), the rest taken from slot a
    // and the running kernel and initramfs.
    g.wait_for("planet-init: update fetched release=2", BOOT);
    let sent = server.sent();
    let console = g.console();
    let fetched = console_field(&console, "update fetched release=2", "fetched");
    assert!(fetched.abs_diff(estimate) <= MAX_CHUNK, "fetched {fetched}, estimated {estimate}:\n{console}");
    assert!(console_field(&console, "update fetched release=2", "reused") > 0, "{console}");
    // The server's count: the download plus the 4 KiB preludes of the checks.
    assert!(sent >= fetched && sent <= fetched + 3 * 4096, "server sent {sent}, the machine fetched {fetched}");
    g.wait_for("planet-init: update installed release=2 slot=b entry=planet-0002-b+3.conf", BOOT);
    g.wait_for("planet-init: update rebooting", BOOT);
    // systemd-boot starts the first try (renaming +3 to +2-1) and the trial passes.
    g.wait_for("planet-init: release running=2 slot=b entry=planet-0002-b+2-1.conf trial=true", BOOT);
    g.wait_for("planet-init: update blessed release=2 slot=b entry=planet-0002-b.conf", BOOT);
    wait_etcd_release(etcd, "2", &g);
    let log = server.log();
    assert!(log.iter().any(|l| l.contains("range=bytes=0-4095")), "{log:?}");

    // The next boot is release 2 again, without a counter; bundle 2 is not taken twice.
    g.monitor("system_reset");
    g.wait_for("planet-init: release running=2 slot=b entry=planet-0002-b.conf trial=false", BOOT);
    g.wait_for("planet-init: update skipped reason=\"release 2 is already running\"", BOOT);

    // Release 3's init exits at once: each try reboots; once the tries are spent systemd-boot
    // boots release 2 again, which says so.
    server.serve(Some(std::fs::read(&b3).unwrap()));
    g.wait_for("planet-init: update installed release=3 slot=a entry=planet-0003-a+3.conf", BOOT);
    let text = wait_count(&mut g, "planet-init: update trial failed", 3, BOOT);
    for entry in ["planet-0003-a+2-1.conf", "planet-0003-a+1-2.conf", "planet-0003-a+0-3.conf"] {
        assert!(text.contains(&format!("release running=3 slot=a entry={entry} trial=true")), "{entry}:\n{text}");
    }
    g.wait_for("planet-init: update rolled back failed=3 running=2", BOOT);
    let text =
        wait_count(&mut g, "planet-init: release running=2 slot=b entry=planet-0002-b.conf trial=false", 2, BOOT);
    assert_eq!(text.matches("release running=3").count(), 3, "exactly three tries:\n{text}");
    g.wait_for("already failed its trial on this machine", BOOT);
    wait_etcd_release(etcd, "2", &g);

    // Power off; the ESP holds release 2's blessed entry and no trace of the bad one.
    g.monitor("system_powerdown");
    assert!(g.wait_exit(Duration::from_secs(120)).is_some(), "no power-off:\n{}", g.console());
    let esp = s.path("esp.img");
    extract_partition(&image, "esp", &esp);
    ok(Command::new("fsck.vfat").arg("-n").arg(&esp));
    let entries = stdout(Command::new("mdir").args(["-b", "-i"]).arg(&esp).arg("::/loader/entries"));
    let mut names: Vec<&str> = entries.lines().filter_map(|l| l.rsplit('/').next()).filter(|n| !n.is_empty()).collect();
    names.sort();
    assert_eq!(names, ["planet-0002-b.conf"], "{entries}");
}

#[test]
fn bad_bundles_are_refused_and_a_power_cut_keeps_the_previous_release() {
    let s = Scratch::new("update-faults");
    let (key, pubkey) = keygen(&s, "release");
    let (other_key, _) = keygen(&s, "other");
    // Slots large enough for a bundle whose slot write takes a while.
    let layout = std::fs::read_to_string(repo().join("image-layouts/default.toml"))
        .unwrap()
        .replace("# size_mib = 2048", "size_mib = 192");
    std::fs::write(s.path("layout.toml"), layout).unwrap();
    let layout_arg = s.path("layout.toml").display().to_string();
    let image = release_1_image(&s, &pubkey, &["--layout", &layout_arg]);
    let big = "def extra(o):\n    add_file(o, 'var/blob', os.urandom(96 << 20))\n";
    let rootfs_2 = demo_release(&s, "2", big);
    let b1 = bundle(&s, &demo_release(&s, "1", PLAIN), "1", &key);
    let (b2, estimate) = bundle_estimated(&s, &rootfs_2, "2", &key, &b1);
    let b2 = std::fs::read(b2).unwrap();
    let foreign = std::fs::read(bundle(&s, &demo_release(&s, "2", PLAIN), "2", &other_key)).unwrap();
    // A bundle without chunks is downloaded whole, then refused for its signature.
    let plain = s.path("update-2-plain.planet");
    make_bundle(&rootfs_2, &key, &plain, "2", &["--no-chunks"]);
    let mut flipped = std::fs::read(&plain).unwrap();
    let at = flipped.len() - 3 * 4096;
    flipped[at] ^= 0x40;
    // A chunked one whose blob the server altered: refused at that chunk.
    let layout = sections(&b2);
    let (_, rootfs_at, rootfs_len) = layout.iter().find(|(n, _, _)| n == "rootfs").unwrap().clone();
    let data_start = layout.iter().filter(|(n, _, _)| !n.starts_with("chunks-")).map(|(_, o, _)| *o).min().unwrap();
    let mut altered = b2.clone();
    altered[(rootfs_at + rootfs_len / 2) as usize] ^= 0x01;
    let truncated = b2[..b2.len() - 1 - (1 << 20)].to_vec();

    let before = boot_path_digests(&image);
    let seed = seed(&s);
    let server = BundleServer::start(Duration::from_secs(1800));
    let etcd = free_port();
    let mut g = boot_guest(&image, &seed, &server, etcd, &s);
    g.wait_for("planet-init: release running=1 slot=a entry=planet-0001-a.conf trial=false", BOOT);

    // Each bad bundle is refused with its reason; the server sees no full download of the
    // foreign and truncated ones (their first 4 KiB are enough).
    server.serve(Some(foreign));
    g.wait_for("signed by another key", BOOT);
    server.serve(Some(truncated));
    g.wait_for("truncated", BOOT);
    server.serve(Some(flipped));
    g.wait_for("signature does not match", BOOT);
    server.serve(Some(altered));
    g.wait_for("does not match the signed index", BOOT);
    let text = g.console();
    assert!(!text.contains("update writing"), "{text}");
    server.serve(None);
    // Let any download in flight finish before reading the disk.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(boot_path_digests(&image), before, "a refused bundle changed the boot path");
    let full_gets = server.log().iter().filter(|l| l.contains("range=-")).count();
    assert!(full_gets >= 1, "{:?}", server.log());

    // A good bundle, whose download breaks once half-way through a request for chunks: the
    // next check resumes, keeping every chunk the broken request had delivered whole.
    server.break_once_from(data_start);
    server.serve(Some(b2));
    g.wait_for("planet-init: update fetched release=2", BOOT);
    let console = g.console();
    let broke: u64 = server
        .log()
        .iter()
        .find_map(|l| l.strip_prefix("broke the connection after ")?.strip_suffix(" bytes")?.parse().ok())
        .unwrap_or_else(|| panic!("the connection was not broken: {:?}", server.log()));
    let resumed = console_field(&console, "update fetched release=2", "resumed");
    let fetched = console_field(&console, "update fetched release=2", "fetched");
    assert!(resumed + MAX_CHUNK >= broke, "resumed {resumed} of the {broke} bytes before the break:\n{console}");
    // What the broken request delivered whole is not fetched again.
    assert!(
        fetched + broke <= estimate + 2 * MAX_CHUNK,
        "fetched {fetched} after {broke} bytes before the break, estimated {estimate}: chunks fetched twice\n{console}"
    );

    // Cut the power as soon as the slot write has started.
    let start = Instant::now();
    loop {
        let text = g.console();
        if text.contains("planet-init: update progress slot=b") {
            assert!(!text.contains("update installed"), "{text}");
            break;
        }
        assert!(start.elapsed() < BOOT, "no progress line; console:\n{}", g.console());
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(g); // SIGKILL to QEMU: the power cut
    server.serve(None);

    // The next boot runs release 1, reports the interrupted install, and serves release 1.
    let mut g = boot_guest(&image, &seed, &server, etcd, &s);
    g.wait_for("planet-init: release running=1 slot=a entry=planet-0001-a.conf trial=false", BOOT);
    g.wait_for("planet-init: update interrupted install=\"slot=b release=2\"", BOOT);
    wait_etcd_release(etcd, "1", &g);
}
