//! planet-node's own HTTPS client of the API server, for the questions its loops ask over and
//! over: is the API server ready, is this Node Ready, the rollout's record, locks and machines,
//! the apps' workloads — and the apps' health a master publishes every minute. Each kubectl run
//! costs seconds of CPU on an emulated machine (a 50 MB Go program starting, finding the API's
//! resources), and with every loop of three machines asking every few seconds, kubectl and the
//! API server answering it kept a master's two CPUs busy and starved the nodes that shared its
//! host; this is one TLS handshake in the asking process. Rarer writes (a lock, a cordon, an
//! Event, an app's manifests) stay with kubectl. A master asks as its admin, on loopback; a node
//! as its kubelet (the client certificate the kubelet got at its join and rotates), at its
//! master.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};

use crate::cluster::{self, pki};
use crate::env::NodeEnv;
use crate::kubectl::first_words;

/// The largest answer read: a readyz listing, an object, the list of a cluster's Nodes.
const MAX_ANSWER: u64 = 16 << 20;
/// How long a connection may take, and a request after it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`wait_until_ready`] asks.
const WAIT_STEP: Duration = Duration::from_secs(5);

/// A client of one API server with one identity, trusting only the cluster's CA.
pub struct ApiClient {
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
}

impl ApiClient {
    /// The client from PEM texts: the CA, the client certificate and its key (PKCS#8, as the
    /// PKI writes them). The server is reached at `addr` and must hold a certificate for its IP.
    pub fn from_pem(ca: &str, cert: &str, key: &str, addr: SocketAddr) -> Result<ApiClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots.add(c.map_err(|e| format!("the CA certificate: {e}"))?).map_err(|e| format!("the CA: {e}"))?;
        }
        if roots.is_empty() {
            return Err("no CA certificate".into());
        }
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the client certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("the client key: {e}"))?;
        // The provider is named: the workspace also builds rustls with another one, and with
        // two compiled in rustls will not pick.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("the client certificate and key: {e}"))?;
        Ok(ApiClient { config: Arc::new(config), addr })
    }

    /// This machine's client: a master's admin identity (its PKI) to its own API server on
    /// loopback; a node's kubelet identity to its master (missing until the kubelet has joined).
    pub fn for_machine(env: &NodeEnv) -> Result<ApiClient, String> {
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
        let ca = read(&pki("ca.crt"))?;
        if env.role.is_master() {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, cluster::API_PORT));
            ApiClient::from_pem(&ca, &read(&pki("admin.crt"))?, &read(&pki("admin.key"))?, addr)
        } else {
            let both = read(cluster::KUBELET_CLIENT_PEM)?;
            ApiClient::from_pem(&ca, &both, &both, SocketAddr::from((env.master_ip, cluster::API_PORT)))
        }
    }

    /// `GET path`: the status code and the body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        self.request("GET", path, None)
    }

    /// One request, with `body` (its content type and text) if any: the status code and the
    /// answer's body.
    pub fn request(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> Result<(u16, String), String> {
        let peer = format!("https://{}{path}", self.addr);
        let fail = |e: std::io::Error| match e.kind() {
            // A read timeout shows as EAGAIN, which says nothing to a reader.
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("{peer}: no answer within {}s", REQUEST_TIMEOUT.as_secs())
            }
            // read_answer's own faults already name the peer; TLS faults do not.
            _ if e.to_string().starts_with(&peer) => e.to_string(),
            _ => format!("{peer}: {e}"),
        };
        let sock = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT).map_err(fail)?;
        sock.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(fail)?;
        sock.set_write_timeout(Some(REQUEST_TIMEOUT)).map_err(fail)?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let conn = rustls::ClientConnection::new(self.config.clone(), name).map_err(|e| format!("{peer}: {e}"))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n", self.addr);
        if let Some((kind, text)) = body {
            request.push_str(&format!("Content-Type: {kind}\r\nContent-Length: {}\r\n\r\n{text}", text.len()));
        } else {
            request.push_str("\r\n");
        }
        tls.write_all(request.as_bytes()).map_err(fail)?;
        tls.flush().map_err(fail)?;
        crate::http_head::read_answer(&mut BufReader::new(tls), &peer, MAX_ANSWER).map_err(fail)
    }

    /// `GET path` of an object or a list, as JSON; `None` when there is no such object (404).
    pub fn get_json(&self, path: &str) -> Result<Option<Value>, String> {
        let (status, body) = self.get(path)?;
        match status {
            200 => serde_json::from_str(&body).map(Some).map_err(|e| format!("{path}: not JSON: {e}")),
            404 => Ok(None),
            _ => Err(api_error(path, status, &body)),
        }
    }

    /// `GET path` of an object that must exist: its absence (404) is an error too.
    pub fn get_object(&self, path: &str) -> Result<Value, String> {
        self.get_json(path)?.ok_or_else(|| "not found".to_string())
    }

    /// The string data of the ConfigMap `ns/name`; `None` when it does not exist.
    pub fn configmap_data(&self, ns: &str, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        let Some(v) = self.get_json(&format!("/api/v1/namespaces/{ns}/configmaps/{name}"))? else {
            return Ok(None);
        };
        Ok(Some(
            v["data"]
                .as_object()
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
                .unwrap_or_default(),
        ))
    }

    /// Merges `data` into the ConfigMap `ns/name`, which is made (empty but for `data`) when it
    /// does not exist yet.
    pub fn merge_configmap(&self, ns: &str, name: &str, data: &Value) -> Result<(), String> {
        let path = format!("/api/v1/namespaces/{ns}/configmaps/{name}");
        let patch = json!({ "data": data }).to_string();
        let (status, body) = self.request("PATCH", &path, Some(("application/merge-patch+json", &patch)))?;
        match status {
            200 => Ok(()),
            404 => {
                let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": name, "namespace": ns}, "data": data})
                .to_string();
                let list = format!("/api/v1/namespaces/{ns}/configmaps");
                let (status, body) = self.request("POST", &list, Some(("application/json", &obj)))?;
                match status {
                    201 | 200 => Ok(()),
                    _ => Err(api_error(&list, status, &body)),
                }
            }
            _ => Err(api_error(&path, status, &body)),
        }
    }

    /// `/readyz`: `Ok("ok")`, or what is not ready yet.
    pub fn readyz(&self) -> Result<String, String> {
        let (status, body) = self.get("/readyz")?;
        readyz_verdict(status, &body)
    }

    /// Whether the Node `name` has the condition Ready=True: `Ok("True")` or `Err("Ready=…")`.
    pub fn node_ready(&self, name: &str) -> Result<String, String> {
        let (status, body) = self.get(&format!("/api/v1/nodes/{name}"))?;
        if status != 200 {
            return Err(first_words(&format!("Node {name}: {status} {}", body.trim())));
        }
        node_ready_verdict(&body)
    }
}

