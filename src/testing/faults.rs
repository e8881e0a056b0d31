//! Ways to make the sandbox misbehave, and the answers they produce.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use http::StatusCode;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::body::Frame;
use serde_json::json;

use super::recorded::RecordedRequest;
use super::response::{
    self, BoxError, HYDRA_JSON, SandboxResponse, api_error, final_status, hydra_error, with_body,
    with_dynamic_header,
};
use super::state::Shared;

/// A way for the token endpoint to fail, for testing how a client copes: once
/// ([`push_token_fault`](super::SandboxServer::push_token_fault)) or for every request
/// ([`set_token_fault`](super::SandboxServer::set_token_fault)). A faulted request is counted
/// and recorded, but issues no token (except the echoes in [`EchoIn::TokenType`] and
/// [`EchoIn::Scope`], which answer 200).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenFault {
    /// 500 with Hydra's `{"error": "server_error", ...}`.
    ServerError,
    /// 503 with Hydra's `{"error": "temporarily_unavailable", ...}`.
    Unavailable,
    /// 429 with Understory's `{"code": "TOO_MANY_REQUESTS", ...}`, as a rate-limiting gateway
    /// in front of the server would answer. Understory documents no `Retry-After` ("back off
    /// for at least one minute"): `retry_after: None` is what to expect from it.
    TooManyRequests {
        /// The `Retry-After` header, in seconds; none is sent if `None`.
        retry_after: Option<u64>,
    },
    /// 401 with Hydra's `invalid_client`, as if the client secret were wrong.
    InvalidClient,
    /// 400 with Hydra's `invalid_scope`.
    InvalidScope,
    /// An HTML error page from a proxy in front of the server, e.g. a 502.
    HtmlError {
        /// The status code (one that cannot be a final answer, such as 1xx, becomes 500).
        status: u16,
    },
    /// 200 with `Content-Type: application/json` and a body that is not JSON.
    MalformedJson,
    /// Exactly this answer, for testing response parsing.
    Body {
        /// The status code (one that cannot be a final answer, such as 1xx, becomes 500).
        status: u16,
        /// The `Content-Type` header.
        content_type: String,
        /// The body.
        body: String,
    },
    /// 200 with a well-formed token of `"token_type": "mac"`.
    WrongTokenType,
    /// 200 with `"access_token": ""`.
    EmptyToken,
    /// 307 to `location`.
    Redirect {
        /// The `Location` header.
        location: String,
    },
    /// Reads the request, then never answers (the connection stays open until the sandbox
    /// stops).
    Hang,
    /// Sends the headers with a `Content-Length` larger than the body, part of the body, and
    /// then closes the connection.
    ResetMidBody,
    /// 200 with a JSON-looking body (`{"access_token":"` and then spaces) that never ends,
    /// sent chunked until the client disconnects or the sandbox stops.
    EndlessBody,
    /// Echoes the request back, as some servers and proxies do: the request body (the form,
    /// with `client_secret` when the client sends it there), the `Authorization` header (with
    /// the Basic-encoded secret when the client sends it there) and the latest access token
    /// the sandbox issued, space separated, in the place [`EchoIn`] says. For testing that a
    /// client never shows such an answer's secrets.
    Echo(EchoIn),
}

/// Where [`TokenFault::Echo`] puts the echoed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EchoIn {
    /// 400 `{"error": "<echo>"}`.
    Error,
    /// 400 `{"error": "invalid_request", "error_description": "<echo>"}`.
    ErrorDescription,
    /// 400 `{"error": "invalid_request", "error_uri": "<echo>"}`.
    ErrorUri,
    /// 200 with a freshly issued token whose `"token_type"` is the echo.
    TokenType,
    /// 200 with a freshly issued, usable token (granted no scopes) whose `"scope"` is the echo.
    Scope,
    /// 502 with an HTML error page, as from a proxy, holding the echo.
    HtmlPage,
    /// 503 `temporarily_unavailable` with the echo in the `Retry-After` and
    /// `WWW-Authenticate` headers.
    Headers,
}

/// A way for the API (`/v1/...`) to fail, for testing how a client copes: once per
/// [`push_api_fault`](super::SandboxServer::push_api_fault), or for every API request with
/// [`set_api_fault`](super::SandboxServer::set_api_fault); the request is still counted and
/// recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiFault {
    /// 401 `{"code": "UNAUTHORIZED", ...}`, whatever the token, as if it had just been revoked.
    Unauthorized,
    /// 500 `{"code": "INTERNAL_SERVER_ERROR", ...}`.
    ServerError,
    /// 503 `{"code": "SERVICE_UNAVAILABLE", ...}`.
    Unavailable,
    /// 429 `{"code": "TOO_MANY_REQUESTS", ...}`, Understory's rate limit. Understory documents
    /// no `Retry-After` ("back off for at least one minute"): `retry_after: None` is what to
    /// expect from it; a short `Some` keeps tests of a client that waits
    /// ([`RateLimitRetry`](crate::RateLimitRetry)) short.
    TooManyRequests {
        /// The `Retry-After` header, in seconds; none is sent if `None`.
        retry_after: Option<u64>,
    },
    /// Reads the request, then never answers (the connection stays open until the sandbox
    /// stops).
    Hang,
}

/// The size of each chunk of [`TokenFault::EndlessBody`].
const ENDLESS_CHUNK_SIZE: usize = 8 * 1024;

