//! The shared cache's rules against an in-memory store, under tokio's paused clock: entry
//! sealing, keys, freshness, the lock and the fallbacks. The real Redis is exercised by
//! `tests/integration/store.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::time::sleep;

use super::entry::{EntryCodec, MAX_ENTRY_BYTES, Refusal};
use super::source::SharedStoreSource;
use super::*;
use crate::DEFAULT_EXPIRY_MARGIN;
use crate::schedule::Timing;
use crate::token::GrantedToken;

const SECRET: &str = "client-secret";
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Up,
    Failing,
    Hanging,
}

/// A store in a `HashMap` (expiry ignored, but `get` tells each value's time to live under
/// the paused clock) that can fail or hang; counts its operations.
struct Memory {
    map: parking_lot::Mutex<HashMap<String, Vec<u8>>>,
    expiry: parking_lot::Mutex<HashMap<String, tokio::time::Instant>>,
    generation: AtomicU64,
    mode: parking_lot::Mutex<Mode>,
    operations: AtomicUsize,
    /// The longest value `get` returned.
    longest_read: AtomicUsize,
}

impl Memory {
    fn new() -> Arc<Self> {
        Arc::new(Memory {
            map: Default::default(),
            expiry: Default::default(),
            generation: AtomicU64::new(0),
            mode: parking_lot::Mutex::new(Mode::Up),
            operations: AtomicUsize::new(0),
            longest_read: AtomicUsize::new(0),
        })
    }

