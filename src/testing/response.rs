//! Response bodies and the response shapes the sandbox answers with.

use std::fmt::Display;

use bytes::Bytes;
use futures_util::Stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue, PRAGMA};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

/// The error type of a response body (only the deliberately broken ones ever fail).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response the sandbox sends.
pub(crate) type SandboxResponse = Response<UnsyncBoxBody<Bytes, BoxError>>;

/// What Hydra sends as the content type of every token endpoint answer.
pub(crate) const HYDRA_JSON: &str = "application/json;charset=UTF-8";

/// What the API sends as the content type of its answers.
pub(crate) const API_JSON: &str = "application/json";

/// A response with `status`, a `Content-Type` and a complete body.
pub(crate) fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> SandboxResponse {
    let mut response = empty(status);
    *response.body_mut() = Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    set_header(&mut response, CONTENT_TYPE, content_type);
    response
}

/// A response with `status` and no body at all.
pub(crate) fn empty(status: StatusCode) -> SandboxResponse {
    let mut response = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// A 200 whose body is sent as `frames` produces it, in chunked encoding unless a
/// `Content-Length` header is added.
pub(crate) fn streaming<S>(frames: S) -> SandboxResponse
where
    S: Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + 'static,
{
    Response::new(StreamBody::new(frames).boxed_unsync())
}

/// Adds a header whose value is known to be valid.
pub(crate) fn set_header(response: &mut SandboxResponse, name: HeaderName, value: &'static str) {
    response
        .headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

/// Adds a header whose value comes from a test; an invalid value turns the whole answer into
/// a 500 that says why, instead of a panic inside the server.
pub(crate) fn with_dynamic_header(
    mut response: SandboxResponse,
    name: HeaderName,
    value: &str,
) -> SandboxResponse {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            response.headers_mut().insert(name, value);
            response
        }
        Err(_) => with_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("sandbox: {value:?} is not a valid value for the {name} header"),
        ),
    }
}

/// A JSON answer of the Understory API.
pub(crate) fn api_json(status: StatusCode, value: &Value) -> SandboxResponse {
    with_body(status, API_JSON, value.to_string())
}

/// An error answer of the Understory API: `{"code": "...", "message": "..."}`, the code named
/// after the status (`UNAUTHORIZED`, `NOT_FOUND`, `TOO_MANY_REQUESTS`, ...).
pub(crate) fn api_error(status: StatusCode, message: impl Display) -> SandboxResponse {
    let code = status.canonical_reason().unwrap_or("Error");
    let code = code.to_ascii_uppercase().replace(' ', "_");
    let body = json!({ "code": code, "message": message.to_string() });
    api_json(status, &body)
}

/// An answer of the token endpoint, with the headers Hydra sends on every one of them.
pub(crate) fn hydra_json(status: StatusCode, value: &Value) -> SandboxResponse {
    let mut response = with_body(status, HYDRA_JSON, value.to_string());
    set_header(&mut response, CACHE_CONTROL, "no-store");
    set_header(&mut response, PRAGMA, "no-cache");
    response
}

/// An OAuth2 error of the token endpoint: `{"error": "...", "error_description": "..."}`.
pub(crate) fn hydra_error(
    status: StatusCode,
    error: &str,
    description: impl Display,
) -> SandboxResponse {
    hydra_json(
        status,
        &json!({ "error": error, "error_description": description.to_string() }),
    )
}

/// `status` if it can be sent as a final answer, otherwise 500.
pub(crate) fn final_status(status: u16) -> StatusCode {
    StatusCode::from_u16(status)
        .ok()
        .filter(|status| !status.is_informational())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
