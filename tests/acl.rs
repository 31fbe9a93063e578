//! ACL credentials and the acl plugin as a user drives them: the real `tollgate` binary, its Admin
//! API for a consumer's ACL groups and the plugin's configuration, and its proxy in front of a real
//! echo upstream for who is let through (Kong 3.x statuses and messages) and which groups the
//! upstream is told about in `X-Consumer-Groups`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::{Gateway, Upstream, id, keys, not_found, schema_violation, start};

// ---------------------------------------------------------------------------------------------
// Helpers

/// The echo upstream's JSON, or the gateway's JSON when it answered itself.
async fn echo(r: reqwest::Response) -> Value {
    let id = r.headers().get("x-tollgate-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = r.text().await.expect("body");
    let mut v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    support::without_request_id(&mut v, id.as_deref());
    v
}

/// Service `svc` pointing at the upstream and route `api` on `/api` with key-auth (extra config
/// given) followed by acl with `config`.
async fn guarded_route(gw: &Gateway, up: &Upstream, key_auth: Value, acl: Value) {
    gw.service_and_route(up, "svc", json!({"name": "api", "paths": ["/api"]})).await;
    gw.create("/routes/api/plugins", json!({"name": "key-auth", "config": key_auth})).await;
    gw.create("/routes/api/plugins", json!({"name": "acl", "config": acl})).await;
}

/// A consumer whose key-auth key is `<name>-key`, with the given ACL groups.
async fn consumer(gw: &Gateway, name: &str, groups: &[&str]) -> Value {
    let consumer = gw.create("/consumers", json!({"username": name})).await;
    gw.create(&format!("/consumers/{name}/key-auth"), json!({"key": format!("{name}-key")})).await;
    for g in groups {
        gw.create(&format!("/consumers/{name}/acls"), json!({"group": g})).await;
    }
    consumer
}

/// Calls `/api` with these headers; the status and the JSON body (the upstream's echo when 200).
async fn call(gw: &Gateway, headers: &[(&str, &str)]) -> (u16, Value) {
    let r = gw.call("/api", headers).await;
    let status = r.status().as_u16();
    (status, echo(r).await)
}

/// Calls `/api` as `name` and returns the status and the `X-Consumer-Groups` the upstream got.
async fn as_consumer(gw: &Gateway, name: &str, extra: &[(&str, &str)]) -> (u16, Option<String>) {
    let key = format!("{name}-key");
    let mut headers = vec![("apikey", key.as_str())];
    headers.extend_from_slice(extra);
    let (status, body) = call(gw, &headers).await;
    if status != 200 {
        return (status, None);
    }
    (status, body["headers"].get("x-consumer-groups").map(|v| v.as_str().expect("string header").to_string()))
}

fn forbidden() -> Value {
    json!({"message": "You cannot consume this service"})
}

fn unauthorized() -> Value {
    json!({"message": "Unauthorized"})
}

// ---------------------------------------------------------------------------------------------
// ACL credentials

#[tokio::test]
async fn acl_groups_are_managed_under_their_consumer() {
    let gw = Gateway::start().await;
    let ann = gw.create("/consumers", json!({"username": "ann"})).await;
    gw.create("/consumers", json!({"username": "bob"})).await;

    let (status, admins) = gw.post("/consumers/ann/acls", json!({"group": "admins", "tags": ["t"]})).await;
    assert_eq!(status, 201, "{admins}");
    assert_eq!(keys(&admins), ["consumer", "created_at", "group", "id", "tags"]);
    assert_eq!(admins["group"], "admins");
    assert_eq!(admins["consumer"], json!({"id": id(&ann)}));
    assert_eq!(admins["tags"], json!(["t"]));
    assert!(admins["created_at"].is_i64(), "{admins}");
    let dev = gw.create(&format!("/consumers/{}/acls", id(&ann)), json!({"group": "dev"})).await;
    let bobs = gw.create("/consumers/bob/acls", json!({"group": "admins"})).await;

    // Read by id or by group name under the consumer, or by id at the top level.
    assert_eq!(gw.get(&format!("/consumers/ann/acls/{}", id(&admins))).await, (200, admins.clone()));
    assert_eq!(gw.get("/consumers/ann/acls/admins").await, (200, admins.clone()));
    assert_eq!(gw.get("/consumers/bob/acls/admins").await, (200, bobs.clone()));
    assert_eq!(gw.get(&format!("/acls/{}", id(&dev))).await, (200, dev.clone()));
    let (status, list) = gw.get("/consumers/ann/acls").await;
    assert_eq!((status, &list["next"]), (200, &Value::Null));
    let mut ids: Vec<String> = list["data"].as_array().expect("data").iter().map(id).collect();
    ids.sort();
    let mut expected = vec![id(&admins), id(&dev)];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(gw.get("/acls").await.1["data"].as_array().map(Vec::len), Some(3));

    // PATCH renames the group; DELETE by group name or id.
    let (status, ops) = gw.patch("/consumers/ann/acls/dev", json!({"group": "ops"})).await;
    assert_eq!((status, &ops["id"], &ops["group"]), (200, &dev["id"], &json!("ops")));
    assert_eq!(gw.get("/consumers/ann/acls/dev").await, (404, not_found()));
    assert_eq!(gw.delete("/consumers/ann/acls/ops").await, 204);
    assert_eq!(gw.delete(&format!("/acls/{}", id(&admins))).await, 204);
    assert_eq!(gw.get("/consumers/ann/acls").await, (200, json!({"data": [], "next": null})));
    assert_eq!(gw.get("/acls").await, (200, json!({"data": [bobs], "next": null})));
}

#[tokio::test]
async fn a_consumer_has_an_acl_group_only_once() {
    let gw = Gateway::start().await;
    let ann = gw.create("/consumers", json!({"username": "ann"})).await;
    gw.create("/consumers", json!({"username": "bob"})).await;
    gw.create("/consumers/ann/acls", json!({"group": "admins"})).await;
    assert_eq!(
        gw.post("/consumers/ann/acls", json!({"group": "admins"})).await,
        (
            409,
            json!({
                "code": 5,
                "name": "unique constraint violation",
                "message": format!("UNIQUE violation detected on '{{consumer={{id=\"{}\"}},group=\"admins\"}}'", id(&ann)),
                "fields": {"consumer": {"id": id(&ann)}, "group": "admins"},
            })
        )
    );
    // Another consumer may have the same group.
    assert_eq!(gw.post("/consumers/bob/acls", json!({"group": "admins"})).await.0, 201);
}

#[tokio::test]
async fn an_acl_group_needs_a_known_consumer_and_a_name() {
    let gw = Gateway::start().await;
    assert_eq!(gw.post("/consumers/nobody/acls", json!({"group": "admins"})).await, (404, not_found()));
    assert_eq!(gw.get("/consumers/nobody/acls").await, (404, not_found()));
    gw.create("/consumers", json!({"username": "ann"})).await;
    assert_eq!(
        gw.post("/consumers/ann/acls", json!({})).await,
        (
            400,
            schema_violation(
                "schema violation (group: required field missing)",
                json!({"group": "required field missing"})
            )
        )
    );
    assert_eq!(gw.get("/consumers/ann/acls/admins").await, (404, not_found()));
}

#[tokio::test]
async fn deleting_a_consumer_deletes_its_acl_groups() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"allow": ["admins"]})).await;
    let ann = consumer(&gw, "ann", &["admins", "dev"]).await;
    let bob = consumer(&gw, "bob", &["admins"]).await;
    assert_eq!(as_consumer(&gw, "ann", &[]).await, (200, Some("admins, dev".into())));

    assert_eq!(gw.delete("/consumers/ann").await, 204);
    let (status, all) = gw.get("/acls").await;
    assert_eq!(status, 200);
    let owners: Vec<&Value> = all["data"].as_array().expect("data").iter().map(|a| &a["consumer"]).collect();
    assert_eq!(owners, [&json!({"id": id(&bob)})], "{all}");
    assert_eq!(gw.get(&format!("/consumers/{}/acls", id(&ann))).await, (404, not_found()));

    // A new consumer of the same name does not inherit them.
    consumer(&gw, "ann", &[]).await;
    assert_eq!(gw.get("/consumers/ann/acls").await, (200, json!({"data": [], "next": null})));
    assert_eq!(call(&gw, &[("apikey", "ann-key")]).await, (403, forbidden()));
}

