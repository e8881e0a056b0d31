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
//! When the API rejects a token, the integration drops it from the cache (only if it is
//! still the cached one, so a burst of 401s causes one new token request), and the reqwest
//! middleware resends the request once with a fresh token. That is safe for any method: a
//! 401 means the server did not process the request (RFC 9110, section 15.5.2). A request
//! whose body is a stream cannot be resent and gets its 401 back;
//! [`UnderstoryAuth::with_unauthorized_retry`] turns the retry off. In tower stacks the
//! retry is the [`RetryOnUnauthorized`] policy, placed outside [`BearerAuthLayer`].
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

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod auth;
mod builder;
mod cache;
mod credentials;
mod error;
mod grant;
mod origin;
mod token;

#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "middleware")]
mod middleware;
#[cfg(feature = "shared-cache")]
mod store;

#[cfg(feature = "test-util")]
pub mod testing;

pub use auth::UnderstoryAuth;
pub use builder::{
    CRATE_USER_AGENT, DEFAULT_API_BASE, DEFAULT_AUDIENCE, DEFAULT_TOKEN_TIMEOUT, DEFAULT_TOKEN_URL,
    UnderstoryAuthBuilder,
};
pub use cache::{
    CacheStats, INVALIDATION_COOLDOWN, MAX_EXPIRY_SKEW, MIN_REFRESH_MARGIN, PERMANENT_BACKOFF_BASE,
    PERMANENT_BACKOFF_MAX, REFRESH_JITTER, TRANSIENT_BACKOFF_BASE, TRANSIENT_BACKOFF_MAX,
};
pub use credentials::{
    ClientAuthMethod, Credentials, ENV_CLIENT_ID, ENV_CLIENT_SECRET, ENV_SCOPES,
};
pub use error::Error;
pub use grant::{
    DEFAULT_TOKEN_LIFETIME, MAX_RETRY_AFTER, MAX_TOKEN_LIFETIME, MAX_TOKEN_RESPONSE_BYTES,
    MIN_TOKEN_LIFETIME,
};
pub use token::{AccessToken, TokenId};

#[cfg(feature = "tower")]
pub use layer::{BearerAuth, BearerAuthFuture, BearerAuthLayer, RetryOnUnauthorized};
#[cfg(any(feature = "middleware", feature = "tower"))]
pub use origin::SkipAuth;
#[cfg(feature = "redis")]
pub use store::RedisStore;
#[cfg(feature = "shared-cache")]
pub use store::{
    SHARED_FETCH_WAIT, SHARED_KEY_PREFIX, SHARED_POLL_INTERVAL, STORE_TIMEOUT, StoreError,
    TokenStore,
};

/// The `http` crate, re-exported: its types appear in this crate's API.
pub use http;
/// The `reqwest` crate, re-exported: its types appear in this crate's API.
pub use reqwest;
/// The `reqwest-middleware` crate, re-exported: [`UnderstoryAuth`] implements its `Middleware`.
#[cfg(feature = "middleware")]
pub use reqwest_middleware;
