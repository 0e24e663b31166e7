//! Joining a node to its master with the cluster's join token, without trust on first use.
//!
//! The token (`planet: join_token:` in every machine's user-data) has the Kubernetes
//! bootstrap-token form `ID.SECRET`. It does two things:
//!
//! * **The node checks the master.** A master serves its cluster CA on [`JOIN_PORT`] in a
//!   small document MACed (HMAC-SHA256) with the token's secret. A node fetches it over plain
//!   TCP, verifies the MAC and only then trusts that CA for everything else: a machine that
//!   does not know the secret cannot make a node trust it, and the secret never crosses the
//!   wire.
//! * **The master admits the node.** The master publishes the token as a bootstrap-token Secret;
//!   the node's kubelet presents it (over TLS checked against that CA) to ask for its own
//!   client certificate, which the controller manager signs (Kubernetes TLS bootstrapping, as
//!   kubeadm does it).
//!
//! A wrong token stops the node before anything starts: no kubelet, no half-joined Node.

use std::fmt;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The TCP port a master serves its MACed CA on (beside the API server's 6443).
pub const JOIN_PORT: u16 = 6441;
/// The document's first line: its format and version.
const MAGIC: &str = "planet-join v1";
/// The HTTP path of the document.
const PATH: &str = "/planet-join/v1";
/// The biggest answer a node reads (a CA certificate is a few KiB).
const MAX_DOCUMENT: u64 = 64 * 1024;
/// Connections a master serves at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The bootstrap token's extra group: what the RBAC bindings name.
pub const BOOTSTRAP_GROUP: &str = "system:bootstrappers:planet";

/// The cluster's join secret, `ID.SECRET` (6 and 16 of `[a-z0-9]`). `Debug` and `Display`
/// show the ID only: the secret must never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: String,
}

impl JoinToken {
    /// The public half: it names the token in the API (`bootstrap-token-ID`).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The secret half. Callers write it only to mode-0600 files or a child's stdin.
    pub fn secret(&self) -> &str {
        &self.secret
    }
    /// The whole token, as a bearer credential.
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}.***)", self.id)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.***", self.id)
    }
}

impl FromStr for JoinToken {
    type Err = anyhow::Error;
    /// Errors say what is wrong with the shape, never the value.
    fn from_str(s: &str) -> Result<Self> {
        let ok = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        match s.split_once('.') {
            Some((id, secret)) if ok(id, 6) && ok(secret, 16) => {
                Ok(JoinToken { id: id.to_string(), secret: secret.to_string() })
            }
            _ => bail!(
                "the join token is not of the form ID.SECRET (6 and 16 characters of a-z and 0-9, {} \
                 characters given); make one with `planet-image join-token`",
                s.chars().count()
            ),
        }
    }
}

fn mac_key(token: &JoinToken) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.secret.as_bytes())
}

