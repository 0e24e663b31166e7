//! Writing configuration and key files: a temporary name, the final owner and mode set before
//! the rename, so no reader ever sees a half-written or briefly world-readable key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `data` to `path` atomically with `mode`, owned by `owner` (uid, gid) when given.
pub fn write(path: impl AsRef<Path>, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let path = path.as_ref();
    let dir = path.parent().context("a file path without a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    let _ = std::fs::remove_file(&tmp);
    let r = (|| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .with_context(|| format!("changing the owner of {}", tmp.display()))?;
        }
        f.write_all(data).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Writes `data` only when the file differs (so units are not restarted for nothing); returns
/// whether it wrote.
pub fn write_if_changed(path: impl AsRef<Path>, data: &[u8], mode: u32) -> Result<bool> {
    let path = path.as_ref();
    if std::fs::read(path).is_ok_and(|old| old == data) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        return Ok(false);
    }
    write(path, data, mode, None)?;
    Ok(true)
}

/// The uid and gid of a user in the container's `/etc/passwd` (`etc` is the directory).
pub fn user_ids(etc: &Path, user: &str) -> Result<(u32, u32)> {
    let passwd = etc.join("passwd");
    let text = std::fs::read_to_string(&passwd).with_context(|| format!("reading {}", passwd.display()))?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[0] == user)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .with_context(|| format!("no user {user} in {}", passwd.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_atomically_with_the_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/key.pem");
        write(&p, b"secret", 0o600, None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"secret");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert!(!write_if_changed(&p, b"secret", 0o600).unwrap());
        assert!(write_if_changed(&p, b"other", 0o644).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn finds_users() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("passwd"),
            "root:x:0:0::/root:/bin/sh\netcd:x:101:104::/var/lib/etcd:/usr/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(user_ids(d.path(), "etcd").unwrap(), (101, 104));
        assert!(user_ids(d.path(), "nobody").unwrap_err().to_string().contains("no user nobody"));
    }
}
