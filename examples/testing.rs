//! Testing your own integration against the sandbox, over reqwest and over tower.
//!
//! `cargo test --example testing --features test-util` runs the tests at the bottom;
//! `cargo run --example testing --features test-util` runs the same checks once.
//!
//! Your code takes its API base and an `UnderstoryAuth` from outside (in production
//! `UnderstoryAuth::new(Credentials::from_env()?)` and `DEFAULT_API_BASE`); a test hands it
//! the sandbox's, started on 127.0.0.1 for that test. Copy the `tests` module into your
//! crate's `tests/` and add `understory-auth` with the feature `test-util` to your
//! `[dev-dependencies]`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use understory_auth::{BearerAuth, BearerAuthLayer, UnderstoryAuth, reqwest, reqwest_middleware};

/// What the examples' functions fail with: `Send + Sync`, as tower's errors are.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Your integration over reqwest: counts the bookings.
pub struct Bookings {
    client: reqwest_middleware::ClientWithMiddleware,
    api_base: String,
}

impl Bookings {
    pub fn new(auth: UnderstoryAuth, api_base: impl Into<String>) -> Self {
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(auth)
            .build();
        Bookings {
            client,
            api_base: api_base.into(),
        }
    }

    pub async fn count(&self) -> Result<usize, BoxError> {
        let url = format!("{}/v1/bookings", self.api_base);
        let response = self.client.get(url).send().await?.error_for_status()?;
        let page: understory_auth::serde_json::Value =
            understory_auth::serde_json::from_slice(&response.bytes().await?)?;
        Ok(page["items"].as_array().map_or(0, Vec::len))
    }
}

/// Your integration over tower (a hyper-util client): who the key is.
pub struct Me {
    client: BearerAuth<Client<HttpConnector, Empty<Bytes>>>,
    api_base: String,
}

impl Me {
    pub fn new(auth: UnderstoryAuth, api_base: impl Into<String>) -> Self {
        let client = ServiceBuilder::new()
            .layer(BearerAuthLayer::new(auth))
            .service(Client::builder(TokioExecutor::new()).build_http());
        Me {
            client,
            api_base: api_base.into(),
        }
    }

    pub async fn client_id(&self) -> Result<String, BoxError> {
        let request = http::Request::get(format!("{}/v1/me", self.api_base)).body(Empty::new())?;
        let response = self.client.clone().oneshot(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        let me: understory_auth::serde_json::Value =
            understory_auth::serde_json::from_slice(&body)?;
        Ok(me["client_id"].as_str().unwrap_or_default().to_owned())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let sandbox = understory_auth::testing::SandboxServer::start().await?;
    let auth = sandbox
        .auth_builder(sandbox.credentials().with_scopes(["booking.read"]))
        .build()?;
    println!(
        "bookings: {}",
        Bookings::new(auth.clone(), sandbox.api_base())
            .count()
            .await?
    );
    println!(
        "client id: {}",
        Me::new(auth, sandbox.api_base()).client_id().await?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use understory_auth::scope;
    use understory_auth::testing::SandboxServer;

    use super::{Bookings, BoxError, Me};

    /// The crate's log lines, down to debug, in the test's output (shown for failing tests).
    fn logs() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("understory_auth=debug")
            .with_test_writer()
            .try_init();
    }

    #[tokio::test]
    async fn bookings_are_counted_with_a_token() -> Result<(), BoxError> {
        logs();
        let sandbox = SandboxServer::start().await?;
        let credentials = sandbox.credentials().with_scopes([scope::BOOKING_READ]);
        let bookings = Bookings::new(
            sandbox.auth_builder(credentials).build()?,
            sandbox.api_base(),
        );

        assert_eq!(bookings.count().await?, 0);
        assert_eq!(bookings.count().await?, 0);

        // One token for both requests.
        assert_eq!(sandbox.token_requests(), 1);
        assert_eq!(sandbox.api_requests(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_scope_is_an_error() -> Result<(), BoxError> {
        logs();
        let sandbox = SandboxServer::start().await?;
        // Without `booking.read`, the API answers 401, as Understory does.
        let bookings = Bookings::new(sandbox.auth()?, sandbox.api_base());

        let err = bookings.count().await.expect_err("no booking.read");
        assert!(err.to_string().contains("401"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn me_over_tower() -> Result<(), BoxError> {
        logs();
        let sandbox = SandboxServer::start().await?;
        let me = Me::new(sandbox.auth()?, sandbox.api_base());

        assert_eq!(me.client_id().await?, sandbox.client_id());
        assert_eq!(sandbox.token_requests(), 1);
        Ok(())
    }
}
