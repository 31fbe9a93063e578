//! The HTTP/1.1 wire format of the upstream client: encoding a request head, parsing a response head
//! (with `httparse`) and decoding a response body's framing (RFC 9112 §6.3: none, `Content-Length`,
//! chunked, or until the connection closes). Pure functions over buffers, no I/O: `upstream` drives
//! the socket. The chunked decoder and the header-map builder serve the client side too (`framing`,
//! `downstream`).
//!
//! Written here rather than taken from hyper's client because of where the work happens: hyper runs
//! each client connection in a task of its own, so a proxied request crossed tasks several times
//! (request channel, response oneshot, body channel). With this codec the server connection's task
//! writes the request and reads the response itself.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use http_body::SizeHint;

/// Largest response head accepted (status line and headers, 1xx heads included).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk extension accepted (they are skipped, but not without bound).
const MAX_CHUNK_EXTENSION: usize = 4 * 1024;
/// Largest trailer section accepted (trailers are skipped).
const MAX_TRAILERS: usize = 64 * 1024;

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid status code")]
    Status,
    #[error("invalid header")]
    Header,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("Transfer-Encoding in an HTTP/1.0 response")]
    TransferEncoding,
    #[error("protocol switch (status {0}) is not proxied")]
    Upgrade(u16),
    #[error("invalid chunk size")]
    ChunkSize,
    #[error("chunk extension too long")]
    ChunkExtension,
    #[error("missing CRLF after a chunk")]
    ChunkEnd,
    #[error("invalid or oversized trailers")]
    Trailers,
    #[error("connection closed before the body was complete")]
    Incomplete,
}

/// How a request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes; `add` when the header must be written (the request lacks it).
    Length { len: u64, add: bool },
    /// `Transfer-Encoding: chunked` (trailers are not sent).
    Chunked,
}

/// Appends the request head: request line in origin form, the headers in their order (repeated ones
/// repeated), then the framing header. `Transfer-Encoding` is ours to set: a caller's is dropped, and
/// so is its `Content-Length` when the framing writes its own.
pub fn encode_head(method: &Method, uri: &Uri, headers: &HeaderMap, framing: RequestFraming, out: &mut Vec<u8>) {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    out.reserve(64 + target.len() + headers.len() * 32);
    encode_request_line(method, target, out);
    for (name, value) in headers {
        if framing_header(name, framing) {
            continue;
        }
        encode_header(name.as_str().as_bytes(), value.as_bytes(), out);
    }
    encode_framing(framing, out);
}

