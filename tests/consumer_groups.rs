//! Consumer groups (Kong Enterprise) as a user drives them: the real `tollgate` binary, its Admin API
//! for the groups, their members (from both sides) and their plugins, and its proxy in front of a
//! real echo upstream for what membership changes: `X-Consumer-Groups` upstream and which plugin
//! instance runs. A rate-limiting-advanced instance is the observable for plugin precedence: each
//! instance has its own limit, and `X-RateLimit-Limit-60` on the answer tells which one ran.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Gateway, Upstream, id, keys, not_found, start};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The `name`s of a list of groups (or `username`s of consumers), in the order given.
fn names(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|e| e[field].as_str().unwrap_or_default().to_string())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The echo upstream's JSON, or the gateway's JSON when it answered itself.
async fn echo(r: reqwest::Response) -> Value {
    let id = r.headers().get("x-tollgate-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = r.text().await.expect("body");
    let mut v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    support::without_request_id(&mut v, id.as_deref());
    v
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Service `svc` pointing at the upstream, route `api` on `/api` guarded by key-auth.
async fn keyed_route(gw: &Gateway, up: &Upstream) -> (Value, Value) {
    let (service, route) = gw.service_and_route(up, "svc", json!({"name": "api", "paths": ["/api"]})).await;
    gw.create("/routes/api/plugins", json!({"name": "key-auth"})).await;
    (service, route)
}

/// A consumer whose key-auth key is `<name>-key`.
async fn consumer_with_key(gw: &Gateway, name: &str) -> Value {
    let consumer = gw.create("/consumers", json!({"username": name})).await;
    gw.create(&format!("/consumers/{name}/key-auth"), json!({"key": format!("{name}-key")})).await;
    consumer
}

/// Calls `/api` as `name` (plus extra headers) and returns the `X-Consumer-Groups` the upstream got.
async fn groups_upstream(gw: &Gateway, name: &str, extra: &[(&str, &str)]) -> Option<String> {
    let key = format!("{name}-key");
    let mut headers = vec![("apikey", key.as_str())];
    headers.extend_from_slice(extra);
    let r = gw.call("/api", &headers).await;
    assert_eq!(r.status(), 200, "{name} is let through");
    let body = echo(r).await;
    body["headers"].get("x-consumer-groups").map(|v| v.as_str().expect("string header").to_string())
}

/// A rate-limiting-advanced instance whose per-minute limit identifies it.
fn limited(limit: u64) -> Value {
    json!({"name": "rate-limiting-advanced", "config": {"limit": [limit], "window_size": [60], "window_type": "fixed"}})
}

/// The same instance, further scoped (`{"route": {"id": …}}` and so on).
fn limited_on(limit: u64, scope: Value) -> Value {
    let mut plugin = limited(limit);
    for (k, v) in scope.as_object().expect("scope object") {
        plugin[k] = v.clone();
    }
    plugin
}

/// Calls `/api` as `name` and returns the per-minute limit of the rate-limiting instance that ran
/// (`None` when none did).
async fn limit_seen(gw: &Gateway, name: &str) -> Option<String> {
    let r = gw.call("/api", &[("apikey", &format!("{name}-key"))]).await;
    assert_eq!(r.status(), 200, "{name} is let through");
    header(&r, "x-ratelimit-limit-60")
}

/// Sleeps into the next minute when fewer than `margin` seconds of this one are left, so that a
/// burst of requests lands in one fixed 60-second window.
async fn stay_within_one_minute(margin: u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let into = now.as_secs() % 60;
    if into >= 60 - margin {
        let next = Duration::from_secs(60 - into) - Duration::from_nanos(u64::from(now.subsec_nanos()));
        tokio::time::sleep(next + Duration::from_millis(50)).await;
    }
}

const GROUP_FIELDS: &[&str] = &["created_at", "id", "name", "tags", "updated_at"];

// ---------------------------------------------------------------------------------------------
// The groups themselves

#[tokio::test]
async fn a_consumer_group_is_created_read_renamed_replaced_and_deleted() {
    let gw = Gateway::start().await;
    let (status, gold) = gw.post("/consumer_groups", json!({"name": "gold", "tags": ["tier"]})).await;
    assert_eq!(status, 201, "{gold}");
    assert_eq!(keys(&gold), GROUP_FIELDS);
    assert_eq!((&gold["name"], &gold["tags"]), (&json!("gold"), &json!(["tier"])));

    // Read by name or by id: the group and its (so far no) consumers.
    let expected = json!({"consumer_group": gold, "consumers": []});
    assert_eq!(gw.get("/consumer_groups/gold").await, (200, expected.clone()));
    assert_eq!(gw.get(&format!("/consumer_groups/{}", id(&gold))).await, (200, expected));
    let silver = gw.create("/consumer_groups", json!({"name": "silver"})).await;
    let (status, list) = gw.get("/consumer_groups").await;
    assert_eq!(status, 200);
    assert_eq!(sorted(names(&list["data"], "name")), ["gold", "silver"]);
    assert_eq!(list["next"], Value::Null);

    // PATCH renames; the old name is gone, the id stays.
    let (status, platinum) = gw.patch("/consumer_groups/silver", json!({"name": "platinum"})).await;
    assert_eq!((status, &platinum["id"], &platinum["name"]), (200, &silver["id"], &json!("platinum")));
    assert_eq!(gw.get("/consumer_groups/silver").await, (404, not_found()));
    assert_eq!(gw.get("/consumer_groups/platinum").await.1["consumer_group"], platinum);

    // PUT creates from the path, then replaces (omitted fields go back to null).
    let (status, bronze) = gw.put("/consumer_groups/bronze", json!({"tags": ["cheap"]})).await;
    assert_eq!((status, &bronze["name"], &bronze["tags"]), (200, &json!("bronze"), &json!(["cheap"])));
    let (status, replaced) = gw.put("/consumer_groups/bronze", json!({})).await;
    assert_eq!((status, &replaced["id"], &replaced["tags"]), (200, &bronze["id"], &Value::Null));

    assert_eq!(gw.delete("/consumer_groups/bronze").await, 204);
    assert_eq!(gw.get("/consumer_groups/bronze").await, (404, not_found()));
    assert_eq!(gw.get(&format!("/consumer_groups/{}", id(&bronze))).await, (404, not_found()));
    assert_eq!(gw.delete("/consumer_groups/bronze").await, 204, "deleting what is gone is still 204");
}

#[tokio::test]
async fn a_consumer_group_needs_a_unique_name_and_known_fields() {
    let gw = Gateway::start().await;
    assert_eq!(
        gw.post("/consumer_groups", json!({"name": "gold", "colour": "yellow"})).await,
        (
            400,
            json!({
                "code": 2,
                "name": "schema violation",
                "message": "schema violation (colour: unknown field)",
                "fields": {"colour": "unknown field"},
            })
        )
    );
    let (status, body) = gw.post("/consumer_groups", json!({"tags": ["x"]})).await;
    assert_eq!((status, &body["code"], &body["fields"]), (400, &json!(2), &json!({"name": "required field missing"})));

    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    assert_eq!(
        gw.post("/consumer_groups", json!({"name": "gold"})).await,
        (
            409,
            json!({
                "code": 5,
                "name": "unique constraint violation",
                "message": "UNIQUE violation detected on '{name=\"gold\"}'",
                "fields": {"name": "gold"},
            })
        )
    );
    gw.create("/consumer_groups", json!({"name": "silver"})).await;
    assert_eq!(gw.patch("/consumer_groups/silver", json!({"name": "gold"})).await.0, 409, "renaming into a taken name");
}

// ---------------------------------------------------------------------------------------------
// Memberships

#[tokio::test]
async fn consumers_are_added_to_a_group_by_name_id_or_several_at_once() {
    let gw = Gateway::start().await;
    let gold = gw.create("/consumer_groups", json!({"name": "gold"})).await;
    let ann = gw.create("/consumers", json!({"username": "ann"})).await;
    let bob = gw.create("/consumers", json!({"username": "bob"})).await;
    let cid = gw.create("/consumers", json!({"custom_id": "c-3"})).await;
    let dan = gw.create("/consumers", json!({"username": "dan"})).await;

    let (status, body) = gw.post("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body, json!({"consumer_group": gold, "consumers": [ann]}));
    // By id, and on the group's id.
    let (status, body) =
        gw.post(&format!("/consumer_groups/{}/consumers", id(&gold)), json!({"consumer": id(&bob)})).await;
    assert_eq!((status, body), (201, json!({"consumer_group": gold, "consumers": [bob]})));
    // Several at once.
    let (status, body) = gw.post("/consumer_groups/gold/consumers", json!({"consumer": [id(&cid), "dan"]})).await;
    assert_eq!((status, &body["consumers"]), (201, &json!([cid, dan])), "{body}");

    let (status, list) = gw.get("/consumer_groups/gold/consumers").await;
    assert_eq!((status, &list["next"]), (200, &Value::Null));
    let mut members: Vec<String> = list["data"].as_array().expect("data").iter().map(id).collect();
    members.sort();
    let mut all = vec![id(&ann), id(&bob), id(&cid), id(&dan)];
    all.sort();
    assert_eq!(members, all);
    let (_, group) = gw.get("/consumer_groups/gold").await;
    assert_eq!(group["consumer_group"], gold);
    assert_eq!(group["consumers"].as_array().map(Vec::len), Some(4), "{group}");

    // One membership, read from the group side.
    assert_eq!(gw.get("/consumer_groups/gold/consumers/ann").await, (200, json!({"consumer": ann})));
    // And from the consumer side.
    assert_eq!(gw.get("/consumers/ann/consumer_groups/gold").await, (200, json!({"consumer_group": gold})));
}

#[tokio::test]
async fn a_consumer_joins_and_leaves_groups_from_its_own_side() {
    let gw = Gateway::start().await;
    let ann = gw.create("/consumers", json!({"username": "ann"})).await;
    let gold = gw.create("/consumer_groups", json!({"name": "gold"})).await;
    let silver = gw.create("/consumer_groups", json!({"name": "silver"})).await;
    assert_eq!(gw.get("/consumers/ann/consumer_groups").await, (200, json!({"data": [], "next": null})));

    let (status, body) = gw.post("/consumers/ann/consumer_groups", json!({"group": "gold"})).await;
    assert_eq!((status, body), (201, json!({"consumer": ann, "consumer_groups": [gold]})));
    let (status, body) =
        gw.post(&format!("/consumers/{}/consumer_groups", id(&ann)), json!({"group": id(&silver)})).await;
    assert_eq!((status, body), (201, json!({"consumer": ann, "consumer_groups": [silver]})));

    let (status, list) = gw.get("/consumers/ann/consumer_groups").await;
    assert_eq!(status, 200);
    assert_eq!(sorted(names(&list["data"], "name")), ["gold", "silver"]);
    // The group sees the same membership.
    assert_eq!(gw.get("/consumer_groups/silver/consumers").await, (200, json!({"data": [ann], "next": null})));

    assert_eq!(gw.delete("/consumers/ann/consumer_groups/gold").await, 204);
    assert_eq!(gw.get("/consumers/ann/consumer_groups").await, (200, json!({"data": [silver], "next": null})));
    assert_eq!(gw.get("/consumer_groups/gold/consumers").await, (200, json!({"data": [], "next": null})));
    assert_eq!(gw.get("/consumers/ann/consumer_groups/gold").await, (404, not_found()));
    // Leaving from the group side works the same.
    assert_eq!(gw.delete("/consumer_groups/silver/consumers/ann").await, 204);
    assert_eq!(gw.get("/consumers/ann/consumer_groups").await, (200, json!({"data": [], "next": null})));
    // The consumer and the groups are still there.
    assert_eq!(gw.get("/consumers/ann").await, (200, ann));
    assert_eq!(gw.get("/consumer_groups/gold").await.0, 200);
}

#[tokio::test]
async fn membership_mistakes_name_what_was_not_found_and_duplicates_conflict() {
    let gw = Gateway::start().await;
    gw.create("/consumers", json!({"username": "ann"})).await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;

    assert_eq!(
        gw.post("/consumer_groups/gold/consumers", json!({"consumer": "nobody"})).await,
        (404, json!({"message": "consumer 'nobody' not found"}))
    );
    assert_eq!(
        gw.post("/consumers/ann/consumer_groups", json!({"group": "bronze"})).await,
        (404, json!({"message": "consumer group 'bronze' not found"}))
    );
    // One unknown name in a list: nothing is added.
    assert_eq!(
        gw.post("/consumer_groups/gold/consumers", json!({"consumer": ["ann", "nobody"]})).await,
        (404, json!({"message": "consumer 'nobody' not found"}))
    );
    assert_eq!(gw.get("/consumer_groups/gold/consumers").await, (200, json!({"data": [], "next": null})));

    // Unknown entities in the path.
    assert_eq!(gw.post("/consumer_groups/bronze/consumers", json!({"consumer": "ann"})).await, (404, not_found()));
    assert_eq!(gw.post("/consumers/nobody/consumer_groups", json!({"group": "gold"})).await, (404, not_found()));
    assert_eq!(gw.get("/consumer_groups/bronze").await, (404, not_found()));
    assert_eq!(gw.get("/consumer_groups/bronze/consumers").await, (404, not_found()));
    assert_eq!(gw.get("/consumers/nobody/consumer_groups").await, (404, not_found()));
    // Removing a membership that does not exist.
    assert_eq!(gw.delete("/consumer_groups/gold/consumers/ann").await, 404);
    assert_eq!(gw.delete("/consumer_groups/gold/consumers/nobody").await, 404);

    // The body must name the other side.
    let (status, body) = gw.post("/consumer_groups/gold/consumers", json!({})).await;
    assert_eq!(
        (status, &body["code"], &body["fields"]),
        (400, &json!(2), &json!({"consumer": "required field missing"}))
    );

    // Joining twice conflicts, from either side.
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    let (status, body) = gw.post("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    assert_eq!((status, &body["code"]), (409, &json!(5)), "{body}");
    let (status, body) = gw.post("/consumers/ann/consumer_groups", json!({"group": "gold"})).await;
    assert_eq!((status, &body["code"]), (409, &json!(5)), "{body}");
    assert_eq!(gw.get("/consumer_groups/gold/consumers").await.1["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn emptying_a_group_removes_every_membership_but_no_consumer() {
    let gw = Gateway::start().await;
    let ann = gw.create("/consumers", json!({"username": "ann"})).await;
    let bob = gw.create("/consumers", json!({"username": "bob"})).await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups", json!({"name": "silver"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": ["ann", "bob"]})).await;
    gw.create("/consumer_groups/silver/consumers", json!({"consumer": "ann"})).await;

    assert_eq!(gw.delete("/consumer_groups/gold/consumers").await, 204);
    assert_eq!(gw.get("/consumer_groups/gold/consumers").await, (200, json!({"data": [], "next": null})));
    assert_eq!(gw.get("/consumers/ann").await, (200, ann.clone()));
    assert_eq!(gw.get("/consumers/bob").await, (200, bob));
    // Other groups keep their members.
    assert_eq!(gw.get("/consumer_groups/silver/consumers").await, (200, json!({"data": [ann], "next": null})));
}

#[tokio::test]
async fn deleting_a_group_removes_its_memberships_and_plugins_but_keeps_its_consumers() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    let ann = consumer_with_key(&gw, "ann").await;
    let gold = gw.create("/consumer_groups", json!({"name": "gold"})).await;
    let silver = gw.create("/consumer_groups", json!({"name": "silver"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    gw.create("/consumer_groups/silver/consumers", json!({"consumer": "ann"})).await;
    let gold_limit = gw.create("/consumer_groups/gold/plugins", limited(1000)).await;
    let silver_limit = gw.create("/consumer_groups/silver/plugins", limited(3)).await;
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("1000"), "gold sorts before silver");

    assert_eq!(gw.delete("/consumer_groups/gold").await, 204);
    assert_eq!(gw.get(&format!("/consumer_groups/{}", id(&gold))).await, (404, not_found()));
    assert_eq!(gw.get(&format!("/plugins/{}", id(&gold_limit))).await, (404, not_found()));
    assert_eq!(gw.get("/consumers/ann").await, (200, ann));
    assert_eq!(gw.get("/consumers/ann/consumer_groups").await, (200, json!({"data": [silver], "next": null})));
    let (_, plugins) = gw.get("/plugins").await;
    let ids: Vec<String> = plugins["data"].as_array().expect("data").iter().map(id).collect();
    assert!(ids.contains(&id(&silver_limit)) && !ids.contains(&id(&gold_limit)), "{plugins}");

    // On the proxy: only silver is left.
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("3"));
    assert_eq!(groups_upstream(&gw, "ann", &[]).await.as_deref(), Some("silver"));

    // A new group of the same name starts empty and without plugins.
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    assert_eq!(gw.get("/consumer_groups/gold").await.1["consumers"], json!([]));
    assert_eq!(gw.get("/consumer_groups/gold/plugins").await, (200, json!({"data": [], "next": null})));
}

#[tokio::test]
async fn deleting_a_consumer_removes_its_memberships() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    let ann = consumer_with_key(&gw, "ann").await;
    let bob = gw.create("/consumers", json!({"username": "bob"})).await;
    let gold = gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": ["ann", "bob"]})).await;

    assert_eq!(gw.delete("/consumers/ann").await, 204);
    assert_eq!(gw.get("/consumer_groups/gold/consumers").await, (200, json!({"data": [bob], "next": null})));
    assert_eq!(gw.get("/consumer_groups/gold").await.1["consumer_group"], gold);
    assert_eq!(gw.get(&format!("/consumers/{}/consumer_groups", id(&ann))).await, (404, not_found()));

    // A new consumer of the same name is in no group.
    consumer_with_key(&gw, "ann").await;
    assert_eq!(gw.get("/consumers/ann/consumer_groups").await, (200, json!({"data": [], "next": null})));
    assert_eq!(groups_upstream(&gw, "ann", &[]).await, None);
}

// ---------------------------------------------------------------------------------------------
// Group-scoped plugins in the Admin API

#[tokio::test]
async fn plugins_created_under_a_group_are_scoped_to_it() {
    let gw = Gateway::start().await;
    let gold = gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups", json!({"name": "silver"})).await;

    let (status, plugin) = gw.post("/consumer_groups/gold/plugins", limited(1000)).await;
    assert_eq!(status, 201, "{plugin}");
    assert_eq!(plugin["consumer_group"], json!({"id": id(&gold)}));
    assert_eq!((&plugin["consumer"], &plugin["route"], &plugin["service"]), (&Value::Null, &Value::Null, &Value::Null));
    assert_eq!(plugin["config"]["limit"], json!([1000]));

    assert_eq!(gw.get("/consumer_groups/gold/plugins").await, (200, json!({"data": [plugin], "next": null})));
    assert_eq!(gw.get(&format!("/consumer_groups/{}/plugins", id(&gold))).await.1["data"], json!([plugin]));
    assert_eq!(gw.get(&format!("/consumer_groups/gold/plugins/{}", id(&plugin))).await, (200, plugin.clone()));
    assert_eq!(gw.get("/consumer_groups/silver/plugins").await, (200, json!({"data": [], "next": null})));
    assert_eq!(gw.get("/plugins").await, (200, json!({"data": [plugin], "next": null})));

    // One instance of a plugin per group (and scope).
    let (status, dup) = gw.post("/consumer_groups/gold/plugins", limited(5)).await;
    assert_eq!((status, &dup["code"]), (409, &json!(5)), "{dup}");

    let (status, patched) =
        gw.patch(&format!("/consumer_groups/gold/plugins/{}", id(&plugin)), json!({"config": {"limit": [2000]}})).await;
    assert_eq!((status, &patched["config"]["limit"]), (200, &json!([2000])), "{patched}");
    assert_eq!(gw.delete(&format!("/consumer_groups/gold/plugins/{}", id(&plugin))).await, 204);
    assert_eq!(gw.get("/consumer_groups/gold/plugins").await, (200, json!({"data": [], "next": null})));

    assert_eq!(gw.get("/consumer_groups/bronze/plugins").await, (404, not_found()));
    assert_eq!(gw.post("/consumer_groups/bronze/plugins", limited(1)).await, (404, not_found()));
}

// ---------------------------------------------------------------------------------------------
// X-Consumer-Groups upstream

#[tokio::test]
async fn a_member_s_groups_are_sent_upstream_sorted_in_x_consumer_groups() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    for g in ["silver", "gold", "bronze"] {
        gw.create("/consumer_groups", json!({"name": g})).await;
    }
    assert_eq!(groups_upstream(&gw, "ann", &[]).await, None, "no group yet");

    gw.create("/consumers/ann/consumer_groups", json!({"group": "silver"})).await;
    assert_eq!(groups_upstream(&gw, "ann", &[]).await.as_deref(), Some("silver"));
    gw.create("/consumers/ann/consumer_groups", json!({"group": "gold"})).await;
    assert_eq!(groups_upstream(&gw, "ann", &[]).await.as_deref(), Some("gold, silver"));
    // A header the client sent is overwritten, not added to.
    assert_eq!(groups_upstream(&gw, "ann", &[("x-consumer-groups", "admins")]).await.as_deref(), Some("gold, silver"));
}

#[tokio::test]
async fn a_consumer_that_leaves_its_groups_no_longer_sends_x_consumer_groups() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups", json!({"name": "silver"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    gw.create("/consumer_groups/silver/consumers", json!({"consumer": "ann"})).await;
    assert_eq!(groups_upstream(&gw, "ann", &[]).await.as_deref(), Some("gold, silver"));

    assert_eq!(gw.delete("/consumer_groups/gold/consumers/ann").await, 204);
    assert_eq!(groups_upstream(&gw, "ann", &[]).await.as_deref(), Some("silver"));
    assert_eq!(gw.delete("/consumers/ann/consumer_groups/silver").await, 204);
    assert_eq!(groups_upstream(&gw, "ann", &[]).await, None);
    // What the client claims is removed too.
    assert_eq!(groups_upstream(&gw, "ann", &[("x-consumer-groups", "gold")]).await, None);
}

