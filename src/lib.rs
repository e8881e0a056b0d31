//! Automatic OAuth2 access tokens for the [Understory](https://understory.io) API, for any
//! Rust HTTP client.
//!
//! Understory's internal integration keys (a client id and a secret) are traded for
//! hour-long access tokens with the OAuth2 `client_credentials` grant. This crate does that
//! once, however many requests run at once, and attaches `Authorization: Bearer <token>` to
//! every request bound for the API: [`UnderstoryAuth`] is a
//! [`reqwest_middleware::Middleware`], [`BearerAuthLayer`] a [`tower`] layer (hyper-util,
//! tonic, any `Service<http::Request<B>>`); both share one token cache.
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
//! # Architecture
//!
//! A token's path, from the wire to the header, crosses five files, each read top to bottom:
//!
//! ```text
//! auth server ─► grant.rs           the token request; its answer parsed (pure) into a GrantedToken
//!                   │               (TokenSource::fetch; store/ asks a shared cache first, if set)
//!                   ▼
//!                cache/flight.rs    one spawned fetch per cache, its outcome shared by every waiter
//!                   ▼
//!                cache.rs           land: placed in time (schedule.rs), the AccessToken into the slot
//!                   ▼
//!                cache/local.rs     each thread's own copy of the slot's token, on a coarse clock
//!                   ▼
//! your request ◄─ middleware.rs     insert token.header_value(), if origin.rs allows the request;
//!                 | layer.rs        the answer goes back to cache/rejection.rs (the 401 rule)
//! ```
//!
//! The cache knows neither HTTP stacks nor where tokens come from; the integrations know
//! only "the header for this request" and "this answer came back". `schedule.rs` and
//! `redact.rs` are leaves; `error.rs` uses only `redact.rs` and `app/grant_store_error.rs`
//! (a leaf too). A [third-party app](#third-party-apps) is many caches:
//! `app/connections.rs` maps each connection's key to an `UnderstoryAuth` whose source, in
//! place of `grant.rs`, is `app/refresh.rs` (the `refresh_token` grant over the
//! [`GrantStore`]).
//!
//! # Which requests carry the token
//!
//! A request gets `Authorization: Bearer <token>` (marked sensitive) only when its origin
//! (scheme, host and port, compared exactly) is the
//! [`api_base`](UnderstoryAuthBuilder::api_base)'s or one added with
//! [`allow_origin`](UnderstoryAuthBuilder::allow_origin); those must be HTTPS (plain HTTP
//! only to loopback hosts, for tests). Every other request passes through untouched, and so
//! does one that already has an `Authorization` header, carries the [`SkipAuth`] extension,
//! has a `Host` header naming another host or port than its URI (or holding user info,
//! `x@host`), or whose origin cannot be checked (`CONNECT host:443`, `//host/path`). A
//! relative URI (`/v1/me`, as a tonic channel sends) gets the token only through
//! [`BearerAuthLayer::authorize_relative_uris`]. The token never follows a redirect to
//! another origin: reqwest drops `Authorization` there, and so does tower-http's
//! `FollowRedirect` (keep it outside [`BearerAuthLayer`], so that every hop is checked).
//!
//! # Cache behaviour
//!
//! Every clone of an [`UnderstoryAuth`], and every middleware and layer made from it,
//! shares one cache:
//!
//! * **Single flight.** Concurrent callers without a usable token share one token request,
//!   run in its own task: a caller that gives up does not cancel it for the others. A caller
//!   waits at most [`token_timeout`](UnderstoryAuthBuilder::token_timeout) plus a second
//!   (about twice that if the request's runtime shut down and it was started again).
//! * **Refresh ahead.** A token is replaced in the background before it stops being handed
//!   out, by 10 % of its lifetime, at least
//!   [`refresh_ahead`](UnderstoryAuthBuilder::refresh_ahead) ([`DEFAULT_REFRESH_AHEAD`]), at
//!   most half of it, and up to a fifth of that margin earlier at random, so that a fleet
//!   does not refresh in lockstep. Callers keep using the valid token meanwhile.
//! * **Expiry margin.** A token is not handed out in the last 5 % of its life, at most
//!   [`expiry_margin`](UnderstoryAuthBuilder::expiry_margin) ([`DEFAULT_EXPIRY_MARGIN`]).
//! * **Backoff.** After a failed token request, callers get the same error at once until the
//!   next attempt. Transient failures ([`Error::is_transient`]) back off from
//!   [`TRANSIENT_BACKOFF_BASE`] to [`TRANSIENT_BACKOFF_MAX`], rejected credentials or scopes
//!   from [`PERMANENT_BACKOFF_BASE`] to [`PERMANENT_BACKOFF_MAX`], doubling, half of it
//!   random. `Retry-After` is honoured on 429 and 503 answers only, up to 5 minutes; a 429
//!   without it backs off 60 s plus up to 30 s at random, and its callers get
//!   [`Error::RateLimited`]. While a valid token remains, a failed background refresh keeps
//!   it and tries again within half of the time it has left (never sooner than a rate limit
//!   allows). The first call after the window tries again: a fixed key or a recovered
//!   server is picked up without a restart.
//! * **The hot path** takes no lock, allocates nothing and writes nothing another thread
//!   reads: each thread keeps its own copy of the current token, checked against a coarse
//!   monotonic clock while the token is more than 100 ms from its refresh time. A test that
//!   pauses tokio's clock therefore sees a token come due only once the real clock is within
//!   100 ms of its refresh time, or after [`UnderstoryAuth::invalidate`].
//!
//! [`UnderstoryAuth::stats`] counts what the cache did; a cache shared by a fleet of
//! processes is [`UnderstoryAuthBuilder::shared_cache`] (see [`TokenStore`]).
//!
//! # Corporate networks
//!
//! The token request is sent by the crate's own reqwest client; API requests go through
//! yours. Without code:
//!
//! * **Proxies**: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (either case),
//!   read when [`build`](UnderstoryAuthBuilder::build) runs. A proxy set in code replaces
//!   them, `NO_PROXY` included, unless you add `.no_proxy(reqwest::NoProxy::from_env())`.
//!   System proxy settings (macOS, Windows) are not read (reqwest's `system-proxy` is off,
//!   unless your own reqwest dependency turns it on).
//! * **The trust store**: with `rustls` (default), the platform's verifier. On Linux and
//!   other Unix systems that is the system's CA bundle, which `SSL_CERT_FILE` (or
//!   `SSL_CERT_DIR`) *replaces*; macOS and Windows use the system's trust settings and
//!   ignore `SSL_CERT_FILE`.
//!
//! Everything else (a proxy, a private CA, mTLS, a resolver) is
//! [`configure_token_client`](UnderstoryAuthBuilder::configure_token_client). When the
//! token request cannot be sent, [`Error::Network`] names the innermost cause
//! (`Connection refused (os error 111)`, `invalid peer certificate: UnknownIssuer`); a TLS
//! setup failure is not transient: waiting will not fix it.
//!
//! # Errors
//!
//! Every failure to get a token is an [`Error`] whose message says what to do;
//! [`Error::is_transient`] tells "retry later" from "fix something". When no token can be
//! had the request is not sent. [`Error::find_in`] finds the crate's error in a
//! `reqwest_middleware::Error`, a `tower::BoxError` (`Error::find_in(&*err)`) or any error
//! chain. Put [reqwest-retry](https://docs.rs/reqwest-retry) and
//! [reqwest-tracing](https://docs.rs/reqwest-tracing) before [`UnderstoryAuth`] in the
//! chain, so that every attempt takes the current token and the spans cover the whole
//! exchange (with the feature `reqwest-retry`, [`Error::find_in`] looks inside its
//! `RetryError`, whose `source()` skips the error it holds):
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
//!
//! fn token_error(err: &reqwest_middleware::Error) -> Option<&understory_auth::Error> {
//!     understory_auth::Error::find_in(err)
//! }
//! ```
//!
//! # What happens on a 401
//!
//! Understory answers 401 both to a token it no longer accepts and to a valid token that
//! lacks the endpoint's scope. Both integrations report every answer to a request that
//! carried the token to the cache, which applies this rule:
//!
//! 1. **A routine token** (the first one, or one fetched by the regular refresh) is dropped
//!    at its first 401, and the request is resent once with a new token: a revoked token
//!    heals on the first rejected request. Requests rejected with a token that is no longer
//!    the cached one are resent with the current one, so a burst of 100 concurrent
//!    rejections causes one token request.
//! 2. **A replacement token** (fetched because its predecessor was rejected) is kept while
//!    it works elsewhere: a request carrying it was answered with anything but 401 (or a
//!    5xx) since its last 401, by the origin it was sent to (not one a redirect led to). Its
//!    401s are returned to the caller as they came, without a resend. It is dropped only
//!    once it has been rejected, with no such acceptance in between, for its cooldown:
//!    [`INVALIDATION_COOLDOWN`] (5 s) for the first replacement, four times longer for each
//!    replacement dropped in a row (20 s, 80 s, ...), at most the token's lifetime.
//!    The count starts again once a routine token lives to its refresh without a 401.
//!
//! So an endpoint the key may not use, called 20 times a second for hours while other
//! endpoints accept the token, costs one extra token request per token lifetime and one
//! extra API request each time. If nothing else is called at all, nothing tells a forbidden
//! endpoint from a rejected token, and the growing cooldown costs a few more at first: with
//! hour-long tokens, five more in the first half hour. A revoked replacement heals after
//! its cooldown; a key that gains the missing scope uses it at the latest with the next
//! [regular refresh](#cache-behaviour).
//!
//! A second 401 is returned to the caller as the response: there is no loop (and if no new
//! token can be had, the caller gets that error instead). Resending is safe for any method:
//! a 401 means the server did not process the request (RFC 9110, section 15.5.2). A request
//! whose body is a stream cannot be resent and gets its 401 back;
//! [`UnderstoryAuth::with_unauthorized_retry`] turns the retry off. In tower stacks the
//! retry is the [`RetryOnUnauthorized`] policy, placed outside [`BearerAuthLayer`].
//! [`UnderstoryAuth::invalidate`] reports a 401 by hand and follows the same rule.
//!
//! # Rate limits (HTTP 429)
//!
//! Understory asks integrations that get a 429 to "back off for at least one minute". The
//! crate does so for its own token requests ([`Error::RateLimited`]); for your API
//! requests, add [`RateLimitRetry`] to the reqwest-middleware chain or the tower stack: it
//! waits for `Retry-After` or 60 s plus up to 30 s at random before resending, and gives a
//! caller that cannot wait the 429 at once, as a [`TooManyRequests`] saying when to retry.
//!
//! # Third-party apps
//!
//! An app that serves many Understory companies (feature `app`, on by default) uses the
//! OAuth2 authorization code grant: [`UnderstoryApp`] sends each company's user to
//! Understory to consent ([`authorize`](UnderstoryApp::authorize): fresh `state` and PKCE
//! `S256` from the OS's CSPRNG), checks the callback and exchanges the code once
//! ([`complete`](UnderstoryApp::complete), which reads the company from `/v1/me`), and then
//! gives each connection its own token cache ([`connection`](UnderstoryApp::connection),
//! an [`UnderstoryAuth`]), or serves all of them through one client: the app is a
//! reqwest-middleware `Middleware` too, and each request names its [`Connection`].
//!
//! Understory (Ory Hydra) rotates refresh tokens: every refresh returns a new one, and
//! presenting an old one again revokes the grant. So a refresh token is presented at most
//! once: each connection's refreshes are single-flight, the [`GrantStore`]'s lease
//! ([`REFRESH_LEASE`]) keeps other processes out, and the rotated token is saved
//! (compare-and-swap on its version) before the new access token is handed out. A
//! transient failure keeps the old token and backs off as above. `invalid_grant` (consent
//! revoked, refresh token expired or reused) marks the connection as needing
//! re-authorisation, calls [`on_needs_reauthorization`](UnderstoryAppBuilder::on_needs_reauthorization),
//! and fails its requests with [`Error::NeedsReauthorization`] without further token
//! requests until the company connects again. Refresh tokens die unused after 720 h at
//! Hydra's defaults: run [`keep_alive`](UnderstoryApp::keep_alive) daily. At most
//! [`DEFAULT_MAX_CACHED_CONNECTIONS`] caches stay in memory (about 2.5 KB each); the least
//! recently used one is dropped (its grant stays in the store). A connection's cache is
//! made at its first request and each token's refresh instant is drawn at random within a
//! fifth of its margin, so a fleet with thousands of connections sends no wave of refreshes;
//! its processes share each connection's access token through the store.
//! [`MemoryGrantStore`] suits tests and a single process that lets companies re-consent
//! after a restart; a fleet uses `PostgresGrantStore` (feature `postgres`), see
//! [`GrantStore`].
//!
//! ```
//! # #[cfg(all(feature = "test-util", feature = "middleware"))]
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use understory_auth::{Connection, MemoryGrantStore, reqwest, reqwest_middleware};
//! use understory_auth::testing::SandboxServer;
//!
//! let sandbox = SandboxServer::start().await?;
//! let app = sandbox.app_builder().grant_store(MemoryGrantStore::new()).build()?;
//! for (company, key) in [("company-a", "tenant-1"), ("company-b", "tenant-2")] {
//!     let start = app.authorize(); // redirect the browser to start.url.as_str()
//!     let callback = sandbox.consent(start.url.as_str(), company).await?;
//!     app.complete(start.pending, &callback, key).await?;
//! }
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(app.clone())
//!     .build();
//! let me = client
//!     .get(format!("{}/v1/me", sandbox.api_base()))
//!     .with_extension(Connection::new("tenant-2"))
//!     .send()
//!     .await?;
//! let me: understory_auth::serde_json::Value = understory_auth::serde_json::from_slice(&me.bytes().await?)?;
//! assert_eq!(me["company_id"], "company-b");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Security
//!
//! The client secret and tokens never appear in `Debug`, `Display`, errors or logs; the
//! token goes only to the [allowed origins](#which-requests-carry-the-token); the token
//! request never follows redirects. The threat model, guarantees and non-guarantees are in
//! `SECURITY.md`, shipped with the crate's source.
//!
//! # Logging
//!
//! The crate logs with [`tracing`](https://docs.rs/tracing); each event's target is its
//! module path, so `understory_auth=debug` (e.g. in `RUST_LOG`) selects them all. At the
//! default `info` level a healthy process logs one line per token it obtains. Every event,
//! by target (`understory_auth::` left out):
//!
//! | Level | Target | Message | Fields |
//! |-------|--------|---------|--------|
//! | INFO span | `cache::flight` | `understory_auth.fetch_token`: one token request, with everything logged inside it (grant, store) | `background` |
//! | INFO | `cache` | obtained access token | `token_id`, `lifetime_secs`, `scopes`, `elapsed_ms` |
//! | WARN | `cache` | token request failed | `error`, `transient`, `retry_in_ms` (not for a replaced request), `elapsed_ms` |
//! | WARN | `cache` | token request rate limited by the auth server (HTTP 429) | `error`, `transient`, `retry_in_ms` (not for a replaced request), `elapsed_ms` |
//! | WARN | `cache` | a token request was not driven by its runtime past its deadline; it will be replaced | `grace_ms` |
//! | DEBUG | `cache` | a newer token is cached; not storing a late one | `token_id` |
//! | DEBUG | `cache` | access token rejected; it will be replaced | `token_id` |
//! | DEBUG | `cache::rejection` | a 401 for a token that replaced a rejected one; kept (the endpoint may need a scope the key lacks) | `token_id` |
//! | DEBUG | `middleware` | the API rejected the access token (HTTP 401) | `token_id`, `retry` |
//! | WARN | `rate_limit::retry` | the API is rate limiting requests (HTTP 429) | `wait_ms`, `resend` |
//! | DEBUG | `grant` | token answer has no usable expires_in; assuming the default lifetime | |
//! | DEBUG | `grant` | token answer's scope is not a list of RFC 6749 scopes; assuming the requested ones | |
//! | WARN | `store::source` | the shared token cache is unavailable; fetching tokens directly until it answers | `error` |
//! | DEBUG | `store::source` | the shared token cache still fails | `error` |
//! | INFO | `store::source` | the shared token cache answers again | |
//! | INFO | `store::source` | no token from the process fetching one for the shared cache; fetching | `waited_ms` |
//! | WARN | `store::source` | cannot encrypt the token for the shared cache; not sharing it | |
//! | WARN (then DEBUG for a minute) | `store::source` | ignoring a shared token cache entry larger than 98304 bytes, unread (not written by this crate) | `key` |
//! | WARN (then DEBUG for a minute) | `store::source` | ignoring a shared token cache entry that failed authentication (tampered with or corrupt) | `key` |
//! | DEBUG | `store::source` | passing over a shared token cache entry sealed under another client secret or by another version of the crate | |
//! | DEBUG | `store::source` | passing over a shared token no newer than the newest this process has seen | `generation`, `newest_seen` |
//! | DEBUG | `store::source` | took the access token from the shared cache | `left_secs`, `generation` |
//! | INFO | `app::understory_app` | connected an Understory company | `connection`, `company_id` |
//! | INFO | `app::understory_app` | disconnected an Understory company | `connection` |
//! | WARN | `app::refresh` | the auth server refused the connection's refresh token; it needs re-authorisation | `connection`, `error` |
//! | WARN | `app::refresh` | could not mark the connection as needing re-authorisation | `connection`, `error` |
//! | ERROR | `app::refresh` | the rotated refresh token could not be saved; the connection will need re-authorisation | `connection`, `error` |
//! | DEBUG | `app::refresh` | could not release the refresh lease; it runs out by itself | `connection`, `error` |
//! | WARN | `app::understory_app` | the grant could not be read; forgetting it without revoking it | `connection`, `error` |
//! | WARN (then DEBUG for a minute) | `app::grant_cipher` | a stored grant was refused and not used: *why* (it fails authentication; a key id the store was not given; larger than any grant the crate seals) | `connection` |
//! | WARN | `webhooks::layer` | refused a webhook | `status`, `error` |
//! | WARN | `webhooks::layer` | webhook deduplication failed; answering 503 so that it is redelivered | `webhook_id`, `error` |
//! | WARN | `webhooks::layer` | could not release a webhook id after its processing failed; its redeliveries are answered 409 until the lease runs out | `webhook_id`, `error` |
//! | WARN | `webhooks::layer` | could not record a webhook id as processed; a redelivery after the lease will be processed again | `webhook_id`, `error` |
//! | DEBUG | `webhooks::layer` | acknowledged a redelivered webhook without processing it | `webhook_id` |
//! | DEBUG | `webhooks::layer` | a webhook with this id is being processed; answering 409 so that it is redelivered later | `webhook_id` |
//! | DEBUG | `webhooks::layer` | a webhook's processing was dropped before it finished; releasing its id | `webhook_id` |
//! | DEBUG | `testing::server` | sandbox: accepting a connection failed / could not disable Nagle's algorithm / connection closed with an error | `error` |
//!
//! The fields: `error`, the error's `Display` (server and store text sanitised);
//! `transient`, [`Error::is_transient`]; `retry_in_ms`, how long callers get the error at
//! once (absent when a newer request replaced the failed one); `elapsed_ms`, `grace_ms`,
//! `waited_ms`, `wait_ms`: how long the request took, the cache waited (for a stranded fetch,
//! another process), or [`RateLimitRetry`] waits after a 429 (`resend`: whether it resends);
//! `token_id`, a [`TokenId`] (a count, not derived from the token), `lifetime_secs`,
//! `left_secs`, `scopes`; `background`, a refresh ahead of expiry; `retry`, whether a
//! rejected request is resent; `key`, `generation`, `newest_seen`: a shared entry's store
//! key (hashes) and generations; `connection`, `company_id`: a third-party app's key for a
//! connection and Understory's company id; `status`, `webhook_id`: a webhook's answer and
//! verified id. No field ever holds the client secret, an access token, a refresh token, an
//! authorization code, a PKCE verifier or a webhook secret, in whole or
//! in part, nor a request's headers or body.
//!
//! # Features
//!
//! * `rustls` (default): the token client's TLS (`native-tls`: the platform's; with both,
//!   rustls unless [`configure_token_client`](UnderstoryAuthBuilder::configure_token_client)
//!   picks `tls_backend_native()`); only rustls tells a TLS setup failure as not transient.
//! * `middleware` (default): [`UnderstoryAuth`] as reqwest middleware; `reqwest-retry`: see
//!   [Errors](#errors). `tower` (default): [`BearerAuthLayer`]. Either: [`RateLimitRetry`].
//! * `shared-cache`: a token cache shared by a fleet ([`TokenStore`]); `redis` adds
//!   [`RedisStore`].
//! * `postgres`: [`PostgresGrantStore`], third-party apps' grants in PostgreSQL, encrypted
//!   under a [`GrantKey`]; `redis` with `app`: `RedisGrantStore`, the same in Redis.
//! * `test-util`: [`testing::SandboxServer`], a local stand-in for Understory's auth server
//!   and API (with `webhooks`, `testing::WebhookSandbox`).
//! * `webhooks`: the [`webhooks`] module: [`WebhookVerifier`](webhooks::WebhookVerifier),
//!   [`WebhookLayer`](webhooks::WebhookLayer) for tower servers, deduplication
//!   ([`MemoryWebhookDedup`](webhooks::MemoryWebhookDedup); with `redis`,
//!   `RedisWebhookDedup`).

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
mod rate_limit;
mod redact;
mod schedule;
pub mod scope;
mod source;
mod token;

