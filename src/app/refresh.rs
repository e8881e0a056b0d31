//! A connection's token source: the `refresh_token` grant over the [`GrantStore`], with
//! Understory's rotation (Ory Hydra's): every refresh returns a new refresh token and
//! deactivates the old one, and presenting an old one again revokes the whole grant.
//!
//! So a refresh token is presented at most once: the connection's cache runs one fetch at a
//! time (single flight), the store's lease keeps other processes out, the rotated token is
//! saved (compare-and-swap on the version it was loaded with) before the access token is
//! handed out, and a transient failure keeps the old token, which the server did not
//! consume. `invalid_grant` marks the connection as needing re-authorisation: no further
//! token request goes out for it until the company consents again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use secrecy::ExposeSecret;

use super::grant_store::{GrantStore, SaveOutcome};
use super::refresh_token::RefreshToken;
use super::stored_grant::{GrantState, StoredAccessToken, StoredGrant};
use crate::Error;
use crate::app::GrantStoreError;
use crate::grant::{Grant, TokenAnswer};
use crate::schedule::{Timing, latest_refresh_lead};
use crate::source::TokenSource;
use crate::token::GrantedToken;

/// How long a process holds a connection's refresh lease at most: a holder that dies delays
/// that connection's next refresh by this much.
pub const REFRESH_LEASE: Duration = Duration::from_secs(30);

/// How often a process that finds another holding a connection's lease looks again.
const LEASE_POLL: Duration = Duration::from_millis(50);

/// How often the rotated refresh token's save is tried before the refresh is reported as
/// failed (the store failing right then is the one way a grant can be lost).
const SAVE_ATTEMPTS: u32 = 3;

/// Called with the connection's key when it needs re-authorisation.
pub(crate) type ReauthorizationHook = dyn Fn(&str) + Send + Sync;

/// Where refresh tokens are presented: the auth server's token endpoint (an in-memory one
/// in the unit tests, under tokio's paused clock).
pub(crate) trait RefreshEndpoint: Send + Sync {
    /// One `refresh_token` grant request; `refresh_token` is remembered for redaction.
    fn refresh<'a>(&'a self, refresh_token: &'a str) -> BoxFuture<'a, Result<TokenAnswer, Error>>;
}

impl RefreshEndpoint for Grant {
    fn refresh<'a>(&'a self, refresh_token: &'a str) -> BoxFuture<'a, Result<TokenAnswer, Error>> {
        self.remember_secret(refresh_token);
        let pairs = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        Box::pin(async move { self.request_with(&pairs).await })
    }
}

/// What every connection of one app shares.
pub(crate) struct Refresher {
    pub(crate) endpoint: Arc<dyn RefreshEndpoint>,
    pub(crate) store: Arc<dyn GrantStore>,
    pub(crate) on_reauthorization: Option<Arc<ReauthorizationHook>>,
    /// This process's name in leases; each attempt adds a number of its own, so that the
    /// lease also keeps this process's own refreshes of a connection apart.
    pub(crate) holder: String,
    pub(crate) attempts: std::sync::atomic::AtomicU64,
    /// The wall clock stored grants are dated by (tests derive it from tokio's clock).
    pub(crate) clock: fn() -> SystemTime,
    /// When a stored access token is still worth taking (the cache's refresh rule).
    pub(crate) timing: Timing,
}

/// One connection's source of access tokens.
pub(crate) struct ConnectionSource {
    pub(crate) key: String,
    pub(crate) refresher: Arc<Refresher>,
}

impl TokenSource for ConnectionSource {
    fn fetch(self: Arc<Self>) -> BoxFuture<'static, Result<GrantedToken, Error>> {
        Box::pin(async move { self.refresher.obtain(&self.key, false).await })
    }
}

