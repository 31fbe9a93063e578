//! correlation-id (Kong 3.x, priority 100001): gives each request an id in `header_name` when the
//! client sent none (an existing value is kept), sends it upstream, records it for the logs
//! (`correlation_id`), and with `echo_downstream` returns it on the response.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

use super::{AccessCtx, BuildEnv, Flow, Plugin, PluginDef, typed};
use crate::model::schema::{Check, Field, Obj, Schema, Type, Violations};
use crate::model::typedefs;

pub const DEF: PluginDef = PluginDef {
    name: "correlation-id",
    priority: 100_001,
    version: env!("CARGO_PKG_VERSION"),
    config: schema,
    no_consumer: false,
    shorthands: None,
    build,
};

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            Field::new("header_name", Type::String)
                .default(Value::String("Kong-Request-ID".into()))
                .check(Check::Custom(typedefs::check_header_name)),
            Field::new("generator", Type::String)
                .required()
                .default(Value::String("uuid#counter".into()))
                .check(Check::OneOf(&["uuid", "uuid#counter", "tracker"])),
            Field::new("echo_downstream", Type::Boolean).required().default(Value::Bool(false)),
        ],
        checks: Vec::new(),
    })
}

#[derive(Debug, Deserialize)]
struct Config {
    header_name: Option<String>,
    generator: String,
    echo_downstream: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generator {
    Uuid,
    UuidCounter,
    Tracker,
}

#[derive(Debug)]
struct CorrelationId {
    header: HeaderName,
    generator: Generator,
    echo: bool,
}

fn build(config: &Obj, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, Violations> {
    let config: Config = typed(config)?;
    let name = config.header_name.unwrap_or_else(|| "Kong-Request-ID".into());
    let header =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| Violations::single("header_name", "bad header name"))?;
    let generator = match config.generator.as_str() {
        "uuid" => Generator::Uuid,
        "tracker" => Generator::Tracker,
        _ => Generator::UuidCounter,
    };
    Ok(Arc::new(CorrelationId { header, generator, echo: config.echo_downstream }))
}

thread_local! {
    /// `uuid#counter`: this worker's uuid and its count (Kong's is per nginx worker).
    static WORKER: (Box<str>, Cell<u64>) = (uuid::Uuid::new_v4().to_string().into(), Cell::new(0));
}

impl CorrelationId {
    fn generate(&self, ctx: &AccessCtx<'_>) -> String {
        match self.generator {
            Generator::Uuid => uuid::Uuid::new_v4().to_string(),
            Generator::UuidCounter => WORKER.with(|(id, n)| {
                n.set(n.get() + 1);
                format!("{id}#{}", n.get())
            }),
            // Kong's "%s-%s-%d-%s-%s-%0.3f": server address and port, worker pid, connection
            // serial, requests on the connection, time.
            Generator::Tracker => {
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                let (addr, port, connection, requests) = ctx.connection;
                format!("{addr}-{port}-{}-{connection}-{requests}-{now:.3}", std::process::id())
            }
        }
    }
}

impl Plugin for CorrelationId {
    fn access(&self, ctx: &mut AccessCtx<'_>) -> Flow {
        let given = ctx.parts.headers.get(&self.header).filter(|v| !v.is_empty()).cloned();
        let value = match given {
            Some(v) => v,
            None => {
                let Ok(v) = HeaderValue::from_str(&self.generate(ctx)) else { return Flow::Continue };
                ctx.parts.headers.insert(self.header.clone(), v.clone());
                v
            }
        };
        ctx.correlation_id = Some(String::from_utf8_lossy(value.as_bytes()).into());
        if self.echo {
            ctx.response_headers.push((self.header.clone(), value));
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{ConsumerIndex, Directory};
    use serde_json::json;

    fn plugin(config: Value) -> Arc<dyn Plugin> {
        let Value::Object(config) = config else { panic!("object") };
        let config = crate::model::schema::validate(schema(), &config).expect("valid");
        build(&config, &BuildEnv::new(&ConsumerIndex::default())).expect("built")
    }

    fn run(p: &Arc<dyn Plugin>, sent: Option<&str>) -> (Option<String>, Option<Box<str>>, usize) {
        let mut req = http::Request::builder().uri("/x");
        if let Some(v) = sent {
            req = req.header("kong-request-id", v);
        }
        let (mut parts, ()) = req.body(()).expect("request").into_parts();
        let dir = Directory::default();
        let mut ctx = AccessCtx::new(&dir, &mut parts, None, [127, 0, 0, 1].into(), None);
        assert!(matches!(p.access(&mut ctx), Flow::Continue));
        let (cid, echoed) = (ctx.correlation_id.take(), ctx.response_headers.len());
        let header = parts.headers.get("kong-request-id").map(|v| v.to_str().expect("ascii").to_string());
        (header, cid, echoed)
    }

    #[test]
    fn generates_when_absent_keeps_when_given_and_echoes_when_asked() {
        let counter = plugin(json!({}));
        let (first, cid, echoed) = run(&counter, None);
        let first = first.expect("generated");
        let (second, _, _) = run(&counter, None);
        let (id, n) = first.split_once('#').expect("uuid#counter");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{first}");
        assert_eq!(second.expect("generated"), format!("{id}#{}", n.parse::<u64>().expect("count") + 1));
        assert_eq!((cid.as_deref(), echoed), (Some(first.as_str()), 0));

        let (kept, cid, _) = run(&counter, Some("mine"));
        assert_eq!((kept.as_deref(), cid.as_deref()), (Some("mine"), Some("mine")));

        let uuid = plugin(json!({"generator": "uuid", "echo_downstream": true}));
        let (v, _, echoed) = run(&uuid, Some(""));
        assert!(uuid::Uuid::parse_str(&v.expect("generated for an empty header")).is_ok());
        assert_eq!(echoed, 1);

        let tracker = plugin(json!({"generator": "tracker"}));
        let (v, _, _) = run(&tracker, None);
        assert_eq!(v.expect("generated").split('-').count(), 6);
    }
}
