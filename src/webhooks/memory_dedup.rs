//! [`MemoryWebhookDedup`]: the `webhook-id`s of one process, with expiry, bounded in size.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::dedup::bounded;
use super::{WebhookDedup, WebhookDedupError, WebhookIdState};

/// How long a processed `webhook-id` is remembered by default ([`MemoryWebhookDedup::ttl`],
/// `RedisWebhookDedup::ttl`): 24 hours, about as long as Standard Webhooks senders retry. A
/// later redelivery is processed again.
pub const DEFAULT_WEBHOOK_DEDUP_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How many ids a [`MemoryWebhookDedup`] holds at most by default
/// ([`MemoryWebhookDedup::capacity`]): 100,000, about 10 MiB.
pub const DEFAULT_WEBHOOK_DEDUP_CAPACITY: usize = 100_000;

/// A [`WebhookDedup`] in this process's memory: a processed id is remembered for a
/// [ttl](Self::ttl), a claim held for the layer's lease, and at most
/// [capacity](Self::capacity) ids are held (the oldest go first), each as a 16-byte hash
/// (about 100 bytes an id, whatever its length). Clones share the ids. For a fleet of
/// receivers behind a load balancer, use a shared store such as
/// [`RedisWebhookDedup`](crate::webhooks::RedisWebhookDedup).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use understory_auth::webhooks::{MemoryWebhookDedup, WebhookDedup, WebhookIdState};
///
/// let dedup = MemoryWebhookDedup::new().ttl(Duration::from_secs(3600)).capacity(10_000);
/// let lease = Duration::from_secs(60);
/// assert_eq!(dedup.claim("msg_1", "run-1", lease).await?, WebhookIdState::New);
/// assert_eq!(dedup.claim("msg_1", "run-2", lease).await?, WebhookIdState::InProgress);
/// dedup.release("msg_1", "run-1").await?; // run 1 failed
/// assert_eq!(dedup.claim("msg_1", "run-2", lease).await?, WebhookIdState::New);
/// dedup.complete("msg_1", "run-2").await?; // run 2 succeeded
/// assert_eq!(dedup.claim("msg_1", "run-3", lease).await?, WebhookIdState::Done);
/// # Ok::<(), understory_auth::webhooks::WebhookDedupError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryWebhookDedup {
    ids: Arc<Mutex<Ids>>,
    ttl: Duration,
    capacity: usize,
}

/// A 16-byte hash of an id or an owner token: what the store keeps of it.
type Hashed = [u8; 16];

fn hashed(text: &str) -> Hashed {
    let digest = Sha256::digest(text.as_bytes());
    Hashed::try_from(&digest[..16]).unwrap_or_default()
}

/// One id's state.
struct Entry {
    /// When the claim's lease or the processed id's ttl runs out.
    expires: Instant,
    /// The owner of the claim while in progress; `None` once processed.
    holder: Option<Hashed>,
    /// The entry's sequence number in [`Ids::order`].
    seq: u64,
}

/// The remembered ids, and the order they were recorded in.
#[derive(Default)]
struct Ids {
    live: HashMap<Hashed, Entry>,
    /// Entries, oldest first; one whose sequence number no longer matches `live` is stale
    /// (released or recorded again) and only waits to be dropped.
    order: VecDeque<(u64, Hashed)>,
    next: u64,
}

impl MemoryWebhookDedup {
    /// A store with the default [ttl](DEFAULT_WEBHOOK_DEDUP_TTL) and
    /// [capacity](DEFAULT_WEBHOOK_DEDUP_CAPACITY).
    pub fn new() -> Self {
        MemoryWebhookDedup {
            ids: Arc::default(),
            ttl: DEFAULT_WEBHOOK_DEDUP_TTL,
            capacity: DEFAULT_WEBHOOK_DEDUP_CAPACITY,
        }
    }

    /// How long a processed id is remembered (default [`DEFAULT_WEBHOOK_DEDUP_TTL`]), within
    /// 1 ms and [`MAX_WEBHOOK_DEDUP_DURATION`](crate::webhooks::MAX_WEBHOOK_DEDUP_DURATION).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = bounded(ttl);
        self
    }

    /// How many ids are held at most (default [`DEFAULT_WEBHOOK_DEDUP_CAPACITY`], at
    /// least 1); when full, the oldest is forgotten.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }
}

impl Default for MemoryWebhookDedup {
    fn default() -> Self {
        Self::new()
    }
}

