//! `build --target ami` and `publish aws` against moto's server on 127.0.0.1 (EBS direct APIs
//! and EC2), directly and through a fault-injecting proxy. Nothing here can reach AWS: every
//! command gets AWS_ENDPOINT_URL, fake credentials and AWS_EC2_METADATA_DISABLED.

mod common;

use common::moto::Moto;
use common::*;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BLOCK: usize = 512 * 1024;
const SECRET: &str = "fakeSecretKeyNeverPrinted0123456789";

/// The AWS environment of a test: only `endpoint`, fake credentials, no profile files, no IMDS.
fn aws_env<'a>(cmd: &'a mut Command, endpoint: &str) -> &'a mut Command {
    for v in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "AKIAFAKEFORTESTS0000")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/planet-image-test/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/planet-image-test/credentials")
        .env("SOURCE_DATE_EPOCH", "1700000000")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn build_ami(endpoint: &str, name: &str, out: Option<&Path>) -> serde_json::Value {
    let mut cmd = planet_image();
    cmd.args(["build", "--target", "ami", "--rootfs"]).arg(fixture("demo.tar")).args(["--name", name]);
    cmd.args(["--tag", "purpose=test"]);
    if let Some(o) = out {
        cmd.arg("-o").arg(o);
    }
    let out = ok(aws_env(&mut cmd, endpoint));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(SECRET));
    json(&out)
}

/// The SHA-256 of every non-zero 512 KiB block of `raw`, by index (the last block zero-padded).
fn nonzero_blocks(raw: &Path) -> BTreeMap<u64, String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(raw).unwrap();
    let zero = vec![0u8; BLOCK];
    let mut out = BTreeMap::new();
    let mut index = 0u64;
    loop {
        let mut buf = vec![0u8; BLOCK];
        let mut n = 0;
        while n < BLOCK {
            match f.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        if buf != zero {
            out.insert(index, hex::encode(Sha256::digest(&buf)));
        }
        index += 1;
        if n < BLOCK {
            break;
        }
    }
    out
}

