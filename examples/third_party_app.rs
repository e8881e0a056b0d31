//! `cargo run --example third_party_app --features test-util`
//!
//! A third-party app (axum) that many Understory companies connect to:
//!
//! * `GET /connect?tenant=KEY` (the "Connect Understory" button of your tenant `KEY`) starts
//!   an authorization, keeps its `PendingAuthorization` server-side under a random session
//!   cookie (never in a URL: it holds the PKCE verifier) and redirects the browser to
//!   Understory;
//! * `GET /oauth/callback` (the registered redirect URI) takes the session's pending
//!   authorization (once), completes it with Understory's query string and saves the grant;
//! * a task calls `/v1/me` for every connected company through one reqwest-middleware
//!   client: the app is the middleware, and each request names its `Connection`.
//!
//! With no credentials in the environment it runs against the built-in sandbox on
//! 127.0.0.1, plays the browser for two companies through its own routes, prints each
//! company's `/v1/me` and exits. With `UNDERSTORY_CLIENT_ID` and `UNDERSTORY_CLIENT_SECRET`
//! (optionally `UNDERSTORY_SCOPES`) it serves Understory for real: set
//! `UNDERSTORY_REDIRECT_URI` to the callback URL registered for the app (its path must be
//! `/oauth/callback`) and `APP_LISTEN` to the address to serve on (default
//! `127.0.0.1:3000`, behind your HTTPS proxy); it calls the API for every company hourly
//! and runs `keep_alive` daily. Its `MemoryGrantStore` forgets the connections on restart:
//! a real app gives the builder a durable `GrantStore`.
//!
//! `cargo test --example third_party_app --features test-util` runs the tests at the bottom.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use http::header::{COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use understory_auth::reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use understory_auth::serde_json::Value;
use understory_auth::testing::SandboxServer;
use understory_auth::{
    Connection, Credentials, DEFAULT_API_BASE, DEFAULT_AUTHORIZATION_LIFETIME, ENV_CLIENT_ID,
    ENV_SCOPES, GrantState, GrantStore, MemoryGrantStore, PendingAuthorization, UnderstoryApp,
    reqwest,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The callback's path; the redirect URI registered with Understory ends in it.
const CALLBACK_PATH: &str = "/oauth/callback";
/// The cookie that names the browser's pending authorization.
const SESSION_COOKIE: &str = "understory_session";
/// The most authorizations in progress at once (a real app's `/connect` is behind its login).
const MAX_SESSIONS: usize = 10_000;
/// The longest tenant key `/connect` accepts.
const MAX_TENANT_LEN: usize = 128;
/// How often the production task calls the API for every company, and runs `keep_alive`.
const API_EVERY: Duration = Duration::from_secs(3600);
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(24 * 3600);
/// `keep_alive` refreshes connections idle this long (well under Hydra's 720 h).
const KEEP_ALIVE_OLDER_THAN: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the routes share.
struct Shared {
    app: UnderstoryApp,
    /// Session cookie value → the tenant connecting and its pending authorization.
    sessions: Mutex<HashMap<String, (String, PendingAuthorization)>>,
    /// Whether cookies get `Secure` (the redirect URI is `https`).
    secure_cookie: bool,
}

/// The app's routes.
fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/connect", get(connect))
        .route(CALLBACK_PATH, get(callback))
        .with_state(shared)
}

/// "Connect Understory": a fresh authorization, its pending half kept under a new session.
/// (The tenant comes from the query here; a real app takes it from its own login session.)
async fn connect(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let tenant = url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "tenant")
        .map(|(_, value)| value.into_owned())
        .filter(|tenant| !tenant.is_empty() && tenant.len() <= MAX_TENANT_LEN);
    let Some(tenant) = tenant else {
        return (StatusCode::BAD_REQUEST, "connect?tenant=KEY").into_response();
    };
    let session = match session_id() {
        Ok(session) => session,
        Err(error) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response();
        }
    };
    let start = shared.app.authorize();
    {
        let mut sessions = shared.sessions.lock();
        // Abandoned authorizations cannot be completed after their lifetime: drop them.
        let now = SystemTime::now();
        sessions.retain(|_, (_, pending)| {
            now.duration_since(pending.created_at())
                .is_ok_and(|age| age < DEFAULT_AUTHORIZATION_LIFETIME)
        });
        if sessions.len() >= MAX_SESSIONS {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections in progress",
            )
                .into_response();
        }
        sessions.insert(session.clone(), (tenant, start.pending));
    }
    let secure = if shared.secure_cookie { "; Secure" } else { "" };
    // `SameSite=Lax`: the browser sends it on Understory's top-level redirect back.
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path={CALLBACK_PATH}; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        DEFAULT_AUTHORIZATION_LIFETIME.as_secs()
    );
    ([(SET_COOKIE, cookie)], Redirect::to(start.url.as_str())).into_response()
}

