//! The data plane's side of the cluster link: connects to its control plane (reconnecting with
//! backoff and jitter), checks every configuration it receives by compiling it before swapping it in
//! (one that does not compile keeps the last good one and is reported back), writes the good one
//! atomically to `<prefix>/config.cache`, and after a restart serves from that cache until the
//! control plane answers.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::protocol::{
    ConfigDelta, ConfigDigest, ConfigPart, ConfigRows, ENCODING_HEADER, Encoding, Notice, OFFERED_ENCODINGS,
    OUTLET_PATH, RealmConsumer, ToControlPlane, ToDataPlane, rows_in_load_order,
};
use crate::config::Settings;
use crate::identity::{Authenticated, Directory};
use crate::model::Kind;
use crate::plugins::rate_limiting::Counters;
use crate::plugins::{RealmResolver, RealmScope};
use crate::snapshot::compile;
use crate::snapshot::state::{Changes, ConfigState};
use crate::snapshot::{Rejection, SnapshotHolder};

const PING_EVERY: Duration = Duration::from_secs(5);

/// The start of a cache file of configuration parts (then the deltas that followed them).
const CACHE_MAGIC: &[u8] = b"TGCACHE2\n";

/// Marks a cache record holding a delta (its low bits name the encoding).
const DELTA_RECORD: u8 = 0x80;

fn encoding_code(e: Encoding) -> u8 {
    match e {
        Encoding::Identity => 0,
        Encoding::Zstd => 1,
        Encoding::Gzip => 2,
    }
}

fn encoding_of(code: u8) -> Option<Encoding> {
    [Encoding::Identity, Encoding::Zstd, Encoding::Gzip].into_iter().find(|e| encoding_code(*e) == code)
}

/// A configuration arriving in parts.
#[derive(Debug, Default)]
struct Assembly {
    version: i64,
    hash: String,
    count: usize,
    /// The index of the part expected next.
    next: usize,
    rows: ConfigRows,
    /// The parts as received, for the cache.
    received: Vec<(Encoding, Bytes)>,
}
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the data plane stands, for its status API.
#[derive(Debug, Default, Clone)]
pub struct DataPlaneStatus {
    /// Hash of the configuration being served (None before the first one).
    pub config_hash: Option<String>,
    /// Its version.
    pub config_version: Option<i64>,
    pub connected: bool,
    /// Why the last configuration received was refused (`sync_status: config_rejected`), until
    /// one is applied whole.
    pub rejected: Option<String>,
}

/// How a received configuration went in.
#[derive(Debug)]
enum Applied {
    /// Every entity compiled; it is served and cached.
    Whole(String),
    /// Some entities did not compile and nothing was being served: it is served as far as it
    /// compiles (closed where it does not), reported as rejected and not cached.
    Partly(String, String),
}

