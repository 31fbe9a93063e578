//! Kong's JSON log serializer (`kong.log.serialize()`) written as the request goes: the request's
//! part when it is routed, the response's when its head is known, the rest once it is over. Each
//! part is written once, straight from what the proxy holds (its header maps, its URI), into the
//! one buffer every sink then copies: no header text, URI or map is kept aside for later, and no
//! sink writes the entry again.

use std::cell::RefCell;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Method};
use uuid::Uuid;

use super::writer::Json;
use super::{Latencies, Source, Subject, Tries};
use crate::identity::Consumer;

/// An entry being written. Its parts come in Kong's field order, so the text grows at its end
/// only; a part the request never reached is written empty when the entry is finished.
#[derive(Debug)]
pub struct EntryText {
    buf: Vec<u8>,
    stage: Stage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Request,
    UpstreamUri,
    Response,
}

/// What the request's part holds: the request as the client sent it.
#[derive(Debug)]
pub struct RequestPart<'a> {
    /// The request's id (`X-Tollgate-Request-Id`): hex, nothing to escape.
    pub id: &'a [u8; 32],
    pub method: &'a Method,
    /// The request target as the client sent it (path and query), and its query (parsed already).
    pub uri: &'a str,
    pub query: Option<&'a str>,
    /// Kong's `request.url` is `scheme://host:port` and the target; the host without its port.
    pub https: bool,
    pub host: &'a str,
    pub port: u16,
    pub headers: &'a HeaderMap,
    /// Bytes read: the head and the announced body.
    pub size: u64,
    /// TLS: the protocol version and cipher of the client connection.
    pub tls: Option<(&'static str, &'static str)>,
    /// Room to keep for what comes later (the route and service as stored), so the buffer is
    /// allocated once.
    pub room: usize,
}

/// What the end of the entry holds, known once the response is over.
#[derive(Debug)]
pub struct Ending<'a> {
    /// The status sent, for an entry whose response part was never written.
    pub status: u16,
    /// Bytes sent to the client: the head and the body.
    pub response_size: u64,
    pub latencies: Latencies,
    pub tries: &'a Tries,
    pub client_ip: IpAddr,
    /// When the request came in, in milliseconds since the epoch.
    pub started_at: u64,
    pub source: Source,
    pub subject: Option<&'a Subject>,
    pub consumer: Option<&'a Consumer>,
    /// The credential the consumer was identified with.
    pub credential: Option<Uuid>,
    /// Set by correlation-id.
    pub correlation_id: Option<&'a str>,
}

thread_local! {
    /// Entry buffers whose entries went to their sinks, for the next entries of this thread: an
    /// entry's buffer (a few kilobytes) is then not allocated and freed per request.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Spare buffers a thread keeps, at most (about as many as its requests logged at once)...
const SPARE_BUFFERS: usize = 64;
/// ...and the largest kept: an entry with huge headers does not pin its buffer.
const SPARE_CAPACITY: usize = 64 * 1024;

/// An empty buffer with room for `capacity` bytes: a spare one when the thread has one.
fn buffer(capacity: usize) -> Vec<u8> {
    let spare = SPARE.try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop())).ok().flatten();
    let mut buf = spare.unwrap_or_default();
    buf.reserve(capacity);
    buf
}

/// Gives an entry's buffer back once its sinks have taken their copies.
pub fn recycle(mut buf: Vec<u8>) {
    if buf.capacity() > SPARE_CAPACITY {
        return;
    }
    buf.clear();
    let _ = SPARE.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut()
            && s.len() < SPARE_BUFFERS
        {
            s.push(buf);
        }
    });
}

/// Room for an entry's fixed keys, numbers, addresses and a response's usual headers.
const BASE_ROOM: usize = 1024;
/// Room per request header (name, value and punctuation), about.
const HEADER_ROOM: usize = 48;

