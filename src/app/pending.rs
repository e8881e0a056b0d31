//! [`PendingAuthorization`]: what the app keeps between sending the user to Understory and
//! the callback, and how long it stays usable.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::pkce::is_valid_verifier;
use super::random::is_url_safe;
use crate::Error;

/// How long after it was started an authorization can be completed, by default: 30 minutes,
/// Hydra's default lifetime of a login and consent request (`ttl.login_consent_request`).
/// A callback for an older [`PendingAuthorization`] is refused before any token request.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(understory_auth::DEFAULT_AUTHORIZATION_LIFETIME, Duration::from_secs(30 * 60));
/// ```
pub const DEFAULT_AUTHORIZATION_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// How far in the future a pending authorization's start may lie (the clocks of two
/// processes behind one load balancer disagree a little); further, it is refused.
pub(crate) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The shortest `state` accepted in a deserialized pending authorization: the crate makes
/// 43 characters; Hydra refuses fewer than 8.
const MIN_STATE_LEN: usize = 43;

/// The longest `state` accepted in a deserialized pending authorization.
const MAX_STATE_LEN: usize = 128;

/// The latest start accepted in a deserialized pending authorization, in Unix seconds: the
/// end of the year 9999 (any `SystemTime` holds it).
const MAX_CREATED_AT: u64 = 253_402_300_799;

/// An authorization that was started and not yet completed: the `state` the callback must
/// carry back, the PKCE verifier the code exchange needs, the exact `redirect_uri` and the
/// scopes asked for, and when it was started.
///
/// Keep it where only the server can read it, bound to the user's browser session: in the
/// **server-side session**, or in an **encrypted** (authenticated) cookie. Never in a URL,
/// a plain cookie or a log: with the verifier, whoever intercepts the code can redeem it.
/// It is [`Serialize`] and [`Deserialize`] for that (its fields are named, and a
/// deserialized one is checked: a `state` or verifier without the right length and
/// alphabet is refused), and it crosses process restarts: it holds its start time as Unix
/// seconds, and is refused once it is older than the authorization lifetime
/// ([`DEFAULT_AUTHORIZATION_LIFETIME`] unless configured otherwise).
///
/// Use it for one callback only, and forget it afterwards, whatever the outcome. Its
/// `Debug` shows the redirect URI, the scopes and the start time, never `state` or the
/// verifier.
///
/// ```
/// use understory_auth::PendingAuthorization;
/// use understory_auth::serde_json;
///
/// // As it comes back from the session store.
/// let stored = r#"{
///     "state": "c2Vzc2lvbi1ib3VuZC1zdGF0ZS1vZi00My1jaGFyYWN0",
///     "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
///     "redirect_uri": "https://example.com/oauth/callback",
///     "scopes": ["openid", "offline", "booking.read"],
///     "created_at": 1767225600
/// }"#;
/// let pending: PendingAuthorization = serde_json::from_str(stored)?;
/// assert_eq!(pending.redirect_uri(), "https://example.com/oauth/callback");
/// assert_eq!(pending.scopes(), ["openid", "offline", "booking.read"]);
///
/// let shown = format!("{pending:?}");
/// assert!(!shown.contains("dBjftJeZ4CVP")); // the verifier
/// assert!(!shown.contains("c2Vzc2lvbi1i")); // the state
///
/// // Stored again as it was read.
/// let again: PendingAuthorization = serde_json::from_str(&serde_json::to_string(&pending)?)?;
/// assert_eq!(again.created_at(), pending.created_at());
///
/// // A verifier that PKCE would refuse never makes a pending authorization.
/// assert!(serde_json::from_str::<PendingAuthorization>(&stored.replace("dBjftJeZ4CVP-", "")).is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone)]
pub struct PendingAuthorization {
    state: SecretString,
    verifier: SecretString,
    redirect_uri: String,
    scopes: Vec<String>,
    /// Unix seconds.
    created_at: u64,
}

impl PendingAuthorization {
    /// A pending authorization started at `now`.
    pub(crate) fn new(
        state: SecretString,
        verifier: SecretString,
        redirect_uri: String,
        scopes: Vec<String>,
        now: SystemTime,
    ) -> Self {
        PendingAuthorization {
            state,
            verifier,
            redirect_uri,
            scopes,
            created_at: unix_seconds(now),
        }
    }

