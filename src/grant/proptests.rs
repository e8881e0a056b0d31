//! Property tests of the token answer parser and of the header built from what it accepts:
//! whatever a server sends (any status, any `Retry-After`, any bytes, any JSON), parsing
//! never panics, an accepted token always becomes a valid, sensitive `Bearer <token>` header,
//! a rejection is always a clear error that does not repeat the token, and `expires_in` of
//! any shape yields a lifetime the cache can schedule. And whatever a server echoes (the
//! client secret in any of its forms, a token the crate held) in whichever field, no error
//! and no granted scope carries it, nor control or invisible characters.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use tokio::time::Instant;

use super::{DEFAULT_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME, MIN_TOKEN_LIFETIME, parse_token_response};
use crate::Error;
use crate::credentials::{ClientAuthMethod, Credentials};
use crate::rate_limit::{MAX_RETRY_AFTER, parse_retry_after};
use crate::redact::{
    MAX_GRANTED_SCOPES, MAX_SCOPE_LEN, MAX_SERVER_TEXT, MIN_FRAGMENT, REDACTED, Secrets,
    basic_credentials,
};
use crate::schedule::Schedule;
use crate::token::{AccessToken, GrantedToken};

/// Every token this file generates starts with this, so that an error repeating any token (or
/// its beginning) is recognised whatever the rest of the token is.
const MARK: &str = "Tq7zMARK";

/// The client secret of the properties' credentials: 26 characters as Hydra generates them,
/// with a `~` that form encoding changes.
const SECRET: &str = "pRoP.sEcReT~k3y_26-chars-x";
/// The client id (Basic encodes it with the secret).
const CLIENT_ID: &str = "prop client";

/// The secrets of the properties' credentials, for either client authentication method.
fn secrets_for(method: ClientAuthMethod) -> Secrets {
    {
        let credentials = Credentials::new(CLIENT_ID, SECRET).with_auth_method(method);
        Secrets::new(credentials.client_id(), credentials.client_secret())
    }
}

fn secrets() -> Secrets {
    secrets_for(ClientAuthMethod::ClientSecretPost)
}

/// The scopes the properties pretend were requested.
fn requested() -> Vec<String> {
    vec!["openid".to_owned(), "booking.read".to_owned()]
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Any status code a server can send, with the interesting ones drawn more often.
fn status() -> impl Strategy<Value = StatusCode> {
    prop_oneof![
        4 => Just(200u16),
        1 => prop::sample::select(vec![201u16, 204, 301, 307, 400, 401, 403, 404, 429, 500, 502, 503]),
        2 => 100u16..=999,
    ]
    .prop_map(|code| StatusCode::from_u16(code).expect("100..=999 is a valid status"))
}

fn retry_after() -> impl Strategy<Value = Option<Duration>> {
    prop::option::of(any::<u64>().prop_map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER)))
}

/// A token marked with [`MARK`]: header-safe ones (which must be accepted) and others with
/// spaces, control characters, non-ASCII or quotes (which must be refused).
fn marked_token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[!-~]{0,60}",
        1 => "[A-Za-z0-9._~+/=-]{1,60}",
        2 => any::<String>(),
        1 => "[ -~]{0,20}[\\x00-\\x1f\\x7f ][ -~]{0,20}",
        1 => "\\PC{0,30}",
    ]
    .prop_map(|rest| format!("{MARK}{rest}"))
}

/// `expires_in` in every shape a server might send it: numbers of any size and sign,
/// numeric and non-numeric strings, and values that are not numbers at all.
fn expires_in() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (-10.0f64..100_000.0).prop_map(Value::from),
        any::<i64>().prop_map(|n| Value::String(format!("{n}"))),
        any::<f64>().prop_map(|f| Value::String(format!("{f}"))),
        (any::<f64>(), "[ \t]{0,2}", "[ \t]{0,2}")
            .prop_map(|(f, before, after)| Value::String(format!("{before}{f:e}{after}"))),
        prop::sample::select(vec![
            "inf", "-inf", "+inf", "infinity", "NaN", "-NaN", "nan", "1e400", "-1e400", "0x10", "",
            " ", "3599s", "1_000", "١٢٣", "-0", "+7", ".5", "5.", "1e-400",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        any::<String>().prop_map(Value::String),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Array(vec![Value::from(60)])),
        Just(Value::Object(Map::new())),
    ]
}

