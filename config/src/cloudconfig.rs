//! cloud-init data as a configuration source: user-data (`#cloud-config` with a `planet:`
//! mapping; plain, gzip-compressed or MIME multipart), `meta-data`, netplan-style
//! `network-config` version 2 and OpenStack's `network_data.json`.
//!
//! Keys are spelled in errors as they are in the YAML (`planet.master_ip`), so the console
//! message points at the line to fix. Values are never quoted in errors for `env` and
//! `join_token`, which hold credentials.

use std::borrow::Cow;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};

use serde_yaml::Value;

use crate::{set_env, ConfigError, NetworkConfig, RawConfig, StaticAddress};

/// The keys of the `planet:` mapping.
pub const PLANET_KEYS: &[&str] = &[
    "role",
    "master_ip",
    "public_ip",
    "cloud_provider",
    "cloud_config",
    "env",
    "node_name",
    "labels",
    "taints",
    "volumes",
    "update",
    "join_token",
];

/// The whole user-data decode's allowance: the input plus every byte gzip and base64 produce,
/// at every level of nesting together. Clouds allow far less (EC2 16 KiB, OpenStack 64 KiB,
/// GCE 256 KiB); parsing 1 MiB of the worst YAML costs PID 1 about 70 MiB.
pub const MAX_USER_DATA: u64 = 1 << 20;

/// How deep `application/gzip` parts may nest MIME documents inside each other.
const MAX_NESTING: u32 = 4;

/// Most YAML nodes one document may expand to, counting an anchor's nodes each time an alias
/// repeats them (serde_yaml bounds alias jumps, not what they replay).
const MAX_YAML_NODES: u64 = 200_000;

/// Most scalar bytes one YAML document may expand to, aliases counted each time.
const MAX_YAML_BYTES: u64 = 2 * MAX_USER_DATA;

/// User-data decoded to the `#cloud-config` text it carries, with notices about what was
/// skipped (MIME parts of other types).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserData {
    pub cloud_config: Option<String>,
    pub notices: Vec<String>,
}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Data { key: key.to_string(), reason: reason.into() }
}

/// Decodes raw user-data bytes: gzip (by magic), then MIME multipart or plain text.
pub fn decode_user_data(bytes: &[u8]) -> Result<UserData, ConfigError> {
    let mut d = Decoder { budget: MAX_USER_DATA };
    d.charge(bytes.len())?;
    d.decode(bytes, 0)
}

/// One decode's state: what is left of the byte budget, shared by every layer.
struct Decoder {
    budget: u64,
}

impl Decoder {
    fn charge(&mut self, n: usize) -> Result<(), ConfigError> {
        self.budget = self.budget.checked_sub(n as u64).ok_or_else(|| {
            err(
                "user-data",
                format!(
                    "is larger than {MAX_USER_DATA} bytes once decoded (gzip, base64 and every MIME part count \
                     together)"
                ),
            )
        })?;
        Ok(())
    }

