//! Upstream connections: pooled keep-alive hyper clients (one per distinct connect timeout, shared by
//! every service that uses it) and the body types that stream requests up and responses down without
//! buffering.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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

/// The response body sent to the client: the upstream's stream, or a gateway-made body.
#[derive(Debug)]
pub enum ProxyBody {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn full(b: Bytes) -> ProxyBody {
        ProxyBody::Full(Some(b))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// A pooled HTTP/1.1 client; cloning shares the pool.
pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// The clients of this node by connect timeout, reused across snapshots so pools survive rebuilds.
/// Only the snapshot builder calls [`Clients::get`]; the proxy never touches this lock.
#[derive(Debug, Clone)]
pub struct Clients {
    by_timeout: Arc<Mutex<HashMap<Duration, UpstreamClient>>>,
    pool_size: usize,
    idle_timeout: Duration,
}

impl Clients {
    pub fn new(pool_size: usize, idle_timeout: Duration) -> Clients {
        Clients { by_timeout: Arc::default(), pool_size, idle_timeout }
    }

    pub fn get(&self, connect_timeout: Duration) -> UpstreamClient {
        let mut map = match self.by_timeout.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(connect_timeout)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_nodelay(true);
                connector.enforce_http(true);
                Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(self.pool_size)
                    .pool_idle_timeout(self.idle_timeout)
                    .build(connector)
            })
            .clone()
    }
}
