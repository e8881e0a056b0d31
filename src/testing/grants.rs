//! Third-party apps' grants as Hydra keeps them: authorization codes, the grant an exchanged
//! code starts (one company's consent to one app, with every token issued under it), its
//! rotating refresh tokens with reuse detection, and what happened to them per company.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::oauth_error::{OAuthError, Refusal};
use super::pkce;
use super::random::random_token;
use super::tokens::{Issued, Owner, Tokens};
use super::{AUTHORIZATION_CODE_LIFETIME, DEFAULT_REFRESH_TOKEN_LIFETIME, DEFAULT_TOKEN_LIFETIME};

/// The scopes that give a refresh token, as in Hydra.
const OFFLINE_SCOPES: [&str; 2] = ["offline", "offline_access"];

/// Every code, grant and refresh token, and the counts per company.
#[derive(Default)]
pub(crate) struct Grants {
    codes: HashMap<String, Code>,
    grants: HashMap<u64, Grant>,
    refresh_tokens: HashMap<String, RefreshToken>,
    next_grant: u64,
    counts: HashMap<String, Counts>,
}

/// What an authorize request approved.
pub(crate) struct Approval {
    pub(crate) client_id: String,
    /// As sent: the token request must repeat it if it was sent.
    pub(crate) redirect_uri: Option<String>,
    pub(crate) challenge: String,
    pub(crate) company_id: String,
    pub(crate) scopes: Vec<String>,
}

/// What the token request for an authorization code carries.
pub(crate) struct Exchange<'a> {
    pub(crate) code: &'a str,
    pub(crate) redirect_uri: Option<&'a str>,
    pub(crate) verifier: &'a str,
}

struct Code {
    approval: Approval,
    expires_at: Option<Instant>,
    /// Set once exchanged: the grant it started (a replay revokes it).
    exchanged: Option<u64>,
}

/// One company's consent to one app.
struct Grant {
    owner: Owner,
    scopes: Vec<String>,
    /// The access tokens issued with the grant's active refresh token.
    access_tokens: Vec<String>,
}

struct RefreshToken {
    grant: u64,
    /// False once rotated: presenting it again is reuse.
    active: bool,
    expires_at: Option<Instant>,
}

/// What happened to one company's grants.
#[derive(Clone, Copy, Default)]
pub(crate) struct Counts {
    pub(crate) consents: usize,
    pub(crate) code_exchanges: usize,
    pub(crate) refreshes: usize,
    pub(crate) reuse_detected: usize,
    pub(crate) revocations: usize,
}

/// How long an app's tokens stay valid.
#[derive(Clone, Copy)]
pub(crate) struct Lifetimes {
    pub(crate) access: Duration,
    pub(crate) refresh: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        let (access, refresh) = (DEFAULT_TOKEN_LIFETIME, DEFAULT_REFRESH_TOKEN_LIFETIME);
        Self { access, refresh }
    }
}

/// The tokens an exchange or a refresh gives an app.
pub(crate) struct AppTokens {
    pub(crate) access: Issued,
    pub(crate) refresh_token: Option<String>,
}

impl AppTokens {
    /// The token endpoint's 200 body.
    pub(crate) fn answer(&self) -> serde_json::Value {
        let mut answer = self.access.answer("bearer");
        if let Some(refresh_token) = &self.refresh_token {
            answer["refresh_token"] = refresh_token.as_str().into();
        }
        answer
    }
}

impl Grants {
    /// The counts of `company_id` (zero for a company never seen).
    pub(crate) fn counts(&self, company_id: &str) -> Counts {
        self.counts.get(company_id).copied().unwrap_or_default()
    }

    /// Sets every count to zero.
    pub(crate) fn reset_counts(&mut self) {
        self.counts.clear();
    }

    fn count(&mut self, company_id: &str) -> &mut Counts {
        self.counts.entry(company_id.to_owned()).or_default()
    }

