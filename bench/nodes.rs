//! What the benchmark examples share: free loopback ports, Tollgate nodes started from the release
//! binary (stopped, measured, killed on drop), waiting, percentiles.
// Each example uses a different part of this file.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

pub struct Node {
    pub child: Child,
}

impl Node {
    /// SIGTERM, then waits for the node to finish (killing it after 10 s).
    pub fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }

    /// CPU time used so far.
    pub fn cpu(&self) -> Duration {
        cpu_time(&self.child.id().to_string())
    }
}

/// CPU time (user + system) a process used so far ("self" for this one), from /proc/<pid>/stat at 100
/// ticks a second.
pub fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster certificate every hybrid node of a benchmark shares, made once with
/// `tollgate hybrid gen-cert` in the system's temporary directory: the `TOLLGATE_CLUSTER_CERT` and
/// `TOLLGATE_CLUSTER_CERT_KEY` a control or data plane needs.
pub fn cluster_env(bin: &Path) -> Vec<(&'static str, String)> {
    static PAIR: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (cert, key) = PAIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tollgate-bench-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        let (cert, key) = (dir.join("cluster.crt"), dir.join("cluster.key"));
        let _ = Command::new(bin).args(["hybrid", "gen-cert"]).arg(&cert).arg(&key).output();
        (cert.display().to_string(), key.display().to_string())
    });
    vec![("TOLLGATE_CLUSTER_CERT", cert.clone()), ("TOLLGATE_CLUSTER_CERT_KEY", key.clone())]
}

/// Whether the environment starts a control or data plane.
fn hybrid(env: &[(&str, String)]) -> bool {
    env.iter().any(|(k, v)| *k == "TOLLGATE_ROLE" && (v == "control_plane" || v == "data_plane"))
}

pub fn spawn(bin: &Path, env: &[(&str, String)], log: &Path) -> Result<Node, String> {
    spawn_on(None, bin, env, log)
}

/// Starts a node, pinned to CPU `cpu` (with `taskset`) when given.
pub fn spawn_on(cpu: Option<&str>, bin: &Path, env: &[(&str, String)], log: &Path) -> Result<Node, String> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(|e| e.to_string())?;
    let mut command = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpu]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let cluster = if hybrid(env) { cluster_env(bin) } else { Vec::new() };
    let child = command
        .arg("start")
        .env_clear()
        // Kong Manager's default (0.0.0.0:8002) would be shared by every node of a bench.
        .env("TOLLGATE_ADMIN_GUI_LISTEN", "off")
        .envs(cluster.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("TOLLGATE_LOG_LEVEL", "notice")
        .env("TOLLGATE_WORKER_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    Ok(Node { child })
}

pub async fn wait_until(within: Duration, mut ok: impl AsyncFnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ok().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("timed out".into())
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Mints an `org_admin` token in a control plane's store (before it starts) and returns it.
pub fn admin_token(bin: &Path, prefix: &Path) -> Result<String, String> {
    let created = Command::new(bin)
        .args(["tokens", "create", "--name", "bench", "--role", "org_admin"])
        .env_clear()
        .env("TOLLGATE_PREFIX", prefix)
        .env("TOLLGATE_ROLE", "control_plane")
        .envs(cluster_env(bin))
        .output()
        .map_err(|e| e.to_string())?;
    let token = String::from_utf8_lossy(&created.stdout).trim().to_string();
    if token.is_empty() {
        return Err(format!("tokens create failed: {}", String::from_utf8_lossy(&created.stderr)));
    }
    Ok(token)
}

/// Resident memory (VmRSS) of process `pid`, in bytes (0 once it is gone).
pub fn rss_of(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// Peak resident memory (VmHWM) of process `pid`, in bytes (0 once it is gone).
pub fn peak_rss_of(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// A size in kB from /proc/<pid>/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A minimal upstream on a free loopback port answering every request `200 ok`, served by this
/// process's runtime; its port.
pub async fn echo_upstream() -> Result<u16, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok(port)
}
