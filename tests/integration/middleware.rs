//! `UnderstoryAuth` as reqwest middleware: a real reqwest client through
//! `ClientWithMiddleware`, the sandbox over loopback.
#![cfg(all(feature = "test-util", feature = "middleware"))]

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::StreamBody;
use hyper::body::Frame;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::{RetryError, RetryTransientMiddleware, policies::ExponentialBackoff};
use reqwest_tracing::TracingMiddleware;
use understory_auth::testing::{ApiFault, SandboxServer};
use understory_auth::{Credentials, Error, INVALIDATION_COOLDOWN, SkipAuth, UnderstoryAuth, scope};

use crate::common::{auth, auth_with, capture_logs, credentials, sandbox, skip_ahead};

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The line most users write: a reqwest client with `UnderstoryAuth` as its middleware.
fn client(auth: UnderstoryAuth) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(auth)
        .build()
}

/// An `UnderstoryAuth` whose tokens may create webhook subscriptions (a POST endpoint).
fn webhook_writer(server: &SandboxServer) -> UnderstoryAuth {
    auth_with(
        server,
        server.credentials().with_scopes([scope::WEBHOOK_WRITE]),
    )
}

fn me(server: &SandboxServer) -> String {
    format!("{}/v1/me", server.api_base())
}

/// The `Authorization` header of each API request `server` received, oldest first.
fn authorizations(server: &SandboxServer) -> Vec<Option<String>> {
    server
        .api_requests_received()
        .iter()
        .map(|request| request.header("authorization").map(str::to_owned))
        .collect()
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

/// The latest token the sandbox issued.
fn latest_token(server: &SandboxServer) -> String {
    server
        .issued_tokens()
        .pop()
        .expect("the sandbox issued a token")
}

/// The `understory_auth::Error` inside a middleware error, if it holds one.
fn token_error(err: &reqwest_middleware::Error) -> Option<&Error> {
    Error::find_in(err)
}

/// A request body that cannot be cloned: it is produced chunk by chunk.
fn streaming_body(chunks: &[&'static str]) -> reqwest::Body {
    let frames: Vec<_> = chunks
        .iter()
        .map(|chunk| Ok::<_, io::Error>(Frame::data(Bytes::from_static(chunk.as_bytes()))))
        .collect();
    reqwest::Body::wrap(StreamBody::new(futures_util::stream::iter(frames)))
}

fn quick_retries() -> RetryTransientMiddleware<ExponentialBackoff> {
    let policy = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(10))
        .build_with_max_retries(2);
    RetryTransientMiddleware::new_with_policy(policy)
}

// ---------------------------------------------------------------------------------------------
// Which requests carry the token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sends_the_issued_token_as_a_bearer_header() -> TestResult {
    let server = sandbox().await;
    let response = client(auth(&server)).get(me(&server)).send().await?;

    assert_eq!(response.status(), 200);
    assert_eq!(server.issued_tokens().len(), 1);
    assert_eq!(authorizations(&server), [bearer(&latest_token(&server))]);
    Ok(())
}

#[tokio::test]
async fn other_origins_get_no_token() -> TestResult {
    let server = sandbox().await;
    let other = sandbox().await; // same host, another port
    let client = client(auth(&server));

    let response = client.get(me(&other)).send().await?;
    assert_eq!(response.status(), 401);
    // Same server and port, but another host name: another origin too.
    let by_name = format!("http://localhost:{}/v1/me", server.addr().port());
    let response = client.get(by_name).send().await?;
    assert_eq!(response.status(), 401);

    assert_eq!(authorizations(&other), [None]);
    assert_eq!(authorizations(&server), [None]);
    assert_eq!(server.token_requests(), 0);
    assert!(server.issued_tokens().is_empty());
    Ok(())
}

