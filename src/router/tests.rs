use super::*;

fn spec(name: &'static str) -> RouteSpec<&'static str> {
    RouteSpec {
        methods: vec![],
        hosts: vec![],
        paths: vec![],
        headers: vec![],
        snis: vec![],
        regex_priority: 0,
        target: name,
    }
}

fn with(mut s: RouteSpec<&'static str>, f: impl FnOnce(&mut RouteSpec<&'static str>)) -> RouteSpec<&'static str> {
    f(&mut s);
    s
}

fn find<'a>(r: &'a Router<&'static str>, method: &str, host: &str, path: &str) -> Option<&'a str> {
    find_h(r, method, host, path, &HeaderMap::new())
}

fn find_h<'a>(
    r: &'a Router<&'static str>,
    method: &str,
    host: &str,
    path: &str,
    headers: &HeaderMap,
) -> Option<&'a str> {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let view = RequestView { method: &method, host, port: 8000, sni: None, path, headers };
    r.find(&view).map(|m| *m.target)
}

#[test]
fn longest_prefix_wins_and_prefix_is_not_segment_aware() {
    let r = Router::build(vec![
        with(spec("api"), |s| s.paths = vec!["/api".into()]),
        with(spec("api-v1"), |s| s.paths = vec!["/api/v1".into()]),
        with(spec("root"), |s| s.paths = vec!["/".into()]),
    ])
    .expect("build");
    assert_eq!(find(&r, "GET", "x", "/api/v1/users"), Some("api-v1"));
    assert_eq!(find(&r, "GET", "x", "/apix"), Some("api"));
    assert_eq!(find(&r, "GET", "x", "/other"), Some("root"));
}

#[test]
fn more_attributes_beat_longer_prefix() {
    let r = Router::build(vec![
        with(spec("long"), |s| s.paths = vec!["/api/long".into()]),
        with(spec("get"), |s| {
            s.paths = vec!["/api".into()];
            s.methods = vec!["GET".into()];
        }),
    ])
    .expect("build");
    assert_eq!(find(&r, "GET", "x", "/api/long"), Some("get"));
    assert_eq!(find(&r, "POST", "x", "/api/long"), Some("long"));
    assert_eq!(find(&r, "POST", "x", "/api"), None);
}

#[test]
fn hosts_exact_and_wildcards() {
    let r = Router::build(vec![
        with(spec("exact"), |s| s.hosts = vec!["api.example.com".into()]),
        with(spec("suffix"), |s| s.hosts = vec!["*.example.com".into()]),
        with(spec("prefix"), |s| s.hosts = vec!["example.*".into()]),
        with(spec("port"), |s| s.hosts = vec!["ported.test:9000".into()]),
    ])
    .expect("build");
    assert_eq!(find(&r, "GET", "api.example.com", "/"), Some("exact"));
    assert_eq!(find(&r, "GET", "a.b.example.com", "/"), Some("suffix"));
    assert_eq!(find(&r, "GET", "example.com", "/"), Some("prefix"));
    assert_eq!(find(&r, "GET", "example.org", "/"), Some("prefix"));
    assert_eq!(find(&r, "GET", "nothing.test", "/"), None);
    // The listener port is 8000 in these tests.
    assert_eq!(find(&r, "GET", "ported.test", "/"), None);
}

#[test]
fn plain_host_beats_wildcard_with_same_weight() {
    let r = Router::build(vec![
        with(spec("wild"), |s| s.hosts = vec!["*.example.com".into()]),
        with(spec("plain"), |s| s.hosts = vec!["a.example.com".into()]),
    ])
    .expect("build");
    assert_eq!(find(&r, "GET", "a.example.com", "/"), Some("plain"));
    assert_eq!(find(&r, "GET", "b.example.com", "/"), Some("wild"));
}

#[test]
fn regex_beats_prefix_and_regex_priority_orders_regexes() {
    let r = Router::build(vec![
        with(spec("prefix"), |s| s.paths = vec!["/users/123".into()]),
        with(spec("regex-low"), |s| s.paths = vec![r"~/users/\d+".into()]),
        with(spec("regex-high"), |s| {
            s.paths = vec![r"~/users/1\d+".into()];
            s.regex_priority = 10;
        }),
    ])
    .expect("build");
    assert_eq!(find(&r, "GET", "x", "/users/123"), Some("regex-high"));
    assert_eq!(find(&r, "GET", "x", "/users/923"), Some("regex-low"));
}

