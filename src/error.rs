//! [`Error`]: everything that can go wrong while getting a token, and what to do about it.
//! Server text is kept only as `redact.rs` cleaned it; errors are [`Clone`] because
//! one failed fetch answers every caller waiting for it.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

#[cfg(feature = "app")]
use crate::app::GrantStoreError;
use crate::redact::REDACTED;

/// Why a token could not be obtained, or why the configuration was refused (see
/// [Errors](crate#errors)). The enum and its variants are `#[non_exhaustive]`: match with a
/// wildcard arm and `..`.
///
/// ```
/// use std::time::Duration;
/// use understory_auth::{Credentials, Error, UnderstoryAuth};
///
/// fn advice(err: &Error) -> String {
///     match err {
///         Error::Config { reason, .. } => format!("fix the configuration: {reason}"),
///         err if err.is_rate_limited() => "back off for at least a minute".to_owned(),
///         err if err.is_transient() => {
///             let wait = err.retry_after().unwrap_or(Duration::from_secs(1));
///             format!("retry in {wait:?}")
///         }
///         err => format!("fix the key: {:?}", err.oauth_code()),
///     }
/// }
/// let err = UnderstoryAuth::builder(Credentials::new("id", "")).build().unwrap_err();
/// assert!(!err.is_transient());
/// assert_eq!((err.status(), err.oauth_code(), err.retry_after()), (None, None, None));
/// assert!(advice(&err).starts_with("fix the configuration"));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder or the credentials were given something unusable.
    #[error("invalid understory-auth configuration: {reason}")]
    #[non_exhaustive]
    Config {
        /// What was wrong and how to fix it.
        reason: String,
    },

    /// A required environment variable is missing or empty.
    #[error(
        "environment variable {var} is not set (or empty): set it to your Understory integration key's {what}, from Backoffice > Company settings > Integrations"
    )]
    #[non_exhaustive]
    MissingEnv {
        /// The variable's name.
        var: &'static str,
        /// What it should hold.
        what: &'static str,
    },

    /// The auth server answered with an OAuth2 error (RFC 6749 section 5.2).
    #[error("{}", describe_oauth(code, description.as_deref(), *status, *key_from_env))]
    #[non_exhaustive]
    OAuth {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// The `error` code, e.g. `invalid_client` (RFC 6749's syntax, at most 64 characters).
        code: String,
        /// The server's `error_description`: at most 300 characters, secrets `[REDACTED]`.
        description: Option<String>,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
        /// Whether the key came from [`Credentials::from_env`](crate::Credentials::from_env)
        /// (the advice then names its variables).
        key_from_env: bool,
    },

    /// An error status without an OAuth2 error body (often a proxy in front of the server).
    #[error("{}", describe_status(*status, retry_after.as_ref()))]
    #[non_exhaustive]
    Status {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },

    /// The auth server said the request succeeded, but its answer is not a usable token.
    #[error(
        "the auth server's token answer (HTTP {status}) is unusable: {reason}; check that token_url points at an OAuth2 token endpoint"
    )]
    #[non_exhaustive]
    InvalidResponse {
        /// The HTTP status of the answer.
        status: StatusCode,
        /// What is wrong with it (never the token itself).
        reason: String,
    },

    /// The auth server issued a token of a type other than `bearer`.
    #[error(
        "the auth server issued a token of type {token_type}, but only bearer tokens can be used; check that token_url is Understory's token endpoint"
    )]
    #[non_exhaustive]
    UnsupportedTokenType {
        /// The type if it is a registered one (`mac`, `DPoP`, ...), else a fixed text.
        token_type: String,
    },

    /// The token request took longer than its timeout.
    #[error(
        "the token request timed out after {after:?}; the auth server is slow or unreachable, it will be retried"
    )]
    #[non_exhaustive]
    Timeout {
        /// The timeout that ran out.
        after: Duration,
    },

    /// The token request could not be sent or its answer not read (DNS, connect, proxy,
    /// TLS); the message names the cause, so [`source`](std::error::Error::source) is `None`.
    #[error(
        "{}",
        describe_network(error, proxy.as_deref(), *proxy_from_env, *next_attempt_in, *failed_ago)
    )]
    #[non_exhaustive]
    Network {
        /// The transport error (its URL removed).
        error: Arc<reqwest::Error>,
        /// The proxy the request went through, as `scheme://host:port`, if any.
        proxy: Option<String>,
        /// Whether that proxy came from the environment (not `configure_token_client`).
        proxy_from_env: bool,
        /// How long after this error was made the next token request will be made (see
        /// [Cache behaviour](crate#cache-behaviour)).
        next_attempt_in: Option<Duration>,
        /// For a remembered failure handed out again: how long ago the request failed.
        failed_ago: Option<Duration>,
    },

    /// The auth server is rate limiting this key (HTTP 429); see
    /// [Cache behaviour](crate#cache-behaviour).
    #[error(
        "the auth server is rate limiting this key's token requests (HTTP 429); the next attempt will be made in {}s, until then requests that need a new token fail at once",
        next_attempt_in.as_secs()
    )]
    #[non_exhaustive]
    RateLimited {
        /// How long after this error was made the next token request will be made.
        next_attempt_in: Duration,
        /// The auth server's answer.
        #[source]
        cause: Box<Error>,
    },

    /// The token fetch stopped before it finished (its runtime shut down, or it panicked).
    #[error("the token fetch was interrupted before it finished ({reason}); it will be retried")]
    #[non_exhaustive]
    Interrupted {
        /// What happened.
        reason: &'static str,
    },

    /// The authorization callback's `state` is missing or not the pending authorization's.
    #[cfg(feature = "app")]
    #[error(
        "the authorization callback's state {problem}: the callback does not belong to this pending authorization (forged, replayed, or another browser session's) and no code was exchanged; restart the authorization, and never reuse a pending authorization"
    )]
    #[non_exhaustive]
    AuthorizationState {
        /// `"is missing"` or `"does not match"`.
        problem: &'static str,
    },

    /// Understory redirected back with an error instead of a code: `access_denied` when the
    /// user declined. Nothing was granted.
    #[cfg(feature = "app")]
    #[error("{}", describe_declined(error, description.as_deref()))]
    #[non_exhaustive]
    AuthorizationDeclined {
        /// The `error` code (RFC 6749 section 4.1.2.1's syntax only, e.g. `access_denied`).
        error: String,
        /// The server's `error_description`: at most 300 characters, secrets `[REDACTED]`.
        description: Option<String>,
    },

    /// The pending authorization is older than the authorization lifetime (or was started
    /// in the future); refused before any request.
    #[cfg(feature = "app")]
    #[error(
        "the pending authorization was started {}; start a new authorization",
        if *in_the_future { "in the future (the clocks of the processes disagree)".to_owned() } else { format!("more than {} ago, the authorization lifetime", seconds(*lifetime, false)) }
    )]
    #[non_exhaustive]
    AuthorizationExpired {
        /// The authorization lifetime it exceeded.
        lifetime: Duration,
        /// Whether its start lies in the future instead (more than a minute).
        in_the_future: bool,
    },

    /// The authorization callback's query string is malformed. No code was exchanged.
    #[cfg(feature = "app")]
    #[error(
        "the authorization callback's query string is malformed: {reason}; pass the query string exactly as the browser brought it, and start a new authorization"
    )]
    #[non_exhaustive]
    InvalidCallback {
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The connection's grant is lost: the company must authorize the app again.
    #[cfg(feature = "app")]
    #[error(
        "the Understory connection {connection:?} must be authorized again (its consent was revoked, its refresh token expired unused or was presented twice); no token request is made for it until the company completes a new authorization"
    )]
    #[non_exhaustive]
    NeedsReauthorization {
        /// The connection's key.
        connection: String,
    },

    /// No company is connected under this key.
    #[cfg(feature = "app")]
    #[error(
        "no Understory company is connected as {connection:?}: complete an authorization for it first, or check the key; nothing was sent"
    )]
    #[non_exhaustive]
    UnknownConnection {
        /// The key asked for.
        connection: String,
    },

    /// A request went through the app without naming its connection, so it was not sent.
    #[cfg(feature = "app")]
    #[error(
        "the request names no Understory connection and was not sent: add the company's Connection to its extensions"
    )]
    #[non_exhaustive]
    MissingConnection,

    /// The grant store failed; [`GrantStoreError::is_transient`](crate::GrantStoreError::is_transient)
    /// says whether retrying may help.
    #[cfg(feature = "app")]
    #[error(transparent)]
    #[non_exhaustive]
    GrantStore(#[from] GrantStoreError),
}

