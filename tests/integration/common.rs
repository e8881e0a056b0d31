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

/// Moves tokio's clock, which the token cache reads, `by` ahead at once, instead of sleeping
/// through a failure window or a cooldown. Call it only between requests, on a
/// current-thread runtime (`#[tokio::test]`): the clock is paused just for the jump, so no
/// socket waits while it moves (paused time and waiting sockets do not mix).
pub async fn skip_ahead(by: std::time::Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Runs `work` with tokio's clock stopped: for callers that must be answered inside a
/// failure window, however slowly a loaded machine runs them. Only for work that sends
/// nothing (answered from the window): a socket waiting under the paused clock would let it
/// jump ahead. Current-thread runtime only.
pub async fn clock_stopped<F: std::future::Future>(work: F) -> F::Output {
    tokio::time::pause();
    let output = work.await;
    tokio::time::resume();
    output
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

/// What a test's tracing subscriber (every level) wrote, while this is alive on this thread.
pub struct CapturedLogs {
    logs: Logs,
    _guard: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}

impl CapturedLogs {
    /// What was written so far.
    pub fn text(&self) -> String {
        self.logs.text()
    }
}

/// Captures the current thread's log events, at every level, until the result is dropped
/// (the tests run on tokio's current-thread runtime, so a token fetch's spawned task logs
/// here too).
pub fn capture_logs() -> CapturedLogs {
    // While only one subscriber exists, tracing asks the *registering thread's* subscriber
    // whether a callsite is enabled, and caches the answer: another test thread reaching one
    // of our events first would switch it off for good. With a second subscriber alive,
    // tracing asks all of them.
    let second = tracing::Dispatch::new(tracing_subscriber::registry());
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    CapturedLogs {
        _guard: tracing::subscriber::set_default(subscriber),
        _second: second,
        logs,
    }
}

/// A certificate for 127.0.0.1 and its key, issued by a certificate authority made up for
/// one test.
pub struct LoopbackCertificate {
    /// The certificate authority's certificate, in PEM: what a client must trust.
    pub ca_pem: String,
    /// The server's certificate for 127.0.0.1.
    pub certificate: rcgen::Certificate,
    /// The server certificate's key.
    pub key: rcgen::KeyPair,
}

/// A new private CA and a server certificate it issued for 127.0.0.1.
pub fn loopback_certificate() -> LoopbackCertificate {
    let ca_key = rcgen::KeyPair::generate().expect("a CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("a CA certificate");
    let key = rcgen::KeyPair::generate().expect("a server key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let certificate = params
        .signed_by(&key, &issuer)
        .expect("a server certificate");
    LoopbackCertificate {
        ca_pem: ca.pem(),
        certificate,
        key,
    }
}