/// What the MAC covers: everything but the MAC line itself.
fn signed_part(token_id: &str, ca_pem: &str) -> String {
    format!("{MAGIC}\ntoken-id: {token_id}\n{ca_pem}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// The document a master serves: its CA, MACed with the token's secret.
pub fn document(ca_pem: &str, token: &JoinToken) -> String {
    let tag = ring::hmac::sign(&mac_key(token), signed_part(&token.id, ca_pem).as_bytes());
    format!("{MAGIC}\ntoken-id: {}\nmac: {}\n\n{ca_pem}", token.id, hex(tag.as_ref()))
}

/// Checks a master's document against our token and returns the CA it vouches for. The errors
/// are what a node prints on its console: they name the fix, never the secret.
pub fn verify(doc: &str, token: &JoinToken, master: &str) -> Result<String> {
    let (head, ca_pem) = doc.split_once("\n\n").ok_or_else(|| anyhow!("{master} answered with no join document"))?;
    let mut lines = head.lines();
    if lines.next() != Some(MAGIC) {
        bail!("{master} did not answer with a Planet join document ({MAGIC}); is it a Planet master?");
    }
    let mut id = None;
    let mut mac = None;
    for line in lines {
        match line.split_once(": ") {
            Some(("token-id", v)) => id = Some(v),
            Some(("mac", v)) => mac = Some(v),
            _ => bail!("{master} sent a join document with an unknown line"),
        }
    }
    let (Some(id), Some(mac)) = (id, mac) else { bail!("{master} sent a join document without token-id or mac") };
    let tag = unhex(mac).ok_or_else(|| anyhow!("{master} sent a join document whose mac is not hex"))?;
    let fix = "put the master's token in this node's user-data (planet: join_token:), the same on every machine";
    if id != token.id {
        bail!("the master at {master} has a different join token (id {id:?}, this node's is {:?}): {fix}", token.id);
    }
    if ring::hmac::verify(&mac_key(token), signed_part(id, ca_pem).as_bytes(), &tag).is_err() {
        bail!(
            "the master at {master} did not prove it knows this node's join token (the secret differs, \
             or this is not the cluster's master): {fix}"
        );
    }
    if !ca_pem.starts_with("-----BEGIN CERTIFICATE-----") {
        bail!("{master}'s join document holds no certificate");
    }
    Ok(ca_pem.to_string())
}

/// One HTTP exchange with a master's join port: the document, or why not.
pub fn fetch(master: Ipv4Addr) -> Result<String> {
    let addr = SocketAddr::from((master, JOIN_PORT));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {PATH} HTTP/1.0\r\nHost: {addr}\r\n\r\n").with_context(|| format!("asking {addr}"))?;
    let mut buf = Vec::new();
    s.take(MAX_DOCUMENT + 1024).read_to_end(&mut buf).with_context(|| format!("reading {addr}'s answer"))?;
    let text = String::from_utf8(buf).map_err(|_| anyhow!("{addr} answered with bytes that are not text"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("{addr} answered with no HTTP header"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("{addr} answered {status}");
    }
    Ok(body.to_string())
}

/// How long a node waits for its master's join port: masters boot at the same time as their
/// nodes, and an emulated one takes minutes to get its API server up.
pub const WAIT_FOR_MASTER: Duration = Duration::from_secs(45 * 60);

/// Fetches and verifies the master's CA, retrying while the master is not up yet. A document
/// that does not verify ends it at once: retrying cannot fix a wrong token.
pub fn discover(master: Ipv4Addr, token: &JoinToken, wait: Duration) -> Result<String> {
    let started = Instant::now();
    let mut last_note = started;
    loop {
        match fetch(master) {
            Ok(doc) => return verify(&doc, token, &master.to_string()).context("join"),
            Err(e) if started.elapsed() < wait => {
                if last_note.elapsed() >= Duration::from_secs(60) || last_note == started {
                    println!("planet-node: join waiting for the master at {master}:{JOIN_PORT} ({e:#})");
                    last_note = Instant::now();
                }
                std::thread::sleep(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "join: the master at {master}:{JOIN_PORT} did not answer for {} minutes; check \
                         planet: master_ip: and that the master runs",
                        wait.as_secs() / 60
                    )
                })
            }
        }
    }
}

/// Serves `doc` to every `GET /planet-join/v1` on `listener`, each connection on its own
/// thread (at most [`MAX_CONNECTIONS`]), with a deadline for the request.
pub fn serve(listener: TcpListener, doc: Arc<String>) {
    serve_bounded(listener, MAX_CONNECTIONS, "join-request", move |conn| {
        let _ = answer(conn, &doc);
    });
}

/// Answers each connection of `listener` with `handle` on a thread of its own, at most `max` at
/// once; the others are closed at once (a flood of connections cannot exhaust the threads of
/// the machine). Shared by the join document's and the rollout bundle's servers.
pub fn serve_bounded(
    listener: TcpListener,
    max: usize,
    name: &str,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let handle = Arc::new(handle);
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= max {
            active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let (mine, handle) = (active.clone(), handle.clone());
        let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
            handle(conn);
            mine.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn answer(mut conn: TcpStream, doc: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(REQUEST_DEADLINE))?;
    conn.set_write_timeout(Some(REQUEST_DEADLINE))?;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut req = Vec::new();
    let mut buf = [0u8; 512];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 4096 && Instant::now() < deadline {
        match conn.read(&mut buf)? {
            0 => break,
            n => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&req);
    let wanted = line.lines().next().and_then(|l| l.split_whitespace().nth(1));
    let (status, body) = if line.starts_with("GET ") && wanted == Some(PATH) {
        ("200 OK", doc)
    } else {
        ("404 Not Found", "not found\n")
    };
    write!(
        conn,
        "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The API objects a master publishes for its token (applied with `kubectl apply -f -`, the
/// text on stdin): the bootstrap-token Secret and the RBAC bindings that let a bootstrapping
/// kubelet ask for its certificate, have it approved at once, renew it later, and let the
/// node's kube-proxy read Services and EndpointSlices with the node's credentials.
pub fn bootstrap_objects(token: &JoinToken) -> String {
    let binding = |name: &str, role: &str, group: &str| {
        format!(
            "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {name}\n\
             roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {role}\n\
             subjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: {group}\n"
        )
    };
    let mut out = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-{id}\n  namespace: kube-system\n\
         type: bootstrap.kubernetes.io/token\nstringData:\n  description: \"Planet join token\"\n  token-id: {id}\n\
         \x20 token-secret: {secret}\n  usage-bootstrap-authentication: \"true\"\n  auth-extra-groups: {BOOTSTRAP_GROUP}\n",
        id = token.id,
        secret = token.secret,
    );
    out += &binding("planet:node-bootstrapper", "system:node-bootstrapper", BOOTSTRAP_GROUP);
    out += &binding(
        "planet:approve-node-client-csr",
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        BOOTSTRAP_GROUP,
    );
    out += &binding(
        "planet:approve-node-client-renewal",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        "system:nodes",
    );
    out += &binding("planet:node-proxier", "system:node-proxier", "system:nodes");
    out
}

/// `planet-node join-server`, a master's unit: once the API server answers, publishes the
/// token's Secret and bindings, then serves the MACed CA on [`JOIN_PORT`] and, every few
/// seconds, approves the kubelets' serving certificates ([`crate::csr`]). A master without a
/// token serves nothing (nodes cannot join it) and says so.
pub fn run_server() -> Result<()> {
    let env = crate::env::load()?;
    let Some(token) = env.join_token.clone() else {
        println!("planet-node: join-server: no join token in the user-data (planet: join_token:); nodes cannot join this master");
        return Ok(());
    };
    let admin = crate::cluster::kubeconfig("admin");
    loop {
        crate::api::wait_until_ready(&env, "join-server");
        match crate::kubectl::run_with_input(&admin, &["apply", "-f", "-"], Some(&bootstrap_objects(&token))) {
            Ok(_) => break,
            Err(e) => println!("planet-node: join-server: publishing the join token: {e}"),
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let ca = std::fs::read_to_string(crate::cluster::pki("ca.crt")).context("reading the cluster CA")?;
    let listener =
        TcpListener::bind(("0.0.0.0", JOIN_PORT)).with_context(|| format!("listening on port {JOIN_PORT}"))?;
    let doc = Arc::new(document(&ca, &token));
    std::thread::Builder::new().name("join-serve".into()).spawn(move || serve(listener, doc))?;
    println!("planet-node: join-server ready port={JOIN_PORT} token_id={}", token.id());
    let mut refused = std::collections::BTreeSet::new();
    let me = env.clone();
    let before_watch = move || crate::api::wait_until_ready(&me, "join-server");
    crate::kubectl::on_change(&admin, &["get", "csr", "--watch"], Duration::from_secs(60), before_watch, || {
        if let Err(e) = crate::csr::approve_pending(&admin, &mut refused) {
            println!("planet-node: join-server: reading certificate requests: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn token(s: &str) -> JoinToken {
        s.parse().unwrap()
    }

    #[test]
    fn tokens_parse_and_never_show_their_secret() {
        let t = token("abcdef.0123456789abcdef");
        assert_eq!((t.id(), t.secret()), ("abcdef", "0123456789abcdef"));
        assert_eq!(format!("{t} {t:?}"), "abcdef.*** JoinToken(abcdef.***)");
        for bad in [
            "",
            "abcdef",
            "abcdef.0123456789abcde",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcdeF",
            "abcdef:0123456789abcdef",
        ] {
            let e = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.contains("ID.SECRET") && e.contains("planet-image join-token"), "{e}");
            assert!(bad.len() < 6 || !e.contains(&bad[bad.len() - 6..]), "{e} shows the value");
        }
    }

    #[test]
    fn the_document_verifies_with_the_same_token_only() {
        let t = token("abcdef.0123456789abcdef");
        let doc = document(CA, &t);
        assert_eq!(verify(&doc, &t, "m").unwrap(), CA);
        assert!(!doc.contains(t.secret()));

        let other_secret = token("abcdef.0123456789abcdee");
        let e = verify(&doc, &other_secret, "10.0.0.1").unwrap_err().to_string();
        assert!(e.contains("did not prove it knows this node's join token") && e.contains("join_token"), "{e}");
        assert!(!e.contains("0123456789abcde"), "{e}");

        let other_id = token("zzzzzz.0123456789abcdef");
        let e = verify(&doc, &other_id, "10.0.0.1").unwrap_err().to_string();
        assert!(e.contains("different join token"), "{e}");

        // A CA swapped by someone in the middle breaks the MAC.
        let forged = doc.replace("MIIB", "MIIC");
        assert!(verify(&forged, &t, "m").unwrap_err().to_string().contains("did not prove"));
        for junk in ["", "HTTP/1.1 200 OK\n\nhello", "planet-join v1\nmac: zz\ntoken-id: abcdef\n\nx"] {
            assert!(verify(junk, &t, "m").is_err(), "{junk:?}");
        }
    }

    #[test]
    fn a_master_serves_the_document_and_a_node_fetches_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = token("abcdef.0123456789abcdef");
        let doc = Arc::new(document(CA, &t));
        std::thread::spawn(move || serve(listener, doc));
        // fetch() dials JOIN_PORT; talk to the test port by hand the same way.
        let get = |path: &str| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get(PATH);
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        let body = ok.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(verify(body, &t, "m").unwrap(), CA);
        assert!(get("/").starts_with("HTTP/1.0 404"));
        // A client that never sends its request is cut off and does not block the others.
        let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        assert!(get(PATH).starts_with("HTTP/1.0 200"));
        drop(silent);
    }

    #[test]
    fn bootstrap_objects_name_the_token_and_the_groups() {
        let t = token("abcdef.0123456789abcdef");
        let y = bootstrap_objects(&t);
        assert!(y.contains("name: bootstrap-token-abcdef\n  namespace: kube-system\n"), "{y}");
        assert!(y.contains("  token-secret: 0123456789abcdef\n"), "{y}");
        assert!(y.contains("auth-extra-groups: system:bootstrappers:planet\n"), "{y}");
        assert_eq!(y.matches("kind: ClusterRoleBinding").count(), 4, "{y}");
        assert!(y.contains("name: system:certificates.k8s.io:certificatesigningrequests:nodeclient\n"), "{y}");
    }
}