impl Ids {
    /// Drops the oldest entries while they have expired, or while `full` says so.
    fn drop_oldest(&mut self, now: Instant, full: impl Fn(&Self) -> bool) {
        while let Some((seq, id)) = self.order.front() {
            let live = self.live.get(id).filter(|entry| entry.seq == *seq);
            let expired = live.is_none_or(|entry| entry.expires <= now);
            if !expired && !full(self) {
                break;
            }
            let was_live = live.is_some();
            if let Some((_, id)) = self.order.pop_front() {
                if was_live {
                    self.live.remove(&id);
                }
            }
        }
    }

    /// Records `id` for `duration` from `now`, held by `holder` (`None`: processed).
    fn record(
        &mut self,
        id: Hashed,
        holder: Option<Hashed>,
        now: Instant,
        duration: Duration,
        capacity: usize,
    ) {
        self.drop_oldest(now, |ids| ids.order.len() >= capacity);
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        // `duration` is bounded; were it not, the entry would expire at once, not panic.
        let expires = now.checked_add(duration).unwrap_or(now);
        self.live.insert(
            id,
            Entry {
                expires,
                holder,
                seq,
            },
        );
        self.order.push_back((seq, id));
    }
}

#[async_trait]
impl WebhookDedup for MemoryWebhookDedup {
    async fn claim(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<WebhookIdState, WebhookDedupError> {
        let (id, owner) = (hashed(key), hashed(owner));
        let now = Instant::now();
        let mut ids = self.ids.lock();
        ids.drop_oldest(now, |_| false);
        if let Some(entry) = ids.live.get(&id).filter(|entry| entry.expires > now) {
            return Ok(match entry.holder {
                Some(_) => WebhookIdState::InProgress,
                None => WebhookIdState::Done,
            });
        }
        ids.record(id, Some(owner), now, bounded(lease), self.capacity);
        Ok(WebhookIdState::New)
    }

    async fn complete(&self, key: &str, _owner: &str) -> Result<(), WebhookDedupError> {
        let id = hashed(key);
        let now = Instant::now();
        let expires = now.checked_add(self.ttl).unwrap_or(now);
        let mut ids = self.ids.lock();
        // In place when the claim is still there: an id keeps one place in the order.
        match ids.live.get_mut(&id) {
            Some(entry) => {
                entry.holder = None;
                entry.expires = expires;
            }
            None => ids.record(id, None, now, self.ttl, self.capacity),
        }
        Ok(())
    }

    async fn release(&self, key: &str, owner: &str) -> Result<(), WebhookDedupError> {
        let (id, owner) = (hashed(key), hashed(owner));
        let mut ids = self.ids.lock();
        if ids
            .live
            .get(&id)
            .is_some_and(|entry| entry.holder == Some(owner))
        {
            ids.live.remove(&id);
        }
        Ok(())
    }
}

impl fmt::Debug for MemoryWebhookDedup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryWebhookDedup")
            .field("ids", &self.ids.lock().live.len())
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::MAX_WEBHOOK_DEDUP_DURATION;
    use WebhookIdState::{Done, InProgress, New};

    const LEASE: Duration = Duration::from_secs(60);

    async fn claim(dedup: &MemoryWebhookDedup, id: &str, owner: &str) -> WebhookIdState {
        dedup.claim(id, owner, LEASE).await.unwrap()
    }

