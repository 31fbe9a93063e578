//! http-log (Kong 3.x, priority 12): sends each request's log entry (Kong's JSON serializer) to a
//! collector, through Kong's queue: entries go out one by one or in JSON arrays of up to
//! `queue.max_batch_size` gathered by each worker for at most `queue.max_coalescing_delay` (see
//! `gather`), batches wait in a bounded queue (`queue.max_entries`, counted by whole batches), and a
//! failed send (no answer, or a status of 300 and up) is tried again after
//! `queue.initial_retry_delay`, doubling up to `queue.max_retry_delay`, until `queue.max_retry_time`
//! has passed; then the batch is dropped and counted. The sending happens in the sink's own task: a
//! collector that is down or slow never slows proxying, and the memory it can cost is the queue's
//! bound and one batch per worker. `custom_fields_by_lua` is not supported (no Lua here):
//! `custom_fields` adds fixed values.

mod collector;
mod gather;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::file_log::{custom_fields, no_lua};
use super::log::{Logger, dropped};
use super::{BuildEnv, Plugin, PluginDef, typed};
use crate::model::schema::{Check, EntityCheck, Field, Obj, Schema, Type, Violation, Violations};
use crate::model::typedefs;
use collector::Collector;
use gather::{Batch, Sink};

pub const DEF: PluginDef = PluginDef {
    name: "http-log",
    priority: 12,
    version: env!("CARGO_PKG_VERSION"),
    config: schema,
    no_consumer: false,
    shorthands: None,
    build,
};

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let header_name = Field::new("name", Type::String).check(Check::Custom(check_header_key));
        Schema {
            fields: vec![
                Field::new("http_endpoint", Type::String).required().check(Check::Custom(check_url)),
                Field::new("method", Type::String)
                    .default(json!("POST"))
                    .check(Check::OneOf(&["POST", "PUT", "PATCH"])),
                Field::new("content_type", Type::String)
                    .default(json!("application/json"))
                    .check(Check::OneOf(&["application/json", "application/json; charset=utf-8"])),
                Field::new("timeout", Type::Number).default(json!(10000)).check(Check::Between(0, 2_147_483_646)),
                Field::new("keepalive", Type::Number).default(json!(60000)).check(Check::Between(0, 2_147_483_646)),
                // Deprecated in Kong 3.x, accepted and ignored (the queue settings replace them).
                Field::new("retry_count", Type::Integer).check(Check::Between(0, 1_000_000)),
                Field::new("queue_size", Type::Integer).check(Check::Between(1, 1_000_000)),
                Field::new("flush_timeout", Type::Number).check(Check::Between(0, 3600)),
                Field::new("headers", Type::Map(Box::new(header_name), Box::new(Field::new("value", Type::String)))),
                queue(),
                custom_fields(),
                no_lua(),
            ],
            checks: vec![EntityCheck::Custom(userinfo_and_authorization)],
        }
    })
}

/// Kong's `typedefs.queue`.
fn queue() -> Field {
    let f = |name, ty| Field::new(name, ty);
    Field::new(
        "queue",
        Type::Record(vec![
            f("max_batch_size", Type::Integer).required().default(json!(1)).check(Check::Between(1, 1_000_000)),
            f("max_coalescing_delay", Type::Number).required().default(json!(1)).check(Check::Between(0, 3600)),
            f("max_entries", Type::Integer).required().default(json!(10000)).check(Check::Between(1, 1_000_000)),
            f("max_bytes", Type::Integer).check(Check::Between(1, 1 << 40)),
            f("max_retry_time", Type::Number).required().default(json!(60)).check(Check::AtMost(1_000_000.0)),
            f("initial_retry_delay", Type::Number)
                .required()
                .default(json!(0.01))
                .check(Check::AtMost(1_000_000.0))
                .check(Check::Custom(|v| between_f(v, 0.001, 1_000_000.0))),
            f("max_retry_delay", Type::Number)
                .required()
                .default(json!(60))
                .check(Check::AtMost(1_000_000.0))
                .check(Check::Custom(|v| between_f(v, 0.001, 1_000_000.0))),
            f("concurrency_limit", Type::Integer).required().default(json!(1)).check(Check::OneOfInt(&[-1, 1])),
        ]),
    )
    .required()
    .default(json!({}))
}

