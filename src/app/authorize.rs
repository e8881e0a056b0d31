//! The authorization step: the URL the user's browser is sent to, with a fresh `state` and
//! PKCE pair, and the [`PendingAuthorization`] the app keeps until the callback. Pure: no
//! request is made here.

use std::fmt;
use std::time::SystemTime;

use secrecy::ExposeSecret;
use url::Url;

use super::pending::PendingAuthorization;
use super::pkce::{CHALLENGE_METHOD, challenge, new_verifier};
use super::random::random_url_safe;
use crate::redact::form_encode;

/// What an authorize URL is made of, prepared by the app's builder.
pub(crate) struct AuthorizeConfig {
    /// The authorize endpoint (`https://api.auth.understory.io/oauth2/auth`).
    pub(crate) authorize_url: Url,
    pub(crate) client_id: String,
    /// Sent exactly as registered with Understory, here and in the code exchange.
    pub(crate) redirect_uri: String,
    pub(crate) scopes: Vec<String>,
    /// Left out of the URL when empty.
    pub(crate) audience: String,
}

/// A started authorization: send the user's browser to [`url`](Self::url) and keep
/// [`pending`](Self::pending) for the callback (in the server-side session or an encrypted
/// cookie, see [`PendingAuthorization`]).
///
/// Every start has its own `state` and PKCE verifier: start a new one for each click on
/// "Connect Understory", never hand the same one to two browsers.
///
/// ```
/// use understory_auth::{AuthorizationStart, PendingAuthorization};
///
/// /// The "Connect Understory" route: the pending authorization goes to the session, the
/// /// browser to Understory (`303 See Other` with this `Location`).
/// fn connect(start: AuthorizationStart, session: &mut Option<PendingAuthorization>) -> (u16, String) {
///     *session = Some(start.pending);
///     (303, start.url.as_str().to_owned())
/// }
/// # let _ = connect;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthorizationStart {
    /// Where to send the user's browser.
    pub url: AuthorizeUrl,
    /// What the callback is checked against and the code exchange needs.
    pub pending: PendingAuthorization,
}

/// The authorize URL of one authorization: Understory's authorize endpoint with
/// `response_type=code`, `client_id`, the exact `redirect_uri`, `scope`, `state`, the PKCE
/// `code_challenge` (`code_challenge_method=S256`) and `audience`.
///
/// It has no `Display`: it carries the authorization's `state`, which must not end up in
/// logs (a log line with `{url}` would write it), so the URL is taken explicitly with
/// [`as_str`](Self::as_str) where it is needed, for the redirect's `Location` header. Its
/// `Debug` shows the URL with `state` replaced by `[REDACTED]` (the challenge is shown: it
/// is a hash, and useless without the verifier).
///
/// ```
/// use understory_auth::AuthorizeUrl;
///
/// /// The redirect's `Location` header.
/// fn location(url: &AuthorizeUrl) -> understory_auth::http::HeaderValue {
///     understory_auth::http::HeaderValue::from_str(url.as_str()).expect("a URL is a valid header")
/// }
/// # let _ = location;
/// ```
#[derive(Clone)]
pub struct AuthorizeUrl(Url);

impl AuthorizeUrl {
    /// The URL, for the redirect's `Location` header (or a link).
    ///
    /// ```
    /// fn redirect(url: &understory_auth::AuthorizeUrl) -> String {
    ///     format!("<a href=\"{}\">Connect Understory</a>", url.as_str())
    /// }
    /// # let _ = redirect;
    /// ```
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The URL as a [`Url`], to read its parts.
    ///
    /// ```
    /// fn asks_for_a_code(url: &understory_auth::AuthorizeUrl) -> bool {
    ///     url.as_url().query_pairs().any(|(name, value)| name == "response_type" && value == "code")
    /// }
    /// # let _ = asks_for_a_code;
    /// ```
    pub fn as_url(&self) -> &Url {
        &self.0
    }
}

impl fmt::Debug for AuthorizeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0.as_str();
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut shown = String::with_capacity(url.len());
        shown.push_str(base);
        for (at, pair) in query.split('&').enumerate() {
            shown.push(if at == 0 { '?' } else { '&' });
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            if name == "state" {
                shown.push_str("state=[REDACTED]");
            } else {
                shown.push_str(pair);
            }
        }
        f.debug_tuple("AuthorizeUrl").field(&shown).finish()
    }
}

