//! The cluster link is mutual TLS, as in Kong's hybrid mode: `hybrid gen-cert` makes the shared
//! pair, a data plane with it gets its configuration, a client with another certificate, none, or no
//! TLS at all is refused at the handshake and logged once with Kong's words, and `pki` mode accepts
//! certificates signed by `cluster_ca_cert`. The data plane token stays a second check.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::tls::{self, Connect, TestCa};
use support::{Gateway, Options, Upstream, run_cli};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn control_plane(cp: &Gateway) -> (String, String) {
    let created = cp.create("/v2/control-planes", json!({"name": "edge"})).await;
    let id = support::id(&created);
    let token = cp.create(&format!("/v2/control-planes/{id}/data-plane-tokens"), json!({"name": "dp"})).await;
    (id, token["token"].as_str().expect("token").to_string())
}

/// Whether the control plane's cluster listener turns this client away: the handshake fails, or
/// (TLS 1.3 settles client certificates after the client's side is done) nothing is answered.
async fn refused(addr: std::net::SocketAddr, name: &str, how: &Connect) -> bool {
    match tls::connect(addr, name, how).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"GET /v1/outlet HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.is_err() || buf.is_empty()
        }
    }
}

fn data_plane_env(cp: &Gateway, token: &str, more: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut extra = vec![
        ("TOLLGATE_ROLE".to_string(), "data_plane".to_string()),
        ("TOLLGATE_CLUSTER_CONTROL_PLANE".into(), cp.cluster.clone()),
        ("TOLLGATE_CLUSTER_TOKEN".into(), token.into()),
    ];
    extra.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    extra
}

#[test]
fn gen_cert_makes_kongs_pair_once_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("dir");
    let (code, out, err) = run_cli(&["hybrid", "gen-cert", "--days", "30"], &[], dir.path());
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "Successfully generated certificate/key pairs, they have been written to: 'cluster.crt' and 'cluster.key'."
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |f: &str| std::fs::metadata(dir.path().join(f)).expect("file").permissions().mode() & 0o777;
    assert_eq!((mode("cluster.crt"), mode("cluster.key")), (0o644, 0o600));
    let pem = std::fs::read_to_string(dir.path().join("cluster.crt")).expect("cert");
    let der = tls::TestCert { cert_pem: pem, key_pem: String::new() }.der();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    assert_eq!(cert.subject().to_string(), "CN=kong_clustering");
    assert_eq!(cert.issuer().to_string(), "CN=kong_clustering");
    assert_eq!(
        cert.public_key().algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string()),
        Some("1.3.132.0.34".to_string()),
        "secp384r1"
    );
    let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
    assert_eq!(days, 30);

    let (code, _, err) = run_cli(&["hybrid", "gen-cert"], &[], dir.path());
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "Error: cluster.crt already exists.\nWill not overwrite it.");
    let (code, _, err) = run_cli(&["hybrid", "gen_cert", "only.crt"], &[], dir.path());
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "Error: both cert and key path needs to be provided");
}

#[test]
fn a_hybrid_node_without_a_cluster_certificate_does_not_start() {
    let dir = tempfile::tempdir().expect("dir");
    let (code, _, err) = run_cli(
        &["check"],
        &[("TOLLGATE_ROLE", "control_plane"), ("TOLLGATE_CLUSTER_CERT", ""), ("TOLLGATE_CLUSTER_CERT_KEY", "")],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("cluster certificate and key must be provided to use Hybrid mode"), "{err}");
    let (code, _, err) =
        run_cli(&["check"], &[("TOLLGATE_ROLE", "control_plane"), ("TOLLGATE_CLUSTER_MTLS", "pki")], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("cluster_ca_cert must be specified when cluster_mtls = \"pki\""), "{err}");
}

#[tokio::test]
async fn only_a_client_holding_the_shared_certificate_gets_past_the_handshake() {
    let upstream = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;
    let (id, token) = control_plane(&cp).await;
    cp.create(
        &format!("/v2/control-planes/{id}/core-entities/services"),
        json!({"name": "s", "url": upstream.url("")}),
    )
    .await;
    cp.create(&format!("/v2/control-planes/{id}/core-entities/services/s/routes"), json!({"paths": ["/r"]})).await;

    // The harness's data planes hold the shared pair: configured over TLS.
    let dp = Gateway::start_with(Options { extra: data_plane_env(&cp, &token, &[]), ..Options::default() }).await;
    let r = dp.eventually("/r", &[], Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(r.status(), 200);

    let addr: std::net::SocketAddr = cp.cluster.parse().expect("cluster address");
    // Another certificate, three times: refused each time, logged once.
    let stranger = Connect { client_cert: Some(tls::TestCert::ecdsa(&["dp.test"])), ..Connect::default() };
    for _ in 0..3 {
        assert!(refused(addr, "kong_clustering", &stranger).await);
    }
    let incorrect = "data plane presented incorrect client certificate during handshake (digest does not match the control plane certificate)";
    cp.wait_for_log(incorrect, 1, Duration::from_secs(5)).await;
    // No certificate at all.
    assert!(refused(addr, "kong_clustering", &Connect::default()).await);
    cp.wait_for_log("data plane failed to present client certificate during handshake", 1, Duration::from_secs(5))
        .await;
    // Cleartext: refused at the handshake.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain.write_all(b"GET /v1/outlet HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n\r\n").await.expect("write");
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("101"), "no WebSocket over cleartext");
    cp.wait_for_log("data plane failed the TLS handshake", 1, Duration::from_secs(5)).await;
    assert_eq!(cp.log_count(incorrect), 1, "logged once per peer");

    // A data plane with a pair of its own never gets a configuration.
    let dir = tempfile::tempdir().expect("dir");
    let (code, _, err) = run_cli(&["hybrid", "gen-cert", "own.crt", "own.key"], &[], dir.path());
    assert_eq!(code, 0, "{err}");
    let own = |f: &str| dir.path().join(f).display().to_string();
    let (crt, key) = (own("own.crt"), own("own.key"));
    let lone = Gateway::start_with(Options {
        extra: data_plane_env(&cp, &token, &[("TOLLGATE_CLUSTER_CERT", &crt), ("TOLLGATE_CLUSTER_CERT_KEY", &key)]),
        ..Options::default()
    })
    .await;
    lone.wait_for_log("TLS handshake with the control plane failed", 1, Duration::from_secs(10)).await;
    assert_eq!(lone.call("/r", &[]).await.status(), 404, "nothing was received");
}

