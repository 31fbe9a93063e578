//! Target health, kept per node apart from the configuration: one [`PeerHealth`] per upstream and
//! `host:port`, found again by every balancer rebuilt with that target, so that a configuration
//! change that does not touch a target leaves its health as it was (Kong resets it). Read on the
//! proxy's path with one atomic load; written by health checks and the Admin API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// A target's health as reported (`HEALTHY`, `UNHEALTHY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// What a check or a proxied request says about a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Success,
    HttpFailure,
    TcpFailure,
    Timeout,
}

/// How many reports in a row flip a target (0: that kind of report is not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub successes: u8,
    pub http_failures: u8,
    pub tcp_failures: u8,
    pub timeouts: u8,
}

impl Limits {
    fn of(&self, report: Report) -> u8 {
        match report {
            Report::Success => self.successes,
            Report::HttpFailure => self.http_failures,
            Report::TcpFailure => self.tcp_failures,
            Report::Timeout => self.timeouts,
        }
    }
}

// The state, packed in one word so that a report is one compare-and-swap: the internal health
// (lua-resty-healthcheck's healthy, mostly healthy, mostly unhealthy, unhealthy) in the low byte,
// then one 8-bit counter per kind of report.
const HEALTHY: u64 = 0;
const MOSTLY_HEALTHY: u64 = 1;
const MOSTLY_UNHEALTHY: u64 = 2;
const UNHEALTHY: u64 = 3;

fn shift(report: Report) -> u32 {
    match report {
        Report::Success => 8,
        Report::HttpFailure => 16,
        Report::TcpFailure => 24,
        Report::Timeout => 32,
    }
}

/// One target's health on this node, with Kong's counters (lua-resty-healthcheck 3): a success
/// resets the failure counters, a failure the success counter; a counter reaching its limit flips
/// the target and clears the counters; reports that match the current state are not counted.
#[derive(Debug, Default)]
pub struct PeerHealth {
    /// Targets start healthy (all zero), as in Kong.
    state: AtomicU64,
}

impl PeerHealth {
    /// Whether it takes traffic (healthy, or healthy with failures counted).
    pub fn is_healthy(&self) -> bool {
        self.state.load(Ordering::Relaxed) & 0xff < MOSTLY_UNHEALTHY
    }

    /// Sets the health by hand (the Admin API): counters cleared.
    pub fn set(&self, health: Health) {
        self.state.store(if health == Health::Healthy { HEALTHY } else { UNHEALTHY }, Ordering::Relaxed);
    }

    /// Whether it is as a new address starts: healthy, nothing counted.
    fn is_fresh(&self) -> bool {
        self.state.load(Ordering::Relaxed) == HEALTHY
    }

    pub fn health(&self) -> Health {
        if self.is_healthy() { Health::Healthy } else { Health::Unhealthy }
    }

    /// Counts `report` against `limits`; returns the new health when it flipped.
    pub fn report(&self, report: Report, limits: &Limits) -> Option<Health> {
        let limit = u64::from(limits.of(report));
        if limit == 0 {
            return None;
        }
        let success = report == Report::Success;
        let mut flipped = None;
        let update = self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
            let state = word & 0xff;
            // A success for a healthy target, or a failure for an unhealthy one, changes nothing.
            if (success && state == HEALTHY) || (!success && state == UNHEALTHY) {
                return None;
            }
            let count = ((word >> shift(report)) & 0xff) + 1;
            if count >= limit {
                // A flip of the internal state; the health callers see changes only from one side
                // of healthy to the other.
                let was_healthy = state < MOSTLY_UNHEALTHY;
                flipped = (was_healthy != success).then_some(if success { Health::Healthy } else { Health::Unhealthy });
                return Some(if success { HEALTHY } else { UNHEALTHY });
            }
            flipped = None;
            // A success clears the failure counters; a failure clears the success counter.
            let counters = if success { 0 } else { word & !(0xff << shift(Report::Success)) & !0xff };
            let counters = (counters & !(0xff << shift(report))) | (count << shift(report));
            // Counting towards a flip leaves a target on its side: mostly healthy, or mostly unhealthy.
            let state = if state < MOSTLY_UNHEALTHY { MOSTLY_HEALTHY } else { MOSTLY_UNHEALTHY };
            Some((counters & !0xff) | state)
        });
        update.ok().and(flipped)
    }
}

/// One address of one target of one upstream.
type Key = (Uuid, String, u16, SocketAddr);

