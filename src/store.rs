//! The shared token cache (features `shared-cache`, `redis`): [`TokenStore`] (whose docs are
//! the user's), its error, and the token source that asks the store first.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::Error;
use crate::redact::Secrets;
use crate::schedule::Timing;
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
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest a process waits for another process's token fetch before fetching itself.
pub(crate) const SHARED_FETCH_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting process looks for the token another process is fetching.
pub(crate) const SHARED_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// The prefix of every store key this crate writes (entries, their locks and counters).
pub(crate) const SHARED_KEY_PREFIX: &str = "understory-auth:token:v1:";
/// At most one warning about an invalid shared entry is logged per interval and
/// `UnderstoryAuth`; the others go to debug level.
const INVALID_ENTRY_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Where a fleet's processes share their tokens, for
/// [`UnderstoryAuthBuilder::shared_cache`](crate::UnderstoryAuthBuilder::shared_cache): a
/// key-value store with expiring entries, a counter and an expiring lock. [`RedisStore`]
/// (feature `redis`) is the ready-made one.
///
/// Without one, every process fetches its own token (50 pods: 50 token requests an hour, and
/// 50 more at every restart wave); with one, the fleet makes about one per token lifetime, at
/// the cost of a store round trip on each of a process's token fetches (requests never touch
/// the store). It pays when token requests are rate limited, slow or add up.
///
/// # How it works
///
/// The in-process cache keeps its [behaviour](crate#cache-behaviour); each of its token
/// fetches asks the store first:
///
/// * **Keys** are a SHA-256 of the token URL, client id, audience and scopes plus a key id
///   derived from the client secret (HKDF-SHA256), under `understory-auth:token:v1:`: the
///   old and new secrets of a rotation each share their own token.
/// * **Values** are sealed with ChaCha20-Poly1305 under a key derived from the client
///   secret, the store key as associated data: only holders of the secret can read or forge
///   them. A value that fails authentication, or is over 96 KiB (never read whole), is
///   ignored and logged without its contents.
/// * **Generations.** Each entry carries the next value of a fleet-wide counter; a process
///   takes only an entry newer than any it has seen, so whoever can write to the store
///   cannot roll it back to old tokens.
/// * **Freshness.** An entry is taken only while not yet due for refresh, with its remaining
///   lifetime (bounded by the store's own expiry of it).
/// * **One fetch for the fleet.** With no fresh entry, one process fetches under an expiring
///   lock and stores the token; the others poll every 50 ms for at most 2 s, then fetch.
/// * **Never worse than without.** Every store call is bounded by 500 ms; a store that is
///   down, slow or holding garbage never fails a token request: the process fetches
///   directly and [logs](crate#logging) a warning.
///
/// This relies on the client secret being a high-entropy random string, as Understory's
/// are (HKDF is not a password hash). `SECURITY.md` has the threat model.
///
/// # Implementing a store
///
/// Values are opaque bytes. Calls need not bound their own latency: each runs under the
/// 500 ms timeout, and any error makes the process fetch its token directly.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::time::{Duration, Instant};
/// use understory_auth::{StoreError, TokenStore};
///
/// /// A store shared by the `UnderstoryAuth` handles of one process (for tests).
/// #[derive(Default)]
/// struct MemoryStore {
///     entries: parking_lot::Mutex<HashMap<String, (Vec<u8>, Instant)>>,
///     generation: AtomicU64,
/// }
///
/// #[async_trait::async_trait]
/// impl TokenStore for MemoryStore {
///     async fn get(&self, key: &str, max_len: usize) -> Result<Option<(Vec<u8>, Duration)>, StoreError> {
///         let entries = self.entries.lock();
///         let Some((value, expires)) = entries.get(key) else { return Ok(None) };
///         let left = expires.saturating_duration_since(Instant::now());
///         let read = &value[..value.len().min(max_len + 1)];
///         Ok((!left.is_zero()).then(|| (read.to_vec(), left)))
///     }
///     async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
///         let expires = Instant::now() + ttl;
///         self.entries.lock().insert(key.to_owned(), (value.to_vec(), expires));
///         Ok(())
///     }
///     async fn next_generation(&self, _key: &str) -> Result<u64, StoreError> {
///         Ok(self.generation.fetch_add(1, Ordering::Relaxed) + 1)
///     }
///     async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
///         let mut entries = self.entries.lock();
///         if entries.get(key).is_some_and(|(_, expires)| *expires > Instant::now()) {
///             return Ok(false);
///         }
///         entries.insert(key.to_owned(), (owner.as_bytes().to_vec(), Instant::now() + ttl));
///         Ok(true)
///     }
///     async fn unlock(&self, key: &str, owner: &str) -> Result<(), StoreError> {
///         let mut entries = self.entries.lock();
///         if entries.get(key).is_some_and(|(value, _)| value == owner.as_bytes()) {
///             entries.remove(key);
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// The value stored under `key` and the time it has left to live (`Duration::MAX` if it
    /// never expires), if there is one and it has not expired. Of a value longer than
    /// `max_len` bytes, return only the first `max_len + 1` (or all, if that is no cheaper):
    /// it is refused unread, so that whoever can write to the store cannot make every process
    /// read megabytes.
    async fn get(
        &self,
        key: &str,
        max_len: usize,
    ) -> Result<Option<(Vec<u8>, Duration)>, StoreError>;

    /// Stores `value` under `key`, replacing any value, until `ttl` has passed.
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError>;

    /// Increments the counter named `key` and returns its new value, which must be at least
    /// 1 and larger than every value it returned before, to any process, even after the
    /// store lost its data (seed a missing counter from a clock, as [`RedisStore`] does).
    async fn next_generation(&self, key: &str) -> Result<u64, StoreError>;

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
/// let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let err = StoreError::with_source("cannot connect", io);
/// assert_eq!(err.to_string(), "token store: cannot connect: connection refused");
/// ```
#[derive(Debug)]
pub struct StoreError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error with a message saying what failed.
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            source: None,
        }
    }

    /// An error with a message and the underlying error, shown after the message.
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

/// The text is the store's and its server's (a Redis error reply, say): it is shown as
/// one line of printable characters, cut short, so that a store cannot forge or flood logs.
impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match &self.source {
            Some(source) => format!("{}: {source}", self.message),
            None => self.message.clone(),
        };
        write!(f, "token store: {}", Secrets::empty().clean(&text))
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

    /// `source` with this store as its second level, under an in-process cache that
    /// refreshes by `timing`, and the longest one fetch through it may take (the in-process
    /// cache's bound on a fetch).
    pub(crate) fn wrap(
        &self,
        source: Arc<dyn TokenSource>,
        key: &SharedKey<'_>,
        client_secret: &str,
        token_timeout: Duration,
        timing: Timing,
    ) -> Result<(Arc<dyn TokenSource>, Duration), Error> {
        let codec = EntryCodec::new(key, client_secret)?;
        let shared = SharedStoreSource::new(
            source,
            Arc::clone(&self.store),
            codec,
            token_timeout,
            timing,
        );
        let max_fetch_time = SharedStoreSource::max_fetch_time(token_timeout);
        Ok((Arc::new(shared), max_fetch_time))
    }
}

impl fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TokenStore").field(&self.type_name).finish()
    }
}
