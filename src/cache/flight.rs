//! Single flight: at most one fetch per cache, a spawned task whose outcome every waiter
//! shares; callers give up at its deadline plus [`STRANDED_FETCH_GRACE`].

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

/// How long past a fetch's deadline callers still wait: if nobody drives its runtime (a
/// current-thread runtime idle between `block_on` calls), its own timeout never fires.
pub(super) const STRANDED_FETCH_GRACE: Duration = Duration::from_secs(1);

/// How a flight ended, as every caller waiting for it sees it.
#[derive(Clone)]
pub(super) enum Landed {
    /// Ran to its end (a panic counts as a failure).
    Done(Result<AccessToken, Error>),
    /// Dropped before it ended: its runtime shut down, or it was replaced.
    Cancelled,
}

type Outcome = Shared<BoxFuture<'static, Landed>>;

/// What a flight reports to its cache, held weakly (dropping the last handle stops it).
pub(super) trait Landing: Send + Sync {
    fn started(&self, background: bool);
    /// The cache records `result` and says what callers get.
    fn land(
        &self,
        flight: u64,
        started: Instant,
        elapsed: Duration,
        result: Result<GrantedToken, Error>,
    ) -> Result<AccessToken, Error>;
    fn dropped(&self, flight: u64);
}

/// The flight callers join, and the numbering of flights (under the cache's lock).
#[derive(Default)]
pub(super) struct Flights {
    inflight: Option<Inflight>,
    last: u64,
}

struct Inflight {
    flight: u64,
    outcome: Outcome,
    deadline: Instant,
    abort: Option<AbortHandle>,
}

impl Inflight {
    /// Whether it should have ended by now, so its runtime is not driving it.
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

/// What a caller awaits, and when it stops.
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
    /// The flight a caller joins, if one runs and is not stranded.
    pub(super) fn join(&self, now: Instant) -> Option<Wait> {
        let inflight = self.inflight.as_ref().filter(|f| !f.stranded(now))?;
        Some(inflight.wait())
    }

    /// Records a new flight in place of any stranded one (to abort); [`Launch::spawn`]
    /// starts it once the lock is released.
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
        let inflight = Inflight {
            flight,
            outcome,
            deadline,
            abort: None,
        };
        let wait = inflight.wait();
        let replaced = self.inflight.replace(inflight);
        let guard = FlightGuard {
            cache,
            flight,
            sender: Some(sender),
        };
        let launch = Launch {
            guard,
            background,
            deadline,
            wait,
        };
        (launch, Abort(replaced.and_then(|f| f.abort)))
    }

    /// A flight number for a token obtained outside any flight (a seed).
    #[cfg(feature = "app")]
    pub(super) fn number(&mut self) -> u64 {
        self.last += 1;
        self.last
    }

    pub(super) fn spawned(&mut self, flight: u64, abort: AbortHandle) {
        if let Some(inflight) = self.inflight.as_mut().filter(|f| f.flight == flight) {
            inflight.abort = Some(abort);
        }
    }

    /// Whether `flight` was the one callers join (then forgotten).
    pub(super) fn end(&mut self, flight: u64) -> bool {
        self.forget(flight).is_some()
    }

    /// Forgets `flight` if callers still join it.
    pub(super) fn forget(&mut self, flight: u64) -> Option<Abort> {
        let current = self.inflight.as_ref().is_some_and(|f| f.flight == flight);
        current.then(|| self.clear())
    }

    pub(super) fn clear(&mut self) -> Abort {
        Abort(self.inflight.take().and_then(|f| f.abort))
    }
}

/// A recorded flight, not yet spawned.
pub(super) struct Launch {
    guard: FlightGuard,
    background: bool,
    /// Counted from when the flight was recorded, as its callers count, not the first poll.
    deadline: Instant,
    wait: Wait,
}

impl Launch {
    /// Spawns the fetch, without any lock held: a runtime shutting down drops the task
    /// inside `spawn`, and its guard reports to the cache.
    pub(super) fn spawn(
        self,
        runtime: &tokio::runtime::Handle,
        fetch: BoxFuture<'static, Result<GrantedToken, Error>>,
        load_timeout: Duration,
    ) -> (AbortHandle, Wait) {
        let Launch {
            guard,
            background,
            deadline,
            wait,
        } = self;
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
        (task.abort_handle(), wait)
    }
}

/// Owned by the fetch task: reports the outcome to the cache and the waiters, also when the
/// task is dropped (aborted, runtime shut down, panic).
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

/// Whether the caller's runtime is shutting down (or gone): it drops a probe task at once.
pub(super) fn runtime_shutting_down() -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return true;
    };
    let probe = runtime.spawn(std::future::pending::<()>());
    let dropped = probe.is_finished();
    probe.abort();
    dropped
}
