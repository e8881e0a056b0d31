//! Receiving webhooks over real loopback HTTP: `WebhookLayer` in an axum `Router` and under
//! a plain hyper server, fed by the `WebhookSandbox` (current and rotated secrets, retries,
//! tampered bodies, old timestamps) and by hand-made requests (malformed headers, bodies
//! over the limit).
#![cfg(all(feature = "test-util", feature = "webhooks"))]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::post;
use axum::{Extension, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt, service_fn};
use understory_auth::testing::{WebhookMessage, WebhookSandbox};
use understory_auth::webhooks::{
    DEFAULT_WEBHOOK_TOLERANCE, MemoryWebhookDedup, WebhookEvent, WebhookLayer, WebhookPayload,
    WebhookVerifier,
};

/// What the receiving handler saw: each event with the body bytes it was handed.
type Seen = Arc<Mutex<Vec<(WebhookEvent, Bytes)>>>;

/// An axum receiver on 127.0.0.1 behind a `WebhookLayer`; stops when dropped.
struct Receiver {
    url: String,
    seen: Seen,
    /// How many of the first calls the handler fails with a 500.
    failures: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    async fn start(layer: WebhookLayer) -> Receiver {
        let seen = Seen::default();
        let failures = Arc::new(AtomicUsize::new(0));
        let state = (seen.clone(), failures.clone());
        let handler = move |Extension(event): Extension<WebhookEvent>, body: Bytes| {
            let (seen, failures) = state.clone();
            async move {
                seen.lock().push((event, body));
                let fail = failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        };
        let app = Router::new()
            .route("/webhooks/understory", post(handler))
            .layer(layer);
        let (addr, server) = serve(app).await;
        Receiver {
            url: format!("http://{addr}/webhooks/understory"),
            seen,
            failures,
            server,
        }
    }

    /// How many webhooks reached the handler.
    fn processed(&self) -> usize {
        self.seen.lock().len()
    }
}

/// Serves `app` on 127.0.0.1: its address, and the server's task.
async fn serve(app: Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("axum serves");
    });
    (addr, server)
}

