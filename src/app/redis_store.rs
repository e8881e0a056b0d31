//! [`RedisGrantStore`]: grants in Redis, every refresh token encrypted under the user's
//! [`GrantKey`], with versions from a counter that is never deleted and leases as
//! `SET NX PX` keys.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::{Client, Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind, cmd};
use async_trait::async_trait;
use futures_util::future::join_all;

use super::grant_cipher::{GrantCipher, GrantKey, MAX_SEALED_BYTES, Refusal};
use super::grant_store::{GrantStore, GrantSummary, SaveOutcome};
use super::grant_store_error::GrantStoreError;
use super::stored_grant::StoredGrant;
use crate::Error;
use crate::redis_connection::{LazyRedis, MAX_REPLY_BYTES, delete_if_holds, eval, px, set_px};

/// How long one store operation may take, connecting included; a slower one fails as
/// transient (the connection's refresh is tried again later, its refresh token kept).
/// [`list`](GrantStore::list) is bounded by it per step: each `SCAN` page, each grant read.
///
/// ```
/// assert_eq!(understory_auth::REDIS_GRANT_TIMEOUT, std::time::Duration::from_secs(5));
/// ```
pub const REDIS_GRANT_TIMEOUT: Duration = Duration::from_secs(5);

/// What every grant's key starts with; the connection's key follows.
const GRANT_PREFIX: &str = "understory-auth:grant:v1:";
/// What every lease's key starts with; the connection's key follows.
const LEASE_PREFIX: &str = "understory-auth:grant-lease:v1:";
/// The counter every version is taken from; never deleted by the store.
const VERSION_COUNTER: &str = "understory-auth:grant-versions:v1";
/// The `COUNT` hint of each `SCAN` in [`GrantStore::list`].
const SCAN_COUNT: usize = 100;
/// The longest lease taken: a `ttl` beyond it (up to `Duration::MAX`) is cut to it.
const MAX_LEASE: Duration = Duration::from_secs(100 * 365 * 86_400);
/// The longest `key_id` and `version` fields read (longer ones are refused unread).
const MAX_FIELD_BYTES: usize = 64;

// A grant's reply must fit in what the connection accepts.
const _: () = assert!(MAX_SEALED_BYTES + 2 * MAX_FIELD_BYTES + 64 <= MAX_REPLY_BYTES);

/// A grant's fields, `{"ok", version, key_id, sealed}`, or nil when there is none; a
/// sealed field longer than `ARGV[1]` is `{"oversized"}` and anything else that is not
/// a grant this store wrote `{"invalid"}`, neither read.
const LOAD_SCRIPT: &str = r#"
local kind = redis.call("TYPE", KEYS[1])["ok"]
if kind == "none" then return false end
if kind ~= "hash" then return {"invalid"} end
if redis.call("HSTRLEN", KEYS[1], "sealed") > tonumber(ARGV[1]) then return {"oversized"} end
if redis.call("HSTRLEN", KEYS[1], "key_id") > tonumber(ARGV[2])
  or redis.call("HSTRLEN", KEYS[1], "version") > tonumber(ARGV[2]) then
  return {"invalid"}
end
local f = redis.call("HMGET", KEYS[1], "version", "key_id", "sealed")
if not f[1] or not f[2] or not f[3] then return {"invalid"} end
return {"ok", f[1], f[2], f[3]}
"#;

/// Writes the grant `KEYS[1]` if its version is `ARGV[1]` (or unconditionally if `ARGV[1]`
/// is empty), at a new version from the counter `KEYS[2]`, and answers it (nil: not
/// written). The counter is seeded, when missing, with the server's clock in microseconds
/// and kept above the grant's own version, so a lost counter does not hand out old
/// versions again.
const SAVE_SCRIPT: &str = r#"
local current = false
if redis.call("TYPE", KEYS[1])["ok"] == "hash" then
  current = redis.call("HGET", KEYS[1], "version")
end
if ARGV[1] ~= "" and current ~= ARGV[1] then return false end
if redis.call("EXISTS", KEYS[2]) == 0 then
  local now = redis.call("TIME")
  redis.call("SET", KEYS[2], now[1] .. string.format("%06d", now[2]))
end
local version = redis.call("INCR", KEYS[2])
if current and string.match(current, "^%d+$") and #current <= 15
  and version <= tonumber(current) then
  redis.call("SET", KEYS[2], current)
  redis.call("INCR", KEYS[2])
end
version = redis.call("GET", KEYS[2])
redis.call("DEL", KEYS[1])
redis.call("HSET", KEYS[1], "version", version, "state", ARGV[2], "refreshed_at", ARGV[3],
  "key_id", ARGV[4], "sealed", ARGV[5])
