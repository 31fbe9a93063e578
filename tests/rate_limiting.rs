//! Rate limiting, black-box: the `rate-limiting` and `rate-limiting-advanced` plugins configured
//! through the Admin API, counting per node, in Redis (a test's own server, stopped to stage an
//! outage) and in PostgreSQL, with Kong's headers, 429 and validation errors.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Db, Gateway, Options, PgDatabase, RedisServer, Upstream, fit_in_window};

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A route `/limited` to the echo upstream with one plugin on it.
async fn limited(gw: &Gateway, up: &Upstream, plugin: Value) -> Value {
    gw.service_and_route(up, "svc", json!({"name": "limited", "paths": ["/limited"]})).await;
    gw.create("/routes/limited/plugins", plugin).await
}

async fn body(r: reqwest::Response) -> Value {
    support::gateway_json(r).await
}

#[tokio::test]
async fn a_client_over_its_minute_limit_gets_429_with_kongs_headers() {
    let (gw, up) = (Gateway::start().await, Upstream::start().await);
    limited(&gw, &up, json!({"name": "rate-limiting", "config": {"minute": 3, "limit_by": "ip"}})).await;
    fit_in_window(60, 5).await;
    for remaining in ["2", "1", "0"] {
        let r = gw.call("/limited", &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-minute").as_deref(), Some("3"));
        assert_eq!(header(&r, "x-ratelimit-remaining-minute").as_deref(), Some(remaining));
        assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("3"));
        assert_eq!(header(&r, "ratelimit-remaining").as_deref(), Some(remaining));
        let reset: u64 = header(&r, "ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
        assert_eq!(header(&r, "retry-after"), None);
    }
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-ratelimit-remaining-minute").as_deref(), Some("0"));
    assert_eq!(header(&r, "ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(header(&r, "retry-after"), header(&r, "ratelimit-reset"));
    assert_eq!(body(r).await, json!({"message": "API rate limit exceeded"}));
    assert_eq!(up.hits(), 3, "the rejected request never reached the upstream");
}

#[tokio::test]
async fn several_periods_report_each_and_the_tightest_in_ratelimit_headers() {
    let (gw, up) = (Gateway::start().await, Upstream::start().await);
    let config = json!({"second": 2, "minute": 5, "hour": 5, "limit_by": "ip"});
    limited(&gw, &up, json!({"name": "rate-limiting", "config": config})).await;
    // Three requests within one second, early in a minute.
    fit_in_window(60, 3).await;
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_millis();
    if ms > 500 {
        tokio::time::sleep(Duration::from_millis(u64::from(1000 - ms) + 20)).await;
    }
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-second").as_deref(), Some("2"));
    assert_eq!(header(&r, "x-ratelimit-remaining-second").as_deref(), Some("1"));
    assert_eq!(header(&r, "x-ratelimit-limit-minute").as_deref(), Some("5"));
    assert_eq!(header(&r, "x-ratelimit-remaining-minute").as_deref(), Some("4"));
    assert_eq!(header(&r, "x-ratelimit-remaining-hour").as_deref(), Some("4"));
    assert_eq!(header(&r, "ratelimit-limit").as_deref(), Some("2"), "the second is the tightest");
    assert_eq!(header(&r, "ratelimit-remaining").as_deref(), Some("1"));
    assert_eq!(header(&r, "ratelimit-reset").as_deref(), Some("1"));
    assert_eq!(gw.call("/limited", &[]).await.status(), 200);
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 429);
    // Only the exceeded period is charged on a rejection.
    assert_eq!(header(&r, "x-ratelimit-remaining-second").as_deref(), Some("0"));
    assert_eq!(header(&r, "x-ratelimit-remaining-minute").as_deref(), Some("3"));
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));

    // Equal remaining counts: the longer window is reported.
    gw.create("/services", json!({"name": "tie", "url": up.url("")})).await;
    gw.create("/services/tie/routes", json!({"name": "tie", "paths": ["/tie"]})).await;
    let config = json!({"minute": 5, "hour": 5, "limit_by": "ip"});
    gw.create("/routes/tie/plugins", json!({"name": "rate-limiting", "config": config})).await;
    let r = gw.call("/tie", &[]).await;
    let reset: u64 = header(&r, "ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > 60 || support::into_window(3600) >= 3540, "the hour's reset, not the minute's: {reset}");
}

#[tokio::test]
async fn the_window_rolls_over_on_the_clock() {
    let (gw, up) = (Gateway::start().await, Upstream::start().await);
    limited(&gw, &up, json!({"name": "rate-limiting", "config": {"second": 2, "limit_by": "ip"}})).await;
    fit_in_window(1, 1).await;
    // Up to the limit in one second (retrying if the second happened to turn mid-way).
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(gw.call("/limited", &[]).await.status().as_u16());
    }
    assert!(statuses.contains(&429) || statuses == [200, 200, 200], "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 200, "a new second starts from zero");
    assert_eq!(header(&r, "x-ratelimit-remaining-second").as_deref(), Some("1"));
}

#[tokio::test]
async fn hidden_headers_and_a_custom_rejection() {
    let (gw, up) = (Gateway::start().await, Upstream::start().await);
    let config = json!({"minute": 1, "limit_by": "ip", "hide_client_headers": true, "error_code": 503, "error_message": "slow down"});
    limited(&gw, &up, json!({"name": "rate-limiting", "config": config})).await;
    fit_in_window(60, 3).await;
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().keys().all(|k| !k.as_str().contains("ratelimit")), "{:?}", r.headers());
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "x-ratelimit-remaining-minute"), None);
    assert_eq!(header(&r, "retry-after"), None, "no rate-limit header at all");
    assert!(r.headers().keys().all(|k| !k.as_str().contains("ratelimit")), "{:?}", r.headers());
    assert_eq!(body(r).await, json!({"message": "slow down"}));
}