impl Error {
    /// Whether trying again later may succeed unchanged (timeouts, network errors, 5xx,
    /// 429, garbled answers; not rejected keys or scopes, configuration, a TLS setup).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Config { .. }
            | Error::MissingEnv { .. }
            | Error::UnsupportedTokenType { .. } => false,
            Error::OAuth { status, code, .. } => {
                matches!(code.as_str(), "server_error" | "temporarily_unavailable")
                    || transient_status(*status)
            }
            Error::Status { status, .. } => transient_status(*status),
            Error::Network { error, .. } => !is_tls_setup_failure(&**error),
            Error::InvalidResponse { .. }
            | Error::RateLimited { .. }
            | Error::Timeout { .. }
            | Error::Interrupted { .. } => true,
            #[cfg(feature = "app")]
            Error::AuthorizationDeclined { error, .. } => {
                matches!(error.as_str(), "server_error" | "temporarily_unavailable")
            }
            #[cfg(feature = "app")]
            Error::GrantStore(error) => error.is_transient(),
            #[cfg(feature = "app")]
            Error::AuthorizationState { .. }
            | Error::AuthorizationExpired { .. }
            | Error::InvalidCallback { .. }
            | Error::NeedsReauthorization { .. }
            | Error::UnknownConnection { .. }
            | Error::MissingConnection => false,
        }
    }

    /// Whether the auth server answered HTTP 429 (rate limiting this key); also transient.
    pub fn is_rate_limited(&self) -> bool {
        self.status() == Some(StatusCode::TOO_MANY_REQUESTS)
    }

    /// The server's `Retry-After` (on 429 and 503 answers only, whole seconds, at most 5
    /// minutes), if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::OAuth { retry_after, .. } | Error::Status { retry_after, .. } => *retry_after,
            Error::RateLimited { cause, .. } => cause.retry_after(),
            _ => None,
        }
    }

    /// The auth server's OAuth2 error code (`invalid_client`, `invalid_scope`, ...), if any.
    pub fn oauth_code(&self) -> Option<&str> {
        match self {
            Error::OAuth { code, .. } => Some(code),
            #[cfg(feature = "app")]
            Error::AuthorizationDeclined { error, .. } => Some(error),
            Error::RateLimited { cause, .. } => cause.oauth_code(),
            _ => None,
        }
    }

    /// The HTTP status the auth server answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::OAuth { status, .. }
            | Error::Status { status, .. }
            | Error::InvalidResponse { status, .. } => Some(*status),
            Error::RateLimited { cause, .. } => cause.status(),
            _ => None,
        }
    }

    /// The crate's [`Error`] in `error` or its causes (`reqwest_middleware::Error`,
    /// `RetryError`, `&*box_error`); `None` if the API request itself failed.
    ///
    /// ```
    /// # #[cfg(all(feature = "test-util", feature = "middleware"))]
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use understory_auth::{Error, reqwest, reqwest_middleware, testing::SandboxServer};
    ///
    /// let sandbox = SandboxServer::start().await?;
    /// let creds = understory_auth::Credentials::new(sandbox.client_id(), "wrong secret");
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(sandbox.auth_builder(creds).build()?)
    ///     .build();
    ///
    /// let err = client.get(format!("{}/v1/me", sandbox.api_base())).send().await.unwrap_err();
    /// let token_error = Error::find_in(&err).ok_or("not a token error")?;
    /// assert_eq!(token_error.oauth_code(), Some("invalid_client"));
    /// assert!(!token_error.is_transient()); // fix the key; retrying will not help
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn find_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(ours) = error.downcast_ref::<Error>() {
                return Some(ours);
            }
            if let Some(ours) = find_in_wrapper(error) {
                return Some(ours);
            }
            next = error.source();
        }
        None
    }

    /// [`Error::Network`] for a request that went through `proxy` (and whether from the env).
    pub(crate) fn network(error: reqwest::Error, proxy: Option<(String, bool)>) -> Self {
        let proxy_from_env = proxy.as_ref().is_some_and(|(_, from_env)| *from_env);
        Error::Network {
            error: Arc::new(error.without_url()),
            proxy: proxy.map(|(proxy, _)| proxy),
            proxy_from_env,
            next_attempt_in: None,
            failed_ago: None,
        }
    }

    /// This error as the cache hands it out; only [`Error::Network`] carries the timing.
    pub(crate) fn with_next_attempt(
        mut self,
        next_attempt_in: Duration,
        failed_ago: Option<Duration>,
    ) -> Self {
        if let Error::Network {
            next_attempt_in: next,
            failed_ago: ago,
            ..
        } = &mut self
        {
            *next = Some(next_attempt_in);
            *ago = failed_ago;
        }
        self
    }

    /// Lets the advice name the environment variables if the key came from there.
    pub(crate) fn key_from_env(mut self, from_env: bool) -> Self {
        if let Error::OAuth { key_from_env, .. } = &mut self {
            *key_from_env = from_env;
        }
        self
    }

    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_response(status: StatusCode, reason: impl Into<String>) -> Self {
        Error::InvalidResponse {
            status,
            reason: reason.into(),
        }
    }
}

