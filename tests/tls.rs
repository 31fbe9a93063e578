//! HTTPS at the edge, as a Kong team uses it: TLS listeners on the proxy and the Admin API with the
//! node's generated default certificate or the one in `ssl_cert`, HTTP/2 by ALPN, `https`-only
//! routes and their redirects, route `snis`, `X-Forwarded-Proto: https`, the PROXY protocol, and
//! clients that send garbage instead of a ClientHello.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::tls::{self, Connect, TestCert};
use support::{Gateway, Options, Upstream, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn tls_gateway(extra: Vec<(String, String)>) -> Gateway {
    Gateway::start_with(Options { tls: true, extra, ..Options::default() }).await
}

fn echoed(answer: &tls::Answer) -> Value {
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("not the echo ({e}): {answer:?}"))
}

#[tokio::test]
async fn https_is_served_on_the_generated_default_certificate_and_forwarded_as_https() {
    let upstream = Upstream::start().await;
    let gw = tls_gateway(vec![]).await;
    gw.service_and_route(&upstream, "web", json!({"paths": ["/web"]})).await;
    let addr = gw.proxy_tls.expect("tls listener");

    let mut conn = tls::connect(addr, "localhost", &Connect::default()).await.expect("handshake");
    let default = std::fs::read_to_string(gw.prefix.join("ssl/tollgate-default-ecdsa.crt")).expect("made on start");
    let default = TestCert { cert_pem: default, key_pem: String::new() };
    assert_eq!(tls::peer_leaf(&conn), default.der(), "the generated pair is the one served");
    let answer = tls::request(&mut conn, "localhost", "/web/x", &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let headers = &echoed(&answer)["headers"];
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["x-forwarded-port"], addr.port().to_string());

    // Cleartext on the other listener still says http.
    let r = gw.call("/web/x", &[]).await;
    let v: Value = r.json().await.expect("echo");
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn http2_is_offered_by_alpn_on_an_http2_listener() {
    let gw = tls_gateway(vec![]).await;
    let addr = gw.proxy_tls.expect("tls listener");
    let both = Connect { alpn: vec!["h2", "http/1.1"], ..Connect::default() };
    let conn = tls::connect(addr, "localhost", &both).await.expect("handshake");
    assert_eq!(tls::alpn(&conn).as_deref(), Some("h2"));
    let h1 = Connect { alpn: vec!["http/1.1"], ..Connect::default() };
    let conn = tls::connect(addr, "localhost", &h1).await.expect("handshake");
    assert_eq!(tls::alpn(&conn).as_deref(), Some("http/1.1"));
}

#[tokio::test]
async fn https_only_routes_send_cleartext_clients_to_https_as_configured() {
    let upstream = Upstream::start().await;
    let gw = tls_gateway(vec![]).await;
    gw.create("/services", json!({"name": "s", "url": upstream.url("")})).await;
    gw.create("/services/s/routes", json!({"name": "upgrade", "paths": ["/up"], "protocols": ["https"]})).await;
    gw.create(
        "/services/s/routes",
        json!({"name": "moved", "paths": ["/moved"], "protocols": ["https"], "https_redirect_status_code": 301}),
    )
    .await;

    let r = gw.call("/up", &[]).await;
    assert_eq!(r.status(), 426);
    assert_eq!(r.headers()["upgrade"], "TLS/1.2, HTTP/1.1");
    assert_eq!(support::gateway_json(r).await, json!({"message": "Please use HTTPS protocol"}));
    let r = gw.call("/moved/a?b=1", &[("host", "shop.test")]).await;
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "https://shop.test/moved/a?b=1");
    // An untrusted client cannot claim https.
    assert_eq!(gw.call("/up", &[("x-forwarded-proto", "https")]).await.status(), 426);

    let addr = gw.proxy_tls.expect("tls listener");
    assert_eq!(tls::get(addr, "localhost", "localhost", "/up", &[]).await.status, 200);
    assert_eq!(tls::get(addr, "localhost", "localhost", "/moved", &[]).await.status, 200);
}

