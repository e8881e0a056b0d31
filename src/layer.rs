//! [`BearerAuthLayer`], its service and response future, and [`RetryOnUnauthorized`]. Hot
//! path: a cached token's header is inserted and the inner future polled as is; only without
//! one does the (boxed) future first wait for a token.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::BoxError;
use tower::retry::Policy;
use tower_layer::Layer;
use tower_service::Service;

use crate::cache::Held;
use crate::origin::Destination;
use crate::{Error, UnderstoryAuth};

/// A tower [`Layer`] that sends the Understory access token of an [`UnderstoryAuth`] with
/// every request bound for the API.
///
/// It wraps any `Service<http::Request<B>, Response = http::Response<R>>` (a hyper-util
/// client, a tonic `Channel`, a `tower::service_fn`) in a [`BearerAuth`], which adds the
/// token to the requests that may carry it (the crate docs:
/// [which requests carry the token](crate#which-requests-carry-the-token)), reports each
/// answer to the cache (the [401 rule](crate#what-happens-on-a-401)), and fails with a
/// [`tower::BoxError`]: the inner service's error, or an [`Error`](crate::Error) when no
/// token could be had. Resending a rejected request is [`RetryOnUnauthorized`]'s job, placed
/// outside the layer. The layer shares its cache with every clone of the `UnderstoryAuth`,
/// the reqwest middleware included.
///
/// An `http::Response` does not say which origin answered: behind an inner service that
/// follows redirects, a 401 from the origin a redirect led to (which never saw the token) is
/// reported like the API's own. That costs no secret, and the token requests it can cause
/// are bounded by the 401 rule; place redirect following outside this layer to avoid it.
///
/// The service's error is a `tower::BoxError`, which is `Send + Sync`: `?` needs a function
/// returning it (or `Box<dyn Error + Send + Sync>`), not `Box<dyn Error>`.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower::{ServiceBuilder, ServiceExt};
/// use understory_auth::BearerAuthLayer;
/// # #[cfg(feature = "test-util")]
/// use understory_auth::testing::SandboxServer;
///
/// # #[cfg(feature = "test-util")]
/// #[tokio::main]
/// async fn main() -> Result<(), tower::BoxError> {
///     let sandbox = SandboxServer::start().await?;
///     let auth = sandbox.auth()?; // in production: UnderstoryAuth::new(Credentials::from_env()?)
///
///     let client = ServiceBuilder::new()
///         .layer(BearerAuthLayer::new(auth.clone()))
///         .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
///
///     let request = http::Request::get(format!("{}/v1/me", sandbox.api_base()))
///         .body(Empty::new())?;
///     match client.oneshot(request).await {
///         Ok(response) => assert_eq!(response.status(), 200),
///         // No token could be had: the crate's error, found in the BoxError.
///         Err(err) => match understory_auth::Error::find_in(&*err) {
///             Some(token_error) => return Err(format!("no token: {token_error}").into()),
///             None => return Err(err), // the request itself failed
///         },
///     }
///     Ok(())
/// }
/// # #[cfg(not(feature = "test-util"))]
/// # fn main() {}
/// ```
#[derive(Debug, Clone)]
pub struct BearerAuthLayer {
    auth: UnderstoryAuth,
    authorize_relative_uris: bool,
}

impl BearerAuthLayer {
    /// A layer that sends `auth`'s token; clones of `auth` share its cache.
    ///
    /// ```
    /// use understory_auth::{BearerAuthLayer, Credentials, UnderstoryAuth};
    ///
    /// let auth = UnderstoryAuth::new(Credentials::new("client-id", "client-secret"));
    /// let layer = BearerAuthLayer::new(auth.clone());
    /// # let _ = layer;
    /// ```
    pub fn new(auth: UnderstoryAuth) -> Self {
        BearerAuthLayer {
            auth,
            authorize_relative_uris: false,
        }
    }

