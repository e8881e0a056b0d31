//! PKCE (RFC 7636) with `S256`: the verifier stays with the app, its SHA-256 goes in the
//! authorize URL, so a code intercepted on its way back is useless without the verifier.
//! `plain` is never used (RFC 9700 section 2.1.1; Hydra refuses it).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::random::random_url_safe;

/// The `code_challenge_method` sent: the only one used.
pub(crate) const CHALLENGE_METHOD: &str = "S256";

/// The shortest verifier RFC 7636 allows, in characters.
pub(crate) const MIN_VERIFIER_LEN: usize = 43;

/// The longest verifier RFC 7636 allows, in characters.
pub(crate) const MAX_VERIFIER_LEN: usize = 128;

/// A fresh verifier: 32 bytes from the OS CSPRNG, base64url (43 characters).
///
/// # Panics
///
/// If the operating system cannot provide random bytes (see [`random_url_safe`]).
pub(crate) fn new_verifier() -> SecretString {
    random_url_safe()
}

/// `BASE64URL(SHA256(verifier))`, without padding: the `code_challenge` for `S256`.
pub(crate) fn challenge(verifier: &SecretString) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose_secret().as_bytes()))
}

/// Whether `verifier` has RFC 7636's syntax: 43 to 128 characters of
/// `A-Z a-z 0-9 - . _ ~`.
pub(crate) fn is_valid_verifier(verifier: &str) -> bool {
    (MIN_VERIFIER_LEN..=MAX_VERIFIER_LEN).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_rfc_7636_appendix_b() {
        let verifier = SecretString::from("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            challenge(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn fresh_verifiers_have_rfc_7636_syntax() {
        for _ in 0..16 {
            let verifier = new_verifier();
            assert!(is_valid_verifier(verifier.expose_secret()));
            assert_eq!(challenge(&verifier).len(), 43);
        }
    }

    #[test]
    fn verifier_syntax_is_checked() {
        assert!(is_valid_verifier(&"a".repeat(43)));
        assert!(is_valid_verifier(&"-._~".repeat(32)));
        assert!(!is_valid_verifier(&"a".repeat(42)));
        assert!(!is_valid_verifier(&"a".repeat(129)));
        assert!(!is_valid_verifier(&format!("{}+", "a".repeat(42))));
        assert!(!is_valid_verifier(&format!("{}é", "a".repeat(42))));
    }
}
