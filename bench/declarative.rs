//! Declarative configuration at size (`bench/declarative`): a file of 10,000 services with their
//! routes (hosts, plain and regex paths) and 100,000 consumers with keys, imported with `tollgate
//! config db-import` into SQLite and into PostgreSQL (target ≤ 30 s each), then loaded whole with
//! `POST /config` into a DB-less node: the time until it is served, resident memory during the swap
//! against steady state (target ≤ 2×), and requests in flight during ten swaps (keys spread over the
//! 100,000 consumers, paths over the 10,000 routes): no error, p99 ≤ 2× the p99 of the same load on
//! an idle node.
//!
//! `cargo run --release --example bench-declarative -- <tollgate> <dir> [postgres port]`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "nodes.rs"]
mod nodes;

use nodes::{free_port, percentile, spawn, wait_until};
use serde_json::{Value, json};

const SERVICES: usize = 10_000;
const CONSUMERS: usize = 100_000;
const CONNECTIONS: usize = 32;

/// The file: `variant` changes every service's `retries`, so that each swap is a real change.
fn file(upstream_port: u16, variant: u32) -> String {
    let services: Vec<Value> = (0..SERVICES)
        .map(|i| {
            let path = if i.is_multiple_of(10) { format!("~/r{i}/\\d+$") } else { format!("/s{i}") };
            json!({"name": format!("svc-{i}"), "url": format!("http://127.0.0.1:{upstream_port}"), "retries": variant,
                   "routes": [{"name": format!("route-{i}"), "paths": [path], "hosts": [format!("h{}.test", i % 100)]}]})
        })
        .collect();
    let consumers: Vec<Value> = (0..CONSUMERS)
        .map(|i| json!({"username": format!("user-{i}"), "keyauth_credentials": [{"key": format!("key-{i:06}")}]}))
        .collect();
    json!({"_format_version": "3.0", "services": services, "consumers": consumers, "plugins": [{"name": "key-auth"}]})
        .to_string()
}

/// A request of the spread: a route (host and path) and a consumer's key.
fn request(n: u64) -> (String, String, String) {
    let i = (n.wrapping_mul(2_654_435_761) % SERVICES as u64) as usize;
    let path = if i.is_multiple_of(10) { format!("/r{i}/{n}") } else { format!("/s{i}") };
    let key = format!("key-{:06}", n.wrapping_mul(40_503) % CONSUMERS as u64);
    (format!("h{}.test", i % 100), path, key)
}