    /// The exact `redirect_uri` the authorize URL carried, which the code exchange must
    /// send again.
    ///
    /// ```
    /// # let pending: understory_auth::PendingAuthorization = understory_auth::serde_json::from_str(
    /// #     r#"{"state": "c2Vzc2lvbi1ib3VuZC1zdGF0ZS1vZi00My1jaGFyYWN0",
    /// #     "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    /// #     "redirect_uri": "https://example.com/oauth/callback", "scopes": ["offline"],
    /// #     "created_at": 1767225600}"#)?;
    /// assert_eq!(pending.redirect_uri(), "https://example.com/oauth/callback");
    /// # Ok::<(), understory_auth::serde_json::Error>(())
    /// ```
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The scopes the authorize URL asked for (the company may grant fewer).
    ///
    /// ```
    /// # let pending: understory_auth::PendingAuthorization = understory_auth::serde_json::from_str(
    /// #     r#"{"state": "c2Vzc2lvbi1ib3VuZC1zdGF0ZS1vZi00My1jaGFyYWN0",
    /// #     "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    /// #     "redirect_uri": "https://example.com/oauth/callback", "scopes": ["offline"],
    /// #     "created_at": 1767225600}"#)?;
    /// assert!(pending.scopes().iter().any(|scope| scope == "offline"));
    /// # Ok::<(), understory_auth::serde_json::Error>(())
    /// ```
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// When the authorization was started (to the second).
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// # let pending: understory_auth::PendingAuthorization = understory_auth::serde_json::from_str(
    /// #     r#"{"state": "c2Vzc2lvbi1ib3VuZC1zdGF0ZS1vZi00My1jaGFyYWN0",
    /// #     "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
    /// #     "redirect_uri": "https://example.com/oauth/callback", "scopes": ["offline"],
    /// #     "created_at": 1767225600}"#)?;
    /// assert_eq!(pending.created_at(), UNIX_EPOCH + Duration::from_secs(1_767_225_600));
    /// # Ok::<(), understory_auth::serde_json::Error>(())
    /// ```
    pub fn created_at(&self) -> SystemTime {
        // In range: at most `MAX_CREATED_AT`, checked when deserialized.
        UNIX_EPOCH
            .checked_add(Duration::from_secs(self.created_at))
            .unwrap_or(UNIX_EPOCH)
    }

    /// The `state` the callback must carry back.
    pub(crate) fn state(&self) -> &SecretString {
        &self.state
    }

    /// The PKCE verifier, for the code exchange's `code_verifier`.
    pub(crate) fn verifier(&self) -> &SecretString {
        &self.verifier
    }

    /// Refuses this authorization at `now` if it was started more than `lifetime` ago, or
    /// more than [`MAX_CLOCK_SKEW`] in the future.
    pub(crate) fn check_age(&self, now: SystemTime, lifetime: Duration) -> Result<(), Error> {
        let now = unix_seconds(now);
        let expired = |in_the_future| Error::AuthorizationExpired {
            lifetime,
            in_the_future,
        };
        match now.checked_sub(self.created_at) {
            Some(age) if age > lifetime.as_secs() => Err(expired(false)),
            Some(_) => Ok(()),
            None if self.created_at.saturating_sub(now) > MAX_CLOCK_SKEW.as_secs() => {
                Err(expired(true))
            }
            None => Ok(()),
        }
    }
}

/// Seconds since the Unix epoch (0 for a clock set before it).
fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("state", &"[REDACTED]")
            .field("code_verifier", &"[REDACTED]")
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// The serialized form, borrowed (no copy of the secrets is made to serialize them).
#[derive(Serialize)]
struct Fields<'a> {
    state: &'a str,
    code_verifier: &'a str,
    redirect_uri: &'a str,
    scopes: &'a [String],
    created_at: u64,
}

/// The serialized form, read.
#[derive(Deserialize)]
struct OwnedFields {
    state: String,
    code_verifier: String,
    redirect_uri: String,
    scopes: Vec<String>,
    created_at: u64,
}

