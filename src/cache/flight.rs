//! Single flight: at most one fetch runs per cache, as a spawned task whose outcome every
//! waiting caller shares. A fetch has a deadline (its start plus the load timeout); callers
//! stop waiting at the deadline plus [`STRANDED_FETCH_GRACE`], and the next caller replaces
//! a fetch still running then, so no caller ever waits for a fetch nobody drives.

use std::sync::Weak;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::Error;
use crate::schedule::{Schedule, Timing};
use crate::token::{AccessToken, GrantedToken};

/// How long past a fetch's deadline its callers still wait for it. A fetch runs on the
/// runtime of the caller that started it; if nobody drives that runtime (a current-thread
/// runtime left idle between `block_on` calls), its own timeout never fires, so callers
/// give up on it at its deadline plus this grace, and the next caller starts a new one.
pub(super) const STRANDED_FETCH_GRACE: Duration = Duration::from_secs(1);

/// How a flight ended, as every caller waiting for it sees it.
#[derive(Clone)]
pub(super) enum Landed {
    /// The fetch ran to its end (a panic counts as a failure).
    Done(Result<AccessToken, Error>),
    /// The fetch was dropped before it ended: its runtime shut down, or it was replaced.
    Cancelled,
}

type Outcome = Shared<BoxFuture<'static, Landed>>;

/// What a flight reports to its cache. The cache may be gone by then: the flight holds it
/// weakly, so dropping the last handle stops the fetch.
pub(super) trait Landing: Send + Sync {
    /// The fetch's task started running (a token request is counted only then).
    fn started(&self, background: bool);
    /// The fetch ended with `result`: the cache records it and says what callers get.
    fn land(
        &self,
        flight: u64,
        started: Instant,
        elapsed: Duration,
        result: Result<GrantedToken, Error>,
    ) -> Result<AccessToken, Error>;
    /// The fetch's task was dropped before it ended.
    fn dropped(&self, flight: u64);
}

/// The flight callers join, and the numbering of flights (kept under the cache's lock).
#[derive(Default)]
pub(super) struct Flights {
    inflight: Option<Inflight>,
    /// The number of the last flight started; each flight has its own.
    last: u64,
}

struct Inflight {
    flight: u64,
    outcome: Outcome,
    /// When the fetch's own timeout fires, if its runtime drives it.
    deadline: Instant,
    abort: Option<AbortHandle>,
}

impl Inflight {
    /// Whether waiting any longer is pointless: it should have ended by now, so its runtime
    /// is not driving it.
    fn stranded(&self, now: Instant) -> bool {
        now >= self.deadline + STRANDED_FETCH_GRACE
    }

    fn wait(&self) -> Wait {
        Wait {
            flight: self.flight,
            outcome: self.outcome.clone(),
            give_up: self.deadline + STRANDED_FETCH_GRACE,
        }
    }
}

/// A caller's part in a flight: what to await, and when to stop.
pub(super) struct Wait {
    pub(super) flight: u64,
    pub(super) outcome: Outcome,
    pub(super) give_up: Instant,
}

/// A flight's task, to abort once no lock is held (dropping a task can run anything).
#[must_use]
pub(super) struct Abort(Option<AbortHandle>);

impl Abort {
    pub(super) fn now(self) {
        if let Some(handle) = self.0 {
            handle.abort();
        }
    }
}

impl Flights {
    /// The flight a caller at `now` joins, if one runs and is not stranded.
    pub(super) fn join(&self, now: Instant) -> Option<Wait> {
        let inflight = self.inflight.as_ref().filter(|f| !f.stranded(now))?;
        Some(inflight.wait())
    }

    /// Records a new flight as the one everyone joins, in place of any stranded one (to
    /// abort). [`Launch::spawn`] starts it once the lock is released.
    pub(super) fn record(
        &mut self,
        now: Instant,
        load_timeout: Duration,
        background: bool,
        cache: Weak<dyn Landing>,
    ) -> (Launch, Abort) {
        self.last += 1;
        let flight = self.last;
        let deadline = now + load_timeout;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let outcome = receiver
            .map(|landed| landed.unwrap_or(Landed::Cancelled))
            .boxed()
            .shared();
        let replaced = self.inflight.replace(Inflight {
            flight,
            outcome: outcome.clone(),
            deadline,
            abort: None,
        });
        let guard = FlightGuard {
            cache,
            flight,
            sender: Some(sender),
        };
        let launch = Launch {
            guard,
            background,
            outcome,
            deadline,
        };
        (launch, Abort(replaced.and_then(|f| f.abort)))
    }

