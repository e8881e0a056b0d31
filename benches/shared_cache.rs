//! What does the shared cache's second level cost? The latency of a *cold* `token()` (a new
//! `UnderstoryAuth`, empty in-process cache) served from Redis, against the in-process hit
//! every later call gets and against the token request it replaces:
//!
//! * `in_process_hit`: `token()` on a warm cache (what requests pay once a process has a token);
//! * `redis_hit`: a cold `token()` answered by the shared entry, over a connected store;
//! * `redis_hit_new_connection`: the same with a new `RedisStore`, so connecting is included
//!   (a process's first fetch);
//! * `sandbox_fetch`: a cold `token()` without the shared cache: one token request to the
//!   sandbox on loopback (a real auth server adds its network and processing time).
//!
//! Starts its own `redis-server` on a free loopback port (it must be installed; `.ci/run`
//! installs it). Run: `cargo bench --all-features --bench shared_cache`

use std::hint::black_box;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use understory_auth::testing::SandboxServer;
use understory_auth::{RedisStore, UnderstoryAuth};

/// A `redis-server` child process on 127.0.0.1 without persistence, killed on drop.
struct RedisServer {
    child: Child,
    url: String,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): this benchmark needs it installed")
            });
        for _ in 0..500 {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                let url = format!("redis://127.0.0.1:{port}/");
                return RedisServer { child, url };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server on port {port} did not accept connections within 5 s");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn auth(sandbox: &SandboxServer, store: Option<RedisStore>) -> UnderstoryAuth {
    let builder = UnderstoryAuth::builder(sandbox.credentials())
        .token_url(sandbox.token_url())
        .api_base(sandbox.api_base());
    match store {
        Some(store) => builder.shared_cache(store),
        None => builder,
    }
    .build()
    .expect("auth builds")
}

fn shared_cache(c: &mut Criterion) {
    let runtime = Runtime::new().expect("tokio runtime");
    let redis = RedisServer::start();
    let sandbox = runtime
        .block_on(SandboxServer::start())
        .expect("sandbox starts");
    let store = RedisStore::new(&redis.url).expect("valid Redis URL");
    // One process fetches and shares the token; it also serves the in-process hits.
    let warm = auth(&sandbox, Some(store.clone()));
    runtime.block_on(warm.token()).expect("first token");

    let mut group = c.benchmark_group("shared_cache");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("in_process_hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(warm.token().await.expect("token")) });
    });
    // The auth handles are returned, so that they are dropped outside the measurement.
    group.bench_function("redis_hit", |b| {
        b.to_async(&runtime).iter_batched(
            || auth(&sandbox, Some(store.clone())),
            |cold| async move {
                let token = cold.token().await.expect("token");
                (cold, token)
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("redis_hit_new_connection", |b| {
        b.to_async(&runtime).iter_batched(
            || auth(&sandbox, Some(RedisStore::new(&redis.url).expect("URL"))),
            |cold| async move {
                let token = cold.token().await.expect("token");
                (cold, token)
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("sandbox_fetch", |b| {
        b.to_async(&runtime).iter_batched(
            || auth(&sandbox, None),
            |cold| async move {
                let token = cold.token().await.expect("token");
                (cold, token)
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, shared_cache);
criterion_main!(benches);
