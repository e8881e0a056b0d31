//! [`UnderstoryAuth`]: the handle users create once and clone everywhere.

use std::fmt;
use std::sync::Arc;

use url::Url;

use crate::Error;
use crate::cache::{CacheStats, Held, Rejection, TokenCache};
use crate::origin::{AllowedOrigins, Destination, Target, origin_and_path};
use crate::token::AccessToken;

/// Access tokens for the Understory API: create it once ([`UnderstoryAuth::new`] or
/// [`UnderstoryAuth::builder`]) and clone it freely (one `Arc`, one
/// [cache](crate#cache-behaviour)); use it as reqwest middleware, as a tower layer
/// ([`BearerAuthLayer`](crate::BearerAuthLayer)), or ask for a token directly.
///
/// ```no_run
/// use understory_auth::{Credentials, UnderstoryAuth};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let auth = UnderstoryAuth::new(Credentials::from_env()?);
/// let token = auth.token().await?;
/// println!("token lives {:?}", token.lifetime());
/// assert!(auth.is_allowed(&"https://api.understory.io/v1/me".parse()?));
/// assert!(!auth.is_allowed(&"https://example.com/".parse()?));
/// assert_eq!(auth.api_base().as_str(), "https://api.understory.io/");
/// println!("{} token requests", auth.stats().token_requests);
/// let no_retry = auth.clone().with_unauthorized_retry(false); // shares the cache
/// # let _ = no_retry;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct UnderstoryAuth {
    cache: TokenCache<Arc<Endpoints>>,
    retry_unauthorized: bool,
}

/// Where tokens come from and where they may go, kept beside the cache (an `Arc`: a
/// third-party app's connections share one).
pub(crate) struct Endpoints {
    pub(crate) origins: AllowedOrigins,
    pub(crate) api_base: Url,
    pub(crate) token_url: Url,
    pub(crate) client_id: String,
}

impl UnderstoryAuth {
    /// Caches `granted`, obtained outside the cache.
    #[cfg(feature = "app")]
    pub(crate) fn seed(&self, granted: crate::token::GrantedToken) {
        self.cache.seed(granted);
    }

    pub(crate) fn from_cache(cache: TokenCache<Arc<Endpoints>>) -> Self {
        UnderstoryAuth {
            cache,
            retry_unauthorized: true,
        }
    }

