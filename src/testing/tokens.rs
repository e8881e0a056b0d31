//! The access tokens the sandbox issued, and what the API makes of them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::random::random_token;

/// Every access token issued, by value and in order.
#[derive(Default)]
pub(crate) struct Tokens {
    by_value: HashMap<String, Token>,
    in_order: Vec<String>,
}

/// What the server remembers about an access token.
struct Token {
    scopes: Vec<String>,
    owner: Owner,
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

/// Whose an access token is: the client it was issued to and the company it acts for.
#[derive(Clone)]
pub(crate) struct Owner {
    pub(crate) client_id: String,
    pub(crate) company_id: String,
}

/// What the API makes of a bearer token.
pub(crate) enum TokenStatus {
    Valid { scopes: Vec<String>, owner: Owner },
    Unknown,
    Revoked,
    Expired,
}

impl Issued {
    /// The token endpoint's 200 body for this token, with `token_type`.
    pub(crate) fn answer(&self, token_type: &str) -> serde_json::Value {
        serde_json::json!({
            "access_token": self.access_token,
            "expires_in": self.expires_in,
            "scope": self.scope,
            "token_type": token_type,
        })
    }
}

impl Tokens {
    /// Issues a new token granting `scopes` to `owner`, valid for `lifetime`.
    pub(crate) fn issue(
        &mut self,
        scopes: Vec<String>,
        owner: Owner,
        lifetime: Duration,
    ) -> Issued {
        let access_token = loop {
            let candidate = random_token("ory_at_");
            if !self.by_value.contains_key(&candidate) {
                break candidate;
            }
        };
        let scope = scopes.join(" ");
        let token = Token {
            scopes,
            owner,
            expires_at: Instant::now().checked_add(lifetime),
            revoked: false,
        };
        self.by_value.insert(access_token.clone(), token);
        self.in_order.push(access_token.clone());
        Issued {
            access_token,
            expires_in: lifetime.as_secs(),
            scope,
        }
    }

    /// Whether `access_token` may call the API.
    pub(crate) fn status(&self, access_token: &str) -> TokenStatus {
        match self.by_value.get(access_token) {
            None => TokenStatus::Unknown,
            Some(token) if token.revoked => TokenStatus::Revoked,
            Some(token) if token.expires_at.is_some_and(|at| Instant::now() >= at) => {
                TokenStatus::Expired
            }
            Some(token) => TokenStatus::Valid {
                scopes: token.scopes.clone(),
                owner: token.owner.clone(),
            },
        }
    }

    /// Whose `access_token` is, if the sandbox issued it.
    pub(crate) fn owner(&self, access_token: &str) -> Option<&Owner> {
        self.by_value.get(access_token).map(|token| &token.owner)
    }

    /// Every token issued so far, oldest first.
    pub(crate) fn in_order(&self) -> &[String] {
        &self.in_order
    }

    /// Makes `access_token` unusable; unknown tokens are ignored.
    pub(crate) fn revoke(&mut self, access_token: &str) {
        if let Some(token) = self.by_value.get_mut(access_token) {
            token.revoked = true;
        }
    }

    /// Makes every token issued so far unusable.
    pub(crate) fn revoke_all(&mut self) {
        for token in self.by_value.values_mut() {
            token.revoked = true;
        }
    }
}
