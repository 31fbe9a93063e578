//! The proxy's request heads (`proxy::framing::parse`) on arbitrary bytes, fed whole and in arbitrary
//! pieces as a client might send them. Checked: nothing panics; the pieces give what the whole gives
//! (the same request, framing and keep-alive, or the same refusal); a head taken leaves exactly what
//! followed it; what is accepted is a request the proxy can use (a method, a target, headers whose
//! framing agrees with what was judged).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tollgate::proxy::framing::{self, BodyFraming};

/// What parsing one head gave, and how many bytes were left after it.
fn read(wire: &[u8], step: usize) -> (Result<String, String>, usize) {
    let mut buf = BytesMut::new();
    let mut at = 0;
    loop {
        let n = step.min(wire.len() - at);
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        match framing::parse(&mut buf) {
            Ok(Some(head)) => {
                let parts = &head.parts;
                if head.body == BodyFraming::Chunked {
                    assert!(parts.headers.contains_key(http::header::TRANSFER_ENCODING));
                    assert!(!parts.headers.contains_key(http::header::CONTENT_LENGTH));
                }
                if let BodyFraming::Length(n) = head.body {
                    assert!(n > 0 && !parts.headers.contains_key(http::header::TRANSFER_ENCODING));
                }
                let summary = format!(
                    "{} {} {:?} {:?} {:?} keep_alive={} continue={}",
                    parts.method, parts.uri, parts.version, parts.headers, head.body, head.keep_alive, head.expects_continue
                );
                return (Ok(summary), buf.len() + (wire.len() - at));
            }
            Ok(None) if at < wire.len() => {}
            Ok(None) => return (Err("incomplete".into()), 0),
            Err(refusal) => return (Err(format!("{refusal:?}")), 0),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, wire)) = data.split_first() else { return };
    let whole = read(wire, wire.len().max(1));
    let pieces = read(wire, usize::from(control % 16) + 1);
    // A refusal can come sooner in pieces only where the whole head is over the limits, which the
    // pieces reach first.
    if let (Ok(_), _) | (_, Ok(_)) = (&whole.0, &pieces.0) {
        assert_eq!(whole, pieces, "pieces and whole disagree");
    }
});
