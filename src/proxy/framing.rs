//! Request framing, judged before anything reaches an upstream.
//!
//! Every client connection passes through a [`FramingGuard`] on its way to hyper's HTTP/1 parser. The
//! guard reads each request head whole, ending it where httparse (hyper's parser) ends it, so both
//! see the same boundaries, and refuses what request smuggling is made of, some of which hyper would
//! pass on or repair silently: `Content-Length` together with `Transfer-Encoding` (hyper drops the
//! length and reads chunks), differing lengths, a transfer coding other than `chunked`,
//! `Transfer-Encoding` in HTTP/1.0, folded header lines. It then follows the body's framing to know where the next head
//! starts, and stops at a chunk that breaks it (hyper's decoder, reading the same bytes, fails there
//! too, and the proxy answers 400). A refused head never reaches hyper: in its place hyper is handed
//! a stand-in request, which the proxy answers with the refusal (nginx's status, Kong's body) and
//! `Connection: close`. The guard never writes: hyper answers pipelined requests in order, so the
//! refusal comes after the answers to the requests before it, from the one place answers come from.
//!
//! Cost: a read that holds whole heads and bodies goes straight into hyper's buffer and is scanned
//! once in place; nothing is copied or allocated. The common head (CRLF lines, neither framing
//! header, no folded line) is judged by finding its line ends alone; any other is parsed with
//! httparse (see [`plain_head`]). Only a head that arrives in pieces (a new connection's first head
//! always does: the HTTP/2 preface check reads 24 bytes) is held in a buffer of the guard's until it
//! is whole. HTTP/2 with prior knowledge passes through untouched. A connection upgraded by a 101
//! answer would need the guard to step aside; the proxy answers none.
//!
//! Also here: what an error reading a client's request body means ([`BodyFault`]).

use std::error::Error as _;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use http::header;
use http_body::Body;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h1::Chunked;

/// Largest request head accepted, request line included. nginx takes 8 KiB lines in at most 32 KiB
/// (`large_client_header_buffers 4 8k`); this is more generous, and bounds what a client can make the
/// guard hold.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a request head (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Room made at a time for a head held in pieces: one allocation for most.
const HOLD: usize = 4096;
/// What an HTTP/2 connection with prior knowledge starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a request head was refused before it reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not HTTP/1.x as httparse reads it (folded lines included), or framing that contradicts
    /// itself: 400.
    BadRequest,
    /// A transfer coding other than exactly `chunked`: 501, as nginx answers.
    NotImplemented,
    /// A request line longer than [`MAX_HEAD`]: 414.
    UriTooLong,
    /// A head longer than [`MAX_HEAD`], or with too many header lines: 431.
    HeadTooLarge,
}

/// What hyper reads in place of a refused head: a request it accepts, whose transfer coding says why
/// the head was refused. No client request can carry such a coding to the proxy: the guard answers
/// 501 to every coding but `chunked`.
#[derive(Debug)]
struct StandIn {
    refusal: Refusal,
    coding: &'static [u8],
    request: &'static [u8],
}

macro_rules! stand_in {
    ($refusal:expr, $status:literal) => {
        StandIn {
            refusal: $refusal,
            coding: concat!("tollgate-refused-", $status, ", chunked").as_bytes(),
            request: concat!(
                "GET / HTTP/1.1\r\ntransfer-encoding: tollgate-refused-",
                $status,
                ", chunked\r\n\r\n0\r\n\r\n"
            )
            .as_bytes(),
        }
    };
}

const STAND_INS: [StandIn; 4] = [
    stand_in!(Refusal::BadRequest, "400"),
    stand_in!(Refusal::NotImplemented, "501"),
    stand_in!(Refusal::UriTooLong, "414"),
    stand_in!(Refusal::HeadTooLarge, "431"),
];

impl Refusal {
    fn stand_in(self) -> &'static [u8] {
        STAND_INS.iter().find(|s| s.refusal == self).map_or(STAND_INS[0].request, |s| s.request)
    }
}

