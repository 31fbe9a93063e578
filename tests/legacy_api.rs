//! Kong 0.x Admin API paths, as old scripts use them: `/apis` in the field names of 0.1 (public_dns,
//! target_url), 0.5 (request_host, request_path, strip_request_path, upstream_url) and 0.10 (hosts,
//! uris, strip_uri), plugins on an API (`config.*` and 0.x `value.*`, name `keyauth`), and the 0.1
//! credential paths. Each is stored as today's entities and listed back in the 0.x shape.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Gateway, Upstream};

async fn body_of(r: reqwest::Response) -> Value {
    r.json().await.expect("json body")
}

#[tokio::test]
async fn a_0_5_api_with_request_host_and_path_is_proxied_and_listed_back() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start().await;
    let (status, api) = gw
        .post_form(
            "/apis/",
            &[
                ("name", "orders"),
                ("request_host", "orders.test"),
                ("request_path", "/orders"),
                ("strip_request_path", "true"),
                ("upstream_url", &upstream.url("/v2")),
            ],
        )
        .await;
    assert_eq!(status, 201, "{api}");
    assert_eq!(api["request_host"], "orders.test");
    assert_eq!(api["request_path"], "/orders");
    assert_eq!(api["upstream_url"], upstream.url("/v2"));
    assert!(api["created_at"].as_i64().unwrap() > 1_000_000_000_000, "0.x timestamps are in milliseconds");

    let r = gw
        .eventually("/orders/42?x=1", &[("host", "orders.test")], Duration::from_secs(2), |r| r.status() == 200)
        .await;
    let echoed = body_of(r).await;
    assert_eq!(echoed["path"], "/v2/42");
    assert_eq!(echoed["query"], "x=1");

    let (status, list) = gw.get("/apis").await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 1);
    assert_eq!(list["data"][0]["name"], "orders");
    let (status, by_name) = gw.get("/apis/orders").await;
    assert_eq!((status, &by_name["id"]), (200, &api["id"]));
    // The API is today's service + route pair.
    let (status, service) = gw.get("/services/orders").await;
    assert_eq!((status, &service["id"]), (200, &api["id"]));
}

#[tokio::test]
async fn a_0_10_api_with_hosts_uris_and_methods_is_stored_as_a_route() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start().await;
    let (status, api) = gw
        .post(
            "/apis",
            json!({
                "name": "catalog",
                "hosts": ["catalog.test", "shop.test"],
                "uris": ["/catalog"],
                "methods": ["GET"],
                "strip_uri": false,
                "preserve_host": true,
                "upstream_url": upstream.url(""),
            }),
        )
        .await;
    assert_eq!(status, 201, "{api}");
    assert_eq!(api["hosts"], json!(["catalog.test", "shop.test"]));
    assert_eq!(api["strip_uri"], false);
    assert_eq!(api["preserve_host"], true);
    let r =
        gw.eventually("/catalog/items", &[("host", "shop.test")], Duration::from_secs(2), |r| r.status() == 200).await;
    let echoed = body_of(r).await;
    assert_eq!(echoed["path"], "/catalog/items");
    assert_eq!(echoed["headers"]["host"], "shop.test");
    let posted = gw.http.post(gw.proxy_url("/catalog/items")).header("host", "shop.test").send().await.unwrap();
    assert_eq!(posted.status(), 404, "only GET was allowed");
}

