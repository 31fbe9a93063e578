//! The router on arbitrary routes and requests: `Router::build` from route specs made of a few
//! overlapping pieces or of any text, then `find` for requests whose path went through
//! `normalize_path` and whose host through `route_host`, as the proxy does. Checked: nothing
//! panics; the index finds the route a scan of every route finds (`find_by_scan`); a match is
//! one the route allows (method, path, prefix); a normalized path starts with `/` and has no empty
//! or dot segments.

#![no_main]

use arbitrary::{Result, Unstructured};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use tollgate::paths::split_port;
use tollgate::router::{RequestView, RouteSpec, Router, normalize_path, request_host, route_host};

const HOST: &[&str] = &["a", "b", ".", "*", "example", ".com", ":8000", ":80", "A", "é", "-", "[::1]", ":"];
const PATH: &[&str] = &[
    "/", "a", "b", "/a", "é", ".", "..", "%", "%2F", "%2f", "%61", "%7E", "~", "\\d", "+", "$", "^", "(", ")", "|",
    "[a-z]", "*", "?", "{2}", "(?x)", "#", "\\", "\0",
];
const METHOD: &[&str] = &["GET", "POST", "PUT", "get", "", "X Y", "PURGE"];
const HEADER: &[&str] = &["x-a", "X-B", "host", "bad name", ""];
const VALUE: &[&str] = &["v", "V", "~*^v$", "~*v", "~*(", "w", "é", ""];

/// Text made of pieces (so that routes and requests meet), or now and then any text.
fn text(u: &mut Unstructured<'_>, pieces: &[&str], max: usize) -> Result<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let n = u.int_in_range(0..=max)?;
    let mut out = String::new();
    for _ in 0..n {
        out.push_str(u.choose(pieces)?);
    }
    Ok(out)
}

fn list(u: &mut Unstructured<'_>, pieces: &[&str], max_items: usize, max_len: usize) -> Result<Vec<String>> {
    let n = u.int_in_range(0..=max_items)?;
    (0..n).map(|_| text(u, pieces, max_len)).collect()
}

fn headers(u: &mut Unstructured<'_>) -> Result<Vec<(String, Vec<String>)>> {
    let n = u.int_in_range(0..=2)?;
    (0..n).map(|_| Ok((text(u, HEADER, 1)?, list(u, VALUE, 2, 1)?))).collect()
}

fn spec(u: &mut Unstructured<'_>, target: usize) -> Result<RouteSpec<usize>> {
    Ok(RouteSpec {
        methods: list(u, METHOD, 2, 1)?,
        hosts: list(u, HOST, 3, 4)?,
        paths: list(u, PATH, 3, 6)?,
        headers: headers(u)?,
        snis: if u.arbitrary()? { vec!["a.test".to_string()] } else { vec![] },
        regex_priority: u.arbitrary()?,
        target,
    })
}

/// A route's own attributes allow the match: its methods, and the path it matched on.
fn check_allowed(spec: &RouteSpec<usize>, method: &Method, path: &str, matched_len: usize, prefix: Option<&str>) {
    if !spec.methods.is_empty() {
        assert!(spec.methods.iter().any(|m| m.as_bytes() == method.as_str().as_bytes()), "method not allowed");
    }
    assert!(matched_len <= path.len(), "matched more than the path");
    if spec.paths.is_empty() {
        assert_eq!(matched_len, 0);
    }
    if let Some(prefix) = prefix {
        assert!(spec.paths.iter().any(|p| p == prefix), "a prefix the route does not have");
        assert!(path.starts_with(prefix) && matched_len == prefix.len(), "prefix does not match");
    }
}

fn check_normal(raw: &str) {
    let once = normalize_path(raw);
    assert!(once.starts_with('/'), "{raw:?} → {once:?}");
    assert!(!once.contains("//"), "{raw:?} → {once:?}");
    assert!(once.split('/').all(|s| s != "." && s != ".."), "{raw:?} → {once:?}");
    // Percent-escapes are decoded in one pass, as Kong's `normalize` does: `%b%61` gives `%ba`,
    // which a second pass would upper-case. Without escapes, normal stays normal.
    if !once.contains('%') {
        assert_eq!(normalize_path(&once), once, "normalizing {raw:?} twice");
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let n = u.int_in_range(0..=8)?;
    let specs: Vec<RouteSpec<usize>> = (0..n).map(|i| spec(u, i)).collect::<Result<_>>()?;
    let router = Router::build(specs.clone());
    while !u.is_empty() {
        let method = Method::from_bytes(text(u, METHOD, 1)?.as_bytes()).unwrap_or(Method::GET);
        let authority = text(u, HOST, 5)?;
        let raw_path = text(u, PATH, 8)?;
        let mut map = HeaderMap::new();
        for (name, values) in headers(u)? {
            for v in values {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&v)) {
                    map.append(n, v);
                }
            }
        }
        let port = if u.arbitrary()? { 8000 } else { 80 };
        let _ = (split_port(&authority), request_host(&authority));
        check_normal(&raw_path);
        let Ok(router) = &router else { continue };
        let path = normalize_path(&raw_path);
        // Cleartext, or TLS with and without the server name a route may ask for.
        let sni = match port % 3 {
            0 => None,
            1 => Some("a.test"),
            _ => Some(""),
        };
        let view = RequestView { method: &method, host: route_host(&authority), port, sni, path: &path, headers: &map };
        let found = router.find(&view);
        let scanned = router.find_by_scan(&view);
        assert_eq!(found.as_ref().map(|m| *m.target), scanned.as_ref().map(|m| *m.target), "index and scan differ");
        if let Some(m) = found {
            check_allowed(&specs[*m.target], &method, &path, m.matched_len, m.prefix);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
