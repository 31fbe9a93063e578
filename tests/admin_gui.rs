//! The admin page (`admin_gui_listen`), black-box: the real gateway serves it, headless Chromium
//! (Debian's `/usr/bin/chromium`, driven by `tests/gui/run.mjs` through playwright-core, both
//! installed by `scripts/test`) uses it to list, create, edit and delete what a traditional node and
//! a control plane hold, each step checked through the Admin API; hostile names stay text; a token
//! is asked for and used. Screenshots are kept in `target/gui-screenshots/`. Without Node, the
//! driver or Chromium the tests fail: they never skip. The Admin API's CORS answers (which the page
//! needs, being on another port) are checked as Kong's spec checks them.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::{Gateway, Options, Upstream};

const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gui");
const SHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/gui-screenshots");

/// Runs one scenario of the driver against `gw`'s page; fails the test with the driver's output
/// when any step fails or the driver cannot run.
async fn drive(scenario: &str, gw: &Gateway, env: &[(&str, String)]) {
    let playwright = Path::new(DRIVER).join("node_modules/playwright-core/package.json");
    assert!(
        playwright.exists(),
        "{} is missing: scripts/test installs playwright-core (npm ci in tests/gui)",
        playwright.display()
    );
    let gui = gw.gui.clone().expect("the gateway serves the admin page");
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    // The driver (and the browser it starts) dies with the test process, however that ends.
    let mut cmd = support::tied::command("node", "KILL", None);
    let (log, reader) = support::tied::log_file().expect("log file");
    cmd.arg("run.mjs")
        .arg(scenario)
        .current_dir(DRIVER)
        .env("GUI", &gui)
        .env("ADMIN", &gw.admin)
        .env("PROXY", &gw.proxy)
        .env("SHOTS", SHOTS)
        .env("CERT", format!("{fixtures}/rsa.crt"))
        .env("KEY", format!("{fixtures}/rsa.key"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = support::tied::spawn(cmd).unwrap_or_else(|e| panic!("{scenario}: cannot run node: {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{scenario}: the browser run took over 300 s:\n{}", support::tied::read_log(&reader));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = support::tied::read_log(&reader);
    assert!(
        status.success(),
        "{scenario} failed ({status}); screenshots in {SHOTS}\n{output}\ngateway log:\n{}",
        gw.logs()
    );
    assert!(output.contains(&format!("passed {scenario}")), "{output}");
}

async fn gui_node() -> (Gateway, Upstream) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start_with(Options { gui: true, ..Options::default() }).await;
    (gw, upstream)
}

#[tokio::test]
async fn the_page_lists_creates_edits_and_deletes_what_a_traditional_node_holds() {
    let (gw, upstream) = gui_node().await;
    drive("traditional", &gw, &[("UPSTREAM", upstream.url(""))]).await;
    // The driver removed all it made.
    for path in ["/services", "/routes", "/consumers", "/plugins", "/upstreams", "/certificates"] {
        let (status, body) = gw.get(path).await;
        assert_eq!((status, body["data"].clone()), (200, json!([])), "{path}");
    }
}

#[tokio::test]
async fn on_a_control_plane_the_page_asks_for_a_token_then_manages_control_planes_nodes_realms_and_tokens() {
    let (cp, token) = Gateway::start_control_plane_with(Options { gui: true, ..Options::default() }).await;
    let (status, created) = cp.post("/v2/control-planes", json!({"name": "Appointments"})).await;
    assert_eq!(status, 201, "{created}");
    let appointments = created["id"].as_str().unwrap().to_string();
    let (status, dp_token) =
        cp.post(&format!("/v2/control-planes/{appointments}/data-plane-tokens"), json!({"name": "dp"})).await;
    assert_eq!(status, 201, "{dp_token}");
    let extra = vec![
        ("TOLLGATE_ROLE".to_string(), "data_plane".to_string()),
        ("TOLLGATE_CLUSTER_CONTROL_PLANE".into(), cp.cluster.clone()),
        ("TOLLGATE_CLUSTER_TOKEN".into(), dp_token["token"].as_str().unwrap().to_string()),
    ];
    let _dp = Gateway::start_with(Options { extra, ..Options::default() }).await;
    drive("control-plane", &cp, &[("TOKEN", token), ("CP_WITH_NODE", appointments)]).await;
    let (_, planes) = cp.get("/v2/control-planes").await;
    let names: Vec<&str> = planes["data"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
    assert!(!names.contains(&"Billing"), "the control plane made on the page was deleted there: {names:?}");
}

#[tokio::test]
async fn hostile_entity_names_show_as_text_and_run_no_script() {
    let (gw, _upstream) = gui_node().await;
    drive("hostile", &gw, &[]).await;
    let (_, consumers) = gw.get("/consumers").await;
    let names: Vec<&str> =
        consumers["data"].as_array().unwrap().iter().filter_map(|c| c["username"].as_str()).collect();
    assert_eq!(names, ["<b onmouseover=\"window.__pwned=4\">bold</b>"], "the consumer typed into the page, as typed");
}

#[tokio::test]
async fn the_page_is_served_with_its_admin_api_address_and_a_strict_policy() {
    let gw = Gateway::start_with(Options {
        gui: true,
        extra: vec![("TOLLGATE_ADMIN_GUI_API_URL".into(), "http://api.test:9001".into())],
        ..Options::default()
    })
    .await;
    let gui = gw.gui.clone().unwrap();
    let page = gw.http.get(format!("{gui}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe-inline"), "{policy}");
    assert!(page.text().await.unwrap().contains(r#"<script type="module" src="app.js"></script>"#));
    let config = gw.http.get(format!("{gui}/kconfig.js")).send().await.unwrap().text().await.unwrap();
    let port = gw.admin.rsplit(':').next().unwrap();
    assert!(config.contains(r#""ADMIN_API_URL":"http://api.test:9001""#), "{config}");
    assert!(config.contains(&format!(r#""ADMIN_API_PORT":"{port}""#)), "{config}");
    for (path, kind) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
        let r = gw.http.get(format!("{gui}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
    }
    assert_eq!(gw.http.get(format!("{gui}/nothing")).send().await.unwrap().status(), 404);
    assert_eq!(gw.http.post(format!("{gui}/")).send().await.unwrap().status(), 405);
}

/// Kong's spec (`04-admin_api/23-cors_spec.lua`): preflights and answers, with and without
/// `admin_gui_url`.
#[tokio::test]
async fn the_admin_api_answers_cors_as_kong_does() {
    let gw = Gateway::start().await;
    let preflight = |path: &str, headers: &[(&str, &str)]| {
        let mut req = gw.http.request(reqwest::Method::OPTIONS, gw.admin_url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    for (path, methods) in [
        ("/", "GET, HEAD, OPTIONS"),
        ("/routes", "GET, HEAD, OPTIONS, POST"),
        ("/routes/test", "DELETE, GET, HEAD, OPTIONS, PATCH, PUT"),
    ] {
        let r = preflight(path, &[]).await.unwrap();
        assert_eq!(r.status(), 204, "{path}");
        assert_eq!(r.headers()["allow"], methods, "{path}");
        assert_eq!(r.headers()["access-control-allow-methods"], methods, "{path}");
        assert_eq!(r.headers()["access-control-allow-headers"], "Content-Type", "{path}");
        assert_eq!(r.headers()["access-control-allow-origin"], "*", "{path}");
    }
    let r = preflight(
        "/",
        &[("Access-Control-Request-Headers", "X-Header-1,X-Header-2"), ("Origin", "http://example.com")],
    )
    .await
    .unwrap();
    assert_eq!(r.headers()["access-control-allow-headers"], "X-Header-1,X-Header-2");
    assert_eq!(r.headers()["access-control-allow-origin"], "http://example.com");
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let r = gw
        .http
        .get(gw.admin_url("/"))
        .header("Access-Control-Request-Method", "PATCH")
        .header("Access-Control-Request-Headers", "X-Header-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-methods").is_none());
    assert!(r.headers().get("access-control-allow-headers").is_none());
    assert_eq!(r.headers()["access-control-allow-origin"], "*");

    let gw = Gateway::start_with(Options {
        extra: vec![("TOLLGATE_ADMIN_GUI_URL".into(), "http://admin.api:9100/path/to/any/way".into())],
        ..Options::default()
    })
    .await;
    for origin in [Some("http://example.com"), None] {
        let mut req = gw.http.get(gw.admin_url("/"));
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.headers()["access-control-allow-origin"], "http://admin.api:9100", "{origin:?}");
    }
    let r = gw.http.get(gw.admin_url("/")).header("Origin", "http://admin.api:9100").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "http://admin.api:9100");
}

/// A browser sends its preflight without the token: a control plane answers it, and still refuses
/// the request itself without one (with the CORS headers, so the page can read the 401).
#[tokio::test]
async fn preflights_need_no_token_and_refusals_carry_cors_headers() {
    let (cp, _token) = Gateway::start_control_plane().await;
    let anonymous = support::client(None);
    let r = anonymous
        .request(reqwest::Method::OPTIONS, cp.admin_url("/v1/realms"))
        .header("Origin", "http://127.0.0.1:8002")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-methods"], "GET, HEAD, OPTIONS, POST");
    assert_eq!(r.headers()["access-control-allow-headers"], "authorization,content-type");
    assert_eq!(r.headers()["access-control-allow-origin"], "http://127.0.0.1:8002");
    let r = anonymous.get(cp.admin_url("/v1/realms")).header("Origin", "http://127.0.0.1:8002").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["access-control-allow-origin"], "http://127.0.0.1:8002");
    let r = anonymous.delete(cp.admin_url("/v1/realms/x")).send().await.unwrap();
    assert_eq!(r.status(), 401, "only OPTIONS passes without a token");
}
