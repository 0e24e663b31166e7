//! Docker archives, the format `docker save` writes and `docker load` reads: `manifest.json`
//! lists each image's config file, tags and layers. The package records what docker will call
//! each image (its ID, the digest of its config) and the tags it brings.

use anyhow::{bail, Context, Result};
use planet_config::app::PackageImage;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

/// The most `manifest.json` or an image config may hold; real ones are a few KiB.
const MAX_JSON: u64 = 4 << 20;

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Reads the archive `file` (named `name` in messages) and returns its images.
pub fn images(name: &str, input: impl Read) -> Result<Vec<PackageImage>> {
    let mut archive = tar::Archive::new(input);
    let mut manifest: Option<Vec<u8>> = None;
    let mut json_digests: BTreeMap<String, String> = BTreeMap::new();
    let mut members = BTreeSet::new();
    for item in archive.entries().with_context(|| format!("{name}: not a tar archive"))? {
        let mut item = item.with_context(|| format!("{name}: not a docker archive (a tar from `docker save`)"))?;
        let path = item.path()?.to_string_lossy().trim_start_matches("./").to_string();
        let small = item.header().entry_size().unwrap_or(u64::MAX) <= MAX_JSON;
        if path == "manifest.json" && small {
            let mut buf = Vec::new();
            item.read_to_end(&mut buf)?;
            manifest = Some(buf);
        } else if small && (path.ends_with(".json") || path.starts_with("blobs/sha256/")) {
            // An image config: `<id>.json` (docker) or a blob (OCI-style archives of docker 25+).
            let mut buf = Vec::new();
            item.read_to_end(&mut buf)?;
            json_digests.insert(path.clone(), hex::encode(Sha256::digest(&buf)));
        }
        members.insert(path);
    }
    let Some(manifest) = manifest else {
        bail!("{name}: not a docker archive: it has no manifest.json (make it with `docker save -o FILE IMAGE:TAG`)")
    };
    let entries: Vec<ManifestEntry> =
        serde_json::from_slice(&manifest).with_context(|| format!("{name}: manifest.json is not a docker manifest"))?;
    if entries.is_empty() {
        bail!("{name}: manifest.json lists no image");
    }
    let mut out = Vec::new();
    for e in entries {
        let Some(digest) = json_digests.get(&e.config) else {
            bail!("{name}: the image config {:?} that manifest.json names is missing", e.config)
        };
        for layer in &e.layers {
            if !members.contains(layer.trim_start_matches("./")) {
                bail!("{name}: the layer {layer:?} that manifest.json names is missing");
            }
        }
        let tags = e.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            bail!("{name}: an image in it has no tag (save it by name: `docker save -o FILE IMAGE:TAG`)");
        }
        out.push(PackageImage { file: name.to_string(), id: format!("sha256:{digest}"), tags });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A docker archive of one image with `tags`, whose manifest names the layer `named` and
    /// which holds the layer `present` (the same for a good archive).
    pub fn archive_with(tags: &[&str], named: &str, present: &str) -> Vec<u8> {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let id = hex::encode(Sha256::digest(config));
        let manifest = serde_json::json!([{"Config": format!("{id}.json"), "RepoTags": tags, "Layers": [named]}]);
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        };
        add(&format!("{id}.json"), config);
        add(present, b"layer bytes");
        add("manifest.json", manifest.to_string().as_bytes());
        b.into_inner().unwrap()
    }

    pub fn archive(tags: &[&str]) -> Vec<u8> {
        archive_with(tags, "l1/layer.tar", "l1/layer.tar")
    }

    #[test]
    fn reads_ids_and_tags() {
        let a = archive(&["planet/web:2", "planet/web:2.0"]);
        let got = images("images/web.tar", &a[..]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tags, ["planet/web:2", "planet/web:2.0"]);
        assert!(got[0].id.starts_with("sha256:") && got[0].id.len() == 71);
        assert_eq!(got[0].file, "images/web.tar");
    }

    #[test]
    fn broken_archives_are_named() {
        let err = |bytes: &[u8]| images("x.tar", bytes).unwrap_err().to_string();
        assert!(err(&archive(&[])).contains("has no tag"));
        assert!(err(&archive_with(&["a/b:1"], "l1/layer.tar", "l2/layer.tar")).contains("layer \"l1/layer.tar\""));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_cksum();
        b.append_data(&mut h, "other", &b"x"[..]).unwrap();
        assert!(err(&b.into_inner().unwrap()).contains("no manifest.json"));
        assert!(err(b"not a tar at all, just some text that is long enough to be a header?").starts_with("x.tar"));
    }
}
