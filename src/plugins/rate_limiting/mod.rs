//! rate-limiting and rate-limiting-advanced: how many requests an identifier (consumer, credential,
//! IP, service, header, path, consumer group) may make per window, counted per node (`local`), in
//! Redis (`redis`) or in the database (`cluster`), with Kong's headers and 429. The two plugins share
//! one [`Limiter`]; they differ in their configuration (periods vs `limit`/`window_size` arrays,
//! fixed vs sliding windows) and header names.

mod advanced;
mod local;
mod redis;
mod schema;
mod synced;
mod windows;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher as _};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderName, HeaderValue, StatusCode};
use uuid::Uuid;

use super::{AccessCtx, AccessFuture, BuildEnv, Flow, Plugin, PluginDef, Reply, typed};
use crate::headers as h;
use crate::model::schema::{Obj, Violations};
pub use advanced::ADVANCED;
pub use local::LocalCounters;
use redis::{RedisTarget, RedisTotals};
pub use schema::LimitBy;
use schema::{MAX_SYNC_RATE, Policy, RateLimitingConfig, SharedConfig};
use synced::SyncedCounters;
pub use synced::{Increment, RemoteStore};
use windows::{Decision, MAX_WINDOWS, Period, WindowNow, WindowSpec};

pub const DEF: PluginDef = PluginDef {
    name: "rate-limiting",
    priority: 910,
    version: env!("CARGO_PKG_VERSION"),
    config: schema::rate_limiting,
    no_consumer: false,
    shorthands: Some(schema::redis_shorthands),
    build: build_rate_limiting,
};

/// Where counters live, shared by every snapshot so that rebuilding the configuration keeps them.
/// The database behind the `cluster` policy is handed in (the store implements [`RemoteStore`]),
/// so rate limiting knows nothing of storage.
#[derive(Debug)]
pub struct Counters {
    local: Arc<LocalCounters>,
    /// The database, for `cluster` (none on a data plane).
    database: Option<Arc<dyn RemoteStore>>,
    /// Batched counters by (remote store, interval).
    synced: Mutex<HashMap<(String, Duration), Arc<SyncedCounters>>>,
    /// Whether batched counters start their flush task. Off for the compile that checks a write
    /// before it is stored: checking must have no effects.
    live: bool,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new(None)
    }
}

impl Counters {
    pub fn new(database: Option<Arc<dyn RemoteStore>>) -> Counters {
        Counters { local: Arc::default(), database, synced: Mutex::default(), live: true }
    }

    /// Counters for compiling a configuration only to check it: nothing is started or connected.
    pub fn dry_run() -> &'static Counters {
        static DRY: OnceLock<Counters> = OnceLock::new();
        DRY.get_or_init(|| Counters { live: false, ..Counters::new(None) })
    }

    /// Whether tasks may be started (not for a compile that only checks a write).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Node-local counters only (plugin unit tests).
    pub fn local_only() -> &'static Counters {
        static LOCAL: OnceLock<Counters> = OnceLock::new();
        LOCAL.get_or_init(|| Counters::new(None))
    }

    /// The batched counters flushing to `remote` every `every` (one flush task per pair).
    fn synced(
        &self,
        id: String,
        every: Duration,
        remote: impl FnOnce() -> Arc<dyn RemoteStore>,
    ) -> Result<Arc<SyncedCounters>, String> {
        if !self.live {
            return Ok(SyncedCounters::detached());
        }
        let mut synced = self.synced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = synced.get(&(id.clone(), every)) {
            return Ok(s.clone());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("no runtime to sync counters on".into());
        }
        let s = SyncedCounters::start(remote(), every);
        synced.insert((id, every), s.clone());
        Ok(s)
    }
}

/// The request's identifier, borrowed from the request.
#[derive(Debug, Clone, Copy)]
enum Ident<'a> {
    Id(Uuid),
    Ip(IpAddr),
    Text(&'a [u8]),
}