/// Every address's health on this node, by upstream, target (`host`, `port`) and address. Its
/// lock is taken when a balancer is built and when health is set, never when a peer is picked.
/// An address its target's name stops resolving to keeps its health while the target is
/// configured: a name that comes back to it finds it as it was.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    peers: Mutex<HashMap<Key, Arc<PeerHealth>>>,
}

impl HealthRegistry {
    /// The health of `address` of target `target` under `upstream`, made (healthy) if it has none.
    pub fn peer(&self, upstream: Uuid, target: (&str, u16), address: SocketAddr) -> Arc<PeerHealth> {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.entry((upstream, target.0.to_string(), target.1, address)).or_default().clone()
    }

    /// Forgets the targets of `upstream` not in `keep` (deleted ones), and the addresses no longer
    /// in use whose state is the one a new address starts with (nothing to remember).
    pub fn retain(&self, upstream: Uuid, keep: &[(&str, u16)]) {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.retain(|(u, host, port, _), health| {
            *u != upstream
                || (keep.iter().any(|(h, p)| h == host && p == port)
                    && (Arc::strong_count(health) > 1 || !health.is_fresh()))
        });
    }

    /// Forgets every target of upstreams not in `upstreams`.
    pub fn retain_upstreams(&self, upstreams: &[Uuid]) {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.retain(|(u, _, _, _), _| upstreams.contains(u));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_found_again_by_upstream_and_address() {
        let registry = HealthRegistry::default();
        let u = Uuid::new_v4();
        let at = |s: &str| s.parse::<SocketAddr>().expect("address");
        let first = registry.peer(u, ("svc.test", 80), at("10.0.0.1:80"));
        assert!(first.is_healthy());
        first.set(Health::Unhealthy);
        drop(first);
        assert!(!registry.peer(u, ("svc.test", 80), at("10.0.0.1:80")).is_healthy());
        assert!(registry.peer(u, ("svc.test", 80), at("10.0.0.2:80")).is_healthy());
        assert!(registry.peer(Uuid::new_v4(), ("svc.test", 80), at("10.0.0.1:80")).is_healthy());
        // No longer used: the unhealthy address is remembered while its target is configured.
        registry.retain(u, &[("svc.test", 80)]);
        assert!(!registry.peer(u, ("svc.test", 80), at("10.0.0.1:80")).is_healthy());
        registry.retain(u, &[("other.test", 80)]);
        assert!(registry.peer(u, ("svc.test", 80), at("10.0.0.1:80")).is_healthy(), "forgotten, then new");
    }

    #[test]
    fn failures_in_a_row_flip_a_target_and_successes_bring_it_back() {
        let limits = Limits { successes: 2, http_failures: 3, tcp_failures: 1, timeouts: 0 };
        let p = PeerHealth::default();
        assert_eq!(p.report(Report::HttpFailure, &limits), None);
        assert_eq!(p.report(Report::HttpFailure, &limits), None);
        assert!(p.is_healthy(), "mostly healthy still takes traffic");
        // A success in between starts the failures over.
        assert_eq!(p.report(Report::Success, &limits), None);
        assert_eq!(p.report(Report::HttpFailure, &limits), None);
        assert_eq!(p.report(Report::HttpFailure, &limits), None);
        assert_eq!(p.report(Report::HttpFailure, &limits), Some(Health::Unhealthy));
        assert!(!p.is_healthy());
        // Failures while unhealthy change nothing; timeouts are not counted (limit 0).
        assert_eq!(p.report(Report::TcpFailure, &limits), None);
        assert_eq!(p.report(Report::Timeout, &limits), None);
        assert_eq!(p.report(Report::Success, &limits), None);
        assert!(!p.is_healthy(), "mostly unhealthy takes no traffic");
        assert_eq!(p.report(Report::Success, &limits), Some(Health::Healthy));
        assert!(p.is_healthy());
        assert_eq!(p.report(Report::TcpFailure, &limits), Some(Health::Unhealthy), "one TCP failure is enough");
        // A failure between successes starts the successes over.
        assert_eq!(p.report(Report::Success, &limits), None);
        assert_eq!(p.report(Report::TcpFailure, &limits), None, "unhealthy again: no change to report");
        assert_eq!(p.report(Report::Success, &limits), None);
        assert!(!p.is_healthy());
        assert_eq!(p.report(Report::Success, &limits), Some(Health::Healthy));
    }
}
