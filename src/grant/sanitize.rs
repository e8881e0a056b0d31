//! Whatever the token endpoint sends is untrusted text: this is the one place it is made safe
//! to keep in an [`Error`](crate::Error) or a log line.
//!
//! Some servers, and proxies in front of them, echo what they received: the form (with
//! `client_secret`), the `Authorization` header, or a token. So every piece of server text
//! the crate keeps goes through [`Secrets::clean`]:
//!
//! - the client secret (raw, form-encoded, and the Basic `id:secret` credentials) and every
//!   access token this grant obtained (the latest [`REMEMBERED_TOKENS`]) are replaced by
//!   [`REDACTED`], and so is any run of at least [`MIN_FRAGMENT`] characters of them (a
//!   server may cut an echo short in the middle of a secret);
//! - control characters, and the invisible or line-breaking ones (Unicode categories Cc, Cf,
//!   Co, Cn, Zl, Zp: bidi overrides, zero-width characters, U+2028, ...) become spaces, so the
//!   text can neither forge log lines nor hide what it says;
//! - the result is at most [`MAX_SERVER_TEXT`] characters.
//!
//! The OAuth2 `error` code is kept only if it has RFC 6749's syntax ([`oauth_error_code`]),
//! the granted `scope` only if every scope does ([`Secrets::granted_scopes`]); a refused
//! `token_type` is named only if it is a registered type ([`registered_token_type`]);
//! `error_uri`, error pages and headers other than `Retry-After` are never kept.

use std::collections::VecDeque;

use base64::Engine as _;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};
use url::form_urlencoded::byte_serialize;

use crate::credentials::Credentials;

/// What replaces a secret or a token in server text.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// The longest piece of server text kept, in characters (e.g. `error_description`).
pub(crate) const MAX_SERVER_TEXT: usize = 300;

/// How much server text is looked at before redaction; the rest could not be kept anyway.
const MAX_TEXT_READ: usize = 4 * MAX_SERVER_TEXT;

/// The shortest run of a secret's characters that is redacted wherever it appears.
pub(crate) const MIN_FRAGMENT: usize = 8;

/// How many of the tokens this grant obtained are remembered for redaction.
pub(crate) const REMEMBERED_TOKENS: usize = 16;

/// The longest OAuth2 `error` code accepted (every registered one has fewer than 30).
pub(crate) const MAX_ERROR_CODE: usize = 64;

/// The most scopes accepted in a token answer's `scope`.
pub(crate) const MAX_GRANTED_SCOPES: usize = 64;

/// The longest single scope accepted in a token answer's `scope`.
pub(crate) const MAX_SCOPE_LEN: usize = 128;

/// The secrets server text must never carry into an error or a log: the client secret in
/// every form it is sent in, and the tokens this grant obtained.
pub(crate) struct Secrets {
    /// The client secret, raw and as it goes over the wire.
    credentials: Vec<SecretString>,
    /// The latest tokens, newest last.
    tokens: Mutex<VecDeque<SecretString>>,
}

impl Secrets {
    /// The forms of `credentials`' secret that go over the wire: raw, form-encoded (with
    /// upper- and lower-case escapes), and the base64 credentials of HTTP Basic (whatever
    /// the method: they reveal the secret to anyone who decodes them).
    pub(crate) fn new(credentials: &Credentials) -> Self {
        let secret = credentials.client_secret();
        let encoded: String = byte_serialize(secret.as_bytes()).collect();
        let mut forms = vec![
            secret.to_owned(),
            lower_case_escapes(&encoded),
            encoded,
            basic_credentials(credentials.client_id(), secret),
        ];
        forms.retain(|form| !form.is_empty());
        forms.dedup();
        Secrets {
            credentials: forms.into_iter().map(SecretString::from).collect(),
            tokens: Mutex::new(VecDeque::with_capacity(REMEMBERED_TOKENS)),
        }
    }

    /// No secrets to redact: for text that cannot hold the client's (a token store's errors),
    /// which still needs the rest of [`clean`](Self::clean).
    #[cfg(feature = "shared-cache")]
    pub(crate) fn empty() -> Self {
        Secrets {
            credentials: Vec::new(),
            tokens: Mutex::new(VecDeque::new()),
        }
    }

