//! [`UnderstoryAuth`] as a [`reqwest_middleware::Middleware`]: the bearer token on every
//! request bound for the API, and one retry when the API rejects it.
//!
//! # Which requests carry the token
//!
//! A request gets `Authorization: Bearer <token>` (the header value is marked sensitive) when
//! its origin (scheme, host and port) is the API's, or one added with
//! [`allow_origin`](crate::UnderstoryAuthBuilder::allow_origin). Every other request passes
//! through untouched, so one client can talk to the API and to other hosts. Also untouched:
//!
//! * a request that already has an `Authorization` header: it is sent as it is, and a 401
//!   answer to it is returned as it is;
//! * a request carrying the [`SkipAuth`](crate::SkipAuth) extension;
//! * a request whose `Host` header names another host or port than its URL.
//!
//! The token never follows a redirect to another origin either: reqwest removes
//! `Authorization` when a redirect changes scheme, host or port.
//!
//! The token comes from the cache without awaiting anything; a request waits only when there
//! is no usable token (the first request, after a rejection, or after an idle spell longer
//! than the token's life), and then for the single token request in flight, however many
//! requests are waiting.
//!
//! # 401: a new token and one resend, when the rule says so
//!
//! Every answer to a request that carried the token is reported to the cache, which decides
//! by the rule in the crate docs ("What happens on a 401") whether the token is dropped and
//! the request resent once with another one. A second 401 is returned to the caller as the
//! response: there is no loop. (If no new token can be had, the caller gets that error
//! instead of the 401.)
//!
//! Resending is safe whatever the method, `POST` included: a 401 means the server refused to
//! process the request because of its authentication (RFC 9110, section 15.5.2), so the first
//! attempt had no effect and the retry cannot do anything twice. To be able to resend, the
//! request is cloned before it is sent (its headers, and its body by reference count, without
//! copying the bytes). A request with a streaming body cannot be cloned and is not retried:
//! its 401 is returned as it came, and the token is judged all the same.
//!
//! A 401 from another origin, which a redirect led to, says nothing about the token (it was
//! not sent there) and is returned as it is; nor does any other answer from there count as
//! evidence that the token works. (The response's final URL is looked at only after a 401,
//! while the token is in doubt.)
//!
//! [`UnderstoryAuth::with_unauthorized_retry(false)`](UnderstoryAuth::with_unauthorized_retry)
//! turns the retry off, for instance when an outer middleware already retries 401s; the
//! rejected token is still judged.
//!
//! # Errors
//!
//! When no token can be had, the request is not sent and the caller gets
//! `reqwest_middleware::Error::Middleware` holding an [`Error`](crate::Error):
//! [`Error::find_in`](crate::Error::find_in) finds it, to tell a rejected key
//! ([`is_transient`](crate::Error::is_transient) is false) from an auth server that is down
//! or unreachable (true).
//!
//! ```
//! # #[cfg(feature = "test-util")]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use understory_auth::{Credentials, UnderstoryAuth, reqwest, reqwest_middleware};
//!
//! let sandbox = understory_auth::testing::SandboxServer::start().await?;
//! let auth = UnderstoryAuth::builder(Credentials::new(sandbox.client_id(), "wrong secret"))
//!     .token_url(sandbox.token_url())
//!     .api_base(sandbox.api_base())
//!     .build()?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(auth)
//!     .build();
//!
//! let result = client.get(format!("{}/v1/me", sandbox.api_base())).send().await;
//! let Err(err) = result else { return Err("expected an error".into()) };
//! let err = understory_auth::Error::find_in(&err).ok_or("not a token error")?;
//! assert_eq!(err.oauth_code(), Some("invalid_client"));
//! assert!(!err.is_transient()); // fix the key; retrying will not help
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # With other middleware
//!
//! Middleware runs in the order it is added. Put retries of transient failures
//! ([reqwest-retry](https://docs.rs/reqwest-retry)) and tracing
//! ([reqwest-tracing](https://docs.rs/reqwest-tracing)) outside, and `UnderstoryAuth` last:
//! then every attempt takes the current token, and the spans cover the whole exchange.
//!
//! ```
//! use std::time::Duration;
//! use reqwest_retry::{RetryTransientMiddleware, policies::ExponentialBackoff};
//! use reqwest_tracing::TracingMiddleware;
//! use understory_auth::{Credentials, UnderstoryAuth, reqwest, reqwest_middleware};
//!
//! let auth = UnderstoryAuth::new(Credentials::new("client-id", "client-secret"));
//! let retries = ExponentialBackoff::builder()
//!     .retry_bounds(Duration::from_millis(500), Duration::from_secs(30))
//!     .build_with_max_retries(3);
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(TracingMiddleware::default())
//!     .with(RetryTransientMiddleware::new_with_policy(retries))
//!     .with(auth)
//!     .build();
//! # let _ = client;
//! ```
//!
//! reqwest-retry wraps the errors it passes on in its `RetryError`, whose `source()` skips
//! the error it holds; with the feature `reqwest-retry`,
//! [`Error::find_in`](crate::Error::find_in) looks inside it too:
//!
//! ```
//! fn token_error(err: &reqwest_middleware::Error) -> Option<&understory_auth::Error> {
//!     understory_auth::Error::find_in(err)
//! }
//! ```

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use crate::auth::UnderstoryAuth;
use crate::origin::{Destination, authorize};
use crate::token::AccessToken;