// ---------------------------------------------------------------------------------------------
// The acl plugin's configuration

#[tokio::test]
async fn the_acl_plugin_needs_exactly_one_of_allow_and_deny() {
    let gw = Gateway::start().await;
    let only_one = "only one of these fields must be non-empty: 'config.allow', 'config.deny'";
    let at_least_one = "at least one of these fields must be non-empty: 'config.allow', 'config.deny'";
    let expect = |msg: &str| (400, schema_violation(&format!("schema violation ({msg})"), json!({"@entity": [msg]})));

    assert_eq!(
        gw.post("/plugins", json!({"name": "acl", "config": {"allow": ["a"], "deny": ["b"]}})).await,
        expect(only_one)
    );
    assert_eq!(gw.post("/plugins", json!({"name": "acl", "config": {}})).await, expect(at_least_one));
    assert_eq!(gw.post("/plugins", json!({"name": "acl"})).await, expect(at_least_one));
    assert_eq!(
        gw.post("/plugins", json!({"name": "acl", "config": {"allow": [], "deny": []}})).await,
        expect(at_least_one)
    );
    assert_eq!(gw.get("/plugins").await, (200, json!({"data": [], "next": null})));

    let (status, plugin) = gw.post("/plugins", json!({"name": "acl", "config": {"deny": ["banned"]}})).await;
    assert_eq!(status, 201, "{plugin}");
    assert_eq!(plugin["config"]["deny"], json!(["banned"]));
    assert_eq!(plugin["config"]["hide_groups_header"], json!(false));
    assert_eq!(plugin["config"]["include_consumer_groups"], json!(false));
    // Switching from deny to allow by PATCH needs the deny list cleared.
    let (status, body) = gw.patch(&format!("/plugins/{}", id(&plugin)), json!({"config": {"allow": ["a"]}})).await;
    assert_eq!((status, body), expect(only_one));
    let (status, body) =
        gw.patch(&format!("/plugins/{}", id(&plugin)), json!({"config": {"allow": ["a"], "deny": null}})).await;
    assert_eq!(
        (status, &body["config"]["allow"], &body["config"]["deny"]),
        (200, &json!(["a"]), &Value::Null),
        "{body}"
    );
}

