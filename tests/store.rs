//! The store as an operator relies on it: writes survive a crash, the same Admin API behaviour on
//! SQLite and PostgreSQL (a fresh database per test), concurrent writes queue instead of failing, and
//! several nodes sharing one PostgreSQL see each other's changes on their proxies within a second.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Db, Gateway, Options, PgDatabase, Upstream};

async fn gateway_on(db: &Db) -> Gateway {
    Gateway::start_with(Options { db: db.clone(), ..Options::default() }).await
}

/// Entities, constraints, cascades and pages: what every backend must do the same way.
async fn entities_behave_the_same(db: Db) {
    let gw = gateway_on(&db).await;
    let bob = gw.create("/consumers", json!({"username": "bob", "custom_id": "b-1", "tags": ["team-a"]})).await;
    let (status, dup) = gw.post("/consumers", json!({"username": "bob"})).await;
    assert_eq!((status, dup["code"].as_i64()), (409, Some(5)), "{dup}");
    assert_eq!(dup["message"], "UNIQUE violation detected on '{username=\"bob\"}'");

    let key = gw.create("/consumers/bob/key-auth", json!({"key": "bob-key"})).await;
    assert_eq!(key["consumer"]["id"], bob["id"]);
    gw.create("/services", json!({"name": "svc", "url": "http://127.0.0.1:9"})).await;
    gw.create("/services/svc/routes", json!({"name": "r", "paths": ["/r"]})).await;
    let (status, refused) = gw.post("/routes", json!({"paths": ["/x"], "service": {"name": "missing"}})).await;
    assert_eq!((status, refused["code"].as_i64()), (400, Some(13)), "{refused}");
    let status = gw.delete("/services/svc").await;
    assert_eq!(status, 400, "a service with routes cannot be deleted");

    for i in 0..5 {
        gw.create("/consumers", json!({"username": format!("page-{i}"), "tags": ["paged"]})).await;
    }
    let mut seen = Vec::new();
    let mut next = Some("/consumers?size=2&tags=paged".to_string());
    while let Some(path) = next {
        let (status, page) = gw.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["data"].as_array().unwrap().iter().map(|c| c["username"].as_str().unwrap().to_string()));
        next = page["next"].as_str().map(str::to_string);
    }
    seen.sort();
    assert_eq!(seen, ["page-0", "page-1", "page-2", "page-3", "page-4"]);

    assert_eq!(gw.delete("/consumers/bob").await, 204);
    let (status, _) = gw.get(&format!("/key-auths/{}", key["id"].as_str().unwrap())).await;
    assert_eq!(status, 404, "credentials go with their consumer");
    let (_, root) = gw.get("/").await;
    let expected = match db {
        Db::Sqlite => "sqlite",
        Db::Postgres(_) => "postgres",
    };
    assert_eq!(root["configuration"]["database"], expected);
}

#[tokio::test]
async fn sqlite_store_keeps_kong_semantics() {
    entities_behave_the_same(Db::Sqlite).await;
}

#[tokio::test]
async fn postgres_store_keeps_kong_semantics() {
    let pg = PgDatabase::fresh();
    entities_behave_the_same(Db::Postgres(pg.name.clone())).await;
}

/// Creates a consumer with a key and a keyed route, then kills the node with SIGKILL right after
/// the Admin API acknowledged the last write.
async fn write_then_crash(opts: Options, upstream: &Upstream) -> Gateway {
    let mut gw = Gateway::start_with(opts).await;
    gw.create("/services", json!({"name": "svc", "url": upstream.url("")})).await;
    gw.create("/services/svc/routes", json!({"paths": ["/api"]})).await;
    gw.create("/services/svc/plugins", json!({"name": "key-auth"})).await;
    gw.create("/consumers", json!({"username": "crash"})).await;
    gw.create("/consumers/crash/key-auth", json!({"key": "survives"})).await;
    gw.kill();
    gw
}