#[cfg(feature = "app")]
mod app;
#[cfg(feature = "tower")]
mod layer;
#[cfg(feature = "middleware")]
mod middleware;
#[cfg(feature = "redis")]
mod redis_connection;
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
pub use cache::{
    CacheStats, INVALIDATION_COOLDOWN, PERMANENT_BACKOFF_BASE, PERMANENT_BACKOFF_MAX,
    TRANSIENT_BACKOFF_BASE, TRANSIENT_BACKOFF_MAX,
};
pub use credentials::{
    ClientAuthMethod, Credentials, ENV_CLIENT_ID, ENV_CLIENT_SECRET, ENV_SCOPES,
};
pub use error::Error;
pub use token::{AccessToken, TokenId};

#[cfg(all(feature = "app", any(feature = "postgres", feature = "redis")))]
pub use app::GrantKey;
#[cfg(feature = "app")]
pub use app::{
    AuthorizationStart, AuthorizeUrl, Company, Connection, DEFAULT_AUTHORIZATION_LIFETIME,
    DEFAULT_AUTHORIZE_URL, DEFAULT_MAX_CACHED_CONNECTIONS, DEFAULT_REVOCATION_URL, GrantState,
    GrantStore, GrantStoreError, GrantSummary, KeepAlive, ME_PATH, MemoryGrantStore,
    PendingAuthorization, REFRESH_LEASE, RefreshToken, SaveOutcome, StoredAccessToken, StoredGrant,
    UnderstoryApp, UnderstoryAppBuilder,
};
#[cfg(all(feature = "app", feature = "tower"))]
pub use app::{ConnectionAuth, ConnectionAuthFuture, ConnectionAuthLayer};
#[cfg(feature = "postgres")]
pub use app::{POSTGRES_QUERY_TIMEOUT, PostgresGrantStore};
#[cfg(all(feature = "app", feature = "redis"))]
pub use app::{REDIS_GRANT_TIMEOUT, RedisGrantStore};
/// The `deadpool-postgres` crate (and through it `tokio-postgres`), re-exported: a
/// [`PostgresGrantStore`] takes its `Pool`, so build the pool with this version.
#[cfg(feature = "postgres")]
pub use deadpool_postgres;
#[cfg(feature = "tower")]
pub use layer::{BearerAuth, BearerAuthFuture, BearerAuthLayer, RetryOnUnauthorized};
pub use origin::SkipAuth;
#[cfg(any(feature = "middleware", feature = "tower"))]
pub use rate_limit::{DEFAULT_RATE_LIMIT_RETRIES, RateLimitRetry, TooManyRequests};
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
/// The `serde_json` crate, re-exported: its `Value` and `Map` appear in this crate's API
/// (webhook payloads, `testing::WebhookSandbox`).
pub use serde_json;

/// The README's Rust recipes, compiled as doctests so that they stay as written.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
