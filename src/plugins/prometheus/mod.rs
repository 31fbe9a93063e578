//! prometheus (Kong 3.x, priority 13): counts each request of a matched route in the log phase,
//! in Kong's metric names, labels and buckets (`kong_http_requests_total`, `kong_kong_latency_ms`,
//! `kong_upstream_latency_ms`, `kong_request_latency_ms`, `kong_bandwidth_bytes`), as its flags
//! ask. `GET /metrics` (Admin API, status API) writes them with the node's gauges
//! ([`scrape_into`]). Counting is per worker ([`series`]).

pub mod counters;
pub mod exposition;
pub mod series;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use serde_json::Value;

use super::log::{LogEntry, Source};
use super::{BuildEnv, Plugin, PluginDef, typed};
use crate::model::schema::{Field, Obj, Schema, Type, Violations};

pub const DEF: PluginDef = PluginDef {
    name: "prometheus",
    priority: 13,
    version: env!("CARGO_PKG_VERSION"),
    config: schema,
    no_consumer: true,
    shorthands: None,
    build,
};

const FLAGS: [&str; 7] = [
    "per_consumer",
    "status_code_metrics",
    "latency_metrics",
    "bandwidth_metrics",
    "upstream_health_metrics",
    "ai_metrics",
    "wasm_metrics",
];

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: FLAGS
            .iter()
            .map(|name| Field::new(name, Type::Boolean).required().default(Value::Bool(false)))
            .collect(),
        checks: Vec::new(),
    })
}

#[derive(Debug, Deserialize)]
struct Config {
    per_consumer: bool,
    status_code_metrics: bool,
    latency_metrics: bool,
    bandwidth_metrics: bool,
    upstream_health_metrics: bool,
}

/// Live instances, and those asking for upstream health (Kong: on if any instance asks).
static ENABLED: AtomicUsize = AtomicUsize::new(0);
static HEALTH: AtomicUsize = AtomicUsize::new(0);

/// Whether some live instance exists: without one, a scrape shows the node's gauges only.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed) > 0
}

/// Whether some live instance asks for `kong_upstream_target_health`.
pub fn upstream_health() -> bool {
    HEALTH.load(Ordering::Relaxed) > 0
}

/// Counts a live instance while it exists.
#[derive(Debug)]
struct Live {
    health: bool,
}

impl Live {
    fn new(health: bool) -> Live {
        ENABLED.fetch_add(1, Ordering::Relaxed);
        if health {
            HEALTH.fetch_add(1, Ordering::Relaxed);
        }
        Live { health }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        ENABLED.fetch_sub(1, Ordering::Relaxed);
        if self.health {
            HEALTH.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
struct Prometheus {
    per_consumer: bool,
    status_codes: bool,
    latency: bool,
    bandwidth: bool,
    /// `None` when built only to check a write.
    live: Option<Live>,
}

fn build(config: &Obj, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, Violations> {
    let c: Config = typed(config)?;
    Ok(Arc::new(Prometheus {
        per_consumer: c.per_consumer,
        status_codes: c.status_code_metrics,
        latency: c.latency_metrics,
        bandwidth: c.bandwidth_metrics,
        live: env.live().then(|| Live::new(c.upstream_health_metrics)),
    }))
}

impl Plugin for Prometheus {
    fn accesses(&self) -> bool {
        false
    }

    fn logs(&self) -> bool {
        self.live.is_some() && (self.status_codes || self.latency || self.bandwidth)
    }

    fn log(&self, e: &LogEntry<'_>) {
        let Some(subject) = e.subject else { return };
        let source = if e.source == Source::Service { "service" } else { "kong" };
        let upstream = u64::try_from(e.latencies.proxy).ok();
        series::record(
            subject,
            &series::Observation {
                consumer: e.consumer.filter(|_| self.per_consumer).map(|c| (c.id, c.username.as_deref())),
                status: self.status_codes.then_some((e.status, source)),
                latencies: self.latency.then_some((e.latencies.kong, upstream, e.latencies.request)),
                bandwidth: self.bandwidth.then_some((e.request_size, e.response_size)),
            },
        );
    }
}

/// Adds the node's gauges to a scrape (registered by the node at start).
pub type GaugeSource = Box<dyn Fn(&mut Vec<exposition::Gauge>) + Send + Sync>;

fn sources() -> &'static std::sync::RwLock<Vec<GaugeSource>> {
    static SOURCES: OnceLock<std::sync::RwLock<Vec<GaugeSource>>> = OnceLock::new();
    SOURCES.get_or_init(Default::default)
}

/// Registers what a scrape adds besides the request metrics.
pub fn add_gauges(source: GaugeSource) {
    sources().write().unwrap_or_else(std::sync::PoisonError::into_inner).push(source);
}

/// `GET /metrics` as one text (see [`scrape_into`]).
pub fn scrape() -> String {
    let mut text = Vec::new();
    scrape_into(|chunk| {
        text.extend_from_slice(&chunk);
        true
    });
    String::from_utf8(text).unwrap_or_default()
}

/// `GET /metrics`: the request metrics (when some instance is enabled) and every registered gauge,
/// with Tollgate's own losses, handed to `sink` in chunks as they are written (it answers false
/// when its reader left). Runs off the proxy's workers and takes no lock they take.
pub fn scrape_into(sink: impl FnMut(bytes::Bytes) -> bool) {
    let mut gauges = Vec::new();
    for source in sources().read().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
        source(&mut gauges);
    }
    let reg = series::registry();
    let dropped = super::log::dropped();
    use exposition::{Gauge, Kind};
    gauges.push(Gauge::one(
        "tollgate_prometheus_series",
        Some("Request series kept by the prometheus plugin (each worker's counted apart)"),
        Kind::Gauge,
        reg.series_count() as f64,
    ));
    gauges.push(Gauge::one(
        "tollgate_prometheus_series_dropped_total",
        Some("Requests not counted because the series cap (prometheus_max_series) was reached"),
        Kind::Counter,
        reg.dropped.load(Ordering::Relaxed) as f64,
    ));
    gauges.push(
        Gauge::new(
            "tollgate_log_entries_dropped_total",
            Some("Log entries a sink could not take (queue full, or failed for good)"),
            Kind::Counter,
        )
        .with(vec![("sink", "file-log".into())], dropped.file_log.load(Ordering::Relaxed) as f64)
        .with(vec![("sink", "http-log".into())], dropped.http_log.load(Ordering::Relaxed) as f64)
        .with(vec![("sink", "proxy_access_log".into())], dropped.access_log.load(Ordering::Relaxed) as f64),
    );
    let mut decisions = Gauge::new(
        "tollgate_rate_limiting_decisions_total",
        Some("Rate-limiting decisions by plugin and outcome (allowed, limited, error: the counter store failed)"),
        Kind::Counter,
    );
    for (i, plugin) in ["rate-limiting", "rate-limiting-advanced"].into_iter().enumerate() {
        for (j, outcome) in ["allowed", "limited", "error"].into_iter().enumerate() {
            let n = super::rate_limiting::DECISIONS.total(i * 3 + j);
            decisions = decisions.with(vec![("plugin", plugin.into()), ("outcome", outcome.into())], n as f64);
        }
    }
    gauges.push(decisions);
    reg.with_series(|series, plan| exposition::render(series, plan, enabled(), &gauges, sink));
}
