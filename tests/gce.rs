//! `publish gce` against gcp-storage-emulator on 127.0.0.1, through a proxy of the test's own
//! that breaks the connection once mid-upload, with a Compute Engine stub (images.insert and
//! its operation) and an OAuth token endpoint stub for a service-account key. Nothing here can
//! reach Google: every endpoint is on 127.0.0.1.

mod common;

use common::*;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BUCKET: &str = "planet-images";
const CHUNK: usize = 256 * 1024;

/// gcp-storage-emulator on a free port, in memory, with BUCKET; killed when dropped.
struct Emulator {
    child: Child,
    port: u16,
}

impl Emulator {
    fn start() -> Emulator {
        let port = free_port();
        let child = Command::new("gcp-storage-emulator")
            .args(["start", "--host=127.0.0.1", &format!("--port={port}"), "--in-memory", "-q"])
            .arg(format!("--default-bucket={BUCKET}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting gcp-storage-emulator (scripts/test installs it: pip install gcp-storage-emulator)");
        let mut emu = Emulator { child, port };
        let start = Instant::now();
        loop {
            if let Ok((status, _)) = http(port, "GET", &format!("/storage/v1/b/{BUCKET}"), &[], b"") {
                if status == 200 {
                    return emu;
                }
            }
            if let Ok(Some(st)) = emu.child.try_wait() {
                panic!("gcp-storage-emulator exited ({st}) before listening on {port}");
            }
            assert!(start.elapsed() < Duration::from_secs(60), "gcp-storage-emulator not ready on {port} within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request to 127.0.0.1:port; the status and body.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(resp.len());
    let status_line = String::from_utf8_lossy(&resp[..end]).lines().next().unwrap_or("").to_string();
    let status = status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, resp[(end + 4).min(resp.len())..].to_vec()))
}

/// A request as the proxy or the stub saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    content_range: Option<String>,
    authorization: Option<String>,
    body: Vec<u8>,
    /// The proxy broke the connection after the server had this request.
    dropped: bool,
}

/// Reads one request off a connection: head and Content-Length body.
fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<(String, Seen)>> {
    let Some(head) = read_head(r)? else { return Ok(None) };
    let header = |name: &str| head_field(&head, name);
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let first = head.lines().next().unwrap_or("").to_string();
    let mut parts = first.split_whitespace();
    let seen = Seen {
        method: parts.next().unwrap_or("").to_string(),
        path: parts.next().unwrap_or("").to_string(),
        content_range: header("content-range"),
        authorization: header("authorization"),
        body,
        dropped: false,
    };
    Ok(Some((head, seen)))
}

/// Forwards to the emulator, proxies one connection per request, and after the server has taken
/// the `break_at`-th chunk PUT closes the client's connection without its answer: the client
/// cannot know the chunk arrived and must ask.
struct FaultProxy {
    port: u16,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl FaultProxy {
    fn start(upstream: u16, break_at: usize) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let log = log2.clone();
                std::thread::spawn(move || {
                    let _ = proxy_one(conn, upstream, break_at, &log);
                });
            }
        });
        FaultProxy { port, log }
    }

    fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

