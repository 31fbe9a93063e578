//! Admin API request bodies: JSON, `application/x-www-form-urlencoded` and `multipart/form-data`,
//! read with a 1 MiB limit and turned into one JSON object. Form keys use Kong's syntax: `a.b=v`
//! nests, `a[]=v` and repeated keys make arrays, `a[1]=v` indexes, `a[k]=v` makes a map. Form values
//! stay strings here; `model::coerce` converts them by schema.

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use super::error::AdminError;
use crate::model::schema::Obj;

/// Largest Admin API body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// Deepest nesting of a body's values (form keys like `a.b.c`, JSON objects and arrays): the
/// model's bound, checked here already so that a deep body is refused before it is walked.
pub use crate::model::schema::{MAX_DEPTH, depth};

/// How the body was encoded: form values need schema coercion, JSON values do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Form,
    Empty,
}

/// A parsed request body.
#[derive(Debug, Clone)]
pub struct AdminBody {
    pub fields: Obj,
    pub encoding: Encoding,
}

impl<S: Send + Sync> FromRequest<S> for AdminBody {
    type Rejection = AdminError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let content_types: Vec<String> =
            req.headers().get_all(CONTENT_TYPE).iter().filter_map(|v| v.to_str().ok().map(str::to_string)).collect();
        if content_types.len() > 1 {
            return Err(AdminError::BadRequest("Multiple Content-Type headers not allowed".into()));
        }
        let content_type = content_types.into_iter().next().unwrap_or_default();
        let bytes = read_limited(req).await?;
        parse(&content_type, bytes).await
    }
}

async fn read_limited(req: Request) -> Result<Bytes, AdminError> {
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(AdminError::TooLarge),
        Err(e) => {
            // axum's own length limit or a broken client stream.
            if e.to_string().contains("length limit") {
                Err(AdminError::TooLarge)
            } else {
                Err(AdminError::BadRequest("Cannot read request body".into()))
            }
        }
    }
}

/// Parses a body of the given content type.
pub async fn parse(content_type: &str, bytes: Bytes) -> Result<AdminBody, AdminError> {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    // An empty JSON body is not JSON (Kong: "Cannot parse JSON body"); other empty bodies carry no fields.
    if bytes.iter().all(u8::is_ascii_whitespace) && !mime.starts_with("multipart/") && mime != "application/json" {
        return Ok(AdminBody { fields: Obj::new(), encoding: Encoding::Empty });
    }
    match mime.as_str() {
        "application/json" => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(fields)) if depth(&fields) <= MAX_DEPTH => {
                Ok(AdminBody { fields, encoding: Encoding::Json })
            }
            Ok(Value::Object(_)) => Err(too_deep()),
            Ok(_) | Err(_) => Err(AdminError::BadJson),
        },
        // Kong refuses a body that says nothing about its type.
        "" => Err(AdminError::UnsupportedMediaType),
        "application/x-www-form-urlencoded" => {
            let pairs: Vec<(String, String)> =
                url::form_urlencoded::parse(&bytes).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
            Ok(AdminBody { fields: nest(pairs)?, encoding: Encoding::Form })
        }
        // Kong (lapis) treats a multipart body it cannot read as no fields at all, so the entity's own
        // schema errors answer ("at least one of these fields must be non-empty: …").
        "multipart/form-data" => {
            let pairs = read_multipart(content_type, bytes).await.unwrap_or_else(|e| {
                tracing::debug!(error = %e, "unreadable multipart body taken as empty, as Kong does");
                Vec::new()
            });
            Ok(AdminBody { fields: nest(pairs)?, encoding: Encoding::Form })
        }
        _ => Err(AdminError::UnsupportedMediaType),
    }
}

/// The name/value pairs of a `multipart/form-data` body, in order.
async fn read_multipart(content_type: &str, bytes: Bytes) -> Result<Vec<(String, String)>, multer::Error> {
    let boundary = multer::parse_boundary(content_type)?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(bytes) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut pairs = Vec::new();
    while let Some(field) = multipart.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        pairs.push((name, field.text().await?));
    }
    Ok(pairs)
}

fn too_deep() -> AdminError {
    AdminError::BadRequest(format!("request body nests deeper than {MAX_DEPTH} levels"))
}

/// Builds the nested object from form pairs; keys nesting deeper than [`MAX_DEPTH`] are refused.
pub fn nest(pairs: Vec<(String, String)>) -> Result<Obj, AdminError> {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        let segments = split_key(&key);
        if segments.is_empty() {
            continue;
        }
        if segments.len() > MAX_DEPTH {
            return Err(too_deep());
        }
        insert(&mut root, &segments, Value::String(value));
    }
    Ok(match root {
        Value::Object(m) => m,
        _ => Obj::new(),
    })
}

