//! The token request over real HTTP: the exact wire format the sandbox receives, and every
//! kind of answer a server can give turned into a token or a clear error.

use std::time::Duration;

use understory_auth::testing::{SandboxServer, TokenFault};
use understory_auth::{ClientAuthMethod, Credentials, Error, UnderstoryAuth};

use crate::common::{auth, auth_with, credentials, sandbox};

/// The first token request's outcome for a fresh `UnderstoryAuth` against `server`.
async fn first_token(server: &SandboxServer) -> Result<understory_auth::AccessToken, Error> {
    auth(server).token().await
}

/// The outcome of a token request that meets `fault`.
async fn with_fault(fault: TokenFault) -> (SandboxServer, Error) {
    let server = sandbox().await;
    server.push_token_fault(fault);
    let err = first_token(&server)
        .await
        .expect_err("the fault is an error");
    (server, err)
}

#[tokio::test]
async fn the_request_is_exactly_what_understory_documents() {
    let server = sandbox().await;
    let auth = server
        .auth_builder(credentials(&server).with_scopes(["openid", "marketing.read"]))
        .user_agent("My-Company/Marketing-Automation-App")
        .build()
        .unwrap();
    let token = auth.token().await.unwrap();

    assert_eq!(server.token_requests(), 1);
    let request = &server.token_requests_received()[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/oauth2/token");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(request.header("accept"), Some("application/json"));
    assert_eq!(
        request.header("user-agent"),
        Some(
            format!(
                "My-Company/Marketing-Automation-App understory-auth/{}",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        )
    );
    assert_eq!(request.header("authorization"), None);
    let form = request.form();
    let fields: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        fields,
        [
            ("grant_type", "client_credentials"),
            ("scope", "openid marketing.read"),
            ("audience", "https://api.understory.io"),
            ("client_id", server.client_id()),
            ("client_secret", server.client_secret()),
        ]
    );
    // The secret's `~` goes literally (RFC 3986 unreserved): Understory refuses `%7E`.
    let body = String::from_utf8(request.body.to_vec()).unwrap();
    assert!(server.client_secret().contains('~'));
    assert!(
        body.contains(&format!("&client_secret={}", server.client_secret())),
        "{body}"
    );

    assert_eq!(server.issued_tokens(), [token.secret()]);
    assert_eq!(token.scopes(), ["openid", "marketing.read"]);
    assert_eq!(token.lifetime(), Duration::from_secs(3599));
}

#[tokio::test]
async fn no_scopes_means_no_scope_field() {
    let server = sandbox().await;
    first_token(&server).await.unwrap();
    let request = &server.token_requests_received()[0];
    assert_eq!(request.form_value("scope"), None);
    assert_eq!(
        request.form_value("grant_type").as_deref(),
        Some("client_credentials")
    );
}

#[tokio::test]
async fn client_secret_basic_sends_the_secret_in_the_header_only() {
    let server = SandboxServer::builder()
        .client_auth_method(ClientAuthMethod::ClientSecretBasic)
        .start()
        .await
        .unwrap();
    let creds = credentials(&server).with_auth_method(ClientAuthMethod::ClientSecretBasic);
    auth_with(&server, creds).token().await.unwrap();
    let request = &server.token_requests_received()[0];
    assert!(
        request
            .header("authorization")
            .unwrap()
            .starts_with("Basic ")
    );
    assert_eq!(request.form_value("client_secret"), None);
    assert_eq!(request.form_value("client_id"), None);
}

/// Issue 18: Understory's auth server refuses `%7E`; the RFC 3986 unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) go literally, in the form body and in the Basic credentials
/// (form-urlencoded before base64), everything else as form encoding has it.
#[tokio::test]
async fn unreserved_characters_of_the_secret_go_literally_with_both_methods() {
    use base64::Engine as _;
    const SECRET: &str = "Ab9~x.y_z-Q~ +:/%\u{e9}";
    const ON_THE_WIRE: &str = "Ab9~x.y_z-Q~+%2B%3A%2F%25%C3%A9";
    const ID: &str = "my.client~1";
    for method in [
        ClientAuthMethod::ClientSecretPost,
        ClientAuthMethod::ClientSecretBasic,
    ] {
        let server = SandboxServer::builder()
            .client_id(ID)
            .client_secret(SECRET)
            .client_auth_method(method)
            .start()
            .await
            .unwrap();
        let creds = credentials(&server)
            .with_scopes(["openid"])
            .with_auth_method(method);
        auth_with(&server, creds).token().await.unwrap();
        let request = &server.token_requests_received()[0];
        let body = String::from_utf8(request.body.to_vec()).unwrap();
        assert!(!body.to_ascii_uppercase().contains("%7E"), "{body}");
        match method {
            ClientAuthMethod::ClientSecretPost => {
                assert_eq!(
                    body,
                    format!(
                        "grant_type=client_credentials&scope=openid\
                         &audience=https%3A%2F%2Fapi.understory.io\
                         &client_id={ID}&client_secret={ON_THE_WIRE}"
                    )
                );
                assert_eq!(request.header("authorization"), None);
            }
            _ => {
                assert_eq!(
                    body,
                    "grant_type=client_credentials&scope=openid\
                     &audience=https%3A%2F%2Fapi.understory.io"
                );
                let header = request.header("authorization").unwrap();
                let encoded = header.strip_prefix("Basic ").unwrap();
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .unwrap();
                assert_eq!(
                    String::from_utf8(decoded).unwrap(),
                    format!("{ID}:{ON_THE_WIRE}")
                );
            }
        }
    }
}

/// The sandbox refuses `%7E` as Understory's server does, saying why.
#[tokio::test]
async fn the_sandbox_refuses_an_encoded_tilde_and_says_why() {
    let server = sandbox().await;
    let secret = server.client_secret().replace('~', "%7e");
    let body = format!(
        "grant_type=client_credentials&audience=https%3A%2F%2Fapi.understory.io\
         &client_id={}&client_secret={secret}",
        server.client_id()
    );
    let response = reqwest::Client::new()
        .post(server.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let answer: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["error"], "invalid_client");
    let description = answer["error_description"].as_str().unwrap();
    assert!(
        description.contains("'client_secret'") && description.contains("literal '~'"),
        "{description}"
    );
    assert!(!description.contains(&secret), "{description}");
    assert!(server.issued_tokens().is_empty());
}

#[tokio::test]
async fn a_wrong_secret_says_to_check_the_keys() {
    let server = sandbox().await;
    let creds = Credentials::new(server.client_id(), "wrong-secret");
    let err = auth_with(&server, creds).token().await.unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_client"));
    assert!(!err.is_transient());
    let msg = err.to_string();
    assert!(msg.contains("check the client id and secret"), "{msg}");
    assert!(!msg.contains("wrong-secret") && !format!("{err:?}").contains("wrong-secret"));
}

#[tokio::test]
async fn the_wrong_authentication_method_is_invalid_client() {
    let server = sandbox().await; // registered for client_secret_post
    let creds = credentials(&server).with_auth_method(ClientAuthMethod::ClientSecretBasic);
    let err = auth_with(&server, creds).token().await.unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_client"));
}

#[tokio::test]
async fn a_scope_the_key_lacks_is_named() {
    let server = SandboxServer::builder()
        .allowed_scopes(["openid", "marketing.read"])
        .start()
        .await
        .unwrap();
    let creds = credentials(&server).with_scopes(["openid", "booking.write"]);
    let err = auth_with(&server, creds).token().await.unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_scope"));
    let msg = err.to_string();
    assert!(
        msg.contains("booking.write") && msg.contains("lacks"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_wrong_audience_is_invalid_request() {
    let server = sandbox().await;
    let err = server
        .auth_builder(credentials(&server))
        .audience("https://elsewhere.example")
        .build()
        .unwrap()
        .token()
        .await
        .unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_request"));
    assert!(err.to_string().contains("audience"));
}

#[tokio::test]
async fn server_errors_are_transient() {
    for fault in [TokenFault::ServerError, TokenFault::Unavailable] {
        let (_server, err) = with_fault(fault.clone()).await;
        assert!(err.is_transient(), "{fault:?}: {err}");
        assert!(err.oauth_code().is_some(), "{fault:?}: {err}");
    }
}

#[tokio::test]
async fn rate_limiting_carries_retry_after() {
    let (_server, err) = with_fault(TokenFault::TooManyRequests {
        retry_after: Some(42),
    })
    .await;
    assert!(err.is_transient());
    assert!(err.is_rate_limited());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(42)));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(429));

    let (_server, err) = with_fault(TokenFault::TooManyRequests { retry_after: None }).await;
    assert!(err.is_transient() && err.is_rate_limited());
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn retry_after_is_capped_at_five_minutes() {
    let (_server, err) = with_fault(TokenFault::TooManyRequests {
        retry_after: Some(99_999),
    })
    .await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(300)));
}

