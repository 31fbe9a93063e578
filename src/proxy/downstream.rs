//! The client side of the proxy: our own HTTP/1.1 server connection, and the hand-off of HTTP/2
//! connections (prior knowledge in cleartext, ALPN `h2` over TLS) to hyper's.
//!
//! Written here rather than taken from hyper's HTTP/1 server for what an idle keep-alive connection
//! costs. hyper holds its read and write buffers and the boxed slot of its request future for a
//! connection's whole life (28 KB per idle connection, measured on the Admin API), where nginx lets
//! its buffers go between requests. Here an idle connection holds its socket, its TLS session and
//! nothing else: it waits for readability without a buffer, takes one for a request, and lets it go
//! once the answer is written and nothing more has arrived. Each head is parsed once (`framing`),
//! and a request body is read by whoever polls it, in this task (`request_body`).
//!
//! Invariants: nothing a client sends panics this code (the request itself runs under the proxy's
//! `catch_unwind`); answers go out in the order requests came; a connection whose next request
//! cannot be found (a body left unread, a refused head) closes after its answer; an idle connection
//! closes after [`KEEPALIVE_TIMEOUT`], or at once when the worker drains.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use super::framing::{self, BodyFraming, PREFACE, Refusal, RequestHead};
use super::h1::{self, Decoder};
use super::proxy_protocol::Rewind;
use super::request_body::{RequestBody, Streaming};
use super::upstream::ProxyBody;
use super::{ConnInfo, Proxy};

/// How long a keep-alive connection may stay idle: the `keepalive_timeout` of Kong's nginx.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request head may take to arrive once it has started: nginx's `client_header_timeout`.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// The read buffer a request head starts in (most heads fit; a longer one grows it).
const HEAD_BUFFER: usize = 4096;

/// A client connection's byte stream, cleartext or TLS, that can tell when a read would find
/// something without being lent a buffer to find out.
pub trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Ready when there is something to read (or the connection ended).
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl std::fmt::Debug for dyn ClientIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIo")
    }
}