    fn decode(&mut self, bytes: &[u8], depth: u32) -> Result<UserData, ConfigError> {
        if depth > MAX_NESTING {
            return Err(err("user-data", format!("has MIME documents nested more than {MAX_NESTING} levels deep")));
        }
        let bytes = self.gunzip_if_compressed(bytes)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| err("user-data", "is not UTF-8 text"))?;
        let trimmed = text.trim_start();
        if trimmed.is_empty() {
            return Ok(UserData::default());
        }
        if looks_like_mime(trimmed) {
            return self.decode_multipart(trimmed, depth);
        }
        if trimmed.starts_with("#cloud-config") {
            return Ok(UserData { cloud_config: Some(trimmed.to_string()), notices: Vec::new() });
        }
        let first = trimmed.lines().next().unwrap_or("");
        Ok(UserData {
            cloud_config: None,
            notices: vec![format!("user-data ignored: not #cloud-config (starts with {:?})", short(first))],
        })
    }

    fn gunzip_if_compressed<'a>(&mut self, bytes: &'a [u8]) -> Result<Cow<'a, [u8]>, ConfigError> {
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            return Ok(Cow::Borrowed(bytes));
        }
        self.gunzip(bytes).map(Cow::Owned)
    }

    fn gunzip(&mut self, bytes: &[u8]) -> Result<Vec<u8>, ConfigError> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(self.budget.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| err("user-data", format!("is gzip-compressed but does not decompress: {e}")))?;
        self.charge(out.len())?;
        Ok(out)
    }

    /// Decodes parts up to the first `text/cloud-config` one (directly or inside an
    /// `application/gzip` part); later parts are named in a notice, never decoded.
    fn decode_multipart(&mut self, text: &str, depth: u32) -> Result<UserData, ConfigError> {
        let (headers, body) = split_entity(text);
        let ctype = header(&headers, "content-type").unwrap_or_default();
        let boundary = header_param(ctype, "boundary")
            .filter(|b| !b.is_empty())
            .ok_or_else(|| err("user-data", "is MIME multipart without a boundary"))?;
        let delim = format!("--{boundary}");
        let close = format!("{delim}--");
        let mut out = UserData::default();
        let mut parts: Vec<&str> = Vec::new();
        let mut start: Option<usize> = None;
        let mut closed = false;
        let mut offset = 0;
        for line in body.split_inclusive('\n') {
            let line_start = offset;
            offset += line.len();
            let bare = line.trim_end_matches(['\r', '\n']);
            if bare == delim || bare == close {
                if let Some(s) = start.take() {
                    parts.push(&body[s..line_start]);
                }
                if bare == close {
                    closed = true;
                    break;
                }
                start = Some(offset);
            }
        }
        if !closed {
            return Err(err("user-data", format!("MIME multipart has no closing boundary {close}")));
        }
        for (i, part) in parts.iter().enumerate() {
            let (h, body) = split_entity(part);
            let ptype = header(&h, "content-type").unwrap_or("text/plain").to_ascii_lowercase();
            let ptype = ptype.split(';').next().unwrap_or("").trim().to_string();
            let wanted = matches!(ptype.as_str(), "text/cloud-config" | "application/gzip" | "application/x-gzip");
            if out.cloud_config.is_some() {
                let why = if wanted { ": the first text/cloud-config part is used" } else { "" };
                out.notices.push(format!("user-data MIME part {} of type {ptype} ignored{why}", i + 1));
                continue;
            }
            if !wanted {
                out.notices.push(format!("user-data MIME part {} of type {ptype} ignored", i + 1));
                continue;
            }
            let body: Cow<[u8]> = match header(&h, "content-transfer-encoding").map(|e| e.to_ascii_lowercase()) {
                None => Cow::Borrowed(body.as_bytes()),
                Some(e) if e == "7bit" || e == "8bit" || e == "binary" => Cow::Borrowed(body.as_bytes()),
                Some(e) if e == "base64" => {
                    let b = base64_decode(body)
                        .ok_or_else(|| err("user-data", format!("MIME part {} is not valid base64", i + 1)))?;
                    self.charge(b.len())?;
                    Cow::Owned(b)
                }
                Some(e) => return Err(err("user-data", format!("MIME part {} has unsupported encoding {e:?}", i + 1))),
            };
            if ptype == "text/cloud-config" {
                let body = self.gunzip_if_compressed(&body)?.into_owned();
                let text = String::from_utf8(body)
                    .map_err(|_| err("user-data", format!("MIME part {} is not UTF-8 text", i + 1)))?;
                out.cloud_config = Some(text);
            } else {
                if !body.starts_with(&[0x1f, 0x8b]) {
                    return Err(err("user-data", format!("MIME part {} is {ptype} but not gzip data", i + 1)));
                }
                let inner = self.gunzip(&body)?;
                let inner = self.decode(&inner, depth + 1)?;
                out.cloud_config = inner.cloud_config;
                out.notices.extend(inner.notices);
            }
        }
        Ok(out)
    }
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

fn looks_like_mime(text: &str) -> bool {
    let head: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).collect();
    head.iter().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("content-type:") && l.contains("multipart/")
    })
}

/// Headers of one MIME entity (names lower-cased, folded lines joined) and its body.
fn split_entity(text: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = match text.find("\r\n\r\n").map(|i| (i, 4)).or_else(|| text.find("\n\n").map(|i| (i, 2))) {
        Some((i, n)) => (&text[..i], &text[i + n..]),
        None => (text, ""),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A parameter of a header value: `boundary` in `multipart/mixed; boundary="XYZ"`.
fn header_param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_string())
    })
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' | b' ' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Parses YAML after a counting pass that stops as soon as the document, aliases expanded,
/// passes [`MAX_YAML_NODES`] or [`MAX_YAML_BYTES`]: a few KiB of anchors and aliases would
/// otherwise expand to more memory than the machine has.
fn parse_yaml(what: &str, text: &str) -> Result<Value, ConfigError> {
    let mut tally = Tally::default();
    let counted = serde::de::DeserializeSeed::deserialize(Count(&mut tally), serde_yaml::Deserializer::from_str(text));
    if tally.over {
        return Err(err(
            what,
            format!(
                "has more than {MAX_YAML_NODES} YAML nodes or {MAX_YAML_BYTES} bytes of values once anchors and \
                 aliases are expanded"
            ),
        ));
    }
    counted.map_err(|e| err(what, format!("is not valid YAML: {e}")))?;
    serde_yaml::from_str(text).map_err(|e| err(what, format!("is not valid YAML: {e}")))
}

/// What a YAML document expands to so far.
#[derive(Default)]
struct Tally {
    nodes: u64,
    bytes: u64,
    over: bool,
}

/// Visits every node (aliases replayed, as serde_yaml does) without keeping any of them.
struct Count<'a>(&'a mut Tally);

