//! Hybrid mode at size (`bench/propagate`): a control plane holding 10,000 routes (hosts, plain
//! and regex paths) and 100,000 consumers with keys, and 100 data planes of the release binary on
//! loopback; beside it the same for 1,000 routes and 1,000 consumers. Per size:
//! - join: a data plane started from nothing until it serves a route (the first of the fleet, which
//!   also pays the control plane's first export, and one more once the fleet has followed the
//!   changes), and the first one's resident memory at its peak (VmHWM) against the steady resident
//!   memory of a data plane holding the configuration (the fleet's median VmRSS after the changes);
//! - a data plane restarted from its `config.cache` until it serves, and its peak against the same
//!   steady figure;
//! - the cost of a change, on a quiet fleet: one route created through the control plane's Admin
//!   API every 300 ms; the control plane's CPU per change (its /proc time, the Admin API call
//!   included), the data planes' CPU per change each, and the bytes the control plane sent per data
//!   plane per change (TCP bytes acknowledged on its cluster port, from `ss`: TLS and WebSocket
//!   framing and the pings of the window included);
//! - how soon a change is applied everywhere: a route created (then a new key for an existing
//!   consumer), polling the control plane's `/nodes` every 5 ms until every data plane reports the
//!   new configuration hash (a data plane reports once it has swapped the configuration in, so it
//!   serves the change before the control plane hears of it); a sample is the time from sending the
//!   write to the control plane seeing that data plane run it (p50/p99/max over changes × data
//!   planes); every data plane's proxy is then asked once and must serve the route (or key).
//!
//! `cargo run --release --example bench-propagation -- <tollgate binary> [changes]`; the number of
//! data planes is `BENCH_DATA_PLANES` (100).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "nodes.rs"]
mod nodes;

use nodes::{Node, admin_token, cluster_env, free_port, peak_rss_of, percentile, spawn, wait_until};
use serde_json::{Value, json};

/// The default control plane's id (root Admin API paths address it).
const DEFAULT_CP_ID: &str = "00000000-0000-4000-8000-000000000001";
/// Routes per service.
const ROUTES_PER_SERVICE: usize = 10;
/// How often the control plane is asked which data planes run the new configuration.
const POLL: Duration = Duration::from_millis(5);

#[derive(Clone, Copy)]
struct Size {
    routes: usize,
    consumers: usize,
}

/// The declarative file: services of ten routes each (every tenth path a regex, hosts over 100
/// names), consumers each with a key, key-auth on every route.
fn file(size: Size, upstream: u16) -> String {
    let services: Vec<Value> = (0..size.routes / ROUTES_PER_SERVICE)
        .map(|s| {
            let routes: Vec<Value> = (0..ROUTES_PER_SERVICE)
                .map(|r| {
                    let i = s * ROUTES_PER_SERVICE + r;
                    let path = if i.is_multiple_of(10) { format!("~/r{i}/\\d+$") } else { format!("/p{i}") };
                    json!({"name": format!("route-{i}"), "paths": [path], "hosts": [format!("h{}.test", i % 100), "any.test"]})
                })
                .collect();
            json!({"name": format!("svc-{s}"), "url": format!("http://127.0.0.1:{upstream}"), "routes": routes})
        })
        .collect();
    let consumers: Vec<Value> = (0..size.consumers)
        .map(|i| json!({"username": format!("user-{i}"), "keyauth_credentials": [{"key": format!("key-{i:06}")}]}))
        .collect();
    json!({"_format_version": "3.0", "services": services, "consumers": consumers, "plugins": [{"name": "key-auth"}]})
        .to_string()
}

/// Whether a data plane serves `path` (a consumer's key, on a host every route takes).
async fn serves(http: &reqwest::Client, proxy: &str, path: &str) -> bool {
    serves_key(http, proxy, path, "key-000001").await
}

/// Whether a data plane serves `path` to the holder of `key`.
async fn serves_key(http: &reqwest::Client, proxy: &str, path: &str, key: &str) -> bool {
    let r = http.get(format!("{proxy}{path}")).header("host", "any.test").header("apikey", key).send().await;
    r.is_ok_and(|r| r.status().as_u16() == 200)
}

/// Checks that every data plane serves `path` to `key` (once each: they reported it applied).
async fn all_serve(http: &reqwest::Client, fleet: &[DataPlane], path: &str, key: &str) -> Result<(), String> {
    for dp in fleet {
        if !serves_key(http, &dp.proxy, path, key).await {
            return Err(format!("{} reported {path} applied but does not serve it", dp.proxy));
        }
    }
    Ok(())
}

