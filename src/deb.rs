//! Reading Debian packages without dpkg: the `ar` container, then `data.tar.{xz,zst,gz}`.

use anyhow::{bail, Context, Result};
use std::io::{BufReader, Read};
use std::path::Path;

/// The largest control file read.
const MAX_CONTROL: u64 = 1 << 20;

/// Calls `each` for every entry of the package's data archive.
pub fn for_each_data_entry(
    deb: &Path,
    mut each: impl FnMut(&str, &tar::Header, &mut dyn Read) -> Result<()>,
) -> Result<()> {
    let mut f = BufReader::new(std::fs::File::open(deb).with_context(|| format!("opening {}", deb.display()))?);
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic).with_context(|| format!("reading {}", deb.display()))?;
    if &magic != b"!<arch>\n" {
        bail!("{} is not a Debian package (no ar header)", deb.display());
    }
    loop {
        let mut hdr = [0u8; 60];
        if let Err(e) = f.read_exact(&mut hdr) {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bail!("{} has no data.tar member", deb.display());
            }
            return Err(e.into());
        }
        let name = String::from_utf8_lossy(&hdr[0..16]).trim().trim_end_matches('/').to_string();
        let size: u64 = String::from_utf8_lossy(&hdr[48..58])
            .trim()
            .parse()
            .with_context(|| format!("{}: corrupt ar member header", deb.display()))?;
        if name.starts_with("data.tar") {
            let member = (&mut f).take(size);
            let decoded: Box<dyn Read + '_> = match name.as_str() {
                "data.tar.xz" => Box::new(xz2::read::XzDecoder::new(member)),
                "data.tar.zst" => Box::new(zstd::Decoder::new(member)?),
                "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(member)),
                "data.tar" => Box::new(member),
                other => bail!("{}: unsupported member {other}", deb.display()),
            };
            let mut ar = tar::Archive::new(decoded);
            for entry in ar.entries().with_context(|| format!("reading {} of {}", name, deb.display()))? {
                let mut entry = entry.with_context(|| format!("reading {} of {}", name, deb.display()))?;
                let path = entry.path()?.to_string_lossy().trim_start_matches("./").to_string();
                let header = entry.header().clone();
                each(&path, &header, &mut entry)?;
            }
            return Ok(());
        }
        std::io::copy(&mut (&mut f).take(size + (size % 2)), &mut std::io::sink())?;
    }
}

/// `Package` and `Version` from the control file, read from the package itself.
pub fn name_and_version(deb: &Path) -> Result<(String, String)> {
    let fields = control_fields(deb)?;
    let get = |k: &str| fields.get(k).cloned().with_context(|| format!("{}: control has no {k}", deb.display()));
    Ok((get("Package")?, get("Version")?))
}

