//! The proxy, black-box: the real `tollgate` binary configured through its Admin API, real HTTP (and
//! raw TCP) sent to its proxy port, and a real echo upstream that reports what it received. Kong 3.x
//! behaviour is the reference (`spec/kong-gateway.md` §3 and §4).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Gateway, Options, Upstream, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VERSION: &str = env!("CARGO_PKG_VERSION");

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A service named `name` whose upstream path is `/<name>`, and one route for it (`strip_path` off
/// unless the route says otherwise), so the echoed path tells which route matched.
async fn labelled(gw: &Gateway, up: &Upstream, name: &str, mut route: Value) -> Value {
    gw.create("/services", json!({"name": name, "url": up.url(&format!("/{name}"))})).await;
    if route.get("strip_path").is_none() {
        route["strip_path"] = json!(false);
    }
    gw.create(&format!("/services/{name}/routes"), route).await
}

/// Which labelled service answered (the first segment of the path the upstream received).
async fn which(r: reqwest::Response) -> String {
    let status = r.status();
    let body = echo(r).await;
    assert_eq!(status, 200, "{body}");
    body["path"].as_str().unwrap_or_default().trim_start_matches('/').split('/').next().unwrap_or_default().to_string()
}

/// The echo upstream's JSON, or the gateway's JSON when it answered itself.
async fn echo(r: reqwest::Response) -> Value {
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Waits until every Admin API change made so far is live on the proxy. Snapshots apply changes in
/// order, so once a marker written last is visible, so is everything before it: the marker is a route
/// on its own host with a key-auth of its own realm, which only it can answer with.
async fn sync(gw: &Gateway) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let host = format!("sync-{id}.test");
    let route = gw.create("/routes", json!({"hosts": [host], "paths": ["/__sync"]})).await;
    let route_id = route["id"].as_str().expect("route id");
    gw.create(&format!("/routes/{route_id}/plugins"), json!({"name": "key-auth", "config": {"realm": id}})).await;
    let realm = format!("Key realm=\"{id}\"");
    let marked = |r: &reqwest::Response| header(r, "www-authenticate") == Some(realm.as_str());
    let r = gw.eventually("/__sync", &[("host", &host)], Duration::from_secs(5), marked).await;
    assert!(marked(&r), "configuration did not reach the proxy (last status {})", r.status());
}

async fn message(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body = echo(r).await;
    (status, body["message"].as_str().unwrap_or_default().to_string())
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Sends raw bytes to the proxy port and returns whatever comes back before the connection closes.
/// The writer runs on its own task: the gateway may answer (and close) before reading everything.
async fn raw(gw: &Gateway, request: Vec<u8>) -> String {
    let stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    writer.abort();
    String::from_utf8_lossy(&buf).into_owned()
}

fn raw_status(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A key-auth setup: consumer `ann` (no custom_id) with key `secret`, a service and a route on
/// `/auth` carrying key-auth with `config`.
async fn key_auth_route(gw: &Gateway, up: &Upstream, config: Value) -> (Value, Value, Value) {
    let (_, route) = gw.service_and_route(up, "authsvc", json!({"name": "auth", "paths": ["/auth"]})).await;
    gw.create("/routes/auth/plugins", json!({"name": "key-auth", "config": config})).await;
    let ann = gw.create("/consumers", json!({"username": "ann"})).await;
    let cred = gw.create("/consumers/ann/key-auth", json!({"key": "secret"})).await;
    sync(gw).await;
    (route, ann, cred)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_route_with_an_exact_host_matches_that_host_with_any_port_and_case_sensitively() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "exact", json!({"hosts": ["api.example.com"]})).await;
    sync(&gw).await;
    assert_eq!(which(gw.call("/", &[("host", "api.example.com")]).await).await, "exact");
    assert_eq!(which(gw.call("/x", &[("host", "api.example.com:1234")]).await).await, "exact");
    let (status, msg) = message(gw.call("/", &[("host", "other.example.com")]).await).await;
    assert_eq!((status, msg.as_str()), (404, "no Route matched with those values"));
    // Kong documents route hosts as case-sensitive.
    assert_eq!(gw.call("/", &[("host", "API.Example.com")]).await.status(), 404);
}

#[tokio::test]
async fn wildcard_hosts_match_any_subdomain_or_any_tld() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "suffix", json!({"hosts": ["*.example.com"]})).await;
    labelled(&gw, &up, "prefix", json!({"hosts": ["example.*"]})).await;
    sync(&gw).await;
    assert_eq!(which(gw.call("/", &[("host", "a.example.com")]).await).await, "suffix");
    assert_eq!(which(gw.call("/", &[("host", "a.b.example.com")]).await).await, "suffix");
    assert_eq!(which(gw.call("/", &[("host", "example.org")]).await).await, "prefix");
    assert_eq!(which(gw.call("/", &[("host", "example.co.uk")]).await).await, "prefix");
    assert_eq!(gw.call("/", &[("host", "example-com.net")]).await.status(), 404);
    assert_eq!(gw.call("/", &[("host", "notexample.com")]).await.status(), 404);
}

#[tokio::test]
async fn a_host_with_a_port_only_matches_requests_arriving_on_that_listener_port() {
    let (gw, up) = start().await;
    let on_our_port = format!("ported.test:{}", gw.proxy_port);
    labelled(&gw, &up, "ours", json!({"hosts": [on_our_port]})).await;
    labelled(&gw, &up, "elsewhere", json!({"hosts": ["other-port.test:1"]})).await;
    sync(&gw).await;
    assert_eq!(which(gw.call("/", &[("host", "ported.test")]).await).await, "ours");
    assert_eq!(gw.call("/", &[("host", "other-port.test")]).await.status(), 404);
    assert_eq!(gw.call("/", &[("host", "other-port.test:1")]).await.status(), 404);
}

#[tokio::test]
async fn path_prefixes_are_plain_string_prefixes_not_segments() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "api", json!({"paths": ["/api"]})).await;
    sync(&gw).await;
    assert_eq!(which(gw.call("/api", &[]).await).await, "api");
    assert_eq!(which(gw.call("/api/users", &[]).await).await, "api");
    assert_eq!(which(gw.call("/apix", &[]).await).await, "api");
    assert_eq!(gw.call("/ap", &[]).await.status(), 404);
    assert_eq!(gw.call("/API", &[]).await.status(), 404, "paths are case-sensitive");
}

#[tokio::test]
async fn a_regex_path_is_anchored_at_the_start_only() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "re", json!({"paths": [r"~/v\d+/items"]})).await;
    sync(&gw).await;
    assert_eq!(which(gw.call("/v1/items", &[]).await).await, "re");
    assert_eq!(which(gw.call("/v22/items/7/more", &[]).await).await, "re");
    assert_eq!(gw.call("/x/v1/items", &[]).await.status(), 404);
    assert_eq!(gw.call("/vX/items", &[]).await.status(), 404);
}

#[tokio::test]
async fn a_route_with_methods_only_matches_those_methods() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "writes", json!({"paths": ["/m"], "methods": ["POST", "PUT"]})).await;
    sync(&gw).await;
    let post = gw.http.post(gw.proxy_url("/m")).body("x").send().await.expect("post");
    assert_eq!(which(post).await, "writes");
    let put = gw.http.put(gw.proxy_url("/m")).body("x").send().await.expect("put");
    assert_eq!(which(put).await, "writes");
    assert_eq!(gw.call("/m", &[]).await.status(), 404);
}

#[tokio::test]
async fn a_route_with_headers_matches_their_values_case_insensitively() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "v1", json!({"paths": ["/h"], "headers": {"X-Version": ["V1", "v1.1"]}})).await;
    sync(&gw).await;
    assert_eq!(which(gw.call("/h", &[("x-version", "v1")]).await).await, "v1");
    assert_eq!(which(gw.call("/h", &[("X-VERSION", "V1.1")]).await).await, "v1");
    assert_eq!(gw.call("/h", &[("x-version", "v2")]).await.status(), 404);
    assert_eq!(gw.call("/h", &[]).await.status(), 404);
}

#[tokio::test]
async fn more_matching_attributes_beat_a_longer_prefix() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "long", json!({"paths": ["/api/long/path"]})).await;
    labelled(&gw, &up, "short", json!({"paths": ["/api"], "methods": ["GET"]})).await;
    sync(&gw).await;
    assert_eq!(which(gw.call("/api/long/path", &[]).await).await, "short");
    let post = gw.http.post(gw.proxy_url("/api/long/path")).send().await.expect("post");
    assert_eq!(which(post).await, "long");
}

