//! A control plane node, black-box: admin tokens and roles on every path, `/v1/tokens`,
//! `/v2/control-planes` in Konnect's shape, and each control plane's Admin API under
//! `/v2/control-planes/{id}/core-entities/`, kept apart from the others.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::{Gateway, Options, client, status_json};

async fn send(http: &reqwest::Client, method: &str, url: &str, body: Option<Value>) -> (u16, Value, String) {
    let mut req = http.request(method.parse().unwrap(), url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (status, body) = status_json(r).await;
    (status, body, content_type)
}

fn assert_problem(body: &Value, content_type: &str, status: u16) {
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["title"].is_string() && body["detail"].is_string() && body["instance"].is_string(), "{body}");
}

async fn mint(gw: &Gateway, role: &str) -> String {
    let (status, body) = gw.post("/v1/tokens", json!({"name": format!("{role} token"), "role": role})).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// Every kind of path the node serves, with a write method for each: the check sits in front of
/// routing, so a route added later is covered too (the last rows are paths no route serves).
const PATHS: &[(&str, &str)] = &[
    ("POST", "/consumers"),
    ("PATCH", "/consumers/ann"),
    ("PUT", "/consumers/ann"),
    ("DELETE", "/consumers/ann"),
    ("POST", "/consumers/ann/key-auth"),
    ("POST", "/consumers/ann/acls"),
    ("POST", "/consumers/ann/consumer_groups"),
    ("POST", "/consumer_groups"),
    ("POST", "/consumer_groups/gold/consumers"),
    ("POST", "/consumer_groups/gold/plugins"),
    ("POST", "/services"),
    ("POST", "/services/s/routes"),
    ("POST", "/routes"),
    ("PATCH", "/routes/r/service"),
    ("POST", "/plugins"),
    ("POST", "/key-auths"),
    ("POST", "/acls"),
    ("POST", "/schemas/plugins/validate"),
    ("POST", "/apis"),
    ("POST", "/keyauth_credentials"),
    ("POST", "/v1/tokens"),
    ("DELETE", "/v1/tokens/x"),
    ("POST", "/v2/control-planes"),
    ("PATCH", "/v2/control-planes/x"),
    ("DELETE", "/v2/control-planes/x"),
    ("POST", "/v2/control-planes/x/data-plane-tokens"),
    ("POST", "/v1/realms"),
    ("PATCH", "/v1/realms/x"),
    ("DELETE", "/v1/realms/x"),
    ("POST", "/v1/realms/x/consumers"),
    ("POST", "/v1/realms/x/consumers/y/move"),
    ("POST", "/v1/realms/x/consumers/y/keys"),
    ("DELETE", "/v2/control-planes/x/data-plane-tokens/y"),
    ("POST", "/v2/control-planes/00000000-0000-4000-8000-000000000001/core-entities/consumers"),
    ("POST", "/no/such/path"),
    ("DELETE", "/v9/whatever"),
];

#[tokio::test]
async fn every_path_refuses_a_missing_or_unknown_token_with_401_and_a_viewer_write_with_403() {
    let (gw, _) = Gateway::start_control_plane().await;
    let viewer = mint(&gw, "viewer").await;
    let anonymous = client(None);
    let stranger = client(Some("tgp_not-a-token"));
    let viewer = client(Some(&viewer));
    for (method, path) in PATHS {
        let url = gw.admin_url(path);
        for (who, http) in [("no token", &anonymous), ("unknown token", &stranger)] {
            let (status, body, ct) = send(http, method, &url, Some(json!({}))).await;
            assert_eq!(status, 401, "{method} {path} with {who}: {body}");
            assert_problem(&body, &ct, 401);
        }
        let (status, body, ct) = send(&viewer, method, &url, Some(json!({}))).await;
        assert_eq!(status, 403, "{method} {path} as a viewer: {body}");
        assert_problem(&body, &ct, 403);
    }
    // Reads need a token too; a viewer's are answered.
    let nodes = "/v2/control-planes/00000000-0000-4000-8000-000000000001/nodes";
    for path in ["/", "/status", "/consumers", "/v1/tokens", "/v2/control-planes", nodes] {
        let (status, _, _) = send(&anonymous, "GET", &gw.admin_url(path), None).await;
        assert_eq!(status, 401, "GET {path}");
        let (status, body, _) = send(&viewer, "GET", &gw.admin_url(path), None).await;
        assert_eq!(status, 200, "GET {path} as a viewer: {body}");
    }
}

#[tokio::test]
async fn tokens_are_shown_once_listed_without_secrets_and_revoked_at_once() {
    let (gw, _) = Gateway::start_control_plane().await;
    let (status, created) = gw.post("/v1/tokens", json!({"name": "deploy bot", "role": "org_admin"})).await;
    assert_eq!(status, 201, "{created}");
    let secret = created["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("tgp_") && secret.len() >= 40, "{secret}");
    assert_eq!(created["role"], "org_admin");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'), "{created}");

    let (status, list) = gw.get("/v1/tokens").await;
    assert_eq!(status, 200);
    let listed = list["data"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "the CLI's token and this one: {list}");
    assert!(!list.to_string().contains(&secret), "no secret in lists");
    assert!(listed.iter().all(|t| t.get("token").is_none()), "{list}");

    let bot = client(Some(&secret));
    let (status, _, _) = send(&bot, "POST", &gw.admin_url("/consumers"), Some(json!({"username": "by-bot"}))).await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap();
    assert_eq!(gw.delete(&format!("/v1/tokens/{id}")).await, 204);
    let (status, _, _) = send(&bot, "GET", &gw.admin_url("/consumers"), None).await;
    assert_eq!(status, 401, "revoked at once");
    assert_eq!(gw.delete(&format!("/v1/tokens/{id}")).await, 404);

    let (status, body) = gw.post("/v1/tokens", json!({"role": "root", "colour": "red"})).await;
    assert_eq!(status, 400, "{body}");
    let fields: Vec<&str> =
        body["invalid_parameters"].as_array().unwrap().iter().filter_map(|p| p["field"].as_str()).collect();
    for f in ["name", "role", "colour"] {
        assert!(fields.contains(&f), "{f} missing in {body}");
    }
}

#[tokio::test]
async fn control_planes_are_managed_in_konnects_shape() {
    let (gw, _) = Gateway::start_control_plane().await;
    let (status, list) = gw.get("/v2/control-planes").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["name"], "default", "{list}");
    assert_eq!(list["meta"]["page"], json!({"number": 1, "size": 100, "total": 1}));

    let (status, billing) = gw
        .post(
            "/v2/control-planes",
            json!({"name": "Billing", "description": "payments", "labels": {"team": "money"}, "cluster_type": "CLUSTER_TYPE_CONTROL_PLANE"}),
        )
        .await;
    assert_eq!(status, 201, "{billing}");
    let id = billing["id"].as_str().unwrap();
    assert_eq!(billing["labels"], json!({"team": "money"}));
    assert_eq!(billing["config"]["cluster_type"], "CLUSTER_TYPE_CONTROL_PLANE");
    assert!(billing["config"]["control_plane_endpoint"].is_string());
    assert!(billing["created_at"].as_str().unwrap().contains('T'), "{billing}");

    let (status, again) = gw.post("/v2/control-planes", json!({"name": "Billing"})).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["detail"], "Control Plane with provided name already exists.");

    let (status, bad) = gw
        .post(
            "/v2/control-planes",
            json!({"description": 5, "labels": {"kong-x": "y"}, "id": "mine", "cluster_type": "big"}),
        )
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["detail"], "Request contains unknown property");
    let fields: Vec<&str> =
        bad["invalid_parameters"].as_array().unwrap().iter().filter_map(|p| p["field"].as_str()).collect();
    for f in ["id", "name", "description", "labels.kong-x", "cluster_type"] {
        assert!(fields.contains(&f), "{f} missing in {bad}");
    }

    let (status, patched) = gw.patch(&format!("/v2/control-planes/{id}"), json!({"description": "invoices"})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!((patched["name"].as_str(), patched["description"].as_str()), (Some("Billing"), Some("invoices")));
    let (status, filtered) = gw.get("/v2/control-planes?filter[name][eq]=Billing").await;
    assert_eq!(status, 200);
    assert_eq!(filtered["meta"]["page"]["total"], 1, "{filtered}");

    assert_eq!(gw.delete(&format!("/v2/control-planes/{id}")).await, 204);
    let (status, gone) = gw.get(&format!("/v2/control-planes/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(gone["title"], "Not Found");
    assert_eq!(gw.delete("/v2/control-planes/00000000-0000-4000-8000-000000000001").await, 400, "default stays");
}

#[tokio::test]
async fn entities_of_different_control_planes_never_see_each_other_and_may_share_names() {
    let (gw, _) = Gateway::start_control_plane().await;
    let (_, a) = gw.post("/v2/control-planes", json!({"name": "Appointments"})).await;
    let (_, b) = gw.post("/v2/control-planes", json!({"name": "Dev"})).await;
    let base = |cp: &Value| format!("/v2/control-planes/{}/core-entities", cp["id"].as_str().unwrap());
    for (cp, who) in [(&a, "a-only"), (&b, "b-only")] {
        gw.create(&format!("{}/consumers", base(cp)), json!({"username": "shared"})).await;
        gw.create(&format!("{}/consumers", base(cp)), json!({"username": who})).await;
        gw.create(&format!("{}/consumer_groups", base(cp)), json!({"name": "gold"})).await;
        gw.create(&format!("{}/consumers/shared/key-auth", base(cp)), json!({})).await;
    }
    gw.create("/consumers", json!({"username": "shared"})).await;

    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> =
            v["data"].as_array().unwrap().iter().map(|c| c["username"].as_str().unwrap().to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(names(&gw.get(&format!("{}/consumers", base(&a))).await.1), ["a-only", "shared"]);
    assert_eq!(names(&gw.get(&format!("{}/consumers", base(&b))).await.1), ["b-only", "shared"]);
    assert_eq!(names(&gw.get("/consumers").await.1), ["shared"], "the root paths are the default control plane");
    let default = "/v2/control-planes/00000000-0000-4000-8000-000000000001/core-entities/consumers";
    assert_eq!(names(&gw.get(default).await.1), ["shared"]);
    assert_eq!(gw.get(&format!("{}/consumers/b-only", base(&a))).await.0, 404);
    assert_eq!(gw.get(&format!("{}/key-auths", base(&a))).await.1["data"].as_array().unwrap().len(), 1);
    assert_eq!(gw.get("/v2/control-planes/6d4ad3e2-64c4-4c44-9c5c-5f3b1a1c9a11/core-entities/consumers").await.0, 404);

    // Every write was live before it was answered (the node's snapshot follows every change feed).
    assert!(!gw.logs().contains("write acknowledged before the proxy caught up"), "{}", gw.logs());

    // Deleting a control plane deletes what it held, and only that.
    assert_eq!(gw.delete(&format!("/v2/control-planes/{}", a["id"].as_str().unwrap())).await, 204);
    assert_eq!(names(&gw.get(&format!("{}/consumers", base(&b))).await.1), ["b-only", "shared"]);
}

#[tokio::test]
async fn a_traditional_node_is_open_on_localhost_unless_admin_auth_is_on() {
    let open = Gateway::start().await;
    assert_eq!(open.get("/consumers").await.0, 200);

    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().to_path_buf();
    let env = [("TOLLGATE_PREFIX", prefix.to_str().unwrap())];
    let (code, token, err) =
        support::run_cli(&["tokens", "create", "--name", "ops", "--role", "viewer"], &env, &prefix);
    assert_eq!(code, 0, "{err}");
    let opts = Options {
        prefix: Some(prefix),
        extra: vec![("TOLLGATE_ADMIN_AUTH".into(), "on".into())],
        token: Some(token.trim().to_string()),
        ..Options::default()
    };
    let guarded = Gateway::start_with(opts).await;
    assert_eq!(guarded.get("/consumers").await.0, 200, "a viewer reads");
    assert_eq!(guarded.post("/consumers", json!({"username": "x"})).await.0, 403, "but does not write");
    let (status, _, _) = send(&client(None), "GET", &guarded.admin_url("/consumers"), None).await;
    assert_eq!(status, 401);
    // The proxy is not behind admin tokens.
    assert_eq!(guarded.call("/nothing", &[]).await.status(), 404);
}

#[tokio::test]
async fn the_tokens_cli_refuses_an_unknown_role() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TOLLGATE_PREFIX", dir.path().to_str().unwrap())];
    let (code, _, err) = support::run_cli(&["tokens", "create", "--name", "x", "--role", "root"], &env, dir.path());
    assert_ne!(code, 0);
    assert!(err.contains("org_admin, viewer"), "{err}");
}
