//! [`WebhookLayer`]: verifies Understory's webhooks in front of a receiving tower service.
//!
//! The layer, its service and the service's response future. The future reads the body
//! (up to the limit), verifies it, claims the `webhook-id` when deduplication is on, calls
//! the inner service (the instance that was polled ready) and records the outcome: the id
//! is done after a 2xx, released otherwise, and released too if the future is dropped
//! before the inner service finished (the release is handed to the tokio runtime).

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
/// Its service, [`VerifyWebhook`], takes any `http::Request<B>` (`B: http_body::Body`, so
/// axum's and hyper's bodies alike) and
///
/// * refuses a body whose `Content-Length` is over the verifier's
///   [limit](WebhookVerifier::max_body_bytes) before reading it, and stops reading a body
///   as soon as it passes the limit;
/// * verifies headers and body with its [`WebhookVerifier`], and answers a refusal itself,
///   without calling the inner service: `401` for a signature that does not match or a
///   timestamp outside the tolerance, `413` for a body too large, `400` for a malformed
///   request (see [`WebhookError::status`]);
/// * otherwise calls the inner service with the same bytes, as an
///   `http::Request<http_body_util::Full<Bytes>>`, and the verified
///   [`WebhookEvent`](crate::webhooks::WebhookEvent) in the request's extensions.
///
/// With [`dedup`](Self::dedup), each `webhook-id` is processed once (see there): a
/// redelivery of an id a run processed (answered 2xx) is answered `200 OK` without calling
/// the inner service, one that arrives while another run of its id is going is answered
/// `409 Conflict` (retry later), and an id whose run failed or was dropped is processed again
/// on its next delivery.
///
/// The inner service gets the headers as received, except the framing: `Content-Length`
/// is the buffered body's length and `Transfer-Encoding` is removed.
///
/// The inner service's response body must implement `Default` (the refusals have an empty
/// body), as axum's and `http_body_util::Full`'s do.
///
/// **In axum, wrap the webhook route, not the whole router.** `Router::layer` also wraps
/// axum's fallback: a request for any other path (a health check, a scanner's probe) then
/// goes through the layer too, and is answered `400` (no webhook headers) instead of `404`,
/// with a warning logged. `Router::route_layer` leaves unknown paths their `404`; the
/// route's own `route_layer`, as below, also leaves other methods on the webhook path
/// their `405`.
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
    ///
    /// ```
    /// use understory_auth::webhooks::{WebhookLayer, WebhookVerifier};
    ///
    /// let layer = WebhookLayer::new(WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?);
    /// # Ok::<(), understory_auth::webhooks::WebhookError>(())
    /// ```
    pub fn new(verifier: WebhookVerifier) -> Self {
        WebhookLayer {
            namespace: verifier.dedup_namespace().into(),
            verifier,
            dedup: None,
            lease: DEFAULT_WEBHOOK_DEDUP_LEASE,
        }
    }

    /// Processes each `webhook-id` once, recording ids in `store`. What holds:
    ///
    /// * **No 2xx without a success.** A delivery is answered 2xx only if a run of the
    ///   inner service for its id answered a 2xx: this one (its own answer), or an earlier
    ///   one (`200 OK`, without calling the inner service; ids are remembered for the
    ///   store's ttl, by default [`DEFAULT_WEBHOOK_DEDUP_TTL`](crate::webhooks::DEFAULT_WEBHOOK_DEDUP_TTL)).
    /// * **In progress is not done.** A delivery that arrives while another run of its id
    ///   is going (in this process or, with a shared store, another) is answered
    ///   `409 Conflict` with an empty body: the sender counts it a failure and retries later.
    ///   The inner service is never called twice at once for one id (within the lease).
    /// * **A failed or dropped run does not hold the id.** After an error or a non-2xx
    ///   answer, the id is released before the answer goes out. If the request is dropped
    ///   before the inner service finished (the sender timed out and hyper or axum dropped
    ///   the future), the release is handed to the tokio runtime. If the process dies, its
    ///   claim runs out after the [lease](Self::dedup_lease) and the next delivery is
    ///   processed: the lease is what a crash costs.
    /// * **A failing store answers `503 Service Unavailable`** without calling the inner
    ///   service (Understory will redeliver).
    ///
    /// Ids are recorded under the layer's [namespace](Self::dedup_namespace), so layers
    /// for different subscriptions can share a store.
    ///
    /// ```
    /// use understory_auth::webhooks::{MemoryWebhookDedup, WebhookLayer, WebhookVerifier};
    ///
    /// let verifier = WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// let layer = WebhookLayer::new(verifier).dedup(MemoryWebhookDedup::new());
    /// # Ok::<(), understory_auth::webhooks::WebhookError>(())
    /// ```
    pub fn dedup(mut self, store: impl WebhookDedup) -> Self {
        self.dedup = Some(SharedDedup(Arc::new(store)));
        self
    }

    /// How long a run's claim on its id holds if nothing releases or completes it (its
    /// process died): default [`DEFAULT_WEBHOOK_DEDUP_LEASE`], saturated to
    /// [`MAX_WEBHOOK_DEDUP_DURATION`](crate::webhooks::MAX_WEBHOOK_DEDUP_DURATION) and at
    /// least 1 ms. Keep it longer than the inner service's longest run: a run that outlasts
    /// its lease no longer keeps a redelivery from being processed beside it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use understory_auth::webhooks::{MemoryWebhookDedup, WebhookLayer, WebhookVerifier};
    ///
    /// let verifier = WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// let layer = WebhookLayer::new(verifier)
    ///     .dedup(MemoryWebhookDedup::new())
    ///     .dedup_lease(Duration::from_secs(60));
    /// # Ok::<(), understory_auth::webhooks::WebhookError>(())
    /// ```
    pub fn dedup_lease(mut self, lease: Duration) -> Self {
        self.lease = bounded(lease);
        self
    }

    /// The namespace the layer records its ids under in the dedup store: the store's key
    /// for a webhook is `<namespace>:<webhook-id>`. By default it is derived from the
    /// verifier's first secret (16 hex characters of an HMAC under it: the same secret
    /// always gives the same namespace, which reveals nothing of the secret), so that the
    /// receivers of one subscription share their ids and those of different subscriptions
    /// never collide, although a sender reuses a message's `webhook-id` for every endpoint
    /// subscribed to it.
    ///
    /// Set it when the default would change under you: a secret rotation that puts the
    /// new secret first changes the default namespace, and ids processed before it are
    /// then processed again if redelivered. Every receiver of one subscription must use
    /// the same namespace.
    ///
    /// ```
    /// use understory_auth::webhooks::{MemoryWebhookDedup, WebhookLayer, WebhookVerifier};
    ///
    /// let verifier = WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
    /// let layer = WebhookLayer::new(verifier)
    ///     .dedup(MemoryWebhookDedup::new())
    ///     .dedup_namespace("bookings-service");
    /// # Ok::<(), understory_auth::webhooks::WebhookError>(())
    /// ```
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