#[tokio::test]
async fn a_plain_host_beats_a_wildcard_host() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "wild", json!({"hosts": ["*.example.com"]})).await;
    labelled(&gw, &up, "plain", json!({"hosts": ["a.example.com"]})).await;
    sync(&gw).await;
    assert_eq!(which(gw.call("/", &[("host", "a.example.com")]).await).await, "plain");
    assert_eq!(which(gw.call("/", &[("host", "z.example.com")]).await).await, "wild");
}

#[tokio::test]
async fn a_regex_path_beats_a_prefix_and_regex_priority_orders_regexes() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "prefix", json!({"paths": ["/users/123"]})).await;
    labelled(&gw, &up, "regexlow", json!({"paths": [r"~/users/\d+"]})).await;
    let high = labelled(&gw, &up, "regexhigh", json!({"paths": [r"~/users/1\d+"], "regex_priority": 10})).await;
    sync(&gw).await;
    assert_eq!(which(gw.call("/users/123", &[]).await).await, "regexhigh");
    assert_eq!(which(gw.call("/users/123/profile", &[]).await).await, "regexhigh");
    assert_eq!(which(gw.call("/users/923", &[]).await).await, "regexlow");
    assert_eq!(gw.call("/users/abc", &[]).await.status(), 404);
    // Lowering the priority below the other regex hands the request over.
    let id = high["id"].as_str().expect("id");
    assert_eq!(gw.patch(&format!("/routes/{id}"), json!({"regex_priority": -1})).await.0, 200);
    sync(&gw).await;
    assert_eq!(which(gw.call("/users/123", &[]).await).await, "regexlow");
}

#[tokio::test]
async fn the_longest_matching_prefix_wins() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "root", json!({"paths": ["/"]})).await;
    labelled(&gw, &up, "api", json!({"paths": ["/api"]})).await;
    labelled(&gw, &up, "apiv1", json!({"paths": ["/api/v1"]})).await;
    sync(&gw).await;
    assert_eq!(which(gw.call("/api/v1/users", &[]).await).await, "apiv1");
    assert_eq!(which(gw.call("/api/v2", &[]).await).await, "api");
    assert_eq!(which(gw.call("/other", &[]).await).await, "root");
}

#[tokio::test]
async fn a_request_no_route_matches_gets_kongs_404() {
    let (gw, up) = start().await;
    labelled(&gw, &up, "only", json!({"hosts": ["only.test"]})).await;
    sync(&gw).await;
    let r = gw.call("/anything?x=1", &[("host", "elsewhere.test")]).await;
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r, "server"), Some(format!("tollgate/{VERSION}").as_str()));
    assert!(header(&r, "content-type").is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(echo(r).await["message"], "no Route matched with those values");
    assert_eq!(up.hits(), 0);
}

// ---------------------------------------------------------------------------------------------
// Upstream path and Host
// ---------------------------------------------------------------------------------------------

/// The upstream path for `request` through a route on `/api` of a service with path `service_path`.
async fn upstream_path(gw: &Gateway, host: &str, request: &str) -> String {
    let r = gw.call(request, &[("host", host)]).await;
    assert_eq!(r.status(), 200, "{host} {request}");
    echo(r).await["path"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_route_with_strip_path_forwards_the_rest_of_the_path() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "root", "url": up.url("")})).await;
    gw.create("/services/root/routes", json!({"hosts": ["strip.test"], "paths": ["/api"], "strip_path": true})).await;
    sync(&gw).await;
    assert_eq!(upstream_path(&gw, "strip.test", "/api/foo").await, "/foo");
    assert_eq!(upstream_path(&gw, "strip.test", "/api").await, "/");
    assert_eq!(upstream_path(&gw, "strip.test", "/api/").await, "/");
    assert_eq!(upstream_path(&gw, "strip.test", "/api/foo/bar/").await, "/foo/bar/");
    assert_eq!(upstream_path(&gw, "strip.test", "/apifoo").await, "/foo", "prefixes are not segments");
}

#[tokio::test]
async fn a_regex_route_with_strip_path_strips_what_the_regex_matched() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "root", "url": up.url("/base")})).await;
    gw.create("/services/root/routes", json!({"paths": [r"~/v\d+/"], "strip_path": true})).await;
    sync(&gw).await;
    assert_eq!(upstream_path(&gw, "any.test", "/v12/items/7").await, "/base/items/7");
    assert_eq!(upstream_path(&gw, "any.test", "/v1/").await, "/base/");
}

#[tokio::test]
async fn a_route_without_strip_path_forwards_the_whole_path() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "root", "url": up.url("")})).await;
    gw.create("/services/root/routes", json!({"hosts": ["keep.test"], "paths": ["/api"], "strip_path": false})).await;
    sync(&gw).await;
    assert_eq!(upstream_path(&gw, "keep.test", "/api/foo").await, "/api/foo");
    assert_eq!(upstream_path(&gw, "keep.test", "/api").await, "/api");
}

#[tokio::test]
async fn the_service_path_is_joined_as_kongs_table_says() {
    let (gw, up) = start().await;
    for (name, path) in [("v1", "/v1"), ("v1slash", "/v1/")] {
        gw.create("/services", json!({"name": name, "url": up.url(path)})).await;
        for strip in [true, false] {
            let host = format!("{name}-{strip}.test");
            let route = json!({"hosts": [host], "paths": ["/api"], "strip_path": strip});
            gw.create(&format!("/services/{name}/routes"), route).await;
        }
    }
    sync(&gw).await;
    // spec §3.2, prefix `/api`
    let table = [
        ("v1-true.test", "/api/foo", "/v1/foo"),
        ("v1-true.test", "/api", "/v1"),
        ("v1-true.test", "/api/", "/v1/"),
        ("v1-true.test", "/apifoo", "/v1/foo"),
        ("v1slash-true.test", "/api", "/v1"),
        ("v1slash-true.test", "/api/", "/v1/"),
        ("v1slash-true.test", "/api/foo", "/v1/foo"),
        ("v1-false.test", "/api/foo", "/v1/api/foo"),
        ("v1slash-false.test", "/api/foo", "/v1/api/foo"),
    ];
    for (host, request, expected) in table {
        assert_eq!(upstream_path(&gw, host, request).await, expected, "{host} {request}");
    }
}

#[tokio::test]
async fn the_query_string_is_forwarded_unchanged() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "q", json!({"paths": ["/api"]})).await;
    sync(&gw).await;
    let r = gw.call("/api/search?q=two%20words&tag=a&tag=b&empty=", &[]).await;
    let body = echo(r).await;
    assert_eq!(body["path"], "/search");
    assert_eq!(body["query"], "q=two%20words&tag=a&tag=b&empty=");
}

