//! [`UnderstoryAuthBuilder`]: where an [`UnderstoryAuth`] gets its endpoints and timeouts,
//! and the documented defaults, each a named constant.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use url::Url;

use crate::Error;
use crate::auth::{Endpoints, UnderstoryAuth};
use crate::cache::TokenCache;
use crate::credentials::Credentials;
use crate::grant::{ClientHook, Grant, GrantConfig};
use crate::origin::{AllowedOrigins, Origin, parse_secure_url};
use crate::schedule::Timing;
pub use crate::schedule::{DEFAULT_EXPIRY_MARGIN, DEFAULT_REFRESH_AHEAD};

/// Understory's token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://api.auth.understory.io/oauth2/token";
/// The `audience` Understory's auth server expects for API tokens.
pub const DEFAULT_AUDIENCE: &str = "https://api.understory.io";
/// The origin that receives the token: Understory's API.
pub const DEFAULT_API_BASE: &str = "https://api.understory.io";
/// The default limit on a whole token request, from connecting to the last byte.
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `token_timeout` accepted: deadlines are instants, which a huge timeout would
/// overflow.
const MAX_TOKEN_TIMEOUT: Duration = Duration::from_secs(3600);
/// The crate's own product token, always part of the token request's `User-Agent`.
pub(crate) const CRATE_USER_AGENT: &str =
    concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// Configures an [`UnderstoryAuth`]; made by [`UnderstoryAuth::builder`]. Every default suits
/// Understory's production endpoints; tests point `token_url` and `api_base` at a local server.
///
/// ```
/// use std::time::Duration;
/// use understory_auth::{Credentials, UnderstoryAuth};
///
/// let auth = UnderstoryAuth::builder(Credentials::new("client-id", "client-secret"))
///     .token_url("http://127.0.0.1:4444/oauth2/token")
///     .audience("https://api.understory.io")
///     .api_base("http://127.0.0.1:8080")
///     .user_agent("My-Company/Marketing-Automation-App")
///     .token_timeout(Duration::from_secs(5))
///     .refresh_ahead(Duration::from_secs(300))
///     .expiry_margin(Duration::from_secs(30))
///     .build()?;
/// # Ok::<(), understory_auth::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct UnderstoryAuthBuilder {
    credentials: Credentials,
    token_url: String,
    audience: String,
    api_base: String,
    extra_origins: Vec<String>,
    user_agent: Option<String>,
    token_timeout: Duration,
    timing: Timing,
    client_hook: Option<ClientHook>,
    #[cfg(feature = "shared-cache")]
    shared_cache: Option<crate::store::StoreHandle>,
}

impl UnderstoryAuthBuilder {
    pub(crate) fn new(credentials: Credentials) -> Self {
        UnderstoryAuthBuilder {
            credentials,
            token_url: DEFAULT_TOKEN_URL.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            api_base: DEFAULT_API_BASE.to_owned(),
            extra_origins: Vec::new(),
            user_agent: None,
            token_timeout: DEFAULT_TOKEN_TIMEOUT,
            timing: Timing::default(),
            client_hook: None,
            #[cfg(feature = "shared-cache")]
            shared_cache: None,
        }
    }

