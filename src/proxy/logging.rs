//! The proxy's side of the log phase: what a request leaves for its log entry as it goes
//! ([`LogDraft`], filled only for requests someone logs: a route with a log plugin, or the node's
//! access log), and the body wrapper that runs the log phase once the response's last byte was
//! written or the client left ([`Logged`]).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body::{Body, Frame, SizeHint};

use super::upstream::ProxyBody;
use crate::plugins::log::{Latencies, LogEntry, Queue, Source, Try, epoch_millis};
use crate::snapshot::RouteTarget;

/// What a logged request gathers on its way; empty (and free) for the others.
#[derive(Debug, Default)]
pub struct LogDraft {
    /// Someone logs this request.
    pub wanted: bool,
    pub route: Option<Arc<RouteTarget>>,
    /// The request's headers, kept when a serializer reads them.
    pub keep_headers: bool,
    pub method: Method,
    pub uri: Box<str>,
    pub origin: Box<str>,
    pub request_headers: Option<HeaderMap>,
    pub request_size: u64,
    pub consumer: Option<Arc<crate::identity::Consumer>>,
    pub credential: Option<uuid::Uuid>,
    pub correlation_id: Option<Box<str>>,
    pub upstream_uri: Option<Box<str>>,
    pub upstream_status: Option<u16>,
    pub tries: Vec<Try>,
    /// When the request went upstream, and how long the upstream took to its response head.
    pub sent: Option<(Instant, Duration)>,
}

impl LogDraft {
    /// Starts the draft of a request someone logs.
    pub fn begin(
        &mut self,
        route: Option<Arc<RouteTarget>>,
        parts: &http::request::Parts,
        https: bool,
        port: u16,
        keep_headers: bool,
    ) {
        self.wanted = true;
        self.keep_headers = keep_headers;
        self.method = parts.method.clone();
        let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let head: usize = parts.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        let body = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        // A client's `Content-Length` may be anything up to u64::MAX.
        self.request_size = ((parts.method.as_str().len() + uri.len() + 13 + head) as u64).saturating_add(body);
        // Counting plugins (prometheus) need none of what follows: nothing is copied for them.
        if keep_headers {
            self.uri = uri.into();
            let authority =
                parts.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).or_else(|| parts.uri.host());
            let host = authority.map(crate::router::request_host);
            let host = host.as_deref().unwrap_or("");
            self.origin = format!("{}://{host}:{port}", if https { "https" } else { "http" }).into();
            self.request_headers = Some(parts.headers.clone());
        }
        self.route = route;
    }
}

/// Everything the log phase needs once the response is over.
#[derive(Debug)]
pub struct LogTicket {
    pub draft: LogDraft,
    pub id: [u8; 32],
    pub client_ip: IpAddr,
    pub started: Instant,
    pub wall: SystemTime,
    /// When the response was ready to be sent.
    pub ready: Duration,
    pub status: u16,
    pub response_headers: Option<HeaderMap>,
    /// The response head's size on the wire (about).
    pub head_size: u64,
    pub gateway_error: bool,
    pub tls: Option<(&'static str, &'static str)>,
    /// The node's access log, if on.
    pub access_log: Option<Arc<Queue>>,
}

impl LogTicket {
    /// Runs the log phase: the route's log plugins and the node's access log.
    fn finish(self, body_bytes: u64) {
        let total = self.started.elapsed();
        let d = self.draft;
        let ms = |t: Duration| t.as_millis() as u64;
        let latencies = match d.sent {
            Some((sent, waited)) => Latencies {
                kong: ms(sent.duration_since(self.started)),
                proxy: ms(waited) as i64,
                request: ms(total),
                receive: ms(total.saturating_sub(sent.duration_since(self.started) + waited)),
            },
            None => Latencies { kong: ms(self.ready), proxy: -1, request: ms(total), receive: 0 },
        };
        let source = match (d.upstream_status, self.gateway_error) {
            (Some(_), _) => Source::Service,
            (None, true) => Source::Error,
            (None, false) => Source::Kong,
        };
        let entry = Arc::new(LogEntry {
            id: self.id,
            subject: d.route.as_ref().map(|r| r.subject.clone()),
            consumer: d.consumer.clone(),
            credential: d.credential,
            client_ip: self.client_ip,
            started_at: epoch_millis(self.wall),
            method: d.method,
            uri: d.uri,
            origin: d.origin,
            request_headers: d.request_headers,
            response_headers: self.response_headers,
            request_size: d.request_size,
            status: self.status,
            response_size: self.head_size.saturating_add(body_bytes),
            source,
            upstream_uri: d.upstream_uri,
            upstream_status: d.upstream_status,
            tries: d.tries,
            latencies,
            correlation_id: d.correlation_id,
            tls: self.tls,
        });
        if let Some(route) = &d.route {
            route.chain.log(d.consumer.as_deref(), &entry);
        }
        if let Some(access) = &self.access_log {
            access.push(&entry);
        }
    }
}

/// A response body that runs the log phase when it is over (written whole, failed, or dropped
/// because the client left), counting the bytes it gave out.
#[derive(Debug)]
pub struct Logged {
    pub body: ProxyBody,
    pub bytes: u64,
    pub ticket: Option<LogTicket>,
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            ticket.finish(self.bytes);
        }
    }
}

impl Logged {
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes += data.len() as u64;
        }
        polled
    }

    pub fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The size of a response head on the wire, about (status line, headers, blank line).
pub fn head_size(headers: &HeaderMap) -> u64 {
    let fields: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    (fields + 17 + 2) as u64
}