impl ClientIo for TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ClientIo for Rewind<TcpStream> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.has_buffered() {
            return Poll::Ready(Ok(()));
        }
        self.inner_mut().poll_read_ready(cx)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<Rewind<TcpStream>> {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (io, session) = self.get_mut();
        // Records already received may hold plaintext (or an alert): then a read finds it.
        match session.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => io.poll_readable(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// The client connection while a request body holds it.
#[derive(Debug)]
pub struct Parked {
    pub io: Box<dyn ClientIo>,
    /// What has been read from the connection and not taken yet.
    pub read: BytesMut,
    /// The body was read to its end: the next request starts in `read`.
    pub done: bool,
}

/// A worker's connections and their shutdown: a signal they all watch, and a wait until every one
/// of them has closed.
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
}

impl Default for Drain {
    fn default() -> Drain {
        Drain { tx: watch::channel(false).0 }
    }
}

impl Drain {
    /// What a connection watches; it counts as open while it holds this.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Tells every connection to finish: idle ones close at once, busy ones after the answer they
    /// are writing. Returns once all have closed.
    pub async fn shutdown(&self) {
        self.tx.send_replace(true);
        self.tx.closed().await;
    }
}

/// What came next on a connection.
#[allow(clippy::large_enum_variant)] // one per request, on the stack, moved once
enum Next {
    Head(RequestHead),
    Refused(Refusal),
    /// The HTTP/2 preface, with prior knowledge.
    Http2,
    Closed,
}

/// Serves HTTP/1.1 on `io` until the client or the drain closes it; `read` holds bytes already read
/// (after a PROXY header). With `sniff`, a connection that opens with HTTP/2's preface is handed to
/// hyper's HTTP/2 server.
pub(super) async fn serve(
    proxy: &'static Proxy,
    mut io: Box<dyn ClientIo>,
    mut read: BytesMut,
    conn: Arc<ConnInfo>,
    mut drain: watch::Receiver<bool>,
    sniff: bool,
) {
    let mut first = true;
    loop {
        if read.is_empty() {
            // An idle connection holds no buffer.
            read = BytesMut::new();
            // Readiness first: a connection with a request waiting never looks at the timer.
            tokio::select! {
                biased;
                ready = poll_fn(|cx| io.poll_readable(cx)) => {
                    if ready.is_err() {
                        return;
                    }
                }
                _ = drain.changed() => return,
                () = tokio::time::sleep(KEEPALIVE_TIMEOUT) => return,
            }
        }
        let next = next_head(&mut *io, &mut read, first && sniff, &proxy.stats).await;
        first = false;
        let head = match next {
            Next::Head(head) => head,
            Next::Refused(refusal) => {
                let _writing = proxy.stats.writing();
                let response = proxy.refused(refusal);
                let _ = write_response(&mut *io, response, &Method::GET, Version::HTTP_11, false).await;
                return close(&mut *io).await;
            }
            Next::Http2 => return Box::pin(serve_h2(proxy, io, read.freeze(), conn, drain)).await,
            Next::Closed => return,
        };

        // Boxed: the request's state (the proxy's future alone is several KB) lives only while the
        // request does, not in the task of every idle connection.
        match Box::pin(respond(proxy, io, read, head, &conn, &drain)).await {
            Some((kept, rest)) => (io, read) = (kept, rest),
            None => return,
        }
    }
}

/// Handles one request and writes its answer. Returns the connection and what was read past the
/// request, or `None` when the connection is done (closed, or to be dropped).
async fn respond(
    proxy: &'static Proxy,
    io: Box<dyn ClientIo>,
    mut read: BytesMut,
    head: RequestHead,
    conn: &ConnInfo,
    drain: &watch::Receiver<bool>,
) -> Option<(Box<dyn ClientIo>, BytesMut)> {
    let _writing = proxy.stats.writing();
    let RequestHead { parts, body: framing, keep_alive, expects_continue, len: head_len } = head;
    let method = parts.method.clone();
    let version = parts.version;
    // A body that is not all here takes the connection, and gives it back when it is done with it.
    let (body, kept, back) = match framing {
        BodyFraming::None => (RequestBody::Empty, Some(io), None),
        BodyFraming::Length(len) if read.len() as u64 >= len => {
            let whole = read.split_to(usize::try_from(len).unwrap_or(0)).freeze();
            (RequestBody::Full(Some(whole)), Some(io), None)
        }
        BodyFraming::Length(_) | BodyFraming::Chunked => {
            let decoder = match framing {
                BodyFraming::Length(len) => Decoder::length(len),
                _ => Decoder::Chunked(h1::Chunked::default()),
            };
            let (tx, rx) = oneshot::channel();
            let parked = Parked { io, read: std::mem::take(&mut read), done: false };
            let body = Streaming::new(parked, decoder, expects_continue, tx);
            (RequestBody::Streaming(Box::new(body)), None, Some(rx))
        }
    };
    // Kong's `request_length`: the head as read and the body its framing announces.
    let length = (head_len as u64).saturating_add(if let BodyFraming::Length(len) = framing { len } else { 0 });
    let response = proxy.handle(Request::from_parts(parts, body), conn, Some(length)).await;
    let mut body_done = true;
    let mut io = match (kept, back) {
        (Some(io), _) => io,
        (None, Some(mut back)) => {
            // The body outlived its request (`Err`): nothing is left to answer on.
            let parked = back.try_recv().ok()?;
            read = parked.read;
            body_done = parked.done;
            parked.io
        }
        (None, None) => return None,
    };
    if matches!(response.body(), ProxyBody::Abandoned) {
        // The client left mid-request: there is no one to answer.
        return None;
    }
    let keep = keep_alive && body_done && !drain.has_changed().unwrap_or(true);
    match write_response(&mut *io, response, &method, version, keep).await {
        Ok(true) => Some((io, read)),
        Ok(false) => {
            close(&mut *io).await;
            None
        }
        Err(_) => None,
    }
}

/// Ends a connection: TLS's `close_notify`, then the socket's write side.
async fn close(io: &mut dyn ClientIo) {
    let _ = tokio::time::timeout(Duration::from_secs(1), poll_fn(|cx| Pin::new(&mut *io).poll_shutdown(cx))).await;
}

/// Reads until `read` starts with a whole request head (or the HTTP/2 preface, with `sniff`). The
/// connection counts as `reading` from its head's first byte (readiness alone can be spurious).
async fn next_head(io: &mut dyn ClientIo, read: &mut BytesMut, sniff: bool, stats: &super::stats::Stats) -> Next {
    let deadline = tokio::time::Instant::now() + HEADER_TIMEOUT;
    let mut scanned = 0;
    let mut reading = None;
    loop {
        if reading.is_none() && !read.is_empty() {
            reading = Some(stats.reading());
        }
        // Only the end of a line can complete a head: a head arriving in small pieces is parsed
        // once per line, not once per piece.
        let complete = read.len() >= framing::MAX_HEAD || read.get(scanned..).is_some_and(|new| new.contains(&b'\n'));
        if sniff && read.len() < PREFACE.len() && PREFACE.starts_with(read) {
            // Perhaps HTTP/2: wait for the whole preface.
        } else if sniff && read.starts_with(PREFACE) {
            return Next::Http2;
        } else if complete {
            match framing::parse(read) {
                Ok(Some(head)) => return Next::Head(head),
                Ok(None) => {}
                Err(refusal) => return Next::Refused(refusal),
            }
        }
        scanned = read.len();
        if read.capacity() - read.len() < HEAD_BUFFER / 4 {
            read.reserve(HEAD_BUFFER.max(read.len()));
        }
        let reading = poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, read));
        match tokio::time::timeout_at(deadline, reading).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Next::Closed,
        }
    }
}