    /// Whether requests with a relative URI (no scheme, no authority) get the token too
    /// (default: no, since such a URI names no origin to check).
    ///
    /// Turn it on for a tonic `Channel`: its generated clients send relative URIs, and the
    /// channel itself fixes the origin, so a layer around a channel connected to the
    /// Understory API may authorize them all. Never turn it on for a service that can send
    /// to other origins.
    ///
    /// ```
    /// use tower::{ServiceBuilder, service_fn};
    /// use understory_auth::{BearerAuthLayer, Credentials, UnderstoryAuth};
    ///
    /// # let auth = UnderstoryAuth::new(Credentials::new("client-id", "client-secret"));
    /// // Stands in for `tonic::transport::Channel::from_static("https://…").connect_lazy()`.
    /// let channel = service_fn(|_: http::Request<String>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// });
    /// let authorized = ServiceBuilder::new()
    ///     .layer(BearerAuthLayer::new(auth).authorize_relative_uris(true))
    ///     .service(channel);
    /// # let _ = authorized;
    /// ```
    pub fn authorize_relative_uris(mut self, authorize: bool) -> Self {
        self.authorize_relative_uris = authorize;
        self
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> BearerAuth<S> {
        BearerAuth {
            inner,
            auth: self.auth.clone(),
            authorize_relative_uris: self.authorize_relative_uris,
        }
    }
}

/// The service made by [`BearerAuthLayer`]: it sends the Understory access token with the
/// requests it may carry it and passes them on to the inner service `S`.
///
/// ```
/// use tower::{Layer, service_fn};
/// use understory_auth::{BearerAuth, BearerAuthLayer, Credentials, UnderstoryAuth};
///
/// # let auth = UnderstoryAuth::new(Credentials::new("client-id", "client-secret"));
/// let inner = service_fn(|_: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// });
/// let service: BearerAuth<_> = BearerAuthLayer::new(auth).layer(inner);
/// # let _ = service;
/// ```
#[derive(Debug, Clone)]
pub struct BearerAuth<S> {
    inner: S,
    auth: UnderstoryAuth,
    authorize_relative_uris: bool,
}

impl<S> BearerAuth<S> {
    /// Whether `request` gets this layer's token: the crate's one rule (see
    /// [`BearerAuthLayer`]), with relative URIs when they were opted in.
    fn should_authorize<B>(&self, request: &Request<B>) -> bool {
        match self
            .auth
            .destination(request.uri(), request.headers(), request.extensions())
        {
            Destination::Origin(_) => true,
            Destination::Relative => self.authorize_relative_uris,
            Destination::Untouched => false,
        }
    }
}

impl<S, B, R> Service<Request<B>> for BearerAuth<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = BearerAuthFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if !self.should_authorize(&request) {
            return BearerAuthFuture::calling(self.inner.call(request), None);
        }
        if let Some(held) = self.auth.cached_held() {
            authorize(&mut request, &held);
            return BearerAuthFuture::calling(self.inner.call(request), Some(held));
        }
        // The call happens once a token arrives, on the instance that was polled ready: take
        // it, and leave a fresh clone (which must be polled ready itself) in its place.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        let fetch = Box::pin(async move { auth.held().await });
        BearerAuthFuture {
            state: State::Fetching {
                fetch,
                pending: Some(Box::new((service, request))),
            },
            sent: None,
        }
    }
}

/// The token a request carries, and through it the cache to report the API's answer to: one
/// pointer, owned by the calling thread's copy of the token, so that the hot path writes
/// nothing shared.
type Sent = Arc<Held>;

/// Puts the token in `request` as `Authorization: Bearer …` (a value marked sensitive).
#[inline]
fn authorize<B>(request: &mut Request<B>, held: &Held) {
    let header = held.token().header_value().clone();
    request.headers_mut().insert(AUTHORIZATION, header);
}

/// Marks a 401 response to a request that carried this layer's token, when a resend would
/// carry another token, for [`RetryOnUnauthorized`].
#[derive(Debug, Clone, Copy)]
struct TokenRejected;

pin_project! {
    /// The response future of [`BearerAuth`].
    pub struct BearerAuthFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, S::Future>,
        sent: Option<Sent>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F> {
        // No usable token was cached: waiting for one, then calling `S` with the request.
        Fetching {
            fetch: BoxFuture<'static, Result<Sent, Error>>,
            // Boxed, so that the cold path does not make every hot-path future larger.
            pending: Option<Box<(S, Request<B>)>>,
        },
        // The inner service was called.
        Calling {
            #[pin]
            future: F,
        },
    }
}

impl<S, B> BearerAuthFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn calling(future: S::Future, sent: Option<Sent>) -> Self {
        BearerAuthFuture {
            state: State::Calling { future },
            sent,
        }
    }
}

impl<S, B, R> Future for BearerAuthFuture<S, B>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Fetching { fetch, pending } => {
                    let sent = ready!(fetch.as_mut().poll(cx))?;
                    let (mut service, mut request) = *pending
                        .take()
                        .expect("BearerAuthFuture polled after completion");
                    authorize(&mut request, &sent);
                    *this.sent = Some(sent);
                    let future = service.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if let Some(sent) = this.sent.take() {
                        if sent.answered(response.status()) {
                            response.extensions_mut().insert(TokenRejected);
                        }
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for BearerAuthFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Fetching { .. } => "fetching a token",
            State::Calling { .. } => "calling the inner service",
        };
        f.debug_struct("BearerAuthFuture")
            .field("state", &state)
            .field(
                "token_id",
                &self.sent.as_ref().map(|sent| sent.token().id()),
            )
            .finish()
    }
}

