//! Realm key lookups on a data plane (`bench/realm-lookups`, or `cargo run --release --example
//! bench-realms -- <tollgate binary> [keys] [revocations]`). Starts a control plane and a data plane
//! of the given binary on loopback, an upstream answering 200, and a route with key-auth trying one
//! realm, then measures:
//!
//! 1. a realm key's first request on the data plane (a miss, a lookup over the cluster link, a hit),
//!    for `keys` fresh legacy keys of one realm consumer, then the same keys again (cached);
//! 2. revocation: for each of `revocations` keys, one 200 (cached), then the key is deleted on the
//!    control plane and the data plane polled every 2 ms until it answers 401; a sample is the time
//!    from sending the DELETE to that 401;
//! 3. a control plane holding `BENCH_REALM_CONSUMERS` (default 1,000,000) realm consumers with one key
//!    each: the control plane is stopped, the rows are written straight into its SQLite store in the
//!    API's own row format, it is restarted, and a fresh data plane times the first request of keys
//!    spread over the whole set; the control plane's VmRSS is read after restarting it from its store
//!    without and with those rows, and after the lookups;
//! 4. a lookup storm (skipped with `BENCH_REALM_STORM=0`): on a data plane with `realm_cache_size`
//!    10,000, a cached realm key is requested every 2 ms (by a probe process of its own, on one
//!    connection, at real-time priority when `chrt` allows it) for 5 s,
//!    then again while 50,000 distinct unknown realm keys are sent through the proxy at 10,000 a second
//!    (evenly paced over 32 keep-alive connections; each answers 401 after one lookup on the control
//!    plane);
//!    the data plane's VmRSS is read before the storm, right after it, and after a second storm of
//!    another 50,000 distinct keys.
//!
//! Prints one markdown table.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[path = "nodes.rs"]
mod nodes;

use nodes::{Node, admin_token, cpu_time, free_port, percentile, spawn, spawn_on, wait_until};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, Connection, sqlite::SqliteConnectOptions};

/// Uncached lookups timed against the large control plane.
const SPREAD_SAMPLES: usize = 1000;
/// Rows per INSERT statement and per transaction when bulk-loading the store.
const ROWS_PER_INSERT: usize = 500;
const ROWS_PER_COMMIT: usize = 50_000;
/// The lookup storm: unknown keys a second, for how long, over how many connections.
const STORM_RATE: usize = 10_000;
const STORM_TIME: Duration = Duration::from_secs(5);
const STORM_CONNECTIONS: usize = 32;
/// The storm's data plane keeps this many realm lookups (so the storm reaches the bound).
const STORM_CACHE_SIZE: usize = 10_000;
/// The cached key is requested this often, before and during the storm.
const PROBE_EVERY: Duration = Duration::from_millis(2);

fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// 1000000 → "1,000,000".
fn grouped(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A control plane node and its Admin API client.
struct ControlPlane {
    node: Node,
    admin: reqwest::Client,
    base: String,
    cluster: String,
}

impl ControlPlane {
    async fn start(bin: &Path, prefix: &Path, token: &str, log: &Path) -> Result<ControlPlane, String> {
        let (admin_port, cluster_port) = (free_port(), free_port());
        let node = spawn(
            bin,
            &[
                ("TOLLGATE_PREFIX", prefix.display().to_string()),
                ("TOLLGATE_ROLE", "control_plane".into()),
                ("TOLLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
                ("TOLLGATE_CLUSTER_LISTEN", format!("127.0.0.1:{cluster_port}")),
                ("TOLLGATE_STATUS_LISTEN", "off".into()),
            ],
            log,
        )?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().map_err(|_| "bad token")?);
        let admin = reqwest::Client::builder().default_headers(headers).build().map_err(|e| e.to_string())?;
        let base = format!("http://127.0.0.1:{admin_port}");
        wait_until(Duration::from_secs(60), async || admin.get(format!("{base}/status")).send().await.is_ok())
            .await
            .map_err(|_| "the control plane never answered".to_string())?;
        Ok(ControlPlane { node, admin, base, cluster: format!("127.0.0.1:{cluster_port}") })
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let r = self.admin.post(format!("{}{path}", self.base)).json(&body).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if status.as_u16() == 201 { Ok(v) } else { Err(format!("POST {path}: {status} {v}")) }
    }

    async fn delete(&self, path: &str) -> Result<(), String> {
        let r = self.admin.delete(format!("{}{path}", self.base)).send().await.map_err(|e| e.to_string())?;
        if r.status().as_u16() == 204 { Ok(()) } else { Err(format!("DELETE {path}: {}", r.status())) }
    }
}

/// A data plane of the control plane, ready and serving the keyed route (401 without a key).
async fn data_plane(
    bin: &Path,
    dir: &Path,
    name: &str,
    cluster: &str,
    token: &str,
    http: &reqwest::Client,
    extra: &[(&str, String)],
) -> Result<(Node, String), String> {
    let (proxy, status) = (free_port(), free_port());
    let prefix = dir.join(name);
    let _ = std::fs::remove_dir_all(&prefix);
    let mut env = vec![
        ("TOLLGATE_PREFIX", prefix.display().to_string()),
        ("TOLLGATE_ROLE", "data_plane".into()),
        ("TOLLGATE_PROXY_LISTEN", format!("127.0.0.1:{proxy}")),
        ("TOLLGATE_STATUS_LISTEN", format!("127.0.0.1:{status}")),
        ("TOLLGATE_CLUSTER_CONTROL_PLANE", cluster.to_string()),
        ("TOLLGATE_CLUSTER_TOKEN", token.to_string()),
    ];
    env.extend(extra.iter().cloned());
    // bench/realm-lookups gives data planes a CPU of their own (`BENCH_DP_CPU`), away from this
    // bench and the control plane.
    let cpu = std::env::var("BENCH_DP_CPU").ok().filter(|c| !c.is_empty());
    let node = spawn_on(cpu.as_deref(), bin, &env, &dir.join(format!("{name}.log")))?;
    let ready = format!("http://127.0.0.1:{status}/status/ready");
    wait_until(Duration::from_secs(30), async || http.get(&ready).send().await.is_ok_and(|r| r.status() == 200))
        .await
        .map_err(|_| format!("the data plane never became ready ({ready})"))?;
    let url = format!("http://127.0.0.1:{proxy}/r");
    wait_until(Duration::from_secs(30), async || http.get(&url).send().await.is_ok_and(|r| r.status() == 401))
        .await
        .map_err(|_| "the data plane never served the keyed route".to_string())?;
    Ok((node, url))
}

/// One proxied request with `key`: its status and how long it took.
async fn timed(http: &reqwest::Client, url: &str, key: &str) -> Result<(u16, Duration), String> {
    let started = Instant::now();
    let r = http.get(url).header("apikey", key).send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    r.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, started.elapsed()))
}

/// First-request latencies of `keys` (each expected to answer 200).
async fn first_requests(http: &reqwest::Client, url: &str, keys: &[String]) -> Result<Vec<Duration>, String> {
    let mut samples = Vec::with_capacity(keys.len());
    for key in keys {
        let (status, took) = timed(http, url, key).await?;
        if status != 200 {
            return Err(format!("key {key}: {status}, wanted 200"));
        }
        samples.push(took);
    }
    samples.sort();
    Ok(samples)
}

/// The cached key's prober: this example run again as `bench-realms probe <url> <key>`, at real-time
/// priority when `chrt` allows it, so that neither the storm's generator nor the control plane
/// (which share its CPU here, and would be other machines in production) delays its own side.
struct Probe {
    child: std::process::Child,
}

impl Probe {
    fn start(url: &str, key: &str, upstream_port: u16) -> Result<Probe, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let realtime =
            std::process::Command::new("chrt").args(["-f", "10", "true"]).status().is_ok_and(|s| s.success());
        let mut command = if realtime {
            let mut c = std::process::Command::new("chrt");
            c.args(["-f", "10"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        };
        let child = command
            .args(["probe", url, key, &upstream_port.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the probe: {e}"))?;
        Ok(Probe { child })
    }

    /// Stops the probe (closing its stdin); its samples, sorted.
    fn finish(mut self) -> Result<Vec<Duration>, String> {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("the probe failed: {text}"));
        }
        let mut samples: Vec<Duration> =
            text.lines().filter_map(|l| l.trim().parse().ok()).map(Duration::from_nanos).collect();
        samples.sort();
        Ok(samples)
    }
}

/// The probe process: serves the upstream of `url` on `upstream_port` (at the probe's priority too),
/// requests `key` (expected to answer 200) every [`PROBE_EVERY`] on one connection until stdin
/// closes, then prints each latency in nanoseconds.
async fn run_probe(url: &str, key: &str, upstream_port: &str) -> Result<(), String> {
    let upstream =
        tokio::net::TcpListener::bind(format!("127.0.0.1:{upstream_port}")).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(upstream, axum::Router::new().fallback(async || "ok")).await;
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        stopper.store(true, Ordering::Relaxed);
    });
    let http = reqwest::Client::new();
    // Opens the connection; not a sample.
    timed(&http, url, key).await?;
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (status, took) = timed(&http, url, key).await?;
        if status != 200 {
            return Err(format!("cached key {key}: {status}, wanted 200"));
        }
        samples.push(took);
    }
    let lines: Vec<String> = samples.iter().map(|d| d.as_nanos().to_string()).collect();
    println!("{}", lines.join("\n"));
    Ok(())
}

