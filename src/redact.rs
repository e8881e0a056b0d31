//! The one place server text (which may echo the secret or a token) is made safe to keep:
//! [`Secrets::clean`] redacts the secret's forms, the latest tokens and any run of
//! [`MIN_FRAGMENT`] of their characters (ignoring invisible ones), blanks control and
//! invisible characters, and cuts to [`MAX_SERVER_TEXT`].

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::ops::Range;

use base64::Engine as _;
use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};
use url::form_urlencoded::byte_serialize;

/// What replaces a secret or a token in server text.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// The longest piece of server text kept, in characters (e.g. `error_description`).
pub(crate) const MAX_SERVER_TEXT: usize = 300;

/// How much server text is looked at; the rest could not be kept anyway.
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

/// The secrets server text must never carry, their runs hashed into one keyed table (one
/// lookup per run of text, however many secrets).
pub(crate) struct Secrets {
    known: Mutex<Known>,
    hasher: RandomState,
    /// How many runs of text were looked up: the work redaction did.
    #[cfg(test)]
    lookups: std::sync::atomic::AtomicUsize,
}

/// The secrets, with invisible characters removed (text is matched without them).
struct Known {
    credentials: Vec<SecretString>,
    /// The latest tokens, newest last.
    tokens: VecDeque<SecretString>,
    /// How many runs of the secrets above have each hash.
    runs: HashMap<u64, u32>,
    /// The secrets shorter than a run: only the whole of one is matched.
    short: Vec<SecretString>,
}

impl Secrets {
    /// The secret raw, form-encoded (each spelling) and as HTTP Basic credentials.
    pub(crate) fn new(client_id: &str, secret: &str) -> Self {
        let sent = form_encode(secret);
        let encoded: String = byte_serialize(secret.as_bytes()).collect();
        let forms = [
            secret.to_owned(),
            lower_case_escapes(&sent),
            sent,
            lower_case_escapes(&encoded),
            encoded,
            basic_credentials(client_id, secret),
        ];
        let mut visible: Vec<String> = forms.iter().map(|form| without_invisible(form)).collect();
        visible.retain(|form| !form.is_empty());
        visible.sort_unstable();
        visible.dedup();
        let secrets = Secrets::empty();
        {
            let mut known = secrets.known.lock();
            for form in visible {
                let form = SecretString::from(form);
                secrets.add(&mut known, &form, 1);
                known.credentials.push(form);
            }
        }
        secrets
    }

    /// No secrets to redact (a token store's errors), the rest of [`clean`](Self::clean).
    pub(crate) fn empty() -> Self {
        Secrets {
            known: Mutex::new(Known {
                credentials: Vec::new(),
                tokens: VecDeque::with_capacity(REMEMBERED_TOKENS),
                runs: HashMap::new(),
                short: Vec::new(),
            }),
            hasher: RandomState::new(),
            #[cfg(test)]
            lookups: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Remembers a token obtained (or shared), forgetting the oldest beyond [`REMEMBERED_TOKENS`].
    pub(crate) fn remember_token(&self, token: &str) {
        let token = without_invisible(token);
        if token.is_empty() {
            return;
        }
        let mut known = self.known.lock();
        if known.tokens.iter().any(|t| t.expose_secret() == token) {
            return;
        }
        if known.tokens.len() == REMEMBERED_TOKENS {
            if let Some(oldest) = known.tokens.pop_front() {
                self.add(&mut known, &oldest, -1);
            }
        }
        let token = SecretString::from(token);
        self.add(&mut known, &token, 1);
        known.tokens.push_back(token);
    }

    /// Adds (`change` 1) or removes (-1) `secret`'s runs, or the whole of it if it is short.
    fn add(&self, known: &mut Known, secret: &SecretString, change: i32) {
        let text = secret.expose_secret();
        let bounds: Vec<usize> = text
            .char_indices()
            .map(|(at, _)| at)
            .chain([text.len()])
            .collect();
        if bounds.len() <= MIN_FRAGMENT {
            if change > 0 {
                known.short.push(secret.clone());
            } else if let Some(at) = known.short.iter().position(|s| s.expose_secret() == text) {
                known.short.swap_remove(at);
            }
            return;
        }
        for run in bounds.windows(MIN_FRAGMENT + 1) {
            let (Some(&start), Some(&end)) = (run.first(), run.last()) else {
                continue;
            };
            let hash = self.hasher.hash_one(&text[start..end]);
            if change > 0 {
                *known.runs.entry(hash).or_insert(0) += 1;
            } else if let Some(count) = known.runs.get_mut(&hash) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    known.runs.remove(&hash);
                }
            }
        }
    }

