//! [`WebhookLayer`], its service and the service's response future: read the body, verify
//! it, claim the `webhook-id` (with dedup), call the inner service, record the outcome.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::dedup::{SharedDedup, bounded};
use super::{
    DEFAULT_WEBHOOK_DEDUP_LEASE, WebhookDedup, WebhookDedupError, WebhookError, WebhookIdState,
    WebhookVerifier,
};

/// A boxed error, as `tower::BoxError` (this module does not depend on `tower` itself).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A tower [`Layer`] that lets through only webhooks Understory signed.
///
/// Its service refuses a body over the verifier's [limit](WebhookVerifier::max_body_bytes) or
/// failing [`WebhookVerifier`] with an empty [`WebhookError::status`] answer; an authentic one
/// reaches the inner service as `http::Request<Full<Bytes>>` (`Content-Length` set) with the
/// [`WebhookEvent`](crate::webhooks::WebhookEvent) in its extensions. The response body must
/// be `Default`. **In axum, wrap the route (`route_layer`), not the router**, or every other
/// path gets `400`.
///
/// ```
/// use axum::{Extension, Router, routing::post};
/// use understory_auth::webhooks::{MemoryWebhookDedup, WebhookEvent, WebhookLayer, WebhookVerifier};
///
/// async fn on_webhook(Extension(event): Extension<WebhookEvent>) -> &'static str {
///     println!("{} {}", event.event_type, event.id);
///     "ok"
/// }
///
/// # fn app() -> Result<Router, understory_auth::webhooks::WebhookError> {
/// let verifier = WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// let layer = WebhookLayer::new(verifier).dedup(MemoryWebhookDedup::new());
/// let app: Router = Router::new().route("/webhooks/understory", post(on_webhook).route_layer(layer));
/// # Ok(app) }
/// # app().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct WebhookLayer {
    verifier: WebhookVerifier,
    dedup: Option<SharedDedup>,
    namespace: Arc<str>,
    lease: Duration,
}

impl WebhookLayer {
    /// A layer that verifies webhooks with `verifier`, without deduplication.
    pub fn new(verifier: WebhookVerifier) -> Self {
        WebhookLayer {
            namespace: verifier.dedup_namespace().into(),
            verifier,
            dedup: None,
            lease: DEFAULT_WEBHOOK_DEDUP_LEASE,
        }
    }

    /// Processes each `webhook-id` once, recording ids in `store` under the layer's
    /// [namespace](Self::dedup_namespace): `200` without a call if a run already succeeded
    /// (within the store's ttl), `409` while another run of the id is going, the id released
    /// after a failed or dropped run, `503` if the store fails.
    ///
    /// ```
    /// use std::time::Duration;
    /// use understory_auth::webhooks::{MemoryWebhookDedup, WebhookLayer, WebhookVerifier};
    ///
    /// let verifier = WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// let layer = WebhookLayer::new(verifier)
    ///     .dedup(MemoryWebhookDedup::new())
    ///     .dedup_lease(Duration::from_secs(60)) // optional
    ///     .dedup_namespace("bookings-service"); // optional
    /// # Ok::<(), understory_auth::webhooks::WebhookError>(())
    /// ```
    pub fn dedup(mut self, store: impl WebhookDedup) -> Self {
        self.dedup = Some(SharedDedup(Arc::new(store)));
        self
    }

    /// How long a claim holds if nothing releases it (its process died); default
    /// [`DEFAULT_WEBHOOK_DEDUP_LEASE`], clamped to 1 ms..=
    /// [`MAX_WEBHOOK_DEDUP_DURATION`](crate::webhooks::MAX_WEBHOOK_DEDUP_DURATION). Keep it
    /// longer than the inner service's longest run.
    pub fn dedup_lease(mut self, lease: Duration) -> Self {
        self.lease = bounded(lease);
        self
    }

    /// The namespace of the layer's keys (`<namespace>:<webhook-id>`); by default derived
    /// from the verifier's first secret. Set it (the same on every receiver of the
    /// subscription) if a rotation will put a new secret first.
    pub fn dedup_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into().into();
        self
    }
}

impl<S> Layer<S> for WebhookLayer {
    type Service = VerifyWebhook<S>;

    fn layer(&self, inner: S) -> VerifyWebhook<S> {
        VerifyWebhook {
            inner,
            verifier: self.verifier.clone(),
            dedup: self.dedup.clone().map(|store| Dedup {
                store,
                namespace: self.namespace.clone(),
                lease: self.lease,
            }),
        }
    }
}

/// The layer's deduplication settings.
#[derive(Debug, Clone)]
struct Dedup {
    store: SharedDedup,
    namespace: Arc<str>,
    lease: Duration,
}

