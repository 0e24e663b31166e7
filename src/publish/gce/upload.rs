//! Resumable upload to Cloud Storage (JSON API). One session; chunks of a multiple of 256 KiB
//! with `Content-Range: bytes A-B/TOTAL`, answered 308 with the `Range` the server holds. After
//! a broken connection, a timeout or a 5xx the server is asked what it has (`bytes */TOTAL`, empty
//! body) and the upload goes on from there: it is never restarted.
//!
//! Only the request that starts the session carries the access token (and only over HTTPS):
//! the session URL is itself the credential for the chunks, so the token never follows a
//! `Location` to another host.

use super::auth::AccessToken;
use super::http::{backoff, describe_status, describe_transport, retryable, Http};
use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

pub const CHUNK_ALIGN: u64 = 256 * 1024;
pub const DEFAULT_CHUNK: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Failed attempts in a row (no progress in between) before giving up.
    pub max_failures: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_failures: 8, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(30) }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UploadStats {
    /// The object's size.
    pub bytes: u64,
    /// Body bytes sent, resent chunks included.
    pub bytes_sent: u64,
    pub chunks_sent: u64,
    /// Times the upload was resumed after asking the server what it has.
    pub resumes: u32,
}

/// Parses `--chunk-size`: bytes, or with a K/M/G (KiB/MiB/GiB) suffix; a positive multiple of 256 KiB.
pub fn parse_chunk_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1024),
        Some('M') => (&t[..t.len() - 1], 1024 * 1024),
        Some('G') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size (e.g. 8M, 256K)"))?;
    let bytes = n.checked_mul(mul).ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 || bytes % CHUNK_ALIGN != 0 {
        return Err(format!("{s:?}: the chunk size must be a positive multiple of 256K"));
    }
    Ok(bytes)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn session_start_url(storage: &str, bucket: &str, object: &str) -> String {
    format!(
        "{}/upload/storage/v1/b/{}/o?uploadType=resumable&name={}",
        storage.trim_end_matches('/'),
        encode(bucket),
        encode(object)
    )
}

/// `bytes A-B/TOTAL` for the chunk [start, end).
pub fn content_range(start: u64, end: u64, total: u64) -> String {
    if start == end {
        format!("bytes */{total}")
    } else {
        format!("bytes {start}-{}/{total}", end - 1)
    }
}

/// The offset the server has up to from a 308's `Range: bytes=0-N` (none: nothing yet).
pub fn next_offset(range: Option<&str>) -> Result<u64> {
    let Some(r) = range else { return Ok(0) };
    let last = r
        .trim()
        .strip_prefix("bytes=0-")
        .and_then(|n| n.parse::<u64>().ok())
        .with_context(|| format!("the server answered an unexpected Range {r:?}"))?;
    Ok(last + 1)
}

/// What one request came to.
enum Answer {
    /// The object is complete.
    Done,
    /// The server holds bytes [0, offset).
    Incomplete(u64),
    /// Worth asking again (connection, timeout, 5xx): the reason.
    Retry(String),
}

pub struct Upload<'a> {
    pub http: &'a Http,
    pub token: &'a AccessToken,
    pub storage: &'a str,
    pub bucket: &'a str,
    pub object: &'a str,
    pub chunk_size: u64,
    pub policy: RetryPolicy,
}