    /// The token endpoint; default [`DEFAULT_TOKEN_URL`]. Must be `https://`, or `http://`
    /// to a loopback host.
    ///
    /// ```
    /// # use understory_auth::{Credentials, UnderstoryAuth};
    /// let err = UnderstoryAuth::builder(Credentials::new("id", "secret"))
    ///     .token_url("http://auth.example.com/oauth2/token")
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("plain HTTP"));
    /// ```
    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = url.into();
        self
    }

    /// The `audience` sent in the token request; default [`DEFAULT_AUDIENCE`].
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// The API whose origin (scheme, host, port) receives the token; default
    /// [`DEFAULT_API_BASE`]. Requests to any other origin get no token. Must be `https://`,
    /// or `http://` to a loopback host.
    ///
    /// ```
    /// # use understory_auth::{Credentials, UnderstoryAuth};
    /// let auth = UnderstoryAuth::builder(Credentials::new("id", "secret"))
    ///     .api_base("http://127.0.0.1:8080")
    ///     .build()?;
    /// assert_eq!(auth.api_base().as_str(), "http://127.0.0.1:8080/");
    /// # Ok::<(), understory_auth::Error>(())
    /// ```
    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        self.api_base = url.into();
        self
    }

    /// One more origin allowed to receive the token, besides `api_base` (for instance a
    /// second Understory API host). Same rules as `api_base`.
    ///
    /// ```
    /// # use understory_auth::{Credentials, UnderstoryAuth};
    /// let auth = UnderstoryAuth::builder(Credentials::new("id", "secret"))
    ///     .allow_origin("https://files.understory.io")
    ///     .build()?;
    /// assert!(auth.is_allowed(&"https://files.understory.io/x".parse().unwrap()));
    /// # Ok::<(), understory_auth::Error>(())
    /// ```
    pub fn allow_origin(mut self, url: impl Into<String>) -> Self {
        self.extra_origins.push(url.into());
        self
    }

    /// Your product (e.g. `My-Company/Marketing-Automation-App`), sent in the token request's
    /// `User-Agent` before the crate's own `understory-auth/<version>`.
    pub fn user_agent(mut self, product: impl Into<String>) -> Self {
        self.user_agent = Some(product.into());
        self
    }

    /// The limit on a whole token request, from connecting to the last byte of the answer;
    /// default [`DEFAULT_TOKEN_TIMEOUT`]. Must not be zero, nor longer than an hour. How long
    /// callers wait: [Cache behaviour](crate#cache-behaviour).
    pub fn token_timeout(mut self, timeout: Duration) -> Self {
        self.token_timeout = timeout;
        self
    }

    /// The least time before a token stops being handed out that it is replaced in the
    /// background; default [`DEFAULT_REFRESH_AHEAD`]. The schedule:
    /// [Cache behaviour](crate#cache-behaviour). Must not be zero, and must be longer than
    /// the [`expiry_margin`](Self::expiry_margin).
    pub fn refresh_ahead(mut self, margin: Duration) -> Self {
        self.timing.refresh_ahead = margin;
        self
    }

    /// The most time before a token's expiry in which it is no longer handed out; default
    /// [`DEFAULT_EXPIRY_MARGIN`] (see [Cache behaviour](crate#cache-behaviour)). Must be
    /// shorter than [`refresh_ahead`](Self::refresh_ahead).
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.timing.expiry_margin = margin;
        self
    }

    /// Configures the token request's HTTP client (a proxy, a private CA, mTLS, a resolver):
    /// `configure` gets the `reqwest::ClientBuilder` the crate starts from; default: none.
    /// The crate then sets redirects and timeouts itself, so the hook cannot weaken them; an
    /// error of the configured client is reported by `build` as [`Error::Config`]. See
    /// [Corporate networks](crate#corporate-networks).
    ///
    /// A proxy (`Proxy::all`, so that it applies to `http://` token URLs too), checked with
    /// the sandbox standing in for it:
    ///
    /// ```
    /// # #[cfg(feature = "test-util")]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use understory_auth::{reqwest, testing::SandboxServer};
    ///
    /// let sandbox = SandboxServer::start().await?;
    /// // In production: reqwest::Proxy::all("http://proxy.corp.example:3128")?.basic_auth("user", "password")
    /// let proxy = reqwest::Proxy::all(sandbox.api_base())?;
    /// // A port nothing listens on: only the proxy can answer for it.
    /// let unreachable = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    ///
    /// let auth = sandbox
    ///     .auth_builder(sandbox.credentials())
    ///     .token_url(format!("http://{unreachable}/oauth2/token"))
    ///     .configure_token_client(move |client| client.proxy(proxy.clone()))
    ///     .build()?;
    /// auth.token().await?; // went through the proxy
    /// assert_eq!(sandbox.token_requests(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn configure_token_client(
        mut self,
        configure: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync + 'static,
    ) -> Self {
        self.client_hook = Some(ClientHook(Arc::new(configure)));
        self
    }

    /// A token cache shared with the other processes using `store` (feature `shared-cache`;
    /// see [`TokenStore`](crate::TokenStore)); default: none.
    ///
    /// ```no_run
    /// # #[cfg(feature = "redis")]
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::{Credentials, RedisStore, UnderstoryAuth};
    ///
    /// let auth = UnderstoryAuth::builder(Credentials::from_env()?)
    ///     .shared_cache(RedisStore::new("redis://127.0.0.1/")?)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "shared-cache")]
    pub fn shared_cache(mut self, store: impl crate::TokenStore) -> Self {
        self.shared_cache = Some(crate::store::StoreHandle::new(store));
        self
    }

    /// Checks the settings and builds the [`UnderstoryAuth`]; [`Error::Config`] names the
    /// setting that is wrong.
    ///
    /// ```
    /// # use understory_auth::{Credentials, Error, UnderstoryAuth};
    /// let err = UnderstoryAuth::builder(Credentials::new("", "secret")).build().unwrap_err();
    /// assert!(matches!(err, Error::Config { .. }));
    /// ```
    pub fn build(self) -> Result<UnderstoryAuth, Error> {
        let (grant, endpoints) = self.parts()?;
        Ok(UnderstoryAuth::from_cache(
            self.cache_over(grant, endpoints)?,
        ))
    }

    /// The checked settings (a third-party app builds its connections' caches from these).
    pub(crate) fn parts(&self) -> Result<(Grant, Endpoints), Error> {
        if self.credentials.client_id().trim().is_empty() {
            return Err(Error::config("the client id is empty"));
        }
        if self.credentials.client_secret().is_empty() {
            return Err(Error::config("the client secret is empty"));
        }
        if self.token_timeout.is_zero() {
            return Err(Error::config("token_timeout is zero"));
        }
        if self.token_timeout > MAX_TOKEN_TIMEOUT {
            return Err(Error::config(
                "token_timeout is longer than an hour: callers would wait that long for a hung auth server",
            ));
        }
        if self.timing.refresh_ahead.is_zero() {
            return Err(Error::config(
                "refresh_ahead is zero: tokens would be replaced only once expired, making requests wait",
            ));
        }
        if self.timing.expiry_margin >= self.timing.refresh_ahead {
            return Err(Error::config(
                "expiry_margin is not shorter than refresh_ahead: tokens would stop being handed out before they are refreshed",
            ));
        }
        let token_url = parse_secure_url(&self.token_url, "token_url")?;
        let api_base = parse_secure_url(&self.api_base, "api_base")?;
        let mut origins = vec![Origin::parse(&self.api_base, "api_base")?];
        for extra in &self.extra_origins {
            origins.push(Origin::parse(extra, "allow_origin")?);
        }
        let user_agent = match &self.user_agent {
            Some(product) => format!("{} {CRATE_USER_AGENT}", product.trim()),
            None => CRATE_USER_AGENT.to_owned(),
        };
        let user_agent = HeaderValue::try_from(user_agent)
            .map_err(|_| Error::config("user_agent holds characters not allowed in a header"))?;
        let grant = Grant::new(GrantConfig {
            credentials: &self.credentials,
            token_url: token_url.clone(),
            audience: &self.audience,
            user_agent,
            timeout: self.token_timeout,
            client_hook: self.client_hook.as_ref(),
        })?;
        let endpoints = Endpoints {
            origins: AllowedOrigins::new(origins),
            api_base,
            token_url,
            client_id: self.credentials.client_id().to_owned(),
        };
        Ok((grant, endpoints))
    }

    /// The credentials, the audience, the token timeout and the timing, as set.
    #[cfg(feature = "app")]
    pub(crate) fn settings(&self) -> (&Credentials, &str, Duration, Timing) {
        (
            &self.credentials,
            &self.audience,
            self.token_timeout,
            self.timing,
        )
    }
}

