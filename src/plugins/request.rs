//! Reading and rewriting the parts of a client request that plugins look at: query arguments and
//! buffered form/JSON bodies. Allocation-free on the common path (no `%` escapes, nothing removed).

use std::borrow::Cow;

use bytes::Bytes;
use http::Uri;

/// What a lookup of one name found.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    None,
    One(Cow<'a, str>),
    /// The name was given more than once.
    Many,
}

/// Finds `name` among the `&`-separated `k=v` pairs of a query string or form body.
pub fn find_pair<'a>(pairs: &'a str, name: &str) -> Found<'a> {
    let mut found = Found::None;
    for pair in pairs.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k) != name {
            continue;
        }
        if found != Found::None {
            return Found::Many;
        }
        found = Found::One(decode(v));
    }
    found
}

/// The arguments of a query string as Kong's `get_uri_args` reads them, in order: each name
/// decoded, with its value decoded, or `None` for a bare name (Kong's `true`); empty pairs skipped.
pub fn args(query: &str) -> impl Iterator<Item = (Cow<'_, str>, Option<Cow<'_, str>>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| match pair.split_once('=') {
        Some((name, value)) => (decode(name), Some(decode(value))),
        None => (decode(pair), None),
    })
}

/// Removes every `name=…` pair from a query string or form body; `None` when nothing changed.
pub fn remove_pair(pairs: &str, name: &str) -> Option<String> {
    let mut changed = false;
    let kept: Vec<&str> = pairs
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            let drop = decode(k) == name;
            changed |= drop;
            !drop
        })
        .collect();
    changed.then(|| kept.join("&"))
}

/// Percent-decodes `application/x-www-form-urlencoded` text (`+` is a space).
pub fn decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The same URI with a new query string (none when empty).
pub fn with_query(uri: &Uri, query: &str) -> Uri {
    let path = uri.path();
    let pq = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// The kinds of request body plugins understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
    /// `multipart/form-data`, with its boundary.
    Multipart(String),
    Other,
}

pub fn body_kind(headers: &http::HeaderMap) -> BodyKind {
    let full = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ct = full.split(';').next().unwrap_or("").trim();
    if ct.eq_ignore_ascii_case("application/json") || ct.to_ascii_lowercase().ends_with("+json") {
        BodyKind::Json
    } else if ct.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        BodyKind::Form
    } else if ct.eq_ignore_ascii_case("multipart/form-data") {
        match multer::parse_boundary(full) {
            Ok(boundary) => BodyKind::Multipart(boundary),
            Err(_) => BodyKind::Other,
        }
    } else {
        BodyKind::Other
    }
}

/// The parts of a buffered `multipart/form-data` body: each one's field name, where the part
/// starts (its `--boundary` line included) and ends, and its content. Unreadable parts end the
/// list (a body read this far is all a plugin looks at).
fn multipart_parts<'a>(body: &'a [u8], boundary: &str) -> Vec<(String, std::ops::Range<usize>, &'a [u8])> {
    let delimiter = format!("--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    let starts: Vec<usize> = finder.find_iter(body).collect();
    let mut out = Vec::new();
    for pair in starts.windows(2) {
        let (start, next) = (pair[0], pair[1]);
        let part = &body[start + delimiter.len()..next];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let Some(split) = memchr::memmem::find(part, b"\r\n\r\n") else { break };
        let head = String::from_utf8_lossy(&part[..split]);
        let content = &part[split + 4..];
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let name = head.lines().find_map(|line| {
            let (header, value) = line.split_once(':')?;
            if !header.trim().eq_ignore_ascii_case("content-disposition") {
                return None;
            }
            value.split(';').find_map(|p| p.trim().strip_prefix("name=").map(|n| n.trim_matches('"').to_string()))
        });
        if let Some(name) = name {
            out.push((name, start..next, content));
        }
    }
    out
}

/// Looks `name` up in a buffered body.
pub fn find_in_body(kind: BodyKind, body: &Bytes, name: &str) -> Found<'static> {
    match kind {
        BodyKind::Json => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(m)) => match m.get(name) {
                Some(serde_json::Value::String(s)) => Found::One(Cow::Owned(s.clone())),
                Some(serde_json::Value::Array(_)) => Found::Many,
                _ => Found::None,
            },
            _ => Found::None,
        },
        BodyKind::Form => match std::str::from_utf8(body) {
            Ok(text) => match find_pair(text, name) {
                Found::One(v) => Found::One(Cow::Owned(v.into_owned())),
                Found::Many => Found::Many,
                Found::None => Found::None,
            },
            Err(_) => Found::None,
        },
        BodyKind::Multipart(boundary) => {
            let mut found = Found::None;
            for (field, _, content) in multipart_parts(body, &boundary) {
                if field == name {
                    if found != Found::None {
                        return Found::Many;
                    }
                    found = Found::One(Cow::Owned(String::from_utf8_lossy(content).into_owned()));
                }
            }
            found
        }
        BodyKind::Other => Found::None,
    }
}