/// The service made by [`WebhookLayer`].
#[derive(Debug, Clone)]
pub struct VerifyWebhook<S> {
    inner: S,
    verifier: WebhookVerifier,
    dedup: Option<Dedup>,
}

impl<S, B, R> Service<Request<B>> for VerifyWebhook<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>> + Clone,
    B: Body,
    B::Error: Into<BoxError>,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = WebhookFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        // Refuse what the headers alone condemn before reading a byte of the body.
        let checked = self
            .verifier
            .check_headers(&parts.headers, SystemTime::now())
            .and_then(|_| self.check_length(&parts, &body));
        if let Err(error) = checked {
            return WebhookFuture {
                state: State::refused(&error),
            };
        }
        // Call the instance that was polled ready; leave a clone in its place.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let limit = self.verifier.body_limit();
        WebhookFuture {
            state: State::Reading {
                collect: Limited::new(body, limit).collect(),
                pending: Some(Box::new(Pending {
                    parts,
                    service,
                    verifier: self.verifier.clone(),
                    dedup: self.dedup.clone(),
                })),
            },
        }
    }
}

impl<S> VerifyWebhook<S> {
    /// Refuses a body announced (`Content-Length`, size hint) as larger than the limit.
    fn check_length<B: Body>(&self, parts: &Parts, body: &B) -> Result<(), WebhookError> {
        let limit = u64::try_from(self.verifier.body_limit()).unwrap_or(u64::MAX);
        let announced = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if announced.is_some_and(|length| length > limit) || body.size_hint().lower() > limit {
            return Err(self.verifier.body_too_large());
        }
        Ok(())
    }
}

/// What the future needs once the body is read.
struct Pending<S> {
    parts: Parts,
    service: S,
    verifier: WebhookVerifier,
    dedup: Option<Dedup>,
}

pin_project! {
    /// The response future of [`VerifyWebhook`]; dropped, it releases its claim on the
    /// current tokio runtime.
    pub struct WebhookFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, B, S::Future, S::Response, S::Error>,
    }

    impl<S, B> PinnedDrop for WebhookFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        fn drop(this: Pin<&mut Self>) {
            let unfinished = match this.project().state.project() {
                StateProj::Claiming { call, .. } => call
                    .take()
                    .map(|(_, _, claimed)| claimed.dropped()),
                StateProj::Calling { claimed, .. } => claimed.take().map(Claimed::dropped),
                StateProj::Finishing { finish, .. } => finish.take(),
                StateProj::Reading { .. } | StateProj::Answer { .. } => None,
            };
            if let Some(unfinished) = unfinished {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(unfinished);
                }
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F, T, E>
    where
        B: Body,
        B::Error: Into<BoxError>,
    {
        Reading {
            #[pin]
            collect: Collect<Limited<B>>,
            // Boxed, so that the states after it do not make the future larger.
            pending: Option<Box<Pending<S>>>,
        },
        Claiming {
            claim: BoxFuture<'static, Result<WebhookIdState, WebhookDedupError>>,
            call: Option<(S, Request<Full<Bytes>>, Claimed)>,
        },
        Calling {
            #[pin]
            future: F,
            claimed: Option<Claimed>,
        },
        // Recording the outcome before answering, so that a redelivery finds it recorded.
        Finishing {
            finish: Option<BoxFuture<'static, ()>>,
            outcome: Option<Result<T, E>>,
        },
        Answer {
            status: Option<StatusCode>,
        },
    }
}

/// An id claimed in the dedup store by one run, to complete or release after it.
struct Claimed {
    store: SharedDedup,
    /// The store's key: the layer's namespace and the `webhook-id`.
    key: String,
    /// The `webhook-id` alone, for the logs.
    id: String,
    /// This run's token, unique to it.
    owner: String,
}

impl Claimed {
    /// Records the id as processed after a successful run, or releases it after a failed one.
    fn finish(self, succeeded: bool) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let (recorded, failure) = if succeeded {
                (
                    self.store.0.complete(&self.key, &self.owner),
                    "could not record a webhook id as processed; a redelivery after the lease will be processed again",
                )
            } else {
                (
                    self.store.0.release(&self.key, &self.owner),
                    "could not release a webhook id after its processing failed; its redeliveries are answered 409 until the lease runs out",
                )
            };
            if let Err(error) = recorded.await {
                tracing::warn!(webhook_id = %self.id, %error, "{failure}");
            }
        })
    }

    /// Releases the claim of a run dropped before it finished.
    fn dropped(self) -> BoxFuture<'static, ()> {
        tracing::debug!(
            webhook_id = %self.id,
            "a webhook's processing was dropped before it finished; releasing its id"
        );
        self.finish(false)
    }
}

