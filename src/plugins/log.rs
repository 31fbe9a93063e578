//! The log phase: what one request left behind once its response was sent ([`LogEntry`]), Kong's
//! JSON log serializer over it (`kong.log.serialize()`), and the bounded queues log sinks drain
//! ([`Queue`]): a sink that cannot keep up loses entries, counted, and never slows proxying.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::identity::Consumer;

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
#[derive(Debug)]
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
    /// Present when some log plugin serializes entries (see [`super::Plugin::logs_headers`]).
    pub request_headers: Option<HeaderMap>,
    pub response_headers: Option<HeaderMap>,
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

/// Milliseconds since the epoch.
pub fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl LogEntry {
    /// The id as text.
    pub fn id(&self) -> &str {
        std::str::from_utf8(&self.id).unwrap_or_default()
    }

    /// Kong's log serializer (`kong.log.serialize()`), with `custom_fields` added at the top
    /// level (a dotted name nests, as Kong's `set_serialize_value` does).
    pub fn serialize(&self, custom_fields: &Map<String, Value>) -> Value {
        let mut request = json!({
            "id": self.id(),
            "uri": &*self.uri,
            "url": format!("{}{}", self.origin, self.uri),
            "querystring": querystring(&self.uri),
            "method": self.method.as_str(),
            "headers": headers_json(self.request_headers.as_ref(), true),
            "size": self.request_size,
        });
        if let (Some((version, cipher)), Some(r)) = (self.tls, request.as_object_mut()) {
            r.insert("tls".into(), json!({"version": version, "cipher": cipher, "client_verify": "NONE"}));
        }
        let mut root = json!({
            "request": request,
            "upstream_uri": self.upstream_uri.as_deref().unwrap_or(""),
            "upstream_status": self.upstream_status.map_or(String::new(), |s| s.to_string()),
            "response": {
                "status": self.status,
                "headers": headers_json(self.response_headers.as_ref(), false),
                "size": self.response_size,
            },
            "latencies": {
                "kong": self.latencies.kong,
                "proxy": self.latencies.proxy,
                "request": self.latencies.request,
                "receive": self.latencies.receive,
            },
            "tries": self.tries.iter().map(|t| json!({"ip": t.ip.to_string(), "port": t.port})).collect::<Vec<_>>(),
            "client_ip": self.client_ip.to_string(),
            "started_at": self.started_at,
            "source": self.source.as_str(),
            "workspace_name": "default",
        });
        let Some(obj) = root.as_object_mut() else { return root };
        if let Some(subject) = &self.subject {
            obj.insert("route".into(), raw(&subject.route));
            if let Some(service) = &subject.service {
                obj.insert("service".into(), raw(&service.entity));
            }
        }
        if let Some(c) = &self.consumer {
            obj.insert(
                "consumer".into(),
                json!({"id": c.id, "username": c.username.as_deref(), "custom_id": c.custom_id.as_deref()}),
            );
        }
        if let Some(credential) = self.credential {
            obj.insert("authenticated_entity".into(), json!({"id": credential}));
        }
        if let Some(cid) = &self.correlation_id {
            obj.insert("correlation_id".into(), Value::String(cid.to_string()));
        }
        for (name, value) in custom_fields {
            set_path(obj, name, value.clone());
        }
        root
    }
}

impl LogEntry {
    /// [`LogEntry::serialize`] as JSON text, appended to `out`. Without custom fields the entry is
    /// written straight from its parts (the stored route and service as they are), with no tree of
    /// values in between: this runs once per logged request.
    pub fn write_json(&self, custom_fields: &Map<String, Value>, out: &mut Vec<u8>) {
        let start = out.len();
        let written = if custom_fields.is_empty() {
            serde_json::to_writer(&mut *out, &Direct(self))
        } else {
            serde_json::to_writer(&mut *out, &self.serialize(custom_fields))
        };
        if written.is_err() {
            out.truncate(start);
        }
    }
}

/// The serializer's shape, written field by field (see [`LogEntry::write_json`]).
struct Direct<'a>(&'a LogEntry);

impl serde::Serialize for Direct<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.0;
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("request", &RequestJson(e))?;
        m.serialize_entry("upstream_uri", e.upstream_uri.as_deref().unwrap_or(""))?;
        let mut status = itoa::Buffer::new();
        m.serialize_entry("upstream_status", e.upstream_status.map_or("", |s| status.format(s)))?;
        m.serialize_entry("response", &ResponseJson(e))?;
        let l = &e.latencies;
        m.serialize_entry(
            "latencies",
            &LatenciesJson { kong: l.kong, proxy: l.proxy, request: l.request, receive: l.receive },
        )?;
        m.serialize_entry("tries", &TriesJson(&e.tries))?;
        m.serialize_entry("client_ip", &e.client_ip)?;
        m.serialize_entry("started_at", &e.started_at)?;
        m.serialize_entry("source", e.source.as_str())?;
        m.serialize_entry("workspace_name", "default")?;
        if let Some(subject) = &e.subject {
            m.serialize_entry("route", &*subject.route)?;
            if let Some(service) = &subject.service {
                m.serialize_entry("service", &*service.entity)?;
            }
        }
        if let Some(c) = &e.consumer {
            m.serialize_entry(
                "consumer",
                &ConsumerJson { id: c.id, username: c.username.as_deref(), custom_id: c.custom_id.as_deref() },
            )?;
        }
        if let Some(credential) = e.credential {
            m.serialize_entry("authenticated_entity", &IdJson { id: credential })?;
        }
        if let Some(cid) = &e.correlation_id {
            m.serialize_entry("correlation_id", &**cid)?;
        }
        m.end()
    }
}

#[derive(serde::Serialize)]
struct LatenciesJson {
    kong: u64,
    proxy: i64,
    request: u64,
    receive: u64,
}