/// What one storm did.
struct Storm {
    keys: usize,
    /// From the first request sent to the last answer.
    took: Duration,
    /// Answers other than 401, and requests that failed.
    not_401: usize,
    failed: usize,
    /// CPU time the data plane, the control plane and this bench (client and probe) used meanwhile.
    cpu: [Duration; 3],
}

impl Storm {
    fn rate(&self) -> f64 {
        self.keys as f64 / self.took.as_secs_f64()
    }
}

/// Sends `keys` distinct unknown realm keys (`<tag>-<i>`) to `url` at [`STORM_RATE`] a second, spread
/// evenly over [`STORM_CONNECTIONS`] keep-alive connections. The requests are written and their
/// answers read by hand: a general-purpose client would spend more CPU than the data plane under
/// test, on a machine it shares with it.
async fn storm(url: &str, tag: &str, keys: usize) -> Storm {
    let Some((addr, path)) = url.strip_prefix("http://").and_then(|u| u.split_once('/')) else {
        return Storm { keys, took: Duration::ZERO, not_401: 0, failed: keys, cpu: [Duration::ZERO; 3] };
    };
    let (addr, path) = (addr.to_string(), format!("/{path}"));
    let period = Duration::from_secs_f64(STORM_CONNECTIONS as f64 / STORM_RATE as f64);
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..STORM_CONNECTIONS {
        let (addr, path, tag) = (addr.clone(), path.clone(), tag.to_string());
        // Connection c sends keys c, c + N, c + 2N, …, offset by c/N of a period from the others.
        let first_at = started + period.mul_f64(c as f64 / STORM_CONNECTIONS as f64);
        tasks.spawn(async move {
            let (mut not_401, mut failed) = (0, 0);
            let mut conn = tokio::net::TcpStream::connect(&addr).await.ok();
            let mut tick = tokio::time::interval_at(first_at, period);
            let mut buf = Vec::with_capacity(4096);
            for i in (c..keys).step_by(STORM_CONNECTIONS) {
                tick.tick().await;
                let status = match conn.as_mut() {
                    Some(stream) => exchange(stream, &mut buf, &path, &format!("{tag}-{i}")).await,
                    None => None,
                };
                match status {
                    Some(401) => {}
                    Some(_) => not_401 += 1,
                    None => {
                        failed += 1;
                        conn = tokio::net::TcpStream::connect(&addr).await.ok();
                    }
                }
            }
            (not_401, failed)
        });
    }
    let (mut not_401, mut failed) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (n, f) = done.unwrap_or((0, keys / STORM_CONNECTIONS));
        not_401 += n;
        failed += f;
    }
    Storm { keys, took: started.elapsed(), not_401, failed, cpu: [Duration::ZERO; 3] }
}

/// One `GET path` with `apikey: key` on a keep-alive connection; the answer's status once its body
/// (`Content-Length`) has been read, or None if the connection failed.
async fn exchange(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, path: &str, key: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\napikey: {key}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = std::str::from_utf8(&buf[..head_end]).ok()?;
        let status = head.get(9..12)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("content-length")))
            .and_then(|(_, v)| v.trim().parse().ok())?;
        if buf.len() >= head_end + 4 + length {
            return Some(status);
        }
    }
}

