//! The entity kinds the gateway stores (consumers, consumer groups and their memberships, services,
//! routes, plugins, key-auth and ACL credentials), each with its Kong 3.x schema, endpoint key, unique fields and foreign keys.

use std::sync::OnceLock;

use serde_json::{Value, json};

use super::schema::{Auto, Check, EntityCheck, Field, Obj, Schema, Type, Violation, is_nonempty};
use super::typedefs::{self as td, ALL_PROTOCOLS};

/// Every entity kind, in dependency order (a kind only references kinds before it). What each kind
/// is lives in its [`EntityDef`]; the methods below only read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Consumer,
    ConsumerGroup,
    /// A TLS certificate and key (with an alternative pair of the other key type).
    Certificate,
    /// A server name served with a certificate.
    Sni,
    /// A CA trusted for upstream TLS.
    CaCertificate,
    /// A load-balanced name a service's host may point at.
    Upstream,
    /// One `host:port` behind an upstream, with its weight.
    Target,
    Service,
    Route,
    Plugin,
    KeyAuth,
    Acl,
    /// A consumer's membership in a consumer group.
    GroupMembership,
}

/// What deleting a referenced entity does to the referencing ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    Cascade,
    Restrict,
}

/// A foreign key column: `<field>_id` referencing `kind`.
#[derive(Debug, Clone, Copy)]
pub struct ForeignKey {
    pub field: &'static str,
    pub kind: Kind,
    pub on_delete: OnDelete,
}

/// How the Admin API serves a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handlers {
    /// The generic collection and item handlers (list, create, read, PATCH, PUT, DELETE).
    Standard,
    /// Handlers of its own, at the paths the descriptor names (memberships answer with both sides).
    Own,
}

/// One entity kind, described once. The store derives its columns, constraints and cascades from
/// it; the Admin API its routes (top-level and nested) and `/endpoints`; `/schemas` its schema. A new
/// entity is a descriptor here, a table in `migrations/` (a test checks they agree) and its behaviour.
#[derive(Debug)]
pub struct EntityDef {
    pub kind: Kind,
    /// Table and schema name (`keyauth_credentials`), also its placeholder in `/endpoints`.
    pub table: &'static str,
    /// The Admin API collection at the root (`key-auths`), if any.
    pub path: Option<&'static str>,
    /// Collections under a parent's item: (parent kind, segment), e.g. `/consumers/{c}/key-auth`.
    pub nested: &'static [(Kind, &'static str)],
    pub handlers: Handlers,
    /// The field a path segment addresses when it is not a UUID.
    pub endpoint_key: &'static str,
    /// The column holding the endpoint key (`group` is an SQL keyword).
    pub key_column: &'static str,
    /// The endpoint key is unique only under the parent (a consumer's ACL group): a lookup by key
    /// then needs the parent.
    pub key_scoped_to_parent: bool,
    /// Fields with a unique constraint, each in a column of its own.
    pub unique: &'static [&'static str],
    pub foreign_keys: &'static [ForeignKey],
    /// Kong's `cache_key`: fields unique together (a foreign key counts by its id), kept in the
    /// `cache_key` column. One plugin per name and scope, one membership per consumer and group,
    /// one ACL group per consumer.
    pub cache_key: &'static [&'static str],
    /// A `ttl` option may be given on write (the entity then expires).
    pub ttl: bool,
    pub schema: fn() -> &'static Schema,
}

const fn fk(field: &'static str, kind: Kind, on_delete: OnDelete) -> ForeignKey {
    ForeignKey { field, kind, on_delete }
}

const CONSUMER: EntityDef = EntityDef {
    kind: Kind::Consumer,
    table: "consumers",
    path: Some("consumers"),
    nested: &[],
    handlers: Handlers::Standard,
    endpoint_key: "username",
    key_column: "username",
    key_scoped_to_parent: false,
    unique: &["username", "custom_id"],
    foreign_keys: &[],
    cache_key: &[],
    ttl: false,
    schema: consumers,
};

const CONSUMER_GROUP: EntityDef = EntityDef {
    kind: Kind::ConsumerGroup,
    table: "consumer_groups",
    path: Some("consumer_groups"),
    nested: &[],
    handlers: Handlers::Standard,
    endpoint_key: "name",
    key_column: "name",
    key_scoped_to_parent: false,
    unique: &["name"],
    foreign_keys: &[],
    cache_key: &[],
    ttl: false,
    schema: consumer_groups,
};

const CERTIFICATE: EntityDef = EntityDef {
    kind: Kind::Certificate,
    table: "certificates",
    path: Some("certificates"),
    nested: &[],
    handlers: Handlers::Own,
    endpoint_key: "id",
    key_column: "id",
    key_scoped_to_parent: false,
    unique: &[],
    foreign_keys: &[],
    cache_key: &[],
    ttl: false,
    schema: certificates,
};

