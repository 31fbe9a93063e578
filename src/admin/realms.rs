//! `/v1/realms`: Konnect's consumers API v1 — realms, realm consumers and their keys, with cursor
//! pagination (`page[size]`, `page[after]`, `page[before]`), `filter[username]` and
//! `filter[custom_id]`, and problem+json errors listing every bad field. Key secrets are returned
//! once, on creation, and kept only as hashes.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::AdminState;
use super::problem::{InvalidParameter, Problem, json_object, unknown_properties};
use crate::clock::now_secs;
use crate::model::calendar::iso8601;
use crate::model::schema::is_uuid;
use crate::snapshot::compile;
use crate::store::{Cursor, RealmRow, RealmTable};

const CONSUMER_TYPES: &[&str] = &["proxy", "developer", "admin", "application"];
const DEFAULT_TTL_MINUTES: i64 = 10;
const MIN_TTL_MINUTES: i64 = 5;
/// The longest a realm lets data planes cache (a day; Konnect sets no bound, data planes clamp to it).
const MAX_TTL_MINUTES: i64 = 1440;

type Scope = Vec<(&'static str, String)>;

fn parse_body(bytes: &Bytes) -> Result<Map<String, Value>, Problem> {
    json_object(bytes)
}

/// A list of distinct strings (`consumer_groups`, `tags`, `allowed_control_planes`).
fn string_set(body: &Map<String, Value>, field: &str, invalid: &mut Vec<InvalidParameter>) -> Option<Vec<String>> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut out: Vec<String> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) if !s.is_empty() && !out.iter().any(|o| o == s) => out.push(s.to_string()),
                    Some(s) if !s.is_empty() => invalid.push(InvalidParameter::new(
                        format!("{field}[{i}]"),
                        "unique",
                        format!("duplicate value '{s}'"),
                    )),
                    _ => invalid.push(InvalidParameter::new(
                        format!("{field}[{i}]"),
                        "is_string",
                        "must be a non-empty string",
                    )),
                }
            }
            Some(out)
        }
        Some(_) => {
            invalid.push(InvalidParameter::new(field, "is_array", "must be an array of strings"));
            None
        }
    }
}

fn minutes(body: &Map<String, Value>, field: &str, invalid: &mut Vec<InvalidParameter>) -> Option<i64> {
    match body.get(field) {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if (MIN_TTL_MINUTES..=MAX_TTL_MINUTES).contains(&n) => Some(n),
            Some(n) if n < MIN_TTL_MINUTES => {
                invalid.push(
                    InvalidParameter::new(field, "min", format!("must be at least {MIN_TTL_MINUTES} (minutes)"))
                        .with("minimum", json!(MIN_TTL_MINUTES)),
                );
                None
            }
            Some(_) => {
                invalid.push(
                    InvalidParameter::new(field, "max", format!("must be at most {MAX_TTL_MINUTES} (minutes)"))
                        .with("maximum", json!(MAX_TTL_MINUTES)),
                );
                None
            }
            None => {
                invalid.push(InvalidParameter::new(field, "is_integer", "must be an integer number of minutes"));
                None
            }
        },
    }
}