/// The fields of the package's control file (continuation lines folded into their field).
pub fn control_fields(deb: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let mut f = BufReader::new(std::fs::File::open(deb).with_context(|| format!("opening {}", deb.display()))?);
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic)?;
    if &magic != b"!<arch>\n" {
        bail!("{} is not a Debian package (no ar header)", deb.display());
    }
    loop {
        let mut hdr = [0u8; 60];
        f.read_exact(&mut hdr).with_context(|| format!("{} has no control.tar member", deb.display()))?;
        let name = String::from_utf8_lossy(&hdr[0..16]).trim().trim_end_matches('/').to_string();
        let size: u64 = String::from_utf8_lossy(&hdr[48..58]).trim().parse()?;
        if name.starts_with("control.tar") {
            let member = (&mut f).take(size);
            let decoded: Box<dyn Read + '_> = match name.as_str() {
                "control.tar.xz" => Box::new(xz2::read::XzDecoder::new(member)),
                "control.tar.zst" => Box::new(zstd::Decoder::new(member)?),
                "control.tar.gz" => Box::new(flate2::read::GzDecoder::new(member)),
                _ => Box::new(member),
            };
            let mut ar = tar::Archive::new(decoded);
            for entry in ar.entries()? {
                let mut entry = entry?;
                if entry.path()?.to_string_lossy().trim_start_matches("./") == "control" {
                    // Real control files are a few KiB; a huge one is not read whole.
                    let mut text = String::new();
                    (&mut entry).take(MAX_CONTROL + 1).read_to_string(&mut text)?;
                    if text.len() as u64 > MAX_CONTROL {
                        bail!("{}: the control file is larger than {} KiB", deb.display(), MAX_CONTROL >> 10);
                    }
                    let mut fields = std::collections::BTreeMap::new();
                    let mut last: Option<String> = None;
                    for line in text.lines() {
                        if line.starts_with(' ') || line.starts_with('\t') {
                            if let Some(k) = &last {
                                let v: &mut String = fields.entry(k.clone()).or_default();
                                v.push('\n');
                                v.push_str(line.trim());
                            }
                        } else if let Some((k, v)) = line.split_once(':') {
                            fields.insert(k.to_string(), v.trim().to_string());
                            last = Some(k.to_string());
                        }
                    }
                    return Ok(fields);
                }
            }
            bail!("{}: control.tar has no control file", deb.display());
        }
        std::io::copy(&mut (&mut f).take(size + (size % 2)), &mut std::io::sink())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn ar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, data) in members {
            out.extend_from_slice(
                format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 644, data.len()).as_bytes(),
            );
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    fn write(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join("p.deb");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_well_formed_package_reads() {
        let tmp = tempfile::tempdir().unwrap();
        let control = tar_of(&[("./control", b"Package: p\nVersion: 1.0\nDescription: x\n more\n")]);
        let data = tar_of(&[("./usr/lib/x", b"hello")]);
        let deb =
            write(tmp.path(), &ar_of(&[("debian-binary", b"2.0\n"), ("control.tar", &control), ("data.tar", &data)]));
        assert_eq!(name_and_version(&deb).unwrap(), ("p".to_string(), "1.0".to_string()));
        let mut seen = Vec::new();
        for_each_data_entry(&deb, |path, _, r| {
            let mut s = String::new();
            r.read_to_string(&mut s)?;
            seen.push((path.to_string(), s));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [("usr/lib/x".to_string(), "hello".to_string())]);
    }

    /// Malformed packages are errors naming the file, never panics or endless reads.
    #[test]
    fn malformed_packages_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let control = tar_of(&[("./control", b"Package: p\nVersion: 1\n")]);
        let data = tar_of(&[("./x", b"x")]);
        let good = ar_of(&[("debian-binary", b"2.0\n"), ("control.tar", &control), ("data.tar", &data)]);
        let mut bad_size = good.clone();
        bad_size[8 + 48..8 + 58].copy_from_slice(b"-1        ");
        let mut huge_size = good.clone();
        huge_size[8 + 48..8 + 58].copy_from_slice(b"9999999999");
        let big_control = tar_of(&[("./control", &vec![b'a'; (MAX_CONTROL + 10) as usize])]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("not ar", b"PK\x03\x04 zip file".to_vec()),
            ("magic only", b"!<arch>\n".to_vec()),
            ("truncated header", good[..40].to_vec()),
            ("size not a number", bad_size),
            ("size past the end", huge_size),
            ("truncated member", good[..good.len() - 700].to_vec()),
            ("garbage members", ar_of(&[("control.tar", &[0x5a; 1024]), ("data.tar", &[0x5a; 1024])])),
            ("bad compression", ar_of(&[("control.tar.xz", b"not xz"), ("data.tar.gz", b"not gzip")])),
            ("no control file", ar_of(&[("control.tar", &tar_of(&[("./md5sums", b"")])), ("data.tar", &data)])),
            ("huge control file", ar_of(&[("control.tar", &big_control), ("data.tar", &data)])),
            ("unknown data member", ar_of(&[("data.tar.lzma", b"x")])),
        ];
        for (what, bytes) in cases {
            let deb = write(tmp.path(), &bytes);
            let r = std::panic::catch_unwind(|| {
                (
                    name_and_version(&deb).map(|_| ()),
                    for_each_data_entry(&deb, |_, _, r| {
                        std::io::copy(r, &mut std::io::sink())?;
                        Ok(())
                    }),
                )
            });
            let (a, b) = r.unwrap_or_else(|_| panic!("{what}: panicked"));
            assert!(a.is_err() || b.is_err(), "{what}: accepted");
            for e in [a.err(), b.err()].into_iter().flatten() {
                let _ = format!("{e:#}");
            }
        }
    }
}
