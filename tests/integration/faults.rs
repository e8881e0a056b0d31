//! The fault matrix: the token endpoint down, hanging, slow, flapping, rate limiting, or
//! answering garbage, while hundreds of requests go through the reqwest middleware and the
//! tower layer at once.
//!
//! For every fault the tests check the same three things, by counting, never by timing:
//!
//! * callers fail with a clear `understory_auth::Error` (or succeed), and never reach the API
//!   without a token;
//! * the token endpoint sees bounded traffic: a wave of 200 concurrent requests causes one
//!   token request, and callers inside the failure window cause none;
//! * once the fault clears and the failure window (whose bounds are public constants) has
//!   passed, the same client succeeds again, without rebuilding anything.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use understory_auth::testing::{SandboxServer, TokenFault};
use understory_auth::{
    BearerAuth, BearerAuthLayer, Error, PERMANENT_BACKOFF_BASE, PERMANENT_BACKOFF_MAX,
    TRANSIENT_BACKOFF_BASE, TRANSIENT_BACKOFF_MAX, UnderstoryAuth,
};

use crate::common::{auth, clock_stopped, credentials, sandbox, skip_ahead};

/// Requests sent at once in each wave.
const WAVE: usize = 200;

type Tower = BearerAuth<Client<HttpConnector, Full<Bytes>>>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What one request came back with.
#[derive(Debug)]
enum Outcome {
    /// An answer from the API.
    Answer(StatusCode),
    /// No token could be had: the request was not sent.
    Token(Error),
    /// Anything else (a transport error): never expected here.
    Other(#[allow(dead_code, reason = "shown by Debug when a test fails")] String),
}

impl Outcome {
    fn token_error(&self) -> Option<&Error> {
        match self {
            Outcome::Token(error) => Some(error),
            _ => None,
        }
    }
}

fn middleware_client(auth: &UnderstoryAuth) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build()
}

fn tower_client(auth: &UnderstoryAuth) -> Tower {
    BearerAuthLayer::new(auth.clone()).layer(Client::builder(TokioExecutor::new()).build_http())
}

fn me(server: &SandboxServer) -> String {
    format!("{}/v1/me", server.api_base())
}

async fn via_middleware(client: &ClientWithMiddleware, url: &str) -> Outcome {
    match client.get(url).send().await {
        Ok(response) => Outcome::Answer(response.status()),
        Err(error) => match Error::find_in(&error) {
            Some(error) => Outcome::Token(error.clone()),
            None => Outcome::Other(format!("{error:?}")),
        },
    }
}

async fn via_tower(client: &Tower, url: &str) -> Outcome {
    let request = Request::get(url)
        .body(Full::default())
        .expect("a valid request");
    match client.clone().oneshot(request).await {
        Ok(response) => Outcome::Answer(response.status()),
        Err(error) => match Error::find_in(&*error) {
            Some(error) => Outcome::Token(error.clone()),
            None => Outcome::Other(format!("{error:?}")),
        },
    }
}

/// [`WAVE`] concurrent `GET /v1/me` through the reqwest middleware.
async fn middleware_wave(client: &ClientWithMiddleware, url: &str) -> Vec<Outcome> {
    join_all((0..WAVE).map(|_| via_middleware(client, url))).await
}

/// [`WAVE`] concurrent `GET /v1/me` through the tower layer.
async fn tower_wave(client: &Tower, url: &str) -> Vec<Outcome> {
    join_all((0..WAVE).map(|_| via_tower(client, url))).await
}

/// Asserts that every outcome is a token error that `expected` accepts, and returns one.
fn all_token_errors(outcomes: &[Outcome], expected: impl Fn(&Error) -> bool) -> Error {
    assert_eq!(outcomes.len(), WAVE);
    for outcome in outcomes {
        match outcome {
            Outcome::Token(error) => {
                assert!(expected(error), "unexpected token error: {error:?}");
                let message = error.to_string();
                assert!(message.len() > 20, "unclear error: {message:?}");
            }
            other => panic!("expected a token error, got {other:?}"),
        }
    }
    outcomes[0].token_error().cloned().expect("a token error")
}

