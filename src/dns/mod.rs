//! Name resolution for services and targets named by host name, as Kong's DNS client does it: the
//! hosts file first (`dns_hostsfile`, read once), then the record types of `dns_order` in turn
//! (`LAST` is the type that answered this name last time; `SRV` answers give ports, weights and
//! names; `CNAME` chains are followed by the address lookups), through hickory's resolver on the
//! servers of `dns_resolver` or `resolv.conf`.
//!
//! Each name has one [`Name`] slot per node, shared by every service and target that uses it and
//! held by the snapshot, so that the proxy reads an answer with one atomic load and no map lookup.
//! Answers are kept for their TTL (at least a second; `dns_valid_ttl` overrides it), then served
//! stale for up to `dns_stale_ttl` while one query refreshes them; a name that does not exist is
//! asked again after `dns_not_found_ttl`, a failed query after `dns_error_ttl`. A failed refresh
//! keeps the last good answer until it is too stale. Answers with TTL 0 keep each address for
//! [`TTL0_HOLD`] after it was last seen, so that servers answering with a rotating subset do not
//! make a target's addresses come and go with each query.
//!
//! Must not: block the proxy (a request waits only for a name never answered, or whose failure
//! has expired), or run two queries for one name at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long an address from a TTL-0 answer stays after the last answer that named it.
pub const TTL0_HOLD: Duration = Duration::from_secs(60);
/// The shortest time an answer is kept (a TTL of 0 would otherwise send a query per request).
const MIN_TTL: Duration = Duration::from_secs(1);
/// How long hosts file entries are kept (they are read once, as in Kong).
const HOSTS_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// One record type of `dns_order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Last,
    Srv,
    A,
    Aaaa,
    Cname,
}

impl Order {
    pub fn parse(s: &str) -> Option<Order> {
        match s.trim().to_ascii_uppercase().as_str() {
            "LAST" => Some(Order::Last),
            "SRV" => Some(Order::Srv),
            "A" => Some(Order::A),
            "AAAA" => Some(Order::Aaaa),
            "CNAME" => Some(Order::Cname),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Order::Last => 0,
            Order::Srv => 1,
            Order::A => 2,
            Order::Aaaa => 3,
            Order::Cname => 4,
        }
    }

    fn of_code(code: u8) -> Option<Order> {
        [Order::Srv, Order::A, Order::Aaaa, Order::Cname].into_iter().find(|o| o.code() == code)
    }
}

/// The `dns_*` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsSettings {
    /// Name servers (`ip[:port]`, port 53); empty: those of `resolv.conf`.
    pub resolvers: Vec<SocketAddr>,
    pub hostsfile: PathBuf,
    pub order: Vec<Order>,
    /// Replaces every answer's TTL.
    pub valid_ttl: Option<Duration>,
    pub stale_ttl: Duration,
    pub not_found_ttl: Duration,
    pub error_ttl: Duration,
}

impl Default for DnsSettings {
    fn default() -> DnsSettings {
        DnsSettings {
            resolvers: Vec::new(),
            hostsfile: PathBuf::from("/etc/hosts"),
            order: vec![Order::Last, Order::Srv, Order::A, Order::Cname],
            valid_ttl: None,
            stale_ttl: Duration::from_secs(3600),
            not_found_ttl: Duration::from_secs(30),
            error_ttl: Duration::from_secs(1),
        }
    }
}

/// The record type an answer came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    A,
    Aaaa,
    Srv,
}

impl Kind {
    /// The name Kong's health endpoint shows (`dns`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::A => "A",
            Kind::Aaaa => "AAAA",
            Kind::Srv => "SRV",
        }
    }
}

/// One address of an answer. SRV answers carry the port, the weight (0 read as 1, as Kong does)
/// and the name the record points to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Address {
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub weight: Option<u16>,
    pub srv_name: Option<Box<str>>,
}

/// A usable answer: its addresses in a stable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    pub kind: Kind,
    pub addresses: Box<[Address]>,
}

impl Records {
    /// The addresses to connect to, the ones without a port of their own on `port`.
    pub fn socket_addrs(&self, port: u16) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addresses.iter().map(move |a| SocketAddr::new(a.ip, a.port.unwrap_or(port)))
    }
}

