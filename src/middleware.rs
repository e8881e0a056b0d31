//! [`UnderstoryAuth`] as a [`reqwest_middleware::Middleware`]. User-facing docs live on the
//! impl and in the crate docs (which requests carry the token, the 401 rule, errors).

use http::Extensions;
use http::header::AUTHORIZATION;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use crate::auth::UnderstoryAuth;
use crate::origin::Destination;
use crate::token::AccessToken;

/// Adds `Authorization: Bearer <token>` to every request bound for the API and resends a
/// request once with a new token when the API rejects the one it carried: see the crate
/// docs on [which requests carry the token](crate#which-requests-carry-the-token),
/// [what happens on a 401](crate#what-happens-on-a-401) and [errors](crate#errors).
///
/// ```
/// # #[cfg(feature = "test-util")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use understory_auth::{Credentials, UnderstoryAuth, reqwest, reqwest_middleware};
///
/// let sandbox = understory_auth::testing::SandboxServer::start().await?;
/// let credentials = Credentials::new(sandbox.client_id(), sandbox.client_secret());
/// let auth = UnderstoryAuth::builder(credentials)
///     .token_url(sandbox.token_url())
///     .api_base(sandbox.api_base())
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(auth)
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
        // Let go of the rejected exchange before starting the next one.
        drop(response);

        let token = self.current_token().await?;
        let response = next.run(with_token(request, &token), extensions).await?;
        self.answered(&token, response.status(), || from_origin(&response));
        Ok(response)
    }
}

impl UnderstoryAuth {
    /// A usable token (the cached one, without awaiting, or the single fetch's outcome),
    /// with a token error as a middleware error.
    async fn current_token(&self) -> Result<AccessToken> {
        self.token()
            .await
            .map_err(reqwest_middleware::Error::middleware)
    }
}

/// The request with `Authorization: Bearer …` (a value marked sensitive).
fn with_token(mut request: Request, token: &AccessToken) -> Request {
    let header = token.header_value().clone();
    request.headers_mut().insert(AUTHORIZATION, header);
    request
}
