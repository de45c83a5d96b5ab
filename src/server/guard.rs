//! Who may talk to the server: checked for every request before it is routed.
//!
//! - `Host` must be an IP address, `localhost` (or a name under `.localhost`), or a name given with
//!   `--allow-host`. A web page on a domain the attacker controls can point that name at 127.0.0.1 (DNS
//!   rebinding); its requests still carry the attacker's name in `Host`, so they are refused.
//! - A browser request from another origin (its `Origin` header differs from the server's own) is refused
//!   unless `--cors-origin` names that origin; allowed ones get CORS headers and preflight answers. Behind a TLS
//!   proxy named with `--trusted-proxy`, the server's own origin is `https://` when that proxy says so
//!   (`X-Forwarded-Proto` or `Forwarded: proto=`); from any other peer those headers are ignored.
//! - With an API key, every API route needs `Authorization: Bearer KEY`. The page's files and `/health` stay
//!   open: they hold nothing secret, and the page asks for the key.

use std::net::IpAddr;

use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, AUTHORIZATION, HOST, ORIGIN, VARY,
};
use hyper::{Method, Response, StatusCode, Uri};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::body::Body;
use super::error::ApiError;

pub struct Guard {
    /// SHA-256 of the key: comparing digests in constant time leaks neither the key nor its length.
    api_key: Option<[u8; 32]>,
    allowed_hosts: Vec<String>,
    cors_origins: Vec<String>,
    /// Peers whose `X-Forwarded-Proto`/`Forwarded` headers are believed (`--trusted-proxy`).
    trusted_proxies: Vec<IpAddr>,
}

/// What the guard decided about a request that may go on.
pub struct Pass {
    /// The request's origin, when CORS headers must go on the response.
    pub cors_origin: Option<HeaderValue>,
}

