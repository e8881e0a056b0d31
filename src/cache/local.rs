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
//! Otherwise (no copy yet, the token changed, or close to or past its refresh instant) the
//! cache takes the precise path: the read lock, `Instant::now()`, the expiry and refresh
//! checks, and a new copy when the token changed.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use self::clock::Tick;
use super::rejection::Held;
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

/// What this thread has of the current token.
pub(super) enum Found<R> {
    /// Its copy, far from the refresh instant: what `read` made of it.
    Fast(R),
    /// Its copy, close to or past the refresh instant: the precise clock decides.
    Near(Arc<Held>),
    /// No copy of the current token (or none is current).
    Missing,
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

/// Steps 1 to 3 above for the token `current` names.
#[inline]
pub(super) fn find<R>(current: &Current, read: impl Fn(&Arc<Held>) -> R) -> Found<R> {
    let current = current.0.load(Ordering::Acquire);
    if current == 0 {
        return Found::Missing;
    }
    COPIES
        .try_with(|copies| {
            let copies = copies.try_borrow().ok()?;
            let copy = copies.iter().find(|c| c.id == current)?;
            Some(if clock::before(copy.fast_until) {
                Found::Fast(read(&copy.held))
            } else {
                Found::Near(Arc::clone(&copy.held))
            })
        })
        .ok()
        .flatten()
        .unwrap_or(Found::Missing)
}

/// Keeps `held`, a new copy whose token's refresh instant is `lead` from now, as this
/// thread's copy for its cache, in place of the cache's old copy or a dead cache's.
pub(super) fn keep(held: &Arc<Held>, lead: Duration) {
    let copy = ThreadCopy {
        id: held.token().id().get(),
        held: Arc::clone(held),
        fast_until: clock::deadline(lead.saturating_sub(COARSE_CLOCK_TOLERANCE)),
    };
    let _ = COPIES.try_with(|copies| {
        let Ok(mut copies) = copies.try_borrow_mut() else {
            return;
        };
        let reusable = copies
            .iter()
            .position(|c| c.held.same_cache(held) || c.held.orphaned());
        match reusable {
            Some(i) => copies[i] = copy,
            None if copies.len() < COPIES_PER_THREAD => copies.push(copy),
            None => {
                copies.remove(0);
                copies.push(copy);
            }
        }
    });
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