impl<S, B, F, T, E> State<S, B, F, T, E>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    fn answer(status: StatusCode) -> Self {
        State::Answer {
            status: Some(status),
        }
    }

    fn refused(error: &WebhookError) -> Self {
        let status = error.status();
        tracing::warn!(%status, %error, "refused a webhook");
        Self::answer(status)
    }
}

impl<S, B, R> Future for WebhookFuture<S, B>
where
    S: Service<Request<Full<Bytes>>, Response = Response<R>>,
    B: Body,
    B::Error: Into<BoxError>,
    R: Default,
{
    type Output = Result<Response<R>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            let next = match state.as_mut().project() {
                StateProj::Reading { collect, pending } => {
                    let read = ready!(collect.poll(cx));
                    let Some(pending) = pending.take() else {
                        return Poll::Ready(Ok(empty(StatusCode::INTERNAL_SERVER_ERROR)));
                    };
                    match read {
                        Ok(collected) => verified(*pending, collected.to_bytes()),
                        Err(error) => {
                            let error = if error.is::<LengthLimitError>() {
                                pending.verifier.body_too_large()
                            } else {
                                WebhookError::BodyUnreadable
                            };
                            State::refused(&error)
                        }
                    }
                }
                StateProj::Claiming { claim, call } => {
                    let found = ready!(claim.as_mut().poll(cx));
                    let Some((mut service, request, claimed)) = call.take() else {
                        return Poll::Ready(Ok(empty(StatusCode::INTERNAL_SERVER_ERROR)));
                    };
                    match found {
                        Ok(WebhookIdState::New) => State::Calling {
                            future: service.call(request),
                            claimed: Some(claimed),
                        },
                        Ok(WebhookIdState::Done) => {
                            tracing::debug!(webhook_id = %claimed.id, "acknowledged a redelivered webhook without processing it");
                            State::answer(StatusCode::OK)
                        }
                        Ok(_) => {
                            tracing::debug!(webhook_id = %claimed.id, "a webhook with this id is being processed; answering 409 so that it is redelivered later");
                            State::answer(StatusCode::CONFLICT)
                        }
                        Err(error) => {
                            tracing::warn!(
                                webhook_id = %claimed.id,
                                %error,
                                "webhook deduplication failed; answering 503 so that it is redelivered"
                            );
                            State::answer(StatusCode::SERVICE_UNAVAILABLE)
                        }
                    }
                }
                StateProj::Calling { future, claimed } => {
                    let outcome = ready!(future.poll(cx));
                    let succeeded = outcome
                        .as_ref()
                        .is_ok_and(|response| response.status().is_success());
                    match claimed.take() {
                        Some(claimed) => State::Finishing {
                            finish: Some(claimed.finish(succeeded)),
                            outcome: Some(outcome),
                        },
                        None => return Poll::Ready(outcome),
                    }
                }
                StateProj::Finishing { finish, outcome } => {
                    if let Some(recording) = finish.as_mut() {
                        ready!(recording.as_mut().poll(cx));
                    }
                    *finish = None;
                    let outcome = outcome.take();
                    return Poll::Ready(
                        outcome.unwrap_or_else(|| Ok(empty(StatusCode::INTERNAL_SERVER_ERROR))),
                    );
                }
                StateProj::Answer { status } => {
                    let status = status.take().unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    return Poll::Ready(Ok(empty(status)));
                }
            };
            state.set(next);
        }
    }
}

/// The state after the body is read: refused, claiming its id, or calling the service.
fn verified<S, B>(pending: Pending<S>, body: Bytes) -> State<S, B, S::Future, S::Response, S::Error>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    let Pending {
        mut parts,
        mut service,
        verifier,
        dedup,
    } = pending;
    let event = match verifier.verify(&parts.headers, &body) {
        Ok(event) => event,
        Err(error) => return State::refused(&error),
    };
    let id = parts
        .headers
        .get(super::verifier::HEADER_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    parts.extensions.insert(event);
    // The body is buffered now: its framing is its length.
    parts.headers.remove(TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let request = Request::from_parts(parts, Full::new(body));
    match dedup {
        None => State::Calling {
            future: service.call(request),
            claimed: None,
        },
        Some(Dedup {
            store,
            namespace,
            lease,
        }) => {
            let claimed = Claimed {
                store: store.clone(),
                key: format!("{namespace}:{id}"),
                id,
                owner: format!("{:032x}", fastrand::u128(..)),
            };
            let (key, owner) = (claimed.key.clone(), claimed.owner.clone());
            State::Claiming {
                claim: Box::pin(async move { store.0.claim(&key, &owner, lease).await }),
                call: Some((service, request, claimed)),
            }
        }
    }
}

fn empty<R: Default>(status: StatusCode) -> Response<R> {
    let mut response = Response::new(R::default());
    *response.status_mut() = status;
    response
}

impl<S, B> fmt::Debug for WebhookFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