impl Guard {
    pub fn new(api_key: Option<&str>, allowed_hosts: &[String], cors_origins: &[String]) -> Self {
        Guard {
            api_key: api_key.map(|key| Sha256::digest(key.as_bytes()).into()),
            allowed_hosts: allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).collect(),
            cors_origins: cors_origins.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect(),
            trusted_proxies: Vec::new(),
        }
    }

    /// Believes these peers when they say the browser reached them over https (`--trusted-proxy`).
    pub fn trusting(mut self, proxies: &[IpAddr]) -> Self {
        self.trusted_proxies = proxies.to_vec();
        self
    }

    /// The scheme the browser used: `https` when a trusted proxy says so, else `http`.
    fn scheme(&self, peer: IpAddr, headers: &HeaderMap) -> &'static str {
        if !self.trusted_proxies.contains(&peer) {
            return "http";
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
        // The proxy nearest to stove wrote the last value.
        let forwarded_proto =
            header("x-forwarded-proto").and_then(|v| v.rsplit(',').next().map(|p| p.trim().to_string()));
        let forwarded = header("forwarded").and_then(|v| {
            let last = v.rsplit(',').next()?.to_string();
            last.split(';').find_map(|pair| pair.trim().strip_prefix("proto=").map(|p| p.trim_matches('"').to_string()))
        });
        match forwarded.or(forwarded_proto).as_deref() {
            Some("https") => "https",
            _ => "http",
        }
    }

    /// Checks `Host`, `Origin` and the API key; `Err` is the response to send instead.
    pub fn check(
        &self,
        peer: IpAddr,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Pass, Box<Response<Body>>> {
        let path = uri.path();
        let hosts = headers.get_all(HOST).iter().count();
        if hosts > 1 {
            return Err(Box::new(
                ApiError::invalid(format!("the request has {hosts} Host headers; HTTP allows exactly one")).response(),
            ));
        }
        // An absolute-form target (`POST http://name/v1/…`) names the host itself, and then it is the one that
        // counts, not the Host header (RFC 9112, section 3.2.2).
        let host = match uri.authority() {
            Some(authority) => authority.as_str(),
            None => headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or_default(),
        };
        if host.is_empty() {
            return Err(Box::new(
                ApiError::invalid("the request has no Host header; HTTP/1.1 requires one (curl and browsers send it)")
                    .response(),
            ));
        }
        if !self.host_allowed(host) {
            let shown = if host.is_empty() { "(none)" } else { host };
            return Err(Box::new(forbidden(
                "host_not_allowed",
                format!(
                    "requests for host {shown} are not served here; if this name is yours, start stove with \
                     --allow-host {}",
                    hostname(host)
                ),
            )));
        }
        let mut pass = Pass { cors_origin: None };
        if let Some(origin) = headers.get(ORIGIN) {
            let text = origin.to_str().unwrap_or_default().to_ascii_lowercase();
            let same_origin = text == format!("{}://{}", self.scheme(peer, headers), host.to_ascii_lowercase());
            if !same_origin {
                if !self.cors_origins.iter().any(|o| o == "*" || *o == text) {
                    return Err(Box::new(forbidden(
                        "origin_not_allowed",
                        format!(
                            "cross-origin requests from {text} are refused; start stove with --cors-origin {text} \
                             to let that page use the API"
                        ),
                    )));
                }
                pass.cors_origin = Some(origin.clone());
            }
        }
        // Preflights carry no credentials; they only ask which methods and headers are allowed.
        if method == Method::OPTIONS {
            return Err(Box::new(preflight(&pass)));
        }
        if needs_key(path) {
            if let Some(expected) = &self.api_key {
                let given = headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                    // Anthropic's clients send the key as `x-api-key`.
                    .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
                    .map(str::trim);
                let Some(given) = given else {
                    return Err(Box::new(self.with_cors(
                        unauthorized(
                            "this server needs an API key: send it as `Authorization: Bearer KEY` (or `x-api-key: KEY`)",
                        ),
                        &pass,
                    )));
                };
                let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
                if !bool::from(digest.ct_eq(expected)) {
                    return Err(Box::new(self.with_cors(unauthorized("the API key is wrong"), &pass)));
                }
            }
        }
        Ok(pass)
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = hostname(host);
        if name.is_empty() {
            return false;
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.allowed_hosts.contains(&name)
    }

    /// Adds CORS headers for an allowed foreign origin.
    pub fn with_cors(&self, mut response: Response<Body>, pass: &Pass) -> Response<Body> {
        let headers = response.headers_mut();
        headers.append(VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = &pass.cors_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
        response
    }
}

/// The routes that reach the model or describe the machine; the page's files and `/health` do not.
fn needs_key(path: &str) -> bool {
    path.starts_with("/v1/")
        || matches!(path, "/metrics" | "/apply-template" | "/tokenize")
        || path.starts_with("/stove/")
}

/// The name in a `Host` header, lowercase, without the port.
fn hostname(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if host.starts_with('[') {
        // [::1]:8080
        return host.split(']').next().map(|h| format!("{h}]")).unwrap_or_default();
    }
    host.rsplit_once(':').map_or(host.clone(), |(name, _)| name.to_string())
}

fn forbidden(code: &'static str, message: String) -> Response<Body> {
    ApiError::new(StatusCode::FORBIDDEN, "permission_error", Some(code), message).response()
}

fn unauthorized(message: &str) -> Response<Body> {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", Some("invalid_api_key"), message).response()
}

fn preflight(pass: &Pass) -> Response<Body> {
    let mut response = Response::builder().status(StatusCode::NO_CONTENT).body(Body::empty()).expect("valid response");
    let headers = response.headers_mut();
    headers.insert(VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = &pass.cors_origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-api-key, anthropic-version"),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn behind_a_trusted_proxy_the_page_is_https() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let guard = Guard::new(None, &["chat.example".into()], &[]).trusting(&[proxy]);
        let uri: Uri = "/v1/chat/completions".parse().unwrap();
        let through = |peer, extra: &[(&'static str, &str)]| {
            let mut list = vec![("host", "chat.example"), ("origin", "https://chat.example")];
            list.extend_from_slice(extra);
            guard.check(peer, &Method::POST, &uri, &headers(&list)).map(|_| ()).map_err(|r| r.status())
        };
        assert_eq!(through(proxy, &[("x-forwarded-proto", "https")]), Ok(()));
        assert_eq!(through(proxy, &[("forwarded", "for=1.2.3.4;proto=https;host=chat.example")]), Ok(()));
        assert_eq!(through(proxy, &[]), Err(StatusCode::FORBIDDEN), "the proxy did not say https");
        assert_eq!(
            through(LOCAL, &[("x-forwarded-proto", "https")]),
            Err(StatusCode::FORBIDDEN),
            "anyone else saying so is not believed"
        );
    }

    fn headers(list: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in list {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn status(guard: &Guard, method: Method, path: &str, list: &[(&'static str, &str)]) -> StatusCode {
        match guard.check(LOCAL, &method, &path.parse().unwrap(), &headers(list)) {
            Ok(_) => StatusCode::OK,
            Err(response) => response.status(),
        }
    }

    #[test]
    fn only_local_names_ip_addresses_and_allowed_hosts_pass() {
        let guard = Guard::new(None, &["stove.lan".into()], &[]);
        for host in
            ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:8080", "10.0.0.5", "a.localhost:1", "stove.lan:80"]
        {
            assert_eq!(status(&guard, Method::GET, "/", &[("host", host)]), StatusCode::OK, "{host}");
        }
        for host in ["evil.example:8080", "localhost.evil.example"] {
            assert_eq!(status(&guard, Method::GET, "/", &[("host", host)]), StatusCode::FORBIDDEN, "{host}");
        }
    }

    #[test]
    fn one_host_is_required_and_an_absolute_target_names_it() {
        let guard = Guard::new(None, &[], &[]);
        assert_eq!(status(&guard, Method::GET, "/", &[]), StatusCode::BAD_REQUEST, "no Host at all");
        assert_eq!(status(&guard, Method::GET, "/", &[("host", "")]), StatusCode::BAD_REQUEST, "an empty Host");
        let mut two = headers(&[("host", "127.0.0.1")]);
        two.append(HOST, HeaderValue::from_static("evil.example"));
        let refused = guard.check(LOCAL, &Method::GET, &"/".parse().unwrap(), &two).err().unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        // The target's authority counts, whatever Host says.
        let rebinding = [("host", "127.0.0.1")];
        assert_eq!(status(&guard, Method::GET, "http://evil.example/v1/models", &rebinding), StatusCode::FORBIDDEN);
        let local = [("host", "evil.example")];
        assert_eq!(status(&guard, Method::GET, "http://127.0.0.1:8080/v1/models", &local), StatusCode::OK);
    }

    #[test]
    fn foreign_origins_need_cors_origin() {
        let open = Guard::new(None, &[], &[]);
        let same = [("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")];
        assert_eq!(status(&open, Method::POST, "/v1/chat/completions", &same), StatusCode::OK);
        let foreign = [("host", "127.0.0.1:8080"), ("origin", "http://evil.example")];
        assert_eq!(status(&open, Method::POST, "/v1/chat/completions", &foreign), StatusCode::FORBIDDEN);

        let allowing = Guard::new(None, &[], &["http://evil.example/".into()]);
        let models = "/v1/models".parse().unwrap();
        let pass = allowing.check(LOCAL, &Method::POST, &models, &headers(&foreign)).ok().unwrap();
        assert_eq!(pass.cors_origin.unwrap(), "http://evil.example");
        let preflight = allowing.check(LOCAL, &Method::OPTIONS, &models, &headers(&foreign)).err().unwrap();
        assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
        assert_eq!(preflight.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "http://evil.example");
    }

    #[test]
    fn api_routes_need_the_key_and_the_page_does_not() {
        let guard = Guard::new(Some("s3cret"), &[], &[]);
        let host = ("host", "127.0.0.1");
        assert_eq!(status(&guard, Method::GET, "/v1/models", &[host]), StatusCode::UNAUTHORIZED);
        assert_eq!(
            status(&guard, Method::GET, "/v1/models", &[host, ("authorization", "Bearer wrong")]),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&guard, Method::GET, "/v1/models", &[host, ("authorization", "Bearer s3cret")]),
            StatusCode::OK
        );
        assert_eq!(status(&guard, Method::GET, "/metrics", &[host]), StatusCode::UNAUTHORIZED);
        assert_eq!(status(&guard, Method::GET, "/", &[host]), StatusCode::OK);
        assert_eq!(status(&guard, Method::GET, "/health", &[host]), StatusCode::OK);
    }
}
