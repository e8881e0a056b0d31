//! A local stand-in for Understory's auth server and API, for tests.
//!
//! [`SandboxServer`] is a real HTTP/1.1 server on `127.0.0.1` (a random free port) that
//! answers like Understory's token endpoint (an Ory Hydra: `POST /oauth2/token` with the
//! `client_credentials` grant) **and** like its API (`/v1/...`, bearer tokens). Point a client
//! at [`SandboxServer::token_url`] and [`SandboxServer::api_base`] and it runs its whole
//! authentication flow without network access or real keys. A test can also inspect what
//! the client sent ([`RecordedRequest`]), make either side fail ([`TokenFault`], [`ApiFault`])
//! or slow down, and revoke or expire tokens ([`SandboxServer::revoke_token`],
//! [`SandboxServer::set_token_lifetime`]) and change the key's scopes while it runs.
//!
//! **For tests only.** Plain HTTP on the loopback interface, a client secret made up at start
//! ([`SandboxServer::client_secret`]), every request kept in memory. It needs a Tokio runtime
//! with I/O and timers, and stops when the last [`SandboxServer`] handle is dropped.
//!
//! # The API
//!
//! Like Understory's, the API answers every error as `{"code": "...", "message": "..."}`, and
//! `401 UNAUTHORIZED` both to a token that is missing, unknown, expired or revoked **and** to
//! a valid token that lacks the endpoint's scope. The endpoints (scopes in [`crate::scope`]):
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
//! path `404 NOT_FOUND`. Two helper routes are neither counted nor recorded:
//! `GET /redirect?to=<url-encoded URL>[&status=307]` redirects (302 by default) to `to`, and
//! `GET /echo-headers` answers the request's headers as `{"name": ["value", ...]}`.
//!
//! # Testing a client
//!
//! [`SandboxServer::auth_builder`] gives an [`UnderstoryAuthBuilder`](crate::UnderstoryAuthBuilder)
//! pointed at the sandbox, [`SandboxServer::credentials`] its key and [`SandboxServer::auth`]
//! both at once. The crate's logs show in a test's output with `tracing-subscriber`:
//!
//! ```
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use understory_auth::testing::SandboxServer;
//! use understory_auth::{UnderstoryAuth, reqwest, reqwest_middleware, scope};
//!
//! let _ = tracing_subscriber::fmt().with_env_filter("understory_auth=debug").with_test_writer().try_init();
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
//! // What the client sent.
//! let sent = &server.token_requests_received()[0];
//! assert_eq!(sent.form_value("scope").as_deref(), Some("openid booking.read"));
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new()?.block_on(example())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! To test your own integration, let your code take its API base and its
//! [`UnderstoryAuth`](crate::UnderstoryAuth) from outside and hand it the sandbox's:
//! `examples/testing.rs` in the repository is a complete recipe over reqwest and tower, run
//! by `cargo test --example testing --features test-util`.
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

use std::time::Duration;

use crate::scope;

mod api;
mod basic_auth;
mod body;
mod builder;
mod fault_answers;
mod faults;
mod oauth_error;
mod random;
mod recorded;
mod response;
mod routes;
mod server;
mod state;
mod token_endpoint;
mod tokens;
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
