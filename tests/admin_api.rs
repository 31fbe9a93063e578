//! The Kong 3.x Admin API as a user drives it: the real `tollgate` binary, spoken to over HTTP.
//! Each test is one story (create a consumer, give it a key, delete it…) and checks Kong's exact
//! status codes, bodies and messages.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Gateway, id, keys, not_found, schema_violation, status_json};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Sends a raw body with the given Content-Type (none when `None`).
async fn send(gw: &Gateway, method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = gw.http.request(method, gw.admin_url(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    status_json(req.send().await.expect("admin request")).await
}

/// Sends an `application/x-www-form-urlencoded` body (what `curl --data` sends).
async fn send_form(gw: &Gateway, method: Method, path: &str, pairs: &[(&str, &str)]) -> (u16, Value) {
    let r = gw.http.request(method, gw.admin_url(path)).form(pairs).send().await.expect("admin request");
    status_json(r).await
}

/// Sends a `multipart/form-data` body (what `curl --form` sends).
async fn send_multipart(gw: &Gateway, method: Method, path: &str, parts: &[(&str, &str)]) -> (u16, Value) {
    let boundary = "tollgate-admin-api-test";
    let mut body = String::new();
    for (name, value) in parts {
        body.push_str(&format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let ct = format!("multipart/form-data; boundary={boundary}");
    send(gw, method, path, Some(&ct), body.into_bytes()).await
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = names.iter().map(|s| (*s).to_string()).collect();
    k.sort();
    k
}

/// Asserts an integer timestamp in seconds (not milliseconds) close to now.
fn assert_seconds(v: &Value) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let t = v.as_i64().unwrap_or_else(|| panic!("timestamp is not an integer: {v}"));
    assert!((now - 300..=now + 300).contains(&t), "timestamp {t} is not seconds near {now}");
}

fn assert_uuid(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(uuid::Uuid::parse_str(s).is_ok() && s.len() == 36, "not a UUID: {s}");
}

const CONSUMER_FIELDS: &[&str] = &["id", "created_at", "updated_at", "username", "custom_id", "tags"];
const SERVICE_FIELDS: &[&str] = &[
    "id",
    "created_at",
    "updated_at",
    "name",
    "retries",
    "protocol",
    "host",
    "port",
    "path",
    "connect_timeout",
    "write_timeout",
    "read_timeout",
    "tags",
    "client_certificate",
    "tls_verify",
    "tls_verify_depth",
    "ca_certificates",
    "enabled",
];
const ROUTE_FIELDS: &[&str] = &[
    "id",
    "created_at",
    "updated_at",
    "name",
    "protocols",
    "https_redirect_status_code",
    "strip_path",
    "preserve_host",
    "request_buffering",
    "response_buffering",
    "tags",
    "service",
    "snis",
    "sources",
    "destinations",
    "methods",
    "hosts",
    "paths",
    "headers",
    "regex_priority",
    "path_handling",
];
// Kong Enterprise's plugin entity (consumer-group scope included).
const PLUGIN_FIELDS: &[&str] = &[
    "consumer_group",
    "id",
    "name",
    "instance_name",
    "created_at",
    "updated_at",
    "route",
    "service",
    "consumer",
    "config",
    "protocols",
    "enabled",
    "tags",
];

fn key_auth_defaults() -> Value {
    json!({
        "key_names": ["apikey"],
        "hide_credentials": false,
        "anonymous": null,
        "key_in_header": true,
        "key_in_query": true,
        "key_in_body": false,
        "run_on_preflight": true,
        "realm": null,
        // Kong Enterprise 3.10+: the control plane's own consumers only, by default.
        "identity_realms": [{"scope": "cp", "id": null, "region": null}],
    })
}

// ---------------------------------------------------------------------------------------------
// Consumers

#[tokio::test]
async fn creating_a_consumer_returns_201_with_every_field() {
    let gw = Gateway::start().await;
    let (status, bob) = gw.post("/consumers", json!({"username": "bob"})).await;
    assert_eq!(status, 201, "{bob}");
    assert_eq!(keys(&bob), sorted(CONSUMER_FIELDS), "{bob}");
    assert_uuid(&bob["id"]);
    assert_seconds(&bob["created_at"]);
    assert_seconds(&bob["updated_at"]);
    assert_eq!(bob["username"], "bob");
    assert_eq!(bob["custom_id"], Value::Null);
    assert_eq!(bob["tags"], Value::Null);

    assert_eq!(gw.get(&format!("/consumers/{}", id(&bob))).await, (200, bob.clone()));
    assert_eq!(gw.get("/consumers/bob").await, (200, bob.clone()));
    assert_eq!(gw.get("/consumers/bob/").await, (200, bob));
}

#[tokio::test]
async fn a_consumer_is_patched_replaced_and_deleted() {
    let gw = Gateway::start().await;
    let bob = gw.create("/consumers", json!({"username": "bob", "tags": ["team-a"]})).await;

    let (status, patched) = gw.patch("/consumers/bob", json!({"custom_id": "c-1"})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (&patched["id"], &patched["username"], &patched["custom_id"]),
        (&bob["id"], &json!("bob"), &json!("c-1"))
    );
    assert_eq!(patched["tags"], json!(["team-a"]), "PATCH keeps what it does not mention");

    // PUT replaces the whole entity: omitted fields go back to null, the id stays.
    let (status, replaced) = gw.put("/consumers/bob", json!({"custom_id": "c-2"})).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(keys(&replaced), sorted(CONSUMER_FIELDS));
    assert_eq!(replaced["id"], bob["id"]);
    assert_eq!(replaced["username"], "bob");
    assert_eq!(replaced["custom_id"], "c-2");
    assert_eq!(replaced["tags"], Value::Null);

    // The path wins over the body for the endpoint key.
    let (status, replaced) = gw.put("/consumers/bob", json!({"username": "robert"})).await;
    assert_eq!((status, &replaced["username"], &replaced["id"]), (200, &json!("bob"), &bob["id"]));

    let (status, deleted) = send(&gw, Method::DELETE, "/consumers/bob", None, Vec::new()).await;
    assert_eq!((status, deleted), (204, Value::Null));
    assert_eq!(gw.get("/consumers/bob").await, (404, not_found()));
    assert_eq!(gw.get(&format!("/consumers/{}", id(&bob))).await, (404, not_found()));
    assert_eq!(gw.delete("/consumers/bob").await, 204, "deleting what is gone is still 204");
}

#[tokio::test]
async fn putting_a_consumer_creates_it_from_the_path() {
    let gw = Gateway::start().await;
    let (status, carol) = gw.put("/consumers/carol", json!({})).await;
    assert_eq!(status, 200, "PUT answers 200 even when it creates: {carol}");
    assert_eq!(keys(&carol), sorted(CONSUMER_FIELDS));
    assert_eq!(carol["username"], "carol");
    assert_uuid(&carol["id"]);
    assert_eq!(gw.get("/consumers/carol").await, (200, carol));

    let new_id = "5a1c6b76-1b3f-4a57-9d1e-0c5b8f9e2a10";
    let (status, dave) = gw.put(&format!("/consumers/{new_id}"), json!({"username": "dave"})).await;
    assert_eq!((status, &dave["id"], &dave["username"]), (200, &json!(new_id), &json!("dave")));
    assert_eq!(gw.get("/consumers/dave").await.1["id"], new_id);
}

#[tokio::test]
async fn patching_a_missing_entity_is_404_with_the_key_that_was_not_found() {
    let gw = Gateway::start().await;
    assert_eq!(gw.get("/consumers/nobody").await, (404, not_found()));
    assert_eq!(
        gw.patch("/consumers/nobody", json!({"custom_id": "x"})).await,
        (
            404,
            json!({
                "code": 6,
                "name": "not found",
                "message": "could not find the entity with '{username=\"nobody\"}'",
                "fields": {"username": "nobody"},
            })
        )
    );
    let missing = "0b1d3c8e-4b55-4c9e-8f43-9a8f5e6d7c21";
    assert_eq!(
        gw.patch(&format!("/services/{missing}"), json!({"retries": 1})).await,
        (
            404,
            json!({
                "code": 6,
                "name": "not found",
                "message": format!("could not find the entity with primary key '{{id=\"{missing}\"}}'"),
                "fields": {"id": missing},
            })
        )
    );
}

#[tokio::test]
async fn a_consumer_needs_a_username_or_custom_id_of_the_right_type() {
    let gw = Gateway::start().await;
    let msg = "at least one of these fields must be non-empty: 'custom_id', 'username'";
    let expected = schema_violation(&format!("schema violation ({msg})"), json!({"@entity": [msg]}));
    assert_eq!(gw.post("/consumers", json!({})).await, (400, expected.clone()));
    assert_eq!(send(&gw, Method::POST, "/consumers", None, Vec::new()).await, (400, expected));
    // The entity check is listed beside field errors, and an empty string does not count.
    assert_eq!(
        gw.post("/consumers", json!({"username": "", "colour": "red"})).await,
        (
            400,
            schema_violation(
                &format!("3 schema violations ({msg}; colour: unknown field; username: length must be at least 1)"),
                json!({"@entity": [msg], "colour": "unknown field", "username": "length must be at least 1"}),
            )
        )
    );

    assert_eq!(
        gw.post("/consumers", json!({"username": 123, "tags": "vip", "colour": "red"})).await,
        (
            400,
            schema_violation(
                "3 schema violations (colour: unknown field; tags: expected a set; username: expected a string)",
                json!({"colour": "unknown field", "tags": "expected a set", "username": "expected a string"}),
            )
        )
    );
}

#[tokio::test]
async fn duplicate_unique_values_conflict_with_409() {
    let gw = Gateway::start().await;
    gw.create("/consumers", json!({"username": "bob", "custom_id": "ext-1"})).await;
    assert_eq!(
        gw.post("/consumers", json!({"username": "bob"})).await,
        (
            409,
            json!({
                "code": 5,
                "name": "unique constraint violation",
                "message": "UNIQUE violation detected on '{username=\"bob\"}'",
                "fields": {"username": "bob"},
            })
        )
    );
    assert_eq!(
        gw.post("/consumers", json!({"username": "tom", "custom_id": "ext-1"})).await,
        (
            409,
            json!({
                "code": 5,
                "name": "unique constraint violation",
                "message": "UNIQUE violation detected on '{custom_id=\"ext-1\"}'",
                "fields": {"custom_id": "ext-1"},
            })
        )
    );

    gw.create("/services", json!({"name": "svc", "host": "example.test"})).await;
    assert_eq!(
        gw.post("/services", json!({"name": "svc", "host": "other.test"})).await,
        (
            409,
            json!({
                "code": 5,
                "name": "unique constraint violation",
                "message": "UNIQUE violation detected on '{name=\"svc\"}'",
                "fields": {"name": "svc"},
            })
        )
    );

    gw.create("/consumers/bob/key-auth", json!({"key": "secret-1"})).await;
    gw.create("/consumers", json!({"username": "alice"})).await;
    assert_eq!(
        gw.post("/consumers/alice/key-auth", json!({"key": "secret-1"})).await,
        (
            409,
            json!({
                "code": 5,
                "name": "unique constraint violation",
                "message": "UNIQUE violation detected on '{key=\"secret-1\"}'",
                "fields": {"key": "secret-1"},
            })
        )
    );
    // Renaming into a taken name conflicts too.
    gw.create("/consumers", json!({"username": "carol"})).await;
    assert_eq!(gw.patch("/consumers/carol", json!({"username": "bob"})).await.0, 409);
}

// ---------------------------------------------------------------------------------------------
// Services

#[tokio::test]
async fn creating_a_service_fills_kongs_defaults() {
    let gw = Gateway::start().await;
    let (status, svc) = gw.post("/services", json!({"name": "billing", "url": "https://billing.test:8443/v1"})).await;
    assert_eq!(status, 201, "{svc}");
    assert_eq!(keys(&svc), sorted(SERVICE_FIELDS), "{svc}");
    assert_uuid(&svc["id"]);
    assert_seconds(&svc["created_at"]);
    assert_seconds(&svc["updated_at"]);
    let mut rest = svc.clone();
    for f in ["id", "created_at", "updated_at"] {
        rest.as_object_mut().expect("object").remove(f);
    }
    assert_eq!(
        rest,
        json!({
            "name": "billing",
            "retries": 5,
            "protocol": "https",
            "host": "billing.test",
            "port": 8443,
            "path": "/v1",
            "connect_timeout": 60000,
            "write_timeout": 60000,
            "read_timeout": 60000,
            "tags": null,
            "client_certificate": null,
            "tls_verify": null,
            "tls_verify_depth": null,
            "ca_certificates": null,
            "enabled": true,
        })
    );
    assert_eq!(gw.get("/services/billing").await, (200, svc.clone()));
    assert_eq!(gw.get(&format!("/services/{}", id(&svc))).await, (200, svc));
}

#[tokio::test]
async fn the_service_url_shorthand_follows_kongs_rules() {
    let gw = Gateway::start().await;
    let cases = [
        ("http://example.test", "http", "example.test", 80, Value::Null),
        ("https://service.test/", "https", "service.test", 443, json!("/")),
        ("http://example.test:443", "http", "example.test", 443, Value::Null),
        ("https://example2.test:80/", "https", "example2.test", 80, json!("/")),
        ("http://10.0.0.7:8080/api/v2", "http", "10.0.0.7", 8080, json!("/api/v2")),
    ];
    for (url, protocol, host, port, path) in cases {
        let (status, svc) = gw.post("/services", json!({ "url": url })).await;
        assert_eq!(status, 201, "{url}: {svc}");
        assert_eq!(
            (&svc["protocol"], &svc["host"], &svc["port"], &svc["path"]),
            (&json!(protocol), &json!(host), &json!(port), &path),
            "{url}"
        );
        assert!(svc.get("url").is_none(), "url is write-only: {svc}");
    }
}

#[tokio::test]
async fn an_unparsable_service_url_is_reported_on_host_and_path() {
    let gw = Gateway::start().await;
    assert_eq!(
        gw.post("/services", json!({"url": "invalid url"})).await,
        (
            400,
            schema_violation(
                "2 schema violations (host: required field missing; path: should start with: /)",
                json!({"host": "required field missing", "path": "should start with: /"}),
            )
        )
    );
    assert_eq!(
        gw.post("/services", json!({"url": 42})).await,
        (400, schema_violation("schema violation (url: expected a string)", json!({"url": "expected a string"})))
    );
}

#[tokio::test]
async fn service_validation_lists_every_bad_field_at_once() {
    let gw = Gateway::start().await;
    assert_eq!(
        gw.post(
            "/services",
            json!({
                "host": "example.test",
                "port": 70000,
                "connect_timeout": 0,
                "retries": "many",
                "protocol": "gopher",
                "colour": "blue",
            })
        )
        .await,
        (
            400,
            schema_violation(
                "5 schema violations (colour: unknown field; connect_timeout: value should be between 1 and 2147483646; \
                 port: value should be between 0 and 65535; \
                 protocol: expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp; \
                 retries: expected an integer)",
                json!({
                    "colour": "unknown field",
                    "connect_timeout": "value should be between 1 and 2147483646",
                    "port": "value should be between 0 and 65535",
                    "protocol": "expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp",
                    "retries": "expected an integer",
                }),
            )
        )
    );
    assert_eq!(
        gw.post("/services", json!({"name": "svc", "retries": 40000, "read_timeout": 2147483647})).await,
        (
            400,
            schema_violation(
                "3 schema violations (host: required field missing; \
                 read_timeout: value should be between 1 and 2147483646; \
                 retries: value should be between 0 and 32767)",
                json!({
                    "host": "required field missing",
                    "read_timeout": "value should be between 1 and 2147483646",
                    "retries": "value should be between 0 and 32767",
                }),
            )
        )
    );
}

#[tokio::test]
async fn a_service_is_patched_replaced_and_created_by_put() {
    let gw = Gateway::start().await;
    let svc = gw.create("/services", json!({"name": "svc", "host": "a.test", "retries": 2, "tags": ["x"]})).await;

    let (status, patched) = gw.patch("/services/svc", json!({"retries": 3, "tags": ["y", "z"]})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!((&patched["id"], &patched["host"], &patched["retries"]), (&svc["id"], &json!("a.test"), &json!(3)));
    assert_eq!(patched["tags"], json!(["y", "z"]), "arrays are replaced, not merged");

    let (status, replaced) = gw.put("/services/svc", json!({"host": "b.test"})).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(keys(&replaced), sorted(SERVICE_FIELDS));
    assert_eq!((&replaced["id"], &replaced["name"], &replaced["host"]), (&svc["id"], &json!("svc"), &json!("b.test")));
    assert_eq!((&replaced["retries"], &replaced["tags"]), (&json!(5), &Value::Null), "PUT resets to defaults");

    let (status, created) = gw.put("/services/fresh", json!({"host": "c.test"})).await;
    assert_eq!((status, &created["name"], &created["port"]), (200, &json!("fresh"), &json!(80)));
    assert_eq!(gw.get("/services/fresh").await, (200, created));

    assert_eq!(gw.delete("/services/fresh").await, 204);
    assert_eq!(gw.get("/services/fresh").await, (404, not_found()));
}

// ---------------------------------------------------------------------------------------------
// Routes

#[tokio::test]
async fn creating_a_route_returns_every_field_with_defaults() {
    let gw = Gateway::start().await;
    let svc = gw.create("/services", json!({"name": "svc", "host": "a.test"})).await;
    let (status, route) =
        gw.post("/routes", json!({"name": "r1", "paths": ["/orders"], "service": {"id": id(&svc)}})).await;
    assert_eq!(status, 201, "{route}");
    assert_eq!(keys(&route), sorted(ROUTE_FIELDS), "{route}");
    assert_uuid(&route["id"]);
    assert_seconds(&route["created_at"]);
    assert_seconds(&route["updated_at"]);
    let mut rest = route.clone();
    for f in ["id", "created_at", "updated_at"] {
        rest.as_object_mut().expect("object").remove(f);
    }
    assert_eq!(
        rest,
        json!({
            "name": "r1",
            "protocols": ["http", "https"],
            "https_redirect_status_code": 426,
            "strip_path": true,
            "preserve_host": false,
            "request_buffering": true,
            "response_buffering": true,
            "tags": null,
            "service": {"id": id(&svc)},
            "snis": null,
            "sources": null,
            "destinations": null,
            "methods": null,
            "hosts": null,
            "paths": ["/orders"],
            "headers": null,
            "regex_priority": 0,
            "path_handling": "v0",
        })
    );
    assert_eq!(gw.get("/routes/r1").await, (200, route.clone()));
    assert_eq!(gw.get(&format!("/routes/{}", id(&route))).await, (200, route));

    // A service may also be named instead of given by id; the response always carries the id.
    let (status, by_name) = gw.post("/routes", json!({"hosts": ["b.test"], "service": {"name": "svc"}})).await;
    assert_eq!((status, &by_name["service"]), (201, &json!({"id": id(&svc)})), "{by_name}");
    let (status, no_service) = gw.post("/routes", json!({"methods": ["GET"]})).await;
    assert_eq!((status, &no_service["service"]), (201, &Value::Null), "{no_service}");
}

#[tokio::test]
async fn a_route_is_patched_replaced_and_deleted() {
    let gw = Gateway::start().await;
    let route = gw.create("/routes", json!({"name": "r1", "paths": ["/a", "/b"], "hosts": ["x.test"]})).await;

    let (status, patched) = gw.patch("/routes/r1", json!({"paths": ["/c"], "strip_path": false})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["paths"], json!(["/c"]), "arrays are replaced");
    assert_eq!((&patched["hosts"], &patched["strip_path"]), (&json!(["x.test"]), &json!(false)));

    let (status, replaced) = gw.put("/routes/r1", json!({"methods": ["GET"]})).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!((&replaced["id"], &replaced["name"]), (&route["id"], &json!("r1")));
    assert_eq!(
        (&replaced["paths"], &replaced["hosts"], &replaced["strip_path"]),
        (&Value::Null, &Value::Null, &json!(true))
    );

    let (status, created) = gw.put("/routes/r2", json!({"paths": ["/r2"]})).await;
    assert_eq!((status, &created["name"]), (200, &json!("r2")), "{created}");

    assert_eq!(gw.delete("/routes/r1").await, 204);
    assert_eq!(gw.get("/routes/r1").await, (404, not_found()));
    assert_eq!(gw.delete("/routes/r1").await, 204);
}

#[tokio::test]
async fn a_route_must_set_an_attribute_to_match_on() {
    let gw = Gateway::start().await;
    let https = "must set one of 'methods', 'hosts', 'headers', 'paths', 'snis' when 'protocols' is 'https'";
    assert_eq!(
        gw.post("/routes", json!({})).await,
        (400, schema_violation(&format!("schema violation ({https})"), json!({"@entity": [https]})))
    );
    assert_eq!(
        gw.post("/routes", json!({"paths": [], "colour": 1})).await,
        (
            400,
            schema_violation(
                &format!("2 schema violations ({https}; colour: unknown field)"),
                json!({"@entity": [https], "colour": "unknown field"}),
            )
        )
    );
    let http = "must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http'";
    assert_eq!(
        gw.post("/routes", json!({"protocols": ["http"]})).await,
        (400, schema_violation(&format!("schema violation ({http})"), json!({"@entity": [http]})))
    );
    assert_eq!(
        gw.post("/routes", json!({"methods": ["GET"], "protocols": ["foo", "http"]})).await,
        (
            400,
            schema_violation(
                "schema violation (protocols.1: expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp)",
                json!({"protocols": ["expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp"]}),
            )
        )
    );
}

#[tokio::test]
async fn route_validation_reports_regexes_paths_methods_and_types_together() {
    let gw = Gateway::start().await;
    let (status, body) = gw
        .post(
            "/routes",
            json!({
                "paths": ["~/(unclosed", "/a/./b"],
                "methods": ["get"],
                "regex_priority": "high",
                "colour": 1,
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!((&body["code"], &body["name"]), (&json!(2), &json!("schema violation")));
    let regex_msg = body["fields"]["paths"][0].as_str().expect("regex message").to_string();
    assert!(regex_msg.starts_with("invalid regex: '/(unclosed' (PCRE returned: "), "{regex_msg}");
    assert!(regex_msg.ends_with(')'), "{regex_msg}");
    assert_eq!(
        body["fields"],
        json!({
            "colour": "unknown field",
            "methods": ["invalid value: get"],
            "paths": [regex_msg, "non-normalized path, consider use '/a/b' instead"],
            "regex_priority": "expected an integer",
        })
    );
    assert_eq!(
        body["message"],
        format!(
            "5 schema violations (colour: unknown field; methods.1: invalid value: get; paths.1: {regex_msg}; \
             paths.2: non-normalized path, consider use '/a/b' instead; regex_priority: expected an integer)"
        )
    );

    // A bad header map reports its first bad entry on `headers` itself.
    assert_eq!(
        gw.post("/routes", json!({"headers": {"Host": ["a.test"]}})).await,
        (
            400,
            schema_violation(
                "schema violation (headers: cannot contain 'host' header, which must be specified in the 'hosts' attribute)",
                json!({"headers": "cannot contain 'host' header, which must be specified in the 'hosts' attribute"}),
            )
        )
    );
    let bad_name = "bad header name 'x version', allowed characters are A-Z, a-z, 0-9, '_', and '-'";
    assert_eq!(
        gw.post("/routes", json!({"headers": {"x version": ["1"]}})).await,
        (400, schema_violation(&format!("schema violation (headers: {bad_name})"), json!({"headers": bad_name})))
    );

    assert_eq!(
        gw.post("/routes", json!({"paths": ["/a"], "https_redirect_status_code": 200})).await,
        (
            400,
            schema_violation(
                "schema violation (https_redirect_status_code: expected one of: 426, 301, 302, 307, 308)",
                json!({"https_redirect_status_code": "expected one of: 426, 301, 302, 307, 308"}),
            )
        )
    );
}

#[tokio::test]
async fn a_route_pointing_at_a_missing_service_is_a_foreign_key_violation() {
    let gw = Gateway::start().await;
    let missing = "7c1e3a0b-9d24-4f6e-8b1a-2e5d4c3b2a10";
    assert_eq!(
        gw.post("/routes", json!({"paths": ["/x"], "service": {"id": missing}})).await,
        (
            400,
            json!({
                "code": 4,
                "name": "foreign key violation",
                "message": format!("the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'services' entity."),
                "fields": {"service": {"id": missing}},
            })
        )
    );
    let unresolved =
        "the foreign key cannot be resolved with '{name=\"non-existing\"}' for an existing 'services' entity";
    assert_eq!(
        gw.post("/routes", json!({"methods": ["GET"], "service": {"name": "non-existing"}})).await,
        (
            400,
            json!({
                "code": 13,
                "name": "foreign keys unresolved",
                "message": format!("foreign key unresolved (service.name: {unresolved})"),
                "fields": {"service": {"name": unresolved}},
            })
        )
    );
}

#[tokio::test]
async fn deleting_a_service_that_still_has_routes_is_refused() {
    let gw = Gateway::start().await;
    gw.create("/services", json!({"name": "svc", "host": "a.test"})).await;
    let route = gw.create("/services/svc/routes", json!({"paths": ["/a"]})).await;
    let plugin = gw.create("/services/svc/plugins", json!({"name": "key-auth"})).await;
    assert_eq!(
        send(&gw, Method::DELETE, "/services/svc", None, Vec::new()).await,
        (
            400,
            json!({
                "code": 4,
                "name": "foreign key violation",
                "message": "an existing 'routes' entity references this 'services' entity",
                "fields": {"@referenced_by": "routes"},
            })
        )
    );
    assert_eq!(gw.get("/services/svc").await.0, 200, "the service is still there");

    assert_eq!(gw.delete(&format!("/routes/{}", id(&route))).await, 204);
    assert_eq!(gw.delete("/services/svc").await, 204);
    assert_eq!(gw.get("/services/svc").await, (404, not_found()));
    // Its plugins went with it.
    assert_eq!(gw.get(&format!("/plugins/{}", id(&plugin))).await, (404, not_found()));
    assert_eq!(gw.get("/plugins").await.1["data"], json!([]));
}

// ---------------------------------------------------------------------------------------------
// Nested service / route paths

#[tokio::test]
async fn routes_created_under_a_service_belong_to_it() {
    let gw = Gateway::start().await;
    let a = gw.create("/services", json!({"name": "a", "host": "a.test"})).await;
    let b = gw.create("/services", json!({"name": "b", "host": "b.test"})).await;

    // The foreign key comes from the path, whatever the body says.
    let (status, ra) = gw.post("/services/a/routes", json!({"paths": ["/a"], "service": {"id": id(&b)}})).await;
    assert_eq!((status, &ra["service"]), (201, &json!({"id": id(&a)})), "{ra}");
    let rb = gw.create(&format!("/services/{}/routes", id(&b)), json!({"name": "rb", "paths": ["/b"]})).await;
    assert_eq!(rb["service"], json!({"id": id(&b)}));

    let (status, list) = gw.get("/services/a/routes").await;
    assert_eq!(status, 200);
    assert_eq!(list, json!({"data": [ra.clone()], "next": null}));

    assert_eq!(gw.get(&format!("/services/a/routes/{}", id(&ra))).await, (200, ra.clone()));
    assert_eq!(gw.get("/services/b/routes/rb").await, (200, rb.clone()));
    // A route of another service is not found through this one.
    assert_eq!(gw.get(&format!("/services/b/routes/{}", id(&ra))).await, (404, not_found()));
    assert_eq!(gw.patch("/services/a/routes/rb", json!({"paths": ["/z"]})).await, (404, not_found()));
    assert_eq!(gw.delete("/services/a/routes/rb").await, 404);
    assert_eq!(gw.get("/routes/rb").await.1["paths"], json!(["/b"]), "untouched");

    let (status, patched) = gw.patch("/services/b/routes/rb", json!({"paths": ["/bb"]})).await;
    assert_eq!((status, &patched["paths"]), (200, &json!(["/bb"])), "{patched}");
    assert_eq!(gw.delete("/services/b/routes/rb").await, 204);
    assert_eq!(gw.get("/routes/rb").await, (404, not_found()));

    // A parent that does not exist.
    assert_eq!(gw.get("/services/nope/routes").await, (404, not_found()));
    assert_eq!(gw.post("/services/nope/routes", json!({"paths": ["/n"]})).await, (404, not_found()));
    assert_eq!(gw.get(&format!("/services/nope/routes/{}", id(&ra))).await, (404, not_found()));
}

#[tokio::test]
async fn the_service_of_a_route_is_reachable_through_the_route() {
    let gw = Gateway::start().await;
    let svc = gw.create("/services", json!({"name": "svc", "host": "a.test"})).await;
    gw.create("/services/svc/routes", json!({"name": "r", "paths": ["/a"]})).await;
    gw.create("/routes", json!({"name": "lonely", "paths": ["/l"]})).await;

    assert_eq!(gw.get("/routes/r/service").await, (200, svc.clone()));
    let (status, patched) = gw.patch("/routes/r/service", json!({"retries": 1, "path": "/v2"})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!((&patched["id"], &patched["retries"], &patched["path"]), (&svc["id"], &json!(1), &json!("/v2")));
    assert_eq!(gw.get("/services/svc").await.1, patched);

    // Kong does not delete a service through its route.
    assert_eq!(
        send(&gw, Method::DELETE, "/routes/r/service", None, Vec::new()).await,
        (405, json!({"message": "Method not allowed"}))
    );
    assert_eq!(gw.get("/services/svc").await.0, 200);

    assert_eq!(gw.get("/routes/lonely/service").await, (404, not_found()));
    assert_eq!(gw.patch("/routes/lonely/service", json!({"retries": 1})).await, (404, not_found()));
    assert_eq!(gw.get("/routes/missing/service").await, (404, not_found()));
}

// ---------------------------------------------------------------------------------------------
// Plugins

#[tokio::test]
async fn enabling_key_auth_on_a_route_returns_the_plugin_with_config_defaults() {
    let gw = Gateway::start().await;
    let route = gw.create("/routes", json!({"name": "r", "paths": ["/a"]})).await;
    let (status, plugin) = gw.post("/routes/r/plugins", json!({"name": "key-auth", "instance_name": "ka"})).await;
    assert_eq!(status, 201, "{plugin}");
    assert_eq!(keys(&plugin), sorted(PLUGIN_FIELDS), "{plugin}");
    assert_uuid(&plugin["id"]);
    assert_seconds(&plugin["created_at"]);
    assert_seconds(&plugin["updated_at"]);
    assert_eq!(plugin["name"], "key-auth");
    assert_eq!(plugin["instance_name"], "ka");
    assert_eq!(plugin["route"], json!({"id": id(&route)}));
    assert_eq!((&plugin["service"], &plugin["consumer"], &plugin["tags"]), (&Value::Null, &Value::Null, &Value::Null));
    assert_eq!(plugin["config"], key_auth_defaults());
    assert_eq!(plugin["protocols"], json!(["grpc", "grpcs", "http", "https"]));
    assert_eq!(plugin["enabled"], true);

    assert_eq!(gw.get("/plugins/ka").await, (200, plugin.clone()));
    assert_eq!(gw.get(&format!("/plugins/{}", id(&plugin))).await, (200, plugin.clone()));
    assert_eq!(gw.get(&format!("/routes/r/plugins/{}", id(&plugin))).await, (200, plugin.clone()));
    assert_eq!(gw.get("/routes/r/plugins").await, (200, json!({"data": [plugin.clone()], "next": null})));
    assert_eq!(gw.get("/plugins").await, (200, json!({"data": [plugin.clone()], "next": null})));

    assert_eq!(gw.get("/routes/missing/plugins").await, (404, not_found()));
    assert_eq!(gw.post("/routes/missing/plugins", json!({"name": "key-auth"})).await, (404, not_found()));

    assert_eq!(gw.delete(&format!("/routes/r/plugins/{}", id(&plugin))).await, 204);
    assert_eq!(gw.get("/plugins/ka").await, (404, not_found()));
    assert_eq!(gw.delete(&format!("/routes/r/plugins/{}", id(&plugin))).await, 404, "nested DELETE of nothing");
}

#[tokio::test]
async fn a_second_key_auth_on_the_same_route_conflicts() {
    let gw = Gateway::start().await;
    let route = gw.create("/routes", json!({"paths": ["/a"]})).await;
    gw.create(&format!("/routes/{}/plugins", id(&route)), json!({"name": "key-auth"})).await;
    let rid = id(&route);
    assert_eq!(
        gw.post(&format!("/routes/{rid}/plugins"), json!({"name": "key-auth"})).await,
        (
            409,
            json!({
                "code": 5,
                "name": "unique constraint violation",
                "message": format!("UNIQUE violation detected on '{{consumer=null,consumer_group=null,name=\"key-auth\",route={{id=\"{rid}\"}},service=null}}'"),
                "fields": {"consumer": null, "consumer_group": null, "name": "key-auth", "route": {"id": rid}, "service": null},
            })
        )
    );
    // The same plugin globally is a different scope.
    assert_eq!(gw.post("/plugins", json!({"name": "key-auth"})).await.0, 201);
}

#[tokio::test]
async fn patching_a_plugin_merges_its_config_field_by_field() {
    let gw = Gateway::start().await;
    let plugin = gw.create("/plugins", json!({"name": "key-auth", "config": {"key_names": ["apikey", "x-key"]}})).await;
    let path = format!("/plugins/{}", id(&plugin));

    let (status, patched) = gw.patch(&path, json!({"config": {"hide_credentials": true}})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["config"]["hide_credentials"], true);
    assert_eq!(patched["config"]["key_names"], json!(["apikey", "x-key"]), "unmentioned config fields are kept");
    assert_eq!(patched["config"]["key_in_query"], true);

    let (status, patched) = gw.patch(&path, json!({"config": {"key_names": ["token"]}, "enabled": false})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["config"]["key_names"], json!(["token"]), "arrays are replaced");
    assert_eq!((&patched["config"]["hide_credentials"], &patched["enabled"]), (&json!(true), &json!(false)));

    // A form PATCH is coerced with the stored plugin's schema even though it does not name the plugin.
    let (status, patched) = send_form(&gw, Method::PATCH, &path, &[("config.hide_credentials", "false")]).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["config"]["hide_credentials"], false);
    assert_eq!(patched["config"]["key_names"], json!(["token"]));

    assert_eq!(gw.get(&path).await, (200, patched));
}

#[tokio::test]
async fn putting_a_plugin_by_instance_name_creates_then_replaces_it() {
    let gw = Gateway::start().await;
    let (status, created) =
        gw.put("/plugins/global-auth", json!({"name": "key-auth", "config": {"hide_credentials": true}})).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(keys(&created), sorted(PLUGIN_FIELDS));
    assert_eq!(
        (&created["instance_name"], &created["config"]["hide_credentials"]),
        (&json!("global-auth"), &json!(true))
    );

    let (status, replaced) = gw.put("/plugins/global-auth", json!({"name": "key-auth"})).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["id"], created["id"]);
    assert_eq!(replaced["config"], key_auth_defaults(), "PUT replaces the whole config");
}

#[tokio::test]
async fn plugins_scoped_to_a_service_are_listed_under_it() {
    let gw = Gateway::start().await;
    let svc = gw.create("/services", json!({"name": "svc", "host": "a.test"})).await;
    gw.create("/services", json!({"name": "other", "host": "b.test"})).await;
    let (status, plugin) = gw.post("/services/svc/plugins", json!({"name": "key-auth", "service": null})).await;
    assert_eq!((status, &plugin["service"]), (201, &json!({"id": id(&svc)})), "{plugin}");
    assert_eq!(gw.get("/services/svc/plugins").await, (200, json!({"data": [plugin.clone()], "next": null})));
    assert_eq!(gw.get("/services/other/plugins").await, (200, json!({"data": [], "next": null})));
    assert_eq!(gw.get(&format!("/services/other/plugins/{}", id(&plugin))).await, (404, not_found()));
    assert_eq!(gw.get("/services/nope/plugins").await, (404, not_found()));
}

#[tokio::test]
async fn plugin_validation_names_unknown_plugins_bad_key_names_and_consumer_scope() {
    let gw = Gateway::start().await;
    let msg = "plugin 'no-such-plugin' not enabled; add it to the 'plugins' configuration property";
    assert_eq!(
        gw.post("/plugins", json!({"name": "no-such-plugin"})).await,
        (400, schema_violation(&format!("schema violation (name: {msg})"), json!({"name": msg})))
    );
    assert_eq!(
        gw.post("/plugins", json!({})).await,
        (
            400,
            schema_violation(
                "schema violation (name: required field missing)",
                json!({"name": "required field missing"})
            )
        )
    );

    let bad = r"bad header name 'hello\world', allowed characters are A-Z, a-z, 0-9, '_', and '-'";
    let (status, body) =
        gw.post("/plugins", json!({"name": "key-auth", "config": {"key_names": [r"hello\world"]}})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!((&body["code"], &body["name"]), (&json!(2), &json!("schema violation")));
    assert_eq!(body["fields"], json!({"config": {"key_names": [bad]}}));
    // Kong prints errors below `config.key_names` as a Lua table.
    assert_eq!(
        body["message"],
        format!("schema violation (config.key_names: {{\n  \"{}\"\n}})", bad.replace('\\', "\\\\"))
    );

    let (status, body) = gw
        .post(
            "/plugins",
            json!({"name": "key-auth", "config": {"key_names": "apikey", "hide_credentials": "yes", "colour": 1}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["fields"],
        json!({"config": {"colour": "unknown field", "hide_credentials": "expected a boolean", "key_names": "expected an array"}})
    );
    assert_eq!(
        body["message"],
        "3 schema violations (config.colour: unknown field; config.hide_credentials: expected a boolean; \
         config.key_names: expected an array)"
    );
    // Kong sets no minimum length on `key_names`.
    let (status, empty) = gw.post("/plugins", json!({"name": "key-auth", "config": {"key_names": []}})).await;
    assert_eq!((status, &empty["config"]["key_names"]), (201, &json!([])), "{empty}");

    // key-auth cannot be scoped to a consumer.
    gw.create("/consumers", json!({"username": "bob"})).await;
    assert_eq!(
        gw.post("/consumers/bob/plugins", json!({"name": "key-auth"})).await,
        (
            400,
            schema_violation(
                "schema violation (consumer: value must be null)",
                json!({"consumer": "value must be null"})
            )
        )
    );
    assert_eq!(gw.get("/consumers/bob/plugins").await, (200, json!({"data": [], "next": null})));
    assert_eq!(gw.get("/consumers/nobody/plugins").await, (404, not_found()));
    assert_eq!(gw.post("/consumers/nobody/plugins", json!({"name": "key-auth"})).await, (404, not_found()));
}

// ---------------------------------------------------------------------------------------------
// key-auth credentials

#[tokio::test]
async fn key_auth_credentials_are_managed_under_their_consumer() {
    let gw = Gateway::start().await;
    let bob = gw.create("/consumers", json!({"username": "bob"})).await;
    gw.create("/consumers", json!({"username": "alice"})).await;

    let (status, cred) = gw.post("/consumers/bob/key-auth", json!({"key": "bob-key", "tags": ["t1", "t2"]})).await;
    assert_eq!(status, 201, "{cred}");
    for f in ["id", "created_at", "consumer", "key", "tags"] {
        assert!(cred.get(f).is_some(), "missing {f}: {cred}");
    }
    assert_uuid(&cred["id"]);
    assert_seconds(&cred["created_at"]);
    assert_eq!(cred["consumer"], json!({"id": id(&bob)}));
    assert_eq!((&cred["key"], &cred["tags"]), (&json!("bob-key"), &json!(["t1", "t2"])));

    let cid = id(&cred);
    assert_eq!(gw.get(&format!("/consumers/bob/key-auth/{cid}")).await, (200, cred.clone()));
    assert_eq!(gw.get("/consumers/bob/key-auth/bob-key").await, (200, cred.clone()));
    assert_eq!(gw.get(&format!("/consumers/{}/key-auth/bob-key", id(&bob))).await, (200, cred.clone()));
    assert_eq!(gw.get("/key-auths/bob-key").await, (200, cred.clone()));
    assert_eq!(gw.get(&format!("/key-auths/{cid}")).await, (200, cred.clone()));
    assert_eq!(gw.get("/consumers/bob/key-auth").await, (200, json!({"data": [cred.clone()], "next": null})));
    assert_eq!(gw.get("/key-auths").await, (200, json!({"data": [cred.clone()], "next": null})));

    // Another consumer does not see bob's credential.
    assert_eq!(gw.get(&format!("/consumers/alice/key-auth/{cid}")).await, (404, not_found()));
    assert_eq!(gw.patch(&format!("/consumers/alice/key-auth/{cid}"), json!({"key": "x"})).await, (404, not_found()));
    assert_eq!(gw.delete(&format!("/consumers/alice/key-auth/{cid}")).await, 404);
    assert_eq!(gw.get("/consumers/alice/key-auth").await, (200, json!({"data": [], "next": null})));

    let (status, patched) = gw.patch("/consumers/bob/key-auth/bob-key", json!({"key": "bob-key-2"})).await;
    assert_eq!((status, &patched["key"], &patched["id"]), (200, &json!("bob-key-2"), &json!(cid)), "{patched}");
    assert_eq!(
        gw.patch(&format!("/consumers/bob/key-auth/{cid}"), json!({"key": 123})).await,
        (400, schema_violation("schema violation (key: expected a string)", json!({"key": "expected a string"})))
    );

    // PUT creates a credential whose key is the path segment.
    let (status, put) = gw.put("/consumers/bob/key-auth/chosen-key", json!({})).await;
    assert_eq!((status, &put["key"], &put["consumer"]), (200, &json!("chosen-key"), &json!({"id": id(&bob)})), "{put}");

    // PUT by id creates a credential with that id and a generated key.
    let put_id = "c16bbff7-5d0d-4a28-8127-1ee581898f11";
    let (status, put) = gw.put(&format!("/consumers/bob/key-auth/{put_id}"), json!({})).await;
    assert_eq!((status, &put["id"]), (200, &json!(put_id)), "{put}");
    assert!(put["key"].as_str().is_some_and(|k| k.len() >= 32), "{put}");

    assert_eq!(gw.delete(&format!("/consumers/bob/key-auth/{cid}")).await, 204);
    assert_eq!(gw.get(&format!("/key-auths/{cid}")).await, (404, not_found()));
    assert_eq!(gw.delete("/consumers/bob/key-auth/00000000-0000-0000-0000-000000000000").await, 404);
    assert_eq!(gw.delete("/consumers/bob/key-auth/blah").await, 404);
    assert_eq!(gw.delete("/key-auths/chosen-key").await, 204);
    assert_eq!(gw.delete("/key-auths/chosen-key").await, 204, "top-level DELETE of nothing is 204");

    // A consumer that does not exist.
    assert_eq!(gw.get("/consumers/nobody/key-auth").await, (404, not_found()));
    assert_eq!(gw.post("/consumers/nobody/key-auth", json!({})).await, (404, not_found()));
    assert_eq!(gw.get("/consumers/nobody/key-auth/bob-key-2").await, (404, not_found()));
}

#[tokio::test]
async fn a_credential_needs_an_existing_consumer() {
    let gw = Gateway::start().await;
    assert_eq!(
        gw.post("/key-auths", json!({"key": "k"})).await,
        (
            400,
            schema_violation(
                "schema violation (consumer: required field missing)",
                json!({"consumer": "required field missing"})
            )
        )
    );
    let missing = "1f0c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
    let (status, body) = gw.post("/key-auths", json!({"key": "k", "consumer": {"id": missing}})).await;
    assert_eq!((status, &body["code"]), (400, &json!(4)), "{body}");
    assert_eq!(
        body["message"],
        format!("the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'consumers' entity.")
    );
    let bob = gw.create("/consumers", json!({"username": "bob"})).await;
    let (status, cred) = gw.post("/key-auths", json!({"key": "k", "consumer": {"username": "bob"}})).await;
    assert_eq!((status, &cred["consumer"]), (201, &json!({"id": id(&bob)})), "{cred}");
}

#[tokio::test]
async fn generated_key_auth_keys_are_long_random_alphanumerics() {
    let gw = Gateway::start().await;
    gw.create("/consumers", json!({"username": "bob"})).await;
    let first = gw.create("/consumers/bob/key-auth", json!({})).await;
    let second = gw.create("/consumers/bob/key-auth", json!({})).await;
    for cred in [&first, &second] {
        let key = cred["key"].as_str().expect("generated key");
        assert!(key.len() >= 32 && key.chars().all(|c| c.is_ascii_alphanumeric()), "weak key {key:?}");
    }
    assert_ne!(first["key"], second["key"]);
    // Form bodies with no key generate one too.
    let (status, third) = send_form(&gw, Method::POST, "/consumers/bob/key-auth", &[("tags", "generated")]).await;
    assert_eq!(status, 201, "{third}");
    assert!(third["key"].as_str().is_some_and(|k| k.len() >= 32), "{third}");
    assert_eq!(third["tags"], json!(["generated"]));
}

#[tokio::test]
async fn a_key_auth_credential_with_a_ttl_expires() {
    let gw = Gateway::start().await;
    gw.create("/consumers", json!({"username": "bob"})).await;
    let keeper = gw.create("/consumers/bob/key-auth", json!({"key": "forever"})).await;
    let (status, cred) = gw.post("/consumers/bob/key-auth", json!({"key": "short-lived", "ttl": 1})).await;
    assert_eq!(status, 201, "{cred}");
    let ttl = cred["ttl"].as_i64().unwrap_or_else(|| panic!("ttl is shown: {cred}"));
    assert!((0..=1).contains(&ttl), "{cred}");

    let (status, long) = gw.post("/consumers/bob/key-auth", json!({"key": "long-lived", "ttl": 3600})).await;
    assert_eq!(status, 201, "{long}");
    let (_, listed) = gw.get("/consumers/bob/key-auth/long-lived").await;
    assert!(listed["ttl"].as_i64().is_some_and(|t| (3590..=3600).contains(&t)), "{listed}");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(gw.get(&format!("/consumers/bob/key-auth/{}", id(&cred))).await, (404, not_found()));
    assert_eq!(gw.get("/key-auths/short-lived").await, (404, not_found()));
    let (_, list) = gw.get("/consumers/bob/key-auth").await;
    let mut listed: Vec<&str> =
        list["data"].as_array().expect("data").iter().filter_map(|c| c["key"].as_str()).collect();
    listed.sort_unstable();
    assert_eq!(listed, vec!["forever", "long-lived"]);
    assert_eq!(gw.get("/key-auths/forever").await, (200, keeper));

    let (status, body) = gw.post("/consumers/bob/key-auth", json!({"ttl": "soon"})).await;
    assert_eq!(
        (status, body),
        (
            400,
            json!({
                "code": 11,
                "name": "invalid options",
                "message": "invalid option (ttl: must be an integer between 0 and 100000000)",
                "options": {"ttl": "must be an integer between 0 and 100000000"},
            })
        )
    );
}

#[tokio::test]
async fn deleting_a_consumer_deletes_its_credentials_and_plugins() {
    let gw = Gateway::start().await;
    let bob = gw.create("/consumers", json!({"username": "bob"})).await;
    let alice = gw.create("/consumers", json!({"username": "alice"})).await;
    let k1 = gw.create("/consumers/bob/key-auth", json!({"key": "bob-1"})).await;
    let k2 = gw.create("/consumers/bob/key-auth", json!({})).await;
    let ka = gw.create("/consumers/alice/key-auth", json!({"key": "alice-1"})).await;
    let route_plugin = gw.create("/plugins", json!({"name": "key-auth"})).await;

    assert_eq!(gw.delete("/consumers/bob").await, 204);
    assert_eq!(gw.get(&format!("/consumers/{}", id(&bob))).await, (404, not_found()));
    for cred in [&k1, &k2] {
        assert_eq!(gw.get(&format!("/key-auths/{}", id(cred))).await, (404, not_found()), "{cred}");
    }
    assert_eq!(gw.get("/key-auths/bob-1").await, (404, not_found()));
    assert_eq!(gw.get("/key-auths").await, (200, json!({"data": [ka.clone()], "next": null})));
    assert_eq!(gw.get("/consumers/bob/key-auth").await, (404, not_found()));
    assert_eq!(gw.get("/consumers/bob/plugins").await, (404, not_found()));
    assert_eq!(gw.get("/plugins").await, (200, json!({"data": [route_plugin], "next": null})));

    // Alice and her key are untouched, and bob's key can be reused.
    assert_eq!(gw.get("/consumers/alice").await, (200, alice));
    assert_eq!(gw.get("/key-auths/alice-1").await, (200, ka));
    gw.create("/consumers", json!({"username": "bob"})).await;
    assert_eq!(gw.post("/consumers/bob/key-auth", json!({"key": "bob-1"})).await.0, 201);
}

// ---------------------------------------------------------------------------------------------
// Bodies

#[tokio::test]
async fn form_bodies_use_kongs_key_syntax_and_coercion() {
    let gw = Gateway::start().await;
    let (status, svc) = send_form(
        &gw,
        Method::POST,
        "/services",
        &[
            ("name", "svc"),
            ("host", "a.test"),
            ("port", "8080"),
            ("retries", "3"),
            ("tags[]", "one"),
            ("tags[]", "two"),
        ],
    )
    .await;
    assert_eq!(status, 201, "{svc}");
    assert_eq!((&svc["port"], &svc["retries"], &svc["tags"]), (&json!(8080), &json!(3), &json!(["one", "two"])));

    let (status, route) = send_form(
        &gw,
        Method::POST,
        "/services/svc/routes",
        &[
            ("name", "r"),
            ("hosts[]", "a.test"),
            ("hosts[]", "b.test"),
            ("methods", "GET"),
            ("methods", "POST"),
            ("paths[1]", "/a"),
            ("paths[2]", "/b"),
            ("headers[x-version]", "v1"),
            ("strip_path", "false"),
            ("preserve_host", "true"),
            ("regex_priority", "5"),
        ],
    )
    .await;
    assert_eq!(status, 201, "{route}");
    assert_eq!(route["hosts"], json!(["a.test", "b.test"]));
    assert_eq!(route["methods"], json!(["GET", "POST"]));
    assert_eq!(route["paths"], json!(["/a", "/b"]));
    assert_eq!(route["headers"], json!({"x-version": ["v1"]}));
    assert_eq!((&route["strip_path"], &route["preserve_host"]), (&json!(false), &json!(true)));
    assert_eq!(route["regex_priority"], 5);
    assert_eq!(route["service"], json!({"id": id(&svc)}));

    let (status, other) = send_form(&gw, Method::POST, "/routes", &[("paths", "/c"), ("service.name", "svc")]).await;
    assert_eq!(
        (status, &other["paths"], &other["service"]),
        (201, &json!(["/c"]), &json!({"id": id(&svc)})),
        "{other}"
    );
    let (status, other) = send_form(&gw, Method::POST, "/routes", &[("paths", "/d"), ("service.id", &id(&svc))]).await;
    assert_eq!((status, &other["service"]), (201, &json!({"id": id(&svc)})), "{other}");

    let (status, plugin) = send_form(
        &gw,
        Method::POST,
        "/routes/r/plugins",
        &[("name", "key-auth"), ("config.key_names", "apikey"), ("config.hide_credentials", "true")],
    )
    .await;
    assert_eq!(status, 201, "{plugin}");
    assert_eq!(plugin["config"]["key_names"], json!(["apikey"]), "a single value becomes a one-element array");
    assert_eq!(plugin["config"]["hide_credentials"], true);
    let (status, plugin) = send_form(
        &gw,
        Method::POST,
        "/plugins",
        &[("name", "key-auth"), ("config.key_names[1]", "apikey"), ("config.key_names[2]", "key")],
    )
    .await;
    assert_eq!((status, &plugin["config"]["key_names"]), (201, &json!(["apikey", "key"])), "{plugin}");

    // An empty value clears a field.
    gw.create("/consumers", json!({"username": "bob", "custom_id": "ext"})).await;
    let (status, bob) = send_form(&gw, Method::PATCH, "/consumers/bob", &[("custom_id", "")]).await;
    assert_eq!((status, &bob["custom_id"]), (200, &Value::Null), "{bob}");

    // Coercion only converts what parses: anything else is still reported with Kong's message.
    let (status, body) =
        send_form(&gw, Method::POST, "/services", &[("host", "b.test"), ("port", "eighty"), ("enabled", "yes")]).await;
    assert_eq!(
        (status, body),
        (
            400,
            schema_violation(
                "2 schema violations (enabled: expected a boolean; port: expected an integer)",
                json!({"enabled": "expected a boolean", "port": "expected an integer"}),
            )
        )
    );
}

#[tokio::test]
async fn multipart_bodies_are_accepted_on_every_write() {
    let gw = Gateway::start().await;
    let (status, bob) =
        send_multipart(&gw, Method::POST, "/consumers", &[("username", "bob"), ("tags[]", "t1"), ("tags[]", "t2")])
            .await;
    assert_eq!(status, 201, "{bob}");
    assert_eq!((&bob["username"], &bob["tags"]), (&json!("bob"), &json!(["t1", "t2"])));

    let (status, svc) =
        send_multipart(&gw, Method::POST, "/services", &[("name", "svc"), ("url", "http://a.test:8080/p")]).await;
    assert_eq!((status, &svc["port"], &svc["path"]), (201, &json!(8080), &json!("/p")), "{svc}");

    let (status, patched) = send_multipart(&gw, Method::PATCH, "/services/svc", &[("retries", "7")]).await;
    assert_eq!((status, &patched["retries"]), (200, &json!(7)), "{patched}");

    let (status, put) = send_multipart(&gw, Method::PUT, "/consumers/carol", &[("custom_id", "c")]).await;
    assert_eq!((status, &put["username"], &put["custom_id"]), (200, &json!("carol"), &json!("c")), "{put}");

    let (status, cred) = send_multipart(&gw, Method::POST, "/consumers/bob/key-auth", &[("key", "mp-key")]).await;
    assert_eq!((status, &cred["key"]), (201, &json!("mp-key")), "{cred}");
}

/// Kong's own spec: a multipart body with no boundary, or cut short, carries no fields, so the
/// entity's schema says what is missing.
#[tokio::test]
async fn an_unreadable_multipart_body_is_answered_with_the_entitys_schema_errors() {
    let gw = Gateway::start().await;
    let missing = json!(["at least one of these fields must be non-empty: 'custom_id', 'username'"]);
    for (ct, body) in [
        ("multipart/form-data", Vec::new()),
        (
            "multipart/form-data; boundary=XX",
            b"--XX\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nbo".to_vec(),
        ),
    ] {
        let (status, err) = send(&gw, Method::POST, "/consumers", Some(ct), body).await;
        assert_eq!(
            (status, &err["name"], &err["fields"]["@entity"]),
            (400, &json!("schema violation"), &missing),
            "{err}"
        );
    }
    assert_eq!(gw.get("/consumers").await.1["data"], json!([]), "nothing was created");
}

#[tokio::test]
async fn malformed_oversized_and_unsupported_bodies_are_rejected() {
    let gw = Gateway::start().await;
    let bad_json = json!({"message": "Cannot parse JSON body"});
    assert_eq!(
        send(&gw, Method::POST, "/consumers", Some("application/json"), br#"{"username": "#.to_vec()).await,
        (400, bad_json.clone())
    );
    gw.create("/consumers", json!({"username": "bob"})).await;
    assert_eq!(send(&gw, Method::PATCH, "/consumers/bob", Some("application/json"), Vec::new()).await, (400, bad_json));

    let (status, body) = send(&gw, Method::POST, "/consumers", Some("text/plain"), b"username=eve".to_vec()).await;
    assert_eq!((status, body), (415, Value::Null), "415 has an empty body");
    let (status, _) =
        send(&gw, Method::PATCH, "/consumers/bob", Some("invalid"), br#"{"hello": "world"}"#.to_vec()).await;
    assert_eq!(status, 415);
    let (status, _) = send(&gw, Method::PATCH, "/consumers/bob", None, b"invalid".to_vec()).await;
    assert_eq!(status, 415, "a body without a Content-Type");

    let mut big = br#"{"username": "big", "custom_id": ""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    big.extend(br#""}"#);
    let (status, _) = send(&gw, Method::POST, "/consumers", Some("application/json"), big).await;
    assert_eq!(status, 413);
    assert_eq!(gw.get("/consumers/big").await, (404, not_found()));

    // A trailing slash is accepted.
    let (status, eve) = gw.post("/consumers/", json!({"username": "eve"})).await;
    assert_eq!((status, &eve["username"]), (201, &json!("eve")), "{eve}");
    assert_eq!(gw.get("/consumers/eve/").await, (200, eve));
    let (status, list) = gw.get("/consumers/").await;
    assert_eq!((status, list["data"].as_array().map(Vec::len)), (200, Some(2)));
}

// ---------------------------------------------------------------------------------------------
// Pagination and filters

#[tokio::test]
async fn pages_are_walked_with_their_next_links() {
    let gw = Gateway::start().await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(id(&gw.create("/consumers", json!({"username": format!("user-{i}")})).await));
    }
    created.sort();

    let mut seen = Vec::new();
    let mut path = "/consumers?size=3".to_string();
    let mut pages = 0;
    loop {
        let (status, page) = gw.get(&path).await;
        assert_eq!(status, 200, "{path}: {page}");
        pages += 1;
        let data = page["data"].as_array().expect("data");
        seen.extend(data.iter().map(id));
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(data.len(), 3);
                let offset = page["offset"].as_str().expect("offset beside next");
                assert!(next.starts_with("/consumers?offset="), "next is a relative path: {next}");
                assert!(next.ends_with("&size=3"), "next keeps the size: {next}");
                assert!(!offset.is_empty());
                path = next.to_string();
            }
            None => {
                assert_eq!(page["next"], Value::Null);
                assert!(page.get("offset").is_none(), "no offset on the last page: {page}");
                assert_eq!(data.len(), 1);
                break;
            }
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every consumer once, in id order");

    let size_error = |message: &str| json!({"code": 9, "name": "invalid size", "message": message});
    assert_eq!(gw.get("/consumers?size=abc").await, (400, size_error("size must be a number")));
    for bad in ["0", "1001", "2.5", "-1"] {
        assert_eq!(
            gw.get(&format!("/consumers?size={bad}")).await,
            (400, size_error("size must be an integer between 1 and 1000")),
            "size={bad}"
        );
    }
    assert_eq!(gw.get("/consumers?size=1000").await.0, 200);
    assert_eq!(
        gw.get("/consumers?offset=x").await,
        (
            400,
            json!({"code": 7, "name": "invalid offset", "message": "'x' is not a valid offset: bad base64 encoding"})
        )
    );
    let (status, body) = gw.get("/consumers?offset=%7Cpotato%7C").await;
    assert_eq!((status, &body["code"], &body["name"]), (400, &json!(7), &json!("invalid offset")), "{body}");
}

#[tokio::test]
async fn lists_default_to_pages_of_100() {
    let gw = Gateway::start().await;
    for i in 0..101 {
        gw.create("/consumers", json!({"custom_id": format!("c{i:03}")})).await;
    }
    let (status, first) = gw.get("/consumers").await;
    assert_eq!(status, 200);
    assert_eq!(first["data"].as_array().map(Vec::len), Some(100));
    let next = first["next"].as_str().expect("a second page");
    assert!(!next.contains("size="), "no size was asked for: {next}");
    let (status, second) = gw.get(next).await;
    assert_eq!((status, second["data"].as_array().map(Vec::len), &second["next"]), (200, Some(1), &Value::Null));
}

#[tokio::test]
async fn nested_lists_paginate_with_relative_links_under_the_parent() {
    let gw = Gateway::start().await;
    gw.create("/consumers", json!({"username": "bob"})).await;
    for i in 0..3 {
        gw.create("/consumers/bob/key-auth", json!({ "key": format!("k{i}") })).await;
    }
    let (status, first) = gw.get("/consumers/bob/key-auth?size=2").await;
    assert_eq!((status, first["data"].as_array().map(Vec::len)), (200, Some(2)));
    let next = first["next"].as_str().expect("next");
    assert!(next.starts_with("/consumers/bob/key-auth?offset="), "{next}");
    let (status, second) = gw.get(next).await;
    assert_eq!((status, second["data"].as_array().map(Vec::len), &second["next"]), (200, Some(1), &Value::Null));
}

#[tokio::test]
async fn lists_filter_by_tags_with_and_or_syntax() {
    let gw = Gateway::start().await;
    let ab = gw.create("/consumers", json!({"username": "ab", "tags": ["a", "b"]})).await;
    let a = gw.create("/consumers", json!({"username": "a", "tags": ["a"]})).await;
    let b = gw.create("/consumers", json!({"username": "b", "tags": ["b"]})).await;
    gw.create("/consumers", json!({"username": "c", "tags": ["c"]})).await;
    gw.create("/consumers", json!({"username": "none"})).await;

    let names = |page: &Value| {
        let mut n: Vec<String> = page["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|c| c["username"].as_str().map(str::to_string))
            .collect();
        n.sort();
        n
    };
    let (status, all) = gw.get("/consumers?tags=a,b").await;
    assert_eq!((status, names(&all)), (200, vec!["ab".to_string()]));
    let (status, any) = gw.get("/consumers?tags=a/b").await;
    assert_eq!((status, names(&any)), (200, vec!["a".to_string(), "ab".to_string(), "b".to_string()]));
    let (status, one) = gw.get("/consumers?tags=a").await;
    assert_eq!((status, names(&one)), (200, vec!["a".to_string(), "ab".to_string()]));
    let _ = (ab, a, b);

    // Paging keeps the filter.
    let (status, page) = gw.get("/consumers?tags=a/b&size=2").await;
    assert_eq!(status, 200);
    let next = page["next"].as_str().expect("next");
    assert!(next.contains("&tags=a%2Fb") || next.contains("&tags=a/b"), "{next}");
    let (_, rest) = gw.get(next).await;
    assert_eq!(names(&page).len() + names(&rest).len(), 3);

    let invalid = |msg: &str| json!({"code": 11, "name": "invalid options", "message": format!("invalid option (tags: {msg})"), "options": {"tags": msg}});
    assert_eq!(gw.get("/consumers?tags=a,b/c").await, (400, invalid("invalid filter syntax")));
    assert_eq!(gw.get("/consumers?tags=").await, (400, invalid("cannot be null")));
}

// ---------------------------------------------------------------------------------------------
// Methods, paths and node information

#[tokio::test]
async fn unsupported_methods_are_405_and_unknown_paths_404() {
    let gw = Gateway::start().await;
    gw.create("/consumers", json!({"username": "bob"})).await;
    let not_allowed = json!({"message": "Method not allowed"});
    for (method, path) in [
        (Method::DELETE, "/consumers"),
        (Method::PATCH, "/consumers"),
        (Method::PUT, "/consumers"),
        (Method::POST, "/consumers/bob"),
        (Method::DELETE, "/key-auths"),
        (Method::DELETE, "/services/x/routes"),
    ] {
        assert_eq!(
            send(&gw, method.clone(), path, Some("application/json"), b"{}".to_vec()).await,
            (405, not_allowed.clone()),
            "{method} {path}"
        );
    }
    assert_eq!(gw.get("/no-such-thing").await, (404, not_found()));
    assert_eq!(gw.get("/consumers/bob/unknown").await, (404, not_found()));
    assert_eq!(gw.post("/nothing/here", json!({})).await, (404, not_found()));
}

#[tokio::test]
async fn the_root_endpoint_describes_the_node() {
    let gw = Gateway::start().await;
    gw.create("/plugins", json!({"name": "key-auth"})).await;
    let (status, root) = gw.get("/").await;
    assert_eq!(status, 200, "{root}");
    assert!(root["version"].as_str().is_some_and(|v| v.starts_with("3.")), "{root}");
    assert!(root["tagline"].is_string());
    assert!(matches!(root["edition"].as_str(), Some("community" | "enterprise")), "{root}");
    assert_uuid(&root["node_id"]);
    assert!(root["hostname"].is_string());
    let key_auth = &root["plugins"]["available_on_server"]["key-auth"];
    assert_eq!(key_auth["priority"], 1250, "{root}");
    assert!(key_auth["version"].is_string(), "{root}");
    assert_eq!(root["plugins"]["enabled_in_cluster"], json!(["key-auth"]));
    assert!(root["configuration"].as_object().is_some_and(|c| !c.is_empty()), "{root}");
    assert!(root["timers"].is_object() && root["pids"].is_object(), "{root}");
}

#[tokio::test]
async fn the_status_endpoint_reports_the_database_and_server_counters() {
    let gw = Gateway::start().await;
    let (status, body) = gw.get("/status").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"], json!({"reachable": true}));
    for counter in [
        "total_requests",
        "connections_active",
        "connections_accepted",
        "connections_handled",
        "connections_reading",
        "connections_writing",
        "connections_waiting",
    ] {
        assert!(body["server"][counter].is_u64(), "{counter}: {body}");
    }
    assert!(body["memory"].is_object(), "{body}");
}

#[tokio::test]
async fn plugin_discovery_lists_key_auth_and_its_schema() {
    let gw = Gateway::start().await;
    let (status, enabled) = gw.get("/plugins/enabled").await;
    assert_eq!(status, 200);
    assert!(enabled["enabled_plugins"].as_array().is_some_and(|a| a.contains(&json!("key-auth"))), "{enabled}");

    for path in ["/plugins/schema/key-auth", "/schemas/plugins/key-auth"] {
        let (status, schema) = gw.get(path).await;
        assert_eq!(status, 200, "{path}: {schema}");
        let fields = schema["fields"].as_array().expect("fields");
        let config = fields.iter().find_map(|f| f.get("config")).expect("a config field");
        assert_eq!(config["type"], "record");
        let key_names = config["fields"]
            .as_array()
            .expect("config fields")
            .iter()
            .find_map(|f| f.get("key_names"))
            .expect("key_names");
        assert_eq!(key_names["default"], json!(["apikey"]), "{key_names}");
        assert_eq!(key_names["type"], "array");
    }
    let (status, _) = gw.get("/plugins/schema/no-such-plugin").await;
    assert_eq!(status, 404);
}

/// `GET /endpoints` lists what the node serves, nested paths and 0.x paths included, in Kong's
/// template form; every listed collection answers.
#[tokio::test]
async fn endpoints_list_every_path_the_node_serves() {
    let gw = Gateway::start().await;
    let (status, body) = gw.get("/endpoints").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["next"], Value::Null);
    let list: Vec<&str> = body["data"].as_array().expect("data").iter().filter_map(Value::as_str).collect();
    for expected in [
        "/",
        "/endpoints",
        "/consumers/{consumers}",
        "/consumers/{consumers}/key-auth/{keyauth_credentials}",
        "/consumers/{consumers}/acls/{acls}",
        "/consumers/{consumers}/consumer_groups/{consumer_groups}",
        "/consumer_groups/{consumer_groups}/consumers",
        "/consumer_groups/{consumer_groups}/plugins/{plugins}",
        "/services/{services}/routes/{routes}",
        "/routes/{routes}/service",
        "/key-auths/{keyauth_credentials}",
        "/plugins/schema/{name}",
        "/schemas/{db_entity_name}/validate",
        "/apis/{apis}/plugins",
        "/keyauth_credentials",
    ] {
        assert!(list.contains(&expected), "{expected} missing from {list:?}");
    }
    let mut sorted_list = list.clone();
    sorted_list.sort_unstable();
    assert_eq!(list, sorted_list, "sorted");
    // `/config` answers 400 on a node with a database, as Kong's does (tests/dbless.rs).
    for collection in list.iter().filter(|p| !p.contains('{') && !p.contains("validate") && **p != "/config") {
        let (status, body) = gw.get(collection).await;
        assert_eq!(status, 200, "GET {collection}: {body}");
    }
}

#[tokio::test]
async fn consumers_filter_by_custom_id_and_credentials_lead_to_their_consumer() {
    let gw = Gateway::start().await;
    let alice = gw.create("/consumers", json!({"username": "alice", "custom_id": "a-1"})).await;
    gw.create("/consumers", json!({"username": "bob", "custom_id": "b-2"})).await;
    let (status, found) = gw.get("/consumers?custom_id=a-1").await;
    assert_eq!(status, 200);
    assert_eq!(found["data"].as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found["data"][0]["username"], "alice");
    assert_eq!(gw.get("/consumers?custom_id=nobody").await.1, json!({"data": [], "next": null}));

    let key = gw.create("/consumers/alice/key-auth", json!({"key": "alice-key"})).await;
    let acl = gw.create("/consumers/alice/acls", json!({"group": "admins"})).await;
    for path in [
        "/key-auths/alice-key/consumer".to_string(),
        format!("/key-auths/{}/consumer", id(&key)),
        format!("/acls/{}/consumer", id(&acl)),
    ] {
        let (status, owner) = gw.get(&path).await;
        assert_eq!(status, 200, "{path}: {owner}");
        assert_eq!(owner["id"], alice["id"], "{path}");
    }
    assert_eq!(gw.get("/key-auths/no-such-key/consumer").await.0, 404);
}

#[tokio::test]
async fn a_plugin_patched_to_another_name_takes_that_plugins_config() {
    let gw = Gateway::start().await;
    gw.create("/services", json!({"name": "s", "host": "127.0.0.1"})).await;
    let plugin = gw.create("/services/s/plugins", json!({"name": "key-auth"})).await;
    let path = format!("/plugins/{}", id(&plugin));
    let (status, unknown) = gw.patch(&path, json!({"name": "no-such-plugin"})).await;
    assert_eq!(status, 400, "{unknown}");
    assert_eq!(
        unknown["fields"]["name"],
        "plugin 'no-such-plugin' not enabled; add it to the 'plugins' configuration property"
    );
    // The new plugin's schema judges the config: rate-limiting needs a limit.
    let (status, refused) = gw.patch(&path, json!({"name": "rate-limiting"})).await;
    assert_eq!(status, 400, "{refused}");
    let (status, renamed) = gw
        .patch(
            &format!("/services/s/plugins/{}", id(&plugin)),
            json!({"name": "rate-limiting", "config": {"minute": 5}}),
        )
        .await;
    assert_eq!(status, 200, "{renamed}");
    assert_eq!(renamed["name"], "rate-limiting");
    assert_eq!(renamed["config"]["minute"], 5);
    assert_eq!(renamed["config"]["policy"], "local");
    assert!(renamed["config"].get("key_names").is_none(), "{renamed}");
    assert_eq!(renamed["id"], plugin["id"]);
}
