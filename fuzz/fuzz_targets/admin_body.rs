//! Admin API bodies (`admin::body::parse`) of any content type and content, then what the Admin
//! API does with a parsed body: form values coerced by schema (`compile::coerce`) and the write
//! judged (`compile::prepare`) for one entity kind. Checked: nothing panics or hangs; a parsed
//! body nests at most `MAX_DEPTH` levels; an accepted write compiles, also once stored as JSON
//! text. Form pairs also go to `nest` directly.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate::admin::body::{self, Encoding, MAX_DEPTH};
use tollgate::model::schema::Obj;
use tollgate::model::{Kind, Mode};
use tollgate::snapshot::compile;

/// Parsing does no I/O (the body is already read): its future must finish when first polled.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..64 {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("parsing a body in memory did not finish");
}

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=XX",
    "application/json; charset=utf-8",
    "Application/X-WWW-Form-Urlencoded; charset=latin1",
    "multipart/form-data",
    "",
];

fn write(kind: Kind, mut fields: Obj, form: bool) {
    if form {
        compile::coerce(kind, &mut fields, None);
    }
    if let Ok(record) = compile::prepare(kind, fields, Mode::Create) {
        assert!(body::depth(&record) <= MAX_DEPTH, "accepted record nests too deep");
        assert!(compile::check(kind, &record).is_ok(), "accepted {kind:?} does not compile: {record:?}");
        let text = Value::Object(record).to_string();
        let stored: Obj = serde_json::from_str(&text).unwrap_or_else(|e| panic!("stored {kind:?} unreadable: {e}"));
        assert!(compile::check(kind, &stored).is_ok(), "stored {kind:?} does not compile: {text}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    // The content type: one of the usual ones, or the input's first line.
    let (content_type, bytes) = match usize::from(control & 7) {
        i if i < CONTENT_TYPES.len() => (CONTENT_TYPES[i].to_string(), rest),
        _ => {
            let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let (line, body) = rest.split_at(end);
            (String::from_utf8_lossy(line).into_owned(), body.get(1..).unwrap_or_default())
        }
    };
    let kind = Kind::ALL[usize::from(control >> 3) % Kind::ALL.len()];
    if let Ok(parsed) = now(body::parse(&content_type, Bytes::copy_from_slice(bytes))) {
        assert!(body::depth(&parsed.fields) <= MAX_DEPTH, "a parsed body nests too deep");
        write(kind, parsed.fields, parsed.encoding == Encoding::Form);
    }
    // Form keys straight into `nest` (`&`-separated `key=value`, undecoded).
    let pairs: Vec<(String, String)> = bytes
        .split(|b| *b == b'&')
        .map(|pair| {
            let text = String::from_utf8_lossy(pair);
            match text.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (text.into_owned(), String::new()),
            }
        })
        .collect();
    if let Ok(fields) = body::nest(pairs) {
        assert!(body::depth(&fields) <= MAX_DEPTH, "nested form keys nest too deep");
    }
});
