//! Hybrid mode, black-box: one control plane node holding several control planes, data planes
//! joining them with data plane tokens over the cluster link, receiving their own control plane's
//! configuration (and only that), caching it, and serving it while the control plane is away.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Db, Gateway, Options, PgDatabase, Upstream};

/// A control plane (the `/v2/control-planes` entity) and a token for its data planes.
async fn control_plane(cp: &Gateway, name: &str) -> (String, String) {
    let (status, created) = cp.post("/v2/control-planes", json!({"name": name})).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (status, token) = cp.post(&format!("/v2/control-planes/{id}/data-plane-tokens"), json!({"name": "dp"})).await;
    assert_eq!(status, 201, "{token}");
    (id, token["token"].as_str().unwrap().to_string())
}

async fn data_plane(cp: &Gateway, token: &str, prefix: Option<PathBuf>) -> Gateway {
    data_plane_with(cp, token, prefix, &[]).await
}

async fn data_plane_with(cp: &Gateway, token: &str, prefix: Option<PathBuf>, more: &[(&str, &str)]) -> Gateway {
    let mut extra = vec![
        ("TOLLGATE_ROLE".to_string(), "data_plane".to_string()),
        ("TOLLGATE_CLUSTER_CONTROL_PLANE".into(), cp.cluster.clone()),
        ("TOLLGATE_CLUSTER_TOKEN".into(), token.into()),
    ];
    extra.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Gateway::start_with(Options { prefix, extra, ..Options::default() }).await
}

/// Polls until `path` on the data plane answers `status` (configurations arrive asynchronously).
async fn serves(dp: &Gateway, path: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    let r = dp.eventually(path, &[], within, |r| r.status().as_u16() == status).await;
    assert_eq!(r.status().as_u16(), status, "{path} on {} within {within:?}", dp.proxy);
    started.elapsed()
}

async fn ready(dp: &Gateway) -> u16 {
    dp.http.get(format!("{}/status/ready", dp.status)).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

fn core(id: &str, path: &str) -> String {
    format!("/v2/control-planes/{id}/core-entities{path}")
}

/// Control plane `id`'s `/nodes` and `/expected-config-hash`, once every node reports the expected
/// hash (a data plane reports it just after it starts serving a configuration), or after 5 s.
async fn nodes_in_sync(cp: &Gateway, id: &str) -> (Value, Value) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, nodes) = cp.get(&format!("/v2/control-planes/{id}/nodes")).await;
        assert_eq!(status, 200, "{nodes}");
        let (_, expected) = cp.get(&format!("/v2/control-planes/{id}/expected-config-hash")).await;
        let items = nodes["items"].as_array().cloned().unwrap_or_default();
        if items.iter().all(|n| n["config_hash"] == expected["expected_hash"]) || Instant::now() > deadline {
            return (nodes, expected);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until control plane `id` lists its one data plane as disconnected (fails after 5 s).
async fn disconnected(cp: &Gateway, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, nodes) = cp.get(&format!("/v2/control-planes/{id}/nodes")).await;
        if nodes["items"][0]["connected"] == false {
            return;
        }
        assert!(Instant::now() < deadline, "still connected: {nodes}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn each_data_plane_serves_its_own_control_planes_configuration_and_follows_its_changes() {
    let up = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;
    let (appointments, a_token) = control_plane(&cp, "Appointments").await;
    let (billing, b_token) = control_plane(&cp, "Billing").await;
    let a1 = data_plane(&cp, &a_token, None).await;
    let a2 = data_plane(&cp, &a_token, None).await;
    let b1 = data_plane(&cp, &b_token, None).await;
    let b2 = data_plane(&cp, &b_token, None).await;
    for dp in [&a1, &a2, &b1, &b2] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ready(dp).await != 200 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ready(dp).await, 200, "a data plane is ready once it has a configuration");
    }

    cp.create(&core(&appointments, "/services"), json!({"name": "appointments", "url": up.url("/")})).await;
    cp.create(&core(&appointments, "/services/appointments/routes"), json!({"paths": ["/appointments"]})).await;
    for dp in [&a1, &a2] {
        let took = serves(dp, "/appointments", 200, Duration::from_secs(1)).await;
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    for dp in [&b1, &b2] {
        assert_eq!(dp.call("/appointments", &[]).await.status(), 404, "another control plane's route");
    }

    cp.create(&core(&billing, "/services"), json!({"name": "billing", "url": up.url("/")})).await;
    cp.create(&core(&billing, "/services/billing/routes"), json!({"paths": ["/billing"]})).await;
    for dp in [&b1, &b2] {
        serves(dp, "/billing", 200, Duration::from_secs(1)).await;
    }
    assert_eq!(a1.call("/billing", &[]).await.status(), 404);
    // The root Admin API is the default control plane, which these data planes do not follow.
    cp.create("/services", json!({"name": "elsewhere", "url": up.url("/")})).await;
    cp.create("/services/elsewhere/routes", json!({"paths": ["/elsewhere"]})).await;
    // A later change to their own control plane reaches them over the same link, after anything
    // sent for the default one would have.
    cp.create(&core(&appointments, "/services/appointments/routes"), json!({"paths": ["/later"]})).await;
    for dp in [&a1, &a2] {
        serves(dp, "/later", 200, Duration::from_secs(5)).await;
    }
    assert_eq!(a1.call("/elsewhere", &[]).await.status(), 404);

    // Each control plane lists its own data planes, in sync.
    let (nodes, expected) = nodes_in_sync(&cp, &appointments).await;
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{nodes}");
    for n in items {
        assert_eq!(n["config_hash"], expected["expected_hash"], "{nodes}");
        assert_eq!(n["sync_status"], "normal");
        assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
        assert!(n["hostname"].is_string() && n["last_ping"].is_i64(), "{n}");
    }
    let status: Value = a1.http.get(format!("{}/status", a1.status)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["configuration_hash"], expected["expected_hash"]);
    assert_eq!(status["role"], "data_plane");
}