impl Ident<'_> {
    fn feed(&self, hasher: &mut impl std::hash::Hasher) {
        match self {
            Ident::Id(u) => {
                hasher.write_u8(1);
                hasher.write(u.as_bytes());
            }
            Ident::Ip(IpAddr::V4(ip)) => {
                hasher.write_u8(2);
                hasher.write(&ip.octets());
            }
            Ident::Ip(IpAddr::V6(ip)) => {
                hasher.write_u8(3);
                hasher.write(&ip.octets());
            }
            Ident::Text(t) => {
                hasher.write_u8(4);
                hasher.write(t);
            }
        }
    }

    fn render(&self) -> String {
        match self {
            Ident::Id(u) => u.to_string(),
            Ident::Ip(ip) => ip.to_string(),
            Ident::Text(t) => String::from_utf8_lossy(t).into_owned(),
        }
    }
}

/// Where one instance counts.
#[derive(Debug)]
enum CounterStore {
    Local(Arc<LocalCounters>),
    /// Redis, one round trip per request.
    Redis(RedisTarget),
    /// Batched to Redis or the database.
    Synced(Arc<SyncedCounters>),
}

/// The limiting logic shared by both plugins.
#[derive(Debug)]
pub struct Limiter {
    advanced: bool,
    /// Counters of instances with the same namespace are shared.
    namespace: String,
    namespace_hash: u64,
    windows: Vec<WindowSpec>,
    /// Each window's limit as a header value.
    limit_values: Vec<HeaderValue>,
    limit_by: LimitBy,
    header_name: Option<HeaderName>,
    path: Option<String>,
    /// The consumer group an instance is scoped to (its members are counted together).
    scoped_group: Option<Uuid>,
    store: CounterStore,
    fault_tolerant: bool,
    hide_client_headers: bool,
    /// Whether rejected requests count (rate-limiting-advanced's sliding windows, unless
    /// `disable_penalty`).
    penalty: bool,
    reject_status: StatusCode,
    reject_message: Arc<str>,
    unexpected: Reply,
}

/// What both plugins hand the limiter once their own fields are read.
struct Common {
    /// rate-limiting-advanced (for the decision counts).
    advanced: bool,
    shared: SharedConfig,
    namespace: String,
    windows: Vec<WindowSpec>,
    limit_by: LimitBy,
    policy: Policy,
    sync_rate: Option<f64>,
    penalty: bool,
}

/// A `sync_rate` in seconds as the interval of a batched store (at least 20 ms, as Kong allows).
fn sync_interval(rate: f64) -> Result<Duration, Violations> {
    Duration::try_from_secs_f64(rate.max(0.02))
        .map_err(|_| Violations::single("sync_rate", format!("must be -1, 0, or between 0.02 and {MAX_SYNC_RATE}")))
}

