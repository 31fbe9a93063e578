//! Moving from Kong with the files a Kong team already has: `tollgate config init|parse|db-import|
//! db-export` take and give Kong 3 declarative files with Kong's messages and exit codes; an
//! imported file is what the gateway then proxies; an import is all or nothing; an export imports
//! into an empty store as the same configuration.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::path::Path;

use serde_json::json;
use support::tls::{TestCa, TestCert};
use support::{Gateway, Options, PgDatabase, Upstream, run_cli};

fn config(args: &[&str], dir: &Path, env: &[(&str, String)]) -> (i32, String, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut all = vec!["config"];
    all.extend_from_slice(args);
    run_cli(&all, &env, dir)
}

fn prefix(dir: &Path, name: &str) -> Vec<(&'static str, String)> {
    vec![("TOLLGATE_PREFIX", dir.join(name).display().to_string())]
}

#[test]
fn init_writes_an_example_that_parses_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("dir");
    let (code, out, _) = config(&["init"], dir.path(), &[]);
    assert_eq!((code, out.trim()), (0, "Successfully written kong.yml"));
    let (code, out, err) = config(&["parse", "kong.yml"], dir.path(), &[]);
    assert_eq!((code, out.trim()), (0, "parse successful"), "{err}");
    let (code, _, err) = config(&["init"], dir.path(), &[]);
    assert_eq!((code, err.trim()), (1, "Error: kong.yml already exists.\nWill not overwrite it."));
    let (code, _, err) = config(&["parse"], dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(err.starts_with("Error: expected a declarative configuration file"), "{err}");
}

