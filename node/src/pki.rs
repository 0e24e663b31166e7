//! The cluster PKI, made on the first boot and kept on `planet-state`: one CA (ECDSA P-256,
//! ten years), the leaf certificates every component needs (one year, renewed at boot when
//! less than 90 days are left or when what they name changes), and the service-account key.
//!
//! Each leaf has a `NAME.issued` record beside it (what was asked for and when it expires), so
//! a boot decides what to renew without parsing certificates. Keys are 0600; etcd's files are
//! owned by the `etcd` user, since Debian's etcd.service runs as that user.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::files;

const CA_LIFETIME: Duration = Duration::days(3650);
const LEAF_LIFETIME: Duration = Duration::days(365);
/// A leaf with less than this left is renewed at boot.
const RENEW_BEFORE: Duration = Duration::days(90);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// etcd's peer certificates are used both ways.
    Both,
}

/// What one leaf certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafSpec {
    /// File stem under the PKI directory: `NAME.crt`, `NAME.key`.
    pub name: String,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub usage: Usage,
    /// uid, gid of the user that must read the key (root when none).
    pub owner: Option<(u32, u32)>,
}

impl LeafSpec {
    pub fn client(name: &str, cn: &str, orgs: &[&str]) -> LeafSpec {
        LeafSpec {
            name: name.into(),
            common_name: cn.into(),
            organizations: orgs.iter().map(|o| o.to_string()).collect(),
            dns_names: vec![],
            ips: vec![],
            usage: Usage::Client,
            owner: None,
        }
    }

    /// The record kept beside the certificate: any change to it means a new certificate.
    fn describe(&self) -> String {
        let ips: Vec<String> = self.ips.iter().map(|i| i.to_string()).collect();
        format!(
            "cn={}\no={}\ndns={}\nip={}\nusage={:?}\n",
            self.common_name,
            self.organizations.join(","),
            self.dns_names.join(","),
            ips.join(","),
            self.usage
        )
    }
}

pub struct Pki {
    pub dir: PathBuf,
    ca_key: KeyPair,
    /// The issuer for signing: same name and key as `ca.crt` (re-signed when loaded).
    ca: Certificate,
    /// `ca.crt` as stored, what every component is given to trust.
    ca_pem: String,
}

/// What [`Pki::ensure_leaf`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issued {
    Kept,
    New,
}

fn dn(cn: &str, orgs: &[String]) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    for o in orgs {
        d.push(DnType::OrganizationName, o.as_str());
    }
    d.push(DnType::CommonName, cn);
    d
}

