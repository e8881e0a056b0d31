//! A stand-in for the user's browser in the authorization code flow: it sends the authorize
//! request over HTTP, as a company that consents or declines, and hands back the callback.

use std::time::Duration;

use http::header::{COOKIE, LOCATION};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::AUTHORIZE_PATH;
use super::authorize::{COMPANY_COOKIE, CONSENT_COOKIE};
use super::sandbox_error::SandboxError;
use super::server::SandboxServer;

/// How long the browser stand-in waits for the sandbox.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of an error page the browser stand-in reads.
const PAGE_LIMIT: usize = 64 * 1024;

impl SandboxServer {
    /// Opens `authorize_url` (this sandbox's `/oauth2/auth?...`, as your app builds it) as
    /// `company`, which consents at once, and returns the query string of the redirect
    /// (`code=...&scope=...&state=...`, or `error=...&error_description=...&state=...` when
    /// Hydra refuses the request): what Understory sends your callback.
    pub async fn consent(
        &self,
        authorize_url: impl AsRef<str>,
        company: &str,
    ) -> Result<String, SandboxError> {
        let company = utf8_percent_encode(company, NON_ALPHANUMERIC);
        self.browse(
            authorize_url.as_ref(),
            format!("{COMPANY_COOKIE}={company}"),
        )
        .await
    }

    /// Opens `authorize_url` as the company that declines: the query string of the redirect,
    /// `error=access_denied&error_description=...&state=...` (unless Hydra refuses first).
    pub async fn decline(&self, authorize_url: impl AsRef<str>) -> Result<String, SandboxError> {
        self.browse(authorize_url.as_ref(), format!("{CONSENT_COOKIE}=decline"))
            .await
    }

    async fn browse(&self, authorize_url: &str, cookie: String) -> Result<String, SandboxError> {
        let not_this_sandbox = SandboxError::NotThisSandbox {
            sandbox: self.addr(),
        };
        let Ok(url) = url::Url::parse(authorize_url) else {
            return Err(not_this_sandbox);
        };
        let ours = url.scheme() == "http"
            && url.host_str() == Some("127.0.0.1")
            && url.port() == Some(self.addr().port())
            && url.path() == AUTHORIZE_PATH;
        if !ours {
            return Err(not_this_sandbox);
        }
        let failed = |error: reqwest::Error| SandboxError::Request(error.without_url());
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(BROWSER_TIMEOUT)
            .build()
            .map_err(failed)?;
        let mut response = browser
            .get(url)
            .header(COOKIE, cookie)
            .send()
            .await
            .map_err(failed)?;
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok());
        if let Some(callback) = location.and_then(|location| url::Url::parse(location).ok()) {
            return Ok(callback.query().unwrap_or_default().to_owned());
        }
        let status = response.status().as_u16();
        let mut page = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            page.extend_from_slice(&chunk);
            if page.len() > PAGE_LIMIT {
                break;
            }
        }
        let page: serde_json::Value = serde_json::from_slice(&page).unwrap_or_default();
        let field = |name: &str| page[name].as_str().unwrap_or_default().to_owned();
        Err(SandboxError::NoRedirect {
            status,
            error: field("error"),
            description: field("error_description"),
        })
    }
}
