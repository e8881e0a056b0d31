//! Requests as the sandbox received them.

use bytes::Bytes;
use http::{HeaderMap, Method};

/// A request the sandbox received, as it arrived: see
/// [`SandboxServer::token_requests_received`](super::SandboxServer::token_requests_received) and
/// [`SandboxServer::api_requests_received`](super::SandboxServer::api_requests_received).
///
/// ```
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use understory_auth::testing::SandboxServer;
///
/// let server = SandboxServer::start().await?;
/// reqwest::Client::new()
///     .get(format!("{}/v1/events?limit=10", server.api_base()))
///     .send()
///     .await?;
///
/// let requests = server.api_requests_received();
/// assert_eq!(requests[0].method, http::Method::GET);
/// assert_eq!(requests[0].path, "/v1/events?limit=10");
/// assert!(requests[0].body.is_empty());
/// # Ok(())
/// # }
/// # tokio::runtime::Runtime::new()?.block_on(example())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// reqwest::Client::new()
    ///     .post(server.token_url())
    ///     .header("content-type", "application/x-www-form-urlencoded")
    ///     .body("grant_type=client_credentials&scope=openid+event.read")
    ///     .send()
    ///     .await?;
    ///
    /// let form = server.token_requests_received()[0].form();
    /// assert_eq!(
    ///     form,
    ///     [
    ///         ("grant_type".to_owned(), "client_credentials".to_owned()),
    ///         ("scope".to_owned(), "openid event.read".to_owned()),
    ///     ]
    /// );
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }

    /// The first value of `key` in the body parsed as `application/x-www-form-urlencoded`.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// reqwest::Client::new()
    ///     .post(server.token_url())
    ///     .header("content-type", "application/x-www-form-urlencoded")
    ///     .body("grant_type=client_credentials&audience=https%3A%2F%2Fapi.understory.io")
    ///     .send()
    ///     .await?;
    ///
    /// let request = &server.token_requests_received()[0];
    /// assert_eq!(request.form_value("audience").as_deref(), Some("https://api.understory.io"));
    /// assert_eq!(request.form_value("client_secret"), None);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn form_value(&self, key: &str) -> Option<String> {
        url::form_urlencoded::parse(&self.body)
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.into_owned())
    }

    /// The first value of the header `name` (case-insensitive), if it is visible ASCII.
    ///
    /// ```
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// use understory_auth::testing::SandboxServer;
    ///
    /// let server = SandboxServer::start().await?;
    /// reqwest::Client::new()
    ///     .get(format!("{}/v1/me", server.api_base()))
    ///     .header("User-Agent", "My-Company/Marketing-Automation-App")
    ///     .send()
    ///     .await?;
    ///
    /// let request = &server.api_requests_received()[0];
    /// assert_eq!(request.header("user-agent"), Some("My-Company/Marketing-Automation-App"));
    /// assert_eq!(request.header("authorization"), None);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Runtime::new()?.block_on(example())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}