#[test]
fn regex_is_anchored_at_start_and_reports_match_length() {
    let r = Router::build(vec![with(spec("re"), |s| s.paths = vec![r"~/v\d".into()])]).expect("build");
    assert_eq!(find(&r, "GET", "x", "/x/v1"), None);
    let method = Method::GET;
    let headers = HeaderMap::new();
    let view = RequestView { method: &method, host: "x", port: 80, sni: None, path: "/v2/items", headers: &headers };
    assert_eq!(r.find(&view).map(|m| m.matched_len), Some(3));
}

#[test]
fn headers_match_case_insensitively_and_by_regex() {
    let r = Router::build(vec![
        with(spec("v1"), |s| s.headers = vec![("X-Version".into(), vec!["V1".into(), "v1.1".into()])]),
        with(spec("re"), |s| s.headers = vec![("x-version".into(), vec!["~*^v2".into()])]),
    ])
    .expect("build");
    let mut h = HeaderMap::new();
    h.insert("x-version", "v1".parse().expect("value"));
    assert_eq!(find_h(&r, "GET", "x", "/", &h), Some("v1"));
    h.insert("x-version", "V2-beta".parse().expect("value"));
    assert_eq!(find_h(&r, "GET", "x", "/", &h), Some("re"));
    h.insert("x-version", "v3".parse().expect("value"));
    assert_eq!(find_h(&r, "GET", "x", "/", &h), None);
}

#[test]
fn ties_go_to_the_older_route() {
    let r = Router::build(vec![
        with(spec("first"), |s| s.paths = vec!["/same".into()]),
        with(spec("second"), |s| s.paths = vec!["/same".into()]),
    ])
    .expect("build");
    assert_eq!(find(&r, "GET", "x", "/same"), Some("first"));
}

#[test]
fn ten_thousand_routes_resolve_by_index() {
    let routes: Vec<RouteSpec<usize>> = (0..10_000)
        .map(|i| RouteSpec {
            methods: vec![],
            hosts: vec![],
            paths: vec![format!("/r{i}/")],
            headers: vec![],
            snis: vec![],
            regex_priority: 0,
            target: i,
        })
        .collect();
    let r = Router::build(routes).expect("build");
    let headers = HeaderMap::new();
    let method = Method::GET;
    for i in [0usize, 42, 9_999] {
        let path = format!("/r{i}/x");
        let view = RequestView { method: &method, host: "h", port: 80, sni: None, path: &path, headers: &headers };
        assert_eq!(r.find(&view).map(|m| *m.target), Some(i));
    }
}

#[test]
fn request_host_strips_port_and_lowercases() {
    assert_eq!(request_host("Example.COM:8000"), "example.com");
    assert_eq!(request_host("[::1]:8000"), "::1");
    assert!(matches!(request_host("plain.host"), std::borrow::Cow::Borrowed(_)));
}

#[test]
fn hosts_are_case_sensitive_like_kong() {
    let r = Router::build(vec![
        with(spec("lower"), |s| s.hosts = vec!["api.example.com".into()]),
        with(spec("mixed"), |s| s.hosts = vec!["*.Example.com".into()]),
    ])
    .expect("build");
    assert_eq!(find(&r, "GET", "api.example.com", "/"), Some("lower"));
    assert_eq!(find(&r, "GET", "API.example.com", "/"), None);
    assert_eq!(find(&r, "GET", "a.Example.com", "/"), Some("mixed"));
    assert_eq!(find(&r, "GET", "a.example.com", "/"), None);
    assert_eq!(route_host("API.Example.com:8000"), "API.Example.com");
}

#[test]
fn a_route_that_cannot_compile_names_its_field() {
    let bad_header = with(spec("h"), |s| s.headers = vec![("x-v".into(), vec!["~*(unclosed".into()])]);
    let err = RouteMatcher::compile(&bad_header).expect_err("unclosed header regex");
    assert_eq!(err.field, "headers");
    assert!(err.message.starts_with("invalid regex: '(unclosed'"), "{}", err.message);
    let bad_path = with(spec("p"), |s| s.paths = vec!["~/a/(b".into()]);
    assert_eq!(RouteMatcher::compile(&bad_path).expect_err("unclosed path regex").field, "paths");
    let bad_method = with(spec("m"), |s| s.methods = vec!["G ET".into()]);
    assert_eq!(RouteMatcher::compile(&bad_method).expect_err("bad method").field, "methods");
}

