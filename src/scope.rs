//! Understory's documented OAuth2 scopes, as constants, so that a typo fails to compile.
//!
//! An integration key may request only the scopes it was given in Backoffice; another makes
//! the auth server refuse the whole token request with `invalid_scope`. An endpoint whose
//! scope the token lacks answers `401`, as for an invalid token ([what the crate does
//! then](crate#what-happens-on-a-401)). [`Credentials::with_scopes`](crate::Credentials::with_scopes)
//! takes any string alike, so a scope Understory adds later works before this crate names it.
//!
//! ```
//! use understory_auth::{Credentials, scope};
//!
//! let credentials = Credentials::new("my-client-id", "my-secret")
//!     .with_scopes([scope::OPENID, scope::BOOKING_READ, "some.future-scope"]);
//! assert_eq!(credentials.scopes(), ["openid", "booking.read", "some.future-scope"]);
//! ```

/// `openid`: requested in Understory's own example; needed by no API endpoint.
pub const OPENID: &str = "openid";
/// `booking.read`: read bookings (`GET /v1/bookings`).
pub const BOOKING_READ: &str = "booking.read";
/// `booking.write`: create and change bookings.
pub const BOOKING_WRITE: &str = "booking.write";
/// `event.read`: read events and their availability (`GET /v1/events`,
/// `GET /v1/event-availabilities`).
pub const EVENT_READ: &str = "event.read";
/// `experience.read`: read experiences (`GET /v1/experiences`).
pub const EXPERIENCE_READ: &str = "experience.read";
/// `marketing.read`: read marketing consents (`GET /v1/marketing-consents`).
pub const MARKETING_READ: &str = "marketing.read";
/// `order.read`: read orders (`GET /v1/orders`).
pub const ORDER_READ: &str = "order.read";
/// `webhook.read`: list webhook subscriptions (`GET /v1/webhook-subscriptions`).
pub const WEBHOOK_READ: &str = "webhook.read";
/// `webhook.write`: create webhook subscriptions (`POST /v1/webhook-subscriptions`).
pub const WEBHOOK_WRITE: &str = "webhook.write";
/// `offline`: refresh tokens, for third-party apps only; integration keys cannot use it.
pub const OFFLINE: &str = "offline";
