//! The synchronous HTTPS client (ureq + rustls) and how its errors are described: status,
//! the API's own error message, never request headers (tokens) or session URIs.

use std::time::Duration;

pub struct Http {
    pub agent: ureq::Agent,
}

impl Http {
    pub fn new(read_timeout: Duration) -> Http {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(read_timeout)
            .timeout_write(read_timeout)
            // 308 is "Resume Incomplete" for uploads, not a redirect.
            .redirects(0)
            .user_agent(concat!("planet-image/", env!("CARGO_PKG_VERSION")))
            .build();
        Http { agent }
    }
}

/// `HTTP 403: message` from a Google JSON error body (`{"error": {"message": …}}`), else the
/// start of the body.
pub fn describe_status(code: u16, resp: ureq::Response) -> String {
    let body = resp.into_string().unwrap_or_default();
    format!("HTTP {code}{}", error_message(&body).map(|m| format!(": {m}")).unwrap_or_default())
}

pub fn error_message(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let e = &v["error"];
    if let Some(m) = e["message"].as_str() {
        return Some(m.to_string());
    }
    // OAuth token endpoint: {"error": "invalid_grant", "error_description": "…"}
    match (e.as_str(), v["error_description"].as_str()) {
        (Some(code), Some(d)) => Some(format!("{code}: {d}")),
        (Some(code), None) => Some(code.to_string()),
        _ => None,
    }
}

/// A transport error by kind and message, without the URL (a session URI is a credential).
pub fn describe_transport(t: &ureq::Transport) -> String {
    match t.message() {
        Some(m) => format!("{}: {m}", t.kind()),
        None => match std::error::Error::source(t) {
            Some(s) => format!("{}: {s}", t.kind()),
            None => t.kind().to_string(),
        },
    }
}

/// Whether a status is worth another attempt.
pub fn retryable(code: u16) -> bool {
    code == 408 || code == 429 || code >= 500
}

/// Exponential backoff with jitter over the upper half, capped.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    use rand::Rng;
    let capped = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(max);
    let half = capped / 2;
    half + half.mul_f64(rand::thread_rng().gen::<f64>())
}
