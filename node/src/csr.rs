//! Approving the kubelets' serving certificates. A node's kubelet asks the cluster CA for the
//! certificate it serves `kubectl logs`/`exec` with (`serverTLSBootstrap`); Kubernetes leaves
//! such requests for someone to approve, because only that someone can tell whether the names
//! in it belong to the node. A master's `planet-node join-server` does it: a request is approved
//! when it comes from the node it names, and asks for no name or address but that node's name
//! and the addresses its Node object reports.

use std::collections::BTreeSet;
use std::net::IpAddr;

use base64::Engine;
use serde_json::Value;

/// Why a request is not approved (it stays pending; an operator may still approve it).
pub type Refusal = String;

/// Decides on one `certificates.k8s.io/v1` CertificateSigningRequest; `addresses(node)` gives
/// the addresses the Node object of that name reports. `Ok(None)`: not ours to decide (another
/// signer, or already decided).
pub fn decide(csr: &Value, addresses: impl Fn(&str) -> Option<BTreeSet<IpAddr>>) -> Result<Option<String>, Refusal> {
    let name = csr["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let spec = &csr["spec"];
    if spec["signerName"] != "kubernetes.io/kubelet-serving" {
        return Ok(None);
    }
    if csr["status"]["conditions"].as_array().is_some_and(|c| !c.is_empty()) {
        return Ok(None);
    }
    let username = spec["username"].as_str().unwrap_or_default();
    let node =
        username.strip_prefix("system:node:").ok_or_else(|| format!("{name}: requested by {username}, not a node"))?;
    let groups: Vec<&str> = spec["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !groups.contains(&"system:nodes") {
        return Err(format!("{name}: {username} is not in system:nodes"));
    }
    let usages: BTreeSet<&str> = spec["usages"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let allowed = BTreeSet::from(["digital signature", "key encipherment", "server auth"]);
    if !usages.contains("server auth") || !usages.is_subset(&allowed) {
        return Err(format!("{name}: usages {usages:?} are not those of a serving certificate"));
    }
    let pem = spec["request"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| format!("{name}: the request is not base64 PEM"))?;
    let req = rcgen::CertificateSigningRequestParams::from_pem(&pem).map_err(|e| format!("{name}: {e}"))?;
    let cn = req.params.distinguished_name.get(&rcgen::DnType::CommonName);
    if !matches!(cn, Some(rcgen::DnValue::Utf8String(s)) if s == username)
        && !matches!(cn, Some(rcgen::DnValue::PrintableString(s)) if s.as_str() == username)
    {
        return Err(format!("{name}: the subject is not {username}"));
    }
    let known = addresses(node).ok_or_else(|| format!("{name}: no Node {node} yet"))?;
    for san in &req.params.subject_alt_names {
        match san {
            rcgen::SanType::DnsName(d) if d.as_str() == node => {}
            rcgen::SanType::IpAddress(ip) if known.contains(ip) => {}
            other => return Err(format!("{name}: {other:?} is not a name or address of Node {node}")),
        }
    }
    Ok(Some(name))
}

/// The addresses in a Node object's status.
pub fn node_addresses(node: &Value) -> BTreeSet<IpAddr> {
    node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| matches!(a["type"].as_str(), Some("InternalIP" | "ExternalIP")))
        .filter_map(|a| a["address"].as_str()?.parse().ok())
        .collect()
}

/// One pass over the cluster's requests, with the given kubeconfig: approves what [`decide`]
/// allows and prints one line for each approval or refusal it has not printed before.
pub fn approve_pending(kubeconfig: &str, refused: &mut BTreeSet<String>) -> Result<(), String> {
    let list: Value = serde_json::from_str(&crate::kubectl::run(kubeconfig, &["get", "csr", "-o", "json"])?)
        .map_err(|e| format!("reading the CSR list: {e}"))?;
    let nodes: Value = serde_json::from_str(&crate::kubectl::run(kubeconfig, &["get", "nodes", "-o", "json"])?)
        .map_err(|e| format!("reading the Node list: {e}"))?;
    let addresses =
        |name: &str| nodes["items"].as_array()?.iter().find(|n| n["metadata"]["name"] == name).map(node_addresses);
    for csr in list["items"].as_array().into_iter().flatten() {
        match decide(csr, addresses) {
            Ok(Some(name)) => match crate::kubectl::run(kubeconfig, &["certificate", "approve", &name]) {
                Ok(_) => println!("planet-node: approved kubelet serving certificate csr={name}"),
                Err(e) => println!("planet-node: approving {name} failed: {e}"),
            },
            Ok(None) => {}
            Err(why) => {
                if refused.insert(why.clone()) {
                    println!("planet-node: not approving a kubelet serving certificate: {why}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CSR as the kubelet makes it, for `names` and `ips`, signed by a fresh key.
    fn request(cn: &str, names: &[&str], ips: &[&str]) -> String {
        let mut p = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.subject_alt_names.extend(ips.iter().map(|i| rcgen::SanType::IpAddress(i.parse().unwrap())));
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        base64::engine::general_purpose::STANDARD.encode(pem)
    }

    fn csr(user: &str, request: String) -> Value {
        serde_json::json!({
            "metadata": {"name": "csr-1"},
            "spec": {"signerName": "kubernetes.io/kubelet-serving", "username": user,
                     "groups": ["system:nodes", "system:authenticated"],
                     "usages": ["digital signature", "key encipherment", "server auth"], "request": request},
            "status": {}
        })
    }

    fn node_1(name: &str) -> Option<BTreeSet<IpAddr>> {
        (name == "node-1").then(|| BTreeSet::from(["192.168.50.11".parse().unwrap()]))
    }

    #[test]
    fn a_node_gets_its_own_names_only() {
        let good = csr("system:node:node-1", request("system:node:node-1", &["node-1"], &["192.168.50.11"]));
        assert_eq!(decide(&good, node_1).unwrap().as_deref(), Some("csr-1"));

        let other_ip = csr("system:node:node-1", request("system:node:node-1", &["node-1"], &["192.168.50.12"]));
        assert!(decide(&other_ip, node_1).unwrap_err().contains("192.168.50.12"));
        let other_name = csr("system:node:node-1", request("system:node:node-1", &["master-1"], &[]));
        assert!(decide(&other_name, node_1).unwrap_err().contains("master-1"));
        let other_subject = csr("system:node:node-1", request("system:node:node-2", &["node-1"], &[]));
        assert!(decide(&other_subject, node_1).unwrap_err().contains("subject"));
        let not_a_node = csr("system:bootstrap:abcdef", request("system:node:node-1", &["node-1"], &[]));
        assert!(decide(&not_a_node, node_1).unwrap_err().contains("not a node"));
        let unknown = csr("system:node:node-9", request("system:node:node-9", &["node-9"], &[]));
        assert!(decide(&unknown, node_1).unwrap_err().contains("no Node node-9"));

        let mut client = good.clone();
        client["spec"]["usages"] = serde_json::json!(["digital signature", "client auth"]);
        assert!(decide(&client, node_1).is_err());
        let mut other_signer = good.clone();
        other_signer["spec"]["signerName"] = "kubernetes.io/kube-apiserver-client-kubelet".into();
        assert_eq!(decide(&other_signer, node_1).unwrap(), None);
        let mut decided = good;
        decided["status"]["conditions"] = serde_json::json!([{"type": "Approved"}]);
        assert_eq!(decide(&decided, node_1).unwrap(), None);
    }

    #[test]
    fn node_addresses_are_read_from_the_status() {
        let n = serde_json::json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.50.11"}, {"type": "Hostname", "address": "node-1"}]}});
        assert_eq!(node_addresses(&n), BTreeSet::from(["192.168.50.11".parse().unwrap()]));
    }
}
