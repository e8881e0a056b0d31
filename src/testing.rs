//! A local stand-in for Understory's auth server and API, for tests.
//!
//! [`SandboxServer`] is a real HTTP/1.1 server on `127.0.0.1` (a random free port) that
//! answers like Understory's auth server (an Ory Hydra: `POST /oauth2/token` with the
//! integration key's `client_credentials` grant, and third-party apps' authorization code
//! flow, see [below](#third-party-apps)) **and** like its API (`/v1/...`, bearer tokens, each
//! token acting for one company). Point a client
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
//! | `GET /v1/me` | none (any valid token) | `{"company_id", "company_name", "user_id", "email", "client_id", "scopes"}` |
//! | `GET /v1/bookings` | `booking.read` | `{"next": null, "items": []}` |
//! | `GET /v1/events`, `GET /v1/event-availabilities` | `event.read` | the same |
//! | `GET /v1/experiences` | `experience.read` | the same |
//! | `GET /v1/marketing-consents` | `marketing.read` | the same |
//! | `GET /v1/orders` | `order.read` | the same |
//! | `GET /v1/webhook-subscriptions` | `webhook.read` | the same |
//! | `POST /v1/webhook-subscriptions` | `webhook.write` | 201 with the request body |
//!
//! Each is also served per company as `/v1/companies/{company_id}/...` (e.g.
//! `/v1/companies/company-a/bookings`), for that company's tokens only: another company's get
//! `401`. Another method on a listed path answers `405 METHOD_NOT_ALLOWED` (with `Allow`), any
//! other path `404 NOT_FOUND`. Two helper routes are neither counted nor recorded:
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
//! # Third-party apps
//!
//! The sandbox has one app ([`DEFAULT_APP_CLIENT_ID`], a generated secret,
//! [`DEFAULT_REDIRECT_URI`]) unless [`SandboxBuilder::app`] registers others, and two companies
//! ([`DEFAULT_COMPANIES`]) unless [`SandboxBuilder::company`] names others; the integration
//! key's tokens belong to the first. As in Hydra:
//!
//! - `GET /oauth2/auth` ([`SandboxServer::authorize_url`]) wants `response_type=code`, a
//!   registered `client_id` and, exactly, one of its redirect URIs (else an error page, never a
//!   redirect), a `state` of 8 characters or more (else `invalid_state`), PKCE with `S256`
//!   (`plain` is refused) and scopes the app may request ([`DEFAULT_APP_SCOPES`]). There is no
//!   login page: [`SandboxServer::consent`] sends the request as a company that consents at
//!   once and returns the callback's query (`code`, `scope`, `state`), and
//!   [`SandboxServer::decline`] or [`SandboxServer::set_decline_consent`] gives
//!   `error=access_denied`. Without the browser stand-in the first company consents.
//! - `POST /oauth2/token` with `grant_type=authorization_code` (`code`, `redirect_uri`,
//!   `code_verifier`, the app's credentials the way it is registered for): a code is single-use
//!   (a replay is `invalid_grant` and revokes what it gave), valid
//!   [`AUTHORIZATION_CODE_LIFETIME`], bound to the app, the redirect URI and the challenge. A
//!   refresh token comes only with the scope `offline` or `offline_access`.
//! - `grant_type=refresh_token` rotates: a new access and refresh token, the old refresh token
//!   deactivated and its access token revoked. Presenting a deactivated one revokes the whole
//!   grant ("The refresh token was already used."); an expired one is "The refresh token
//!   expired." ([`SandboxBuilder::refresh_token_lifetime`], sliding); after
//!   [`SandboxServer::revoke_consent`] "The refresh token is malformed or not valid.".
//! - `POST /oauth2/revoke` ([`SandboxServer::revocation_url`], client-authenticated,
//!   `token=...`) revokes the token's whole grant; an unknown token answers 200.
//!
//! [`SandboxServer::consents`], [`code_exchanges`](SandboxServer::code_exchanges),
//! [`refreshes`](SandboxServer::refreshes), [`reuse_detected`](SandboxServer::reuse_detected)
//! and [`revocations`](SandboxServer::revocations) count per company. Token faults apply to
//! these grants too. No `id_token` is issued.
//!
//! ```
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use base64::Engine as _;
//! use sha2::Digest as _;
//! use understory_auth::testing::{AUDIENCE, SandboxServer};
//!
//! let server = SandboxServer::start().await?;
//! let verifier = "a-verifier-of-43-to-128-characters-0123456789";
//! let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier));
//! let mut authorize = url::Url::parse(&server.authorize_url())?;
//! authorize.query_pairs_mut()
//!     .append_pair("response_type", "code")
//!     .append_pair("client_id", server.app_client_id())
//!     .append_pair("redirect_uri", &server.app_redirect_uris()[0])
//!     .append_pair("scope", "openid booking.read offline")
//!     .append_pair("state", "a-random-state")
//!     .append_pair("code_challenge", &challenge)
//!     .append_pair("code_challenge_method", "S256")
//!     .append_pair("audience", AUDIENCE);
//!
//! // What Understory sends the callback once company-b has consented.
//! let callback = server.consent(authorize.as_str(), "company-b").await?;
//! let query: std::collections::HashMap<_, _> = url::form_urlencoded::parse(callback.as_bytes()).collect();
//! assert_eq!(query["state"], "a-random-state");
//!
//! // Understory's server wants `~` literal, as in generated secrets: not `%7E`.
//! let body = url::form_urlencoded::Serializer::new(String::new())
//!     .append_pair("grant_type", "authorization_code")
//!     .append_pair("code", &query["code"])
//!     .append_pair("redirect_uri", &server.app_redirect_uris()[0])
//!     .append_pair("code_verifier", verifier)
//!     .append_pair("client_id", server.app_client_id())
//!     .append_pair("client_secret", server.app_client_secret())
//!     .finish()
//!     .replace("%7E", "~");
//! let http = reqwest::Client::new();
//! let response = http.post(server.token_url())
//!     .header("content-type", "application/x-www-form-urlencoded")
//!     .body(body)
//!     .send().await?;
//! let tokens: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
//! let access_token = tokens["access_token"].as_str().unwrap_or_default();
//! let me = http.get(format!("{}/v1/me", server.api_base())).bearer_auth(access_token).send().await?;
//! let me: serde_json::Value = serde_json::from_slice(&me.bytes().await?)?;
//! assert_eq!(me["company_id"], "company-b");
//! assert!(tokens["refresh_token"].is_string());
//! assert_eq!(server.code_exchanges("company-b"), 1);
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
mod apps;
mod authorize;
mod basic_auth;
mod body;
mod browser;
mod builder;
mod clients;
mod companies;
mod fault_answers;
mod faults;
mod grants;
mod oauth_error;
mod pkce;
mod random;
mod recorded;
mod response;
mod revoke;
mod routes;
mod sandbox_error;
mod server;
mod state;
mod token_endpoint;
mod tokens;
#[cfg(feature = "webhooks")]
mod webhooks;

