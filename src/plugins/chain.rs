//! Per-route plugin chains, resolved at snapshot build time with Kong's precedence. For every plugin
//! name that applies to a route, a slot keeps the instance to run when no consumer-specific one
//! applies, plus (only when such instances exist) the instances keyed by consumer id and by consumer
//! group id, each with its rank. Kong Enterprise's order, most specific first:
//!
//! 1 consumer+route+service, 2 group+route+service, 3 consumer+route, 4 consumer+service,
//! 5 group+route, 6 group+service, 7 route+service, 8 consumer, 9 group, 10 route, 11 service,
//! 12 global. A consumer in several groups gets the best-ranked group instance; among equals, the
//! group whose name sorts first.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::{AccessCtx, Broken, BuildEnv, Flow, Plugin, find};
use crate::identity::Consumer;
use crate::model::schema::{Obj, Violations};

type Hasher = foldhash::fast::RandomState;

/// A plugin instance as stored, reduced to what chain resolution needs.
#[derive(Debug, Clone)]
pub struct PluginInstanceRow {
    pub id: Uuid,
    pub name: String,
    pub route: Option<Uuid>,
    pub service: Option<Uuid>,
    pub consumer: Option<Uuid>,
    pub consumer_group: Option<Uuid>,
    pub enabled: bool,
    /// Applies to plain-HTTP traffic (its `protocols` include `http`).
    pub http: bool,
    /// Its stored version cannot be built: a stand-in answering 500 runs in its place.
    pub broken: bool,
    /// The validated configuration (defaults filled).
    pub config: Obj,
}

type Ranked = (u8, Arc<dyn Plugin>);

/// The slot of stand-ins for instances of plugins this build does not have.
const BROKEN_SLOT: &str = "(unavailable plugin)";

#[derive(Debug)]
struct Slot {
    priority: i32,
    name: &'static str,
    default: Option<Ranked>,
    by_consumer: Option<HashMap<Uuid, Ranked, Hasher>>,
    by_group: Option<HashMap<Uuid, Ranked, Hasher>>,
    /// Some instance of the slot has an access phase, a log phase (each phase passes over the
    /// slots without it).
    accesses: bool,
    logs: bool,
}

/// The ordered plugins of one route (highest priority first).
#[derive(Debug, Default)]
pub struct PluginChain {
    slots: Vec<Slot>,
    needs_body: bool,
    is_async: bool,
    logs: bool,
    serializes: bool,
}

impl PluginChain {
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether any plugin of the chain reads the request body.
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// Runs the access phase of every plugin in order until one answers.
    pub fn access(&self, ctx: &mut AccessCtx<'_>) -> Flow {
        for slot in self.slots.iter().filter(|s| s.accesses) {
            let Some(plugin) = slot.pick(ctx.consumer.as_deref()) else { continue };
            if let Flow::Respond(r) = plugin.access(ctx) {
                return Flow::Respond(r);
            }
        }
        Flow::Continue
    }

    /// Whether some plugin of the chain waits on I/O (Redis) in its access phase.
    pub fn is_async(&self) -> bool {
        self.is_async
    }

    /// [`PluginChain::access`] for chains where a plugin waits on I/O.
    pub async fn access_async(&self, ctx: &mut AccessCtx<'_>) -> Flow {
        for slot in self.slots.iter().filter(|s| s.accesses) {
            let Some(plugin) = slot.pick(ctx.consumer.as_deref()) else { continue };
            let flow = if plugin.is_async() { plugin.access_async(ctx).await } else { plugin.access(ctx) };
            if let Flow::Respond(r) = flow {
                return Flow::Respond(r);
            }
        }
        Flow::Continue
    }

    /// Whether some plugin of the chain has a log phase.
    pub fn logs(&self) -> bool {
        self.logs
    }

    /// Whether some plugin's log phase reads headers.
    pub fn serializes(&self) -> bool {
        self.serializes
    }

    /// Runs the log phase of the plugins picked for this consumer.
    pub fn log(&self, consumer: Option<&Consumer>, entry: &super::log::LogEntry<'_>) {
        for slot in self.slots.iter().filter(|s| s.logs) {
            if let Some(plugin) = slot.pick(consumer)
                && plugin.logs()
            {
                plugin.log(entry);
            }
        }
    }

    /// Runs `header_filter` of the plugins that ran for this consumer.
    pub fn header_filter(&self, consumer: Option<&Consumer>, response: &mut http::response::Parts) {
        for slot in &self.slots {
            if let Some(plugin) = slot.pick(consumer) {
                plugin.header_filter(response);
            }
        }
    }
}

