//! Load balancing over an upstream's targets: the typed configuration of upstreams and targets as
//! the balancer reads it (parsed once from stored rows, after the model has validated them), the
//! [`Balancer`] a snapshot builds from them, and the selection of a peer per request. Health state
//! lives apart (`health`), so that it survives configuration changes that do not touch a target.
//!
//! Must not: do I/O or take a lock when a peer is picked (the proxy does it per request).

pub mod active;
mod consistent_hash;
pub mod health;
mod latency;
mod least_conn;
mod live;
mod round_robin;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderValue;
use serde::Deserialize;
use uuid::Uuid;

pub use health::{Health, HealthRegistry, Limits, PeerHealth, Report};
pub use live::{LiveBalancer, follow_dns};

/// What a node keeps for balancing from one configuration to the next: target health and the
/// resolver with its answers.
#[derive(Debug, Clone)]
pub struct NodeBalancing {
    pub health: Arc<HealthRegistry>,
    pub dns: Arc<crate::dns::Dns>,
}

impl Default for NodeBalancing {
    /// Health of its own and the process's default resolver (`dns_*` defaults): what a mirror
    /// that balances nothing (a control plane's, a test's) uses.
    fn default() -> NodeBalancing {
        static DNS: std::sync::OnceLock<Arc<crate::dns::Dns>> = std::sync::OnceLock::new();
        let dns = DNS.get_or_init(|| crate::dns::Dns::new(crate::dns::DnsSettings::default())).clone();
        NodeBalancing { health: Arc::default(), dns }
    }
}

/// How a target is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    RoundRobin,
    ConsistentHashing,
    LeastConnections,
    Latency,
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    None,
    Consumer,
    Ip,
    Header,
    Cookie,
    Path,
    QueryArg,
    UriCapture,
}

