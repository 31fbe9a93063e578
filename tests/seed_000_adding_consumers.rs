//! The seed document "Adding Consumers" (Kong 0.1), run with its own `curl` lines against a real
//! Tollgate and a local upstream in place of mockbin.com. Only the ports differ from the document.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Gateway, Upstream};

/// Runs a `curl` command line from the document (with `localhost:8001/8000` pointed at this
/// gateway) and returns the status code and body.
fn curl(gw: &Gateway, line: &str) -> (u16, String) {
    let admin_port = gw.admin.rsplit(':').next().unwrap_or_default();
    let line = line
        .replace("http://localhost:8001", &format!("http://localhost:{admin_port}"))
        .replace("http://localhost:8000", &format!("http://localhost:{}", gw.proxy_port));
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{line} --silent --show-error --write-out '\\n%{{http_code}}'"))
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let body = rest.split("\r\n\r\n").last().unwrap_or_default().to_string();
    (code.trim().parse().unwrap_or(0), body)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// "Before you start": the API added (0.1 `/apis/`) and the keyauth plugin enabled on it
/// (0.1 `/plugins_configurations/`), as the earlier getting-started pages did.
async fn kong_with_mockbin_api() -> (Gateway, Upstream) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start().await;
    let (status, api) = curl(
        &gw,
        &format!(
            "curl -i -X POST --url http://localhost:8001/apis/ --data 'name=mockbin' --data 'public_dns=mockbin.com' --data 'target_url={}'",
            upstream.url("")
        ),
    );
    assert_eq!(status, 201, "{api}");
    let api_id = json(&api)["id"].as_str().expect("api id").to_string();
    let (status, plugin) = curl(
        &gw,
        &format!(
            "curl -i -X POST --url http://localhost:8001/plugins_configurations/ --data 'name=keyauth' --data 'api_id={api_id}' --data 'value.key_names=apikey'"
        ),
    );
    assert_eq!(status, 201, "{plugin}");
    assert_eq!(json(&plugin)["name"], "key-auth");
    (gw, upstream)
}

/// Step 1: create a consumer named Jason.
fn create_jason(gw: &Gateway) -> Value {
    let (status, body) = curl(gw, r#"curl -i -X POST --url http://localhost:8001/consumers/ --data "username=Jason""#);
    assert_eq!(status, 201, "{body}");
    json(&body)
}

/// Step 2: give Jason a key.
fn provision_key(gw: &Gateway, consumer_id: &str) -> (u16, String) {
    curl(
        gw,
        &format!(
            "curl -i -X POST --url http://localhost:8001/keyauth_credentials/ --data 'key=ENTER_KEY_HERE' --data 'consumer_id={consumer_id}'"
        ),
    )
}

#[tokio::test]
async fn step_1_create_a_consumer_through_the_restful_api() {
    let (gw, _up) = kong_with_mockbin_api().await;
    let jason = create_jason(&gw);
    assert_eq!(jason["username"], "Jason");
    assert!(jason["id"].as_str().is_some_and(|id| id.len() == 36), "{jason}");
    assert!(jason["created_at"].as_i64().is_some(), "{jason}");
    let (status, listed) = gw.get("/consumers/Jason").await;
    assert_eq!((status, &listed["id"]), (200, &jason["id"]));
}

#[tokio::test]
async fn step_1_note_consumer_id_is_kept_as_the_external_id() {
    let (gw, _up) = kong_with_mockbin_api().await;
    let (status, body) = curl(
        &gw,
        r#"curl -i -X POST --url http://localhost:8001/consumers/ --data "username=Ada" --data "consumer_id=ext-42""#,
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(json(&body)["custom_id"], "ext-42");
}

#[tokio::test]
async fn step_2_provision_key_credentials_for_the_consumer() {
    let (gw, _up) = kong_with_mockbin_api().await;
    let jason = create_jason(&gw);
    let id = jason["id"].as_str().expect("id");
    let (status, body) = provision_key(&gw, id);
    assert_eq!(status, 201, "{body}");
    let cred = json(&body);
    assert_eq!(cred["key"], "ENTER_KEY_HERE");
    assert_eq!(cred["consumer_id"], id);
    let (status, list) = gw.get("/keyauth_credentials").await;
    assert_eq!(status, 200);
    assert_eq!(list["data"][0]["key"], "ENTER_KEY_HERE");
}

#[tokio::test]
async fn step_3_verify_that_the_consumer_credentials_are_valid() {
    let (gw, up) = kong_with_mockbin_api().await;
    let jason = create_jason(&gw);
    let id = jason["id"].as_str().expect("id");
    assert_eq!(provision_key(&gw, id).0, 201);
    let line =
        r#"curl -i -X GET --url http://localhost:8000 --header "Host: mockbin.com" --header "apikey: ENTER_KEY_HERE""#;
    let (status, body) = curl(&gw, line);
    assert_eq!(status, 200, "{body}");
    let echoed = json(&body);
    assert_eq!(echoed["headers"]["x-consumer-id"], id);
    assert_eq!(echoed["headers"]["x-consumer-username"], "Jason");
    assert_eq!(echoed["headers"]["host"], format!("127.0.0.1:{}", up.port()));
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn step_3_a_wrong_key_is_refused_with_401() {
    let (gw, up) = kong_with_mockbin_api().await;
    let jason = create_jason(&gw);
    assert_eq!(provision_key(&gw, jason["id"].as_str().expect("id")).0, 201);
    let (status, body) = curl(
        &gw,
        r#"curl -i -X GET --url http://localhost:8000 --header "Host: mockbin.com" --header "apikey: WRONG""#,
    );
    assert_eq!((status, json(&body)["message"].as_str()), (401, Some("Unauthorized")));
    let (status, body) = curl(&gw, r#"curl -i -X GET --url http://localhost:8000 --header "Host: mockbin.com""#);
    assert_eq!((status, json(&body)["message"].as_str()), (401, Some("No API key found in request")));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn step_2_errors_unknown_consumer_duplicate_key_missing_fields() {
    let (gw, _up) = kong_with_mockbin_api().await;
    let (status, body) = provision_key(&gw, "bbdf1c48-19dc-4ab7-cae0-ff4f59d87dc9");
    assert_eq!(status, 404, "{body}");
    assert_eq!(json(&body)["consumer_id"], "consumer_id bbdf1c48-19dc-4ab7-cae0-ff4f59d87dc9 does not exist");
    let jason = create_jason(&gw);
    let id = jason["id"].as_str().expect("id");
    assert_eq!(provision_key(&gw, id).0, 201);
    let (status, body) = provision_key(&gw, id);
    assert_eq!(status, 409, "{body}");
    assert!(json(&body)["key"].as_str().is_some_and(|m| m.contains("already exists")), "{body}");
    let (status, body) = curl(&gw, "curl -i -X POST --url http://localhost:8001/keyauth_credentials/ --data 'key=x'");
    assert_eq!((status, json(&body)["consumer_id"].as_str()), (400, Some("consumer_id is required")));
}

#[tokio::test]
async fn step_3_host_that_matches_no_api_is_404() {
    let (gw, _up) = kong_with_mockbin_api().await;
    let (status, body) =
        curl(&gw, r#"curl -i -X GET --url http://localhost:8000 --header "Host: example.org" --header "apikey: x""#);
    assert_eq!((status, json(&body)["message"].as_str()), (404, Some("no Route matched with those values")));
}
