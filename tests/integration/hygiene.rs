//! Secret hygiene: in every scenario below (tokens fetched, rejected and replaced, a wrong
//! secret, every kind of token endpoint fault, answers that echo the request back in every
//! place a server can put it, both client authentication methods, both integrations),
//! neither the client secret nor any token appears in any `tracing` output (every level down
//! to TRACE, every target, `log` records of reqwest included) nor in the `Debug` or `Display`
//! of any public type or error (with every `source()`).
//!
//! What is looked for is taken from the wire, as the sandbox recorded it: the secrets as sent
//! (raw, form-encoded, inside the Basic header) and every token the sandbox issued or sent.
//!
//! Excluded on purpose: `testing::RecordedRequest` (and the lists of them), whose job is to
//! show a test exactly what went over the wire, the `Authorization` header and the form body
//! with the secret included. It is checked the other way round below: it *does* contain the
//! secrets, which proves that what this test looks for is what a leak would look like.
//!
//! Every event and span of the crate seen on the way must be listed, with its level, target,
//! message and fields, in the crate docs' "Logging" table (`src/lib.rs`).

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Extensions, Request, Response};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use reqwest_tracing::TracingMiddleware;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use understory_auth::testing::{ApiFault, EchoIn, SandboxServer, TokenFault};

use crate::common::ECHO_PLACES;
use understory_auth::{
    BearerAuthLayer, ClientAuthMethod, Credentials, RateLimitRetry, RetryOnUnauthorized, SkipAuth,
    TooManyRequests, UnderstoryAuth,
};

/// The sandbox's secret: distinctive, with a `~` that form encoding changes.
const SECRET: &str = "hyg1ene~Q7vX2kLm9pZt.sEcReT-post";
/// A wrong secret, sent and refused.
const WRONG_SECRET: &str = "wr0ng~J4hN8bVc3xRq.sEcReT-wrong";
/// The secret of a sandbox whose client uses HTTP Basic.
const BASIC_SECRET: &str = "b4sic~M5nB7vC9xZ1w.sEcReT-basic";
/// A token that a faulty server sends and the crate refuses (it holds a space).
const REFUSED_TOKEN: &str = "ory_at_HyGiEnEReFuSeD tok3n";

// ---------------------------------------------------------------------------------------------
// Capturing every tracing event and span of this test's thread
// ---------------------------------------------------------------------------------------------

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    /// Everything captured on this thread since it started capturing.
    static CAPTURED: RefCell<String> = const { RefCell::new(String::new()) };
    /// The crate's own events and spans among them.
    static OWN: RefCell<Vec<Logged>> = const { RefCell::new(Vec::new()) };
}

/// One of the crate's events or spans, as the crate docs' "Logging" table lists it.
#[derive(Debug)]
struct Logged {
    /// `INFO`, `WARN`, ...; `INFO span` for a span.
    level: String,
    /// The target without `understory_auth::`.
    target: String,
    /// An event's message, a span's name.
    message: String,
    fields: Vec<String>,
}

impl Logged {
    fn new(meta: &tracing::Metadata<'_>, span: bool) -> Option<Logged> {
        let target = meta.target().strip_prefix("understory_auth::")?;
        Some(Logged {
            level: format!("{}{}", meta.level(), if span { " span" } else { "" }),
            target: target.to_owned(),
            message: if span {
                meta.name().to_owned()
            } else {
                String::new()
            },
            fields: Vec::new(),
        })
    }

    /// Whether a row of the table lists it: its level, its target, its message and its
    /// fields, each field it has and every field listed without a "(not for ...)" note.
    fn is_listed(&self) -> bool {
        let table = include_str!("../../src/lib.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("//! |")?.strip_suffix('|'));
        table
            .map(|row| row.split('|').map(str::trim).collect::<Vec<_>>())
            .any(|cells| {
                let [level, target, message, fields] = cells[..] else {
                    return false;
                };
                // `name`, or `name` (not for ...) for a field some occurrences lack.
                let listed: Vec<(&str, bool)> = fields
                    .split(", ")
                    .filter_map(|f| Some((f.split('`').nth(1)?, f.contains("(not for"))))
                    .collect();
                let has = |name: &str| self.fields.iter().any(|f| f == name);
                level.contains(&self.level)
                    && target == format!("`{}`", self.target)
                    && (message.split(" / ").any(|m| m == self.message)
                        || message.starts_with(&format!("`{}`:", self.message)))
                    && self
                        .fields
                        .iter()
                        .all(|f| listed.iter().any(|(l, _)| l == f))
                    && listed.iter().all(|(l, optional)| *optional || has(l))
            })
    }
}

/// Records an event's message and the names of its other fields.
impl Visit for Logged {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields.push(field.name().to_owned());
        }
    }
}

