//! [`BearerAuthLayer`], its service and future, and [`RetryOnUnauthorized`]. Only without a
//! cached token does the (boxed) future first wait for one.

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

/// A tower [`Layer`] that sends an [`UnderstoryAuth`]'s token with every request bound for
/// the API ([which requests](crate#which-requests-carry-the-token)) and reports each answer
/// to the [401 rule](crate#what-happens-on-a-401); resending is [`RetryOnUnauthorized`]'s
/// job. Its error is a [`tower::BoxError`] (`Send + Sync`): the inner service's, or an
/// [`Error`](crate::Error). Place redirect following outside it: a response does not say
/// which origin answered.
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
///     let auth = sandbox.auth()?; // in production: UnderstoryAuth::new(Credentials::from_env()?)
///     let client = ServiceBuilder::new()
///         .retry(RetryOnUnauthorized::default())
///         .layer(BearerAuthLayer::new(auth.clone()))
///         .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
///
///     let url = format!("{}/v1/me", sandbox.api_base());
///     let me = || http::Request::get(&url).body(Full::default());
///     // On failure, `understory_auth::Error::find_in(&*err)` finds a token error.
///     assert_eq!(client.clone().oneshot(me()?).await?.status(), 200);
///     // The API stops accepting the cached token: the request is resent once with a new one.
///     sandbox.revoke_token(auth.token().await?.secret());
///     assert_eq!(client.oneshot(me()?).await?.status(), 200);
///     assert_eq!(sandbox.api_requests(), 3);
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
    pub fn new(auth: UnderstoryAuth) -> Self {
        BearerAuthLayer {
            auth,
            authorize_relative_uris: false,
        }
    }

    /// Whether requests with a relative URI get the token too (default: no, it names no
    /// origin). Turn it on around a tonic `Channel` to the API, which fixes the origin;
    /// never for a service that can send to other origins.
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

/// The service made by [`BearerAuthLayer`] (see its example).
#[derive(Debug, Clone)]
pub struct BearerAuth<S> {
    inner: S,
    auth: UnderstoryAuth,
    authorize_relative_uris: bool,
}

impl<S> BearerAuth<S> {
    /// Whether `request` gets the token, relative URIs if opted in.
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

/// The token a request carries and its cache: this thread's copy, so nothing shared is written.
type Sent = Arc<Held>;

#[inline]
fn authorize<B>(request: &mut Request<B>, held: &Held) {
    let header = held.token().header_value().clone();
    request.headers_mut().insert(AUTHORIZATION, header);
}

/// Marks a 401 whose resend would carry another token, for [`RetryOnUnauthorized`].
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
        Fetching {
            fetch: BoxFuture<'static, Result<Sent, Error>>,
            // Boxed, so that the cold path does not make every hot-path future larger.
            pending: Option<Box<(S, Request<B>)>>,
        },
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

/// A [`tower::retry::Policy`] that resends a request once with a new token when the
/// [401 rule](crate#what-happens-on-a-401) says so. Place it *outside* the
/// [`BearerAuthLayer`] (see its example), so that the layer adds the new token; the body
/// must be `Clone`.
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

/// A copy of `request`, extensions included.
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
