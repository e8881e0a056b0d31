//! Configuring a sandbox before it starts: [`SandboxBuilder`], [`SandboxServer::builder`].

use std::io;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::random::random_client_secret;
use super::server::SandboxServer;
use super::state::{Config, State};
use super::{DEFAULT_CLIENT_ID, DEFAULT_SCOPES, DEFAULT_TOKEN_LIFETIME};
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
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        Self {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: None,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            allowed_scopes: DEFAULT_SCOPES.iter().map(|&s| s.to_owned()).collect(),
            client_auth: ClientAuthMethod::default(),
        }
    }
}

impl SandboxServer {
    /// Starts a sandbox with the defaults of [`SandboxBuilder`].
    pub async fn start() -> io::Result<Self> {
        Self::builder().start().await
    }

    /// A builder for a sandbox with another client, token lifetime, scopes or client
    /// authentication method.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }
}

impl SandboxBuilder {
    /// The only client id the token endpoint accepts (default [`DEFAULT_CLIENT_ID`]).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The only client secret the token endpoint accepts (default: one generated per sandbox,
    /// like Understory's: 26 characters of `a-zA-Z0-9_-.~` with at least one `~`).
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(client_secret.into()));
        self
    }

    /// How long issued tokens stay valid (default [`DEFAULT_TOKEN_LIFETIME`]).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// The scopes the client may request (default [`DEFAULT_SCOPES`]); others: `invalid_scope`.
    pub fn allowed_scopes<I>(mut self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.allowed_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// How the client must authenticate (default [`ClientAuthMethod::ClientSecretPost`], as
    /// Understory registers integration keys); as in Hydra, the other method is `invalid_client`.
    pub fn client_auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.client_auth = method;
        self
    }

    /// Binds `127.0.0.1` on a free port and starts serving on the current Tokio runtime.
    pub async fn start(self) -> io::Result<SandboxServer> {
        let config = Config {
            client_id: self.client_id,
            client_secret: self
                .client_secret
                .map_or_else(random_client_secret, |s| s.expose_secret().to_owned()),
            client_auth: self.client_auth,
        };
        let state = State {
            allowed_scopes: self.allowed_scopes,
            token_lifetime: self.token_lifetime,
            ..State::default()
        };
        SandboxServer::spawn(config, state).await
    }
}
