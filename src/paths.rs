//! Request paths and hosts as the gateway compares them: path normalization before matching (Kong's
//! `normalize(path, true)`: percent-escapes of unreserved characters decoded, other escapes
//! upper-cased, repeated slashes merged, `.` and `..` segments resolved; borrowed, no allocation,
//! when the path is already normal), and the host of an authority with its port split off. A leaf:
//! it knows nothing of routes or entities.

use std::borrow::Cow;

pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let needs_work = path.contains('%') || path.contains("//") || path.contains("/.") || !path.starts_with('/');
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    Cow::Owned(out)
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && path.is_char_boundary(i + 3)
            && let Ok(v) = u8::from_str_radix(&path[i + 1..i + 3], 16)
        {
            let c = v as char;
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~') {
                out.push(c);
            } else {
                out.push('%');
                out.push_str(&path[i + 1..i + 3].to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        let ch = path[i..].chars().next().unwrap_or('/');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Splits `host:port`; IPv6 literals are bracketed.
pub fn split_port(h: &str) -> (&str, Option<u16>) {
    if let Some(rest) = h.strip_prefix('[') {
        if let Some((ip, port)) = rest.split_once("]:") {
            return (ip, port.parse().ok());
        }
        return (rest.trim_end_matches(']'), None);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (h, None),
        },
        _ => (h, None),
    }
}

/// The request host as routes match it: the port dropped, the case kept (Kong compares hosts
/// case-sensitively).
pub fn route_host(authority: &str) -> &str {
    split_port(authority).0
}

/// Lower-cases the request host and drops its port, borrowing when already lower-case (nginx's
/// `$host`, for `X-Forwarded-Host`).
pub fn request_host(authority: &str) -> std::borrow::Cow<'_, str> {
    let host = split_port(authority).0;
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn already_normal_is_borrowed() {
        assert!(matches!(normalize_path("/api/v1"), Cow::Borrowed(_)));
    }

    #[test]
    fn normalizes_like_kong() {
        assert_eq!(normalize_path("/a/./b"), "/a/b");
        assert_eq!(normalize_path("/a/../b"), "/b");
        assert_eq!(normalize_path("//a///b/"), "/a/b/");
        assert_eq!(normalize_path("/%61pi/%2f"), "/api/%2F");
        assert_eq!(normalize_path("/.."), "/");
        assert_eq!(normalize_path("/a/b/.."), "/a/");
        assert_eq!(normalize_path("/a%zz"), "/a%zz");
    }
}
