//! Rewriting a client request for its upstream and the upstream's response for the client: Kong's
//! upstream path rules (`path_handling = v0`), forwarding headers, hop-by-hop removal, `Via`.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

use crate::headers as h;

pub const VIA_1_1: HeaderValue = HeaderValue::from_static(concat!("1.1 tollgate/", env!("CARGO_PKG_VERSION")));
pub const VIA_2: HeaderValue = HeaderValue::from_static(concat!("2 tollgate/", env!("CARGO_PKG_VERSION")));
pub const SERVER: HeaderValue = HeaderValue::from_static(concat!("tollgate/", env!("CARGO_PKG_VERSION")));

/// The upstream path for a request (Kong's `get_upstream_uri_v0`). `prefix` is the part of the path
/// the route matched when `strip_path` is on, else `None`; `base` is the service path (`/` if none).
pub fn upstream_path(req_path: &str, prefix: Option<&str>, base: &str) -> String {
    let strip = prefix.is_some();
    let prefix = prefix.unwrap_or("/");
    let postfix = sanitize_postfix(req_path.get(prefix.len()..).unwrap_or(""));
    let ends_with_slash = base.ends_with('/');
    if ends_with_slash {
        if strip {
            if postfix.is_empty() {
                if base == "/" {
                    return "/".into();
                }
                if req_path.ends_with('/') {
                    return base.into();
                }
                return base[..base.len() - 1].into();
            }
            if postfix.starts_with('/') {
                return format!("{}{postfix}", &base[..base.len() - 1]);
            }
            return format!("{base}{postfix}");
        }
        return format!("{base}{}", req_path.get(1..).unwrap_or(""));
    }
    if strip {
        if postfix.is_empty() {
            if req_path.len() > 1 && req_path.ends_with('/') {
                return format!("{base}/");
            }
            return base.into();
        }
        if postfix.starts_with('/') {
            return format!("{base}{postfix}");
        }
        return format!("{base}/{postfix}");
    }
    if req_path == "/" {
        return base.into();
    }
    format!("{base}{req_path}")
}

fn sanitize_postfix(p: &str) -> &str {
    match p {
        "." | ".." => "",
        _ => p.strip_prefix("./").or_else(|| p.strip_prefix("../")).unwrap_or(p),
    }
}

/// The origin-form URI (`/path?query`) sent upstream.
pub fn origin_form(mut path: String, query: Option<&str>) -> Option<Uri> {
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    Uri::try_from(path).ok()
}

/// Whether a header never crosses a hop (RFC 9110 §7.6.1, plus the legacy `Proxy-Connection`).
fn is_hop_by_hop(name: &HeaderName, value: &HeaderValue) -> bool {
    name == header::CONNECTION
        || name == h::KEEP_ALIVE
        || name == h::PROXY_CONNECTION
        || name == header::UPGRADE
        || name == header::TRANSFER_ENCODING
        || name == header::PROXY_AUTHENTICATE
        || (name == header::TE && !value.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

/// Names a `Connection` header lists (they are hop-by-hop too).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// Drops hop-by-hop headers, including those the `Connection` header names. One pass over the
/// names when there are none, which is the usual case.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.iter().any(|(n, v)| is_hop_by_hop(n, v)) {
        return;
    }
    for name in connection_listed(headers) {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        h::KEEP_ALIVE,
        h::PROXY_CONNECTION,
        header::UPGRADE,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
}

/// Everything the upstream request head is built from; built once, turned into a request per
/// attempt, so a retry needs no copy of a request already sent.
#[derive(Debug)]
pub struct UpstreamHead<'a> {
    pub client: &'a http::request::Parts,
    pub conn_ip: &'a HeaderValue,
    pub conn_port: &'a HeaderValue,
    /// The client is in `trusted_ips`: its X-Forwarded-* values are passed on.
    pub trusted: bool,
    /// The matched path prefix for `X-Forwarded-Prefix`.
    pub prefix: Option<&'a str>,
    /// The service's `Host`, or `None` to keep the client's (`preserve_host`).
    pub host: Option<&'a HeaderValue>,
}

const FORWARDED: [HeaderName; 5] =
    [h::X_FORWARDED_PROTO, h::X_FORWARDED_HOST, h::X_FORWARDED_PORT, h::X_FORWARDED_PATH, h::X_FORWARDED_PREFIX];