/// Any JSON value, nested a few levels, with the token answer's field names as frequent keys.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        marked_token().prop_map(Value::String),
        Just(Value::String("bearer".to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "access_token", "token_type", "expires_in", "scope", "error", "error_description",
            "refresh_token", "id_token",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// An object shaped like a token answer: each field present or not, of the right type or
/// not, plus unknown fields.
fn token_answer() -> impl Strategy<Value = Map<String, Value>> {
    let access_token = prop_oneof![
        6 => marked_token().prop_map(Value::String),
        1 => json(),
    ];
    let token_type = prop_oneof![
        4 => prop::sample::select(vec!["bearer", "Bearer", "BEARER", " bearer ", "\tBeArEr\n"])
            .prop_map(|t| Value::String(t.to_owned())),
        1 => prop::sample::select(vec!["mac", "DPoP", "N_A", "", "bearer bearer"])
            .prop_map(|t| Value::String(t.to_owned())),
        1 => any::<String>().prop_map(Value::String),
        1 => json(),
    ];
    let scope = prop_oneof![
        3 => "( {0,2}[a-z.]{1,12}){0,4} {0,2}".prop_map(Value::String),
        1 => any::<String>().prop_map(Value::String),
        1 => json(),
    ];
    let error = prop_oneof![
        prop::sample::select(vec!["invalid_client", "server_error", "invalid_scope", ""])
            .prop_map(|e| Value::String(e.to_owned())),
        json(),
    ];
    (
        prop::option::weighted(0.9, access_token),
        prop::option::weighted(0.8, token_type),
        prop::option::weighted(0.8, expires_in()),
        prop::option::weighted(0.6, scope),
        prop::option::weighted(0.15, error),
        prop::option::weighted(0.1, any::<String>().prop_map(Value::String)),
        prop::collection::vec((key(), json()), 0..3),
    )
        .prop_map(
            |(access_token, token_type, expires_in, scope, error, description, extra)| {
                let mut map: Map<String, Value> = extra.into_iter().collect();
                let fields = [
                    ("access_token", access_token),
                    ("token_type", token_type),
                    ("expires_in", expires_in),
                    ("scope", scope),
                    ("error", error),
                    ("error_description", description),
                ];
                for (name, value) in fields {
                    match value {
                        Some(value) => map.insert(name.to_owned(), value),
                        None => map.remove(name),
                    };
                }
                map
            },
        )
}

/// Bytes that are almost a token answer: a valid one, cut short, with bytes flipped or
/// inserted.
fn damaged_answer() -> impl Strategy<Value = Vec<u8>> {
    (
        token_answer(),
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<bool>(),
    )
        .prop_map(|(answer, cut, edits, truncate)| {
            let mut bytes = serde_json::to_vec(&Value::Object(answer)).expect("JSON serialises");
            for (at, byte) in edits {
                let at = at.index(bytes.len() + 1);
                if at < bytes.len() && byte % 2 == 0 {
                    bytes[at] = byte;
                } else {
                    bytes.insert(at, byte);
                }
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes
        })
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

/// The token a body carries, if it is an object with a string `access_token`.
fn token_in(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Object(map) => map.get("access_token")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// What every answer must satisfy, accepted or refused.
fn check_answer(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<(), TestCaseError> {
    let outcome = parse_token_response(status, retry_after, body, &requested(), &secrets());
    match (outcome, token_in(body)) {
        (Ok(granted), Some(token)) => check_accepted(status, body, &token, granted),
        (Ok(_), None) => Err(TestCaseError::fail(
            "a token was accepted from a body without a string access_token",
        )),
        (Err(error), token) => check_refused(status, retry_after, &error, token.as_deref()),
    }
}

fn check_accepted(
    status: StatusCode,
    body: &[u8],
    token: &str,
    granted: GrantedToken,
) -> Result<(), TestCaseError> {
    prop_assert!(
        status.is_success(),
        "a token was accepted from HTTP {status}"
    );
    prop_assert_eq!(granted.secret(), token);
    prop_assert!(
        !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
        "an unsendable token was accepted: {:?}",
        token
    );
    let lifetime = granted.lifetime();
    prop_assert!(
        (MIN_TOKEN_LIFETIME..=MAX_TOKEN_LIFETIME).contains(&lifetime),
        "lifetime {lifetime:?} out of bounds"
    );
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Err(TestCaseError::fail(
            "accepted a body that is not a JSON object",
        ));
    };
    // The scopes sent if they are a usable RFC 6749 list, else the requested ones.
    let sent: Option<Vec<String>> = match map.get("scope") {
        Some(Value::String(s)) => Some(
            s.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    };
    let scopes = granted.scopes();
    if sent.as_deref() != Some(scopes) {
        let requested = requested();
        prop_assert_eq!(scopes, requested.as_slice(), "sent {:?}", sent);
    }
    check_scopes(scopes)?;
    check_header(token, granted)
}

/// The header of an accepted token, as the cache hands it out.
fn check_header(token: &str, granted: GrantedToken) -> Result<(), TestCaseError> {
    let now = Instant::now();
    let access = AccessToken::new(
        granted,
        Schedule {
            expires_at: now + Duration::from_secs(60),
            usable_until: now + Duration::from_secs(57),
            refresh_at: now + Duration::from_secs(30),
        },
    );
    let header = access.header_value();
    prop_assert!(header.is_sensitive());
    let expected = format!("Bearer {token}");
    prop_assert_eq!(header.to_str().ok(), Some(expected.as_str()));
    // Valid as a header value by `http`'s own rules, independently of how it was built.
    prop_assert!(HeaderValue::from_str(&expected).is_ok());
    prop_assert_eq!(access.secret(), token);
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, header.clone());
    let mut shown = vec![format!("{header:?}"), format!("{headers:?}")];
    prop_assert!(shown[1].contains("Sensitive"), "{}", shown[1]);
    // `Debug` of the token shows its scopes, which come from the same answer and may hold
    // anything, the token included.
    if !access.scopes().iter().any(|scope| scope.contains(token)) {
        shown.extend([format!("{access:?}"), format!("{access:#?}")]);
    }
    // Only a marked token is looked for: an unmarked one may be a word of the output.
    if token.starts_with(MARK) {
        for shown in shown {
            prop_assert!(!shown.contains(token), "the token leaked into {shown}");
        }
    }
    Ok(())
}

/// Granted scopes are RFC 6749 scope tokens, bounded in number and length.
fn check_scopes(scopes: &[String]) -> Result<(), TestCaseError> {
    prop_assert!(scopes.len() <= MAX_GRANTED_SCOPES.max(requested().len()));
    for scope in scopes {
        prop_assert!(
            !scope.is_empty()
                && scope.len() <= MAX_SCOPE_LEN
                && scope
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
            "scope {:?} accepted",
            scope
        );
    }
    Ok(())
}

fn check_refused(
    status: StatusCode,
    retry_after: Option<Duration>,
    error: &Error,
    token: Option<&str>,
) -> Result<(), TestCaseError> {
    let display = error.to_string();
    prop_assert!(
        !display.trim().is_empty(),
        "an empty error for HTTP {status}"
    );
    // Classifying and inspecting any error must not panic either.
    let _ = (error.is_transient(), error.oauth_code(), error.status());
    if let Some(code) = error.status() {
        prop_assert_eq!(code, status);
    }
    if matches!(error, Error::OAuth { .. } | Error::Status { .. }) {
        prop_assert_eq!(error.retry_after(), retry_after);
    }
    if !status.is_success() {
        prop_assert!(
            matches!(error, Error::OAuth { .. } | Error::Status { .. }),
            "HTTP {status} gave {error:?}"
        );
    }
    // Only marked tokens are looked for: an unmarked one may be a word of the message.
    let Some(token) = token.filter(|token| token.starts_with(MARK)) else {
        return Ok(());
    };
    // The server's own words (`error`, `error_description`, `token_type`) are repeated on
    // purpose; a token is looked for only if they do not hold it themselves.
    let server_text = match error {
        Error::OAuth {
            code, description, ..
        } => format!("{code} {}", description.as_deref().unwrap_or_default()),
        Error::UnsupportedTokenType { token_type } => token_type.clone(),
        _ => String::new(),
    };
    if server_text.contains(MARK) {
        return Ok(());
    }
    for shown in [display, format!("{error:?}"), format!("{error:#?}")] {
        prop_assert!(!shown.contains(token), "the token leaked into {shown}");
        prop_assert!(
            !shown.contains(MARK),
            "part of the token leaked into {shown}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        status in status(),
        retry_after in retry_after(),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        check_answer(status, retry_after, &body)?;
    }

    #[test]
    fn arbitrary_json_is_a_token_or_a_clear_error(
        status in status(),
        retry_after in retry_after(),
        value in json(),
    ) {
        let body = serde_json::to_vec(&value).expect("JSON serialises");
        check_answer(status, retry_after, &body)?;
    }

    #[test]
    fn token_shaped_answers_are_a_token_or_a_clear_error(
        status in status(),
        retry_after in retry_after(),
        answer in token_answer(),
    ) {
        let body = serde_json::to_vec(&Value::Object(answer)).expect("JSON serialises");
        check_answer(status, retry_after, &body)?;
    }

    #[test]
    fn damaged_answers_are_a_token_or_a_clear_error(
        status in status(),
        body in damaged_answer(),
    ) {
        check_answer(status, None, &body)?;
    }

    /// A well-formed 200 answer is accepted exactly when its token can be sent in a header.
    #[test]
    fn a_well_formed_answer_is_accepted_iff_the_token_is_sendable(token in marked_token()) {
        let body = serde_json::to_vec(&serde_json::json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": 3599,
        }))
        .expect("JSON serialises");
        let sendable = token.bytes().all(|b| b.is_ascii_graphic());
        let outcome = parse_token_response(StatusCode::OK, None, &body, &[], &secrets());
        prop_assert_eq!(outcome.is_ok(), sendable, "{:?}", token);
        check_answer(StatusCode::OK, None, &body)?;
    }

    /// `GrantedToken::new` directly, over any string: accepted iff non-empty visible ASCII,
    /// and then the header is exactly `Bearer <token>`, sensitive.
    #[test]
    fn header_construction_over_any_string(
        secret in prop_oneof![marked_token(), any::<String>(), "[!-~]{0,80}"],
    ) {
        let sendable = !secret.is_empty() && secret.bytes().all(|b| b.is_ascii_graphic());
        match GrantedToken::new(&secret, Duration::from_secs(60), Vec::new()) {
            Ok(granted) => {
                prop_assert!(sendable, "accepted {:?}", secret);
                check_header(&secret, granted)?;
            }
            Err(error) => {
                prop_assert!(!sendable, "refused {:?}: {}", secret, error);
                let display = error.to_string();
                prop_assert!(!display.trim().is_empty());
                if secret.contains(MARK) {
                    for shown in [display, format!("{error:?}")] {
                        prop_assert!(!shown.contains(MARK), "the token leaked into {shown}");
                    }
                }
            }
        }
    }

    /// Whatever shape `expires_in` takes, the lifetime is within the bounds, and a number (or
    /// numeric string) is believed after clamping.
    #[test]
    fn expires_in_of_any_shape_gives_a_bounded_lifetime(expires_in in expires_in()) {
        let body = serde_json::to_vec(&serde_json::json!({
            "access_token": "t0ken",
            "expires_in": expires_in,
        }))
        .expect("JSON serialises");
        let granted = parse_token_response(StatusCode::OK, None, &body, &[], &secrets())
            .expect("a valid token answer whatever expires_in is");
        let lifetime = granted.lifetime();
        prop_assert!(
            (MIN_TOKEN_LIFETIME..=MAX_TOKEN_LIFETIME).contains(&lifetime),
            "expires_in {expires_in} gave {lifetime:?}"
        );
        // The number the parser saw: serde_json's float parsing does not always give back
        // the last bit of what it printed (1316.8547432565001, in the regressions file).
        let body: Value = serde_json::from_slice(&body).expect("JSON parses");
        let expires_in = body["expires_in"].clone();
        let secs = match &expires_in {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        let expected = match secs {
            Some(secs) if !secs.is_nan() => Duration::from_secs_f64(
                secs.clamp(MIN_TOKEN_LIFETIME.as_secs_f64(), MAX_TOKEN_LIFETIME.as_secs_f64()),
            ),
            _ => DEFAULT_TOKEN_LIFETIME,
        };
        prop_assert_eq!(lifetime, expected, "expires_in {}", expires_in);
    }

    /// Any `Retry-After` header value: no panic, seconds only, never above the bound.
    #[test]
    fn retry_after_of_any_header_value_is_bounded(
        status in status(),
        value in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..24),
            "[ \t]{0,2}[+-]?[0-9]{1,22}[ \t]{0,2}".prop_map(String::into_bytes),
            Just(b"Wed, 21 Oct 2015 07:28:00 GMT".to_vec()),
        ],
    ) {
        let Ok(value) = HeaderValue::from_bytes(&value) else {
            return Ok(());
        };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, value.clone());
        if !matches!(status.as_u16(), 429 | 503) {
            prop_assert_eq!(parse_retry_after(status, &headers), None, "honoured on {}", status);
            return Ok(());
        }
        match parse_retry_after(status, &headers) {
            Some(delay) => {
                prop_assert!(delay <= MAX_RETRY_AFTER);
                let secs: u64 = value
                    .to_str()
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| TestCaseError::fail(format!("{value:?} is not seconds")))?;
                prop_assert_eq!(delay, Duration::from_secs(secs).min(MAX_RETRY_AFTER));
            }
            None => {
                let secs = value.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
                prop_assert_eq!(secs, None, "{:?} ignored", value);
            }
        }
    }

    /// Whatever a server echoes, in whichever field, for either client authentication
    /// method: no error (`Display`, `Debug`, every `source()`) and no granted scope holds the
    /// client secret in any form, a token the grant obtained, or a fragment of them.
    #[test]
    fn echoed_secrets_never_reach_an_error_or_a_scope(
        basic in any::<bool>(),
        status in status(),
        held in prop::collection::vec("[A-Za-z0-9_-]{20,43}", 1..4),
        fields in prop::collection::vec((echo_field(), echo_text()), 1..4),
        access_token in prop::option::of("[A-Za-z0-9_-]{10,43}"),
    ) {
        let method = if basic {
            ClientAuthMethod::ClientSecretBasic
        } else {
            ClientAuthMethod::ClientSecretPost
        };
        let secrets = secrets_for(method);
        let held: Vec<String> = held.iter().map(|t| format!("ory_at_{t}")).collect();
        for token in &held {
            secrets.remember_token(token);
        }
        let forbidden = forbidden(&held);
        let mut answer = Map::new();
        if let Some(token) = access_token {
            answer.insert("access_token".to_owned(), Value::String(token));
        }
        for (field, text) in fields {
            let text = text.fill(&held);
            answer.insert(field.to_owned(), Value::String(text));
        }
        let body = serde_json::to_vec(&Value::Object(answer)).expect("JSON serialises");
        match parse_token_response(status, None, &body, &requested(), &secrets) {
            Ok(granted) => {
                check_scopes(granted.scopes())?;
                let scopes = format!("{:?}", granted.scopes());
                check_hidden(&scopes, &forbidden)?;
            }
            Err(error) => {
                let mut shown = format!("{error}\n{error:?}\n{error:#?}");
                let mut source = std::error::Error::source(&error);
                while let Some(inner) = source {
                    shown.push_str(&format!("\n{inner}\n{inner:?}"));
                    source = inner.source();
                }
                check_hidden(&shown, &forbidden)?;
                if let Error::OAuth { code, description, .. } = &error {
                    for text in std::iter::once(code).chain(description) {
                        prop_assert!(text.chars().count() <= MAX_SERVER_TEXT + 1);
                        prop_assert!(!text.chars().any(is_unsafe_char), "{:?}", text);
                    }
                    if code.contains(REDACTED)
                        || description.as_deref().is_some_and(|d| d.contains(REDACTED))
                    {
                        prop_assert!(error.to_string().contains("replaced here by [REDACTED]"));
                    }
                }
            }
        }
    }

    /// Any text, cleaned: bounded, no control or invisible character, no secret fragment.
    #[test]
    fn cleaned_server_text_is_bounded_visible_and_secret_free(
        text in prop_oneof![any::<String>(), echo_text().prop_map(|t| t.fill(&[]))],
    ) {
        let secrets = secrets_for(ClientAuthMethod::ClientSecretBasic);
        let clean = secrets.clean(&text);
        prop_assert!(clean.chars().count() <= MAX_SERVER_TEXT + 1);
        prop_assert!(!clean.chars().any(is_unsafe_char), "{:?}", clean);
        check_hidden(&clean, &forbidden(&[]))?;
    }
}

/// The fields of a token answer a server may echo into.
fn echo_field() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "error",
        "error_description",
        "error_uri",
        "token_type",
        "scope",
        "error_hint",
    ])
}