fn nonempty_string(
    body: &Map<String, Value>,
    field: &str,
    required: bool,
    invalid: &mut Vec<InvalidParameter>,
) -> Option<Option<String>> {
    match body.get(field) {
        None if required => {
            invalid.push(InvalidParameter::new(field, "required", "is a required field"));
            None
        }
        None => None,
        Some(Value::Null) if !required => Some(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Some(Some(s.clone())),
        Some(Value::String(_)) => {
            invalid.push(InvalidParameter::new(field, "min_length", "cannot be blank").with("minimum", json!(1)));
            None
        }
        Some(_) => {
            invalid.push(InvalidParameter::new(field, "is_string", "must be a string"));
            None
        }
    }
}

/// Cursor query: `page[size]` (1–1000, default 100), `page[after]`, `page[before]`, plus the
/// filters `allowed` names.
struct PageQuery {
    size: usize,
    cursor: Cursor,
    filters: BTreeMap<String, String>,
}

fn page_query(query: Option<String>, filters: &[&str]) -> Result<PageQuery, Problem> {
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let mut invalid = Vec::new();
    let mut out = PageQuery { size: 100, cursor: Cursor::First, filters: BTreeMap::new() };
    let decode = |token: &str| -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v["id"].as_str().map(str::to_string)
    };
    for (k, v) in params {
        match k.as_str() {
            "page[size]" => match v.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => out.size = n,
                _ => invalid.push(
                    InvalidParameter::new(k, "min", "must be an integer from 1 to 1000").with("minimum", json!(1)),
                ),
            },
            "page[after]" => match decode(&v) {
                Some(id) => out.cursor = Cursor::After(id),
                None => invalid.push(InvalidParameter::new(k, "invalid", "is not a valid cursor")),
            },
            "page[before]" => match decode(&v) {
                Some(id) => out.cursor = Cursor::Before(id),
                None => invalid.push(InvalidParameter::new(k, "invalid", "is not a valid cursor")),
            },
            other => {
                let name = other.strip_suffix("[eq]").unwrap_or(other);
                match name.strip_prefix("filter[").and_then(|f| f.strip_suffix(']')) {
                    Some(f) if filters.contains(&f) => {
                        out.filters.insert(f.to_string(), v);
                    }
                    _ => invalid.push(InvalidParameter::new(
                        k.clone(),
                        "unknown_property",
                        format!("unknown query parameter {k}"),
                    )),
                }
            }
        }
    }
    if invalid.is_empty() { Ok(out) } else { Err(Problem::invalid(invalid)) }
}

fn cursor_token(id: &str) -> String {
    URL_SAFE_NO_PAD.encode(json!({ "id": id }).to_string())
}

/// `{"data": [...], "meta": {"size", "next", "previous"}}` for a page of bodies.
async fn list_page(
    s: &AdminState,
    table: RealmTable,
    scope: &Scope,
    path: &str,
    q: &PageQuery,
    render: fn(Value) -> Value,
) -> Result<Response, Problem> {
    let page = s.store.realm_page(table, scope, &q.cursor, q.size).await?;
    let data: Vec<Value> = page.bodies.iter().filter_map(|b| serde_json::from_str(b).ok()).map(render).collect();
    let first = data.first().and_then(|d| d["id"].as_str()).map(cursor_token);
    let last = data.last().and_then(|d| d["id"].as_str()).map(cursor_token);
    let link = |dir: &str, token: String| format!("{path}?page[size]={}&page[{dir}]={token}", q.size);
    let next = if page.more_after { last.map(|t| link("after", t)) } else { None };
    let previous = if page.more_before { first.map(|t| link("before", t)) } else { None };
    Ok(Json(json!({"data": data, "meta": {"size": q.size, "next": next, "previous": previous}})).into_response())
}

/// A stored body as shown: timestamps in ISO-8601, internal fields dropped.
fn public(mut v: Value) -> Value {
    for f in ["created_at", "updated_at"] {
        if let Some(secs) = v[f].as_i64() {
            v[f] = Value::String(iso8601(secs));
        }
    }
    if let Some(m) = v.as_object_mut() {
        m.retain(|k, _| !k.starts_with('_'));
    }
    v
}

/// Data planes drop their cached realm lookups after any realm write (a revoked key stops working
/// at once; a new key clears a cached miss).
fn purge(s: &AdminState) {
    if let Some(hub) = &s.hub {
        hub.purge_realm_caches();
    }
}

/// A stored row as the JSON object it must be; one that is not (a hand-edited database) is an
/// internal error, never indexed as an object.
fn stored(body: Option<String>) -> Result<Value, Problem> {
    let body = body.ok_or_else(Problem::not_found)?;
    match serde_json::from_str::<Value>(&body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => {
            tracing::error!("a stored realm row is not a JSON object");
            Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "An unexpected error occurred"))
        }
    }
}

impl AdminState {
    async fn realm(&self, id: &str) -> Result<Value, Problem> {
        if !is_uuid(id) {
            return Err(Problem::not_found());
        }
        stored(self.store.realm_get(RealmTable::Realms, id, &[]).await?)
    }

    async fn realm_consumer(&self, realm: &str, id: &str) -> Result<Value, Problem> {
        self.realm(realm).await?;
        stored(self.store.realm_get(RealmTable::Consumers, id, &[("realm_id", realm.to_string())]).await?)
    }