#[tokio::test]
async fn a_consumer_in_no_group_cannot_claim_groups_upstream() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    assert_eq!(groups_upstream(&gw, "ann", &[("x-consumer-groups", "gold")]).await, None);
}

#[tokio::test]
async fn renaming_or_deleting_a_group_is_seen_upstream_at_once() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups", json!({"name": "silver"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    gw.create("/consumer_groups/silver/consumers", json!({"consumer": "ann"})).await;

    assert_eq!(gw.patch("/consumer_groups/gold", json!({"name": "vip"})).await.0, 200);
    assert_eq!(groups_upstream(&gw, "ann", &[]).await.as_deref(), Some("silver, vip"));
    assert_eq!(gw.delete("/consumer_groups/silver").await, 204);
    assert_eq!(groups_upstream(&gw, "ann", &[]).await.as_deref(), Some("vip"));
    assert_eq!(gw.delete("/consumer_groups/vip").await, 204);
    assert_eq!(groups_upstream(&gw, "ann", &[]).await, None);
}

// ---------------------------------------------------------------------------------------------
// Group-scoped plugins on the proxy

#[tokio::test]
async fn a_consumer_added_to_a_group_gets_its_plugins() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    consumer_with_key(&gw, "bob").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/plugins", limited(1000)).await;
    assert_eq!(limit_seen(&gw, "ann").await, None, "not a member yet");

    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("1000"));
    assert_eq!(limit_seen(&gw, "bob").await, None, "bob is not a member");

    // Leaving the group drops its plugins.
    assert_eq!(gw.delete("/consumer_groups/gold/consumers/ann").await, 204);
    assert_eq!(limit_seen(&gw, "ann").await, None);
}

