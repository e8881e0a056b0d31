//! [`RateLimitRetry`] as a reqwest-middleware `Middleware`: wait, then run the rest of the
//! chain again with a copy of the request, as reqwest-retry does.

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use super::RateLimitRetry;

#[async_trait::async_trait]
impl Middleware for RateLimitRetry {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let method = request.method().clone();
        let mut retries = 0;
        loop {
            // A copy to resend (its body by reference count), only if it may be resent.
            let copy = match self.may_resend(&method, retries) {
                true => request.try_clone(),
                false => None,
            };
            let copied = copy.is_some();
            let response = next.clone().run(request, extensions).await?;
            let status = response.status();
            match self.judge(&method, retries, copied, status, response.headers()) {
                None => return Ok(response),
                Some(Err(limited)) => return Err(reqwest_middleware::Error::middleware(limited)),
                Some(Ok(wait)) => {
                    let Some(copy) = copy else {
                        // `judge` resends only what was copied.
                        return Ok(response);
                    };
                    drop(response);
                    tokio::time::sleep(wait).await;
                    request = copy;
                    retries += 1;
                }
            }
        }
    }
}