    /// Every `allowed_control_planes` entry must be `*` or a control plane this node holds.
    async fn check_control_planes(&self, ids: &[String], invalid: &mut Vec<InvalidParameter>) -> Result<(), Problem> {
        for (i, id) in ids.iter().enumerate() {
            if id == "*" {
                continue;
            }
            if !is_uuid(id) || self.store.control_plane(id).await?.is_none() {
                invalid.push(InvalidParameter::new(
                    format!("allowed_control_planes[{i}]"),
                    "missing_reference",
                    format!("control plane '{id}' does not exist"),
                ));
            }
        }
        Ok(())
    }
}

const REALM_FIELDS: &[&str] =
    &["name", "allowed_control_planes", "allow_all_control_planes", "ttl", "negative_ttl", "consumer_groups"];

/// Applies a realm create or PATCH body onto `realm`; returns every problem.
async fn apply_realm(
    s: &AdminState,
    realm: &mut Value,
    body: &Map<String, Value>,
    creating: bool,
) -> Result<(), Problem> {
    let mut invalid = unknown_properties(body, REALM_FIELDS);
    if let Some(Some(name)) = nonempty_string(body, "name", creating, &mut invalid) {
        realm["name"] = json!(name);
    }
    if let Some(cps) = string_set(body, "allowed_control_planes", &mut invalid) {
        s.check_control_planes(&cps, &mut invalid).await?;
        realm["allowed_control_planes"] = json!(cps);
    }
    match body.get("allow_all_control_planes") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => realm["allow_all_control_planes"] = json!(b),
        Some(_) => invalid.push(InvalidParameter::new("allow_all_control_planes", "is_boolean", "must be a boolean")),
    }
    for f in ["ttl", "negative_ttl"] {
        if let Some(m) = minutes(body, f, &mut invalid) {
            realm[f] = json!(m);
        }
    }
    if let Some(groups) = string_set(body, "consumer_groups", &mut invalid) {
        if let Err(v) = compile::realm_consumer_fields(None, None, &groups) {
            invalid.push(InvalidParameter::new("consumer_groups", "pattern", v.message()));
        }
        realm["consumer_groups"] = json!(groups);
    }
    if !invalid.is_empty() {
        return Err(Problem::invalid(invalid));
    }
    let id = realm["id"].as_str().unwrap_or_default().to_string();
    let name = realm["name"].as_str().unwrap_or_default().to_string();
    if s.store.realm_taken(RealmTable::Realms, "name", &name, &id, &[]).await? {
        return Err(Problem::new(StatusCode::CONFLICT, format!("A realm named [{name}] already exists.")));
    }
    Ok(())
}

async fn save(
    s: &AdminState,
    table: RealmTable,
    v: &Value,
    columns: Vec<(&'static str, Option<String>)>,
) -> Result<(), Problem> {
    let row = RealmRow {
        id: v["id"].as_str().unwrap_or_default(),
        body: v.to_string(),
        created_at: v["created_at"].as_i64().unwrap_or_else(now_secs),
        columns,
    };
    s.store.realm_put(table, &row).await.map_err(|e| match Problem::from(e) {
        p if p.status == StatusCode::CONFLICT => {
            Problem::new(StatusCode::CONFLICT, "An entity with the same unique value already exists.")
        }
        p => p,
    })
}

pub async fn create_realm(State(s): State<AdminState>, body: Bytes) -> Result<Response, Problem> {
    let body = parse_body(&body)?;
    let now = now_secs();
    let mut realm = json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "name": null,
        "allowed_control_planes": [],
        "allow_all_control_planes": false,
        "ttl": DEFAULT_TTL_MINUTES,
        "negative_ttl": DEFAULT_TTL_MINUTES,
        "consumer_groups": [],
        "created_at": now,
        "updated_at": now,
    });
    apply_realm(&s, &mut realm, &body, true).await?;
    save(&s, RealmTable::Realms, &realm, vec![("name", realm["name"].as_str().map(str::to_string))]).await?;
    purge(&s);
    Ok((StatusCode::CREATED, Json(public(realm))).into_response())
}

