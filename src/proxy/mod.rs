//! The proxy: our own HTTP/1.1 server connection (`downstream`, heads judged in `framing`), with HTTP/2
//! (h2c with prior knowledge, `h2` by ALPN) handed to hyper's, matches each request against the
//! current snapshot, runs the route's plugin chain and forwards to the service through our own pooled
//! keep-alive HTTP/1.1 client (`upstream`, `h1`), streaming bodies both ways, or reading a request
//! body first where the route buffers requests (`buffering`). Gateway errors are answered with Kong's
//! messages.
//! Per request: one snapshot load, no lock, no database.

mod buffering;
mod deadline;
mod downstream;
pub mod forward;
// Public only for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub mod framing;
mod hash_key;
pub mod logging;
mod proxy_protocol;
// Public only for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub mod h1;
mod reply;
mod request_body;
pub mod request_id;
pub mod stats;
mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::IpNet;
use crate::headers as h;
use crate::plugins::{AccessCtx, Flow, Reply};
use crate::router::{RequestView, normalize_path, request_host, route_host};
use crate::snapshot::{Destination, RouteTarget, SnapshotHolder};
pub use downstream::Drain;
use framing::{BodyFault, Refusal};
use reply::GatewayError;
use request_body::RequestBody;
use stats::Stats;
use upstream::{ProxyBody, UpstreamBody};

/// Largest request body a plugin may ask to buffer (key-auth's `key_in_body`).
const MAX_BUFFERED_BODY: usize = 8 * 1024 * 1024;

/// Everything the proxy reads; lives for the whole process.
#[derive(Debug)]
pub struct Proxy {
    pub holder: Arc<SnapshotHolder>,
    pub trusted_ips: Vec<IpNet>,
    pub stats: Stats,
    /// The node's access log (`proxy_access_log`): every request's entry, in Kong's JSON.
    pub access_log: Option<Arc<crate::plugins::log::Queue>>,
}

/// One listening socket of a worker with what its entry in `proxy_listen` asks for.
pub struct Listener {
    pub socket: TcpListener,
    /// `ssl`: the TLS configuration (certificates by SNI, ALPN).
    pub tls: Option<TlsAcceptor>,
    /// `proxy_protocol`: each connection starts with a PROXY header.
    pub proxy_protocol: bool,
}

/// How long a connection may take to send its PROXY header and finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a connection came from and arrived at, with the header values that follow from it
/// (computed once per connection, not per request).
#[derive(Debug)]
struct ConnInfo {
    /// The client: the peer, or the PROXY header's source when the peer is trusted.
    peer: SocketAddr,
    local_port: u16,
    /// The address the connection arrived at.
    local_ip: std::net::IpAddr,
    /// This connection's number in the process, and the requests it carried (correlation-id's
    /// `tracker`).
    serial: u64,
    requests: std::sync::atomic::AtomicU64,
    /// TLS: protocol version and cipher suite, for the logs.
    tls_info: Option<(&'static str, &'static str)>,
    client_ip: HeaderValue,
    port: HeaderValue,
    /// The peer is in `trusted_ips`: its X-Forwarded-* headers are passed on.
    trusted: bool,
    /// TLS: the server name the client asked for (`Some("")` without SNI); `None` in cleartext.
    sni: Option<Box<str>>,
}

impl ConnInfo {
    fn new(peer: SocketAddr, local: SocketAddr, trusted: bool, sni: Option<Box<str>>) -> ConnInfo {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let client_ip = HeaderValue::from_str(&peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            local_port: local.port(),
            local_ip: local.ip(),
            serial: SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            requests: std::sync::atomic::AtomicU64::new(0),
            tls_info: None,
            client_ip,
            port: HeaderValue::from(local.port()),
            trusted,
            sni,
        }
    }

    fn https(&self) -> bool {
        self.sni.is_some()
    }