#[test]
fn assembling_compiled_routes_reuses_them() {
    let matcher = Arc::new(
        RouteMatcher::compile(&with(spec("a"), |s| s.paths = vec!["~/items/\\d+$".into()])).expect("compiles"),
    );
    let first = Router::assemble(vec![(matcher.clone(), "a")]);
    let second = Router::assemble(vec![(matcher, "b")]);
    assert_eq!(find(&first, "GET", "x", "/items/7"), Some("a"));
    assert_eq!(find(&second, "GET", "x", "/items/7"), Some("b"));
    assert_eq!(find(&second, "GET", "x", "/items/x"), None);
}

#[test]
fn regexes_are_found_by_the_literals_their_matches_begin_with() {
    assert_eq!(literal_prefixes(r"/orders/\d+$").as_deref(), Some(&[Box::from("/orders/")][..]));
    let both = literal_prefixes(r"/a|/b").expect("two literals");
    assert_eq!(both.len(), 2);
    assert_eq!(literal_prefixes(r".*/x"), None, "no literal every match begins with");
    assert_eq!(literal_prefixes(r"\d+/x"), None);
    let r = Router::build(vec![
        with(spec("orders"), |s| s.paths = vec![r"~/orders/\d+$".into()]),
        with(spec("either"), |s| s.paths = vec![r"~/(?:alpha|beta)/x".into()]),
        with(spec("anywhere"), |s| s.paths = vec![r"~/[a-z]+/\d+/y".into()]),
        with(spec("caseless"), |s| s.paths = vec![r"~(?i)/CASE/\d".into()]),
        with(spec("prefix"), |s| s.paths = vec!["/orders".into()]),
    ])
    .expect("build");
    assert_eq!(find(&r, "GET", "x", "/orders/12"), Some("orders"), "the regex still beats the prefix");
    assert_eq!(find(&r, "GET", "x", "/orders/x"), Some("prefix"));
    assert_eq!(find(&r, "GET", "x", "/beta/x"), Some("either"));
    assert_eq!(find(&r, "GET", "x", "/abc/7/y"), Some("anywhere"));
    assert_eq!(find(&r, "GET", "x", "/case/1"), Some("caseless"));
    assert_eq!(find(&r, "GET", "x", "/CaSe/1"), Some("caseless"));
}

/// Many regex routes cost a few hash lookups, not a walk over all of them: every one of 10,000
/// mixed routes (prefixes, hosts, wildcard hosts, regexes) is found.
#[test]
fn ten_thousand_mixed_routes_resolve() {
    let routes: Vec<RouteSpec<usize>> = (0..10_000)
        .map(|i| RouteSpec {
            methods: vec![],
            hosts: match i % 4 {
                1 => vec![format!("h{i}.example.test")],
                3 => vec![format!("*.w{i}.example.test")],
                _ => vec![],
            },
            paths: if i % 4 == 2 { vec![format!(r"~/r{i}/\d+$")] } else { vec![format!("/r{i}/")] },
            headers: vec![],
            snis: vec![],
            regex_priority: 0,
            target: i,
        })
        .collect();
    let r = Router::build(routes).expect("build");
    let headers = HeaderMap::new();
    let method = Method::GET;
    for i in [0usize, 1, 2, 3, 4242, 5001, 7778, 9_999] {
        let (host, path) = match i % 4 {
            1 => (format!("h{i}.example.test"), format!("/r{i}/x")),
            2 => ("x".to_string(), format!("/r{i}/123")),
            3 => (format!("a.w{i}.example.test"), format!("/r{i}/x")),
            _ => ("x".to_string(), format!("/r{i}/x")),
        };
        let view = RequestView { method: &method, host: &host, port: 80, sni: None, path: &path, headers: &headers };
        assert_eq!(r.find(&view).map(|m| *m.target), Some(i), "{host}{path}");
    }
}

/// The index answers what a scan of every route answers, for routes and requests made of a few
/// overlapping pieces (so that they meet). `PROPTEST_CASES` runs more than the suite's 64.
mod index_matches_scan {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;

