//! Signed update bundles end to end: `keygen`, `bundle`, `inspect --key`, `build --update-key`,
//! checked with the real `minisign` (keys it made sign our bundles; it verifies ours).

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs a command expected to fail; returns its stderr.
fn fails(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "{cmd:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn minisign() -> Command {
    let found = Command::new("minisign").arg("-v").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "minisign is missing: scripts/test installs it (Debian package minisign)");
    Command::new("minisign")
}

fn keygen(name: &Path) -> serde_json::Value {
    json(&ok(planet_image().arg("keygen").arg("-o").arg(name)))
}

fn bundle(rootfs: &Path, key: &Path, out: &Path, release: &str, extra: &[&str]) -> serde_json::Value {
    json(&make_bundle(rootfs, key, out, release, extra))
}

fn inspect(bundle: &Path, key: Option<&Path>) -> serde_json::Value {
    let mut cmd = planet_image();
    cmd.arg("inspect").arg(bundle);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    json(&ok(&mut cmd))
}

/// A small rootfs, quick to squash.
fn tiny_rootfs(s: &Scratch) -> PathBuf {
    let tar = s.path("tiny.tar");
    python_tar(
        &tar,
        r##"
    add(t, "sbin", tarfile.DIRTYPE, mode=0o755)
    add(t, "sbin/init", data=b"#!/bin/sh\necho release 2\n", mode=0o755)
"##,
    );
    tar
}

/// Copies `len` bytes at `offset` of `file` out with dd.
fn dd_range(file: &Path, offset: u64, len: u64, out: &Path) {
    ok(Command::new("dd")
        .arg(format!("if={}", file.display()))
        .arg(format!("of={}", out.display()))
        .args(["iflag=skip_bytes,count_bytes", "bs=1M", "status=none"])
        .arg(format!("skip={offset}"))
        .arg(format!("count={len}")));
}

