//! A real HTTP upstream on a free loopback port that echoes what it received as JSON, plus a few
//! behaviours the proxy tests need: `/delay/{ms}`, `/status/{code}`, `/bytes/{n}` (streamed),
//! `/upload` (counts a streamed body without keeping it), `/set-cookie/{cookie}` (sets it, and
//! `other=1`). And a raw recording upstream, for tests that
//! must know every byte the gateway sent (or that it sent none).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The running upstream, on its own runtime thread so that a test blocking its own runtime cannot
/// stall it; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tls: bool,
}

/// A TLS acceptor with a fresh self-signed certificate for `localhost` and `127.0.0.1`.
fn self_signed() -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// What a TLS upstream saw of its client.
#[derive(Debug, Clone)]
struct TlsSeen {
    sni: Option<String>,
    client_cert: bool,
}

/// A TLS acceptor serving a certificate for `localhost`, `127.0.0.1` and `*.test` signed by `ca`
/// (followed by `chain`, the intermediates up to the root); with `clients`, it requires a client
/// certificate signed by that CA.
fn signed_by(
    ca: &super::tls::TestCa,
    chain: &[&super::tls::TestCa],
    clients: Option<&super::tls::TestCa>,
) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::ServerConfig;
    let leaf = ca.leaf(&["localhost", "127.0.0.1", "*.test"]);
    let mut certs = vec![leaf.der()];
    certs.extend(chain.iter().map(|c| c.der()));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().expect("versions");
    let builder = match clients {
        Some(client_ca) => {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            roots.add(client_ca.der()).expect("client CA");
            let verifier =
                tokio_rustls::rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, leaf.key()).expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::serve(None)
    }

    /// The same upstream behind HTTPS with a self-signed certificate.
    pub async fn start_tls() -> Upstream {
        Upstream::serve(Some(self_signed()))
    }

    /// The same upstream behind HTTPS with a certificate signed by `ca`.
    pub async fn start_tls_signed(ca: &super::tls::TestCa) -> Upstream {
        Upstream::serve(Some(signed_by(ca, &[], None)))
    }

    /// HTTPS with a certificate signed by `intermediate`, which it also presents.
    pub async fn start_tls_chain(intermediate: &super::tls::TestCa) -> Upstream {
        Upstream::serve(Some(signed_by(intermediate, &[intermediate], None)))
    }

    /// HTTPS signed by `ca`, requiring a client certificate signed by `clients`.
    pub async fn start_mtls(ca: &super::tls::TestCa, clients: &super::tls::TestCa) -> Upstream {
        Upstream::serve(Some(signed_by(ca, &[], Some(clients))))
    }

    /// The echo upstream on `addr` (another loopback address than 127.0.0.1, say); `None` when
    /// that address is taken.
    pub fn start_at(addr: SocketAddr) -> Option<Upstream> {
        let listener = std::net::TcpListener::bind(addr).ok()?;
        Some(Upstream::serve_on(listener, None))
    }

    /// Echo upstreams on one port of each of `ips` (loopback addresses), as the addresses of one
    /// name would be.
    pub fn start_on_one_port(ips: &[&str]) -> Vec<Upstream> {
        for _ in 0..20 {
            let first = std::net::TcpListener::bind((ips[0], 0)).expect("bind upstream");
            let port = first.local_addr().expect("addr").port();
            let mut servers = vec![Upstream::serve_on(first, None)];
            for ip in &ips[1..] {
                match Upstream::start_at(SocketAddr::new(ip.parse().expect("ip"), port)) {
                    Some(s) => servers.push(s),
                    None => break,
                }
            }
            if servers.len() == ips.len() {
                return servers;
            }
        }
        panic!("no port free on every one of {ips:?}");
    }

    fn serve(acceptor: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        Upstream::serve_on(std_listener, acceptor)
    }

    fn serve_on(std_listener: std::net::TcpListener, acceptor: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let tls = acceptor.is_some();
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let acceptor = acceptor;
                let serve = async move {
                    loop {
                        let Ok((stream, peer)) = listener.accept().await else { continue };
                        let counter = counter.clone();
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // What the TLS client sent: its server name and whether it showed a
                            // certificate (echoed as `sni` and `client_cert`).
                            let (stream, tls_seen, tls_stream) = match acceptor {
                                Some(acceptor) => {
                                    let Ok(tls) = acceptor.accept(stream).await else { return };
                                    let conn = tls.get_ref().1;
                                    let seen = TlsSeen {
                                        sni: conn.server_name().map(str::to_string),
                                        client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                                    };
                                    (None, Some(seen), Some(tls))
                                }
                                None => (Some(stream), None, None),
                            };
                            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                                counter.fetch_add(1, Ordering::SeqCst);
                                req.extensions_mut().insert(peer);
                                if let Some(seen) = &tls_seen {
                                    req.extensions_mut().insert(seen.clone());
                                }
                                handle(req)
                            });
                            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                            match (tls_stream, stream) {
                                (Some(tls), _) => {
                                    let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                                }
                                (None, Some(plain)) => {
                                    let _ = builder.serve_connection(TokioIo::new(plain), svc).await;
                                }
                                (None, None) => {}
                            }
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Upstream { addr, hits, stop: Some(stop), tls }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let (first, arg) = (segments.next().unwrap_or(""), segments.next().unwrap_or(""));
    match first {
        "delay" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await;
            Ok(echo(req, 200).await)
        }
        "status" => Ok(echo(req, arg.parse().unwrap_or(200)).await),
        "set-cookie" => {
            let cookie = arg.to_string();
            let mut resp = echo(req, 200).await;
            for value in [cookie.as_str(), "other=1"] {
                if let Ok(v) = value.parse() {
                    resp.headers_mut().append("set-cookie", v);
                }
            }
            Ok(resp)
        }
        "bytes" => {
            let total: usize = arg.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = (0..total.div_ceil(chunk.len())).map(move |i| {
                let len = chunk.len().min(total - i * chunk.len());
                Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
            });
            let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
            Ok(Response::new(body))
        }
        "upload" => {
            let mut body = req.into_body();
            let mut received = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => received += f.data_ref().map_or(0, Bytes::len),
                    Err(_) => break,
                }
            }
            Ok(json_response(200, json!({ "received": received })))
        }
        _ => Ok(echo(req, 200).await),
    }
}

