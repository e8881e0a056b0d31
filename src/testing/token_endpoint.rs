//! `POST /oauth2/token`: the `client_credentials` grant as Ory Hydra implements it, and as
//! Understory's server refuses `%7E` (see `refuse_encoded_tilde`).

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use serde_json::json;

use super::recorded::RecordedRequest;
use super::response::{SandboxResponse, hydra_error, hydra_json};
use super::routes::{BodyError, RequestBody};
use super::state::{Config, Issued, Shared, State};
use super::{AUDIENCE, basic_auth};
use crate::ClientAuthMethod;

/// Answers a request to the token endpoint (already recorded and delayed by the prelude):
/// apply a fault if one is set, otherwise grant or refuse a token.
pub(crate) async fn handle(
    shared: &Shared,
    head: &Parts,
    body: RequestBody,
    recorded: &RecordedRequest,
) -> SandboxResponse {
    if let Some(fault) = shared.with(State::next_token_fault) {
        return fault.respond(shared, recorded).await;
    }
    match grant(shared, head, body) {
        Ok(issued) => success(&issued),
        Err(error) => error.response(),
    }
}

/// Hydra's checks, in about the order Hydra makes them; issues a token if all pass.
fn grant(shared: &Shared, head: &Parts, body: RequestBody) -> Result<Issued, OAuthError> {
    let config = &shared.config;
    if head.method != Method::POST {
        return Err(OAuthError::InvalidRequest(format!(
            "HTTP method is '{}', expected 'POST'.",
            head.method
        )));
    }
    if !is_form(&head.headers) {
        return Err(OAuthError::InvalidRequest(
            "The request body must be application/x-www-form-urlencoded.".to_owned(),
        ));
    }
    let body = body.map_err(|error| {
        OAuthError::InvalidRequest(match error {
            BodyError::TooLarge => "The request body is too large.".to_owned(),
            BodyError::Incomplete => "The request body could not be read.".to_owned(),
        })
    })?;
    refuse_encoded_tilde(&body)?;
    let form = Form::parse(&body);

    let grant_type = form.get("grant_type").unwrap_or_default();
    if grant_type.is_empty() {
        return Err(OAuthError::InvalidRequest(
            "Request parameter 'grant_type' is missing".to_owned(),
        ));
    }
    authenticate(config, &head.headers, &form)?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::UnsupportedGrantType(format!(
            "The sandbox supports only the 'client_credentials' grant, not '{grant_type}'."
        )));
    }

    let scopes = shared.with(|state| grant_scopes(state, form.get("scope").unwrap_or_default()))?;

    match form.get("audience") {
        Some(AUDIENCE) => {}
        Some(audience) => {
            return Err(OAuthError::InvalidRequest(format!(
                "Requested audience '{audience}' has not been whitelisted by the OAuth 2.0 Client."
            )));
        }
        None => {
            return Err(OAuthError::InvalidRequest(format!(
                "Request parameter 'audience' is missing; it must be '{AUDIENCE}'."
            )));
        }
    }

    Ok(shared.with(|state| state.issue_token(scopes)))
}

/// The scopes to grant for the space-separated `requested` ones (duplicates dropped). As in
/// Hydra, a scope the client may not request refuses the whole request with `invalid_scope`,
/// unless the sandbox is set to leave such scopes out of the grant instead.
fn grant_scopes(state: &State, requested: &str) -> Result<Vec<String>, OAuthError> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in requested.split(' ') {
        if scope.is_empty() || scopes.iter().any(|granted| granted == scope) {
            continue;
        }
        if !state.allowed_scopes.iter().any(|allowed| allowed == scope) {
            if state.omit_unallowed_scopes {
                continue;
            }
            return Err(OAuthError::InvalidScope(format!(
                "The OAuth 2.0 Client is not allowed to request scope '{scope}'."
            )));
        }
        scopes.push(scope.to_owned());
    }
    Ok(scopes)
}

/// Understory's server refuses a `~` sent as `%7E` (a public integration strips the escape
/// with the comment "Understory auth server requires the literal ~"; its generated secrets
/// contain `~`): as it answers, `invalid_client` for the credentials, and `invalid_request`
/// for any other field, here with a hint that says why (the value is not repeated).
fn refuse_encoded_tilde(body: &[u8]) -> Result<(), OAuthError> {
    let encoded_tilde = |raw: &[u8]| {
        raw.windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'7' && w[2].eq_ignore_ascii_case(&b'e'))
    };
    let Some(pair) = body.split(|&b| b == b'&').find(|pair| encoded_tilde(pair)) else {
        return Ok(());
    };
    let name_end = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
    let name = String::from_utf8_lossy(&pair[..name_end]);
    let name = if encoded_tilde(name.as_bytes()) {
        "a field name".to_owned()
    } else {
        format!("'{name}'")
    };
    let hint = format!(
        "The request body's {name} holds '%7E': this server requires a literal '~' (RFC 3986 \
         unreserved characters are sent unencoded)."
    );
    match name.as_str() {
        "'client_id'" | "'client_secret'" => Err(OAuthError::InvalidClient(hint)),
        _ => Err(OAuthError::InvalidRequest(hint)),
    }
}

