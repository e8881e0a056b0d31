//! [`SandboxError`]: why the sandbox's browser stand-in could not get a callback.

use std::net::SocketAddr;

/// Why [`SandboxServer::consent`](super::SandboxServer::consent) or
/// [`decline`](super::SandboxServer::decline) got no callback. It never holds the authorize
/// URL's query (its `state` and PKCE challenge are secrets).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The URL is not this sandbox's authorize endpoint.
    #[error(
        "the authorize URL is not http://{sandbox}/oauth2/auth?...: build it from \
         SandboxServer::authorize_url() (the browser helper speaks to its own sandbox only)"
    )]
    NotThisSandbox {
        /// The sandbox's address.
        sandbox: SocketAddr,
    },
    /// The request failed (the URL is left out of the error).
    #[error("the authorize request to the sandbox failed; is it still running? {0}")]
    Request(#[source] reqwest::Error),
    /// The sandbox answered with an error page instead of redirecting, as Hydra does for an
    /// unknown client, a redirect URI that is not registered or an unknown company.
    #[error(
        "the sandbox answered the authorize request with {status} `{error}` instead of a \
         redirect ({description}); check client_id and redirect_uri against the app registered \
         with SandboxBuilder::app, and the company against SandboxBuilder::company"
    )]
    NoRedirect {
        /// The HTTP status.
        status: u16,
        /// The OAuth2 error code, e.g. `invalid_client`.
        error: String,
        /// Hydra's description of it.
        description: String,
    },
}
