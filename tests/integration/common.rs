//! Helpers shared by the integration test modules.
#![allow(dead_code)]

use understory_auth::testing::SandboxServer;
use understory_auth::{Credentials, UnderstoryAuth};

/// A sandbox server with its default settings.
pub async fn sandbox() -> SandboxServer {
    SandboxServer::start().await.expect("sandbox server starts")
}

/// The sandbox's own credentials.
pub fn credentials(sandbox: &SandboxServer) -> Credentials {
    Credentials::new(sandbox.client_id(), sandbox.client_secret())
}

/// An `UnderstoryAuth` pointed at `sandbox` for both tokens and the API.
pub fn auth(sandbox: &SandboxServer) -> UnderstoryAuth {
    auth_with(sandbox, credentials(sandbox))
}

/// An `UnderstoryAuth` pointed at `sandbox`, with the given credentials.
pub fn auth_with(sandbox: &SandboxServer, credentials: Credentials) -> UnderstoryAuth {
    UnderstoryAuth::builder(credentials)
        .token_url(sandbox.token_url())
        .api_base(sandbox.api_base())
        .build()
        .expect("auth builds")
}