/// One file of a zstd-compressed newc initramfs, read with zstd and cpio; `None` when absent.
fn initramfs_file(initramfs: &Path, name: &str) -> Option<String> {
    let script = format!(
        "zstd -dc '{}' | cpio -i --quiet --to-stdout '{name}'; zstd -dc '{}' | cpio -t --quiet | grep -qx '{name}'",
        initramfs.display(),
        initramfs.display()
    );
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The signature text of a bundle's prelude (a .minisig file).
fn prelude_signature(bundle: &Path) -> Vec<u8> {
    let bytes = std::fs::read(bundle).unwrap();
    assert_eq!(&bytes[..8], b"PLBUNDLE");
    let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    bytes[16..16 + len].to_vec()
}

fn section(info: &serde_json::Value, name: &str) -> (u64, u64) {
    let s = info["sections"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap();
    (s["offset"].as_u64().unwrap(), s["size"].as_u64().unwrap())
}

#[test]
fn keygen_bundle_and_inspect_and_minisign_agree_and_tampering_is_refused() {
    let s = Scratch::new("bundle-demo");
    let name = s.path("update");
    let key = keygen(&name);
    let key_id = key["key_id"].as_str().unwrap().to_string();
    let (secret, public) = (s.path("update.key"), s.path("update.pub"));
    assert_eq!(key["secret_key"], secret.to_str().unwrap());
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    let pub_text = std::fs::read_to_string(&public).unwrap();
    assert_eq!(pub_text.lines().next().unwrap(), format!("untrusted comment: minisign public key {key_id}"));
    // Keys are never overwritten.
    let err = fails(planet_image().arg("keygen").arg("-o").arg(&name));
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(&public).unwrap(), pub_text);

    // Bundles must be ordered: no release, no bundle.
    let out = s.path("update.planet");
    let err = fails(
        planet_image()
            .arg("bundle")
            .arg("--rootfs")
            .arg(fixture("demo.tar"))
            .arg("--key")
            .arg(&secret)
            .arg("-o")
            .arg(&out),
    );
    assert!(err.contains("--release-version"), "{err}");
    assert!(!out.exists());

    let made = bundle(&fixture("demo.tar"), &secret, &out, "2", &[]);
    assert_eq!(made["release"], "2");
    assert_eq!(made["key_id"], key_id.as_str());
    assert_eq!(made["update_key_id"], key_id.as_str());

    let info = inspect(&out, Some(&public));
    assert_eq!(info["verified"], true);
    assert_eq!(info["format"], 1);
    assert_eq!(info["release"], "2");
    assert_eq!(info["created"], 1700000000);
    assert_eq!(info["key_id"], key_id.as_str());
    assert!(info["kernel"].as_str().unwrap().ends_with("-amd64"), "{info}");
    let total = std::fs::metadata(&out).unwrap().len();
    assert_eq!(info["total_bytes"], total);
    let names: Vec<&str> = info["sections"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    // Chunk indexes first (one range with the header), then the data.
    assert_eq!(names, ["chunks-rootfs", "chunks-vmlinuz", "chunks-initramfs", "rootfs", "vmlinuz", "initramfs"]);
    assert_eq!((made["chunked"].clone(), info["chunked"].clone()), (true.into(), true.into()));
    // Without a key it shows what the bundle claims, and says it verified nothing.
    let claimed = inspect(&out, None);
    assert_eq!(claimed["verified"], false);
    assert_eq!(claimed["sections"], info["sections"]);

    // The real minisign verifies the signed part (bytes 4096 to the end) with the prelude's text.
    let body = s.path("body");
    let tail = Command::new("tail").arg("-c").arg("+4097").arg(&out).output().unwrap();
    assert!(tail.status.success());
    std::fs::write(&body, &tail.stdout).unwrap();
    let sig = s.path("body.minisig");
    std::fs::write(&sig, prelude_signature(&out)).unwrap();
    let verified = stdout(minisign().arg("-Vm").arg(&body).arg("-x").arg(&sig).arg("-p").arg(&public));
    assert!(verified.contains(&format!("planet-bundle format=1 release=2 bytes={total}")), "{verified}");
    // ... and signs with our secret key file, checked against our public key file.
    let msg = s.path("msg");
    std::fs::write(&msg, b"hello\n").unwrap();
    ok(minisign().arg("-S").arg("-s").arg(&secret).arg("-m").arg(&msg));
    ok(minisign().arg("-V").arg("-p").arg(&public).arg("-m").arg(&msg));

    // The sections are what they say: a squashfs slot, and an initramfs that trusts the key.
    let (off, len) = section(&info, "rootfs");
    let slot = s.path("rootfs.sqfs");
    dd_range(&out, off, len, &slot);
    let sb = stdout(Command::new("unsquashfs").arg("-s").arg(&slot));
    assert!(sb.contains("Compression zstd"), "{sb}");
    let (off, len) = section(&info, "initramfs");
    let initramfs = s.path("initramfs.img");
    dd_range(&out, off, len, &initramfs);
    assert_eq!(initramfs_file(&initramfs, "etc/planet/update.pub").as_deref(), Some(pub_text.as_str()));

    // Tampering: a flipped byte in a section, a truncated copy, another machine's key.
    let flipped = s.path("flipped.planet");
    let mut bytes = std::fs::read(&out).unwrap();
    let (off, _) = section(&info, "rootfs");
    bytes[off as usize + 1000] ^= 0x01;
    std::fs::write(&flipped, &bytes).unwrap();
    let err = fails(planet_image().arg("inspect").arg(&flipped).arg("--key").arg(&public));
    assert!(err.contains("signature does not match"), "{err}");
    bytes[off as usize + 1000] ^= 0x01;
    let truncated = s.path("truncated.planet");
    std::fs::write(&truncated, &bytes[..bytes.len() - 5000]).unwrap();
    let err = fails(planet_image().arg("inspect").arg(&truncated).arg("--key").arg(&public));
    assert!(err.contains(&format!("truncated: {} bytes, the signature says {total}", total - 5000)), "{err}");
    let other = keygen(&s.path("other"));
    let err = fails(planet_image().arg("inspect").arg(&out).arg("--key").arg(s.path("other.pub")));
    let want =
        format!("signed by another key (key id {key_id}, this machine trusts {})", other["key_id"].as_str().unwrap());
    assert!(err.contains(&want), "{err}");
}

#[test]
fn minisign_keys_sign_bundles_and_encrypted_ones_are_refused() {
    let s = Scratch::new("bundle-minisign");
    let rootfs = tiny_rootfs(&s);
    let (mpub, mkey) = (s.path("m.pub"), s.path("m.key"));
    ok(minisign().arg("-G").arg("-W").arg("-p").arg(&mpub).arg("-s").arg(&mkey));
    // The new release trusts another key for the next updates (--update-key).
    keygen(&s.path("next"));
    let out = s.path("update.planet");
    let made = bundle(&rootfs, &mkey, &out, "1.10", &["--update-key", s.path("next.pub").to_str().unwrap()]);
    let next_pub = std::fs::read_to_string(s.path("next.pub")).unwrap();
    assert!(next_pub.contains(made["update_key_id"].as_str().unwrap()), "{made}");
    assert_ne!(made["update_key_id"], made["key_id"]);
    let info = inspect(&out, Some(&mpub));
    assert_eq!(info["verified"], true);
    assert_eq!(info["release"], "1.10");
    // minisign prints its key id without leading zeros; ours are always 16 digits.
    let mpub_text = std::fs::read_to_string(&mpub).unwrap();
    let comment_id = mpub_text.lines().next().and_then(|l| l.rsplit(' ').next()).unwrap();
    let hex = |id: &str| u64::from_str_radix(id, 16).unwrap_or_else(|e| panic!("key id {id:?}: {e}"));
    assert_eq!(info["key_id"].as_str().unwrap().len(), 16, "{info}");
    assert_eq!(hex(info["key_id"].as_str().unwrap()), hex(comment_id), "{mpub_text}");
    let (off, len) = section(&info, "initramfs");
    let initramfs = s.path("initramfs.img");
    dd_range(&out, off, len, &initramfs);
    assert_eq!(initramfs_file(&initramfs, "etc/planet/update.pub"), Some(next_pub));

    // A password-protected key cannot sign unattended: the error says what to make instead.
    let (epub, ekey) = (s.path("e.pub"), s.path("e.key"));
    let mut gen = minisign()
        .arg("-G")
        .arg("-p")
        .arg(&epub)
        .arg("-s")
        .arg(&ekey)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    gen.stdin.take().unwrap().write_all(b"secret\nsecret\n").unwrap();
    assert!(gen.wait().unwrap().success());
    let err = fails(
        planet_image()
            .arg("bundle")
            .arg("--rootfs")
            .arg(&rootfs)
            .arg("--key")
            .arg(&ekey)
            .args(["--release-version", "3"])
            .arg("-o")
            .arg(s.path("e.planet")),
    );
    assert!(
        err.contains("encrypted") && err.contains("minisign -G -W") && err.contains("planet-image keygen"),
        "{err}"
    );
    assert!(!s.path("e.planet").exists());
    // A disk image is not a bundle: --key is refused there.
    let err = fails(planet_image().arg("inspect").arg(&rootfs).arg("--key").arg(&mpub));
    assert!(err.contains("not one"), "{err}");
}

/// The ESP's files of a raw image, read with mtools.
fn esp_of(image: &Path, s: &Scratch) -> PathBuf {
    let esp = s.path(&format!("{}.esp", image.file_name().unwrap().to_string_lossy()));
    extract_partition(image, "esp", &esp);
    esp
}

fn esp_file(esp: &Path, name: &str, out: &Path) {
    ok(Command::new("mcopy").arg("-n").arg("-i").arg(esp).arg(format!("::/{name}")).arg(out));
}

#[test]
fn build_update_key_and_release_version_go_into_the_initramfs_boot_entry_and_manifest() {
    let s = Scratch::new("bundle-build");
    let rootfs = tiny_rootfs(&s);
    let key = keygen(&s.path("k"));
    let pub_text = std::fs::read_to_string(s.path("k.pub")).unwrap();
    let image = s.path("keyed.raw");
    build("raw", &rootfs, &image, &["--update-key", s.path("k.pub").to_str().unwrap(), "--release-version", "7.1"]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("keyed.raw.manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["release"], "7.1");
    assert_eq!(manifest["update_key_id"], key["key_id"]);

    let esp = esp_of(&image, &s);
    let initramfs = s.path("keyed-initramfs.img");
    esp_file(&esp, "planet-a/initramfs.img", &initramfs);
    assert_eq!(initramfs_file(&initramfs, "etc/planet/update.pub"), Some(pub_text));
    let files = stdout(Command::new("mdir").args(["-/", "-b", "-i"]).arg(&esp).arg("::/loader/entries"));
    let entry_name = files.lines().find(|l| l.ends_with(".conf")).unwrap_or_else(|| panic!("no entry: {files}"));
    let entry = stdout(Command::new("mtype").arg("-i").arg(&esp).arg(entry_name));
    assert!(entry.lines().any(|l| l == "version 7.1"), "{entry}");

    // Without them: no key (the machine takes no updates), the rootfs digest as the release.
    let plain = s.path("plain.raw");
    build("raw", &rootfs, &plain, &[]);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("plain.raw.manifest.json")).unwrap()).unwrap();
    let digest = manifest["rootfs"]["sha256"].as_str().unwrap();
    assert_eq!(manifest["release"], &digest[..12]);
    assert!(manifest.get("update_key_id").is_none(), "{manifest}");
    let esp = esp_of(&plain, &s);
    let initramfs = s.path("plain-initramfs.img");
    esp_file(&esp, "planet-a/initramfs.img", &initramfs);
    assert_eq!(initramfs_file(&initramfs, "etc/planet/update.pub"), None);
    // Different inputs, different images (the key and the release are in the build's seed).
    let guid = |m: &serde_json::Value| m["image"]["disk_guid"].as_str().unwrap().to_string();
    let keyed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.path("keyed.raw.manifest.json")).unwrap()).unwrap();
    assert_ne!(guid(&keyed), guid(&manifest));
    let bad = fails(
        planet_image()
            .args(["build", "--target", "raw", "--rootfs"])
            .arg(&rootfs)
            .arg("-o")
            .arg(s.path("bad.raw"))
            .args(["--release-version", "1 2"]),
    );
    assert!(bad.contains("release version \"1 2\" is not valid"), "{bad}");
}

