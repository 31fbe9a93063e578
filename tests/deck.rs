//! decK against a Tollgate node: the calls `deck gateway dump`, `diff` and `sync` make (go-kong's,
//! in decK's order), answered as Kong answers them — the version check, the schemas decK reads
//! defaults from (and the 404s it tolerates), `size=1000` pages followed by `offset`, creates and
//! updates by `PUT /{entities}/{id}` with whole objects, the target `PUT` → 404 → `POST` fallback, and
//! deletes in reverse order.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::Gateway;

/// Every page of `path` (go-kong follows `offset` and ignores `next`).
async fn dump(gw: &Gateway, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut offset: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &offset {
            Some(o) => format!("{path}{sep}size=1000&offset={o}"),
            None => format!("{path}{sep}size=1000"),
        };
        let (status, page) = gw.get(&url).await;
        assert_eq!(status, 200, "GET {url}: {page}");
        out.extend(page["data"].as_array().expect("data").iter().cloned());
        match page["offset"].as_str() {
            Some(o) => offset = Some(url::form_urlencoded::byte_serialize(o.as_bytes()).collect()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn deck_dump_reads_everything_decks_way() {
    let gw = Gateway::start().await;
    let (status, root) = gw.get("/").await;
    assert_eq!(status, 200);
    let version = root["version"].as_str().expect("version");
    let major: u32 = version.split('.').next().unwrap().parse().expect("^\\d+\\.\\d+");
    assert!(major >= 3, "decK applies _format_version 3.0 to Kong 3 and above: {version}");
    for schema in ["services", "routes", "upstreams", "targets"] {
        assert_eq!(gw.get(&format!("/schemas/{schema}")).await.0, 200, "{schema}");
    }
    assert_eq!(gw.get("/schemas/plugins/key-auth").await.0, 200);
    assert_eq!(gw.get("/schemas/plugins/rate-limiting").await.0, 200);
    // decK tolerates a 404 for what this gateway does not have.
    for missing in ["/schemas/consumer_group_plugins", "/filter-chains", "/vaults", "/partials", "/keys", "/key-sets"] {
        let status = gw.get(missing).await.0;
        assert!(status == 404 || status == 400, "{missing}: {status}");
    }
    for optional in ["/hmac-auths", "/jwts", "/basic-auths", "/oauth2", "/mtls-auths"] {
        assert_eq!(gw.get(&format!("{optional}?size=1000")).await.0, 404, "{optional}");
    }

    // 2,500 consumers: three pages, each followed by its `offset`.
    let mut created = Vec::new();
    for i in 0..2500 {
        let (status, c) = gw.post("/consumers", json!({"username": format!("user-{i:04}"), "tags": ["deck"]})).await;
        assert_eq!(status, 201);
        created.push(c["id"].as_str().unwrap().to_string());
    }
    let consumers = dump(&gw, "/consumers").await;
    assert_eq!(consumers.len(), 2500);
    let tagged = dump(&gw, "/consumers?tags=deck").await;
    assert_eq!(tagged.len(), 2500);
    for path in [
        "/services",
        "/routes",
        "/plugins",
        "/certificates",
        "/snis",
        "/upstreams",
        "/ca_certificates",
        "/consumer_groups",
        "/key-auths",
        "/acls",
    ] {
        dump(&gw, path).await;
    }
}

#[tokio::test]
async fn deck_sync_creates_updates_and_deletes_by_id() {
    let gw = Gateway::start().await;
    let service_id = uuid::Uuid::new_v4().to_string();
    let route_id = uuid::Uuid::new_v4().to_string();
    let consumer_id = uuid::Uuid::new_v4().to_string();
    let key_id = uuid::Uuid::new_v4().to_string();
    let upstream_id = uuid::Uuid::new_v4().to_string();
    let target_id = uuid::Uuid::new_v4().to_string();
    let plugin_id = uuid::Uuid::new_v4().to_string();
    // Level 1 and 2: consumers, credentials, services, upstreams — created by PUT with their ids.
    let (status, c) = gw
        .put(&format!("/consumers/{consumer_id}"), json!({"id": consumer_id, "username": "alice", "tags": ["deck"]}))
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["id"], consumer_id.as_str());
    let (status, k) =
        gw.put(&format!("/consumers/{consumer_id}/key-auth/{key_id}"), json!({"id": key_id, "key": "alice-key"})).await;
    assert_eq!(status, 200, "{k}");
    let service = json!({"id": service_id, "name": "svc", "host": "127.0.0.1", "port": 9, "protocol": "http",
        "connect_timeout": 60000, "read_timeout": 60000, "write_timeout": 60000, "retries": 5, "enabled": true});
    assert_eq!(gw.put(&format!("/services/{service_id}"), service.clone()).await.0, 200);
    assert_eq!(
        gw.put(&format!("/upstreams/{upstream_id}"), json!({"id": upstream_id, "name": "pool.test"})).await.0,
        200
    );
    // Level 3: routes and targets. A target's PUT never creates: 404, then decK POSTs it.
    let route = json!({"id": route_id, "name": "r", "paths": ["/deck"], "service": {"id": service_id}});
    assert_eq!(gw.put(&format!("/routes/{route_id}"), route).await.0, 200);
    let target = json!({"id": target_id, "target": "127.0.0.1:9", "weight": 100});
    let (status, _) = gw.put(&format!("/upstreams/{upstream_id}/targets/{target_id}"), target.clone()).await;
    assert_eq!(status, 404);
    let (status, t) = gw.post(&format!("/upstreams/{upstream_id}/targets"), target).await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["id"], target_id.as_str());
    // Level 4: plugins.
    let plugin = json!({"id": plugin_id, "name": "key-auth", "service": {"id": service_id}, "config": {"key_names": ["apikey"]}, "enabled": true});
    assert_eq!(gw.put(&format!("/plugins/{plugin_id}"), plugin).await.0, 200);
    // An update is the same PUT with the whole object.
    let mut changed = service.clone();
    changed["retries"] = json!(2);
    let (status, s) = gw.put(&format!("/services/{service_id}"), changed).await;
    assert_eq!((status, s["retries"].clone()), (200, json!(2)));
    // Deletes in reverse order: plugins, routes, then services.
    assert_eq!(gw.delete(&format!("/plugins/{plugin_id}")).await, 204);
    assert_eq!(gw.delete(&format!("/routes/{route_id}")).await, 204);
    assert_eq!(gw.delete(&format!("/services/{service_id}")).await, 204);
    assert_eq!(gw.get(&format!("/services/{service_id}")).await.0, 404);
    // A conflict is shown to the user as Kong's body.
    let (status, body) = gw.post("/consumers", json!({"username": "alice"})).await;
    assert_eq!(status, 409);
    assert_eq!(body["name"], "unique constraint violation");
}
