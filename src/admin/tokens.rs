//! `/v1/tokens`: admin tokens minted by an org admin (the secret is shown once), listed without
//! secrets, revoked at once.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AdminState;
use super::problem::{InvalidParameter, Problem, json_object, unknown_properties};
use crate::auth::{self, Role};
use crate::clock::now_secs;
use crate::model::calendar::iso8601;
use crate::store::StoredToken;

fn view(t: &StoredToken) -> Value {
    json!({"id": t.id, "name": t.name, "role": t.role, "created_at": iso8601(t.created_at)})
}

pub async fn list(State(s): State<AdminState>) -> Result<Response, Problem> {
    let tokens = s.store.tokens().await?;
    let data: Vec<Value> = tokens.iter().map(view).collect();
    let total = data.len();
    Ok(Json(json!({"data": data, "meta": {"page": {"number": 1, "size": total.max(1), "total": total}}}))
        .into_response())
}

pub async fn create(State(s): State<AdminState>, body: Bytes) -> Result<Response, Problem> {
    let body = json_object(&body)?;
    let mut invalid = unknown_properties(&body, &["name", "role"]);
    let name = match body.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() && n.len() <= 256 => Some(n.clone()),
        Some(Value::String(_)) => {
            invalid.push(InvalidParameter::new("name", "min_length", "must have 1 to 256 characters"));
            None
        }
        Some(_) => {
            invalid.push(InvalidParameter::new("name", "is_string", "must be a string"));
            None
        }
        None => {
            invalid.push(InvalidParameter::new("name", "required", "is a required field"));
            None
        }
    };
    let role = match body.get("role") {
        Some(Value::String(r)) => Role::parse(r).or_else(|| {
            let choices = json!(Role::NAMES);
            invalid.push(
                InvalidParameter::new("role", "enum", "must be one of org_admin, viewer").with("choices", choices),
            );
            None
        }),
        Some(_) => {
            invalid.push(InvalidParameter::new("role", "is_string", "must be a string"));
            None
        }
        None => {
            invalid.push(InvalidParameter::new("role", "required", "is a required field"));
            None
        }
    };
    let (Some(name), Some(role), true) = (name, role, invalid.is_empty()) else {
        return Err(Problem::invalid(invalid));
    };
    let (token, secret) = mint(name, role);
    s.store.insert_token(&token).await?;
    let mut out = view(&token);
    out["token"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub async fn delete(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Response, Problem> {
    if s.store.delete_token(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found())
    }
}

/// A new token and its secret (shown once; only the hash is kept).
pub fn mint(name: String, role: Role) -> (StoredToken, String) {
    let secret = auth::new_secret();
    let token = StoredToken {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        role: role.as_str().to_string(),
        token_hash: auth::hash(&secret),
        created_at: now_secs(),
    };
    (token, secret)
}
