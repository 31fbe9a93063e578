//! file-log (Kong 3.x, priority 9): appends each request's log entry (Kong's JSON serializer, one
//! object per line) to `path`, kept open or, with `reopen`, opened for every entry (for log
//! rotation). Entries go through a bounded queue to a writer thread of the sink: a slow disk or a
//! path that cannot be opened costs the proxy nothing; what the queue cannot take is dropped and
//! counted, and a path that cannot be opened is reported in the node's log.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::log::{Logger, Queue, dropped, write_entry};
use super::{BuildEnv, Plugin, PluginDef, typed};
use crate::model::schema::{Check, Field, Obj, Schema, Type, Violations};

pub const DEF: PluginDef = PluginDef {
    name: "file-log",
    priority: 9,
    version: env!("CARGO_PKG_VERSION"),
    config: schema,
    no_consumer: false,
    shorthands: None,
    build,
};

/// Entries waiting for the writer, per sink.
const QUEUE: usize = 10_000;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            Field::new("path", Type::String).required().check(Check::Custom(check_path)),
            Field::new("reopen", Type::Boolean).required().default(Value::Bool(false)),
            custom_fields(),
            no_lua(),
        ],
        checks: Vec::new(),
    })
}

/// `custom_fields`: plain values added to every entry (Tollgate's stand-in for Kong's Lua fields).
pub(crate) fn custom_fields() -> Field {
    Field::new(
        "custom_fields",
        Type::Map(Box::new(Field::new("name", Type::String)), Box::new(Field::new("value", Type::Any))),
    )
}

/// `custom_fields_by_lua`: accepted empty (decK files carry it as `{}` or null), refused otherwise.
pub(crate) fn no_lua() -> Field {
    Field::new(
        "custom_fields_by_lua",
        Type::Map(Box::new(Field::new("name", Type::String)), Box::new(Field::new("value", Type::String))),
    )
    .check(Check::Custom(|v| match v {
        Value::Object(m) if !m.is_empty() => {
            Err("Tollgate runs no Lua code: give fixed values in config.custom_fields".into())
        }
        _ => Ok(()),
    }))
}

/// Kong's `^[^%s*&%%\`][^*&%%\`]*[^%s*&%%\`]$`.
fn check_path(v: &Value) -> Result<(), String> {
    let Some(path) = v.as_str() else { return Ok(()) };
    let bad = |c: char| matches!(c, '*' | '&' | '%' | '`');
    let ends_bad = |c: Option<char>| c.is_none_or(|c| c.is_whitespace() || bad(c));
    let ok = path.chars().count() >= 2
        && !ends_bad(path.chars().next())
        && !ends_bad(path.chars().last())
        && !path.chars().any(bad);
    if ok { Ok(()) } else { Err("not a valid filename".into()) }
}

#[derive(Debug, Deserialize)]
struct Config {
    path: String,
    reopen: bool,
    custom_fields: Option<Map<String, Value>>,
}

fn build(config: &Obj, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, Violations> {
    let config: Config = typed(config)?;
    Ok(Arc::new(Logger { sink: env.live().then(|| sink(config)) }))
}

/// The running sink for this configuration, or a new one: a configuration change that keeps the
/// file keeps its writer.
fn sink(config: Config) -> Arc<Queue> {
    static SINKS: OnceLock<Mutex<HashMap<String, Weak<Queue>>>> = OnceLock::new();
    let custom = config.custom_fields.unwrap_or_default();
    let key = format!("{}\u{0}{}\u{0}{}", config.path, config.reopen, Value::Object(custom.clone()));
    let mut sinks = SINKS.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    sinks.retain(|_, s| s.strong_count() > 0);
    if let Some(s) = sinks.get(&key).and_then(Weak::upgrade) {
        return s;
    }
    let s = Arc::new(writer(config.path, config.reopen, custom, &dropped().file_log));
    sinks.insert(key, Arc::downgrade(&s));
    s
}

/// Starts a writer thread appending entries to `path` and returns its queue (file-log's, and the
/// node's `proxy_access_log`).
pub fn writer(
    path: String,
    reopen: bool,
    custom: Map<String, Value>,
    dropped: &'static std::sync::atomic::AtomicU64,
) -> Queue {
    let (queue, rx) = Queue::new(QUEUE, dropped);
    let spawned = std::thread::Builder::new()
        .name("file-log".into())
        .spawn(move || write_entries(&path, reopen, &custom, rx, dropped));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "file-log: cannot start its writer");
    }
    queue
}

/// How long the writer waits when its queue is empty. It looks for entries on a clock rather than
/// being woken for each one: a busy proxy pays no wake-up per request, and what arrived meanwhile
/// goes out in one write.
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// The writer thread: until every instance using the sink is gone and the queue is drained.
fn write_entries(
    path: &str,
    reopen: bool,
    custom: &Map<String, Value>,
    mut rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    dropped: &std::sync::atomic::AtomicU64,
) {
    use tokio::sync::mpsc::error::TryRecvError;
    let mut file: Option<std::fs::File> = None;
    // Reported once per failing streak, not once per entry.
    let mut failing = false;
    let mut chunk = Vec::with_capacity(64 * 1024);
    loop {
        chunk.clear();
        let mut entries = 0u64;
        let ended = loop {
            match rx.try_recv() {
                Ok(entry) => {
                    let start = chunk.len();
                    write_entry(&entry, custom, &mut chunk);
                    if chunk.len() > start {
                        chunk.push(b'\n');
                        entries += 1;
                    }
                    if chunk.len() >= 1024 * 1024 {
                        break false;
                    }
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if entries == 0 {
            if ended {
                return;
            }
            std::thread::sleep(POLL);
            continue;
        }
        if file.is_none() || reopen {
            file = match open(path) {
                Ok(f) => Some(f),
                Err(e) => {
                    dropped.fetch_add(entries, std::sync::atomic::Ordering::Relaxed);
                    if !failing {
                        tracing::error!(path, error = %e, "file-log: cannot open the log file; entries are dropped");
                    }
                    failing = true;
                    continue;
                }
            };
        }
        match file.as_mut().map(|f| f.write_all(&chunk)) {
            Some(Ok(())) => failing = false,
            Some(Err(e)) => {
                dropped.fetch_add(entries, std::sync::atomic::Ordering::Relaxed);
                if !failing {
                    tracing::error!(path, error = %e, "file-log: cannot write the log file");
                }
                failing = true;
                file = None;
            }
            None => {}
        }
        if reopen {
            file = None;
        }
    }
}

/// Kong opens with `O_CREAT | O_APPEND | O_WRONLY`, mode 0644.
fn open(path: &str) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_kongs_pattern() {
        for ok in ["/tmp/a.log", "logs/x", "/var/log/with space.log"] {
            assert!(check_path(&Value::String(ok.into())).is_ok(), "{ok}");
        }
        for bad in [" /tmp/a", "/tmp/a ", "/tmp/*.log", "/tmp/a&b", "/tmp/%s", "a", "`x`"] {
            assert_eq!(check_path(&Value::String(bad.into())), Err("not a valid filename".into()), "{bad}");
        }
    }
}