impl EntryText {
    /// Starts an entry with the request's part: `{"request":{…}`.
    pub fn begin(r: &RequestPart<'_>) -> EntryText {
        let mut buf = buffer(BASE_ROOM + r.room + 3 * r.uri.len() + r.host.len() + r.headers.len() * HEADER_ROOM);
        let j = &mut Json(&mut buf);
        j.raw("{\"request\":{\"id\":\"");
        j.0.extend_from_slice(r.id);
        j.raw("\",\"uri\":\"");
        // Written once, copied for the URL.
        let uri_start = j.0.len();
        j.str_inner(r.uri);
        let uri = uri_start..j.0.len();
        j.raw(if r.https { "\",\"url\":\"https://" } else { "\",\"url\":\"http://" });
        // nginx's `$host`: lower case.
        if r.host.bytes().any(|b| b.is_ascii_uppercase()) {
            j.str_inner(&r.host.to_ascii_lowercase());
        } else {
            j.str_inner(r.host);
        }
        j.raw(":");
        j.u64(u64::from(r.port));
        j.0.extend_from_within(uri);
        j.raw("\",\"querystring\":");
        match r.query {
            Some(query) => {
                let start = j.0.len();
                if serde_json::to_writer(&mut *j.0, &super::querystring(query)).is_err() {
                    j.0.truncate(start);
                    j.raw("{}");
                }
            }
            None => j.raw("{}"),
        }
        j.raw(",\"method\":");
        // A method is a token: no quote, backslash or control byte in it.
        j.token(r.method.as_str());
        j.raw(",\"headers\":");
        headers(j, r.headers, true);
        j.raw(",\"size\":");
        j.u64(r.size);
        if let Some((version, cipher)) = r.tls {
            j.raw(",\"tls\":{\"version\":");
            j.token(version);
            j.raw(",\"cipher\":");
            j.token(cipher);
            j.raw(",\"client_verify\":\"NONE\"}");
        }
        j.raw("}");
        EntryText { buf, stage: Stage::Request }
    }

    /// The request target sent upstream (once, when it is known).
    pub fn upstream_uri(&mut self, uri: &str) {
        if self.stage != Stage::Request {
            return;
        }
        let j = &mut Json(&mut self.buf);
        j.raw(",\"upstream_uri\":");
        j.str(uri);
        self.stage = Stage::UpstreamUri;
    }

    /// The response's status and head, as sent to the client.
    pub fn response(&mut self, upstream_status: Option<u16>, status: u16, sent: &HeaderMap) {
        if self.stage == Stage::Request {
            self.upstream_uri("");
        }
        if self.stage == Stage::Response {
            return;
        }
        let j = &mut Json(&mut self.buf);
        j.raw(",\"upstream_status\":\"");
        if let Some(status) = upstream_status {
            j.u64(u64::from(status));
        }
        j.raw("\",\"response\":{\"status\":");
        j.u64(u64::from(status));
        j.raw(",\"headers\":");
        headers(j, sent, false);
        self.stage = Stage::Response;
    }