pub use builder::SandboxBuilder;
pub use faults::{ApiFault, EchoIn, TokenFault};
pub use recorded::RecordedRequest;
pub use sandbox_error::SandboxError;
pub use server::SandboxServer;
#[cfg(feature = "webhooks")]
pub use webhooks::{WebhookMessage, WebhookSandbox};

/// The `audience` the sandbox's token endpoint requires, as Understory's does.
pub const AUDIENCE: &str = "https://api.understory.io";

/// The client id of a sandbox started without [`SandboxBuilder::client_id`].
pub const DEFAULT_CLIENT_ID: &str = "sandbox-client";

/// The scopes the integration key may request unless [`SandboxBuilder::allowed_scopes`] says
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

/// How long access tokens stay valid unless [`SandboxBuilder::token_lifetime`] (the key's) or
/// [`SandboxBuilder::app_token_lifetime`] (the apps') say otherwise: 3599 seconds, so that the default
/// answer carries `"expires_in": 3599`, exactly what Understory's server answers for its
/// one-hour tokens.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3599);

/// The client id of the third-party app of a sandbox started without [`SandboxBuilder::app`]
/// (its secret is generated, its one redirect URI is [`DEFAULT_REDIRECT_URI`]).
pub const DEFAULT_APP_CLIENT_ID: &str = "sandbox-app";

/// The redirect URI registered for the default app.
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1:8080/callback";

/// The scopes a third-party app may request unless [`SandboxBuilder::app_scopes`] says
/// otherwise: [`DEFAULT_SCOPES`], `offline` and `offline_access` (both give a refresh token).
pub const DEFAULT_APP_SCOPES: &[&str] = &APP_SCOPES;

/// [`DEFAULT_SCOPES`] and the two offline scopes.
const APP_SCOPES: [&str; DEFAULT_SCOPES.len() + 2] = {
    let mut scopes = [scope::OFFLINE; DEFAULT_SCOPES.len() + 2];
    let mut i = 0;
    while i < DEFAULT_SCOPES.len() {
        scopes[i] = DEFAULT_SCOPES[i];
        i += 1;
    }
    scopes[i + 1] = "offline_access";
    scopes
};

/// The companies (id, name) of a sandbox started without [`SandboxBuilder::company`]; the
/// first is the integration key's and the one that consents when no other is named.
pub const DEFAULT_COMPANIES: &[(&str, &str)] =
    &[("company-a", "Company A"), ("company-b", "Company B")];

/// How long refresh tokens stay valid unless [`SandboxBuilder::refresh_token_lifetime`] says
/// otherwise: Hydra's 720 hours, sliding (each refresh gives the new one a fresh lifetime).
pub const DEFAULT_REFRESH_TOKEN_LIFETIME: Duration = Duration::from_secs(720 * 3600);

/// How long an authorization code may be exchanged: Hydra's 10 minutes.
pub const AUTHORIZATION_CODE_LIFETIME: Duration = Duration::from_secs(600);

/// The path of the token endpoint.
const TOKEN_PATH: &str = "/oauth2/token";

/// The path of the authorize endpoint.
const AUTHORIZE_PATH: &str = "/oauth2/auth";

/// The path of the revocation endpoint.
const REVOKE_PATH: &str = "/oauth2/revoke";
