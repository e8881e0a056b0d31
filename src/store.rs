//! The shared token cache: a second level under the in-process cache, so that a fleet of
//! processes shares its tokens (feature `shared-cache`; [`RedisStore`] with feature `redis`).
//!
//! # When to turn it on
//!
//! Without it every process fetches its own token: a service scaled to 50 pods makes 50
//! token requests an hour, and 50 more at every restart wave. With it the fleet makes about
//! one per token lifetime, whatever its size, at the cost of one store round trip (well
//! under a millisecond to a nearby Redis) on each of a process's token fetches. The hot path
//! is unchanged: requests never touch the store, only the in-process cache's fetches do.
//! Turn it on when token requests are rate limited, slow, billed, or simply add up; a
//! handful of processes gains little.
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use understory_auth::{Credentials, RedisStore, UnderstoryAuth};
//!
//! let auth = UnderstoryAuth::builder(Credentials::from_env()?)
//!     .shared_cache(RedisStore::new("redis://127.0.0.1/")?)
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! The in-process cache keeps doing single flight, refresh ahead and backoff; its token
//! source is wrapped so that each of its fetches first asks the store:
//!
//! * **Key.** `understory-auth:token:v1:` and the hex SHA-256 of everything that changes the
//!   token: token URL, client id, audience and the sorted scopes. Never the secret.
//! * **Value.** One version byte, a random 96-bit nonce, and the ChaCha20-Poly1305
//!   encryption of the token, its scopes, its original lifetime and its absolute expiry,
//!   under a key derived from the client secret (HKDF-SHA256), with the store key as
//!   associated data. The store holds only ciphertext; only holders of the secret can read
//!   or forge an entry, and an entry moved to another key is rejected. An entry that fails
//!   authentication is logged (without its contents) and treated as missing.
//! * **Freshness.** An entry is taken only while it is not yet due for refresh by its
//!   original lifetime's schedule (more left than the refresh margin, skew and jitter the
//!   in-process cache would allow it), and is handed over with its *remaining* lifetime, so
//!   the in-process cache refreshes it no later than the original schedule: the next fetch
//!   then finds it due and replaces it, instead of taking it again. An entry holding the
//!   token this process handed over last is also skipped: the cache only asks again for a
//!   token due for refresh or rejected by the API.
//! * **Cross-process single flight.** When the entry is missing or due, one process fetches
//!   under a lock with an expiry (Redis: `SET NX PX`, released by compare-and-delete only by
//!   its owner) and stores the result; the others poll for the entry every
//!   [`SHARED_POLL_INTERVAL`] for at most [`SHARED_FETCH_WAIT`], then fetch themselves (a
//!   lock holder that died leaves its lock until it expires).
//! * **Never worse than without.** Every store operation is bounded by [`STORE_TIMEOUT`]. A
//!   store that is down, slow or failing never fails a token request: the process fetches
//!   directly, as it would without a shared cache, and logs a warning once per failure
//!   streak (and an info line when the store answers again).
//!
//! It relies on the processes' wall clocks agreeing to within a few seconds (NTP), and on the
//! client secret being a high-entropy random string, as Understory's are: HKDF is not a
//! password hash.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::Error;
use crate::source::TokenSource;

mod entry;
#[cfg(feature = "redis")]
mod redis;
mod source;
#[cfg(test)]
mod tests;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
use entry::EntryCodec;
pub(crate) use entry::SharedKey;
use source::SharedStoreSource;

/// The longest any single store operation may take; past it the operation counts as failed
/// and the token is fetched directly.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest a process waits for another process's token fetch before fetching itself.
pub const SHARED_FETCH_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting process looks for the token another process is fetching.
pub const SHARED_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The prefix of every store key this crate writes (entries and their locks).
pub const SHARED_KEY_PREFIX: &str = "understory-auth:token:v1:";

