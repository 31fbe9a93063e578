//! The log phase: what one request left behind once its response was sent ([`LogEntry`]), Kong's
//! JSON log serializer over it (`kong.log.serialize()`), and the bounded queues log sinks drain
//! ([`Queue`]): a sink that cannot keep up loses entries, counted, and never slows proxying.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::identity::Consumer;
use writer::Json;

mod writer;

/// The route and service a request was routed to, as logs and metrics name them: built when a
/// snapshot is built, shared by every request of the route.
#[derive(Debug)]
pub struct Subject {
    pub route_id: Uuid,
    /// Tells label sets apart: a renamed route (or service) counts in new series, as in Kong, while
    /// a rebuild of the same configuration keeps counting in the same ones.
    pub labels_hash: u64,
    /// Prometheus' `route` label: the route's name, else its id.
    pub route_label: Box<str>,
    /// The route as stored (Kong's serializer logs the whole entity).
    pub route: Arc<RawValue>,
    pub service: Option<Arc<ServiceSubject>>,
}

impl Subject {
    pub fn new(
        route_id: Uuid,
        route_label: Box<str>,
        route: Arc<RawValue>,
        service: Option<Arc<ServiceSubject>>,
    ) -> Subject {
        use std::hash::{BuildHasher, Hasher};
        let mut h = foldhash::fast::FixedState::with_seed(0x6c61_6265_6c73).build_hasher();
        h.write(route_label.as_bytes());
        h.write_u8(0xff);
        h.write(service.as_ref().map_or(&b""[..], |s| s.label.as_bytes()));
        Subject { route_id, labels_hash: h.finish(), route_label, route, service }
    }
}

/// A service as logs and metrics name it.
#[derive(Debug)]
pub struct ServiceSubject {
    pub id: Uuid,
    /// Prometheus' `service` label: the service's name, else its host.
    pub label: Box<str>,
    pub entity: Arc<RawValue>,
}

/// Who answered: the upstream (`service`) or the gateway itself (`kong`), as Kong's
/// `kong.response.get_source()` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Service,
    Kong,
    /// The upstream could not be reached or failed (`error` in Kong).
    Error,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Service => "service",
            Source::Kong => "kong",
            Source::Error => "error",
        }
    }
}

/// One try of an upstream (Kong's `balancer_data.tries`).
#[derive(Debug, Clone)]
pub struct Try {
    pub ip: IpAddr,
    pub port: u16,
}

/// Latencies in milliseconds, as Kong's serializer has them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latencies {
    /// Time spent in the gateway before the upstream was asked, plus after it answered.
    pub kong: u64,
    /// The upstream's time to its response head (`-1` when no upstream was asked).
    pub proxy: i64,
    /// The whole request, first byte in to last byte out.
    pub request: u64,
    /// Time spent reading the upstream's body.
    pub receive: u64,
}

/// What the log phase sees of one request, after its response was sent.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// The request's id (`X-Tollgate-Request-Id`).
    pub id: [u8; 32],
    /// The route matched, if any.
    pub subject: Option<Arc<Subject>>,
    pub consumer: Option<Arc<Consumer>>,
    /// The credential the consumer was identified with.
    pub credential: Option<Uuid>,
    pub client_ip: IpAddr,
    /// When the request came in, in milliseconds since the epoch.
    pub started_at: u64,
    pub method: Method,
    /// The request target as the client sent it (path and query).
    pub uri: Box<str>,
    /// `scheme://host:port`, for Kong's `request.url`.
    pub origin: Box<str>,
    /// This and what follows, up to `tls`, are gathered only when some log plugin serializes
    /// entries (see [`super::Plugin::serializes`]); empty otherwise.
    pub request_headers: Option<HeadersText>,
    pub response_headers: Option<HeadersText>,
    pub request_size: u64,
    pub status: u16,
    /// Bytes sent to the client: the head and the body.
    pub response_size: u64,
    pub source: Source,
    /// The request target sent upstream.
    pub upstream_uri: Option<Box<str>>,
    pub upstream_status: Option<u16>,
    pub tries: Vec<Try>,
    pub latencies: Latencies,
    /// Set by correlation-id.
    pub correlation_id: Option<Box<str>>,
    /// TLS: the protocol version and cipher of the client connection.
    pub tls: Option<(&'static str, &'static str)>,
}

/// A request's entry as its log plugins get it: shared when some plugin of its route keeps entries
/// (they queue the `Arc`), else on the proxy's stack (counters only read it, nothing allocated).
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    Shared(&'a Arc<LogEntry>),
    Local(&'a LogEntry),
}

impl std::ops::Deref for Entry<'_> {
    type Target = LogEntry;

    fn deref(&self) -> &LogEntry {
        match self {
            Entry::Shared(e) => e,
            Entry::Local(e) => e,
        }
    }
}

