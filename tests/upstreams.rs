//! Upstreams and targets through the Admin API, as a Kong user's scripts manage them: Kong 3.x
//! defaults, shorthands and messages, targets under their upstream only, with port 8000 when none is
//! given.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use serde_json::json;
use support::{Gateway, id, not_found};

#[tokio::test]
async fn an_upstream_is_created_with_every_kong_default() {
    let gw = Gateway::start().await;
    let (status, u) = gw.post("/upstreams", json!({"name": "backend.test"})).await;
    assert_eq!(status, 201, "{u}");
    assert_eq!(u["algorithm"], "round-robin");
    assert_eq!((u["hash_on"].as_str(), u["hash_fallback"].as_str()), (Some("none"), Some("none")));
    assert_eq!(u["slots"], 10000);
    assert_eq!(u["hash_on_cookie_path"], "/");
    assert_eq!(u["use_srv_name"], false);
    assert_eq!(u["host_header"], json!(null));
    let hc = &u["healthchecks"];
    assert_eq!(hc["threshold"], 0);
    assert_eq!(hc["active"]["timeout"], 1);
    assert_eq!(hc["active"]["concurrency"], 10);
    assert_eq!(hc["active"]["http_path"], "/");
    assert_eq!(hc["active"]["https_verify_certificate"], true);
    assert_eq!(hc["active"]["healthy"], json!({"interval": 0, "http_statuses": [200, 302], "successes": 0}));
    assert_eq!(
        hc["active"]["unhealthy"],
        json!({"interval": 0, "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
               "tcp_failures": 0, "timeouts": 0, "http_failures": 0})
    );
    assert_eq!(hc["passive"]["unhealthy"]["http_statuses"], json!([429, 500, 503]));
    // Read back by name, the same.
    let (status, read) = gw.get("/upstreams/backend.test").await;
    assert_eq!((status, &read), (200, &u));
}

#[tokio::test]
async fn hash_on_picks_the_algorithm_and_least_connections_takes_no_hash() {
    let gw = Gateway::start().await;
    let u = gw.create("/upstreams", json!({"name": "a", "algorithm": "round-robin", "hash_on": "ip"})).await;
    assert_eq!((u["algorithm"].as_str(), u["hash_on"].as_str()), (Some("consistent-hashing"), Some("ip")));
    let u = gw.create("/upstreams", json!({"name": "b", "algorithm": "least-connections", "hash_on": "ip"})).await;
    assert_eq!((u["algorithm"].as_str(), u["hash_on"].as_str()), (Some("least-connections"), Some("none")));
    // A form works the same.
    let (status, u) =
        gw.post_form("/upstreams", &[("name", "c"), ("hash_on", "header"), ("hash_on_header", "x-user")]).await;
    assert_eq!(status, 201, "{u}");
    assert_eq!(u["algorithm"], "consistent-hashing");
}

