//! What the sandbox answers to a request hit by a [`TokenFault`] or an [`ApiFault`].

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use http::StatusCode;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::body::Frame;
use serde_json::json;

use super::faults::{ApiFault, EchoIn, TokenFault};
use super::oauth_error::OAuthError;
use super::recorded::RecordedRequest;
use super::response::{
    self, BoxError, HYDRA_JSON, SandboxResponse, api_error, final_status, hydra_json, with_body,
    with_dynamic_header,
};
use super::state::Shared;
use super::tokens::Issued;

/// The size of each chunk of [`TokenFault::EndlessBody`].
const ENDLESS_CHUNK_SIZE: usize = 8 * 1024;

/// The start of the body of [`TokenFault::ResetMidBody`] and [`TokenFault::MalformedJson`].
const TRUNCATED_TOKEN: &str = r#"{"access_token":"ory_at_truncated"#;

/// How long [`TokenFault::ResetMidBody`] waits between sending part of the body and closing
/// the connection, so the part is flushed to the client first.
const RESET_PAUSE: Duration = Duration::from_millis(20);

/// The answer to `request`, a token request hit by `fault`.
pub(crate) async fn token_fault(
    fault: TokenFault,
    shared: &Shared,
    request: &RecordedRequest,
) -> SandboxResponse {
    match fault {
        TokenFault::ServerError => OAuthError::ServerError.response(),
        TokenFault::Unavailable => OAuthError::TemporarilyUnavailable.response(),
        TokenFault::TooManyRequests { retry_after } => too_many_requests(retry_after),
        TokenFault::InvalidClient => OAuthError::InvalidClient.response(),
        TokenFault::InvalidScope => OAuthError::InvalidScope.response(),
        TokenFault::HtmlError { status } => html_error(final_status(status)),
        TokenFault::MalformedJson => with_body(StatusCode::OK, HYDRA_JSON, TRUNCATED_TOKEN),
        TokenFault::Body {
            status,
            content_type,
            body,
        } => with_dynamic_header(
            with_body(final_status(status), "text/plain", body),
            CONTENT_TYPE,
            &content_type,
        ),
        TokenFault::WrongTokenType => fake_token("ory_at_sandbox-mac-token", "mac"),
        TokenFault::EmptyToken => fake_token("", "bearer"),
        TokenFault::Redirect { location } => with_dynamic_header(
            response::empty(StatusCode::TEMPORARY_REDIRECT),
            LOCATION,
            &location,
        ),
        TokenFault::Hang => std::future::pending().await,
        TokenFault::ResetMidBody => reset_mid_body(),
        TokenFault::EndlessBody => endless_body(),
        TokenFault::Echo(into) => echo(shared, request, into),
    }
}

/// The answer to an API request hit by `fault`.
pub(crate) async fn api_fault(fault: ApiFault) -> SandboxResponse {
    match fault {
        ApiFault::Unauthorized => {
            api_error(StatusCode::UNAUTHORIZED, "The access token is not valid.")
        }
        ApiFault::ServerError => {
            api_error(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong.")
        }
        ApiFault::Unavailable => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is temporarily unavailable.",
        ),
        ApiFault::TooManyRequests { retry_after } => too_many_requests(retry_after),
        ApiFault::Hang => std::future::pending().await,
    }
}

/// See [`TokenFault::Echo`].
fn echo(shared: &Shared, request: &RecordedRequest, into: EchoIn) -> SandboxResponse {
    let latest_token = shared.with(|state| state.tokens.in_order().last().cloned());
    let body = String::from_utf8_lossy(&request.body);
    let parts = [
        Some(&*body),
        request.header("authorization"),
        latest_token.as_deref(),
    ];
    let echoed = parts.into_iter().flatten().collect::<Vec<_>>().join(" ");
    let invalid_request = |field: &str| {
        let answer = json!({ "error": "invalid_request", field: echoed });
        hydra_json(StatusCode::BAD_REQUEST, &answer)
    };
    let issued = |token_type: &str, scope: &str| {
        let mut issued = shared.issue_key_token(Vec::new());
        scope.clone_into(&mut issued.scope);
        hydra_json(StatusCode::OK, &issued.answer(token_type))
    };
    match into {
        EchoIn::Error => hydra_json(StatusCode::BAD_REQUEST, &json!({ "error": echoed })),
        EchoIn::ErrorDescription => invalid_request("error_description"),
        EchoIn::ErrorUri => invalid_request("error_uri"),
        EchoIn::TokenType => issued(&echoed, ""),
        EchoIn::Scope => issued("bearer", &echoed),
        EchoIn::HtmlPage => with_body(
            StatusCode::BAD_GATEWAY,
            "text/html",
            format!("<html><body><h1>502 Bad Gateway</h1><pre>{echoed}</pre></body></html>"),
        ),
        EchoIn::Headers => {
            let response = OAuthError::TemporarilyUnavailable.response();
            let response = with_dynamic_header(response, RETRY_AFTER, &echoed);
            let challenge = format!("Basic realm=\"{echoed}\"");
            with_dynamic_header(response, WWW_AUTHENTICATE, &challenge)
        }
    }
}

/// 429 with an optional `Retry-After`.
fn too_many_requests(retry_after: Option<u64>) -> SandboxResponse {
    let response = api_error(
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit exceeded. Back off before retrying.",
    );
    match retry_after {
        Some(seconds) => with_dynamic_header(response, RETRY_AFTER, &seconds.to_string()),
        None => response,
    }
}

/// An error page as an nginx-like proxy would serve it.
fn html_error(status: StatusCode) -> SandboxResponse {
    let reason = status.canonical_reason().unwrap_or("Error");
    let title = format!("{} {reason}", status.as_u16());
    let page = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n\
         <center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    with_body(status, "text/html", page)
}

/// A 200 that looks like a token answer but carries a token this server never issued.
fn fake_token(access_token: &str, token_type: &str) -> SandboxResponse {
    let fake = Issued {
        access_token: access_token.to_owned(),
        expires_in: 3599,
        scope: String::new(),
    };
    hydra_json(StatusCode::OK, &fake.answer(token_type))
}

/// See [`TokenFault::ResetMidBody`].
fn reset_mid_body() -> SandboxResponse {
    let announced = TRUNCATED_TOKEN.len() * 4;
    let partial =
        stream::once(async { Ok(Frame::data(Bytes::from_static(TRUNCATED_TOKEN.as_bytes()))) });
    // Pausing first makes hyper flush the partial body; failing the body then makes it close
    // the connection.
    let reset = stream::once(async {
        tokio::time::sleep(RESET_PAUSE).await;
        Err(BoxError::from(
            "sandbox: connection reset mid-body (TokenFault::ResetMidBody)",
        ))
    });
    // A stream body has no known length, so hyper sends the `Content-Length` set here.
    let mut response = response::streaming(partial.chain(reset));
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, http::HeaderValue::from(announced));
    response::set_header(&mut response, CONTENT_TYPE, HYDRA_JSON);
    response
}

/// See [`TokenFault::EndlessBody`].
fn endless_body() -> SandboxResponse {
    let prefix = Bytes::from_static(br#"{"access_token":""#);
    let filler = Bytes::from(vec![b' '; ENDLESS_CHUNK_SIZE]);
    let frames = stream::once(async move { prefix })
        .chain(stream::repeat_with(move || filler.clone()))
        .map(|chunk| Ok::<_, BoxError>(Frame::data(chunk)));
    let mut response = response::streaming(frames);
    response::set_header(&mut response, CONTENT_TYPE, HYDRA_JSON);
    response
}
