//! [`RateLimitRetry`], its one decision ([`RateLimitRetry::judge`]), and [`TooManyRequests`].

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use super::{MAX_RETRY_AFTER, parse_retry_after, wait};

/// How many times [`RateLimitRetry`] resends one request after a 429, by default.
pub const DEFAULT_RATE_LIMIT_RETRIES: u32 = 2;

/// Honours Understory's [rate limit](crate#rate-limits-http-429) on API requests: after an
/// HTTP 429 it waits as the rule says and resends the request (every other answer is left to
/// your own retry policy). A reqwest-middleware `Middleware` (feature `middleware`) and a
/// [`tower::retry::Policy`] (feature `tower`), it resends a request
///
/// * only if its method is idempotent (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`),
///   unless [`retry_non_idempotent`](Self::retry_non_idempotent);
/// * at most [`max_retries`](Self::max_retries) times (default [`DEFAULT_RATE_LIMIT_RETRIES`]);
/// * only if the wait is at most [`max_wait`](Self::max_wait) (default 5 minutes: any wait).
///
/// A 429 it does not resend comes back at once with a [`TooManyRequests`] saying when to try
/// again. A caller that cannot wait a minute (a web request) wants `max_wait(Duration::ZERO)`:
/// clones of one [`UnderstoryAuth`](crate::UnderstoryAuth) share one token, so a background
/// job's client may keep the default and wait. Requests to any origin are judged alike: use it
/// on clients for the Understory API.
///
/// # reqwest-middleware
///
/// Put it after reqwest-retry's `RetryTransientMiddleware` and before
/// [`UnderstoryAuth`](crate::UnderstoryAuth). It waits itself: a reqwest-retry
/// `RetryableStrategy` cannot, as its policy sees neither the status nor `Retry-After`. A 429
/// it gives back is the request's error, `reqwest_middleware::Error::Middleware` holding the
/// [`TooManyRequests`], which reqwest-retry does not retry and wraps in its `RetryError`:
///
/// ```
/// use std::time::Duration;
/// use reqwest_retry::{RetryError, RetryTransientMiddleware, policies::ExponentialBackoff};
/// use understory_auth::{Credentials, RateLimitRetry, TooManyRequests, UnderstoryAuth};
/// use understory_auth::{reqwest, reqwest_middleware};
///
/// let auth = UnderstoryAuth::new(Credentials::new("client-id", "client-secret"));
/// let retries = ExponentialBackoff::builder().build_with_max_retries(3);
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RetryTransientMiddleware::new_with_policy(retries)) // 5xx, timeouts, ...
///     .with(RateLimitRetry::default().max_wait(Duration::ZERO)) // a web request: never wait
///     .with(auth) // every attempt with the current token
///     .build();
/// # let _ = client;
///
/// fn too_many_requests(err: &reqwest_middleware::Error) -> Option<&TooManyRequests> {
///     let reqwest_middleware::Error::Middleware(err) = err else { return None };
///     match err.downcast_ref::<RetryError>() {
///         Some(RetryError::Error(inner) | RetryError::WithRetries { err: inner, .. }) => {
///             too_many_requests(inner)
///         }
///         _ => err.downcast_ref(),
///     }
/// }
/// ```
///
/// # tower
///
/// Retry it outside [`BearerAuthLayer`](crate::BearerAuthLayer), like
/// [`RetryOnUnauthorized`](crate::RetryOnUnauthorized); the request body must be `Clone`
/// (e.g. `http_body_util::Full<Bytes>`). A 429 it does not resend is the response, with its
/// [`TooManyRequests`] in the extensions.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// use understory_auth::{BearerAuthLayer, Credentials, RateLimitRetry, RetryOnUnauthorized};
/// use understory_auth::{TooManyRequests, UnderstoryAuth};
///
/// let auth = UnderstoryAuth::new(Credentials::new("client-id", "client-secret"));
/// let client = tower::ServiceBuilder::new()
///     .retry(RateLimitRetry::default().max_retries(3))
///     .retry(RetryOnUnauthorized::default())
///     .layer(BearerAuthLayer::new(auth))
///     .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
/// # let _ = client;
///
/// fn retry_after(response: &http::Response<hyper::body::Incoming>) -> Option<u64> {
///     let limited = response.extensions().get::<TooManyRequests>()?;
///     Some(limited.retry_in().as_secs_f64().ceil() as u64)
/// }
/// ```
#[derive(Clone)]
pub struct RateLimitRetry {
    max_wait: Duration,
    max_retries: u32,
    retry_non_idempotent: bool,
    /// Draws the random part of the wait in `0.0..1.0` (tests inject a constant).
    jitter: fn() -> f64,
    /// As a tower policy: how many times this request was resent (tower clones the policy
    /// for each request).
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(super) retries: u32,
}

