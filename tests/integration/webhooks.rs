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

/// `RedisWebhookDedup`: a fleet of receivers sharing one real `redis-server` (started by
/// the test on a free loopback port, killed when it ends).
#[cfg(feature = "redis")]
mod redis_dedup {
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use understory_auth::webhooks::{RedisWebhookDedup, WebhookDedup};

    use super::*;

    /// A `redis-server` on 127.0.0.1, killed on drop.
    struct Redis {
        url: String,
        child: Child,
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_redis() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let redis = Redis {
            url: format!("redis://127.0.0.1:{port}/"),
            child,
        };
        let up = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "redis-server did not start on port {port}");
        redis
    }

    #[tokio::test]
    async fn claims_are_shared_by_the_fleet_and_expire() {
        let redis = start_redis();
        let a = RedisWebhookDedup::new(&redis.url).unwrap();
        let b = RedisWebhookDedup::new(&redis.url)
            .unwrap()
            .ttl(Duration::from_millis(300));
        assert!(a.claim("msg_1").await.unwrap());
        assert!(!b.claim("msg_1").await.unwrap());
        a.release("msg_1").await.unwrap();
        assert!(b.claim("msg_1").await.unwrap());
        assert!(!a.claim("msg_1").await.unwrap());
        // b's claim had a 300 ms lifetime: gone once Redis expired it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(a.claim("msg_1").await.unwrap());
    }

    #[tokio::test]
    async fn a_redelivery_to_another_receiver_of_the_fleet_is_acknowledged_unprocessed() {
        let redis = start_redis();
        let sandbox = WebhookSandbox::new();
        let dedup = || RedisWebhookDedup::new(&redis.url).unwrap();
        let first = Receiver::start(layer_for(&sandbox).dedup(dedup())).await;
        let second = Receiver::start(layer_for(&sandbox).dedup(dedup())).await;
        let message = sandbox.booking_created();
        assert_eq!(deliver(&sandbox, &first, &message).await, 204);
        assert_eq!(deliver(&sandbox, &second, &message.retry()).await, 200);
        assert_eq!(first.processed() + second.processed(), 1);
    }

    #[tokio::test]
    async fn an_unreachable_redis_answers_503_so_the_webhook_is_redelivered() {
        let redis = start_redis();
        let url = redis.url.clone();
        drop(redis);
        let sandbox = WebhookSandbox::new();
        let dedup = RedisWebhookDedup::new(&url).unwrap();
        let receiver = Receiver::start(layer_for(&sandbox).dedup(dedup)).await;
        let message = sandbox.booking_created();
        assert_eq!(deliver(&sandbox, &receiver, &message).await, 503);
        assert_eq!(receiver.processed(), 0);
    }
}
