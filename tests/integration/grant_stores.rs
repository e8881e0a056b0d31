//! Helpers shared by the durable grant stores' tests (`postgres.rs`, `redis_grants.rs`): a
//! grant to store, and a fleet of companies connected through the sandbox.

use std::time::{Duration, UNIX_EPOCH};

use understory_auth::testing::SandboxServer;
use understory_auth::{
    Company, GrantKey, GrantStore, RefreshToken, SaveOutcome, StoredGrant, UnderstoryApp,
};

pub fn key(id: &str, byte: u8) -> GrantKey {
    GrantKey::new(id, [byte; 32]).expect("a valid key")
}

pub fn grant(token: &str) -> StoredGrant {
    StoredGrant::new(
        RefreshToken::new(token),
        Company::new("cmp_1", "Fjord Kayaks"),
        vec!["openid".to_owned(), "offline".to_owned()],
        UNIX_EPOCH + Duration::from_secs(1_000),
    )
}

pub fn version(outcome: SaveOutcome) -> u64 {
    match outcome {
        SaveOutcome::Saved { version } => version,
        SaveOutcome::Conflict => panic!("not saved"),
    }
}

pub async fn save(
    store: &impl GrantStore,
    key: &str,
    token: &str,
    expected: Option<u64>,
) -> SaveOutcome {
    store
        .save(key, &grant(token), expected)
        .await
        .expect("saves")
}

pub async fn token_of(store: &impl GrantStore, key: &str) -> Option<String> {
    let grant = store.load(key).await.expect("loads")?;
    Some(grant.refresh_token.expose_secret().to_owned())
}

/// A sandbox with `companies` companies (`company-0`, ...) whose app tokens live `lifetime`.
pub async fn fleet_sandbox(companies: usize, lifetime: Duration) -> SandboxServer {
    let mut builder = SandboxServer::builder().app_token_lifetime(lifetime);
    for i in 0..companies {
        builder = builder.company(format!("company-{i}"), format!("Company {i}"));
    }
    builder.start().await.expect("sandbox starts")
}

/// Connects `company-i` as `tenant-i`, for every `i` below `companies`.
pub async fn connect_all(app: &UnderstoryApp, sandbox: &SandboxServer, companies: usize) {
    for i in 0..companies {
        let start = app.authorize();
        let callback = sandbox
            .consent(start.url.as_str(), &format!("company-{i}"))
            .await
            .unwrap();
        app.complete(start.pending, &callback, &format!("tenant-{i}"))
            .await
            .unwrap();
    }
}

/// `count` summed over the companies.
pub fn sum(companies: usize, count: impl Fn(&str) -> usize) -> usize {
    (0..companies).map(|i| count(&format!("company-{i}"))).sum()
}
