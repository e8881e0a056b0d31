//! The API under `/v1`: Understory's documented endpoints, each requiring its scope, answering
//! errors in Understory's shape (`{"code": "UNAUTHORIZED", "message": "..."}`).

use http::header::{ALLOW, AUTHORIZATION};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use serde_json::json;

use super::body::{BodyError, RequestBody};
use super::fault_answers::api_fault;
use super::response::{self, SandboxResponse, api_error, api_json};
use super::state::Shared;
use super::tokens::TokenStatus;
use crate::scope;

/// What an endpoint answers to an authorised request.
#[derive(Clone, Copy)]
enum Answer {
    /// `GET /v1/me`: the token's company and user, client id and scopes.
    Me,
    /// A list endpoint: the sandbox has nothing to list.
    EmptyList,
    /// A create endpoint: 201 with the request body, as if it were the created resource.
    Created,
}

/// Every endpoint: method, path, the scope a token needs (`None`: any valid token) and answer.
#[rustfmt::skip]
const ENDPOINTS: &[(Method, &str, Option<&str>, Answer)] = &[
    (Method::GET, "/v1/me", None, Answer::Me),
    (Method::GET, "/v1/bookings", Some(scope::BOOKING_READ), Answer::EmptyList),
    (Method::GET, "/v1/events", Some(scope::EVENT_READ), Answer::EmptyList),
    (Method::GET, "/v1/event-availabilities", Some(scope::EVENT_READ), Answer::EmptyList),
    (Method::GET, "/v1/experiences", Some(scope::EXPERIENCE_READ), Answer::EmptyList),
    (Method::GET, "/v1/marketing-consents", Some(scope::MARKETING_READ), Answer::EmptyList),
    (Method::GET, "/v1/orders", Some(scope::ORDER_READ), Answer::EmptyList),
    (Method::GET, "/v1/webhook-subscriptions", Some(scope::WEBHOOK_READ), Answer::EmptyList),
    (Method::POST, "/v1/webhook-subscriptions", Some(scope::WEBHOOK_WRITE), Answer::Created),
];

/// Answers a request under `/v1` (already recorded and delayed by the prelude): apply a fault
/// if one is queued, check the bearer token, then route.
pub(crate) async fn handle(shared: &Shared, head: &Parts, body: RequestBody) -> SandboxResponse {
    let (fault, always_unauthorized) =
        shared.with(|state| (state.api_faults.next(), state.api_always_unauthorized));
    if let Some(fault) = fault {
        return api_fault(fault).await;
    }
    if always_unauthorized {
        return unauthorized("The access token is not valid.");
    }

    let Some(token) = bearer_token(&head.headers) else {
        return unauthorized("Missing bearer token in the Authorization header.");
    };
    let (scopes, owner) = match shared.with(|state| state.tokens.status(token)) {
        TokenStatus::Valid { scopes, owner } => (scopes, owner),
        TokenStatus::Unknown => return unauthorized("The access token is not valid."),
        TokenStatus::Revoked => return unauthorized("The access token has been revoked."),
        TokenStatus::Expired => return unauthorized("The access token has expired."),
    };

    let path = head.uri.path();
    // `/v1/companies/{id}/...`: `/v1/...` of that company, for its tokens only.
    let path = match path.strip_prefix("/v1/companies/") {
        None => path.to_owned(),
        Some(rest) => {
            let (company, rest) = rest.split_once('/').unwrap_or((rest, ""));
            if company != owner.company_id {
                return unauthorized(
                    "Authorization for the resource was not successful: the access token \
                     belongs to another company.",
                );
            }
            format!("/v1/{rest}")
        }
    };
    let path = path.as_str();
    let Some(&(_, _, needed, answer)) = ENDPOINTS
        .iter()
        .find(|(method, at, ..)| *at == path && *method == head.method)
    else {
        return no_such_endpoint(&head.method, path);
    };
    if let Some(needed) = needed {
        if !scopes.iter().any(|granted| granted == needed) {
            return unauthorized(&format!(
                "Authorization for the resource was not successful: {} {path} requires the \
                 scope '{needed}', which the access token was not granted.",
                head.method
            ));
        }
    }
    match answer {
        Answer::Me => {
            let Some(company) = shared.config.company(&owner.company_id) else {
                return unauthorized("The access token is not valid.");
            };
            let mut me = company.me();
            me["client_id"] = owner.client_id.into();
            me["scopes"] = scopes.into();
            api_json(StatusCode::OK, &me)
        }
        Answer::EmptyList => api_json(StatusCode::OK, &json!({ "next": null, "items": [] })),
        Answer::Created => match body {
            Ok(body) => response::with_body(StatusCode::CREATED, response::API_JSON, body),
            Err(error @ BodyError::TooLarge) => {
                api_error(StatusCode::PAYLOAD_TOO_LARGE, error.message())
            }
            Err(error) => api_error(StatusCode::BAD_REQUEST, error.message()),
        },
    }
}

/// 405 with an `Allow` header if `path` exists with other methods, otherwise 404.
fn no_such_endpoint(method: &Method, path: &str) -> SandboxResponse {
    let allowed: Vec<&str> = ENDPOINTS
        .iter()
        .filter(|(_, at, ..)| *at == path)
        .map(|(method, ..)| method.as_str())
        .collect();
    if allowed.is_empty() {
        return api_error(StatusCode::NOT_FOUND, format_args!("No route for {path}."));
    }
    let response = api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format_args!("{method} is not supported on {path}."),
    );
    response::with_dynamic_header(response, ALLOW, &allowed.join(", "))
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
    api_error(StatusCode::UNAUTHORIZED, message)
}
