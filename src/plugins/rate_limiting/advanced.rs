//! rate-limiting-advanced (Kong Enterprise's semantics): `limit[i]` requests per `window_size[i]`
//! seconds, sliding (the previous window weighs in) or fixed, counters shared by `namespace`. The
//! tier pattern is one instance per consumer group on the same route.

use std::sync::Arc;

use http::HeaderName;

use super::schema::{AdvancedConfig, MAX_WINDOW_SIZE, WindowType};
use super::windows::{Period, WindowSpec};
use super::{Common, Limiter, RateLimit, schema};
use crate::model::schema::{Obj, Violations};
use crate::plugins::{BuildEnv, Plugin, PluginDef, typed};

pub const ADVANCED: PluginDef = PluginDef {
    name: "rate-limiting-advanced",
    priority: 910,
    version: env!("CARGO_PKG_VERSION"),
    config: schema::advanced,
    no_consumer: false,
    shorthands: None,
    build,
};

fn build(config: &Obj, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, Violations> {
    let config: AdvancedConfig = typed(config)?;
    let sliding = config.window_type == WindowType::Sliding;
    let mut pairs: Vec<(f64, i64)> = config.limit.into_iter().zip(config.window_size).collect();
    // Kong sorts the pairs by limit.
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let windows = pairs
        .into_iter()
        .map(|(limit, size)| {
            if !(1..=MAX_WINDOW_SIZE).contains(&size) {
                return Err(Violations::single(
                    "window_size",
                    format!("value should be between 1 and {MAX_WINDOW_SIZE}"),
                ));
            }
            let header = |kind: &str| {
                HeaderName::from_bytes(format!("x-ratelimit-{kind}-{size}").as_bytes())
                    .map_err(|e| Violations::single("window_size", e.to_string()))
            };
            Ok(WindowSpec {
                period: Period::Seconds(size),
                limit,
                sliding,
                limit_header: header("limit")?,
                remaining_header: header("remaining")?,
            })
        })
        .collect::<Result<Vec<_>, Violations>>()?;
    let namespace = match config.namespace {
        Some(ns) => ns,
        None => env.instance.map_or_else(|| "rate-limiting-advanced".to_string(), |id| id.to_string()),
    };
    let common = Common {
        advanced: true,
        shared: config.shared,
        namespace,
        windows,
        limit_by: config.identifier,
        policy: config.strategy,
        sync_rate: config.sync_rate,
        penalty: sliding && !config.disable_penalty,
    };
    Ok(Arc::new(RateLimit(Limiter::build(common, env)?)))
}
