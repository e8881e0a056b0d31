//! `cargo run --example webhook_receiver --features test-util,webhooks`
//!
//! A webhook receiver (axum on 127.0.0.1) behind `WebhookLayer`, with deduplication. With
//! no credentials needed, the built-in `WebhookSandbox` signs and delivers a few webhooks to
//! it the way Understory does (an authentic one, a tampered one, a retry, a stale one, an
//! event type this version does not know), and the example prints what was accepted and
//! what was refused, then exits. With deduplication, a retry of a processed webhook is
//! acknowledged (200) without reaching the handler; one that arrives while its first run is
//! still going would get 409, so that Understory retries it later.
//!
//! For your real receiver, give `WebhookVerifier::new` the subscription's signing secret
//! (`whsec_…`) instead of the sandbox's.

use std::process::ExitCode;
use std::sync::Arc;

use axum::routing::post;
use axum::{Extension, Router};
use http::StatusCode;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use understory_auth::testing::{WebhookMessage, WebhookSandbox};
use understory_auth::webhooks::{
    MemoryWebhookDedup, WebhookEvent, WebhookLayer, WebhookPayload, WebhookVerifier,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The receiver's handler: only verified webhooks get here, each once.
async fn on_webhook(
    Extension(processed): Extension<Arc<Mutex<Vec<String>>>>,
    Extension(event): Extension<WebhookEvent>,
) -> StatusCode {
    let what = match &event.payload {
        // Thin events: fetch the booking from the API for its current state.
        WebhookPayload::BookingCreated(ids) => format!("booking {} created", ids.booking_id),
        WebhookPayload::Other(payload) => format!("{}, payload {payload}", event.event_type),
        _ => event.event_type.clone(),
    };
    processed.lock().push(what);
    StatusCode::NO_CONTENT
}

async fn run() -> Result {
    let sandbox = WebhookSandbox::new();
    let processed = Arc::new(Mutex::new(Vec::<String>::new()));

    let verifier = WebhookVerifier::new(sandbox.secret())?;
    let verify = WebhookLayer::new(verifier).dedup(MemoryWebhookDedup::new());
    // On the route itself: other paths keep their 404, other methods their 405.
    let app = Router::new()
        .route("/webhooks/understory", post(on_webhook).route_layer(verify))
        .layer(Extension(processed.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/webhooks/understory", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("receiver listening on {url}\n");

    let booking = sandbox.booking_created();
    let stale_at = booking.timestamp().saturating_sub(3600);
    let deliveries: [(&str, WebhookMessage); 5] = [
        ("an authentic v1.booking.created", booking.clone()),
        (
            "the same, one body byte changed",
            booking.clone().tampered(),
        ),
        ("Understory's retry of the first (same id)", booking.retry()),
        (
            "a capture replayed an hour later",
            booking.signed_at(stale_at),
        ),
        (
            "an event type this version does not know",
            sandbox.message(
                "v2.voucher.redeemed",
                serde_json::json!({"voucher_id": "v-1"}),
            ),
        ),
    ];
    for (what, message) in &deliveries {
        let status = sandbox.deliver(&url, message).await?;
        let verdict = match status.as_u16() {
            200 => "acknowledged, not processed again",
            204 => "accepted and processed",
            409 => "not yet: a run of this id is still going; the sender retries later",
            401 => "refused: not signed by Understory, or outside the time tolerance",
            _ => "refused",
        };
        println!("{what:<45} -> {status}: {verdict}");
    }

    println!("\nthe handler processed:");
    for line in processed.lock().iter() {
        println!("  - {line}");
    }
    server.abort();
    Ok(())
}
