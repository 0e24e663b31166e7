use super::*;
use std::io::Cursor;

/// Made by minisign 0.11 (`minisign -G -W`, then `minisign -S -m msg -t "tc here"` over "hello\n").
const MINISIGN_PUB: &str = "untrusted comment: minisign public key 10B42FA52130ECF9
RWT57DAhpS+0EBo7iNORLI74vIxe9cHtoL9O5MllgIaM5AYRXlxfLVdK
";
const MINISIGN_KEY: &str = "untrusted comment: minisign encrypted secret key
RWQAAEIyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+ewwIaUvtBAQJoVNazW+tq6N7Qqty8p3HyvLqHyUvC/mr8pIJxKdnho7iNORLI74vIxe9cHtoL9O5MllgIaM5AYRXlxfLVdKAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
";
const MINISIGN_SIG: &str = "untrusted comment: signature from minisign secret key
RUT57DAhpS+0EJ6Z52tcy/7qR2kLlE+QtdQguR0EcAro9BPCo/o4sNKJHYVDg21QSwKJIUa4CAS8cNHfYvRrFmAbJpt90pnTRgs=
trusted comment: tc here
xSEJhPQmeTjr8ScZ02+ntuxji5WyA57mG2Om6xcr3P0VdMgiz71SMRfqzpBV8kYtbM3Q505RRUpKE7hXazWfCg==
";
/// The same tool's password-protected key (`minisign -G`, password "pw").
const MINISIGN_ENCRYPTED_KEY: &str = "untrusted comment: minisign encrypted secret key
RWRTY0IyidQauF2ADlPeq0O3uV2LIpSDMZNlI/voqwR2z1SbYpsAAAACAAAAAAAAAEAAAAAAdxH8GTzlsW23MEQsniQI8Dq5VQiv1VLb/uJOEWk5hvjM90Hc7pTBfK5C9xOUrBxx/4MRHiZJAtZ43ZxEP7fXGajWvp9gRXcgDiyrU5nrWl4HhBv1RCCMEBXm3nKwmNw/u4paviX/gJE=
";

fn test_key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32], [n, 1, 2, 3, 4, 5, 6, 7])
}

fn blake2b(bytes: &[u8]) -> [u8; 64] {
    Blake2b512::digest(bytes).into()
}

#[test]
fn minisign_keys_and_signatures_match_the_real_tool() {
    let public = PublicKey::parse(MINISIGN_PUB).unwrap();
    assert_eq!(public.key_id_hex(), "10B42FA52130ECF9");
    assert_eq!(public.to_text(), MINISIGN_PUB);
    let secret = SecretKey::parse(MINISIGN_KEY).unwrap();
    assert_eq!(secret.public(), public);
    // Ed25519 is deterministic: our signature of the same message is minisign's, byte for byte.
    let text = secret.sign_prehashed(&blake2b(b"hello\n"), "signature from minisign secret key", "tc here");
    assert_eq!(text, MINISIGN_SIG);
    let parsed = parse_minisig(MINISIGN_SIG).unwrap();
    assert_eq!(parsed.key_id, public.key_id());
    assert_eq!(parsed.trusted_comment, "tc here");
    // The bare base64 line is a key too (what `minisign -P` takes).
    assert_eq!(PublicKey::parse(MINISIGN_PUB.lines().nth(1).unwrap()).unwrap(), public);
}

#[test]
fn secret_keys_round_trip_with_a_checksum() {
    let key = test_key(9);
    let text = key.to_text();
    assert!(text.starts_with("untrusted comment: minisign secret key\n"));
    let back = SecretKey::parse(&text).unwrap();
    assert_eq!(back.public(), key.public());
    assert_eq!(back.to_text(), text);
    let public = PublicKey::parse(&key.public().to_text()).unwrap();
    assert_eq!(public, key.public());
    assert_eq!(public.key_id_hex(), "0706050403020109");

    // A damaged checksum or secret half is caught.
    let mut raw = BASE64.decode(text.lines().nth(1).unwrap()).unwrap();
    raw[150] ^= 1;
    let bad = format!("untrusted comment: x\n{}\n", BASE64.encode(&raw));
    assert!(SecretKey::parse(&bad).unwrap_err().to_string().contains("checksum"), "{bad}");
    raw[150] ^= 1;
    raw[100] ^= 1; // the public half
    let bad = format!("untrusted comment: x\n{}\n", BASE64.encode(&raw));
    assert!(format!("{:#}", SecretKey::parse(&bad).unwrap_err()).contains("corrupt"));
}

