//! [`PostgresGrantStore`]: grants in PostgreSQL, every refresh token encrypted under the
//! user's [`GrantKey`], with versions from a sequence and leases in their own table.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};

use super::grant_cipher::{GrantCipher, GrantKey, Refusal};
use super::grant_store::{GrantStore, GrantSummary, SaveOutcome};
use super::grant_store_error::GrantStoreError;
use super::stored_grant::StoredGrant;
use crate::Error;

/// How long one store operation may take, from taking a connection from the pool to the
/// query's answer; a slower one fails as transient (the connection's refresh is tried again
/// later, its refresh token kept).
///
/// ```
/// assert_eq!(understory_auth::POSTGRES_QUERY_TIMEOUT, std::time::Duration::from_secs(5));
/// ```
pub const POSTGRES_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The connections [`PostgresGrantStore::connect`] opens at most.
const CONNECT_POOL_SIZE: usize = 16;

/// The longest lease taken: a `ttl` beyond it (up to `Duration::MAX`) is cut to it.
const MAX_LEASE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A key for `pg_advisory_xact_lock`, so that processes starting together migrate one at a
/// time (`CREATE TABLE IF NOT EXISTS` races otherwise).
const MIGRATION_LOCK: i64 = 0x756e_6465_7273_7479; // "understy"

/// A [`GrantStore`] in PostgreSQL (feature `postgres`), for apps that run several processes
/// or restart without asking every company to consent again.
///
/// # Tables
///
/// [`MIGRATION`](Self::MIGRATION) creates them (run it with your migration tool, or call
/// [`migrate`](Self::migrate) at start-up):
///
/// * `understory_grants`: one row per connection: `key`, `version` (from the sequence
///   `understory_grant_versions`, so a version is never reused, even after a delete),
///   `state` and `refreshed_at` (in the clear, for your own queries: `WHERE state =
///   'needs_reauthorization'`), `key_id` and `sealed`: the refresh token, company, scopes,
///   state and `refreshed_at`, sealed with ChaCha20-Poly1305 under the [`GrantKey`] named
///   by `key_id`, bound to the row's `key`. The store reads only the sealed copy.
/// * `understory_grant_leases`: who refreshes which connection, until when (the server's
///   clock decides, so the processes' clocks need not agree).
///
/// # Keys and their rotation
///
/// New grants are sealed under the current key; grants sealed under a key given to
/// [`with_previous_keys`](Self::with_previous_keys) still open, and are sealed under the
/// current key at their next refresh. Retire an old key once no row names it
/// (`SELECT count(*) FROM understory_grants WHERE key_id = 'old'`; a
/// [`keep_alive`](crate::UnderstoryApp::keep_alive) run with a short `older_than`
/// re-seals every active grant).
///
/// # Rows it refuses
///
/// A row that is tampered with, truncated, larger than any grant the crate seals, copied
/// from another connection's row, or sealed under a key id the store was not given is not
/// decrypted further nor used: [`load`](GrantStore::load) fails with a
/// [permanent](GrantStoreError::permanent) error for that connection alone (a missing key
/// is a configuration to fix, not a lost grant; completing a new authorization replaces the
/// row), [`list`](GrantStore::list) skips it, and a warning is logged at most once a minute
/// per store (the others at debug level).
///
/// # Connections, timeouts and TLS
///
/// [`new`](Self::new) takes the app's own `deadpool_postgres::Pool` (built with the
/// re-exported [`deadpool_postgres`](crate::deadpool_postgres), and the TLS connector the
/// app uses for its database: `tokio-postgres-rustls` or `postgres-native-tls`).
/// [`connect`](Self::connect) builds a pool without TLS, for a database on the same host or
/// a private network. Refresh tokens are encrypted before they leave the process, so a
/// connection without TLS shows an eavesdropper connection keys, states and times, never a
/// token (but the database password, with `password` authentication: prefer SCRAM). Every
/// operation, waiting for a pooled connection included, is bounded by
/// [`POSTGRES_QUERY_TIMEOUT`]; errors are [transient](GrantStoreError::is_transient) when
/// the database is unreachable, slow, shutting down or overloaded, permanent when it refuses
/// the credentials or lacks the tables.
///
/// ```no_run
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use understory_auth::{Credentials, GrantKey, PostgresGrantStore, UnderstoryApp};
///
/// let key = GrantKey::from_base64("2026-01", &std::env::var("GRANT_KEY")?)?;
/// let store = PostgresGrantStore::connect("postgres://app@localhost/app", key)?;
/// store.migrate().await?;
///
/// let credentials = Credentials::new("app-id", "app-secret").with_scopes(["openid", "offline"]);
/// let app = UnderstoryApp::builder(credentials)
///     .redirect_uri("https://example.com/oauth/callback")
///     .grant_store(store)
///     .build()?;
/// # let _ = app;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct PostgresGrantStore {
    pool: Pool,
    cipher: Arc<GrantCipher>,
}

