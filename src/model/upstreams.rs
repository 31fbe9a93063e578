//! Upstreams and their targets as Kong 3.x defines them (`kong/db/schema/entities/upstreams.lua`,
//! `targets.lua`, `kong/db/dao/targets.lua`): the schemas with every default of `healthchecks`, the
//! `algorithm` / `hash_on` shorthands in Kong's order, the hashing entity checks, and a target's
//! `host[:port]` rewritten with port 8000 when it has none.

use std::net::IpAddr;
use std::sync::OnceLock;

use serde_json::{Value, json};

use super::schema::{Auto, Check, EntityCheck, Field, Obj, Schema, Type, Violation};
use super::typedefs as td;

pub const ALGORITHMS: &[&str] = &["consistent-hashing", "least-connections", "round-robin", "latency"];
pub const HASH_ON: &[&str] = &["none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture"];
/// A target's port when it names none.
pub const DEFAULT_TARGET_PORT: u16 = 8000;

fn statuses(name: &'static str, default: &[i64]) -> Field {
    Field::new(name, Type::Array(Box::new(Field::new("status", Type::Integer).check(Check::Between(100, 999)))))
        .default(json!(default))
}

fn counter(name: &'static str) -> Field {
    Field::new(name, Type::Integer).default(json!(0)).check(Check::Between(0, 255))
}

fn interval() -> Field {
    Field::new("interval", Type::Number).default(json!(0)).check(Check::Between(0, 65535))
}

fn record(name: &'static str, fields: Vec<Field>) -> Field {
    // An absent record is its fields' defaults.
    Field::new(name, Type::Record(fields)).required().default(json!({}))
}

const CHECK_TYPES: &[&str] = &["tcp", "http", "https", "grpc", "grpcs"];

fn healthchecks() -> Field {
    let active = record(
        "active",
        vec![
            Field::new("type", Type::String).default(json!("http")).check(Check::OneOf(CHECK_TYPES)),
            Field::new("timeout", Type::Number).default(json!(1)).check(Check::Between(0, 65535)),
            Field::new("concurrency", Type::Integer).default(json!(10)).check(Check::Between(1, 2_147_483_648)),
            Field::new("http_path", Type::String).default(json!("/")).check(Check::Custom(td::check_path)),
            Field::new("https_sni", Type::String).check(Check::Custom(check_sni)),
            Field::new("https_verify_certificate", Type::Boolean).default(json!(true)),
            Field::new(
                "headers",
                Type::Map(
                    Box::new(Field::new("name", Type::String).check(Check::Custom(td::check_header_name))),
                    Box::new(Field::new("values", Type::Array(Box::new(Field::new("value", Type::String))))),
                ),
            ),
            record("healthy", vec![interval(), statuses("http_statuses", &[200, 302]), counter("successes")]),
            record(
                "unhealthy",
                vec![
                    interval(),
                    statuses("http_statuses", &[429, 404, 500, 501, 502, 503, 504, 505]),
                    counter("tcp_failures"),
                    counter("timeouts"),
                    counter("http_failures"),
                ],
            ),
        ],
    );
    let passive = record(
        "passive",
        vec![
            Field::new("type", Type::String).default(json!("http")).check(Check::OneOf(CHECK_TYPES)),
            record(
                "healthy",
                vec![
                    statuses(
                        "http_statuses",
                        &[
                            200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306, 307,
                            308,
                        ],
                    ),
                    counter("successes"),
                ],
            ),
            record(
                "unhealthy",
                vec![
                    statuses("http_statuses", &[429, 500, 503]),
                    counter("tcp_failures"),
                    counter("timeouts"),
                    counter("http_failures"),
                ],
            ),
        ],
    );
    record(
        "healthchecks",
        vec![active, passive, Field::new("threshold", Type::Number).default(json!(0)).check(Check::Between(0, 100))],
    )
}