#[tokio::test]
async fn bad_upstreams_are_refused_with_every_field_named() {
    let gw = Gateway::start().await;
    let (status, body) = gw.post("/upstreams", json!({"name": "10.0.0.1", "slots": 5})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["name"], "schema violation");
    assert_eq!(body["fields"]["name"], "Invalid name ('10.0.0.1'); no ip addresses allowed");
    assert_eq!(body["fields"]["slots"], "value should be between 10 and 65536");
    let (_, body) = gw.post("/upstreams", json!({"name": "a.test:80"})).await;
    assert_eq!(body["fields"]["name"], "Invalid name ('a.test:80'); no port allowed");
    let (_, body) = gw.post("/upstreams", json!({"name": "h", "hash_on": "header"})).await;
    assert_eq!(body["fields"]["hash_on_header"], "required field missing", "{body}");
    assert_eq!(body["fields"]["@entity"], json!(["failed conditional validation given value of field 'hash_on'"]));
    let (_, body) = gw
        .post(
            "/upstreams",
            json!({"name": "h", "hash_on": "header", "hash_on_header": "x-a",
            "hash_fallback": "header", "hash_fallback_header": "X-A"}),
        )
        .await;
    assert_eq!(
        body["fields"]["@entity"],
        json!(["values of these fields must be distinct: 'hash_on_header', 'hash_fallback_header'"]),
        "{body}"
    );
    let (_, body) = gw
        .post(
            "/upstreams",
            json!({"name": "h", "healthchecks": {"active": {"concurrency": 0,
            "healthy": {"http_statuses": [99]}}, "threshold": 101}}),
        )
        .await;
    let hc = &body["fields"]["healthchecks"];
    assert_eq!(hc["active"]["concurrency"], "value should be between 1 and 2147483648", "{body}");
    assert_eq!(hc["active"]["healthy"]["http_statuses"], json!(["value should be between 100 and 999"]), "{body}");
    assert_eq!(hc["threshold"], "value should be between 0 and 100", "{body}");
    assert_eq!(gw.get("/upstreams").await.1["data"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn targets_live_under_their_upstream_with_port_8000_by_default() {
    let gw = Gateway::start().await;
    let up = gw.create("/upstreams", json!({"name": "backend.test"})).await;
    let (status, t) = gw.post("/upstreams/backend.test/targets", json!({"target": "10.0.0.1"})).await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["target"], "10.0.0.1:8000");
    assert_eq!(t["weight"], 100);
    assert_eq!(t["upstream"], json!({"id": id(&up)}));
    assert!(t["created_at"].is_number(), "{t}");
    let (status, v6) = gw.post("/upstreams/backend.test/targets", json!({"target": "::1", "weight": 5})).await;
    assert_eq!((status, v6["target"].as_str()), (201, Some("[::1]:8000")), "{v6}");
    // The same target again: 409.
    let (status, dup) = gw.post("/upstreams/backend.test/targets", json!({"target": "10.0.0.1:8000"})).await;
    assert_eq!(status, 409, "{dup}");
    // Bad input, every field named.
    let (status, bad) =
        gw.post("/upstreams/backend.test/targets", json!({"target": "not a host!", "weight": 70000})).await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["fields"]["target"], "Invalid target ('not a host!'); not a valid hostname or ip address");
    assert_eq!(bad["fields"]["weight"], "value should be between 0 and 65535");
    let (_, missing) = gw.post("/upstreams/backend.test/targets", json!({})).await;
    assert_eq!(missing["fields"]["target"], "required field missing", "{missing}");

    // Listed, and listed raw under /all.
    let (_, list) = gw.get("/upstreams/backend.test/targets").await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(2), "{list}");
    let (status, all) = gw.get("/upstreams/backend.test/targets/all").await;
    assert_eq!((status, all["data"].as_array().map(Vec::len)), (200, Some(2)), "{all}");

    // One target by id, by host:port, or by host alone (port 8000).
    assert_eq!(gw.get(&format!("/upstreams/backend.test/targets/{}", id(&t))).await.1, t);
    assert_eq!(gw.get("/upstreams/backend.test/targets/10.0.0.1:8000").await.1, t);
    assert_eq!(gw.get("/upstreams/backend.test/targets/10.0.0.1").await.1, t);
    let (status, patched) = gw.patch("/upstreams/backend.test/targets/10.0.0.1", json!({"weight": 200})).await;
    assert_eq!((status, patched["weight"].as_i64()), (200, Some(200)), "{patched}");
    // PUT updates; it never creates.
    let (status, put) = gw.put("/upstreams/backend.test/targets/10.0.0.1:8000", json!({"weight": 7})).await;
    assert_eq!((status, put["weight"].as_i64()), (200, Some(7)), "{put}");
    let (status, body) = gw.put("/upstreams/backend.test/targets/10.9.9.9:80", json!({"weight": 7})).await;
    assert_eq!((status, body), (404, not_found()));

    // Not in the collection's methods, and not at the top level.
    for method in [reqwest::Method::PUT, reqwest::Method::PATCH, reqwest::Method::DELETE] {
        let r = support::client(None)
            .request(method.clone(), gw.admin_url("/upstreams/backend.test/targets"))
            .json(&json!({"target": "10.0.0.2"}))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 405, "{method}");
        assert_eq!(r.json::<serde_json::Value>().await.expect("json"), json!({"message": "Method not allowed"}));
    }
    assert_eq!(gw.get("/targets").await, (404, not_found()));
    assert_eq!(gw.get(&format!("/targets/{}", id(&t))).await, (404, not_found()));

    // A target of another upstream is not found here.
    gw.create("/upstreams", json!({"name": "other.test"})).await;
    assert_eq!(gw.get(&format!("/upstreams/other.test/targets/{}", id(&t))).await, (404, not_found()));

    // Deleted one by one, or with their upstream.
    assert_eq!(gw.delete("/upstreams/backend.test/targets/[::1]:8000").await, 204);
    assert_eq!(gw.delete("/upstreams/backend.test").await, 204);
    assert_eq!(gw.get(&format!("/upstreams/other.test/targets/{}", id(&t))).await.0, 404);
    let (status, _) = gw.post("/upstreams/backend.test/targets", json!({"target": "10.0.0.1"})).await;
    assert_eq!(status, 404, "the upstream is gone");
}

