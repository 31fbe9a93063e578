//! Upstream connections and the bodies that stream through the proxy.
//!
//! Each proxy worker is a single-threaded runtime with its own keep-alive pool of hyper HTTP/1.1
//! connections, kept in a thread-local: checking a connection out or back in takes no lock and no
//! atomic operation. A connection goes back to the pool when its response body has been read to the
//! end; a request that a stale pooled connection could not even send moves to a fresh connection.
//! Written here rather than taken from `hyper_util`'s pooled client, whose pool is one mutex shared by
//! every connection of the process.

use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::deadline::DeadlineStream;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Hasher = foldhash::fast::RandomState;

/// The request body sent upstream: the client's stream as is, or a buffer a plugin produced.
#[derive(Debug)]
pub enum UpstreamBody {
    Streaming(Incoming),
    Buffered(Option<Bytes>),
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
            UpstreamBody::Streaming(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Streaming(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Buffered(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Streaming(b) => b.is_end_stream(),
            UpstreamBody::Buffered(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Streaming(b) => b.size_hint(),
            UpstreamBody::Buffered(Some(b)) => SizeHint::with_exact(b.len() as u64),
            UpstreamBody::Buffered(None) => SizeHint::with_exact(0),
        }
    }
}

/// A connection lent out with a response: goes back to its worker's pool when the body is done.
#[derive(Debug)]
pub struct Lease {
    sender: SendRequest<UpstreamBody>,
    key: Arc<str>,
}

/// The response body sent to the client: the upstream's stream, or a gateway-made body.
#[derive(Debug)]
pub enum ProxyBody {
    Upstream { body: Incoming, lease: Option<Lease> },
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn full(b: Bytes) -> ProxyBody {
        ProxyBody::Full(Some(b))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }

    fn upstream(body: Incoming, lease: Lease) -> ProxyBody {
        if body.is_end_stream() {
            checkin(lease);
            return ProxyBody::Upstream { body, lease: None };
        }
        ProxyBody::Upstream { body, lease: Some(lease) }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, lease } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let done = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    // A broken body leaves the connection unusable: it is dropped, not pooled.
                    Poll::Ready(Some(Err(_))) => {
                        lease.take();
                        false
                    }
                    Poll::Pending => false,
                };
                if done && let Some(l) = lease.take() {
                    checkin(l);
                }
                polled
            }
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
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
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

thread_local! {
    /// This worker's idle connections by upstream `host:port`.
    static POOL: RefCell<HashMap<Arc<str>, Vec<Idle>, Hasher>> = RefCell::new(HashMap::default());
}

fn checkout(key: &str) -> Option<SendRequest<UpstreamBody>> {
    let timeout = settings().idle_timeout;
    POOL.with_borrow_mut(|pool| {
        let list = pool.get_mut(key)?;
        while let Some(idle) = list.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < timeout {
                return Some(idle.sender);
            }
        }
        None
    })
}

fn checkin(lease: Lease) {
    if lease.sender.is_closed() {
        return;
    }
    let max = settings().max_idle_per_upstream;
    POOL.with_borrow_mut(|pool| {
        let list = match pool.get_mut(&*lease.key) {
            Some(list) => list,
            None => pool.entry(lease.key.clone()).or_default(),
        };
        if list.len() < max {
            list.push(Idle { sender: lease.sender, since: Instant::now() });
        }
    });
}

/// Where and how to connect. Connections carry the service's read and write timeouts (Kong's:
/// the longest wait between two successive reads or writes), so the pool key includes them.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub key: &'a Arc<str>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// `Some(verify)` for an `https` service: speak TLS, checking the certificate when `verify`.
    pub tls: Option<bool>,
}

/// Which side of the upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("upstream exchange failed: {0}")]
    Exchange(hyper::Error),
}

impl UpstreamError {
    /// Whether the request certainly never reached the upstream.
    pub fn before_sending(&self) -> bool {
        matches!(self, UpstreamError::ConnectTimeout | UpstreamError::Connect(_) | UpstreamError::Tls(_))
    }

    /// Whether a read or write on the upstream connection waited longer than its timeout.
    pub fn timed_out(&self) -> bool {
        match self {
            UpstreamError::ConnectTimeout => true,
            UpstreamError::Exchange(e) => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
                while let Some(s) = source {
                    if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
                        return true;
                    }
                    source = s.source();
                }
                e.is_timeout()
            }
            _ => false,
        }
    }
}

async fn connect(target: Target<'_>) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((target.host, target.port))
        .await
        .map_err(|_| UpstreamError::Resolve(target.host.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(UpstreamError::Resolve(target.host.to_string()));
    }
    let mut last = UpstreamError::ConnectTimeout;
    for addr in addrs {
        match tokio::time::timeout(target.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return match target.tls {
                    None => handshake(stream, target).await,
                    Some(verify) => {
                        let tls = tokio::time::timeout(
                            target.connect_timeout,
                            super::tls::connect(stream, target.host, verify),
                        );
                        match tls.await {
                            Ok(Ok(stream)) => handshake(stream, target).await,
                            Ok(Err(e)) => Err(UpstreamError::Tls(e)),
                            Err(_) => Err(UpstreamError::ConnectTimeout),
                        }
                    }
                };
            }
            Ok(Err(e)) => last = UpstreamError::Connect(e),
            Err(_) => last = UpstreamError::ConnectTimeout,
        }
    }
    Err(last)
}

/// HTTP/1.1 over a connected stream, with the service's read and write timeouts on every operation.
async fn handshake<S>(stream: S, target: Target<'_>) -> Result<SendRequest<UpstreamBody>, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let io = DeadlineStream::new(stream, target.read_timeout, target.write_timeout);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(Box::pin(io))).await.map_err(UpstreamError::Exchange)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends a request (origin-form URI, `Host` set) on a pooled or new connection to `target`.
pub async fn send(
    target: Target<'_>,
    mut request: Request<UpstreamBody>,
) -> Result<Response<ProxyBody>, UpstreamError> {
    loop {
        let (mut sender, fresh) = match checkout(target.key) {
            Some(s) => (s, false),
            None => (connect(target).await?, true),
        };
        if let Err(e) = sender.ready().await {
            if fresh {
                return Err(UpstreamError::Exchange(e));
            }
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(resp) => {
                let lease = Lease { sender, key: target.key.clone() };
                return Ok(resp.map(|body| ProxyBody::upstream(body, lease)));
            }
            Err(mut e) => match e.take_message() {
                // Not written at all: a pooled connection went away meanwhile; use another.
                Some(unsent) if !fresh => request = unsent,
                _ => return Err(UpstreamError::Exchange(e.into_error())),
            },
        }
    }
}
