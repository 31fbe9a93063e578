//! Realm consumers on data planes, black-box: key-auth's `identity_realms` resolves keys the data
//! plane does not hold by asking its control plane over the cluster link; answers are cached and
//! dropped at once when a realm, consumer or key changes; realms that do not allow the data plane's
//! control plane are refused.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Gateway, Options, Upstream};

async fn control_plane(cp: &Gateway, name: &str) -> (String, String) {
    let (_, created) = cp.post("/v2/control-planes", json!({"name": name})).await;
    let id = created["id"].as_str().unwrap().to_string();
    let (_, token) = cp.post(&format!("/v2/control-planes/{id}/data-plane-tokens"), json!({})).await;
    (id, token["token"].as_str().unwrap().to_string())
}

async fn data_plane(cp: &Gateway, token: &str) -> Gateway {
    let extra = vec![
        ("TOLLGATE_ROLE".to_string(), "data_plane".to_string()),
        ("TOLLGATE_CLUSTER_CONTROL_PLANE".into(), cp.cluster.clone()),
        ("TOLLGATE_CLUSTER_TOKEN".into(), token.into()),
    ];
    Gateway::start_with(Options { extra, ..Options::default() }).await
}

fn core(id: &str, path: &str) -> String {
    format!("/v2/control-planes/{id}/core-entities{path}")
}

/// A route `/<name>` on control plane `id` with key-auth trying the given identity realms.
async fn keyed_route(cp: &Gateway, id: &str, up: &Upstream, name: &str, identity_realms: Value) {
    cp.create(&core(id, "/services"), json!({"name": name, "url": up.url("/")})).await;
    cp.create(&core(id, &format!("/services/{name}/routes")), json!({"name": name, "paths": [format!("/{name}")]}))
        .await;
    let config = json!({"identity_realms": identity_realms});
    cp.create(&core(id, &format!("/routes/{name}/plugins")), json!({"name": "key-auth", "config": config})).await;
}

