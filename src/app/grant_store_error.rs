//! [`GrantStoreError`]: why a [`GrantStore`](crate::GrantStore) operation failed.

use std::sync::Arc;

/// Why a [`GrantStore`](crate::GrantStore) operation failed: **transient** (the store is
/// unreachable, timed out, overloaded: the same call may succeed later) or **permanent** (a
/// stored grant cannot be decrypted or parsed, the store refuses the credentials or lacks
/// its table: retrying will not help until someone fixes it).
///
/// It never holds a refresh token: a store builds it from its own words and its backend's
/// error, shown as given, so a store must not put a token, an encryption key or a password
/// in either (the crate's own stores never do).
///
/// ```
/// use understory_auth::GrantStoreError;
///
/// let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let err = GrantStoreError::transient("cannot reach the database").with_cause(io);
/// assert!(err.is_transient());
/// assert_eq!(
///     err.to_string(),
///     "grant store: cannot reach the database: connection refused; it may work when retried"
/// );
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe(message, cause.as_deref(), *transient))]
pub struct GrantStoreError {
    message: String,
    cause: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    transient: bool,
}

impl GrantStoreError {
    /// A failure that may go away by itself: the store is unreachable, slow or busy.
    ///
    /// ```
    /// let err = understory_auth::GrantStoreError::transient("the store timed out");
    /// assert!(err.is_transient());
    /// ```
    pub fn transient(message: impl Into<String>) -> Self {
        GrantStoreError {
            message: message.into(),
            cause: None,
            transient: true,
        }
    }

    /// A failure that needs fixing: a grant that cannot be decrypted (an unknown key id) or
    /// parsed, credentials or a schema the store refuses.
    ///
    /// ```
    /// let err = understory_auth::GrantStoreError::permanent("no key with id 3 to decrypt the grant");
    /// assert!(!err.is_transient());
    /// assert!(err.to_string().ends_with("retrying will not help until it is fixed"));
    /// ```
    pub fn permanent(message: impl Into<String>) -> Self {
        GrantStoreError {
            message: message.into(),
            cause: None,
            transient: false,
        }
    }

    /// This error with the backend's error that caused it, shown after the message (so
    /// [`source`](std::error::Error::source) is `None`: error-chain reports show it once).
    ///
    /// ```
    /// use understory_auth::GrantStoreError;
    /// let io = std::io::Error::other("disk full");
    /// let err = GrantStoreError::transient("cannot write the grant").with_cause(io);
    /// assert!(err.cause().is_some_and(|cause| cause.to_string() == "disk full"));
    /// ```
    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// Whether retrying later may succeed without changing anything.
    ///
    /// ```
    /// assert!(understory_auth::GrantStoreError::transient("busy").is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The backend's error given to [`with_cause`](Self::with_cause), to inspect it
    /// (downcast it to the backend's type).
    ///
    /// ```
    /// use understory_auth::GrantStoreError;
    /// let err = GrantStoreError::transient("cannot connect")
    ///     .with_cause(std::io::Error::from(std::io::ErrorKind::TimedOut));
    /// let io = err.cause().and_then(|cause| cause.downcast_ref::<std::io::Error>());
    /// assert_eq!(io.map(|io| io.kind()), Some(std::io::ErrorKind::TimedOut));
    /// ```
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }
}

fn describe(
    message: &str,
    cause: Option<&(dyn std::error::Error + Send + Sync + 'static)>,
    transient: bool,
) -> String {
    let cause = cause.map_or_else(String::new, |cause| format!(": {cause}"));
    let advice = if transient {
        "it may work when retried"
    } else {
        "retrying will not help until it is fixed"
    };
    format!("grant store: {message}{cause}; {advice}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn the_crate_error_keeps_the_store_error_and_its_classification() {
        let transient: Error = GrantStoreError::transient("down").into();
        assert!(transient.is_transient());
        assert_eq!(
            transient.to_string(),
            "grant store: down; it may work when retried"
        );
        let permanent: Error = GrantStoreError::permanent("corrupt grant").into();
        assert!(!permanent.is_transient());
        assert!(matches!(permanent, Error::GrantStore(ref e) if !e.is_transient()));
        // The cause is in the message, not repeated as a source.
        let with_cause: Error = GrantStoreError::transient("down")
            .with_cause(std::io::Error::other("reset"))
            .into();
        assert!(
            with_cause.to_string().contains("down: reset"),
            "{with_cause}"
        );
        assert!(std::error::Error::source(&with_cause).is_none());
    }
}