impl Upload<'_> {
    pub fn run(&self, path: &Path) -> Result<UploadStats> {
        let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let total = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        let session = self.start_session(total)?;
        let mut stats = UploadStats { bytes: total, ..Default::default() };
        let mut offset = 0u64;
        let mut failures = 0u32;
        let mut progress = Progress::new(total);
        let mut buf = Vec::new();
        loop {
            let end = (offset + self.chunk_size).min(total);
            buf.resize((end - offset) as usize, 0);
            file.seek(SeekFrom::Start(offset))?;
            file.read_exact(&mut buf).with_context(|| format!("reading {} at {offset}", path.display()))?;
            stats.chunks_sent += 1;
            stats.bytes_sent += buf.len() as u64;
            let req = self.http.agent.put(&session).set("Content-Range", &content_range(offset, end, total));
            let mut answer = self.answer(req.send_bytes(&buf), total)?;
            // Ask the server what it has until it answers; then go on from there.
            while let Answer::Retry(reason) = answer {
                failures += 1;
                if failures > self.policy.max_failures {
                    bail!(
                        "uploading to gs://{}/{}: giving up after {failures} failed attempts, last: {reason}",
                        self.bucket,
                        self.object
                    );
                }
                let d = backoff(failures, self.policy.base_delay, self.policy.max_delay);
                eprintln!(
                    "planet-image: upload interrupted at {offset} ({reason}); asking the server what it has in {} ms",
                    d.as_millis()
                );
                std::thread::sleep(d);
                stats.resumes += 1;
                answer = self.query_status(&session, total)?;
                if let Answer::Incomplete(n) = answer {
                    eprintln!("planet-image: the server has {n} of {total} bytes; resuming from there");
                }
            }
            match answer {
                Answer::Done => {
                    progress.show(total, true);
                    return Ok(stats);
                }
                Answer::Incomplete(n) => {
                    if n > total {
                        bail!("the server claims {n} bytes of a {total}-byte upload");
                    }
                    if n > offset {
                        failures = 0;
                    }
                    if n == total {
                        // Everything is there but the object was not finalised: ask again.
                        if let Answer::Done = self.query_status(&session, total)? {
                            progress.show(total, true);
                            return Ok(stats);
                        }
                        bail!("the server holds all {total} bytes but does not finalise the object");
                    }
                    offset = n;
                    progress.show(offset, false);
                }
                Answer::Retry(_) => unreachable!(),
            }
        }
    }

    fn start_session(&self, total: u64) -> Result<String> {
        let url = session_start_url(self.storage, self.bucket, self.object);
        let body = serde_json::json!({"name": self.object, "contentType": "application/gzip"}).to_string();
        let mut failures = 0;
        loop {
            let r = self
                .token
                .authorize(self.http.agent.post(&url), &url, false)
                .set("Content-Type", "application/json; charset=UTF-8")
                .set("X-Upload-Content-Type", "application/gzip")
                .set("X-Upload-Content-Length", &total.to_string())
                .send_string(&body);
            let reason = match r {
                Ok(resp) => {
                    let loc = resp.header("Location").map(str::to_string).with_context(|| {
                        format!(
                            "starting the upload to gs://{}/{}: the answer has no Location",
                            self.bucket, self.object
                        )
                    })?;
                    return Ok(if loc.starts_with('/') {
                        format!("{}{loc}", self.storage.trim_end_matches('/'))
                    } else {
                        loc
                    });
                }
                Err(ureq::Error::Status(code, resp)) if retryable(code) => describe_status(code, resp),
                Err(ureq::Error::Status(code, resp)) => bail!(
                    "starting the upload to gs://{}/{}: {}{}",
                    self.bucket,
                    self.object,
                    describe_status(code, resp),
                    hint(code)
                ),
                Err(ureq::Error::Transport(t)) => describe_transport(&t),
            };
            failures += 1;
            if failures > self.policy.max_failures {
                bail!(
                    "starting the upload to gs://{}/{} failed {failures} times, last: {reason}",
                    self.bucket,
                    self.object
                );
            }
            std::thread::sleep(backoff(failures, self.policy.base_delay, self.policy.max_delay));
        }
    }

    /// Asks the session what the server holds (`Content-Range: bytes */TOTAL`, empty body).
    fn query_status(&self, session: &str, total: u64) -> Result<Answer> {
        let r = self.http.agent.put(session).set("Content-Range", &format!("bytes */{total}")).send_bytes(&[]);
        self.answer(r, total)
    }

    fn answer(&self, r: Result<ureq::Response, ureq::Error>, total: u64) -> Result<Answer> {
        match r {
            Ok(resp) if resp.status() == 308 => Ok(Answer::Incomplete(next_offset(resp.header("Range"))?)),
            Ok(resp) if (200..300).contains(&resp.status()) => {
                // Drain the object resource so the connection can be reused.
                let _ = resp.into_string();
                Ok(Answer::Done)
            }
            Ok(resp) => bail!("uploading to gs://{}/{}: unexpected HTTP {}", self.bucket, self.object, resp.status()),
            Err(ureq::Error::Status(code, resp)) if retryable(code) => Ok(Answer::Retry(describe_status(code, resp))),
            Err(ureq::Error::Status(code, resp)) if code == 404 || code == 410 => bail!(
                "uploading to gs://{}/{}: the upload session is gone ({}); run publish again to start a new one",
                self.bucket,
                self.object,
                describe_status(code, resp)
            ),
            Err(ureq::Error::Status(code, resp)) => bail!(
                "uploading {total} bytes to gs://{}/{}: {}{}",
                self.bucket,
                self.object,
                describe_status(code, resp),
                hint(code)
            ),
            Err(ureq::Error::Transport(t)) => Ok(Answer::Retry(describe_transport(&t))),
        }
    }
}

fn hint(code: u16) -> &'static str {
    match code {
        401 => " (the credentials were refused: check GOOGLE_APPLICATION_CREDENTIALS)",
        403 => " (the account needs roles/storage.objectCreator on the bucket)",
        404 => " (no such bucket: check --bucket)",
        _ => "",
    }
}

/// Progress on stderr: at most one line a second, and the last one.
struct Progress {
    total: u64,
    started: Instant,
    last: Option<Instant>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress { total, started: Instant::now(), last: None }
    }

    fn show(&mut self, done: u64, last: bool) {
        if !last && self.last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.last = Some(Instant::now());
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        eprintln!(
            "planet-image: uploaded {:.1} of {:.1} MiB ({:.0}%, {:.1} MiB/s)",
            mib(done),
            mib(self.total),
            if self.total == 0 { 100.0 } else { done as f64 * 100.0 / self.total as f64 },
            mib(done) / secs
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_multiples_of_256k() {
        assert_eq!(parse_chunk_size("256K"), Ok(256 * 1024));
        assert_eq!(parse_chunk_size("8M"), Ok(8 << 20));
        assert_eq!(parse_chunk_size("524288"), Ok(512 * 1024));
        assert!(parse_chunk_size("100K").is_err());
        assert!(parse_chunk_size("0").is_err());
        assert!(parse_chunk_size("x").is_err());
    }

    #[test]
    fn requests_are_built_as_the_json_api_wants() {
        assert_eq!(
            session_start_url("http://127.0.0.1:9/", "my-bucket", "images/planet 1.tar.gz"),
            "http://127.0.0.1:9/upload/storage/v1/b/my-bucket/o?uploadType=resumable&name=images%2Fplanet%201.tar.gz"
        );
        assert_eq!(content_range(0, 262144, 1000000), "bytes 0-262143/1000000");
        assert_eq!(content_range(786432, 1000000, 1000000), "bytes 786432-999999/1000000");
        assert_eq!(content_range(5, 5, 5), "bytes */5");
        assert_eq!(next_offset(None).unwrap(), 0);
        assert_eq!(next_offset(Some("bytes=0-262143")).unwrap(), 262144);
        assert!(next_offset(Some("bytes=5-9")).is_err());
    }
}