/// The refusal a request stands in for, if it is a stand-in. A request with any transfer coding but
/// `chunked` is refused as well (501): the guard lets none through, and this keeps the rule for a
/// connection that did not pass the guard. A request without a body costs one check.
pub fn refused(request: &http::Request<Incoming>) -> Option<Refusal> {
    if request.body().is_end_stream() {
        return None;
    }
    let coding = request.headers().get(header::TRANSFER_ENCODING)?.as_bytes();
    if coding.eq_ignore_ascii_case(b"chunked") {
        return None;
    }
    let stand_in = STAND_INS.iter().find(|s| s.coding == coding);
    Some(stand_in.map_or(Refusal::NotImplemented, |s| s.refusal))
}

/// What went wrong reading a client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// Its framing is invalid (a broken chunk): 400.
    Framing,
    /// The client closed or reset the connection before the body was whole: nginx's 499, logged,
    /// never answered.
    ClientLeft,
}

impl BodyFault {
    /// Reads hyper's body error: a decoding error (or the guard's) is the body's framing; anything
    /// else (the end of the stream too early, a reset) is the client going away.
    pub fn of(error: &hyper::Error) -> BodyFault {
        let mut source = error.source();
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                return match io.kind() {
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => BodyFault::Framing,
                    _ => BodyFault::ClientLeft,
                };
            }
            source = e.source();
        }
        BodyFault::ClientLeft
    }
}

/// Where the guard is in a connection's byte stream.
#[derive(Debug)]
enum Expect {
    /// The start of a request head; on a new connection, possibly of HTTP/2's preface.
    Head {
        first: bool,
    },
    /// This many bytes of body left.
    Body(u64),
    Chunks(Chunked),
    /// HTTP/2 with prior knowledge: not ours to read.
    Tunnel,
}

/// What a scan found.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// Every byte may go to hyper.
    Pass,
    /// The first `n` bytes may go; the rest starts a request head that is not complete yet.
    Partial(usize),
    /// The first `n` bytes may go; a refused head starts there.
    Refuse(usize, Refusal),
    /// The first `n` bytes may go, the last of them breaking the body's chunked framing.
    BadChunk(usize),
}

/// A connection's request framing, judged as its bytes arrive.
#[derive(Debug)]
struct Scanner {
    expect: Expect,
}

/// A request head, judged.
#[derive(Debug)]
enum Head {
    Partial,
    Whole { len: usize, body: Expect },
    Refused(Refusal),
}

impl Scanner {
    fn new() -> Scanner {
        Scanner { expect: Expect::Head { first: true } }
    }

    /// Judges `bytes`, which continue what the scanner has seen, except after `Partial(n)`: then the
    /// next scan starts again at that incomplete head, with more bytes behind it.
    fn scan(&mut self, bytes: &[u8]) -> Scan {
        let mut at = 0;
        while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
            match &mut self.expect {
                Expect::Tunnel => break,
                Expect::Head { first } => {
                    if *first {
                        if rest.starts_with(PREFACE) {
                            self.expect = Expect::Tunnel;
                            break;
                        }
                        if PREFACE.starts_with(rest) {
                            return Scan::Partial(at);
                        }
                        *first = false;
                    }
                    let head = match plain_head(rest) {
                        Some(len) => Head::Whole { len, body: Expect::Head { first: false } },
                        None => judge(rest),
                    };
                    match head {
                        Head::Partial => return Scan::Partial(at),
                        Head::Refused(refusal) => return Scan::Refuse(at, refusal),
                        Head::Whole { len, body } => {
                            at += len;
                            self.expect = body;
                        }
                    }
                }
                Expect::Body(left) => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                    *left -= n as u64;
                    at += n;
                    if *left == 0 {
                        self.expect = Expect::Head { first: false };
                    }
                }
                Expect::Chunks(chunked) => {
                    let (n, walked) = chunked.walk(rest);
                    at += n;
                    if walked.is_err() {
                        return Scan::BadChunk(at);
                    }
                    if chunked.is_done() {
                        self.expect = Expect::Head { first: false };
                    }
                }
            }
        }
        Scan::Pass
    }
}