/// The default control plane's view of its data planes (`/v2/control-planes/{id}/nodes`).
struct Nodes<'a> {
    admin: &'a reqwest::Client,
    base: &'a str,
}

impl Nodes<'_> {
    async fn get(&self, path: &str) -> Result<Value, String> {
        let url = format!("{}/v2/control-planes/{DEFAULT_CP_ID}/{path}", self.base);
        let r = self.admin.get(url).send().await.map_err(|e| e.to_string())?;
        r.json().await.map_err(|e| e.to_string())
    }

    /// The configuration hash the control plane publishes now.
    async fn expected(&self) -> Result<String, String> {
        Ok(self.get("expected-config-hash").await?["expected_hash"].as_str().unwrap_or_default().to_string())
    }

    /// Polls (every [`POLL`]) until the published hash moved on from `before` and `count` data
    /// planes report running it; for each, the time since `sent` when it was first seen so.
    async fn until_applied(&self, before: &str, count: usize, sent: Instant) -> Result<Vec<Duration>, String> {
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut times = Vec::with_capacity(count);
        while seen.len() < count {
            if sent.elapsed() > Duration::from_secs(30) {
                return Err(format!("only {} of {count} data planes applied the change within 30 s", seen.len()));
            }
            let expected = self.expected().await?;
            if expected != before {
                let nodes = self.get("nodes").await?;
                for n in nodes["items"].as_array().into_iter().flatten() {
                    let id = n["id"].as_str().unwrap_or_default();
                    if n["connected"] == true && n["config_hash"] == expected.as_str() && seen.insert(id.to_string()) {
                        times.push(sent.elapsed());
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(times)
    }
}

/// Bytes acknowledged on the established TCP connections whose local port is `port` (the
/// control plane's side of every cluster link).
fn bytes_sent_from(port: u16) -> u64 {
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "established", &format!("( sport = :{port} )")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace().filter_map(|w| w.strip_prefix("bytes_acked:")).filter_map(|n| n.parse::<u64>().ok()).sum()
}

struct DataPlane {
    node: Node,
    proxy: String,
    prefix: PathBuf,
    proxy_port: u16,
}

/// What one size measured.
struct Figures {
    size: Size,
    data_planes: usize,
    changes: usize,
    file_mb: f64,
    import: Duration,
    join_first: Duration,
    join_fleet: Duration,
    join_late: Duration,
    join_memory: (u64, u64),
    restart: Duration,
    restart_memory: (u64, u64),
    samples: Vec<Duration>,
    key_samples: Vec<Duration>,
    dp_cpu_per_key: Duration,
    cp_cpu_per_change: Duration,
    dp_cpu_per_change: Duration,
    bytes_per_dp_per_change: f64,
    cp_rss: u64,
    cp_peak: u64,
    dp_rss: Vec<u64>,
}

struct Fleet<'a> {
    bin: &'a Path,
    dir: &'a Path,
    cluster_port: u16,
    token: String,
}

impl Fleet<'_> {
    fn start(&self, name: &str, prefix: Option<(PathBuf, u16)>) -> Result<DataPlane, String> {
        let (prefix, proxy_port) = prefix.unwrap_or_else(|| (self.dir.join(name), free_port()));
        if !prefix.exists() {
            std::fs::create_dir_all(&prefix).map_err(|e| e.to_string())?;
        }
        let node = spawn(
            self.bin,
            &[
                ("TOLLGATE_PREFIX", prefix.display().to_string()),
                ("TOLLGATE_ROLE", "data_plane".into()),
                ("TOLLGATE_PROXY_LISTEN", format!("127.0.0.1:{proxy_port}")),
                ("TOLLGATE_STATUS_LISTEN", "off".into()),
                ("TOLLGATE_CLUSTER_CONTROL_PLANE", format!("127.0.0.1:{}", self.cluster_port)),
                ("TOLLGATE_CLUSTER_TOKEN", self.token.clone()),
            ],
            &self.dir.join(format!("{name}.log")),
        )?;
        Ok(DataPlane { node, proxy: format!("http://127.0.0.1:{proxy_port}"), prefix, proxy_port })
    }
}

/// Waits until the data plane serves `path`; the time since `since`.
async fn until_served(http: &reqwest::Client, dp: &DataPlane, path: &str, since: Instant) -> Result<Duration, String> {
    wait_until(Duration::from_secs(120), async || serves(http, &dp.proxy, path).await)
        .await
        .map_err(|_| format!("{} never served {path}", dp.proxy))?;
    Ok(since.elapsed())
}

fn median(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

async fn run(bin: &Path, dir: &Path, size: Size, data_planes: usize, changes: usize) -> Result<Figures, String> {
    let dir = dir.join(format!("{}-{}", size.routes, size.consumers));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let upstream = nodes::echo_upstream().await?;
    let cp_prefix = dir.join("cp");
    let declared = dir.join("kong.json");
    let text = file(size, upstream);
    std::fs::write(&declared, &text).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let imported = std::process::Command::new(bin)
        .args(["config", "db-import"])
        .arg(&declared)
        .env_clear()
        .env("TOLLGATE_PREFIX", &cp_prefix)
        .env("TOLLGATE_ROLE", "control_plane")
        .envs(cluster_env(bin))
        .output()
        .map_err(|e| e.to_string())?;
    if !imported.status.success() {
        return Err(format!("db-import failed: {}", String::from_utf8_lossy(&imported.stderr)));
    }
    let import = started.elapsed();
    let token = admin_token(bin, &cp_prefix)?;
    let (admin_port, cluster_port) = (free_port(), free_port());
    let cp = spawn(
        bin,
        &[
            ("TOLLGATE_PREFIX", cp_prefix.display().to_string()),
            ("TOLLGATE_ROLE", "control_plane".into()),
            ("TOLLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            ("TOLLGATE_CLUSTER_LISTEN", format!("127.0.0.1:{cluster_port}")),
            ("TOLLGATE_STATUS_LISTEN", "off".into()),
        ],
        &dir.join("cp.log"),
    )?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().map_err(|_| "bad token")?);
    let admin = reqwest::Client::builder().default_headers(headers).build().map_err(|e| e.to_string())?;
    let base = format!("http://127.0.0.1:{admin_port}");
    wait_until(Duration::from_secs(60), async || admin.get(format!("{base}/status")).send().await.is_ok()).await?;
    let post = async |path: String, body: Value| -> Result<Value, String> {
        let r = admin.post(format!("{base}{path}")).json(&body).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if status.as_u16() == 201 { Ok(v) } else { Err(format!("POST {path}: {status} {v}")) }
    };
    let dp_token = post(format!("/v2/control-planes/{DEFAULT_CP_ID}/data-plane-tokens"), json!({})).await?;
    let fleet =
        Fleet { bin, dir: &dir, cluster_port, token: dp_token["token"].as_str().ok_or("no token")?.to_string() };
    let http = reqwest::Client::builder().pool_max_idle_per_host(1).build().map_err(|e| e.to_string())?;
    // A route of the file every data plane must serve once it holds the configuration.
    let known = "/p1";

    // The first data plane: the control plane exports the whole for it.
    let started = Instant::now();
    let first = fleet.start("dp-0", None)?;
    let join_first = until_served(&http, &first, known, started).await?;
    let mut fleet_nodes = vec![first];
    // The others, ten at a time, each ten started together and waited for.
    let started = Instant::now();
    while fleet_nodes.len() < data_planes {
        let batch: Vec<DataPlane> = (fleet_nodes.len()..(fleet_nodes.len() + 10).min(data_planes))
            .map(|i| fleet.start(&format!("dp-{i}"), None))
            .collect::<Result<_, _>>()?;
        for dp in &batch {
            until_served(&http, dp, known, started).await?;
        }
        fleet_nodes.extend(batch);
    }
    let join_fleet = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The cost of a change, on a quiet fleet (nothing polled): one route created every 300 ms.
    let (cp_cpu, dp_cpu, sent) =
        (cp.cpu(), fleet_nodes.iter().map(|d| d.node.cpu()).sum::<Duration>(), bytes_sent_from(cluster_port));
    for k in 0..changes {
        post(format!("/services/svc-{k}/routes"), json!({"paths": [format!("/quiet-{k}")], "hosts": ["any.test"]}))
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let per_change = |d: Duration| d / changes.max(1) as u32;
    let cp_cpu_per_change = per_change(cp.cpu().saturating_sub(cp_cpu));
    let dp_cpu_now: Duration = fleet_nodes.iter().map(|d| d.node.cpu()).sum();
    let dp_cpu_per_change = per_change(dp_cpu_now.saturating_sub(dp_cpu)) / data_planes.max(1) as u32;
    let bytes_per_dp_per_change =
        bytes_sent_from(cluster_port).saturating_sub(sent) as f64 / (changes.max(1) * data_planes.max(1)) as f64;

    // How soon a change is served everywhere: a route created, then a new key for an existing
    // consumer, each until every data plane reports it applied (it swaps the new configuration
    // in, then reports), then checked on every data plane's proxy.
    let nodes = Nodes { admin: &admin, base: &base };
    let mut samples = Vec::with_capacity(changes * data_planes);
    for k in 0..changes {
        let path = format!("/change-{k}");
        let before = nodes.expected().await?;
        let sent = Instant::now();
        post(format!("/services/svc-{k}/routes"), json!({"paths": [path], "hosts": ["any.test"]})).await?;
        samples.extend(nodes.until_applied(&before, data_planes, sent).await?);
        all_serve(&http, &fleet_nodes, &path, "key-000001").await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut key_samples = Vec::with_capacity(changes * data_planes);
    let dp_cpu = fleet_nodes.iter().map(|d| d.node.cpu()).sum::<Duration>();
    for k in 0..changes {
        let key = format!("new-key-{k}");
        let before = nodes.expected().await?;
        let sent = Instant::now();
        post(format!("/consumers/user-{k}/key-auth"), json!({"key": key})).await?;
        key_samples.extend(nodes.until_applied(&before, data_planes, sent).await?);
        all_serve(&http, &fleet_nodes, "/p1", &key).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dp_cpu_now: Duration = fleet_nodes.iter().map(|d| d.node.cpu()).sum();
    let dp_cpu_per_key = per_change(dp_cpu_now.saturating_sub(dp_cpu)) / data_planes.max(1) as u32;

    let dp_rss: Vec<u64> = fleet_nodes.iter().map(|d| d.node.rss()).collect();
    let steady = median(&dp_rss);
    let join_memory = (fleet_nodes.first().map_or(0, |d| peak_rss_of(d.node.child.id())), steady);
    let (cp_rss, cp_peak) = (cp.rss(), peak_rss_of(cp.child.id()));

    // One more data plane from nothing, once the fleet has followed the changes.
    let started = Instant::now();
    let late = fleet.start("dp-late", None)?;
    let join_late = until_served(&http, &late, "/change-0", started).await?;
    drop(late);

    // The first data plane restarted from its cache.
    let first = fleet_nodes.swap_remove(0);
    let (prefix, port) = (first.prefix.clone(), first.proxy_port);
    first.node.stop();
    let started = Instant::now();
    let again = fleet.start("dp-0-again", Some((prefix, port)))?;
    let restart = until_served(&http, &again, "/change-0", started).await?;
    let restart_memory = (peak_rss_of(again.node.child.id()), steady);
    drop(again);
    drop(fleet_nodes);
    cp.stop();
    Ok(Figures {
        size,
        data_planes,
        changes,
        file_mb: text.len() as f64 / 1e6,
        import,
        join_first,
        join_fleet,
        join_late,
        join_memory,
        restart,
        restart_memory,
        samples,
        key_samples,
        dp_cpu_per_key,
        cp_cpu_per_change,
        dp_cpu_per_change,
        bytes_per_dp_per_change,
        cp_rss,
        cp_peak,
        dp_rss,
    })
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn print(figures: &[Figures]) {
    let head: Vec<String> = figures
        .iter()
        .map(|f| format!("{} routes, {} consumers, {} data planes", f.size.routes, f.size.consumers, f.data_planes))
        .collect();
    println!("| | {} | target (at size) | at size |", head.join(" | "));
    println!("|---|{}---|---|", "---|".repeat(figures.len()));
    let row = |name: &str, cells: Vec<String>, target: &str, ok: Option<bool>| {
        println!("| {name} | {} | {target} | {} |", cells.join(" | "), ok.map_or("", verdict));
    };
    let at_size = figures.last();
    let each = |f: &dyn Fn(&Figures) -> String| figures.iter().map(f).collect::<Vec<String>>();
    row("declarative file; db-import", each(&|f| format!("{:.1} MB; {}", f.file_mb, secs(f.import))), "", None);
    let quantile = |samples: &[Duration], q: f64| {
        let mut s = samples.to_vec();
        s.sort();
        percentile(&s, q)
    };
    let p = |f: &Figures, q: f64| quantile(&f.samples, q);
    row(
        "one-route change applied by every data plane: p50 / p99 / max",
        each(&|f| format!("{} / {} / {}", ms(p(f, 0.5)), ms(p(f, 0.99)), ms(p(f, 1.0)))),
        "p99 ≤ 250 ms",
        at_size.map(|f| p(f, 0.99) <= Duration::from_millis(250)),
    );
    row(
        "control plane CPU per one-route change (Admin API write included)",
        each(&|f| ms(f.cp_cpu_per_change)),
        "≤ 20 ms",
        at_size.map(|f| f.cp_cpu_per_change <= Duration::from_millis(20)),
    );
    row(
        "bytes sent per data plane per one-route change",
        each(&|f| format!("{:.0} B", f.bytes_per_dp_per_change)),
        "≤ 2 KB",
        at_size.map(|f| f.bytes_per_dp_per_change <= 2048.0),
    );
    row("data plane CPU per one-route change (each)", each(&|f| ms(f.dp_cpu_per_change)), "", None);
    row(
        "a new key of an existing consumer applied by every data plane: p50 / p99 / max",
        each(&|f| {
            let q = |x| ms(quantile(&f.key_samples, x));
            format!("{} / {} / {}", q(0.5), q(0.99), q(1.0))
        }),
        "",
        None,
    );
    row("data plane CPU per new key (each)", each(&|f| ms(f.dp_cpu_per_key)), "", None);
    row(
        "a data plane joining from nothing serves: first (the control plane's first export) / after the changes",
        each(&|f| format!("{} / {}", secs(f.join_first), secs(f.join_late))),
        "≤ 5 s",
        at_size.map(|f| f.join_first.max(f.join_late) <= Duration::from_secs(5)),
    );
    row(
        "the rest of the fleet joining, ten at a time",
        each(&|f| format!("{} for {}", secs(f.join_fleet), f.data_planes.saturating_sub(1))),
        "",
        None,
    );
    row(
        "data plane memory on joining: its peak (VmHWM) / the fleet's steady median (VmRSS after the changes)",
        each(&|f| format!("{} / {} = {:.2}×", mb(f.join_memory.0), mb(f.join_memory.1), ratio(f.join_memory))),
        "≤ 2×",
        at_size.map(|f| ratio(f.join_memory) <= 2.0),
    );
    row(
        "a data plane restarted from config.cache serves; its peak / the fleet's steady median",
        each(&|f| {
            format!(
                "{}; {} / {} = {:.2}×",
                secs(f.restart),
                mb(f.restart_memory.0),
                mb(f.restart_memory.1),
                ratio(f.restart_memory)
            )
        }),
        "≤ 2×",
        at_size.map(|f| ratio(f.restart_memory) <= 2.0),
    );
    row(
        "data plane resident memory after the changes: median / max",
        each(&|f| format!("{} / {}", mb(median(&f.dp_rss)), mb(f.dp_rss.iter().copied().max().unwrap_or(0)))),
        "",
        None,
    );
    row(
        "control plane resident memory after the changes (peak)",
        each(&|f| format!("{} ({})", mb(f.cp_rss), mb(f.cp_peak))),
        "",
        None,
    );
    row("changes × data planes sampled", each(&|f| format!("{} × {}", f.changes, f.data_planes)), "", None);
}

fn ratio((peak, steady): (u64, u64)) -> f64 {
    peak as f64 / steady.max(1) as f64
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let bin = PathBuf::from(args.get(1).ok_or("usage: bench-propagation <tollgate binary> [changes]")?);
    let changes: usize = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(20);
    let data_planes: usize = std::env::var("BENCH_DATA_PLANES").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("tollgate-propagation-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sizes = [Size { routes: 1_000, consumers: 1_000 }, Size { routes: 10_000, consumers: 100_000 }];
    let mut figures = Vec::new();
    for size in sizes {
        eprintln!("bench: {} routes, {} consumers, {data_planes} data planes", size.routes, size.consumers);
        figures.push(run(&bin, &dir, size, data_planes, changes).await?);
    }
    println!("Hybrid mode: {data_planes} data planes on loopback, {changes} one-route changes per size.");
    println!();
    print(&figures);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
