//! What the kernel must offer the containers Planet runs (docker, the kubelet, kube-proxy):
//! the modules for overlay storage, bridges, veth pairs, VXLAN, conntrack/NAT and the
//! iptables/nftables matches, loaded before the container starts; the sysctls Kubernetes
//! networking expects; and a module loader for what the container asks for later.
//!
//! The last part matters because iptables inside the container asks the kernel for matches by
//! name (`xt_statistic`, `xt_comment`, …) and the kernel then runs its usermode helper
//! `/proc/sys/kernel/modprobe` *on the host*. The host has no modprobe, so planet-init points
//! the kernel at itself: `/init -q -- MODULE` is answered by [`modprobe_main`] from the same
//! module tables coldplug uses.

use std::path::Path;

use crate::coldplug::{Coldplug, KernelLoader, ModuleIndex};

/// Loaded before the container starts: what docker and the kubelet check for at start-up, and
/// what kube-proxy's first iptables-restore needs. Anything else is loaded on demand.
pub const CONTAINER_MODULES: [&str; 22] = [
    "overlay",
    "bridge",
    "br_netfilter",
    "veth",
    "vxlan",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_ct",
    "nft_masq",
    "ip_tables",
    "iptable_filter",
    "iptable_nat",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_comment",
    "xt_conntrack",
    "xt_mark",
    "xt_statistic",
    "xt_nat",
];

/// `(path under /proc/sys, value)`: forwarding for pods and services, bridged traffic through
/// iptables (kube-proxy's rules see pod-to-service packets), room for the inotify watches
/// systemd, dockerd and the kubelet open.
pub const SYSCTLS: [(&str, &str); 6] = [
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/bridge/bridge-nf-call-iptables", "1"),
    ("net/bridge/bridge-nf-call-ip6tables", "1"),
    ("fs/inotify/max_user_instances", "8192"),
    ("fs/inotify/max_user_watches", "524288"),
];

/// The kernel's usermode helper for module requests: planet-init itself (see the module doc).
pub const MODPROBE_HELPER: &str = "/init";

/// Loads [`CONTAINER_MODULES`], sets [`SYSCTLS`] under `proc_sys` and installs the module
/// helper. Nothing here is fatal: a kernel without some module still boots, and what is
/// missing is named on the console.
pub fn prepare<L: crate::coldplug::Loader>(cp: &mut Coldplug<L>, proc_sys: &Path) {
    let mut missing = Vec::new();
    let mut loaded = 0;
    for m in CONTAINER_MODULES {
        if cp.index.resolve(m).is_empty() && !cp.index.is_builtin(m) {
            missing.push(m);
            continue;
        }
        loaded += cp.load(m);
    }
    let mut failed = Vec::new();
    for (key, value) in SYSCTLS {
        if let Err(e) = std::fs::write(proc_sys.join(key), value) {
            failed.push(format!("{key}: {e}"));
        }
    }
    if let Err(e) = std::fs::write(proc_sys.join("kernel/modprobe"), MODPROBE_HELPER) {
        failed.push(format!("kernel/modprobe: {e}"));
    }
    crate::event!(
        "container kernel",
        modules = loaded,
        missing = if missing.is_empty() { "none".to_string() } else { missing.join(",") },
        sysctl_errors = if failed.is_empty() { "none".to_string() } else { failed.join("; ") },
    );
}

/// Whether planet-init was started as the kernel's module helper: `ARGV0 -q -- NAME`.
pub fn is_modprobe_call(args: &[String]) -> Option<&str> {
    match args {
        [_, q, dashes, name] if q == "-q" && dashes == "--" && !name.is_empty() => Some(name.as_str()),
        _ => None,
    }
}

/// The module helper: loads `name` (a module name or an alias such as `fs-overlay` or
/// `nf-ct-proto-6`) with its dependencies from the running kernel's tables. Exit status 0 when
/// it is loaded (or built in), 1 otherwise — the kernel only needs to know whether to retry.
pub fn modprobe_main(name: &str, modules_root: &Path) -> i32 {
    let Ok(release) = crate::sys::kernel_release() else { return 1 };
    let Ok(index) = ModuleIndex::load(&modules_root.join(release)) else { return 1 };
    let candidates = index.resolve(name);
    if candidates.is_empty() {
        return if index.is_builtin(name) { 0 } else { 1 };
    }
    let mut cp = Coldplug::new(index, KernelLoader);
    cp.quiet = true;
    cp.load(name);
    if candidates.iter().any(|m| cp.is_loaded(m) || cp.index.is_builtin(m)) {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kernel_helper_form_is_a_modprobe_call() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(is_modprobe_call(&v(&["/init", "-q", "--", "xt_statistic"])), Some("xt_statistic"));
        assert_eq!(is_modprobe_call(&v(&["/init"])), None);
        assert_eq!(is_modprobe_call(&v(&["/init", "-q", "--", ""])), None);
        assert_eq!(is_modprobe_call(&v(&["/init", "--exec-in-container", "1"])), None);
    }

    #[test]
    fn sysctls_and_missing_modules_are_reported_not_fatal() {
        #[derive(Default)]
        struct Recorder(Vec<String>);
        impl crate::coldplug::Loader for Recorder {
            fn insert(&mut self, path: &Path) -> std::io::Result<()> {
                self.0.push(path.display().to_string());
                Ok(())
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let dep = "kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/llc/llc.ko\n\
                   kernel/net/bridge/bridge.ko: kernel/net/llc/llc.ko\nkernel/net/llc/llc.ko:\n";
        let index = ModuleIndex::parse(tmp.path(), "", dep, "kernel/fs/overlayfs/overlay.ko\n");
        let mut cp = Coldplug::new(index, Recorder::default());
        let sys = tmp.path().join("sys");
        for (k, _) in SYSCTLS {
            std::fs::create_dir_all(sys.join(k).parent().unwrap()).unwrap();
        }
        std::fs::create_dir_all(sys.join("kernel")).unwrap();
        prepare(&mut cp, &sys);
        assert!(cp.is_loaded("br_netfilter") && cp.is_loaded("bridge") && cp.is_loaded("llc"));
        assert_eq!(std::fs::read_to_string(sys.join("net/ipv4/ip_forward")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(sys.join("kernel/modprobe")).unwrap(), "/init");
    }
}
