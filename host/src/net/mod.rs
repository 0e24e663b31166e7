//! Networking: loopback up, DHCPv4 on every physical NIC (static addresses where the
//! configuration gives them), one default route, DNS for the container's resolv.conf.

pub mod dhcp;
pub mod ifconfig;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use planet_config::{NetworkConfig, StaticAddress};

/// A physical network interface as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: [u8; 6],
}

/// Interfaces backed by a device (`device` link) of type ethernet (1), sorted by name.
pub fn physical_nics(sysfs: &Path) -> Vec<Nic> {
    let Ok(entries) = std::fs::read_dir(sysfs.join("class/net")) else {
        return Vec::new();
    };
    let mut out: Vec<Nic> = entries
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            if !p.join("device").exists() {
                return None;
            }
            let ty = std::fs::read_to_string(p.join("type")).ok()?;
            if ty.trim() != "1" {
                return None;
            }
            let mac = parse_mac(std::fs::read_to_string(p.join("address")).ok()?.trim())?;
            Some(Nic { name: e.file_name().to_string_lossy().into_owned(), mac })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// One configured interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Configured {
    pub iface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<IpAddr>,
    pub domain: Option<String>,
    pub source: &'static str,
}

/// The outcome of bringing the network up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Network {
    pub interfaces: Vec<Configured>,
    /// Configured DNS servers first, then the leases', deduplicated.
    pub dns: Vec<IpAddr>,
}

impl Network {
    /// The machine's own address: the first static address (one given on purpose, e.g. the
    /// cluster link of a bare-metal machine), else the first configured interface's.
    pub fn primary_ip(&self) -> Option<Ipv4Addr> {
        self.interfaces.iter().find(|c| c.source == "static").or(self.interfaces.first()).map(|c| c.address)
    }

    /// `/etc/resolv.conf` for the container.
    pub fn resolv_conf(&self) -> String {
        let mut out = String::from("# written by planet-init\n");
        let domains: Vec<&str> =
            self.interfaces.iter().filter_map(|c| c.domain.as_deref()).filter(|d| !d.is_empty()).collect();
        if !domains.is_empty() {
            out.push_str(&format!("search {}\n", domains.join(" ")));
        }
        for d in self.dns.iter().take(3) {
            out.push_str(&format!("nameserver {d}\n"));
        }
        out
    }
}

/// How many DISCOVER rounds (1, 2, 4, 4… s apart) before an interface is reported failed.
const DHCP_ATTEMPTS: u32 = 8;
/// Once one interface is up, how long the boot waits for the others (a NIC on a link without a
/// DHCP server must not hold the boot for the full DHCP timeout; it keeps trying behind).
const LATE_GRACE: Duration = Duration::from_secs(10);

/// Configures one NIC: static address if the configuration has one, else DHCP (and a thread
/// that keeps the lease). Its default route gets a metric by position so eth0's wins.
fn configure(sysfs: &Path, nic: Nic, index: usize, static_cfg: Option<StaticAddress>) -> Result<Configured> {
    ifconfig::set_up(&nic.name).with_context(|| format!("bringing up {}", nic.name))?;
    wait_for_carrier(sysfs, &nic.name, Duration::from_secs(5));
    let c = match static_cfg {
        Some(s) => {
            ifconfig::set_address(&nic.name, s.address, s.prefix)
                .with_context(|| format!("setting {}/{} on {}", s.address, s.prefix, nic.name))?;
            Configured {
                iface: nic.name.clone(),
                address: s.address,
                prefix: s.prefix,
                gateway: s.gateway,
                dns: Vec::new(),
                domain: None,
                source: "static",
            }
        }
        None => {
            let mut t = dhcp::UdpTransport::open(&nic.name)?;
            let lease = dhcp::acquire(&mut t, nic.mac, xid_seed(&nic.mac), DHCP_ATTEMPTS)
                .with_context(|| format!("running DHCP on {}", nic.name))?;
            ifconfig::set_address(&nic.name, lease.address, lease.prefix)
                .with_context(|| format!("setting {}/{} on {}", lease.address, lease.prefix, nic.name))?;
            let c = Configured {
                iface: nic.name.clone(),
                address: lease.address,
                prefix: lease.prefix,
                gateway: lease.router,
                dns: lease.dns.iter().map(|d| IpAddr::V4(*d)).collect(),
                domain: lease.domain.clone(),
                source: "dhcp",
            };
            spawn_renewal(nic, t, lease);
            c
        }
    };
    if let Some(gw) = c.gateway {
        if let Err(e) = ifconfig::add_default_route(&c.iface, gw, (index as i16).saturating_mul(100)) {
            crate::event!("network route failed", iface = c.iface, gateway = gw, error = e);
        }
    }
    crate::event!(
        "network",
        iface = c.iface,
        address = format!("{}/{}", c.address, c.prefix),
        gateway = c.gateway.map(|g| g.to_string()).unwrap_or_else(|| "none".into()),
        dns = if c.dns.is_empty() {
            "none".into()
        } else {
            c.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
        },
        source = c.source,
    );
    Ok(c)
}