#[tokio::test]
async fn an_api_without_an_upstream_or_matching_attribute_is_refused() {
    let gw = Gateway::start().await;
    let (status, body) = gw.post("/apis", json!({"name": "nothing"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["upstream_url"], "upstream_url is required");
    assert!(body["message"].as_str().unwrap().contains("'hosts', 'uris' or 'methods'"), "{body}");
}

#[tokio::test]
async fn an_api_can_be_patched_and_deleted_with_its_plugins() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start().await;
    let api = gw.create("/apis", json!({"name": "a", "hosts": ["a.test"], "upstream_url": upstream.url("")})).await;
    let (status, patched) = gw.patch("/apis/a", json!({"hosts": ["b.test"]})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["hosts"], json!(["b.test"]));
    assert_eq!(patched["id"], api["id"]);
    let plugin = gw.create("/apis/a/plugins", json!({"name": "key-auth", "config": {"key_names": ["token"]}})).await;
    assert_eq!(plugin["api_id"], api["id"]);
    assert_eq!(plugin["config"]["key_names"], json!(["token"]));
    let (_, plugins) = gw.get("/apis/a/plugins").await;
    assert_eq!(plugins["data"][0]["name"], "key-auth");

    assert_eq!(gw.delete("/apis/a").await, 204);
    assert_eq!(gw.get("/apis/a").await.0, 404);
    let id = plugin["id"].as_str().unwrap();
    assert_eq!(gw.get(&format!("/plugins/{id}")).await.0, 404, "the API's plugins go with it");
}

#[tokio::test]
async fn a_0_4_plugin_with_value_fields_and_the_keyauth_name_protects_the_api() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start().await;
    gw.create("/apis", json!({"name": "p", "public_dns": "p.test", "target_url": upstream.url("")})).await;
    let (status, plugin) = gw
        .post_form(
            "/apis/p/plugins",
            &[("name", "keyauth"), ("value.key_names", "token"), ("value.hide_credentials", "true")],
        )
        .await;
    assert_eq!(status, 201, "{plugin}");
    assert_eq!(plugin["name"], "key-auth");
    assert_eq!(plugin["value"]["hide_credentials"], true);
    gw.create("/consumers", json!({"username": "old"})).await;
    let (status, _) = gw.post_form("/consumers/old/keyauth", &[("key", "legacy-key")]).await;
    assert_eq!(status, 201, "0.4 nested keyauth path");
    // Once the plugin is live a keyless call is refused; then the key passes and is hidden.
    let keyless = gw.eventually("/", &[("host", "p.test")], Duration::from_secs(2), |r| r.status() == 401).await;
    assert_eq!(keyless.status(), 401);
    let r = gw
        .eventually("/", &[("host", "p.test"), ("token", "legacy-key")], Duration::from_secs(2), |r| r.status() == 200)
        .await;
    let echoed = body_of(r).await;
    assert!(echoed["headers"].get("token").is_none(), "hide_credentials removed the key");
}

#[tokio::test]
async fn plugins_configurations_lists_and_deletes_0_1_plugin_configurations() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start().await;
    let api = gw.create("/apis", json!({"name": "c", "public_dns": "c.test", "target_url": upstream.url("")})).await;
    let api_id = api["id"].as_str().unwrap();
    let (status, created) = gw
        .post_form("/plugins_configurations", &[("name", "keyauth"), ("api_id", api_id), ("value.key_names", "apikey")])
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, list) = gw.get("/plugins_configurations").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["api_id"], api_id);
    assert_eq!(list["data"][0]["value"]["key_names"], json!(["apikey"]));
    let id = created["id"].as_str().unwrap();
    assert_eq!(gw.delete(&format!("/plugins_configurations/{id}")).await, 204);
    let (_, list) = gw.get("/plugins_configurations").await;
    assert_eq!(list["data"], json!([]));
    let (status, body) = gw
        .post_form(
            "/plugins_configurations",
            &[("name", "keyauth"), ("api_id", "6b4f1c1e-0a6f-4d0c-9a5a-1f2e3d4c5b6a"), ("value.key_names", "apikey")],
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["api_id"], "api_id 6b4f1c1e-0a6f-4d0c-9a5a-1f2e3d4c5b6a does not exist");
}

#[tokio::test]
async fn keyauth_credentials_are_listed_read_and_deleted_in_the_0_1_shape() {
    let gw = Gateway::start().await;
    let c = gw.create("/consumers", json!({"username": "k"})).await;
    let cid = c["id"].as_str().unwrap();
    let (status, cred) = gw.post_form("/keyauth_credentials", &[("key", "k-1"), ("consumer_id", cid)]).await;
    assert_eq!(status, 201, "{cred}");
    assert_eq!(cred.as_object().unwrap().keys().collect::<Vec<_>>(), ["consumer_id", "created_at", "id", "key"]);
    let id = cred["id"].as_str().unwrap();
    let (status, read) = gw.get(&format!("/keyauth_credentials/{id}")).await;
    assert_eq!((status, &read["key"]), (200, &json!("k-1")));
    let (_, list) = gw.get("/keyauth_credentials").await;
    assert_eq!(list["data"][0]["consumer_id"], cid);
    assert_eq!(gw.delete(&format!("/keyauth_credentials/{id}")).await, 204);
    assert_eq!(gw.get(&format!("/keyauth_credentials/{id}")).await.0, 404);
}
