//! Fills a running Tollgate through its Admin API, many requests in flight at once:
//!
//! `bench-load <admin-url> consumers <from> <to>`: consumers `bench-<i>` with key `key-<i>`;
//! `bench-load <admin-url> routes <from> <to>`: routes on service `bench`, a quarter of each kind
//! users write (route `i` by `i % 4`): path prefix `/r<i>/`; host `h<i>.example.test` and that
//! prefix; regex path `~/r<i>/\d+$`; wildcard host `*.w<i>.example.test` and the prefix.
//! `bench/spread-routes.lua` asks for them the same way.
//! `bench-load <admin-url> services <from> <to> <m> <upstream-url>`: services `s<i>` pointing at the
//! upstream, each with `m` routes, route `j` of service `i` on path prefix `/s<i>/r<j>/`
//! (`bench/spread-services.lua` asks for them the same way).
//! `bench-load <admin-url> certificates <from> <to>`: certificates (ECDSA P-256), certificate `i`
//! served for SNI `c<i>.bench.test`.
//! `bench-load <host:port> tls-idle <n> <seconds>`: opens `n` TLS connections, sends one request on
//! each, prints `ready` and holds them for `seconds`.
//! `bench-load <host:port> handshakes <names> <seconds>`: 32 clients making full TLS handshakes
//! (no resumption), each with SNI `c<random below names>.bench.test` and one request; prints how many.
//! `bench-load <host:port> collector`: a log collector for http-log's batches: answers each POST
//! 204 once its body is read and counts its entries (one `"workspace_name":` each); `GET /count`
//! answers the total so far. It does no more than that, so the load CPU it shares with wrk and the
//! upstream stays free for them (nginx writing every batch to a file put gigabytes on the disk).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

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

/// Service `i` and its `m` routes, one after the other (the routes need their service).
async fn service_with_routes(
    http: &reqwest::Client,
    admin: &str,
    i: usize,
    m: usize,
    upstream: &str,
) -> Result<(), String> {
    post(http, format!("{admin}/services"), json!({"name": format!("s{i}"), "url": upstream})).await?;
    for j in 0..m {
        post(http, format!("{admin}/services/s{i}/routes"), json!({"paths": [format!("/s{i}/r{j}/")]})).await?;
    }
    Ok(())
}

async fn services(args: &[String]) -> Result<(), String> {
    let [_, admin, _, from, to, m, upstream] = args else {
        return Err("usage: bench-load <admin-url> services <from> <to> <routes per service> <upstream-url>".into());
    };
    let from: usize = from.parse().map_err(|_| "bad <from>")?;
    let to: usize = to.parse().map_err(|_| "bad <to>")?;
    let m: usize = m.parse().map_err(|_| "bad <routes per service>")?;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let results: Vec<Result<(), String>> = futures_util::stream::iter(from..to)
        .map(|i| {
            let http = http.clone();
            async move { service_with_routes(&http, admin, i, m, upstream).await }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        return Err(e.clone());
    }
    eprintln!("loaded services {from}..{to} with {m} routes each in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A TLS client that accepts whatever the server presents (the bench measures the server), with no
/// session resumption: every handshake is a full one.
fn tls_client() -> Result<Arc<ClientConfig>, String> {
    let mut config = tollgate::tls::client::Pinned::any_server_config()?;
    config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// One TLS connection and one request on it; the connection is returned open (keep-alive).
async fn tls_request(
    addr: &str,
    sni: &str,
    config: &Arc<ClientConfig>,
    close: bool,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let mut tls = TlsConnector::from(config.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let connection = if close { "close" } else { "keep-alive" };
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: {connection}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
    if !buf[..n].starts_with(b"HTTP/1.1 200") {
        return Err(format!("answer: {}", String::from_utf8_lossy(&buf[..n])));
    }
    if close {
        while tls.read(&mut buf).await.map_err(|e| e.to_string())? > 0 {}
    }
    Ok(tls)
}

async fn tls_modes(args: &[String]) -> Result<(), String> {
    let [_, addr, what, n, seconds] = args else {
        return Err("usage: bench-load <host:port> tls-idle|handshakes <n> <seconds>".into());
    };
    let n: usize = n.parse().ok().filter(|n| *n > 0).ok_or("bad <n>: a positive integer")?;
    let seconds: u64 = seconds.parse().map_err(|_| "bad <seconds>")?;
    let config = tls_client()?;
    match what.as_str() {
        "tls-idle" => {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(tls_request(addr, "localhost", &config, false).await?);
            }
            println!("ready");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            drop(held);
            Ok(())
        }
        "handshakes" => {
            let until = Instant::now().checked_add(Duration::from_secs(seconds)).ok_or("bad <seconds>")?;
            let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut tasks: Vec<tokio::task::JoinHandle<Result<(), String>>> = Vec::new();
            for _ in 0..32 {
                let (addr, config, done) = (addr.clone(), config.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        let sni = format!("c{}.bench.test", rand::random_range(0..n));
                        tls_request(&addr, &sni, &config, true).await?;
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(())
                }));
            }
            for t in tasks {
                t.await.map_err(|e| e.to_string())??;
            }
            println!("{}", done.load(std::sync::atomic::Ordering::Relaxed));
            Ok(())
        }
        other => Err(format!("unknown mode {other}")),
    }
}

/// Certificate `i`, for SNI `c<i>.bench.test`.
fn certificate(i: usize) -> Result<serde_json::Value, String> {
    let name = format!("c{i}.bench.test");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let params = rcgen::CertificateParams::new(vec![name.clone()]).map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok(json!({"cert": cert.pem(), "key": key.serialize_pem(), "snis": [name]}))
}

/// The collector (see the module's doc).
async fn collector(listen: &str) -> Result<(), String> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Method, Request, Response, StatusCode};
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("{listen}: {e}"))?;
    let entries = Arc::new(AtomicU64::new(0));
    let marker = Arc::new(memchr::memmem::Finder::new(b"\"workspace_name\":").into_owned());
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let (entries, marker) = (entries.clone(), marker.clone());
        let answer = move |req: Request<Incoming>| {
            let (entries, marker) = (entries.clone(), marker.clone());
            async move {
                let mut response = Response::new(Full::new(Bytes::new()));
                if req.method() == Method::GET {
                    *response.body_mut() = Full::new(Bytes::from(entries.load(Ordering::Relaxed).to_string()));
                    return Ok::<_, hyper::Error>(response);
                }
                let body = req.into_body().collect().await?.to_bytes();
                entries.fetch_add(marker.find_iter(&body).count() as u64, Ordering::Relaxed);
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
        };
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, hyper::service::service_fn(answer))
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(2).map(String::as_str) == Some("collector") {
        return collector(&args[1]).await;
    }
    if matches!(args.get(2).map(String::as_str), Some("tls-idle" | "handshakes")) {
        return tls_modes(&args).await;
    }
    if args.get(2).map(String::as_str) == Some("services") {
        return services(&args).await;
    }
    let [_, admin, what, from, to] = args.as_slice() else {
        return Err("usage: bench-load <admin-url> consumers|routes|certificates <from> <to>".into());
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
                    "certificates" => post(&http, format!("{admin}/certificates"), certificate(i)?).await,
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