#[tokio::test]
async fn consumers_header_values_and_paths_are_counted_apart() {
    let (gw, up) = (Gateway::start().await, Upstream::start().await);
    limited(&gw, &up, json!({"name": "key-auth"})).await;
    gw.create("/routes/limited/plugins", json!({"name": "rate-limiting", "config": {"minute": 1}})).await;
    for who in ["ann", "bob"] {
        gw.create("/consumers", json!({"username": who})).await;
        gw.create(&format!("/consumers/{who}/key-auth"), json!({"key": format!("{who}-key")})).await;
    }
    fit_in_window(60, 5).await;
    assert_eq!(gw.call("/limited", &[("apikey", "ann-key")]).await.status(), 200);
    assert_eq!(gw.call("/limited", &[("apikey", "ann-key")]).await.status(), 429, "limit_by consumer");
    assert_eq!(gw.call("/limited", &[("apikey", "bob-key")]).await.status(), 200, "bob has his own counter");

    let up2 = Upstream::start().await;
    gw.create("/services", json!({"name": "h", "url": up2.url("")})).await;
    gw.create("/services/h/routes", json!({"name": "by-header", "paths": ["/by-header"]})).await;
    let cfg = json!({"minute": 1, "limit_by": "header", "header_name": "x-tenant"});
    gw.create("/routes/by-header/plugins", json!({"name": "rate-limiting", "config": cfg})).await;
    assert_eq!(gw.call("/by-header", &[("x-tenant", "a")]).await.status(), 200);
    assert_eq!(gw.call("/by-header", &[("x-tenant", "a")]).await.status(), 429);
    assert_eq!(gw.call("/by-header", &[("x-tenant", "b")]).await.status(), 200);
}