impl Pki {
    /// Opens the CA under `dir`, making it (and the directory, 0700) when it does not exist.
    pub fn open_or_create(dir: &Path, now: OffsetDateTime) -> Result<(Pki, Issued)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", dir.display()))?;
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        if crt.exists() && key.exists() {
            let key_pem = std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
            let crt_pem = std::fs::read_to_string(&crt).with_context(|| format!("reading {}", crt.display()))?;
            let ca_key =
                KeyPair::from_pem(&key_pem).with_context(|| format!("reading the key in {}", key.display()))?;
            let params = CertificateParams::from_ca_cert_pem(&crt_pem)
                .with_context(|| format!("reading the certificate in {}", crt.display()))?;
            // The same name and key: certificates it signs verify against the stored ca.crt.
            let ca = params.self_signed(&ca_key).context("loading the cluster CA")?;
            return Ok((Pki { dir: dir.to_path_buf(), ca_key, ca, ca_pem: crt_pem }, Issued::Kept));
        }
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("planet-cluster-ca", &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + CA_LIFETIME;
        let ca = params.self_signed(&ca_key).context("signing the CA certificate")?;
        // The key first: a ca.crt without its key would be taken for a complete CA.
        files::write(&key, ca_key.serialize_pem().as_bytes(), 0o600, None)?;
        let ca_pem = ca.pem();
        files::write(&crt, ca_pem.as_bytes(), 0o644, None)?;
        Ok((Pki { dir: dir.to_path_buf(), ca_key, ca, ca_pem }, Issued::New))
    }

    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Makes sure `NAME.crt`/`NAME.key` exist, say what `spec` says, and are not about to
    /// expire; issues a new pair otherwise.
    pub fn ensure_leaf(&self, spec: &LeafSpec, now: OffsetDateTime) -> Result<Issued> {
        let record = self.path(&format!("{}.issued", spec.name));
        let (crt, key) = (self.path(&format!("{}.crt", spec.name)), self.path(&format!("{}.key", spec.name)));
        let wanted = spec.describe();
        if let Ok(old) = std::fs::read_to_string(&record) {
            let expires = old
                .lines()
                .find_map(|l| l.strip_prefix("not_after="))
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
            let same = old.starts_with(&wanted);
            if same && expires.is_some_and(|e| e - now > RENEW_BEFORE) && crt.exists() && key.exists() {
                return Ok(Issued::Kept);
            }
        }
        let leaf_key = KeyPair::generate().context("generating a key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&spec.common_name, &spec.organizations);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = match spec.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        for d in &spec.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.clone().try_into().with_context(|| format!("{d:?} is not a DNS name"))?));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.not_before = now - Duration::hours(1);
        params.not_after = now + LEAF_LIFETIME;
        let not_after = params.not_after;
        let cert = params
            .signed_by(&leaf_key, &self.ca, &self.ca_key)
            .with_context(|| format!("signing the certificate {}", spec.name))?;
        let mode = 0o600;
        files::write(&key, leaf_key.serialize_pem().as_bytes(), mode, spec.owner)?;
        files::write(&crt, cert.pem().as_bytes(), 0o644, spec.owner)?;
        let rec = format!("{wanted}not_after={}\n", not_after.unix_timestamp());
        files::write(&record, rec.as_bytes(), 0o644, None)?;
        Ok(Issued::New)
    }

    /// The service-account token signing key (`sa.key`) and its public half (`sa.pub`), made
    /// once: renewing it would invalidate every token in the cluster.
    pub fn ensure_service_account_key(&self) -> Result<Issued> {
        let (key, public) = (self.path("sa.key"), self.path("sa.pub"));
        if key.exists() && public.exists() {
            return Ok(Issued::Kept);
        }
        let k = KeyPair::generate().context("generating the service-account key")?;
        files::write(&key, k.serialize_pem().as_bytes(), 0o600, None)?;
        files::write(&public, k.public_key_pem().as_bytes(), 0o644, None)?;
        Ok(Issued::New)
    }

    pub fn read(&self, file: &str) -> Result<String> {
        let p = self.path(file);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> LeafSpec {
        LeafSpec {
            name: "apiserver".into(),
            common_name: "kube-apiserver".into(),
            organizations: vec![],
            dns_names: vec!["kubernetes".into(), "kubernetes.default.svc".into()],
            ips: vec!["10.100.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            usage: Usage::Server,
            owner: None,
        }
    }

    #[test]
    fn ca_is_made_once_and_reloaded() {
        let d = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (pki, made) = Pki::open_or_create(d.path(), now).unwrap();
        assert_eq!(made, Issued::New);
        let first = pki.ca_pem();
        assert_eq!(pki.ensure_leaf(&server(), now).unwrap(), Issued::New);
        let (again, kept) = Pki::open_or_create(d.path(), now).unwrap();
        assert_eq!(kept, Issued::Kept);
        assert_eq!(std::fs::read_to_string(d.path().join("ca.crt")).unwrap(), first);
        // Unchanged request: the same files; a new SAN or time close to expiry: a new one.
        let crt = std::fs::read(d.path().join("apiserver.crt")).unwrap();
        assert_eq!(again.ensure_leaf(&server(), now).unwrap(), Issued::Kept);
        assert_eq!(std::fs::read(d.path().join("apiserver.crt")).unwrap(), crt);
        let mut moved = server();
        moved.ips.push("10.0.2.16".parse().unwrap());
        assert_eq!(again.ensure_leaf(&moved, now).unwrap(), Issued::New);
        assert_eq!(again.ensure_leaf(&moved, now + Duration::days(300)).unwrap(), Issued::New);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(d.path().join("apiserver.key")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(d.path().join("ca.key")).unwrap().mode() & 0o777, 0o600);
    }

    /// openssl, which nobody here wrote, verifies the chain and reads the names back.
    #[test]
    fn openssl_verifies_the_leaf_against_the_ca() {
        if std::process::Command::new("openssl").arg("version").output().is_err() {
            eprintln!("openssl not installed; skipping");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let (pki, _) = Pki::open_or_create(d.path(), now).unwrap();
        pki.ensure_leaf(&server(), now).unwrap();
        pki.ensure_leaf(&LeafSpec::client("admin", "kubernetes-admin", &["system:masters"]), now).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(d.path().join("ca.crt"))
            .arg(d.path().join("apiserver.crt"))
            .arg(d.path().join("admin.crt"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr)
        );
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(d.path().join("admin.crt"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("O = system:masters") && text.contains("CN = kubernetes-admin"), "{text}");
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        pki.ensure_service_account_key().unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(d.path().join("sa.key"))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}
