//! `app build`: an app's directory checked and packed into one `.app` file, and the reverse,
//! a `.app` file verified while its members stream into a slot (`build --app`).
//!
//! The file is a tar: `package.json` first (the spec, every member's size and SHA-256, every
//! image's ID and tags), then the members it lists, in its order. Members are regular files of
//! mode 0644, owner 0, mtime 0, so the same directory always gives the same bytes.

use super::{archive, manifests};
use crate::rootfs::tar_writer::TarWriter;
use crate::rootfs::{Entry, EntryKind};
use crate::util::atomic::PendingFile;
use crate::util::digest::HashingReader;
use anyhow::{bail, Context, Result};
use planet_config::app::{self as contract, AppSpec, PackageFile, PackageImage, PackageIndex, SlotApp};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, Read};
use std::path::Path;

/// The largest `package.json` a reader accepts.
const MAX_INDEX: u64 = 16 << 20;

/// What `app build` prints.
#[derive(Debug, serde::Serialize)]
pub struct BuildReport {
    pub package: std::path::PathBuf,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub bytes: u64,
    pub objects: Vec<String>,
    pub images: Vec<PackageImage>,
}

/// Checks the app in `dir` and writes it to `out` (under a temporary name until complete).
pub fn build(dir: &Path, out: &Path) -> Result<BuildReport> {
    let spec_path = dir.join(contract::SPEC_FILE);
    let text = std::fs::read_to_string(&spec_path)
        .with_context(|| format!("reading {}: an app directory holds app.yaml", spec_path.display()))?;
    let spec = AppSpec::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", spec_path.display()))?;

    let mut files = vec![PackageFile {
        path: contract::SPEC_FILE.into(),
        size: text.len() as u64,
        sha256: crate::util::digest::sha256_hex(text.as_bytes()),
    }];
    let mut objects = Vec::new();
    let mut uses = Vec::new();
    for m in &spec.manifests {
        let path = member(dir, m)?;
        let bytes = std::fs::read(&path).with_context(|| format!("reading the manifest {}", path.display()))?;
        let text = std::str::from_utf8(&bytes).with_context(|| format!("{m}: is not UTF-8 text"))?;
        let (o, u) = manifests::check(m, text)?;
        objects.extend(o);
        uses.extend(u);
        files.push(PackageFile {
            path: m.clone(),
            size: bytes.len() as u64,
            sha256: crate::util::digest::sha256_hex(&bytes),
        });
    }
    let mut images = Vec::new();
    for i in &spec.images {
        let path = member(dir, i)?;
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening the image archive {}", path.display()))?;
        let mut hashing = HashingReader::new(BufReader::with_capacity(1 << 20, file));
        images.extend(archive::images(i, &mut hashing)?);
        std::io::copy(&mut hashing, &mut std::io::sink())?;
        let (sha256, size) = hashing.finish();
        files.push(PackageFile { path: i.clone(), size, sha256 });
    }
    check_images_present(&uses, &images)?;
    let index = PackageIndex { format: contract::PACKAGE_FORMAT, spec: spec.clone(), files, images };
    let index_json = serde_json::to_vec_pretty(&index)?;

    let pending = PendingFile::new(out)?;
    let f = std::fs::File::create(pending.path()).with_context(|| format!("creating {}", pending.path().display()))?;
    let mut tar = TarWriter::new(std::io::BufWriter::with_capacity(1 << 20, f));
    tar.write_entry(&member_entry(contract::PACKAGE_INDEX, index_json.len() as u64), &mut &index_json[..])?;
    for pf in &index.files {
        crate::util::interrupt::check()?;
        let path = dir.join(&pf.path);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut hashing = HashingReader::new(BufReader::with_capacity(1 << 20, file).take(pf.size + 1));
        tar.write_entry(&member_entry(&pf.path, pf.size), &mut hashing)
            .with_context(|| format!("{}: changed while the package was written", path.display()))?;
        let (sha256, n) = {
            let mut rest = Vec::new();
            hashing.read_to_end(&mut rest)?;
            if !rest.is_empty() {
                bail!("{}: changed while the package was written (it grew)", path.display());
            }
            hashing.finish()
        };
        if sha256 != pf.sha256 || n != pf.size {
            bail!("{}: changed while the package was written; run app build again", path.display());
        }
    }
    let w = tar.finish()?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let (sha256, bytes) = {
        let f = std::fs::File::open(pending.path())?;
        let mut h = HashingReader::new(BufReader::with_capacity(1 << 20, f));
        std::io::copy(&mut h, &mut std::io::sink())?;
        h.finish()
    };
    pending.commit()?;
    Ok(BuildReport {
        package: out.to_path_buf(),
        name: spec.name,
        version: spec.version,
        sha256,
        bytes,
        objects,
        images: index.images,
    })
}

/// `dir/p`, which must be a regular file (no symlink out of the directory).
fn member(dir: &Path, p: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(p);
    let meta = std::fs::symlink_metadata(&path)
        .with_context(|| format!("{p}: listed in app.yaml but {} cannot be read", path.display()))?;
    if !meta.file_type().is_file() {
        bail!("{p}: {} is not a regular file (symlinks are not followed)", path.display());
    }
    Ok(path)
}