/// The body without `name`; `None` when nothing changed.
pub fn remove_from_body(kind: BodyKind, body: &Bytes, name: &str) -> Option<Bytes> {
    match kind {
        BodyKind::Json => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(mut m)) => {
                m.remove(name)?;
                Some(Bytes::from(serde_json::Value::Object(m).to_string()))
            }
            _ => None,
        },
        BodyKind::Form => std::str::from_utf8(body).ok().and_then(|t| remove_pair(t, name)).map(Bytes::from),
        // The other parts are kept byte for byte.
        BodyKind::Multipart(boundary) => {
            let drop: Vec<std::ops::Range<usize>> =
                multipart_parts(body, &boundary).into_iter().filter(|(f, _, _)| f == name).map(|(_, r, _)| r).collect();
            if drop.is_empty() {
                return None;
            }
            let mut out = Vec::with_capacity(body.len());
            let mut at = 0;
            for range in drop {
                out.extend_from_slice(&body[at..range.start]);
                at = range.end;
            }
            out.extend_from_slice(&body[at..]);
            Some(Bytes::from(out))
        }
        BodyKind::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_give_up_a_field_and_keep_the_rest() {
        let body = Bytes::from_static(
            b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\none\r\n--xyz\r\nContent-Disposition: form-data; name=\"apikey\"\r\n\r\nsecret\r\n--xyz\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\ntwo\r\n--xyz--\r\n",
        );
        let kind = BodyKind::Multipart("xyz".into());
        assert_eq!(find_in_body(kind.clone(), &body, "apikey"), Found::One(Cow::Borrowed("secret")));
        assert_eq!(find_in_body(kind.clone(), &body, "nope"), Found::None);
        let hidden = remove_from_body(kind.clone(), &body, "apikey").expect("removed");
        assert_eq!(
            &hidden[..],
            b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\none\r\n--xyz\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\ntwo\r\n--xyz--\r\n"
        );
        assert_eq!(find_in_body(kind, &hidden, "apikey"), Found::None);
    }

    #[test]
    fn finds_and_decodes_pairs() {
        assert_eq!(find_pair("a=1&apikey=k%20y&b", "apikey"), Found::One(Cow::Borrowed("k y")));
        assert_eq!(find_pair("apikey=1&apikey=2", "apikey"), Found::Many);
        assert_eq!(find_pair("x=1", "apikey"), Found::None);
        assert_eq!(find_pair("", "apikey"), Found::None);
    }

    #[test]
    fn removes_pairs() {
        assert_eq!(remove_pair("a=1&apikey=k&b=2", "apikey").as_deref(), Some("a=1&b=2"));
        assert_eq!(remove_pair("a=1", "apikey"), None);
        let uri: Uri = "/p?a=1&apikey=k".parse().expect("uri");
        assert_eq!(with_query(&uri, "a=1").to_string(), "/p?a=1");
        assert_eq!(with_query(&uri, "").to_string(), "/p");
    }

    #[test]
    fn query_args_are_decoded_in_order_with_bare_names_apart() {
        let args: Vec<_> = args("a=1&&b&c=%20x+y&a=2").collect();
        let text = |v: &Option<Cow<'_, str>>| v.as_deref().map(str::to_string);
        let got: Vec<(String, Option<String>)> = args.iter().map(|(k, v)| (k.to_string(), text(v))).collect();
        let want = [("a", Some("1")), ("b", None), ("c", Some(" x y")), ("a", Some("2"))];
        let want: Vec<(String, Option<String>)> =
            want.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn decode_handles_bad_escapes() {
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("a+b%41"), "a bA");
    }

    #[test]
    fn bodies() {
        let json = Bytes::from_static(br#"{"apikey":"k","x":1}"#);
        assert_eq!(find_in_body(BodyKind::Json, &json, "apikey"), Found::One(Cow::Owned("k".into())));
        assert_eq!(remove_from_body(BodyKind::Json, &json, "apikey"), Some(Bytes::from_static(br#"{"x":1}"#)));
        let form = Bytes::from_static(b"apikey=k&x=1");
        assert_eq!(find_in_body(BodyKind::Form, &form, "apikey"), Found::One(Cow::Owned("k".into())));
        assert_eq!(remove_from_body(BodyKind::Form, &form, "apikey"), Some(Bytes::from_static(b"x=1")));
    }
}