    /// Remembers how to abort `flight`'s task, unless it is over already.
    pub(super) fn spawned(&mut self, flight: u64, abort: AbortHandle) {
        if let Some(inflight) = self.inflight.as_mut().filter(|f| f.flight == flight) {
            inflight.abort = Some(abort);
        }
    }

    /// `flight` ended or was dropped: whether it was the one callers join (then forgotten).
    pub(super) fn end(&mut self, flight: u64) -> bool {
        let current = self.inflight.as_ref().is_some_and(|f| f.flight == flight);
        if current {
            self.inflight = None;
        }
        current
    }

    /// Forgets `flight` if callers still join it, so that the next caller starts a new one.
    pub(super) fn forget(&mut self, flight: u64) -> Option<Abort> {
        match &self.inflight {
            Some(inflight) if inflight.flight == flight => {
                self.inflight.take().map(|f| Abort(f.abort))
            }
            _ => None,
        }
    }

    /// Forgets whatever runs (the cache is being dropped).
    pub(super) fn clear(&mut self) -> Abort {
        Abort(self.inflight.take().and_then(|f| f.abort))
    }
}

/// A recorded flight, not yet spawned.
pub(super) struct Launch {
    guard: FlightGuard,
    background: bool,
    outcome: Outcome,
    /// When the fetch's own timeout fires: counted from when the flight was recorded, as
    /// its callers count, not from the task's first poll.
    deadline: Instant,
}

impl Launch {
    /// Spawns the fetch on `runtime`. Called without any lock held: a runtime that is
    /// shutting down drops the task inside `spawn`, and its guard then reports to the cache.
    pub(super) fn spawn(
        self,
        runtime: &tokio::runtime::Handle,
        fetch: BoxFuture<'static, Result<GrantedToken, Error>>,
        load_timeout: Duration,
    ) -> (AbortHandle, Wait) {
        let Launch {
            guard,
            background,
            outcome,
            deadline,
        } = self;
        let flight = guard.flight;
        let span = tracing::info_span!("understory_auth.fetch_token", background);
        let task = runtime.spawn(
            async move {
                guard.started(background);
                let started = Instant::now();
                // A task first polled late must not run past the deadline its callers count.
                let result = match tokio::time::timeout_at(deadline, fetch).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Timeout {
                        after: load_timeout,
                    }),
                };
                guard.finish(started, result);
            }
            .instrument(span),
        );
        let wait = Wait {
            flight,
            outcome,
            give_up: deadline + STRANDED_FETCH_GRACE,
        };
        (task.abort_handle(), wait)
    }
}

/// Owned by the fetch task: reports the outcome to the cache and hands it to the waiters.
/// If the task is dropped before it ends (aborted, its runtime shut down, a panic), the
/// waiters learn it too, so the cache can never be left waiting for it.
struct FlightGuard {
    cache: Weak<dyn Landing>,
    flight: u64,
    sender: Option<tokio::sync::oneshot::Sender<Landed>>,
}

impl FlightGuard {
    fn started(&self, background: bool) {
        if let Some(cache) = self.cache.upgrade() {
            cache.started(background);
        }
    }

    fn finish(mut self, started: Instant, result: Result<GrantedToken, Error>) {
        let elapsed = started.elapsed();
        let result = match self.cache.upgrade() {
            Some(cache) => cache.land(self.flight, started, elapsed, result),
            // Nobody is waiting without the cache: the outcome only needs a shape.
            None => result.map(|granted| {
                let schedule = Schedule::new(started, granted.lifetime(), 0.0, Timing::default());
                AccessToken::new(granted, schedule)
            }),
        };
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(Landed::Done(result));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        // Whoever drops the task holds no lock of the cache's.
        if let Some(cache) = self.cache.upgrade() {
            cache.dropped(self.flight);
        }
        let landed = if std::thread::panicking() {
            Landed::Done(Err(Error::Interrupted {
                reason: "the token request panicked",
            }))
        } else {
            Landed::Cancelled
        };
        let _ = sender.send(landed);
    }
}

/// Whether the caller's runtime is shutting down (or gone): such a runtime drops a task at
/// once instead of running it, so a probe task is finished as soon as it is spawned. Only
/// asked before waiting for a fetch, never on the hot path.
pub(super) fn runtime_shutting_down() -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return true;
    };
    let probe = runtime.spawn(std::future::pending::<()>());
    let dropped = probe.is_finished();
    probe.abort();
    dropped
}