    /// Remembers a token this grant obtained, forgetting the oldest beyond
    /// [`REMEMBERED_TOKENS`].
    pub(crate) fn remember_token(&self, token: &str) {
        let mut tokens = self.tokens.lock();
        if tokens.len() == REMEMBERED_TOKENS {
            tokens.pop_front();
        }
        tokens.push_back(SecretString::from(token));
    }

    /// Server text made safe to keep: secrets and their fragments redacted, control and
    /// invisible characters turned into spaces, trimmed, at most [`MAX_SERVER_TEXT`]
    /// characters (an ellipsis marks a cut).
    pub(crate) fn clean(&self, text: &str) -> String {
        let read: String = text.chars().take(MAX_TEXT_READ).collect();
        let visible: String = read
            .chars()
            .map(|c| if is_invisible(c) { ' ' } else { c })
            .collect();
        let redacted = self.redact(&visible);
        let mut kept: String = redacted.trim().chars().take(MAX_SERVER_TEXT).collect();
        if redacted.trim().chars().count() > MAX_SERVER_TEXT || text.len() > read.len() {
            kept.push('…');
        }
        kept
    }

    /// Whether `text` holds a secret or a fragment of one.
    pub(crate) fn reveal_any(&self, text: &str) -> bool {
        self.redact(text) != text
    }

    /// The scopes of a token answer's `scope` if it is usable: at most
    /// [`MAX_GRANTED_SCOPES`] scopes separated by spaces, each at most [`MAX_SCOPE_LEN`]
    /// characters of RFC 6749's `scope-token` syntax, none holding a secret. `None` otherwise.
    pub(crate) fn granted_scopes(&self, scope: &str) -> Option<Vec<String>> {
        let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
        let usable = scopes.len() <= MAX_GRANTED_SCOPES
            && scopes.iter().all(|scope| {
                scope.len() <= MAX_SCOPE_LEN
                    && scope.bytes().all(is_nqchar)
                    && !self.reveal_any(scope)
            });
        usable.then(|| scopes.into_iter().map(str::to_owned).collect())
    }

    /// `text` with every secret, and every run of [`MIN_FRAGMENT`] or more characters of
    /// one, replaced by [`REDACTED`].
    fn redact(&self, text: &str) -> String {
        let tokens = self.tokens.lock();
        let secrets = self.credentials.iter().chain(tokens.iter());
        // Which bytes of `text` belong to a secret.
        let mut hidden = vec![false; text.len()];
        for secret in secrets {
            let secret = secret.expose_secret();
            let bounds: Vec<usize> = secret
                .char_indices()
                .map(|(at, _)| at)
                .chain([secret.len()])
                .collect();
            if bounds.len() <= MIN_FRAGMENT {
                // Shorter than a fragment: only the whole of it.
                mark_all(text, secret, &mut hidden);
            }
            for window in bounds.windows(MIN_FRAGMENT + 1) {
                if let (Some(&start), Some(&end)) = (window.first(), window.last()) {
                    mark_all(text, &secret[start..end], &mut hidden);
                }
            }
        }
        drop(tokens);
        let mut out = String::with_capacity(text.len());
        let mut in_secret = false;
        for (at, c) in text.char_indices() {
            if hidden[at] {
                if !in_secret {
                    out.push_str(REDACTED);
                }
                in_secret = true;
            } else {
                out.push(c);
                in_secret = false;
            }
        }
        out
    }
}

/// Marks the bytes of every occurrence of `needle` in `text` as hidden.
fn mark_all(text: &str, needle: &str, hidden: &mut [bool]) {
    if needle.is_empty() {
        return;
    }
    for (at, found) in text.match_indices(needle) {
        for flag in hidden.iter_mut().skip(at).take(found.len()) {
            *flag = true;
        }
    }
}

