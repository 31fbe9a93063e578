//! `/v2/control-planes`: the control planes this node holds, in Konnect's shape. Each one's
//! configuration is served by the whole Admin API under `/v2/control-planes/{id}/core-entities/`;
//! the `default` one is also what the root Admin API paths address.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AdminState;
use super::problem::{InvalidParameter, Problem, json_object, unknown_properties};
use crate::clock::now_secs;
use crate::model::calendar::iso8601;
use crate::store::{ControlPlaneRow, DEFAULT_CP_ID, DataPlaneToken};

const CLUSTER_TYPES: &[&str] = &[
    "CLUSTER_TYPE_CONTROL_PLANE",
    "CLUSTER_TYPE_K8S_INGRESS_CONTROLLER",
    "CLUSTER_TYPE_CONTROL_PLANE_GROUP",
    "CLUSTER_TYPE_SERVERLESS",
    "CLUSTER_TYPE_KAFKA_NATIVE_EVENT_PROXY",
    "CLUSTER_TYPE_SERVERLESS_V1",
];
const RESERVED_LABEL_PREFIXES: &[&str] = &["kong", "konnect", "mesh", "kic", "_"];

impl AdminState {
    fn control_plane_view(&self, cp: &ControlPlaneRow) -> Value {
        let labels: Value = serde_json::from_str(&cp.labels).unwrap_or_else(|_| json!({}));
        json!({
            "id": cp.id,
            "name": cp.name,
            "description": cp.description,
            "labels": labels,
            "config": {
                "control_plane_endpoint": format!("http://{}", self.settings.cluster_listen),
                "telemetry_endpoint": format!("http://{}", self.settings.cluster_listen),
                "cluster_type": cp.cluster_type,
                "auth_type": "pinned_client_certs",
                "cloud_gateway": false,
                "proxy_urls": [],
            },
            "created_at": iso8601(cp.created_at),
            "updated_at": iso8601(cp.updated_at),
        })
    }
}

/// Validates the members a create or update may carry; returns every problem.
fn check_fields(body: &Map<String, Value>, creating: bool, invalid: &mut Vec<InvalidParameter>) {
    match body.get("name") {
        Some(Value::String(n)) if (1..=256).contains(&n.chars().count()) && !n.trim().is_empty() => {}
        Some(Value::String(_)) => invalid.push(
            InvalidParameter::new("name", "min_length", "must have 1 to 256 characters, not all blank")
                .with("minimum", json!(1)),
        ),
        Some(_) => invalid.push(InvalidParameter::new("name", "is_string", "must be a string")),
        None if creating => invalid.push(InvalidParameter::new("name", "required", "is a required field")),
        None => {}
    }
    match body.get("description") {
        None | Some(Value::Null) => {}
        Some(Value::String(d)) if d.chars().count() <= 2048 => {}
        Some(Value::String(_)) => invalid.push(
            InvalidParameter::new("description", "max_length", "must have at most 2048 characters")
                .with("maximum", json!(2048)),
        ),
        Some(_) => invalid.push(InvalidParameter::new("description", "is_string", "must be a string")),
    }
    if let Some(v) = body.get("cluster_type")
        && !v.as_str().is_some_and(|t| CLUSTER_TYPES.contains(&t))
    {
        invalid.push(
            InvalidParameter::new("cluster_type", "enum", "is not a known cluster type")
                .with("choices", json!(CLUSTER_TYPES)),
        );
    }
    if let Some(v) = body.get("auth_type")
        && !matches!(v.as_str(), Some("pinned_client_certs" | "pki_client_certs"))
    {
        let choices = json!(["pinned_client_certs", "pki_client_certs"]);
        invalid.push(InvalidParameter::new("auth_type", "enum", "is not a known auth type").with("choices", choices));
    }
    if let Some(v) = body.get("cloud_gateway")
        && !v.is_boolean()
    {
        invalid.push(InvalidParameter::new("cloud_gateway", "is_boolean", "must be a boolean"));
    }
    if let Some(v) = body.get("proxy_urls")
        && v.as_array().is_none_or(|a| a.len() > 5)
    {
        invalid.push(
            InvalidParameter::new("proxy_urls", "max_items", "must be an array of at most 5 items")
                .with("maximum", json!(5)),
        );
    }
    match body.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                let key_ok = (1..=63).contains(&k.len())
                    && !RESERVED_LABEL_PREFIXES.iter().any(|p| k.starts_with(p))
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                let value_ok = v.as_str().is_some_and(|s| {
                    (1..=63).contains(&s.len())
                        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
                });
                if !key_ok || !value_ok {
                    invalid.push(InvalidParameter::new(format!("labels.{k}"), "is_label", "is not a valid label"));
                }
            }
        }
        Some(_) => invalid.push(InvalidParameter::new("labels", "is_object", "must be an object")),
    }
}