impl PostgresGrantStore {
    /// The tables, sequence and index the store needs, as SQL that can run any number of
    /// times (`IF NOT EXISTS`): give it to your migration tool, or call
    /// [`migrate`](Self::migrate).
    ///
    /// ```
    /// let sql = understory_auth::PostgresGrantStore::MIGRATION;
    /// assert!(sql.contains("CREATE TABLE IF NOT EXISTS understory_grants"));
    /// ```
    pub const MIGRATION: &'static str = "\
CREATE SEQUENCE IF NOT EXISTS understory_grant_versions AS bigint;
CREATE TABLE IF NOT EXISTS understory_grants (
    key text PRIMARY KEY,
    version bigint NOT NULL,
    state text NOT NULL,
    refreshed_at timestamptz NOT NULL,
    key_id text NOT NULL,
    sealed bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS understory_grant_leases (
    key text PRIMARY KEY,
    holder text NOT NULL,
    until timestamptz NOT NULL
);
";

    /// A store over the app's `pool`, sealing grants under `key`.
    ///
    /// ```no_run
    /// use understory_auth::deadpool_postgres::{Config, Runtime};
    /// use understory_auth::deadpool_postgres::tokio_postgres::NoTls;
    /// use understory_auth::{GrantKey, PostgresGrantStore};
    ///
    /// let mut config = Config::new();
    /// config.url = Some("postgres://app@localhost/app".to_owned());
    /// let pool = config.create_pool(Some(Runtime::Tokio1), NoTls)?;
    /// let store = PostgresGrantStore::new(pool, GrantKey::new("k1", [7; 32])?);
    /// # let _ = store;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(pool: Pool, key: GrantKey) -> Self {
        PostgresGrantStore::build(pool, &key, &[])
            .unwrap_or_else(|_| unreachable!("one key cannot share its id with another"))
    }

    fn build(pool: Pool, key: &GrantKey, previous: &[GrantKey]) -> Result<Self, Error> {
        Ok(PostgresGrantStore {
            pool,
            cipher: Arc::new(GrantCipher::new(key, previous)?),
        })
    }

    /// A store with its own pool of up to 16 connections to `url`
    /// (`postgres://user:password@host:port/database`, or libpq's `key=value` form), without
    /// TLS: see [Connections, timeouts and TLS](Self#connections-timeouts-and-tls).
    /// Connects lazily: a wrong address fails the first operation, not this call.
    ///
    /// ```no_run
    /// use understory_auth::{GrantKey, PostgresGrantStore};
    /// let key = GrantKey::new("k1", [7; 32])?; // use random bytes
    /// let store = PostgresGrantStore::connect("host=/run/postgresql dbname=app", key)?;
    /// # let _ = store;
    /// # Ok::<(), understory_auth::Error>(())
    /// ```
    pub fn connect(url: &str, key: GrantKey) -> Result<Self, Error> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|_| Error::config("the PostgreSQL connection string is not valid"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POSTGRES_QUERY_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(CONNECT_POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(POSTGRES_QUERY_TIMEOUT))
            .build()
            .map_err(|_| Error::config("cannot build the PostgreSQL connection pool"))?;
        Ok(PostgresGrantStore::new(pool, key))
    }

    /// This store, also opening grants sealed under `keys` (keys being rotated out). Fails
    /// if two keys share an id.
    ///
    /// ```no_run
    /// use understory_auth::{GrantKey, PostgresGrantStore};
    /// let current = GrantKey::new("2026", [2; 32])?;
    /// let old = GrantKey::new("2025", [1; 32])?;
    /// let store = PostgresGrantStore::connect("postgres://app@localhost/app", current)?
    ///     .with_previous_keys([old])?;
    /// # let _ = store;
    /// # Ok::<(), understory_auth::Error>(())
    /// ```
    pub fn with_previous_keys(
        self,
        keys: impl IntoIterator<Item = GrantKey>,
    ) -> Result<Self, Error> {
        let previous: Vec<GrantKey> = keys.into_iter().collect();
        PostgresGrantStore::build(self.pool, self.cipher.current_key(), &previous)
    }

