//! Request heads and their framing, read off a client connection by the proxy's HTTP/1.1 server
//! (`downstream`), before anything reaches an upstream.
//!
//! One httparse pass per head gives the request and how its body is framed, judged the way nginx
//! judges it, refusing what request smuggling is made of: `Content-Length` together with
//! `Transfer-Encoding`, differing lengths, a transfer coding other than `chunked`,
//! `Transfer-Encoding` in HTTP/1.0, folded header lines. A refused head is answered with nginx's
//! status and Kong's body, then the connection closes: what follows it cannot be trusted to be a
//! request. Header values are slices of the head's bytes, not copies.
//!
//! Also here: what an error reading a client's request body means ([`BodyFault`]).

use std::error::Error as _;
use std::io;
use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{Method, Uri, Version, request};

use super::h1::{self, Span};

/// Largest request head accepted, request line included. nginx takes 8 KiB lines in at most 32 KiB
/// (`large_client_header_buffers 4 8k`); this is more generous, and bounds what a client can make the
/// proxy hold.
pub const MAX_HEAD: usize = h1::MAX_HEAD;
/// Most header lines in a request head.
const MAX_HEADERS: usize = h1::MAX_HEADERS;
/// What an HTTP/2 connection with prior knowledge starts with.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not HTTP/1.x as httparse reads it (folded lines included), an invalid method or target, or
    /// framing that contradicts itself: 400.
    BadRequest,
    /// A transfer coding other than exactly `chunked`: 501, as nginx answers.
    NotImplemented,
    /// A request line longer than [`MAX_HEAD`]: 414.
    UriTooLong,
    /// A head longer than [`MAX_HEAD`], or with too many header lines: 431.
    HeadTooLarge,
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A request head, parsed and judged.
#[derive(Debug)]
pub struct RequestHead {
    pub parts: request::Parts,
    pub body: BodyFraming,
    /// The client lets the connection carry another request (HTTP/1.1 without `Connection: close`,
    /// HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// HTTP/1.1 `Expect: 100-continue`: the client waits for `100 Continue` before sending its body.
    pub expects_continue: bool,
    /// The head's size as read, in bytes (Kong's `request_length` counts it).
    pub len: usize,
}

/// Parses and judges the request head at the start of `buf`, taking it out of `buf`. `Ok(None)`: the
/// head is not whole yet (read more and call again).
pub fn parse(buf: &mut BytesMut) -> Result<Option<RequestHead>, Refusal> {
    // Uninitialised: nothing to clear per head (httparse fills what it uses).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, buf, &mut headers);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) if !buf.contains(&b'\n') => return Err(Refusal::UriTooLong),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadTooLarge),
        Err(_) => return Err(Refusal::BadRequest),
    };
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let judged = judge(version, request.headers)?;
    let method = Method::from_bytes(request.method.unwrap_or("").as_bytes()).map_err(|_| Refusal::BadRequest)?;
    let target = request.path.unwrap_or("");
    // The target's place in the head, like the headers': taken out of it without a copy.
    let target_at = (target.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    let target_len = target.len();
    let mut spans = [Span::default(); MAX_HEADERS];
    let count = h1::spans_of(buf, request.headers, &mut spans).ok_or(Refusal::BadRequest)?;
    let head = buf.split_to(len).freeze();
    let target = head.get(target_at..target_at + target_len).map(|_| head.slice(target_at..target_at + target_len));
    let uri = target.and_then(|t| Uri::from_maybe_shared(t).ok()).ok_or(Refusal::BadRequest)?;
    let headers = h1::header_map(&head, spans.get(..count).unwrap_or_default()).ok_or(Refusal::BadRequest)?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        body: judged.body,
        keep_alive: judged.keep_alive,
        expects_continue: judged.expects_continue && version == Version::HTTP_11,
        len,
    }))
}

/// What the headers say about the body and the connection.
#[derive(Debug)]
struct Judged {
    body: BodyFraming,
    keep_alive: bool,
    expects_continue: bool,
}

