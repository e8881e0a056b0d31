//! [`UnderstoryApp`]: a third-party app acting for many Understory companies, each one a
//! *connection* under a key of the app's own choosing.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{ACCEPT, AUTHORIZATION};
use secrecy::ExposeSecret;
use serde_json::Value;
use url::Url;

use super::AuthorizationStart;
use super::authorize::{AuthorizeConfig, start};
use super::callback::callback;
use super::company::Company;
use super::connections::Connections;
use super::pending::PendingAuthorization;
use super::refresh::Refresher;
use super::refresh_token::RefreshToken;
use super::stored_grant::{GrantState, StoredAccessToken, StoredGrant};
use crate::grant::Grant;
use crate::origin::AllowedOrigins;
use crate::{Error, UnderstoryAuth};

/// Access tokens for every company that connected a third-party app to Understory, with
/// the OAuth2 authorization code grant and rotating refresh tokens.
///
/// Clones share everything. Made by [`UnderstoryApp::builder`]; see the crate docs'
/// [Third-party apps](crate#third-party-apps) for the flow, a complete example and the
/// guarantees.
///
/// ```
/// # #[cfg(feature = "test-util")]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use understory_auth::{MemoryGrantStore, UnderstoryApp};
/// use understory_auth::testing::SandboxServer;
///
/// let sandbox = SandboxServer::start().await?;
/// let app = sandbox.app_builder().grant_store(MemoryGrantStore::new()).build()?;
///
/// let start = app.authorize(); // send the browser to start.url, keep start.pending
/// let callback = sandbox.consent(start.url.as_str(), "company-a").await?;
/// let company = app.complete(start.pending, &callback, "tenant-42").await?;
/// assert_eq!(company.id, "company-a");
///
/// let token = app.connection("tenant-42").token().await?;
/// # let _ = token;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct UnderstoryApp {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The app's client at the auth server: the code exchange, `/v1/me`, revocation.
    pub(crate) grant: Arc<Grant>,
    pub(crate) authorize: AuthorizeConfig,
    pub(crate) authorization_lifetime: Duration,
    pub(crate) revocation_url: Url,
    pub(crate) me_url: Url,
    #[cfg_attr(not(any(feature = "middleware", feature = "tower")), allow(dead_code))]
    pub(crate) origins: AllowedOrigins,
    pub(crate) refresher: Arc<Refresher>,
    pub(crate) connections: Connections,
}

impl UnderstoryApp {
    pub(crate) fn from_inner(inner: Inner) -> Self {
        UnderstoryApp {
            inner: Arc::new(inner),
        }
    }

    /// Starts an authorization: the URL to send the user's browser to, with a fresh `state`
    /// and PKCE challenge, and what [`complete`](Self::complete) needs to check the callback.
    /// Keep `pending` server-side (a session) or in an encrypted cookie, never in a URL.
    pub fn authorize(&self) -> AuthorizationStart {
        start(&self.inner.authorize, SystemTime::now())
    }

    /// Completes an authorization: checks the callback's query string against `pending`,
    /// exchanges the code (once), reads the company from `/v1/me`, saves the grant under
    /// `key` (replacing any earlier one) and returns the company.
    ///
    /// Fails without any request when `state` is missing or does not match, when Understory
    /// reports an error (the user declined: [`Error::AuthorizationDeclined`]), or when
    /// `pending` is older than the authorization lifetime.
    pub async fn complete(
        &self,
        pending: PendingAuthorization,
        callback_query: &str,
        key: &str,
    ) -> Result<Company, Error> {
        let inner = &self.inner;
        let code = callback(
            &pending,
            callback_query,
            SystemTime::now(),
            inner.authorization_lifetime,
        )?;
        let grant = &inner.grant;
        grant.remember_secret(code.expose_secret());
        grant.remember_secret(pending.verifier().expose_secret());
        let answer = grant
            .request_with(&[
                ("grant_type", "authorization_code"),
                ("code", code.expose_secret()),
                ("redirect_uri", pending.redirect_uri()),
                ("code_verifier", pending.verifier().expose_secret()),
            ])
            .await?;
        let Some(refresh_token) = answer.refresh_token else {
            return Err(Error::config(
                "the token answer has no refresh_token: ask for the `offline` scope, and have Understory grant it to the app",
            ));
        };
        let company = self.me(answer.granted.header()).await?;
        let now = SystemTime::now();
        let mut stored = StoredGrant::new(
            RefreshToken::new(refresh_token.expose_secret()),
            company.clone(),
            answer.granted.scopes().to_vec(),
            now,
        );
        let lifetime = answer.granted.lifetime();
        stored.access_token = Some(StoredAccessToken::new(
            answer.granted.secret(),
            now,
            lifetime,
        ));
        // Unconditional: a new consent replaces whatever the store held for the key.
        let _saved = inner.refresher.store.save(key, &stored, None).await?;
        inner.connections.replace(key, answer.granted);
        tracing::info!(connection = key, company_id = %company.id, "connected an Understory company");
        Ok(company)
    }

