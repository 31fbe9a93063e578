//! Compiling one entity the way the proxy uses it: a stored row becomes a service target, a
//! compiled route, a built plugin instance, a consumer, a credential. The same functions judge an
//! Admin API write before it is stored ([`prepare`]) and every row a node loads or a data plane
//! receives (`state`), so whatever was accepted on write cannot fail to build later. Pure: no I/O,
//! no effects (plugins are built against dry counters here).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::ServiceTarget;
use crate::identity::{Authenticated, Consumer, ConsumerIndex, Directory, KeyCredential};
use crate::model::schema::{Obj, PathSeg, Violation, Violations, validate_nested};
use crate::model::{self, EntityError, Kind, Mode};
use crate::plugins::log::ServiceSubject;
use crate::plugins::rate_limiting::Counters;
use crate::plugins::{BuildEnv, Catalog, Plugin, PluginInstanceRow, find};
use crate::router::{RouteMatcher, RouteSpec};
use crate::tls::{self, CertPair, KeyType};

/// Kong's bounds on service timeouts, in milliseconds.
const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1..=2_147_483_646;
/// Kong's bound on `retries`.
const MAX_RETRIES: u32 = 32_767;

/// A foreign key as stored: `{"id": …}`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Ref {
    pub id: Uuid,
}

#[derive(Debug, Deserialize)]
pub struct ConsumerRow {
    pub id: Uuid,
    pub username: Option<String>,
    pub custom_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct KeyAuthRow {
    pub id: Uuid,
    pub consumer: Ref,
    pub key: String,
}

#[derive(Debug, Deserialize)]
pub struct GroupRow {
    pub id: Uuid,
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub struct MembershipRow {
    pub id: Uuid,
    pub consumer_group: Ref,
    pub consumer: Ref,
}

#[derive(Debug, Deserialize)]
pub struct AclRow {
    pub id: Uuid,
    pub consumer: Ref,
    pub group: String,
}

#[derive(Debug, Deserialize)]
pub struct ServiceRow {
    pub id: Uuid,
    pub name: Option<String>,
    pub protocol: String,
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub retries: u32,
    pub connect_timeout: u64,
    pub write_timeout: u64,
    pub read_timeout: u64,
    pub enabled: bool,
    pub tls_verify: Option<bool>,
    pub tls_verify_depth: Option<u8>,
    pub client_certificate: Option<Ref>,
    pub ca_certificates: Option<Vec<Uuid>>,
}

impl ServiceRow {
    /// Whether the service's TLS depends on certificate or CA entities (recompiled when they change).
    pub fn uses_tls_entities(&self) -> bool {
        self.client_certificate.is_some() || self.ca_certificates.as_ref().is_some_and(|c| !c.is_empty())
    }
}

/// The certificates and CAs a service's upstream TLS may refer to.
#[derive(Debug, Clone, Copy)]
pub struct TlsEntities<'a> {
    pub certificates: Option<&'a std::collections::HashMap<Uuid, Arc<CertPair>>>,
    pub ca_certificates:
        Option<&'a std::collections::HashMap<Uuid, tokio_rustls::rustls::pki_types::CertificateDer<'static>>>,
}

impl TlsEntities<'_> {
    /// None loaded (an Admin API write is checked without them).
    pub const NONE: TlsEntities<'static> = TlsEntities { certificates: None, ca_certificates: None };
}

#[derive(Debug, Deserialize)]
pub struct RouteRow {
    pub id: Uuid,
    pub name: Option<String>,
    pub protocols: Vec<String>,
    pub methods: Option<Vec<String>>,
    pub hosts: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub headers: Option<BTreeMap<String, Vec<String>>>,
    pub snis: Option<Vec<String>>,
    pub strip_path: bool,
    pub preserve_host: bool,
    pub regex_priority: i64,
    pub https_redirect_status_code: u16,
    /// Rows stored before the field existed read as Kong's default.
    #[serde(default = "buffered")]
    pub request_buffering: bool,
    pub service: Option<Ref>,
}

/// Kong's default for `request_buffering`.
fn buffered() -> bool {
    true
}

#[derive(Debug, Deserialize)]
pub struct PluginRow {
    pub id: Uuid,
    pub name: String,
    pub route: Option<Ref>,
    pub service: Option<Ref>,
    pub consumer: Option<Ref>,
    pub consumer_group: Option<Ref>,
    pub config: Option<Obj>,
    pub protocols: Option<Vec<String>>,
    pub enabled: bool,
}

