//! Who a request can be: consumers with their consumer groups and ACL groups, key credentials, and
//! consumer groups by name, indexed for the proxy (one hash lookup per key). Plugins authenticate
//! against a [`Directory`]; the snapshot holds one. Knows nothing of routes, plugins or storage.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use uuid::Uuid;

use crate::clock::now_secs;

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
    /// The consumer as log entries show it, written when first logged.
    log_text: LogText,
}

/// A consumer's `{"id","username","custom_id"}` in Kong's log serializer, kept once written: a
/// logged request copies it rather than formatting an id and escaping names. Not part of what a
/// consumer is (equal consumers are equal whether or not it is written yet).
#[derive(Debug, Clone, Default)]
struct LogText(std::sync::OnceLock<Box<str>>);

impl PartialEq for LogText {
    fn eq(&self, _: &LogText) -> bool {
        true
    }
}

impl Eq for LogText {}

impl Consumer {
    pub fn new(id: Uuid, username: Option<Box<str>>, custom_id: Option<Box<str>>) -> Consumer {
        Consumer { id, username, custom_id, groups: None, acl_groups: None, log_text: LogText::default() }
    }

    /// The consumer as Kong's log serializer writes it (JSON).
    pub fn log_text(&self) -> &str {
        self.log_text.0.get_or_init(|| {
            let text = |s: &Option<Box<str>>| serde_json::to_string(s).unwrap_or_else(|_| "null".into());
            format!(
                r#"{{"id":"{}","username":{},"custom_id":{}}}"#,
                self.id,
                text(&self.username),
                text(&self.custom_id)
            )
            .into()
        })
    }

    /// Consumer group memberships (empty when none).
    pub fn group_entries(&self) -> &[GroupEntry] {
        self.groups.as_deref().map_or(&[], |g| &g.entries)
    }

    /// Whether some of this consumer's groups could not be loaded (a stored membership or ACL
    /// that does not compile): such a consumer is not authenticated, since a group it lacks might
    /// be the one that denies it.
    pub fn incomplete(&self) -> bool {
        self.groups.as_ref().is_some_and(|g| g.incomplete) || self.acl_groups.as_ref().is_some_and(|g| g.incomplete)
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
    /// Some of the consumer's groups could not be loaded (see [`Consumer::incomplete`]).
    pub incomplete: bool,
}

impl GroupSet {
    /// `None` for no groups.
    pub fn new(entries: Vec<GroupEntry>) -> Option<Arc<GroupSet>> {
        GroupSet::with_gaps(entries, false)
    }

    /// A group set that may be missing groups (`incomplete`), kept even when empty.
    pub fn with_gaps(mut entries: Vec<GroupEntry>, incomplete: bool) -> Option<Arc<GroupSet>> {
        if entries.is_empty() && !incomplete {
            return None;
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        entries.dedup_by(|a, b| a.name == b.name && a.id == b.id);
        let joined = entries.iter().map(|e| &*e.name).collect::<Vec<_>>().join(", ");
        let header = HeaderValue::from_str(&joined).unwrap_or_else(|_| HeaderValue::from_static(""));
        Some(Arc::new(GroupSet { entries: entries.into_boxed_slice(), header, incomplete }))
    }

    pub fn contains_name(&self, name: &str) -> bool {
        self.entries.iter().any(|e| &*e.name == name)
    }
}

/// Shards of an index.
const SHARDS: usize = 64;

/// A map split into shards shared between copies until one is written: a configuration change
/// copies the index (the served snapshot keeps the old one) and the shard it writes, 1/64 of the
/// entries, not all 100,000 of them. A look-up hashes its key once more, to pick the shard.
#[derive(Debug)]
struct Shards<K, V> {
    shards: Box<[Arc<HashMap<K, V, Hasher>>]>,
}

impl<K, V> Clone for Shards<K, V> {
    fn clone(&self) -> Self {
        Shards { shards: self.shards.clone() }
    }
}

impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        Shards { shards: (0..SHARDS).map(|_| Arc::new(HashMap::default())).collect() }
    }
}

impl<K: std::hash::Hash + Eq + Clone, V: Clone> Shards<K, V> {
    fn shard_of<Q: std::hash::Hash + ?Sized>(key: &Q) -> usize {
        use std::hash::BuildHasher;
        // Fixed, so that a key finds its shard in every copy.
        (foldhash::fast::FixedState::default().hash_one(key) as usize) % SHARDS
    }

    fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.shards.get(Self::shard_of(key))?.get(key)
    }

    fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let shard = self.shards.get_mut(Self::shard_of(key))?;
        if !shard.contains_key(key) {
            return None;
        }
        Arc::make_mut(shard).get_mut(key)
    }

    fn insert(&mut self, key: K, value: V) {
        if let Some(shard) = self.shards.get_mut(Self::shard_of(&key)) {
            Arc::make_mut(shard).insert(key, value);
        }
    }

    fn remove<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(shard) = self.shards.get_mut(Self::shard_of(key))
            && shard.contains_key(key)
        {
            Arc::make_mut(shard).remove(key);
        }
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

/// Consumers by id.
#[derive(Debug, Clone, Default)]
pub struct ConsumerIndex {
    by_id: Shards<Uuid, Arc<Consumer>>,
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
        self.by_id.len() == 0
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
    by_key: Shards<Arc<str>, KeyCredential>,
}

impl CredentialIndex {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.len() == 0
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

/// Everything a request can be identified as, in one configuration: consumers by id, credentials
/// by key, consumer group ids by name (realm consumers name their groups).
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub consumers: Arc<ConsumerIndex>,
    pub credentials: Arc<CredentialIndex>,
    pub groups_by_name: Arc<HashMap<Box<str>, Uuid, Hasher>>,
}

impl Directory {
    /// Resolves a key to its credential and consumer (two hash lookups).
    pub fn authenticate(&self, key: &str) -> Option<Authenticated> {
        let cred = self.credentials.get(key)?;
        let consumer = self.consumers.get(&cred.consumer_id).filter(|c| !c.incomplete())?;
        Some(Authenticated { id: cred.id, consumer: consumer.clone() })
    }

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
}