#[tokio::test]
async fn bad_rate_limiting_configs_are_refused_with_every_field_listed() {
    let gw = Gateway::start().await;
    let (status, err) = gw.post("/plugins", json!({"name": "rate-limiting", "config": {}})).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], 2);
    assert_eq!(
        err["fields"]["@entity"][0],
        "at least one of these fields must be non-empty: 'config.second', 'config.minute', 'config.hour', 'config.day', 'config.month', 'config.year'"
    );

    let bad = json!({"minute": -1, "hour": 0, "limit_by": "planet", "policy": "redis"});
    let (status, err) = gw.post("/plugins", json!({"name": "rate-limiting", "config": bad})).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["fields"]["config"]["minute"], "value must be greater than 0");
    assert_eq!(err["fields"]["config"]["hour"], "value must be greater than 0");
    assert!(err["fields"]["config"]["limit_by"].as_str().unwrap().starts_with("expected one of: consumer"), "{err}");
    assert_eq!(err["fields"]["config"]["redis"]["host"], "required field missing", "{err}");

    let (status, err) =
        gw.post("/plugins", json!({"name": "rate-limiting", "config": {"minute": 20, "hour": 10}})).await;
    assert_eq!(status, 400);
    // Kong's custom validator of `config`: the message is the `config` field's.
    assert_eq!(err["fields"]["config"], "The limit for hour(10.0) cannot be lower than the limit for minute(20.0)");

    let cfg = json!({"limit": [10, 100], "window_size": [60], "identifier": "header"});
    let (status, err) = gw.post("/plugins", json!({"name": "rate-limiting-advanced", "config": cfg})).await;
    assert_eq!(status, 400, "{err}");
    let entity = err["fields"]["@entity"].to_string();
    assert!(entity.contains("You must provide the same number of windows and limits"), "{err}");
    assert_eq!(err["fields"]["config"]["header_name"], "required field missing", "{err}");
    let (status, _) = gw.get("/plugins").await;
    assert_eq!(status, 200);
    assert_eq!(gw.get("/plugins").await.1["data"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn rate_limiting_advanced_reports_per_window_headers() {
    let (gw, up) = (Gateway::start().await, Upstream::start().await);
    let cfg = json!({"limit": [2, 100], "window_size": [60, 3600], "window_type": "fixed", "identifier": "ip"});
    let plugin = limited(&gw, &up, json!({"name": "rate-limiting-advanced", "config": cfg})).await;
    assert_eq!(plugin["config"]["namespace"].as_str().map(str::len), Some(32), "{plugin}");
    fit_in_window(60, 5).await;
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit-60").as_deref(), Some("2"));
    assert_eq!(header(&r, "x-ratelimit-remaining-60").as_deref(), Some("1"));
    assert_eq!(header(&r, "x-ratelimit-limit-3600").as_deref(), Some("100"));
    assert_eq!(header(&r, "x-ratelimit-remaining-3600").as_deref(), Some("99"));
    assert_eq!(gw.call("/limited", &[]).await.status(), 200);
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
}

#[tokio::test]
async fn two_nodes_sharing_redis_let_exactly_the_limit_through() {
    let redis = RedisServer::start().await;
    let db = PgDatabase::fresh();
    let opts = Options { db: Db::Postgres(db.name.clone()), ..Options::default() };
    let (a, b, up) =
        (Gateway::start_with(opts.clone()).await, Gateway::start_with(opts).await, Upstream::start().await);
    let cfg = json!({
        "minute": 100, "limit_by": "header", "header_name": "x-client",
        "policy": "redis", "redis": {"host": "127.0.0.1", "port": redis.port}
    });
    limited(&a, &up, json!({"name": "rate-limiting", "config": cfg})).await;
    let probe = [("x-client", "probe")];
    let live = b
        .eventually("/limited", &probe, Duration::from_secs(5), |r| {
            r.headers().contains_key("x-ratelimit-limit-minute")
        })
        .await;
    assert_eq!(live.status(), 200, "node b serves the plugin");
    fit_in_window(60, 20).await;
    let client = uuid::Uuid::new_v4().to_string();
    let mut passed = 0;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let node = if i % 2 == 0 { a.proxy_url("/limited") } else { b.proxy_url("/limited") };
        let request = a.http.get(node).header("x-client", client.as_str());
        tasks.push(tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }));
        if tasks.len() == 20 {
            for t in tasks.drain(..) {
                passed += usize::from(t.await.unwrap() == 200);
            }
        }
    }
    for t in tasks {
        passed += usize::from(t.await.unwrap() == 200);
    }
    assert_eq!(passed, 100, "exactly the limit of 300 interleaved requests passed");
}

