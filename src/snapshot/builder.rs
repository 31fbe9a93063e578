//! Keeps a compact, typed mirror of one control plane's configuration up to date from the store's
//! change feed and compiles it into [`Snapshot`]s. Consumers and credentials are updated in place
//! (copy-on-write of the index, no reload); router and plugin chains are recompiled only when services,
//! routes or plugins changed. A failed compile keeps the previous snapshot and logs why.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroI64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    Consumer, ConsumerIndex, CredentialIndex, GroupEntry, GroupSet, KeyCredential, RouteTarget, ServiceTarget,
    Snapshot, SnapshotHolder,
};
use crate::model::schema::Obj;
use crate::model::{EntityError, Kind};
use crate::plugins::chain::ChainBuilder;
use crate::plugins::rate_limiting::Counters;
use crate::plugins::{BuildEnv, PluginInstanceRow, RealmResolver};
use crate::router::{RouteSpec, Router};
use crate::store::{Change, ChangeOp, Store};

/// Collects writes that land close together into one build.
const DEBOUNCE: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Deserialize)]
struct Ref {
    id: Uuid,
}

#[derive(Debug, Deserialize)]
struct ConsumerRow {
    id: Uuid,
    username: Option<String>,
    custom_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KeyAuthRow {
    id: Uuid,
    consumer: Ref,
    key: String,
}

#[derive(Debug, Deserialize)]
struct GroupRow {
    id: Uuid,
    name: String,
}

#[derive(Debug, Deserialize)]
struct MembershipRow {
    id: Uuid,
    consumer_group: Ref,
    consumer: Ref,
}

#[derive(Debug, Deserialize)]
struct AclRow {
    id: Uuid,
    consumer: Ref,
    group: String,
}

#[derive(Debug, Clone, Deserialize)]
struct ServiceRow {
    id: Uuid,
    protocol: String,
    host: String,
    port: u16,
    path: Option<String>,
    retries: u32,
    connect_timeout: u64,
    write_timeout: u64,
    read_timeout: u64,
    enabled: bool,
    tls_verify: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
struct RouteRow {
    id: Uuid,
    protocols: Vec<String>,
    methods: Option<Vec<String>>,
    hosts: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    headers: Option<BTreeMap<String, Vec<String>>>,
    snis: Option<Vec<String>>,
    strip_path: bool,
    preserve_host: bool,
    regex_priority: i64,
    https_redirect_status_code: u16,
    #[serde(default = "buffered")]
    request_buffering: bool,
    service: Option<Ref>,
}

/// Kong's default for `request_buffering`.
fn buffered() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
struct PluginRow {
    id: Uuid,
    name: String,
    route: Option<Ref>,
    service: Option<Ref>,
    consumer: Option<Ref>,
    consumer_group: Option<Ref>,
    config: Option<Obj>,
    protocols: Option<Vec<String>>,
    enabled: bool,
}

/// The order kinds are read in: a consumer's groups and ACL groups before the consumer.
pub const LOAD_ORDER: [Kind; 8] = [
    Kind::ConsumerGroup,
    Kind::GroupMembership,
    Kind::Acl,
    Kind::Consumer,
    Kind::KeyAuth,
    Kind::Service,
    Kind::Route,
    Kind::Plugin,
];

/// The builder's mirror of one control plane.
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
    services: HashMap<Uuid, ServiceRow>,
    routes: HashMap<Uuid, RouteRow>,
    plugins: HashMap<Uuid, PluginRow>,
    /// Compiled router kept between builds when only consumers changed.
    router: Option<Arc<Router<Arc<RouteTarget>>>>,
    /// Rate-limiting counters, kept across builds and reloads.
    counters: Arc<Counters>,
    /// Realm key resolution (a data plane's).
    resolver: Option<Arc<dyn RealmResolver>>,
}

/// What hangs off one consumer in the mirror.
#[derive(Debug, Default)]
struct ConsumerLinks {
    memberships: Vec<Uuid>,
    acls: Vec<Uuid>,
}

impl ConfigState {
    pub fn version(&self) -> i64 {
        self.version
    }

