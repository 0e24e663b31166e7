//! The text of the files the components read: kubeconfigs, the environment file the units
//! expand in their command lines, etcd's defaults, and the kubelet's and kube-proxy's
//! configuration. Pure functions of the machine's [`NodeEnv`] and the PKI, so they are tested
//! byte for byte.

use base64::Engine;

use crate::cluster::{self, kubeconfig, pki};
use crate::env::NodeEnv;

/// A kubeconfig with the client certificate and key embedded, so the file alone is the
/// credential (mode 0600).
pub fn kubeconfig_text(server: &str, user: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let credential = format!("client-certificate-data: {}\n    client-key-data: {}", b64(cert_pem), b64(key_pem));
    kubeconfig_for(server, user, ca_pem, &credential)
}

/// The kubeconfig a joining node's kubelet bootstraps with: the CA the master vouched for and
/// the join token as a bearer token (mode 0600: the file is the credential).
pub fn bootstrap_kubeconfig_text(server: &str, ca_pem: &str, bearer: &str) -> String {
    kubeconfig_for(server, "kubelet-bootstrap", ca_pem, &format!("token: {bearer}"))
}

/// One cluster (`planet`, trusted through `ca_pem`), one user with `credential` (its YAML
/// lines, indented as the user's fields), one context joining them.
fn kubeconfig_for(server: &str, user: &str, ca_pem: &str, credential: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: planet\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    {credential}\n\
         contexts:\n- name: {user}@planet\n  context:\n    cluster: planet\n    user: {user}\n\
         current-context: {user}@planet\n",
        b64(ca_pem)
    )
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The cloud provider flags of the kubelet and the controller manager (`--cloud-provider`
/// with Kubernetes' in-tree name, `--cloud-config` when the operator gave the provider's
/// file); empty without a provider. The credentials are not flags: they reach those two
/// components' environment from [`cluster::CLOUD_ENV`].
pub fn cloud_flags(env: &NodeEnv) -> String {
    match env.cloud_provider.as_str() {
        "" | "none" => String::new(),
        provider => {
            let mut f = format!("--cloud-provider={provider}");
            if env.cloud_config.is_some() {
                f.push_str(&format!(" --cloud-config={}", cluster::CLOUD_CONFIG));
            }
            f
        }
    }
}

/// The taints the kubelet registers its Node with: a master's keeps workloads off it.
pub fn register_taints(env: &NodeEnv) -> String {
    let mut t = Vec::new();
    if !env.role.takes_workloads() {
        t.push("node-role.kubernetes.io/master=:NoSchedule".to_string());
    }
    t.extend(env.taints.iter().cloned());
    t.join(",")
}

/// The API server URL this machine's components use: a master talks to itself over loopback,
/// a node to its master.
pub fn api_server_url(env: &NodeEnv) -> String {
    if env.role.is_master() {
        format!("https://127.0.0.1:{}", cluster::API_PORT)
    } else {
        format!("https://{}:{}", env.master_ip, cluster::API_PORT)
    }
}

/// `/etc/planet/kube.env`: the values the units put on their command lines.
pub fn unit_env(env: &NodeEnv) -> String {
    format!(
        "# Written by planet-node setup at every boot from /etc/container-environment.\n\
         PLANET_ROLE={}\nPLANET_NODE_NAME={}\nPLANET_ADVERTISE_IP={}\nPLANET_MASTER_IP={}\n\
         PLANET_API_SERVER={}\nPLANET_SERVICE_CIDR={}\nPLANET_CLUSTER_CIDR={}\nPLANET_PAUSE_IMAGE={}\n\
         PLANET_REGISTER_TAINTS={}\nPLANET_CLOUD_FLAGS={}\n",
        env.role.as_str(),
        env.node_name,
        env.public_ip,
        env.master_ip,
        api_server_url(env),
        cluster::SERVICE_CIDR,
        cluster::CLUSTER_CIDR,
        cluster::PAUSE_IMAGE,
        register_taints(env),
        cloud_flags(env),
    )
}

/// `/etc/default/etcd` for Debian's own etcd.service: a single member, TLS for clients and
/// peers, client certificates required, listening on loopback only.
pub fn etcd_defaults(env: &NodeEnv) -> String {
    let p = |n: &str| pki(&format!("etcd/{n}"));
    format!(
        "# Written by planet-node setup. Debian's etcd.service reads this file.\n\
         ETCD_NAME={name}\nETCD_DATA_DIR=/var/lib/etcd/default\n\
         ETCD_LISTEN_CLIENT_URLS=https://127.0.0.1:2379\nETCD_ADVERTISE_CLIENT_URLS=https://127.0.0.1:2379\n\
         ETCD_LISTEN_PEER_URLS=https://127.0.0.1:2380\nETCD_INITIAL_ADVERTISE_PEER_URLS=https://127.0.0.1:2380\n\
         ETCD_INITIAL_CLUSTER={name}=https://127.0.0.1:2380\nETCD_INITIAL_CLUSTER_STATE=new\n\
         ETCD_CERT_FILE={server_crt}\nETCD_KEY_FILE={server_key}\nETCD_TRUSTED_CA_FILE={ca}\nETCD_CLIENT_CERT_AUTH=true\n\
         ETCD_PEER_CERT_FILE={peer_crt}\nETCD_PEER_KEY_FILE={peer_key}\nETCD_PEER_TRUSTED_CA_FILE={ca}\n\
         ETCD_PEER_CLIENT_CERT_AUTH=true\n",
        name = env.node_name,
        server_crt = p("server.crt"),
        server_key = p("server.key"),
        peer_crt = p("peer.crt"),
        peer_key = p("peer.key"),
        ca = p("ca.crt"),
    )
}

/// The kubelet's configuration file: no anonymous requests, webhook authorization, the systemd
/// cgroup driver (as docker uses on cgroup v2), and the machine's own address as its pods' DNS
/// server (`planet-node dns` serves the cluster there). A master or dev machine serves with a
/// certificate made from the CA it holds; a node asks the cluster for one
/// (`serverTLSBootstrap`, approved by its master) and rotates its client certificate.
pub fn kubelet_config(env: &NodeEnv) -> String {
    let tls = if env.role.is_master() {
        format!("tlsCertFile: {}\ntlsPrivateKeyFile: {}\n", pki("kubelet-server.crt"), pki("kubelet-server.key"))
    } else {
        "serverTLSBootstrap: true\nrotateCertificates: true\n".to_string()
    };
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
         address: {ip}\nport: 10250\nreadOnlyPort: 0\n\
         healthzBindAddress: 127.0.0.1\nhealthzPort: 10248\n\
         authentication:\n  anonymous:\n    enabled: false\n  webhook:\n    enabled: true\n  x509:\n    clientCAFile: {ca}\n\
         authorization:\n  mode: Webhook\n\
         {tls}\
         cgroupDriver: systemd\nfailSwapOn: false\n\
         clusterDomain: {domain}\nclusterDNS:\n- {ip}\nresolvConf: /etc/resolv.conf\n\
         evictionHard:\n  memory.available: 64Mi\n  nodefs.available: 5%\n  imagefs.available: 5%\n\
         imageGCHighThresholdPercent: 95\nimageGCLowThresholdPercent: 90\n\
         serializeImagePulls: false\n",
        ip = env.public_ip,
        ca = pki("ca.crt"),
        domain = cluster::CLUSTER_DOMAIN,
    )
}

