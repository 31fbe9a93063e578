//! The control plane's side of the cluster link: accepts data planes on `cluster_listen` (a
//! WebSocket at `/v1/outlet`, `Authorization: Bearer <data plane token>`), keeps the latest
//! configuration of every control plane that has data planes in a `watch` channel (so a slow or
//! dead data plane never holds up a write or another data plane), re-exports a control plane when
//! the store's change feed says it changed, and tracks each data plane for `/nodes`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use futures_util::{SinkExt, StreamExt};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;

use super::protocol::{
    ConfigDigest, ENCODING_HEADER, Encoding, Notice, OUTLET_PATH, Published, RealmConsumer, ToControlPlane, advance,
    delta, export, part_text,
};
use crate::clock::now_secs;
use crate::store::{DataPlaneToken, KeyHolder, Store};

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
    /// The whole configuration, for data planes that need it: exported when first asked for
    /// (a change costs the control plane its delta, not a whole export), at that moment's version,
    /// which may be newer than `version`.
    full: Arc<tokio::sync::OnceCell<Option<Full>>>,
    /// The control plane's key in the store (where deltas are read from).
    cp: Arc<str>,
    /// Deltas to this configuration by the version they start from, each made once (from the
    /// store's change log) for every data plane at that version; `None`: send the whole.
    deltas: Arc<Mutex<HashMap<i64, DeltaCell>>>,
}

/// A delta made once, on first need (`None`: send the whole configuration).
type DeltaCell = Arc<tokio::sync::OnceCell<Option<Arc<Encoded>>>>;

/// A whole configuration ready to send, with its own version and hash.
#[derive(Debug, Clone)]
struct Full {
    version: i64,
    hash: String,
    encoded: Arc<Encoded>,
}

impl Latest {
    /// The whole configuration (exported on first need; `None` when the store cannot be read).
    async fn full(&self, store: &Store, max_payload: usize) -> Option<Full> {
        let made = self
            .full
            .get_or_init(|| async {
                match export(store, &self.cp, part_text(max_payload)).await {
                    Ok(p) => Some(Full::new(p, max_payload).await),
                    Err(e) => {
                        tracing::error!(error = %e, "configuration export failed");
                        None
                    }
                }
            })
            .await;
        made.clone()
    }

    /// The delta from `from` to this configuration, made on first need.
    async fn delta_from(&self, store: &Store, from: i64, max_payload: usize) -> Option<Arc<Encoded>> {
        let cell = {
            let mut deltas = self.deltas.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            deltas.entry(from).or_default().clone()
        };
        let made = cell
            .get_or_init(|| async {
                match delta(store, &self.cp, from, self.version, &self.hash).await {
                    Ok(Some(text)) => Some(Arc::new(Encoded::new(vec![text], max_payload))),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "delta unreadable; sending the whole configuration");
                        None
                    }
                }
            })
            .await;
        made.clone()
    }
}

/// A configuration's part messages in each encoding, each made once whatever the number of data
/// planes: text at once, zstd (what data planes ask for) when published, gzip on first need.
#[derive(Debug)]
pub struct Encoded {
    text: Vec<Utf8Bytes>,
    zstd: OnceLock<Result<Vec<Bytes>, String>>,
    gzip: OnceLock<Result<Vec<Bytes>, String>>,
    /// `cluster_max_payload`: no message larger than this is sent (data planes refuse them).
    max_payload: usize,
}

impl Full {
    /// Compressed once here, off the runtime's workers, for every data plane.
    async fn new(p: Published, max_payload: usize) -> Full {
        let encoded = Arc::new(Encoded::new(p.parts, max_payload));
        let made = encoded.clone();
        let _ = tokio::task::spawn_blocking(move || made.compressed(Encoding::Zstd)).await;
        Full { version: p.version, hash: p.hash, encoded }
    }
}

impl Encoded {
    fn new(parts: Vec<String>, max_payload: usize) -> Encoded {
        Encoded {
            text: parts.into_iter().map(Utf8Bytes::from).collect(),
            zstd: OnceLock::new(),
            gzip: OnceLock::new(),
            max_payload,
        }
    }

