//! Configuration schemas of rate-limiting (Kong 3.x `kong/plugins/rate-limiting/schema.lua`) and
//! rate-limiting-advanced (Kong Enterprise's documented fields), with their cross-field checks, and
//! the typed configurations a validated config deserializes into.
//!
//! Bounds Tollgate adds where Kong has none (so that no stored value can overflow a window or a
//! timer): limits at most 2^53 (exact in a double), `sync_rate` at most 3600 s, window sizes from 1 s
//! to one year in whole seconds, `retry_after_jitter_max` at most 3600 s, `error_code` an HTTP
//! status (100–599), `redis.database` up to 2^31-1.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Value, json};

use super::windows::MAX_WINDOWS;
use crate::model::schema::{Auto, Check, EntityCheck, Field, Obj, PathSeg, Schema, Type, Violation};
use crate::model::typedefs;

const LIMIT_BY: &[&str] = &["consumer", "credential", "ip", "service", "header", "path", "consumer-group"];
const PERIODS: [&str; 6] = ["second", "minute", "hour", "day", "month", "year"];

/// The largest limit: integers are exact in a double up to here.
pub const MAX_LIMIT: f64 = 9_007_199_254_740_992.0;
/// The longest `sync_rate`, in seconds.
pub const MAX_SYNC_RATE: f64 = 3600.0;
/// The longest rate-limiting-advanced window, in seconds (a 365-day year).
pub const MAX_WINDOW_SIZE: i64 = 31_536_000;
/// Kong's bound on Redis timeouts, in milliseconds.
const MAX_TIMEOUT_MS: i64 = 2_147_483_646;

/// What the counters are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitBy {
    Consumer,
    Credential,
    Ip,
    Service,
    Header,
    Path,
    ConsumerGroup,
}

/// Where the counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Local,
    Cluster,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowType {
    Sliding,
    Fixed,
}

/// The `redis` record, as validated (connection details Tollgate uses; the rest is accepted).
#[derive(Debug, Clone, Deserialize)]
pub struct RedisConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub timeout: Option<u64>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: Option<i64>,
    pub ssl: bool,
    pub ssl_verify: bool,
}

/// The fields both plugins share, as validated.
#[derive(Debug, Deserialize)]
pub struct SharedConfig {
    pub header_name: Option<String>,
    pub path: Option<String>,
    pub fault_tolerant: bool,
    pub redis: RedisConfig,
    pub hide_client_headers: bool,
    pub error_code: f64,
    pub error_message: String,
}

/// rate-limiting's configuration, as validated.
#[derive(Debug, Deserialize)]
pub struct RateLimitingConfig {
    pub second: Option<f64>,
    pub minute: Option<f64>,
    pub hour: Option<f64>,
    pub day: Option<f64>,
    pub month: Option<f64>,
    pub year: Option<f64>,
    pub limit_by: LimitBy,
    pub policy: Policy,
    pub sync_rate: f64,
    #[serde(flatten)]
    pub shared: SharedConfig,
}

/// rate-limiting-advanced's configuration, as validated.
#[derive(Debug, Deserialize)]
pub struct AdvancedConfig {
    pub limit: Vec<f64>,
    pub window_size: Vec<i64>,
    pub window_type: WindowType,
    pub identifier: LimitBy,
    pub strategy: Policy,
    pub sync_rate: Option<f64>,
    pub namespace: Option<String>,
    pub disable_penalty: bool,
    #[serde(flatten)]
    pub shared: SharedConfig,
}

fn redis_record() -> Field {
    Field::new(
        "redis",
        Type::Record(vec![
            Field::new("host", Type::String),
            typedefs::port("port").default(json!(6379)),
            Field::new("timeout", Type::Integer).default(json!(2000)).check(Check::Between(0, MAX_TIMEOUT_MS)),
            Field::new("username", Type::String),
            // Kong's `len_min = 0`: an empty password is a password (its own tests send one).
            Field::new("password", Type::String).check(Check::LenMin(0)),
            Field::new("database", Type::Integer).default(json!(0)).check(Check::Between(0, 2_147_483_647)),
            Field::new("ssl", Type::Boolean).required().default(json!(false)),
            Field::new("ssl_verify", Type::Boolean).required().default(json!(false)),
            Field::new("server_name", Type::String),
            // Accepted for compatibility with Kong configurations; Tollgate connects to one server.
            Field::new("connect_timeout", Type::Integer).check(Check::Between(0, MAX_TIMEOUT_MS)),
            Field::new("send_timeout", Type::Integer).check(Check::Between(0, MAX_TIMEOUT_MS)),
            Field::new("read_timeout", Type::Integer).check(Check::Between(0, MAX_TIMEOUT_MS)),
            Field::new("keepalive_pool_size", Type::Integer).check(Check::Between(1, MAX_TIMEOUT_MS)),
            Field::new("keepalive_backlog", Type::Integer).check(Check::Between(0, MAX_TIMEOUT_MS)),
            Field::new("sentinel_master", Type::Any),
            Field::new("sentinel_role", Type::Any),
            Field::new("sentinel_addresses", Type::Any),
            Field::new("sentinel_nodes", Type::Any),
            Field::new("sentinel_username", Type::Any),
            Field::new("sentinel_password", Type::Any),
            Field::new("cluster_addresses", Type::Any),
            Field::new("cluster_nodes", Type::Any),
            Field::new("cluster_max_redirections", Type::Any),
            Field::new("connection_is_proxied", Type::Any),
        ]),
    )
    .required()
    .default(json!({}))
}