/// Finding 8 from the command line: `--expires` and `--revoke` are signed into the bundle and
/// shown by `inspect`; a two-key `--update-key` file goes into the initramfs whole.
#[test]
fn bundles_carry_an_expiry_and_revocations_and_rotate_keys() {
    let s = Scratch::new("bundle-expiry");
    let rootfs = tiny_rootfs(&s);
    let (old, new) = (keygen(&s.path("old")), keygen(&s.path("new")));
    let ring = s.path("ring.pub");
    let ring_text =
        std::fs::read_to_string(s.path("old.pub")).unwrap() + &std::fs::read_to_string(s.path("new.pub")).unwrap();
    std::fs::write(&ring, &ring_text).unwrap();
    let (old_id, new_id) = (old["key_id"].as_str().unwrap(), new["key_id"].as_str().unwrap());

    // Signed by the old key, the new release trusts both: the overlap of a rotation.
    let out = s.path("overlap.planet");
    let made = bundle(
        &rootfs,
        &s.path("old.key"),
        &out,
        "2",
        &["--update-key", ring.to_str().unwrap(), "--expires", "2099-12-31"],
    );
    assert_eq!(made["update_key_id"], format!("{old_id},{new_id}"));
    assert_eq!(made["expires"], 4_102_358_400u64);
    let info = inspect(&out, Some(&ring));
    assert_eq!(info["verified"], true);
    assert_eq!(info["expires_utc"], "2099-12-31 00:00:00 UTC");
    assert_eq!(info["expired"], false);
    let (off, len) = section(&info, "initramfs");
    let initramfs = s.path("initramfs.img");
    dd_range(&out, off, len, &initramfs);
    assert_eq!(initramfs_file(&initramfs, "etc/planet/update.pub"), Some(ring_text));
    // The expiry is in the signed comment, so minisign sees it too.
    let sig = String::from_utf8(prelude_signature(&out)).unwrap();
    // (then the header digest of a chunked bundle)
    assert!(sig.contains(" expires=4102358400 head="), "{sig}");

    // Signed by the new key, trusting only it, revoking the old one, valid 30 days.
    let out = s.path("revoke.planet");
    let args = ["--update-key", "new.pub", "--revoke", old_id, "--expires", "30d"];
    let args: Vec<String> = args
        .iter()
        .map(|a| if *a == "new.pub" { s.path("new.pub").display().to_string() } else { a.to_string() })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let made = bundle(&rootfs, &s.path("new.key"), &out, "3", &args);
    assert_eq!(made["revokes"], serde_json::json!([old_id]));
    let info = inspect(&out, None);
    assert_eq!(info["revokes"], serde_json::json!([old_id]));
    assert_eq!(info["verified"], false);
    let days = (info["expires"].as_u64().unwrap() - 1_700_000_000) / 86_400;
    assert!(days > 30, "30 days from now, not from SOURCE_DATE_EPOCH: {info}");

    // Refused before anything is built: a past expiry, revoking the signer or a key still trusted.
    let base = |extra: &[&str]| {
        let mut c = planet_image();
        c.arg("bundle").arg("--rootfs").arg(&rootfs).arg("--key").arg(s.path("new.key"));
        c.args(["--release-version", "4", "-o"]).arg(s.path("bad.planet")).args(extra);
        c
    };
    let err = fails(&mut base(&["--expires", "2020-01-01"]));
    assert!(err.contains("--expires") && err.contains("not in the future"), "{err}");
    let err = fails(&mut base(&["--expires", "soon"]));
    assert!(err.contains("expected a UTC date"), "{err}");
    let err = fails(&mut base(&["--revoke", new_id]));
    assert!(err.contains("the key signing this bundle"), "{err}");
    let err = fails(&mut base(&["--revoke", old_id, "--update-key", ring.to_str().unwrap()]));
    assert!(err.contains("still trusts that key"), "{err}");
    let err = fails(&mut base(&["--revoke", "xyz"]));
    assert!(err.contains("16 hex digits"), "{err}");
    assert!(!s.path("bad.planet").exists());
}