/// An upstream's active and passive health checks (every field has Kong's default once stored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Healthchecks {
    pub active: ActiveChecks,
    pub passive: PassiveChecks,
    /// Percentage of weight that must be available for the balancer to be healthy.
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Tcp,
    Http,
    Https,
    Grpc,
    Grpcs,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ActiveChecks {
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// Seconds.
    pub timeout: f64,
    pub concurrency: u32,
    pub http_path: String,
    pub https_sni: Option<String>,
    pub https_verify_certificate: bool,
    pub headers: Option<std::collections::BTreeMap<String, Vec<String>>>,
    pub healthy: ActiveHealthy,
    pub unhealthy: ActiveUnhealthy,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ActiveHealthy {
    /// Seconds between probes of a healthy target; 0: none.
    pub interval: f64,
    pub http_statuses: Vec<u16>,
    pub successes: u8,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ActiveUnhealthy {
    pub interval: f64,
    pub http_statuses: Vec<u16>,
    pub tcp_failures: u8,
    pub timeouts: u8,
    pub http_failures: u8,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PassiveChecks {
    #[serde(rename = "type")]
    pub kind: CheckType,
    pub healthy: PassiveHealthy,
    pub unhealthy: PassiveUnhealthy,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PassiveHealthy {
    pub http_statuses: Vec<u16>,
    pub successes: u8,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PassiveUnhealthy {
    pub http_statuses: Vec<u16>,
    pub tcp_failures: u8,
    pub timeouts: u8,
    pub http_failures: u8,
}

impl Healthchecks {
    /// Kong's `is_upstream_using_healthcheck`: probing or passive failure counting is on.
    pub fn enabled(&self) -> bool {
        let u = &self.passive.unhealthy;
        self.active.healthy.interval != 0.0
            || self.active.unhealthy.interval != 0.0
            || u.tcp_failures != 0
            || u.timeouts != 0
            || u.http_failures != 0
    }
}

/// An upstream, as stored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpstreamConfig {
    pub id: Uuid,
    pub name: String,
    pub algorithm: Algorithm,
    pub hash_on: HashOn,
    pub hash_fallback: HashOn,
    pub hash_on_header: Option<String>,
    pub hash_fallback_header: Option<String>,
    pub hash_on_cookie: Option<String>,
    pub hash_on_cookie_path: String,
    pub hash_on_query_arg: Option<String>,
    pub hash_fallback_query_arg: Option<String>,
    pub hash_on_uri_capture: Option<String>,
    pub hash_fallback_uri_capture: Option<String>,
    pub slots: u32,
    pub healthchecks: Healthchecks,
    pub host_header: Option<String>,
    pub use_srv_name: bool,
}

/// A target, as stored: `host:port` (the port always written) and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    pub id: Uuid,
    pub upstream: Uuid,
    /// The name or address, without brackets.
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// Why a stored target cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target '{0}' is not host:port")]
pub struct BadTarget(pub String);

impl TargetConfig {
    /// Splits a stored `host:port` (`[v6]:port` for IPv6).
    pub fn new(id: Uuid, upstream: Uuid, target: &str, weight: u32) -> Result<TargetConfig, BadTarget> {
        let bad = || BadTarget(target.to_string());
        let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || (host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err()) {
            return Err(bad());
        }
        Ok(TargetConfig { id, upstream, host: host.to_string(), port, weight })
    }
}

/// One address of a target as the balancer serves it: the target's own, or one its name resolved to.
#[derive(Debug)]
pub struct Peer {
    pub target: Uuid,
    /// The target's name (or address), without brackets.
    pub host: Box<str>,
    pub address: SocketAddr,
    pub weight: u32,
    pub health: Arc<PeerHealth>,
}

/// A target as the balancer last saw it: its addresses are `peers[peers]`.
#[derive(Debug)]
pub struct TargetState {
    pub id: Uuid,
    pub host: Box<str>,
    pub port: u16,
    pub weight: u32,
    /// Kong's `dns` of the health endpoint: the record type, or why the name has no addresses.
    pub dns: Box<str>,
    pub peers: std::ops::Range<usize>,
    /// The DNS answer its addresses came from (0 for an address; `None` while none came).
    answer: Option<u64>,
}

/// What a balancer builds a target from: its configuration and, for a name, its DNS slot.
#[derive(Debug, Clone)]
pub struct TargetSource {
    pub config: TargetConfig,
    pub name: Option<Arc<crate::dns::Name>>,
}

/// How a group of services reaches an upstream's peers: their scheme (which port `Host` leaves
/// out) and the keep-alive pool settings after the address (`ServiceTarget::pool_suffix`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Variant {
    pub https: bool,
    pub pool_suffix: Box<str>,
}

/// Each peer's pool key and `Host` for one [`Variant`], in the order of `peers`.
#[derive(Debug)]
pub struct VariantKeys {
    pub pool_keys: Box<[Arc<str>]>,
    pub host_headers: Box<[HeaderValue]>,
}

/// An upstream's peers and how one is picked; built with each snapshot and again when a target's
/// name resolves to other addresses; immutable.
#[derive(Debug)]
pub struct Balancer {
    pub upstream: Arc<UpstreamConfig>,
    /// The targets, sorted by name then port, as Kong does.
    pub targets: Box<[TargetState]>,
    /// Peers of weight 0 are kept (they are listed) but never picked.
    pub peers: Box<[Peer]>,
    pub variants: Box<[VariantKeys]>,
    /// Round-robin order: indices into `peers`, smoothly interleaved by weight.
    wheel: Box<[u32]>,
    /// Consistent hashing's continuum (for that algorithm only).
    ring: Option<consistent_hash::Ring>,
    /// Tells this build from the ones before it (per-worker in-flight counts start over).
    generation: u64,
    /// The peers' weights, in their order.
    weights: Box<[u32]>,
    /// Passive checks, when the upstream counts real traffic.
    passive: Option<Passive>,
    /// Some target's name has not been answered yet.
    resolving: bool,
}

/// Passive health checks compiled for the proxy: the limits and the statuses as bit sets.
#[derive(Debug)]
struct Passive {
    limits: Limits,
    healthy: StatusSet,
    unhealthy: StatusSet,
}

/// HTTP statuses 0–1023 as bits.
#[derive(Debug, Default)]
pub struct StatusSet([u64; 16]);

impl StatusSet {
    pub fn of(statuses: &[u16]) -> StatusSet {
        let mut set = StatusSet::default();
        for s in statuses {
            if let Some(word) = set.0.get_mut(usize::from(*s) / 64) {
                *word |= 1 << (s % 64);
            }
        }
        set
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.get(usize::from(status) / 64).is_some_and(|w| w & (1 << (status % 64)) != 0)
    }
}

/// What a request holds on its peer until its response is over: a place among the peer's requests
/// in flight (least-connections), or the timing of the response (latency).
#[derive(Debug)]
pub enum Lease {
    Connections(least_conn::Lease),
    Latency(latency::Lease),
}

/// A peer picked for one try of a request, with its lease.
#[derive(Debug)]
pub struct Picked {
    pub peer: usize,
    pub lease: Option<Lease>,
}

/// Balancer builds so far, for their generations.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// Each worker's position in each upstream's wheel, by upstream id: no lock, no shared counter.
    /// Kept across rebuilds, so a changed wheel goes on from about where the old one was.
    static CURSORS: RefCell<HashMap<Uuid, usize, foldhash::fast::RandomState>> = RefCell::default();
}

impl Balancer {
    /// The balancer of `upstream` over `targets` (a name's addresses as its slot's current answer
    /// has them), with their health from `registry` (new addresses start healthy), and each
    /// peer's pool key and `Host` for each of `variants`.
    pub fn build(
        upstream: Arc<UpstreamConfig>,
        targets: &[&TargetSource],
        registry: &HealthRegistry,
        variants: &[Variant],
    ) -> Balancer {
        let mut sorted: Vec<&TargetConfig> = targets.iter().map(|t| &t.config).collect();
        let names: HashMap<Uuid, &Arc<crate::dns::Name>> =
            targets.iter().filter_map(|t| Some((t.config.id, t.name.as_ref()?))).collect();
        // Kong sorts targets by name, then port.
        sorted.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        let mut peers: Vec<Peer> = Vec::new();
        let mut srv_names: Vec<Option<Box<str>>> = Vec::new();
        let mut states = Vec::with_capacity(sorted.len());
        for t in sorted {
            let first = peers.len();
            let mut addresses: Vec<(SocketAddr, u32, Option<Box<str>>)> = Vec::new();
            let (dns, answer): (Box<str>, Option<u64>) = match t.host.parse::<IpAddr>() {
                Ok(ip) => {
                    addresses.push((SocketAddr::new(ip, t.port), t.weight, None));
                    (if ip.is_ipv4() { "A" } else { "AAAA" }.into(), Some(0))
                }
                Err(_) => match names.get(&t.id).and_then(|n| n.current()) {
                    None => ("unknown".into(), None),
                    Some(a) => match &a.result {
                        Ok(records) => {
                            for address in &*records.addresses {
                                // A target of weight 0 is off, whatever its SRV records say.
                                let weight = match address.weight {
                                    Some(w) if t.weight > 0 => u32::from(w),
                                    _ => t.weight,
                                };
                                let at = SocketAddr::new(address.ip, address.port.unwrap_or(t.port));
                                addresses.push((at, weight, address.srv_name.clone()));
                            }
                            (records.kind.as_str().into(), Some(a.generation))
                        }
                        Err(failure) => (failure.message().into(), Some(a.generation)),
                    },
                },
            };
            // Kong sorts a target's addresses by `ip:port`.
            addresses.sort_by_cached_key(|(at, _, _)| format!("{}:{}", at.ip(), at.port()));
            for (address, weight, srv_name) in addresses {
                peers.push(Peer {
                    target: t.id,
                    host: t.host.as_str().into(),
                    address,
                    weight,
                    health: registry.peer(upstream.id, (&t.host, t.port), address),
                });
                srv_names.push(srv_name);
            }
            states.push(TargetState {
                id: t.id,
                host: t.host.as_str().into(),
                port: t.port,
                weight: t.weight,
                dns,
                peers: first..peers.len(),
                answer,
            });
        }
        let variants = variants
            .iter()
            .map(|v| VariantKeys {
                pool_keys: peers.iter().map(|p| pool_key(v.https, p.address, &v.pool_suffix)).collect(),
                host_headers: peers
                    .iter()
                    .zip(&srv_names)
                    .map(|(p, srv)| {
                        let name = srv.as_deref().filter(|_| upstream.use_srv_name).unwrap_or(&p.host);
                        host_header(&upstream, name, p.address.port(), v.https)
                    })
                    .collect(),
            })
            .collect();
        let weights: Vec<u32> = peers.iter().map(|p| p.weight).collect();
        let wheel = round_robin::wheel(&weights);
        let ring = (upstream.algorithm == Algorithm::ConsistentHashing).then(|| {
            let ips: Vec<String> = peers.iter().map(|p| p.address.ip().to_string()).collect();
            let placed: Vec<consistent_hash::Placed<'_>> = peers
                .iter()
                .zip(&ips)
                .map(|(p, ip)| consistent_hash::Placed { address: ip, port: p.address.port(), weight: p.weight })
                .collect();
            consistent_hash::Ring::build(&placed, upstream.slots, targets.len())
        });
        let generation = GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = &upstream.healthchecks.passive;
        let limits = Limits {
            successes: p.healthy.successes,
            http_failures: p.unhealthy.http_failures,
            tcp_failures: p.unhealthy.tcp_failures,
            timeouts: p.unhealthy.timeouts,
        };
        let passive = (limits.http_failures > 0 || limits.tcp_failures > 0 || limits.timeouts > 0).then(|| Passive {
            limits,
            healthy: StatusSet::of(&p.healthy.http_statuses),
            unhealthy: StatusSet::of(&p.unhealthy.http_statuses),
        });
        Balancer {
            upstream,
            resolving: states.iter().any(|t| t.answer.is_none()),
            targets: states.into(),
            peers: peers.into(),
            variants,
            wheel,
            ring,
            generation,
            weights: weights.into_boxed_slice(),
            passive,
        }
    }

    /// Whether some target's name has not been answered yet (its addresses are still to come).
    pub fn resolving(&self) -> bool {
        self.resolving
    }

    /// Whether `names` (each target's slot, as `TargetSource::name`) now answer otherwise than
    /// this build saw.
    fn stale(&self, names: &HashMap<Uuid, Arc<crate::dns::Name>>) -> bool {
        self.targets.iter().any(|t| {
            let Some(name) = names.get(&t.id) else { return false };
            name.current().map(|a| a.generation) != t.answer
        })
    }

    /// Passive checks: the status of a response from `peer` (Kong counts the statuses it lists as
    /// healthy or unhealthy, and ignores the others).
    pub fn report_status(&self, peer: usize, status: u16) {
        let Some(passive) = &self.passive else { return };
        let report = if passive.healthy.contains(status) {
            Report::Success
        } else if passive.unhealthy.contains(status) {
            Report::HttpFailure
        } else {
            return;
        };
        self.report(peer, report, &passive.limits, "passive");
    }

    /// Passive checks: a try on `peer` that failed (timed out, or the connection failed).
    pub fn report_failure(&self, peer: usize, timeout: bool) {
        let Some(passive) = &self.passive else { return };
        let report = if timeout { Report::Timeout } else { Report::TcpFailure };
        self.report(peer, report, &passive.limits, "passive");
    }

    /// Counts a report on `peer`; logs a change of its health.
    pub fn report(&self, peer: usize, report: Report, limits: &Limits, check: &str) {
        let Some(p) = self.peers.get(peer) else { return };
        if let Some(health) = p.health.report(report, limits) {
            let health = if health == Health::Healthy { "healthy" } else { "unhealthy" };
            tracing::warn!(upstream = %self.upstream.name, target = %p.host, address = %p.address, check, ?report, "target is now {health}");
        }
    }

    /// Sets by hand the health of the peers of target `target` (all of them, or the one at
    /// `address`); returns the addresses set.
    pub fn set_health(&self, target: Option<Uuid>, address: Option<SocketAddr>, health: Health) -> Vec<SocketAddr> {
        let mut set = Vec::new();
        for peer in &self.peers {
            if target.is_none_or(|t| t == peer.target) && address.is_none_or(|a| a == peer.address) {
                peer.health.set(health);
                set.push(peer.address);
            }
        }
        set
    }

    /// Whether peers are picked by a hash of the request (consistent hashing).
    pub fn hashes(&self) -> bool {
        self.ring.is_some()
    }

    /// Health state is kept per upstream: whether any weight is available beyond the threshold.
    pub fn is_healthy(&self) -> bool {
        let (total, available) = self.weight();
        total > 0 && (available as f64 / total as f64 * 100.0) > self.upstream.healthchecks.threshold
    }

    /// The peers' total weight, and the part of it on healthy peers.
    pub fn weight(&self) -> (u64, u64) {
        let total = self.peers.iter().map(|p| u64::from(p.weight)).sum();
        let available = self.peers.iter().filter(|p| p.health.is_healthy()).map(|p| u64::from(p.weight)).sum();
        (total, available)
    }

    /// Picks a healthy peer not in `tried` (the peers this request already failed on, tried again
    /// only when every other one has been): the one `hash` maps to with consistent hashing (the
    /// caller computes it from `hash_on`), the next in round-robin order otherwise.
    pub fn pick(&self, hash: Option<&str>, tried: &[usize]) -> Option<Picked> {
        // With the default threshold (0) the balancer is healthy while any peer is, which the pick
        // itself finds out: the sum over every peer is taken only for a threshold above 0.
        if self.wheel.is_empty() || (self.upstream.healthchecks.threshold > 0.0 && !self.is_healthy()) {
            return None;
        }
        let healthy = |i: usize| self.peers.get(i).is_some_and(|p| p.health.is_healthy() && p.weight > 0);
        if let Some(ring) = &self.ring {
            let value = hash.unwrap_or("");
            let peer = ring.find(value, |i| healthy(i) && !tried.contains(&i)).or_else(|| ring.find(value, healthy))?;
            return Some(Picked { peer, lease: None });
        }
        if self.upstream.algorithm == Algorithm::LeastConnections {
            let from = self.next_in_wheel();
            let (id, weights) = (self.upstream.id, &self.weights);
            let fresh = least_conn::pick(id, self.generation, weights, from, |i| healthy(i) && !tried.contains(&i));
            let (peer, lease) = fresh.or_else(|| least_conn::pick(id, self.generation, weights, from, healthy))?;
            return Some(Picked { peer, lease: Some(Lease::Connections(lease)) });
        }
        if self.upstream.algorithm == Algorithm::Latency {
            let from = self.next_in_wheel();
            let (id, weights) = (self.upstream.id, &self.weights);
            let fresh = latency::pick(id, self.generation, weights, from, |i| healthy(i) && !tried.contains(&i));
            let (peer, lease) = fresh.or_else(|| latency::pick(id, self.generation, weights, from, healthy))?;
            return Some(Picked { peer, lease: Some(Lease::Latency(lease)) });
        }
        self.round_robin(tried).map(|peer| Picked { peer, lease: None })
    }

    /// This worker's position in the wheel, moved on by one.
    fn cursor(&self) -> usize {
        let len = self.wheel.len().max(1);
        CURSORS.with_borrow_mut(|cursors| {
            let cursor = cursors.entry(self.upstream.id).or_insert_with(|| fastrand_start(len));
            let at = *cursor % len;
            *cursor = at + 1;
            at
        })
    }

    /// Round-robin's next entry: where least-connections and latency start looking, so that ties
    /// rotate.
    fn next_in_wheel(&self) -> usize {
        self.wheel.get(self.cursor()).map_or(0, |i| *i as usize)
    }

    fn round_robin(&self, tried: &[usize]) -> Option<usize> {
        let len = self.wheel.len();
        let start = self.cursor();
        let usable = |i: usize| self.peers.get(i).is_some_and(|p| p.health.is_healthy());
        let mut fallback = None;
        for step in 0..len {
            let Some(&i) = self.wheel.get((start + step) % len) else { continue };
            let i = i as usize;
            if !usable(i) {
                continue;
            }
            if !tried.contains(&i) {
                if step > 0 {
                    // Skipped entries are not owed: the next request starts after this one.
                    CURSORS.with_borrow_mut(|c| c.insert(self.upstream.id, start + step + 1));
                }
                return Some(i);
            }
            fallback.get_or_insert(i);
        }
        fallback
    }
}

/// The keep-alive pool key of a service's requests to `address`: its scheme, the address, then the
/// service's pool settings (as `ServiceTarget::pool_key`).
pub fn pool_key(https: bool, address: SocketAddr, suffix: &str) -> Arc<str> {
    let scheme = if https { "https" } else { "http" };
    Arc::from(format!("{scheme}://{address}{suffix}"))
}

/// The `Host` sent to a peer when the route does not preserve the client's: the upstream's
/// `host_header`, else `name` (the target's, or the SRV record's with `use_srv_name`) with `:port`
/// unless it is the scheme's default.
fn host_header(upstream: &UpstreamConfig, name: &str, port: u16, https: bool) -> HeaderValue {
    let name = if name.contains(':') { format!("[{name}]") } else { name.to_string() };
    let header = match &upstream.host_header {
        Some(h) => h.clone(),
        None if port == if https { 443 } else { 80 } => name,
        None => format!("{name}:{port}"),
    };
    HeaderValue::from_str(&header).unwrap_or(HeaderValue::from_static("invalid"))
}

/// Of the peers `0..n`, scanned from `from` so that ties rotate (the first of equals wins), the one
/// whose score is lowest by `less`; `score` is `None` for a peer that may not be picked.
fn lowest<S: Copy>(
    n: usize,
    from: usize,
    score: impl Fn(usize) -> Option<S>,
    less: impl Fn(&S, &S) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, S)> = None;
    for i in (0..n).map(|step| (from + step) % n.max(1)) {
        let Some(s) = score(i) else { continue };
        if best.as_ref().is_none_or(|(_, b)| less(&s, b)) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

/// Where a worker starts in a wheel it has not used: spread, so that workers do not all begin with
/// the same target.
fn fastrand_start(len: usize) -> usize {
    let seed = std::hash::BuildHasher::hash_one(&foldhash::fast::RandomState::default(), std::thread::current().id());
    usize::try_from(seed % len.max(1) as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_host_and_port() {
        let id = Uuid::nil();
        let t = TargetConfig::new(id, id, "[::1]:8000", 5).expect("v6");
        assert_eq!((t.host.as_str(), t.port), ("::1", 8000));
        let t = TargetConfig::new(id, id, "svc.test:81", 5).expect("name");
        assert_eq!((t.host.as_str(), t.port), ("svc.test", 81));
        assert!(TargetConfig::new(id, id, "svc.test", 5).is_err());
        assert!(TargetConfig::new(id, id, "a:b:80", 5).is_err());
    }

    fn upstream(threshold: f64) -> Arc<UpstreamConfig> {
        testing::upstream(serde_json::json!({"name": "u", "healthchecks": {"threshold": threshold}}))
    }

    fn targets(u: &UpstreamConfig, weights: &[u32]) -> Vec<TargetSource> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| TargetSource {
                config: TargetConfig::new(Uuid::new_v4(), u.id, &format!("10.0.0.{}:80", i + 1), *w).expect("t"),
                name: None,
            })
            .collect()
    }

    fn plain() -> Vec<Variant> {
        vec![Variant { https: false, pool_suffix: "/s".into() }]
    }

    #[test]
    fn round_robin_follows_the_weights_and_skips_unhealthy_peers() {
        let u = upstream(0.0);
        let ts = targets(&u, &[1, 2, 3]);
        let registry = HealthRegistry::default();
        let b = Balancer::build(u.clone(), &ts.iter().collect::<Vec<_>>(), &registry, &plain());
        let mut seen = [0usize; 3];
        for _ in 0..6000 {
            seen[b.pick(None, &[]).expect("a peer").peer] += 1;
        }
        assert_eq!(seen, [1000, 2000, 3000]);
        assert_eq!(b.variants[0].host_headers[0], "10.0.0.1");
        assert_eq!(&*b.variants[0].pool_keys[0], "http://10.0.0.1:80/s");
        b.peers[2].health.set(Health::Unhealthy);
        for _ in 0..100 {
            assert_ne!(b.pick(None, &[]).map(|p| p.peer), Some(2));
        }
        // A retry goes to another peer first, and back to a tried one only when none is left.
        let first = b.pick(None, &[]).expect("peer").peer;
        let second = b.pick(None, &[first]).expect("peer").peer;
        assert_ne!(first, second);
        assert!(b.pick(None, &[0, 1]).is_some());
        // Rebuilt with one more target, the unhealthy one stays unhealthy.
        let more = targets(&u, &[1, 2, 3, 4]);
        let rebuilt = Balancer::build(u, &more.iter().collect::<Vec<_>>(), &registry, &plain());
        assert!(!rebuilt.peers[2].health.is_healthy());
        assert!(rebuilt.peers[3].health.is_healthy());
    }

    #[test]
    fn no_peer_when_too_little_weight_is_healthy() {
        let u = upstream(50.0);
        let ts = targets(&u, &[1, 1, 2]);
        let b = Balancer::build(u, &ts.iter().collect::<Vec<_>>(), &HealthRegistry::default(), &plain());
        b.peers[2].health.set(Health::Unhealthy);
        assert!(b.pick(None, &[]).is_none(), "half the weight is not more than 50%");
        b.peers[2].health.set(Health::Healthy);
        b.peers[0].health.set(Health::Unhealthy);
        assert!(b.pick(None, &[]).is_some());
        let empty = Balancer::build(upstream(0.0), &[], &HealthRegistry::default(), &plain());
        assert!(empty.pick(None, &[]).is_none());
    }
}

/// Upstreams for tests, as the Admin API would store them.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The upstream `input` describes, with every default filled as stored.
    pub fn upstream(input: serde_json::Value) -> Arc<UpstreamConfig> {
        let mut input = crate::model::schema::into_obj(input);
        crate::model::upstreams::apply_shorthands(&mut input);
        let mut stored = crate::model::schema::validate(crate::model::upstreams::upstreams(), &input).expect("valid");
        stored.insert("id".into(), serde_json::json!(Uuid::new_v4()));
        Arc::new(serde_json::from_value(serde_json::Value::Object(stored)).expect("typed"))
    }

    /// A balancer of `upstream` over one target at `host:port`.
    pub fn one_target(upstream: Arc<UpstreamConfig>, host: &str, port: u16) -> Balancer {
        let config = TargetConfig::new(Uuid::new_v4(), upstream.id, &format!("{host}:{port}"), 100).expect("target");
        Balancer::build(upstream, &[&TargetSource { config, name: None }], &HealthRegistry::default(), &[])
    }
}
