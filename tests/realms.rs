//! The realms API (`/v1/realms`), black-box on a control plane node: realms, realm consumers and
//! their keys in Konnect's consumers API v1 shapes, with cursor pages, filters and problem+json.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::{Gateway, client};

fn fields(problem: &Value) -> Vec<String> {
    problem["invalid_parameters"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["field"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

async fn realm(gw: &Gateway, body: Value) -> Value {
    let (status, r) = gw.post("/v1/realms", body).await;
    assert_eq!(status, 201, "{r}");
    r
}

#[tokio::test]
async fn a_realm_is_created_with_konnects_defaults_and_validated_field_by_field() {
    let (gw, _) = Gateway::start_control_plane().await;
    let (_, planes) = gw.get("/v2/control-planes").await;
    let default_cp = planes["data"][0]["id"].as_str().unwrap().to_string();
    let prod =
        realm(&gw, json!({"name": "prod", "allowed_control_planes": [default_cp], "consumer_groups": ["gold"]})).await;
    assert_eq!(prod["ttl"], 10);
    assert_eq!(prod["negative_ttl"], 10);
    assert_eq!(prod["allow_all_control_planes"], false);
    assert_eq!(prod["consumer_groups"], json!(["gold"]));
    assert!(prod["created_at"].as_str().unwrap().ends_with('Z'), "{prod}");
    let id = prod["id"].as_str().unwrap();
    assert_eq!(gw.get(&format!("/v1/realms/{id}")).await.1, prod);

    let (status, bad) = gw
        .post(
            "/v1/realms",
            json!({"ttl": 4, "negative_ttl": "soon", "allowed_control_planes": ["6d4ad3e2-64c4-4c44-9c5c-5f3b1a1c9a11", "*"], "colour": 1}),
        )
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["status"], 400);
    let listed = fields(&bad);
    for f in ["colour", "name", "ttl", "negative_ttl", "allowed_control_planes[0]"] {
        assert!(listed.contains(&f.to_string()), "{f} missing in {bad}");
    }
    assert!(!listed.contains(&"allowed_control_planes[1]".to_string()), "'*' means every control plane");

    let (status, dup) = gw.post("/v1/realms", json!({"name": "prod"})).await;
    assert_eq!(status, 409, "{dup}");

    let (status, patched) =
        gw.patch(&format!("/v1/realms/{id}"), json!({"ttl": 30, "allowed_control_planes": ["*"]})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!((patched["ttl"].as_i64(), patched["name"].as_str()), (Some(30), Some("prod")));
    assert_eq!(gw.get("/v1/realms/6d4ad3e2-64c4-4c44-9c5c-5f3b1a1c9a11").await.0, 404);
}

#[tokio::test]
async fn realms_and_consumers_page_with_cursors_and_filter_by_username() {
    let (gw, _) = Gateway::start_control_plane().await;
    for n in ["a", "b", "c"] {
        realm(&gw, json!({"name": n})).await;
    }
    let (_, first) = gw.get("/v1/realms?page[size]=2").await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(first["meta"]["size"], 2);
    assert_eq!(first["meta"]["previous"], Value::Null);
    let next = first["meta"]["next"].as_str().unwrap().to_string();
    let (_, second) = gw.get(&next).await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["meta"]["next"], Value::Null);
    let (_, back) = gw.get(second["meta"]["previous"].as_str().unwrap()).await;
    assert_eq!(back["data"], first["data"], "previous leads back");

    let r = first["data"][0]["id"].as_str().unwrap().to_string();
    for (u, c) in [("cruz", "c-1"), ("ira", "c-2")] {
        let (status, body) =
            gw.post(&format!("/v1/realms/{r}/consumers"), json!({"username": u, "custom_id": c})).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["type"], "proxy");
    }
    let (_, found) = gw.get(&format!("/v1/realms/{r}/consumers?filter[username]=ira")).await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(found["data"][0]["username"], "ira");
    let (_, found) = gw.get(&format!("/v1/realms/{r}/consumers?filter[custom_id][eq]=c-1")).await;
    assert_eq!(found["data"][0]["username"], "cruz");
    assert_eq!(gw.get(&format!("/v1/realms/{r}/consumers?filter[colour]=x")).await.0, 400);
    assert_eq!(gw.get("/v1/realms?page[after]=not-a-cursor").await.0, 400);
}

#[tokio::test]
async fn realm_consumers_have_unique_usernames_per_realm_and_move_with_their_keys() {
    let (gw, _) = Gateway::start_control_plane().await;
    let prod = realm(&gw, json!({"name": "prod"})).await["id"].as_str().unwrap().to_string();
    let dev = realm(&gw, json!({"name": "dev"})).await["id"].as_str().unwrap().to_string();
    let (_, cruz) = gw
        .post(&format!("/v1/realms/{prod}/consumers"), json!({"username": "cruz", "consumer_groups": ["silver"]}))
        .await;
    let cruz = cruz["id"].as_str().unwrap().to_string();
    assert_eq!(gw.post(&format!("/v1/realms/{prod}/consumers"), json!({"username": "cruz"})).await.0, 409);
    assert_eq!(gw.post(&format!("/v1/realms/{dev}/consumers"), json!({"username": "sasha"})).await.0, 201);
    let (status, bad) =
        gw.post(&format!("/v1/realms/{prod}/consumers"), json!({"type": "robot", "tags": "x", "id": "mine"})).await;
    assert_eq!(status, 400, "{bad}");
    for f in ["username", "type", "tags", "id"] {
        assert!(fields(&bad).contains(&f.to_string()), "{f} missing in {bad}");
    }

    let (status, key) = gw.post(&format!("/v1/realms/{prod}/consumers/{cruz}/keys"), json!({"type": "new"})).await;
    assert_eq!(status, 201, "{key}");
    let (status, moved) =
        gw.post(&format!("/v1/realms/{prod}/consumers/{cruz}/move"), json!({"target_realm_id": dev})).await;
    assert_eq!(status, 201, "{moved}");
    assert_eq!(moved, json!({"realm_id": dev}));
    assert_eq!(gw.get(&format!("/v1/realms/{prod}/consumers/{cruz}")).await.0, 404);
    let (_, keys) = gw.get(&format!("/v1/realms/{dev}/consumers/{cruz}/keys")).await;
    assert_eq!(keys["data"][0]["id"], key["id"], "its keys moved along");
    let (status, bad) =
        gw.post(&format!("/v1/realms/{dev}/consumers/{cruz}/move"), json!({"target_realm_id": "nope"})).await;
    assert_eq!(status, 400, "{bad}");
}

#[tokio::test]
async fn key_secrets_are_shown_once_and_legacy_secrets_are_unique_in_a_realm() {
    let (gw, _) = Gateway::start_control_plane().await;
    let r = realm(&gw, json!({"name": "prod"})).await["id"].as_str().unwrap().to_string();
    let (_, c) = gw.post(&format!("/v1/realms/{r}/consumers"), json!({"username": "ira"})).await;
    let keys = format!("/v1/realms/{r}/consumers/{}/keys", c["id"].as_str().unwrap());

    let (status, generated) = gw.post(&keys, json!({"type": "new", "tags": ["ci"]})).await;
    assert_eq!(status, 201, "{generated}");
    let secret = generated["secret"].as_str().unwrap().to_string();
    assert!(secret.len() >= 32, "{secret}");
    for f in ["id", "type", "secret", "created_at", "updated_at", "tags"] {
        assert!(generated.get(f).is_some(), "{f} missing in {generated}");
    }
    let (status, legacy) = gw.post(&keys, json!({"type": "legacy", "secret": "my-old-kong-key"})).await;
    assert_eq!(status, 201, "{legacy}");
    assert_eq!(legacy["secret"], "my-old-kong-key");
    assert_eq!(gw.post(&keys, json!({"type": "legacy", "secret": "my-old-kong-key"})).await.0, 409);
    let (status, bad) = gw.post(&keys, json!({"type": "new", "secret": "chosen"})).await;
    assert_eq!((status, fields(&bad)), (400, vec!["secret".to_string()]));
    let (status, bad) = gw.post(&keys, json!({"type": "legacy"})).await;
    assert_eq!((status, fields(&bad)), (400, vec!["secret".to_string()]));

    let (_, list) = gw.get(&keys).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&secret) && !list.to_string().contains("my-old-kong-key"), "{list}");
    let id = generated["id"].as_str().unwrap();
    let (_, one) = gw.get(&format!("{keys}/{id}")).await;
    assert_eq!(one.get("secret"), None, "{one}");
    assert_eq!(gw.delete(&format!("{keys}/{id}")).await, 204);
    assert_eq!(gw.get(&format!("{keys}/{id}")).await.0, 404);
}