/// Where a fleet's processes share their tokens: a key-value store with expiring entries
/// and an expiring lock. [`RedisStore`] (feature `redis`) is the ready-made one.
///
/// Values are opaque bytes (ciphertext: the store never sees a token). Implementations
/// need not bound their own latency: every call is made under [`STORE_TIMEOUT`] and any
/// error or timeout makes the process fetch its token directly.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use understory_auth::{StoreError, TokenStore};
///
/// /// A store shared by the `UnderstoryAuth` handles of one process (for tests).
/// #[derive(Default)]
/// struct MemoryStore(parking_lot::Mutex<HashMap<String, Vec<u8>>>);
///
/// #[async_trait::async_trait]
/// impl TokenStore for MemoryStore {
///     async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
///         Ok(self.0.lock().get(key).cloned())
///     }
///     async fn put(&self, key: &str, value: &[u8], _ttl: Duration) -> Result<(), StoreError> {
///         self.0.lock().insert(key.to_owned(), value.to_vec());
///         Ok(())
///     }
///     async fn try_lock(&self, key: &str, owner: &str, _ttl: Duration) -> Result<bool, StoreError> {
///         let mut map = self.0.lock();
///         if map.contains_key(key) {
///             return Ok(false);
///         }
///         map.insert(key.to_owned(), owner.as_bytes().to_vec());
///         Ok(true)
///     }
///     async fn unlock(&self, key: &str, owner: &str) -> Result<(), StoreError> {
///         let mut map = self.0.lock();
///         if map.get(key).is_some_and(|v| v == owner.as_bytes()) {
///             map.remove(key);
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// The value stored under `key`, if there is one and it has not expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores `value` under `key`, replacing any value, until `ttl` has passed.
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError>;

    /// Takes the lock named `key` for `owner` (a random string) if nobody holds it; it
    /// expires after `ttl` unless released first. Returns whether it was taken.
    async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Releases the lock named `key`, but only if `owner` still holds it.
    async fn unlock(&self, key: &str, owner: &str) -> Result<(), StoreError>;
}

/// Why a [`TokenStore`] operation failed. Only logged: a failing store never fails a
/// token request. Never holds a token, a secret or a store password.
///
/// ```
/// use understory_auth::StoreError;
/// let err = StoreError::new("connection refused");
/// assert_eq!(err.to_string(), "token store: connection refused");
/// ```
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error with a message saying what failed.
    ///
    /// ```
    /// let err = understory_auth::StoreError::new("the store is read-only");
    /// # let _ = err;
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            source: None,
        }
    }

    /// An error with a message and the underlying error, shown after the message.
    ///
    /// ```
    /// use understory_auth::StoreError;
    /// let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// let err = StoreError::with_source("cannot connect", io);
    /// assert_eq!(err.to_string(), "token store: cannot connect: connection refused");
    /// ```
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token store: {}", self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

/// The underlying error is part of the message, so `source()` is `None` (it would print
/// twice in error-chain reports).
impl std::error::Error for StoreError {}

/// The store a builder was given, with its type's name for `Debug`.
#[derive(Clone)]
pub(crate) struct StoreHandle {
    store: Arc<dyn TokenStore>,
    type_name: &'static str,
}

impl StoreHandle {
    pub(crate) fn new<S: TokenStore>(store: S) -> Self {
        StoreHandle {
            store: Arc::new(store),
            type_name: std::any::type_name::<S>(),
        }
    }
}

impl StoreHandle {
    /// `source` with this store as its second level, and the longest one fetch through it
    /// may take (the in-process cache's bound on a fetch).
    pub(crate) fn wrap(
        &self,
        source: Arc<dyn TokenSource>,
        key: &SharedKey<'_>,
        client_secret: &str,
        token_timeout: Duration,
    ) -> Result<(Arc<dyn TokenSource>, Duration), Error> {
        let codec = EntryCodec::new(key, client_secret)?;
        let shared = SharedStoreSource::new(source, Arc::clone(&self.store), codec, token_timeout);
        let max_fetch_time = SharedStoreSource::max_fetch_time(token_timeout);
        Ok((Arc::new(shared), max_fetch_time))
    }
}

impl fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenStore").field(&self.type_name).finish()
    }
}