/// Where a plugin applies, read even from a row that does not compile, so that a broken instance
/// still guards its routes. A row whose scope cannot be read at all is taken as global.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct PluginScope {
    pub route: Option<Ref>,
    pub service: Option<Ref>,
    pub consumer: Option<Ref>,
    pub consumer_group: Option<Ref>,
}

impl PluginScope {
    /// The stand-in for an instance with this scope that cannot be built (see `plugins::Broken`).
    pub fn broken_instance(&self, id: Uuid, name: &str) -> PluginInstanceRow {
        PluginInstanceRow {
            id,
            name: name.to_string(),
            route: self.route.map(|r| r.id),
            service: self.service.map(|r| r.id),
            consumer: self.consumer.map(|r| r.id),
            consumer_group: self.consumer_group.map(|r| r.id),
            enabled: true,
            http: true,
            broken: true,
            config: Obj::new(),
        }
    }
}

/// A route compiled for the proxy, kept between builds: its matcher and how it rewrites requests.
#[derive(Debug)]
pub struct CompiledRoute {
    pub id: Uuid,
    /// Prometheus' `route` label: the name, else the id.
    pub label: Box<str>,
    /// The route as stored, for the log serializer (set by the caller holding the row's text).
    pub entity: Arc<RawValue>,
    /// Matched, but answered 500: its stored version does not compile beyond its matcher.
    pub broken: bool,
    pub service: Option<Uuid>,
    pub matcher: Arc<RouteMatcher>,
    pub strip_path: bool,
    pub preserve_host: bool,
    /// The route accepts plain-HTTP requests.
    pub http_allowed: bool,
    pub https_redirect_status: StatusCode,
    /// Read the request body before anything goes upstream (Kong's `request_buffering`).
    pub request_buffering: bool,
    /// Its protocols are stream ones only (tcp, tls, udp, tls_passthrough): no HTTP request is
    /// routed to it, whatever it matches on (Tollgate proxies no streams).
    pub stream_only: bool,
}

/// Whether a route's protocols are stream ones only.
fn stream_only(protocols: &[String]) -> bool {
    !protocols.iter().any(|p| matches!(p.as_str(), "http" | "https" | "grpc" | "grpcs"))
}

/// Validates Admin API input and compiles the result as the proxy would: what comes back can be
/// stored, since every node and data plane will build it. Every problem is listed.
pub fn prepare(kind: Kind, input: Obj, mode: Mode) -> Result<Obj, EntityError> {
    let record = model::prepare(kind, input, mode, &Catalog)?;
    check(kind, &record)?;
    Ok(record)
}

/// Turns form strings into the types the kind's schema (and a plugin's config schema) expects.
pub fn coerce(kind: Kind, input: &mut Obj, stored: Option<&Obj>) {
    model::coerce(kind, input, stored, &Catalog);
}

/// Compiles a validated record of `kind`, discarding the result.
pub fn check(kind: Kind, record: &Obj) -> Result<(), Violations> {
    let mut record = record.clone();
    // A foreign key given by endpoint key (`{"username": "bob"}`) is resolved by the store when it
    // writes; compiling needs only where it points, so a stand-in id does.
    for fk in kind.foreign_keys() {
        if let Some(Value::Object(key)) = record.get_mut(fk.field)
            && !key.contains_key("id")
        {
            key.clear();
            key.insert("id".into(), Value::String(Uuid::nil().to_string()));
        }
    }
    let body = Value::Object(record);
    match kind {
        Kind::Consumer => consumer(read(body)?).map(drop),
        Kind::ConsumerGroup => group(read(body)?).map(drop),
        Kind::Certificate => certificate(&read(body)?).map(drop),
        Kind::Sni => read::<SniRow>(body).map(drop),
        Kind::CaCertificate => ca_certificate(&read(body)?).map(drop),
        Kind::Upstream => read::<crate::balancer::UpstreamConfig>(body).map(drop),
        Kind::Target => target(&read(body)?).map(drop),
        Kind::Service => service(&read(body)?, TlsEntities::NONE).map(drop),
        Kind::Route => route(&read(body)?).map(drop),
        Kind::Plugin => plugin(&read(body)?, &ConsumerIndex::default(), Counters::dry_run(), None).map(drop),
        Kind::KeyAuth => key_credential(read(body)?, None).map(drop),
        Kind::Acl => acl(read(body)?).map(drop),
        Kind::GroupMembership => read::<MembershipRow>(body).map(drop),
    }
}

