//! The `Plugin` trait, the registry of bundled plugins and the per-route chains built from configured
//! plugin instances. Chains are resolved when a snapshot is built (Kong's scope precedence); a request
//! only walks its route's chain. The phases, in order, are documented in `docs/plugins.md`.

pub mod acl;
pub mod chain;
pub mod correlation_id;
pub mod file_log;
pub mod http_log;
pub mod key_auth;
pub mod log;
pub mod prometheus;
pub mod rate_limiting;
pub mod request;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::identity::{Authenticated, Consumer, ConsumerIndex, Directory};
use serde_json::Value;

use crate::model::schema::{Obj, Schema, Violation, Violations};
use crate::model::{PluginCatalog, PluginInfo};

pub use chain::{PluginChain, PluginInstanceRow};

/// What the access phase decided.
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// Stop here and answer the client.
    Respond(Reply),
}

/// A response produced by the gateway itself: its message, written by the proxy in the client's
/// format (Kong's templates) with the request's id.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub message: Arc<str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    pub fn message(status: StatusCode, message: &str) -> Reply {
        Reply { status, message: Arc::from(message), headers: Vec::new() }
    }
}

/// The consumer headers of a request an auth plugin identified: written into the upstream request
/// as it is encoded, in place of any `X-Consumer-*`, `X-Credential-Identifier` or
/// `X-Anonymous-Consumer` the client sent (no header map work and no allocation per request: the
/// values are the consumer's own, from the snapshot).
#[derive(Debug, Clone)]
pub struct UpstreamIdentity {
    pub consumer: Arc<Consumer>,
    /// The credential used; `None` for the anonymous consumer (`X-Anonymous-Consumer: true`).
    pub credential: Option<uuid::Uuid>,
    /// `X-Consumer-Groups` (the consumer's groups, or what ACL made of them).
    pub groups: Option<HeaderValue>,
}

/// Per-request state the plugins read and write during the access phase.
pub struct AccessCtx<'r> {
    /// Who requests can be, in the configuration that routed this one.
    pub identity: &'r Directory,
    pub parts: &'r mut http::request::Parts,
    /// The buffered request body, present only when the chain asked for it.
    pub body: Option<Bytes>,
    pub client_ip: IpAddr,
    pub consumer: Option<Arc<Consumer>>,
    pub credential_id: Option<uuid::Uuid>,
    pub anonymous: bool,
    /// The matched route's service.
    pub service_id: Option<uuid::Uuid>,
    /// Headers the plugins add to the response, whoever produces it (upstream or gateway).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Set by an auth plugin: the consumer headers the upstream request carries.
    pub upstream_identity: Option<UpstreamIdentity>,
    /// Set by correlation-id: the request's correlation id, for the logs.
    pub correlation_id: Option<Box<str>>,
    /// The connection: the server address and port it arrived at, its serial number in this
    /// process, and how many requests it has carried (correlation-id's `tracker`).
    pub connection: (IpAddr, u16, u64, u64),
}

impl<'r> AccessCtx<'r> {
    pub fn new(
        identity: &'r Directory,
        parts: &'r mut http::request::Parts,
        body: Option<Bytes>,
        client_ip: IpAddr,
        service_id: Option<uuid::Uuid>,
    ) -> AccessCtx<'r> {
        AccessCtx {
            identity,
            parts,
            body,
            client_ip,
            consumer: None,
            credential_id: None,
            anonymous: false,
            service_id,
            response_headers: Vec::new(),
            upstream_identity: None,
            correlation_id: None,
            connection: (IpAddr::from([0, 0, 0, 0]), 0, 0, 0),
        }
    }
}

/// The future of an access phase that waits on I/O.
pub type AccessFuture<'a> = Pin<Box<dyn Future<Output = Flow> + Send + 'a>>;