#[test]
fn encrypted_keys_are_refused_with_a_way_out() {
    let err = SecretKey::parse(MINISIGN_ENCRYPTED_KEY).unwrap_err().to_string();
    assert!(
        err.contains("encrypted") && err.contains("minisign -G -W") && err.contains("planet-image keygen"),
        "{err}"
    );
    assert!(SecretKey::parse(MINISIGN_PUB).is_err());
    assert!(PublicKey::parse(MINISIGN_KEY).is_err());
    assert!(PublicKey::parse("").is_err());
    assert!(PublicKey::parse("untrusted comment: x\nnot base64!\n").is_err());
}

/// A bundle of small sections written by `write_bundle`, and the key that signed it.
struct Fixture {
    dir: tempfile::TempDir,
    key: SecretKey,
    bytes: Vec<u8>,
    parts: Vec<(&'static str, Vec<u8>)>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(1);
    let parts: Vec<(&str, Vec<u8>)> = vec![
        ("rootfs", (0..5000u32).map(|i| (i * 7 % 251) as u8).collect()),
        ("vmlinuz", vec![0x4d; 1000]),
        ("initramfs", (0..3000u32).map(|i| (i % 13) as u8).collect()),
    ];
    let mut files = Vec::new();
    for (name, data) in &parts {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        files.push((*name, p));
    }
    let sections: Vec<(&str, &Path)> = files.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let out = dir.path().join("update.planet");
    write_bundle(&out, "2.1", 1_700_000_000, "6.1.0-56-cloud-amd64", &sections, &key).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    Fixture { dir, key, bytes, parts }
}

fn verify_bytes(bytes: &[u8], key: &PublicKey) -> Result<(Prelude, Header)> {
    verify_reader(&mut Cursor::new(bytes), bytes.len() as u64, key)
}

#[test]
fn round_trip() {
    let f = fixture();
    let out = f.dir.path().join("update.planet");
    let (prelude, header) = verify_file(&out, &f.key.public()).unwrap();
    assert_eq!(prelude.format, 1);
    assert_eq!(prelude.release, "2.1");
    assert_eq!(prelude.total_bytes, f.bytes.len() as u64);
    assert_eq!(prelude.key_id, f.key.key_id_hex());
    assert!(prelude.is_verified());
    assert_eq!(header.kernel, "6.1.0-56-cloud-amd64");
    assert_eq!(header.created, 1_700_000_000);
    assert_eq!(header.sections.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), REQUIRED_SECTIONS);
    for (name, data) in &f.parts {
        let s = header.section(name).unwrap();
        assert_eq!(s.offset % SECTION_ALIGN, 0);
        assert_eq!(&f.bytes[s.offset as usize..(s.offset + s.size) as usize], &data[..]);
        assert_eq!(s.sha256, hex(&Sha256::digest(data)));
    }
    assert_eq!(header.sections.last().map(|s| s.offset + s.size), Some(f.bytes.len() as u64));
    assert!(header.section("firmware").unwrap_err().to_string().contains("no firmware section"));
    // No temporary file is left behind.
    let names: Vec<String> =
        std::fs::read_dir(f.dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(!names.iter().any(|n| n.contains("partial")), "{names:?}");

    // The incremental API, fed in odd pieces, as planet-init uses it.
    let prelude = read_prelude(&f.bytes[..PRELUDE_LEN as usize], &f.key.public()).unwrap();
    let after = &f.bytes[PRELUDE_LEN as usize..];
    assert_eq!(parse_header(after, &prelude).unwrap(), header);
    let mut v = Verifier::new(&prelude);
    for chunk in after.chunks(777) {
        v.update(chunk);
    }
    v.finish().unwrap();

    // The unverified reader says the same, and its Verifier refuses to vouch for anything.
    let (unverified, h2) = read_unverified(&out).unwrap();
    assert!(!unverified.is_verified());
    assert_eq!(h2, header);
    let mut v = Verifier::new(&unverified);
    v.update(after);
    assert!(v.finish().unwrap_err().to_string().contains("without a key"));

    // Deterministic: the same inputs give the same bytes.
    let again = fixture();
    assert_eq!(again.bytes, f.bytes);
}

#[test]
fn every_single_byte_flip_is_refused() {
    let f = fixture();
    let public = f.key.public();
    let mut bytes = f.bytes.clone();
    verify_bytes(&bytes, &public).unwrap();
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0xff] {
            if mask == 0xff && i % 5 != 0 {
                continue;
            }
            bytes[i] ^= mask;
            assert!(verify_bytes(&bytes, &public).is_err(), "flipping byte {i} with {mask:#x} went unnoticed");
            bytes[i] ^= mask;
        }
    }
}