/// The length of the request head at the start of `bytes` when it is whole and plain: every line
/// ends in CRLF, the first starts with a letter (a method), no line is folded, none names
/// `Content-Length` or `Transfer-Encoding` (however it goes on), and there are at most
/// [`MAX_HEADERS`] header lines in at most [`MAX_HEAD`] bytes. Such a head has no body, and httparse,
/// for hyper, ends it at the same empty line: without a bare LF and without leading empty lines,
/// that is the first one. Anything else (`None`) takes the full parse in [`judge`]; a syntax error
/// this does not look for is left to hyper, which refuses the head with a 400 of its own. Finding
/// the line ends alone costs a fraction of a full parse.
fn plain_head(bytes: &[u8]) -> Option<usize> {
    if !bytes.first()?.is_ascii_alphabetic() {
        return None;
    }
    let mut line = 0;
    let mut headers = 0;
    for end in memchr::memchr_iter(b'\n', bytes.get(..MAX_HEAD).unwrap_or(bytes)) {
        if bytes.get(end.checked_sub(1)?) != Some(&b'\r') {
            return None;
        }
        if line > 0 {
            let text = bytes.get(line..end - 1)?;
            let named = |name: &[u8]| text.get(..name.len()).is_some_and(|t| t.eq_ignore_ascii_case(name));
            // The dash rules out most other names for the cost of one byte.
            match text.first() {
                None => return Some(end + 1),
                Some(b' ' | b'\t') => return None,
                Some(b'c' | b'C') if text.get(7) == Some(&b'-') && named(b"content-length") => return None,
                Some(b't' | b'T') if text.get(8) == Some(&b'-') && named(b"transfer-encoding") => return None,
                Some(_) => {}
            }
            headers += 1;
            if headers > MAX_HEADERS {
                return None;
            }
        }
        line = end + 1;
    }
    None
}

/// Judges the request head at the start of `bytes` the way nginx does: a `Content-Length` must be
/// one number, however often repeated; `Transfer-Encoding` must be one `chunked`, in HTTP/1.1, without
/// a `Content-Length` beside it. httparse refuses folded lines and every other syntax error.
fn judge(bytes: &[u8]) -> Head {
    // Uninitialised: nothing to clear per head (httparse fills what it uses).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, bytes, &mut headers);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) if !bytes.contains(&b'\n') => return Head::Refused(Refusal::UriTooLong),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Head::Refused(Refusal::HeadTooLarge),
        Err(_) => return Head::Refused(Refusal::BadRequest),
    };
    let mut length: Option<u64> = None;
    let mut codings = 0;
    let mut chunked = false;
    for h in request.headers.iter() {
        let name = h.name.as_bytes();
        if name.len() == 14 && name.eq_ignore_ascii_case(b"content-length") {
            for part in h.value.split(|b| *b == b',') {
                match digits(part.trim_ascii()) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => return Head::Refused(Refusal::BadRequest),
                }
            }
        } else if name.len() == 17 && name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings += 1;
            chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        }
    }
    let body = if codings > 0 {
        if request.version == Some(0) {
            return Head::Refused(Refusal::BadRequest);
        }
        if codings > 1 || !chunked {
            return Head::Refused(Refusal::NotImplemented);
        }
        if length.is_some() {
            return Head::Refused(Refusal::BadRequest);
        }
        Expect::Chunks(Chunked::default())
    } else {
        match length {
            Some(n) if n > 0 => Expect::Body(n),
            _ => Expect::Head { first: false },
        }
    };
    Head::Whole { len, body }
}