#[derive(serde::Serialize)]
struct ConsumerJson<'a> {
    id: Uuid,
    username: Option<&'a str>,
    custom_id: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct IdJson {
    id: Uuid,
}

struct TriesJson<'a>(&'a [Try]);

impl serde::Serialize for TriesJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let mut seq = ser.serialize_seq(Some(self.0.len()))?;
        for t in self.0 {
            struct One<'b>(&'b Try);
            impl serde::Serialize for One<'_> {
                fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                    let mut m = ser.serialize_map(Some(2))?;
                    m.serialize_entry("ip", &self.0.ip)?;
                    m.serialize_entry("port", &self.0.port)?;
                    m.end()
                }
            }
            seq.serialize_element(&One(t))?;
        }
        seq.end()
    }
}

struct RequestJson<'a>(&'a LogEntry);

impl serde::Serialize for RequestJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.0;
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("id", e.id())?;
        m.serialize_entry("uri", &*e.uri)?;
        m.serialize_entry("url", &format_args!("{}{}", e.origin, e.uri))?;
        m.serialize_entry("querystring", &querystring(&e.uri))?;
        m.serialize_entry("method", e.method.as_str())?;
        m.serialize_entry("headers", &HeadersJson { headers: e.request_headers.as_ref(), request: true })?;
        m.serialize_entry("size", &e.request_size)?;
        if let Some((version, cipher)) = e.tls {
            m.serialize_entry("tls", &TlsJson { version, cipher, client_verify: "NONE" })?;
        }
        m.end()
    }
}

#[derive(serde::Serialize)]
struct TlsJson {
    version: &'static str,
    cipher: &'static str,
    client_verify: &'static str,
}

struct ResponseJson<'a>(&'a LogEntry);

impl serde::Serialize for ResponseJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.0;
        let mut m = ser.serialize_map(Some(3))?;
        m.serialize_entry("status", &e.status)?;
        m.serialize_entry("headers", &HeadersJson { headers: e.response_headers.as_ref(), request: false })?;
        m.serialize_entry("size", &e.response_size)?;
        m.end()
    }
}

/// Headers as [`headers_json`] shapes them, written without building it.
struct HeadersJson<'a> {
    headers: Option<&'a HeaderMap>,
    request: bool,
}

impl serde::Serialize for HeadersJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let mut m = ser.serialize_map(None)?;
        let Some(headers) = self.headers else { return m.end() };
        struct Values<'b>(&'b [&'b http::HeaderValue]);
        impl serde::Serialize for Values<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let mut seq = ser.serialize_seq(Some(self.0.len()))?;
                for v in self.0 {
                    seq.serialize_element(&text(v))?;
                }
                seq.end()
            }
        }
        // A map yields the values of a name one after the other: grouped as they come, with no
        // look-up per name.
        let mut iter = headers.iter().peekable();
        let mut more: Vec<&http::HeaderValue> = Vec::new();
        while let Some((name, first)) = iter.next() {
            more.clear();
            while let Some((_, v)) = iter.next_if(|(n, _)| *n == name) {
                more.push(v);
            }
            let redacted =
                self.request && (name == http::header::AUTHORIZATION || name == http::header::PROXY_AUTHORIZATION);
            if redacted {
                m.serialize_entry(name.as_str(), "REDACTED")?;
            } else if more.is_empty() {
                m.serialize_entry(name.as_str(), &text(first))?;
            } else {
                more.insert(0, first);
                m.serialize_entry(name.as_str(), &Values(&more))?;
            }
        }
        m.end()
    }
}

/// A header value as text: as it is when it is UTF-8 (nearly always), else with U+FFFD for what
/// is not.
fn text(v: &http::HeaderValue) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(v.as_bytes()) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(v.as_bytes()),
    }
}

fn raw(v: &RawValue) -> Value {
    serde_json::from_str(v.get()).unwrap_or(Value::Null)
}

/// Header names in lower case; repeated headers as arrays; `authorization` and
/// `proxy-authorization` of the request redacted, as Kong does.
fn headers_json(headers: Option<&HeaderMap>, request: bool) -> Value {
    let mut out = Map::new();
    let Some(headers) = headers else { return Value::Object(out) };
    for name in headers.keys() {
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let redacted = request && (name == http::header::AUTHORIZATION || name == http::header::PROXY_AUTHORIZATION);
        let value = if redacted {
            Value::String("REDACTED".into())
        } else if values.len() == 1 {
            values.into_iter().next().unwrap_or(Value::Null)
        } else {
            Value::Array(values)
        };
        out.insert(name.as_str().to_string(), value);
    }
    Value::Object(out)
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
    fn logs(&self) -> bool {
        self.queue.is_some()
    }

    fn logs_headers(&self) -> bool {
        true
    }

    fn log(&self, entry: &Arc<LogEntry>) {
        if let Some(queue) = &self.queue {
            queue.push(entry);
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

    pub(crate) fn entry() -> LogEntry {
        let mut request_headers = HeaderMap::new();
        request_headers.insert("authorization", http::HeaderValue::from_static("Basic c2VjcmV0"));
        request_headers.append("x-many", http::HeaderValue::from_static("1"));
        request_headers.append("x-many", http::HeaderValue::from_static("2"));
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
            request_headers: Some(request_headers),
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

    #[test]
    fn the_direct_writer_writes_what_the_serializer_shows() {
        let mut e = entry();
        e.tls = Some(("TLSv1.3", "TLS13_AES_128_GCM_SHA256"));
        e.correlation_id = Some("c-1".into());
        e.credential = Some(Uuid::nil());
        let mut out = Vec::new();
        e.write_json(&Map::new(), &mut out);
        let direct: Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(direct, e.serialize(&Map::new()));
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
