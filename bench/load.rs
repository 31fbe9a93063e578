//! Fills a running Tollgate through its Admin API, many requests in flight at once:
//!
//! `bench-load <admin-url> consumers <from> <to>`: consumers `bench-<i>` with key `key-<i>`;
//! `bench-load <admin-url> routes <from> <to>`: routes on service `bench`, a quarter of each kind
//! users write (route `i` by `i % 4`): path prefix `/r<i>/`; host `h<i>.example.test` and that
//! prefix; regex path `~/r<i>/\d+$`; wildcard host `*.w<i>.example.test` and the prefix.
//! `bench/spread-routes.lua` asks for them the same way.

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::json;

const IN_FLIGHT: usize = 32;

async fn post(http: &reqwest::Client, url: String, body: serde_json::Value) -> Result<(), String> {
    let r = http.post(&url).json(&body).send().await.map_err(|e| format!("{url}: {e}"))?;
    if r.status().as_u16() == 201 {
        Ok(())
    } else {
        Err(format!("{url}: {} {}", r.status(), r.text().await.unwrap_or_default()))
    }
}

/// Route `i` of the mix (see the module's doc).
fn route(i: usize) -> serde_json::Value {
    let prefix = format!("/r{i}/");
    match i % 4 {
        1 => json!({"paths": [prefix], "hosts": [format!("h{i}.example.test")]}),
        2 => json!({"paths": [format!("~/r{i}/\\d+$")]}),
        3 => json!({"paths": [prefix], "hosts": [format!("*.w{i}.example.test")]}),
        _ => json!({"paths": [prefix]}),
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, admin, what, from, to] = args.as_slice() else {
        return Err("usage: bench-load <admin-url> consumers|routes <from> <to>".into());
    };
    let from: usize = from.parse().map_err(|_| "bad <from>")?;
    let to: usize = to.parse().map_err(|_| "bad <to>")?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let results: Vec<Result<(), String>> = futures_util::stream::iter(from..to)
        .map(|i| {
            let http = http.clone();
            let admin = admin.clone();
            let what = what.clone();
            async move {
                match what.as_str() {
                    "consumers" => {
                        post(&http, format!("{admin}/consumers"), json!({"username": format!("bench-{i}")})).await?;
                        post(&http, format!("{admin}/consumers/bench-{i}/key-auth"), json!({"key": format!("key-{i}")}))
                            .await
                    }
                    "routes" => post(&http, format!("{admin}/services/bench/routes"), route(i)).await,
                    other => Err(format!("unknown kind {other}")),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return Err(e.clone());
    }
    eprintln!("loaded {what} {from}..{to} in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