    /// A consumer with its group sets attached.
    fn consumer_of(&self, row: ConsumerRow) -> Consumer {
        let mut c = Consumer::new(row.id, row.username.map(Into::into), row.custom_id.map(Into::into));
        (c.groups, c.acl_groups) = self.group_sets(&row.id);
        c
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
        (GroupSet::new(groups), GroupSet::new(acls))
    }

    fn add_membership(&mut self, row: MembershipRow) {
        self.remove_membership(&row.id);
        self.memberships.insert(row.id, (row.consumer.id, row.consumer_group.id));
        self.consumer_links.entry(row.consumer.id).or_default().memberships.push(row.id);
    }

    /// Returns the consumer the membership belonged to.
    fn remove_membership(&mut self, id: &Uuid) -> Option<Uuid> {
        let (consumer, _) = self.memberships.remove(id)?;
        if let Some(links) = self.consumer_links.get_mut(&consumer) {
            links.memberships.retain(|m| m != id);
        }
        Some(consumer)
    }

    fn add_acl(&mut self, row: AclRow) {
        self.remove_acl(&row.id);
        self.acls.insert(row.id, (row.consumer.id, Arc::from(row.group)));
        self.consumer_links.entry(row.consumer.id).or_default().acls.push(row.id);
    }

    fn remove_acl(&mut self, id: &Uuid) -> Option<Uuid> {
        let (consumer, _) = self.acls.remove(id)?;
        if let Some(links) = self.consumer_links.get_mut(&consumer) {
            links.acls.retain(|a| a != id);
        }
        Some(consumer)
    }

    /// Loads everything of `cp` from the store.
    pub async fn load(store: &Store, cp: &str) -> Result<ConfigState, EntityError> {
        // The version is read first: changes committed during the load are replayed afterwards.
        let version = store.version().await?;
        let mut state =
            ConfigState { version, counters: Arc::new(Counters::new(Some(store.clone()))), ..ConfigState::default() };
        for kind in LOAD_ORDER {
            store
                .for_each_body(cp, kind, |body, expires_at| {
                    if let Err(e) = state.ingest(kind, body, expires_at) {
                        tracing::error!(kind = kind.table(), error = %e, "skipping unreadable row");
                    }
                })
                .await?;
        }
        Ok(state)
    }

    /// A configuration received whole (a data plane's), every row required to be readable, counted
    /// per node.
    pub fn from_rows<'a>(
        version: i64,
        rows: impl IntoIterator<Item = (Kind, &'a str, Option<i64>)>,
    ) -> Result<ConfigState, String> {
        let mut state = ConfigState { version, ..ConfigState::default() };
        for (kind, body, expires_at) in rows {
            state.ingest(kind, body, expires_at).map_err(|e| format!("{}: {e}", kind.table()))?;
        }
        Ok(state)
    }

    /// Counts rate limits in `counters` (a data plane keeps its counters across configurations).
    pub fn use_counters(&mut self, counters: Arc<Counters>) {
        self.counters = counters;
    }

    /// Resolves realm keys through `resolver` (a data plane's link to its control plane).
    pub fn use_resolver(&mut self, resolver: Arc<dyn RealmResolver>) {
        self.resolver = Some(resolver);
    }

    /// Adds one stored row; kinds must come in [`LOAD_ORDER`].
    fn ingest(&mut self, kind: Kind, body: &str, expires_at: Option<i64>) -> Result<(), String> {
        fn read<T: for<'de> Deserialize<'de>>(body: &str) -> Result<T, String> {
            serde_json::from_str(body).map_err(|e| e.to_string())
        }
        match kind {
            Kind::ConsumerGroup => {
                let g: GroupRow = read(body)?;
                self.groups.insert(g.id, Arc::from(g.name));
            }
            Kind::GroupMembership => self.add_membership(read(body)?),
            Kind::Acl => self.add_acl(read(body)?),
            Kind::Consumer => {
                let c = self.consumer_of(read(body)?);
                Arc::make_mut(&mut self.consumers).insert(c);
            }
            Kind::KeyAuth => {
                let row: KeyAuthRow = read(body)?;
                let cred = KeyCredential {
                    id: row.id,
                    consumer_id: row.consumer.id,
                    expires_at: expires_at.and_then(NonZeroI64::new),
                };
                Arc::make_mut(&mut self.credentials).insert(&row.key, cred);
            }
            Kind::Service => {
                let row: ServiceRow = read(body)?;
                self.services.insert(row.id, row);
            }
            Kind::Route => {
                let row: RouteRow = read(body)?;
                self.routes.insert(row.id, row);
            }
            Kind::Plugin => {
                let row: PluginRow = read(body)?;
                self.plugins.insert(row.id, row);
            }
        }
        Ok(())
    }

