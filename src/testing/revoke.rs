//! `POST /oauth2/revoke` (RFC 7009) as Hydra answers it: a client revokes one of its tokens,
//! and with an app's refresh or access token the whole grant; unknown tokens answer 200.

use http::StatusCode;
use http::request::Parts;

use super::body::{RequestBody, form_value};
use super::oauth_error::{OAuthError, Refusal};
use super::response::{self, SandboxResponse};
use super::state::Shared;
use super::token_endpoint::form_post;

/// Answers a revocation request: 200 with an empty body, or Hydra's error.
pub(crate) fn handle(shared: &Shared, head: &Parts, body: RequestBody) -> SandboxResponse {
    match revoke(shared, head, body) {
        Ok(()) => response::empty(StatusCode::OK),
        Err(refusal) => refusal.response(),
    }
}

fn revoke(shared: &Shared, head: &Parts, body: RequestBody) -> Result<(), Refusal> {
    let body = form_post(head, body)?;
    let client = shared.config.authenticate(&head.headers, &body)?;
    let token = form_value(&body, "token").filter(|token| !token.is_empty());
    let Some(token) = token else {
        let hint = "Request parameter 'token' is missing.";
        return Err(OAuthError::InvalidRequest.because(hint));
    };
    shared.with(|state| {
        if state
            .grants
            .revoke_token(&mut state.tokens, &client.id, &token)?
        {
            return Ok(());
        }
        // A token of no grant: the integration key's.
        let owner = state
            .tokens
            .owner(&token)
            .map(|owner| owner.client_id == client.id);
        match owner {
            Some(true) => state.tokens.revoke(&token),
            Some(false) => {
                let hint = "The token was not issued to the client making the revocation request.";
                return Err(OAuthError::UnauthorizedClient.because(hint));
            }
            None => {}
        }
        Ok(())
    })
}
