//! The node's gauges on `GET /metrics`, beside the prometheus plugin's request metrics: Kong's
//! always-on families (`kong_node_info`, `kong_nginx_*`, `kong_datastore_reachable`, the hybrid
//! ones of a data plane and of a control plane, `kong_upstream_target_health` when asked) and
//! Tollgate's own (configuration version and age, cluster links, rate-limit decisions, realm
//! lookups). Each is read at scrape time from what the node already keeps; nothing here is on a
//! request's path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::cluster::data_plane::DataPlane;
use crate::cluster::hub::Hub;
use crate::plugins::prometheus::exposition::{Gauge, Kind};
use crate::plugins::prometheus::{add_gauges, upstream_health};
use crate::proxy::stats::Stats;
use crate::snapshot::SnapshotHolder;
use crate::store::Store;

/// What the node's gauges are read from.
pub struct NodeGauges {
    pub node_id: String,
    pub stats: Option<&'static Stats>,
    pub holder: Arc<SnapshotHolder>,
    /// The store's last answer to a ping (none on a data plane).
    pub reachable: Option<Arc<AtomicBool>>,
    pub data_plane: Option<Arc<DataPlane>>,
    pub hub: Option<Arc<Hub>>,
    /// A data plane's cluster certificate: its `notAfter`, in seconds since the epoch.
    pub cert_expiry: Option<i64>,
}

/// Registers the node's gauges with the scrape.
pub fn register(node: NodeGauges) {
    add_gauges(Box::new(move |out| node.gauges(out)));
}