    /// Kong's `forwarded_proto`: a trusted client's `X-Forwarded-Proto`, else the connection's scheme.
    fn forwarded_https(&self, headers: &http::HeaderMap) -> bool {
        match headers.get(&h::X_FORWARDED_PROTO) {
            Some(v) if self.trusted => v.as_bytes().eq_ignore_ascii_case(b"https"),
            _ => self.https(),
        }
    }
}

impl Proxy {
    fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_ips.iter().any(|n| n.contains(ip))
    }

    /// Accepts connections until `stop` resolves; `drain` then closes them. Runs on one worker's
    /// single-threaded runtime; several workers may share a listening socket. The PROXY header and
    /// the TLS handshake happen in each connection's own task, never in the accept loop.
    pub async fn serve(&'static self, listener: Listener, stop: impl std::future::Future<Output = ()>, drain: &Drain) {
        let Listener { socket, tls, proxy_protocol } = listener;
        let local_port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = socket.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        if e.kind() != std::io::ErrorKind::WouldBlock {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let _ = stream.set_nodelay(true);
            let watch = drain.watch();
            let tls = tls.clone();
            self.stats.connection_opened();
            tokio::spawn(async move {
                self.connection(stream, peer, local_port, proxy_protocol, tls, watch).await;
                self.stats.connection_closed();
            });
        }
    }

    /// One client connection: its PROXY header, its TLS handshake, then HTTP until it closes.
    async fn connection(
        &'static self,
        mut stream: tokio::net::TcpStream,
        mut peer: SocketAddr,
        local_port: u16,
        proxy_protocol: bool,
        tls: Option<TlsAcceptor>,
        drain: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut trusted = self.is_trusted(peer.ip());
        let local = stream.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], local_port)));
        let mut pre = Bytes::new();
        if proxy_protocol {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy_protocol::read_header(&mut stream)).await {
                Ok(Ok((source, rest))) => {
                    if let Some(source) = source.filter(|_| trusted) {
                        peer = source;
                        trusted = self.is_trusted(peer.ip());
                    }
                    pre = rest;
                }
                Ok(Err(e)) => {
                    tracing::info!(client = %peer, error = %e, "connection refused: bad PROXY protocol header");
                    return;
                }
                Err(_) => return,
            }
        }
        let Some(acceptor) = tls else {
            let conn = Arc::new(ConnInfo::new(peer, local, trusted, None));
            // What followed the PROXY header is the start of the first request.
            downstream::serve(self, Box::new(stream), BytesMut::from(pre), conn, drain, true).await;
            return;
        };
        let stream = proxy_protocol::Rewind::new(pre, stream);
        // Boxed, as the HTTP/2 connection below: the task of an idle connection carries neither.
        let tls = match Box::pin(tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %peer, "TLS handshake timed out");
                return;
            }
        };
        let session = tls.get_ref().1;
        let sni: Box<str> = session.server_name().unwrap_or("").to_ascii_lowercase().into();
        let h2 = session.alpn_protocol() == Some(b"h2");
        let mut info = ConnInfo::new(peer, local, trusted, Some(sni));
        info.tls_info = tls_info(session);
        let conn = Arc::new(info);
        if h2 {
            Box::pin(downstream::serve_h2(self, Box::new(tls), Bytes::new(), conn, drain)).await;
        } else {
            downstream::serve(self, Box::new(tls), BytesMut::new(), conn, drain, false).await;
        }
    }

    /// The answer to a refused request head (which closes its connection).
    fn refused(&self, refusal: Refusal) -> Response<ProxyBody> {
        self.stats.request();
        let mut resp = GatewayError::Refused(refusal).into_response(Instant::now());
        render(&mut resp, request_id::Format::Json, None);
        resp
    }

    /// `length`: the request's size as read, head and announced body (HTTP/1).
    async fn handle(&self, req: Request<RequestBody>, conn: &ConnInfo, length: Option<u64>) -> Response<ProxyBody> {
        let started = Instant::now();
        self.stats.request();
        conn.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = request_id::RequestId::new();
        let format = request_id::Format::of_accept(req.headers().get(header::ACCEPT));
        let mut draft = logging::LogDraft { read_size: length, ..logging::LogDraft::default() };
        // A panic (a bug) ends this request with a 500, not the connection, the worker or the node;
        // the panic hook has logged it.
        let proxied =
            std::panic::AssertUnwindSafe(self.proxy(req, conn, started, &id, &mut draft)).catch_unwind().await;
        let (mut resp, gateway_error) = match proxied {
            Ok(Ok(resp)) => (resp, false),
            Ok(Err(e)) => (e.into_response(started), true),
            Err(_) => (GatewayError::Unexpected.into_response(started), true),
        };
        // The gateway's own answers in the client's format, with the request's id (Kong 3.5+).
        render(&mut resp, format, Some(&id));
        resp.headers_mut().insert(h::X_REQUEST_ID, id.header_value());
        if draft.wanted && !matches!(resp.body(), ProxyBody::Abandoned) {
            self.log_at_end(&mut resp, draft, conn, started, gateway_error);
        }
        resp
    }

    /// Makes the response's body run the log phase when it is over.
    fn log_at_end(
        &self,
        resp: &mut Response<ProxyBody>,
        mut draft: logging::LogDraft,
        conn: &ConnInfo,
        started: Instant,
        gateway_error: bool,
    ) {
        // Kong's latency of an answer that never went upstream; with an upstream, the log phase
        // reckons from when it was asked (no clock read here).
        let ready = if draft.sent.is_none() { started.elapsed() } else { Duration::ZERO };
        if let Some(g) = &mut draft.full {
            g.started_at = crate::clock::epoch_millis_at(started);
            g.text.response(draft.upstream_status, resp.status().as_u16(), resp.headers());
        }
        let ticket = logging::LogTicket {
            client_ip: conn.peer.ip(),
            started,
            ready,
            status: resp.status().as_u16(),
            head_size: 0,
            gateway_error: gateway_error && resp.status().is_server_error(),
            access_log: self.access_log.clone(),
            draft,
        };
        let body = std::mem::replace(resp.body_mut(), ProxyBody::empty());
        *resp.body_mut() = ProxyBody::Logged(Box::new(logging::Logged { body, bytes: 0, ticket: Some(ticket) }));
    }

    async fn proxy(
        &self,
        req: Request<RequestBody>,
        conn: &ConnInfo,
        started: Instant,
        id: &request_id::RequestId,
        draft: &mut logging::LogDraft,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let (mut parts, body) = req.into_parts();
        // The one snapshot load of this request: routing, the plugins and forwarding all read this
        // configuration, even if a newer one is swapped in meanwhile.
        let snapshot = self.holder.load_full();
        let (route, (matched_len, path_regex)) = {
            let authority = parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                .unwrap_or("");
            let path = normalize_path(parts.uri.path());
            let view = RequestView {
                method: &parts.method,
                host: route_host(authority),
                port: conn.local_port,
                sni: conn.sni.as_deref(),
                path: &path,
                headers: &parts.headers,
            };
            let arrival = || logging::Arrival {
                https: conn.https(),
                host: view.host,
                port: conn.local_port,
                id: id.as_bytes(),
                tls: conn.tls_info,
            };
            let Some(m) = snapshot.router.find(&view) else {
                if self.access_log.is_some() {
                    draft.begin(None, &parts, &arrival(), true);
                }
                return Err(GatewayError::NoRoute);
            };
            if self.access_log.is_some() || m.target.chain.logs() {
                let serialized = self.access_log.is_some() || m.target.chain.serializes();
                draft.begin(Some(m.target.clone()), &parts, &arrival(), serialized);
            }
            (&**m.target, (m.matched_len, m.regex))
        };
        // A route whose stored version (or service's) does not compile is closed, not skipped.
        if route.broken {
            return Err(GatewayError::Unexpected);
        }
        if !route.http_allowed && !conn.forwarded_https(&parts.headers) {
            return Err(GatewayError::HttpsRequired(route.https_redirect_status, https_location(&parts)));
        }

        let mut buffered = None;
        let mut body = Some(body);
        if route.chain.needs_body() {
            let incoming = body.take().ok_or(GatewayError::Unexpected)?;
            buffered = match buffering::read(incoming, MAX_BUFFERED_BODY).await {
                Ok(buffering::Read::Whole(b)) => Some(b),
                Ok(buffering::Read::Partial(..)) => return Err(GatewayError::BodyTooLarge),
                Err(fault) => return Err(body_failed(fault, &parts, conn)),
            };
        }

        let (passed, buffered, added) = if route.chain.is_empty() {
            (Passed::default(), buffered, Vec::new())
        } else {
            let service_id = route.service.as_ref().map(|s| s.id);
            let mut ctx = AccessCtx::new(&snapshot.identity, &mut parts, buffered, conn.peer.ip(), service_id);
            ctx.connection =
                (conn.local_ip, conn.local_port, conn.serial, conn.requests.load(std::sync::atomic::Ordering::Relaxed));
            let flow = if route.chain.is_async() {
                route.chain.access_async(&mut ctx).await
            } else {
                route.chain.access(&mut ctx)
            };
            if draft.wanted {
                draft.consumer = ctx.consumer.clone();
            }
            if let Some(g) = &mut draft.full {
                g.credential = ctx.credential_id;
                g.correlation_id = ctx.correlation_id.take();
            }
            let outcome = access_outcome(ctx, flow);
            match outcome {
                Ok(passed) => passed,
                Err(reply) => return Ok(reply_response(reply, started)),
            }
        };

        let upstream_body = match (body, buffered) {
            // Request buffering comes after the access phase, as nginx's proxy module reads the body
            // after Kong's access handlers: a request a plugin refuses does not wait for its upload.
            (Some(b), _) if route.request_buffering && !b.is_end_stream() => {
                match buffering::read(b, buffering::REQUEST_BUFFER).await {
                    Ok(buffering::Read::Whole(b)) => whole_body(&mut parts.headers, b),
                    Ok(buffering::Read::Partial(read, rest)) => UpstreamBody::Partial(Box::new((Some(read), rest))),
                    Err(fault) => return Err(body_failed(fault, &parts, conn)),
                }
            }
            (Some(b), _) => UpstreamBody::Streaming(b),
            (None, Some(b)) => whole_body(&mut parts.headers, b),
            (None, None) => UpstreamBody::empty(),
        };
        let matched = (matched_len, path_regex);
        let mut response =
            self.forward(&parts, upstream_body, route, matched, conn, &passed, (started, id), draft).await;
        if let Ok(resp) = &mut response {
            for (name, value) in added {
                resp.headers_mut().insert(name, value);
            }
        }
        response
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        parts: &http::request::Parts,
        body: UpstreamBody,
        route: &RouteTarget,
        (matched_len, path_regex): (usize, Option<&regex::Regex>),
        conn: &ConnInfo,
        passed: &Passed,
        (started, id): (Instant, &request_id::RequestId),
        draft: &mut logging::LogDraft,
    ) -> Result<Response<ProxyBody>, GatewayError> {
        let Some(service) = route.service.as_ref() else {
            return Err(GatewayError::NoService);
        };
        let req_path = normalize_path(parts.uri.path());
        let matched = req_path.get(..matched_len).filter(|m| !m.is_empty());
        // Kong strips what the route's path matched, or just the leading `/` of a path-less route.
        let strip = route.strip_path.then(|| matched.unwrap_or("/"));
        let path = forward::upstream_path(&req_path, strip, service.path.as_deref().unwrap_or("/"));
        let upstream_target = forward::origin_form(path, parts.uri.query()).ok_or(GatewayError::BadRequest)?;
        if let Some(g) = &mut draft.full {
            g.text.upstream_uri(upstream_target.as_str());
        }
        let mut head = forward::UpstreamHead {
            client: parts,
            target: &upstream_target,
            conn_ip: &conn.client_ip,
            conn_port: &conn.port,
            conn_proto: if conn.https() { b"https" } else { b"http" },
            trusted: conn.trusted,
            prefix: if route.strip_path { matched.filter(|m| *m != "/") } else { None },
            identity: passed.identity.as_ref(),
            host: if route.preserve_host { None } else { Some(&service.host_header) },
            request_id: id.as_bytes(),
        };
        // Kong's upstream SNI is the Host sent upstream: the service's (or the peer's), or the
        // client's with `preserve_host` (whose connections are then pooled per name).
        let client_host = if service.tls.is_some() && route.preserve_host {
            parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(request_host)
        } else {
            None
        };
        let mut sni_key: Arc<str>;
        // The balancer as it is now, for every try (one load), or the name's DNS answer.
        let mut balancer = None;
        let mut answer = None;
        match &route.destination {
            Destination::Address => {}
            Destination::Balancer(rb) => {
                let mut now = rb.live.load();
                // Targets whose names were never answered yet: wait for them rather than answer 503.
                if now.resolving() && now.peers.is_empty() {
                    now = rb.live.resolved(service.connect_timeout).await;
                }
                balancer = Some((now, rb.variant));
            }
            Destination::Name(name) => {
                let resolved = name.resolve().await;
                match &resolved.result {
                    Ok(_) => answer = Some(resolved),
                    Err(crate::dns::Failure::NotFound(_)) => return Err(GatewayError::NameResolution),
                    Err(crate::dns::Failure::Error(e)) => {
                        return Err(GatewayError::DnsFailed { host: service.host.clone(), error: e.as_str().into() });
                    }
                }
            }
        }
        // Consistent hashing's value, computed once for every try (Kong computes it on the first).
        let hash = balancer.as_ref().filter(|(b, _)| b.hashes()).map(|(b, _)| {
            let consumer = passed.consumer.as_ref().map(|c| c.id);
            let captures = path_regex.map(|re| (re, &*req_path));
            let sources = hash_key::Sources { parts, client_ip: conn.peer.ip(), consumer, captures };
            hash_key::hash_key(&b.upstream, sources)
        });

        let sent = Instant::now();
        // Like nginx's `proxy_next_upstream error timeout`: a request that never reached the upstream
        // is always tried again; one that may have, only when its method is idempotent. With a
        // balancer, each try goes to another peer while there is one.
        let idempotent = parts.method.is_idempotent();
        let mut attempt = 0;
        let mut tried: Vec<usize> = Vec::new();
        let mut lease = None;
        let mut body = Some(body);
        let (response, answered_by) = loop {
            let mut peer_index = None;
            let (host, addresses, generation, pool_key) = match (&balancer, &answer) {
                (Some((b, variant)), _) => {
                    let picked = b.pick(hash.as_ref().map(|h| h.value.as_str()), &tried);
                    let picked = picked.ok_or(GatewayError::NoPeer)?;
                    let i = picked.peer;
                    // A failed try's claim ends here; the last one lasts as long as the response.
                    lease = picked.lease;
                    let keys = b.variants.get(*variant);
                    let (Some(peer), Some(key), Some(host_header)) = (
                        b.peers.get(i),
                        keys.and_then(|k| k.pool_keys.get(i)),
                        keys.and_then(|k| k.host_headers.get(i)),
                    ) else {
                        return Err(GatewayError::NoPeer);
                    };
                    peer_index = Some(i);
                    if !route.preserve_host {
                        head.host = Some(host_header);
                    }
                    (&*peer.host, upstream::Addresses::One(peer.address), 0, key)
                }
                (None, Some(answer)) => {
                    let Ok(records) = &answer.result else { return Err(GatewayError::Unexpected) };
                    let addresses = upstream::Addresses::Resolved { records, port: service.port };
                    (&*service.host, addresses, answer.generation, &service.pool_key)
                }
                (None, None) => {
                    let ip = service.ip.ok_or(GatewayError::Unexpected)?;
                    let addresses = upstream::Addresses::One(std::net::SocketAddr::new(ip, service.port));
                    (&*service.host, addresses, 0, &service.pool_key)
                }
            };
            let (server_name, pool_key) = match client_host.as_deref() {
                Some(name) => {
                    sni_key = Arc::from(format!("{pool_key}|{name}"));
                    (name, &sni_key)
                }
                None => (host, pool_key),
            };
            let target = upstream::Target {
                addresses,
                generation,
                key: pool_key,
                connect_timeout: service.connect_timeout,
                read_timeout: service.read_timeout,
                write_timeout: service.write_timeout,
                tls: service.tls.as_ref().map(|c| (c, server_name)),
            };
            if let Some(g) = &mut draft.full
                && let upstream::Addresses::One(addr) = &target.addresses
            {
                g.tries.push(crate::plugins::log::Try { ip: addr.ip(), port: addr.port() });
            }
            let this_body = body.take().ok_or(GatewayError::Unexpected)?;
            let replay = if attempt < service.retries { this_body.replayable() } else { None };
            // Read and write timeouts are enforced on the connection itself (see `upstream::Target`).
            let (error, retry) = match upstream::send(target, &head, this_body).await {
                Ok(resp) => break (resp, peer_index),
                Err(e) => {
                    // The client's body failed, not the upstream: no retry, no 5xx.
                    if let Some(fault) = e.client_fault() {
                        return Err(body_failed(fault, parts, conn));
                    }
                    if let upstream::UpstreamError::Tls(tls) = &e {
                        tracing::error!(service = %service.id, error = %tls, "upstream TLS handshake failed (certificate verify error or no shared protocol)");
                    } else {
                        tracing::debug!(error = %e, attempt, "upstream request failed");
                    }
                    let retry = e.before_sending() || idempotent;
                    (GatewayError::from_upstream(&e), retry)
                }
            };
            if let (Some((b, _)), Some(i)) = (&balancer, peer_index) {
                // Kong's passive checks: a try that never got a response counts as a TCP failure, or
                // as a timeout.
                b.report_failure(i, matches!(error, GatewayError::Timeout));
            }
            tried.extend(peer_index);
            match replay {
                Some(replay) if retry => {
                    attempt += 1;
                    body = Some(replay);
                }
                _ => return Err(error),
            }
        };
        let upstream_latency = sent.elapsed();
        if draft.wanted {
            draft.sent = Some((sent, upstream_latency));
            draft.upstream_status = Some(response.status().as_u16());
        }
        if let (Some((b, _)), Some(i)) = (&balancer, answered_by) {
            b.report_status(i, response.status().as_u16());
        }
        let (mut rparts, rbody) = response.into_parts();
        forward::strip_hop_by_hop(&mut rparts.headers);
        route.chain.header_filter(passed.consumer.as_deref(), &mut rparts);
        // Our hop to the upstream is HTTP/1.1, whatever the client spoke.
        forward::append_via(&mut rparts.headers, http::Version::HTTP_11);
        if !rparts.headers.contains_key(header::SERVER) {
            rparts.headers.insert(header::SERVER, forward::SERVER);
        }
        rparts.headers.insert(h::X_UPSTREAM_LATENCY, forward::millis(upstream_latency));
        rparts.headers.insert(h::X_PROXY_LATENCY, forward::millis(sent.duration_since(started)));
        rparts.version = parts.version;
        if let (Some(cookie), Some((b, _))) = (hash.and_then(|h| h.set_cookie), &balancer) {
            // Kong's cookie replaces one of the same name the upstream set.
            let name = b.upstream.hash_on_cookie.as_deref().unwrap_or_default();
            let prefix = format!("{name}=");
            let kept: Vec<HeaderValue> = rparts
                .headers
                .get_all(header::SET_COOKIE)
                .iter()
                .filter(|v| !v.as_bytes().starts_with(prefix.as_bytes()))
                .cloned()
                .collect();
            rparts.headers.remove(header::SET_COOKIE);
            for v in kept.into_iter().chain(std::iter::once(cookie)) {
                rparts.headers.append(header::SET_COOKIE, v);
            }
        }
        let mut rbody = rbody;
        if let Some(lease) = lease {
            rbody.hold(lease);
        }
        Ok(Response::from_parts(rparts, rbody))
    }
}

