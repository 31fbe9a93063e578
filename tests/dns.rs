//! Services and targets named by host name, resolved by DNS as Kong resolves them: the hosts file
//! first, A and SRV answers kept for their TTL and served stale while the name server fails, Kong's
//! errors for names that do not resolve, a target's addresses balanced and checked one by one, and
//! answers with TTL 0 that do not make health flap. Every name here is answered by the harness's
//! own DNS server, which counts the questions it gets.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::dns::{Answer, TestDns};
use support::{Gateway, Options, Upstream};

/// A gateway asking `dns`, with `hosts` as its hosts file.
async fn gateway(dns: &TestDns, hosts: Option<&str>) -> (Gateway, Option<tempfile::TempDir>) {
    let mut extra = vec![("TOLLGATE_DNS_RESOLVER".to_string(), dns.addr.to_string())];
    let dir = hosts.map(|text| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hosts");
        std::fs::write(&path, text).expect("hosts file");
        extra.push(("TOLLGATE_DNS_HOSTSFILE".to_string(), path.display().to_string()));
        dir
    });
    (Gateway::start_with(Options { extra, ..Options::default() }).await, dir)
}

/// A service named `name` on `host:port` and a route `/{name}` to it; returns once the route is
/// routed (any answer but 404).
async fn service(gw: &Gateway, name: &str, host: &str, port: u16) {
    gw.create("/services", json!({"name": name, "host": host, "port": port})).await;
    gw.create(&format!("/services/{name}/routes"), json!({"paths": [format!("/{name}")]})).await;
    let path = format!("/{name}/ready");
    let r = gw.eventually(&path, &[], Duration::from_secs(10), |r| r.status() != 404).await;
    assert_ne!(r.status(), 404, "the route did not go live");
}

