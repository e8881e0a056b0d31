//! Automatic OAuth2 access tokens for the [Understory](https://understory.io) API, for any
//! Rust HTTP client.
//!
//! Understory's internal integration keys (a client id and a secret) are traded for
//! hour-long access tokens with the OAuth2 `client_credentials` grant. This crate does that
//! for you, once, however many requests run at once, and attaches
//! `Authorization: Bearer <token>` to every request bound for the API:
//!
//! * [`UnderstoryAuth`] is a [`reqwest_middleware::Middleware`] (feature `middleware`, on by
//!   default);
//! * [`BearerAuthLayer`] is a [`tower`] layer for hyper-util clients, tonic channels and any
//!   `Service<http::Request<B>>` (feature `tower`, on by default);
//! * both share one token cache: one token request however many tasks need a token,
//!   refreshed ahead of expiry in the background, with backoff after failures.
//!
//! ```no_run
//! use understory_auth::{Credentials, UnderstoryAuth, reqwest, reqwest_middleware};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = UnderstoryAuth::new(Credentials::from_env()?);
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(auth)
//!     .build();
//! let me = client.get("https://api.understory.io/v1/me").send().await?;
//! println!("{}", me.status());
//! # Ok(()) }
//! ```
//!
//! # What happens on a 401
//!
//! Understory answers 401 both to a token it no longer accepts and to a valid token that
//! lacks the endpoint's scope. Both integrations report every answer to a request that
//! carried the token to one place in the cache, which applies this rule:
//!
//! 1. **A routine token** (the first one, or one fetched by the regular refresh) is dropped
//!    at its first 401, and the request is resent once with a new token. A revoked token
//!    therefore heals on the first rejected request: one token request, one resend. Requests
//!    rejected with a token that is no longer the cached one are resent with the current one,
//!    so a burst of 100 concurrent rejections causes one token request.
//! 2. **A replacement token** (one fetched because its predecessor was rejected) is kept
//!    while it works elsewhere: a request carrying it was answered with anything but 401 (or
//!    a 5xx) since its last 401, by the origin it was sent to (an answer from another origin
//!    a redirect led to never saw the token and does not count). Its 401s are returned to
//!    the caller as they came, status and body, without a resend. It is dropped only once it
//!    has been rejected, with no such acceptance in between, for its cooldown: 5 s for the
//!    first replacement, four times longer for each replacement dropped in a row (20 s, 80 s,
//!    320 s, ...), at most the token's lifetime.
//!    The count of replacements dropped in a row starts again once a routine token lives to
//!    its refresh without a 401.
//!
//! So an endpoint the key may not use, called 20 times a second for hours while other
//! endpoints accept the token, costs one extra token request per token lifetime (the first
//! 401 for each routine token) and one extra API request each time. If nothing else is
//! called at all, nothing tells a forbidden endpoint from a rejected token, and the growing
//! cooldown costs a few more at first: with hour-long tokens, five more in the first half
//! hour (after 5, 20, 80, 320 and 1280 s of rejections). A revoked replacement heals after
//! its cooldown. A key that gains the missing scope uses it at the latest with the next
//! regular refresh, about 10 % of the token's lifetime (at least 60 s) before it expires.
//!
//! Resending is safe for any method: a 401 means the server did not process the request
//! (RFC 9110, section 15.5.2). A request whose body is a stream cannot be resent and gets its
//! 401 back; [`UnderstoryAuth::with_unauthorized_retry`] turns the retry off. In tower stacks
//! the retry is the [`RetryOnUnauthorized`] policy, placed outside [`BearerAuthLayer`].
//! [`UnderstoryAuth::invalidate`] reports a 401 by hand and follows the same rule.
//!
//! # Security
//!
//! The client secret and tokens never appear in `Debug`, `Display`, errors or logs; the
//! `Authorization` header is marked sensitive; the token goes only to the configured API
//! origin, over HTTPS (plain HTTP only to loopback, for tests); the token request never
//! follows redirects. See `SECURITY.md`.
//!
//! # Features
//!
//! * `rustls` (default): TLS for the crate's token client via rustls; `native-tls` instead
//!   uses the platform's TLS (with both on, rustls is used, unless
//!   [`UnderstoryAuthBuilder::configure_token_client`] picks `tls_backend_native()`). Only
//!   with rustls is a TLS setup failure told apart as not transient.
//! * `middleware` (default): the reqwest-middleware integration.
//! * `tower` (default): [`BearerAuthLayer`].
//! * `shared-cache`: a second-level token cache shared by a fleet of processes
//!   ([`TokenStore`], [`UnderstoryAuthBuilder::shared_cache`]); `redis` adds [`RedisStore`].
//! * `test-util`: [`testing::SandboxServer`], a local stand-in for Understory's auth server
//!   and API for your integration tests.
//! * `webhooks`: the [`webhooks`] module, receiving Understory's webhooks:
//!   [`WebhookVerifier`](webhooks::WebhookVerifier) checks their Standard Webhooks
//!   signatures, [`WebhookLayer`](webhooks::WebhookLayer) does it in a tower (axum, hyper)
//!   server, with optional deduplication
//!   ([`MemoryWebhookDedup`](webhooks::MemoryWebhookDedup); with `redis`,
//!   `RedisWebhookDedup`);
//!   with `test-util`, `testing::WebhookSandbox` signs and delivers test webhooks.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod auth;
mod builder;
mod cache;
mod credentials;
mod error;
mod grant;
mod origin;
pub mod scope;
mod source;
mod token;

#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "middleware")]
mod middleware;
#[cfg(feature = "shared-cache")]
mod store;
#[cfg(feature = "webhooks")]
pub mod webhooks;

#[cfg(feature = "test-util")]
pub mod testing;

pub use auth::UnderstoryAuth;
pub use builder::{
    DEFAULT_API_BASE, DEFAULT_AUDIENCE, DEFAULT_EXPIRY_MARGIN, DEFAULT_REFRESH_AHEAD,
    DEFAULT_TOKEN_TIMEOUT, DEFAULT_TOKEN_URL, UnderstoryAuthBuilder,
};
pub use cache::CacheStats;
pub use credentials::{
    ClientAuthMethod, Credentials, ENV_CLIENT_ID, ENV_CLIENT_SECRET, ENV_SCOPES,
};
pub use error::Error;
pub use token::{AccessToken, TokenId};

#[cfg(feature = "tower")]
pub use layer::{BearerAuth, BearerAuthFuture, BearerAuthLayer, RetryOnUnauthorized};
pub use origin::SkipAuth;
#[cfg(feature = "redis")]
pub use store::RedisStore;
#[cfg(feature = "shared-cache")]
pub use store::{StoreError, TokenStore};

/// The `http` crate, re-exported: its types appear in this crate's API.
pub use http;
/// The `reqwest` crate, re-exported: its types appear in this crate's API.
///
/// It comes with the features this crate needs and no more: **no `json`** (nor `query`,
/// `form`, `stream`). For `RequestBuilder::json` or `Response::json`, add
/// `reqwest = { version = "0.13", features = ["json"] }` (and, for reqwest-middleware's
/// `RequestBuilder::json`, `reqwest-middleware = { version = "0.5", features = ["json"] }`)
/// to your own dependencies: Cargo merges the features into the same crate.
pub use reqwest;
/// The `reqwest-middleware` crate, re-exported: [`UnderstoryAuth`] implements its `Middleware`.
/// Without its `json` feature: see [`reqwest`](mod@reqwest).
#[cfg(feature = "middleware")]
pub use reqwest_middleware;