/// The redirect URI: Understory's query string, checked against the session's pending
/// authorization, which is used up whatever the outcome.
async fn callback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let session = cookie(&headers, SESSION_COOKIE);
    let pending = session.and_then(|session| shared.sessions.lock().remove(session));
    let Some((tenant, pending)) = pending else {
        return (
            StatusCode::BAD_REQUEST,
            "no authorization in progress in this browser: connect again",
        )
            .into_response();
    };
    let cleared = format!("{SESSION_COOKIE}=; Path={CALLBACK_PATH}; Max-Age=0");
    let query = query.unwrap_or_default();
    match shared.app.complete(pending, &query, &tenant).await {
        Ok(company) => (
            [(SET_COOKIE, cleared)],
            format!("{tenant} is connected to {} ({})", company.name, company.id),
        )
            .into_response(),
        // The crate's errors carry no secrets; a declined consent says so.
        Err(error) => (
            StatusCode::BAD_REQUEST,
            [(SET_COOKIE, cleared)],
            format!("could not connect {tenant}: {error}"),
        )
            .into_response(),
    }
}

/// 32 random bytes from the OS, hex: a session id nobody can guess.
fn session_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random bytes for a session: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The task's work: `/v1/me` for every connected company (every active grant in the store),
/// through the one client, each request naming its connection. Returns the answers.
async fn call_every_company(
    client: &ClientWithMiddleware,
    store: &MemoryGrantStore,
    api_base: &str,
) -> Result<Vec<(String, Value)>> {
    let mut answers = Vec::new();
    let mut grants = store.list().await?;
    grants.sort_by(|a, b| a.key.cmp(&b.key));
    for grant in grants {
        if grant.state != GrantState::Active {
            // A lost grant (consent revoked): the company must connect again.
            println!("{}: needs to connect again", grant.key);
            continue;
        }
        // One company's failure (its API refusing, a lost grant) does not stop the others.
        match me(client, api_base, &grant.key).await {
            Ok(me) => answers.push((grant.key, me)),
            Err(error) => eprintln!("{}: {error}", grant.key),
        }
    }
    Ok(answers)
}

/// `/v1/me` as the company of connection `key`.
async fn me(client: &ClientWithMiddleware, api_base: &str, key: &str) -> Result<Value> {
    let response = client
        .get(format!("{api_base}/v1/me"))
        .with_extension(Connection::new(key))
        .send()
        .await?
        .error_for_status()?;
    Ok(understory_auth::serde_json::from_slice(
        &response.bytes().await?,
    )?)
}

/// The one client for every company: the app is its middleware.
fn api_client(app: &UnderstoryApp) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(app.clone())
        .build()
}

/// The sandbox run: the app on 127.0.0.1, two companies connecting through its routes, and
/// the task's calls once. Returns the sandbox, the app's address and the task's answers.
async fn demo(
    companies: &[(&str, &str)],
) -> Result<(SandboxServer, SocketAddr, Vec<(String, Value)>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let sandbox = SandboxServer::builder()
        .app(
            "example-app",
            session_id()?,
            [format!("http://{addr}{CALLBACK_PATH}")],
        )
        .start()
        .await?;
    let store = MemoryGrantStore::new();
    let app = sandbox.app_builder().grant_store(store.clone()).build()?;
    let shared = Arc::new(Shared {
        app: app.clone(),
        sessions: Mutex::new(HashMap::new()),
        secure_cookie: false,
    });
    let server = axum::serve(listener, routes(shared));
    tokio::spawn(async move { server.await });

    for (tenant, company) in companies {
        let page = connect_as(&sandbox, addr, tenant, company).await?;
        println!("{page}");
    }
    let answers = call_every_company(&api_client(&app), &store, &sandbox.api_base()).await?;
    Ok((sandbox, addr, answers))
}