    const HOST: &[&str] = &["a", "b", ".", "*", "example", ".com", ":8000", ":80", "A", "é", "-", "[::1]"];
    const PATH: &[&str] =
        &["/", "a", "b", "/a", "é", ".", "..", "%2F", "%61", "~", "\\d", "+", "$", "(", ")", "|", "[a-z]", "*", "?"];
    const METHOD: &[&str] = &["GET", "POST", "PUT", "get"];
    const HEADER: &[&str] = &["x-a", "X-B"];
    const VALUE: &[&str] = &["v", "V", "~*^v$", "~*v", "w", "é"];

    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64)
    }

    fn joined(pieces: &'static [&'static str], n: std::ops::Range<usize>) -> BoxedStrategy<String> {
        vec(select(pieces), n).prop_map(|p| p.concat()).boxed()
    }

    type Headers = Vec<(String, Vec<String>)>;

    fn headers() -> impl Strategy<Value = Headers> {
        vec((select(HEADER), vec(select(VALUE), 1..3)), 0..3).prop_map(|hs| {
            hs.into_iter().map(|(n, vs)| (n.to_string(), vs.into_iter().map(str::to_string).collect())).collect()
        })
    }

    fn spec() -> impl Strategy<Value = RouteSpec<usize>> {
        (
            vec(select(METHOD), 0..3),
            vec(joined(HOST, 1..4), 0..3),
            vec(joined(PATH, 1..6), 0..3),
            headers(),
            0usize..2,
            -2i64..3,
        )
            .prop_map(|(methods, hosts, paths, headers, snis, regex_priority)| RouteSpec {
                methods: methods.into_iter().map(str::to_string).collect(),
                hosts,
                paths,
                headers,
                snis: (0..snis).map(|_| "a.test".to_string()).collect(),
                regex_priority,
                target: 0,
            })
    }

    fn request() -> impl Strategy<Value = (&'static str, String, u16, String, Headers)> {
        (select(METHOD), joined(HOST, 1..5), select(vec![80u16, 8000]), joined(PATH, 1..8), headers())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

        /// Routes taken out, changed and added by an edit leave the router exactly as assembling
        /// the resulting routes whole would (every bucket, every list in the same order), and its
        /// index still finds what a scan finds.
        #[test]
        fn an_edited_router_is_the_router_of_its_routes(
            before in vec(spec(), 0..10),
            changed in vec((0usize..12, spec()), 0..4),
            removed in vec(0usize..12, 0..4),
            requests in vec(request(), 1..6),
        ) {
            let compile = |s: &RouteSpec<usize>| RouteMatcher::compile(s).ok().map(Arc::new);
            let mut routes: std::collections::BTreeMap<u128, Arc<RouteMatcher>> = before
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((i as u128, compile(s)?)))
                .collect();
            let keyed = |routes: &std::collections::BTreeMap<u128, Arc<RouteMatcher>>| -> Vec<KeyedRoute<usize>> {
                routes.iter().map(|(k, m)| (*k, m.clone(), *k as usize)).collect()
            };
            let first = Router::assemble_keyed(keyed(&routes));
            let remove: Vec<u128> = removed.iter().map(|k| *k as u128).collect();
            for k in &remove {
                routes.remove(k);
            }
            let mut add = Vec::new();
            for (k, s) in &changed {
                let Some(m) = compile(s) else { continue };
                routes.insert(*k as u128, m.clone());
                add.retain(|(key, _, _): &KeyedRoute<usize>| *key != *k as u128);
                add.push((*k as u128, m, *k));
            }
            // A key both removed and added stays, as added.
            let edited = first.edit(&remove, add);
            let whole = Router::assemble_keyed(keyed(&routes));
            prop_assert_eq!(edited.layout(), whole.layout());
            prop_assert_eq!(edited.len(), routes.len());
            for (method, authority, port, path, _) in &requests {
                let Ok(method) = Method::from_bytes(method.as_bytes()) else { continue };
                let map = HeaderMap::new();
                let path = normalize_path(path);
                let view = RequestView { method: &method, host: route_host(authority), port: *port, sni: None, path: &path, headers: &map };
                prop_assert_eq!(edited.find(&view).map(|m| *m.target), edited.find_by_scan(&view).map(|m| *m.target));
            }
        }

        #[test]
        fn the_index_finds_what_a_scan_finds(specs in vec(spec(), 0..10), requests in vec(request(), 1..10)) {
            let specs = specs.into_iter().enumerate().map(|(i, s)| RouteSpec { target: i, ..s }).collect();
            let Ok(router) = Router::build(specs) else { return Ok(()) };
            for (method, authority, port, path, headers) in &requests {
                let Ok(method) = Method::from_bytes(method.as_bytes()) else { continue };
                let mut map = HeaderMap::new();
                for (name, values) in headers {
                    for v in values {
                        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_str(v)) {
                            map.append(n, v);
                        }
                    }
                }
                let path = normalize_path(path);
                let view = RequestView { method: &method, host: route_host(authority), port: *port, sni: None, path: &path, headers: &map };
                let indexed = router.find(&view).map(|m| *m.target);
                let scanned = router.find_by_scan(&view).map(|m| *m.target);
                prop_assert_eq!(indexed, scanned, "{} {} {}", method, authority, path);
            }
        }
    }
}