    /// The compressed parts (made on first call; blocking).
    fn compressed(&self, encoding: Encoding) -> Result<Vec<Bytes>, String> {
        let cell = if encoding == Encoding::Gzip { &self.gzip } else { &self.zstd };
        let made = cell.get_or_init(|| {
            self.text
                .iter()
                .map(|t| encoding.encode(t.as_bytes()).map(Bytes::from))
                .collect::<Result<Vec<Bytes>, String>>()
        });
        made.clone()
    }

    /// The messages to send in `encoding`, or why they cannot be sent.
    async fn messages(self: &Arc<Self>, encoding: Encoding) -> Result<Vec<Message>, String> {
        let messages: Vec<Message> = if encoding == Encoding::Identity {
            self.text.iter().cloned().map(Message::Text).collect()
        } else {
            let cell = if encoding == Encoding::Gzip { &self.gzip } else { &self.zstd };
            // Compressed once, off the runtime's workers; every other link takes it as it is.
            let parts = match cell.get() {
                Some(made) => made.clone()?,
                None => {
                    let this = self.clone();
                    tokio::task::spawn_blocking(move || this.compressed(encoding))
                        .await
                        .map_err(|e| format!("compressing the configuration failed: {e}"))??
                }
            };
            parts.into_iter().map(Message::Binary).collect()
        };
        match messages.iter().map(Message::len).max() {
            Some(largest) if largest > self.max_payload => Err(format!(
                "a configuration part of {largest} bytes is larger than cluster_max_payload ({})",
                self.max_payload
            )),
            _ => Ok(messages),
        }
    }
}

/// A data plane's lookup: its request number, the key's hash, the realms to try in order.
#[derive(Debug, Clone)]
pub struct LookupRequest {
    pub request: u64,
    pub key_hash: String,
    pub realms: Vec<String>,
}

/// Lookups answered together at most (each is two bound values of one query).
const MAX_LOOKUP_BATCH: usize = 256;

/// What a lookup needs of a realm.
#[derive(Debug)]
struct RealmPolicy {
    /// It allows the asking data plane's control plane.
    allowed: bool,
    ttl: u64,
    negative_ttl: u64,
    groups: Vec<String>,
}