#[tokio::test]
async fn a_data_plane_restarted_while_the_control_plane_is_down_serves_its_cached_configuration() {
    let up = Upstream::start().await;
    let (mut cp, _) = Gateway::start_control_plane().await;
    let (id, token) = control_plane(&cp, "Dev").await;
    cp.create(&core(&id, "/services"), json!({"name": "dev", "url": up.url("/")})).await;
    cp.create(&core(&id, "/services/dev/routes"), json!({"paths": ["/dev"]})).await;
    let dir = tempfile::tempdir().unwrap();
    let mut dp = data_plane(&cp, &token, Some(dir.path().to_path_buf())).await;
    serves(&dp, "/dev", 200, Duration::from_secs(5)).await;
    // The cache is written once the configuration is served, not before.
    let cache = dir.path().join("config.cache");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cache.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cache.exists());
    let whole = std::fs::metadata(&cache).unwrap().len();
    // A change after it arrives as a delta, appended to the cache (by a thread of its own: the
    // cache grows once it is written).
    cp.create(&core(&id, "/services/dev/routes"), json!({"paths": ["/dev-later"]})).await;
    serves(&dp, "/dev-later", 200, Duration::from_secs(5)).await;
    dp.wait_for_log("configuration delta applied", 1, Duration::from_secs(5)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&cache).unwrap().len() == whole && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(std::fs::metadata(&cache).unwrap().len() > whole, "the delta was appended to the cache");

    cp.kill();
    dp.kill();
    let dp = data_plane(&cp, &token, Some(dir.path().to_path_buf())).await;
    assert_eq!(dp.call("/dev", &[]).await.status(), 200, "served from the cache, the control plane being down");
    assert_eq!(dp.call("/dev-later", &[]).await.status(), 200, "with the deltas that followed it");
    assert_eq!(ready(&dp).await, 200);
    assert!(dp.logs().contains("cannot reach the control plane"), "{}", dp.logs());
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_said_once_while_the_data_plane_keeps_retrying() {
    let (cp, _) = Gateway::start_control_plane().await;
    control_plane(&cp, "Dev").await;
    let dp = data_plane(&cp, "tgdp_wrong", None).await;
    // The control plane has refused it three times (it retries with a backoff).
    cp.wait_for_log("handshake refused", 3, Duration::from_secs(15)).await;
    assert_eq!(ready(&dp).await, 503, "no configuration without a valid token");
    assert_eq!(dp.call("/anything", &[]).await.status(), 404);
    let said = dp.logs().matches("the control plane refused the cluster token").count();
    assert_eq!(said, 1, "one log line, however many retries:\n{}", dp.logs());
}