/// A record as a typed row; a mismatch names the field.
pub fn read<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, Violations> {
    serde_path_to_error::deserialize(body).map_err(mismatch)
}

/// A stored body (JSON text) as a typed row, in one pass; a mismatch names the field.
pub fn read_str<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, Violations> {
    let mut de = serde_json::Deserializer::from_str(body);
    let row = serde_path_to_error::deserialize(&mut de).map_err(mismatch)?;
    de.end().map_err(|e| Violations(vec![Violation::entity(format!("invalid value: {e}"))]))?;
    Ok(row)
}

fn mismatch(e: serde_path_to_error::Error<serde_json::Error>) -> Violations {
    let path: Vec<PathSeg> = e
        .path()
        .iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Map { key } => Some(PathSeg::Field(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(PathSeg::Index(index + 1)),
            _ => None,
        })
        .collect();
    Violations(vec![Violation { path, message: format!("invalid value: {}", e.into_inner()) }])
}

/// A text that goes upstream in a header (a username, a group name) must be a valid header value.
fn header_safe(field: &str, value: Option<&str>) -> Result<(), Violations> {
    match value {
        Some(v) if HeaderValue::from_str(v).is_err() => {
            Err(Violations::single(field, "invalid value: must not contain control characters"))
        }
        _ => Ok(()),
    }
}

pub fn consumer(row: ConsumerRow) -> Result<Consumer, Violations> {
    header_safe("username", row.username.as_deref())?;
    header_safe("custom_id", row.custom_id.as_deref())?;
    Ok(Consumer::new(row.id, row.username.map(Into::into), row.custom_id.map(Into::into)))
}

/// A realm consumer as a data plane holds it, from its control plane's answer: checked like a
/// local consumer (the realms API checks the same on write), its group names mapped onto this
/// configuration's consumer groups.
pub fn realm_consumer(
    id: &str,
    username: &str,
    custom_id: Option<&str>,
    key_id: &str,
    groups: &[String],
    identity: &Directory,
) -> Result<Authenticated, Violations> {
    realm_consumer_fields(Some(username), custom_id, groups)?;
    let id = Uuid::parse_str(id).map_err(|e| Violations::single("id", format!("invalid value: {e}")))?;
    let key_id = Uuid::parse_str(key_id).unwrap_or(id);
    let mut consumer = Consumer::new(id, Some(username.into()), custom_id.map(Into::into));
    consumer.groups = identity.group_set(groups);
    Ok(Authenticated { id: key_id, consumer: Arc::new(consumer) })
}

/// What of a realm consumer goes upstream in headers.
pub fn realm_consumer_fields(
    username: Option<&str>,
    custom_id: Option<&str>,
    groups: &[String],
) -> Result<(), Violations> {
    header_safe("username", username)?;
    header_safe("custom_id", custom_id)?;
    for g in groups {
        header_safe("consumer_groups", Some(g))?;
    }
    Ok(())
}

pub fn group(row: GroupRow) -> Result<GroupRow, Violations> {
    header_safe("name", Some(&row.name))?;
    Ok(row)
}

pub fn acl(row: AclRow) -> Result<AclRow, Violations> {
    header_safe("group", Some(&row.group))?;
    Ok(row)
}

/// A key credential and the key it answers to.
pub fn key_credential(row: KeyAuthRow, expires_at: Option<i64>) -> Result<(String, KeyCredential), Violations> {
    let cred = KeyCredential {
        id: row.id,
        consumer_id: row.consumer.id,
        expires_at: expires_at.and_then(std::num::NonZeroI64::new),
    };
    Ok((row.key, cred))
}