#[tokio::test]
async fn consumer_group_tiers_give_each_member_its_group_s_rate_limit() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "goldie").await;
    consumer_with_key(&gw, "silvia").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups", json!({"name": "silver"})).await;
    gw.create("/consumer_groups/gold/plugins", limited(1000)).await;
    gw.create("/consumer_groups/silver/plugins", limited(3)).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "goldie"})).await;
    gw.create("/consumer_groups/silver/consumers", json!({"consumer": "silvia"})).await;

    stay_within_one_minute(3).await;
    for remaining in ["2", "1", "0"] {
        let r = gw.call("/api", &[("apikey", "silvia-key")]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-60").as_deref(), Some("3"));
        assert_eq!(header(&r, "x-ratelimit-remaining-60").as_deref(), Some(remaining));
    }
    let r = gw.call("/api", &[("apikey", "silvia-key")]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(echo(r).await, json!({"message": "API rate limit exceeded"}));

    // Gold's plan is counted apart and is far from exhausted.
    for n in 1..=5u32 {
        let r = gw.call("/api", &[("apikey", "goldie-key")]).await;
        assert_eq!(r.status(), 200, "gold request {n}");
        assert_eq!(header(&r, "x-ratelimit-limit-60").as_deref(), Some("1000"));
        assert_eq!(header(&r, "x-ratelimit-remaining-60"), Some((1000 - n).to_string()));
    }
}

#[tokio::test]
async fn a_group_plugin_beats_a_route_plugin_for_members_only() {
    // group (9) beats route (10).
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    consumer_with_key(&gw, "bob").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    gw.create("/routes/api/plugins", limited(10)).await;
    gw.create("/consumer_groups/gold/plugins", limited(1000)).await;

    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("1000"));
    assert_eq!(limit_seen(&gw, "bob").await.as_deref(), Some("10"));
}

