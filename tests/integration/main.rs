//! The integration tests: real HTTP over 127.0.0.1 against the sandbox server started in
//! each test. One binary, a module per concern; shared helpers live in `common`.

#[cfg(feature = "app")]
mod app;
mod common;
mod faults;
mod grant;
#[cfg(any(feature = "postgres", all(feature = "redis", feature = "app")))]
mod grant_stores;
#[cfg(all(feature = "redis", feature = "webhooks"))]
mod hostile_redis;
mod hygiene;
mod layer;
mod middleware;
mod network;
#[cfg(feature = "postgres")]
mod postgres;
mod rate_limit;
#[cfg(all(feature = "redis", feature = "app"))]
mod redis_grants;
mod sandbox;
mod soak;
#[cfg(feature = "redis")]
mod store;
#[cfg(all(feature = "test-util", feature = "middleware", feature = "tower"))]
mod unauthorized;
#[cfg(feature = "webhooks")]
mod webhooks;
