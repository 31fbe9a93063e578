//! The one harness for black-box tests: starts the real `tollgate` binary on free ports with its own
//! prefix, a real echo upstream over TCP, a DNS server of its own (`dns`), and PostgreSQL and Redis servers of its own (never the
//! machine's); speaks HTTP to them. Every process it starts dies with the test process.
#![allow(dead_code, unused_imports, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod collector;
pub mod dns;
pub mod postgres;
pub mod redis;
pub mod tied;
pub mod tls;
pub mod upstream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use postgres::{PgDatabase, psql};
pub use redis::{RedisServer, redis_ping};
pub use upstream::Upstream;

/// A gateway on the embedded store and an echo upstream for it.
pub async fn start() -> (Gateway, Upstream) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start().await;
    (gw, upstream)
}

/// An entity's `id`.
pub fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id: {v}")).to_string()
}

/// Kong's 404 body.
pub fn not_found() -> Value {
    serde_json::json!({"message": "Not found"})
}

/// The sorted member names of a JSON object.
pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect();
    k.sort();
    k
}

/// Kong's schema-violation body (code 2).
pub fn schema_violation(message: &str, fields: Value) -> Value {
    serde_json::json!({"code": 2, "name": "schema violation", "message": message, "fields": fields})
}

/// An HTTP client, sending `Authorization: Bearer <token>` when given one.
pub fn client(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {t}").parse().expect("header"));
    }
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// The cluster certificate every hybrid node of this test process shares (`cluster_mtls = shared`),
/// made once by `tollgate hybrid gen-cert`: `TOLLGATE_CLUSTER_CERT` and `TOLLGATE_CLUSTER_CERT_KEY`.
pub fn cluster_env() -> [(&'static str, String); 2] {
    static PAIR: std::sync::OnceLock<(tempfile::TempDir, String, String)> = std::sync::OnceLock::new();
    let (_, cert, key) = PAIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cluster.crt"), dir.path().join("cluster.key"));
        let out = Command::new(binary()).args(["hybrid", "gen-cert"]).arg(&cert).arg(&key).output().expect("gen-cert");
        assert!(out.status.success(), "gen-cert: {}", String::from_utf8_lossy(&out.stderr));
        (dir, cert.display().to_string(), key.display().to_string())
    });
    [("TOLLGATE_CLUSTER_CERT", cert.clone()), ("TOLLGATE_CLUSTER_CERT_KEY", key.clone())]
}

/// Whether settings make a control or data plane that was given no cluster certificate.
fn needs_cluster_pair<'a>(mut env: impl Iterator<Item = (&'a str, &'a str)>) -> bool {
    let mut hybrid = false;
    let mut given = false;
    for (k, v) in env.by_ref() {
        hybrid |= k == "TOLLGATE_ROLE" && (v == "control_plane" || v == "data_plane");
        given |= k == "TOLLGATE_CLUSTER_CERT";
    }
    hybrid && !given
}

/// Which store a gateway node uses.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite,
    Postgres(String),
}

/// A running `tollgate start`.
pub struct Gateway {
    child: Option<Child>,
    pub admin: String,
    pub proxy: String,
    pub proxy_port: u16,
    /// The status API (`status_listen`) and, on a control plane, where data planes connect.
    pub status: String,
    pub cluster: String,
    pub data_plane: bool,
    /// The TLS proxy and Admin API listeners, with [`Options::tls`].
    pub proxy_tls: Option<std::net::SocketAddr>,
    pub admin_tls: Option<std::net::SocketAddr>,
    /// The admin page (`admin_gui_listen`), with [`Options::gui`].
    pub gui: Option<String>,
    pub prefix: PathBuf,
    _dir: Option<tempfile::TempDir>,
    pub log: PathBuf,
    pub http: reqwest::Client,
}

/// Options for [`Gateway::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    pub db: Db,
    pub prefix: Option<PathBuf>,
    pub extra: Vec<(String, String)>,
    /// Sent as `Authorization: Bearer` on every request of the harness's client.
    pub token: Option<String>,
    /// Also listen with TLS (`ssl http2`) beside the cleartext proxy and Admin API listeners.
    pub tls: bool,
    /// Serve the admin page on a free port (otherwise `admin_gui_listen = off`).
    pub gui: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { db: Db::Sqlite, prefix: None, extra: Vec::new(), token: None, tls: false, gui: false }
    }
}

impl Gateway {
    pub async fn start() -> Gateway {
        Gateway::start_with(Options::default()).await
    }

    /// A `role = control_plane` node, with an `org_admin` token minted by the CLI beforehand; the
    /// harness's client sends it. Returns the node and the token.
    pub async fn start_control_plane() -> (Gateway, String) {
        Gateway::start_control_plane_with(Options::default()).await
    }

