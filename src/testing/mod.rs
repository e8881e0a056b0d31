//! A local stand-in for Understory's auth server and API, for tests.
//!
//! [`SandboxServer`] is a real HTTP/1.1 server on `127.0.0.1` (a random free port) that
//! answers like Understory's token endpoint (an Ory Hydra: `POST /oauth2/token` with the
//! `client_credentials` grant) **and** like its API (`/v1/...`, bearer tokens). Point a client
//! at [`SandboxServer::token_url`] and [`SandboxServer::api_base`] instead of the production
//! URLs and it can run its whole authentication flow without network access or real keys.
//!
//! On top of the happy path, the sandbox lets a test
//!
//! - inspect what the client sent ([`SandboxServer::token_requests_received`],
//!   [`RecordedRequest`]) and how often ([`SandboxServer::token_requests`]);
//! - make the token endpoint misbehave once or persistently ([`TokenFault`]: Hydra errors,
//!   rate limits with and without `Retry-After`, proxy error pages, malformed bodies, hangs,
//!   truncated and endless bodies, answers echoing the request and its secrets back, …) and
//!   the API too ([`ApiFault`]);
//! - revoke or expire tokens ([`SandboxServer::revoke_token`],
//!   [`SandboxServer::set_token_lifetime`]) to exercise re-authentication;
//! - slow either side down ([`SandboxServer::set_token_delay`]);
//! - change at run time which scopes the key may request
//!   ([`SandboxServer::set_allowed_scopes`]), as an administrator does in Backoffice.
//!
//! # The API
//!
//! Like Understory's, the API answers every error as `{"code": "...", "message": "..."}`, and
//! answers `401` with the code `UNAUTHORIZED` both to a token that is missing, unknown,
//! expired or revoked **and** to a valid token that lacks the endpoint's scope ("authorization
//! for the resource was not successful"). The endpoints, and the scope each requires:
//!
//! | Endpoint | Scope | Answer |
//! |---|---|---|
//! | `GET /v1/me` | none (any valid token) | `{"client_id": ..., "scopes": [...]}` |
//! | `GET /v1/bookings` | `booking.read` | `{"next": null, "items": []}` |
//! | `GET /v1/events`, `GET /v1/event-availabilities` | `event.read` | the same |
//! | `GET /v1/experiences` | `experience.read` | the same |
//! | `GET /v1/marketing-consents` | `marketing.read` | the same |
//! | `GET /v1/orders` | `order.read` | the same |
//! | `GET /v1/webhook-subscriptions` | `webhook.read` | the same |
//! | `POST /v1/webhook-subscriptions` | `webhook.write` | 201 with the request body |
//!
//! Another method on a listed path answers `405 METHOD_NOT_ALLOWED` (with `Allow`), any other
//! path `404 NOT_FOUND`. The scopes are in [`crate::scope`].
//!
//! Besides the token endpoint and `/v1/...`, two helper routes are served (neither is counted
//! or recorded): `GET /redirect?to=<url-encoded URL>[&status=307]` answers a redirect (302 by
//! default) to `to`, and `GET /echo-headers` answers the request's headers as a JSON object
//! mapping each lower-case name to the list of its values.
//!
//! **For tests only.** The sandbox speaks plain HTTP on the loopback interface, has a client
//! secret made up when it starts ([`SandboxServer::client_secret`]) and keeps every request it
//! receives in memory. It needs a Tokio runtime with I/O and timers enabled, and stops when
//! the last [`SandboxServer`] handle is dropped.
//!
//! # Testing a client
//!
//! [`SandboxServer::auth_builder`] gives an [`UnderstoryAuthBuilder`](crate::UnderstoryAuthBuilder)
//! already pointed at the sandbox, and [`SandboxServer::credentials`] the sandbox's key. With
//! `tracing-subscriber`, `RUST_LOG=understory_auth=debug` shows what the crate did.
//!
//! ```
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use understory_auth::testing::SandboxServer;
//! use understory_auth::{UnderstoryAuth, reqwest, reqwest_middleware, scope};
//!
//! let _ = tracing_subscriber::fmt().with_env_filter("understory_auth=debug").try_init();
//! let server = SandboxServer::start().await?;
//! let credentials = server.credentials().with_scopes([scope::OPENID, scope::BOOKING_READ]);
//! let auth: UnderstoryAuth = server.auth_builder(credentials).build()?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(auth).build();
//!
//! let bookings = client.get(format!("{}/v1/bookings", server.api_base())).send().await?;
//! assert_eq!(bookings.status(), 200);
//! // A scope the token was not granted: 401, as Understory answers.
//! let orders = client.get(format!("{}/v1/orders", server.api_base())).send().await?;
//! assert_eq!(orders.status(), 401);
//!
//! // One token for everything; the 401 cost one replacement and one resend.
//! assert_eq!(server.token_requests(), 2);
//! assert_eq!(server.api_requests(), 3);
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new()?.block_on(example())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Faults
//!
//! [`TokenFault`]s are queued for one token request each
//! ([`push_token_fault`](SandboxServer::push_token_fault)) before a persistent one
//! ([`set_token_fault`](SandboxServer::set_token_fault)); [`ApiFault`]s likewise for the API.
//!
//! ```
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use understory_auth::testing::{SandboxServer, TokenFault};
//!
//! let server = SandboxServer::start().await?;
//! let auth = server.auth()?;
//! server.push_token_fault(TokenFault::TooManyRequests { retry_after: Some(30) });
//!
//! let error = auth.token().await.unwrap_err();
//! assert!(error.is_rate_limited());
//! assert_eq!(error.retry_after(), Some(std::time::Duration::from_secs(30)));
//! assert!(server.issued_tokens().is_empty());
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new()?.block_on(example())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Keys and tokens that change
//!
//! [`revoke_token`](SandboxServer::revoke_token), [`set_token_lifetime`](SandboxServer::set_token_lifetime)
//! and [`set_allowed_scopes`](SandboxServer::set_allowed_scopes) change the sandbox while a
//! test runs; [`RecordedRequest`]s show what the client sent.
//!
//! ```
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use understory_auth::testing::SandboxServer;
//! use understory_auth::{reqwest, reqwest_middleware};
//!
//! let server = SandboxServer::start().await?;
//! let auth = server.auth()?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(auth.clone())
//!     .build();
//!
//! server.revoke_token(auth.token().await?.secret());
//! let me = client.get(format!("{}/v1/me", server.api_base())).send().await?;
//! assert_eq!(me.status(), 200); // replaced and resent
//!
//! let sent = server.token_requests_received();
//! assert_eq!(sent.len(), 2);
//! assert_eq!(sent[1].form_value("grant_type").as_deref(), Some("client_credentials"));
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new()?.block_on(example())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Webhooks
//!
//! With feature `webhooks`, [`WebhookSandbox`] signs messages as Understory does, for a
//! receiver under test:
//!
//! ```
//! # #[cfg(feature = "webhooks")]
//! # {
//! use understory_auth::testing::WebhookSandbox;
//! use understory_auth::webhooks::WebhookVerifier;
//!
//! let mut sandbox = WebhookSandbox::new();
//! let old = WebhookVerifier::new(sandbox.secret())?;
//! let message = sandbox.booking_created();
//! assert_eq!(old.verify(&sandbox.headers(&message), message.body())?.event_type, "v1.booking.created");
//! let tampered = message.tampered();
//! assert!(old.verify(&sandbox.headers(&tampered), tampered.body()).is_err());
//!
//! sandbox.rotate_secret(); // signs with both secrets until `end_rotation`
//! let message = sandbox.booking_created();
//! assert!(old.verify(&sandbox.headers(&message), message.body()).is_ok());
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Testing your own integration
//!
//! Let your code take its API base and its [`UnderstoryAuth`](crate::UnderstoryAuth) from
//! outside, and hand it the sandbox's in a test: [`SandboxServer::auth`] is one for the
//! sandbox's own key. `examples/testing.rs` in the repository is a complete recipe: an
//! integration over reqwest and one over tower, and `#[tokio::test]`s for them that
//! `cargo test --example testing --features test-util` runs. The crate's logs show in a
//! test's output (printed for failing tests) with one line:
//!
//! ```
//! let _ = tracing_subscriber::fmt().with_env_filter("understory_auth=debug").with_test_writer().try_init();
//! ```

