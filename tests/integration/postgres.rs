//! `PostgresGrantStore` against a real PostgreSQL server that these tests start themselves
//! (Debian's `postgresql` package: `initdb` and `pg_ctl` as the `postgres` user, into a
//! temporary directory, on a free loopback port): the `GrantStore` contract, refused rows,
//! and the fleet properties of several independent `UnderstoryApp`s sharing the store.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use understory_auth::deadpool_postgres::tokio_postgres::{self, NoTls};
use understory_auth::testing::SandboxServer;
use understory_auth::{
    Company, Error, GrantState, GrantStore, GrantSummary, PostgresGrantStore, REFRESH_LEASE,
    SaveOutcome, UnderstoryApp,
};

use crate::grant_stores::{connect_all, fleet_sandbox, grant, key, save, sum, token_of, version};

/// A PostgreSQL server in a temporary directory, stopped and removed when dropped (or, if
/// the test binary dies first, by a watchdog that outlives it).
struct PgServer {
    dir: PathBuf,
    port: u16,
}

fn bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (apt-get install postgresql)")
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version").join(name)
}

fn as_root() -> bool {
    let id = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&id.stdout).trim() == "0"
}

/// `program args` as the `postgres` user when the tests run as root (PostgreSQL refuses
/// to run as root), as the current user otherwise.
fn as_postgres(program: &Path) -> Command {
    if as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PgServer {
    fn start() -> PgServer {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("understory-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("a temporary directory");
        if as_root() {
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(&dir);
            run(chown, "chown the temporary directory");
        }
        let mut initdb = as_postgres(&bin("initdb"));
        initdb.arg("-D").arg(dir.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        initdb.args(["--locale=C"]);
        run(initdb, "initdb");
        // The watchdog: stops the server and removes the directory once this process is gone.
        let watchdog = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; {pg_ctl} -D {data} -m immediate stop; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = bin("pg_ctl").display(),
            data = dir.join("data").display(),
            dir = dir.display(),
        );
        // `setsid -f`: in its own session (a Ctrl-C of the tests does not reach it), and
        // forked, so this command returns at once.
        let mut setsid = as_postgres(Path::new("setsid"));
        setsid
            .args(["-f", "sh", "-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("the watchdog starts");
        let port = free_port();
        let server = PgServer { dir, port };
        server.resume();
        server
    }

    /// Starts (again) on the same port and data, and waits until it accepts connections.
    fn resume(&self) {
        let options = format!(
            "-p {} -h 127.0.0.1 -k {} -c fsync=off -c full_page_writes=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        let mut pg_ctl = as_postgres(&bin("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run(pg_ctl, "pg_ctl start");
    }

    fn stop(&self) {
        let mut pg_ctl = as_postgres(&bin("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-m", "fast", "stop"]);
        run(pg_ctl, "pg_ctl stop");
    }

    fn url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    /// A new, empty database and a client connected to it (for the tests' own SQL).
    async fn database(&self) -> (String, tokio_postgres::Client) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("grants_{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let admin = self.client("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} STRATEGY FILE_COPY"))
            .await
            .expect("creates a database");
        let url = self.url(&name);
        (url, self.client(&name).await)
    }

    async fn client(&self, database: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(database), NoTls)
            .await
            .expect("connects");
        tokio::spawn(connection);
        client
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut pg_ctl = as_postgres(&bin("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"]);
        let _ = pg_ctl.stdout(Stdio::null()).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").port()
}

/// The server the tests share (one per run of the test binary).
fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

/// A migrated store in a fresh database of the shared server, and a client for SQL.
async fn store() -> (PostgresGrantStore, tokio_postgres::Client, String) {
    let (url, sql) = shared().database().await;
    let store = PostgresGrantStore::connect(&url, key("k1", 1)).expect("a store");
    store.migrate().await.expect("migrates");
    (store, sql, url)
}

#[tokio::test]
async fn compare_and_swap_writes_only_over_the_expected_version() {
    let (store, _, _) = store().await;
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
async fn versions_are_not_reused_after_a_delete() {
    let (store, _, _) = store().await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_savers_over_one_version_exactly_one_wins() {
    let (store, _, url) = store().await;
    // Two pools: as two processes.
    let other = PostgresGrantStore::connect(&url, key("k1", 1)).unwrap();
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
async fn marking_needs_the_current_version_and_list_shows_it() {
    let (store, _, _) = store().await;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_has_one_holder_until_released_or_expired() {
    let (store, sql, url) = store().await;
    let other = PostgresGrantStore::connect(&url, key("k1", 1)).unwrap();
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
    // Expiry, on the server's clock.
    assert!(
        store
            .lease("c", "p1", Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(!store.lease("c", "p2", ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.lease("c", "p2", ttl).await.unwrap());
    // A ttl beyond the clock's range is held, not an error.
    assert!(store.lease("d", "p1", Duration::MAX).await.unwrap());
    assert!(!store.lease("d", "p2", ttl).await.unwrap());
    // The lease the app takes ends REFRESH_LEASE from now at most.
    assert!(store.lease("e", "p1", REFRESH_LEASE).await.unwrap());
    let row = sql
        .query_one(
            "SELECT extract(epoch FROM until - now())::float8 FROM understory_grant_leases WHERE key = 'e'",
            &[],
        )
        .await
        .unwrap();
    let left: f64 = row.get(0);
    assert!(
        left <= REFRESH_LEASE.as_secs_f64() && left > REFRESH_LEASE.as_secs_f64() - 5.0,
        "{left}"
    );
}

#[tokio::test]
async fn migration_is_idempotent_and_its_absence_a_permanent_error() {
    let (url, sql) = shared().database().await;
    let store = PostgresGrantStore::connect(&url, key("k1", 1)).unwrap();
    let error = store.load("a").await.expect_err("no table");
    assert!(!error.is_transient());
    assert!(error.to_string().contains("migrate()"), "{error}");
    // Processes starting together.
    let results = join_all((0..4).map(|_| {
        let store = PostgresGrantStore::connect(&url, key("k1", 1)).unwrap();
        async move { store.migrate().await }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The constant, as a migration tool runs it.
    sql.batch_execute(PostgresGrantStore::MIGRATION)
        .await
        .unwrap();
    assert!(store.load("a").await.unwrap().is_none());
}

#[tokio::test]
async fn the_database_holds_no_token_and_keys_rotate() {
    let (store, sql, url) = store().await;
    let _ = version(save(&store, "a", "ory_rt_SECRET_one", None).await);
    let dump: String = sql
        .query_one(
            "SELECT string_agg(g::text, '|') FROM understory_grants g",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !dump.contains("SECRET") && !dump.contains("Kayaks"),
        "{dump}"
    );
    assert!(dump.contains("active"), "{dump}");
    // Rotation: the new key opens the old row through previous keys, and re-seals.
    let rotated = PostgresGrantStore::connect(&url, key("k2", 2))
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
    let key_id: String = sql
        .query_one("SELECT key_id FROM understory_grants WHERE key = 'a'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(key_id, "k2");
    let retired = PostgresGrantStore::connect(&url, key("k2", 2)).unwrap();
    assert!(retired.load("a").await.unwrap().is_some());
    assert!(
        store.load("a").await.is_err(),
        "the old key alone cannot open it"
    );
    assert!(
        PostgresGrantStore::connect(&url, key("k2", 2))
            .unwrap()
            .with_previous_keys([key("k2", 3)])
            .is_err()
    );
}

#[tokio::test]
async fn bad_rows_are_refused_one_by_one() {
    let (store, sql, _) = store().await;
    for name in [
        "good",
        "tampered",
        "truncated",
        "oversized",
        "foreign",
        "unknown-key",
    ] {
        let _ = version(save(&store, name, &format!("ory_rt_SECRET_{name}"), None).await);
    }
    let damage = [
        "UPDATE understory_grants SET sealed = set_byte(sealed, 20, get_byte(sealed, 20) # 1) WHERE key = 'tampered'",
        "UPDATE understory_grants SET sealed = substring(sealed FROM 1 FOR 20) WHERE key = 'truncated'",
        "UPDATE understory_grants SET sealed = sealed || convert_to(repeat('x', 20000), 'UTF8') WHERE key = 'oversized'",
        "UPDATE understory_grants SET sealed = (SELECT sealed FROM understory_grants WHERE key = 'good') WHERE key = 'foreign'",
        "UPDATE understory_grants SET key_id = 'k9' WHERE key = 'unknown-key'",
    ];
    for statement in damage {
        assert_eq!(sql.execute(statement, &[]).await.unwrap(), 1, "{statement}");
    }
    for name in [
        "tampered",
        "truncated",
        "oversized",
        "foreign",
        "unknown-key",
    ] {
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
    // A new authorization's unconditional save replaces a refused row.
    let _ = version(save(&store, "tampered", "ory_rt_fresh", None).await);
    assert_eq!(
        token_of(&store, "tampered").await.as_deref(),
        Some("ory_rt_fresh")
    );
}

// ----- The fleet: independent apps sharing the store and one sandbox. -----

fn app(sandbox: &SandboxServer, store: &PostgresGrantStore) -> UnderstoryApp {
    sandbox
        .app_builder()
        .grant_store(store.clone())
        .build()
        .expect("app builds")
}

/// Independent instances, each with its own pool: as processes.
fn instances(sandbox: &SandboxServer, url: &str, n: usize) -> Vec<UnderstoryApp> {
    (0..n)
        .map(|_| {
            app(
                sandbox,
                &PostgresGrantStore::connect(url, key("k1", 1)).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_instances_present_each_refresh_token_once() {
    const COMPANIES: usize = 10;
    let sandbox = fleet_sandbox(COMPANIES, Duration::from_secs(3600)).await;
    let (store, _, url) = store().await;
    connect_all(&app(&sandbox, &store), &sandbox, COMPANIES).await;
    let fleet = instances(&sandbox, &url, 4);
    let mut refreshed = 0;
    let mut refused = 0;
    for _ in 0..3 {
        // Every instance refreshes every connection at once.
        let reports = join_all(fleet.iter().map(|app| app.keep_alive(Duration::ZERO))).await;
        for report in reports {
            let report = report.expect("lists");
            refreshed += report.refreshed;
            for (key, error) in &report.failed {
                assert!(error.is_transient(), "{key}: {error:?}");
                refused += 1;
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
    eprintln!("racing: {refreshed} refreshes, {refused} refused by the lease");
    // Each connection still works from a new process, with what the store holds.
    let fresh = app(&sandbox, &store);
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
async fn the_rotated_token_is_committed_before_the_access_token_is_used() {
    let sandbox = fleet_sandbox(1, Duration::from_secs(3600)).await;
    let (store, _, url) = store().await;
    connect_all(&app(&sandbox, &store), &sandbox, 1).await;
    let observer = PostgresGrantStore::connect(&url, key("k1", 1)).unwrap();
    for round in 1..=3 {
        let before = observer.load("tenant-0").await.unwrap().unwrap();
        let started = SystemTime::now() - Duration::from_millis(1);
        // A new process keeps the grant alive: it refreshes, and hands out the token
        // only once the rotated grant is committed, with the token beside it.
        let process = app(&sandbox, &store);
        let report = process.keep_alive(Duration::ZERO).await.unwrap();
        assert_eq!(report.refreshed, 1, "{report:?}");
        let token = process.connection("tenant-0").token().await.unwrap();
        let after = observer.load("tenant-0").await.unwrap().unwrap();
        assert!(after.version > before.version, "{round}");
        assert!(after.refreshed_at >= started, "{round}");
        assert_ne!(
            after.refresh_token.expose_secret(),
            before.refresh_token.expose_secret()
        );
        let shared = after.access_token.expect("the access token is stored");
        assert_eq!(token.secret(), shared.expose_secret());
        assert_eq!(sandbox.refreshes("company-0"), round);
        // Another process takes that token from the store, without a refresh.
        let other = app(&sandbox, &store)
            .connection("tenant-0")
            .token()
            .await
            .unwrap();
        assert_eq!(other.secret(), token.secret());
        assert_eq!(sandbox.refreshes("company-0"), round);
    }
    assert_eq!(sandbox.reuse_detected("company-0"), 0);
}

#[tokio::test]
async fn a_dead_lease_holder_delays_a_connection_by_its_lease_only() {
    let sandbox = fleet_sandbox(1, Duration::from_secs(3600)).await;
    let (store, _, _) = store().await;
    connect_all(&app(&sandbox, &store), &sandbox, 1).await;
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
    let version = grant.version;
    let saved = store.save("tenant-0", &grant, Some(version)).await.unwrap();
    assert!(matches!(saved, understory_auth::SaveOutcome::Saved { .. }));
    let waiting = app(&sandbox, &store);
    let auth = waiting.connection("tenant-0");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_under_load_loses_nothing() {
    const INSTANCES: usize = 4;
    const COMPANIES: usize = 100;
    const LIFETIME: Duration = Duration::from_secs(3);
    const LIFETIMES: u32 = 3;
    let sandbox = fleet_sandbox(COMPANIES, LIFETIME).await;
    let (store, _, url) = store().await;
    connect_all(&app(&sandbox, &store), &sandbox, COMPANIES).await;
    let fleet = instances(&sandbox, &url, INSTANCES);
    let started = Instant::now();
    let errors = AtomicUsize::new(0);
    let requests = AtomicUsize::new(0);
    let lost = AtomicUsize::new(0);
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
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
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
    let needing = store
        .list()
        .await
        .unwrap()
        .iter()
        .filter(|summary| summary.state != GrantState::Active)
        .count();
    // The fleet shares each connection's access token through the store: one refresh per
    // connection each time its token comes due. A 3 s token is due 1.35 s after it was
    // obtained at the latest (crate docs, Cache behaviour: 5 % skew, then a margin of half
    // the lifetime), so the minimum is one refresh per connection per 1.35 s.
    let minimum = COMPANIES * (elapsed.as_secs_f64() / 1.35).ceil() as usize;
    let bound = minimum + minimum / 10;
    eprintln!(
        "load: {INSTANCES} instances x {COMPANIES} connections, {LIFETIME:?} tokens, {elapsed:?}: \
         {} requests, {refreshes} refreshes (minimum {minimum}, bound {bound}; one per connection and lifetime would be {}), \
         {} transient errors, {} lost, {reuse} reuse",
        requests.load(Ordering::Relaxed),
        COMPANIES * (elapsed.as_secs_f64() / LIFETIME.as_secs_f64()).ceil() as usize,
        errors.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
    );
    assert_eq!((lost.load(Ordering::Relaxed), needing, reuse), (0, 0, 0));
    assert!(refreshes <= bound, "{refreshes} > {bound}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_cached_tokens_work_and_refreshes_wait() {
    let server = PgServer::start();
    let (url, _) = server.database().await;
    let store = PostgresGrantStore::connect(&url, key("k1", 1)).unwrap();
    store.migrate().await.unwrap();
    let sandbox = fleet_sandbox(2, Duration::from_secs(3600)).await;
    let app = app(&sandbox, &store);
    connect_all(&app, &sandbox, 2).await;
    let cached = app.connection("tenant-0").token().await.unwrap();

    server.stop();
    let again = app
        .connection("tenant-0")
        .token()
        .await
        .expect("cached: no store needed");
    assert_eq!(again.secret(), cached.secret());
    // Another process has no token in memory: its refresh needs the store.
    let other = self::app(&sandbox, &store);
    let error = other
        .connection("tenant-1")
        .token()
        .await
        .expect_err("the store is down");
    assert!(error.is_transient(), "{error:?}");
    assert!(error.to_string().contains("grant store"), "{error}");
    assert_eq!(
        sandbox.refreshes("company-1"),
        0,
        "no refresh without the store"
    );

    server.resume();
    let recovered = self::app(&sandbox, &store);
    recovered
        .connection("tenant-1")
        .token()
        .await
        .expect("recovered: the stored token");
    let report = recovered.keep_alive(Duration::ZERO).await.unwrap();
    assert_eq!(report.refreshed, 2, "{report:?}");
    assert_eq!(
        (
            sandbox.refreshes("company-1"),
            sandbox.reuse_detected("company-1")
        ),
        (1, 0)
    );
}

#[tokio::test]
async fn a_refused_row_fails_its_connection_only() {
    let sandbox = fleet_sandbox(2, Duration::from_secs(3600)).await;
    let (store, sql, _) = store().await;
    connect_all(&app(&sandbox, &store), &sandbox, 2).await;
    sql.execute(
        "UPDATE understory_grants SET sealed = set_byte(sealed, 30, get_byte(sealed, 30) # 1) WHERE key = 'tenant-0'",
        &[],
    )
    .await
    .unwrap();
    let fresh = app(&sandbox, &store);
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

/// What the store adds to a refresh: the same 50 refreshes with the memory store and with
/// PostgreSQL (lease, load, save, release: four round trips). Printed, not asserted: tests
/// assert counts.
#[tokio::test]
async fn the_added_latency_of_a_refresh_is_measured() {
    const ROUNDS: usize = 50;
    let sandbox = fleet_sandbox(1, Duration::from_secs(3600)).await;
    let (store, _, _) = store().await;
    let memory = understory_auth::MemoryGrantStore::new();
    let mut took = Vec::new();
    for (name, app) in [
        (
            "memory",
            sandbox.app_builder().grant_store(memory).build().unwrap(),
        ),
        ("postgres", app(&sandbox, &store)),
    ] {
        connect_all(&app, &sandbox, 1).await;
        let before = sandbox.refreshes("company-0");
        let started = Instant::now();
        for _ in 0..ROUNDS {
            let report = app.keep_alive(Duration::ZERO).await.unwrap();
            assert_eq!(
                (report.refreshed, report.failed.len()),
                (1, 0),
                "{report:?}"
            );
        }
        took.push((name, started.elapsed() / ROUNDS as u32));
        assert_eq!(sandbox.refreshes("company-0"), before + ROUNDS);
    }
    eprintln!("a refresh (keep_alive of one connection): {took:?}");
    assert_eq!(sandbox.reuse_detected("company-0"), 0);
}

/// Property 4: a process that dies after Understory rotated the refresh token and before the
/// store committed it loses that one grant. Here the commit is undone by hand: the row goes
/// back to the rotated-away token (without a shared access token). The next process presents
/// it once, Understory detects the reuse, and the connection reports re-authorisation: no
/// loop of failing refreshes, the other connections untouched.
#[tokio::test]
async fn a_crash_between_rotation_and_commit_costs_one_reauthorisation_not_a_loop() {
    let sandbox = fleet_sandbox(2, Duration::from_secs(3600)).await;
    let (store, _, _) = store().await;
    connect_all(&app(&sandbox, &store), &sandbox, 2).await;
    let before = store.load("tenant-0").await.unwrap().unwrap();
    let rotated = app(&sandbox, &store);
    assert_eq!(
        rotated.keep_alive(Duration::ZERO).await.unwrap().refreshed,
        2
    );
    // "The commit never happened": the store still holds the token the server rotated away.
    let now = store.load("tenant-0").await.unwrap().unwrap();
    let mut stale = before.clone();
    stale.access_token = None;
    let saved = store
        .save("tenant-0", &stale, Some(now.version))
        .await
        .unwrap();
    assert!(matches!(saved, understory_auth::SaveOutcome::Saved { .. }));

    let next = app(&sandbox, &store);
    let error = next.connection("tenant-0").token().await.unwrap_err();
    assert!(
        matches!(error, Error::NeedsReauthorization { .. }),
        "{error:?}"
    );
    assert_eq!(sandbox.reuse_detected("company-0"), 1);
    let requests = sandbox.token_requests();
    for _ in 0..10 {
        let again = app(&sandbox, &store).connection("tenant-0").token().await;
        assert!(matches!(again, Err(Error::NeedsReauthorization { .. })));
    }
    assert_eq!(
        sandbox.token_requests(),
        requests,
        "no further refresh is tried"
    );
    let grant = store.load("tenant-0").await.unwrap().unwrap();
    assert_eq!(grant.state, GrantState::NeedsReauthorization);
    next.connection("tenant-1")
        .token()
        .await
        .expect("the other connection works");
    assert_eq!(sandbox.reuse_detected("company-1"), 0);
}