    /// [`Gateway::start_control_plane`] with more options (`prefix`, the role and the token are
    /// the control plane's).
    pub async fn start_control_plane_with(more: Options) -> (Gateway, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path().to_path_buf();
        let env = [("TOLLGATE_PREFIX", prefix.to_str().unwrap_or_default()), ("TOLLGATE_ROLE", "control_plane")];
        let (code, out, err) = run_cli(&["tokens", "create", "--name", "ci", "--role", "org_admin"], &env, &prefix);
        assert_eq!(code, 0, "tokens create: {err}");
        let token = out.trim().to_string();
        let mut extra = vec![("TOLLGATE_ROLE".to_string(), "control_plane".to_string())];
        extra.extend(more.extra.iter().cloned());
        let opts = Options { prefix: Some(prefix), extra, token: Some(token.clone()), ..more };
        let mut gw = Gateway::start_with(opts).await;
        gw._dir = Some(dir);
        (gw, token)
    }

    pub async fn start_with(opts: Options) -> Gateway {
        let (dir, prefix) = match &opts.prefix {
            Some(p) => (None, p.clone()),
            None => {
                let d = tempfile::tempdir().expect("tempdir");
                let p = d.path().to_path_buf();
                (Some(d), p)
            }
        };
        let mut last_err = String::new();
        for _ in 0..3 {
            let proxy_port = free_port();
            let admin_port = free_port();
            let (status_port, cluster_port) = (free_port(), free_port());
            let (proxy_tls_port, admin_tls_port) = (free_port(), free_port());
            let gui_port = free_port();
            let gui_listen = if opts.gui { format!("127.0.0.1:{gui_port}") } else { "off".to_string() };
            let (proxy_listen, admin_listen) = if opts.tls {
                (
                    format!("127.0.0.1:{proxy_port}, 127.0.0.1:{proxy_tls_port} http2 ssl"),
                    format!("127.0.0.1:{admin_port}, 127.0.0.1:{admin_tls_port} http2 ssl"),
                )
            } else {
                (format!("127.0.0.1:{proxy_port}"), format!("127.0.0.1:{admin_port}"))
            };
            let log = prefix.join(format!("gateway-{admin_port}.log"));
            std::fs::create_dir_all(&prefix).expect("prefix");
            let mut cmd = tied::command(binary(), "KILL", None);
            cmd.arg("start")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("TOLLGATE_PREFIX", &prefix)
                .env("TOLLGATE_PROXY_LISTEN", &proxy_listen)
                .env("TOLLGATE_ADMIN_LISTEN", &admin_listen)
                .env("TOLLGATE_STATUS_LISTEN", format!("127.0.0.1:{status_port}"))
                .env("TOLLGATE_CLUSTER_LISTEN", format!("127.0.0.1:{cluster_port}"))
                // Kong Manager's default (0.0.0.0:8002) would be shared by every node of the run.
                .env("TOLLGATE_ADMIN_GUI_LISTEN", &gui_listen)
                .env("TOLLGATE_LOG_LEVEL", "info")
                .env("TOLLGATE_WORKER_THREADS", "2")
                // Names resolve through the harness's DNS server, never the machine's.
                .env("TOLLGATE_DNS_RESOLVER", dns::TestDns::shared().addr.to_string())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"));
            if let Db::Postgres(name) = &opts.db {
                cmd.envs(postgres::env(name));
            }
            if needs_cluster_pair(opts.extra.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
                cmd.envs(cluster_env());
            }
            for (k, v) in &opts.extra {
                cmd.env(k, v);
            }
            let child = tied::spawn(cmd).expect("spawn tollgate");
            let mut gw = Gateway {
                child: Some(child),
                admin: format!("http://127.0.0.1:{admin_port}"),
                proxy: format!("http://127.0.0.1:{proxy_port}"),
                proxy_port,
                status: format!("http://127.0.0.1:{status_port}"),
                cluster: format!("127.0.0.1:{cluster_port}"),
                data_plane: opts.extra.iter().any(|(k, v)| k == "TOLLGATE_ROLE" && v == "data_plane"),
                proxy_tls: opts.tls.then(|| std::net::SocketAddr::from(([127, 0, 0, 1], proxy_tls_port))),
                admin_tls: opts.tls.then(|| std::net::SocketAddr::from(([127, 0, 0, 1], admin_tls_port))),
                gui: opts.gui.then(|| format!("http://127.0.0.1:{gui_port}")),
                prefix: prefix.clone(),
                _dir: None,
                log: log.clone(),
                http: client(opts.token.as_deref()),
            };
            if gw.wait_ready(Duration::from_secs(30)).await {
                gw._dir = dir;
                return gw;
            }
            last_err = std::fs::read_to_string(&log).unwrap_or_default();
            gw.kill();
        }
        panic!("tollgate did not start:\n{last_err}");
    }