impl Serialize for PendingAuthorization {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Fields {
            state: self.state.expose_secret(),
            code_verifier: self.verifier.expose_secret(),
            redirect_uri: &self.redirect_uri,
            scopes: &self.scopes,
            created_at: self.created_at,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PendingAuthorization {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let fields = OwnedFields::deserialize(deserializer)?;
        let state_ok = (MIN_STATE_LEN..=MAX_STATE_LEN).contains(&fields.state.len())
            && is_url_safe(&fields.state);
        if !state_ok {
            return Err(D::Error::custom(
                "pending authorization: state must be 43 to 128 base64url characters",
            ));
        }
        if !is_valid_verifier(&fields.code_verifier) {
            return Err(D::Error::custom(
                "pending authorization: code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
            ));
        }
        if url::Url::parse(&fields.redirect_uri).is_err() {
            return Err(D::Error::custom(
                "pending authorization: redirect_uri must be an absolute URL",
            ));
        }
        if fields.created_at > MAX_CREATED_AT {
            return Err(D::Error::custom(
                "pending authorization: created_at must be Unix seconds before the year 10000",
            ));
        }
        Ok(PendingAuthorization {
            state: SecretString::from(fields.state),
            verifier: SecretString::from(fields.code_verifier),
            redirect_uri: fields.redirect_uri,
            scopes: fields.scopes,
            created_at: fields.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "c2Vzc2lvbi1ib3VuZC1zdGF0ZS1vZi00My1jaGFyYWN0";
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    fn started_at(at: SystemTime) -> PendingAuthorization {
        PendingAuthorization::new(
            SecretString::from(STATE),
            SecretString::from(VERIFIER),
            "https://example.com/oauth/callback".to_owned(),
            vec!["openid".to_owned(), "offline".to_owned()],
            at,
        )
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn debug_hides_state_and_verifier() {
        let shown = format!("{:?}", started_at(at(1_000)));
        assert!(!shown.contains(STATE), "{shown}");
        assert!(!shown.contains(VERIFIER), "{shown}");
        assert!(
            shown.contains("https://example.com/oauth/callback"),
            "{shown}"
        );
        assert!(shown.contains("offline"), "{shown}");
    }

    #[test]
    fn serde_round_trip_keeps_everything() {
        let pending = started_at(at(1_767_225_600));
        let json = serde_json::to_string(&pending).expect("serializes");
        let back: PendingAuthorization = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back.state().expose_secret(), STATE);
        assert_eq!(back.verifier().expose_secret(), VERIFIER);
        assert_eq!(back.redirect_uri(), pending.redirect_uri());
        assert_eq!(back.scopes(), pending.scopes());
        assert_eq!(back.created_at(), at(1_767_225_600));
    }

    #[test]
    fn deserializing_checks_state_verifier_and_redirect_uri() {
        let json = serde_json::to_string(&started_at(at(1_000))).expect("serializes");
        for (from, to) in [
            (STATE, ""),
            (STATE, "short"),
            (STATE, &format!("{STATE}+")[..]),
            (VERIFIER, "too-short"),
            (VERIFIER, &format!("{}!", &VERIFIER[1..])[..]),
            ("https://example.com/oauth/callback", "/oauth/callback"),
            ("\"created_at\":1000", "\"created_at\":18446744073709551615"),
        ] {
            assert_ne!(json.replace(from, to), json, "{from}");
            let changed = json.replace(from, to);
            let err = serde_json::from_str::<PendingAuthorization>(&changed)
                .expect_err("refused")
                .to_string();
            assert!(!err.contains(STATE) && !err.contains(VERIFIER), "{err}");
        }
    }

    #[test]
    fn age_is_checked_against_the_lifetime_and_the_clock_skew() {
        let lifetime = Duration::from_secs(1_800);
        let pending = started_at(at(10_000));
        assert!(pending.check_age(at(10_000), lifetime).is_ok());
        assert!(pending.check_age(at(11_800), lifetime).is_ok());
        let expired = pending
            .check_age(at(11_801), lifetime)
            .expect_err("expired");
        assert!(matches!(
            expired,
            Error::AuthorizationExpired {
                in_the_future: false,
                ..
            }
        ));
        // A little in the future: another process's clock.
        assert!(pending.check_age(at(9_940), lifetime).is_ok());
        let future = pending.check_age(at(9_939), lifetime).expect_err("future");
        assert!(matches!(
            future,
            Error::AuthorizationExpired {
                in_the_future: true,
                ..
            }
        ));
    }

    #[test]
    fn a_clock_before_the_epoch_counts_as_the_epoch() {
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
