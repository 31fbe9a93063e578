//! Node information and schema endpoints: `GET /`, `GET /status`, `GET /endpoints`,
//! `/plugins/enabled`, `/plugins/schema/{name}`, `/schemas/...`, and `/routes/{r}/service`.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::body::{AdminBody, Encoding};
use super::error::{AdminError, AdminResult};
use super::{AdminState, Endpoint};
use crate::config::KEYS;
use crate::model::{Kind, Mode};
use crate::plugins::REGISTRY;
use crate::snapshot::compile;

/// The Kong release whose Admin API and behaviour Tollgate matches; Kong clients branch on it.
pub const KONG_COMPAT_VERSION: &str = "3.9.0";

pub async fn root(State(s): State<AdminState>) -> AdminResult<Response> {
    let mut available = Map::new();
    for def in REGISTRY {
        available.insert(def.name.into(), json!({"version": def.version, "priority": def.priority}));
    }
    let in_use = s.store.plugin_names(&s.cp()).await?;
    let mut configuration = Map::new();
    for key in KEYS {
        let value = s.settings.raw.get(key.name).cloned().unwrap_or_default();
        let shown = if key.secret && !value.is_empty() { "******".to_string() } else { value };
        configuration.insert(key.name.into(), Value::String(shown));
    }
    Ok(Json(json!({
        "tagline": "Welcome to Tollgate",
        "version": KONG_COMPAT_VERSION,
        "tollgate_version": crate::VERSION,
        "edition": "community",
        "hostname": s.hostname,
        "node_id": s.node_id,
        "lua_version": Value::Null,
        "timers": {"running": 0, "pending": 0},
        "pids": {"master": std::process::id(), "workers": []},
        "plugins": {"available_on_server": available, "enabled_in_cluster": in_use},
        "configuration": configuration,
    }))
    .into_response())
}

pub async fn status(State(s): State<AdminState>) -> Response {
    let t = s.stats.totals();
    let snapshot = s.holder.load_full();
    let mut body = json!({
        "configuration": {"version": snapshot.version, "rejected": &*snapshot.rejected},
        "server": {
            "total_requests": t.requests,
            "connections_active": t.active,
            "connections_accepted": t.accepted,
            "connections_handled": t.accepted,
            "connections_reading": t.reading,
            "connections_writing": t.writing,
            "connections_waiting": t.waiting,
        },
        "memory": {"resident_bytes": resident_bytes()},
    });
    // DB-less: no database to report, the hash of the configuration loaded instead (Kong's).
    if s.store.declarative_only() {
        let hash = s.store.declarative_hash(&s.cp()).await.ok().flatten();
        body["configuration_hash"] = json!(hash.as_deref().unwrap_or(crate::declarative::EMPTY_HASH));
    } else {
        body["database"] = json!({"reachable": s.store.reachable().await});
    }
    Json(body).into_response()
}

/// Resident set size of this process, from /proc.
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    pages * 4096
}

/// `GET /endpoints`: every Kong Admin API path this node serves (collected as the routes were
/// registered).
pub async fn endpoints(list: std::sync::Arc<Vec<String>>) -> Response {
    Json(json!({"data": *list, "next": Value::Null})).into_response()
}

pub async fn enabled_plugins() -> Response {
    let names: Vec<&str> = REGISTRY.iter().map(|d| d.name).collect();
    Json(json!({ "enabled_plugins": names })).into_response()
}

pub async fn plugin_schema(Path(name): Path<String>) -> AdminResult<Response> {
    let def = crate::plugins::find(&name).ok_or_else(|| {
        AdminError::Legacy(axum::http::StatusCode::NOT_FOUND, json!({"message": format!("No plugin named '{name}'")}))
    })?;
    let mut fields = vec![
        json!({"consumer": if def.no_consumer { json!({"type": "foreign", "reference": "consumers", "eq": null}) } else { json!({"type": "foreign", "reference": "consumers"}) }}),
        json!({"protocols": {"type": "set", "required": true, "default": crate::model::typedefs::HTTP_PROTOCOLS, "elements": {"type": "string", "one_of": crate::model::typedefs::HTTP_PROTOCOLS}}}),
    ];
    let mut config = (def.config)().to_kong_json();
    if let Value::Object(m) = &mut config {
        m.insert("type".into(), json!("record"));
        m.insert("required".into(), json!(true));
    }
    fields.push(json!({ "config": config }));
    Ok(Json(json!({ "fields": fields })).into_response())
}

fn kind_named(name: &str) -> Option<Kind> {
    Kind::from_table(name).or(match name {
        "key-auths" | "keyauth" => Some(Kind::KeyAuth),
        _ => None,
    })
}

pub async fn entity_schema(Path(name): Path<String>) -> AdminResult<Response> {
    let kind = kind_named(&name).ok_or_else(|| {
        AdminError::Legacy(axum::http::StatusCode::NOT_FOUND, json!({"message": format!("No entity named '{name}'")}))
    })?;
    Ok(Json(kind.schema().to_kong_json()).into_response())
}

fn validated(kind: Kind, body: AdminBody) -> AdminResult<Response> {
    let mut fields = body.fields;
    if body.encoding == Encoding::Form {
        compile::coerce(kind, &mut fields, None);
    }
    compile::prepare(kind, fields, Mode::Create)?;
    Ok(Json(json!({"message": "schema validation successful"})).into_response())
}

pub async fn validate_entity(Path(name): Path<String>, body: AdminBody) -> AdminResult<Response> {
    let kind = kind_named(&name).ok_or(AdminError::NotFound)?;
    validated(kind, body)
}

pub async fn validate_plugin(body: AdminBody) -> AdminResult<Response> {
    validated(Kind::Plugin, body)
}

/// `/routes/{r}/service`: the route's service, addressed through the route.
pub fn route_service() -> Endpoint {
    owner(Kind::Route, "service", Kind::Service)
}

/// `/{entities}/{id}/{field}`: the entity an entity's foreign key `field` points at (a route's
/// service, a credential's consumer), addressed through it, as Kong generates these paths.
pub fn owner(kind: Kind, field: &'static str, owner: Kind) -> Endpoint {
    async fn owner_of(s: &AdminState, kind: Kind, field: &str, key: &str) -> AdminResult<String> {
        let r = s.store.lookup(&s.cp(), kind, key).await?.ok_or(AdminError::NotFound)?;
        r.get(field).and_then(|v| v.get("id")).and_then(Value::as_str).map(str::to_string).ok_or(AdminError::NotFound)
    }
    Endpoint::item(owner)
        .get(move |State(s): State<AdminState>, Path(k): Path<String>| async move {
            let id = owner_of(&s, kind, field, &k).await?;
            s.read_entity(owner, None, &[id]).await
        })
        .patch(move |State(s): State<AdminState>, Path(k): Path<String>, body: AdminBody| async move {
            let id = owner_of(&s, kind, field, &k).await?;
            s.patch_entity(owner, None, &[id], body).await
        })
        .put(move |State(s): State<AdminState>, Path(k): Path<String>, body: AdminBody| async move {
            let id = owner_of(&s, kind, field, &k).await?;
            s.put_entity(owner, None, &[id], body).await
        })
        .delete(move |State(s): State<AdminState>, Path(k): Path<String>| async move {
            // Kong never deletes the owner through what it owns: 404 without one, 405 with one.
            owner_of(&s, kind, field, &k).await?;
            Err::<Response, _>(AdminError::MethodNotAllowed)
        })
        .status(axum::http::StatusCode::METHOD_NOT_ALLOWED)
}
