//! Helpers shared by the integration test modules.
#![allow(dead_code)]

use std::io;
use std::sync::Arc;

use understory_auth::testing::{EchoIn, SandboxServer};
use understory_auth::{Credentials, UnderstoryAuth};

/// Every place [`TokenFault::Echo`](understory_auth::testing::TokenFault::Echo) can put the
/// echoed request.
pub const ECHO_PLACES: [EchoIn; 7] = [
    EchoIn::Error,
    EchoIn::ErrorDescription,
    EchoIn::ErrorUri,
    EchoIn::TokenType,
    EchoIn::Scope,
    EchoIn::HtmlPage,
    EchoIn::Headers,
];

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
    sandbox
        .auth_builder(credentials)
        .build()
        .expect("auth builds")
}

/// Everything written through a test's tracing subscriber (a `MakeWriter`).
#[derive(Clone, Default)]
pub struct Logs(Arc<parking_lot::Mutex<Vec<u8>>>);

impl Logs {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