pub async fn list_realms(State(s): State<AdminState>, RawQuery(q): RawQuery) -> Result<Response, Problem> {
    let q = page_query(q, &[])?;
    list_page(&s, RealmTable::Realms, &Vec::new(), "/v1/realms", &q, public).await
}

pub async fn read_realm(State(s): State<AdminState>, Path(id): Path<String>) -> Result<Response, Problem> {
    Ok(Json(public(s.realm(&id).await?)).into_response())
}

pub async fn update_realm(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let body = parse_body(&body)?;
    let mut realm = s.realm(&id).await?;
    apply_realm(&s, &mut realm, &body, false).await?;
    realm["updated_at"] = json!(now_secs());
    save(&s, RealmTable::Realms, &realm, vec![("name", realm["name"].as_str().map(str::to_string))]).await?;
    purge(&s);
    Ok(Json(public(realm)).into_response())
}

/// `DELETE /v1/realms/{id}?force=true|false`: refused while the realm holds consumers, unless forced.
pub async fn delete_realm(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, Problem> {
    s.realm(&id).await?;
    let params: BTreeMap<String, String> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()).into_owned().collect();
    let force = match params.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            let p = InvalidParameter::new("force", "enum", "must be true or false")
                .with("choices", json!(["true", "false"]));
            return Err(Problem::invalid(vec![p]));
        }
    };
    let scope = vec![("realm_id", id.clone())];
    if !force && s.store.realm_count(RealmTable::Consumers, &scope).await? > 0 {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "The realm still has consumers; delete them first or use force=true.",
        ));
    }
    // Keys and consumers first (not every backend enforces the cascade).
    delete_all(&s, RealmTable::Keys, &scope).await?;
    delete_all(&s, RealmTable::Consumers, &scope).await?;
    s.store.realm_delete(RealmTable::Realms, &id, &[]).await?;
    purge(&s);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes every row of `table` matching `scope`.
async fn delete_all(s: &AdminState, table: RealmTable, scope: &Scope) -> Result<(), Problem> {
    loop {
        let page = s.store.realm_page(table, scope, &Cursor::First, 1000).await?;
        for b in &page.bodies {
            let v: Value = serde_json::from_str(b).unwrap_or(Value::Null);
            s.store.realm_delete(table, v["id"].as_str().unwrap_or_default(), scope).await?;
        }
        if !page.more_after {
            return Ok(());
        }
    }
}

const CONSUMER_FIELDS: &[&str] = &["username", "custom_id", "type", "tags", "consumer_groups"];

async fn apply_consumer(
    s: &AdminState,
    realm: &str,
    c: &mut Value,
    body: &Map<String, Value>,
    creating: bool,
) -> Result<(), Problem> {
    let mut invalid = unknown_properties(body, CONSUMER_FIELDS);
    if let Some(Some(u)) = nonempty_string(body, "username", creating, &mut invalid) {
        c["username"] = json!(u);
    }
    if let Some(custom) = nonempty_string(body, "custom_id", false, &mut invalid) {
        c["custom_id"] = json!(custom);
    }
    match body.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if CONSUMER_TYPES.contains(&t.as_str()) => c["type"] = json!(t),
        Some(_) => invalid.push(
            InvalidParameter::new("type", "enum", "is not a consumer type").with("choices", json!(CONSUMER_TYPES)),
        ),
    }
    for f in ["tags", "consumer_groups"] {
        if let Some(set) = string_set(body, f, &mut invalid) {
            c[f] = json!(set);
        }
    }
    // What goes upstream in headers is compiled as a data plane will.
    let groups: Vec<String> = c["consumer_groups"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    if let Err(v) = compile::realm_consumer_fields(c["username"].as_str(), c["custom_id"].as_str(), &groups) {
        for violation in v.0 {
            let field = match violation.path.first() {
                Some(crate::model::schema::PathSeg::Field(f)) => f.clone(),
                _ => String::new(),
            };
            invalid.push(InvalidParameter::new(field, "pattern", violation.message));
        }
    }
    if !invalid.is_empty() {
        return Err(Problem::invalid(invalid));
    }
    let id = c["id"].as_str().unwrap_or_default().to_string();
    let username = c["username"].as_str().unwrap_or_default().to_string();
    let scope = vec![("realm_id", realm.to_string())];
    if s.store.realm_taken(RealmTable::Consumers, "username", &username, &id, &scope).await? {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("A consumer named [{username}] already exists in this realm."),
        ));
    }
    Ok(())
}

