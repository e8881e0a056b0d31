//! [`MemoryGrantStore`]: grants in the process's memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::grant_store::{GrantStore, GrantSummary, SaveOutcome};
use super::grant_store_error::GrantStoreError;
use super::stored_grant::StoredGrant;

/// A [`GrantStore`] in memory: for tests, and for apps of one process whose companies may
/// consent again after a restart (every grant is lost with the process).
///
/// Clones share the same grants (one `Arc`), so an app and a test can look at one store.
/// Leases are held in memory too, so two apps sharing a store in one process never refresh
/// the same connection at once; a fleet of processes needs a shared, durable store. Its
/// `Debug` shows how many grants it holds, nothing else.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use understory_auth::{GrantStore, MemoryGrantStore};
///
/// let store = MemoryGrantStore::new();
/// let seen_by_the_test = store.clone(); // the same grants
/// assert!(seen_by_the_test.load("tenant-42").await?.is_none());
/// assert_eq!(format!("{store:?}"), "MemoryGrantStore { grants: 0 }");
/// # Ok::<(), understory_auth::GrantStoreError>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryGrantStore {
    inner: Arc<Mutex<Tables>>,
}

#[derive(Default)]
struct Tables {
    grants: HashMap<String, StoredGrant>,
    /// The holder of each key's lease, and when it runs out.
    leases: HashMap<String, (String, Instant)>,
    /// The last version handed out, for any key: versions are never reused.
    last_version: u64,
}

impl MemoryGrantStore {
    /// An empty store.
    ///
    /// ```
    /// let store = understory_auth::MemoryGrantStore::new();
    /// # let _ = store;
    /// ```
    pub fn new() -> Self {
        MemoryGrantStore::default()
    }
}

#[async_trait]
impl GrantStore for MemoryGrantStore {
    async fn load(&self, key: &str) -> Result<Option<StoredGrant>, GrantStoreError> {
        Ok(self.inner.lock().grants.get(key).cloned())
    }

    async fn save(
        &self,
        key: &str,
        grant: &StoredGrant,
        expected_version: Option<u64>,
    ) -> Result<SaveOutcome, GrantStoreError> {
        let mut tables = self.inner.lock();
        if let Some(expected) = expected_version {
            if tables.grants.get(key).map(|stored| stored.version) != Some(expected) {
                return Ok(SaveOutcome::Conflict);
            }
        }
        let Some(version) = tables.last_version.checked_add(1) else {
            return Err(GrantStoreError::permanent(
                "the memory grant store has handed out every version",
            ));
        };
        tables.last_version = version;
        let mut stored = grant.clone();
        stored.version = version;
        tables.grants.insert(key.to_owned(), stored);
        Ok(SaveOutcome::Saved { version })
    }

    async fn delete(&self, key: &str) -> Result<bool, GrantStoreError> {
        Ok(self.inner.lock().grants.remove(key).is_some())
    }