fn labels_json(body: &Map<String, Value>) -> Option<String> {
    body.get("labels").map(|l| if l.is_null() { "{}".to_string() } else { l.to_string() })
}

pub async fn create(State(s): State<AdminState>, body: Bytes) -> Result<Response, Problem> {
    let body = json_object(&body)?;
    let allowed = ["name", "description", "cluster_type", "auth_type", "cloud_gateway", "proxy_urls", "labels"];
    let mut invalid = unknown_properties(&body, &allowed);
    check_fields(&body, true, &mut invalid);
    if !invalid.is_empty() {
        return Err(Problem::invalid(invalid));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let now = now_secs();
    let cp = ControlPlaneRow {
        cp: id.clone(),
        id,
        name: body.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
        description: body.get("description").and_then(Value::as_str).unwrap_or_default().to_string(),
        cluster_type: body.get("cluster_type").and_then(Value::as_str).unwrap_or(CLUSTER_TYPES[0]).to_string(),
        labels: labels_json(&body).unwrap_or_else(|| "{}".into()),
        created_at: now,
        updated_at: now,
    };
    s.store.put_control_plane(&cp).await.map_err(duplicate_name)?;
    Ok((StatusCode::CREATED, Json(s.control_plane_view(&cp))).into_response())
}

fn duplicate_name(e: crate::model::EntityError) -> Problem {
    match Problem::from(e) {
        p if p.status == StatusCode::CONFLICT => {
            Problem::new(StatusCode::CONFLICT, "Control Plane with provided name already exists.")
        }
        p => p,
    }
}

/// `page[size]` (default 100, 1–1000), `page[number]` (from 1), `filter[name][eq|contains]`.
pub async fn list(State(s): State<AdminState>, RawQuery(query): RawQuery) -> Result<Response, Problem> {
    let params: BTreeMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let mut invalid = Vec::new();
    let number = |key: &str, default: usize, max: usize, invalid: &mut Vec<InvalidParameter>| match params.get(key) {
        None => default,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                invalid.push(
                    InvalidParameter::new(key, "min", format!("must be an integer from 1 to {max}"))
                        .with("minimum", json!(1)),
                );
                default
            }
        },
    };
    let size = number("page[size]", 100, 1000, &mut invalid);
    let page = number("page[number]", 1, usize::MAX, &mut invalid);
    for key in params.keys() {
        if !matches!(key.as_str(), "page[size]" | "page[number]" | "filter[name][eq]" | "filter[name][contains]") {
            invalid.push(InvalidParameter::new(
                key.clone(),
                "unknown_property",
                format!("unknown query parameter {key}"),
            ));
        }
    }
    if !invalid.is_empty() {
        return Err(Problem::invalid(invalid));
    }
    let all: Vec<ControlPlaneRow> = s
        .store
        .control_planes()
        .await?
        .into_iter()
        .filter(|cp| params.get("filter[name][eq]").is_none_or(|n| &cp.name == n))
        .filter(|cp| params.get("filter[name][contains]").is_none_or(|n| cp.name.contains(n.as_str())))
        .collect();
    let total = all.len();
    let data: Vec<Value> =
        all.iter().skip((page - 1).saturating_mul(size)).take(size).map(|cp| s.control_plane_view(cp)).collect();
    Ok(Json(json!({"data": data, "meta": {"page": {"number": page, "size": size, "total": total}}})).into_response())
}