const SNI: EntityDef = EntityDef {
    kind: Kind::Sni,
    table: "snis",
    path: Some("snis"),
    nested: &[(Kind::Certificate, "snis")],
    handlers: Handlers::Standard,
    endpoint_key: "name",
    key_column: "name",
    key_scoped_to_parent: false,
    unique: &["name"],
    foreign_keys: &[fk("certificate", Kind::Certificate, OnDelete::Cascade)],
    cache_key: &[],
    ttl: false,
    schema: snis,
};

const CA_CERTIFICATE: EntityDef = EntityDef {
    kind: Kind::CaCertificate,
    table: "ca_certificates",
    path: Some("ca_certificates"),
    nested: &[],
    handlers: Handlers::Standard,
    endpoint_key: "id",
    key_column: "id",
    key_scoped_to_parent: false,
    unique: &["cert_digest"],
    foreign_keys: &[],
    cache_key: &[],
    ttl: false,
    schema: ca_certificates,
};

const UPSTREAM: EntityDef = EntityDef {
    kind: Kind::Upstream,
    table: "upstreams",
    path: Some("upstreams"),
    nested: &[],
    handlers: Handlers::Standard,
    endpoint_key: "name",
    key_column: "name",
    key_scoped_to_parent: false,
    unique: &["name"],
    foreign_keys: &[fk("client_certificate", Kind::Certificate, OnDelete::Restrict)],
    cache_key: &[],
    ttl: false,
    schema: super::upstreams::upstreams,
};

// `/targets` itself answers 404, as Kong's does: targets live under their upstream only.
const TARGET: EntityDef = EntityDef {
    kind: Kind::Target,
    table: "targets",
    path: None,
    nested: &[(Kind::Upstream, "targets")],
    handlers: Handlers::Own,
    endpoint_key: "target",
    key_column: "target",
    key_scoped_to_parent: true,
    unique: &[],
    foreign_keys: &[fk("upstream", Kind::Upstream, OnDelete::Cascade)],
    cache_key: &["upstream", "target"],
    ttl: false,
    schema: super::upstreams::targets,
};

const SERVICE: EntityDef = EntityDef {
    kind: Kind::Service,
    table: "services",
    path: Some("services"),
    nested: &[],
    handlers: Handlers::Standard,
    endpoint_key: "name",
    key_column: "name",
    key_scoped_to_parent: false,
    unique: &["name"],
    foreign_keys: &[fk("client_certificate", Kind::Certificate, OnDelete::Restrict)],
    cache_key: &[],
    ttl: false,
    schema: services,
};

const ROUTE: EntityDef = EntityDef {
    kind: Kind::Route,
    table: "routes",
    path: Some("routes"),
    nested: &[(Kind::Service, "routes")],
    handlers: Handlers::Standard,
    endpoint_key: "name",
    key_column: "name",
    key_scoped_to_parent: false,
    unique: &["name"],
    foreign_keys: &[fk("service", Kind::Service, OnDelete::Restrict)],
    cache_key: &[],
    ttl: false,
    schema: routes,
};

const PLUGIN: EntityDef = EntityDef {
    kind: Kind::Plugin,
    table: "plugins",
    path: Some("plugins"),
    nested: &[
        (Kind::Consumer, "plugins"),
        (Kind::Service, "plugins"),
        (Kind::Route, "plugins"),
        (Kind::ConsumerGroup, "plugins"),
    ],
    handlers: Handlers::Standard,
    endpoint_key: "instance_name",
    key_column: "instance_name",
    key_scoped_to_parent: false,
    unique: &["instance_name"],
    foreign_keys: &[
        fk("route", Kind::Route, OnDelete::Cascade),
        fk("service", Kind::Service, OnDelete::Cascade),
        fk("consumer", Kind::Consumer, OnDelete::Cascade),
        fk("consumer_group", Kind::ConsumerGroup, OnDelete::Cascade),
    ],
    cache_key: &["name", "route", "service", "consumer", "consumer_group"],
    ttl: false,
    schema: plugins,
};

const KEY_AUTH: EntityDef = EntityDef {
    kind: Kind::KeyAuth,
    table: "keyauth_credentials",
    path: Some("key-auths"),
    // `keyauth` is the 0.x spelling old scripts still use.
    nested: &[(Kind::Consumer, "key-auth"), (Kind::Consumer, "keyauth")],
    handlers: Handlers::Standard,
    endpoint_key: "key",
    key_column: "key",
    key_scoped_to_parent: false,
    unique: &["key"],
    foreign_keys: &[fk("consumer", Kind::Consumer, OnDelete::Cascade)],
    cache_key: &[],
    ttl: true,
    schema: keyauth_credentials,
};

