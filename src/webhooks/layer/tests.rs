//! The layer in process: what it reads, which service instance it calls, what it answers
//! without calling it. (Over real HTTP, in axum and hyper: `tests/integration/webhooks.rs`.)

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{Service, ServiceExt};

use super::*;
use crate::webhooks::secret::WebhookSecret;
use crate::webhooks::verifier::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::webhooks::{MemoryWebhookDedup, WebhookEvent};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn event_body(id: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({"id": id, "type": "v1.booking.created", "timestamp": "t",
            "payload": {"booking_id": "b", "host_id": "h", "experience_id": "x", "event_id": "e"}})
        .to_string(),
    )
}

/// A request signed now with [`SECRET`], carrying `body`.
fn signed<B>(id: &str, signed_body: &[u8], body: B) -> Request<B> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let signature = WebhookSecret::parse(SECRET)
        .unwrap()
        .sign(id, &now, signed_body);
    Request::post("/webhooks")
        .header(HEADER_ID, id)
        .header(HEADER_TIMESTAMP, now)
        .header(HEADER_SIGNATURE, signature)
        .body(body)
        .unwrap()
}

/// An inner service that records what it was called with, and answers `status`.
#[derive(Clone)]
struct Recorder {
    calls: Arc<AtomicUsize>,
    status: StatusCode,
}

impl Recorder {
    fn new(status: StatusCode) -> Self {
        Recorder {
            calls: Arc::default(),
            status,
        }
    }
}

impl Service<Request<Full<Bytes>>> for Recorder {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = request
            .extensions()
            .get::<WebhookEvent>()
            .map(|e| e.id.clone());
        let mut response = Response::new(Full::new(Bytes::from(id.unwrap_or_default())));
        *response.status_mut() = self.status;
        std::future::ready(Ok(response))
    }
}

fn layer() -> WebhookLayer {
    WebhookLayer::new(WebhookVerifier::new(SECRET).unwrap().max_body_bytes(4096))
}

#[tokio::test]
async fn an_authentic_webhook_reaches_the_service_with_its_bytes_and_event() {
    let body = event_body("evt-1");
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let inner = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let recorded = recorded.clone();
        async move {
            let event = request.extensions().get::<WebhookEvent>().cloned();
            let bytes = request.into_body().collect().await?.to_bytes();
            recorded.lock().push((event, bytes));
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }
    });
    let service = layer().layer(inner);
    let request = signed("msg_1", &body, Full::new(body.clone()));
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = seen.lock();
    let (event, bytes) = &seen[0];
    assert_eq!(event.as_ref().map(|e| e.id.as_str()), Some("evt-1"));
    assert_eq!(
        bytes, &body,
        "the inner service gets the very bytes that were signed"
    );
}

/// An inner service that may be called only on the instance that was polled ready.
#[derive(Default)]
struct NeedsReady {
    ready: bool,
}

impl Clone for NeedsReady {
    fn clone(&self) -> Self {
        NeedsReady { ready: false }
    }
}

impl Service<Request<Full<Bytes>>> for NeedsReady {
    type Response = Response<Full<Bytes>>;
    type Error = &'static str;
    type Future = std::future::Ready<Result<Self::Response, &'static str>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        let ready = std::mem::take(&mut self.ready);
        std::future::ready(if ready {
            Ok(Response::new(Full::default()))
        } else {
            Err("called without poll_ready")
        })
    }
}

#[tokio::test]
async fn the_service_polled_ready_is_the_one_called_after_the_body_is_read() {
    let mut service = layer().layer(NeedsReady::default());
    let body = event_body("evt-1");
    ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap();
    let future = service.call(signed("msg_1", &body, Full::new(body.clone())));
    // A second request readies the instance left behind while the first is in flight.
    ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap();
    let second = service.call(signed("msg_2", &body, Full::new(body.clone())));
    assert_eq!(future.await.unwrap().status(), StatusCode::OK);
    assert_eq!(second.await.unwrap().status(), StatusCode::OK);
}

/// A body of `chunks` 1 KiB frames (without a known length) that counts what is read.
fn counted_stream(
    read: Arc<AtomicUsize>,
    chunks: usize,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    StreamBody::new(stream::iter(0..chunks).map(move |_| {
        read.fetch_add(1024, Ordering::SeqCst);
        Ok(Frame::data(Bytes::from_static(&[b' '; 1024])))
    }))
}

use futures_util::StreamExt;

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_refused_before_it_is_all_read() {
    let read = Arc::new(AtomicUsize::new(0));
    let recorder = Recorder::new(StatusCode::OK);
    let service = layer().layer(recorder.clone());
    let body = counted_stream(read.clone(), 1024); // 1 MiB, limit 4 KiB
    let response = service.oneshot(signed("msg_1", b"", body)).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 0);
    let read = read.load(Ordering::SeqCst);
    assert!(
        read <= 5 * 1024,
        "read {read} bytes of 1 MiB for a 4 KiB limit"
    );
}