impl Entry<'_> {
    /// The entry to keep: the shared one, or a copy when the route said no plugin keeps entries.
    pub fn share(&self) -> Arc<LogEntry> {
        match self {
            Entry::Shared(e) => Arc::clone(e),
            Entry::Local(e) => Arc::new((*e).clone()),
        }
    }
}

/// Milliseconds since the epoch.
pub fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl LogEntry {
    /// The id as text.
    pub fn id(&self) -> &str {
        std::str::from_utf8(&self.id).unwrap_or_default()
    }

    /// Kong's log serializer (`kong.log.serialize()`) as a tree of values, with `custom_fields`
    /// added at the top level (a dotted name nests, as Kong's `set_serialize_value` does).
    pub fn serialize(&self, custom_fields: &Map<String, Value>) -> Value {
        let mut text = Vec::new();
        self.write_direct(&mut Json(&mut text));
        let mut root: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        if let Some(obj) = root.as_object_mut() {
            for (name, value) in custom_fields {
                set_path(obj, name, value.clone());
            }
        }
        root
    }

    /// [`LogEntry::serialize`] as JSON text, appended to `out`. Without custom fields (nearly
    /// always) the entry is written straight from its parts, with no tree of values in between:
    /// this runs once per logged request.
    pub fn write_json(&self, custom_fields: &Map<String, Value>, out: &mut Vec<u8>) {
        if custom_fields.is_empty() {
            self.write_direct(&mut Json(out));
            return;
        }
        let start = out.len();
        if serde_json::to_writer(&mut *out, &self.serialize(custom_fields)).is_err() {
            out.truncate(start);
        }
    }

    /// The serializer's shape, field by field, in Kong's order.
    fn write_direct(&self, j: &mut Json<'_>) {
        let headers = |h: &Option<HeadersText>| h.as_ref().map_or(0, |h| h.0.len());
        let entities = self
            .subject
            .as_ref()
            .map_or(0, |s| s.route.get().len() + s.service.as_ref().map_or(0, |sv| sv.entity.get().len()));
        j.0.reserve(
            768 + 2 * self.uri.len() + headers(&self.request_headers) + headers(&self.response_headers) + entities,
        );
        j.raw("{\"request\":{\"id\":");
        j.str(self.id());
        j.raw(",\"uri\":");
        j.str(&self.uri);
        j.raw(",\"url\":");
        j.str_of(&[&self.origin, &self.uri]);
        j.raw(",\"querystring\":");
        if self.uri.contains('?') {
            let start = j.0.len();
            if serde_json::to_writer(&mut *j.0, &querystring(&self.uri)).is_err() {
                j.0.truncate(start);
                j.raw("{}");
            }
        } else {
            j.raw("{}");
        }
        j.raw(",\"method\":");
        j.str(self.method.as_str());
        j.raw(",\"headers\":");
        j.text(self.request_headers.as_ref().map_or(b"{}", |h| &h.0));
        j.raw(",\"size\":");
        j.u64(self.request_size);
        if let Some((version, cipher)) = self.tls {
            j.raw(",\"tls\":{\"version\":");
            j.str(version);
            j.raw(",\"cipher\":");
            j.str(cipher);
            j.raw(",\"client_verify\":\"NONE\"}");
        }
        j.raw("},\"upstream_uri\":");
        j.str(self.upstream_uri.as_deref().unwrap_or(""));
        j.raw(",\"upstream_status\":\"");
        if let Some(status) = self.upstream_status {
            j.u64(u64::from(status));
        }
        j.raw("\",\"response\":{\"status\":");
        j.u64(u64::from(self.status));
        j.raw(",\"headers\":");
        j.text(self.response_headers.as_ref().map_or(b"{}", |h| &h.0));
        j.raw(",\"size\":");
        j.u64(self.response_size);
        let l = &self.latencies;
        j.raw("},\"latencies\":{\"kong\":");
        j.u64(l.kong);
        j.raw(",\"proxy\":");
        j.i64(l.proxy);
        j.raw(",\"request\":");
        j.u64(l.request);
        j.raw(",\"receive\":");
        j.u64(l.receive);
        j.raw("},\"tries\":[");
        for (i, t) in self.tries.iter().enumerate() {
            j.raw(if i == 0 { "{\"ip\":" } else { ",{\"ip\":" });
            j.ip(t.ip);
            j.raw(",\"port\":");
            j.u64(u64::from(t.port));
            j.raw("}");
        }
        j.raw("],\"client_ip\":");
        j.ip(self.client_ip);
        j.raw(",\"started_at\":");
        j.u64(self.started_at);
        j.raw(",\"source\":");
        j.str(self.source.as_str());
        j.raw(",\"workspace_name\":\"default\"");
        if let Some(subject) = &self.subject {
            j.raw(",\"route\":");
            j.raw(subject.route.get());
            if let Some(service) = &subject.service {
                j.raw(",\"service\":");
                j.raw(service.entity.get());
            }
        }
        if let Some(c) = &self.consumer {
            j.raw(",\"consumer\":{\"id\":");
            j.uuid(c.id);
            j.raw(",\"username\":");
            j.opt_str(c.username.as_deref());
            j.raw(",\"custom_id\":");
            j.opt_str(c.custom_id.as_deref());
            j.raw("}");
        }
        if let Some(credential) = self.credential {
            j.raw(",\"authenticated_entity\":{\"id\":");
            j.uuid(credential);
            j.raw("}");
        }
        if let Some(cid) = &self.correlation_id {
            j.raw(",\"correlation_id\":");
            j.str(cid);
        }
        j.raw("}");
    }
}