const ACL: EntityDef = EntityDef {
    kind: Kind::Acl,
    table: "acls",
    path: Some("acls"),
    nested: &[(Kind::Consumer, "acls")],
    handlers: Handlers::Standard,
    endpoint_key: "group",
    key_column: "group_name",
    key_scoped_to_parent: true,
    unique: &[],
    foreign_keys: &[fk("consumer", Kind::Consumer, OnDelete::Cascade)],
    cache_key: &["consumer", "group"],
    ttl: false,
    schema: acls,
};

const GROUP_MEMBERSHIP: EntityDef = EntityDef {
    kind: Kind::GroupMembership,
    table: "consumer_group_consumers",
    path: None,
    nested: &[(Kind::Consumer, "consumer_groups"), (Kind::ConsumerGroup, "consumers")],
    handlers: Handlers::Own,
    endpoint_key: "id",
    key_column: "id",
    key_scoped_to_parent: false,
    unique: &[],
    foreign_keys: &[
        fk("consumer_group", Kind::ConsumerGroup, OnDelete::Cascade),
        fk("consumer", Kind::Consumer, OnDelete::Cascade),
    ],
    cache_key: &["consumer_group", "consumer"],
    ttl: false,
    schema: group_memberships,
};

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Consumer,
        Kind::ConsumerGroup,
        Kind::Certificate,
        Kind::Sni,
        Kind::CaCertificate,
        Kind::Upstream,
        Kind::Target,
        Kind::Service,
        Kind::Route,
        Kind::Plugin,
        Kind::KeyAuth,
        Kind::Acl,
        Kind::GroupMembership,
    ];

    /// This kind's descriptor.
    pub fn def(self) -> &'static EntityDef {
        match self {
            Kind::Consumer => &CONSUMER,
            Kind::ConsumerGroup => &CONSUMER_GROUP,
            Kind::Certificate => &CERTIFICATE,
            Kind::Sni => &SNI,
            Kind::CaCertificate => &CA_CERTIFICATE,
            Kind::Upstream => &UPSTREAM,
            Kind::Target => &TARGET,
            Kind::Service => &SERVICE,
            Kind::Route => &ROUTE,
            Kind::Plugin => &PLUGIN,
            Kind::KeyAuth => &KEY_AUTH,
            Kind::Acl => &ACL,
            Kind::GroupMembership => &GROUP_MEMBERSHIP,
        }
    }

    pub fn table(self) -> &'static str {
        self.def().table
    }

    pub fn from_table(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.table() == name)
    }

    pub fn endpoint_key(self) -> &'static str {
        self.def().endpoint_key
    }

    pub fn key_column(self) -> &'static str {
        self.def().key_column
    }

    pub fn key_scoped_to_parent(self) -> bool {
        self.def().key_scoped_to_parent
    }

    pub fn unique_fields(self) -> &'static [&'static str] {
        self.def().unique
    }

    pub fn foreign_keys(self) -> &'static [ForeignKey] {
        self.def().foreign_keys
    }

    /// The foreign-key field that points at `parent` (how a nested path names its parent).
    pub fn field_towards(self, parent: Kind) -> Option<&'static str> {
        self.foreign_keys().iter().find(|fk| fk.kind == parent).map(|fk| fk.field)
    }

    /// The value of the `cache_key` column: the descriptor's fields joined with `|`.
    pub fn cache_key(self, record: &Obj) -> Option<String> {
        let fields = self.def().cache_key;
        if fields.is_empty() {
            return None;
        }
        let part = |f: &str| match record.get(f) {
            Some(Value::String(s)) => s.as_str(),
            Some(Value::Object(m)) => m.get("id").and_then(Value::as_str).unwrap_or_default(),
            _ => "",
        };
        Some(fields.iter().map(|f| part(f)).collect::<Vec<_>>().join("|"))
    }

    pub fn has_ttl(self) -> bool {
        self.def().ttl
    }

    pub fn schema(self) -> &'static Schema {
        (self.def().schema)()
    }
}

fn consumers() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::updated_at(),
            Field::new("username", Type::String),
            Field::new("custom_id", Type::String),
            td::tags(),
        ],
        checks: vec![EntityCheck::AtLeastOneOf(&["custom_id", "username"])],
    })
}

