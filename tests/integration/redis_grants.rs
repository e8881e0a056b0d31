//! `RedisGrantStore` against a real `redis-server` that each test starts on a free loopback
//! port (the harness of `store.rs`): the `GrantStore` contract, refused grants, and the fleet
//! properties of several independent `UnderstoryApp`s, each with its own store and
//! connection, sharing one Redis and one sandbox.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures_util::future::join_all;
use redis::AsyncCommands;
use understory_auth::testing::SandboxServer;
use understory_auth::{
    Company, Error, GrantState, GrantStore, GrantSummary, REFRESH_LEASE, RedisGrantStore,
    SaveOutcome, UnderstoryApp,
};

use crate::grant_stores::{connect_all, fleet_sandbox, grant, key, save, sum, token_of, version};

use crate::common::capture_logs;
use crate::store::RedisServer;

/// Where the store keeps a connection's grant, as its docs state it.
const GRANT_PREFIX: &str = "understory-auth:grant:v1:";
const LEASE_PREFIX: &str = "understory-auth:grant-lease:v1:";
const VERSION_COUNTER: &str = "understory-auth:grant-versions:v1";

/// A new store (its own connection, as another process's) on `redis`.
fn store(redis: &RedisServer) -> RedisGrantStore {
    RedisGrantStore::new(&redis.url(), key("k1", 1)).expect("a valid URL")
}

#[tokio::test]
async fn compare_and_swap_writes_only_over_the_expected_version() {
    let redis = RedisServer::start();
    let store = store(&redis);
    assert!(store.load("a").await.unwrap().is_none());
    assert_eq!(
        save(&store, "a", "rt0", Some(1)).await,
        SaveOutcome::Conflict
    );
    let v1 = version(save(&store, "a", "rt1", None).await);
    let loaded = store.load("a").await.unwrap().expect("stored");
    assert_eq!(loaded.version, v1);
    assert_eq!(loaded.state, GrantState::Active);
    assert_eq!(loaded.company, Company::new("cmp_1", "Fjord Kayaks"));
    assert_eq!(loaded.scopes, ["openid", "offline"]);
    assert_eq!(loaded.refreshed_at, UNIX_EPOCH + Duration::from_secs(1_000));
    let v2 = version(save(&store, "a", "rt2", Some(v1)).await);
    assert!(v2 > v1);
    assert_eq!(
        save(&store, "a", "stale", Some(v1)).await,
        SaveOutcome::Conflict
    );
    assert_eq!(
        save(&store, "a", "huge", Some(u64::MAX)).await,
        SaveOutcome::Conflict
    );
    assert_eq!(token_of(&store, "a").await.as_deref(), Some("rt2"));
    // Unconditional: replaces whatever is there.
    let v3 = version(save(&store, "a", "new", None).await);
    assert!(v3 > v2);
    assert_eq!(token_of(&store, "a").await.as_deref(), Some("new"));
}

#[tokio::test]
async fn versions_are_not_reused_after_a_delete_nor_a_lost_counter() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let old = version(save(&store, "a", "old", None).await);
    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("a").await.unwrap());
    let new = version(save(&store, "a", "new", None).await);
    assert!(new > old);
    assert_eq!(
        save(&store, "a", "stale", Some(old)).await,
        SaveOutcome::Conflict
    );
    assert_eq!(token_of(&store, "a").await.as_deref(), Some("new"));
    // The counter evicted (what `noeviction` prevents): versions still grow.
    let mut raw = redis.connection().await;
    let _: () = raw.del(VERSION_COUNTER).await.unwrap();
    let after_loss = version(save(&store, "a", "newer", Some(new)).await);
    assert!(after_loss > new, "{after_loss} > {new}");
    let _: () = raw.del(VERSION_COUNTER).await.unwrap();
    assert!(store.delete("a").await.unwrap());
    let recreated = version(save(&store, "a", "again", None).await);
    assert!(recreated > after_loss, "{recreated} > {after_loss}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_savers_over_one_version_exactly_one_wins() {
    let redis = RedisServer::start();
    let (store, other) = (self::store(&redis), self::store(&redis));
    let base = version(save(&store, "a", "rt0", None).await);
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            tokio::spawn(
                async move { (i, save(&store, "a", &format!("rt-{i}"), Some(base)).await) },
            )
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, outcome) = task.await.expect("no panic");
        if let SaveOutcome::Saved { version } = outcome {
            winners.push((i, version));
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = store.load("a").await.unwrap().unwrap();
    assert_eq!(stored.version, winners[0].1);
    assert_eq!(
        stored.refresh_token.expose_secret(),
        format!("rt-{}", winners[0].0)
    );
}