/// Headers as Kong's serializer shows them, written as a JSON object once, when they are gathered
/// (no copy of the map is kept; each sink copies the text): names in lower case, repeated headers
/// as arrays, the request's `authorization` and `proxy-authorization` redacted.
#[derive(Debug, Clone, Default)]
pub struct HeadersText(pub Vec<u8>);

impl HeadersText {
    pub fn of(headers: &HeaderMap, request: bool) -> HeadersText {
        let mut out = Vec::with_capacity(64 + headers.len() * 48);
        let j = &mut Json(&mut out);
        j.raw("{");
        // A map yields the values of a name one after the other: grouped as they come, with no
        // look-up per name.
        let mut iter = headers.iter().peekable();
        let mut first = true;
        while let Some((name, value)) = iter.next() {
            if !first {
                j.raw(",");
            }
            first = false;
            // A header name is a token in lower case: nothing in it to escape.
            j.raw("\"");
            j.raw(name.as_str());
            j.raw("\":");
            let redacted =
                request && (name == http::header::AUTHORIZATION || name == http::header::PROXY_AUTHORIZATION);
            let repeated = iter.peek().is_some_and(|(next, _)| *next == name);
            if redacted {
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
        j.raw("}");
        HeadersText(out)
    }
}

/// The query arguments as Kong's `get_query()` gives them: a name without a value is `true`,
/// a repeated name an array.
fn querystring(uri: &str) -> Value {
    let mut out = Map::new();
    let Some((_, query)) = uri.split_once('?') else { return Value::Object(out) };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (pair, None),
        };
        let decode =
            |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        let name = decode(name).unwrap_or_default();
        let value = value.and_then(decode).map_or(Value::Bool(true), Value::String);
        match out.get_mut(&name) {
            Some(Value::Array(list)) => list.push(value),
            Some(existing) => *existing = Value::Array(vec![existing.take(), value]),
            None => {
                out.insert(name, value);
            }
        }
    }
    Value::Object(out)
}

/// Sets `name` (dotted: nested) in `obj`, replacing what is there.
fn set_path(obj: &mut Map<String, Value>, name: &str, value: Value) {
    let mut parts = name.split('.').peekable();
    let mut at = obj;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            at.insert(part.to_string(), value);
            return;
        }
        let next = at.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        let Value::Object(inner) = next else { return };
        at = inner;
    }
}

/// Entries a log sink could not take (its queue was full, or it failed for good), by sink kind.
#[derive(Debug, Default)]
pub struct Dropped {
    pub file_log: AtomicU64,
    pub http_log: AtomicU64,
    pub access_log: AtomicU64,
}

/// Every sink's losses, for `/metrics`.
pub fn dropped() -> &'static Dropped {
    static DROPPED: std::sync::OnceLock<Dropped> = std::sync::OnceLock::new();
    DROPPED.get_or_init(Dropped::default)
}

/// A log plugin instance whose phase puts the entry in its sink's queue (file-log, http-log); no
/// queue when it was built only to check a write.
#[derive(Debug)]
pub struct Logger {
    pub queue: Option<Arc<Queue>>,
}

impl super::Plugin for Logger {
    fn accesses(&self) -> bool {
        false
    }

    fn logs(&self) -> bool {
        self.queue.is_some()
    }

    fn serializes(&self) -> bool {
        true
    }

    fn log(&self, entry: &Entry<'_>) {
        if let Some(queue) = &self.queue {
            queue.push(&entry.share());
        }
    }
}

