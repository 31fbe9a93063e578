//! The data plane's side of the cluster link: connects to its control plane (reconnecting with
//! backoff and jitter), checks every configuration it receives by compiling it before swapping it in
//! (one that does not compile keeps the last good one and is reported back), writes the good one
//! atomically to `<prefix>/config.cache`, and after a restart serves from that cache until the
//! control plane answers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::protocol::{ConfigRows, OUTLET_PATH, ToControlPlane, ToDataPlane, rows_in_load_order};
use crate::config::Settings;
use crate::plugins::rate_limiting::Counters;
use crate::snapshot::SnapshotHolder;
use crate::snapshot::builder::ConfigState;

const PING_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the data plane stands, for its status API.
#[derive(Debug, Default, Clone)]
pub struct DataPlaneStatus {
    /// Hash of the configuration being served (None before the first one).
    pub config_hash: Option<String>,
    pub connected: bool,
}

#[derive(Debug)]
pub struct DataPlane {
    pub node_id: uuid::Uuid,
    pub hostname: String,
    control_plane: String,
    token: String,
    max_payload: usize,
    cache: PathBuf,
    holder: Arc<SnapshotHolder>,
    /// Rate-limiting counters, kept across configurations.
    counters: Arc<Counters>,
    status: Mutex<DataPlaneStatus>,
}

impl DataPlane {
    pub fn new(settings: &Settings, hostname: String, holder: Arc<SnapshotHolder>) -> Arc<DataPlane> {
        let prefix = settings.prefix.as_path();
        Arc::new(DataPlane {
            node_id: node_id(prefix),
            hostname,
            control_plane: settings.cluster_control_plane.clone(),
            token: settings.cluster_token.clone().unwrap_or_default(),
            max_payload: settings.cluster_max_payload,
            cache: prefix.join("config.cache"),
            holder,
            counters: Arc::new(Counters::default()),
            status: Mutex::default(),
        })
    }

