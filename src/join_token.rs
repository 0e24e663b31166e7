//! `planet-image join-token`: a fresh cluster join secret, and `seed --join-token-file`'s
//! reader. The token is a Kubernetes bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`, about 83
//! bits of secret) drawn from the operating system's RNG; the same value goes into the
//! user-data of the master and of every node (`planet: join_token:`).

use anyhow::{bail, Context, Result};
use planet_config::JoinToken;
use rand::Rng;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A token file holds one line; anything longer is not one.
const MAX_FILE: u64 = 4096;

/// A new random token. `gen_range` draws each character uniformly (no modulo bias).
pub fn generate() -> JoinToken {
    let mut rng = rand::rngs::OsRng;
    let mut pick =
        |n: usize| -> String { (0..n).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect() };
    let text = format!("{}.{}", pick(6), pick(16));
    JoinToken::parse(&text).expect("generated tokens have the bootstrap-token format")
}

/// Writes a new token to `path`, mode 0600 from the first byte; never replaces a file.
pub fn write_new(path: &Path, token: &JoinToken) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        bail!("{} exists: refusing to overwrite a join token (remove it or choose another name)", path.display());
    }
    let pending = crate::util::atomic::PendingFile::new_private(path)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(pending.path())
        .with_context(|| format!("opening {}", pending.path().display()))?;
    writeln!(f, "{}", token.reveal()).with_context(|| format!("writing {}", pending.path().display()))?;
    drop(f);
    pending.commit()
}

/// Reads `--join-token-file FILE`: the token, surrounding white space ignored. A file other
/// users can read is refused (the token lets any machine join the cluster). Errors name the
/// file and what is wrong, never the content.
pub fn read_file(path: &Path) -> Result<JoinToken> {
    let f = std::fs::File::open(path).with_context(|| format!("opening the join token file {}", path.display()))?;
    let meta = f.metadata().with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("the join token file {} is not a regular file", path.display());
    }
    if meta.permissions().mode() & 0o004 != 0 {
        bail!(
            "the join token file {} is readable by every user: `chmod 600 {}` it (the token lets any machine join \
             the cluster)",
            path.display(),
            path.display()
        );
    }
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        bail!("the join token file {} is larger than {MAX_FILE} bytes: it should hold one token", path.display());
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("the join token file {} is not text", path.display()))?;
    JoinToken::parse(text.trim()).map_err(|why| {
        anyhow::anyhow!("the join token file {} {why}; {}", path.display(), planet_config::JOIN_TOKEN_HOWTO)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_format_and_differ() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        for t in [&a, &b] {
            let s = t.reveal();
            assert_eq!(s.len(), 23);
            assert_eq!(s.as_bytes()[6], b'.');
            assert!(s.bytes().all(|c| c == b'.' || ALPHABET.contains(&c)), "{s}");
        }
        // Every character of the alphabet turns up, in both halves' positions.
        let many: String = (0..200).map(|_| generate().reveal().replace('.', "")).collect();
        assert!(ALPHABET.iter().all(|c| many.as_bytes().contains(c)));
    }

    #[test]
    fn token_files_are_private_checked_and_never_echoed() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("cluster.token");
        let t = generate();
        let old = crate::util::sys::umask(0o022);
        let res = write_new(&p, &t);
        crate::util::sys::umask(old);
        res.unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_file(&p).unwrap(), t);
        let e = format!("{:#}", write_new(&p, &generate()).unwrap_err());
        assert!(e.contains("refusing to overwrite"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", read_file(&p).unwrap_err());
        assert!(e.contains("chmod 600") && !e.contains(t.reveal()), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, "q4w8zt.m2x7c5v9b1n3k6J0\n").unwrap();
        let e = format!("{:#}", read_file(&p).unwrap_err());
        assert!(e.contains("upper-case letter at position 22") && e.contains("planet-image join-token"), "{e}");
        assert!(!e.contains("q4w8zt") && !e.contains("m2x7c5"), "{e}");
        std::fs::write(&p, "\n  q4w8zt.m2x7c5v9b1n3k6j0  \n").unwrap();
        assert_eq!(read_file(&p).unwrap().reveal(), "q4w8zt.m2x7c5v9b1n3k6j0");
    }
}
