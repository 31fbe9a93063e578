//! A compact mirror of one control plane's configuration, fed stored rows (a whole load, or the
//! rows a batch of changes touched) and turned into [`Snapshot`]s. Pure: rows in, snapshot out, no
//! I/O (following the store is `sync`'s job, receiving configurations the data plane's).
//!
//! Every row is compiled as it comes in (`compile`). A row that does not compile never takes the
//! node down and never opens a route: the entity keeps its last good version, or, without one, a
//! plugin becomes an instance answering 500, a service makes its routes answer 500, a route whose
//! matching attributes compile answers 500, and a consumer's credentials or groups that do not load
//! keep it from authenticating. Each such row is logged once and listed in the snapshot's
//! `rejected` until it is fixed or deleted. Consumers and credentials are updated in place
//! (copy-on-write of the index); router and chains are rebuilt only when services, routes or plugins
//! changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use uuid::Uuid;

use super::compile::{self, AclRow, CompiledRoute, ConsumerRow, GroupRow, KeyAuthRow, MembershipRow, PluginScope};
use super::{Destination, Rejection, RouteBalancer, RouteTarget, ServiceTarget, Snapshot};
use crate::balancer::{LiveBalancer, NodeBalancing, TargetConfig, TargetSource, UpstreamConfig, Variant};
use crate::identity::{ConsumerIndex, CredentialIndex, Directory, GroupEntry, GroupSet};
use crate::model::Kind;
use crate::model::schema::Violations;
use crate::plugins::chain::ChainBuilder;
use crate::plugins::log::{ServiceSubject, Subject};
use crate::plugins::rate_limiting::Counters;
use crate::plugins::{BuildEnv, PluginInstanceRow, RealmResolver};
use crate::router::Router;
use crate::tls::{CertPair, CertificateTable};
use tokio_rustls::rustls::pki_types::CertificateDer;

/// The order kinds are read in: a consumer's groups and ACL groups before the consumer.
pub const LOAD_ORDER: [Kind; 13] = [
    Kind::Certificate,
    Kind::Sni,
    Kind::CaCertificate,
    Kind::Upstream,
    Kind::Target,
    Kind::ConsumerGroup,
    Kind::GroupMembership,
    Kind::Acl,
    Kind::Consumer,
    Kind::KeyAuth,
    Kind::Service,
    Kind::Route,
    Kind::Plugin,
];

/// One stored row: its id when known beforehand, its body and a credential's expiry.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub id: Option<&'a str>,
    pub body: &'a str,
    pub expires_at: Option<i64>,
}

/// What one batch of committed changes did to one kind: rows written (as they are now) and ids
/// deleted. Only the last operation on an entity counts.
#[derive(Debug, Default)]
pub struct KindChanges {
    pub upserts: Vec<(String, String, Option<i64>)>,
    pub deletes: Vec<String>,
}

/// One batch of committed changes, ready to apply.
#[derive(Debug, Default)]
pub struct Changes {
    /// The configuration version the batch leads to.
    pub version: i64,
    pub kinds: BTreeMap<Kind, KindChanges>,
    /// Keys credentials had before the batch (credential id, key): each is dropped from the index
    /// unless its credential's new version is rejected (the last good one then stays).
    pub stale_keys: Vec<(Uuid, String)>,
}

/// The mirror of one control plane.
#[derive(Debug, Default)]
pub struct ConfigState {
    version: i64,
    consumers: Arc<ConsumerIndex>,
    credentials: Arc<CredentialIndex>,
    /// Consumer group names by id.
    groups: HashMap<Uuid, Arc<str>>,
    /// Memberships by id: (consumer, group).
    memberships: HashMap<Uuid, (Uuid, Uuid)>,
    /// ACL credentials by id: (consumer, group name).
    acls: HashMap<Uuid, (Uuid, Arc<str>)>,
    /// A consumer's memberships and ACL credentials (ids into the two maps above).
    consumer_links: HashMap<Uuid, ConsumerLinks>,
    /// Services by id; `None` for one stored without any version that compiles.
    services: HashMap<Uuid, Option<Arc<ServiceTarget>>>,
    routes: HashMap<Uuid, Arc<CompiledRoute>>,
    plugins: HashMap<Uuid, PluginInstanceRow>,
    /// Certificates by id, ready to serve.
    certificates: HashMap<Uuid, Arc<CertPair>>,
    /// SNI names by id: (lower-cased name, certificate).
    snis: HashMap<Uuid, (Box<str>, Uuid)>,
    /// CA certificates by id (DER), for upstream TLS.
    ca_certificates: HashMap<Uuid, CertificateDer<'static>>,
    /// Upstreams by id, as stored.
    upstreams: HashMap<Uuid, Arc<UpstreamConfig>>,
    /// Targets by id.
    targets: HashMap<Uuid, TargetConfig>,
    /// Target health and DNS answers on this node, kept across builds and reloads.
    balancing: NodeBalancing,
    /// The balancers of the last router, by upstream id.
    balancers: Arc<HashMap<Uuid, Arc<LiveBalancer>>>,
    /// Services whose upstream TLS names certificates or CAs, kept to recompile when those change.
    tls_services: HashMap<Uuid, compile::ServiceRow>,
    /// The SNI table, kept between builds until a certificate or SNI changes.
    certificate_table: Option<Arc<CertificateTable>>,
    /// Compiled router kept between builds when only consumers changed, and edited in place of a
    /// rebuild when only routes changed.
    router: Option<Arc<Router<Arc<RouteTarget>>>>,
    /// Routes the next build must place again (`All`: the router is rebuilt whole).
    stale: StaleRoutes,
    /// The plugin instances of the last router, reused for routes placed again while no plugin,
    /// service or anything else a chain depends on changed.
    chains: Option<Arc<ChainBuilder>>,
    /// The balancers of the last router, by upstream name.
    balancers_by_name: HashMap<Box<str>, Arc<LiveBalancer>>,
    /// Rate-limiting counters, kept across builds and reloads.
    counters: Arc<Counters>,
    /// Realm key resolution (a data plane's).
    resolver: Option<Arc<dyn RealmResolver>>,
    /// Rows that do not compile, by kind and id, with why.
    rejected: BTreeMap<(Kind, String), String>,
}

