//! Rewriting a client request for its upstream and the upstream's response for the client: Kong's
//! upstream path rules (`path_handling = v0`), forwarding headers, hop-by-hop removal, `Via`.

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::h1::{self, RequestFraming};
use super::upstream::Outgoing;
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

/// The origin-form request target (`/path?query`) sent upstream, if it is a valid one.
pub fn origin_form(mut path: String, query: Option<&str>) -> Option<String> {
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    http::uri::PathAndQuery::try_from(path.as_str()).ok()?;
    Some(path)
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

/// Everything the upstream request head is built from; built once and written straight into the
/// connection's buffer on each attempt (no header map in between), so a retry needs no copy.
#[derive(Debug)]
pub struct UpstreamHead<'a> {
    pub client: &'a http::request::Parts,
    /// The origin-form request target (`/path?query`) sent upstream.
    pub target: &'a str,
    pub conn_ip: &'a HeaderValue,
    pub conn_port: &'a HeaderValue,
    /// The connection's scheme, `http` or `https`.
    pub conn_proto: &'static [u8],
    /// The client is in `trusted_ips`: its X-Forwarded-* values are passed on.
    pub trusted: bool,
    /// The matched path prefix for `X-Forwarded-Prefix`.
    pub prefix: Option<&'a str>,
    /// The service's `Host`, or `None` to keep the client's (`preserve_host`).
    pub host: Option<&'a HeaderValue>,
    /// Set by an auth plugin: the consumer headers, replacing any the client sent.
    pub identity: Option<&'a crate::plugins::UpstreamIdentity>,
    /// The request's id (`X-Tollgate-Request-Id`, replacing any the client sent).
    pub request_id: &'a [u8],
}

/// The headers an identified request's consumer headers replace.
const IDENTITY: [HeaderName; 6] = [
    h::X_CONSUMER_ID,
    h::X_CONSUMER_CUSTOM_ID,
    h::X_CONSUMER_USERNAME,
    h::X_CONSUMER_GROUPS,
    h::X_CREDENTIAL_IDENTIFIER,
    h::X_ANONYMOUS_CONSUMER,
];

/// What `HeaderValue` accepts: no control characters but tab.
fn valid_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// `X-Consumer-*` and `X-Credential-Identifier` (or `X-Anonymous-Consumer`) of an identified request.
fn encode_identity(identity: &crate::plugins::UpstreamIdentity, out: &mut Vec<u8>) {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let consumer = &identity.consumer;
    h1::encode_header(b"x-consumer-id", consumer.id.hyphenated().encode_lower(&mut buf).as_bytes(), out);
    if let Some(custom_id) = consumer.custom_id.as_deref().filter(|v| valid_value(v)) {
        h1::encode_header(b"x-consumer-custom-id", custom_id.as_bytes(), out);
    }
    if let Some(username) = consumer.username.as_deref().filter(|v| valid_value(v)) {
        h1::encode_header(b"x-consumer-username", username.as_bytes(), out);
    }
    if let Some(groups) = &identity.groups {
        h1::encode_header(b"x-consumer-groups", groups.as_bytes(), out);
    }
    match identity.credential {
        Some(id) => {
            h1::encode_header(b"x-credential-identifier", id.hyphenated().encode_lower(&mut buf).as_bytes(), out)
        }
        None => h1::encode_header(b"x-anonymous-consumer", b"true", out),
    }
}

const FORWARDED: [HeaderName; 5] =
    [h::X_FORWARDED_PROTO, h::X_FORWARDED_HOST, h::X_FORWARDED_PORT, h::X_FORWARDED_PATH, h::X_FORWARDED_PREFIX];

impl Outgoing for UpstreamHead<'_> {
    fn method(&self) -> &http::Method {
        &self.client.method
    }

    fn content_length(&self) -> (Option<u64>, bool) {
        let headers = &self.client.headers;
        (h1::content_length(headers), headers.contains_key(header::CONTENT_LENGTH))
    }

    /// The client's headers but those that are hop-by-hop or the gateway's to set, then the
    /// gateway's: `Host`, `X-Forwarded-*`, `X-Real-IP`, `Via`, and the framing.
    fn encode(&self, framing: RequestFraming, out: &mut Vec<u8>) {
        let client = &self.client.headers;
        out.reserve(256 + self.target.len() + client.len() * 32);
        h1::encode_request_line(&self.client.method, self.target, out);
        let listed = if client.contains_key(header::CONNECTION) { connection_listed(client) } else { Vec::new() };
        for (name, value) in client {
            let ours = name == header::HOST
                || name == h::X_FORWARDED_FOR
                || name == h::X_REAL_IP
                || name == h::X_REQUEST_ID
                || name == header::VIA
                || (!self.trusted && FORWARDED.contains(name))
                || (self.identity.is_some() && IDENTITY.contains(name));
            if ours || is_hop_by_hop(name, value) || listed.contains(name) || h1::framing_header(name, framing) {
                continue;
            }
            h1::encode_header(name.as_str().as_bytes(), value.as_bytes(), out);
        }
        let client_host: Option<&[u8]> = client
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .or_else(|| self.client.uri.authority().map(|a| a.as_str().as_bytes()));
        if let Some(host) = self.host.map(HeaderValue::as_bytes).or(client_host) {
            h1::encode_header(b"host", host, out);
        }
        encode_appended(b"x-forwarded-for", client, &h::X_FORWARDED_FOR, self.conn_ip.as_bytes(), out);
        h1::encode_header(b"x-real-ip", self.conn_ip.as_bytes(), out);
        h1::encode_header(b"x-tollgate-request-id", self.request_id, out);
        let missing = |name: &HeaderName| !self.trusted || !client.contains_key(name);
        if missing(&h::X_FORWARDED_PROTO) {
            h1::encode_header(b"x-forwarded-proto", self.conn_proto, out);
        }
        if missing(&h::X_FORWARDED_HOST)
            && let Some(host) = client_host.and_then(|h| std::str::from_utf8(h).ok())
        {
            // nginx's `$host`: lower case, no port.
            h1::encode_header(b"x-forwarded-host", crate::router::request_host(host).as_bytes(), out);
        }
        if missing(&h::X_FORWARDED_PORT) {
            h1::encode_header(b"x-forwarded-port", self.conn_port.as_bytes(), out);
        }
        if missing(&h::X_FORWARDED_PATH) {
            h1::encode_header(b"x-forwarded-path", self.client.uri.path().as_bytes(), out);
        }
        if missing(&h::X_FORWARDED_PREFIX)
            && let Some(prefix) = self.prefix
        {
            h1::encode_header(b"x-forwarded-prefix", prefix.as_bytes(), out);
        }
        if let Some(identity) = self.identity {
            encode_identity(identity, out);
        }
        let ours = if self.client.version == Version::HTTP_2 { VIA_2 } else { VIA_1_1 };
        encode_appended(b"via", client, &header::VIA, ours.as_bytes(), out);
        h1::encode_framing(framing, out);
    }
}

/// `name: <the client's values, ", "-joined>, <ours>`, or just ours when the client sent none.
fn encode_appended(name: &[u8], client: &HeaderMap, from: &HeaderName, ours: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    for value in client.get_all(from) {
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ours);
    out.extend_from_slice(b"\r\n");
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
