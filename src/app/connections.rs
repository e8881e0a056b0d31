//! The app's per-connection token caches, in a bounded map: a connection's cache is made
//! when first needed and dropped when the map is full and it is the least recently used
//! (its refresh token stays in the store; the next request loads it again).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::refresh::{ConnectionSource, Refresher};
use crate::UnderstoryAuth;
use crate::auth::Endpoints;
use crate::cache::TokenCache;
use crate::schedule::Timing;
use crate::token::GrantedToken;

/// The default of [`max_cached_connections`](crate::UnderstoryAppBuilder::max_cached_connections).
pub const DEFAULT_MAX_CACHED_CONNECTIONS: usize = 16_384;

pub(crate) struct Connections {
    map: RwLock<HashMap<Arc<str>, Entry>>,
    max: usize,
    refresher: Arc<Refresher>,
    endpoints: Arc<Endpoints>,
    timeout: Duration,
    timing: Timing,
    /// The clock `Entry::used` counts seconds on.
    epoch: Instant,
}

struct Entry {
    auth: UnderstoryAuth,
    /// Seconds since `epoch` at the last use: written at most once a second.
    used: AtomicU64,
}

impl Connections {
    pub(crate) fn new(
        refresher: Arc<Refresher>,
        endpoints: Endpoints,
        timeout: Duration,
        timing: Timing,
        max: usize,
    ) -> Self {
        Connections {
            map: RwLock::new(HashMap::new()),
            max: max.max(1),
            refresher,
            endpoints: Arc::new(endpoints),
            timeout,
            timing,
            epoch: Instant::now(),
        }
    }

    /// The cache of `key`, made if it has none.
    pub(crate) fn get(&self, key: &str) -> UnderstoryAuth {
        let now = self.seconds();
        if let Some(entry) = self.map.read().get(key) {
            if entry.used.load(Relaxed) != now {
                entry.used.store(now, Relaxed);
            }
            return entry.auth.clone();
        }
        self.insert(key, None, false)
    }

    /// A new cache for `key` in place of any old one, handing out `seed` first (a completed
    /// authorization's token).
    pub(crate) fn replace(&self, key: &str, seed: GrantedToken) -> UnderstoryAuth {
        self.insert(key, Some(seed), true)
    }

    /// Caches `granted` as `key`'s token, if `key` has a cache in memory.
    pub(crate) fn seed(&self, key: &str, granted: GrantedToken) {
        if let Some(entry) = self.map.read().get(key) {
            entry.auth.seed(granted);
        }
    }

    /// Forgets `key`'s cache.
    pub(crate) fn remove(&self, key: &str) {
        self.map.write().remove(key);
    }

    /// How many connections have a cache in memory.
    pub(crate) fn len(&self) -> usize {
        self.map.read().len()
    }

    fn insert(&self, key: &str, seed: Option<GrantedToken>, replace: bool) -> UnderstoryAuth {
        let mut map = self.map.write();
        if let Some(entry) = map.get(key).filter(|_| !replace) {
            return entry.auth.clone();
        }
        if map.len() >= self.max && !map.contains_key(key) {
            let oldest = map
                .iter()
                .min_by_key(|(_, entry)| entry.used.load(Relaxed))
                .map(|(key, _)| Arc::clone(key));
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        let source = Arc::new(ConnectionSource {
            key: key.to_owned(),
            refresher: Arc::clone(&self.refresher),
        });
        let cache = TokenCache::new(
            source,
            self.timeout,
            self.timing,
            Arc::clone(&self.endpoints),
        );
        if let Some(seed) = seed {
            cache.seed(seed);
        }
        let auth = UnderstoryAuth::from_cache(cache);
        let entry = Entry {
            auth: auth.clone(),
            used: AtomicU64::new(self.seconds()),
        };
        map.insert(Arc::from(key), entry);
        auth
    }

    fn seconds(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }
}
