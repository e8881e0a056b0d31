//! What the sandbox knows: its configuration and the state tests change and inspect.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;

use super::clients::Config;
use super::faults::{ApiFault, FaultQueue, TokenFault};
use super::grants::{Grants, Lifetimes};
use super::recorded::RecordedRequest;
use super::tokens::{Issued, Owner, Tokens};

/// How many requests of each kind are kept for inspection; the oldest are dropped first.
const RECORD_LIMIT: usize = 100_000;

/// Everything the server tasks and the [`SandboxServer`](super::SandboxServer) handles share.
pub(crate) struct Shared {
    /// Fixed when the server starts.
    pub(crate) config: Config,
    state: Mutex<State>,
}

/// The part of the sandbox that changes while it runs.
#[derive(Default)]
pub(crate) struct State {
    /// The scopes the integration key may request (its permissions).
    pub(crate) allowed_scopes: Vec<String>,
    /// Whether a request for a scope not allowed is granted the allowed ones only, instead
    /// of being refused with `invalid_scope`.
    pub(crate) omit_unallowed_scopes: bool,
    pub(crate) token_lifetime: Duration,
    pub(crate) token_delay: Duration,
    pub(crate) api_delay: Duration,
    pub(crate) token_faults: FaultQueue<TokenFault>,
    pub(crate) api_faults: FaultQueue<ApiFault>,
    pub(crate) api_always_unauthorized: bool,
    pub(crate) token_requests: Log,
    pub(crate) api_requests: Log,
    pub(crate) tokens: Tokens,
    pub(crate) grants: Grants,
    /// The lifetimes of the tokens the apps are given.
    pub(crate) app_lifetimes: Lifetimes,
    /// Whether every consent is declined.
    pub(crate) decline_consent: bool,
}

/// A count of requests and the most recent of them.
#[derive(Default)]
pub(crate) struct Log {
    count: usize,
    recent: VecDeque<RecordedRequest>,
}

impl Shared {
    pub(crate) fn new(config: Config, state: State) -> Self {
        Self {
            config,
            state: Mutex::new(state),
        }
    }

    /// Issues a token for the integration key, valid for the key's token lifetime.
    pub(crate) fn issue_key_token(&self, scopes: Vec<String>) -> Issued {
        let owner = Owner {
            client_id: self.config.key.id.clone(),
            company_id: self.config.key_company().id.clone(),
        };
        self.with(|state| state.tokens.issue(scopes, owner, state.token_lifetime))
    }

    /// Runs `f` with the state locked. The lock cannot be held across an `.await`, since `f`
    /// is not async.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock())
    }
}

impl Log {
    pub(crate) fn record(&mut self, request: RecordedRequest) {
        self.count += 1;
        if self.recent.len() == RECORD_LIMIT {
            self.recent.pop_front();
        }
        self.recent.push_back(request);
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.recent.iter().cloned().collect()
    }
}
