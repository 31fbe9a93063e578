//! The entity kinds the gateway stores (consumers, services, routes, plugins, key-auth credentials),
//! each with its Kong 3.x schema, endpoint key, unique fields and foreign keys.

use std::sync::OnceLock;

use serde_json::{Value, json};

use super::schema::{Auto, Check, EntityCheck, Field, Obj, Schema, Type, Violation};
use super::typedefs::{self as td, ALL_PROTOCOLS};

/// Every entity kind, in dependency order (a kind only references kinds before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Consumer,
    Service,
    Route,
    Plugin,
    KeyAuth,
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

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Consumer, Kind::Service, Kind::Route, Kind::Plugin, Kind::KeyAuth];

    /// Table and schema name (`keyauth_credentials`).
    pub fn table(self) -> &'static str {
        match self {
            Kind::Consumer => "consumers",
            Kind::Service => "services",
            Kind::Route => "routes",
            Kind::Plugin => "plugins",
            Kind::KeyAuth => "keyauth_credentials",
        }
    }

    pub fn from_table(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.table() == name)
    }

    /// The field a path segment addresses when it is not a UUID.
    pub fn endpoint_key(self) -> &'static str {
        match self {
            Kind::Consumer => "username",
            Kind::Service | Kind::Route => "name",
            Kind::Plugin => "instance_name",
            Kind::KeyAuth => "key",
        }
    }

    /// Fields with a unique constraint (each has its own column).
    pub fn unique_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Consumer => &["username", "custom_id"],
            Kind::Service | Kind::Route => &["name"],
            Kind::Plugin => &["instance_name"],
            Kind::KeyAuth => &["key"],
        }
    }

    pub fn foreign_keys(self) -> &'static [ForeignKey] {
        const ROUTE: &[ForeignKey] =
            &[ForeignKey { field: "service", kind: Kind::Service, on_delete: OnDelete::Restrict }];
        const PLUGIN: &[ForeignKey] = &[
            ForeignKey { field: "route", kind: Kind::Route, on_delete: OnDelete::Cascade },
            ForeignKey { field: "service", kind: Kind::Service, on_delete: OnDelete::Cascade },
            ForeignKey { field: "consumer", kind: Kind::Consumer, on_delete: OnDelete::Cascade },
        ];
        const KEYAUTH: &[ForeignKey] =
            &[ForeignKey { field: "consumer", kind: Kind::Consumer, on_delete: OnDelete::Cascade }];
        match self {
            Kind::Route => ROUTE,
            Kind::Plugin => PLUGIN,
            Kind::KeyAuth => KEYAUTH,
            Kind::Consumer | Kind::Service => &[],
        }
    }

    /// Whether a `ttl` option may be given on write (the entity then expires).
    pub fn has_ttl(self) -> bool {
        matches!(self, Kind::KeyAuth)
    }

    pub fn schema(self) -> &'static Schema {
        static SCHEMAS: OnceLock<[Schema; 5]> = OnceLock::new();
        let all = SCHEMAS.get_or_init(|| [consumers(), services(), routes(), plugins(), keyauth_credentials()]);
        &all[self as usize]
    }
}

fn consumers() -> Schema {
    Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::updated_at(),
            Field::new("username", Type::String),
            Field::new("custom_id", Type::String),
            td::tags(),
        ],
        checks: vec![EntityCheck::AtLeastOneOf(&["custom_id", "username"])],
    }
}

fn services() -> Schema {
    Schema {
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
    }
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

/// Expands the write-only `url` shorthand into protocol, host, port and path (Kong's rules).
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
    let with_scheme = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
    let parsed =
        url::Url::parse(&with_scheme).map_err(|e| Violation::field("url", format!("could not parse url. {e}")))?;
    let Some(host) = parsed.host_str() else {
        return Err(Violation::field("url", "missing host in url"));
    };
    let explicit_port = parsed.port();
    let protocol = if text.contains("://") {
        parsed.scheme().to_string()
    } else if explicit_port == Some(443) {
        "https".into()
    } else {
        "http".into()
    };
    let port = explicit_port.map(i64::from).unwrap_or(match protocol.as_str() {
        "https" => 443,
        _ => 80,
    });
    let path = parsed.path();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    input.insert("protocol".into(), json!(protocol));
    input.insert("host".into(), json!(host));
    input.insert("port".into(), json!(port));
    let raw_has_path = text.split("://").last().is_some_and(|rest| rest.contains('/'));
    input.insert("path".into(), if raw_has_path && !path.is_empty() { json!(path) } else { Value::Null });
    Ok(())
}

fn routes() -> Schema {
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
            Field::new("regex_priority", Type::Integer).default(json!(0)),
            Field::new("path_handling", Type::String).default(json!("v0")).check(Check::OneOf(&["v0", "v1"])),
        ],
        checks: vec![EntityCheck::Custom(route_checks)],
    }
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
    let is_http = protocols.iter().any(|p| matches!(*p, "http" | "https"));
    if is_http {
        for f in ["sources", "destinations"] {
            if set(f) {
                out.push(Violation::field(f, format!("cannot set '{f}' when 'protocols' is 'http' or 'https'")));
            }
        }
        let https = protocols.contains(&"https");
        let mut needed: Vec<&str> = vec!["methods", "hosts", "headers", "paths"];
        if https {
            needed.push("snis");
        }
        if !needed.iter().any(|f| set(f)) {
            let list: Vec<String> = needed.iter().map(|f| format!("'{f}'")).collect();
            let proto = if https { "https" } else { "http" };
            out.push(Violation::entity(format!("must set one of {} when 'protocols' is '{proto}'", list.join(", "))));
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

fn plugins() -> Schema {
    Schema {
        fields: vec![
            td::id(),
            Field::new("name", Type::String).required().immutable(),
            td::utf8_name("instance_name"),
            td::created_at(),
            td::updated_at(),
            td::foreign("route", "routes"),
            td::foreign("service", "services"),
            td::foreign("consumer", "consumers"),
            Field::new("config", Type::Any),
            Field::new(
                "protocols",
                Type::Set(Box::new(Field::new("protocol", Type::String).check(Check::OneOf(ALL_PROTOCOLS)))),
            ),
            Field::new("enabled", Type::Boolean).required().default(json!(true)),
            td::tags(),
        ],
        checks: vec![],
    }
}

fn keyauth_credentials() -> Schema {
    Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::foreign("consumer", "consumers").required(),
            Field::new("key", Type::String).auto(Auto::Key),
            td::tags(),
        ],
        checks: vec![],
    }
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