fn services() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::updated_at(),
            td::utf8_name("name"),
            Field::new("retries", Type::Integer).default(json!(5)).check(Check::Between(0, 32767)),
            Field::new("protocol", Type::String).required().default(json!("http")).check(Check::OneOf(ALL_PROTOCOLS)),
            Field::new("host", Type::String).required().check(Check::Custom(td::check_host)),
            td::port("port").required().default(json!(80)),
            Field::new("path", Type::String).check(Check::Custom(td::check_path)),
            td::timeout("connect_timeout"),
            td::timeout("write_timeout"),
            td::timeout("read_timeout"),
            td::tags(),
            td::foreign("client_certificate", "certificates"),
            Field::new("tls_verify", Type::Boolean),
            Field::new("tls_verify_depth", Type::Integer).check(Check::Between(0, 64)),
            Field::new("ca_certificates", Type::Array(Box::new(Field::new("ca", Type::String)))),
            Field::new("enabled", Type::Boolean).required().default(json!(true)),
        ],
        checks: vec![EntityCheck::Custom(service_checks)],
    })
}

fn service_checks(rec: &Obj) -> Vec<Violation> {
    let protocol = rec.get("protocol").and_then(Value::as_str).unwrap_or("http");
    let mut out = Vec::new();
    let set = |f: &str| rec.get(f).is_some_and(|v| !v.is_null());
    if matches!(protocol, "tcp" | "tls" | "udp" | "grpc" | "grpcs") && set("path") {
        out.push(Violation::field("path", "value must be null"));
    }
    if !matches!(protocol, "https" | "tls") {
        for f in ["client_certificate", "tls_verify", "tls_verify_depth", "ca_certificates"] {
            if set(f) {
                out.push(Violation::field(f, "value must be null"));
            }
        }
    }
    // Each failed conditional also reports which field it depended on (Kong's `conditional` check).
    let failed = out.len();
    for _ in 0..failed {
        out.push(Violation::entity("failed conditional validation given value of field 'protocol'"));
    }
    out
}

/// Expands the write-only `url` shorthand into protocol, host, port and path (Kong's rules). The URL
/// itself is not validated: whatever it lacks shows up as errors on the fields it sets.
pub fn expand_service_url(input: &mut Obj) -> Result<(), Violation> {
    let Some(raw) = input.remove("url") else {
        return Ok(());
    };
    if raw.is_null() {
        return Ok(());
    }
    let Some(text) = raw.as_str() else {
        return Err(Violation::field("url", "expected a string"));
    };
    if text.is_empty() {
        return Err(Violation::field("url", "length must be at least 1"));
    }
    let parts = UrlParts::split(text);
    let port = parts.port.and_then(|p| p.trim().parse::<i64>().ok());
    let protocol = match (parts.scheme, port) {
        (Some(scheme), _) => scheme,
        (None, Some(443)) => "https",
        (None, _) => "http",
    };
    let port = match (port, parts.port) {
        (Some(n), _) => json!(n),
        // Not a number: kept as given, so the schema reports it.
        (None, Some(p)) => json!(p),
        (None, None) => json!(if protocol == "https" { 443 } else { 80 }),
    };
    input.insert("protocol".into(), json!(protocol));
    input.insert("host".into(), parts.host.map_or(Value::Null, |h| json!(h)));
    input.insert("port".into(), port);
    input.insert("path".into(), parts.path.map_or(Value::Null, |p| json!(p)));
    Ok(())
}

/// A URL split the way LuaSocket's `url.parse` (which Kong uses for `url`) splits it: patterns only,
/// nothing rejected.
#[derive(Debug, Default, PartialEq, Eq)]
struct UrlParts<'a> {
    scheme: Option<&'a str>,
    host: Option<&'a str>,
    port: Option<&'a str>,
    path: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    fn split(url: &'a str) -> UrlParts<'a> {
        let mut parts = UrlParts::default();
        let mut rest = url;
        // `^([%w][%w%+%-%.]*):`
        if let Some((scheme, after)) = rest.split_once(':') {
            let mut chars = scheme.chars();
            if chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            {
                parts.scheme = Some(scheme);
                rest = after;
            }
        }
        // `^//([^/]*)`
        let mut authority = None;
        if let Some(after) = rest.strip_prefix("//") {
            let end = after.find('/').unwrap_or(after.len());
            authority = Some(&after[..end]);
            rest = &after[end..];
        }
        // Fragment, query and params are not part of the path.
        if let Some(i) = rest.find(['#', '?', ';']) {
            rest = &rest[..i];
        }
        if !rest.is_empty() {
            parts.path = Some(rest);
        }
        if let Some(mut authority) = authority {
            if let Some((_userinfo, after)) = authority.split_once('@') {
                authority = after;
            }
            if let Some(i) = authority.rfind(':')
                && !authority[i + 1..].contains(']')
            {
                parts.port = Some(&authority[i + 1..]);
                authority = &authority[..i];
            }
            if !authority.is_empty() {
                let ipv6 = authority.strip_prefix('[').and_then(|a| a.strip_suffix(']')).filter(|a| !a.is_empty());
                parts.host = Some(ipv6.unwrap_or(authority));
            }
        }
        parts
    }
}

