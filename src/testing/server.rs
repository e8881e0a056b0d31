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
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// A builder for a sandbox with a different client, token lifetime, scopes or client
    /// authentication method.
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
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The token endpoint, e.g. `http://127.0.0.1:PORT/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.running.addr)
    }

    /// The base URL of the API, without a trailing slash: `http://127.0.0.1:PORT` (the same
    /// server answers both the token endpoint and the API).
    pub fn api_base(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// The client id the token endpoint accepts.
    pub fn client_id(&self) -> &str {
        &self.running.shared.config.client_id
    }

    /// The client secret the token endpoint accepts: the builder's, or one generated at start
    /// as Understory's are (26 characters of `a-zA-Z0-9_-.~`, always with a `~`: the token
    /// endpoint refuses `%7E` with `invalid_client`, as Understory's does).
    pub fn client_secret(&self) -> &str {
        &self.running.shared.config.client_secret
    }

    /// How the client must authenticate at the token endpoint.
    pub fn client_auth_method(&self) -> ClientAuthMethod {
        self.running.shared.config.client_auth
    }

    /// [`Credentials`] for this sandbox's client: its id, secret and client authentication
    /// method, and no scopes.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.client_id(), self.client_secret())
            .with_auth_method(self.client_auth_method())
    }

    /// An [`UnderstoryAuthBuilder`] for `credentials`, already pointed at this sandbox: its
    /// token endpoint and its API (`token_url` and `api_base`). Add scopes to
    /// [`credentials`](Self::credentials), or pass any others to test how a wrong key fails.
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
    pub fn token_requests(&self) -> usize {
        self.running
            .shared
            .with(|state| state.token_requests.count())
    }

    /// How many requests reached the API (`/v1` and everything below it), whatever the answer,
    /// since the start or the last [`reset_counters`](Self::reset_counters).
    pub fn api_requests(&self) -> usize {
        self.running.shared.with(|state| state.api_requests.count())
    }

    /// The requests counted by [`token_requests`](Self::token_requests), oldest first (at most
    /// the latest 100 000).
    pub fn token_requests_received(&self) -> Vec<RecordedRequest> {
        self.running
            .shared
            .with(|state| state.token_requests.requests())
    }

    /// The requests counted by [`api_requests`](Self::api_requests), oldest first (at most
    /// the latest 100 000).
    pub fn api_requests_received(&self) -> Vec<RecordedRequest> {
        self.running
            .shared
            .with(|state| state.api_requests.requests())
    }

    /// Every access token issued so far, oldest first (answers hit by a [`TokenFault`] issue
    /// none, except two echoes: see [`TokenFault::Echo`]). Not cleared by
    /// [`reset_counters`](Self::reset_counters).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.running.shared.with(|state| state.issued_tokens())
    }

    /// Revokes `token`: from now on the API answers it with 401. Unknown tokens are ignored.
    pub fn revoke_token(&self, token: &str) {
        self.running.shared.with(|state| state.revoke(token));
    }

    /// Revokes every token issued so far; tokens issued later are not affected.
    pub fn revoke_all_tokens(&self) {
        self.running.shared.with(|state| state.revoke_all());
    }

    /// How long tokens issued from now on stay valid. The API accepts a token for exactly
    /// `lifetime` after it was issued; the token endpoint reports `expires_in` as
    /// `lifetime` in whole seconds, rounded down (so `Duration::ZERO` issues tokens that are
    /// already expired, with `"expires_in": 0`).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.running
            .shared
            .with(|state| state.token_lifetime = lifetime);
    }

    /// Changes, from now on, which scopes the client may request: what happens when an
    /// administrator changes an integration key's permissions in Backoffice. As in Hydra,
    /// tokens already issued keep their scopes, and a token request asking for a scope no
    /// longer allowed is refused whole with `invalid_scope` (unless
    /// [`set_omit_unallowed_scopes`](Self::set_omit_unallowed_scopes) is on).
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
    pub fn set_omit_unallowed_scopes(&self, on: bool) {
        self.running
            .shared
            .with(|state| state.omit_unallowed_scopes = on);
    }

    /// Makes the token endpoint wait `delay` before answering each request (the request is
    /// counted and recorded first).
    pub fn set_token_delay(&self, delay: Duration) {
        self.running.shared.with(|state| state.token_delay = delay);
    }

    /// Makes the API wait `delay` before answering each request (the request is counted and
    /// recorded first).
    pub fn set_api_delay(&self, delay: Duration) {
        self.running.shared.with(|state| state.api_delay = delay);
    }

    /// Queues `fault` for one token request. Queued faults are used first in, first out,
    /// each by exactly one request, before any [persistent fault](Self::set_token_fault).
    pub fn push_token_fault(&self, fault: TokenFault) {
        self.running
            .shared
            .with(|state| state.queued_token_faults.push_back(fault));
    }

    /// Makes every token request fail with `fault` until called with `None`. Faults queued
    /// with [`push_token_fault`](Self::push_token_fault) still come first.
    pub fn set_token_fault(&self, fault: Option<TokenFault>) {
        self.running
            .shared
            .with(|state| state.persistent_token_fault = fault);
    }

    /// Removes every queued token fault and the persistent one.
    pub fn clear_token_faults(&self) {
        self.running.shared.with(|state| {
            state.queued_token_faults.clear();
            state.persistent_token_fault = None;
        });
    }

    /// Queues `fault` for one API request. Queued faults are used first in, first out, each
    /// by exactly one request.
    pub fn push_api_fault(&self, fault: ApiFault) {
        self.running
            .shared
            .with(|state| state.queued_api_faults.push_back(fault));
    }

    /// Makes every API request fail with `fault` until called with `None`: e.g. a rate limit
    /// that does not lift, for testing what a client does once it stops waiting. Faults
    /// queued with [`push_api_fault`](Self::push_api_fault) still come first.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::{ApiFault, SandboxServer};
    ///
    /// let server = SandboxServer::start().await?;
    /// server.set_api_fault(Some(ApiFault::TooManyRequests { retry_after: Some(60) }));
    ///
    /// let url = format!("{}/v1/me", server.api_base());
    /// let http = reqwest::Client::new();
    /// for _ in 0..2 {
    ///     let response = http.get(&url).send().await?;
    ///     assert_eq!(response.status(), 429);
    ///     assert_eq!(response.headers()["retry-after"], "60");
    /// }
    /// server.set_api_fault(None);
    /// assert_eq!(http.get(&url).send().await?.status(), 401); // no token sent
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_api_fault(&self, fault: Option<ApiFault>) {
        self.running
            .shared
            .with(|state| state.persistent_api_fault = fault);
    }

    /// While `on`, the API answers every request with 401 `UNAUTHORIZED`, whatever the token.
    pub fn set_api_always_unauthorized(&self, on: bool) {
        self.running
            .shared
            .with(|state| state.api_always_unauthorized = on);
    }

    /// Sets both request counters to zero and forgets the recorded requests. Issued tokens,
    /// faults and delays are kept.
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