/// Writes `n` realm consumers with one legacy key each (secret `bulk-<i>`) into the stopped control
/// plane's store, row for row as the Realms API writes them.
async fn bulk_load(db: &Path, realm: &str, n: usize) -> Result<(), String> {
    let options = SqliteConnectOptions::new()
        .filename(db)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Off)
        .pragma("cache_size", "-262144");
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.map_err(|e| e.to_string())?;
    let insert = |table: &str, columns: &str, width: usize, rows: usize| {
        let row = format!("({})", vec!["?"; width].join(", "));
        format!("INSERT INTO {table} ({columns}) VALUES {}", vec![row; rows].join(", "))
    };
    let now = now_secs();
    let mut i = 0;
    while i < n {
        let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
        let commit_end = (i + ROWS_PER_COMMIT).min(n);
        while i < commit_end {
            let end = (i + ROWS_PER_INSERT).min(commit_end);
            let consumers_sql =
                insert("realm_consumers", "id, realm_id, username, custom_id, body, created_at", 6, end - i);
            let keys_sql = insert("realm_keys", "id, realm_id, consumer_id, secret_hash, body, created_at", 6, end - i);
            let mut consumers = sqlx::query(AssertSqlSafe(consumers_sql));
            let mut keys = sqlx::query(AssertSqlSafe(keys_sql));
            for j in i..end {
                let consumer_id = uuid::Uuid::new_v4().to_string();
                let username = format!("bulk-{j}");
                let consumer = json!({
                    "id": consumer_id, "username": username, "custom_id": null, "type": "proxy", "tags": [],
                    "consumer_groups": [], "created_at": now, "updated_at": now,
                });
                consumers = consumers
                    .bind(consumer_id.clone())
                    .bind(realm.to_string())
                    .bind(username)
                    .bind(None::<String>)
                    .bind(consumer.to_string())
                    .bind(now);
                let key_id = uuid::Uuid::new_v4().to_string();
                let key = json!({
                    "id": key_id, "type": "legacy", "tags": [], "consumer_id": consumer_id,
                    "created_at": now, "updated_at": now,
                });
                keys = keys
                    .bind(key_id)
                    .bind(realm.to_string())
                    .bind(consumer_id)
                    .bind(sha256_hex(&format!("bulk-{j}")))
                    .bind(key.to_string())
                    .bind(now);
            }
            consumers.execute(&mut *tx).await.map_err(|e| e.to_string())?;
            keys.execute(&mut *tx).await.map_err(|e| e.to_string())?;
            i = end;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut conn).await.map_err(|e| e.to_string())?;
    conn.close().await.map_err(|e| e.to_string())
}

/// What the parts share: the control plane, its data plane token, the realm consumer's keys path,
/// the control plane's core-entities path, and the key-auth `identity_realms` of route `/r`.
#[derive(Clone, Copy)]
struct Setup<'a> {
    cp: &'a ControlPlane,
    dp_token: &'a str,
    keys_path: &'a str,
    core: &'a str,
    identity: &'a Value,
}

