//! [`AccessToken`]: one token as the cache hands it out, its `Authorization` header built
//! once and marked sensitive (so that debug output and HPACK never expose it).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use http::StatusCode;
use tokio::time::Instant;

use crate::Error;
use crate::schedule::Schedule;

/// A process-wide unique number for each token the crate has obtained (in logs as
/// `token_id`); see [`AccessToken`]'s example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(u64);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TokenId {
    /// The id as a number, e.g. for a metric label.
    pub fn get(self) -> u64 {
        self.0
    }

    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TokenId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What precedes the token in its `Authorization` header value.
const BEARER: &str = "Bearer ";

/// The longest access token accepted (Understory's are under 100 bytes, a large JWT a few
/// KiB): bounds what a hostile server can make the crate hold and redact.
pub(crate) const MAX_ACCESS_TOKEN_BYTES: usize = 8 * 1024;

/// What a token source produced; the cache places it in time as an [`AccessToken`].
#[derive(Clone)]
pub(crate) struct GrantedToken {
    /// `Bearer <secret>`, marked sensitive: the only copy of the token.
    header: HeaderValue,
    lifetime: Duration,
    scopes: Vec<String>,
}

impl GrantedToken {
    /// Validates `secret` ([`check`](Self::check)) and builds its header.
    pub(crate) fn new(
        secret: &str,
        lifetime: Duration,
        scopes: Vec<String>,
    ) -> Result<Self, Error> {
        Self::check(secret)?;
        let ok = StatusCode::OK;
        let mut header = HeaderValue::try_from(format!("{BEARER}{secret}"))
            .map_err(|_| Error::invalid_response(ok, "access_token is not a valid header value"))?;
        header.set_sensitive(true);
        Ok(GrantedToken {
            header,
            lifetime,
            scopes,
        })
    }

    /// Whether `secret` can be a bearer token: non-empty visible ASCII (RFC 6750's
    /// `b64token` and more), at most [`MAX_ACCESS_TOKEN_BYTES`]; errors never show it.
    pub(crate) fn check(secret: &str) -> Result<(), Error> {
        let ok = StatusCode::OK;
        if secret.is_empty() {
            return Err(Error::invalid_response(ok, "access_token is empty"));
        }
        if secret.len() > MAX_ACCESS_TOKEN_BYTES {
            return Err(Error::invalid_response(
                ok,
                format!(
                    "access_token is {} bytes long, longer than the {MAX_ACCESS_TOKEN_BYTES} bytes accepted",
                    secret.len()
                ),
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid_response(
                ok,
                "access_token holds characters that cannot be sent in an HTTP header",
            ));
        }
        Ok(())
    }

    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The token, read back from its header value (which `new` made, so this cannot fail).
    pub(crate) fn secret(&self) -> &str {
        self.header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix(BEARER))
            .unwrap_or_default()
    }

    /// `Bearer <secret>`, marked sensitive.
    #[cfg(feature = "app")]
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }

    #[cfg(any(test, feature = "shared-cache", feature = "app"))]
    pub(crate) fn scopes(&self) -> &[String] {
        &self.scopes
    }
}

impl fmt::Debug for GrantedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantedToken")
            .field("secret", &"[REDACTED]")
            .field("lifetime", &self.lifetime)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// An access token for the Understory API: cheap to clone (one `Arc`); `Debug` shows its
/// id, scopes and remaining life, never the token. A token is visible ASCII of at most
/// 8 KiB: another is refused as [`Error::InvalidResponse`](crate::Error::InvalidResponse).
///
/// ```
/// # async fn demo(auth: understory_auth::UnderstoryAuth) -> Result<(), understory_auth::Error> {
/// let token = auth.token().await?;
/// let mut request = http::Request::new(());
/// request.headers_mut().insert(http::header::AUTHORIZATION, token.header_value().clone());
/// assert!(token.header_value().is_sensitive());
/// assert!(!format!("{token:?}").contains(token.secret()));
/// assert_eq!(auth.token().await?.id(), token.id()); // the cached token
/// println!("token #{} ({:?}) lives {:?}, {:?} left", token.id().get(), token.scopes(),
///     token.lifetime(), token.expires_in());
/// assert!(token.expires_at() > std::time::Instant::now());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AccessToken {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    id: TokenId,
    granted: GrantedToken,
    expires_at: Instant,
    usable_until: Instant,
    refresh_at: Instant,
}

impl AccessToken {
    pub(crate) fn new(granted: GrantedToken, schedule: Schedule) -> Self {
        AccessToken {
            inner: Arc::new(Inner {
                id: TokenId::next(),
                granted,
                expires_at: schedule.expires_at,
                usable_until: schedule.usable_until,
                refresh_at: schedule.refresh_at,
            }),
        }
    }