    /// The rest of the entry; the whole text, taken out (the entry is left empty).
    pub fn finish(&mut self, e: &Ending<'_>) -> Vec<u8> {
        if self.stage != Stage::Response {
            self.response(None, e.status, &HeaderMap::new());
        }
        let j = &mut Json(&mut self.buf);
        j.raw(",\"size\":");
        j.u64(e.response_size);
        let l = &e.latencies;
        j.raw("},\"latencies\":{\"kong\":");
        j.u64(l.kong);
        j.raw(",\"proxy\":");
        j.i64(l.proxy);
        j.raw(",\"request\":");
        j.u64(l.request);
        j.raw(",\"receive\":");
        j.u64(l.receive);
        j.raw("},\"tries\":[");
        for (i, t) in e.tries.iter().enumerate() {
            j.raw(if i == 0 { "{\"ip\":" } else { ",{\"ip\":" });
            j.ip(t.ip);
            j.raw(",\"port\":");
            j.u64(u64::from(t.port));
            j.raw("}");
        }
        j.raw("],\"client_ip\":");
        j.ip(e.client_ip);
        j.raw(",\"started_at\":");
        j.u64(e.started_at);
        j.raw(",\"source\":");
        j.token(e.source.as_str());
        j.raw(",\"workspace_name\":\"default\"");
        if let Some(subject) = e.subject {
            j.raw(",\"route\":");
            j.raw(subject.route.get());
            if let Some(service) = &subject.service {
                j.raw(",\"service\":");
                j.raw(service.entity.get());
            }
        }
        if let Some(c) = e.consumer {
            j.raw(",\"consumer\":");
            j.raw(c.log_text());
        }
        if let Some(credential) = e.credential {
            j.raw(",\"authenticated_entity\":{\"id\":");
            j.uuid(credential);
            j.raw("}");
        }
        if let Some(cid) = e.correlation_id {
            j.raw(",\"correlation_id\":");
            j.str(cid);
        }
        j.raw("}");
        std::mem::take(&mut self.buf)
    }
}

/// Headers as Kong's serializer shows them: names in lower case, repeated headers as arrays, the
/// request's `authorization` and `proxy-authorization` redacted.
fn headers(j: &mut Json<'_>, headers: &HeaderMap, request: bool) {
    let secret = |name: &HeaderName| {
        request && (name == http::header::AUTHORIZATION || name == http::header::PROXY_AUTHORIZATION)
    };
    j.0.reserve(2 + headers.len() * HEADER_ROOM);
    if headers.keys_len() == headers.len() {
        // No name repeats (nearly always): one value per name, no looking ahead. A header name is
        // a token in lower case: nothing in it to escape.
        let mut sep = b'{';
        for (name, value) in headers {
            j.0.extend_from_slice(&[sep, b'"']);
            sep = b',';
            j.raw(name.as_str());
            let value = value.as_bytes();
            if secret(name) {
                j.raw("\":\"REDACTED\"");
            } else if Json::plain(value) {
                j.raw("\":\"");
                j.0.extend_from_slice(value);
                j.0.push(b'"');
            } else {
                j.raw("\":");
                j.lossy(value);
            }
        }
        if sep == b'{' {
            j.0.push(b'{');
        }
        j.0.push(b'}');
        return;
    }
    // A map yields the values of a name one after the other: grouped as they come.
    j.0.push(b'{');
    let mut iter = headers.iter().peekable();
    let mut first = true;
    while let Some((name, value)) = iter.next() {
        if !first {
            j.0.push(b',');
        }
        first = false;
        j.0.push(b'"');
        j.raw(name.as_str());
        j.raw("\":");
        let repeated = iter.peek().is_some_and(|(next, _)| *next == name);
        if secret(name) {
            j.raw("\"REDACTED\"");
            while iter.next_if(|(n, _)| *n == name).is_some() {}
        } else if !repeated {
            j.lossy(value.as_bytes());
        } else {
            j.raw("[");
            j.lossy(value.as_bytes());
            while let Some((_, v)) = iter.next_if(|(n, _)| *n == name) {
                j.raw(",");
                j.lossy(v.as_bytes());
            }
            j.raw("]");
        }
    }
    j.0.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_buffer_is_reused_by_the_next_entry_and_a_huge_one_is_let_go() {
        let mut used = buffer(3000);
        used.extend_from_slice(b"an entry");
        let at = used.as_ptr();
        recycle(used);
        let next = buffer(100);
        assert!(next.is_empty() && next.capacity() >= 3000 && next.as_ptr() == at);
        let kept = next.as_ptr();
        recycle(next);
        recycle(Vec::with_capacity(SPARE_CAPACITY + 1));
        let after = buffer(10);
        assert_eq!(after.as_ptr(), kept, "the huge buffer was not kept");
    }
}