/// The TLS protocol version and cipher suite of a client connection, in Kong's words where it has them.
fn tls_info(session: &tokio_rustls::rustls::ServerConnection) -> Option<(&'static str, &'static str)> {
    use tokio_rustls::rustls::ProtocolVersion;
    let version = match session.protocol_version()? {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "unknown",
    };
    let cipher = session.negotiated_cipher_suite().and_then(|s| s.suite().as_str()).unwrap_or("unknown");
    Some((version, cipher))
}

/// Who the access phase let through: the consumer (for the header filter) and the consumer headers
/// the upstream request carries.
#[derive(Debug, Default)]
struct Passed {
    consumer: Option<Arc<crate::identity::Consumer>>,
    identity: Option<crate::plugins::UpstreamIdentity>,
}

/// What the access phase leaves for forwarding (consumer, body, response headers), or the reply
/// that ends the request, with the plugins' response headers first.
#[allow(clippy::type_complexity)]
fn access_outcome(
    mut ctx: AccessCtx<'_>,
    flow: Flow,
) -> Result<(Passed, Option<Bytes>, Vec<(http::HeaderName, HeaderValue)>), Reply> {
    match flow {
        Flow::Continue => {
            let passed = Passed { consumer: ctx.consumer.take(), identity: ctx.upstream_identity.take() };
            Ok((passed, ctx.body.take(), ctx.response_headers))
        }
        Flow::Respond(mut reply) => {
            let mut headers = ctx.response_headers;
            headers.append(&mut reply.headers);
            reply.headers = headers;
            Err(reply)
        }
    }
}

