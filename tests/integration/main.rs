//! The integration tests: real HTTP over 127.0.0.1 against the sandbox server started in
//! each test. One binary, a module per concern; shared helpers live in `common`.

mod common;
mod grant;
mod layer;
mod middleware;
mod sandbox;
#[cfg(feature = "redis")]
mod store;
