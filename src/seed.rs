//! `planet-image seed`: a small FAT image carrying cloud-init data for machines that have no
//! metadata server — QEMU on a laptop (`run --seed`) and bare metal. Two layouts: NoCloud
//! (label `CIDATA`: `user-data`, `meta-data`, `network-config`) and OpenStack ConfigDrive
//! (label `config-2`: `openstack/latest/{meta_data.json,user_data,network_data.json}`).

use crate::fat32;
use crate::util::atomic::PendingFile;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedFormat {
    /// cloud-init NoCloud, volume label CIDATA.
    Nocloud,
    /// OpenStack ConfigDrive (Ironic, Rackspace OnMetal), volume label config-2.
    ConfigDrive,
}

/// What goes into the seed.
#[derive(Debug, Clone)]
pub struct SeedRequest {
    pub role: String,
    pub master_ip: Option<Ipv4Addr>,
    pub provider: String,
    /// Passed to Planet; values may be secrets and are never printed.
    pub env: Vec<(String, String)>,
    pub hostname: Option<String>,
    /// Static address as CIDR (e.g. 10.0.0.10/24); DHCP when absent.
    pub address: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Which NIC gets the static address: a name (glob, `eth1`, `e*`) or a MAC; default `e*`.
    pub interface: Option<String>,
    /// `planet: update:` settings, in order.
    pub update: Vec<(String, String)>,
    /// The cluster's join secret (`planet: join_token:`); never printed (its Debug is `***`).
    pub join_token: Option<planet_config::JoinToken>,
    pub format: SeedFormat,
    pub output: PathBuf,
}

/// The seed's size: FAT32's minimum; almost all of it stays a hole in the file.
const SEED_SIZE: u64 = 40 << 20;

/// Parses `ADDRESS/PREFIX`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX, e.g. 10.0.0.10/24"))?;
    let addr: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let prefix: u8 =
        p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("{p:?} is not a prefix length (0-32)"))?;
    Ok((addr, prefix))
}

/// Parses `KEY=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| "expected KEY=VALUE".to_string())?;
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{k:?} is not a valid variable name (letters, digits, _)"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Reads `--env-file FILE`: one `KEY=VALUE` a line, blank lines and `#` comments skipped; the
/// value is everything after the first `=`, as is. Keeps secrets off the command line, where
/// `ps` and shell history show them. Errors name the line, never its value.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the env file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (k, v) =
            line.split_once('=').with_context(|| format!("{}:{}: expected KEY=VALUE", path.display(), i + 1))?;
        let k = k.trim();
        parse_env(&format!("{k}=")).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), i + 1))?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Parses an update setting `KEY=VALUE`; the key must be one planet-init knows.