/// Kong 3.x's deprecated top-level `redis_*` fields of rate-limiting, moved into `redis` (a value
/// already given there wins), each with Kong's deprecation warning.
pub fn redis_shorthands(config: &mut Obj) {
    const MOVED: [(&str, &str); 9] = [
        ("redis_host", "host"),
        ("redis_port", "port"),
        ("redis_password", "password"),
        ("redis_username", "username"),
        ("redis_database", "database"),
        ("redis_timeout", "timeout"),
        ("redis_ssl", "ssl"),
        ("redis_ssl_verify", "ssl_verify"),
        ("redis_server_name", "server_name"),
    ];
    for (old, new) in MOVED {
        let Some(value) = config.remove(old) else { continue };
        if value.is_null() {
            continue;
        }
        tracing::warn!("rate-limiting: config.{old} is deprecated, please use config.redis.{new} instead");
        let redis = config.entry("redis").or_insert_with(|| Value::Object(Obj::new()));
        if redis.is_null() {
            *redis = Value::Object(Obj::new());
        }
        if let Value::Object(redis) = redis {
            redis.entry(new).or_insert(value);
        }
    }
}

fn common_fields() -> Vec<Field> {
    vec![
        Field::new("header_name", Type::String).check(Check::Custom(typedefs::check_header_name)),
        Field::new("path", Type::String).check(Check::Custom(typedefs::check_path)),
        Field::new("fault_tolerant", Type::Boolean).required().default(json!(true)),
        redis_record(),
        Field::new("hide_client_headers", Type::Boolean).required().default(json!(false)),
        Field::new("error_code", Type::Number).default(json!(429)).check(Check::Between(100, 599)),
        Field::new("error_message", Type::String).default(json!("API rate limit exceeded")),
    ]
}

pub fn rate_limiting() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut fields: Vec<Field> = PERIODS
            .iter()
            .map(|p| Field::new(p, Type::Number).check(Check::GreaterThan(0.0)).check(Check::AtMost(MAX_LIMIT)))
            .collect();
        fields.push(
            Field::new("limit_by", Type::String).required().default(json!("consumer")).check(Check::OneOf(LIMIT_BY)),
        );
        fields.push(
            Field::new("policy", Type::String)
                .required()
                .default(json!("local"))
                .check(Check::OneOf(&["local", "cluster", "redis"])),
        );
        fields.push(Field::new("sync_rate", Type::Number).required().default(json!(-1)));
        fields.extend(common_fields());
        Schema {
            fields,
            checks: vec![EntityCheck::Presence(periods_given), EntityCheck::Presence(rate_limiting_checks)],
        }
    })
}

pub fn advanced() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let numbers = |name, elem: Field| Field::new(name, Type::Array(Box::new(elem))).required();
        let mut fields = vec![
            numbers(
                "limit",
                Field::new("value", Type::Number).check(Check::GreaterThan(0.0)).check(Check::AtMost(MAX_LIMIT)),
            ),
            numbers("window_size", Field::new("value", Type::Integer).check(Check::Between(1, MAX_WINDOW_SIZE))),
            Field::new("window_type", Type::String)
                .required()
                .default(json!("sliding"))
                .check(Check::OneOf(&["sliding", "fixed"])),
            Field::new("identifier", Type::String).required().default(json!("consumer")).check(Check::OneOf(LIMIT_BY)),
            Field::new("strategy", Type::String)
                .required()
                .default(json!("local"))
                .check(Check::OneOf(&["local", "cluster", "redis"])),
            Field::new("sync_rate", Type::Number),
            Field::new("namespace", Type::String).auto(Auto::Key),
            Field::new("dictionary_name", Type::String).required().default(json!("kong_rate_limiting_counters")),
            Field::new("retry_after_jitter_max", Type::Number)
                .required()
                .default(json!(0))
                .check(Check::Between(0, 3600)),
            Field::new("disable_penalty", Type::Boolean).required().default(json!(false)),
            Field::new("enforce_consumer_groups", Type::Boolean).required().default(json!(false)),
            Field::new("consumer_groups", Type::Array(Box::new(Field::new("group", Type::String)))),
            Field::new("lock_dictionary_name", Type::String).default(json!("kong_locks")),
        ];
        fields.extend(common_fields());
        Schema { fields, checks: vec![EntityCheck::Presence(advanced_checks)] }
    })
}

