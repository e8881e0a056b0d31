//! Rotation, backoff and lost grants, against an in-memory token endpoint that behaves as
//! Hydra does (rotation, reuse detection), under tokio's paused clock.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use futures_util::future::join_all;
use http::StatusCode;
use tokio::time::{advance, sleep};

use super::*;
use crate::app::{Company, GrantSummary, MemoryGrantStore};
use crate::cache::{TRANSIENT_BACKOFF_MAX, TokenCache};
use crate::schedule::Timing;

const LIFETIME: Duration = Duration::from_secs(600);

/// The wall clock as tokio's paused clock moves it.
fn paused_wall_clock() -> SystemTime {
    static START: std::sync::OnceLock<(SystemTime, tokio::time::Instant)> =
        std::sync::OnceLock::new();
    let (wall, instant) = *START.get_or_init(|| (SystemTime::now(), tokio::time::Instant::now()));
    wall + instant.elapsed()
}

#[derive(Default)]
struct Hydra {
    state: parking_lot::Mutex<HydraState>,
}

#[derive(Default)]
struct HydraState {
    /// The one refresh token that works; none once the grant is revoked.
    valid: Option<String>,
    /// Rotated refresh tokens: presenting one again revokes the grant.
    used: HashSet<String>,
    issued: u64,
    /// Every presentation, in order.
    presented: Vec<String>,
    /// Answers 503 to this many presentations first (without consuming the token).
    unavailable: usize,
    reuse_detected: usize,
}

impl Hydra {
    fn with_grant(token: &str) -> Arc<Hydra> {
        let hydra = Hydra::default();
        hydra.state.lock().valid = Some(token.to_owned());
        Arc::new(hydra)
    }

    fn presented(&self) -> Vec<String> {
        self.state.lock().presented.clone()
    }

    fn valid(&self) -> Option<String> {
        self.state.lock().valid.clone()
    }
}

fn invalid_grant() -> Error {
    Error::OAuth {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_grant".into(),
        description: None,
        retry_after: None,
        key_from_env: false,
    }
}

impl RefreshEndpoint for Hydra {
    fn refresh<'a>(&'a self, refresh_token: &'a str) -> BoxFuture<'a, Result<TokenAnswer, Error>> {
        Box::pin(async move {
            // A round trip takes time: concurrent callers overlap with it.
            sleep(Duration::from_millis(50)).await;
            let mut state = self.state.lock();
            state.presented.push(refresh_token.to_owned());
            if state.unavailable > 0 {
                state.unavailable -= 1;
                return Err(Error::Status {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    retry_after: None,
                });
            }
            if state.valid.as_deref() == Some(refresh_token) {
                state.issued += 1;
                let next = format!("refresh-{}", state.issued);
                state.used.insert(refresh_token.to_owned());
                state.valid = Some(next.clone());
                let access = format!("access-{}", state.issued);
                return Ok(TokenAnswer {
                    granted: GrantedToken::new(&access, LIFETIME, vec!["offline".into()])?,
                    refresh_token: Some(next.into()),
                });
            }
            if state.used.contains(refresh_token) {
                state.reuse_detected += 1;
                state.valid = None;
            }
            Err(invalid_grant())
        })
    }
}

/// A store whose saves fail (transiently) as often as `failing_saves` says.
#[derive(Clone)]
struct Flaky {
    inner: MemoryGrantStore,
    failing_saves: Arc<AtomicUsize>,
}

#[async_trait]
impl GrantStore for Flaky {
    async fn load(&self, key: &str) -> Result<Option<StoredGrant>, GrantStoreError> {
        self.inner.load(key).await
    }
    async fn save(
        &self,
        key: &str,
        grant: &StoredGrant,
        expected: Option<u64>,
    ) -> Result<SaveOutcome, GrantStoreError> {
        let failing = self.failing_saves.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing_saves.store(failing - 1, Ordering::SeqCst);
            return Err(GrantStoreError::transient("the store is down"));
        }
        self.inner.save(key, grant, expected).await
    }
    async fn delete(&self, key: &str) -> Result<bool, GrantStoreError> {
        self.inner.delete(key).await
    }
    async fn list(&self) -> Result<Vec<GrantSummary>, GrantStoreError> {
        self.inner.list().await
    }
    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, GrantStoreError> {
        self.inner.lease(key, holder, ttl).await
    }
    async fn release(&self, key: &str, holder: &str) -> Result<(), GrantStoreError> {
        self.inner.release(key, holder).await
    }
}

struct Setup {
    hydra: Arc<Hydra>,
    store: Flaky,
    cache: TokenCache,
    lost: Arc<AtomicUsize>,
}