#[tokio::test]
async fn the_acl_plugin_cannot_be_scoped_to_a_consumer() {
    let gw = Gateway::start().await;
    gw.create("/consumers", json!({"username": "ann"})).await;
    assert_eq!(
        gw.post("/consumers/ann/plugins", json!({"name": "acl", "config": {"allow": ["admins"]}})).await,
        (
            400,
            schema_violation(
                "schema violation (consumer: value must be null)",
                json!({"consumer": "value must be null"})
            )
        )
    );
}

// ---------------------------------------------------------------------------------------------
// On the proxy

#[tokio::test]
async fn an_allow_list_lets_a_listed_consumer_through_and_tells_the_upstream_its_groups() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"allow": ["admins"]})).await;
    consumer(&gw, "ann", &["ops", "admins"]).await;
    assert_eq!(as_consumer(&gw, "ann", &[]).await, (200, Some("admins, ops".into())));
    // Whatever the client claims is overwritten.
    assert_eq!(as_consumer(&gw, "ann", &[("x-consumer-groups", "root")]).await, (200, Some("admins, ops".into())));
}

#[tokio::test]
async fn an_allow_list_refuses_a_consumer_in_other_groups_with_403() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"allow": ["admins", "ops"]})).await;
    consumer(&gw, "bob", &["dev", "qa"]).await;
    assert_eq!(call(&gw, &[("apikey", "bob-key")]).await, (403, forbidden()));
    assert_eq!(up.hits(), 0, "the upstream was not reached");
}

#[tokio::test]
async fn an_allow_list_refuses_an_authenticated_consumer_without_groups_with_403() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"allow": ["admins"]})).await;
    consumer(&gw, "carl", &[]).await;
    assert_eq!(call(&gw, &[("apikey", "carl-key")]).await, (403, forbidden()));
}

