//! Nothing a user sends can take a node down: writes that would not build are refused before they
//! are stored, rows a node finds in its store that do not build (a hand-edited database, a row
//! from another version) are left out and reported without opening anything, and a data plane
//! refuses a configuration that does not build while it keeps serving the last good one.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Gateway, Options, Upstream, id};

/// Opens the node's embedded database directly, as an operator with `sqlite3` would.
async fn database(prefix: &Path) -> sqlx::SqlitePool {
    let url = format!("sqlite://{}", prefix.join("tollgate.db").display());
    sqlx::SqlitePool::connect(&url).await.expect("open tollgate.db")
}

/// Replaces a stored row's body behind the node's back.
async fn hand_edit(prefix: &Path, table: &str, id: &str, body: &str) {
    let db = database(prefix).await;
    let sql = format!("UPDATE {table} SET body = ? WHERE id = ?");
    let done = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(body).bind(id).execute(&db).await.expect("update");
    assert_eq!(done.rows_affected(), 1, "{table} {id}");
    db.close().await;
}

/// Logs a hand edit as a write would (a new version naming the row), so that followers of the
/// change log (a control plane's deltas) pick it up.
async fn log_change(prefix: &Path, table: &str, id: &str) {
    let db = database(prefix).await;
    sqlx::query("UPDATE config_version SET version = version + 1 WHERE id = 1").execute(&db).await.expect("version");
    let sql = format!(
        "INSERT INTO changes (version, seq, cp, kind, entity_id, op) \
         SELECT (SELECT version FROM config_version WHERE id = 1), 0, cp, '{table}', id, 'upsert' FROM {table} WHERE id = ?"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).execute(&db).await.expect("log");
    db.close().await;
}