return version
"#;

/// Extends the lease `KEYS[1]` by `ARGV[2]` ms if `ARGV[1]` holds it; answers 1 if so.
const EXTEND_SCRIPT: &str = r#"
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("PEXPIRE", KEYS[1], ARGV[2])
return 1
"#;

/// A [`GrantStore`] in Redis (features `redis` and `app`), for apps that already run Redis
/// and accept its durability.
///
/// # Durability: read this first
///
/// Redis keeps the only copy of every company's refresh token. **A grant evicted under
/// memory pressure, or lost with an instance that had no persistence, costs that company's
/// consent**: it must click "connect" again, and there is no way to get the token back.
/// Run it with `maxmemory-policy noeviction` (a full Redis then fails writes, as
/// transient errors, instead of dropping grants) and with AOF persistence (`appendonly
/// yes`, `appendfsync everysec` or `always`), and replicate it if the instance may be lost.
/// Pick [`PostgresGrantStore`](crate::PostgresGrantStore) (feature `postgres`) when you have
/// a database: transactions, backups and point-in-time recovery come with it. Pick this
/// store when Redis is what the deployment already runs and operates durably.
///
/// # Keys
///
/// * `understory-auth:grant:v1:<connection>`: a hash with `version`, `state` and
///   `refreshed_at` (Unix milliseconds; in the clear, for your own tools), `key_id` and
///   `sealed`: the refresh token, company, scopes, state and `refreshed_at`, sealed with
///   ChaCha20-Poly1305 under the [`GrantKey`] named by `key_id`, bound to the connection's
///   key. The store reads only the sealed copy.
/// * `understory-auth:grant-versions:v1`: the counter every version comes from, never
///   deleted by the store, so a version is not reused after a delete (seeded with the
///   server's clock in microseconds, and kept above each grant's version, should it be lost).
/// * `understory-auth:grant-lease:v1:<connection>`: who refreshes which connection, until
///   its `PX` runs out (Redis's clock decides, so the processes' clocks need not agree).
///
/// Writes are Lua scripts (`EVAL`), each atomic. For a Redis ACL: `~understory-auth:*`, with
/// `EVAL`, `SET`, `DEL`, `SCAN`, and within scripts `TYPE`, `HSTRLEN`, `HMGET`, `HGET`,
/// `HSET`, `EXISTS`, `TIME`, `INCR`, `GET` and `PEXPIRE`. Redis Cluster is not supported (a
/// save touches a grant and the counter).
///
/// # Keys and their rotation
///
/// New grants are sealed under the current key; grants sealed under a key given to
/// [`with_previous_keys`](Self::with_previous_keys) still open, and are sealed under the
/// current key at their next refresh. Retire an old key once no grant names it (a
/// [`keep_alive`](crate::UnderstoryApp::keep_alive) run with a short `older_than` re-seals
/// every active grant).
///
/// # Grants it refuses
///
/// A grant that is tampered with, truncated, larger than any grant the crate seals, copied
/// from another connection's key, not a hash, or sealed under a key id the store was not
/// given is not decrypted further nor used: [`load`](GrantStore::load) fails with a
/// [permanent](GrantStoreError::permanent) error for that connection alone (completing a
/// new authorization replaces it), [`list`](GrantStore::list) skips it, and a warning is
/// logged at most once a minute per store (the others at debug level).
///
/// # Connection, timeouts and TLS
///
/// Connects on first use (TLS for `rediss://`, the certificate always verified against
/// Mozilla's roots), reconnects after a failure; clones share one connection. Refresh tokens
/// are encrypted before they leave the process, so a connection without TLS shows an
/// eavesdropper connection keys, states and times, never a token (but Redis's password: use
/// `rediss://` across a network you do not trust). Every operation is bounded by
/// [`REDIS_GRANT_TIMEOUT`]; errors are [transient](GrantStoreError::is_transient) when Redis
/// is unreachable, slow, loading, read-only or out of memory, permanent when it refuses the
/// credentials or the commands.
///
/// ```no_run
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use understory_auth::{Credentials, GrantKey, RedisGrantStore, UnderstoryApp};
///
/// let key = GrantKey::from_base64("2026-01", &std::env::var("GRANT_KEY")?)?;
/// let store = RedisGrantStore::new("rediss://:password@redis.internal:6380/0", key)?;
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
pub struct RedisGrantStore {
    redis: LazyRedis,
    cipher: Arc<GrantCipher>,
}

