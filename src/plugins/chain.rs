//! Per-route plugin chains, resolved at snapshot build time with Kong's precedence. For every plugin
//! name that applies to a route, a slot keeps the instance to run when no consumer-specific one
//! applies, plus (only when such instances exist) the instances keyed by consumer id:
//!
//! 1 route+service+consumer, 2 route+consumer, 3 service+consumer, 4 route+service, 5 consumer,
//! 6 route, 7 service, 8 global — the most specific one runs.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::{AccessCtx, BuildEnv, Flow, Plugin, find};
use crate::model::schema::Obj;

type Hasher = foldhash::fast::RandomState;

/// A plugin instance as stored, reduced to what chain resolution needs.
#[derive(Debug, Clone)]
pub struct PluginInstanceRow {
    pub id: Uuid,
    pub name: String,
    pub route: Option<Uuid>,
    pub service: Option<Uuid>,
    pub consumer: Option<Uuid>,
    pub enabled: bool,
    /// Applies to plain-HTTP traffic (its `protocols` include `http`).
    pub http: bool,
    pub config: Obj,
}

#[derive(Debug)]
struct Slot {
    priority: i32,
    name: &'static str,
    default: Option<Arc<dyn Plugin>>,
    by_consumer: Option<HashMap<Uuid, Arc<dyn Plugin>, Hasher>>,
}

/// The ordered plugins of one route (highest priority first).
#[derive(Debug, Default)]
pub struct PluginChain {
    slots: Vec<Slot>,
    needs_body: bool,
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
        for slot in &self.slots {
            let Some(plugin) = slot.pick(ctx.consumer.as_ref().map(|c| c.id)) else { continue };
            if let Flow::Respond(r) = plugin.access(ctx) {
                return Flow::Respond(r);
            }
        }
        Flow::Continue
    }

    /// Runs `header_filter` of the plugins that ran for this consumer.
    pub fn header_filter(&self, consumer: Option<Uuid>, response: &mut http::response::Parts) {
        for slot in &self.slots {
            if let Some(plugin) = slot.pick(consumer) {
                plugin.header_filter(response);
            }
        }
    }
}

impl Slot {
    fn pick(&self, consumer: Option<Uuid>) -> Option<&Arc<dyn Plugin>> {
        if let (Some(map), Some(c)) = (&self.by_consumer, consumer) {
            if let Some(p) = map.get(&c) {
                return Some(p);
            }
        }
        self.default.as_ref()
    }
}

/// Built instances plus an index of them by plugin name, shared by every route's chain.
pub struct ChainBuilder {
    instances: Vec<(PluginInstanceRow, Arc<dyn Plugin>)>,
    by_name: HashMap<&'static str, Vec<usize>>,
}

impl ChainBuilder {
    /// Builds every enabled instance once. Instances whose config cannot be built are skipped and
    /// reported (they were validated on write, so this means a bug or a missing anonymous consumer).
    pub fn new(rows: &[PluginInstanceRow], env: &BuildEnv<'_>) -> ChainBuilder {
        let mut instances = Vec::new();
        let mut by_name: HashMap<&'static str, Vec<usize>> = HashMap::new();
        for row in rows.iter().filter(|r| r.enabled && r.http) {
            let Some(def) = find(&row.name) else {
                tracing::warn!(plugin = %row.name, id = %row.id, "plugin not available; instance ignored");
                continue;
            };
            match (def.build)(&row.config, env) {
                Ok(plugin) => {
                    by_name.entry(def.name).or_default().push(instances.len());
                    instances.push((row.clone(), plugin));
                }
                Err(e) => tracing::error!(plugin = %row.name, id = %row.id, error = %e, "plugin instance not built"),
            }
        }
        ChainBuilder { instances, by_name }
    }

    /// The chain for a route of a service.
    pub fn chain_for(&self, route: Uuid, service: Option<Uuid>) -> PluginChain {
        let mut slots = Vec::new();
        for (name, idxs) in &self.by_name {
            let Some(def) = find(name) else { continue };
            let mut default: Option<(u8, &Arc<dyn Plugin>)> = None;
            let mut by_consumer: HashMap<Uuid, (u8, &Arc<dyn Plugin>), Hasher> = HashMap::default();
            for &i in idxs {
                let (row, plugin) = &self.instances[i];
                let route_ok = row.route.is_none_or(|r| r == route);
                let service_ok = row.service.is_none_or(|s| Some(s) == service);
                if !route_ok || !service_ok {
                    continue;
                }
                let rank = rank(row.route.is_some(), row.service.is_some(), row.consumer.is_some());
                match row.consumer {
                    Some(c) => {
                        let e = by_consumer.entry(c).or_insert((u8::MAX, plugin));
                        if rank < e.0 {
                            *e = (rank, plugin);
                        }
                    }
                    None => {
                        if default.is_none_or(|(r, _)| rank < r) {
                            default = Some((rank, plugin));
                        }
                    }
                }
            }
            // A consumer-scoped instance only wins over a more specific non-consumer one when its
            // rank is better (route+service beats consumer alone).
            let default_rank = default.map_or(u8::MAX, |(r, _)| r);
            by_consumer.retain(|_, (r, _)| *r < default_rank);
            if default.is_none() && by_consumer.is_empty() {
                continue;
            }
            slots.push(Slot {
                priority: def.priority,
                name: def.name,
                default: default.map(|(_, p)| p.clone()),
                by_consumer: (!by_consumer.is_empty())
                    .then(|| by_consumer.into_iter().map(|(c, (_, p))| (c, p.clone())).collect()),
            });
        }
        slots.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(b.name)));
        let needs_body = slots.iter().any(|s| {
            s.default.as_ref().is_some_and(|p| p.needs_body())
                || s.by_consumer.as_ref().is_some_and(|m| m.values().any(|p| p.needs_body()))
        });
        PluginChain { slots, needs_body }
    }
}