/// A token endpoint on 127.0.0.1 that answers every request with `status` and
/// `Retry-After: <retry_after>` (and a JSON error body); its URL.
async fn retry_after_server(status: u16, retry_after: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let body = r#"{"error":"server_error"}"#;
    let answer = format!(
        "HTTP/1.1 {status} Whatever\r\nRetry-After: {retry_after}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    url
}

#[tokio::test]
async fn retry_after_counts_on_429_and_503_only() {
    for (status, expected) in [
        (429, Some(Duration::from_secs(30))),
        (503, Some(Duration::from_secs(30))),
        (500, None),
        (502, None),
        (400, None),
        (401, None),
    ] {
        let url = retry_after_server(status, "30").await;
        let auth = UnderstoryAuth::builder(Credentials::new("id", "secret"))
            .token_url(url)
            .build()
            .unwrap();
        let err = auth.token().await.expect_err("an error answer");
        assert_eq!(err.retry_after(), expected, "HTTP {status}: {err}");
        assert_eq!(err.is_rate_limited(), status == 429, "HTTP {status}");
    }
}

#[tokio::test]
async fn a_proxy_error_page_is_transient() {
    let (_server, err) = with_fault(TokenFault::HtmlError { status: 502 }).await;
    assert!(matches!(err, Error::Status { .. }), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn malformed_answers_are_clear_errors() {
    let (_s, err) = with_fault(TokenFault::MalformedJson).await;
    assert!(matches!(err, Error::InvalidResponse { .. }), "{err}");
    let (_s, err) = with_fault(TokenFault::EmptyToken).await;
    assert!(err.to_string().contains("access_token is empty"), "{err}");
    let (_s, err) = with_fault(TokenFault::WrongTokenType).await;
    assert!(
        matches!(err, Error::UnsupportedTokenType { ref token_type, .. } if token_type == "mac")
    );
    let (_s, err) = with_fault(TokenFault::Body {
        status: 200,
        content_type: "application/json".into(),
        body: r#"{"access_token":"bad token","token_type":"bearer"}"#.into(),
    })
    .await;
    assert!(
        err.to_string().contains("cannot be sent in an HTTP header"),
        "{err}"
    );
    assert!(!err.to_string().contains("bad token"));
}

#[tokio::test]
async fn lenient_answers_from_other_servers_work() {
    let server = sandbox().await;
    server.push_token_fault(TokenFault::Body {
        status: 200,
        content_type: "application/json".into(),
        body: r#"{"access_token":"abc.DEF-_~+/=","token_type":"Bearer","expires_in":"120","extra":[1,{"x":null}]}"#.into(),
    });
    let token = first_token(&server).await.unwrap();
    assert_eq!(token.secret(), "abc.DEF-_~+/=");
    assert_eq!(token.lifetime(), Duration::from_secs(120));
    assert!(token.scopes().is_empty());
}

#[tokio::test]
async fn a_redirect_is_never_followed() {
    let server = sandbox().await;
    let elsewhere = sandbox().await;
    let (server, err) = {
        server.push_token_fault(TokenFault::Redirect {
            location: elsewhere.token_url(),
        });
        let err = first_token(&server).await.unwrap_err();
        (server, err)
    };
    assert_eq!(err.status().map(|s| s.as_u16()), Some(307));
    assert!(err.to_string().contains("redirect"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(server.token_requests(), 1);
    assert_eq!(
        elsewhere.token_requests(),
        0,
        "the secret never went elsewhere"
    );
}

#[tokio::test]
async fn a_hanging_server_times_out() {
    let server = sandbox().await;
    server.push_token_fault(TokenFault::Hang);
    let err = server
        .auth_builder(credentials(&server))
        .token_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .token()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { after, .. } if after == Duration::from_millis(300)),
        "{err}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn an_endless_body_is_cut_off() {
    let (_s, err) = with_fault(TokenFault::EndlessBody).await;
    assert!(err.to_string().contains("larger than 65536 bytes"), "{err}");
}

#[tokio::test]
async fn a_connection_reset_mid_body_is_a_network_error() {
    let (_s, err) = with_fault(TokenFault::ResetMidBody).await;
    assert!(matches!(err, Error::Network { .. }), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_refused_connection_is_a_network_error() {
    let server = sandbox().await;
    let token_url = server.token_url();
    drop(server);
    let err = UnderstoryAuth::builder(Credentials::new("id", "secret"))
        .token_url(token_url)
        .build()
        .unwrap()
        .token()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Network { .. }), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn the_error_window_spares_the_server_and_the_next_call_after_it_recovers() {
    let server = sandbox().await;
    server.push_token_fault(TokenFault::Unavailable);
    let auth = auth(&server);
    for _ in 0..100 {
        assert!(auth.token().await.is_err());
    }
    assert_eq!(
        server.token_requests(),
        1,
        "callers in the window got the error at once"
    );
    // The first transient window is at most 0.5 s (documented in "How the cache behaves").
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(auth.token().await.is_ok());
    assert_eq!(server.token_requests(), 2);
}

#[tokio::test]
async fn tokens_are_used_by_the_api() {
    let server = sandbox().await;
    let token = first_token(&server).await.unwrap();
    let response = understory_auth::reqwest::Client::new()
        .get(format!("{}/v1/me", server.api_base()))
        .header("authorization", token.header_value().clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