    async fn list(&self) -> Result<Vec<GrantSummary>, GrantStoreError> {
        let tables = self.inner.lock();
        Ok(tables
            .grants
            .iter()
            .map(|(key, grant)| GrantSummary::new(key.clone(), grant.refreshed_at, grant.state))
            .collect())
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, GrantStoreError> {
        let now = Instant::now();
        let mut tables = self.inner.lock();
        tables.leases.retain(|_, (_, until)| *until > now);
        if tables
            .leases
            .get(key)
            .is_some_and(|(other, _)| other != holder)
        {
            return Ok(false);
        }
        // A `ttl` too large for the clock is held until released.
        let until = now
            .checked_add(ttl)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        tables
            .leases
            .insert(key.to_owned(), (holder.to_owned(), until));
        Ok(true)
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), GrantStoreError> {
        let mut tables = self.inner.lock();
        if tables
            .leases
            .get(key)
            .is_some_and(|(owner, _)| owner == holder)
        {
            tables.leases.remove(key);
        }
        Ok(())
    }
}

impl fmt::Debug for MemoryGrantStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryGrantStore")
            .field("grants", &self.inner.lock().grants.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::app::company::Company;
    use crate::app::refresh_token::RefreshToken;
    use crate::app::stored_grant::GrantState;

    fn grant(token: &str) -> StoredGrant {
        StoredGrant::new(
            RefreshToken::new(token),
            Company::new("cmp_1", "Fjord Kayaks"),
            vec!["openid".to_owned(), "offline".to_owned()],
            UNIX_EPOCH + Duration::from_secs(1_000),
        )
    }

    fn version(outcome: SaveOutcome) -> u64 {
        match outcome {
            SaveOutcome::Saved { version } => version,
            SaveOutcome::Conflict => panic!("not saved"),
        }
    }

    /// `store.save(key, grant(token), expected)`.
    async fn save(
        store: &MemoryGrantStore,
        key: &str,
        token: &str,
        expected: Option<u64>,
    ) -> SaveOutcome {
        store
            .save(key, &grant(token), expected)
            .await
            .expect("saves")
    }

    async fn token_of(store: &MemoryGrantStore, key: &str) -> Option<String> {
        let grant = store.load(key).await.expect("loads")?;
        Some(grant.refresh_token.expose_secret().to_owned())
    }

    #[tokio::test]
    async fn compare_and_swap_writes_only_over_the_expected_version() {
        let store = MemoryGrantStore::new();
        assert!(store.load("a").await.expect("loads").is_none());
        // No grant: a conditional save has nothing to compare with.
        assert_eq!(
            save(&store, "a", "rt0", Some(0)).await,
            SaveOutcome::Conflict
        );
        let v1 = version(save(&store, "a", "rt1", None).await);
        let loaded = store.load("a").await.expect("loads").expect("stored");
        assert_eq!(loaded.version, v1);
        assert_eq!(loaded.state, GrantState::Active);
        assert_eq!(loaded.company, Company::new("cmp_1", "Fjord Kayaks"));

        let v2 = version(save(&store, "a", "rt2", Some(v1)).await);
        assert!(v2 > v1);
        assert_eq!(
            save(&store, "a", "stale", Some(v1)).await,
            SaveOutcome::Conflict
        );
        assert_eq!(token_of(&store, "a").await.as_deref(), Some("rt2"));
        // The version passed in is ignored: the store assigns it.
        let mut forged = grant("forged");
        forged.version = v2 + 100;
        let v3 = version(store.save("a", &forged, Some(v2)).await.expect("saves"));
        assert_eq!(v3, v2 + 1);
        // Unconditional: replaces whatever is there.
        let v4 = version(save(&store, "a", "new", None).await);
        assert!(v4 > v3);
        assert_eq!(token_of(&store, "a").await.as_deref(), Some("new"));
    }

    #[tokio::test]
    async fn versions_are_not_reused_after_a_delete() {
        let store = MemoryGrantStore::new();
        let old = version(save(&store, "a", "old", None).await);
        assert!(store.delete("a").await.expect("deletes"));
        let new = version(save(&store, "a", "new", None).await);
        assert!(new > old);
        // A refresh of the deleted grant cannot overwrite the new one.
        assert_eq!(
            save(&store, "a", "stale", Some(old)).await,
            SaveOutcome::Conflict
        );
        assert_eq!(token_of(&store, "a").await.as_deref(), Some("new"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_concurrent_savers_over_one_version_exactly_one_wins() {
        let store = MemoryGrantStore::new();
        let base = version(save(&store, "a", "rt0", None).await);
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let outcome = save(&store, "a", &format!("rt-{i}"), Some(base)).await;
                    (i, outcome)
                })
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
        let (winner, winning_version) = winners[0];
        let stored = store.load("a").await.expect("loads").expect("stored");
        assert_eq!(stored.version, winning_version);
        assert_eq!(stored.refresh_token.expose_secret(), format!("rt-{winner}"));
    }

    #[tokio::test]
    async fn marking_needs_the_current_version() {
        let store = MemoryGrantStore::new();
        assert_eq!(
            store
                .mark_needs_reauthorization("a", 1)
                .await
                .expect("marks"),
            SaveOutcome::Conflict
        );
        let v1 = version(save(&store, "a", "rt1", None).await);
        let v2 = version(save(&store, "a", "rt2", Some(v1)).await);
        // A failed refresh of the replaced grant does not mark the new one.
        assert_eq!(
            store
                .mark_needs_reauthorization("a", v1)
                .await
                .expect("marks"),
            SaveOutcome::Conflict
        );
        let loaded = store.load("a").await.expect("loads").expect("stored");
        assert_eq!(loaded.state, GrantState::Active);

        let v3 = version(
            store
                .mark_needs_reauthorization("a", v2)
                .await
                .expect("marks"),
        );
        assert!(v3 > v2);
        let marked = store.load("a").await.expect("loads").expect("stored");
        assert_eq!(marked.state, GrantState::NeedsReauthorization);
        assert_eq!(marked.version, v3);
        // A new authorization makes it active again.
        let _ = version(save(&store, "a", "fresh", None).await);
        let fresh = store.load("a").await.expect("loads").expect("stored");
        assert_eq!(fresh.state, GrantState::Active);
    }

    #[tokio::test]
    async fn delete_and_list() {
        let store = MemoryGrantStore::new();
        assert!(!store.delete("a").await.expect("deletes"));
        let _ = version(save(&store, "a", "rt-a", None).await);
        let mut b = grant("rt-b");
        b.refreshed_at = UNIX_EPOCH + Duration::from_secs(2_000);
        let vb = version(store.save("b", &b, None).await.expect("saves"));
        let _ = version(
            store
                .mark_needs_reauthorization("b", vb)
                .await
                .expect("marks"),
        );

        let mut listed = store.list().await.expect("lists");
        listed.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(
            listed,
            [
                GrantSummary::new(
                    "a",
                    UNIX_EPOCH + Duration::from_secs(1_000),
                    GrantState::Active
                ),
                GrantSummary::new(
                    "b",
                    UNIX_EPOCH + Duration::from_secs(2_000),
                    GrantState::NeedsReauthorization
                ),
            ]
        );
        assert!(store.delete("a").await.expect("deletes"));
        assert!(store.load("a").await.expect("loads").is_none());
        let listed = store.list().await.expect("lists");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_has_one_holder_until_released_or_expired() {
        let store = MemoryGrantStore::new();
        let ttl = Duration::from_secs(30);
        assert!(store.lease("a", "p1", ttl).await.expect("leases"));
        assert!(!store.lease("a", "p2", ttl).await.expect("leases"));
        // Other keys are independent.
        assert!(store.lease("b", "p2", ttl).await.expect("leases"));
        // The holder extends it.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(store.lease("a", "p1", ttl).await.expect("leases"));
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!store.lease("a", "p2", ttl).await.expect("leases"));
        // Only the holder releases it.
        store.release("a", "p2").await.expect("releases");
        assert!(!store.lease("a", "p2", ttl).await.expect("leases"));
        store.release("a", "p1").await.expect("releases");
        assert!(store.lease("a", "p2", ttl).await.expect("leases"));
        // An expired lease goes to whoever asks.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(store.lease("a", "p3", ttl).await.expect("leases"));
        // A ttl beyond the clock's range is held, not a panic.
        assert!(store.lease("c", "p1", Duration::MAX).await.expect("leases"));
        assert!(!store.lease("c", "p2", ttl).await.expect("leases"));
    }

    #[tokio::test]
    async fn clones_share_the_grants_and_debug_shows_only_a_count() {
        let store = MemoryGrantStore::new();
        let clone = store.clone();
        let _ = version(
            clone
                .save("a", &grant("ory_rt_SECRET"), None)
                .await
                .expect("saves"),
        );
        assert_eq!(
            token_of(&store, "a").await.as_deref(),
            Some("ory_rt_SECRET")
        );
        let shown = format!("{store:?}");
        assert_eq!(shown, "MemoryGrantStore { grants: 1 }");
        let loaded = format!("{:?}", store.load("a").await.expect("loads"));
        assert!(!loaded.contains("SECRET"), "{loaded}");
    }
}