/// Kong's precedence rank (1 = most specific).
fn rank(route: bool, service: bool, consumer: bool) -> u8 {
    match (route, service, consumer) {
        (true, true, true) => 1,
        (true, false, true) => 2,
        (false, true, true) => 3,
        (true, true, false) => 4,
        (false, false, true) => 5,
        (true, false, false) => 6,
        (false, true, false) => 7,
        (false, false, false) => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ConsumerIndex;
    use serde_json::json;

    fn row(route: Option<Uuid>, service: Option<Uuid>, consumer: Option<Uuid>, realm: &str) -> PluginInstanceRow {
        let config = match json!({"key_names": ["apikey"], "realm": realm}) {
            serde_json::Value::Object(m) => m,
            _ => Obj::new(),
        };
        PluginInstanceRow {
            id: Uuid::new_v4(),
            name: "key-auth".into(),
            route,
            service,
            consumer,
            enabled: true,
            http: true,
            config,
        }
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
        let b = ChainBuilder::new(&rows, &BuildEnv { consumers: &consumers });
        let chain = b.chain_for(r, Some(s));
        assert_eq!(chain.slots.len(), 1);
        assert!(format!("{:?}", chain.slots[0].default).contains("realm=\\\"route\\\""));
        let chain = b.chain_for(other, Some(s));
        assert!(format!("{:?}", chain.slots[0].default).contains("realm=\\\"service\\\""));
        let chain = b.chain_for(other, None);
        assert!(format!("{:?}", chain.slots[0].default).contains("realm=\\\"global\\\""));
    }

    #[test]
    fn consumer_scoped_instances_apply_to_their_consumer_only_and_yield_to_route_and_service() {
        let (r, s, alice, bob) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let consumers = ConsumerIndex::default();
        let env = BuildEnv { consumers: &consumers };
        // route (6) and consumer (5): the consumer's instance wins for that consumer.
        let rows = vec![row(Some(r), None, None, "route"), row(None, None, Some(alice), "alice")];
        let chain = ChainBuilder::new(&rows, &env).chain_for(r, Some(s));
        assert!(format!("{:?}", chain.slots[0].pick(Some(alice))).contains("realm=\\\"alice\\\""));
        assert!(format!("{:?}", chain.slots[0].pick(Some(bob))).contains("realm=\\\"route\\\""));
        assert!(format!("{:?}", chain.slots[0].pick(None)).contains("realm=\\\"route\\\""));
        // route+service (4) beats consumer alone (5), but route+consumer (2) beats both.
        let rows = vec![row(Some(r), Some(s), None, "both"), row(None, None, Some(alice), "alice")];
        let chain = ChainBuilder::new(&rows, &env).chain_for(r, Some(s));
        assert!(format!("{:?}", chain.slots[0].pick(Some(alice))).contains("realm=\\\"both\\\""));
        let rows = vec![row(Some(r), Some(s), None, "both"), row(Some(r), None, Some(alice), "alice-route")];
        let chain = ChainBuilder::new(&rows, &env).chain_for(r, Some(s));
        assert!(format!("{:?}", chain.slots[0].pick(Some(alice))).contains("realm=\\\"alice-route\\\""));
    }

    #[test]
    fn disabled_instances_do_not_run() {
        let mut r = row(None, None, None, "x");
        r.enabled = false;
        let consumers = ConsumerIndex::default();
        let b = ChainBuilder::new(&[r], &BuildEnv { consumers: &consumers });
        assert!(b.chain_for(Uuid::new_v4(), None).is_empty());
    }

    #[test]
    fn precedence_table() {
        let order = [
            rank(true, true, true),
            rank(true, false, true),
            rank(false, true, true),
            rank(true, true, false),
            rank(false, false, true),
            rank(true, false, false),
            rank(false, true, false),
            rank(false, false, false),
        ];
        assert_eq!(order, [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
