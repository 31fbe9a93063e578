//! The value consistent hashing hashes for a request: Kong's `hash_on` source, else its
//! `hash_fallback`, else the empty string (`kong/runloop/balancer/init.lua` `get_value_to_hash`).
//! A `uri_capture` is read from the route's path regex, run again with captures only then.
//! Hashing on a cookie the client does not have makes one (a UUID) and sets it on the response, as
//! Kong does, so that the client's next requests go to the same target.

use std::borrow::Cow;

use http::HeaderValue;
use http::header::{self, HeaderMap};

use crate::balancer::{HashOn, UpstreamConfig};
use crate::router::normalize_path;

/// What a request hashes to, and the cookie to set when one was made.
#[derive(Debug, Default)]
pub struct HashKey {
    pub value: String,
    pub set_cookie: Option<HeaderValue>,
}

/// What the request offers to hash on.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    pub parts: &'a http::request::Parts,
    pub client_ip: std::net::IpAddr,
    /// The authenticated consumer's id, or the credential's.
    pub consumer: Option<uuid::Uuid>,
    /// The route's path regex that matched, and the normalized path it matched.
    pub captures: Option<(&'a regex::Regex, &'a str)>,
}

pub fn hash_key(upstream: &UpstreamConfig, sources: Sources<'_>) -> HashKey {
    let mut key = HashKey::default();
    let on = value_of(upstream, upstream.hash_on, false, sources, &mut key);
    let value = on.or_else(|| value_of(upstream, upstream.hash_fallback, true, sources, &mut key));
    key.value = value.unwrap_or_default();
    key
}

fn value_of(
    upstream: &UpstreamConfig,
    on: HashOn,
    fallback: bool,
    sources: Sources<'_>,
    key: &mut HashKey,
) -> Option<String> {
    let headers = &sources.parts.headers;
    match on {
        HashOn::None => None,
        HashOn::Consumer => sources.consumer.map(|id| id.to_string()),
        HashOn::Ip => Some(sources.client_ip.to_string()),
        HashOn::Header => {
            let name = if fallback { &upstream.hash_fallback_header } else { &upstream.hash_on_header };
            joined(headers, name.as_deref()?)
        }
        HashOn::Cookie => {
            let name = upstream.hash_on_cookie.as_deref()?;
            cookie(headers, name).or_else(|| {
                let made = uuid::Uuid::new_v4().to_string();
                let path = &upstream.hash_on_cookie_path;
                // Kong's spelling, `Same-Site`, kept.
                key.set_cookie =
                    HeaderValue::from_str(&format!("{name}={made}; Path={path}; Same-Site=Lax; HttpOnly")).ok();
                Some(made)
            })
        }
        HashOn::Path => Some(normalize_path(sources.parts.uri.path()).into_owned()),
        HashOn::QueryArg => {
            let name = if fallback { &upstream.hash_fallback_query_arg } else { &upstream.hash_on_query_arg };
            query_arg(sources.parts.uri.query()?, name.as_deref()?)
        }
        HashOn::UriCapture => {
            let name = if fallback { &upstream.hash_fallback_uri_capture } else { &upstream.hash_on_uri_capture };
            let name = name.as_deref()?;
            let (regex, path) = sources.captures?;
            let found = regex.captures(path)?;
            // A name, or a group's number (Kong's `uri_captures` holds both).
            let group = match name.parse::<usize>() {
                Ok(i) => found.get(i),
                Err(_) => found.name(name),
            };
            group.map(|m| m.as_str().to_string())
        }
    }
}

/// Every value of a header, joined as nginx joins them for `$http_<name>`.
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    })
}

/// A query argument's value: several values sorted and joined with `,`, a bare flag `true` (Kong's
/// `get_uri_args` stringified).
fn query_arg(query: &str, name: &str) -> Option<String> {
    let mut values: Vec<String> = crate::plugins::request::args(query)
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.map_or_else(|| "true".into(), Cow::into_owned))
        .collect();
    values.sort();
    (!values.is_empty()).then(|| values.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_args_are_decoded_sorted_and_joined() {
        assert_eq!(query_arg("a=2&b=x&a=1", "a").as_deref(), Some("1,2"));
        assert_eq!(query_arg("flag&x=1", "flag").as_deref(), Some("true"));
        assert_eq!(query_arg("n=a%20b", "n").as_deref(), Some("a b"));
        assert_eq!(query_arg("x=1", "n"), None);
    }

    #[test]
    fn cookies_and_headers_are_read_as_nginx_reads_them() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; sticky=abc"));
        headers.append("x-user", HeaderValue::from_static("u1"));
        headers.append("x-user", HeaderValue::from_static("u2"));
        assert_eq!(cookie(&headers, "sticky").as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "none"), None);
        assert_eq!(joined(&headers, "x-user").as_deref(), Some("u1, u2"));
    }
}