#[cfg(test)]
impl PluginChain {
    /// A chain running `plugins` in this order for everyone (tests elsewhere in the crate).
    pub fn of(plugins: Vec<Arc<dyn Plugin>>) -> PluginChain {
        let slots = plugins
            .into_iter()
            .map(|p| Slot {
                priority: 0,
                name: "test",
                accesses: p.accesses(),
                logs: p.logs(),
                default: Some((12, p)),
                by_consumer: None,
                by_group: None,
            })
            .collect::<Vec<_>>();
        let logs = slots.iter().any(|s| s.logs);
        let serializes = slots.iter().any(|s| s.instances().any(|p| p.serializes()));
        PluginChain { slots, needs_body: false, is_async: false, logs, serializes }
    }
}

impl Slot {
    /// Every instance of the slot: for everyone, by consumer, by group.
    fn instances(&self) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        self.default
            .iter()
            .chain(self.by_consumer.iter().flat_map(|m| m.values()))
            .chain(self.by_group.iter().flat_map(|m| m.values()))
            .map(|(_, p)| p)
    }

    fn pick(&self, consumer: Option<&Consumer>) -> Option<&Arc<dyn Plugin>> {
        let mut best: Option<&Ranked> = self.default.as_ref();
        let better = |best: Option<&Ranked>, candidate: &Ranked| best.is_none_or(|b| candidate.0 < b.0);
        if let Some(c) = consumer {
            if let Some(found) = self.by_consumer.as_ref().and_then(|m| m.get(&c.id))
                && better(best, found)
            {
                best = Some(found);
            }
            if let Some(map) = &self.by_group {
                for g in c.group_entries() {
                    if let Some(found) = map.get(&g.id)
                        && better(best, found)
                    {
                        best = Some(found);
                    }
                }
            }
        }
        best.map(|(_, p)| p)
    }
}

/// Built instances plus an index of them by plugin name, shared by every route's chain.
pub struct ChainBuilder {
    instances: Vec<(PluginInstanceRow, Arc<dyn Plugin>)>,
    by_name: HashMap<&'static str, Vec<usize>>,
}

impl std::fmt::Debug for ChainBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainBuilder").field("instances", &self.instances.len()).finish()
    }
}

impl ChainBuilder {
    /// Builds every enabled instance once. An instance that cannot be built (or is marked broken,
    /// or names a plugin this build lacks) is replaced by a stand-in answering 500 at its scope,
    /// never dropped: its routes stay closed. The failures are returned for reporting.
    pub fn new(rows: &[PluginInstanceRow], env: &BuildEnv<'_>) -> (ChainBuilder, Vec<(Uuid, Violations)>) {
        let mut instances = Vec::new();
        let mut by_name: HashMap<&'static str, Vec<usize>> = HashMap::new();
        let mut failures = Vec::new();
        for row in rows.iter().filter(|r| r.enabled && (r.http || r.broken)) {
            let def = find(&row.name);
            let env = BuildEnv { instance: Some(row.id), consumer_group: row.consumer_group, ..*env };
            let plugin = match def {
                Some(def) if !row.broken => (def.build)(&row.config, &env).unwrap_or_else(|why| {
                    failures.push((row.id, why));
                    Broken::instance()
                }),
                _ => Broken::instance(),
            };
            // A stand-in for an unknown plugin runs first: nothing else runs on its routes.
            let name = def.map_or(BROKEN_SLOT, |d| d.name);
            by_name.entry(name).or_default().push(instances.len());
            instances.push((row.clone(), plugin));
        }
        (ChainBuilder { instances, by_name }, failures)
    }