#[tokio::test]
async fn a_realm_holding_consumers_is_deleted_only_when_forced() {
    let (gw, _) = Gateway::start_control_plane().await;
    let r = realm(&gw, json!({"name": "prod"})).await["id"].as_str().unwrap().to_string();
    gw.post(&format!("/v1/realms/{r}/consumers"), json!({"username": "cruz"})).await;
    let (status, refused) = {
        let resp = gw.http.delete(gw.admin_url(&format!("/v1/realms/{r}"))).send().await.unwrap();
        support::status_json(resp).await
    };
    assert_eq!(status, 400, "{refused}");
    assert_eq!(gw.delete(&format!("/v1/realms/{r}?force=maybe")).await, 400);
    assert_eq!(gw.delete(&format!("/v1/realms/{r}?force=true")).await, 204);
    assert_eq!(gw.get(&format!("/v1/realms/{r}")).await.0, 404);
}

#[tokio::test]
async fn only_org_admins_write_realms() {
    let (gw, _) = Gateway::start_control_plane().await;
    let (_, viewer) = gw.post("/v1/tokens", json!({"name": "v", "role": "viewer"})).await;
    let viewer = client(viewer["token"].as_str());
    let r = viewer.post(gw.admin_url("/v1/realms")).json(&json!({"name": "prod"})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = viewer.get(gw.admin_url("/v1/realms")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client(None).get(gw.admin_url("/v1/realms")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}