/// Form-encoded text with its `%XX` escapes in lower case, as some encoders write them.
fn lower_case_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_digits_left = 0;
    for c in encoded.chars() {
        if hex_digits_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_digits_left -= 1;
        } else {
            out.push(c);
            if c == '%' {
                hex_digits_left = 2;
            }
        }
    }
    out
}

/// `base64(urlencode(id) ":" urlencode(secret))`: what HTTP Basic carries (RFC 6749 section
/// 2.3.1).
pub(crate) fn basic_credentials(client_id: &str, secret: &str) -> String {
    let id: String = byte_serialize(client_id.as_bytes()).collect();
    let secret: String = byte_serialize(secret.as_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
}

/// Control, format, private-use, unassigned, line and paragraph separator characters.
fn is_invisible(c: char) -> bool {
    c.general_category_group() == GeneralCategoryGroup::Other
        || matches!(
            c.general_category(),
            GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator
        )
}

/// RFC 6749 appendix A: `NQCHAR = %x21 / %x23-5B / %x5D-7E`.
fn is_nqchar(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E)
}

/// RFC 6749 appendix A: `NQSCHAR = %x20-21 / %x23-5B / %x5D-7E`.
fn is_nqschar(b: u8) -> bool {
    b == b' ' || is_nqchar(b)
}

/// The OAuth2 `error` code if it has RFC 6749's syntax (`1*NQSCHAR`, here at most
/// [`MAX_ERROR_CODE`] characters) and holds no secret; `None` otherwise, and the answer is
/// then treated as one without an OAuth2 error.
pub(crate) fn oauth_error_code(secrets: &Secrets, code: &str) -> Option<String> {
    let valid = !code.is_empty()
        && code.len() <= MAX_ERROR_CODE
        && code.bytes().all(is_nqschar)
        && !secrets.reveal_any(code);
    valid.then(|| code.to_owned())
}