    /// A valid access token: the cached one, or one fetched by the single flight.
    ///
    /// ```
    /// # #[cfg(feature = "test-util")]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let sandbox = understory_auth::testing::SandboxServer::start().await?;
    /// let auth = understory_auth::UnderstoryAuth::builder(sandbox.credentials())
    ///     .token_url(sandbox.token_url())
    ///     .api_base(sandbox.api_base())
    ///     .build()?;
    /// let token = auth.token().await?;
    /// assert!(!token.secret().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn token(&self) -> Result<AccessToken, Error> {
        self.cache.token().await
    }

    /// The cached token if it is usable now, without waiting (it may start a background
    /// refresh).
    pub fn cached_token(&self) -> Option<AccessToken> {
        self.cache.fresh()
    }

    /// Reports a 401 to a request carrying `token`, judged by the
    /// [401 rule](crate#what-happens-on-a-401); returns whether the token was dropped.
    ///
    /// ```
    /// # async fn demo(auth: understory_auth::UnderstoryAuth) -> Result<(), understory_auth::Error> {
    /// let token = auth.token().await?;
    /// // ... the API answered 401 to a request carrying `token` ...
    /// auth.invalidate(&token);
    /// let fresh = auth.token().await?;
    /// # Ok(()) }
    /// ```
    pub fn invalidate(&self, token: &AccessToken) -> bool {
        self.cache.reject(token) == Rejection::Dropped
    }

    /// [`UnderstoryAuth::cached_token`] with the handle the answer is reported to.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) fn cached_held(&self) -> Option<Arc<Held>> {
        self.cache.fresh_held()
    }

    /// [`UnderstoryAuth::token`] with the handle the API's answer is reported to.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    pub(crate) async fn held(&self) -> Result<Arc<Held>, Error> {
        let token = self.token().await?;
        Ok(self.cache.hold(token))
    }

    /// The middleware's report of an answer to the 401 rule: whether to resend.
    #[cfg_attr(not(feature = "middleware"), allow(dead_code))]
    pub(crate) fn answered(
        &self,
        token: &AccessToken,
        status: http::StatusCode,
        from_token_origin: impl FnOnce() -> bool,
    ) -> bool {
        self.cache.answered(token, status, from_token_origin)
    }

    /// A snapshot of the cache's counters, for metrics.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The API base the token is sent to.
    pub fn api_base(&self) -> &Url {
        &self.cache.meta().api_base
    }

    /// Whether a request to `url` may carry the token (its origin is an allowed one).
    pub fn is_allowed(&self, url: &Url) -> bool {
        self.cache.meta().origins.allowed_origin(url).is_some()
    }

    /// Which allowed origin (an index) a URL or URI goes to, if any.
    #[cfg_attr(not(feature = "middleware"), allow(dead_code))]
    pub(crate) fn allowed_origin<'a>(&self, target: impl Into<Target<'a>>) -> Option<usize> {
        self.cache.meta().origins.allowed_origin(target)
    }

    /// Whether a request gets the token: the one decision both integrations ask.
    #[cfg_attr(not(any(feature = "middleware", feature = "tower")), allow(dead_code))]
    pub(crate) fn destination<'a>(
        &self,
        target: impl Into<Target<'a>>,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Destination {
        self.cache
            .meta()
            .origins
            .destination(target.into(), headers, extensions)
    }

    /// Whether the reqwest middleware retries a request once after a 401 (default: yes).
    #[cfg_attr(not(feature = "middleware"), allow(dead_code))]
    pub(crate) fn retries_unauthorized(&self) -> bool {
        self.retry_unauthorized
    }

    /// Turns the reqwest middleware's resend after a 401 on or off (on by default; off saves
    /// a copy of each request, about 0.3 µs). Clones keep the setting and share the cache.
    pub fn with_unauthorized_retry(mut self, retry: bool) -> Self {
        self.retry_unauthorized = retry;
        self
    }
}

impl fmt::Debug for UnderstoryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnderstoryAuth")
            .field("client_id", &self.cache.meta().client_id)
            .field("token_url", &origin_and_path(&self.cache.meta().token_url))
            .field("api_base", &self.cache.meta().api_base.as_str())
            .field("retry_unauthorized", &self.retry_unauthorized)
            .field("stats", &self.cache.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Credentials;

    #[test]
    fn public_types_are_thread_safe_and_cheap_to_share() {
        fn shared<T: Clone + Send + Sync + 'static>() {}
        fn error<E: std::error::Error + Clone + Send + Sync + 'static>() {}
        shared::<UnderstoryAuth>();
        shared::<Credentials>();
        shared::<AccessToken>();
        shared::<crate::UnderstoryAuthBuilder>();
        shared::<CacheStats>();
        error::<Error>();
    }

    #[tokio::test]
    async fn new_reports_unusable_credentials_on_every_token_request() {
        let auth = UnderstoryAuth::new(Credentials::new("", "secret"));
        assert!(auth.is_allowed(&"https://api.understory.io/v1/me".parse().unwrap()));
        for _ in 0..2 {
            let err = auth.token().await.unwrap_err();
            assert!(err.to_string().contains("client id is empty"), "{err}");
        }
    }

    #[test]
    fn debug_shows_the_token_url_without_its_query() {
        let auth = UnderstoryAuth::builder(Credentials::new("id", "secret"))
            .token_url("https://auth.example.com/oauth2/token?tenant=t-123&key=k-456#frag")
            .build()
            .unwrap();
        let debug = format!("{auth:?}");
        assert!(
            debug.contains("\"https://auth.example.com/oauth2/token\""),
            "{debug}"
        );
        for hidden in ["t-123", "k-456", "frag"] {
            assert!(!debug.contains(hidden), "{debug}");
        }
    }
}
