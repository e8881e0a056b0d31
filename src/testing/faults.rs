//! Ways to make the sandbox misbehave: [`TokenFault`], [`EchoIn`] and [`ApiFault`].

use std::collections::VecDeque;

/// A way for the token endpoint to fail, once ([`push_token_fault`](super::SandboxServer::push_token_fault))
/// or for every request ([`set_token_fault`](super::SandboxServer::set_token_fault)). A faulted
/// request is counted and recorded but issues no token (except the 200 echoes of [`EchoIn`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenFault {
    /// 500 with Hydra's `{"error": "server_error", ...}`.
    ServerError,
    /// 503 with Hydra's `{"error": "temporarily_unavailable", ...}`.
    Unavailable,
    /// 429 `{"code": "TOO_MANY_REQUESTS", ...}`, as a rate-limiting gateway answers (Understory
    /// documents no `Retry-After`: `None` is what to expect from it).
    TooManyRequests {
        /// The `Retry-After` header, in seconds; none is sent if `None`.
        retry_after: Option<u64>,
    },
    /// 401 with Hydra's `invalid_client`, as if the client secret were wrong.
    InvalidClient,
    /// 400 with Hydra's `invalid_scope`.
    InvalidScope,
    /// A proxy's HTML error page, e.g. a 502.
    HtmlError {
        /// The status code (one that cannot be a final answer, such as 1xx, becomes 500).
        status: u16,
    },
    /// 200 with `Content-Type: application/json` and a body that is not JSON.
    MalformedJson,
    /// Exactly this answer.
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
    /// Reads the request, then never answers (until the sandbox stops).
    Hang,
    /// Announces a `Content-Length` larger than the body, sends part of it, closes.
    ResetMidBody,
    /// 200 with a JSON-looking body (`{"access_token":"` and spaces) that never ends.
    EndlessBody,
    /// Echoes the request body, its `Authorization` header and the latest access token issued
    /// (space separated) where [`EchoIn`] says: the secrets a client must never show.
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
    /// 502 with a proxy's HTML error page holding the echo.
    HtmlPage,
    /// 503 `temporarily_unavailable` with the echo in `Retry-After` and `WWW-Authenticate`.
    Headers,
}

/// A way for the API (`/v1/...`) to fail, once ([`push_api_fault`](super::SandboxServer::push_api_fault))
/// or for every request ([`set_api_fault`](super::SandboxServer::set_api_fault)); the request is
/// still counted and recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiFault {
    /// 401 `{"code": "UNAUTHORIZED", ...}`, whatever the token.
    Unauthorized,
    /// 500 `{"code": "INTERNAL_SERVER_ERROR", ...}`.
    ServerError,
    /// 503 `{"code": "SERVICE_UNAVAILABLE", ...}`.
    Unavailable,
    /// 429 `{"code": "TOO_MANY_REQUESTS", ...}`, Understory's rate limit (documented without
    /// `Retry-After`; a short `Some` keeps tests of a client that waits short).
    TooManyRequests {
        /// The `Retry-After` header, in seconds; none is sent if `None`.
        retry_after: Option<u64>,
    },
    /// Reads the request, then never answers (until the sandbox stops).
    Hang,
}

/// Faults queued for one request each, then a persistent one.
pub(crate) struct FaultQueue<F> {
    pub(crate) queued: VecDeque<F>,
    pub(crate) persistent: Option<F>,
}

impl<F> Default for FaultQueue<F> {
    fn default() -> Self {
        let (queued, persistent) = (VecDeque::new(), None);
        Self { queued, persistent }
    }
}

impl<F: Clone> FaultQueue<F> {
    /// The fault for the next request: a queued one, else the persistent one.
    pub(crate) fn next(&mut self) -> Option<F> {
        self.queued.pop_front().or_else(|| self.persistent.clone())
    }
}