fn routes() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let method = Field::new("method", Type::String).check(Check::Custom(td::check_method));
        let host = Field::new("host", Type::String).check(Check::Custom(td::check_route_host));
        let path = Field::new("path", Type::String).check(Check::Custom(td::check_router_path));
        let endpoint = || {
            Field::new(
                "endpoint",
                Type::Record(vec![
                    Field::new("ip", Type::String).check(Check::Custom(td::check_ip_or_cidr)),
                    td::port("port"),
                ]),
            )
        };
        let header_values = Field::new("values", Type::Array(Box::new(Field::new("value", Type::String))));
        let header_key = td::header_name("header").check(Check::Custom(|v| {
            if v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("host")) {
                Err("cannot contain 'host' header, which must be specified in the 'hosts' attribute".into())
            } else {
                Ok(())
            }
        }));
        Schema {
            fields: vec![
                td::id(),
                td::created_at(),
                td::updated_at(),
                td::utf8_name("name"),
                td::protocols(&["http", "https"], ALL_PROTOCOLS),
                Field::new("https_redirect_status_code", Type::Integer)
                    .required()
                    .default(json!(426))
                    .check(Check::OneOfInt(&[426, 301, 302, 307, 308])),
                Field::new("strip_path", Type::Boolean).required().default(json!(true)),
                Field::new("preserve_host", Type::Boolean).required().default(json!(false)),
                Field::new("request_buffering", Type::Boolean).required().default(json!(true)),
                Field::new("response_buffering", Type::Boolean).required().default(json!(true)),
                td::tags(),
                td::foreign("service", "services"),
                Field::new(
                    "snis",
                    Type::Set(Box::new(Field::new("sni", Type::String).check(Check::Custom(td::check_route_host)))),
                ),
                Field::new("sources", Type::Set(Box::new(endpoint()))),
                Field::new("destinations", Type::Set(Box::new(endpoint()))),
                Field::new("methods", Type::Set(Box::new(method))),
                Field::new("hosts", Type::Array(Box::new(host))),
                Field::new("paths", Type::Array(Box::new(path))),
                Field::new("headers", Type::Map(Box::new(header_key), Box::new(header_values))),
                // Kong sets no bound; a 32-bit range is what Kong's own router keeps of it.
                Field::new("regex_priority", Type::Integer)
                    .default(json!(0))
                    .check(Check::Between(-2_147_483_648, 2_147_483_647)),
                Field::new("path_handling", Type::String).default(json!("v0")).check(Check::OneOf(&["v0", "v1"])),
            ],
            checks: vec![EntityCheck::Custom(route_checks), EntityCheck::Presence(route_match_attributes)],
        }
    })
}

fn route_checks(rec: &Obj) -> Vec<Violation> {
    let protocols: Vec<&str> = rec
        .get("protocols")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let set = |f: &str| match rec.get(f) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        Some(_) => true,
    };
    let mut out = Vec::new();
    let groups: [&[&str]; 4] = [&["http", "https"], &["tcp", "tls", "udp"], &["tls_passthrough"], &["grpc", "grpcs"]];
    let used: Vec<usize> =
        groups.iter().enumerate().filter(|(_, g)| protocols.iter().any(|p| g.contains(p))).map(|(i, _)| i).collect();
    if used.len() > 1 {
        let names: Vec<String> =
            used.iter().map(|i| groups[*i].iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(", ")).collect();
        out.push(Violation::field(
            "protocols",
            format!(
                "these sets are mutually exclusive: {}",
                names.iter().map(|n| format!("({n})")).collect::<Vec<_>>().join(", ")
            ),
        ));
        return out;
    }
    // Kong's protocol subschemas: what each kind of route may not match on.
    let cannot: &[(&[&str], &[&str], &str)] = &[
        (&["http", "https"], &["sources", "destinations"], "'http' or 'https'"),
        (&["tcp", "tls", "udp", "tls_passthrough"], &["methods", "hosts", "paths", "headers"], STREAM_PROTOCOLS),
        (&["grpc", "grpcs"], &["methods", "sources", "destinations"], "'grpc' or 'grpcs'"),
    ];
    for (group, fields, names) in cannot {
        if protocols.iter().any(|p| group.contains(p)) {
            for f in fields.iter().filter(|f| set(f)) {
                out.push(Violation::field(f, format!("cannot set '{f}' when 'protocols' is {names}")));
            }
        }
    }
    if set("snis") && !protocols.iter().any(|p| matches!(*p, "grpcs" | "https" | "tls" | "tls_passthrough")) {
        out.push(Violation::field("snis", "length must be 0"));
        out.push(Violation::entity(
            "'snis' can only be set when 'protocols' is 'grpcs', 'https', 'tls' or 'tls_passthrough'",
        ));
    }
    out
}

