//! Hydra's OAuth2 errors: each code with its status and standard description.

use http::StatusCode;

use super::response::{SandboxResponse, hydra_error};

/// An OAuth2 error code, as Hydra answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OAuthError {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    InvalidScope,
    InvalidState,
    UnauthorizedClient,
    UnsupportedGrantType,
    UnsupportedResponseType,
    AccessDenied,
    ServerError,
    TemporarilyUnavailable,
}

/// An OAuth2 error with Hydra's "hint": what was wrong with this request.
pub(crate) struct Refusal {
    pub(crate) error: OAuthError,
    pub(crate) hint: String,
}

impl OAuthError {
    /// The error code, its HTTP status and Hydra's description of it.
    pub(crate) fn parts(self) -> (&'static str, StatusCode, &'static str) {
        match self {
            Self::InvalidRequest => (
                "invalid_request",
                StatusCode::BAD_REQUEST,
                "The request is missing a required parameter, includes an invalid parameter \
                 value, includes a parameter more than once, or is otherwise malformed.",
            ),
            Self::InvalidClient => (
                "invalid_client",
                StatusCode::UNAUTHORIZED,
                "Client authentication failed (e.g., unknown client, no client authentication \
                 included, or unsupported authentication method).",
            ),
            Self::InvalidGrant => (
                "invalid_grant",
                StatusCode::BAD_REQUEST,
                "The provided authorization grant (e.g., authorization code, resource owner \
                 credentials) or refresh token is invalid, expired, revoked, does not match the \
                 redirection URI used in the authorization request, or was issued to another \
                 client.",
            ),
            Self::InvalidState => (
                "invalid_state",
                StatusCode::BAD_REQUEST,
                "The state is missing or does not have enough characters and is therefore \
                 considered too weak.",
            ),
            Self::UnauthorizedClient => (
                "unauthorized_client",
                StatusCode::BAD_REQUEST,
                "The client is not authorized to request a token using this method.",
            ),
            Self::UnsupportedResponseType => (
                "unsupported_response_type",
                StatusCode::BAD_REQUEST,
                "The authorization server does not support obtaining a token using this method.",
            ),
            Self::AccessDenied => (
                "access_denied",
                StatusCode::FORBIDDEN,
                "The resource owner or authorization server denied the request.",
            ),
            Self::InvalidScope => (
                "invalid_scope",
                StatusCode::BAD_REQUEST,
                "The requested scope is invalid, unknown, or malformed.",
            ),
            Self::UnsupportedGrantType => (
                "unsupported_grant_type",
                StatusCode::BAD_REQUEST,
                "The authorization grant type is not supported by the authorization server.",
            ),
            Self::ServerError => (
                "server_error",
                StatusCode::INTERNAL_SERVER_ERROR,
                "The authorization server encountered an unexpected condition that prevented it \
                 from fulfilling the request.",
            ),
            Self::TemporarilyUnavailable => (
                "temporarily_unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "The authorization server is currently unable to handle the request due to a \
                 temporary overloading or maintenance of the server.",
            ),
        }
    }

    /// This error for a reason: `hint`, appended to the description.
    pub(crate) fn because(self, hint: impl Into<String>) -> Refusal {
        Refusal {
            error: self,
            hint: hint.into(),
        }
    }

    /// The token endpoint's answer, with the description alone.
    pub(crate) fn response(self) -> SandboxResponse {
        let (code, status, description) = self.parts();
        hydra_error(status, code, description)
    }
}

impl Refusal {
    /// The description followed by the hint.
    pub(crate) fn description(&self) -> String {
        format!("{} {}", self.error.parts().2, self.hint)
    }

    /// The token endpoint's answer.
    pub(crate) fn response(&self) -> SandboxResponse {
        let (code, status, _) = self.error.parts();
        hydra_error(status, code, self.description())
    }
}