/// One piece of an echo.
#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    /// The client secret, raw.
    Secret,
    /// The client secret, form-encoded.
    EncodedSecret,
    /// The form body as sent with `client_secret_post`.
    Form,
    /// `Basic <base64>` as sent with `client_secret_basic`.
    BasicHeader,
    /// The `n`th held token (modulo their number).
    HeldToken(usize),
    /// A part of the secret at least a fragment long, as a server cutting an echo short sends.
    SecretPart(usize, usize),
    /// A character that must not survive: a control, bidi, zero-width or line separator.
    Unsafe(char),
}

#[derive(Clone, Debug)]
struct Echo(Vec<Piece>);

impl Echo {
    fn fill(&self, held: &[String]) -> String {
        let encoded: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
        self.0
            .iter()
            .map(|piece| match piece {
                Piece::Text(text) => text.clone(),
                Piece::Secret => SECRET.to_owned(),
                Piece::EncodedSecret => encoded.clone(),
                Piece::Form => format!(
                    "grant_type=client_credentials&scope=openid&audience=https%3A%2F%2Fapi.understory.io&client_id=prop+client&client_secret={encoded}"
                ),
                Piece::BasicHeader => format!("Basic {}", basic_credentials(CLIENT_ID, SECRET)),
                Piece::HeldToken(n) if !held.is_empty() => held[n % held.len()].clone(),
                Piece::HeldToken(_) => String::new(),
                Piece::SecretPart(start, len) => {
                    let start = start % (SECRET.len() - MIN_FRAGMENT);
                    let end = (start + MIN_FRAGMENT + len).min(SECRET.len());
                    SECRET[start..end].to_owned()
                }
                Piece::Unsafe(c) => c.to_string(),
            })
            .collect()
    }
}

