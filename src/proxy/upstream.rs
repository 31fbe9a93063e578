//! Upstream connections and the bodies that stream through the proxy.
//!
//! Our own HTTP/1.1 client (the wire format is in `h1`): the task serving a client connection writes
//! the request to the upstream socket and reads the response head itself, and the response body reads
//! the socket directly when the server polls it. No task per upstream connection, no channel between
//! tasks: each proxied request used to cross tasks several times through hyper's client.
//!
//! Each proxy worker is a single-threaded runtime with its own keep-alive pool, kept in a thread-local:
//! checking a connection out or back in takes no lock and no atomic operation. A connection goes back
//! to the pool the moment its response body has been read to the end; one that an upstream closed
//! while idle is noticed at checkout, and a request that a pooled connection could not carry (closed
//! just as it was sent) goes once more on a fresh connection. A connection whose request body fails
//! on the client's side (a broken chunk, a client that left) is closed, never pooled: its upstream is
//! left mid-request. Written here rather than taken from `hyper_util`'s pooled client, whose pool is
//! one mutex shared by every connection of the process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, header, request};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::deadline::DeadlineStream;
use super::framing::BodyFault;
use super::h1::{self, Decoded, Decoder, RequestFraming};
use super::request_body::RequestBody;

type Hasher = foldhash::fast::RandomState;

/// The request body sent upstream: the client's stream as is, a buffer (the whole body, read by
/// request buffering or for a plugin), or the first part of a body request buffering read up to its
/// limit followed by the rest of the stream (boxed: rare, and it keeps every request's body small).
#[derive(Debug)]
pub enum UpstreamBody {
    Streaming(RequestBody),
    Buffered(Option<Bytes>),
    Partial(Box<(Option<Bytes>, RequestBody)>),
}

impl UpstreamBody {
    pub fn empty() -> UpstreamBody {
        UpstreamBody::Buffered(None)
    }

