//! The shared cache's rules against an in-memory store, under tokio's paused clock: entry
//! sealing, keys, freshness, the lock and the fallbacks. The real Redis is exercised by
//! `tests/integration/store.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::time::sleep;

use super::entry::EntryCodec;
use super::source::SharedStoreSource;
use super::*;
use crate::cache::refresh_lead;
use crate::token::GrantedToken;

const SECRET: &str = "client-secret";
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Up,
    Failing,
    Hanging,
}

/// A store in a `HashMap` (expiry ignored) that can fail or hang; counts its operations.
struct Memory {
    map: parking_lot::Mutex<HashMap<String, Vec<u8>>>,
    mode: parking_lot::Mutex<Mode>,
    operations: AtomicUsize,
}

impl Memory {
    fn new() -> Arc<Self> {
        Arc::new(Memory {
            map: Default::default(),
            mode: parking_lot::Mutex::new(Mode::Up),
            operations: AtomicUsize::new(0),
        })
    }

    async fn enter(&self) -> Result<(), StoreError> {
        self.operations.fetch_add(1, Relaxed);
        let mode = *self.mode.lock();
        match mode {
            Mode::Up => Ok(()),
            Mode::Failing => Err(StoreError::new("down")),
            Mode::Hanging => std::future::pending().await,
        }
    }

    fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.map.lock().get(key).cloned()
    }
}

#[async_trait]
impl TokenStore for Memory {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.enter().await?;
        Ok(self.value(key))
    }
    async fn put(&self, key: &str, value: &[u8], _ttl: Duration) -> Result<(), StoreError> {
        self.enter().await?;
        self.map.lock().insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    async fn try_lock(&self, key: &str, owner: &str, _ttl: Duration) -> Result<bool, StoreError> {
        self.enter().await?;
        let mut map = self.map.lock();
        if map.contains_key(key) {
            return Ok(false);
        }
        map.insert(key.to_owned(), owner.as_bytes().to_vec());
        Ok(true)
    }
    async fn unlock(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        self.enter().await?;
        let mut map = self.map.lock();
        if map.get(key).is_some_and(|v| v == owner.as_bytes()) {
            map.remove(key);
        }
        Ok(())
    }
}

/// The auth server: a new token (`<name>-<n>`) per call, one hour each; counts its calls.
struct Issuer {
    name: &'static str,
    calls: AtomicUsize,
}

impl Issuer {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Issuer {
            name,
            calls: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Relaxed)
    }
}

impl TokenSource for Issuer {
    fn fetch(
        self: Arc<Self>,
    ) -> futures_util::future::BoxFuture<'static, Result<GrantedToken, Error>> {
        let n = self.calls.fetch_add(1, Relaxed);
        let token = GrantedToken::new(&format!("{}-{n}", self.name), HOUR, vec!["openid".into()]);
        Box::pin(std::future::ready(token))
    }
}

fn shared_key(scopes: &[String]) -> SharedKey<'_> {
    SharedKey {
        token_url: "https://auth.example/oauth2/token",
        client_id: "client",
        audience: "https://api.example",
        scopes,
    }
}

fn codec(secret: &str) -> EntryCodec {
    EntryCodec::new(&shared_key(&[]), secret).unwrap()
}

/// One process: its own auth server connection over the shared `store`.
fn process(store: &Arc<Memory>, issuer: &Arc<Issuer>) -> Arc<SharedStoreSource> {
    let inner = Arc::clone(issuer) as Arc<dyn TokenSource>;
    let store = Arc::clone(store) as Arc<dyn TokenStore>;
    Arc::new(SharedStoreSource::new(
        inner,
        store,
        codec(SECRET),
        Duration::from_secs(10),
    ))
}

async fn fetch(process: &Arc<SharedStoreSource>) -> GrantedToken {
    Arc::clone(process).fetch().await.unwrap()
}

/// Stores an entry for `token` that has `left` of its one-hour lifetime left.
fn put_entry(store: &Memory, token: &str, left: Duration) {
    let codec = codec(SECRET);
    let token = GrantedToken::new(token, HOUR, vec![]).unwrap();
    let value = codec.seal(&token, SystemTime::now() + left).unwrap();
    store.map.lock().insert(codec.key().to_owned(), value);
}