/// The crate's error inside wrappers whose `source()` skips it.
fn find_in_wrapper<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
    #[cfg(feature = "middleware")]
    if let Some(reqwest_middleware::Error::Middleware(inner)) =
        error.downcast_ref::<reqwest_middleware::Error>()
    {
        let inner: &(dyn std::error::Error + 'static) = &**inner;
        return Error::find_in(inner);
    }
    #[cfg(feature = "reqwest-retry")]
    if let Some(
        reqwest_retry::RetryError::Error(inner)
        | reqwest_retry::RetryError::WithRetries { err: inner, .. },
    ) = error.downcast_ref::<reqwest_retry::RetryError>()
    {
        return Error::find_in(inner);
    }
    let _ = error;
    None
}

fn transient_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// `error` and its causes, looking through `io::Error` (whose `source()` skips its inner).
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| {
        match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        }
    })
}

/// `error`'s message and its innermost cause: "error sending request: invalid peer
/// certificate: UnknownIssuer".
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    match causes(error).last() {
        Some(innermost) if !std::ptr::addr_eq(innermost, error) => {
            format!("{error}: {innermost}")
        }
        _ => error.to_string(),
    }
}

/// Whether a transport failure is the TLS setup's, which waiting does not fix (`rustls` only).
fn is_tls_setup_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    #[cfg(feature = "rustls")]
    {
        use rustls::AlertDescription as Alert;
        causes(error).any(|cause| {
            matches!(
                cause.downcast_ref::<rustls::Error>(),
                Some(
                    rustls::Error::InvalidCertificate(_)
                        | rustls::Error::NoCertificatesPresented
                        | rustls::Error::UnsupportedNameType
                        | rustls::Error::PeerIncompatible(_)
                        | rustls::Error::InvalidCertRevocationList(_)
                        | rustls::Error::NoApplicationProtocol
                        | rustls::Error::InconsistentKeys(_)
                        | rustls::Error::General(_)
                        | rustls::Error::AlertReceived(
                            Alert::HandshakeFailure
                                | Alert::BadCertificate
                                | Alert::UnsupportedCertificate
                                | Alert::CertificateRevoked
                                | Alert::CertificateExpired
                                | Alert::CertificateUnknown
                                | Alert::UnknownCA
                                | Alert::AccessDenied
                                | Alert::ProtocolVersion
                                | Alert::InsufficientSecurity
                                | Alert::CertificateRequired
                                | Alert::UnrecognisedName
                                | Alert::NoApplicationProtocol
                        )
                )
            )
        })
    }
    #[cfg(not(feature = "rustls"))]
    {
        let _ = error;
        false
    }
}