    /// Server text made safe to keep (see the module docs); an ellipsis marks a cut.
    pub(crate) fn clean(&self, text: &str) -> String {
        let read: String = text.chars().take(MAX_TEXT_READ).collect();
        let mut hidden = vec![false; read.len()];
        for range in self.find(&read, false) {
            for flag in &mut hidden[range] {
                *flag = true;
            }
        }
        let mut redacted = String::with_capacity(read.len());
        let mut in_secret = false;
        for (at, c) in read.char_indices() {
            if hidden[at] {
                if !in_secret {
                    redacted.push_str(REDACTED);
                }
                in_secret = true;
            } else {
                redacted.push(if is_invisible(c) { ' ' } else { c });
                in_secret = false;
            }
        }
        let mut kept: String = redacted.trim().chars().take(MAX_SERVER_TEXT).collect();
        if redacted.trim().chars().count() > MAX_SERVER_TEXT || text.len() > read.len() {
            kept.push('…');
        }
        kept
    }

    /// Whether `text` holds a secret or a fragment of one.
    pub(crate) fn reveal_any(&self, text: &str) -> bool {
        !self.find(text, true).is_empty()
    }

    /// A token answer's `scope`, if it is at most [`MAX_GRANTED_SCOPES`] RFC 6749 scopes of
    /// at most [`MAX_SCOPE_LEN`] characters, none holding a secret or a fragment of one.
    pub(crate) fn granted_scopes(&self, scope: &str) -> Option<Vec<String>> {
        let mut scopes = Vec::new();
        for scope in scope.split(' ').filter(|s| !s.is_empty()) {
            if scopes.len() == MAX_GRANTED_SCOPES
                || scope.len() > MAX_SCOPE_LEN
                || !scope.bytes().all(is_nqchar)
            {
                return None;
            }
            scopes.push(scope);
        }
        if self.reveal_any(&scopes.join(" ")) {
            return None;
        }
        Some(scopes.into_iter().map(str::to_owned).collect())
    }

