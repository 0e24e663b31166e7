//! Reading Debian packages without dpkg: the `ar` container, then `data.tar.{xz,zst,gz}`.

use anyhow::{bail, Context, Result};
use std::io::{BufReader, Read};
use std::path::Path;

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
                    let mut text = String::new();
                    entry.read_to_string(&mut text)?;
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