/// Adds `Authorization: Bearer <token>` to every request bound for the API, and resends a
/// request once with a fresh token when the API answers 401.
///
/// Requests to other origins, requests that already have an `Authorization` header and
/// requests carrying [`SkipAuth`](crate::SkipAuth) pass through untouched. When no token can be had, the
/// request is not sent and the error is `reqwest_middleware::Error::Middleware` holding an
/// [`Error`](crate::Error). [`UnderstoryAuth::with_unauthorized_retry`] turns the retry off.
///
/// ```
/// # #[cfg(feature = "test-util")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use understory_auth::{Credentials, UnderstoryAuth, reqwest, reqwest_middleware};
///
/// let sandbox = understory_auth::testing::SandboxServer::start().await?;
/// let credentials = Credentials::new(sandbox.client_id(), sandbox.client_secret());
/// let auth = UnderstoryAuth::builder(credentials)
///     .token_url(sandbox.token_url())
///     .api_base(sandbox.api_base())
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth)
///     .build();
///
/// let me = client.get(format!("{}/v1/me", sandbox.api_base())).send().await?;
/// assert_eq!(me.status(), 200);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[async_trait::async_trait]
impl Middleware for UnderstoryAuth {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let destination = self.destination(request.url(), request.headers(), extensions);
        let Destination::Origin(origin) = destination else {
            return next.run(request, extensions).await;
        };
        // An answer from the origin the token went to, not from one a redirect led to.
        let from_origin = |response: &Response| self.allowed_origin(response.url()) == Some(origin);
        let retry = if self.retries_unauthorized() {
            request.try_clone()
        } else {
            None
        };

        let token = self.current_token().await?;
        let response = next
            .clone()
            .run(with_token(request, &token), extensions)
            .await?;
        if !self.answered(&token, response.status(), || from_origin(&response)) {
            return Ok(response);
        }
        tracing::debug!(
            token_id = %token.id(),
            retry = retry.is_some(),
            "the API rejected the access token (HTTP 401)"
        );
        let Some(request) = retry else {
            return Ok(response);
        };
        // Let go of the rejected exchange before starting the next one.
        drop(response);

        let token = self.current_token().await?;
        let response = next.run(with_token(request, &token), extensions).await?;
        self.answered(&token, response.status(), || from_origin(&response));
        Ok(response)
    }
}

impl UnderstoryAuth {
    /// A usable token (the cached one, without awaiting, or the single fetch's outcome),
    /// with a token error as a middleware error.
    async fn current_token(&self) -> Result<AccessToken> {
        self.token()
            .await
            .map_err(reqwest_middleware::Error::middleware)
    }
}

fn with_token(mut request: Request, token: &AccessToken) -> Request {
    authorize(request.headers_mut(), token);
    request
}