#[test]
fn parse_lists_every_error_in_kongs_words_and_exits_1() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = "_format_version: \"3.0\"\nservices:\n- name: s\n  port: 99999\nroutes:\n- {name: r, paths: [/], service: nope}\nunknown_things: []\n";
    std::fs::write(dir.path().join("bad.yml"), bad).expect("write");
    let (code, out, err) = config(&["parse", "bad.yml"], dir.path(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(err.starts_with("Error: Failed parsing:\n"), "{err}");
    for line in [
        "in 'services':",
        "  - in entry 1 of 'services':",
        "    in 'host': required field missing",
        "    in 'port': value should be between 0 and 65535",
        "in 'unknown_things': unknown field",
    ] {
        assert!(err.lines().any(|l| l == line), "{line:?} in:\n{err}");
    }
    // Not YAML, not an object, an unknown type, a YAML bomb: each refused, the bomb quickly.
    std::fs::write(dir.path().join("text.yml"), "a: [1, 2\n").expect("write");
    let (code, _, err) = config(&["parse", "text.yml"], dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(err.starts_with("Error: Failed parsing:\nfailed parsing declarative configuration: "), "{err}");
    std::fs::write(dir.path().join("kong.toml"), "x = 1\n").expect("write");
    let (_, _, err) = config(&["parse", "kong.toml"], dir.path(), &[]);
    assert!(err.contains("unknown file type: kong.toml. (Accepted types: json, yaml)"), "{err}");
    let mut bomb = String::from("_format_version: '3.0'\na: &a [x, x, x, x, x, x, x, x, x, x]\n");
    let names = ["b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let mut prev = "a";
    for name in names {
        let refs = vec![format!("*{prev}"); 10].join(", ");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        prev = name;
    }
    std::fs::write(dir.path().join("bomb.yml"), bomb).expect("write");
    let started = std::time::Instant::now();
    let (code, _, err) = config(&["parse", "bomb.yml"], dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(err.contains("aliases expand to more than"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// A file with every kind of entity, on `upstream`.
fn everything(upstream: &Upstream) -> serde_json::Value {
    let cert = TestCert::ecdsa(&["api.test"]);
    let ca = TestCa::new("declared CA");
    json!({
        "_format_version": "3.0",
        "_comment": "every entity Tollgate has",
        "certificates": [{"cert": cert.cert_pem, "key": cert.key_pem, "snis": [{"name": "api.test"}]}],
        "ca_certificates": [{"cert": ca.cert_pem}],
        "upstreams": [{"name": "pool.test", "targets": [{"target": format!("127.0.0.1:{}", upstream.port())}]}],
        "services": [
            {"name": "echo", "url": format!("http://127.0.0.1:{}", upstream.port()),
             "routes": [{"name": "open", "paths": ["/open"]},
                        {"name": "locked", "paths": ["/locked"], "plugins": [{"name": "key-auth"}]}]},
            {"name": "pooled", "host": "pool.test", "routes": [{"name": "pooled", "paths": ["/pooled"]}]}
        ],
        "consumer_groups": [{"name": "gold", "plugins": [
            {"name": "rate-limiting-advanced", "config": {"limit": [100], "window_size": [60]}}]}],
        "consumers": [
            {"username": "alice", "custom_id": "a-1", "tags": ["team-a"],
             "keyauth_credentials": [{"key": "alice-key"}], "acls": [{"group": "admins"}],
             "groups": [{"name": "gold"}]},
            {"username": "bob", "keyauth_credentials": [{"key": "bob-key"}]}
        ],
        "plugins": [{"name": "rate-limiting", "service": "echo", "consumer": "bob", "config": {"minute": 100}}]
    })
}

async fn imported_file_is_proxied(env: Vec<(&'static str, String)>) {
    let dir = tempfile::tempdir().expect("dir");
    let upstream = Upstream::start().await;
    std::fs::write(dir.path().join("kong.json"), everything(&upstream).to_string()).expect("write");
    let (code, out, err) = config(&["db-import", "kong.json"], dir.path(), &env);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().next(), Some("parse successful, beginning import"));
    assert!(out.contains("import successful"), "{out}");
    let extra = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let opts = Options { prefix: Some(dir.path().join("node")), extra, ..Options::default() };
    let gw = Gateway::start_with(opts).await;
    let open = gw.eventually("/open", &[], std::time::Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(open.status(), 200);
    assert_eq!(gw.call("/locked", &[]).await.status(), 401);
    assert_eq!(gw.call("/locked", &[("apikey", "alice-key")]).await.status(), 200);
    assert_eq!(gw.call("/pooled", &[]).await.status(), 200, "through the upstream's target");
    let (status, alice) = gw.get("/consumers/alice").await;
    assert_eq!(status, 200);
    assert_eq!(alice["custom_id"], "a-1");
    let (_, groups) = gw.get("/consumers/alice/consumer_groups").await;
    assert_eq!(groups["data"][0]["name"], "gold", "{groups}");
    let (_, snis) = gw.get("/snis/api.test").await;
    assert!(snis["certificate"]["id"].is_string(), "{snis}");
}

#[tokio::test]
async fn an_imported_file_is_what_the_gateway_proxies_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    imported_file_is_proxied(prefix(dir.path(), "node")).await;
}

#[tokio::test]
async fn an_imported_file_is_what_the_gateway_proxies_on_postgres() {
    let db = PgDatabase::fresh();
    imported_file_is_proxied(db.env()).await;
}

#[tokio::test]
async fn an_import_that_fails_half_way_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("dir");
    let env = prefix(dir.path(), "node");
    let extra = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let mut gw =
        Gateway::start_with(Options { prefix: Some(dir.path().join("node")), extra, ..Options::default() }).await;
    // A consumer the store holds under another id: the file's `taken` (Kong's id for the name)
    // collides on its username, after the file's service was written.
    gw.create("/consumers", json!({"username": "taken", "id": uuid::Uuid::new_v4()})).await;
    gw.terminate();
    let file = json!({"_format_version": "3.0",
        "services": [{"name": "first", "url": "http://127.0.0.1:9"}],
        "consumers": [{"username": "taken"}]});
    std::fs::write(dir.path().join("kong.json"), file.to_string()).expect("write");
    let (code, out, err) = config(&["db_import", "kong.json"], dir.path(), &env);
    assert_eq!(code, 1, "{out}");
    assert!(err.starts_with("Error: Failed importing:\n"), "{err}");
    assert!(err.contains("username"), "{err}");
    let (code, export, _) = config(&["db-export"], dir.path(), &env);
    assert_eq!(code, 0);
    assert!(!export.contains("first"), "nothing of the file was kept:\n{export}");
}

#[tokio::test]
async fn an_export_imports_into_an_empty_store_as_the_same_configuration() {
    let dir = tempfile::tempdir().expect("dir");
    let upstream = Upstream::start().await;
    std::fs::write(dir.path().join("kong.json"), everything(&upstream).to_string()).expect("write");
    let (one, two) = (prefix(dir.path(), "one"), prefix(dir.path(), "two"));
    assert_eq!(config(&["db-import", "kong.json"], dir.path(), &one).0, 0);
    let (code, _, err) = config(&["db-export", "exported.yml"], dir.path(), &one);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = config(&["db-export", "exported.yml"], dir.path(), &one);
    assert_eq!((code, err.trim()), (1, "Error: exported.yml already exists.\nWill not overwrite it."));
    let exported = std::fs::read_to_string(dir.path().join("exported.yml")).expect("read");
    assert!(exported.contains("_format_version: \"3.0\"") && exported.contains("_transform: false"), "{exported}");
    let (code, out, err) = config(&["db-import", "exported.yml"], dir.path(), &two);
    assert_eq!(code, 0, "{out}{err}");
    let (_, again, _) = config(&["db-export"], dir.path(), &two);
    assert_eq!(again, exported, "the second store holds what the first did");
    // Importing the same file again changes nothing either (an upsert of the same records).
    assert_eq!(config(&["db-import", "exported.yml"], dir.path(), &two).0, 0);
    assert_eq!(config(&["db-export"], dir.path(), &two).1, exported);
}
