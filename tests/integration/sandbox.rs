//! The sandbox server itself, exercised over real loopback HTTP with a plain reqwest client.
#![cfg(feature = "test-util")]

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use understory_auth::testing::{
    AUDIENCE, ApiFault, EchoIn, SandboxBuilder, SandboxError, SandboxServer, TokenFault,
};
use understory_auth::{ClientAuthMethod, scope};

use crate::common::ECHO_PLACES;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const FORM: &str = "application/x-www-form-urlencoded";
const HYDRA_JSON: &str = "application/json;charset=UTF-8";
const INVALID_CLIENT_DESCRIPTION: &str = "Client authentication failed (e.g., unknown client, no \
                                          client authentication included, or unsupported \
                                          authentication method).";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A sandbox and a client for it. Building a reqwest client takes a while (it loads TLS
/// roots), so each test builds one and reuses it.
struct Sandbox {
    server: SandboxServer,
    http: reqwest::Client,
}

impl std::ops::Deref for Sandbox {
    type Target = SandboxServer;

    fn deref(&self) -> &SandboxServer {
        &self.server
    }
}

impl Sandbox {
    async fn start() -> TestResult<Self> {
        Self::from(SandboxServer::builder()).await
    }

    async fn from(builder: SandboxBuilder) -> TestResult<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            server: builder.start().await?,
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_base())
    }

    /// The form Understory documents for integration keys.
    fn valid_form(&self, scope: &str) -> String {
        form(&[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("audience", AUDIENCE),
            ("client_id", self.client_id()),
            ("client_secret", self.client_secret()),
        ])
    }

    /// A token request with the `Authorization` header `authorization`.
    async fn post_basic(
        &self,
        authorization: impl AsRef<str>,
        body: String,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(self.token_url())
            .header("content-type", FORM)
            .header("authorization", authorization.as_ref())
            .body(body)
            .send()
            .await
    }

    async fn post_token(&self, body: String) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(self.token_url())
            .header("content-type", FORM)
            .body(body)
            .send()
            .await
    }

    /// Fetches a token the documented way and returns it.
    async fn fetch_token(&self, scope: &str) -> TestResult<String> {
        let response = self.post_token(self.valid_form(scope)).await?;
        assert_eq!(response.status(), 200);
        let body = json(response).await?;
        Ok(body["access_token"]
            .as_str()
            .ok_or("access_token is not a string")?
            .to_owned())
    }

    async fn get_me(&self, token: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(self.url("/v1/me"))
            .bearer_auth(token)
            .send()
            .await
    }
}

/// A client that gives up after 300 ms.
fn impatient_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
}

/// Form-urlencoded with `~` literal, as Understory's server requires (the sandbox refuses
/// `%7E`, see `an_encoded_tilde_is_refused_naming_the_field`).
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `value` form-urlencoded, `~` literal.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace("%7E", "~")
}

async fn json(response: reqwest::Response) -> TestResult<Value> {
    Ok(serde_json::from_slice(&response.bytes().await?)?)
}

/// Asserts an OAuth2 error answer of the token endpoint, Hydra style; returns its description.
async fn assert_oauth_error(
    response: reqwest::Response,
    status: u16,
    error: &str,
) -> TestResult<String> {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], HYDRA_JSON);
    assert!(response.headers().get("www-authenticate").is_none());
    let body = json(response).await?;
    assert_eq!(body["error"], error, "body: {body}");
    Ok(body["error_description"]
        .as_str()
        .ok_or("error_description is not a string")?
        .to_owned())
}

async fn assert_unauthorized(response: reqwest::Response) -> TestResult<String> {
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json(response).await?;
    assert_eq!(body["code"], "UNAUTHORIZED", "body: {body}");
    Ok(body["message"]
        .as_str()
        .ok_or("message is not a string")?
        .to_owned())
}

/// `Basic base64(urlencode(id):urlencode(secret))`, as OAuth2 specifies.
fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    let credentials = format!("{}:{}", encode(client_id), encode(client_secret));
    format!("Basic {}", STANDARD.encode(credentials))
}

// ---------------------------------------------------------------------------------------------
// Token endpoint: success
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn issues_a_token_shaped_like_hydras() -> TestResult {
    let server = Sandbox::start().await?;
    let response = server
        .post_token(server.valid_form("openid booking.read"))
        .await?;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], HYDRA_JSON);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json(response).await?;
    let object = body.as_object().ok_or("not a JSON object")?;
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["access_token", "expires_in", "scope", "token_type"]);
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["scope"], "openid booking.read");
    assert_eq!(body["token_type"], "bearer");

    let token = body["access_token"].as_str().ok_or("no access_token")?;
    let random = token.strip_prefix("ory_at_").ok_or("no ory_at_ prefix")?;
    assert_eq!(random.len(), 43);
    assert!(
        random
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(server.issued_tokens(), [token]);
    assert_eq!(server.token_requests(), 1);
    Ok(())
}

#[tokio::test]
async fn tokens_are_unique_and_listed_in_order() -> TestResult {
    let server = Sandbox::start().await?;
    let mut tokens = Vec::new();
    for _ in 0..20 {
        tokens.push(server.fetch_token("").await?);
    }
    assert_eq!(server.issued_tokens(), tokens);
    assert_eq!(tokens.iter().collect::<HashSet<_>>().len(), 20);
    Ok(())
}

#[tokio::test]
async fn grants_an_empty_scope_when_none_is_requested() -> TestResult {
    let server = Sandbox::start().await?;
    let without_scope = form(&[
        ("grant_type", "client_credentials"),
        ("audience", AUDIENCE),
        ("client_id", server.client_id()),
        ("client_secret", server.client_secret()),
    ]);
    let body = json(server.post_token(without_scope).await?).await?;
    assert_eq!(body["scope"], "");

    let duplicated = server.valid_form(" openid  openid event.read ");
    let body = json(server.post_token(duplicated).await?).await?;
    assert_eq!(body["scope"], "openid event.read");
    Ok(())
}

#[tokio::test]
async fn accepts_a_content_type_with_parameters() -> TestResult {
    let server = Sandbox::start().await?;
    let response = server
        .http
        .post(server.token_url())
        .header(
            "content-type",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        )
        .body(server.valid_form("openid"))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    Ok(())
}

