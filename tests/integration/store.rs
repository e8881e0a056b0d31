//! The shared token cache against a real Redis: each test starts its own `redis-server` on a
//! free loopback port (killed when the test ends) and several `UnderstoryAuth` instances,
//! each with its own `RedisStore`, standing in for the processes of a fleet. The sandbox is
//! the auth server and counts the token requests.
//!
//! `redis-server` must be installed (`.ci/run` installs it): without it these tests fail,
//! they do not skip.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::future::join_all;
use redis::AsyncCommands;
use understory_auth::testing::{EchoIn, SandboxServer, TokenFault};
use understory_auth::{Credentials, RedisStore, TokenStore, UnderstoryAuth};

/// The prefix of every key the crate writes to Redis, as `RedisStore`'s docs state it.
const SHARED_KEY_PREFIX: &str = "understory-auth:token:v1:";

use crate::common::{
    LoopbackCertificate, capture_logs, credentials, loopback_certificate, sandbox,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A `redis-server` child process on 127.0.0.1, without persistence; killed on drop.
pub(crate) struct RedisServer {
    port: u16,
    tls: Option<Tls>,
    /// Where an append-only file keeps the data across restarts (none: restarts empty).
    aof_dir: Option<PathBuf>,
    child: Option<Child>,
}

/// A TLS-only server's certificate authority and the files `redis-server` reads.
struct Tls {
    ca_pem: String,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port (retrying if another test took the port meanwhile).
    pub(crate) fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server speaking only TLS (`--port 0 --tls-port …`), with a certificate for
    /// 127.0.0.1 signed by a certificate authority made up for the test.
    fn start_tls() -> Self {
        let LoopbackCertificate {
            ca_pem,
            certificate,
            key,
        } = loopback_certificate();

        let dir = std::env::temp_dir().join(format!(
            "understory-auth-redis-tls-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        std::fs::write(dir.join("server.crt"), certificate.pem()).expect("writes the certificate");
        std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("writes the key");
        Self::start_with(Some(Tls { ca_pem, dir }))
    }

    /// Starts a server that persists every write to an append-only file
    /// (`appendfsync always`), so that [`restart`](Self::restart) keeps the data.
    pub(crate) fn start_persistent() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "understory-auth-redis-aof-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self::start_with_data(None, Some(dir))
    }

    fn start_with(tls: Option<Tls>) -> Self {
        Self::start_with_data(tls, None)
    }

    fn start_with_data(tls: Option<Tls>, aof_dir: Option<PathBuf>) -> Self {
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn_redis(port, tls.as_ref(), aof_dir.as_deref()) {
                return RedisServer {
                    port,
                    tls,
                    aof_dir,
                    child: Some(child),
                };
            }
        }
        panic!("redis-server did not start on a free port in 5 attempts");
    }

    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The PEM of the certificate authority that signed a TLS server's certificate.
    fn ca_pem(&self) -> &[u8] {
        self.tls.as_ref().expect("a TLS server").ca_pem.as_bytes()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port: empty, or with what its append-only file
    /// holds ([`start_persistent`](Self::start_persistent)).
    pub(crate) fn restart(&mut self) {
        self.stop();
        let child = spawn_redis(self.port, self.tls.as_ref(), self.aof_dir.as_deref());
        self.child = Some(child.expect("redis-server restarts on its port"));
    }

    /// A direct connection, to look at and meddle with what the store holds.
    pub(crate) async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = match &self.tls {
            None => redis::Client::open(self.url()),
            Some(tls) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(tls.ca_pem.clone().into_bytes()),
                },
            ),
        };
        client
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

    /// The token entries' keys (not their locks and generation counters), sorted.
    async fn entry_keys(&self) -> Vec<String> {
        let mut keys = self.keys().await;
        keys.retain(|k| !k.ends_with(":lock") && !k.ends_with(":generation"));
        keys
    }

    /// The one token entry's key (there must be exactly one).
    async fn entry_key(&self) -> String {
        let entries = self.entry_keys().await;
        assert_eq!(entries.len(), 1, "one entry expected: {entries:?}");
        entries[0].clone()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(tls) = &self.tls {
            let _ = std::fs::remove_dir_all(&tls.dir);
        }
        if let Some(dir) = &self.aof_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Starts `redis-server` on `port` (TLS only, with `tls`; with an append-only file in
/// `aof_dir`, else without persistence) and waits until it accepts connections; `None` if
/// it exited (the port was taken). Panics if the binary is missing.
fn spawn_redis(port: u16, tls: Option<&Tls>, aof_dir: Option<&Path>) -> Option<Child> {
    let mut command = Command::new("redis-server");
    match tls {
        None => command.args(["--port", &port.to_string()]),
        Some(tls) => command
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(tls.dir.join("server.crt"))
            .arg("--tls-key-file")
            .arg(tls.dir.join("server.key"))
            .args(["--tls-auth-clients", "no"]),
    };
    match aof_dir {
        None => command.args(["--save", "", "--appendonly", "no"]),
        Some(dir) => command
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir),
    };
    let mut child = command
        .args(["--bind", "127.0.0.1"])
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

/// Has a process fetch and share a token; returns its entry's key.
async fn shared_entry(
    sandbox: &SandboxServer,
    redis: &RedisServer,
) -> Result<String, understory_auth::Error> {
    process(sandbox, redis, credentials(sandbox))
        .token()
        .await?;
    Ok(redis.entry_key().await)
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

    // Redis holds one entry and its generation counter, no lock, and neither the token nor
    // the secret in the clear.
    let key = redis.entry_key().await;
    assert_eq!(
        redis.keys().await,
        [key.clone(), format!("{key}:generation")]
    );
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
async fn stats_tell_token_requests_shared_hits_and_shared_failures_apart() -> TestResult {
    let (server, mut redis) = (sandbox().await, RedisServer::start());
    let a = process(&server, &redis, credentials(&server));
    let b = process(&server, &redis, credentials(&server));
    a.token().await?;
    b.token().await?;
    assert_eq!(server.token_requests(), 1);
    let (a_stats, b_stats) = (a.stats(), b.stats());
    // A asked the auth server; B took A's token from Redis, with no token request.
    let counts = |s: &understory_auth::CacheStats| {
        (
            s.fetches,
            s.token_requests,
            s.shared_hits,
            s.shared_failures,
        )
    };
    assert_eq!(counts(&a_stats), (1, 1, 0, 0));
    assert_eq!(counts(&b_stats), (1, 0, 1, 0));
    assert_eq!((b_stats.fetch_successes, b_stats.fetch_failures), (1, 0));

    // Redis down: B's next fetch counts the failure and asks the auth server itself.
    redis.stop();
    server.revoke_all_tokens();
    let me = format!("{}/v1/me", server.api_base());
    assert_eq!(client(b.clone()).get(&me).send().await?.status(), 200);
    assert_eq!(server.token_requests(), 2);
    let b_stats = b.stats();
    assert_eq!(
        (b_stats.fetches, b_stats.token_requests, b_stats.shared_hits),
        (2, 1, 1)
    );
    assert_eq!(b_stats.shared_failures, 1, "{b_stats:?}");
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

/// Issue 18: a token a process took from the shared cache (fetched by another process) is
/// redacted from what the auth server answers that process, like one it fetched itself.
#[tokio::test]
async fn a_token_taken_from_the_shared_cache_is_redacted_from_answers() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    let fetched = process(&server, &redis, credentials(&server))
        .token()
        .await?;
    let taker = process(&server, &redis, credentials(&server));
    let taken = taker.token().await?;
    assert_eq!(taken.secret(), fetched.secret());
    assert_eq!(server.token_requests(), 1);

    // The auth server echoes the latest token it issued, the one `taker` took.
    server.push_token_fault(TokenFault::Echo(EchoIn::ErrorDescription));
    assert!(taker.invalidate(&taken));
    let err = taker.token().await.expect_err("the echo is an error");
    assert_eq!(server.token_requests(), 2);
    let shown = format!("{err} {err:?}");
    let random = taken.secret().trim_start_matches("ory_at_");
    assert!(!shown.contains(&random[..8]), "{shown}");
    assert!(shown.contains("[REDACTED]"), "{shown}");
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
    assert_eq!(redis.entry_keys().await.len(), 2);

    let reordered = with(&["booking.read", "openid"]).token().await?;
    assert_eq!(reordered.secret(), both.secret());
    assert_eq!(reordered.scopes(), ["openid", "booking.read"]);
    assert_eq!(server.token_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn a_wrong_secret_cannot_read_the_entry_and_uses_its_own_quietly() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    let token = process(&server, &redis, credentials(&server))
        .token()
        .await?;

    // Another secret of the same key (a rotation in progress, here one the sandbox refuses)
    // has its own entry and lock: it neither reads nor waits for ours, nor calls it tampered.
    let captured = capture_logs();
    let intruder = process(
        &server,
        &redis,
        Credentials::new(server.client_id(), "not-the-secret"),
    );
    let error = intruder
        .token()
        .await
        .expect_err("no token without the secret");
    let logs = captured.text();
    drop(captured);
    assert_eq!(error.oauth_code(), Some("invalid_client"));
    assert_eq!(server.token_requests(), 2, "it had to ask the auth server");
    assert!(!logs.contains("failed authentication"), "{logs}");
    assert!(
        !logs.contains("no token from the process fetching"),
        "{logs}"
    );

    let rightful = process(&server, &redis, credentials(&server));
    assert_eq!(
        rightful.token().await?.secret(),
        token.secret(),
        "entry intact"
    );
    assert_eq!(server.token_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn an_older_entry_put_back_is_not_taken_after_a_rejection() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    let me = format!("{}/v1/me", server.api_base());
    // The fleet's first and second entries, captured by someone who can read Redis.
    let writer = client(process(&server, &redis, credentials(&server)));
    assert_eq!(writer.get(&me).send().await?.status(), 200);
    let key = redis.entry_key().await;
    let mut connection = redis.connection().await;
    let first: Vec<u8> = connection.get(&key).await?;
    server.revoke_all_tokens();
    assert_eq!(writer.get(&me).send().await?.status(), 200);
    assert_eq!(server.token_requests(), 2);

    // A process takes the second; both tokens are then revoked and the first put back.
    let victim = client(process(&server, &redis, credentials(&server)));
    assert_eq!(victim.get(&me).send().await?.status(), 200);
    assert_eq!(server.token_requests(), 2, "took the shared token");
    server.revoke_all_tokens();
    let _: () = connection.set_ex(&key, &first, 3600).await?;

    // Its 401 makes it fetch, not take the older (revoked) entry and fail again.
    assert_eq!(victim.get(&me).send().await?.status(), 200);
    assert_eq!(server.token_requests(), 3);
    Ok(())
}

#[tokio::test]
async fn a_huge_value_under_the_key_is_not_read_and_is_replaced() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    let key = shared_entry(&server, &redis).await?;
    let huge = vec![0x02_u8; 8 << 20];
    let _: () = redis.connection().await.set_ex(&key, &huge, 3600).await?;

    // The store hands over no more than asked for...
    let store = RedisStore::new(&redis.url())?;
    let (read, ttl) = store.get(&key, 1000).await?.expect("a value");
    assert_eq!(read.len(), 1001);
    assert_eq!(read, huge[..1001]);
    assert!(ttl > Duration::ZERO && ttl <= Duration::from_secs(3600));
    assert_eq!(
        store.get("understory-auth:token:v1:missing", 1000).await?,
        None
    );

    // ...and a cold process refuses the value unread, fetches and replaces it.
    let captured = capture_logs();
    process(&server, &redis, credentials(&server))
        .token()
        .await?;
    let logs = captured.text();
    drop(captured);
    assert!(logs.contains("larger than 98304 bytes, unread"), "{logs}");
    assert_eq!(server.token_requests(), 2);
    let value: Vec<u8> = redis.connection().await.get(&key).await?;
    assert!(value.len() < 1000, "replaced by a real entry");
    Ok(())
}

#[tokio::test]
async fn redis_expiry_bounds_a_shared_token_whatever_the_writers_clock_says() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start());
    let key = shared_entry(&server, &redis).await?;
    let mut connection = redis.connection().await;

    // Sealed to last an hour, but Redis drops it in 2 minutes: it is then due for refresh
    // (the lead time of an hour-long token is longer), so a cold process fetches.
    let _: () = connection.pexpire(&key, 120_000).await?;
    let cold = process(&server, &redis, credentials(&server));
    cold.token().await?;
    assert_eq!(server.token_requests(), 2);

    // With 50 minutes left in Redis a cold process takes it, with no more than that left.
    let _: () = connection.pexpire(&key, 3_000_000).await?;
    let token = process(&server, &redis, credentials(&server))
        .token()
        .await?;
    assert_eq!(server.token_requests(), 2);
    assert!(
        token.expires_in() <= Duration::from_secs(3000),
        "{:?}",
        token.expires_in()
    );
    Ok(())
}

#[tokio::test]
async fn processes_share_over_tls_to_a_redis_with_a_private_certificate_authority() -> TestResult {
    let (server, redis) = (sandbox().await, RedisServer::start_tls());
    let over_tls = || {
        let store = RedisStore::with_root_certificates(&redis.url(), redis.ca_pem())?;
        let auth = UnderstoryAuth::builder(credentials(&server))
            .token_url(server.token_url())
            .api_base(server.api_base())
            .shared_cache(store)
            .build()?;
        Ok::<_, Box<dyn std::error::Error>>(auth)
    };
    let first = over_tls()?.token().await?;
    let second = over_tls()?.token().await?;
    assert_eq!(second.secret(), first.secret());
    assert_eq!(server.token_requests(), 1, "shared over TLS");
    assert_eq!(redis.entry_keys().await.len(), 1);

    // With only the public roots the certificate is not trusted: no connection, so the
    // process fetches directly (and says why).
    let captured = capture_logs();
    let untrusting = process(&server, &redis, credentials(&server));
    untrusting.token().await?;
    let logs = captured.text();
    drop(captured);
    assert_eq!(server.token_requests(), 2);
    assert!(
        logs.contains("the shared token cache is unavailable"),
        "{logs}"
    );

    // A certificate authority goes with TLS only.
    assert!(RedisStore::with_root_certificates("redis://127.0.0.1:6379/", redis.ca_pem()).is_err());
    Ok(())
}

#[tokio::test]
async fn a_hostile_redis_cannot_forge_log_lines() -> TestResult {
    // A "Redis" on loopback whose every answer is an error reply carrying a line break and
    // a terminal escape, as anyone on the path of a plain redis:// connection could send.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let url = format!("redis://{}/", listener.local_addr()?);
    let fake = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0; 4096];
                while let Ok(n @ 1..) = socket.read(&mut buffer).await {
                    // One error per command (an array header), pipelined ones included.
                    let read = &buffer[..n];
                    let commands = (0..n)
                        .filter(|&i| read[i] == b'*' && (i == 0 || read[..i].ends_with(b"\r\n")))
                        .count();
                    let reply = b"-ERR forged\n2026-01-01T00:00:00Z  WARN fake line\x1b[2J\r\n";
                    if socket.write_all(&reply.repeat(commands)).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let server = sandbox().await;
    let captured = capture_logs();
    let auth = UnderstoryAuth::builder(credentials(&server))
        .token_url(server.token_url())
        .api_base(server.api_base())
        .shared_cache(RedisStore::new(&url)?)
        .build()?;
    auth.token().await?;
    let logs = captured.text();
    drop(captured);
    fake.abort();
    assert_eq!(server.token_requests(), 1, "fetched directly");
    assert!(logs.contains("forged"), "the reply reached the log: {logs}");
    assert!(
        !logs.contains("\n2026-01-01T00:00:00Z"),
        "forged line: {logs}"
    );
    assert!(!logs.contains('\u{1b}'), "escape sequence: {logs:?}");
    Ok(())
}