pub fn parse_update(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| "expected KEY=VALUE".to_string())?;
    if !planet_config::update::UPDATE_KEYS.contains(&k) {
        return Err(format!(
            "{k:?} is not an update setting (known: {})",
            planet_config::update::UPDATE_KEYS.join(", ")
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// A YAML/JSON double-quoted string (JSON strings are valid YAML).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialise")
}

impl SeedRequest {
    pub fn validate(&self) -> Result<()> {
        if !["master", "node", "dev"].contains(&self.role.as_str()) {
            bail!("--role must be master, node or dev, not {:?}", self.role);
        }
        if self.role == "node" && self.master_ip.is_none() {
            bail!("--role node needs --master-ip (the address of the master's etcd and API server)");
        }
        if self.role == "node" && self.join_token.is_none() {
            bail!(
                "--role node needs --join-token-file FILE: the cluster's join token, the same one the master's \
                 user-data has (make one with `planet-image join-token -o FILE`)"
            );
        }
        if !["aws", "gce", "none"].contains(&self.provider.as_str()) {
            bail!("--provider must be aws, gce or none, not {:?}", self.provider);
        }
        if self.gateway.is_some() && self.address.is_none() {
            bail!("--gateway needs --address");
        }
        if self.interface.is_some() && self.address.is_none() {
            bail!("--interface needs --address");
        }
        self.check_with_planet_config()
    }

    fn interface_mac(&self) -> Option<&str> {
        self.interface.as_deref().filter(|i| i.contains(':'))
    }

    /// Parses what the seed will hold with planet-init's own parser, so a seed that would stop
    /// the machine is refused here.
    fn check_with_planet_config(&self) -> Result<()> {
        use planet_config::cloudconfig;
        let (raw, _) = cloudconfig::user_data_config(self.user_data().as_bytes())
            .context("checking the user-data with planet-config")?;
        raw.validate(planet_config::Source::NoCloud, "planet.").context("checking the user-data with planet-config")?;
        cloudconfig::parse_meta_data(&self.meta_data()).context("checking the meta-data with planet-config")?;
        if let Some(n) = self.network_config() {
            cloudconfig::parse_network_config(&n).context("checking the network-config with planet-config")?;
        }
        cloudconfig::parse_openstack_network(&self.openstack_network_data(), &[])
            .context("checking network_data.json with planet-config")?;
        Ok(())
    }

    /// A stable instance id: cloud-init treats a new one as a new machine.
    pub fn instance_id(&self) -> String {
        let key = format!("{}|{}|{:?}", self.role, self.hostname.as_deref().unwrap_or(""), self.address);
        format!("iid-planet-{}", &crate::util::digest::sha256_hex(key.as_bytes())[..12])
    }

    /// `#cloud-config` user-data with the `planet:` mapping.
    pub fn user_data(&self) -> String {
        let mut y = String::from("#cloud-config\n");
        if let Some(h) = &self.hostname {
            let _ = writeln!(y, "hostname: {}", quoted(h));
        }
        y.push_str("planet:\n");
        let _ = writeln!(y, "  role: {}", self.role);
        if let Some(ip) = self.master_ip {
            let _ = writeln!(y, "  master_ip: {}", quoted(&ip.to_string()));
        }
        let _ = writeln!(y, "  cloud_provider: {}", self.provider);
        if let Some(t) = &self.join_token {
            let _ = writeln!(y, "  join_token: {}", quoted(t.reveal()));
        }
        if !self.env.is_empty() {
            y.push_str("  env:\n");
            for (k, v) in &self.env {
                let _ = writeln!(y, "    {k}: {}", quoted(v));
            }
        }
        if !self.update.is_empty() {
            y.push_str("  update:\n");
            for (k, v) in &self.update {
                let _ = writeln!(y, "    {k}: {}", quoted(v));
            }
        }
        y
    }

    pub fn meta_data(&self) -> String {
        let mut m = format!("instance-id: {}\n", self.instance_id());
        if let Some(h) = &self.hostname {
            let _ = writeln!(m, "local-hostname: {}", quoted(h));
        }
        m
    }

    /// network-config version 2 for a static address, or None for DHCP.
    pub fn network_config(&self) -> Option<String> {
        let (addr, prefix) = self.address?;
        let mut n = String::from("version: 2\nethernets:\n  primary:\n    match:\n");
        match (self.interface_mac(), self.interface.as_deref()) {
            (Some(mac), _) => {
                let _ = writeln!(n, "      macaddress: {}", quoted(&mac.to_ascii_lowercase()));
            }
            (None, name) => {
                let _ = writeln!(n, "      name: {}", quoted(name.unwrap_or("e*")));
            }
        }
        let _ = writeln!(n, "    addresses: [{}]", quoted(&format!("{addr}/{prefix}")));
        if let Some(gw) = self.gateway {
            let _ = writeln!(n, "    gateway4: {}", quoted(&gw.to_string()));
        }
        if !self.dns.is_empty() {
            let list: Vec<String> = self.dns.iter().map(|d| quoted(&d.to_string())).collect();
            let _ = writeln!(n, "    nameservers:\n      addresses: [{}]", list.join(", "));
        }
        Some(n)
    }

    pub fn openstack_meta_data(&self) -> String {
        let mut m = serde_json::json!({ "uuid": self.instance_id() });
        if let Some(h) = &self.hostname {
            m["hostname"] = serde_json::json!(h);
            m["name"] = serde_json::json!(h);
        }
        m.to_string()
    }

    pub fn openstack_network_data(&self) -> String {
        let mut networks = Vec::new();
        if let Some((addr, prefix)) = self.address {
            let mask = Ipv4Addr::from(if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) });
            let mut net = serde_json::json!({
                "id": "network0", "link": "link0", "type": "ipv4",
                "ip_address": addr.to_string(), "netmask": mask.to_string(), "routes": []
            });
            if let Some(gw) = self.gateway {
                net["routes"] =
                    serde_json::json!([{ "network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": gw.to_string() }]);
            }
            networks.push(net);
        } else {
            networks.push(serde_json::json!({ "id": "network0", "link": "link0", "type": "ipv4_dhcp" }));
        }
        let services: Vec<_> =
            self.dns.iter().map(|d| serde_json::json!({ "type": "dns", "address": d.to_string() })).collect();
        let mut link = serde_json::json!({ "id": "link0", "type": "phy" });
        if let Some(mac) = self.interface_mac() {
            link["ethernet_mac_address"] = serde_json::json!(mac.to_ascii_lowercase());
        }
        serde_json::json!({
            "links": [link],
            "networks": networks,
            "services": services,
        })
        .to_string()
    }

    /// The files of the seed, by path.
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        match self.format {
            SeedFormat::Nocloud => {
                let mut f = vec![
                    ("user-data".to_string(), self.user_data().into_bytes()),
                    ("meta-data".to_string(), self.meta_data().into_bytes()),
                ];
                if let Some(n) = self.network_config() {
                    f.push(("network-config".to_string(), n.into_bytes()));
                }
                f
            }
            SeedFormat::ConfigDrive => vec![
                ("openstack/latest/meta_data.json".to_string(), self.openstack_meta_data().into_bytes()),
                ("openstack/latest/user_data".to_string(), self.user_data().into_bytes()),
                ("openstack/latest/network_data.json".to_string(), self.openstack_network_data().into_bytes()),
            ],
        }
    }

    pub fn label(&self) -> [u8; 11] {
        match self.format {
            SeedFormat::Nocloud => *b"CIDATA     ",
            SeedFormat::ConfigDrive => *b"config-2   ",
        }
    }
}

