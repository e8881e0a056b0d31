//! [`UnderstoryAppBuilder`]: a third-party app's settings, with the defaults in named
//! constants.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::authorize::AuthorizeConfig;
use super::connections::{Connections, DEFAULT_MAX_CACHED_CONNECTIONS};
use super::grant_store::GrantStore;
use super::pending::DEFAULT_AUTHORIZATION_LIFETIME;
use super::refresh::{ReauthorizationHook, RefreshEndpoint, Refresher};
use super::understory_app::{Inner, UnderstoryApp};
use crate::origin::parse_secure_url;
use crate::{Credentials, Error, UnderstoryAuthBuilder};

/// Understory's authorization endpoint, where the user's browser consents.
pub const DEFAULT_AUTHORIZE_URL: &str = "https://api.auth.understory.io/oauth2/auth";
/// Understory's token revocation endpoint (Ory Hydra's).
pub const DEFAULT_REVOCATION_URL: &str = "https://api.auth.understory.io/oauth2/revoke";
/// Where the company behind a token is read, relative to the API base.
pub const ME_PATH: &str = "/v1/me";

/// Configures an [`UnderstoryApp`]; made by [`UnderstoryApp::builder`].
///
/// The app's credentials carry its scopes, which must include `offline` (or
/// `offline_access`): without a refresh token a connection dies within the hour. The
/// endpoint, timeout and timing setters are [`UnderstoryAuthBuilder`]'s, with its defaults.
///
/// ```
/// use understory_auth::{Credentials, MemoryGrantStore, UnderstoryApp};
///
/// let app = UnderstoryApp::builder(
///     Credentials::new("app-id", "app-secret").with_scopes(["openid", "offline", "booking.read"]),
/// )
/// .redirect_uri("https://example.com/oauth/callback")
/// .grant_store(MemoryGrantStore::new())
/// .on_needs_reauthorization(|connection| eprintln!("ask {connection} to connect again"))
/// .build()?;
/// # let _ = app;
/// # Ok::<(), understory_auth::Error>(())
/// ```
#[must_use = "a builder does nothing until .build() is called"]
pub struct UnderstoryAppBuilder {
    auth: UnderstoryAuthBuilder,
    redirect_uri: Option<String>,
    store: Option<Arc<dyn GrantStore>>,
    authorize_url: String,
    revocation_url: String,
    me_url: Option<String>,
    authorization_lifetime: Duration,
    max_cached_connections: usize,
    on_reauthorization: Option<Arc<ReauthorizationHook>>,
}

impl UnderstoryApp {
    /// A builder for an app with `credentials` (its client id, secret and scopes).
    pub fn builder(credentials: Credentials) -> UnderstoryAppBuilder {
        UnderstoryAppBuilder {
            auth: UnderstoryAuthBuilder::new(credentials),
            redirect_uri: None,
            store: None,
            authorize_url: DEFAULT_AUTHORIZE_URL.to_owned(),
            revocation_url: DEFAULT_REVOCATION_URL.to_owned(),
            me_url: None,
            authorization_lifetime: DEFAULT_AUTHORIZATION_LIFETIME,
            max_cached_connections: DEFAULT_MAX_CACHED_CONNECTIONS,
            on_reauthorization: None,
        }
    }
}