#[derive(Debug)]
pub struct DataPlane {
    pub node_id: uuid::Uuid,
    pub hostname: String,
    control_plane: String,
    token: String,
    /// The cluster link's TLS: client configuration and the server name to expect.
    tls:
        Result<(Arc<tokio_rustls::rustls::ClientConfig>, tokio_rustls::rustls::pki_types::ServerName<'static>), String>,
    max_payload: usize,
    cache: PathBuf,
    /// Writes to `cache`, in order, on a thread of its own: a flush never holds up the runtime
    /// that proxies.
    cache_writes: std::sync::mpsc::SyncSender<CacheWrite>,
    /// A cache write was dropped (said once until one goes through).
    cache_behind: std::sync::atomic::AtomicBool,
    holder: Arc<SnapshotHolder>,
    /// Rate-limiting counters, kept across configurations.
    counters: Arc<Counters>,
    /// Target health and DNS answers, kept across configurations.
    balancing: crate::balancer::NodeBalancing,
    status: Mutex<DataPlaneStatus>,
    /// Realm key lookups by list of realms: answers cached for the realm's ttl (misses for its
    /// negative ttl), bounded; one lookup in flight per key.
    scopes: Mutex<HashMap<Vec<String>, Arc<LookupScope>>>,
    realm_cache_size: u64,
    /// The current link's outgoing messages (None while disconnected).
    outbox: Mutex<Option<mpsc::Sender<String>>>,
    /// Lookups waiting for their answer, by request number.
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_request: AtomicU64,
    /// Purges so far: an answer that crossed a purge on its way is used once, not cached.
    purges: AtomicU64,
    /// Itself, for configurations to resolve realm keys through (set once built).
    this: std::sync::Weak<DataPlane>,
    /// What it runs, kept to apply deltas to (None until a configuration is installed, and after
    /// a delta failed halfway).
    mirror: Mutex<Option<Mirror>>,
    /// Deltas appended to the cache since it was last written whole.
    cached_deltas: AtomicU64,
    /// The whole configuration was asked for and has not arrived yet.
    resync_asked: std::sync::atomic::AtomicBool,
}

/// The configuration a data plane runs, as deltas change it.
#[derive(Debug)]
struct Mirror {
    state: ConfigState,
    version: i64,
    digest: ConfigDigest,
    /// Each row's hash by table and id, to move the digest by what a delta changes (None for a
    /// configuration received without ids: the next delta asks for the whole).
    rows: Option<HashMap<RowKey, u128>>,
}

/// A row by table and id.
type RowKey = (Kind, Box<str>);

/// A write to the configuration cache.
enum CacheWrite {
    /// A whole configuration's parts as received (replacing the cache).
    Whole(Vec<(Encoding, Bytes)>),
    /// A delta as received, appended.
    Delta(Encoding, Bytes),
}

/// Cache writes queued at most (a disk that stalls costs the cache, never memory).
const CACHE_QUEUE: usize = 256;

/// Starts the thread writing `cache`; it ends when the data plane is dropped.
fn cache_writer(cache: PathBuf) -> std::sync::mpsc::SyncSender<CacheWrite> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<CacheWrite>(CACHE_QUEUE);
    let spawned = std::thread::Builder::new().name("config-cache".into()).spawn(move || {
        for write in rx {
            let written = match write {
                CacheWrite::Whole(parts) => write_cache(&cache, &parts),
                CacheWrite::Delta(encoding, data) => append_cache(&cache, encoding, &data),
            };
            if let Err(e) = written {
                tracing::error!(error = %e, "configuration cache not written");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "configuration cache writer not started; the cache is not kept");
    }
    tx
}

/// Appends a delta as received to the cache (after the parts it follows), flushed.
fn append_cache(cache: &std::path::Path, encoding: Encoding, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let len = u32::try_from(data.len()).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new().append(true).open(cache)?;
    let mut record = Vec::with_capacity(data.len() + 5);
    record.push(encoding_code(encoding) | DELTA_RECORD);
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(data);
    f.write_all(&record)?;
    f.sync_data()
}

/// Writes the configuration's parts as received next to the cache (records of an encoding byte,
/// a length and the bytes, after [`CACHE_MAGIC`]), flushes it, then renames it over the cache.
fn write_cache(cache: &std::path::Path, parts: &[(Encoding, Bytes)]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = cache.with_extension("cache.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    f.write_all(CACHE_MAGIC)?;
    for (encoding, data) in parts {
        let len = u32::try_from(data.len()).map_err(std::io::Error::other)?;
        f.write_all(&[encoding_code(*encoding)])?;
        f.write_all(&len.to_le_bytes())?;
        f.write_all(data)?;
    }
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, cache)?;
    if let Some(dir) = cache.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Deltas appended to the cache before the data plane asks for the whole configuration again (so
/// the cache is written whole and stays small).
const CACHED_DELTAS_MAX: u64 = 1000;

/// A control plane's answer to a lookup: the consumer, and how long to cache a miss (seconds).
type Answer = (Option<RealmConsumer>, u64);

/// A cached realm lookup.
#[derive(Debug)]
pub struct Lookup {
    found: Option<Authenticated>,
    ttl: Duration,
}

/// Each cached lookup lives for its own ttl.
struct LookupExpiry;

impl moka::Expiry<String, Arc<Lookup>> for LookupExpiry {
    fn expire_after_create(&self, _key: &String, value: &Arc<Lookup>, _now: std::time::Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Entities that do not compile, in one line (`None` when there are none).
fn describe(rejected: &[Rejection]) -> Option<String> {
    if rejected.is_empty() {
        return None;
    }
    let list: Vec<String> = rejected.iter().map(|r| format!("{} {}: {}", r.entity, r.id, r.message)).collect();
    Some(format!("{} entities do not compile: {}", rejected.len(), list.join("; ")))
}

/// The longest a realm lookup is cached, whatever the control plane says (a day).
const MAX_LOOKUP_TTL: u64 = 86_400;

/// A ttl in seconds from the control plane, bounded.
fn lookup_ttl(seconds: u64) -> Duration {
    Duration::from_secs(seconds.clamp(1, MAX_LOOKUP_TTL))
}

/// How long a lookup may wait for the control plane before the key is refused.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

impl DataPlane {
    pub fn new(settings: &Settings, hostname: String, holder: Arc<SnapshotHolder>) -> Arc<DataPlane> {
        let prefix = settings.prefix.as_path();
        Arc::new_cyclic(|this| DataPlane {
            scopes: Mutex::default(),
            realm_cache_size: settings.realm_cache_size,
            outbox: Mutex::new(None),
            pending: Mutex::default(),
            next_request: AtomicU64::new(1),
            purges: AtomicU64::new(0),
            this: this.clone(),
            mirror: Mutex::new(None),
            cached_deltas: AtomicU64::new(0),
            resync_asked: std::sync::atomic::AtomicBool::new(false),
            node_id: node_id(prefix),
            hostname,
            control_plane: settings.cluster_control_plane.clone(),
            token: settings.cluster_token.clone().unwrap_or_default(),
            tls: super::tls::client(&settings.cluster_tls, &settings.cluster_control_plane),
            max_payload: settings.cluster_max_payload,
            cache: prefix.join("config.cache"),
            cache_writes: cache_writer(prefix.join("config.cache")),
            cache_behind: std::sync::atomic::AtomicBool::new(false),
            holder,
            counters: Arc::new(Counters::default()),
            balancing: crate::balancer::NodeBalancing {
                health: Arc::default(),
                dns: crate::dns::Dns::new(settings.dns.clone()),
            },
            status: Mutex::default(),
        })
    }

    /// The resolver of this data plane's balancers.
    pub fn dns(&self) -> Arc<crate::dns::Dns> {
        self.balancing.dns.clone()
    }

    pub fn status(&self) -> DataPlaneStatus {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_status(&self, f: impl FnOnce(&mut DataPlaneStatus)) {
        f(&mut self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Serves the cached configuration, if there is one.
    pub fn load_cache(&self) {
        let Ok(data) = std::fs::read(&self.cache) else { return };
        let applied = match data.strip_prefix(CACHE_MAGIC) {
            Some(records) => self.apply_cached_parts(records),
            // A cache written by an earlier version: the whole message as text.
            None => String::from_utf8(data).map_err(|e| e.to_string()).and_then(|text| self.apply(&text)),
        };
        match applied {
            Ok(Applied::Whole(hash)) => {
                tracing::info!(hash, "serving the cached configuration until the control plane answers");
            }
            Ok(Applied::Partly(hash, error)) => {
                tracing::error!(hash, error, "serving the cached configuration where it compiles");
            }
            Err(e) => tracing::error!(error = %e, path = %self.cache.display(), "cached configuration unusable"),
        }
    }

    /// The parts of a cache file's records, read and applied one by one.
    fn apply_cached_parts(&self, mut records: &[u8]) -> Result<Applied, String> {
        let mut assembly = None;
        let mut installed: Option<Applied> = None;
        while let [code, l0, l1, l2, l3, rest @ ..] = records {
            let len = u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize;
            let (data, rest) = rest.split_at_checked(len).ok_or("truncated cache")?;
            records = rest;
            let encoding = encoding_of(*code & !DELTA_RECORD).ok_or("unknown encoding in the cache")?;
            let text = encoding.decode(data, self.max_payload)?;
            let text = std::str::from_utf8(&text).map_err(|e| e.to_string())?;
            if *code & DELTA_RECORD != 0 {
                // Deltas after the parts: applied in order; one that does not apply ends the
                // replay where it is (the control plane sends the rest).
                let delta: ConfigDelta = serde_json::from_str(text).map_err(|e| e.to_string())?;
                match self.apply_delta(&delta) {
                    Ok(hash) => installed = Some(Applied::Whole(hash)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cached delta not applied");
                        break;
                    }
                }
                self.cached_deltas.fetch_add(1, Ordering::Relaxed);
            } else if let Some(whole) = self.take_part(&mut assembly, encoding, Bytes::copy_from_slice(data), text)? {
                installed = Some(self.install(whole.version, whole.hash, &whole.rows, true)?);
            }
        }
        installed.ok_or_else(|| "truncated cache".into())
    }

    /// Adds a received part to the configuration being assembled; gives the whole once its last
    /// part arrived (its hash is checked when it is installed). A part out of order drops what was
    /// gathered (the next configuration starts at part 0).
    fn take_part(
        &self,
        assembly: &mut Option<Assembly>,
        encoding: Encoding,
        raw: Bytes,
        text: &str,
    ) -> Result<Option<Assembly>, String> {
        let part: ConfigPart = serde_json::from_str(text).map_err(|e| format!("unreadable configuration: {e}"))?;
        if part.index == 0 {
            *assembly = Some(Assembly {
                version: part.version,
                hash: part.hash.clone(),
                count: part.count,
                ..Assembly::default()
            });
        }
        let a = match assembly.as_mut() {
            Some(a)
                if a.version == part.version && a.hash == part.hash && a.next == part.index && part.index < a.count =>
            {
                a
            }
            _ => {
                *assembly = None;
                return Err(format!("configuration part {} of {} came out of order", part.index, part.hash));
            }
        };
        let rows: ConfigRows =
            serde_json::from_str(part.rows.get()).map_err(|e| format!("unreadable configuration: {e}"))?;
        for (table, list) in rows {
            a.rows.entry(table).or_default().extend(list);
        }
        a.received.push((encoding, raw));
        a.next += 1;
        if a.next < a.count {
            return Ok(None);
        }
        Ok(assembly.take())
    }

    /// Compiles a whole `reconfigure` message (a cache of an earlier version) and swaps it in.
    fn apply(&self, text: &str) -> Result<Applied, String> {
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
        // Checked against the text's hash above; its rows' sum is another hash.
        self.install(version, hash, &rows, false)
    }

    /// Compiles a received configuration and swaps it in. A configuration with entities that do
    /// not compile is refused whole while another is served (the last good one stays); with
    /// nothing served yet, it is served as far as it compiles. With `check_hash`, a configuration
    /// whose rows do not sum to `hash` is refused before anything is built.
    fn install(&self, version: i64, hash: String, rows: &ConfigRows, check_hash: bool) -> Result<Applied, String> {
        let mut digest = ConfigDigest::default();
        let mut ids: Option<HashMap<RowKey, u128>> = Some(HashMap::new());
        for (table, list) in rows {
            let kind = Kind::from_table(table);
            for row in list {
                let h = ConfigDigest::row_hash(table, row.b.get(), row.e);
                digest.add_hash(h);
                match (kind, &row.i, ids.as_mut()) {
                    (Some(kind), Some(id), Some(map)) => {
                        map.insert((kind, id.as_str().into()), h);
                    }
                    _ => ids = None,
                }
            }
        }
        if check_hash && digest.hex() != hash {
            return Err("configuration does not match its hash".into());
        }
        let mut state = ConfigState::from_rows(version, rows_in_load_order(rows)?);
        let rejected = describe(&state.rejected());
        if rejected.is_some() && self.status().config_hash.is_some() {
            return Err(rejected.unwrap_or_default());
        }
        state.use_counters(self.counters.clone());
        state.use_balancing(self.balancing.clone());
        if let Some(this) = self.this.upgrade() {
            state.use_resolver(this);
        }
        let snapshot = crate::sync::build(&mut state, true).ok_or("building the configuration failed")?;
        self.holder.store(snapshot);
        // Deltas follow only a configuration that went in whole.
        let mirror = rejected.is_none().then(|| Mirror { state, version, digest, rows: ids });
        *self.mirror.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = mirror;
        self.resync_asked.store(false, Ordering::Relaxed);
        // Cached realm consumers carry group ids of the previous configuration.
        self.purge_lookups();
        self.set_status(|s| {
            s.config_hash = Some(hash.clone());
            s.config_version = Some(version);
            s.rejected = rejected.clone();
        });
        Ok(match rejected {
            None => Applied::Whole(hash),
            Some(error) => Applied::Partly(hash, error),
        })
    }

    /// Applies a delta to the configuration held, checking first that it follows it and that the
    /// hash it leads to is the one announced; the new snapshot is swapped in only once whole. An
    /// error means: ask for the whole configuration (what is served stays as it was).
    fn apply_delta(&self, delta: &ConfigDelta) -> Result<String, String> {
        let mut guard = self.mirror.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let m = guard.as_mut().ok_or("no configuration held to apply a delta to")?;
        if m.version != delta.from_version {
            return Err(format!("a delta from version {} does not follow version {}", delta.from_version, m.version));
        }
        let rows = m.rows.as_ref().ok_or("the configuration held has no row ids")?;
        let mut digest = m.digest;
        let mut edits: Vec<(RowKey, Option<u128>)> = Vec::new();
        let mut changes = Changes { version: delta.version, ..Changes::default() };
        for (table, t) in &delta.tables {
            let kind = Kind::from_table(table).ok_or_else(|| format!("a delta names unknown table '{table}'"))?;
            let batch = changes.kinds.entry(kind).or_default();
            for id in &t.deletes {
                // Deleting what is not held (made and removed since) changes nothing.
                if let Some(old) = rows.get(&(kind, id.as_str().into())) {
                    digest.remove(*old);
                }
                edits.push(((kind, id.as_str().into()), None));
                batch.deletes.push(id.clone());
            }
            for row in &t.upserts {
                let id = row.i.as_deref().ok_or("a delta row has no id")?;
                if let Some(old) = rows.get(&(kind, id.into())) {
                    digest.remove(*old);
                }
                let h = ConfigDigest::row_hash(table, row.b.get(), row.e);
                digest.add_hash(h);
                edits.push(((kind, id.into()), Some(h)));
                batch.upserts.push((id.to_string(), row.b.get().to_string(), row.e));
            }
        }
        if digest.hex() != delta.hash {
            return Err(format!("the configuration's hash after the delta is not {}", delta.hash));
        }
        for (id, key) in &delta.stale_keys {
            let id = uuid::Uuid::parse_str(id).map_err(|_| "a delta names a credential by a bad id")?;
            changes.stale_keys.push((id, key.clone()));
        }
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let routing = m.state.apply(&changes);
            (routing, describe(&m.state.rejected()))
        }));
        let built = match applied {
            Ok((routing, None)) => crate::sync::build(&mut m.state, routing),
            Ok((_, Some(rejected))) => {
                *guard = None;
                return Err(rejected);
            }
            Err(_) => None,
        };
        let Some(snapshot) = built else {
            // The mirror may be half-changed: it is dropped, the snapshot served stays.
            *guard = None;
            return Err("applying the delta failed".into());
        };
        self.holder.store(snapshot);
        m.version = delta.version;
        m.digest = digest;
        if let Some(rows) = m.rows.as_mut() {
            for (key, h) in edits {
                match h {
                    Some(h) => {
                        rows.insert(key, h);
                    }
                    None => {
                        rows.remove(&key);
                    }
                }
            }
        }
        drop(guard);
        self.purge_lookups();
        self.set_status(|s| {
            s.config_hash = Some(delta.hash.clone());
            s.config_version = Some(delta.version);
            s.rejected = None;
        });
        Ok(delta.hash.clone())
    }

    /// Has the cache written (off the runtime). A write the writer has no room for (a stalled
    /// disk) is dropped, said once: a replay of the cache stops where its deltas no longer follow
    /// (the control plane sends the rest), and the next whole configuration is cached whole.
    fn cache(&self, write: CacheWrite) {
        let whole = matches!(write, CacheWrite::Whole(_));
        match self.cache_writes.try_send(write) {
            Ok(()) => {
                self.cache_behind.store(false, Ordering::Relaxed);
                if whole {
                    self.cached_deltas.store(0, Ordering::Relaxed);
                }
            }
            Err(_) => {
                if !self.cache_behind.swap(true, Ordering::Relaxed) {
                    tracing::warn!("the configuration cache writer is behind; configurations go uncached meanwhile");
                }
            }
        }
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
        let status = self.status();
        let hash = status.config_hash.unwrap_or_default();
        // A version only while a delta can follow it.
        let version = status
            .config_version
            .filter(|_| self.mirror.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some())
            .map(|v| v.to_string())
            .unwrap_or_default();
        let url = format!(
            "wss://{}{OUTLET_PATH}?node_id={}&node_hostname={}&node_version={}&config_hash={}&config_version={}",
            self.control_plane,
            self.node_id,
            url::form_urlencoded::byte_serialize(self.hostname.as_bytes()).collect::<String>(),
            crate::VERSION,
            hash,
            version
        );
        let mut request = url.into_client_request().map_err(|e| format!("bad cluster_control_plane: {e}"))?;
        let bearer =
            format!("Bearer {}", self.token).parse().map_err(|_| "cluster_token is not a valid header value")?;
        request.headers_mut().insert(http::header::AUTHORIZATION, bearer);
        request.headers_mut().insert(http::header::ACCEPT_ENCODING, http::HeaderValue::from_static(OFFERED_ENCODINGS));
        let config =
            WebSocketConfig::default().max_message_size(Some(self.max_payload)).max_frame_size(Some(self.max_payload));
        let (tls_config, server_name) = self.tls.as_ref().map_err(Clone::clone)?;
        let tcp = tokio::net::TcpStream::connect(&self.control_plane)
            .await
            .map_err(|e| format!("cannot reach the control plane: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(tls_config.clone())
            .connect(server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake with the control plane failed: {e}"))?;
        let (ws, answer) = match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok(c) => c,
            Err(WsError::Http(resp)) if resp.status() == http::StatusCode::UNAUTHORIZED => {
                return Err("the control plane refused the cluster token".into());
            }
            Err(e) => return Err(format!("cannot reach the control plane: {e}")),
        };
        let encoding = answer
            .headers()
            .get(ENCODING_HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or(Some(Encoding::Identity), Encoding::parse)
            .ok_or("the control plane chose an unknown encoding")?;
        tracing::info!(control_plane = %self.control_plane, encoding = encoding.name(), "connected to the control plane");
        self.set_status(|s| s.connected = true);
        let (mut tx, mut rx) = ws.split();
        let (outbox, mut outgoing) = mpsc::channel::<String>(1024);
        *self.outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(outbox);
        let result = self.exchange(&mut tx, &mut rx, &mut outgoing, encoding).await;
        // Lookups in flight cannot be answered any more: their keys are refused.
        *self.outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        result
    }

    async fn exchange<T, R>(
        &self,
        tx: &mut T,
        rx: &mut R,
        outgoing: &mut mpsc::Receiver<String>,
        encoding: Encoding,
    ) -> Result<(), String>
    where
        T: futures_util::Sink<Message, Error = WsError> + Unpin,
        R: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let hello = ToControlPlane::Hello {
            node_id: self.node_id.to_string(),
            hostname: self.hostname.clone(),
            version: crate::VERSION.to_string(),
            config_hash: self.status().config_hash,
            config_version: self.status().config_version,
        };
        send(tx, &hello).await?;
        let mut assembly: Option<Assembly> = None;
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = ping.tick() => send(tx, &ToControlPlane::Ping { config_hash: self.status().config_hash }).await?,
                Some(text) = outgoing.recv() => {
                    // Lookups queued meanwhile go out in the same write.
                    let sent = async {
                        tx.feed(Message::text(text)).await?;
                        while let Ok(more) = outgoing.try_recv() {
                            tx.feed(Message::text(more)).await?;
                        }
                        tx.flush().await
                    };
                    sent.await.map_err(|e| format!("cluster link broken: {e}"))?;
                }
                message = rx.next() => match message {
                    None | Some(Ok(Message::Close(_))) => return Err("the control plane closed the link".into()),
                    Some(Err(e)) => return Err(format!("cluster link broken: {e}")),
                    Some(Ok(Message::Binary(data))) => {
                        let text = encoding.decode(&data, self.max_payload).and_then(|t| String::from_utf8(t).map_err(|e| e.to_string()));
                        let reply = match text {
                            Ok(text) => self.received(&mut assembly, encoding, data, &text),
                            Err(error) => Some(self.refused(error, &mut assembly)),
                        };
                        if let Some(reply) = reply {
                            send(tx, &reply).await?;
                        }
                    }
                    Some(Ok(Message::Text(text)))
                        if !text.starts_with(r#"{"type":"config_part""#) && !text.starts_with(r#"{"type":"config_delta""#) =>
                    {
                        self.notice(&text)
                    }
                    Some(Ok(Message::Text(text))) => {
                        let raw = Bytes::copy_from_slice(text.as_bytes());
                        if let Some(reply) = self.received(&mut assembly, Encoding::Identity, raw, &text) {
                            send(tx, &reply).await?;
                        }
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

impl DataPlane {
    /// A configuration part: gathered, and once whole, applied (and cached when it compiled
    /// whole); returns what to tell the control plane.
    fn received(
        &self,
        assembly: &mut Option<Assembly>,
        encoding: Encoding,
        raw: Bytes,
        text: &str,
    ) -> Option<ToControlPlane> {
        if text.starts_with(r#"{"type":"config_delta""#) {
            return self.received_delta(encoding, &raw, text);
        }
        let whole = match self.take_part(assembly, encoding, raw, text) {
            Ok(None) => return None,
            Ok(Some(whole)) => whole,
            Err(error) => return Some(self.refused(error, assembly)),
        };
        Some(match self.install(whole.version, whole.hash.clone(), &whole.rows, true) {
            Ok(Applied::Whole(hash)) => {
                self.cache(CacheWrite::Whole(whole.received));
                tracing::info!(hash, "configuration applied");
                ToControlPlane::Applied { hash }
            }
            Ok(Applied::Partly(hash, error)) => {
                tracing::error!(hash, error, "configuration served where it compiles");
                ToControlPlane::Rejected { hash, error }
            }
            Err(error) => {
                let hash = whole.hash;
                tracing::error!(error, "configuration refused; keeping the last good one");
                self.set_status(|s| s.rejected = Some(error.clone()));
                ToControlPlane::Rejected { hash, error }
            }
        })
    }

    /// A delta: applied, appended to the cache, reported; one that does not follow or apply
    /// cleanly asks for the whole configuration (said once in the log per reason).
    fn received_delta(&self, encoding: Encoding, raw: &[u8], text: &str) -> Option<ToControlPlane> {
        let delta: ConfigDelta = match serde_json::from_str(text) {
            Ok(d) => d,
            Err(e) => return self.resync(format!("unreadable delta: {e}")),
        };
        match self.apply_delta(&delta) {
            Ok(hash) => {
                self.cache(CacheWrite::Delta(encoding, Bytes::copy_from_slice(raw)));
                tracing::info!(hash, version = delta.version, "configuration delta applied");
                if self.cached_deltas.fetch_add(1, Ordering::Relaxed) + 1 >= CACHED_DELTAS_MAX {
                    return self.resync("rewriting the configuration cache whole".into());
                }
                Some(ToControlPlane::Applied { hash })
            }
            Err(reason) => self.resync(reason),
        }
    }

    /// Asks for the whole configuration, once (logged once) until it arrives: deltas already on
    /// their way are dropped unanswered.
    fn resync(&self, reason: String) -> Option<ToControlPlane> {
        *self.mirror.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        if self.resync_asked.swap(true, Ordering::Relaxed) {
            return None;
        }
        tracing::warn!(reason, "asking the control plane for the whole configuration");
        Some(ToControlPlane::Resync { reason })
    }

    /// A configuration message that cannot be used: what was gathered is dropped, the last good
    /// configuration stays, and the control plane is told.
    fn refused(&self, error: String, assembly: &mut Option<Assembly>) -> ToControlPlane {
        let hash = assembly.take().map(|a| a.hash).unwrap_or_default();
        tracing::error!(error, "configuration refused; keeping the last good one");
        self.set_status(|s| s.rejected = Some(error.clone()));
        ToControlPlane::Rejected { hash, error }
    }

    /// A lookup answer or a purge from the control plane.
    fn notice(&self, text: &str) {
        match serde_json::from_str::<Notice>(text) {
            Ok(Notice::LookupResult { request, found, negative_ttl }) => {
                let waiter = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&request);
                if let Some(w) = waiter {
                    let _ = w.send((found, negative_ttl));
                }
            }
            Ok(Notice::Purge) => self.purge_lookups(),
            Err(e) => tracing::warn!(error = %e, "unreadable message from the control plane"),
        }
    }

    /// Drops every cached realm lookup.
    fn purge_lookups(&self) {
        self.purges.fetch_add(1, Ordering::Release);
        for scope in self.scopes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values() {
            scope.hits.invalidate_all();
            scope.misses.invalidate_all();
        }
    }

    /// Asks the control plane which realm consumer holds `key_hash`.
    async fn ask(&self, key_hash: String, realms: Vec<String>) -> Result<Answer, String> {
        let outbox = self.outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let outbox = outbox.ok_or("the control plane is unreachable")?;
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (done, answer) = oneshot::channel();
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(request, done);
        let text =
            serde_json::to_string(&ToControlPlane::Lookup { request, key_hash, realms }).map_err(|e| e.to_string())?;
        if outbox.send(text).await.is_err() {
            return Err("the cluster link dropped".into());
        }
        let answered = tokio::time::timeout(LOOKUP_TIMEOUT, answer).await;
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&request);
        match answered {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err("the cluster link dropped during the lookup".into()),
            Err(_) => Err("the control plane did not answer the lookup in time".into()),
        }
    }
}

impl RealmResolver for DataPlane {
    fn scope(&self, realms: &[String]) -> Arc<dyn RealmScope> {
        let mut scopes = self.scopes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let scope = scopes.entry(realms.to_vec()).or_insert_with(|| {
            let cache = || {
                moka::future::Cache::builder().max_capacity(self.realm_cache_size).expire_after(LookupExpiry).build()
            };
            Arc::new(LookupScope {
                realms: realms.to_vec(),
                hits: cache(),
                misses: cache(),
                data_plane: self.this.clone(),
            })
        });
        scope.clone()
    }
}

/// Realm key lookups on this data plane: answered from the cache (a consumer found, or a key known
/// to be unknown), asked of the control plane, and asks that failed.
pub static REALM_LOOKUPS: crate::plugins::prometheus::counters::Counters<4> =
    crate::plugins::prometheus::counters::Counters::new();
pub const LOOKUP_HIT: usize = 0;
pub const LOOKUP_MISS: usize = 1;
pub const LOOKUP_ASKED: usize = 2;
pub const LOOKUP_FAILED: usize = 3;

/// The cached lookups of one list of realms, by key. Hits and misses are kept apart, so that a storm
/// of unknown keys fills (and maintains) only the misses: it neither evicts a known key nor slows
/// its look-ups.
#[derive(Debug)]
pub struct LookupScope {
    realms: Vec<String>,
    hits: moka::future::Cache<String, Arc<Lookup>>,
    misses: moka::future::Cache<String, Arc<Lookup>>,
    data_plane: std::sync::Weak<DataPlane>,
}

impl RealmScope for LookupScope {
    fn resolve<'a>(
        &'a self,
        key: &'a str,
        identity: &'a Directory,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Authenticated>, String>> + Send + 'a>> {
        Box::pin(async move {
            // A cached answer costs one lookup by the key as given: no hashing, no allocation.
            if let Some(hit) = self.hits.get(key).await {
                REALM_LOOKUPS.add(LOOKUP_HIT, 1);
                return Ok(hit.found.clone());
            }
            if let Some(miss) = self.misses.get(key).await {
                REALM_LOOKUPS.add(if miss.found.is_some() { LOOKUP_HIT } else { LOOKUP_MISS }, 1);
                return Ok(miss.found.clone());
            }
            let dp = self.data_plane.upgrade().ok_or("the data plane is stopping")?;
            let purges = dp.purges.load(Ordering::Acquire);
            // One lookup in flight per key; its answer goes to the hits or the misses.
            let lookup = self
                .misses
                .try_get_with(key.to_string(), async {
                    REALM_LOOKUPS.add(LOOKUP_ASKED, 1);
                    let asked = dp.ask(crate::auth::hash(key), self.realms.clone()).await;
                    if asked.is_err() {
                        REALM_LOOKUPS.add(LOOKUP_FAILED, 1);
                    }
                    let (found, negative_ttl) = asked?;
                    let lookup = match found {
                        Some(rc) => {
                            let found = compile::realm_consumer(
                                &rc.id,
                                &rc.username,
                                rc.custom_id.as_deref(),
                                &rc.key_id,
                                &rc.groups,
                                identity,
                            )
                            .map_err(|v| format!("unusable realm consumer: {}", v.message()))?;
                            Lookup { found: Some(found), ttl: lookup_ttl(rc.ttl) }
                        }
                        None => Lookup { found: None, ttl: lookup_ttl(negative_ttl) },
                    };
                    Ok::<_, String>(Arc::new(lookup))
                })
                .await
                .map_err(|e| e.to_string())?;
            if dp.purges.load(Ordering::Acquire) != purges {
                // It may predate the change that purged: not kept.
                self.misses.invalidate(key).await;
            } else if lookup.found.is_some() {
                // Found: moved to the hits (until then, the misses answer with it).
                self.hits.insert(key.to_string(), lookup.clone()).await;
                self.misses.invalidate(key).await;
            }
            Ok(lookup.found.clone())
        })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

    use super::super::protocol::TableDelta;
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    const SERVICE: &str = "00000000-0000-4000-8000-0000000000a1";

    fn data_plane(dir: &Path) -> Arc<DataPlane> {
        let env = [("TOLLGATE_PREFIX".to_string(), dir.display().to_string())];
        let settings = crate::config::from_sources(None, &env).expect("settings");
        DataPlane::new(&settings, "test".into(), Arc::new(SnapshotHolder::new()))
    }

    fn route(id: &str, path: &str) -> serde_json::Value {
        json!({"id": id, "protocols": ["http"], "methods": null, "hosts": null, "paths": [path], "headers": null,
            "snis": null, "strip_path": true, "preserve_host": false, "regex_priority": 0,
            "https_redirect_status_code": 426, "service": {"id": SERVICE}})
    }

    fn row(body: serde_json::Value) -> super::super::protocol::Row {
        let i = body["id"].as_str().map(str::to_string);
        super::super::protocol::Row {
            b: serde_json::value::RawValue::from_string(body.to_string()).expect("raw"),
            e: None,
            i,
        }
    }

    /// A whole configuration of one service and one route, at version 5, as received.
    fn install_first(dp: &DataPlane) -> ConfigDigest {
        let service = json!({"id": SERVICE, "protocol": "http", "host": "127.0.0.1", "port": 9, "path": null,
            "retries": 5, "connect_timeout": 60000, "write_timeout": 60000, "read_timeout": 60000,
            "enabled": true, "tls_verify": null});
        let mut rows = ConfigRows::new();
        rows.insert("services".into(), vec![row(service)]);
        rows.insert("routes".into(), vec![row(route("00000000-0000-4000-8000-0000000000a2", "/one"))]);
        let mut digest = ConfigDigest::default();
        for (t, list) in &rows {
            list.iter().for_each(|r| digest.add(t, r));
        }
        assert!(dp.install(5, "0".repeat(32), &rows, true).is_err(), "rows that do not sum to the hash");
        assert!(matches!(dp.install(5, digest.hex(), &rows, true), Ok(Applied::Whole(_))));
        digest
    }

    /// A delta adding route `/two` to version 5's configuration, announcing `hash` (the right one
    /// when `None`).
    fn delta(from: i64, base: ConfigDigest, hash: Option<String>) -> String {
        let added = row(route("00000000-0000-4000-8000-0000000000a3", "/two"));
        let mut digest = base;
        digest.add("routes", &added);
        let mut tables = BTreeMap::new();
        tables.insert("routes".to_string(), TableDelta { upserts: vec![added], deletes: vec![] });
        let d = ConfigDelta {
            kind: "config_delta".into(),
            from_version: from,
            version: 6,
            hash: hash.unwrap_or_else(|| digest.hex()),
            tables,
            stale_keys: vec![],
        };
        serde_json::to_string(&d).expect("json")
    }

    #[test]
    fn a_delta_that_follows_what_is_held_is_applied_and_moves_the_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dp = data_plane(dir.path());
        let base = install_first(&dp);
        let text = delta(5, base, None);
        match dp.received_delta(Encoding::Identity, text.as_bytes(), &text) {
            Some(ToControlPlane::Applied { hash }) => assert_eq!(Some(hash), dp.status().config_hash),
            other => panic!("{other:?}"),
        }
        assert_eq!(dp.holder.load().version, 6);
        assert_eq!(dp.status().config_version, Some(6));
    }

    #[test]
    fn a_delta_out_of_order_or_with_another_hash_asks_for_the_whole_and_changes_nothing_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dp = data_plane(dir.path());
        let base = install_first(&dp);
        let served = dp.status().config_hash;

        // From a version it does not hold.
        let text = delta(4, base, None);
        let Some(ToControlPlane::Resync { reason }) = dp.received_delta(Encoding::Identity, text.as_bytes(), &text)
        else {
            panic!("resync expected")
        };
        assert!(reason.contains("does not follow version 5"), "{reason}");
        assert_eq!(dp.holder.load().version, 5, "what is served is untouched");

        // Asked once: the deltas already on their way are dropped unanswered.
        let text = delta(5, base, None);
        assert!(dp.received_delta(Encoding::Identity, text.as_bytes(), &text).is_none());

        // With a hash the result does not have (nothing is applied).
        let dp = data_plane(dir.path());
        let base = install_first(&dp);
        let text = delta(5, base, Some("f".repeat(32)));
        let Some(ToControlPlane::Resync { reason }) = dp.received_delta(Encoding::Identity, text.as_bytes(), &text)
        else {
            panic!("resync expected")
        };
        assert!(reason.contains("hash after the delta"), "{reason}");
        assert_eq!(dp.holder.load().version, 5);
        assert_eq!(dp.status().config_hash, served);
        // Having asked, it takes no more deltas until the whole configuration arrives.
        let text = delta(5, base, None);
        assert!(dp.received_delta(Encoding::Identity, text.as_bytes(), &text).is_none());
        assert_eq!(dp.holder.load().version, 5);

        // Unreadable: asked for the whole once the last whole configuration arrived.
        let dp = data_plane(dir.path());
        install_first(&dp);
        assert!(matches!(dp.received_delta(Encoding::Identity, b"{", "{"), Some(ToControlPlane::Resync { .. })));
    }
}
