//! [`SandboxServer`]'s side of third-party apps: their endpoints and credentials, the
//! companies, consent, lifetimes, and what happened to each company's grants.

use std::time::Duration;

use super::grants::Counts;
use super::server::SandboxServer;
use super::{AUTHORIZE_PATH, REVOKE_PATH};
use crate::Credentials;

impl SandboxServer {
    /// The authorize endpoint, `http://127.0.0.1:PORT/oauth2/auth`.
    pub fn authorize_url(&self) -> String {
        format!("http://{}{AUTHORIZE_PATH}", self.addr())
    }

    /// The revocation endpoint, `http://127.0.0.1:PORT/oauth2/revoke`.
    pub fn revocation_url(&self) -> String {
        format!("http://{}{REVOKE_PATH}", self.addr())
    }

    /// The client id of the first app registered (or of the default app).
    pub fn app_client_id(&self) -> &str {
        &self.config().apps[0].id
    }

    /// The client secret of the first app registered (or the default app's, generated).
    pub fn app_client_secret(&self) -> &str {
        &self.config().apps[0].secret
    }

    /// The redirect URIs of the first app registered (or [`DEFAULT_REDIRECT_URI`](super::DEFAULT_REDIRECT_URI)).
    pub fn app_redirect_uris(&self) -> &[String] {
        &self.config().apps[0].redirect_uris
    }

    /// An [`UnderstoryAppBuilder`](crate::UnderstoryAppBuilder) for the sandbox's app: its
    /// credentials with [`DEFAULT_APP_SCOPES`](super::DEFAULT_APP_SCOPES), its first redirect
    /// URI and the sandbox's endpoints; only the grant store is left to set.
    #[cfg(feature = "app")]
    pub fn app_builder(&self) -> crate::UnderstoryAppBuilder {
        let credentials = self
            .app_credentials()
            .with_scopes(super::DEFAULT_APP_SCOPES.iter().copied());
        crate::UnderstoryApp::builder(credentials)
            .redirect_uri(self.app_redirect_uris()[0].clone())
            .token_url(self.token_url())
            .api_base(self.api_base())
            .authorize_url(self.authorize_url())
            .revocation_url(self.revocation_url())
    }

    /// [`Credentials`] of the first app (id, secret, method), without scopes.
    pub fn app_credentials(&self) -> Credentials {
        let app = &self.config().apps[0];
        Credentials::new(&app.id, &app.secret).with_auth_method(app.auth)
    }

    /// The id of the integration key's company, which also consents when none is named.
    pub fn key_company(&self) -> &str {
        &self.config().key_company().id
    }

    /// How long the apps' access tokens issued from now on stay valid.
    pub fn set_app_token_lifetime(&self, lifetime: Duration) {
        self.with(|state| state.app_lifetimes.access = lifetime);
    }

    /// How long refresh tokens issued from now on stay valid.
    pub fn set_refresh_token_lifetime(&self, lifetime: Duration) {
        self.with(|state| state.app_lifetimes.refresh = lifetime);
    }

    /// While `on`, every company declines at `/oauth2/auth` (`error=access_denied`).
    pub fn set_decline_consent(&self, on: bool) {
        self.with(|state| state.decline_consent = on);
    }

    /// `company` withdraws its consent to every app: its grants' tokens are deleted (the next
    /// refresh is `invalid_grant`, its access tokens get 401) and its codes forgotten.
    pub fn revoke_consent(&self, company: &str) {
        self.with(|state| state.grants.revoke_company(&mut state.tokens, company));
    }

    /// How many authorization codes `company` consented to.
    pub fn consents(&self, company: &str) -> usize {
        self.counts(company).consents
    }

    /// How many codes of `company` were exchanged for tokens.
    pub fn code_exchanges(&self, company: &str) -> usize {
        self.counts(company).code_exchanges
    }

    /// How many refreshes of `company`'s grants succeeded.
    pub fn refreshes(&self, company: &str) -> usize {
        self.counts(company).refreshes
    }

    /// How many times a rotated refresh token of `company` was presented again (each time
    /// revoking its grant).
    pub fn reuse_detected(&self, company: &str) -> usize {
        self.counts(company).reuse_detected
    }

    /// How many of `company`'s grants were revoked by `/oauth2/revoke` or `revoke_consent`.
    pub fn revocations(&self, company: &str) -> usize {
        self.counts(company).revocations
    }

    fn counts(&self, company: &str) -> Counts {
        self.with(|state| state.grants.counts(company))
    }
}
