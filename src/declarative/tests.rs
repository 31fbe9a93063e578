use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::plugins::Catalog;

fn read(text: &str) -> Result<Declared, Invalid> {
    let doc = unserialize(text, Some("kong.yml")).map_err(|e| Invalid::top("error", e))?;
    flatten(doc, &Catalog)
}

fn kong_id(table: &str, key: &str) -> String {
    let namespace = Uuid::new_v5(&ID_NAMESPACE, table.as_bytes());
    Uuid::new_v5(&namespace, key.as_bytes()).to_string()
}

fn all(d: &Declared, kind: Kind) -> Vec<&Obj> {
    d.entities.iter().filter(|(k, _)| *k == kind).map(|(_, o)| o).collect()
}

const EXAMPLE: &str = r#"
_format_version: "3.0"
_transform: true
services:
- name: example-service
  url: http://example.com
  routes:
  - name: example-route
    paths: ["/"]
  plugins:
  - name: key-auth
consumers:
- username: example-user
  keyauth_credentials:
  - key: my-key
  plugins:
  - name: rate-limiting
    config: {policy: local, second: 5}
plugins:
- name: rate-limiting
  consumer: example-user
  service: example-service
  config: {hour: 2}
"#;

#[test]
fn kongs_example_file_loads_with_kongs_ids() {
    let d = read(EXAMPLE).expect("valid");
    assert_eq!(d.format_version, "3.0");
    let service = all(&d, Kind::Service)[0];
    // Kong's id of a consumer named test-consumer-1 is a73dc9a7-93df-584d-97c0-7f41a1bbce3d.
    assert_eq!(kong_id("consumers", "test-consumer-1"), "a73dc9a7-93df-584d-97c0-7f41a1bbce3d");
    let service_id = kong_id("services", "example-service");
    assert_eq!(service["id"], service_id.as_str());
    assert_eq!(service["host"], "example.com");
    assert_eq!(service["port"], 80);
    let route = all(&d, Kind::Route)[0];
    assert_eq!(route["service"], json!({"id": service_id}));
    let consumer_id = kong_id("consumers", "example-user");
    let key = all(&d, Kind::KeyAuth)[0];
    assert_eq!(key["consumer"], json!({"id": consumer_id}));
    assert_eq!(key["id"], kong_id("keyauth_credentials", "keyauth_credentials:*:my-key").as_str());
    let plugins = all(&d, Kind::Plugin);
    assert_eq!(plugins.len(), 3);
    // Nested under its service: the parent's id is its part of the cache key.
    let nested = plugins.iter().find(|p| p["name"] == "key-auth").expect("key-auth");
    assert_eq!(nested["id"], kong_id("plugins", &format!("plugins:*:key-auth::{service_id}::")).as_str());
    // At the top, by names: the names are the parts, as Kong builds them.
    let top = plugins.iter().find(|p| p["config"]["hour"] == 2).expect("top-level plugin");
    assert_eq!(top["id"], kong_id("plugins", "plugins:*:rate-limiting::example-service:example-user:").as_str());
    assert_eq!(top["service"], json!({"id": service_id}));
    assert_eq!(top["consumer"], json!({"id": consumer_id}));
    // Parents come before children.
    let kinds: Vec<Kind> = d.entities.iter().map(|(k, _)| *k).collect();
    let at = |k: Kind| kinds.iter().position(|x| *x == k).expect("kind");
    assert!(
        at(Kind::Consumer) < at(Kind::KeyAuth)
            && at(Kind::Service) < at(Kind::Route)
            && at(Kind::Route) < at(Kind::Plugin)
    );
}

