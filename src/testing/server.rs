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
use super::clients::Config;
use super::faults::{ApiFault, FaultQueue, TokenFault};
use super::recorded::RecordedRequest;
use super::routes;
use super::state::{Log, Shared, State};
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
            .field("client_id", &config.key.id)
            .field("client_auth", &config.key.auth)
            .field(
                "apps",
                &config.apps.iter().map(|app| &app.id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl SandboxServer {
    /// Binds the listener and spawns the accept loop.
    pub(crate) async fn spawn(config: Config, state: State) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, state));
        let listener = Arc::new(Mutex::new(Some(listener)));
        let (shutdown, shutdown_rx) = watch::channel(());
        let accepting = accept_loop(Arc::clone(&listener), Arc::clone(&shared), shutdown_rx);
        tokio::spawn(accepting);
        let _shutdown = shutdown;
        let running = Arc::new(Running {
            addr,
            shared,
            listener,
            _shutdown,
        });
        Ok(Self { running })
    }

    /// What the sandbox was started with.
    pub(crate) fn config(&self) -> &Config {
        &self.running.shared.config
    }

    /// Runs `f` on the sandbox's state.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        self.running.shared.with(f)
    }

    /// The address the server listens on (`127.0.0.1` and a free port).
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The token endpoint, e.g. `http://127.0.0.1:PORT/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.running.addr)
    }

    /// The base URL of the API, `http://127.0.0.1:PORT` (no trailing slash; the same server).
    pub fn api_base(&self) -> String {
        format!("http://{}", self.running.addr)
    }

    /// The integration key's client id.
    pub fn client_id(&self) -> &str {
        &self.config().key.id
    }

    /// The client secret the token endpoint accepts (the builder's, or a generated one).
    pub fn client_secret(&self) -> &str {
        &self.config().key.secret
    }

    /// How the integration key must authenticate at the token endpoint.
    pub fn client_auth_method(&self) -> ClientAuthMethod {
        self.config().key.auth
    }

    /// [`Credentials`] for this sandbox's client (id, secret, method), without scopes.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.client_id(), self.client_secret())
            .with_auth_method(self.client_auth_method())
    }

    /// An [`UnderstoryAuthBuilder`] for `credentials`, pointed at this sandbox.
    pub fn auth_builder(&self, credentials: Credentials) -> UnderstoryAuthBuilder {
        UnderstoryAuth::builder(credentials)
            .token_url(self.token_url())
            .api_base(self.api_base())
    }

    /// An [`UnderstoryAuth`] for this sandbox's own key, without scopes.
    pub fn auth(&self) -> Result<UnderstoryAuth, crate::Error> {
        self.auth_builder(self.credentials()).build()
    }

    /// How many requests reached `/oauth2/token` (faulted ones too) since the start or reset.
    pub fn token_requests(&self) -> usize {
        self.with(|state| state.token_requests.count())
    }

    /// How many requests reached the API (`/v1...`) since the start or the last reset.
    pub fn api_requests(&self) -> usize {
        self.with(|state| state.api_requests.count())
    }

    /// The requests counted by `token_requests`, oldest first (the latest 100 000 at most).
    pub fn token_requests_received(&self) -> Vec<RecordedRequest> {
        self.with(|state| state.token_requests.requests())
    }

    /// The requests counted by `api_requests`, oldest first (the latest 100 000 at most).
    pub fn api_requests_received(&self) -> Vec<RecordedRequest> {
        self.with(|state| state.api_requests.requests())
    }

    /// Every access token issued so far, the key's and the apps', oldest first (kept by
    /// `reset_counters`).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.with(|state| state.tokens.in_order().to_vec())
    }

    /// Revokes `token`: the API answers it with 401 from now on (unknown tokens are ignored).
    pub fn revoke_token(&self, token: &str) {
        self.with(|state| state.tokens.revoke(token));
    }

    /// Revokes every token issued so far (not those issued later).
    pub fn revoke_all_tokens(&self) {
        self.with(|state| state.tokens.revoke_all());
    }

    /// How long the integration key's tokens issued from now on stay valid; `expires_in` is
    /// `lifetime` in whole seconds, rounded down (`Duration::ZERO` issues expired tokens).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.with(|state| state.token_lifetime = lifetime);
    }

    /// Changes which scopes the key may request from now on, as an administrator does in
    /// Backoffice: tokens already issued keep theirs; a request for another is `invalid_scope`.
    pub fn set_allowed_scopes<I>(&self, scopes: I)
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.with(|state| state.allowed_scopes = scopes);
    }

    /// While `on`, a request for scopes not allowed is granted the allowed ones only (RFC 6749
    /// section 3.3) instead of refused with `invalid_scope` as Hydra does (off by default).
    pub fn set_omit_unallowed_scopes(&self, on: bool) {
        self.with(|state| state.omit_unallowed_scopes = on);
    }

    /// Makes the token endpoint wait `delay` before each answer (after counting the request).
    pub fn set_token_delay(&self, delay: Duration) {
        self.with(|state| state.token_delay = delay);
    }

    /// Makes the API wait `delay` before each answer (after counting the request).
    pub fn set_api_delay(&self, delay: Duration) {
        self.with(|state| state.api_delay = delay);
    }

    /// Queues `fault` for one token request (first in, first out, before the persistent one).
    pub fn push_token_fault(&self, fault: TokenFault) {
        self.with(|state| state.token_faults.queued.push_back(fault));
    }

    /// Makes every token request fail with `fault` (after the queued ones) until `None`.
    pub fn set_token_fault(&self, fault: Option<TokenFault>) {
        self.with(|state| state.token_faults.persistent = fault);
    }

    /// Removes every queued token fault and the persistent one.
    pub fn clear_token_faults(&self) {
        self.with(|state| state.token_faults = FaultQueue::default());
    }

    /// Queues `fault` for one API request (first in, first out, before the persistent one).
    pub fn push_api_fault(&self, fault: ApiFault) {
        self.with(|state| state.api_faults.queued.push_back(fault));
    }

    /// Makes every API request fail with `fault` (after the queued ones) until `None`.
    pub fn set_api_fault(&self, fault: Option<ApiFault>) {
        self.with(|state| state.api_faults.persistent = fault);
    }

    /// While `on`, the API answers every request with 401 `UNAUTHORIZED`, whatever the token.
    pub fn set_api_always_unauthorized(&self, on: bool) {
        self.with(|state| state.api_always_unauthorized = on);
    }

    /// Zeroes every counter and forgets recorded requests (tokens, faults, delays are kept).
    pub fn reset_counters(&self) {
        self.with(|state| {
            state.token_requests = Log::default();
            state.api_requests = Log::default();
            state.grants.reset_counts();
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