    /// Whether the same body can be sent again (for retries): buffered and empty bodies can.
    pub fn replayable(&self) -> Option<UpstreamBody> {
        match self {
            UpstreamBody::Buffered(b) => Some(UpstreamBody::Buffered(b.clone())),
            UpstreamBody::Streaming(b) if b.is_end_stream() => Some(UpstreamBody::empty()),
            UpstreamBody::Streaming(_) | UpstreamBody::Partial(..) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyFault;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        match self.get_mut() {
            UpstreamBody::Streaming(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Buffered(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            UpstreamBody::Partial(partial) => match partial.0.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Pin::new(&mut partial.1).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Streaming(b) => b.is_end_stream(),
            UpstreamBody::Buffered(b) => b.is_none(),
            UpstreamBody::Partial(partial) => partial.0.is_none() && partial.1.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Streaming(b) => b.size_hint(),
            UpstreamBody::Buffered(Some(b)) => SizeHint::with_exact(b.len() as u64),
            UpstreamBody::Buffered(None) => SizeHint::with_exact(0),
            UpstreamBody::Partial(partial) => {
                let read = partial.0.as_ref().map_or(0, |b| b.len() as u64);
                let rest = partial.1.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
        }
    }
}

/// The response body sent to the client: the upstream's, read from its connection as it is polled, or
/// a body already in memory (a gateway answer, or an upstream body that arrived with its head).
#[derive(Debug)]
pub enum ProxyBody {
    Upstream(UpstreamResponse),
    Full(Option<Bytes>),
    /// No answer at all, for a client that left before its request was whole: the body fails when
    /// polled, and the connection closes without an answer.
    Abandoned,
    /// A body whose end runs the log phase.
    Logged(Box<super::logging::Logged>),
}

impl ProxyBody {
    pub fn full(b: Bytes) -> ProxyBody {
        ProxyBody::Full(Some(b))
    }

    /// Tells a logged body how large the response head was on the wire.
    pub fn head_written(&mut self, bytes: u64) {
        if let ProxyBody::Logged(logged) = self {
            logged.head_written(bytes);
        }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }

    /// The body of a response whose head was just read from `conn`.
    fn upstream(mut conn: Conn, decoder: Decoder, reusable: bool) -> ProxyBody {
        if decoder.is_done() {
            release(conn, reusable);
            return ProxyBody::empty();
        }
        // Usually a small body came in the same read as the head: hand it out whole, and give the
        // connection back before the client is even answered.
        if let Decoder::Length(len) = decoder
            && let Ok(len) = usize::try_from(len)
            && conn.read.len() >= len
        {
            let data = conn.read.split_to(len).freeze();
            release(conn, reusable);
            return ProxyBody::full(data);
        }
        ProxyBody::Upstream(UpstreamResponse { conn: Some(conn), decoder, reusable, lease: None })
    }
}

impl ProxyBody {
    /// Keeps `lease` until the body is over (a body already in memory is over: it drops at once).
    pub fn hold(&mut self, lease: crate::balancer::Lease) {
        match self {
            ProxyBody::Upstream(body) => body.lease = Some(lease),
            ProxyBody::Logged(logged) => logged.body.hold(lease),
            _ => {}
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body) => body.poll_data(cx).map(|d| d.map(|d| d.map(Frame::data))),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Abandoned => {
                Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the client left"))))
            }
            ProxyBody::Logged(logged) => logged.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body) => body.conn.is_none() || body.decoder.is_done(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Abandoned => false,
            ProxyBody::Logged(logged) => logged.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) => body.decoder.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Abandoned => SizeHint::default(),
            ProxyBody::Logged(logged) => logged.size_hint(),
        }
    }
}

/// A response body still on its upstream connection, which it owns: back to the pool once the body is
/// read to its end (when the connection can carry another request), closed if dropped before.
#[derive(Debug)]
pub struct UpstreamResponse {
    /// `None` once the body is complete or failed.
    conn: Option<Conn>,
    decoder: Decoder,
    reusable: bool,
    /// The balancer's claim on the peer, held until the body is over (least-connections).
    lease: Option<crate::balancer::Lease>,
}

impl UpstreamResponse {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
            let decoded = self.decoder.decode(&mut conn.read);
            match decoded {
                Ok(Decoded::Data(data)) => {
                    // The end of the body may already be in the buffer: then the connection goes
                    // back now, and the server sees the end without polling again.
                    if let Err(e) = self.decoder.skip_framing(&mut conn.read) {
                        self.conn = None;
                        return Poll::Ready(Some(Err(invalid(e))));
                    }
                    if self.decoder.is_done() {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Decoded::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(invalid(e))));
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    // Closed: the end of a close-delimited body, an error for any other.
                    self.conn = None;
                    if let Err(e) = self.decoder.eof() {
                        return Poll::Ready(Some(Err(invalid(e))));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            release(conn, self.reusable);
        }
    }
}

fn invalid(e: h1::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The byte stream of an upstream connection.
#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// Room made in the read buffer before a read at first; doubled each time a read fills it.
const INITIAL_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// An open upstream connection, with the service's read and write timeouts on every operation.
#[derive(Debug)]
struct Conn {
    io: Pin<Box<DeadlineStream<Io>>>,
    /// Read and not consumed yet. Heads and body data are split off it, never copied.
    read: BytesMut,
    read_size: usize,
    /// The request head and chunk framing being written; its memory is kept from request to request.
    write: Vec<u8>,
    /// The pool this connection goes back to.
    key: Arc<str>,
    /// The DNS answer its address came from (`Target::generation`).
    generation: u64,
}

impl Conn {
    fn new(io: Io, target: Target<'_>) -> Conn {
        Conn {
            io: Box::pin(DeadlineStream::new(io, target.read_timeout, target.write_timeout)),
            read: BytesMut::new(),
            read_size: INITIAL_READ,
            write: Vec::new(),
            key: target.key.clone(),
            generation: target.generation,
        }
    }

    /// Reads more into `read`; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let spare = self.read.capacity() - self.read.len();
        if spare < self.read_size / 2 {
            self.read.reserve(self.read_size);
        }
        let spare = self.read.capacity() - self.read.len();
        let n = ready!(tokio_util::io::poll_read_buf(self.io.as_mut(), cx, &mut self.read))?;
        if n == spare && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Whether an idle connection can carry a request: nothing to read, not even the end of the
    /// stream (an upstream closing an idle connection sends that), checked without waiting.
    fn is_open(&mut self) -> bool {
        self.io.as_mut().time_reads(false);
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        self.io.as_mut().poll_read(&mut cx, &mut buf).is_pending()
    }
}

/// Pool limits, set once at start (`upstream_keepalive_*`).
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_idle_per_upstream: usize,
    pub idle_timeout: Duration,
}

static SETTINGS: OnceLock<PoolSettings> = OnceLock::new();

pub fn configure(settings: PoolSettings) {
    let _ = SETTINGS.set(settings);
}

fn settings() -> PoolSettings {
    SETTINGS
        .get()
        .copied()
        .unwrap_or(PoolSettings { max_idle_per_upstream: 512, idle_timeout: Duration::from_secs(60) })
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// Upstream connections: opened, taken again from the pool, put in the pool, dropped from it
/// (expired, closed by the upstream, or of an older DNS answer), for `/metrics`.
pub static POOL_EVENTS: crate::plugins::prometheus::counters::Counters<4> =
    crate::plugins::prometheus::counters::Counters::new();
pub const POOL_OPENED: usize = 0;
pub const POOL_REUSED: usize = 1;
pub const POOL_PARKED: usize = 2;
pub const POOL_DROPPED: usize = 3;

thread_local! {
    /// This worker's idle connections by upstream `host:port`.
    static POOL: RefCell<HashMap<Arc<str>, Vec<Idle>, Hasher>> = RefCell::new(HashMap::default());
}

/// The most recently used idle connection to `key` that is still open and was made under DNS
/// answer `generation`.
fn checkout(key: &str, generation: u64) -> Option<Conn> {
    let timeout = settings().idle_timeout;
    POOL.with_borrow_mut(|pool| {
        let list = pool.get_mut(key)?;
        while let Some(mut idle) = list.pop() {
            if idle.conn.generation == generation && idle.since.elapsed() < timeout && idle.conn.is_open() {
                POOL_EVENTS.add(POOL_REUSED, 1);
                return Some(idle.conn);
            }
            POOL_EVENTS.add(POOL_DROPPED, 1);
        }
        None
    })
}

/// Pools a connection whose exchange is over, when it can carry another one; closes it otherwise.
fn release(mut conn: Conn, reusable: bool) {
    // Bytes beyond the response: the upstream is not speaking HTTP as we understand it.
    if !reusable || !conn.read.is_empty() {
        return;
    }
    // An idle connection keeps a small buffer, not what a large download grew.
    if conn.read_size > INITIAL_READ {
        conn.read = BytesMut::new();
        conn.read_size = INITIAL_READ;
    }
    let max = settings().max_idle_per_upstream;
    POOL.with_borrow_mut(|pool| {
        let list = match pool.get_mut(&*conn.key) {
            Some(list) => list,
            None => pool.entry(conn.key.clone()).or_default(),
        };
        if list.len() < max {
            POOL_EVENTS.add(POOL_PARKED, 1);
            list.push(Idle { conn, since: Instant::now() });
        }
    });
}

/// Where and how to connect. Connections carry the service's read and write timeouts (Kong's:
/// the longest wait between two successive reads or writes), so the pool key includes them.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub addresses: Addresses<'a>,
    /// The DNS answer `addresses` came from (0 for an address): pooled connections made under
    /// another one are not reused, so that a name that moves takes its traffic with it.
    pub generation: u64,
    pub key: &'a Arc<str>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// For an `https` service: its TLS client configuration and the server name to send.
    pub tls: Option<(&'a Arc<tokio_rustls::rustls::ClientConfig>, &'a str)>,
}

/// Where a new connection goes.
#[derive(Debug, Clone, Copy)]
pub enum Addresses<'a> {
    One(SocketAddr),
    /// A name's addresses, tried in turn from a random one; those without a port of their own (A
    /// and AAAA records) on `port`.
    Resolved {
        records: &'a crate::dns::Records,
        port: u16,
    },
}

/// Which side of the upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect failed: {0}")]
    Connect(io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// Writing the request or reading the response failed (a timeout is `TimedOut`).
    #[error("upstream exchange failed: {0}")]
    Exchange(io::Error),
    #[error("invalid upstream response: {0}")]
    Invalid(h1::Error),
    /// The client's request body failed while it was being sent: the client's doing, not the
    /// upstream's (see `framing::BodyFault`).
    #[error("client request body failed: {0}")]
    ClientBody(BodyFault),
    /// The request body did not match the framing announced for it: a gateway bug.
    #[error("request body does not match its framing: {0}")]
    BodyMismatch(&'static str),
}

impl UpstreamError {
    /// Whether the request certainly never reached the upstream.
    pub fn before_sending(&self) -> bool {
        matches!(self, UpstreamError::ConnectTimeout | UpstreamError::Connect(_) | UpstreamError::Tls(_))
    }

    /// What the failure means when the client's body caused it: not the upstream's fault, and never
    /// worth a retry.
    pub fn client_fault(&self) -> Option<BodyFault> {
        match self {
            UpstreamError::ClientBody(fault) => Some(*fault),
            _ => None,
        }
    }

    /// Whether a read or write on the upstream connection waited longer than its timeout.
    pub fn timed_out(&self) -> bool {
        match self {
            UpstreamError::ConnectTimeout => true,
            UpstreamError::Exchange(e) => e.kind() == io::ErrorKind::TimedOut,
            _ => false,
        }
    }
}

async fn connect(target: Target<'_>) -> Result<Conn, UpstreamError> {
    let addrs: Vec<SocketAddr> = match target.addresses {
        Addresses::One(addr) => vec![addr],
        Addresses::Resolved { records, port } => {
            let mut all: Vec<SocketAddr> = records.socket_addrs(port).collect();
            // Spread new connections over a name's addresses, as Kong's resolver rotates them.
            let start = rand::random_range(0..all.len().max(1));
            all.rotate_left(start);
            all
        }
    };
    let mut last = UpstreamError::ConnectTimeout;
    for addr in addrs {
        match tokio::time::timeout(target.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                POOL_EVENTS.add(POOL_OPENED, 1);
                let _ = stream.set_nodelay(true);
                let Some((config, server_name)) = target.tls else {
                    return Ok(Conn::new(Io::Plain(stream), target));
                };
                let tls =
                    tokio::time::timeout(target.connect_timeout, super::tls::connect(stream, server_name, config));
                return match tls.await {
                    Ok(Ok(stream)) => Ok(Conn::new(Io::Tls(Box::new(stream)), target)),
                    Ok(Err(e)) => Err(UpstreamError::Tls(e)),
                    Err(_) => Err(UpstreamError::ConnectTimeout),
                };
            }
            Ok(Err(e)) => last = UpstreamError::Connect(e),
            Err(_) => last = UpstreamError::ConnectTimeout,
        }
    }
    Err(last)
}

/// A request head as the client writes it to an upstream: the proxy's is encoded straight from the
/// client's request and what the gateway adds (`forward::UpstreamHead`), with no header map in
/// between; `request::Parts` (origin-form URI, `Host` set, no hop-by-hop headers) serves the rest.
pub trait Outgoing: Sync {
    fn method(&self) -> &Method;
    /// The `Content-Length` the request carries, and whether it carries one at all (a body of
    /// known length is framed by it).
    fn content_length(&self) -> (Option<u64>, bool);
    /// Appends the head: request line, headers, then the framing header.
    fn encode(&self, framing: RequestFraming, out: &mut Vec<u8>);
}

impl Outgoing for request::Parts {
    fn method(&self) -> &Method {
        &self.method
    }