/// A new authorization at `now`: a fresh `state` and PKCE verifier (32 bytes each from the
/// OS CSPRNG), the authorize URL, and the pending authorization to keep.
///
/// The query is form-urlencoded with `~` kept literal, as the token requests are (Understory's
/// auth server refuses `%7E`); parameters already in `authorize_url`'s query are kept first;
/// an empty scope list or audience is left out.
///
/// # Panics
///
/// If the operating system cannot provide random bytes: no weaker source is used.
pub(crate) fn start(config: &AuthorizeConfig, now: SystemTime) -> AuthorizationStart {
    let state = random_url_safe();
    let verifier = new_verifier();
    let code_challenge = challenge(&verifier);
    let scope = config.scopes.join(" ");
    let params = [
        ("response_type", "code"),
        ("client_id", config.client_id.as_str()),
        ("redirect_uri", config.redirect_uri.as_str()),
        ("scope", scope.as_str()),
        ("state", state.expose_secret()),
        ("code_challenge", code_challenge.as_str()),
        ("code_challenge_method", CHALLENGE_METHOD),
        ("audience", config.audience.as_str()),
    ];
    let ours = params
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={}", form_encode(value)))
        .collect::<Vec<_>>()
        .join("&");
    let mut url = config.authorize_url.clone();
    let query = match url.query() {
        Some(existing) if !existing.is_empty() => format!("{existing}&{ours}"),
        _ => ours,
    };
    url.set_query(Some(&query));
    let pending = PendingAuthorization::new(
        state,
        verifier,
        config.redirect_uri.clone(),
        config.scopes.clone(),
        now,
    );
    AuthorizationStart {
        url: AuthorizeUrl(url),
        pending,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::app::random::is_url_safe;

    pub(crate) fn config() -> AuthorizeConfig {
        AuthorizeConfig {
            authorize_url: Url::parse("https://api.auth.understory.io/oauth2/auth").expect("a URL"),
            client_id: "my-app".to_owned(),
            redirect_uri: "https://example.com/oauth/callback?env=prod".to_owned(),
            scopes: vec![
                "openid".to_owned(),
                "offline".to_owned(),
                "booking.read".to_owned(),
            ],
            audience: "https://api.understory.io".to_owned(),
        }
    }

    fn params(url: &AuthorizeUrl) -> HashMap<String, String> {
        let pairs: Vec<(String, String)> = url.as_url().query_pairs().into_owned().collect();
        let map: HashMap<String, String> = pairs.iter().cloned().collect();
        assert_eq!(map.len(), pairs.len(), "no parameter twice: {pairs:?}");
        map
    }

    #[test]
    fn the_url_has_every_parameter_and_the_exact_redirect_uri() {
        let start = start(&config(), UNIX_EPOCH + Duration::from_secs(1_000));
        let url = start.url.as_url();
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.host_str(), Some("api.auth.understory.io"));
        assert_eq!(url.path(), "/oauth2/auth");
        let params = params(&start.url);
        assert_eq!(params.len(), 8, "{params:?}");
        assert_eq!(params["response_type"], "code");
        assert_eq!(params["client_id"], "my-app");
        assert_eq!(
            params["redirect_uri"],
            "https://example.com/oauth/callback?env=prod"
        );
        assert_eq!(params["scope"], "openid offline booking.read");
        assert_eq!(params["code_challenge_method"], "S256");
        assert_eq!(params["audience"], "https://api.understory.io");
        assert_eq!(params["state"], start.pending.state().expose_secret());
        assert_eq!(
            params["code_challenge"],
            challenge(start.pending.verifier())
        );
        assert_eq!(
            start.pending.redirect_uri(),
            "https://example.com/oauth/callback?env=prod"
        );
        assert_eq!(start.pending.scopes(), config().scopes);
        assert_eq!(
            start.pending.created_at(),
            UNIX_EPOCH + Duration::from_secs(1_000)
        );
    }

    #[test]
    fn state_and_verifier_are_long_random_and_url_safe() {
        let start = start(&config(), SystemTime::now());
        for value in [
            start.pending.state().expose_secret(),
            start.pending.verifier().expose_secret(),
        ] {
            assert_eq!(value.len(), 43, "{value}");
            assert!(is_url_safe(value), "{value}");
        }
        assert_ne!(
            start.pending.state().expose_secret(),
            start.pending.verifier().expose_secret()
        );
    }

    #[test]
    fn two_starts_differ() {
        let (a, b) = (
            start(&config(), SystemTime::now()),
            start(&config(), SystemTime::now()),
        );
        assert_ne!(a.url.as_str(), b.url.as_str());
        assert_ne!(
            a.pending.state().expose_secret(),
            b.pending.state().expose_secret()
        );
        assert_ne!(
            a.pending.verifier().expose_secret(),
            b.pending.verifier().expose_secret()
        );
    }

    #[test]
    fn debug_hides_state_and_verifier() {
        let start = start(&config(), SystemTime::now());
        let state = start.pending.state().expose_secret().to_owned();
        let verifier = start.pending.verifier().expose_secret().to_owned();
        for shown in [
            format!("{:?}", start.url),
            format!("{start:?}"),
            format!("{start:#?}"),
        ] {
            assert!(!shown.contains(&state), "{shown}");
            assert!(!shown.contains(&verifier), "{shown}");
            assert!(shown.contains("state=[REDACTED]"), "{shown}");
            assert!(shown.contains("code_challenge_method=S256"), "{shown}");
        }
    }

    #[test]
    fn tilde_stays_literal_and_an_existing_query_is_kept() {
        let mut config = config();
        config.authorize_url =
            Url::parse("https://auth.example.com/oauth2/auth?tenant=eu").expect("a URL");
        config.redirect_uri = "https://example.com/~app/callback".to_owned();
        config.audience = String::new();
        let start = start(&config, SystemTime::now());
        assert!(
            start
                .url
                .as_str()
                .starts_with("https://auth.example.com/oauth2/auth?tenant=eu&response_type=code&"),
            "{}",
            start.url.as_str()
        );
        assert!(
            start
                .url
                .as_str()
                .contains("redirect_uri=https%3A%2F%2Fexample.com%2F~app%2Fcallback&"),
            "{}",
            start.url.as_str()
        );
        let params = params(&start.url);
        assert_eq!(params["tenant"], "eu");
        assert!(!params.contains_key("audience"), "{params:?}");
    }
}
