//! [Which requests carry the token](crate#which-requests-carry-the-token): the one place
//! both integrations ask ([`AllowedOrigins::destination`]).

#![cfg_attr(not(any(feature = "middleware", feature = "tower")), allow(dead_code))]

use std::net::IpAddr;

use http::header::{AUTHORIZATION, HOST};
use http::uri::{Authority, Scheme};
use http::{Extensions, HeaderMap};
use url::Url;

use crate::Error;

/// A request extension that sends the request without a token, even to the API
/// (`with_extension(SkipAuth)`, or `http::Request::get(url).extension(SkipAuth)`).
///
/// ```
/// # #[cfg(all(feature = "test-util", feature = "middleware"))]
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use understory_auth::{SkipAuth, reqwest, reqwest_middleware};
///
/// let sandbox = understory_auth::testing::SandboxServer::start().await?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(sandbox.auth()?)
///     .build();
///
/// let anonymous = client
///     .get(format!("{}/v1/me", sandbox.api_base()))
///     .with_extension(SkipAuth)
///     .send()
///     .await?;
/// assert_eq!(anonymous.status(), 401);
/// assert_eq!(sandbox.token_requests(), 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SkipAuth;

/// A request's URI as either integration holds it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// reqwest's (always absolute).
    Url(&'a Url),
    /// `http`'s (tower): absolute, relative or authority-form.
    Uri(&'a http::Uri),
}

impl<'a> Target<'a> {
    /// Scheme, host and port (`None`: the scheme's default) of the origin, if checkable.
    fn origin_parts(self) -> Option<(&'a str, &'a str, Option<u16>)> {
        match self {
            Target::Url(url) => Some((url.scheme(), url.host_str()?, url.port_or_known_default())),
            Target::Uri(uri) => {
                let authority = uri.authority()?;
                Some((uri.scheme_str()?, authority.host(), authority.port_u16()))
            }
        }
    }

    /// Whether the URI names no origin: no scheme, no authority, and no `//host/path` (which
    /// `http` reads as a path but a server may read as an authority).
    fn is_relative(self) -> bool {
        match self {
            Target::Url(_) => false,
            Target::Uri(uri) => {
                uri.scheme().is_none() && uri.authority().is_none() && !uri.path().starts_with("//")
            }
        }
    }
}

impl<'a> From<&'a Url> for Target<'a> {
    fn from(url: &'a Url) -> Self {
        Target::Url(url)
    }
}

impl<'a> From<&'a http::Uri> for Target<'a> {
    fn from(uri: &'a http::Uri) -> Self {
        Target::Uri(uri)
    }
}

/// What the origin rule decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// The request goes to the allowed origin with this index: it gets the token.
    Origin(usize),
    /// A relative URI whose `Host` (if any) names an allowed origin: the layer's opt-in.
    Relative,
    /// The request goes as it is.
    Untouched,
}

/// One origin: scheme, host and port, compared exactly (hosts are lower-cased by parsing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    /// One enum comparison for HTTP(S).
    uri_scheme: Scheme,
    /// As `Url::host_str` spells it: lower case, IPv6 in brackets.
    host: String,
    port: u16,
    /// `host:port` (and `host` for a default port): compared byte for byte on the hot path.
    authority: String,
    default_port_authority: Option<String>,
}

impl Origin {
    /// Parses `url` (configured as `what`), HTTPS or loopback only.
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

    /// Whether `scheme://host:port` is this origin, ignoring case (`http::Uri` keeps it).
    fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        scheme.eq_ignore_ascii_case(&self.scheme) && self.has_host(host, port, scheme)
    }

    /// Whether `host` and `port` (no port: `scheme`'s default) are this origin's.
    fn has_host(&self, host: &str, port: Option<u16>, scheme: &str) -> bool {
        host.eq_ignore_ascii_case(&self.host)
            && port.or_else(|| default_port(scheme)) == Some(self.port)
    }

    /// [`matches`](Self::matches) for an `http::Uri`, without parsing the common spelling.
    fn matches_authority(&self, scheme: &Scheme, authority: &Authority) -> bool {
        if *scheme != self.uri_scheme && !scheme.as_str().eq_ignore_ascii_case(&self.scheme) {
            return false;
        }
        let spelled = authority.as_str();
        if spelled == self.authority || self.default_port_authority.as_deref() == Some(spelled) {
            return true;
        }
        // A host in another letter case, a user name, an explicit default port.
        self.has_host(authority.host(), authority.port_u16(), scheme.as_str())
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else {
        None
    }
}