pub fn service(s: &ServiceRow, entities: TlsEntities<'_>) -> Result<ServiceTarget, Violations> {
    let mut errors = Vec::new();
    let mut timeout = |field: &str, ms: u64| {
        if !TIMEOUT_MS.contains(&ms) {
            errors.push(Violation::field(field, "value should be between 1 and 2147483646"));
        }
        Duration::from_millis(ms)
    };
    let connect_timeout = timeout("connect_timeout", s.connect_timeout);
    let read_timeout = timeout("read_timeout", s.read_timeout);
    let write_timeout = timeout("write_timeout", s.write_timeout);
    if s.retries > MAX_RETRIES {
        errors.push(Violation::field("retries", "value should be between 0 and 32767"));
    }
    let https = s.protocol == "https" || s.protocol == "grpcs";
    let default_port = if https { 443 } else { 80 };
    let host = if s.host.contains(':') { format!("[{}]", s.host) } else { s.host.clone() };
    let authority = if s.port == default_port { host.clone() } else { format!("{host}:{}", s.port) };
    let host_header = HeaderValue::from_str(&authority);
    if s.host.is_empty() || host_header.is_err() {
        errors.push(Violation::field("host", format!("invalid value: {}", s.host)));
    }
    if let Some(path) = &s.path
        && http::uri::PathAndQuery::try_from(path.as_str()).is_err()
    {
        errors.push(Violation::field("path", format!("invalid path: '{path}'")));
    }
    let (Ok(host_header), true) = (host_header, errors.is_empty()) else {
        return Err(Violations(errors));
    };
    let tls =
        if https { Some(upstream_tls(s, entities).map_err(|e| Violations::single("tls_verify", e))?) } else { None };
    let pool_suffix = format!(
        "/{}/{}/{}|{}|{}|{}",
        s.read_timeout,
        s.write_timeout,
        s.tls_verify.unwrap_or(false),
        s.tls_verify_depth.map_or(String::new(), |d| d.to_string()),
        s.ca_certificates.as_ref().map_or(String::new(), |c| c
            .iter()
            .map(Uuid::to_string)
            .collect::<Vec<_>>()
            .join(",")),
        s.client_certificate.map_or(String::new(), |c| c.id.to_string()),
    );
    let label = s.name.clone().unwrap_or_else(|| s.host.clone()).into();
    Ok(ServiceTarget {
        id: s.id,
        subject: Arc::new(ServiceSubject { id: s.id, label, entity: null_entity() }),
        enabled: s.enabled,
        https,
        host: s.host.clone().into(),
        ip: s.host.parse().ok(),
        port: s.port,
        host_header,
        // Kong's keep-alive key for https adds verification, depth, CAs and client certificate.
        pool_key: Arc::from(format!("{}://{host}:{}{pool_suffix}", if https { "https" } else { "http" }, s.port)),
        pool_suffix: pool_suffix.into(),
        tls,
        path: s.path.clone().map(Into::into),
        retries: s.retries,
        read_timeout,
        write_timeout,
        connect_timeout,
    })
}

#[derive(Debug, Deserialize)]
pub struct CertificateRow {
    pub id: Uuid,
    pub cert: String,
    pub key: String,
    pub cert_alt: Option<String>,
    pub key_alt: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SniRow {
    pub id: Uuid,
    pub name: String,
    pub certificate: Ref,
}

/// A target as stored.
#[derive(Debug, Deserialize)]
pub struct TargetRow {
    pub id: Uuid,
    pub upstream: Ref,
    pub target: String,
    pub weight: u32,
}

/// A target ready for its balancer.
pub fn target(row: &TargetRow) -> Result<crate::balancer::TargetConfig, Violations> {
    crate::balancer::TargetConfig::new(row.id, row.upstream.id, &row.target, row.weight)
        .map_err(|e| Violations::single("target", e.to_string()))
}

#[derive(Debug, Deserialize)]
pub struct CaCertificateRow {
    pub id: Uuid,
    pub cert: String,
}

/// A certificate entity ready to serve: both pairs parsed and checked against their keys.
pub fn certificate(c: &CertificateRow) -> Result<Arc<CertPair>, Violations> {
    let pair = |cert: &str, key: &str, field: &str| {
        let ck = tls::material::certified_key(cert.as_bytes(), key.as_bytes())
            .map_err(|e| Violations::single(field, e.to_string()))?;
        let kind =
            ck.end_entity_cert().ok().and_then(|d| tls::material::info(d).ok()).map_or(KeyType::Other, |i| i.key_type);
        Ok::<_, Violations>((ck, kind))
    };
    let (main, main_type) = pair(&c.cert, &c.key, "cert")?;
    // Kong accepts an expired certificate and serves it; say so.
    if let Some(not_after) = main.end_entity_cert().ok().and_then(|d| tls::material::info(d).ok()).map(|i| i.not_after)
        && not_after < crate::clock::now_secs()
    {
        tracing::warn!(certificate = %c.id, "certificate has expired (\"Not After\" is in the past); served anyway");
    }
    let alt = match (&c.cert_alt, &c.key_alt) {
        (Some(cert), Some(key)) => Some(pair(cert, key, "cert_alt")?),
        _ => None,
    };
    Ok(Arc::new(CertPair { id: c.id, main, main_type, alt }))
}

/// A CA certificate as upstream TLS trusts it (DER).
pub fn ca_certificate(
    c: &CaCertificateRow,
) -> Result<tokio_rustls::rustls::pki_types::CertificateDer<'static>, Violations> {
    let chain =
        tls::material::certificates(c.cert.as_bytes()).map_err(|e| Violations::single("cert", e.to_string()))?;
    chain.into_iter().next().ok_or_else(|| Violations::single("cert", "invalid certificate: no certificate"))
}