fn all_ok(outcomes: &[Outcome]) {
    assert_eq!(outcomes.len(), WAVE);
    for outcome in outcomes {
        assert!(
            matches!(outcome, Outcome::Answer(StatusCode::OK)),
            "expected 200, got {outcome:?}"
        );
    }
}

/// The longest failure window after `failures` consecutive failures: the exponential
/// backoff the crate documents ("How the cache behaves": transient failures from 0.5 s to
/// 30 s, rejected credentials from 5 s to 2 min), before jitter shortens it.
fn longest_window(failures: u32, transient: bool) -> Duration {
    let (base, max) = if transient {
        (TRANSIENT_BACKOFF_BASE, TRANSIENT_BACKOFF_MAX)
    } else {
        (PERMANENT_BACKOFF_BASE, PERMANENT_BACKOFF_MAX)
    };
    base.saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(max)
}

/// Forwards every connection accepted on `listener` to `to`.
async fn forward(listener: TcpListener, to: SocketAddr) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Down, hanging, slow
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_endpoint_down_then_back_up() {
    let server = sandbox().await;
    // A port nobody listens on: connections are refused until the endpoint "comes up" there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("an address").port()
    };
    let auth = UnderstoryAuth::builder(credentials(&server))
        .token_url(format!("http://127.0.0.1:{port}/oauth2/token"))
        .api_base(server.api_base())
        .build()
        .expect("auth builds");
    let (reqwest, tower) = (middleware_client(&auth), tower_client(&auth));

    let outcomes = middleware_wave(&reqwest, &me(&server)).await;
    let error = all_token_errors(&outcomes, |e| matches!(e, Error::Network { .. }));
    assert!(error.is_transient(), "{error}");
    assert_eq!(
        auth.stats().fetches,
        1,
        "one connection attempt for 200 callers"
    );

    // Inside the failure window the tower layer's callers get the error without a request.
    let outcomes = clock_stopped(tower_wave(&tower, &me(&server))).await;
    all_token_errors(&outcomes, |e| matches!(e, Error::Network { .. }));
    assert_eq!(
        auth.stats().fetches,
        1,
        "one connection attempt for 400 callers"
    );
    assert_eq!(auth.stats().failed_fast, WAVE as u64);
    assert_eq!(
        server.api_requests(),
        0,
        "nothing reached the API without a token"
    );

    // The endpoint comes up on the same address.
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port is free again");
    tokio::spawn(forward(listener, server.addr()));
    skip_ahead(longest_window(1, true)).await;

    all_ok(&middleware_wave(&reqwest, &me(&server)).await);
    all_ok(&tower_wave(&tower, &me(&server)).await);
    assert_eq!(server.token_requests(), 1);
    assert_eq!(server.api_requests(), 2 * WAVE);
    assert_eq!(auth.stats().fetches, 2);
}

#[tokio::test]
async fn a_hanging_token_endpoint_times_out_then_recovers() {
    let server = sandbox().await;
    server.set_token_fault(Some(TokenFault::Hang));
    let timeout = Duration::from_millis(300);
    let auth = UnderstoryAuth::builder(credentials(&server))
        .token_url(server.token_url())
        .api_base(server.api_base())
        .token_timeout(timeout)
        .build()
        .expect("auth builds");
    let (reqwest, tower) = (middleware_client(&auth), tower_client(&auth));

    // Every caller fails after the configured timeout (not the 10 s default), together. (The
    // outer timeout only turns a hang into a failure.)
    let outcomes = tokio::time::timeout(
        Duration::from_secs(60),
        middleware_wave(&reqwest, &me(&server)),
    )
    .await
    .expect("the callers were released");
    let error = all_token_errors(
        &outcomes,
        |e| matches!(e, Error::Timeout { after, .. } if *after == timeout),
    );
    assert!(error.is_transient());
    assert_eq!(server.token_requests(), 1);

    // Inside the failure window, which this wave follows at once.
    let outcomes = clock_stopped(tower_wave(&tower, &me(&server))).await;
    all_token_errors(&outcomes, |e| matches!(e, Error::Timeout { .. }));
    assert_eq!(
        server.token_requests(),
        1,
        "one token request for 400 callers"
    );
    assert_eq!(auth.stats().failed_fast, WAVE as u64);
    assert_eq!(server.api_requests(), 0);

    server.set_token_fault(None);
    skip_ahead(longest_window(1, true)).await;
    all_ok(&tower_wave(&tower, &me(&server)).await);
    all_ok(&middleware_wave(&reqwest, &me(&server)).await);
    assert_eq!(server.token_requests(), 2);
    assert_eq!(server.issued_tokens().len(), 1);
}

