//! [`RefreshToken`]: a connection's long-lived credential.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

/// A refresh token: the credential that gets a connection new access tokens, for weeks
/// (Hydra's last 720 hours after their last use). Understory's server rotates it on every
/// refresh and revokes the whole grant if an old one is presented again, so it is presented
/// at most once, and the new one is saved before the new access token is used.
///
/// Its `Debug` shows `[REDACTED]`; it has no `Display` and no `Serialize`: a
/// [`GrantStore`](crate::GrantStore) decides how to keep it (a durable store encrypts it).
///
/// ```
/// use understory_auth::RefreshToken;
///
/// let token = RefreshToken::new("ory_rt_example");
/// assert_eq!(format!("{token:?}"), "RefreshToken([REDACTED])");
/// assert_eq!(token.expose_secret(), "ory_rt_example"); // for a store to encrypt
/// ```
#[derive(Clone)]
pub struct RefreshToken(SecretString);

impl RefreshToken {
    /// A refresh token, as the token endpoint issued it or a store read it back.
    ///
    /// ```
    /// let token = understory_auth::RefreshToken::new(String::from("ory_rt_example"));
    /// # let _ = token;
    /// ```
    pub fn new(token: impl Into<String>) -> Self {
        RefreshToken(SecretString::from(token.into()))
    }

    /// The token itself: for a store to encrypt and keep, and for the token request. Never
    /// log it.
    ///
    /// ```
    /// let token = understory_auth::RefreshToken::new("ory_rt_example");
    /// assert!(token.expose_secret().starts_with("ory_rt_"));
    /// ```
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken([REDACTED])")
    }
}
