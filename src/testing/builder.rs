//! Configuring a sandbox before it starts.

use std::fmt;
use std::io;
use std::time::Duration;

use super::server::SandboxServer;
use super::state::{Config, random_client_secret};
use super::{DEFAULT_CLIENT_ID, DEFAULT_SCOPES, DEFAULT_TOKEN_LIFETIME};
use crate::ClientAuthMethod;

/// Configures a [`SandboxServer`] before starting it; see [`SandboxServer::builder`].
#[derive(Clone)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct SandboxBuilder {
    client_id: String,
    /// `None`: one generated when the sandbox starts.
    client_secret: Option<String>,
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
            allowed_scopes: DEFAULT_SCOPES
                .iter()
                .map(|&scope| scope.to_owned())
                .collect(),
            client_auth: ClientAuthMethod::default(),
        }
    }
}

impl fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxBuilder")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("token_lifetime", &self.token_lifetime)
            .field("allowed_scopes", &self.allowed_scopes)
            .field("client_auth", &self.client_auth)
            .finish()
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
        self.client_secret = Some(client_secret.into());
        self
    }

    /// How long issued tokens stay valid (default [`DEFAULT_TOKEN_LIFETIME`]); see
    /// [`SandboxServer::set_token_lifetime`].
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// The scopes the client may request (default [`DEFAULT_SCOPES`]); requesting any other
    /// gives `invalid_scope`.
    pub fn allowed_scopes<I>(mut self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.allowed_scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// How the client must authenticate (default [`ClientAuthMethod::ClientSecretPost`],
    /// as Understory registers its integration keys). As in Hydra, the method is fixed per
    /// client: a client registered for one method that authenticates with the other gets
    /// `invalid_client`.
    pub fn client_auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.client_auth = method;
        self
    }

    /// Binds `127.0.0.1` on a free port and starts serving on the current Tokio runtime.
    pub async fn start(self) -> io::Result<SandboxServer> {
        let config = Config {
            client_id: self.client_id,
            client_secret: self.client_secret.unwrap_or_else(random_client_secret),
            client_auth: self.client_auth,
        };
        SandboxServer::spawn(config, self.allowed_scopes, self.token_lifetime).await
    }
}
