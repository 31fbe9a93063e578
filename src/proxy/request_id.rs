//! Each request's id and the gateway's own answers in the client's format (Kong 3.5+): a 32-hex-digit
//! id made per request (a per-worker generator: no lock, no shared counter), sent upstream and back
//! in `X-Tollgate-Request-Id`, and written into the error bodies the gateway makes, whose format
//! follows `Accept` (JSON by default; HTML, XML, plain text) with Kong's templates.

use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

/// A request's id: 32 lower-case hex digits.
#[derive(Clone, Copy)]
pub struct RequestId([u8; 32]);

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

thread_local! {
    /// wyrand's state, seeded per worker from the OS's randomness.
    static STATE: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

fn next() -> u64 {
    STATE.with(|s| {
        let state = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(state);
        let t = u128::from(state).wrapping_mul(u128::from(state ^ 0xe703_7ed1_a0b4_28db));
        ((t >> 64) ^ t) as u64
    })
}

impl RequestId {
    pub fn new() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (half, word) in [next(), next()].into_iter().enumerate() {
            for i in 0..16 {
                out[half * 16 + i] = HEX[((word >> (60 - 4 * i)) & 0xf) as usize];
            }
        }
        RequestId(out)
    }

    pub fn as_str(&self) -> &str {
        // Hex digits only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).unwrap_or(HeaderValue::from_static("0"))
    }
}

impl Default for RequestId {
    fn default() -> RequestId {
        RequestId::new()
    }
}

/// The message of an answer the gateway made itself (`{"message": …}`), kept on the response
/// until its body is written in the client's format.
#[derive(Debug, Clone)]
pub struct GatewayMessage(pub Arc<str>);

/// The formats of Kong's error templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Html,
    Xml,
    Text,
}

impl Format {
    /// The first media range of `Accept` Kong has a template for (parameters and weights aside, as
    /// Kong reads it); JSON when none.
    pub fn of_accept(accept: Option<&HeaderValue>) -> Format {
        let Some(accept) = accept.and_then(|v| v.to_str().ok()) else { return Format::Json };
        // Read on every request: compared in place, nothing allocated.
        const KNOWN: [(&str, Format); 8] = [
            ("application/json", Format::Json),
            ("application/*", Format::Json),
            ("*/*", Format::Json),
            ("text/html", Format::Html),
            ("application/xml", Format::Xml),
            ("text/xml", Format::Xml),
            ("text/plain", Format::Text),
            ("text/*", Format::Text),
        ];
        for range in accept.split(',') {
            let mime = range.split(';').next().unwrap_or_default().trim();
            if let Some((_, format)) = KNOWN.iter().find(|(name, _)| name.eq_ignore_ascii_case(mime)) {
                return *format;
            }
        }
        Format::Json
    }

    pub fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Format::Json => "application/json; charset=utf-8",
            Format::Html => "text/html; charset=utf-8",
            Format::Xml => "application/xml; charset=utf-8",
            Format::Text => "text/plain; charset=utf-8",
        })
    }

    /// Kong's template for `message` and `id`.
    pub fn body(self, message: &str, id: &RequestId) -> Bytes {
        let id = id.as_str();
        Bytes::from(match self {
            Format::Json => {
                let quoted = serde_json::Value::String(message.to_string()).to_string();
                let inner = &quoted[1..quoted.len() - 1];
                format!("{{\n  \"message\":\"{inner}\",\n  \"request_id\":\"{id}\"\n}}")
            }
            Format::Html => format!(
                "<!doctype html>\n<html>\n  <head>\n    <meta charset=\"utf-8\">\n    <title>Error</title>\n  </head>\n  <body>\n    <h1>Error</h1>\n    <p>{}.</p>\n    <p>request_id: {id}</p>\n  </body>\n</html>\n",
                escape(message)
            ),
            Format::Xml => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <message>{}</message>\n  <requestid>{id}</requestid>\n</error>\n",
                escape(message)
            ),
            Format::Text => format!("{message}\nrequest_id: {id}\n"),
        })
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let (a, b) = (RequestId::new(), RequestId::new());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.as_str(), b.as_str());
    }

    #[test]
    fn accept_picks_kongs_template() {
        let of = |s: &'static str| Format::of_accept(Some(&HeaderValue::from_static(s)));
        assert_eq!(Format::of_accept(None), Format::Json);
        assert_eq!(of("text/html,application/xhtml+xml;q=0.9"), Format::Html);
        assert_eq!(of("application/xml"), Format::Xml);
        assert_eq!(of("text/plain; q=0.5"), Format::Text);
        assert_eq!(of("image/png, */*"), Format::Json);
        let id = RequestId(*b"0123456789abcdef0123456789abcdef");
        assert_eq!(
            &Format::Json.body("No \"key\"", &id)[..],
            b"{\n  \"message\":\"No \\\"key\\\"\",\n  \"request_id\":\"0123456789abcdef0123456789abcdef\"\n}"
        );
        assert_eq!(
            &Format::Text.body("Unauthorized", &id)[..],
            b"Unauthorized\nrequest_id: 0123456789abcdef0123456789abcdef\n"
        );
        assert!(std::str::from_utf8(&Format::Html.body("a<b", &id)).is_ok_and(|h| h.contains("<p>a&lt;b.</p>")));
    }
}