/// A layer that writes down every event and span (all levels, all targets, every field, as
/// `Display` for strings and errors and `Debug` for the rest) made on a capturing thread.
struct Capture;

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        if CAPTURING.get() {
            let meta = attrs.metadata();
            let mut line = format!("span {} {} {}:", meta.level(), meta.target(), meta.name());
            attrs.record(&mut Fields(&mut line));
            push(line);
            if let Some(mut own) = Logged::new(meta, true) {
                attrs.record(&mut own);
                OWN.with_borrow_mut(|logged| logged.push(own));
            }
        }
    }

    fn on_record(&self, _span: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if CAPTURING.get() {
            let mut line = "record:".to_owned();
            values.record(&mut Fields(&mut line));
            push(line);
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if CAPTURING.get() {
            let meta = event.metadata();
            let mut line = format!("event {} {}:", meta.level(), meta.target());
            event.record(&mut Fields(&mut line));
            push(line);
            if let Some(mut own) = Logged::new(meta, false) {
                event.record(&mut own);
                OWN.with_borrow_mut(|logged| logged.push(own));
            }
        }
    }
}

fn push(line: String) {
    CAPTURED.with_borrow_mut(|captured| {
        captured.push_str(&line);
        captured.push('\n');
    });
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.0, " {}={value} {value:?}", field.name());
        let mut source = value.source();
        while let Some(error) = source {
            let _ = write!(self.0, " caused by {error} {error:?}");
            source = error.source();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

/// Installs the capturing subscriber as the global default, once for the whole test binary,
/// with `log` records (reqwest's) forwarded to it, every level enabled. Other tests' events
/// are ignored: only a capturing thread's are written down, each in its own buffer, and each
/// test here runs everything on its own thread (a current-thread runtime).
fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing_subscriber::registry()
            .with(Capture)
            .try_init()
            .expect("no other global subscriber or logger in this test binary");
    });
}

/// Captures on this thread until dropped.
struct Capturing;

impl Capturing {
    fn start() -> Self {
        install();
        CAPTURED.with_borrow_mut(String::clear);
        OWN.with_borrow_mut(Vec::clear);
        CAPTURING.set(true);
        Capturing
    }

    /// Stops capturing; what was captured. Every event and span of the crate must be listed
    /// in the crate docs' "Logging" table, with its level, target, message and fields.
    fn finish(self) -> String {
        drop(self);
        for logged in OWN.with_borrow_mut(std::mem::take) {
            assert!(
                logged.is_listed(),
                "not in the crate docs' Logging table: {logged:?}"
            );
        }
        CAPTURED.with_borrow_mut(std::mem::take)
    }
}

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.set(false);
    }
}

// ---------------------------------------------------------------------------------------------
// What the run shows of itself: Debug and Display of everything public
// ---------------------------------------------------------------------------------------------

#[derive(Default, Clone)]
struct Shown(std::sync::Arc<Mutex<Vec<String>>>);

impl Shown {
    fn debug(&self, what: &str, value: &dyn std::fmt::Debug) {
        self.0
            .lock()
            .push(format!("{what}: {value:?}\n{what}: {value:#?}"));
    }

    fn both<T: std::fmt::Debug + std::fmt::Display>(&self, what: &str, value: &T) {
        self.0.lock().push(format!(
            "{what}: {value}\n{what}: {value:?}\n{what}: {value:#?}"
        ));
    }