    /// How many runs of text redaction has looked up so far.
    #[cfg(test)]
    pub(crate) fn lookups(&self) -> usize {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The byte ranges of `text` holding a secret or a run of one, ignoring invisible
    /// characters; `first_only` stops at the first.
    fn find(&self, text: &str, first_only: bool) -> Vec<Range<usize>> {
        // The visible characters: where each is in `text`, and in `visible`.
        let mut visible = String::with_capacity(text.len());
        let mut places: Vec<(usize, usize)> = Vec::with_capacity(text.len());
        for (at, c) in text.char_indices() {
            if !is_invisible(c) {
                places.push((at, visible.len()));
                visible.push(c);
            }
        }
        // The range in `text` of the visible characters `first..last` (exclusive).
        let span = |first: usize, last: usize| -> Option<Range<usize>> {
            let start = places.get(first)?.0;
            let (at, _) = *places.get(last.checked_sub(1)?)?;
            let end = at + text[at..].chars().next()?.len_utf8();
            Some(start..end)
        };
        let at_visible = |byte: usize| places.binary_search_by_key(&byte, |&(_, v)| v).ok();

        let known = self.known.lock();
        let mut found = Vec::new();
        for short in &known.short {
            for (byte, matched) in visible.match_indices(short.expose_secret()) {
                let first = at_visible(byte);
                let last = at_visible(byte + matched.len()).unwrap_or(places.len());
                if let Some(range) = first.and_then(|first| span(first, last)) {
                    found.push(range);
                    if first_only {
                        return found;
                    }
                }
            }
        }
        if known.runs.is_empty() {
            return found;
        }
        for first in 0..places.len().saturating_sub(MIN_FRAGMENT - 1) {
            let last = first + MIN_FRAGMENT;
            let start = places[first].1;
            let end = places.get(last).map_or(visible.len(), |&(_, v)| v);
            #[cfg(test)]
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if known
                .runs
                .contains_key(&self.hasher.hash_one(&visible[start..end]))
            {
                if let Some(range) = span(first, last) {
                    found.push(range);
                    if first_only {
                        return found;
                    }
                }
            }
        }
        found
    }
}

/// `text` without its invisible characters.
fn without_invisible(text: &str) -> String {
    text.chars().filter(|&c| !is_invisible(c)).collect()
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

/// `base64(urlencode(id) ":" urlencode(secret))`: HTTP Basic per RFC 6749 section 2.3.1.
pub(crate) fn basic_credentials(client_id: &str, secret: &str) -> String {
    let (id, secret) = (form_encode(client_id), form_encode(secret));
    base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
}

/// `value` form-urlencoded, but with `~` literal (RFC 3986 unreserved): Understory's auth
/// server refuses `%7E` (issue 18).
pub(crate) fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for piece in byte_serialize(value.as_bytes()) {
        // `byte_serialize` yields `%7E` as one piece, and never a `%` that is not an escape.
        out.push_str(if piece == "%7E" { "~" } else { piece });
    }
    out
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

/// The OAuth2 `error` code if it is `1*NQSCHAR` (at most [`MAX_ERROR_CODE`]) and holds no
/// secret; `None` makes the answer one without an OAuth2 error.
pub(crate) fn oauth_error_code(secrets: &Secrets, code: &str) -> Option<String> {
    let valid = !code.is_empty()
        && code.len() <= MAX_ERROR_CODE
        && code.bytes().all(is_nqschar)
        && !secrets.reveal_any(code);
    valid.then(|| code.to_owned())
}

/// The registered name of a refused `token_type` (IANA's, and `mac`), or a fixed text.
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
    use crate::credentials::{ClientAuthMethod, Credentials};

    const SECRET: &str = "sbx.Secret~with_odd-chars1";

    fn secrets(method: ClientAuthMethod) -> Secrets {
        let credentials = Credentials::new("my client", SECRET).with_auth_method(method);
        Secrets::new(credentials.client_id(), credentials.client_secret())
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

    /// Issue 19: invisible characters inside an echoed secret do not hide it: it is matched
    /// with them removed, and the whole range it spans in the original is blanked.
    #[test]
    fn a_secret_broken_up_by_invisible_characters_is_redacted() {
        let secrets = secrets(ClientAuthMethod::ClientSecretPost);
        let token = "ory_at_Q7vX2kLm9pZtJ4hN8bVc3xRq";
        secrets.remember_token(token);
        for (whole, c) in [(SECRET, '\u{ad}'), (token, '\u{ad}'), (SECRET, '\u{200b}')] {
            let mut broken = String::new();
            for (n, part) in whole.as_bytes().chunks(7).enumerate() {
                if n > 0 {
                    broken.push(c);
                }
                broken.push_str(std::str::from_utf8(part).unwrap());
            }
            let clean = secrets.clean(&format!("got <{broken}> here\u{ad}!"));
            assert_eq!(
                clean,
                "got <[REDACTED]> here !",
                "{whole} with U+{:04X}",
                u32::from(c)
            );
            // A part of 8 visible characters, split by an invisible one, is still a part.
            let part = format!("{}{c}{}", &whole[2..6], &whole[6..10]);
            assert_eq!(secrets.clean(&format!("[{part}]")), "[[REDACTED]]");
        }
        // Invisible characters that split no secret still become spaces.
        assert_eq!(secrets.clean("a\u{ad}b\u{200b}c"), "a b c");
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