/// Pings `store` every few seconds, so a scrape reads reachability without waiting on it.
pub fn watch_store(store: Store) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(true));
    let f = flag.clone();
    tokio::spawn(async move {
        loop {
            let up = tokio::time::timeout(Duration::from_secs(2), store.reachable()).await.unwrap_or(false);
            f.store(up, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    flag
}

/// A certificate's `notAfter` (seconds since the epoch), from its PEM.
pub fn cert_expiry(pem: &[u8]) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp())
}

impl NodeGauges {
    fn gauges(&self, out: &mut Vec<Gauge>) {
        let node = || ("node_id", self.node_id.clone());
        out.push(
            Gauge::new("kong_node_info", Some("Kong Node metadata information"), Kind::Gauge)
                .with(vec![node(), ("version", crate::VERSION.to_string())], 1.0),
        );
        if let Some(stats) = self.stats {
            let t = stats.totals();
            let http = || ("subsystem", "http".to_string());
            let mut connections =
                Gauge::new("kong_nginx_connections_total", Some("Number of connections by subsystem"), Kind::Gauge);
            for (state, v) in [
                ("accepted", t.accepted),
                ("handled", t.accepted),
                ("active", t.active),
                ("reading", t.reading),
                ("writing", t.writing),
                ("waiting", t.waiting),
                ("total", t.requests),
            ] {
                connections = connections.with(vec![node(), http(), ("state", state.to_string())], v as f64);
            }
            out.push(connections);
            out.push(
                Gauge::new("kong_nginx_requests_total", Some("Number of requests total"), Kind::Gauge)
                    .with(vec![node(), http()], t.requests as f64),
            );
        }
        if self.stats.is_some() {
            use crate::proxy::upstream::{POOL_DROPPED, POOL_EVENTS, POOL_OPENED, POOL_PARKED, POOL_REUSED};
            let total = |i| POOL_EVENTS.total(i);
            out.push(
                Gauge::new(
                    "tollgate_upstream_connections_total",
                    Some("Upstream connections opened, and requests sent on a pooled keep-alive connection"),
                    Kind::Counter,
                )
                .with(vec![("event", "opened".into())], total(POOL_OPENED) as f64)
                .with(vec![("event", "reused".into())], total(POOL_REUSED) as f64),
            );
            // Parked minus taken back or dropped: what the pools hold now (about: a worker that
            // stopped took its idle connections along).
            let idle = total(POOL_PARKED).saturating_sub(total(POOL_REUSED) + total(POOL_DROPPED));
            out.push(Gauge::one(
                "tollgate_upstream_idle_connections",
                Some("Idle keep-alive connections to upstreams, over every worker"),
                Kind::Gauge,
                idle as f64,
            ));
        }
        let reachable = self.reachable.as_ref().is_none_or(|r| r.load(Ordering::Relaxed));
        out.push(Gauge::one(
            "kong_datastore_reachable",
            Some("Datastore reachable from Kong, 0 is unreachable"),
            Kind::Gauge,
            f64::from(u8::from(reachable)),
        ));
        let snapshot = self.holder.load_full();
        out.push(Gauge::one(
            "tollgate_configuration_version",
            Some("Version of the configuration being served"),
            Kind::Gauge,
            snapshot.version as f64,
        ));
        out.push(Gauge::one(
            "tollgate_configuration_age_seconds",
            Some("Seconds since the configuration being served was built"),
            Kind::Gauge,
            SystemTime::now().duration_since(snapshot.built).map_or(0.0, |d| d.as_secs_f64()),
        ));
        if let Some(dp) = &self.data_plane {
            let status = dp.status();
            out.push(Gauge::one(
                "kong_control_plane_connected",
                Some("Kong connected to control plane, 0 is unconnected"),
                Kind::Gauge,
                f64::from(u8::from(status.connected)),
            ));
            use crate::cluster::data_plane::{LOOKUP_ASKED, LOOKUP_FAILED, LOOKUP_HIT, LOOKUP_MISS, REALM_LOOKUPS};
            let mut lookups = Gauge::new(
                "tollgate_realm_lookups_total",
                Some(
                    "Realm key lookups: answered from the cache (hit: a consumer, miss: a known unknown key), asked of the control plane, failed",
                ),
                Kind::Counter,
            );
            for (result, i) in
                [("hit", LOOKUP_HIT), ("miss", LOOKUP_MISS), ("asked", LOOKUP_ASKED), ("failed", LOOKUP_FAILED)]
            {
                lookups = lookups.with(vec![("result", result.to_string())], REALM_LOOKUPS.total(i) as f64);
            }
            out.push(lookups);
            if let Some(expiry) = self.cert_expiry {
                out.push(Gauge::one(
                    "kong_data_plane_cluster_cert_expiry_timestamp",
                    Some("Unix timestamp of Data Plane's cluster_cert expiry time"),
                    Kind::Gauge,
                    expiry as f64,
                ));
            }
        }
        if let Some(hub) = &self.hub {
            self.hub_gauges(hub, out);
        }
        // A control plane balances nothing (Kong leaves the family out there too).
        if upstream_health() && self.hub.is_none() {
            self.target_health(&snapshot, out);
        }
    }

    fn hub_gauges(&self, hub: &Hub, out: &mut Vec<Gauge>) {
        let mut last_seen =
            Gauge::new("kong_data_plane_last_seen", Some("Data plane last seen timestamp"), Kind::Gauge);
        let mut hash =
            Gauge::new("kong_data_plane_config_hash", Some("Config hash numeric value of the data plane"), Kind::Gauge);
        let mut compatible = Gauge::new(
            "kong_data_plane_version_compatible",
            Some("Version compatible status of the data plane, 0 is incompatible"),
            Kind::Gauge,
        );
        let mut link = Gauge::new(
            "tollgate_data_plane_connected",
            Some("Whether a data plane's cluster link is up, per control plane, 0 is down"),
            Kind::Gauge,
        );
        for n in hub.all_nodes() {
            let labels = || vec![("node_id", n.id.clone()), ("hostname", n.hostname.clone()), ("ip", String::new())];
            last_seen = last_seen.with(labels(), n.last_ping as f64);
            // Kong: `tonumber("0x" .. hash)`, a float.
            let h = n.config_hash.as_deref().and_then(|h| u128::from_str_radix(h, 16).ok()).unwrap_or(0);
            hash = hash.with(labels(), h as f64);
            let mut with_version = labels();
            with_version.push(("kong_version", n.version.clone()));
            compatible = compatible.with(with_version, 1.0);
            link = link.with(
                vec![("node_id", n.id.clone()), ("control_plane", n.control_plane_id.clone())],
                f64::from(u8::from(n.connected)),
            );
        }
        out.extend([last_seen, hash, compatible, link]);
    }

    fn target_health(&self, snapshot: &crate::snapshot::Snapshot, out: &mut Vec<Gauge>) {
        const STATES: [&str; 4] = ["healthchecks_off", "healthy", "unhealthy", "dns_error"];
        let mut g = Gauge::new(
            "kong_upstream_target_health",
            Some(
                "Health status of targets of upstream. States = healthchecks_off|healthy|unhealthy|dns_error, value is 1 when state is populated.",
            ),
            Kind::Gauge,
        );
        for live in snapshot.balancers.values() {
            let b = live.load();
            let checks_on = b.upstream.healthchecks.enabled();
            for t in b.targets.iter() {
                let target = format!("{}:{}", t.host, t.port);
                let peers = b.peers.get(t.peers.clone()).unwrap_or_default();
                let mut addresses: Vec<(String, &str)> = peers
                    .iter()
                    .map(|p| {
                        let state = if !checks_on || p.weight == 0 {
                            "healthchecks_off"
                        } else if p.health.is_healthy() {
                            "healthy"
                        } else {
                            "unhealthy"
                        };
                        (p.address.to_string(), state)
                    })
                    .collect();
                if addresses.is_empty() {
                    addresses.push((String::new(), "dns_error"));
                }
                for (address, current) in addresses {
                    for state in STATES {
                        let labels = vec![
                            ("upstream", b.upstream.name.clone()),
                            ("target", target.clone()),
                            ("address", address.clone()),
                            ("state", state.to_string()),
                            ("subsystem", "http".to_string()),
                        ];
                        g = g.with(labels, f64::from(u8::from(state == current)));
                    }
                }
            }
        }
        out.push(g);
    }
}
