//! Which requests may carry the token: an origin (scheme, host, port) rule.
//!
//! A bearer token is worth as much as the key that minted it, so it goes only to the origins
//! the user configured ([`UnderstoryAuthBuilder::api_base`](crate::UnderstoryAuthBuilder::api_base)
//! and [`allow_origin`](crate::UnderstoryAuthBuilder::allow_origin)), and those must be HTTPS;
//! plain HTTP is accepted only for loopback hosts, which is what tests use.

use std::net::IpAddr;

use url::Url;

use crate::Error;

/// One origin: scheme, host and port, compared exactly (hosts are lower-cased by parsing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    /// `scheme` as `http::Uri` holds it: comparing two is one enum comparison for HTTP(S).
    uri_scheme: http::uri::Scheme,
    /// As `Url::host_str` spells it: lower case, IPv6 in brackets.
    host: String,
    port: u16,
    /// `host:port`, and `host` alone when the port is the scheme's default: the authorities
    /// a URI of this origin usually has, compared byte for byte on the hot path.
    authority: String,
    default_port_authority: Option<String>,
}

impl Origin {
    /// Parses `url` (what the user configured as `what`) and insists on HTTPS or loopback.
    pub(crate) fn parse(url: &str, what: &str) -> Result<Self, Error> {
        let parsed = parse_secure_url(url, what)?;
        Origin::of_url(&parsed).ok_or_else(|| Error::config(format!("{what} {url:?} has no host")))
    }

    fn of_url(url: &Url) -> Option<Self> {
        let host = url.host_str()?.to_owned();
        let port = url.port_or_known_default()?;
        Some(Origin {
            scheme: url.scheme().to_owned(),
            uri_scheme: url.scheme().parse().ok()?,
            authority: format!("{host}:{port}"),
            default_port_authority: url.port().is_none().then(|| host.clone()),
            host,
            port,
        })
    }

    /// Whether a reqwest/url request URL goes to this origin.
    pub(crate) fn matches_url(&self, url: &Url) -> bool {
        url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && url.port_or_known_default() == Some(self.port)
    }

    /// Whether an `http::Uri` goes to this origin; `None` when the URI names no origin
    /// (a relative URI, as tonic's generated clients produce).
    pub(crate) fn matches_uri(&self, uri: &http::Uri) -> Option<bool> {
        let scheme = uri.scheme()?;
        let authority = uri.authority()?;
        // One enum comparison in the common case; other spellings (`HTTPS://`) by letters.
        if *scheme != self.uri_scheme && !scheme.as_str().eq_ignore_ascii_case(&self.scheme) {
            return Some(false);
        }
        // The common case, without parsing the authority: exactly as configured.
        let spelled = authority.as_str();
        if spelled == self.authority || self.default_port_authority.as_deref() == Some(spelled) {
            return Some(true);
        }
        // `http::Uri` keeps the host's letter case, a user name, an explicit default port.
        let port = authority.port_u16().or(match self.scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        });
        Some(authority.host().eq_ignore_ascii_case(&self.host) && port == Some(self.port))
    }
}

/// The origins a token may be sent to.
#[derive(Debug, Clone)]
pub(crate) struct AllowedOrigins(Vec<Origin>);

impl AllowedOrigins {
    pub(crate) fn new(origins: Vec<Origin>) -> Self {
        AllowedOrigins(origins)
    }

    pub(crate) fn allows_url(&self, url: &Url) -> bool {
        self.position_of_url(url).is_some()
    }

    /// Which of the allowed origins `url` goes to, if any: a cheap way to tell later
    /// whether two URLs share an allowed origin.
    pub(crate) fn position_of_url(&self, url: &Url) -> Option<usize> {
        self.0.iter().position(|o| o.matches_url(url))
    }

    /// `None` when the URI names no origin (relative), else whether it is allowed.
    pub(crate) fn allows_uri(&self, uri: &http::Uri) -> Option<bool> {
        uri.scheme()?;
        uri.authority()?;
        Some(self.0.iter().any(|o| o.matches_uri(uri) == Some(true)))
    }
}

