//! The log phase: what one request left behind once its response was sent ([`LogEntry`]), Kong's
//! JSON log serializer (`kong.log.serialize()`, written as the request goes: [`serializer`]), and
//! the bounded queues log sinks drain ([`Queue`]): a sink that cannot keep up loses entries,
//! counted, and never slows proxying.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::identity::Consumer;

pub mod serializer;
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
    /// The length of the route's and service's text, room a log entry keeps for them.
    pub entities_len: usize,
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
        let entities_len = route.get().len() + service.as_ref().map_or(0, |s| s.entity.get().len());
        Subject { route_id, labels_hash: h.finish(), route_label, route, service, entities_len }
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

/// A request's tries in order: nearly always one, which is kept without an allocation.
#[derive(Debug, Clone, Default)]
pub struct Tries {
    first: Option<Try>,
    retries: Vec<Try>,
}

impl Tries {
    pub fn push(&mut self, t: Try) {
        if self.first.is_none() {
            self.first = Some(t);
        } else {
            self.retries.push(t);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Try> {
        self.first.iter().chain(&self.retries)
    }
}

impl FromIterator<Try> for Tries {
    fn from_iter<I: IntoIterator<Item = Try>>(iter: I) -> Tries {
        let mut tries = Tries::default();
        for t in iter {
            tries.push(t);
        }
        tries
    }
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

/// What the log phase sees of one request, after its response was sent: what counters read, and
/// the entry as Kong's serializer writes it when some sink serializes.
/// It borrows what the request holds: handing it to plugins touches no reference count.
#[derive(Debug, Clone)]
pub struct LogEntry<'a> {
    /// The route matched, if any.
    pub subject: Option<&'a Arc<Subject>>,
    pub consumer: Option<&'a Arc<Consumer>>,
    pub request_size: u64,
    pub status: u16,
    /// Bytes sent to the client: the head and the body.
    pub response_size: u64,
    pub source: Source,
    pub latencies: Latencies,
    /// Kong's serializer's text (see [`serializer`]), written only when some log plugin of the
    /// route (or the node's access log) serializes entries: [`super::Plugin::serializes`]. Sinks
    /// copy it (into a batch, or into a queued buffer of its exact size).
    pub text: Option<Vec<u8>>,
}

/// An entry's text with `custom_fields` added at the top level (a dotted name nests, as Kong's
/// `set_serialize_value` does), as a tree of values.
pub fn with_custom_fields(text: &[u8], custom_fields: &Map<String, Value>) -> Value {
    let mut root: Value = serde_json::from_slice(text).unwrap_or(Value::Null);
    if let Some(obj) = root.as_object_mut() {
        for (name, value) in custom_fields {
            set_path(obj, name, value.clone());
        }
    }
    root
}

/// An entry's text, with `custom_fields` if any, appended to `out`. Without custom fields (nearly
/// always) it is copied as written.
pub fn write_entry(text: &[u8], custom_fields: &Map<String, Value>, out: &mut Vec<u8>) {
    if custom_fields.is_empty() {
        out.extend_from_slice(text);
        return;
    }
    let start = out.len();
    if serde_json::to_writer(&mut *out, &with_custom_fields(text, custom_fields)).is_err() {
        out.truncate(start);
    }
}

/// The query arguments (what follows `?`) as Kong's `get_query()` gives them: a name without a
/// value is `true`, a repeated name an array.
fn querystring(query: &str) -> Value {
    let mut out = Map::new();
    for (name, value) in super::request::args(query) {
        let name = name.into_owned();
        let value = value.map_or(Value::Bool(true), |v| Value::String(v.into_owned()));
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

/// Where a log plugin's entries go: a sink's queue, never waiting.
pub trait Sink: std::fmt::Debug + Send + Sync {
    fn push(&self, text: &[u8]);
}

/// A log plugin instance whose phase hands the entry to its sink (file-log's queue, http-log's
/// batches); no sink when it was built only to check a write.
#[derive(Debug)]
pub struct Logger<S> {
    pub sink: Option<S>,
}

impl<S: Sink> super::Plugin for Logger<S> {
    fn accesses(&self) -> bool {
        false
    }

    fn logs(&self) -> bool {
        self.sink.is_some()
    }

    fn serializes(&self) -> bool {
        true
    }

    fn log(&self, entry: &LogEntry<'_>) {
        if let (Some(sink), Some(text)) = (&self.sink, &entry.text) {
            sink.push(text);
        }
    }
}

/// The sending end of a sink's bounded queue: [`Queue::push`] never waits; a full queue drops the
/// entry and counts it.
#[derive(Debug)]
pub struct Queue {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    dropped: &'static AtomicU64,
}

impl Sink for Arc<Queue> {
    fn push(&self, text: &[u8]) {
        Queue::push(self, text);
    }
}

impl Queue {
    /// A queue of at most `capacity` entries, and the receiving end for the sink's task.
    pub fn new(capacity: usize, dropped: &'static AtomicU64) -> (Queue, tokio::sync::mpsc::Receiver<Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (Queue { tx, dropped }, rx)
    }

    /// Queues a copy of an entry's text.
    pub fn push(&self, text: &[u8]) {
        if self.tx.try_send(Bytes::copy_from_slice(text)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::serializer::{Ending, EntryText, RequestPart};
    use super::*;
    use http::{HeaderMap, Method};
    use proptest::prelude::*;
    use serde_json::json;

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", http::HeaderValue::from_static("Basic c2VjcmV0"));
        h.append("x-many", http::HeaderValue::from_static("1"));
        h.append("x-many", http::HeaderValue::from_static("2"));
        h
    }

    /// One request as the proxy sees it, part by part.
    struct Case {
        method: Method,
        uri: String,
        https: bool,
        host: String,
        request: HeaderMap,
        tls: Option<(&'static str, &'static str)>,
        upstream_uri: Option<String>,
        upstream_status: Option<u16>,
        /// `None`: the response's part was never written (the entry is finished without it).
        response: Option<HeaderMap>,
        tries: Tries,
        client_ip: IpAddr,
        subject: Option<Arc<Subject>>,
        consumer: Option<Arc<Consumer>>,
        credential: Option<Uuid>,
        correlation_id: Option<String>,
    }

    const ID: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
    const LATENCIES: Latencies = Latencies { kong: 1, proxy: 2, request: 3, receive: 0 };

    fn case() -> Case {
        Case {
            method: Method::GET,
            uri: "/p?a=1&b&a=2&c=%20x".into(),
            https: false,
            host: "Example.test".into(),
            request: headers(),
            tls: None,
            upstream_uri: Some("/p?a=1&b&a=2&c=%20x".into()),
            upstream_status: Some(200),
            response: Some(HeaderMap::new()),
            tries: [Try { ip: IpAddr::from([127, 0, 0, 1]), port: 9000 }].into_iter().collect(),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            subject: None,
            consumer: None,
            credential: None,
            correlation_id: None,
        }
    }

    impl Case {
        /// The entry written as the proxy writes it: each part when the request reaches it.
        fn written(&self) -> Vec<u8> {
            let mut text = EntryText::begin(&RequestPart {
                id: ID,
                method: &self.method,
                uri: &self.uri,
                query: self.uri.split_once('?').map(|(_, q)| q),
                https: self.https,
                host: &self.host,
                port: 8000,
                headers: &self.request,
                size: 80,
                tls: self.tls,
                room: 0,
            });
            if let Some(uri) = &self.upstream_uri {
                text.upstream_uri(uri);
            }
            if let Some(response) = &self.response {
                text.response(self.upstream_status, 200, response);
            }
            text.finish(&Ending {
                status: 200,
                response_size: 120,
                latencies: LATENCIES,
                tries: &self.tries,
                client_ip: self.client_ip,
                started_at: 1_700_000_000_000,
                source: Source::Service,
                subject: self.subject.as_deref(),
                consumer: self.consumer.as_deref(),
                credential: self.credential,
                correlation_id: self.correlation_id.as_deref(),
            })
        }

        /// Kong's serializer built as a tree of values, field by field, independently of the
        /// writer: what the written text must read back as.
        fn oracle(&self) -> Value {
            let headers = |h: &HeaderMap, redact: bool| {
                let mut out = Map::new();
                for name in h.keys() {
                    let values: Vec<Value> = h
                        .get_all(name)
                        .into_iter()
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
            let scheme = if self.https { "https" } else { "http" };
            let mut request = json!({
                "id": std::str::from_utf8(ID).expect("id"),
                "uri": &self.uri,
                "url": format!("{scheme}://{}:8000{}", self.host.to_ascii_lowercase(), self.uri),
                "querystring": self.uri.split_once('?').map_or(json!({}), |(_, q)| querystring(q)),
                "method": self.method.as_str(),
                "headers": headers(&self.request, true),
                "size": 80,
            });
            if let Some((version, cipher)) = self.tls {
                request["tls"] = json!({"version": version, "cipher": cipher, "client_verify": "NONE"});
            }
            let upstream_status = match (&self.response, self.upstream_status) {
                (Some(_), Some(s)) => s.to_string(),
                _ => String::new(),
            };
            let mut root = json!({
                "request": request,
                "upstream_uri": self.upstream_uri.as_deref().unwrap_or(""),
                "upstream_status": upstream_status,
                "response": {
                    "status": 200,
                    "headers": self.response.as_ref().map_or(json!({}), |h| headers(h, false)),
                    "size": 120,
                },
                "latencies": {"kong": 1, "proxy": 2, "request": 3, "receive": 0},
                "tries": self.tries.iter().map(|t| json!({"ip": t.ip.to_string(), "port": t.port})).collect::<Vec<_>>(),
                "client_ip": self.client_ip.to_string(),
                "started_at": 1_700_000_000_000u64,
                "source": "service",
                "workspace_name": "default",
            });
            if let Some(subject) = &self.subject {
                root["route"] = serde_json::from_str(subject.route.get()).expect("route");
                if let Some(service) = &subject.service {
                    root["service"] = serde_json::from_str(service.entity.get()).expect("service");
                }
            }
            if let Some(c) = &self.consumer {
                root["consumer"] = json!({"id": c.id, "username": c.username, "custom_id": c.custom_id});
            }
            if let Some(credential) = self.credential {
                root["authenticated_entity"] = json!({"id": credential});
            }
            if let Some(cid) = &self.correlation_id {
                root["correlation_id"] = json!(cid);
            }
            root
        }
    }

    #[test]
    fn serializes_as_kong_with_redacted_credentials_and_custom_fields() {
        let custom: Map<String, Value> = serde_json::from_value(json!({"env": "prod", "team.name": "core"})).unwrap();
        let v = with_custom_fields(&case().written(), &custom);
        assert_eq!(v["request"]["headers"]["authorization"], "REDACTED");
        assert_eq!(v["request"]["headers"]["x-many"], json!(["1", "2"]));
        assert_eq!(v["request"]["querystring"], json!({"a": ["1", "2"], "b": true, "c": " x"}));
        assert_eq!(v["request"]["url"], "http://example.test:8000/p?a=1&b&a=2&c=%20x");
        assert_eq!(v["tries"], json!([{"ip": "127.0.0.1", "port": 9000}]));
        assert_eq!(v["latencies"], json!({"kong": 1, "proxy": 2, "request": 3, "receive": 0}));
        assert_eq!((&v["env"], &v["team"]["name"]), (&json!("prod"), &json!("core")));
        assert_eq!(v["upstream_status"], "200");
        assert!(v.get("consumer").is_none() && v.get("route").is_none());
        let mut out = b"[".to_vec();
        write_entry(&case().written(), &custom, &mut out);
        assert_eq!(serde_json::from_slice::<Value>(&out[1..]).expect("JSON"), v);
    }

    #[test]
    fn a_request_answered_before_going_upstream_has_empty_upstream_fields() {
        let mut c = case();
        (c.upstream_uri, c.response, c.tries) = (None, None, Tries::default());
        let v: Value = serde_json::from_slice(&c.written()).expect("JSON");
        assert_eq!((&v["upstream_uri"], &v["upstream_status"]), (&json!(""), &json!("")));
        assert_eq!(v["response"], json!({"status": 200, "headers": {}, "size": 120}));
        assert_eq!(v, c.oracle());
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
        /// Whatever a request carries (odd bytes in its headers, host and URI, repeated and secret
        /// headers, TLS or not, a consumer or not) and however far it went, the written entry is
        /// valid JSON reading back as the tree of values Kong's serializer makes.
        #[test]
        fn the_written_entry_reads_back_as_kong_serializer(
            request in header_map(),
            response in proptest::option::weighted(0.9, header_map()),
            uri in "/[a-z%?&=\"\\\\\u{e9}]{0,30}",
            host in "[a-zA-Z0-9.\"\\\\-]{0,20}",
            upstream_uri in proptest::option::weighted(0.9, "/[a-z\"]{0,10}"),
            upstream_status in proptest::option::of(100u16..600),
            correlation in proptest::option::of("[ -~]{0,20}"),
            (https, tls) in any::<(bool, bool)>(),
            credential in proptest::option::of(any::<u128>()),
            ipv6 in any::<bool>(),
            tries in 0usize..3,
            routed in any::<bool>(),
            username in proptest::option::of("[ -~]{0,12}"),
        ) {
            let mut c = case();
            (c.request, c.response, c.uri, c.host, c.https) = (request, response, uri, host, https);
            (c.upstream_uri, c.upstream_status) = (upstream_uri, upstream_status);
            c.correlation_id = correlation;
            c.tls = tls.then_some(("TLSv1.3", "TLS13_AES_128_GCM_SHA256"));
            c.credential = credential.map(Uuid::from_u128);
            c.client_ip = if ipv6 { "2001:db8::1".parse().expect("ip") } else { IpAddr::from([10, 0, 0, 7]) };
            c.tries = (0..tries).map(|i| Try { ip: IpAddr::from([127, 0, 0, i as u8]), port: 9000 + i as u16 }).collect();
            if routed {
                let raw = |v: Value| Arc::from(RawValue::from_string(v.to_string()).expect("raw"));
                let service = ServiceSubject { id: Uuid::nil(), label: "svc".into(), entity: raw(json!({"name": "svc", "port": 80})) };
                let route = raw(json!({"name": "r\"1", "paths": ["/p"], "service": {"id": Uuid::nil()}}));
                c.subject = Some(Arc::new(Subject::new(Uuid::max(), "r".into(), route, Some(Arc::new(service)))));
                c.consumer = Some(Arc::new(Consumer::new(Uuid::from_u128(7), username.map(Into::into), Some("c\"x".into()))));
            }
            let written: Value = serde_json::from_slice(&c.written()).expect("valid JSON");
            prop_assert_eq!(written, c.oracle());
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        static DROPS: AtomicU64 = AtomicU64::new(0);
        let (q, _rx) = Queue::new(2, &DROPS);
        let text = case().written();
        for _ in 0..5 {
            q.push(&text);
        }
        assert_eq!(DROPS.load(Ordering::Relaxed), 3);
    }
}