fn consumer_columns(realm: &str, c: &Value) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("realm_id", Some(realm.to_string())),
        ("username", c["username"].as_str().map(str::to_string)),
        ("custom_id", c["custom_id"].as_str().map(str::to_string)),
    ]
}

pub async fn create_consumer(
    State(s): State<AdminState>,
    Path(realm): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let body = parse_body(&body)?;
    s.realm(&realm).await?;
    let now = now_secs();
    let mut c = json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "username": null, "custom_id": null, "type": "proxy", "tags": [], "consumer_groups": [],
        "created_at": now, "updated_at": now,
    });
    apply_consumer(&s, &realm, &mut c, &body, true).await?;
    save(&s, RealmTable::Consumers, &c, consumer_columns(&realm, &c)).await?;
    purge(&s);
    Ok((StatusCode::CREATED, Json(public(c))).into_response())
}

pub async fn list_consumers(
    State(s): State<AdminState>,
    Path(realm): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, Problem> {
    s.realm(&realm).await?;
    let q = page_query(q, &["username", "custom_id"])?;
    let path = format!("/v1/realms/{realm}/consumers");
    let mut scope: Scope = vec![("realm_id", realm)];
    for (field, value) in &q.filters {
        // Exact matches on the columns that hold them.
        let column = if field == "username" { "username" } else { "custom_id" };
        scope.push((column, value.clone()));
    }
    list_page(&s, RealmTable::Consumers, &scope, &path, &q, public).await
}

pub async fn read_consumer(
    State(s): State<AdminState>,
    Path((realm, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    Ok(Json(public(s.realm_consumer(&realm, &id).await?)).into_response())
}

pub async fn update_consumer(
    State(s): State<AdminState>,
    Path((realm, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let body = parse_body(&body)?;
    let mut c = s.realm_consumer(&realm, &id).await?;
    apply_consumer(&s, &realm, &mut c, &body, false).await?;
    c["updated_at"] = json!(now_secs());
    save(&s, RealmTable::Consumers, &c, consumer_columns(&realm, &c)).await?;
    purge(&s);
    Ok(Json(public(c)).into_response())
}

pub async fn delete_consumer(
    State(s): State<AdminState>,
    Path((realm, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    s.realm_consumer(&realm, &id).await?;
    delete_all(&s, RealmTable::Keys, &vec![("consumer_id", id.clone())]).await?;
    s.store.realm_delete(RealmTable::Consumers, &id, &[("realm_id", realm)]).await?;
    purge(&s);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST .../move` `{"target_realm_id"}` → 201 `{"realm_id"}`; the consumer's keys move with it.
pub async fn move_consumer(
    State(s): State<AdminState>,
    Path((realm, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let body = parse_body(&body)?;
    let mut c = s.realm_consumer(&realm, &id).await?;
    let mut invalid = unknown_properties(&body, &["target_realm_id"]);
    let target = match body.get("target_realm_id").and_then(Value::as_str) {
        Some(t) if is_uuid(t) && s.store.realm_get(RealmTable::Realms, t, &[]).await?.is_some() => Some(t.to_string()),
        Some(t) => {
            invalid.push(InvalidParameter::new(
                "target_realm_id",
                "missing_reference",
                format!("realm '{t}' does not exist"),
            ));
            None
        }
        None => {
            invalid.push(InvalidParameter::new("target_realm_id", "required", "is a required field"));
            None
        }
    };
    let (Some(target), true) = (target, invalid.is_empty()) else { return Err(Problem::invalid(invalid)) };
    let username = c["username"].as_str().unwrap_or_default().to_string();
    if s.store.realm_taken(RealmTable::Consumers, "username", &username, &id, &[("realm_id", target.clone())]).await? {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("A consumer named [{username}] already exists in the target realm."),
        ));
    }
    c["updated_at"] = json!(now_secs());
    s.store.realm_move_consumer(&id, &target, c.to_string()).await.map_err(|e| match Problem::from(e) {
        p if p.status == StatusCode::CONFLICT => {
            Problem::new(StatusCode::CONFLICT, "A key of this consumer is already used in the target realm.")
        }
        p => p,
    })?;
    purge(&s);
    Ok((StatusCode::CREATED, Json(json!({ "realm_id": target }))).into_response())
}

pub async fn create_key(
    State(s): State<AdminState>,
    Path((realm, consumer)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let body = if body.is_empty() { Map::new() } else { parse_body(&body)? };
    s.realm_consumer(&realm, &consumer).await?;
    let mut invalid = unknown_properties(&body, &["type", "secret", "tags"]);
    let kind = match body.get("type") {
        None | Some(Value::Null) => "new",
        Some(Value::String(t)) if t == "new" || t == "legacy" => t.as_str(),
        Some(_) => {
            invalid.push(
                InvalidParameter::new("type", "enum", "must be new or legacy")
                    .with("choices", json!(["new", "legacy"])),
            );
            "new"
        }
    };
    let secret = match (kind, body.get("secret")) {
        ("new", None | Some(Value::Null)) => Some(crate::auth::new_secret().replacen("tgp_", "tgrk_", 1)),
        ("new", Some(_)) => {
            invalid.push(InvalidParameter::new(
                "secret",
                "dependent_fields",
                "cannot be given with type new; the secret is generated",
            ));
            None
        }
        (_, Some(Value::String(secret))) if !secret.is_empty() => Some(secret.clone()),
        (_, Some(_)) => {
            invalid.push(InvalidParameter::new("secret", "is_string", "must be a non-empty string"));
            None
        }
        (_, None) => {
            invalid.push(InvalidParameter::new("secret", "required", "is required with type legacy"));
            None
        }
    };
    let tags = string_set(&body, "tags", &mut invalid).unwrap_or_default();
    let (Some(secret), true) = (secret, invalid.is_empty()) else { return Err(Problem::invalid(invalid)) };
    let hash = crate::auth::hash(&secret);
    if s.store.realm_taken(RealmTable::Keys, "secret_hash", &hash, "", &[("realm_id", realm.clone())]).await? {
        return Err(Problem::new(StatusCode::CONFLICT, "This secret is already used by a key of this realm."));
    }
    let now = now_secs();
    let key = json!({
        "id": uuid::Uuid::new_v4().to_string(), "type": kind, "tags": tags,
        "consumer_id": consumer, "created_at": now, "updated_at": now,
    });
    let columns =
        vec![("realm_id", Some(realm.clone())), ("consumer_id", Some(consumer.clone())), ("secret_hash", Some(hash))];
    save(&s, RealmTable::Keys, &key, columns).await?;
    purge(&s);
    let mut out = key_view(key);
    out["secret"] = json!(secret);
    out["updated_at"] = json!(iso8601(now));
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// A key as lists and reads show it: never its secret.
fn key_view(key: Value) -> Value {
    let key = public(key);
    json!({"id": key["id"], "type": key["type"], "tags": key["tags"], "created_at": key["created_at"]})
}

pub async fn list_keys(
    State(s): State<AdminState>,
    Path((realm, consumer)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, Problem> {
    s.realm_consumer(&realm, &consumer).await?;
    let q = page_query(q, &[])?;
    let path = format!("/v1/realms/{realm}/consumers/{consumer}/keys");
    list_page(&s, RealmTable::Keys, &vec![("consumer_id", consumer)], &path, &q, key_view).await
}

pub async fn read_key(
    State(s): State<AdminState>,
    Path((realm, consumer, key)): Path<(String, String, String)>,
) -> Result<Response, Problem> {
    s.realm_consumer(&realm, &consumer).await?;
    let key = stored(s.store.realm_get(RealmTable::Keys, &key, &[("consumer_id", consumer)]).await?)?;
    Ok(Json(key_view(key)).into_response())
}

pub async fn delete_key(
    State(s): State<AdminState>,
    Path((realm, consumer, key)): Path<(String, String, String)>,
) -> Result<Response, Problem> {
    s.realm_consumer(&realm, &consumer).await?;
    if s.store.realm_delete(RealmTable::Keys, &key, &[("consumer_id", consumer)]).await? == 0 {
        return Err(Problem::not_found());
    }
    purge(&s);
    Ok(StatusCode::NO_CONTENT.into_response())
}