fn echo_text() -> impl Strategy<Value = Echo> {
    let piece = prop_oneof![
        3 => "[ -~]{0,12}".prop_map(Piece::Text),
        1 => any::<String>().prop_map(Piece::Text),
        1 => Just(Piece::Secret),
        1 => Just(Piece::EncodedSecret),
        1 => Just(Piece::Form),
        1 => Just(Piece::BasicHeader),
        1 => any::<usize>().prop_map(Piece::HeldToken),
        1 => (any::<usize>(), 0..20usize).prop_map(|(start, len)| Piece::SecretPart(start, len)),
        1 => prop::sample::select(vec![
            '\n', '\r', '\u{1b}', '\u{85}', '\u{200b}', '\u{200f}', '\u{202e}', '\u{2066}',
            '\u{2028}', '\u{2029}', '\u{feff}', '\u{e0001}',
        ])
        .prop_map(Piece::Unsafe),
    ];
    prop::collection::vec(piece, 1..6).prop_map(Echo)
}

/// Every string that must never be shown: each run of [`MIN_FRAGMENT`] characters of the
/// secret, of its encoded forms and of each held token.
fn forbidden(held: &[String]) -> Vec<String> {
    let encoded: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    let basic = basic_credentials(CLIENT_ID, SECRET);
    let mut forbidden = Vec::new();
    for whole in [SECRET, encoded.as_str(), basic.as_str()]
        .into_iter()
        .chain(held.iter().map(String::as_str))
    {
        for start in 0..=whole.len().saturating_sub(MIN_FRAGMENT) {
            forbidden.push(whole[start..start + MIN_FRAGMENT].to_owned());
        }
    }
    forbidden
}

fn check_hidden(shown: &str, forbidden: &[String]) -> Result<(), TestCaseError> {
    for needle in forbidden {
        prop_assert!(
            !shown.contains(needle.as_str()),
            "{:?} leaked into {}",
            needle,
            shown
        );
    }
    Ok(())
}

/// Control (Cc), format (Cf: bidi, zero-width), line and paragraph separator characters.
fn is_unsafe_char(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    matches!(
        c.general_category(),
        G::Control | G::Format | G::LineSeparator | G::ParagraphSeparator
    )
}
