//! The running server: the [`SandboxServer`] handle, the accept loop and connection tasks.

use std::convert::Infallible;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::TOKEN_PATH;
use super::builder::SandboxBuilder;
use super::faults::{ApiFault, TokenFault};
use super::recorded::RecordedRequest;
use super::routes;
use super::state::{Config, Shared};
use crate::{ClientAuthMethod, Credentials, UnderstoryAuth, UnderstoryAuthBuilder};

/// How long the accept loop pauses after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// A running sandbox: Understory's token endpoint and API on `127.0.0.1`; see the
/// [module documentation](super).
///
/// Cloning is cheap and gives another handle to the same server. The server stops when the
/// last handle is dropped: it stops listening at once, and its connections close soon after.
///
/// ```
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use understory_auth::testing::SandboxServer;
///
/// let server = SandboxServer::start().await?;
/// let url = format!("{}/v1/me", server.api_base());
/// let response = reqwest::Client::new().get(url).send().await?;
/// assert_eq!(response.status(), 401); // no token
///
/// let addr = server.addr();
/// drop(server);
/// assert!(tokio::net::TcpStream::connect(addr).await.is_err());
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new()?.block_on(example())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct SandboxServer {
    running: Arc<Running>,
}

/// Owned by the handles only (never by the server tasks), so it drops with the last handle.
struct Running {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Arc<ListenerSlot>,
    /// Never sent on: dropping it tells every server task to stop.
    _shutdown: watch::Sender<()>,
}

/// The listening socket, shared with the accept loop so that dropping the last handle can
/// close it synchronously.
type ListenerSlot = Mutex<Option<TcpListener>>;

impl Drop for Running {
    fn drop(&mut self) {
        // Refuse new connections right away, not only once the accept loop next runs.
        self.listener.lock().take();
    }
}

impl fmt::Debug for SandboxServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.running.shared.config;
        f.debug_struct("SandboxServer")
            .field("addr", &self.running.addr)
            .field("client_id", &config.client_id)
            .field("client_auth", &config.client_auth)
            .finish_non_exhaustive()
    }
}

