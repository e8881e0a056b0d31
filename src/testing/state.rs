//! What the sandbox knows: its fixed configuration and the state tests change and inspect.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::faults::{ApiFault, TokenFault};
use super::recorded::RecordedRequest;
use crate::ClientAuthMethod;

/// How many requests of each kind are kept for inspection; the oldest are dropped first.
const RECORD_LIMIT: usize = 100_000;

/// Everything the server tasks and the [`SandboxServer`](super::SandboxServer) handles share.
pub(crate) struct Shared {
    /// Fixed when the server starts.
    pub(crate) config: Config,
    state: Mutex<State>,
}

/// The sandbox's client registration.
pub(crate) struct Config {
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) client_auth: ClientAuthMethod,
}

/// The part of the sandbox that changes while it runs.
pub(crate) struct State {
    /// The scopes the client may request (its permissions).
    pub(crate) allowed_scopes: Vec<String>,
    /// Whether a request for a scope not allowed is granted the allowed ones only, instead
    /// of being refused with `invalid_scope`.
    pub(crate) omit_unallowed_scopes: bool,
    pub(crate) token_lifetime: Duration,
    pub(crate) token_delay: Duration,
    pub(crate) api_delay: Duration,
    pub(crate) queued_token_faults: VecDeque<TokenFault>,
    pub(crate) persistent_token_fault: Option<TokenFault>,
    pub(crate) queued_api_faults: VecDeque<ApiFault>,
    pub(crate) persistent_api_fault: Option<ApiFault>,
    pub(crate) api_always_unauthorized: bool,
    pub(crate) token_requests: Log,
    pub(crate) api_requests: Log,
    tokens: HashMap<String, Token>,
    issued_in_order: Vec<String>,
}

/// A count of requests and the most recent of them.
#[derive(Default)]
pub(crate) struct Log {
    count: usize,
    recent: VecDeque<RecordedRequest>,
}

/// What the server remembers about a token it issued.
struct Token {
    scopes: Vec<String>,
    /// `None` if the lifetime was too long to represent.
    expires_at: Option<Instant>,
    revoked: bool,
}

/// A freshly issued token, as the token endpoint reports it.
pub(crate) struct Issued {
    pub(crate) access_token: String,
    pub(crate) expires_in: u64,
    /// The granted scopes, space separated.
    pub(crate) scope: String,
}

/// What the API makes of a bearer token.
pub(crate) enum TokenStatus {
    Valid { scopes: Vec<String> },
    Unknown,
    Revoked,
    Expired,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        allowed_scopes: Vec<String>,
        token_lifetime: Duration,
    ) -> Self {
        let state = State {
            allowed_scopes,
            omit_unallowed_scopes: false,
            token_lifetime,
            token_delay: Duration::ZERO,
            api_delay: Duration::ZERO,
            queued_token_faults: VecDeque::new(),
            persistent_token_fault: None,
            queued_api_faults: VecDeque::new(),
            persistent_api_fault: None,
            api_always_unauthorized: false,
            token_requests: Log::default(),
            api_requests: Log::default(),
            tokens: HashMap::new(),
            issued_in_order: Vec::new(),
        };
        Self {
            config,
            state: Mutex::new(state),
        }
    }

    /// Runs `f` with the state locked. The lock cannot be held across an `.await`, since `f`
    /// is not async.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock())
    }
}

impl State {
    /// The fault for the next token request: a queued one, else the persistent one.
    pub(crate) fn next_token_fault(&mut self) -> Option<TokenFault> {
        self.queued_token_faults
            .pop_front()
            .or_else(|| self.persistent_token_fault.clone())
    }

    /// Issues a new token granting `scopes`, valid for the current token lifetime.
    pub(crate) fn issue_token(&mut self, scopes: Vec<String>) -> Issued {
        let access_token = loop {
            let candidate = random_token();
            if !self.tokens.contains_key(&candidate) {
                break candidate;
            }
        };
        let scope = scopes.join(" ");
        let token = Token {
            scopes,
            expires_at: Instant::now().checked_add(self.token_lifetime),
            revoked: false,
        };
        self.tokens.insert(access_token.clone(), token);
        self.issued_in_order.push(access_token.clone());
        Issued {
            access_token,
            expires_in: self.token_lifetime.as_secs(),
            scope,
        }
    }

    /// Whether `access_token` may call the API.
    pub(crate) fn token_status(&self, access_token: &str) -> TokenStatus {
        match self.tokens.get(access_token) {
            None => TokenStatus::Unknown,
            Some(token) if token.revoked => TokenStatus::Revoked,
            Some(token) if token.expires_at.is_some_and(|at| Instant::now() >= at) => {
                TokenStatus::Expired
            }
            Some(token) => TokenStatus::Valid {
                scopes: token.scopes.clone(),
            },
        }
    }

    /// The token issued last, if any.
    pub(crate) fn latest_token(&self) -> Option<String> {
        self.issued_in_order.last().cloned()
    }

    /// Every token issued so far, oldest first.
    pub(crate) fn issued_tokens(&self) -> Vec<String> {
        self.issued_in_order.clone()
    }

    /// Makes `access_token` unusable; unknown tokens are ignored.
    pub(crate) fn revoke(&mut self, access_token: &str) {
        if let Some(token) = self.tokens.get_mut(access_token) {
            token.revoked = true;
        }
    }

    /// Makes every token issued so far unusable.
    pub(crate) fn revoke_all(&mut self) {
        for token in self.tokens.values_mut() {
            token.revoked = true;
        }
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

    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }
}

/// An opaque token that looks like one of Hydra's: `ory_at_` and 43 URL-safe characters.
/// A client secret as Understory's Hydra generates them: 26 characters drawn from
/// `a-zA-Z0-9_-.~`, here always with at least one `~` (which Understory's server refuses
/// percent-encoded, see the token endpoint), at a random place.
pub(crate) fn random_client_secret() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.~";
    const LEN: usize = 26;
    let mut secret: Vec<char> = (0..LEN)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect();
    if !secret.contains(&'~') {
        secret[fastrand::usize(..LEN)] = '~';
    }
    secret.into_iter().collect()
}

fn random_token() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const PREFIX: &str = "ory_at_";
    const RANDOM_CHARS: usize = 43;

    let mut token = String::with_capacity(PREFIX.len() + RANDOM_CHARS);
    token.push_str(PREFIX);
    token
        .extend((0..RANDOM_CHARS).map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())])));
    token
}