/// `bundle` indexes its sections by chunks (the index parsed here by hand: the format in
/// docs/design.md), `--estimate-from` says what a machine on an earlier release downloads, and
/// `--no-chunks` writes a bundle without indexes.
#[test]
fn bundles_are_chunked_and_estimate_the_download_from_an_earlier_one() {
    let s = Scratch::new("bundle-chunks");
    let key = s.path("k");
    keygen(&key);
    let secret = s.path("k.key");
    let rootfs = tiny_rootfs(&s);
    let b1 = s.path("1.planet");
    bundle(&rootfs, &secret, &b1, "1", &[]);

    // The index covers its section exactly, chunk by chunk, each digest the chunk's.
    let info = inspect(&b1, Some(&s.path("k.pub")));
    let bytes = std::fs::read(&b1).unwrap();
    let (ix_off, ix_len) = section(&info, "chunks-rootfs");
    let (data_off, data_len) = section(&info, "rootfs");
    let ix = &bytes[ix_off as usize..(ix_off + ix_len) as usize];
    assert_eq!(&ix[..8], b"PLCHUNK1");
    let count = u64::from_le_bytes(ix[24..32].try_into().unwrap()) as usize;
    assert_eq!(ix.len(), 32 + 36 * count);
    let mut at = data_off;
    for e in ix[32..].chunks(36) {
        let len = u32::from_le_bytes(e[..4].try_into().unwrap()) as u64;
        assert!(len <= 256 << 10, "a chunk of {len} bytes");
        let chunk = s.path("chunk");
        dd_range(&b1, at, len, &chunk);
        let digest = stdout(Command::new("sha256sum").arg(&chunk));
        assert_eq!(digest.split_whitespace().next().unwrap(), hex(&e[4..]));
        at += len;
    }
    assert_eq!(at, data_off + data_len, "the chunks cover the section");

    // Release 2 changes one file: a machine on release 1 downloads a small part of it.
    let tar2 = s.path("tiny-2.tar");
    ok(Command::new("sh").arg("-c").arg(format!(
        "cp '{}' '{}' && mkdir -p '{d}/etc' && echo 2 > '{d}/etc/release-2' && tar -C '{d}' -rf '{}' etc",
        rootfs.display(),
        tar2.display(),
        tar2.display(),
        d = s.path("extra").display()
    )));
    let b2 = s.path("2.planet");
    let made = bundle(&tar2, &secret, &b2, "2", &["--estimate-from", b1.to_str().unwrap()]);
    let e = &made["estimate"];
    let total = made["total_bytes"].as_u64().unwrap();
    let download = e["download_bytes"].as_u64().unwrap();
    assert!(download > 0 && download < total / 2, "{made}");
    assert!(e["fetch_chunks"].as_u64().unwrap() < e["chunks"].as_u64().unwrap(), "{made}");
    // From itself, only the start of the file.
    let again = bundle(&tar2, &secret, &s.path("2b.planet"), "2", &["--estimate-from", b2.to_str().unwrap()]);
    assert_eq!(again["estimate"]["fetch_chunks"], 0, "{again}");
    assert_eq!(again["estimate"]["download_bytes"].as_u64().unwrap(), data_start(&again));

    // Without chunks: the three data sections, and nothing to estimate from.
    let plain = s.path("plain.planet");
    let made = bundle(&rootfs, &secret, &plain, "1", &["--no-chunks"]);
    assert_eq!(made["chunked"], false);
    let names: Vec<&str> = made["sections"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["rootfs", "vmlinuz", "initramfs"]);
    let bundle_3 = |extra: &[&str], old: &Path| {
        fails(
            planet_image()
                .args(["bundle", "--release-version", "3"])
                .args(extra)
                .arg("--estimate-from")
                .arg(old)
                .arg("--rootfs")
                .arg(&rootfs)
                .arg("--key")
                .arg(&secret)
                .arg("-o")
                .arg(s.path("3.planet")),
        )
    };
    let err = bundle_3(&["--no-chunks"], &b1);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = bundle_3(&[], &s.path("k.pub"));
    assert!(err.contains("--estimate-from") && err.contains("not a readable update bundle"), "{err}");
    assert!(!s.path("3.planet").exists());
}

