//! Third-party apps against the sandbox's Hydra-like authorization server: the code flow,
//! per-connection tokens, rotation, lost grants, disconnect and keep-alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use understory_auth::testing::SandboxServer;
use understory_auth::{
    Connection, Error, GrantStore, MemoryGrantStore, RefreshToken, UnderstoryApp, serde_json,
};

const COMPANIES: [(&str, &str); 3] = [
    ("company-a", "tenant-a"),
    ("company-b", "tenant-b"),
    ("company-c", "tenant-c"),
];

async fn sandbox() -> SandboxServer {
    SandboxServer::builder()
        .company("company-a", "Company A")
        .company("company-b", "Company B")
        .company("company-c", "Company C")
        .start()
        .await
        .expect("sandbox starts")
}

fn app(sandbox: &SandboxServer, store: &MemoryGrantStore) -> UnderstoryApp {
    sandbox
        .app_builder()
        .grant_store(store.clone())
        .build()
        .expect("app builds")
}

async fn connect(app: &UnderstoryApp, sandbox: &SandboxServer, company: &str, key: &str) {
    let start = app.authorize();
    let callback = sandbox
        .consent(start.url.as_str(), company)
        .await
        .expect("consent");
    let connected = app
        .complete(start.pending, &callback, key)
        .await
        .expect("complete");
    assert_eq!(connected.id, company);
}

fn client(app: &UnderstoryApp) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(app.clone())
        .build()
}

/// The company `/v1/me` names for a request through the one-client middleware.
async fn me_as(client: &ClientWithMiddleware, sandbox: &SandboxServer, key: &str) -> String {
    let response = client
        .get(format!("{}/v1/me", sandbox.api_base()))
        .with_extension(Connection::new(key))
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), 200);
    let me: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    me["company_id"].as_str().unwrap().to_owned()
}

/// Drops the access token the store keeps with `key`'s grant, as if it had expired: the next
/// process to need a token refreshes.
async fn forget_access_token(store: &MemoryGrantStore, key: &str) {
    let mut grant = store.load(key).await.unwrap().unwrap();
    grant.access_token = None;
    let version = grant.version;
    let saved = store.save(key, &grant, Some(version)).await.unwrap();
    assert!(matches!(saved, understory_auth::SaveOutcome::Saved { .. }));
}

fn token_error(result: reqwest_middleware::Result<reqwest::Response>) -> Error {
    let error = result.expect_err("a token error");
    Error::find_in(&error).expect("the crate's error").clone()
}

#[tokio::test]
async fn three_companies_through_their_handles_and_one_client() {
    let sandbox = sandbox().await;
    let store = MemoryGrantStore::new();
    let app = app(&sandbox, &store);
    for (company, key) in COMPANIES {
        connect(&app, &sandbox, company, key).await;
    }
    let client = client(&app);
    for _ in 0..2 {
        for (company, key) in COMPANIES {
            assert_eq!(me_as(&client, &sandbox, key).await, company);
            // The per-company handle, as reqwest middleware.
            let own = ClientBuilder::new(reqwest::Client::new())
                .with(app.connection(key))
                .build();
            let response = own
                .get(format!("{}/v1/me", sandbox.api_base()))
                .send()
                .await
                .unwrap();
            let me: serde_json::Value =
                serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
            assert_eq!(me["company_id"], company);
        }
    }
    for (company, _) in COMPANIES {
        assert_eq!(sandbox.code_exchanges(company), 1);
        assert_eq!(
            sandbox.refreshes(company),
            0,
            "the exchange's token is used first"
        );
    }
    assert_eq!(app.cached_connections(), 3);
}

#[tokio::test]
async fn two_hundred_concurrent_requests_make_one_refresh() {
    let sandbox = sandbox().await;
    let store = MemoryGrantStore::new();
    connect(&app(&sandbox, &store), &sandbox, "company-a", "tenant-a").await;
    // A restarted process: the grant is in the store, its access token expired.
    forget_access_token(&store, "tenant-a").await;
    let app = app(&sandbox, &store);
    let client = client(&app);
    let companies = join_all((0..200).map(|_| me_as(&client, &sandbox, "tenant-a"))).await;
    assert!(companies.iter().all(|c| c == "company-a"));
    assert_eq!(sandbox.refreshes("company-a"), 1);
    assert_eq!(sandbox.reuse_detected("company-a"), 0);
    // The rotated refresh token and its access token were saved before use: a third
    // process takes the access token, and a keep-alive refreshes with the rotated token.
    let again = self::app(&sandbox, &store);
    again.connection("tenant-a").token().await.expect("a token");
    assert_eq!(
        sandbox.refreshes("company-a"),
        1,
        "the stored access token was used"
    );
    let report = again.keep_alive(Duration::ZERO).await.unwrap();
    assert_eq!(report.refreshed, 1, "{report:?}");
    let counts = (
        sandbox.refreshes("company-a"),
        sandbox.reuse_detected("company-a"),
    );
    assert_eq!(counts, (2, 0));
}