#[test]
fn entries_are_sealed_authenticated_and_bound_to_their_key() {
    let codec = codec(SECRET);
    let token = GrantedToken::new("the-token", HOUR, vec!["openid".into()]).unwrap();
    let expires_at = SystemTime::now() + HOUR;
    let value = codec.seal(&token, expires_at).unwrap();
    assert!(!contains(&value, b"the-token") && !contains(&value, SECRET.as_bytes()));
    assert_ne!(
        value,
        codec.seal(&token, expires_at).unwrap(),
        "a fresh nonce each time"
    );

    let opened = codec.open(&value).unwrap();
    assert_eq!(opened.token, "the-token");
    assert_eq!(opened.scopes, ["openid"]);
    assert_eq!(opened.lifetime, HOUR);

    for i in 0..value.len() {
        let mut tampered = value.clone();
        tampered[i] ^= 0x01;
        assert!(codec.open(&tampered).is_none(), "byte {i} flipped");
    }
    for bad in [
        &[][..],
        &value[..1],
        &value[..20],
        &value[..value.len() - 1],
    ] {
        assert!(codec.open(bad).is_none());
    }
    assert!(self::codec("another-secret").open(&value).is_none());
    let scopes = ["openid".to_owned()];
    let other_key = EntryCodec::new(&shared_key(&scopes), SECRET).unwrap();
    assert!(other_key.open(&value).is_none(), "moved to another key");
}

#[test]
fn keys_cover_what_changes_the_token_but_not_scope_order_or_the_secret() {
    let key = |scopes: &[&str]| {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        EntryCodec::new(&shared_key(&scopes), SECRET)
            .unwrap()
            .key()
            .to_owned()
    };
    let base = key(&["openid", "booking.read"]);
    assert!(base.starts_with(SHARED_KEY_PREFIX));
    assert_eq!(base.len(), SHARED_KEY_PREFIX.len() + 64);
    assert_eq!(base, key(&["booking.read", "openid", "openid"]));
    assert_ne!(base, key(&["openid"]));
    assert_ne!(base, key(&[]));
    assert_eq!(
        codec("a").key(),
        codec("b").key(),
        "the secret is not in the key"
    );
    let mut other = shared_key(&[]);
    other.client_id = "other-client";
    assert_ne!(
        EntryCodec::new(&other, SECRET).unwrap().key(),
        codec(SECRET).key()
    );
}