fn proxy_one(client: TcpStream, upstream: u16, break_at: usize, log: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some((head, mut seen)) = read_request(&mut reader)? else { return Ok(()) };
    let is_chunk = seen.method == "PUT" && seen.content_range.as_deref().is_some_and(|r| !r.starts_with("bytes */"));
    let drop_it = {
        let l = log.lock().unwrap();
        let chunks = l
            .iter()
            .filter(|s| s.method == "PUT" && !s.content_range.as_deref().unwrap_or("").starts_with("bytes */"))
            .count();
        is_chunk && chunks + 1 == break_at && !l.iter().any(|s| s.dropped)
    };
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let new_head: String = head
        .lines()
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        + "Connection: close\r\n\r\n";
    up.write_all(new_head.as_bytes())?;
    up.write_all(&seen.body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    seen.dropped = drop_it;
    log.lock().unwrap().push(seen);
    if drop_it {
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    // Re-frame: Connection: close, and a length when upstream (HTTP/1.0 style) gave none.
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(resp.len().saturating_sub(4));
    let rhead = String::from_utf8_lossy(&resp[..end]).into_owned();
    let mut out: String = rhead
        .split("\r\n")
        .filter(|l| {
            !l.to_ascii_lowercase().starts_with("connection:") && !l.to_ascii_lowercase().starts_with("content-length:")
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", resp.len() - end - 4));
    client.write_all(out.as_bytes())?;
    client.write_all(&resp[end + 4..])?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// The Compute Engine stub (images.insert, operations) and OAuth token endpoint.
struct Stub {
    port: u16,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    fn start(project: &str) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let project = project.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = stub_one(conn, &project, &log2);
            }
        });
        Stub { port, log }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

fn stub_one(conn: TcpStream, project: &str, log: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    let Some((_, seen)) = read_request(&mut reader)? else { return Ok(()) };
    let polls = log.lock().unwrap().iter().filter(|s| s.method == "GET").count();
    let base = format!("/compute/v1/projects/{project}/global");
    let target = format!("https://www.googleapis.com/compute/v1/projects/{project}/global/images/planet-test-1");
    let (status, body) = if seen.method == "POST" && seen.path == "/token" {
        (
            "200 OK",
            serde_json::json!({"access_token": "sa-token-from-stub", "expires_in": 3600, "token_type": "Bearer"}),
        )
    } else if seen.authorization.as_deref() != Some("Bearer sa-token-from-stub") {
        ("401 Unauthorized", serde_json::json!({"error": {"code": 401, "message": "bad token"}}))
    } else if seen.method == "POST" && seen.path == format!("{base}/images") {
        (
            "200 OK",
            serde_json::json!({"kind": "compute#operation", "name": "operation-1", "status": "RUNNING", "targetLink": target}),
        )
    } else if seen.method == "GET" && seen.path == format!("{base}/operations/operation-1") {
        let status = if polls == 0 { "RUNNING" } else { "DONE" };
        (
            "200 OK",
            serde_json::json!({"kind": "compute#operation", "name": "operation-1", "status": status, "targetLink": target}),
        )
    } else {
        ("404 Not Found", serde_json::json!({"error": {"code": 404, "message": "not stubbed"}}))
    };
    log.lock().unwrap().push(seen);
    let text = body.to_string();
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    conn.flush()?;
    let _ = conn.shutdown(Shutdown::Both);
    Ok(())
}

/// A planet-image command with no Google credentials or endpoints from the machine.
fn gce_env<'a>(cmd: &'a mut Command, home: &std::path::Path) -> &'a mut Command {
    for v in [
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GCE_ACCESS_TOKEN",
        "CLOUDSDK_CONFIG",
        "GCE_METADATA_HOST",
        "STORAGE_EMULATOR_HOST",
        "GCE_COMPUTE_ENDPOINT",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("HOME", home)
}

#[test]
fn publish_gce_resumes_a_broken_upload_and_inserts_the_image() {
    let scratch = Scratch::new("gce-publish");
    let archive = scratch.path("planet.tar.gz");
    build("gce", &fixture("demo.tar"), &archive, &[]);
    let data = std::fs::read(&archive).unwrap();
    let chunks = data.len().div_ceil(CHUNK);
    assert!(chunks >= 4, "the archive ({} bytes) makes too few 256 KiB chunks for the test", data.len());

    let emu = Emulator::start();
    let proxy = FaultProxy::start(emu.port, 3);
    let stub = Stub::start("proj-1");
    // A service-account key whose token_uri is the stub: the JWT exchange runs for real.
    let key = std::fs::read_to_string(repo().join("src/publish/gce/testdata/test-key.pem")).unwrap();
    let creds = scratch.path("sa.json");
    std::fs::write(
        &creds,
        serde_json::json!({
            "type": "service_account",
            "project_id": "proj-1",
            "private_key_id": "kid-1",
            "private_key": key,
            "client_email": "builder@proj-1.iam.gserviceaccount.com",
            "token_uri": format!("{}/token", stub.endpoint()),
        })
        .to_string(),
    )
    .unwrap();

    let mut cmd = planet_image();
    gce_env(&mut cmd, &scratch.0)
        .args(["publish", "gce"])
        .arg(&archive)
        .args(["--bucket", BUCKET, "--project", "proj-1", "--name", "planet-test-1", "--family", "planet"])
        .args(["--chunk-size", "256K"])
        .env("GOOGLE_APPLICATION_CREDENTIALS", &creds)
        .env("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{}", proxy.port))
        .arg("--compute-endpoint")
        .arg(stub.endpoint());
    let out = ok(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("sa-token-from-stub") && !stderr.contains("PRIVATE KEY"), "{stderr}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["image"], "planet-test-1");
    assert_eq!(result["project"], "proj-1");
    assert_eq!(result["family"], "planet");
    assert_eq!(result["object"], format!("gs://{BUCKET}/planet-test-1.tar.gz"));
    assert_eq!(result["bytes_uploaded"], data.len() as u64);
    assert_eq!(result["resumes"], 1);
    assert_eq!(
        result["self_link"],
        "https://www.googleapis.com/compute/v1/projects/proj-1/global/images/planet-test-1"
    );

    // The proxy's log: the broken chunk, then a status query, then a PUT from the server's offset.
    let log = proxy.log();
    // The emulator is plain HTTP: the token never goes there (the loopback compute stub checks
    // that it gets it).
    for s in &log {
        assert!(s.authorization.is_none(), "{} {} carried Authorization over plain HTTP", s.method, s.path);
    }
    let total = data.len();
    let i = log.iter().position(|s| s.dropped).expect("the proxy broke a chunk upload");
    let broken = log[i].content_range.clone().unwrap();
    let (a, b) = broken.trim_start_matches("bytes ").split_once('/').unwrap().0.split_once('-').unwrap();
    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
    assert!(a > 0, "the break is mid-upload: {broken}");
    assert_eq!(log[i + 1].method, "PUT");
    assert_eq!(
        log[i + 1].content_range.as_deref(),
        Some(format!("bytes */{total}").as_str()),
        "a status query follows"
    );
    assert!(log[i + 1].body.is_empty());
    let next = log[i + 2].content_range.clone().unwrap();
    assert!(
        next.starts_with(&format!("bytes {}-", b + 1)),
        "the upload resumes where the server is ({}), not at {a} or 0: {next}",
        b + 1
    );
    assert!(
        !log[i + 2..].iter().any(|s| s.content_range.as_deref().is_some_and(|r| r.starts_with("bytes 0-"))),
        "never restarted"
    );
    assert_eq!(log.iter().filter(|s| s.method == "POST").count(), 1, "one upload session");

    // The stored object is the archive, byte for byte.
    let (status, stored) =
        http(emu.port, "GET", &format!("/download/storage/v1/b/{BUCKET}/o/planet-test-1.tar.gz?alt=media"), &[], b"")
            .unwrap();
    assert_eq!(status, 200);
    assert!(stored == data, "stored object ({} bytes) differs from the archive ({} bytes)", stored.len(), data.len());

    // The token exchange and images.insert as Google would see them.
    let calls = stub.log();
    let token = calls.iter().find(|s| s.path == "/token").expect("a token request");
    let form = String::from_utf8_lossy(&token.body);
    assert!(form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"), "{form}");
    let assertion = form.split('&').find_map(|kv| kv.strip_prefix("assertion=")).expect("an assertion");
    assert_eq!(assertion.split('.').count(), 3, "a JWT");
    let insert = calls.iter().find(|s| s.method == "POST" && s.path.ends_with("/images")).expect("images.insert");
    assert_eq!(insert.path, "/compute/v1/projects/proj-1/global/images");
    let body: serde_json::Value = serde_json::from_slice(&insert.body).unwrap();
    assert_eq!(body["name"], "planet-test-1");
    assert_eq!(body["family"], "planet");
    assert_eq!(body["rawDisk"]["source"], format!("https://storage.googleapis.com/{BUCKET}/planet-test-1.tar.gz"));
    assert_eq!(
        body["guestOsFeatures"],
        serde_json::json!([{"type": "UEFI_COMPATIBLE"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"}, {"type": "GVNIC"}])
    );
    assert_eq!(body["architecture"], "X86_64");
    assert!(calls.iter().filter(|s| s.path.ends_with("/operations/operation-1")).count() >= 2, "waited until DONE");
}

#[test]
fn publish_gce_without_credentials_says_what_to_set() {
    let scratch = Scratch::new("gce-nocreds");
    let archive = scratch.path("x.tar.gz");
    let mut gz = flate2_like_gzip();
    gz.extend_from_slice(b"");
    std::fs::write(&archive, gz).unwrap();
    let mut cmd = planet_image();
    gce_env(&mut cmd, &scratch.0)
        .args(["publish", "gce"])
        .arg(&archive)
        .args(["--bucket", "b", "--project", "p", "--name", "n1", "--storage-endpoint", "127.0.0.1:9"])
        .args(["--compute-endpoint", "http://127.0.0.1:9"]);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no Google credentials") && stderr.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{stderr}");

    // A key file that is not there is named.
    let out = cmd.env("GOOGLE_APPLICATION_CREDENTIALS", scratch.path("missing.json")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));

    // Not a gzip archive: said before any credentials are looked for.
    let raw = scratch.path("disk.raw");
    std::fs::write(&raw, b"not gzip").unwrap();
    let out = planet_image()
        .args(["publish", "gce"])
        .arg(&raw)
        .args(["--bucket", "b", "--project", "p", "--name", "n1", "--storage-endpoint", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("build --target gce"));
}

/// An empty gzip member.
fn flate2_like_gzip() -> Vec<u8> {
    vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}
