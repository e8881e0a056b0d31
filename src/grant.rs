//! The OAuth2 `client_credentials` grant: one token request (no redirects, a timeout, a
//! bounded answer) and [`parse_token_answer`], a pure function so every answer is tested
//! without a server; server text it keeps goes through [`redact`](crate::redact).

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, StatusCode};
use secrecy::{ExposeSecret, SecretSlice};
use serde_json::{Map, Value};
use url::Url;

use crate::Error;
use crate::credentials::{ClientAuthMethod, Credentials};
use crate::error::error_chain;
use crate::origin::{is_loopback, origin_and_path};
use crate::rate_limit::parse_retry_after;
use crate::source::TokenSource;
use crate::token::GrantedToken;

use crate::redact::{
    Secrets, basic_credentials, form_encode, oauth_error_code, registered_token_type,
};

/// The largest token answer read; a longer body is refused (a token answer is ~1 KiB).
pub(crate) const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// The lifetime assumed when the answer has no usable `expires_in` (Understory's is 1 h).
pub(crate) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The shortest lifetime believed, so `expires_in: 0` cannot make every request fetch.
pub(crate) const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(1);
/// The longest lifetime believed, so absurd `expires_in` cannot overflow a clock.
pub(crate) const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Everything needed to send the token request, prepared once at build time.
pub(crate) struct Grant {
    client: reqwest::Client,
    token_url: Url,
    /// The `client_credentials` form body; it holds the secret when the method is
    /// `client_secret_post`.
    body: SecretSlice<u8>,
    /// `client_id` and `client_secret`, added to every other grant's form for
    /// `client_secret_post`.
    #[cfg_attr(not(feature = "app"), allow(dead_code))]
    form_credentials: Option<(String, secrecy::SecretString)>,
    /// `Basic …` for `client_secret_basic`, marked sensitive.
    basic_auth: Option<HeaderValue>,
    user_agent: HeaderValue,
    timeout: Duration,
    requested_scopes: Vec<String>,
    /// What the server's answers must never carry into an error or a log.
    secrets: Secrets,
    /// The proxy the token request goes through (`scheme://host:port`, whether it was set
    /// in the environment), named in a transport error.
    proxy: Option<(String, bool)>,
    /// Whether the key came from the environment, named in an `invalid_client` error.
    key_from_env: bool,
}

/// The settings [`Grant::new`] takes from the builder.
pub(crate) struct GrantConfig<'a> {
    pub(crate) credentials: &'a Credentials,
    pub(crate) token_url: Url,
    pub(crate) audience: &'a str,
    pub(crate) user_agent: HeaderValue,
    pub(crate) timeout: Duration,
    pub(crate) client_hook: Option<&'a ClientHook>,
}

/// [`configure_token_client`](crate::UnderstoryAuthBuilder::configure_token_client)'s hook.
#[derive(Clone)]
pub(crate) struct ClientHook(pub(crate) std::sync::Arc<ConfigureClient>);

/// What [`ClientHook`] holds.
pub(crate) type ConfigureClient =
    dyn Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync;

impl fmt::Debug for ClientHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientHook(..)")
    }
}

impl Grant {
    pub(crate) fn new(config: GrantConfig<'_>) -> Result<Self, Error> {
        let GrantConfig {
            credentials,
            token_url,
            audience,
            user_agent,
            timeout,
            client_hook,
        } = config;
        let mut client = reqwest::Client::builder();
        // With both TLS features on, rustls (the default one); the hook may choose the other.
        #[cfg(feature = "rustls")]
        {
            client = client.tls_backend_rustls();
        }
        // A loopback token endpoint is never reached through the environment's proxy.
        let loopback = is_loopback(&token_url);
        if loopback {
            client = client.no_proxy();
        }
        if let Some(ClientHook(configure)) = client_hook {
            client = configure(client);
        }
        let proxy = proxy_route(&client, &token_url, loopback);
        // Set after the hook, so that it cannot weaken them: no redirects, the timeouts.
        let client = client
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| {
                Error::config(format!(
                    "cannot build the token HTTP client: {}",
                    error_chain(&e)
                ))
            })?;