    /// Runs [`MIGRATION`](Self::MIGRATION) in one transaction, one process at a time (an
    /// advisory lock): safe to call at every start-up of every process.
    ///
    /// ```no_run
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use understory_auth::{GrantKey, PostgresGrantStore};
    /// let store = PostgresGrantStore::connect("postgres://app@localhost/app", GrantKey::new("k1", [7; 32])?)?;
    /// store.migrate().await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn migrate(&self) -> Result<(), GrantStoreError> {
        self.run("migrate the grant tables", |mut client| async move {
            let transaction = client.transaction().await?;
            transaction
                .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            transaction.batch_execute(Self::MIGRATION).await?;
            transaction.commit().await
        })
        .await
    }

    /// `operation` on a pooled connection, within [`POSTGRES_QUERY_TIMEOUT`].
    async fn run<T, F, Fut>(&self, what: &str, operation: F) -> Result<T, GrantStoreError>
    where
        F: FnOnce(Object) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let attempt = async {
            let client = self.pool.get().await.map_err(|e| pool_error(what, e))?;
            operation(client).await.map_err(|e| postgres_error(what, e))
        };
        match tokio::time::timeout(POSTGRES_QUERY_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(GrantStoreError::transient(format!(
                "cannot {what}: PostgreSQL did not answer within {POSTGRES_QUERY_TIMEOUT:?}"
            ))),
        }
    }

    /// The grant in `row` (`version`, `key_id`, `sealed`) of connection `key`.
    fn open(&self, key: &str, row: &Row) -> Result<StoredGrant, Refusal> {
        let version: i64 = row.try_get("version").map_err(|_| Refusal::Invalid)?;
        let key_id: &str = row.try_get("key_id").map_err(|_| Refusal::Invalid)?;
        let sealed: &[u8] = row.try_get("sealed").map_err(|_| Refusal::Invalid)?;
        let version = u64::try_from(version).map_err(|_| Refusal::Invalid)?;
        let opened = self.cipher.open(key, key_id, sealed, version);
        if let Err(refusal) = opened {
            self.cipher.warn_refused(key, refusal);
        }
        opened
    }
}