/// The start of the body of [`TokenFault::ResetMidBody`] and [`TokenFault::MalformedJson`].
const TRUNCATED_TOKEN: &str = r#"{"access_token":"ory_at_truncated"#;

/// How long [`TokenFault::ResetMidBody`] waits between sending part of the body and closing
/// the connection, so the part is flushed to the client first.
const RESET_PAUSE: Duration = Duration::from_millis(20);

impl TokenFault {
    /// The answer to `request`, a token request hit by this fault.
    pub(crate) async fn respond(
        self,
        shared: &Shared,
        request: &RecordedRequest,
    ) -> SandboxResponse {
        match self {
            Self::ServerError => hydra_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The authorization server encountered an unexpected condition that prevented it \
                 from fulfilling the request.",
            ),
            Self::Unavailable => hydra_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The authorization server is currently unable to handle the request due to a \
                 temporary overloading or maintenance of the server.",
            ),
            Self::TooManyRequests { retry_after } => too_many_requests(retry_after),
            Self::InvalidClient => hydra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "Client authentication failed (e.g., unknown client, no client authentication \
                 included, or unsupported authentication method).",
            ),
            Self::InvalidScope => hydra_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "The requested scope is invalid, unknown, or malformed.",
            ),
            Self::HtmlError { status } => html_error(final_status(status)),
            Self::MalformedJson => with_body(StatusCode::OK, HYDRA_JSON, TRUNCATED_TOKEN),
            Self::Body {
                status,
                content_type,
                body,
            } => with_dynamic_header(
                with_body(final_status(status), "text/plain", body),
                CONTENT_TYPE,
                &content_type,
            ),
            Self::WrongTokenType => fake_token("ory_at_sandbox-mac-token", "mac"),
            Self::EmptyToken => fake_token("", "bearer"),
            Self::Redirect { location } => with_dynamic_header(
                response::empty(StatusCode::TEMPORARY_REDIRECT),
                LOCATION,
                &location,
            ),
            Self::Hang => std::future::pending().await,
            Self::ResetMidBody => reset_mid_body(),
            Self::EndlessBody => endless_body(),
            Self::Echo(into) => echo(shared, request, into),
        }
    }
}

impl ApiFault {
    /// The answer to an API request hit by this fault.
    pub(crate) async fn respond(self) -> SandboxResponse {
        match self {
            Self::Unauthorized => api_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "The access token is not valid.",
            ),
            Self::ServerError => api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_SERVER_ERROR",
                "Something went wrong.",
            ),
            Self::Unavailable => api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "The service is temporarily unavailable.",
            ),
            Self::TooManyRequests { retry_after } => too_many_requests(retry_after),
            Self::Hang => std::future::pending().await,
        }
    }
}

/// See [`TokenFault::Echo`].
fn echo(shared: &Shared, request: &RecordedRequest, into: EchoIn) -> SandboxResponse {
    let latest_token = shared.with(|state| state.latest_token());
    let mut echoed = String::from_utf8_lossy(&request.body).into_owned();
    for part in [request.header("authorization"), latest_token.as_deref()]
        .into_iter()
        .flatten()
    {
        echoed.push(' ');
        echoed.push_str(part);
    }
    let invalid_request = |field: &str| {
        let mut answer = serde_json::Map::new();
        answer.insert("error".to_owned(), "invalid_request".into());
        answer.insert(field.to_owned(), echoed.clone().into());
        response::hydra_json(StatusCode::BAD_REQUEST, &answer.into())
    };
    let issued = |token_type: &str, scope: &str| {
        let issued = shared.with(|state| state.issue_token(Vec::new()));
        response::hydra_json(
            StatusCode::OK,
            &json!({
                "access_token": issued.access_token,
                "expires_in": issued.expires_in,
                "scope": scope,
                "token_type": token_type,
            }),
        )
    };
    match into {
        EchoIn::Error => response::hydra_json(StatusCode::BAD_REQUEST, &json!({ "error": echoed })),
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
            let response = hydra_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The authorization server is currently unable to handle the request.",
            );
            let response = with_dynamic_header(response, RETRY_AFTER, &echoed);
            with_dynamic_header(
                response,
                WWW_AUTHENTICATE,
                &format!("Basic realm=\"{echoed}\""),
            )
        }
    }
}

/// 429 with an optional `Retry-After`.
fn too_many_requests(retry_after: Option<u64>) -> SandboxResponse {
    let response = api_error(
        StatusCode::TOO_MANY_REQUESTS,
        "TOO_MANY_REQUESTS",
        "Rate limit exceeded. Back off before retrying.",
    );
    match retry_after {
        Some(seconds) => with_dynamic_header(response, RETRY_AFTER, &seconds.to_string()),
        None => response,
    }
}

/// An error page as an nginx-like proxy would serve it.
fn html_error(status: StatusCode) -> SandboxResponse {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let page = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n\
         <center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    with_body(status, "text/html", page)
}

/// A 200 that looks like a token answer but carries a token this server never issued.
fn fake_token(access_token: &str, token_type: &str) -> SandboxResponse {
    response::hydra_json(
        StatusCode::OK,
        &json!({
            "access_token": access_token,
            "expires_in": 3599,
            "scope": "",
            "token_type": token_type,
        }),
    )
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
    let frames = partial.chain(reset);
    // A stream body has no known length, so hyper sends the `Content-Length` set here.
    let mut response = response::streaming(frames);
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