impl Count<'_> {
    fn tick<E: serde::de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        let t = &mut *self.0;
        t.nodes += 1;
        t.bytes = t.bytes.saturating_add(bytes as u64);
        if t.nodes > MAX_YAML_NODES || t.bytes > MAX_YAML_BYTES {
            t.over = true;
            return Err(E::custom("the document expands too far"));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Count<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Count<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML")
    }
    fn visit_bool<E: serde::de::Error>(mut self, _: bool) -> Result<(), E> {
        self.tick(1)
    }
    fn visit_i64<E: serde::de::Error>(mut self, _: i64) -> Result<(), E> {
        self.tick(8)
    }
    fn visit_u64<E: serde::de::Error>(mut self, _: u64) -> Result<(), E> {
        self.tick(8)
    }
    fn visit_f64<E: serde::de::Error>(mut self, _: f64) -> Result<(), E> {
        self.tick(8)
    }
    fn visit_str<E: serde::de::Error>(mut self, v: &str) -> Result<(), E> {
        self.tick(v.len())
    }
    fn visit_bytes<E: serde::de::Error>(mut self, v: &[u8]) -> Result<(), E> {
        self.tick(v.len())
    }
    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.tick(1)
    }
    fn visit_none<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.tick(1)
    }
    fn visit_some<D: serde::Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        self.tick(1)?;
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.tick(1)?;
        while seq.next_element_seed(Count(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.tick(1)?;
        while map.next_key_seed(Count(&mut *self.0))?.is_some() {
            map.next_value_seed(Count(&mut *self.0))?;
        }
        Ok(())
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(mut self, data: A) -> Result<(), A::Error> {
        use serde::de::VariantAccess;
        self.tick(1)?;
        let (_, variant) = data.variant::<serde::de::IgnoredAny>()?;
        variant.newtype_variant_seed(Count(&mut *self.0))
    }
}

/// A scalar as text (strings, numbers and booleans; YAML reads `10` and `true` as non-strings).
fn scalar(key: &str, v: &Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(err(key, format!("expected a string, found {}", kind(other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn key_text(key: &str, k: &Value) -> Result<String, ConfigError> {
    match k {
        Value::String(s) => Ok(s.clone()),
        other => Err(err(key, format!("has a key that is {}, not a string", kind(other)))),
    }
}

/// Parses `#cloud-config` text: top-level `hostname` and the `planet:` mapping. Other
/// top-level keys belong to cloud-init and are left alone.
pub fn parse_cloud_config(text: &str) -> Result<RawConfig, ConfigError> {
    let doc = parse_yaml("user-data", text)?;
    let mut raw = RawConfig::default();
    let top = match doc {
        Value::Null => return Ok(raw),
        Value::Mapping(m) => m,
        other => return Err(err("user-data", format!("must be a mapping, found {}", kind(&other)))),
    };
    if let Some(h) = top.get("hostname") {
        raw.hostname = Some(scalar("hostname", h)?);
    }
    let planet = match top.get("planet") {
        None | Some(Value::Null) => return Ok(raw),
        Some(Value::Mapping(m)) => m,
        Some(other) => return Err(err("planet", format!("expected a mapping, found {}", kind(other)))),
    };
    for (k, v) in planet {
        let name = key_text("planet", k)?;
        let key = format!("planet.{name}");
        match name.as_str() {
            "role" => raw.role = Some(scalar(&key, v)?),
            "master_ip" => raw.master_ip = Some(scalar(&key, v)?),
            "public_ip" => raw.public_ip = Some(scalar(&key, v)?),
            "cloud_provider" => raw.cloud_provider = Some(scalar(&key, v)?),
            "cloud_config" => raw.cloud_config = Some(scalar(&key, v)?),
            "node_name" => raw.node_name = Some(scalar(&key, v)?),
            "join_token" => raw.join_token = Some(join_token_text(&key, v)?),
            "env" => {
                for (ek, ev) in mapping(&key, v)? {
                    let name = key_text(&key, ek)?;
                    // The value may be a credential: the error names the variable only.
                    let value = match ev {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => {
                            return Err(err(
                                &format!("{key}.{name}"),
                                format!("expected a string, found {}", kind(other)),
                            ))
                        }
                    };
                    set_env(&mut raw.env, name, value);
                }
            }
            "labels" => {
                for (lk, lv) in mapping(&key, v)? {
                    let name = key_text(&key, lk)?;
                    let value = scalar(&format!("{key}.{name}"), lv)?;
                    set_env(&mut raw.labels, name, value);
                }
            }
            "update" => {
                for (uk, uv) in mapping(&key, v)? {
                    let name = key_text(&key, uk)?;
                    let value = scalar(&format!("{key}.{name}"), uv)?;
                    if !raw.update.set(&name, value) {
                        return Err(err(
                            &format!("{key}.{name}"),
                            format!("is not a known key (known: {})", crate::update::UPDATE_KEYS.join(", ")),
                        ));
                    }
                }
            }
            "taints" => raw.taints = string_list(&key, v)?,
            "volumes" => raw.volumes = string_list(&key, v)?,
            _ => {
                return Err(err(&key, format!("is not a known key (known: {})", PLANET_KEYS.join(", "))));
            }
        }
    }
    Ok(raw)
}

/// The join token as written; only a string will do (an unquoted all-digit token is a YAML
/// number, whose text would not survive). Errors never quote the value.
fn join_token_text(key: &str, v: &Value) -> Result<crate::SecretText, ConfigError> {
    match v {
        Value::String(s) => Ok(crate::SecretText::new(s.clone())),
        Value::Number(_) => Err(err(
            key,
            format!("is a number in YAML, not text: put the token in quotes; {}", crate::JOIN_TOKEN_HOWTO),
        )),
        other => Err(err(key, format!("expected a string, found {}; {}", kind(other), crate::JOIN_TOKEN_HOWTO))),
    }
}

fn mapping<'a>(key: &str, v: &'a Value) -> Result<&'a serde_yaml::Mapping, ConfigError> {
    match v {
        Value::Mapping(m) => Ok(m),
        other => Err(err(key, format!("expected a mapping, found {}", kind(other)))),
    }
}

fn string_list(key: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
    match v {
        Value::Sequence(items) => {
            items.iter().enumerate().map(|(i, item)| scalar(&format!("{key}[{i}]"), item)).collect()
        }
        other => Err(err(key, format!("expected a list, found {}", kind(other)))),
    }
}

/// What `meta-data` (NoCloud, YAML or JSON) says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaData {
    pub instance_id: Option<String>,
    pub local_hostname: Option<String>,
}

pub fn parse_meta_data(text: &str) -> Result<MetaData, ConfigError> {
    let doc = parse_yaml("meta-data", text)?;
    let mut md = MetaData::default();
    let m = match doc {
        Value::Null => return Ok(md),
        Value::Mapping(m) => m,
        other => return Err(err("meta-data", format!("must be a mapping, found {}", kind(&other)))),
    };
    for (k, v) in &m {
        match key_text("meta-data", k)?.as_str() {
            "instance-id" => md.instance_id = Some(scalar("meta-data.instance-id", v)?),
            "local-hostname" => md.local_hostname = Some(scalar("meta-data.local-hostname", v)?),
            _ => {}
        }
    }
    Ok(md)
}

/// A NIC as the host sees it, for `match:` rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicInfo {
    pub name: String,
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

/// One `ethernets:` entry of network-config v2.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ethernet {
    pub id: String,
    pub match_name: Option<String>,
    pub match_mac: Option<String>,
    pub dhcp4: bool,
    pub addresses: Vec<(Ipv4Addr, u8)>,
    pub gateway4: Option<Ipv4Addr>,
    pub nameservers: Vec<IpAddr>,
}

impl Ethernet {
    fn matches(&self, nic: &NicInfo) -> bool {
        if self.match_name.is_none() && self.match_mac.is_none() {
            return glob(&self.id, &nic.name);
        }
        self.match_name.as_deref().map_or(true, |p| glob(p, &nic.name))
            && self.match_mac.as_deref().map_or(true, |m| m.eq_ignore_ascii_case(&nic.mac))
    }
}

/// Shell-style `*` and `?` matching, as netplan's `match: name:`.
fn glob(pattern: &str, name: &str) -> bool {
    crate::glob::glob_match(pattern.as_bytes(), name.as_bytes())
}

/// network-config version 2 (the `ethernets:` subset), not yet matched to NICs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkV2 {
    pub ethernets: Vec<Ethernet>,
}

fn cidr(key: &str, s: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let bad = || err(key, format!("{s:?} is not an IPv4 ADDRESS/PREFIX"));
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let a = a.parse().map_err(|_| bad())?;
    let p = p.parse::<u8>().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    Ok((a, p))
}

fn ipv4(key: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    s.parse().map_err(|_| err(key, format!("{s:?} is not an IPv4 address")))
}

pub fn parse_network_config(text: &str) -> Result<NetworkV2, ConfigError> {
    let doc = parse_yaml("network-config", text)?;
    let mut top = match doc {
        Value::Null => return Ok(NetworkV2::default()),
        Value::Mapping(m) => m,
        other => return Err(err("network-config", format!("must be a mapping, found {}", kind(&other)))),
    };
    // Some tools wrap it in `network:`.
    if let Some(Value::Mapping(inner)) = top.get("network") {
        top = inner.clone();
    }
    match top.get("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(2) => {}
        Some(v) => return Err(err("network-config.version", format!("only version 2 is supported, found {v:?}"))),
        None => return Err(err("network-config.version", "is required (version: 2)")),
    }
    let mut out = NetworkV2::default();
    let Some(eths) = top.get("ethernets") else {
        return Ok(out);
    };
    for (k, v) in mapping("network-config.ethernets", eths)? {
        let id = key_text("network-config.ethernets", k)?;
        let base = format!("network-config.ethernets.{id}");
        let mut e = Ethernet { id: id.clone(), ..Default::default() };
        for (fk, fv) in mapping(&base, v)? {
            let field = key_text(&base, fk)?;
            let key = format!("{base}.{field}");
            match field.as_str() {
                "match" => {
                    for (mk, mv) in mapping(&key, fv)? {
                        let m = key_text(&key, mk)?;
                        match m.as_str() {
                            "name" => e.match_name = Some(scalar(&format!("{key}.name"), mv)?),
                            "macaddress" => {
                                e.match_mac = Some(scalar(&format!("{key}.macaddress"), mv)?.to_ascii_lowercase())
                            }
                            _ => {}
                        }
                    }
                }
                "dhcp4" => match fv {
                    Value::Bool(b) => e.dhcp4 = *b,
                    Value::String(s) if s == "yes" || s == "true" => e.dhcp4 = true,
                    Value::String(s) if s == "no" || s == "false" => e.dhcp4 = false,
                    other => return Err(err(&key, format!("expected true or false, found {}", kind(other)))),
                },
                "addresses" => {
                    for (i, a) in string_list(&key, fv)?.iter().enumerate() {
                        // IPv6 addresses are allowed by the format; planet-init configures IPv4.
                        if a.contains(':') {
                            continue;
                        }
                        e.addresses.push(cidr(&format!("{key}[{i}]"), a)?);
                    }
                }
                "gateway4" => e.gateway4 = Some(ipv4(&key, &scalar(&key, fv)?)?),
                "routes" => {
                    let Value::Sequence(routes) = fv else {
                        return Err(err(&key, format!("expected a list, found {}", kind(fv))));
                    };
                    for (i, r) in routes.iter().enumerate() {
                        let rk = format!("{key}[{i}]");
                        let r = mapping(&rk, r)?;
                        let to = r.get("to").map(|t| scalar(&format!("{rk}.to"), t)).transpose()?;
                        if matches!(to.as_deref(), Some("default") | Some("0.0.0.0/0")) {
                            let via = r.get("via").ok_or_else(|| err(&format!("{rk}.via"), "is required"))?;
                            e.gateway4 = Some(ipv4(&format!("{rk}.via"), &scalar(&format!("{rk}.via"), via)?)?);
                        }
                    }
                }
                "nameservers" => {
                    if let Some(list) = mapping(&key, fv)?.get("addresses") {
                        for (i, a) in string_list(&format!("{key}.addresses"), list)?.iter().enumerate() {
                            e.nameservers.push(
                                a.parse().map_err(|_| {
                                    err(&format!("{key}.addresses[{i}]"), format!("{a:?} is not an IP"))
                                })?,
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        out.ethernets.push(e);
    }
    Ok(out)
}

impl NetworkV2 {
    /// Static addresses for the NICs the entries match (each NIC taken by the first entry that
    /// matches it; entries with `dhcp4` and no address leave the NIC to DHCP).
    pub fn resolve(&self, nics: &[NicInfo]) -> NetworkConfig {
        let mut out = NetworkConfig::default();
        let mut taken: Vec<&str> = Vec::new();
        for e in &self.ethernets {
            for ns in &e.nameservers {
                if !out.dns.contains(ns) {
                    out.dns.push(*ns);
                }
            }
            let Some((address, prefix)) = e.addresses.first().copied() else {
                continue;
            };
            if let Some(nic) = nics.iter().find(|n| !taken.contains(&n.name.as_str()) && e.matches(n)) {
                taken.push(&nic.name);
                out.addresses.push(StaticAddress { iface: nic.name.clone(), address, prefix, gateway: e.gateway4 });
            }
        }
        out
    }
}

/// OpenStack `network_data.json`: static IPv4 networks on links (matched by MAC when the
/// link has one, else the first NIC not yet taken), DNS services.
pub fn parse_openstack_network(text: &str, nics: &[NicInfo]) -> Result<NetworkConfig, ConfigError> {
    let key = "network_data.json";
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| err(key, format!("is not valid JSON: {e}")))?;
    let mut out = NetworkConfig::default();
    let links = doc["links"].as_array().cloned().unwrap_or_default();
    let mut taken: Vec<String> = Vec::new();
    for (i, net) in doc["networks"].as_array().cloned().unwrap_or_default().iter().enumerate() {
        let nk = format!("{key}.networks[{i}]");
        if net["type"].as_str() != Some("ipv4") {
            continue;
        }
        let addr = net["ip_address"].as_str().ok_or_else(|| err(&format!("{nk}.ip_address"), "is required"))?;
        let (address, prefix) = if addr.contains('/') {
            cidr(&format!("{nk}.ip_address"), addr)?
        } else {
            let mask = net["netmask"].as_str().ok_or_else(|| err(&format!("{nk}.netmask"), "is required"))?;
            let mask = ipv4(&format!("{nk}.netmask"), mask)?;
            let bits = u32::from(mask);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                return Err(err(&format!("{nk}.netmask"), format!("{mask} is not a contiguous netmask")));
            }
            (ipv4(&format!("{nk}.ip_address"), addr)?, bits.leading_ones() as u8)
        };
        let mut gateway = None;
        for r in net["routes"].as_array().cloned().unwrap_or_default() {
            if r["network"].as_str() == Some("0.0.0.0") {
                if let Some(g) = r["gateway"].as_str() {
                    gateway = Some(ipv4(&format!("{nk}.routes.gateway"), g)?);
                }
            }
        }
        let link_mac = net["link"]
            .as_str()
            .and_then(|l| links.iter().find(|k| k["id"].as_str() == Some(l)))
            .and_then(|k| k["ethernet_mac_address"].as_str())
            .map(|m| m.to_ascii_lowercase());
        let nic = nics
            .iter()
            .find(|n| !taken.contains(&n.name) && link_mac.as_deref().map_or(true, |m| m.eq_ignore_ascii_case(&n.mac)));
        if let Some(nic) = nic {
            taken.push(nic.name.clone());
            out.addresses.push(StaticAddress { iface: nic.name.clone(), address, prefix, gateway });
        }
    }
    for s in doc["services"].as_array().cloned().unwrap_or_default() {
        if s["type"].as_str() == Some("dns") {
            if let Some(ip) = s["address"].as_str().and_then(|a| a.parse().ok()) {
                out.dns.push(ip);
            }
        }
    }
    Ok(out)
}

/// OpenStack `meta_data.json`: uuid and hostname.
pub fn parse_openstack_meta_data(text: &str) -> Result<MetaData, ConfigError> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| err("meta_data.json", format!("is not valid JSON: {e}")))?;
    Ok(MetaData {
        instance_id: doc["uuid"].as_str().map(str::to_string),
        local_hostname: doc["hostname"].as_str().map(|h| h.split('.').next().unwrap_or(h).to_string()),
    })
}

/// User-data bytes to a [`RawConfig`] (empty when there is no `#cloud-config`), with notices.
pub fn user_data_config(bytes: &[u8]) -> Result<(RawConfig, Vec<String>), ConfigError> {
    let ud = decode_user_data(bytes)?;
    let raw = match &ud.cloud_config {
        Some(text) => parse_cloud_config(text)?,
        None => RawConfig::default(),
    };
    Ok((raw, ud.notices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const NODE: &str = "#cloud-config\nhostname: node-1\nplanet:\n  role: node\n  master_ip: 10.0.0.10\n  \
                        cloud_provider: aws\n  env:\n    SECRET: \"hunter2\"\n  labels: {zone: a}\n  taints: [\"x=y:NoSchedule\"]\n";

    #[test]
    fn plain_cloud_config() {
        let (raw, notices) = user_data_config(NODE.as_bytes()).unwrap();
        assert!(notices.is_empty());
        assert_eq!(raw.role.as_deref(), Some("node"));
        assert_eq!(raw.master_ip.as_deref(), Some("10.0.0.10"));
        assert_eq!(raw.hostname.as_deref(), Some("node-1"));
        assert_eq!(raw.env, vec![("SECRET".to_string(), "hunter2".to_string())]);
        assert_eq!(raw.labels, vec![("zone".to_string(), "a".to_string())]);
        assert_eq!(raw.taints, vec!["x=y:NoSchedule".to_string()]);
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_and_multipart() {
        let (raw, _) = user_data_config(&gzip(NODE.as_bytes())).unwrap();
        assert_eq!(raw.role.as_deref(), Some("node"));
        let mime = format!(
            "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n--XX\nContent-Type: \
             text/x-shellscript\n\n#!/bin/sh\necho hi\n--XX\nContent-Type: text/cloud-config; charset=\"us-ascii\"\n\n{NODE}\n--XX--\n"
        );
        let (raw, notices) = user_data_config(&gzip(mime.as_bytes())).unwrap();
        assert_eq!(raw.master_ip.as_deref(), Some("10.0.0.10"));
        assert_eq!(notices, vec!["user-data MIME part 1 of type text/x-shellscript ignored".to_string()]);
    }

    #[test]
    fn broken_data_names_the_problem() {
        let e = user_data_config(b"Content-Type: multipart/mixed; boundary=XX\n\n--XX\n\n#cloud-config\n").unwrap_err();
        assert!(e.to_string().contains("no closing boundary"), "{e}");
        let e = user_data_config(&[0x1f, 0x8b, 1, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("does not decompress"), "{e}");
        let e = user_data_config(b"#cloud-config\nplanet:\n  rol: node\n").unwrap_err();
        assert!(e.to_string().starts_with("planet.rol is not a known key"), "{e}");
        let e = user_data_config(b"#cloud-config\nplanet:\n  role: [a]\n").unwrap_err();
        assert_eq!(e.to_string(), "planet.role: expected a string, found a list");
        let e = user_data_config(b"#cloud-config\nplanet:\n  env: {K: [\"hunter2\"]}\n").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = user_data_config(b"#cloud-config\nplanet: [\n").unwrap_err();
        assert!(e.to_string().starts_with("user-data is not valid YAML"), "{e}");
    }

    #[test]
    fn network_config_matches_by_mac_and_name() {
        let n = parse_network_config(
            "version: 2\nethernets:\n  lan:\n    match:\n      macaddress: \"52:54:00:AA:00:01\"\n    addresses: \
             [10.0.0.10/24]\n    routes:\n      - to: default\n        via: 10.0.0.1\n    nameservers:\n      addresses: \
             [10.0.0.2]\n  eth0:\n    dhcp4: true\n",
        )
        .unwrap();
        let nics = [
            NicInfo { name: "eth0".into(), mac: "52:54:00:12:34:56".into() },
            NicInfo { name: "eth1".into(), mac: "52:54:00:aa:00:01".into() },
        ];
        let c = n.resolve(&nics);
        assert_eq!(c.addresses.len(), 1);
        assert_eq!(c.addresses[0].iface, "eth1");
        assert_eq!(c.addresses[0].gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(c.dns.len(), 1);
        let n = parse_network_config(
            "version: 2\nethernets:\n  p:\n    match: {name: \"e*\"}\n    addresses: [10.1.0.5/16]\n",
        )
        .unwrap();
        assert_eq!(n.resolve(&nics).addresses[0].iface, "eth0");
        let e = parse_network_config("version: 2\nethernets:\n  p:\n    addresses: [10.1.0.5]\n").unwrap_err();
        assert!(e.to_string().starts_with("network-config.ethernets.p.addresses[0]"), "{e}");
    }

    #[test]
    fn openstack_network_data() {
        let nics = [NicInfo { name: "eth0".into(), mac: "52:54:00:12:34:56".into() }];
        let c = parse_openstack_network(
            r#"{"links":[{"id":"l0","type":"phy"}],"networks":[{"id":"n0","link":"l0","type":"ipv4",
            "ip_address":"10.0.2.30","netmask":"255.255.255.0","routes":[{"network":"0.0.0.0","netmask":"0.0.0.0","gateway":"10.0.2.2"}]}],
            "services":[{"type":"dns","address":"10.0.2.3"}]}"#,
            &nics,
        )
        .unwrap();
        assert_eq!(c.addresses[0].address, Ipv4Addr::new(10, 0, 2, 30));
        assert_eq!(c.addresses[0].prefix, 24);
        assert_eq!(c.addresses[0].gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(c.dns.len(), 1);
    }

    #[test]
    fn meta_data() {
        let m = parse_meta_data("instance-id: iid-1\nlocal-hostname: m1\n").unwrap();
        assert_eq!(m.instance_id.as_deref(), Some("iid-1"));
        assert_eq!(m.local_hostname.as_deref(), Some("m1"));
    }

    /// `a: &a [x,…]` then `b: [*a,…]`: a few KiB that serde_yaml would expand into billions of
    /// nodes. Run under `ulimit -v` so a regression fails instead of taking the machine down.
    fn alias_bomb(n: usize) -> String {
        let xs = vec!["x"; n].join(",");
        let refs = vec!["*a"; n].join(",");
        format!("#cloud-config\na: &a [{xs}]\nb: [{refs}]\nplanet:\n  role: dev\n")
    }

    #[test]
    fn yaml_alias_fan_out_is_refused_quickly() {
        let started = std::time::Instant::now();
        let e = user_data_config(&gzip(alias_bomb(200_000).as_bytes())).unwrap_err().to_string();
        assert!(e.contains("YAML nodes"), "{e}");
        let e = user_data_config(alias_bomb(2_000).as_bytes()).unwrap_err().to_string();
        assert!(e.contains("YAML nodes"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        // One long string repeated through aliases counts its bytes each time.
        let big = "y".repeat(512 << 10);
        let doc = format!("#cloud-config\ns: &s \"{big}\"\nt: [{}]\n", vec!["*s"; 64].join(","));
        let e = user_data_config(doc.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("YAML nodes"), "{e}");
        // Ordinary anchors still work.
        let ok = "#cloud-config\nx: &x {a: 1}\ny: *x\nplanet:\n  role: dev\n";
        assert_eq!(user_data_config(ok.as_bytes()).unwrap().0.role.as_deref(), Some("dev"));
    }

    fn b64(data: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                out.push(if i <= c.len() { A[(n >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
            }
        }
        out
    }

    /// A gzip'd MIME part, base64 as MIME tools write it.
    fn gz_part(data: &[u8]) -> (&'static str, &'static str, Vec<u8>) {
        ("application/gzip", "base64", b64(&gzip(data)).into_bytes())
    }

    fn mime(parts: &[(&str, &str, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"Content-Type: multipart/mixed; boundary=\"B\"\nMIME-Version: 1.0\n\n".to_vec();
        for (ctype, encoding, body) in parts {
            out.extend_from_slice(format!("--B\nContent-Type: {ctype}\n").as_bytes());
            if !encoding.is_empty() {
                out.extend_from_slice(format!("Content-Transfer-Encoding: {encoding}\n").as_bytes());
            }
            out.push(b'\n');
            out.extend_from_slice(body);
            out.push(b'\n');
        }
        out.extend_from_slice(b"--B--\n");
        out
    }

    #[test]
    fn nesting_is_limited_and_one_budget_covers_every_layer() {
        // application/gzip parts nest MIME documents; depth is bounded.
        let mut doc = NODE.as_bytes().to_vec();
        for _ in 0..40 {
            doc = mime(&[gz_part(&doc)]);
        }
        let e = user_data_config(&doc).unwrap_err().to_string();
        assert!(e.contains("nested more than"), "{e}");
        let mut doc = NODE.as_bytes().to_vec();
        for _ in 0..3 {
            doc = mime(&[gz_part(&doc)]);
        }
        assert_eq!(user_data_config(&doc).unwrap().0.role.as_deref(), Some("node"));
        // Not gzip in an application/gzip part: refused, not passed through.
        let e = user_data_config(&mime(&[("application/gzip", "", NODE.as_bytes().to_vec())])).unwrap_err().to_string();
        assert!(e.contains("MIME part 1") && e.contains("not gzip"), "{e}");
        // Each part fits the old per-layer cap, together they do not.
        let filler = mime(&[(
            "text/x-shellscript",
            "",
            format!("#!/bin/sh\n#{}\n", "z".repeat(MAX_USER_DATA as usize * 3 / 4)).into_bytes(),
        )]);
        let e = user_data_config(&gzip(&mime(&[
            gz_part(&filler),
            gz_part(&filler),
            ("text/cloud-config", "", NODE.as_bytes().to_vec()),
        ])))
        .unwrap_err()
        .to_string();
        assert!(e.contains("once decoded"), "{e}");
        // Decoding stops at the first cloud-config part: later parts are not even decoded.
        let (raw, notices) = user_data_config(&mime(&[
            ("text/cloud-config", "", NODE.as_bytes().to_vec()),
            ("application/gzip", "", b"not gzip at all".to_vec()),
            ("text/cloud-config", "base64", b"!!! not base64 !!!".to_vec()),
        ]))
        .unwrap();
        assert_eq!(raw.role.as_deref(), Some("node"));
        assert!(notices.iter().any(|n| n.contains("MIME part 2") && n.contains("first")), "{notices:?}");
    }

    #[test]
    fn user_data_over_the_budget_is_refused() {
        let big = format!("#cloud-config\nz: \"{}\"\n", "z".repeat((MAX_USER_DATA as usize) + 10));
        let e = user_data_config(&gzip(big.as_bytes())).unwrap_err().to_string();
        assert!(e.contains("once decoded"), "{e}");
    }

    #[test]
    fn name_globs_do_not_backtrack_exponentially() {
        let started = std::time::Instant::now();
        let pattern = format!("{}x", "*".repeat(100));
        let n = NetworkV2 {
            ethernets: vec![Ethernet {
                id: "p".into(),
                match_name: Some(pattern),
                addresses: vec![(Ipv4Addr::new(10, 0, 0, 1), 24)],
                ..Default::default()
            }],
        };
        let nics = [NicInfo { name: "enp0s31f6".into(), mac: "52:54:00:12:34:56".into() }];
        assert!(n.resolve(&nics).addresses.is_empty());
        // Linear matching takes microseconds; backtracking took hours. The margin is for a loaded CI.
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn join_token_is_read_and_checked_without_echoing_it() {
        let doc = |t: &str| format!("#cloud-config\nplanet:\n  role: node\n  master_ip: 10.0.0.1\n  join_token: {t}\n");
        let (raw, _) = user_data_config(doc("k7p2xq.h3mz9wv1c8rt4yda").as_bytes()).unwrap();
        let c = raw.validate(crate::Source::NoCloud, "planet.").unwrap();
        assert_eq!(c.join_token.as_ref().map(crate::JoinToken::reveal), Some("k7p2xq.h3mz9wv1c8rt4yda"));
        assert!(c.container_environment().contains("\nPLANET_JOIN_TOKEN=k7p2xq.h3mz9wv1c8rt4yda\n"));
        let shown = c.to_string();
        assert!(shown.contains("join_token=set") && !shown.contains("h3mz9wv1"), "{shown}");
        assert!(!format!("{c:?} {raw:?}").contains("h3mz9wv1"), "Debug shows the token");
        // Each bad token: the key, what is wrong and how to make one; never the value.
        for (bad, want) in [
            ("\"k7p2xq.h3mz9wv1C8RT4YDA\"", "upper-case letter at position 16"),
            ("\"k7p2xq-h3mz9wv1c8rt4yda\"", "has no '.'"),
            ("\"k7p2xqz.h3mz9wv1c8rt4yd\"", "7 characters before the '.'"),
            ("\"\"", "is empty"),
            ("123456.9081726354091827", "is a number in YAML"),
            ("[k7p2xq.h3mz9wv1c8rt4yda]", "expected a string, found a list"),
        ] {
            let e = match user_data_config(doc(bad).as_bytes()) {
                Ok((raw, _)) => raw.validate(crate::Source::NoCloud, "planet.").unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(e.starts_with("planet.join_token"), "{bad}: {e}");
            assert!(e.contains(want) && e.contains("planet-image join-token"), "{bad}: {e}");
            assert!(!e.contains("h3mz9wv1") && !e.contains("9081726354"), "{bad}: {e}");
            assert!(!e.contains("k7p2xq") && !e.contains("rt4yd") && !e.contains("YDA"), "{bad}: {e}");
        }
    }

    #[test]
    fn update_settings_are_read_and_checked() {
        let raw = parse_cloud_config(
            "#cloud-config\nplanet:\n  role: dev\n  update:\n    url: http://10.0.2.100/u.planet\n    check_every: 5s\n",
        )
        .unwrap();
        assert_eq!(raw.update.url.as_deref(), Some("http://10.0.2.100/u.planet"));
        let c = raw.validate(crate::Source::NoCloud, "planet.").unwrap();
        assert_eq!(c.update.check_every, std::time::Duration::from_secs(5));
        let e = parse_cloud_config("planet:\n  update:\n    urll: x\n").unwrap_err().to_string();
        assert!(e.starts_with("planet.update.urll is not a known key"), "{e}");
        let e = parse_cloud_config("planet:\n  update: 3\n").unwrap_err().to_string();
        assert!(e.contains("planet.update"), "{e}");
    }
}