fn layer_for(sandbox: &WebhookSandbox) -> WebhookLayer {
    WebhookLayer::new(WebhookVerifier::new(sandbox.secret()).expect("sandbox secret"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

async fn deliver(sandbox: &WebhookSandbox, receiver: &Receiver, message: &WebhookMessage) -> u16 {
    sandbox
        .deliver(&receiver.url, message)
        .await
        .expect("delivered")
        .as_u16()
}

#[tokio::test]
async fn an_authentic_webhook_reaches_an_axum_handler_with_its_bytes_and_typed_event() {
    let sandbox = WebhookSandbox::new();
    let receiver = Receiver::start(layer_for(&sandbox)).await;
    let message = sandbox.booking_created();
    assert_eq!(deliver(&sandbox, &receiver, &message).await, 204);
    let seen = receiver.seen.lock();
    let (event, body) = &seen[0];
    assert_eq!(
        body.as_ref(),
        message.body(),
        "the handler gets the signed bytes"
    );
    let sent: serde_json::Value = serde_json::from_slice(message.body()).unwrap();
    assert_eq!(event.id, sent["id"]);
    let WebhookPayload::BookingCreated(ids) = &event.payload else {
        panic!("untyped: {event:?}");
    };
    assert_eq!(ids.booking_id, sent["payload"]["booking_id"]);
}

#[tokio::test]
async fn an_unknown_event_type_reaches_the_handler_untouched() {
    let sandbox = WebhookSandbox::new();
    let receiver = Receiver::start(layer_for(&sandbox)).await;
    let payload = serde_json::json!({"voucher_id": "v", "amount": {"value": 1.5}});
    let message = sandbox.message("v2.voucher.redeemed", payload.clone());
    assert_eq!(deliver(&sandbox, &receiver, &message).await, 204);
    let seen = receiver.seen.lock();
    assert_eq!(seen[0].0.payload, WebhookPayload::Other(payload));
}

#[tokio::test]
async fn tampered_and_re_serialised_bodies_are_refused_with_401_before_the_handler() {
    let sandbox = WebhookSandbox::new();
    let receiver = Receiver::start(layer_for(&sandbox)).await;
    let message = sandbox.booking_created();
    assert_eq!(
        deliver(&sandbox, &receiver, &message.clone().tampered()).await,
        401
    );
    let value: serde_json::Value = serde_json::from_slice(message.body()).unwrap();
    let pretty = serde_json::to_vec_pretty(&value).unwrap();
    assert_eq!(
        deliver(&sandbox, &receiver, &message.clone().delivered_as(pretty)).await,
        401
    );
    assert_eq!(receiver.processed(), 0);
    // The untouched message still goes through.
    assert_eq!(deliver(&sandbox, &receiver, &message).await, 204);
}

#[tokio::test]
async fn during_a_rotation_either_secret_verifies() {
    let mut sandbox = WebhookSandbox::new();
    let old = sandbox.secret().to_owned();
    let new = sandbox.rotate_secret();
    let knows_old = Receiver::start(layer_for(&WebhookSandbox::with_secret(&old).unwrap())).await;
    let knows_new = Receiver::start(layer_for(&sandbox)).await;
    let knows_both = Receiver::start(WebhookLayer::new(
        WebhookVerifier::new(&old)
            .unwrap()
            .with_secret(&new)
            .unwrap(),
    ))
    .await;
    // Signed with both secrets: every receiver accepts it.
    let message = sandbox.booking_created();
    for receiver in [&knows_old, &knows_new, &knows_both] {
        assert_eq!(deliver(&sandbox, receiver, &message).await, 204);
    }
    // Rotation over: only the new secret signs; the old-only receiver refuses.
    sandbox.end_rotation();
    let message = sandbox.booking_created();
    assert_eq!(deliver(&sandbox, &knows_old, &message).await, 401);
    assert_eq!(deliver(&sandbox, &knows_new, &message).await, 204);
    assert_eq!(deliver(&sandbox, &knows_both, &message).await, 204);
    // Signed with the old secret only: the receiver that knows both accepts it.
    let before = WebhookSandbox::with_secret(&old).unwrap();
    assert_eq!(
        deliver(&before, &knows_both, &before.booking_created()).await,
        204
    );
}

#[tokio::test]
async fn timestamps_just_inside_the_tolerance_pass_and_just_outside_are_refused() {
    let sandbox = WebhookSandbox::new();
    let receiver = Receiver::start(layer_for(&sandbox)).await;
    let tolerance = DEFAULT_WEBHOOK_TOLERANCE.as_secs();
    // A margin of 10 s either side, for the seconds that pass between signing and checking
    // (the exact edges are unit-tested with an injected clock).
    let now = unix_now();
    let cases = [
        (now - tolerance + 10, 204),
        (now + tolerance - 10, 204),
        (now - tolerance - 10, 401),
        (now + tolerance + 10, 401),
        (1_600_000_000, 401),
    ];
    for (signed_at, status) in cases {
        let message = sandbox.booking_created().signed_at(signed_at);
        assert_eq!(
            deliver(&sandbox, &receiver, &message).await,
            status,
            "{signed_at}"
        );
    }
    assert_eq!(receiver.processed(), 2);
}

#[tokio::test]
async fn with_dedup_a_replayed_id_is_acknowledged_without_being_processed_again() {
    let sandbox = WebhookSandbox::new();
    let receiver = Receiver::start(layer_for(&sandbox).dedup(MemoryWebhookDedup::new())).await;
    let message = sandbox.booking_created();
    assert_eq!(deliver(&sandbox, &receiver, &message).await, 204);
    assert_eq!(deliver(&sandbox, &receiver, &message.retry()).await, 200);
    assert_eq!(deliver(&sandbox, &receiver, &message).await, 200);
    assert_eq!(receiver.processed(), 1);
    // A different message is processed.
    assert_eq!(
        deliver(&sandbox, &receiver, &sandbox.booking_created()).await,
        204
    );
    assert_eq!(receiver.processed(), 2);

    // Without dedup, the same replay is processed every time.
    let plain = Receiver::start(layer_for(&sandbox)).await;
    for _ in 0..2 {
        assert_eq!(deliver(&sandbox, &plain, &message.retry()).await, 204);
    }
    assert_eq!(plain.processed(), 2);
}

#[tokio::test]
async fn with_dedup_a_delivery_whose_processing_failed_is_processed_on_retry() {
    let sandbox = WebhookSandbox::new();
    let receiver = Receiver::start(layer_for(&sandbox).dedup(MemoryWebhookDedup::new())).await;
    receiver.failures.store(1, Ordering::SeqCst);
    let message = sandbox.booking_created();
    assert_eq!(deliver(&sandbox, &receiver, &message).await, 500);
    assert_eq!(deliver(&sandbox, &receiver, &message.retry()).await, 204);
    assert_eq!(deliver(&sandbox, &receiver, &message.retry()).await, 200);
    assert_eq!(receiver.processed(), 2);
}

#[tokio::test]
async fn every_missing_or_malformed_header_is_a_400_before_the_handler() {
    let sandbox = WebhookSandbox::new();
    let receiver = Receiver::start(layer_for(&sandbox)).await;
    let message = sandbox.booking_created();
    let good = sandbox.headers(&message);
    let http = reqwest::Client::new();
    let send = |headers: http::HeaderMap| {
        http.post(&receiver.url)
            .headers(headers)
            .body(message.body().to_vec())
            .send()
    };
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let mut headers = good.clone();
        headers.remove(name);
        assert_eq!(send(headers).await.unwrap().status(), 400, "without {name}");
    }
    let malformed = [
        ("webhook-id", ""),
        ("webhook-timestamp", "yesterday"),
        ("webhook-timestamp", "-1"),
        ("webhook-timestamp", "1.5e9"),
        ("webhook-signature", "v1,"),
        ("webhook-signature", "v1,not-base64!"),
        (
            "webhook-signature",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "webhook-signature",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
    ];
    for (name, value) in malformed {
        let mut headers = good.clone();
        headers.insert(name, value.parse().unwrap());
        assert_eq!(
            send(headers).await.unwrap().status(),
            400,
            "{name}: {value:?}"
        );
    }
    // A signature that is well-formed but wrong is a 401.
    let mut headers = good.clone();
    let wrong = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    headers.insert("webhook-signature", wrong.parse().unwrap());
    assert_eq!(send(headers).await.unwrap().status(), 401);
    assert_eq!(receiver.processed(), 0);
    assert_eq!(send(good).await.unwrap().status(), 204);
}

#[tokio::test]
async fn router_layer_also_answers_other_paths_and_a_route_layer_does_not() {
    let sandbox = WebhookSandbox::new();
    let route = || post(|| async { StatusCode::NO_CONTENT });
    let path = "/webhooks/understory";
    let http = reqwest::Client::new();
    // (app, GET /health, GET on the webhook path)
    let cases = [
        // `Router::layer` wraps axum's 404 fallback and the route's 405: both become the
        // layer's 400 (no webhook headers).
        (
            Router::new()
                .route(path, route())
                .layer(layer_for(&sandbox)),
            400,
            400,
        ),
        // `Router::route_layer`: unknown paths keep their 404.
        (
            Router::new()
                .route(path, route())
                .route_layer(layer_for(&sandbox)),
            404,
            400,
        ),
        // The route's own `route_layer`: only a POST to the webhook path is verified.
        (
            Router::new().route(path, route().route_layer(layer_for(&sandbox))),
            404,
            405,
        ),
    ];
    for (case, (app, other_path, other_method)) in cases.into_iter().enumerate() {
        let (addr, server) = serve(app).await;
        let get = |path: &str| http.get(format!("http://{addr}{path}")).send();
        assert_eq!(
            get("/health").await.unwrap().status(),
            other_path,
            "case {case}"
        );
        assert_eq!(
            get(path).await.unwrap().status(),
            other_method,
            "case {case}"
        );
        let message = sandbox.booking_created();
        let url = format!("http://{addr}{path}");
        let delivered = sandbox.deliver(&url, &message).await.unwrap();
        assert_eq!(delivered.as_u16(), 204, "case {case}");
        server.abort();
    }
}

#[tokio::test]
async fn refusals_are_logged_without_the_secrets() {
    // A second subscriber keeps tracing from caching another thread's verdict on our
    // callsites (see the same note in `middleware.rs`).
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let logs = crate::common::Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let receiving = WebhookSandbox::new();
    let stranger = WebhookSandbox::new();
    let receiver = Receiver::start(layer_for(&receiving)).await;
    let message = stranger.booking_created();
    assert_eq!(deliver(&stranger, &receiver, &message).await, 401);
    let mine = receiving.booking_created().tampered();
    assert_eq!(deliver(&receiving, &receiver, &mine).await, 401);

    let logs = logs.text();
    assert!(logs.contains("refused a webhook"), "{logs}");
    assert!(logs.contains("no signature matches"), "{logs}");
    for sandbox in [&receiving, &stranger] {
        let key = sandbox.secret().trim_start_matches("whsec_");
        assert!(!logs.contains(key), "a secret was logged:\n{logs}");
    }
}

/// `WebhookLayer` around a plain `tower::service_fn`, served by hyper alone. `calls`
/// counts the calls of the inner service, `read` the request body bytes the layer read.
async fn start_hyper_receiver(
    layer: WebhookLayer,
    calls: Arc<AtomicUsize>,
    read: Arc<AtomicUsize>,
) -> SocketAddr {
    let inner = service_fn(move |request: Request<Full<Bytes>>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let id = request
                .extensions()
                .get::<WebhookEvent>()
                .map(|event| event.id.clone())
                .unwrap_or_default();
            let body = request.into_body().collect().await?.to_bytes();
            let answer = format!("{id} {}", body.len());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
        }
    });
    let service = layer.layer(inner);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (service, read) = (service.clone(), read.clone());
            tokio::spawn(async move {
                let hyper_service =
                    hyper::service::service_fn(move |request: Request<Incoming>| {
                        let read = read.clone();
                        let counted = request.map(|body| {
                            body.map_frame(move |frame| {
                                let len = frame.data_ref().map_or(0, Bytes::len);
                                read.fetch_add(len, Ordering::SeqCst);
                                frame
                            })
                        });
                        service.clone().oneshot(counted)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper_service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_layer_works_under_a_plain_hyper_server() {
    let sandbox = WebhookSandbox::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let read = Arc::new(AtomicUsize::new(0));
    let addr = start_hyper_receiver(layer_for(&sandbox), calls.clone(), read.clone()).await;
    let url = format!("http://{addr}/");
    let message = sandbox.booking_created();
    let http = reqwest::Client::new();
    let response = http
        .post(&url)
        .headers(sandbox.headers(&message))
        .body(message.body().to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let sent: serde_json::Value = serde_json::from_slice(message.body()).unwrap();
    let expected = format!("{} {}", sent["id"].as_str().unwrap(), message.body().len());
    assert_eq!(response.text().await.unwrap(), expected);

    let status = sandbox
        .deliver(&url, &message.clone().tampered())
        .await
        .unwrap();
    assert_eq!(status, 401);
    let old = message.signed_at(1_600_000_000);
    assert_eq!(sandbox.deliver(&url, &old).await.unwrap(), 401);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_before_it_is_all_read() {
    const LIMIT: usize = 4 * 1024;
    const CHUNK: usize = 1024;
    const OFFERED: usize = 64 * 1024 * 1024;
    let sandbox = WebhookSandbox::new();
    let verifier = WebhookVerifier::new(sandbox.secret())
        .unwrap()
        .max_body_bytes(LIMIT);
    let (calls, read) = (Arc::default(), Arc::new(AtomicUsize::new(0)));
    let addr = start_hyper_receiver(WebhookLayer::new(verifier), calls, read.clone()).await;
    let url = format!("http://{addr}/");
    let headers = sandbox.headers(&sandbox.booking_created());

    // With a Content-Length over the limit: refused from the headers, no body byte read.
    let response = reqwest::Client::new()
        .post(&url)
        .headers(headers.clone())
        .body(vec![b' '; LIMIT + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(read.load(Ordering::SeqCst), 0);

    // Streamed (chunked, no length): 64 MiB offered; the layer stops at the limit.
    let produced = Arc::new(AtomicUsize::new(0));
    let counter = produced.clone();
    let chunks = futures_util::stream::iter(0..OFFERED / CHUNK).map(move |_| {
        counter.fetch_add(CHUNK, Ordering::SeqCst);
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[b' '; CHUNK])))
    });
    let mut request = Request::post(&url).body(StreamBody::new(chunks)).unwrap();
    *request.headers_mut() = headers;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 413);
    let read = read.load(Ordering::SeqCst);
    assert!(
        read <= LIMIT + CHUNK,
        "the layer read {read} bytes for a {LIMIT}-byte limit"
    );
    // The client stopped long before the end (what it sent beyond `read` sat in socket
    // buffers when the connection closed).
    let produced = produced.load(Ordering::SeqCst);
    assert!(
        produced < OFFERED / 4,
        "{produced} of {OFFERED} bytes were produced"
    );
}

/// Deduplication over loopback HTTP, for an axum `Router` and a bare hyper server alike:
/// redeliveries while a run is going, senders that time out, concurrent copies, a failing
/// store. Every scenario ends with the event processed (a run answered 2xx) exactly once,
/// and every 2xx a sender gets is checked to come after that run.
mod dedup {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use tokio::sync::{Semaphore, mpsc};
    use understory_auth::webhooks::{WebhookDedup, WebhookDedupError, WebhookIdState};

    use super::*;

    /// The receiving handler, shared by both servers: counts its runs, how many ran at
    /// once and how many succeeded; while `held`, each run waits for a permit of `gate`;
    /// the first `fail` runs answer 500.
    #[derive(Clone, Default)]
    pub(super) struct Handler(Arc<Counters>);

    #[derive(Default)]
    pub(super) struct Counters {
        calls: AtomicUsize,
        running: AtomicUsize,
        max_running: AtomicUsize,
        succeeded: AtomicUsize,
        fail: AtomicUsize,
        held: AtomicBool,
        gate: Gate,
    }

    /// A semaphore with no permit to start with.
    pub(super) struct Gate(Semaphore);

    impl Default for Gate {
        fn default() -> Self {
            Gate(Semaphore::new(0))
        }
    }

    /// Counts a run as running until dropped (also when the server drops the handler).
    struct Running(Arc<Counters>);

    impl Drop for Running {
        fn drop(&mut self) {
            self.0.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Handler {
        async fn run(&self) -> StatusCode {
            let counters = &self.0;
            counters.calls.fetch_add(1, Ordering::SeqCst);
            let now = counters.running.fetch_add(1, Ordering::SeqCst) + 1;
            counters.max_running.fetch_max(now, Ordering::SeqCst);
            let _running = Running(counters.clone());
            if counters.held.load(Ordering::SeqCst) {
                counters.gate.0.acquire().await.expect("gate open").forget();
            }
            let fail = counters
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                counters.succeeded.fetch_add(1, Ordering::SeqCst);
                StatusCode::NO_CONTENT
            }
        }

        pub(super) fn hold(&self) {
            self.0.held.store(true, Ordering::SeqCst);
        }

        /// Lets the held runs go on, and the next ones run through.
        pub(super) fn open(&self) {
            self.0.held.store(false, Ordering::SeqCst);
            self.0.gate.0.add_permits(64);
        }

        pub(super) fn fail_next(&self, runs: usize) {
            self.0.fail.store(runs, Ordering::SeqCst);
        }

        pub(super) fn calls(&self) -> usize {
            self.0.calls.load(Ordering::SeqCst)
        }

        pub(super) fn running(&self) -> usize {
            self.0.running.load(Ordering::SeqCst)
        }

        pub(super) fn succeeded(&self) -> usize {
            self.0.succeeded.load(Ordering::SeqCst)
        }

        /// The event was processed exactly once, never by two runs at once.
        pub(super) fn assert_processed_once(&self) {
            assert_eq!(self.succeeded(), 1, "successful runs");
            assert_eq!(self.0.max_running.load(Ordering::SeqCst), 1, "runs at once");
        }
    }

    #[derive(Debug, Clone, Copy)]
    pub(super) enum Server {
        Axum,
        Hyper,
    }

    pub(super) const SERVERS: [Server; 2] = [Server::Axum, Server::Hyper];

    /// Serves `handler` behind `layer` on 127.0.0.1 with `server`; the webhook URL.
    pub(super) async fn receiver(server: Server, layer: WebhookLayer, handler: &Handler) -> String {
        match server {
            Server::Axum => {
                let handler = handler.clone();
                let route = post(move || {
                    let handler = handler.clone();
                    async move { handler.run().await }
                });
                let app = Router::new().route("/webhooks", route.route_layer(layer));
                let (addr, _server) = serve(app).await;
                format!("http://{addr}/webhooks")
            }
            Server::Hyper => {
                let handler = handler.clone();
                let inner = service_fn(move |_: Request<Full<Bytes>>| {
                    let handler = handler.clone();
                    async move {
                        let mut response = Response::new(Full::<Bytes>::default());
                        *response.status_mut() = handler.run().await;
                        Ok::<_, Infallible>(response)
                    }
                });
                let service = layer.layer(inner);
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("address");
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let service = service.clone();
                        tokio::spawn(async move {
                            let hyper_service =
                                hyper::service::service_fn(move |request: Request<Incoming>| {
                                    service.clone().oneshot(request)
                                });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), hyper_service)
                                .await;
                        });
                    }
                });
                format!("http://{addr}/webhooks")
            }
        }
    }

    /// Delivers `message` to `url`, checking that a 2xx comes only after a run succeeded.
    pub(super) async fn send(
        sandbox: &WebhookSandbox,
        url: &str,
        message: &WebhookMessage,
        handler: &Handler,
    ) -> u16 {
        let status = sandbox.deliver(url, message).await.expect("delivered");
        if status.is_success() {
            assert!(
                handler.succeeded() >= 1,
                "answered {status} before any run succeeded"
            );
        }
        status.as_u16()
    }

    /// Waits (up to 10 s) until `done` holds.
    pub(super) async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..2000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// Redelivers `message` while it is answered 409 (as a sender retries), at most 100
    /// times; the first other answer.
    pub(super) async fn redeliver(
        sandbox: &WebhookSandbox,
        url: &str,
        message: &WebhookMessage,
        handler: &Handler,
    ) -> u16 {
        for _ in 0..100 {
            let status = send(sandbox, url, &message.retry(), handler).await;
            if status != 409 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("still 409 after 100 redeliveries");
    }

    /// A slow first run: a redelivery meanwhile is answered 409 (not 200, which would stop
    /// the sender); the first run then fails, and the next redelivery is processed.
    pub(super) async fn slow_run_fails_while_redelivered(
        sandbox: &WebhookSandbox,
        first: &str,
        second: &str,
        handler: &Handler,
    ) {
        handler.hold();
        handler.fail_next(1);
        let message = sandbox.booking_created();
        let delivery = {
            let (sandbox, url, message) = (
                WebhookSandbox::with_secret(sandbox.secret()).unwrap(),
                first.to_owned(),
                message.clone(),
            );
            let handler = handler.clone();
            tokio::spawn(async move { send(&sandbox, &url, &message, &handler).await })
        };
        until("the first run started", || handler.calls() == 1).await;
        assert_eq!(send(sandbox, second, &message.retry(), handler).await, 409);
        assert_eq!(send(sandbox, first, &message.retry(), handler).await, 409);
        handler.open();
        assert_eq!(delivery.await.unwrap(), 500);
        assert_eq!(send(sandbox, second, &message.retry(), handler).await, 204);
        assert_eq!(send(sandbox, first, &message.retry(), handler).await, 200);
        assert_eq!(send(sandbox, second, &message.retry(), handler).await, 200);
        assert_eq!(handler.calls(), 2);
        handler.assert_processed_once();
    }

    /// Twenty copies of one delivery at once: one run, nineteen 409s while it goes, its
    /// 204 after it, and 200 for any copy after that.
    pub(super) async fn twenty_at_once(sandbox: &WebhookSandbox, urls: &[&str], handler: &Handler) {
        handler.hold();
        let message = sandbox.booking_created();
        let (answers, mut answered) = mpsc::unbounded_channel();
        for copy in 0..20 {
            let (sandbox, url, message) = (
                WebhookSandbox::with_secret(sandbox.secret()).unwrap(),
                urls[copy % urls.len()].to_owned(),
                message.clone(),
            );
            let (handler, answers) = (handler.clone(), answers.clone());
            tokio::spawn(async move {
                let status = send(&sandbox, &url, &message.retry(), &handler).await;
                let _ = answers.send(status);
            });
        }
        // A copy that panics (a 2xx too early) drops its sender: `recv` then ends.
        drop(answers);
        for _ in 0..19 {
            assert_eq!(answered.recv().await, Some(409));
        }
        assert_eq!(handler.calls(), 1);
        assert_eq!(handler.succeeded(), 0, "nothing was processed yet");
        handler.open();
        assert_eq!(answered.recv().await, Some(204));
        for url in urls {
            assert_eq!(send(sandbox, url, &message.retry(), handler).await, 200);
        }
        assert_eq!(handler.calls(), 1);
        handler.assert_processed_once();
    }

    /// A sender that gives up mid-run (the server drops the handler's future) and
    /// redelivers later: the claim was released, so the redelivery is processed.
    pub(super) async fn sender_times_out_mid_run(
        sandbox: &WebhookSandbox,
        first: &str,
        second: &str,
        handler: &Handler,
    ) {
        handler.hold();
        let message = sandbox.booking_created();
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let gave_up = impatient
            .post(first)
            .headers(sandbox.headers(&message))
            .body(message.body().to_vec())
            .send()
            .await;
        assert!(gave_up.is_err_and(|e| e.is_timeout()));
        until("the server dropped the run", || handler.running() == 0).await;
        assert_eq!(handler.calls(), 1);
        assert_eq!(handler.succeeded(), 0);
        handler.open();
        assert_eq!(redeliver(sandbox, second, &message, handler).await, 204);
        assert_eq!(send(sandbox, first, &message.retry(), handler).await, 200);
        assert_eq!(handler.calls(), 2);
        handler.assert_processed_once();
    }

    fn memory_layer(sandbox: &WebhookSandbox) -> WebhookLayer {
        layer_for(sandbox).dedup(MemoryWebhookDedup::new())
    }

    #[tokio::test]
    async fn a_redelivery_during_a_slow_run_that_then_fails_is_processed_later() {
        for server in SERVERS {
            let sandbox = WebhookSandbox::new();
            let handler = Handler::default();
            let url = receiver(server, memory_layer(&sandbox), &handler).await;
            slow_run_fails_while_redelivered(&sandbox, &url, &url, &handler).await;
        }
    }

    #[tokio::test]
    async fn twenty_concurrent_deliveries_of_one_id_run_the_handler_once() {
        for server in SERVERS {
            let sandbox = WebhookSandbox::new();
            let handler = Handler::default();
            let url = receiver(server, memory_layer(&sandbox), &handler).await;
            twenty_at_once(&sandbox, &[&url], &handler).await;
        }
    }

    #[tokio::test]
    async fn a_sender_timing_out_mid_run_gets_its_redelivery_processed() {
        for server in SERVERS {
            let sandbox = WebhookSandbox::new();
            let handler = Handler::default();
            let url = receiver(server, memory_layer(&sandbox), &handler).await;
            sender_times_out_mid_run(&sandbox, &url, &url, &handler).await;
        }
    }

    /// A store that fails while `down`.
    #[derive(Clone, Default)]
    struct Flaky {
        down: Arc<AtomicBool>,
        store: MemoryWebhookDedup,
    }

    impl Flaky {
        fn check(&self) -> Result<(), WebhookDedupError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(WebhookDedupError::new("the store is down"));
            }
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl WebhookDedup for Flaky {
        async fn claim(
            &self,
            key: &str,
            owner: &str,
            lease: Duration,
        ) -> Result<WebhookIdState, WebhookDedupError> {
            self.check()?;
            self.store.claim(key, owner, lease).await
        }
        async fn complete(&self, key: &str, owner: &str) -> Result<(), WebhookDedupError> {
            self.check()?;
            self.store.complete(key, owner).await
        }
        async fn release(&self, key: &str, owner: &str) -> Result<(), WebhookDedupError> {
            self.check()?;
            self.store.release(key, owner).await
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_answers_503_until_it_is_back() {
        for server in SERVERS {
            let sandbox = WebhookSandbox::new();
            let handler = Handler::default();
            let store = Flaky::default();
            store.down.store(true, Ordering::SeqCst);
            let url = receiver(server, layer_for(&sandbox).dedup(store.clone()), &handler).await;
            let message = sandbox.booking_created();
            for _ in 0..3 {
                assert_eq!(send(&sandbox, &url, &message.retry(), &handler).await, 503);
            }
            assert_eq!(handler.calls(), 0);
            store.down.store(false, Ordering::SeqCst);
            assert_eq!(send(&sandbox, &url, &message.retry(), &handler).await, 204);
            assert_eq!(send(&sandbox, &url, &message.retry(), &handler).await, 200);
            handler.assert_processed_once();
        }
    }
}

/// `RedisWebhookDedup`: a fleet of receivers sharing one real `redis-server` (started by
/// the test on a free loopback port, killed when it ends).
#[cfg(feature = "redis")]
mod redis_dedup {
    use std::time::Duration;

    use redis::AsyncCommands;
    use understory_auth::webhooks::{
        MAX_WEBHOOK_DEDUP_DURATION, RedisWebhookDedup, WebhookDedup, WebhookIdState,
    };

    use super::dedup::{
        Handler, SERVERS, Server, receiver, redeliver, send, sender_times_out_mid_run,
        slow_run_fails_while_redelivered, twenty_at_once,
    };
    use super::*;
    use crate::store::RedisServer;

    /// One receiving "process" of a fleet: its own layer and Redis store.
    fn process(sandbox: &WebhookSandbox, redis: &RedisServer) -> WebhookLayer {
        layer_for(sandbox).dedup(RedisWebhookDedup::new(&redis.url()).unwrap())
    }

    /// Two processes (an axum one and a hyper one) sharing `redis`; their URLs.
    async fn fleet(
        sandbox: &WebhookSandbox,
        redis: &RedisServer,
        handler: &Handler,
    ) -> [String; 2] {
        [
            receiver(Server::Axum, process(sandbox, redis), handler).await,
            receiver(Server::Hyper, process(sandbox, redis), handler).await,
        ]
    }

    #[tokio::test]
    async fn claims_are_shared_by_the_fleet_and_done_ids_expire() {
        let redis = RedisServer::start();
        let lease = Duration::from_secs(60);
        let a = RedisWebhookDedup::new(&redis.url()).unwrap();
        let b = RedisWebhookDedup::new(&redis.url())
            .unwrap()
            .ttl(Duration::from_millis(300));
        assert_eq!(
            a.claim("ns:msg_1", "a", lease).await.unwrap(),
            WebhookIdState::New
        );
        assert_eq!(
            b.claim("ns:msg_1", "b", lease).await.unwrap(),
            WebhookIdState::InProgress
        );
        b.release("ns:msg_1", "b").await.unwrap(); // not b's claim: nothing happens
        assert_eq!(
            b.claim("ns:msg_1", "b", lease).await.unwrap(),
            WebhookIdState::InProgress
        );
        a.release("ns:msg_1", "a").await.unwrap();
        assert_eq!(
            b.claim("ns:msg_1", "b", lease).await.unwrap(),
            WebhookIdState::New
        );
        b.complete("ns:msg_1", "b").await.unwrap();
        assert_eq!(
            a.claim("ns:msg_1", "a", lease).await.unwrap(),
            WebhookIdState::Done
        );
        // b's completion had a 300 ms lifetime: gone once Redis expired it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            a.claim("ns:msg_1", "a", lease).await.unwrap(),
            WebhookIdState::New
        );
    }

    #[tokio::test]
    async fn a_claim_of_a_dead_process_is_taken_over_after_its_lease() {
        let redis = RedisServer::start();
        let sandbox = WebhookSandbox::new();
        let handler = Handler::default();
        let layer = process(&sandbox, &redis).dedup_namespace("fleet");
        let url = receiver(Server::Hyper, layer, &handler).await;
        let message = sandbox.booking_created();
        // A process claimed the id with a short lease, then died.
        let dead = RedisWebhookDedup::new(&redis.url()).unwrap();
        let key = format!("fleet:{}", message.id());
        let lease = Duration::from_millis(500);
        assert_eq!(
            dead.claim(&key, "dead", lease).await.unwrap(),
            WebhookIdState::New
        );
        assert_eq!(send(&sandbox, &url, &message, &handler).await, 409);
        assert_eq!(handler.calls(), 0);
        assert_eq!(redeliver(&sandbox, &url, &message, &handler).await, 204);
        assert_eq!(send(&sandbox, &url, &message.retry(), &handler).await, 200);
        handler.assert_processed_once();
    }

    #[tokio::test]
    async fn a_redelivery_to_another_process_during_a_slow_run_that_fails_is_processed_later() {
        let redis = RedisServer::start();
        let sandbox = WebhookSandbox::new();
        let handler = Handler::default();
        let [first, second] = fleet(&sandbox, &redis, &handler).await;
        slow_run_fails_while_redelivered(&sandbox, &first, &second, &handler).await;
    }

    #[tokio::test]
    async fn twenty_concurrent_deliveries_across_the_fleet_run_the_handler_once() {
        let redis = RedisServer::start();
        let sandbox = WebhookSandbox::new();
        let handler = Handler::default();
        let [first, second] = fleet(&sandbox, &redis, &handler).await;
        twenty_at_once(&sandbox, &[&first, &second], &handler).await;
    }

    #[tokio::test]
    async fn a_sender_timing_out_mid_run_gets_its_redelivery_processed_by_another_process() {
        let redis = RedisServer::start();
        let sandbox = WebhookSandbox::new();
        let handler = Handler::default();
        let [first, second] = fleet(&sandbox, &redis, &handler).await;
        sender_times_out_mid_run(&sandbox, &first, &second, &handler).await;
    }

    #[tokio::test]
    async fn an_unreachable_redis_answers_503_until_it_is_back() {
        for server in SERVERS {
            let mut redis = RedisServer::start();
            redis.stop();
            let sandbox = WebhookSandbox::new();
            let handler = Handler::default();
            let url = receiver(server, process(&sandbox, &redis), &handler).await;
            let message = sandbox.booking_created();
            assert_eq!(send(&sandbox, &url, &message, &handler).await, 503);
            assert_eq!(handler.calls(), 0);
            redis.restart();
            let status = loop {
                // The store reconnects on a later call.
                match send(&sandbox, &url, &message.retry(), &handler).await {
                    503 => tokio::time::sleep(Duration::from_millis(50)).await,
                    status => break status,
                }
            };
            assert_eq!(status, 204, "{server:?}");
            assert_eq!(send(&sandbox, &url, &message.retry(), &handler).await, 200);
            handler.assert_processed_once();
        }
    }

    #[tokio::test]
    async fn subscriptions_with_different_secrets_sharing_redis_each_process_an_id() {
        let redis = RedisServer::start();
        let (one, other) = (WebhookSandbox::new(), WebhookSandbox::new());
        let (handler_one, handler_other) = (Handler::default(), Handler::default());
        let url_one = receiver(Server::Axum, process(&one, &redis), &handler_one).await;
        let url_other = receiver(Server::Hyper, process(&other, &redis), &handler_other).await;
        // The sender reuses the message (and its id) for every subscribed endpoint.
        let message = one.booking_created();
        assert_eq!(send(&one, &url_one, &message, &handler_one).await, 204);
        assert_eq!(
            send(&other, &url_other, &message, &handler_other).await,
            204
        );
        assert_eq!(
            send(&other, &url_other, &message.retry(), &handler_other).await,
            200
        );
        handler_one.assert_processed_once();
        handler_other.assert_processed_once();
        // Two keys, neither holding a secret.
        let keys: Vec<String> = redis
            .connection()
            .await
            .keys("understory-auth:webhook:*")
            .await
            .unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        for sandbox in [&one, &other] {
            let key = sandbox.secret().trim_start_matches("whsec_");
            assert!(keys.iter().all(|k| !k.contains(key)));
        }
    }

    #[tokio::test]
    async fn the_longest_ttl_is_saturated_and_claims_still_work() {
        let redis = RedisServer::start();
        let dedup = RedisWebhookDedup::new(&redis.url())
            .unwrap()
            .ttl(Duration::MAX);
        let lease = Duration::MAX;
        assert_eq!(
            dedup.claim("ns:a", "p", lease).await.unwrap(),
            WebhookIdState::New
        );
        dedup.complete("ns:a", "p").await.unwrap();
        assert_eq!(
            dedup.claim("ns:a", "q", lease).await.unwrap(),
            WebhookIdState::Done
        );
        let ttl: i64 = redis
            .connection()
            .await
            .pttl("understory-auth:webhook:ns:a")
            .await
            .unwrap();
        let max = i64::try_from(MAX_WEBHOOK_DEDUP_DURATION.as_millis()).unwrap();
        assert!(ttl > 0 && ttl <= max, "{ttl}");
    }
}