/// Brings up `lo` and every physical NIC, in parallel. A NIC that gets no address is
/// reported, not fatal: the other NICs may be enough.
pub fn bring_up(sysfs: &Path, cfg: &NetworkConfig) -> Result<Network> {
    ifconfig::set_up("lo").context("bringing up lo")?;
    let nics = physical_nics(sysfs);
    if nics.is_empty() {
        crate::event!("network unavailable", reason = "no physical network interface");
    }
    let total = nics.len();
    let (tx, rx) = std::sync::mpsc::channel();
    for (index, nic) in nics.into_iter().enumerate() {
        let static_cfg = cfg.addresses.iter().find(|a| a.iface == nic.name).cloned();
        let sysfs = sysfs.to_path_buf();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let name = nic.name.clone();
            let r = configure(&sysfs, nic, index, static_cfg);
            if let Err(e) = &r {
                crate::event!("network failed", iface = name, error = format!("{e:#}"));
            }
            let _ = tx.send((index, r));
        });
    }
    drop(tx);
    let mut done: Vec<(usize, Configured)> = Vec::new();
    let mut received = 0;
    let mut first_ok: Option<Instant> = None;
    while received < total {
        let wait = match first_ok {
            Some(t) => LATE_GRACE.saturating_sub(t.elapsed()),
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok((i, r)) => {
                received += 1;
                if let Ok(c) = r {
                    done.push((i, c));
                    first_ok.get_or_insert_with(Instant::now);
                }
            }
            Err(_) => break,
        }
    }
    if received < total {
        crate::event!("network pending", interfaces = total - received, note = "still configuring in the background");
    }
    done.sort_by_key(|(i, _)| *i);
    let mut net = Network { dns: cfg.dns.clone(), ..Default::default() };
    for (_, c) in done {
        for d in &c.dns {
            if !net.dns.contains(d) {
                net.dns.push(*d);
            }
        }
        net.interfaces.push(c);
    }
    Ok(net)
}

fn xid_seed(mac: &[u8; 6]) -> u32 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ t
}

fn wait_for_carrier(sysfs: &Path, iface: &str, timeout: Duration) {
    let start = Instant::now();
    let path = sysfs.join("class/net").join(iface).join("carrier");
    while start.elapsed() < timeout {
        if std::fs::read_to_string(&path).map(|s| s.trim() == "1").unwrap_or(false) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Keeps a lease alive: renews at T1, retries every minute while that fails.
fn spawn_renewal(nic: Nic, mut t: dhcp::UdpTransport, mut lease: dhcp::Lease) {
    std::thread::spawn(move || {
        let mut wait = Duration::from_secs(u64::from(lease.renew_secs.max(30)));
        let mut xid = xid_seed(&nic.mac);
        loop {
            std::thread::sleep(wait);
            xid = xid.wrapping_add(1);
            match dhcp::renew(&mut t, nic.mac, xid, lease.address) {
                Ok(Some(new)) => {
                    if new.address != lease.address || new.prefix != lease.prefix {
                        let _ = ifconfig::set_address(&nic.name, new.address, new.prefix);
                        crate::event!(
                            "network",
                            iface = nic.name,
                            address = format!("{}/{}", new.address, new.prefix),
                            source = "dhcp-renew"
                        );
                    }
                    lease = new;
                    wait = Duration::from_secs(u64::from(lease.renew_secs.max(30)));
                }
                _ => wait = Duration::from_secs(60),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_nics_come_from_sysfs() {
        let tmp = tempfile::tempdir().unwrap();
        let net = tmp.path().join("class/net");
        for (name, ty, dev, mac) in [
            ("lo", "772", false, "00:00:00:00:00:00"),
            ("eth1", "1", true, "52:54:00:12:34:57"),
            ("eth0", "1", true, "52:54:00:12:34:56"),
            ("docker0", "1", false, "02:42:00:00:00:01"),
        ] {
            let d = net.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), format!("{ty}\n")).unwrap();
            std::fs::write(d.join("address"), format!("{mac}\n")).unwrap();
            if dev {
                std::fs::create_dir_all(d.join("device")).unwrap();
            }
        }
        let nics = physical_nics(tmp.path());
        assert_eq!(nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["eth0", "eth1"]);
        assert_eq!(nics[0].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    }

    #[test]
    fn resolv_conf_lists_search_and_servers() {
        let n = Network {
            interfaces: vec![Configured {
                iface: "eth0".into(),
                address: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: None,
                dns: vec![],
                domain: Some("example.internal".into()),
                source: "dhcp",
            }],
            dns: vec!["10.0.2.3".parse().unwrap()],
        };
        assert_eq!(n.resolv_conf(), "# written by planet-init\nsearch example.internal\nnameserver 10.0.2.3\n");
        assert_eq!(n.primary_ip(), Some(Ipv4Addr::new(10, 0, 2, 15)));
    }
}