    /// Issues an authorization code for `approval`, valid for 10 minutes.
    pub(crate) fn approve(&mut self, approval: Approval) -> String {
        self.count(&approval.company_id).consents += 1;
        let code = unique(&self.codes, "ory_ac_");
        let expires_at = Instant::now().checked_add(AUTHORIZATION_CODE_LIFETIME);
        let exchanged = None;
        let entry = Code {
            approval,
            expires_at,
            exchanged,
        };
        self.codes.insert(code.clone(), entry);
        code
    }

    /// The `authorization_code` grant for `client_id`: Hydra's checks, then a new grant.
    pub(crate) fn exchange(
        &mut self,
        tokens: &mut Tokens,
        client_id: &str,
        request: &Exchange<'_>,
        lifetimes: Lifetimes,
    ) -> Result<AppTokens, Refusal> {
        let refuse = |hint: &str| Err(OAuthError::InvalidGrant.because(hint));
        let Some(code) = self.codes.get(request.code) else {
            return refuse("The authorization code is malformed or not valid.");
        };
        if let Some(grant) = code.exchanged {
            self.revoke_grant(tokens, grant);
            return refuse("The authorization code has already been used.");
        }
        let approval = &code.approval;
        if approval.client_id != client_id {
            return refuse(
                "The OAuth 2.0 Client ID from this request does not match the one from the \
                 authorize request.",
            );
        }
        if expired(code.expires_at) {
            return refuse("The authorization code has expired.");
        }
        if approval.redirect_uri.is_some()
            && approval.redirect_uri.as_deref() != request.redirect_uri
        {
            return refuse(
                "The \"redirect_uri\" from this request does not match the one from the \
                 authorize request.",
            );
        }
        pkce::verify(request.verifier, &approval.challenge)?;

        let id = self.next_grant;
        self.next_grant += 1;
        let owner = Owner {
            client_id: client_id.to_owned(),
            company_id: approval.company_id.clone(),
        };
        let grant = Grant {
            owner,
            scopes: approval.scopes.clone(),
            access_tokens: Vec::new(),
        };
        self.count(&grant.owner.company_id).code_exchanges += 1;
        if let Some(code) = self.codes.get_mut(request.code) {
            code.exchanged = Some(id);
        }
        Ok(self.issue(tokens, id, grant, lifetimes))
    }

    /// The `refresh_token` grant for `client_id`: rotation, and reuse detection, which revokes
    /// the whole grant. As in Hydra, the access tokens issued with the refresh token presented
    /// are revoked too.
    pub(crate) fn refresh(
        &mut self,
        tokens: &mut Tokens,
        client_id: &str,
        refresh_token: &str,
        lifetimes: Lifetimes,
    ) -> Result<AppTokens, Refusal> {
        let refuse = |hint: &str| Err(OAuthError::InvalidGrant.because(hint));
        let not_valid = "The refresh token is malformed or not valid.";
        let Some(presented) = self.refresh_tokens.get(refresh_token) else {
            return refuse(not_valid);
        };
        let (id, active, expires_at) = (presented.grant, presented.active, presented.expires_at);
        let Some(grant) = self.grants.get(&id) else {
            return refuse(not_valid);
        };
        if grant.owner.client_id != client_id {
            return refuse(
                "The OAuth 2.0 Client ID from this request does not match the ID during the \
                 initial token issuance.",
            );
        }
        let company_id = grant.owner.company_id.clone();
        if !active {
            self.revoke_grant(tokens, id);
            self.count(&company_id).reuse_detected += 1;
            return refuse("The refresh token was already used.");
        }
        if expired(expires_at) {
            return refuse("The refresh token expired.");
        }
        let Some(mut grant) = self.grants.remove(&id) else {
            return refuse(not_valid);
        };
        for access_token in grant.access_tokens.drain(..) {
            tokens.revoke(&access_token);
        }
        if let Some(presented) = self.refresh_tokens.get_mut(refresh_token) {
            presented.active = false;
        }
        self.count(&company_id).refreshes += 1;
        Ok(self.issue(tokens, id, grant, lifetimes))
    }

