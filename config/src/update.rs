//! The update agent's settings (`planet: update: {…}` in cloud-config).

use std::time::Duration;

use crate::ConfigError;

/// As read from a source; every field optional so sources layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawUpdate {
    pub url: Option<String>,
    pub check_every: Option<String>,
    pub bless_after: Option<String>,
    pub trial_timeout: Option<String>,
    pub health_url: Option<String>,
    pub reboot: Option<String>,
    pub allow_downgrade: Option<String>,
}

/// Validated settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateConfig {
    /// Where bundles are polled from (`http://IP[:PORT]/PATH`); none: only local requests.
    pub url: Option<String>,
    pub check_every: Duration,
    /// How long a new release must run, its health check passing, before it is blessed.
    pub bless_after: Duration,
    /// A new release not blessed within this time is given up (reboot, so the boot counter
    /// falls back once its tries are spent).
    pub trial_timeout: Duration,
    /// `http://127.0.0.1:PORT/PATH` answered with 2xx when the release is healthy; none: the
    /// container staying up is the health check.
    pub health_url: Option<String>,
    /// Reboot into an installed update only between these minutes of the day (UTC); none: at
    /// once.
    pub reboot_window: Option<(u32, u32)>,
    /// Read from cloud-init data only to say it is ignored: anyone on the path of a metadata or
    /// NoCloud-net fetch could set it. A downgrade needs `install --allow-downgrade` on the
    /// update socket.
    pub allow_downgrade: bool,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            url: None,
            check_every: Duration::from_secs(3600),
            bless_after: Duration::from_secs(60),
            trial_timeout: Duration::from_secs(600),
            health_url: None,
            reboot_window: None,
            allow_downgrade: false,
        }
    }
}

/// Field names accepted under `planet.update`.
pub const UPDATE_KEYS: &[&str] =
    &["url", "check_every", "bless_after", "trial_timeout", "health_url", "reboot", "allow_downgrade"];

impl RawUpdate {
    /// Sets one field by name; false for an unknown name.
    pub fn set(&mut self, name: &str, value: String) -> bool {
        let slot = match name {
            "url" => &mut self.url,
            "check_every" => &mut self.check_every,
            "bless_after" => &mut self.bless_after,
            "trial_timeout" => &mut self.trial_timeout,
            "health_url" => &mut self.health_url,
            "reboot" => &mut self.reboot,
            "allow_downgrade" => &mut self.allow_downgrade,
            _ => return false,
        };
        *slot = Some(value);
        true
    }

    /// `over`'s fields win.
    pub fn merge(&mut self, over: RawUpdate) {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(url, check_every, bless_after, trial_timeout, health_url, reboot, allow_downgrade);
    }

    pub fn validate(&self, key_prefix: &str) -> Result<UpdateConfig, ConfigError> {
        let key = |k: &str| format!("{key_prefix}update.{k}");
        let mut c = UpdateConfig::default();
        let http = |name: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
            match v.as_deref() {
                None | Some("") => Ok(None),
                Some(u) if u.starts_with("http://") && u.len() > "http://".len() => Ok(Some(u.to_string())),
                Some(u) => Err(ConfigError::invalid(
                    &key(name),
                    u,
                    "expected http://IP[:PORT]/PATH (bundles are signed, so plain HTTP is safe; \
                     planet-init has no TLS or DNS)",
                )),
            }
        };
        c.url = http("url", &self.url)?;
        c.health_url = http("health_url", &self.health_url)?;
        let dur = |name: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
            match v.as_deref() {
                None => Ok(default),
                Some(t) => parse_duration(t).map_err(|e| ConfigError::invalid(&key(name), t, e)),
            }
        };
        c.check_every = dur("check_every", &self.check_every, c.check_every)?;
        c.bless_after = dur("bless_after", &self.bless_after, c.bless_after)?;
        c.trial_timeout = dur("trial_timeout", &self.trial_timeout, c.trial_timeout)?;
        if c.check_every < Duration::from_secs(1) {
            return Err(ConfigError::invalid(&key("check_every"), "0", "must be at least 1s"));
        }
        if c.trial_timeout <= c.bless_after {
            return Err(ConfigError::invalid(
                &key("trial_timeout"),
                &format!("{}s", c.trial_timeout.as_secs()),
                format!("must be longer than bless_after ({}s)", c.bless_after.as_secs()),
            ));
        }
        c.reboot_window = match self.reboot.as_deref() {
            None | Some("now") | Some("") => None,
            Some(w) => Some(parse_window(w).map_err(|e| ConfigError::invalid(&key("reboot"), w, e))?),
        };
        c.allow_downgrade = match self.allow_downgrade.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return Err(ConfigError::invalid(&key("allow_downgrade"), v, "expected true or false")),
        };
        Ok(c)
    }
}

