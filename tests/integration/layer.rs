//! `BearerAuthLayer` on tower stacks: a hyper-util client through the layer, against the
//! sandbox over loopback HTTP.
#![cfg(all(feature = "test-util", feature = "tower"))]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::retry::Retry;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt, service_fn};
use tower_http::trace::TraceLayer;
use understory_auth::testing::{SandboxServer, TokenFault};
use understory_auth::{
    BearerAuth, BearerAuthLayer, Credentials, RetryOnUnauthorized, SkipAuth, UnderstoryAuth, scope,
};

use crate::common::{auth, auth_with, credentials, sandbox};

type TestResult = Result<(), BoxError>;
type HttpClient = Client<HttpConnector, Full<Bytes>>;
/// The `Authorization` headers a recording service saw, in order.
type Seen = Arc<Mutex<Vec<Option<HeaderValue>>>>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A hyper-util client behind a `BearerAuthLayer` for `sandbox`.
fn authorized(sandbox: &SandboxServer) -> BearerAuth<HttpClient> {
    BearerAuthLayer::new(auth(sandbox)).layer(http_client())
}

/// The same, with the 401 retry policy outside the layer.
fn retrying(sandbox: &SandboxServer) -> Retry<RetryOnUnauthorized, BearerAuth<HttpClient>> {
    ServiceBuilder::new()
        .retry(RetryOnUnauthorized::default())
        .service(authorized(sandbox))
}

fn get(sandbox: &SandboxServer, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("{}{path}", sandbox.api_base()))
        .body(Full::default())
        .expect("a valid request")
}

/// `Bearer <token>` for the `n`th token the sandbox issued.
fn bearer(sandbox: &SandboxServer, n: usize) -> String {
    format!("Bearer {}", sandbox.issued_tokens()[n])
}

/// The `Authorization` header of every API request the sandbox received, in order.
fn api_authorizations(sandbox: &SandboxServer) -> Vec<Option<String>> {
    sandbox
        .api_requests_received()
        .iter()
        .map(|request| request.header("authorization").map(str::to_owned))
        .collect()
}

/// A `service_fn` that answers 200 and records each request's `Authorization` header.
fn recording() -> (
    impl tower::Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone,
    Seen,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let service = service_fn(move |request: Request<()>| {
        let header = request.headers().get(AUTHORIZATION).cloned();
        record.lock().expect("not poisoned").push(header);
        async { Ok::<_, Infallible>(Response::new(())) }
    });
    (service, seen)
}