#[tokio::test]
async fn a_route_and_service_plugin_beats_a_group_wide_one() {
    // route+service (7) beats group (9).
    let (gw, up) = start().await;
    let (service, route) = keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    gw.create("/consumer_groups/gold/plugins", limited(1000)).await;
    gw.create("/plugins", limited_on(77, json!({"route": {"id": id(&route)}, "service": {"id": id(&service)}}))).await;

    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("77"));
}

#[tokio::test]
async fn a_group_plugin_on_the_route_beats_a_route_and_service_plugin() {
    // group+route (5) beats route+service (7); it stays off other routes.
    let (gw, up) = start().await;
    let (service, route) = keyed_route(&gw, &up).await;
    gw.create("/services/svc/routes", json!({"name": "other", "paths": ["/other"]})).await;
    gw.create("/routes/other/plugins", json!({"name": "key-auth"})).await;
    consumer_with_key(&gw, "ann").await;
    let gold = gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    gw.create("/plugins", limited_on(77, json!({"route": {"id": id(&route)}, "service": {"id": id(&service)}}))).await;
    let (status, plugin) =
        gw.post("/consumer_groups/gold/plugins", limited_on(55, json!({"route": {"id": id(&route)}}))).await;
    assert_eq!(status, 201, "{plugin}");
    assert_eq!((&plugin["consumer_group"], &plugin["route"]), (&json!({"id": id(&gold)}), &json!({"id": id(&route)})));

    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("55"));
    let r = gw.call("/other", &[("apikey", "ann-key")]).await;
    assert_eq!((r.status().as_u16(), header(&r, "x-ratelimit-limit-60")), (200, None), "not on the other route");
}

