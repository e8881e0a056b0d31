//! Hand-polled calls through a tower service or a reqwest-middleware chain that answer at
//! once. (Shared with `benches/production` through `#[path]`.)

use std::convert::Infallible;

/// Polls `future` once with a no-op waker; it must be ready (the benches' inner services
/// answer at once and the token is warm).
pub fn poll_ready_now<F: std::future::Future>(future: F) -> F::Output {
    let future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the future was expected to complete at once"),
    }
}

/// A tower service that answers every request at once: the innermost service of the
/// tower hot-path benches.
pub fn inner() -> impl tower::Service<
    http::Request<()>,
    Response = http::Response<()>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<http::Response<()>, Infallible>>,
> + Clone {
    tower::service_fn(|request: http::Request<()>| {
        std::hint::black_box(&request);
        std::future::ready(Ok::<_, Infallible>(http::Response::new(())))
    })
}

/// Ends a reqwest-middleware chain with `200 OK` and an empty body, sending nothing.
pub struct Answer200;

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for Answer200 {
    async fn handle(
        &self,
        request: reqwest::Request,
        _extensions: &mut http::Extensions,
        _next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        std::hint::black_box(&request);
        Ok(reqwest::Response::from(http::Response::new(
            reqwest::Body::from(""),
        )))
    }
}

/// One request to `uri` through `service`, polled by hand (no executor).
#[inline(always)]
pub fn one_call<S>(service: &mut S, uri: &http::Uri)
where
    S: tower::Service<http::Request<()>, Response = http::Response<()>>,
    S::Error: std::fmt::Debug,
{
    let mut request = http::Request::new(());
    *request.uri_mut() = uri.clone();
    poll_ready_now(std::future::poll_fn(|cx| service.poll_ready(cx))).expect("ready");
    std::hint::black_box(poll_ready_now(service.call(request)).expect("response"));
}