#[tokio::test]
async fn a_trusted_load_balancer_that_terminated_tls_satisfies_https_only_routes() {
    let upstream = Upstream::start().await;
    let gw = tls_gateway(vec![("TOLLGATE_TRUSTED_IPS".into(), "127.0.0.1".into())]).await;
    gw.create("/services", json!({"name": "s", "url": upstream.url("")})).await;
    gw.create("/services/s/routes", json!({"paths": ["/secure"], "protocols": ["https"]})).await;
    assert_eq!(gw.call("/secure", &[]).await.status(), 426);
    let r = gw.call("/secure", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("echo");
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn route_snis_pick_routes_on_tls_connections_only() {
    let upstream = Upstream::start().await;
    let gw = tls_gateway(vec![]).await;
    gw.create("/services", json!({"name": "s", "url": upstream.url("")})).await;
    gw.create(
        "/services/s/routes",
        json!({"name": "a", "paths": ["/app"], "protocols": ["http", "https"], "snis": ["a.test"]}),
    )
    .await;
    let addr = gw.proxy_tls.expect("tls listener");
    assert_eq!(tls::get(addr, "a.test", "a.test", "/app", &[]).await.status, 200);
    let other = tls::get(addr, "b.test", "b.test", "/app", &[]).await;
    assert_eq!(other.status, 404, "{other:?}");
    assert_eq!(echoed_message(&other), "no Route matched with those values");
    // Cleartext requests have no SNI and are matched without it, as in Kong.
    assert_eq!(gw.call("/app", &[]).await.status(), 200);
}

fn echoed_message(a: &tls::Answer) -> String {
    serde_json::from_str::<Value>(&a.body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test]
async fn the_certificate_in_ssl_cert_is_served_and_bad_settings_are_named() {
    let cert = TestCert::ecdsa(&["proxy.test"]);
    let gw = tls_gateway(vec![
        ("TOLLGATE_SSL_CERT".into(), cert.cert_pem.clone()),
        ("TOLLGATE_SSL_CERT_KEY".into(), cert.key_pem.clone()),
    ])
    .await;
    let conn = tls::connect(gw.proxy_tls.expect("tls"), "proxy.test", &Connect::default()).await.expect("handshake");
    assert_eq!(tls::peer_leaf(&conn), cert.der());
    // A client that trusts it verifies it by name.
    let strict = Connect { roots: vec![cert.der()], ..Connect::default() };
    tls::connect(gw.proxy_tls.expect("tls"), "proxy.test", &strict).await.expect("verified");

    let dir = tempfile::tempdir().expect("dir");
    let other = TestCert::ecdsa(&["x.test"]);
    let (code, _, err) = support::run_cli(
        &["check"],
        &[("TOLLGATE_SSL_CERT", &cert.cert_pem), ("TOLLGATE_SSL_CERT_KEY", &other.key_pem)],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("ssl_cert") && err.contains("certificate does not match key"), "{err}");
    assert!(!err.contains("PRIVATE KEY"), "no key material in errors: {err}");
    let (code, _, err) = support::run_cli(&["check"], &[("TOLLGATE_SSL_CERT", "/nowhere.crt")], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("ssl_cert_key must be specified"), "{err}");
}

#[tokio::test]
async fn the_admin_api_answers_over_tls_with_its_own_certificate() {
    let admin = TestCert::ecdsa(&["admin.test"]);
    let gw = tls_gateway(vec![
        ("TOLLGATE_ADMIN_SSL_CERT".into(), admin.cert_pem.clone()),
        ("TOLLGATE_ADMIN_SSL_CERT_KEY".into(), admin.key_pem.clone()),
    ])
    .await;
    let addr = gw.admin_tls.expect("admin tls");
    let answer = tls::get(addr, "admin.test", "admin.test", "/status", &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.contains("\"database\""), "{answer:?}");
    let conn = tls::connect(addr, "admin.test", &Connect::default()).await.expect("handshake");
    assert_eq!(tls::peer_leaf(&conn), admin.der(), "admin_ssl_cert, not the proxy's default");
}

#[tokio::test]
async fn curl_speaks_http2_over_tls_to_the_proxy() {
    let upstream = Upstream::start().await;
    let gw = tls_gateway(vec![]).await;
    gw.service_and_route(&upstream, "web", json!({"paths": ["/web"]})).await;
    let port = gw.proxy_tls.expect("tls").port();
    let out = std::process::Command::new("curl")
        .args(["-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .args(["--resolve", &format!("gateway.test:{port}:127.0.0.1")])
        .arg(format!("https://gateway.test:{port}/web"))
        .output()
        .expect("curl (scripts/test installs it)");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

#[tokio::test]
async fn garbage_instead_of_a_client_hello_closes_that_connection_only() {
    let upstream = Upstream::start().await;
    let gw = tls_gateway(vec![]).await;
    gw.service_and_route(&upstream, "web", json!({"paths": ["/web"]})).await;
    let addr = gw.proxy_tls.expect("tls listener");
    let hellos: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        // An SSLv3 ClientHello record header with a truncated body.
        &[0x16, 0x03, 0x00, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x00],
        &[0xff; 4096],
    ];
    for hello in hellos {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(hello).await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the connection is closed, not left hanging");
        assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    }
    assert_eq!(tls::get(addr, "localhost", "localhost", "/web", &[]).await.status, 200);
}

/// A request behind a PROXY header naming 203.0.113.7.
const PROXIED_GET: &[u8] =
    b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\nGET /web HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// Sends `bytes` on a fresh connection and reads until the gateway closes it.
async fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_proxy_protocol_listener_takes_the_client_address_from_a_trusted_balancer() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let gw = Gateway::start_with(Options {
        extra: vec![
            ("TOLLGATE_PROXY_LISTEN".into(), format!("127.0.0.1:{port} proxy_protocol")),
            ("TOLLGATE_TRUSTED_IPS".into(), "127.0.0.1".into()),
        ],
        ..Options::default()
    })
    .await;
    gw.service_and_route(&upstream, "web", json!({"paths": ["/web"]})).await;
    let out = raw(port, PROXIED_GET).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(r#""x-real-ip":"203.0.113.7""#), "{out}");

    // No header where one is required: refused, the upstream sees nothing.
    let hits = upstream.hits();
    let out = raw(port, b"GET /web HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(out.is_empty(), "{out}");
    assert_eq!(upstream.hits(), hits);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_choose_its_address_with_a_proxy_header() {
    let upstream = Upstream::start().await;
    let port = free_port();
    let gw = Gateway::start_with(Options {
        extra: vec![("TOLLGATE_PROXY_LISTEN".into(), format!("127.0.0.1:{port} proxy_protocol"))],
        ..Options::default()
    })
    .await;
    gw.service_and_route(&upstream, "web", json!({"paths": ["/web"]})).await;
    let out = raw(port, PROXIED_GET).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(r#""x-real-ip":"127.0.0.1""#), "{out}");
}

async fn certificate(gw: &Gateway, cert: &TestCert, snis: &[&str]) -> Value {
    gw.create("/certificates", json!({"cert": cert.cert_pem, "key": cert.key_pem, "snis": snis})).await
}

async fn served(gw: &Gateway, sni: &str) -> Vec<u8> {
    let conn = tls::connect(gw.proxy_tls.expect("tls"), sni, &Connect::default()).await.expect("handshake");
    tls::peer_leaf(&conn).to_vec()
}

#[tokio::test]
async fn certificates_are_picked_by_sni_as_kong_picks_them_and_change_without_a_restart() {
    let upstream = Upstream::start().await;
    let gw = tls_gateway(vec![]).await;
    gw.service_and_route(&upstream, "web", json!({"paths": ["/web"]})).await;
    let default = served(&gw, "nothing.test").await;
    let shop = TestCert::ecdsa(&["shop.test"]);
    let wild = TestCert::ecdsa(&["*.wild.test"]);
    let any = TestCert::ecdsa(&["catch.all"]);

    let created = certificate(&gw, &shop, &["shop.test", "SHOP2.test"]).await;
    assert_eq!(created["snis"], json!(["shop.test", "shop2.test"]), "sorted, lower-cased names");
    assert_eq!(created["key"], json!(shop.key_pem), "stored as given and returned, as Kong does");
    // A connection opened now keeps its certificate while the configuration changes.
    let mut open = tls::connect(gw.proxy_tls.expect("tls"), "shop.test", &Connect::default()).await.expect("handshake");
    assert_eq!(tls::peer_leaf(&open).to_vec(), shop.der().to_vec());

    certificate(&gw, &wild, &["*.wild.test"]).await;
    assert_eq!(served(&gw, "shop.test").await, shop.der().to_vec());
    assert_eq!(served(&gw, "shop2.test").await, shop.der().to_vec());
    assert_eq!(served(&gw, "a.wild.test").await, wild.der().to_vec());
    assert_eq!(served(&gw, "a.b.wild.test").await, default, "one label only");
    assert_eq!(served(&gw, "other.test").await, default);
    let catch_all = certificate(&gw, &any, &["*"]).await;
    assert_eq!(served(&gw, "other.test").await, any.der().to_vec());

    assert_eq!(gw.delete(&format!("/certificates/{}", support::id(&catch_all))).await, 204);
    assert_eq!(served(&gw, "other.test").await, default);
    let answer = tls::request(&mut open, "shop.test", "/web", &[]).await;
    assert_eq!(answer.status, 200, "the open connection was not dropped: {answer:?}");
}

#[tokio::test]
async fn certificates_are_addressed_by_sni_name_and_snis_are_entities_of_their_own() {
    let gw = tls_gateway(vec![]).await;
    let shop = TestCert::ecdsa(&["shop.test"]);
    let created = certificate(&gw, &shop, &["shop.test"]).await;
    let id = support::id(&created);

    let (status, by_name) = gw.get("/certificates/shop.test").await;
    assert_eq!(status, 200);
    assert_eq!(by_name["id"], json!(id));
    assert_eq!(gw.get("/certificates/nobody.test").await, (404, json!({"message": "SNI not found"})));
    let (status, snis) = gw.get(&format!("/certificates/{id}/snis")).await;
    assert_eq!(status, 200);
    assert_eq!(snis["data"][0]["name"], "shop.test");
    assert_eq!(snis["data"][0]["certificate"], json!({"id": id}));
    let (status, by_sni) = gw.get("/certificates/shop.test/snis").await;
    assert_eq!((status, by_sni["data"][0]["name"].clone()), (200, json!("shop.test")));

    // A name added as an SNI entity shows in the certificate's list, and serves it.
    gw.create("/snis", json!({"name": "extra.test", "certificate": {"id": id}})).await;
    assert_eq!(gw.get(&format!("/certificates/{id}")).await.1["snis"], json!(["extra.test", "shop.test"]));
    assert_eq!(served(&gw, "extra.test").await, shop.der().to_vec());

    // PATCH with `snis` replaces the names; PUT on a new name creates a certificate holding it.
    let (status, patched) = gw.patch(&format!("/certificates/{id}"), json!({"snis": ["only.test"]})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["snis"], json!(["only.test"]));
    assert_eq!(gw.get("/snis/shop.test").await.0, 404);
    let other = TestCert::ecdsa(&["new.test"]);
    let (status, put) = gw.put("/certificates/new.test", json!({"cert": other.cert_pem, "key": other.key_pem})).await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(put["snis"], json!(["new.test"]));
    assert_eq!(served(&gw, "new.test").await, other.der().to_vec());

    // Deleting a certificate deletes its names.
    assert_eq!(gw.delete(&format!("/certificates/{id}")).await, 204);
    assert_eq!(gw.get("/snis/only.test").await.0, 404);
}

#[tokio::test]
async fn bad_certificates_are_refused_with_kong_messages_and_no_key_in_the_answer() {
    let gw = tls_gateway(vec![]).await;
    let a = TestCert::ecdsa(&["a.test"]);
    let b = TestCert::ecdsa(&["b.test"]);

    let (status, body) = gw.post("/certificates", json!({"cert": a.cert_pem, "key": b.key_pem})).await;
    assert_eq!(status, 400);
    assert_eq!(body["fields"]["@entity"], json!(["certificate does not match key"]), "{body}");
    let (status, body) = gw
        .post(
            "/certificates",
            json!({"cert": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----", "key": a.key_pem}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["fields"]["cert"].as_str().unwrap_or_default().starts_with("invalid certificate: "), "{body}");
    let (status, body) = gw.post("/certificates", json!({"cert": a.cert_pem, "key": "garbage"})).await;
    assert_eq!(status, 400);
    assert!(body["fields"]["key"].as_str().unwrap_or_default().starts_with("invalid key: "), "{body}");
    let (status, body) =
        gw.post("/certificates", json!({"cert": a.cert_pem, "key": a.key_pem, "cert_alt": b.cert_pem})).await;
    assert_eq!(status, 400);
    assert_eq!(body["fields"]["@entity"], json!(["all or none of these fields must be set: 'cert_alt', 'key_alt'"]));
    let (status, body) = gw
        .post(
            "/certificates",
            json!({"cert": a.cert_pem, "key": a.key_pem, "cert_alt": b.cert_pem, "key_alt": b.key_pem}),
        )
        .await;
    assert_eq!(status, 400, "two ECDSA pairs: {body}");
    assert!(
        body["fields"]["@entity"][0]
            .as_str()
            .unwrap_or_default()
            .starts_with("certificate and alternative certificate need to have different type")
    );

    let (status, body) =
        gw.post("/certificates", json!({"cert": a.cert_pem, "key": a.key_pem, "snis": ["x.test", "x.test"]})).await;
    assert_eq!(status, 400);
    assert_eq!(body["fields"]["snis"], "x.test is duplicated");
    let first = certificate(&gw, &a, &["x.test"]).await;
    let (status, body) =
        gw.post("/certificates", json!({"cert": b.cert_pem, "key": b.key_pem, "snis": ["x.test"]})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["fields"]["snis"],
        json!(format!("x.test already associated with existing certificate '{}'", support::id(&first)))
    );
    let (status, _) = gw.post("/snis", json!({"name": "x.test", "certificate": {"id": support::id(&first)}})).await;
    assert_eq!(status, 409, "a duplicate SNI");
    for (name, message) in [
        ("a.*.test", "wildcard must be leftmost or rightmost character"),
        ("*.a.*", "only one wildcard must be specified"),
        ("10.0.0.1", "must not be an IP"),
        ("a.test:443", "must not have a port"),
    ] {
        let (status, body) = gw.post("/snis", json!({"name": name, "certificate": {"id": support::id(&first)}})).await;
        assert_eq!((status, body["fields"]["name"].clone()), (400, json!(message)), "{name}");
    }

    // A cert of 2 MB is refused before anything is parsed.
    let huge = "A".repeat(2 * 1024 * 1024);
    let (status, _) = gw.post("/certificates", json!({"cert": huge, "key": a.key_pem})).await;
    assert!(status == 413 || status == 400, "{status}");
    // No answer above carried key material.
    assert!(!gw.logs().contains("PRIVATE KEY"), "no key in the log");
}

#[tokio::test]
async fn ca_certificates_must_be_one_unexpired_ca_and_are_unique() {
    let gw = tls_gateway(vec![]).await;
    let leaf = TestCert::ecdsa(&["leaf.test"]);
    let (status, body) = gw.post("/ca_certificates", json!({"cert": leaf.cert_pem})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["fields"]["cert"],
        "certificate does not appear to be a CA because it is missing the \"CA\" basic constraint"
    );
    let ca = tls::TestCa::new("Test CA");
    let created = gw.create("/ca_certificates", json!({"cert": ca.cert_pem})).await;
    assert_eq!(created["cert_digest"].as_str().map(str::len), Some(64));
    let (status, _) = gw.post("/ca_certificates", json!({"cert": ca.cert_pem})).await;
    assert_eq!(status, 409);
    let two = format!("{}{}", ca.cert_pem, tls::TestCa::new("Other").cert_pem);
    let (status, body) = gw.post("/ca_certificates", json!({"cert": two})).await;
    assert_eq!((status, body["fields"]["cert"].clone()), (400, json!("please submit only one certificate at a time")));

    // A CA a service trusts cannot be deleted from under it.
    let ca_id = support::id(&created);
    gw.create("/services", json!({"name": "s", "url": "https://127.0.0.1:9", "ca_certificates": [ca_id]})).await;
    let r = gw.http.delete(gw.admin_url(&format!("/ca_certificates/{ca_id}"))).send().await.expect("delete");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("body");
    let service = support::id(&gw.get("/services/s").await.1);
    assert_eq!(
        body,
        json!({"code": 19, "name": "referenced by others",
               "message": format!("ca certificate {ca_id} is still referenced by services (id = {service})")})
    );
    assert_eq!(gw.delete("/services/s").await, 204);
    assert_eq!(gw.delete(&format!("/ca_certificates/{ca_id}")).await, 204);
}

#[tokio::test]
async fn an_expired_certificate_is_accepted_and_served_with_a_warning_as_in_kong() {
    let gw = tls_gateway(vec![]).await;
    let expired = TestCert::expired(&["old.test"]);
    certificate(&gw, &expired, &["old.test"]).await;
    assert_eq!(served(&gw, "old.test").await, expired.der().to_vec());
    gw.wait_for_log("certificate has expired", 1, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn upstream_tls_is_verified_against_the_service_cas_when_asked() {
    let ca = tls::TestCa::new("Upstream CA");
    let upstream = Upstream::start_tls_signed(&ca).await;
    let gw = tls_gateway(vec![]).await;
    let url = format!("https://localhost:{}", upstream.port());
    // Unverified by default, as in Kong.
    gw.create("/services", json!({"name": "loose", "url": url})).await;
    gw.create("/services/loose/routes", json!({"paths": ["/loose"]})).await;
    assert_eq!(gw.call("/loose", &[]).await.status(), 200);

    // Verified against the system roots, which do not know this CA: 502, logged.
    gw.create("/services", json!({"name": "strict", "url": url, "tls_verify": true})).await;
    gw.create("/services/strict/routes", json!({"paths": ["/strict"]})).await;
    let r = gw.call("/strict", &[]).await;
    assert_eq!(r.status(), 502);
    assert_eq!(
        support::gateway_json(r).await,
        json!({"message": "An invalid response was received from the upstream server"})
    );
    gw.wait_for_log("upstream TLS handshake failed", 1, Duration::from_secs(5)).await;

    // Trusting the CA: verified.
    let ca_entity = gw.create("/ca_certificates", json!({"cert": ca.cert_pem})).await;
    let (status, body) = gw.patch("/services/strict", json!({"ca_certificates": [support::id(&ca_entity)]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.call("/strict", &[]).await.status(), 200);
}

#[tokio::test]
async fn upstream_tls_names_the_upstream_host_or_the_preserved_host_and_presents_the_client_certificate() {
    let ca = tls::TestCa::new("Upstream CA");
    let clients = tls::TestCa::new("Client CA");
    let upstream = Upstream::start_mtls(&ca, &clients).await;
    let gw = tls_gateway(vec![]).await;
    let client = clients.leaf(&["gateway.test"]);
    let cert = gw.create("/certificates", json!({"cert": client.cert_pem, "key": client.key_pem})).await;
    let url = format!("https://localhost:{}", upstream.port());

    // Without a client certificate the upstream refuses the handshake: 502.
    gw.create("/services", json!({"name": "anonymous", "url": url})).await;
    gw.create("/services/anonymous/routes", json!({"paths": ["/anonymous"]})).await;
    assert_eq!(gw.call("/anonymous", &[]).await.status(), 502);

    gw.create("/services", json!({"name": "mtls", "url": url, "client_certificate": {"id": support::id(&cert)}})).await;
    gw.create("/services/mtls/routes", json!({"name": "plain", "paths": ["/mtls"]})).await;
    gw.create("/services/mtls/routes", json!({"name": "kept", "paths": ["/kept"], "preserve_host": true})).await;
    let r = gw.call("/mtls", &[("host", "shop.test")]).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("echo");
    assert_eq!((v["client_cert"].clone(), v["sni"].clone()), (json!(true), json!("localhost")), "{v}");
    let v: Value = gw.call("/kept", &[("host", "shop.test")]).await.json().await.expect("echo");
    assert_eq!(v["sni"], "shop.test", "preserve_host sends the client's Host as SNI: {v}");
}

#[tokio::test]
async fn a_client_with_no_shared_protocol_is_refused_and_the_listener_goes_on() {
    let upstream = Upstream::start().await;
    let gw = tls_gateway(vec![("TOLLGATE_SSL_CIPHER_SUITE".into(), "modern".into())]).await;
    gw.service_and_route(&upstream, "web", json!({"paths": ["/web"]})).await;
    let addr = gw.proxy_tls.expect("tls listener");
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let tls12_only = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&tokio_rustls::rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let refused = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls12_only)).connect(name, tcp).await;
    assert!(refused.is_err(), "TLS 1.2 is not offered with ssl_cipher_suite = modern");
    assert_eq!(tls::get(addr, "localhost", "localhost", "/web", &[]).await.status, 200);
}

/// A ClientHello naming a 65,000-byte server name, split into TLS records as a client would send it.
fn hello_with_sni(len: usize) -> Vec<u8> {
    let host = vec![b'a'; len];
    let mut sni = Vec::new();
    sni.extend_from_slice(&u16::try_from(3 + host.len()).expect("fits").to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&u16::try_from(host.len()).expect("fits").to_be_bytes());
    sni.extend_from_slice(&host);
    let mut extensions = vec![0, 0];
    extensions.extend_from_slice(&u16::try_from(sni.len()).expect("fits").to_be_bytes());
    extensions.extend_from_slice(&sni);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&u16::try_from(extensions.len()).expect("fits").to_be_bytes());
    body.extend_from_slice(&extensions);
    let mut message = vec![1];
    message.extend_from_slice(&u32::try_from(body.len()).expect("fits").to_be_bytes()[1..]);
    message.extend_from_slice(&body);
    let mut records = Vec::new();
    for chunk in message.chunks(16_384) {
        records.extend_from_slice(&[0x16, 3, 1]);
        records.extend_from_slice(&u16::try_from(chunk.len()).expect("fits").to_be_bytes());
        records.extend_from_slice(chunk);
    }
    records
}

#[tokio::test]
async fn a_64_kb_server_name_is_refused_and_the_listener_goes_on() {
    let upstream = Upstream::start().await;
    let gw = tls_gateway(vec![]).await;
    gw.service_and_route(&upstream, "web", json!({"paths": ["/web"]})).await;
    let addr = gw.proxy_tls.expect("tls listener");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(&hello_with_sni(65_000)).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection is closed, not left hanging");
    // Whatever came back is an alert, never a ServerHello (a handshake record of type 2).
    assert!(!(out.len() > 5 && out[0] == 0x16 && out[5] == 2), "{out:?}");
    assert_eq!(tls::get(addr, "localhost", "localhost", "/web", &[]).await.status, 200);
}

#[tokio::test]
async fn rsa_and_ecdsa_pairs_side_by_side_serve_each_client_what_it_can_verify() {
    let ecdsa = TestCert::ecdsa(&["proxy.test", "shop.test"]);
    let rsa = tls::rsa_fixture();
    let dir = tempfile::tempdir().expect("dir");
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write");
        path.display().to_string()
    };
    let certs = format!("{},{}", file("ec.crt", &ecdsa.cert_pem), file("rsa.crt", &rsa.cert_pem));
    let keys = format!("{},{}", file("ec.key", &ecdsa.key_pem), file("rsa.key", &rsa.key_pem));
    let gw = tls_gateway(vec![("TOLLGATE_SSL_CERT".into(), certs), ("TOLLGATE_SSL_CERT_KEY".into(), keys)]).await;
    let addr = gw.proxy_tls.expect("tls");
    let rsa_only = Connect { rsa_only: true, ..Connect::default() };
    let conn = tls::connect(addr, "proxy.test", &Connect::default()).await.expect("handshake");
    assert_eq!(tls::peer_leaf(&conn), ecdsa.der());
    let conn = tls::connect(addr, "proxy.test", &rsa_only).await.expect("handshake");
    assert_eq!(tls::peer_leaf(&conn), rsa.der());

    // The same with a certificate entity and its alternative pair.
    let other = TestCert::ecdsa(&["shop.test"]);
    let body = json!({"cert": other.cert_pem, "key": other.key_pem, "cert_alt": rsa.cert_pem, "key_alt": rsa.key_pem, "snis": ["shop.test"]});
    gw.create("/certificates", body).await;
    let conn = tls::connect(addr, "shop.test", &Connect::default()).await.expect("handshake");
    assert_eq!(tls::peer_leaf(&conn), other.der());
    let conn = tls::connect(addr, "shop.test", &rsa_only).await.expect("handshake");
    assert_eq!(tls::peer_leaf(&conn), rsa.der());
}

#[tokio::test]
async fn tls_verify_depth_bounds_the_upstream_chain() {
    let root = tls::TestCa::new("Root");
    let intermediate = root.intermediate("Intermediate");
    let upstream = Upstream::start_tls_chain(&intermediate).await;
    let gw = tls_gateway(vec![]).await;
    let ca = gw.create("/ca_certificates", json!({"cert": root.cert_pem})).await;
    let url = format!("https://localhost:{}", upstream.port());
    for (name, depth, status) in [("shallow", 0, 502), ("deep", 1, 200)] {
        let service = json!({"name": name, "url": url, "tls_verify": true, "tls_verify_depth": depth,
                             "ca_certificates": [support::id(&ca)]});
        gw.create("/services", service).await;
        gw.create(&format!("/services/{name}/routes"), json!({"paths": [format!("/{name}")]})).await;
        assert_eq!(gw.call(&format!("/{name}"), &[]).await.status(), status, "depth {depth}");
    }
}

#[tokio::test]
async fn a_certificate_written_on_one_node_is_served_by_every_node_sharing_postgres() {
    let pg = support::PgDatabase::fresh();
    let db = support::Db::Postgres(pg.name.clone());
    let a = Gateway::start_with(Options { db: db.clone(), tls: true, ..Options::default() }).await;
    let b = Gateway::start_with(Options { db, tls: true, ..Options::default() }).await;
    let shop = TestCert::ecdsa(&["shop.test"]);
    let created = certificate(&a, &shop, &["shop.test", "www.shop.test"]).await;
    assert_eq!(created["snis"], json!(["shop.test", "www.shop.test"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served(&b, "www.shop.test").await != shop.der().to_vec() {
        assert!(std::time::Instant::now() < deadline, "node b never served the certificate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The names moved to another certificate: both nodes follow.
    let other = TestCert::ecdsa(&["shop.test"]);
    let (status, _) = b.patch(&format!("/certificates/{}", support::id(&created)), json!({"snis": []})).await;
    assert_eq!(status, 200);
    certificate(&b, &other, &["shop.test"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served(&a, "shop.test").await != other.der().to_vec() {
        assert!(std::time::Instant::now() < deadline, "node a never followed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