/// Part 4: a cached key's latency before and during a storm of unknown realm keys, and the data
/// plane's VmRSS across two storms.
async fn lookup_storm(bin: &Path, dir: &Path, setup: &Setup<'_>, http: &reqwest::Client) -> Result<Vec<Row>, String> {
    let Setup { cp, dp_token, keys_path, core, identity } = *setup;
    let storm_keys = STORM_RATE * STORM_TIME.as_secs() as usize;
    // Created before the data plane starts (every realm write purges the caches): the cached key,
    // and a route `/storm` like `/r` whose upstream the probe process serves.
    let cached = "storm-cached".to_string();
    cp.post(keys_path, json!({"type": "legacy", "secret": cached})).await?;
    let probe_upstream = free_port();
    cp.post(&format!("{core}/services"), json!({"name": "storm", "url": format!("http://127.0.0.1:{probe_upstream}")}))
        .await?;
    cp.post(&format!("{core}/services/storm/routes"), json!({"name": "storm", "paths": ["/storm"]})).await?;
    let config = json!({"identity_realms": identity});
    cp.post(&format!("{core}/routes/storm/plugins"), json!({"name": "key-auth", "config": config})).await?;
    let cache_size = [("TOLLGATE_REALM_CACHE_SIZE", STORM_CACHE_SIZE.to_string())];
    let (dp, r_url) = data_plane(bin, dir, "dp-storm", &cp.cluster, dp_token, http, &cache_size).await?;
    let url = format!("{}storm", r_url.trim_end_matches('r'));
    wait_until(Duration::from_secs(30), async || timed(http, &url, "none").await.is_ok_and(|(s, _)| s == 401))
        .await
        .map_err(|_| "the data plane never served /storm".to_string())?;
    // Before: the cached key alone.
    let probing = Probe::start(&url, &cached, probe_upstream)?;
    tokio::time::sleep(STORM_TIME).await;
    let before = probing.finish()?;
    let rss_before = dp.rss();
    // During: the same, while the storm runs.
    eprintln!("bench: lookup storm, {} unknown keys at {}/s", grouped(storm_keys), grouped(STORM_RATE));
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let probing = Probe::start(&url, &cached, probe_upstream)?;
    let cpu = [dp.cpu(), cp.node.cpu(), cpu_time("self")];
    let mut first = storm(&url, &format!("storm1-{nonce}"), storm_keys).await;
    first.cpu = [dp.cpu() - cpu[0], cp.node.cpu() - cpu[1], cpu_time("self") - cpu[2]];
    let during = probing.finish()?;
    let rss_first = dp.rss();
    let cpu = [dp.cpu(), cp.node.cpu(), cpu_time("self")];
    let mut second = storm(&url, &format!("storm2-{nonce}"), storm_keys).await;
    second.cpu = [dp.cpu() - cpu[0], cp.node.cpu() - cpu[1], cpu_time("self") - cpu[2]];
    let rss_second = dp.rss();
    // `/storm`'s upstream left with the probe; `/r` tries the same realms.
    let (status, _) = timed(http, &r_url, &cached).await?;
    if status != 200 {
        return Err(format!("key {cached} after the storms: {status}, wanted 200"));
    }
    drop(dp);

    let mut rows = Vec::new();
    rows.push(latency_row(
        format!(
            "storm: cached realm key every {} ms, before the storm ({} s)",
            PROBE_EVERY.as_millis(),
            STORM_TIME.as_secs()
        ),
        &before,
    ));
    let mut row = latency_row(
        format!(
            "storm: the same key during {} distinct unknown keys at {}/s (each a lookup on the control plane → 401)",
            grouped(storm_keys),
            grouped(STORM_RATE)
        ),
        &during,
    );
    let (p50_before, p50_during) = (percentile(&before, 0.5), percentile(&during, 0.5));
    row.target = "cached keys slowed by ≤ 10% (p50)";
    row.verdict = if p50_during.as_secs_f64() <= p50_before.as_secs_f64() * 1.10 { "met" } else { "MISSED" };
    row.result = format!(
        "{} ({:+.0}% p50)",
        row.result,
        (p50_during.as_secs_f64() / p50_before.as_secs_f64().max(f64::MIN_POSITIVE) - 1.0) * 100.0
    );
    rows.push(row);
    let describe = |s: &Storm| {
        format!(
            "{} keys/s ({} in {:.2} s; {} not 401, {} failed; CPU, % of a core: data plane {:.0}, control plane {:.0}, bench {:.0})",
            grouped(s.rate().round() as usize),
            grouped(s.keys),
            s.took.as_secs_f64(),
            s.not_401,
            s.failed,
            s.cpu[0].as_secs_f64() / s.took.as_secs_f64() * 100.0,
            s.cpu[1].as_secs_f64() / s.took.as_secs_f64() * 100.0,
            s.cpu[2].as_secs_f64() / s.took.as_secs_f64() * 100.0
        )
    };
    let mut row = Row {
        what: format!(
            "storm: unknown keys sent through the proxy, evenly paced over {STORM_CONNECTIONS} keep-alive connections (first; second)"
        ),
        samples: format!("{} + {}", grouped(first.keys), grouped(second.keys)),
        result: format!("{}; {}", describe(&first), describe(&second)),
        target: "10,000 keys/s, all 401",
        verdict: "met",
    };
    let slow = |s: &Storm| s.rate() < STORM_RATE as f64 * 0.95;
    if slow(&first) || slow(&second) || first.not_401 + first.failed + second.not_401 + second.failed > 0 {
        row.verdict = "MISSED";
    }
    rows.push(row);
    rows.push(Row {
        what: format!(
            "storm: data plane VmRSS (TOLLGATE_REALM_CACHE_SIZE={}): before → after the first storm → after a second",
            grouped(STORM_CACHE_SIZE).replace(',', "")
        ),
        samples: "—".into(),
        result: format!("{} → {} → {}", mib(rss_before), mib(rss_first), mib(rss_second)),
        target: "no further growth (second ≤ first + 10%)",
        verdict: if rss_second as f64 <= rss_first as f64 * 1.10 { "met" } else { "MISSED" },
    });
    Ok(rows)
}