/// The service made by [`WebhookLayer`]: it verifies each webhook and passes the authentic
/// ones on to the inner service `S`.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower::{Layer, service_fn};
/// use understory_auth::webhooks::{VerifyWebhook, WebhookLayer, WebhookVerifier};
///
/// let inner = service_fn(|_: http::Request<Full<Bytes>>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::<Bytes>::default()))
/// });
/// let verifier = WebhookVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// let service: VerifyWebhook<_> = WebhookLayer::new(verifier).layer(inner);
/// # Ok::<(), understory_auth::webhooks::WebhookError>(())
/// ```
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
            return WebhookFuture::refused(&error);
        }
        // The call happens once the body is read, on the instance that was polled ready:
        // take it, and leave a fresh clone (which must be polled ready itself) in its place.
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
    /// Refuses a body announced (`Content-Length`, or the body's own size hint) as larger
    /// than the limit.
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
    /// The response future of [`VerifyWebhook`].
    ///
    /// Dropped after it claimed a `webhook-id` and before the inner service finished (the
    /// sender went away), it hands the release of the claim to the current tokio runtime
    /// (without one, the claim runs out with its lease).
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
        // Reading the body, up to the limit.
        Reading {
            #[pin]
            collect: Collect<Limited<B>>,
            // Boxed, so that the states after it do not make the future larger.
            pending: Option<Box<Pending<S>>>,
        },
        // Claiming the `webhook-id`; the service is called if it is new.
        Claiming {
            claim: BoxFuture<'static, Result<WebhookIdState, WebhookDedupError>>,
            call: Option<(S, Request<Full<Bytes>>, Claimed)>,
        },
        // The inner service was called; a claimed id is completed or released after it.
        Calling {
            #[pin]
            future: F,
            claimed: Option<Claimed>,
        },
        // Recording the outcome (the id completed after a success, released after a
        // failure) before answering, so that a redelivery finds it recorded.
        Finishing {
            finish: Option<BoxFuture<'static, ()>>,
            outcome: Option<Result<T, E>>,
        },
        // Answering at once (a refusal, a duplicate).
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
    /// Releases the claim after a failed run.
    fn release(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(error) = self.store.0.release(&self.key, &self.owner).await {
                tracing::warn!(
                    webhook_id = %self.id,
                    %error,
                    "could not release a webhook id after its processing failed; its redeliveries are answered 409 until the lease runs out"
                );
            }
        })
    }

    /// Releases the claim of a run dropped before it finished.
    fn dropped(self) -> BoxFuture<'static, ()> {
        tracing::debug!(
            webhook_id = %self.id,
            "a webhook's processing was dropped before it finished; releasing its id"
        );
        self.release()
    }

    /// Records the id as processed after a successful run.
    fn complete(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(error) = self.store.0.complete(&self.key, &self.owner).await {
                tracing::warn!(
                    webhook_id = %self.id,
                    %error,
                    "could not record a webhook id as processed; a redelivery after the lease will be processed again"
                );
            }
        })
    }
}

impl<S, B> WebhookFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn refused(error: &WebhookError) -> Self {
        WebhookFuture {
            state: State::refused(error),
        }
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
                            finish: Some(if succeeded {
                                claimed.complete()
                            } else {
                                claimed.release()
                            }),
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

/// A response with `status` and an empty body.
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