#[tokio::test]
async fn the_upstream_gets_the_service_host_unless_the_route_preserves_the_clients() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "s", "url": up.url("")})).await;
    gw.create("/services/s/routes", json!({"hosts": ["plain.test"]})).await;
    gw.create("/services/s/routes", json!({"hosts": ["kept.test"], "preserve_host": true})).await;
    sync(&gw).await;
    let body = echo(gw.call("/", &[("host", "plain.test")]).await).await;
    assert_eq!(body["headers"]["host"], format!("127.0.0.1:{}", up.port()));
    let body = echo(gw.call("/", &[("host", "kept.test")]).await).await;
    assert_eq!(body["headers"]["host"], "kept.test");
    let body = echo(gw.call("/", &[("host", "kept.test:8080")]).await).await;
    assert_eq!(body["headers"]["host"], "kept.test:8080");
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_upstream_receives_forwarding_headers() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "fw", json!({"paths": ["/api"]})).await;
    sync(&gw).await;
    let r = gw.call("/api/things?x=1", &[("host", "Shop.Example.com:9999")]).await;
    let h = echo(r).await["headers"].clone();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["x-forwarded-port"], gw.proxy_port.to_string());
    assert_eq!(h["x-forwarded-path"], "/api/things");
    assert_eq!(h["x-forwarded-prefix"], "/api");
    assert_eq!(h["via"], format!("1.1 tollgate/{VERSION}"));
    // Without strip_path nothing was stripped, so there is no prefix to report.
    gw.create("/services/fw/routes", json!({"paths": ["/kept"], "strip_path": false})).await;
    sync(&gw).await;
    let h = echo(gw.call("/kept/x", &[]).await).await["headers"].clone();
    assert!(h.get("x-forwarded-prefix").is_none(), "{h}");
    assert_eq!(h["x-forwarded-path"], "/kept/x");
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_client_are_replaced_and_xff_is_appended_to() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "fw", json!({"paths": ["/"]})).await;
    sync(&gw).await;
    let r = gw
        .call(
            "/p",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.test"),
                ("x-forwarded-port", "443"),
                ("x-forwarded-path", "/evil"),
                ("x-forwarded-prefix", "/evil"),
                ("x-real-ip", "203.0.113.9"),
                ("via", "1.0 corp-proxy"),
            ],
        )
        .await;
    let h = echo(r).await["headers"].clone();
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "127.0.0.1");
    assert_eq!(h["x-forwarded-port"], gw.proxy_port.to_string());
    assert_eq!(h["x-forwarded-path"], "/p");
    assert!(h.get("x-forwarded-prefix").is_none(), "a `/` prefix is not sent: {h}");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["via"], format!("1.0 corp-proxy, 1.1 tollgate/{VERSION}"));
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_client_are_passed_on() {
    let upstream = Upstream::start().await;
    let opts = Options { extra: vec![("TOLLGATE_TRUSTED_IPS".into(), "127.0.0.1".into())], ..Options::default() };
    let gw = Gateway::start_with(opts).await;
    gw.service_and_route(&upstream, "fw", json!({"paths": ["/api"]})).await;
    sync(&gw).await;
    let r = gw
        .call(
            "/api/x",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "public.example.com"),
                ("x-forwarded-port", "443"),
                ("x-forwarded-path", "/public/api/x"),
                ("x-forwarded-prefix", "/public"),
            ],
        )
        .await;
    let h = echo(r).await["headers"].clone();
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "public.example.com");
    assert_eq!(h["x-forwarded-port"], "443");
    assert_eq!(h["x-forwarded-path"], "/public/api/x");
    assert_eq!(h["x-forwarded-prefix"], "/public");
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "hop", json!({"paths": ["/"]})).await;
    sync(&gw).await;
    let r = gw
        .call(
            "/",
            &[
                ("connection", "keep-alive, X-Private, X-Other"),
                ("x-private", "secret"),
                ("x-other", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("x-kept", "yes"),
            ],
        )
        .await;
    let h = echo(r).await["headers"].clone();
    for gone in ["x-private", "x-other", "keep-alive", "proxy-connection"] {
        assert!(h.get(gone).is_none(), "{gone} forwarded: {h}");
    }
    assert!(h.get("connection").is_none_or(|c| c.as_str().is_some_and(|c| !c.contains("X-Private"))), "{h}");
    assert_eq!(h["x-kept"], "yes");
}

#[tokio::test]
async fn proxied_responses_carry_latency_via_and_server_headers() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "lat", json!({"paths": ["/"]})).await;
    sync(&gw).await;
    let r = gw.call("/delay/50", &[]).await;
    assert_eq!(r.status(), 200);
    let upstream: u64 =
        header(&r, "x-tollgate-upstream-latency").and_then(|v| v.parse().ok()).expect("upstream latency");
    assert!(upstream >= 50, "upstream latency {upstream}");
    assert!(header(&r, "x-tollgate-proxy-latency").and_then(|v| v.parse::<u64>().ok()).is_some());
    assert_eq!(header(&r, "via"), Some(format!("1.1 tollgate/{VERSION}").as_str()));
    assert_eq!(header(&r, "server"), Some(format!("tollgate/{VERSION}").as_str()));
    assert!(header(&r, "x-tollgate-response-latency").is_none());
}

#[tokio::test]
async fn gateway_generated_responses_carry_server_and_response_latency() {
    let (gw, _up) = start().await;
    let r = gw.call("/nothing", &[]).await;
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r, "server"), Some(format!("tollgate/{VERSION}").as_str()));
    assert!(header(&r, "x-tollgate-response-latency").and_then(|v| v.parse::<u64>().ok()).is_some());
    assert!(header(&r, "x-tollgate-upstream-latency").is_none());
    assert!(header(&r, "via").is_none());
}

// ---------------------------------------------------------------------------------------------
// Gateway errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_route_without_a_service_answers_503() {
    let (gw, _up) = start().await;
    gw.create("/routes", json!({"paths": ["/orphan"]})).await;
    sync(&gw).await;
    let r = gw.call("/orphan", &[]).await;
    assert_eq!(header(&r, "server"), Some(format!("tollgate/{VERSION}").as_str()));
    assert_eq!(message(r).await, (503, "no Service found with those values".to_string()));
}

#[tokio::test]
async fn an_upstream_refusing_connections_answers_502() {
    let (gw, _up) = start().await;
    let closed = support::free_port();
    gw.create("/services", json!({"name": "down", "url": format!("http://127.0.0.1:{closed}")})).await;
    gw.create("/services/down/routes", json!({"paths": ["/down"]})).await;
    sync(&gw).await;
    let r = gw.call("/down", &[]).await;
    assert_eq!(header(&r, "server"), Some(format!("tollgate/{VERSION}").as_str()));
    assert_eq!(message(r).await, (502, "An invalid response was received from the upstream server".to_string()));
}

#[tokio::test]
async fn an_upstream_slower_than_the_read_timeout_answers_504() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "slow", "url": up.url(""), "read_timeout": 300, "retries": 0})).await;
    gw.create("/services/slow/routes", json!({"paths": ["/"]})).await;
    sync(&gw).await;
    let started = Instant::now();
    let r = gw.call("/delay/3000", &[]).await;
    let took = started.elapsed();
    assert_eq!(message(r).await, (504, "The upstream server is timing out".to_string()));
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(2500), "took {took:?}");
    // A fast request on the same service is fine.
    assert_eq!(gw.call("/delay/10", &[]).await.status(), 200);
}

#[tokio::test]
async fn an_unresolvable_upstream_host_answers_503_name_resolution_failed() {
    let (gw, _up) = start().await;
    gw.create("/services", json!({"name": "nx", "url": "http://no-such-host.invalid:8080/", "retries": 1})).await;
    gw.create("/services/nx/routes", json!({"paths": ["/nx"]})).await;
    sync(&gw).await;
    let r = gw.call("/nx", &[]).await;
    assert_eq!(message(r).await, (503, "name resolution failed".to_string()));
}

#[tokio::test]
async fn an_https_only_route_over_http_answers_426_or_redirects() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "tls", "url": up.url("")})).await;
    gw.create("/services/tls/routes", json!({"protocols": ["https"], "hosts": ["secure.test"]})).await;
    gw.create(
        "/services/tls/routes",
        json!({"protocols": ["https"], "hosts": ["moved.test"], "https_redirect_status_code": 301}),
    )
    .await;
    sync(&gw).await;
    let r = gw.call("/x", &[("host", "secure.test")]).await;
    assert_eq!(header(&r, "upgrade"), Some("TLS/1.2, HTTP/1.1"));
    assert_eq!(message(r).await, (426, "Please use HTTPS protocol".to_string()));
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let r = client.get(gw.proxy_url("/a/b?c=1")).header("host", "moved.test").send().await.expect("redirect");
    assert_eq!(r.status(), 301);
    assert_eq!(header(&r, "location"), Some("https://moved.test/a/b?c=1"));
    assert_eq!(up.hits(), 0);
}

/// A TCP "upstream" that accepts connections and closes them at once, counting them.
async fn closing_upstream() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, count)
}

#[tokio::test]
async fn a_failing_upstream_is_tried_retries_plus_one_times_then_answers_502() {
    let (gw, _up) = start().await;
    let (port, attempts) = closing_upstream().await;
    gw.create("/services", json!({"name": "flaky", "url": format!("http://127.0.0.1:{port}"), "retries": 3})).await;
    gw.create("/services/flaky/routes", json!({"paths": ["/flaky"]})).await;
    gw.create("/services", json!({"name": "once", "url": format!("http://127.0.0.1:{port}"), "retries": 0})).await;
    gw.create("/services/once/routes", json!({"paths": ["/once"]})).await;
    sync(&gw).await;
    let r = gw.call("/flaky", &[]).await;
    assert_eq!(message(r).await, (502, "An invalid response was received from the upstream server".to_string()));
    assert_eq!(attempts.load(Ordering::SeqCst), 4, "1 try + 3 retries");
    attempts.store(0, Ordering::SeqCst);
    let r = gw.call("/once", &[]).await;
    assert_eq!(r.status(), 502);
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "retries = 0 tries once");
}