#[tokio::test]
async fn revoking_a_data_plane_token_drops_its_link() {
    let up = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;
    let (id, _) = control_plane(&cp, "Billing").await;
    let (_, created) = cp.post(&format!("/v2/control-planes/{id}/data-plane-tokens"), json!({})).await;
    let (token_id, token) =
        (created["id"].as_str().unwrap().to_string(), created["token"].as_str().unwrap().to_string());
    let (_, list) = cp.get(&format!("/v2/control-planes/{id}/data-plane-tokens")).await;
    assert!(!list.to_string().contains(&token), "secrets are shown once");
    let dp = data_plane(&cp, &token, None).await;
    cp.create(&core(&id, "/services"), json!({"name": "b", "url": up.url("/")})).await;
    cp.create(&core(&id, "/services/b/routes"), json!({"paths": ["/b"]})).await;
    serves(&dp, "/b", 200, Duration::from_secs(5)).await;

    assert_eq!(cp.delete(&format!("/v2/control-planes/{id}/data-plane-tokens/{token_id}")).await, 204);
    disconnected(&cp, &id).await;
    let refused = cp.log_count("handshake refused");
    cp.create(&core(&id, "/services/b/routes"), json!({"paths": ["/after"]})).await;
    // The data plane has tried to reconnect since, and was refused.
    cp.wait_for_log("handshake refused", refused + 1, Duration::from_secs(15)).await;
    assert_eq!(dp.call("/after", &[]).await.status(), 404, "no more configurations");
    assert_eq!(dp.call("/b", &[]).await.status(), 200, "but it keeps serving the last one");
}

#[tokio::test]
async fn a_configuration_the_data_plane_cannot_compile_is_refused_and_reported() {
    let up = Upstream::start().await;
    let db = PgDatabase::fresh();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().to_path_buf();
    let mut env =
        vec![("TOLLGATE_PREFIX", prefix.to_str().unwrap().to_string()), ("TOLLGATE_ROLE", "control_plane".into())];
    env.extend(db.env());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, token, err) =
        support::run_cli(&["tokens", "create", "--name", "ci", "--role", "org_admin"], &env, &prefix);
    assert_eq!(code, 0, "{err}");
    let cp = Gateway::start_with(Options {
        db: Db::Postgres(db.name.clone()),
        prefix: Some(prefix),
        extra: vec![("TOLLGATE_ROLE".into(), "control_plane".into())],
        token: Some(token.trim().to_string()),
        ..Options::default()
    })
    .await;
    let (id, dp_token) = control_plane(&cp, "Dev").await;
    cp.create(&core(&id, "/services"), json!({"name": "dev", "url": up.url("/")})).await;
    let route = cp.create(&core(&id, "/services/dev/routes"), json!({"paths": ["/dev"]})).await;
    let dp = data_plane(&cp, &dp_token, None).await;
    serves(&dp, "/dev", 200, Duration::from_secs(5)).await;

    // A row no data plane can read, written (and logged, so it travels in the next delta) as a
    // newer or broken control plane might.
    let rid = route["id"].as_str().unwrap();
    support::psql(
        &db.name,
        &format!(
            "UPDATE routes SET body = '{{\"id\": \"{rid}\"}}' WHERE id = '{rid}'; \
             UPDATE config_version SET version = version + 1 WHERE id = 1; \
             INSERT INTO changes (version, seq, cp, kind, entity_id, op) \
             SELECT (SELECT version FROM config_version WHERE id = 1), 0, cp, 'routes', id, 'upsert' \
             FROM routes WHERE id = '{rid}'"
        ),
    );
    cp.create(&core(&id, "/consumers"), json!({"username": "trigger"})).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let node = loop {
        let (_, nodes) = cp.get(&format!("/v2/control-planes/{id}/nodes")).await;
        if nodes["items"][0]["sync_status"] == "config_rejected" || Instant::now() > deadline {
            break nodes["items"][0].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(node["sync_status"], "config_rejected", "{node}");
    assert!(node["rejected_reason"].as_str().unwrap().contains("routes"), "{node}");
    assert_eq!(dp.call("/dev", &[]).await.status(), 200, "the last good configuration stays");
}

#[tokio::test]
async fn a_data_plane_needs_a_cluster_token_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TOLLGATE_PREFIX", dir.path().to_str().unwrap()), ("TOLLGATE_ROLE", "data_plane")];
    let (code, _, err) = support::run_cli(&["check"], &env, dir.path());
    assert_ne!(code, 0);
    assert!(err.contains("cluster_token"), "{err}");
}