const STREAM_PROTOCOLS: &str = "'tcp', 'tls', 'tls_passthrough' or 'udp'";

/// A route must match on something its protocols can see (Kong's protocol subschemas'
/// `conditional_at_least_one_of`, reported even beside invalid fields): an HTTP route on the
/// request, a gRPC one on hosts, headers or paths, a stream one on addresses or SNIs.
fn route_match_attributes(rec: &Obj) -> Vec<Violation> {
    let protocols: Vec<&str> = rec
        .get("protocols")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let has = |p: &str| protocols.contains(&p);
    let only = |group: &[&str]| !protocols.is_empty() && protocols.iter().all(|p| group.contains(p));
    // Kong applies the rules of the first protocol it knows.
    let (needed, when): (&[&str], &str) = match protocols.iter().find(|p| ALL_PROTOCOLS.contains(p)) {
        Some(&"http" | &"https") if has("https") => (&["methods", "hosts", "headers", "paths", "snis"], "'https'"),
        Some(&"http" | &"https") => (&["methods", "hosts", "headers", "paths"], "'http'"),
        Some(&"grpc" | &"grpcs") if has("grpcs") => (&["hosts", "headers", "paths", "snis"], "'grpcs'"),
        Some(&"grpc" | &"grpcs") => (&["hosts", "headers", "paths"], "'grpc'"),
        _ if only(&["tcp", "tls", "udp"]) => (&["sources", "destinations", "snis"], "'tcp', 'tls' or 'udp'"),
        _ if only(&["tls_passthrough"]) => {
            if is_nonempty(rec.get("snis")) {
                return Vec::new();
            }
            return vec![Violation::entity("must set snis when 'protocols' is 'tls_passthrough'")];
        }
        _ => return Vec::new(),
    };
    if needed.iter().any(|f| is_nonempty(rec.get(*f))) {
        return Vec::new();
    }
    let list: Vec<String> = needed.iter().map(|f| format!("'{f}'")).collect();
    vec![Violation::entity(format!("must set one of {} when 'protocols' is {when}", list.join(", ")))]
}

fn plugins() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            // Kong lets a PATCH change a plugin's name when the new plugin takes the config.
            Field::new("name", Type::String).required(),
            td::utf8_name("instance_name"),
            td::created_at(),
            td::updated_at(),
            td::foreign("route", "routes"),
            td::foreign("service", "services"),
            td::foreign("consumer", "consumers"),
            td::foreign("consumer_group", "consumer_groups"),
            Field::new("config", Type::Any),
            Field::new(
                "protocols",
                Type::Set(Box::new(Field::new("protocol", Type::String).check(Check::OneOf(ALL_PROTOCOLS)))),
            ),
            Field::new("enabled", Type::Boolean).required().default(json!(true)),
            td::tags(),
        ],
        checks: vec![],
    })
}

fn keyauth_credentials() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::foreign("consumer", "consumers").required(),
            Field::new("key", Type::String).auto(Auto::Key),
            td::tags(),
        ],
        checks: vec![],
    })
}

/// The longest PEM a certificate field takes (Kong has no bound; 64 KiB covers long chains).
const MAX_PEM: usize = 65_536;

fn pem(name: &'static str) -> Field {
    Field::new(name, Type::String).check(Check::LenMin(1))
}

fn bounded_pem(v: &Value) -> Result<&[u8], String> {
    let s = v.as_str().unwrap_or_default();
    if s.len() > MAX_PEM {
        return Err(format!("length must be at most {MAX_PEM}"));
    }
    Ok(s.as_bytes())
}

fn certificates() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::updated_at(),
            pem("cert").required().check(Check::Custom(check_cert)),
            pem("key").required().check(Check::Custom(check_key)),
            pem("cert_alt").check(Check::Custom(check_cert)),
            pem("key_alt").check(Check::Custom(check_key)),
            td::tags(),
            // Transient: stored as `snis` rows, not in the certificate.
            Field::new(
                "snis",
                Type::Array(Box::new(Field::new("sni", Type::String).check(Check::Custom(td::check_wildcard_host)))),
            ),
        ],
        checks: vec![EntityCheck::Custom(certificate_checks)],
    })
}

