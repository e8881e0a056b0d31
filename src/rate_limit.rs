//! The [rate-limit rule](crate#rate-limits-http-429): how long to back off after an HTTP 429,
//! for the cache's token requests and for [`RateLimitRetry`] (`retry.rs`; its reqwest
//! middleware in `middleware.rs`, its tower policy in `policy.rs`).

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};

/// How long to wait after a 429 without `Retry-After`, before the random part
/// ([`RATE_LIMIT_JITTER`]) is added: Understory asks for at least a minute.
pub(crate) const RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(60);
/// The most added at random to [`RATE_LIMIT_BACKOFF`], so a fleet does not return in lockstep.
pub(crate) const RATE_LIMIT_JITTER: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured (larger values are clamped): 5 minutes, so that
/// `Retry-After: 99999` cannot fail every caller for a day.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);

/// How long to wait after a 429 whose `Retry-After` (already bounded) is `retry_after`: that,
/// or else [`RATE_LIMIT_BACKOFF`] plus `jitter` (in `0.0..1.0`) of [`RATE_LIMIT_JITTER`].
pub(crate) fn wait(retry_after: Option<Duration>, jitter: f64) -> Duration {
    retry_after.unwrap_or_else(|| RATE_LIMIT_BACKOFF + RATE_LIMIT_JITTER.mul_f64(jitter))
}

/// `Retry-After` in whole seconds, on a 429 or 503 only (RFC 6585, RFC 9110), clamped to
/// [`MAX_RETRY_AFTER`]; an HTTP date is ignored (the default backoff applies).
pub(crate) fn parse_retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(any(feature = "middleware", feature = "tower"))]
mod retry;
#[cfg(any(feature = "middleware", feature = "tower"))]
pub use retry::{DEFAULT_RATE_LIMIT_RETRIES, RateLimitRetry, TooManyRequests};

#[cfg(feature = "middleware")]
mod middleware;
#[cfg(feature = "tower")]
mod policy;

#[cfg(test)]
mod tests;