/// Every image a manifest uses must be one an archive in the package brings.
fn check_images_present(uses: &[manifests::ImageUse], images: &[PackageImage]) -> Result<()> {
    let mut have = BTreeMap::new();
    for img in images {
        for t in &img.tags {
            let n = manifests::normalize(t).map_err(|e| anyhow::anyhow!("{}: {e}", img.file))?;
            have.insert(n, &img.file);
        }
    }
    let mut used = BTreeSet::new();
    for u in uses {
        let n = manifests::normalize(&u.image).map_err(|e| anyhow::anyhow!("{}: {e}", u.place))?;
        match have.get(&n) {
            Some(file) => {
                used.insert(file.to_string());
            }
            None => bail!(
                "{}: image {:?} is not in the package: add its docker archive (`docker save -o images/NAME.tar {}`) \
                 to the app directory and to images: in app.yaml; nothing is ever pulled from a registry",
                u.place,
                u.image,
                u.image
            ),
        }
    }
    for img in images {
        if !used.contains(&img.file) {
            eprintln!("planet-image: note: {} ({}) is used by no manifest", img.file, img.tags.join(", "));
        }
    }
    Ok(())
}

fn member_entry(path: &str, size: u64) -> Entry {
    Entry {
        path: path.to_string(),
        kind: EntryKind::File { size },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: vec![],
    }
}

/// Where a slot's entries go: the rootfs stage's checked sink.
pub trait SlotSink {
    fn add(&mut self, entry: Entry, data: &mut dyn Read) -> Result<()>;
}