#[tokio::test]
async fn a_slow_token_endpoint_is_waited_for_once() {
    let server = sandbox().await;
    server.set_token_delay(Duration::from_millis(700));
    let auth = auth(&server);
    let (reqwest, tower) = (middleware_client(&auth), tower_client(&auth));

    let url = me(&server);
    let (a, b) = tokio::join!(middleware_wave(&reqwest, &url), tower_wave(&tower, &url));
    all_ok(&a);
    all_ok(&b);
    assert_eq!(
        server.token_requests(),
        1,
        "400 callers waited for one request"
    );
    assert_eq!(auth.stats().fetch_failures, 0);
}

#[tokio::test]
async fn a_slow_refresh_does_not_hold_callers_back() {
    // Tokens of 2 s are refreshed 0.7 s to 0.9 s after they were requested and handed out
    // until 1.9 s; the refresh takes 2 s, so the callers have 0.9 s to show they do not wait.
    let server = SandboxServer::builder()
        .token_lifetime(Duration::from_secs(2))
        .start()
        .await
        .expect("sandbox starts");
    let auth = auth(&server);
    let (reqwest, tower) = (middleware_client(&auth), tower_client(&auth));
    let url = me(&server);
    all_ok(&middleware_wave(&reqwest, &url).await);
    let first = server.issued_tokens()[0].clone();

    server.set_token_delay(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.reset_counters();
    let (a, b) = tokio::join!(middleware_wave(&reqwest, &url), tower_wave(&tower, &url));
    all_ok(&a);
    all_ok(&b);
    // The refresh started, and meanwhile every caller went on with the valid token.
    assert_eq!(server.token_requests(), 1);
    assert_eq!(auth.stats().background_refreshes, 1);
    let bearer = format!("Bearer {first}");
    for request in server.api_requests_received() {
        assert_eq!(request.header("authorization"), Some(bearer.as_str()));
    }
}

// ---------------------------------------------------------------------------------------------
// Flapping 5xx, 429 storms
// ---------------------------------------------------------------------------------------------

/// Sends requests (through the middleware for even `n`, the tower layer for odd) until one
/// succeeds, pausing `pause` after each token error; returns the token errors seen.
async fn until_ok(
    n: usize,
    reqwest: &ClientWithMiddleware,
    tower: &Tower,
    url: &str,
    pause: Duration,
) -> Vec<Error> {
    let mut errors = Vec::new();
    loop {
        let outcome = if n % 2 == 0 {
            via_middleware(reqwest, url).await
        } else {
            via_tower(tower, url).await
        };
        match outcome {
            Outcome::Answer(StatusCode::OK) => return errors,
            Outcome::Token(error) => errors.push(error),
            other => panic!("caller {n}: {other:?}"),
        }
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test]
async fn flapping_5xx_cost_one_token_request_per_failure_window() {
    let server = sandbox().await;
    let auth = auth(&server);
    let (reqwest, tower) = (middleware_client(&auth), tower_client(&auth));
    let url = me(&server);

    // For 1.5 s the token endpoint fails, flapping between a Hydra 500, a proxy's 502 and a
    // 503, while 200 callers keep trying every 50 ms until they get through.
    let outage = Duration::from_millis(1500);
    server.set_token_fault(Some(TokenFault::ServerError));
    let flapper = tokio::spawn({
        let server = server.clone();
        async move {
            let kinds = [
                TokenFault::ServerError,
                TokenFault::HtmlError { status: 502 },
                TokenFault::Unavailable,
            ];
            let until = Instant::now() + outage;
            for kind in kinds.into_iter().cycle() {
                if Instant::now() >= until {
                    break;
                }
                server.set_token_fault(Some(kind));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            server.set_token_fault(None);
        }
    });
    let pause = Duration::from_millis(50);
    let errors = join_all((0..WAVE).map(|n| until_ok(n, &reqwest, &tower, &url, pause))).await;
    flapper.await.expect("the flapper ran");

    // Failure windows last at least 0.25 s, 0.5 s, 1 s, ... (half of 0.5 s, 1 s, 2 s, ...):
    // token requests start at 0 s, after 0.25 s, after 0.75 s, after 1.75 s, ..., so the
    // 1.5 s outage met at most three, however often the callers asked. Then one worked.
    let stats = auth.stats();
    assert!(
        (2..=3).contains(&stats.fetch_failures),
        "{} failed token requests in the outage",
        stats.fetch_failures
    );
    assert_eq!(stats.fetch_successes, 1);
    assert_eq!(server.token_requests() as u64, stats.fetch_failures + 1);
    let seen: usize = errors.iter().map(Vec::len).sum();
    assert!(seen >= 2 * WAVE, "the callers kept asking ({seen} errors)");
    for error in errors.iter().flatten() {
        assert!(error.is_transient(), "{error}");
        let status = error.status().map(|s| s.as_u16());
        assert!(matches!(status, Some(500 | 502 | 503)), "{error:?}");
    }
    // Every caller got through, and only with the token.
    assert_eq!(server.api_requests(), WAVE);
    let bearer = format!("Bearer {}", server.issued_tokens()[0]);
    for request in server.api_requests_received() {
        assert_eq!(request.header("authorization"), Some(bearer.as_str()));
    }
}

#[tokio::test]
async fn a_429_storm_is_answered_locally_until_retry_after() {
    let retry_after = 2;
    let server = sandbox().await;
    server.set_token_fault(Some(TokenFault::TooManyRequests {
        retry_after: Some(retry_after),
    }));
    let auth = auth(&server);
    let (reqwest, tower) = (middleware_client(&auth), tower_client(&auth));
    let url = me(&server);

    let outcomes = middleware_wave(&reqwest, &url).await;
    let rejected_at = Instant::now();
    let error = all_token_errors(&outcomes, |e| {
        e.status() == Some(StatusCode::TOO_MANY_REQUESTS)
    });
    assert_eq!(error.retry_after(), Some(Duration::from_secs(retry_after)));
    assert!(error.is_transient());
    assert!(error.to_string().contains("rate limiting"), "{error}");

    // Half of the Retry-After long, 200 callers ask every 50 ms: none of it reaches the server.
    let storm_until = rejected_at + Duration::from_secs(retry_after) / 2;
    let storm = (0..WAVE).map(|n| {
        let (reqwest, tower, url) = (&reqwest, &tower, &url);
        async move {
            let mut asked = 0;
            while Instant::now() < storm_until {
                let outcome = if n % 2 == 0 {
                    via_middleware(reqwest, url).await
                } else {
                    via_tower(tower, url).await
                };
                let error = outcome.token_error().expect("a token error");
                assert_eq!(error.status(), Some(StatusCode::TOO_MANY_REQUESTS));
                asked += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            asked
        }
    });
    let asked: usize = join_all(storm).await.into_iter().sum();
    assert!(asked >= WAVE, "the storm happened ({asked} requests)");
    assert_eq!(server.token_requests(), 1, "Retry-After was honoured");
    assert_eq!(server.api_requests(), 0);

    // The rate limit lifts; after Retry-After the same clients go through.
    server.set_token_fault(None);
    tokio::time::sleep_until(rejected_at + Duration::from_secs(retry_after)).await;
    all_ok(&tower_wave(&tower, &url).await);
    all_ok(&middleware_wave(&reqwest, &url).await);
    assert_eq!(server.token_requests(), 2);
}

// ---------------------------------------------------------------------------------------------
// Answers that are not tokens
// ---------------------------------------------------------------------------------------------

/// One row of the bad-answer matrix: the fault, what the error must be, and whether it is
/// transient (which decides how long the failure window lasts).
struct BadAnswer {
    name: &'static str,
    fault: TokenFault,
    expected: fn(&Error) -> bool,
    transient: bool,
}

fn json_body(body: &str) -> TokenFault {
    TokenFault::Body {
        status: 200,
        content_type: "application/json".into(),
        body: body.into(),
    }
}

fn invalid_response(error: &Error) -> bool {
    matches!(error, Error::InvalidResponse { .. })
}

/// Runs one row: a wave meets the fault, then (fault cleared, window over) a wave succeeds.
async fn bad_answer(row: BadAnswer) {
    let BadAnswer {
        name,
        fault,
        expected,
        transient,
    } = row;
    let server = sandbox().await;
    server.set_token_fault(Some(fault));
    let auth = auth(&server);
    let client = middleware_client(&auth);

    let outcomes = middleware_wave(&client, &me(&server)).await;
    let error = all_token_errors(&outcomes, expected);
    assert_eq!(error.is_transient(), transient, "{name}: {error}");
    assert_eq!(server.token_requests(), 1, "{name}");
    // A second wave, at once: inside the failure window, so answered without a request.
    let again = clock_stopped(middleware_wave(&client, &me(&server))).await;
    all_token_errors(&again, expected);
    assert_eq!(server.token_requests(), 1, "{name}");
    assert_eq!(auth.stats().failed_fast, WAVE as u64, "{name}");
    assert!(server.issued_tokens().is_empty(), "{name}");
    assert_eq!(server.api_requests(), 0, "{name}");

    server.set_token_fault(None);
    skip_ahead(longest_window(1, transient)).await;
    all_ok(&middleware_wave(&client, &me(&server)).await);
    assert_eq!(server.token_requests(), 2, "{name}");
}

#[tokio::test]
async fn bad_answers_fail_clearly_once_and_heal() {
    let rows = vec![
        BadAnswer {
            name: "truncated JSON",
            fault: TokenFault::MalformedJson,
            expected: invalid_response,
            transient: true,
        },
        BadAnswer {
            name: "a proxy's login page with 200",
            fault: TokenFault::Body {
                status: 200,
                content_type: "text/html".into(),
                body: "<html><form>Sign in</form></html>".into(),
            },
            expected: invalid_response,
            transient: true,
        },
        BadAnswer {
            name: "an empty token",
            fault: TokenFault::EmptyToken,
            expected: |e| e.to_string().contains("access_token is empty"),
            transient: true,
        },
        BadAnswer {
            name: "a token that is not a header value",
            fault: json_body(r#"{"access_token":"two words","token_type":"bearer"}"#),
            expected: |e| !e.to_string().contains("two words") && invalid_response(e),
            transient: true,
        },
        BadAnswer {
            name: "no access_token",
            fault: json_body(r#"{"token_type":"bearer","expires_in":3599}"#),
            expected: |e| e.to_string().contains("no access_token"),
            transient: true,
        },
        BadAnswer {
            name: "an HTML 502",
            fault: TokenFault::HtmlError { status: 502 },
            expected: |e| matches!(e, Error::Status { .. }),
            transient: true,
        },
        BadAnswer {
            name: "a connection reset mid-body",
            fault: TokenFault::ResetMidBody,
            expected: |e| matches!(e, Error::Network { .. }),
            transient: true,
        },
        BadAnswer {
            name: "a body that never ends",
            fault: TokenFault::EndlessBody,
            expected: |e| e.to_string().contains("larger than 65536 bytes"),
            transient: true,
        },
        BadAnswer {
            name: "a mac token",
            fault: TokenFault::WrongTokenType,
            expected: |e| matches!(e, Error::UnsupportedTokenType { .. }),
            transient: false,
        },
        BadAnswer {
            name: "the key rejected, then fixed",
            fault: TokenFault::InvalidClient,
            expected: |e| e.oauth_code() == Some("invalid_client"),
            transient: false,
        },
    ];
    // One after the other, each against its own sandbox: a row stops and moves the clock.
    for row in rows {
        bad_answer(row).await;
    }
}