/// `PUT /upstreams/backend.test/targets/{target}/{health}`: its status.
async fn set_health(gw: &Gateway, target: &str, health: &str) -> (u16, serde_json::Value) {
    let url = gw.admin_url(&format!("/upstreams/backend.test/targets/{target}/{health}"));
    let r = support::client(None).put(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, support::gateway_json(r).await)
}

/// Three upstream servers behind one upstream name, weights 1:2:3, and a route to a service that
/// names the upstream (its own port is ignored). Returns once the route answers.
async fn balanced(gw: &Gateway, weights: [u32; 3], upstream: serde_json::Value) -> Vec<support::upstream::Upstream> {
    let servers = vec![
        support::upstream::Upstream::start().await,
        support::upstream::Upstream::start().await,
        support::upstream::Upstream::start().await,
    ];
    gw.create("/upstreams", upstream).await;
    for (server, weight) in servers.iter().zip(weights) {
        let target = json!({"target": format!("127.0.0.1:{}", server.port()), "weight": weight});
        gw.create("/upstreams/backend.test/targets", target).await;
    }
    gw.create("/services", json!({"name": "lb", "host": "backend.test", "port": 1})).await;
    gw.create("/services/lb/routes", json!({"paths": ["/lb"]})).await;
    let ready = gw.eventually("/lb/ready", &[], std::time::Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(ready.status(), 200, "the balanced route did not go live");
    servers
}

#[tokio::test]
async fn round_robin_spreads_requests_by_weight_and_sends_the_targets_host() {
    let gw = Gateway::start().await;
    let servers = balanced(&gw, [1, 2, 3], json!({"name": "backend.test"})).await;
    let before: Vec<usize> = servers.iter().map(|s| s.hits()).collect();
    let (status, echo) = support::status_json(gw.call("/lb/host", &[]).await).await;
    assert_eq!(status, 200);
    let host = echo["headers"]["host"].as_str().expect("host").to_string();
    assert!(servers.iter().any(|s| host == format!("127.0.0.1:{}", s.port())), "Host is the target's: {host}");
    for _ in 0..1199 {
        assert_eq!(gw.call("/lb/spread", &[]).await.status(), 200);
    }
    // Each worker keeps its own place in the wheel: the shares are exact per worker, and within
    // 1% of the requests over all of them.
    let shares: Vec<usize> = servers.iter().zip(&before).map(|(s, b)| s.hits() - b).collect();
    for (share, expected) in shares.iter().zip([200usize, 400, 600]) {
        assert!(share.abs_diff(expected) <= 12, "1200 requests over weights 1:2:3: {shares:?}");
    }
}

#[tokio::test]
async fn a_target_marked_unhealthy_gets_no_traffic_and_stays_so_when_another_is_added() {
    let gw = Gateway::start().await;
    // Passive checks on: health can be set by hand.
    let upstream = json!({"name": "backend.test",
        "healthchecks": {"passive": {"unhealthy": {"http_failures": 3}}}});
    let servers = balanced(&gw, [1, 1, 1], upstream).await;
    let down = format!("127.0.0.1:{}", servers[0].port());
    assert_eq!(set_health(&gw, &down, "unhealthy").await.0, 204);
    let before = servers[0].hits();
    for _ in 0..30 {
        assert_eq!(gw.call("/lb/x", &[]).await.status(), 200);
    }
    assert_eq!(servers[0].hits(), before, "the unhealthy target got traffic");

    // Another target added: the first keeps its health.
    let fourth = support::upstream::Upstream::start().await;
    let fourth_target = json!({"target": format!("127.0.0.1:{}", fourth.port()), "weight": 1});
    gw.create("/upstreams/backend.test/targets", fourth_target).await;
    let live = gw.eventually("/lb/fourth", &[], std::time::Duration::from_secs(10), |_| fourth.hits() > 0).await;
    assert_eq!(live.status(), 200);
    for _ in 0..30 {
        gw.call("/lb/y", &[]).await;
    }
    assert_eq!(servers[0].hits(), before, "health was reset by the configuration change");

    // Healthy again by hand.
    assert_eq!(set_health(&gw, &down, "healthy").await.0, 204);
    for _ in 0..30 {
        let st = gw.call("/lb/z", &[]).await.status();
        assert_eq!(st, 200);
    }
    assert!(servers[0].hits() > before, "the recovered target got no traffic");
}

#[tokio::test]
async fn health_cannot_be_set_without_health_checks_and_no_healthy_target_is_a_503() {
    let gw = Gateway::start().await;
    let servers = balanced(&gw, [1, 1, 1], json!({"name": "backend.test"})).await;
    let target = format!("127.0.0.1:{}", servers[0].port());
    let refused = set_health(&gw, &target, "unhealthy").await;
    assert_eq!(refused, (400, json!({"message": "no healthchecker found for backend.test"})));
    assert_eq!(set_health(&gw, "10.9.9.9:1", "unhealthy").await.0, 404);

    // Every target down: Kong's 503.
    gw.patch("/upstreams/backend.test", json!({"healthchecks": {"passive": {"unhealthy": {"timeouts": 2}}}})).await;
    for s in &servers {
        // The PATCH answered once the node's snapshot has it: checks are on.
        assert_eq!(set_health(&gw, &format!("127.0.0.1:{}", s.port()), "unhealthy").await.0, 204);
    }
    let (status, body) = support::status_json(gw.call("/lb/none", &[]).await).await;
    assert_eq!((status, body), (503, json!({"message": "failure to get a peer from the ring-balancer"})));
}

#[tokio::test]
async fn a_request_that_fails_on_one_target_is_retried_on_another() {
    let gw = Gateway::start().await;
    let mut servers = balanced(&gw, [1, 1, 1], json!({"name": "backend.test"})).await;
    // One target stops: its connections are refused, and every request still succeeds.
    drop(servers.remove(0));
    for _ in 0..20 {
        let r = gw.call("/lb/retry", &[]).await;
        let st = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(st, 200, "{body}");
    }
    assert!(servers.iter().all(|s| s.hits() > 1), "both live targets took the retries");
}

/// Which of `servers` took a request since their hit counts were `before`.
fn answered(servers: &[support::upstream::Upstream], before: &[usize]) -> Option<usize> {
    servers.iter().zip(before).position(|(s, b)| s.hits() > *b)
}

#[tokio::test]
async fn consistent_hashing_on_a_header_sends_each_value_to_one_target() {
    let gw = Gateway::start().await;
    let upstream = json!({"name": "backend.test", "hash_on": "header", "hash_on_header": "x-user"});
    let servers = balanced(&gw, [1, 1, 1], upstream).await;
    let mut owners = std::collections::HashMap::new();
    let mut used = std::collections::HashSet::new();
    for round in 0..3 {
        for user in 0..30 {
            let before: Vec<usize> = servers.iter().map(|s| s.hits()).collect();
            let value = format!("user-{user}");
            assert_eq!(gw.call("/lb/h", &[("x-user", &value)]).await.status(), 200);
            let owner = answered(&servers, &before).expect("a target answered");
            used.insert(owner);
            if round == 0 {
                owners.insert(user, owner);
            } else {
                assert_eq!(owners[&user], owner, "{value} moved");
            }
        }
    }
    assert_eq!(used.len(), 3, "30 users over 3 targets use them all");
}

#[tokio::test]
async fn hashing_on_a_missing_cookie_sets_one_and_the_client_sticks_to_its_target() {
    let gw = Gateway::start().await;
    let upstream = json!({"name": "backend.test", "hash_on": "cookie", "hash_on_cookie": "sticky",
        "hash_on_cookie_path": "/lb"});
    let servers = balanced(&gw, [1, 1, 1], upstream).await;
    let r = gw.call("/lb/first", &[]).await;
    let set = r.headers().get("set-cookie").and_then(|v| v.to_str().ok()).expect("a cookie was set").to_string();
    let value = set.strip_prefix("sticky=").and_then(|v| v.split(';').next()).expect("sticky=<uuid>").to_string();
    assert_eq!(value.len(), 36, "{set}");
    assert!(set.ends_with("; Path=/lb; Same-Site=Lax; HttpOnly"), "{set}");
    let cookie = format!("sticky={value}");
    // An upstream's own cookie of that name gives way to Kong's; its others stay.
    let r = gw.call("/lb/set-cookie/sticky=from-upstream", &[]).await;
    let set: Vec<&str> = r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).collect();
    assert_eq!(set.iter().filter(|c| c.starts_with("sticky=")).count(), 1, "{set:?}");
    assert!(!set.iter().any(|c| c.starts_with("sticky=from-upstream")), "{set:?}");
    assert!(set.contains(&"other=1"), "{set:?}");
    let before: Vec<usize> = servers.iter().map(|s| s.hits()).collect();
    let r = gw.call("/lb/again", &[("cookie", &cookie)]).await;
    assert!(r.headers().get("set-cookie").is_none(), "a client with the cookie gets none");
    let owner = answered(&servers, &before).expect("answered");
    for _ in 0..10 {
        let before: Vec<usize> = servers.iter().map(|s| s.hits()).collect();
        gw.call("/lb/again", &[("cookie", &cookie)]).await;
        assert_eq!(answered(&servers, &before), Some(owner));
    }
}