    /// The company's [`UnderstoryAuth`]: use it as reqwest middleware, with
    /// [`BearerAuthLayer`](crate::BearerAuthLayer), or for [`token`](UnderstoryAuth::token).
    /// A key that was never completed fails each token request with
    /// [`Error::UnknownConnection`].
    pub fn connection(&self, key: &str) -> UnderstoryAuth {
        self.inner.connections.get(key)
    }

    /// The company disconnects: its grant is revoked at Understory (every token of it) and
    /// forgotten. A key without a grant is no error.
    pub async fn disconnect(&self, key: &str) -> Result<(), Error> {
        let inner = &self.inner;
        match inner.refresher.store.load(key).await {
            Ok(Some(grant)) => self.revoke(&grant.refresh_token).await?,
            Ok(None) => {}
            // A row the store refuses (its key lost, say) cannot be revoked, only forgotten.
            Err(error) if !error.is_transient() => {
                tracing::warn!(connection = key, error = %error, "the grant could not be read; forgetting it without revoking it");
            }
            Err(error) => return Err(error.into()),
        }
        inner.refresher.store.delete(key).await?;
        inner.connections.remove(key);
        tracing::info!(connection = key, "disconnected an Understory company");
        Ok(())
    }

    /// Refreshes every stored connection not refreshed for `older_than`, so that none dies
    /// of its refresh token's idle lifetime (720 h at Hydra's default). Run it daily, with
    /// `older_than` well under that lifetime (a week, say); in a fleet, any one process may
    /// run it (the store's lease keeps refreshes single):
    ///
    /// ```no_run
    /// # async fn demo(app: understory_auth::UnderstoryApp) {
    /// use std::time::Duration;
    ///
    /// let mut daily = tokio::time::interval(Duration::from_secs(24 * 3600));
    /// loop {
    ///     daily.tick().await;
    ///     match app.keep_alive(Duration::from_secs(7 * 24 * 3600)).await {
    ///         Ok(report) => {
    ///             for (connection, error) in report.failed {
    ///                 eprintln!("{connection}: {error}");
    ///             }
    ///         }
    ///         Err(error) => eprintln!("the grant store failed: {error}"),
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn keep_alive(&self, older_than: Duration) -> Result<KeepAlive, Error> {
        let due = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut report = KeepAlive::default();
        for summary in self.inner.refresher.store.list().await? {
            if summary.state != GrantState::Active || summary.refreshed_at > due {
                continue;
            }
            // A refresh in any case, behind the lease like the caches' own; the new token
            // replaces this process's cached one (the server revokes the old one).
            match self.inner.refresher.obtain(&summary.key, true).await {
                Ok(granted) => {
                    self.inner.connections.seed(&summary.key, granted);
                    report.refreshed += 1;
                }
                Err(error) => report.failed.push((summary.key, error)),
            }
        }
        Ok(report)
    }

    /// How many connections have a token cache in memory (at most
    /// [`max_cached_connections`](crate::UnderstoryAppBuilder::max_cached_connections)).
    pub fn cached_connections(&self) -> usize {
        self.inner.connections.len()
    }

    /// Whether requests to `url` get a connection's token.
    #[cfg_attr(not(any(feature = "middleware", feature = "tower")), allow(dead_code))]
    pub(crate) fn is_allowed<'a>(&self, target: impl Into<crate::origin::Target<'a>>) -> bool {
        self.inner.origins.allowed_origin(target).is_some()
    }

    async fn me(&self, authorization: &http::HeaderValue) -> Result<Company, Error> {
        let grant = &self.inner.grant;
        let response = grant
            .client()
            .get(self.inner.me_url.clone())
            .header(AUTHORIZATION, authorization.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| grant.transport_error(e))?;
        let status = response.status();
        let body = grant.read_answer(response).await?;
        if !status.is_success() {
            return Err(Error::Status {
                status,
                retry_after: None,
            });
        }
        let json: Value = serde_json::from_slice(&body)
            .map_err(|_| Error::invalid_response(status, "/v1/me did not answer JSON"))?;
        let text = |name: &str| match json.get(name) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let id = text("company_id")
            .ok_or_else(|| Error::invalid_response(status, "/v1/me has no company_id"))?;
        Ok(Company::new(id, text("company_name").unwrap_or_default()))
    }

    async fn revoke(&self, token: &RefreshToken) -> Result<(), Error> {
        let pairs = [
            ("token", token.expose_secret()),
            ("token_type_hint", "refresh_token"),
        ];
        let url = self.inner.revocation_url.clone();
        let status = self.inner.grant.post_form(url, &pairs).await?;
        match status.is_success() {
            true => Ok(()),
            false => Err(Error::Status {
                status,
                retry_after: None,
            }),
        }
    }
}

/// What [`UnderstoryApp::keep_alive`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct KeepAlive {
    /// Connections refreshed.
    pub refreshed: usize,
    /// Connections whose refresh failed, with the error (a lost grant is
    /// [`Error::NeedsReauthorization`]).
    pub failed: Vec<(String, Error)>,
}

impl fmt::Debug for UnderstoryApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnderstoryApp")
            .field("client_id", &self.inner.authorize.client_id)
            .field("cached_connections", &self.cached_connections())
            .finish_non_exhaustive()
    }
}