/// What the next build must do to the router besides keeping it.
#[derive(Debug, Default)]
enum StaleRoutes {
    /// Rebuild it whole.
    #[default]
    All,
    /// Place these routes again (added, changed or removed); everything else stands.
    Only(Vec<Uuid>),
}

impl StaleRoutes {
    /// Few enough routes to edit the router rather than assemble it whole (an edit costs each
    /// route a few list insertions; a large share of the routes is cheaper assembled at once).
    fn few(&self, routes: usize) -> bool {
        matches!(self, StaleRoutes::Only(ids) if ids.len() <= (routes / 8).max(64))
    }

    fn add(&mut self, ids: impl IntoIterator<Item = Uuid>) {
        if let StaleRoutes::Only(list) = self {
            list.extend(ids);
        }
    }
}

/// A route's place among routes of equal priority: Kong breaks ties in favour of the larger
/// route id, and the router prefers the smaller key.
fn route_order(id: Uuid) -> u128 {
    u128::MAX - id.as_u128()
}

/// What hangs off one consumer in the mirror.
#[derive(Debug, Default)]
struct ConsumerLinks {
    memberships: Vec<Uuid>,
    acls: Vec<Uuid>,
    /// Membership and ACL rows of this consumer that do not compile and have no good version.
    unloaded: Vec<Uuid>,
}

impl ConsumerLinks {
    fn is_empty(&self) -> bool {
        self.memberships.is_empty() && self.acls.is_empty() && self.unloaded.is_empty()
    }
}

/// A stored body as a typed row, parsed once; a mismatch names the field.
fn typed<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, Violations> {
    compile::read_str::<T>(body)
}

impl ConfigState {
    /// An empty mirror at `version`, counting rate limits in `counters`.
    pub fn new(version: i64, counters: Arc<Counters>) -> ConfigState {
        ConfigState { version, counters, ..ConfigState::default() }
    }