async fn rejected(gw: &Gateway) -> Vec<Value> {
    let (status, body) = gw.get("/status").await;
    assert_eq!(status, 200, "{body}");
    body["configuration"]["rejected"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_rate_limit_whose_sync_rate_overflows_a_timer_is_refused_and_the_node_stays_up() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .post(
            "/plugins",
            json!({"name": "rate-limiting", "config": {"minute": 5, "policy": "redis", "redis": {"host": "127.0.0.1"}, "sync_rate": 1e20}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 2);
    assert!(body["fields"]["config"]["sync_rate"].is_string(), "the field is named: {body}");
    let (status, plugins) = gw.get("/plugins").await;
    assert_eq!((status, plugins["data"].as_array().map(Vec::len)), (200, Some(0)), "nothing was stored");
    let (status, _) = gw.get("/status").await;
    assert_eq!(status, 200, "the node is still up");
}

#[tokio::test]
async fn a_route_whose_header_regex_does_not_compile_is_refused_and_later_writes_go_live() {
    let up = Upstream::start().await;
    let gw = Gateway::start().await;
    gw.create("/services", json!({"name": "s", "url": up.url("/")})).await;
    let (status, body) =
        gw.post("/services/s/routes", json!({"paths": ["/bad"], "headers": {"x-version": ["~*(unclosed"]}})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 2);
    assert!(body["message"].as_str().unwrap().starts_with("schema violation (headers: invalid regex"), "{body}");
    gw.create("/services/s/routes", json!({"paths": ["/good"]})).await;
    assert_eq!(gw.call("/good", &[]).await.status(), 200, "a later write is live at once");
    assert_eq!(gw.call("/bad", &[]).await.status(), 404);
}

#[tokio::test]
async fn bodies_that_nest_absurdly_deep_are_answered_400() {
    let gw = Gateway::start().await;
    let deep_form = format!("{}=1", vec!["a"; 50_000].join("."));
    let r = gw
        .http
        .post(gw.admin_url("/consumers"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(deep_form)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 400);
    let deep_json = format!("{}\"x\"{}", r#"{"tags":"#.repeat(60), "}".repeat(60));
    let r = gw
        .http
        .post(gw.admin_url("/consumers"))
        .header("content-type", "application/json")
        .body(deep_json)
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 400);
    gw.create("/consumers", json!({"username": "still-here"})).await;
}

/// A node restarted on a database where someone replaced a plugin's configuration with one that
/// cannot be built starts, lists the plugin as rejected, and keeps that plugin's route closed
/// (500) while the rest of the configuration is served.
#[tokio::test]
async fn a_node_starting_on_a_row_that_does_not_build_starts_reports_it_and_keeps_its_route_closed() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options { prefix: Some(dir.path().to_path_buf()), ..Options::default() };
    let mut gw = Gateway::start_with(opts.clone()).await;
    gw.create("/services", json!({"name": "s", "url": up.url("/")})).await;
    gw.create("/services/s/routes", json!({"name": "limited", "paths": ["/limited"]})).await;
    gw.create("/services/s/routes", json!({"name": "open", "paths": ["/open"]})).await;
    let plugin = gw.create("/routes/limited/plugins", json!({"name": "rate-limiting", "config": {"minute": 5}})).await;
    let consumer = gw.create("/consumers", json!({"username": "ann"})).await;
    assert_eq!(gw.call("/limited", &[]).await.status(), 200);
    gw.kill();

    let mut broken = plugin.clone();
    broken["config"]["sync_rate"] = json!(1e20);
    broken["config"]["policy"] = json!("redis");
    broken["config"]["redis"]["host"] = json!("127.0.0.1");
    hand_edit(dir.path(), "plugins", &id(&plugin), &broken.to_string()).await;
    hand_edit(dir.path(), "consumers", &id(&consumer), "not json").await;

    let gw = Gateway::start_with(opts).await;
    let report = rejected(&gw).await;
    let entities: Vec<&str> = report.iter().filter_map(|r| r["entity"].as_str()).collect();
    assert_eq!(entities, ["consumers", "plugins"], "{report:?}");
    assert!(report[1]["message"].as_str().unwrap().contains("config.sync_rate"), "{report:?}");
    let r = gw.call("/limited", &[]).await;
    assert_eq!(r.status(), 500, "the broken plugin's route is closed, not open");
    assert_eq!(support::gateway_json(r).await, json!({"message": "An unexpected error occurred"}));
    assert_eq!(gw.call("/open", &[]).await.status(), 200, "everything else is served");
    assert!(gw.logs().contains("does not compile"), "logged");

    // Fixing it through the Admin API opens the route again and clears the report.
    let (status, body) = gw
        .put(
            &format!("/plugins/{}", id(&plugin)),
            json!({"name": "rate-limiting", "route": {"id": plugin["route"]["id"]}, "config": {"minute": 5}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.call("/limited", &[]).await.status(), 200);
    let report = rejected(&gw).await;
    assert_eq!(report.len(), 1, "only the consumer is left: {report:?}");
}

/// Another node (of an older version, or a hand-made script) sharing the database writes a row
/// this node cannot build: it keeps serving the row's last good version and reports it, and the
/// writes after it still go live.
#[tokio::test]
async fn a_row_that_stops_building_keeps_its_last_good_version() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::start_with(Options { prefix: Some(dir.path().to_path_buf()), ..Options::default() }).await;
    gw.create("/services", json!({"name": "s", "url": up.url("/")})).await;
    let route = gw.create("/services/s/routes", json!({"name": "r", "paths": ["/kept"]})).await;
    let mut broken = route.clone();
    broken["headers"] = json!({"x-version": ["~*(unclosed"]});
    hand_edit(dir.path(), "routes", &id(&route), &broken.to_string()).await;
    let db = database(dir.path()).await;
    let version: i64 =
        sqlx::query_scalar("UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version")
            .fetch_one(&db)
            .await
            .expect("bump");
    sqlx::query(
        "INSERT INTO changes (version, seq, cp, kind, entity_id, op) VALUES (?, 0, 'default', 'routes', ?, 'upsert')",
    )
    .bind(version)
    .bind(id(&route))
    .execute(&db)
    .await
    .expect("log the change");
    db.close().await;

    // Barrier: the node has read the change (it polls the version every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gw.get("/status").await.1["configuration"]["version"].as_i64() < Some(version)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = rejected(&gw).await;
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(report[0]["id"], route["id"]);
    assert_eq!(gw.call("/kept", &[]).await.status(), 200, "its last good version is still served");
    gw.create("/services/s/routes", json!({"paths": ["/later"]})).await;
    assert_eq!(gw.call("/later", &[]).await.status(), 200, "later writes still go live");
}

/// A control plane whose database holds a row that does not build pushes it to its data planes:
/// they refuse that configuration, keep serving the last good one, and say so.
#[tokio::test]
async fn a_data_plane_refuses_a_configuration_that_does_not_build_and_keeps_the_last_good_one() {
    let up = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;
    let (status, token) = cp
        .post("/v2/control-planes/00000000-0000-4000-8000-000000000001/data-plane-tokens", json!({"name": "dp"}))
        .await;
    assert_eq!(status, 201, "{token}");
    let dp = Gateway::start_with(Options {
        extra: vec![
            ("TOLLGATE_ROLE".into(), "data_plane".into()),
            ("TOLLGATE_CLUSTER_CONTROL_PLANE".into(), cp.cluster.clone()),
            ("TOLLGATE_CLUSTER_TOKEN".into(), token["token"].as_str().unwrap().into()),
        ],
        ..Options::default()
    })
    .await;
    cp.create("/services", json!({"name": "s", "url": up.url("/")})).await;
    let route = cp.create("/services/s/routes", json!({"name": "r", "paths": ["/r"]})).await;
    let r = dp.eventually("/r", &[], Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(r.status(), 200);

    let mut broken = route.clone();
    broken["headers"] = json!({"x-version": ["~*(unclosed"]});
    hand_edit(&cp.prefix, "routes", &id(&route), &broken.to_string()).await;
    log_change(&cp.prefix, "routes", &id(&route)).await;
    // A write wakes the control plane, which sends what changed: the broken row with it.
    cp.create("/consumers", json!({"username": "marker"})).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s: Value = dp.http.get(format!("{}/status", dp.status)).send().await.unwrap().json().await.unwrap();
        if s["sync_status"] == "config_rejected" || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status["sync_status"], "config_rejected", "{status}");
    assert!(status["sync_error"].as_str().unwrap().contains("routes"), "{status}");
    assert_eq!(dp.call("/r", &[]).await.status(), 200, "the last good configuration is still served");
    let (code, nodes) = cp.get("/v2/control-planes/00000000-0000-4000-8000-000000000001/nodes").await;
    assert_eq!(code, 200);
    assert_eq!(nodes["items"][0]["sync_status"], "config_rejected", "{nodes}");
}

/// A data plane restarted on a cached configuration that this version cannot build in full (its
/// control plane away) starts, serves what compiles, keeps the broken plugin's route closed and
/// says so on its status API.
#[tokio::test]
async fn a_data_plane_starting_on_a_cache_that_does_not_build_serves_it_closed_and_reports_it() {
    use sha2::Digest;
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (service, open, guarded, plugin) = (
        "00000000-0000-4000-8000-0000000000a1",
        "00000000-0000-4000-8000-0000000000a2",
        "00000000-0000-4000-8000-0000000000a3",
        "00000000-0000-4000-8000-0000000000a4",
    );
    let route = |id: &str, path: &str| {
        json!({"b": {"id": id, "protocols": ["http"], "methods": null, "hosts": null, "paths": [path], "headers": null,
            "snis": null, "strip_path": true, "preserve_host": false, "regex_priority": 0,
            "https_redirect_status_code": 426, "service": {"id": service}}})
    };
    let config = json!({
        "services": [{"b": {"id": service, "protocol": "http", "host": "127.0.0.1", "port": up.addr.port(),
            "path": null, "retries": 5, "connect_timeout": 60000, "write_timeout": 60000, "read_timeout": 60000,
            "enabled": true, "tls_verify": null}}],
        "routes": [route(open, "/open"), route(guarded, "/guarded")],
        "plugins": [{"b": {"id": plugin, "name": "rate-limiting", "route": {"id": guarded}, "service": null,
            "consumer": null, "consumer_group": null, "protocols": ["http"], "enabled": true,
            "config": {"minute": 5, "window_of_a_future_version": true}}}],
    })
    .to_string();
    let hash: String = sha2::Sha256::digest(config.as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect();
    let message = format!(r#"{{"type":"reconfigure","version":7,"hash":"{hash}","config":{config}}}"#);
    std::fs::write(dir.path().join("config.cache"), message).expect("write the cache");

    let dp = Gateway::start_with(Options {
        prefix: Some(dir.path().to_path_buf()),
        extra: vec![
            ("TOLLGATE_ROLE".into(), "data_plane".into()),
            ("TOLLGATE_CLUSTER_CONTROL_PLANE".into(), format!("127.0.0.1:{}", support::free_port())),
            ("TOLLGATE_CLUSTER_TOKEN".into(), "tgdp_unused".into()),
        ],
        ..Options::default()
    })
    .await;
    let status: Value = dp.http.get(format!("{}/status", dp.status)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["sync_status"], "config_rejected", "{status}");
    let rejected = status["configuration"]["rejected"].as_array().cloned().unwrap_or_default();
    assert_eq!(rejected.len(), 1, "{status}");
    assert_eq!(rejected[0]["entity"], "plugins");
    assert_eq!(dp.call("/open", &[]).await.status(), 200);
    assert_eq!(dp.call("/guarded", &[]).await.status(), 500, "the broken plugin's route stays closed");
}