/// A body read whole goes upstream with its length (a chunked one too, as nginx sends a buffered body).
fn whole_body(headers: &mut http::HeaderMap, body: Bytes) -> UpstreamBody {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.remove(header::TRANSFER_ENCODING);
    UpstreamBody::Buffered(Some(body))
}

/// The error for a client body that could not be read; a client that left is logged as nginx logs
/// it (status 499), since there is no one to answer.
fn body_failed(fault: BodyFault, parts: &http::request::Parts, conn: &ConnInfo) -> GatewayError {
    if fault == BodyFault::ClientLeft {
        tracing::info!(
            status = 499,
            method = %parts.method,
            path = parts.uri.path(),
            client = %conn.peer,
            "client closed the connection before its request body was complete"
        );
    }
    GatewayError::from_body(fault)
}

fn https_location(parts: &http::request::Parts) -> Option<HeaderValue> {
    let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(request_host)?;
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    HeaderValue::from_str(&format!("https://{host}{pq}")).ok()
}

/// Turns a plugin's reply into a response with the gateway's headers; its message is written when
/// the response leaves ([`render`]), in the client's format with the request's id.
pub fn reply_response(reply: Reply, started: Instant) -> Response<ProxyBody> {
    gateway_response(reply.status, Some(reply.message), reply.headers, started)
}

