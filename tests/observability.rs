//! Seeing what the gateway does: Prometheus metrics in Kong's names on the Admin API and the status
//! API, request logs (file-log, http-log, the node's access log) in Kong's serializer shape, and
//! correlation ids, as an operator's dashboard and log pipeline meet them.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::collector::Collector;
use support::{Gateway, Options, Upstream};

/// `GET /metrics` on `base` (the Admin API or the status API): its content type and text.
async fn scrape(gw: &Gateway, base: &str) -> (String, String) {
    let r = gw.http.get(format!("{base}/metrics")).send().await.expect("scrape");
    assert_eq!(r.status(), 200);
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (ct, r.text().await.expect("text"))
}

/// Scrapes the Admin API until every line of `wanted` is in the exposition (the log phase runs once
/// each response is out), and returns it.
async fn scrape_until(gw: &Gateway, wanted: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = scrape(gw, &gw.admin).await;
        let lines: Vec<&str> = text.lines().collect();
        let missing: Vec<&&str> = wanted.iter().filter(|w| !lines.contains(w)).collect();
        if missing.is_empty() {
            return text;
        }
        assert!(Instant::now() < deadline, "missing {missing:#?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the series named `series` (name and labels as printed), or -1 when it is absent.
fn value(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.parse::<f64>().ok()).unwrap_or(-1.0)
}

/// Waits until `path` holds the entry of request `id` and returns it.
async fn log_entry(path: &std::path::Path, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found =
            text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|e| e["request"]["id"] == id);
        if let Some(e) = found {
            return e;
        }
        assert!(Instant::now() < deadline, "no entry for {id} in {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `path` holds `n` lines and returns them as JSON.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("each line is one JSON object")).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(Instant::now() < deadline, "{} of {n} lines in {}", lines.len(), path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn routed(gw: &Gateway, path: &str, headers: &[(&str, &str)], status: u16) -> reqwest::Response {
    let r = gw.eventually(path, headers, Duration::from_secs(10), |r| r.status() == status).await;
    assert_eq!(r.status(), status, "{path}");
    r
}

#[tokio::test]
async fn prometheus_counts_requests_in_kongs_names_on_the_admin_and_status_apis() {
    let gw = Gateway::start().await;
    let upstream = Upstream::start().await;
    let up = gw.create("/upstreams", json!({"name": "backend"})).await;
    let target = format!("127.0.0.1:{}", upstream.port());
    gw.create(&format!("/upstreams/{}/targets", up["id"].as_str().unwrap()), json!({"target": target})).await;
    gw.create("/services", json!({"name": "mock-service", "url": "http://backend/"})).await;
    gw.create("/services/mock-service/routes", json!({"name": "http-route", "paths": ["/m"]})).await;
    gw.create("/services/mock-service/plugins", json!({"name": "key-auth"})).await;
    // A username with what label values must escape.
    gw.create("/consumers", json!({"username": "al\"ice\\"})).await;
    gw.create("/consumers/al%22ice%5C/key-auth", json!({"key": "k-alice"})).await;
    let flags = json!({"per_consumer": true, "status_code_metrics": true, "latency_metrics": true,
                       "bandwidth_metrics": true, "upstream_health_metrics": true});
    gw.create("/plugins", json!({"name": "prometheus", "config": flags})).await;

    routed(&gw, "/m", &[("apikey", "k-alice")], 200).await;
    routed(&gw, "/m", &[("apikey", "k-alice")], 200).await;
    routed(&gw, "/m", &[], 401).await;

    let text = scrape_until(
        &gw,
        &[
            r#"kong_http_requests_total{service="mock-service",route="http-route",code="401",source="kong",workspace="default",consumer=""} 1"#,
            r#"kong_kong_latency_ms_count{service="mock-service",route="http-route",workspace="default"} 3"#,
        ],
    )
    .await;
    let lines: Vec<&str> = text.lines().collect();
    // At least two 200s: the first `eventually` may have polled before the route was ready.
    let ok = lines
        .iter()
        .find(|l| l.starts_with(r#"kong_http_requests_total{service="mock-service",route="http-route",code="200",source="service",workspace="default",consumer="al\"ice\\"} "#))
        .unwrap_or_else(|| panic!("no 200 series for the consumer in\n{text}"));
    assert!(ok.ends_with(" 2"), "{ok}");
    for expected in [
        "# HELP kong_http_requests_total HTTP status codes per consumer/service/route in Kong",
        "# TYPE kong_http_requests_total counter",
        "# HELP kong_kong_latency_ms Latency added by Kong and enabled plugins for each service/route in Kong",
        "# TYPE kong_kong_latency_ms histogram",
        r#"kong_kong_latency_ms_bucket{service="mock-service",route="http-route",workspace="default",le="+Inf"} 3"#,
        r#"kong_upstream_latency_ms_count{service="mock-service",route="http-route",workspace="default"} 2"#,
        r#"kong_request_latency_ms_count{service="mock-service",route="http-route",workspace="default"} 3"#,
        "# HELP kong_bandwidth_bytes Total bandwidth (ingress/egress) throughput in bytes",
        "kong_datastore_reachable 1",
        &format!(
            r#"kong_upstream_target_health{{upstream="backend",target="{target}",address="{target}",state="healthchecks_off",subsystem="http"}} 1"#
        ),
        &format!(
            r#"kong_upstream_target_health{{upstream="backend",target="{target}",address="{target}",state="healthy",subsystem="http"}} 0"#
        ),
    ] {
        assert!(lines.contains(&expected), "missing {expected} in\n{text}");
    }
    assert!(lines.iter().any(|l| l.starts_with("kong_node_info{node_id=\"") && l.ends_with(" 1")), "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with(r#"kong_bandwidth_bytes{service="mock-service",route="http-route",direction="egress",workspace="default",consumer="al\"ice\\"} "#)),
        "{text}"
    );
    // Kong's buckets, cumulative, in order, then the count and the sum.
    let buckets: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with(r#"kong_kong_latency_ms_bucket{service="mock-service""#))
        .map(|l| l.split("le=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or(""))
        .collect();
    assert_eq!(
        buckets,
        [
            "1", "2", "5", "7", "10", "15", "20", "30", "50", "75", "100", "200", "500", "750", "1000", "3000", "6000",
            "+Inf"
        ]
    );
    // Families sorted by name, HELP and TYPE right before each family's first series.
    let families: Vec<&str> =
        lines.iter().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap_or("")).collect();
    let mut sorted = families.clone();
    sorted.sort_unstable();
    assert_eq!(families, sorted);

    let (ct, status_text) = scrape(&gw, &gw.status).await;
    assert_eq!(ct, "text/plain; charset=UTF-8");
    assert!(status_text.contains("kong_http_requests_total{"), "{status_text}");

    // A renamed route counts under its new name, as in Kong; the old series stays as it was.
    let (status, _) = gw.patch("/routes/http-route", json!({"name": "renamed"})).await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        gw.call("/m", &[]).await;
        let (_, text) = scrape(&gw, &gw.admin).await;
        if text.contains(r#"kong_http_requests_total{service="mock-service",route="renamed",code="401""#) {
            assert!(
                text.contains(r#"route="http-route",code="401",source="kong",workspace="default",consumer=""} "#),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no series for the renamed route in\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Label cardinality is bounded: past `prometheus_max_series`, requests are counted as dropped.
#[tokio::test]
async fn series_past_the_cap_are_counted_as_dropped_not_kept() {
    let opts = Options { extra: vec![("TOLLGATE_PROMETHEUS_MAX_SERIES".into(), "3".into())], ..Options::default() };
    let gw = Gateway::start_with(opts).await;
    let upstream = Upstream::start().await;
    gw.service_and_route(&upstream, "svc", json!({"name": "codes", "paths": ["/status"], "strip_path": false})).await;
    gw.create("/plugins", json!({"name": "prometheus", "config": {"status_code_metrics": true}})).await;
    routed(&gw, "/status/200", &[], 200).await;
    // One series per status code; only three may exist (each worker's counted apart).
    for code in [201, 202, 203, 204, 205, 206, 207, 208] {
        routed(&gw, &format!("/status/{code}"), &[], code).await;
    }
    let text = scrape_until(&gw, &[]).await;
    let series = text.lines().filter(|l| l.starts_with("kong_http_requests_total{")).count();
    assert!(series <= 3, "{text}");
    assert!(value(&text, "tollgate_prometheus_series_dropped_total") >= 6.0, "{text}");
}

#[tokio::test]
async fn without_a_prometheus_instance_only_the_nodes_gauges_are_shown() {
    let (gw, upstream) = support::start().await;
    gw.service_and_route(&upstream, "svc", json!({"paths": ["/p"]})).await;
    routed(&gw, "/p", &[], 200).await;
    let (ct, text) = scrape(&gw, &gw.admin).await;
    assert_eq!(ct, "text/plain; charset=UTF-8");
    assert!(text.contains("\nkong_datastore_reachable 1\n"), "{text}");
    assert!(text.contains("kong_nginx_requests_total{node_id="), "{text}");
    assert!(!text.contains("kong_http_requests_total"), "{text}");
}

/// The thread of process `pid` named `name`, if any.
fn thread_named(pid: u32, name: &str) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        (comm.trim_end() == name).then(|| task.file_name().to_string_lossy().into_owned())
    })
}

/// A thread's scheduling policy (`/proc/…/stat`, field 41; 5 is `SCHED_IDLE`).
fn scheduling_policy(pid: u32, tid: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // The fields after the command's closing parenthesis, the state (field 3) first.
    stat.rsplit_once(") ")?.1.split(' ').nth(41 - 3)?.parse().ok()
}

/// A scrape takes only the CPU proxying leaves: `GET /metrics` connections to the Admin API and
/// the status API are served by the node's scrape thread, in Linux's idle scheduling class, which
/// closes each after its answer; other requests keep their connections as before.
#[tokio::test]
async fn scrapes_are_served_by_a_thread_in_the_idle_scheduling_class() {
    let gw = Gateway::start().await;
    let thread = thread_named(gw.pid(), "tollgate-idle").expect("the scrape thread");
    assert_eq!(scheduling_policy(gw.pid(), &thread), Some(5), "SCHED_IDLE");
    // A client that opens a connection for each request: each scrape is placed anew.
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    for base in [&gw.admin, &gw.status] {
        // The thread takes a scrape whenever the machine has idle CPU; on a saturated one (this
        // suite beside others) the scrape is served as usual, answered alike, and for a minute after
        // one the thread was slow to serve: asks until one scrape came by the thread.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let r = fresh.get(format!("{base}/metrics")).send().await.expect("scrape");
            assert_eq!(r.status(), 200);
            let closed = r.headers().get("connection").is_some_and(|v| v == "close");
            let text = r.text().await.expect("text");
            assert!(text.contains("# TYPE kong_nginx_requests_total"), "{text}");
            if closed {
                break;
            }
            assert!(Instant::now() < deadline, "no scrape of {base} was served by the scrape thread");
        }
        let r = fresh.get(format!("{base}/status")).send().await.expect("status");
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("connection").is_none(), "{:?}", r.headers());
    }
}

/// Tollgate's own families: rate-limit decisions, upstream connections, the configuration served.
#[tokio::test]
async fn tollgates_own_families_count_decisions_connections_and_the_configuration() {
    let (gw, upstream) = support::start().await;
    gw.service_and_route(&upstream, "svc", json!({"name": "r", "paths": ["/rl"]})).await;
    gw.create("/routes/r/plugins", json!({"name": "rate-limiting", "config": {"minute": 1, "policy": "local"}})).await;
    routed(&gw, "/rl", &[], 429).await;
    // Decisions are counted as they are made: the 429 is already in.
    let text = scrape_until(&gw, &[]).await;
    let decisions = |plugin: &str, outcome: &str| {
        value(&text, &format!(r#"tollgate_rate_limiting_decisions_total{{plugin="{plugin}",outcome="{outcome}"}}"#))
    };
    assert!(decisions("rate-limiting", "allowed") >= 1.0, "{text}");
    assert!(decisions("rate-limiting", "limited") >= 1.0, "{text}");
    assert_eq!(decisions("rate-limiting-advanced", "allowed"), 0.0, "{text}");
    assert!(value(&text, r#"tollgate_upstream_connections_total{event="opened"}"#) >= 1.0, "{text}");
    assert!(value(&text, "tollgate_configuration_version") >= 1.0, "{text}");
    assert!(value(&text, "tollgate_configuration_age_seconds") >= 0.0, "{text}");
    assert!(value(&text, "tollgate_prometheus_series_dropped_total") == 0.0, "{text}");
}

/// Kong's Grafana dashboard draws `kong_nginx_connections_total` by state: an idle keep-alive
/// connection is `waiting`, one sending its request head `reading`, one whose request is being
/// answered `writing`; the Admin API's `/status` counts them alike.
#[tokio::test]
async fn connections_are_counted_as_reading_writing_and_waiting() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, upstream) = support::start().await;
    gw.service_and_route(&upstream, "svc", json!({"name": "slow", "paths": ["/delay"], "strip_path": false})).await;
    routed(&gw, "/delay/0", &[], 200).await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", gw.proxy_port));
    let idle = connect().await.expect("connect");
    let mut partial = connect().await.expect("connect");
    partial.write_all(b"GET /delay/0 HTTP/1.1\r\nHost: a\r\n").await.expect("send");
    let before = upstream.hits();
    let mut slow = connect().await.expect("connect");
    slow.write_all(b"GET /delay/6000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.expect("send");
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.hits() == before {
        assert!(Instant::now() < deadline, "the slow request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let state = |text: &str, state: &str| {
        value(
            text,
            &format!(r#"kong_nginx_connections_total{{node_id="{}",subsystem="http",state="{state}"}}"#, node_id(text)),
        )
    };
    let text =
        scrape_until_it_holds(&gw, deadline, |text| state(text, "reading") == 1.0 && state(text, "writing") == 1.0)
            .await;
    // The idle one, and any keep-alive connection the test's client left open.
    assert!(state(&text, "waiting") >= 1.0, "{text}");
    assert!(state(&text, "active") >= 3.0, "{text}");
    assert_eq!(
        state(&text, "active"),
        state(&text, "reading") + state(&text, "writing") + state(&text, "waiting"),
        "{text}"
    );
    let (_, status) = gw.get("/status").await;
    assert_eq!(status["server"]["connections_reading"], 1, "{status}");
    assert_eq!(status["server"]["connections_writing"], 1, "{status}");

    // Once the slow answer is out and the head completed, nothing is being read or written.
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).await.expect("answer");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    partial.write_all(b"Connection: close\r\n\r\n").await.expect("send");
    partial.read_to_end(&mut answer).await.expect("answer");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text =
        scrape_until_it_holds(&gw, deadline, |text| state(text, "reading") == 0.0 && state(text, "writing") == 0.0)
            .await;
    assert!(state(&text, "waiting") >= 1.0, "{text}");
    drop(idle);
}

/// Scrapes the Admin API until `holds` says yes of the exposition, before `deadline`.
async fn scrape_until_it_holds(gw: &Gateway, deadline: Instant, holds: impl Fn(&str) -> bool) -> String {
    loop {
        let (_, text) = scrape(gw, &gw.admin).await;
        if holds(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node id in a scrape's `kong_node_info`.
fn node_id(text: &str) -> String {
    let line = text.lines().find(|l| l.starts_with("kong_node_info{")).expect("kong_node_info");
    line.split("node_id=\"").nth(1).and_then(|r| r.split('"').next()).expect("node_id").to_string()
}

/// Kong's `request.size` and `response.size` are the bytes on the wire: what the client sent
/// (head and body) and what it got back (head and body), whatever the headers hold.
#[tokio::test]
async fn logged_sizes_are_the_bytes_on_the_wire() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, upstream) = support::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sizes.log");
    gw.service_and_route(&upstream, "svc", json!({"name": "sized", "paths": ["/sized"]})).await;
    gw.create("/routes/sized/plugins", json!({"name": "file-log", "config": {"path": path}})).await;
    routed(&gw, "/sized", &[], 200).await;

    let request = b"POST /sized/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Odd: \"quoted\" \\ back\r\n\
        Content-Length: 5\r\nConnection: close\r\n\r\nhello";
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    client.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.expect("answer");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let id =
        text.lines().find_map(|l| l.strip_prefix("x-tollgate-request-id: ")).expect("the request's id").to_string();
    let e = log_entry(&path, &id).await;
    assert_eq!(e["request"]["size"], json!(request.len()), "{e}");
    assert_eq!(e["response"]["size"], json!(answer.len()), "{e}");
    assert_eq!(e["request"]["headers"]["x-odd"], "\"quoted\" \\ back");
}

#[tokio::test]
async fn file_log_writes_kongs_serializer_entry_for_every_request() {
    let (gw, upstream) = support::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("requests.log");
    gw.service_and_route(&upstream, "svc", json!({"name": "logged", "paths": ["/logged"]})).await;
    gw.create("/routes/logged/plugins", json!({"name": "key-auth"})).await;
    gw.create("/consumers", json!({"username": "bob", "custom_id": "b-1"})).await;
    gw.create("/consumers/bob/key-auth", json!({"key": "k-bob"})).await;
    let config = json!({"path": path, "custom_fields": {"env": "prod", "team.name": "core"}});
    gw.create("/routes/logged/plugins", json!({"name": "file-log", "config": config})).await;
    routed(&gw, "/logged", &[], 401).await;

    let r = gw
        .http
        .get(gw.proxy_url("/logged/x?a=1&b"))
        .header("apikey", "k-bob")
        .header("authorization", "Basic c2VjcmV0")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-tollgate-request-id"].to_str().expect("id").to_string();
    let e = &log_entry(&path, &request_id).await;
    assert_eq!(e["request"]["method"], "GET");
    assert_eq!(e["request"]["uri"], "/logged/x?a=1&b");
    assert_eq!(e["request"]["url"], format!("http://127.0.0.1:{}/logged/x?a=1&b", gw.proxy_port));
    assert_eq!(e["request"]["querystring"], json!({"a": "1", "b": true}));
    assert_eq!(e["request"]["headers"]["authorization"], "REDACTED");
    assert_eq!(e["request"]["headers"]["apikey"], "k-bob");
    assert_eq!(e["response"]["status"], 200);
    assert!(e["response"]["size"].as_u64().unwrap_or(0) > 100, "{e}");
    assert_eq!(e["response"]["headers"]["x-tollgate-request-id"], request_id);
    // The route strips what its path matched.
    assert_eq!(e["upstream_uri"], "/x?a=1&b");
    assert_eq!(e["upstream_status"], "200");
    assert_eq!(e["tries"], json!([{"ip": "127.0.0.1", "port": upstream.port()}]));
    assert_eq!((&e["route"]["name"], &e["service"]["name"]), (&json!("logged"), &json!("svc")));
    assert_eq!((&e["consumer"]["username"], &e["consumer"]["custom_id"]), (&json!("bob"), &json!("b-1")));
    assert!(e["authenticated_entity"]["id"].is_string(), "{e}");
    assert_eq!((&e["client_ip"], &e["source"]), (&json!("127.0.0.1"), &json!("service")));
    for key in ["kong", "proxy", "request", "receive"] {
        assert!(e["latencies"][key].is_number(), "latencies.{key}: {e}");
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let started = e["started_at"].as_u64().expect("started_at in milliseconds");
    assert!(started <= now && now - started < 60_000, "{started} vs {now}");
    assert_eq!((&e["env"], &e["team"]["name"]), (&json!("prod"), &json!("core")));

    // A refused request is logged too, answered by the gateway.
    let r = gw.call("/logged", &[]).await;
    let id = r.headers()["x-tollgate-request-id"].to_str().expect("id").to_string();
    let refused = log_entry(&path, &id).await;
    assert_eq!((&refused["response"]["status"], &refused["source"]), (&json!(401), &json!("kong")));
    assert_eq!(refused["upstream_uri"], "");
}

#[tokio::test]
async fn file_log_to_a_path_that_cannot_be_opened_is_reported_and_proxying_goes_on() {
    let (gw, upstream) = support::start().await;
    gw.service_and_route(&upstream, "svc", json!({"name": "r", "paths": ["/p"]})).await;
    let config = json!({"path": "/nonexistent-tollgate-dir/sub/requests.log"});
    gw.create("/routes/r/plugins", json!({"name": "file-log", "config": config})).await;
    for _ in 0..5 {
        routed(&gw, "/p", &[], 200).await;
    }
    gw.wait_for_log("file-log: cannot open the log file", 1, Duration::from_secs(10)).await;
    let text = scrape_until(&gw, &[]).await;
    assert!(value(&text, r#"tollgate_log_entries_dropped_total{sink="file-log"}"#) >= 1.0, "{text}");
    // One report for the failing streak, not one per entry.
    assert_eq!(gw.log_count("file-log: cannot open the log file"), 1);
}

#[tokio::test]
async fn file_log_reopens_the_file_for_every_entry_when_asked() {
    let (gw, upstream) = support::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rotated.log");
    gw.service_and_route(&upstream, "svc", json!({"name": "r", "paths": ["/p"]})).await;
    gw.create("/routes/r/plugins", json!({"name": "file-log", "config": {"path": path, "reopen": true}})).await;
    routed(&gw, "/p", &[], 200).await;
    log_lines(&path, 1).await;
    // logrotate moves the file away: the next entry goes to a new file at the path.
    std::fs::rename(&path, dir.path().join("rotated.log.1")).expect("rotate");
    routed(&gw, "/p", &[], 200).await;
    let fresh = log_lines(&path, 1).await;
    assert_eq!(fresh.len(), 1);
}

/// Waits for a new http-log plugin through a marker: requests to `/p` until one reaches the
/// collector.
async fn until_collected(gw: &Gateway, collector: &Collector) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector.received().is_empty() {
        assert!(Instant::now() < deadline, "nothing reached the collector");
        gw.call("/p", &[]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn http_log_sends_batches_to_a_collector_and_retries_when_it_fails() {
    let (gw, upstream) = support::start().await;
    let collector = Collector::start(2);
    gw.service_and_route(&upstream, "svc", json!({"name": "r", "paths": ["/p"]})).await;
    let endpoint = format!("http://user:p%40ss@{}/logs?ignored=1", collector.addr);
    let config = json!({
        "http_endpoint": endpoint, "method": "PUT", "headers": {"X-Pipeline": "edge"},
        "custom_fields": {"dc": "eu-1"},
        "queue": {"max_batch_size": 3, "max_coalescing_delay": 1, "initial_retry_delay": 0.05},
    });
    gw.create("/routes/r/plugins", json!({"name": "http-log", "config": config})).await;
    until_collected(&gw, &collector).await;
    // The first two sends failed with 500 and were tried again: the same batch arrives three times.
    let got = collector.wait_until(Duration::from_secs(10), |r| r.len() >= 3).await;
    assert_eq!(got[0].body, got[2].body, "the failed batch is sent again whole");
    let last = &got[2];
    assert_eq!((last.method.as_str(), last.path.as_str()), ("PUT", "/logs"));
    assert_eq!(last.headers["content-type"], "application/json");
    assert_eq!(last.headers["x-pipeline"], "edge");
    assert_eq!(last.headers["authorization"], "Basic dXNlcjpwQHNz");
    let batch: Value = serde_json::from_slice(&last.body).expect("JSON");
    let entries = batch.as_array().expect("a batch is a JSON array");
    assert!(!entries.is_empty() && entries.len() <= 3, "{batch}");
    assert_eq!((&entries[0]["dc"], &entries[0]["route"]["name"]), (&json!("eu-1"), &json!("r")));

    // Three requests in a burst on one connection (so one worker: batches are gathered per
    // worker, as Kong's queues are) leave in one batch of three.
    let before = collector.received().len();
    let one = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
    for _ in 0..3 {
        one.get(gw.proxy_url("/p")).send().await.expect("proxy request");
    }
    let got = collector
        .wait_until(Duration::from_secs(10), |r| {
            r[before..]
                .iter()
                .map(|x| serde_json::from_slice::<Value>(&x.body).map_or(0, |v| v.as_array().map_or(0, Vec::len)))
                .sum::<usize>()
                >= 3
        })
        .await;
    assert!(got[before..].iter().any(|x| serde_json::from_slice::<Value>(&x.body).is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 3))), "{:?}", &got[before..]);
}

/// Kong's default queue (`max_batch_size` 1): every entry is a POST of its own, a JSON object,
/// whichever worker logged it.
#[tokio::test]
async fn with_kongs_default_queue_each_entry_is_posted_alone() {
    let (gw, upstream) = support::start().await;
    let collector = Collector::start(0);
    gw.service_and_route(&upstream, "svc", json!({"name": "r", "paths": ["/p"]})).await;
    let config = json!({"http_endpoint": format!("http://{}/logs", collector.addr)});
    gw.create("/routes/r/plugins", json!({"name": "http-log", "config": config})).await;
    until_collected(&gw, &collector).await;
    // Twenty requests, each on a connection of its own (so on either of the node's workers).
    for n in 0..20 {
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
        let r = client.get(gw.proxy_url("/p")).header("x-marker", n.to_string()).send().await.expect("proxy");
        assert_eq!(r.status(), 200);
    }
    // Every POST is one entry; the markers' entries are told from the waiting requests' (which
    // may still be arriving) by their header.
    let marked = |got: &[support::collector::Received]| -> Vec<u32> {
        got.iter()
            .filter_map(|x| {
                let entry: Value = serde_json::from_slice(&x.body).expect("JSON");
                assert!(entry.is_object(), "one entry per POST, not a batch: {entry}");
                entry["request"]["headers"]["x-marker"].as_str().and_then(|m| m.parse().ok())
            })
            .collect()
    };
    let got = collector.wait_until(Duration::from_secs(10), |r| marked(r).len() >= 20).await;
    let mut markers = marked(&got);
    markers.sort_unstable();
    assert_eq!(markers, (0..20).collect::<Vec<u32>>());
}

#[tokio::test]
async fn a_batch_that_is_not_full_leaves_after_its_delay_or_when_the_plugin_goes() {
    let (gw, upstream) = support::start().await;
    let collector = Collector::start(0);
    gw.service_and_route(&upstream, "svc", json!({"name": "r", "paths": ["/p"]})).await;
    let endpoint = format!("http://{}/logs", collector.addr);
    let batches = |got: &[support::collector::Received]| -> Vec<Vec<Value>> {
        got.iter()
            .map(|x| {
                serde_json::from_slice::<Value>(&x.body).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
            })
            .collect()
    };
    // Ten per batch, sent 0.2 s after the first entry: one request leaves alone.
    let config = json!({"http_endpoint": endpoint, "queue": {"max_batch_size": 10, "max_coalescing_delay": 0.2}});
    let plugin = gw.create("/routes/r/plugins", json!({"name": "http-log", "config": config})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while collector.received().is_empty() {
        assert!(Instant::now() < deadline, "a lone entry never left");
        gw.call("/p", &[("x-marker", "alone")]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let first = batches(&collector.received());
    assert!(first[0].len() < 10 && first[0][0]["request"]["headers"]["x-marker"] == "alone", "{first:?}");

    // An hour's delay: what was gathered leaves when the plugin is deleted, not an hour later.
    assert_eq!(gw.delete(&format!("/plugins/{}", plugin["id"].as_str().expect("id"))).await, 204);
    let config = json!({"http_endpoint": endpoint, "queue": {"max_batch_size": 10, "max_coalescing_delay": 3600}});
    let plugin = gw.create("/routes/r/plugins", json!({"name": "http-log", "config": config})).await;
    // The plugin serves once a route added after it does.
    gw.create("/services/svc/routes", json!({"name": "marker", "paths": ["/marker"]})).await;
    routed(&gw, "/marker", &[], 200).await;
    let before = collector.received().len();
    assert_eq!(gw.call("/p", &[("x-marker", "kept")]).await.status(), 200);
    assert_eq!(gw.delete(&format!("/plugins/{}", plugin["id"].as_str().expect("id"))).await, 204);
    let got = collector
        .wait_until(Duration::from_secs(10), |r| {
            batches(&r[before..]).iter().flatten().any(|e| e["request"]["headers"]["x-marker"] == "kept")
        })
        .await;
    assert!(batches(&got[before..]).iter().flatten().any(|e| e["request"]["headers"]["x-marker"] == "kept"));
}

#[tokio::test]
async fn a_collector_that_hangs_never_slows_proxying_and_what_cannot_wait_is_dropped() {
    let (gw, upstream) = support::start().await;
    // Accepts connections and never answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = hanging.local_addr().expect("addr");
    gw.service_and_route(&upstream, "svc", json!({"name": "r", "paths": ["/p"]})).await;
    let config = json!({"http_endpoint": format!("http://{addr}/"), "timeout": 60000, "queue": {"max_entries": 5}});
    gw.create("/routes/r/plugins", json!({"name": "http-log", "config": config})).await;
    routed(&gw, "/p", &[], 200).await;
    let started = Instant::now();
    for _ in 0..200 {
        let r = gw.call("/p", &[]).await;
        assert_eq!(r.status(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let text = scrape_until(&gw, &[]).await;
    let dropped = value(&text, r#"tollgate_log_entries_dropped_total{sink="http-log"}"#);
    assert!(dropped >= 190.0, "at most the queue (5) and the batch in flight wait: {dropped} dropped\n{text}");
    drop(hanging);
}

#[tokio::test]
async fn correlation_id_goes_upstream_into_the_logs_and_back() {
    let (gw, upstream) = support::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.log");
    gw.service_and_route(&upstream, "svc", json!({"name": "r", "paths": ["/c"]})).await;
    gw.create("/routes/r/plugins", json!({"name": "correlation-id", "config": {"echo_downstream": true}})).await;
    gw.create("/routes/r/plugins", json!({"name": "file-log", "config": {"path": path}})).await;
    let r = gw.eventually("/c", &[], Duration::from_secs(10), |r| r.headers().contains_key("kong-request-id")).await;
    let echoed = r.headers()["kong-request-id"].to_str().expect("ascii").to_string();
    let body: Value = r.json().await.expect("echo");
    assert_eq!(body["headers"]["kong-request-id"], echoed, "the upstream got the same id");
    let (worker, count) = echoed.split_once('#').expect("uuid#counter");
    assert!(uuid::Uuid::parse_str(worker).is_ok() && count.parse::<u64>().is_ok(), "{echoed}");
    let lines = log_lines(&path, 1).await;
    assert!(lines.iter().any(|e| e["correlation_id"] == echoed), "{lines:?}");

    // A client's own id is kept.
    let r = gw.call("/c", &[("Kong-Request-ID", "from-client")]).await;
    assert_eq!(r.headers()["kong-request-id"], "from-client");
    let body: Value = r.json().await.expect("echo");
    assert_eq!(body["headers"]["kong-request-id"], "from-client");
}

#[tokio::test]
async fn the_nodes_access_log_records_every_request_even_unrouted_ones() {
    let opts = Options { extra: vec![("TOLLGATE_PROXY_ACCESS_LOG".into(), "access.log".into())], ..Options::default() };
    let gw = Gateway::start_with(opts).await;
    let upstream = Upstream::start().await;
    gw.service_and_route(&upstream, "svc", json!({"name": "r", "paths": ["/a"]})).await;
    routed(&gw, "/a", &[], 200).await;
    let r = gw.call("/nowhere", &[]).await;
    assert_eq!(r.status(), 404);
    let id = r.headers()["x-tollgate-request-id"].to_str().expect("id").to_string();
    let path = gw.prefix.join("access.log");
    let entry = log_entry(&path, &id).await;
    assert_eq!((&entry["response"]["status"], &entry["source"]), (&json!(404), &json!("kong")));
    assert!(entry.get("route").is_none(), "{entry}");
    let text = std::fs::read_to_string(&path).expect("log");
    assert!(text.lines().any(|l| l.contains("\"upstream_status\":\"200\"")), "{text}");
}