    fn error(&self, what: &str, error: &(dyn std::error::Error + 'static)) {
        let mut text = format!("{what}: {error}\n{what}: {error:?}\n{what}: {error:#?}");
        let mut source = error.source();
        while let Some(inner) = source {
            let _ = write!(text, "\ncaused by: {inner} / {inner:?}");
            source = inner.source();
        }
        self.0.lock().push(text);
    }

    fn text(&self) -> String {
        self.0.lock().join("\n")
    }
}

/// A middleware after `UnderstoryAuth`: shows the request as it is sent (the token in it).
struct ShowRequest(Shown);

#[async_trait::async_trait]
impl Middleware for ShowRequest {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        if let Some(value) = request.headers().get(AUTHORIZATION) {
            assert!(value.is_sensitive(), "the middleware's header is sensitive");
            let shown = format!("{request:?}");
            assert!(shown.contains("Sensitive"), "{shown}");
            self.0.debug("reqwest::Request", &request);
        }
        next.run(request, extensions).await
    }
}

fn reqwest_client(auth: &UnderstoryAuth, shown: &Shown) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::default())
        .with(auth.clone())
        .with(ShowRequest(shown.clone()))
        .build()
}

async fn via_reqwest(client: &ClientWithMiddleware, url: &str, shown: &Shown) -> Option<u16> {
    match client.get(url).send().await {
        Ok(response) => {
            shown.debug("reqwest::Response", &response);
            Some(response.status().as_u16())
        }
        Err(error) => {
            shown.error("reqwest_middleware::Error", &error);
            let token_error = understory_auth::Error::find_in(&error).expect("a token error");
            shown.both("Error", token_error);
            shown.error("Error", token_error);
            None
        }
    }
}

/// The tower stack: retry outside, the layer, a service that shows each request as the
/// layer passes it on, and a hyper-util client.
async fn via_tower(auth: &UnderstoryAuth, url: &str, shown: &Shown) -> Option<u16> {
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let show = shown.clone();
    let inner = service_fn(move |request: Request<Full<Bytes>>| {
        let mut hyper = hyper.clone();
        if let Some(value) = request.headers().get(AUTHORIZATION) {
            assert!(value.is_sensitive(), "the layer's header is sensitive");
            let shown = format!("{request:?}");
            assert!(shown.contains("Sensitive"), "{shown}");
            show.debug("http::Request", &request);
        }
        async move { hyper.call(request).await }
    });
    let layer = BearerAuthLayer::new(auth.clone());
    shown.debug("BearerAuthLayer", &layer);
    let mut service = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::default())
        .layer(layer)
        .service(inner);
    shown.debug("Retry<RetryOnUnauthorized, BearerAuth<_>>", &service);
    let request = Request::get(url).body(Full::default()).expect("a request");
    let ready = service.ready().await.expect("ready");
    let outcome: Result<Response<_>, BoxError> = ready.call(request).await;
    match outcome {
        Ok(response) => {
            shown.debug("http::Response", &response);
            Some(response.status().as_u16())
        }
        Err(error) => {
            shown.both("BoxError", &error);
            let token_error = understory_auth::Error::find_in(&*error).expect("a token error");
            shown.error("Error", token_error);
            None
        }
    }
}

/// A `BearerAuth` service and its future, shown while it waits for a token.
async fn show_future(auth: &UnderstoryAuth, url: &str, shown: &Shown) {
    let answer =
        service_fn(|_: Request<()>| async { Ok::<_, std::convert::Infallible>(Response::new(())) });
    let mut service = tower::Layer::layer(&BearerAuthLayer::new(auth.clone()), answer);
    shown.debug("BearerAuth", &service);
    let future = service.call(Request::get(url).body(()).expect("a request"));
    shown.debug("BearerAuthFuture", &future);
    let _ = future.await;
}

fn auth_for(server: &SandboxServer, credentials: Credentials) -> UnderstoryAuth {
    server
        .auth_builder(credentials)
        .token_timeout(Duration::from_millis(500))
        .build()
        .expect("auth builds")
}

// ---------------------------------------------------------------------------------------------
// One scenario: its servers, what it showed, and the check at its end
// ---------------------------------------------------------------------------------------------

/// A scenario under capture. [`Scenario::check`] looks, in everything captured and shown,
/// for what the scenario's servers saw on the wire.
struct Scenario {
    capturing: Capturing,
    shown: Shown,
    servers: Vec<SandboxServer>,
}