/// Why a name has no addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The name does not exist or has no records of any type asked (Kong's 503).
    NotFound(String),
    /// The servers could not be asked or failed (Kong's 500).
    Error(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::NotFound(m) | Failure::Error(m) => m,
        }
    }
}

/// What a name resolved to last, and until when it stands.
#[derive(Debug)]
pub struct Answer {
    pub result: Result<Records, Failure>,
    /// When the query that gave it was made.
    pub queried: Instant,
    /// Until when it is used without a new query.
    pub fresh_until: Instant,
    /// Until when a good answer is still served while a refresh runs.
    pub stale_until: Instant,
    /// Changes only when the addresses (or the failure) change: what balancers and pooled
    /// connections compare.
    pub generation: u64,
    /// When each address was last seen, as `result`'s addresses (TTL-0 answers keep addresses for
    /// a while after they stop being named).
    seen: Box<[Instant]>,
}

/// A node's resolver: the name slots, the hosts file and hickory's client.
pub struct Dns {
    resolver: Result<TokioResolver, String>,
    hosts: HashMap<String, Vec<IpAddr>>,
    settings: DnsSettings,
    names: Mutex<HashMap<Box<str>, Weak<Name>>>,
    /// Told each time a name's addresses change.
    pub changed: Notify,
    generations: AtomicU64,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// One host name's slot: its current answer, shared by whoever uses the name.
#[derive(Debug)]
pub struct Name {
    pub host: Box<str>,
    dns: Arc<Dns>,
    answer: ArcSwapOption<Answer>,
    querying: AtomicBool,
    answered: Notify,
    /// The record type that answered last (`LAST`), as `Order::code`; 0 when none did.
    last: AtomicU8,
}

impl Dns {
    /// A resolver with `settings`. A name server configuration that cannot be read is logged, and
    /// every query then fails with its reason (the hosts file still answers).
    pub fn new(settings: DnsSettings) -> Arc<Dns> {
        let resolver = build_resolver(&settings);
        if let Err(e) = &resolver {
            tracing::warn!(error = %e, "no DNS name servers: only the hosts file resolves names");
        }
        let hosts = match std::fs::read_to_string(&settings.hostsfile) {
            Ok(text) => parse_hosts(&text),
            Err(e) => {
                tracing::warn!(file = %settings.hostsfile.display(), error = %e, "hosts file not read");
                HashMap::new()
            }
        };
        Arc::new(Dns {
            resolver,
            hosts,
            settings,
            names: Mutex::default(),
            changed: Notify::new(),
            generations: AtomicU64::new(1),
        })
    }

    /// The slot of `host` (lowercased), made on first use with its first query started at once.
    pub fn name(self: &Arc<Self>, host: &str) -> Arc<Name> {
        let host = host.to_ascii_lowercase();
        let mut names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(name) = names.get(host.as_str()).and_then(Weak::upgrade) {
            return name;
        }
        names.retain(|_, n| n.strong_count() > 0);
        let name = Arc::new(Name {
            host: host.as_str().into(),
            dns: self.clone(),
            answer: ArcSwapOption::empty(),
            querying: AtomicBool::new(false),
            answered: Notify::new(),
            last: AtomicU8::new(0),
        });
        names.insert(host.into(), Arc::downgrade(&name));
        drop(names);
        if tokio::runtime::Handle::try_current().is_ok() {
            name.refresh_in_background();
        }
        name
    }