    /// The chain for a route of a service.
    pub fn chain_for(&self, route: Uuid, service: Option<Uuid>) -> PluginChain {
        let mut slots = Vec::new();
        for (name, idxs) in &self.by_name {
            let (priority, name) = match find(name) {
                Some(def) => (def.priority, def.name),
                None => (i32::MAX, BROKEN_SLOT),
            };
            let mut default: Option<Ranked> = None;
            let mut by_consumer: HashMap<Uuid, Ranked, Hasher> = HashMap::default();
            let mut by_group: HashMap<Uuid, Ranked, Hasher> = HashMap::default();
            let keep = |map: &mut HashMap<Uuid, Ranked, Hasher>, key: Uuid, rank: u8, plugin: &Arc<dyn Plugin>| {
                let e = map.entry(key).or_insert((u8::MAX, plugin.clone()));
                if rank < e.0 {
                    *e = (rank, plugin.clone());
                }
            };
            for &i in idxs {
                let (row, plugin) = &self.instances[i];
                let route_ok = row.route.is_none_or(|r| r == route);
                let service_ok = row.service.is_none_or(|s| Some(s) == service);
                if !route_ok || !service_ok {
                    continue;
                }
                let scope = Scope {
                    route: row.route.is_some(),
                    service: row.service.is_some(),
                    consumer: row.consumer.is_some(),
                    group: row.consumer_group.is_some(),
                };
                let rank = rank(scope);
                match (row.consumer, row.consumer_group) {
                    (Some(c), _) => keep(&mut by_consumer, c, rank, plugin),
                    (None, Some(g)) => keep(&mut by_group, g, rank, plugin),
                    (None, None) => {
                        if default.as_ref().is_none_or(|(r, _)| rank < *r) {
                            default = Some((rank, plugin.clone()));
                        }
                    }
                }
            }
            // A consumer or group instance only wins over a more specific general one when its
            // rank is better (route+service beats consumer alone).
            let default_rank = default.as_ref().map_or(u8::MAX, |(r, _)| *r);
            by_consumer.retain(|_, (r, _)| *r < default_rank);
            by_group.retain(|_, (r, _)| *r < default_rank);
            if default.is_none() && by_consumer.is_empty() && by_group.is_empty() {
                continue;
            }
            slots.push(Slot {
                priority,
                name,
                default,
                by_consumer: (!by_consumer.is_empty()).then_some(by_consumer),
                by_group: (!by_group.is_empty()).then_some(by_group),
                accesses: false,
                logs: false,
            });
        }
        slots.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(b.name)));
        for s in &mut slots {
            let (accesses, logs) = (s.instances().any(|p| p.accesses()), s.instances().any(|p| p.logs()));
            (s.accesses, s.logs) = (accesses, logs);
        }
        let any = |f: &dyn Fn(&dyn Plugin) -> bool| slots.iter().any(|s| s.instances().any(|p| f(p.as_ref())));
        let needs_body = any(&|p| p.needs_body());
        let is_async = any(&|p| p.is_async());
        let logs = slots.iter().any(|s| s.logs);
        let serializes = any(&|p| p.serializes());
        PluginChain { slots, needs_body, is_async, logs, serializes }
    }
}

/// Which scope fields an instance sets.
#[derive(Debug, Clone, Copy, Default)]
struct Scope {
    route: bool,
    service: bool,
    consumer: bool,
    group: bool,
}