/// One configured plugin instance, ready to run: built from its typed configuration when a snapshot
/// is built, never per request. Every phase has a default that does nothing. The contract of the
/// phases, in the order the proxy runs them for one request (`docs/request-lifecycle.md` walks the
/// code):
///
/// 1. **`access`** (or **`access_async`** when [`Plugin::is_async`] says the instance waits on I/O)
///    runs after routing and before anything is sent upstream, once per request, in descending
///    plugin priority; for each plugin name the chain picks one instance (the consumer's or its
///    groups' when one applies, see `chain`). The request body is buffered first when some
///    instance of the chain returns [`Plugin::needs_body`]. `access` may rewrite the request head
///    (`ctx.parts`) and the buffered body, attach a consumer (`ctx.consumer`, after which later
///    slots pick their consumer- and group-scoped instances), and queue response headers in
///    `ctx.response_headers` (they are added to whatever answers: the upstream or a reply).
/// 2. **`Flow::Respond(reply)`** from `access` ends the request at once: later plugins' `access`
///    does not run, nothing reaches the upstream, the client gets `reply` with the queued response
///    headers before the reply's own, and no `header_filter` runs.
/// 3. **`header_filter`** runs on the upstream's response head, for the instances whose `access`
///    ran (the same picks), in the same order, after hop-by-hop headers were removed and before the
///    gateway adds its own (`Via`, `Server`, latency headers). It sees the upstream's status and
///    headers, not the body, and never runs for a reply the gateway produced.
/// 4. **`log`** runs once the response was sent (or the client left), for every request of a
///    matched route, whoever answered (a plugin's reply too), on the instances picked for the
///    request's consumer (the default ones when none was identified). It runs on the proxy worker
///    after the last byte was written: it must only count or queue ([`log::Queue`]); serializing
///    and writing happen in the sink's own task.
///
/// A phase must not block the thread (it runs on a proxy worker) nor panic on any input; a panic is
/// caught and answered 500, but it is a bug.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    /// Runs before the request goes upstream; may answer instead.
    fn access(&self, ctx: &mut AccessCtx<'_>) -> Flow {
        let _ = ctx;
        Flow::Continue
    }

    /// Whether this instance has an access phase (the chain passes over those that do not).
    fn accesses(&self) -> bool {
        true
    }

    /// Runs on the upstream response head before it goes downstream.
    fn header_filter(&self, response: &mut http::response::Parts) {
        let _ = response;
    }

    /// Runs after the response was sent (see the phases above).
    fn log(&self, entry: &log::LogEntry<'_>) {
        let _ = entry;
    }

    /// Whether this instance has a log phase: requests of its routes then produce a [`log::LogEntry`].
    fn logs(&self) -> bool {
        false
    }

    /// Whether its log phase serializes entries (file-log, http-log): only then does a request
    /// write its entry's text as it goes ([`log::serializer`]). Counters (prometheus) read the
    /// route, consumer, status, sizes and latencies.
    fn serializes(&self) -> bool {
        false
    }

    /// Whether this instance needs the request body buffered before `access`.
    fn needs_body(&self) -> bool {
        false
    }

    /// Whether `access_async` must be used instead of `access` (the instance waits on I/O).
    fn is_async(&self) -> bool {
        false
    }

    /// The access phase of an instance that waits on I/O (a Redis round trip).
    fn access_async<'a>(&'a self, ctx: &'a mut AccessCtx<'_>) -> AccessFuture<'a> {
        let flow = self.access(ctx);
        Box::pin(std::future::ready(flow))
    }
}

/// Stands in for an instance that could not be built (a stored configuration this build cannot
/// use, a plugin this build does not have): every request it applies to is answered 500, so its
/// routes never run unprotected.
#[derive(Debug)]
pub struct Broken {
    reply: Reply,
}

impl Broken {
    pub fn instance() -> Arc<dyn Plugin> {
        Arc::new(Broken { reply: Reply::message(StatusCode::INTERNAL_SERVER_ERROR, UNEXPECTED) })
    }
}

impl Plugin for Broken {
    fn access(&self, _ctx: &mut AccessCtx<'_>) -> Flow {
        Flow::Respond(self.reply.clone())
    }
}

/// Kong's message for a failure inside the gateway.
pub const UNEXPECTED: &str = "An unexpected error occurred";

/// Finds realm consumers by key (a data plane asks its control plane, and caches the answers).
pub trait RealmResolver: Send + Sync + std::fmt::Debug {
    /// The lookups of one ordered list of realms (taken when a plugin is built; the cache behind it
    /// outlives configuration changes).
    fn scope(&self, realms: &[String]) -> Arc<dyn RealmScope>;
}

/// Key lookups in one ordered list of realms.
pub trait RealmScope: Send + Sync + std::fmt::Debug {
    /// The consumer holding `key` in the first realm that has it (and allows this node's control
    /// plane); `Err` when the answer could not be had (the caller refuses the key).
    fn resolve<'a>(
        &'a self,
        key: &'a str,
        identity: &'a Directory,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Authenticated>, String>> + Send + 'a>>;
}

