//! Requests as the sandbox received them.

use bytes::Bytes;
use http::{HeaderMap, Method};

use super::body::form_value;

/// A request the sandbox received, as it arrived: see
/// [`SandboxServer::token_requests_received`](super::SandboxServer::token_requests_received) and
/// [`SandboxServer::api_requests_received`](super::SandboxServer::api_requests_received).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The path and, if there was one, the query string, e.g. `/v1/events?limit=10`.
    pub path: String,
    /// The request headers.
    pub headers: HeaderMap,
    /// The complete request body (empty if it was larger than the sandbox accepts).
    pub body: Bytes,
}

impl RecordedRequest {
    /// Records the head of a request together with its body.
    pub(crate) fn new(head: &http::request::Parts, body: Bytes) -> Self {
        let path = head.uri.path_and_query().map_or_else(
            || head.uri.path().to_owned(),
            |path| path.as_str().to_owned(),
        );
        Self {
            method: head.method.clone(),
            path,
            headers: head.headers.clone(),
            body,
        }
    }

    /// The body parsed as `application/x-www-form-urlencoded`, pairs in the order they were sent.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }

    /// The first value of `key` in the body parsed as `application/x-www-form-urlencoded`.
    pub fn form_value(&self, key: &str) -> Option<String> {
        form_value(&self.body, key)
    }

    /// The first value of the header `name` (case-insensitive), if it is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}
