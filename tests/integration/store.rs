//! The shared token cache against a real Redis: each test starts its own `redis-server` on a
//! free loopback port (killed when the test ends) and several `UnderstoryAuth` instances,
//! each with its own `RedisStore`, standing in for the processes of a fleet. The sandbox is
//! the auth server and counts the token requests.
//!
//! `redis-server` must be installed (`.ci/run` installs it): without it these tests fail,
//! they do not skip.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::future::join_all;
use redis::AsyncCommands;
use understory_auth::testing::SandboxServer;
use understory_auth::{Credentials, RedisStore, SHARED_KEY_PREFIX, UnderstoryAuth};

use crate::common::{capture_logs, credentials, sandbox};

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A `redis-server` child process on 127.0.0.1, without persistence; killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port (retrying if another test took the port meanwhile).
    fn start() -> Self {
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn_redis(port) {
                return RedisServer {
                    port,
                    child: Some(child),
                };
            }
        }
        panic!("redis-server did not start on a free port in 5 attempts");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn_redis(self.port).expect("redis-server restarts on its port"));
    }

    /// A direct connection, to look at and meddle with what the store holds.
    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connects to the test redis-server")
    }

    /// The keys the crate wrote, sorted.
    async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .connection()
            .await
            .keys(format!("{SHARED_KEY_PREFIX}*"))
            .await
            .expect("KEYS");
        keys.sort();
        keys
    }

    /// The one token entry's key (there must be exactly one).
    async fn entry_key(&self) -> String {
        let keys = self.keys().await;
        let entries: Vec<_> = keys.iter().filter(|k| !k.ends_with(":lock")).collect();
        assert_eq!(entries.len(), 1, "one entry expected: {keys:?}");
        entries[0].clone()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Starts `redis-server` on `port` and waits until it accepts connections; `None` if it
/// exited (the port was taken). Panics if the binary is missing.
fn spawn_redis(port: u16) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-server ({e}): the shared-cache tests need a real Redis on \
                 this machine; install it (`apt-get install -y redis-server`, as .ci/run does)"
            )
        });
    for _ in 0..500 {
        if child.try_wait().ok().flatten().is_some() {
            return None;
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server on port {port} did not accept connections within 5 s");
}

/// One "process": its own `UnderstoryAuth` and `RedisStore`, sharing `redis`.
fn process(sandbox: &SandboxServer, redis: &RedisServer, creds: Credentials) -> UnderstoryAuth {
    UnderstoryAuth::builder(creds)
        .token_url(sandbox.token_url())
        .api_base(sandbox.api_base())
        .shared_cache(RedisStore::new(&redis.url()).expect("valid Redis URL"))
        .build()
        .expect("auth builds")
}

fn client(auth: UnderstoryAuth) -> reqwest_middleware::ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth)
        .build()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn processes_sharing_redis_make_one_token_request() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    let mut secrets = Vec::new();
    for _ in 0..5 {
        let auth = process(&server, &redis, credentials(&server));
        secrets.push(auth.token().await?.secret().to_owned());
    }
    assert_eq!(server.token_requests(), 1);
    assert!(secrets.iter().all(|s| *s == secrets[0]));

    // Redis holds one entry, no lock, and neither the token nor the secret in the clear.
    let key = redis.entry_key().await;
    assert_eq!(redis.keys().await, std::slice::from_ref(&key));
    let value: Vec<u8> = redis.connection().await.get(&key).await?;
    assert!(!contains(&value, &secrets[0]) && !contains(&value, server.client_secret()));
    assert!(!key.contains(server.client_id()) && !key.contains(server.client_secret()));
    let ttl: i64 = redis.connection().await.pttl(&key).await?;
    assert!(ttl > 0, "the entry expires with the token");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_concurrently_make_one_token_request() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    // A slow auth server, so that every process asks while the first fetch is in flight.
    server.set_token_delay(Duration::from_millis(300));
    let processes: Vec<_> = (0..8)
        .map(|_| process(&server, &redis, credentials(&server)))
        .collect();
    let tokens = join_all(processes.iter().map(|auth| {
        let auth = auth.clone();
        tokio::spawn(async move { auth.token().await })
    }))
    .await;
    let secrets: Vec<String> = tokens
        .into_iter()
        .map(|joined| Ok(joined??.secret().to_owned()))
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    assert_eq!(server.token_requests(), 1);
    assert!(secrets.iter().all(|s| *s == secrets[0]));
    Ok(())
}