#[test]
fn a_token_handed_on_with_its_remaining_lifetime_is_due_no_later_than_the_original() {
    let secs = [
        1, 2, 10, 59, 60, 119, 120, 121, 300, 599, 600, 601, 3599, 3600, 86_400,
    ];
    for original in secs.map(Duration::from_secs) {
        for remaining in secs.map(Duration::from_secs) {
            if remaining <= original {
                assert!(refresh_lead(remaining) <= refresh_lead(original));
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn processes_share_one_token_with_its_remaining_lifetime() {
    let store = Memory::new();
    let (a, b) = (Issuer::new("a"), Issuer::new("b"));
    let first = fetch(&process(&store, &a)).await;
    let second = fetch(&process(&store, &b)).await;
    assert_eq!((a.calls(), b.calls()), (1, 0));
    assert_eq!(second.secret(), first.secret());
    assert_eq!(second.scopes(), ["openid"]);
    assert!(second.lifetime() <= HOUR && second.lifetime() > HOUR - Duration::from_secs(5));
    assert!(
        store.value(codec(SECRET).lock_key()).is_none(),
        "lock released"
    );
}

#[tokio::test(start_paused = true)]
async fn an_entry_due_for_refresh_is_replaced_and_a_fresh_one_taken() {
    let store = Memory::new();
    let issuer = Issuer::new("new");
    let lead = refresh_lead(HOUR);

    put_entry(&store, "due", lead - Duration::from_secs(1));
    assert_eq!(fetch(&process(&store, &issuer)).await.secret(), "new-0");
    let stored = codec(SECRET).open(&store.value(codec(SECRET).key()).unwrap());
    assert_eq!(
        stored.unwrap().token,
        "new-0",
        "the fetcher shared its token"
    );

    put_entry(&store, "fresh", lead + Duration::from_secs(5));
    let taken = fetch(&process(&store, &issuer)).await;
    assert_eq!(taken.secret(), "fresh");
    assert!(taken.lifetime() <= lead + Duration::from_secs(5));
    assert_eq!(issuer.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_token_handed_over_last_is_not_taken_again() {
    // The in-process cache asks again only for a token due or rejected: never hand it back.
    let store = Memory::new();
    let issuer = Issuer::new("t");
    let process = process(&store, &issuer);
    assert_eq!(fetch(&process).await.secret(), "t-0");
    assert_eq!(fetch(&process).await.secret(), "t-1");
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn while_another_process_holds_the_lock_its_token_is_awaited() {
    let store = Memory::new();
    let issuer = Issuer::new("mine");
    store
        .map
        .lock()
        .insert(codec(SECRET).lock_key().to_owned(), b"other".to_vec());
    let delivery = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            sleep(SHARED_FETCH_WAIT / 2).await;
            put_entry(&store, "theirs", HOUR);
        }
    });
    assert_eq!(fetch(&process(&store, &issuer)).await.secret(), "theirs");
    assert_eq!(issuer.calls(), 0);
    delivery.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lock_never_released_delays_others_by_the_bounded_wait_only() {
    let store = Memory::new();
    let issuer = Issuer::new("mine");
    store
        .map
        .lock()
        .insert(codec(SECRET).lock_key().to_owned(), b"dead".to_vec());
    let started = tokio::time::Instant::now();
    assert_eq!(fetch(&process(&store, &issuer)).await.secret(), "mine-0");
    assert_eq!(issuer.calls(), 1);
    // Paused clock: this is the virtual time the wait took, not a wall-clock threshold.
    assert!(started.elapsed() < SHARED_FETCH_WAIT + SHARED_POLL_INTERVAL + STORE_TIMEOUT);
    assert!(
        store.value(codec(SECRET).key()).is_some(),
        "and shared its token"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_hanging_store_means_fetching_directly() {
    for mode in [Mode::Failing, Mode::Hanging] {
        let store = Memory::new();
        *store.mode.lock() = mode;
        let issuer = Issuer::new("direct");
        let process = process(&store, &issuer);
        assert_eq!(fetch(&process).await.secret(), "direct-0");
        assert_eq!(
            store.operations.load(Relaxed),
            1,
            "no lock after a failed read"
        );

        *store.mode.lock() = Mode::Up;
        assert_eq!(fetch(&process).await.secret(), "direct-1");
        assert!(
            store.value(codec(SECRET).key()).is_some(),
            "shared once it is back"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn garbage_and_foreign_entries_are_treated_as_missing() {
    let store = Memory::new();
    let issuer = Issuer::new("ok");
    let key = codec(SECRET).key().to_owned();
    store.map.lock().insert(key.clone(), b"garbage".to_vec());
    assert_eq!(fetch(&process(&store, &issuer)).await.secret(), "ok-0");

    let foreign = codec("other-secret")
        .seal(
            &GrantedToken::new("forged", HOUR, vec![]).unwrap(),
            SystemTime::now() + HOUR,
        )
        .unwrap();
    store.map.lock().insert(key, foreign);
    assert_eq!(fetch(&process(&store, &issuer)).await.secret(), "ok-1");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn store_error_text_is_one_short_printable_line() {
    let reply = std::io::Error::other(format!(
        "ERR boom\r\n2026-01-01T00:00:00Z WARN forged line\u{1b}[31m{}",
        "x".repeat(5000)
    ));
    let shown = StoreError::with_source("Redis command failed", reply).to_string();
    assert!(shown.starts_with("token store: Redis command failed: ERR boom"));
    assert!(!shown.contains(['\r', '\n', '\u{1b}']), "{shown:?}");
    assert!(
        shown.chars().count() < 400,
        "cut short: {} chars",
        shown.chars().count()
    );
    let plain = StoreError::new("the store\nis read-only").to_string();
    assert_eq!(plain, "token store: the store is read-only");
}
