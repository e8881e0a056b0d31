//! [`RateLimitRetry`], its one decision ([`RateLimitRetry::judge`]), and [`TooManyRequests`],
//! what a caller gets for a 429 that is not resent.

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use super::{MAX_RETRY_AFTER, parse_retry_after, wait};

/// How many times [`RateLimitRetry`] resends one request after a 429, by default.
pub const DEFAULT_RATE_LIMIT_RETRIES: u32 = 2;

/// Honours Understory's rate limit on API requests: after an HTTP 429 Too Many Requests it
/// waits for the server's `Retry-After` (at most 5 minutes) or, as Understory sends none and
/// asks to "back off for at least one minute", 60 s plus up to 30 s drawn at random, and
/// resends the request. Every other answer passes through untouched, for your own retry
/// policy to judge.
///
/// It is both a [reqwest-middleware](https://docs.rs/reqwest-middleware) `Middleware`
/// (feature `middleware`) and a [`tower::retry::Policy`] (feature `tower`), with the same
/// rule:
///
/// * only idempotent requests are resent (`GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`,
///   `DELETE`), unless [`retry_non_idempotent`](Self::retry_non_idempotent) says otherwise;
/// * at most [`max_retries`](Self::max_retries) times per request (default
///   [`DEFAULT_RATE_LIMIT_RETRIES`]);
/// * only if the wait is no longer than [`max_wait`](Self::max_wait) (default: any wait the
///   rule can ask for, at most 5 minutes).
///
/// A 429 it does not resend comes back at once, with a [`TooManyRequests`] that says when to
/// try again: as the request's error in reqwest-middleware, as an extension of the 429
/// response in tower. Requests to any origin are judged alike: use it on clients for the
/// Understory API.
///
/// # A caller that cannot wait
///
/// A web request cannot wait a minute for a rate limit to lift. Give its client
/// [`max_wait(Duration::ZERO)`](Self::max_wait) (or a few seconds): the 429 comes back at
/// once with its [`TooManyRequests`], whose [`retry_in`](TooManyRequests::retry_in) can
/// become a `Retry-After` of your own answer. Clients built from clones of one
/// [`UnderstoryAuth`](crate::UnderstoryAuth) share one token, so a background job's client
/// may keep the default and wait.
///
/// # reqwest-middleware, with reqwest-retry
///
/// Add it after [reqwest-retry](https://docs.rs/reqwest-retry)'s `RetryTransientMiddleware`
/// and before [`UnderstoryAuth`](crate::UnderstoryAuth):
///
/// ```
/// use std::time::Duration;
/// use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
/// use understory_auth::{Credentials, RateLimitRetry, UnderstoryAuth, reqwest, reqwest_middleware};
///
/// let auth = UnderstoryAuth::new(Credentials::new("client-id", "client-secret"));
/// let retries = ExponentialBackoff::builder()
///     .retry_bounds(Duration::from_millis(500), Duration::from_secs(30))
///     .build_with_max_retries(3);
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RetryTransientMiddleware::new_with_policy(retries)) // 5xx, timeouts, ...
///     .with(RateLimitRetry::default()) // 429: a minute or more
///     .with(auth) // every attempt with the current token
///     .build();
/// # let _ = client;
/// ```
///
/// Why a middleware of its own and not a `reqwest_retry::RetryableStrategy`: a strategy only
/// classifies an answer as transient or fatal, and the delay is chosen by the retry policy
/// (`ExponentialBackoff`), which sees neither the status nor `Retry-After`; a 429 classified
/// as transient would be resent after the policy's half second. So `RateLimitRetry` does the
/// waiting itself, inside `RetryTransientMiddleware`, whose default strategy then never sees
/// a 429: one resent is judged again here, and one not resent becomes
/// `reqwest_middleware::Error::Middleware` holding a [`TooManyRequests`], which reqwest-retry
/// treats as fatal (it retries 429 responses within a second or two, middleware errors never).
/// Nothing needs reqwest-retry as a dependency, and its policy stays yours for every other
/// failure. reqwest-retry wraps the error in its `RetryError`:
///
/// ```
/// # #[cfg(feature = "test-util")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use reqwest_retry::{RetryError, RetryTransientMiddleware, policies::ExponentialBackoff};
/// use understory_auth::{RateLimitRetry, TooManyRequests, reqwest, reqwest_middleware};
/// use understory_auth::testing::{ApiFault, SandboxServer};
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
///
/// let sandbox = SandboxServer::start().await?;
/// let auth = sandbox.auth_builder(sandbox.credentials()).build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RetryTransientMiddleware::new_with_policy(ExponentialBackoff::builder().build_with_max_retries(3)))
///     .with(RateLimitRetry::default().max_wait(Duration::ZERO)) // a web request: never wait
///     .with(auth)
///     .build();
///
/// sandbox.push_api_fault(ApiFault::TooManyRequests { retry_after: None });
/// let err = client.get(format!("{}/v1/me", sandbox.api_base())).send().await.unwrap_err();
/// let limited = too_many_requests(&err).ok_or("not a rate limit")?;
/// assert!(limited.retry_in() > Duration::from_secs(59)); // 60 s plus up to 30 s
/// assert_eq!(sandbox.api_requests(), 1); // and nothing resent
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// # tower, with `RetryOnUnauthorized`
///
/// Retry it outside [`BearerAuthLayer`](crate::BearerAuthLayer), like
/// [`RetryOnUnauthorized`](crate::RetryOnUnauthorized); the request body must be `Clone`
/// (e.g. `http_body_util::Full<Bytes>`). Each request is copied before it is sent (its body by
/// reference count), so that a 429 can be resent, or answered with its [`TooManyRequests`]
/// extension, whatever the method.
///
/// ```
/// # #[cfg(feature = "test-util")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower::{ServiceBuilder, ServiceExt};
/// use understory_auth::{BearerAuthLayer, RateLimitRetry, RetryOnUnauthorized, TooManyRequests};
/// use understory_auth::testing::{ApiFault, SandboxServer};
///
/// let sandbox = SandboxServer::start().await?;
/// let auth = sandbox.auth_builder(sandbox.credentials()).build()?;
/// let client = ServiceBuilder::new()
///     .retry(RateLimitRetry::default())
///     .retry(RetryOnUnauthorized::default())
///     .layer(BearerAuthLayer::new(auth))
///     .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
///
/// // Retry-After: 0, to keep the example short; Understory sends none (60 to 90 s then).
/// sandbox.push_api_fault(ApiFault::TooManyRequests { retry_after: Some(0) });
/// sandbox.push_api_fault(ApiFault::Unauthorized);
/// let me = http::Request::get(format!("{}/v1/me", sandbox.api_base())).body(Full::default())?;
/// let response = client.clone().oneshot(me).await?;
/// assert_eq!(response.status(), 200); // after a 429 and a 401
/// assert_eq!(sandbox.api_requests(), 3);
///
/// // A 429 that is not resent (POST is not idempotent) comes back with when to retry.
/// sandbox.push_api_fault(ApiFault::TooManyRequests { retry_after: Some(30) });
/// let create = http::Request::post(format!("{}/v1/webhook-subscriptions", sandbox.api_base()))
///     .body(Full::from("{}"))?;
/// let response = client.oneshot(create).await?;
/// assert_eq!(response.status(), 429);
/// let limited = response.extensions().get::<TooManyRequests>().ok_or("no extension")?;
/// assert!(limited.retry_in() <= Duration::from_secs(30));
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// # }).unwrap();
/// ```
///
/// # Logging
///
/// Each 429 it sees is logged at WARN (target `understory_auth::rate_limit::retry`), with
/// the wait in `wait_ms` and whether the request is resent in `resend`.
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
    /// The longest wait accepted before a resend: a 429 asking for longer comes back at
    /// once, with its [`TooManyRequests`]. `Duration::ZERO` never waits (unless the server
    /// sends `Retry-After: 0`). Default: 5 minutes, more than any wait the rule asks for, so
    /// every rate-limited request waits.
    ///
    /// ```
    /// use std::time::Duration;
    /// use understory_auth::RateLimitRetry;
    ///
    /// // For a client serving web requests: a 429 comes back at once.
    /// let policy = RateLimitRetry::default().max_wait(Duration::ZERO);
    /// # let _ = policy;
    /// ```
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// How many times one request is resent after a 429 (default
    /// [`DEFAULT_RATE_LIMIT_RETRIES`]); 0 never resends, and every 429 comes back with its
    /// [`TooManyRequests`].
    ///
    /// ```
    /// use understory_auth::RateLimitRetry;
    ///
    /// let policy = RateLimitRetry::default().max_retries(5);
    /// # let _ = policy;
    /// ```
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Whether requests with a method that is not idempotent (`POST`, `PATCH`, ...) are
    /// resent after a 429 too (default: no). A 429 should mean that the request was refused
    /// before it was processed, but only you know whether sending a `POST` twice is safe
    /// (e.g. behind an idempotency key).
    ///
    /// ```
    /// use understory_auth::RateLimitRetry;
    ///
    /// let policy = RateLimitRetry::default().retry_non_idempotent(true);
    /// # let _ = policy;
    /// ```
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