#[tokio::test]
async fn a_group_plugin_on_the_service_beats_a_group_wide_one_even_of_a_group_sorting_first() {
    // group+service (6) beats group (9), whichever group sorts first.
    let (gw, up) = start().await;
    let (service, _) = keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    gw.create("/consumer_groups", json!({"name": "alpha"})).await;
    gw.create("/consumer_groups", json!({"name": "zeta"})).await;
    gw.create("/consumer_groups/alpha/consumers", json!({"consumer": "ann"})).await;
    gw.create("/consumer_groups/zeta/consumers", json!({"consumer": "ann"})).await;
    gw.create("/consumer_groups/alpha/plugins", limited(1000)).await;
    gw.create("/consumer_groups/zeta/plugins", limited_on(66, json!({"service": {"id": id(&service)}}))).await;

    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("66"));
}

#[tokio::test]
async fn a_consumer_s_own_plugin_beats_its_group_s_plugin() {
    // consumer (8) beats group (9).
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    consumer_with_key(&gw, "bob").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": ["ann", "bob"]})).await;
    gw.create("/consumer_groups/gold/plugins", limited(1000)).await;
    gw.create("/consumers/ann/plugins", limited(8)).await;

    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("8"));
    assert_eq!(limit_seen(&gw, "bob").await.as_deref(), Some("1000"));
}