fn check_cert(v: &Value) -> Result<(), String> {
    crate::tls::material::certificates(bounded_pem(v)?).map(|_| ()).map_err(|e| e.to_string())
}

fn check_key(v: &Value) -> Result<(), String> {
    crate::tls::material::private_key(bounded_pem(v)?).map(|_| ()).map_err(|e| e.to_string())
}

/// Kong's certificate entity checks: the pairs match, both alternative fields or neither, and the
/// alternative is of the other key type.
fn certificate_checks(rec: &Obj) -> Vec<Violation> {
    use crate::tls::material;
    let text = |f: &str| rec.get(f).and_then(Value::as_str).filter(|s| !s.is_empty());
    let mut out = Vec::new();
    let main = match (text("cert"), text("key")) {
        (Some(c), Some(k)) => match material::certified_key(c.as_bytes(), k.as_bytes()) {
            Ok(ck) => Some(ck),
            Err(material::MaterialError::Mismatch) => {
                out.push(Violation::entity("certificate does not match key"));
                None
            }
            Err(e) => {
                out.push(Violation::entity(e.to_string()));
                None
            }
        },
        _ => None,
    };
    match (text("cert_alt"), text("key_alt")) {
        (None, None) => {}
        (Some(c), Some(k)) => match material::certified_key(c.as_bytes(), k.as_bytes()) {
            Ok(alt) => {
                let kind = |ck: &tokio_rustls::rustls::sign::CertifiedKey| {
                    ck.end_entity_cert().ok().and_then(|d| material::info(d).ok()).map(|i| i.key_type)
                };
                if let Some(main) = &main
                    && kind(main) == kind(&alt)
                {
                    out.push(Violation::entity(
                        "certificate and alternative certificate need to have different type (e.g. RSA and ECDSA), the provided certificates were both of the same type",
                    ));
                }
            }
            Err(material::MaterialError::Mismatch) => {
                out.push(Violation::entity("alternative certificate does not match key"));
            }
            Err(e) => out.push(Violation::entity(e.to_string())),
        },
        _ => out.push(Violation::entity("all or none of these fields must be set: 'cert_alt', 'key_alt'")),
    }
    out
}

fn snis() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::updated_at(),
            Field::new("name", Type::String).required().check(Check::Custom(td::check_wildcard_host)),
            td::tags(),
            td::foreign("certificate", "certificates").required(),
        ],
        checks: vec![],
    })
}

fn ca_certificates() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::updated_at(),
            pem("cert").required().check(Check::Custom(check_ca_cert)),
            Field::new("cert_digest", Type::String).check(Check::LenMin(1)),
            td::tags(),
        ],
        checks: vec![],
    })
}

/// One certificate, a CA, not expired (Kong's `ca_certificates` checks).
fn check_ca_cert(v: &Value) -> Result<(), String> {
    use crate::tls::material;
    let chain = material::certificates(bounded_pem(v)?).map_err(|e| e.to_string())?;
    if chain.len() > 1 {
        return Err("please submit only one certificate at a time".into());
    }
    let info = chain.first().map(|c| material::info(c)).transpose().map_err(|e| e.to_string())?;
    let Some(info) = info else { return Err("invalid certificate: no certificate".into()) };
    if info.not_after < crate::clock::now_secs() {
        return Err("certificate expired, \"Not After\" time is in the past".into());
    }
    if !info.is_ca {
        return Err("certificate does not appear to be a CA because it is missing the \"CA\" basic constraint".into());
    }
    Ok(())
}

fn consumer_groups() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![td::id(), td::created_at(), td::updated_at(), td::utf8_name("name").required(), td::tags()],
        checks: vec![],
    })
}

fn acls() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::foreign("consumer", "consumers").required(),
            Field::new("group", Type::String).required(),
            td::tags(),
        ],
        checks: vec![],
    })
}