#[tokio::test]
async fn least_connections_sends_new_requests_away_from_the_target_busy_with_slow_ones() {
    // Each worker counts its own requests, as each of Kong's nginx workers does: one worker here.
    let opts = support::Options { extra: vec![("TOLLGATE_WORKER_THREADS".into(), "1".into())], ..Default::default() };
    let gw = Gateway::start_with(opts).await;
    let upstream = json!({"name": "backend.test", "algorithm": "least-connections"});
    let servers = balanced(&gw, [1, 1, 1], upstream).await;
    // One slow request keeps a target busy; the quick ones meanwhile all go to the other two
    // (round-robin would send a third of them to the busy one).
    let before: Vec<usize> = servers.iter().map(|s| s.hits()).collect();
    // Busy long enough for the quick requests to finish first on a loaded machine.
    let slow = gw.call("/lb/delay/5000", &[]);
    let quick = async {
        let busy = loop {
            if let Some(busy) = answered(&servers, &before) {
                break busy;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        let during: Vec<usize> = servers.iter().map(|s| s.hits()).collect();
        for _ in 0..12 {
            assert_eq!(gw.call("/lb/quick", &[]).await.status(), 200);
        }
        let after: Vec<usize> = servers.iter().map(|s| s.hits()).collect();
        (busy, during, after)
    };
    let (slow, (busy, during, after)) = tokio::join!(slow, quick);
    assert_eq!(slow.status(), 200);
    assert_eq!(after[busy], during[busy], "the busy target got quick requests: {during:?} -> {after:?}");
    let others: usize = (0..3).filter(|i| *i != busy).map(|i| after[i] - during[i]).sum();
    assert_eq!(others, 12);
}

/// A server that answers every request with `status` (and counts them): a target gone bad.
async fn answering(status: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (port, hits, _) = switchable(status, std::time::Duration::ZERO).await;
    (port, hits)
}

type Shared<T> = std::sync::Arc<T>;

/// A server that answers every request, after `delay`, with the status held in the returned cell
/// (changed at will), counting requests.
async fn switchable(
    status: u16,
    delay: std::time::Duration,
) -> (u16, Shared<std::sync::atomic::AtomicUsize>, Shared<std::sync::atomic::AtomicU16>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let cell = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(status));
    let current = cell.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let hits = counted.clone();
            let current = current.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        let status = current.load(std::sync::atomic::Ordering::SeqCst);
                        let answer = format!("HTTP/1.1 {status} Status\r\ncontent-length: 0\r\n\r\n");
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, hits, cell)
}