impl UnderstoryAuth {
    /// Tokens from Understory's production auth server for its production API. Infallible:
    /// should even the TLS backend fail to start, every token request reports that error.
    ///
    /// ```
    /// use understory_auth::{Credentials, UnderstoryAuth};
    /// let auth = UnderstoryAuth::new(Credentials::new("client-id", "client-secret"));
    /// ```
    pub fn new(credentials: Credentials) -> Self {
        let client_id = credentials.client_id().to_owned();
        Self::builder(credentials)
            .build()
            .unwrap_or_else(|error| Self::failed(client_id, error))
    }

    /// A builder to point the crate at other endpoints or change its timeouts (example:
    /// [`UnderstoryAuthBuilder`]).
    pub fn builder(credentials: Credentials) -> UnderstoryAuthBuilder {
        UnderstoryAuthBuilder::new(credentials)
    }

    /// The `new` fallback: a handle whose every token request reports `error`.
    fn failed(client_id: String, error: Error) -> Self {
        struct Failing(Error);
        impl crate::source::TokenSource for Failing {
            fn fetch(
                self: Arc<Self>,
            ) -> futures_util::future::BoxFuture<'static, Result<crate::token::GrantedToken, Error>>
            {
                Box::pin(futures_util::future::ready(Err(self.0.clone())))
            }
        }
        let defaults = (
            Url::parse(DEFAULT_API_BASE),
            Url::parse(DEFAULT_TOKEN_URL),
            Origin::parse(DEFAULT_API_BASE, "api_base"),
        );
        let (Ok(api_base), Ok(token_url), Ok(origin)) = defaults else {
            unreachable!("the default URLs are valid constants");
        };
        let endpoints = Endpoints {
            // The API origin stays allowed so that requests to it report the error.
            origins: AllowedOrigins::new(vec![origin]),
            api_base,
            token_url,
            client_id,
        };
        let source = Arc::new(Failing(error));
        Self::from_cache(TokenCache::new(
            source,
            DEFAULT_TOKEN_TIMEOUT,
            Timing::default(),
            Arc::new(endpoints),
        ))
    }
}

