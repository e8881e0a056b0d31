//! The API under `/v1`: a few endpoints of Understory's API that accept the sandbox's tokens.

use http::header::{ALLOW, AUTHORIZATION, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use serde_json::json;

use super::recorded::RecordedRequest;
use super::response::{self, SandboxResponse, api_error, api_json};
use super::routes::{BodyError, RequestBody};
use super::state::{Shared, TokenStatus};

/// Endpoints that list things; the sandbox has nothing to list.
const LIST_ENDPOINTS: &[&str] = &[
    "/v1/bookings",
    "/v1/events",
    "/v1/event-availabilities",
    "/v1/experiences",
    "/v1/marketing-consents",
    "/v1/orders",
    "/v1/webhook-subscriptions",
];

/// Answers a request under `/v1`: record it, wait, apply a fault if one is queued, check the
/// bearer token, then route.
pub(crate) async fn handle(shared: &Shared, head: &Parts, body: RequestBody) -> SandboxResponse {
    let recorded = RecordedRequest::new(head, body.clone().unwrap_or_default());
    let delay = shared.with(|state| {
        state.api_requests.record(recorded);
        state.api_delay
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (fault, always_unauthorized) = shared.with(|state| {
        (
            state.queued_api_faults.pop_front(),
            state.api_always_unauthorized,
        )
    });
    if let Some(fault) = fault {
        return fault.respond().await;
    }
    if always_unauthorized {
        return unauthorized("The access token is not valid.");
    }

    let Some(token) = bearer_token(&head.headers) else {
        return unauthorized("Missing bearer token in the Authorization header.");
    };
    let scopes = match shared.with(|state| state.token_status(token)) {
        TokenStatus::Valid { scopes } => scopes,
        TokenStatus::Unknown => return unauthorized("The access token is not valid."),
        TokenStatus::Revoked => return unauthorized("The access token has been revoked."),
        TokenStatus::Expired => return unauthorized("The access token has expired."),
    };

    let path = head.uri.path();
    match (&head.method, path) {
        (&Method::GET, "/v1/me") => api_json(
            StatusCode::OK,
            &json!({ "client_id": shared.config.client_id, "scopes": scopes }),
        ),
        (&Method::GET, _) if LIST_ENDPOINTS.contains(&path) => {
            api_json(StatusCode::OK, &json!({ "next": null, "items": [] }))
        }
        (&Method::POST, "/v1/webhook-subscriptions") => match body {
            Ok(body) => response::with_body(StatusCode::CREATED, response::API_JSON, body),
            Err(BodyError::TooLarge) => api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "The request body is too large.",
            ),
            Err(BodyError::Incomplete) => api_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "The request body could not be read.",
            ),
        },
        _ => match allowed_methods(path) {
            Some(allowed) => {
                let mut response = api_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "METHOD_NOT_ALLOWED",
                    format_args!("{} is not supported on {path}.", head.method),
                );
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allowed));
                response
            }
            None => api_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format_args!("No route for {path}."),
            ),
        },
    }
}

/// The methods an existing endpoint supports, for the `Allow` header; `None` if there is no
/// such endpoint.
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/v1/webhook-subscriptions" => Some("GET, POST"),
        "/v1/me" => Some("GET"),
        _ if LIST_ENDPOINTS.contains(&path) => Some("GET"),
        _ => None,
    }
}

/// The token from `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim()
        .split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthorized(message: &str) -> SandboxResponse {
    api_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
}
