//! PKCE (RFC 7636) as Hydra enforces it: `S256` only, verifiers of 43 to 128 characters.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::oauth_error::{OAuthError, Refusal};

/// Checks `verifier` against the `S256` `challenge` of the authorize request.
pub(crate) fn verify(verifier: &str, challenge: &str) -> Result<(), Refusal> {
    let refuse = |hint: &str| Err(OAuthError::InvalidGrant.because(hint));
    if verifier.len() < 43 {
        return refuse("The PKCE code verifier must be at least 43 characters.");
    }
    if verifier.len() > 128 {
        return refuse("The PKCE code verifier can not be longer than 128 characters.");
    }
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if !verifier.bytes().all(unreserved) {
        return refuse(
            "The PKCE code verifier must only contain [a-Z], [0-9], '-', '.', '_', '~'.",
        );
    }
    if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge {
        return refuse("The PKCE code challenge did not match the code verifier.");
    }
    Ok(())
}