/// One row of the output table.
struct Row {
    what: String,
    samples: String,
    result: String,
    target: &'static str,
    verdict: &'static str,
}

fn latency_row(what: String, s: &[Duration]) -> Row {
    let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
    Row {
        what,
        samples: s.len().to_string(),
        result: format!(
            "p50 {} ms, p99 {} ms, max {} ms",
            ms(percentile(s, 0.5)),
            ms(percentile(s, 0.99)),
            ms(s.last().copied().unwrap_or_default())
        ),
        target: "",
        verdict: "",
    }
}

async fn run(
    bin: &Path,
    dir: &Path,
    keys: usize,
    revocations: usize,
    consumers: usize,
    with_storm: bool,
) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let upstream_port = upstream.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(async || "ok");
        let _ = axum::serve(upstream, app).await;
    });

    let cp_prefix = dir.join("cp");
    let cp_log = dir.join("cp.log");
    let token = admin_token(bin, &cp_prefix)?;
    let cp = ControlPlane::start(bin, &cp_prefix, &token, &cp_log).await?;
    let plane = cp.post("/v2/control-planes", json!({"name": "bench"})).await?;
    let id = plane["id"].as_str().ok_or("no id")?.to_string();
    let dp_token = cp.post(&format!("/v2/control-planes/{id}/data-plane-tokens"), json!({})).await?;
    let dp_token = dp_token["token"].as_str().ok_or("no token")?.to_string();
    let realm = cp.post("/v1/realms", json!({"name": "bench", "allowed_control_planes": [id]})).await?;
    let realm = realm["id"].as_str().ok_or("no realm id")?.to_string();
    let core = format!("/v2/control-planes/{id}/core-entities");
    cp.post(&format!("{core}/services"), json!({"name": "s", "url": format!("http://127.0.0.1:{upstream_port}")}))
        .await?;
    cp.post(&format!("{core}/services/s/routes"), json!({"name": "r", "paths": ["/r"]})).await?;
    let identity = json!([{"scope": "realm", "id": realm}, {"scope": "cp"}]);
    cp.post(&format!("{core}/routes/r/plugins"), json!({"name": "key-auth", "config": {"identity_realms": identity}}))
        .await?;
    let consumer = cp.post(&format!("/v1/realms/{realm}/consumers"), json!({"username": "bench"})).await?;
    let keys_path = format!("/v1/realms/{realm}/consumers/{}/keys", consumer["id"].as_str().ok_or("no consumer id")?);

    let http = reqwest::Client::new();
    let (dp, url) = data_plane(bin, dir, "dp-1", &cp.cluster, &dp_token, &http, &[]).await?;

    // 1. First requests of fresh keys (all created first: every realm write purges the caches), then cached.
    let mut fresh = Vec::with_capacity(keys);
    for k in 0..keys {
        let secret = format!("fresh-{k}");
        cp.post(&keys_path, json!({"type": "legacy", "secret": secret})).await?;
        fresh.push(secret);
    }
    let first = first_requests(&http, &url, &fresh).await?;
    let cached = first_requests(&http, &url, &fresh).await?;
    rows.push(latency_row(
        "first request of a new realm key (miss → lookup over the cluster link → hit)".into(),
        &first,
    ));
    rows.push(latency_row("the same keys again (cached on the data plane)".into(), &cached));

    // 2. Revocation: cached key, DELETE on the control plane, poll every 2 ms until 401.
    let mut revoked = Vec::with_capacity(revocations);
    for k in 0..revocations {
        let secret = format!("revoked-{k}");
        let key = cp.post(&keys_path, json!({"type": "legacy", "secret": secret})).await?;
        let key_id = key["id"].as_str().ok_or("no key id")?.to_string();
        let (status, _) = timed(&http, &url, &secret).await?;
        if status != 200 {
            return Err(format!("key {secret}: {status} before its revocation, wanted 200"));
        }
        let sent = Instant::now();
        cp.delete(&format!("{keys_path}/{key_id}")).await?;
        loop {
            let (status, _) = timed(&http, &url, &secret).await?;
            if status == 401 {
                revoked.push(sent.elapsed());
                break;
            }
            if sent.elapsed() > Duration::from_secs(10) {
                revoked.push(Duration::from_secs(10));
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    revoked.sort();
    let mut row = latency_row("revocation: DELETE sent on the control plane → data plane answers 401".into(), &revoked);
    row.target = "p99 ≤ 1000 ms";
    row.verdict = if percentile(&revoked, 0.99) <= Duration::from_millis(1000) { "met" } else { "MISSED" };
    rows.push(row);
    drop(dp);

    // 4. Lookup storm on a data plane with a bounded realm cache.
    if with_storm {
        rows.extend(
            lookup_storm(
                bin,
                dir,
                &Setup { cp: &cp, dp_token: &dp_token, keys_path: &keys_path, core: &core, identity: &identity },
                &http,
            )
            .await?,
        );
    }

    // 3. A control plane with `consumers` realm consumers: restarted from its store without them, stopped,
    // bulk-loaded, restarted; then uncached lookups from a fresh data plane.
    cp.node.stop();
    let cp = ControlPlane::start(bin, &cp_prefix, &token, &cp_log).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = cp.node.rss();
    cp.node.stop();
    eprintln!("bench: writing {} realm consumers and keys into the control plane's store", grouped(consumers));
    let started = Instant::now();
    bulk_load(&cp_prefix.join("tollgate.db"), &realm, consumers).await?;
    let load_time = started.elapsed();
    let started = Instant::now();
    let cp = ControlPlane::start(bin, &cp_prefix, &token, &cp_log).await?;
    let restart_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_loaded = cp.node.rss();
    let count = cp.admin.get(format!("{}/v1/realms/{realm}/consumers?page[size]=1", cp.base)).send().await;
    if !count.is_ok_and(|r| r.status() == 200) {
        return Err("the restarted control plane does not list the realm's consumers".into());
    }
    let (_dp, url) = data_plane(bin, dir, "dp-2", &cp.cluster, &dp_token, &http, &[]).await?;
    // Warm the cluster link with a key of part 1 (not cached on this new data plane).
    let (status, _) = timed(&http, &url, &fresh.first().cloned().unwrap_or_default()).await?;
    if keys > 0 && status != 200 {
        return Err(format!("warm-up key: {status}, wanted 200"));
    }
    let samples = SPREAD_SAMPLES.min(consumers);
    let spread: Vec<String> =
        (0..samples).map(|i| format!("bulk-{}", i * consumers / samples + consumers / samples / 2)).collect();
    let large = first_requests(&http, &url, &spread).await?;
    let rss_after = cp.node.rss();
    rows.push(latency_row(
        format!("first request of a realm key, {} realm consumers on the control plane", grouped(consumers)),
        &large,
    ));
    rows.push(Row {
        what: format!("bulk load of {} consumers + keys into the stopped control plane's SQLite", grouped(consumers)),
        samples: "1".into(),
        result: format!(
            "{:.1} s (restart until the Admin API answers: {:.2} s)",
            load_time.as_secs_f64(),
            restart_time.as_secs_f64()
        ),
        target: "",
        verdict: "",
    });
    rows.push(Row {
        what: "control plane VmRSS, restarted from its store: without → with them → after the lookups".into(),
        samples: "—".into(),
        result: format!("{} → {} → {}", mib(rss_before), mib(rss_loaded), mib(rss_after)),
        target: "",
        verdict: "",
    });
    cp.node.stop();
    Ok(rows)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if let (Some("probe"), Some(url), Some(key), Some(port)) =
        (args.get(1).map(String::as_str), args.get(2), args.get(3), args.get(4))
    {
        return run_probe(url, key, port).await;
    }
    let bin = PathBuf::from(args.get(1).ok_or("usage: bench-realms <tollgate binary> [keys] [revocations]")?);
    let keys: usize = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(200);
    let revocations: usize = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(50);
    let consumers: usize = std::env::var("BENCH_REALM_CONSUMERS")
        .ok()
        .and_then(|c| c.replace(['_', ','], "").parse().ok())
        .unwrap_or(1_000_000);
    if consumers == 0 {
        return Err("BENCH_REALM_CONSUMERS must be at least 1".into());
    }
    let dir = std::env::temp_dir().join(format!("tollgate-realms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let with_storm = std::env::var("BENCH_REALM_STORM").map_or(true, |v| v != "0");
    let rows = run(&bin, &dir, keys, revocations, consumers, with_storm).await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return Err(format!("{e} (logs kept in {})", dir.display())),
    };
    println!(
        "Realm key lookups on a data plane: {keys} new keys, {revocations} revocations, {} realm consumers.",
        grouped(consumers)
    );
    println!();
    println!("| measurement | samples | result | target | |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} | {} |", r.what, r.samples, r.result, r.target, r.verdict);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