    fn content_length(&self) -> (Option<u64>, bool) {
        (h1::content_length(&self.headers), self.headers.contains_key(header::CONTENT_LENGTH))
    }

    fn encode(&self, framing: RequestFraming, out: &mut Vec<u8>) {
        h1::encode_head(&self.method, &self.uri, &self.headers, framing, out);
    }
}

/// Sends a request on a pooled or new connection to `target`, and returns the response once its
/// head has arrived.
pub async fn send<O: Outgoing>(
    target: Target<'_>,
    request: &O,
    mut body: UpstreamBody,
) -> Result<Response<ProxyBody>, UpstreamError> {
    let parts = request;
    if let Some(conn) = checkout(target.key, target.generation) {
        let replay = body.replayable();
        match exchange(conn, parts, body).await {
            Ok(response) => return Ok(response),
            // Closed by the upstream as the request went out, with no answer: it goes once more on a
            // fresh connection if it can be sent again, and either was not sent whole or may be
            // repeated (an idempotent method).
            Err(failed) if failed.stale && (failed.unsent || parts.method().is_idempotent()) => match replay {
                Some(replay) => body = replay,
                None => return Err(failed.error),
            },
            Err(failed) => return Err(failed.error),
        }
    }
    let conn = connect(target).await?;
    exchange(conn, parts, body).await.map_err(|failed| failed.error)
}

/// Why an exchange failed.
#[derive(Debug)]
struct Failed {
    error: UpstreamError,
    /// Nothing was received and the connection broke: what a stale pooled connection does.
    stale: bool,
    /// The request could not be written whole.
    unsent: bool,
}

/// Writes the request on `conn` and reads the response head, then hands the connection to the body.
async fn exchange<O: Outgoing>(conn: Conn, parts: &O, body: UpstreamBody) -> Result<Response<ProxyBody>, Failed> {
    let mut ex = Exchange::new(conn, parts, body);
    let head = match poll_fn(|cx| ex.poll(cx)).await {
        Ok(head) => head,
        Err(error) => {
            let broken = matches!(&error, UpstreamError::Exchange(e) if e.kind() != io::ErrorKind::TimedOut);
            let stale = broken && !ex.received;
            return Err(Failed { error, stale, unsent: !ex.sent });
        }
    };
    // An early answer (before the request was written whole) leaves the connection mid-request.
    let reusable = head.keep_alive && ex.sent;
    let h1::ResponseHead { status, version, headers, body: decoder, .. } = head;
    let mut response = Response::new(ProxyBody::upstream(ex.conn, decoder, reusable));
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(response)
}

/// One request on one connection, up to the response head: writes the head and the body frame by
/// frame while watching for the response, so an upstream answering before the whole body is sent
/// (and then reading no more of it) is heard.
struct Exchange<'a, O> {
    conn: Conn,
    parts: &'a O,
    /// The rest of the request body; `None` once its end is written.
    body: Option<UpstreamBody>,
    /// `None` until the first frame of a body of unknown length shows whether there is one.
    framing: Option<RequestFraming>,
    /// Body bytes still to send under `Content-Length`.
    remaining: u64,
    /// Written from `conn.write`: how far.
    pos: usize,
    /// A body frame being written (after `conn.write`).
    data: Bytes,
    /// The CRLF closing the chunk being written, sent with what follows it.
    crlf_owed: bool,
    unflushed: bool,
    /// The whole request is written and flushed.
    sent: bool,
    /// Writing failed: only the response can still tell how it went.
    write_error: bool,
    /// Bytes of response arrived.
    received: bool,
}

