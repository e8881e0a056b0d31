//! [`SharedStoreSource`]: the token source that asks the shared store before the auth server
//! (the rules: `TokenStore`'s docs).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::entry::{EntryCodec, MAX_ENTRY_BYTES, Opened, Refusal};
use super::{
    INVALID_ENTRY_WARNING_INTERVAL, SHARED_FETCH_WAIT, SHARED_POLL_INTERVAL, STORE_TIMEOUT,
    StoreError, TokenStore,
};
use crate::Error;
use crate::schedule::{Timing, refresh_lead};
use crate::source::{SharedCounts, TokenSource};
use crate::token::GrantedToken;

pub(crate) struct SharedStoreSource {
    inner: Arc<dyn TokenSource>,
    store: Arc<dyn TokenStore>,
    codec: EntryCodec,
    /// How long a fetcher's lock lives if it is never released: its fetch and its write.
    lock_ttl: Duration,
    /// When the in-process cache above refreshes its tokens: an entry it would find due is
    /// not taken.
    timing: Timing,
    /// The newest generation this process has taken or written: only a strictly newer entry
    /// is taken, so an entry an attacker rolls back to (or the one taken last) never is.
    newest_seen: AtomicU64,
    /// Whether the store is failing: a warning is logged once per failure streak.
    degraded: AtomicBool,
    /// When a warning about an invalid entry was logged last.
    last_invalid_warning: Mutex<Option<Instant>>,
    /// For `CacheStats`: token requests, tokens taken from the store, failed store calls.
    token_requests: AtomicU64,
    hits: AtomicU64,
    failures: AtomicU64,
}