async fn echo(req: Request<Incoming>, status: u16) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let values: Vec<&str> = parts.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        headers.insert(name.as_str().to_string(), json!(values.join(", ")));
    }
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    json_response(
        status,
        json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "uri": parts.uri.to_string(),
            "peer": parts.extensions.get::<SocketAddr>().map(ToString::to_string),
            "sni": parts.extensions.get::<TlsSeen>().and_then(|t| t.sni.clone()),
            "client_cert": parts.extensions.get::<TlsSeen>().map(|t| t.client_cert),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        }),
    )
}

fn json_response(status: u16, v: Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    r
}

/// A raw HTTP/1.1 upstream that records every byte it receives, connection by connection, and
/// answers each complete request (a `Content-Length` or chunked body) with `200 OK`, kept alive, whose
/// body names the connection and the request on it: `conn 0 request 1`. What it cannot read as a
/// request it only records. A request whose path has a `/hang-up/` segment is answered, the first
/// time its request line is seen, by closing the connection. Runs on its own runtime thread; stops
/// when dropped.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    record: Arc<Record>,
    changed: tokio::sync::watch::Receiver<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Default)]
struct Record {
    connections: std::sync::Mutex<Vec<Recorded>>,
    /// Request lines hung up on once.
    hung_up: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// What one upstream connection received.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub bytes: Vec<u8>,
    /// The gateway closed the connection.
    pub closed: bool,
}

impl Recorded {
    /// The request line of each whole request received, and how many bytes follow the last of them.
    pub fn requests(&self) -> (Vec<String>, usize) {
        let mut lines = Vec::new();
        let mut at = 0;
        while let Some(used) = whole_request(&self.bytes[at..]) {
            let line = self.bytes[at..].split(|b| *b == b'\r').next().unwrap_or_default();
            lines.push(String::from_utf8_lossy(line).into_owned());
            at += used;
        }
        (lines, self.bytes.len() - at)
    }
}