async fn message(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["message"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_service_named_by_host_name_follows_its_dns_answer() {
    let dns = TestDns::start();
    let servers = Upstream::start_on_one_port(&["127.0.0.2", "127.0.0.3"]);
    dns.set_addresses("svc.test", &["127.0.0.2"], 1);
    let (gw, _dir) = gateway(&dns, None).await;
    service(&gw, "svc", "svc.test", servers[0].port()).await;
    let (status, echo) = support::status_json(gw.call("/svc/host", &[]).await).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["host"], format!("svc.test:{}", servers[0].port()), "Host is the service's name");
    assert!(servers[0].hits() >= 1 && servers[1].hits() == 0);

    // The name moves: within its TTL (1 s) and one refresh, requests follow it, even on the
    // connections the gateway keeps open.
    dns.set_addresses("svc.test", &["127.0.0.3"], 1);
    let moved = gw.eventually("/svc/x", &[], Duration::from_secs(10), |_| servers[1].hits() > 0).await;
    assert_eq!(moved.status(), 200);
    let before = servers[0].hits();
    for _ in 0..20 {
        assert_eq!(gw.call("/svc/x", &[]).await.status(), 200);
    }
    assert_eq!(servers[0].hits(), before, "nothing goes to the old address any more");
}

#[tokio::test]
async fn names_that_do_not_resolve_answer_kongs_errors() {
    let dns = TestDns::start();
    dns.set("broken.test", vec![Answer::ServFail], 1);
    let (gw, _dir) = gateway(&dns, None).await;
    service(&gw, "nx", "nowhere.test", 80).await;
    service(&gw, "broken", "broken.test", 80).await;
    assert_eq!(message(gw.call("/nx", &[]).await).await, (503, "name resolution failed".to_string()));
    let (status, text) = message(gw.call("/broken", &[]).await).await;
    assert_eq!(
        (status, text.as_str()),
        (500, "failed the initial dns/balancer resolve for 'broken.test' with: dns server error: 2 server failure")
    );
    // A name that does not exist is remembered (dns_not_found_ttl, 30 s): not asked again per request.
    let asked = dns.asked("nowhere.test");
    for _ in 0..10 {
        assert_eq!(gw.call("/nx", &[]).await.status(), 503);
    }
    assert_eq!(dns.asked("nowhere.test"), asked);
}

#[tokio::test]
async fn a_good_answer_is_served_stale_while_the_name_server_fails() {
    let dns = TestDns::start();
    let (up, gw_dns) = (Upstream::start().await, dns.clone());
    gw_dns.set_addresses("steady.test", &["127.0.0.1"], 1);
    let (gw, _dir) = gateway(&dns, None).await;
    service(&gw, "steady", "steady.test", up.port()).await;
    assert_eq!(gw.call("/steady", &[]).await.status(), 200);
    dns.set("steady.test", vec![Answer::ServFail], 1);
    // Past the TTL, requests start refreshes that fail: the last answer keeps serving.
    let asked = dns.asked("steady.test");
    for _ in 0..300 {
        assert_eq!(gw.call("/steady", &[]).await.status(), 200);
        if dns.asked("steady.test") >= asked + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dns.asked("steady.test") >= asked + 2, "the name was asked again and failed twice");
    assert_eq!(gw.call("/steady", &[]).await.status(), 200);
}

#[tokio::test]
async fn the_hosts_file_answers_before_any_name_server() {
    let dns = TestDns::start();
    let up = Upstream::start().await;
    let (gw, _dir) = gateway(&dns, Some("# test hosts\n127.0.0.1   local.test  alias.test\n")).await;
    service(&gw, "local", "alias.test", up.port()).await;
    assert_eq!(gw.call("/local", &[]).await.status(), 200);
    assert_eq!(dns.asked("alias.test"), 0, "the name server was never asked");
}

/// An upstream `pool.test` with passive checks (so that health can be set by hand) over `target`,
/// and a route `/pool` to a service that names it.
async fn balanced(gw: &Gateway, targets: &[&str], upstream: Value) {
    let mut upstream = upstream;
    upstream["name"] = json!("pool.test");
    upstream["healthchecks"] = json!({"passive": {"unhealthy": {"tcp_failures": 1}}});
    gw.create("/upstreams", upstream).await;
    for t in targets {
        gw.create("/upstreams/pool.test/targets", json!({"target": t})).await;
    }
    service(gw, "pool", "pool.test", 1).await;
}

async fn target_health(gw: &Gateway, target: &str) -> Value {
    let (status, body) = gw.get("/upstreams/pool.test/health").await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().expect("data").clone();
    data.into_iter().find(|d| d["target"] == target).unwrap_or_else(|| panic!("{target} in {body}"))
}

#[tokio::test]
async fn a_target_named_by_host_name_is_balanced_and_checked_address_by_address() {
    let dns = TestDns::start();
    let servers = Upstream::start_on_one_port(&["127.0.0.2", "127.0.0.3"]);
    let port = servers[0].port();
    dns.set_addresses("pair.test", &["127.0.0.3", "127.0.0.2"], 60);
    let (gw, _dir) = gateway(&dns, None).await;
    let target = format!("pair.test:{port}");
    balanced(&gw, &[&target, "nowhere.test:80"], json!({})).await;
    for _ in 0..40 {
        assert_eq!(gw.call("/pool/x", &[]).await.status(), 200);
    }
    assert!(
        servers[0].hits() >= 10 && servers[1].hits() >= 10,
        "both addresses serve: {} / {}",
        servers[0].hits(),
        servers[1].hits()
    );
    let (_, echo) = support::status_json(gw.call("/pool/host", &[]).await).await;
    assert_eq!(echo["headers"]["host"], target, "Host is the target's name and port");

    let pair = target_health(&gw, &target).await;
    assert_eq!(pair["health"], "HEALTHY", "{pair}");
    assert_eq!(pair["data"]["dns"], "A");
    assert_eq!(pair["data"]["nodeWeight"], 100);
    assert_eq!(pair["data"]["weight"], json!({"total": 200, "available": 200, "unavailable": 0}));
    let ips: Vec<&str> =
        pair["data"]["addresses"].as_array().expect("addresses").iter().map(|a| a["ip"].as_str().unwrap()).collect();
    assert_eq!(ips, ["127.0.0.2", "127.0.0.3"]);
    // The name that does not resolve is reported, never a crash.
    let nowhere = target_health(&gw, "nowhere.test:80").await;
    assert_eq!(nowhere["health"], "DNS_ERROR", "{nowhere}");
    assert_eq!(nowhere["data"]["dns"], "dns server error: 3 name error");
    assert_eq!(nowhere["data"]["addresses"], json!([]));

    // One address of the name marked unhealthy: the other takes everything.
    let url = gw.admin_url(&format!("/upstreams/pool.test/targets/{target}/127.0.0.2:{port}/unhealthy"));
    assert_eq!(support::client(None).put(url).send().await.expect("put").status(), 204);
    let pair = target_health(&gw, &target).await;
    assert_eq!(pair["health"], "HEALTHY", "one healthy address keeps the target healthy: {pair}");
    assert_eq!(pair["data"]["weight"], json!({"total": 200, "available": 100, "unavailable": 100}));
    let before = servers[0].hits();
    for _ in 0..20 {
        assert_eq!(gw.call("/pool/x", &[]).await.status(), 200);
    }
    assert_eq!(servers[0].hits(), before, "127.0.0.2 gets nothing");
}

#[tokio::test]
async fn srv_records_give_each_address_its_port_and_weight_and_use_srv_name_its_host() {
    let dns = TestDns::start();
    let (light, heavy) = (Upstream::start().await, Upstream::start().await);
    dns.set_addresses("light.test", &["127.0.0.1"], 60);
    dns.set_addresses("heavy.test", &["127.0.0.1"], 60);
    let srv = vec![(10, 1, light.port(), "light.test".to_string()), (10, 3, heavy.port(), "heavy.test".to_string())];
    // A record of lower priority is left for when the others are gone: not used here.
    let mut records = srv.clone();
    records.push((20, 50, 1, "light.test".to_string()));
    dns.set("api.srv.test", vec![Answer::Srv(records)], 60);
    let (gw, _dir) = gateway(&dns, None).await;
    balanced(&gw, &["api.srv.test"], json!({"use_srv_name": true})).await;
    for _ in 0..400 {
        assert_eq!(gw.call("/pool/x", &[]).await.status(), 200);
    }
    let (l, h) = (light.hits(), heavy.hits());
    assert!(l.abs_diff(100) <= 10 && h.abs_diff(300) <= 10, "weights 1:3 over 400 requests: {l} / {h}");
    let (_, echo) = support::status_json(gw.call("/pool/host", &[]).await).await;
    let host = echo["headers"]["host"].as_str().unwrap();
    assert!(
        host == format!("light.test:{}", light.port()) || host == format!("heavy.test:{}", heavy.port()),
        "Host is the SRV record's name with its port: {host}"
    );
    let t = target_health(&gw, "api.srv.test:8000").await;
    assert_eq!(t["data"]["dns"], "SRV", "{t}");
    let ports: Vec<u64> =
        t["data"]["addresses"].as_array().unwrap().iter().map(|a| a["port"].as_u64().unwrap()).collect();
    assert_eq!(ports.len(), 2, "{t}");
    assert!(ports.contains(&u64::from(light.port())) && ports.contains(&u64::from(heavy.port())));
}

#[tokio::test]
async fn ttl_zero_answers_that_rotate_or_fail_do_not_make_health_flap() {
    let dns = TestDns::start();
    let servers = Upstream::start_on_one_port(&["127.0.0.2", "127.0.0.3"]);
    let port = servers[0].port();
    let ip = |s: &str| s.parse().unwrap();
    // Each question gets the next answer: both, one, a failure, the other.
    let answers = vec![
        Answer::Addresses(vec![ip("127.0.0.2"), ip("127.0.0.3")]),
        Answer::Addresses(vec![ip("127.0.0.3")]),
        Answer::ServFail,
        Answer::Addresses(vec![ip("127.0.0.2")]),
    ];
    dns.set("flap.test", answers, 0);
    let (gw, _dir) = gateway(&dns, None).await;
    let target = format!("flap.test:{port}");
    balanced(&gw, &[&target], json!({})).await;
    let url = gw.admin_url(&format!("/upstreams/pool.test/targets/{target}/127.0.0.2:{port}/unhealthy"));
    // Once both addresses have been named, one is marked unhealthy.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while target_health(&gw, &target).await["data"]["addresses"].as_array().map(Vec::len) != Some(2) {
        assert!(std::time::Instant::now() < deadline, "both addresses were never named");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(support::client(None).put(url).send().await.expect("put").status(), 204);
    let asked = dns.asked("flap.test");
    let before = servers[0].hits();
    let watching = std::time::Instant::now();
    // Eight more questions (twice round the rotation): the health endpoint never shows a flap.
    loop {
        let t = target_health(&gw, &target).await;
        assert_eq!(t["health"], "HEALTHY", "{t}");
        let states: Vec<(String, String)> = t["data"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["ip"].as_str().unwrap().to_string(), a["health"].as_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            states,
            [("127.0.0.2".to_string(), "UNHEALTHY".to_string()), ("127.0.0.3".to_string(), "HEALTHY".to_string())],
            "{t}"
        );
        assert_eq!(gw.call("/pool/x", &[]).await.status(), 200);
        if dns.asked("flap.test") >= asked + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(dns.asked("flap.test") < asked + 100, "runaway queries");
        assert!(
            watching.elapsed() < Duration::from_secs(60),
            "the name was not asked again: {}",
            dns.asked("flap.test")
        );
    }
    assert_eq!(servers[0].hits(), before, "the unhealthy address stayed out all along");
}
