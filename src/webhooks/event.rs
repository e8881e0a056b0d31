//! [`WebhookEvent`]: a verified Understory "thin event", typed where its type is known.

use serde::Deserialize;
use serde_json::{Map, Value};

/// The `type` of the event sent when a booking is created.
const BOOKING_CREATED: &str = "v1.booking.created";

/// A verified webhook event: `{"id", "type", "timestamp", "payload"}`.
///
/// Understory's events are *thin*: the payload carries identifiers only; fetch the resource
/// from the API for its current state. Known types get a typed [`payload`](Self::payload);
/// other types and unknown fields are kept untouched ([`WebhookPayload::Other`],
/// [`other_fields`](Self::other_fields)), so a new event type never breaks a handler.
///
/// ```
/// use understory_auth::webhooks::{WebhookEvent, WebhookPayload};
///
/// let event: WebhookEvent = serde_json::from_str(r#"{
///     "id": "8c9e0e6b-3a4e-4f7e-9d55-2f1f5a0c1e11",
///     "type": "v1.booking.created",
///     "timestamp": "2026-01-29T19:29:01.856844592Z",
///     "payload": {"booking_id": "b1", "host_id": "h1", "experience_id": "x1", "event_id": "e1",
///                 "channel": "web"}
/// }"#)?;
/// match &event.payload {
///     WebhookPayload::BookingCreated(ids) => {
///         assert_eq!(ids.booking_id, "b1");
///         assert_eq!(ids.other_fields["channel"], "web"); // fields this version does not know
///     }
///     other => println!("another type of event: {other:?}"),
/// }
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
#[non_exhaustive]
pub struct WebhookEvent {
    /// The event's id (a UUID).
    pub id: String,
    /// The event's type, such as `v1.booking.created`.
    pub event_type: String,
    /// When the event happened, as sent (RFC 3339, UTC).
    pub timestamp: String,
    /// The payload: typed for the known types, the raw JSON for the others.
    pub payload: WebhookPayload,
    /// Top-level fields other than `id`, `type`, `timestamp` and `payload`, untouched.
    pub other_fields: Map<String, Value>,
}

/// The payload of a [`WebhookEvent`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WebhookPayload {
    /// `v1.booking.created`: a booking was made.
    BookingCreated(BookingCreated),
    /// Any other event type, or a known type whose payload lacks a documented identifier:
    /// the payload's JSON, untouched.
    Other(Value),
}

/// The identifiers of a `v1.booking.created` event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BookingCreated {
    /// The booking (`GET /v1/bookings/{booking_id}`).
    pub booking_id: String,
    /// The host (company) the booking belongs to.
    pub host_id: String,
    /// The experience booked.
    pub experience_id: String,
    /// The event (the occurrence of the experience) booked.
    pub event_id: String,
    /// Payload fields not listed above, untouched.
    pub other_fields: Map<String, Value>,
}

// Taken apart field by field, leaving unknown fields in the maps (cheaper than
// `#[serde(flatten)]`, which buffers every field).
impl TryFrom<Value> for WebhookEvent {
    type Error = String;

    fn try_from(value: Value) -> Result<Self, String> {
        let Value::Object(mut fields) = value else {
            return Err("a webhook event is a JSON object".to_owned());
        };
        let id = take_string(&mut fields, "id")?;
        let event_type = take_string(&mut fields, "type")?;
        let timestamp = take_string(&mut fields, "timestamp")?;
        let payload = fields
            .remove("payload")
            .ok_or_else(|| "missing field `payload`".to_owned())?;
        let payload = match event_type.as_str() {
            BOOKING_CREATED => BookingCreated::from_payload(payload),
            _ => WebhookPayload::Other(payload),
        };
        Ok(WebhookEvent {
            id,
            event_type,
            timestamp,
            payload,
            other_fields: fields,
        })
    }
}

impl BookingCreated {
    /// The typed payload, or the payload untouched if an identifier is missing.
    fn from_payload(payload: Value) -> WebhookPayload {
        const IDS: [&str; 4] = ["booking_id", "host_id", "experience_id", "event_id"];
        let mut fields = match payload {
            Value::Object(fields)
                if IDS
                    .iter()
                    .all(|id| fields.get(*id).is_some_and(Value::is_string)) =>
            {
                fields
            }
            other => return WebhookPayload::Other(other),
        };
        let [booking_id, host_id, experience_id, event_id] =
            IDS.map(|id| take_string(&mut fields, id).unwrap_or_default());
        WebhookPayload::BookingCreated(BookingCreated {
            booking_id,
            host_id,
            experience_id,
            event_id,
            other_fields: fields,
        })
    }
}

/// Removes the string field `name` from `fields`.
fn take_string(fields: &mut Map<String, Value>, name: &str) -> Result<String, String> {
    match fields.remove(name) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(format!("field `{name}` is not a string")),
        None => Err(format!("missing field `{name}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_booking_created_event_from_the_docs_is_typed() {
        let event: WebhookEvent = serde_json::from_value(json!({
            "id": "0b0f3c1e-5d5a-4c1b-9a43-7c1f3f1d2e10",
            "type": "v1.booking.created",
            "timestamp": "2026-01-29T19:29:01.856844592Z",
            "payload": {"booking_id": "b", "host_id": "h", "experience_id": "x", "event_id": "e"}
        }))
        .unwrap();
        assert_eq!(event.event_type, "v1.booking.created");
        assert_eq!(event.timestamp, "2026-01-29T19:29:01.856844592Z");
        let WebhookPayload::BookingCreated(ids) = event.payload else {
            panic!("not typed: {event:?}");
        };
        assert_eq!(ids.booking_id, "b");
        assert!(ids.other_fields.is_empty());
    }

    #[test]
    fn unknown_types_and_fields_pass_through_untouched() {
        let payload = json!({"order_id": "o", "nested": {"a": [1, 2.5, null]}});
        let event: WebhookEvent = serde_json::from_value(json!({
            "id": "1", "type": "v2.order.refunded", "timestamp": "t",
            "payload": payload, "api_version": "2027-01-01"
        }))
        .unwrap();
        assert_eq!(event.payload, WebhookPayload::Other(payload));
        assert_eq!(event.other_fields["api_version"], "2027-01-01");
    }

    #[test]
    fn a_known_type_missing_an_identifier_is_kept_raw() {
        let payload = json!({"booking_id": "b"});
        let event: WebhookEvent = serde_json::from_value(json!({
            "id": "1", "type": "v1.booking.created", "timestamp": "t", "payload": payload
        }))
        .unwrap();
        assert_eq!(event.payload, WebhookPayload::Other(payload));
    }

    #[test]
    fn an_event_without_its_envelope_fields_is_refused() {
        for body in [
            json!({}),
            json!({"id": "1", "type": "x", "timestamp": "t"}),
            json!([1]),
        ] {
            assert!(serde_json::from_value::<WebhookEvent>(body).is_err());
        }
    }
}