    /// Asks for `host`: the hosts file, then each type of `dns_order`.
    async fn query(&self, host: &str, last: Option<Order>) -> (Result<(Records, Duration), Failure>, Option<Order>) {
        if let Some(records) = self.hosts.get(host).and_then(|ips| self.hosts_answer(ips)) {
            return (Ok((records, HOSTS_TTL)), None);
        }
        let resolver = match &self.resolver {
            Ok(r) => r,
            Err(e) => return (Err(Failure::Error(e.clone())), None),
        };
        let mut order: Vec<Order> = Vec::with_capacity(self.settings.order.len() + 1);
        if self.settings.order.contains(&Order::Last) {
            order.extend(last);
        }
        for o in &self.settings.order {
            if *o != Order::Last && !order.contains(o) {
                order.push(*o);
            }
        }
        let mut not_found = None;
        let mut error = None;
        for o in order {
            let asked = match o {
                Order::Last => continue,
                Order::Srv => srv(resolver, host).await,
                Order::A => addresses(resolver, host, RecordType::A).await,
                Order::Aaaa => addresses(resolver, host, RecordType::AAAA).await,
                Order::Cname => cname(resolver, host).await,
            };
            match asked {
                Ok(answer) => return (Ok(answer), Some(o)),
                // The name does not exist: no other type will find it.
                Err(Failure::NotFound(m)) if m == NAME_ERROR => return (Err(Failure::NotFound(m)), None),
                Err(Failure::NotFound(m)) => not_found = Some(m),
                Err(Failure::Error(m)) => {
                    let timed_out = m.contains("timed out");
                    error = Some(m);
                    // The servers do not answer: other types would wait as long.
                    if timed_out {
                        break;
                    }
                }
            }
        }
        let failure = match (error, not_found) {
            (Some(e), _) => Failure::Error(e),
            (None, Some(m)) => Failure::NotFound(m),
            (None, None) => Failure::NotFound(EMPTY.into()),
        };
        (Err(failure), None)
    }
}

impl Dns {
    /// A hosts file entry as an answer: its IPv4 addresses when `dns_order` asks for A records (or
    /// CNAME), else its IPv6 ones when it asks for AAAA.
    fn hosts_answer(&self, ips: &[IpAddr]) -> Option<Records> {
        let order = &self.settings.order;
        let wants = |o: Order| order.contains(&o) || order.contains(&Order::Cname);
        let of = |v6: bool| -> Vec<Address> {
            let chosen = ips.iter().filter(|ip| ip.is_ipv6() == v6);
            chosen.map(|ip| Address { ip: *ip, port: None, weight: None, srv_name: None }).collect()
        };
        let (v4, v6) = (of(false), of(true));
        if wants(Order::A) && !v4.is_empty() {
            return Some(Records { kind: Kind::A, addresses: v4.into() });
        }
        if wants(Order::Aaaa) && !v6.is_empty() {
            return Some(Records { kind: Kind::Aaaa, addresses: v6.into() });
        }
        None
    }
}

const NAME_ERROR: &str = "dns server error: 3 name error";
const EMPTY: &str = "dns client error: 101 empty record received";

/// Kong's words for what hickory reports.
fn failure(e: &NetError) -> Failure {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) if no.response_code == ResponseCode::NXDomain => {
            Failure::NotFound(NAME_ERROR.into())
        }
        NetError::Dns(DnsError::NoRecordsFound(_)) => Failure::NotFound(EMPTY.into()),
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => Failure::NotFound(NAME_ERROR.into()),
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            Failure::Error("dns server error: 2 server failure".into())
        }
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => {
            Failure::Error("dns server error: 5 refused".into())
        }
        NetError::Timeout => Failure::Error("dns client error: timed out".into()),
        e => Failure::Error(format!("dns client error: {e}")),
    }
}

fn ttl_of(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs))
}

/// The A or AAAA records of `host`.
async fn addresses(
    resolver: &TokioResolver,
    host: &str,
    record_type: RecordType,
) -> Result<(Records, Duration), Failure> {
    let lookup = resolver.lookup(host, record_type).await.map_err(|e| failure(&e))?;
    let mut ttl = None::<u32>;
    let mut addresses = Vec::new();
    for record in lookup.answers() {
        let ip = match &record.data {
            RData::A(a) if record_type == RecordType::A => IpAddr::V4(a.0),
            RData::AAAA(a) if record_type == RecordType::AAAA => IpAddr::V6(a.0),
            _ => continue,
        };
        ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        addresses.push(Address { ip, port: None, weight: None, srv_name: None });
    }
    if addresses.is_empty() {
        return Err(Failure::NotFound(EMPTY.into()));
    }
    addresses.sort();
    addresses.dedup();
    let kind = if record_type == RecordType::AAAA { Kind::Aaaa } else { Kind::A };
    Ok((Records { kind, addresses: addresses.into() }, ttl_of(ttl.unwrap_or(0))))
}

