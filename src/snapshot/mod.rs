//! The immutable, compiled view of one control plane's configuration that the proxy reads: router with
//! compiled route targets and plugin chains, consumers by id and credentials by key. Held in an
//! `ArcSwap`; a request does one atomic load and never locks. Built off the hot path by [`builder`].

pub mod builder;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, StatusCode};
use uuid::Uuid;

use crate::model::schema::now_secs;
use crate::plugins::PluginChain;
use crate::proxy::upstream::UpstreamClient;
use crate::router::Router;

type Hasher = foldhash::fast::RandomState;

/// A consumer as the proxy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub id: Uuid,
    pub username: Option<Box<str>>,
    pub custom_id: Option<Box<str>>,
}

/// Consumers by id.
#[derive(Debug, Clone, Default)]
pub struct ConsumerIndex {
    by_id: HashMap<Uuid, Arc<Consumer>, Hasher>,
}

impl ConsumerIndex {
    pub fn get(&self, id: &Uuid) -> Option<&Arc<Consumer>> {
        self.by_id.get(id)
    }

    /// By id, or by username (a scan: used only when building plugins, never per request).
    pub fn find(&self, id_or_username: &str) -> Option<Arc<Consumer>> {
        if let Ok(id) = Uuid::parse_str(id_or_username) {
            if let Some(c) = self.by_id.get(&id) {
                return Some(c.clone());
            }
        }
        self.by_id.values().find(|c| c.username.as_deref() == Some(id_or_username)).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn insert(&mut self, c: Consumer) {
        self.by_id.insert(c.id, Arc::new(c));
    }

    pub(crate) fn remove(&mut self, id: &Uuid) {
        self.by_id.remove(id);
    }
}

/// A key-auth credential: which consumer it authenticates, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCredential {
    pub id: Uuid,
    pub consumer_id: Uuid,
    pub expires_at: Option<i64>,
}

/// The result of a successful key lookup.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub id: Uuid,
    pub consumer: Arc<Consumer>,
}

/// Credentials by key (O(1)) and keys by credential id (for updates and deletes).
#[derive(Debug, Clone, Default)]
pub struct CredentialIndex {
    by_key: HashMap<Arc<str>, KeyCredential, Hasher>,
    key_of: HashMap<Uuid, Arc<str>, Hasher>,
}

impl CredentialIndex {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub(crate) fn insert(&mut self, key: &str, cred: KeyCredential) {
        self.remove(&cred.id);
        let key: Arc<str> = Arc::from(key);
        self.key_of.insert(cred.id, key.clone());
        self.by_key.insert(key, cred);
    }

    pub(crate) fn remove(&mut self, id: &Uuid) {
        if let Some(key) = self.key_of.remove(id) {
            self.by_key.remove(&key);
        }
    }

    fn get(&self, key: &str) -> Option<&KeyCredential> {
        let cred = self.by_key.get(key)?;
        match cred.expires_at {
            Some(at) if at <= now_secs() => None,
            _ => Some(cred),
        }
    }
}

/// Where a matched route sends traffic.
#[derive(Debug)]
pub struct ServiceTarget {
    pub id: Uuid,
    pub https: bool,
    pub host: Box<str>,
    pub port: u16,
    /// `Host` header when `preserve_host` is off: host, plus `:port` unless it is the default.
    pub host_header: HeaderValue,
    pub scheme: http::uri::Scheme,
    /// `host:port` of every upstream URI.
    pub authority: http::uri::Authority,
    pub path: Option<Box<str>>,
    pub retries: u32,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub client: UpstreamClient,
}

/// A route compiled for the proxy: how to rewrite the request and which plugins run.
#[derive(Debug)]
pub struct RouteTarget {
    pub id: Uuid,
    pub strip_path: bool,
    pub preserve_host: bool,
    /// The route accepts plain-HTTP requests.
    pub http_allowed: bool,
    pub https_redirect_status: StatusCode,
    pub service: Option<Arc<ServiceTarget>>,
    pub chain: PluginChain,
}

/// The whole compiled view.
#[derive(Debug)]
pub struct Snapshot {
    pub version: i64,
    pub router: Arc<Router<Arc<RouteTarget>>>,
    pub consumers: Arc<ConsumerIndex>,
    pub credentials: Arc<CredentialIndex>,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            version: -1,
            router: Arc::new(Router::empty()),
            consumers: Arc::default(),
            credentials: Arc::default(),
        }
    }

    /// Resolves a key to its credential and consumer (two hash lookups).
    pub fn authenticate(&self, key: &str) -> Option<Authenticated> {
        let cred = self.credentials.get(key)?;
        let consumer = self.consumers.get(&cred.consumer_id)?;
        Some(Authenticated { id: cred.id, consumer: consumer.clone() })
    }
}

/// The swap point between the builder and the proxy.
#[derive(Debug)]
pub struct SnapshotHolder {
    current: ArcSwap<Snapshot>,
}

impl SnapshotHolder {
    pub fn new() -> SnapshotHolder {
        SnapshotHolder { current: ArcSwap::from_pointee(Snapshot::empty()) }
    }

    /// One atomic load; hold the guard only for synchronous work.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn store(&self, s: Snapshot) {
        self.current.store(Arc::new(s));
    }
}

impl Default for SnapshotHolder {
    fn default() -> Self {
        SnapshotHolder::new()
    }
}