fn group_memberships() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::foreign("consumer_group", "consumer_groups").required(),
            td::foreign("consumer", "consumers").required(),
        ],
        checks: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::validate;

    fn obj(v: Value) -> Obj {
        match v {
            Value::Object(m) => m,
            _ => Obj::new(),
        }
    }

    #[test]
    fn service_url_shorthand() {
        let mut input = obj(json!({"url": "https://example.com:8443/v1"}));
        expand_service_url(&mut input).expect("valid");
        assert_eq!(
            Value::Object(input),
            json!({"protocol": "https", "host": "example.com", "port": 8443, "path": "/v1"})
        );
        let mut input = obj(json!({"url": "http://127.0.0.1"}));
        expand_service_url(&mut input).expect("valid");
        assert_eq!(input["port"], json!(80));
        assert_eq!(input["path"], Value::Null);
        let mut input = obj(json!({"url": "invalid url"}));
        expand_service_url(&mut input).expect("no error of its own");
        assert_eq!(Value::Object(input), json!({"protocol": "http", "host": null, "port": 80, "path": "invalid url"}));
    }

    #[test]
    fn urls_split_like_luasocket() {
        assert_eq!(
            UrlParts::split("https://user:pw@[::1]:8443/a/b?q=1#f"),
            UrlParts { scheme: Some("https"), host: Some("::1"), port: Some("8443"), path: Some("/a/b") }
        );
        assert_eq!(
            UrlParts::split("example.test:443"),
            UrlParts { scheme: Some("example.test"), path: Some("443"), ..UrlParts::default() }
        );
        assert_eq!(UrlParts::split("//h:x"), UrlParts { host: Some("h"), port: Some("x"), ..UrlParts::default() });
    }

    #[test]
    fn route_needs_a_matching_attribute() {
        let err = validate(Kind::Route.schema(), &obj(json!({"protocols": ["http"]}))).expect_err("invalid");
        assert_eq!(
            err.message(),
            "schema violation (must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http')"
        );
        let err = validate(Kind::Route.schema(), &obj(json!({}))).expect_err("invalid");
        assert!(err.message().contains("'snis' when 'protocols' is 'https'"), "{}", err.message());
    }

    #[test]
    fn route_defaults() {
        let r = validate(Kind::Route.schema(), &obj(json!({"paths": ["/a"]}))).expect("valid");
        assert_eq!(r["strip_path"], json!(true));
        assert_eq!(r["protocols"], json!(["http", "https"]));
        assert_eq!(r["https_redirect_status_code"], json!(426));
        assert_eq!(r["service"], Value::Null);
    }

    #[test]
    fn route_rejects_host_header_and_mixed_protocols() {
        let err = validate(Kind::Route.schema(), &obj(json!({"headers": {"Host": ["a"]}}))).expect_err("invalid");
        assert!(err.message().contains("cannot contain 'host' header"), "{}", err.message());
        let err = validate(Kind::Route.schema(), &obj(json!({"protocols": ["http", "tcp"], "paths": ["/"]})))
            .expect_err("invalid");
        assert!(err.message().contains("mutually exclusive"), "{}", err.message());
    }

    /// Found by `snapshot::properties`: a stream or gRPC route without anything to match on was
    /// accepted (and, in the HTTP router, took every unmatched request). Kong's subschemas refuse it.
    #[test]
    fn stream_and_grpc_routes_need_their_own_attributes() {
        let message = |body: Value| validate(Kind::Route.schema(), &obj(body)).expect_err("invalid").message();
        assert_eq!(
            message(json!({"protocols": ["tcp"]})),
            "schema violation (must set one of 'sources', 'destinations', 'snis' when 'protocols' is 'tcp', 'tls' or 'udp')"
        );
        assert_eq!(
            message(json!({"protocols": ["tcp"], "paths": ["/a"], "sources": [{"ip": "10.0.0.1"}]})),
            "schema violation (paths: cannot set 'paths' when 'protocols' is 'tcp', 'tls', 'tls_passthrough' or 'udp')"
        );
        assert_eq!(
            message(json!({"protocols": ["tls_passthrough"]})),
            "schema violation (must set snis when 'protocols' is 'tls_passthrough')"
        );
        assert_eq!(
            message(json!({"protocols": ["grpc"]})),
            "schema violation (must set one of 'hosts', 'headers', 'paths' when 'protocols' is 'grpc')"
        );
        assert_eq!(
            message(json!({"protocols": ["grpcs"], "paths": ["/a"], "methods": ["GET"]})),
            "schema violation (methods: cannot set 'methods' when 'protocols' is 'grpc' or 'grpcs')"
        );
        for ok in [
            json!({"protocols": ["tcp"], "destinations": [{"ip": "10.0.0.1", "port": 80}]}),
            json!({"protocols": ["tls"], "snis": ["a.test"]}),
            json!({"protocols": ["grpc", "grpcs"], "hosts": ["a.test"]}),
        ] {
            assert!(validate(Kind::Route.schema(), &obj(ok.clone())).is_ok(), "{ok}");
        }
    }

    #[test]
    fn service_path_only_for_http() {
        let err = validate(Kind::Service.schema(), &obj(json!({"host": "a", "protocol": "tcp", "path": "/x"})))
            .expect_err("invalid");
        assert_eq!(
            err.message(),
            "2 schema violations (failed conditional validation given value of field 'protocol'; path: value must be null)"
        );
    }
}