/// The API answered HTTP 429 Too Many Requests and the request was not resent: when to try
/// again, by Understory's rule (see [`RateLimitRetry`]).
///
/// [`RateLimitRetry`] gives it as the request's error in reqwest-middleware
/// (`reqwest_middleware::Error::Middleware`, inside reqwest-retry's `RetryError` if that
/// runs outside), and as an extension of the 429 response in tower.
///
/// ```
/// # #[cfg(all(feature = "test-util", feature = "middleware"))]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use understory_auth::{RateLimitRetry, TooManyRequests, reqwest, reqwest_middleware};
/// use understory_auth::testing::{ApiFault, SandboxServer};
///
/// let sandbox = SandboxServer::start().await?;
/// let auth = sandbox.auth_builder(sandbox.credentials()).build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RateLimitRetry::default().max_wait(Duration::from_secs(5)))
///     .with(auth)
///     .build();
///
/// sandbox.push_api_fault(ApiFault::TooManyRequests { retry_after: Some(120) });
/// let Err(reqwest_middleware::Error::Middleware(err)) =
///     client.get(format!("{}/v1/me", sandbox.api_base())).send().await
/// else {
///     return Err("expected a middleware error".into());
/// };
/// let limited = err.downcast_ref::<TooManyRequests>().ok_or("not a rate limit")?;
/// // Answer your own caller with `Retry-After: 120`, or schedule the retry.
/// assert_eq!(limited.retry_in().as_secs_f64().ceil(), 120.0);
/// assert!(limited.retry_at() > tokio::time::Instant::now());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
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
    /// When the request may be sent again: when the 429 arrived plus the wait the rule asks
    /// for (a tokio `Instant`, which follows tokio's paused clock in tests;
    /// `into_std()` makes it a `std::time::Instant`).
    ///
    /// ```
    /// use understory_auth::TooManyRequests;
    ///
    /// async fn retry_later(limited: &TooManyRequests) {
    ///     tokio::time::sleep_until(limited.retry_at()).await;
    /// }
    /// ```
    pub fn retry_at(&self) -> Instant {
        self.retry_at
    }

    /// How long from now until [`retry_at`](Self::retry_at) (zero once it has passed): for a
    /// `Retry-After` of your own answer, rounded up to whole seconds.
    ///
    /// ```
    /// use understory_auth::TooManyRequests;
    ///
    /// fn retry_after_header(limited: &TooManyRequests) -> String {
    ///     limited.retry_in().as_secs_f64().ceil().to_string()
    /// }
    /// ```
    pub fn retry_in(&self) -> Duration {
        self.retry_at.saturating_duration_since(Instant::now())
    }
}

/// Why a 429 was given back instead of resent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotResent {
    NotIdempotent(Method),
    Exhausted(u32),
    TooLong(Duration),
    NotCopied,
}

impl fmt::Display for NotResent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotResent::NotIdempotent(method) => write!(
                f,
                "{method} is not idempotent (RateLimitRetry::retry_non_idempotent opts in)"
            ),
            NotResent::Exhausted(retries) => write!(
                f,
                "it was resent {retries} times already (RateLimitRetry::max_retries)"
            ),
            NotResent::TooLong(max_wait) => write!(
                f,
                "that is longer than the longest wait accepted ({}s, RateLimitRetry::max_wait)",
                max_wait.as_secs()
            ),
            NotResent::NotCopied => f.write_str("its body is a stream, which cannot be resent"),
        }
    }
}
