//! A DB-less node, as Kong teams run one with `database = off`: it serves the file it was started
//! with, refuses entity writes with Kong's 405s, takes a whole new configuration on `POST /config`
//! (validated whole, swapped without failing a request in flight, kept across a `kill -9`),
//! answers `check_hash` and `GET /config`, and reports its `configuration_hash`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Gateway, Options, Upstream};

fn file(upstream: &Upstream, route: &str) -> String {
    format!(
        "_format_version: \"3.0\"\nservices:\n- name: echo\n  url: http://127.0.0.1:{}\n  routes:\n  - name: {route}\n    paths: [/{route}, /both]\nconsumers:\n- username: alice\n",
        upstream.port()
    )
}

async fn dbless(dir: &std::path::Path, config: Option<&str>) -> Gateway {
    let mut extra = vec![("TOLLGATE_DATABASE".to_string(), "off".to_string())];
    if let Some(text) = config {
        std::fs::write(dir.join("kong.yml"), text).expect("write");
        extra.push(("TOLLGATE_DECLARATIVE_CONFIG".into(), dir.join("kong.yml").display().to_string()));
    }
    Gateway::start_with(Options { prefix: Some(dir.join("node")), extra, ..Options::default() }).await
}

async fn post_config(gw: &Gateway, query: &str, content_type: &str, body: String) -> (u16, Value) {
    let r = gw
        .http
        .post(gw.admin_url(&format!("/config{query}")))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /config");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn md5_hex(text: &str) -> String {
    use md5::Digest;
    md5::Md5::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_dbless_node_serves_its_file_and_refuses_entity_writes_as_kong_does() {
    let dir = tempfile::tempdir().expect("dir");
    let up = Upstream::start().await;
    let text = file(&up, "first");
    let gw = dbless(dir.path(), Some(&text)).await;
    assert_eq!(gw.call("/first", &[]).await.status(), 200);
    let (status, services) = gw.get("/services").await;
    assert_eq!(status, 200);
    assert_eq!(services["data"][0]["name"], "echo");
    let refused = |verb: &str, table: &str| {
        json!({"code": 12, "name": "operation unsupported",
               "message": format!("cannot {verb} '{table}' entities when not using a database")})
    };
    assert_eq!(
        gw.post("/services", json!({"name": "x", "host": "a.test"})).await,
        (405, refused("create", "services"))
    );
    assert_eq!(gw.patch("/services/echo", json!({"retries": 1})).await, (405, refused("update", "services")));
    assert_eq!(gw.put("/consumers/bob", json!({})).await, (405, refused("create or update", "consumers")));
    let r = gw.http.delete(gw.admin_url("/consumers/alice")).send().await.expect("delete");
    assert_eq!(r.status(), 405);
    assert_eq!(r.json::<Value>().await.expect("json"), refused("remove", "consumers"));
    // A bad body is still a 400 first, as in Kong (validation comes before the store).
    assert_eq!(gw.post("/services", json!({"name": "x"})).await.0, 400);
    let (_, status) = gw.get("/status").await;
    assert_eq!(status["configuration_hash"], md5_hex(&text));
    assert!(status.get("database").is_none(), "{status}");
}

#[tokio::test]
async fn post_config_swaps_the_whole_configuration_and_survives_a_kill() {
    let dir = tempfile::tempdir().expect("dir");
    let up = Upstream::start().await;
    let mut gw = dbless(dir.path(), None).await;
    let (_, status) = gw.get("/status").await;
    assert_eq!(status["configuration_hash"], "00000000000000000000000000000000");
    assert_eq!(
        post_config(&gw, "", "text/yaml", String::new()).await,
        (400, json!({"message": "expected a declarative configuration"}))
    );

    let second = file(&up, "second");
    let (status, loaded) = post_config(&gw, "", "text/yaml", second.clone()).await;
    assert_eq!(status, 201, "{loaded}");
    assert_eq!(loaded["services"].as_object().map(|m| m.len()), Some(1), "{loaded}");
    assert!(loaded["routes"].as_object().is_some_and(|m| m.values().any(|r| r["name"] == "second")));
    // Answered once the proxy serves it.
    assert_eq!(gw.call("/second", &[]).await.status(), 200);
    assert_eq!(post_config(&gw, "?check_hash=1", "text/yaml", second.clone()).await.0, 304);

    // A JSON body holding the file in `config`, replacing everything: the old route is gone.
    let third = file(&up, "third");
    let (status, _) = post_config(&gw, "", "application/json", json!({"config": third}).to_string()).await;
    assert_eq!(status, 201);
    assert_eq!(gw.call("/third", &[]).await.status(), 200);
    assert_eq!(gw.call("/second", &[]).await.status(), 404);
    let (_, exported) = gw.get("/config").await;
    let yaml = exported["config"].as_str().expect("config");
    assert!(yaml.contains("_format_version: \"3.0\"") && yaml.contains("name: third"), "{yaml}");

    // An invalid configuration changes nothing, and says why in Kong's shapes.
    let bad = json!({"_format_version": "3.0", "services": [{"name": "bad"}], "nonsense": 1}).to_string();
    let (status, body) = post_config(&gw, "?flatten_errors=1", "application/json", bad).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], 14);
    assert_eq!(body["name"], "invalid declarative configuration");
    assert_eq!(body["fields"], json!({"nonsense": "unknown field"}));
    let item = &body["flattened_errors"][0];
    assert_eq!(item["entity_type"], "service");
    assert_eq!(item["errors"][0], json!({"type": "field", "field": "host", "message": "required field missing"}));
    assert_eq!(gw.call("/third", &[]).await.status(), 200);
    let (status, body) = post_config(&gw, "", "text/yaml", "services: [\n".into()).await;
    assert_eq!(status, 400);
    assert!(
        body["fields"]["error"].as_str().unwrap().starts_with("failed parsing declarative configuration"),
        "{body}"
    );
    // Too large a body: 413, before anything is read into a configuration.
    let huge = "#".repeat(65 * 1024 * 1024);
    assert_eq!(post_config(&gw, "", "text/yaml", huge).await.0, 413);

    // Acknowledged, so kept: killed and started without a file, the node serves it still.
    gw.kill();
    let gw = dbless(dir.path(), None).await;
    let served = gw.eventually("/third", &[], Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(served.status(), 200);
    let (_, status) = gw.get("/status").await;
    assert_eq!(status["configuration_hash"], md5_hex(&third));
}

