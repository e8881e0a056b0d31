//! [`UnderstoryAuth`] as a [`reqwest_middleware::Middleware`].

use http::Extensions;
use http::header::AUTHORIZATION;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use crate::auth::UnderstoryAuth;
use crate::origin::Destination;
use crate::token::AccessToken;

/// Adds the token to [the API's requests](crate#which-requests-carry-the-token) and resends
/// by [the 401 rule](crate#what-happens-on-a-401); see also [Errors](crate#errors).
///
/// ```
/// # #[cfg(feature = "test-util")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use understory_auth::{reqwest, reqwest_middleware};
///
/// let sandbox = understory_auth::testing::SandboxServer::start().await?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(sandbox.auth()?)
///     .build();
///
/// let me = client.get(format!("{}/v1/me", sandbox.api_base())).send().await?;
/// assert_eq!(me.status(), 200);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[async_trait::async_trait]
impl Middleware for UnderstoryAuth {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let destination = self.destination(request.url(), request.headers(), extensions);
        let Destination::Origin(origin) = destination else {
            return next.run(request, extensions).await;
        };
        // An answer from the origin the token went to, not from one a redirect led to.
        let from_origin = |response: &Response| self.allowed_origin(response.url()) == Some(origin);
        let retry = if self.retries_unauthorized() {
            request.try_clone()
        } else {
            None
        };

        let token = self.current_token().await?;
        let response = next
            .clone()
            .run(with_token(request, &token), extensions)
            .await?;
        if !self.answered(&token, response.status(), || from_origin(&response)) {
            return Ok(response);
        }
        tracing::debug!(
            token_id = %token.id(),
            retry = retry.is_some(),
            "the API rejected the access token (HTTP 401)"
        );
        let Some(request) = retry else {
            return Ok(response);
        };
        drop(response);

        let token = self.current_token().await?;
        let response = next.run(with_token(request, &token), extensions).await?;
        self.answered(&token, response.status(), || from_origin(&response));
        Ok(response)
    }
}

impl UnderstoryAuth {
    /// [`UnderstoryAuth::token`], its error as a middleware error.
    async fn current_token(&self) -> Result<AccessToken> {
        self.token()
            .await
            .map_err(reqwest_middleware::Error::middleware)
    }
}

fn with_token(mut request: Request, token: &AccessToken) -> Request {
    let header = token.header_value().clone();
    request.headers_mut().insert(AUTHORIZATION, header);
    request
}