macro_rules! forward {
    ($($(#[$doc:meta])* $name:ident($arg:ident: $ty:ty);)*) => {$(
        $(#[$doc])*
        pub fn $name(mut self, $arg: $ty) -> Self {
            self.auth = self.auth.$name($arg);
            self
        }
    )*};
}

impl UnderstoryAppBuilder {
    /// The redirect URI registered with Understory, exactly (required).
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(uri.into());
        self
    }

    /// Where the connections' refresh tokens live (required).
    pub fn grant_store(mut self, store: impl GrantStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The authorization endpoint; default [`DEFAULT_AUTHORIZE_URL`].
    pub fn authorize_url(mut self, url: impl Into<String>) -> Self {
        self.authorize_url = url.into();
        self
    }

    /// The revocation endpoint; default [`DEFAULT_REVOCATION_URL`].
    pub fn revocation_url(mut self, url: impl Into<String>) -> Self {
        self.revocation_url = url.into();
        self
    }

    /// Where the company behind a token is read; default [`ME_PATH`] at the API base.
    pub fn me_url(mut self, url: impl Into<String>) -> Self {
        self.me_url = Some(url.into());
        self
    }

    /// How long a [`PendingAuthorization`](crate::PendingAuthorization) may be completed;
    /// default [`DEFAULT_AUTHORIZATION_LIFETIME`] (Hydra's).
    pub fn authorization_lifetime(mut self, lifetime: Duration) -> Self {
        self.authorization_lifetime = lifetime;
        self
    }

    /// How many connections keep a token cache in memory; the least recently used one is
    /// dropped beyond that (its grant stays in the store). Default
    /// [`DEFAULT_MAX_CACHED_CONNECTIONS`].
    pub fn max_cached_connections(mut self, max: usize) -> Self {
        self.max_cached_connections = max;
        self
    }

    /// Called with a connection's key when its grant is lost (consent revoked, refresh token
    /// expired or reused) and the company must connect again: e-mail them, say.
    pub fn on_needs_reauthorization(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_reauthorization = Some(Arc::new(hook));
        self
    }

    forward! {
        /// [`UnderstoryAuthBuilder::token_url`].
        token_url(url: impl Into<String>);
        /// [`UnderstoryAuthBuilder::audience`].
        audience(audience: impl Into<String>);
        /// [`UnderstoryAuthBuilder::api_base`].
        api_base(url: impl Into<String>);
        /// [`UnderstoryAuthBuilder::allow_origin`].
        allow_origin(url: impl Into<String>);
        /// [`UnderstoryAuthBuilder::user_agent`].
        user_agent(product: impl Into<String>);
        /// [`UnderstoryAuthBuilder::token_timeout`].
        token_timeout(timeout: Duration);
        /// [`UnderstoryAuthBuilder::refresh_ahead`].
        refresh_ahead(margin: Duration);
        /// [`UnderstoryAuthBuilder::expiry_margin`].
        expiry_margin(margin: Duration);
    }

    /// Checks the settings and builds the app. Fails with [`Error::Config`] naming the
    /// setting: those of [`UnderstoryAuthBuilder::build`], a missing redirect URI or grant
    /// store, or scopes without `offline`.
    pub fn build(self) -> Result<UnderstoryApp, Error> {
        let (grant, endpoints) = self.auth.parts()?;
        let (credentials, audience, timeout, timing) = self.auth.settings();
        let scopes = credentials.scopes().to_vec();
        if !scopes
            .iter()
            .any(|s| s == "offline" || s == "offline_access")
        {
            return Err(Error::config(
                "the scopes lack `offline`: without a refresh token every connection dies within the hour",
            ));
        }
        let redirect_uri = self
            .redirect_uri
            .ok_or_else(|| Error::config("redirect_uri is required"))?;
        parse_secure_url(&redirect_uri, "redirect_uri")?;
        let store = self
            .store
            .ok_or_else(|| Error::config("grant_store is required"))?;
        let me_url = match self.me_url {
            Some(url) => parse_secure_url(&url, "me_url")?,
            None => endpoints
                .api_base
                .join(ME_PATH)
                .map_err(|_| Error::config("api_base cannot hold /v1/me"))?,
        };
        let authorize = AuthorizeConfig {
            authorize_url: parse_secure_url(&self.authorize_url, "authorize_url")?,
            client_id: credentials.client_id().to_owned(),
            redirect_uri,
            scopes,
            audience: audience.to_owned(),
        };
        let grant = Arc::new(grant);
        let refresher = Arc::new(Refresher {
            endpoint: Arc::clone(&grant) as Arc<dyn RefreshEndpoint>,
            store,
            on_reauthorization: self.on_reauthorization,
            holder: format!("{:016x}", fastrand::u64(..)),
            attempts: Default::default(),
            clock: SystemTime::now,
            timing,
        });
        let origins = endpoints.origins.clone();
        let connections = Connections::new(
            Arc::clone(&refresher),
            endpoints,
            timeout,
            timing,
            self.max_cached_connections,
        );
        Ok(UnderstoryApp::from_inner(Inner {
            grant,
            authorize,
            authorization_lifetime: self.authorization_lifetime,
            revocation_url: parse_secure_url(&self.revocation_url, "revocation_url")?,
            me_url,
            origins,
            refresher,
            connections,
        }))
    }
}

impl std::fmt::Debug for UnderstoryAppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnderstoryAppBuilder")
            .field("auth", &self.auth)
            .field("redirect_uri", &self.redirect_uri)
            .field("authorize_url", &self.authorize_url)
            .field("revocation_url", &self.revocation_url)
            .field("max_cached_connections", &self.max_cached_connections)
            .finish_non_exhaustive()
    }
}
