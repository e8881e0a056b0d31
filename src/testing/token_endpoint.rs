//! `POST /oauth2/token`: the `client_credentials` grant as Ory Hydra implements it, and as
//! Understory's server refuses `%7E` (see `refuse_encoded_tilde`).

use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};

use super::body::{RequestBody, form_value};
use super::fault_answers::token_fault;
use super::oauth_error::{OAuthError, Refusal};
use super::recorded::RecordedRequest;
use super::response::{SandboxResponse, hydra_json};
use super::state::{Config, Shared, State};
use super::tokens::Issued;
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
    if let Some(fault) = shared.with(|state| state.token_faults.next()) {
        return token_fault(fault, shared, recorded).await;
    }
    match grant(shared, head, body) {
        Ok(issued) => hydra_json(StatusCode::OK, &issued.answer("bearer")),
        Err(refusal) => refusal.response(),
    }
}

/// Hydra's checks, in about the order Hydra makes them; issues a token if all pass.
fn grant(shared: &Shared, head: &Parts, body: RequestBody) -> Result<Issued, Refusal> {
    use OAuthError::{InvalidRequest, UnsupportedGrantType};
    if head.method != Method::POST {
        let hint = format!("HTTP method is '{}', expected 'POST'.", head.method);
        return Err(InvalidRequest.because(hint));
    }
    if !is_form(&head.headers) {
        let hint = "The request body must be application/x-www-form-urlencoded.";
        return Err(InvalidRequest.because(hint));
    }
    let body = body.map_err(|error| InvalidRequest.because(error.message()))?;
    refuse_encoded_tilde(&body)?;
    let form = |key: &str| form_value(&body, key);

    let grant_type = form("grant_type").unwrap_or_default();
    if grant_type.is_empty() {
        return Err(InvalidRequest.because("Request parameter 'grant_type' is missing"));
    }
    authenticate(&shared.config, &head.headers, &body)?;
    if grant_type != "client_credentials" {
        return Err(UnsupportedGrantType.because(format!(
            "The sandbox supports only the 'client_credentials' grant, not '{grant_type}'."
        )));
    }

    let requested = form("scope").unwrap_or_default();
    let scopes = shared.with(|state| grant_scopes(state, &requested))?;

    let audience = form("audience");
    if audience.as_deref() != Some(AUDIENCE) {
        return Err(InvalidRequest.because(match audience {
            Some(audience) => format!(
                "Requested audience '{audience}' has not been whitelisted by the OAuth 2.0 Client."
            ),
            None => format!("Request parameter 'audience' is missing; it must be '{AUDIENCE}'."),
        }));
    }

    Ok(shared.with(|state| state.issue_key_token(scopes)))
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

/// Checks the client's credentials, sent the way the client is registered for.
fn authenticate(config: &Config, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    use OAuthError::InvalidClient;
    let basic = headers
        .get(AUTHORIZATION)
        .filter(|value| basic_auth::is_basic(value));
    let body_secret = form_value(body, "client_secret");
    match (config.client_auth, basic, body_secret) {
        (_, Some(_), Some(_)) => Err(InvalidClient.because(
            "Client credentials were sent both in the Authorization header and in the request \
             body.",
        )),
        (_, None, None) => Err(InvalidClient.because("No client credentials were sent.")),
        (ClientAuthMethod::ClientSecretPost, None, Some(secret)) => {
            let client_id = form_value(body, "client_id").unwrap_or_default();
            check_credentials(config, &client_id, &secret)
        }
        (ClientAuthMethod::ClientSecretBasic, Some(header), None) => {
            let credentials = basic_auth::parse(header).ok_or_else(|| {
                InvalidClient
                    .because("The Authorization header is not valid HTTP Basic authentication.")
            })?;
            check_credentials(config, &credentials.client_id, &credentials.client_secret)
        }
        (ClientAuthMethod::ClientSecretPost, Some(_), None)
        | (ClientAuthMethod::ClientSecretBasic, None, Some(_)) => {
            Err(wrong_method(config.client_auth))
        }
    }
}

fn check_credentials(config: &Config, client_id: &str, client_secret: &str) -> Result<(), Refusal> {
    if client_id != config.client_id {
        let hint = "The requested OAuth 2.0 Client does not exist.";
        return Err(OAuthError::InvalidClient.because(hint));
    }
    if client_secret != config.client_secret {
        let hint = "The provided client secret did not match.";
        return Err(OAuthError::InvalidClient.because(hint));
    }
    Ok(())
}

fn wrong_method(registered: ClientAuthMethod) -> Refusal {
    let (registered, used) = match registered {
        ClientAuthMethod::ClientSecretPost => ("client_secret_post", "client_secret_basic"),
        ClientAuthMethod::ClientSecretBasic => ("client_secret_basic", "client_secret_post"),
    };
    OAuthError::InvalidClient.because(format!(
        "The OAuth 2.0 Client supports client authentication method '{registered}', but method \
         '{used}' was requested. You must configure the OAuth 2.0 client's \
         'token_endpoint_auth_method' value to accept '{used}'."
    ))
}
