//! The sandbox's OAuth2 clients (the integration key and the third-party apps) and how the
//! token and revocation endpoints authenticate them, as Hydra does.

use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::basic_auth;
use super::body::form_value;
use super::companies::Company;
use super::oauth_error::{OAuthError, Refusal};
use crate::ClientAuthMethod;

/// What the sandbox knows from the start: its clients and companies.
pub(crate) struct Config {
    /// The integration key (`client_credentials`).
    pub(crate) key: Client,
    /// The third-party apps (`authorization_code`, `refresh_token`), at least one.
    pub(crate) apps: Vec<Client>,
    /// At least one; the first is the key's.
    pub(crate) companies: Vec<Company>,
}

/// A registered client.
pub(crate) struct Client {
    pub(crate) id: String,
    pub(crate) secret: String,
    /// Fixed per client, as in Hydra.
    pub(crate) auth: ClientAuthMethod,
    /// Empty for the integration key.
    pub(crate) redirect_uris: Vec<String>,
    /// The scopes an app may request (the key's are in the state: they change at run time).
    pub(crate) scopes: Vec<String>,
}

impl Config {
    /// The app registered as `client_id`.
    pub(crate) fn app(&self, client_id: &str) -> Option<&Client> {
        self.apps.iter().find(|app| app.id == client_id)
    }

    /// The company `id`.
    pub(crate) fn company(&self, id: &str) -> Option<&Company> {
        self.companies.iter().find(|company| company.id == id)
    }

    /// The integration key's company: the first.
    pub(crate) fn key_company(&self) -> &Company {
        &self.companies[0]
    }

    /// Whether `client` is the integration key.
    pub(crate) fn is_key(&self, client: &Client) -> bool {
        std::ptr::eq(client, &self.key)
    }

    /// The client whose credentials the request carries, sent the way it is registered for.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<&Client, Refusal> {
        use OAuthError::InvalidClient;
        let basic = headers
            .get(AUTHORIZATION)
            .filter(|value| basic_auth::is_basic(value));
        let body_secret = form_value(body, "client_secret");
        let (method, client_id, secret) = match (basic, body_secret) {
            (Some(_), Some(_)) => {
                return Err(InvalidClient.because(
                    "Client credentials were sent both in the Authorization header and in the \
                     request body.",
                ));
            }
            (None, None) => return Err(InvalidClient.because("No client credentials were sent.")),
            (None, Some(secret)) => {
                let client_id = form_value(body, "client_id").unwrap_or_default();
                (ClientAuthMethod::ClientSecretPost, client_id, secret)
            }
            (Some(header), None) => {
                let credentials = basic_auth::parse(header).ok_or_else(|| {
                    InvalidClient
                        .because("The Authorization header is not valid HTTP Basic authentication.")
                })?;
                let (id, secret) = (credentials.client_id, credentials.client_secret);
                (ClientAuthMethod::ClientSecretBasic, id, secret)
            }
        };
        let client = std::iter::once(&self.key)
            .chain(&self.apps)
            .find(|client| client.id == client_id)
            .ok_or_else(|| {
                InvalidClient.because("The requested OAuth 2.0 Client does not exist.")
            })?;
        if client.auth != method {
            return Err(wrong_method(client.auth));
        }
        if secret != client.secret {
            return Err(InvalidClient.because("The provided client secret did not match."));
        }
        Ok(client)
    }
}

fn wrong_method(registered: ClientAuthMethod) -> Refusal {
    let (registered, used) = match registered {
        ClientAuthMethod::ClientSecretPost => ("client_secret_post", "client_secret_basic"),
        ClientAuthMethod::ClientSecretBasic => ("client_secret_basic", "client_secret_post"),
    };
    OAuthError::InvalidClient.because(format!(
        "The OAuth 2.0 Client supports client authentication method '{registered}', but method \
         '{used}' was requested. You must configure the OAuth 2.0 client's \
         'token_endpoint_auth_method' value to accept '{used}'."
    ))
}
