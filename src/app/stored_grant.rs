//! [`StoredGrant`]: what a [`GrantStore`](crate::GrantStore) keeps for one connection, and
//! its [`GrantState`].

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::company::Company;
use super::refresh_token::RefreshToken;

/// Whether a connection's grant can still be refreshed.
///
/// ```
/// use understory_auth::GrantState;
/// assert_eq!(GrantState::Active.as_str(), "active");
/// assert_eq!(GrantState::from_name("needs_reauthorization"), Some(GrantState::NeedsReauthorization));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GrantState {
    /// The refresh token is usable.
    Active,
    /// The grant is lost (the auth server answered `invalid_grant`: consent revoked, the
    /// refresh token expired unused or was presented twice): no token request is made for
    /// it until the company completes a new authorization.
    NeedsReauthorization,
}

impl GrantState {
    /// The state's name, for a store's column: `active`, `needs_reauthorization` (the
    /// names serde uses too).
    ///
    /// ```
    /// assert_eq!(understory_auth::GrantState::NeedsReauthorization.as_str(), "needs_reauthorization");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::NeedsReauthorization => "needs_reauthorization",
        }
    }

    /// The state named `name` (as [`as_str`](Self::as_str) gives it), if there is one.
    ///
    /// ```
    /// use understory_auth::GrantState;
    /// assert_eq!(GrantState::from_name("active"), Some(GrantState::Active));
    /// assert_eq!(GrantState::from_name("Active"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Self> {
        [GrantState::Active, GrantState::NeedsReauthorization]
            .into_iter()
            .find(|state| state.as_str() == name)
    }
}

/// One connection's grant as a [`GrantStore`](crate::GrantStore) keeps it: the current
/// refresh token, the version it is stored at (for compare-and-swap), its state, when it was
/// last refreshed (or obtained), the company, and the scopes granted.
///
/// Its `Debug` hides the refresh token. Fields may be added (a cached access token, for a
/// fleet's processes to share), so it is made with [`new`](Self::new).
///
/// ```
/// use std::time::SystemTime;
/// use understory_auth::{Company, GrantState, RefreshToken, StoredGrant};
///
/// let grant = StoredGrant::new(
///     RefreshToken::new("ory_rt_example"),
///     Company::new("cmp_123", "Fjord Kayaks"),
///     vec!["openid".into(), "offline".into(), "booking.read".into()],
///     SystemTime::now(),
/// );
/// assert_eq!(grant.state, GrantState::Active);
/// assert_eq!(grant.version, 0); // not stored yet
/// assert!(!format!("{grant:?}").contains("ory_rt_example"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoredGrant {
    /// The refresh token to present next (exactly once).
    pub refresh_token: RefreshToken,
    /// The version the store holds this grant at: set by the store on
    /// [`load`](crate::GrantStore::load), ignored by [`save`](crate::GrantStore::save)
    /// (which returns the new one). `0` for a grant not stored yet.
    pub version: u64,
    /// Whether it can still be refreshed.
    pub state: GrantState,
    /// When the refresh token was issued: by the code exchange or the last refresh.
    pub refreshed_at: SystemTime,
    /// The company that authorized the connection.
    pub company: Company,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// The access token the last refresh produced, kept so that the other processes of a
    /// fleet use it instead of refreshing again. A durable store keeps it encrypted like the
    /// refresh token (or not at all: it is only a saving).
    pub access_token: Option<StoredAccessToken>,
}

/// An access token kept with its grant: see [`StoredGrant::access_token`]. Its `Debug`
/// hides the token.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use understory_auth::StoredAccessToken;
///
/// let token = StoredAccessToken::new("ory_at_example", SystemTime::now(), Duration::from_secs(3600));
/// assert_eq!(token.expose_secret(), "ory_at_example");
/// assert!(!format!("{token:?}").contains("ory_at_example"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct StoredAccessToken {
    token: secrecy::SecretString,
    /// When it was obtained.
    pub obtained_at: SystemTime,
    /// Its lifetime from then.
    pub lifetime: std::time::Duration,
}

impl StoredAccessToken {
    /// An access token obtained at `obtained_at`, valid for `lifetime`.
    pub fn new(
        token: impl Into<String>,
        obtained_at: SystemTime,
        lifetime: std::time::Duration,
    ) -> Self {
        StoredAccessToken {
            token: token.into().into(),
            obtained_at,
            lifetime,
        }
    }

    /// The token itself, for a store to encrypt.
    pub fn expose_secret(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(&self.token)
    }
}

impl std::fmt::Debug for StoredAccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredAccessToken")
            .field("token", &"[REDACTED]")
            .field("obtained_at", &self.obtained_at)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl StoredGrant {
    /// An [`Active`](GrantState::Active) grant not stored yet (version 0), with a refresh
    /// token issued at `refreshed_at`. A store that reads one back sets
    /// [`version`](Self::version) and [`state`](Self::state) from what it holds.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use understory_auth::{Company, GrantState, RefreshToken, StoredGrant};
    ///
    /// // As a database store reads a row back.
    /// let mut grant = StoredGrant::new(
    ///     RefreshToken::new("ory_rt_decrypted"),
    ///     Company::new("cmp_123", "Fjord Kayaks"),
    ///     vec!["offline".into()],
    ///     UNIX_EPOCH + Duration::from_secs(1_767_225_600),
    /// );
    /// grant.version = 17;
    /// grant.state = GrantState::from_name("needs_reauthorization").expect("a state");
    /// ```
    pub fn new(
        refresh_token: RefreshToken,
        company: Company,
        scopes: Vec<String>,
        refreshed_at: SystemTime,
    ) -> Self {
        StoredGrant {
            refresh_token,
            version: 0,
            state: GrantState::Active,
            refreshed_at,
            company,
            scopes,
            access_token: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip_and_match_serde() {
        for state in [GrantState::Active, GrantState::NeedsReauthorization] {
            assert_eq!(GrantState::from_name(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).expect("serializes");
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert_eq!(GrantState::from_name(""), None);
    }

    #[test]
    fn debug_hides_the_refresh_token() {
        let grant = StoredGrant::new(
            RefreshToken::new("ory_rt_SECRET_value"),
            Company::new("cmp_1", "Kayaks"),
            vec!["offline".to_owned()],
            SystemTime::UNIX_EPOCH,
        );
        for shown in [format!("{grant:?}"), format!("{grant:#?}")] {
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(shown.contains("[REDACTED]"), "{shown}");
            assert!(shown.contains("Kayaks"), "{shown}");
        }
    }
}