#[tokio::test]
async fn a_lock_holder_dying_mid_fetch_holds_the_others_up_for_the_bounded_wait_only() -> TestResult
{
    let (server, redis) = (sandbox().await, RedisServer::start());
    server.set_token_delay(Duration::from_secs(30));
    let holder = process(&server, &redis, credentials(&server));
    let fetch = tokio::spawn({
        let holder = holder.clone();
        async move { holder.token().await }
    });
    while server.token_requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The holder is gone mid-fetch: its task and its cache (which aborts the fetch).
    fetch.abort();
    drop(holder);
    let keys = redis.keys().await;
    assert!(
        keys.len() == 1 && keys[0].ends_with(":lock"),
        "its lock outlives it: {keys:?}"
    );

    server.set_token_delay(Duration::ZERO);
    let other = process(&server, &redis, credentials(&server));
    let token = other.token().await?;
    assert_eq!(
        server.token_requests(),
        2,
        "the other process fetched itself"
    );
    let late = process(&server, &redis, credentials(&server));
    assert_eq!(
        late.token().await?.secret(),
        token.secret(),
        "and shared it"
    );
    assert_eq!(server.token_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn requests_keep_working_while_redis_is_down_and_share_again_once_it_is_back() -> TestResult {
    let (server, mut redis) = (sandbox().await, RedisServer::start());
    let me = format!("{}/v1/me", server.api_base());
    let busy = client(process(&server, &redis, credentials(&server)));
    let idle = client(process(&server, &redis, credentials(&server)));
    assert_eq!(busy.get(&me).send().await?.status(), 200);
    assert_eq!(idle.get(&me).send().await?.status(), 200);
    assert_eq!(server.token_requests(), 1);

    redis.stop();
    // A revoked token makes a running process fetch; a new process starts cold.
    server.revoke_all_tokens();
    assert_eq!(busy.get(&me).send().await?.status(), 200);
    let newcomer = client(process(&server, &redis, credentials(&server)));
    assert_eq!(newcomer.get(&me).send().await?.status(), 200);
    assert_eq!(server.token_requests(), 3, "both fetched directly");

    // Back, empty: a process whose connection broke meanwhile shares its next token.
    redis.restart();
    server.revoke_all_tokens();
    assert_eq!(idle.get(&me).send().await?.status(), 200);
    assert_eq!(server.token_requests(), 4);
    let later = client(process(&server, &redis, credentials(&server)));
    assert_eq!(later.get(&me).send().await?.status(), 200);
    assert_eq!(
        server.token_requests(),
        4,
        "the later process took the shared token"
    );
    Ok(())
}

#[tokio::test]
async fn a_token_the_api_rejects_is_replaced_once_for_the_whole_fleet() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    let me = format!("{}/v1/me", server.api_base());
    let a = client(process(&server, &redis, credentials(&server)));
    let b = client(process(&server, &redis, credentials(&server)));
    assert_eq!(a.get(&me).send().await?.status(), 200);
    assert_eq!(b.get(&me).send().await?.status(), 200);
    assert_eq!(server.token_requests(), 1);

    server.revoke_all_tokens();
    // A's 401 makes it skip the shared (rejected) token and share a new one; B's 401 makes
    // it take that one.
    assert_eq!(a.get(&me).send().await?.status(), 200);
    assert_eq!(b.get(&me).send().await?.status(), 200);
    assert_eq!(server.token_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn a_tampered_entry_is_rejected_logged_without_contents_and_replaced() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    let first = process(&server, &redis, credentials(&server))
        .token()
        .await?;
    let key = redis.entry_key().await;
    let mut connection = redis.connection().await;
    let mut value: Vec<u8> = connection.get(&key).await?;
    let last = value.len() - 1;
    value[last] ^= 0x01;
    let _: () = connection.set_ex(&key, &value, 3600).await?;

    let captured = capture_logs();
    let second = process(&server, &redis, credentials(&server))
        .token()
        .await?;
    let logs = captured.text();
    drop(captured);
    assert_ne!(second.secret(), first.secret());
    assert_eq!(server.token_requests(), 2);
    assert!(logs.contains("failed authentication"), "{logs}");
    assert!(logs.contains("WARN"), "{logs}");
    for secret in [first.secret(), second.secret(), server.client_secret()] {
        assert!(!logs.contains(secret), "a secret was logged:\n{logs}");
    }

    let third = process(&server, &redis, credentials(&server))
        .token()
        .await?;
    assert_eq!(third.secret(), second.secret(), "the entry was replaced");
    assert_eq!(server.token_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn different_scopes_use_different_entries_and_scope_order_does_not_matter() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    let with = |scopes: &[&str]| {
        process(
            &server,
            &redis,
            credentials(&server).with_scopes(scopes.iter().copied()),
        )
    };
    let openid = with(&["openid"]).token().await?;
    let both = with(&["openid", "booking.read"]).token().await?;
    assert_ne!(openid.secret(), both.secret());
    assert_eq!(server.token_requests(), 2);
    assert_eq!(redis.keys().await.len(), 2);

    let reordered = with(&["booking.read", "openid"]).token().await?;
    assert_eq!(reordered.secret(), both.secret());
    assert_eq!(reordered.scopes(), ["openid", "booking.read"]);
    assert_eq!(server.token_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn a_wrong_secret_cannot_read_the_entry() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    let token = process(&server, &redis, credentials(&server))
        .token()
        .await?;

    let intruder = process(
        &server,
        &redis,
        Credentials::new(server.client_id(), "not-the-secret"),
    );
    let error = intruder
        .token()
        .await
        .expect_err("no token without the secret");
    assert_eq!(error.oauth_code(), Some("invalid_client"));
    assert_eq!(server.token_requests(), 2, "it had to ask the auth server");

    let rightful = process(&server, &redis, credentials(&server));
    assert_eq!(
        rightful.token().await?.secret(),
        token.secret(),
        "entry intact"
    );
    assert_eq!(server.token_requests(), 2);
    Ok(())
}
