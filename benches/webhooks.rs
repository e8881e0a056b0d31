//! What does verifying a webhook cost per request, compared with the bare HMAC-SHA256 of
//! the same signed content?
//!
//! Every variant handles the same `v1.booking.created` message from the `WebhookSandbox`
//! (a typical ~300-byte thin event, one `v1` signature). Variants:
//!
//! * `bare_hmac`: `Hmac<Sha256>` keyed with the secret, fed `{id}.{timestamp}.{body}` and
//!   compared with the decoded signature (`verify_slice`): the floor, and the baseline of
//!   the ratios;
//! * `verify`: `WebhookVerifier::verify` on the headers and body (header parsing, the
//!   tolerance check, base64, the HMAC, and parsing the typed event);
//! * `parse_event`: only `serde_json::from_slice::<WebhookEvent>` of the body, to show how
//!   much of `verify` is the typed event rather than the signature check;
//! * `layer`: the same message through `WebhookLayer` in front of a `tower::service_fn` that
//!   answers at once (buffering the body, verifying, rebuilding the request, the event
//!   into the extensions), polled by hand.
//!
//! Besides criterion's figures, it prints an interleaved comparison (variants alternated
//! round by round, ratios to `bare_hmac` taken per round).
//!
//! Run: `cargo bench --features test-util,webhooks --bench webhooks`

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use criterion::Criterion;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use sha2::Sha256;
use tower::{Layer, Service};
use understory_auth::testing::WebhookSandbox;
use understory_auth::webhooks::{WebhookEvent, WebhookLayer, WebhookVerifier};

mod common;

/// One message: what the variants verify.
struct Message {
    key: Vec<u8>,
    headers: HeaderMap,
    body: Bytes,
}

fn message(sandbox: &WebhookSandbox) -> Message {
    let message = sandbox.booking_created();
    let key = STANDARD
        .decode(sandbox.secret().trim_start_matches("whsec_"))
        .expect("base64 secret");
    Message {
        key,
        headers: sandbox.headers(&message),
        body: Bytes::copy_from_slice(message.body()),
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers[name].to_str().expect("ASCII")
}

/// The floor: HMAC-SHA256 of the signed content, compared in constant time.
fn bare_hmac(m: &Message) -> bool {
    let signature = header(&m.headers, "webhook-signature");
    let tag = STANDARD
        .decode(signature.trim_start_matches("v1,"))
        .expect("base64 tag");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&m.key).expect("any key length");
    mac.update(header(&m.headers, "webhook-id").as_bytes());
    mac.update(b".");
    mac.update(header(&m.headers, "webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&m.body);
    mac.verify_slice(&tag).is_ok()
}

fn parse_event(m: &Message) -> bool {
    serde_json::from_slice::<WebhookEvent>(&m.body).is_ok()
}

fn verify(verifier: &WebhookVerifier, m: &Message) -> bool {
    verifier.verify(&m.headers, &m.body).is_ok()
}

/// The inner service's answer, ready at once.
type Answer = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// An inner service that answers at once.
fn answer() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = Answer,
> + Clone {
    tower::service_fn(|_: Request<Full<Bytes>>| {
        std::future::ready(Ok(Response::new(Full::default())))
    })
}

fn through_layer<S>(service: &mut S, m: &Message) -> bool
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>,
{
    let mut request = Request::post("/webhooks")
        .body(Full::new(m.body.clone()))
        .expect("request");
    *request.headers_mut() = m.headers.clone();
    common::poll_ready_now(std::future::poll_fn(|cx| service.poll_ready(cx))).expect("ready");
    let response = common::poll_ready_now(service.call(request)).expect("answer");
    response.status() == 200
}

/// Runs `calls` times `f`, asserting every outcome, and returns the time they took.
fn timed(calls: u64, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    for _ in 0..calls {
        assert!(black_box(f()), "the message verifies");
    }
    start.elapsed()
}

fn main() {
    let sandbox = WebhookSandbox::new();
    let m = message(&sandbox);
    let verifier = WebhookVerifier::new(sandbox.secret()).expect("sandbox secret");
    let mut layered = WebhookLayer::new(verifier.clone()).layer(answer());

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("webhooks");
    group.bench_function("bare_hmac", |b| {
        b.iter(|| assert!(bare_hmac(black_box(&m))))
    });
    group.bench_function("parse_event", |b| {
        b.iter(|| assert!(parse_event(black_box(&m))))
    });
    group.bench_function("verify", |b| {
        b.iter(|| assert!(verify(&verifier, black_box(&m))))
    });
    group.bench_function("layer", |b| {
        b.iter(|| assert!(through_layer(&mut layered, black_box(&m))))
    });
    group.finish();
    c.final_summary();

    let (rounds, iters) = if common::full_run() {
        (30, 20_000)
    } else {
        (2, 100)
    };
    let mut layered = WebhookLayer::new(verifier.clone()).layer(answer());
    let mut variants: Vec<common::Runner<'_>> = vec![
        (
            "bare_hmac",
            Box::new(|n| timed(n, || bare_hmac(black_box(&m)))),
        ),
        (
            "parse_event",
            Box::new(|n| timed(n, || parse_event(black_box(&m)))),
        ),
        (
            "verify",
            Box::new(|n| timed(n, || verify(&verifier, black_box(&m)))),
        ),
        (
            "layer",
            Box::new(|n| timed(n, || through_layer(&mut layered, black_box(&m)))),
        ),
    ];
    let rows = common::interleave(rounds, iters, &mut variants, 0);
    common::print_rows(
        &format!("webhooks, interleaved: {rounds} rounds × {iters} messages per variant"),
        "ns/message",
        "bare_hmac",
        &rows,
    );
}