#[test]
fn flips_name_the_problem() {
    let f = fixture();
    let public = f.key.public();
    let err = |at: usize| {
        let mut b = f.bytes.clone();
        b[at] ^= 0x01;
        format!("{:#}", verify_bytes(&b, &public).unwrap_err())
    };
    assert!(err(0).contains("bad magic"), "{}", err(0));
    let prelude = read_prelude(&f.bytes, &public).unwrap();
    let header = parse_header(&f.bytes[PRELUDE_LEN as usize..], &prelude).unwrap();
    let s = header.section("initramfs").unwrap();
    let e = err(s.offset as usize + 10);
    assert!(e.contains("signature does not match"), "{e}");
    let e = err(PRELUDE_LEN as usize + 20);
    assert!(e.contains("signature does not match"), "{e}");
    // The trusted comment (release, size) is covered by the global signature: 2.1 → 3.1.
    let tc = f.bytes.windows(14).position(|w| w == b"release=2.1 by").unwrap();
    let e = err(tc + 8);
    assert!(e.contains("trusted comment does not match"), "{e}");

    // A newer format is named as such.
    let mut b = f.bytes.clone();
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    let e = verify_bytes(&b, &public).unwrap_err().to_string();
    assert_eq!(e, "bundle format 7 is newer than this planet-init understands (1)");
}

#[test]
fn truncation_is_refused_at_any_point() {
    let f = fixture();
    let public = f.key.public();
    let prelude = read_prelude(&f.bytes, &public).unwrap();
    let total = f.bytes.len();
    for cut in [0, 7, 100, 4095, 4096, 4099, 4200, 8192, 9000, total - 3000, total - 1] {
        let e = verify_bytes(&f.bytes[..cut], &public).unwrap_err().to_string();
        assert!(e.starts_with("truncated: "), "cut at {cut}: {e}");
        if cut >= PRELUDE_LEN as usize {
            assert_eq!(e, format!("truncated: {cut} bytes, the signature says {total}"));
            // The Verifier alone catches it too.
            let mut v = Verifier::new(&prelude);
            v.update(&f.bytes[PRELUDE_LEN as usize..cut]);
            assert!(v.finish().unwrap_err().to_string().starts_with("truncated: "));
        }
    }
    let e = read_prelude(&f.bytes[..4000], &public).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
    // And appended data.
    let mut longer = f.bytes.clone();
    longer.extend_from_slice(&[0; 10]);
    let e = verify_bytes(&longer, &public).unwrap_err().to_string();
    assert!(e.contains("data was appended"), "{e}");
}

#[test]
fn another_key_is_refused() {
    let f = fixture();
    let other = test_key(2).public();
    let e = verify_bytes(&f.bytes, &other).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("signed by another key (key id {}, this machine trusts {})", f.key.key_id_hex(), other.key_id_hex())
    );
    // Another key that claims the same key id.
    let impostor = SecretKey::from_seed([2; 32], f.key.public().key_id()).public();
    let e = verify_bytes(&f.bytes, &impostor).unwrap_err().to_string();
    assert!(e.contains("trusted comment does not match"), "{e}");
    // A bundle re-signed by another key with our key id: the trusted comment verifies with
    // nothing but that key.
    let forger = SecretKey::from_seed([3; 32], f.key.public().key_id());
    let body = &f.bytes[PRELUDE_LEN as usize..];
    let forged = signed(body, "2.1", &forger);
    assert!(verify_bytes(&forged, &f.key.public()).is_err());
    verify_bytes(&forged, &forger.public()).unwrap();
}