/// `METHOD target HTTP/1.1` and its line end.
pub fn encode_request_line(method: &Method, target: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Whether a header of the request is the framing's to write: `Transfer-Encoding` always, and
/// `Content-Length` when the framing writes its own.
pub fn framing_header(name: &HeaderName, framing: RequestFraming) -> bool {
    let own_length = matches!(framing, RequestFraming::Length { add: true, .. } | RequestFraming::Chunked);
    name == header::TRANSFER_ENCODING || (own_length && name == header::CONTENT_LENGTH)
}

/// `name: value` and its line end.
pub fn encode_header(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The framing header, if the framing has one, and the blank line that ends the head.
pub fn encode_framing(framing: RequestFraming, out: &mut Vec<u8>) {
    match framing {
        RequestFraming::Empty | RequestFraming::Length { add: false, .. } => {}
        RequestFraming::Length { len, add: true } => {
            encode_header(b"content-length", itoa::Buffer::new().format(len).as_bytes(), out);
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the size line of a data chunk (hex, no extension).
pub fn encode_chunk_size(len: usize, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut shift = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) * 4;
    while shift > 0 {
        shift -= 4;
        out.push(HEX[(len >> shift) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// The last chunk (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A final response head and how its body is framed.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Decoder,
    /// The connection may carry another request once this body is read (keep-alive, and a body
    /// whose end is known from its framing).
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`, skipping informational (1xx) heads. Consumes what
/// it parsed and returns `None` when the head is not complete yet (read more and call again).
/// `method` is the request's (a response to `HEAD` has no body).
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<ResponseHead>, Error> {
    loop {
        // Uninitialised: nothing to clear per parse (httparse fills what it uses).
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed =
            httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, buf, &mut headers);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
            Ok(_) => return Err(Error::HeadTooLarge),
            Err(e) => return Err(Error::Head(e)),
        };
        let code = response.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| Error::Status)?;
        if status.is_informational() {
            if code == 101 {
                return Err(Error::Upgrade(code));
            }
            // 100 Continue, 103 Early Hints…: not forwarded; the final response follows.
            buf.advance(len);
            continue;
        }
        let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        let mut spans = [Span::default(); MAX_HEADERS];
        let count = spans_of(buf, response.headers, &mut spans).ok_or(Error::Header)?;
        // The values are slices of the head's bytes: no copy per header.
        let head = buf.split_to(len).freeze();
        let mut map = header_map(&head, spans.get(..count).unwrap_or_default()).ok_or(Error::Header)?;
        let (body, framed) = framing(method, status, version, &mut map)?;
        let keep_alive = framed && keeps_alive(version, &map);
        return Ok(Some(ResponseHead { status, version, headers: map, body, keep_alive }));
    }
}

/// Where a header's name and value lie in a head, as offsets from the head's start (a head is at
/// most [`MAX_HEAD`] long): taken while httparse's slices borrow the read buffer, used once the head
/// has been split off it, so that the header map is built of slices of the head without a copy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    name: u16,
    name_len: u16,
    value: u16,
    value_len: u16,
}

/// Records where each of `headers` (parsed out of `buf`) lies; the count, or `None` if one lies
/// outside the first 64 KiB of `buf`.
pub fn spans_of(buf: &[u8], headers: &[httparse::Header<'_>], out: &mut [Span; MAX_HEADERS]) -> Option<usize> {
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| u16::try_from((s.as_ptr() as usize).wrapping_sub(base)).ok();
    let len = |s: &[u8]| u16::try_from(s.len()).ok();
    for (span, h) in out.iter_mut().zip(headers.iter()) {
        let name = h.name.as_bytes();
        *span = Span { name: offset(name)?, name_len: len(name)?, value: offset(h.value)?, value_len: len(h.value)? };
    }
    (headers.len() <= MAX_HEADERS).then_some(headers.len())
}

/// The header map of a head whose headers lie at `spans`: names checked, values shared with `head`.
pub fn header_map(head: &Bytes, spans: &[Span]) -> Option<HeaderMap> {
    let mut map = HeaderMap::with_capacity(spans.len());
    for span in spans {
        let (name, value) = (usize::from(span.name), usize::from(span.value));
        let name = head.get(name..name + usize::from(span.name_len))?;
        let name = HeaderName::from_bytes(name).ok()?;
        let end = value + usize::from(span.value_len);
        head.get(value..end)?;
        map.append(name, HeaderValue::from_maybe_shared(head.slice(value..end)).ok()?);
    }
    Some(map)
}

/// How the body of a response is delimited (RFC 9112 §6.3), and whether its end is known without
/// the connection closing.
fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
) -> Result<(Decoder, bool), Error> {
    if method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Decoder::done(), true));
    }
    if method == Method::CONNECT && status.is_success() {
        // A tunnel: the connection stops being HTTP.
        return Err(Error::Upgrade(status.as_u16()));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(Error::TransferEncoding);
        }
        // Transfer-Encoding overrides Content-Length, which must not be passed on with it.
        let framed = !headers.contains_key(header::CONTENT_LENGTH);
        headers.remove(header::CONTENT_LENGTH);
        if is_chunked(headers) {
            return Ok((Decoder::Chunked(Chunked::default()), framed));
        }
        return Ok((Decoder::Eof, false));
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        let len = content_length(headers).ok_or(Error::ContentLength)?;
        return Ok((Decoder::length(len), true));
    }
    Ok((Decoder::Eof, false))
}

/// Whether the last transfer coding is `chunked`.
fn is_chunked(headers: &HeaderMap) -> bool {
    let last = headers.get_all(header::TRANSFER_ENCODING).iter().next_back();
    last.and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The `Content-Length`: every value (comma-separated lists included) the same number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

/// Whether the connection stays open after this response (`Connection: close`, or HTTP/1.0 without
/// `Connection: keep-alive`).
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &[u8]| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token)))
    };
    if version == Version::HTTP_10 { has(b"keep-alive") } else { !has(b"close") }
}

/// The decoder of a response body.
#[derive(Debug)]
pub enum Decoder {
    /// This many bytes are left; 0 once the body is complete.
    Length(u64),
    Chunked(Chunked),
    /// Until the connection closes.
    Eof,
    /// A close-delimited body whose connection closed.
    Closed,
}

/// What a decoding step produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// Read more into the buffer.
    More,
    /// The body is complete.
    End,
}

impl Decoder {
    pub fn done() -> Decoder {
        Decoder::Length(0)
    }

    pub fn length(len: u64) -> Decoder {
        Decoder::Length(len)
    }

    /// Takes the next piece of body out of `buf`: data as a slice of it (no copy), framing consumed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        match self {
            Decoder::Length(0) | Decoder::Closed => Ok(Decoded::End),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= n as u64;
                Ok(Decoded::Data(buf.split_to(n).freeze()))
            }
            Decoder::Chunked(c) => c.decode(buf, true),
            Decoder::Eof if buf.is_empty() => Ok(Decoded::More),
            Decoder::Eof => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// Consumes the framing that follows data already taken, so that a body whose end is in `buf`
    /// is known complete without another poll. Takes no data.
    pub fn skip_framing(&mut self, buf: &mut BytesMut) -> Result<(), Error> {
        if let Decoder::Chunked(c) = self {
            c.decode(buf, false)?;
        }
        Ok(())
    }

    /// The connection closed: the end of a close-delimited body, too early for any other.
    pub fn eof(&mut self) -> Result<(), Error> {
        match self {
            Decoder::Eof | Decoder::Closed => {
                *self = Decoder::Closed;
                Ok(())
            }
            Decoder::Length(0) => Ok(()),
            Decoder::Chunked(c) if c.state == ChunkState::Done => Ok(()),
            _ => Err(Error::Incomplete),
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            Decoder::Length(left) => *left == 0,
            Decoder::Chunked(c) => c.state == ChunkState::Done,
            Decoder::Eof => false,
            Decoder::Closed => true,
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            Decoder::Length(left) => SizeHint::with_exact(*left),
            Decoder::Closed => SizeHint::with_exact(0),
            Decoder::Chunked(c) if c.state == ChunkState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Where the chunked decoder is in `chunk-size [ext] CRLF data CRLF … 0 CRLF [trailers] CRLF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// Reading hex digits.
    #[default]
    Size,
    /// Whitespace after the digits.
    SizeSpace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The state of a chunked body.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// The chunk size being read, then the bytes left of its data.
    size: u64,
    digits: bool,
    /// Bytes of chunk extension or trailers skipped so far (bounded).
    skipped: usize,
}

impl Chunked {
    /// Runs the state machine over `buf`: returns data when it reaches some (only if `take_data`),
    /// `End` after the last chunk and trailers, `More` when `buf` runs out.
    fn decode(&mut self, buf: &mut BytesMut, take_data: bool) -> Result<Decoded, Error> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(Decoded::End),
                ChunkState::Data => {
                    if buf.is_empty() || !take_data {
                        return Ok(Decoded::More);
                    }
                    let n = usize::try_from(self.size).unwrap_or(usize::MAX).min(buf.len());
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                _ => {}
            }
            let Some(&byte) = buf.first() else { return Ok(Decoded::More) };
            buf.advance(1);
            self.step(byte)?;
        }
    }

    /// The last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// One framing byte.
    fn step(&mut self, byte: u8) -> Result<(), Error> {
        use ChunkState as S;
        self.state = match (self.state, byte) {
            (S::Size, b) if b.is_ascii_hexdigit() => {
                let digit = (b as char).to_digit(16).map_or(0, u64::from);
                if self.size > u64::MAX >> 4 {
                    return Err(Error::ChunkSize);
                }
                self.size = self.size << 4 | digit;
                self.digits = true;
                S::Size
            }
            (S::Size, _) if !self.digits => return Err(Error::ChunkSize),
            (S::Size | S::SizeSpace, b' ' | b'\t') => S::SizeSpace,
            (S::Size | S::SizeSpace, b';') => {
                self.skipped = 0;
                S::Extension
            }
            (S::Size | S::SizeSpace | S::Extension, b'\r') => S::SizeLf,
            (S::Size | S::SizeSpace, _) => return Err(Error::ChunkSize),
            (S::Extension, b'\n') => return Err(Error::ChunkExtension),
            (S::Extension, _) => {
                self.skipped += 1;
                if self.skipped > MAX_CHUNK_EXTENSION {
                    return Err(Error::ChunkExtension);
                }
                S::Extension
            }
            (S::SizeLf, b'\n') if self.size == 0 => {
                self.skipped = 0;
                S::TrailerStart
            }
            (S::SizeLf, b'\n') => S::Data,
            (S::SizeLf, _) => return Err(Error::ChunkSize),
            (S::DataCr, b'\r') => S::DataLf,
            (S::DataLf, b'\n') => {
                self.digits = false;
                S::Size
            }
            (S::DataCr | S::DataLf, _) => return Err(Error::ChunkEnd),
            (S::TrailerStart, b'\r') => S::EndLf,
            (S::TrailerStart | S::Trailer, b'\n') => return Err(Error::Trailers),
            (S::Trailer, b'\r') => S::TrailerLf,
            (S::TrailerStart | S::Trailer, _) => {
                self.skipped += 1;
                if self.skipped > MAX_TRAILERS {
                    return Err(Error::Trailers);
                }
                S::Trailer
            }
            (S::TrailerLf, b'\n') => S::TrailerStart,
            (S::TrailerLf, _) => return Err(Error::Trailers),
            (S::EndLf, b'\n') => S::Done,
            (S::EndLf, _) => return Err(Error::Trailers),
            (S::Data | S::Done, _) => self.state,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], method: &Method) -> Result<Option<ResponseHead>, Error> {
        parse_head(&mut BytesMut::from(bytes), method)
    }

    /// Decodes a whole body fed in pieces of `step` bytes; returns the data and whether it ended.
    fn decode_all(mut decoder: Decoder, wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), Error> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::More => break,
                    Decoded::End => return Ok((out, true)),
                }
            }
        }
        Ok((out, decoder.is_done()))
    }

    #[test]
    fn a_request_head_keeps_header_order_and_repeats_and_adds_the_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("up.test"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        let uri: Uri = "/p?q=1".parse().expect("uri");
        let mut out = Vec::new();
        encode_head(&Method::POST, &uri, &headers, RequestFraming::Length { len: 5, add: true }, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /p?q=1 HTTP/1.1\r\nhost: up.test\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\n"
        );
        out.clear();
        encode_head(&Method::POST, &uri, &headers, RequestFraming::Length { len: 7, add: false }, &mut out);
        assert!(String::from_utf8_lossy(&out).ends_with("x-a: 2\r\ncontent-length: 7\r\n\r\n"));
        out.clear();
        encode_head(&Method::PUT, &uri, &headers, RequestFraming::Chunked, &mut out);
        assert!(String::from_utf8_lossy(&out).ends_with("x-a: 2\r\ntransfer-encoding: chunked\r\n\r\n"));
        out.clear();
        encode_head(&Method::GET, &Uri::from_static("/"), &HeaderMap::new(), RequestFraming::Empty, &mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for (len, text) in [(0, "0\r\n"), (1, "1\r\n"), (255, "ff\r\n"), (65536, "10000\r\n")] {
            let mut out = Vec::new();
            encode_chunk_size(len, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), text);
        }
    }

    #[test]
    fn a_head_split_across_reads_is_parsed_once_complete() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\nServer: up\r\n\r\nhi";
        let mut buf = BytesMut::new();
        let mut parsed = None;
        for b in wire.iter() {
            buf.extend_from_slice(&[*b]);
            if let Some(head) = parse_head(&mut buf, &Method::GET).expect("valid") {
                parsed = Some(head);
                break;
            }
        }
        let head = parsed.expect("complete");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.version, Version::HTTP_11);
        let names: Vec<&str> = head.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-length", "x-a", "server"]);
        let xa: Vec<&[u8]> = head.headers.get_all("x-a").iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(xa, [b"1", b"2"]);
        assert!(head.keep_alive);
        assert!(buf.is_empty(), "the head is consumed, nothing more");
    }

    #[test]
    fn informational_heads_are_skipped_and_101_refused() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"[..]);
        let head = parse_head(&mut buf, &Method::POST).expect("valid").expect("complete");
        assert_eq!(head.status, StatusCode::CREATED);
        assert!(!head.headers.contains_key("link"));
        assert!(buf.is_empty());
        // A 100 alone: consumed, the final head is still to come.
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2"[..]);
        assert!(parse_head(&mut buf, &Method::POST).expect("valid").is_none());
        assert_eq!(&buf[..], b"HTTP/1.1 2");
        let upgrade = parse(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", &Method::GET);
        assert!(matches!(upgrade, Err(Error::Upgrade(101))));
    }

    #[test]
    fn heads_too_large_or_with_too_many_headers_are_refused() {
        let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert!(matches!(parse(&big, &Method::GET), Err(Error::HeadTooLarge)));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many, &Method::GET), Err(Error::Head(httparse::Error::TooManyHeaders))));
        assert!(matches!(parse(b"HTTP/1.1 2000 What\r\n\r\n", &Method::GET), Err(Error::Head(_))));
        assert!(matches!(parse(b"SMTP ready\r\n\r\n", &Method::GET), Err(Error::Head(_))));
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", &Method::GET), Err(Error::Head(_))));
    }

    #[test]
    fn head_204_and_304_responses_have_no_body() {
        let with_length = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let head = parse(with_length, &Method::HEAD).expect("valid").expect("complete");
        assert!(head.body.is_done() && head.keep_alive);
        assert_eq!(head.headers[header::CONTENT_LENGTH], "10", "the header is kept");
        for status in ["204 No Content", "304 Not Modified"] {
            let wire = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
            let head = parse(wire.as_bytes(), &Method::GET).expect("valid").expect("complete");
            assert!(head.body.is_done() && head.keep_alive, "{status}");
        }
    }

    #[test]
    fn a_content_length_body_is_exactly_that_long() {
        let head = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", &Method::GET).expect("valid");
        let head = head.expect("complete");
        assert!(head.keep_alive);
        assert_eq!(head.body.size_hint().exact(), Some(5));
        for step in [1, 2, 100] {
            let (data, ended) = decode_all(Decoder::length(5), b"hello", step).expect("valid");
            assert_eq!((data.as_slice(), ended), (&b"hello"[..], true));
        }
        // What follows the body stays in the buffer.
        let mut buf = BytesMut::from(&b"helloHTTP"[..]);
        let mut d = Decoder::length(5);
        assert_eq!(d.decode(&mut buf).expect("valid"), Decoded::Data(Bytes::from_static(b"hello")));
        assert_eq!(d.decode(&mut buf).expect("valid"), Decoded::End);
        assert_eq!(&buf[..], b"HTTP");
        // Closed early.
        let mut d = Decoder::length(5);
        let mut buf = BytesMut::from(&b"he"[..]);
        assert!(matches!(d.decode(&mut buf), Ok(Decoded::Data(_))));
        assert!(matches!(d.eof(), Err(Error::Incomplete)));
    }

    #[test]
    fn conflicting_or_invalid_content_lengths_are_refused() {
        for bad in ["5, 6", "-1", "abc", "", "1 2"] {
            let wire = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(matches!(parse(wire.as_bytes(), &Method::GET), Err(Error::ContentLength)), "{bad}");
        }
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert!(matches!(parse(two, &Method::GET), Err(Error::ContentLength)));
        let te10 = b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(te10, &Method::GET), Err(Error::TransferEncoding)));
    }

    #[test]
    fn chunked_bodies_with_extensions_and_trailers_decode_across_any_split() {
        let wire = b"5;name=value;x\r\nhello\r\n7 ; ext\r\n, world\r\n0\r\nx-trailer: 1\r\nx-other: 2\r\n\r\n";
        for step in 1..=wire.len() {
            let (data, ended) = decode_all(Decoder::Chunked(Chunked::default()), wire, step).expect("valid");
            assert_eq!(String::from_utf8_lossy(&data), "hello, world", "step {step}");
            assert!(ended, "step {step}");
        }
        let head =
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n", &Method::GET);
        let head = head.expect("valid").expect("complete");
        assert!(matches!(head.body, Decoder::Chunked(_)));
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH), "dropped when Transfer-Encoding is there");
        assert!(!head.keep_alive, "both framings at once: not reused");
    }

    #[test]
    fn the_end_of_a_chunked_body_is_seen_without_another_read() {
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\n"[..]);
        let mut d = Decoder::Chunked(Chunked::default());
        assert_eq!(d.decode(&mut buf).expect("valid"), Decoded::Data(Bytes::from_static(b"abc")));
        assert!(!d.is_done());
        d.skip_framing(&mut buf).expect("valid");
        assert!(d.is_done() && buf.is_empty());
    }

    #[test]
    fn bad_chunk_framing_is_refused() {
        let bad: [&[u8]; 7] = [
            b"\r\n",
            b"zz\r\n",
            b"5\nhello\r\n",
            b"3\r\nabcX\r\n",
            b"ffffffffffffffffff\r\n",
            b"3;ext\nabc",
            b"0\r\nbad\ntrailer\r\n\r\n",
        ];
        for wire in bad {
            let result = decode_all(Decoder::Chunked(Chunked::default()), wire, wire.len());
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'e', MAX_CHUNK_EXTENSION + 1));
        assert!(matches!(
            decode_all(Decoder::Chunked(Chunked::default()), &long_ext, 1024),
            Err(Error::ChunkExtension)
        ));
        // Cut short.
        let mut d = Decoder::Chunked(Chunked::default());
        let mut buf = BytesMut::from(&b"5\r\nhel"[..]);
        assert!(matches!(d.decode(&mut buf), Ok(Decoded::Data(_))));
        assert!(matches!(d.eof(), Err(Error::Incomplete)));
    }

    /// A chunked request body read as it arrives, in pieces of any size, ends where its framing ends:
    /// what follows (a pipelined request) is left in the buffer.
    #[test]
    fn a_chunked_body_ends_where_its_framing_ends_however_it_arrives() {
        let wire = b"5;ext\r\nhello\r\n0\r\nx-t: 1\r\n\r\nGET / HTTP/1.1";
        for step in 1..=wire.len() {
            let mut decoder = Decoder::Chunked(Chunked::default());
            let mut buf = BytesMut::new();
            let mut data = Vec::new();
            for piece in wire.chunks(step) {
                buf.extend_from_slice(piece);
                while let Decoded::Data(d) = decoder.decode(&mut buf).expect("valid") {
                    data.extend_from_slice(&d);
                }
                if decoder.is_done() {
                    break;
                }
            }
            assert_eq!(data, b"hello", "step {step}");
            let rest = &wire[wire.len() - b"GET / HTTP/1.1".len()..];
            assert!(rest.starts_with(&buf), "step {step}: {buf:?}");
        }
        let mut broken = BytesMut::from(&b"5\r\nhelloXX"[..]);
        let mut decoder = Decoder::Chunked(Chunked::default());
        assert!(matches!(decoder.decode(&mut broken), Ok(Decoded::Data(_))));
        assert!(matches!(decoder.decode(&mut broken), Err(Error::ChunkEnd)));
    }

    #[test]
    fn a_body_without_framing_runs_until_the_connection_closes() {
        let head = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", &Method::GET).expect("valid");
        let head = head.expect("complete");
        assert!(matches!(head.body, Decoder::Eof) && !head.keep_alive);
        let head = parse(b"HTTP/1.1 200 OK\r\n\r\n", &Method::GET).expect("valid").expect("complete");
        assert!(matches!(head.body, Decoder::Eof) && !head.keep_alive, "no framing: never reused");
        let mut d = Decoder::Eof;
        let mut buf = BytesMut::from(&b"all of it"[..]);
        assert_eq!(d.decode(&mut buf).expect("valid"), Decoded::Data(Bytes::from_static(b"all of it")));
        assert_eq!(d.decode(&mut buf).expect("valid"), Decoded::More);
        d.eof().expect("the end");
        assert_eq!(d.decode(&mut buf).expect("valid"), Decoded::End);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let cases: [(&[u8], bool); 4] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", true),
        ];
        for (wire, keep) in cases {
            let head = parse(wire, &Method::GET).expect("valid").expect("complete");
            assert_eq!(head.keep_alive, keep, "{}", String::from_utf8_lossy(wire));
        }
    }
}
