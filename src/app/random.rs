//! Unguessable values for the authorization step (`state`, the PKCE verifier): bytes from the
//! operating system's CSPRNG (`getrandom`), base64url without padding.
//!
//! Never `fastrand`: the crate uses it for jitter, where predictability does not matter;
//! here a guessable value would let an attacker forge a callback or redeem a stolen code.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use secrecy::zeroize::Zeroize as _;

/// How many random bytes `state` and the PKCE verifier each hold: 256 bits, the 43
/// base64url characters RFC 7636 section 4.1 recommends for the verifier.
pub(crate) const RANDOM_BYTES: usize = 32;

/// [`RANDOM_BYTES`] from the OS CSPRNG, base64url without padding (43 characters of
/// `A-Z a-z 0-9 - _`).
///
/// # Panics
///
/// If the operating system cannot provide random bytes (no `getrandom` system call and no
/// readable `/dev/urandom`): an authorization cannot be made safe without them, and no
/// weaker source is used instead.
pub(crate) fn random_url_safe() -> SecretString {
    let mut bytes = [0u8; RANDOM_BYTES];
    if let Err(err) = getrandom::fill(&mut bytes) {
        panic!(
            "the operating system's random number generator failed ({err}): cannot start an authorization safely"
        );
    }
    let encoded = URL_SAFE_NO_PAD.encode(bytes);
    bytes.zeroize();
    SecretString::from(encoded)
}

/// Whether `value` is made of base64url characters only (`A-Z a-z 0-9 - _`).
pub(crate) fn is_url_safe(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn values_are_43_url_safe_characters_and_differ() {
        let values: Vec<SecretString> = (0..64).map(|_| random_url_safe()).collect();
        for value in &values {
            let value = value.expose_secret();
            assert_eq!(value.len(), 43, "{value}");
            assert!(is_url_safe(value), "{value}");
            assert_eq!(
                URL_SAFE_NO_PAD.decode(value).map(|b| b.len()),
                Ok(RANDOM_BYTES)
            );
        }
        let mut distinct: Vec<&str> = values.iter().map(|v| v.expose_secret()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), values.len());
    }

    #[test]
    fn url_safe_means_the_base64url_alphabet() {
        assert!(is_url_safe("AZaz09-_"));
        assert!(is_url_safe(""));
        for unsafe_value in ["a+b", "a/b", "a=", "a~", "a.b", "é"] {
            assert!(!is_url_safe(unsafe_value), "{unsafe_value}");
        }
    }
}