fn describe_network(
    error: &reqwest::Error,
    proxy: Option<&str>,
    proxy_from_env: bool,
    next_attempt_in: Option<Duration>,
    failed_ago: Option<Duration>,
) -> String {
    let cause = error_chain(error);
    let (via, check) = match (proxy, proxy_from_env) {
        (Some(proxy), true) => (
            format!(" through the proxy {proxy} (from the environment)"),
            "check that the proxy is up, or exempt the auth server's host with NO_PROXY",
        ),
        (Some(proxy), false) => (
            format!(" through the proxy {proxy} (set with configure_token_client)"),
            "check the proxy given to configure_token_client and token_url",
        ),
        (None, _) => (
            String::new(),
            "check the network and token_url (no proxy was used; set HTTPS_PROXY if one is needed)",
        ),
    };
    let when = match (next_attempt_in, failed_ago) {
        (Some(next), Some(ago)) => format!(
            " (cached failure from {} ago; next attempt in {})",
            seconds(ago, false),
            seconds(next, true)
        ),
        (Some(next), None) => format!("; retried in {}", seconds(next, true)),
        (None, _) => "; it will be retried".to_owned(),
    };
    if is_tls_setup_failure(error) {
        return format!(
            "the TLS connection to the auth server{via} failed: {cause}; check token_url, and if a proxy inspects TLS or the server uses a private CA, trust its root certificate with UnderstoryAuthBuilder::configure_token_client"
        );
    }
    format!("could not reach the auth server{via}: {cause}; {check}{when}")
}