fn given(config: &Obj, key: &str) -> bool {
    config.get(key).is_some_and(|v| !v.is_null())
}

/// A `required field missing` at `config.<path>`, with Kong's conditional-validation message.
fn conditional(out: &mut Vec<Violation>, path: &[&str], if_field: &str) {
    out.push(Violation {
        path: path.iter().map(|p| PathSeg::Field((*p).to_string())).collect(),
        message: "required field missing".into(),
    });
    out.push(Violation::entity(format!("failed conditional validation given value of field 'config.{if_field}'")));
}

fn periods_given(config: &Obj) -> Vec<Violation> {
    if PERIODS.iter().any(|p| given(config, p)) {
        return Vec::new();
    }
    let list: Vec<String> = PERIODS.iter().map(|p| format!("'config.{p}'")).collect();
    vec![Violation::entity(format!("at least one of these fields must be non-empty: {}", list.join(", ")))]
}

/// Checks shared by both plugins: what a policy or identifier needs.
fn shared_checks(config: &Obj, policy_field: &str, identifier_field: &str, out: &mut Vec<Violation>) {
    let policy = config.get(policy_field).and_then(Value::as_str).unwrap_or("local");
    if policy == "redis" {
        let redis = config.get("redis").and_then(Value::as_object);
        if !redis.is_some_and(|r| given(r, "host")) {
            conditional(out, &["redis", "host"], policy_field);
        }
    }
    match config.get(identifier_field).and_then(Value::as_str) {
        Some("header") if !given(config, "header_name") => conditional(out, &["header_name"], identifier_field),
        Some("path") if !given(config, "path") => conditional(out, &["path"], identifier_field),
        _ => {}
    }
}

fn check_sync_rate(rate: Option<f64>, out: &mut Vec<Violation>) {
    if let Some(r) = rate
        && r != -1.0
        && r != 0.0
        && !(0.02..=MAX_SYNC_RATE).contains(&r)
    {
        out.push(Violation::field("sync_rate", format!("must be -1, 0, or between 0.02 and {MAX_SYNC_RATE}")));
    }
}

fn rate_limiting_checks(config: &Obj) -> Vec<Violation> {
    let mut out = Vec::new();
    shared_checks(config, "policy", "limit_by", &mut out);
    // A longer period may not allow fewer requests than a shorter one.
    let set: Vec<(&str, f64)> =
        PERIODS.iter().filter_map(|p| config.get(*p).and_then(Value::as_f64).map(|v| (*p, v))).collect();
    for pair in set.windows(2) {
        let ((short, a), (long, b)) = (pair[0], pair[1]);
        if b < a {
            // Kong's custom validator of `config`: the message is `fields.config`.
            out.push(Violation::record(format!(
                "The limit for {long}({b:.1}) cannot be lower than the limit for {short}({a:.1})"
            )));
        }
    }
    let rate = config.get("sync_rate").and_then(Value::as_f64);
    let policy = config.get("policy").and_then(Value::as_str).unwrap_or("local");
    if policy == "local" && rate.is_some_and(|r| r != -1.0) {
        // Kong's custom entity check, in its words (its `cluster` policy takes no sync_rate; ours does).
        out.push(Violation::entity("sync_rate can only be used with the redis policy"));
    }
    check_sync_rate(rate, &mut out);
    out
}