pub fn upstreams() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            td::created_at(),
            td::updated_at(),
            Field::new("name", Type::String).required().check(Check::Custom(check_name)),
            Field::new("algorithm", Type::String).default(json!("round-robin")).check(Check::OneOf(ALGORITHMS)),
            Field::new("hash_on", Type::String).default(json!("none")).check(Check::OneOf(HASH_ON)),
            Field::new("hash_fallback", Type::String).default(json!("none")).check(Check::OneOf(HASH_ON)),
            td::header_name("hash_on_header"),
            td::header_name("hash_fallback_header"),
            Field::new("hash_on_cookie", Type::String).check(Check::Custom(check_cookie_name)),
            Field::new("hash_on_cookie_path", Type::String).default(json!("/")).check(Check::Custom(td::check_path)),
            Field::new("hash_on_query_arg", Type::String).check(Check::LenMin(1)),
            Field::new("hash_fallback_query_arg", Type::String).check(Check::LenMin(1)),
            Field::new("hash_on_uri_capture", Type::String).check(Check::LenMin(1)),
            Field::new("hash_fallback_uri_capture", Type::String).check(Check::LenMin(1)),
            Field::new("slots", Type::Integer).default(json!(10000)).check(Check::Between(10, 65536)),
            healthchecks(),
            td::tags(),
            Field::new("host_header", Type::String).check(Check::Custom(check_host_with_optional_port)),
            td::foreign("client_certificate", "certificates"),
            Field::new("use_srv_name", Type::Boolean).default(json!(false)),
        ],
        checks: vec![EntityCheck::Custom(upstream_checks)],
    })
}

pub fn targets() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            td::id(),
            // Kong's targets carry timestamps in seconds with milliseconds.
            Field::new("created_at", Type::Number).auto(Auto::TimestampMs).check(Check::Between(0, td::MAX_TIMESTAMP)),
            Field::new("updated_at", Type::Number).auto(Auto::TimestampMs).check(Check::Between(0, td::MAX_TIMESTAMP)),
            td::foreign("upstream", "upstreams").required(),
            Field::new("target", Type::String).required().check(Check::Custom(check_target)),
            Field::new("weight", Type::Integer).default(json!(100)).check(Check::Between(0, 65535)),
            td::tags(),
        ],
        checks: vec![],
    })
}

/// An upstream name: a host name, not an IP, without a port.
fn check_name(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match td::split_host_port(s) {
        _ if s.parse::<IpAddr>().is_ok() => Err(format!("Invalid name ('{s}'); no ip addresses allowed")),
        Some((host, _)) if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() => {
            Err(format!("Invalid name ('{s}'); no ip addresses allowed"))
        }
        Some((_, Some(_))) => Err(format!("Invalid name ('{s}'); no port allowed")),
        Some((_, None)) => Ok(()),
        None => Err(format!("Invalid name ('{s}'); must be a valid hostname")),
    }
}

fn check_target(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match td::split_host_port(s) {
        Some(_) => Ok(()),
        None => Err(format!("Invalid target ('{s}'); not a valid hostname or ip address")),
    }
}

/// `typedefs.sni`: a name, not an IP, without a port.
fn check_sni(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match td::split_host_port(s) {
        Some((_, Some(_))) => Err("must not have a port".into()),
        Some((host, None)) if host.parse::<IpAddr>().is_ok() => Err("must not be an IP".into()),
        Some(_) => Ok(()),
        None => Err(format!("invalid value: {s}")),
    }
}

fn check_host_with_optional_port(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match td::split_host_port(s) {
        Some(_) => Ok(()),
        None => Err(format!("invalid hostname: {s}")),
    }
}

/// A cookie name is an RFC 6265 token.
fn check_cookie_name(v: &Value) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let token = |b: u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b);
    if !s.is_empty() && s.bytes().all(token) {
        Ok(())
    } else {
        Err(format!("bad cookie name '{s}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"))
    }
}

/// Kong's shorthands, in its order, on the input as given: `least-connections` and `latency` take
/// no hash (`hash_on` becomes `none`); then a given `hash_on` picks the algorithm (`none`:
/// round-robin unless consistent hashing is named with it; any other: consistent hashing).
pub fn apply_shorthands(input: &mut Obj) {
    if let Some(Value::String(algorithm)) = input.get("algorithm")
        && matches!(algorithm.as_str(), "least-connections" | "latency")
    {
        input.insert("hash_on".into(), Value::Null);
    }
    match input.get("hash_on") {
        None => {}
        Some(Value::Null) => {
            input.insert("hash_on".into(), json!("none"));
        }
        // Kong would also turn `consistent-hashing` given with `hash_on: none` into round-robin;
        // kept here, so that a stored upstream (which names both) reads back unchanged, an export
        // imports as it was exported.
        Some(Value::String(on))
            if on == "none" && input.get("algorithm").and_then(Value::as_str) != Some("consistent-hashing") =>
        {
            input.insert("algorithm".into(), json!("round-robin"));
        }
        Some(Value::String(on)) if on == "none" => {}
        Some(Value::String(_)) => {
            input.insert("algorithm".into(), json!("consistent-hashing"));
        }
        Some(_) => {}
    }
}