impl Default for RateLimitRetry {
    fn default() -> Self {
        RateLimitRetry {
            max_wait: MAX_RETRY_AFTER,
            max_retries: DEFAULT_RATE_LIMIT_RETRIES,
            retry_non_idempotent: false,
            jitter: fastrand::f64,
            retries: 0,
        }
    }
}

impl fmt::Debug for RateLimitRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitRetry")
            .field("max_wait", &self.max_wait)
            .field("max_retries", &self.max_retries)
            .field("retry_non_idempotent", &self.retry_non_idempotent)
            .finish_non_exhaustive()
    }
}

impl RateLimitRetry {
    /// The longest wait accepted before a resend; a 429 asking for longer comes back at once.
    /// `Duration::ZERO` never waits (unless the server sends `Retry-After: 0`). Default: 5
    /// minutes, any wait the rule asks for.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// How many times one request is resent after a 429 (default
    /// [`DEFAULT_RATE_LIMIT_RETRIES`]); 0 never resends.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Whether requests with a method that is not idempotent (`POST`, `PATCH`, ...) are
    /// resent too (default: no): only you know whether sending one twice is safe (e.g. behind
    /// an idempotency key).
    pub fn retry_non_idempotent(mut self, retry: bool) -> Self {
        self.retry_non_idempotent = retry;
        self
    }

    /// A copy drawing every random part as `jitter`, for exact instants in tests.
    #[cfg(test)]
    pub(crate) fn with_jitter(mut self, jitter: fn() -> f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Whether a request with `method`, resent `retries` times so far, may be resent once
    /// more after a 429 (if the wait allows): so whether to keep a copy of it.
    #[cfg(feature = "middleware")]
    pub(crate) fn may_resend(&self, method: &Method, retries: u32) -> bool {
        retries < self.max_retries && (self.retry_non_idempotent || is_idempotent(method))
    }

    /// The decision for an answer `status`, `headers` to a request with `method`, resent
    /// `retries` times so far, of which a copy was kept (`copied`): `None` if it is not a 429
    /// (the answer is the caller's), `Some(Ok(wait))` to resend it after `wait`, and
    /// `Some(Err(_))` to give the 429 back at once.
    pub(crate) fn judge(
        &self,
        method: &Method,
        retries: u32,
        copied: bool,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<Result<Duration, TooManyRequests>> {
        if status != StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        let wait = wait(parse_retry_after(status, headers), (self.jitter)());
        let not_resent = if !self.retry_non_idempotent && !is_idempotent(method) {
            Some(NotResent::NotIdempotent(method.clone()))
        } else if retries >= self.max_retries {
            Some(NotResent::Exhausted(retries))
        } else if wait > self.max_wait {
            Some(NotResent::TooLong(self.max_wait))
        } else if !copied {
            Some(NotResent::NotCopied)
        } else {
            None
        };
        tracing::warn!(
            wait_ms = wait.as_millis() as u64,
            resend = not_resent.is_none(),
            "the API is rate limiting requests (HTTP 429)"
        );
        Some(match not_resent {
            None => Ok(wait),
            Some(not_resent) => Err(TooManyRequests {
                wait,
                retry_at: Instant::now() + wait,
                not_resent,
            }),
        })
    }
}

/// RFC 9110, section 9.2.2.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The API answered HTTP 429 Too Many Requests and [`RateLimitRetry`] did not resend the
/// request: when to try again. It is the request's error in reqwest-middleware (inside
/// reqwest-retry's `RetryError` if that runs outside) and an extension of the 429 response in
/// tower; the examples are on [`RateLimitRetry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Understory API is rate limiting this key (HTTP 429 Too Many Requests) and asked to wait {}s; the request was not resent, since {not_resent}; try again after retry_at()",
    wait.as_secs()
)]
pub struct TooManyRequests {
    wait: Duration,
    retry_at: Instant,
    not_resent: NotResent,
}

impl TooManyRequests {
    /// When the request may be sent again: when the 429 arrived plus the wait (a tokio
    /// `Instant`, following tokio's paused clock in tests; `into_std()` converts it).
    pub fn retry_at(&self) -> Instant {
        self.retry_at
    }

    /// How long from now until [`retry_at`](Self::retry_at) (zero once it has passed); for a
    /// `Retry-After` of your own, round it up: `retry_in().as_secs_f64().ceil()`.
    pub fn retry_in(&self) -> Duration {
        self.retry_at.saturating_duration_since(Instant::now())
    }
}

/// Why a 429 was given back instead of resent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NotResent {
    #[error("{0} is not idempotent (RateLimitRetry::retry_non_idempotent opts in)")]
    NotIdempotent(Method),
    #[error("it was resent {0} times already (RateLimitRetry::max_retries)")]
    Exhausted(u32),
    #[error(
        "that is longer than the longest wait accepted ({}s, RateLimitRetry::max_wait)",
        .0.as_secs()
    )]
    TooLong(Duration),
    #[error("its body is a stream, which cannot be resent")]
    NotCopied,
}
