//! The [`GrantStore`] trait: where each connection's refresh token lives, and what a store
//! must guarantee for rotating refresh tokens to survive concurrency.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::grant_store_error::GrantStoreError;
use super::stored_grant::{GrantState, StoredGrant};

/// What a compare-and-swap write did.
///
/// ```
/// use understory_auth::SaveOutcome;
///
/// fn saved_version(outcome: SaveOutcome) -> Option<u64> {
///     match outcome {
///         SaveOutcome::Saved { version } => Some(version),
///         SaveOutcome::Conflict => None, // reload: someone else wrote first
///     }
/// }
/// assert_eq!(saved_version(SaveOutcome::Saved { version: 7 }), Some(7));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum SaveOutcome {
    /// Written; the grant is now stored at `version`.
    Saved {
        /// The grant's new version.
        version: u64,
    },
    /// Not written: the grant is not (or no longer) at the expected version, or is gone.
    Conflict,
}

/// One connection in [`GrantStore::list`]: enough to decide which to keep alive.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use understory_auth::{GrantState, GrantSummary};
///
/// let summary = GrantSummary::new("tenant-42", SystemTime::now(), GrantState::Active);
/// let idle = summary.refreshed_at.elapsed().unwrap_or_default() > Duration::from_secs(7 * 86_400);
/// assert!(!idle);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrantSummary {
    /// The connection's key.
    pub key: String,
    /// When its refresh token was issued.
    pub refreshed_at: SystemTime,
    /// Whether it can still be refreshed.
    pub state: GrantState,
}

impl GrantSummary {
    /// A summary of the grant stored under `key`.
    ///
    /// ```
    /// use understory_auth::{GrantState, GrantSummary};
    /// let summary = GrantSummary::new("tenant-42", std::time::SystemTime::UNIX_EPOCH, GrantState::Active);
    /// assert_eq!(summary.key, "tenant-42");
    /// ```
    pub fn new(key: impl Into<String>, refreshed_at: SystemTime, state: GrantState) -> Self {
        GrantSummary {
            key: key.into(),
            refreshed_at,
            state,
        }
    }
}