/// `duration` in ms below a second, else whole seconds (a wait to come rounded up).
fn seconds(duration: Duration, round_up: bool) -> String {
    if duration < Duration::from_secs(1) {
        return format!("{} ms", duration.as_millis());
    }
    let whole = duration.as_secs();
    let up = round_up && duration.subsec_nanos() > 0;
    format!("{} s", whole.saturating_add(u64::from(up)))
}

fn describe_oauth(
    code: &str,
    description: Option<&str>,
    status: StatusCode,
    key_from_env: bool,
) -> String {
    let said = match description {
        Some(d) if !d.is_empty() => {
            format!("the auth server refused the token request: {code} ({d})")
        }
        _ => format!("the auth server refused the token request: {code} (HTTP {status})"),
    };
    let advice = match code {
        "invalid_client" if key_from_env => {
            "check UNDERSTORY_CLIENT_ID and UNDERSTORY_CLIENT_SECRET: the key may be mistyped, deleted in Backoffice, or need another ClientAuthMethod"
        }
        "invalid_client" => {
            "check the client id and secret: the key may be mistyped, deleted in Backoffice, or need another ClientAuthMethod"
        }
        "invalid_scope" => {
            "this key lacks a requested scope: give the integration key that permission in Backoffice, or stop requesting the scope"
        }
        "unauthorized_client" => {
            "this key may not use the client_credentials grant: create an internal integration key in Backoffice"
        }
        "invalid_request" => {
            "the request was refused as malformed: check the audience (https://api.understory.io) and the scopes"
        }
        "invalid_grant" | "unsupported_grant_type" => {
            "the auth server does not accept the client_credentials grant here: check token_url"
        }
        "server_error" | "temporarily_unavailable" => {
            "the auth server has a problem on its side; the request will be retried"
        }
        _ if transient_status(status) => "the request will be retried",
        _ => "see the auth server's description above",
    };
    let redacted = if code.contains(REDACTED) || description.is_some_and(|d| d.contains(REDACTED)) {
        "; the answer repeated the client secret or an access token, replaced here by [REDACTED]: the auth server or a proxy in front of it echoes requests"
    } else {
        ""
    };
    format!("{said}; {advice}{redacted}")
}

#[cfg(feature = "app")]
fn describe_declined(error: &str, description: Option<&str>) -> String {
    let said = description.map_or_else(String::new, |text| format!(": {text}"));
    if error == "access_denied" {
        format!(
            "the user declined to connect the app to Understory (access_denied{said}); nothing was granted: offer to connect again"
        )
    } else {
        format!(
            "Understory refused the authorization ({error}{said}); check the app's registration with Understory (client id, redirect URIs, scopes), then start a new authorization"
        )
    }
}