        let mut form = Form::default();
        form.append_pair("grant_type", "client_credentials");
        if !credentials.scopes().is_empty() {
            form.append_pair("scope", &credentials.scopes().join(" "));
        }
        form.append_pair("audience", audience);
        let (basic_auth, form_credentials) = match credentials.auth_method() {
            ClientAuthMethod::ClientSecretPost => {
                form.append_pair("client_id", credentials.client_id());
                form.append_pair("client_secret", credentials.client_secret());
                let secret = credentials.client_secret().into();
                (None, Some((credentials.client_id().to_owned(), secret)))
            }
            ClientAuthMethod::ClientSecretBasic => {
                let id = credentials.client_id();
                let header = basic_auth_header(id, credentials.client_secret())?;
                (Some(header), None)
            }
        };
        Ok(Grant {
            client,
            token_url,
            body: form.0.into_bytes().into(),
            form_credentials,
            basic_auth,
            user_agent,
            timeout,
            requested_scopes: credentials.scopes().to_vec(),
            secrets: Secrets::new(credentials.client_id(), credentials.client_secret()),
            proxy,
            key_from_env: credentials.is_from_env(),
        })
    }

    /// Sends one `client_credentials` token request and parses its answer.
    pub(crate) async fn request(&self) -> Result<GrantedToken, Error> {
        let body = self.body.expose_secret().to_vec();
        Ok(self.send(body).await?.granted)
    }

    /// Sends one token request of another grant (`pairs` and the client's authentication);
    /// its `refresh_token` is remembered for redaction.
    #[cfg(feature = "app")]
    pub(crate) async fn request_with(&self, pairs: &[(&str, &str)]) -> Result<TokenAnswer, Error> {
        let body = self.form(pairs);
        self.send(body.expose_secret().as_bytes().to_vec()).await
    }

    /// Remembers a secret the server may echo (a refresh token, a code) for redaction.
    #[cfg(feature = "app")]
    pub(crate) fn remember_secret(&self, secret: &str) {
        self.secrets.remember_token(secret);
    }

    /// The token requests' HTTP client, for the crate's other requests.
    #[cfg(feature = "app")]
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Posts `pairs` and the client's authentication to `url` (revocation); the status.
    #[cfg(feature = "app")]
    pub(crate) async fn post_form(
        &self,
        url: Url,
        pairs: &[(&str, &str)],
    ) -> Result<StatusCode, Error> {
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(USER_AGENT, self.user_agent.clone())
            .body(self.form(pairs).expose_secret().as_bytes().to_vec());
        if let Some(basic) = &self.basic_auth {
            request = request.header(AUTHORIZATION, basic.clone());
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        self.read_answer(response).await?;
        Ok(status)
    }

    /// `pairs` as a form, with `client_id` and `client_secret` for `client_secret_post`.
    #[cfg(feature = "app")]
    fn form(&self, pairs: &[(&str, &str)]) -> secrecy::SecretString {
        let mut form = Form::default();
        for (name, value) in pairs {
            form.append_pair(name, value);
        }
        if let Some((id, secret)) = &self.form_credentials {
            form.append_pair("client_id", id);
            form.append_pair("client_secret", secret.expose_secret());
        }
        form.0.into()
    }

    async fn send(&self, body: Vec<u8>) -> Result<TokenAnswer, Error> {
        let mut request = self
            .client
            .post(self.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, self.user_agent.clone())
            .body(body);
        if let Some(basic) = &self.basic_auth {
            request = request.header(AUTHORIZATION, basic.clone());
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = parse_retry_after(status, response.headers());
        let body = self.read_answer(response).await?;
        parse_token_answer(
            status,
            retry_after,
            &body,
            &self.requested_scopes,
            &self.secrets,
        )
        .map_err(|e| e.key_from_env(self.key_from_env))
    }

    /// An answer's body, read with the token answer's bound.
    pub(crate) async fn read_answer(&self, response: reqwest::Response) -> Result<Vec<u8>, Error> {
        let status = response.status();
        read_bounded(response).await.map_err(|e| match e {
            BodyError::Transport(e) => self.transport_error(e),
            BodyError::TooLarge => Error::invalid_response(
                status,
                format!("the answer is larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"),
            ),
        })
    }

    pub(crate) fn transport_error(&self, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout {
                after: self.timeout,
            }
        } else {
            Error::network(e, self.proxy.clone())
        }
    }
}