fn between_f(v: &Value, lo: f64, hi: f64) -> Result<(), String> {
    match v.as_f64() {
        Some(n) if n < lo || n > hi => Err(format!("value should be between {lo} and {hi}")),
        _ => Ok(()),
    }
}

/// Kong's `typedefs.url` messages.
fn check_url(v: &Value) -> Result<(), String> {
    let Some(s) = v.as_str() else { return Ok(()) };
    let url = url::Url::parse(s).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => "missing scheme in url".to_string(),
        url::ParseError::EmptyHost => "missing host in url".to_string(),
        e => format!("could not parse url. {e}"),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("unsupported scheme '{}': http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("missing host in url".into());
    }
    Ok(())
}

/// Kong's `match_none` on `headers` keys.
fn check_header_key(v: &Value) -> Result<(), String> {
    typedefs::check_header_name(v)?;
    let name = v.as_str().unwrap_or_default().to_ascii_lowercase();
    match name.as_str() {
        "host" => Err("cannot contain 'Host' header".into()),
        "content-length" => Err("cannot contain 'Content-Length' header".into()),
        "content-type" => Err("cannot contain 'Content-Type' header".into()),
        _ => Ok(()),
    }
}

fn userinfo_and_authorization(config: &Obj) -> Vec<Violation> {
    let has_userinfo = config
        .get("http_endpoint")
        .and_then(Value::as_str)
        .and_then(|s| url::Url::parse(s).ok())
        .is_some_and(|u| !u.username().is_empty() || u.password().is_some());
    let has_authorization = config
        .get("headers")
        .and_then(Value::as_object)
        .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("authorization")));
    if has_userinfo && has_authorization {
        vec![Violation::entity(
            "specifying both an 'Authorization' header and user info in 'http_endpoint' is not allowed",
        )]
    } else {
        Vec::new()
    }
}

#[derive(Debug, Clone, Deserialize)]
struct QueueConfig {
    max_batch_size: usize,
    max_coalescing_delay: f64,
    max_entries: usize,
    max_bytes: Option<usize>,
    max_retry_time: f64,
    initial_retry_delay: f64,
    max_retry_delay: f64,
    concurrency_limit: i64,
}

#[derive(Debug, Clone, Deserialize)]
struct Config {
    http_endpoint: String,
    method: String,
    content_type: String,
    timeout: f64,
    keepalive: f64,
    headers: Option<Map<String, Value>>,
    queue: QueueConfig,
    custom_fields: Option<Map<String, Value>>,
}

fn build(config: &Obj, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, Violations> {
    let parsed: Config = typed(config)?;
    if !env.live() {
        return Ok(Arc::new(Logger::<Arc<Sink>> { sink: None }));
    }
    let key = format!("{}\u{0}{}", env.instance.unwrap_or_default(), Value::Object(config.clone()));
    Ok(Arc::new(Logger { sink: sink(key, parsed) }))
}

/// The running sink of this instance and configuration, or a new one (a rebuild of the snapshot
/// keeps the sink, its task and what waits in its queue).
fn sink(key: String, config: Config) -> Option<Arc<Sink>> {
    static SINKS: OnceLock<Mutex<HashMap<String, Weak<Sink>>>> = OnceLock::new();
    let mut sinks = SINKS.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    sinks.retain(|_, s| s.strong_count() > 0);
    if let Some(s) = sinks.get(&key).and_then(Weak::upgrade) {
        return Some(s);
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!("http-log: no runtime to send entries on");
        return None;
    };
    let collector = match Collector::new(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "http-log: cannot use its endpoint");
            return None;
        }
    };
    let q = &config.queue;
    // `max_entries` counted in batches: what waits beside the batches each worker is gathering.
    let (tx, rx) = tokio::sync::mpsc::channel(q.max_entries.div_ceil(q.max_batch_size.max(1)).max(1));
    let s = Arc::new(Sink::new(
        tx,
        config.custom_fields.clone().unwrap_or_default(),
        q.max_batch_size,
        q.max_bytes,
        secs(q.max_coalescing_delay),
    ));
    runtime.spawn(run(config.queue, collector, rx));
    sinks.insert(key, Arc::downgrade(&s));
    Some(s)
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::from_secs(3600))
}

