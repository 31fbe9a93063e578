//! The control plane's side of the cluster link: accepts data planes on `cluster_listen` (a
//! WebSocket at `/v1/outlet`, `Authorization: Bearer <data plane token>`), keeps the latest
//! configuration of every control plane that has data planes in a `watch` channel (so a slow or
//! dead data plane never holds up a write or another data plane), re-exports a control plane when
//! the store's change feed says it changed, and tracks each data plane for `/nodes`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;

use super::protocol::{Notice, OUTLET_PATH, Published, RealmConsumer, ToControlPlane, export};
use crate::model::schema::now_secs;
use crate::store::{Cursor, DataPlaneToken, RealmTable, Store};

/// A data plane that says nothing for this long is dropped (Kong: 45 s; pings come every 5 s here).
const SILENCE: Duration = Duration::from_secs(45);

/// What `/nodes` shows of a data plane.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub control_plane_id: String,
    pub hostname: String,
    pub version: String,
    pub config_hash: Option<String>,
    pub last_ping: i64,
    pub created_at: i64,
    pub connected: bool,
    /// Why the last configuration was refused, if it was.
    pub rejected: Option<String>,
}

/// The latest configuration of one control plane, as sent.
#[derive(Debug, Clone)]
pub struct Latest {
    pub hash: String,
    pub version: i64,
    pub message: Utf8Bytes,
}

#[derive(Debug)]
pub struct Hub {
    store: Store,
    /// By control plane id: the latest configuration (None until first exported).
    channels: Mutex<HashMap<String, watch::Sender<Option<Latest>>>>,
    nodes: Mutex<HashMap<String, NodeInfo>>,
    /// Open links by data plane token id, to drop them when the token is revoked.
    links: Mutex<HashMap<String, Vec<Arc<Notify>>>>,
    /// Wakes the publisher (a control plane got its first data plane).
    wake: Notify,
    /// Realm consumers or keys changed: every link tells its data plane to drop cached lookups.
    purge: tokio::sync::broadcast::Sender<()>,
}

