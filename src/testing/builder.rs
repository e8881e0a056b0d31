//! Configuring a sandbox before it starts: [`SandboxBuilder`], [`SandboxServer::builder`].

use std::io;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::clients::{Client, Config};
use super::companies::Company;
use super::random::random_client_secret;
use super::server::SandboxServer;
use super::state::State;
use super::{
    DEFAULT_APP_CLIENT_ID, DEFAULT_APP_SCOPES, DEFAULT_CLIENT_ID, DEFAULT_COMPANIES,
    DEFAULT_REDIRECT_URI, DEFAULT_REFRESH_TOKEN_LIFETIME, DEFAULT_SCOPES, DEFAULT_TOKEN_LIFETIME,
};
use crate::ClientAuthMethod;

/// Configures a [`SandboxServer`] before starting it; see [`SandboxServer::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct SandboxBuilder {
    client_id: String,
    /// `None`: one generated when the sandbox starts.
    client_secret: Option<SecretString>,
    token_lifetime: Duration,
    allowed_scopes: Vec<String>,
    client_auth: ClientAuthMethod,
    /// Empty: the default app.
    apps: Vec<(String, SecretString, Vec<String>)>,
    app_auth: ClientAuthMethod,
    app_scopes: Vec<String>,
    app_token_lifetime: Duration,
    refresh_token_lifetime: Duration,
    /// Empty: [`DEFAULT_COMPANIES`].
    companies: Vec<(String, String)>,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        let owned = |scopes: &[&str]| scopes.iter().map(|&s| s.to_owned()).collect();
        Self {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: None,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            allowed_scopes: owned(DEFAULT_SCOPES),
            client_auth: ClientAuthMethod::default(),
            apps: Vec::new(),
            app_auth: ClientAuthMethod::default(),
            app_scopes: owned(DEFAULT_APP_SCOPES),
            app_token_lifetime: DEFAULT_TOKEN_LIFETIME,
            refresh_token_lifetime: DEFAULT_REFRESH_TOKEN_LIFETIME,
            companies: Vec::new(),
        }
    }
}

impl SandboxServer {
    /// Starts a sandbox with the defaults of [`SandboxBuilder`].
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// A builder for a sandbox with other clients, companies, lifetimes or scopes.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }
}

impl SandboxBuilder {
    /// The integration key's client id (default [`DEFAULT_CLIENT_ID`]).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The integration key's secret (default: one generated per sandbox, like Understory's:
    /// 26 characters of `a-zA-Z0-9_-.~` with at least one `~`).
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(client_secret.into()));
        self
    }

    /// How long the integration key's tokens stay valid (default [`DEFAULT_TOKEN_LIFETIME`]).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// The scopes the key may request (default [`DEFAULT_SCOPES`]); others: `invalid_scope`.
    pub fn allowed_scopes<I>(mut self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.allowed_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// How the key must authenticate (default [`ClientAuthMethod::ClientSecretPost`], as
    /// Understory registers integration keys); as in Hydra, the other method is `invalid_client`.
    pub fn client_auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.client_auth = method;
        self
    }

    /// Registers a third-party app with its redirect URIs (absolute URLs, compared exactly).
    /// Without any, the sandbox has one: [`DEFAULT_APP_CLIENT_ID`], a generated secret and
    /// [`DEFAULT_REDIRECT_URI`].
    pub fn app<I>(
        mut self,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        redirect_uris: I,
    ) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let uris = redirect_uris.into_iter().map(Into::into).collect();
        let secret = SecretString::from(client_secret.into());
        self.apps.push((client_id.into(), secret, uris));
        self
    }

    /// How every app must authenticate (default [`ClientAuthMethod::ClientSecretPost`]).
    pub fn app_auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.app_auth = method;
        self
    }

    /// The scopes every app may request (default [`DEFAULT_APP_SCOPES`]).
    pub fn app_scopes<I>(mut self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.app_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// How long the apps' access tokens stay valid (default [`DEFAULT_TOKEN_LIFETIME`]).
    pub fn app_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.app_token_lifetime = lifetime;
        self
    }

    /// How long an app's refresh token stays valid, each one from its own refresh (default
    /// [`DEFAULT_REFRESH_TOKEN_LIFETIME`]).
    pub fn refresh_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.refresh_token_lifetime = lifetime;
        self
    }

    /// Adds a company (default: [`DEFAULT_COMPANIES`]); the first added is the integration
    /// key's and the one that consents when no other is named.
    pub fn company(mut self, id: impl Into<String>, name: impl Into<String>) -> Self {
        self.companies.push((id.into(), name.into()));
        self
    }

    /// Binds `127.0.0.1` on a free port and starts serving on the current Tokio runtime.
    /// Fails with [`io::ErrorKind::InvalidInput`] if a redirect URI is not an absolute URL.
    pub async fn start(self) -> io::Result<SandboxServer> {
        let secret = |secret: Option<SecretString>| {
            secret.map_or_else(random_client_secret, |s| s.expose_secret().to_owned())
        };
        let key = Client {
            id: self.client_id,
            secret: secret(self.client_secret),
            auth: self.client_auth,
            redirect_uris: Vec::new(),
            scopes: Vec::new(),
        };
        let mut apps = self.apps;
        if apps.is_empty() {
            let uris = vec![DEFAULT_REDIRECT_URI.to_owned()];
            apps.push((
                DEFAULT_APP_CLIENT_ID.to_owned(),
                SecretString::from(random_client_secret()),
                uris,
            ));
        }
        let mut registered = Vec::new();
        for (id, app_secret, redirect_uris) in apps {
            if let Some(bad) = redirect_uris
                .iter()
                .find(|uri| url::Url::parse(uri).is_err())
            {
                let message =
                    format!("the redirect URI {bad:?} of app {id:?} is not an absolute URL");
                return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
            }
            registered.push(Client {
                id,
                secret: secret(Some(app_secret)),
                auth: self.app_auth,
                redirect_uris,
                scopes: self.app_scopes.clone(),
            });
        }
        let mut companies = self.companies;
        if companies.is_empty() {
            companies = DEFAULT_COMPANIES
                .iter()
                .map(|&(id, name)| (id.to_owned(), name.to_owned()))
                .collect();
        }
        let companies = companies
            .into_iter()
            .map(|(id, name)| Company { id, name })
            .collect();
        let config = Config {
            key,
            apps: registered,
            companies,
        };
        let mut state = State {
            allowed_scopes: self.allowed_scopes,
            token_lifetime: self.token_lifetime,
            ..State::default()
        };
        state.app_lifetimes.access = self.app_token_lifetime;
        state.app_lifetimes.refresh = self.refresh_token_lifetime;
        SandboxServer::spawn(config, state).await
    }
}
