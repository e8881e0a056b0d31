//! The hot path in front of the shared slot: each thread's own copy of the current token,
//! read without writing anything another thread reads.
//!
//! The slot (`RwLock<Option<AccessToken>>`) stays the source of truth. Next to it,
//! [`Current`] holds the id of the token in it (0 for none), written only when the slot is,
//! under its write lock. A thread that asks for the token
//!
//! 1. loads that id (a read of a line nobody writes until the token changes, so it stays in
//!    every core's cache),
//! 2. looks in its thread-local table for its copy of that token: an `AccessToken` with its
//!    own reference count and its own header bytes, made once per thread per token, so that
//!    handing out clones of it writes only this thread's memory,
//! 3. reads a coarse monotonic clock (`CLOCK_MONOTONIC_COARSE` through the vDSO on Linux,
//!    a few ns) and, while the copy is more than [`COARSE_CLOCK_TOLERANCE`] before its
//!    token's refresh instant, hands the copy out.
//!
//! Otherwise (no copy yet, the token changed, or close to or past its refresh instant) it
//! takes the precise path: the read lock, `Instant::now()`, the expiry and refresh checks of
//! the module above, and a new copy when the token changed.
//!
//! **Expired means expired.** The coarse clock only decides that a token is far from its
//! refresh instant, which is at least the refresh margin before the instant it stops being
//! handed out; it lags the precise monotonic clock it is derived from by at most one kernel
//! tick (1–10 ms), far less than [`COARSE_CLOCK_TOLERANCE`], so the coarse test can never
//! pass for a token that the precise clock would find due, let alone expired. The clock is
//! read on every call: no timer, so a stalled or shut-down runtime changes nothing. Only the
//! precise path follows tokio's clock when a test pauses it; the crate's own unit tests
//! (`cfg(test)`) and platforms without a coarse clock use tokio's clock for both.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use self::clock::Tick;
use super::{SharedCache, TokenCache};
use crate::token::AccessToken;

/// How far from a token's refresh instant the coarse clock must put us for the hot path to
/// skip the precise clock: many times the coarse clock's error (at most one kernel tick).
pub(super) const COARSE_CLOCK_TOLERANCE: Duration = Duration::from_millis(100);

/// How many caches' tokens a thread keeps copies of. A thread that alternates between more
/// live caches than this makes a new copy (a few allocations) when it comes back to one.
const COPIES_PER_THREAD: usize = 8;

/// The id of the token in the slot, 0 for none: changes only when the token does.
#[derive(Default)]
pub(super) struct Current(AtomicU64);

impl Current {
    /// Records what the slot now holds; call it under the slot's write lock.
    pub(super) fn publish(&self, token: Option<&AccessToken>) {
        let id = token.map_or(0, |token| token.id().get());
        self.0.store(id, Ordering::Release);
    }
}

/// A token as handed out by one thread: its own copy, and the cache to report the API's
/// answer to.
pub(crate) struct Held {
    token: AccessToken,
    cache: Weak<dyn Rejections>,
}

/// What a [`Held`] needs of its cache, whatever the cache's owner keeps beside it.
trait Rejections: Send + Sync {
    /// [`TokenCache::reject`] for a 401 to a request carrying `token`: whether to resend.
    fn rejected(self: Arc<Self>, token: &AccessToken) -> bool;
}

impl<M: Send + Sync + 'static> Rejections for SharedCache<M> {
    fn rejected(self: Arc<Self>, token: &AccessToken) -> bool {
        TokenCache { shared: self }.reject(token).resend()
    }
}

impl Held {
    /// A handle for `token`, which did not come from a thread's table (a freshly fetched one).
    pub(super) fn new<M: Send + Sync + 'static>(
        cache: &TokenCache<M>,
        token: AccessToken,
    ) -> Arc<Held> {
        Arc::new(Held {
            token,
            cache: Arc::downgrade(&cache.shared) as Weak<dyn Rejections>,
        })
    }

    #[inline]
    pub(crate) fn token(&self) -> &AccessToken {
        &self.token
    }

    /// [`TokenCache::answered`] for this token: whether the request should be resent. The
    /// cache is reached (a shared reference count) only for a 401; false if it is gone.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    #[inline] // on every response the layer sees: inlined into the response future's poll
    pub(crate) fn answered(&self, status: http::StatusCode) -> bool {
        // A tower service answers for the URI it was called with: the token's origin.
        super::is_rejection(&self.token, status, || true)
            && self
                .cache
                .upgrade()
                .is_some_and(|cache| cache.rejected(&self.token))
    }
}