#[tokio::test]
async fn a_post_that_may_have_reached_the_upstream_is_not_retried() {
    let (gw, _up) = start().await;
    let (port, attempts) = closing_upstream().await;
    gw.create("/services", json!({"name": "flaky", "url": format!("http://127.0.0.1:{port}"), "retries": 3})).await;
    gw.create("/services/flaky/routes", json!({"paths": ["/flaky"]})).await;
    sync(&gw).await;
    let r = gw.http.post(gw.proxy_url("/flaky")).body("order=1").send().await.expect("post");
    assert_eq!(r.status(), 502);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_idempotent_request_that_times_out_is_retried_before_the_504() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "slow", "url": up.url(""), "read_timeout": 200, "retries": 2})).await;
    gw.create("/services/slow/routes", json!({"paths": ["/"]})).await;
    sync(&gw).await;
    let before = up.hits();
    let started = Instant::now();
    let r = gw.call("/delay/1500", &[]).await;
    let took = started.elapsed();
    assert_eq!(message(r).await, (504, "The upstream server is timing out".to_string()));
    assert_eq!(up.hits() - before, 3, "1 try + 2 retries");
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    let before = up.hits();
    let r = gw.http.post(gw.proxy_url("/delay/1500")).body("x").send().await.expect("post");
    assert_eq!(r.status(), 504);
    assert_eq!(up.hits() - before, 1, "a POST is not retried after a timeout");
}

#[tokio::test]
async fn a_retry_reaches_an_upstream_that_comes_back() {
    let (gw, up) = start().await;
    // The first attempt is closed by the upstream; the retry reaches the real one.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let real = up.addr;
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            if first {
                first = false;
                drop(client);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(real).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    gw.create("/services", json!({"name": "back", "url": format!("http://127.0.0.1:{port}"), "retries": 2})).await;
    gw.create("/services/back/routes", json!({"paths": ["/back"]})).await;
    sync(&gw).await;
    let r = gw.call("/back/hello", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(echo(r).await["path"], "/hello");
    assert_eq!(up.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// Bodies and protocols
// ---------------------------------------------------------------------------------------------

/// Samples the gateway's VmRSS every 10 ms until dropped; `peak()` is the largest seen.
struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid, "VmRSS:")));
        let shared = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                shared.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        RssSampler { peak, task }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_streams_through_without_being_held_in_memory() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "files", json!({"paths": ["/"]})).await;
    sync(&gw).await;
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 100 * 1024 * 1024;
    let chunk = bytes::Bytes::from(vec![b'u'; CHUNK]);
    let stream = futures_util::stream::iter((0..TOTAL / CHUNK).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let baseline = rss_kib(gw.pid(), "VmRSS:");
    let sampler = RssSampler::start(gw.pid());
    let r =
        gw.http.post(gw.proxy_url("/upload")).body(reqwest::Body::wrap_stream(stream)).send().await.expect("upload");
    let status = r.status();
    let body = echo(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["received"], TOTAL, "the upstream received every byte");
    let peak = sampler.peak().max(rss_kib(gw.pid(), "VmHWM:"));
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown < 32 * 1024,
        "resident memory grew by {grown} KiB (from {baseline} to {peak} KiB) for a 100 MiB upload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_streams_back_intact() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "files", json!({"paths": ["/"]})).await;
    sync(&gw).await;
    const TOTAL: usize = 64 * 1024 * 1024;
    let baseline = rss_kib(gw.pid(), "VmRSS:");
    let sampler = RssSampler::start(gw.pid());
    let mut r = gw.call(&format!("/bytes/{TOTAL}"), &[]).await;
    assert_eq!(r.status(), 200);
    let mut received = 0usize;
    while let Some(chunk) = r.chunk().await.expect("chunk") {
        assert!(chunk.iter().all(|b| *b == b'x'), "corrupted chunk at {received}");
        received += chunk.len();
    }
    assert_eq!(received, TOTAL);
    let peak = sampler.peak().max(rss_kib(gw.pid(), "VmHWM:"));
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown < 32 * 1024,
        "resident memory grew by {grown} KiB (from {baseline} to {peak} KiB) for a 64 MiB download"
    );
}

#[tokio::test]
async fn http2_cleartext_with_prior_knowledge_is_proxied() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "h2", json!({"paths": ["/hello"], "strip_path": false})).await;
    sync(&gw).await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("h2 client");
    let r = h2
        .post(gw.proxy_url("/hello?x=1"))
        .header("x-test", "yes")
        .body("payload over h2")
        .send()
        .await
        .expect("h2 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "via"), Some(format!("1.1 tollgate/{VERSION}").as_str()));
    let body = echo(r).await;
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/hello");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["body"], "payload over h2");
    assert_eq!(body["version"], "HTTP/1.1");
    assert_eq!(body["headers"]["x-test"], "yes");
    assert_eq!(body["headers"]["via"], format!("2 tollgate/{VERSION}"));
    let r = h2.get(gw.proxy_url("/nowhere")).send().await.expect("h2 404");
    assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 404));
}

// ---------------------------------------------------------------------------------------------
// Malformed requests
// ---------------------------------------------------------------------------------------------

/// After abuse, a normal request through the same gateway still works.
async fn still_serving(gw: &Gateway) {
    let r = gw.call("/ok", &[]).await;
    assert_eq!(r.status(), 200, "the gateway stopped serving:\n{}", gw.logs());
}

#[tokio::test]
async fn garbage_on_the_proxy_port_answers_400_and_the_gateway_keeps_serving() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "s", json!({"paths": ["/ok"]})).await;
    sync(&gw).await;
    let answer = raw(&gw, b"THIS IS NOT HTTP AT ALL\r\n\r\n".to_vec()).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    let answer = raw(&gw, b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n".to_vec()).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    let answer = raw(&gw, vec![0u8, 159, 146, 150, 255, 13, 10, 13, 10]).await;
    assert!(answer.is_empty() || raw_status(&answer) == 400, "{answer}");
    still_serving(&gw).await;
}

#[tokio::test]
async fn an_enormous_request_line_is_refused_with_414() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "s", json!({"paths": ["/ok"]})).await;
    sync(&gw).await;
    let long = "a".repeat(100 * 1024);
    let answer = raw(&gw, format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()).await;
    assert!(matches!(raw_status(&answer), 414 | 400), "{answer}");
    assert_eq!(up.hits(), 0);
    still_serving(&gw).await;
}

#[tokio::test]
async fn huge_request_headers_are_refused_with_431() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "s", json!({"paths": ["/ok"]})).await;
    sync(&gw).await;
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        request.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(8 * 1024)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let answer = raw(&gw, request).await;
    assert_eq!(raw_status(&answer), 431, "{answer}");
    // Too many headers, each small.
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..500 {
        request.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let answer = raw(&gw, request).await;
    assert_eq!(raw_status(&answer), 431, "{answer}");
    assert_eq!(up.hits(), 0);
    still_serving(&gw).await;
}

// ---------------------------------------------------------------------------------------------
// key-auth
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn key_auth_accepts_the_key_in_a_header_and_sends_consumer_headers_upstream() {
    let (gw, up) = start().await;
    let (_, ann, cred) = key_auth_route(&gw, &up, json!({})).await;
    let r = gw.call("/auth/x", &[("apikey", "secret")]).await;
    assert_eq!(r.status(), 200);
    let h = echo(r).await["headers"].clone();
    assert_eq!(h["x-consumer-id"], ann["id"]);
    assert_eq!(h["x-consumer-username"], "ann");
    assert_eq!(h["x-credential-identifier"], cred["id"]);
    assert!(h.get("x-consumer-custom-id").is_none(), "custom_id is null: {h}");
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
    assert_eq!(h["apikey"], "secret", "hide_credentials is off");
}

#[tokio::test]
async fn key_auth_sends_the_custom_id_when_the_consumer_has_one() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({})).await;
    gw.create("/consumers", json!({"username": "bob", "custom_id": "ext-7"})).await;
    gw.create("/consumers/bob/key-auth", json!({"key": "bobkey"})).await;
    sync(&gw).await;
    let h = echo(gw.call("/auth", &[("apikey", "bobkey")]).await).await["headers"].clone();
    assert_eq!(h["x-consumer-custom-id"], "ext-7");
    assert_eq!(h["x-consumer-username"], "bob");
    // A consumer with only a custom_id sends no username.
    let nameless = gw.create("/consumers", json!({"custom_id": "ext-8"})).await;
    let id = nameless["id"].as_str().expect("id");
    gw.create(&format!("/consumers/{id}/key-auth"), json!({"key": "nokey-name"})).await;
    sync(&gw).await;
    let h =
        echo(gw.call("/auth", &[("apikey", "nokey-name"), ("x-consumer-username", "forged")]).await).await["headers"]
            .clone();
    assert_eq!(h["x-consumer-id"], id);
    assert_eq!(h["x-consumer-custom-id"], "ext-8");
    assert!(h.get("x-consumer-username").is_none(), "{h}");
}

