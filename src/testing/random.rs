//! Random secrets and tokens shaped like the ones Understory's Hydra makes.

/// The characters of Hydra's tokens: URL-safe base64.
const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// How many random characters follow a token's prefix.
const TOKEN_RANDOM_CHARS: usize = 43;

/// `len` characters drawn from `alphabet`.
fn random_chars(alphabet: &[u8], len: usize) -> impl Iterator<Item = char> + '_ {
    (0..len).map(move |_| char::from(alphabet[fastrand::usize(..alphabet.len())]))
}

/// A client secret as Understory's Hydra generates them: 26 characters drawn from
/// `a-zA-Z0-9_-.~`, here always with at least one `~` (which Understory's server refuses
/// percent-encoded, see the token endpoint), at a random place.
pub(crate) fn random_client_secret() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.~";
    const LEN: usize = 26;
    let mut secret: Vec<char> = random_chars(ALPHABET, LEN).collect();
    if !secret.contains(&'~') {
        secret[fastrand::usize(..LEN)] = '~';
    }
    secret.into_iter().collect()
}

/// An opaque token like Hydra's: `prefix` (e.g. `ory_at_`) and 43 URL-safe characters.
pub(crate) fn random_token(prefix: &str) -> String {
    let mut token = String::with_capacity(prefix.len() + TOKEN_RANDOM_CHARS);
    token.push_str(prefix);
    token.extend(random_chars(TOKEN_ALPHABET, TOKEN_RANDOM_CHARS));
    token
}