#[test]
fn garbage_is_not_a_bundle() {
    let key = test_key(1).public();
    for g in [&b""[..], b"PLBUN", b"hello world, not a bundle at all", &[0u8; 5000], &[0xffu8; 9000]] {
        let e = verify_bytes(g, &key).unwrap_err().to_string();
        assert!(e.contains("bad magic") || e.starts_with("truncated"), "{e}");
    }
    assert!(verify_bytes(&[0u8; 5000], &key).unwrap_err().to_string().contains("not a planet update bundle"));
    let mut fake = vec![0u8; 5000];
    fake[..8].copy_from_slice(MAGIC);
    fake[8] = 1;
    fake[12] = 200;
    assert!(verify_bytes(&fake, &key).unwrap_err().to_string().contains("bad prelude"));
    fake[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(verify_bytes(&fake, &key).unwrap_err().to_string().contains("does not fit"));
}

#[test]
fn releases_are_ordered_naturally() {
    use Ordering::*;
    let cases = [
        ("1.10", "1.9", Greater),
        ("2", "1.9.9", Greater),
        ("1.9.9", "2", Less),
        ("2", "2", Equal),
        ("1.2.3", "1.2.3", Equal),
        ("1.0", "1.0.1", Less),
        ("10", "9", Greater),
        ("100000000000000000000000001", "100000000000000000000000000", Greater),
        ("2024.05.1", "2024.5.0", Greater),
        ("1.01", "1.1", Less),
        ("1.1", "1.01", Greater),
        ("v2", "v10", Less),
        ("1.2a", "1.2b", Less),
        ("abc", "abd", Less),
        ("1.2-rc2", "1.2-rc10", Less),
        // A pre-release (after `-` or `~`) comes before its release, as in semver and Debian.
        ("1.2.0-rc1", "1.2.0", Less),
        ("1.2.0~rc1", "1.2.0", Less),
        ("2.0.0-beta", "2.0.0", Less),
        ("2.0.0-beta", "1.9", Greater),
        ("1.2.0-rc1", "1.2.0.1", Less),
        ("1.2.0-rc1", "1.2.0~rc1", Less),
        ("1.2.0+1", "1.2.0", Greater),
        ("1.2.0-rc1", "1.2.0-rc1.1", Less),
    ];
    for (a, b, want) in cases {
        assert_eq!(compare_releases(a, b), want, "{a} vs {b}");
        assert_eq!(compare_releases(b, a), want.reverse(), "{b} vs {a}");
    }
}

#[test]
fn release_names_are_checked() {
    for ok in ["1", "2.1.0", "2024.05.01-rc1", "v1_2+b~3"] {
        check_release(ok).unwrap();
    }
    for bad in ["", " 1", "1 2", "-1", ".1", "1/2", "1\n", &"9".repeat(65)] {
        assert!(check_release(bad).is_err(), "{bad:?}");
    }
}

/// A bundle around `body` (everything after the prelude), signed by `key`.
fn signed(body: &[u8], release: &str, key: &SecretKey) -> Vec<u8> {
    let total = PRELUDE_LEN + body.len() as u64;
    let hash = blake2b(body);
    let text =
        key.sign_prehashed(&hash, &untrusted_comment(release), &trusted_comment(release, total, &Claims::default()));
    let mut out = prelude_bytes(&text).unwrap();
    out.extend_from_slice(body);
    out
}

/// A signed bundle with the header JSON `json` (`{TOTAL}` replaced by the bundle's size) and
/// `len` bytes after the prelude in all.
fn hostile(json: &str, len: usize, key: &SecretKey) -> Vec<u8> {
    let json = json.replace("{TOTAL}", &(PRELUDE_LEN as usize + len).to_string());
    let mut body = (json.len() as u32).to_le_bytes().to_vec();
    body.extend_from_slice(json.as_bytes());
    assert!(body.len() <= len);
    body.resize(len, 0xaa);
    signed(&body, "2", key)
}

const ZERO_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn header_json(sections: &[(&str, u64, u64)]) -> String {
    let s: Vec<String> = sections
        .iter()
        .map(|(n, o, z)| format!(r#"{{"name":"{n}","offset":{o},"size":{z},"sha256":"{ZERO_SHA}"}}"#))
        .collect();
    format!(r#"{{"format":1,"release":"2","created":0,"kernel":"6.1","sections":[{}]}}"#, s.join(","))
}

#[test]
fn hostile_headers_are_refused() {
    let key = test_key(4);
    let public = key.public();
    let page = PRELUDE_LEN as usize;
    let check = |json: &str, len: usize, want: &str| {
        let bytes = hostile(json, len, &key);
        let e = format!("{:#}", verify_bytes(&bytes, &public).unwrap_err());
        assert!(e.contains(want), "want {want:?}, got {e}");
    };
    // Well-formed, for reference: verifies except for the section digests.
    let good = header_json(&[("rootfs", 8192, 4096), ("vmlinuz", 12288, 10), ("initramfs", 16384, 100)]);
    check(&good, 16384 + 100 - page, "section rootfs: sha256 is");
    check(
        &header_json(&[("rootfs", 8192, 8192), ("vmlinuz", 12288, 10), ("initramfs", 16384, 100)]),
        16384 + 100 - page,
        "section vmlinuz at offset 12288 overlaps",
    );
    check(
        &header_json(&[("rootfs", 8192, 4096), ("vmlinuz", 12288, 10), ("initramfs", 1 << 40, 100)]),
        16384 + 100 - page,
        "runs past the end",
    );
    check(
        &header_json(&[("rootfs", 8192, 4096), ("vmlinuz", 12288, 10), ("initramfs", 16384, u64::MAX)]),
        16384 + 100 - page,
        "runs past the end",
    );
    check(
        &header_json(&[("rootfs", 8192, 4096), ("vmlinuz", 12300, 10), ("initramfs", 16384, 100)]),
        16384 + 100 - page,
        "not 4096-aligned",
    );
    check(
        &header_json(&[("rootfs", 4096, 4096), ("vmlinuz", 12288, 10), ("initramfs", 16384, 100)]),
        16384 + 100 - page,
        "section rootfs at offset 4096 overlaps",
    );
    check(&header_json(&[("rootfs", 8192, 4096), ("initramfs", 16384, 100)]), 16384 + 100 - page, "no vmlinuz section");
    check(
        &header_json(&[("rootfs", 8192, 4096), ("rootfs", 12288, 10), ("initramfs", 16384, 100)]),
        16384 + 100 - page,
        "appears twice",
    );
    check(&good, 16384 + 200 - page, "100 bytes follow the last section");
    check(&good.replace(r#""release":"2""#, r#""release":"3""#), 16384 + 100 - page, "release \"3\" where");
    check(&good.replace(r#""format":1"#, r#""format":1,"extra":1"#), 16384 + 100 - page, "unknown field");
    check(&good.replace(r#""kernel":"6.1""#, r#""kernel":"""#), 16384 + 100 - page, "no kernel release");
    check("not json", 16384 - page, "bad bundle header");

    // A header length of 4 GiB is refused before anything is allocated for it.
    let mut body = u32::MAX.to_le_bytes().to_vec();
    body.resize(8192, 0);
    let bytes = signed(&body, "2", &key);
    let e = verify_bytes(&bytes, &public).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    let prelude = read_prelude(&bytes, &public).unwrap();
    assert!(parse_header(&u32::MAX.to_le_bytes(), &prelude).unwrap_err().to_string().contains("out of range"));
    // Within the limit but longer than the bundle, or than the bytes given.
    let mut body = 60_000u32.to_le_bytes().to_vec();
    body.resize(8192, 0);
    let bytes = signed(&body, "2", &key);
    assert!(verify_bytes(&bytes, &public).unwrap_err().to_string().contains("past the end of the bundle"));
    let prelude = read_prelude(&bytes, &public).unwrap();
    let e = parse_header(&bytes[page..page + 100], &Prelude { total_bytes: 1 << 30, ..prelude }).unwrap_err();
    assert!(e.to_string().contains("the header needs 60004 bytes"), "{e}");
}

#[test]
fn write_bundle_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(5);
    let p = dir.path().join("x");
    std::fs::write(&p, b"data").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let out = dir.path().join("b.planet");
    let e = write_bundle(&out, "1 2", 0, "k", &[("rootfs", &p), ("vmlinuz", &p), ("initramfs", &p)], &key);
    assert!(e.unwrap_err().to_string().contains("not valid"));
    let e = write_bundle(&out, "1", 0, "k", &[("rootfs", &p), ("vmlinuz", &p)], &key);
    assert!(format!("{:#}", e.unwrap_err()).contains("no initramfs section"));
    let e = write_bundle(&out, "1", 0, "k", &[("rootfs", &empty), ("vmlinuz", &p), ("initramfs", &p)], &key);
    assert!(format!("{:#}", e.unwrap_err()).contains("section rootfs is empty"));
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "nothing left behind");
}

#[test]
fn expiry_and_revocations_are_signed_claims() {
    let f = fixture();
    let dir = f.dir.path();
    let sections: Vec<(&str, PathBuf)> = f.parts.iter().map(|(n, _)| (*n, dir.join(n))).collect();
    let sections: Vec<(&str, &Path)> = sections.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let old = test_key(8);
    let claims = Claims { expires: Some(1_800_000_000), revokes: vec![old.key_id_hex()], head: None };
    let out = dir.join("claims.planet");
    write_bundle_with(&out, "3", 1, "6.1", &sections, &f.key, &claims).unwrap();
    let (prelude, _) = verify_file(&out, &f.key.public()).unwrap();
    assert_eq!(prelude.expires, Some(1_800_000_000));
    assert_eq!(prelude.revokes, vec![old.key_id_hex()]);
    let text = &prelude.signature_text;
    assert!(text.contains(&format!("release=3 bytes={} expires=1800000000 revokes=", prelude.total_bytes)), "{text}");
    // A bundle without claims has none.
    let (plain, _) = verify_file(&dir.join("update.planet"), &f.key.public()).unwrap();
    assert_eq!((plain.expires, plain.revokes.len()), (None, 0));

    // The claims are covered by the global signature: moving the expiry breaks it.
    let mut bytes = std::fs::read(&out).unwrap();
    let at = bytes.windows(10).position(|w| w == b"1800000000").unwrap();
    bytes[at] = b'9';
    let e = read_prelude(&bytes, &f.key.public()).unwrap_err().to_string();
    assert!(e.contains("does not match"), "{e}");

    // Malformed claims are refused, even when signed.
    for tc in [
        "planet-bundle format=1 release=3 bytes=9000 expires=",
        "planet-bundle format=1 release=3 bytes=9000 expires=x",
        "planet-bundle format=1 release=3 bytes=9000 revokes=abc",
        "planet-bundle format=1 release=3 bytes=9000 revokes=0102030405060708 expires=5",
        "planet-bundle format=1 release=3 bytes=9000 expires=5 expires=6",
        "planet-bundle format=1 release=3 bytes=9000 revokes=0102030405060708,0102030405060708",
        "planet-bundle format=1 release=3 bytes=9000 color=red",
    ] {
        assert!(parse_trusted_comment(tc).is_err(), "{tc}");
    }
    let tc = "planet-bundle format=1 release=3 bytes=9000 expires=5 revokes=0102030405060708,A1B2C3D4E5F60708";
    assert_eq!(parse_trusted_comment(tc).unwrap().3.revokes.len(), 2);

    // A bundle cannot revoke its own key.
    let own = Claims { expires: None, revokes: vec![f.key.key_id_hex()], head: None };
    let e = write_bundle_with(&dir.join("x.planet"), "3", 1, "6.1", &sections, &f.key, &own).unwrap_err();
    assert!(e.to_string().contains("cannot revoke the key that signs it"), "{e}");
}

#[test]
fn a_key_ring_holds_the_overlap_of_a_rotation() {
    let (old, new, other) = (test_key(1), test_key(2), test_key(3));
    let text = old.public().to_text() + &new.public().to_text();
    let ring = KeyRing::parse(&text).unwrap();
    assert_eq!(ring.keys(), &[old.public(), new.public()]);
    assert_eq!(ring.find(&new.key_id_hex()).map(|(i, _)| i), Some(1));
    assert_eq!(KeyRing::parse(&ring.to_text()).unwrap(), ring);
    // Base64 lines alone, as minisign -P takes them.
    let bare = format!("{}\n{}\n", old.public().to_base64(), new.public().to_base64());
    assert_eq!(KeyRing::parse(&bare).unwrap(), ring);
    assert!(KeyRing::parse(&(text.clone() + &old.public().to_text())).unwrap_err().to_string().contains("twice"));
    assert!(KeyRing::parse("").is_err());

    // A bundle signed by either key verifies; by a third, not; by a revoked one, not.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, b"data").unwrap();
    let sections: [(&str, &Path); 3] = [("rootfs", &p), ("vmlinuz", &p), ("initramfs", &p)];
    for (k, ok) in [(&old, true), (&new, true), (&other, false)] {
        let out = dir.path().join(format!("{}.planet", k.key_id_hex()));
        write_bundle(&out, "2", 1, "6.1", &sections, k).unwrap();
        let r = verify_file_ring(&out, &ring);
        assert_eq!(r.is_ok(), ok, "{r:?}");
        if !ok {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("another key") && e.contains(&ring.key_id_hex()), "{e}");
        }
    }
    let out = dir.path().join(format!("{}.planet", old.key_id_hex()));
    let e = verify_file_ring(&out, &ring.without(&[old.key_id_hex()])).unwrap_err().to_string();
    assert!(e.contains("another key"), "{e}");
    let e = verify_file_ring(&out, &ring.without(&[old.key_id_hex(), new.key_id_hex()])).unwrap_err().to_string();
    assert!(e.contains("trusts no key"), "{e}");
}

#[test]
fn expiry_dates_parse_and_print() {
    let now = 1_764_000_000; // 2025-11-24 16:00:00 UTC
    assert_eq!(format_utc(now), "2025-11-24 16:00:00 UTC");
    assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
    assert_eq!(parse_expiry("2027-01-31", now).unwrap(), 1_801_353_600);
    assert_eq!(parse_expiry("2027-01-31T12:30Z", now).unwrap(), 1_801_353_600 + 45_000);
    assert_eq!(parse_expiry("2027-01-31T12:30:15", now).unwrap(), 1_801_353_600 + 45_015);
    assert_eq!(parse_expiry("90d", now).unwrap(), now + 90 * 86_400);
    assert_eq!(parse_expiry("2w", now).unwrap(), now + 14 * 86_400);
    for bad in ["", "soon", "2027-02-30", "2027-13-01", "2027-01-31T25:00", "1d2h", "2020-01-01", "0d", "x2027-01-01"] {
        assert!(parse_expiry(bad, now).is_err(), "{bad:?}");
    }
    assert!(parse_expiry("99999999999999999999d", now).is_err());
    assert!(parse_expiry(&format!("{}w", u64::MAX / 1000), now).unwrap_err().to_string().contains("too far"));
}

/// The downgrade check needs a total order: every pair of short strings over the characters
/// that matter is antisymmetric, and sampled triples are transitive.
#[test]
fn release_order_is_a_total_order() {
    use Ordering::*;
    let alphabet = ["0", "1", "9", "10", ".", "-", "~", "+", "a"];
    let mut all = vec![String::new()];
    for _ in 0..3 {
        let longer: Vec<String> = all.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
        all.extend(longer);
    }
    all.sort();
    all.dedup();
    for a in &all {
        assert_eq!(compare_releases(a, a), Equal);
        for b in &all {
            let ab = compare_releases(a, b);
            assert_eq!(ab, compare_releases(b, a).reverse(), "{a:?} {b:?}");
            assert_eq!(ab == Equal, a == b, "{a:?} {b:?}");
        }
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut pick = || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        &all[(seed >> 33) as usize % all.len()]
    };
    for _ in 0..300_000 {
        let (a, b, c) = (pick().clone(), pick().clone(), pick().clone());
        if compare_releases(&a, &b) == Less && compare_releases(&b, &c) == Less {
            assert_eq!(compare_releases(&a, &c), Less, "{a:?} < {b:?} < {c:?}");
        }
    }
}