/// The proxy the token request goes through (`scheme://host:port`) and whether it came from
/// the environment, for error messages. The hook's proxy is read, best effort, from the
/// builder's `Debug` (reqwest offers no other view); else the environment's, unless loopback.
fn proxy_route(
    client: &reqwest::ClientBuilder,
    token_url: &Url,
    loopback: bool,
) -> Option<(String, bool)> {
    let debug = format!("{client:?}");
    if let Some(start) = debug.find("proxies: [") {
        return proxy_in_debug(&debug[start..], token_url.scheme()).map(|name| (name, false));
    }
    if loopback {
        return None;
    }
    let uri: http::Uri = token_url.as_str().parse().ok()?;
    let intercept = hyper_util::client::proxy::matcher::Matcher::from_system().intercept(&uri)?;
    Some((proxy_name(intercept.uri()), true))
}

/// The first proxy for `scheme` in a `reqwest::ClientBuilder`'s `Debug`, or `_` for a
/// `Proxy::custom`.
fn proxy_in_debug(proxies: &str, scheme: &str) -> Option<String> {
    let needle = format!("{scheme}: Intercept {{ uri: ");
    let custom = proxies.find("[_").or_else(|| proxies.find(", _"));
    match proxies.find(&needle) {
        Some(at) if custom.is_none_or(|c| c > at) => {
            let rest = &proxies[at + needle.len()..];
            let uri: http::Uri = rest.split([' ', ',', '}']).next()?.parse().ok()?;
            Some(proxy_name(&uri))
        }
        _ if custom.is_some() => Some("chosen by a Proxy::custom".to_owned()),
        _ => None,
    }
}

/// A proxy's `scheme://host:port`, its port made explicit; any user info left out.
fn proxy_name(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or("?");
    let port = uri.port_u16().unwrap_or(match scheme {
        "https" => 443,
        "http" => 80,
        _ => 1080,
    });
    format!("{scheme}://{host}:{port}")
}

impl TokenSource for Grant {
    fn fetch(self: std::sync::Arc<Self>) -> BoxFuture<'static, Result<GrantedToken, Error>> {
        Box::pin(async move { self.request().await })
    }

    fn remember_token(&self, token: &str) {
        self.secrets.remember_token(token);
    }
}

/// A form body, its names and values [`form_encode`]d.
#[derive(Default)]
struct Form(String);