/// An API server's refusal as one line: the `message` of its Status object when it sent one.
pub fn api_error(path: &str, status: u16, body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    first_words(&format!("{path}: {status} {message}"))
}

/// What `/readyz` answered, as a verdict: 200 "ok" is ready; otherwise the checks it marks
/// failed (`[-]NAME failed: …`), the only part of its long listing worth a console line.
pub fn readyz_verdict(status: u16, body: &str) -> Result<String, String> {
    let body = body.trim();
    if status == 200 && body == "ok" {
        return Ok("ok".into());
    }
    let failed: Vec<&str> =
        body.lines().filter_map(|l| l.strip_prefix("[-]")).map(|l| l.split_whitespace().next().unwrap_or(l)).collect();
    if failed.is_empty() {
        return Err(first_words(&format!("{status} {body}")));
    }
    Err(first_words(&format!("{status}, not ready: {}", failed.join(", "))))
}

/// The Ready condition of a Node object (JSON).
pub fn node_ready_verdict(node_json: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(node_json).map_err(|e| format!("a Node that is not JSON: {e}"))?;
    let ready = v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("");
    if ready == "True" {
        Ok(ready.to_string())
    } else {
        Err(format!("Ready={ready}"))
    }
}

/// Returns once the API server answers this machine's `/readyz` with "ok" (a node: once its
/// kubelet has joined, too), asking every few seconds, so a service's first kubectl finds an
/// API server to talk to; says once what it waits for.
pub fn wait_until_ready(env: &NodeEnv, who: &str) {
    let mut said = false;
    loop {
        match ApiClient::for_machine(env).and_then(|c| c.readyz()) {
            Ok(_) => {
                if said {
                    println!("planet-node: {who}: the API server is ready");
                }
                return;
            }
            Err(e) if !said => {
                println!("planet-node: {who}: waiting for the API server ({e})");
                said = true;
            }
            Err(_) => {}
        }
        std::thread::sleep(WAIT_STEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pki::{LeafSpec, Pki, Usage};
    use std::io::{BufRead, Read};
    use std::net::TcpListener;

    /// A PKI in `dir` with an API server certificate for 127.0.0.1 and the admin's.
    fn pki_in(dir: &std::path::Path) -> Pki {
        let now = time::OffsetDateTime::now_utc();
        let (pki, _) = Pki::open_or_create(dir, now).unwrap();
        let server = LeafSpec {
            name: "apiserver".into(),
            common_name: "kube-apiserver".into(),
            organizations: vec![],
            dns_names: vec![],
            ips: vec![Ipv4Addr::LOCALHOST.into()],
            usage: Usage::Server,
            owner: None,
        };
        pki.ensure_leaf(&server, now).unwrap();
        pki.ensure_leaf(&LeafSpec::client("admin", "kubernetes-admin", &["system:masters"]), now).unwrap();
        pki
    }

    /// An HTTPS server on 127.0.0.1 that, like the API server, wants a client certificate from
    /// the cluster's CA; answers `connections` requests from `answers` by `METHOD PATH` or by
    /// path, then stops.
    fn api_server(pki: &Pki, connections: usize, answers: Vec<(&'static str, u16, &'static str)>) -> SocketAddr {
        api_server_seeing(pki, connections, answers).0
    }

    /// [`api_server`], and what it was sent: `METHOD PATH`, the content type and the body.
    fn api_server_seeing(
        pki: &Pki,
        connections: usize,
        answers: Vec<(&'static str, u16, &'static str)>,
    ) -> (SocketAddr, std::sync::mpsc::Receiver<(String, String, String)>) {
        let (seen, seeing) = std::sync::mpsc::channel();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
        let chain = vec![CertificateDer::from_pem_slice(pki.read("apiserver.crt").unwrap().as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(pki.read("apiserver.key").unwrap().as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for sock in listener.incoming().take(connections) {
                let sock = sock.unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut r = BufReader::new(rustls::StreamOwned::new(conn, sock));
                let mut start = String::new();
                if r.read_line(&mut start).is_err() {
                    continue; // the handshake failed: the client did not trust us
                }
                let (mut line, mut length, mut kind) = (String::new(), 0, String::new());
                while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if let Some((k, v)) = line.split_once(':') {
                        match k.to_ascii_lowercase().as_str() {
                            "content-length" => length = v.trim().parse().unwrap(),
                            "content-type" => kind = v.trim().to_string(),
                            _ => {}
                        }
                    }
                    line.clear();
                }
                let mut sent = vec![0; length];
                r.read_exact(&mut sent).unwrap();
                let mut words = start.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let request = format!("{method} {path}");
                let _ = seen.send((request.clone(), kind, String::from_utf8(sent).unwrap()));
                let (status, body) = answers
                    .iter()
                    .find(|(p, _, _)| *p == path || *p == request)
                    .map(|(_, s, b)| (*s, *b))
                    .unwrap_or((404, "{}"));
                let tls = r.get_mut();
                let head = format!("HTTP/1.0 {status} X\r\nContent-Length: {}\r\n\r\n", body.len());
                tls.write_all(head.as_bytes()).unwrap();
                tls.write_all(body.as_bytes()).unwrap();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        (addr, seeing)
    }

    fn admin_client(pki: &Pki, addr: SocketAddr) -> ApiClient {
        let read = |f: &str| pki.read(f).unwrap();
        ApiClient::from_pem(&read("ca.crt"), &read("admin.crt"), &read("admin.key"), addr).unwrap()
    }

    #[test]
    fn objects_are_read_as_json_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki_in(dir.path());
        let forbidden = r#"{"kind":"Status","status":"Failure","message":"configmaps is forbidden: User \"x\" cannot list","code":403}"#;
        let answers = vec![
            ("/api/v1/namespaces/a/configmaps/b", 200, r#"{"data":{"k":"v"}}"#),
            ("/api/v1/namespaces/a/configmaps", 403, forbidden),
            ("/api/v1/nodes", 200, "<html>"),
        ];
        let addr = api_server(&pki, 7, answers);
        let api = admin_client(&pki, addr);
        let v = api.get_json("/api/v1/namespaces/a/configmaps/b").unwrap().unwrap();
        assert_eq!(v["data"]["k"], "v");
        assert_eq!(api.get_json("/api/v1/namespaces/a/configmaps/c"), Ok(None));
        assert_eq!(api.get_object("/api/v1/namespaces/a/configmaps/c"), Err("not found".into()));
        let data = api.configmap_data("a", "b").unwrap().unwrap();
        assert_eq!(data.into_iter().collect::<Vec<_>>(), [("k".to_string(), "v".to_string())]);
        assert_eq!(api.configmap_data("a", "c"), Ok(None));
        let e = api.get_json("/api/v1/namespaces/a/configmaps").unwrap_err();
        assert_eq!(e, "/api/v1/namespaces/a/configmaps: 403 configmaps is forbidden: User \"x\" cannot list");
        assert!(api.get_json("/api/v1/nodes").unwrap_err().contains("not JSON"), "HTML is no answer");
    }

    #[test]
    fn a_configmap_is_patched_or_made_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki_in(dir.path());
        let answers = vec![
            ("PATCH /api/v1/namespaces/a/configmaps/there", 200, "{}"),
            ("POST /api/v1/namespaces/a/configmaps", 201, "{}"),
            ("PATCH /api/v1/namespaces/b/configmaps/x", 409, r#"{"message":"conflict"}"#),
        ];
        let (addr, seen) = api_server_seeing(&pki, 4, answers);
        let api = admin_client(&pki, addr);
        let data = json!({"wordpress": "healthy 1.0.1 1700000000 2 checks pass"});
        api.merge_configmap("a", "there", &data).unwrap();
        let (request, kind, body) = seen.recv().unwrap();
        assert_eq!(
            (request.as_str(), kind.as_str()),
            ("PATCH /api/v1/namespaces/a/configmaps/there", "application/merge-patch+json")
        );
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({ "data": data }));
        // Missing (the unknown path answers 404): made with the data, in its namespace.
        api.merge_configmap("a", "new", &data).unwrap();
        assert_eq!(seen.recv().unwrap().0, "PATCH /api/v1/namespaces/a/configmaps/new");
        let (request, kind, body) = seen.recv().unwrap();
        assert_eq!((request.as_str(), kind.as_str()), ("POST /api/v1/namespaces/a/configmaps", "application/json"));
        let made: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (&made["kind"], &made["metadata"]["name"], &made["metadata"]["namespace"]),
            (&json!("ConfigMap"), &json!("new"), &json!("a"))
        );
        assert_eq!(made["data"], data);
        let e = api.merge_configmap("b", "x", &data).unwrap_err();
        assert_eq!(e, "/api/v1/namespaces/b/configmaps/x: 409 conflict");
    }

    #[test]
    fn a_master_asks_its_api_server_over_tls_with_the_admin_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki_in(dir.path());
        let readyz = "[+]ping ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\n";
        let node = r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#;
        let addr = api_server(&pki, 4, vec![("/readyz", 500, readyz), ("/api/v1/nodes/kube-1", 200, node)]);
        let read = |f: &str| pki.read(f).unwrap();
        let client = ApiClient::from_pem(&read("ca.crt"), &read("admin.crt"), &read("admin.key"), addr).unwrap();
        assert_eq!(client.readyz(), Err("500, not ready: poststarthook/rbac/bootstrap-roles".into()));
        assert_eq!(client.node_ready("kube-1"), Ok("True".into()));
        let e = client.node_ready("kube-2").unwrap_err();
        assert!(e.starts_with("Node kube-2: 404"), "{e}");
        // A node's kubelet keeps its certificate and key in one file.
        let both = read("admin.crt") + &read("admin.key");
        let kubelet = ApiClient::from_pem(&read("ca.crt"), &both, &both, addr).unwrap();
        assert_eq!(kubelet.node_ready("kube-1"), Ok("True".into()));
    }

    #[test]
    fn a_server_of_another_cluster_is_not_trusted() {
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ours, theirs) = (pki_in(ours.path()), pki_in(theirs.path()));
        let addr = api_server(&theirs, 1, vec![("/readyz", 200, "ok")]);
        let read = |f: &str| ours.read(f).unwrap();
        let client = ApiClient::from_pem(&read("ca.crt"), &read("admin.crt"), &read("admin.key"), addr).unwrap();
        let e = client.readyz().unwrap_err();
        assert!(e.contains("certificate") && e.starts_with(&format!("https://{addr}/readyz: ")), "{e}");
        assert!(ApiClient::from_pem("", &read("admin.crt"), &read("admin.key"), addr).is_err());
        let e = ApiClient::from_pem(&read("ca.crt"), &read("admin.crt"), "not a key", addr).err().unwrap();
        assert!(e.contains("the client key"), "{e}");
    }

    #[test]
    fn readyz_names_only_the_failed_checks() {
        assert_eq!(readyz_verdict(200, "ok\n"), Ok("ok".into()));
        let body = "[+]ping ok\n[+]etcd ok\n[-]poststarthook/rbac/bootstrap-roles failed: reason withheld\n\
                    [+]informer-sync ok\n[-]shutdown failed: reason withheld\nreadyz check failed\n";
        assert_eq!(
            readyz_verdict(500, body),
            Err("500, not ready: poststarthook/rbac/bootstrap-roles, shutdown".into())
        );
        assert_eq!(readyz_verdict(401, "Unauthorized"), Err("401 Unauthorized".into()));
    }

    #[test]
    fn a_node_is_ready_only_with_ready_true() {
        let node = |s: &str| {
            format!(
                r#"{{"status":{{"conditions":[{{"type":"MemoryPressure","status":"False"}},{{"type":"Ready","status":"{s}"}}]}}}}"#
            )
        };
        assert_eq!(node_ready_verdict(&node("True")), Ok("True".into()));
        assert_eq!(node_ready_verdict(&node("False")), Err("Ready=False".into()));
        assert_eq!(node_ready_verdict(r#"{"status":{}}"#), Err("Ready=".into()));
        assert!(node_ready_verdict("<html>").unwrap_err().contains("not JSON"));
    }
}