/// Where each connection's grant lives: its refresh token, version, state, company and
/// scopes, under the key the app chose for the company. [`MemoryGrantStore`] keeps them in
/// memory; a durable store (a database, Redis) implements this trait.
///
/// # Why versions and leases
///
/// Understory's auth server rotates refresh tokens: every refresh returns a new one and
/// deactivates the old, and presenting a deactivated one again revokes the whole grant (the
/// company must consent again). So a refresh token is presented at most once, ever, and the
/// new one must not be lost:
///
/// * **Versions (compare-and-swap).** Every write gives the grant a new version, and a
///   refresh saves its new token only if the grant is still at the version it refreshed
///   (`save(key, &grant, Some(version))`); a [`SaveOutcome::Conflict`] means someone else
///   wrote first (another refresh, a new authorization, a disconnect).
/// * **Leases.** A refresh takes the connection's lease first, and only its holder presents
///   the refresh token: two processes sharing a store never present the same token, which
///   would revoke the grant. A process that cannot take the lease waits for the holder's
///   write and uses what it stored.
///
/// # The contract
///
/// Every method may be called concurrently, from many tasks (and, for a shared store, many
/// processes). An implementation must make each method atomic, and:
///
/// * **Versions are never reused for a key**, not even after [`delete`](Self::delete): each
///   write returns a version larger than every version any write returned before for that
///   key (take them from a store-wide counter or sequence). Otherwise a refresh of a grant
///   that was deleted and re-created could overwrite the new grant with the old one's token.
/// * [`save`](Self::save) with `Some(version)` writes only if the key holds exactly that
///   version; with `None` it writes unconditionally (creating or replacing: a completed
///   authorization replaces whatever was there). The `version` field of the grant passed in
///   is ignored.
/// * A lease is held by one holder at a time until it is released or its `ttl` runs out;
///   the same holder taking it again extends it. Leases are independent of the grants (a
///   lease can be taken for a key with no grant) and need not survive a restart of the
///   store.
/// * Errors say whether they are [transient](GrantStoreError::transient) and never hold a
///   refresh token.
///
/// A **durable** store keeps refresh tokens encrypted (an AEAD such as ChaCha20-Poly1305,
/// under a key the user provides, with the key's id stored beside each ciphertext so keys
/// can be rotated, and the connection's key as associated data so ciphertexts cannot be
/// swapped between connections); a grant it cannot decrypt is a
/// [permanent](GrantStoreError::permanent) error. A store that is shared by several
/// processes must implement leases across them (a row lock or lease column with an expiry,
/// Redis `SET NX PX`); one used by a single process can keep them in memory as
/// [`MemoryGrantStore`] does.
///
/// # Using it
///
/// The app calls these methods; they can be called directly too, e.g. to see which
/// connections need the customer's attention:
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::SystemTime;
/// use understory_auth::{Company, GrantState, GrantStore, MemoryGrantStore, RefreshToken, SaveOutcome, StoredGrant};
///
/// let store = MemoryGrantStore::new();
/// let grant = StoredGrant::new(
///     RefreshToken::new("ory_rt_1"),
///     Company::new("cmp_123", "Fjord Kayaks"),
///     vec!["offline".into()],
///     SystemTime::now(),
/// );
/// // A completed authorization: written whatever was there.
/// let SaveOutcome::Saved { version } = store.save("tenant-42", &grant, None).await? else {
///     unreachable!("an unconditional save is not refused");
/// };
///
/// // A refresh: the rotated token is saved only over the version that was refreshed.
/// let mut refreshed = store.load("tenant-42").await?.expect("stored");
/// refreshed.refresh_token = RefreshToken::new("ory_rt_2");
/// assert!(matches!(store.save("tenant-42", &refreshed, Some(version)).await?, SaveOutcome::Saved { .. }));
/// // A second write over the same version loses.
/// assert_eq!(store.save("tenant-42", &refreshed, Some(version)).await?, SaveOutcome::Conflict);
///
/// for summary in store.list().await? {
///     if summary.state == GrantState::NeedsReauthorization {
///         println!("ask {} to connect again", summary.key);
///     }
/// }
/// # Ok::<(), understory_auth::GrantStoreError>(())
/// # }).unwrap();
/// ```
///
/// # Implementing it
///
/// A store over a map (what a database does with a table, a sequence and a lease column):
///
/// ```
/// use std::collections::HashMap;
/// use std::time::{Duration, Instant};
/// use understory_auth::{GrantStore, GrantStoreError, GrantSummary, SaveOutcome, StoredGrant};
///
/// #[derive(Default)]
/// struct MapStore {
///     inner: parking_lot::Mutex<Tables>,
/// }
///
/// #[derive(Default)]
/// struct Tables {
///     grants: HashMap<String, StoredGrant>,
///     leases: HashMap<String, (String, Instant)>,
///     sequence: u64,
/// }
///
/// #[async_trait::async_trait]
/// impl GrantStore for MapStore {
///     async fn load(&self, key: &str) -> Result<Option<StoredGrant>, GrantStoreError> {
///         Ok(self.inner.lock().grants.get(key).cloned())
///     }
///     async fn save(
///         &self,
///         key: &str,
///         grant: &StoredGrant,
///         expected_version: Option<u64>,
///     ) -> Result<SaveOutcome, GrantStoreError> {
///         let mut tables = self.inner.lock();
///         let current = tables.grants.get(key).map(|grant| grant.version);
///         if expected_version.is_some() && current != expected_version {
///             return Ok(SaveOutcome::Conflict);
///         }
///         tables.sequence += 1; // never reused, even after a delete
///         let mut stored = grant.clone();
///         stored.version = tables.sequence;
///         tables.grants.insert(key.to_owned(), stored);
///         Ok(SaveOutcome::Saved { version: tables.sequence })
///     }
///     async fn delete(&self, key: &str) -> Result<bool, GrantStoreError> {
///         Ok(self.inner.lock().grants.remove(key).is_some())
///     }
///     async fn list(&self) -> Result<Vec<GrantSummary>, GrantStoreError> {
///         let tables = self.inner.lock();
///         let summary = |(key, grant): (&String, &StoredGrant)| {
///             GrantSummary::new(key.clone(), grant.refreshed_at, grant.state)
///         };
///         Ok(tables.grants.iter().map(summary).collect())
///     }
///     async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, GrantStoreError> {
///         let mut tables = self.inner.lock();
///         let now = Instant::now();
///         let taken = tables.leases.get(key).is_some_and(|(other, until)| other != holder && *until > now);
///         if !taken {
///             tables.leases.insert(key.to_owned(), (holder.to_owned(), now + ttl));
///         }
///         Ok(!taken)
///     }
///     async fn release(&self, key: &str, holder: &str) -> Result<(), GrantStoreError> {
///         let mut tables = self.inner.lock();
///         if tables.leases.get(key).is_some_and(|(owner, _)| owner == holder) {
///             tables.leases.remove(key);
///         }
///         Ok(())
///     }
/// }
/// # let _ = MapStore::default();
/// ```
///
/// [`MemoryGrantStore`]: crate::MemoryGrantStore
#[async_trait]
pub trait GrantStore: Send + Sync + 'static {
    /// The grant stored under `key`, with its current [`version`](StoredGrant::version),
    /// or `None` if there is none.
    async fn load(&self, key: &str) -> Result<Option<StoredGrant>, GrantStoreError>;

    /// Writes `grant` under `key`: with `expected_version` `Some(v)` only if the key holds
    /// version `v` now (else [`SaveOutcome::Conflict`], also when there is no grant), with
    /// `None` unconditionally. Returns the new version, larger than every version returned
    /// before for this key. `grant.version` is ignored.
    async fn save(
        &self,
        key: &str,
        grant: &StoredGrant,
        expected_version: Option<u64>,
    ) -> Result<SaveOutcome, GrantStoreError>;

    /// Marks the grant under `key` as [needing re-authorization](GrantState::NeedsReauthorization),
    /// if it is still at `version` (a grant replaced since, by a new authorization, is left
    /// alone: [`SaveOutcome::Conflict`]). The new state takes a new version.
    ///
    /// The default loads the grant and saves it changed, with `Some(version)`; a store can
    /// do it in one step.
    async fn mark_needs_reauthorization(
        &self,
        key: &str,
        version: u64,
    ) -> Result<SaveOutcome, GrantStoreError> {
        let Some(mut grant) = self.load(key).await? else {
            return Ok(SaveOutcome::Conflict);
        };
        if grant.version != version {
            return Ok(SaveOutcome::Conflict);
        }
        grant.state = GrantState::NeedsReauthorization;
        self.save(key, &grant, Some(version)).await
    }

    /// Removes the grant under `key`; returns whether there was one.
    async fn delete(&self, key: &str) -> Result<bool, GrantStoreError>;

    /// Every stored grant, in no particular order: for keeping idle connections alive and
    /// finding those that need re-authorization.
    async fn list(&self) -> Result<Vec<GrantSummary>, GrantStoreError>;

    /// Takes the refresh lease of `key` for `holder` (a random id of one process's
    /// refresh), for `ttl`, unless another holder has it and its `ttl` has not run out.
    /// Returns whether `holder` holds it now. Taking it again as the same holder extends it.
    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, GrantStoreError>;

    /// Releases the refresh lease of `key`, if `holder` holds it (otherwise nothing).
    async fn release(&self, key: &str, holder: &str) -> Result<(), GrantStoreError>;
}
