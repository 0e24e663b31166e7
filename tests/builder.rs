//! The builder end to end, checked with tools nobody here wrote: sfdisk, unsquashfs,
//! sqfs2tar, fsck.vfat, e2fsck, qemu-img.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// A rootfs with everything a rootless builder finds hard: root-owned files, setuid, a
/// device node, a fifo, a hard link, an xattr (file capability), another owner.
fn special_tarball(out: &Path) {
    python_tar(
        out,
        r##"
    add(t, "./", tarfile.DIRTYPE, mode=0o755)
    for d in ["bin", "dev", "etc", "sbin", "usr", "usr/bin"]:
        add(t, d, tarfile.DIRTYPE, mode=0o755)
    add(t, "bin/su", data=b"#!/bin/sh\necho su\n", mode=0o4755)
    add(t, "dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
    add(t, "dev/sda", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(8, 0))
    add(t, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
    add(t, "etc/passwd-link", tarfile.LNKTYPE, link="etc/passwd")
    add(t, "usr/bin/ping", data=b"\x7fELFping", mode=0o755,
        pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"})
    add(t, "usr/bin/owned", data=b"x", mode=0o640, uid=1000, gid=1000)
    add(t, "sbin/init", tarfile.SYMTYPE, link="/bin/su")
    add(t, "run-fifo", tarfile.FIFOTYPE, mode=0o600)
"##,
    );
}

fn is_root() -> bool {
    planet_image::util::sys::getuid() == 0
}

/// A copy of a cached package where an unprivileged user can read it.
fn readable_package(role: &str, dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(cache_dir().join("packages.json")).expect("run scripts/test to fetch packages");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let src = v.as_array().unwrap().iter().find(|r| r["role"] == role).unwrap()["file"].as_str().unwrap().to_string();
    let dst = dir.join(Path::new(&src).file_name().unwrap());
    std::fs::copy(&src, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).unwrap();
    dst
}

#[test]
fn unprivileged_raw_build_preserves_owners_modes_devices_links_and_xattrs() {
    let s = Scratch::new("unpriv");
    std::fs::set_permissions(&s.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let tarball = s.path("special.tar");
    special_tarball(&tarball);
    let kernel = readable_package("kernel", &s.0);
    let boot = readable_package("bootloader", &s.0);
    let planet_init = s.path("planet-init");
    std::fs::copy(planet_image_init(), &planet_init).unwrap();
    std::fs::set_permissions(&planet_init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = s.path("special.raw");

    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(bin());
        c
    } else {
        Command::new(bin())
    };
    cmd.args(["build", "--target", "raw", "--rootfs"])
        .arg(&tarball)
        .arg("-o")
        .arg(&image)
        .arg("--kernel-package")
        .arg(&kernel)
        .arg("--bootloader-package")
        .arg(&boot)
        .arg("--planet-init")
        .arg(&planet_init)
        .env("HOME", &s.0)
        .env("SOURCE_DATE_EPOCH", "1700000000");
    ok(&mut cmd);
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&image).unwrap().uid(), 65534, "the build really ran unprivileged");
    }

    let slot = s.path("planet-a.sqfs");
    extract_partition(&image, "planet-a", &slot);
    let listing = stdout(Command::new("unsquashfs").arg("-lln").arg(&slot));
    let expect = [
        ("-rwsr-xr-x 0/0", "squashfs-root/bin/su"),
        ("crw-rw-rw- 0/0", "squashfs-root/dev/null"),
        ("brw-rw---- 0/6", "squashfs-root/dev/sda"),
        ("-rw-r----- 1000/1000", "squashfs-root/usr/bin/owned"),
        ("lrwxrwxrwx 0/0", "squashfs-root/sbin/init -> /bin/su"),
        ("prw------- 0/0", "squashfs-root/run-fifo"),
        ("-rw-r--r-- 0/0", "squashfs-root/etc/passwd-link"),
    ];
    for (mode_owner, name) in expect {
        assert!(
            listing.lines().any(|l| l.starts_with(mode_owner) && l.ends_with(name)),
            "unsquashfs -lln lacks `{mode_owner} … {name}`:\n{listing}"
        );
    }
    assert!(listing.lines().any(|l| l.contains("1,  3") && l.ends_with("dev/null")), "{listing}");
    // Hard links and xattrs, as another implementation (sqfs2tar) reads them back.
    let tar = Command::new("sqfs2tar").arg(&slot).output().unwrap();
    assert!(tar.status.success());
    let tar_path = s.path("back.tar");
    std::fs::write(&tar_path, &tar.stdout).unwrap();
    let tv = stdout(Command::new("tar").arg("-tvf").arg(&tar_path).arg("--xattrs"));
    assert!(tv.lines().any(|l| l.starts_with('h') && l.contains("etc/passwd-link link to etc/passwd")), "{tv}");
    let script = "import tarfile,sys\nfor m in tarfile.open(sys.argv[1]):\n    print(m.name, sorted(m.pax_headers))";
    let pax = stdout(Command::new("python3").args(["-c", script]).arg(&tar_path));
    assert!(
        pax.lines().any(|l| l.starts_with("usr/bin/ping") && l.contains("SCHILY.xattr.security.capability")),
        "{pax}"
    );
}

fn planet_image_init() -> std::path::PathBuf {
    std::env::var_os("PLANET_INIT")
        .map(Into::into)
        .unwrap_or_else(|| repo().join("target/x86_64-unknown-linux-gnu/release/planet-init"))
}

#[test]
fn partitions_and_filesystems_pass_foreign_validators() {
    let s = Scratch::new("validate");
    let tarball = s.path("special.tar");
    special_tarball(&tarball);
    let image = s.path("disk.raw");
    build("raw", &tarball, &image, &[]);

    let (ss, parts) = sfdisk(&image);
    assert_eq!(ss, 512);
    let got: Vec<(&str, &str)> = parts.iter().map(|p| (p.name.as_str(), p.type_guid.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            ("planet-a", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
            ("planet-b", "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
            ("planet-state", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        ]
    );
    for p in &parts {
        assert_eq!(p.start * 512 % (1 << 20), 0, "{} is 1 MiB aligned", p.name);
    }
    ok(Command::new("sgdisk").arg("-v").arg(&image));

    let esp = s.path("esp.img");
    extract_partition(&image, "esp", &esp);
    ok(Command::new("fsck.vfat").arg("-n").arg(&esp));
    let files = stdout(Command::new("mdir").args(["-/", "-b", "-i"]).arg(&esp).arg("::/"));
    for f in [
        "::/EFI/BOOT/BOOTX64.EFI",
        "::/loader/loader.conf",
        "::/loader/entries/planet-0001-a.conf",
        "::/planet-a/vmlinuz",
        "::/planet-a/initramfs.img",
    ] {
        assert!(files.lines().any(|l| l == f), "ESP lacks {f}:\n{files}");
    }
    let entry = stdout(Command::new("mtype").arg("-i").arg(&esp).arg("::/loader/entries/planet-0001-a.conf"));
    assert!(entry.contains("options console=ttyS0 planet.slot=a"), "{entry}");
    // No `default`: systemd-boot boots the newest generation with tries left (boot counting).
    let loader = stdout(Command::new("mtype").arg("-i").arg(&esp).arg("::/loader/loader.conf"));
    assert!(!loader.contains("default"), "{loader}");

    let slot = s.path("slot.sqfs");
    extract_partition(&image, "planet-a", &slot);
    let sb = stdout(Command::new("unsquashfs").arg("-s").arg(&slot));
    assert!(sb.contains("Compression zstd"), "{sb}");

    let state = s.path("state.ext4");
    extract_partition(&image, "planet-state", &state);
    ok(Command::new("e2fsck").arg("-fn").arg(&state));
    let label = stdout(Command::new("e2label").arg(&state));
    assert_eq!(label.trim(), "planet-state");

    let qcow = s.path("disk.qcow2");
    build("qcow2", &tarball, &qcow, &[]);
    ok(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(&qcow));
    let info = stdout(Command::new("qemu-img").args(["info", "--output=json"]).arg(&qcow));
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
}

#[test]
fn same_inputs_same_epoch_give_identical_images_and_inspect_catches_a_flipped_byte() {
    let s = Scratch::new("repro");
    let tarball = s.path("special.tar");
    special_tarball(&tarball);
    let (a, b) = (s.path("a.raw"), s.path("b.raw"));
    build("raw", &tarball, &a, &[]);
    build("raw", &tarball, &b, &[]);
    let digest = |p: &Path| stdout(Command::new("sha256sum").arg(p)).split_whitespace().next().unwrap().to_string();
    assert_eq!(digest(&a), digest(&b), "two builds of the same inputs differ");

    let report = stdout(planet_image().arg("inspect").arg(&a));
    assert!(report.contains("verify:     ok"), "{report}");
    assert!(report.contains("planet-a") && report.contains("squashfs zstd"), "{report}");

    // Flip one byte inside planet-a and inspect again (the manifest travels with the copy).
    let (_, parts) = sfdisk(&b);
    let slot = parts.iter().find(|p| p.name == "planet-a").unwrap();
    let mut bytes = std::fs::read(&b).unwrap();
    let at = (slot.start * 512 + 100) as usize;
    bytes[at] ^= 0x01;
    std::fs::write(&b, bytes).unwrap();
    let out = planet_image().arg("inspect").arg(&b).output().unwrap();
    assert!(!out.status.success(), "inspect accepted a flipped byte");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("partition 2 (planet-a)"), "{err}");
}

/// The host stage cache (kernel + initramfs, keyed by their inputs) changes no byte of an
/// image: built without it, filling it, from it, and after one of its files was damaged (which
/// is noticed, not built in, and made again), the image is the same.
#[test]
fn the_host_cache_changes_no_byte_and_a_damaged_entry_is_made_again() {
    let s = Scratch::new("host-cache");
    let tarball = s.path("special.tar");
    special_tarball(&tarball);
    let cache = s.path("cache");
    std::fs::create_dir(&cache).unwrap();
    let (kernel, boot) = (readable_package("kernel", &s.0), readable_package("bootloader", &s.0));
    let build_with = |name: &str, extra: &[&str]| -> (String, String) {
        let out = s.path(name);
        let res = build(
            "raw",
            &tarball,
            &out,
            &[
                &["--cache-dir", cache.to_str().unwrap()],
                &["--kernel-package", kernel.to_str().unwrap()],
                &["--bootloader-package", boot.to_str().unwrap()],
                extra,
            ]
            .concat(),
        );
        let digest = stdout(Command::new("sha256sum").arg(&out)).split_whitespace().next().unwrap().to_string();
        (digest, String::from_utf8_lossy(&res.stderr).into_owned())
    };
    let entries = || -> Vec<std::path::PathBuf> {
        match std::fs::read_dir(cache.join("host")) {
            Ok(d) => d.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    };

    let (without, log) = build_with("without.raw", &["--no-host-cache"]);
    assert!(log.contains("kernel + initramfs done") && log.contains("made:"), "{log}");
    assert!(entries().is_empty(), "--no-host-cache wrote the cache: {:?}", entries());

    let (filling, log) = build_with("filling.raw", &[]);
    assert!(log.contains("made:"), "{log}");
    let stored = entries();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let (cached, log) = build_with("cached.raw", &[]);
    assert!(log.contains("from the cache:"), "{log}");

    // One byte of the cached initramfs flipped.
    let initramfs = stored[0].join("initramfs.img");
    let mut bytes = std::fs::read(&initramfs).unwrap();
    bytes[4096] ^= 0x20;
    std::fs::write(&initramfs, bytes).unwrap();
    let (after_damage, log) = build_with("after-damage.raw", &[]);
    assert!(log.contains("is damaged") && log.contains("initramfs.img has sha256"), "{log}");
    assert!(log.contains("made:"), "{log}");
    let (again, log) = build_with("again.raw", &[]);
    assert!(log.contains("from the cache:"), "the entry was not made again: {log}");

    for (name, d) in [("filling", &filling), ("cached", &cached), ("after damage", &after_damage), ("again", &again)] {
        assert_eq!(d, &without, "the image {name} differs from the one built without the cache");
    }
}

fn assert_refused(tarball: &Path, out: &Path, entry: &str) {
    let res =
        planet_image().args(["build", "--target", "raw", "--rootfs"]).arg(tarball).arg("-o").arg(out).output().unwrap();
    assert!(!res.status.success(), "a hostile tarball was accepted");
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains(entry), "the error does not name {entry:?}:\n{err}");
    let dir = out.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".tar"))
        .collect();
    assert!(left.is_empty(), "files left behind after a refused build: {left:?}");
}

#[test]
fn hostile_tarballs_are_refused_and_leave_nothing_behind() {
    let s = Scratch::new("hostile");
    let dotdot = s.path("dotdot.tar");
    python_tar(
        &dotdot,
        r#"
    add(t, "etc", tarfile.DIRTYPE, mode=0o755)
    add(t, "../etc/passwd", data=b"evil\n")
"#,
    );
    assert_refused(&dotdot, &s.path("out.raw"), "../etc/passwd");

    let through_link = s.path("symlink.tar");
    python_tar(
        &through_link,
        r#"
    add(t, "etc", tarfile.DIRTYPE, mode=0o755)
    add(t, "escape", tarfile.SYMTYPE, link="/etc")
    add(t, "escape/passwd", data=b"evil\n")
"#,
    );
    assert_refused(&through_link, &s.path("out.raw"), "escape/passwd");

    let garbage = s.path("garbage.tar");
    std::fs::write(&garbage, vec![0x5Au8; 4096]).unwrap();
    assert_refused(&garbage, &s.path("out.qcow2"), "garbage.tar");
}

#[test]
fn planet_release_rootfs_becomes_the_slot_root_and_directories_work_too() {
    let s = Scratch::new("release");
    let release = fixture("release.tar.gz");
    let image = s.path("release.raw");
    build("raw", &release, &image, &[]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("release.raw.manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["rootfs"]["planet_release"], true);
    assert_eq!(manifest["rootfs"]["format"], "tar.gz");
    let slot = s.path("slot.sqfs");
    extract_partition(&image, "planet-a", &slot);
    let listing = stdout(Command::new("unsquashfs").arg("-lln").arg(&slot));
    assert!(listing.lines().any(|l| l.ends_with("squashfs-root/usr/bin/planet")), "{listing}");
    assert!(!listing.contains("squashfs-root/rootfs"), "{listing}");

    // A directory input: the same tree unpacked.
    let dir = s.path("tree");
    std::fs::create_dir(&dir).unwrap();
    ok(Command::new("tar").arg("-xzf").arg(&release).arg("-C").arg(&dir));
    let from_dir = s.path("dir.raw");
    build("raw", &dir.join("rootfs"), &from_dir, &[]);
    let slot2 = s.path("slot2.sqfs");
    extract_partition(&from_dir, "planet-a", &slot2);
    let listing2 = stdout(Command::new("unsquashfs").arg("-lln").arg(&slot2));
    assert!(listing2.lines().any(|l| l.ends_with("squashfs-root/usr/bin/planet")), "{listing2}");
}

/// Runs `cmd`; `None` when it is still running after `limit` (it is killed then).
fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Option<std::process::Output> {
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Raw tar headers from Python (ustar/GNU fields by offset), for archives no archiver writes.
const RAW_TAR_PY: &str = r#"
import sys, gzip
def num(v, n):
    s = oct(v)[2:].encode()
    return s.rjust(n - 1, b"0") + b"\0" if len(s) < n else b"\x80" + v.to_bytes(n - 1, "big")
def header(name, typ, size, sparse=None, real=0):
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = num(0o644, 8); h[108:116] = num(0, 8); h[116:124] = num(0, 8)
    h[124:136] = num(size, 12); h[136:148] = num(1700000000, 12); h[156] = ord(typ)
    h[257:263] = b"ustar "; h[263:265] = b" \0"
    if sparse:
        h[386:398] = num(sparse[0], 12); h[398:410] = num(sparse[1], 12); h[483:495] = num(real, 12)
    h[148:156] = b" " * 8
    h[148:156] = oct(sum(h))[2:].encode().rjust(6, b"0") + b"\0 "
    return bytes(h)
def pad(n):
    return b"\0" * (-n % 512)
out = gzip.open(sys.argv[2], "wb", compresslevel=1)
kind = sys.argv[1]
out.write(header(b"etc", "5", 0))
if kind == "longname":
    n = 256 << 20
    out.write(header(b"././@LongLink", "L", n))
    for _ in range(n >> 20): out.write(b"a" * (1 << 20))
    out.write(pad(n) + header(b"x", "0", 0))
elif kind == "pax":
    rec = b"comment=" + b"a" * (256 << 20) + b"\n"
    l = len(rec) + 10
    rec = str(l).encode() + b" " + rec
    rec = str(len(rec)).encode() + rec[len(str(l)):]
    out.write(header(b"PaxHeader/x", "x", len(rec)) + rec + pad(len(rec)) + header(b"x", "0", 0))
elif kind == "sparse":
    real = 1 << 60
    out.write(header(b"etc/big", "S", 512, sparse=(real - 512, 512), real=real) + b"x" * 512)
out.write(b"\0" * 1024)
out.close()
"#;

/// Hostile tarballs that cost kilobytes to megabytes (finding 16): a 256 MiB GNU long name, a
/// 256 MiB pax record, a sparse file of 2^60 bytes. Each build stops at once with an error
/// saying why, instead of reading the extension whole into memory or streaming exabytes of
/// zeros, and leaves nothing behind.
#[test]
fn tarball_bombs_are_refused_fast() {
    let s = Scratch::new("bombs");
    for (kind, says) in [("longname", "GNU long name"), ("pax", "pax extended header"), ("sparse", "sparse file")] {
        let tarball = s.path(&format!("{kind}.tar"));
        ok(Command::new("python3").args(["-c", RAW_TAR_PY, kind]).arg(&tarball));
        let out = s.path("out.raw");
        let started = std::time::Instant::now();
        let res = output_within(
            planet_image().args(["build", "--target", "raw", "--rootfs"]).arg(&tarball).arg("-o").arg(&out),
            std::time::Duration::from_secs(60),
        )
        .unwrap_or_else(|| panic!("{kind}: the build was still running after 60 s"));
        assert!(!res.status.success(), "{kind}: a hostile tarball was accepted");
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(err.contains(says), "{kind}: the error does not say {says:?}:\n{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{kind}: took {:?}", started.elapsed());
        let left: Vec<_> = std::fs::read_dir(&s.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".tar"))
            .collect();
        assert!(left.is_empty(), "{kind}: files left behind: {left:?}");
    }
}

/// SIGINT or SIGTERM during a build (finding 17): the work directory, the partial image and
/// the manifest are all removed, and the exit status says which signal it was. The signal is
/// sent to planet-image alone (as `kill PID` would), so the tools it runs must be stopped by it.
#[test]
fn interrupted_builds_leave_nothing_behind() {
    use std::io::BufRead;
    let s = Scratch::new("interrupt");
    for (sig, name, at) in
        [(libc::SIGINT, "SIGINT", "rootfs → squashfs"), (libc::SIGTERM, "SIGTERM", "assembling the disk")]
    {
        let out = s.path("demo.qcow2");
        let mut child = planet_image()
            .args(["build", "--target", "qcow2", "--rootfs"])
            .arg(fixture("demo.tar"))
            .arg("-o")
            .arg(&out)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 {
            seen.push_str(&line);
            if line.contains(at) {
                break;
            }
            line.clear();
        }
        assert!(seen.contains(at), "{name}: the build never printed {at:?}:\n{seen}");
        // Our own child, not yet waited for.
        let _ = planet_image::util::sys::kill(child.id() as libc::pid_t, sig);
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(128 + sig), "{name}: {status}\n{seen}{rest}");
        let left: Vec<_> =
            std::fs::read_dir(&s.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(left.is_empty(), "{name} at {at:?} left {left:?}\n{seen}{rest}");
    }
}
