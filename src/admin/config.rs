//! `GET` and `POST /config`, a DB-less node's whole configuration (`kong/api/routes/config.lua`): the
//! new configuration is read whole, validated whole, written in one transaction and answered once
//! this node's proxy serves it; any error leaves the running configuration as it was. One load at a
//! time (429 while one runs); `check_hash=1` answers 304 when the text is the one loaded; the body
//! may be at most [`CONFIG_MAX`] bytes (413). On a node with a database both answer 400.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::AdminState;

/// The largest configuration `POST /config` takes.
pub const CONFIG_MAX: usize = 64 * 1024 * 1024;
/// How long a loaded configuration may take to reach the proxy before the answer is 504.
const LOAD_WAIT: Duration = Duration::from_secs(60);

fn message(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(json!({ "message": text }))).into_response()
}

fn db_mode() -> Response {
    message(StatusCode::BAD_REQUEST, "this endpoint is only available when Kong is configured to not use a database")
}

/// `GET /config`: the configuration as a declarative file, in `{"config": "<yaml>"}`.
pub async fn read(State(s): State<AdminState>) -> Response {
    if !s.store.declarative_only() {
        return db_mode();
    }
    let mut tables = Vec::new();
    let cp = s.cp();
    for kind in crate::declarative::export_order() {
        let mut rows = Vec::new();
        let read = s.store.for_each_body(&cp, *kind, |body, _| {
            if let Ok(Value::Object(row)) = serde_json::from_str(body) {
                rows.push(row);
            }
        });
        if let Err(e) = read.await {
            tracing::error!(error = %e, "reading the configuration failed");
            return message(StatusCode::INTERNAL_SERVER_ERROR, "An unexpected error occurred");
        }
        tables.push((*kind, rows));
    }
    axum::Json(json!({ "config": crate::declarative::export(&tables) })).into_response()
}

/// Whether a query flag is on (`flatten_errors`: Kong's truthy words).
fn flag(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `POST /config`.
pub async fn load(State(s): State<AdminState>, req: Request) -> Response {
    if !s.store.declarative_only() {
        return db_mode();
    }
    let query = req.uri().query().map(str::to_string);
    let check_hash = flag(query.as_deref(), "check_hash").is_some_and(|v| v == "1");
    let flatten_errors = flag(query.as_deref(), "flatten_errors")
        .is_some_and(|v| ["true", "1", "on", "yes"].contains(&v.to_ascii_lowercase().as_str()));
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let bytes = match http_body_util::Limited::new(req.into_body(), CONFIG_MAX).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            let limit = CONFIG_MAX / (1024 * 1024);
            return message(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Configuration is larger than the {limit} MiB /config takes"),
            );
        }
    };
    let Some(text) = configuration_text(&content_type, bytes).await else {
        return message(StatusCode::BAD_REQUEST, "expected a declarative configuration");
    };
    let Ok(_loading) = s.config_loading.try_lock() else {
        let mut r = message(StatusCode::TOO_MANY_REQUESTS, "Currently loading previous configuration");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let hash = crate::declarative::hash(&text);
    if check_hash && s.store.declarative_hash(&s.cp()).await.ok().flatten().as_deref() == Some(hash.as_str()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let declared = match crate::declarative::read(&text, None, &crate::plugins::Catalog) {
        Ok(d) => d,
        Err(mut invalid) => {
            let flattened = std::mem::take(&mut invalid.flattened);
            if flatten_errors && let Value::Object(fields) = &mut invalid.fields {
                // Entries' errors go to `flattened_errors`; `fields` keeps what is left.
                fields.retain(|_, v| v.is_string());
            }
            let mut body = json!({
                "code": 14,
                "name": "invalid declarative configuration",
                "message": invalid.message(),
                "fields": invalid.fields,
            });
            if flatten_errors {
                body["flattened_errors"] = Value::Array(flattened);
            }
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
    };
    for warning in &declared.warnings {
        tracing::warn!("{warning}");
    }
    if let Err((kind, id, e)) = s.store.replace_all(&s.cp(), &declared.entities, &hash).await {
        tracing::error!(table = kind.table(), id, error = %e, "loading the configuration failed");
        return message(StatusCode::INTERNAL_SERVER_ERROR, "An unexpected error occurred");
    }
    if !s.holder.wait_for(s.store.committed_version(), LOAD_WAIT).await {
        return message(StatusCode::GATEWAY_TIMEOUT, "Timed out while loading configuration");
    }
    (StatusCode::CREATED, axum::Json(crate::declarative::by_table(&declared))).into_response()
}

/// Where the configuration is in the request (Kong's order): a body that is the file itself (JSON
/// with `_format_version`), else its `config` field (JSON, form or multipart), else the raw text.
async fn configuration_text(content_type: &str, bytes: Bytes) -> Option<String> {
    let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let text = String::from_utf8(bytes.to_vec()).ok()?;
    let raw = text.clone();
    let found = match mime.as_str() {
        "application/json" => match serde_json::from_str::<Value>(&text).ok() {
            Some(Value::Object(m)) if m.contains_key("_format_version") => Some(text),
            Some(Value::Object(m)) => match m.get("config") {
                Some(Value::String(c)) => Some(c.clone()),
                Some(Value::Object(c)) => Some(Value::Object(c.clone()).to_string()),
                _ => None,
            },
            _ => None,
        },
        "application/x-www-form-urlencoded" => {
            url::form_urlencoded::parse(text.as_bytes()).find(|(k, _)| k == "config").map(|(_, v)| v.into_owned())
        }
        "multipart/form-data" => {
            let boundary = multer::parse_boundary(content_type).ok()?;
            let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(Bytes::from(text)) });
            let mut multipart = multer::Multipart::new(stream, boundary);
            let mut config = None;
            while let Ok(Some(field)) = multipart.next_field().await {
                if field.name() == Some("config") {
                    config = field.text().await.ok();
                    break;
                }
            }
            config
        }
        _ => None,
    };
    found.or(Some(raw)).filter(|t| !t.trim().is_empty())
}