/// kube-proxy in iptables mode. `maxPerCore: 0` leaves the conntrack table size alone: /sys is
/// read-only in the container, and the host's default is what the kernel chose.
pub fn kube_proxy_config(env: &NodeEnv) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
         clientConnection:\n  kubeconfig: {kc}\n\
         mode: iptables\nclusterCIDR: {cidr}\nhostnameOverride: {name}\nbindAddress: {ip}\n\
         healthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: 127.0.0.1:10249\n\
         conntrack:\n  maxPerCore: 0\n",
        // A node has no kube-proxy certificate of its own (it holds no CA key): it uses the
        // kubelet's, which the master's `system:node-proxier` binding lets read Services.
        kc = kubeconfig(if env.role.is_master() { "kube-proxy" } else { "kubelet" }),
        cidr = cluster::CLUSTER_CIDR,
        name = env.node_name,
        ip = env.public_ip,
    )
}

/// The environment `planet-image enter` sessions get: kubectl works at once.
pub fn enter_env() -> String {
    format!("KUBECONFIG={}\n", kubeconfig("admin"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::parse;

    fn dev() -> NodeEnv {
        parse("PLANET_ROLE=dev\nPLANET_PUBLIC_IP=10.0.2.15\nPLANET_HOSTNAME=demo-1\n").unwrap()
    }

    #[test]
    fn masters_use_loopback_and_nodes_their_master() {
        assert_eq!(api_server_url(&dev()), "https://127.0.0.1:6443");
        let node = parse("PLANET_ROLE=node\nPLANET_PUBLIC_IP=10.0.0.3\nPLANET_MASTER_IP=10.0.0.2\n").unwrap();
        assert_eq!(api_server_url(&node), "https://10.0.0.2:6443");
        assert!(unit_env(&node).contains("PLANET_ADVERTISE_IP=10.0.0.3\n"));
    }

    #[test]
    fn the_cloud_provider_reaches_the_flags_and_its_credentials_do_not() {
        assert!(unit_env(&dev()).contains("\nPLANET_CLOUD_FLAGS=\n"));
        let aws = parse(
            "PLANET_ROLE=node\nPLANET_PUBLIC_IP=10.0.0.3\nPLANET_MASTER_IP=10.0.0.2\nPLANET_CLOUD_PROVIDER=aws\n\
             AWS_SECRET_ACCESS_KEY=s3cr3t\n",
        )
        .unwrap();
        assert_eq!(cloud_flags(&aws), "--cloud-provider=aws");
        let with_file = NodeEnv { cloud_config: Some("[Global]\n".into()), ..aws.clone() };
        assert_eq!(cloud_flags(&with_file), "--cloud-provider=aws --cloud-config=/etc/planet/cloud-provider.conf");
        let t = unit_env(&with_file);
        assert!(t.contains("\nPLANET_CLOUD_FLAGS=--cloud-provider=aws --cloud-config="), "{t}");
        assert!(!t.contains("s3cr3t"), "{t}");
    }

    #[test]
    fn bootstrap_kubeconfig_carries_the_token_as_its_credential() {
        let t = bootstrap_kubeconfig_text("https://10.0.0.2:6443", "CA", "abcdef.0123456789abcdef");
        assert!(t.contains("users:\n- name: kubelet-bootstrap\n  user:\n    token: abcdef.0123456789abcdef\n"), "{t}");
        assert!(t.contains("current-context: kubelet-bootstrap@planet\n"), "{t}");
    }

    #[test]
    fn etcd_listens_on_loopback_with_client_certificates() {
        let t = etcd_defaults(&dev());
        assert!(t.contains("ETCD_LISTEN_CLIENT_URLS=https://127.0.0.1:2379\n"), "{t}");
        assert!(t.contains("ETCD_CLIENT_CERT_AUTH=true\n"), "{t}");
        assert!(t.contains("ETCD_INITIAL_CLUSTER=demo-1=https://127.0.0.1:2380\n"), "{t}");
        assert!(!t.contains("http://"), "{t}");
    }

    #[test]
    fn kubelet_refuses_anonymous_requests() {
        let t = kubelet_config(&dev());
        assert!(t.contains("anonymous:\n    enabled: false"), "{t}");
        assert!(t.contains("readOnlyPort: 0\n"), "{t}");
        assert!(t.contains("mode: Webhook\n"), "{t}");
    }

    #[test]
    fn kubeconfig_embeds_base64() {
        let t = kubeconfig_text("https://127.0.0.1:6443", "admin", "CA", "CRT", "KEY");
        assert!(t.contains("certificate-authority-data: Q0E=\n"), "{t}");
        assert!(t.contains("client-key-data: S0VZ\n"), "{t}");
        assert!(t.contains("current-context: admin@planet\n"), "{t}");
    }
}
