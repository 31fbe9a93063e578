//! The proxy's side of the log phase: what a request leaves for its log entry as it goes
//! ([`LogDraft`], filled only for requests someone logs: a route with a log plugin, or the node's
//! access log), and the body wrapper that runs the log phase once the response's last byte was
//! written or the client left ([`Logged`]).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::upstream::ProxyBody;
use crate::plugins::log::serializer::{self, Ending, EntryText, RequestPart};
use crate::plugins::log::{Latencies, LogEntry, Queue, Source, Tries};
use crate::snapshot::RouteTarget;

/// What a logged request gathers on its way; empty (and free) for the others. Counters need only
/// what is here; what only a serializer reads is in [`Gathered`], made only for serializers.
#[derive(Debug, Default)]
pub struct LogDraft {
    /// Someone logs this request.
    pub wanted: bool,
    pub route: Option<Arc<RouteTarget>>,
    /// The request's size as read, head and announced body (HTTP/1); without it (HTTP/2)
    /// [`LogDraft::begin`] reckons the size from the parsed request.
    pub read_size: Option<u64>,
    pub request_size: u64,
    pub consumer: Option<Arc<crate::identity::Consumer>>,
    pub upstream_status: Option<u16>,
    /// When the request went upstream, and how long the upstream took to its response head.
    pub sent: Option<(Instant, Duration)>,
    /// Present when some plugin (or the access log) serializes the entry.
    pub full: Option<Gathered>,
}

/// What only serializers need (see [`crate::plugins::Plugin::serializes`]): the entry's text as
/// written so far, and what its end holds that the proxy learns on the way.
#[derive(Debug)]
pub struct Gathered {
    pub text: EntryText,
    pub credential: Option<uuid::Uuid>,
    pub correlation_id: Option<Box<str>>,
    pub tries: Tries,
    /// When the request came in, in milliseconds since the epoch.
    pub started_at: u64,
}

/// The request's side of a draft: where it came from and what it was.
#[derive(Debug)]
pub struct Arrival<'a> {
    pub https: bool,
    /// The request's host without its port, and the port it came to.
    pub host: &'a str,
    pub port: u16,
    pub id: &'a [u8; 32],
    pub tls: Option<(&'static str, &'static str)>,
}

impl LogDraft {
    /// Starts the draft of a request someone logs; with `serialized`, writes the request's part
    /// of its entry.
    pub fn begin(
        &mut self,
        route: Option<Arc<RouteTarget>>,
        parts: &http::request::Parts,
        arrival: &Arrival<'_>,
        serialized: bool,
    ) {
        self.wanted = true;
        let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        self.request_size = self.read_size.unwrap_or_else(|| {
            let fields: usize = parts.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
            let body = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            // A client's `Content-Length` may be anything up to u64::MAX.
            ((parts.method.as_str().len() + uri.len() + 13 + fields) as u64).saturating_add(body)
        });
        if serialized {
            let room = route.as_ref().map_or(0, |r| r.subject.entities_len);
            let text = EntryText::begin(&RequestPart {
                id: arrival.id,
                method: &parts.method,
                uri,
                query: parts.uri.query(),
                https: arrival.https,
                host: arrival.host,
                port: arrival.port,
                headers: &parts.headers,
                size: self.request_size,
                tls: arrival.tls,
                room,
            });
            self.full =
                Some(Gathered { text, credential: None, correlation_id: None, tries: Tries::default(), started_at: 0 });
        }
        self.route = route;
    }
}

/// Everything the log phase needs once the response is over.
#[derive(Debug)]
pub struct LogTicket {
    pub draft: LogDraft,
    pub client_ip: IpAddr,
    pub started: Instant,
    /// When the response was ready to be sent; read (and measured) only when nothing went
    /// upstream.
    pub ready: Duration,
    pub status: u16,
    /// The response head's size on the wire, told by whoever writes it ([`Logged::head_written`]).
    pub head_size: u64,
    pub gateway_error: bool,
    /// The node's access log, if on.
    pub access_log: Option<Arc<Queue>>,
}

impl LogTicket {
    /// Runs the log phase: the route's log plugins and the node's access log.
    fn finish(self, body_bytes: u64) {
        let total = self.started.elapsed();
        let mut d = self.draft;
        let ms = |t: Duration| t.as_millis() as u64;
        let latencies = match d.sent {
            Some((sent, waited)) => {
                let before = sent.saturating_duration_since(self.started);
                Latencies {
                    kong: ms(before),
                    proxy: ms(waited) as i64,
                    request: ms(total),
                    receive: ms(total.saturating_sub(before + waited)),
                }
            }
            None => Latencies { kong: ms(self.ready), proxy: -1, request: ms(total), receive: 0 },
        };
        let source = match (d.upstream_status, self.gateway_error) {
            (Some(_), _) => Source::Service,
            (None, true) => Source::Error,
            (None, false) => Source::Kong,
        };
        let subject = d.route.as_ref().map(|r| &r.subject);
        let response_size = self.head_size.saturating_add(body_bytes);
        let text = d.full.as_mut().map(|g| {
            g.text.finish(&Ending {
                status: self.status,
                response_size,
                latencies,
                tries: &g.tries,
                client_ip: self.client_ip,
                started_at: g.started_at,
                source,
                subject: subject.map(|s| &**s),
                consumer: d.consumer.as_deref(),
                credential: g.credential,
                correlation_id: g.correlation_id.as_deref(),
            })
        });
        let entry = LogEntry {
            subject,
            consumer: d.consumer.as_ref(),
            request_size: d.request_size,
            status: self.status,
            response_size,
            source,
            latencies,
            text,
        };
        if let Some(route) = &d.route {
            route.chain.log(d.consumer.as_deref(), &entry);
        }
        if let (Some(access), Some(text)) = (&self.access_log, &entry.text) {
            access.push(text);
        }
        if let Some(text) = entry.text {
            serializer::recycle(text);
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

    /// The response head went out: `bytes` of it (counted in the response's size).
    pub fn head_written(&mut self, bytes: u64) {
        if let Some(ticket) = &mut self.ticket {
            ticket.head_size = bytes;
        }
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