    /// A configuration received whole (a data plane's) or loaded from a store, rows in
    /// [`LOAD_ORDER`]. Rows that do not compile are kept out and listed in [`ConfigState::rejected`].
    pub fn from_rows<'a>(version: i64, rows: impl IntoIterator<Item = (Kind, Row<'a>)>) -> ConfigState {
        let mut state = ConfigState { version, ..ConfigState::default() };
        for (kind, row) in rows {
            state.ingest(kind, row);
        }
        state
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    /// Adds one row of a whole configuration being loaded, kinds in [`LOAD_ORDER`] (rows stream in
    /// from the store one at a time, never all held at once).
    pub fn load_row(&mut self, kind: Kind, row: Row<'_>) {
        self.ingest(kind, row);
    }

    /// Rows that do not compile, as `(table, id, why)`.
    pub fn rejected(&self) -> Vec<Rejection> {
        self.rejected
            .iter()
            .map(|((kind, id), message)| Rejection { entity: kind.table(), id: id.clone(), message: message.clone() })
            .collect()
    }

    /// Counts rate limits in `counters` (a node keeps its counters across configurations).
    pub fn use_counters(&mut self, counters: Arc<Counters>) {
        self.counters = counters;
        self.stale = StaleRoutes::All;
    }

    /// Resolves realm keys through `resolver` (a data plane's link to its control plane).
    pub fn use_resolver(&mut self, resolver: Arc<dyn RealmResolver>) {
        self.resolver = Some(resolver);
        self.stale = StaleRoutes::All;
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Keeps target health and DNS answers in `balancing` (the node's, or those of the state this
    /// one replaces).
    pub fn use_balancing(&mut self, balancing: NodeBalancing) {
        self.balancing = balancing;
        self.stale = StaleRoutes::All;
    }

    pub fn balancing(&self) -> NodeBalancing {
        self.balancing.clone()
    }

    /// Records that a row does not compile (logged when it first fails, or fails differently).
    fn reject(&mut self, kind: Kind, id: &str, why: &Violations) {
        let message = why.message();
        let key = (kind, id.to_string());
        if self.rejected.get(&key) != Some(&message) {
            tracing::error!(entity = kind.table(), id, error = %message, "stored entity does not compile; kept out");
            self.rejected.insert(key, message);
        }
    }

    /// Clears a row's rejection once it compiles or is deleted (nothing to look up, and nothing
    /// allocated, while no row is rejected: the usual case, row after row of a large load).
    fn accept(&mut self, kind: Kind, id: &str) {
        if !self.rejected.is_empty() && self.rejected.remove(&(kind, id.to_string())).is_some() {
            tracing::info!(entity = kind.table(), id, "entity compiles again");
        }
    }

    /// Adds one stored row (kinds in [`LOAD_ORDER`] when loading a whole configuration); returns
    /// the consumers whose groups it touched. The row is parsed once, straight into its typed row;
    /// only a row that does not compile is read again, for what can be salvaged of it.
    fn ingest(&mut self, kind: Kind, row: Row<'_>) -> Vec<Uuid> {
        let mut regroup = Vec::new();
        let compiled: Result<Uuid, Violations> = match kind {
            Kind::Certificate => {
                typed::<compile::CertificateRow>(row.body).and_then(|c| compile::certificate(&c)).map(|pair| {
                    let id = pair.id;
                    self.certificates.insert(id, pair);
                    self.certificate_table = None;
                    id
                })
            }
            Kind::Sni => typed::<compile::SniRow>(row.body).map(|sni| {
                self.snis.insert(sni.id, (sni.name.to_ascii_lowercase().into(), sni.certificate.id));
                self.certificate_table = None;
                sni.id
            }),
            Kind::CaCertificate => typed::<compile::CaCertificateRow>(row.body).and_then(|c| {
                let der = compile::ca_certificate(&c)?;
                self.ca_certificates.insert(c.id, der);
                Ok(c.id)
            }),
            Kind::Upstream => typed::<UpstreamConfig>(row.body).map(|u| {
                let id = u.id;
                self.upstreams.insert(id, Arc::new(u));
                id
            }),
            Kind::Target => typed::<compile::TargetRow>(row.body).and_then(|t| compile::target(&t)).map(|t| {
                let id = t.id;
                self.targets.insert(id, t);
                id
            }),
            Kind::ConsumerGroup => typed::<GroupRow>(row.body).and_then(compile::group).map(|g| {
                regroup.extend(self.memberships.values().filter(|(_, gid)| *gid == g.id).map(|(c, _)| *c));
                self.groups.insert(g.id, Arc::from(g.name));
                g.id
            }),
            Kind::GroupMembership => typed::<MembershipRow>(row.body).map(|m| {
                regroup.extend(self.remove_membership(&m.id));
                regroup.push(m.consumer.id);
                self.memberships.insert(m.id, (m.consumer.id, m.consumer_group.id));
                self.consumer_links.entry(m.consumer.id).or_default().memberships.push(m.id);
                m.id
            }),
            Kind::Acl => typed::<AclRow>(row.body).and_then(compile::acl).map(|a| {
                regroup.extend(self.remove_acl(&a.id));
                regroup.push(a.consumer.id);
                self.acls.insert(a.id, (a.consumer.id, Arc::from(a.group)));
                self.consumer_links.entry(a.consumer.id).or_default().acls.push(a.id);
                a.id
            }),
            Kind::Consumer => typed::<ConsumerRow>(row.body).and_then(compile::consumer).map(|mut c| {
                let id = c.id;
                (c.groups, c.acl_groups) = self.group_sets(&id);
                Arc::make_mut(&mut self.consumers).insert(c);
                id
            }),
            Kind::KeyAuth => typed::<KeyAuthRow>(row.body)
                .and_then(|r| compile::key_credential(r, row.expires_at))
                .map(|(key, cred)| {
                    let id = cred.id;
                    Arc::make_mut(&mut self.credentials).insert(&key, cred);
                    id
                }),
            Kind::Service => typed::<compile::ServiceRow>(row.body).and_then(|parsed| {
                let row_body = row.body;
                let row = parsed;
                let entities = compile::TlsEntities {
                    certificates: Some(&self.certificates),
                    ca_certificates: Some(&self.ca_certificates),
                };
                let mut target = compile::service(&row, entities)?;
                let id = target.id;
                let subject = &target.subject;
                target.subject = Arc::new(ServiceSubject {
                    id,
                    label: subject.label.clone(),
                    entity: Arc::from(compile::entity_json(row_body)),
                });
                self.services.insert(id, Some(Arc::new(target)));
                if row.uses_tls_entities() {
                    self.tls_services.insert(id, row);
                } else {
                    self.tls_services.remove(&id);
                }
                Ok(id)
            }),
            Kind::Route => typed::<compile::RouteRow>(row.body).and_then(|r| compile::route(&r)).map(|mut r| {
                r.entity = Arc::from(compile::entity_json(row.body));
                let id = r.id;
                self.routes.insert(id, Arc::new(r));
                id
            }),
            Kind::Plugin => typed::<compile::PluginRow>(row.body)
                .and_then(|p| compile::plugin(&p, &ConsumerIndex::default(), Counters::dry_run(), None))
                .map(|(p, _)| {
                    let id = p.id;
                    self.plugins.insert(id, p);
                    id
                }),
        };
        match compiled {
            Ok(_) if self.rejected.is_empty() => {}
            Ok(id) => self.accept(kind, &id.to_string()),
            Err(why) => regroup.extend(self.salvage(kind, row, &why)),
        }
        regroup
    }

    /// A row that does not compile: reported, and kept out closed (see the module's doc). Returns
    /// the consumer whose groups it leaves incomplete, if any.
    fn salvage(&mut self, kind: Kind, row: Row<'_>, why: &Violations) -> Option<Uuid> {
        let value: Value = serde_json::from_str(row.body).unwrap_or(Value::Null);
        let id = row
            .id
            .map(str::to_string)
            .or_else(|| value.get("id").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "?".to_string());
        let uuid = Uuid::parse_str(&id).ok();
        self.reject(kind, &id, why);
        match kind {
            Kind::GroupMembership | Kind::Acl => return self.unloaded_link(kind, uuid, &value),
            // Without a good version its routes answer 500 rather than vanish.
            Kind::Service => {
                if let Some(sid) = uuid {
                    self.services.entry(sid).or_insert(None);
                }
            }
            // Matched but answered 500 when only its target part is at fault.
            Kind::Route => {
                if let Ok(r) = typed::<compile::RouteRow>(row.body)
                    && !self.routes.contains_key(&r.id)
                    && let Some(mut broken) = compile::broken_route(&r)
                {
                    broken.entity = Arc::from(compile::entity_json(row.body));
                    self.routes.insert(r.id, Arc::new(broken));
                }
            }
            Kind::Plugin => {
                let pid = uuid.unwrap_or_else(Uuid::new_v4);
                self.plugins.entry(pid).or_insert_with(|| {
                    // Scope unreadable: it guards everything until fixed.
                    let scope: PluginScope = serde_json::from_value(value.clone()).unwrap_or_default();
                    let name = value.get("name").and_then(Value::as_str).unwrap_or("unknown");
                    scope.broken_instance(pid, name)
                });
            }
            // A consumer, a credential or a group without a good version is left out: its keys
            // find no one (401).
            Kind::Consumer | Kind::KeyAuth | Kind::ConsumerGroup => {}
            // A certificate without a good version is not served: its names get the default one.
            Kind::Certificate | Kind::Sni | Kind::CaCertificate => {}
            // An upstream or target without a good version takes no traffic.
            Kind::Upstream | Kind::Target => {}
        }
        None
    }

    /// A membership or ACL row that does not compile: if it had no good version and names its
    /// consumer, that consumer's groups are incomplete until it is fixed. Returns the consumer.
    fn unloaded_link(&mut self, kind: Kind, row: Option<Uuid>, body: &Value) -> Option<Uuid> {
        let row = row?;
        let loaded = match kind {
            Kind::Acl => self.acls.contains_key(&row),
            _ => self.memberships.contains_key(&row),
        };
        if loaded {
            return None;
        }
        let consumer = body.get("consumer").and_then(|c| c.get("id")).and_then(Value::as_str)?;
        let consumer = Uuid::parse_str(consumer).ok()?;
        let links = self.consumer_links.entry(consumer).or_default();
        if !links.unloaded.contains(&row) {
            links.unloaded.push(row);
        }
        Some(consumer)
    }

    /// Forgets an unloaded link row (deleted or now loaded); returns its consumer.
    fn forget_unloaded(&mut self, row: &Uuid) -> Option<Uuid> {
        let consumer = self.consumer_links.iter().find(|(_, l)| l.unloaded.contains(row)).map(|(c, _)| *c)?;
        if let Some(links) = self.consumer_links.get_mut(&consumer) {
            links.unloaded.retain(|r| r != row);
        }
        Some(consumer)
    }

    fn group_sets(&self, consumer: &Uuid) -> (Option<Arc<GroupSet>>, Option<Arc<GroupSet>>) {
        let Some(links) = self.consumer_links.get(consumer) else { return (None, None) };
        let groups = links
            .memberships
            .iter()
            .filter_map(|m| self.memberships.get(m))
            .filter_map(|(_, g)| self.groups.get(g).map(|name| GroupEntry { id: *g, name: name.clone() }))
            .collect();
        let acls = links
            .acls
            .iter()
            .filter_map(|a| self.acls.get(a))
            .map(|(_, name)| GroupEntry { id: Uuid::nil(), name: name.clone() })
            .collect();
        let gaps = !links.unloaded.is_empty();
        (GroupSet::with_gaps(groups, gaps), GroupSet::with_gaps(acls, gaps))
    }

    /// Returns the consumer the membership belonged to.
    fn remove_membership(&mut self, id: &Uuid) -> Option<Uuid> {
        let (consumer, _) = self.memberships.remove(id)?;
        if let Some(links) = self.consumer_links.get_mut(&consumer) {
            links.memberships.retain(|m| m != id);
        }
        Some(consumer)
    }

    fn remove_acl(&mut self, id: &Uuid) -> Option<Uuid> {
        let (consumer, _) = self.acls.remove(id)?;
        if let Some(links) = self.consumer_links.get_mut(&consumer) {
            links.acls.retain(|a| a != id);
        }
        Some(consumer)
    }

    /// Applies a batch of committed changes; returns whether the router must be rebuilt.
    pub fn apply(&mut self, changes: &Changes) -> bool {
        // Anything but routes changing makes the router be rebuilt whole.
        let mut routing = false;
        let mut routes_changed: Vec<Uuid> = Vec::new();
        // Consumers whose group sets may have changed.
        let mut regroup: Vec<Uuid> = Vec::new();
        for (&kind, batch) in &changes.kinds {
            let deleted: Vec<Uuid> = batch.deletes.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect();
            for id in &batch.deletes {
                self.accept(kind, id);
            }
            match kind {
                Kind::Certificate => {
                    routing = true;
                    deleted.iter().for_each(|id| drop(self.certificates.remove(id)));
                    self.certificate_table = None;
                }
                Kind::Sni => {
                    deleted.iter().for_each(|id| drop(self.snis.remove(id)));
                    self.certificate_table = None;
                }
                Kind::CaCertificate => {
                    routing = true;
                    deleted.iter().for_each(|id| drop(self.ca_certificates.remove(id)));
                }
                Kind::Upstream => {
                    routing = true;
                    deleted.iter().for_each(|id| drop(self.upstreams.remove(id)));
                    // Their targets went with them (a cascade); their rows may come later or not at all.
                    self.targets.retain(|_, t| !deleted.contains(&t.upstream));
                }
                Kind::Target => {
                    routing = true;
                    deleted.iter().for_each(|id| drop(self.targets.remove(id)));
                }
                Kind::Consumer => {
                    let index = Arc::make_mut(&mut self.consumers);
                    deleted.iter().for_each(|id| index.remove(id));
                    // Plugins resolve `anonymous` consumers when they are built.
                    routing |= self.has_anonymous();
                }
                Kind::KeyAuth => {
                    // Keys of deleted credentials; those of rewritten ones go with their upsert.
                    let index = Arc::make_mut(&mut self.credentials);
                    for (id, key) in changes.stale_keys.iter().filter(|(id, _)| deleted.contains(id)) {
                        index.remove(key, id);
                    }
                }
                Kind::Service => {
                    routing = true;
                    for id in &deleted {
                        self.services.remove(id);
                        self.tls_services.remove(id);
                    }
                }
                Kind::Route => {
                    deleted.iter().for_each(|id| drop(self.routes.remove(id)));
                    routes_changed.extend(&deleted);
                    routes_changed.extend(batch.upserts.iter().filter_map(|(id, _, _)| Uuid::parse_str(id).ok()));
                }
                Kind::Plugin => {
                    routing = true;
                    deleted.iter().for_each(|id| drop(self.plugins.remove(id)));
                }
                Kind::ConsumerGroup => {
                    for id in &deleted {
                        self.groups.remove(id);
                        regroup.extend(self.memberships.values().filter(|(_, g)| g == id).map(|(c, _)| *c));
                    }
                }
                Kind::GroupMembership => {
                    for id in &deleted {
                        regroup.extend(self.remove_membership(id));
                        regroup.extend(self.forget_unloaded(id));
                    }
                }
                Kind::Acl => {
                    for id in &deleted {
                        regroup.extend(self.remove_acl(id));
                        regroup.extend(self.forget_unloaded(id));
                    }
                }
            }
            for (id, body, expires_at) in &batch.upserts {
                if kind == Kind::KeyAuth {
                    self.drop_stale_key(changes, id, body);
                }
                if matches!(kind, Kind::GroupMembership | Kind::Acl)
                    && let Ok(uuid) = Uuid::parse_str(id)
                {
                    regroup.extend(self.forget_unloaded(&uuid));
                }
                regroup.extend(self.ingest(kind, Row { id: Some(id), body, expires_at: *expires_at }));
            }
            if kind == Kind::Consumer && !batch.upserts.is_empty() {
                routing |= self.has_anonymous();
            }
            if matches!(kind, Kind::Certificate | Kind::CaCertificate) {
                routing = true;
                self.recompile_tls_services();
            }
        }
        regroup.sort_unstable();
        regroup.dedup();
        if !regroup.is_empty() {
            let sets: Vec<_> = regroup.iter().map(|c| (*c, self.group_sets(c))).collect();
            let index = Arc::make_mut(&mut self.consumers);
            for (c, (groups, acls)) in sets {
                index.set_groups(&c, groups, acls);
            }
            // The anonymous consumer of a plugin is captured when the plugin is built.
            routing |= self.has_anonymous();
            self.consumer_links.retain(|_, l| !l.is_empty());
        }
        self.version = changes.version;
        if routing {
            self.stale = StaleRoutes::All;
        }
        let routes = !routes_changed.is_empty();
        self.stale.add(routes_changed);
        routing || routes
    }

    /// Before a credential's new version goes in, its previous keys leave the index, unless the
    /// new version does not compile (the last good one then stays).
    fn drop_stale_key(&mut self, changes: &Changes, id: &str, body: &str) {
        let Ok(uuid) = Uuid::parse_str(id) else { return };
        let compiles = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| compile::read::<KeyAuthRow>(v).ok())
            .is_some_and(|r| compile::key_credential(r, None).is_ok());
        if !compiles {
            return;
        }
        let index = Arc::make_mut(&mut self.credentials);
        for (cred, key) in changes.stale_keys.iter().filter(|(cred, _)| *cred == uuid) {
            index.remove(key, cred);
        }
    }

    fn has_anonymous(&self) -> bool {
        self.plugins.values().any(|p| p.config.get("anonymous").is_some_and(|a| !a.is_null()))
    }

    /// The snapshot with the router assembled whole, whatever changed (tests compare it with an
    /// edited one).
    #[cfg(test)]
    pub(crate) fn rebuild_whole(&mut self) -> Snapshot {
        self.stale = StaleRoutes::All;
        self.build(true)
    }

    /// Compiles the snapshot, reusing the previous router unless `routing` says it is stale. Never
    /// fails: every row was compiled on the way in.
    pub fn build(&mut self, routing: bool) -> Snapshot {
        let router = match (&self.router, routing) {
            (Some(r), false) => r.clone(),
            (Some(r), true) if self.stale.few(self.routes.len()) && self.chains.is_some() => {
                let r = r.clone();
                let started = Instant::now();
                // Whole again until the edit is done: a build that panics halfway (a bug) is
                // followed by a whole one, not by an edit missing these routes.
                let StaleRoutes::Only(ids) = std::mem::replace(&mut self.stale, StaleRoutes::All) else {
                    return self.build(true);
                };
                let r = Arc::new(self.edit_router(&r, ids));
                self.stale = StaleRoutes::Only(Vec::new());
                let elapsed_ms = (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
                tracing::debug!(routes = r.len(), elapsed_ms, "router edited");
                self.router = Some(r.clone());
                r
            }
            _ => {
                let started = Instant::now();
                let r = Arc::new(self.assemble_router());
                self.stale = StaleRoutes::Only(Vec::new());
                let elapsed_ms = (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0;
                tracing::debug!(routes = r.len(), elapsed_ms, "router compiled");
                self.router = Some(r.clone());
                r
            }
        };
        Snapshot {
            version: self.version,
            router,
            identity: Directory {
                consumers: self.consumers.clone(),
                credentials: self.credentials.clone(),
                groups_by_name: Arc::new(self.groups.iter().map(|(id, name)| (Box::from(&**name), *id)).collect()),
            },
            certificates: self.certificate_table(),
            rejected: self.rejected().into(),
            balancers: self.balancers.clone(),
            built: std::time::SystemTime::now(),
        }
    }

    /// A balancer per upstream name, with the health this node keeps for each target (health of
    /// targets no longer configured is forgotten), the DNS slot of each target named by host name,
    /// and a variant per scheme and pool settings of the services that use it.
    fn build_balancers(&self) -> HashMap<Box<str>, Arc<LiveBalancer>> {
        let mut by_upstream: HashMap<Uuid, Vec<TargetSource>> = HashMap::new();
        for t in self.targets.values() {
            let name = t.host.parse::<std::net::IpAddr>().is_err().then(|| self.balancing.dns.name(&t.host));
            by_upstream.entry(t.upstream).or_default().push(TargetSource { config: t.clone(), name });
        }
        let mut variants: HashMap<&str, Vec<Variant>> = HashMap::new();
        for s in self.services.values().flatten() {
            let v = Variant { https: s.https, pool_suffix: s.pool_suffix.clone() };
            let list = variants.entry(&s.host).or_default();
            if !list.contains(&v) {
                list.push(v);
            }
        }
        let health = &self.balancing.health;
        let mut out = HashMap::new();
        for (id, upstream) in &self.upstreams {
            let targets = by_upstream.remove(id).unwrap_or_default();
            let keep: Vec<(&str, u16)> = targets.iter().map(|t| (t.config.host.as_str(), t.config.port)).collect();
            health.retain(*id, &keep);
            let variants = variants.get(upstream.name.as_str()).cloned().unwrap_or_default();
            let live = LiveBalancer::new(upstream.clone(), targets, health.clone(), variants);
            out.insert(upstream.name.as_str().into(), Arc::new(live));
        }
        let ids: Vec<Uuid> = self.upstreams.keys().copied().collect();
        health.retain_upstreams(&ids);
        out
    }

    /// Services whose upstream TLS names certificates or CAs, compiled again after those changed.
    fn recompile_tls_services(&mut self) {
        let entities = compile::TlsEntities {
            certificates: Some(&self.certificates),
            ca_certificates: Some(&self.ca_certificates),
        };
        for (id, row) in &self.tls_services {
            if let Ok(mut target) = compile::service(row, entities) {
                // The stored text is unchanged: only the certificates moved.
                if let Some(Some(old)) = self.services.get(id) {
                    target.subject = old.subject.clone();
                }
                self.services.insert(*id, Some(Arc::new(target)));
            }
        }
    }

    /// The SNI table: each SNI row's name to its certificate (an SNI whose certificate is not
    /// loaded gets the default).
    fn certificate_table(&mut self) -> Arc<CertificateTable> {
        if let Some(t) = &self.certificate_table {
            return t.clone();
        }
        let mut table = CertificateTable::default();
        for (name, cert) in self.snis.values() {
            if let Some(pair) = self.certificates.get(cert) {
                table.insert(name, pair.clone());
            }
        }
        let table = Arc::new(table);
        self.certificate_table = Some(table.clone());
        table
    }

    fn assemble_router(&mut self) -> Router<Arc<RouteTarget>> {
        let rows: Vec<PluginInstanceRow> = self.plugins.values().cloned().collect();
        let mut env = BuildEnv::with_counters(&self.consumers, &self.counters);
        env.realms = self.resolver.as_ref();
        let (chains, failures) = ChainBuilder::new(&rows, &env);
        for (id, why) in failures {
            self.reject(Kind::Plugin, &id.to_string(), &why);
        }
        let balancers = self.build_balancers();
        self.balancers = Arc::new(balancers.values().map(|b| (b.upstream().id, b.clone())).collect());
        self.balancers_by_name = balancers;
        let mut by_service: HashMap<Uuid, Destination> = HashMap::new();
        let compiled: Vec<_> = self
            .routes
            .values()
            .filter_map(|r| {
                Some((route_order(r.id), r.matcher.clone(), self.route_target(r, &chains, &mut by_service)?))
            })
            .collect();
        self.chains = Some(Arc::new(chains));
        Router::assemble_keyed(compiled)
    }

    /// The router with `ids` placed again as they are now (or taken out): the plugin instances,
    /// balancers and every other route of the last build stay as they are.
    fn edit_router(&self, base: &Router<Arc<RouteTarget>>, mut ids: Vec<Uuid>) -> Router<Arc<RouteTarget>> {
        ids.sort_unstable();
        ids.dedup();
        let Some(chains) = self.chains.as_ref() else { return base.clone() };
        let mut by_service: HashMap<Uuid, Destination> = HashMap::new();
        let add: Vec<_> = ids
            .iter()
            .filter_map(|id| self.routes.get(id))
            .filter_map(|r| {
                Some((route_order(r.id), r.matcher.clone(), self.route_target(r, chains, &mut by_service)?))
            })
            .collect();
        let remove: Vec<u128> = ids.iter().map(|id| route_order(*id)).collect();
        base.edit(&remove, add)
    }

    /// What a route leads to, or `None` when it is not routed: a stream route (tcp, tls, udp)
    /// matches no HTTP attribute, and in the HTTP router it would answer every request no other
    /// route takes; routes of a disabled or deleted service are not routed.
    fn route_target(
        &self,
        r: &CompiledRoute,
        chains: &ChainBuilder,
        by_service: &mut HashMap<Uuid, Destination>,
    ) -> Option<Arc<RouteTarget>> {
        if r.stream_only {
            return None;
        }
        let (service, service_broken) = match r.service {
            Some(sid) => match self.services.get(&sid) {
                Some(Some(s)) if s.enabled => (Some(s.clone()), false),
                Some(Some(_)) | None => return None,
                Some(None) => (None, true),
            },
            None => (None, false),
        };
        let destination = service.as_ref().map_or(Destination::Address, |s| {
            by_service
                .entry(s.id)
                .or_insert_with(|| destination(s, &self.balancers_by_name, &self.balancing.dns))
                .clone()
        });
        Some(Arc::new(RouteTarget {
            id: r.id,
            destination,
            strip_path: r.strip_path,
            preserve_host: r.preserve_host,
            http_allowed: r.http_allowed,
            https_redirect_status: r.https_redirect_status,
            request_buffering: r.request_buffering,
            broken: r.broken || service_broken,
            chain: chains.chain_for(r.id, r.service),
            subject: Arc::new(Subject::new(
                r.id,
                r.label.clone(),
                r.entity.clone(),
                service.as_ref().map(|s| s.subject.clone()),
            )),
            service,
        }))
    }
}

/// Where a service's requests go: the balancer of the upstream its host names, the DNS slot of
/// its host name, or its address.
fn destination(
    service: &ServiceTarget,
    balancers: &HashMap<Box<str>, Arc<LiveBalancer>>,
    dns: &Arc<crate::dns::Dns>,
) -> Destination {
    if let Some(live) = balancers.get(&*service.host) {
        let variant = Variant { https: service.https, pool_suffix: service.pool_suffix.clone() };
        return match live.variant(&variant) {
            Some(variant) => Destination::Balancer(RouteBalancer { live: live.clone(), variant }),
            // Every service of the upstream's name was given a variant: not reached.
            None => Destination::Address,
        };
    }
    if service.ip.is_some() { Destination::Address } else { Destination::Name(dns.name(&service.host)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(body: &Value) -> String {
        body.to_string()
    }

    fn load(rows: &[(Kind, String)]) -> ConfigState {
        ConfigState::from_rows(1, rows.iter().map(|(k, b)| (*k, Row { id: None, body: b, expires_at: None })))
    }

    const SERVICE: &str = "00000000-0000-4000-8000-00000000000a";
    const ROUTE: &str = "00000000-0000-4000-8000-00000000000b";
    const PLUGIN: &str = "00000000-0000-4000-8000-00000000000c";

    fn service() -> String {
        row(&json!({"id": SERVICE, "protocol": "http", "host": "127.0.0.1", "port": 9, "path": null, "retries": 5,
            "connect_timeout": 60000, "write_timeout": 60000, "read_timeout": 60000, "enabled": true, "tls_verify": null}))
    }

    fn route(headers: Value) -> String {
        row(&json!({"id": ROUTE, "protocols": ["http"], "paths": ["/a"], "headers": headers, "strip_path": true,
            "preserve_host": false, "regex_priority": 0, "https_redirect_status_code": 426, "service": {"id": SERVICE}}))
    }

    fn plugin(config: Value) -> String {
        row(&json!({"id": PLUGIN, "name": "rate-limiting", "route": {"id": ROUTE}, "service": null, "consumer": null,
            "consumer_group": null, "config": config, "protocols": ["http"], "enabled": true}))
    }

    /// A plugin stored with a configuration that cannot be built guards its route with 500s, and
    /// is listed as rejected; the rest of the configuration is served.
    #[test]
    fn a_plugin_that_does_not_build_closes_its_route() {
        let mut state = load(&[
            (Kind::Service, service()),
            (Kind::Route, route(Value::Null)),
            (Kind::Plugin, plugin(json!({"minute": 5, "policy": "redis", "redis": {"host": "h"}, "sync_rate": 1e20}))),
        ]);
        let rejected = state.rejected();
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].entity, "plugins");
        assert!(rejected[0].message.contains("config.sync_rate"), "{}", rejected[0].message);
        let snapshot = state.build(true);
        assert_eq!(snapshot.router.len(), 1);
        assert!(format!("{:?}", snapshot.router).contains("Broken"), "the route runs the stand-in");
    }

    fn route_numbered(n: u32, path: &str, host: &str) -> (String, String) {
        let id = format!("00000000-0000-4000-8000-1{n:011}");
        let body = row(&json!({"id": id, "protocols": ["http"], "paths": [path], "hosts": [host], "strip_path": true,
            "preserve_host": false, "regex_priority": 0, "https_redirect_status_code": 426, "service": {"id": SERVICE}}));
        (id, body)
    }

    /// Routes added, changed and deleted (only routes) edit the router in place of a rebuild, and
    /// the edited router is exactly the one a whole build gives; the other routes' targets are the
    /// very same (not rebuilt), and a change of anything else rebuilds the router whole.
    #[test]
    fn route_changes_edit_the_router_instead_of_rebuilding_it() {
        let mut rows = vec![(Kind::Service, service())];
        rows.extend((0..50).map(|n| (Kind::Route, route_numbered(n, &format!("/p{}", n % 7), "h.test").1)));
        let mut state = load(&rows);
        let first = state.build(true);
        let kept = first.router.targets().find(|t| t.id.to_string().ends_with("00000000049")).cloned();

        let mut changes = Changes { version: 2, ..Changes::default() };
        let batch = changes.kinds.entry(Kind::Route).or_default();
        batch.deletes.push(route_numbered(3, "", "").0);
        let (moved, body) = route_numbered(4, "/p3", "other.test");
        batch.upserts.push((moved, body, None));
        let (added, body) = route_numbered(60, "/p1", "h.test");
        batch.upserts.push((added, body, None));
        assert!(state.apply(&changes), "routes changed");
        let edited = state.build(true);
        assert_eq!(edited.router.len(), 50);
        let still = edited.router.targets().find(|t| t.id.to_string().ends_with("00000000049")).cloned();
        assert!(Arc::ptr_eq(&kept.expect("route 49"), &still.expect("route 49")), "untouched routes are not rebuilt");
        let whole = state.rebuild_whole();
        assert_eq!(edited.router.layout(), whole.router.layout());

        // A service change rebuilds whole: every target is new.
        let mut changes = Changes { version: 3, ..Changes::default() };
        changes.kinds.entry(Kind::Service).or_default().upserts.push((SERVICE.into(), service(), None));
        assert!(state.apply(&changes));
        let rebuilt = state.build(true);
        let before = whole.router.targets().find(|t| t.id.to_string().ends_with("00000000049")).cloned();
        let after = rebuilt.router.targets().find(|t| t.id.to_string().ends_with("00000000049")).cloned();
        assert!(!Arc::ptr_eq(&before.expect("49"), &after.expect("49")));
        assert_eq!(rebuilt.router.layout(), whole.router.layout());
    }

    /// A route whose header regex does not compile is rejected alone: the others are routed.
    #[test]
    fn a_route_that_does_not_compile_is_kept_out() {
        let mut state = load(&[(Kind::Service, service()), (Kind::Route, route(json!({"x-v": ["~*(unclosed"]})))]);
        assert_eq!(state.rejected()[0].entity, "routes");
        assert_eq!(state.build(true).router.len(), 0);
    }

    /// A later bad version of an entity keeps its last good one.
    #[test]
    fn a_bad_update_keeps_the_last_good_version() {
        let mut state = load(&[(Kind::Service, service()), (Kind::Route, route(Value::Null))]);
        let mut changes = Changes { version: 2, ..Changes::default() };
        changes.kinds.entry(Kind::Route).or_default().upserts.push((
            ROUTE.into(),
            route(json!({"x-v": ["~*(unclosed"]})),
            None,
        ));
        state.apply(&changes);
        assert_eq!(state.rejected().len(), 1);
        assert_eq!(state.build(true).router.len(), 1, "the last good route is still served");
        let mut fixed = Changes { version: 3, ..Changes::default() };
        fixed.kinds.entry(Kind::Route).or_default().deletes.push(ROUTE.into());
        state.apply(&fixed);
        assert!(state.rejected().is_empty(), "deleting it clears the report");
    }

    /// Found by `snapshot::properties`: a stream route (here without any attribute, which the
    /// model accepted) was compiled into the HTTP router, where it took every unmatched request.
    #[test]
    fn a_stream_route_is_no_http_route() {
        let stream = row(&json!({"id": ROUTE, "protocols": ["tcp"], "strip_path": true, "preserve_host": false,
            "regex_priority": 0, "https_redirect_status_code": 426, "service": {"id": SERVICE}}));
        let mut state = load(&[(Kind::Service, service()), (Kind::Route, stream)]);
        assert!(state.rejected().is_empty());
        assert_eq!(state.build(true).router.len(), 0);
        let grpc = row(&json!({"id": ROUTE, "protocols": ["grpc"], "paths": ["/a"], "strip_path": false,
            "preserve_host": false, "regex_priority": 0, "https_redirect_status_code": 426, "service": {"id": SERVICE}}));
        let mut state = load(&[(Kind::Service, service()), (Kind::Route, grpc)]);
        assert_eq!(state.build(true).router.len(), 1, "grpc routes are HTTP routes");
    }

    /// An unreadable membership keeps its consumer from authenticating.
    #[test]
    fn a_consumer_with_groups_that_do_not_load_does_not_authenticate() {
        let consumer = "00000000-0000-4000-8000-0000000000d1";
        let mut state = load(&[
            (
                Kind::GroupMembership,
                row(
                    &json!({"id": "00000000-0000-4000-8000-0000000000e1", "consumer": {"id": consumer}, "consumer_group": "oops"}),
                ),
            ),
            (Kind::Consumer, row(&json!({"id": consumer, "username": "u", "custom_id": null}))),
            (
                Kind::KeyAuth,
                row(&json!({"id": "00000000-0000-4000-8000-0000000000f1", "consumer": {"id": consumer}, "key": "k"})),
            ),
        ]);
        assert_eq!(state.rejected().len(), 1);
        assert!(state.build(false).identity.authenticate("k").is_none());
    }
}