impl Hub {
    pub fn new(store: Store) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            channels: Mutex::default(),
            nodes: Mutex::default(),
            links: Mutex::default(),
            wake: Notify::new(),
            purge: tokio::sync::broadcast::Sender::new(16),
        })
    }

    /// Tells every data plane to drop its cached realm lookups (a realm, realm consumer or key
    /// changed); effective as soon as the message arrives.
    pub fn purge_realm_caches(&self) {
        let _ = self.purge.send(());
    }

    /// The realm consumer holding a key (by hash), trying `realms` in order and only those that
    /// allow `control_plane_id`; with the negative ttl (seconds) to cache a miss for.
    pub async fn lookup(
        &self,
        control_plane_id: &str,
        key_hash: &str,
        realms: &[String],
    ) -> Result<(Option<RealmConsumer>, u64), String> {
        let mut negative = None;
        for realm_id in realms {
            let Some(body) =
                self.store.realm_get(RealmTable::Realms, realm_id, &[]).await.map_err(|e| e.to_string())?
            else {
                continue;
            };
            let realm: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let minutes = |f: &str| realm[f].as_u64().unwrap_or(10) * 60;
            negative.get_or_insert(minutes("negative_ttl"));
            let allowed = realm["allow_all_control_planes"].as_bool() == Some(true)
                || realm["allowed_control_planes"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|c| c == "*" || c.as_str() == Some(control_plane_id)));
            if !allowed {
                continue;
            }
            let scope = [("realm_id", realm_id.clone()), ("secret_hash", key_hash.to_string())];
            let page =
                self.store.realm_page(RealmTable::Keys, &scope, &Cursor::First, 1).await.map_err(|e| e.to_string())?;
            let Some(key) = page.bodies.first().and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok()) else {
                continue;
            };
            let consumer_id = key["consumer_id"].as_str().unwrap_or_default();
            let consumer = self
                .store
                .realm_get(RealmTable::Consumers, consumer_id, &[("realm_id", realm_id.clone())])
                .await
                .map_err(|e| e.to_string())?;
            let Some(consumer) = consumer.and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok()) else {
                continue;
            };
            let names = |v: &serde_json::Value| -> Vec<String> {
                v["consumer_groups"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect())
                    .unwrap_or_default()
            };
            let mut groups = names(&realm);
            groups.extend(names(&consumer).into_iter().filter(|g| !names(&realm).contains(g)));
            return Ok((
                Some(RealmConsumer {
                    id: consumer_id.to_string(),
                    username: consumer["username"].as_str().unwrap_or_default().to_string(),
                    custom_id: consumer["custom_id"].as_str().map(str::to_string),
                    realm_id: realm_id.clone(),
                    key_id: key["id"].as_str().unwrap_or_default().to_string(),
                    groups,
                    ttl: minutes("ttl"),
                }),
                minutes("negative_ttl"),
            ));
        }
        Ok((None, negative.unwrap_or(600)))
    }

    /// The data planes of a control plane, most recently seen first.
    pub fn nodes(&self, control_plane_id: &str) -> Vec<NodeInfo> {
        let nodes = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<NodeInfo> =
            nodes.values().filter(|n| n.control_plane_id == control_plane_id).cloned().collect();
        out.sort_by(|a, b| b.last_ping.cmp(&a.last_ping).then(a.id.cmp(&b.id)));
        out
    }

    /// The hash every data plane of the control plane should run.
    pub fn expected_hash(&self, control_plane_id: &str) -> Option<String> {
        let channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        channels.get(control_plane_id).and_then(|c| c.borrow().as_ref().map(|l| l.hash.clone()))
    }

    /// Drops the links opened with a token (it was revoked).
    pub fn revoke(&self, token_id: &str) {
        let links = self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(token_id);
        for l in links.unwrap_or_default() {
            l.notify_one();
        }
    }

    fn subscribe(&self, control_plane_id: &str) -> watch::Receiver<Option<Latest>> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = channels.entry(control_plane_id.to_string()).or_insert_with(|| watch::Sender::new(None)).subscribe();
        drop(channels);
        self.wake.notify_one();
        rx
    }

    /// Exports `control_plane_id` (store key `cp`) and publishes it when its hash changed.
    async fn publish(&self, control_plane_id: &str, cp: &str) {
        match export(&self.store, cp).await {
            Ok(Published { version, hash, message }) => {
                let channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(tx) = channels.get(control_plane_id) {
                    tx.send_if_modified(|latest| {
                        if latest.as_ref().is_some_and(|l| l.hash == hash) {
                            return false;
                        }
                        *latest = Some(Latest { hash, version, message: Utf8Bytes::from(message) });
                        true
                    });
                }
            }
            Err(e) => tracing::error!(control_plane = control_plane_id, error = %e, "configuration export failed"),
        }
    }

    /// Follows the store's changes and republishes the control planes they touch.
    pub async fn run_publisher(self: Arc<Self>, poll: Duration) {
        let mut feed = self.store.feed(poll);
        let mut seen: i64 = self.store.version().await.unwrap_or_default();
        let mut fresh: BTreeSet<String> = BTreeSet::new();
        loop {
            tokio::select! {
                _ = feed.wait() => {}
                _ = self.wake.notified() => {}
            }
            // Control planes with data planes but nothing published yet.
            let pending: Vec<String> = {
                let channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                channels.iter().filter(|(_, tx)| tx.borrow().is_none()).map(|(id, _)| id.clone()).collect()
            };
            fresh.extend(pending);
            let touched: BTreeSet<String> = match self.store.changes_since(seen).await {
                Ok(Some((changes, to))) => {
                    seen = to;
                    changes.into_iter().map(|c| c.cp).collect()
                }
                // The change log no longer reaches back: republish everything.
                Ok(None) => {
                    seen = self.store.version().await.unwrap_or(seen);
                    let channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    fresh.extend(channels.keys().cloned());
                    BTreeSet::new()
                }
                Err(e) => {
                    tracing::error!(error = %e, "change feed unreadable; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let planes = match self.store.control_planes().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "control planes unreadable");
                    continue;
                }
            };
            let watched: Vec<String> = {
                let channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                channels.keys().cloned().collect()
            };
            for plane in planes.iter().filter(|p| watched.contains(&p.id)) {
                if touched.contains(&plane.cp) || fresh.contains(&plane.id) {
                    self.publish(&plane.id, &plane.cp).await;
                }
            }
            fresh.clear();
        }
    }

    /// Accepts data planes until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let hub = self.clone();
            tokio::spawn(async move {
                if let Err(e) = hub.link(stream).await {
                    tracing::info!(%peer, error = %e, "data plane link ended");
                }
            });
        }
    }

    /// One data plane's link, from handshake to close.
    async fn link(self: Arc<Self>, stream: TcpStream) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let tokens = self.store.data_plane_tokens(None).await.map_err(|e| e.to_string())?;
        let mut accepted: Option<DataPlaneToken> = None;
        let mut query = String::new();
        // The callback's signature is tungstenite's.
        #[allow(clippy::result_large_err)]
        let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            if req.uri().path() != OUTLET_PATH {
                return Err(refusal(404, "Not Found"));
            }
            query = req.uri().query().unwrap_or_default().to_string();
            let presented = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| crate::auth::hash(t.trim()));
            let Some(presented) = presented else { return Err(refusal(401, "A valid data plane token is required")) };
            for t in &tokens {
                if bool::from(t.token_hash.as_bytes().ct_eq(presented.as_bytes())) {
                    accepted = Some(t.clone());
                }
            }
            if accepted.is_some() { Ok(resp) } else { Err(refusal(401, "A valid data plane token is required")) }
        };
        let config = WebSocketConfig::default().max_message_size(Some(64 * 1024)).max_frame_size(Some(64 * 1024));
        let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config))
            .await
            .map_err(|e| format!("handshake refused: {e}"))?;
        let token = accepted.ok_or("no token")?;
        let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let node_id = params.get("node_id").cloned().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let revoked = Arc::new(Notify::new());
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(token.id.clone())
            .or_default()
            .push(revoked.clone());
        let now = now_secs();
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let created_at = nodes.get(&node_id).map_or(now, |n| n.created_at);
            nodes.insert(
                node_id.clone(),
                NodeInfo {
                    id: node_id.clone(),
                    control_plane_id: token.control_plane_id.clone(),
                    hostname: params.get("node_hostname").cloned().unwrap_or_default(),
                    version: params.get("node_version").cloned().unwrap_or_default(),
                    config_hash: params.get("config_hash").cloned().filter(|h| !h.is_empty()),
                    last_ping: now,
                    created_at,
                    connected: true,
                    rejected: None,
                },
            );
        }
        tracing::info!(node = %node_id, control_plane = %token.control_plane_id, "data plane connected");
        let mut latest = self.subscribe(&token.control_plane_id);
        let mut purged = self.purge.subscribe();
        // Answers to lookups, which run beside the link.
        let (answer_tx, mut answers) = tokio::sync::mpsc::channel::<String>(256);
        let (mut tx, mut rx) = ws.split();
        let mut running = params.get("config_hash").cloned().filter(|h| !h.is_empty());
        let result: Result<(), String> = loop {
            let to_send = latest.borrow_and_update().as_ref().filter(|l| running.as_ref() != Some(&l.hash)).cloned();
            if let Some(l) = to_send {
                if let Err(e) = tx.send(Message::Text(l.message.clone())).await {
                    break Err(e.to_string());
                }
                running = Some(l.hash.clone());
            }
            tokio::select! {
                changed = latest.changed() => {
                    if changed.is_err() {
                        break Ok(());
                    }
                }
                message = tokio::time::timeout(SILENCE, rx.next()) => {
                    match message {
                        Err(_) => break Err("silent for too long".into()),
                        Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break Ok(()),
                        Ok(Some(Err(e))) => break Err(e.to_string()),
                        Ok(Some(Ok(Message::Text(text)))) => {
                            if let Some((request, key_hash, realms)) = self.heard(&node_id, &text, &mut running) {
                                let (hub, answer_tx, cp) = (self.clone(), answer_tx.clone(), token.control_plane_id.clone());
                                tokio::spawn(async move {
                                    let answer = match hub.lookup(&cp, &key_hash, &realms).await {
                                        Ok((found, negative_ttl)) => Notice::LookupResult { request, found, negative_ttl },
                                        Err(e) => {
                                            tracing::error!(error = %e, "realm lookup failed");
                                            return;
                                        }
                                    };
                                    if let Ok(text) = serde_json::to_string(&answer) {
                                        let _ = answer_tx.send(text).await;
                                    }
                                });
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                    }
                }
                Some(answer) = answers.recv() => {
                    if let Err(e) = tx.send(Message::text(answer)).await {
                        break Err(e.to_string());
                    }
                }
                p = purged.recv() => {
                    if !matches!(p, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        let text = serde_json::to_string(&Notice::Purge).unwrap_or_default();
                        if let Err(e) = tx.send(Message::text(text)).await {
                            break Err(e.to_string());
                        }
                    }
                }
                _ = revoked.notified() => {
                    let _ = tx.send(Message::Close(None)).await;
                    break Err("its token was revoked".into());
                }
            }
        };
        if let Some(n) = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_mut(&node_id) {
            n.connected = false;
        }
        if let Some(list) = self.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_mut(&token.id) {
            list.retain(|l| !Arc::ptr_eq(l, &revoked));
        }
        result
    }

    /// Records what a data plane said; returns a lookup it asked for.
    fn heard(&self, node_id: &str, text: &str, running: &mut Option<String>) -> Option<(u64, String, Vec<String>)> {
        let Ok(msg) = serde_json::from_str::<ToControlPlane>(text) else {
            tracing::warn!(node = node_id, "unreadable message from a data plane");
            return None;
        };
        if let ToControlPlane::Lookup { request, key_hash, realms } = msg {
            return Some((request, key_hash, realms));
        }
        let mut nodes = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let node = nodes.get_mut(node_id)?;
        node.last_ping = now_secs();
        match msg {
            ToControlPlane::Hello { hostname, version, config_hash, .. } => {
                node.hostname = hostname;
                node.version = version;
                node.config_hash = config_hash;
            }
            ToControlPlane::Ping { config_hash } => node.config_hash = config_hash,
            ToControlPlane::Applied { hash } => {
                node.config_hash = Some(hash);
                node.rejected = None;
            }
            ToControlPlane::Rejected { hash, error } => {
                tracing::warn!(node = node_id, hash, error, "a data plane refused a configuration");
                node.rejected = Some(error);
                // Not sent again: only a new configuration may fix it.
                *running = Some(hash);
            }
            ToControlPlane::Lookup { .. } => {}
        }
        None
    }
}

fn refusal(status: u16, message: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(serde_json::json!({ "message": message }).to_string()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::UNAUTHORIZED);
    r
}
