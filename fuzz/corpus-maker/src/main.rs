//! Writes the seed corpora under `fuzz/corpus/<target>/`: small valid inputs of each format,
//! so the fuzzer starts deep instead of rediscovering magic numbers. Run by `scripts/fuzz
//! --make-corpus`; the output is committed, and re-running it gives the same files.
mod key;

use std::io::Write;
use std::path::{Path, PathBuf};

fn put(dir: &Path, name: &str, selector: Option<u8>, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut data = Vec::with_capacity(bytes.len() + 1);
    data.extend(selector);
    data.extend_from_slice(bytes);
    std::fs::write(dir.join(name), data).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The user-data seeds are the project's own examples (`cloud-init/*.yaml`), as they are, gzip'd
/// and inside a MIME multipart with base64; the rest are small documents of each other format.
fn cloud_init(dir: &Path) {
    let mut examples: Vec<PathBuf> = std::fs::read_dir("cloud-init")
        .expect("run from the repository's root (scripts/fuzz --make-corpus)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    for path in &examples {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        put(dir, &name, Some(0), &std::fs::read(path).unwrap());
    }
    let user_data = std::fs::read(&examples[0]).unwrap();
    put(dir, "user-data.gz", Some(0), &gzip(&user_data));
    let mime = format!(
        "Content-Type: multipart/mixed; boundary=\"XYZ\"\nMIME-Version: 1.0\n\n--XYZ\n\
         Content-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n--XYZ\n\
         Content-Type: text/cloud-config\nContent-Transfer-Encoding: base64\n\n{}\n--XYZ--\n",
        base64(&user_data)
    );
    put(dir, "user-data.mime", Some(0), mime.as_bytes());
    put(dir, "alias", Some(0), b"#cloud-config\na: &a [x, x]\nb: [*a, *a]\n");
    let netv2 = "version: 2\nethernets:\n  id0:\n    match:\n      name: \"en*\"\n    dhcp4: false\n    \
                 addresses: [10.0.0.5/24]\n    gateway4: 10.0.0.1\n    nameservers:\n      addresses: [10.0.0.1]\n  \
                 eth1:\n    match:\n      macaddress: \"52:54:00:12:34:56\"\n    dhcp4: true\n";
    put(dir, "network-config", Some(1), netv2.as_bytes());
    let nd = r#"{"links":[{"id":"tap0","type":"phy","ethernet_mac_address":"fa:16:3e:00:00:01"}],
"networks":[{"id":"net0","link":"tap0","type":"ipv4","ip_address":"10.0.0.7","netmask":"255.255.255.0",
"routes":[{"network":"0.0.0.0","netmask":"0.0.0.0","gateway":"10.0.0.1"}]}],
"services":[{"type":"dns","address":"10.0.0.1"}]}"#;
    put(dir, "network_data.json", Some(2), nd.as_bytes());
    put(dir, "meta_data.json", Some(3), br#"{"uuid":"83679162-1378-4288-a2d4-70e13ec132aa","hostname":"node-1"}"#);
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn bundle(dir: &Path, scratch: &Path) {
    let key = key::fuzz_key();
    let mut sections = Vec::new();
    for (name, content) in [("rootfs", &b"hsqs-rootfs"[..]), ("vmlinuz", b"MZ-kernel"), ("initramfs", b"070701")] {
        let p = scratch.join(name);
        std::fs::write(&p, content).unwrap();
        sections.push((name, p));
    }
    let refs: Vec<(&str, &Path)> = sections.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let out = scratch.join("seed.planet");
    planet_bundle::write_bundle(&out, "1.2.0", 1_700_000_000, "6.1.0-56-cloud-amd64", &refs, &key).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    put(dir, "signed", None, &bytes);
    put(dir, "prelude-only", None, &bytes[..planet_bundle::PRELUDE_LEN as usize]);
    let chunked = scratch.join("seed-chunked.planet");
    let params = planet_bundle::chunks::ChunkParams { min: 64, avg: 128, max: 256 };
    let options = planet_bundle::WriteOptions { chunks: Some(params), ..Default::default() };
    planet_bundle::write_bundle_opts(&chunked, "1.2.0", 1_700_000_000, "6.1.0-56-cloud-amd64", &refs, &key, &options)
        .unwrap();
    put(dir, "signed-chunked", None, &std::fs::read(&chunked).unwrap());
    let data: Vec<u8> = (0..2000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    put(dir, "chunk-index", None, &planet_bundle::chunks::ChunkList::of_bytes(&data, params).unwrap().to_index());
}

fn http_response(dir: &Path) {
    put(dir, "length", None, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello");
    put(
        dir,
        "chunked",
        None,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\n",
    );
    put(dir, "close", None, b"HTTP/1.0 404 Not Found\r\nConnection: close\r\n\r\nnot here");
}

fn gpt(dir: &Path) {
    for (selector, sector_size) in [(0u8, 512u64), (1, 4096)] {
        let total = (8 << 20) / sector_size;
        let guid = planet_gpt::Guid::from_random_bytes([0x42; 16]);
        let mut table = planet_gpt::Gpt::new(guid, sector_size, total).unwrap();
        let first = table.first_usable_lba;
        let last = table.last_usable_lba;
        let mid = first + (last - first) / 2;
        let part = |unique: u8, first_lba: u64, last_lba: u64, name: &str| planet_gpt::Partition {
            type_guid: planet_gpt::Guid::from_random_bytes([1; 16]),
            unique_guid: planet_gpt::Guid::from_random_bytes([unique; 16]),
            first_lba,
            last_lba,
            attributes: 0,
            name: name.into(),
        };
        table.partitions.push(part(2, first, mid, "planet-a"));
        table.partitions.push(part(3, mid + 1, last, "planet-state"));
        let mut disk = std::io::Cursor::new(vec![0u8; (total * sector_size) as usize]);
        table.write_to(&mut disk).unwrap();
        // Only the start matters to the reader's primary path; keep the seed small.
        let bytes = disk.into_inner();
        let keep = ((2 + planet_gpt::entry_array_sectors(sector_size) + 2) * sector_size) as usize;
        put(dir, &format!("table-{sector_size}"), Some(selector), &bytes[..keep]);
    }
}

fn dhcp(dir: &Path) {
    let mut b = vec![0u8; 236];
    b[0] = 2; // BOOTREPLY
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    b[16..20].copy_from_slice(&[10, 0, 2, 15]);
    b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    b.extend_from_slice(&[99, 130, 83, 99]);
    let options: [(u8, &[u8]); 7] = [
        (53, &[5]),
        (1, &[255, 255, 255, 0]),
        (3, &[10, 0, 2, 2]),
        (6, &[10, 0, 2, 3]),
        (15, b"example.internal"),
        (51, &[0, 0, 14, 16]),
        (54, &[10, 0, 2, 2]),
    ];
    for (code, value) in options {
        b.push(code);
        b.push(value.len() as u8);
        b.extend_from_slice(value);
    }
    b.push(255);
    put(dir, "ack", None, &b);
}

/// A tar in the ustar format, written by hand so the seed holds exactly the cases we want:
/// a directory, a file, a symlink and a hard link.
fn tar(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, body, link) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let mode: &[u8] = if *kind == b'5' { b"0000755\0" } else { b"0000644\0" };
        h[100..108].copy_from_slice(mode);
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
        h[136..148].copy_from_slice(b"14000000000\0");
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn ar_member(out: &mut Vec<u8>, name: &str, body: &[u8]) {
    out.extend_from_slice(
        format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, "100644", body.len()).as_bytes(),
    );
    out.extend_from_slice(body);
    if body.len() % 2 == 1 {
        out.push(b'\n');
    }
}

/// The smallest ELF64 relocatable with a section name table and a `.modinfo` section.
fn kernel_module() -> Vec<u8> {
    let shstrtab = b"\0.shstrtab\0.modinfo\0";
    let modinfo = b"license=GPL\0alias=pci:v00001AF4d00001000sv*sd*bc*sc*i*\0depends=\0name=virtio_net\0";
    let mut elf = vec![0u8; 64];
    elf[0..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[6] = 1;
    elf[16] = 1; // ET_REL
    elf[18] = 62; // x86-64
    let strtab_off = elf.len();
    elf.extend_from_slice(shstrtab);
    let modinfo_off = elf.len();
    elf.extend_from_slice(modinfo);
    elf.resize(elf.len().div_ceil(8) * 8, 0);
    let shoff = elf.len();
    elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
    elf[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
    elf[0x3E..0x40].copy_from_slice(&1u16.to_le_bytes());
    let section = |name: u32, kind: u32, off: usize, size: usize| {
        let mut s = [0u8; 64];
        s[0..4].copy_from_slice(&name.to_le_bytes());
        s[4..8].copy_from_slice(&kind.to_le_bytes());
        s[24..32].copy_from_slice(&(off as u64).to_le_bytes());
        s[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        s
    };
    elf.extend_from_slice(&[0u8; 64]);
    elf.extend_from_slice(&section(1, 3, strtab_off, shstrtab.len()));
    elf.extend_from_slice(&section(11, 1, modinfo_off, modinfo.len()));
    elf
}

fn builder_inputs(dir: &Path) {
    let rootfs = tar(&[
        ("etc/", b'5', b"", ""),
        ("etc/hostname", b'0', b"planet\n", ""),
        ("etc/localtime", b'2', b"", "../usr/share/zoneinfo/UTC"),
        ("etc/hostname.bak", b'1', b"", "etc/hostname"),
    ]);
    put(dir, "rootfs.tar", Some(0), &rootfs);
    put(dir, "rootfs.tar.gz", Some(0), &gzip(&rootfs));
    let control = tar(&[("./control", b'0', b"Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.158-1\n", "")]);
    let data = tar(&[("./boot/", b'5', b"", ""), ("./boot/vmlinuz-6.1.0-56-cloud-amd64", b'0', b"MZ", "")]);
    let mut deb = b"!<arch>\n".to_vec();
    ar_member(&mut deb, "debian-binary", b"2.0\n");
    ar_member(&mut deb, "control.tar.gz", &gzip(&control));
    ar_member(&mut deb, "data.tar.gz", &gzip(&data));
    put(dir, "package.deb", Some(1), &deb);
    put(dir, "virtio_net.ko", Some(2), &kernel_module());
}

fn small_parsers(dir: &Path) {
    put(dir, "cmdline", None, b"console=ttyS0 planet.role=dev planet.datasource=nocloud planet.datasource_timeout=30s");
    put(dir, "entry", None, b"planet-0002-b+2-1.conf");
    put(dir, "releases", None, b"1.2.0-rc1\n1.2.0\n1.10~beta");
    put(dir, "public-key", None, key::fuzz_key().public().to_text().as_bytes());
    put(dir, "expiry-date", None, b"2027-01-31T12:00Z");
    put(dir, "expiry-duration", None, b"90d");
}

fn main() {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let scratch = std::env::temp_dir().join(format!("planet-fuzz-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    cloud_init(&root.join("cloud_init"));
    bundle(&root.join("bundle"), &scratch);
    http_response(&root.join("http_response"));
    gpt(&root.join("gpt"));
    dhcp(&root.join("dhcp"));
    builder_inputs(&root.join("builder_inputs"));
    small_parsers(&root.join("small_parsers"));
    std::fs::remove_dir_all(&scratch).unwrap();
}