/// Kong's precedence rank (1 = most specific).
fn rank(s: Scope) -> u8 {
    match (s.consumer, s.group, s.route, s.service) {
        (true, _, true, true) => 1,
        (false, true, true, true) => 2,
        (true, _, true, false) => 3,
        (true, _, false, true) => 4,
        (false, true, true, false) => 5,
        (false, true, false, true) => 6,
        (false, false, true, true) => 7,
        (true, _, false, false) => 8,
        (false, true, false, false) => 9,
        (false, false, true, false) => 10,
        (false, false, false, true) => 11,
        (false, false, false, false) => 12,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{ConsumerIndex, GroupEntry, GroupSet};
    use serde_json::json;

    fn row(route: Option<Uuid>, service: Option<Uuid>, consumer: Option<Uuid>, realm: &str) -> PluginInstanceRow {
        let config = match json!({"key_names": ["apikey"], "realm": realm}) {
            serde_json::Value::Object(m) => m,
            _ => Obj::new(),
        };
        let schema = find("key-auth").map(|d| (d.config)()).expect("key-auth is bundled");
        let config = crate::model::schema::validate(schema, &config).expect("valid config");
        PluginInstanceRow {
            id: Uuid::new_v4(),
            name: "key-auth".into(),
            route,
            service,
            consumer,
            consumer_group: None,
            enabled: true,
            http: true,
            broken: false,
            config,
        }
    }

    fn group_row(route: Option<Uuid>, service: Option<Uuid>, group: Uuid, realm: &str) -> PluginInstanceRow {
        PluginInstanceRow { consumer_group: Some(group), ..row(route, service, None, realm) }
    }

    fn consumer(id: Uuid, groups: &[(Uuid, &str)]) -> Consumer {
        let mut c = Consumer::new(id, None, None);
        c.groups = GroupSet::new(groups.iter().map(|(g, n)| GroupEntry { id: *g, name: Arc::from(*n) }).collect());
        c
    }

    fn realm_of(chain: &PluginChain, c: Option<&Consumer>) -> String {
        let picked = format!("{:?}", chain.slots[0].pick(c));
        picked.split("realm=\\\"").nth(1).and_then(|r| r.split('\\').next()).unwrap_or("none").to_string()
    }

    #[test]
    fn most_specific_scope_wins() {
        let (r, s, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let rows = vec![
            row(None, None, None, "global"),
            row(None, Some(s), None, "service"),
            row(Some(r), None, None, "route"),
        ];
        let consumers = ConsumerIndex::default();
        let (b, _) = ChainBuilder::new(&rows, &BuildEnv::new(&consumers));
        let chain = b.chain_for(r, Some(s));
        assert_eq!(chain.slots.len(), 1);
        assert_eq!(realm_of(&chain, None), "route");
        assert_eq!(realm_of(&b.chain_for(other, Some(s)), None), "service");
        assert_eq!(realm_of(&b.chain_for(other, None), None), "global");
    }

    #[test]
    fn consumer_scoped_instances_apply_to_their_consumer_only_and_yield_to_route_and_service() {
        let (r, s, alice, bob) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (alice, bob) = (consumer(alice, &[]), consumer(bob, &[]));
        let consumers = ConsumerIndex::default();
        let env = BuildEnv::new(&consumers);
        // route (10) and consumer (8): the consumer's instance wins for that consumer.
        let rows = vec![row(Some(r), None, None, "route"), row(None, None, Some(alice.id), "alice")];
        let chain = ChainBuilder::new(&rows, &env).0.chain_for(r, Some(s));
        assert_eq!(realm_of(&chain, Some(&alice)), "alice");
        assert_eq!(realm_of(&chain, Some(&bob)), "route");
        assert_eq!(realm_of(&chain, None), "route");
        // route+service (7) beats consumer alone (8), but consumer+route (3) beats both.
        let rows = vec![row(Some(r), Some(s), None, "both"), row(None, None, Some(alice.id), "alice")];
        let chain = ChainBuilder::new(&rows, &env).0.chain_for(r, Some(s));
        assert_eq!(realm_of(&chain, Some(&alice)), "both");
        let rows = vec![row(Some(r), Some(s), None, "both"), row(Some(r), None, Some(alice.id), "alice-route")];
        let chain = ChainBuilder::new(&rows, &env).0.chain_for(r, Some(s));
        assert_eq!(realm_of(&chain, Some(&alice)), "alice-route");
    }

    #[test]
    fn group_instances_apply_to_members_below_the_consumer_own() {
        let (r, gold, silver) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let consumers = ConsumerIndex::default();
        let env = BuildEnv::new(&consumers);
        let member = consumer(Uuid::new_v4(), &[(silver, "silver"), (gold, "gold")]);
        let outsider = consumer(Uuid::new_v4(), &[]);
        let rows = vec![
            row(None, None, None, "global"),
            group_row(None, None, gold, "gold"),
            group_row(None, None, silver, "silver"),
        ];
        let chain = ChainBuilder::new(&rows, &env).0.chain_for(r, None);
        // Equal ranks: the group whose name sorts first.
        assert_eq!(realm_of(&chain, Some(&member)), "gold");
        assert_eq!(realm_of(&chain, Some(&outsider)), "global");
        // group+route (5) beats group alone (9); the consumer's own instance (8) beats group alone.
        let rows = vec![group_row(None, None, gold, "gold"), group_row(Some(r), None, silver, "silver-route")];
        let chain = ChainBuilder::new(&rows, &env).0.chain_for(r, None);
        assert_eq!(realm_of(&chain, Some(&member)), "silver-route");
        let rows = vec![group_row(None, None, gold, "gold"), row(None, None, Some(member.id), "own")];
        let chain = ChainBuilder::new(&rows, &env).0.chain_for(r, None);
        assert_eq!(realm_of(&chain, Some(&member)), "own");
        // A route+service instance (7) beats group alone (9) and is what non-members get.
        let s = Uuid::new_v4();
        let rows = vec![group_row(None, None, gold, "gold"), row(Some(r), Some(s), None, "both")];
        let chain = ChainBuilder::new(&rows, &env).0.chain_for(r, Some(s));
        assert_eq!(realm_of(&chain, Some(&member)), "both");
    }

    #[test]
    fn disabled_instances_do_not_run() {
        let mut r = row(None, None, None, "x");
        r.enabled = false;
        let consumers = ConsumerIndex::default();
        let (b, _) = ChainBuilder::new(&[r], &BuildEnv::new(&consumers));
        assert!(b.chain_for(Uuid::new_v4(), None).is_empty());
    }

    #[test]
    fn precedence_table() {
        let s = |consumer, group, route, service| rank(Scope { route, service, consumer, group });
        let order = [
            s(true, false, true, true),
            s(false, true, true, true),
            s(true, false, true, false),
            s(true, false, false, true),
            s(false, true, true, false),
            s(false, true, false, true),
            s(false, false, true, true),
            s(true, false, false, false),
            s(false, true, false, false),
            s(false, false, true, false),
            s(false, false, false, true),
            s(false, false, false, false),
        ];
        assert_eq!(order, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }
}
