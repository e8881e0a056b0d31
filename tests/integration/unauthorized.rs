//! What a 401 means, over real HTTP, for both integrations: Understory answers 401 to a token
//! without the endpoint's scope as well as to a revoked one (the rule: crate docs, "What
//! happens on a 401").
#![cfg(all(feature = "test-util", feature = "middleware", feature = "tower"))]

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower::retry::Retry;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt};
use understory_auth::testing::SandboxServer;
use understory_auth::{BearerAuth, BearerAuthLayer, RetryOnUnauthorized, UnderstoryAuth, scope};

use crate::common::{auth_with, sandbox};

type TestResult = Result<(), BoxError>;
type TowerClient = Retry<RetryOnUnauthorized, BearerAuth<Client<HttpConnector, Full<Bytes>>>>;

const BOOKINGS: &str = "/v1/bookings";
const CONSENTS: &str = "/v1/marketing-consents";

/// The two ways to use the crate, each resending once after a 401 when the rule says so.
enum Integration {
    Middleware(ClientWithMiddleware),
    Tower(TowerClient),
}

impl Integration {
    fn middleware(auth: &UnderstoryAuth) -> Integration {
        Integration::Middleware(
            ClientBuilder::new(reqwest::Client::new())
                .with(auth.clone())
                .build(),
        )
    }

    fn tower(auth: &UnderstoryAuth) -> Integration {
        Integration::Tower(
            ServiceBuilder::new()
                .retry(RetryOnUnauthorized::default())
                .service(
                    BearerAuthLayer::new(auth.clone())
                        .layer(Client::builder(TokioExecutor::new()).build_http()),
                ),
        )
    }

    fn name(&self) -> &'static str {
        match self {
            Integration::Middleware(_) => "middleware",
            Integration::Tower(_) => "tower",
        }
    }

    /// GETs `path` from the sandbox's API: the status and the body the caller sees.
    async fn get(
        &self,
        server: &SandboxServer,
        path: &str,
    ) -> Result<(StatusCode, Bytes), BoxError> {
        let url = format!("{}{path}", server.api_base());
        match self {
            Integration::Middleware(client) => {
                let response = client.get(url).send().await?;
                Ok((response.status(), response.bytes().await?))
            }
            Integration::Tower(client) => {
                let request = Request::get(url).body(Full::default())?;
                let response = client.clone().oneshot(request).await?;
                let status = response.status();
                Ok((status, response.into_body().collect().await?.to_bytes()))
            }
        }
    }
}

/// A sandbox whose key may read marketing consents but not bookings, and an `UnderstoryAuth`
/// asking for both (the auth server grants what the key has).
async fn key_without_bookings() -> (SandboxServer, UnderstoryAuth) {
    let server = sandbox().await;
    server.set_allowed_scopes([scope::MARKETING_READ]);
    server.set_omit_unallowed_scopes(true);
    let credentials = server
        .credentials()
        .with_scopes([scope::MARKETING_READ, scope::BOOKING_READ]);
    let auth = auth_with(&server, credentials);
    (server, auth)
}

/// Each integration with its own sandbox (see [`key_without_bookings`]) and cache.
async fn each_integration() -> Vec<(SandboxServer, UnderstoryAuth, Integration)> {
    let mut all = Vec::new();
    for make in [Integration::middleware, Integration::tower] {
        let (server, auth) = key_without_bookings().await;
        let client = make(&auth);
        all.push((server, auth, client));
    }
    all
}

/// What the sandbox answers to `path` with `token`, asked directly.
async fn direct(
    server: &SandboxServer,
    path: &str,
    token: &str,
) -> Result<(StatusCode, Bytes), BoxError> {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.api_base()))
        .bearer_auth(token)
        .send()
        .await?;
    Ok((response.status(), response.bytes().await?))
}

#[tokio::test]
async fn a_forbidden_endpoint_costs_one_extra_token_request_and_returns_understorys_401()
-> TestResult {
    for (server, auth, client) in each_integration().await {
        let name = client.name();
        for _ in 0..50 {
            let (status, body) = client.get(&server, BOOKINGS).await?;
            let token = auth.token().await?;
            let expected = direct(&server, BOOKINGS, token.secret()).await?;
            assert_eq!((status, &body), (expected.0, &expected.1), "{name}");
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(String::from_utf8_lossy(&body).contains("\"UNAUTHORIZED\""));
            let (status, _) = client.get(&server, CONSENTS).await?;
            assert_eq!(status, StatusCode::OK, "{name}");
        }
        // The first 401 drops the routine token: one extra token request, one resend. The
        // replacement works on consents, so it is kept.
        let sent = server.api_requests() - 50; // minus the direct requests
        assert_eq!(
            (server.token_requests(), sent),
            (2, 101),
            "{name}: {:?}",
            auth.stats()
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_revoked_token_heals_with_one_token_request_and_one_resend() -> TestResult {
    for (server, auth, client) in each_integration().await {
        server.revoke_token(auth.token().await?.secret());
        let (tokens, requests) = (server.token_requests(), server.api_requests());
        let (status, _) = client.get(&server, CONSENTS).await?;
        assert_eq!(status, StatusCode::OK, "{}", client.name());
        assert_eq!(server.token_requests() - tokens, 1);
        assert_eq!(server.api_requests() - requests, 2);
    }
    Ok(())
}

#[tokio::test]
async fn a_scope_gained_works_by_the_next_regular_refresh() -> TestResult {
    for (server, _auth, client) in each_integration().await {
        server.set_token_lifetime(Duration::from_secs(3));
        for _ in 0..10 {
            assert_eq!(
                client.get(&server, BOOKINGS).await?.0,
                StatusCode::UNAUTHORIZED
            );
            client.get(&server, CONSENTS).await?;
        }
        // The key is given the scope in Backoffice; the cached token still lacks it.
        server.set_allowed_scopes([scope::MARKETING_READ, scope::BOOKING_READ]);
        let before = server.token_requests();
        let mut worked = false;
        for _ in 0..200 {
            if client.get(&server, BOOKINGS).await?.0 == StatusCode::OK {
                worked = true;
                break;
            }
            client.get(&server, CONSENTS).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(worked, "{}: bookings still refused", client.name());
        // One regular refresh brought the scope; at most one more token was needed.
        let after = server.token_requests() - before;
        assert!((1..=2).contains(&after), "{after} token requests");
    }
    Ok(())
}