/// A decimal number of ASCII digits only (no sign, no spaces), without overflow.
fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// What the guard still owes hyper after the bytes it holds.
#[derive(Debug)]
enum End {
    /// Nothing: keep reading and judging.
    Open,
    /// A head was refused: hand hyper the rest of its stand-in, then nothing.
    StandIn(&'static [u8]),
    /// The body's chunked framing broke: every read fails (hyper's decoder usually fails first).
    BrokenBody,
    /// Nothing more for hyper: it answers the stand-in with `Connection: close` and stops reading.
    Closed,
}

/// A client connection's byte stream as hyper reads it: requests whose framing was judged, and a
/// stand-in for the first one refused. Writes pass straight through.
#[derive(Debug)]
pub struct FramingGuard<S> {
    inner: S,
    scanner: Scanner,
    /// Read from the client and not given to hyper yet: the first `ready` bytes are judged and go
    /// next; the rest is a head not complete yet.
    held: BytesMut,
    ready: usize,
    end: End,
}

impl<S> FramingGuard<S> {
    pub fn new(inner: S) -> FramingGuard<S> {
        FramingGuard { inner, scanner: Scanner::new(), held: BytesMut::new(), ready: 0, end: End::Open }
    }

    /// Acts on a scan of `all` bytes: returns how many of them may go to hyper now.
    fn judged(&mut self, scan: Scan, all: usize) -> usize {
        match scan {
            Scan::Pass => all,
            Scan::Partial(n) => n,
            Scan::Refuse(n, refusal) => {
                self.end = End::StandIn(refusal.stand_in());
                n
            }
            Scan::BadChunk(n) => {
                self.end = End::BrokenBody;
                n
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingGuard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.advance(n);
                this.ready -= n;
                if this.held.is_empty() {
                    // An idle connection keeps no buffer.
                    this.held = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if !this.held.is_empty() {
                // A head in pieces: read the rest of it beside them.
                let before = this.held.len();
                if this.held.capacity() - before < HOLD / 4 {
                    this.held.reserve(HOLD);
                }
                let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.held))?;
                if n == 0 {
                    // The client left mid-head: hyper sees a connection that closed between requests.
                    this.held = BytesMut::new();
                    return Poll::Ready(Ok(()));
                }
                // Only the end of a line can complete a head.
                if this.held.len() < MAX_HEAD && !this.held[before..].contains(&b'\n') {
                    continue;
                }
                let scan = this.scanner.scan(&this.held);
                this.ready = this.judged(scan, this.held.len());
                if !matches!(this.end, End::Open) {
                    this.held.truncate(this.ready);
                }
                if this.held.is_empty() {
                    this.held = BytesMut::new();
                }
                continue;
            }
            match &mut this.end {
                End::Open => {}
                End::StandIn(rest) => {
                    let n = rest.len().min(buf.remaining());
                    buf.put_slice(&rest[..n]);
                    *rest = &rest[n..];
                    if rest.is_empty() {
                        this.end = End::Closed;
                    }
                    return Poll::Ready(Ok(()));
                }
                End::BrokenBody => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "invalid chunked request body",
                    )));
                }
                // Never woken: hyper is done reading and closes once it has answered.
                End::Closed => return Poll::Pending,
            }
            // The common case: straight into hyper's buffer, judged in place.
            let start = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let read = buf.filled().len() - start;
            if read == 0 {
                return Poll::Ready(Ok(()));
            }
            let scan = this.scanner.scan(&buf.filled()[start..]);
            let pass = this.judged(scan, read);
            if pass < read {
                if matches!(this.end, End::Open) {
                    this.held.reserve(HOLD);
                    this.held.extend_from_slice(&buf.filled()[start + pass..]);
                }
                buf.set_filled(start + pass);
            }
            if pass > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingGuard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const SIZED: &[u8] = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] =
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nt: 1\r\n\r\n";

    fn scan(bytes: &[u8]) -> Scan {
        Scanner::new().scan(bytes)
    }

    fn refusal(head: &str) -> Option<Refusal> {
        match scan(head.as_bytes()) {
            Scan::Refuse(0, refusal) => Some(refusal),
            Scan::Pass => None,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    /// A stream of requests in one piece, and split at every byte, always passes whole.
    #[test]
    fn good_requests_pass_in_one_read_or_in_any_two() {
        let stream = [GET, SIZED, CHUNKED, GET, b"\r\n", GET].concat();
        assert_eq!(scan(&stream), Scan::Pass);
        for split in 0..=stream.len() {
            let mut scanner = Scanner::new();
            let (first, second) = stream.split_at(split);
            match scanner.scan(first) {
                Scan::Pass => assert_eq!(scanner.scan(second), Scan::Pass, "split at {split}"),
                Scan::Partial(n) => assert_eq!(scanner.scan(&stream[n..]), Scan::Pass, "split at {split}"),
                other => panic!("split at {split}: {other:?}"),
            }
        }
    }

    /// The plain-head path and the full parse agree on every head either accepts.
    #[test]
    fn a_plain_head_ends_where_httparse_ends_it() {
        let heads: [&[u8]; 10] = [
            GET,
            b"GET / HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-A: a\tb \r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Len: Content-Length: 5\r\n\r\n",
            // Not plain: each of these goes to httparse.
            b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\nGET /2 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n",
            b"GET / HTTP/1.1\r\ncOnTeNt-LeNgTh: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
        ];
        for (i, head) in heads.iter().enumerate() {
            let plain = plain_head(head);
            assert_eq!(plain.is_some(), i < 5, "{:?}", String::from_utf8_lossy(head));
            if let Some(len) = plain {
                assert!(matches!(judge(head), Head::Whole { len: l, body: Expect::Head { .. } } if l == len));
            }
        }
        // Incomplete: left to the full parse, which says so.
        assert_eq!(plain_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: x\r\n"), Scan::Partial(0));
    }

    /// Heads put together at random from pieces that matter to framing: whenever the plain path
    /// takes one, the full parse finds the same end and no body, or refuses it (a syntax error the
    /// plain path leaves to hyper).
    #[test]
    fn the_plain_path_never_disagrees_with_httparse_on_random_heads() {
        let lines: [&[u8]; 14] = [
            b"Host: x",
            b"content-length: 3",
            b"Content-Length : 3",
            b"Transfer-Encoding: chunked",
            b"transfer-encodingx: y",
            b" folded",
            b"\tfolded",
            b"X-A: b\rc",
            b"X-Length: content-length",
            b"",
            b"bad line",
            b"C: d",
            b"T: e",
            b"GET /again HTTP/1.1",
        ];
        let ends: [&[u8]; 3] = [b"\r\n", b"\n", b"\r\n"];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).unwrap_or(0)
        };
        let mut plain = 0;
        for _ in 0..20_000 {
            let mut head = b"GET / HTTP/1.1".to_vec();
            head.extend_from_slice(ends[next(ends.len())]);
            for _ in 0..next(6) {
                head.extend_from_slice(lines[next(lines.len())]);
                head.extend_from_slice(ends[next(ends.len())]);
            }
            head.extend_from_slice(b"\r\nBODY");
            if let Some(len) = plain_head(&head) {
                plain += 1;
                match judge(&head) {
                    Head::Whole { len: l, body: Expect::Head { .. } } => {
                        assert_eq!(l, len, "{:?}", String::from_utf8_lossy(&head))
                    }
                    Head::Refused(Refusal::BadRequest) => {}
                    other => panic!("{other:?} for {:?}", String::from_utf8_lossy(&head)),
                }
            }
        }
        assert!(plain > 1000, "the plain path took {plain} heads");
    }

    #[test]
    fn an_incomplete_head_is_held_from_its_start() {
        assert_eq!(scan(b"GET /a HTTP/1.1\r\nHo"), Scan::Partial(0));
        assert_eq!(scan(&[SIZED, b"GET /a HT"].concat()), Scan::Partial(SIZED.len()));
        // The body's bytes pass as they come, the next head is judged when it is whole.
        let mut scanner = Scanner::new();
        assert_eq!(scanner.scan(&SIZED[..SIZED.len() - 3]), Scan::Pass);
        assert_eq!(scanner.scan(b"lo"), Scan::Pass);
        assert_eq!(scanner.scan(b"oGET"), Scan::Partial(1));
    }

    #[test]
    fn content_length_beside_transfer_encoding_is_refused_in_either_order() {
        let cl_te = "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let te_cl = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(refusal(cl_te), Some(Refusal::BadRequest));
        assert_eq!(refusal(te_cl), Some(Refusal::BadRequest));
        // After a good request, at the refused head's start.
        assert_eq!(scan(&[GET, cl_te.as_bytes()].concat()), Scan::Refuse(GET.len(), Refusal::BadRequest));
    }

    #[test]
    fn a_content_length_must_be_one_number() {
        for bad in ["3\r\nContent-Length: 5", "3, 5", "+3", "-1", "", "3 3", "0x10", "99999999999999999999"] {
            let head = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(refusal(&head), Some(Refusal::BadRequest), "{bad:?}");
        }
        let repeated = "POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3, 3\r\n\r\nabc";
        assert_eq!(refusal(repeated), None);
    }

    #[test]
    fn transfer_encoding_must_be_one_chunked_in_http_1_1() {
        for coding in
            ["gzip, chunked", "chunked, gzip", "identity", "chunked\r\nTransfer-Encoding: chunked", "chunkedx"]
        {
            let head = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {coding}\r\n\r\n");
            assert_eq!(refusal(&head), Some(Refusal::NotImplemented), "{coding:?}");
        }
        let http10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(refusal(http10), Some(Refusal::BadRequest));
        // nginx checks the version first, and a Content-Length before the coding.
        assert_eq!(refusal("POST / HTTP/1.0\r\nTransfer-Encoding: gzip\r\n\r\n"), Some(Refusal::BadRequest));
        let bad_length = "POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(refusal(bad_length), Some(Refusal::BadRequest));
        let unknown_with_length = "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(refusal(unknown_with_length), Some(Refusal::NotImplemented));
        assert_eq!(refusal("POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n0\r\n\r\n"), None);
    }

    #[test]
    fn folded_lines_and_other_syntax_errors_are_refused() {
        for head in [
            "GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: one\r\n\ttwo\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "GET / HTTP/1.1\nbad header\n\n",
            "\u{0}GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(refusal(head), Some(Refusal::BadRequest), "{head:?}");
        }
        // A plain head is not parsed here: hyper's parse, the same httparse, refuses these (400).
        for head in [
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A : b\r\n\r\n",
            "THIS IS NOT HTTP\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
        ] {
            assert!(matches!(judge(head.as_bytes()), Head::Refused(Refusal::BadRequest)), "{head:?}");
        }
    }

    #[test]
    fn heads_over_the_limit_are_refused() {
        let line = format!("GET /{} HTTP/1.1", "a".repeat(MAX_HEAD));
        assert_eq!(scan(line.as_bytes()), Scan::Refuse(0, Refusal::UriTooLong));
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(scan(big.as_bytes()), Scan::Refuse(0, Refusal::HeadTooLarge));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(refusal(&many), Some(Refusal::HeadTooLarge));
    }

    #[test]
    fn a_broken_chunk_stops_the_body_at_the_offending_byte() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(&[head, &b"ZZZ\r\n"[..]].concat()), Scan::BadChunk(head.len() + 1));
        assert_eq!(scan(&[head, &b"5\r\nhello\r\nZ"[..]].concat()), Scan::BadChunk(head.len() + 11));
        assert_eq!(scan(&[head, &b"5\r\nhelloXX"[..]].concat()), Scan::BadChunk(head.len() + 9));
        // A request smuggled after a chunked body is judged as the head it is.
        let smuggled =
            [head, &b"0\r\n\r\n"[..], b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"]
                .concat();
        assert_eq!(scan(&smuggled), Scan::Refuse(head.len() + 5, Refusal::BadRequest));
    }

    #[test]
    fn http2_with_prior_knowledge_passes_untouched() {
        let mut scanner = Scanner::new();
        assert_eq!(scanner.scan(&PREFACE[..10]), Scan::Partial(0));
        assert_eq!(scanner.scan(&[PREFACE, b"\x00\x00\x12\x04 binary frames"].concat()), Scan::Pass);
        assert_eq!(
            scanner.scan(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Scan::Pass
        );
        // Only as a connection's first bytes: later, a head hyper refuses.
        assert!(matches!(judge(PREFACE), Head::Refused(Refusal::BadRequest)));
    }

    #[test]
    fn each_stand_in_is_a_request_hyper_accepts_that_carries_its_refusal() {
        for s in &STAND_INS {
            let mut headers = [httparse::EMPTY_HEADER; 4];
            let mut request = httparse::Request::new(&mut headers);
            let len = match request.parse(s.request) {
                Ok(httparse::Status::Complete(len)) => len,
                other => panic!("{other:?}"),
            };
            assert_eq!(request.headers[0].value, s.coding);
            assert!(s.coding.ends_with(b", chunked"), "chunked last, as hyper requires");
            assert_eq!(&s.request[len..], b"0\r\n\r\n");
            assert_eq!(s.refusal.stand_in(), s.request);
        }
    }

    /// Writes `pieces` into a guard one after the other, reading through it with a first buffer of 24
    /// bytes (what the HTTP/2 check reads) and 8 KiB after; returns what hyper would read.
    async fn through_guard(pieces: Vec<Vec<u8>>) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(1024 * 1024);
        let writer = tokio::spawn(async move {
            let mut client = client;
            for piece in pieces {
                client.write_all(&piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let mut guard = FramingGuard::new(server);
        let mut read = Vec::new();
        let mut first = [0u8; 24];
        let n = guard.read(&mut first).await.expect("read");
        read.extend_from_slice(&first[..n]);
        let mut chunk = vec![0u8; 8192];
        loop {
            let n = tokio::time::timeout(std::time::Duration::from_millis(200), guard.read(&mut chunk)).await;
            match n {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => read.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    read.extend_from_slice(format!("<error: {e}>").as_bytes());
                    break;
                }
            }
        }
        drop(writer.await);
        read
    }

    #[tokio::test]
    async fn the_guard_hands_hyper_every_byte_of_good_requests_however_they_arrive() {
        let stream = [GET, SIZED, CHUNKED, GET].concat();
        assert_eq!(through_guard(vec![stream.clone()]).await, stream);
        let bytewise: Vec<Vec<u8>> = stream.iter().map(|b| vec![*b]).collect();
        assert_eq!(through_guard(bytewise).await, stream);
        let preface = [PREFACE, b"frames"].concat();
        assert_eq!(through_guard(vec![preface[..5].to_vec(), preface[5..].to_vec()]).await, preface);
    }

    #[tokio::test]
    async fn the_guard_hands_hyper_a_stand_in_for_a_refused_head_and_nothing_after() {
        let bad = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let expected = [GET, SIZED, Refusal::BadRequest.stand_in()].concat();
        assert_eq!(through_guard(vec![[GET, SIZED, bad, GET].concat()]).await, expected);
        assert_eq!(through_guard(vec![[GET, SIZED].concat(), bad[..20].to_vec(), bad[20..].to_vec()]).await, expected);
        let gzip = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
        assert_eq!(through_guard(vec![gzip]).await, Refusal::NotImplemented.stand_in());
    }

    #[tokio::test]
    async fn the_guard_fails_reads_after_a_broken_chunk() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec();
        let read = through_guard(vec![head.clone(), b"ZZZ\r\n0\r\n\r\n".to_vec()]).await;
        assert_eq!(read, [&head[..], b"Z<error: invalid chunked request body>"].concat());
    }
}
