//! The upstream HTTP/1 codec (`proxy::h1`) on arbitrary bytes: a response head, then its body,
//! fed whole and in arbitrary pieces. Checked: nothing panics; the pieces give what the whole gives
//! (the same head, the same body bytes, the same end or error); a body never holds more than was
//! sent, and a `Content-Length` body that ends has exactly that length. Then the chunk encoder:
//! the same bytes sent as chunks decode back to themselves.

#![no_main]

use bytes::BytesMut;
use http::Method;
use libfuzzer_sys::fuzz_target;
use tollgate::proxy::h1::{self, Decoded, Decoder};

/// What reading one response gave.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// The head (status, version, headers, keep-alive, framing), or why there was none.
    head: Result<String, String>,
    body: Vec<u8>,
    end: Result<&'static str, String>,
    /// Bytes left in the buffer after the body ended (the next response's).
    rest: usize,
}

/// Where to cut the input: piece sizes drawn from `seed`, cycling.
fn pieces(seed: &[u8], len: usize) -> Vec<usize> {
    let sizes: Vec<usize> = seed.iter().map(|b| usize::from(*b % 16) + 1).collect();
    if sizes.is_empty() {
        return vec![len.max(1)];
    }
    let mut out = Vec::new();
    let mut total = 0;
    for size in sizes.iter().cycle() {
        if total >= len {
            break;
        }
        out.push(*size);
        total += size;
    }
    out
}

fn read(method: &Method, wire: &[u8], sizes: &[usize]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut sizes = sizes.iter().copied().cycle();
    let mut feed = |buf: &mut BytesMut| -> bool {
        if at >= wire.len() {
            return false;
        }
        let n = sizes.next().unwrap_or(wire.len()).min(wire.len() - at);
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        true
    };
    feed(&mut buf);
    let head = loop {
        match h1::parse_head(&mut buf, method) {
            Ok(Some(head)) => break head,
            Ok(None) => {
                if !feed(&mut buf) {
                    return Outcome { head: Err("incomplete".into()), body: Vec::new(), end: Ok("-"), rest: 0 };
                }
            }
            Err(e) => return Outcome { head: Err(e.to_string()), body: Vec::new(), end: Ok("-"), rest: 0 },
        }
    };
    let summary = format!(
        "{} {:?} {:?} keep_alive={} body={:?}",
        head.status, head.version, head.headers, head.keep_alive, head.body
    );
    let declared = match head.body {
        Decoder::Length(n) => Some(n),
        _ => None,
    };
    let mut decoder = head.body;
    let mut body = Vec::new();
    let end = 'read: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(d)) => {
                    assert!(!d.is_empty(), "empty data");
                    body.extend_from_slice(&d);
                    // What the proxy does after each piece: the end may already be in the buffer.
                    if let Err(e) = decoder.skip_framing(&mut buf) {
                        break 'read Err(e.to_string());
                    }
                }
                Ok(Decoded::More) => break,
                Ok(Decoded::End) => break 'read Ok("end"),
                Err(e) => break 'read Err(e.to_string()),
            }
        }
        if !feed(&mut buf) {
            break match decoder.eof() {
                Ok(()) => Ok("closed"),
                Err(e) => Err(e.to_string()),
            };
        }
    };
    if end.is_ok() {
        assert!(decoder.is_done() || matches!(decoder, Decoder::Eof), "ended but not done: {decoder:?}");
    }
    if let (Some(n), Ok("end")) = (declared, &end) {
        assert_eq!(body.len() as u64, n, "a Content-Length body of another length");
    }
    assert!(body.len() <= wire.len(), "more body than input");
    Outcome { head: Ok(summary), body, end, rest: buf.len() + (wire.len() - at) }
}

/// The bytes of `data` as a chunked body cut at `sizes`, decoded back.
fn chunk_round_trip(data: &[u8], sizes: &[usize]) {
    let mut wire = Vec::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= data.len() {
            break;
        }
        let n = (*size).min(data.len() - at);
        h1::encode_chunk_size(n, &mut wire);
        wire.extend_from_slice(&data[at..at + n]);
        wire.extend_from_slice(b"\r\n");
        at += n;
    }
    wire.extend_from_slice(h1::LAST_CHUNK);
    let mut head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    head.extend_from_slice(&wire);
    let out = read(&Method::GET, &head, &[7]);
    assert_eq!(out.body, data, "chunked round trip");
    assert_eq!(out.end, Ok("end"));
    assert_eq!(out.rest, 0);
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let method = match control % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::CONNECT,
        _ => Method::POST,
    };
    let seed_len = usize::from(control >> 2).min(rest.len());
    let (seed, wire) = rest.split_at(seed_len);
    let whole = read(&method, wire, &[wire.len().max(1)]);
    let split = read(&method, wire, &pieces(seed, wire.len()));
    assert_eq!(whole, split, "the same bytes read in pieces read differently");
    if !seed.is_empty() {
        chunk_round_trip(wire, &pieces(seed, wire.len()));
    }
});