impl<'a, O: Outgoing> Exchange<'a, O> {
    fn new(mut conn: Conn, parts: &'a O, body: UpstreamBody) -> Exchange<'a, O> {
        conn.write.clear();
        let (length, has_length) = parts.content_length();
        let framing = if body.is_end_stream() {
            match length {
                Some(0) => Some(RequestFraming::Length { len: 0, add: false }),
                // A Content-Length the (empty) body does not have: say 0 instead.
                _ if has_length => Some(RequestFraming::Length { len: 0, add: true }),
                _ => Some(RequestFraming::Empty),
            }
        } else if let Some(len) = length {
            Some(RequestFraming::Length { len, add: false })
        } else {
            body.size_hint().exact().map(|len| RequestFraming::Length { len, add: true })
        };
        let body = (!body.is_end_stream()).then_some(body);
        let mut ex = Exchange {
            conn,
            parts,
            body,
            framing: None,
            remaining: 0,
            pos: 0,
            data: Bytes::new(),
            crlf_owed: false,
            unflushed: false,
            sent: false,
            write_error: false,
            received: false,
        };
        if let Some(framing) = framing {
            ex.encode_head(framing);
        }
        // Reads before the request is sent are only there to notice an early answer.
        ex.conn.io.as_mut().time_reads(false);
        ex
    }

    fn encode_head(&mut self, framing: RequestFraming) {
        self.parts.encode(framing, &mut self.conn.write);
        self.framing = Some(framing);
        if let RequestFraming::Length { len, .. } = framing {
            self.remaining = len;
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<h1::ResponseHead, UpstreamError>> {
        if !self.sent && !self.write_error {
            match self.poll_send(cx) {
                Poll::Ready(Ok(())) => {
                    self.sent = true;
                    self.conn.io.as_mut().time_reads(true);
                }
                // A broken connection may still have answered before it broke (413, say): read on.
                Poll::Ready(Err(UpstreamError::Exchange(e))) if e.kind() != io::ErrorKind::TimedOut => {
                    tracing::debug!(error = %e, "writing to the upstream failed");
                    self.write_error = true;
                    self.conn.io.as_mut().time_reads(true);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        loop {
            let n = match ready!(self.conn.poll_fill(cx)) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(UpstreamError::Exchange(e))),
            };
            if n == 0 {
                let what = if self.write_error {
                    "upstream closed the connection while the request was sent"
                } else if self.received {
                    "upstream closed the connection in the middle of the response head"
                } else {
                    "upstream closed the connection without answering"
                };
                return Poll::Ready(Err(UpstreamError::Exchange(io::Error::new(io::ErrorKind::UnexpectedEof, what))));
            }
            self.received = true;
            match h1::parse_head(&mut self.conn.read, self.parts.method()) {
                Ok(Some(head)) => {
                    self.conn.io.as_mut().time_reads(true);
                    return Poll::Ready(Ok(head));
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(UpstreamError::Invalid(e))),
            }
        }
    }

    /// Writes the request: `Ready(Ok)` once all of it is written and flushed.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        loop {
            // The next frame, once the last one is written: one frame in memory at a time.
            if self.data.is_empty()
                && let Some(body) = self.body.as_mut()
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers are not sent.
                        if let Ok(data) = frame.into_data() {
                            self.queue(data)?;
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(UpstreamError::ClientBody(e))),
                    Poll::Ready(None) => {
                        self.body = None;
                        self.end_body()?;
                    }
                    // A body of unknown length: the head waits for its first frame.
                    Poll::Pending if self.framing.is_none() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            let head = self.conn.write.get(self.pos..).unwrap_or_default();
            if !head.is_empty() || !self.data.is_empty() {
                // The head (or chunk framing) and the frame in one write.
                let bufs = [IoSlice::new(head), IoSlice::new(&self.data)];
                let n = match ready!(self.conn.io.as_mut().poll_write_vectored(cx, &bufs)) {
                    Ok(0) => return Poll::Ready(Err(UpstreamError::Exchange(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(UpstreamError::Exchange(e))),
                };
                let from_head = n.min(head.len());
                self.pos += from_head;
                self.data.advance((n - from_head).min(self.data.len()));
                if self.pos >= self.conn.write.len() {
                    self.conn.write.clear();
                    self.pos = 0;
                }
                self.unflushed = true;
                continue;
            }
            // Nothing left to write for now (TLS may still hold some): flush.
            if self.unflushed {
                if let Err(e) = ready!(self.conn.io.as_mut().poll_flush(cx)) {
                    return Poll::Ready(Err(UpstreamError::Exchange(e)));
                }
                self.unflushed = false;
            }
            return if self.body.is_none() { Poll::Ready(Ok(())) } else { Poll::Pending };
        }
    }

    /// Queues a data frame behind its framing.
    fn queue(&mut self, data: Bytes) -> Result<(), UpstreamError> {
        if data.is_empty() {
            return Ok(());
        }
        let framing = match self.framing {
            Some(framing) => framing,
            None => {
                self.encode_head(RequestFraming::Chunked);
                RequestFraming::Chunked
            }
        };
        match framing {
            RequestFraming::Length { .. } => {
                let len = data.len() as u64;
                if len > self.remaining {
                    return Err(body_error("request body longer than its Content-Length"));
                }
                self.remaining -= len;
            }
            RequestFraming::Chunked => {
                if self.crlf_owed {
                    self.conn.write.extend_from_slice(b"\r\n");
                }
                h1::encode_chunk_size(data.len(), &mut self.conn.write);
                self.crlf_owed = true;
            }
            RequestFraming::Empty => return Err(body_error("request body where none was announced")),
        }
        self.data = data;
        Ok(())
    }

    /// The body ended: close its framing (or write the head of a request that has none).
    fn end_body(&mut self) -> Result<(), UpstreamError> {
        match self.framing {
            None => self.encode_head(RequestFraming::Empty),
            Some(RequestFraming::Length { .. }) if self.remaining > 0 => {
                return Err(body_error("request body shorter than its Content-Length"));
            }
            Some(RequestFraming::Chunked) => {
                if self.crlf_owed {
                    self.conn.write.extend_from_slice(b"\r\n");
                }
                self.conn.write.extend_from_slice(h1::LAST_CHUNK);
            }
            Some(_) => {}
        }
        Ok(())
    }
}

fn body_error(message: &'static str) -> UpstreamError {
    UpstreamError::BodyMismatch(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request};
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Reads a request head and its Content-Length body; `false` when the connection closed first.
    async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>, with_body: bool) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let total = end + 4 + if with_body { length } else { 0 };
                if buf.len() >= total {
                    buf.drain(..total);
                    return true;
                }
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// An upstream that runs `serve` on each connection (numbered from 0); counts connections.
    async fn upstream<F, Fut>(serve: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream, usize) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, counter.fetch_add(1, Ordering::SeqCst)));
            }
        });
        (addr, count)
    }

    fn target(key: &Arc<str>, port: u16) -> Target<'_> {
        Target {
            addresses: Addresses::One(SocketAddr::from(([127, 0, 0, 1], port))),
            generation: 0,
            key,
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            tls: None,
        }
    }

    /// Sends a test request.
    async fn send_request(
        target: Target<'_>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let (parts, body) = request.into_parts();
        send(target, &parts, body).await
    }

    fn request(method: Method, body: Option<Bytes>) -> Request<UpstreamBody> {
        let length = body.as_ref().map(Bytes::len);
        let mut req = Request::new(UpstreamBody::Buffered(body));
        *req.method_mut() = method;
        *req.uri_mut() = http::Uri::from_static("/x");
        req.headers_mut().insert(header::HOST, http::HeaderValue::from_static("up.test"));
        if let Some(len) = length {
            req.headers_mut().insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
        }
        req
    }

    fn idle(key: &str) -> usize {
        POOL.with_borrow(|pool| pool.get(key).map_or(0, Vec::len))
    }

    #[tokio::test]
    async fn a_connection_goes_back_to_the_pool_once_its_body_is_read_and_is_reused() {
        let (addr, connections) = upstream(|mut socket, _| async move {
            let mut buf = Vec::new();
            while read_request(&mut socket, &mut buf, true).await {
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = socket.write_all(b"3\r\ndef\r\n0\r\n\r\n").await;
            }
        })
        .await;
        let key: Arc<str> = Arc::from(format!("pool-{addr}"));
        for _ in 0..3 {
            let response = send_request(target(&key, addr.port()), request(Method::GET, None)).await.expect("response");
            assert_eq!(response.status(), 200);
            assert_eq!(idle(&key), 0, "lent out with its body");
            let body = response.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], b"abcdef");
            assert_eq!(idle(&key), 1, "back when the body ended");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_that_comes_before_the_whole_body_is_sent_is_returned() {
        // Reads the head only, answers, and reads nothing more: the body cannot all be written.
        let (addr, _) = upstream(|mut socket, _| async move {
            let mut buf = Vec::new();
            if read_request(&mut socket, &mut buf, false).await {
                let _ = socket.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!").await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
        .await;
        let key: Arc<str> = Arc::from(format!("early-{addr}"));
        let body = Bytes::from(vec![b'x'; 32 * 1024 * 1024]);
        let started = Instant::now();
        let response =
            send_request(target(&key, addr.port()), request(Method::POST, Some(body))).await.expect("response");
        assert_eq!(response.status(), 413);
        let body = response.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"big!");
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        assert_eq!(idle(&key), 0, "a connection left mid-request is not reused");
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_under_a_request_is_replaced_only_when_that_is_safe() {
        // Each connection answers its first request, then closes on the next without answering.
        let (addr, connections) = upstream(|mut socket, _| async move {
            let mut buf = Vec::new();
            if read_request(&mut socket, &mut buf, true).await {
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                read_request(&mut socket, &mut buf, true).await;
            }
        })
        .await;
        let key: Arc<str> = Arc::from(format!("stale-{addr}"));
        for _ in 0..2 {
            let response = send_request(target(&key, addr.port()), request(Method::GET, None)).await.expect("response");
            assert_eq!(response.into_body().collect().await.expect("body").to_bytes(), "ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 2, "the second GET moved to a fresh connection");
        // A POST was written whole: the upstream may have acted on it, so it is not sent again.
        let failed =
            send_request(target(&key, addr.port()), request(Method::POST, Some(Bytes::from_static(b"order=1")))).await;
        let error = failed.expect_err("not retried");
        assert!(matches!(&error, UpstreamError::Exchange(e) if e.kind() == io::ErrorKind::UnexpectedEof), "{error}");
        assert!(!error.before_sending() && !error.timed_out());
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_response_that_does_not_come_in_time_is_a_timeout() {
        let (addr, _) = upstream(|mut socket, _| async move {
            let mut buf = Vec::new();
            read_request(&mut socket, &mut buf, true).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        })
        .await;
        let key: Arc<str> = Arc::from(format!("slow-{addr}"));
        let mut slow = target(&key, addr.port());
        slow.read_timeout = Duration::from_millis(200);
        let error = send_request(slow, request(Method::GET, None)).await.expect_err("timed out");
        assert!(error.timed_out(), "{error}");
    }
}
