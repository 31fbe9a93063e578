//! Reusable field types with Kong's validators and messages (`kong/db/schema/typedefs.lua`): hosts,
//! ports, paths, names, tags, header names, timeouts, protocols.

use serde_json::{Value, json};

use super::schema::{Auto, Check, Field, Type};

pub const HTTP_PROTOCOLS: &[&str] = &["grpc", "grpcs", "http", "https"];
/// Kong OSS `constants.PROTOCOLS`, sorted (the `ws`/`wss` protocols are Enterprise-only).
pub const ALL_PROTOCOLS: &[&str] = &["grpc", "grpcs", "http", "https", "tcp", "tls", "tls_passthrough", "udp"];

pub fn id() -> Field {
    Field::new("id", Type::String).auto(Auto::Uuid).immutable().check(Check::Custom(check_uuid))
}

/// The latest timestamp a record may carry: 9999-12-31T23:59:59Z (Kong sets no bound; this one
/// keeps every date printable and every conversion to milliseconds in range).
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

pub fn created_at() -> Field {
    Field::new("created_at", Type::Integer).auto(Auto::Timestamp).check(Check::Between(0, MAX_TIMESTAMP))
}

pub fn updated_at() -> Field {
    Field::new("updated_at", Type::Integer).auto(Auto::Timestamp).check(Check::Between(0, MAX_TIMESTAMP))
}

pub fn tags() -> Field {
    Field::new("tags", Type::Set(Box::new(Field::new("tag", Type::String).required().check(Check::Custom(check_tag)))))
}

pub fn port(name: &'static str) -> Field {
    Field::new(name, Type::Integer).check(Check::Between(0, 65535))
}

pub fn timeout(name: &'static str) -> Field {
    Field::new(name, Type::Integer).default(json!(60000)).check(Check::Between(1, 2_147_483_646))
}

pub fn foreign(name: &'static str, kind: &'static str) -> Field {
    Field::new(name, Type::Foreign(kind))
}

pub fn utf8_name(name: &'static str) -> Field {
    Field::new(name, Type::String).check(Check::Custom(check_utf8_name))
}

pub fn header_name(name: &'static str) -> Field {
    Field::new(name, Type::String).check(Check::Custom(check_header_name))
}

fn string_set(name: &'static str, elem: Field) -> Field {
    let _ = name;
    Field::new(name, Type::Set(Box::new(elem)))
}

pub fn protocols(default: &[&str], allowed: &'static [&'static str]) -> Field {
    string_set("protocols", Field::new("protocol", Type::String).check(Check::OneOf(allowed)))
        .required()
        .default(Value::from(default.iter().map(|s| Value::from(*s)).collect::<Vec<_>>()))
        .check(Check::LenMin(1))
}

pub fn check_uuid(v: &Value) -> Result<(), String> {
    match v.as_str() {
        Some(s) if super::schema::is_uuid(s) => Ok(()),
        _ => Err("expected a valid UUID".into()),
    }
}

fn check_tag(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = s.chars().all(|c| (c.is_ascii_graphic() || c == ' ') && c != ',' && c != '/' || !c.is_ascii());
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag '{s}': expected printable ascii (except `,` and `/`) or valid utf-8 sequences"))
    }
}

fn check_utf8_name(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~') || !c.is_ascii()) {
        Ok(())
    } else {
        Err(format!("invalid value '{s}': the only accepted ascii characters are alphanumerics or ., -, _, and ~"))
    }
}

pub fn check_header_name(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        Ok(())
    } else {
        Err(format!("bad header name '{s}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"))
    }
}

pub fn check_method(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase()) { Ok(()) } else { Err(format!("invalid value: {s}")) }
}

/// A host name or IP without port (`typedefs.host`).
pub fn check_host(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match split_host_port(s) {
        Some((_, Some(_))) => Err("must not have a port".into()),
        Some((_, None)) => Ok(()),
        None => Err(format!("invalid value: {s}")),
    }
}

/// A route host: optional `:port`, at most one `*` as the leftmost or rightmost label.
pub fn check_route_host(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let stars = s.matches('*').count();
    if stars > 1 {
        return Err("invalid wildcard: must have at most one wildcard".into());
    }
    if stars == 1
        && !(s.starts_with("*.") || s.ends_with(".*") || s.split(':').next().is_some_and(|h| h.ends_with(".*")))
    {
        return Err("invalid wildcard: must be placed at leftmost or rightmost label".into());
    }
    let probe = s.replace('*', "abc");
    match split_host_port(&probe) {
        Some(_) => Ok(()),
        None => Err(format!("invalid hostname: {probe}")),
    }
}