impl Scenario {
    fn start() -> Self {
        Scenario {
            capturing: Capturing::start(),
            shown: Shown::default(),
            servers: Vec::new(),
        }
    }

    /// A sandbox whose client uses `method` and `secret`, watched by this scenario.
    async fn server(&mut self, method: ClientAuthMethod, secret: &str) -> SandboxServer {
        let server = SandboxServer::builder()
            .client_auth_method(method)
            .client_secret(secret)
            .start()
            .await
            .expect("sandbox starts");
        self.servers.push(server.clone());
        server
    }

    /// Stops capturing and checks that nothing captured or shown holds a secret or a token
    /// from the wire, and that the capture holds each of `expected` (so it did capture).
    fn check(self, expected: &[&str]) {
        let forbidden = self.forbidden();
        let logs = self.capturing.finish();
        let shown = self.shown.text();
        for expected in expected {
            assert!(
                logs.contains(expected),
                "the capture lacks {expected:?}:\n{logs}"
            );
        }
        for needle in &forbidden {
            assert!(
                !logs.contains(needle.as_str()),
                "{needle:?} appeared in the tracing output:\n{}",
                context(&logs, needle)
            );
            assert!(
                !shown.contains(needle.as_str()),
                "{needle:?} appeared in Debug or Display output:\n{}",
                context(&shown, needle)
            );
        }
    }

    /// What must never be shown, taken from the wire: the secrets as sent (raw,
    /// form-encoded, the Basic header and its credentials), their distinctive middles, and
    /// every token issued (whole, without its prefix, and its first 12 random characters).
    fn forbidden(&self) -> Vec<String> {
        let mut forbidden: Vec<String> = [
            SECRET,
            WRONG_SECRET,
            BASIC_SECRET,
            "Q7vX2kLm9pZt",
            "J4hN8bVc3xRq",
            "M5nB7vC9xZ1w",
            "HyGiEnEReFuSeD",
            "ory_at_sandbox-mac-token",
        ]
        .map(str::to_owned)
        .into();
        let mut wire = String::new();
        for server in &self.servers {
            let requests = server.token_requests_received();
            let _ = write!(wire, "{requests:?}");
            for request in &requests {
                if let Some(secret) = request.form_value("client_secret") {
                    let encoded: String =
                        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
                    forbidden.extend([secret, encoded]);
                }
                if let Some(header) = request.header("authorization") {
                    let credentials = header.strip_prefix("Basic ").expect("Basic");
                    forbidden.extend([header.to_owned(), credentials.to_owned()]);
                }
            }
            for token in server.issued_tokens() {
                let random = token.strip_prefix("ory_at_").expect("a sandbox token");
                forbidden.extend([random[..12].to_owned(), random.to_owned(), token.clone()]);
            }
        }
        // The recordings of the wire hold the secrets (which is why they are not looked at):
        // what is looked for is what a leak would look like.
        let sent_secret = ["Q7vX2kLm9pZt", "J4hN8bVc3xRq", "M5nB7vC9xZ1w"]
            .iter()
            .any(|middle| wire.contains(middle));
        let sent_basic = forbidden
            .iter()
            .any(|f| f.starts_with("Basic ") && wire.contains(f.as_str()));
        assert!(sent_secret || sent_basic, "the scenario sent no secret");
        forbidden
    }
}