/// An answer of the gateway's own: its headers, and its message (if any) left for [`render`].
pub fn gateway_response(
    status: StatusCode,
    message: Option<Arc<str>>,
    extra: Vec<(http::HeaderName, HeaderValue)>,
    started: Instant,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::new()));
    *resp.status_mut() = status;
    if let Some(message) = message {
        resp.extensions_mut().insert(request_id::GatewayMessage(message));
    }
    let headers = resp.headers_mut();
    headers.insert(header::SERVER, forward::SERVER);
    headers.insert(h::X_RESPONSE_LATENCY, forward::millis(started.elapsed()));
    for (name, value) in extra {
        headers.append(name, value);
    }
    resp
}

/// Writes a gateway answer's message as its body: Kong's template for `format` with the request's
/// id, or `{"message": …}` for an answer given before any request existed (a refused head).
fn render(resp: &mut Response<ProxyBody>, format: request_id::Format, id: Option<&request_id::RequestId>) {
    let Some(request_id::GatewayMessage(message)) = resp.extensions_mut().remove() else { return };
    let (body, format) = match id {
        Some(id) => (format.body(&message, id), format),
        None => (Bytes::from(serde_json::json!({ "message": &*message }).to_string()), request_id::Format::Json),
    };
    *resp.body_mut() = ProxyBody::full(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, format.content_type());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{Plugin, PluginChain};
    use crate::router::{RouteMatcher, RouteSpec, Router};
    use crate::snapshot::Snapshot;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plugin with a bug: it panics on requests for `/bug`.
    #[derive(Debug)]
    struct Buggy;

    impl Plugin for Buggy {
        fn access(&self, ctx: &mut AccessCtx<'_>) -> Flow {
            assert!(ctx.parts.uri.path() != "/bug", "a bug in a plugin");
            Flow::Continue
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    /// A proxy with one route (`Buggy` plugin, no service) on a free port.
    async fn start_proxy() -> std::net::SocketAddr {
        let target = RouteTarget {
            id: uuid::Uuid::nil(),
            strip_path: false,
            preserve_host: false,
            http_allowed: true,
            https_redirect_status: StatusCode::UPGRADE_REQUIRED,
            request_buffering: true,
            broken: false,
            service: None,
            destination: Destination::Address,
            chain: PluginChain::of(vec![Arc::new(Buggy)]),
            subject: Arc::new(crate::plugins::log::Subject::new(
                uuid::Uuid::nil(),
                "r".into(),
                crate::snapshot::compile::null_entity(),
                None,
            )),
        };
        let spec = RouteSpec {
            methods: vec![],
            hosts: vec![],
            paths: vec![],
            headers: vec![],
            snis: vec![],
            regex_priority: 0,
            target: (),
        };
        let matcher = Arc::new(RouteMatcher::compile(&spec).expect("route"));
        let holder = Arc::new(SnapshotHolder::new());
        holder.store(Snapshot {
            version: 1,
            router: Arc::new(Router::assemble(vec![(matcher, Arc::new(target))])),
            ..Snapshot::empty()
        });
        let proxy: &'static Proxy =
            Box::leak(Box::new(Proxy { holder, trusted_ips: Vec::new(), stats: Stats::default(), access_log: None }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let drain = Drain::default();
            let listener = Listener { socket: listener, tls: None, proxy_protocol: false };
            proxy.serve(listener, std::future::pending(), &drain).await;
        });
        addr
    }

    /// A panic in one request is that request's 500; the connection's worker and every other request
    /// go on.
    #[tokio::test]
    async fn a_panic_is_one_requests_500() {
        let addr = start_proxy().await;
        let bug = get(addr, "/bug").await;
        assert!(bug.starts_with("HTTP/1.1 500"), "{bug}");
        // Kong's JSON template, byte for byte, with the request's id.
        assert!(bug.contains("{\n  \"message\":\"An unexpected error occurred\",\n  \"request_id\":\""), "{bug}");
        assert!(bug.to_ascii_lowercase().contains("x-tollgate-request-id: "), "{bug}");
        // The route has no service: a request that does not hit the bug gets Kong's 503.
        let fine = get(addr, "/fine").await;
        assert!(fine.starts_with("HTTP/1.1 503"), "{fine}");
    }

    /// A connection that sends nothing, or only part of a head, is closed after nginx's timeouts
    /// (Kong's `keepalive_timeout` and `client_header_timeout`, 60 s each), on the runtime's clock.
    #[tokio::test(start_paused = true)]
    async fn idle_and_slow_connections_close_after_sixty_seconds() {
        let addr = start_proxy().await;
        for sent in [&b""[..], b"GET /fine HT"] {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(sent).await.expect("write");
            let opened = tokio::time::Instant::now();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.expect("read");
            let waited = opened.elapsed();
            assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
            assert!(waited >= Duration::from_secs(60) && waited < Duration::from_secs(61), "{waited:?}");
        }
    }
}