async fn setup() -> Setup {
    let hydra = Hydra::with_grant("refresh-0");
    let store = Flaky {
        inner: MemoryGrantStore::new(),
        failing_saves: Arc::default(),
    };
    let grant = StoredGrant::new(
        RefreshToken::new("refresh-0"),
        Company::new("company-a", "Company A"),
        vec!["offline".into()],
        SystemTime::now(),
    );
    let saved = store.save("tenant-a", &grant, None).await.unwrap();
    assert!(matches!(saved, SaveOutcome::Saved { .. }));
    let lost = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&lost);
    let refresher = Arc::new(Refresher {
        endpoint: Arc::clone(&hydra) as Arc<dyn RefreshEndpoint>,
        store: Arc::new(store.clone()),
        on_reauthorization: Some(Arc::new(move |_: &str| {
            counted.fetch_add(1, Ordering::SeqCst);
        })),
        holder: "this-process".into(),
        attempts: Default::default(),
        clock: paused_wall_clock,
        timing: Timing::default(),
    });
    let source = Arc::new(ConnectionSource {
        key: "tenant-a".into(),
        refresher,
    });
    let cache = TokenCache::new(source, Duration::from_secs(10), Timing::default(), ());
    Setup {
        hydra,
        store,
        cache,
        lost,
    }
}

async fn stored_token(store: &Flaky) -> String {
    let grant = store.load("tenant-a").await.unwrap().unwrap();
    grant.refresh_token.expose_secret().to_owned()
}

#[tokio::test(start_paused = true)]
async fn each_refresh_presents_the_latest_refresh_token_once() {
    let Setup {
        hydra,
        store,
        cache,
        ..
    } = setup().await;
    for lifetime in 0..10 {
        // 100 callers at once, then again once the token is due for its refresh.
        let tokens = join_all((0..100).map(|_| cache.token())).await;
        assert!(tokens.iter().all(Result::is_ok), "lifetime {lifetime}");
        assert_eq!(hydra.presented().len(), lifetime + 1);
        assert_eq!(Some(stored_token(&store).await), hydra.valid());
        advance(LIFETIME).await;
    }
    let presented = hydra.presented();
    let distinct: HashSet<_> = presented.iter().collect();
    assert_eq!(distinct.len(), presented.len(), "{presented:?}");
    assert_eq!(hydra.state.lock().reuse_detected, 0);
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_keeps_the_refresh_token_and_backs_off() {
    let Setup {
        hydra,
        store,
        cache,
        ..
    } = setup().await;
    hydra.state.lock().unavailable = 2;
    let error = cache.token().await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    // Inside the failure window: no presentation.
    assert!(cache.token().await.is_err());
    assert_eq!(hydra.presented().len(), 1);
    assert_eq!(stored_token(&store).await, "refresh-0", "not consumed");
    advance(TRANSIENT_BACKOFF_MAX).await;
    assert!(cache.token().await.is_err());
    advance(TRANSIENT_BACKOFF_MAX).await;
    assert!(cache.token().await.is_ok());
    // The same, unconsumed token each time, then the rotated one is stored.
    assert_eq!(hydra.presented(), ["refresh-0"; 3]);
    assert_eq!(stored_token(&store).await, "refresh-1");
    assert_eq!(hydra.state.lock().reuse_detected, 0);
}

#[tokio::test(start_paused = true)]
async fn the_rotated_token_is_saved_before_the_access_token_is_handed_out() {
    let Setup {
        hydra,
        store,
        cache,
        ..
    } = setup().await;
    // One failed save is retried.
    store.failing_saves.store(1, Ordering::SeqCst);
    assert!(cache.token().await.is_ok());
    assert_eq!(stored_token(&store).await, "refresh-1");
    // A store that stays down: the access token is never handed out.
    advance(LIFETIME).await;
    store.failing_saves.store(usize::MAX, Ordering::SeqCst);
    let error = cache.token().await.unwrap_err();
    assert!(matches!(error, Error::GrantStore(_)), "{error:?}");
    assert_eq!(hydra.presented().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_lost_grant_is_marked_reported_once_and_never_retried() {
    let Setup {
        hydra,
        store,
        cache,
        lost,
    } = setup().await;
    // Another process presented the token and crashed before saving: ours is now stale.
    hydra.state.lock().used.insert("refresh-0".into());
    hydra.state.lock().valid = Some("refresh-elsewhere".into());
    let error = cache.token().await.unwrap_err();
    assert!(
        matches!(&error, Error::NeedsReauthorization { connection, .. } if connection == "tenant-a")
    );
    assert!(!error.is_transient());
    assert_eq!(lost.load(Ordering::SeqCst), 1);
    let grant = store.load("tenant-a").await.unwrap().unwrap();
    assert_eq!(grant.state, GrantState::NeedsReauthorization);
    for _ in 0..20 {
        advance(Duration::from_secs(60)).await;
        assert!(cache.token().await.is_err());
    }
    assert_eq!(
        hydra.presented().len(),
        1,
        "no request after the grant was lost"
    );
    assert_eq!(lost.load(Ordering::SeqCst), 1);
}