/// The registered name of a refused `token_type` (IANA's OAuth Access Token Types, and
/// `mac`), or a fixed text: the server's own text is never kept.
pub(crate) fn registered_token_type(token_type: &str) -> String {
    const REGISTERED: [&str; 5] = ["Bearer", "N_A", "PoP", "DPoP", "mac"];
    REGISTERED
        .iter()
        .find(|name| name.eq_ignore_ascii_case(token_type.trim()))
        .map_or("an unregistered type (not shown)", |name| name)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::ClientAuthMethod;

    const SECRET: &str = "sbx.Secret~with_odd-chars1";

    fn secrets(method: ClientAuthMethod) -> Secrets {
        Secrets::new(&Credentials::new("my client", SECRET).with_auth_method(method))
    }

    #[test]
    fn every_form_of_the_secret_is_redacted() {
        let secrets = secrets(ClientAuthMethod::ClientSecretBasic);
        let encoded: String = byte_serialize(SECRET.as_bytes()).collect();
        let basic = basic_credentials("my client", SECRET);
        for echoed in [
            format!("client_secret={SECRET}&x=1"),
            format!("client_secret={encoded}"),
            format!("client_secret={}", encoded.to_lowercase()),
            format!("Authorization: Basic {basic}"),
            format!("cut short: {}", &SECRET[..12]),
            format!("cut short: {}", &SECRET[SECRET.len() - 9..]),
            format!("{}\u{200b}{}", &SECRET[..10], &SECRET[10..]),
        ] {
            let clean = secrets.clean(&echoed);
            assert!(clean.contains(REDACTED), "{echoed} -> {clean}");
            for at in 0..=SECRET.len() - MIN_FRAGMENT {
                let fragment = &SECRET[at..at + MIN_FRAGMENT];
                assert!(!clean.contains(fragment), "{echoed} -> {clean}");
            }
            assert!(!clean.contains(&basic[4..4 + MIN_FRAGMENT]), "{clean}");
        }
        assert_eq!(
            secrets.clean(&format!("a {SECRET} b {SECRET}{SECRET}")),
            "a [REDACTED] b [REDACTED]"
        );
    }

    #[test]
    fn remembered_tokens_are_redacted_and_the_oldest_forgotten() {
        let secrets = secrets(ClientAuthMethod::ClientSecretPost);
        let first = "ory_at_FirstTokenQwErTy";
        secrets.remember_token(first);
        assert_eq!(secrets.clean(first), REDACTED);
        let token = |n: usize| format!("ory_at_{n:04}zzzzzzzz");
        for n in 0..REMEMBERED_TOKENS {
            secrets.remember_token(&token(n));
        }
        assert_eq!(secrets.clean(&token(0)), REDACTED);
        assert_eq!(secrets.clean(&format!("<{}>", token(3))), "<[REDACTED]>");
        // The first fell out.
        assert_eq!(secrets.clean(first), first);
    }

    #[test]
    fn ordinary_text_is_kept() {
        let secrets = secrets(ClientAuthMethod::ClientSecretPost);
        let text = "The OAuth 2.0 Client is not allowed to request scope 'booking.write'.";
        assert_eq!(secrets.clean(text), text);
    }

    #[test]
    fn invisible_and_line_breaking_characters_become_spaces() {
        let secrets = secrets(ClientAuthMethod::ClientSecretPost);
        for c in [
            '\n',
            '\r',
            '\u{1b}',
            '\u{7f}',
            '\u{85}',
            '\u{200b}',
            '\u{200e}',
            '\u{202e}',
            '\u{2066}',
            '\u{2028}',
            '\u{2029}',
            '\u{feff}',
            '\u{e000}',
            '\u{e0041}',
            '\u{ad}',
        ] {
            let clean = secrets.clean(&format!("a{c}b"));
            assert_eq!(clean, "a b", "U+{:04X}", u32::from(c));
        }
        assert_eq!(secrets.clean("  café ✓ "), "café ✓");
    }

    #[test]
    fn text_is_bounded() {
        let secrets = secrets(ClientAuthMethod::ClientSecretPost);
        let clean = secrets.clean(&"x".repeat(100_000));
        assert_eq!(clean.chars().count(), MAX_SERVER_TEXT + 1);
        assert!(clean.ends_with('…'));
        assert_eq!(
            secrets.clean(&"x".repeat(MAX_SERVER_TEXT)).chars().count(),
            MAX_SERVER_TEXT
        );
    }

    #[test]
    fn error_codes_need_rfc_6749_syntax() {
        let secrets = secrets(ClientAuthMethod::ClientSecretPost);
        assert_eq!(
            oauth_error_code(&secrets, "invalid_client").as_deref(),
            Some("invalid_client")
        );
        for refused in [
            "",
            "quote\"",
            "back\\slash",
            "line\nbreak",
            "caf\u{e9}",
            "bidi\u{202e}",
            &"x".repeat(MAX_ERROR_CODE + 1),
            &format!("client_secret={SECRET}"),
        ] {
            assert_eq!(oauth_error_code(&secrets, refused), None, "{refused:?}");
        }
    }

    #[test]
    fn granted_scopes_need_rfc_6749_syntax_and_bounds() {
        let secrets = secrets(ClientAuthMethod::ClientSecretPost);
        assert_eq!(
            secrets.granted_scopes(" openid  booking.read "),
            Some(vec!["openid".to_owned(), "booking.read".to_owned()])
        );
        assert_eq!(secrets.granted_scopes(""), Some(vec![]));
        let too_many = vec!["s"; MAX_GRANTED_SCOPES + 1].join(" ");
        for refused in [
            "openid\u{1b}[31m",
            "openid \u{202e}daer.gnikoob",
            "openid\tbooking.read",
            "quo\"te",
            &"x".repeat(MAX_SCOPE_LEN + 1),
            &too_many,
            &format!("openid client_secret={SECRET}"),
        ] {
            assert_eq!(secrets.granted_scopes(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn only_registered_token_types_are_named() {
        assert_eq!(registered_token_type(" MAC "), "mac");
        assert_eq!(registered_token_type("dpop"), "DPoP");
        let unregistered = registered_token_type(&format!("client_secret={SECRET}"));
        assert!(!unregistered.contains(SECRET) && unregistered.contains("not shown"));
    }
}