impl Refresher {
    /// A token for `key`: the one another process stored, if it is not yet due, or else a
    /// refresh (`force`: a refresh in any case, to keep the grant alive). Only the holder of
    /// the store's lease refreshes; a process that finds the lease taken waits for the
    /// holder's token (the caller's timeout bounds the wait) and never presents the refresh
    /// token it loaded before.
    pub(crate) async fn obtain(&self, key: &str, force: bool) -> Result<GrantedToken, Error> {
        let attempt = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let holder = format!("{}-{attempt}", self.holder);
        loop {
            if self.store.lease(key, &holder, REFRESH_LEASE).await? {
                break;
            }
            let grant = self.active(key).await?;
            if let Some(shared) = self.shared_token(&grant).filter(|_| !force) {
                return Ok(shared);
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
        // Loaded under the lease: another process may have rotated the token just before.
        let result = match self.active(key).await {
            Ok(grant) => match self.shared_token(&grant).filter(|_| !force) {
                Some(shared) => Ok(shared),
                None => self.refresh_leased(key, grant).await,
            },
            Err(error) => Err(error),
        };
        if let Err(error) = self.store.release(key, &holder).await {
            tracing::debug!(connection = key, error = %error, "could not release the refresh lease; it runs out by itself");
        }
        result
    }

    /// `key`'s grant, if it can be refreshed.
    async fn active(&self, key: &str) -> Result<StoredGrant, Error> {
        match self.store.load(key).await? {
            Some(grant) if grant.state == GrantState::Active => Ok(grant),
            Some(_) => Err(Error::NeedsReauthorization {
                connection: key.to_owned(),
            }),
            None => Err(Error::UnknownConnection {
                connection: key.to_owned(),
            }),
        }
    }

    /// The access token stored with `grant`, if no process is due to refresh it yet (it has
    /// more left than the latest refresh lead): then it is used as is, with what is left of
    /// its lifetime. So a fleet refreshes each connection once per refresh interval, when the
    /// stored token comes due, not at the earliest of its processes' jittered instants.
    fn shared_token(&self, grant: &StoredGrant) -> Option<GrantedToken> {
        let stored = grant.access_token.as_ref()?;
        let expires_at = stored.obtained_at.checked_add(stored.lifetime)?;
        let left = expires_at.duration_since((self.clock)()).ok()?;
        if left <= latest_refresh_lead(stored.lifetime, self.timing) {
            return None;
        }
        GrantedToken::new(stored.expose_secret(), left, grant.scopes.clone()).ok()
    }

    async fn refresh_leased(&self, key: &str, grant: StoredGrant) -> Result<GrantedToken, Error> {
        let answer = self
            .endpoint
            .refresh(grant.refresh_token.expose_secret())
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) if error.oauth_code() == Some("invalid_grant") => {
                return Err(self.lost(key, grant.version, &error).await);
            }
            // Not consumed: the same refresh token is presented by the next attempt.
            Err(error) => return Err(error),
        };
        let mut next = grant.clone();
        if let Some(rotated) = &answer.refresh_token {
            next.refresh_token = RefreshToken::new(rotated.expose_secret());
        }
        next.refreshed_at = (self.clock)();
        next.scopes = answer.granted.scopes().to_vec();
        next.access_token = Some(StoredAccessToken::new(
            answer.granted.secret(),
            next.refreshed_at,
            answer.granted.lifetime(),
        ));
        self.save_rotated(key, &next, grant.version).await?;
        Ok(answer.granted)
    }

    /// Saves the rotated grant, retrying a failing store briefly: until it is saved, the
    /// only valid refresh token of the grant exists in this process alone.
    async fn save_rotated(&self, key: &str, next: &StoredGrant, version: u64) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.store.save(key, next, Some(version)).await {
                Ok(SaveOutcome::Saved { .. }) => return Ok(()),
                Ok(SaveOutcome::Conflict) => {
                    // Replaced meanwhile (a new authorization, a disconnect): that one counts.
                    return Err(GrantStoreError::transient(
                        "the connection's grant changed during the refresh; the next request uses the new one",
                    )
                    .into());
                }
                Err(error) if attempt < SAVE_ATTEMPTS && error.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                }
                Err(error) => {
                    tracing::error!(
                        connection = key,
                        error = %error,
                        "the rotated refresh token could not be saved; the connection will need re-authorisation"
                    );
                    return Err(error.into());
                }
            }
        }
    }

    /// `invalid_grant`: consent revoked, the refresh token expired, or reuse detected. The
    /// connection is marked, the hook told, and the error names the connection.
    async fn lost(&self, key: &str, version: u64, cause: &Error) -> Error {
        tracing::warn!(
            connection = key,
            error = %cause,
            "the auth server refused the connection's refresh token; it needs re-authorisation"
        );
        if let Err(error) = self.store.mark_needs_reauthorization(key, version).await {
            tracing::warn!(connection = key, error = %error, "could not mark the connection as needing re-authorisation");
        }
        if let Some(hook) = &self.on_reauthorization {
            hook(key);
        }
        Error::NeedsReauthorization {
            connection: key.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
