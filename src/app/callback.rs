//! The callback: the query string Understory redirected the user's browser back with,
//! checked against the [`PendingAuthorization`] before any code is exchanged. Pure: no
//! request is made here.
//!
//! In order: a pending authorization older than its lifetime is refused whatever the query
//! says; the query is bounded, and a parameter given twice refuses it (RFC 6749 section
//! 3.1); `state` must be there and equal the pending one (compared in constant time), also
//! on an error answer, so that a forged callback cannot even report an error; then `error`
//! becomes [`Error::AuthorizationDeclined`] with the server's words cleaned, and otherwise
//! `code` must be there.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq as _;
use url::form_urlencoded;

use super::pending::PendingAuthorization;
use crate::Error;
use crate::redact::{Secrets, oauth_error_code};

/// The longest callback query string read; a longer one is refused unread. Understory's
/// is some hundred bytes (a code, the state, the granted scopes), an error's a few hundred.
pub(crate) const MAX_CALLBACK_QUERY_BYTES: usize = 8 * 1024;

/// The longest authorization code accepted (Hydra's are under 100 characters).
pub(crate) const MAX_AUTHORIZATION_CODE_BYTES: usize = 2 * 1024;

/// An authorization code from a callback, to be exchanged once. A secret: its `Debug`
/// shows `[REDACTED]`.
pub(crate) struct AuthorizationCode(SecretString);

impl AuthorizationCode {
    /// The code, for the exchange's form body only.
    pub(crate) fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthorizationCode([REDACTED])")
    }
}

/// The parameters of a callback the crate reads; the others (Hydra's `scope`, `iss`) are
/// ignored.
#[derive(Default)]
struct CallbackParams<'a> {
    code: Option<Cow<'a, str>>,
    state: Option<Cow<'a, str>>,
    error: Option<Cow<'a, str>>,
    error_description: Option<Cow<'a, str>>,
}

/// The code of the callback `query` (the query string, with or without its leading `?`) for
/// `pending`, checked at `now` against the authorization `lifetime`; or why there is none.
pub(crate) fn callback(
    pending: &PendingAuthorization,
    query: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<AuthorizationCode, Error> {
    pending.check_age(now, lifetime)?;
    if query.len() > MAX_CALLBACK_QUERY_BYTES {
        return Err(invalid("it is longer than 8 KiB"));
    }
    let query = query.strip_prefix('?').unwrap_or(query);
    let params = parse(query)?;

    let Some(state) = &params.state else {
        return Err(Error::AuthorizationState {
            problem: "is missing",
        });
    };
    let expected = pending.state().expose_secret().as_bytes();
    if !bool::from(state.as_bytes().ct_eq(expected)) {
        return Err(Error::AuthorizationState {
            problem: "does not match",
        });
    }

    if let Some(error) = &params.error {
        return Err(declined(pending, &params, error));
    }
    let Some(code) = params.code else {
        return Err(invalid("it has neither a code nor an error"));
    };
    let printable = code.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if code.is_empty() || code.len() > MAX_AUTHORIZATION_CODE_BYTES || !printable {
        return Err(invalid(
            "its code is empty, longer than 2 KiB or not printable ASCII",
        ));
    }
    Ok(AuthorizationCode(SecretString::from(code.into_owned())))
}

/// The parameters the crate reads, refusing any parameter given twice.
fn parse(query: &str) -> Result<CallbackParams<'_>, Error> {
    let mut params = CallbackParams::default();
    let mut seen = HashSet::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if !seen.insert(name.clone()) {
            return Err(invalid("a parameter appears more than once"));
        }
        let slot = match &*name {
            "code" => &mut params.code,
            "state" => &mut params.state,
            "error" => &mut params.error,
            "error_description" => &mut params.error_description,
            _ => continue,
        };
        *slot = Some(value);
    }
    Ok(params)
}

/// The error the auth server redirected with, its words cleaned: the pending
/// authorization's `state` and verifier, and any code the callback carries, are redacted
/// wherever they appear, control and invisible characters removed, the description cut to
/// 300 characters.
fn declined(pending: &PendingAuthorization, params: &CallbackParams<'_>, error: &str) -> Error {
    let secrets = Secrets::empty();
    secrets.remember_token(pending.state().expose_secret());
    secrets.remember_token(pending.verifier().expose_secret());
    if let Some(code) = &params.code {
        secrets.remember_token(code);
    }
    let Some(error) = oauth_error_code(&secrets, error) else {
        return invalid("its error is not an OAuth2 error code");
    };
    let description = params
        .error_description
        .as_deref()
        .map(|text| secrets.clean(text))
        .filter(|text| !text.is_empty());
    Error::AuthorizationDeclined { error, description }
}

