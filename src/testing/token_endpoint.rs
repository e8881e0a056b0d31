//! `POST /oauth2/token` as Ory Hydra implements it: the integration key's `client_credentials`
//! grant, the apps' `authorization_code` and `refresh_token` grants, and `%7E` refused as
//! Understory's server does (see `refuse_encoded_tilde`).

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use super::AUDIENCE;
use super::body::{RequestBody, form_value};
use super::fault_answers::token_fault;
use super::grants::{AppTokens, Exchange};
use super::oauth_error::{OAuthError, Refusal};
use super::recorded::RecordedRequest;
use super::response::{SandboxResponse, hydra_json};
use super::state::{Shared, State};
use super::tokens::Issued;

/// Answers a request to the token endpoint (already recorded and delayed by the prelude):
/// apply a fault if one is set, otherwise grant or refuse a token.
pub(crate) async fn handle(
    shared: &Shared,
    head: &Parts,
    body: RequestBody,
    recorded: &RecordedRequest,
) -> SandboxResponse {
    if let Some(fault) = shared.with(|state| state.token_faults.next()) {
        return token_fault(fault, shared, recorded).await;
    }
    match grant(shared, head, body) {
        Ok(answer) => hydra_json(StatusCode::OK, &answer),
        Err(refusal) => refusal.response(),
    }
}

/// Hydra's checks, in about the order Hydra makes them; the 200 body if all pass.
fn grant(shared: &Shared, head: &Parts, body: RequestBody) -> Result<Value, Refusal> {
    use OAuthError::{InvalidRequest, UnauthorizedClient, UnsupportedGrantType};
    let body = form_post(head, body)?;
    refuse_encoded_tilde(&body)?;

    let grant_type = form_value(&body, "grant_type").unwrap_or_default();
    if grant_type.is_empty() {
        return Err(InvalidRequest.because("Request parameter 'grant_type' is missing"));
    }
    let client = shared.config.authenticate(&head.headers, &body)?;
    let is_key = shared.config.is_key(client);
    match (grant_type.as_str(), is_key) {
        ("client_credentials", true) => Ok(client_credentials(shared, &body)?.answer("bearer")),
        ("authorization_code" | "refresh_token", false) => {
            Ok(app_grant(shared, &client.id, &grant_type, &body)?.answer())
        }
        ("client_credentials" | "authorization_code" | "refresh_token", _) => {
            Err(UnauthorizedClient.because(format!(
                "The OAuth 2.0 Client is not allowed to use authorization grant '{grant_type}'."
            )))
        }
        _ => Err(UnsupportedGrantType.because(format!(
            "The sandbox supports the 'client_credentials', 'authorization_code' and \
             'refresh_token' grants, not '{grant_type}'."
        ))),
    }
}

/// The body of a form `POST`, as Hydra's token and revocation endpoints require.
pub(crate) fn form_post(head: &Parts, body: RequestBody) -> Result<Bytes, Refusal> {
    use OAuthError::InvalidRequest;
    if head.method != Method::POST {
        let hint = format!("HTTP method is '{}', expected 'POST'.", head.method);
        return Err(InvalidRequest.because(hint));
    }
    if !is_form(&head.headers) {
        let hint = "The request body must be application/x-www-form-urlencoded.";
        return Err(InvalidRequest.because(hint));
    }
    body.map_err(|error| InvalidRequest.because(error.message()))
}

/// The integration key's `client_credentials` grant: scopes and audience, then a token.
fn client_credentials(shared: &Shared, body: &[u8]) -> Result<Issued, Refusal> {
    let requested = form_value(body, "scope").unwrap_or_default();
    let scopes = shared.with(|state| grant_scopes(state, &requested))?;
    let audience = form_value(body, "audience");
    if audience.as_deref() != Some(AUDIENCE) {
        return Err(OAuthError::InvalidRequest.because(match audience {
            Some(audience) => format!(
                "Requested audience '{audience}' has not been whitelisted by the OAuth 2.0 Client."
            ),
            None => format!("Request parameter 'audience' is missing; it must be '{AUDIENCE}'."),
        }));
    }
    Ok(shared.issue_key_token(scopes))
}

/// An app's `authorization_code` or `refresh_token` grant.
fn app_grant(
    shared: &Shared,
    client_id: &str,
    grant_type: &str,
    body: &[u8],
) -> Result<AppTokens, Refusal> {
    let form = |key: &str| form_value(body, key);
    let missing = |name: &str| {
        OAuthError::InvalidRequest.because(format!("Request parameter '{name}' is missing."))
    };
    shared.with(|state| {
        let lifetimes = state.app_lifetimes;
        if grant_type == "authorization_code" {
            let code = form("code").ok_or_else(|| missing("code"))?;
            let (redirect_uri, verifier) = (form("redirect_uri"), form("code_verifier"));
            let request = Exchange {
                code: &code,
                redirect_uri: redirect_uri.as_deref(),
                verifier: verifier.as_deref().unwrap_or_default(),
            };
            state
                .grants
                .exchange(&mut state.tokens, client_id, &request, lifetimes)
        } else {
            let refresh_token = form("refresh_token").ok_or_else(|| missing("refresh_token"))?;
            state
                .grants
                .refresh(&mut state.tokens, client_id, &refresh_token, lifetimes)
        }
    })
}

/// The scopes to grant for the space-separated `requested` ones (duplicates dropped). As in
/// Hydra, a scope the client may not request refuses the whole request with `invalid_scope`,
/// unless the sandbox is set to leave such scopes out of the grant instead.
fn grant_scopes(state: &State, requested: &str) -> Result<Vec<String>, Refusal> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in requested.split(' ') {
        if scope.is_empty() || scopes.iter().any(|granted| granted == scope) {
            continue;
        }
        if !state.allowed_scopes.iter().any(|allowed| allowed == scope) {
            if state.omit_unallowed_scopes {
                continue;
            }
            return Err(OAuthError::InvalidScope.because(format!(
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
fn refuse_encoded_tilde(body: &[u8]) -> Result<(), Refusal> {
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
        "'client_id'" | "'client_secret'" => Err(OAuthError::InvalidClient.because(hint)),
        _ => Err(OAuthError::InvalidRequest.because(hint)),
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