#[tokio::test]
async fn key_auth_overwrites_consumer_headers_the_client_sent() {
    let (gw, up) = start().await;
    let (_, ann, cred) = key_auth_route(&gw, &up, json!({})).await;
    let r = gw
        .call(
            "/auth",
            &[
                ("apikey", "secret"),
                ("x-consumer-id", "forged"),
                ("x-consumer-username", "admin"),
                ("x-consumer-custom-id", "forged"),
                ("x-credential-identifier", "forged"),
                ("x-anonymous-consumer", "true"),
            ],
        )
        .await;
    let h = echo(r).await["headers"].clone();
    assert_eq!(h["x-consumer-id"], ann["id"]);
    assert_eq!(h["x-consumer-username"], "ann");
    assert_eq!(h["x-credential-identifier"], cred["id"]);
    assert!(h.get("x-consumer-custom-id").is_none(), "{h}");
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
}

#[tokio::test]
async fn key_auth_accepts_the_key_in_the_query_string() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({})).await;
    let r = gw.call("/auth?apikey=secret&x=1", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(echo(r).await["query"], "apikey=secret&x=1");
    let off = json!({"key_in_query": false});
    let id = gw.get("/routes/auth/plugins").await.1["data"][0]["id"].as_str().expect("plugin").to_string();
    assert_eq!(gw.patch(&format!("/plugins/{id}"), json!({"config": off})).await.0, 200);
    sync(&gw).await;
    let (status, msg) = message(gw.call("/auth?apikey=secret", &[]).await).await;
    assert_eq!((status, msg.as_str()), (401, "No API key found in request"));
}

#[tokio::test]
async fn key_auth_accepts_the_key_in_a_json_or_form_body_when_key_in_body_is_set() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({"key_in_body": true})).await;
    let r = gw
        .http
        .post(gw.proxy_url("/auth"))
        .header("content-type", "application/json")
        .body(r#"{"apikey":"secret","n":1}"#)
        .send()
        .await
        .expect("json");
    assert_eq!(r.status(), 200);
    let body = echo(r).await;
    assert_eq!(body["headers"]["x-consumer-username"], "ann");
    assert_eq!(
        serde_json::from_str::<Value>(body["body"].as_str().expect("body")).expect("json"),
        json!({"apikey": "secret", "n": 1})
    );
    let r = gw.http.post(gw.proxy_url("/auth")).form(&[("a", "1"), ("apikey", "secret")]).send().await.expect("form");
    assert_eq!(r.status(), 200);
    assert_eq!(echo(r).await["body"], "a=1&apikey=secret");
    let r = gw.http.post(gw.proxy_url("/auth")).form(&[("apikey", "wrong")]).send().await.expect("form");
    assert_eq!(message(r).await, (401, "Unauthorized".to_string()));
}

#[tokio::test]
async fn key_auth_reads_a_multipart_body_and_hides_the_key_keeping_the_rest() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({"key_in_body": true, "hide_credentials": true})).await;
    let body = "--b0und\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b0und\r\nContent-Disposition: form-data; name=\"apikey\"\r\n\r\nsecret\r\n--b0und--\r\n";
    let r = gw
        .http
        .post(gw.proxy_url("/auth?x=%2F1&apikey=secret&y"))
        .header("content-type", "multipart/form-data; boundary=b0und")
        .body(body)
        .send()
        .await
        .expect("multipart");
    assert_eq!(r.status(), 200);
    let echoed = echo(r).await;
    assert_eq!(echoed["headers"]["x-consumer-username"], "ann");
    assert_eq!(echoed["body"], "--b0und\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b0und--\r\n");
    // The query keeps every other parameter's order and encoding byte for byte.
    assert!(echoed["uri"].as_str().is_some_and(|u| u.ends_with("?x=%2F1&y")), "{echoed}");
}

#[tokio::test]
async fn key_auth_ignores_a_body_key_unless_key_in_body_is_set() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({})).await;
    let r = gw.http.post(gw.proxy_url("/auth")).form(&[("apikey", "secret")]).send().await.expect("form");
    assert_eq!(message(r).await, (401, "No API key found in request".to_string()));
}

#[tokio::test]
async fn key_auth_tries_every_key_name() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({"key_names": ["apikey", "x-api-key", "token"]})).await;
    assert_eq!(gw.call("/auth", &[("x-api-key", "secret")]).await.status(), 200);
    assert_eq!(gw.call("/auth?token=secret", &[]).await.status(), 200);
    assert_eq!(gw.call("/auth", &[("apikey", "secret")]).await.status(), 200);
    assert_eq!(gw.call("/auth", &[("api-key", "secret")]).await.status(), 401);
}

#[tokio::test]
async fn key_auth_header_names_treat_underscore_and_dash_alike() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "s", "url": up.url("")})).await;
    gw.create("/services/s/routes", json!({"name": "under", "paths": ["/under"]})).await;
    gw.create("/services/s/routes", json!({"name": "dash", "paths": ["/dash"]})).await;
    gw.create("/routes/under/plugins", json!({"name": "key-auth", "config": {"key_names": ["api_key"]}})).await;
    gw.create("/routes/dash/plugins", json!({"name": "key-auth", "config": {"key_names": ["api-key"]}})).await;
    gw.create("/consumers", json!({"username": "ann"})).await;
    gw.create("/consumers/ann/key-auth", json!({"key": "secret"})).await;
    sync(&gw).await;
    for path in ["/under", "/dash"] {
        for name in ["api_key", "api-key", "API-Key", "Api_Key"] {
            let r = gw.call(path, &[(name, "secret")]).await;
            assert_eq!(r.status(), 200, "{path} with header {name}");
        }
    }
    // The query string is exact.
    assert_eq!(gw.call("/under?api_key=secret", &[]).await.status(), 200);
    assert_eq!(gw.call("/under?api-key=secret", &[]).await.status(), 401);
}

