//! The rule's arithmetic, and both integrations under tokio's paused clock, with the jitter
//! injected: exact instants, no sockets.

use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::*;

#[test]
fn retry_after_seconds_only_and_clamped() {
    let limited = StatusCode::TOO_MANY_REQUESTS;
    let mut headers = HeaderMap::new();
    assert_eq!(parse_retry_after(limited, &headers), None);
    headers.insert(RETRY_AFTER, HeaderValue::from_static(" 120 "));
    assert_eq!(
        parse_retry_after(limited, &headers),
        Some(Duration::from_secs(120))
    );
    headers.insert(RETRY_AFTER, HeaderValue::from_static("99999999999"));
    assert_eq!(parse_retry_after(limited, &headers), Some(MAX_RETRY_AFTER));
    assert_eq!(MAX_RETRY_AFTER, Duration::from_secs(300));
    headers.insert(
        RETRY_AFTER,
        HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
    );
    assert_eq!(parse_retry_after(limited, &headers), None);
    headers.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
    assert_eq!(parse_retry_after(limited, &headers), None);
}

#[test]
fn retry_after_only_on_429_and_503() {
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, HeaderValue::from_static("30"));
    for status in [429, 503] {
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(
            parse_retry_after(status, &headers),
            Some(Duration::from_secs(30)),
            "{status}"
        );
    }
    for status in [200, 301, 400, 401, 500, 502, 504] {
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(parse_retry_after(status, &headers), None, "{status}");
    }
}

#[test]
fn the_wait_is_retry_after_or_a_minute_plus_jitter() {
    assert_eq!(wait(None, 0.0), Duration::from_secs(60));
    assert_eq!(wait(None, 0.5), Duration::from_secs(75));
    assert_eq!(wait(None, 1.0), Duration::from_secs(90));
    // The server's Retry-After wins, however short, with no jitter on top.
    assert_eq!(
        wait(Some(Duration::from_secs(1)), 0.9),
        Duration::from_secs(1)
    );
    assert_eq!(wait(Some(MAX_RETRY_AFTER), 0.9), MAX_RETRY_AFTER);
}

/// Answers scripted in tests: a status and an optional `Retry-After`.
#[cfg(any(feature = "middleware", feature = "tower"))]
type Answer = (u16, Option<&'static str>);

#[cfg(any(feature = "middleware", feature = "tower"))]
fn half() -> f64 {
    0.5
}

/// A policy drawing its jitter as 0.5: 75 s without `Retry-After`.
#[cfg(any(feature = "middleware", feature = "tower"))]
fn policy() -> RateLimitRetry {
    RateLimitRetry::default().with_jitter(half)
}

#[cfg(any(feature = "middleware", feature = "tower"))]
fn http_response(answer: Answer) -> http::Response<Vec<u8>> {
    let mut response = http::Response::new(Vec::new());
    *response.status_mut() = StatusCode::from_u16(answer.0).unwrap();
    if let Some(secs) = answer.1 {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static(secs));
    }
    response
}

#[cfg(feature = "middleware")]
mod with_reqwest {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use http::{Extensions, Method};
    use parking_lot::Mutex;
    use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
    use tokio::time::Instant;

    use super::*;

    /// The end of the chain: answers from a script, and notes when each request came.
    #[derive(Default)]
    struct Script {
        answers: Mutex<VecDeque<Answer>>,
        calls: Mutex<Vec<Instant>>,
    }

    struct Stub(Arc<Script>);

    #[async_trait::async_trait]
    impl Middleware for Stub {
        async fn handle(
            &self,
            _request: reqwest::Request,
            _extensions: &mut Extensions,
            _next: Next<'_>,
        ) -> reqwest_middleware::Result<reqwest::Response> {
            self.0.calls.lock().push(Instant::now());
            let answer = self.0.answers.lock().pop_front().unwrap_or((200, None));
            Ok(reqwest::Response::from(http_response(answer)))
        }
    }

    fn scripted(policy: RateLimitRetry, answers: &[Answer]) -> (ClientWithMiddleware, Arc<Script>) {
        let script = Arc::new(Script::default());
        script.answers.lock().extend(answers.iter().copied());
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(policy)
            .with(Stub(script.clone()))
            .build();
        (client, script)
    }

    fn offsets(script: &Script, start: Instant) -> Vec<u64> {
        let calls = script.calls.lock();
        calls.iter().map(|at| (*at - start).as_secs()).collect()
    }