impl SandboxServer {
    /// Starts a sandbox with the default configuration; see [`SandboxBuilder`] for the
    /// defaults and [`SandboxServer::builder`] to change them.
    ///
    /// # Errors
    ///
    /// If the socket cannot be bound.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// assert_eq!(server.client_id(), "sandbox-client");
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// A builder for a sandbox with a different client, token lifetime, scopes or client
    /// authentication method.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::builder().client_id("acme").start().await?;
    /// assert_eq!(server.client_id(), "acme");
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// Binds the listener and spawns the accept loop.
    pub(crate) async fn spawn(
        config: Config,
        allowed_scopes: Vec<String>,
        token_lifetime: Duration,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, allowed_scopes, token_lifetime));
        let listener = Arc::new(Mutex::new(Some(listener)));
        let (shutdown, shutdown_rx) = watch::channel(());
        tokio::spawn(accept_loop(
            Arc::clone(&listener),
            Arc::clone(&shared),
            shutdown_rx,
        ));
        Ok(Self {
            running: Arc::new(Running {
                addr,
                shared,
                listener,
                _shutdown: shutdown,
            }),
        })
    }

    /// The address the server listens on (`127.0.0.1` and a free port).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// assert!(server.addr().ip().is_loopback());
    /// assert_ne!(server.addr().port(), 0);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The token endpoint, e.g. `http://127.0.0.1:PORT/oauth2/token`.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// assert_eq!(
    ///     server.token_url(),
    ///     format!("http://127.0.0.1:{}/oauth2/token", server.addr().port())
    /// );
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn token_url(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.running.addr)
    }

    /// The base URL of the API, without a trailing slash: `http://127.0.0.1:PORT` (the same
    /// server answers both the token endpoint and the API).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// assert_eq!(server.api_base(), format!("http://127.0.0.1:{}", server.addr().port()));
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn api_base(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// The client id the token endpoint accepts.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::{DEFAULT_CLIENT_ID, SandboxServer};
    ///
    /// let server = SandboxServer::start().await?;
    /// assert_eq!(server.client_id(), DEFAULT_CLIENT_ID);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn client_id(&self) -> &str {
        &self.running.shared.config.client_id
    }

    /// The client secret the token endpoint accepts.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::{DEFAULT_CLIENT_SECRET, SandboxServer};
    ///
    /// let server = SandboxServer::start().await?;
    /// assert_eq!(server.client_secret(), DEFAULT_CLIENT_SECRET);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn client_secret(&self) -> &str {
        &self.running.shared.config.client_secret
    }

    /// How the client must authenticate at the token endpoint.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::ClientAuthMethod;
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// assert_eq!(server.client_auth_method(), ClientAuthMethod::ClientSecretPost);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn client_auth_method(&self) -> ClientAuthMethod {
        self.running.shared.config.client_auth
    }

    /// [`Credentials`] for this sandbox's client: its id, secret and client authentication
    /// method, and no scopes.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::ClientAuthMethod;
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::builder()
    ///     .client_auth_method(ClientAuthMethod::ClientSecretBasic)
    ///     .start()
    ///     .await?;
    /// let credentials = server.credentials().with_scopes(["openid"]);
    /// assert_eq!(credentials.client_id(), server.client_id());
    /// assert_eq!(credentials.auth_method(), ClientAuthMethod::ClientSecretBasic);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.client_id(), self.client_secret())
            .with_auth_method(self.client_auth_method())
    }

    /// An [`UnderstoryAuthBuilder`] for `credentials`, already pointed at this sandbox: its
    /// token endpoint and its API (`token_url` and `api_base`). Add scopes to
    /// [`credentials`](Self::credentials), or pass any others to test how a wrong key fails.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    /// use understory_auth::{UnderstoryAuth, scope};
    ///
    /// let server = SandboxServer::start().await?;
    /// let credentials = server.credentials().with_scopes([scope::BOOKING_READ]);
    /// let auth: UnderstoryAuth = server.auth_builder(credentials).build()?;
    /// let token = auth.token().await?;
    /// let bookings = reqwest::Client::new()
    ///     .get(format!("{}/v1/bookings", server.api_base()))
    ///     .bearer_auth(token.secret())
    ///     .send()
    ///     .await?;
    /// assert_eq!(bookings.status(), 200);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn auth_builder(&self, credentials: Credentials) -> UnderstoryAuthBuilder {
        UnderstoryAuth::builder(credentials)
            .token_url(self.token_url())
            .api_base(self.api_base())
    }

    /// An [`UnderstoryAuth`] for this sandbox's own key, without scopes: short for
    /// `self.auth_builder(self.credentials()).build()`. Fails only as
    /// [`build`](UnderstoryAuthBuilder::build) does, e.g. for a sandbox started with an
    /// empty client secret.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// let auth = server.auth()?;
    /// auth.token().await?;
    /// assert_eq!(server.token_requests(), 1);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn auth(&self) -> Result<UnderstoryAuth, crate::Error> {
        self.auth_builder(self.credentials()).build()
    }

    /// How many requests reached the token endpoint (`/oauth2/token`, any method), failed and
    /// faulted ones included, since the start or the last [`reset_counters`](Self::reset_counters).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// let response = reqwest::Client::new().get(server.token_url()).send().await?;
    /// assert_eq!(response.status(), 400); // GET is an invalid request, but it counts
    /// assert_eq!(server.token_requests(), 1);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn token_requests(&self) -> usize {
        self.running
            .shared
            .with(|state| state.token_requests.count())
    }

    /// How many requests reached the API (`/v1` and everything below it), whatever the answer,
    /// since the start or the last [`reset_counters`](Self::reset_counters).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// let url = format!("{}/v1/no-such-thing", server.api_base());
    /// reqwest::Client::new().get(url).send().await?;
    /// assert_eq!(server.api_requests(), 1);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn api_requests(&self) -> usize {
        self.running.shared.with(|state| state.api_requests.count())
    }

    /// The requests counted by [`token_requests`](Self::token_requests), oldest first (at most
    /// the latest 100 000).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// reqwest::Client::new()
    ///     .post(server.token_url())
    ///     .header("content-type", "application/x-www-form-urlencoded")
    ///     .body("grant_type=client_credentials")
    ///     .send()
    ///     .await?;
    ///
    /// let requests = server.token_requests_received();
    /// assert_eq!(requests.len(), 1);
    /// assert_eq!(requests[0].path, "/oauth2/token");
    /// assert_eq!(requests[0].form_value("grant_type").as_deref(), Some("client_credentials"));
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn token_requests_received(&self) -> Vec<RecordedRequest> {
        self.running
            .shared
            .with(|state| state.token_requests.requests())
    }

    /// The requests counted by [`api_requests`](Self::api_requests), oldest first (at most
    /// the latest 100 000).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// let url = format!("{}/v1/bookings?limit=5", server.api_base());
    /// reqwest::Client::new().get(url).bearer_auth("not-a-token").send().await?;
    ///
    /// let requests = server.api_requests_received();
    /// assert_eq!(requests[0].path, "/v1/bookings?limit=5");
    /// assert_eq!(requests[0].header("authorization"), Some("Bearer not-a-token"));
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn api_requests_received(&self) -> Vec<RecordedRequest> {
        self.running
            .shared
            .with(|state| state.api_requests.requests())
    }

    /// Every access token issued so far, oldest first (answers hit by a [`TokenFault`] issue
    /// none, except two echoes: see [`TokenFault::Echo`]). Not cleared by
    /// [`reset_counters`](Self::reset_counters).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// assert!(server.issued_tokens().is_empty());
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn issued_tokens(&self) -> Vec<String> {
        self.running.shared.with(|state| state.issued_tokens())
    }

    /// Revokes `token`: from now on the API answers it with 401. Unknown tokens are ignored.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// # let form = url::form_urlencoded::Serializer::new(String::new())
    /// #     .append_pair("grant_type", "client_credentials")
    /// #     .append_pair("audience", "https://api.understory.io")
    /// #     .append_pair("client_id", server.client_id())
    /// #     .append_pair("client_secret", server.client_secret())
    /// #     .finish();
    /// # let http = reqwest::Client::new();
    /// # http.post(server.token_url())
    /// #     .header("content-type", "application/x-www-form-urlencoded")
    /// #     .body(form)
    /// #     .send()
    /// #     .await?;
    /// // … after a client fetched a token:
    /// let token = server.issued_tokens().pop().ok_or("no token")?;
    /// server.revoke_token(&token);
    ///
    /// let url = format!("{}/v1/me", server.api_base());
    /// let response = http.get(url).bearer_auth(&token).send().await?;
    /// assert_eq!(response.status(), 401);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn revoke_token(&self, token: &str) {
        self.running.shared.with(|state| state.revoke(token));
    }

    /// Revokes every token issued so far; tokens issued later are not affected.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// server.revoke_all_tokens();
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn revoke_all_tokens(&self) {
        self.running.shared.with(|state| state.revoke_all());
    }

    /// How long tokens issued from now on stay valid. The API accepts a token for exactly
    /// `lifetime` after it was issued; the token endpoint reports `expires_in` as
    /// `lifetime` in whole seconds, rounded down (so `Duration::ZERO` issues tokens that are
    /// already expired, with `"expires_in": 0`).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// server.set_token_lifetime(Duration::from_millis(1500)); // "expires_in": 1
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.running
            .shared
            .with(|state| state.token_lifetime = lifetime);
    }

    /// Changes, from now on, which scopes the client may request: what happens when an
    /// administrator changes an integration key's permissions in Backoffice.
    ///
    /// What a real client then sees (Understory's auth server is an Ory Hydra):
    /// - tokens already issued keep the scopes they were granted, so an endpoint needing a
    ///   scope just added still answers `401 UNAUTHORIZED` to them; the first token requested
    ///   afterwards carries it (if the client requests it);
    /// - a token request asking for a scope no longer allowed is refused as a whole with
    ///   `400 invalid_scope`: the client gets no token at all, for any endpoint, until it
    ///   stops requesting the scope or the scope is allowed again. (Unless
    ///   [`set_omit_unallowed_scopes`](Self::set_omit_unallowed_scopes) is on.)
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    /// use understory_auth::{UnderstoryAuth, scope};
    ///
    /// let server = SandboxServer::builder()
    ///     .allowed_scopes([scope::MARKETING_READ])
    ///     .start()
    ///     .await?;
    /// let wants_bookings = server.credentials().with_scopes([scope::BOOKING_READ]);
    /// let auth = server.auth_builder(wants_bookings.clone()).build()?;
    /// let error = auth.token().await.unwrap_err();
    /// assert_eq!(error.oauth_code(), Some("invalid_scope"));
    ///
    /// server.set_allowed_scopes([scope::MARKETING_READ, scope::BOOKING_READ]);
    /// let auth = server.auth_builder(wants_bookings).build()?;
    /// assert_eq!(auth.token().await?.scopes(), [scope::BOOKING_READ]);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_allowed_scopes<I>(&self, scopes: I)
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.running
            .shared
            .with(|state| state.allowed_scopes = scopes);
    }

    /// While `on`, a token request asking for scopes the client may not request is not
    /// refused: the token is granted the allowed ones only, and the answer's `scope` says so
    /// (RFC 6749 section 3.3 allows an auth server to grant less than was asked). Off by
    /// default, as in Hydra, which refuses with `invalid_scope` instead.
    ///
    /// This models a key whose missing permission is added later while the client keeps
    /// requesting it: the endpoint needing it answers `401 UNAUTHORIZED` until the first
    /// token requested after [`set_allowed_scopes`](Self::set_allowed_scopes) adds it.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    /// use understory_auth::scope;
    ///
    /// let server = SandboxServer::builder()
    ///     .allowed_scopes([scope::MARKETING_READ])
    ///     .start()
    ///     .await?;
    /// server.set_omit_unallowed_scopes(true);
    /// let credentials = server
    ///     .credentials()
    ///     .with_scopes([scope::MARKETING_READ, scope::BOOKING_READ]);
    /// let auth = server.auth_builder(credentials).build()?;
    /// assert_eq!(auth.token().await?.scopes(), [scope::MARKETING_READ]);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_omit_unallowed_scopes(&self, on: bool) {
        self.running
            .shared
            .with(|state| state.omit_unallowed_scopes = on);
    }

    /// Makes the token endpoint wait `delay` before answering each request (the request is
    /// counted and recorded first).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// server.set_token_delay(Duration::from_secs(5));
    ///
    /// let http = reqwest::Client::builder().timeout(Duration::from_millis(100)).build()?;
    /// let error = http.post(server.token_url()).send().await.unwrap_err();
    /// assert!(error.is_timeout());
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_token_delay(&self, delay: Duration) {
        self.running.shared.with(|state| state.token_delay = delay);
    }

    /// Makes the API wait `delay` before answering each request (the request is counted and
    /// recorded first).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// server.set_api_delay(Duration::from_millis(50));
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_api_delay(&self, delay: Duration) {
        self.running.shared.with(|state| state.api_delay = delay);
    }

    /// Queues `fault` for one token request. Queued faults are used first in, first out,
    /// each by exactly one request, before any [persistent fault](Self::set_token_fault).
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::{SandboxServer, TokenFault};
    ///
    /// let server = SandboxServer::start().await?;
    /// server.push_token_fault(TokenFault::ServerError);
    /// server.push_token_fault(TokenFault::Unavailable);
    ///
    /// let http = reqwest::Client::new();
    /// assert_eq!(http.post(server.token_url()).send().await?.status(), 500);
    /// assert_eq!(http.post(server.token_url()).send().await?.status(), 503);
    /// assert_eq!(http.post(server.token_url()).send().await?.status(), 400); // no fault left
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_token_fault(&self, fault: TokenFault) {
        self.running
            .shared
            .with(|state| state.queued_token_faults.push_back(fault));
    }

    /// Makes every token request fail with `fault` until called with `None`. Faults queued
    /// with [`push_token_fault`](Self::push_token_fault) still come first.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::{SandboxServer, TokenFault};
    ///
    /// let server = SandboxServer::start().await?;
    /// server.set_token_fault(Some(TokenFault::HtmlError { status: 502 }));
    ///
    /// let http = reqwest::Client::new();
    /// assert_eq!(http.post(server.token_url()).send().await?.status(), 502);
    /// assert_eq!(http.post(server.token_url()).send().await?.status(), 502);
    ///
    /// server.set_token_fault(None);
    /// assert_eq!(http.post(server.token_url()).send().await?.status(), 400);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_token_fault(&self, fault: Option<TokenFault>) {
        self.running
            .shared
            .with(|state| state.persistent_token_fault = fault);
    }

    /// Removes every queued token fault and the persistent one.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::{SandboxServer, TokenFault};
    ///
    /// let server = SandboxServer::start().await?;
    /// server.push_token_fault(TokenFault::ServerError);
    /// server.set_token_fault(Some(TokenFault::Unavailable));
    /// server.clear_token_faults();
    ///
    /// let response = reqwest::Client::new().post(server.token_url()).send().await?;
    /// assert_eq!(response.status(), 400); // the sandbox's own answer to an empty request
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clear_token_faults(&self) {
        self.running.shared.with(|state| {
            state.queued_token_faults.clear();
            state.persistent_token_fault = None;
        });
    }

    /// Queues `fault` for one API request. Queued faults are used first in, first out, each
    /// by exactly one request.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::{ApiFault, SandboxServer};
    ///
    /// let server = SandboxServer::start().await?;
    /// server.push_api_fault(ApiFault::TooManyRequests { retry_after: None });
    ///
    /// let url = format!("{}/v1/events", server.api_base());
    /// let response = reqwest::Client::new().get(url).send().await?;
    /// assert_eq!(response.status(), 429);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn push_api_fault(&self, fault: ApiFault) {
        self.running
            .shared
            .with(|state| state.queued_api_faults.push_back(fault));
    }

    /// While `on`, the API answers every request with 401 `UNAUTHORIZED`, whatever the token.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// server.set_api_always_unauthorized(true);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_api_always_unauthorized(&self, on: bool) {
        self.running
            .shared
            .with(|state| state.api_always_unauthorized = on);
    }

    /// Sets both request counters to zero and forgets the recorded requests. Issued tokens,
    /// faults and delays are kept.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// reqwest::Client::new().post(server.token_url()).send().await?;
    /// assert_eq!(server.token_requests(), 1);
    ///
    /// server.reset_counters();
    /// assert_eq!(server.token_requests(), 0);
    /// assert!(server.token_requests_received().is_empty());
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reset_counters(&self) {
        self.running.shared.with(|state| {
            state.token_requests.clear();
            state.api_requests.clear();
        });
    }
}