fn describe_status(status: StatusCode, retry_after: Option<&Duration>) -> String {
    let retry = match retry_after {
        Some(d) => format!(" (it asked to retry after {}s)", d.as_secs()),
        None => String::new(),
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        format!(
            "the auth server is rate limiting token requests (HTTP 429){retry}; requests back off and retry"
        )
    } else if status.is_redirection() {
        format!(
            "the token endpoint answered with a redirect (HTTP {status}), which is never followed so the secret cannot leak; set token_url to the final address"
        )
    } else if transient_status(status) {
        format!(
            "the auth server or a proxy in front of it failed (HTTP {status}){retry}; it will be retried"
        )
    } else {
        format!("the auth server answered HTTP {status} without an OAuth2 error; check token_url")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let oauth = |status: u16, code: &str| Error::OAuth {
            status: StatusCode::from_u16(status).unwrap(),
            code: code.into(),
            description: None,
            retry_after: None,
            key_from_env: false,
        };
        assert!(!oauth(401, "invalid_client").is_transient());
        assert!(!oauth(400, "invalid_scope").is_transient());
        assert!(!oauth(400, "invalid_request").is_transient());
        assert!(oauth(500, "server_error").is_transient());
        assert!(oauth(503, "temporarily_unavailable").is_transient());
        assert!(oauth(429, "slow_down").is_transient());
        let status = |s: u16| Error::Status {
            status: StatusCode::from_u16(s).unwrap(),
            retry_after: None,
        };
        assert!(status(502).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(404).is_transient());
        assert!(!status(307).is_transient());
        assert!(status(307).to_string().contains("redirect"));
    }

    #[test]
    fn messages_say_what_to_do() {
        let err = Error::OAuth {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_scope".into(),
            description: Some("The requested scope is invalid: booking.write".into()),
            retry_after: None,
            key_from_env: false,
        };
        let msg = err.to_string();
        assert!(msg.contains("booking.write"), "{msg}");
        assert!(msg.contains("Backoffice"), "{msg}");
        assert!(!msg.contains("REDACTED"), "{msg}");
    }

    #[test]
    fn a_redacted_answer_says_so() {
        let err = Error::OAuth {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request".into(),
            description: Some("got client_secret=[REDACTED]".into()),
            retry_after: None,
            key_from_env: false,
        };
        let msg = err.to_string();
        assert!(
            msg.contains("repeated the client secret or an access token"),
            "{msg}"
        );
    }

    fn invalid_client(key_from_env: bool) -> Error {
        Error::OAuth {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client".into(),
            description: Some(
                "Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method). The provided client secret did not match.".into(),
            ),
            retry_after: None,
            key_from_env,
        }
    }

    #[test]
    fn a_wrong_secret_names_the_variables_only_for_a_key_from_the_environment() {
        let from_env = invalid_client(true).to_string();
        assert!(
            from_env.contains("check UNDERSTORY_CLIENT_ID and UNDERSTORY_CLIENT_SECRET"),
            "{from_env}"
        );
        let given = invalid_client(false).to_string();
        assert!(given.contains("check the client id and secret"), "{given}");
        assert!(!given.contains("UNDERSTORY_"), "{given}");
        // Hydra's description and the advice, no more (it was about 420 characters).
        assert!(given.len() <= 360, "{} characters: {given}", given.len());
    }

    /// A transport error, made without a network.
    fn transport_error() -> reqwest::Error {
        reqwest::Proxy::all("http://[").expect_err("not a URL")
    }

    #[test]
    fn a_network_error_names_the_proxy_and_where_it_was_set() {
        let proxy = |from_env| Some(("http://proxy.corp.example:3128".to_owned(), from_env));
        let env = Error::network(transport_error(), proxy(true)).to_string();
        assert!(
            env.starts_with(
                "could not reach the auth server through the proxy http://proxy.corp.example:3128 (from the environment): "
            ),
            "{env}"
        );
        assert!(env.contains("NO_PROXY"), "{env}");
        let code = Error::network(transport_error(), proxy(false)).to_string();
        assert!(code.contains("(set with configure_token_client)"), "{code}");
        assert!(!code.contains("_PROXY"), "{code}");
        let direct = Error::network(transport_error(), None).to_string();
        assert!(
            direct.starts_with("could not reach the auth server: "),
            "{direct}"
        );
        assert!(direct.contains("no proxy was used"), "{direct}");
        assert!(direct.ends_with("; it will be retried"), "{direct}");
    }

    #[test]
    fn a_network_error_says_when_the_next_attempt_is_and_whether_it_is_remembered() {
        let error = || Error::network(transport_error(), None);
        let fresh = error()
            .with_next_attempt(Duration::from_millis(29_200), None)
            .to_string();
        assert!(fresh.ends_with("; retried in 30 s"), "{fresh}");
        let cached = error()
            .with_next_attempt(
                Duration::from_millis(400),
                Some(Duration::from_millis(2_600)),
            )
            .to_string();
        assert!(
            cached.ends_with(" (cached failure from 2 s ago; next attempt in 400 ms)"),
            "{cached}"
        );
        // Other errors are left as they are.
        let oauth = invalid_client(false);
        let noted = oauth
            .clone()
            .with_next_attempt(Duration::from_secs(5), None);
        assert_eq!(noted.to_string(), oauth.to_string());
    }

    #[test]
    fn find_in_walks_the_chain() {
        #[derive(Debug)]
        struct Outer(Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let outer = Outer(invalid_client(false));
        let found = Error::find_in(&outer).expect("found");
        assert_eq!(found.oauth_code(), Some("invalid_client"));
        let io = std::io::Error::other("unrelated");
        assert!(Error::find_in(&io).is_none());
    }
}