impl UpstreamHead<'_> {
    pub fn request<B>(&self, uri: Uri, body: B) -> http::Request<B> {
        let client = &self.client.headers;
        let mut out = HeaderMap::with_capacity(client.len() + 10);
        let listed = if client.contains_key(header::CONNECTION) { connection_listed(client) } else { Vec::new() };
        for (name, value) in client {
            let ours = name == header::HOST
                || name == h::X_FORWARDED_FOR
                || name == h::X_REAL_IP
                || name == header::VIA
                || (!self.trusted && FORWARDED.contains(name));
            if ours || is_hop_by_hop(name, value) || listed.contains(name) {
                continue;
            }
            out.append(name.clone(), value.clone());
        }
        let client_host = client
            .get(header::HOST)
            .cloned()
            .or_else(|| self.client.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        if let Some(host) = self.host.cloned().or_else(|| client_host.clone()) {
            out.insert(header::HOST, host);
        }
        let xff = joined(client, &h::X_FORWARDED_FOR).and_then(|prev| {
            HeaderValue::from_str(&format!("{prev}, {}", self.conn_ip.to_str().unwrap_or_default())).ok()
        });
        out.insert(h::X_FORWARDED_FOR, xff.unwrap_or_else(|| self.conn_ip.clone()));
        out.insert(h::X_REAL_IP, self.conn_ip.clone());
        let missing = |name: &HeaderName| !self.trusted || !client.contains_key(name);
        if missing(&h::X_FORWARDED_PROTO) {
            out.insert(h::X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if missing(&h::X_FORWARDED_HOST) {
            // nginx's `$host`: lower case, no port. Usually the client's value already is.
            let value = client_host.as_ref().and_then(|v| {
                let text = v.to_str().ok()?;
                match crate::router::request_host(text) {
                    std::borrow::Cow::Borrowed(h) if h.len() == text.len() => Some(v.clone()),
                    host => HeaderValue::from_str(&host).ok(),
                }
            });
            if let Some(v) = value {
                out.insert(h::X_FORWARDED_HOST, v);
            }
        }
        if missing(&h::X_FORWARDED_PORT) {
            out.insert(h::X_FORWARDED_PORT, self.conn_port.clone());
        }
        if missing(&h::X_FORWARDED_PATH)
            && let Ok(v) = HeaderValue::from_str(self.client.uri.path())
        {
            out.insert(h::X_FORWARDED_PATH, v);
        }
        if missing(&h::X_FORWARDED_PREFIX)
            && let Some(v) = self.prefix.and_then(|p| HeaderValue::from_str(p).ok())
        {
            out.insert(h::X_FORWARDED_PREFIX, v);
        }
        let ours = if self.client.version == Version::HTTP_2 { VIA_2 } else { VIA_1_1 };
        let via = joined(client, &header::VIA)
            .and_then(|prev| HeaderValue::from_str(&format!("{prev}, {}", ours.to_str().unwrap_or_default())).ok());
        out.insert(header::VIA, via.unwrap_or(ours));

        let mut req = http::Request::new(body);
        *req.method_mut() = self.client.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = out;
        req
    }
}

/// All values of a header joined with `, `, when there is any.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let mut s = values.next()?.to_string();
    for v in values {
        s.push_str(", ");
        s.push_str(v);
    }
    Some(s)
}

/// A latency in whole milliseconds as a header value; small values come from a static table.
pub fn millis(d: std::time::Duration) -> HeaderValue {
    const SMALL: [&str; 20] =
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17", "18", "19"];
    let ms = d.as_millis();
    match SMALL.get(ms as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::from(ms as u64),
    }
}

/// Appends our `Via` entry to any the message already carries.
pub fn append_via(headers: &mut HeaderMap, version: Version) {
    let ours = if version == Version::HTTP_2 { VIA_2 } else { VIA_1_1 };
    match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(existing) => {
            if let Ok(v) = HeaderValue::from_str(&format!("{existing}, {}", ours.to_str().unwrap_or_default())) {
                headers.insert(header::VIA, v);
            }
        }
        None => {
            headers.insert(header::VIA, ours);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of `spec/kong-gateway.md` §3.2 (prefix `/api`).
    #[test]
    fn upstream_paths_follow_kong_v0() {
        let strip = Some("/api");
        assert_eq!(upstream_path("/api/foo", strip, "/"), "/foo");
        assert_eq!(upstream_path("/api", strip, "/"), "/");
        assert_eq!(upstream_path("/api/", strip, "/"), "/");
        assert_eq!(upstream_path("/api/foo", None, "/"), "/api/foo");
        assert_eq!(upstream_path("/api/foo", strip, "/v1"), "/v1/foo");
        assert_eq!(upstream_path("/api", strip, "/v1"), "/v1");
        assert_eq!(upstream_path("/api/", strip, "/v1"), "/v1/");
        assert_eq!(upstream_path("/api", strip, "/v1/"), "/v1");
        assert_eq!(upstream_path("/api/", strip, "/v1/"), "/v1/");
        assert_eq!(upstream_path("/apifoo", strip, "/v1"), "/v1/foo");
        assert_eq!(upstream_path("/api/foo", None, "/v1"), "/v1/api/foo");
        assert_eq!(upstream_path("/api/foo", None, "/v1/"), "/v1/api/foo");
        assert_eq!(upstream_path("/", None, "/v1"), "/v1");
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-private").is_none() && h.get("keep-alive").is_none() && h.get(header::CONNECTION).is_none());
        assert!(h.get(header::TE).is_some() && h.get("x-kept").is_some());
    }

    #[test]
    fn via_is_appended() {
        let mut h = HeaderMap::new();
        append_via(&mut h, Version::HTTP_11);
        assert_eq!(h[header::VIA], VIA_1_1);
        append_via(&mut h, Version::HTTP_2);
        assert_eq!(
            h[header::VIA].to_str().ok(),
            Some(concat!("1.1 tollgate/", env!("CARGO_PKG_VERSION"), ", 2 tollgate/", env!("CARGO_PKG_VERSION")))
        );
    }
}
