//! Request framing, black-box: malformed request heads and bodies sent over raw TCP are refused by the
//! gateway itself, with nginx's and Kong's statuses, and nothing of them reaches the upstream, a raw
//! listener that records every byte it receives. A test about a refused request ends with a barrier:
//! a marker request on a fresh connection, which the upstream must record, after which it must have
//! recorded nothing but marker requests.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::upstream::{Recorded, RecordingUpstream};
use support::{Gateway, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How much of a request body request buffering keeps in memory (`proxy::buffering`).
const BUFFER_LIMIT: usize = 1024 * 1024;

/// A gateway with one worker (so one upstream pool, and predictable upstream connections) and three
/// routes to the recording upstream: `/buffered` (Kong's default, `request_buffering: true`),
/// `/streamed` (`request_buffering: false`) and `/marker`, the barrier's.
async fn gateway() -> (Gateway, RecordingUpstream) {
    let up = RecordingUpstream::start();
    let opts = Options { extra: vec![("TOLLGATE_WORKER_THREADS".into(), "1".into())], ..Options::default() };
    let gw = Gateway::start_with(opts).await;
    gw.create("/services", json!({"name": "recorded", "url": up.url(""), "retries": 0})).await;
    for (name, buffering) in [("buffered", true), ("streamed", false), ("marker", true)] {
        let route =
            json!({"name": name, "paths": [format!("/{name}")], "strip_path": false, "request_buffering": buffering});
        gw.create("/services/recorded/routes", route).await;
    }
    // Routes go live in the order they were made: once the last one answers, all do.
    let ready = gw.eventually("/marker/ready", &[], Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(ready.status(), 200, "the routes did not go live");
    (gw, up)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The barrier: a marker request on a fresh connection, recorded by the upstream; then everything the
/// upstream received must be marker requests, each one whole.
async fn nothing_else_reached_the_upstream(gw: &Gateway, up: &RecordingUpstream) {
    let marker = format!("/marker/{}", uuid::Uuid::new_v4().simple());
    assert_eq!(gw.call(&marker, &[]).await.status(), 200);
    up.wait_for_request(&marker).await;
    for conn in up.connections() {
        let (requests, rest) = conn.requests();
        for line in &requests {
            assert!(line.starts_with("GET /marker/"), "the upstream received {line:?}:\n{}", lossy(&conn.bytes));
        }
        assert_eq!(rest, 0, "the upstream received part of a request:\n{}", lossy(&conn.bytes));
    }
}

/// Sends `request` on a fresh connection and returns all the gateway sends back until it closes the
/// connection. The writer runs on its own task: the gateway may answer before reading everything.
async fn exchange(gw: &Gateway, request: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the gateway kept the connection open; it sent:\n{}", lossy(&received));
    writer.abort();
    received
}

/// One response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", lossy(&self.body)))
    }
}

/// The response at the start of `buf` if it is complete (every answer here has a Content-Length), and
/// its length.
fn parse_answer(buf: &[u8]) -> Option<(Answer, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(buf).expect("a valid response head") else {
        return None;
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| lossy(h.value).trim().parse::<usize>().expect("a Content-Length"))
        .expect("responses here have a Content-Length");
    let body = buf.get(head_len..head_len + length)?.to_vec();
    let answer = Answer { status: response.code.unwrap_or(0), head: lossy(&buf[..head_len]), body };
    Some((answer, head_len + length))
}

/// Every response in what a connection received, in order; fails on bytes that are not one.
fn answers(mut received: &[u8]) -> Vec<Answer> {
    let mut all = Vec::new();
    while !received.is_empty() {
        let (answer, used) =
            parse_answer(received).unwrap_or_else(|| panic!("an incomplete response: {}", lossy(received)));
        all.push(answer);
        received = &received[used..];
    }
    all
}

/// Reads `count` responses from a connection kept open.
async fn read_answers(stream: &mut TcpStream, buf: &mut Vec<u8>, count: usize) -> Vec<Answer> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while all.len() < count {
        if let Some((answer, used)) = parse_answer(buf) {
            buf.drain(..used);
            all.push(answer);
            continue;
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await;
        match read.expect("an answer in time").expect("read") {
            0 => panic!("the gateway closed the connection after {} of {count} answers", all.len()),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    all
}

/// The gateway answered `status` with Kong's `{"message": …}` body, once, and closed the connection.
fn refused(received: &[u8], status: u16, message: &str) {
    let all = answers(received);
    assert_eq!(all.len(), 1, "one answer, then the connection closes: {all:#?}");
    assert_eq!(all[0].status, status, "{all:#?}");
    // A refused head is answered before a request exists; a broken body has the request's id.
    let mut body = all[0].json();
    if let Some(m) = body.as_object_mut() {
        m.remove("request_id");
    }
    assert_eq!(body, json!({ "message": message }), "{all:#?}");
    assert!(all[0].head.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{all:#?}");
}

/// A chunked body's wire form: each piece as one chunk, then the last chunk.
fn chunked(pieces: &[&[u8]]) -> Vec<u8> {
    let mut wire = Vec::new();
    for piece in pieces {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    wire
}

// ---------------------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_with_400_in_either_order() {
    let (gw, up) = gateway().await;
    for request in [
        "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /buffered HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        "POST /buffered HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\ntransfer-encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    ] {
        refused(&exchange(&gw, request.as_bytes()).await, 400, "Bad request");
    }
    nothing_else_reached_the_upstream(&gw, &up).await;
}

#[tokio::test]
async fn a_request_smuggled_in_the_body_of_a_cl_te_or_te_cl_request_never_reaches_the_upstream() {
    let (gw, up) = gateway().await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nx=1\r\n";
    // TE.CL: a front end reading Content-Length stops after `5c\r\n`; one reading the chunks passes
    // the smuggled request on as body, and the next hop may read it as a request.
    let te_cl = format!(
        "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    // CL.TE: the last chunk ends the body for one reader, the smuggled request follows it.
    let body = format!("0\r\n\r\n{smuggled}");
    let cl_te = format!(
        "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    for request in [te_cl, cl_te] {
        // A keep-alive follow-up in the same write must not be served either.
        let request = format!("{request}GET /buffered/follow-up HTTP/1.1\r\nHost: x\r\n\r\n");
        refused(&exchange(&gw, request.as_bytes()).await, 400, "Bad request");
    }
    nothing_else_reached_the_upstream(&gw, &up).await;
}

#[tokio::test]
async fn requests_pipelined_before_a_refused_one_are_answered_first() {
    let (gw, up) = gateway().await;
    let request = "GET /marker/first HTTP/1.1\r\nHost: x\r\n\r\n\
                   GET /marker/second HTTP/1.1\r\nHost: x\r\n\r\n\
                   POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
                   GET /buffered/after HTTP/1.1\r\nHost: x\r\n\r\n";
    let all = answers(&exchange(&gw, request.as_bytes()).await);
    let statuses: Vec<u16> = all.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 400], "{all:#?}");
    assert_eq!(all[2].json(), json!({"message": "Bad request"}));
    nothing_else_reached_the_upstream(&gw, &up).await;
    let lines: Vec<String> = up.connections().iter().flat_map(|c| c.requests().0).collect();
    assert!(lines.iter().any(|l| l == "GET /marker/first HTTP/1.1"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "GET /marker/second HTTP/1.1"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("/buffered/after")), "{lines:?}");
}

#[tokio::test]
async fn two_different_content_lengths_are_refused_with_400() {
    let (gw, up) = gateway().await;
    for request in [
        "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 5\r\n\r\nabcde",
        "POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
    ] {
        refused(&exchange(&gw, request.as_bytes()).await, 400, "Bad request");
    }
    nothing_else_reached_the_upstream(&gw, &up).await;
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_refused_with_501() {
    let (gw, up) = gateway().await;
    for coding in ["gzip, chunked", "chunked, gzip", "identity", "chunked\r\nTransfer-Encoding: chunked"] {
        let request = format!("POST /buffered HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n");
        refused(&exchange(&gw, request.as_bytes()).await, 501, "Not implemented");
    }
    nothing_else_reached_the_upstream(&gw, &up).await;
}

#[tokio::test]
async fn transfer_encoding_in_an_http_1_0_request_is_refused_with_400() {
    let (gw, up) = gateway().await;
    let request = b"POST /buffered HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    refused(&exchange(&gw, request).await, 400, "Bad request");
    nothing_else_reached_the_upstream(&gw, &up).await;
}

#[tokio::test]
async fn a_header_folded_over_two_lines_is_refused_with_400() {
    let (gw, up) = gateway().await;
    for request in [
        "GET /buffered HTTP/1.1\r\nHost: x\r\nX-Folded: one\r\n two\r\n\r\n",
        "GET /buffered HTTP/1.1\r\nHost: x\r\nX-Folded: one\r\n\ttwo\r\n\r\n",
        // Folding the framing header itself hides it from a reader that does not unfold.
        "POST /buffered HTTP/1.1\r\nHost: x\r\nX-A: b\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        refused(&exchange(&gw, request.as_bytes()).await, 400, "Bad request");
    }
    nothing_else_reached_the_upstream(&gw, &up).await;
}

// ---------------------------------------------------------------------------------------------
// Request bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_invalid_chunk_size_in_a_buffered_body_is_refused_with_400_before_anything_goes_upstream() {
    let (gw, up) = gateway().await;
    for body in ["ZZZ\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\nZZZ\r\nhello\r\n0\r\n\r\n", "5\r\nhelloXX0\r\n\r\n"] {
        let request = format!("POST /buffered HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        refused(&exchange(&gw, request.as_bytes()).await, 400, "Bad request");
    }
    nothing_else_reached_the_upstream(&gw, &up).await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_gets_no_502_nothing_goes_upstream_and_499_is_logged() {
    let (gw, up) = gateway().await;
    let mut stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    stream.write_all(b"POST /buffered HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc").await.expect("write");
    stream.shutdown().await.expect("shutdown the write side");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    // There is no one to answer: nginx closes without a word, and so does the gateway.
    assert!(received.is_empty(), "the gateway answered:\n{}", lossy(&received));
    nothing_else_reached_the_upstream(&gw, &up).await;
    let logs = gw.logs();
    let line = logs.lines().find(|l| l.contains("status=499")).unwrap_or_else(|| panic!("no 499 logged:\n{logs}"));
    assert!(line.contains("POST") && line.contains("/buffered"), "{line}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_of_a_streamed_request_closes_its_upstream_connection() {
    let (gw, up) = gateway().await;
    let mut stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    stream.write_all(b"POST /streamed HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc").await.expect("write");
    // Streamed: the head and the first bytes go upstream before the body is complete.
    let streamed = |conns: &[Recorded]| conns.iter().any(|c| c.bytes.ends_with(b"\r\n\r\nabc"));
    up.wait_until(Duration::from_secs(10), streamed).await;
    stream.shutdown().await.expect("shutdown the write side");
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    assert!(received.is_empty(), "the gateway answered:\n{}", lossy(&received));
    let carried = |conns: &[Recorded]| conns.iter().any(|c| c.closed && lossy(&c.bytes).contains("POST /streamed"));
    up.wait_until(Duration::from_secs(10), carried).await;
    let before = up.connections().len();
    assert_eq!(gw.call("/marker/next", &[]).await.status(), 200);
    assert_eq!(up.connections().len(), before + 1, "the next request went on a new upstream connection");
    assert!(gw.logs().contains("status=499"), "no 499 logged:\n{}", gw.logs());
}

/// Sends a chunked request whose `good` part is valid and arrives first; once the upstream has
/// received `upstream_sees` bytes of it, sends `ZZZ`, an invalid chunk size. Checks that the
/// upstream connection that carried the request was closed without the request whole, and returns
/// what the client received.
async fn invalid_chunk_after_streaming(
    gw: &Gateway,
    up: &RecordingUpstream,
    path: &str,
    good: Vec<u8>,
    upstream_sees: usize,
) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(&good).await.expect("write body");
    let line = format!("POST {path} HTTP/1.1");
    let since =
        |c: &Recorded| c.bytes.windows(line.len()).position(|w| w == line.as_bytes()).map(|at| c.bytes.len() - at);
    let streamed = |conns: &[Recorded]| conns.iter().any(|c| since(c) >= Some(upstream_sees));
    up.wait_until(Duration::from_secs(20), streamed).await;
    stream.write_all(b"ZZZ\r\n").await.expect("write the invalid chunk");
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    let closed = |conns: &[Recorded]| conns.iter().any(|c| c.closed && since(c).is_some());
    up.wait_until(Duration::from_secs(10), closed).await;
    let carried = up.connections().into_iter().find(|c| since(c).is_some()).expect("carried");
    assert!(!lossy(&carried.bytes).contains("ZZZ"), "the invalid chunk went upstream");
    assert!(!carried.requests().0.contains(&line), "the upstream never received the request whole");
    received
}

#[tokio::test]
async fn an_invalid_chunk_past_the_buffer_limit_aborts_the_upstream_request_and_drops_its_connection() {
    let (gw, up) = gateway().await;
    let piece = vec![b'x'; 64 * 1024];
    let pieces: Vec<&[u8]> = std::iter::repeat_n(piece.as_slice(), BUFFER_LIMIT / piece.len() + 4).collect();
    let mut good = chunked(&pieces);
    good.truncate(good.len() - b"0\r\n\r\n".len());
    let received = invalid_chunk_after_streaming(&gw, &up, "/buffered", good, BUFFER_LIMIT + 64 * 1024).await;
    refused(&received, 400, "Bad request");
    let before = up.connections().len();
    assert_eq!(gw.call("/marker/next", &[]).await.status(), 200);
    assert_eq!(up.connections().len(), before + 1, "the next request went on a new upstream connection");
}

#[tokio::test]
async fn an_invalid_chunk_in_a_streamed_body_aborts_the_upstream_request_and_drops_its_connection() {
    let (gw, up) = gateway().await;
    let good = b"5\r\nhello\r\n".to_vec();
    let received = invalid_chunk_after_streaming(&gw, &up, "/streamed", good, 60).await;
    refused(&received, 400, "Bad request");
    let before = up.connections().len();
    assert_eq!(gw.call("/marker/next", &[]).await.status(), 200);
    assert_eq!(up.connections().len(), before + 1, "the next request went on a new upstream connection");
}

#[tokio::test]
async fn a_buffered_body_is_sent_again_when_a_retry_needs_it_and_a_streamed_one_is_not() {
    let (gw, up) = gateway().await;
    gw.create("/services", json!({"name": "retrying", "url": up.url(""), "retries": 1})).await;
    for (name, buffering) in [("retry-streamed", false), ("retry-buffered", true)] {
        let route = json!({"paths": [format!("/{name}")], "strip_path": false, "request_buffering": buffering});
        gw.create("/services/retrying/routes", route).await;
    }
    let ready = gw.eventually("/retry-buffered/ready", &[], Duration::from_secs(10), |r| r.status() == 200).await;
    assert_eq!(ready.status(), 200, "the routes did not go live");
    // The upstream hangs up on the first try: an idempotent request goes again if its body can.
    let put = |path: &str| gw.http.put(gw.proxy_url(path)).body("the body").send();
    assert_eq!(put("/retry-buffered/hang-up/1").await.expect("put").status(), 200);
    let sent = |line: &str| up.connections().iter().flat_map(|c| c.requests().0).filter(|l| l == line).count();
    assert_eq!(sent("PUT /retry-buffered/hang-up/1 HTTP/1.1"), 2, "sent twice, the body both times");
    assert_eq!(put("/retry-streamed/hang-up/2").await.expect("put").status(), 502);
    assert_eq!(sent("PUT /retry-streamed/hang-up/2 HTTP/1.1"), 1, "a streamed body cannot be sent again");
}

// ---------------------------------------------------------------------------------------------
// Good requests still pass
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn keep_alive_and_pipelined_requests_with_chunked_and_sized_bodies_still_pass() {
    let (gw, up) = gateway().await;
    let mut stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    let mut buf = Vec::new();
    stream.write_all(b"GET /buffered/one HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert_eq!(read_answers(&mut stream, &mut buf, 1).await[0].status, 200);
    let mut two = b"POST /buffered/two HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    two.extend_from_slice(&chunked(&[b"hello", b" world"]));
    stream.write_all(&two).await.expect("write");
    assert_eq!(read_answers(&mut stream, &mut buf, 1).await[0].status, 200);
    // Three at once, bodies of each framing, identical Content-Length values repeated.
    let mut three = b"GET /buffered/three HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    three.extend_from_slice(b"POST /streamed/four HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    three.extend_from_slice(&chunked(&[b"streamed"]));
    three.extend_from_slice(
        b"POST /buffered/five HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    );
    stream.write_all(&three).await.expect("write");
    let all = read_answers(&mut stream, &mut buf, 3).await;
    assert_eq!(all.iter().map(|a| a.status).collect::<Vec<_>>(), [200, 200, 200], "{all:#?}");
    // All on one upstream connection, in order, and framed as sent (a buffered chunked body gets
    // its length, like nginx's).
    let conns = up.connections();
    let carried = conns.iter().find(|c| lossy(&c.bytes).contains("/buffered/one")).expect("carried");
    let (lines, rest) = carried.requests();
    let paths: Vec<&str> =
        lines.iter().filter_map(|l| l.split(' ').nth(1)).filter(|p| !p.starts_with("/marker")).collect();
    assert_eq!(paths, ["/buffered/one", "/buffered/two", "/buffered/three", "/streamed/four", "/buffered/five"]);
    assert_eq!(rest, 0);
    let wire = lossy(&carried.bytes).to_ascii_lowercase();
    let two = &wire[wire.find("post /buffered/two").expect("two")..wire.find("get /buffered/three").expect("three")];
    assert!(
        two.contains("content-length: 11\r\n") && !two.contains("transfer-encoding") && two.ends_with("hello world"),
        "{two}"
    );
    let four = &wire[wire.find("post /streamed/four").expect("four")..wire.find("post /buffered/five").expect("five")];
    assert!(four.contains("transfer-encoding: chunked\r\n") && four.ends_with("8\r\nstreamed\r\n0\r\n\r\n"), "{four}");
    let five = &wire[wire.find("post /buffered/five").expect("five")..];
    assert!(five.matches("content-length: 3\r\n").count() == 1 && five.ends_with("\r\n\r\nabc"), "{five}");
}

#[tokio::test]
async fn a_head_that_arrives_a_byte_at_a_time_still_passes() {
    let (gw, up) = gateway().await;
    let mut stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let request = b"POST /buffered/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    for byte in request {
        stream.write_all(&[*byte]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut buf = Vec::new();
    assert_eq!(read_answers(&mut stream, &mut buf, 1).await[0].status, 200);
    let lines: Vec<String> = up.connections().iter().flat_map(|c| c.requests().0).collect();
    assert!(lines.iter().any(|l| l == "POST /buffered/slow HTTP/1.1"), "{lines:?}");
}

#[tokio::test]
async fn http2_with_prior_knowledge_still_passes() {
    let (gw, up) = gateway().await;
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().expect("h2 client");
    let r = h2.post(gw.proxy_url("/buffered/h2")).body("over h2").send().await.expect("h2 request");
    assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    let r = h2.post(gw.proxy_url("/streamed/h2")).body("streamed over h2").send().await.expect("h2 request");
    assert_eq!((r.version(), r.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    let wire = lossy(&up.received());
    assert!(wire.contains("POST /buffered/h2 HTTP/1.1") && wire.contains("over h2"), "{wire}");
    assert!(wire.contains("POST /streamed/h2 HTTP/1.1") && wire.contains("streamed over h2"), "{wire}");
}

// ---------------------------------------------------------------------------------------------
// The connection between requests
// ---------------------------------------------------------------------------------------------

/// Reads from `stream` until `buf` holds `want` or the gateway closes.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, want: &[u8]) {
    let mut chunk = [0u8; 4096];
    while !buf.windows(want.len()).any(|w| w == want) {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await;
        match read.expect("bytes in time").expect("read") {
            0 => panic!("closed before {:?}; received:\n{}", lossy(want), lossy(buf)),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_that_expects_100_continue_is_invited_to_send_its_body_when_the_proxy_reads_it() {
    let (gw, up) = gateway().await;
    let mut stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    stream
        .write_all(b"PUT /buffered/upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, b"\r\n\r\n").await;
    assert_eq!(lossy(&buf), "HTTP/1.1 100 Continue\r\n\r\n");
    buf.clear();
    stream.write_all(b"hello").await.expect("write");
    assert_eq!(read_answers(&mut stream, &mut buf, 1).await[0].status, 200);
    let wire = lossy(&up.received());
    assert!(wire.contains("PUT /buffered/upload HTTP/1.1") && wire.contains("hello"), "{wire}");
    // The connection carries the next request.
    stream.write_all(b"GET /buffered/next HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert_eq!(read_answers(&mut stream, &mut buf, 1).await[0].status, 200);
}

#[tokio::test]
async fn a_request_answered_without_its_body_is_not_invited_to_send_it_and_its_connection_closes() {
    let (gw, _up) = gateway().await;
    let request = b"PUT /nowhere HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    let stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(request).await.expect("write");
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the gateway kept the connection open; it sent:\n{}", lossy(&received));
    let all = answers(&received);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].status, 404, "{all:#?}");
    assert!(all[0].head.contains("\r\nconnection: close\r\n"), "{all:#?}");
}

#[tokio::test]
async fn an_http_1_0_client_keeps_its_connection_only_when_it_asks() {
    let (gw, _up) = gateway().await;
    let mut stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    let mut buf = Vec::new();
    for n in 0..2 {
        let request = format!("GET /buffered/ten-{n} HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let answer = read_answers(&mut stream, &mut buf, 1).await.remove(0);
        assert_eq!(answer.status, 200);
        assert!(answer.head.to_ascii_lowercase().contains("\r\nconnection: keep-alive\r\n"), "{}", answer.head);
    }
    let received = exchange(&gw, b"GET /buffered/ten HTTP/1.0\r\nHost: x\r\n\r\n").await;
    let all = answers(&received);
    assert_eq!(all.len(), 1, "one answer, then the gateway closes: {all:#?}");
    assert!(all[0].head.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{all:#?}");
}

#[tokio::test]
async fn a_head_request_gets_the_upstreams_length_and_no_body_and_the_connection_goes_on() {
    let (gw, _up) = gateway().await;
    let mut stream = TcpStream::connect(("127.0.0.1", gw.proxy_port)).await.expect("connect");
    let mut buf = Vec::new();
    stream.write_all(b"GET /buffered/size HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let get = read_answers(&mut stream, &mut buf, 1).await.remove(0);
    stream.write_all(b"HEAD /buffered/size HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    read_until(&mut stream, &mut buf, b"\r\n\r\n").await;
    let head = lossy(&buf).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n") && head.ends_with("\r\n\r\n"), "{head}");
    assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", get.body.len())), "{head}");
    buf.clear();
    stream.write_all(b"GET /buffered/after HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert_eq!(read_answers(&mut stream, &mut buf, 1).await[0].status, 200, "no stray body before this answer");
}
