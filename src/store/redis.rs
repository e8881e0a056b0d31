//! [`RedisStore`]: the shared token cache on Redis (or a server speaking its protocol).

use std::fmt;
use std::time::Duration;

use ::redis::{Client, Cmd, FromRedisValue, TlsCertificates};
use async_trait::async_trait;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::entry::MAX_ENTRY_BYTES;
use super::{STORE_TIMEOUT, StoreError, TokenStore};
use crate::redis_connection::{LazyRedis, MAX_REPLY_BYTES, delete_if_holds, eval, px, set_px};

// The read's reply must fit in what the connection accepts.
const _: () = assert!(MAX_ENTRY_BYTES + 1 + 64 <= MAX_REPLY_BYTES);

/// At most the first `ARGV[1] + 1` bytes of the value and its `PTTL`, in one atomic step, or
/// nil when there is no value (`GETRANGE` of a missing key is empty; entries never are).
const GET_SCRIPT: &str = r#"
local value = redis.call("GETRANGE", KEYS[1], 0, ARGV[1])
if value == "" then return false end
return {value, redis.call("PTTL", KEYS[1])}
"#;

/// `INCR` on a counter seeded, when missing, with the server's clock in microseconds (so it
/// never goes back); it lives `ARGV[1]` ms past its last use.
const NEXT_GENERATION_SCRIPT: &str = r#"
if redis.call("EXISTS", KEYS[1]) == 0 then
  local now = redis.call("TIME")
  redis.call("SET", KEYS[1], now[1] .. string.format("%06d", now[2]))
end
local generation = redis.call("INCR", KEYS[1])
redis.call("PEXPIRE", KEYS[1], ARGV[1])
return generation
"#;

/// How long a generation counter outlives its last use (only keeps Redis tidy).
const GENERATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A [`TokenStore`] on Redis, for [`shared_cache`](crate::UnderstoryAuthBuilder::shared_cache)
/// (feature `redis`).
///
/// Connects on first use (TLS for `rediss://`), reconnects after a failure; clones share one
/// connection. A reply over 100 KiB (16 KiB while connecting), or one to no command, fails
/// with a [`StoreError`]. Keys start with `understory-auth:token:v1:` (ACL
/// `~understory-auth:*`); the user needs `EVAL`, `GET`, `SET`, `GETRANGE`, `PTTL`, `INCR`,
/// `PEXPIRE`, `EXISTS`, `TIME` and `DEL`.
///
/// ```no_run
/// use understory_auth::{Credentials, RedisStore, UnderstoryAuth};
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let auth = UnderstoryAuth::builder(Credentials::from_env()?)
///     .shared_cache(RedisStore::new("redis://:password@redis.internal:6379/0")?)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    redis: LazyRedis,
}

impl RedisStore {
    /// A store for `redis://[[user]:password@]host[:port][/db]`, `rediss://…` (certificate
    /// always verified against Mozilla's roots, or see
    /// [`with_root_certificates`](Self::with_root_certificates)) or `redis+unix:///path`.
    /// Connects on first use; fails only on an unparsable URL (never shown in the error).
    ///
    /// ```
    /// use understory_auth::RedisStore;
    /// let tls = RedisStore::new("rediss://:password@redis.example.com:6380/")?;
    /// assert!(RedisStore::new("not a url").is_err());
    /// assert!(!format!("{:?}", RedisStore::new("redis://:hunter2@127.0.0.1/")?).contains("hunter2"));
    /// # Ok::<(), understory_auth::StoreError>(())
    /// ```
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let client =
            Client::open(url).map_err(|e| StoreError::with_source("invalid Redis URL", e))?;
        Ok(RedisStore {
            redis: LazyRedis::new(client, None, STORE_TIMEOUT),
        })
    }

    /// A store for a `rediss://` server whose certificate a private CA signed: the PEM
    /// `root_certificates` are trusted *instead of* the public ones. Fails on a URL that is
    /// not `rediss://` or unparsable, or on unparsable PEM.
    pub fn with_root_certificates(url: &str, root_certificates: &[u8]) -> Result<Self, StoreError> {
        let certificates = TlsCertificates {
            client_tls: None,
            root_cert: Some(root_certificates.to_vec()),
        };
        let client = Client::build_with_tls(url, certificates).map_err(|e| {
            StoreError::with_source("invalid rediss:// URL or root certificates", e)
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(root_certificates) {
            let certificate = certificate
                .map_err(|e| StoreError::with_source("invalid root certificates (PEM)", e))?;
            roots
                .add(certificate)
                .map_err(|e| StoreError::with_source("invalid root certificate (not X.509)", e))?;
        }
        Ok(RedisStore {
            redis: LazyRedis::new(client, Some(roots), STORE_TIMEOUT),
        })
    }

    async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, StoreError> {
        let result = match self.redis.query(command).await {
            // A lost connection fails one command: try once more on a new one.
            Err(e) if e.is_io_error() || e.is_unrecoverable_error() => {
                self.redis.query(command).await
            }
            result => result,
        };
        result.map_err(|e| StoreError::with_source("Redis command failed", e))
    }
}

#[async_trait]
impl TokenStore for RedisStore {
    async fn get(
        &self,
        key: &str,
        max_len: usize,
    ) -> Result<Option<(Vec<u8>, Duration)>, StoreError> {
        let eval = eval(GET_SCRIPT, key).arg(max_len).take();
        let found: Option<(Vec<u8>, i64)> = self.query(&eval).await?;
        // PTTL: -1 for a value without expiry (the crate never writes one), -2 for none.
        Ok(found.and_then(|(value, pttl)| match pttl {
            -1 => Some((value, Duration::MAX)),
            _ => Some((value, Duration::from_millis(u64::try_from(pttl).ok()?))),
        }))
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.query(&set_px(key, value, ttl)).await
    }

    async fn next_generation(&self, key: &str) -> Result<u64, StoreError> {
        let eval = eval(NEXT_GENERATION_SCRIPT, key)
            .arg(px(GENERATION_TTL))
            .take();
        self.query(&eval).await
    }

    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let answer: Option<String> = self.query(set_px(key, owner, ttl).arg("NX")).await?;
        Ok(answer.is_some())
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let _deleted: i64 = self.query(&delete_if_holds(key, owner)).await?;
        Ok(())
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.redis.client().get_connection_info();
        f.debug_struct("RedisStore")
            .field("addr", &info.addr().to_string())
            .field("db", &info.redis_settings().db())
            .finish_non_exhaustive()
    }
}