impl Limiter {
    fn build(c: Common, env: &BuildEnv<'_>) -> Result<Limiter, Violations> {
        let shared = c.shared;
        let redis_target = || {
            RedisTarget::from_config(&shared.redis)
                .ok_or_else(|| Violations::single("redis", "the redis policy needs redis.host"))
        };
        let unavailable = |e: String| Violations::single("policy", e);
        let store = match (c.policy, c.sync_rate) {
            (Policy::Redis, Some(rate)) if rate > 0.0 => {
                let target = redis_target()?;
                let every = sync_interval(rate)?;
                CounterStore::Synced(
                    env.counters
                        .synced(format!("redis:{target:?}"), every, || Arc::new(RedisTotals::new(target.clone())))
                        .map_err(unavailable)?,
                )
            }
            (Policy::Redis, _) => CounterStore::Redis(redis_target()?),
            (Policy::Cluster, rate) => match env.counters.database.clone() {
                Some(store) => {
                    // Batched by `sync_rate`; without one, as often as Kong allows (every 20 ms).
                    let every = sync_interval(rate.filter(|r| *r > 0.0).unwrap_or(0.02))?;
                    CounterStore::Synced(env.counters.synced("database".into(), every, || store).map_err(unavailable)?)
                }
                // A data plane has no database: it still enforces the limit, per node.
                None => {
                    if env.counters.live {
                        tracing::warn!("the cluster policy needs a database; this node counts its own requests");
                    }
                    CounterStore::Local(env.counters.local.clone())
                }
            },
            (Policy::Local, _) => CounterStore::Local(env.counters.local.clone()),
        };
        let reject_status = super::whole::<u16>("error_code", shared.error_code)
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| Violations::single("error_code", "value should be between 100 and 599"))?;
        let header_name = match &shared.header_name {
            Some(h) => Some(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| Violations::single("header_name", format!("bad header name '{h}'")))?,
            ),
            None => None,
        };
        let mut hasher = foldhash::fast::FixedState::with_seed(0x746f_6c6c_6761_7465).build_hasher();
        hasher.write(c.namespace.as_bytes());
        Ok(Limiter {
            advanced: c.advanced,
            namespace_hash: hasher.finish(),
            namespace: c.namespace,
            limit_values: c.windows.iter().map(|w| number_header(w.limit)).collect(),
            windows: c.windows,
            limit_by: c.limit_by,
            header_name,
            path: shared.path,
            scoped_group: env.consumer_group,
            store,
            fault_tolerant: shared.fault_tolerant,
            hide_client_headers: shared.hide_client_headers,
            penalty: c.penalty,
            reject_status,
            reject_message: Arc::from(shared.error_message.as_str()),
            unexpected: Reply::message(StatusCode::INTERNAL_SERVER_ERROR, super::UNEXPECTED),
        })
    }

    /// Kong's identifier for this request; anything missing falls back to the client IP.
    fn identify<'a>(&'a self, ctx: &'a AccessCtx<'_>) -> Ident<'a> {
        let ip = Ident::Ip(ctx.client_ip);
        match self.limit_by {
            LimitBy::Consumer => match (&ctx.consumer, ctx.credential_id) {
                (Some(c), _) => Ident::Id(c.id),
                (None, Some(cred)) => Ident::Id(cred),
                _ => ip,
            },
            LimitBy::Credential => ctx.credential_id.map_or(ip, Ident::Id),
            LimitBy::Ip => ip,
            LimitBy::Service => ctx.service_id.map_or(ip, Ident::Id),
            LimitBy::Header => self
                .header_name
                .as_ref()
                .and_then(|n| ctx.parts.headers.get(n))
                .map_or(ip, |v| Ident::Text(v.as_bytes())),
            LimitBy::Path => match &self.path {
                Some(p) if ctx.parts.uri.path() == p => Ident::Text(p.as_bytes()),
                _ => ip,
            },
            LimitBy::ConsumerGroup => {
                let group = self
                    .scoped_group
                    .or_else(|| ctx.consumer.as_ref().and_then(|c| c.group_entries().first().map(|g| g.id)));
                group.map_or(ip, Ident::Id)
            }
        }
    }

    fn windows_at(&self, now_ms: i64) -> ([WindowNow; MAX_WINDOWS], usize) {
        let mut out = [WindowNow { start: 0, size: 1, left: 1, sliding: false, limit: 0.0, prev_weight: 0.0, reset: 1 };
            MAX_WINDOWS];
        let n = self.windows.len().min(MAX_WINDOWS);
        for (slot, spec) in out.iter_mut().zip(&self.windows) {
            *slot = WindowNow::at(spec, now_ms);
        }
        (out, n)
    }

    fn local_key(&self, ident: Ident<'_>) -> u128 {
        let hash = |seed: u64| {
            let mut hasher = foldhash::fast::FixedState::with_seed(seed).build_hasher();
            hasher.write_u64(self.namespace_hash);
            ident.feed(&mut hasher);
            hasher.finish()
        };
        (u128::from(hash(0x9e37_79b9_7f4a_7c15)) << 64) | u128::from(hash(0xc2b2_ae3d_27d4_eb4f))
    }

    /// Counter keys of each window (current, previous) in a shared store.
    fn remote_keys(&self, ident: Ident<'_>, windows: &[WindowNow]) -> Vec<(String, String)> {
        let id = ident.render();
        windows
            .iter()
            .map(|w| {
                let base = format!("tollgate:ratelimit:{}:{id}:{}", self.namespace, w.size);
                (format!("{base}:{}", w.start), format!("{base}:{}", w.start - w.size))
            })
            .collect()
    }

    /// Decides synchronously (local and batched stores).
    fn decide_now(&self, ctx: &mut AccessCtx<'_>) -> Flow {
        let now_ms = crate::clock::now_millis();
        let (windows, n) = self.windows_at(now_ms);
        let windows = &windows[..n];
        let ident = self.identify(ctx);
        let decision = match &self.store {
            CounterStore::Local(local) => local.hit(self.local_key(ident), windows, now_ms / 1000, self.penalty),
            CounterStore::Synced(synced) => {
                let keys = self.remote_keys(ident, windows);
                synced.hit(&keys, windows, now_ms / 1000, self.penalty)
            }
            CounterStore::Redis(_) => return Flow::Continue,
        };
        self.apply(ctx, windows, decision)
    }

    async fn decide_redis(&self, ctx: &mut AccessCtx<'_>) -> Flow {
        let CounterStore::Redis(target) = &self.store else { return self.decide_now(ctx) };
        let now_ms = crate::clock::now_millis();
        let (windows, n) = self.windows_at(now_ms);
        let windows = &windows[..n];
        let keys = self.remote_keys(self.identify(ctx), windows);
        match target.hit(&keys, windows, self.penalty).await {
            Ok(decision) => self.apply(ctx, windows, decision),
            Err(e) => {
                target.log_failure(&e);
                self.count(Outcome::Error);
                if self.fault_tolerant { Flow::Continue } else { Flow::Respond(self.unexpected.clone()) }
            }
        }
    }

    /// Kong's headers and, over the limit, the rejection. The counts are written into one buffer
    /// and handed out as slices of it; the limits are rendered when the plugin is built.
    fn apply(&self, ctx: &mut AccessCtx<'_>, windows: &[WindowNow], d: Decision) -> Flow {
        let mut headers = std::mem::take(&mut ctx.response_headers);
        if !self.hide_client_headers {
            headers.reserve(2 * windows.len() + 4);
            let mut digits = BytesMut::with_capacity(12 * (windows.len() + 3));
            let mut number = |n: i64| {
                let start = digits.len();
                digits.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                (start, digits.len())
            };
            let mut spans: [(usize, usize); MAX_WINDOWS] = [(0, 0); MAX_WINDOWS];
            // The most constrained window: lowest remaining, ties to the longer window.
            let mut tightest: Option<(usize, f64)> = None;
            for (i, w) in windows.iter().enumerate() {
                let used = d.usage[i];
                let exceeded = used + 1.0 > w.limit;
                let remaining = if d.allowed || exceeded { w.limit - used - 1.0 } else { w.limit - used };
                let remaining = remaining.max(0.0).floor();
                spans[i] = number(remaining as i64);
                let tighter = match tightest {
                    None => true,
                    Some((j, r)) => remaining < r || (remaining == r && w.size >= windows[j].size),
                };
                if tighter {
                    tightest = Some((i, remaining));
                }
            }
            let reset = tightest.map(|(i, _)| number(windows[i].reset));
            let digits = digits.freeze();
            let value = |(a, b): (usize, usize)| {
                HeaderValue::from_maybe_shared(digits.slice(a..b)).unwrap_or(HeaderValue::from_static("0"))
            };
            for (i, spec) in self.windows.iter().enumerate().take(windows.len()) {
                headers.push((spec.limit_header.clone(), self.limit_values[i].clone()));
                headers.push((spec.remaining_header.clone(), value(spans[i])));
            }
            if let (Some((i, _)), Some(reset)) = (tightest, reset) {
                headers.push((h::RATELIMIT_LIMIT, self.limit_values[i].clone()));
                headers.push((h::RATELIMIT_REMAINING, value(spans[i])));
                headers.push((h::RATELIMIT_RESET, value(reset)));
                if !d.allowed {
                    headers.push((http::header::RETRY_AFTER, value(reset)));
                }
            }
        }
        if d.allowed {
            self.count(Outcome::Allowed);
            ctx.response_headers = headers;
            return Flow::Continue;
        }
        self.count(Outcome::Limited);
        // With `hide_client_headers` the rejection carries no rate-limit header at all, Retry-After
        // included (Kong sets it among the client headers it hides).
        Flow::Respond(Reply { status: self.reject_status, message: self.reject_message.clone(), headers })
    }

    fn is_async(&self) -> bool {
        matches!(self.store, CounterStore::Redis(_))
    }

    fn count(&self, outcome: Outcome) {
        DECISIONS.add(usize::from(self.advanced) * 3 + outcome as usize, 1);
    }
}