/// A [`tower::retry::Policy`] that resends a request once when the API rejected the token
/// it carried (HTTP 401) and the cache replaced it, so that it goes out again with a new
/// token (the [401 rule](crate#what-happens-on-a-401)).
///
/// Place it *outside* the [`BearerAuthLayer`]: the retry then clones the request before the
/// token is added, and the layer adds the new one. It retries only 401s to requests that
/// carried the layer's token (not those to other origins or with an `Authorization` header
/// of their own), and at most once: if the fresh token is rejected too, the 401 is returned.
/// The request body must be `Clone` (e.g. `http_body_util::Full<Bytes>`).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use tower::{ServiceBuilder, ServiceExt};
/// use understory_auth::{BearerAuthLayer, RetryOnUnauthorized};
/// # #[cfg(feature = "test-util")]
/// use understory_auth::testing::SandboxServer;
///
/// # #[cfg(feature = "test-util")]
/// #[tokio::main]
/// async fn main() -> Result<(), tower::BoxError> {
///     let sandbox = SandboxServer::start().await?;
///     let auth = sandbox.auth()?;
///     let client = ServiceBuilder::new()
///         .retry(RetryOnUnauthorized::default())
///         .layer(BearerAuthLayer::new(auth.clone()))
///         .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
///
///     // The API stops accepting the cached token…
///     sandbox.revoke_token(auth.token().await?.secret());
///     // …and the request is resent once with a new one.
///     let request = http::Request::get(format!("{}/v1/me", sandbox.api_base()))
///         .body(Full::default())?;
///     assert_eq!(client.oneshot(request).await?.status(), 200);
///     assert_eq!(sandbox.api_requests(), 2);
///     Ok(())
/// }
/// # #[cfg(not(feature = "test-util"))]
/// # fn main() {}
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryOnUnauthorized {
    retried: bool,
}

impl<B, R, E> Policy<Request<B>, Response<R>, E> for RetryOnUnauthorized
where
    B: Clone,
{
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<R>, E>,
    ) -> Option<Self::Future> {
        let rejected = matches!(result, Ok(response) if response.extensions().get::<TokenRejected>().is_some());
        if self.retried || !rejected {
            return None;
        }
        self.retried = true;
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if self.retried {
            return None; // no second retry, so no copy to keep
        }
        Some(clone_request(request))
    }
}

/// A copy of `request`: method, URI, version, headers, extensions and body.
pub(crate) fn clone_request<B: Clone>(request: &Request<B>) -> Request<B> {
    let mut clone = Request::new(request.body().clone());
    *clone.method_mut() = request.method().clone();
    *clone.uri_mut() = request.uri().clone();
    *clone.version_mut() = request.version();
    *clone.headers_mut() = request.headers().clone();
    *clone.extensions_mut() = request.extensions().clone();
    clone
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn response(status: StatusCode, rejected: bool) -> Result<Response<()>, ()> {
        let mut response = Response::new(());
        *response.status_mut() = status;
        if rejected {
            response.extensions_mut().insert(TokenRejected);
        }
        Ok(response)
    }

    /// `clone_request` for a service answering `Response<()>` and failing with `()`.
    fn clone_request<B: Clone>(
        policy: &mut RetryOnUnauthorized,
        request: &Request<B>,
    ) -> Option<Request<B>> {
        Policy::<Request<B>, Response<()>, ()>::clone_request(policy, request)
    }

    #[test]
    fn retries_a_rejected_token_once() {
        let mut policy = RetryOnUnauthorized::default();
        let mut request = Request::new(());
        let mut rejected = response(StatusCode::UNAUTHORIZED, true);
        assert!(policy.retry(&mut request, &mut rejected).is_some());
        assert!(clone_request(&mut policy, &request).is_none());
        assert!(policy.retry(&mut request, &mut rejected).is_none());
    }

    #[test]
    fn leaves_other_answers_alone() {
        let mut policy = RetryOnUnauthorized::default();
        let mut request = Request::new(());
        for mut result in [
            response(StatusCode::OK, false),
            response(StatusCode::FORBIDDEN, false),
            // A 401 to a request that did not carry the layer's token.
            response(StatusCode::UNAUTHORIZED, false),
            Err(()),
        ] {
            assert!(policy.retry(&mut request, &mut result).is_none());
        }
    }

    #[test]
    fn clones_the_whole_request() {
        #[derive(Clone, Debug, PartialEq)]
        struct Tag(u8);
        let request = Request::post("https://api.understory.io/v1/webhook-subscriptions")
            .version(http::Version::HTTP_2)
            .header("x-request-id", "42")
            .extension(Tag(7))
            .body("payload".to_owned())
            .unwrap();
        let clone = clone_request(&mut RetryOnUnauthorized::default(), &request).unwrap();
        assert_eq!(clone.method(), request.method());
        assert_eq!(clone.uri(), request.uri());
        assert_eq!(clone.version(), request.version());
        assert_eq!(clone.headers(), request.headers());
        assert_eq!(clone.extensions().get::<Tag>(), Some(&Tag(7)));
        assert_eq!(clone.body(), request.body());
    }
}
