//! [`Credentials`]: an Understory integration key (client id and secret), the scopes to ask
//! for, and how the secret is presented to the auth server.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use crate::Error;

/// Environment variable holding the client id, read by [`Credentials::from_env`].
pub const ENV_CLIENT_ID: &str = "UNDERSTORY_CLIENT_ID";
/// Environment variable holding the client secret, read by [`Credentials::from_env`].
pub const ENV_CLIENT_SECRET: &str = "UNDERSTORY_CLIENT_SECRET";
/// Optional environment variable: the scopes to request, separated by spaces and/or commas.
pub const ENV_SCOPES: &str = "UNDERSTORY_SCOPES";

/// How the client id and secret are sent (RFC 6749 section 2.3.1); Understory's keys use
/// [`ClientSecretPost`](Self::ClientSecretPost), the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ClientAuthMethod {
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    #[default]
    ClientSecretPost,
    /// HTTP Basic authentication with the form-urlencoded id and secret (`client_secret_basic`).
    ClientSecretBasic,
}

/// An integration key: client id, secret (a [`SecretString`], never in `Debug`), the scopes
/// to request and how to send them.
///
/// ```
/// use understory_auth::{ClientAuthMethod, Credentials};
///
/// let creds = Credentials::new("my-client-id", "my-secret").with_scopes(["openid", "marketing.read"]);
/// assert_eq!(creds.client_id(), "my-client-id");
/// assert_eq!(creds.scopes(), ["openid", "marketing.read"]);
/// assert_eq!(creds.auth_method(), ClientAuthMethod::ClientSecretPost);
/// assert!(!format!("{creds:?}").contains("my-secret"));
///
/// let basic = creds.with_auth_method(ClientAuthMethod::ClientSecretBasic);
/// assert_eq!(basic.auth_method(), ClientAuthMethod::ClientSecretBasic);
/// ```
#[derive(Clone)]
pub struct Credentials {
    client_id: String,
    client_secret: SecretString,
    scopes: Vec<String>,
    auth_method: ClientAuthMethod,
    /// Read by [`Credentials::from_env`]: errors then name the variables.
    from_env: bool,
}

impl Credentials {
    /// Credentials from a client id and secret, requesting no scopes.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Credentials {
            client_id: client_id.into(),
            client_secret: SecretString::from(client_secret.into()),
            scopes: Vec::new(),
            auth_method: ClientAuthMethod::default(),
            from_env: false,
        }
    }

    /// Reads [`ENV_CLIENT_ID`], [`ENV_CLIENT_SECRET`] and the optional [`ENV_SCOPES`];
    /// [`Error::MissingEnv`] names a variable missing or empty.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Credentials::from_env`] over any lookup function, for tests.
    pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let required = |var: &'static str, what: &'static str| {
            lookup(var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or(Error::MissingEnv { var, what })
        };
        let client_id = required(ENV_CLIENT_ID, "client id")?;
        let client_secret = required(ENV_CLIENT_SECRET, "secret key")?;
        let scopes = lookup(ENV_SCOPES).unwrap_or_default();
        let scopes = scopes.split(|c: char| c == ',' || c.is_whitespace());
        let mut credentials = Credentials::new(client_id, client_secret).with_scopes(scopes);
        credentials.from_env = true;
        Ok(credentials)
    }

    pub(crate) fn is_from_env(&self) -> bool {
        self.from_env
    }

    /// Replaces the scopes to request (sent space separated; none means no `scope` field).
    pub fn with_scopes<I>(mut self, scopes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.scopes = scopes
            .into_iter()
            .map(Into::into)
            .filter(|s: &String| !s.is_empty())
            .collect();
        self
    }

    /// Chooses how the secret is sent; the default is [`ClientAuthMethod::ClientSecretPost`].
    pub fn with_auth_method(mut self, method: ClientAuthMethod) -> Self {
        self.auth_method = method;
        self
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The scopes that will be requested.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// How the secret is sent.
    pub fn auth_method(&self) -> ClientAuthMethod {
        self.auth_method
    }

    /// The secret, for the token request only.
    pub(crate) fn client_secret(&self) -> &str {
        self.client_secret.expose_secret()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("scopes", &self.scopes)
            .field("auth_method", &self.auth_method)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn from_env_reads_all_three() {
        let creds = Credentials::from_lookup(env(&[
            (ENV_CLIENT_ID, "id"),
            (ENV_CLIENT_SECRET, "s3cr~t"),
            (ENV_SCOPES, " openid  marketing.read "),
        ]))
        .unwrap();
        assert_eq!(creds.client_id(), "id");
        assert_eq!(creds.client_secret(), "s3cr~t");
        assert_eq!(creds.scopes(), ["openid", "marketing.read"]);
    }

    #[test]
    fn scopes_may_be_separated_by_commas_and_spaces() {
        for scopes in [
            "openid, booking.read",
            "openid,booking.read",
            " openid ,\tbooking.read, ",
            "openid booking.read",
        ] {
            let creds = Credentials::from_lookup(env(&[
                (ENV_CLIENT_ID, "id"),
                (ENV_CLIENT_SECRET, "s"),
                (ENV_SCOPES, scopes),
            ]))
            .unwrap();
            assert_eq!(creds.scopes(), ["openid", "booking.read"], "{scopes:?}");
        }
    }

    #[test]
    fn from_env_names_the_missing_variable() {
        let err = Credentials::from_lookup(env(&[(ENV_CLIENT_ID, "id")])).unwrap_err();
        assert!(matches!(
            err,
            Error::MissingEnv {
                var: ENV_CLIENT_SECRET,
                ..
            }
        ));
        assert!(err.to_string().contains(ENV_CLIENT_SECRET));
        let err = Credentials::from_lookup(env(&[(ENV_CLIENT_ID, "  "), (ENV_CLIENT_SECRET, "s")]))
            .unwrap_err();
        assert!(matches!(
            err,
            Error::MissingEnv {
                var: ENV_CLIENT_ID,
                ..
            }
        ));
    }

    #[test]
    fn debug_hides_the_secret() {
        let creds = Credentials::new("id", "very-secret-value");
        let debug = format!("{creds:?} {creds:#?}");
        assert!(!debug.contains("very-secret-value"));
        assert!(debug.contains("REDACTED"));
    }
}