#[tokio::test]
async fn marking_needs_the_current_version_and_list_shows_every_grant() {
    let redis = RedisServer::start();
    let store = store(&redis);
    assert_eq!(
        store.mark_needs_reauthorization("a", 1).await.unwrap(),
        SaveOutcome::Conflict
    );
    let v1 = version(save(&store, "a", "rt1", None).await);
    let v2 = version(save(&store, "a", "rt2", Some(v1)).await);
    assert_eq!(
        store.mark_needs_reauthorization("a", v1).await.unwrap(),
        SaveOutcome::Conflict
    );
    let v3 = version(store.mark_needs_reauthorization("a", v2).await.unwrap());
    assert!(v3 > v2);
    let marked = store.load("a").await.unwrap().unwrap();
    assert_eq!(
        (marked.state, marked.version),
        (GrantState::NeedsReauthorization, v3)
    );
    let mut b = grant("rt-b");
    b.refreshed_at = UNIX_EPOCH + Duration::from_secs(2_000);
    let _ = version(store.save("b", &b, None).await.unwrap());
    let mut listed = store.list().await.unwrap();
    listed.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(
        listed,
        [
            GrantSummary::new(
                "a",
                UNIX_EPOCH + Duration::from_secs(1_000),
                GrantState::NeedsReauthorization
            ),
            GrantSummary::new(
                "b",
                UNIX_EPOCH + Duration::from_secs(2_000),
                GrantState::Active
            ),
        ]
    );
    assert!(store.delete("a").await.unwrap());
    assert_eq!(store.list().await.unwrap().len(), 1);
    // Many pages of SCAN, leases and the counter beside them: every grant once.
    join_all((0..450).map(|i| {
        let store = store.clone();
        async move { version(save(&store, &format!("tenant-{i}"), "rt", None).await) }
    }))
    .await;
    assert!(store.lease("tenant-1", "p1", REFRESH_LEASE).await.unwrap());
    let mut keys: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.key)
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 451);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_has_one_holder_until_released_or_expired() {
    let redis = RedisServer::start();
    let (store, other) = (self::store(&redis), self::store(&redis));
    let ttl = Duration::from_secs(30);
    // Concurrent takers of a free lease: exactly one wins.
    let takers = join_all((0..16).map(|i| {
        let store = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        async move { store.lease("a", &format!("p{i}"), ttl).await.unwrap() }
    }))
    .await;
    assert_eq!(takers.iter().filter(|&&won| won).count(), 1, "{takers:?}");
    let holder = format!("p{}", takers.iter().position(|&won| won).unwrap());
    assert!(!store.lease("a", "intruder", ttl).await.unwrap());
    assert!(
        store.lease("a", &holder, ttl).await.unwrap(),
        "the holder extends it"
    );
    assert!(
        store.lease("b", "intruder", ttl).await.unwrap(),
        "keys are independent"
    );
    // Only the holder releases it.
    store.release("a", "intruder").await.unwrap();
    assert!(!other.lease("a", "intruder", ttl).await.unwrap());
    store.release("a", &holder).await.unwrap();
    assert!(other.lease("a", "p-next", ttl).await.unwrap());
    // Expiry, on Redis's clock; an extension pushes it out.
    assert!(
        store
            .lease("c", "p1", Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(!store.lease("c", "p2", ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.lease("c", "p2", ttl).await.unwrap());
    // A ttl beyond Redis's range is held, not an error.
    assert!(store.lease("d", "p1", Duration::MAX).await.unwrap());
    assert!(!store.lease("d", "p2", ttl).await.unwrap());
    // The lease the app takes ends REFRESH_LEASE from now at most, even when extended.
    assert!(
        store
            .lease("e", "p1", Duration::from_millis(500))
            .await
            .unwrap()
    );
    assert!(store.lease("e", "p1", REFRESH_LEASE).await.unwrap());
    let left: i64 = redis
        .connection()
        .await
        .pttl(format!("{LEASE_PREFIX}e"))
        .await
        .unwrap();
    let lease_ms = REFRESH_LEASE.as_millis() as i64;
    assert!(left <= lease_ms && left > lease_ms - 5_000, "{left}");
}

#[tokio::test]
async fn redis_holds_no_token_and_keys_rotate() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let _ = version(save(&store, "a", "ory_rt_SECRET_one", None).await);
    let mut raw = redis.connection().await;
    let fields: Vec<(String, Vec<u8>)> = raw.hgetall(format!("{GRANT_PREFIX}a")).await.unwrap();
    let dump = format!(
        "{fields:?} {:?}",
        fields
            .iter()
            .map(|(_, v)| String::from_utf8_lossy(v))
            .collect::<Vec<_>>()
    );
    assert!(
        !dump.contains("SECRET") && !dump.contains("Kayaks"),
        "{dump}"
    );
    assert!(
        dump.contains("active") && dump.contains("1000000"),
        "{dump}"
    );
    // Rotation: the new key opens the old grant through previous keys, and re-seals.
    let rotated = RedisGrantStore::new(&redis.url(), key("k2", 2))
        .unwrap()
        .with_previous_keys([key("k1", 1)])
        .unwrap();
    let loaded = rotated.load("a").await.unwrap().unwrap();
    assert_eq!(loaded.refresh_token.expose_secret(), "ory_rt_SECRET_one");
    let _ = version(
        rotated
            .save("a", &loaded, Some(loaded.version))
            .await
            .unwrap(),
    );
    let key_id: String = raw
        .hget(format!("{GRANT_PREFIX}a"), "key_id")
        .await
        .unwrap();
    assert_eq!(key_id, "k2");
    let retired = RedisGrantStore::new(&redis.url(), key("k2", 2)).unwrap();
    assert!(retired.load("a").await.unwrap().is_some());
    assert!(
        store.load("a").await.is_err(),
        "the old key alone cannot open it"
    );
    assert!(
        RedisGrantStore::new(&redis.url(), key("k2", 2))
            .unwrap()
            .with_previous_keys([key("k2", 3)])
            .is_err()
    );
}

#[tokio::test]
async fn bad_grants_are_refused_one_by_one_with_one_warning() {
    let redis = RedisServer::start();
    let store = store(&redis);
    let names = [
        "good",
        "tampered",
        "truncated",
        "oversized",
        "foreign",
        "unknown-key",
        "not-a-hash",
    ];
    for name in names {
        let _ = version(save(&store, name, &format!("ory_rt_SECRET_{name}"), None).await);
    }
    let mut raw = redis.connection().await;
    let field = |name: &str| format!("{GRANT_PREFIX}{name}");
    let good: Vec<u8> = raw.hget(field("good"), "sealed").await.unwrap();
    let sealed = |name: &'static str| {
        let mut raw = raw.clone();
        async move {
            let bytes: Vec<u8> = raw
                .hget(format!("{GRANT_PREFIX}{name}"), "sealed")
                .await
                .unwrap();
            bytes
        }
    };
    let mut tampered = sealed("tampered").await;
    tampered[20] ^= 1;
    let truncated = sealed("truncated").await[..20].to_vec();
    let mut oversized = sealed("oversized").await;
    oversized.extend(std::iter::repeat_n(b'x', 20_000));
    for (name, bytes) in [
        ("tampered", tampered),
        ("truncated", truncated),
        ("oversized", oversized),
        ("foreign", good),
    ] {
        let _: () = raw.hset(field(name), "sealed", bytes).await.unwrap();
    }
    let _: () = raw
        .hset(field("unknown-key"), "key_id", "k9")
        .await
        .unwrap();
    let _: () = raw.del(field("not-a-hash")).await.unwrap();
    let _: () = raw
        .set(field("not-a-hash"), "ory_rt_SECRET_plain")
        .await
        .unwrap();

    let logs = capture_logs();
    for name in &names[1..] {
        let error = store.load(name).await.expect_err(name);
        assert!(!error.is_transient(), "{error}");
        let shown = format!("{error} {error:?}");
        assert!(
            shown.contains("refused") && !shown.contains("SECRET"),
            "{shown}"
        );
    }
    assert_eq!(
        token_of(&store, "good").await.as_deref(),
        Some("ory_rt_SECRET_good")
    );
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].key, "good");
    let text = logs.text();
    let warnings = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("was refused"))
        .count();
    let quiet = text
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains("was refused"))
        .count();
    assert_eq!((warnings, quiet), (1, 2 * (names.len() - 1) - 1), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
    drop(logs);
    // A new authorization's unconditional save replaces a refused grant.
    for name in ["tampered", "not-a-hash"] {
        let _ = version(save(&store, name, "ory_rt_fresh", None).await);
        assert_eq!(
            token_of(&store, name).await.as_deref(),
            Some("ory_rt_fresh")
        );
    }
}

