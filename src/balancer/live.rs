//! An upstream's balancer as the snapshot holds it: the current [`Balancer`] behind an atomic
//! pointer, built again (off the proxy's path) when a target's name resolves to other addresses,
//! so that DNS changes touch one upstream and never the router. [`follow_dns`] is the per-node
//! task that asks targets' names again when their answers expire (failed ones every
//! [`FAILED_EVERY`], as Kong does) and rebuilds the balancers whose answers changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::{Balancer, HealthRegistry, TargetSource, UpstreamConfig, Variant};

/// How often a target whose name failed to resolve is asked again.
pub const FAILED_EVERY: Duration = Duration::from_secs(30);
/// How often the answers of targets' names are looked at.
const TICK: Duration = Duration::from_millis(250);

/// An upstream's balancer, rebuilt in place when its targets' addresses change.
#[derive(Debug)]
pub struct LiveBalancer {
    current: ArcSwap<Balancer>,
    upstream: Arc<UpstreamConfig>,
    targets: Box<[TargetSource]>,
    /// The slots of the targets named by host name, by target id.
    names: HashMap<Uuid, Arc<crate::dns::Name>>,
    variants: Box<[Variant]>,
    registry: Arc<HealthRegistry>,
    /// Told after each rebuild.
    rebuilt: Notify,
}

impl LiveBalancer {
    pub fn new(
        upstream: Arc<UpstreamConfig>,
        targets: Vec<TargetSource>,
        registry: Arc<HealthRegistry>,
        variants: Vec<Variant>,
    ) -> LiveBalancer {
        let names = targets.iter().filter_map(|t| Some((t.config.id, t.name.clone()?))).collect();
        let refs: Vec<&TargetSource> = targets.iter().collect();
        let balancer = Balancer::build(upstream.clone(), &refs, &registry, &variants);
        LiveBalancer {
            current: ArcSwap::from_pointee(balancer),
            upstream,
            targets: targets.into(),
            names,
            variants: variants.into(),
            registry,
            rebuilt: Notify::new(),
        }
    }

    /// The balancer now (one atomic load and a reference count).
    pub fn load(&self) -> Arc<Balancer> {
        self.current.load_full()
    }

    pub fn upstream(&self) -> &Arc<UpstreamConfig> {
        &self.upstream
    }

    /// The index of `variant` among this balancer's variants.
    pub fn variant(&self, variant: &Variant) -> Option<usize> {
        self.variants.iter().position(|v| v == variant)
    }

    /// Builds the balancer again if a target's name now answers otherwise; whether it did.
    pub fn refresh(&self) -> bool {
        if !self.current.load().stale(&self.names) {
            return false;
        }
        let refs: Vec<&TargetSource> = self.targets.iter().collect();
        let balancer = Balancer::build(self.upstream.clone(), &refs, &self.registry, &self.variants);
        tracing::debug!(upstream = %self.upstream.name, peers = balancer.peers.len(), "balancer rebuilt with new DNS answers");
        self.current.store(Arc::new(balancer));
        self.rebuilt.notify_waiters();
        true
    }

    /// Waits (at most `wait`) until no target's name is waiting for its first answer; the
    /// balancer then. A request that finds no peer while names are resolving comes here.
    pub async fn resolved(&self, wait: Duration) -> Arc<Balancer> {
        let deadline = Instant::now() + wait;
        loop {
            let rebuilt = self.rebuilt.notified();
            tokio::pin!(rebuilt);
            rebuilt.as_mut().enable();
            // An answer may have come since the last look of `follow_dns`.
            self.refresh();
            let current = self.load();
            if !current.resolving() || Instant::now() >= deadline {
                return current;
            }
            let _ = tokio::time::timeout_at(deadline, rebuilt).await;
        }
    }

    /// Starts the queries of targets' names that are due.
    fn ask_due(&self, now: Instant) {
        for name in self.names.values() {
            if name.due(now, FAILED_EVERY) {
                name.refresh_in_background();
            }
        }
    }
}

/// Keeps the balancers `current` returns (the live configuration's) in step with DNS until `stop`.
pub async fn follow_dns<F>(current: F, changed: Arc<crate::dns::Dns>, mut stop: watch::Receiver<bool>)
where
    F: Fn() -> Vec<Arc<LiveBalancer>> + Send + 'static,
{
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = changed.changed.notified() => {}
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        for live in current() {
            live.ask_due(now);
            live.refresh();
        }
    }
}