    /// Stores `grant` as `id` with a new access token, and a new refresh token if its scopes
    /// include `offline` or `offline_access`.
    fn issue(
        &mut self,
        tokens: &mut Tokens,
        id: u64,
        mut grant: Grant,
        lifetimes: Lifetimes,
    ) -> AppTokens {
        let access = tokens.issue(grant.scopes.clone(), grant.owner.clone(), lifetimes.access);
        grant.access_tokens.push(access.access_token.clone());
        let offline = grant
            .scopes
            .iter()
            .any(|scope| OFFLINE_SCOPES.contains(&scope.as_str()));
        let refresh_token = offline.then(|| {
            let token = unique(&self.refresh_tokens, "ory_rt_");
            let expires_at = Instant::now().checked_add(lifetimes.refresh);
            let entry = RefreshToken {
                grant: id,
                active: true,
                expires_at,
            };
            self.refresh_tokens.insert(token.clone(), entry);
            token
        });
        self.grants.insert(id, grant);
        AppTokens {
            access,
            refresh_token,
        }
    }

    /// `/oauth2/revoke` for `client_id`: revokes the grant of `token` (a refresh or access
    /// token); `Ok(false)` if no grant has it.
    pub(crate) fn revoke_token(
        &mut self,
        tokens: &mut Tokens,
        client_id: &str,
        token: &str,
    ) -> Result<bool, Refusal> {
        let by_refresh = self.refresh_tokens.get(token).map(|refresh| refresh.grant);
        let by_access = || {
            let mut grants = self.grants.iter();
            let found = grants.find(|(_, grant)| grant.access_tokens.iter().any(|t| t == token));
            found.map(|(id, _)| *id)
        };
        let Some((id, grant)) = by_refresh
            .or_else(by_access)
            .and_then(|id| Some((id, self.grants.get(&id)?)))
        else {
            return Ok(false);
        };
        if grant.owner.client_id != client_id {
            let hint = "The token was not issued to the client making the revocation request.";
            return Err(OAuthError::UnauthorizedClient.because(hint));
        }
        let company_id = grant.owner.company_id.clone();
        self.revoke_grant(tokens, id);
        self.count(&company_id).revocations += 1;
        Ok(true)
    }

    /// Revokes every grant of `company_id` and forgets its codes, as when a company withdraws
    /// its consent.
    pub(crate) fn revoke_company(&mut self, tokens: &mut Tokens, company_id: &str) {
        let ids: Vec<u64> = self
            .grants
            .iter()
            .filter(|(_, grant)| grant.owner.company_id == company_id)
            .map(|(id, _)| *id)
            .collect();
        self.count(company_id).revocations += ids.len();
        for id in ids {
            self.revoke_grant(tokens, id);
        }
        self.codes
            .retain(|_, code| code.approval.company_id != company_id);
    }

    /// Deletes grant `id` with its refresh tokens, and revokes its access tokens.
    fn revoke_grant(&mut self, tokens: &mut Tokens, id: u64) {
        if let Some(grant) = self.grants.remove(&id) {
            for access_token in &grant.access_tokens {
                tokens.revoke(access_token);
            }
        }
        self.refresh_tokens.retain(|_, refresh| refresh.grant != id);
    }
}

/// Whether a deadline has passed (`None`: too far away to represent).
fn expired(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|deadline| Instant::now() >= deadline)
}

/// A random token starting with `prefix` that is not a key of `taken`.
fn unique<V>(taken: &HashMap<String, V>, prefix: &str) -> String {
    loop {
        let candidate = random_token(prefix);
        if !taken.contains_key(&candidate) {
            return candidate;
        }
    }
}