#[test]
fn json_and_yaml_are_read_by_the_files_name() {
    assert!(unserialize(r#"{"_format_version": "3.0"}"#, Some("kong.json")).is_ok());
    assert!(unserialize("_format_version: '3.0'\n", None).is_ok());
    assert_eq!(
        unserialize("{}", Some("kong.toml")),
        Err("unknown file type: kong.toml. (Accepted types: json, yaml)".to_string())
    );
    assert_eq!(
        unserialize("- 1\n- 2\n", Some("kong.yaml")),
        Err("failed parsing declarative configuration: expected an object".to_string())
    );
    let bad = unserialize("a: [1, 2\n", Some("kong.yml")).expect_err("syntax");
    assert!(bad.starts_with("failed parsing declarative configuration: "), "{bad}");
}

#[test]
fn every_error_is_listed_at_once_in_kongs_shape() {
    let text = r#"
_format_version: "3.0"
services:
- name: foo
  host: example.test
  port: 99999
  routes:
  - name: r1
    paths: ["/a"]
    protocols: [tcp]
- name: bar
  protocol: https
upstreams: not-a-list
nonsense: 1
"#;
    let e = read(text).expect_err("invalid");
    assert_eq!(e.fields["nonsense"], "unknown field");
    assert_eq!(e.fields["upstreams"], "expected an array");
    assert_eq!(e.fields["services"][0]["port"], "value should be between 0 and 65535");
    assert!(e.fields["services"][0]["routes"][0]["@entity"].is_array(), "{}", e.fields);
    assert_eq!(e.fields["services"][1]["host"], "required field missing");
    assert!(e.message().starts_with("declarative config is invalid: {"), "{}", e.message());
    let pretty = e.pretty();
    assert!(
        pretty.contains(
            "in 'services':\n  - in entry 1 of 'services':\n    in 'port': value should be between 0 and 65535"
        ),
        "{pretty}"
    );
    // Flattened: one item per entry, nested ones hoisted.
    let types: Vec<&str> = e.flattened.iter().map(|f| f["entity_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["service", "route", "service"]);
    let port = &e.flattened[0]["errors"][0];
    assert_eq!(port, &json!({"type": "field", "field": "port", "message": "value should be between 0 and 65535"}));
    assert_eq!(e.flattened[0]["entity_name"], "foo");
}

#[test]
fn missing_and_bad_format_versions_are_named() {
    assert_eq!(
        read("services: []\n").expect_err("missing").fields,
        json!({"_format_version": "required field missing"})
    );
    let e = read("_format_version: '4.0'\n").expect_err("bad");
    assert_eq!(e.fields, json!({"_format_version": "expected one of: 1.1, 2.1, 3.0"}));
    assert_eq!(e.message(), r#"declarative config is invalid: {_format_version="expected one of: 1.1, 2.1, 3.0"}"#);
}

#[test]
fn references_to_nothing_and_duplicates_use_kongs_words() {
    let text = r#"
_format_version: "3.0"
services:
- {name: foo, host: a.test}
- {name: foo, host: b.test}
routes:
- {name: r, paths: ["/"], service: nope}
"#;
    let e = read(text).expect_err("invalid reference");
    assert_eq!(e.fields["routes"][0], json!(["invalid reference 'service: nope' (no such entry in 'services')"]));
    let text = r#"
_format_version: "3.0"
services:
- {name: foo, host: a.test}
- {name: foo, host: b.test}
"#;
    let e = read(text).expect_err("duplicate");
    // The same name gives the same id: Kong reports the primary key.
    let id = kong_id("services", "foo");
    assert_eq!(
        e.fields["services"],
        json!([
            null,
            format!("uniqueness violation: 'services' entity with primary key set to '{id}' already declared")
        ])
    );
    assert_eq!(
        e.message(),
        format!(
            "declarative config is invalid: {{services={{[2]=\"uniqueness violation: 'services' entity with primary key set to '{id}' already declared\"}}}}"
        )
    );
    let text = r#"
_format_version: "3.0"
consumers:
- {username: a, custom_id: same}
- {username: b, custom_id: same}
"#;
    let e = read(text).expect_err("duplicate custom_id");
    assert_eq!(
        e.fields["consumers"][1],
        "uniqueness violation: 'consumers' entity with custom_id set to 'same' already declared"
    );
}

#[test]
fn old_formats_have_their_regex_paths_marked() {
    let text = "_format_version: '1.1'\nservices:\n- name: s\n  host: a.test\n  routes:\n  - name: r\n    paths: ['/plain', '/users/\\d+']\n";
    let d = read(text).expect("valid");
    assert_eq!(all(&d, Kind::Route)[0]["paths"], json!(["/plain", "~/users/\\d+"]));
}

#[test]
fn consumer_groups_as_kong_enterprise_and_deck_write_them() {
    let text = r#"
_format_version: "3.0"
consumer_groups:
- name: gold
  plugins:
  - name: rate-limiting-advanced
    config: {limit: [10], window_size: [60]}
consumers:
- username: alice
  groups: [{name: gold}]
- username: bob
consumer_group_consumers:
- {consumer: bob, consumer_group: gold}
"#;
    let d = read(text).expect("valid");
    let group = kong_id("consumer_groups", "gold");
    let members = all(&d, Kind::GroupMembership);
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m["consumer_group"] == json!({"id": group})));
    let plugin = all(&d, Kind::Plugin)[0];
    assert_eq!(plugin["consumer_group"], json!({"id": group}));
}

#[test]
fn targets_get_the_same_id_for_the_same_address_under_one_upstream() {
    let text = r#"
_format_version: "3.0"
upstreams:
- name: u
  targets: [{target: "10.0.0.1:80"}, {target: "10.0.0.1:80"}]
"#;
    let e = read(text).expect_err("duplicate target");
    let message = e.fields["upstreams"][0]["targets"][1].as_str().expect("message");
    assert!(message.starts_with("uniqueness violation: 'targets' entity with primary key set to"), "{message}");
}

#[test]
fn entries_that_are_not_records_and_workspaces_are_handled() {
    let e = read("_format_version: '3.0'\nservices: [1]\n").expect_err("not a record");
    assert_eq!(e.fields, json!({"services": ["expected a record"]}));
    let d = read("_format_version: '3.0'\n_workspace: team\n_comment: hi\n").expect("valid");
    assert_eq!(d.warnings.len(), 1);
    assert!(d.entities.is_empty());
    let v: Value = json!({"_format_version": "3.0", "_transform": "yes"});
    assert_eq!(flatten(v, &Catalog).expect_err("bad").fields, json!({"_transform": "expected a boolean"}));
}

#[test]
fn the_hash_is_kongs_md5_of_the_text() {
    assert_eq!(hash(""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(EMPTY_HASH.len(), 32);
}