/// The origins a token may be sent to.
#[derive(Debug, Clone)]
pub(crate) struct AllowedOrigins(Vec<Origin>);

impl AllowedOrigins {
    pub(crate) fn new(origins: Vec<Origin>) -> Self {
        AllowedOrigins(origins)
    }

    /// Which allowed origin (an index) a URI goes to, if any.
    pub(crate) fn allowed_origin<'a>(&self, target: impl Into<Target<'a>>) -> Option<usize> {
        match target.into() {
            // The hot path of the tower layer: the authority as spelled, without parsing.
            Target::Uri(uri) => {
                let (scheme, authority) = (uri.scheme()?, uri.authority()?);
                self.0
                    .iter()
                    .position(|o| o.matches_authority(scheme, authority))
            }
            target => {
                let (scheme, host, port) = target.origin_parts()?;
                self.0.iter().position(|o| o.matches(scheme, host, port))
            }
        }
    }

    /// Whether a request to `target`, with these headers and extensions, gets the token.
    pub(crate) fn destination(
        &self,
        target: Target<'_>,
        headers: &HeaderMap,
        extensions: &Extensions,
    ) -> Destination {
        let own = OwnHeaders::of(headers);
        if own.authorization || extensions.get::<SkipAuth>().is_some() {
            return Destination::Untouched;
        }
        if target.is_relative() {
            // Its `Host` header, if it has one, must name an allowed origin's host and port.
            let names_allowed = |named: &Authority| {
                let (host, port) = (named.host(), named.port_u16());
                self.0.iter().any(|o| o.has_host(host, port, &o.scheme))
            };
            return match !own.host || every_host_header(headers, names_allowed) {
                true => Destination::Relative,
                false => Destination::Untouched,
            };
        }
        let Some(origin) = self.allowed_origin(target) else {
            return Destination::Untouched;
        };
        if !own.host {
            return Destination::Origin(origin);
        }
        // A `Host` header, if there is one, must name the URI's host and port.
        let agrees = |named: &Authority| {
            target.origin_parts().is_some_and(|(scheme, host, port)| {
                named.host().eq_ignore_ascii_case(host)
                    && named.port_u16().or_else(|| default_port(scheme))
                        == port.or_else(|| default_port(scheme))
            })
        };
        match every_host_header(headers, agrees) {
            true => Destination::Origin(origin),
            false => Destination::Untouched,
        }
    }
}

/// Which of the headers the origin rule looks at a request has.
struct OwnHeaders {
    authorization: bool,
    host: bool,
}

impl OwnHeaders {
    /// Up to this many names, one pass over them costs less than two hash lookups.
    const SCAN_LIMIT: usize = 8;

    fn of(headers: &HeaderMap) -> Self {
        if headers.keys_len() > Self::SCAN_LIMIT {
            return OwnHeaders {
                authorization: headers.contains_key(AUTHORIZATION),
                host: headers.contains_key(HOST),
            };
        }
        let mut own = OwnHeaders {
            authorization: false,
            host: false,
        };
        for name in headers.keys() {
            own.authorization |= name == AUTHORIZATION;
            own.host |= name == HOST;
        }
        own
    }
}

/// Whether each `Host` header is an authority without user info (`x@host` would be taken
/// as `host`) that satisfies `check`.
fn every_host_header(headers: &HeaderMap, check: impl Fn(&Authority) -> bool) -> bool {
    headers.get_all(HOST).iter().all(|value| {
        !value.as_bytes().contains(&b'@')
            && Authority::try_from(value.as_bytes()).is_ok_and(|named| check(&named))
    })
}

/// `url` without its query and fragment (which may hold anything), for `Debug` output.
pub(crate) fn origin_and_path(url: &Url) -> &str {
    &url[..url::Position::AfterPath]
}