#[tokio::test]
async fn passive_checks_take_a_target_that_answers_500_out_after_its_failures() {
    let gw = Gateway::start().await;
    let upstream = json!({"name": "backend.test",
        "healthchecks": {"passive": {"unhealthy": {"http_failures": 2}}}});
    let servers = balanced(&gw, [1, 1, 1], upstream).await;
    let (bad, bad_hits) = answering(500).await;
    gw.create("/upstreams/backend.test/targets", json!({"target": format!("127.0.0.1:{bad}"), "weight": 1})).await;
    let reached = gw
        .eventually("/lb/bad", &[], std::time::Duration::from_secs(10), |_| {
            bad_hits.load(std::sync::atomic::Ordering::SeqCst) >= 2
        })
        .await;
    // The second 500 is the client's answer: passive checks count answers, they do not retry them.
    assert_eq!(reached.status(), 500);
    // Two 500s: out. Nothing more reaches it, every answer is a 200.
    let before = bad_hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(before, 2);
    for _ in 0..40 {
        assert_eq!(gw.call("/lb/after", &[]).await.status(), 200);
    }
    assert_eq!(bad_hits.load(std::sync::atomic::Ordering::SeqCst), 2, "an unhealthy target got traffic");
    assert!(servers.iter().all(|s| s.hits() > 10));
    gw.wait_for_log("target is now unhealthy", 1, std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn active_checks_take_a_failing_target_out_and_bring_it_back_after_its_successes() {
    let gw = Gateway::start().await;
    let upstream = json!({"name": "backend.test", "healthchecks": {"active": {"http_path": "/status",
        "healthy": {"interval": 0.2, "successes": 2},
        "unhealthy": {"interval": 0.2, "http_failures": 2}}}});
    let servers = balanced(&gw, [1, 1, 1], upstream).await;
    let (port, hits, status) = switchable(500, std::time::Duration::ZERO).await;
    gw.create("/upstreams/backend.test/targets", json!({"target": format!("127.0.0.1:{port}"), "weight": 1})).await;
    // Probed (GET /status, answered 500) until it is out.
    gw.wait_for_log("target is now unhealthy", 1, std::time::Duration::from_secs(10)).await;
    let (before, since) = (hits.load(std::sync::atomic::Ordering::SeqCst), std::time::Instant::now());
    for _ in 0..20 {
        assert_eq!(gw.call("/lb/out", &[]).await.status(), 200);
    }
    let reached = hits.load(std::sync::atomic::Ordering::SeqCst) - before;
    // One probe per 0.2 s, plus the one that may have been on its way when counting began.
    let probes = (since.elapsed().as_secs_f64() / 0.2) as usize + 2;
    assert!(reached <= probes, "only probes (one per 0.2 s) reach an unhealthy target: {reached} requests");
    // It recovers: two successful probes bring it back, and traffic follows.
    status.store(200, std::sync::atomic::Ordering::SeqCst);
    gw.wait_for_log("target is now healthy", 1, std::time::Duration::from_secs(10)).await;
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..40 {
        assert_eq!(gw.call("/lb/back", &[]).await.status(), 200);
    }
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) - before >= 8, "the recovered target got no traffic");
    assert!(servers.iter().all(|s| s.hits() > 5));
}

