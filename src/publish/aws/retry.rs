//! Retrying EBS calls: throttling, 5xx, timeouts and broken connections are retried with
//! exponential backoff and jitter, bounded in attempts and in total time; anything else fails
//! at once. Errors are described by code and message only (never headers or signatures).

use aws_sdk_ebs::error::{ProvideErrorMetadata, SdkError};
use rand::Rng;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No new attempt starts after this much time spent on one call.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(20),
            max_total: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` (attempt counts from 1): exponential, capped,
    /// with jitter over its upper half so concurrent callers spread out.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max_delay);
        let half = capped / 2;
        half + half.mul_f64(rand::thread_rng().gen::<f64>())
    }
}

/// Why an error is worth another attempt, or `None` when it is not.
pub fn retry_reason<E: ProvideErrorMetadata>(e: &SdkError<E>) -> Option<String> {
    match e {
        SdkError::DispatchFailure(d) if !d.is_user() => Some("connection error".into()),
        SdkError::TimeoutError(_) => Some("timeout".into()),
        SdkError::ResponseError(_) => Some("broken response".into()),
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("");
            let throttled = code.contains("Throttl") || code == "RequestLimitExceeded" || code == "SlowDown";
            if status >= 500 || status == 429 || throttled || code == "InternalServerException" {
                Some(if code.is_empty() { format!("HTTP {status}") } else { format!("{code} (HTTP {status})") })
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The error's code, message and causes: what the service said, nothing of the request.
pub fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(e: &SdkError<E>) -> String {
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match (s.err().code(), s.err().message()) {
                (Some(c), Some(m)) => format!("{c}: {m} (HTTP {status})"),
                (Some(c), None) => format!("{c} (HTTP {status})"),
                _ => format!("HTTP {status}"),
            }
        }
        other => error_chain(other),
    }
}

/// An error and its sources, by their Display texts only (no Debug dumps of SDK internals).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(x) = cur {
        let s = x.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = x.source();
    }
    parts.join(": ")
}

/// Outcome counters of one retried call.
#[derive(Debug, Default, Clone, Copy)]
pub struct Attempts {
    pub attempts: u32,
}

/// Runs `call` until it succeeds, fails with an error not worth retrying, or the policy's
/// attempts or time run out. `what` names the call in the error.
pub async fn with_retries<T, E, F, Fut>(policy: &RetryPolicy, what: &str, mut call: F) -> (Attempts, anyhow::Result<T>)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E>>>,
{
    let started = Instant::now();
    let mut attempts = Attempts::default();
    loop {
        attempts.attempts += 1;
        match call().await {
            Ok(v) => return (attempts, Ok(v)),
            Err(e) => {
                let reason = retry_reason(&e);
                let out_of_time = started.elapsed() >= policy.max_total;
                match reason {
                    Some(r) if attempts.attempts < policy.max_attempts && !out_of_time => {
                        let d = policy.delay(attempts.attempts);
                        if std::env::var_os("PLANET_IMAGE_DEBUG_RETRIES").is_some() {
                            eprintln!("planet-image: {what}: {r}; retrying in {} ms", d.as_millis());
                        }
                        tokio::time::sleep(d).await;
                    }
                    Some(r) => {
                        return (
                            attempts,
                            Err(anyhow::anyhow!(
                                "{what} failed after {} attempts in {:.0}s, last: {r}: {}",
                                attempts.attempts,
                                started.elapsed().as_secs_f64(),
                                describe(&e)
                            )),
                        )
                    }
                    None => return (attempts, Err(anyhow::anyhow!("{what} failed: {}", describe(&e)))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let p = RetryPolicy::default();
        for attempt in 1..30 {
            let d = p.delay(attempt);
            let full = p.base_delay.saturating_mul(1 << (attempt - 1).min(20)).min(p.max_delay);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} vs {full:?}");
        }
        assert!(p.delay(30) <= p.max_delay);
    }
}
