//! The `tollgate` command as an operator uses it: `version`, `check`, `start` with files and
//! environment overrides, configuration errors, and a clean drain on SIGTERM.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Gateway, Upstream, run_cli};

#[test]
fn version_prints_the_version() {
    let dir = tempfile::tempdir().expect("dir");
    let (code, out, _) = run_cli(&["version"], &[], dir.path());
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("Tollgate {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_accepts_a_valid_file_in_kong_conf_syntax() {
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("tollgate.conf");
    std::fs::write(
        &conf,
        "# a comment\nproxy_listen = 127.0.0.1:9000 reuseport backlog=16384   # inline\nlog_level = debug\n",
    )
    .expect("write");
    let (code, out, err) = run_cli(&["check", "-c", conf.to_str().expect("path")], &[], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is valid"), "{out}");
}

#[test]
fn check_lists_every_error_at_once_and_fails() {
    let dir = tempfile::tempdir().expect("dir");
    let conf = dir.path().join("tollgate.conf");
    std::fs::write(&conf, "colour = blue\ndatabase = mysql\npg_port = 70000\nproxy_listen = nowhere\n").expect("write");
    let (code, _, err) = run_cli(
        &["check", conf.to_str().expect("path")],
        &[("TOLLGATE_LOG_LEVEL", "loud"), ("TOLLGATE_WORKER_THREADS", "0")],
        dir.path(),
    );
    assert_ne!(code, 0);
    for needle in ["colour", "database", "pg_port", "proxy_listen", "log_level", "worker_threads"] {
        assert!(err.contains(needle), "{needle} missing from:\n{err}");
    }
    assert_eq!(err.lines().filter(|l| l.starts_with("[error]")).count(), 6, "{err}");
}

#[test]
fn start_refuses_a_bad_configuration_without_serving() {
    let dir = tempfile::tempdir().expect("dir");
    let (code, _, err) =
        run_cli(&["start"], &[("TOLLGATE_DATABASE", "oracle"), ("TOLLGATE_UNKNOWN_KEY", "1")], dir.path());
    assert_ne!(code, 0);
    assert!(err.contains("database") && err.contains("unknown_key"), "{err}");
    assert!(!dir.path().join("tollgate-data").exists(), "nothing was created");
}

#[test]
fn the_shipped_default_configuration_file_is_valid() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tollgate.conf.default");
    let dir = tempfile::tempdir().expect("dir");
    let (code, _, err) = run_cli(&["check", "-c", file], &[], dir.path());
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn start_with_defaults_creates_the_sqlite_store_under_the_prefix() {
    let gw = Gateway::start().await;
    assert!(gw.prefix.join("tollgate.db").exists());
    let (status, root) = gw.get("/").await;
    assert_eq!(status, 200);
    assert_eq!(root["configuration"]["database"], "sqlite");
}

#[tokio::test]
async fn a_port_already_in_use_is_reported_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("dir");
    let prefix = dir.path().to_str().expect("path").to_string();
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("127.0.0.1:{}", support::free_port());
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run_cli(
            &["start"],
            &[("TOLLGATE_PREFIX", &prefix), ("TOLLGATE_PROXY_LISTEN", &listen), ("TOLLGATE_ADMIN_LISTEN", &admin)],
            std::path::Path::new("/"),
        )
    })
    .await
    .expect("join");
    assert_ne!(code, 0);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let upstream = Upstream::start().await;
    let mut gw = Gateway::start().await;
    gw.create("/services", json!({"name": "slow", "url": upstream.url("")})).await;
    gw.create("/services/slow/routes", json!({"paths": ["/delay"], "strip_path": false})).await;
    let url = gw.proxy_url("/delay/800");
    let ready = gw.eventually("/delay/0", &[], Duration::from_secs(2), |r| r.status() == 200).await;
    assert_eq!(ready.status(), 200);
    let client = reqwest::Client::new();
    let before = upstream.hits();
    let in_flight = tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    // The request is in flight once the upstream has it (it answers 800 ms later).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.hits() == before {
        assert!(std::time::Instant::now() < deadline, "the request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let code = tokio::task::spawn_blocking(move || gw.terminate()).await.expect("join");
    assert_eq!(in_flight.await.expect("join").expect("request completed"), 200);
    assert_eq!(code, Some(0));
}