    fn too_many_requests(err: reqwest_middleware::Error) -> TooManyRequests {
        let reqwest_middleware::Error::Middleware(err) = err else {
            panic!("not a middleware error: {err}");
        };
        err.downcast_ref::<TooManyRequests>().cloned().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn waits_75_s_or_the_retry_after_then_resends() {
        let (client, script) = scripted(policy(), &[(429, None), (429, Some("7")), (200, None)]);
        let start = Instant::now();
        let response = client.get("https://api.understory.io/v1/me").send().await;
        assert_eq!(response.unwrap().status(), 200);
        assert_eq!(offsets(&script, start), [0, 75, 82]);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries_with_when_to_come_back() {
        let (client, script) = scripted(policy(), &[(429, None); 4]);
        let start = Instant::now();
        let err = client.get("https://api.understory.io/v1/me").send().await;
        let limited = too_many_requests(err.unwrap_err());
        assert_eq!(offsets(&script, start), [0, 75, 150]);
        assert_eq!(limited.retry_at(), start + Duration::from_secs(225));
        assert_eq!(limited.retry_in(), Duration::from_secs(75));
        assert!(limited.to_string().contains("resent 2 times"), "{limited}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_cannot_wait_gets_the_429_at_once() {
        let policy = policy().max_wait(Duration::from_secs(10));
        let (client, script) = scripted(policy, &[(429, None), (429, Some("10"))]);
        let start = Instant::now();
        let err = client.get("https://api.understory.io/v1/me").send().await;
        let limited = too_many_requests(err.unwrap_err());
        assert_eq!(limited.retry_at(), start + Duration::from_secs(75));
        assert_eq!(offsets(&script, start), [0]);
        // A Retry-After within max_wait is waited for.
        let response = client.get("https://api.understory.io/v1/me").send().await;
        assert_eq!(response.unwrap().status(), 200);
        assert_eq!(offsets(&script, start), [0, 0, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn non_idempotent_requests_are_resent_only_if_opted_in() {
        let (client, script) = scripted(policy(), &[(429, Some("3"))]);
        let start = Instant::now();
        let err = client
            .post("https://api.understory.io/v1/webhook-subscriptions")
            .send();
        let limited = too_many_requests(err.await.unwrap_err());
        assert_eq!(limited.retry_at(), start + Duration::from_secs(3));
        assert!(
            limited.to_string().contains("POST is not idempotent"),
            "{limited}"
        );
        assert_eq!(offsets(&script, start), [0]);

        let opted_in = policy().retry_non_idempotent(true);
        let (client, script) = scripted(opted_in, &[(429, Some("3"))]);
        let response = client.post("https://api.understory.io/v1/webhook-subscriptions");
        assert_eq!(response.send().await.unwrap().status(), 200);
        assert_eq!(offsets(&script, start), [0, 3]);
        // PUT and DELETE are idempotent.
        for method in [Method::PUT, Method::DELETE] {
            let (client, script) = scripted(policy(), &[(429, Some("3"))]);
            let response = client.request(method, "https://api.understory.io/v1/x");
            assert_eq!(response.send().await.unwrap().status(), 200);
            assert_eq!(script.calls.lock().len(), 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn other_statuses_are_left_to_the_callers_policy() {
        for status in [200, 401, 500, 503] {
            let (client, script) = scripted(policy(), &[(status, Some("30"))]);
            let response = client.get("https://api.understory.io/v1/me").send().await;
            assert_eq!(response.unwrap().status(), status);
            assert_eq!(script.calls.lock().len(), 1, "{status}");
        }
    }
}

#[cfg(feature = "tower")]
mod with_tower {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use parking_lot::Mutex;
    use tokio::time::Instant;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::*;

    /// Sends `method` through `policy` to a service answering `answers` in turn (then 200);
    /// returns the answer and when each request came, in seconds from the start.
    async fn send(
        policy: RateLimitRetry,
        method: http::Method,
        answers: &[Answer],
    ) -> (http::Response<Vec<u8>>, Vec<u64>) {
        let answers = Arc::new(Mutex::new(answers.iter().copied().collect::<VecDeque<_>>()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let service = {
            let calls = calls.clone();
            service_fn(move |_: http::Request<String>| {
                calls.lock().push((Instant::now() - start).as_secs());
                let answer = answers.lock().pop_front().unwrap_or((200, None));
                async move { Ok::<_, std::convert::Infallible>(http_response(answer)) }
            })
        };
        let service = ServiceBuilder::new().retry(policy).service(service);
        let request = http::Request::builder()
            .method(method)
            .uri("https://api.understory.io/v1/me")
            .body(String::new())
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        let calls = calls.lock().clone();
        (response, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn waits_75_s_or_the_retry_after_then_resends() {
        let answers = [(429, None), (429, Some("7"))];
        let (response, calls) = send(policy(), http::Method::GET, &answers).await;
        assert_eq!(response.status(), 200);
        assert!(response.extensions().get::<TooManyRequests>().is_none());
        assert_eq!(calls, [0, 75, 82]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_not_resent_carries_when_to_come_back() {
        let start = Instant::now();
        let (response, calls) = send(policy(), http::Method::GET, &[(429, None); 4]).await;
        assert_eq!(response.status(), 429);
        assert_eq!(calls, [0, 75, 150]);
        let limited = response.extensions().get::<TooManyRequests>().unwrap();
        assert_eq!(limited.retry_at(), start + Duration::from_secs(225));

        let start = Instant::now();
        let waits_10_s = policy().max_wait(Duration::from_secs(10));
        let (response, calls) = send(waits_10_s, http::Method::GET, &[(429, Some("11"))]).await;
        assert_eq!(calls, [0]);
        let limited = response.extensions().get::<TooManyRequests>().unwrap();
        assert_eq!(limited.retry_at(), start + Duration::from_secs(11));

        let (response, calls) = send(policy(), http::Method::POST, &[(429, Some("3"))]).await;
        assert_eq!(calls, [0]);
        assert!(response.extensions().get::<TooManyRequests>().is_some());
        let opted_in = policy().retry_non_idempotent(true);
        let (response, calls) = send(opted_in, http::Method::POST, &[(429, Some("3"))]).await;
        assert_eq!((response.status().as_u16(), calls), (200, vec![0, 3]));
    }

    #[tokio::test(start_paused = true)]
    async fn other_statuses_are_left_to_the_callers_policy() {
        for status in [200, 401, 500, 503] {
            let (response, calls) =
                send(policy(), http::Method::GET, &[(status, Some("30"))]).await;
            assert_eq!((response.status().as_u16(), calls), (status, vec![0]));
        }
    }
}
