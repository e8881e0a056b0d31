//! Decoding `Authorization: Basic ...` the way Hydra does (OAuth2's `client_secret_basic`):
//! base64 of `urlencode(client_id):urlencode(client_secret)`.

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
    let decoded = String::from_utf8(decode_base64(encoded.trim())?).ok()?;
    let (client_id, client_secret) = decoded.split_once(':')?;
    Some(BasicCredentials {
        client_id: query_unescape(client_id)?,
        client_secret: query_unescape(client_secret)?,
    })
}

fn scheme_and_rest(value: &HeaderValue) -> Option<(&str, &str)> {
    value.to_str().ok()?.trim().split_once(' ')
}

/// Decodes standard, padded base64 (RFC 4648 section 4), as Go's `base64.StdEncoding`.
fn decode_base64(input: &str) -> Option<Vec<u8>> {
    let input = input.as_bytes();
    if input.len() % 4 != 0 {
        return None;
    }
    let quads = input.len() / 4;
    let mut output = Vec::with_capacity(quads * 3);
    for (index, quad) in input.chunks_exact(4).enumerate() {
        let padding = quad.iter().rev().take_while(|&&byte| byte == b'=').count();
        if padding > 2 || (padding > 0 && index + 1 != quads) {
            return None;
        }
        let mut bits: u32 = 0;
        for &byte in &quad[..4 - padding] {
            bits = (bits << 6) | u32::from(sextet(byte)?);
        }
        for _ in 0..padding {
            bits <<= 6;
        }
        let [_, first, second, third] = bits.to_be_bytes();
        output.extend_from_slice(&[first, second, third][..3 - padding]);
    }
    Some(output)
}

/// The value of one base64 digit.
fn sextet(digit: u8) -> Option<u8> {
    match digit {
        b'A'..=b'Z' => Some(digit - b'A'),
        b'a'..=b'z' => Some(digit - b'a' + 26),
        b'0'..=b'9' => Some(digit - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Undoes form-urlencoding (`+` is a space, `%XX` a byte), as Go's `url.QueryUnescape`;
/// `None` on a malformed escape or if the result is not UTF-8.
fn query_unescape(input: &str) -> Option<String> {
    let mut bytes = input.bytes();
    let mut output = Vec::with_capacity(input.len());
    while let Some(byte) = bytes.next() {
        output.push(match byte {
            b'+' => b' ',
            b'%' => {
                let high = hex_digit(bytes.next()?)?;
                let low = hex_digit(bytes.next()?)?;
                (high << 4) | low
            }
            other => other,
        });
    }
    String::from_utf8(output).ok()
}

fn hex_digit(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).expect("test header values are valid")
    }

    #[test]
    fn decodes_base64_with_and_without_padding() {
        assert_eq!(decode_base64(""), Some(vec![]));
        assert_eq!(decode_base64("Zg=="), Some(b"f".to_vec()));
        assert_eq!(decode_base64("Zm8="), Some(b"fo".to_vec()));
        assert_eq!(decode_base64("Zm9v"), Some(b"foo".to_vec()));
        assert_eq!(decode_base64("Zm9vYg=="), Some(b"foob".to_vec()));
        assert_eq!(decode_base64("+/+/"), Some(vec![0xfb, 0xff, 0xbf]));
    }

    #[test]
    fn rejects_malformed_base64() {
        assert_eq!(decode_base64("Zg"), None, "missing padding");
        assert_eq!(decode_base64("Zg==Zm9v"), None, "padding in the middle");
        assert_eq!(decode_base64("Z==="), None, "too much padding");
        assert_eq!(decode_base64("Z=g="), None, "padding inside a quad");
        assert_eq!(decode_base64("Zm9-"), None, "URL-safe alphabet");
    }

    #[test]
    fn unescapes_like_go() {
        assert_eq!(query_unescape("a+b%7E%2b%3A"), Some("a b~+:".to_owned()));
        assert_eq!(query_unescape("plain-._~"), Some("plain-._~".to_owned()));
        assert_eq!(query_unescape("%zz"), None);
        assert_eq!(query_unescape("%7"), None);
        assert_eq!(query_unescape("%ff"), None, "not UTF-8");
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
