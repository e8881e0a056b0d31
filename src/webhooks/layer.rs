//! [`WebhookLayer`]: verifies Understory's webhooks in front of a receiving tower service.
//!
//! The layer, its service and the service's response future. The future reads the body
//! (up to the limit), verifies it, claims the `webhook-id` when deduplication is on, calls
//! the inner service (the instance that was polled ready) and, if that fails, releases the
//! id again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::dedup::SharedDedup;

/// A boxed error, as `tower::BoxError` (this module does not depend on `tower` itself).
type BoxError = Box<dyn std::error::Error + Send + Sync>;
use super::{WebhookDedup, WebhookDedupError, WebhookError, WebhookVerifier};

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
/// With [`dedup`](Self::dedup), a `webhook-id` already processed is answered `200 OK`
/// without calling the inner service (Understory redelivers a webhook until it gets a
/// 2xx, so acknowledging stops the redeliveries); an id whose processing failed (an error
/// or a non-2xx answer) is released, so the redelivery is processed.
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
            verifier,
            dedup: None,
        }
    }

    /// Acknowledges redeliveries of an already processed `webhook-id` (`200 OK`) without
    /// calling the inner service, recording ids in `store`. A failing store makes the
    /// layer answer `503 Service Unavailable` (Understory will redeliver).
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
}

impl<S> Layer<S> for WebhookLayer {
    type Service = VerifyWebhook<S>;

    fn layer(&self, inner: S) -> VerifyWebhook<S> {
        VerifyWebhook {
            inner,
            verifier: self.verifier.clone(),
            dedup: self.dedup.clone(),
        }
    }
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
    dedup: Option<SharedDedup>,
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
    dedup: Option<SharedDedup>,
}

pin_project! {
    /// The response future of [`VerifyWebhook`].
    pub struct WebhookFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, B, S::Future, S::Response, S::Error>,
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
        // Recording the `webhook-id`; the service is called if it was not seen yet.
        Claiming {
            claim: BoxFuture<'static, Result<bool, WebhookDedupError>>,
            call: Option<(S, Request<Full<Bytes>>, Claimed)>,
        },
        // The inner service was called; a claimed id is released if it fails.
        Calling {
            #[pin]
            future: F,
            claimed: Option<Claimed>,
        },
        // The inner service failed: forgetting the id before answering, so that the
        // redelivery is processed.
        Releasing {
            release: BoxFuture<'static, ()>,
            outcome: Option<Result<T, E>>,
        },
        // Answering at once (a refusal, a duplicate).
        Answer {
            status: Option<StatusCode>,
        },
    }
}

/// An id claimed in the dedup store, to release if processing fails.
struct Claimed {
    dedup: SharedDedup,
    id: String,
}

impl Claimed {
    fn release(self) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Err(error) = self.dedup.0.release(&self.id).await {
                tracing::warn!(
                    webhook_id = %self.id,
                    %error,
                    "could not release a webhook id after its processing failed; its redelivery will be acknowledged unprocessed"
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
    fn answer(status: StatusCode) -> Self {
        WebhookFuture {
            state: State::Answer {
                status: Some(status),
            },
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
                            Self::refused(&error).state
                        }
                    }
                }
                StateProj::Claiming { claim, call } => {
                    let claimed = ready!(claim.as_mut().poll(cx));
                    let Some((mut service, request, claim)) = call.take() else {
                        return Poll::Ready(Ok(empty(StatusCode::INTERNAL_SERVER_ERROR)));
                    };
                    match claimed {
                        Ok(true) => State::Calling {
                            future: service.call(request),
                            claimed: Some(claim),
                        },
                        Ok(false) => {
                            tracing::debug!(webhook_id = %claim.id, "acknowledged a redelivered webhook without processing it");
                            Self::answer(StatusCode::OK).state
                        }
                        Err(error) => {
                            tracing::warn!(
                                webhook_id = %claim.id,
                                %error,
                                "webhook deduplication failed; answering 503 so that it is redelivered"
                            );
                            Self::answer(StatusCode::SERVICE_UNAVAILABLE).state
                        }
                    }
                }
                StateProj::Calling { future, claimed } => {
                    let outcome = ready!(future.poll(cx));
                    let failed = outcome
                        .as_ref()
                        .map_or(true, |response| !response.status().is_success());
                    match claimed.take() {
                        Some(claim) if failed => State::Releasing {
                            release: claim.release(),
                            outcome: Some(outcome),
                        },
                        _ => return Poll::Ready(outcome),
                    }
                }
                StateProj::Releasing { release, outcome } => {
                    ready!(release.as_mut().poll(cx));
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
        Err(error) => return WebhookFuture::<S, B>::refused(&error).state,
    };
    let id = parts
        .headers
        .get(super::verifier::HEADER_ID)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    parts.extensions.insert(event);
    let request = Request::from_parts(parts, Full::new(body));
    match dedup {
        None => State::Calling {
            future: service.call(request),
            claimed: None,
        },
        Some(dedup) => {
            let store = dedup.clone();
            let claim_id = id.clone();
            State::Claiming {
                claim: Box::pin(async move { store.0.claim(&claim_id).await }),
                call: Some((service, request, Claimed { dedup, id })),
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