/// An SNI name (`typedefs.wildcard_host`): a host name with at most one `*`, as its first or last
/// character (`*` alone is the catch-all); no IP, no port.
pub fn check_wildcard_host(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if s == "*" {
        return Ok(());
    }
    match s.matches('*').count() {
        0 | 1 => {}
        _ => return Err("only one wildcard must be specified".into()),
    }
    if s.contains('*') && !(s.starts_with('*') || s.ends_with('*')) {
        return Err("wildcard must be leftmost or rightmost character".into());
    }
    let probe = s.replace('*', "wildcard");
    match split_host_port(&probe) {
        Some((_, Some(_))) => Err("must not have a port".into()),
        Some((host, None)) if host.parse::<std::net::IpAddr>().is_ok() => Err("must not be an IP".into()),
        Some(_) => Ok(()),
        None => Err(format!("invalid value: {s}")),
    }
}

/// Splits `host[:port]` and checks the host is a name or an IP. `None` when malformed.
pub fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        return match after.strip_prefix(':') {
            Some(p) => Some((ip, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((ip, None)),
            None => None,
        };
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some((s, None));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
        None => (s, None),
    };
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid_name.then_some((host, port))
}

/// A service path (`typedefs.path`).
pub fn check_path(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if !s.starts_with('/') {
        return Err("should start with: /".into());
    }
    if s.contains("//") {
        return Err("must not have empty segments".into());
    }
    check_rfc3986(s)
}

fn check_rfc3986(s: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-~/%:@!$&'()*+,;=".contains(c);
    if !s.chars().all(allowed) {
        return Err(format!("invalid path: '{s}' (characters outside of the reserved list of RFC 3986 found)"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                let shown: String = s.get(i..).unwrap_or_default().chars().take(3).collect();
                return Err(format!("invalid url-encoded value: '{shown}'"));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// A route path: a normalized prefix (`/api`) or a regex (`~/api/\d+`).
pub fn check_router_path(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if let Some(re) = s.strip_prefix('~') {
        if !re.starts_with('/') {
            return Err("should start with: / (fixed path) or ~/ (regex path)".into());
        }
        return match regex::Regex::new(re) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("invalid regex: '{re}' (PCRE returned: {})", first_line(&e.to_string()))),
        };
    }
    if !s.starts_with('/') {
        return Err("should start with: / (fixed path) or ~/ (regex path)".into());
    }
    if s.contains("//") {
        return Err("must not have empty segments".into());
    }
    // Route paths only have their percent-escapes checked (Kong ignores other RFC 3986 characters).
    if let Err(e) = check_rfc3986(s)
        && e.starts_with("invalid url-encoded")
    {
        return Err(e);
    }
    let normalized = crate::paths::normalize_path(s);
    if normalized != s {
        return Err(format!("non-normalized path, consider use '{normalized}' instead"));
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    s.lines().rev().find(|l| l.starts_with("error:")).unwrap_or_else(|| s.lines().next().unwrap_or("")).to_string()
}

pub fn check_ip_or_cidr(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let ok = match ip.parse::<std::net::IpAddr>() {
        Ok(addr) => match prefix {
            None => true,
            Some(p) => p.parse::<u8>().is_ok_and(|n| n <= if addr.is_ipv4() { 32 } else { 128 }),
        },
        Err(_) => false,
    };
    if ok { Ok(()) } else { Err(format!("invalid ip or cidr range: '{s}'")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hosts() {
        assert!(check_host(&json!("example.com")).is_ok());
        assert!(check_host(&json!("10.0.0.1")).is_ok());
        assert_eq!(check_host(&json!("example.com:80")), Err("must not have a port".into()));
        assert_eq!(check_host(&json!("exa mple")), Err("invalid value: exa mple".into()));
        assert!(check_route_host(&json!("*.example.com")).is_ok());
        assert!(check_route_host(&json!("example.*")).is_ok());
        assert!(check_route_host(&json!("example.com:8000")).is_ok());
        assert!(check_route_host(&json!("a.*.com")).is_err());
        assert!(check_route_host(&json!("*.a.*")).is_err());
    }

    #[test]
    fn router_paths() {
        assert!(check_router_path(&json!("/api")).is_ok());
        assert!(check_router_path(&json!("~/api/\\d+$")).is_ok());
        assert_eq!(
            check_router_path(&json!("api")),
            Err("should start with: / (fixed path) or ~/ (regex path)".into())
        );
        assert_eq!(check_router_path(&json!("/a//b")), Err("must not have empty segments".into()));
        assert!(check_router_path(&json!("~/(unclosed")).expect_err("bad").starts_with("invalid regex: '/(unclosed'"));
        assert_eq!(check_router_path(&json!("/a/./b")), Err("non-normalized path, consider use '/a/b' instead".into()));
        assert_eq!(check_path(&json!("/a%zz")), Err("invalid url-encoded value: '%zz'".into()));
    }

    #[test]
    fn names_and_tags() {
        assert!(check_utf8_name(&json!("my-service_1.v2~x")).is_ok());
        assert!(check_utf8_name(&json!("has space")).is_err());
        assert!(check_tag(&json!("team:a")).is_ok());
        assert!(check_tag(&json!("a,b")).is_err());
        assert!(check_header_name(&json!("api_key-1")).is_ok());
        assert!(check_header_name(&json!("bad key")).is_err());
    }
}
