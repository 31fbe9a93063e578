//! Seed 004, "centralized consumers", end to end: one control plane node holding three control
//! planes (Appointments, Billing, Dev), a data plane for each, a prod realm (Cruz and Ira) allowed
//! for Appointments and Billing, a dev realm (Sasha) allowed for Dev, and Dev's own consumer Izumi.
//! Tiers: gold 1000 requests / 60 s on Appointments, silver 10 / 60 s on Billing.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Gateway, Options, Upstream, client, fit_in_window};

struct Plane {
    id: String,
    dp: Gateway,
}

fn core(id: &str, path: &str) -> String {
    format!("/v2/control-planes/{id}/core-entities{path}")
}

/// A control plane with one route `/<path>` behind key-auth trying `identity_realms`, optionally a
/// consumer group with a rate-limiting-advanced tier, and a data plane.
async fn plane(cp: &Gateway, up: &Upstream, name: &str, path: &str, realms: Value, tier: Option<(&str, u64)>) -> Plane {
    let (status, created) = cp.post("/v2/control-planes", json!({"name": name})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    cp.create(&core(&id, "/services"), json!({"name": path, "url": up.url("/")})).await;
    cp.create(&core(&id, &format!("/services/{path}/routes")), json!({"name": path, "paths": [format!("/{path}")]}))
        .await;
    cp.create(
        &core(&id, &format!("/routes/{path}/plugins")),
        json!({"name": "key-auth", "config": {"identity_realms": realms}}),
    )
    .await;
    if let Some((group, limit)) = tier {
        cp.create(&core(&id, "/consumer_groups"), json!({"name": group})).await;
        let config = json!({"limit": [limit], "window_size": [60], "window_type": "fixed"});
        cp.create(
            &core(&id, &format!("/consumer_groups/{group}/plugins")),
            json!({"name": "rate-limiting-advanced", "config": config}),
        )
        .await;
    }
    let (_, token) = cp.post(&format!("/v2/control-planes/{id}/data-plane-tokens"), json!({})).await;
    let extra = vec![
        ("TOLLGATE_ROLE".to_string(), "data_plane".to_string()),
        ("TOLLGATE_CLUSTER_CONTROL_PLANE".into(), cp.cluster.clone()),
        ("TOLLGATE_CLUSTER_TOKEN".into(), token["token"].as_str().unwrap().to_string()),
    ];
    let dp = Gateway::start_with(Options { extra, ..Options::default() }).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while dp.call(&format!("/{path}"), &[]).await.status() != 401 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Plane { id, dp }
}

/// A realm consumer with a generated key; returns the key's id and secret.
async fn realm_consumer(cp: &Gateway, realm: &str, username: &str, groups: Value) -> (String, String, String) {
    let (status, c) = cp
        .post(&format!("/v1/realms/{realm}/consumers"), json!({"username": username, "consumer_groups": groups}))
        .await;
    assert_eq!(status, 201, "{c}");
    let cid = c["id"].as_str().unwrap().to_string();
    let (status, key) = cp.post(&format!("/v1/realms/{realm}/consumers/{cid}/keys"), json!({"type": "new"})).await;
    assert_eq!(status, 201, "{key}");
    (cid, key["id"].as_str().unwrap().to_string(), key["secret"].as_str().unwrap().to_string())
}

async fn status(dp: &Gateway, path: &str, key: &str) -> u16 {
    dp.call(path, &[("apikey", key)]).await.status().as_u16()
}

#[tokio::test]
async fn centralized_consumers_across_three_control_planes() {
    let up = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;

    // Realms first need the control planes they allow; the routes name the realms.
    let (_, prod) = cp.post("/v1/realms", json!({"name": "prod", "consumer_groups": ["gold"]})).await;
    let prod = prod["id"].as_str().unwrap().to_string();
    let (_, dev_realm) = cp.post("/v1/realms", json!({"name": "dev"})).await;
    let dev_realm = dev_realm["id"].as_str().unwrap().to_string();
    let prod_then_cp = json!([{"scope": "realm", "id": prod}, {"scope": "cp"}]);
    let appointments =
        plane(&cp, &up, "Appointments", "appointments", prod_then_cp.clone(), Some(("gold", 1000))).await;
    let billing = plane(&cp, &up, "Billing", "billing", prod_then_cp, Some(("silver", 10))).await;
    // Dev also lists the prod realm (a misconfiguration the realm's allow-list must catch).
    let dev_realms = json!([{"scope": "realm", "id": dev_realm}, {"scope": "realm", "id": prod}, {"scope": "cp"}]);
    let dev = plane(&cp, &up, "Dev", "dev", dev_realms, None).await;
    let (status_code, patched) =
        cp.patch(&format!("/v1/realms/{prod}"), json!({"allowed_control_planes": [appointments.id, billing.id]})).await;
    assert_eq!(status_code, 200, "{patched}");
    cp.patch(&format!("/v1/realms/{dev_realm}"), json!({"allowed_control_planes": [dev.id]})).await;

    let (_, cruz_key_id, cruz) = realm_consumer(&cp, &prod, "Cruz", json!(["silver"])).await;
    let (_, _, ira) = realm_consumer(&cp, &prod, "Ira", json!([])).await;
    let (_, _, sasha) = realm_consumer(&cp, &dev_realm, "Sasha", json!([])).await;
    cp.create(&core(&dev.id, "/consumers"), json!({"username": "Izumi"})).await;
    cp.create(&core(&dev.id, "/consumers/Izumi/key-auth"), json!({"key": "izumi-key"})).await;
    let (a, b, d) = (&appointments.dp, &billing.dp, &dev.dp);
    let r = d.eventually("/dev", &[("apikey", "izumi-key")], Duration::from_secs(5), |r| r.status() == 200).await;
    assert_eq!(r.status(), 200, "Izumi, Dev's own consumer, on /dev");

    fit_in_window(60, 20).await;
    // Cruz: gold on Appointments (with its limit headers), silver on Billing until the 11th request.
    let r = a.call("/appointments", &[("apikey", &cruz)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-60"], "1000");
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-consumer-username"], "Cruz");
    assert_eq!(echo["headers"]["x-consumer-groups"], "gold, silver");
    for i in 1..=10 {
        let r = b.call("/billing", &[("apikey", &cruz)]).await;
        assert_eq!(r.status(), 200, "request {i} on /billing");
        assert_eq!(r.headers()["x-ratelimit-limit-60"], "10");
    }
    let r = b.call("/billing", &[("apikey", &cruz)]).await;
    assert_eq!(r.status(), 429, "the 11th request in the window");
    assert_eq!(support::gateway_json(r).await, json!({"message": "API rate limit exceeded"}));

    // Ira: gold on Appointments; on Billing authenticated, with no silver tier.
    let r = a.call("/appointments", &[("apikey", &ira)]).await;
    assert_eq!((r.status().as_u16(), r.headers()["x-ratelimit-limit-60"].to_str().unwrap()), (200, "1000"));
    let r = b.call("/billing", &[("apikey", &ira)]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-ratelimit-limit-60").is_none());

    // Sasha and Izumi only on /dev; prod keys refused on Dev though Dev's key-auth lists prod.
    assert_eq!(status(d, "/dev", &sasha).await, 200);
    for (dp, path) in [(a, "/appointments"), (b, "/billing")] {
        assert_eq!(status(dp, path, &sasha).await, 401, "Sasha on {path}");
        assert_eq!(status(dp, path, "izumi-key").await, 401, "Izumi on {path}");
    }
    assert_eq!(status(d, "/dev", &cruz).await, 401, "the prod realm does not allow Dev");
    assert_eq!(status(d, "/dev", &ira).await, 401);
    let r = a.call("/appointments", &[]).await;
    assert_eq!(support::status_json(r).await, (401, json!({"message": "No API key found in request"})));
    let r = a.call("/appointments", &[("apikey", "made-up")]).await;
    assert_eq!(support::status_json(r).await, (401, json!({"message": "Unauthorized"})));

    // Realm consumers are in no control plane's configuration.
    for p in [&appointments, &billing, &dev] {
        let (_, consumers) = cp.get(&core(&p.id, "/consumers")).await;
        let names: Vec<&str> =
            consumers["data"].as_array().unwrap().iter().filter_map(|c| c["username"].as_str()).collect();
        assert!(names.iter().all(|n| *n == "Izumi"), "{names:?}");
    }

    // Only org admins write realms.
    let (_, viewer) = cp.post("/v1/tokens", json!({"name": "auditor", "role": "viewer"})).await;
    let r = client(viewer["token"].as_str())
        .post(cp.admin_url("/v1/realms"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A deleted key stops within a second.
    let cruz_id = {
        let (_, list) = cp.get(&format!("/v1/realms/{prod}/consumers?filter[username]=Cruz")).await;
        list["data"][0]["id"].as_str().unwrap().to_string()
    };
    assert_eq!(cp.delete(&format!("/v1/realms/{prod}/consumers/{cruz_id}/keys/{cruz_key_id}")).await, 204);
    let deleted = Instant::now();
    let r = a.eventually("/appointments", &[("apikey", &cruz)], Duration::from_secs(1), |r| r.status() == 401).await;
    assert_eq!(r.status(), 401, "revoked within {:?}", deleted.elapsed());
}