#[tokio::test]
async fn a_redis_outage_lets_traffic_through_when_fault_tolerant_and_fails_closed_otherwise() {
    let mut redis = RedisServer::start().await;
    let (gw, up) = (Gateway::start().await, Upstream::start().await);
    let redis_cfg = json!({"host": "127.0.0.1", "port": redis.port, "timeout": 200});
    let plugin = limited(
        &gw,
        &up,
        json!({"name": "rate-limiting", "config": {"minute": 1000, "limit_by": "ip", "policy": "redis", "redis": redis_cfg}}),
    )
    .await;
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-remaining-minute").as_deref(), Some("999"));

    redis.stop();
    for _ in 0..5 {
        let r = gw.call("/limited", &[]).await;
        assert_eq!(r.status(), 200, "fault_tolerant lets traffic through");
        assert_eq!(header(&r, "x-ratelimit-remaining-minute"), None);
    }
    let logged = gw.logs().matches("Redis unavailable").count();
    assert_eq!(logged, 1, "logged once per interval:\n{}", gw.logs());

    let pid = plugin["id"].as_str().unwrap();
    let (status, _) = gw.patch(&format!("/plugins/{pid}"), json!({"config": {"fault_tolerant": false}})).await;
    assert_eq!(status, 200);
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 500);
    assert_eq!(body(r).await, json!({"message": "An unexpected error occurred"}));

    redis.restart().await;
    let r = gw.eventually("/limited", &[], Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(r.status(), 200, "Redis is used again without a restart");
    assert!(header(&r, "x-ratelimit-remaining-minute").is_some());
}

#[tokio::test]
async fn the_cluster_policy_shares_counts_through_the_database() {
    let db = PgDatabase::fresh();
    let opts = Options { db: Db::Postgres(db.name.clone()), ..Options::default() };
    let (a, b, up) =
        (Gateway::start_with(opts.clone()).await, Gateway::start_with(opts).await, Upstream::start().await);
    fit_in_window(60, 15).await;
    let cfg = json!({"minute": 5, "limit_by": "ip", "policy": "cluster", "sync_rate": 0.1});
    limited(&a, &up, json!({"name": "rate-limiting", "config": cfg})).await;
    for _ in 0..4 {
        assert_eq!(a.call("/limited", &[]).await.status(), 200);
    }
    // Node b's first hit on this counter passes; once it has synced it knows node a's four too.
    let r = b
        .eventually("/limited", &[], Duration::from_secs(5), |r| r.headers().contains_key("x-ratelimit-limit-minute"))
        .await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(b.call("/limited", &[]).await.status(), 429, "4 on node a + 1 on node b = the limit");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(a.call("/limited", &[]).await.status(), 429, "and node a sees node b's");
    let rows = support::psql(&db.name, "SELECT count(*) FROM ratelimiting_counters");
    assert_eq!(rows.trim(), "1", "one counter row for the minute");
}

#[tokio::test]
async fn with_a_sync_rate_redis_counters_are_flushed_in_batches() {
    let redis = RedisServer::start().await;
    let (gw, up) = (Gateway::start().await, Upstream::start().await);
    let namespace = format!("batched-{}", uuid::Uuid::new_v4().simple());
    let cfg = json!({
        "limit": [1000], "window_size": [3600], "window_type": "fixed", "identifier": "ip",
        "strategy": "redis", "sync_rate": 0.1, "namespace": namespace,
        "redis": {"host": "127.0.0.1", "port": redis.port}
    });
    limited(&gw, &up, json!({"name": "rate-limiting-advanced", "config": cfg})).await;
    fit_in_window(3600, 5).await;
    for _ in 0..7 {
        assert_eq!(gw.call("/limited", &[]).await.status(), 200);
    }
    let pattern = format!("tollgate:ratelimit:{namespace}:*");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let key = loop {
        let keys = redis.cli(&["--scan", "--pattern", &pattern]);
        if let Some(k) = keys.lines().next().filter(|k| !k.is_empty())
            && redis.cli(&["GET", k]) == "7"
        {
            break k.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "the node's 7 hits never reached Redis: {keys}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ttl: i64 = redis.cli(&["TTL", &key]).parse().unwrap();
    assert!(ttl > 0 && ttl <= 3601, "the key expires with its window: {ttl}");
    // Another node's hits, added straight to Redis, count here after the next flush.
    redis.cli(&["INCRBY", &key, "993"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(gw.call("/limited", &[]).await.status(), 429, "1000 used in the shared counter");
}
