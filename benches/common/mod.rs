//! Helpers shared by the benchmarks (each bench is its own crate and uses a subset).
#![allow(dead_code, unused_imports)]

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use understory_auth::testing::SandboxServer;
use understory_auth::{Credentials, UnderstoryAuth};

mod calls;
mod rounds;
pub use calls::*;
pub use rounds::*;

/// A sandbox and an `UnderstoryAuth` pointed at it (nothing fetched yet).
pub async fn sandbox_and_auth() -> (SandboxServer, UnderstoryAuth) {
    let sandbox = SandboxServer::start().await.expect("sandbox starts");
    let auth = auth_for(&sandbox);
    (sandbox, auth)
}

/// A fresh `UnderstoryAuth` (own, empty cache) for `sandbox`.
pub fn auth_for(sandbox: &SandboxServer) -> UnderstoryAuth {
    UnderstoryAuth::builder(Credentials::new(
        sandbox.client_id(),
        sandbox.client_secret(),
    ))
    .token_url(sandbox.token_url())
    .api_base(sandbox.api_base())
    .build()
    .expect("auth builds")
}

/// An `UnderstoryAuth` for `sandbox` whose tokens go to `api_base` instead of the sandbox's
/// API (for a bench's own loopback server).
pub fn auth_for_api(sandbox: &SandboxServer, api_base: &str) -> UnderstoryAuth {
    UnderstoryAuth::builder(Credentials::new(
        sandbox.client_id(),
        sandbox.client_secret(),
    ))
    .token_url(sandbox.token_url())
    .api_base(api_base)
    .build()
    .expect("auth builds")
}

/// A minimal HTTP/1.1 server on loopback answering every request `200 OK` with an empty body
/// at once. Returns its base URL, `http://127.0.0.1:PORT`. Runs until the runtime stops.
pub async fn ok_server() -> String {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind loopback");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}
