//! The cluster-wide constants and the paths inside the container: one home for each, read by
//! every other module (and quoted by the units the release script writes).

use std::net::Ipv4Addr;

/// Where the PKI lives. The container's root is an overlay whose upper layer is on
/// `planet-state`, so it survives reboots and slot updates alike.
pub const PKI_DIR: &str = "/etc/kubernetes/pki";
/// The kubeconfigs and component configuration files.
pub const KUBE_DIR: &str = "/etc/kubernetes";
/// The environment file every Planet unit reads (`EnvironmentFile=`).
pub const UNIT_ENV: &str = "/etc/planet/kube.env";
/// Extra environment for `planet-image enter` sessions (KUBECONFIG).
pub const ENTER_ENV: &str = "/etc/planet/enter.env";
/// What planet-init writes: the role, IPs and names from the cloud-init data.
pub const CONTAINER_ENV: &str = "/etc/container-environment";
/// The cloud provider's own configuration file (`planet: cloud_config:`), 0600.
pub const CLOUD_CONFIG: &str = "/etc/planet/cloud-provider.conf";
/// The operator's `env:` (the cloud credentials), 0600: the kubelet's and the controller
/// manager's `EnvironmentFile=`, never their command lines.
pub const CLOUD_ENV: &str = "/etc/planet/cloud.env";
/// Debian's etcd.service reads this file.
pub const ETCD_DEFAULTS: &str = "/etc/default/etcd";
/// Docker archives imported at boot.
pub const IMAGES_DIR: &str = "/usr/share/planet/images";
/// The pause image the release ships (see `--pod-infra-container-image` in kubelet.service).
pub const PAUSE_IMAGE: &str = "planet/pause:3.4";

/// Services get virtual IPs from here; the first is the API server's `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.100.0.0/16";
pub const API_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
/// Pods get addresses from here; the controller manager gives each node a /24.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub const API_PORT: u16 = 6443;
/// The kubelet's plain-HTTP health endpoint, bound to loopback only.
pub const KUBELET_HEALTHZ: &str = "127.0.0.1:10248";
/// A node's kubelet client certificate and key in one file (the kubelet's default
/// `--cert-dir`), made at its join and rotated by the kubelet.
pub const KUBELET_CLIENT_PEM: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";

pub fn pki(name: &str) -> String {
    format!("{PKI_DIR}/{name}")
}

pub fn kubeconfig(name: &str) -> String {
    format!("{KUBE_DIR}/{name}.kubeconfig")
}
