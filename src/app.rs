//! Third-party apps (feature `app`): the OAuth2 authorization code grant, for apps that act
//! for many Understory companies, each with its consent.
//!
//! This module holds the pieces the app is built from:
//!
//! * the authorization step, pure (no request): the authorize URL with a fresh `state` and
//!   PKCE (`S256`) pair, both from the OS CSPRNG ([`AuthorizationStart`], [`AuthorizeUrl`],
//!   [`PendingAuthorization`]), and the callback's checks (age, `state` compared in
//!   constant time, Understory's error, the code), see `callback.rs`;
//! * where refresh tokens live: the [`GrantStore`] trait (versions for compare-and-swap,
//!   leases for single-flight refreshes), [`StoredGrant`] and its parts, and
//!   [`MemoryGrantStore`].
//!
//! One concept per file: the random values, PKCE, the pending authorization, the authorize
//! URL, the callback; the refresh token, the company, the stored grant, the store trait, its
//! error and the memory store.

mod authorize;
mod builder;
mod callback;
mod company;
mod connection;
mod connections;
#[cfg(any(feature = "postgres", feature = "redis"))]
mod grant_cipher;
mod grant_store;
mod grant_store_error;
#[cfg(feature = "tower")]
mod layer;
mod memory_store;
mod pending;
mod pkce;
#[cfg(feature = "postgres")]
mod postgres_store;
mod random;
#[cfg(feature = "redis")]
mod redis_store;
mod refresh;
mod refresh_token;
mod stored_grant;
mod understory_app;

pub use authorize::{AuthorizationStart, AuthorizeUrl};
pub use builder::{DEFAULT_AUTHORIZE_URL, DEFAULT_REVOCATION_URL, ME_PATH, UnderstoryAppBuilder};
pub use company::Company;
pub use connection::Connection;
pub use connections::DEFAULT_MAX_CACHED_CONNECTIONS;
#[cfg(any(feature = "postgres", feature = "redis"))]
pub use grant_cipher::GrantKey;
pub use grant_store::{GrantStore, GrantSummary, SaveOutcome};
pub use grant_store_error::GrantStoreError;
#[cfg(feature = "tower")]
pub use layer::{ConnectionAuth, ConnectionAuthFuture, ConnectionAuthLayer};
pub use memory_store::MemoryGrantStore;
pub use pending::{DEFAULT_AUTHORIZATION_LIFETIME, PendingAuthorization};
#[cfg(feature = "postgres")]
pub use postgres_store::{POSTGRES_QUERY_TIMEOUT, PostgresGrantStore};
#[cfg(feature = "redis")]
pub use redis_store::{REDIS_GRANT_TIMEOUT, RedisGrantStore};
pub use refresh::REFRESH_LEASE;
pub use refresh_token::RefreshToken;
pub use stored_grant::{GrantState, StoredAccessToken, StoredGrant};
pub use understory_app::{KeepAlive, UnderstoryApp};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_types_are_thread_safe_and_the_store_an_object() {
        fn thread_safe<T: Send + Sync + 'static>() {}
        thread_safe::<AuthorizationStart>();
        thread_safe::<PendingAuthorization>();
        thread_safe::<StoredGrant>();
        thread_safe::<GrantStoreError>();
        thread_safe::<MemoryGrantStore>();
        thread_safe::<std::sync::Arc<dyn GrantStore>>();
    }

    #[test]
    fn the_new_errors_say_what_to_do_and_are_not_transient() {
        use crate::Error;
        let errors = [
            Error::AuthorizationState {
                problem: "does not match",
            },
            Error::AuthorizationDeclined {
                error: "invalid_scope".to_owned(),
                description: None,
            },
            Error::AuthorizationExpired {
                lifetime: DEFAULT_AUTHORIZATION_LIFETIME,
                in_the_future: true,
            },
            Error::InvalidCallback { reason: "bad" },
            Error::NeedsReauthorization {
                connection: "tenant\n42".to_owned(),
            },
            Error::UnknownConnection {
                connection: "tenant-42".to_owned(),
            },
            Error::MissingConnection,
            Error::GrantStore(GrantStoreError::permanent("corrupt")),
        ];
        let advice = [
            "restart the authorization",
            "check the app's registration",
            "clocks of the processes disagree",
            "start a new authorization",
            "completes a new authorization",
            "complete an authorization for it first",
            "add the company's Connection",
            "retrying will not help",
        ];
        for (err, advice) in errors.iter().zip(advice) {
            let message = err.to_string();
            assert!(message.contains(advice), "{message}");
            assert!(!message.contains('\n'), "{message}");
            assert!(!err.is_transient(), "{message}");
            assert_eq!(err.status(), None);
        }
        assert_eq!(errors[1].oauth_code(), Some("invalid_scope"));
    }
}
