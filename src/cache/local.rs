//! The hot path: each thread's own copy of the current token (own reference count and
//! header bytes), found by the id [`Current`] publishes with every write to the slot, and
//! handed out while a coarse monotonic clock (`CLOCK_MONOTONIC_COARSE` via the vDSO, a few
//! ns) puts it more than [`COARSE_CLOCK_TOLERANCE`] before its refresh instant; otherwise
//! the cache takes the precise path. The coarse clock lags by at most a kernel tick, far
//! less than the tolerance, so it never passes a token the precise clock finds due. Unit
//! tests and platforms without it use tokio's clock.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use self::clock::Tick;

use super::rejection::Held;
use crate::token::AccessToken;

/// How far before the refresh instant the coarse clock must be: many kernel ticks.
pub(super) const COARSE_CLOCK_TOLERANCE: Duration = Duration::from_millis(100);

/// How many caches' tokens a thread keeps copies of (more cost a copy on each return).
const COPIES_PER_THREAD: usize = 8;

/// The id of the token in the slot, 0 for none: changes only when the token does.
#[derive(Default)]
pub(super) struct Current(AtomicU64);

impl Current {
    /// Call it under the slot's write lock.
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
    fast_until: Tick,
}

thread_local! {
    static COPIES: RefCell<Vec<ThreadCopy>> = const { RefCell::new(Vec::new()) };
}

/// This thread's copy of the token `current` names.
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

/// Keeps `held` (refresh due in `lead`) in place of its cache's old copy or a dead cache's.
/// Of the misses of a thread whose copies are all taken by other live caches, one in this
/// many makes a copy (in place of the oldest): a connection that turns hot gets one after a
/// few calls, while calls spread over many connections do not copy at every turn.
const ADMIT_EVERY: u32 = 16;

thread_local! {
    static CROWDED_MISSES: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread should keep a copy for `cache`: it has one to replace, a free or dead
/// cache's place, or (one miss in [`ADMIT_EVERY`]) the oldest copy's. Otherwise the cache
/// hands out the shared token.
pub(super) fn has_room(cache: *const ()) -> bool {
    let room = COPIES
        .try_with(|copies| {
            let copies = copies.try_borrow().ok()?;
            let room = copies.len() < COPIES_PER_THREAD
                || copies
                    .iter()
                    .any(|c| c.held.of_cache(cache) || c.held.orphaned());
            Some(room)
        })
        .ok()
        .flatten();
    match room {
        Some(true) => true,
        Some(false) => CROWDED_MISSES
            .try_with(|misses| {
                let n = misses.get().wrapping_add(1);
                misses.set(n);
                n % ADMIT_EVERY == 0
            })
            .unwrap_or(false),
        None => false,
    }
}

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

/// `CLOCK_MONOTONIC_COARSE`: the last kernel tick, on `Instant`'s timeline.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[cfg_attr(test, allow(dead_code))]
mod coarse {
    use std::time::Duration;

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

    pub(super) fn deadline(lead: Duration) -> Tick {
        now().saturating_add(u64::try_from(lead.as_nanos()).unwrap_or(u64::MAX))
    }

    #[inline]
    pub(super) fn before(deadline: Tick) -> bool {
        now() < deadline
    }
}

/// Tokio's clock, where there is no coarse clock and in unit tests (which pause it).
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

#[cfg(all(not(test), any(target_os = "linux", target_os = "android")))]
use coarse as clock;
#[cfg(not(all(not(test), any(target_os = "linux", target_os = "android"))))]
use precise as clock;

#[cfg(test)]
mod tests;