#[tokio::test]
async fn a_tampered_or_missing_state_sends_nothing() {
    let sandbox = sandbox().await;
    let app = app(&sandbox, &MemoryGrantStore::new());
    let start = app.authorize();
    let callback = sandbox
        .consent(start.url.as_str(), "company-a")
        .await
        .unwrap();
    let other = app.authorize();
    let error = app
        .complete(other.pending, &callback, "tenant-a")
        .await
        .expect_err("another authorization's state");
    assert!(
        matches!(error, Error::AuthorizationState { .. }),
        "{error:?}"
    );
    let code_only: String = callback
        .split('&')
        .filter(|pair| !pair.starts_with("state="))
        .collect::<Vec<_>>()
        .join("&");
    let error = app
        .complete(start.pending.clone(), &code_only, "tenant-a")
        .await
        .expect_err("no state");
    assert!(
        matches!(error, Error::AuthorizationState { .. }),
        "{error:?}"
    );
    assert_eq!(sandbox.code_exchanges("company-a"), 0);
    // The genuine callback still works, once: a replay is refused by the server.
    app.complete(start.pending.clone(), &callback, "tenant-a")
        .await
        .expect("complete");
    let replay = app.complete(start.pending, &callback, "tenant-a").await;
    assert_eq!(
        replay.expect_err("a replayed code").oauth_code(),
        Some("invalid_grant")
    );
    assert_eq!(sandbox.code_exchanges("company-a"), 1);
}

#[tokio::test]
async fn a_declined_consent_is_a_typed_error() {
    let sandbox = sandbox().await;
    let app = app(&sandbox, &MemoryGrantStore::new());
    sandbox.set_decline_consent(true);
    let start = app.authorize();
    let callback = sandbox
        .consent(start.url.as_str(), "company-a")
        .await
        .unwrap();
    let error = app
        .complete(start.pending, &callback, "tenant-a")
        .await
        .unwrap_err();
    match &error {
        Error::AuthorizationDeclined { error, .. } => assert_eq!(error, "access_denied"),
        other => panic!("{other:?}"),
    }
    assert!(!error.is_transient());
}

/// A lost grant is a state: marked, reported to the hook once, and no more token requests.
async fn assert_lost(sandbox: &SandboxServer, store: &MemoryGrantStore, company: &str) {
    let app = app(sandbox, store);
    let client = client(&app);
    let refreshes = sandbox.refreshes(company);
    let received = sandbox.token_requests();
    for _ in 0..5 {
        let result = client
            .get(format!("{}/v1/me", sandbox.api_base()))
            .with_extension(Connection::new("tenant-a"))
            .send()
            .await;
        let error = token_error(result);
        assert!(
            matches!(&error, Error::NeedsReauthorization { connection, .. } if connection == "tenant-a"),
            "{error:?}"
        );
        assert!(!error.is_transient());
    }
    assert!(
        sandbox.token_requests() <= received + 1,
        "one refused refresh at most"
    );
    assert_eq!(sandbox.refreshes(company), refreshes);
    let grant = store.load("tenant-a").await.unwrap().unwrap();
    assert_eq!(
        grant.state,
        understory_auth::GrantState::NeedsReauthorization
    );
}