/// What a limiter decided, for `tollgate_rate_limiting_decisions_total`.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Allowed = 0,
    Limited = 1,
    Error = 2,
}

/// Decisions by plugin (rate-limiting, then -advanced) and [`Outcome`].
pub static DECISIONS: super::prometheus::counters::Counters<6> = super::prometheus::counters::Counters::new();

/// A limit or remaining count as a header value (integers without a decimal point).
fn number_header(n: f64) -> HeaderValue {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        HeaderValue::from(n as i64)
    } else {
        HeaderValue::from_str(&n.to_string()).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// A plugin instance: the limiter behind Kong's two plugin names.
#[derive(Debug)]
struct RateLimit(Limiter);

impl Plugin for RateLimit {
    fn access(&self, ctx: &mut AccessCtx<'_>) -> Flow {
        self.0.decide_now(ctx)
    }

    fn is_async(&self) -> bool {
        self.0.is_async()
    }

    fn access_async<'a>(&'a self, ctx: &'a mut AccessCtx<'_>) -> AccessFuture<'a> {
        Box::pin(self.0.decide_redis(ctx))
    }
}

const PERIODS: [(&str, Period, &str, &str); 6] = [
    ("second", Period::Seconds(1), "x-ratelimit-limit-second", "x-ratelimit-remaining-second"),
    ("minute", Period::Seconds(60), "x-ratelimit-limit-minute", "x-ratelimit-remaining-minute"),
    ("hour", Period::Seconds(3600), "x-ratelimit-limit-hour", "x-ratelimit-remaining-hour"),
    ("day", Period::Seconds(86_400), "x-ratelimit-limit-day", "x-ratelimit-remaining-day"),
    ("month", Period::Month, "x-ratelimit-limit-month", "x-ratelimit-remaining-month"),
    ("year", Period::Year, "x-ratelimit-limit-year", "x-ratelimit-remaining-year"),
];

