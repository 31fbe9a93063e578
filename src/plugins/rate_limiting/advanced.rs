//! rate-limiting-advanced (Kong Enterprise's semantics): `limit[i]` requests per `window_size[i]`
//! seconds, sliding (the previous window weighs in) or fixed, counters shared by `namespace`. The
//! tier pattern is one instance per consumer group on the same route.

use std::sync::Arc;

use http::HeaderName;
use serde_json::Value;

use super::windows::{Period, WindowSpec};
use super::{Common, Limiter, RateLimit, schema, str_of};
use crate::model::schema::Obj;
use crate::plugins::{BuildEnv, Plugin, PluginDef};

pub const ADVANCED: PluginDef = PluginDef {
    name: "rate-limiting-advanced",
    priority: 910,
    version: env!("CARGO_PKG_VERSION"),
    config: schema::advanced,
    no_consumer: false,
    build,
};

fn build(config: &Obj, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, String> {
    let numbers = |key: &str| -> Vec<f64> {
        config
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let sliding = str_of(config, "window_type") != Some("fixed");
    let mut pairs: Vec<(f64, f64)> = numbers("limit").into_iter().zip(numbers("window_size")).collect();
    // Kong sorts the pairs by limit.
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let windows = pairs
        .into_iter()
        .map(|(limit, size)| {
            let size = (size as i64).max(1);
            let header = |kind: &str| {
                HeaderName::from_bytes(format!("x-ratelimit-{kind}-{size}").as_bytes()).map_err(|e| e.to_string())
            };
            Ok(WindowSpec {
                period: Period::Seconds(size),
                limit,
                sliding,
                limit_header: header("limit")?,
                remaining_header: header("remaining")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let namespace = match str_of(config, "namespace") {
        Some(ns) => ns.to_string(),
        None => env.instance.map_or_else(|| "rate-limiting-advanced".to_string(), |id| id.to_string()),
    };
    let disable_penalty = config.get("disable_penalty").and_then(Value::as_bool).unwrap_or(false);
    let common = Common {
        config,
        namespace,
        windows,
        limit_by: str_of(config, "identifier").unwrap_or("consumer"),
        policy: str_of(config, "strategy").unwrap_or("local"),
        sync_rate: config.get("sync_rate").and_then(Value::as_f64),
        penalty: sliding && !disable_penalty,
    };
    Ok(Arc::new(RateLimit(Limiter::build(common, env)?)))
}