/// Waits until the data plane's status API says its link to the control plane is down (fails after 5 s).
async fn link_down(dp: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while dp.node_status().await["control_plane_connected"] != false {
        assert!(Instant::now() < deadline, "the data plane still thinks it is connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status_with(dp: &Gateway, path: &str, key: &str, want: u16) -> reqwest::Response {
    let r = dp.eventually(path, &[("apikey", key)], Duration::from_secs(5), |r| r.status().as_u16() == want).await;
    assert_eq!(r.status().as_u16(), want, "{path} with {key}");
    r
}

#[tokio::test]
async fn a_realm_key_works_on_the_control_planes_the_realm_allows_and_stops_when_deleted() {
    let up = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;
    let (appointments, a_token) = control_plane(&cp, "Appointments").await;
    let (dev, d_token) = control_plane(&cp, "Dev").await;
    let (_, prod) = cp
        .post(
            "/v1/realms",
            json!({"name": "prod", "allowed_control_planes": [appointments], "consumer_groups": ["gold"]}),
        )
        .await;
    let prod = prod["id"].as_str().unwrap().to_string();
    let (_, cruz) = cp
        .post(&format!("/v1/realms/{prod}/consumers"), json!({"username": "cruz", "consumer_groups": ["silver"]}))
        .await;
    let cruz_id = cruz["id"].as_str().unwrap().to_string();
    let keys = format!("/v1/realms/{prod}/consumers/{cruz_id}/keys");
    let (_, key) = cp.post(&keys, json!({"type": "legacy", "secret": "cruz-key"})).await;

    // Appointments: a gold tier for the realm's group, and key-auth trying the realm.
    cp.create(&core(&appointments, "/consumer_groups"), json!({"name": "gold"})).await;
    let tier = json!({"name": "rate-limiting-advanced", "config": {"limit": [1000], "window_size": [60], "window_type": "fixed"}});
    cp.create(&core(&appointments, "/consumer_groups/gold/plugins"), tier).await;
    keyed_route(&cp, &appointments, &up, "appointments", json!([{"scope": "cp"}, {"scope": "realm", "id": prod}]))
        .await;
    // Dev lists the prod realm too, but the realm does not allow Dev.
    keyed_route(&cp, &dev, &up, "dev", json!([{"scope": "realm", "id": prod, "region": "eu"}])).await;
    let a = data_plane(&cp, &a_token).await;
    let d = data_plane(&cp, &d_token).await;

    let r = status_with(&a, "/appointments", "cruz-key", 200).await;
    assert_eq!(r.headers()["x-ratelimit-limit-60"], "1000", "the control plane's gold tier applies");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-consumer-id"], cruz_id.as_str());
    assert_eq!(echo["headers"]["x-consumer-username"], "cruz");
    assert_eq!(echo["headers"]["x-consumer-groups"], "gold, silver", "the realm's groups and its own");
    assert_eq!(echo["headers"]["x-credential-identifier"], key["id"]);
    status_with(&d, "/dev", "cruz-key", 401).await;
    status_with(&a, "/appointments", "nobody's key", 401).await;

    // Realm consumers are not pushed into any control plane.
    for id in [&appointments, &dev] {
        let (_, consumers) = cp.get(&core(id, "/consumers")).await;
        assert_eq!(consumers["data"], json!([]), "{consumers}");
    }

    // Deleting the key stops it at once (the data plane was told to drop its cache).
    let key_id = key["id"].as_str().unwrap();
    assert_eq!(cp.delete(&format!("{keys}/{key_id}")).await, 204);
    let started = Instant::now();
    status_with(&a, "/appointments", "cruz-key", 401).await;
    assert!(started.elapsed() < Duration::from_secs(1), "revoked in {:?}", started.elapsed());

    // A new key clears the cached miss.
    status_with(&a, "/appointments", "late-key", 401).await;
    cp.post(&keys, json!({"type": "legacy", "secret": "late-key"})).await;
    status_with(&a, "/appointments", "late-key", 200).await;
}

#[tokio::test]
async fn cached_realm_consumers_keep_working_while_the_control_plane_is_away_and_unknown_keys_are_refused() {
    let up = Upstream::start().await;
    let (mut cp, _) = Gateway::start_control_plane().await;
    let (billing, token) = control_plane(&cp, "Billing").await;
    let (_, realm) = cp.post("/v1/realms", json!({"name": "prod", "allowed_control_planes": ["*"]})).await;
    let realm = realm["id"].as_str().unwrap().to_string();
    let (_, ira) = cp.post(&format!("/v1/realms/{realm}/consumers"), json!({"username": "ira"})).await;
    let (_, key) = cp
        .post(&format!("/v1/realms/{realm}/consumers/{}/keys", ira["id"].as_str().unwrap()), json!({"type": "new"}))
        .await;
    let secret = key["secret"].as_str().unwrap().to_string();
    keyed_route(&cp, &billing, &up, "billing", json!([{"scope": "realm", "id": realm}])).await;
    let dp = data_plane(&cp, &token).await;
    status_with(&dp, "/billing", &secret, 200).await;

    cp.kill();
    link_down(&dp).await;
    assert_eq!(dp.call("/billing", &[("apikey", &secret)]).await.status(), 200, "cached for the realm's ttl");
    let r = dp.call("/billing", &[("apikey", "never-seen")]).await;
    assert_eq!(r.status(), 401, "never open, never 5xx");

    // The data plane's /metrics tells the cache's answers from the lookups it asked for.
    let text = dp.http.get(format!("{}/metrics", dp.status)).send().await.unwrap().text().await.unwrap();
    let count = |result: &str| {
        let prefix = format!("tollgate_realm_lookups_total{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.parse::<u64>().ok())
    };
    assert!(count("hit").is_some_and(|n| n >= 1), "{text}");
    assert!(count("asked").is_some_and(|n| n >= 2), "the new key, then the unknown one: {text}");
    assert!(count("failed").is_some_and(|n| n >= 1), "the unknown key, asked with the link down: {text}");
    assert!(text.contains("\nkong_control_plane_connected 0\n"), "{text}");
}

#[tokio::test]
async fn identity_realms_are_validated() {
    let (cp, _) = Gateway::start_control_plane().await;
    let (status, err) = cp
        .post(
            "/plugins",
            json!({"name": "key-auth", "config": {"identity_realms": [{"scope": "realm"}, {"scope": "planet"}]}}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let text = err.to_string();
    assert!(text.contains("required field missing") && text.contains("expected one of"), "{err}");
    let (status, plugin) = cp.post("/plugins", json!({"name": "key-auth"})).await;
    assert_eq!(status, 201, "{plugin}");
    assert_eq!(plugin["config"]["identity_realms"], json!([{"scope": "cp", "id": null, "region": null}]));
}

#[tokio::test]
async fn a_lookup_cut_off_by_a_dropped_link_is_refused_and_the_data_plane_recovers() {
    let up = Upstream::start().await;
    let (mut cp, token) = Gateway::start_control_plane().await;
    let (billing, dp_token) = control_plane(&cp, "Billing").await;
    let (_, realm) = cp.post("/v1/realms", json!({"name": "prod", "allowed_control_planes": ["*"]})).await;
    let realm = realm["id"].as_str().unwrap().to_string();
    let (_, ira) = cp.post(&format!("/v1/realms/{realm}/consumers"), json!({"username": "ira"})).await;
    let keys = format!("/v1/realms/{realm}/consumers/{}/keys", ira["id"].as_str().unwrap());
    cp.post(&keys, json!({"type": "legacy", "secret": "seen-key"})).await;
    cp.post(&keys, json!({"type": "legacy", "secret": "unseen-key"})).await;
    keyed_route(&cp, &billing, &up, "billing", json!([{"scope": "realm", "id": realm}])).await;
    let dp = data_plane(&cp, &dp_token).await;
    status_with(&dp, "/billing", "seen-key", 200).await;

    // The control plane stalls with a lookup in flight, then its link drops.
    support::send_signal(cp.pid(), "STOP");
    let request = {
        let (http, url) = (dp.http.clone(), dp.proxy_url("/billing"));
        tokio::spawn(async move {
            let started = Instant::now();
            let status = http.get(url).header("apikey", "unseen-key").send().await.unwrap().status().as_u16();
            (status, started.elapsed())
        })
    };
    // Time for the lookup to reach the stopped control plane. Nothing can tell that it has; the
    // answer below is the same either way, only the path to it differs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cluster_port = cp.cluster.rsplit(':').next().unwrap().to_string();
    let prefix = cp.prefix.clone();
    cp.kill();
    let (status, took) = request.await.unwrap();
    assert_eq!(status, 401, "a lookup the link dropped refuses the key");
    assert!(took < Duration::from_secs(2), "answered when the link dropped, not at the lookup timeout: {took:?}");

    // The control plane comes back on the same address: the data plane reconnects and resolves again.
    let opts = Options {
        prefix: Some(prefix),
        extra: vec![
            ("TOLLGATE_ROLE".into(), "control_plane".into()),
            ("TOLLGATE_CLUSTER_LISTEN".into(), format!("127.0.0.1:{cluster_port}")),
        ],
        token: Some(token),
        ..Options::default()
    };
    let _cp = Gateway::start_with(opts).await;
    let r =
        dp.eventually("/billing", &[("apikey", "unseen-key")], Duration::from_secs(20), |r| r.status() == 200).await;
    assert_eq!(r.status(), 200, "recovered after the control plane came back");
}

#[tokio::test]
async fn a_burst_of_new_keys_is_answered_key_by_key_in_the_order_of_identity_realms() {
    let up = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;
    let (billing, token) = control_plane(&cp, "Billing").await;
    let realm = |name: &str, allowed: Value| {
        let cp = &cp;
        let name = name.to_string();
        async move {
            let (status, r) = cp.post("/v1/realms", json!({"name": name, "allowed_control_planes": allowed})).await;
            assert_eq!(status, 201, "{r}");
            r["id"].as_str().unwrap().to_string()
        }
    };
    let first = realm("first", json!([billing])).await;
    let second = realm("second", json!(["*"])).await;
    let elsewhere = realm("elsewhere", json!([])).await;
    // Each realm: consumers `<realm>-<i>` holding key `<realm>-key-<i>`; `shared-key` is held in
    // every realm by `<realm>-shared`.
    for realm_id in [&first, &second, &elsewhere] {
        let (_, r) = cp.get(&format!("/v1/realms/{realm_id}")).await;
        let name = r["name"].as_str().unwrap().to_string();
        for who in (0..10).map(|i| i.to_string()).chain(["shared".to_string()]) {
            let (_, c) = cp
                .post(&format!("/v1/realms/{realm_id}/consumers"), json!({"username": format!("{name}-{who}")}))
                .await;
            let secret = if who == "shared" { "shared-key".to_string() } else { format!("{name}-key-{who}") };
            let path = format!("/v1/realms/{realm_id}/consumers/{}/keys", c["id"].as_str().unwrap());
            let (status, _) = cp.post(&path, json!({"type": "legacy", "secret": secret})).await;
            assert_eq!(status, 201);
        }
    }
    let order =
        json!([{"scope": "realm", "id": second}, {"scope": "realm", "id": elsewhere}, {"scope": "realm", "id": first}]);
    keyed_route(&cp, &billing, &up, "billing", order).await;
    let dp = data_plane(&cp, &token).await;
    status_with(&dp, "/billing", "second-key-0", 200).await;

    // All at once, none seen before: the data plane's lookups reach the control plane together.
    let mut expected: Vec<(String, Option<String>)> = Vec::new();
    for i in 1..10 {
        expected.push((format!("first-key-{i}"), Some(format!("first-{i}"))));
        expected.push((format!("second-key-{i}"), Some(format!("second-{i}"))));
        expected.push((format!("elsewhere-key-{i}"), None));
        expected.push((format!("unknown-key-{i}"), None));
    }
    expected.push(("shared-key".into(), Some("second-shared".into())));
    let calls = expected.iter().map(|(key, _)| async { dp.call("/billing", &[("apikey", key.as_str())]).await });
    let answers = futures_util::future::join_all(calls).await;
    for ((key, who), r) in expected.iter().zip(answers) {
        match who {
            Some(who) => {
                assert_eq!(r.status(), 200, "{key}");
                let echo: Value = r.json().await.unwrap();
                assert_eq!(echo["headers"]["x-consumer-username"], who.as_str(), "{key}");
            }
            None => assert_eq!(r.status(), 401, "{key}"),
        }
    }
}
