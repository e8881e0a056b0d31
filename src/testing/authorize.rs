//! `GET /oauth2/auth`: the authorization code flow's first step as Hydra checks it, with the
//! login and consent screens replaced by an answer at once: approval as a company, or decline.
//!
//! The company is the `sandbox_company` cookie's (percent-encoded id) or the first; the
//! `sandbox_consent=decline` cookie, or [`set_decline_consent`](super::SandboxServer::set_decline_consent),
//! declines. [`SandboxServer::consent`](super::SandboxServer::consent) sends these cookies.

use http::header::{COOKIE, LOCATION};
use http::request::Parts;
use http::{HeaderMap, StatusCode};

use super::AUDIENCE;
use super::body::form_value;
use super::clients::Client;
use super::grants::Approval;
use super::oauth_error::{OAuthError, Refusal};
use super::response::{self, SandboxResponse, with_dynamic_header};
use super::state::Shared;

/// The cookie that names the company that consents.
pub(crate) const COMPANY_COOKIE: &str = "sandbox_company";

/// The cookie that, as `decline`, makes the company decline.
pub(crate) const CONSENT_COOKIE: &str = "sandbox_consent";

/// The shortest `state` Hydra accepts.
const MIN_STATE_LEN: usize = 8;

/// Answers an authorize request: a 302 to the redirect URI (with a code or an error), or,
/// when the client or the redirect URI is wrong, an error page and no redirect.
pub(crate) fn handle(shared: &Shared, head: &Parts) -> SandboxResponse {
    let query = head.uri.query().unwrap_or_default().as_bytes();
    let param = |key: &str| form_value(query, key);
    let page = |refusal: Refusal| refusal.response();
    let Some(app) = param("client_id").and_then(|id| shared.config.app(&id)) else {
        let hint = "The requested OAuth 2.0 Client does not exist.";
        return page(OAuthError::InvalidClient.because(hint));
    };
    let sent_uri = param("redirect_uri");
    let redirect_uri = match (&sent_uri, app.redirect_uris.as_slice()) {
        (None, [only]) => only,
        (Some(sent), registered) if registered.contains(sent) => sent,
        _ => {
            let hint = "The 'redirect_uri' parameter does not match any of the OAuth 2.0 \
                        Client's pre-registered redirect urls.";
            return page(OAuthError::InvalidRequest.because(hint));
        }
    };
    let state = param("state");
    let answer = match approve(shared, app, head, &param) {
        Ok(Some(approval)) => {
            let scope = approval.scopes.join(" ");
            let approval = Approval {
                redirect_uri: sent_uri.clone(),
                ..approval
            };
            let code = shared.with(|s| s.grants.approve(approval));
            vec![("code", code), ("scope", scope)]
        }
        Ok(None) => {
            let declined =
                OAuthError::AccessDenied.because("The resource owner denied the request.");
            error_pairs(&declined)
        }
        Err(Ok(refusal)) => error_pairs(&refusal),
        Err(Err(refusal)) => return page(refusal),
    };
    let Ok(mut location) = url::Url::parse(redirect_uri) else {
        let hint = "The registered redirect URI is not a URL.";
        return page(OAuthError::ServerError.because(hint));
    };
    {
        let mut pairs = location.query_pairs_mut();
        for (key, value) in &answer {
            pairs.append_pair(key, value);
        }
        if let Some(state) = &state {
            pairs.append_pair("state", state);
        }
    }
    with_dynamic_header(
        response::empty(StatusCode::FOUND),
        LOCATION,
        location.as_str(),
    )
}

/// Hydra's checks of the request, then the company's answer: `Ok(None)` if it declines.
/// `Err(Ok(_))` is an error for the redirect URI, `Err(Err(_))` one for an error page.
fn approve(
    shared: &Shared,
    app: &Client,
    head: &Parts,
    param: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Approval>, Result<Refusal, Refusal>> {
    use OAuthError::{InvalidRequest, InvalidScope, InvalidState, UnsupportedResponseType};
    let redirect = |error: OAuthError, hint: String| Err(Ok(error.because(hint)));
    let response_type = param("response_type").unwrap_or_default();
    if response_type != "code" {
        let hint =
            format!("The sandbox supports response_type 'code' only, not '{response_type}'.");
        return redirect(UnsupportedResponseType, hint);
    }
    if param("state").is_none_or(|state| state.chars().count() < MIN_STATE_LEN) {
        let hint = "Request parameter 'state' must be at least be 8 characters long to ensure \
                    sufficient entropy.";
        return redirect(InvalidState, hint.to_owned());
    }
    let requested = param("scope").unwrap_or_default();
    let mut scopes: Vec<String> = Vec::new();
    for scope in requested.split(' ').filter(|scope| !scope.is_empty()) {
        if !app.scopes.iter().any(|allowed| allowed == scope) {
            let hint = format!("The OAuth 2.0 Client is not allowed to request scope '{scope}'.");
            return redirect(InvalidScope, hint);
        }
        if !scopes.iter().any(|granted| granted == scope) {
            scopes.push(scope.to_owned());
        }
    }
    let audience = param("audience").unwrap_or_default();
    if let Some(other) = audience
        .split(' ')
        .find(|a| !a.is_empty() && *a != AUDIENCE)
    {
        let hint = format!(
            "Requested audience '{other}' has not been whitelisted by the OAuth 2.0 Client."
        );
        return redirect(InvalidRequest, hint);
    }
    let Some(challenge) = param("code_challenge").filter(|challenge| !challenge.is_empty()) else {
        let hint = "Clients must include a code_challenge when performing the authorize code \
                    flow, but it is missing.";
        return redirect(InvalidRequest, hint.to_owned());
    };
    if param("code_challenge_method").as_deref() != Some("S256") {
        let hint = "Clients must use code_challenge_method=S256, plain is not allowed.";
        return redirect(InvalidRequest, hint.to_owned());
    }

    let declines = cookie(&head.headers, CONSENT_COOKIE).is_some_and(|value| value == "decline");
    if declines || shared.with(|state| state.decline_consent) {
        return Ok(None);
    }
    let company_id = cookie(&head.headers, COMPANY_COOKIE);
    let company = match &company_id {
        None => shared.config.key_company(),
        Some(id) => shared.config.company(id).ok_or_else(|| {
            Err(InvalidRequest.because(format!("The sandbox knows no company '{id}'.")))
        })?,
    };
    Ok(Some(Approval {
        client_id: app.id.clone(),
        redirect_uri: None,
        challenge,
        company_id: company.id.clone(),
        scopes,
    }))
}

/// `error` and `error_description` for the redirect URI.
fn error_pairs(refusal: &Refusal) -> Vec<(&'static str, String)> {
    let (code, ..) = refusal.error.parts();
    vec![
        ("error", code.to_owned()),
        ("error_description", refusal.description()),
    ]
}

/// The value of cookie `name`, percent-decoded.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let cookies = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok());
    let mut pairs = cookies.flat_map(|header| header.split(';'));
    let value = pairs.find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })?;
    let decoded = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .ok()?;
    Some(decoded.into_owned())
}