/// The user's browser: `/connect`, Understory's consent as `company`, the callback with
/// the session cookie. Returns the callback's page.
async fn connect_as(
    sandbox: &SandboxServer,
    app: SocketAddr,
    tenant: &str,
    company: &str,
) -> Result<String> {
    let browser = browser()?;
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("tenant", tenant)
        .finish();
    let connect = browser
        .get(format!("http://{app}/connect?{query}"))
        .send()
        .await?;
    let header = |name: http::HeaderName| {
        connect
            .headers()
            .get(&name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .ok_or(format!(
                "/connect answered {} without {name}",
                connect.status()
            ))
    };
    let (authorize_url, set_cookie) = (header(LOCATION)?, header(SET_COOKIE)?);
    let session = set_cookie.split(';').next().unwrap_or_default().to_owned();
    let query = sandbox.consent(&authorize_url, company).await?;
    let callback = browser
        .get(format!("http://{app}{CALLBACK_PATH}?{query}"))
        .header(COOKIE, session)
        .send()
        .await?;
    let status = callback.status();
    let page = callback.text().await?;
    if !status.is_success() {
        return Err(format!("the callback answered {status}: {page}").into());
    }
    Ok(page)
}

/// A browser stand-in that does not follow redirects (the test reads them).
fn browser() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Serving Understory for real, with the app's credentials from the environment.
async fn production() -> Result {
    let mut credentials = Credentials::from_env()?;
    if std::env::var_os(ENV_SCOPES).is_none() {
        credentials = credentials.with_scopes(["openid", "offline"]);
    }
    let redirect_uri = std::env::var("UNDERSTORY_REDIRECT_URI")
        .map_err(|_| "set UNDERSTORY_REDIRECT_URI to the app's registered callback URL")?;
    let listen = std::env::var("APP_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let store = MemoryGrantStore::new();
    let app = UnderstoryApp::builder(credentials)
        .redirect_uri(redirect_uri.clone())
        .grant_store(store.clone())
        .on_needs_reauthorization(|key| eprintln!("{key}: lost its grant; ask it to connect again"))
        .build()?;
    let shared = Arc::new(Shared {
        app: app.clone(),
        sessions: Mutex::new(HashMap::new()),
        secure_cookie: redirect_uri.starts_with("https://"),
    });
    let listener = TcpListener::bind(&listen).await?;
    println!("serving on http://{listen}: send your users to /connect?tenant=THEIR_ID");
    tokio::spawn(async move {
        let client = api_client(&app);
        let mut calls = tokio::time::interval(API_EVERY);
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
        loop {
            tokio::select! {
                _ = calls.tick() => match call_every_company(&client, &store, DEFAULT_API_BASE).await {
                    Ok(answers) => answers.iter().for_each(|(key, me)| println!("{key}: {me}")),
                    Err(error) => eprintln!("calling the API: {error}"),
                },
                _ = keep_alive.tick() => match app.keep_alive(KEEP_ALIVE_OLDER_THAN).await {
                    Ok(report) => {
                        println!("keep_alive refreshed {} connections", report.refreshed);
                        for (key, error) in report.failed {
                            eprintln!("keep_alive {key}: {error}");
                        }
                    }
                    Err(error) => eprintln!("keep_alive: {error}"),
                },
            }
        }
    });
    axum::serve(listener, routes(shared)).await?;
    Ok(())
}

/// The sandbox run unless the app's credentials are in the environment. An error ends it
/// with exit code 1 (the crate's errors carry no secrets, in `Debug` neither).
#[tokio::main]
async fn main() -> Result {
    if std::env::var_os(ENV_CLIENT_ID).is_some() {
        return production().await;
    }
    println!("no {ENV_CLIENT_ID} set: running against the built-in sandbox");
    let (_sandbox, _addr, answers) =
        demo(&[("tenant-1", "company-a"), ("tenant-2", "company-b")]).await?;
    for (key, me) in answers {
        println!("{key}: /v1/me = {me}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_companies_connect_through_the_routes_and_the_task_calls_each() -> Result {
        let (sandbox, _, answers) =
            demo(&[("tenant-1", "company-a"), ("tenant-2", "company-b")]).await?;

        let ids: Vec<(&str, &str)> = answers
            .iter()
            .map(|(key, me)| (key.as_str(), me["company_id"].as_str().unwrap_or_default()))
            .collect();
        assert_eq!(ids, [("tenant-1", "company-a"), ("tenant-2", "company-b")]);
        for company in ["company-a", "company-b"] {
            assert_eq!(sandbox.consents(company), 1, "{company}");
            assert_eq!(sandbox.code_exchanges(company), 1, "{company}");
            // The completed authorization's token served the task: no refresh.
            assert_eq!(sandbox.refreshes(company), 0, "{company}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn the_pending_authorization_never_leaves_the_server_and_is_used_once() -> Result {
        let (sandbox, app, _) = demo(&[]).await?;
        let browser = browser()?;
        let connect = browser
            .get(format!("http://{app}/connect?tenant=tenant-9"))
            .send()
            .await?;
        assert_eq!(connect.status(), StatusCode::SEE_OTHER);
        let location = connect.headers()[LOCATION].to_str()?.to_owned();
        let set_cookie = connect.headers()[SET_COOKIE].to_str()?.to_owned();
        assert!(!location.contains("verifier") && !set_cookie.contains("verifier"));
        assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
        let session = set_cookie.split(';').next().unwrap_or_default().to_owned();
        let query = sandbox.consent(&location, "company-b").await?;
        let callback = format!("http://{app}{CALLBACK_PATH}?{query}");

        // Without the session cookie: refused, and no code exchange.
        let refused = browser.get(&callback).send().await?;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        assert_eq!(sandbox.code_exchanges("company-b"), 0);

        // With it: connected; the session is used up, so a replay is refused before any
        // request.
        for expected in [StatusCode::OK, StatusCode::BAD_REQUEST] {
            let answer = browser.get(&callback).header(COOKIE, &session);
            assert_eq!(answer.send().await?.status(), expected);
        }
        assert_eq!(sandbox.code_exchanges("company-b"), 1);
        Ok(())
    }

    #[tokio::test]
    async fn connect_needs_a_tenant() -> Result {
        let (_sandbox, app, _) = demo(&[]).await?;
        let answer = browser()?
            .get(format!("http://{app}/connect"))
            .send()
            .await?;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        Ok(())
    }
}
