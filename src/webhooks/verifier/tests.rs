//! The verifier against the published Standard Webhooks examples, every malformed header,
//! altered bodies and the exact edges of the tolerance (the clock is an argument: no sleeps).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::json;

use super::*;

/// The Standard Webhooks reference libraries' examples: secret, `webhook-id`,
/// `webhook-timestamp`, body and the signature they publish for it.
/// Sources: github.com/standard-webhooks/standard-webhooks,
/// `libraries/javascript/src/webhook.test.ts` ("sign function works", also the Python, Go
/// and Ruby tests) and `libraries/rust/src/lib.rs` (`test_sign`).
const PUBLISHED: [(&str, &str, &str, &str, &str); 2] = [
    (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        r#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ),
    (
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
        "1649367553",
        r#"{"email":"test@example.com","username":"test_user"}"#,
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
    ),
];

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const NOW: u64 = 1_800_000_000;

fn at(unix_secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs)
}

fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_ID, HeaderValue::from_str(id).unwrap());
    headers.insert(HEADER_TIMESTAMP, HeaderValue::from_str(timestamp).unwrap());
    headers.insert(HEADER_SIGNATURE, HeaderValue::from_str(signature).unwrap());
    headers
}

fn event_body() -> Vec<u8> {
    json!({
        "id": "0b0f3c1e-5d5a-4c1b-9a43-7c1f3f1d2e10",
        "type": "v1.booking.created",
        "timestamp": "2026-01-29T19:29:01.856844592Z",
        "payload": {"booking_id": "b", "host_id": "h", "experience_id": "x", "event_id": "e"}
    })
    .to_string()
    .into_bytes()
}

/// A message signed with `secret` at `timestamp`: its headers.
fn signed(secret: &str, timestamp: u64, body: &[u8]) -> HeaderMap {
    let timestamp = timestamp.to_string();
    let signature = WebhookSecret::parse(secret)
        .unwrap()
        .sign("msg_1", &timestamp, body);
    headers("msg_1", &timestamp, &signature)
}

fn verifier() -> WebhookVerifier {
    WebhookVerifier::new(SECRET).unwrap()
}

#[test]
fn the_published_examples_verify() {
    for (secret, id, timestamp, body, signature) in PUBLISHED {
        let verifier = WebhookVerifier::new(secret).unwrap();
        let headers = headers(id, timestamp, signature);
        let now = at(timestamp.parse().unwrap());
        let signed = verifier.check_headers(&headers, now).unwrap();
        verifier
            .check_signature(&signed, body.as_bytes())
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        // The bodies are not Understory events: the signature matched, the event did not.
        let error = verifier
            .verify_at(&headers, body.as_bytes(), now)
            .unwrap_err();
        assert!(matches!(error, WebhookError::InvalidEvent(_)), "{error}");
        // Our signing (used by the sandbox) gives the published signature.
        let ours = WebhookSecret::parse(secret)
            .unwrap()
            .sign(id, timestamp, body.as_bytes());
        assert_eq!(ours, signature);
    }
}

#[test]
fn the_secret_verifies_with_and_without_its_prefix() {
    let (secret, id, timestamp, body, signature) = PUBLISHED[0];
    let bare = secret.strip_prefix("whsec_").unwrap();
    let verifier = WebhookVerifier::new(bare).unwrap();
    let headers = headers(id, timestamp, signature);
    let signed = verifier.check_headers(&headers, at(1614265330)).unwrap();
    assert!(verifier.check_signature(&signed, body.as_bytes()).is_ok());
}

#[test]
fn a_valid_webhook_gives_its_typed_event() {
    let body = event_body();
    let event = verifier()
        .verify_at(&signed(SECRET, NOW, &body), &body, at(NOW))
        .unwrap();
    assert_eq!(event.id, "0b0f3c1e-5d5a-4c1b-9a43-7c1f3f1d2e10");
    assert!(matches!(
        event.payload,
        crate::webhooks::WebhookPayload::BookingCreated(_)
    ));
}

#[test]
fn during_a_rotation_either_secret_verifies() {
    let body = event_body();
    let rotating = verifier().with_secret(OTHER_SECRET).unwrap();
    for secret in [SECRET, OTHER_SECRET] {
        let headers = signed(secret, NOW, &body);
        assert!(
            rotating.verify_at(&headers, &body, at(NOW)).is_ok(),
            "{secret}"
        );
    }
    // A header with both signatures satisfies a verifier that knows only one.
    let timestamp = NOW.to_string();
    let both = [SECRET, OTHER_SECRET]
        .map(|s| {
            WebhookSecret::parse(s)
                .unwrap()
                .sign("msg_1", &timestamp, &body)
        })
        .join(" ");
    let headers = headers("msg_1", &timestamp, &both);
    for secret in [SECRET, OTHER_SECRET] {
        let verifier = WebhookVerifier::new(secret).unwrap();
        assert!(verifier.verify_at(&headers, &body, at(NOW)).is_ok());
    }
    // A third secret does not.
    let stranger = WebhookVerifier::new("whsec_dGhpcmQgc2VjcmV0").unwrap();
    let error = stranger.verify_at(&headers, &body, at(NOW)).unwrap_err();
    assert!(matches!(error, WebhookError::NoMatchingSignature));
}

