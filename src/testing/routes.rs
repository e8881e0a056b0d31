//! Dispatching requests to the token endpoint and the API, and the helper routes.

use std::collections::BTreeMap;

use http::header::LOCATION;
use http::request::Parts;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::body::{RequestBody, form_value, read_body};
use super::recorded::RecordedRequest;
use super::response::{self, SandboxResponse, api_error, api_json, with_dynamic_header};
use super::state::Shared;
use super::{AUTHORIZE_PATH, REVOKE_PATH, TOKEN_PATH, api, authorize, revoke, token_endpoint};

/// Answers one request.
pub(crate) async fn handle(shared: &Shared, request: Request<Incoming>) -> SandboxResponse {
    let (head, body) = request.into_parts();
    let body = read_body(body).await;
    let path = head.uri.path();
    if path == TOKEN_PATH {
        let recorded = prelude(shared, Side::Token, &head, &body).await;
        token_endpoint::handle(shared, &head, body, &recorded).await
    } else if path == AUTHORIZE_PATH {
        authorize::handle(shared, &head)
    } else if path == REVOKE_PATH {
        revoke::handle(shared, &head, body)
    } else if path == "/v1" || path.starts_with("/v1/") {
        prelude(shared, Side::Api, &head, &body).await;
        api::handle(shared, &head, body).await
    } else if path == "/redirect" {
        redirect(&head)
    } else if path == "/echo-headers" {
        echo_headers(&head)
    } else {
        api_error(StatusCode::NOT_FOUND, format_args!("No route for {path}."))
    }
}

/// The two sides of the sandbox whose requests are counted, recorded and delayed.
#[derive(Clone, Copy)]
enum Side {
    /// The token endpoint.
    Token,
    /// The API under `/v1`.
    Api,
}

/// What every request to either side goes through first: it is counted and recorded, then
/// held back for that side's delay. Returns the recording.
async fn prelude(shared: &Shared, side: Side, head: &Parts, body: &RequestBody) -> RecordedRequest {
    let recorded = RecordedRequest::new(head, body.clone().unwrap_or_default());
    let delay = shared.with(|state| {
        let (log, delay) = match side {
            Side::Token => (&mut state.token_requests, state.token_delay),
            Side::Api => (&mut state.api_requests, state.api_delay),
        };
        log.record(recorded.clone());
        delay
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    recorded
}

/// `/redirect?to=<url>[&status=<3xx>]`: a redirect (302 unless `status` says otherwise) to `to`.
fn redirect(head: &Parts) -> SandboxResponse {
    let query = head.uri.query().unwrap_or_default();
    let param = |key: &str| form_value(query.as_bytes(), key);
    let Some(target) = param("to").filter(|target| !target.is_empty()) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "The query parameter `to` (the URL to redirect to) is missing.",
        );
    };
    let status = match param("status") {
        None => StatusCode::FOUND,
        Some(status) => match status.parse().map(StatusCode::from_u16) {
            Ok(Ok(status)) if status.is_redirection() => status,
            _ => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    format_args!("`status` must be a 3xx status code, not {status:?}."),
                );
            }
        },
    };
    with_dynamic_header(response::empty(status), LOCATION, &target)
}

/// `/echo-headers`: the request headers as `{"name": ["value", ...], ...}`.
fn echo_headers(head: &Parts) -> SandboxResponse {
    let mut grouped: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in &head.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        grouped.entry(name.as_str()).or_default().push(value);
    }
    let headers: Map<String, Value> = grouped
        .into_iter()
        .map(|(name, values)| (name.to_owned(), Value::from(values)))
        .collect();
    api_json(StatusCode::OK, &Value::Object(headers))
}