fn advanced_checks(config: &Obj) -> Vec<Violation> {
    let mut out = Vec::new();
    shared_checks(config, "strategy", "identifier", &mut out);
    let len = |k: &str| config.get(k).and_then(Value::as_array).map_or(0, Vec::len);
    let (limits, windows) = (len("limit"), len("window_size"));
    if limits != windows {
        out.push(Violation::entity("You must provide the same number of windows and limits"));
    }
    if limits == 0 {
        out.push(Violation::field("limit", "length must be at least 1"));
    }
    if windows > MAX_WINDOWS {
        out.push(Violation::field("window_size", format!("length must be at most {MAX_WINDOWS}")));
    }
    let strategy = config.get("strategy").and_then(Value::as_str).unwrap_or("local");
    let rate = config.get("sync_rate").and_then(Value::as_f64);
    if strategy != "local" && rate.is_none() {
        conditional(&mut out, &["sync_rate"], "strategy");
    }
    check_sync_rate(rate, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::validate_nested;

    fn check(schema: &Schema, config: Value) -> Result<Obj, String> {
        let Value::Object(m) = config else { return Err("not an object".into()) };
        validate_nested(schema, &m, "config").map_err(|v| v.message())
    }

    fn plugin(config: Value) -> Result<Obj, crate::model::EntityError> {
        let Value::Object(input) = json!({"name": "rate-limiting", "config": config}) else { unreachable!() };
        crate::model::prepare(crate::model::Kind::Plugin, input, crate::model::Mode::Create, &crate::plugins::Catalog)
    }

    #[test]
    fn a_limit_below_a_shorter_periods_is_kongs_config_error() {
        let Err(crate::model::EntityError::Schema(v)) = plugin(json!({"second": 20, "minute": 10})) else {
            panic!("refused")
        };
        assert_eq!(
            v.fields_tree(),
            json!({"config": "The limit for minute(10.0) cannot be lower than the limit for second(20.0)"})
        );
        assert_eq!(
            v.message(),
            "schema violation (config: The limit for minute(10.0) cannot be lower than the limit for second(20.0))"
        );
    }

    #[test]
    fn sync_rate_with_the_local_policy_is_kongs_entity_error() {
        let Err(crate::model::EntityError::Schema(v)) = plugin(json!({"minute": 5, "sync_rate": 1})) else {
            panic!("refused")
        };
        assert_eq!(v.fields_tree(), json!({"@entity": ["sync_rate can only be used with the redis policy"]}));
    }

    #[test]
    fn deprecated_redis_fields_move_into_redis_and_an_empty_password_is_one() {
        let record = plugin(json!({"minute": 5, "policy": "redis", "redis_host": "cache.test", "redis_port": 6380,
            "redis_password": "", "redis_ssl": true, "redis_database": 2, "redis_timeout": null}))
        .expect("valid");
        let redis = &record["config"]["redis"];
        assert_eq!((redis["host"].as_str(), redis["port"].as_i64()), (Some("cache.test"), Some(6380)));
        assert_eq!((redis["password"].as_str(), redis["ssl"].as_bool()), (Some(""), Some(true)));
        assert_eq!((redis["database"].as_i64(), redis["timeout"].as_i64()), (Some(2), Some(2000)));
        assert!(record["config"].get("redis_host").is_none(), "the old field is gone");
        // A value given in `redis` wins over the deprecated one.
        let record =
            plugin(json!({"minute": 5, "policy": "redis", "redis_host": "old.test", "redis": {"host": "new.test"}}))
                .expect("valid");
        assert_eq!(record["config"]["redis"]["host"], "new.test");
        assert!(plugin(json!({"minute": 5, "redis": {"host": "h", "password": ""}})).is_ok());
    }

    #[test]
    fn rate_limiting_lists_every_bad_field() {
        let err = check(rate_limiting(), json!({})).expect_err("no window");
        assert!(err.contains("at least one of these fields must be non-empty: 'config.second'"), "{err}");
        let err = check(rate_limiting(), json!({"minute": -1, "limit_by": "nope"})).expect_err("bad");
        assert!(err.contains("config.minute: value must be greater than 0"), "{err}");
        assert!(err.contains("config.limit_by: expected one of"), "{err}");
        let err = check(rate_limiting(), json!({"minute": 20, "hour": 10})).expect_err("order");
        assert!(err.contains("The limit for hour(10.0) cannot be lower than the limit for minute(20.0)"), "{err}");
        let err = check(rate_limiting(), json!({"minute": 5, "policy": "redis"})).expect_err("no host");
        assert!(err.contains("host = \"required field missing\""), "{err}");
        assert!(err.contains("failed conditional validation given value of field 'config.policy'"), "{err}");
        let ok = check(rate_limiting(), json!({"minute": 5})).expect("valid");
        assert_eq!(ok["policy"], json!("local"));
        assert_eq!(ok["redis"]["port"], json!(6379));
        assert_eq!(ok["error_message"], json!("API rate limit exceeded"));
    }

    #[test]
    fn advanced_needs_matching_arrays() {
        let err = check(advanced(), json!({"limit": [10, 100], "window_size": [60]})).expect_err("mismatch");
        assert!(err.contains("You must provide the same number of windows and limits"), "{err}");
        let err =
            check(advanced(), json!({"limit": [10], "window_size": [60], "strategy": "redis"})).expect_err("redis");
        assert!(err.contains("host = \"required field missing\""), "{err}");
        assert!(err.contains("config.sync_rate: required field missing"), "{err}");
        let ok = check(advanced(), json!({"limit": [10], "window_size": [60]})).expect("valid");
        assert_eq!(ok["window_type"], json!("sliding"));
        assert_eq!(ok["namespace"].as_str().map(str::len), Some(32));
    }
}