/// The addresses `host` has through a CNAME chain (A first, then AAAA).
async fn cname(resolver: &TokioResolver, host: &str) -> Result<(Records, Duration), Failure> {
    match addresses(resolver, host, RecordType::A).await {
        Err(Failure::NotFound(_)) => addresses(resolver, host, RecordType::AAAA).await,
        other => other,
    }
}

/// The SRV records of `host` of the lowest priority, each target's addresses with the record's
/// port and weight.
async fn srv(resolver: &TokioResolver, host: &str) -> Result<(Records, Duration), Failure> {
    let lookup = resolver.lookup(host, RecordType::SRV).await.map_err(|e| failure(&e))?;
    let records: Vec<(u32, &hickory_resolver::proto::rr::rdata::SRV)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((r.ttl, s)),
            _ => None,
        })
        .collect();
    let Some(priority) = records.iter().map(|(_, s)| s.priority).min() else {
        return Err(Failure::NotFound(EMPTY.into()));
    };
    let mut ttl = u32::MAX;
    let mut out = Vec::new();
    for (record_ttl, s) in records.into_iter().filter(|(_, s)| s.priority == priority) {
        ttl = ttl.min(record_ttl);
        let target = s.target.to_utf8();
        let target = target.trim_end_matches('.');
        // The additional section often carries the targets' addresses already.
        let mut ips: Vec<IpAddr> = lookup
            .additionals()
            .iter()
            .filter(|r| r.name == s.target)
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        if ips.is_empty() {
            if let Ok(ip) = target.parse::<IpAddr>() {
                ips.push(ip);
            } else {
                match resolver.lookup_ip(target).await {
                    Ok(found) => {
                        ttl = ttl.min(found.as_lookup().answers().iter().map(|r| r.ttl).min().unwrap_or(ttl));
                        ips.extend(found.iter());
                    }
                    Err(e) => tracing::debug!(srv = host, target, error = %e, "SRV target does not resolve"),
                }
            }
        }
        for ip in ips {
            out.push(Address { ip, port: Some(s.port), weight: Some(s.weight.max(1)), srv_name: Some(target.into()) });
        }
    }
    if out.is_empty() {
        return Err(Failure::NotFound(EMPTY.into()));
    }
    out.sort();
    out.dedup();
    Ok((Records { kind: Kind::Srv, addresses: out.into() }, ttl_of(ttl)))
}

fn build_resolver(settings: &DnsSettings) -> Result<TokioResolver, String> {
    let mut builder = if settings.resolvers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("reading resolv.conf: {e}"))?
    } else {
        let servers = settings
            .resolvers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), TokioRuntimeProvider::default())
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    // The answers are cached here, with Kong's rules; the hosts file is read here too.
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = opts.timeout.min(Duration::from_secs(2));
    builder.build().map_err(|e| format!("DNS resolver: {e}"))
}

/// `/etc/hosts`: each name (lowercased) to its addresses, in file order.
fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut out: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|f| f.parse::<IpAddr>().ok()) else { continue };
        for name in fields {
            let ips = out.entry(name.to_ascii_lowercase()).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    out
}

impl Name {
    /// The current answer, if any query has finished.
    pub fn current(&self) -> Option<Arc<Answer>> {
        self.answer.load_full()
    }

    /// An answer to use now: the current one while fresh (or, if good, while stale, with a refresh
    /// started), else one from a new query, which this waits for.
    pub async fn resolve(self: &Arc<Self>) -> Arc<Answer> {
        loop {
            let now = Instant::now();
            if let Some(a) = self.answer.load_full() {
                if now < a.fresh_until {
                    return a;
                }
                if a.result.is_ok() && now < a.stale_until {
                    self.refresh_in_background();
                    return a;
                }
            }
            let notified = self.answered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.start_query() {
                return self.run_query().await;
            }
            notified.await;
            // Whatever the query that finished gave is the answer, even if it is already old.
            if let Some(a) = self.answer.load_full().filter(|a| a.queried >= now) {
                return a;
            }
        }
    }

