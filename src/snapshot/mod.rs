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
use crate::router::Router;

type Hasher = foldhash::fast::RandomState;

/// A consumer as the proxy needs it, with its consumer groups and ACL groups resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub id: Uuid,
    pub username: Option<Box<str>>,
    pub custom_id: Option<Box<str>>,
    /// Consumer groups, sorted by name (`None` for most consumers: no allocation).
    pub groups: Option<Arc<GroupSet>>,
    /// ACL groups (the `acls` credentials).
    pub acl_groups: Option<Arc<GroupSet>>,
}

impl Consumer {
    pub fn new(id: Uuid, username: Option<Box<str>>, custom_id: Option<Box<str>>) -> Consumer {
        Consumer { id, username, custom_id, groups: None, acl_groups: None }
    }

    /// Consumer group memberships (empty when none).
    pub fn group_entries(&self) -> &[GroupEntry] {
        self.groups.as_deref().map_or(&[], |g| &g.entries)
    }
}

/// One named group a consumer belongs to; `id` is the consumer group's id (nil for ACL groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub id: Uuid,
    pub name: Arc<str>,
}

/// A consumer's groups, sorted by name, with the upstream header value (`a, b`) precomputed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSet {
    pub entries: Box<[GroupEntry]>,
    pub header: HeaderValue,
}

impl GroupSet {
    /// `None` for no groups.
    pub fn new(mut entries: Vec<GroupEntry>) -> Option<Arc<GroupSet>> {
        if entries.is_empty() {
            return None;
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        entries.dedup_by(|a, b| a.name == b.name && a.id == b.id);
        let joined = entries.iter().map(|e| &*e.name).collect::<Vec<_>>().join(", ");
        let header = HeaderValue::from_str(&joined).unwrap_or_else(|_| HeaderValue::from_static(""));
        Some(Arc::new(GroupSet { entries: entries.into_boxed_slice(), header }))
    }

    pub fn contains_name(&self, name: &str) -> bool {
        self.entries.iter().any(|e| &*e.name == name)
    }
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
        if let Ok(id) = Uuid::parse_str(id_or_username)
            && let Some(c) = self.by_id.get(&id)
        {
            return Some(c.clone());
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

    /// Replaces a consumer's group sets, keeping the rest.
    pub(crate) fn set_groups(&mut self, id: &Uuid, groups: Option<Arc<GroupSet>>, acl_groups: Option<Arc<GroupSet>>) {
        if let Some(c) = self.by_id.get_mut(id)
            && (c.groups != groups || c.acl_groups != acl_groups)
        {
            let mut updated = Consumer::clone(c);
            updated.groups = groups;
            updated.acl_groups = acl_groups;
            *c = Arc::new(updated);
        }
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
    /// Unix seconds after which the key is refused (`NonZero` keeps the entry small).
    pub expires_at: Option<std::num::NonZeroI64>,
}

/// The result of a successful key lookup.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub id: Uuid,
    pub consumer: Arc<Consumer>,
}

/// Credentials by key (O(1)). Updates and deletes name the key a credential had (the change feed
/// carries it), so no reverse map is kept.
#[derive(Debug, Clone, Default)]
pub struct CredentialIndex {
    by_key: HashMap<Arc<str>, KeyCredential, Hasher>,
}

impl CredentialIndex {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub(crate) fn insert(&mut self, key: &str, cred: KeyCredential) {
        self.by_key.insert(Arc::from(key), cred);
    }

    /// Drops `key` if it still belongs to credential `id`.
    pub(crate) fn remove(&mut self, key: &str, id: &Uuid) {
        if self.by_key.get(key).is_some_and(|c| c.id == *id) {
            self.by_key.remove(key);
        }
    }

    fn get(&self, key: &str) -> Option<&KeyCredential> {
        let cred = self.by_key.get(key)?;
        match cred.expires_at {
            Some(at) if at.get() <= now_secs() => None,
            _ => Some(cred),
        }
    }
}

/// Where a matched route sends traffic.
#[derive(Debug)]
pub struct ServiceTarget {
    pub id: Uuid,
    pub https: bool,
    /// Check the upstream's certificate (`tls_verify`; off unless set, as in Kong).
    pub tls_verify: bool,
    pub host: Box<str>,
    pub port: u16,
    /// `Host` header when `preserve_host` is off: host, plus `:port` unless it is the default.
    pub host_header: HeaderValue,
    /// `host:port/read/write`: the key of this upstream's keep-alive pool (shared by services with
    /// the same address and timeouts).
    pub pool_key: Arc<str>,
    pub path: Option<Box<str>>,
    pub retries: u32,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
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
    /// Kong's `request_buffering`: read the request body before anything goes upstream.
    pub request_buffering: bool,
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
    /// Consumer group ids by name (realm consumers name their groups).
    pub groups_by_name: Arc<HashMap<Box<str>, Uuid, Hasher>>,
}

impl Snapshot {
    /// A consumer's group set from group names, mapped onto this configuration's consumer groups
    /// (a name without a group here keeps a nil id: it is shown upstream but scopes no plugin).
    pub fn group_set(&self, names: &[String]) -> Option<Arc<GroupSet>> {
        GroupSet::new(
            names
                .iter()
                .map(|n| GroupEntry {
                    id: self.groups_by_name.get(n.as_str()).copied().unwrap_or_else(Uuid::nil),
                    name: Arc::from(n.as_str()),
                })
                .collect(),
        )
    }

    pub fn empty() -> Snapshot {
        Snapshot {
            version: -1,
            router: Arc::new(Router::empty()),
            consumers: Arc::default(),
            credentials: Arc::default(),
            groups_by_name: Arc::default(),
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
    /// The configuration version of the current snapshot, for writers waiting to see their change.
    applied: tokio::sync::watch::Sender<i64>,
}

impl SnapshotHolder {
    pub fn new() -> SnapshotHolder {
        SnapshotHolder {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            applied: tokio::sync::watch::Sender::new(-1),
        }
    }

    /// Waits (up to `within`) until the proxy serves configuration `version` or newer; returns
    /// whether it does.
    pub async fn wait_for(&self, version: i64, within: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(within, rx.wait_for(|v| *v >= version)).await.is_ok_and(|r| r.is_ok())
    }

    /// An owned reference, for work that waits on I/O.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// One atomic load; hold the guard only for synchronous work.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn store(&self, s: Snapshot) {
        let version = s.version;
        self.current.store(Arc::new(s));
        self.applied.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }
}

impl Default for SnapshotHolder {
    fn default() -> Self {
        SnapshotHolder::new()
    }
}