#[tokio::test]
async fn expires_in_is_the_lifetime_in_whole_seconds() -> TestResult {
    let server =
        Sandbox::from(SandboxServer::builder().token_lifetime(Duration::from_secs(90))).await?;
    let body = json(server.post_token(server.valid_form("")).await?).await?;
    assert_eq!(body["expires_in"], 90);

    server.set_token_lifetime(Duration::from_millis(1500));
    let body = json(server.post_token(server.valid_form("")).await?).await?;
    assert_eq!(body["expires_in"], 1);

    server.set_token_lifetime(Duration::from_millis(999));
    let body = json(server.post_token(server.valid_form("")).await?).await?;
    assert_eq!(body["expires_in"], 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Token endpoint: client authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn wrong_or_missing_credentials_are_invalid_client() -> TestResult {
    let server = Sandbox::start().await?;
    let (id, secret) = (server.client_id(), server.client_secret());
    for (client_id, client_secret) in [(id, "not-the-secret"), ("someone-else", secret)] {
        let body = form(&[
            ("grant_type", "client_credentials"),
            ("audience", AUDIENCE),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ]);
        let response = server.post_token(body).await?;
        let description = assert_oauth_error(response, 401, "invalid_client").await?;
        assert!(
            description.starts_with(INVALID_CLIENT_DESCRIPTION),
            "{description}"
        );
    }
    let no_credentials = form(&[("grant_type", "client_credentials"), ("audience", AUDIENCE)]);
    assert_oauth_error(
        server.post_token(no_credentials).await?,
        401,
        "invalid_client",
    )
    .await?;
    assert!(server.issued_tokens().is_empty());
    Ok(())
}

#[tokio::test]
async fn the_generated_secret_is_understorys_kind_and_survives_form_encoding() -> TestResult {
    let (first, second) = (Sandbox::start().await?, Sandbox::start().await?);
    assert_ne!(
        first.client_secret(),
        second.client_secret(),
        "one per sandbox"
    );
    for server in [&first, &second] {
        let secret = server.client_secret();
        assert_eq!(secret.len(), 26);
        assert!(secret.contains('~'), "{secret}");
        assert!(
            secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.~".contains(&b)),
            "{secret}"
        );
        server.fetch_token("").await?;
        let recorded = &server.token_requests_received()[0];
        assert_eq!(
            recorded.form_value("client_secret").as_deref(),
            Some(secret)
        );
    }
    Ok(())
}

/// Issue 18: as Understory's server, the sandbox refuses `%7E` (any case) in the body:
/// `invalid_client` in the credentials, `invalid_request` elsewhere, naming the field.
#[tokio::test]
async fn an_encoded_tilde_is_refused_naming_the_field() -> TestResult {
    let server = Sandbox::start().await?;
    let secret = server.client_secret().to_owned();
    let valid = server.valid_form("openid");
    for (body, field, status, error) in [
        (
            valid.replace('~', "%7E"),
            "client_secret",
            401,
            "invalid_client",
        ),
        (
            valid.replace('~', "%7e"),
            "client_secret",
            401,
            "invalid_client",
        ),
        (
            valid.replace("scope=openid", "scope=openid%7Ex"),
            "scope",
            400,
            "invalid_request",
        ),
    ] {
        let response = server.post_token(body).await?;
        let description = assert_oauth_error(response, status, error).await?;
        assert!(
            description.contains(&format!("'{field}' holds '%7E'"))
                && description.contains("literal '~'"),
            "{field}: {description}"
        );
        assert!(!description.contains(&secret[..8]), "{description}");
    }
    assert!(server.issued_tokens().is_empty());
    // `~` itself, and `%7E` spelled out as `%257E` (a literal "%7E"), are fine.
    let body = server
        .valid_form("openid")
        .replace("audience=", "x=%257E&audience=");
    assert_eq!(server.post_token(body).await?.status(), 200);
    assert_eq!(server.issued_tokens().len(), 1);
    Ok(())
}

#[tokio::test]
async fn basic_auth_is_refused_for_a_post_client() -> TestResult {
    let server = Sandbox::start().await?;
    assert_eq!(
        server.client_auth_method(),
        ClientAuthMethod::ClientSecretPost
    );
    let response = server
        .post_basic(
            basic_authorization(server.client_id(), server.client_secret()),
            form(&[("grant_type", "client_credentials"), ("audience", AUDIENCE)]),
        )
        .await?;
    let description = assert_oauth_error(response, 401, "invalid_client").await?;
    assert!(description.contains("client_secret_post"), "{description}");
    Ok(())
}

#[tokio::test]
async fn basic_auth_is_accepted_for_a_basic_client() -> TestResult {
    let server = Sandbox::from(
        SandboxServer::builder()
            .client_id("id with spaces")
            .client_secret("p@ss:w+rd%~.")
            .client_auth_method(ClientAuthMethod::ClientSecretBasic),
    )
    .await?;
    let response = server
        .post_basic(
            basic_authorization(server.client_id(), server.client_secret()),
            form(&[
                ("grant_type", "client_credentials"),
                ("audience", AUDIENCE),
                ("scope", "openid"),
            ]),
        )
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await?["scope"], "openid");
    Ok(())
}

#[tokio::test]
async fn basic_auth_with_a_wrong_secret_is_invalid_client() -> TestResult {
    let server = Sandbox::from(
        SandboxServer::builder().client_auth_method(ClientAuthMethod::ClientSecretBasic),
    )
    .await?;
    for authorization in [
        basic_authorization(server.client_id(), "wrong"),
        "Basic not*base64".to_owned(),
        format!("Basic {}", STANDARD.encode("no-colon")),
    ] {
        let response = server
            .http
            .post(server.token_url())
            .header("content-type", FORM)
            .header("authorization", authorization)
            .body(form(&[
                ("grant_type", "client_credentials"),
                ("audience", AUDIENCE),
            ]))
            .send()
            .await?;
        assert_oauth_error(response, 401, "invalid_client").await?;
    }
    Ok(())
}

#[tokio::test]
async fn post_credentials_are_refused_for_a_basic_client() -> TestResult {
    let server = Sandbox::from(
        SandboxServer::builder().client_auth_method(ClientAuthMethod::ClientSecretBasic),
    )
    .await?;
    let description = assert_oauth_error(
        server.post_token(server.valid_form("")).await?,
        401,
        "invalid_client",
    )
    .await?;
    assert!(description.contains("client_secret_basic"), "{description}");

    // Both methods at once are refused too.
    let response = server
        .post_basic(
            basic_authorization(server.client_id(), server.client_secret()),
            server.valid_form(""),
        )
        .await?;
    assert_oauth_error(response, 401, "invalid_client").await?;
    assert!(server.issued_tokens().is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Token endpoint: request validation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_scope_not_allowed_is_invalid_scope_naming_it() -> TestResult {
    let server = Sandbox::start().await?;
    let response = server
        .post_token(server.valid_form("openid offline"))
        .await?;
    let description = assert_oauth_error(response, 400, "invalid_scope").await?;
    assert!(description.contains("'offline'"), "{description}");
    assert!(server.issued_tokens().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_wrong_or_missing_audience_is_invalid_request() -> TestResult {
    let server = Sandbox::start().await?;
    let wrong = form(&[
        ("grant_type", "client_credentials"),
        ("audience", "https://api.understory.io/"),
        ("client_id", server.client_id()),
        ("client_secret", server.client_secret()),
    ]);
    let description =
        assert_oauth_error(server.post_token(wrong).await?, 400, "invalid_request").await?;
    assert!(
        description.contains("https://api.understory.io/"),
        "{description}"
    );

    let missing = form(&[
        ("grant_type", "client_credentials"),
        ("client_id", server.client_id()),
        ("client_secret", server.client_secret()),
    ]);
    assert_oauth_error(server.post_token(missing).await?, 400, "invalid_request").await?;
    Ok(())
}

#[tokio::test]
async fn another_grant_type_is_unsupported() -> TestResult {
    let server = Sandbox::start().await?;
    let password = form(&[
        ("grant_type", "password"),
        ("audience", AUDIENCE),
        ("client_id", server.client_id()),
        ("client_secret", server.client_secret()),
    ]);
    assert_oauth_error(
        server.post_token(password).await?,
        400,
        "unsupported_grant_type",
    )
    .await?;

    let missing = form(&[
        ("audience", AUDIENCE),
        ("client_id", server.client_id()),
        ("client_secret", server.client_secret()),
    ]);
    assert_oauth_error(server.post_token(missing).await?, 400, "invalid_request").await?;
    Ok(())
}

#[tokio::test]
async fn only_form_posts_are_accepted() -> TestResult {
    let server = Sandbox::start().await?;
    let get = server.http.get(server.token_url()).send().await?;
    assert_oauth_error(get, 400, "invalid_request").await?;

    let as_json = server
        .http
        .post(server.token_url())
        .header("content-type", "application/json")
        .body(r#"{"grant_type":"client_credentials"}"#)
        .send()
        .await?;
    assert_oauth_error(as_json, 400, "invalid_request").await?;

    let no_content_type = server
        .http
        .post(server.token_url())
        .body(server.valid_form(""))
        .send()
        .await?;
    assert_oauth_error(no_content_type, 400, "invalid_request").await?;

    assert_eq!(server.token_requests(), 3);
    assert!(server.issued_tokens().is_empty());
    Ok(())
}

#[tokio::test]
async fn an_oversized_body_is_refused() -> TestResult {
    let server = Sandbox::start().await?;
    let huge = format!(
        "{}&padding={}",
        server.valid_form(""),
        "x".repeat(2 * 1024 * 1024)
    );
    let response = server.post_token(huge).await?;
    assert_oauth_error(response, 400, "invalid_request").await?;
    assert_eq!(server.token_requests(), 1);
    assert!(server.token_requests_received()[0].body.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Token endpoint: faults and delays
// ---------------------------------------------------------------------------------------------

/// What a fault's answer looks like from the client.
struct Expected {
    status: u16,
    content_type: &'static str,
    /// The OAuth2 `error`, for answers in Hydra's format.
    oauth_error: Option<&'static str>,
}

impl Expected {
    fn hydra(status: u16, oauth_error: &'static str) -> Self {
        Self {
            status,
            content_type: HYDRA_JSON,
            oauth_error: Some(oauth_error),
        }
    }

    fn other(status: u16, content_type: &'static str) -> Self {
        Self {
            status,
            content_type,
            oauth_error: None,
        }
    }
}

#[tokio::test]
async fn simple_faults_answer_as_documented() -> TestResult {
    let server = Sandbox::start().await?;
    let teapot = TokenFault::Body {
        status: 418,
        content_type: "text/x-teapot".to_owned(),
        body: "short and stout".to_owned(),
    };
    let cases = [
        (
            TokenFault::ServerError,
            Expected::hydra(500, "server_error"),
        ),
        (
            TokenFault::Unavailable,
            Expected::hydra(503, "temporarily_unavailable"),
        ),
        (
            TokenFault::InvalidClient,
            Expected::hydra(401, "invalid_client"),
        ),
        (
            TokenFault::InvalidScope,
            Expected::hydra(400, "invalid_scope"),
        ),
        (
            TokenFault::TooManyRequests { retry_after: None },
            Expected::other(429, "application/json"),
        ),
        (
            TokenFault::HtmlError { status: 502 },
            Expected::other(502, "text/html"),
        ),
        (
            TokenFault::HtmlError { status: 101 },
            Expected::other(500, "text/html"),
        ),
        (teapot, Expected::other(418, "text/x-teapot")),
    ];
    for (fault, expected) in cases {
        server.push_token_fault(fault.clone());
        let response = server.post_token(server.valid_form("")).await?;
        assert_eq!(response.status(), expected.status, "{fault:?}");
        assert_eq!(
            response.headers()["content-type"],
            expected.content_type,
            "{fault:?}"
        );
        assert!(response.headers().get("retry-after").is_none(), "{fault:?}");
        let body = response.text().await?;
        if let Some(oauth_error) = expected.oauth_error {
            let body: Value = serde_json::from_str(&body)?;
            assert_eq!(body["error"], oauth_error, "{fault:?}");
            assert!(body["error_description"].is_string(), "{fault:?}");
        }
        if let TokenFault::Body { body: sent, .. } = &fault {
            assert_eq!(&body, sent);
        }
    }
    assert!(server.issued_tokens().is_empty());
    assert_eq!(server.token_requests(), 8);
    Ok(())
}

#[tokio::test]
async fn too_many_requests_sends_retry_after_when_asked() -> TestResult {
    let server = Sandbox::start().await?;
    server.push_token_fault(TokenFault::TooManyRequests {
        retry_after: Some(60),
    });
    let response = server.post_token(server.valid_form("")).await?;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "60");
    assert_eq!(json(response).await?["code"], "TOO_MANY_REQUESTS");
    assert!(server.issued_tokens().is_empty());
    Ok(())
}

/// What an echo fault's answer shows of the request, wherever it puts it.
async fn echoed_text(response: reqwest::Response, into: EchoIn) -> TestResult<String> {
    let headers = response.headers().clone();
    let status = response.status().as_u16();
    let text = response.text().await?;
    let field = |name: &str| -> TestResult<String> {
        let body: Value = serde_json::from_str(&text)?;
        Ok(body[name].as_str().ok_or("not a string")?.to_owned())
    };
    let (expected_status, echoed) = match into {
        EchoIn::Error => (400, field("error")?),
        EchoIn::ErrorDescription => (400, field("error_description")?),
        EchoIn::ErrorUri => (400, field("error_uri")?),
        EchoIn::TokenType => (200, field("token_type")?),
        EchoIn::Scope => (200, field("scope")?),
        EchoIn::HtmlPage => (502, text),
        EchoIn::Headers => (
            503,
            format!(
                "{} {}",
                headers["retry-after"].to_str()?,
                headers["www-authenticate"].to_str()?
            ),
        ),
        _ => return Err("an EchoIn this test does not know".into()),
    };
    assert_eq!(status, expected_status, "{into:?}");
    Ok(echoed)
}

#[tokio::test]
async fn echo_faults_repeat_the_secrets_and_the_latest_token() -> TestResult {
    for method in [
        ClientAuthMethod::ClientSecretPost,
        ClientAuthMethod::ClientSecretBasic,
    ] {
        let server = Sandbox::from(SandboxServer::builder().client_auth_method(method)).await?;
        let (body, authorization) = match method {
            ClientAuthMethod::ClientSecretPost => (server.valid_form("openid"), None),
            _ => (
                form(&[("grant_type", "client_credentials"), ("audience", AUDIENCE)]),
                Some(basic_authorization(
                    server.client_id(),
                    server.client_secret(),
                )),
            ),
        };
        let send = || {
            let mut request = server
                .http
                .post(server.token_url())
                .header("content-type", FORM)
                .body(body.clone());
            if let Some(authorization) = &authorization {
                request = request.header("authorization", authorization);
            }
            request.send()
        };
        assert_eq!(send().await?.status(), 200, "{method:?}");
        for into in ECHO_PLACES {
            let latest = server.issued_tokens().pop().ok_or("a token was issued")?;
            server.push_token_fault(TokenFault::Echo(into));
            let echoed = echoed_text(send().await?, into).await?;
            assert!(echoed.contains(&latest), "{method:?} {into:?}: {echoed}");
            match &authorization {
                None => assert!(echoed.contains(&body), "{into:?}: {echoed}"),
                Some(header) => assert!(echoed.contains(header), "{into:?}: {echoed}"),
            }
        }
        // The two 200s issued real tokens, usable on the API.
        let issued = server.issued_tokens();
        assert_eq!(issued.len(), 3, "{method:?}");
        assert_eq!(server.get_me(&issued[2]).await?.status(), 200);
    }
    Ok(())
}

#[tokio::test]
async fn malformed_token_answers_are_200s_with_bad_content() -> TestResult {
    let server = Sandbox::start().await?;

    server.push_token_fault(TokenFault::MalformedJson);
    let response = server.post_token(server.valid_form("")).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], HYDRA_JSON);
    assert!(serde_json::from_slice::<Value>(&response.bytes().await?).is_err());

    server.push_token_fault(TokenFault::WrongTokenType);
    let body = json(server.post_token(server.valid_form("")).await?).await?;
    assert_eq!(body["token_type"], "mac");
    let token = body["access_token"].as_str().ok_or("no access_token")?;
    assert!(!token.is_empty());
    assert_unauthorized(server.get_me(token).await?).await?;

    server.push_token_fault(TokenFault::EmptyToken);
    let body = json(server.post_token(server.valid_form("")).await?).await?;
    assert_eq!(body["access_token"], "");
    assert_eq!(body["token_type"], "bearer");

    assert!(server.issued_tokens().is_empty());
    Ok(())
}

#[tokio::test]
async fn redirect_fault_answers_307() -> TestResult {
    let server = Sandbox::start().await?;
    let elsewhere = format!("{}/elsewhere", server.api_base());
    server.push_token_fault(TokenFault::Redirect {
        location: elsewhere.clone(),
    });
    let response = server.post_token(server.valid_form("")).await?;
    assert_eq!(response.status(), 307);
    assert_eq!(response.headers()["location"], elsewhere.as_str());
    Ok(())
}

#[tokio::test]
async fn faults_are_queued_before_the_persistent_one() -> TestResult {
    let server = Sandbox::start().await?;
    server.push_token_fault(TokenFault::ServerError);
    server.push_token_fault(TokenFault::Unavailable);
    server.set_token_fault(Some(TokenFault::HtmlError { status: 502 }));

    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            server
                .post_token(server.valid_form(""))
                .await?
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [500, 503, 502, 502]);

    server.set_token_fault(None);
    server.fetch_token("").await?;

    server.push_token_fault(TokenFault::ServerError);
    server.set_token_fault(Some(TokenFault::Unavailable));
    server.clear_token_faults();
    server.fetch_token("").await?;

    assert_eq!(server.token_requests(), 6);
    assert_eq!(server.issued_tokens().len(), 2);
    Ok(())
}

#[tokio::test]
async fn hang_never_answers_and_is_used_once() -> TestResult {
    let server = Sandbox::start().await?;
    server.push_token_fault(TokenFault::Hang);
    let impatient = impatient_client()?;
    let error = impatient
        .post(server.token_url())
        .header("content-type", FORM)
        .body(server.valid_form(""))
        .send()
        .await
        .expect_err("a hanging token endpoint cannot answer");
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(server.token_requests(), 1);

    server.fetch_token("").await?;
    Ok(())
}

#[tokio::test]
async fn reset_mid_body_breaks_the_body() -> TestResult {
    let server = Sandbox::start().await?;
    server.push_token_fault(TokenFault::ResetMidBody);
    let response = server.post_token(server.valid_form("")).await?;
    assert_eq!(response.status(), 200);
    let announced: usize = response.headers()["content-length"].to_str()?.parse()?;
    assert!(announced > 0);
    let error = response
        .bytes()
        .await
        .expect_err("the body is shorter than its Content-Length");
    assert!(error.is_body() || error.is_decode(), "{error:?}");

    server.fetch_token("").await?;
    Ok(())
}

#[tokio::test]
async fn endless_body_keeps_streaming() -> TestResult {
    let server = Sandbox::start().await?;
    server.push_token_fault(TokenFault::EndlessBody);
    let mut response = server.post_token(server.valid_form("")).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], HYDRA_JSON);
    assert!(response.headers().get("content-length").is_none());

    let mut received = Vec::new();
    while received.len() <= 2 * 1024 * 1024 {
        let chunk = response.chunk().await?.ok_or("the endless body ended")?;
        received.extend_from_slice(&chunk);
    }
    assert!(received.starts_with(br#"{"access_token":""#));
    drop(response);

    server.fetch_token("").await?;
    Ok(())
}

#[tokio::test]
async fn delays_hold_answers_back() -> TestResult {
    let server = Sandbox::start().await?;
    let token = server.fetch_token("").await?;
    server.set_token_delay(Duration::from_secs(30));
    server.set_api_delay(Duration::from_secs(30));
    let impatient = impatient_client()?;
    let token_request = impatient
        .post(server.token_url())
        .header("content-type", FORM)
        .body(server.valid_form(""));
    let api_request = impatient.get(server.url("/v1/me")).bearer_auth(&token);
    for request in [token_request, api_request] {
        let error = request
            .send()
            .await
            .expect_err("the delay is longer than the timeout");
        assert!(error.is_timeout(), "{error:?}");
    }
    assert_eq!(
        (server.token_requests(), server.api_requests()),
        (2, 1),
        "counted first"
    );

    server.set_token_delay(Duration::ZERO);
    server.set_api_delay(Duration::ZERO);
    let token = server.fetch_token("").await?;
    assert_eq!(server.get_me(&token).await?.status(), 200);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn me_describes_the_client_for_a_valid_token() -> TestResult {
    let server = Sandbox::start().await?;
    let token = server.fetch_token("openid booking.read").await?;
    let response = server.get_me(&token).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json(response).await?;
    assert_eq!(body["client_id"], server.client_id());
    assert_eq!(
        body["scopes"],
        serde_json::json!(["openid", "booking.read"])
    );

    for scheme in ["bearer", "BEARER"] {
        let response = server
            .http
            .get(server.url("/v1/me"))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await?;
        assert_eq!(response.status(), 200, "scheme {scheme}");
    }
    Ok(())
}

#[tokio::test]
async fn missing_or_unknown_tokens_are_unauthorized() -> TestResult {
    let server = Sandbox::start().await?;
    let url = server.url("/v1/me");
    assert_unauthorized(server.http.get(&url).send().await?).await?;
    assert_unauthorized(server.get_me("ory_at_made-up").await?).await?;
    let token = server.fetch_token("").await?;
    let basic = server
        .http
        .get(&url)
        .header("authorization", format!("Basic {token}"))
        .send()
        .await?;
    assert_unauthorized(basic).await?;
    assert_eq!(server.api_requests(), 3);
    Ok(())
}

#[tokio::test]
async fn revoked_tokens_are_unauthorized() -> TestResult {
    let server = Sandbox::start().await?;
    let first = server.fetch_token("").await?;
    let second = server.fetch_token("").await?;

    server.revoke_token(&first);
    assert_unauthorized(server.get_me(&first).await?).await?;
    assert_eq!(server.get_me(&second).await?.status(), 200);

    server.revoke_all_tokens();
    assert_unauthorized(server.get_me(&second).await?).await?;

    let third = server.fetch_token("").await?;
    assert_eq!(server.get_me(&third).await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn tokens_expire_after_their_lifetime() -> TestResult {
    let server =
        Sandbox::from(SandboxServer::builder().token_lifetime(Duration::from_millis(200))).await?;
    let token = server.fetch_token("").await?;
    assert_eq!(server.get_me(&token).await?.status(), 200);
    // The token was issued before it was returned, so it is past its lifetime after this.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let message = assert_unauthorized(server.get_me(&token).await?).await?;
    assert!(message.contains("expired"), "{message}");

    server.set_token_lifetime(Duration::ZERO);
    let body = json(server.post_token(server.valid_form("")).await?).await?;
    assert_eq!(body["expires_in"], 0);
    let token = body["access_token"].as_str().ok_or("no access_token")?;
    let message = assert_unauthorized(server.get_me(token).await?).await?;
    assert!(message.contains("expired"), "{message}");
    Ok(())
}

#[tokio::test]
async fn always_unauthorized_rejects_valid_tokens_until_switched_off() -> TestResult {
    let server = Sandbox::start().await?;
    let token = server.fetch_token("").await?;
    server.set_api_always_unauthorized(true);
    assert_unauthorized(server.get_me(&token).await?).await?;
    server.set_api_always_unauthorized(false);
    assert_eq!(server.get_me(&token).await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn api_routes_answer_like_understory() -> TestResult {
    let server = Sandbox::start().await?;
    let token = server
        .fetch_token("booking.read experience.read event.read webhook.write")
        .await?;

    for path in [
        "/v1/bookings",
        "/v1/experiences",
        "/v1/events?cursor=abc&limit=10",
    ] {
        let response = server
            .http
            .get(server.url(path))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            json(response).await?,
            serde_json::json!({ "next": null, "items": [] })
        );
    }

    let subscription = r#"{"url":"https://example.com/hook","events":["booking.created"]}"#;
    let response = server
        .http
        .post(server.url("/v1/webhook-subscriptions"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(subscription)
        .send()
        .await?;
    assert_eq!(response.status(), 201);
    assert_eq!(response.text().await?, subscription);

    let response = server
        .http
        .get(server.url("/v1/nothing-here"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status(), 404);
    assert_eq!(json(response).await?["code"], "NOT_FOUND");

    let response = server
        .http
        .delete(server.url("/v1/me"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");

    assert_eq!(server.api_requests(), 6);
    Ok(())
}

/// Every endpoint, with the scope it requires.
const SCOPED_ENDPOINTS: [(&str, &str, &str); 8] = [
    ("GET", "/v1/bookings", scope::BOOKING_READ),
    ("GET", "/v1/events", scope::EVENT_READ),
    ("GET", "/v1/event-availabilities", scope::EVENT_READ),
    ("GET", "/v1/experiences", scope::EXPERIENCE_READ),
    ("GET", "/v1/marketing-consents", scope::MARKETING_READ),
    ("GET", "/v1/orders", scope::ORDER_READ),
    ("GET", "/v1/webhook-subscriptions", scope::WEBHOOK_READ),
    ("POST", "/v1/webhook-subscriptions", scope::WEBHOOK_WRITE),
];

impl Sandbox {
    async fn call(&self, method: &str, path: &str, token: &str) -> TestResult<reqwest::Response> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        Ok(self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .body("{}")
            .send()
            .await?)
    }
}

#[tokio::test]
async fn each_endpoint_needs_its_scope_and_says_unauthorized_without_it() -> TestResult {
    let server = Sandbox::start().await?;
    let unscoped = server.fetch_token("openid").await?;
    assert_eq!(server.get_me(&unscoped).await?.status(), 200);
    for (method, path, needed) in SCOPED_ENDPOINTS {
        let message = assert_unauthorized(server.call(method, path, &unscoped).await?).await?;
        assert!(message.contains(needed), "{method} {path}: {message}");

        let scoped = server.fetch_token(needed).await?;
        let response = server.call(method, path, &scoped).await?;
        assert!(response.status().is_success(), "{method} {path}");
        // A scope for something else does not do.
        let other = if needed == scope::ORDER_READ {
            scope::BOOKING_READ
        } else {
            scope::ORDER_READ
        };
        let elsewhere = server.fetch_token(other).await?;
        assert_unauthorized(server.call(method, path, &elsewhere).await?).await?;
    }
    // A refusal does not spoil the token elsewhere.
    assert_eq!(server.get_me(&unscoped).await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn allowed_scopes_change_at_run_time_as_hydra_would_see_it() -> TestResult {
    let server =
        Sandbox::from(SandboxServer::builder().allowed_scopes([scope::MARKETING_READ])).await?;
    let both = "marketing.read booking.read";
    // A scope the key lacks refuses the whole request.
    let description = assert_oauth_error(
        server.post_token(server.valid_form(both)).await?,
        400,
        "invalid_scope",
    )
    .await?;
    assert!(description.contains("booking.read"), "{description}");
    let old = server.fetch_token("marketing.read").await?;

    server.set_allowed_scopes([scope::MARKETING_READ, scope::BOOKING_READ]);
    let new = server.fetch_token(both).await?;
    // Tokens keep the scopes they were granted.
    assert_unauthorized(server.call("GET", "/v1/bookings", &old).await?).await?;
    assert_eq!(
        server.call("GET", "/v1/bookings", &new).await?.status(),
        200
    );

    server.set_allowed_scopes([scope::BOOKING_READ]);
    assert_oauth_error(
        server.post_token(server.valid_form(both)).await?,
        400,
        "invalid_scope",
    )
    .await?;
    assert_eq!(
        server.call("GET", "/v1/bookings", &new).await?.status(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn omitting_unallowed_scopes_grants_the_allowed_ones() -> TestResult {
    let server =
        Sandbox::from(SandboxServer::builder().allowed_scopes([scope::MARKETING_READ])).await?;
    server.set_omit_unallowed_scopes(true);
    let both = "marketing.read booking.read";
    let body = json(server.post_token(server.valid_form(both)).await?).await?;
    assert_eq!(body["scope"], "marketing.read");
    let token = body["access_token"].as_str().ok_or("no access_token")?;
    assert_unauthorized(server.call("GET", "/v1/bookings", token).await?).await?;

    server.set_allowed_scopes([scope::MARKETING_READ, scope::BOOKING_READ]);
    let body = json(server.post_token(server.valid_form(both)).await?).await?;
    assert_eq!(body["scope"], both);
    let token = body["access_token"].as_str().ok_or("no access_token")?;
    assert_eq!(
        server.call("GET", "/v1/bookings", token).await?.status(),
        200
    );

    server.set_omit_unallowed_scopes(false);
    server.set_allowed_scopes([scope::MARKETING_READ]);
    assert_oauth_error(
        server.post_token(server.valid_form(both)).await?,
        400,
        "invalid_scope",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn api_faults_are_queued_before_the_persistent_one() -> TestResult {
    let server = Sandbox::start().await?;
    let token = server.fetch_token("").await?;
    server.push_api_fault(ApiFault::Unauthorized);
    server.push_api_fault(ApiFault::ServerError);
    server.push_api_fault(ApiFault::Unavailable);
    server.push_api_fault(ApiFault::TooManyRequests {
        retry_after: Some(61),
    });

    assert_unauthorized(server.get_me(&token).await?).await?;
    let response = server.get_me(&token).await?;
    assert_eq!(response.status(), 500);
    assert_eq!(json(response).await?["code"], "INTERNAL_SERVER_ERROR");
    assert_eq!(server.get_me(&token).await?.status(), 503);
    let response = server.get_me(&token).await?;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "61");
    assert_eq!(server.get_me(&token).await?.status(), 200);

    server.push_api_fault(ApiFault::Hang);
    let impatient = impatient_client()?;
    let error = impatient
        .get(server.url("/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .expect_err("a hanging API cannot answer");
    assert!(error.is_timeout(), "{error:?}");

    server.push_api_fault(ApiFault::ServerError);
    server.set_api_fault(Some(ApiFault::TooManyRequests { retry_after: None }));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(server.get_me(&token).await?.status().as_u16());
    }
    assert_eq!(statuses, [500, 429, 429]);
    server.set_api_fault(None);
    assert_eq!(server.get_me(&token).await?.status(), 200);
    assert_eq!(server.api_requests(), 10);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Recording, counters, helper routes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn records_what_clients_send() -> TestResult {
    let server = Sandbox::start().await?;
    server
        .http
        .post(server.token_url())
        .header("content-type", FORM)
        .header("user-agent", "My-Company/Marketing-Automation-App")
        .body(server.valid_form("openid marketing.read"))
        .send()
        .await?;
    server
        .http
        .get(server.url("/v1/events?limit=2"))
        .bearer_auth("some-token")
        .send()
        .await?;

    let token_requests = server.token_requests_received();
    assert_eq!(token_requests.len(), 1);
    let request = &token_requests[0];
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.path, "/oauth2/token");
    assert_eq!(
        request.header("User-Agent"),
        Some("My-Company/Marketing-Automation-App")
    );
    assert_eq!(request.header("content-type"), Some(FORM));
    assert_eq!(
        request.form(),
        [
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("scope".to_owned(), "openid marketing.read".to_owned()),
            ("audience".to_owned(), AUDIENCE.to_owned()),
            ("client_id".to_owned(), server.client_id().to_owned()),
            (
                "client_secret".to_owned(),
                server.client_secret().to_owned()
            ),
        ]
    );
    assert_eq!(
        request.form_value("scope").as_deref(),
        Some("openid marketing.read")
    );
    assert_eq!(request.form_value("nope"), None);

    let api_requests = server.api_requests_received();
    assert_eq!(api_requests.len(), 1);
    assert_eq!(api_requests[0].method, http::Method::GET);
    assert_eq!(api_requests[0].path, "/v1/events?limit=2");
    assert_eq!(
        api_requests[0].header("authorization"),
        Some("Bearer some-token")
    );
    Ok(())
}

#[tokio::test]
async fn reset_counters_forgets_requests_but_not_tokens() -> TestResult {
    let server = Sandbox::start().await?;
    let token = server.fetch_token("").await?;
    server.get_me(&token).await?;
    assert_eq!((server.token_requests(), server.api_requests()), (1, 1));

    server.reset_counters();
    assert_eq!((server.token_requests(), server.api_requests()), (0, 0));
    assert!(server.token_requests_received().is_empty());
    assert!(server.api_requests_received().is_empty());
    assert_eq!(server.issued_tokens(), std::slice::from_ref(&token));
    assert_eq!(server.get_me(&token).await?.status(), 200);
    assert_eq!(server.api_requests(), 1);
    Ok(())
}

#[tokio::test]
async fn helper_routes_are_not_counted() -> TestResult {
    let server = Sandbox::start().await?;

    let target = "https://example.com/landing?x=1&y=2";
    let encoded: String = url::form_urlencoded::byte_serialize(target.as_bytes()).collect();
    let response = server
        .http
        .get(server.url(&format!("/redirect?to={encoded}")))
        .send()
        .await?;
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], target);

    let response = server
        .http
        .get(server.url(&format!("/redirect?to={encoded}&status=307")))
        .send()
        .await?;
    assert_eq!(response.status(), 307);
    assert_eq!(
        server
            .http
            .get(server.url("/redirect"))
            .send()
            .await?
            .status(),
        400
    );

    let response = server
        .http
        .get(server.url("/echo-headers"))
        .header("x-sandbox-test", "one")
        .header("authorization", "Bearer shown")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let headers = json(response).await?;
    assert_eq!(headers["x-sandbox-test"], serde_json::json!(["one"]));
    assert_eq!(
        headers["authorization"],
        serde_json::json!(["Bearer shown"])
    );

    let response = server.http.get(server.url("/elsewhere")).send().await?;
    assert_eq!(response.status(), 404);
    assert_eq!(json(response).await?["code"], "NOT_FOUND");

    assert_eq!((server.token_requests(), server.api_requests()), (0, 0));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Server lifecycle and load
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serves_500_concurrent_requests() -> TestResult {
    let server = Sandbox::start().await?;
    let token = server.fetch_token("").await?;
    let client = &server.http;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let request = client.get(server.url("/v1/me")).bearer_auth(&token);
        requests.spawn(async move { request.send().await.map(|response| response.status()) });
    }
    for _ in 0..50 {
        let request = client
            .post(server.token_url())
            .header("content-type", FORM)
            .body(server.valid_form("openid"));
        requests.spawn(async move { request.send().await.map(|response| response.status()) });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status??, 200);
    }
    assert_eq!(server.api_requests(), 500);
    assert_eq!(server.token_requests(), 51);
    assert_eq!(server.issued_tokens().len(), 51);
    Ok(())
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() -> TestResult {
    let Sandbox { server, http } = Sandbox::start().await?;
    let addr = server.addr();
    let clone = server.clone();
    drop(server);
    assert_eq!(clone.addr(), addr);
    let response = http
        .get(format!("{}/v1/me", clone.api_base()))
        .send()
        .await?;
    assert_eq!(response.status(), 401, "the clone still serves");

    // An open keep-alive connection, mid-conversation.
    let mut connection = tokio::net::TcpStream::connect(addr).await?;
    connection
        .write_all(b"GET /echo-headers HTTP/1.1\r\nhost: sandbox\r\n\r\n")
        .await?;
    let mut first = [0; 1];
    connection.read_exact(&mut first).await?;

    drop(clone);
    // A blocking connect gives the server tasks no chance to run first: the listener must be
    // closed by the drop itself.
    let refused = std::net::TcpStream::connect(addr);
    assert!(refused.is_err(), "the listener is closed at once");

    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), connection.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "open connections are closed too");
    Ok(())
}

#[test]
fn a_handle_can_outlive_its_runtime() -> TestResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = runtime.block_on(SandboxServer::start())?;
    let addr = server.addr();
    drop(runtime);

    assert_eq!(server.token_requests(), 0);
    drop(server);
    assert!(std::net::TcpStream::connect(addr).is_err());
    Ok(())
}

#[tokio::test]
async fn debug_output_hides_secrets_and_tokens() -> TestResult {
    let builder = SandboxServer::builder()
        .client_secret("super-secret-value")
        .app("an-app", "app-secret-value", ["http://127.0.0.1:1/cb"]);
    let debug = format!("{builder:?}");
    assert!(
        !debug.contains("super-secret-value") && !debug.contains("app-secret-value"),
        "{debug}"
    );

    let server = Sandbox::from(builder).await?;
    let token = server.fetch_token("").await?;
    let debug = format!("{:?}", server.server);
    assert!(debug.contains(server.client_id()), "{debug}");
    assert!(!debug.contains("super-secret-value"), "{debug}");
    assert!(!debug.contains("app-secret-value"), "{debug}");
    assert!(!debug.contains(&token), "{debug}");
    // The browser stand-in's errors never show the authorize URL's query (state, challenge).
    let url =
        format!("http://127.0.0.1:1/oauth2/auth?state={STATE}&code_challenge=secret-challenge");
    let error = server
        .consent(&url, "company-a")
        .await
        .expect_err("not this sandbox");
    let shown = format!("{error} {error:?}");
    assert!(
        !shown.contains(STATE) && !shown.contains("secret-challenge"),
        "{shown}"
    );
    Ok(())
}

#[tokio::test]
async fn credentials_and_auth_builder_fit_the_sandboxs_client() -> TestResult {
    // What the sandbox's method doctests used to show, in one place.
    let server = SandboxServer::builder()
        .client_id("acme")
        .client_auth_method(ClientAuthMethod::ClientSecretBasic)
        .start()
        .await?;
    assert!(server.addr().ip().is_loopback());
    let base = format!("http://127.0.0.1:{}", server.addr().port());
    assert_eq!(server.api_base(), base);
    assert_eq!(server.token_url(), format!("{base}/oauth2/token"));

    let credentials = server.credentials().with_scopes([scope::BOOKING_READ]);
    assert_eq!(credentials.client_id(), "acme");
    assert_eq!(
        credentials.auth_method(),
        ClientAuthMethod::ClientSecretBasic
    );
    let auth = server.auth_builder(credentials).build()?;
    let token = auth.token().await?;
    assert_eq!(token.scopes(), [scope::BOOKING_READ]);
    let request = &server.token_requests_received()[0];
    assert!(
        request
            .header("authorization")
            .is_some_and(|value| value.starts_with("Basic "))
    );
    assert_eq!(request.form_value("client_secret"), None);
    Ok(())
}

#[cfg(feature = "webhooks")]
#[test]
fn the_webhook_sandbox_shows_secrets_and_ids_as_understory_does() -> TestResult {
    let sandbox = understory_auth::testing::WebhookSandbox::new();
    assert!(sandbox.secret().starts_with("whsec_"));
    let message = sandbox.booking_created();
    assert!(message.id().starts_with("msg_"));
    assert_ne!(
        message.id(),
        sandbox.booking_created().id(),
        "each message its own id"
    );
    let headers = sandbox.headers(&message);
    assert!(headers["webhook-signature"].to_str()?.starts_with("v1,"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Third-party apps: the authorization code flow, refresh tokens, revocation, companies
// ---------------------------------------------------------------------------------------------

/// A PKCE verifier (43 to 128 unreserved characters) and its S256 challenge.
fn pkce(seed: &str) -> (String, String) {
    use sha2::Digest as _;
    let verifier = format!("{seed}-{}", "v~erifier.0123456789_".repeat(3));
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The value of `key` in a query string.
fn query_value(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.into_owned())
}

/// A query parameter.
type Param<'a> = (&'a str, &'a str);

/// The state every authorize request of these tests sends.
const STATE: &str = "state-0123456789";

impl Sandbox {
    /// An authorize URL as an app builds it, with `changes` replacing or adding parameters
    /// (an empty value leaves the parameter out).
    fn authorize_url(&self, scope: &str, challenge: &str, changes: &[(&str, &str)]) -> String {
        let redirect_uri = self.app_redirect_uris()[0].clone();
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", self.app_client_id()),
            ("redirect_uri", redirect_uri.as_str()),
            ("scope", scope),
            ("state", STATE),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("audience", AUDIENCE),
        ];
        for &(key, value) in changes {
            params.retain(|(name, _)| *name != key);
            if !value.is_empty() {
                params.push((key, value));
            }
        }
        let query = form(&params);
        format!("{}?{query}", self.server.authorize_url())
    }

    /// Consents as `company` and returns the code and its verifier.
    async fn code_for(&self, company: &str, scope: &str) -> TestResult<(String, String)> {
        let (verifier, challenge) = pkce(company);
        let callback = self
            .consent(self.authorize_url(scope, &challenge, &[]), company)
            .await?;
        assert_eq!(query_value(&callback, "state").as_deref(), Some(STATE));
        let code = query_value(&callback, "code").ok_or_else(|| format!("no code: {callback}"))?;
        Ok((code, verifier))
    }

    /// A token request of the app, its credentials in the form.
    async fn post_app(&self, pairs: &[(&str, &str)]) -> reqwest::Result<reqwest::Response> {
        let mut pairs = pairs.to_vec();
        pairs.push(("client_id", self.app_client_id()));
        pairs.push(("client_secret", self.app_client_secret()));
        self.post_token(form(&pairs)).await
    }

    async fn exchange(&self, code: &str, verifier: &str) -> reqwest::Result<reqwest::Response> {
        let redirect_uri = self.app_redirect_uris()[0].clone();
        self.post_app(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", verifier),
        ])
        .await
    }

    async fn refresh(&self, refresh_token: &str) -> reqwest::Result<reqwest::Response> {
        self.post_app(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
        .await
    }

    /// The whole flow for `company`: the token endpoint's answer, checked to be a 200.
    async fn app_tokens(&self, company: &str, scope: &str) -> TestResult<Value> {
        let (code, verifier) = self.code_for(company, scope).await?;
        let response = self.exchange(&code, &verifier).await?;
        assert_eq!(response.status(), 200);
        json(response).await
    }

    /// A revocation request by the app.
    async fn revoke(&self, token: &str) -> reqwest::Result<reqwest::Response> {
        let (id, secret) = (self.app_client_id(), self.app_client_secret());
        self.post_revoke(form(&[
            ("token", token),
            ("client_id", id),
            ("client_secret", secret),
        ]))
        .await
    }

    async fn post_revoke(&self, body: String) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(self.revocation_url())
            .header("content-type", FORM)
            .body(body)
            .send()
            .await
    }
}

/// A string field of a JSON answer.
fn text(body: &Value, field: &str) -> TestResult<String> {
    Ok(body[field]
        .as_str()
        .ok_or_else(|| format!("{field} is not a string in {body}"))?
        .to_owned())
}

#[tokio::test]
async fn the_code_flow_with_pkce_issues_tokens_for_the_consenting_company() -> TestResult {
    let server = Sandbox::start().await?;
    let (verifier, challenge) = pkce("flow");
    let url = server.authorize_url("openid booking.read offline", &challenge, &[]);
    let callback = server.consent(&url, "company-b").await?;
    assert_eq!(query_value(&callback, "state").as_deref(), Some(STATE));
    assert_eq!(
        query_value(&callback, "scope").as_deref(),
        Some("openid booking.read offline")
    );
    let code = query_value(&callback, "code").ok_or("no code")?;
    assert!(code.starts_with("ory_ac_"), "{code}");

    let response = server.exchange(&code, &verifier).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json(response).await?;
    let mut keys: Vec<&str> = body
        .as_object()
        .ok_or("not an object")?
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "access_token",
            "expires_in",
            "refresh_token",
            "scope",
            "token_type"
        ]
    );
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["scope"], "openid booking.read offline");
    assert!(text(&body, "refresh_token")?.starts_with("ory_rt_"));

    let me = json(server.get_me(&text(&body, "access_token")?).await?).await?;
    assert_eq!(me["company_id"], "company-b");
    assert_eq!(me["company_name"], "Company B");
    assert_eq!(me["user_id"], "user-company-b");
    assert_eq!(me["email"], "owner@company-b.example");
    assert_eq!(me["client_id"], server.app_client_id());
    assert_eq!(
        (
            server.consents("company-b"),
            server.code_exchanges("company-b")
        ),
        (1, 1)
    );
    assert_eq!(server.code_exchanges("company-a"), 0);
    Ok(())
}

#[tokio::test]
async fn hydras_authorize_rules_answer_at_the_redirect_uri() -> TestResult {
    let server = Sandbox::start().await?;
    let (_, challenge) = pkce("rules");
    #[rustfmt::skip]
    let cases: [(&[Param], &str, &str); 7] = [
        (&[("state", "1234567")], "invalid_state", "8 characters"),
        (&[("state", "")], "invalid_state", "8 characters"),
        (&[("code_challenge_method", "plain")], "invalid_request", "plain is not allowed"),
        (&[("code_challenge_method", "")], "invalid_request", "plain is not allowed"),
        (&[("code_challenge", "")], "invalid_request", "code_challenge"),
        (&[("scope", "openid payroll.read")], "invalid_scope", "'payroll.read'"),
        (&[("response_type", "token")], "unsupported_response_type", "'token'"),
    ];
    for (changes, error, hint) in cases {
        let url = server.authorize_url("openid offline", &challenge, changes);
        let callback = server.consent(&url, "company-a").await?;
        assert_eq!(
            query_value(&callback, "error").as_deref(),
            Some(error),
            "{changes:?}"
        );
        let description = query_value(&callback, "error_description").unwrap_or_default();
        assert!(description.contains(hint), "{changes:?}: {description}");
        assert_eq!(query_value(&callback, "code"), None);
    }
    assert_eq!(server.consents("company-a"), 0);
    Ok(())
}

#[tokio::test]
async fn a_wrong_client_redirect_uri_or_company_gets_an_error_page() -> TestResult {
    let server = Sandbox::from(SandboxServer::builder().app(
        "shop-app",
        "shop-secret",
        [
            "https://shop.example/callback",
            "http://127.0.0.1:9000/callback",
        ],
    ))
    .await?;
    let (_, challenge) = pkce("page");
    let refused = |result: Result<String, SandboxError>| match result {
        Err(SandboxError::NoRedirect { status, error, .. }) => Ok((status, error)),
        other => Err(format!("not an error page: {other:?}")),
    };
    for (changes, status, error) in [
        (
            &[("redirect_uri", "https://shop.example/callback/")][..],
            400,
            "invalid_request",
        ),
        (
            &[("redirect_uri", "https://evil.example/callback")],
            400,
            "invalid_request",
        ),
        (&[("redirect_uri", "")], 400, "invalid_request"), // two are registered
        (&[("client_id", "someone-else")], 401, "invalid_client"),
    ] {
        let url = server.authorize_url("openid", &challenge, changes);
        // No redirect: a plain request sees the page itself.
        let response = server.http.get(&url).send().await?;
        assert_eq!(response.status(), status, "{changes:?}");
        assert!(response.headers().get("location").is_none(), "{changes:?}");
        let page = refused(server.consent(&url, "company-a").await)?;
        assert_eq!(page, (status, error.to_owned()), "{changes:?}");
    }
    let url = server.authorize_url("openid", &challenge, &[]);
    let page = refused(server.consent(&url, "no-such-company").await)?;
    assert_eq!(page, (400, "invalid_request".to_owned()));
    // The second registered URI works; the browser stand-in speaks to its own sandbox only.
    let url = server.authorize_url(
        "openid",
        &challenge,
        &[("redirect_uri", "http://127.0.0.1:9000/callback")],
    );
    assert!(query_value(&server.consent(&url, "company-a").await?, "code").is_some());
    let elsewhere = url.replace("/oauth2/auth", "/oauth2/other");
    let refused = server.consent(&elsewhere, "company-a").await;
    assert!(
        matches!(refused, Err(SandboxError::NotThisSandbox { .. })),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn declining_redirects_with_access_denied() -> TestResult {
    let server = Sandbox::start().await?;
    let (_, challenge) = pkce("decline");
    let url = server.authorize_url("openid offline", &challenge, &[]);
    let callback = server.decline(&url).await?;
    assert_eq!(
        query_value(&callback, "error").as_deref(),
        Some("access_denied")
    );
    assert!(query_value(&callback, "error_description").is_some());
    assert_eq!(query_value(&callback, "state").as_deref(), Some(STATE));

    server.set_decline_consent(true);
    let callback = server.consent(&url, "company-a").await?;
    assert_eq!(
        query_value(&callback, "error").as_deref(),
        Some("access_denied")
    );
    server.set_decline_consent(false);
    assert!(query_value(&server.consent(&url, "company-a").await?, "code").is_some());
    assert_eq!(server.consents("company-a"), 1);
    Ok(())
}

#[tokio::test]
async fn a_code_is_single_use_and_a_replay_revokes_its_tokens() -> TestResult {
    let server = Sandbox::start().await?;
    let (code, verifier) = server.code_for("company-a", "openid offline").await?;
    let first = json(server.exchange(&code, &verifier).await?).await?;
    let access_token = text(&first, "access_token")?;
    assert_eq!(server.get_me(&access_token).await?.status(), 200);

    let replay = server.exchange(&code, &verifier).await?;
    let description = assert_oauth_error(replay, 400, "invalid_grant").await?;
    assert!(description.contains("already been used"), "{description}");
    assert_unauthorized(server.get_me(&access_token).await?).await?;
    let refresh = server.refresh(&text(&first, "refresh_token")?).await?;
    assert_oauth_error(refresh, 400, "invalid_grant").await?;
    assert_eq!(server.code_exchanges("company-a"), 1);
    Ok(())
}

#[tokio::test]
async fn the_exchange_checks_verifier_redirect_uri_and_client() -> TestResult {
    let server = Sandbox::start().await?;
    let (code, verifier) = server.code_for("company-a", "openid").await?;
    let (other_verifier, _) = pkce("another");
    let redirect_uri = server.app_redirect_uris()[0].clone();
    for (pairs, hint) in [
        (
            vec![
                ("code_verifier", other_verifier.as_str()),
                ("redirect_uri", &redirect_uri),
            ],
            "did not match the code verifier",
        ),
        (
            vec![
                ("code_verifier", "too-short"),
                ("redirect_uri", &redirect_uri),
            ],
            "at least 43",
        ),
        (vec![("redirect_uri", &redirect_uri)], "at least 43"),
        (
            vec![
                ("code_verifier", verifier.as_str()),
                ("redirect_uri", "http://127.0.0.1:8080/other"),
            ],
            "redirect_uri",
        ),
        (vec![("code_verifier", verifier.as_str())], "redirect_uri"),
    ] {
        let mut pairs = pairs;
        pairs.extend([
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
        ]);
        let description =
            assert_oauth_error(server.post_app(&pairs).await?, 400, "invalid_grant").await?;
        assert!(description.contains(hint), "{pairs:?}: {description}");
    }
    // The integration key may not redeem it, and the app may not use client_credentials.
    let as_key = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("client_id", server.client_id()),
        ("client_secret", server.client_secret()),
    ]);
    assert_oauth_error(server.post_token(as_key).await?, 400, "unauthorized_client").await?;
    let credentials = server
        .post_app(&[("grant_type", "client_credentials"), ("audience", AUDIENCE)])
        .await?;
    assert_oauth_error(credentials, 400, "unauthorized_client").await?;
    // The failures did not use the code up.
    assert_eq!(server.exchange(&code, &verifier).await?.status(), 200);
    let description = assert_oauth_error(
        server.exchange("ory_ac_made-up", &verifier).await?,
        400,
        "invalid_grant",
    )
    .await?;
    assert!(description.contains("not valid"), "{description}");
    Ok(())
}

#[tokio::test]
async fn without_offline_there_is_no_refresh_token() -> TestResult {
    let server = Sandbox::start().await?;
    let body = server
        .app_tokens("company-a", "openid booking.read")
        .await?;
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert_eq!(body["scope"], "openid booking.read");
    let body = server
        .app_tokens("company-a", "openid offline_access")
        .await?;
    assert!(body["refresh_token"].is_string(), "{body}");
    Ok(())
}

#[tokio::test]
async fn every_refresh_rotates_both_tokens() -> TestResult {
    let server = Sandbox::start().await?;
    let first = server.app_tokens("company-a", "openid offline").await?;
    let mut refresh_token = text(&first, "refresh_token")?;
    let mut access_token = text(&first, "access_token")?;
    for round in 1..=3 {
        let response = server.refresh(&refresh_token).await?;
        assert_eq!(response.status(), 200, "round {round}");
        let body = json(response).await?;
        assert_eq!(body["scope"], "openid offline");
        assert_eq!(body["token_type"], "bearer");
        let (new_refresh, new_access) =
            (text(&body, "refresh_token")?, text(&body, "access_token")?);
        assert_ne!(new_refresh, refresh_token);
        // As in Hydra, the access token of the refresh token presented is revoked.
        assert_unauthorized(server.get_me(&access_token).await?).await?;
        assert_eq!(server.get_me(&new_access).await?.status(), 200);
        (refresh_token, access_token) = (new_refresh, new_access);
    }
    assert_eq!(server.refreshes("company-a"), 3);
    assert_eq!(server.reuse_detected("company-a"), 0);
    Ok(())
}

#[tokio::test]
async fn reusing_a_refresh_token_revokes_the_whole_grant() -> TestResult {
    let server = Sandbox::start().await?;
    let first = server.app_tokens("company-a", "openid offline").await?;
    let old = text(&first, "refresh_token")?;
    let second = json(server.refresh(&old).await?).await?;
    let (newest, access_token) = (
        text(&second, "refresh_token")?,
        text(&second, "access_token")?,
    );
    // An unrelated grant of another company is left alone.
    let other = server.app_tokens("company-b", "openid offline").await?;

    let description = assert_oauth_error(server.refresh(&old).await?, 400, "invalid_grant").await?;
    assert!(
        description.ends_with("The refresh token was already used."),
        "{description}"
    );
    let description =
        assert_oauth_error(server.refresh(&newest).await?, 400, "invalid_grant").await?;
    assert!(
        description.ends_with("The refresh token is malformed or not valid."),
        "{description}"
    );
    assert_unauthorized(server.get_me(&access_token).await?).await?;

    assert_eq!(
        server
            .refresh(&text(&other, "refresh_token")?)
            .await?
            .status(),
        200
    );
    assert_eq!(
        (
            server.reuse_detected("company-a"),
            server.reuse_detected("company-b")
        ),
        (1, 0)
    );
    Ok(())
}

#[tokio::test]
async fn refresh_tokens_expire_each_a_lifetime_after_its_refresh() -> TestResult {
    let lifetime = Duration::from_millis(450);
    let server = Sandbox::from(SandboxServer::builder().refresh_token_lifetime(lifetime)).await?;
    let first = server.app_tokens("company-a", "openid offline").await?;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = json(server.refresh(&text(&first, "refresh_token")?).await?).await?;
    // Past the first one's lifetime, within the second's (sliding).
    tokio::time::sleep(Duration::from_millis(250)).await;
    let response = server.refresh(&text(&second, "refresh_token")?).await?;
    assert_eq!(response.status(), 200);
    let third = json(response).await?;
    tokio::time::sleep(Duration::from_millis(480)).await;
    let description = assert_oauth_error(
        server.refresh(&text(&third, "refresh_token")?).await?,
        400,
        "invalid_grant",
    )
    .await?;
    assert!(
        description.ends_with("The refresh token expired."),
        "{description}"
    );

    // A short access token lifetime for apps, without sleeping: zero issues expired tokens.
    server.set_app_token_lifetime(Duration::ZERO);
    let body = server.app_tokens("company-a", "openid").await?;
    assert_eq!(body["expires_in"], 0);
    let message = assert_unauthorized(server.get_me(&text(&body, "access_token")?).await?).await?;
    assert!(message.contains("expired"), "{message}");
    Ok(())
}

#[tokio::test]
async fn revoke_consent_deletes_the_companys_tokens_only() -> TestResult {
    let server = Sandbox::start().await?;
    let a = server.app_tokens("company-a", "openid offline").await?;
    let b = server.app_tokens("company-b", "openid offline").await?;
    server.revoke_consent("company-a");

    let description = assert_oauth_error(
        server.refresh(&text(&a, "refresh_token")?).await?,
        400,
        "invalid_grant",
    )
    .await?;
    assert!(
        description.ends_with("The refresh token is malformed or not valid."),
        "{description}"
    );
    assert_unauthorized(server.get_me(&text(&a, "access_token")?).await?).await?;
    assert_eq!(
        server.get_me(&text(&b, "access_token")?).await?.status(),
        200
    );
    assert_eq!(
        server.refresh(&text(&b, "refresh_token")?).await?.status(),
        200
    );
    assert_eq!(
        (
            server.revocations("company-a"),
            server.revocations("company-b")
        ),
        (1, 0)
    );
    // Consenting again starts a new grant.
    server.app_tokens("company-a", "openid offline").await?;
    Ok(())
}

#[tokio::test]
async fn the_revocation_endpoint_revokes_the_whole_grant() -> TestResult {
    let server = Sandbox::start().await?;
    for token_field in ["refresh_token", "access_token"] {
        let body = server.app_tokens("company-a", "openid offline").await?;
        let response = server.revoke(&text(&body, token_field)?).await?;
        assert_eq!(response.status(), 200, "{token_field}");
        assert_unauthorized(server.get_me(&text(&body, "access_token")?).await?).await?;
        let refresh = server.refresh(&text(&body, "refresh_token")?).await?;
        assert_oauth_error(refresh, 400, "invalid_grant").await?;
    }
    assert_eq!(server.revocations("company-a"), 2);
    assert_eq!(server.revoke("ory_rt_unknown").await?.status(), 200);

    // Client authentication is required, and a client revokes its own tokens only.
    let body = server.app_tokens("company-a", "openid offline").await?;
    let unauthenticated = server
        .post_revoke(form(&[("token", &text(&body, "refresh_token")?)]))
        .await?;
    assert_oauth_error(unauthenticated, 401, "invalid_client").await?;
    let as_key = form(&[
        ("token", &text(&body, "refresh_token")?),
        ("client_id", server.client_id()),
        ("client_secret", server.client_secret()),
    ]);
    let response = server.post_revoke(as_key).await?;
    assert_oauth_error(response, 400, "unauthorized_client").await?;
    assert_eq!(
        server.get_me(&text(&body, "access_token")?).await?.status(),
        200
    );
    // The integration key revokes its own token.
    let key_token = server.fetch_token("").await?;
    let own = form(&[
        ("token", &key_token),
        ("client_id", server.client_id()),
        ("client_secret", server.client_secret()),
    ]);
    let response = server.post_revoke(own).await?;
    assert_eq!(response.status(), 200);
    assert_unauthorized(server.get_me(&key_token).await?).await?;
    Ok(())
}

#[tokio::test]
async fn me_and_company_resources_answer_for_the_tokens_company() -> TestResult {
    let server = Sandbox::from(
        SandboxServer::builder()
            .company("acme", "Acme Tours")
            .company("globex", "Globex Kayaks"),
    )
    .await?;
    assert_eq!(server.key_company(), "acme");
    let acme = text(
        &server.app_tokens("acme", "openid booking.read").await?,
        "access_token",
    )?;
    let globex = text(
        &server.app_tokens("globex", "openid booking.read").await?,
        "access_token",
    )?;
    let key = server.fetch_token("booking.read").await?;

    let me = json(server.get_me(&globex).await?).await?;
    assert_eq!(
        (me["company_id"].as_str(), me["company_name"].as_str()),
        (Some("globex"), Some("Globex Kayaks"))
    );
    // The integration key's tokens belong to the first company.
    let me = json(server.get_me(&key).await?).await?;
    assert_eq!(me["company_id"], "acme");
    assert_eq!(me["client_id"], server.client_id());
    assert_eq!(me["scopes"], serde_json::json!(["booking.read"]));

    for (token, company, status) in [
        (&acme, "acme", 200),
        (&key, "acme", 200),
        (&globex, "globex", 200),
        (&globex, "acme", 401),
        (&acme, "globex", 401),
        (&acme, "unknown", 401),
    ] {
        let path = format!("/v1/companies/{company}/bookings");
        let response = server.call("GET", &path, token).await?;
        assert_eq!(response.status(), status, "{path}");
        if status == 401 {
            let message = assert_unauthorized(response).await?;
            assert!(message.contains("another company"), "{message}");
        }
    }
    // The scope rule holds there too.
    let unscoped = text(&server.app_tokens("acme", "openid").await?, "access_token")?;
    assert_unauthorized(
        server
            .call("GET", "/v1/companies/acme/bookings", &unscoped)
            .await?,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_app_authenticates_the_way_it_is_registered() -> TestResult {
    let server = Sandbox::from(
        SandboxServer::builder()
            .app("basic-app", "s3cret~value", ["http://127.0.0.1:7000/cb"])
            .app_auth_method(ClientAuthMethod::ClientSecretBasic),
    )
    .await?;
    assert_eq!(
        server.app_credentials().auth_method(),
        ClientAuthMethod::ClientSecretBasic
    );
    let (code, verifier) = server.code_for("company-a", "openid offline").await?;
    let exchange = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", "http://127.0.0.1:7000/cb"),
        ("code_verifier", &verifier),
    ]);
    // In the body, as the key would: refused, and the code is not used up.
    let description = assert_oauth_error(
        server
            .post_app(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:7000/cb"),
                ("code_verifier", &verifier),
            ])
            .await?,
        401,
        "invalid_client",
    )
    .await?;
    assert!(description.contains("client_secret_basic"), "{description}");
    let response = server
        .post_basic(basic_authorization("basic-app", "s3cret~value"), exchange)
        .await?;
    assert_eq!(response.status(), 200);
    assert!(json(response).await?["refresh_token"].is_string());

    let bad = SandboxServer::builder()
        .app("app", "secret", ["not a url"])
        .start()
        .await;
    let error = bad.expect_err("a redirect URI that is not a URL");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    Ok(())
}