#[tokio::test]
async fn a_group_plugin_on_the_route_beats_the_consumer_s_own_plugin_elsewhere() {
    // group+route (5) beats consumer (8); consumer+route (3) beats group+route (5).
    let (gw, up) = start().await;
    let (_, route) = keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    gw.create("/consumers/ann/plugins", limited(8)).await;
    gw.create("/consumer_groups/gold/plugins", limited_on(55, json!({"route": {"id": id(&route)}}))).await;
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("55"));

    let (_, ann) = gw.get("/consumers/ann").await;
    gw.create("/plugins", limited_on(33, json!({"route": {"id": id(&route)}, "consumer": {"id": id(&ann)}}))).await;
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("33"));
}

#[tokio::test]
async fn a_group_plugin_on_route_and_service_beats_the_consumer_s_plugin_on_the_route() {
    // group+route+service (2) beats consumer+route (3); consumer+route+service (1) beats both.
    let (gw, up) = start().await;
    let (service, route) = keyed_route(&gw, &up).await;
    let ann = consumer_with_key(&gw, "ann").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    let (r, s, c) = (json!({"id": id(&route)}), json!({"id": id(&service)}), json!({"id": id(&ann)}));
    gw.create("/plugins", limited_on(33, json!({"route": r, "consumer": c}))).await;
    gw.create("/consumer_groups/gold/plugins", limited_on(22, json!({"route": r, "service": s}))).await;
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("22"));

    gw.create("/plugins", limited_on(11, json!({"route": r, "service": s, "consumer": c}))).await;
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("11"));
}