/// A service's upstream TLS configuration. A certificate or CA it names that is not loaded is
/// logged and left out, as Kong does (`CA Certificate '<id>' does not exist`).
fn upstream_tls(s: &ServiceRow, entities: TlsEntities<'_>) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, String> {
    let client = s.client_certificate.and_then(|c| {
        let found = entities.certificates.and_then(|m| m.get(&c.id)).map(|p| p.main.clone());
        if found.is_none() && entities.certificates.is_some() {
            tracing::error!(service = %s.id, certificate = %c.id, "client certificate does not exist; sent without one");
        }
        found
    });
    let roots = s.ca_certificates.as_ref().filter(|ids| !ids.is_empty()).map(|ids| {
        let mut ids = ids.clone();
        ids.sort();
        ids.iter()
            .filter_map(|id| {
                let found = entities.ca_certificates.and_then(|m| m.get(id)).cloned();
                if found.is_none() && entities.ca_certificates.is_some() {
                    tracing::error!(service = %s.id, "CA Certificate '{id}' does not exist");
                }
                found
            })
            .collect()
    });
    tls::client::UpstreamTls { verify: s.tls_verify.unwrap_or(false), depth: s.tls_verify_depth, roots, client }
        .config()
}

/// What the router matches a route on.
fn route_spec(r: &RouteRow) -> RouteSpec<()> {
    RouteSpec {
        methods: r.methods.clone().unwrap_or_default(),
        hosts: r.hosts.clone().unwrap_or_default(),
        paths: r.paths.clone().unwrap_or_default(),
        headers: r.headers.clone().unwrap_or_default().into_iter().collect(),
        snis: r.snis.clone().unwrap_or_default(),
        regex_priority: r.regex_priority,
        target: (),
    }
}

pub fn route(r: &RouteRow) -> Result<CompiledRoute, Violations> {
    let matcher = RouteMatcher::compile(&route_spec(r)).map_err(|e| Violations::single(e.field, e.message))?;
    let https_redirect_status = match r.https_redirect_status_code {
        code @ (426 | 301 | 302 | 307 | 308) => StatusCode::from_u16(code).ok(),
        _ => None,
    }
    .ok_or_else(|| Violations::single("https_redirect_status_code", "expected one of: 426, 301, 302, 307, 308"))?;
    Ok(CompiledRoute {
        id: r.id,
        label: route_label(r),
        entity: null_entity(),
        broken: false,
        service: r.service.map(|s| s.id),
        matcher: Arc::new(matcher),
        strip_path: r.strip_path,
        preserve_host: r.preserve_host,
        http_allowed: r.protocols.iter().any(|p| p == "http"),
        https_redirect_status,
        request_buffering: r.request_buffering,
        stream_only: stream_only(&r.protocols),
    })
}

fn route_label(r: &RouteRow) -> Box<str> {
    r.name.clone().unwrap_or_else(|| r.id.to_string()).into()
}

/// JSON `null`, until the caller sets an entity's stored text.
pub fn null_entity() -> Arc<RawValue> {
    static NULL: std::sync::OnceLock<Arc<RawValue>> = std::sync::OnceLock::new();
    NULL.get_or_init(|| Arc::from(entity_json("null"))).clone()
}