impl RedisGrantStore {
    /// A store on `redis://[[user]:password@]host[:port][/db]`, `rediss://…` or
    /// `redis+unix:///path`, sealing grants under `key`. Connects on first use; fails only on
    /// an unparsable URL (never shown in the error).
    ///
    /// ```
    /// use understory_auth::{GrantKey, RedisGrantStore};
    /// let key = GrantKey::new("k1", [7; 32])?; // use random bytes
    /// let store = RedisGrantStore::new("redis://:hunter2@127.0.0.1:6379/0", key.clone())?;
    /// assert!(!format!("{store:?}").contains("hunter2"));
    /// assert!(RedisGrantStore::new("not a url", key).is_err());
    /// # Ok::<(), understory_auth::Error>(())
    /// ```
    pub fn new(url: &str, key: GrantKey) -> Result<Self, Error> {
        let client = Client::open(url).map_err(|_| Error::config("the Redis URL is not valid"))?;
        let redis = LazyRedis::new(client, None, REDIS_GRANT_TIMEOUT);
        RedisGrantStore::build(redis, &key, &[])
    }

    fn build(redis: LazyRedis, key: &GrantKey, previous: &[GrantKey]) -> Result<Self, Error> {
        Ok(RedisGrantStore {
            redis,
            cipher: Arc::new(GrantCipher::new(key, previous)?),
        })
    }

    /// This store, also opening grants sealed under `keys` (keys being rotated out). Fails
    /// if two keys share an id.
    ///
    /// ```
    /// use understory_auth::{GrantKey, RedisGrantStore};
    /// let current = GrantKey::new("2026", [2; 32])?;
    /// let old = GrantKey::new("2025", [1; 32])?;
    /// let store = RedisGrantStore::new("redis://127.0.0.1/", current)?
    ///     .with_previous_keys([old])?;
    /// # let _ = store;
    /// # Ok::<(), understory_auth::Error>(())
    /// ```
    pub fn with_previous_keys(
        self,
        keys: impl IntoIterator<Item = GrantKey>,
    ) -> Result<Self, Error> {
        let previous: Vec<GrantKey> = keys.into_iter().collect();
        RedisGrantStore::build(self.redis, self.cipher.current_key(), &previous)
    }

    /// `command`, once more on a new connection if the first was lost, within
    /// [`REDIS_GRANT_TIMEOUT`].
    async fn query<T: FromRedisValue>(
        &self,
        what: &str,
        command: &Cmd,
    ) -> Result<T, GrantStoreError> {
        bounded(what, async {
            match self.redis.query(command).await {
                Err(e) if e.is_io_error() || e.is_unrecoverable_error() => {
                    self.redis.query(command).await
                }
                result => result,
            }
            .map_err(|e| redis_error(what, e))
        })
        .await
    }

    /// The grant of connection `key`, `None` if there is none.
    async fn open(&self, key: &str) -> Result<Option<StoredGrant>, GrantStoreError> {
        let command = eval(LOAD_SCRIPT, &grant_key(key))
            .arg(MAX_SEALED_BYTES)
            .arg(MAX_FIELD_BYTES)
            .take();
        let Some(fields) = self
            .query::<Option<Vec<Vec<u8>>>>("load a grant", &command)
            .await?
        else {
            return Ok(None);
        };
        let opened = match fields.as_slice() {
            [ok, version, key_id, sealed] if ok.as_slice() == b"ok" => {
                let version = std::str::from_utf8(version)
                    .ok()
                    .and_then(|version| version.parse::<u64>().ok());
                match (version, std::str::from_utf8(key_id)) {
                    (Some(version), Ok(key_id)) => self.cipher.open(key, key_id, sealed, version),
                    _ => Err(Refusal::Invalid),
                }
            }
            [oversized] if oversized.as_slice() == b"oversized" => Err(Refusal::Oversized),
            _ => Err(Refusal::Invalid),
        };
        match opened {
            Ok(grant) => Ok(Some(grant)),
            Err(refusal) => {
                self.cipher.warn_refused(key, refusal);
                Err(GrantStoreError::permanent(format!(
                    "the stored grant of connection {key:?} was refused: {}",
                    refusal.describe()
                )))
            }
        }
    }
}

/// `operation` within [`REDIS_GRANT_TIMEOUT`].
async fn bounded<T>(
    what: &str,
    operation: impl Future<Output = Result<T, GrantStoreError>>,
) -> Result<T, GrantStoreError> {
    tokio::time::timeout(REDIS_GRANT_TIMEOUT, operation)
        .await
        .unwrap_or_else(|_| {
            Err(GrantStoreError::transient(format!(
                "cannot {what}: Redis did not answer within {REDIS_GRANT_TIMEOUT:?}"
            )))
        })
}

