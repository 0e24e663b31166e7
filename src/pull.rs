//! `pull`: fetch a signed bundle over HTTP(S), taking from earlier bundles on this machine every
//! chunk they already hold — what a machine's planet-init does on update (crate `planet-bundle`'s
//! `assemble`), for an operator's mirror, a cluster's own copy, or a measurement of the download.
//!
//! A chunked bundle on a server that answers range requests is assembled chunk by chunk, every
//! chunk checked against the signed index before it is written, in `OUT.partial` (kept on error,
//! so the next attempt fetches only what is still missing). Otherwise the whole file is fetched.
//! Either way the finished file is verified whole against the key before it takes its name.

use anyhow::{bail, ensure, Context, Result};
use planet_bundle::assemble::{self, LocalData, RangeSource};
use planet_bundle::{chunks, KeyRing, PRELUDE_LEN};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Everything `pull` needs, resolved from the command line.
pub struct PullRequest {
    pub url: String,
    pub output: PathBuf,
    pub key: PathBuf,
    /// Earlier bundles (their data sections are used) or other files that may hold the same bytes.
    pub from: Vec<PathBuf>,
}

/// The result of `pull`, printed on stdout as JSON.
#[derive(Debug, serde::Serialize)]
pub struct PullResult {
    pub output: PathBuf,
    pub release: String,
    pub total_bytes: u64,
    /// Whether the bundle was assembled from chunks (else fetched whole).
    pub chunked: bool,
    /// Bytes fetched from the server, and the requests that fetched them.
    pub fetched_bytes: u64,
    pub requests: u64,
    /// Bytes taken from `--from` files, and kept from an earlier, broken attempt.
    pub reused_bytes: u64,
    pub resumed_bytes: u64,
    pub seconds: f64,
}

/// A URL as it may be shown: without the user and password it may carry.
fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// The bundle's bytes by HTTP range request.
struct HttpRanges {
    agent: ureq::Agent,
    url: String,
}

/// A server's answer to a range request.
enum Answer {
    /// The range asked for (206).
    Range(Box<dyn Read + Send>),
    /// The whole file (200): the server does not do ranges.
    Whole(Box<dyn Read + Send>),
}

impl HttpRanges {
    /// Asks for `[offset, offset + len)`.
    fn range(&self, offset: u64, len: u64) -> Result<Answer> {
        ensure!(len > 0, "an empty range");
        let end = offset + len - 1;
        let resp = self
            .agent
            .get(&self.url)
            .set("Range", &format!("bytes={offset}-{end}"))
            .call()
            .map_err(|e| describe(&self.url, e))?;
        match resp.status() {
            206 => {
                let want = format!("bytes {offset}-{end}/");
                let got = resp.header("Content-Range").unwrap_or("");
                ensure!(
                    got.starts_with(&want),
                    "{}: asked for bytes {offset}-{end}, the server answered with Content-Range {got:?}",
                    shown(&self.url)
                );
                Ok(Answer::Range(Box::new(resp.into_reader().take(len))))
            }
            200 => Ok(Answer::Whole(resp.into_reader())),
            s => bail!("{}: the server answered {s} to a range request", shown(&self.url)),
        }
    }
}

impl RangeSource for HttpRanges {
    fn open_range(&mut self, offset: u64, len: u64) -> Result<Box<dyn Read + '_>> {
        match self.range(offset, len)? {
            Answer::Range(r) => Ok(r),
            Answer::Whole(_) => bail!("{}: the server stopped answering range requests", shown(&self.url)),
        }
    }
}

fn describe(url: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, _) => anyhow::anyhow!("{}: the server answered {code}", shown(url)),
        ureq::Error::Transport(t) => anyhow::anyhow!("{}: {}", shown(url), t.kind()),
    }
}

/// What of `path` may hold the new bundle's chunks: an earlier bundle's data sections, else
/// the whole file.
fn local_data(path: &Path) -> Result<Vec<LocalData>> {
    std::fs::metadata(path).with_context(|| format!("--from {}: cannot read it", path.display()))?;
    Ok(match planet_bundle::read_unverified(path) {
        Ok((_, header)) => header
            .sections
            .iter()
            .filter(|s| !s.name.starts_with(chunks::INDEX_PREFIX))
            .map(|s| LocalData { path: path.to_path_buf(), offset: s.offset, len: Some(s.size) })
            .collect(),
        Err(_) => vec![LocalData::file(path, None)],
    })
}