impl SharedStoreSource {
    pub(crate) fn new(
        inner: Arc<dyn TokenSource>,
        store: Arc<dyn TokenStore>,
        codec: EntryCodec,
        token_timeout: Duration,
        timing: Timing,
    ) -> Self {
        SharedStoreSource {
            inner,
            store,
            codec,
            lock_ttl: token_timeout + 2 * STORE_TIMEOUT,
            timing,
            newest_seen: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            last_invalid_warning: Mutex::new(None),
            token_requests: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The longest one fetch can take: store calls (read, lock, read or wait, generation,
    /// write, unlock), the wait for another process and the token request itself.
    pub(crate) fn max_fetch_time(token_timeout: Duration) -> Duration {
        token_timeout + SHARED_FETCH_WAIT + SHARED_POLL_INTERVAL + 7 * STORE_TIMEOUT
    }

    async fn shared_or_fetch(&self) -> Result<GrantedToken, Error> {
        match self.read().await {
            Ok(Some(token)) => return Ok(token),
            Ok(None) => {}
            Err(_) => return self.fetch_directly().await,
        }
        let owner = format!("{:032x}", fastrand::u128(..));
        let lock_key = self.codec.lock_key();
        let lock = self.store.try_lock(lock_key, &owner, self.lock_ttl);
        match self.call(lock).await {
            Ok(true) => {
                // Another process may have stored a token between our read and our lock.
                let result = match self.read().await {
                    Ok(Some(token)) => Ok(token),
                    _ => self.fetch_and_share().await,
                };
                let _ = self.call(self.store.unlock(lock_key, &owner)).await;
                result
            }
            Ok(false) => match self.wait_for_other_process().await {
                Ok(Some(token)) => Ok(token),
                Ok(None) => {
                    tracing::info!(
                        waited_ms = SHARED_FETCH_WAIT.as_millis() as u64,
                        "no token from the process fetching one for the shared cache; fetching"
                    );
                    self.fetch_and_share().await
                }
                Err(_) => self.fetch_directly().await,
            },
            Err(_) => self.fetch_directly().await,
        }
    }

    /// The shared entry, if there is an authentic one this process may take. Reads at most
    /// [`MAX_ENTRY_BYTES`] + 1 bytes of it.
    async fn read(&self) -> Result<Option<GrantedToken>, StoreError> {
        let get = self.store.get(self.codec.key(), MAX_ENTRY_BYTES);
        let Some((value, ttl)) = self.call(get).await? else {
            return Ok(None);
        };
        match self.codec.open(&value) {
            Ok(entry) => Ok(self.take(entry, ttl)),
            Err(Refusal::Foreign) => {
                tracing::debug!(
                    "passing over a shared token cache entry sealed under another client \
                     secret or by another version of the crate"
                );
                Ok(None)
            }
            Err(Refusal::Oversized) => {
                self.warn_invalid(&format!(
                    "ignoring a shared token cache entry larger than {MAX_ENTRY_BYTES} bytes, \
                     unread (not written by this crate)"
                ));
                Ok(None)
            }
            Err(Refusal::Invalid) => {
                self.warn_invalid(
                    "ignoring a shared token cache entry that failed authentication \
                     (tampered with or corrupt)",
                );
                Ok(None)
            }
        }
    }

    /// `entry` as a token with its remaining lifetime (bounded by its `ttl` in the store, so
    /// that a writer's clock running ahead cannot stretch it), unless it is no newer than
    /// every entry this process has seen or is due for refresh.
    fn take(&self, entry: Opened, ttl: Duration) -> Option<GrantedToken> {
        let newest_seen = self.newest_seen.load(Relaxed);
        if entry.generation <= newest_seen {
            tracing::debug!(
                generation = entry.generation,
                newest_seen,
                "passing over a shared token no newer than the newest this process has seen"
            );
            return None;
        }
        let left = entry
            .expires_at
            .duration_since(SystemTime::now())
            .ok()?
            .min(entry.lifetime)
            .min(ttl);
        if left <= refresh_lead(entry.lifetime, self.timing) {
            return None;
        }
        let token = GrantedToken::new(&entry.token, left, entry.scopes).ok()?;
        // Redacted from what the auth server answers this process, as a token it fetched.
        self.inner.remember_token(token.secret());
        self.newest_seen.fetch_max(entry.generation, Relaxed);
        self.hits.fetch_add(1, Relaxed);
        tracing::debug!(
            left_secs = left.as_secs(),
            generation = entry.generation,
            "took the access token from the shared cache"
        );
        Some(token)
    }

    /// Logs `message` as a warning, or at debug level within
    /// [`INVALID_ENTRY_WARNING_INTERVAL`] of the last one.
    fn warn_invalid(&self, message: &str) {
        let now = Instant::now();
        let mut last = self.last_invalid_warning.lock();
        if last.is_none_or(|at| now.duration_since(at) >= INVALID_ENTRY_WARNING_INTERVAL) {
            *last = Some(now);
            tracing::warn!(key = self.codec.key(), "{message}");
        } else {
            tracing::debug!(key = self.codec.key(), "{message}");
        }
    }

    /// Polls for the entry another process is fetching, for at most [`SHARED_FETCH_WAIT`].
    async fn wait_for_other_process(&self) -> Result<Option<GrantedToken>, StoreError> {
        let deadline = Instant::now() + SHARED_FETCH_WAIT;
        while Instant::now() < deadline {
            tokio::time::sleep(SHARED_POLL_INTERVAL).await;
            if let Some(token) = self.read().await? {
                return Ok(Some(token));
            }
        }
        Ok(None)
    }

    /// Fetches a token and stores it for the other processes as the fleet's newest entry.
    async fn fetch_and_share(&self) -> Result<GrantedToken, Error> {
        let (requested_at, started) = (SystemTime::now(), Instant::now());
        let token = self.fetch_directly().await?;
        let next = self.store.next_generation(self.codec.generation_key());
        let Ok(generation) = self.call(next).await else {
            return Ok(token);
        };
        self.newest_seen.fetch_max(generation, Relaxed);
        match self
            .codec
            .seal(&token, requested_at + token.lifetime(), generation)
        {
            Some(value) => {
                // The store's expiry counts from the request too, by its own clock.
                let ttl = token.lifetime().saturating_sub(started.elapsed());
                let put = self.store.put(self.codec.key(), &value, ttl);
                let _ = self.call(put).await;
            }
            None => tracing::warn!("cannot encrypt the token for the shared cache; not sharing it"),
        }
        Ok(token)
    }

    async fn fetch_directly(&self) -> Result<GrantedToken, Error> {
        self.token_requests.fetch_add(1, Relaxed);
        Arc::clone(&self.inner).fetch().await
    }

    /// Runs one store operation under [`STORE_TIMEOUT`], and logs the store's health.
    async fn call<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let late = || format!("no answer within {}ms", STORE_TIMEOUT.as_millis());
        let timed = tokio::time::timeout(STORE_TIMEOUT, operation).await;
        let result = timed.unwrap_or_else(|_| Err(StoreError::new(late())));
        if result.is_err() {
            self.failures.fetch_add(1, Relaxed);
        }
        match &result {
            Ok(_) if self.degraded.swap(false, Relaxed) => {
                tracing::info!("the shared token cache answers again");
            }
            Ok(_) => {}
            Err(error) if !self.degraded.swap(true, Relaxed) => tracing::warn!(
                error = %error,
                "the shared token cache is unavailable; fetching tokens directly until it answers"
            ),
            Err(error) => tracing::debug!(error = %error, "the shared token cache still fails"),
        }
        result
    }
}

impl TokenSource for SharedStoreSource {
    fn fetch(self: Arc<Self>) -> BoxFuture<'static, Result<GrantedToken, Error>> {
        Box::pin(async move { self.shared_or_fetch().await })
    }

    fn shared_counts(&self) -> Option<SharedCounts> {
        Some(SharedCounts {
            token_requests: self.token_requests.load(Relaxed),
            hits: self.hits.load(Relaxed),
            failures: self.failures.load(Relaxed),
        })
    }
}