    /// Applies a batch of changes of `cp`; returns whether the router must be rebuilt.
    async fn apply(&mut self, store: &Store, cp: &str, changes: &[Change], to: i64) -> Result<bool, EntityError> {
        let mut by_kind: BTreeMap<Kind, (Vec<String>, Vec<String>)> = BTreeMap::new();
        // Only the last operation on an entity matters; every key it had during the batch is stale.
        let mut last: HashMap<(Kind, &str), ChangeOp> = HashMap::new();
        let mut stale_keys: Vec<(Uuid, &str)> = Vec::new();
        for c in changes.iter().filter(|c| c.cp == cp).map(|c| &c.touched) {
            last.insert((c.kind, c.id.as_str()), c.op);
            if let (Kind::KeyAuth, Some(key), Ok(id)) = (c.kind, &c.previous_key, Uuid::parse_str(&c.id)) {
                stale_keys.push((id, key));
            }
        }
        for ((kind, id), op) in last {
            let entry = by_kind.entry(kind).or_default();
            match op {
                ChangeOp::Upsert => entry.0.push(id.to_string()),
                ChangeOp::Delete => entry.1.push(id.to_string()),
            }
        }
        let mut routing = false;
        // Consumers whose group sets may have changed.
        let mut regroup: Vec<Uuid> = Vec::new();
        for (kind, (upserts, deletes)) in by_kind {
            let deleted: Vec<Uuid> = deletes.iter().filter_map(|s| Uuid::parse_str(s).ok()).collect();
            let bodies = if upserts.is_empty() { Vec::new() } else { store.bodies(kind, &upserts).await? };
            match kind {
                Kind::Consumer => {
                    let fresh: Vec<Consumer> = bodies
                        .iter()
                        .filter_map(|(b, _)| parse::<ConsumerRow>(b))
                        .map(|r| self.consumer_of(r))
                        .collect();
                    let index = Arc::make_mut(&mut self.consumers);
                    deleted.iter().for_each(|id| index.remove(id));
                    fresh.into_iter().for_each(|c| index.insert(c));
                    // Plugins resolve `anonymous` consumers when they are built.
                    routing |= self.has_anonymous();
                }
                Kind::KeyAuth => {
                    let index = Arc::make_mut(&mut self.credentials);
                    stale_keys.iter().for_each(|(id, key)| index.remove(key, id));
                    for (body, expires_at) in bodies {
                        if let Some(row) = parse::<KeyAuthRow>(&body) {
                            index.insert(
                                &row.key,
                                KeyCredential {
                                    id: row.id,
                                    consumer_id: row.consumer.id,
                                    expires_at: expires_at.and_then(NonZeroI64::new),
                                },
                            );
                        }
                    }
                }
                Kind::Service => {
                    routing = true;
                    replace_rows(&mut self.services, &deleted, &bodies, |r: &ServiceRow| r.id);
                }
                Kind::Route => {
                    routing = true;
                    replace_rows(&mut self.routes, &deleted, &bodies, |r: &RouteRow| r.id);
                }
                Kind::Plugin => {
                    routing = true;
                    replace_rows(&mut self.plugins, &deleted, &bodies, |r: &PluginRow| r.id);
                }
                Kind::ConsumerGroup => {
                    let touched: Vec<Uuid> = deleted
                        .iter()
                        .copied()
                        .chain(bodies.iter().filter_map(|(b, _)| parse::<GroupRow>(b).map(|g| g.id)))
                        .collect();
                    deleted.iter().for_each(|id| drop(self.groups.remove(id)));
                    for (body, _) in &bodies {
                        if let Some(g) = parse::<GroupRow>(body) {
                            self.groups.insert(g.id, Arc::from(g.name));
                        }
                    }
                    regroup.extend(self.memberships.values().filter(|(_, g)| touched.contains(g)).map(|(c, _)| *c));
                }
                Kind::GroupMembership => {
                    for id in &deleted {
                        regroup.extend(self.remove_membership(id));
                    }
                    for (body, _) in &bodies {
                        if let Some(m) = parse::<MembershipRow>(body) {
                            regroup.extend(self.remove_membership(&m.id));
                            regroup.push(m.consumer.id);
                            self.add_membership(m);
                        }
                    }
                }
                Kind::Acl => {
                    for id in &deleted {
                        regroup.extend(self.remove_acl(id));
                    }
                    for (body, _) in &bodies {
                        if let Some(a) = parse::<AclRow>(body) {
                            regroup.extend(self.remove_acl(&a.id));
                            regroup.push(a.consumer.id);
                            self.add_acl(a);
                        }
                    }
                }
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
            self.consumer_links.retain(|_, l| !l.memberships.is_empty() || !l.acls.is_empty());
        }
        self.version = to;
        Ok(routing)
    }

    fn has_anonymous(&self) -> bool {
        self.plugins
            .values()
            .any(|p| p.config.as_ref().is_some_and(|c| c.get("anonymous").is_some_and(|a| !a.is_null())))
    }

    /// Compiles the snapshot, reusing the previous router unless `routing` says it is stale.
    pub fn build(&mut self, routing: bool) -> Result<Snapshot, String> {
        let router = match (&self.router, routing) {
            (Some(r), false) => r.clone(),
            _ => {
                let started = Instant::now();
                let r = Arc::new(self.compile_router()?);
                let elapsed_ms = (started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0;
                tracing::debug!(routes = r.len(), elapsed_ms, "router compiled");
                self.router = Some(r.clone());
                r
            }
        };
        Ok(Snapshot {
            version: self.version,
            router,
            consumers: self.consumers.clone(),
            credentials: self.credentials.clone(),
            groups_by_name: Arc::new(self.groups.iter().map(|(id, name)| (Box::from(&**name), *id)).collect()),
        })
    }

    fn compile_router(&self) -> Result<Router<Arc<RouteTarget>>, String> {
        let rows: Vec<PluginInstanceRow> = self
            .plugins
            .values()
            .map(|p| PluginInstanceRow {
                id: p.id,
                name: p.name.clone(),
                route: p.route.as_ref().map(|r| r.id),
                service: p.service.as_ref().map(|r| r.id),
                consumer: p.consumer.as_ref().map(|r| r.id),
                consumer_group: p.consumer_group.as_ref().map(|r| r.id),
                enabled: p.enabled,
                http: p.protocols.as_ref().is_none_or(|ps| ps.iter().any(|x| x == "http")),
                config: p.config.clone().unwrap_or_default(),
            })
            .collect();
        let mut env = BuildEnv::with_counters(&self.consumers, &self.counters);
        env.realms = self.resolver.as_ref();
        let chains = ChainBuilder::new(&rows, &env);
        let services: HashMap<Uuid, Arc<ServiceTarget>> =
            self.services.values().filter(|s| s.enabled).map(|s| (s.id, Arc::new(service_target(s)))).collect();
        let mut routes: Vec<&RouteRow> = self.routes.values().collect();
        // Kong breaks priority ties in favour of the larger route id; the router prefers earlier routes.
        routes.sort_by_key(|r| std::cmp::Reverse(r.id));
        let mut specs = Vec::with_capacity(routes.len());
        for r in routes {
            let service = match &r.service {
                Some(s) => match services.get(&s.id) {
                    Some(t) => Some(t.clone()),
                    // Routes of a disabled service are not routed.
                    None => continue,
                },
                None => None,
            };
            let target = RouteTarget {
                id: r.id,
                strip_path: r.strip_path,
                preserve_host: r.preserve_host,
                http_allowed: r.protocols.iter().any(|p| p == "http"),
                https_redirect_status: StatusCode::from_u16(r.https_redirect_status_code)
                    .unwrap_or(StatusCode::UPGRADE_REQUIRED),
                request_buffering: r.request_buffering,
                chain: chains.chain_for(r.id, service.as_ref().map(|s| s.id)),
                service,
            };
            specs.push(RouteSpec {
                methods: r.methods.clone().unwrap_or_default(),
                hosts: r.hosts.clone().unwrap_or_default(),
                paths: r.paths.clone().unwrap_or_default(),
                headers: r.headers.clone().unwrap_or_default().into_iter().collect(),
                snis: r.snis.as_ref().map_or(0, Vec::len),
                regex_priority: r.regex_priority,
                target: Arc::new(target),
            });
        }
        Router::build(specs).map_err(|e| e.to_string())
    }
}

/// Applies deletes and upserts to one of the mirror's maps of rows by id.
fn replace_rows<T: for<'de> Deserialize<'de>>(
    map: &mut HashMap<Uuid, T>,
    deleted: &[Uuid],
    bodies: &[(String, Option<i64>)],
    id: impl Fn(&T) -> Uuid,
) {
    for d in deleted {
        map.remove(d);
    }
    for (body, _) in bodies {
        if let Some(row) = parse::<T>(body) {
            map.insert(id(&row), row);
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &str) -> Option<T> {
    match serde_json::from_str(body) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "skipping unreadable row");
            None
        }
    }
}

fn service_target(s: &ServiceRow) -> ServiceTarget {
    let https = s.protocol == "https" || s.protocol == "grpcs";
    let default_port = if https { 443 } else { 80 };
    let host = if s.host.contains(':') { format!("[{}]", s.host) } else { s.host.clone() };
    let authority = if s.port == default_port { host.clone() } else { format!("{host}:{}", s.port) };
    ServiceTarget {
        id: s.id,
        https,
        host: s.host.clone().into(),
        port: s.port,
        host_header: HeaderValue::from_str(&authority).unwrap_or_else(|_| HeaderValue::from_static("localhost")),
        pool_key: Arc::from(format!(
            "{}://{host}:{}/{}/{}/{}",
            if https { "https" } else { "http" },
            s.port,
            s.read_timeout,
            s.write_timeout,
            s.tls_verify.unwrap_or(false)
        )),
        tls_verify: s.tls_verify.unwrap_or(false),
        path: s.path.clone().map(Into::into),
        retries: s.retries,
        read_timeout: Duration::from_millis(s.read_timeout),
        write_timeout: Duration::from_millis(s.write_timeout),
        connect_timeout: Duration::from_millis(s.connect_timeout),
    }
}

/// Keeps `holder` current for control plane `cp` until the process ends.
pub async fn run(store: Store, cp: String, holder: Arc<SnapshotHolder>, poll: Duration, mut state: ConfigState) {
    let mut feed = store.feed(poll);
    loop {
        feed.wait().await;
        tokio::time::sleep(DEBOUNCE).await;
        match refresh(&store, &cp, &mut state).await {
            Ok(Some(snapshot)) => holder.store(snapshot),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "configuration update failed; keeping the previous snapshot"),
        }
    }
}

/// Brings `state` up to the store's version; returns a new snapshot when anything changed.
pub async fn refresh(store: &Store, cp: &str, state: &mut ConfigState) -> Result<Option<Snapshot>, String> {
    let started = Instant::now();
    let routing = match store.changes_since(state.version).await.map_err(|e| e.to_string())? {
        Some((changes, _)) if changes.is_empty() => return Ok(None),
        Some((changes, to)) => state.apply(store, cp, &changes, to).await.map_err(|e| e.to_string())?,
        None => {
            tracing::info!("change log does not reach back far enough; reloading the configuration");
            let counters = state.counters.clone();
            *state = ConfigState::load(store, cp).await.map_err(|e| e.to_string())?;
            state.counters = counters;
            true
        }
    };
    let snapshot = state.build(routing)?;
    tracing::debug!(version = snapshot.version, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot built");
    Ok(Some(snapshot))
}