fn build_rate_limiting(config: &Obj, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, Violations> {
    let config: RateLimitingConfig = typed(config)?;
    let limits = [config.second, config.minute, config.hour, config.day, config.month, config.year];
    let windows: Vec<WindowSpec> = PERIODS
        .iter()
        .zip(limits)
        .filter_map(|((_, period, limit_header, remaining_header), limit)| {
            Some(WindowSpec {
                period: *period,
                limit: limit?,
                sliding: false,
                limit_header: HeaderName::from_static(limit_header),
                remaining_header: HeaderName::from_static(remaining_header),
            })
        })
        .collect();
    let namespace = env.instance.map_or_else(|| "rate-limiting".to_string(), |id| id.to_string());
    let common = Common {
        advanced: false,
        shared: config.shared,
        namespace,
        windows,
        limit_by: config.limit_by,
        policy: config.policy,
        sync_rate: Some(config.sync_rate),
        penalty: false,
    };
    Ok(Arc::new(RateLimit(Limiter::build(common, env)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{ConsumerIndex, Directory};

    #[test]
    fn the_cluster_policy_without_a_database_still_limits_per_node() {
        let consumers = ConsumerIndex::default();
        let config = match serde_json::json!({"day": 1, "policy": "cluster", "limit_by": "ip", "sync_rate": 0.5}) {
            serde_json::Value::Object(m) => m,
            _ => Obj::new(),
        };
        let config = crate::model::schema::validate(schema::rate_limiting(), &config).expect("valid");
        let plugin = build_rate_limiting(&config, &BuildEnv::new(&consumers)).expect("a data plane builds it");
        let identity = Directory::default();
        let (mut parts, ()) = http::Request::new(()).into_parts();
        let ip: IpAddr = "10.9.8.7".parse().expect("ip");
        let mut ctx = AccessCtx::new(&identity, &mut parts, None, ip, None);
        assert!(matches!(plugin.access(&mut ctx), Flow::Continue));
        match plugin.access(&mut ctx) {
            Flow::Respond(reply) => assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS),
            Flow::Continue => panic!("the second request of a 1-per-day limit passed"),
        }
    }
}