#[tokio::test]
async fn an_announced_length_over_the_limit_is_refused_without_reading() {
    let read = Arc::new(AtomicUsize::new(0));
    let recorder = Recorder::new(StatusCode::OK);
    let service = layer().layer(recorder.clone());
    let mut request = signed("msg_1", b"", counted_stream(read.clone(), 8));
    request.headers_mut().insert("content-length", 8192.into());
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(read.load(Ordering::SeqCst), 0);
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_request_without_signature_headers_is_refused_without_reading_its_body() {
    let read = Arc::new(AtomicUsize::new(0));
    let recorder = Recorder::new(StatusCode::OK);
    let service = layer().layer(recorder.clone());
    let request = Request::post("/")
        .body(counted_stream(read.clone(), 2))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(read.load(Ordering::SeqCst), 0);
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn with_dedup_a_redelivery_is_acknowledged_and_not_processed() {
    let recorder = Recorder::new(StatusCode::OK);
    let service = layer()
        .dedup(MemoryWebhookDedup::new())
        .layer(recorder.clone());
    let body = event_body("evt-1");
    for _ in 0..3 {
        let request = signed("msg_1", &body, Full::new(body.clone()));
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 1);
    let request = signed("msg_2", &body, Full::new(body.clone()));
    service.oneshot(request).await.unwrap();
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn with_dedup_a_failed_processing_is_retried_on_redelivery() {
    let failing = Recorder::new(StatusCode::INTERNAL_SERVER_ERROR);
    let dedup = MemoryWebhookDedup::new();
    let body = event_body("evt-1");
    let service = layer().dedup(dedup.clone()).layer(failing.clone());
    for _ in 0..2 {
        let request = signed("msg_1", &body, Full::new(body.clone()));
        let response = service.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(
        failing.calls.load(Ordering::SeqCst),
        2,
        "each failure released the id"
    );
    let working = Recorder::new(StatusCode::OK);
    let service = layer().dedup(dedup).layer(working.clone());
    for _ in 0..2 {
        let request = signed("msg_1", &body, Full::new(body.clone()));
        service.clone().oneshot(request).await.unwrap();
    }
    assert_eq!(working.calls.load(Ordering::SeqCst), 1);
}

/// A dedup store that always fails.
struct Broken;

#[async_trait::async_trait]
impl WebhookDedup for Broken {
    async fn claim(
        &self,
        _: &str,
        _: &str,
        _: std::time::Duration,
    ) -> Result<WebhookIdState, WebhookDedupError> {
        Err(WebhookDedupError::new("broken"))
    }
    async fn complete(&self, _: &str, _: &str) -> Result<(), WebhookDedupError> {
        Err(WebhookDedupError::new("broken"))
    }
    async fn release(&self, _: &str, _: &str) -> Result<(), WebhookDedupError> {
        Err(WebhookDedupError::new("broken"))
    }
}

#[tokio::test]
async fn a_failing_dedup_store_answers_503_without_processing() {
    let recorder = Recorder::new(StatusCode::OK);
    let service = layer().dedup(Broken).layer(recorder.clone());
    let body = event_body("evt-1");
    let response = service
        .oneshot(signed("msg_1", &body, Full::new(body.clone())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_service_sees_the_buffered_length_and_no_transfer_encoding() {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let inner = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let recorded = recorded.clone();
        async move {
            recorded.lock().push(request.headers().clone());
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }
    });
    let service = layer().layer(inner);
    let body = event_body("evt-1");
    let mut request = signed("msg_1", &body, Full::new(body.clone()));
    request.headers_mut().insert("content-length", 5.into());
    request.headers_mut().insert(
        "transfer-encoding",
        http::HeaderValue::from_static("chunked"),
    );
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = seen.lock().pop().unwrap();
    assert_eq!(
        headers.get_all("content-length").iter().collect::<Vec<_>>(),
        [body.len().to_string().as_str()]
    );
    assert!(headers.get("transfer-encoding").is_none());
    assert!(headers.get(HEADER_ID).is_some(), "the other headers stay");
}

#[tokio::test]
async fn an_id_longer_than_the_cap_is_refused_as_malformed() {
    let recorder = Recorder::new(StatusCode::OK);
    let service = layer()
        .dedup(MemoryWebhookDedup::new())
        .layer(recorder.clone());
    let body = event_body("evt-1");
    let at_cap = "m".repeat(crate::webhooks::MAX_WEBHOOK_ID_BYTES);
    let response = service
        .clone()
        .oneshot(signed(&at_cap, &body, Full::new(body.clone())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let over = "m".repeat(crate::webhooks::MAX_WEBHOOK_ID_BYTES + 1);
    let response = service
        .oneshot(signed(&over, &body, Full::new(body.clone())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 1);
}

/// An inner service that never answers.
#[derive(Clone, Default)]
struct Hangs {
    calls: Arc<AtomicUsize>,
}

impl Service<Request<Full<Bytes>>> for Hangs {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Pending<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending()
    }
}

#[tokio::test]
async fn a_run_dropped_before_it_finished_releases_its_id_and_a_concurrent_one_gets_409() {
    let dedup = MemoryWebhookDedup::new();
    let hangs = Hangs::default();
    let service = layer().dedup(dedup.clone()).layer(hangs.clone());
    let body = event_body("evt-1");
    let mut first = service
        .clone()
        .oneshot(signed("msg_1", &body, Full::new(body.clone())));
    // Run it until the inner service was called (the claim is held).
    let polled = futures_util::poll!(&mut first);
    assert!(polled.is_pending());
    assert_eq!(hangs.calls.load(Ordering::SeqCst), 1);
    let during = service
        .clone()
        .oneshot(signed("msg_1", &body, Full::new(body.clone())))
        .now_or_never();
    assert_eq!(
        during.map(|r| r.unwrap().status()),
        Some(StatusCode::CONFLICT)
    );
    // The sender went away: the server drops the future; the release runs on the runtime.
    drop(first);
    tokio::task::yield_now().await;
    let recorder = Recorder::new(StatusCode::OK);
    let service = layer().dedup(dedup).layer(recorder.clone());
    let response = service
        .oneshot(signed("msg_1", &body, Full::new(body.clone())))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 1);
}

use futures_util::FutureExt;
