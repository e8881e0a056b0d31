//! `RateLimitRetry` against the sandbox over loopback HTTP, in both stacks: a 429 is resent
//! after its `Retry-After` (1 s here, 0 s where only counts matter), and one that is not
//! resent reaches the caller at once with when to retry, without reqwest-retry resending it.
//! The schedule itself (60 s plus jitter, exact instants) is tested under tokio's paused clock
//! in `src/rate_limit/tests.rs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::{RetryError, RetryTransientMiddleware, policies::ExponentialBackoff};
use tower::{BoxError, ServiceBuilder, ServiceExt};
use understory_auth::testing::{ApiFault, SandboxServer};
use understory_auth::{
    BearerAuthLayer, RateLimitRetry, RetryOnUnauthorized, TooManyRequests, UnderstoryAuth,
};

use crate::common::{auth, sandbox};

type TestResult = Result<(), BoxError>;

/// The recipe: reqwest-retry for transient failures (retrying within milliseconds here),
/// `policy` inside it, the token last.
fn reqwest_client(auth: &UnderstoryAuth, policy: RateLimitRetry) -> ClientWithMiddleware {
    let transient = ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(1), Duration::from_millis(5))
        .build_with_max_retries(3);
    ClientBuilder::new(reqwest::Client::new())
        .with(RetryTransientMiddleware::new_with_policy(transient))
        .with(policy)
        .with(auth.clone())
        .build()
}

/// The `TooManyRequests` in a reqwest-middleware error, through reqwest-retry's `RetryError`.
fn too_many_requests(err: &reqwest_middleware::Error) -> Option<&TooManyRequests> {
    let reqwest_middleware::Error::Middleware(err) = err else {
        return None;
    };
    match err.downcast_ref::<RetryError>() {
        Some(RetryError::Error(inner) | RetryError::WithRetries { err: inner, .. }) => {
            too_many_requests(inner)
        }
        _ => err.downcast_ref(),
    }
}

fn me(sandbox: &SandboxServer) -> String {
    format!("{}/v1/me", sandbox.api_base())
}

#[tokio::test]
async fn reqwest_waits_for_the_retry_after_and_resends() -> TestResult {
    let sandbox = sandbox().await;
    let client = reqwest_client(&auth(&sandbox), RateLimitRetry::default());
    sandbox.push_api_fault(ApiFault::TooManyRequests {
        retry_after: Some(1),
    });
    let started = Instant::now();
    let response = client.get(me(&sandbox)).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!((sandbox.api_requests(), sandbox.token_requests()), (2, 1));
    Ok(())
}

#[tokio::test]
async fn reqwest_gives_a_429_it_does_not_wait_for_at_once_and_reqwest_retry_leaves_it() -> TestResult
{
    let sandbox = sandbox().await;
    let client = reqwest_client(
        &auth(&sandbox),
        RateLimitRetry::default().max_wait(Duration::ZERO),
    );
    sandbox.push_api_fault(ApiFault::TooManyRequests { retry_after: None });
    let err = client.get(me(&sandbox)).send().await.unwrap_err();
    let limited = too_many_requests(&err).ok_or("no TooManyRequests")?;
    let retry_in = limited.retry_in();
    assert!(retry_in > Duration::from_secs(59) && retry_in <= Duration::from_secs(90));
    // Neither RateLimitRetry nor reqwest-retry resent it.
    assert_eq!(sandbox.api_requests(), 1);
    // The next request goes out (the caller decides when).
    assert_eq!(
        client.get(me(&sandbox)).send().await?.status(),
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn reqwest_resends_at_most_max_retries_times_and_never_a_post() -> TestResult {
    let sandbox = sandbox().await;
    let client = reqwest_client(&auth(&sandbox), RateLimitRetry::default());
    sandbox.set_api_fault(Some(ApiFault::TooManyRequests {
        retry_after: Some(0),
    }));
    let err = client.get(me(&sandbox)).send().await.unwrap_err();
    assert!(too_many_requests(&err).is_some(), "{err}");
    assert_eq!(sandbox.api_requests(), 3); // the request and two resends

    sandbox.reset_counters();
    let subscriptions = format!("{}/v1/webhook-subscriptions", sandbox.api_base());
    let err = client
        .post(&subscriptions)
        .body("{}")
        .send()
        .await
        .unwrap_err();
    let limited = too_many_requests(&err).ok_or("no TooManyRequests")?;
    assert!(
        limited.to_string().contains("POST is not idempotent"),
        "{limited}"
    );
    assert_eq!(sandbox.api_requests(), 1);

    sandbox.reset_counters();
    let opted_in = reqwest_client(
        &auth(&sandbox),
        RateLimitRetry::default().retry_non_idempotent(true),
    );
    let err = opted_in
        .post(&subscriptions)
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert!(too_many_requests(&err).is_some(), "{err}");
    assert_eq!(sandbox.api_requests(), 3);
    Ok(())
}

/// Both retry policies in one tower stack, outside the layer.
fn tower_client(
    auth: UnderstoryAuth,
    policy: RateLimitRetry,
) -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = BoxError,
    Future: Send,
> + Clone {
    ServiceBuilder::new()
        .retry(policy)
        .retry(RetryOnUnauthorized::default())
        .layer(BearerAuthLayer::new(auth))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>())
}

fn get(url: String) -> http::Request<Full<Bytes>> {
    http::Request::get(url).body(Full::default()).unwrap()
}

#[tokio::test]
async fn tower_waits_for_the_retry_after_and_composes_with_retry_on_unauthorized() -> TestResult {
    let sandbox = sandbox().await;
    let client = tower_client(auth(&sandbox), RateLimitRetry::default());
    sandbox.push_api_fault(ApiFault::TooManyRequests {
        retry_after: Some(1),
    });
    sandbox.push_api_fault(ApiFault::Unauthorized);
    let started = Instant::now();
    let response = client.oneshot(get(me(&sandbox))).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.extensions().get::<TooManyRequests>().is_none());
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The 429, the 401 (the token replaced), the 200.
    assert_eq!((sandbox.api_requests(), sandbox.token_requests()), (3, 2));
    Ok(())
}

#[tokio::test]
async fn tower_gives_a_429_it_does_not_wait_for_at_once_with_when_to_retry() -> TestResult {
    let sandbox = sandbox().await;
    let auth = auth(&sandbox);
    let client = tower_client(
        auth.clone(),
        RateLimitRetry::default().max_wait(Duration::ZERO),
    );
    sandbox.push_api_fault(ApiFault::TooManyRequests { retry_after: None });
    let response = client.clone().oneshot(get(me(&sandbox))).await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let limited = response
        .extensions()
        .get::<TooManyRequests>()
        .ok_or("no extension")?;
    let retry_in = limited.retry_in();
    assert!(retry_in > Duration::from_secs(59) && retry_in <= Duration::from_secs(90));
    assert_eq!(sandbox.api_requests(), 1);

    sandbox.reset_counters();
    let client = tower_client(auth.clone(), RateLimitRetry::default());
    sandbox.set_api_fault(Some(ApiFault::TooManyRequests {
        retry_after: Some(0),
    }));
    let response = client.oneshot(get(me(&sandbox))).await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.extensions().get::<TooManyRequests>().is_some());
    assert_eq!(sandbox.api_requests(), 3);
    Ok(())
}