    /// The token itself, to send as `Authorization: Bearer <secret>`. Opaque: never parse it.
    pub fn secret(&self) -> &str {
        self.inner.granted.secret()
    }

    /// The ready-made `Authorization` header value, `Bearer <secret>`, marked sensitive.
    /// Cloning it copies no bytes.
    pub fn header_value(&self) -> &HeaderValue {
        &self.inner.granted.header
    }

    /// This token's process-wide unique id.
    pub fn id(&self) -> TokenId {
        self.inner.id
    }

    /// The scopes the auth server granted (or, when it did not say, the ones requested).
    pub fn scopes(&self) -> &[String] {
        &self.inner.granted.scopes
    }

    /// The lifetime the auth server granted (`expires_in`, after clamping).
    pub fn lifetime(&self) -> Duration {
        self.inner.granted.lifetime
    }

    /// When the token expires by the auth server's word, measured from when it was requested.
    pub fn expires_at(&self) -> std::time::Instant {
        self.inner.expires_at.into_std()
    }

    /// How long until [`AccessToken::expires_at`] (zero once expired).
    pub fn expires_in(&self) -> Duration {
        self.inner
            .expires_at
            .saturating_duration_since(Instant::now())
    }

    /// The same token in new memory (own reference count and header bytes), so that one
    /// thread handing out clones writes nothing another thread reads (see `cache::local`).
    pub(crate) fn thread_copy(&self) -> AccessToken {
        let mut inner = Inner::clone(&self.inner);
        if let Ok(mut header) = HeaderValue::from_bytes(inner.granted.header.as_bytes()) {
            header.set_sensitive(true);
            inner.granted.header = header;
        }
        AccessToken {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn usable_until(&self) -> Instant {
        self.inner.usable_until
    }

    pub(crate) fn refresh_at(&self) -> Instant {
        self.inner.refresh_at
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("id", &self.inner.id)
            .field("secret", &"[REDACTED]")
            .field("scopes", &self.inner.granted.scopes)
            .field("lifetime", &self.inner.granted.lifetime)
            .field("expires_in", &self.expires_in())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_tokens_that_are_not_header_safe() {
        for bad in ["", "a b", "tab\tbed", "new\nline", "ünï", "\u{7f}"] {
            let err = GrantedToken::new(bad, Duration::from_secs(1), vec![]).unwrap_err();
            if !bad.is_empty() {
                assert!(!err.to_string().contains(bad), "{err}");
            }
        }
    }

    #[test]
    fn header_is_sensitive_and_debug_is_redacted() {
        let granted = GrantedToken::new(
            "tok.en~_-+/=",
            Duration::from_secs(60),
            vec!["openid".into()],
        )
        .unwrap();
        let now = Instant::now();
        let token = AccessToken::new(
            granted,
            Schedule {
                expires_at: now + Duration::from_secs(60),
                usable_until: now + Duration::from_secs(57),
                refresh_at: now + Duration::from_secs(30),
            },
        );
        assert_eq!(token.header_value(), "Bearer tok.en~_-+/=");
        assert!(token.header_value().is_sensitive());
        assert_eq!(token.secret(), "tok.en~_-+/=");
        let debug = format!("{token:?} {:?}", token.inner.granted);
        assert!(!debug.contains("tok.en"), "{debug}");
        // A clone (and a thread's copy) is the same token; a token made later has a new,
        // larger id.
        assert_eq!(token.clone().id(), token.id());
        assert_eq!(token.thread_copy().id(), token.id());
        let later = AccessToken::new(
            GrantedToken::new("other", Duration::from_secs(60), vec![]).unwrap(),
            Schedule {
                expires_at: now,
                usable_until: now,
                refresh_at: now,
            },
        );
        assert!(
            later.id() > token.id(),
            "{} after {}",
            later.id(),
            token.id()
        );
    }

    #[test]
    fn tokens_up_to_the_size_limit_are_accepted() {
        let lifetime = Duration::from_secs(60);
        let longest = "t".repeat(MAX_ACCESS_TOKEN_BYTES);
        assert!(GrantedToken::new(&longest, lifetime, vec![]).is_ok());
        let err = GrantedToken::new(&format!("{longest}t"), lifetime, vec![]).unwrap_err();
        assert!(
            err.to_string()
                .contains("longer than the 8192 bytes accepted"),
            "{err}"
        );
        assert!(!err.to_string().contains("ttt"), "{err}");
    }
}