/// `pull` of a bundle served on 127.0.0.1 with ranges.
fn pull(url: &str, key: &Path, out: &Path, from: &[&Path]) -> std::process::Command {
    let mut cmd = planet_image();
    cmd.arg("pull").arg(url).arg("--key").arg(key).arg("-o").arg(out);
    for f in from {
        cmd.arg("--from").arg(f);
    }
    cmd
}

#[test]
fn pull_fetches_only_what_earlier_bundles_lack_and_checks_every_chunk() {
    let s = Scratch::new("bundle-pull");
    keygen(&s.path("k"));
    keygen(&s.path("other"));
    let (secret, public) = (s.path("k.key"), s.path("k.pub"));
    let rootfs = tiny_rootfs(&s);
    let b1 = s.path("1.planet");
    bundle(&rootfs, &secret, &b1, "1", &[]);
    let tar2 = s.path("tiny-2.tar");
    ok(Command::new("sh").arg("-c").arg(format!(
        "cp '{}' '{t}' && mkdir -p '{d}/etc' && head -c 300000 /dev/urandom > '{d}/etc/new' && tar -C '{d}' -rf '{t}' etc",
        rootfs.display(),
        t = tar2.display(),
        d = s.path("extra").display()
    )));
    let b2 = s.path("2.planet");
    let made = bundle(&tar2, &secret, &b2, "2", &["--estimate-from", b1.to_str().unwrap()]);
    let estimate = made["estimate"]["download_bytes"].as_u64().unwrap();
    let total = made["total_bytes"].as_u64().unwrap();
    let b2_bytes = std::fs::read(&b2).unwrap();
    // `inspect --estimate-from` says the same of the bundles as made.
    let inspected = json(&ok(planet_image().arg("inspect").arg(&b2).arg("--estimate-from").arg(&b1)));
    assert_eq!(inspected["estimate"], made["estimate"], "{inspected}");
    let err = fails(planet_image().arg("inspect").arg(&rootfs).arg("--estimate-from").arg(&b1));
    assert!(err.contains("--estimate-from is for update bundles"), "{err}");

    let server = common::bundles::BundleServer::start(std::time::Duration::from_secs(600));
    let url = format!("http://127.0.0.1:{}/2.planet", server.port);
    server.serve(Some(b2_bytes.clone()));

    // From release 1: what the estimate said (give or take the few KiB of the bundle's start,
    // read in three requests), the same count on both ends, and the bundle byte for byte.
    let out = s.path("pulled.planet");
    let got = json(&ok(&mut pull(&url, &public, &out, &[&b1])));
    let fetched = got["fetched_bytes"].as_u64().unwrap();
    assert_eq!(got["chunked"], true, "{got}");
    assert_eq!(fetched, server.sent(), "{got}");
    assert!(fetched.abs_diff(estimate) <= 3 * 4096, "fetched {fetched}, estimated {estimate}: {got}");
    assert!(got["reused_bytes"].as_u64().unwrap() > 0, "{got}");
    assert!(std::fs::read(&out).unwrap() == b2_bytes, "the pulled file is not the bundle");
    assert!(!s.path("pulled.planet.partial").exists());

    // With nothing to reuse: every chunk is fetched.
    let before = server.sent();
    let all = json(&ok(&mut pull(&url, &public, &s.path("all.planet"), &[])));
    assert_eq!(all["reused_bytes"], 0, "{all}");
    assert!(all["fetched_bytes"].as_u64().unwrap() + (64 << 10) >= total, "{all}");
    assert_eq!(all["fetched_bytes"].as_u64().unwrap(), server.sent() - before, "{all}");

    // A chunk altered on the server is refused, and no bundle appears; the chunks verified before
    // it stay in the partial file and are not fetched again once the server is right.
    let info = inspect(&b2, Some(&public));
    let (off, len) = section(&info, "vmlinuz");
    let mut bad = b2_bytes.clone();
    bad[(off + len - 10) as usize] ^= 0x55;
    server.serve(Some(bad));
    let broken = s.path("broken.planet");
    let err = fails(&mut pull(&url, &public, &broken, &[]));
    assert!(err.contains("does not match the signed index"), "{err}");
    assert!(!broken.exists());
    assert!(s.path("broken.planet.partial").exists());
    server.serve(Some(b2_bytes.clone()));
    let resumed = json(&ok(&mut pull(&url, &public, &broken, &[])));
    // Kept: the rootfs section and the kernel's chunks before the altered one (at most 256 KiB).
    let (rootfs_off, _) = section(&info, "rootfs");
    let kept = resumed["resumed_bytes"].as_u64().unwrap();
    assert!(kept + (256 << 10) + 4096 >= off + len - rootfs_off, "{resumed}");
    assert!(resumed["fetched_bytes"].as_u64().unwrap() < total - off + 3 * 4096, "{resumed}");
    assert!(std::fs::read(&broken).unwrap() == b2_bytes);

    // A server that ignores ranges answers the first look with the whole chunked bundle: that
    // answer is the download (one request, every byte once), verified like any other.
    server.ignore_ranges(true);
    let (before, requests) = (server.sent(), server.log().len());
    let plain_server = json(&ok(&mut pull(&url, &public, &s.path("no-ranges.planet"), &[&b1])));
    assert_eq!(plain_server["chunked"], false, "{plain_server}");
    assert_eq!(plain_server["requests"], 1, "{plain_server}");
    assert_eq!(plain_server["fetched_bytes"].as_u64().unwrap(), b2_bytes.len() as u64, "{plain_server}");
    assert_eq!(server.sent() - before, b2_bytes.len() as u64, "{plain_server}");
    assert_eq!(server.log().len() - requests, 1, "{:?}", &server.log()[requests..]);
    assert!(std::fs::read(s.path("no-ranges.planet")).unwrap() == b2_bytes);
    server.ignore_ranges(false);

    // Another key's bundle is refused before anything is written.
    let err = fails(&mut pull(&url, &s.path("other.pub"), &s.path("x.planet"), &[]));
    assert!(err.contains("not a bundle signed by a key of"), "{err}");
    assert!(!s.path("x.planet").exists() && !s.path("x.planet.partial").exists());

    // A bundle without chunks is fetched whole and verified; a tampered one leaves nothing.
    let plain = s.path("plain.planet");
    bundle(&rootfs, &secret, &plain, "1", &["--no-chunks"]);
    let plain_bytes = std::fs::read(&plain).unwrap();
    server.serve(Some(plain_bytes.clone()));
    let before = server.sent();
    let whole = json(&ok(&mut pull(&url, &public, &s.path("whole.planet"), &[&b1])));
    assert_eq!(whole["chunked"], false, "{whole}");
    // Every byte once: the prelude already read is not fetched again.
    assert_eq!(whole["fetched_bytes"].as_u64().unwrap(), plain_bytes.len() as u64, "{whole}");
    assert_eq!(server.sent() - before, plain_bytes.len() as u64, "{whole}");
    assert!(std::fs::read(s.path("whole.planet")).unwrap() == plain_bytes);
    let mut bad = plain_bytes;
    let last = bad.len() - 100;
    bad[last] ^= 1;
    server.serve(Some(bad));
    let err = fails(&mut pull(&url, &public, &s.path("tampered.planet"), &[]));
    assert!(err.contains("verifying"), "{err}");
    assert!(!s.path("tampered.planet").exists() && !s.path("tampered.planet.partial").exists());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a bundle's data sections start (after the header and the chunk indexes).
fn data_start(made: &serde_json::Value) -> u64 {
    made["sections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["name"].as_str().unwrap().starts_with("chunks-"))
        .map(|s| s["offset"].as_u64().unwrap())
        .min()
        .unwrap()
}
