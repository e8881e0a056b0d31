//! `cargo run --example quickstart --features test-util`
//!
//! With `UNDERSTORY_CLIENT_ID` and `UNDERSTORY_CLIENT_SECRET` set, calls Understory's
//! `GET /v1/me` with a token for that key. Without them, runs against a local sandbox and
//! shows, with numbers from the sandbox and the cache, what the middleware does for you.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::future::join_all;
use understory_auth::reqwest::{self, Response};
use understory_auth::testing::SandboxServer;
use understory_auth::{Credentials, Error, UnderstoryAuth, reqwest_middleware};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Credentials::from_env() {
        Ok(credentials) => call_understory(credentials).await,
        Err(Error::MissingEnv { var, .. }) => {
            println!("{var} is not set: running against a local sandbox instead.\n");
            sandbox_tour().await
        }
        Err(other) => Err(other.into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The real thing: one request to Understory's API.
async fn call_understory(credentials: Credentials) -> Result {
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(UnderstoryAuth::new(credentials))
        .build();
    let me = client.get("https://api.understory.io/v1/me").send().await?;
    println!("GET https://api.understory.io/v1/me -> {}", me.status());
    println!("{}", me.text().await?);
    Ok(())
}

/// The same client against the sandbox, with the numbers that show what happened.
async fn sandbox_tour() -> Result {
    let sandbox = SandboxServer::start().await?;
    let credentials = Credentials::new(sandbox.client_id(), sandbox.client_secret());
    let auth = UnderstoryAuth::builder(credentials)
        .token_url(sandbox.token_url())
        .api_base(sandbox.api_base())
        .build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(auth.clone())
        .build();
    let me = format!("{}/v1/me", sandbox.api_base());

    // 1. Many requests at once on a cold cache share one token request.
    let ok = count_ok(join_all((0..200).map(|_| client.get(&me).send())).await);
    println!(
        "1. 200 concurrent GET /v1/me: {ok} answered 200 OK, after {} token request.",
        sandbox.token_requests()
    );

    // 2. A revoked token heals itself: drop it, fetch one new token, resend once.
    let revoked = sandbox.issued_tokens().pop().ok_or("no token was issued")?;
    sandbox.revoke_token(&revoked);
    sandbox.set_token_lifetime(Duration::from_secs(3)); // for step 3
    sandbox.reset_counters();
    let status = client.get(&me).send().await?.status();
    println!(
        "2. The server revoked that token. GET /v1/me: {status}, after {} API requests (the 401, \
         then the retry), {} token dropped and {} token request.",
        sandbox.api_requests(),
        auth.stats().invalidations,
        sandbox.token_requests()
    );

    // 3. Short-lived tokens are replaced in the background, before they expire.
    let before = auth.stats();
    let mut ok = 0;
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..20 {
        ticks.tick().await;
        ok += count_ok([client.get(&me).send().await]);
    }
    let after = auth.stats();
    let background = after.background_refreshes - before.background_refreshes;
    let waited = (after.fetches - before.fetches - background)
        + (after.coalesced_waits - before.coalesced_waits);
    println!(
        "3. New tokens live 3 s. 20 GET /v1/me over 2 s: {ok} answered 200 OK; {background} \
         token request ran in the background before the token expired, and {waited} requests \
         waited for a token."
    );

    println!(
        "\nSet UNDERSTORY_CLIENT_ID and UNDERSTORY_CLIENT_SECRET to call \
         https://api.understory.io/v1/me instead."
    );
    Ok(())
}

/// How many of `responses` are successful answers.
fn count_ok(responses: impl IntoIterator<Item = reqwest_middleware::Result<Response>>) -> usize {
    responses
        .into_iter()
        .filter(|response| response.as_ref().is_ok_and(|r| r.status().is_success()))
        .count()
}