/// The longest duration accepted (ten years): anything longer is a typo, and a deadline
/// `Instant::now() + d` must not overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86400);

/// `90`, `90s`, `15m`, `1h`, `1h30m`; at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration_unbounded(text)?;
    if d > MAX_DURATION {
        return Err(format!("too long: at most {}d (ten years)", MAX_DURATION.as_secs() / 86400));
    }
    Ok(d)
}

fn parse_duration_unbounded(text: &str) -> Result<Duration, String> {
    let too_long = || format!("too long: at most {}d (ten years)", MAX_DURATION.as_secs() / 86400);
    let t = text.trim();
    if t.is_empty() {
        return Err("expected a duration like 30s, 15m or 1h".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map(Duration::from_secs).map_err(|_| too_long());
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("unknown unit {c:?}: expected s, m, h or d")),
        };
        if digits.is_empty() {
            return Err("expected a number before each unit".to_string());
        }
        let n: u64 = digits.parse().map_err(|_| too_long())?;
        total = n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or_else(too_long)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err("a number without a unit at the end".into());
    }
    Ok(Duration::from_secs(total))
}

/// `HH:MM-HH:MM` (UTC) → minutes of the day; the window may wrap past midnight.
fn parse_window(text: &str) -> Result<(u32, u32), String> {
    let hm = |s: &str| -> Result<u32, String> {
        let (h, m) = s.trim().split_once(':').ok_or("expected HH:MM-HH:MM (UTC) or now")?;
        let h: u32 = h.parse().map_err(|_| "bad hour")?;
        let m: u32 = m.parse().map_err(|_| "bad minute")?;
        if h > 23 || m > 59 {
            return Err("hours are 0-23 and minutes 0-59".into());
        }
        Ok(h * 60 + m)
    };
    let (a, b) = text.split_once('-').ok_or("expected HH:MM-HH:MM (UTC) or now")?;
    let (a, b) = (hm(a)?, hm(b)?);
    if a == b {
        return Err("the window is empty".into());
    }
    Ok((a, b))
}

/// Whether `minute` of the day lies in the window `[start, end)`, which may wrap.
pub fn in_window(window: (u32, u32), minute: u32) -> bool {
    let (s, e) = window;
    if s < e {
        (s..e).contains(&minute)
    } else {
        minute >= s || minute < e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172800)));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("1h5").is_err());
        assert!(parse_duration("").is_err());
    }

    /// Finding 6: a huge duration is a clear error, not a panic when a deadline is computed.
    #[test]
    fn durations_are_capped() {
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
        for huge in ["18446744073709551615", "3651d", "99999999999999999999h", "18446744073709551615d", "87601h"] {
            let e = parse_duration(huge).unwrap_err();
            assert!(e.contains("at most 3650d"), "{huge}: {e}");
        }
        let r = RawUpdate { check_every: Some("18446744073709551615".into()), ..Default::default() };
        let e = r.validate("planet.").unwrap_err().to_string();
        assert!(e.starts_with("planet.update.check_every=") && e.contains("at most 3650d"), "{e}");
        let r =
            RawUpdate { check_every: Some("3650d".into()), trial_timeout: Some("3650d".into()), ..Default::default() };
        let c = r.validate("planet.").unwrap();
        let _ = std::time::Instant::now() + c.check_every + c.trial_timeout;
    }

    #[test]
    fn defaults_and_errors_name_the_key() {
        let c = RawUpdate::default().validate("planet.").unwrap();
        assert_eq!(c, UpdateConfig::default());
        let r = RawUpdate { url: Some("https://x/u".into()), ..Default::default() };
        let e = r.validate("planet.").unwrap_err().to_string();
        assert!(e.starts_with("planet.update.url=\"https://x/u\" is invalid"), "{e}");
        let r = RawUpdate { bless_after: Some("10m".into()), trial_timeout: Some("5m".into()), ..Default::default() };
        assert!(r.validate("planet.").unwrap_err().to_string().contains("longer than bless_after"));
        let r = RawUpdate { reboot: Some("25:00-03:00".into()), ..Default::default() };
        assert!(r.validate("planet.").unwrap_err().to_string().contains("planet.update.reboot"));
        let r = RawUpdate { allow_downgrade: Some("yes".into()), ..Default::default() };
        assert!(r.validate("planet.").is_err());
    }

    #[test]
    fn windows_wrap_midnight() {
        let r = RawUpdate { reboot: Some("23:00-02:30".into()), ..Default::default() };
        let w = r.validate("").unwrap().reboot_window.unwrap();
        assert_eq!(w, (1380, 150));
        assert!(in_window(w, 1439) && in_window(w, 0) && in_window(w, 149));
        assert!(!in_window(w, 150) && !in_window(w, 720));
        assert!(in_window((60, 120), 60) && !in_window((60, 120), 120));
    }
}