#[async_trait]
impl GrantStore for PostgresGrantStore {
    async fn load(&self, key: &str) -> Result<Option<StoredGrant>, GrantStoreError> {
        let row = self
            .run("load a grant", |client| async move {
                let statement = client
                    .prepare_cached(
                        "SELECT version, key_id, sealed FROM understory_grants WHERE key = $1",
                    )
                    .await?;
                client.query_opt(&statement, &[&key]).await
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        self.open(key, &row).map(Some).map_err(|refusal| {
            GrantStoreError::permanent(format!(
                "the stored grant of connection {key:?} was refused: {}",
                refusal.describe()
            ))
        })
    }

    async fn save(
        &self,
        key: &str,
        grant: &StoredGrant,
        expected_version: Option<u64>,
    ) -> Result<SaveOutcome, GrantStoreError> {
        let sealed = self.cipher.seal(key, grant)?;
        let state = grant.state.as_str();
        let refreshed_at = grant.refreshed_at;
        let expected = match expected_version.map(i64::try_from) {
            None => None,
            Some(Ok(version)) => Some(version),
            // No row holds a version beyond the sequence's range.
            Some(Err(_)) => return Ok(SaveOutcome::Conflict),
        };
        let (key_id, bytes) = (sealed.key_id.as_str(), sealed.bytes.as_slice());
        let row = self
            .run("save a grant", |client| async move {
                match expected {
                    None => {
                        let statement = client
                            .prepare_cached(
                                "INSERT INTO understory_grants \
                                 (key, version, state, refreshed_at, key_id, sealed) \
                                 VALUES ($1, nextval('understory_grant_versions'), $2, $3, $4, $5) \
                                 ON CONFLICT (key) DO UPDATE SET version = EXCLUDED.version, \
                                 state = EXCLUDED.state, refreshed_at = EXCLUDED.refreshed_at, \
                                 key_id = EXCLUDED.key_id, sealed = EXCLUDED.sealed \
                                 RETURNING version",
                            )
                            .await?;
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                            [&key, &state, &refreshed_at, &key_id, &bytes];
                        client.query_opt(&statement, &params).await
                    }
                    Some(version) => {
                        let statement = client
                            .prepare_cached(
                                "UPDATE understory_grants SET \
                                 version = nextval('understory_grant_versions'), state = $3, \
                                 refreshed_at = $4, key_id = $5, sealed = $6 \
                                 WHERE key = $1 AND version = $2 RETURNING version",
                            )
                            .await?;
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
                            [&key, &version, &state, &refreshed_at, &key_id, &bytes];
                        client.query_opt(&statement, &params).await
                    }
                }
            })
            .await?;
        let Some(row) = row else {
            return Ok(SaveOutcome::Conflict);
        };
        let version = row
            .try_get::<_, i64>("version")
            .ok()
            .and_then(|version| u64::try_from(version).ok())
            .ok_or_else(|| {
                GrantStoreError::permanent("the grant table's version column is not a bigint")
            })?;
        Ok(SaveOutcome::Saved { version })
    }

    async fn delete(&self, key: &str) -> Result<bool, GrantStoreError> {
        let deleted = self
            .run("delete a grant", |client| async move {
                let statement = client
                    .prepare_cached("DELETE FROM understory_grants WHERE key = $1")
                    .await?;
                client.execute(&statement, &[&key]).await
            })
            .await?;
        Ok(deleted > 0)
    }

    async fn list(&self) -> Result<Vec<GrantSummary>, GrantStoreError> {
        let rows = self
            .run("list the grants", |client| async move {
                let statement = client
                    .prepare_cached("SELECT key, version, key_id, sealed FROM understory_grants")
                    .await?;
                client.query(&statement, &[]).await
            })
            .await?;
        let summary = |row: &Row| {
            let key: String = row.try_get("key").ok()?;
            let grant = self.open(&key, row).ok()?;
            Some(GrantSummary::new(key, grant.refreshed_at, grant.state))
        };
        Ok(rows.iter().filter_map(summary).collect())
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, GrantStoreError> {
        let ttl_ms = i64::try_from(ttl.min(MAX_LEASE).as_millis()).unwrap_or(i64::MAX);
        let row = self
            .run("take a refresh lease", |client| async move {
                let statement = client
                    .prepare_cached(
                        "INSERT INTO understory_grant_leases AS lease (key, holder, until) \
                         VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond') \
                         ON CONFLICT (key) DO UPDATE \
                         SET holder = EXCLUDED.holder, until = EXCLUDED.until \
                         WHERE lease.until <= now() OR lease.holder = EXCLUDED.holder \
                         RETURNING holder",
                    )
                    .await?;
                client
                    .query_opt(&statement, &[&key, &holder, &ttl_ms])
                    .await
            })
            .await?;
        Ok(row.is_some())
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), GrantStoreError> {
        self.run("release a refresh lease", |client| async move {
            let statement = client
                .prepare_cached(
                    "DELETE FROM understory_grant_leases WHERE key = $1 AND holder = $2",
                )
                .await?;
            client.execute(&statement, &[&key, &holder]).await
        })
        .await
        .map(|_| ())
    }
}

/// A failure to get a pooled connection.
fn pool_error(what: &str, error: PoolError) -> GrantStoreError {
    match error {
        PoolError::Backend(error) => postgres_error(what, error),
        PoolError::Timeout(_) => GrantStoreError::transient(format!(
            "cannot {what}: no PostgreSQL connection became free in time"
        )),
        PoolError::Closed => {
            GrantStoreError::permanent(format!("cannot {what}: the connection pool is closed"))
        }
        other => GrantStoreError::transient(format!("cannot {what}: {other}")),
    }
}

/// A PostgreSQL error: transient unless the server refuses what it was asked (no table, no
/// permission, wrong credentials).
fn postgres_error(what: &str, error: tokio_postgres::Error) -> GrantStoreError {
    let Some(code) = error.code() else {
        // No answer from the server (unreachable, reset, closed) or none to read.
        return GrantStoreError::transient(format!("cannot {what}")).with_cause(error);
    };
    let class = code.code().get(..2).unwrap_or_default();
    if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::UNDEFINED_OBJECT {
        return GrantStoreError::permanent(format!(
            "cannot {what}: the grant tables are missing; run PostgresGrantStore::MIGRATION or migrate()"
        ))
        .with_cause(error);
    }
    // Connection exceptions, transaction rollbacks (serialization, deadlock), insufficient
    // resources, operator intervention (shutdown), system errors.
    if matches!(class, "08" | "40" | "53" | "57" | "58") {
        return GrantStoreError::transient(format!("cannot {what}")).with_cause(error);
    }
    GrantStoreError::permanent(format!("cannot {what}: PostgreSQL refused it")).with_cause(error)
}

impl fmt::Debug for PostgresGrantStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresGrantStore")
            .field("keys", &self.cipher)
            .field("connections", &status.size)
            .finish_non_exhaustive()
    }
}