/// The sending end of a sink's bounded queue: [`Queue::push`] never waits; a full queue drops the
/// entry and counts it.
#[derive(Debug)]
pub struct Queue {
    tx: tokio::sync::mpsc::Sender<Arc<LogEntry>>,
    dropped: &'static AtomicU64,
}

impl Queue {
    /// A queue of at most `capacity` entries, and the receiving end for the sink's task.
    pub fn new(capacity: usize, dropped: &'static AtomicU64) -> (Queue, tokio::sync::mpsc::Receiver<Arc<LogEntry>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (Queue { tx, dropped }, rx)
    }

    pub fn push(&self, entry: &Arc<LogEntry>) {
        if self.tx.try_send(entry.clone()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", http::HeaderValue::from_static("Basic c2VjcmV0"));
        h.append("x-many", http::HeaderValue::from_static("1"));
        h.append("x-many", http::HeaderValue::from_static("2"));
        h
    }

    fn entry() -> LogEntry {
        LogEntry {
            id: *b"0123456789abcdef0123456789abcdef",
            subject: None,
            consumer: None,
            credential: None,
            client_ip: IpAddr::from([127, 0, 0, 1]),
            started_at: 1_700_000_000_000,
            method: Method::GET,
            uri: "/p?a=1&b&a=2&c=%20x".into(),
            origin: "http://example.test:8000".into(),
            request_headers: Some(HeadersText::of(&headers(), true)),
            response_headers: None,
            request_size: 80,
            status: 200,
            response_size: 120,
            source: Source::Service,
            upstream_uri: Some("/p?a=1&b&a=2&c=%20x".into()),
            upstream_status: Some(200),
            tries: vec![Try { ip: IpAddr::from([127, 0, 0, 1]), port: 9000 }],
            latencies: Latencies { kong: 1, proxy: 2, request: 3, receive: 0 },
            correlation_id: None,
            tls: None,
        }
    }

    /// Kong's serializer built as a tree of values, field by field, independently of the writer:
    /// what the written text must read back as.
    fn oracle(e: &LogEntry, request: Option<&HeaderMap>, response: Option<&HeaderMap>) -> Value {
        let headers = |h: Option<&HeaderMap>, redact: bool| {
            let mut out = Map::new();
            for name in h.into_iter().flat_map(HeaderMap::keys) {
                let values: Vec<Value> = h
                    .into_iter()
                    .flat_map(|h| h.get_all(name))
                    .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                let secret = name == http::header::AUTHORIZATION || name == http::header::PROXY_AUTHORIZATION;
                let value = match values.len() {
                    _ if redact && secret => json!("REDACTED"),
                    1 => values[0].clone(),
                    _ => Value::Array(values),
                };
                out.insert(name.as_str().to_string(), value);
            }
            Value::Object(out)
        };
        let mut request = json!({
            "id": e.id(),
            "uri": &*e.uri,
            "url": format!("{}{}", e.origin, e.uri),
            "querystring": querystring(&e.uri),
            "method": e.method.as_str(),
            "headers": headers(request, true),
            "size": e.request_size,
        });
        if let Some((version, cipher)) = e.tls {
            request["tls"] = json!({"version": version, "cipher": cipher, "client_verify": "NONE"});
        }
        let mut root = json!({
            "request": request,
            "upstream_uri": e.upstream_uri.as_deref().unwrap_or(""),
            "upstream_status": e.upstream_status.map_or(String::new(), |s| s.to_string()),
            "response": {"status": e.status, "headers": headers(response, false), "size": e.response_size},
            "latencies": {
                "kong": e.latencies.kong, "proxy": e.latencies.proxy,
                "request": e.latencies.request, "receive": e.latencies.receive,
            },
            "tries": e.tries.iter().map(|t| json!({"ip": t.ip.to_string(), "port": t.port})).collect::<Vec<_>>(),
            "client_ip": e.client_ip.to_string(),
            "started_at": e.started_at,
            "source": e.source.as_str(),
            "workspace_name": "default",
        });
        if let Some(subject) = &e.subject {
            root["route"] = serde_json::from_str(subject.route.get()).expect("route");
            if let Some(service) = &subject.service {
                root["service"] = serde_json::from_str(service.entity.get()).expect("service");
            }
        }
        if let Some(c) = &e.consumer {
            root["consumer"] = json!({"id": c.id, "username": c.username, "custom_id": c.custom_id});
        }
        if let Some(credential) = e.credential {
            root["authenticated_entity"] = json!({"id": credential});
        }
        if let Some(cid) = &e.correlation_id {
            root["correlation_id"] = json!(cid);
        }
        root
    }

    #[test]
    fn serializes_as_kong_with_redacted_credentials_and_custom_fields() {
        let custom: Map<String, Value> = serde_json::from_value(json!({"env": "prod", "team.name": "core"})).unwrap();
        let v = entry().serialize(&custom);
        assert_eq!(v["request"]["headers"]["authorization"], "REDACTED");
        assert_eq!(v["request"]["headers"]["x-many"], json!(["1", "2"]));
        assert_eq!(v["request"]["querystring"], json!({"a": ["1", "2"], "b": true, "c": " x"}));
        assert_eq!(v["request"]["url"], "http://example.test:8000/p?a=1&b&a=2&c=%20x");
        assert_eq!(v["tries"], json!([{"ip": "127.0.0.1", "port": 9000}]));
        assert_eq!(v["latencies"], json!({"kong": 1, "proxy": 2, "request": 3, "receive": 0}));
        assert_eq!((&v["env"], &v["team"]["name"]), (&json!("prod"), &json!("core")));
        assert_eq!(v["upstream_status"], "200");
        assert!(v.get("consumer").is_none() && v.get("route").is_none());
    }

    fn header_value() -> impl Strategy<Value = http::HeaderValue> {
        // Any bytes a header value may hold: visible ASCII, tabs, quotes, backslashes, obs-text.
        proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..40)
            .prop_filter_map("a header value", |b| http::HeaderValue::from_bytes(&b).ok())
    }