#[tokio::test]
async fn a_member_of_two_groups_gets_the_plugin_of_the_group_whose_name_sorts_first() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    // Created (and joined) in the opposite order of their names.
    for (group, limit) in [("zinc", 26), ("iron", 9), ("copper", 3)] {
        gw.create("/consumer_groups", json!({"name": group})).await;
        gw.create(&format!("/consumer_groups/{group}/plugins"), limited(limit)).await;
        gw.create(&format!("/consumer_groups/{group}/consumers"), json!({"consumer": "ann"})).await;
    }
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("3"));

    assert_eq!(gw.delete("/consumer_groups/copper/consumers/ann").await, 204);
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("9"));
    // Renaming changes the order.
    assert_eq!(gw.patch("/consumer_groups/zinc", json!({"name": "brass"})).await.0, 200);
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("26"));
}

#[tokio::test]
async fn a_big_group_s_members_are_listed_page_by_page() {
    let gw = Gateway::start().await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(id(&gw.create("/consumers", json!({"username": format!("user-{i}")})).await));
    }
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": all.clone()})).await;

    let (status, first) = gw.get("/consumer_groups/gold/consumers?size=2").await;
    assert_eq!(status, 200, "{first}");
    let mut seen: Vec<String> = first["data"].as_array().expect("data").iter().map(id).collect();
    assert_eq!(seen.len(), 2);
    let mut next = first["next"].as_str().expect("a next page").to_string();
    assert!(next.starts_with("/consumer_groups/gold/consumers?offset="), "{next}");
    loop {
        let (status, page) = gw.get(&next).await;
        assert_eq!(status, 200, "{next}: {page}");
        seen.extend(page["data"].as_array().expect("data").iter().map(id));
        match page["next"].as_str() {
            Some(n) => next = n.to_string(),
            None => break,
        }
    }
    seen.sort();
    all.sort();
    assert_eq!(seen, all, "every member once");
}