// ----- The fleet: independent apps sharing one Redis and one sandbox. -----

/// An instance (a process): its own app, store and Redis connection.
fn app(sandbox: &SandboxServer, redis: &RedisServer) -> UnderstoryApp {
    sandbox
        .app_builder()
        .grant_store(store(redis))
        .build()
        .expect("app builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_instances_present_each_refresh_token_once() {
    const COMPANIES: usize = 10;
    let redis = RedisServer::start();
    let sandbox = fleet_sandbox(COMPANIES, Duration::from_secs(3600)).await;
    connect_all(&app(&sandbox, &redis), &sandbox, COMPANIES).await;
    let fleet: Vec<_> = (0..4).map(|_| app(&sandbox, &redis)).collect();
    let mut refreshed = 0;
    for _ in 0..3 {
        // Every instance refreshes every connection at once.
        for report in join_all(fleet.iter().map(|app| app.keep_alive(Duration::ZERO))).await {
            let report = report.expect("lists");
            refreshed += report.refreshed;
            for (key, error) in &report.failed {
                assert!(error.is_transient(), "{key}: {error:?}");
            }
        }
    }
    assert_eq!(sum(COMPANIES, |c| sandbox.reuse_detected(c)), 0);
    assert_eq!(
        sum(COMPANIES, |c| sandbox.refreshes(c)),
        refreshed,
        "every refresh was used"
    );
    assert!(refreshed >= 3 * COMPANIES, "{refreshed}");
    // Each connection still works from a new process, with what Redis holds.
    let fresh = app(&sandbox, &redis);
    for i in 0..COMPANIES {
        fresh
            .connection(&format!("tenant-{i}"))
            .token()
            .await
            .expect("a token");
    }
    assert_eq!(sum(COMPANIES, |c| sandbox.reuse_detected(c)), 0);
}

#[tokio::test]
async fn a_dead_lease_holder_is_waited_out() {
    let redis = RedisServer::start();
    let sandbox = fleet_sandbox(1, Duration::from_secs(3600)).await;
    let store = store(&redis);
    connect_all(&app(&sandbox, &redis), &sandbox, 1).await;
    // A process took the lease and died: its lease runs out by itself (here after 800 ms;
    // the app's own lease is REFRESH_LEASE).
    assert!(
        store
            .lease("tenant-0", "dead-process", Duration::from_millis(800))
            .await
            .unwrap()
    );
    // Its stored access token is gone too: the next process must refresh.
    let mut grant = store.load("tenant-0").await.unwrap().unwrap();
    grant.access_token = None;
    let _ = version(
        store
            .save("tenant-0", &grant, Some(grant.version))
            .await
            .unwrap(),
    );
    let auth = app(&sandbox, &redis).connection("tenant-0");
    let token = tokio::spawn(async move { auth.token().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sandbox.refreshes("company-0"),
        0,
        "nothing presented under the lease"
    );
    token
        .await
        .unwrap()
        .expect("the waiting process continues once the lease runs out");
    assert_eq!(
        (
            sandbox.refreshes("company-0"),
            sandbox.reuse_detected("company-0")
        ),
        (1, 0)
    );
    let stored = store.load("tenant-0").await.unwrap().unwrap();
    assert!(stored.version > grant.version && stored.access_token.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_under_load_loses_nothing() {
    const INSTANCES: usize = 4;
    const COMPANIES: usize = 100;
    const LIFETIME: Duration = Duration::from_secs(3);
    const LIFETIMES: u32 = 3;
    let redis = RedisServer::start();
    let sandbox = fleet_sandbox(COMPANIES, LIFETIME).await;
    connect_all(&app(&sandbox, &redis), &sandbox, COMPANIES).await;
    let fleet: Vec<_> = (0..INSTANCES).map(|_| app(&sandbox, &redis)).collect();
    let started = Instant::now();
    let (errors, requests, lost) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let worker = |app: UnderstoryApp, offset: usize| {
        let (errors, requests, lost) = (&errors, &requests, &lost);
        async move {
            while started.elapsed() < LIFETIME * LIFETIMES {
                let calls = (0..COMPANIES).map(|i| {
                    let auth = app.connection(&format!("tenant-{}", (i + offset) % COMPANIES));
                    async move { auth.token().await }
                });
                for result in join_all(calls).await {
                    requests.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(_) => {}
                        Err(Error::NeedsReauthorization { .. }) => {
                            _ = lost.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => _ = errors.fetch_add(1, Ordering::Relaxed),
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    join_all(
        fleet
            .iter()
            .cloned()
            .enumerate()
            .map(|(n, app)| worker(app, n * 7)),
    )
    .await;
    let elapsed = started.elapsed();
    let refreshes = sum(COMPANIES, |c| sandbox.refreshes(c));
    let reuse = sum(COMPANIES, |c| sandbox.reuse_detected(c));
    let listed = store(&redis).list().await.unwrap();
    let needing = listed
        .iter()
        .filter(|s| s.state != GrantState::Active)
        .count();
    // As in postgres.rs: the fleet shares each connection's access token through the store,
    // and a 3 s token is due 1.35 s after it was obtained at the latest (5 % skew, then a
    // margin of half the lifetime): the minimum is one refresh per connection per 1.35 s.
    let minimum = COMPANIES * (elapsed.as_secs_f64() / 1.35).ceil() as usize;
    let bound = minimum + minimum / 10;
    eprintln!(
        "redis load: {INSTANCES} instances x {COMPANIES} connections, {LIFETIME:?} tokens, {elapsed:?}: \
         {} requests, {refreshes} refreshes (minimum {minimum}, bound {bound}), \
         {} transient errors, {} lost, {reuse} reuse",
        requests.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
    );
    assert_eq!(listed.len(), COMPANIES);
    assert_eq!((lost.load(Ordering::Relaxed), needing, reuse), (0, 0, 0));
    assert!(refreshes <= bound, "{refreshes} > {bound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_cached_tokens_work_and_refreshes_wait() {
    // With an append-only file, as the store's docs ask: a restart keeps the grants.
    let mut redis = RedisServer::start_persistent();
    let sandbox = fleet_sandbox(2, Duration::from_secs(3600)).await;
    let app = app(&sandbox, &redis);
    connect_all(&app, &sandbox, 2).await;
    let cached = app.connection("tenant-0").token().await.unwrap();

    redis.stop();
    let again = app
        .connection("tenant-0")
        .token()
        .await
        .expect("cached: no store needed");
    assert_eq!(again.secret(), cached.secret());
    // Another process has no token in memory: it needs the store.
    let error = self::app(&sandbox, &redis)
        .connection("tenant-1")
        .token()
        .await
        .expect_err("Redis is down");
    assert!(error.is_transient(), "{error:?}");
    assert!(error.to_string().contains("grant store"), "{error}");
    // A refresh that is due fails transient, without presenting the token.
    let report = app.keep_alive(Duration::ZERO).await;
    assert!(
        report.as_ref().is_err_and(Error::is_transient),
        "{report:?}"
    );
    assert_eq!(
        sum(2, |c| sandbox.refreshes(c)),
        0,
        "no refresh without the store"
    );

    redis.restart();
    let recovered = self::app(&sandbox, &redis);
    recovered
        .connection("tenant-1")
        .token()
        .await
        .expect("recovered: the stored token");
    // The first instance recovers too, on a new connection.
    let report = app.keep_alive(Duration::ZERO).await.unwrap();
    assert_eq!(
        (report.refreshed, report.failed.len()),
        (2, 0),
        "{report:?}"
    );
    assert_eq!(
        (
            sum(2, |c| sandbox.refreshes(c)),
            sum(2, |c| sandbox.reuse_detected(c))
        ),
        (2, 0)
    );
}

#[tokio::test]
async fn a_refused_grant_fails_its_connection_only() {
    let redis = RedisServer::start();
    let sandbox = fleet_sandbox(2, Duration::from_secs(3600)).await;
    connect_all(&app(&sandbox, &redis), &sandbox, 2).await;
    let mut raw = redis.connection().await;
    let _: () = raw
        .hset(format!("{GRANT_PREFIX}tenant-0"), "key_id", "k9")
        .await
        .unwrap();
    let fresh = app(&sandbox, &redis);
    let error = fresh
        .connection("tenant-0")
        .token()
        .await
        .expect_err("refused");
    assert!(!error.is_transient(), "{error:?}");
    fresh
        .connection("tenant-1")
        .token()
        .await
        .expect("the other connection works");
    assert_eq!(sandbox.refreshes("company-0"), 0, "nothing was presented");
    let report = fresh.keep_alive(Duration::ZERO).await.expect("lists");
    assert_eq!(
        (report.refreshed, report.failed.len()),
        (1, 0),
        "{report:?}"
    );
}
