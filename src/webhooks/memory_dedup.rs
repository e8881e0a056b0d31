//! [`MemoryWebhookDedup`]: the `webhook-id`s of one process, with expiry, bounded in size.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{WebhookDedup, WebhookDedupError};

/// How long a [`MemoryWebhookDedup`] remembers an id unless [`MemoryWebhookDedup::ttl`] says
/// otherwise: 24 hours. A redelivery later than that is processed again. Understory does
/// not document its retry schedule; Standard Webhooks senders typically retry for about a
/// day, so this covers a delivery whose answer was lost.
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(understory_auth::webhooks::DEFAULT_WEBHOOK_DEDUP_TTL, Duration::from_secs(24 * 60 * 60));
/// ```
pub const DEFAULT_WEBHOOK_DEDUP_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How many ids a [`MemoryWebhookDedup`] holds at most unless
/// [`MemoryWebhookDedup::capacity`] says otherwise: 100,000 (a few MiB). When full, the
/// oldest id is forgotten first.
///
/// ```
/// assert_eq!(understory_auth::webhooks::DEFAULT_WEBHOOK_DEDUP_CAPACITY, 100_000);
/// ```
pub const DEFAULT_WEBHOOK_DEDUP_CAPACITY: usize = 100_000;

/// A [`WebhookDedup`] in this process's memory: each id is remembered for a
/// [ttl](Self::ttl), and at most [capacity](Self::capacity) ids are held (the oldest go
/// first). Clones share the ids. For a fleet of receivers behind a load balancer, use a
/// shared store such as [`RedisWebhookDedup`](crate::webhooks::RedisWebhookDedup) instead.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use understory_auth::webhooks::{MemoryWebhookDedup, WebhookDedup};
///
/// let dedup = MemoryWebhookDedup::new();
/// assert!(dedup.claim("msg_1").await?);
/// assert!(!dedup.claim("msg_1").await?); // a redelivery
/// dedup.release("msg_1").await?; // its processing failed
/// assert!(dedup.claim("msg_1").await?);
/// # Ok::<(), understory_auth::webhooks::WebhookDedupError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MemoryWebhookDedup {
    ids: Arc<Mutex<Ids>>,
    ttl: Duration,
    capacity: usize,
}

/// The remembered ids, and the order they were claimed in.
#[derive(Default)]
struct Ids {
    /// Each id with its claim's expiry and sequence number.
    live: HashMap<String, (Instant, u64)>,
    /// Claims, oldest first; an entry whose sequence number no longer matches `live` is
    /// stale (released or claimed again) and only waits to be dropped.
    order: VecDeque<(u64, String)>,
    next: u64,
}

impl MemoryWebhookDedup {
    /// A store with the default [ttl](DEFAULT_WEBHOOK_DEDUP_TTL) and
    /// [capacity](DEFAULT_WEBHOOK_DEDUP_CAPACITY).
    ///
    /// ```
    /// let dedup = understory_auth::webhooks::MemoryWebhookDedup::new();
    /// # let _ = dedup;
    /// ```
    pub fn new() -> Self {
        MemoryWebhookDedup {
            ids: Arc::default(),
            ttl: DEFAULT_WEBHOOK_DEDUP_TTL,
            capacity: DEFAULT_WEBHOOK_DEDUP_CAPACITY,
        }
    }

    /// How long an id is remembered (default [`DEFAULT_WEBHOOK_DEDUP_TTL`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// let dedup = understory_auth::webhooks::MemoryWebhookDedup::new().ttl(Duration::from_secs(3600));
    /// # let _ = dedup;
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many ids are held at most (default [`DEFAULT_WEBHOOK_DEDUP_CAPACITY`], at
    /// least 1); when full, the oldest is forgotten.
    ///
    /// ```
    /// let dedup = understory_auth::webhooks::MemoryWebhookDedup::new().capacity(10_000);
    /// # let _ = dedup;
    /// ```
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
    /// Drops the oldest claims while they have expired, or while `full` says so.
    fn drop_oldest(&mut self, now: Instant, full: impl Fn(&Self) -> bool) {
        while let Some((seq, id)) = self.order.front() {
            let live = self.live.get(id).filter(|(_, live_seq)| live_seq == seq);
            let expired = live.is_none_or(|(expires, _)| *expires <= now);
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
}

#[async_trait]
impl WebhookDedup for MemoryWebhookDedup {
    async fn claim(&self, id: &str) -> Result<bool, WebhookDedupError> {
        let now = Instant::now();
        let mut ids = self.ids.lock();
        ids.drop_oldest(now, |_| false);
        if ids.live.get(id).is_some_and(|(expires, _)| *expires > now) {
            return Ok(false);
        }
        ids.drop_oldest(now, |ids| ids.order.len() >= self.capacity);
        let seq = ids.next;
        ids.next = ids.next.wrapping_add(1);
        ids.live.insert(id.to_owned(), (now + self.ttl, seq));
        ids.order.push_back((seq, id.to_owned()));
        Ok(true)
    }

    async fn release(&self, id: &str) -> Result<(), WebhookDedupError> {
        self.ids.lock().live.remove(id);
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

    #[tokio::test(start_paused = true)]
    async fn an_id_is_remembered_for_its_ttl_exactly() {
        let dedup = MemoryWebhookDedup::new().ttl(Duration::from_secs(60));
        assert!(dedup.claim("a").await.unwrap());
        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert!(!dedup.claim("a").await.unwrap());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(dedup.claim("a").await.unwrap());
        assert!(!dedup.claim("a").await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_store_forgets_its_oldest_id_first() {
        let dedup = MemoryWebhookDedup::new().capacity(2);
        for id in ["a", "b", "c"] {
            assert!(dedup.claim(id).await.unwrap());
        }
        assert_eq!(dedup.ids.lock().live.len(), 2);
        assert!(!dedup.claim("c").await.unwrap());
        assert!(!dedup.claim("b").await.unwrap());
        assert!(dedup.claim("a").await.unwrap(), "the oldest was forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn released_ids_can_be_claimed_again_and_stale_entries_stay_bounded() {
        let dedup = MemoryWebhookDedup::new().capacity(3);
        for _ in 0..100 {
            assert!(dedup.claim("a").await.unwrap());
            dedup.release("a").await.unwrap();
        }
        assert!(dedup.claim("b").await.unwrap());
        let ids = dedup.ids.lock();
        assert!(ids.order.len() <= 3, "{} entries", ids.order.len());
        assert_eq!(ids.live.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_entry_does_not_evict_a_newer_claim_of_the_same_id() {
        let dedup = MemoryWebhookDedup::new().capacity(2);
        assert!(dedup.claim("a").await.unwrap());
        dedup.release("a").await.unwrap();
        assert!(dedup.claim("a").await.unwrap());
        // The first claim's entry is dropped to make room; the second claim stays.
        assert!(dedup.claim("b").await.unwrap());
        assert!(!dedup.claim("a").await.unwrap());
    }
}