/// Whether the request says its body is `application/x-www-form-urlencoded`.
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Checks the client's credentials, sent the way the client is registered for.
fn authenticate(config: &Config, headers: &HeaderMap, form: &Form) -> Result<(), OAuthError> {
    let basic = headers
        .get(AUTHORIZATION)
        .filter(|value| basic_auth::is_basic(value));
    let body_secret = form.get("client_secret");
    match (config.client_auth, basic, body_secret) {
        (_, Some(_), Some(_)) => Err(OAuthError::InvalidClient(
            "Client credentials were sent both in the Authorization header and in the request \
             body."
                .to_owned(),
        )),
        (_, None, None) => Err(OAuthError::InvalidClient(
            "No client credentials were sent.".to_owned(),
        )),
        (ClientAuthMethod::ClientSecretPost, None, Some(secret)) => {
            check_credentials(config, form.get("client_id").unwrap_or_default(), secret)
        }
        (ClientAuthMethod::ClientSecretBasic, Some(header), None) => {
            let credentials = basic_auth::parse(header).ok_or_else(|| {
                OAuthError::InvalidClient(
                    "The Authorization header is not valid HTTP Basic authentication.".to_owned(),
                )
            })?;
            check_credentials(config, &credentials.client_id, &credentials.client_secret)
        }
        (ClientAuthMethod::ClientSecretPost, Some(_), None)
        | (ClientAuthMethod::ClientSecretBasic, None, Some(_)) => {
            Err(wrong_method(config.client_auth))
        }
    }
}

fn check_credentials(
    config: &Config,
    client_id: &str,
    client_secret: &str,
) -> Result<(), OAuthError> {
    if client_id != config.client_id {
        return Err(OAuthError::InvalidClient(
            "The requested OAuth 2.0 Client does not exist.".to_owned(),
        ));
    }
    if client_secret != config.client_secret {
        return Err(OAuthError::InvalidClient(
            "The provided client secret did not match.".to_owned(),
        ));
    }
    Ok(())
}

fn wrong_method(registered: ClientAuthMethod) -> OAuthError {
    let (registered, used) = match registered {
        ClientAuthMethod::ClientSecretPost => ("client_secret_post", "client_secret_basic"),
        ClientAuthMethod::ClientSecretBasic => ("client_secret_basic", "client_secret_post"),
    };
    OAuthError::InvalidClient(format!(
        "The OAuth 2.0 Client supports client authentication method '{registered}', but method \
         '{used}' was requested. You must configure the OAuth 2.0 client's \
         'token_endpoint_auth_method' value to accept '{used}'."
    ))
}

/// The 200 answer with a freshly issued token.
fn success(issued: &Issued) -> SandboxResponse {
    hydra_json(
        StatusCode::OK,
        &json!({
            "access_token": issued.access_token,
            "expires_in": issued.expires_in,
            "scope": issued.scope,
            "token_type": "bearer",
        }),
    )
}

/// A parsed `application/x-www-form-urlencoded` body.
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: &Bytes) -> Self {
        Self(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `key`, as Go's `url.Values.Get`.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// An OAuth2 error answer of the token endpoint; the string is Hydra's "hint", appended to
/// the standard description.
enum OAuthError {
    InvalidRequest(String),
    InvalidClient(String),
    UnsupportedGrantType(String),
    InvalidScope(String),
}

impl OAuthError {
    fn response(&self) -> SandboxResponse {
        let (status, error, description, hint) = match self {
            Self::InvalidRequest(hint) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The request is missing a required parameter, includes an invalid parameter \
                 value, includes a parameter more than once, or is otherwise malformed.",
                hint,
            ),
            Self::InvalidClient(hint) => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed (e.g., unknown client, no client authentication \
                 included, or unsupported authentication method).",
                hint,
            ),
            Self::UnsupportedGrantType(hint) => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "The authorization grant type is not supported by the authorization server.",
                hint,
            ),
            Self::InvalidScope(hint) => (
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "The requested scope is invalid, unknown, or malformed.",
                hint,
            ),
        };
        hydra_error(status, error, format_args!("{description} {hint}"))
    }
}