/// The lines of `text` holding `needle`.
fn context(text: &str, needle: &str) -> String {
    text.lines()
        .filter(|line| line.contains(needle))
        .take(5)
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tokens_in_use_are_never_shown() {
    let mut run = Scenario::start();
    let shown = run.shown.clone();
    let server = run.server(ClientAuthMethod::ClientSecretPost, SECRET).await;
    shown.debug("SandboxServer", &server);
    shown.debug(
        "SandboxBuilder",
        &SandboxServer::builder().client_secret(SECRET),
    );
    let me = format!("{}/v1/me", server.api_base());
    let credentials = Credentials::new(server.client_id(), SECRET).with_scopes(["openid"]);
    shown.debug("Credentials", &credentials);
    let builder = server
        .auth_builder(credentials.clone())
        .user_agent("Hygiene-Test/1.0");
    shown.debug("UnderstoryAuthBuilder", &builder);
    let auth = builder.build().expect("auth builds");
    shown.debug("UnderstoryAuth (cold)", &auth);
    let client = reqwest_client(&auth, &shown);

    // Tokens fetched and used, through both integrations and directly.
    show_future(&auth, &me, &shown).await;
    assert_eq!(via_reqwest(&client, &me, &shown).await, Some(200));
    assert_eq!(via_tower(&auth, &me, &shown).await, Some(200));
    let token = auth.token().await.expect("a token");
    shown.debug("AccessToken", &token);
    shown.both("TokenId", &token.id());
    shown.debug("HeaderValue", token.header_value());
    shown.debug("UnderstoryAuth (warm)", &auth);
    shown.debug("CacheStats", &auth.stats());
    shown.debug("SkipAuth", &SkipAuth);
    shown.debug("ClientAuthMethod", &credentials.auth_method());
    assert_eq!(
        client
            .get(&me)
            .with_extension(SkipAuth)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok(),
        Some(401)
    );

    // An `http::Request` carrying the header shows it as sensitive.
    let request = Request::get(&me)
        .header(AUTHORIZATION, token.header_value().clone())
        .body(())
        .expect("a request");
    let debug = format!("{request:?}");
    assert!(debug.contains("Sensitive"), "{debug}");
    shown.debug("http::Request", &request);
    run.check(&[
        "obtained access token",
        "understory_auth.fetch_token",
        "log.target=reqwest::connect",
        "hyper_util::client::legacy",
        "reqwest_tracing",
    ]);
}

#[tokio::test]
async fn rejected_tokens_are_replaced_without_being_shown() {
    let mut run = Scenario::start();
    let shown = run.shown.clone();
    let server = run.server(ClientAuthMethod::ClientSecretPost, SECRET).await;
    let me = format!("{}/v1/me", server.api_base());
    let credentials = Credentials::new(server.client_id(), SECRET);
    let auth = auth_for(&server, credentials.clone());
    let client = reqwest_client(&auth, &shown);
    let token = auth.token().await.expect("a token");

    // 401: the token is revoked, dropped, replaced and the request retried, in both.
    server.revoke_token(token.secret());
    assert_eq!(via_reqwest(&client, &me, &shown).await, Some(200));
    // (A token that replaced a rejected one is kept for a while: use another handle.)
    let other = auth_for(&server, credentials);
    server.revoke_token(other.token().await.expect("a token").secret());
    assert_eq!(via_tower(&other, &me, &shown).await, Some(200));
    // The client's token replaced a rejected one moments ago: it is kept for the cooldown,
    // so a resend would carry it again and is not made; the 401 comes back.
    server.push_api_fault(ApiFault::Unauthorized);
    assert_eq!(via_reqwest(&client, &me, &shown).await, Some(401));
    // An API that rejects everything: one retry, then the 401, and the cooldown.
    server.set_api_always_unauthorized(true);
    assert_eq!(via_reqwest(&client, &me, &shown).await, Some(401));
    assert_eq!(via_tower(&auth, &me, &shown).await, Some(401));
    server.set_api_always_unauthorized(false);
    shown.debug("CacheStats", &auth.stats());
    assert!(server.issued_tokens().len() >= 3);
    run.check(&[
        "the API rejected the access token (HTTP 401)",
        "access token rejected; it will be replaced",
    ]);
}

#[tokio::test]
async fn configuration_errors_never_show_the_secret() {
    let mut run = Scenario::start();
    let shown = run.shown.clone();
    let server = run.server(ClientAuthMethod::ClientSecretPost, SECRET).await;
    let credentials = Credentials::new(server.client_id(), SECRET);
    // One token request, so that the wire holds the secret looked for.
    auth_for(&server, credentials.clone())
        .token()
        .await
        .expect("a token");
    for builder in [
        UnderstoryAuth::builder(credentials.clone()).token_url("http://auth.example.com/token"),
        UnderstoryAuth::builder(credentials.clone()).api_base("ftp://api.example.com"),
        UnderstoryAuth::builder(Credentials::new("", SECRET)),
        UnderstoryAuth::builder(credentials.clone()).user_agent("bad\nagent"),
    ] {
        shown.debug("UnderstoryAuthBuilder", &builder);
        let error = builder.build().expect_err("a configuration error");
        shown.both("Error", &error);
    }
    run.check(&["obtained access token"]);
}

#[tokio::test]
async fn a_wrong_secret_is_never_shown() {
    let mut run = Scenario::start();
    let shown = run.shown.clone();
    let server = run.server(ClientAuthMethod::ClientSecretPost, SECRET).await;
    let me = format!("{}/v1/me", server.api_base());
    let wrong = auth_for(&server, Credentials::new(server.client_id(), WRONG_SECRET));
    assert_eq!(
        via_reqwest(&reqwest_client(&wrong, &shown), &me, &shown).await,
        None
    );
    assert_eq!(via_tower(&wrong, &me, &shown).await, None);
    shown.debug("UnderstoryAuth (wrong secret)", &wrong);
    run.check(&["token request failed", "invalid_client"]);
}

#[tokio::test]
async fn token_endpoint_faults_never_show_a_secret() {
    let mut run = Scenario::start();
    let shown = run.shown.clone();
    let server = run.server(ClientAuthMethod::ClientSecretPost, SECRET).await;
    let me = format!("{}/v1/me", server.api_base());
    let credentials = Credentials::new(server.client_id(), SECRET).with_scopes(["openid"]);
    // Every kind of token endpoint fault, each met by a fresh handle (no failure window).
    let elsewhere = SandboxServer::start().await.expect("sandbox starts");
    let faults = [
        TokenFault::ServerError,
        TokenFault::Unavailable,
        TokenFault::TooManyRequests {
            retry_after: Some(30),
        },
        TokenFault::TooManyRequests { retry_after: None },
        TokenFault::InvalidClient,
        TokenFault::InvalidScope,
        TokenFault::HtmlError { status: 502 },
        TokenFault::MalformedJson,
        TokenFault::Body {
            status: 200,
            content_type: "application/json".into(),
            body: format!(r#"{{"access_token":"{REFUSED_TOKEN}","token_type":"bearer"}}"#),
        },
        TokenFault::Body {
            status: 400,
            content_type: "application/json".into(),
            body: r#"{"error":"invalid_request","error_description":"line one\nline two"}"#.into(),
        },
        TokenFault::WrongTokenType,
        TokenFault::EmptyToken,
        TokenFault::Redirect {
            location: elsewhere.token_url(),
        },
        TokenFault::Hang,
        TokenFault::ResetMidBody,
        TokenFault::EndlessBody,
    ];
    for fault in faults {
        let faulty = auth_for(&server, credentials.clone());
        server.push_token_fault(fault.clone());
        assert_eq!(
            via_reqwest(&reqwest_client(&faulty, &shown), &me, &shown).await,
            None,
            "{fault:?}"
        );
        server.push_token_fault(fault.clone());
        let error = faulty.token().await.expect_err("the fault is an error");
        shown.both("Error", &error);
        shown.error("Error", &error);
        shown.debug("CacheStats", &faulty.stats());
    }
    assert_eq!(elsewhere.token_requests(), 0);
    run.check(&["token request failed"]);
}

#[tokio::test]
async fn a_basic_client_never_shows_its_secret() {
    let mut run = Scenario::start();
    let shown = run.shown.clone();
    let basic = run
        .server(ClientAuthMethod::ClientSecretBasic, BASIC_SECRET)
        .await;
    let basic_auth = auth_for(
        &basic,
        Credentials::new(basic.client_id(), BASIC_SECRET)
            .with_auth_method(ClientAuthMethod::ClientSecretBasic),
    );
    shown.debug("UnderstoryAuth (basic)", &basic_auth);
    let basic_me = format!("{}/v1/me", basic.api_base());
    assert_eq!(
        via_reqwest(&reqwest_client(&basic_auth, &shown), &basic_me, &shown).await,
        Some(200)
    );
    assert_eq!(via_tower(&basic_auth, &basic_me, &shown).await, Some(200));
    run.check(&["obtained access token"]);
}

/// For each echo place: a handle obtains a token (so it holds one), the token is dropped, and
/// the next token request, made through the middleware, meets the echo of the request (the
/// secret as the method sends it, and the token the handle holds). Then directly again.
async fn echoes_never_show_a_secret(method: ClientAuthMethod) {
    let mut run = Scenario::start();
    let shown = run.shown.clone();
    let (secret, auth_method) = match method {
        ClientAuthMethod::ClientSecretBasic => (BASIC_SECRET, ClientAuthMethod::ClientSecretBasic),
        _ => (SECRET, ClientAuthMethod::ClientSecretPost),
    };
    let server = run.server(method, secret).await;
    let me = format!("{}/v1/me", server.api_base());
    let credentials = Credentials::new(server.client_id(), secret)
        .with_scopes(["openid"])
        .with_auth_method(auth_method);
    for into in ECHO_PLACES {
        let auth = auth_for(&server, credentials.clone());
        let held = auth.token().await.expect("a token");
        assert!(auth.invalidate(&held), "{into:?}");
        server.push_token_fault(TokenFault::Echo(into));
        let outcome = via_reqwest(&reqwest_client(&auth, &shown), &me, &shown).await;
        // The token and scope echoes are usable tokens; the others are errors.
        let usable = matches!(into, EchoIn::Scope);
        assert_eq!(outcome.is_some(), usable, "{into:?}");
        if let Some(token) = auth.cached_token() {
            shown.debug("AccessToken", &token);
            assert_eq!(
                token.scopes(),
                ["openid"],
                "the requested scopes are assumed"
            );
        }
        shown.debug("CacheStats", &auth.stats());

        // The same answer met directly by a fresh handle holding a token.
        let fresh = auth_for(&server, credentials.clone());
        let held = fresh.token().await.expect("a token");
        assert!(fresh.invalidate(&held));
        server.push_token_fault(TokenFault::Echo(into));
        match fresh.token().await {
            Ok(token) => shown.debug("AccessToken", &token),
            Err(error) => {
                assert!(!usable, "{into:?}: {error}");
                shown.both("Error", &error);
                shown.error("Error", &error);
            }
        }
    }
    let logs_must_show = [
        "token request failed",
        "obtained access token",
        "[REDACTED]",
    ];
    run.check(&logs_must_show);
}

#[tokio::test]
async fn echoed_requests_never_show_a_secret_with_client_secret_post() {
    echoes_never_show_a_secret(ClientAuthMethod::ClientSecretPost).await;
}

#[tokio::test]
async fn echoed_requests_never_show_a_secret_with_client_secret_basic() {
    echoes_never_show_a_secret(ClientAuthMethod::ClientSecretBasic).await;
}

#[tokio::test]
async fn rate_limited_api_requests_never_show_a_secret() {
    let mut run = Scenario::start();
    let shown = run.shown.clone();
    let server = run.server(ClientAuthMethod::ClientSecretPost, SECRET).await;
    let auth = auth_for(&server, Credentials::new(server.client_id(), SECRET));
    let me = format!("{}/v1/me", server.api_base());
    let policy = RateLimitRetry::default();
    shown.debug("RateLimitRetry", &policy);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(policy.max_wait(Duration::ZERO))
        .with(auth.clone())
        .with(ShowRequest(shown.clone()))
        .build();
    // A 429 resent after its Retry-After, and one given back with its TooManyRequests.
    let resending = ClientBuilder::new(reqwest::Client::new())
        .with(RateLimitRetry::default())
        .with(auth.clone())
        .build();
    server.push_api_fault(ApiFault::TooManyRequests {
        retry_after: Some(0),
    });
    assert_eq!(via_reqwest(&resending, &me, &shown).await, Some(200));
    server.push_api_fault(ApiFault::TooManyRequests { retry_after: None });
    let Err(reqwest_middleware::Error::Middleware(err)) = client.get(&me).send().await else {
        panic!("expected a middleware error");
    };
    let limited = err
        .downcast_ref::<TooManyRequests>()
        .expect("TooManyRequests");
    shown.both("TooManyRequests", limited);
    assert_eq!(server.api_requests(), 3);
    run.check(&["the API is rate limiting requests (HTTP 429)"]);
}
