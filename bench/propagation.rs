//! How long a change on a control plane takes to be served by its data planes, for 1, 10 and 50
//! data planes (`bench/propagate`, or `cargo run --release --example bench-propagation -- <tollgate
//! binary> [changes]`). Starts a control plane and N data planes of the given binary on loopback,
//! then, for each change, creates a route through the control plane's Admin API and polls every data
//! plane's proxy (every 5 ms) until the new route answers; a sample is the time from sending the
//! write to that data plane answering. Prints p50/p99/max per N.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "nodes.rs"]
mod nodes;

use nodes::{admin_token, free_port, percentile, spawn, wait_until};
use serde_json::{Value, json};

async fn run(bin: &Path, dir: &Path, n: usize, changes: usize) -> Result<Vec<Duration>, String> {
    let cp_prefix = dir.join(format!("cp-{n}"));
    let _ = std::fs::remove_dir_all(&cp_prefix);
    let token = admin_token(bin, &cp_prefix)?;
    let (admin_port, cluster_port) = (free_port(), free_port());
    let _cp = spawn(
        bin,
        &[
            ("TOLLGATE_PREFIX", cp_prefix.display().to_string()),
            ("TOLLGATE_ROLE", "control_plane".into()),
            ("TOLLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            ("TOLLGATE_CLUSTER_LISTEN", format!("127.0.0.1:{cluster_port}")),
            ("TOLLGATE_STATUS_LISTEN", "off".into()),
        ],
        &dir.join(format!("cp-{n}.log")),
    )?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().map_err(|_| "bad token")?);
    let admin = reqwest::Client::builder().default_headers(headers).build().map_err(|e| e.to_string())?;
    let base = format!("http://127.0.0.1:{admin_port}");
    wait_until(Duration::from_secs(20), async || admin.get(format!("{base}/status")).send().await.is_ok()).await?;
    let post = async |path: String, body: Value| -> Result<Value, String> {
        let r = admin.post(format!("{base}{path}")).json(&body).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if status.as_u16() == 201 { Ok(v) } else { Err(format!("POST {path}: {status} {v}")) }
    };
    let plane = post("/v2/control-planes".into(), json!({"name": "bench"})).await?;
    let id = plane["id"].as_str().ok_or("no id")?.to_string();
    let dp_token = post(format!("/v2/control-planes/{id}/data-plane-tokens"), json!({})).await?;
    let dp_token = dp_token["token"].as_str().ok_or("no token")?.to_string();
    let core = format!("/v2/control-planes/{id}/core-entities");
    post(format!("{core}/services"), json!({"name": "s", "url": format!("http://127.0.0.1:{admin_port}/status")}))
        .await?;

    let mut dps = Vec::new();
    let mut proxies = Vec::new();
    for i in 0..n {
        let (proxy, status) = (free_port(), free_port());
        let prefix = dir.join(format!("dp-{n}-{i}"));
        let _ = std::fs::remove_dir_all(&prefix);
        dps.push(spawn(
            bin,
            &[
                ("TOLLGATE_PREFIX", prefix.display().to_string()),
                ("TOLLGATE_ROLE", "data_plane".into()),
                ("TOLLGATE_PROXY_LISTEN", format!("127.0.0.1:{proxy}")),
                ("TOLLGATE_STATUS_LISTEN", format!("127.0.0.1:{status}")),
                ("TOLLGATE_CLUSTER_CONTROL_PLANE", format!("127.0.0.1:{cluster_port}")),
                ("TOLLGATE_CLUSTER_TOKEN", dp_token.clone()),
            ],
            &dir.join(format!("dp-{n}-{i}.log")),
        )?);
        proxies.push((format!("http://127.0.0.1:{proxy}"), format!("http://127.0.0.1:{status}/status/ready")));
    }
    let http = reqwest::Client::new();
    for (_, ready) in &proxies {
        wait_until(Duration::from_secs(30), async || {
            http.get(ready).send().await.is_ok_and(|r| r.status().as_u16() == 200)
        })
        .await
        .map_err(|_| format!("a data plane never became ready ({ready})"))?;
    }

    let mut samples = Vec::with_capacity(n * changes);
    for k in 0..changes {
        let path = format!("/change-{k}");
        let sent = Instant::now();
        post(format!("{core}/services/s/routes"), json!({"paths": [path], "strip_path": true})).await?;
        let polls = proxies.iter().map(|(proxy, _)| {
            let (http, url) = (http.clone(), format!("{proxy}{path}"));
            async move {
                loop {
                    if http.get(&url).send().await.is_ok_and(|r| r.status().as_u16() != 404) {
                        return sent.elapsed();
                    }
                    if sent.elapsed() > Duration::from_secs(10) {
                        return Duration::from_secs(10);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        samples.extend(futures_util::future::join_all(polls).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let bin = PathBuf::from(args.get(1).ok_or("usage: bench-propagation <tollgate binary> [changes]")?);
    let changes: usize = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("tollgate-propagation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    println!("Propagation: a route created on the control plane until each data plane serves it; {changes} changes.");
    println!();
    println!("| data planes | samples | p50 ms | p99 ms | max ms | p99 ≤ 250 ms |");
    println!("|---|---|---|---|---|---|");
    for n in [1, 10, 50] {
        let mut s = run(&bin, &dir, n, changes).await?;
        s.sort();
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        let p99 = percentile(&s, 0.99);
        let verdict = if p99 <= Duration::from_millis(250) { "met" } else { "MISSED" };
        println!(
            "| {n} | {} | {} | {} | {} | {verdict} |",
            s.len(),
            ms(percentile(&s, 0.5)),
            ms(p99),
            ms(s.last().copied().unwrap_or_default())
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