#[tokio::test]
async fn key_auth_with_hide_credentials_removes_the_key_everywhere_upstream() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({"hide_credentials": true, "key_in_body": true})).await;
    let body = echo(gw.call("/auth/p", &[("apikey", "secret"), ("x-other", "1")]).await).await;
    assert!(body["headers"].get("apikey").is_none(), "{body}");
    assert_eq!(body["headers"]["x-other"], "1");
    assert_eq!(body["headers"]["x-consumer-username"], "ann");
    let body = echo(gw.call("/auth/p?a=1&apikey=secret&b=2", &[]).await).await;
    assert_eq!(body["query"], "a=1&b=2");
    let body = echo(gw.call("/auth/p?apikey=secret", &[]).await).await;
    assert!(body["query"].is_null() || body["query"] == "", "{body}");
    let r = gw
        .http
        .post(gw.proxy_url("/auth/p"))
        .header("content-type", "application/json")
        .body(r#"{"apikey":"secret","keep":true}"#)
        .send()
        .await
        .expect("json");
    let body = echo(r).await;
    assert_eq!(
        serde_json::from_str::<Value>(body["body"].as_str().expect("body")).expect("json"),
        json!({"keep": true})
    );
    assert_eq!(body["headers"]["content-length"], r#"{"keep":true}"#.len().to_string());
    let r = gw.http.post(gw.proxy_url("/auth/p")).form(&[("a", "1"), ("apikey", "secret")]).send().await.expect("form");
    assert_eq!(echo(r).await["body"], "a=1");
}

#[tokio::test]
async fn key_auth_refusals_use_kongs_messages() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({})).await;
    let r = gw.call("/auth", &[]).await;
    assert_eq!(header(&r, "www-authenticate"), Some("Key"));
    assert_eq!(header(&r, "server"), Some(format!("tollgate/{VERSION}").as_str()));
    assert_eq!(message(r).await, (401, "No API key found in request".to_string()));
    let r = gw.call("/auth", &[("apikey", "")]).await;
    assert_eq!(message(r).await, (401, "No API key found in request".to_string()));
    let r = gw.call("/auth", &[("apikey", "wrong")]).await;
    assert_eq!(header(&r, "www-authenticate"), Some("Key"));
    assert_eq!(message(r).await, (401, "Unauthorized".to_string()));
    let r = gw.call("/auth?apikey=secret&apikey=other", &[]).await;
    assert_eq!(header(&r, "www-authenticate"), Some("Key"));
    assert_eq!(message(r).await, (401, "Duplicate API key found".to_string()));
    let r = gw.http.get(gw.proxy_url("/auth")).header("apikey", "secret").header("apikey", "secret").send().await;
    assert_eq!(message(r.expect("dup")).await, (401, "Duplicate API key found".to_string()));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn key_auth_realm_is_named_in_www_authenticate() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({"realm": "shop"})).await;
    for headers in [&[][..], &[("apikey", "wrong")][..]] {
        let r = gw.call("/auth", headers).await;
        assert_eq!(r.status(), 401);
        assert_eq!(header(&r, "www-authenticate"), Some(r#"Key realm="shop""#));
    }
}

#[tokio::test]
async fn key_auth_with_an_anonymous_consumer_lets_unauthenticated_requests_through_as_it() {
    let (gw, up) = start().await;
    let guest = gw.create("/consumers", json!({"username": "guest"})).await;
    let (_, ann, _) = key_auth_route(&gw, &up, json!({"anonymous": guest["id"]})).await;
    for headers in [&[][..], &[("apikey", "wrong")][..]] {
        let r = gw.call("/auth", headers).await;
        assert_eq!(r.status(), 200);
        let h = echo(r).await["headers"].clone();
        assert_eq!(h["x-anonymous-consumer"], "true");
        assert_eq!(h["x-consumer-id"], guest["id"]);
        assert_eq!(h["x-consumer-username"], "guest");
        assert!(h.get("x-credential-identifier").is_none(), "{h}");
    }
    let h = echo(gw.call("/auth", &[("apikey", "secret"), ("x-anonymous-consumer", "true")]).await).await["headers"]
        .clone();
    assert_eq!(h["x-consumer-id"], ann["id"]);
    assert!(h.get("x-anonymous-consumer").is_none(), "{h}");
}

#[tokio::test]
async fn key_auth_with_an_anonymous_consumer_given_by_username_works_too() {
    let (gw, up) = start().await;
    gw.create("/consumers", json!({"username": "guest"})).await;
    key_auth_route(&gw, &up, json!({"anonymous": "guest"})).await;
    let h = echo(gw.call("/auth", &[]).await).await["headers"].clone();
    assert_eq!(h["x-consumer-username"], "guest");
    assert_eq!(h["x-anonymous-consumer"], "true");
}

#[tokio::test]
async fn key_auth_with_a_missing_anonymous_consumer_answers_500() {
    let (gw, up) = start().await;
    let missing = uuid::Uuid::new_v4().to_string();
    key_auth_route(&gw, &up, json!({"anonymous": missing})).await;
    let r = gw.call("/auth", &[]).await;
    assert_eq!(message(r).await, (500, format!("anonymous consumer {missing} is configured but doesn't exist")));
    assert_eq!(gw.call("/auth", &[("apikey", "secret")]).await.status(), 200);
    // Creating that consumer later fixes it.
    gw.create("/consumers", json!({"id": missing, "username": "late"})).await;
    let r = gw.eventually("/auth", &[], Duration::from_secs(5), |r| r.status() == 200).await;
    assert_eq!(echo(r).await["headers"]["x-consumer-username"], "late");
}

#[tokio::test]
async fn key_auth_lets_preflight_through_when_run_on_preflight_is_off() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({})).await;
    gw.create("/services/authsvc/routes", json!({"name": "cors", "paths": ["/cors"]})).await;
    gw.create("/routes/cors/plugins", json!({"name": "key-auth", "config": {"run_on_preflight": false}})).await;
    sync(&gw).await;
    let options = |path: &str| gw.http.request(reqwest::Method::OPTIONS, gw.proxy_url(path)).send();
    assert_eq!(options("/auth").await.expect("options").status(), 401, "run_on_preflight defaults to true");
    let r = options("/cors").await.expect("options");
    assert_eq!(r.status(), 200);
    let body = echo(r).await;
    assert_eq!(body["method"], "OPTIONS");
    assert!(body["headers"].get("x-consumer-id").is_none());
    assert_eq!(gw.call("/cors", &[]).await.status(), 401, "other methods still need a key");
}

#[tokio::test]
async fn a_route_scoped_key_auth_beats_a_global_one() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "s", "url": up.url("")})).await;
    gw.create("/services/s/routes", json!({"name": "special", "paths": ["/special"]})).await;
    gw.create("/services/s/routes", json!({"name": "plain", "paths": ["/plain"]})).await;
    gw.create("/plugins", json!({"name": "key-auth", "config": {"realm": "global"}})).await;
    gw.create(
        "/routes/special/plugins",
        json!({"name": "key-auth", "config": {"realm": "route", "key_names": ["token"]}}),
    )
    .await;
    gw.create("/consumers", json!({"username": "ann"})).await;
    gw.create("/consumers/ann/key-auth", json!({"key": "secret"})).await;
    sync(&gw).await;
    let r = gw.call("/special", &[]).await;
    assert_eq!(header(&r, "www-authenticate"), Some(r#"Key realm="route""#));
    assert_eq!(gw.call("/special", &[("apikey", "secret")]).await.status(), 401, "the global config does not run");
    assert_eq!(gw.call("/special", &[("token", "secret")]).await.status(), 200);
    let r = gw.call("/plain", &[]).await;
    assert_eq!(header(&r, "www-authenticate"), Some(r#"Key realm="global""#));
    assert_eq!(gw.call("/plain", &[("apikey", "secret")]).await.status(), 200);
}

#[tokio::test]
async fn a_disabled_plugin_does_not_run() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "s", json!({"name": "r", "paths": ["/"]})).await;
    let plugin = gw.create("/routes/r/plugins", json!({"name": "key-auth", "enabled": false})).await;
    sync(&gw).await;
    assert_eq!(gw.call("/open", &[]).await.status(), 200);
    let id = plugin["id"].as_str().expect("id");
    assert_eq!(gw.patch(&format!("/plugins/{id}"), json!({"enabled": true})).await.0, 200);
    let r = gw.eventually("/open", &[], Duration::from_secs(5), |r| r.status() == 401).await;
    assert_eq!(r.status(), 401);
    assert_eq!(gw.patch(&format!("/plugins/{id}"), json!({"enabled": false})).await.0, 200);
    let r = gw.eventually("/open", &[], Duration::from_secs(5), |r| r.status() == 200).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_disabled_route_plugin_does_not_hide_an_enabled_global_one() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "s", json!({"name": "r", "paths": ["/"]})).await;
    gw.create("/plugins", json!({"name": "key-auth", "config": {"realm": "global"}})).await;
    gw.create("/routes/r/plugins", json!({"name": "key-auth", "enabled": false, "config": {"realm": "route"}})).await;
    sync(&gw).await;
    let r = gw.call("/x", &[]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "www-authenticate"), Some(r#"Key realm="global""#));
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({})).await;
    gw.create("/consumers/ann/key-auth", json!({"key": "shortlived", "ttl": 2})).await;
    sync(&gw).await;
    assert_eq!(gw.call("/auth", &[("apikey", "shortlived")]).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = gw.call("/auth", &[("apikey", "shortlived")]).await;
    assert_eq!(message(r).await, (401, "Unauthorized".to_string()));
    assert_eq!(gw.call("/auth", &[("apikey", "secret")]).await.status(), 200);
}

// ---------------------------------------------------------------------------------------------
// Live changes
// ---------------------------------------------------------------------------------------------

/// How soon a change answered by the Admin API must be live on the proxy. The answer waits for the
/// proxy, so the first probe normally sees it; the bound leaves room for a loaded 2-core machine
/// pausing the test, and stays under the 1 s version check that would otherwise bring the change.
const LIVE_WITHIN: Duration = Duration::from_millis(500);

/// Polls until `ok` holds and returns how long it took after `since` (fails after 2 s).
async fn live_within<F>(gw: &Gateway, path: &str, headers: &[(&str, &str)], since: Instant, ok: F) -> Duration
where
    F: Fn(&reqwest::Response) -> bool,
{
    let deadline = since + Duration::from_secs(2);
    loop {
        // The change was live when the first probe that sees it was sent (its own round trip, slow
        // on a loaded machine, is not part of the propagation).
        let sent = Instant::now();
        let r = gw.call(path, headers).await;
        if ok(&r) {
            return sent.duration_since(since);
        }
        assert!(Instant::now() < deadline, "change not live after 2 s (last status {})", r.status());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn a_new_route_is_live_on_the_proxy_within_half_a_second() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "s", "url": up.url("")})).await;
    sync(&gw).await;
    for i in 0..3 {
        let path = format!("/fresh{i}");
        gw.create("/services/s/routes", json!({"paths": [path]})).await;
        let created = Instant::now();
        let took = live_within(&gw, &path, &[], created, |r| r.status() == 200).await;
        assert!(took < LIVE_WITHIN, "route {i} took {took:?}");
    }
}