/// Parses `url` and refuses anything but HTTPS, or plain HTTP to a loopback host, and any
/// URL holding a user name or password (which would end up in logs and `Debug` output).
///
/// Errors show the URL only once it is known to hold no credentials.
pub(crate) fn parse_secure_url(url: &str, what: &str) -> Result<Url, Error> {
    let parsed = Url::parse(url).map_err(|e| Error::config(format!("{what} is not a URL: {e}")))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::config(format!(
            "{what} must not hold a user name or password; put credentials in the Credentials"
        )));
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        "http" => Err(Error::config(format!(
            "{what} {url:?} uses plain HTTP; use https:// (plain HTTP is allowed only for loopback hosts, in tests)"
        ))),
        other => Err(Error::config(format!(
            "{what} {url:?} has scheme {other:?}; use https://"
        ))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_or_loopback_only() {
        assert!(Origin::parse("https://api.understory.io", "api_base").is_ok());
        assert!(Origin::parse("http://127.0.0.1:8080", "api_base").is_ok());
        assert!(Origin::parse("http://127.1.2.3:8080", "api_base").is_ok());
        assert!(Origin::parse("http://[::1]:8080", "api_base").is_ok());
        assert!(Origin::parse("http://localhost:8080", "api_base").is_ok());
        let err = Origin::parse("http://api.understory.io", "api_base").unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
        assert!(Origin::parse("http://10.0.0.1", "api_base").is_err());
        assert!(Origin::parse("ftp://api.understory.io", "api_base").is_err());
        assert!(Origin::parse("not a url", "api_base").is_err());
        for with_credentials in [
            "https://u:pw@api.understory.io",
            "http://u:pw@example.com",
            "https://u@x.io",
        ] {
            let err = Origin::parse(with_credentials, "api_base").unwrap_err();
            assert!(err.to_string().contains("user name or password"), "{err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }

    #[test]
    fn matches_scheme_host_and_port_exactly() {
        let o = Origin::parse("https://api.understory.io", "api_base").unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(o.matches_url(&url("https://api.understory.io/v1/me")));
        assert!(o.matches_url(&url("https://API.understory.io:443/v1/me")));
        assert!(!o.matches_url(&url("http://api.understory.io/v1/me")));
        assert!(!o.matches_url(&url("https://api.understory.io:8443/v1/me")));
        assert!(!o.matches_url(&url("https://api.understory.io.evil.com/v1/me")));
        assert!(!o.matches_url(&url("https://evil.com/?https://api.understory.io")));

        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(
            o.matches_uri(&uri("https://API.understory.io/v1")),
            Some(true)
        );
        assert_eq!(
            o.matches_uri(&uri("https://api.understory.io:443/")),
            Some(true)
        );
        assert_eq!(
            o.matches_uri(&uri("http://api.understory.io/")),
            Some(false)
        );
        assert_eq!(o.matches_uri(&uri("https://other.io/")), Some(false));
        assert_eq!(o.matches_uri(&uri("/v1/me")), None);

        let v6 = Origin::parse("http://[::1]:8080", "api_base").unwrap();
        assert_eq!(v6.matches_uri(&uri("http://[::1]:8080/x")), Some(true));
        assert_eq!(v6.matches_uri(&uri("http://[::2]:8080/x")), Some(false));
        assert_eq!(
            o.matches_uri(&uri("https://user@api.understory.io/v1")),
            Some(true)
        );
        assert_eq!(
            o.matches_uri(&uri("HTTPS://api.understory.io/v1")),
            Some(true)
        );
        assert_eq!(
            o.matches_uri(&uri("https://api.understory.io:444/")),
            Some(false)
        );
        let port = Origin::parse("http://127.0.0.1:8080", "api_base").unwrap();
        assert_eq!(
            port.matches_uri(&uri("http://127.0.0.1:8080/v1")),
            Some(true)
        );
        assert_eq!(port.matches_uri(&uri("http://127.0.0.1/v1")), Some(false));
        assert_eq!(
            port.matches_uri(&uri("http://127.0.0.1:80/v1")),
            Some(false)
        );
    }

    #[test]
    fn allowed_origins_answer_for_relative_uris_with_none() {
        let allowed = AllowedOrigins::new(vec![
            Origin::parse("https://api.understory.io", "api_base").unwrap(),
        ]);
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(allowed.allows_uri(&uri("/v1/me")), None);
        assert_eq!(allowed.allows_uri(&uri("https://x.io/")), Some(false));
    }
}