/// The seed image's bytes.
pub fn image(req: &SeedRequest, epoch: u64) -> Result<Vec<u8>> {
    image_with(req, epoch, 0, 512)
}

/// The seed image for a place `hidden_sectors` into a disk with `sector_size` sectors.
fn image_with(req: &SeedRequest, epoch: u64, hidden_sectors: u64, sector_size: u64) -> Result<Vec<u8>> {
    req.validate()?;
    let mut tree = fat32::Tree::default();
    for (path, data) in req.files() {
        tree.add_file(&path, data)?;
    }
    let (date, time) = fat32::dos_date_time(epoch);
    let id = u32::from_str_radix(&crate::util::digest::sha256_hex(req.instance_id().as_bytes())[..8], 16).unwrap_or(0);
    fat32::build(
        &fat32::Params {
            size: SEED_SIZE,
            sector_size: sector_size as u32,
            volume_id: id,
            label: req.label(),
            hidden_sectors: u32::try_from(hidden_sectors).context("the partition starts beyond FAT's reach")?,
            date,
            time,
        },
        &tree,
    )
}

/// Appends the seed as a partition named `config-2` at the end of a raw GPT image, as Ironic
/// places a config drive: the file grows by the seed plus alignment, the backup GPT moves to
/// the new end, and planet-init's first-boot growth stops in front of it.
pub fn append_partition(req: &SeedRequest, image_path: &Path, epoch: u64) -> Result<serde_json::Value> {
    use planet_gpt::{types, Gpt, Guid, Partition, CONFIG_DRIVE_NAME};
    use std::io::{Read, Seek, SeekFrom, Write};
    if req.format != SeedFormat::ConfigDrive {
        bail!("--partition needs --format config-2 (a config drive partition)");
    }
    req.validate()?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image_path)
        .with_context(|| format!("opening {}", image_path.display()))?;
    if !req.env.is_empty() || req.join_token.is_some() {
        use std::os::unix::fs::PermissionsExt;
        if f.metadata().is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            eprintln!(
                "planet-image: warning: {} is readable by other users and now holds the env values or the join \
                 token; `chmod 600` it if they are secrets",
                image_path.display()
            );
        }
    }
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic).with_context(|| format!("reading {}", image_path.display()))?;
    if &magic == b"QFI\xfb" {
        bail!("{} is qcow2; --partition needs a raw image (build --target raw)", image_path.display());
    }
    let len = f.metadata()?.len();
    let (ss, mut gpt) = [512u64, 4096]
        .iter()
        .find_map(|ss| Gpt::read_from(&mut f, *ss, len / ss).ok().map(|g| (*ss, g)))
        .with_context(|| format!("{} has no readable GPT", image_path.display()))?;
    if gpt.partitions.iter().any(|p| p.name == CONFIG_DRIVE_NAME) {
        bail!("{} already has a {CONFIG_DRIVE_NAME} partition", image_path.display());
    }
    let align = (1u64 << 20) / ss;
    let old_total = len / ss;
    let last_used = gpt.partitions.iter().map(|p| p.last_lba).max().unwrap_or(0);
    let after_last = (last_used + 1).div_ceil(align) * align;
    let sectors = SEED_SIZE / ss;
    // At the end of the disk, as Ironic places it: on an image dd'd onto a larger disk that is
    // past the free space planet-state grows into; on a bare image the file grows to make room.
    let at_end = old_total.saturating_sub(sectors + align) / align * align;
    let (start, new_total) =
        if at_end >= after_last { (at_end, old_total) } else { (after_last, after_last + sectors + align) };
    if new_total > old_total {
        f.set_len(new_total * ss)?;
    }
    // The old backup table (at the image's original end) must not survive in free space or
    // under the config drive's zero blocks, which are not written.
    let old_backup = gpt.backup_header_lba();
    let old_array = planet_gpt::entry_array_sectors(ss);
    f.seek(SeekFrom::Start((old_backup - old_array) * ss))?;
    f.write_all(&vec![0u8; ((old_array + 1) * ss) as usize])?;
    gpt.grow_to(new_total, None, align).context("moving the backup GPT to the new end")?;
    let guid_seed = crate::util::digest::sha256_hex(format!("config-2|{}", req.instance_id()).as_bytes());
    let mut g = [0u8; 16];
    for (i, b) in g.iter_mut().enumerate() {
        *b = u8::from_str_radix(&guid_seed[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    gpt.partitions.push(Partition {
        type_guid: types::parse("linux").expect("known type"),
        unique_guid: Guid::from_random_bytes(g),
        first_lba: start,
        last_lba: start + sectors - 1,
        attributes: 0,
        name: CONFIG_DRIVE_NAME.into(),
    });
    let bytes = image_with(req, epoch, start, ss)?;
    // Only the non-zero blocks: the file stays sparse.
    for (i, chunk) in bytes.chunks(4096).enumerate() {
        if chunk.iter().any(|b| *b != 0) {
            f.seek(SeekFrom::Start(start * ss + i as u64 * 4096))?;
            f.write_all(chunk)?;
        }
    }
    gpt.write_to(&mut f).context("writing the GPT with the config drive")?;
    f.sync_all()?;
    Ok(serde_json::json!({
        "image": image_path,
        "partition": CONFIG_DRIVE_NAME,
        "first_lba": start,
        "sectors": sectors,
        "role": req.role,
        "master_ip": req.master_ip.map(|i| i.to_string()),
        "env_keys": req.env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "join_token": req.join_token.as_ref().map(|_| "set"),
        "instance_id": req.instance_id(),
    }))
}

/// Writes the seed image; returns a summary safe to print (no env values, no join token).
pub fn write(req: &SeedRequest, epoch: u64) -> Result<serde_json::Value> {
    let bytes = image(req, epoch)?;
    // The seed holds the env values (credentials) and update URLs: 0600 from the first byte.
    let pending = PendingFile::new_private(&req.output)?;
    crate::disk::write_sparse(pending.path(), &bytes).with_context(|| format!("writing {}", req.output.display()))?;
    pending.commit()?;
    Ok(serde_json::json!({
        "seed": req.output,
        "format": match req.format { SeedFormat::Nocloud => "nocloud", SeedFormat::ConfigDrive => "config-2" },
        "label": String::from_utf8_lossy(&req.label()).trim(),
        "role": req.role,
        "master_ip": req.master_ip.map(|i| i.to_string()),
        "env_keys": req.env.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "join_token": req.join_token.as_ref().map(|_| "set"),
        "instance_id": req.instance_id(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "q4w8zt.m2x7c5v9b1n3k6j0";

    fn req() -> SeedRequest {
        SeedRequest {
            role: "node".into(),
            master_ip: Some(Ipv4Addr::new(10, 0, 0, 10)),
            provider: "aws".into(),
            env: vec![("AWS_SECRET_ACCESS_KEY".into(), "s3cr\"et: x".into())],
            hostname: Some("node-1".into()),
            address: Some((Ipv4Addr::new(10, 0, 0, 11), 24)),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
            interface: None,
            update: Vec::new(),
            join_token: Some(planet_config::JoinToken::parse(TOKEN).unwrap()),
            format: SeedFormat::Nocloud,
            output: "seed.img".into(),
        }
    }

    #[test]
    fn user_data_quotes_values() {
        let u = req().user_data();
        assert!(u.starts_with("#cloud-config\n"));
        assert!(u.contains("  master_ip: \"10.0.0.10\"\n"));
        assert!(u.contains("    AWS_SECRET_ACCESS_KEY: \"s3cr\\\"et: x\"\n"), "{u}");
    }

    #[test]
    fn update_settings_are_written_and_checked() {
        let mut r = req();
        r.update = vec![("url".into(), "http://10.0.2.100/u.planet".into()), ("check_every".into(), "5m".into())];
        r.validate().unwrap();
        let (raw, _) = planet_config::cloudconfig::user_data_config(r.user_data().as_bytes()).unwrap();
        let c = raw.validate(planet_config::Source::NoCloud, "planet.").unwrap();
        assert_eq!(c.update.url.as_deref(), Some("http://10.0.2.100/u.planet"));
        assert_eq!(c.update.check_every, std::time::Duration::from_secs(300));
        r.update = vec![("check_every".into(), "soon".into())];
        let e = format!("{:#}", r.validate().unwrap_err());
        assert!(e.contains("planet.update.check_every"), "{e}");
        assert!(parse_update("urll=x").unwrap_err().contains("not an update setting"));
    }

    #[test]
    fn planet_config_reads_what_the_seed_writes() {
        let mut r = req();
        r.interface = Some("52:54:00:AA:00:01".into());
        r.validate().unwrap();
        let n = planet_config::cloudconfig::parse_network_config(&r.network_config().unwrap()).unwrap();
        let nics = [
            planet_config::cloudconfig::NicInfo { name: "eth0".into(), mac: "52:54:00:12:34:56".into() },
            planet_config::cloudconfig::NicInfo { name: "eth1".into(), mac: "52:54:00:aa:00:01".into() },
        ];
        assert_eq!(n.resolve(&nics).addresses[0].iface, "eth1");
        r.hostname = Some("bad_name".into());
        let e = format!("{:#}", r.validate().unwrap_err());
        assert!(e.contains("planet.hostname"), "{e}");
    }

    #[test]
    fn node_needs_master_ip() {
        let mut r = req();
        r.master_ip = None;
        assert!(r.validate().unwrap_err().to_string().contains("--master-ip"));
    }

    #[test]
    fn join_token_is_written_for_planet_init_and_never_summarised() {
        let r = req();
        assert!(r.user_data().contains(&format!("\n  join_token: \"{TOKEN}\"\n")), "{}", r.user_data());
        let (raw, _) = planet_config::cloudconfig::user_data_config(r.user_data().as_bytes()).unwrap();
        let c = raw.validate(planet_config::Source::NoCloud, "planet.").unwrap();
        assert_eq!(c.join_token.as_ref().map(planet_config::JoinToken::reveal), Some(TOKEN));
        assert!(!format!("{r:?}").contains("m2x7c5"), "{r:?}");
        let tmp = tempfile::tempdir().unwrap();
        let mut w = req();
        w.output = tmp.path().join("seed.img");
        let summary = write(&w, 1_700_000_000).unwrap();
        assert_eq!(summary["join_token"], "set");
        assert!(!summary.to_string().contains("m2x7c5"), "{summary}");
        // A node cannot join without one; a master can run without (nodes then cannot join).
        let mut n = req();
        n.join_token = None;
        let e = n.validate().unwrap_err().to_string();
        assert!(e.contains("--join-token-file") && e.contains("planet-image join-token"), "{e}");
        n.role = "master".into();
        n.master_ip = None;
        n.validate().unwrap();
        assert!(!n.user_data().contains("join_token"));
    }

    #[test]
    fn config_drive_network_data_has_the_static_address() {
        let mut r = req();
        r.format = SeedFormat::ConfigDrive;
        let n: serde_json::Value = serde_json::from_str(&r.openstack_network_data()).unwrap();
        assert_eq!(n["networks"][0]["ip_address"], "10.0.0.11");
        assert_eq!(n["networks"][0]["netmask"], "255.255.255.0");
        assert_eq!(n["networks"][0]["routes"][0]["gateway"], "10.0.0.1");
        let files: Vec<String> = r.files().into_iter().map(|f| f.0).collect();
        assert!(files.contains(&"openstack/latest/user_data".to_string()));
    }

    #[test]
    fn seed_images_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let mut r = req();
        r.output = tmp.path().join("seed.img");
        let old = crate::util::sys::umask(0o022);
        let res = write(&r, 1_700_000_000);
        crate::util::sys::umask(old);
        res.unwrap();
        assert_eq!(std::fs::metadata(&r.output).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn env_files_keep_values_as_written_and_errors_name_the_line_only() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("env");
        std::fs::write(&f, "# secrets\n\nTOKEN=a=b c\r\n  REGION=us-east-1\nEMPTY=\n").unwrap();
        assert_eq!(
            read_env_file(&f).unwrap(),
            [("TOKEN".into(), "a=b c".into()), ("REGION".into(), "us-east-1".into()), ("EMPTY".into(), String::new())]
        );
        std::fs::write(&f, "OK=1\nbad-key=s3cret\n").unwrap();
        let e = format!("{:#}", read_env_file(&f).unwrap_err());
        assert!(e.contains(":2:") && !e.contains("s3cret"), "{e}");
        std::fs::write(&f, "no value here s3cret\n").unwrap();
        let e = format!("{:#}", read_env_file(&f).unwrap_err());
        assert!(e.contains(":1:") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn summary_never_holds_env_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = req();
        r.output = dir.path().join("seed.img");
        let summary = write(&r, 1_700_000_000).unwrap().to_string();
        assert!(!summary.contains("s3cr"), "{summary}");
    }
}
