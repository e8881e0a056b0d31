//! The token client on corporate networks: a proxy and a private CA configured through
//! `configure_token_client`, what the crate keeps for itself, and transport errors that name
//! their cause. Every server here (the sandbox, a forward proxy, a TLS front end with a
//! certificate from a CA made in the test) listens on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, copy_bidirectional};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use understory_auth::testing::{SandboxServer, TokenFault};
use understory_auth::{Error, UnderstoryAuth, UnderstoryAuthBuilder, reqwest};

use crate::common::{
    LoopbackCertificate, capture_logs, credentials, loopback_certificate, sandbox,
};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A builder for `server`'s API, its tokens from `token_url`.
fn builder(server: &SandboxServer, token_url: String) -> UnderstoryAuthBuilder {
    UnderstoryAuth::builder(credentials(server))
        .token_url(token_url)
        .api_base(server.api_base())
}

/// A `configure_token_client` hook that sends plain-HTTP token requests through `proxy`.
fn through_proxy(
    proxy: String,
) -> impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder + Send + Sync + 'static {
    move |client| client.proxy(reqwest::Proxy::http(&proxy).expect("a valid proxy URL"))
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A forward HTTP proxy on 127.0.0.1 that relays each connection to the loopback origin its
/// first request names in absolute form, and records that request's line.
struct Proxy {
    addr: SocketAddr,
    request_lines: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start() -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let request_lines = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&request_lines);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay_first_request(client, Arc::clone(&record)));
            }
        });
        Ok(Proxy {
            addr,
            request_lines,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn request_lines(&self) -> Vec<String> {
        self.request_lines.lock().expect("not poisoned").clone()
    }
}

/// Reads the request head, records its line, and relays the connection to the origin it
/// names (only ever 127.0.0.1).
async fn relay_first_request(mut client: TcpStream, record: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default().to_owned();
    record.lock().expect("not poisoned").push(line.clone());
    // "POST http://127.0.0.1:PORT/oauth2/token HTTP/1.1"
    let authority = line
        .split(' ')
        .nth(1)
        .and_then(|uri| uri.parse::<http::Uri>().ok())
        .and_then(|uri| uri.authority().map(|a| a.as_str().to_owned()));
    let Some(authority) = authority.filter(|a| a.starts_with("127.0.0.1:")) else {
        return;
    };
    let Ok(mut origin) = TcpStream::connect(authority).await else {
        return;
    };
    if origin.write_all(&head).await.is_ok() {
        let _ = copy_bidirectional(&mut client, &mut origin).await;
    }
}

/// A private CA made for one test, and an HTTPS front end for the sandbox whose certificate
/// (for 127.0.0.1) it issued.
struct PrivateTls {
    ca_pem: String,
    token_url: String,
}

impl PrivateTls {
    async fn start(
        server: &SandboxServer,
    ) -> Result<PrivateTls, Box<dyn std::error::Error + Send + Sync>> {
        let LoopbackCertificate {
            ca_pem,
            certificate,
            key,
        } = loopback_certificate();
        let chain = vec![certificate.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let backend = server.addr();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let (Ok(mut tls), Ok(mut origin)) = (
                        acceptor.accept(client).await,
                        TcpStream::connect(backend).await,
                    ) else {
                        return;
                    };
                    let _ = copy_bidirectional(&mut tls, &mut origin).await;
                });
            }
        });
        Ok(PrivateTls {
            ca_pem,
            token_url: format!("https://127.0.0.1:{port}/oauth2/token"),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_token_request_goes_through_a_configured_proxy() -> TestResult {
    let server = sandbox().await;
    let proxy = Proxy::start().await?;
    let auth = builder(&server, server.token_url())
        .configure_token_client(through_proxy(proxy.url()))
        .build()?;

    auth.token().await?;

    assert_eq!(
        proxy.request_lines(),
        [format!("POST {} HTTP/1.1", server.token_url())]
    );
    assert_eq!(server.token_requests(), 1);
    Ok(())
}

#[tokio::test]
async fn a_dead_proxy_is_named_in_the_error() -> TestResult {
    let server = sandbox().await;
    let dead = format!("http://127.0.0.1:{}", closed_port()?);
    let auth = builder(&server, server.token_url())
        .configure_token_client(through_proxy(dead))
        .build()?;

    let err = auth.token().await.expect_err("the proxy is down");

    assert!(matches!(err, Error::Network { .. }), "{err:?}");
    assert!(err.to_string().contains("Connection refused"), "{err}");
    assert!(err.is_transient());
    assert_eq!(server.token_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn a_private_ca_is_an_unknown_issuer_without_the_hook() -> TestResult {
    let server = sandbox().await;
    let tls = PrivateTls::start(&server).await?;
    let auth = builder(&server, tls.token_url.clone()).build()?;

    let logs = capture_logs();
    let err = auth
        .token()
        .await
        .expect_err("the private CA is not trusted");

    let logs = logs.text();
    assert!(matches!(err, Error::Network { .. }), "{err:?}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert!(
        !err.is_transient(),
        "waiting does not make a certificate trusted"
    );
    let warning = logs
        .lines()
        .find(|line| line.contains("token request failed"))
        .unwrap_or_default();
    assert!(warning.contains("UnknownIssuer"), "{logs}");
    assert!(warning.contains("transient=false"), "{logs}");
    assert_eq!(server.token_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn the_hook_adds_a_private_ca() -> TestResult {
    let server = sandbox().await;
    let tls = PrivateTls::start(&server).await?;
    let ca = reqwest::Certificate::from_pem(tls.ca_pem.as_bytes())?;
    let auth = builder(&server, tls.token_url.clone())
        .configure_token_client(move |client| client.tls_certs_merge([ca.clone()]))
        .build()?;

    let token = auth.token().await?;

    assert_eq!(server.issued_tokens(), [token.secret()]);
    assert_eq!(server.token_requests(), 1);
    Ok(())
}

#[tokio::test]
async fn the_hook_cannot_turn_on_redirects_or_lift_the_timeout() -> TestResult {
    let server = sandbox().await;
    let lenient = |client: reqwest::ClientBuilder| {
        client
            .redirect(reqwest::redirect::Policy::limited(10))
            .timeout(Duration::from_secs(3600))
            .connect_timeout(Duration::from_secs(3600))
    };
    server.push_token_fault(TokenFault::Redirect {
        location: server.token_url(),
    });
    let redirected = builder(&server, server.token_url())
        .configure_token_client(lenient)
        .build()?
        .token()
        .await
        .expect_err("the redirect is not followed");
    server.set_token_delay(Duration::from_secs(3600));
    let slow = builder(&server, server.token_url())
        .configure_token_client(lenient)
        .token_timeout(Duration::from_millis(200))
        .build()?
        .token()
        .await
        .expect_err("the token endpoint never answers in time");

    assert_eq!(
        redirected.status(),
        Some(http::StatusCode::TEMPORARY_REDIRECT)
    );
    assert!(matches!(slow, Error::Timeout { .. }), "{slow:?}");
    assert_eq!(server.token_requests(), 2);
    assert!(server.issued_tokens().is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Proxies from the environment and in code (issue 20, 1 and 2)
// ---------------------------------------------------------------------------------------------

/// Set for the child process [`proxies_in_the_environment`] starts: only then does
/// [`proxy_environment_child`] run (the environment is the whole process's, so the proxy
/// variables are set in a process of their own).
const CHILD: &str = "UNDERSTORY_AUTH_TEST_PROXY_CHILD";
/// A host the child's token request names but never reaches: the proxy refuses it.
const UNREACHED_HOST: &str = "auth.example.invalid";

#[tokio::test]
async fn proxies_in_the_environment() -> TestResult {
    let proxy = Proxy::start().await?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?);
    child
        .args(["network::proxy_environment_child", "--exact", "--nocapture"])
        .env(CHILD, "1")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("REQUEST_METHOD");
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        child.env(var, proxy.url());
        child.env_remove(var.to_lowercase());
    }
    child
        .env("PROXY_URL", proxy.url())
        .env(
            "UNDERSTORY_CLIENT_ID",
            understory_auth::testing::DEFAULT_CLIENT_ID,
        )
        .env("UNDERSTORY_CLIENT_SECRET", "not-the-sandbox-secret")
        .env_remove("UNDERSTORY_SCOPES");
    let output = child.output().await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run: {stdout}"
    );
    // The loopback sandbox was reached directly; the one other host only through the proxy.
    assert_eq!(
        proxy.request_lines(),
        [format!("CONNECT {UNREACHED_HOST}:443 HTTP/1.1")]
    );
    Ok(())
}

/// Runs in the child of [`proxies_in_the_environment`], with `HTTP_PROXY`, `HTTPS_PROXY`
/// and `ALL_PROXY` pointing at a proxy that refuses everything but loopback origins.
#[tokio::test]
async fn proxy_environment_child() -> TestResult {
    if std::env::var_os(CHILD).is_none() {
        return Ok(());
    }
    let proxy_url = std::env::var("PROXY_URL")?;
    let server = sandbox().await;

    // A loopback token URL is never proxied from the environment.
    server.auth()?.token().await?;
    assert_eq!(server.token_requests(), 1);

    // Any other goes through the environment's proxy, which the error names.
    let err = builder(&server, format!("https://{UNREACHED_HOST}/oauth2/token"))
        .build()?
        .token()
        .await
        .expect_err("the proxy refuses the tunnel");
    let Error::Network {
        proxy,
        proxy_from_env,
        ..
    } = &err
    else {
        panic!("expected a network error: {err:?}");
    };
    assert_eq!(proxy.as_deref(), Some(proxy_url.as_str()), "{err}");
    assert!(proxy_from_env);
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "could not reach the auth server through the proxy {proxy_url} (from the environment): "
        )),
        "{message}"
    );
    assert!(message.contains("NO_PROXY"), "{message}");

    // A proxy set in code applies to a loopback URL too, and is named as set in code.
    let dead = format!("http://127.0.0.1:{}", closed_port()?);
    let err = builder(&server, server.token_url())
        .configure_token_client(through_proxy(dead.clone()))
        .build()?
        .token()
        .await
        .expect_err("the proxy set in code is down");
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "through the proxy {dead} (set with configure_token_client)"
        )),
        "{message}"
    );
    assert!(!message.contains("_PROXY"), "{message}");
    assert_eq!(server.token_requests(), 1);

    // A key read from the environment: the advice names the variables.
    let err = UnderstoryAuth::builder(understory_auth::Credentials::from_env()?)
        .token_url(server.token_url())
        .api_base(server.api_base())
        .build()?
        .token()
        .await
        .expect_err("a wrong secret");
    assert_eq!(err.oauth_code(), Some("invalid_client"));
    assert!(
        err.to_string().contains("UNDERSTORY_CLIENT_SECRET"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_proxy_set_in_code_is_named_without_its_credentials_or_the_variables() -> TestResult {
    let server = sandbox().await;
    let port = closed_port()?;
    let auth = builder(&server, server.token_url())
        .configure_token_client(through_proxy(format!(
            "http://proxy-user:proxy-password@127.0.0.1:{port}"
        )))
        .build()?;

    let err = auth.token().await.expect_err("the proxy is down");

    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "could not reach the auth server through the proxy http://127.0.0.1:{port} (set with configure_token_client): "
        )),
        "{message}"
    );
    assert!(
        message.contains("check the proxy given to configure_token_client"),
        "{message}"
    );
    for hidden in ["proxy-user", "proxy-password", "HTTPS_PROXY", "NO_PROXY"] {
        assert!(
            !format!("{err} {err:?}").contains(hidden),
            "{hidden}: {err:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_failure_says_when_it_is_retried_and_a_cached_one_says_so() -> TestResult {
    let server = sandbox().await;
    let port = closed_port()?;
    let auth = builder(&server, format!("http://127.0.0.1:{port}/oauth2/token")).build()?;

    let first = auth.token().await.expect_err("nothing listens");
    let second = auth.token().await.expect_err("inside the failure window");

    let message = first.to_string();
    assert!(
        message.starts_with("could not reach the auth server: "),
        "{message}"
    );
    assert!(message.contains("no proxy was used"), "{message}");
    assert!(message.contains("; retried in "), "{message}");
    assert!(!message.contains("cached failure"), "{message}");
    assert!(matches!(
        first,
        Error::Network {
            next_attempt_in: Some(_),
            failed_ago: None,
            ..
        }
    ));

    let message = second.to_string();
    assert!(message.contains(" (cached failure from "), "{message}");
    assert!(message.contains(" ago; next attempt in "), "{message}");
    assert!(matches!(
        second,
        Error::Network {
            next_attempt_in: Some(_),
            failed_ago: Some(_),
            ..
        }
    ));
    assert_eq!(auth.stats().fetches, 1);
    assert_eq!(auth.stats().failed_fast, 1);
    Ok(())
}

#[tokio::test]
async fn a_network_error_chain_names_its_cause_once() -> TestResult {
    let server = sandbox().await;
    let port = closed_port()?;
    let auth = builder(&server, format!("http://127.0.0.1:{port}/oauth2/token")).build()?;

    let err = auth.token().await.expect_err("nothing listens");

    // What anyhow's `{:#}` and eyre's reports print: every error of the chain.
    let chain: Vec<String> =
        std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .map(ToString::to_string)
        .collect();
    let printed = chain.join(": ");
    assert_eq!(
        printed.matches("Connection refused").count(),
        1,
        "{printed}"
    );
    // The transport error is still at hand.
    let Error::Network { error, .. } = &err else {
        panic!("expected a network error: {err:?}");
    };
    assert!(error.is_connect(), "{error:?}");
    Ok(())
}