    pub fn status(&self) -> DataPlaneStatus {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_status(&self, f: impl FnOnce(&mut DataPlaneStatus)) {
        f(&mut self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Serves the cached configuration, if there is one.
    pub fn load_cache(&self) {
        let Ok(text) = std::fs::read_to_string(&self.cache) else { return };
        match self.apply(&text) {
            Ok(hash) => tracing::info!(hash, "serving the cached configuration until the control plane answers"),
            Err(e) => tracing::error!(error = %e, path = %self.cache.display(), "cached configuration unusable"),
        }
    }

    /// Compiles a `reconfigure` message and swaps it in; returns its hash.
    fn apply(&self, text: &str) -> Result<String, String> {
        let ToDataPlane { kind, version, hash, config } =
            serde_json::from_str(text).map_err(|e| format!("unreadable configuration: {e}"))?;
        if kind != super::protocol::RECONFIGURE {
            return Err(format!("unknown message type '{kind}'"));
        }
        if super::protocol::config_hash(config.get()) != hash {
            return Err("configuration does not match its hash".into());
        }
        let rows: ConfigRows =
            serde_json::from_str(config.get()).map_err(|e| format!("unreadable configuration: {e}"))?;
        let mut state = ConfigState::from_rows(version, rows_in_load_order(&rows)?)?;
        state.use_counters(self.counters.clone());
        let snapshot = state.build(true)?;
        self.holder.store(snapshot);
        self.set_status(|s| s.config_hash = Some(hash.clone()));
        Ok(hash)
    }

    /// Writes the configuration next to the cache, flushes it, then renames it over the cache.
    fn write_cache(&self, text: &str) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.cache.with_extension("cache.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.cache)?;
        if let Some(dir) = self.cache.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Keeps the link to the control plane up until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        let mut last_problem = String::new();
        loop {
            match self.session().await {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    last_problem.clear();
                }
                Err(problem) => {
                    // One log line per kind of trouble, not one per retry.
                    if problem != last_problem {
                        tracing::error!(control_plane = %self.control_plane, "{problem}; retrying");
                        last_problem = problem;
                    }
                }
            }
            self.set_status(|s| s.connected = false);
            let jitter = rand::random_range(0.0..0.5);
            tokio::time::sleep(backoff.mul_f64(1.0 + jitter)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: hello, then configurations in and pings out until it breaks.
    async fn session(&self) -> Result<(), String> {
        let hash = self.status().config_hash.unwrap_or_default();
        let url = format!(
            "ws://{}{OUTLET_PATH}?node_id={}&node_hostname={}&node_version={}&config_hash={}",
            self.control_plane,
            self.node_id,
            url::form_urlencoded::byte_serialize(self.hostname.as_bytes()).collect::<String>(),
            crate::VERSION,
            hash
        );
        let mut request = url.into_client_request().map_err(|e| format!("bad cluster_control_plane: {e}"))?;
        let bearer =
            format!("Bearer {}", self.token).parse().map_err(|_| "cluster_token is not a valid header value")?;
        request.headers_mut().insert(http::header::AUTHORIZATION, bearer);
        let config =
            WebSocketConfig::default().max_message_size(Some(self.max_payload)).max_frame_size(Some(self.max_payload));
        let (ws, _) = match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
            Ok(c) => c,
            Err(WsError::Http(resp)) if resp.status() == http::StatusCode::UNAUTHORIZED => {
                return Err("the control plane refused the cluster token".into());
            }
            Err(e) => return Err(format!("cannot reach the control plane: {e}")),
        };
        tracing::info!(control_plane = %self.control_plane, "connected to the control plane");
        self.set_status(|s| s.connected = true);
        let (mut tx, mut rx) = ws.split();
        let hello = ToControlPlane::Hello {
            node_id: self.node_id.to_string(),
            hostname: self.hostname.clone(),
            version: crate::VERSION.to_string(),
            config_hash: self.status().config_hash,
        };
        send(&mut tx, &hello).await?;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = ping.tick() => send(&mut tx, &ToControlPlane::Ping { config_hash: self.status().config_hash }).await?,
                message = rx.next() => match message {
                    None | Some(Ok(Message::Close(_))) => return Err("the control plane closed the link".into()),
                    Some(Err(e)) => return Err(format!("cluster link broken: {e}")),
                    Some(Ok(Message::Text(text))) => {
                        let reply = match self.apply(&text) {
                            Ok(hash) => {
                                if let Err(e) = self.write_cache(&text) {
                                    tracing::error!(error = %e, "configuration cache not written");
                                }
                                tracing::info!(hash, "configuration applied");
                                ToControlPlane::Applied { hash }
                            }
                            Err(error) => {
                                tracing::error!(error, "configuration refused; keeping the last good one");
                                let hash = serde_json::from_str::<serde_json::Value>(&text)
                                    .ok()
                                    .and_then(|v| v["hash"].as_str().map(str::to_string))
                                    .unwrap_or_default();
                                ToControlPlane::Rejected { hash, error }
                            }
                        };
                        send(&mut tx, &reply).await?;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

async fn send<S>(tx: &mut S, message: &ToControlPlane) -> Result<(), String>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let text = serde_json::to_string(message).map_err(|e| e.to_string())?;
    tx.send(Message::text(text)).await.map_err(|e| format!("cluster link broken: {e}"))
}

/// A stable node id, kept in `<prefix>/node_id`.
fn node_id(prefix: &Path) -> uuid::Uuid {
    let path = prefix.join("node_id");
    if let Some(id) = std::fs::read_to_string(&path).ok().and_then(|s| uuid::Uuid::parse_str(s.trim()).ok()) {
        return id;
    }
    let id = uuid::Uuid::new_v4();
    let _ = std::fs::create_dir_all(prefix);
    let _ = std::fs::write(&path, id.to_string());
    id
}