#[tokio::test]
async fn the_health_endpoint_reports_each_target_and_the_balancer_as_kong_does() {
    let gw = Gateway::start().await;
    let upstream = json!({"name": "backend.test", "healthchecks": {"passive": {"unhealthy": {"tcp_failures": 1}}}});
    let servers = balanced(&gw, [1, 1, 1], upstream).await;
    let down = format!("127.0.0.1:{}", servers[1].port());
    assert_eq!(set_health(&gw, &down, "unhealthy").await.0, 204);
    gw.create("/upstreams/backend.test/targets", json!({"target": "127.0.0.9:80", "weight": 0})).await;
    let (status, body) = gw.get("/upstreams/backend.test/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["node_id"].is_string() && body["next"].is_null(), "{body}");
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 4, "{body}");
    let by_target = |t: &str| data.iter().find(|d| d["target"] == t).unwrap_or_else(|| panic!("{t} in {body}"));
    let up = by_target(&format!("127.0.0.1:{}", servers[0].port()));
    assert_eq!(up["health"], "HEALTHY");
    assert_eq!(up["weight"], 1);
    assert_eq!(up["data"]["dns"], "A");
    assert_eq!(up["data"]["weight"], json!({"total": 1, "available": 1, "unavailable": 0}));
    assert_eq!(up["data"]["addresses"][0]["health"], "HEALTHY");
    assert_eq!(up["data"]["addresses"][0]["ip"], "127.0.0.1");
    let out = by_target(&down);
    assert_eq!(out["health"], "UNHEALTHY");
    assert_eq!(out["data"]["weight"], json!({"total": 1, "available": 0, "unavailable": 1}));
    // Weight 0: listed, never checked.
    assert_eq!(by_target("127.0.0.9:80")["data"]["addresses"][0]["health"], "HEALTHCHECKS_OFF");

    let (status, view) = gw.get("/upstreams/backend.test/health?balancer_health=1").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["data"]["health"], "HEALTHY");
    assert_eq!(view["data"]["balancer_health"], "HEALTHY");
    assert_eq!(view["data"]["details"]["weight"], json!({"total": 3, "available": 2, "unavailable": 1}));
    assert_eq!(view["data"]["details"]["hosts"].as_array().map(Vec::len), Some(4));

    // Without health checks, every address is HEALTHCHECKS_OFF.
    gw.create("/upstreams", json!({"name": "plain.test"})).await;
    gw.create("/upstreams/plain.test/targets", json!({"target": "127.0.0.1:1"})).await;
    let (_, plain) = gw.get("/upstreams/plain.test/health").await;
    assert_eq!(plain["data"][0]["health"], "HEALTHCHECKS_OFF", "{plain}");
    let (_, view) = gw.get("/upstreams/plain.test/health?balancer_health=1").await;
    assert_eq!(
        (view["data"]["health"].as_str(), view["data"]["balancer_health"].as_str()),
        (Some("HEALTHCHECKS_OFF"), Some("HEALTHY"))
    );
    assert_eq!(gw.get("/upstreams/nothing.test/health").await.0, 404);
}

