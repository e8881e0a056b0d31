//! [`ConnectionAuthLayer`]: the app in a tower stack, one service for every company; each
//! request names its [`Connection`] in its extensions.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use super::connection::Connection;
use super::understory_app::UnderstoryApp;
use crate::{BearerAuth, BearerAuthFuture, BearerAuthLayer, Error};

/// A tower layer that gives each request its connection's token: the request's
/// [`Connection`] extension picks the company, and the connection's cache works as
/// [`BearerAuthLayer`]'s does. A request to the API without a `Connection` fails with
/// [`Error::MissingConnection`]; one with an unknown key, with [`Error::UnknownConnection`];
/// other requests pass through untouched.
///
/// ```
/// # #[cfg(feature = "test-util")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use understory_auth::{Connection, ConnectionAuthLayer, MemoryGrantStore};
///
/// let sandbox = understory_auth::testing::SandboxServer::start().await?;
/// let app = sandbox.app_builder().grant_store(MemoryGrantStore::new()).build()?;
/// let start = app.authorize();
/// let callback = sandbox.consent(start.url.as_str(), "company-b").await?;
/// app.complete(start.pending, &callback, "tenant-b").await?;
///
/// // Any `Service<http::Request<B>>`: here one that answers with the header it got.
/// let inner = tower::service_fn(|request: http::Request<()>| async move {
///     let header = request.headers().get("authorization").cloned();
///     Ok::<_, std::convert::Infallible>(http::Response::new(header))
/// });
/// let mut service = ServiceBuilder::new().layer(ConnectionAuthLayer::new(app)).service(inner);
/// let request = http::Request::get(format!("{}/v1/me", sandbox.api_base()))
///     .extension(Connection::new("tenant-b"))
///     .body(())?;
/// let response = service.ready().await?.call(request).await?;
/// assert!(response.body().is_some());
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ConnectionAuthLayer {
    app: UnderstoryApp,
}

impl ConnectionAuthLayer {
    /// The layer for `app`'s connections.
    pub fn new(app: UnderstoryApp) -> Self {
        ConnectionAuthLayer { app }
    }
}

impl<S> Layer<S> for ConnectionAuthLayer {
    type Service = ConnectionAuth<S>;

    fn layer(&self, inner: S) -> ConnectionAuth<S> {
        ConnectionAuth {
            inner,
            app: self.app.clone(),
        }
    }
}

/// The service [`ConnectionAuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct ConnectionAuth<S> {
    inner: S,
    app: UnderstoryApp,
}

impl<S, B, R> Service<Request<B>> for ConnectionAuth<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = ConnectionAuthFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let connection = request.extensions().get::<Connection>().cloned();
        let Some(connection) = connection else {
            if self.app.is_allowed(request.uri()) {
                return ConnectionAuthFuture::new(State::Refused {
                    error: Some(Error::MissingConnection),
                });
            }
            return ConnectionAuthFuture::new(State::Passed {
                future: self.inner.call(request),
            });
        };
        // The instance polled ready goes with this request; a clone takes its place.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let auth = self.app.connection(connection.key());
        let mut service: BearerAuth<S> = BearerAuthLayer::new(auth).layer(ready);
        ConnectionAuthFuture::new(State::Authorized {
            future: service.call(request),
        })
    }
}

pin_project! {
    /// The future [`ConnectionAuth`] returns.
    pub struct ConnectionAuthFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        // The connection's token is on the request.
        Authorized { #[pin] future: BearerAuthFuture<S, B> },
        // Not for the API: untouched.
        Passed { #[pin] future: S::Future },
        // For the API, without a connection.
        Refused { error: Option<Error> },
    }
}

impl<S, B> ConnectionAuthFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn new(state: State<S, B>) -> Self {
        ConnectionAuthFuture { state }
    }
}

impl<S, B, R> Future for ConnectionAuthFuture<S, B>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Authorized { future } => future.poll(cx),
            StateProj::Passed { future } => future.poll(cx).map_err(Into::into),
            StateProj::Refused { error } => {
                let error = error.take().unwrap_or(Error::MissingConnection);
                Poll::Ready(Err(error.into()))
            }
        }
    }
}

impl<S, B> std::fmt::Debug for ConnectionAuthFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionAuthFuture")
            .finish_non_exhaustive()
    }
}