use std::time::Duration;

use crate::scope;

mod api;
mod basic_auth;
mod builder;
mod faults;
mod recorded;
mod response;
mod routes;
mod server;
mod state;
mod token_endpoint;
#[cfg(feature = "webhooks")]
mod webhooks;

pub use builder::SandboxBuilder;
pub use faults::{ApiFault, EchoIn, TokenFault};
pub use recorded::RecordedRequest;
pub use server::SandboxServer;
#[cfg(feature = "webhooks")]
pub use webhooks::{WebhookMessage, WebhookSandbox};

/// The `audience` the sandbox's token endpoint requires, as Understory's does.
pub const AUDIENCE: &str = "https://api.understory.io";

/// The client id of a sandbox started without [`SandboxBuilder::client_id`].
pub const DEFAULT_CLIENT_ID: &str = "sandbox-client";

/// The scopes a sandbox client may request unless [`SandboxBuilder::allowed_scopes`] says
/// otherwise: every Understory scope except `offline` (which integration keys cannot use).
pub const DEFAULT_SCOPES: &[&str] = &[
    scope::OPENID,
    scope::BOOKING_READ,
    scope::BOOKING_WRITE,
    scope::EVENT_READ,
    scope::EXPERIENCE_READ,
    scope::MARKETING_READ,
    scope::ORDER_READ,
    scope::WEBHOOK_READ,
    scope::WEBHOOK_WRITE,
];

/// How long tokens stay valid unless [`SandboxBuilder::token_lifetime`] or
/// [`SandboxServer::set_token_lifetime`] say otherwise: 3599 seconds, so that the default
/// answer carries `"expires_in": 3599`, exactly what Understory's server answers for its
/// one-hour tokens.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3599);

/// The path of the token endpoint.
const TOKEN_PATH: &str = "/oauth2/token";