    /// Stores `value` under `key` for `ttl`, as a writer to the store would.
    fn insert(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        self.map.lock().insert(key.to_owned(), value);
        let deadline = tokio::time::Instant::now() + ttl;
        self.expiry.lock().insert(key.to_owned(), deadline);
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
    async fn get(
        &self,
        key: &str,
        max_len: usize,
    ) -> Result<Option<(Vec<u8>, Duration)>, StoreError> {
        self.enter().await?;
        let ttl = match self.expiry.lock().get(key) {
            Some(deadline) => deadline.saturating_duration_since(tokio::time::Instant::now()),
            None => Duration::MAX,
        };
        let read = self
            .value(key)
            .map(|value| value[..value.len().min(max_len + 1)].to_vec());
        let len = read.as_ref().map_or(0, Vec::len);
        self.longest_read.fetch_max(len, Relaxed);
        Ok(read.map(|value| (value, ttl)))
    }
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        self.enter().await?;
        self.insert(key, value.to_vec(), ttl);
        Ok(())
    }
    async fn next_generation(&self, _key: &str) -> Result<u64, StoreError> {
        self.enter().await?;
        Ok(self.generation.fetch_add(1, Relaxed) + 1)
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
    process_with_secret(store, issuer, SECRET)
}

fn process_with_secret(
    store: &Arc<Memory>,
    issuer: &Arc<Issuer>,
    secret: &str,
) -> Arc<SharedStoreSource> {
    process_with(store, issuer, secret, Timing::default())
}

/// One process whose in-process cache refreshes by `timing` (the builder's
/// `refresh_ahead` and `expiry_margin`).
fn process_with(
    store: &Arc<Memory>,
    issuer: &Arc<Issuer>,
    secret: &str,
    timing: Timing,
) -> Arc<SharedStoreSource> {
    let inner = Arc::clone(issuer) as Arc<dyn TokenSource>;
    let store = Arc::clone(store) as Arc<dyn TokenStore>;
    Arc::new(SharedStoreSource::new(
        inner,
        store,
        codec(secret),
        Duration::from_secs(10),
        timing,
    ))
}

/// How long before its expiry a token of `lifetime` may be due for refresh with the
/// default timing.
fn refresh_lead(lifetime: Duration) -> Duration {
    crate::schedule::refresh_lead(lifetime, Timing::default())
}

async fn fetch(process: &Arc<SharedStoreSource>) -> GrantedToken {
    Arc::clone(process).fetch().await.unwrap()
}

/// Stores an entry for `token` that has `left` of its one-hour lifetime left, as the
/// fleet's newest (a new generation), and returns it.
fn put_entry(store: &Memory, token: &str, left: Duration) -> Vec<u8> {
    let codec = codec(SECRET);
    let token = GrantedToken::new(token, HOUR, vec![]).unwrap();
    let generation = store.generation.fetch_add(1, Relaxed) + 1;
    let value = codec
        .seal(&token, SystemTime::now() + left, generation)
        .unwrap();
    store.insert(codec.key(), value.clone(), left);
    value
}

#[test]
fn entries_are_sealed_authenticated_and_bound_to_their_key() {
    let codec = codec(SECRET);
    let token = GrantedToken::new("the-token", HOUR, vec!["openid".into()]).unwrap();
    let expires_at = SystemTime::now() + HOUR;
    let value = codec.seal(&token, expires_at, 7).unwrap();
    assert!(!contains(&value, b"the-token") && !contains(&value, SECRET.as_bytes()));
    assert_ne!(
        value,
        codec.seal(&token, expires_at, 7).unwrap(),
        "a fresh nonce each time"
    );

    let opened = codec.open(&value).ok().unwrap();
    assert_eq!(opened.token, "the-token");
    assert_eq!(opened.scopes, ["openid"]);
    assert_eq!(opened.lifetime, HOUR);
    assert_eq!(opened.generation, 7);

    // The version byte and the key id say whose entry it is; the rest is authenticated.
    for i in 0..value.len() {
        let mut tampered = value.clone();
        tampered[i] ^= 0x01;
        let expected = if i <= 16 {
            Refusal::Foreign
        } else {
            Refusal::Invalid
        };
        assert_eq!(
            codec.open(&tampered).err(),
            Some(expected),
            "byte {i} flipped"
        );
    }
    for bad in [
        &[][..],
        &value[..1],
        &value[..20],
        &value[..value.len() - 1],
    ] {
        assert_eq!(codec.open(bad).err(), Some(Refusal::Invalid));
    }
    let other_secret = self::codec("another-secret");
    assert_eq!(other_secret.open(&value).err(), Some(Refusal::Foreign));
    let scopes = ["openid".to_owned()];
    let other_key = EntryCodec::new(&shared_key(&scopes), SECRET).unwrap();
    assert_eq!(
        other_key.open(&value).err(),
        Some(Refusal::Invalid),
        "moved to another key"
    );
    let mut oversized = value.clone();
    oversized.resize(MAX_ENTRY_BYTES + 1, 0);
    assert_eq!(codec.open(&oversized).err(), Some(Refusal::Oversized));
}

#[test]
fn keys_cover_what_changes_the_token_and_a_key_id_of_the_secret_but_not_scope_order() {
    let key = |scopes: &[&str]| {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        EntryCodec::new(&shared_key(&scopes), SECRET)
            .unwrap()
            .key()
            .to_owned()
    };
    let base = key(&["openid", "booking.read"]);
    assert!(base.starts_with(SHARED_KEY_PREFIX));
    assert_eq!(base.len(), SHARED_KEY_PREFIX.len() + 64 + 1 + 32);
    assert_eq!(base, key(&["booking.read", "openid", "openid"]));
    assert_ne!(base, key(&["openid"]));
    assert_ne!(base, key(&[]));
    let (a, b) = (codec("secret-a"), codec("secret-b"));
    assert_ne!(a.key(), b.key(), "each secret has its own entry");
    assert_eq!(
        a.key()[..SHARED_KEY_PREFIX.len() + 64],
        b.key()[..SHARED_KEY_PREFIX.len() + 64]
    );
    assert_ne!(a.lock_key(), b.lock_key());
    assert_ne!(a.generation_key(), b.generation_key());
    let key_id = &a.key()[SHARED_KEY_PREFIX.len() + 65..];
    assert!(!key_id.contains("secret-a") && !contains(key_id.as_bytes(), b"secret-a"));
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
    let timings = [
        Timing::default(),
        Timing {
            refresh_ahead: Duration::from_secs(600),
            expiry_margin: Duration::from_secs(30),
        },
    ];
    for timing in timings {
        let lead = |lifetime| crate::schedule::refresh_lead(lifetime, timing);
        for original in secs.map(Duration::from_secs) {
            for remaining in secs.map(Duration::from_secs) {
                if remaining <= original {
                    assert!(lead(remaining) <= lead(original));
                }
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
async fn an_entry_is_due_by_the_builders_refresh_ahead_not_the_default() {
    // With `refresh_ahead` at ten minutes, an hour-long token is due with about twelve
    // minutes left (the margin plus its jitter and the skew); by the default timing, with
    // about seven. An entry with ten minutes left is due for this process.
    let timing = Timing {
        refresh_ahead: Duration::from_secs(600),
        expiry_margin: DEFAULT_EXPIRY_MARGIN,
    };
    let left = Duration::from_secs(600);
    assert!(refresh_lead(HOUR) < left);
    let store = Memory::new();
    let issuer = Issuer::new("new");
    put_entry(&store, "due", left);
    let taken = fetch(&process_with(&store, &issuer, SECRET, timing)).await;
    assert_eq!((taken.secret(), issuer.calls()), ("new-0", 1));
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
        stored.ok().unwrap().token,
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
            u64::MAX,
        )
        .unwrap();
    store.map.lock().insert(key, foreign);
    assert_eq!(fetch(&process(&store, &issuer)).await.secret(), "ok-1");
}

#[tokio::test(start_paused = true)]
async fn alternating_captured_entries_cannot_pin_a_process() {
    // Two authentic entries captured from the store: the fleet's first and second tokens.
    let store = Memory::new();
    let first = put_entry(&store, "revoked-1", HOUR);
    let second = put_entry(&store, "revoked-2", HOUR);
    let key = codec(SECRET).key().to_owned();

    // A writer to the store puts them back in turn before each of the process's fetches
    // (each one asked because the API rejected the token it had).
    let issuer = Issuer::new("fresh");
    let process = process(&store, &issuer);
    let mut handed_over = Vec::new();
    for round in 0..6 {
        let replayed = if round % 2 == 0 { &first } else { &second };
        store.insert(&key, replayed.clone(), HOUR);
        handed_over.push(fetch(&process).await.secret().to_owned());
    }
    // Taken in the order they were written, each once at most; then only newer tokens.
    assert_eq!(
        handed_over,
        [
            "revoked-1",
            "revoked-2",
            "fresh-0",
            "fresh-1",
            "fresh-2",
            "fresh-3"
        ]
    );
    assert_eq!(issuer.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_token_written_or_taken_is_never_followed_by_an_older_entry() {
    let store = Memory::new();
    let old = put_entry(&store, "old", HOUR);
    let (a, b) = (Issuer::new("a"), Issuer::new("b"));
    let (process_a, process_b) = (process(&store, &a), process(&store, &b));
    // B takes the fleet's newest entry; A writes a newer one after rejecting the old.
    assert_eq!(fetch(&process_b).await.secret(), "old");
    assert_eq!(fetch(&process_a).await.secret(), "old");
    assert_eq!(fetch(&process_a).await.secret(), "a-0");
    // B's token is rejected: it takes A's newer one, not the old one a writer put back.
    assert_eq!(fetch(&process_b).await.secret(), "a-0");
    store.insert(codec(SECRET).key(), old, HOUR);
    assert_eq!(fetch(&process_a).await.secret(), "a-1");
    assert_eq!(b.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_store_ttl_bounds_the_remaining_lifetime() {
    // Sealed to expire in an hour (a writer's clock running ahead), but Redis drops it in
    // `ttl`: the store's clock wins.
    let store = Memory::new();
    let issuer = Issuer::new("new");
    let codec = codec(SECRET);
    let lead = refresh_lead(HOUR);
    let sealed = |generation| {
        let token = GrantedToken::new("skewed", HOUR, vec![]).unwrap();
        codec
            .seal(&token, SystemTime::now() + HOUR, generation)
            .unwrap()
    };

    store.insert(codec.key(), sealed(1), lead - Duration::from_secs(1));
    assert_eq!(fetch(&process(&store, &issuer)).await.secret(), "new-0");

    let ttl = lead + Duration::from_secs(30);
    store.insert(codec.key(), sealed(u64::MAX), ttl);
    let taken = fetch(&process(&store, &issuer)).await;
    assert_eq!(taken.secret(), "skewed");
    assert!(taken.lifetime() <= ttl, "{:?} left", taken.lifetime());
    assert_eq!(issuer.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_oversized_value_is_neither_read_whole_nor_decrypted() {
    let store = Memory::new();
    let issuer = Issuer::new("ok");
    store.insert(codec(SECRET).key(), vec![2; 8 << 20], HOUR);
    assert_eq!(fetch(&process(&store, &issuer)).await.secret(), "ok-0");
    assert_eq!(store.longest_read.load(Relaxed), MAX_ENTRY_BYTES + 1);
    assert_eq!(issuer.calls(), 1);
    // Its warning is checked against a real Redis (tests/integration/store.rs): captured
    // here, among the other unit tests' threads, it went missing now and then.
}

#[tokio::test(start_paused = true)]
async fn two_secrets_of_a_key_in_rotation_each_have_their_own_entry_quietly() {
    let store = Memory::new();
    let (old, new) = (Issuer::new("old"), Issuer::new("new"));
    let captured = capture_logs();
    // A process of each side holds its lock while fetching: the other side does not wait.
    let lock = |secret| self::codec(secret).lock_key().to_owned();
    store.insert(&lock("old-secret"), b"old-side".to_vec(), HOUR);
    let started = tokio::time::Instant::now();
    assert_eq!(
        fetch(&process_with_secret(&store, &new, "new-secret"))
            .await
            .secret(),
        "new-0"
    );
    assert!(started.elapsed() < SHARED_POLL_INTERVAL, "virtual time");
    store.map.lock().remove(&lock("old-secret"));
    assert_eq!(
        fetch(&process_with_secret(&store, &old, "old-secret"))
            .await
            .secret(),
        "old-0"
    );

    // Each side shares its own token with its own processes.
    for round in 0..3 {
        let new_side = process_with_secret(&store, &new, "new-secret");
        let old_side = process_with_secret(&store, &old, "old-secret");
        assert_eq!(fetch(&new_side).await.secret(), "new-0", "round {round}");
        assert_eq!(fetch(&old_side).await.secret(), "old-0", "round {round}");
    }
    assert_eq!((old.calls(), new.calls()), (1, 1));
    let logs = captured.text();
    assert!(
        !logs.contains("WARN") && !logs.contains("failed authentication"),
        "{logs}"
    );
}

#[tokio::test(start_paused = true)]
async fn warnings_about_invalid_entries_are_rate_limited() {
    // Garbage under the key while another process holds the lock: the waiting process reads
    // it at every poll, yet warns once.
    let store = Memory::new();
    let issuer = Issuer::new("ok");
    let codec = codec(SECRET);
    store.insert(codec.key(), b"garbage".to_vec(), HOUR);
    store.insert(codec.lock_key(), b"other".to_vec(), HOUR);
    let captured = capture_logs();
    let process = process(&store, &issuer);
    assert_eq!(fetch(&process).await.secret(), "ok-0");
    let warnings = |logs: &str| logs.matches("WARN").count();
    let logs = captured.text();
    assert!(logs.matches("failed authentication").count() > 10, "{logs}");
    assert_eq!(warnings(&logs), 1, "{logs}");

    // One more once the interval has passed.
    tokio::time::advance(INVALID_ENTRY_WARNING_INTERVAL).await;
    store.insert(codec.key(), b"garbage".to_vec(), HOUR);
    store.map.lock().remove(codec.lock_key());
    assert_eq!(fetch(&process).await.secret(), "ok-1");
    assert_eq!(warnings(&captured.text()), 2, "{}", captured.text());
}

/// Everything this thread logs at debug level and above while it lives (the tests run on
/// tokio's current-thread runtime).
struct CapturedLogs {
    buffer: Arc<parking_lot::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock()).into_owned()
    }
}

fn capture_logs() -> CapturedLogs {
    let buffer = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let writer = {
        let buffer = Arc::clone(&buffer);
        move || BufferWriter(Arc::clone(&buffer))
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(writer)
        .finish();
    CapturedLogs {
        buffer,
        _guard: tracing::subscriber::set_default(subscriber),
    }
}

struct BufferWriter(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