#[tokio::test]
async fn latency_balancing_sends_most_requests_to_the_fast_targets() {
    let opts = support::Options { extra: vec![("TOLLGATE_WORKER_THREADS".into(), "1".into())], ..Default::default() };
    let gw = Gateway::start_with(opts).await;
    let servers = balanced(&gw, [1, 1, 1], json!({"name": "backend.test", "algorithm": "latency"})).await;
    // Far slower than a loaded machine makes the others.
    let (slow, slow_hits, _) = switchable(200, std::time::Duration::from_millis(250)).await;
    gw.create("/upstreams/backend.test/targets", json!({"target": format!("127.0.0.1:{slow}"), "weight": 1})).await;
    let reached = gw
        .eventually("/lb/slow", &[], std::time::Duration::from_secs(10), |_| {
            slow_hits.load(std::sync::atomic::Ordering::SeqCst) > 0
        })
        .await;
    assert_eq!(reached.status(), 200);
    let (before, fast_before) =
        (slow_hits.load(std::sync::atomic::Ordering::SeqCst), servers.iter().map(|s| s.hits()).sum::<usize>());
    for _ in 0..60 {
        assert_eq!(gw.call("/lb/measured", &[]).await.status(), 200);
    }
    let slow_share = slow_hits.load(std::sync::atomic::Ordering::SeqCst) - before;
    let fast_share = servers.iter().map(|s| s.hits()).sum::<usize>() - fast_before;
    assert!(slow_share <= 3, "the 250 ms target took {slow_share} of 60 requests (the fast ones {fast_share})");
}

