//! [`RateLimitRetry`] as a `tower::retry::Policy`: tower copies the policy for each request,
//! so its `retries` count that request's resends.

use http::{Request, Response};
use tokio::time::Sleep;
use tower::retry::Policy;

use super::RateLimitRetry;
use crate::layer::clone_request;

impl<B, R, E> Policy<Request<B>, Response<R>, E> for RateLimitRetry
where
    B: Clone,
{
    type Future = Sleep;

    fn retry(
        &mut self,
        request: &mut Request<B>,
        result: &mut Result<Response<R>, E>,
    ) -> Option<Sleep> {
        let Ok(response) = result else {
            return None;
        };
        let status = response.status();
        match self.judge(
            request.method(),
            self.retries,
            true,
            status,
            response.headers(),
        )? {
            Ok(wait) => {
                self.retries += 1;
                Some(tokio::time::sleep(wait))
            }
            Err(limited) => {
                response.extensions_mut().insert(limited);
                None
            }
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        // Always a copy: tower asks `retry` about an answer only if it has one, and a 429 that
        // is not resent gets its `TooManyRequests` there.
        Some(clone_request(request))
    }
}
