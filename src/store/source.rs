//! [`SharedStoreSource`]: the token source under the in-process cache that asks the shared
//! store before the auth server (see the module docs of `store` for the rules).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::entry::{EntryCodec, Opened};
use super::{SHARED_FETCH_WAIT, SHARED_POLL_INTERVAL, STORE_TIMEOUT, StoreError, TokenStore};
use crate::Error;
use crate::cache::refresh_lead;
use crate::source::TokenSource;
use crate::token::GrantedToken;

pub(crate) struct SharedStoreSource {
    inner: Arc<dyn TokenSource>,
    store: Arc<dyn TokenStore>,
    codec: EntryCodec,
    /// How long a fetcher's lock lives if it is never released: its fetch and its write.
    lock_ttl: Duration,
    /// The SHA-256 of the token handed to the cache last: an entry still holding it is
    /// skipped, since the cache asks again only for a token due for refresh or rejected.
    last_served: Mutex<Option<[u8; 32]>>,
    /// Whether the store is failing: a warning is logged once per failure streak.
    degraded: AtomicBool,
}

impl SharedStoreSource {
    pub(crate) fn new(
        inner: Arc<dyn TokenSource>,
        store: Arc<dyn TokenStore>,
        codec: EntryCodec,
        token_timeout: Duration,
    ) -> Self {
        SharedStoreSource {
            inner,
            store,
            codec,
            lock_ttl: token_timeout + 2 * STORE_TIMEOUT,
            last_served: Mutex::new(None),
            degraded: AtomicBool::new(false),
        }
    }

    /// The longest one fetch can take: store calls, the wait for another process and the
    /// token request itself.
    pub(crate) fn max_fetch_time(token_timeout: Duration) -> Duration {
        token_timeout + SHARED_FETCH_WAIT + SHARED_POLL_INTERVAL + 6 * STORE_TIMEOUT
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

    /// The shared entry, if there is an authentic one this process may take.
    async fn read(&self) -> Result<Option<GrantedToken>, StoreError> {
        let Some(value) = self.call(self.store.get(self.codec.key())).await? else {
            return Ok(None);
        };
        let Some(entry) = self.codec.open(&value) else {
            tracing::warn!(
                key = self.codec.key(),
                "ignoring a shared token cache entry that failed authentication (tampered \
                 with, corrupt, or written with another client secret)"
            );
            return Ok(None);
        };
        Ok(self.take(entry))
    }

    /// `entry` as a token with its remaining lifetime, unless it is due for refresh by its
    /// original lifetime's schedule or is the token this process handed over last.
    fn take(&self, entry: Opened) -> Option<GrantedToken> {
        let left = entry
            .expires_at
            .duration_since(SystemTime::now())
            .ok()?
            .min(entry.lifetime);
        if left <= refresh_lead(entry.lifetime) {
            return None;
        }
        if *self.last_served.lock() == Some(fingerprint(&entry.token)) {
            return None;
        }
        let token = GrantedToken::new(&entry.token, left, entry.scopes).ok()?;
        tracing::debug!(
            left_secs = left.as_secs(),
            "took the access token from the shared cache"
        );
        Some(token)
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

    /// Fetches a token and stores it for the other processes.
    async fn fetch_and_share(&self) -> Result<GrantedToken, Error> {
        let requested_at = SystemTime::now();
        let token = self.fetch_directly().await?;
        match self.codec.seal(&token, requested_at + token.lifetime()) {
            Some(value) => {
                let put = self.store.put(self.codec.key(), &value, token.lifetime());
                let _ = self.call(put).await;
            }
            None => tracing::warn!("cannot encrypt the token for the shared cache; not sharing it"),
        }
        Ok(token)
    }

    async fn fetch_directly(&self) -> Result<GrantedToken, Error> {
        Arc::clone(&self.inner).fetch().await
    }

    /// Runs one store operation under [`STORE_TIMEOUT`], and logs the store's health.
    async fn call<T>(
        &self,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(STORE_TIMEOUT, operation).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::new(format!(
                "no answer within {}ms",
                STORE_TIMEOUT.as_millis()
            ))),
        };
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
        Box::pin(async move {
            let token = self.shared_or_fetch().await?;
            *self.last_served.lock() = Some(fingerprint(token.secret()));
            Ok(token)
        })
    }
}

fn fingerprint(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