/// Kong's `format_host(target, 8000)`: a target without a port gets 8000; an IPv6 address is
/// bracketed. A target that does not parse is left as it is, for the schema to refuse.
pub fn stored_target(target: &str) -> String {
    match target.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{DEFAULT_TARGET_PORT}"),
        Ok(IpAddr::V4(ip)) => format!("{ip}:{DEFAULT_TARGET_PORT}"),
        Err(_) => match td::split_host_port(target) {
            Some((host, None)) => format!("{host}:{DEFAULT_TARGET_PORT}"),
            _ => target.to_string(),
        },
    }
}

/// Writes the `target` of an input in its stored form ([`stored_target`]).
pub fn normalize_target(input: &mut Obj) {
    if let Some(Value::String(target)) = input.get_mut("target") {
        *target = stored_target(target);
    }
}

fn given<'a>(rec: &'a Obj, field: &str) -> Option<&'a str> {
    rec.get(field).and_then(Value::as_str)
}

/// The hashing checks (Kong's `entity_checks` of upstreams); each failed conditional also names the
/// field it depended on.
fn upstream_checks(rec: &Obj) -> Vec<Violation> {
    let mut out = Vec::new();
    let on = given(rec, "hash_on").unwrap_or("none");
    let fallback = given(rec, "hash_fallback").unwrap_or("none");
    let conditional = |out: &mut Vec<Violation>, field: &str, message: String, because: &str| {
        out.push(Violation::field(field, message));
        out.push(Violation::entity(format!("failed conditional validation given value of field '{because}'")));
    };
    let required = |name: &str| given(rec, name).is_none();
    if on == "header" && required("hash_on_header") {
        conditional(&mut out, "hash_on_header", "required field missing".into(), "hash_on");
    }
    if fallback == "header" && required("hash_fallback_header") {
        conditional(&mut out, "hash_fallback_header", "required field missing".into(), "hash_fallback");
    }
    if on == "cookie" && required("hash_on_cookie") {
        conditional(&mut out, "hash_on_cookie", "required field missing".into(), "hash_on");
    }
    if fallback == "cookie" && required("hash_on_cookie") {
        conditional(&mut out, "hash_on_cookie", "required field missing".into(), "hash_fallback");
    }
    if on == "query_arg" && required("hash_on_query_arg") {
        conditional(&mut out, "hash_on_query_arg", "required field missing".into(), "hash_on");
    }
    if fallback == "query_arg" && required("hash_fallback_query_arg") {
        conditional(&mut out, "hash_fallback_query_arg", "required field missing".into(), "hash_fallback");
    }
    if on == "uri_capture" && required("hash_on_uri_capture") {
        conditional(&mut out, "hash_on_uri_capture", "required field missing".into(), "hash_on");
    }
    if fallback == "uri_capture" && required("hash_fallback_uri_capture") {
        conditional(&mut out, "hash_fallback_uri_capture", "required field missing".into(), "hash_fallback");
    }
    let allowed: Vec<&str> = match on {
        "none" | "cookie" => vec!["none"],
        "consumer" | "ip" | "path" => HASH_ON.iter().copied().filter(|h| *h != on).collect(),
        _ => HASH_ON.to_vec(),
    };
    if !allowed.contains(&fallback) {
        conditional(&mut out, "hash_fallback", format!("expected one of: {}", allowed.join(", ")), "hash_on");
    }
    for (a, b) in [
        ("hash_on_header", "hash_fallback_header"),
        ("hash_on_query_arg", "hash_fallback_query_arg"),
        ("hash_on_uri_capture", "hash_fallback_uri_capture"),
    ] {
        let (x, y) = (given(rec, a), given(rec, b));
        let same = match (x, y) {
            (Some(x), Some(y)) if a == "hash_on_header" => x.eq_ignore_ascii_case(y),
            (Some(x), Some(y)) => x == y,
            _ => false,
        };
        if same {
            out.push(Violation::entity(format!("values of these fields must be distinct: '{a}', '{b}'")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::{into_obj as obj, validate};

    fn upstream(input: Value) -> Result<Obj, String> {
        let mut input = obj(input);
        apply_shorthands(&mut input);
        validate(upstreams(), &input).map_err(|v| v.message())
    }

    #[test]
    fn an_upstream_gets_every_default_of_kong() {
        let u = upstream(json!({"name": "backend.test"})).expect("valid");
        assert_eq!(u["algorithm"], "round-robin");
        assert_eq!(u["hash_on"], "none");
        assert_eq!(u["slots"], 10000);
        assert_eq!(u["hash_on_cookie_path"], "/");
        let hc = &u["healthchecks"];
        assert_eq!(hc["threshold"], 0);
        assert_eq!(hc["active"]["type"], "http");
        assert_eq!(hc["active"]["concurrency"], 10);
        assert_eq!(hc["active"]["healthy"]["http_statuses"], json!([200, 302]));
        assert_eq!(hc["active"]["unhealthy"]["http_statuses"], json!([429, 404, 500, 501, 502, 503, 504, 505]));
        assert_eq!(hc["passive"]["unhealthy"]["http_statuses"], json!([429, 500, 503]));
        assert_eq!(hc["passive"]["healthy"]["successes"], 0);
        assert_eq!(u["use_srv_name"], false);
    }

    #[test]
    fn the_shorthands_run_in_kongs_order() {
        let u = upstream(json!({"name": "a", "algorithm": "round-robin", "hash_on": "ip"})).expect("valid");
        assert_eq!((u["algorithm"].as_str(), u["hash_on"].as_str()), (Some("consistent-hashing"), Some("ip")));
        let u = upstream(json!({"name": "a", "algorithm": "least-connections", "hash_on": "ip"})).expect("valid");
        assert_eq!((u["algorithm"].as_str(), u["hash_on"].as_str()), (Some("least-connections"), Some("none")));
        let u = upstream(json!({"name": "a", "hash_on": "none"})).expect("valid");
        assert_eq!(u["algorithm"], "round-robin");
        // Unlike Kong, consistent hashing named with `hash_on: none` stays: what is stored (as
        // `{"algorithm": "consistent-hashing"}` alone stores it) validates back to itself.
        let created = upstream(json!({"name": "a", "algorithm": "consistent-hashing"})).expect("valid");
        assert_eq!(
            (created["algorithm"].as_str(), created["hash_on"].as_str()),
            (Some("consistent-hashing"), Some("none"))
        );
        let again = upstream(Value::Object(created.clone())).expect("valid");
        assert_eq!(again["algorithm"], created["algorithm"]);
    }

    #[test]
    fn names_must_be_host_names_without_ips_or_ports() {
        assert!(upstream(json!({"name": "10.0.0.1"})).expect_err("ip").contains("no ip addresses allowed"));
        assert!(upstream(json!({"name": "a.test:80"})).expect_err("port").contains("no port allowed"));
        assert!(upstream(json!({"name": "a b"})).expect_err("bad").contains("must be a valid hostname"));
    }

    #[test]
    fn hashing_needs_its_fields_and_a_fallback_that_differs() {
        let e = upstream(json!({"name": "a", "hash_on": "header"})).expect_err("no header");
        assert!(e.contains("hash_on_header: required field missing"), "{e}");
        assert!(e.contains("failed conditional validation given value of field 'hash_on'"), "{e}");
        let e = upstream(json!({"name": "a", "hash_on": "ip", "hash_fallback": "ip"})).expect_err("same");
        assert!(e.contains("expected one of: none, consumer, header, cookie, path, query_arg, uri_capture"), "{e}");
        let e = upstream(json!({"name": "a", "hash_on": "cookie", "hash_on_cookie": "c", "hash_fallback": "ip"}))
            .expect_err("cookie then ip");
        assert!(e.contains("expected one of: none"), "{e}");
        let e = upstream(json!({"name": "a", "hash_on": "query_arg", "hash_on_query_arg": "q",
            "hash_fallback": "query_arg", "hash_fallback_query_arg": "q"}))
        .expect_err("not distinct");
        assert!(
            e.contains("values of these fields must be distinct: 'hash_on_query_arg', 'hash_fallback_query_arg'"),
            "{e}"
        );
        let e = upstream(json!({"name": "a", "slots": 5, "healthchecks": {"active": {"concurrency": 0}}}))
            .expect_err("bounds");
        assert!(e.contains("value should be between 10 and 65536"), "{e}");
        assert!(e.contains("value should be between 1 and 2147483648"), "{e}");
    }

    #[test]
    fn a_target_without_a_port_gets_8000() {
        for (given, stored) in [
            ("10.0.0.1", "10.0.0.1:8000"),
            ("10.0.0.1:81", "10.0.0.1:81"),
            ("::1", "[::1]:8000"),
            ("[::1]:90", "[::1]:90"),
            ("svc.test", "svc.test:8000"),
        ] {
            let mut input = obj(json!({ "target": given }));
            normalize_target(&mut input);
            assert_eq!(input["target"], stored, "{given}");
        }
        assert!(check_target(&json!("not a host!")).expect_err("bad").contains("not a valid hostname or ip address"));
    }
}