#[tokio::test]
async fn a_deny_list_refuses_listed_groups_and_lets_everyone_else_through() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"deny": ["banned"]})).await;
    consumer(&gw, "ann", &["admins"]).await;
    consumer(&gw, "bob", &["admins", "banned"]).await;
    consumer(&gw, "carl", &[]).await;
    assert_eq!(as_consumer(&gw, "ann", &[]).await, (200, Some("admins".into())));
    assert_eq!(call(&gw, &[("apikey", "bob-key")]).await, (403, forbidden()));
    // No groups at all: nothing to deny, and no groups to announce.
    assert_eq!(as_consumer(&gw, "carl", &[("x-consumer-groups", "admins")]).await, (200, None));
}

#[tokio::test]
async fn acl_without_an_identified_consumer_answers_401() {
    let (gw, up) = start().await;
    gw.service_and_route(&up, "svc", json!({"name": "api", "paths": ["/api"]})).await;
    gw.create("/routes/api/plugins", json!({"name": "acl", "config": {"deny": ["banned"]}})).await;
    assert_eq!(call(&gw, &[]).await, (401, unauthorized()));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn acl_runs_after_key_auth_so_a_missing_key_is_key_auth_s_401() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"allow": ["admins"]})).await;
    let (status, body) = call(&gw, &[]).await;
    assert_eq!((status, body), (401, json!({"message": "No API key found in request"})));
    let (status, body) = call(&gw, &[("apikey", "wrong")]).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn an_allow_list_refuses_the_anonymous_consumer_without_groups_with_401() {
    let (gw, up) = start().await;
    let guest = gw.create("/consumers", json!({"username": "guest"})).await;
    guarded_route(&gw, &up, json!({"anonymous": id(&guest)}), json!({"allow": ["admins"]})).await;
    consumer(&gw, "ann", &["admins"]).await;
    assert_eq!(call(&gw, &[]).await, (401, unauthorized()));
    assert_eq!(call(&gw, &[("apikey", "wrong")]).await, (401, unauthorized()));
    assert_eq!(as_consumer(&gw, "ann", &[]).await, (200, Some("admins".into())));

    // An anonymous consumer that is in a listed group gets through.
    gw.create("/consumers/guest/acls", json!({"group": "admins"})).await;
    let (status, body) = call(&gw, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-consumer-username"], "guest");
    assert_eq!(body["headers"]["x-consumer-groups"], "admins");
}

#[tokio::test]
async fn hide_groups_header_keeps_the_groups_from_the_upstream() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"allow": ["admins"], "hide_groups_header": true})).await;
    consumer(&gw, "ann", &["admins", "ops"]).await;
    assert_eq!(as_consumer(&gw, "ann", &[]).await, (200, None));
    assert_eq!(as_consumer(&gw, "ann", &[("x-consumer-groups", "root")]).await, (200, None));
}

#[tokio::test]
async fn consumer_groups_count_as_acl_groups_only_with_include_consumer_groups() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"allow": ["gold"]})).await;
    consumer(&gw, "ann", &[]).await;
    consumer(&gw, "bob", &["admins"]).await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": ["ann", "bob"]})).await;
    assert_eq!(call(&gw, &[("apikey", "ann-key")]).await, (403, forbidden()));
    assert_eq!(call(&gw, &[("apikey", "bob-key")]).await, (403, forbidden()));

    let (_, plugins) = gw.get("/routes/api/plugins").await;
    let acl = plugins["data"].as_array().expect("data").iter().find(|p| p["name"] == "acl").expect("acl").clone();
    let (status, body) =
        gw.patch(&format!("/plugins/{}", id(&acl)), json!({"config": {"include_consumer_groups": true}})).await;
    assert_eq!(status, 200, "{body}");
    // Both kinds of groups are announced, sorted together.
    assert_eq!(as_consumer(&gw, "ann", &[]).await, (200, Some("gold".into())));
    assert_eq!(as_consumer(&gw, "bob", &[]).await, (200, Some("admins, gold".into())));

    // Leaving the consumer group closes the door again.
    assert_eq!(gw.delete("/consumer_groups/gold/consumers/ann").await, 204);
    assert_eq!(call(&gw, &[("apikey", "ann-key")]).await, (403, forbidden()));
}