/// An entity's stored JSON text as a raw value (`null` if it is not JSON).
pub fn entity_json(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).unwrap_or_default()
}

/// A route whose matching attributes compile though the rest does not: matched, answered 500.
pub fn broken_route(r: &RouteRow) -> Option<CompiledRoute> {
    let matcher = RouteMatcher::compile(&route_spec(r)).ok()?;
    Some(CompiledRoute {
        id: r.id,
        label: route_label(r),
        entity: null_entity(),
        broken: true,
        service: r.service.map(|s| s.id),
        matcher: Arc::new(matcher),
        strip_path: r.strip_path,
        preserve_host: r.preserve_host,
        http_allowed: true,
        https_redirect_status: StatusCode::UPGRADE_REQUIRED,
        request_buffering: r.request_buffering,
        stream_only: stream_only(&r.protocols),
    })
}

/// A plugin row with its config validated (defaults filled), checked by building it against dry
/// counters, and the instance built. Errors are reported under `config` or `name`.
pub fn plugin(
    row: &PluginRow,
    consumers: &ConsumerIndex,
    counters: &Counters,
    realms: Option<&Arc<dyn crate::plugins::RealmResolver>>,
) -> Result<(PluginInstanceRow, Arc<dyn Plugin>), Violations> {
    let Some(def) = find(&row.name) else {
        return Err(Violations::single(
            "name",
            format!("plugin '{}' not enabled; add it to the 'plugins' configuration property", row.name),
        ));
    };
    let config = validate_nested((def.config)(), &row.config.clone().unwrap_or_default(), "config")?;
    let env = BuildEnv {
        consumers,
        realms,
        counters,
        instance: Some(row.id),
        consumer_group: row.consumer_group.map(|g| g.id),
    };
    let instance = (def.build)(&config, &env).map_err(|v| under("config", v))?;
    let instance_row = PluginInstanceRow {
        id: row.id,
        name: def.name.to_string(),
        route: row.route.map(|r| r.id),
        service: row.service.map(|r| r.id),
        consumer: row.consumer.map(|r| r.id),
        consumer_group: row.consumer_group.map(|r| r.id),
        enabled: row.enabled,
        http: row.protocols.as_ref().is_none_or(|ps| ps.iter().any(|x| x == "http")),
        broken: false,
        config,
    };
    Ok((instance_row, instance))
}