fn group_names(body: &serde_json::Value) -> Vec<String> {
    body["consumer_groups"]
        .as_array()
        .map(|a| a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

impl RealmPolicy {
    fn new(realm: &serde_json::Value, control_plane_id: &str) -> RealmPolicy {
        // Stored minutes as seconds; a stored value too large for that saturates (data planes
        // clamp what they cache anyway).
        let minutes = |f: &str| realm[f].as_u64().unwrap_or(10).saturating_mul(60);
        let allowed = realm["allow_all_control_planes"].as_bool() == Some(true)
            || realm["allowed_control_planes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c == "*" || c.as_str() == Some(control_plane_id)));
        RealmPolicy { allowed, ttl: minutes("ttl"), negative_ttl: minutes("negative_ttl"), groups: group_names(realm) }
    }

    /// The consumer holding a key of this realm; its groups are the realm's, then its own.
    fn consumer(&self, holder: &KeyHolder) -> Option<RealmConsumer> {
        let key: serde_json::Value = serde_json::from_str(&holder.key_body).ok()?;
        let consumer: serde_json::Value = serde_json::from_str(&holder.consumer_body).ok()?;
        let mut groups = self.groups.clone();
        for g in group_names(&consumer) {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        Some(RealmConsumer {
            id: consumer["id"].as_str()?.to_string(),
            username: consumer["username"].as_str().unwrap_or_default().to_string(),
            custom_id: consumer["custom_id"].as_str().map(str::to_string),
            realm_id: holder.realm_id.clone(),
            key_id: key["id"].as_str().unwrap_or_default().to_string(),
            groups,
            ttl: self.ttl,
        })
    }
}

/// What the publisher keeps of each control plane it publishes: the version reached and each
/// row's hash, to move the configuration's hash by what changed.
#[derive(Debug)]
struct Mirror {
    version: i64,
    digest: ConfigDigest,
    rows: HashMap<(crate::model::Kind, String), u128>,
}

#[derive(Debug)]
pub struct Hub {
    store: Store,
    /// `cluster_max_payload`.
    max_payload: usize,
    /// By control plane id: the latest configuration (None until first exported).
    channels: Mutex<HashMap<String, watch::Sender<Option<Latest>>>>,
    nodes: Mutex<HashMap<String, NodeInfo>>,
    /// Open links by data plane token id, to drop them when the token is revoked.
    links: Mutex<HashMap<String, Vec<Arc<Notify>>>>,
    /// Wakes the publisher (a control plane got its first data plane).
    wake: Notify,
    /// Realm consumers or keys changed: every link tells its data plane to drop cached lookups.
    purge: tokio::sync::broadcast::Sender<()>,
    /// The last refusal logged per peer address: each is logged once, not once per retry.
    refused: Mutex<HashMap<std::net::IpAddr, String>>,
}

impl Hub {
    pub fn new(store: Store, max_payload: usize) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            max_payload,
            channels: Mutex::default(),
            nodes: Mutex::default(),
            links: Mutex::default(),
            wake: Notify::new(),
            purge: tokio::sync::broadcast::Sender::new(16),
            refused: Mutex::default(),
        })
    }

    /// Logs a refused data plane once per peer and reason.
    fn refuse(&self, peer: std::net::SocketAddr, why: String) {
        let mut refused = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if refused.get(&peer.ip()) == Some(&why) {
            return;
        }
        if refused.len() >= 4096 {
            refused.clear();
        }
        tracing::error!(%peer, "[clustering] {why}");
        refused.insert(peer.ip(), why);
    }

    /// Tells every data plane to drop its cached realm lookups (a realm, realm consumer or key
    /// changed); effective as soon as the message arrives.
    pub fn purge_realm_caches(&self) {
        let _ = self.purge.send(());
    }

    /// Answers a batch of one data plane's lookups with two queries, whatever its size: the realms
    /// they name, then every key of the batch held in one of those realms that allow
    /// `control_plane_id`. Each lookup gets the consumer of the first realm in its list that allows
    /// the control plane and holds the key, and the negative ttl (seconds) of the first that exists.
    pub async fn lookup_many(&self, control_plane_id: &str, batch: &[LookupRequest]) -> Result<Vec<Notice>, String> {
        let mut realm_ids: Vec<&str> = batch.iter().flat_map(|l| l.realms.iter().map(String::as_str)).collect();
        realm_ids.sort_unstable();
        realm_ids.dedup();
        let mut realms = HashMap::new();
        for (id, body) in self.store.realm_bodies(&realm_ids).await.map_err(|e| e.to_string())? {
            let body: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            realms.insert(id, RealmPolicy::new(&body, control_plane_id));
        }
        let allowed: Vec<&str> = realms.iter().filter(|(_, p)| p.allowed).map(|(id, _)| id.as_str()).collect();
        let mut hashes: Vec<&str> = batch.iter().map(|l| l.key_hash.as_str()).collect();
        hashes.sort_unstable();
        hashes.dedup();
        let holders = self.store.realm_key_holders(&allowed, &hashes).await.map_err(|e| e.to_string())?;
        let held: HashMap<(&str, &str), &KeyHolder> =
            holders.iter().map(|h| ((h.realm_id.as_str(), h.secret_hash.as_str()), h)).collect();
        let answers = batch.iter().map(|l| {
            let negative_ttl = l.realms.iter().find_map(|r| realms.get(r)).map_or(600, |p| p.negative_ttl);
            let found = l.realms.iter().find_map(|r| {
                let policy = realms.get(r).filter(|p| p.allowed)?;
                let holder = held.get(&(r.as_str(), l.key_hash.as_str()))?;
                policy.consumer(holder)
            });
            Notice::LookupResult { request: l.request, found, negative_ttl }
        });
        Ok(answers.collect())
    }

    /// Answers a link's lookups as they come, in batches of whatever has queued meanwhile.
    async fn answer_lookups(
        self: Arc<Self>,
        control_plane_id: String,
        mut lookups: tokio::sync::mpsc::Receiver<LookupRequest>,
        answers: tokio::sync::mpsc::Sender<Vec<String>>,
    ) {
        let mut batch = Vec::with_capacity(MAX_LOOKUP_BATCH);
        while lookups.recv_many(&mut batch, MAX_LOOKUP_BATCH).await > 0 {
            match self.lookup_many(&control_plane_id, &batch).await {
                Ok(notices) => {
                    let texts = notices.iter().filter_map(|n| serde_json::to_string(n).ok()).collect();
                    if answers.send(texts).await.is_err() {
                        return;
                    }
                }
                // Unanswered lookups time out on the data plane: their keys are refused, never let in.
                Err(e) => tracing::error!(error = %e, keys = batch.len(), "realm lookups failed"),
            }
            batch.clear();
        }
    }

    /// Every data plane of every control plane (for `/metrics`).
    pub fn all_nodes(&self) -> Vec<NodeInfo> {
        self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
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

    /// Publishes `control_plane_id` (store key `cp`) when its hash changed: moved by what changed
    /// since it was last published (its mirror), or exported whole the first time and whenever the
    /// change log does not reach back.
    async fn publish(&self, control_plane_id: &str, cp: &str, mirrors: &mut HashMap<String, Mirror>) {
        let advanced = match mirrors.get_mut(control_plane_id) {
            Some(m) => match advance(&self.store, cp, m.version, &mut m.digest, &mut m.rows).await {
                Ok(Some((to, _))) => {
                    m.version = to;
                    Some((to, m.digest.hex(), None))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(control_plane = control_plane_id, error = %e, "configuration changes unreadable");
                    return;
                }
            },
            None => None,
        };
        let (version, hash, full) = match advanced {
            Some(a) => a,
            None => match export(&self.store, cp, part_text(self.max_payload)).await {
                Ok(mut p) => {
                    let mut digest = ConfigDigest::default();
                    p.rows.values().for_each(|h| digest.add_hash(*h));
                    let rows = std::mem::take(&mut p.rows);
                    mirrors.insert(control_plane_id.to_string(), Mirror { version: p.version, digest, rows });
                    let full = Full::new(p, self.max_payload).await;
                    (full.version, full.hash.clone(), Some(full))
                }
                Err(e) => {
                    tracing::error!(control_plane = control_plane_id, error = %e, "configuration export failed");
                    return;
                }
            },
        };
        let unchanged = |latest: &Option<Latest>| latest.as_ref().is_some_and(|l| l.hash == hash);
        let tx = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(control_plane_id).cloned();
        let Some(tx) = tx.filter(|tx| !unchanged(&tx.borrow())) else { return };
        tx.send_if_modified(|latest| {
            if unchanged(latest) {
                return false;
            }
            *latest = Some(Latest {
                hash: hash.clone(),
                version,
                full: Arc::new(tokio::sync::OnceCell::new_with(full.map(Some))),
                cp: cp.into(),
                deltas: Arc::default(),
            });
            true
        });
    }

    /// Follows the store's changes and republishes the control planes they touch.
    pub async fn run_publisher(self: Arc<Self>, poll: Duration) {
        let mut feed = self.store.feed(poll);
        let mut seen: i64 = self.store.version().await.unwrap_or_default();
        let mut fresh: BTreeSet<String> = BTreeSet::new();
        let mut mirrors: HashMap<String, Mirror> = HashMap::new();
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
                    self.publish(&plane.id, &plane.cp, &mut mirrors).await;
                }
            }
            fresh.clear();
        }
    }

    /// Accepts data planes until the process ends: TLS first (refused at the handshake without an
    /// acceptable certificate), then the data plane token.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: (Arc<tokio_rustls::rustls::ServerConfig>, super::tls::ClientCheck),
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.0);
        let check = Arc::new(tls.1);
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
            let acceptor = acceptor.clone();
            let check = check.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return hub.refuse(peer, format!("data plane failed the TLS handshake: {e}")),
                    Err(_) => return hub.refuse(peer, "data plane did not finish the TLS handshake".into()),
                };
                if let Err(why) = check.check(tls.get_ref().1.peer_certificates().and_then(|c| c.first())) {
                    return hub.refuse(peer, why.to_string());
                }
                if let Err(e) = hub.link(tls).await {
                    tracing::info!(%peer, error = %e, "data plane link ended");
                }
            });
        }
    }

    /// One data plane's link, from handshake to close.
    async fn link<S>(self: Arc<Self>, stream: S) -> Result<(), String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let tokens = self.store.data_plane_tokens(None).await.map_err(|e| e.to_string())?;
        let mut accepted: Option<DataPlaneToken> = None;
        let mut query = String::new();
        let mut encoding = Encoding::Identity;
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
            if accepted.is_none() {
                return Err(refusal(401, "A valid data plane token is required"));
            }
            let offered = req.headers().get(http::header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok());
            encoding = Encoding::negotiate(offered.unwrap_or_default());
            let mut resp = resp;
            if encoding != Encoding::Identity {
                resp.headers_mut().insert(ENCODING_HEADER, http::HeaderValue::from_static(encoding.name()));
            }
            Ok(resp)
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
        tracing::info!(node = %node_id, control_plane = %token.control_plane_id, encoding = encoding.name(), "data plane connected");
        let mut latest = self.subscribe(&token.control_plane_id);
        let mut purged = self.purge.subscribe();
        // Lookups are answered beside the link, in batches.
        let (lookup_tx, lookups) = tokio::sync::mpsc::channel::<LookupRequest>(MAX_LOOKUP_BATCH * 4);
        let (answer_tx, mut answers) = tokio::sync::mpsc::channel::<Vec<String>>(16);
        tokio::spawn(self.clone().answer_lookups(token.control_plane_id.clone(), lookups, answer_tx));
        let (mut tx, mut rx) = ws.split();
        let mut running = params.get("config_hash").cloned().filter(|h| !h.is_empty());
        // The version it runs, while a delta can follow it.
        let mut running_version: Option<i64> = params.get("config_version").and_then(|v| v.parse().ok());
        // A whole configuration this link sent was newer than the one published (exported later):
        // nothing is sent until a newer one is published.
        let mut ahead_of: Option<i64> = None;
        let result: Result<(), String> = loop {
            let to_send = latest
                .borrow_and_update()
                .as_ref()
                .filter(|l| {
                    running.as_ref() != Some(&l.hash) && (running.is_none() || ahead_of.is_none_or(|v| l.version > v))
                })
                .cloned();
            if let Some(l) = to_send {
                // What changed since the version it runs when the log has it, else the whole.
                let delta = match running_version {
                    Some(from) if running.is_some() => l.delta_from(&self.store, from, self.max_payload).await,
                    _ => None,
                };
                let mut sent = match delta {
                    Some(d) => d.messages(encoding).await,
                    None => Err(String::new()),
                };
                let (mut version, mut hash) = (l.version, l.hash.clone());
                ahead_of = None;
                if sent.is_err() {
                    sent = match l.full(&self.store, self.max_payload).await {
                        Some(full) => {
                            (version, hash) = (full.version, full.hash.clone());
                            ahead_of = (full.version > l.version).then_some(full.version);
                            full.encoded.messages(encoding).await
                        }
                        None => Err("the configuration could not be read".into()),
                    };
                }
                match sent {
                    Ok(messages) => {
                        // The parts back to back, in one flush.
                        let sent = async {
                            for m in messages {
                                tx.feed(m).await?;
                            }
                            tx.flush().await
                        };
                        if let Err(e) = sent.await {
                            break Err(e.to_string());
                        }
                    }
                    Err(e) => tracing::error!(node = %node_id, hash = %hash, "configuration not sent: {e}"),
                }
                running = Some(hash);
                running_version = Some(version);
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
                            if let Some(lookup) = self.heard(&node_id, &text, &mut running, &mut running_version) {
                                // Waiting here holds the data plane back while lookups pile up.
                                if lookup_tx.send(lookup).await.is_err() {
                                    break Err("lookups stopped".into());
                                }
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                    }
                }
                Some(batch) = answers.recv() => {
                    // One write for the whole batch.
                    let sent = async {
                        for answer in batch {
                            tx.feed(Message::text(answer)).await?;
                        }
                        tx.flush().await
                    };
                    if let Err(e) = sent.await {
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
    fn heard(
        &self,
        node_id: &str,
        text: &str,
        running: &mut Option<String>,
        running_version: &mut Option<i64>,
    ) -> Option<LookupRequest> {
        let Ok(msg) = serde_json::from_str::<ToControlPlane>(text) else {
            tracing::warn!(node = node_id, "unreadable message from a data plane");
            return None;
        };
        if let ToControlPlane::Lookup { request, key_hash, realms } = msg {
            return Some(LookupRequest { request, key_hash, realms });
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
            ToControlPlane::Resync { reason } => {
                tracing::info!(node = node_id, reason, "a data plane asked for the whole configuration");
                *running = None;
                *running_version = None;
            }
            ToControlPlane::Ping { config_hash } => node.config_hash = config_hash,
            ToControlPlane::Applied { hash } => {
                node.config_hash = Some(hash);
                node.rejected = None;
            }
            ToControlPlane::Rejected { hash, error } => {
                tracing::warn!(node = node_id, hash, error, "a data plane refused a configuration");
                node.rejected = Some(error);
                // Not sent again: only a new configuration may fix it, sent whole.
                *running = Some(hash);
                *running_version = None;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::protocol::tests::{consumer, store};
    use crate::model::Kind;
    use crate::store::WriteOp;
    use futures_util::future::join_all;

    /// The first bytes of what a link would send.
    fn first_bytes(messages: &Result<Vec<Message>, String>) -> *const u8 {
        match messages.as_ref().map(|m| &m[0]) {
            Ok(Message::Binary(b)) => b.as_ptr(),
            other => panic!("not a compressed message: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_change_is_read_and_compressed_once_for_a_hundred_data_planes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let max = 16 << 20;
        let hub = Hub::new(store.clone(), max);
        let mut latest = hub.subscribe("plane");
        let mut mirrors = HashMap::new();
        store.write("cp", Kind::Consumer, WriteOp::Insert, consumer(1, "one"), None).await.expect("write");
        hub.publish("plane", "cp", &mut mirrors).await;
        let before = latest.borrow_and_update().clone().expect("published");
        store.write("cp", Kind::Consumer, WriteOp::Insert, consumer(2, "two"), None).await.expect("write");
        hub.publish("plane", "cp", &mut mirrors).await;
        let after = latest.borrow_and_update().clone().expect("published");
        assert!(after.version > before.version && after.hash != before.hash);

        // A hundred data planes at the earlier version ask at once: one delta, one compression.
        let deltas = join_all((0..100).map(|_| after.delta_from(&store, before.version, max))).await;
        let delta = deltas[0].clone().expect("a delta");
        assert!(deltas.iter().all(|d| d.as_ref().is_some_and(|d| Arc::ptr_eq(d, &delta))), "one delta");
        let sent = join_all((0..100).map(|_| delta.messages(Encoding::Zstd))).await;
        let first = first_bytes(&sent[0]);
        assert!(sent.iter().all(|m| first_bytes(m) == first), "every link sends the same compressed bytes");

        // Data planes joining from nothing share one export of the whole, compressed once.
        let fulls = join_all((0..100).map(|_| after.full(&store, max))).await;
        let full = fulls[0].clone().expect("the whole");
        assert!(fulls.iter().all(|f| f.as_ref().is_some_and(|f| Arc::ptr_eq(&f.encoded, &full.encoded))));
        let sent = join_all((0..100).map(|_| full.encoded.messages(Encoding::Zstd))).await;
        let first = first_bytes(&sent[0]);
        assert!(sent.iter().all(|m| first_bytes(m) == first));
        assert_eq!(full.hash, after.hash, "the whole has the delta's hash (nothing changed since)");
    }
}