#[tokio::test]
async fn a_deny_list_with_include_consumer_groups_refuses_members_of_a_denied_consumer_group() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"deny": ["trial"], "include_consumer_groups": true})).await;
    consumer(&gw, "ann", &[]).await;
    consumer(&gw, "bob", &[]).await;
    gw.create("/consumer_groups", json!({"name": "trial"})).await;
    gw.create("/consumer_groups", json!({"name": "paid"})).await;
    gw.create("/consumer_groups/trial/consumers", json!({"consumer": "ann"})).await;
    gw.create("/consumer_groups/paid/consumers", json!({"consumer": "bob"})).await;
    assert_eq!(call(&gw, &[("apikey", "ann-key")]).await, (403, forbidden()));
    assert_eq!(as_consumer(&gw, "bob", &[]).await, (200, Some("paid".into())));
}

#[tokio::test]
async fn without_include_consumer_groups_the_upstream_hears_only_acl_groups() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"allow": ["admins"]})).await;
    consumer(&gw, "ann", &["admins"]).await;
    gw.create("/consumer_groups", json!({"name": "gold"})).await;
    gw.create("/consumer_groups/gold/consumers", json!({"consumer": "ann"})).await;
    assert_eq!(as_consumer(&gw, "ann", &[]).await, (200, Some("admins".into())));
}

#[tokio::test]
async fn an_acl_group_given_or_taken_applies_on_the_next_request() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"allow": ["admins"]})).await;
    consumer(&gw, "ann", &["dev"]).await;
    assert_eq!(call(&gw, &[("apikey", "ann-key")]).await, (403, forbidden()));

    let admins = gw.create("/consumers/ann/acls", json!({"group": "admins"})).await;
    assert_eq!(as_consumer(&gw, "ann", &[]).await, (200, Some("admins, dev".into())));
    assert_eq!(gw.patch(&format!("/acls/{}", id(&admins)), json!({"group": "root"})).await.0, 200);
    assert_eq!(call(&gw, &[("apikey", "ann-key")]).await, (403, forbidden()));
    assert_eq!(gw.patch("/consumers/ann/acls/root", json!({"group": "admins"})).await.0, 200);
    assert_eq!(as_consumer(&gw, "ann", &[]).await, (200, Some("admins, dev".into())));
    assert_eq!(gw.delete("/consumers/ann/acls/admins").await, 204);
    assert_eq!(call(&gw, &[("apikey", "ann-key")]).await, (403, forbidden()));
}

#[tokio::test]
async fn changing_the_acl_plugin_s_lists_applies_on_the_next_request() {
    let (gw, up) = start().await;
    guarded_route(&gw, &up, json!({}), json!({"allow": ["admins"]})).await;
    consumer(&gw, "ann", &["dev"]).await;
    assert_eq!(call(&gw, &[("apikey", "ann-key")]).await, (403, forbidden()));
    let (_, plugins) = gw.get("/routes/api/plugins").await;
    let acl = plugins["data"].as_array().expect("data").iter().find(|p| p["name"] == "acl").expect("acl").clone();
    let (status, body) =
        gw.patch(&format!("/plugins/{}", id(&acl)), json!({"config": {"allow": ["admins", "dev"]}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(as_consumer(&gw, "ann", &[]).await, (200, Some("dev".into())));
    assert_eq!(gw.patch(&format!("/plugins/{}", id(&acl)), json!({"enabled": false})).await.0, 200);
    let (_, plugins) = gw.get("/plugins").await;
    assert_eq!(plugins["data"].as_array().map(Vec::len), Some(2));
    gw.create("/consumers", json!({"username": "dora"})).await;
    gw.create("/consumers/dora/key-auth", json!({"key": "dora-key"})).await;
    assert_eq!(as_consumer(&gw, "dora", &[]).await.0, 200, "a disabled acl lets everyone with a key through");
}
