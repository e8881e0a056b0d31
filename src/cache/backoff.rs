//! The failure window ([Cache behaviour](crate#cache-behaviour)): callers get a failed
//! fetch's error at once until a retry instant that backs off.

use std::time::Duration;

use tokio::time::Instant;

use crate::Error;
use crate::rate_limit;

/// The first retry delay after a transient failure (timeout, network, 5xx, 429).
pub const TRANSIENT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// The longest retry delay after transient failures (unless `Retry-After` asks for more).
pub const TRANSIENT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The first retry delay after a permanent failure (rejected credentials, scope, ...).
pub const PERMANENT_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// The longest retry delay after permanent failures.
pub const PERMANENT_BACKOFF_MAX: Duration = Duration::from_secs(120);

/// The last failure and how many came in a row (under the cache's lock).
#[derive(Default)]
pub(super) struct FailureWindow {
    failure: Option<Failure>,
    consecutive: u32,
}

pub(super) struct Failure {
    error: Error,
    failed_at: Instant,
    retry_at: Instant,
}

impl FailureWindow {
    /// The failure that forbids a new fetch at `now`, if any.
    pub(super) fn open_at(&self, now: Instant) -> Option<&Failure> {
        self.failure.as_ref().filter(|f| now < f.retry_at)
    }

    pub(super) fn close(&mut self) {
        self.failure = None;
        self.consecutive = 0;
    }

    /// Opens the window; with a valid token left, the retry comes in time to replace it
    /// (never sooner than a rate limit allows).
    pub(super) fn open(
        &mut self,
        error: &Error,
        now: Instant,
        jitter: f64,
        token_left: Option<Duration>,
    ) -> &Failure {
        self.consecutive = self.consecutive.saturating_add(1);
        let mut delay = backoff(error, self.consecutive, jitter);
        if let Some(left) = token_left.filter(|left| !left.is_zero()) {
            delay = delay.min((left / 2).max(rate_limit_floor(error)));
        }
        self.failure.insert(Failure {
            error: error.clone(),
            failed_at: now,
            retry_at: now + delay,
        })
    }
}

impl Failure {
    pub(super) fn retry_in(&self, now: Instant) -> Duration {
        self.retry_at.saturating_duration_since(now)
    }

    /// The error as a caller at `now` gets it, saying when the next attempt is (a rate limit
    /// as [`Error::RateLimited`]) and, if `cached`, how long ago the request failed.
    pub(super) fn error_at(&self, now: Instant, cached: bool) -> Error {
        let next_attempt_in = self.retry_in(now);
        if !self.error.is_rate_limited() {
            let failed_ago = cached.then(|| now.saturating_duration_since(self.failed_at));
            return self
                .error
                .clone()
                .with_next_attempt(next_attempt_in, failed_ago);
        }
        Error::RateLimited {
            next_attempt_in,
            cause: Box::new(self.error.clone()),
        }
    }
}

/// The window after the `attempt`-th failure in a row: a rate limit's [`rate_limit::wait`],
/// else exponential, half of it random, never shorter than a `Retry-After`.
pub(super) fn backoff(error: &Error, attempt: u32, jitter: f64) -> Duration {
    if error.is_rate_limited() {
        return rate_limit::wait(error.retry_after(), jitter);
    }
    let (base, max) = if error.is_transient() {
        (TRANSIENT_BACKOFF_BASE, TRANSIENT_BACKOFF_MAX)
    } else {
        (PERMANENT_BACKOFF_BASE, PERMANENT_BACKOFF_MAX)
    };
    let exponent = attempt.saturating_sub(1).min(16);
    let delay = base.saturating_mul(1 << exponent).min(max);
    let jittered = delay.mul_f64(0.5 + jitter * 0.5);
    jittered.max(error.retry_after().unwrap_or_default())
}

/// The shortest wait after `error`, even with a token about to expire.
fn rate_limit_floor(error: &Error) -> Duration {
    match error.is_rate_limited() {
        true => rate_limit::wait(error.retry_after(), 0.0),
        false => Duration::ZERO,
    }
}