/// Streams the package at `path` into the slot under `SLOT_APPS_DIR/NAME/`, checking every
/// member against `package.json` as it passes; returns what the slot's app list records.
pub fn add_to_slot(path: &Path, sink: &mut dyn SlotSink) -> Result<SlotApp> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| format!("opening the app package {shown}"))?;
    let mut hashing = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    let mut archive = tar::Archive::new(&mut hashing);
    let mut entries = archive.entries().with_context(|| format!("{shown}: not an app package"))?;
    let bad = |why: String| anyhow::anyhow!("{shown}: {why}; rebuild it with `planet-image app build`");

    let mut first = entries.next().ok_or_else(|| bad("empty file".into()))?.map_err(|e| bad(e.to_string()))?;
    let first_path = first.path()?.to_string_lossy().into_owned();
    let size = first.header().entry_size()?;
    if first_path != contract::PACKAGE_INDEX || size > MAX_INDEX {
        return Err(bad(format!("the first member is {first_path:?}, not {}", contract::PACKAGE_INDEX)));
    }
    let mut index_json = Vec::new();
    first.read_to_end(&mut index_json)?;
    drop(first);
    let index: PackageIndex = serde_json::from_slice(&index_json)
        .map_err(|e| bad(format!("{} is not valid: {e}", contract::PACKAGE_INDEX)))?;
    if index.format != contract::PACKAGE_FORMAT {
        return Err(bad(format!("package format {} is not {}", index.format, contract::PACKAGE_FORMAT)));
    }
    index.spec.validate().map_err(|e| bad(format!("app.yaml inside: {e}")))?;
    let listed: BTreeSet<&str> = index.files.iter().map(|f| f.path.as_str()).collect();
    for p in index.files.iter().map(|f| &f.path) {
        contract::check_member_path(p).map_err(|e| bad(format!("member {p:?} {e}")))?;
    }
    for p in index.spec.manifests.iter().chain(&index.spec.images).map(String::as_str).chain([contract::SPEC_FILE]) {
        if !listed.contains(p) {
            return Err(bad(format!("{p} is named by app.yaml but not in the package")));
        }
    }

    let base = format!("{}/{}", contract::SLOT_APPS_DIR, index.spec.name);
    let mut dirs = BTreeSet::new();
    let mut add_dirs = |sink: &mut dyn SlotSink, file: &str| -> Result<()> {
        let mut at = 0;
        while let Some(i) = file[at..].find('/') {
            let d = &file[..at + i];
            if dirs.insert(d.to_string()) {
                let e = Entry { path: d.to_string(), kind: EntryKind::Directory, mode: 0o755, ..member_entry("", 0) };
                sink.add(e, &mut std::io::empty())?;
            }
            at += i + 1;
        }
        Ok(())
    };
    let index_path = format!("{base}/{}", contract::PACKAGE_INDEX);
    add_dirs(sink, &index_path)?;
    sink.add(member_entry(&index_path, index_json.len() as u64), &mut &index_json[..])?;
    for pf in &index.files {
        crate::util::interrupt::check()?;
        let mut item = entries
            .next()
            .ok_or_else(|| bad(format!("{} is missing (the file is cut short)", pf.path)))?
            .map_err(|e| bad(e.to_string()))?;
        let got = item.path()?.to_string_lossy().into_owned();
        let regular = item.header().entry_type().is_file();
        if got != pf.path || !regular || item.header().entry_size()? != pf.size {
            return Err(bad(format!("member {got:?} is not {:?} of {} bytes as package.json says", pf.path, pf.size)));
        }
        let target = format!("{base}/{}", pf.path);
        add_dirs(sink, &target)?;
        let mut checked = HashingReader::new(&mut item);
        sink.add(member_entry(&target, pf.size), &mut checked)?;
        let (sha256, _) = checked.finish();
        if sha256 != pf.sha256 {
            return Err(bad(format!("{} does not match its digest in package.json (altered or corrupt)", pf.path)));
        }
    }
    if let Some(extra) = entries.next() {
        let p = extra.ok().and_then(|e| e.path().ok().map(|p| p.display().to_string())).unwrap_or_default();
        return Err(bad(format!("member {p:?} is not listed in package.json")));
    }
    // The tar reader borrows `hashing` until here; what trails the archive is hashed too.
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    let (sha256, _) = hashing.finish();
    Ok(SlotApp { name: index.spec.name, version: index.spec.version, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::archive::tests::archive;

    struct Collect(Vec<(String, Vec<u8>)>);
    impl SlotSink for Collect {
        fn add(&mut self, entry: Entry, data: &mut dyn Read) -> Result<()> {
            let mut v = Vec::new();
            data.read_to_end(&mut v)?;
            self.0.push((entry.path, v));
            Ok(())
        }
    }

    fn app_dir(manifest: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("manifests")).unwrap();
        std::fs::create_dir_all(d.path().join("images")).unwrap();
        std::fs::write(
            d.path().join("app.yaml"),
            "name: web\nversion: 2.0\nmanifests: [manifests/web.yaml]\nimages: [images/web.tar]\n",
        )
        .unwrap();
        std::fs::write(d.path().join("manifests/web.yaml"), manifest).unwrap();
        std::fs::write(d.path().join("images/web.tar"), archive(&["planet/web:2"])).unwrap();
        d
    }

    const WEB: &str =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: web, image: 'planet/web:2'}]}\n";

    #[test]
    fn a_package_round_trips_into_the_slot_and_is_reproducible() {
        let d = app_dir(WEB);
        let (a, b) = (d.path().join("a.app"), d.path().join("b.app"));
        let report = build(d.path(), &a).unwrap();
        build(d.path(), &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(report.objects, ["Pod/web"]);
        assert_eq!(report.images[0].tags, ["planet/web:2"]);

        let mut sink = Collect(Vec::new());
        let slot = add_to_slot(&a, &mut sink).unwrap();
        assert_eq!(
            (slot.name.as_str(), slot.version.as_str(), slot.sha256.as_str()),
            ("web", "2.0", report.sha256.as_str())
        );
        let paths: Vec<_> = sink.0.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "usr",
                "usr/share",
                "usr/share/planet",
                "usr/share/planet/apps",
                "usr/share/planet/apps/web",
                "usr/share/planet/apps/web/package.json",
                "usr/share/planet/apps/web/app.yaml",
                "usr/share/planet/apps/web/manifests",
                "usr/share/planet/apps/web/manifests/web.yaml",
                "usr/share/planet/apps/web/images",
                "usr/share/planet/apps/web/images/web.tar",
            ]
        );
        assert_eq!(sink.0[8].1, WEB.as_bytes());
    }

    #[test]
    fn a_missing_image_is_refused_by_name_and_nothing_is_written() {
        let d = app_dir(&WEB.replace("planet/web:2", "planet/db:1"));
        let out = d.path().join("web.app");
        let err = build(d.path(), &out).unwrap_err().to_string();
        assert!(err.contains("image \"planet/db:1\" is not in the package"), "{err}");
        assert!(err.contains("manifests/web.yaml: Pod/web container web"), "{err}");
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 3, "no temporary file left");
    }

    #[test]
    fn an_altered_package_is_refused() {
        let d = app_dir(WEB);
        let a = d.path().join("a.app");
        build(d.path(), &a).unwrap();
        let mut bytes = std::fs::read(&a).unwrap();
        // Change one byte of the manifest's content (same length: the tar still parses).
        let at = bytes.windows(9).position(|w| w == b"kind: Pod").unwrap();
        bytes[at + 6] = b'Q';
        std::fs::write(&a, &bytes).unwrap();
        let err = add_to_slot(&a, &mut Collect(Vec::new())).unwrap_err().to_string();
        assert!(err.contains("manifests/web.yaml does not match its digest"), "{err}");
        // A file that is not a package at all.
        std::fs::write(&a, b"hello").unwrap();
        assert!(add_to_slot(&a, &mut Collect(Vec::new())).is_err());
    }

    #[test]
    fn members_are_regular_files_inside_the_directory() {
        let d = app_dir(WEB);
        std::fs::remove_file(d.path().join("images/web.tar")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("images/web.tar")).unwrap();
        let err = build(d.path(), &d.path().join("x.app")).unwrap_err().to_string();
        assert!(err.contains("images/web.tar") && err.contains("not a regular file"), "{err}");
    }
}