    async fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            // A data plane has no Admin API: its status API says it is up.
            let probe =
                if self.data_plane { format!("{}/status", self.status) } else { format!("{}/status", self.admin) };
            // The answer must be Tollgate's status (the Admin API's has `server`, the status API's
            // `role`): a port picked free can be taken by another test's upstream before this node
            // binds it, and that upstream answers 200 to anything while this node exits.
            if let Ok(r) = self.http.get(probe).send().await
                && r.status() == 200
                && let Ok(body) = r.json::<Value>().await
                && (body.get("server").is_some() || body.get("role").is_some())
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGKILL, no cleanup: what a crash looks like.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let child = self.child.take()?;
        send_signal(child.id(), "TERM");
        wait_exit(child, Duration::from_secs(40))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.logs().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until at least `count` log lines contain `needle`: a barrier for what a test can only
    /// see in the log. Fails the test after `within`.
    pub async fn wait_for_log(&self, needle: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.log_count(needle) < count {
            assert!(
                Instant::now() < deadline,
                "{count} log lines with {needle:?} not seen within {within:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status API's `GET /status`.
    pub async fn node_status(&self) -> Value {
        let r = self.http.get(format!("{}/status", self.status)).send().await.expect("status request");
        r.json().await.expect("status body")
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    pub fn proxy_url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy)
    }

    /// POST a JSON body to the Admin API; returns status and JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.post(self.admin_url(path)).json(&body).send().await.expect("admin request");
        status_json(r).await
    }

    /// POST a form body (what `curl --data` sends).
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self.http.post(self.admin_url(path)).form(form).send().await.expect("admin request");
        status_json(r).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.put(self.admin_url(path)).json(&body).send().await.expect("admin request");
        status_json(r).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.http.patch(self.admin_url(path)).json(&body).send().await.expect("admin request");
        status_json(r).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.admin_url(path)).send().await.expect("admin request");
        status_json(r).await
    }

    pub async fn delete(&self, path: &str) -> u16 {
        self.http.delete(self.admin_url(path)).send().await.expect("admin request").status().as_u16()
    }

    /// Creates an entity and returns it, failing the test on anything but 201.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.post(path, body).await;
        assert_eq!(status, 201, "POST {path}: {v}");
        v
    }

    /// A service pointing at the upstream and a route for it, plus key-auth when asked.
    pub async fn service_and_route(&self, upstream: &Upstream, name: &str, route: Value) -> (Value, Value) {
        let service = self.create("/services", serde_json::json!({"name": name, "url": upstream.url("")})).await;
        let route = self.create(&format!("/services/{name}/routes"), route).await;
        (service, route)
    }

    /// GET through the proxy with extra headers.
    pub async fn call(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(self.proxy_url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("proxy request")
    }

    /// Polls the proxy until `ok` holds for its answer (changes apply asynchronously).
    pub async fn eventually<F>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        within: Duration,
        ok: F,
    ) -> reqwest::Response
    where
        F: Fn(&reqwest::Response) -> bool,
    {
        let deadline = Instant::now() + within;
        loop {
            let r = self.call(path, headers).await;
            if ok(&r) || Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let id = r.headers().get("x-tollgate-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = r.text().await.unwrap_or_default();
    let mut v = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    without_request_id(&mut v, id.as_deref());
    (status, v)
}

/// The body of a gateway answer without its `request_id`, once checked to be the request's
/// (`X-Tollgate-Request-Id`): 32 hex digits.
pub async fn gateway_json(r: reqwest::Response) -> Value {
    status_json(r).await.1
}

/// Removes a gateway answer's `request_id` after checking it is the one `header` carries.
pub fn without_request_id(body: &mut Value, header: Option<&str>) {
    if let Some(id) = body.as_object_mut().and_then(|m| m.remove("request_id")) {
        let id = id.as_str().expect("request_id is a string").to_string();
        assert_eq!(id.len(), 32, "request_id: {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "request_id: {id}");
        assert_eq!(Some(id.as_str()), header, "the body's request_id is the X-Tollgate-Request-Id header's");
    }
}

pub fn send_signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

fn wait_exit(mut child: Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

/// Runs `tollgate <args>` to completion with only the given environment.
pub fn run_cli(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> (i32, String, String) {
    let cluster = if needs_cluster_pair(env.iter().copied()) { cluster_env().to_vec() } else { Vec::new() };
    let out = Command::new(binary())
        .args(args)
        .env_clear()
        .envs(cluster)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Seconds into the current window of `size` seconds (UTC, aligned like the rate limiters).
pub fn into_window(size: u64) -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() % size).unwrap_or(0)
}

/// Waits for the next window of `size` seconds when fewer than `need` seconds are left in this one,
/// so a test's requests all land in one window.
pub async fn fit_in_window(size: u64, need: u64) {
    if size - into_window(size) < need {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let left = u128::from(size) * 1000 - ms % (u128::from(size) * 1000);
        tokio::time::sleep(Duration::from_millis(left as u64 + 50)).await;
    }
}