/// The sink's task: sends the batches the workers hand it, retrying; ends when every instance
/// using it is gone and the queue is empty.
async fn run(q: QueueConfig, collector: Collector, mut rx: tokio::sync::mpsc::Receiver<Batch>) {
    let collector = Arc::new(tokio::sync::Mutex::new(collector));
    while let Some(batch) = rx.recv().await {
        let job = deliver(collector.clone(), q.clone(), batch.body, batch.entries);
        if q.concurrency_limit == -1 {
            tokio::spawn(job);
        } else {
            job.await;
        }
    }
}

/// Sends one batch, retrying as the queue settings say.
async fn deliver(collector: Arc<tokio::sync::Mutex<Collector>>, q: QueueConfig, body: Vec<u8>, entries: usize) {
    let body = bytes::Bytes::from(body);
    let started = tokio::time::Instant::now();
    let mut delay = secs(q.initial_retry_delay);
    loop {
        let result = collector.lock().await.send(body.clone()).await;
        let error = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        let retry_at = started.elapsed() + delay;
        if q.max_retry_time < 0.0 || retry_at > secs(q.max_retry_time) {
            tracing::error!(error = %error, entries, "http-log: could not send entries; dropped after retrying");
            dropped().http_log.fetch_add(entries as u64, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        tracing::debug!(error = %error, "http-log: send failed, retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(secs(q.max_retry_delay));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(config: Value) -> Result<Obj, Violations> {
        let Value::Object(config) = config else { panic!("object") };
        crate::model::schema::validate(schema(), &config)
    }

    #[test]
    fn queue_defaults_are_kongs() {
        let v = validate(json!({"http_endpoint": "http://127.0.0.1:9/logs"})).expect("valid");
        assert_eq!(
            v["queue"],
            json!({"max_batch_size": 1, "max_coalescing_delay": 1, "max_entries": 10000, "max_bytes": null,
                   "max_retry_time": 60, "initial_retry_delay": 0.01, "max_retry_delay": 60, "concurrency_limit": 1})
        );
        assert_eq!((&v["method"], &v["content_type"]), (&json!("POST"), &json!("application/json")));
    }

    #[test]
    fn bad_endpoints_headers_and_lua_are_refused_in_kongs_words() {
        let err = validate(json!({"http_endpoint": "no-scheme"})).expect_err("invalid");
        assert!(err.message().contains("missing scheme in url"), "{}", err.message());
        let err = validate(json!({"http_endpoint": "http://u:p@h/", "headers": {"Authorization": "x", "Host": "y"}}))
            .expect_err("invalid");
        let text = err.message();
        assert!(text.contains("cannot contain 'Host' header"), "{text}");
        let err = validate(json!({"http_endpoint": "http://u:p@h/", "headers": {"Authorization": "x"}}))
            .expect_err("invalid");
        assert!(err.message().contains("specifying both an 'Authorization' header"), "{}", err.message());
        let err = validate(json!({"http_endpoint": "http://h/", "custom_fields_by_lua": {"a": "return 1"}}))
            .expect_err("invalid");
        assert!(err.message().contains("runs no Lua"), "{}", err.message());
        assert!(validate(json!({"http_endpoint": "http://h/", "custom_fields_by_lua": {}})).is_ok());
    }
}
