//! The immutable, compiled view of one control plane's configuration that the proxy reads: router with
//! compiled route targets and plugin chains, and the identity directory (consumers, credentials). Held in an
//! `ArcSwap`; a request does one atomic load and never locks. Compiled off the hot path: each entity
//! by [`compile`] (the same code judges Admin API writes), the whole by [`state`], from rows, without
//! I/O.

pub mod compile;
#[cfg(test)]
mod properties;
pub mod state;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, StatusCode};
use uuid::Uuid;

use crate::identity::Directory;
use crate::plugins::PluginChain;
use crate::router::Router;
use crate::tls::{CertPair, CertificateSource, CertificateTable};

/// Where a matched route sends traffic.
#[derive(Debug)]
pub struct ServiceTarget {
    pub id: Uuid,
    /// How logs and metrics name it.
    pub subject: Arc<crate::plugins::log::ServiceSubject>,
    /// A disabled service's routes are not routed.
    pub enabled: bool,
    pub https: bool,
    /// For an `https` service: its TLS client configuration (verification, CAs, client certificate).
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    pub host: Box<str>,
    /// The host when it is an address (no DNS).
    pub ip: Option<std::net::IpAddr>,
    pub port: u16,
    /// `Host` header when `preserve_host` is off: host, plus `:port` unless it is the default.
    pub host_header: HeaderValue,
    /// `host:port/read/write`: the key of this upstream's keep-alive pool (shared by services with
    /// the same address and timeouts).
    pub pool_key: Arc<str>,
    /// The pool key after the address, for the peers of a balancer (`balancer::pool_key`).
    pub pool_suffix: Box<str>,
    pub path: Option<Box<str>>,
    pub retries: u32,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

/// A route's service's balancer, when the service's host names an upstream.
#[derive(Debug, Clone)]
pub struct RouteBalancer {
    pub live: Arc<crate::balancer::LiveBalancer>,
    /// Which of the balancer's variants (pool keys and `Host` per peer) the service's requests use.
    pub variant: usize,
}

/// Where a route's service sends requests.
#[derive(Debug, Clone)]
pub enum Destination {
    /// The service's host is an address (or the route has no service).
    Address,
    /// The service's host is a name, resolved by DNS (the service's port is used unless an SRV
    /// record gives one).
    Name(Arc<crate::dns::Name>),
    /// The service's host names an upstream (the service's port is then unused).
    Balancer(RouteBalancer),
}

/// A route compiled for the proxy: how to rewrite the request and which plugins run.
#[derive(Debug)]
pub struct RouteTarget {
    pub id: Uuid,
    pub strip_path: bool,
    pub preserve_host: bool,
    /// The route accepts plain-HTTP requests.
    pub http_allowed: bool,
    pub https_redirect_status: StatusCode,
    /// Kong's `request_buffering`: read the request body before anything goes upstream.
    pub request_buffering: bool,
    /// Its stored route or service does not compile: answered 500 rather than routed elsewhere.
    pub broken: bool,
    pub service: Option<Arc<ServiceTarget>>,
    pub destination: Destination,
    pub chain: PluginChain,
    /// How logs and metrics name the route and its service.
    pub subject: Arc<crate::plugins::log::Subject>,
}

/// A stored entity that does not compile, as `/status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// Its table (`plugins`).
    pub entity: &'static str,
    pub id: String,
    pub message: String,
}

/// The whole compiled view.
#[derive(Debug)]
pub struct Snapshot {
    pub version: i64,
    pub router: Arc<Router<Arc<RouteTarget>>>,
    /// Consumers, credentials and consumer groups, as plugins look them up.
    pub identity: Directory,
    /// Certificates by SNI, for the TLS listeners.
    pub certificates: Arc<CertificateTable>,
    /// Stored entities left out because they do not compile.
    pub rejected: Arc<[Rejection]>,
    /// Each upstream's balancer by upstream id (for its health on the Admin API).
    pub balancers: Arc<HashMap<Uuid, Arc<crate::balancer::LiveBalancer>>>,
    /// When it was built (its age on `/metrics`).
    pub built: std::time::SystemTime,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            version: -1,
            router: Arc::new(Router::empty()),
            identity: Directory::default(),
            certificates: Arc::new(CertificateTable::default()),
            rejected: Arc::new([]),
            balancers: Arc::default(),
            built: std::time::SystemTime::now(),
        }
    }
}

/// The swap point between the builder and the proxy.
#[derive(Debug)]
pub struct SnapshotHolder {
    current: ArcSwap<Snapshot>,
    /// The configuration version of the current snapshot, for writers waiting to see their change.
    applied: tokio::sync::watch::Sender<i64>,
}

impl SnapshotHolder {
    pub fn new() -> SnapshotHolder {
        SnapshotHolder {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            applied: tokio::sync::watch::Sender::new(-1),
        }
    }

    /// Waits (up to `within`) until the proxy serves configuration `version` or newer; returns
    /// whether it does.
    pub async fn wait_for(&self, version: i64, within: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(within, rx.wait_for(|v| *v >= version)).await.is_ok_and(|r| r.is_ok())
    }

    /// An owned reference, for work that waits on I/O.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// One atomic load; hold the guard only for synchronous work.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn store(&self, s: Snapshot) {
        let version = s.version;
        self.current.store(Arc::new(s));
        self.applied.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }
}

/// A TLS handshake picks its certificate from the configuration current at that moment: a change
/// applies to the next handshake, and open connections keep theirs.
impl CertificateSource for SnapshotHolder {
    fn select(&self, server_name: &str) -> Option<Arc<CertPair>> {
        let snapshot = self.current.load();
        if snapshot.certificates.is_empty() {
            return None;
        }
        snapshot.certificates.select(server_name).cloned()
    }
}

impl Default for SnapshotHolder {
    fn default() -> Self {
        SnapshotHolder::new()
    }
}