fn import(bin: &Path, file: &Path, env: &[(&str, String)]) -> Result<Duration, String> {
    let started = Instant::now();
    let out = std::process::Command::new(bin)
        .args(["config", "db-import"])
        .arg(file)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("db-import failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(started.elapsed())
}

/// Latencies and failures of `CONNECTIONS` clients sending the spread until `stop`.
async fn load(base: String, stop: Arc<AtomicBool>) -> (Vec<Duration>, u64) {
    let counter = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (base, stop, counter, failures) = (base.clone(), stop.clone(), counter.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap_or_default();
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (host, path, key) = request(counter.fetch_add(1, Ordering::Relaxed));
                let started = Instant::now();
                let ok = client
                    .get(format!("{base}{path}"))
                    .header("host", host)
                    .header("apikey", key)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                samples.push(started.elapsed());
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort();
    (all, failures.load(Ordering::Relaxed))
}

async fn post_config(admin: &reqwest::Client, base: &str, body: String) -> Result<Duration, String> {
    let started = Instant::now();
    let r = admin
        .post(format!("{base}/config"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    if status != 201 {
        return Err(format!("POST /config: {status} {}", &text[..text.len().min(300)]));
    }
    Ok(started.elapsed())
}

async fn run(bin: &Path, dir: &Path, pg_port: Option<u16>) -> Result<(), String> {
    let upstream = nodes::echo_upstream().await?;
    let a = file(upstream, 5);
    let b = file(upstream, 4);
    let path = dir.join("kong.json");
    std::fs::write(&path, &a).map_err(|e| e.to_string())?;
    println!(
        "file: {} services and routes, {} consumers with keys, {:.1} MB",
        SERVICES,
        CONSUMERS,
        a.len() as f64 / 1e6
    );

    let sqlite = import(bin, &path, &[("TOLLGATE_PREFIX", dir.join("sqlite").display().to_string())])?;
    println!(
        "| db-import into SQLite | {:.1} s | ≤ 30 s | {} |",
        sqlite.as_secs_f64(),
        met(sqlite.as_secs_f64() <= 30.0)
    );
    if let Some(port) = pg_port {
        let env = [
            ("TOLLGATE_PREFIX", dir.join("pg").display().to_string()),
            ("TOLLGATE_DATABASE", "postgres".into()),
            ("TOLLGATE_PG_HOST", "127.0.0.1".into()),
            ("TOLLGATE_PG_PORT", port.to_string()),
            ("TOLLGATE_PG_USER", "postgres".into()),
            ("TOLLGATE_PG_DATABASE", "tollgate".into()),
        ];
        let pg = import(bin, &path, &env)?;
        println!(
            "| db-import into PostgreSQL | {:.1} s | ≤ 30 s | {} |",
            pg.as_secs_f64(),
            met(pg.as_secs_f64() <= 30.0)
        );
    }

    let (proxy, admin_port) = (free_port(), free_port());
    let node = spawn(
        bin,
        &[
            ("TOLLGATE_PREFIX", dir.join("dbless").display().to_string()),
            ("TOLLGATE_DATABASE", "off".into()),
            ("TOLLGATE_PROXY_LISTEN", format!("127.0.0.1:{proxy}")),
            ("TOLLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            ("TOLLGATE_STATUS_LISTEN", "off".into()),
        ],
        &dir.join("dbless.log"),
    )?;
    let admin = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{admin_port}");
    wait_until(Duration::from_secs(20), async || admin.get(format!("{base}/status")).send().await.is_ok()).await?;
    let served = post_config(&admin, &base, a.clone()).await?;
    println!("| POST /config of the file, until served | {:.1} s | | |", served.as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let steady = node.rss();

    let proxy_base = format!("http://127.0.0.1:{proxy}");
    let stop = Arc::new(AtomicBool::new(false));
    let idle = tokio::spawn(load(proxy_base.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let (idle, idle_failures) = idle.await.map_err(|e| e.to_string())?;

    // Ten swaps under the same load, resident memory sampled all along.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = tokio::spawn(load(proxy_base, stop.clone()));
    let peak = Arc::new(AtomicU64::new(steady));
    let sampling = Arc::new(AtomicBool::new(true));
    let pid = node.child.id();
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(nodes::rss_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut swaps = Vec::new();
    for i in 0..10 {
        let body = if i % 2 == 0 { b.clone() } else { a.clone() };
        swaps.push(post_config(&admin, &base, body).await?);
    }
    stop.store(true, Ordering::Relaxed);
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let (during, failures) = busy.await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = node.rss();
    let peak = peak.load(Ordering::Relaxed);

    let (p99_idle, p99_swaps) = (percentile(&idle, 0.99), percentile(&during, 0.99));
    let mb = |b: u64| b as f64 / 1e6;
    let mean = swaps.iter().map(Duration::as_secs_f64).sum::<f64>() / swaps.len() as f64;
    println!("| ten swaps: mean time until served | {mean:.1} s | | |");
    println!(
        "| resident memory: peak during ten swaps / steady | {:.0} MB / {:.0} MB = {:.2}× | ≤ 2× | {} |",
        mb(peak),
        mb(steady),
        peak as f64 / steady as f64,
        met(peak as f64 <= 2.0 * steady as f64)
    );
    println!("| resident memory after ten swaps | {:.0} MB (steady {:.0} MB) | | |", mb(after), mb(steady));
    println!(
        "| requests during the swaps: errors | {failures} of {} (idle: {idle_failures} of {}) | 0 | {} |",
        during.len(),
        idle.len(),
        met(failures == 0 && idle_failures == 0)
    );
    println!(
        "| requests during the swaps: p99 / idle p99 | {:.1} ms / {:.1} ms = {:.2}× | ≤ 2× | {} |",
        p99_swaps.as_secs_f64() * 1e3,
        p99_idle.as_secs_f64() * 1e3,
        p99_swaps.as_secs_f64() / p99_idle.as_secs_f64(),
        met(p99_swaps <= 2 * p99_idle)
    );
    node.stop();
    Ok(())
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(bin), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bench-declarative <tollgate binary> <work dir> [postgres port]");
        std::process::exit(2);
    };
    let pg_port = args.get(3).and_then(|p| p.parse().ok());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(&PathBuf::from(bin), &PathBuf::from(dir), pg_port)) {
        eprintln!("bench-declarative: {e}");
        std::process::exit(1);
    }
}