impl UnderstoryAuthBuilder {
    /// The token cache over `grant`, asking the shared store first when one is configured.
    fn cache_over(
        &self,
        grant: Grant,
        endpoints: Endpoints,
    ) -> Result<TokenCache<Arc<Endpoints>>, Error> {
        #[cfg_attr(not(feature = "shared-cache"), allow(unused_mut))]
        let mut source: Arc<dyn crate::source::TokenSource> = Arc::new(grant);
        #[cfg_attr(not(feature = "shared-cache"), allow(unused_mut))]
        let mut load_timeout = self.token_timeout;
        #[cfg(feature = "shared-cache")]
        if let Some(store) = &self.shared_cache {
            let key = crate::store::SharedKey {
                token_url: endpoints.token_url.as_str(),
                client_id: self.credentials.client_id(),
                audience: &self.audience,
                scopes: self.credentials.scopes(),
            };
            let secret = self.credentials.client_secret();
            (source, load_timeout) =
                store.wrap(source, &key, secret, self.token_timeout, self.timing)?;
        }
        Ok(TokenCache::new(
            source,
            load_timeout,
            self.timing,
            Arc::new(endpoints),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> UnderstoryAuthBuilder {
        UnderstoryAuthBuilder::new(Credentials::new("id", "secret"))
    }

    #[test]
    fn defaults_build() {
        let auth = builder().build().unwrap();
        assert_eq!(auth.api_base().as_str(), "https://api.understory.io/");
    }

    #[test]
    fn refuses_bad_settings_with_the_setting_named() {
        let cases = [
            (builder().token_url("http://example.com/token"), "token_url"),
            (
                builder().token_url("https://u:p@example.com/token"),
                "user name",
            ),
            (builder().api_base("http://api.understory.io"), "api_base"),
            (builder().allow_origin("ftp://x.io"), "allow_origin"),
            (builder().user_agent("bad\nagent"), "user_agent"),
            (builder().token_timeout(Duration::ZERO), "token_timeout"),
            // Deadlines are instants: a timeout this long would overflow them and panic.
            (builder().token_timeout(Duration::MAX), "token_timeout"),
            (builder().refresh_ahead(Duration::ZERO), "refresh_ahead"),
            (
                builder().expiry_margin(Duration::from_secs(60)),
                "expiry_margin",
            ),
            (
                UnderstoryAuthBuilder::new(Credentials::new("id", "")),
                "secret",
            ),
        ];
        for (builder, needle) in cases {
            let err = builder.build().unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
            assert!(!err.is_transient());
        }
    }
}
