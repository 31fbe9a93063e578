//! Target health, kept per node apart from the configuration: one [`PeerHealth`] per upstream and
//! `host:port`, found again by every balancer rebuilt with that target, so that a configuration
//! change that does not touch a target leaves its health as it was (Kong resets it). Read on the
//! proxy's path with one atomic load; written by health checks and the Admin API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// A target's health as reported (`HEALTHY`, `UNHEALTHY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// One target's health on this node.
#[derive(Debug)]
pub struct PeerHealth {
    healthy: AtomicBool,
}

impl Default for PeerHealth {
    /// Targets start healthy, as in Kong.
    fn default() -> PeerHealth {
        PeerHealth { healthy: AtomicBool::new(true) }
    }
}

impl PeerHealth {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set(&self, health: Health) {
        self.healthy.store(health == Health::Healthy, Ordering::Relaxed);
    }

    pub fn health(&self) -> Health {
        if self.is_healthy() { Health::Healthy } else { Health::Unhealthy }
    }
}

/// Every target's health on this node, by upstream id and `host:port`. Its lock is taken when a
/// balancer is built and when health is set, never when a peer is picked.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    peers: Mutex<HashMap<(Uuid, String, u16), Arc<PeerHealth>>>,
}

impl HealthRegistry {
    /// The health of `host:port` under `upstream`, made (healthy) if it has none yet.
    pub fn peer(&self, upstream: Uuid, host: &str, port: u16) -> Arc<PeerHealth> {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.entry((upstream, host.to_string(), port)).or_default().clone()
    }

    /// Forgets the targets of `upstream` not in `keep` (deleted ones).
    pub fn retain(&self, upstream: Uuid, keep: &[(&str, u16)]) {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.retain(|(u, host, port), _| *u != upstream || keep.iter().any(|(h, p)| h == host && p == port));
    }

    /// Forgets every target of upstreams not in `upstreams`.
    pub fn retain_upstreams(&self, upstreams: &[Uuid]) {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.retain(|(u, _, _), _| upstreams.contains(u));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_found_again_by_upstream_and_address() {
        let registry = HealthRegistry::default();
        let u = Uuid::new_v4();
        let first = registry.peer(u, "10.0.0.1", 80);
        assert!(first.is_healthy());
        first.set(Health::Unhealthy);
        assert!(!registry.peer(u, "10.0.0.1", 80).is_healthy());
        assert!(registry.peer(u, "10.0.0.2", 80).is_healthy());
        assert!(registry.peer(Uuid::new_v4(), "10.0.0.1", 80).is_healthy());
        registry.retain(u, &[("10.0.0.2", 80)]);
        assert!(registry.peer(u, "10.0.0.1", 80).is_healthy(), "forgotten, then new");
    }
}