/// `config.redis.host` → [config, redis, host]; `paths[]` → [paths, ""]; `headers[x-a]` → [headers, x-a].
fn split_key(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            '[' => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                let mut inner = String::new();
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    inner.push(c);
                }
                out.push(inner);
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn insert(node: &mut Value, segments: &[String], value: Value) {
    let Some((first, rest)) = segments.split_first() else { return };
    if !node.is_object() {
        // A key used both as a value and as a parent: the nested form wins.
        *node = Value::Object(Map::new());
    }
    let Value::Object(map) = node else { return };
    if first.is_empty() {
        // `a[]=v`: append to the array held by the parent; handled by the caller's slot below.
        return;
    }
    if rest.first().is_some_and(String::is_empty) {
        let slot = map.entry(first.clone()).or_insert_with(|| Value::Array(Vec::new()));
        match slot {
            Value::Array(a) => a.push(value),
            other => {
                let prev = std::mem::take(other);
                *other = Value::Array(vec![prev, value]);
            }
        }
        return;
    }
    if rest.is_empty() {
        match map.get_mut(first) {
            Some(Value::Array(a)) => a.push(value),
            Some(existing) if !existing.is_object() => {
                let prev = std::mem::take(existing);
                *existing = Value::Array(vec![prev, value]);
            }
            _ => {
                map.insert(first.clone(), value);
            }
        }
        return;
    }
    let child = map.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
    insert(child, rest, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form(s: &str) -> Value {
        let pairs = url::form_urlencoded::parse(s.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        Value::Object(nest(pairs).expect("shallow keys"))
    }

    #[test]
    fn kong_form_syntax() {
        assert_eq!(
            form("name=key-auth&config.key_names=apikey"),
            json!({"name": "key-auth", "config": {"key_names": "apikey"}})
        );
        assert_eq!(form("hosts[]=a&hosts[]=b"), json!({"hosts": ["a", "b"]}));
        assert_eq!(form("hosts=a&hosts=b"), json!({"hosts": ["a", "b"]}));
        assert_eq!(form("paths[1]=/a&paths[2]=/b"), json!({"paths": {"1": "/a", "2": "/b"}}));
        assert_eq!(form("headers[x-version]=v1"), json!({"headers": {"x-version": "v1"}}));
        assert_eq!(form("service.id=abc"), json!({"service": {"id": "abc"}}));
        assert_eq!(
            form("config.redis.host=h&config.minute=5"),
            json!({"config": {"redis": {"host": "h"}, "minute": "5"}})
        );
    }

    #[tokio::test]
    async fn json_and_errors() {
        let ok =
            parse("application/json; charset=utf-8", Bytes::from_static(br#"{"username":"a"}"#)).await.expect("json");
        assert_eq!(ok.fields["username"], json!("a"));
        assert!(matches!(parse("application/json", Bytes::from_static(b"{nope")).await, Err(AdminError::BadJson)));
        assert!(matches!(parse("application/json", Bytes::from_static(b"[1]")).await, Err(AdminError::BadJson)));
        assert!(matches!(parse("text/plain", Bytes::from_static(b"x")).await, Err(AdminError::UnsupportedMediaType)));
        assert_eq!(parse("", Bytes::new()).await.expect("empty").encoding, Encoding::Empty);
        assert!(matches!(parse("application/json", Bytes::new()).await, Err(AdminError::BadJson)));
    }

    #[tokio::test]
    async fn bodies_that_nest_too_deep_are_refused() {
        let deep_form = format!("{}=1", vec!["a"; 50_000].join("."));
        let err = parse("application/x-www-form-urlencoded", Bytes::from(deep_form)).await.expect_err("too deep");
        assert!(matches!(err, AdminError::BadRequest(_)), "{err:?}");
        let deep_json = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
        let err = parse("application/json", Bytes::from(deep_json)).await.expect_err("too deep");
        assert!(matches!(err, AdminError::BadRequest(_)), "{err:?}");
        let ok = format!("{}=1", vec!["a"; MAX_DEPTH].join("."));
        assert!(parse("application/x-www-form-urlencoded", Bytes::from(ok)).await.is_ok());
    }

    #[tokio::test]
    async fn multipart_fields() {
        let body = "--XX\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nbob\r\n--XX\r\nContent-Disposition: form-data; name=\"tags[]\"\r\n\r\nt1\r\n--XX--\r\n";
        let parsed = parse("multipart/form-data; boundary=XX", Bytes::from(body)).await.expect("multipart");
        assert_eq!(Value::Object(parsed.fields), json!({"username": "bob", "tags": ["t1"]}));
    }
}