/// Serves HTTP/2 on `io`, after `pre` (bytes already read), with hyper's server.
pub(super) async fn serve_h2(
    proxy: &'static Proxy,
    io: Box<dyn ClientIo>,
    pre: Bytes,
    conn: Arc<ConnInfo>,
    mut drain: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let conn = conn.clone();
        async move {
            let _writing = proxy.stats.writing();
            let mut resp = proxy.handle(req.map(RequestBody::H2), &conn, None).await;
            // HPACK's size is hyper's to know: the head as HTTP/1 would write it.
            if matches!(resp.body(), ProxyBody::Logged(_)) {
                let size = super::logging::head_size(resp.headers());
                resp.body_mut().head_written(size);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(Rewind::new(pre, io));
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        ended = connection.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "HTTP/2 client connection ended with an error");
            }
            return;
        }
        _ = drain.changed() => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length` bytes; `add` when the header must be written.
    Length {
        len: u64,
        add: bool,
    },
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    Close,
}

/// Writes `response` to a request made with `method` in `version`. Returns whether the connection
/// may carry another request: `keep` unless the response or its framing closes it.
async fn write_response(
    io: &mut dyn ClientIo,
    response: Response<ProxyBody>,
    method: &Method,
    version: Version,
    mut keep: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    if has_token(&parts.headers, b"close") {
        keep = false;
    }
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if method == Method::HEAD || bodiless {
        Framing::None
    } else if let Some(len) = h1::content_length(&parts.headers) {
        Framing::Length { len, add: false }
    } else if let Some(len) = body.size_hint().exact() {
        Framing::Length { len, add: true }
    } else if version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        keep = false;
        Framing::Close
    };

    let mut head = Vec::with_capacity(96 + parts.headers.len() * 48);
    head.extend_from_slice(if parts.version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let own_length = !matches!(framing, Framing::Length { add: false, .. } | Framing::None)
        || (status == StatusCode::NO_CONTENT || status.is_informational());
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING
            || (own_length && name == header::CONTENT_LENGTH)
            || (!keep && name == header::CONNECTION)
        {
            continue;
        }
        h1::encode_header(name.as_str().as_bytes(), value.as_bytes(), &mut head);
    }
    match framing {
        Framing::Length { len, add: true } => {
            h1::encode_header(b"content-length", itoa::Buffer::new().format(len).as_bytes(), &mut head);
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !keep {
        head.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 && !parts.headers.contains_key(header::CONNECTION) {
        head.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        DATE.with_borrow_mut(|date| head.extend_from_slice(date.now()));
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    body.head_written(head.len() as u64);

    if framing == Framing::None {
        write_all(io, &mut [IoSlice::new(&head)]).await?;
        flush(io).await?;
        return Ok(keep);
    }
    // The head goes out with the first piece of body when that is ready at once (a body in memory,
    // or one that came with the upstream's head): one write for most responses.
    let mut pending_head = Some(head);
    let mut left = match framing {
        Framing::Length { len, .. } => len,
        _ => u64::MAX,
    };
    // Written only for chunked bodies: no allocation for the others.
    let mut size_line = Vec::new();
    loop {
        let frame = if pending_head.is_some() {
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    if let Some(head) = pending_head.take() {
                        write_all(io, &mut [IoSlice::new(&head)]).await?;
                        flush(io).await?;
                    }
                    continue;
                }
            }
        } else {
            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        };
        let data = match frame {
            None => break,
            // The upstream failed mid-body: the client sees the body cut short.
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        let data = match framing {
            Framing::Length { .. } => {
                // More than announced: the rest cannot be sent, and the connection cannot go on.
                let fits = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                if fits < data.len() {
                    keep = false;
                }
                left -= fits as u64;
                data.slice(..fits)
            }
            _ => data,
        };
        let head = pending_head.take().unwrap_or_default();
        let last = framing == Framing::Chunked && body.is_end_stream();
        size_line.clear();
        if framing == Framing::Chunked {
            h1::encode_chunk_size(data.len(), &mut size_line);
        }
        let tail: &[u8] = match (framing, last) {
            (Framing::Chunked, true) => b"\r\n0\r\n\r\n",
            (Framing::Chunked, false) => b"\r\n",
            _ => b"",
        };
        write_all(io, &mut [IoSlice::new(&head), IoSlice::new(&size_line), IoSlice::new(&data), IoSlice::new(tail)])
            .await?;
        if last {
            flush(io).await?;
            return Ok(keep);
        }
        if left == 0 && matches!(framing, Framing::Length { .. }) {
            break;
        }
    }
    let end: &[u8] = if framing == Framing::Chunked { h1::LAST_CHUNK } else { b"" };
    let head = pending_head.unwrap_or_default();
    write_all(io, &mut [IoSlice::new(&head), IoSlice::new(end)]).await?;
    flush(io).await?;
    // A body shorter than its `Content-Length`: the client waits for bytes that will not come.
    Ok(keep && (left == 0 || !matches!(framing, Framing::Length { .. })))
}

/// Whether a `Connection` header of `headers` has `token`.
fn has_token(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token)))
}

async fn write_all(io: &mut dyn ClientIo, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut bufs = bufs;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, bufs)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

async fn flush(io: &mut dyn ClientIo) -> io::Result<()> {
    poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
}

/// The `Date` header's value, formatted once a second per worker thread.
#[derive(Debug)]
struct CachedDate {
    second: u64,
    text: [u8; 29],
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if let Ok(text) = <[u8; 29]>::try_from(text.as_bytes()) {
                self.text = text;
                self.second = second;
            }
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: 0, text: *b"Thu, 01 Jan 1970 00:00:00 GMT" }) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_an_http_date_of_this_second() {
        let text = DATE.with_borrow_mut(|d| d.now().to_vec());
        let parsed = httpdate::parse_http_date(std::str::from_utf8(&text).expect("ascii")).expect("an HTTP date");
        let age = SystemTime::now().duration_since(parsed).expect("not in the future");
        assert!(age < Duration::from_secs(2), "{age:?}");
    }
}