impl Form {
    fn append_pair(&mut self, name: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(&form_encode(name));
        self.0.push('=');
        self.0.push_str(&form_encode(value));
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("token_url", &origin_and_path(&self.token_url))
            .field("body", &"[REDACTED]")
            .field("timeout", &self.timeout)
            .field("requested_scopes", &self.requested_scopes)
            .finish()
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, as RFC 6749 section 2.3.1 asks,
/// marked sensitive.
fn basic_auth_header(client_id: &str, secret: &str) -> Result<HeaderValue, Error> {
    let encoded = basic_credentials(client_id, secret);
    // Base64 and a space are always a valid header value; the error is for completeness.
    let mut header = HeaderValue::try_from(format!("Basic {encoded}"))
        .map_err(|_| Error::config("cannot encode the client id and secret for HTTP Basic"))?;
    header.set_sensitive(true);
    Ok(header)
}

enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

/// Reads the body, refusing to hold more than [`MAX_TOKEN_RESPONSE_BYTES`].
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|len| len > MAX_TOKEN_RESPONSE_BYTES as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len().saturating_add(chunk.len()) > MAX_TOKEN_RESPONSE_BYTES {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A token answer: the access token, and the refresh token if the server sent one.
pub(crate) struct TokenAnswer {
    pub(crate) granted: GrantedToken,
    #[cfg_attr(not(feature = "app"), allow(dead_code))]
    pub(crate) refresh_token: Option<secrecy::SecretString>,
}

/// [`parse_token_answer`] without the refresh token.
#[cfg(test)]
pub(crate) fn parse_token_response(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    requested_scopes: &[String],
    secrets: &Secrets,
) -> Result<GrantedToken, Error> {
    parse_token_answer(status, retry_after, body, requested_scopes, secrets).map(|a| a.granted)
}

/// A token endpoint's answer as a token or an [`Error`]; never panics, and no error holds
/// the tokens or anything of `secrets` (the tokens are added to them before anything else
/// of the answer is kept).
pub(crate) fn parse_token_answer(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    requested_scopes: &[String],
    secrets: &Secrets,
) -> Result<TokenAnswer, Error> {
    let json: Option<Map<String, Value>> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    let oauth_error = json
        .as_ref()
        .and_then(|map| map.get("error"))
        .and_then(Value::as_str)
        .and_then(|code| oauth_error_code(secrets, code));
    if let (Some(code), Some(map)) = (oauth_error, json.as_ref()) {
        // Some servers answer errors with 200; no token, an error code: it is an error.
        if !status.is_success() || !map.contains_key("access_token") {
            return Err(Error::OAuth {
                status,
                code,
                description: map
                    .get("error_description")
                    .and_then(Value::as_str)
                    .map(|description| secrets.clean(description)),
                retry_after,
                key_from_env: false,
            });
        }
    }
    if !status.is_success() {
        return Err(Error::Status {
            status,
            retry_after,
        });
    }
    let map =
        json.ok_or_else(|| Error::invalid_response(status, "the body is not a JSON object"))?;

    match map.get("token_type") {
        // RFC 6749 requires it, but a missing type is taken as bearer: it is the only kind
        // a client_credentials grant issues in practice.
        None => {}
        Some(Value::String(t)) if t.trim().eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(t)) => {
            return Err(Error::UnsupportedTokenType {
                token_type: registered_token_type(t),
            });
        }
        Some(_) => {
            return Err(Error::invalid_response(
                status,
                "token_type is not a string",
            ));
        }
    }
    let access_token = match map.get("access_token") {
        Some(Value::String(token)) => token,
        Some(_) => {
            return Err(Error::invalid_response(
                status,
                "access_token is not a string",
            ));
        }
        None => {
            return Err(Error::invalid_response(
                status,
                "the answer has no access_token",
            ));
        }
    };
    // The token is checked and remembered before anything else of the answer is kept, so
    // that an answer echoing it (in `scope`) cannot carry it into the token's `Debug` or a log.
    GrantedToken::check(access_token).map_err(|e| match e {
        Error::InvalidResponse { reason, .. } => Error::InvalidResponse { status, reason },
        other => other,
    })?;
    secrets.remember_token(access_token);
    let refresh_token = match map.get("refresh_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) => {
            GrantedToken::check(token).map_err(|_| {
                Error::invalid_response(status, "refresh_token is not a valid token")
            })?;
            secrets.remember_token(token);
            Some(secrecy::SecretString::from(token.as_str()))
        }
        Some(_) => {
            return Err(Error::invalid_response(
                status,
                "refresh_token is not a string",
            ));
        }
    };
    let scopes = match map.get("scope") {
        Some(Value::String(s)) => secrets.granted_scopes(s).unwrap_or_else(|| {
            tracing::debug!(
                "token answer's scope is not a list of RFC 6749 scopes; assuming the requested ones"
            );
            requested_scopes.to_vec()
        }),
        // RFC 6749 section 5.1: no scope means the requested ones were granted.
        _ => requested_scopes.to_vec(),
    };
    let granted = GrantedToken::new(
        access_token,
        parse_expires_in(map.get("expires_in")),
        scopes,
    )
    .map_err(|e| match e {
        Error::InvalidResponse { reason, .. } => Error::InvalidResponse { status, reason },
        other => other,
    })?;
    Ok(TokenAnswer {
        granted,
        refresh_token,
    })
}

/// `expires_in` as a number or numeric string, clamped to
/// [`MIN_TOKEN_LIFETIME`]..=[`MAX_TOKEN_LIFETIME`]; anything else means
/// [`DEFAULT_TOKEN_LIFETIME`].
fn parse_expires_in(value: Option<&Value>) -> Duration {
    let secs = match value {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match secs {
        Some(secs) if !secs.is_nan() => Duration::from_secs_f64(secs.clamp(
            MIN_TOKEN_LIFETIME.as_secs_f64(),
            MAX_TOKEN_LIFETIME.as_secs_f64(),
        )),
        _ => {
            tracing::debug!("token answer has no usable expires_in; assuming the default lifetime");
            DEFAULT_TOKEN_LIFETIME
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::MAX_ACCESS_TOKEN_BYTES;

    /// The client secret of the tests' credentials.
    const SECRET: &str = "unit-test~Secret.value_1";

    fn secrets() -> Secrets {
        Secrets::new("client", SECRET)
    }

    fn parse(
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &[u8],
        requested_scopes: &[String],
    ) -> Result<GrantedToken, Error> {
        parse_token_response(status, retry_after, body, requested_scopes, &secrets())
    }

    fn ok(body: &str) -> Result<GrantedToken, Error> {
        parse(
            StatusCode::OK,
            None,
            body.as_bytes(),
            &["openid".to_owned()],
        )
    }

    fn lifetime(expires_in: &str) -> Duration {
        ok(&format!(
            r#"{{"access_token":"t","token_type":"bearer","expires_in":{expires_in}}}"#
        ))
        .unwrap()
        .lifetime()
    }

    #[test]
    fn understory_answer() {
        let token = ok(r#"{"access_token":"eyJ.abc-_~","expires_in":3599,"scope":"openid marketing.read","token_type":"bearer"}"#).unwrap();
        assert_eq!(token.lifetime(), Duration::from_secs(3599));
        assert_eq!(token.secret(), "eyJ.abc-_~");
        assert_eq!(token.scopes(), ["openid", "marketing.read"]);
    }

    #[test]
    fn token_type_any_case_or_missing() {
        for t in ["bearer", "Bearer", "BEARER", " bearer "] {
            assert!(ok(&format!(r#"{{"access_token":"t","token_type":"{t}"}}"#)).is_ok());
        }
        assert!(ok(r#"{"access_token":"t"}"#).is_ok());
        let err = ok(r#"{"access_token":"t","token_type":"mac"}"#).unwrap_err();
        assert!(matches!(err, Error::UnsupportedTokenType { .. }), "{err}");
        assert!(!err.is_transient());
    }

    #[test]
    fn expires_in_every_shape() {
        assert_eq!(lifetime("3599"), Duration::from_secs(3599));
        assert_eq!(lifetime("\"3599\""), Duration::from_secs(3599));
        assert_eq!(lifetime("\" 60 \""), Duration::from_secs(60));
        assert_eq!(lifetime("59.9"), Duration::from_secs_f64(59.9));
        assert_eq!(lifetime("0"), MIN_TOKEN_LIFETIME);
        assert_eq!(lifetime("-5"), MIN_TOKEN_LIFETIME);
        assert_eq!(lifetime("1e300"), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime("18446744073709551615"), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime("\"inf\""), MAX_TOKEN_LIFETIME);
        assert_eq!(lifetime("\"NaN\""), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(lifetime("\"soon\""), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(lifetime("null"), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(lifetime("{}"), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(
            ok(r#"{"access_token":"t"}"#).unwrap().lifetime(),
            DEFAULT_TOKEN_LIFETIME
        );
    }

    #[test]
    fn scope_missing_means_requested_and_unknown_fields_are_ignored() {
        let t =
            ok(r#"{"access_token":"t","token_type":"bearer","id_token":"x","extra":{"a":[1]}}"#)
                .unwrap();
        assert_eq!(t.scopes(), ["openid"]);
    }

    #[test]
    fn bad_access_tokens_are_clear_errors_without_the_token() {
        for body in [
            r#"{"token_type":"bearer"}"#,
            r#"{"access_token":"","token_type":"bearer"}"#,
            r#"{"access_token":null}"#,
            r#"{"access_token":42}"#,
            r#"{"access_token":"has space"}"#,
            r#"{"access_token":"line\nbreak"}"#,
            "not json",
            "[1,2]",
            "",
        ] {
            let err = ok(body).unwrap_err();
            assert!(
                matches!(err, Error::InvalidResponse { .. }),
                "{body}: {err}"
            );
            assert!(!err.to_string().contains("has space"));
            assert!(!err.to_string().contains("line\nbreak"));
        }
    }

    #[test]
    fn oauth_errors_keep_code_and_description() {
        let err = parse(
            StatusCode::UNAUTHORIZED,
            None,
            br#"{"error":"invalid_client","error_description":"Client authentication failed."}"#,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.oauth_code(), Some("invalid_client"));
        assert!(!err.is_transient());
        let msg = err.to_string();
        assert!(
            msg.contains("Client authentication failed.") && msg.contains("client id and secret")
        );

        let err = parse(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Duration::from_secs(7)),
            br#"{"error":"temporarily_unavailable"}"#,
            &[],
        )
        .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

        // An error in a 200 answer is still an error.
        let err = ok(r#"{"error":"invalid_scope"}"#).unwrap_err();
        assert_eq!(err.oauth_code(), Some("invalid_scope"));
    }

    #[test]
    fn non_oauth_error_bodies() {
        let err = parse(
            StatusCode::BAD_GATEWAY,
            None,
            b"<html>bad gateway</html>",
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, Error::Status { .. }) && err.is_transient());
        let err = parse(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(60)),
            b"slow down",
            &[],
        )
        .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
        let err = parse(StatusCode::NOT_FOUND, None, b"", &[]).unwrap_err();
        assert!(!err.is_transient());
        let err = ok("<html>proxy login</html>").unwrap_err();
        assert!(err.is_transient(), "a garbled 200 is worth retrying");
    }

    #[test]
    fn echoed_secrets_and_tokens_are_redacted_and_said_so() {
        let secrets = secrets();
        let body = br#"{"access_token":"ory_at_first-token-1234","token_type":"bearer"}"#;
        parse_token_response(StatusCode::OK, None, body, &[], &secrets).unwrap();
        let echo = format!(
            r#"{{"error":"invalid_request","error_description":"got client_secret={SECRET} and ory_at_first-token-1234\u202e"}}"#
        );
        let err = parse_token_response(
            StatusCode::BAD_REQUEST,
            None,
            echo.as_bytes(),
            &[],
            &secrets,
        )
        .unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("Secret.value") && !shown.contains("first-token"),
            "{shown}"
        );
        assert!(!shown.contains('\u{202e}'), "{shown}");
        assert!(
            shown.contains("got client_secret=[REDACTED] and [REDACTED]"),
            "{shown}"
        );
        assert!(shown.contains("replaced here by [REDACTED]"), "{shown}");
    }

    /// Issue 19: a token above [`MAX_ACCESS_TOKEN_BYTES`] is refused, saying why, and is not
    /// remembered (which would make every later redaction pay for it).
    #[test]
    fn an_access_token_over_the_size_limit_is_refused() {
        let secrets = secrets();
        let at_limit = "a".repeat(MAX_ACCESS_TOKEN_BYTES);
        let body = format!(r#"{{"access_token":"{at_limit}"}}"#);
        parse_token_response(StatusCode::OK, None, body.as_bytes(), &[], &secrets).unwrap();
        let over = format!("{}b", "c".repeat(MAX_ACCESS_TOKEN_BYTES));
        let body = format!(r#"{{"access_token":"{over}"}}"#);
        let err =
            parse_token_response(StatusCode::OK, None, body.as_bytes(), &[], &secrets).unwrap_err();
        assert!(matches!(err, Error::InvalidResponse { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("8192 bytes") && !msg.contains("ccc"), "{msg}");
        assert_eq!(secrets.clean(&over[..40]), over[..40]);
    }

    /// Issue 19: the largest answers a hostile server can make the sanitizer look at, after 16
    /// tokens of the largest size: 64 scopes of 128 characters, a long `error_description`.
    /// Each text is scanned once, with one lookup per 8-character window, however many
    /// tokens are remembered and however long they are.
    #[test]
    fn hostile_answers_at_the_bounds_cost_one_lookup_per_window() {
        use crate::redact::{MAX_GRANTED_SCOPES, MAX_SCOPE_LEN, MIN_FRAGMENT, REMEMBERED_TOKENS};
        let secrets = secrets();
        let token = |n: usize| {
            let head = format!("ory_at_{n:02}_");
            let tail: String = (0..MAX_ACCESS_TOKEN_BYTES - head.len())
                .map(|i| char::from(b'a' + ((i * 7 + n) % 26) as u8))
                .collect();
            format!("{head}{tail}")
        };
        for n in 0..REMEMBERED_TOKENS {
            let body = format!(r#"{{"access_token":"{}"}}"#, token(n));
            parse_token_response(StatusCode::OK, None, body.as_bytes(), &[], &secrets).unwrap();
        }
        let scopes: Vec<String> = (0..MAX_GRANTED_SCOPES)
            .map(|n| format!("{n:03}{}", "s".repeat(MAX_SCOPE_LEN - 3)))
            .collect();
        let scope = scopes.join(" ");
        let fresh = "ory_at_fresh-token-after-sixteen";
        let body = format!(r#"{{"access_token":"{fresh}","scope":"{scope}"}}"#);
        let before = secrets.lookups();
        let granted =
            parse_token_response(StatusCode::OK, None, body.as_bytes(), &[], &secrets).unwrap();
        assert_eq!(granted.scopes(), scopes);
        let windows = scope.len() - (MIN_FRAGMENT - 1);
        assert_eq!(secrets.lookups() - before, windows);

        // As long as is read (1,200 characters), ending in part of a remembered token.
        let description = format!("{} {}", "x".repeat(999), &token(15)[100..300]);
        let body = format!(r#"{{"error":"invalid_request","error_description":"{description}"}}"#);
        let before = secrets.lookups();
        let err = parse_token_response(
            StatusCode::BAD_REQUEST,
            None,
            body.as_bytes(),
            &[],
            &secrets,
        )
        .unwrap_err();
        let Error::OAuth {
            description: Some(shown),
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(shown, &format!("{}…", "x".repeat(300)));
        let windows = "invalid_request".len() + 1_200 - 2 * (MIN_FRAGMENT - 1);
        assert_eq!(secrets.lookups() - before, windows);
        // The remembered token's echo is redacted where it is kept.
        let short = format!("x {}", &token(15)[100..300]);
        assert_eq!(secrets.clean(&short), "x [REDACTED]");
    }

    /// Issue 19: a fresh token echoed in `scope` (whole or any 8 characters of it) must not
    /// become a granted scope, shown by `Debug` and logged at INFO.
    #[test]
    fn a_fresh_token_echoed_in_scope_is_not_kept() {
        let fresh = "ory_at_Fresh-Token.Echoed~1";
        for echoed in [fresh, &fresh[3..11], &fresh[10..]] {
            let body = format!(r#"{{"access_token":"{fresh}","scope":"openid {echoed}"}}"#);
            let token = ok(&body).unwrap();
            assert_eq!(token.scopes(), ["openid"], "{echoed}");
            assert!(!format!("{token:?}").contains(&fresh[3..11]), "{token:?}");
        }
        // A scope merely sharing fewer than 8 characters with it is kept.
        let token = ok(&format!(
            r#"{{"access_token":"{fresh}","scope":"openid Fresh-T"}}"#
        ))
        .unwrap();
        assert_eq!(token.scopes(), ["openid", "Fresh-T"]);
    }

    #[test]
    fn unusable_server_words_are_not_kept() {
        // An `error` outside RFC 6749's syntax is no OAuth2 error.
        let err = parse(StatusCode::BAD_REQUEST, None, br#"{"error":"a\"b"}"#, &[]).unwrap_err();
        assert!(matches!(err, Error::Status { .. }), "{err:?}");
        // A refused token type is not repeated unless registered.
        let err = ok(r#"{"access_token":"t","token_type":"x-evil\u001b[31m"}"#).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("evil"), "{err}");
        // A granted scope with control or bidi characters means the requested ones.
        for scope in [r"openid\u001b[31m", r"openid \u202edaer.gnikoob"] {
            let token = ok(&format!(r#"{{"access_token":"t","scope":"{scope}"}}"#)).unwrap();
            assert_eq!(token.scopes(), ["openid"], "{scope:?}");
        }
    }

    #[test]
    fn debug_shows_the_token_url_without_its_query() {
        let grant = Grant::new(GrantConfig {
            credentials: &Credentials::new("id", "secret"),
            token_url: Url::parse("https://auth.example.com/oauth2/token?key=k-456#frag").unwrap(),
            audience: "https://api.understory.io",
            user_agent: HeaderValue::from_static("test"),
            timeout: Duration::from_secs(1),
            client_hook: None,
        })
        .unwrap();
        let debug = format!("{grant:?}");
        assert!(
            debug.contains("\"https://auth.example.com/oauth2/token\""),
            "{debug}"
        );
        assert!(
            !debug.contains("k-456") && !debug.contains("frag"),
            "{debug}"
        );
    }

    #[test]
    fn basic_header_encodes_before_base64() {
        use base64::Engine as _;
        let header = basic_auth_header("id:with colon~", "s~e.c_r-e+t").unwrap();
        assert!(header.is_sensitive());
        let encoded = header.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        // The unreserved `~ . _ -` literally (issue 18), the rest form-encoded.
        assert_eq!(decoded, b"id%3Awith+colon~:s~e.c_r-e%2Bt");
    }

    /// Issue 18: the form body has the RFC 3986 unreserved characters literally.
    #[test]
    fn the_form_body_has_unreserved_characters_literally() {
        let credentials =
            Credentials::new("my id~", "Ab9~x.y_z-Q +/").with_scopes(["openid", "event.read"]);
        let grant = Grant::new(GrantConfig {
            credentials: &credentials,
            token_url: Url::parse("https://auth.example.com/oauth2/token").unwrap(),
            audience: "https://api.understory.io",
            user_agent: HeaderValue::from_static("test"),
            timeout: Duration::from_secs(1),
            client_hook: None,
        })
        .unwrap();
        assert_eq!(
            std::str::from_utf8(grant.body.expose_secret()).unwrap(),
            "grant_type=client_credentials&scope=openid+event.read\
             &audience=https%3A%2F%2Fapi.understory.io&client_id=my+id~\
             &client_secret=Ab9~x.y_z-Q+%2B%2F"
        );
    }
}

#[cfg(test)]
mod proptests;