    fn header_map() -> impl Strategy<Value = HeaderMap> {
        let name = prop_oneof![
            Just("authorization"),
            Just("proxy-authorization"),
            Just("x-many"),
            Just("apikey"),
            Just("content-type"),
            Just("x-\"odd\""),
        ];
        proptest::collection::vec((name, header_value()), 0..8).prop_map(|pairs| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                    h.append(name, value);
                }
            }
            h
        })
    }

    proptest! {
        /// Whatever a request carries (odd bytes in its headers and URI, repeated and secret
        /// headers, TLS or not, a consumer or not), the written entry is valid JSON reading back as
        /// the tree of values Kong's serializer makes.
        #[test]
        fn the_written_entry_reads_back_as_kong_serializer(
            request in header_map(),
            response in header_map(),
            uri in "/[a-z%?&=\"\\\\\u{e9}]{0,30}",
            correlation in proptest::option::of("[ -~]{0,20}"),
            tls in any::<bool>(),
            credential in proptest::option::of(any::<u128>()),
            ipv6 in any::<bool>(),
            tries in 0usize..3,
            routed in any::<bool>(),
            username in proptest::option::of("[ -~]{0,12}"),
        ) {
            let mut e = entry();
            e.request_headers = Some(HeadersText::of(&request, true));
            e.response_headers = Some(HeadersText::of(&response, false));
            e.uri = uri.as_str().into();
            e.correlation_id = correlation.map(Into::into);
            e.tls = tls.then_some(("TLSv1.3", "TLS13_AES_128_GCM_SHA256"));
            e.credential = credential.map(Uuid::from_u128);
            e.client_ip = if ipv6 { "2001:db8::1".parse().expect("ip") } else { IpAddr::from([10, 0, 0, 7]) };
            e.tries = (0..tries).map(|i| Try { ip: IpAddr::from([127, 0, 0, i as u8]), port: 9000 + i as u16 }).collect();
            if routed {
                let raw = |v: Value| Arc::from(RawValue::from_string(v.to_string()).expect("raw"));
                let service = ServiceSubject { id: Uuid::nil(), label: "svc".into(), entity: raw(json!({"name": "svc", "port": 80})) };
                let route = raw(json!({"name": "r\"1", "paths": ["/p"], "service": {"id": Uuid::nil()}}));
                e.subject = Some(Arc::new(Subject::new(Uuid::max(), "r".into(), route, Some(Arc::new(service)))));
                e.consumer = Some(Arc::new(Consumer::new(Uuid::from_u128(7), username.map(Into::into), Some("c\"x".into()))));
            }
            let mut out = Vec::new();
            e.write_json(&Map::new(), &mut out);
            let written: Value = serde_json::from_slice(&out).expect("valid JSON");
            prop_assert_eq!(written, oracle(&e, Some(&request), Some(&response)));
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        static DROPS: AtomicU64 = AtomicU64::new(0);
        let (q, _rx) = Queue::new(2, &DROPS);
        let e = Arc::new(entry());
        for _ in 0..5 {
            q.push(&e);
        }
        assert_eq!(DROPS.load(Ordering::Relaxed), 3);
    }
}
