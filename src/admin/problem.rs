//! The error body of the `/v1` and `/v2` APIs and of refused admin tokens: Konnect's
//! `application/problem+json` (`status`, `title`, `detail`, `instance`, `invalid_parameters`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::auth::AuthError;
use crate::model::{EntityError, ErrorCode};

/// One bad input field.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidParameter {
    pub field: String,
    pub reason: String,
    /// `required`, `unknown_property`, `enum`, `min_length`, `is_string`, …
    pub rule: Option<&'static str>,
    /// Extra members of the item (`choices`, `minimum`, `maximum`).
    pub extra: Option<(&'static str, Value)>,
}

impl InvalidParameter {
    pub fn new(field: impl Into<String>, rule: &'static str, reason: impl Into<String>) -> InvalidParameter {
        InvalidParameter { field: field.into(), reason: reason.into(), rule: Some(rule), extra: None }
    }

    pub fn with(mut self, key: &'static str, value: Value) -> InvalidParameter {
        self.extra = Some((key, value));
        self
    }
}

/// A problem answer.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    pub invalid: Vec<InvalidParameter>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem { status, detail: detail.into(), invalid: Vec::new() }
    }

    pub fn not_found() -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "Not Found")
    }

    /// A 400 listing every bad field.
    pub fn invalid(invalid: Vec<InvalidParameter>) -> Problem {
        let unknown = invalid.iter().any(|p| p.rule == Some("unknown_property"));
        let detail = if unknown { "Request contains unknown property" } else { "Invalid request body" };
        Problem { status: StatusCode::BAD_REQUEST, detail: detail.into(), invalid }
    }

    fn title(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "Bad Request",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "Not Found",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::METHOD_NOT_ALLOWED => "Method Not Allowed",
            StatusCode::PAYLOAD_TOO_LARGE => "Payload Too Large",
            _ => "Internal Server Error",
        }
    }
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Problem {
        let status = match e {
            AuthError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AuthError::Forbidden => StatusCode::FORBIDDEN,
        };
        Problem::new(status, e.to_string())
    }
}

impl From<EntityError> for Problem {
    fn from(e: EntityError) -> Problem {
        match e.code() {
            ErrorCode::UniqueViolation => {
                Problem::new(StatusCode::CONFLICT, "An entity with the same name already exists.")
            }
            ErrorCode::DatabaseError => {
                tracing::error!(error = %e, "store error");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "An unexpected error occurred")
            }
            _ => Problem::new(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let instance = format!("tollgate:trace:{}", rand::random::<u64>());
        let mut body = json!({
            "status": self.status.as_u16(),
            "title": self.title(),
            "instance": instance,
            "detail": self.detail,
        });
        if !self.invalid.is_empty() {
            let items: Vec<Value> = self
                .invalid
                .iter()
                .map(|p| {
                    let mut item = json!({"field": p.field, "reason": p.reason, "rule": p.rule, "source": "body"});
                    if let Some((k, v)) = &p.extra {
                        item[*k] = v.clone();
                    }
                    item
                })
                .collect();
            body["invalid_parameters"] = Value::Array(items);
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

/// Checks a JSON body's members against the allowed ones; every unknown one is listed.
pub fn unknown_properties(body: &serde_json::Map<String, Value>, allowed: &[&str]) -> Vec<InvalidParameter> {
    body.keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| InvalidParameter::new(k.clone(), "unknown_property", format!("property {k} should not exist")))
        .collect()
}

/// A body that must be a JSON object.
pub fn json_object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, Problem> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Problem::invalid(vec![InvalidParameter::new("body", "is_object", "must be a JSON object")])),
        Err(_) => Err(Problem::new(StatusCode::BAD_REQUEST, "Cannot parse JSON body")),
    }
}