/// Judges the framing headers the way nginx does: a `Content-Length` must be one number, however
/// often repeated; `Transfer-Encoding` must be one `chunked`, in HTTP/1.1, without a
/// `Content-Length` beside it. Reads `Connection` and `Expect` on the way.
fn judge(version: Version, headers: &[httparse::Header<'_>]) -> Result<Judged, Refusal> {
    let mut length: Option<u64> = None;
    let mut codings = 0;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut expects_continue = false;
    for h in headers {
        let name = h.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                for part in h.value.split(|b| *b == b',') {
                    match digits(part.trim_ascii()) {
                        Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                        _ => return Err(Refusal::BadRequest),
                    }
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                codings += 1;
                chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expects_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
    }
    let body = if codings > 0 {
        if version == Version::HTTP_10 {
            return Err(Refusal::BadRequest);
        }
        if codings > 1 || !chunked {
            return Err(Refusal::NotImplemented);
        }
        if length.is_some() {
            return Err(Refusal::BadRequest);
        }
        BodyFraming::Chunked
    } else {
        match length {
            Some(n) if n > 0 => BodyFraming::Length(n),
            _ => BodyFraming::None,
        }
    };
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive);
    Ok(Judged { body, keep_alive, expects_continue })
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

/// What went wrong reading a client's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyFault {
    /// Its framing is invalid (a broken chunk): 400.
    #[error("invalid request body framing")]
    Framing,
    /// The client closed or reset the connection before the body was whole: nginx's 499, logged,
    /// never answered.
    #[error("the client left before its request body was whole")]
    ClientLeft,
}

impl BodyFault {
    /// Reads an HTTP/2 body error from hyper: a decoding error is the body's framing; anything else
    /// (the end of the stream too early, a reset) is the client going away.
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

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const SIZED: &[u8] = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";

    fn outcome(head: &str) -> Result<Option<RequestHead>, Refusal> {
        parse(&mut BytesMut::from(head.as_bytes()))
    }

    fn refusal(head: &str) -> Option<Refusal> {
        match outcome(head) {
            Err(refusal) => Some(refusal),
            Ok(Some(_)) => None,
            Ok(None) => panic!("{head:?}: incomplete"),
        }
    }

    fn framing(head: &str) -> BodyFraming {
        match outcome(head) {
            Ok(Some(h)) => h.body,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    /// A head is taken out of the buffer whole, and only it: the body and any pipelined request stay.
    #[test]
    fn a_head_is_taken_whole_and_what_follows_it_stays() {
        let mut buf = BytesMut::from(&[SIZED, GET].concat()[..]);
        let head = parse(&mut buf).expect("valid").expect("whole");
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri, "/b");
        assert_eq!(head.parts.headers["host"], "x");
        assert_eq!(head.body, BodyFraming::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], &[&b"hello"[..], GET].concat()[..]);
        // Split at every byte, a head is either incomplete (and left untouched) or whole.
        for split in 0..GET.len() {
            let mut buf = BytesMut::from(&GET[..split]);
            assert!(matches!(parse(&mut buf), Ok(None)), "split at {split}");
            assert_eq!(buf.len(), split);
        }
    }

    #[test]
    fn connection_and_expect_are_read_as_nginx_reads_them() {
        let keep = |head: &str| outcome(head).expect("valid").expect("whole").keep_alive;
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        let expects = |head: &str| outcome(head).expect("valid").expect("whole").expects_continue;
        assert!(expects("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"));
        assert!(!expects("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"));
        assert_eq!(framing("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), BodyFraming::None);
        assert_eq!(framing("POST / HTTP/1.1\r\nTransfer-Encoding:  Chunked \r\n\r\n"), BodyFraming::Chunked);
    }

    #[test]
    fn content_length_beside_transfer_encoding_is_refused_in_either_order() {
        let cl_te = "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let te_cl = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(refusal(cl_te), Some(Refusal::BadRequest));
        assert_eq!(refusal(te_cl), Some(Refusal::BadRequest));
    }

    #[test]
    fn a_content_length_must_be_one_number() {
        for bad in ["3\r\nContent-Length: 5", "3, 5", "+3", "-1", "", "3 3", "0x10", "99999999999999999999"] {
            let head = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(refusal(&head), Some(Refusal::BadRequest), "{bad:?}");
        }
        let repeated = "POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3, 3\r\n\r\nabc";
        assert_eq!(framing(repeated), BodyFraming::Length(3));
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
    }

    #[test]
    fn folded_lines_and_other_syntax_errors_are_refused() {
        for head in [
            "GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: one\r\n\ttwo\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "GET / HTTP/1.1\nbad header\n\n",
            "\u{0}GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A : b\r\n\r\n",
            "THIS IS NOT HTTP\r\n\r\n",
            "GET / HTTP/2.0\r\n\r\n",
            "GET /a\u{7f}b HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(refusal(head), Some(Refusal::BadRequest), "{head:?}");
        }
        // Only as a connection's first bytes is the HTTP/2 preface not a head (`downstream`).
        assert_eq!(parse(&mut BytesMut::from(PREFACE)).err(), Some(Refusal::BadRequest));
    }

    #[test]
    fn heads_over_the_limit_are_refused() {
        let line = format!("GET /{} HTTP/1.1", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&mut BytesMut::from(line.as_bytes())).err(), Some(Refusal::UriTooLong));
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(&mut BytesMut::from(big.as_bytes())).err(), Some(Refusal::HeadTooLarge));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(refusal(&many), Some(Refusal::HeadTooLarge));
    }

    /// Targets in every form a client may send keep their bytes; repeated headers keep their order.
    #[test]
    fn targets_and_repeated_headers_come_through_as_sent() {
        for target in ["/a/b?c=d&e", "*", "http://example.com/x?y", "/%7Euser/"] {
            let head = outcome(&format!("OPTIONS {target} HTTP/1.1\r\n\r\n")).expect("valid").expect("whole");
            assert_eq!(head.parts.uri.to_string(), target);
        }
        let head = outcome("GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nX-B:\r\n\r\n").expect("valid").expect("whole");
        let all: Vec<_> = head.parts.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(head.parts.headers["x-b"], "");
    }
}