    /// Claims `id` and completes it at once.
    async fn process(dedup: &MemoryWebhookDedup, id: &str) {
        assert_eq!(claim(dedup, id, "p").await, New);
        dedup.complete(id, "p").await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_processed_id_is_remembered_for_its_ttl_exactly() {
        let dedup = MemoryWebhookDedup::new().ttl(Duration::from_secs(60));
        process(&dedup, "a").await;
        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert_eq!(claim(&dedup, "a", "x").await, Done);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(claim(&dedup, "a", "x").await, New);
        assert_eq!(claim(&dedup, "a", "y").await, InProgress);
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_is_taken_over_when_its_lease_runs_out_exactly() {
        let dedup = MemoryWebhookDedup::new();
        // The first run's process died: nothing releases or completes its claim.
        assert_eq!(claim(&dedup, "a", "dead").await, New);
        tokio::time::advance(LEASE - Duration::from_millis(1)).await;
        assert_eq!(claim(&dedup, "a", "second").await, InProgress);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(claim(&dedup, "a", "second").await, New, "taken over");
        // The dead run's late release does not free the new claim.
        dedup.release("a", "dead").await.unwrap();
        assert_eq!(claim(&dedup, "a", "third").await, InProgress);
        // The new claim's lease counts from its own claim.
        tokio::time::advance(LEASE - Duration::from_millis(1)).await;
        assert_eq!(claim(&dedup, "a", "third").await, InProgress);
        dedup.complete("a", "second").await.unwrap();
        assert_eq!(claim(&dedup, "a", "third").await, Done);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_owner_releases_a_claim() {
        let dedup = MemoryWebhookDedup::new();
        assert_eq!(claim(&dedup, "a", "first").await, New);
        dedup.release("a", "someone else").await.unwrap();
        assert_eq!(claim(&dedup, "a", "second").await, InProgress);
        dedup.release("a", "first").await.unwrap();
        assert_eq!(claim(&dedup, "a", "second").await, New);
        // A release after completion leaves it done.
        dedup.complete("a", "second").await.unwrap();
        dedup.release("a", "second").await.unwrap();
        assert_eq!(claim(&dedup, "a", "third").await, Done);
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_ttl_and_lease_saturate_instead_of_panicking() {
        let dedup = MemoryWebhookDedup::new().ttl(Duration::MAX);
        assert_eq!(dedup.ttl, MAX_WEBHOOK_DEDUP_DURATION);
        assert_eq!(dedup.claim("a", "p", Duration::MAX).await.unwrap(), New);
        tokio::time::advance(MAX_WEBHOOK_DEDUP_DURATION - Duration::from_millis(1)).await;
        assert_eq!(claim(&dedup, "a", "q").await, InProgress);
        dedup.complete("a", "p").await.unwrap();
        tokio::time::advance(MAX_WEBHOOK_DEDUP_DURATION - Duration::from_millis(1)).await;
        assert_eq!(claim(&dedup, "a", "q").await, Done);
        // Zero rounds up to a millisecond.
        let short = MemoryWebhookDedup::new().ttl(Duration::ZERO);
        process(&short, "b").await;
        assert_eq!(claim(&short, "b", "q").await, Done);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(claim(&short, "b", "q").await, New);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_forgets_its_oldest_id_first() {
        let dedup = MemoryWebhookDedup::new().capacity(2);
        for id in ["a", "b", "c"] {
            process(&dedup, id).await;
        }
        assert_eq!(dedup.ids.lock().live.len(), 2);
        assert_eq!(claim(&dedup, "c", "x").await, Done);
        assert_eq!(claim(&dedup, "b", "x").await, Done);
        assert_eq!(
            claim(&dedup, "a", "x").await,
            New,
            "the oldest was forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_id_is_kept_once_as_a_fixed_size_hash() {
        let dedup = MemoryWebhookDedup::new();
        let long = "x".repeat(4096);
        process(&dedup, &long).await;
        assert_eq!(claim(&dedup, &long, "q").await, Done);
        let ids = dedup.ids.lock();
        // What one id costs: its map entry and its place in the order, whatever its length.
        assert_eq!(ids.live.len(), 1);
        assert_eq!(
            std::mem::size_of::<(Hashed, Entry)>() + std::mem::size_of::<(u64, Hashed)>(),
            88
        );
    }

    #[tokio::test(start_paused = true)]
    async fn released_ids_can_be_claimed_again_and_stale_entries_stay_bounded() {
        let dedup = MemoryWebhookDedup::new().capacity(3);
        for _ in 0..100 {
            assert_eq!(claim(&dedup, "a", "p").await, New);
            dedup.release("a", "p").await.unwrap();
        }
        process(&dedup, "b").await;
        let ids = dedup.ids.lock();
        assert!(ids.order.len() <= 3, "{} entries", ids.order.len());
        assert_eq!(ids.live.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_entry_does_not_evict_a_newer_claim_of_the_same_id() {
        let dedup = MemoryWebhookDedup::new().capacity(2);
        assert_eq!(claim(&dedup, "a", "p").await, New);
        dedup.release("a", "p").await.unwrap();
        process(&dedup, "a").await;
        // The first claim's entry is dropped to make room; the second claim stays.
        process(&dedup, "b").await;
        assert_eq!(claim(&dedup, "a", "x").await, Done);
        assert_eq!(claim(&dedup, "b", "x").await, Done);
    }
}