#[tokio::test]
async fn a_new_consumer_and_key_are_live_and_a_deleted_key_stops_within_half_a_second() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "s", json!({"name": "r", "paths": ["/"]})).await;
    gw.create("/routes/r/plugins", json!({"name": "key-auth"})).await;
    sync(&gw).await;
    assert_eq!(gw.call("/", &[("apikey", "fresh")]).await.status(), 401);

    gw.create("/consumers", json!({"username": "newcomer"})).await;
    gw.create("/consumers/newcomer/key-auth", json!({"key": "fresh"})).await;
    let created = Instant::now();
    let took = live_within(&gw, "/", &[("apikey", "fresh")], created, |r| r.status() == 200).await;
    assert!(took < LIVE_WITHIN, "new key took {took:?}");

    assert_eq!(gw.delete("/consumers/newcomer/key-auth/fresh").await, 204);
    let deleted = Instant::now();
    let took = live_within(&gw, "/", &[("apikey", "fresh")], deleted, |r| r.status() == 401).await;
    assert!(took < LIVE_WITHIN, "deleted key still worked after {took:?}");
}

#[tokio::test]
async fn a_deleted_consumer_takes_its_keys_with_it() {
    let (gw, up) = start().await;
    key_auth_route(&gw, &up, json!({})).await;
    assert_eq!(gw.call("/auth", &[("apikey", "secret")]).await.status(), 200);
    assert_eq!(gw.delete("/consumers/ann").await, 204);
    let deleted = Instant::now();
    let took = live_within(&gw, "/auth", &[("apikey", "secret")], deleted, |r| r.status() == 401).await;
    assert!(took < LIVE_WITHIN, "deleted consumer still authenticated after {took:?}");
}

#[tokio::test]
async fn a_write_is_answered_only_once_this_nodes_proxy_serves_it() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "ryw", "url": up.url("")})).await;
    gw.create("/services/ryw/routes", json!({"paths": ["/ryw"]})).await;
    assert_eq!(gw.call("/ryw", &[]).await.status(), 200, "the route works on the first call");
    gw.create("/services/ryw/plugins", json!({"name": "key-auth"})).await;
    assert_eq!(gw.call("/ryw", &[]).await.status(), 401, "the plugin works on the first call");
    for i in 0..20 {
        gw.create("/consumers", json!({"username": format!("ryw-{i}")})).await;
        let key = format!("ryw-key-{i}");
        gw.create(&format!("/consumers/ryw-{i}/key-auth"), json!({"key": key})).await;
        assert_eq!(gw.call("/ryw", &[("apikey", &key)]).await.status(), 200, "key {i} works on the first call");
        assert_eq!(gw.delete(&format!("/key-auths/{key}")).await, 204);
        assert_eq!(gw.call("/ryw", &[("apikey", &key)]).await.status(), 401, "key {i} is refused on the first call");
    }
}

/// A TCP upstream that accepts connections and then does what `behave` says with each socket.
async fn raw_upstream<F, Fut>(behave: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(behave(socket));
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_reading_an_upload_answers_504_after_the_write_timeout() {
    // Reads nothing: once the socket buffers are full, every write from the gateway waits.
    let addr = raw_upstream(|socket| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(socket);
    })
    .await;
    let gw = Gateway::start().await;
    let url = format!("http://{addr}");
    gw.create("/services", json!({"name": "stuck", "url": url, "write_timeout": 500, "retries": 0})).await;
    gw.create("/services/stuck/routes", json!({"paths": ["/stuck"]})).await;
    let started = Instant::now();
    let body = vec![b'x'; 64 * 1024 * 1024];
    let r = gw.http.post(gw.proxy_url("/stuck")).body(body).send().await;
    let took = started.elapsed();
    match r {
        Ok(r) => assert_eq!(message(r).await, (504, "The upstream server is timing out".to_string())),
        // The gateway may answer before the client finished sending, which closes the exchange.
        Err(e) => assert!(took < Duration::from_secs(10), "no answer, and {e} after {took:?}"),
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_that_stalls_longer_than_the_read_timeout_is_cut_off() {
    // Sends the head and ten of the hundred promised bytes, then nothing.
    let addr = raw_upstream(|mut socket| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf).await;
        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let gw = Gateway::start().await;
    gw.create(
        "/services",
        json!({"name": "stall", "url": format!("http://{addr}"), "read_timeout": 500, "retries": 0}),
    )
    .await;
    gw.create("/services/stall/routes", json!({"paths": ["/stall"]})).await;
    let started = Instant::now();
    let r = gw.call("/stall", &[]).await;
    assert_eq!(r.status(), 200, "the head arrived in time");
    let body = r.bytes().await;
    let took = started.elapsed();
    assert!(body.is_err(), "the body was cut short");
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn an_https_service_is_reached_over_tls_without_checking_its_certificate_by_default() {
    let up = Upstream::start_tls().await;
    let gw = Gateway::start().await;
    let service = gw.create("/services", json!({"name": "tls", "url": up.url("/base")})).await;
    assert_eq!((service["protocol"].as_str(), service["port"].as_u64()), (Some("https"), Some(u64::from(up.port()))));
    gw.create("/services/tls/routes", json!({"paths": ["/secure"]})).await;
    let r = gw.call("/secure/x", &[]).await;
    assert_eq!(r.status(), 200);
    let echoed = echo(r).await;
    assert_eq!(echoed["path"], "/base/x");
    assert_eq!(echoed["headers"]["host"], format!("127.0.0.1:{}", up.port()));
    // Kept alive: a second call reuses the TLS connection.
    assert_eq!(gw.call("/secure/y", &[]).await.status(), 200);
}

#[tokio::test]
async fn an_https_service_with_tls_verify_refuses_an_untrusted_certificate_with_502() {
    let up = Upstream::start_tls().await;
    let gw = Gateway::start().await;
    gw.create("/services", json!({"name": "strict", "url": up.url(""), "tls_verify": true, "retries": 0})).await;
    gw.create("/services/strict/routes", json!({"paths": ["/strict"]})).await;
    let r = gw.call("/strict", &[]).await;
    assert_eq!(message(r).await, (502, "An invalid response was received from the upstream server".to_string()));
}

#[tokio::test]
async fn sequential_requests_reuse_one_keep_alive_connection_to_the_upstream() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "pool", "url": up.url("")})).await;
    gw.create("/services/pool/routes", json!({"paths": ["/pool"]})).await;
    let mut peers = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = gw.call("/pool", &[]).await;
        assert_eq!(r.status(), 200);
        peers.insert(echo(r).await["peer"].as_str().unwrap_or_default().to_string());
    }
    // Workers each keep their own pool, so at most one connection per worker.
    assert!(peers.len() <= 2, "{peers:?}");
}

// ---------------------------------------------------------------------------------------------
// The upstream client: framing and keep-alive against scripted upstreams
// ---------------------------------------------------------------------------------------------

/// What a scripted upstream does with one request: write these pieces (pausing between them so they
/// arrive in separate reads), then keep the connection open or close it. No pieces: close at once.
struct Answer {
    pieces: Vec<Vec<u8>>,
    close: bool,
}

impl Answer {
    fn keep(pieces: &[&[u8]]) -> Answer {
        Answer { pieces: pieces.iter().map(|p| p.to_vec()).collect(), close: false }
    }

    fn close(pieces: &[&[u8]]) -> Answer {
        Answer { pieces: pieces.iter().map(|p| p.to_vec()).collect(), close: true }
    }
}

/// Reads one request (head, and a Content-Length or chunked body) from `socket`; returns its head,
/// or `None` when the connection closed first.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    buf.drain(..head_end);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let complete = if chunked { buf.windows(5).any(|w| w == b"0\r\n\r\n") } else { buf.len() >= length };
        if complete {
            break;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    match buf.windows(5).position(|w| w == b"0\r\n\r\n") {
        Some(end) if chunked => drop(buf.drain(..end + 5)),
        _ => drop(buf.drain(..length.min(buf.len()))),
    }
    Some(head)
}