fn hooked(
    sandbox: &SandboxServer,
    store: &MemoryGrantStore,
    calls: &Arc<AtomicUsize>,
) -> UnderstoryApp {
    let calls = Arc::clone(calls);
    sandbox
        .app_builder()
        .grant_store(store.clone())
        .on_needs_reauthorization(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_reused_refresh_token_loses_the_grant_without_a_loop() {
    let sandbox = sandbox().await;
    let store = MemoryGrantStore::new();
    connect(&app(&sandbox, &store), &sandbox, "company-a", "tenant-a").await;
    let first = store.load("tenant-a").await.unwrap().unwrap();
    // Another process refreshes and rotates...
    let report = app(&sandbox, &store)
        .keep_alive(Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(sandbox.refreshes("company-a"), 1, "{report:?}");
    // ...and a broken one puts the old, rotated refresh token back (without access token).
    let mut stale = store.load("tenant-a").await.unwrap().unwrap();
    let version = stale.version;
    stale.refresh_token = RefreshToken::new(first.refresh_token.expose_secret());
    stale.access_token = None;
    let _ = store.save("tenant-a", &stale, Some(version)).await.unwrap();

    let calls = Arc::new(AtomicUsize::new(0));
    let app = hooked(&sandbox, &store, &calls);
    let error = app.connection("tenant-a").token().await.unwrap_err();
    assert!(
        matches!(error, Error::NeedsReauthorization { .. }),
        "{error:?}"
    );
    assert_eq!(sandbox.reuse_detected("company-a"), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_lost(&sandbox, &store, "company-a").await;
    assert_eq!(
        sandbox.reuse_detected("company-a"),
        1,
        "never presented again"
    );
    // Connecting again heals it.
    connect(&app, &sandbox, "company-a", "tenant-a").await;
    assert_eq!(
        me_as(&client(&app), &sandbox, "tenant-a").await,
        "company-a"
    );
}

#[tokio::test]
async fn revoked_consent_needs_reauthorization() {
    let sandbox = sandbox().await;
    let store = MemoryGrantStore::new();
    connect(&app(&sandbox, &store), &sandbox, "company-a", "tenant-a").await;
    sandbox.revoke_consent("company-a");
    forget_access_token(&store, "tenant-a").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let app = hooked(&sandbox, &store, &calls);
    let error = app.connection("tenant-a").token().await.unwrap_err();
    assert!(
        matches!(error, Error::NeedsReauthorization { .. }),
        "{error:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_lost(&sandbox, &store, "company-a").await;
}

#[tokio::test]
async fn disconnect_revokes_the_grant_and_forgets_it() {
    let sandbox = sandbox().await;
    let store = MemoryGrantStore::new();
    let app = app(&sandbox, &store);
    connect(&app, &sandbox, "company-a", "tenant-a").await;
    connect(&app, &sandbox, "company-b", "tenant-b").await;
    app.disconnect("tenant-a").await.expect("disconnect");
    assert_eq!(sandbox.revocations("company-a"), 1);
    assert!(store.load("tenant-a").await.unwrap().is_none());
    let client = client(&app);
    let result = client
        .get(format!("{}/v1/me", sandbox.api_base()))
        .with_extension(Connection::new("tenant-a"))
        .send()
        .await;
    assert!(matches!(
        token_error(result),
        Error::UnknownConnection { .. }
    ));
    assert_eq!(me_as(&client, &sandbox, "tenant-b").await, "company-b");
    app.disconnect("tenant-a")
        .await
        .expect("a second disconnect is no error");
}

#[tokio::test]
async fn requests_without_a_known_connection_are_never_sent() {
    let sandbox = sandbox().await;
    let app = app(&sandbox, &MemoryGrantStore::new());
    connect(&app, &sandbox, "company-a", "tenant-a").await;
    let client = client(&app);
    let api = sandbox.api_requests();
    let missing = client
        .get(format!("{}/v1/me", sandbox.api_base()))
        .send()
        .await;
    assert!(matches!(
        token_error(missing),
        Error::MissingConnection { .. }
    ));
    let unknown = client
        .get(format!("{}/v1/me", sandbox.api_base()))
        .with_extension(Connection::new("tenant-z"))
        .send()
        .await;
    assert!(matches!(
        token_error(unknown),
        Error::UnknownConnection { .. }
    ));
    assert_eq!(sandbox.api_requests(), api);
}

#[tokio::test]
async fn keep_alive_refreshes_idle_connections_only() {
    let sandbox = sandbox().await;
    let store = MemoryGrantStore::new();
    let app = app(&sandbox, &store);
    connect(&app, &sandbox, "company-a", "tenant-a").await;
    connect(&app, &sandbox, "company-b", "tenant-b").await;
    let report = app.keep_alive(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(
        (report.refreshed, report.failed.len()),
        (0, 0),
        "both are fresh"
    );
    let report = app.keep_alive(Duration::ZERO).await.unwrap();
    assert_eq!((report.refreshed, report.failed.len()), (2, 0));
    assert_eq!(
        (
            sandbox.refreshes("company-a"),
            sandbox.refreshes("company-b")
        ),
        (1, 1)
    );
    // Near its idle expiry: the sandbox's refresh tokens live 2 s from their last use.
    sandbox.set_refresh_token_lifetime(Duration::from_secs(2));
    app.keep_alive(Duration::ZERO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    app.keep_alive(Duration::ZERO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let report = app.keep_alive(Duration::ZERO).await.unwrap();
    assert_eq!(
        (report.refreshed, report.failed.len()),
        (2, 0),
        "{report:?}"
    );
    assert_eq!(sandbox.reuse_detected("company-a"), 0);
}

#[tokio::test]
async fn one_tower_service_serves_every_company() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tower::{Layer, ServiceExt};
    use understory_auth::ConnectionAuthLayer;

    let sandbox = sandbox().await;
    let app = app(&sandbox, &MemoryGrantStore::new());
    for (company, key) in COMPANIES {
        connect(&app, &sandbox, company, key).await;
    }
    let client = ConnectionAuthLayer::new(app.clone())
        .layer(Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>());
    let me = format!("{}/v1/me", sandbox.api_base());
    let request = |key: Option<&str>| {
        let mut request = http::Request::get(&me);
        if let Some(key) = key {
            request = request.extension(Connection::new(key));
        }
        request.body(Full::default()).unwrap()
    };
    for (company, key) in COMPANIES.iter().rev() {
        let response = client.clone().oneshot(request(Some(key))).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let me: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(me["company_id"], *company);
    }
    let api = sandbox.api_requests();
    let missing = client.clone().oneshot(request(None)).await.unwrap_err();
    assert!(matches!(
        Error::find_in(&*missing),
        Some(Error::MissingConnection { .. })
    ));
    let unknown = client
        .clone()
        .oneshot(request(Some("tenant-z")))
        .await
        .unwrap_err();
    assert!(matches!(
        Error::find_in(&*unknown),
        Some(Error::UnknownConnection { .. })
    ));
    assert_eq!(
        sandbox.api_requests(),
        api,
        "nothing was sent without its own token"
    );
}

#[tokio::test]
async fn no_refresh_token_code_state_or_verifier_is_ever_shown() {
    let logs = crate::common::capture_logs();
    let sandbox = sandbox().await;
    let store = MemoryGrantStore::new();
    let app = app(&sandbox, &store);
    let start = app.authorize();
    let pending = serde_json::to_value(&start.pending).unwrap();
    let callback = sandbox
        .consent(start.url.as_str(), "company-a")
        .await
        .unwrap();
    let param = |name: &str| {
        callback
            .trim_start_matches('?')
            .split('&')
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_owned()
    };
    let mut secrets = vec![
        param("code"),
        param("state"),
        pending["code_verifier"].as_str().unwrap().to_owned(),
    ];
    let shown = format!("{start:?} {app:?}");
    app.complete(start.pending.clone(), &callback, "tenant-a")
        .await
        .unwrap();
    secrets.push(stored_refresh_token(&store).await);
    // A refresh, a lost grant, a replayed code: each error and log line is checked.
    let report = app.keep_alive(Duration::ZERO).await.unwrap();
    assert_eq!(report.refreshed, 1, "{report:?}");
    secrets.push(stored_refresh_token(&store).await);
    sandbox.revoke_consent("company-a");
    let report = app.keep_alive(Duration::ZERO).await.unwrap();
    let mut errors: Vec<Error> = report.failed.into_iter().map(|(_, e)| e).collect();
    assert_eq!(errors.len(), 1);
    errors.push(
        app.complete(start.pending, &callback, "tenant-a")
            .await
            .unwrap_err(),
    );
    let grant = store.load("tenant-a").await.unwrap().unwrap();
    let everything = format!(
        "{shown} {errors:?} {} {grant:?} {store:?} {}",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        logs.text()
    );
    for secret in &secrets {
        assert!(secret.len() >= 16, "{secret}");
        assert!(
            !everything.contains(secret.as_str()),
            "shown: {secret}\n{everything}"
        );
    }
}

async fn stored_refresh_token(store: &MemoryGrantStore) -> String {
    let grant = store.load("tenant-a").await.unwrap().unwrap();
    grant.refresh_token.expose_secret().to_owned()
}