/// A recording service behind a layer for `sandbox` that authorizes relative URIs.
fn recording_opted_in(
    sandbox: &SandboxServer,
) -> (
    BearerAuth<
        impl tower::Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone,
    >,
    Seen,
) {
    let (inner, seen) = recording();
    let layer = BearerAuthLayer::new(auth(sandbox)).authorize_relative_uris(true);
    (layer.layer(inner), seen)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sends_the_issued_token_cold_and_cached() -> TestResult {
    let sandbox = sandbox().await;
    let layer = BearerAuthLayer::new(auth(&sandbox));
    let client = layer.layer(http_client());

    let cold = client.clone().oneshot(get(&sandbox, "/v1/me")).await?;
    let cached = client
        .clone()
        .oneshot(get(&sandbox, "/v1/me?again"))
        .await?;

    assert_eq!(cold.status(), StatusCode::OK);
    assert_eq!(cached.status(), StatusCode::OK);
    let expected = Some(bearer(&sandbox, 0));
    assert_eq!(
        api_authorizations(&sandbox),
        [expected.clone(), expected.clone()]
    );
    assert_eq!(sandbox.token_requests(), 1);
    let token = &sandbox.issued_tokens()[0];
    assert!(!format!("{layer:?}").contains(token.as_str()));
    assert!(!format!("{client:?}").contains(token.as_str()));
    Ok(())
}

#[tokio::test]
async fn concurrent_cold_requests_share_one_token_request() -> TestResult {
    let sandbox = sandbox().await;
    let client = authorized(&sandbox);

    let responses =
        join_all((0..200).map(|_| client.clone().oneshot(get(&sandbox, "/v1/me")))).await;

    for response in responses {
        assert_eq!(response?.status(), StatusCode::OK);
    }
    assert_eq!(sandbox.token_requests(), 1);
    assert_eq!(sandbox.api_requests(), 200);
    let expected = Some(bearer(&sandbox, 0));
    assert!(api_authorizations(&sandbox).iter().all(|h| *h == expected));
    Ok(())
}

#[tokio::test]
async fn other_origins_get_no_token() -> TestResult {
    let sandbox = sandbox().await;
    let other = SandboxServer::start().await?;
    let client = authorized(&sandbox);

    let response = client.oneshot(get(&other, "/v1/me")).await?;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api_authorizations(&other), [None]);
    assert_eq!(sandbox.token_requests() + other.token_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn an_existing_authorization_header_is_kept_and_its_401_invalidates_nothing() -> TestResult {
    let sandbox = sandbox().await;
    let client = authorized(&sandbox);
    client.clone().oneshot(get(&sandbox, "/v1/me")).await?;

    let mut own = get(&sandbox, "/v1/me");
    own.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer my-own"));
    let rejected = client.clone().oneshot(own).await?;
    let after = client.oneshot(get(&sandbox, "/v1/me")).await?;

    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(after.status(), StatusCode::OK);
    let token = Some(bearer(&sandbox, 0));
    assert_eq!(
        api_authorizations(&sandbox),
        [token.clone(), Some("Bearer my-own".to_owned()), token]
    );
    assert_eq!(sandbox.token_requests(), 1);
    Ok(())
}

#[tokio::test]
async fn a_rejected_token_is_replaced_for_the_next_request() -> TestResult {
    let sandbox = sandbox().await;
    let client = authorized(&sandbox);
    client.clone().oneshot(get(&sandbox, "/v1/me")).await?;
    sandbox.revoke_token(&sandbox.issued_tokens()[0]);

    let rejected = client.clone().oneshot(get(&sandbox, "/v1/me")).await?;
    let next = client.oneshot(get(&sandbox, "/v1/me")).await?;

    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(sandbox.token_requests(), 2);
    let (first, fresh) = (Some(bearer(&sandbox, 0)), Some(bearer(&sandbox, 1)));
    assert_ne!(first, fresh);
    assert_eq!(api_authorizations(&sandbox), [first.clone(), first, fresh]);
    Ok(())
}

#[tokio::test]
async fn the_retry_policy_resends_once_with_a_fresh_token() -> TestResult {
    let sandbox = sandbox().await;
    let credentials = sandbox.credentials().with_scopes([scope::WEBHOOK_WRITE]);
    let client = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::default())
        .layer(BearerAuthLayer::new(auth_with(&sandbox, credentials)))
        .service(http_client());
    client.clone().oneshot(get(&sandbox, "/v1/me")).await?;
    sandbox.revoke_token(&sandbox.issued_tokens()[0]);

    // A POST, so the retried request must carry the same body again.
    let body = r#"{"url":"https://example.com/hook"}"#;
    let request = Request::post(format!("{}/v1/webhook-subscriptions", sandbox.api_base()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let response = client.oneshot(request).await?;

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.into_body().collect().await?.to_bytes(), body);
    assert_eq!(sandbox.token_requests(), 2);
    let (first, fresh) = (Some(bearer(&sandbox, 0)), Some(bearer(&sandbox, 1)));
    assert_eq!(api_authorizations(&sandbox), [first.clone(), first, fresh]);
    Ok(())
}

#[tokio::test]
async fn the_retry_policy_gives_up_after_one_retry() -> TestResult {
    let sandbox = sandbox().await;
    sandbox.set_api_always_unauthorized(true);

    let response = retrying(&sandbox).oneshot(get(&sandbox, "/v1/me")).await?;

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sandbox.api_requests(), 2);
    assert_eq!(sandbox.token_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn the_retry_policy_resends_only_requests_that_carried_the_token() -> TestResult {
    let sandbox = sandbox().await;
    let other = SandboxServer::start().await?;
    let client = retrying(&sandbox);

    let foreign = client.clone().oneshot(get(&other, "/v1/me")).await?;
    let mut own = get(&sandbox, "/v1/me");
    own.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer my-own"));
    let own = client.oneshot(own).await?;

    assert_eq!(foreign.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(own.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(other.api_requests(), 1);
    assert_eq!(sandbox.api_requests(), 1);
    assert_eq!(sandbox.token_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn composes_with_timeout_concurrency_limit_and_trace() -> TestResult {
    let sandbox = sandbox().await;
    let client = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .timeout(Duration::from_secs(60))
        .concurrency_limit(4)
        .retry(RetryOnUnauthorized::default())
        .layer(BearerAuthLayer::new(auth(&sandbox)))
        .service(http_client());

    let responses =
        join_all((0..20).map(|_| client.clone().oneshot(get(&sandbox, "/v1/me")))).await;

    for response in responses {
        assert_eq!(response?.status(), StatusCode::OK);
    }
    assert_eq!(sandbox.token_requests(), 1);
    assert_eq!(sandbox.api_requests(), 20);
    Ok(())
}

#[tokio::test]
async fn a_timeout_around_the_layer_fires() -> TestResult {
    let sandbox = sandbox().await;
    sandbox.set_api_delay(Duration::from_secs(600));
    let client = ServiceBuilder::new()
        .timeout(Duration::from_millis(200))
        .layer(BearerAuthLayer::new(auth(&sandbox)))
        .service(http_client());

    let error = client
        .oneshot(get(&sandbox, "/v1/me"))
        .await
        .expect_err("the API never answers in time");

    assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
    assert_eq!(sandbox.api_requests(), 1);
    Ok(())
}

/// Where a `TimeoutLayer` goes: outside `BearerAuthLayer` it bounds the whole call, the
/// token wait included; inside it bounds only the inner call, so a hanging token endpoint
/// is cut off by `token_timeout` instead. Told by which error each order returns.
#[tokio::test]
async fn a_timeout_inside_the_layer_does_not_bound_the_token_wait() -> TestResult {
    let sandbox = sandbox().await;
    sandbox.push_token_fault(TokenFault::Hang);
    sandbox.push_token_fault(TokenFault::Hang);
    let auth = || {
        UnderstoryAuth::builder(credentials(&sandbox))
            .token_url(sandbox.token_url())
            .api_base(sandbox.api_base())
            .token_timeout(Duration::from_secs(2))
            .build()
            .expect("auth builds")
    };
    let timeout = Duration::from_millis(300);
    let outside = ServiceBuilder::new()
        .timeout(timeout)
        .layer(BearerAuthLayer::new(auth()))
        .service(http_client());
    let inside = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(auth()))
        .timeout(timeout)
        .service(http_client());

    let outside = outside.oneshot(get(&sandbox, "/v1/me")).await;
    let inside = inside.oneshot(get(&sandbox, "/v1/me")).await;

    let outside = outside.expect_err("the token endpoint never answers");
    assert!(outside.is::<tower::timeout::error::Elapsed>(), "{outside}");
    let inside = inside.expect_err("the token endpoint never answers");
    let inside = inside
        .downcast_ref::<understory_auth::Error>()
        .expect("the token request's own timeout, not the TimeoutLayer's");
    assert!(
        matches!(inside, understory_auth::Error::Timeout { .. }),
        "{inside}"
    );
    assert_eq!(sandbox.token_requests(), 2);
    assert_eq!(sandbox.api_requests(), 0);
    Ok(())
}

/// An application's own error around the stack's, naming it as its source.
#[derive(Debug)]
struct AppError(BoxError);

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the booking sync failed")
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[tokio::test]
async fn find_in_finds_the_token_error_in_a_chain() -> TestResult {
    let sandbox = sandbox().await;
    let wrong = Credentials::new(sandbox.client_id(), "not-the-sandbox-secret");
    let client = ServiceBuilder::new()
        .map_err(|e: BoxError| -> BoxError { Box::new(AppError(e)) })
        .layer(BearerAuthLayer::new(auth_with(&sandbox, wrong)))
        .service(http_client());

    let error = client
        .oneshot(get(&sandbox, "/v1/me"))
        .await
        .expect_err("no token");

    assert!(error.is::<AppError>(), "{error:?}");
    let found = understory_auth::Error::find_in(&*error).expect("an understory_auth::Error");
    assert_eq!(found.oauth_code(), Some("invalid_client"));
    Ok(())
}

#[tokio::test]
async fn a_token_error_is_a_boxed_understory_auth_error() -> TestResult {
    let sandbox = sandbox().await;
    let wrong = Credentials::new(sandbox.client_id(), "not-the-sandbox-secret");
    let layer = BearerAuthLayer::new(auth_with(&sandbox, wrong));
    let bare = layer.clone().layer(http_client());
    let stacked = ServiceBuilder::new()
        .timeout(Duration::from_secs(60))
        .layer(layer)
        .service(http_client());

    let errors = [
        bare.oneshot(get(&sandbox, "/v1/me"))
            .await
            .expect_err("no token"),
        stacked
            .oneshot(get(&sandbox, "/v1/me"))
            .await
            .expect_err("no token"),
    ];

    for error in errors {
        assert!(error.is::<understory_auth::Error>(), "{error:?}");
        let error = understory_auth::Error::find_in(&*error).expect("an understory_auth::Error");
        assert_eq!(error.oauth_code(), Some("invalid_client"));
        assert!(!format!("{error} {error:?}").contains("not-the-sandbox-secret"));
    }
    assert_eq!(sandbox.api_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn relative_uris_get_the_token_only_when_opted_in() -> TestResult {
    let sandbox = sandbox().await;
    let auth = auth(&sandbox);
    let relative = || Request::get("/v1/me").body(()).expect("a valid request");

    let (inner, seen) = recording();
    BearerAuthLayer::new(auth.clone())
        .layer(inner)
        .oneshot(relative())
        .await?;
    assert_eq!(*seen.lock().expect("not poisoned"), [None]);
    assert_eq!(sandbox.token_requests(), 0);

    let (inner, seen) = recording();
    let opted_in = BearerAuthLayer::new(auth)
        .authorize_relative_uris(true)
        .layer(inner);
    opted_in.clone().oneshot(relative()).await?;
    // The opt-in covers relative URIs only, not absolute ones to other origins.
    let foreign = Request::get("https://example.com/v1/me").body(())?;
    opted_in.oneshot(foreign).await?;

    let seen = seen.lock().expect("not poisoned");
    let header = seen[0].as_ref().expect("the relative request got a token");
    assert_eq!(header, &bearer(&sandbox, 0));
    assert!(header.is_sensitive());
    assert_eq!(seen[1], None);
    assert_eq!(sandbox.token_requests(), 1);
    Ok(())
}

#[tokio::test]
async fn uris_with_an_authority_but_no_scheme_get_no_token() -> TestResult {
    let sandbox = sandbox().await;
    let (opted_in, seen) = recording_opted_in(&sandbox);
    let api_authority = sandbox.api_base().trim_start_matches("http://").to_owned();

    for uri in [
        api_authority.clone(),
        "evil.example:443".to_owned(),
        format!("//{api_authority}/v1/me"),
        "//evil.example/v1/me".to_owned(),
    ] {
        let request = Request::builder()
            .method(if uri.starts_with("//") {
                "GET"
            } else {
                "CONNECT"
            })
            .uri(uri)
            .body(())?;
        opted_in.clone().oneshot(request).await?;
    }

    assert_eq!(
        *seen.lock().expect("not poisoned"),
        [None, None, None, None]
    );
    assert_eq!(sandbox.token_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn a_host_header_naming_another_host_gets_no_token() -> TestResult {
    let sandbox = sandbox().await;
    let (opted_in, seen) = recording_opted_in(&sandbox);
    let with_host = |uri: String, host: &str| {
        Request::get(uri)
            .header(http::header::HOST, host)
            .body(())
            .expect("a valid request")
    };
    let api_authority = sandbox.api_base().trim_start_matches("http://").to_owned();

    for request in [
        with_host(format!("{}/v1/me", sandbox.api_base()), "evil.example"),
        with_host("/v1/me".to_owned(), "evil.example"),
        with_host(format!("{}/v1/me", sandbox.api_base()), &api_authority),
    ] {
        opted_in.clone().oneshot(request).await?;
    }

    let seen = seen.lock().expect("not poisoned");
    assert_eq!(seen[..2], [None, None]);
    assert_eq!(
        seen[2].as_ref(),
        Some(&HeaderValue::try_from(bearer(&sandbox, 0))?)
    );
    assert_eq!(sandbox.token_requests(), 1);
    Ok(())
}

/// Issue 19: `Host: x@127.0.0.1:P` is no authority a server routes by as the URI's: no token.
#[tokio::test]
async fn a_host_header_with_user_info_gets_no_token() -> TestResult {
    let sandbox = sandbox().await;
    let (opted_in, seen) = recording_opted_in(&sandbox);
    let api_authority = sandbox.api_base().trim_start_matches("http://").to_owned();
    for uri in [format!("{}/v1/me", sandbox.api_base()), "/v1/me".to_owned()] {
        for host in [
            format!("x@{api_authority}"),
            format!("evil.example@{api_authority}"),
            format!("@{api_authority}"),
        ] {
            let request = Request::get(&uri)
                .header(http::header::HOST, host)
                .body(())
                .expect("a valid request");
            opted_in.clone().oneshot(request).await?;
        }
    }
    let seen = seen.lock().expect("not poisoned");
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(Option::is_none), "{seen:?}");
    assert_eq!(sandbox.token_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn skip_auth_sends_no_token() -> TestResult {
    let sandbox = sandbox().await;
    let (inner, seen) = recording();
    let service = BearerAuthLayer::new(auth(&sandbox)).layer(inner);

    let request = Request::get(format!("{}/v1/me", sandbox.api_base()))
        .extension(SkipAuth)
        .body(())?;
    service.oneshot(request).await?;

    assert_eq!(*seen.lock().expect("not poisoned"), [None]);
    assert_eq!(sandbox.token_requests(), 0);
    Ok(())
}

/// One `UnderstoryAuth`, two clients: the layer and the reqwest middleware use one token, and
/// a rejection seen by one replaces the token for the other.
#[cfg(feature = "middleware")]
#[tokio::test]
async fn shares_its_token_with_the_reqwest_middleware() -> TestResult {
    use understory_auth::reqwest_middleware::ClientBuilder;

    let sandbox = sandbox().await;
    let auth = auth(&sandbox);
    let layered = BearerAuthLayer::new(auth.clone()).layer(http_client());
    let middleware = ClientBuilder::new(reqwest::Client::new())
        .with(auth)
        .build();
    let me = format!("{}/v1/me", sandbox.api_base());

    let first = layered.clone().oneshot(get(&sandbox, "/v1/me")).await?;
    let second = middleware.get(&me).send().await?;
    sandbox.revoke_token(&sandbox.issued_tokens()[0]);
    let rejected = layered.oneshot(get(&sandbox, "/v1/me")).await?;
    let after = middleware.get(&me).send().await?;

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(sandbox.token_requests(), 2);
    // The middleware's request after the rejection went out once, with the new token.
    let (old, new) = (Some(bearer(&sandbox, 0)), Some(bearer(&sandbox, 1)));
    assert_eq!(
        api_authorizations(&sandbox),
        [old.clone(), old.clone(), old, new]
    );
    Ok(())
}