#[test]
fn other_signature_versions_and_junk_entries_are_ignored() {
    // As the reference libraries' "multi sig payload is valid" test.
    let (secret, id, timestamp, body, signature) = PUBLISHED[0];
    let header = format!(
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v1a,xx nonsense {signature} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    );
    let verifier = WebhookVerifier::new(secret).unwrap();
    let headers = headers(id, timestamp, &header);
    let signed = verifier.check_headers(&headers, at(1614265330)).unwrap();
    assert!(verifier.check_signature(&signed, body.as_bytes()).is_ok());
}

#[test]
fn every_missing_or_malformed_header_is_named() {
    let body = event_body();
    let good = signed(SECRET, NOW, &body);
    for name in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
        let mut headers = good.clone();
        headers.remove(name);
        let error = verifier().verify_at(&headers, &body, at(NOW)).unwrap_err();
        assert!(
            matches!(error, WebhookError::MissingHeader(n) if n == name),
            "{error}"
        );
        assert_eq!(error.status(), 400);
    }
    let malformed: [(&str, &[u8]); 16] = [
        (HEADER_ID, b""),
        (HEADER_ID, "m\u{e9}sg".as_bytes()),
        (HEADER_TIMESTAMP, b""),
        (HEADER_TIMESTAMP, b"hello"),
        (HEADER_TIMESTAMP, b"-1"),
        (HEADER_TIMESTAMP, b"+1800000000"),
        (HEADER_TIMESTAMP, b"1800000000.5"),
        (HEADER_TIMESTAMP, b" 1800000000"),
        (HEADER_TIMESTAMP, b"99999999999999999999999"),
        (HEADER_SIGNATURE, b""),
        (HEADER_SIGNATURE, b"v1,"),
        (HEADER_SIGNATURE, b"v1,dawfeoifkpqwoekfpqoekf"),
        (HEADER_SIGNATURE, b"v1,g0hM9SsE"),
        (
            HEADER_SIGNATURE,
            b"v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            HEADER_SIGNATURE,
            b"g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            HEADER_SIGNATURE,
            b"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=AAAA",
        ),
    ];
    for (name, value) in malformed {
        let mut headers = good.clone();
        headers.insert(name, HeaderValue::from_bytes(value).unwrap());
        let error = verifier().verify_at(&headers, &body, at(NOW)).unwrap_err();
        assert!(
            matches!(error, WebhookError::MalformedHeader { header, .. } if header == name),
            "{name}: {value:?}: {error}"
        );
        assert_eq!(error.status(), 400);
    }
}

#[test]
fn a_body_changed_by_one_byte_is_refused() {
    let body = event_body();
    let headers = signed(SECRET, NOW, &body);
    for index in [0, body.len() / 2, body.len() - 1] {
        let mut changed = body.clone();
        changed[index] ^= 0x01;
        let error = verifier()
            .verify_at(&headers, &changed, at(NOW))
            .unwrap_err();
        assert!(
            matches!(error, WebhookError::NoMatchingSignature),
            "{error}"
        );
        assert_eq!(error.status(), 401);
    }
    let mut longer = body.clone();
    longer.push(b' ');
    assert!(verifier().verify_at(&headers, &longer, at(NOW)).is_err());
}

#[test]
fn a_re_serialised_json_body_is_refused() {
    let body = event_body();
    let headers = signed(SECRET, NOW, &body);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for reserialised in [
        serde_json::to_vec_pretty(&value).unwrap(),
        serde_json::to_vec(&value["payload"]).unwrap(),
    ] {
        assert_ne!(reserialised, body);
        let error = verifier()
            .verify_at(&headers, &reserialised, at(NOW))
            .unwrap_err();
        assert!(
            matches!(error, WebhookError::NoMatchingSignature),
            "{error}"
        );
    }
}