/// Puts violations found inside a record under its field (`config.minute`).
fn under(field: &str, v: Violations) -> Violations {
    Violations(
        v.0.into_iter()
            .map(|mut viol| {
                viol.path.insert(0, PathSeg::Field(field.to_string()));
                viol
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Obj {
        match v {
            Value::Object(m) => m,
            _ => Obj::new(),
        }
    }

    fn message(e: EntityError) -> String {
        e.to_string()
    }

    #[test]
    fn plugin_config_gets_defaults_and_alias() {
        let p = prepare(Kind::Plugin, obj(json!({"name": "keyauth"})), Mode::Create).expect("valid");
        assert_eq!(p["name"], json!("key-auth"));
        assert_eq!(p["config"]["key_names"], json!(["apikey"]));
        assert_eq!(p["config"]["hide_credentials"], json!(false));
        assert_eq!(p["protocols"], json!(["grpc", "grpcs", "http", "https"]));
        assert_eq!(p["enabled"], json!(true));
    }

    #[test]
    fn unknown_plugin_and_bad_config_are_listed_together() {
        let err = prepare(Kind::Plugin, obj(json!({"name": "nope"})), Mode::Create).expect_err("invalid");
        assert_eq!(
            message(err),
            "schema violation (name: plugin 'nope' not enabled; add it to the 'plugins' configuration property)"
        );
        let err = prepare(
            Kind::Plugin,
            obj(json!({"name": "key-auth", "config": {"key_names": ["bad key"], "colour": 1}, "consumer": {"id": "5e4bf2a0-b6a6-4b4e-a4d5-3b1c4dc5b3b0"}})),
            Mode::Create,
        )
        .expect_err("invalid");
        let msg = message(err);
        assert!(msg.starts_with("3 schema violations"), "{msg}");
        assert!(msg.contains("config.colour: unknown field"), "{msg}");
        assert!(msg.contains("config.key_names: {\n  \"bad header name 'bad key'"), "{msg}");
        assert!(msg.contains("consumer: value must be null"), "{msg}");
    }

    #[test]
    fn patch_merges_config_keeps_immutables_and_may_rename() {
        let current = prepare(Kind::Plugin, obj(json!({"name": "key-auth"})), Mode::Create).expect("valid");
        let patched =
            prepare(Kind::Plugin, obj(json!({"config": {"hide_credentials": true}})), Mode::Patch(current.clone()))
                .expect("valid");
        assert_eq!(patched["config"]["hide_credentials"], json!(true));
        assert_eq!(patched["config"]["key_names"], json!(["apikey"]));
        assert_eq!(patched["id"], current["id"]);
        let err = prepare(Kind::Plugin, obj(json!({"id": uuid::Uuid::new_v4()})), Mode::Patch(current.clone()))
            .expect_err("immutable");
        assert!(message(err).contains("id: immutable field cannot be updated"));
        // Another plugin's name: its own config, judged by its schema.
        let err = prepare(Kind::Plugin, obj(json!({"name": "other"})), Mode::Patch(current)).expect_err("unknown");
        let text = message(err);
        assert!(text.contains("plugin 'other' not enabled"), "{text}");
    }

    /// The writes of issue 11 that used to be stored and then take a node down are refused, naming
    /// the field.
    #[test]
    fn writes_that_would_not_build_are_refused() {
        let err = prepare(
            Kind::Plugin,
            obj(json!({"name": "rate-limiting", "config": {"minute": 5, "policy": "redis", "redis": {"host": "127.0.0.1"}, "sync_rate": 1e20}})),
            Mode::Create,
        )
        .expect_err("sync_rate out of range");
        assert!(message(err).contains("config.sync_rate"));
        let err = prepare(
            Kind::Route,
            obj(json!({"paths": ["/a"], "headers": {"x-version": ["~*(unclosed"]}})),
            Mode::Create,
        )
        .expect_err("unclosed header regex");
        assert!(message(err).starts_with("schema violation (headers: invalid regex: '(unclosed'"));
        let err = prepare(Kind::Consumer, obj(json!({"username": "a\u{1}b"})), Mode::Create).expect_err("control char");
        assert_eq!(message(err), "schema violation (username: invalid value: must not contain control characters)");
    }

    /// Every number an entity or a plugin config holds has a bound (Kong's, or one of ours where
    /// Kong has none), so no stored value can overflow what it is turned into.
    #[test]
    fn every_numeric_field_is_bounded() {
        use crate::model::schema::{Check, Field, Type};
        // Bounded by an entity check instead (the value's rule depends on other fields).
        const CHECKED_ELSEWHERE: &[&str] = &["sync_rate"];
        fn walk(owner: &str, fields: &[Field], unbounded: &mut Vec<String>) {
            for f in fields {
                match &f.ty {
                    Type::Integer | Type::Number => {
                        let bounded = f
                            .checks
                            .iter()
                            .any(|c| matches!(c, Check::Between(..) | Check::OneOfInt(_) | Check::AtMost(_)));
                        if !bounded && !CHECKED_ELSEWHERE.contains(&f.name) {
                            unbounded.push(format!("{owner}.{}", f.name));
                        }
                    }
                    Type::Array(e) | Type::Set(e) => walk(owner, std::slice::from_ref(e), unbounded),
                    Type::Map(k, v) => walk(owner, &[(**k).clone(), (**v).clone()], unbounded),
                    Type::Record(sub) => walk(&format!("{owner}.{}", f.name), sub, unbounded),
                    _ => {}
                }
            }
        }
        let mut unbounded = Vec::new();
        for kind in Kind::ALL {
            walk(kind.table(), &kind.schema().fields, &mut unbounded);
        }
        for def in crate::plugins::REGISTRY {
            walk(def.name, &(def.config)().fields, &mut unbounded);
        }
        assert!(unbounded.is_empty(), "numbers without a bound: {unbounded:?}");
    }

    #[test]
    fn a_stored_row_of_the_wrong_shape_names_its_field() {
        let err = read::<ServiceRow>(json!({"id": Uuid::nil(), "protocol": "http", "host": "h", "port": 70000}))
            .expect_err("port out of range");
        assert_eq!(err.0[0].path, vec![PathSeg::Field("port".into())]);
    }
}