struct ThreadCopy {
    id: u64,
    held: Arc<Held>,
    /// Before this coarse instant the token is far from its refresh instant.
    fast_until: Tick,
}

thread_local! {
    static COPIES: RefCell<Vec<ThreadCopy>> = const { RefCell::new(Vec::new()) };
}

/// The usable token of `cache`, read by `read`, and a background refresh started if it is
/// due: the thread's copy when it has one of the current token.
pub(super) fn lookup<M: Send + Sync + 'static, R>(
    cache: &TokenCache<M>,
    read: impl Fn(&Arc<Held>) -> R,
) -> Option<R> {
    let current = cache.shared.current.0.load(Ordering::Acquire);
    let found = COPIES
        .try_with(|copies| {
            let copies = copies.try_borrow().ok()?;
            let copy = copies.iter().find(|c| c.id == current && current != 0)?;
            Some(if clock::before(copy.fast_until) {
                Ok(read(&copy.held))
            } else {
                Err(Arc::clone(&copy.held))
            })
        })
        .ok()
        .flatten();
    let held = match found {
        Some(Ok(value)) => return Some(value),
        Some(Err(held)) => held,
        None => copy_current(cache)?,
    };
    // Close to or past the refresh instant: the precise clock decides.
    let now = Instant::now();
    if now >= held.token.usable_until() {
        return None;
    }
    if now >= held.token.refresh_at() {
        cache.refresh_in_background(now);
    }
    Some(read(&held))
}

/// Copies the slot's token for this thread, if it is usable, and keeps the copy.
fn copy_current<M: Send + Sync + 'static>(cache: &TokenCache<M>) -> Option<Arc<Held>> {
    let token = cache.shared.slot.read().clone()?;
    let now = Instant::now();
    if now >= token.usable_until() {
        return None;
    }
    let lead = token.refresh_at().saturating_duration_since(now);
    let held = Held::new(cache, token.thread_copy());
    let copy = ThreadCopy {
        id: token.id().get(),
        held: Arc::clone(&held),
        fast_until: clock::deadline(lead.saturating_sub(COARSE_CLOCK_TOLERANCE)),
    };
    let _ = COPIES.try_with(|copies| {
        let Ok(mut copies) = copies.try_borrow_mut() else {
            return;
        };
        // Replace this cache's old copy, or a dead cache's, or make room.
        let reusable = copies
            .iter()
            .position(|c| c.held.cache.ptr_eq(&held.cache) || c.held.cache.strong_count() == 0);
        match reusable {
            Some(i) => copies[i] = copy,
            None if copies.len() < COPIES_PER_THREAD => copies.push(copy),
            None => {
                copies.remove(0);
                copies.push(copy);
            }
        }
    });
    Some(held)
}

/// `CLOCK_MONOTONIC_COARSE` through the vDSO: the time of the last kernel tick, on the same
/// timeline as the precise monotonic clock `Instant` reads.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[cfg_attr(test, allow(dead_code))]
mod coarse {
    use std::time::Duration;

    /// Nanoseconds of `CLOCK_MONOTONIC_COARSE`.
    pub(super) type Tick = u64;

    pub(super) fn now() -> Tick {
        nanos(rustix::time::ClockId::MonotonicCoarse)
    }

    pub(super) fn nanos(clock: rustix::time::ClockId) -> Tick {
        let t = rustix::time::clock_gettime(clock);
        // Monotonic time is never negative, so the casts are exact.
        (t.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec as u64)
    }

    /// The coarse instant `lead` from now.
    pub(super) fn deadline(lead: Duration) -> Tick {
        now().saturating_add(u64::try_from(lead.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Whether the coarse clock is still before `deadline`.
    #[inline]
    pub(super) fn before(deadline: Tick) -> bool {
        now() < deadline
    }
}

/// Tokio's clock, where there is no coarse clock and in the crate's unit tests (which pause
/// it).
#[cfg_attr(
    all(not(test), any(target_os = "linux", target_os = "android")),
    allow(dead_code)
)]
mod precise {
    use std::time::Duration;
    use tokio::time::Instant;

    pub(super) type Tick = Instant;

    pub(super) fn deadline(lead: Duration) -> Tick {
        let now = Instant::now();
        now.checked_add(lead).unwrap_or(now)
    }

    pub(super) fn before(deadline: Tick) -> bool {
        Instant::now() < deadline
    }
}

/// The hot path's clock.
#[cfg(all(not(test), any(target_os = "linux", target_os = "android")))]
use coarse as clock;
#[cfg(not(all(not(test), any(target_os = "linux", target_os = "android"))))]
use precise as clock;

#[cfg(test)]
mod tests;