#[tokio::test]
async fn pki_mode_accepts_certificates_signed_by_the_cluster_ca() {
    let upstream = Upstream::start().await;
    let ca = TestCa::new("cluster CA");
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write");
        path.display().to_string()
    };
    let ca_path = write("ca.crt", &ca.cert_pem);
    let cp_pair = ca.leaf(&["cp.cluster.test"]);
    let dp_pair = ca.leaf(&["dp-1.cluster.test"]);
    let (cp_crt, cp_key) = (write("cp.crt", &cp_pair.cert_pem), write("cp.key", &cp_pair.key_pem));
    let (dp_crt, dp_key) = (write("dp.crt", &dp_pair.cert_pem), write("dp.key", &dp_pair.key_pem));

    let prefix = tempfile::tempdir().expect("prefix");
    let pki = [
        ("TOLLGATE_CLUSTER_MTLS", "pki"),
        ("TOLLGATE_CLUSTER_CA_CERT", ca_path.as_str()),
        ("TOLLGATE_CLUSTER_CERT", cp_crt.as_str()),
        ("TOLLGATE_CLUSTER_CERT_KEY", cp_key.as_str()),
    ];
    let mut env: Vec<(&str, &str)> =
        vec![("TOLLGATE_PREFIX", prefix.path().to_str().expect("utf8")), ("TOLLGATE_ROLE", "control_plane")];
    env.extend(pki);
    let (code, out, err) = run_cli(&["tokens", "create", "--name", "ci", "--role", "org_admin"], &env, prefix.path());
    assert_eq!(code, 0, "{err}");
    let mut extra = vec![("TOLLGATE_ROLE".to_string(), "control_plane".to_string())];
    extra.extend(pki.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let cp = Gateway::start_with(Options {
        prefix: Some(prefix.path().to_path_buf()),
        extra,
        token: Some(out.trim().to_string()),
        ..Options::default()
    })
    .await;
    let (id, token) = control_plane(&cp).await;
    cp.create(
        &format!("/v2/control-planes/{id}/core-entities/services"),
        json!({"name": "s", "url": upstream.url("")}),
    )
    .await;
    cp.create(&format!("/v2/control-planes/{id}/core-entities/services/s/routes"), json!({"paths": ["/r"]})).await;

    let dp_tls = [
        ("TOLLGATE_CLUSTER_MTLS", "pki"),
        ("TOLLGATE_CLUSTER_CA_CERT", ca_path.as_str()),
        ("TOLLGATE_CLUSTER_CERT", dp_crt.as_str()),
        ("TOLLGATE_CLUSTER_CERT_KEY", dp_key.as_str()),
        ("TOLLGATE_CLUSTER_SERVER_NAME", "cp.cluster.test"),
    ];
    let dp = Gateway::start_with(Options { extra: data_plane_env(&cp, &token, &dp_tls), ..Options::default() }).await;
    let r = dp.eventually("/r", &[], Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(r.status(), 200);

    // A certificate from another CA is refused by the control plane.
    let addr: std::net::SocketAddr = cp.cluster.parse().expect("cluster address");
    let other = TestCa::new("other CA").leaf(&["dp-2.cluster.test"]);
    let stranger = Connect { roots: vec![ca.der()], client_cert: Some(other), ..Connect::default() };
    assert!(refused(addr, "cp.cluster.test", &stranger).await);
    cp.wait_for_log("data plane failed the TLS handshake", 1, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_data_plane_serves_the_certificates_its_control_plane_holds() {
    let upstream = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;
    let (id, token) = control_plane(&cp).await;
    let core = |p: &str| format!("/v2/control-planes/{id}/core-entities{p}");
    cp.create(&core("/services"), json!({"name": "s", "url": upstream.url("")})).await;
    cp.create(&core("/services/s/routes"), json!({"paths": ["/r"]})).await;
    let dp =
        Gateway::start_with(Options { tls: true, extra: data_plane_env(&cp, &token, &[]), ..Options::default() }).await;
    let r = dp.eventually("/r", &[], Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(r.status(), 200);

    let shop = tls::TestCert::ecdsa(&["shop.test"]);
    cp.create(&core("/certificates"), json!({"cert": shop.cert_pem, "key": shop.key_pem, "snis": ["shop.test"]})).await;
    let addr = dp.proxy_tls.expect("tls listener");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let started = std::time::Instant::now();
    loop {
        let conn = tls::connect(addr, "shop.test", &Connect::default()).await.expect("handshake");
        if tls::peer_leaf(&conn) == shop.der() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the data plane never served the new certificate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("served by the data plane {:?} after the write", started.elapsed());
    let answer = tls::get(addr, "shop.test", "shop.test", "/r", &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
}