/// A raw HTTP/1.1 upstream that answers each request with what `answer` says for (connection number,
/// request number on that connection, request head), both from 0. Counts connections.
async fn scripted_upstream<F>(answer: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, usize, &str) -> Answer + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let conn = counter.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for request in 0.. {
                    let Some(head) = read_request(&mut socket, &mut buf).await else { return };
                    let Answer { pieces, close } = answer(conn, request, &head);
                    for (i, piece) in pieces.iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if socket.write_all(piece).await.is_err() {
                            return;
                        }
                    }
                    if close || pieces.is_empty() {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// A gateway with a route `/s` to `addr` (no retries: the client's own recovery is under test) and a
/// keep-alive client, so that successive requests reach the same worker and its pool.
async fn gateway_to(addr: std::net::SocketAddr) -> (Gateway, reqwest::Client) {
    let gw = Gateway::start().await;
    gw.create("/services", json!({"name": "scripted", "url": format!("http://{addr}"), "retries": 0})).await;
    gw.create("/services/scripted/routes", json!({"paths": ["/s"]})).await;
    sync(&gw).await;
    (gw, reqwest::Client::new())
}

async fn get_text(client: &reqwest::Client, gw: &Gateway) -> (u16, String) {
    let r = client.get(gw.proxy_url("/s")).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

#[tokio::test]
async fn a_chunked_upstream_response_is_decoded_and_its_connection_reused() {
    let (addr, connections) = scripted_upstream(|_, _, _| {
        Answer::keep(&[
            b"HTTP/1.1 200 OK\r\nTransfer-Enc",
            b"oding: chunked\r\nContent-Type: text/plain\r\n\r\n5;ext=\"1\"\r\nhel",
            b"lo\r\n7\r\n, world\r\n",
            b"0\r\nx-trailer: t\r\n\r\n",
        ])
    })
    .await;
    let (gw, client) = gateway_to(addr).await;
    for _ in 0..3 {
        let r = client.get(gw.proxy_url("/s")).send().await.expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), Some("text/plain"));
        assert!(header(&r, "content-length").is_none());
        assert_eq!(r.text().await.expect("body"), "hello, world");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one kept-alive upstream connection");
}

#[tokio::test]
async fn a_close_delimited_upstream_response_is_read_to_the_end() {
    let (addr, connections) = scripted_upstream(|_, request, _| match request {
        0 => Answer::close(&[b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ", b"part two"]),
        _ => Answer::close(&[b"HTTP/1.0 200 OK\r\n\r\nold ", b"style"]),
    })
    .await;
    let (gw, client) = gateway_to(addr).await;
    assert_eq!(get_text(&client, &gw).await, (200, "part one, part two".to_string()));
    assert_eq!(get_text(&client, &gw).await, (200, "part one, part two".to_string()));
    assert_eq!(connections.load(Ordering::SeqCst), 2, "such a connection is never reused");
}

#[tokio::test]
async fn an_upstream_that_closes_an_idle_keep_alive_connection_does_not_fail_the_next_request() {
    let (addr, connections) =
        scripted_upstream(|_, _, _| Answer::keep(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])).await;
    // The upstream's idle timeout: 100 ms, then it closes.
    let idle_closing = raw_upstream(move |mut client| async move {
        let Ok(mut server) = TcpStream::connect(addr).await else { return };
        let mut buf = [0u8; 8192];
        loop {
            let read = tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            if n == 0 || server.write_all(&buf[..n]).await.is_err() {
                return;
            }
            let Ok(n) = server.read(&mut buf).await else { return };
            if client.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    })
    .await;
    let (gw, client) = gateway_to(idle_closing).await;
    assert_eq!(get_text(&client, &gw).await, (200, "ok".to_string()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_text(&client, &gw).await, (200, "ok".to_string()));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_pooled_connection_closed_as_the_request_arrives_is_replaced_by_a_fresh_one() {
    // Each connection answers its first request and closes on the second without answering: what a
    // request meets when the upstream's idle timeout strikes while it is on its way.
    let (addr, connections) = scripted_upstream(|_, request, _| match request {
        0 => Answer::keep(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]),
        _ => Answer::close(&[]),
    })
    .await;
    let (gw, client) = gateway_to(addr).await;
    for i in 0..3 {
        assert_eq!(get_text(&client, &gw).await, (200, "ok".to_string()), "request {i}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn head_and_204_responses_have_no_body_and_keep_the_connection() {
    let (addr, connections) = scripted_upstream(|_, _, head| {
        if head.starts_with("head ") {
            Answer::keep(&[b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"])
        } else if head.starts_with("delete ") {
            Answer::keep(&[b"HTTP/1.1 204 No Content\r\nX-Deleted: yes\r\n\r\n"])
        } else {
            Answer::keep(&[b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"])
        }
    })
    .await;
    let (gw, client) = gateway_to(addr).await;
    let r = client.head(gw.proxy_url("/s")).send().await.expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some("1234"));
    assert_eq!(r.bytes().await.expect("body").len(), 0);
    let r = client.delete(gw.proxy_url("/s")).send().await.expect("delete");
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "x-deleted"), Some("yes"));
    assert_eq!(r.bytes().await.expect("body").len(), 0);
    assert_eq!(get_text(&client, &gw).await, (200, "body".to_string()));
    assert_eq!(connections.load(Ordering::SeqCst), 1, "no body was waited for: the connection was reused");
}

#[tokio::test]
async fn an_invalid_upstream_response_answers_502() {
    // Each answer closes its connection: connection `n` carries request `n`.
    let (addr, _) = scripted_upstream(|conn, _, _| match conn % 3 {
        0 => Answer::close(&[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"]),
        1 => Answer::close(&[b"not http at all\r\n\r\n"]),
        _ => Answer::close(&[b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"]),
    })
    .await;
    let (gw, _) = gateway_to(addr).await;
    for _ in 0..3 {
        let r = gw.call("/s", &[]).await;
        assert_eq!(message(r).await, (502, "An invalid response was received from the upstream server".to_string()));
    }
}

#[tokio::test]
async fn request_bodies_are_framed_as_the_client_sent_them_unless_buffered_whole() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "framing", json!({"paths": ["/"]})).await;
    let unbuffered = json!({"paths": ["/streamed"], "strip_path": false, "request_buffering": false});
    gw.create("/services/framing/routes", unbuffered).await;
    sync(&gw).await;
    let body = echo(gw.call("/get", &[]).await).await;
    assert!(body["headers"].get("content-length").is_none(), "{body}");
    assert!(body["headers"].get("transfer-encoding").is_none(), "{body}");
    let r = gw.http.post(gw.proxy_url("/empty")).header("content-length", "0").send().await.expect("post");
    let body = echo(r).await;
    assert_eq!(body["headers"]["content-length"], "0");
    let r = gw.http.post(gw.proxy_url("/sized")).body("hello").send().await.expect("post");
    let body = echo(r).await;
    assert_eq!((body["headers"]["content-length"].as_str(), body["body"].as_str()), (Some("5"), Some("hello")));
    let chunked = || {
        let chunks = ["one ", "two"].map(|s| Ok::<_, std::io::Error>(bytes::Bytes::from(s)));
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };
    let r = gw.http.post(gw.proxy_url("/streamed")).body(chunked()).send().await;
    let body = echo(r.expect("post")).await;
    assert_eq!(body["headers"]["transfer-encoding"], "chunked");
    assert_eq!(body["body"], "one two");
    // Kong's default `request_buffering` reads the body first, and sends it with its length.
    let r = gw.http.post(gw.proxy_url("/buffered")).body(chunked()).send().await;
    let body = echo(r.expect("post")).await;
    assert_eq!((body["headers"]["content-length"].as_str(), body["body"].as_str()), (Some("7"), Some("one two")));
    assert!(body["headers"].get("transfer-encoding").is_none(), "{body}");
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_the_gateways_errors_follow_accept() {
    let (gw, up) = start().await;
    gw.create("/services", json!({"name": "s", "url": up.url("")})).await;
    gw.create("/services/s/routes", json!({"paths": ["/echo"]})).await;
    sync(&gw).await;
    let id_of = |r: &reqwest::Response| r.headers()["x-tollgate-request-id"].to_str().expect("id").to_string();
    // Proxied: the upstream gets the id (not the client's), the client gets it back.
    let r = gw.call("/echo/x", &[("x-tollgate-request-id", "forged")]).await;
    let id = id_of(&r);
    assert_eq!(id.len(), 32);
    let echoed = echo(r).await;
    assert_eq!(echoed["headers"]["x-tollgate-request-id"], id.as_str());
    assert_ne!(
        gw.call("/echo/x", &[]).await.headers()["x-tollgate-request-id"].to_str().unwrap(),
        id,
        "one per request"
    );

    // The gateway's own answers: Kong's templates, JSON by default, with the same id.
    let r = gw.call("/nowhere", &[]).await;
    let id = id_of(&r);
    assert_eq!(r.headers()["content-type"], "application/json; charset=utf-8");
    let text = r.text().await.expect("body");
    assert_eq!(
        text,
        format!("{{\n  \"message\":\"no Route matched with those values\",\n  \"request_id\":\"{id}\"\n}}")
    );
    let r = gw.call("/nowhere", &[("accept", "text/plain")]).await;
    let id = id_of(&r);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.expect("body"), format!("no Route matched with those values\nrequest_id: {id}\n"));
    let r = gw.call("/nowhere", &[("accept", "text/html,application/xhtml+xml")]).await;
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert!(r.text().await.expect("body").contains("<p>no Route matched with those values.</p>"));
    let r = gw.call("/nowhere", &[("accept", "application/xml")]).await;
    assert_eq!(r.headers()["content-type"], "application/xml; charset=utf-8");
    assert!(r.text().await.expect("body").contains("<message>no Route matched with those values</message>"));
}
