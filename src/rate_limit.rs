//! Understory's rate limit: how long to back off after an HTTP 429, for the crate's own token
//! requests (the cache) and for API requests ([`RateLimitRetry`]).
//!
//! Understory asks: "If you reach the limit you will receive an HTTP status 429 Too Many
//! Requests. In that case, please ensure that you do not retry requests immediately but
//! instead back off for at least one minute." It documents no `Retry-After`. The rule, in one
//! place ([`wait`]): the server's `Retry-After` if it sent one (whole seconds, at most
//! [`MAX_RETRY_AFTER`]), otherwise [`RATE_LIMIT_BACKOFF`] plus up to [`RATE_LIMIT_JITTER`]
//! drawn at random, so that a fleet does not come back in lockstep.
//!
//! [`RateLimitRetry`] applies it to API requests: a reqwest-middleware `Middleware`
//! (`middleware.rs`) and a `tower::retry::Policy` (`policy.rs`) around one decision,
//! [`RateLimitRetry::judge`].

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};

/// How long to wait after a 429 without `Retry-After`, before the random part
/// ([`RATE_LIMIT_JITTER`]) is added: Understory asks for at least a minute.
pub(crate) const RATE_LIMIT_BACKOFF: Duration = Duration::from_secs(60);
/// The most added at random to [`RATE_LIMIT_BACKOFF`], so a fleet does not return in lockstep.
pub(crate) const RATE_LIMIT_JITTER: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured: 5 minutes; larger values are clamped to it. A server
/// answering `Retry-After: 99999` to a process without a valid token would otherwise make
/// every caller fail at once for a day.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(5 * 60);

/// How long to wait after a 429 whose `Retry-After` (already bounded) is `retry_after`: that,
/// or else [`RATE_LIMIT_BACKOFF`] plus `jitter` (in `0.0..1.0`) of [`RATE_LIMIT_JITTER`].
pub(crate) fn wait(retry_after: Option<Duration>, jitter: f64) -> Duration {
    retry_after.unwrap_or_else(|| RATE_LIMIT_BACKOFF + RATE_LIMIT_JITTER.mul_f64(jitter))
}

/// `Retry-After` in seconds, honoured only on 429 and 503 (the statuses RFC 9110 and RFC 6585
/// give it a meaning for; on any other answer it is ignored), clamped to
/// [`MAX_RETRY_AFTER`]. RFC 9110 also allows an HTTP date, which is ignored: the default
/// backoff applies then.
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