pub async fn read(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Response, Problem> {
    let cp = s.store.control_plane(&id).await?.ok_or_else(Problem::not_found)?;
    Ok(Json(s.control_plane_view(&cp)).into_response())
}

pub async fn update(State(s): State<AdminState>, Path(id): Path<String>, body: Bytes) -> Result<Response, Problem> {
    let body = json_object(&body)?;
    let mut cp = s.store.control_plane(&id).await?.ok_or_else(Problem::not_found)?;
    let mut invalid = unknown_properties(&body, &["name", "description", "auth_type", "proxy_urls", "labels"]);
    check_fields(&body, false, &mut invalid);
    if !invalid.is_empty() {
        return Err(Problem::invalid(invalid));
    }
    if let Some(n) = body.get("name").and_then(Value::as_str) {
        cp.name = n.to_string();
    }
    if let Some(d) = body.get("description") {
        cp.description = d.as_str().unwrap_or_default().to_string();
    }
    if let Some(l) = labels_json(&body) {
        cp.labels = l;
    }
    cp.updated_at = now_secs();
    s.store.put_control_plane(&cp).await.map_err(duplicate_name)?;
    Ok(Json(s.control_plane_view(&cp)).into_response())
}

pub async fn delete(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Response, Problem> {
    if id == DEFAULT_CP_ID {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "The default control plane cannot be deleted."));
    }
    s.store.control_plane(&id).await?.ok_or_else(Problem::not_found)?;
    s.store.delete_control_plane(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v2/control-planes/{id}/data-plane-tokens`: a token data planes of this control plane
/// present; the secret is shown once.
pub async fn create_data_plane_token(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    s.store.control_plane(&id).await?.ok_or_else(Problem::not_found)?;
    let body = if body.is_empty() { Map::new() } else { json_object(&body)? };
    let mut invalid = unknown_properties(&body, &["name"]);
    let name = match body.get("name") {
        None | Some(Value::Null) => "data plane".to_string(),
        Some(Value::String(n)) if (1..=256).contains(&n.chars().count()) => n.clone(),
        Some(_) => {
            invalid.push(InvalidParameter::new("name", "is_string", "must be a string of 1 to 256 characters"));
            String::new()
        }
    };
    if !invalid.is_empty() {
        return Err(Problem::invalid(invalid));
    }
    let secret = crate::auth::new_secret().replacen("tgp_", "tgdp_", 1);
    let token = DataPlaneToken {
        id: uuid::Uuid::new_v4().to_string(),
        control_plane_id: id,
        name,
        token_hash: crate::auth::hash(&secret),
        created_at: now_secs(),
    };
    s.store.insert_data_plane_token(&token).await?;
    let mut view = data_plane_token_view(&token);
    view["token"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

fn data_plane_token_view(t: &DataPlaneToken) -> Value {
    json!({"id": t.id, "name": t.name, "control_plane_id": t.control_plane_id, "created_at": iso8601(t.created_at)})
}

pub async fn list_data_plane_tokens(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Response, Problem> {
    s.store.control_plane(&id).await?.ok_or_else(Problem::not_found)?;
    let tokens = s.store.data_plane_tokens(Some(&id)).await?;
    let data: Vec<Value> = tokens.iter().map(data_plane_token_view).collect();
    let total = data.len();
    Ok(Json(json!({"data": data, "meta": {"page": {"number": 1, "size": total.max(1), "total": total}}}))
        .into_response())
}

/// Revokes a data plane token and drops the links opened with it.
pub async fn delete_data_plane_token(
    State(s): State<AdminState>,
    Path((id, token)): Path<(String, String)>,
) -> Result<Response, Problem> {
    if !s.store.delete_data_plane_token(&id, &token).await? {
        return Err(Problem::not_found());
    }
    if let Some(hub) = &s.hub {
        hub.revoke(&token);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v2/control-planes/{id}/nodes`: the data planes that joined it (Konnect's shape).
pub async fn nodes(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Response, Problem> {
    s.store.control_plane(&id).await?.ok_or_else(Problem::not_found)?;
    let expected = s.hub.as_ref().and_then(|h| h.expected_hash(&id));
    let nodes = s.hub.as_ref().map(|h| h.nodes(&id)).unwrap_or_default();
    let items: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let sync_status = match (&n.rejected, &n.config_hash, &expected) {
                (Some(_), _, _) => "config_rejected",
                (None, Some(h), Some(e)) if h == e => "normal",
                (None, Some(_), Some(_)) => "out_of_sync",
                _ => "unknown",
            };
            json!({
                "id": n.id,
                "type": "tollgate",
                "hostname": n.hostname,
                "version": n.version,
                "config_hash": n.config_hash,
                "last_ping": n.last_ping,
                "created_at": n.created_at,
                "updated_at": n.last_ping,
                "connected": n.connected,
                "sync_status": sync_status,
                "compatibility_status": {"state": if n.rejected.is_some() { "COMPATIBILITY_STATE_INCOMPATIBLE" } else { "COMPATIBILITY_STATE_FULLY_COMPATIBLE" }},
                "rejected_reason": n.rejected,
            })
        })
        .collect();
    let total = items.len();
    Ok(Json(json!({"items": items, "page": {"total_count": total, "next": null}})).into_response())
}

/// `GET /v2/control-planes/{id}/expected-config-hash`.
pub async fn expected_config_hash(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Response, Problem> {
    let cp = s.store.control_plane(&id).await?.ok_or_else(Problem::not_found)?;
    let hash = s.hub.as_ref().and_then(|h| h.expected_hash(&id)).unwrap_or_else(|| "0".repeat(32));
    Ok(Json(json!({"expected_hash": hash, "created_at": iso8601(cp.created_at), "updated_at": iso8601(now_secs())}))
        .into_response())
}