/// Accepts connections until the listener is closed or the last handle is dropped.
async fn accept_loop(
    listener: Arc<ListenerSlot>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = poll_fn(|cx| poll_accept(&listener, cx)) => accepted,
        };
        match accepted {
            Some(Ok(stream)) => {
                tokio::spawn(serve_connection(
                    stream,
                    Arc::clone(&shared),
                    shutdown.clone(),
                ));
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "sandbox: accepting a connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            None => return,
        }
    }
}

/// Polls the listener for a connection; `None` once it has been closed.
fn poll_accept(
    listener: &ListenerSlot,
    cx: &mut Context<'_>,
) -> Poll<Option<io::Result<TcpStream>>> {
    match listener.lock().as_ref() {
        Some(listener) => listener
            .poll_accept(cx)
            .map(|accepted| Some(accepted.map(|(stream, _peer)| stream))),
        None => Poll::Ready(None),
    }
}

/// Serves HTTP/1.1 (with keep-alive) on one connection until the client closes it or the
/// server stops.
async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<()>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "sandbox: could not disable Nagle's algorithm");
    }
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(routes::handle(&shared, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = connection => {
            if let Err(error) = served {
                tracing::debug!(%error, "sandbox: connection closed with an error");
            }
        }
        _ = shutdown.changed() => {}
    }
}