#[tokio::test]
async fn an_existing_authorization_header_is_left_alone() -> TestResult {
    let server = sandbox().await;
    let response = client(auth(&server))
        .get(me(&server))
        .bearer_auth("the-callers-own-token")
        .send()
        .await?;

    assert_eq!(response.status(), 401); // and not retried with our token
    assert_eq!(authorizations(&server), [bearer("the-callers-own-token")]);
    assert_eq!(server.token_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn skip_auth_sends_no_token() -> TestResult {
    let server = sandbox().await;
    let response = client(auth(&server))
        .get(me(&server))
        .with_extension(SkipAuth)
        .send()
        .await?;

    assert_eq!(response.status(), 401);
    assert_eq!(authorizations(&server), [None]);
    assert_eq!(server.token_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn a_host_header_naming_another_host_gets_no_token() -> TestResult {
    let server = sandbox().await;
    let client = client(auth(&server));

    let response = client
        .get(me(&server))
        .header("host", "evil.example")
        .send()
        .await?;
    let agreeing = format!("127.0.0.1:{}", server.addr().port());
    let same = client
        .get(me(&server))
        .header("host", agreeing)
        .send()
        .await?;

    assert_eq!(response.status(), 401);
    assert_eq!(same.status(), 200);
    assert_eq!(
        authorizations(&server),
        [None, bearer(&latest_token(&server))]
    );
    assert_eq!(server.token_requests(), 1);
    Ok(())
}

#[tokio::test]
async fn a_same_origin_redirect_keeps_the_token() -> TestResult {
    let server = sandbox().await;
    let redirect = format!("{}/redirect?to={}", server.api_base(), me(&server));
    let response = client(auth(&server)).get(redirect).send().await?;

    assert_eq!(response.status(), 200);
    assert_eq!(authorizations(&server), [bearer(&latest_token(&server))]);
    Ok(())
}

#[tokio::test]
async fn a_redirect_to_another_origin_carries_no_token() -> TestResult {
    let server = sandbox().await;
    let other = sandbox().await;
    let auth = auth(&server);
    let redirect = format!("{}/redirect?to={}", server.api_base(), me(&other));
    let response = client(auth.clone()).get(redirect).send().await?;

    // The other origin's 401 is its answer to a request without a token: returned as is,
    // and no reason to drop our token or to resend.
    assert_eq!(response.status(), 401);
    assert_eq!(response.url().as_str(), me(&other));
    assert_eq!(authorizations(&other), [None]);
    assert_eq!(server.token_requests(), 1);
    assert_eq!(auth.stats().invalidations, 0);
    Ok(())
}

#[tokio::test]
async fn an_answer_from_another_origin_does_not_keep_a_revoked_replacement() -> TestResult {
    let server = sandbox().await;
    let other = sandbox().await;
    let auth = auth(&server);
    let client = client(auth.clone());
    // The routine token is revoked: its 401 brings a replacement, which is then revoked too.
    server.revoke_token(auth.token().await?.secret());
    assert_eq!(client.get(me(&server)).send().await?.status(), 200);
    server.revoke_token(&latest_token(&server));
    // Its first 401 only puts it in doubt (a replacement's 401 may mean a missing scope).
    assert_eq!(client.get(me(&server)).send().await?.status(), 401);
    // A redirect leads elsewhere: the other origin answers a request without the token.
    let elsewhere = format!("{}/echo-headers", other.api_base());
    let redirect = format!("{}/redirect?to={elsewhere}", server.api_base());
    let response = client.get(redirect).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.url().as_str(), elsewhere);
    // That was no acceptance: once its cooldown has run out, its next 401 drops it, and
    // the request is resent with a third token.
    skip_ahead(INVALIDATION_COOLDOWN).await;
    assert_eq!(client.get(me(&server)).send().await?.status(), 200);
    assert_eq!(
        (server.token_requests(), auth.stats().invalidations),
        (3, 2),
        "{:?}",
        auth.stats()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One token for many requests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_requests_on_a_cold_cache_make_one_token_request() -> TestResult {
    let server = sandbox().await;
    // Slow tokens, so every request finds the token request still in flight.
    server.set_token_delay(Duration::from_millis(200));
    let client = client(auth(&server));

    let responses = join_all((0..500).map(|_| client.get(me(&server)).send())).await;

    for response in responses {
        assert_eq!(response?.status(), 200);
    }
    assert_eq!(server.token_requests(), 1);
    assert_eq!(server.api_requests(), 500);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 401: invalidate, refresh, retry once
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_revoked_token_is_replaced_and_the_request_retried_once() -> TestResult {
    let server = sandbox().await;
    let auth = auth(&server);
    let client = client(auth.clone());
    client.get(me(&server)).send().await?;
    let revoked = latest_token(&server);
    server.revoke_token(&revoked);
    server.reset_counters();

    let response = client.get(me(&server)).send().await?;

    assert_eq!(response.status(), 200);
    assert_eq!(server.token_requests(), 1);
    let fresh = latest_token(&server);
    assert_ne!(fresh, revoked);
    assert_eq!(authorizations(&server), [bearer(&revoked), bearer(&fresh)]);
    assert_eq!(auth.stats().invalidations, 1);
    Ok(())
}

#[tokio::test]
async fn a_post_is_resent_with_the_same_body() -> TestResult {
    let server = sandbox().await;
    let client = client(webhook_writer(&server));
    client.get(me(&server)).send().await?;
    server.revoke_token(&latest_token(&server));
    server.reset_counters();

    let url = format!("{}/v1/webhook-subscriptions", server.api_base());
    let body = r#"{"url":"https://example.com/hook"}"#;
    let response = client.post(url).body(body).send().await?;

    assert_eq!(response.status(), 201);
    assert_eq!(response.bytes().await?, body);
    let received = server.api_requests_received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|request| request.body == body));
    Ok(())
}

#[tokio::test]
async fn an_api_that_always_rejects_gets_exactly_two_requests() -> TestResult {
    let server = sandbox().await;
    server.set_api_always_unauthorized(true);

    let response = client(auth(&server)).get(me(&server)).send().await?;

    assert_eq!(response.status(), 401);
    assert_eq!(server.api_requests(), 2);
    assert_eq!(server.token_requests(), 2); // the first token and its one replacement
    let tokens = server.issued_tokens();
    assert_eq!(
        authorizations(&server),
        [bearer(&tokens[0]), bearer(&tokens[1])]
    );
    Ok(())
}

#[tokio::test]
async fn an_api_that_always_rejects_costs_no_token_request_per_request() -> TestResult {
    let server = sandbox().await;
    server.set_api_always_unauthorized(true);
    let client = client(auth(&server));
    client.get(me(&server)).send().await?;
    server.reset_counters();

    // The replacement token is kept for the invalidation cooldown: resending with the same
    // token would be pointless, so each request is sent once and no token is fetched.
    for _ in 0..20 {
        let response = client.get(me(&server)).send().await?;
        assert_eq!(response.status(), 401);
    }
    assert_eq!(server.api_requests(), 20);
    assert_eq!(server.token_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn concurrent_rejections_of_one_stale_token_cause_one_refresh() -> TestResult {
    let server = sandbox().await;
    let auth = auth(&server);
    let client = client(auth.clone());
    client.get(me(&server)).send().await?;
    let stale = latest_token(&server);
    server.revoke_token(&stale);
    server.reset_counters();
    server.set_token_delay(Duration::from_millis(100));

    // All hundred take the cached (stale) token before any answer arrives.
    let responses = join_all((0..100).map(|_| client.get(me(&server)).send())).await;

    for response in responses {
        assert_eq!(response?.status(), 200);
    }
    assert_eq!(server.token_requests(), 1);
    assert_eq!(server.api_requests(), 200);
    let stale_sent = authorizations(&server)
        .iter()
        .filter(|header| **header == bearer(&stale))
        .count();
    assert_eq!(stale_sent, 100);
    assert_eq!(auth.stats().invalidations, 1);
    Ok(())
}

#[tokio::test]
async fn a_streaming_body_is_not_retried() -> TestResult {
    let server = sandbox().await;
    let auth = webhook_writer(&server);
    let client = client(auth.clone());
    let url = format!("{}/v1/webhook-subscriptions", server.api_base());

    // With a valid token a streaming body goes through.
    let response = client
        .post(&url)
        .body(streaming_body(&["{\"a\":", "1}"]))
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    assert_eq!(response.bytes().await?, "{\"a\":1}");

    server.revoke_token(&latest_token(&server));
    server.reset_counters();
    let response = client
        .post(&url)
        .body(streaming_body(&["{\"b\":", "2}"]))
        .send()
        .await?;

    assert_eq!(response.status(), 401);
    assert_eq!(server.api_requests(), 1);
    assert_eq!(server.token_requests(), 0);
    assert_eq!(auth.stats().invalidations, 1);

    // The rejected token was dropped: the next request fetches a new one up front.
    let response = client.get(me(&server)).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(server.token_requests(), 1);
    assert_eq!(server.api_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn with_the_retry_off_a_401_is_returned_after_one_request() -> TestResult {
    let server = sandbox().await;
    let auth = auth(&server).with_unauthorized_retry(false);
    let client = client(auth.clone());
    client.get(me(&server)).send().await?;
    server.revoke_token(&latest_token(&server));
    server.reset_counters();

    let response = client.get(me(&server)).send().await?;

    assert_eq!(response.status(), 401);
    assert_eq!(server.api_requests(), 1);
    assert_eq!(server.token_requests(), 0);
    assert_eq!(auth.stats().invalidations, 1);

    let response = client.get(me(&server)).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(server.token_requests(), 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_wrong_secret_is_a_permanent_error_to_downcast() -> TestResult {
    let server = sandbox().await;
    let wrong = Credentials::new(server.client_id(), "wrong-secret-value");
    let result = client(auth_with(&server, wrong))
        .get(me(&server))
        .send()
        .await;

    let err = result.expect_err("no token, no request");
    let auth_err = token_error(&err).expect("an understory_auth::Error");
    assert_eq!(auth_err.oauth_code(), Some("invalid_client"));
    assert!(!auth_err.is_transient());
    assert!(!format!("{err} {err:?}").contains("wrong-secret-value"));
    assert_eq!(server.api_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_token_endpoint_is_a_transient_error() -> TestResult {
    let server = sandbox().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let auth = UnderstoryAuth::builder(credentials(&server))
        .token_url(format!("http://127.0.0.1:{closed}/oauth2/token"))
        .api_base(server.api_base())
        .build()?;

    let err = client(auth)
        .get(me(&server))
        .send()
        .await
        .expect_err("no token, no request");

    let auth_err = token_error(&err).expect("an understory_auth::Error");
    assert!(matches!(auth_err, Error::Network { .. }), "{auth_err:?}");
    assert!(auth_err.is_transient());
    assert!(!format!("{err} {err:?}").contains(server.client_secret()));
    assert_eq!(server.api_requests(), 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// With other middleware
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn reqwest_retry_outside_retries_transient_failures_with_the_token() -> TestResult {
    let server = sandbox().await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(quick_retries())
        .with(auth(&server))
        .build();
    server.push_api_fault(ApiFault::ServerError);

    let response = client.get(me(&server)).send().await?;

    assert_eq!(response.status(), 200);
    let token = bearer(&latest_token(&server));
    assert_eq!(authorizations(&server), [token.clone(), token]);
    assert_eq!(server.token_requests(), 1);

    // A rejected token is still handled inside: one refresh, one resend.
    server.revoke_token(&latest_token(&server));
    server.reset_counters();
    let response = client.get(me(&server)).send().await?;
    assert_eq!(response.status(), 200);
    assert_eq!(server.api_requests(), 2);
    assert_eq!(server.token_requests(), 1);
    Ok(())
}

#[tokio::test]
async fn through_reqwest_retry_a_token_error_is_one_level_deeper() -> TestResult {
    let server = sandbox().await;
    let wrong = Credentials::new(server.client_id(), "wrong-secret-value");
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(quick_retries())
        .with(auth_with(&server, wrong))
        .build();

    let err = client.get(me(&server)).send().await.expect_err("no token");

    let reqwest_middleware::Error::Middleware(outer) = &err else {
        panic!("expected a middleware error, got {err:?}");
    };
    let Some(RetryError::Error(inner)) = outer.downcast_ref::<RetryError>() else {
        panic!("expected reqwest-retry's error, got {outer:?}");
    };
    let auth_err = token_error(inner).expect("an understory_auth::Error");
    assert_eq!(auth_err.oauth_code(), Some("invalid_client"));
    // reqwest-retry does not retry middleware errors; the cache's backoff holds anyway.
    assert_eq!(server.token_requests(), 1);
    Ok(())
}

#[tokio::test]
async fn find_in_finds_the_token_error_in_a_middleware_error() -> TestResult {
    let server = sandbox().await;
    let wrong = Credentials::new(server.client_id(), "wrong-secret-value");
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(auth_with(&server, wrong))
        .build();

    let err = client.get(me(&server)).send().await.expect_err("no token");

    let found = Error::find_in(&err).expect("an understory_auth::Error");
    assert_eq!(found.oauth_code(), Some("invalid_client"));
    // The key came from `Credentials::new`: no environment variables to check.
    assert!(!found.to_string().contains("UNDERSTORY_"), "{found}");
    // An error of the API request itself holds none.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let plain = ClientBuilder::new(reqwest::Client::new()).build();
    let err = plain
        .get(format!("http://127.0.0.1:{closed}/v1/me"))
        .send()
        .await
        .expect_err("nothing listens");
    assert!(Error::find_in(&err).is_none(), "{err:?}");
    Ok(())
}

/// reqwest-retry's `RetryError::Error` is transparent: its `source()` skips the middleware
/// error it holds, so only a look inside finds the token error.
#[cfg(feature = "reqwest-retry")]
#[tokio::test]
async fn find_in_looks_inside_reqwest_retry() -> TestResult {
    let server = sandbox().await;
    let wrong = Credentials::new(server.client_id(), "wrong-secret-value");
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(quick_retries())
        .with(auth_with(&server, wrong))
        .build();

    let err = client.get(me(&server)).send().await.expect_err("no token");

    let found = Error::find_in(&err).expect("an understory_auth::Error");
    assert_eq!(found.oauth_code(), Some("invalid_client"));
    // Also wrapped once more, with the retries counted, and boxed as a tower error would be.
    let boxed: Box<dyn std::error::Error + Send + Sync> =
        Box::new(RetryError::WithRetries { retries: 2, err });
    let found = Error::find_in(&*boxed).expect("an understory_auth::Error");
    assert_eq!(found.oauth_code(), Some("invalid_client"));
    Ok(())
}

#[tokio::test]
async fn reqwest_tracing_outside_and_the_token_never_logged() -> TestResult {
    let logs = capture_logs();

    let server = sandbox().await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::default())
        .with(auth(&server))
        .build();
    client.get(me(&server)).send().await?;
    let revoked = latest_token(&server);
    server.revoke_token(&revoked);
    let response = client.get(me(&server)).send().await?;

    assert_eq!(response.status(), 200);
    let fresh = latest_token(&server);
    assert_eq!(authorizations(&server)[2], bearer(&fresh));
    let logs = logs.text();
    assert!(
        logs.contains("the API rejected the access token (HTTP 401)"),
        "{logs}"
    );
    for secret in [revoked.as_str(), fresh.as_str(), server.client_secret()] {
        assert!(!logs.contains(secret), "a secret was logged:\n{logs}");
    }
    Ok(())
}
