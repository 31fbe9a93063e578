//! Rewriting a client request for its upstream and the upstream's response for the client: Kong's
//! upstream path rules (`path_handling = v0`), forwarding headers, hop-by-hop removal, `Via`.

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Uri, Version};

use super::headers as h;

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

/// An absolute upstream URI from precomputed parts.
pub fn upstream_uri(scheme: &Scheme, authority: &Authority, path: &str, query: Option<&str>) -> Option<Uri> {
    let pq = match query {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")).ok()?,
        None => PathAndQuery::try_from(path).ok()?,
    };
    Uri::builder().scheme(scheme.clone()).authority(authority.clone()).path_and_query(pq).build().ok()
}

/// Drops hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.remove(header::CONNECTION) {
        if let Ok(list) = conn.to_str() {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(name) = header::HeaderName::from_bytes(name.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    headers.remove(h::KEEP_ALIVE);
    headers.remove(h::PROXY_CONNECTION);
    headers.remove(header::UPGRADE);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::PROXY_AUTHENTICATE);
    if headers.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
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