impl RecordingUpstream {
    pub fn start() -> RecordingUpstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let record = Arc::new(Record::default());
        let (notify, changed) = tokio::sync::watch::channel(0u64);
        let notify = Arc::new(notify);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = record.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let serve = async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        let index = {
                            let mut connections = shared.connections.lock().expect("record");
                            connections.push(Recorded::default());
                            connections.len() - 1
                        };
                        notify.send_modify(|v| *v += 1);
                        tokio::spawn(record_connection(stream, index, shared.clone(), notify.clone()));
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        RecordingUpstream { addr, record, changed, stop: Some(stop) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every connection so far, in the order they were accepted.
    pub fn connections(&self) -> Vec<Recorded> {
        self.record.connections.lock().expect("record").clone()
    }

    /// Every byte received so far, all connections one after the other.
    pub fn received(&self) -> Vec<u8> {
        self.connections().into_iter().flat_map(|c| c.bytes).collect()
    }

    /// Waits until `done` holds for what was recorded; panics after `within`.
    pub async fn wait_until<F>(&self, within: Duration, done: F)
    where
        F: Fn(&[Recorded]) -> bool,
    {
        let mut changed = self.changed.clone();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            changed.mark_unchanged();
            if done(&self.connections()) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                let seen: Vec<String> =
                    self.connections().iter().map(|c| String::from_utf8_lossy(&c.bytes).into_owned()).collect();
                panic!("the upstream did not record what was awaited within {within:?}; it has {seen:#?}");
            }
        }
    }

    /// Waits until a request for `path` has been received whole (the barrier tests use: a marker
    /// request sent after the one under test).
    pub async fn wait_for_request(&self, path: &str) {
        let line = format!(" {path} HTTP/1.1\r\n");
        self.wait_until(Duration::from_secs(10), |conns| {
            conns.iter().any(|c| c.bytes.windows(line.len()).any(|w| w == line.as_bytes()))
        })
        .await;
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn record_connection(
    mut stream: tokio::net::TcpStream,
    index: usize,
    record: Arc<Record>,
    notify: Arc<tokio::sync::watch::Sender<u64>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pending = Vec::new();
    let mut answered = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        {
            let mut connections = record.connections.lock().expect("record");
            if n == 0 {
                connections[index].closed = true;
            } else {
                connections[index].bytes.extend_from_slice(&chunk[..n]);
            }
        }
        notify.send_modify(|v| *v += 1);
        if n == 0 {
            return;
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(used) = whole_request(&pending) {
            let line = pending.split(|b| *b == b'\r').next().map(|l| String::from_utf8_lossy(l).into_owned());
            pending.drain(..used);
            // A HEAD request's answer has the length a GET's would have, and no body.
            let head = line.as_deref().is_some_and(|l| l.starts_with("HEAD "));
            if let Some(line) = line.filter(|l| l.contains("/hang-up/"))
                && record.hung_up.lock().expect("record").insert(line)
            {
                record.connections.lock().expect("record")[index].closed = true;
                notify.send_modify(|v| *v += 1);
                return;
            }
            let body = format!("conn {index} request {answered}");
            answered += 1;
            let sent = if head { "" } else { body.as_str() };
            let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{sent}", body.len());
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// The length of the request at the start of `buf` when it is complete (head and body).
fn whole_request(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = request.parse(buf).ok()? else { return None };
    let header = |name: &str| {
        request.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value))
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut at = head;
        loop {
            let line_end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
            let size = std::str::from_utf8(&buf[at..line_end]).ok()?.split(';').next()?.trim();
            let size = usize::from_str_radix(size, 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // No trailers are sent by the gateway: the empty line ends the body.
                return (buf.get(at..at + 2)? == b"\r\n").then_some(at + 2);
            }
            at += size + 2;
            buf.get(..at)?;
        }
    }
    let length: usize = header("content-length").and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    (buf.len() >= head + length).then_some(head + length)
}