#[tokio::test]
async fn an_acknowledged_write_survives_kill_9_on_sqlite() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let opts = Options { prefix: Some(dir.path().to_path_buf()), ..Options::default() };
    drop(write_then_crash(opts.clone(), &upstream).await);
    let gw = Gateway::start_with(opts).await;
    let (status, c) = gw.get("/consumers/crash").await;
    assert_eq!(status, 200, "{c}");
    let r = gw.call("/api/x", &[("apikey", "survives")]).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_acknowledged_write_survives_kill_9_on_postgres() {
    let upstream = Upstream::start().await;
    let pg = PgDatabase::fresh();
    let opts = Options { db: Db::Postgres(pg.name.clone()), ..Options::default() };
    drop(write_then_crash(opts.clone(), &upstream).await);
    let gw = Gateway::start_with(opts).await;
    let (status, _) = gw.get("/consumers/crash").await;
    assert_eq!(status, 200);
    let r = gw.call("/api/x", &[("apikey", "survives")]).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn concurrent_admin_writes_queue_instead_of_failing_on_sqlite() {
    let gw = Gateway::start().await;
    let writes =
        (0..40).map(|i| {
            let http = gw.http.clone();
            let url = gw.admin_url("/consumers");
            async move {
                http.post(url).json(&json!({"username": format!("c{i}")})).send().await.map(|r| r.status().as_u16())
            }
        });
    let statuses: Vec<u16> =
        futures_util::future::join_all(writes).await.into_iter().map(|r| r.expect("sent")).collect();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let (_, page) = gw.get("/consumers").await;
    assert_eq!(page["data"].as_array().map(Vec::len), Some(40));
}

/// Waits until `gw`'s proxy answers `want` for the request.
async fn converges(gw: &Gateway, path: &str, headers: &[(&str, &str)], want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    let r = gw.eventually(path, headers, within, |r| r.status().as_u16() == want).await;
    assert_eq!(r.status().as_u16(), want, "{path} on {} did not converge in {within:?}", gw.proxy);
    started.elapsed()
}

#[tokio::test]
async fn nodes_sharing_postgres_see_each_others_changes_within_a_second() {
    let upstream = Upstream::start().await;
    let pg = PgDatabase::fresh();
    let db = Db::Postgres(pg.name.clone());
    let a = gateway_on(&db).await;
    let b = gateway_on(&db).await;

    a.create("/services", json!({"name": "svc", "url": upstream.url("")})).await;
    a.create("/services/svc/routes", json!({"name": "shared", "paths": ["/shared"]})).await;
    converges(&b, "/shared", &[], 200, Duration::from_secs(1)).await;

    b.create("/services/svc/plugins", json!({"name": "key-auth"})).await;
    converges(&a, "/shared", &[], 401, Duration::from_secs(1)).await;

    a.create("/consumers", json!({"username": "ann"})).await;
    let key: Value = a.create("/consumers/ann/key-auth", json!({})).await;
    let key = key["key"].as_str().unwrap().to_string();
    converges(&b, "/shared", &[("apikey", &key)], 200, Duration::from_secs(1)).await;

    assert_eq!(b.delete(&format!("/key-auths/{key}")).await, 204);
    converges(&a, "/shared", &[("apikey", &key)], 401, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_node_started_later_loads_everything_already_in_postgres() {
    let upstream = Upstream::start().await;
    let pg = PgDatabase::fresh();
    let db = Db::Postgres(pg.name.clone());
    let a = gateway_on(&db).await;
    a.create("/services", json!({"name": "svc", "url": upstream.url("")})).await;
    a.create("/services/svc/routes", json!({"paths": ["/late"]})).await;
    let b = gateway_on(&db).await;
    converges(&b, "/late", &[], 200, Duration::from_secs(1)).await;
}

/// A change committed without a notification (as when the LISTEN connection was down) is still
/// picked up by the periodic version check.
#[tokio::test]
async fn a_change_whose_notification_is_lost_is_picked_up_by_the_version_check() {
    let upstream = Upstream::start().await;
    let pg = PgDatabase::fresh();
    let gw = gateway_on(&Db::Postgres(pg.name.clone())).await;
    gw.create("/services", json!({"name": "svc", "url": upstream.url("")})).await;
    gw.create("/services/svc/routes", json!({"paths": ["/quiet"]})).await;
    gw.create("/services/svc/plugins", json!({"name": "key-auth"})).await;
    gw.create("/consumers", json!({"username": "q"})).await;
    let key = gw.create("/consumers/q/key-auth", json!({"key": "quiet-key"})).await;
    converges(&gw, "/quiet", &[("apikey", "quiet-key")], 200, Duration::from_secs(1)).await;

    // Revoke the key behind the gateway's back: same rows a delete writes, but no NOTIFY.
    let id = key["id"].as_str().unwrap();
    support::psql(
        &pg.name,
        &format!(
            "BEGIN; UPDATE config_version SET version = version + 1 WHERE id = 1; \
             DELETE FROM keyauth_credentials WHERE id = '{id}'; \
             INSERT INTO changes (version, seq, cp, kind, entity_id, op, previous_key) \
               SELECT version, 0, 'default', 'keyauth_credentials', '{id}', 'delete', 'quiet-key' \
               FROM config_version; COMMIT;"
        ),
    );
    let waited = converges(&gw, "/quiet", &[("apikey", "quiet-key")], 401, Duration::from_secs(3)).await;
    assert!(waited <= Duration::from_millis(2500), "took {waited:?} with db_update_frequency = 1 s");
}

#[tokio::test]
async fn deleting_a_consumer_deletes_the_plugins_scoped_to_it() {
    let pg = PgDatabase::fresh();
    let gw = gateway_on(&Db::Postgres(pg.name.clone())).await;
    let consumer = gw.create("/consumers", json!({"username": "scoped"})).await;
    let cid = consumer["id"].as_str().unwrap();
    // No bundled plugin may be scoped to a consumer yet (key-auth may not), so the row is written
    // the way the store writes one.
    let pid = "0b1e5c2a-6f3d-4e8a-9c7b-2d4f6a8b0c1e";
    let body = json!({
        "id": pid, "name": "key-auth", "instance_name": null, "created_at": 1, "updated_at": 1,
        "route": null, "service": null, "consumer": {"id": cid}, "config": {"key_names": ["apikey"]},
        "protocols": ["http"], "enabled": true, "tags": null,
    });
    support::psql(
        &pg.name,
        &format!(
            "INSERT INTO plugins (id, cp, created_at, instance_name, route_id, service_id, consumer_id, cache_key, tags, body) \
             VALUES ('{pid}', 'default', 1, NULL, NULL, NULL, '{cid}', 'key-auth|||{cid}', NULL, '{body}')"
        ),
    );
    let (status, listed) = gw.get("/consumers/scoped/plugins").await;
    assert_eq!((status, &listed["data"][0]["id"]), (200, &json!(pid)));
    assert_eq!(gw.delete("/consumers/scoped").await, 204);
    assert_eq!(gw.get(&format!("/plugins/{pid}")).await.0, 404);
}