#[tokio::test]
async fn memberships_can_be_added_with_a_form_body() {
    let gw = Gateway::start().await;
    let ann = gw.create("/consumers", json!({"username": "ann"})).await;
    let gold = gw.create("/consumer_groups", json!({"name": "gold"})).await;
    let (status, body) = gw.post_form("/consumer_groups/gold/consumers", &[("consumer", "ann")]).await;
    assert_eq!((status, body), (201, json!({"consumer_group": gold, "consumers": [ann]})));
    gw.create("/consumer_groups", json!({"name": "silver"})).await;
    let (status, body) = gw.post_form("/consumers/ann/consumer_groups", &[("group", "silver")]).await;
    assert_eq!((status, &body["consumer_groups"][0]["name"]), (201, &json!("silver")), "{body}");
}

#[tokio::test]
async fn a_consumer_keeps_its_groups_when_it_is_renamed_or_replaced() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/plugins", limited(1000)).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;

    assert_eq!(gw.patch("/consumers/ann", json!({"custom_id": "c-1"})).await.0, 200);
    assert_eq!(groups_upstream(&gw, "ann", &[]).await.as_deref(), Some("gold"));
    assert_eq!(gw.put("/consumers/ann", json!({"custom_id": "c-2"})).await.0, 200);
    assert_eq!(groups_upstream(&gw, "ann", &[]).await.as_deref(), Some("gold"));
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("1000"));
    assert_eq!(gw.get("/consumers/ann/consumer_groups").await.1["data"][0]["name"], "gold");
}

#[tokio::test]
async fn a_disabled_group_plugin_leaves_members_to_the_route_plugin() {
    let (gw, up) = start().await;
    keyed_route(&gw, &up).await;
    consumer_with_key(&gw, "ann").await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    gw.create("/routes/api/plugins", limited(10)).await;
    let gold = gw.create("/consumer_groups/gold/plugins", limited(1000)).await;
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("1000"));

    assert_eq!(gw.patch(&format!("/plugins/{}", id(&gold)), json!({"enabled": false})).await.0, 200);
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("10"));
    assert_eq!(gw.patch(&format!("/plugins/{}", id(&gold)), json!({"enabled": true})).await.0, 200);
    assert_eq!(limit_seen(&gw, "ann").await.as_deref(), Some("1000"));
}

#[tokio::test]
async fn a_plugin_naming_a_missing_group_is_a_foreign_key_violation() {
    let gw = Gateway::start().await;
    let missing = "5a1c6b76-1b3f-4a57-9d1e-0c5b8f9e2a10";
    let mut plugin = limited(5);
    plugin["consumer_group"] = json!({"id": missing});
    assert_eq!(
        gw.post("/plugins", plugin).await,
        (
            400,
            json!({
                "code": 4,
                "name": "foreign key violation",
                "message": format!("the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'consumer_groups' entity."),
                "fields": {"consumer_group": {"id": missing}},
            })
        )
    );
}

#[tokio::test]
async fn an_anonymous_consumer_in_a_group_gets_the_group_s_header_and_plugins() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "svc", json!({"name": "api", "paths": ["/api"]})).await;
    let guest = gw.create("/consumers", json!({"username": "guest"})).await;
    gw.create("/routes/api/plugins", json!({"name": "key-auth", "config": {"anonymous": id(&guest)}})).await;
    gw.create("/consumer_groups", json!({"name": "guests"})).await;
    gw.create("/consumer_groups/guests/plugins", limited(5)).await;
    gw.create("/consumer_groups/guests/consumers", json!({"consumer": "guest"})).await;

    let r = gw.call("/api", &[("x-consumer-groups", "admins")]).await;
    assert_eq!((r.status().as_u16(), header(&r, "x-ratelimit-limit-60").as_deref()), (200, Some("5")));
    let body = echo(r).await;
    assert_eq!(body["headers"]["x-anonymous-consumer"], "true");
    assert_eq!(body["headers"]["x-consumer-groups"], "guests");

    // Taken out of the group, the anonymous consumer loses both.
    assert_eq!(gw.delete("/consumer_groups/guests/consumers/guest").await, 204);
    let r = gw.call("/api", &[("x-consumer-groups", "admins")]).await;
    assert_eq!((r.status().as_u16(), header(&r, "x-ratelimit-limit-60")), (200, None));
    assert!(echo(r).await["headers"].get("x-consumer-groups").is_none());
}
