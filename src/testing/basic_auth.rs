//! Decoding `Authorization: Basic ...` the way Hydra does (OAuth2's `client_secret_basic`):
//! standard, padded base64 of `urlencode(client_id):urlencode(client_secret)`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::HeaderValue;

/// The client id and secret from a Basic `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BasicCredentials {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
}

/// Whether `value` uses the Basic scheme (well-formed or not).
pub(crate) fn is_basic(value: &HeaderValue) -> bool {
    scheme_and_rest(value).is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
}

/// The credentials in a Basic `Authorization` header, or `None` if it is not one or is
/// malformed (bad base64, no `:`, bad percent-encoding, not UTF-8).
pub(crate) fn parse(value: &HeaderValue) -> Option<BasicCredentials> {
    let (scheme, encoded) = scheme_and_rest(value)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (client_id, client_secret) = decoded.split_once(':')?;
    Some(BasicCredentials {
        client_id: query_unescape(client_id)?,
        client_secret: query_unescape(client_secret)?,
    })
}

fn scheme_and_rest(value: &HeaderValue) -> Option<(&str, &str)> {
    value.to_str().ok()?.trim().split_once(' ')
}

/// Undoes form-urlencoding (`+` is a space, `%XX` a byte), as Go's `url.QueryUnescape`;
/// `None` if the result is not UTF-8. (Unlike Go, a malformed escape is kept as it is.)
fn query_unescape(input: &str) -> Option<String> {
    let spaced = input.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).expect("test header values are valid")
    }

    #[test]
    fn unescapes_like_go() {
        assert_eq!(query_unescape("a+b%7E%2b%3A"), Some("a b~+:".to_owned()));
        assert_eq!(query_unescape("plain-._~"), Some("plain-._~".to_owned()));
        assert_eq!(query_unescape("%ff"), None, "not UTF-8");
    }

    #[test]
    fn refuses_malformed_base64() {
        for encoded in ["Zg", "Zg==Zm9v", "Z===", "Zm9-"] {
            assert_eq!(
                parse(&header(&format!("Basic {encoded}"))),
                None,
                "{encoded}"
            );
        }
    }

    #[test]
    fn parses_basic_credentials() {
        // "my%20client:s%3Acret" in base64.
        let value = header("basic bXklMjBjbGllbnQ6cyUzQWNyZXQ=");
        assert!(is_basic(&value));
        assert_eq!(
            parse(&value),
            Some(BasicCredentials {
                client_id: "my client".to_owned(),
                client_secret: "s:cret".to_owned(),
            })
        );
    }

    #[test]
    fn recognises_the_scheme_only() {
        assert!(is_basic(&header("Basic !!!")));
        assert_eq!(parse(&header("Basic !!!")), None);
        assert!(!is_basic(&header("Bearer abc")));
        assert_eq!(parse(&header("Bearer Zm9vOmJhcg==")), None);
        // "no-colon" in base64.
        assert_eq!(parse(&header("Basic bm8tY29sb24=")), None);
    }
}
