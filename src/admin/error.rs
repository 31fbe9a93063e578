//! The one mapping from Admin API failures to Kong's response bodies: `{"code","name","message",
//! "fields"}` for entity errors, `{"message": …}` for the rest.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::model::{EntityError, ErrorCode};

/// Everything an Admin API handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Entity(#[from] EntityError),
    #[error("Not found")]
    NotFound,
    /// A 404 that says what was missing.
    #[error("{0}")]
    NotFoundMessage(String),
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("Cannot parse JSON body")]
    BadJson,
    #[error("{0}")]
    BadRequest(String),
    #[error("Unsupported Content-Type")]
    UnsupportedMediaType,
    #[error("Request body too large")]
    TooLarge,
    /// A legacy (0.x) endpoint's field → message body with its status.
    #[error("{1}")]
    Legacy(StatusCode, Value),
    /// A bug caught on the way (a panic): Kong's 500.
    #[error("An unexpected error occurred")]
    Unexpected,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            AdminError::Entity(e) => entity_body(&e),
            AdminError::NotFound => (StatusCode::NOT_FOUND, json!({"message": "Not found"})),
            AdminError::NotFoundMessage(m) => (StatusCode::NOT_FOUND, json!({ "message": m })),
            AdminError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, json!({"message": "Method not allowed"})),
            AdminError::BadJson => (StatusCode::BAD_REQUEST, json!({"message": "Cannot parse JSON body"})),
            AdminError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({ "message": m })),
            AdminError::UnsupportedMediaType => return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response(),
            AdminError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, json!({"message": "Request body too large"})),
            AdminError::Legacy(status, body) => (status, body),
            AdminError::Unexpected => {
                (StatusCode::INTERNAL_SERVER_ERROR, json!({"message": "An unexpected error occurred"}))
            }
        };
        (status, Json(body)).into_response()
    }
}

fn entity_body(e: &EntityError) -> (StatusCode, Value) {
    let code = e.code();
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match code {
        ErrorCode::DatabaseError => (status, json!({"message": "An unexpected error occurred"})),
        _ => {
            let mut body = Map::new();
            body.insert("code".into(), json!(code as i32));
            body.insert("name".into(), json!(code.name()));
            body.insert("message".into(), json!(e.to_string()));
            if let Some((key, fields)) = e.fields() {
                body.insert(key.into(), fields);
            }
            (status, Value::Object(body))
        }
    }
}

pub type AdminResult<T> = Result<T, AdminError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::Violations;

    fn body_of(e: AdminError) -> (StatusCode, Value) {
        match e {
            AdminError::Entity(e) => entity_body(&e),
            _ => (StatusCode::OK, Value::Null),
        }
    }

    #[test]
    fn schema_violation_body() {
        let (status, body) = body_of(EntityError::Schema(Violations::single("name", "required field missing")).into());
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            json!({"code": 2, "name": "schema violation", "message": "schema violation (name: required field missing)", "fields": {"name": "required field missing"}})
        );
    }

    #[test]
    fn unique_violation_body() {
        let (status, body) = body_of(EntityError::unique("username", json!("bob")).into());
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["code"], json!(5));
        assert_eq!(body["fields"], json!({"username": "bob"}));
    }
}