/// What moto holds: the AMIs named `name` owned by the account, and the SHA-256 of each block
/// of `snapshot` by index (ListSnapshotBlocks + GetSnapshotBlock, through boto3).
fn moto_state(endpoint: &str, name: &str, snapshot: &str) -> (Vec<String>, BTreeMap<u64, String>) {
    let script = r#"
import boto3, hashlib, json, sys
ep, name, snap = sys.argv[1:4]
kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
ec2 = boto3.client("ec2", **kw)
ebs = boto3.client("ebs", **kw)
imgs = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
blocks = {}
for b in ebs.list_snapshot_blocks(SnapshotId=snap)["Blocks"]:
    data = ebs.get_snapshot_block(SnapshotId=snap, BlockIndex=int(b["BlockIndex"]), BlockToken=b["BlockToken"])["BlockData"].read()
    blocks[int(b["BlockIndex"])] = hashlib.sha256(data).hexdigest()
print(json.dumps({"images": [i["ImageId"] for i in imgs if i.get("Name") == name], "blocks": blocks}))
"#;
    let text = stdout(Command::new("python3").arg("-c").arg(script).args([endpoint, name, snapshot]));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let images = v["images"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    let blocks = v["blocks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_string()))
        .collect();
    (images, blocks)
}

fn check_uploaded(endpoint: &str, name: &str, result: &serde_json::Value, raw: &Path) {
    let ami = result["ami_id"].as_str().unwrap();
    assert!(ami.starts_with("ami-"), "{result}");
    assert_eq!(result["reused"], false);
    assert_eq!(result["region"], "us-east-1");
    let snapshot = result["snapshot_id"].as_str().unwrap();
    let expected = nonzero_blocks(raw);
    assert!(!expected.is_empty());
    let (images, stored) = moto_state(endpoint, name, snapshot);
    assert_eq!(images, vec![ami.to_string()], "DescribeImages lists the AMI under its name");
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the snapshot holds exactly the non-zero blocks"
    );
    assert_eq!(stored, expected, "every stored block equals the image's block at its index");
    assert_eq!(result["blocks_uploaded"].as_u64().unwrap(), expected.len() as u64);
    assert!(result["bytes_sent"].as_u64().unwrap() >= (expected.len() * BLOCK) as u64);
    let total_blocks = std::fs::metadata(raw).unwrap().len().div_ceil(BLOCK as u64);
    assert!((expected.len() as u64) < total_blocks, "zero blocks were skipped");
}

#[test]
fn build_ami_registers_the_image_and_reuses_it_by_name() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let scratch = Scratch::new("aws-build");
    let raw = scratch.path("planet.raw");
    let result = build_ami(&ep, "planet-test-1", Some(&raw));
    check_uploaded(&ep, "planet-test-1", &result, &raw);

    // The manifest records the AMI.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(scratch.path("planet.raw.manifest.json")).unwrap()).unwrap();
    assert_eq!(m["aws"]["ami_id"], result["ami_id"]);
    assert_eq!(m["image"]["format"], "raw");
    assert!(m["cmdline"].as_str().unwrap().contains("console=ttyS0"));
    assert!(m["cmdline"].as_str().unwrap().contains("nvme_core.io_timeout=4294967295 planet.datasource=ec2"));

    // Same name again, no -o: reported and reused, nothing uploaded (nothing built either).
    let again = build_ami(&ep, "planet-test-1", None);
    assert_eq!(again["reused"], true, "{again}");
    assert_eq!(again["ami_id"], result["ami_id"]);
    assert_eq!(again["blocks_uploaded"], 0);
    assert_eq!(again["bytes_sent"], 0);

    // publish aws of the kept image under the same name: reused as well.
    let out = ok(aws_env(planet_image().args(["publish", "aws"]).arg(&raw).args(["--name", "planet-test-1"]), &ep));
    let p = json(&out);
    assert_eq!((p["reused"].clone(), p["blocks_uploaded"].clone()), (true.into(), 0.into()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // --force replaces it: a new AMI, the old one gone.
    let out = ok(aws_env(
        planet_image().args(["publish", "aws"]).arg(&raw).args(["--name", "planet-test-1", "--force"]),
        &ep,
    ));
    let forced = json(&out);
    assert_eq!(forced["reused"], false);
    assert_ne!(forced["ami_id"], result["ami_id"]);
    check_uploaded(&ep, "planet-test-1", &forced, &raw);
}

/// SIGINT in the middle of the block upload (finding 17): the pending snapshot is deleted, no
/// AMI is registered, and the exit status is 130.
#[test]
fn an_interrupted_publish_deletes_its_snapshot() {
    let moto = Moto::start();
    let proxy = FaultProxy::start_with(moto.port, false, Duration::from_millis(300));
    let scratch = Scratch::new("aws-interrupt");
    let raw = scratch.path("planet.raw");
    build("raw", &fixture("demo.tar"), &raw, &[]);
    let mut cmd = planet_image();
    aws_env(&mut cmd, &proxy.endpoint())
        .args(["publish", "aws"])
        .arg(&raw)
        .args(["--name", "planet-interrupted", "--upload-concurrency", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (mut seen, mut line) = (String::new(), String::new());
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("uploading blocks") {
            break;
        }
        line.clear();
    }
    let snapshot = seen
        .split_whitespace()
        .find(|w| w.starts_with("snap-"))
        .unwrap_or_else(|| panic!("no snapshot started:\n{seen}"))
        .to_string();
    std::thread::sleep(Duration::from_millis(500));
    // Our own child, not yet waited for.
    let _ = planet_image::util::sys::kill(child.id() as libc::pid_t, libc::SIGINT);
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}\n{seen}{rest}");
    assert!(rest.contains(&format!("the snapshot {snapshot} was deleted")), "{seen}{rest}");
    let script = r#"
import boto3, json, sys
kw = dict(endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
ec2 = boto3.client("ec2", **kw)
snaps = [s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]]
imgs = [i["ImageId"] for i in ec2.describe_images(Owners=["self"])["Images"]]
print(json.dumps({"snapshots": snaps, "images": imgs}))
"#;
    let v: serde_json::Value =
        serde_json::from_str(&stdout(Command::new("python3").arg("-c").arg(script).arg(moto.endpoint()))).unwrap();
    assert!(!v["snapshots"].as_array().unwrap().iter().any(|s| s == &snapshot), "{v}");
    assert!(v["images"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn upload_survives_throttling_5xx_and_dropped_connections() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.port, true);
    let scratch = Scratch::new("aws-faults");
    let raw = scratch.path("planet.raw");
    build("raw", &fixture("demo.tar"), &raw, &[]);
    let out = ok(aws_env(
        planet_image().args(["publish", "aws"]).arg(&raw).args([
            "--name",
            "planet-faults",
            "--upload-concurrency",
            "8",
        ]),
        &proxy.endpoint(),
    ));
    let result = json(&out);
    let stats = proxy.stats();
    eprintln!("proxy: {stats:?}");
    assert!(stats.unavailable > 0 && stats.throttled > 0 && stats.dropped_before > 0 && stats.dropped_after > 0);
    // The same blocks as without faults, checked against moto directly.
    check_uploaded(&moto.endpoint(), "planet-faults", &result, &raw);
    let faults = stats.unavailable + stats.throttled + stats.dropped_before + stats.dropped_after;
    assert!(result["requests"].as_u64().unwrap() >= result["blocks_uploaded"].as_u64().unwrap() + faults);
}

#[test]
fn missing_credentials_and_bad_regions_say_what_to_set() {
    let moto = Moto::start();
    let ep = moto.endpoint();
    let scratch = Scratch::new("aws-errors");
    let raw = scratch.path("tiny.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"data", 4096).unwrap();

    let fail = |cmd: &mut Command| -> String {
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(!out.status.success(), "{cmd:?} succeeded");
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(SECRET), "a secret was printed: {text}");
        text
    };

    let mut cmd = planet_image();
    aws_env(cmd.args(["publish", "aws"]).arg(&raw).args(["--name", "x"]), &ep)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let e = fail(&mut cmd);
    assert!(e.contains("AWS_ACCESS_KEY_ID") && e.contains("AWS_SECRET_ACCESS_KEY") && e.contains("AWS_PROFILE"), "{e}");

    let mut cmd = planet_image();
    aws_env(cmd.args(["publish", "aws"]).arg(&raw).args(["--name", "x"]), &ep).env_remove("AWS_REGION");
    let e = fail(&mut cmd);
    assert!(e.contains("AWS_REGION") && e.contains("--region"), "{e}");

    let mut cmd = planet_image();
    aws_env(cmd.args(["publish", "aws"]).arg(&raw).args(["--name", "x", "--region", "xx-nowhere-9"]), &ep);
    let e = fail(&mut cmd);
    assert!(e.contains("xx-nowhere-9") && e.contains("AWS_REGION") && e.contains("--region"), "{e}");

    // qcow2 is refused before anything is sent.
    let q = scratch.path("x.qcow2");
    std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
    let e = fail(aws_env(planet_image().args(["publish", "aws"]).arg(&q).args(["--name", "x"]), &ep));
    assert!(e.contains("qcow2") && e.contains("raw"), "{e}");

    // --name is required.
    let e = fail(aws_env(planet_image().args(["publish", "aws"]).arg(&raw), &ep));
    assert!(e.contains("--name"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// A fault-injecting HTTP proxy in front of moto. Each request is forwarded on a connection of
// its own. With faults on, the first attempt at some PutSnapshotBlock calls is answered 503,
// answered with a throttling error, dropped before reaching moto, or dropped after moto
// stored the block; every block's later attempts pass, so the faults are bounded.

#[derive(Debug, Default, Clone)]
pub struct ProxyStats {
    pub requests: u64,
    pub request_bytes: u64,
    pub put_blocks: u64,
    pub unavailable: u64,
    pub throttled: u64,
    pub dropped_before: u64,
    pub dropped_after: u64,
}

pub struct FaultProxy {
    port: u16,
    stats: Arc<Mutex<ProxyStats>>,
    stop: Arc<AtomicBool>,
}

struct Shared {
    upstream: u16,
    faults: bool,
    /// Each PutSnapshotBlock waits this long first (an upload slow enough to interrupt).
    block_delay: Duration,
    stats: Arc<Mutex<ProxyStats>>,
    attempts: Mutex<HashMap<String, u32>>,
}

const MAX_FAULTS: u64 = 60;

impl FaultProxy {
    pub fn start(upstream: u16, faults: bool) -> FaultProxy {
        FaultProxy::start_with(upstream, faults, Duration::ZERO)
    }

    pub fn start_with(upstream: u16, faults: bool, block_delay: Duration) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(Mutex::new(ProxyStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            upstream,
            faults,
            block_delay,
            stats: stats.clone(),
            attempts: Mutex::new(HashMap::new()),
        });
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &shared);
                });
            }
        });
        FaultProxy { port, stats, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stats(&self) -> ProxyStats {
        self.stats.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

enum Fault {
    None,
    Unavailable,
    Throttled,
    DropBefore,
    DropAfter,
}

/// Serves the requests of one client connection, one upstream connection each.
fn serve(client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let Some((head, body)) = read_request(&mut reader)? else { return Ok(()) };
        let request_line = head.lines().next().unwrap_or("").to_string();
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let is_put_block = method == "PUT" && path.contains("/snapshots/") && path.contains("/blocks/");
        if is_put_block {
            std::thread::sleep(shared.block_delay);
        }
        let fault = {
            let mut st = shared.stats.lock().unwrap();
            st.requests += 1;
            st.request_bytes += (head.len() + body.len()) as u64;
            if is_put_block {
                st.put_blocks += 1;
            }
            let injected = st.unavailable + st.throttled + st.dropped_before + st.dropped_after;
            if shared.faults && is_put_block && injected < MAX_FAULTS {
                let mut attempts = shared.attempts.lock().unwrap();
                let n = attempts.entry(path.to_string()).or_insert(0);
                *n += 1;
                let index: u64 = path.rsplit('/').next().and_then(|s| s.split('?').next()?.parse().ok()).unwrap_or(0);
                if *n == 1 {
                    match index % 5 {
                        0 => {
                            st.unavailable += 1;
                            Fault::Unavailable
                        }
                        1 => {
                            st.throttled += 1;
                            Fault::Throttled
                        }
                        2 => {
                            st.dropped_before += 1;
                            Fault::DropBefore
                        }
                        3 => {
                            st.dropped_after += 1;
                            Fault::DropAfter
                        }
                        _ => Fault::None,
                    }
                } else {
                    Fault::None
                }
            } else {
                Fault::None
            }
        };
        match fault {
            Fault::Unavailable => {
                respond(&mut client, "503 Service Unavailable", "InternalServerException", "injected 503")?;
                continue;
            }
            Fault::Throttled => {
                respond(&mut client, "400 Bad Request", "RequestThrottledException", "injected: rate exceeded")?;
                continue;
            }
            Fault::DropBefore => {
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
            _ => {}
        }
        let response = forward(shared.upstream, &head, &body)?;
        if matches!(fault, Fault::DropAfter) {
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        client.write_all(&response)?;
        client.flush()?;
        // Responses are framed by Connection: close from upstream; end this connection too.
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
}

fn respond(client: &mut TcpStream, status: &str, error_type: &str, message: &str) -> std::io::Result<()> {
    let body = format!("{{\"Message\":\"{message}\"}}");
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nx-amzn-ErrorType: {error_type}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(resp.as_bytes())
}

/// Reads one request: the head (up to the blank line) and its body (Content-Length or chunked).
fn read_request(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let Some(mut head) = read_head(r)? else { return Ok(None) };
    let header = |name: &str| head_field(&head, name);
    let mut body = Vec::new();
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        // Re-frame with a length for upstream.
        head = head
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("transfer-encoding"))
            .filter(|l| !l.is_empty())
            .map(|l| format!("{l}\r\n"))
            .collect::<String>()
            + &format!("Content-Length: {}\r\n\r\n", body.len());
    }
    Ok(Some((head, body)))
}

/// Sends the request to moto with `Connection: close` and returns its whole response, with
/// `Connection: close` in its head so the client opens a new connection for the next request.
fn forward(upstream: u16, head: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut new_head: String = head
        .lines()
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    new_head.push_str("Connection: close\r\n\r\n");
    up.write_all(new_head.as_bytes())?;
    up.write_all(body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(resp) };
    let head = String::from_utf8_lossy(&resp[..end]).into_owned();
    let mut out: String = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    if !head.to_ascii_lowercase().contains("\r\ncontent-length:") {
        out.push_str(&format!("Content-Length: {}\r\n", resp.len() - end - 4));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut v = out.into_bytes();
    v.extend_from_slice(&resp[end + 4..]);
    Ok(v)
}
