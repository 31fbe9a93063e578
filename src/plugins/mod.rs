//! The `Plugin` trait, the registry of bundled plugins and the per-route chains built from configured
//! plugin instances. Chains are resolved when a snapshot is built (Kong's scope precedence); a request
//! only walks its route's chain. The phases, in order, are documented in `docs/plugins.md`.

pub mod acl;
pub mod chain;
pub mod key_auth;
pub mod rate_limiting;
pub mod request;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::identity::{Authenticated, Consumer, ConsumerIndex, Directory};
use crate::model::schema::{Obj, Schema};

pub use chain::{PluginChain, PluginInstanceRow};

/// What the access phase decided.
#[derive(Debug)]
pub enum Flow {
    Continue,
    /// Stop here and answer the client.
    Respond(Reply),
}

/// A response produced by the gateway itself (`{"message": …}` bodies).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    pub fn message(status: StatusCode, message: &str) -> Reply {
        Reply { status, body: message_body(message), headers: Vec::new() }
    }
}

/// `{"message":"…"}` as bytes; used for bodies precomputed at build time.
pub fn message_body(message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "message": message }).to_string())
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
        }
    }
}

/// The future of an access phase that waits on I/O.
pub type AccessFuture<'a> = Pin<Box<dyn Future<Output = Flow> + Send + 'a>>;

/// One configured plugin instance, ready to run. Phases default to doing nothing.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    /// Runs before the request goes upstream; may answer instead.
    fn access(&self, ctx: &mut AccessCtx<'_>) -> Flow {
        let _ = ctx;
        Flow::Continue
    }

    /// Runs on the upstream response head before it goes downstream.
    fn header_filter(&self, response: &mut http::response::Parts) {
        let _ = response;
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
    /// An environment with node-local counters only (no database-backed `cluster` policy).
    pub fn new(consumers: &'a ConsumerIndex) -> BuildEnv<'a> {
        BuildEnv::with_counters(consumers, rate_limiting::Counters::local_only())
    }

    pub fn with_counters(consumers: &'a ConsumerIndex, counters: &'a rate_limiting::Counters) -> BuildEnv<'a> {
        BuildEnv { consumers, realms: None, counters, instance: None, consumer_group: None }
    }
}

/// Builds a plugin instance from its validated configuration.
pub type BuildFn = fn(&Obj, &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, String>;

/// A bundled plugin: its name, priority, configuration schema and constructor.
pub struct PluginDef {
    pub name: &'static str,
    pub priority: i32,
    pub version: &'static str,
    pub config: fn() -> &'static Schema,
    /// Kong's `typedefs.no_consumer`: may not be scoped to a consumer.
    pub no_consumer: bool,
    pub build: BuildFn,
}

impl std::fmt::Debug for PluginDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginDef").field("name", &self.name).field("priority", &self.priority).finish()
    }
}

/// Every plugin this build offers (`plugins = bundled`).
pub static REGISTRY: &[PluginDef] = &[key_auth::DEF, acl::DEF, rate_limiting::DEF, rate_limiting::ADVANCED];

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