fn grant_key(key: &str) -> String {
    format!("{GRANT_PREFIX}{key}")
}

fn lease_key(key: &str) -> String {
    format!("{LEASE_PREFIX}{key}")
}

fn unix_ms(at: SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl GrantStore for RedisGrantStore {
    async fn load(&self, key: &str) -> Result<Option<StoredGrant>, GrantStoreError> {
        self.open(key).await
    }

    async fn save(
        &self,
        key: &str,
        grant: &StoredGrant,
        expected_version: Option<u64>,
    ) -> Result<SaveOutcome, GrantStoreError> {
        let sealed = self.cipher.seal(key, grant)?;
        let expected = expected_version.map_or_else(String::new, |version| version.to_string());
        let command = cmd("EVAL")
            .arg(SAVE_SCRIPT)
            .arg(2)
            .arg(grant_key(key))
            .arg(VERSION_COUNTER)
            .arg(expected)
            .arg(grant.state.as_str())
            .arg(unix_ms(grant.refreshed_at))
            .arg(&sealed.key_id)
            .arg(&sealed.bytes)
            .take();
        let saved: Option<String> = self.query("save a grant", &command).await?;
        let Some(saved) = saved else {
            return Ok(SaveOutcome::Conflict);
        };
        let version = saved.parse::<u64>().map_err(|_| {
            GrantStoreError::permanent("the grant version counter in Redis is not a number")
        })?;
        Ok(SaveOutcome::Saved { version })
    }

    async fn delete(&self, key: &str) -> Result<bool, GrantStoreError> {
        let command = cmd("DEL").arg(grant_key(key)).take();
        let deleted: u64 = self.query("delete a grant", &command).await?;
        Ok(deleted > 0)
    }

    async fn list(&self) -> Result<Vec<GrantSummary>, GrantStoreError> {
        let mut summaries = Vec::new();
        let mut cursor = 0u64;
        loop {
            let scan = cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{GRANT_PREFIX}*"))
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .take();
            let (next, keys): (u64, Vec<String>) = self.query("list the grants", &scan).await?;
            let connections: Vec<&str> = keys
                .iter()
                .filter_map(|key| key.strip_prefix(GRANT_PREFIX))
                .collect();
            let page = join_all(connections.iter().map(|connection| async move {
                match self.open(connection).await {
                    Ok(grant) => Ok(grant.map(|grant| {
                        GrantSummary::new(*connection, grant.refreshed_at, grant.state)
                    })),
                    // Refused: skipped (and warned about).
                    Err(error) if !error.is_transient() => Ok(None),
                    Err(error) => Err(error),
                }
            }));
            for summary in page.await {
                summaries.extend(summary?);
            }
            if next == 0 {
                return Ok(summaries);
            }
            cursor = next;
        }
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, GrantStoreError> {
        let ttl = px(ttl.min(MAX_LEASE));
        let lease = lease_key(key);
        let take = set_px(&lease, holder, Duration::from_millis(ttl))
            .arg("NX")
            .take();
        let taken: Option<String> = self.query("take a refresh lease", &take).await?;
        if taken.is_some() {
            return Ok(true);
        }
        // Held: by this holder, who extends it, or by another.
        let extend = eval(EXTEND_SCRIPT, &lease).arg(holder).arg(ttl).take();
        let extended: u8 = self.query("extend a refresh lease", &extend).await?;
        Ok(extended == 1)
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), GrantStoreError> {
        let command = delete_if_holds(&lease_key(key), holder);
        let _deleted: u64 = self.query("release a refresh lease", &command).await?;
        Ok(())
    }
}

/// A Redis error: transient when Redis is unreachable, slow, loading, read-only, busy or
/// out of memory; permanent when it refuses the credentials, the permissions or the
/// commands.
fn redis_error(what: &str, error: RedisError) -> GrantStoreError {
    let transient = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        )
        || matches!(error.code(), Some("OOM" | "BUSY"));
    if transient {
        GrantStoreError::transient(format!("cannot {what}")).with_cause(error)
    } else {
        GrantStoreError::permanent(format!("cannot {what}: Redis refused it")).with_cause(error)
    }
}

impl fmt::Debug for RedisGrantStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.redis.client().get_connection_info();
        f.debug_struct("RedisGrantStore")
            .field("addr", &info.addr().to_string())
            .field("db", &info.redis_settings().db())
            .field("keys", &self.cipher)
            .finish_non_exhaustive()
    }
}