/// What a plugin may look at while it is being built from its configuration.
#[derive(Clone, Copy)]
pub struct BuildEnv<'a> {
    pub consumers: &'a ConsumerIndex,
    /// Resolves realm keys (data planes only).
    pub realms: Option<&'a Arc<dyn RealmResolver>>,
    /// Where rate-limiting counters live (per node, in the database, in Redis).
    pub counters: &'a rate_limiting::Counters,
    /// The instance being built, and the consumer group it is scoped to.
    pub instance: Option<uuid::Uuid>,
    pub consumer_group: Option<uuid::Uuid>,
}

impl<'a> BuildEnv<'a> {
    /// Whether building may start what the instance needs (a log sink's task): not for the
    /// compile that only checks a write.
    pub fn live(&self) -> bool {
        self.counters.is_live()
    }

    /// An environment with node-local counters only (no database-backed `cluster` policy).
    pub fn new(consumers: &'a ConsumerIndex) -> BuildEnv<'a> {
        BuildEnv::with_counters(consumers, rate_limiting::Counters::local_only())
    }

    pub fn with_counters(consumers: &'a ConsumerIndex, counters: &'a rate_limiting::Counters) -> BuildEnv<'a> {
        BuildEnv { consumers, realms: None, counters, instance: None, consumer_group: None }
    }
}

/// Builds a plugin instance from its validated configuration: deserializes it once into the
/// plugin's typed config (see [`typed`]) and precomputes what requests need. Failures name the
/// config field at fault (paths relative to `config`). Building has no effects of its own: what
/// it starts or connects to comes from `env`.
pub type BuildFn = fn(&Obj, &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, Violations>;

/// A bundled plugin: its name, priority, configuration schema and constructor.
pub struct PluginDef {
    pub name: &'static str,
    pub priority: i32,
    pub version: &'static str,
    pub config: fn() -> &'static Schema,
    /// Kong's `typedefs.no_consumer`: may not be scoped to a consumer.
    pub no_consumer: bool,
    /// Kong's `shorthand_fields`: deprecated config fields rewritten before validation.
    pub shorthands: Option<fn(&mut Obj)>,
    pub build: BuildFn,
}

/// A validated configuration as a plugin's typed config. Validation filled every default, so a
/// failure here means the schema and the type disagree: reported, never panicked on.
pub fn typed<T: serde::de::DeserializeOwned>(config: &Obj) -> Result<T, Violations> {
    serde_json::from_value(Value::Object(config.clone()))
        .map_err(|e| Violations(vec![Violation::entity(format!("invalid configuration: {e}"))]))
}

/// A bounded number from a config as whole units of `T`, or the violation naming it.
pub fn whole<T: TryFrom<i64>>(field: &str, value: f64) -> Result<T, Violations> {
    let fits = value.is_finite() && value.fract() == 0.0 && value.abs() < 9.0e15;
    fits.then(|| T::try_from(value as i64).ok())
        .flatten()
        .ok_or_else(|| Violations::single(field, format!("value {value} is out of range")))
}

impl std::fmt::Debug for PluginDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginDef").field("name", &self.name).field("priority", &self.priority).finish()
    }
}

/// Every plugin this build offers (`plugins = bundled`).
pub static REGISTRY: &[PluginDef] = &[
    key_auth::DEF,
    acl::DEF,
    rate_limiting::DEF,
    rate_limiting::ADVANCED,
    correlation_id::DEF,
    file_log::DEF,
    http_log::DEF,
    prometheus::DEF,
];

/// Old names still accepted on write (Kong 0.1–0.4 called key-auth `keyauth`).
pub fn canonical_name(name: &str) -> &str {
    match name {
        "keyauth" => "key-auth",
        other => other,
    }
}

pub fn find(name: &str) -> Option<&'static PluginDef> {
    let name = canonical_name(name);
    REGISTRY.iter().find(|d| d.name == name)
}

/// The registry as entity validation sees it.
#[derive(Debug, Clone, Copy)]
pub struct Catalog;

impl PluginCatalog for Catalog {
    fn plugin(&self, name: &str) -> Option<PluginInfo> {
        find(name).map(|d| PluginInfo {
            name: d.name,
            config: (d.config)(),
            no_consumer: d.no_consumer,
            shorthands: d.shorthands,
        })
    }
}