fn invalid(reason: &'static str) -> Error {
    Error::InvalidCallback { reason }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use proptest::prelude::*;

    use super::*;
    use crate::app::authorize::tests::config;
    use crate::app::authorize::{AuthorizationStart, start};
    use crate::app::pending::DEFAULT_AUTHORIZATION_LIFETIME;

    const STARTED: u64 = 1_767_225_600;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn started() -> AuthorizationStart {
        start(&config(), at(STARTED))
    }

    fn state_of(start: &AuthorizationStart) -> String {
        start.pending.state().expose_secret().to_owned()
    }

    fn complete(start: &AuthorizationStart, query: &str) -> Result<AuthorizationCode, Error> {
        callback(
            &start.pending,
            query,
            at(STARTED + 60),
            DEFAULT_AUTHORIZATION_LIFETIME,
        )
    }

    /// Neither the message nor the `Debug` of `err` shows a secret of `start`.
    fn assert_no_secret(err: &Error, start: &AuthorizationStart) {
        let state = state_of(start);
        let verifier = start.pending.verifier().expose_secret();
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(&state), "{shown}");
            assert!(!shown.contains(verifier), "{shown}");
        }
    }

    /// The error for `query`, which must be [`Error::InvalidCallback`].
    fn refused_as_invalid(start: &AuthorizationStart, query: &str) -> Error {
        let err = complete(start, query).expect_err("refused");
        assert!(
            matches!(err, Error::InvalidCallback { .. }),
            "{query}: {err:?}"
        );
        assert_no_secret(&err, start);
        err
    }

    #[test]
    fn a_good_callback_gives_the_code() {
        let start = started();
        let query = format!(
            "code=ory_ac_s3cr3t-Code.x~1&scope=openid+offline+booking.read&state={}",
            state_of(&start)
        );
        let code = complete(&start, &query).expect("a code");
        assert_eq!(code.expose_secret(), "ory_ac_s3cr3t-Code.x~1");
        let with_question_mark = complete(&start, &format!("?{query}")).expect("a code");
        assert_eq!(with_question_mark.expose_secret(), "ory_ac_s3cr3t-Code.x~1");
        // Percent-encoding is decoded.
        let encoded = format!("code=a%2Bb%20c&state={}", state_of(&start));
        assert_eq!(
            complete(&start, &encoded).expect("a code").expose_secret(),
            "a+b c"
        );
    }

    #[test]
    fn the_code_is_hidden_in_debug() {
        let start = started();
        let query = format!("code=ory_ac_s3cr3t&state={}", state_of(&start));
        let code = complete(&start, &query).expect("a code");
        assert_eq!(format!("{code:?}"), "AuthorizationCode([REDACTED])");
    }

    #[test]
    fn a_tampered_state_is_refused() {
        let start = started();
        let mut state = state_of(&start);
        let last = if state.ends_with('A') { "B" } else { "A" };
        state.replace_range(state.len() - 1.., last);
        let err = complete(&start, &format!("code=c&state={state}")).expect_err("refused");
        assert!(
            matches!(
                err,
                Error::AuthorizationState {
                    problem: "does not match",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("restart the authorization"),
            "{err}"
        );
        assert!(!err.is_transient());
        assert_no_secret(&err, &start);
        // A prefix of the state, and an empty one, do not match either.
        let prefix = &state_of(&start)[..20];
        for state in [prefix, ""] {
            let err = complete(&start, &format!("code=c&state={state}")).expect_err("refused");
            assert!(matches!(err, Error::AuthorizationState { .. }), "{err:?}");
        }
    }

    #[test]
    fn a_missing_state_is_refused() {
        let start = started();
        let err = complete(&start, "code=ory_ac_x").expect_err("refused");
        assert!(
            matches!(
                err,
                Error::AuthorizationState {
                    problem: "is missing",
                    ..
                }
            ),
            "{err:?}"
        );
        let declined = complete(&start, "error=access_denied").expect_err("refused");
        assert!(
            matches!(declined, Error::AuthorizationState { .. }),
            "{declined:?}"
        );
    }

    #[test]
    fn the_state_of_another_authorization_is_refused() {
        let (first, second) = (started(), started());
        let query = format!("code=ory_ac_x&state={}", state_of(&first));
        assert!(complete(&first, &query).is_ok());
        let err = complete(&second, &query).expect_err("refused");
        assert!(matches!(err, Error::AuthorizationState { .. }), "{err:?}");
        assert_no_secret(&err, &second);
    }

    #[test]
    fn a_declined_consent_carries_the_cleaned_description() {
        let start = started();
        let query = format!(
            "error=access_denied&error_description=The+resource+owner+denied+the+request.&state={}",
            state_of(&start)
        );
        let err = complete(&start, &query).expect_err("declined");
        match &err {
            Error::AuthorizationDeclined {
                error, description, ..
            } => {
                assert_eq!(error, "access_denied");
                assert_eq!(
                    description.as_deref(),
                    Some("The resource owner denied the request.")
                );
            }
            other => panic!("not declined: {other:?}"),
        }
        assert_eq!(err.oauth_code(), Some("access_denied"));
        assert!(!err.is_transient());
        let message = err.to_string();
        assert!(message.contains("declined"), "{message}");
        assert!(
            message.contains("The resource owner denied the request."),
            "{message}"
        );
    }

    #[test]
    fn a_description_echoing_secrets_or_control_characters_is_cleaned() {
        let start = started();
        let state = state_of(&start);
        let verifier = start.pending.verifier().expose_secret().to_owned();
        let description =
            format!("bad state {state} verifier {verifier} code ory_ac_L0ngCode123\nforged: line");
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("error", "invalid_request")
            .append_pair("error_description", &description)
            .append_pair("code", "ory_ac_L0ngCode123")
            .append_pair("state", &state)
            .finish();
        let err = complete(&start, &query).expect_err("declined");
        assert_no_secret(&err, &start);
        let message = err.to_string();
        assert!(!message.contains("ory_ac_L0ngCode123"), "{message}");
        assert!(!message.contains('\n'), "{message}");
        assert!(message.contains("[REDACTED]"), "{message}");
        assert!(message.contains("registration"), "{message}");
        // An `error` that is not an OAuth2 error code is not repeated.
        let err = refused_as_invalid(&start, &format!("error=%22quoted%22&state={state}"));
        assert!(
            err.to_string().contains("not an OAuth2 error code"),
            "{err}"
        );
    }

    #[test]
    fn a_server_error_is_transient() {
        let start = started();
        let query = format!("error=temporarily_unavailable&state={}", state_of(&start));
        let err = complete(&start, &query).expect_err("declined");
        assert!(
            matches!(err, Error::AuthorizationDeclined { .. }),
            "{err:?}"
        );
        assert!(err.is_transient());
    }

    #[test]
    fn an_expired_pending_is_refused_before_anything_else() {
        let start = started();
        let good = format!("code=ory_ac_x&state={}", state_of(&start));
        let lifetime = DEFAULT_AUTHORIZATION_LIFETIME;
        let late = at(STARTED + lifetime.as_secs() + 1);
        for query in [good.as_str(), "state=forged&code=x", &"x".repeat(10_000)] {
            let err = callback(&start.pending, query, late, lifetime).expect_err("expired");
            assert!(
                matches!(
                    err,
                    Error::AuthorizationExpired {
                        in_the_future: false,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains("1800 s"), "{err}");
        }
        let on_time = at(STARTED + lifetime.as_secs());
        assert!(callback(&start.pending, &good, on_time, lifetime).is_ok());
        let short = Duration::from_secs(60);
        let err = callback(&start.pending, &good, at(STARTED + 61), short).expect_err("expired");
        assert!(matches!(err, Error::AuthorizationExpired { .. }), "{err:?}");
    }

    #[test]
    fn an_oversized_query_is_refused() {
        let start = started();
        let good = format!("code=ory_ac_x&state={}&pad=", state_of(&start));
        let padding = "p".repeat(MAX_CALLBACK_QUERY_BYTES - good.len());
        let at_the_limit = format!("{good}{padding}");
        assert!(complete(&start, &at_the_limit).is_ok());
        let err = refused_as_invalid(&start, &format!("{at_the_limit}p"));
        assert!(err.to_string().contains("8 KiB"), "{err}");

        let code = "c".repeat(MAX_AUTHORIZATION_CODE_BYTES);
        let query = format!("code={code}&state={}", state_of(&start));
        assert!(complete(&start, &query).is_ok());
        let _ = refused_as_invalid(&start, &format!("code=c{code}&state={}", state_of(&start)));
    }

    #[test]
    fn a_parameter_given_twice_is_refused() {
        let start = started();
        let state = state_of(&start);
        for query in [
            format!("code=a&code=b&state={state}"),
            format!("code=a&state={state}&state={state}"),
            format!("code=a&state={state}&error=access_denied&error=server_error"),
            format!("code=a&state={state}&iss=x&iss=y"),
        ] {
            let err = refused_as_invalid(&start, &query);
            assert!(err.to_string().contains("more than once"), "{err}");
        }
    }

    #[test]
    fn a_missing_or_unusable_code_is_refused() {
        let start = started();
        let state = state_of(&start);
        let missing = refused_as_invalid(&start, &format!("state={state}"));
        assert!(
            missing.to_string().contains("neither a code nor an error"),
            "{missing}"
        );
        // Empty, a control character, not ASCII.
        for code in ["", "a%0Ab", "%C3%A9"] {
            let err = refused_as_invalid(&start, &format!("code={code}&state={state}"));
            assert!(err.to_string().contains("not printable ASCII"), "{err}");
            assert!(!err.is_transient());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the query, the callback answers without panicking, and its errors never
        /// show the state or the verifier.
        #[test]
        fn arbitrary_queries_never_panic(query in ".{0,300}", with_state in any::<bool>()) {
            let start = started();
            let query = if with_state {
                format!("{query}&state={}", state_of(&start))
            } else {
                query
            };
            if let Err(err) = complete(&start, &query) {
                assert_no_secret(&err, &start);
            }
        }

        /// Arbitrary bytes, percent-encoded, as any parameter's value.
        #[test]
        fn arbitrary_values_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            name in prop::sample::select(vec!["code", "state", "error", "error_description", "x"]),
        ) {
            let start = started();
            let value: String = form_urlencoded::byte_serialize(&bytes).collect();
            let query = format!("{name}={value}&state={}&error=access_denied", state_of(&start));
            if let Err(err) = complete(&start, &query) {
                assert_no_secret(&err, &start);
            }
        }
    }
}