#[tokio::test]
async fn swapping_configurations_fails_no_request_in_flight() {
    let dir = tempfile::tempdir().expect("dir");
    let up = Upstream::start().await;
    let gw = dbless(dir.path(), Some(&file(&up, "a0"))).await;
    let url = gw.proxy_url("/both/delay/20");
    let client = reqwest::Client::new();
    let traffic = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..200 {
            let r = client.get(&url).send().await.expect("request");
            statuses.push(r.status().as_u16());
        }
        statuses
    });
    for i in 1..=10 {
        let (status, _) = post_config(&gw, "", "text/yaml", file(&up, &format!("a{i}"))).await;
        assert_eq!(status, 201);
    }
    let statuses = traffic.await.expect("traffic");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn a_node_with_a_database_has_no_config_endpoint_and_db_import_needs_one() {
    let gw = Gateway::start().await;
    let expected = json!({"message": "this endpoint is only available when Kong is configured to not use a database"});
    assert_eq!(gw.get("/config").await, (400, expected.clone()));
    assert_eq!(post_config(&gw, "", "text/yaml", "_format_version: '3.0'\n".into()).await, (400, expected));
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("kong.yml"), "_format_version: '3.0'\n").expect("write");
    let env = [("TOLLGATE_DATABASE", "off"), ("TOLLGATE_PREFIX", dir.path().to_str().unwrap())];
    let (code, _, err) = support::run_cli(&["config", "db-import", "kong.yml"], &env, dir.path());
    assert_eq!(code, 1);
    assert!(err.starts_with("Error: 'tollgate config db-import' only works with a database."), "{err}");
}