#[tokio::test]
async fn a_stalled_data_plane_holds_up_neither_writes_nor_the_other_data_planes_and_catches_up_later() {
    let up = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;
    let (id, token) = control_plane(&cp, "Appointments").await;
    cp.create(&core(&id, "/services"), json!({"name": "s", "url": up.url("/")})).await;
    let stalled = data_plane(&cp, &token, None).await;
    let healthy = data_plane(&cp, &token, None).await;
    cp.create(&core(&id, "/services/s/routes"), json!({"paths": ["/first"]})).await;
    serves(&stalled, "/first", 200, Duration::from_secs(5)).await;

    support::send_signal(stalled.pid(), "STOP");
    for k in 0..20 {
        cp.create(&core(&id, "/services/s/routes"), json!({"paths": [format!("/r{k}")]})).await;
        serves(&healthy, &format!("/r{k}"), 200, Duration::from_secs(1)).await;
    }
    assert!(!cp.logs().contains("write acknowledged before the proxy caught up"), "{}", cp.logs());

    support::send_signal(stalled.pid(), "CONT");
    serves(&stalled, "/r19", 200, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_message_inflating_past_the_data_planes_payload_limit_is_refused_without_taking_it_down() {
    let up = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;
    let (id, token) = control_plane(&cp, "Dev").await;
    cp.create(&core(&id, "/services"), json!({"name": "s", "url": up.url("/")})).await;
    cp.create(&core(&id, "/services/s/routes"), json!({"paths": ["/small"]})).await;
    let dp = data_plane_with(&cp, &token, None, &[("TOLLGATE_CLUSTER_MAX_PAYLOAD", "4096")]).await;
    serves(&dp, "/small", 200, Duration::from_secs(5)).await;

    // One write of over 4 KiB (a consumer with 150 long tags): its delta is a few hundred bytes
    // compressed and would inflate past the data plane's 4 KiB. What follows is sent whole (after a
    // refusal), which holds it too.
    let tags: Vec<String> = (0..150).map(|t| format!("tag-{t}-of-a-rather-long-list")).collect();
    cp.create(&core(&id, "/consumers"), json!({"username": "tagged", "tags": tags})).await;
    cp.create(&core(&id, "/services/s/routes"), json!({"paths": ["/big"]})).await;
    dp.wait_for_log("inflates past cluster_max_payload (4096 bytes)", 2, Duration::from_secs(15)).await;
    assert_eq!(dp.call("/big", &[]).await.status(), 404, "the oversized configuration was not taken");
    assert_eq!(dp.call("/small", &[]).await.status(), 200, "the data plane still serves the last one");
    let status: Value = dp.http.get(format!("{}/status", dp.status)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["sync_status"], "config_rejected", "{status}");
}

#[tokio::test]
async fn a_configuration_larger_than_cluster_max_payload_reaches_data_planes_in_compressed_parts() {
    let up = Upstream::start().await;
    let limit = [("TOLLGATE_CLUSTER_MAX_PAYLOAD", "65536")];
    let extra = limit.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let (cp, _) = Gateway::start_control_plane_with(Options { extra, ..Options::default() }).await;
    let (id, token) = control_plane(&cp, "Big").await;
    cp.create(&core(&id, "/services"), json!({"name": "s", "url": up.url("/")})).await;
    cp.create(&core(&id, "/services/s/routes"), json!({"name": "keyed", "paths": ["/keyed"]})).await;
    cp.create(&core(&id, "/routes/keyed/plugins"), json!({"name": "key-auth"})).await;
    // About 300 KB of configuration: four times the limit, in parts of at most 32 KiB.
    let tags: Vec<String> = (0..12).map(|t| format!("team-{t}-of-a-large-organisation")).collect();
    let writes = (0..400).map(|k| {
        let (cp, id, tags) = (&cp, &id, &tags);
        async move {
            cp.create(&core(id, "/consumers"), json!({"username": format!("user-{k}"), "tags": tags})).await;
            cp.create(&core(id, &format!("/consumers/user-{k}/key-auth")), json!({"key": format!("key-{k}")})).await;
        }
    });
    futures_util::StreamExt::collect::<Vec<()>>(futures_util::StreamExt::buffer_unordered(
        futures_util::stream::iter(writes),
        16,
    ))
    .await;
    let dp = data_plane_with(&cp, &token, None, &limit).await;
    let r = dp.eventually("/keyed", &[("apikey", "key-399")], Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(r.status(), 200, "the last consumer's key works on the data plane");
    assert_eq!(dp.call("/keyed", &[("apikey", "key-0")]).await.status(), 200);
    let (nodes, expected) = nodes_in_sync(&cp, &id).await;
    assert_eq!(nodes["items"][0]["config_hash"], expected["expected_hash"], "{nodes}");
    assert!(dp.logs().contains(r#"encoding="zstd""#), "the link negotiated zstd:\n{}", dp.logs());
    assert!(!dp.logs().contains("refused"), "{}", dp.logs());
}

#[tokio::test]
async fn a_data_plane_balances_over_the_upstreams_of_its_control_plane() {
    let (first, second) = (Upstream::start().await, Upstream::start().await);
    let (cp, _) = Gateway::start_control_plane().await;
    let (id, token) = control_plane(&cp, "Balanced").await;
    // One worker: its round-robin alternates exactly.
    let dp = data_plane_with(&cp, &token, None, &[("TOLLGATE_WORKER_THREADS", "1")]).await;
    cp.create(&core(&id, "/upstreams"), json!({"name": "backend.test"})).await;
    for up in [&first, &second] {
        cp.create(&core(&id, "/upstreams/backend.test/targets"), json!({"target": format!("127.0.0.1:{}", up.port())}))
            .await;
    }
    cp.create(&core(&id, "/services"), json!({"name": "lb", "host": "backend.test"})).await;
    cp.create(&core(&id, "/services/lb/routes"), json!({"paths": ["/lb"]})).await;
    serves(&dp, "/lb", 200, Duration::from_secs(5)).await;
    let before = (first.hits(), second.hits());
    for _ in 0..10 {
        assert_eq!(dp.call("/lb", &[]).await.status(), 200);
    }
    assert_eq!((first.hits() - before.0, second.hits() - before.1), (5, 5), "round-robin on the data plane");
}

/// One random write of the test below, on control plane `id`: services, routes, consumers, keys and
/// plugins made, changed (renamed, re-keyed) and deleted, deletes cascading to what hangs off them.
async fn random_write(cp: &Gateway, id: &str, up: &Upstream, rng: &mut rand::rngs::StdRng, n: usize) {
    use rand::Rng;
    let pick = |rng: &mut rand::rngs::StdRng, of: usize| rng.random_range(0..of);
    let (s, c) = (pick(rng, 8), pick(rng, 30));
    let path = |p: &str| core(id, p);
    let status = match pick(rng, 12) {
        0 | 1 => cp.put(&path(&format!("/services/s{s}")), json!({"url": up.url(&format!("/v{n}"))})).await.0,
        2 => cp.delete(&path(&format!("/services/s{s}"))).await,
        3 | 4 => {
            let r = pick(rng, 4);
            let body = json!({"paths": [format!("/s{s}/r{r}")], "service": {"name": format!("s{s}")}, "tags": [format!("t{n}")]});
            cp.put(&path(&format!("/routes/s{s}-r{r}")), body).await.0
        }
        5 => cp.delete(&path(&format!("/routes/s{s}-r{}", pick(rng, 4)))).await,
        6 => cp.put(&path(&format!("/consumers/c{c}")), json!({"custom_id": format!("custom-{n}")})).await.0,
        7 => cp.delete(&path(&format!("/consumers/c{c}"))).await,
        8 | 9 => {
            // A key made or changed (re-keyed: the old key must stop working).
            let k = format!("00000000-0000-4000-8000-{:012}", c);
            cp.put(&path(&format!("/consumers/c{c}/key-auth/{k}")), json!({"key": format!("key-{c}-{n}")})).await.0
        }
        10 => {
            let body =
                json!({"name": "rate-limiting", "config": {"minute": 1000 + n}, "route": {"name": format!("s{s}-r0")}});
            let p = format!("00000000-0000-4000-9000-{:012}", s);
            cp.put(&path(&format!("/plugins/{p}")), body).await.0
        }
        _ => cp.delete(&path(&format!("/plugins/00000000-0000-4000-9000-{:012}", s))).await,
    };
    // Writes naming what does not exist (a route of a deleted service, a key of a deleted
    // consumer) are refused; they change nothing.
    assert!(status < 500, "write {n} answered {status}");
}

#[tokio::test]
async fn a_data_plane_following_a_thousand_random_changes_by_deltas_ends_on_the_control_planes_hash() {
    use rand::SeedableRng;
    let up = Upstream::start().await;
    let (cp, _) = Gateway::start_control_plane().await;
    let (id, token) = control_plane(&cp, "Churn").await;
    cp.create(&core(&id, "/services"), json!({"name": "marker", "url": up.url("/")})).await;
    cp.create(&core(&id, "/services/marker/routes"), json!({"name": "marker", "paths": ["/marker-0"]})).await;
    let follower = data_plane(&cp, &token, None).await;
    serves(&follower, "/marker-0", 200, Duration::from_secs(5)).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    for n in 0..1000 {
        random_write(&cp, &id, &up, &mut rng, n).await;
    }
    // A barrier: the last write, then the data plane serving it.
    cp.patch(&core(&id, "/routes/marker"), json!({"paths": ["/marker-1"]})).await;
    serves(&follower, "/marker-1", 200, Duration::from_secs(10)).await;
    let (nodes, expected) = nodes_in_sync(&cp, &id).await;
    assert_eq!(nodes["items"][0]["config_hash"], expected["expected_hash"], "{nodes}");

    // A data plane joining now is sent the whole configuration: the same hash, and the same answers.
    let fresh = data_plane(&cp, &token, None).await;
    serves(&fresh, "/marker-1", 200, Duration::from_secs(10)).await;
    let (nodes, expected) = nodes_in_sync(&cp, &id).await;
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|n| n["config_hash"] == expected["expected_hash"]), "{nodes}");
    for s in 0..8 {
        for r in 0..4 {
            let p = format!("/s{s}/r{r}");
            assert_eq!(follower.call(&p, &[]).await.status(), fresh.call(&p, &[]).await.status(), "{p}");
        }
    }
    let logs = follower.logs();
    let deltas = logs.matches("configuration delta applied").count();
    assert!(deltas > 100, "changes arrived as deltas ({deltas}):\n{logs}");
    assert!(!logs.contains("asking the control plane for the whole configuration"), "{logs}");
}