/// Fetches the bundle at `req.url` into `req.output`.
pub fn run(req: &PullRequest) -> Result<PullResult> {
    let started = Instant::now();
    let ring = crate::pipeline::load_public_key(&req.key)?;
    let mut local = Vec::new();
    for f in &req.from {
        local.extend(local_data(f)?);
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .build();
    let mut remote = HttpRanges { agent, url: req.url.clone() };
    let dest = &req.output;
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure!(parent.is_dir(), "-o {}: the directory {} does not exist", dest.display(), parent.display());
    }
    // One look at the prelude decides: chunked and served by ranges, or the whole file.
    let mut first = Vec::new();
    let rest: Box<dyn Read + Send> = match remote.range(0, PRELUDE_LEN)? {
        Answer::Whole(body) => body,
        Answer::Range(mut r) => {
            r.read_to_end(&mut first).with_context(|| format!("reading {}", shown(&req.url)))?;
            let prelude = planet_bundle::read_prelude_ring(&first, &ring).with_context(|| {
                format!("{}: not a bundle signed by a key of {}", shown(&req.url), req.key.display())
            })?;
            if prelude.head.is_some() {
                let mut progress = |line: &str| eprintln!("planet-image: pull: {line}");
                let (prelude, _, a) = assemble::assemble(&mut remote, &ring, &local, dest, &mut progress)
                    .with_context(|| format!("pulling {} into {}", shown(&req.url), dest.display()))?;
                return Ok(PullResult {
                    output: dest.clone(),
                    release: prelude.release,
                    total_bytes: a.total_bytes,
                    chunked: true,
                    fetched_bytes: a.fetched_bytes + first.len() as u64,
                    requests: a.requests + 1,
                    reused_bytes: a.reused_bytes,
                    resumed_bytes: a.resumed_bytes,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            // Not chunked: the rest of the file after the prelude already read.
            let after = prelude.total_bytes.saturating_sub(first.len() as u64);
            if after == 0 {
                Box::new(std::io::empty())
            } else {
                match remote.range(first.len() as u64, after)? {
                    Answer::Range(r) => r,
                    Answer::Whole(_) => bail!("{}: the server stopped answering range requests", shown(&req.url)),
                }
            }
        }
    };
    let requests = if first.is_empty() { 1 } else { 2 };
    let (release, total, fetched) = fetch_whole(&first, rest, &req.url, &ring, dest)?;
    Ok(PullResult {
        output: dest.clone(),
        release,
        total_bytes: total,
        chunked: false,
        fetched_bytes: fetched,
        requests,
        reused_bytes: 0,
        resumed_bytes: 0,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `head` (bytes already fetched) and then `body` into `DEST.partial`, verified, then renamed;
/// returns the release, the size and the bytes fetched. A file that fails is removed.
fn fetch_whole(
    head: &[u8],
    mut body: Box<dyn Read + Send>,
    url: &str,
    ring: &KeyRing,
    dest: &Path,
) -> Result<(String, u64, u64)> {
    let partial = assemble::partial_path(dest);
    let mut out = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    out.write_all(head).with_context(|| format!("writing {}", partial.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut fetched = head.len() as u64;
    let mut last = Instant::now();
    loop {
        let n = body.read(&mut buf).with_context(|| format!("reading {}", shown(url)))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).with_context(|| format!("writing {}", partial.display()))?;
        fetched += n as u64;
        if last.elapsed() > Duration::from_secs(5) {
            eprintln!("planet-image: pull: {fetched} bytes so far");
            last = Instant::now();
        }
    }
    out.sync_all().with_context(|| format!("syncing {}", partial.display()))?;
    drop(out);
    let (prelude, _) = match planet_bundle::verify_file_ring(&partial, ring) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context(format!("verifying the download from {}: removed", shown(url))));
        }
    };
    std::fs::rename(&partial, dest).with_context(|| format!("renaming {} to {}", partial.display(), dest.display()))?;
    Ok((prelude.release, prelude.total_bytes, fetched))
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn a_url_is_shown_without_its_credentials() {
        assert_eq!(shown("https://user:secret@example.org/b/2.planet"), "https://example.org/b/2.planet");
        assert_eq!(shown("http://127.0.0.1:8080/2.planet"), "http://127.0.0.1:8080/2.planet");
        assert_eq!(shown("http://u:p@h"), "http://h");
    }
}