    /// Whether the balancer's refresh should ask: never answered, a good answer past its TTL, a
    /// failure `retry` after it was asked (Kong asks failed targets again every 30 seconds).
    pub fn due(&self, now: Instant, retry: Duration) -> bool {
        match &*self.answer.load() {
            None => true,
            Some(a) if a.result.is_ok() => now >= a.fresh_until,
            Some(a) => now >= a.queried + retry,
        }
    }

    /// Starts a query unless one runs.
    pub fn refresh_in_background(self: &Arc<Self>) {
        if self.start_query() {
            let name = self.clone();
            tokio::spawn(async move {
                name.run_query().await;
            });
        }
    }

    fn start_query(&self) -> bool {
        self.querying.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Runs the query this caller started, stores its answer and tells whoever waits.
    async fn run_query(self: &Arc<Self>) -> Arc<Answer> {
        // Cleared even if the query is dropped half-way (its task aborted at shutdown).
        struct Running<'a>(&'a Name);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.querying.store(false, Ordering::Release);
                self.0.answered.notify_waiters();
            }
        }
        let running = Running(self);
        let queried = Instant::now();
        let last = Order::of_code(self.last.load(Ordering::Relaxed));
        let (result, answered_by) = self.dns.query(&self.host, last).await;
        if let Some(o) = answered_by {
            self.last.store(o.code(), Ordering::Relaxed);
        }
        let previous = self.answer.load_full();
        let answer = Arc::new(self.dns.settle(&self.host, previous.as_deref(), result, queried));
        if previous.as_ref().is_none_or(|p| p.generation != answer.generation) {
            self.dns.changed.notify_waiters();
        }
        self.answer.store(Some(answer.clone()));
        drop(running);
        answer
    }
}