/// Parses `url`: HTTPS, or HTTP to loopback, without user info (errors show no user info).
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

pub(crate) fn is_loopback(url: &Url) -> bool {
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

    fn allowed(origins: &[&str]) -> AllowedOrigins {
        AllowedOrigins::new(
            origins
                .iter()
                .map(|o| Origin::parse(o, "api_base").unwrap())
                .collect(),
        )
    }

    fn uri(s: &str) -> http::Uri {
        s.parse().unwrap()
    }

    #[test]
    fn matches_scheme_host_and_port_exactly() {
        let o = allowed(&["https://api.understory.io"]);
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            o.allowed_origin(&url("https://api.understory.io/v1/me")),
            Some(0)
        );
        assert_eq!(
            o.allowed_origin(&url("https://API.understory.io:443/v1/me")),
            Some(0)
        );
        for other in [
            "http://api.understory.io/v1/me",
            "https://api.understory.io:8443/v1/me",
            "https://api.understory.io.evil.com/v1/me",
            "https://evil.com/?https://api.understory.io",
            "data:text/plain,api.understory.io",
        ] {
            assert_eq!(o.allowed_origin(&url(other)), None, "{other}");
        }

        for same in [
            "https://API.understory.io/v1",
            "https://api.understory.io:443/",
            "https://user@api.understory.io/v1",
            "HTTPS://api.understory.io/v1",
        ] {
            assert_eq!(o.allowed_origin(&uri(same)), Some(0), "{same}");
        }
        for other in [
            "http://api.understory.io/",
            "https://other.io/",
            "https://api.understory.io:444/",
            "/v1/me",
            "api.understory.io:443",
            "//api.understory.io/v1/me",
        ] {
            assert_eq!(o.allowed_origin(&uri(other)), None, "{other}");
        }

        let v6 = allowed(&["http://[::1]:8080"]);
        assert_eq!(v6.allowed_origin(&uri("http://[::1]:8080/x")), Some(0));
        assert_eq!(v6.allowed_origin(&uri("http://[::2]:8080/x")), None);
        let port = allowed(&["http://127.0.0.1:8080", "http://127.0.0.1:9090"]);
        assert_eq!(
            port.allowed_origin(&uri("http://127.0.0.1:9090/v1")),
            Some(1)
        );
        assert_eq!(port.allowed_origin(&uri("http://127.0.0.1/v1")), None);
        assert_eq!(port.allowed_origin(&uri("http://127.0.0.1:80/v1")), None);
    }

    /// The destination of a GET to `target` with these headers and no extensions.
    fn destination(
        origins: &AllowedOrigins,
        target: Target<'_>,
        headers: &[(&str, &str)],
    ) -> Destination {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        origins.destination(target, &map, &Extensions::new())
    }

    #[test]
    fn only_uris_without_scheme_and_authority_are_relative() {
        let o = allowed(&["https://api.understory.io"]);
        for relative in ["/v1/me", "/", "*"] {
            assert_eq!(
                destination(&o, (&uri(relative)).into(), &[]),
                Destination::Relative
            );
        }
        // An authority without a scheme cannot be checked: no token, opted in or not.
        for unchecked in [
            "api.understory.io:443",
            "evil.example:443",
            "//evil.example/v1/me",
            "//api.understory.io/v1/me",
        ] {
            assert_eq!(
                destination(&o, (&uri(unchecked)).into(), &[]),
                Destination::Untouched,
                "{unchecked}"
            );
        }
    }

    #[test]
    fn a_host_header_must_agree_with_the_uri() {
        let o = allowed(&["https://api.understory.io", "http://127.0.0.1:8080"]);
        let api = uri("https://api.understory.io/v1/me");
        let api_url = Url::parse("https://api.understory.io/v1/me").unwrap();
        for target in [Target::from(&api), Target::from(&api_url)] {
            assert_eq!(destination(&o, target, &[]), Destination::Origin(0));
            for agreeing in ["api.understory.io", "API.understory.io:443"] {
                let headers = [("host", agreeing)];
                assert_eq!(destination(&o, target, &headers), Destination::Origin(0));
            }
            for disagreeing in [
                "evil.example",
                "api.understory.io:8443",
                // Another allowed origin is still another host than the URI's.
                "127.0.0.1:8080",
                "not an authority",
                // User info: no server routes by it as the URI's authority (issue 19).
                "x@api.understory.io",
                "x@API.understory.io:443",
                "@api.understory.io",
                "user:pass@api.understory.io",
            ] {
                let headers = [("host", disagreeing)];
                assert_eq!(
                    destination(&o, target, &headers),
                    Destination::Untouched,
                    "{disagreeing}"
                );
            }
            let two = [("host", "api.understory.io"), ("host", "evil.example")];
            assert_eq!(destination(&o, target, &two), Destination::Untouched);
        }

        let relative = uri("/v1/me");
        let named = |host| destination(&o, (&relative).into(), &[("host", host)]);
        assert_eq!(named("api.understory.io"), Destination::Relative);
        assert_eq!(named("127.0.0.1:8080"), Destination::Relative);
        assert_eq!(named("evil.example"), Destination::Untouched);
        assert_eq!(named("127.0.0.1"), Destination::Untouched);
        assert_eq!(named("x@api.understory.io"), Destination::Untouched);
        assert_eq!(named("x@127.0.0.1:8080"), Destination::Untouched);
    }

    #[test]
    fn own_authorization_and_skip_auth_go_untouched() {
        let o = allowed(&["https://api.understory.io"]);
        let api = uri("https://api.understory.io/v1/me");
        let own = [("authorization", "Bearer mine")];
        assert_eq!(destination(&o, (&api).into(), &own), Destination::Untouched);
        let mut skip = Extensions::new();
        skip.insert(SkipAuth);
        assert_eq!(
            o.destination((&api).into(), &HeaderMap::new(), &skip),
            Destination::Untouched
        );
    }

    /// The headers are read in one pass up to `OwnHeaders::SCAN_LIMIT` names, by lookups
    /// beyond: the same decisions either way.
    #[test]
    fn few_or_many_other_headers_change_nothing() {
        let o = allowed(&["https://api.understory.io"]);
        let api = uri("https://api.understory.io/v1/me");
        for others in [1, OwnHeaders::SCAN_LIMIT - 1, OwnHeaders::SCAN_LIMIT + 3] {
            let names: Vec<String> = (0..others).map(|i| format!("x-other-{i}")).collect();
            let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
            assert_eq!(
                destination(&o, (&api).into(), &headers),
                Destination::Origin(0)
            );
            for (extra, expected) in [
                (("authorization", "Bearer mine"), Destination::Untouched),
                (("host", "evil.example"), Destination::Untouched),
                (("host", "api.understory.io"), Destination::Origin(0)),
            ] {
                headers.push(extra);
                assert_eq!(
                    destination(&o, (&api).into(), &headers),
                    expected,
                    "{others} other headers, {extra:?}"
                );
                headers.pop();
            }
        }
    }

    /// `http` parses `HTTPS://` as its HTTPS scheme, but keeps `HTTPS` given to a
    /// `uri::Builder` as another scheme: letters decide then.
    #[test]
    fn schemes_compare_without_regard_to_case_however_built() {
        let o = allowed(&["https://api.understory.io", "http://127.0.0.1:8080"]);
        let built = |scheme: &str, authority: &str| {
            http::Uri::builder()
                .scheme(scheme)
                .authority(authority)
                .path_and_query("/v1/me")
                .build()
                .unwrap()
        };
        assert_eq!(
            o.allowed_origin(&built("HTTPS", "api.understory.io")),
            Some(0)
        );
        assert_eq!(o.allowed_origin(&built("Http", "127.0.0.1:8080")), Some(1));
        assert_eq!(o.allowed_origin(&built("http", "api.understory.io")), None);
        assert_eq!(o.allowed_origin(&built("HTTP", "api.understory.io")), None);
        assert_eq!(o.allowed_origin(&built("https", "127.0.0.1:8080")), None);
        assert_eq!(o.allowed_origin(&built("wss", "api.understory.io")), None);
    }
}