#[test]
fn the_tolerance_edges_are_exact_in_both_directions() {
    let body = event_body();
    let verify = |signed_at: u64, now: SystemTime| {
        verifier().verify_at(&signed(SECRET, signed_at, &body), &body, now)
    };
    let tolerance = DEFAULT_WEBHOOK_TOLERANCE.as_secs();
    assert!(verify(NOW - tolerance, at(NOW)).is_ok());
    assert!(verify(NOW + tolerance, at(NOW)).is_ok());
    // Sub-second parts of the clock do not move the edge.
    assert!(verify(NOW - tolerance, at(NOW) + Duration::from_millis(999)).is_ok());
    assert!(matches!(
        verify(NOW - tolerance - 1, at(NOW)).unwrap_err(),
        WebhookError::TimestampTooOld {
            age_secs: 301,
            tolerance_secs: 300
        }
    ));
    let too_new = verify(NOW + tolerance + 1, at(NOW)).unwrap_err();
    assert!(matches!(
        too_new,
        WebhookError::TimestampTooNew {
            ahead_secs: 301,
            tolerance_secs: 300
        }
    ));
    assert_eq!(too_new.status(), 401);
    // Extreme values neither overflow nor pass.
    assert!(verify(0, at(NOW)).is_err());
    assert!(verify(u64::MAX, at(NOW)).is_err());
    assert!(verify(NOW, UNIX_EPOCH - Duration::from_secs(1)).is_err());
}

#[test]
fn the_tolerance_is_configurable() {
    let body = event_body();
    let verifier = verifier().tolerance(Duration::from_secs(10));
    let headers = signed(SECRET, NOW - 10, &body);
    assert!(verifier.verify_at(&headers, &body, at(NOW)).is_ok());
    let headers = signed(SECRET, NOW - 11, &body);
    assert!(verifier.verify_at(&headers, &body, at(NOW)).is_err());
}

#[test]
fn the_body_limit_is_exact() {
    let body = event_body();
    let headers = signed(SECRET, NOW, &body);
    let at_limit = verifier().max_body_bytes(body.len());
    assert!(at_limit.verify_at(&headers, &body, at(NOW)).is_ok());
    let under = verifier().max_body_bytes(body.len() - 1);
    let error = under.verify_at(&headers, &body, at(NOW)).unwrap_err();
    assert!(
        matches!(error, WebhookError::BodyTooLarge { .. }),
        "{error}"
    );
    assert_eq!(error.status(), 413);
}

#[test]
fn an_authentic_body_that_is_not_an_event_is_a_bad_request() {
    let body = b"{\"hello\": 1}";
    let error = verifier()
        .verify_at(&signed(SECRET, NOW, body), body, at(NOW))
        .unwrap_err();
    assert!(matches!(error, WebhookError::InvalidEvent(_)));
    assert_eq!(error.status(), 400);
}

#[test]
fn the_secret_appears_in_no_debug_or_error() {
    let key = SECRET.strip_prefix("whsec_").unwrap();
    let verifier = verifier().with_secret(OTHER_SECRET).unwrap();
    let debug = format!("{verifier:?}");
    assert!(
        !debug.contains(key) && !debug.contains("C2FVsBQ"),
        "{debug}"
    );
    let body = event_body();
    let errors = [
        verifier
            .verify_at(&HeaderMap::new(), &body, at(NOW))
            .unwrap_err(),
        verifier
            .verify_at(
                &signed("whsec_dGhpcmQgc2VjcmV0", NOW, &body),
                &body,
                at(NOW),
            )
            .unwrap_err(),
        WebhookVerifier::new(&format!("{SECRET}!")).unwrap_err(),
    ];
    for error in errors {
        let text = format!("{error} {error:?}");
        assert!(!text.contains(key), "{text}");
    }
}

proptest! {
    #[test]
    fn arbitrary_header_values_never_panic(
        id in proptest::collection::vec(any::<u8>(), 0..64),
        timestamp in proptest::collection::vec(any::<u8>(), 0..32),
        signature in proptest::collection::vec(any::<u8>(), 0..256),
        body in proptest::collection::vec(any::<u8>(), 0..128),
        now in any::<u64>(),
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in [(HEADER_ID, id), (HEADER_TIMESTAMP, timestamp), (HEADER_SIGNATURE, signature)] {
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert(name, value);
            }
        }
        let now = UNIX_EPOCH.checked_add(Duration::from_secs(now)).unwrap_or(UNIX_EPOCH);
        prop_assert!(verifier().verify_at(&headers, &body, now).is_err());
    }

    #[test]
    fn near_miss_signature_headers_never_panic(
        entries in proptest::collection::vec("(v1|v2|v1a|)(,|)[A-Za-z0-9+/=]{0,50}", 0..12),
        timestamp in 0u64..=u64::MAX,
    ) {
        let body = event_body();
        let headers = headers("msg_1", &timestamp.to_string(), &entries.join(" "));
        prop_assert!(verifier().verify_at(&headers, &body, at(NOW)).is_err());
    }
}