#[tokio::test]
async fn hashing_on_a_uri_capture_sends_each_captured_value_to_one_target() {
    let gw = Gateway::start().await;
    let upstream = json!({"name": "backend.test", "hash_on": "uri_capture", "hash_on_uri_capture": "user"});
    let servers = balanced(&gw, [1, 1, 1], upstream).await;
    gw.create("/services/lb/routes", json!({"paths": ["~/users/(?<user>[a-z0-9-]+)"]})).await;
    let live = gw.eventually("/users/x", &[], std::time::Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(live.status(), 200);
    let mut owners = std::collections::HashMap::new();
    let mut used = std::collections::HashSet::new();
    for round in 0..2 {
        for user in 0..30 {
            let before: Vec<usize> = servers.iter().map(|s| s.hits()).collect();
            // Different suffixes, the same capture: the same target.
            assert_eq!(gw.call(&format!("/users/u{user}/r{round}"), &[]).await.status(), 200);
            let owner = answered(&servers, &before).expect("answered");
            used.insert(owner);
            assert_eq!(*owners.entry(user).or_insert(owner), owner, "u{user} moved");
        }
    }
    assert_eq!(used.len(), 3);
}

#[tokio::test]
async fn health_set_by_hand_on_one_node_reaches_every_node_sharing_postgres() {
    let pg = support::PgDatabase::fresh();
    let db = support::Db::Postgres(pg.name.clone());
    let a = Gateway::start_with(support::Options { db: db.clone(), ..Default::default() }).await;
    let b = Gateway::start_with(support::Options { db, ..Default::default() }).await;
    let upstream = json!({"name": "backend.test", "healthchecks": {"passive": {"unhealthy": {"timeouts": 3}}}});
    let servers = balanced(&a, [1, 1, 1], upstream).await;
    let live = b.eventually("/lb/b", &[], std::time::Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(live.status(), 200, "node b follows the configuration");
    let down = format!("127.0.0.1:{}", servers[2].port());
    assert_eq!(set_health(&a, &down, "unhealthy").await.0, 204);
    // Node b applies it within its next looks: then none of its requests reach the target.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let before = servers[2].hits();
        for _ in 0..9 {
            assert_eq!(b.call("/lb/b", &[]).await.status(), 200);
        }
        if servers[2].hits() == before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node b kept sending to the target set unhealthy on node a");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // And back.
    assert_eq!(set_health(&a, &down, "healthy").await.0, 204);
    let before = servers[2].hits();
    let back = b.eventually("/lb/back", &[], std::time::Duration::from_secs(10), |_| servers[2].hits() > before).await;
    assert_eq!(back.status(), 200);
    assert!(servers[2].hits() > before, "node b never sent to the target again");
}