impl Dns {
    /// The answer a query's `result` makes, given the one before it.
    fn settle(
        &self,
        host: &str,
        previous: Option<&Answer>,
        result: Result<(Records, Duration), Failure>,
        queried: Instant,
    ) -> Answer {
        let s = &self.settings;
        let next_generation = || self.generations.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok((mut records, ttl)) => {
                let ttl = s.valid_ttl.unwrap_or(ttl);
                let mut seen: Vec<Instant> = vec![queried; records.addresses.len()];
                // TTL 0: the addresses of the answers of the last minute, so that a server answering
                // with a rotating subset does not make addresses come and go with each query.
                if ttl.is_zero()
                    && let Some(Ok(before)) = previous
                        .map(|p| (&p.result, &p.seen))
                        .map(|(r, seen)| r.as_ref().map(|r| r.addresses.iter().zip(seen.iter()).collect::<Vec<_>>()))
                {
                    let mut addresses = records.addresses.to_vec();
                    for (address, at) in before {
                        if !addresses.contains(address) && queried.duration_since(*at) < TTL0_HOLD {
                            addresses.push(address.clone());
                            seen.push(*at);
                        }
                    }
                    let mut both: Vec<(Address, Instant)> = addresses.into_iter().zip(seen).collect();
                    both.sort_by(|a, b| a.0.cmp(&b.0));
                    seen = both.iter().map(|(_, at)| *at).collect();
                    records.addresses = both.into_iter().map(|(a, _)| a).collect();
                }
                let same = previous.is_some_and(|p| p.result.as_ref().is_ok_and(|r| *r == records));
                let fresh_until = queried + ttl.max(MIN_TTL);
                Answer {
                    generation: match previous {
                        Some(p) if same => p.generation,
                        _ => next_generation(),
                    },
                    result: Ok(records),
                    queried,
                    fresh_until,
                    stale_until: fresh_until + s.stale_ttl,
                    seen: seen.into(),
                }
            }
            Err(failure) => {
                let retry = match failure {
                    Failure::NotFound(_) => s.not_found_ttl,
                    Failure::Error(_) => s.error_ttl,
                };
                // A failed refresh keeps a good answer while it may still be served stale.
                if let Some(p) = previous.filter(|p| p.result.is_ok() && queried < p.stale_until) {
                    tracing::warn!(host, error = failure.message(), "DNS refresh failed; the last answer is kept");
                    return Answer {
                        result: p.result.clone(),
                        queried,
                        fresh_until: (queried + retry).min(p.stale_until),
                        stale_until: p.stale_until,
                        generation: p.generation,
                        seen: p.seen.clone(),
                    };
                }
                let same = previous.is_some_and(|p| p.result.as_ref().err() == Some(&failure));
                Answer {
                    generation: match previous {
                        Some(p) if same => p.generation,
                        _ => next_generation(),
                    },
                    result: Err(failure),
                    queried,
                    fresh_until: queried + retry,
                    stale_until: queried + retry,
                    seen: Box::new([]),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns() -> Arc<Dns> {
        let settings = DnsSettings { hostsfile: PathBuf::from("/nonexistent"), ..DnsSettings::default() };
        Dns::new(settings)
    }

    fn a(ips: &[&str]) -> Records {
        let addresses =
            ips.iter().map(|ip| Address { ip: ip.parse().expect("ip"), port: None, weight: None, srv_name: None });
        Records { kind: Kind::A, addresses: addresses.collect() }
    }

    fn ips(answer: &Answer) -> Vec<String> {
        answer.result.as_ref().expect("records").addresses.iter().map(|a| a.ip.to_string()).collect()
    }

    #[test]
    fn hosts_file_names_every_alias() {
        let hosts = parse_hosts(
            "127.0.0.1 localhost\n# c\n10.0.0.1 Svc.Test svc # web\n::1 localhost ip6-localhost\nbad line\n",
        );
        assert_eq!(hosts["localhost"], vec!["127.0.0.1".parse::<IpAddr>().expect("ip"), "::1".parse().expect("ip")]);
        assert_eq!(hosts["svc.test"], vec!["10.0.0.1".parse::<IpAddr>().expect("ip")]);
        assert_eq!(hosts["svc"], hosts["svc.test"]);
        assert!(!hosts.contains_key("bad"));
    }

    #[test]
    fn the_hosts_file_answers_the_record_types_asked_for() {
        let dns = dns();
        let ips: Vec<IpAddr> = vec!["::1".parse().expect("ip"), "127.0.0.1".parse().expect("ip")];
        let v4 = dns.hosts_answer(&ips).expect("A");
        assert_eq!((v4.kind, v4.addresses.len()), (Kind::A, 1), "the default order asks for A (and CNAME)");
        let only_v6 = dns.hosts_answer(&ips[..1]).expect("AAAA through CNAME");
        assert_eq!(only_v6.kind, Kind::Aaaa);
        let settings = DnsSettings {
            order: vec![Order::Srv, Order::A],
            hostsfile: PathBuf::from("/nonexistent"),
            ..DnsSettings::default()
        };
        assert!(Dns::new(settings).hosts_answer(&ips[..1]).is_none(), "no AAAA asked for");
    }

    #[test]
    fn order_reads_kongs_names() {
        let order: Vec<Option<Order>> = "LAST,SRV,a,CNAME,aaaa,MX".split(',').map(Order::parse).collect();
        assert_eq!(
            order,
            [Some(Order::Last), Some(Order::Srv), Some(Order::A), Some(Order::Cname), Some(Order::Aaaa), None]
        );
    }

    #[tokio::test]
    async fn the_same_addresses_keep_their_generation() {
        let dns = dns();
        let t0 = Instant::now();
        let first = dns.settle("x", None, Ok((a(&["10.0.0.2", "10.0.0.1"]), Duration::from_secs(30))), t0);
        assert_eq!(first.fresh_until, t0 + Duration::from_secs(30));
        let again = dns.settle("x", Some(&first), Ok((a(&["10.0.0.2", "10.0.0.1"]), Duration::from_secs(30))), t0);
        assert_eq!(again.generation, first.generation);
        let other = dns.settle("x", Some(&again), Ok((a(&["10.0.0.3"]), Duration::from_secs(30))), t0);
        assert_ne!(other.generation, first.generation);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_answer_until_it_is_too_stale() {
        let dns = dns();
        let t0 = Instant::now();
        let good = dns.settle("x", None, Ok((a(&["10.0.0.1"]), Duration::from_secs(10))), t0);
        let later = t0 + Duration::from_secs(20);
        let failed = dns.settle("x", Some(&good), Err(Failure::Error("dns client error: timed out".into())), later);
        assert_eq!(ips(&failed), ["10.0.0.1"]);
        assert_eq!(failed.generation, good.generation);
        assert_eq!(failed.fresh_until, later + Duration::from_secs(1), "asked again after dns_error_ttl");
        let too_late = t0 + Duration::from_secs(10 + 3600 + 1);
        let gone = dns.settle("x", Some(&failed), Err(Failure::NotFound(NAME_ERROR.into())), too_late);
        assert!(gone.result.is_err());
        assert_eq!(gone.fresh_until, too_late + Duration::from_secs(30), "asked again after dns_not_found_ttl");
    }

    proptest::proptest! {
        /// Whatever the answers and failures, in any order: a good answer is what is served, a
        /// failure keeps the last good answer while it may be served stale, and the generation
        /// changes exactly when what is served changes.
        #[test]
        fn answers_settle_with_a_generation_that_tracks_what_is_served(
            steps in proptest::collection::vec((0u8..4, proptest::collection::btree_set(1u8..6, 1..4), 1u64..5000), 1..40)
        ) {
            let dns = dns();
            let t0 = Instant::now();
            let mut at = t0;
            let mut previous: Option<Answer> = None;
            for (what, set, wait) in steps {
                at += Duration::from_secs(wait);
                let ips: Vec<String> = set.iter().map(|i| format!("10.0.0.{i}")).collect();
                let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
                let result = match what {
                    0 | 1 => Ok((a(&refs), Duration::from_secs(30))),
                    2 => Err(Failure::NotFound(NAME_ERROR.into())),
                    _ => Err(Failure::Error("dns client error: timed out".into())),
                };
                let next = dns.settle("x", previous.as_ref(), result.clone(), at);
                let stale_ok = previous.as_ref().filter(|p| p.result.is_ok() && at < p.stale_until);
                match (&result, stale_ok) {
                    (Ok((records, _)), _) => proptest::prop_assert_eq!(next.result.as_ref().ok(), Some(records)),
                    (Err(_), Some(p)) => proptest::prop_assert_eq!(&next.result, &p.result),
                    (Err(f), None) => proptest::prop_assert_eq!(next.result.as_ref().err(), Some(f)),
                }
                if let Some(p) = &previous {
                    proptest::prop_assert_eq!(p.generation == next.generation, p.result == next.result);
                }
                proptest::prop_assert!(next.fresh_until > at && next.stale_until >= next.fresh_until);
                previous = Some(next);
            }
        }
    }

    #[tokio::test]
    async fn ttl_zero_answers_keep_addresses_for_a_minute() {
        let dns = dns();
        let t0 = Instant::now();
        let zero = Duration::ZERO;
        let first = dns.settle("x", None, Ok((a(&["10.0.0.1", "10.0.0.2"]), zero)), t0);
        assert_eq!(first.fresh_until, t0 + MIN_TTL, "a TTL of 0 is kept a second");
        // A rotating subset does not change the addresses.
        let t1 = t0 + Duration::from_secs(1);
        let second = dns.settle("x", Some(&first), Ok((a(&["10.0.0.2"]), zero)), t1);
        assert_eq!(ips(&second), ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(second.generation, first.generation);
        let t2 = t0 + Duration::from_secs(2);
        let third = dns.settle("x", Some(&second), Ok((a(&["10.0.0.1"]), zero)), t2);
        assert_eq!(third.generation, first.generation);
        // An address not named for a minute goes.
        let t3 = t1 + TTL0_HOLD;
        let fourth = dns.settle("x", Some(&third), Ok((a(&["10.0.0.1"]), zero)), t3);
        assert_eq!(ips(&fourth), ["10.0.0.1"]);
        assert_ne!(fourth.generation, first.generation);
    }
}
