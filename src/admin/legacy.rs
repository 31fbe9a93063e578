//! Kong 0.x Admin API paths, so the seed walkthrough and old scripts work unchanged: `/apis` (stored as
//! a service and a route sharing one id), `/apis/{api}/plugins` and 0.1's `/plugins_configurations`
//! (`value.*` config, plugin name `keyauth`), and `/keyauth_credentials` (`key` + `consumer_id`).
//! Answers use the 0.x shapes (timestamps in milliseconds) with today's status codes.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::body::{AdminBody, Encoding};
use super::error::{AdminError, AdminResult};
use super::pagination;
use super::{AdminState, Endpoint, Routes};
use crate::model::schema::{Obj, is_uuid};
use crate::model::{EntityError, Kind, Mode};
use crate::snapshot::compile;
use crate::store::{ListQuery, WriteOp};

/// Adds the 0.x paths to the Admin API's routes.
pub(super) fn routes(routes: Routes) -> Routes {
    routes
        .add("/apis", Endpoint::other("0.x APIs").get(list_apis).post(create_api))
        .add("/apis/{apis}", Endpoint::other("A 0.x API").get(read_api).patch(patch_api).delete(delete_api))
        .add(
            "/apis/{apis}/plugins",
            Endpoint::other("A 0.x API's plugins").get(list_api_plugins).post(create_api_plugin),
        )
        .add(
            "/apis/{apis}/plugins/{plugins}",
            Endpoint::other("A 0.x API's plugin").get(read_api_plugin).delete(delete_api_plugin),
        )
        .add(
            "/plugins_configurations",
            Endpoint::other("0.1 plugin configurations")
                .get(list_plugin_configurations)
                .post(create_plugin_configuration),
        )
        .add(
            "/plugins_configurations/{plugins}",
            Endpoint::other("A 0.1 plugin configuration")
                .get(read_plugin_configuration)
                .delete(delete_plugin_configuration),
        )
        .add(
            "/keyauth_credentials",
            Endpoint::other("0.x key-auth credentials").get(list_keyauth_credentials).post(create_keyauth_credential),
        )
        .add(
            "/keyauth_credentials/{keyauth_credentials}",
            Endpoint::other("A 0.x key-auth credential").get(read_keyauth_credential).delete(delete_keyauth_credential),
        )
}

fn s(v: &Obj, k: &str) -> Value {
    v.get(k).cloned().unwrap_or(Value::Null)
}

fn ms(v: &Obj) -> Value {
    v.get("created_at").and_then(Value::as_i64).map_or(Value::Null, |t| json!(t.saturating_mul(1000)))
}

fn fk(v: &Obj, field: &str) -> Value {
    v.get(field).and_then(|f| f.get("id")).cloned().unwrap_or(Value::Null)
}

fn first(v: &Value) -> Value {
    v.as_array().and_then(|a| a.first()).cloned().unwrap_or(Value::Null)
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Reads a 0.x list field given as one string, a comma-separated string or an array.
fn list(v: Option<&Value>) -> Option<Vec<Value>> {
    match v? {
        Value::String(s) => {
            Some(s.split(',').map(|p| Value::String(p.trim().to_string())).filter(|p| p != "").collect())
        }
        Value::Array(a) => Some(a.clone()),
        _ => None,
    }
}

fn flag(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The 0.x API object built from its service and route.
fn api_json(service: &Obj, route: &Obj) -> Value {
    let url = {
        let host = service.get("host").and_then(Value::as_str).unwrap_or_default();
        let port = service.get("port").and_then(Value::as_i64).unwrap_or(80);
        let proto = service.get("protocol").and_then(Value::as_str).unwrap_or("http");
        let path = service.get("path").and_then(Value::as_str).unwrap_or("");
        let default = (proto == "http" && port == 80) || (proto == "https" && port == 443);
        if default { format!("{proto}://{host}{path}") } else { format!("{proto}://{host}:{port}{path}") }
    };
    let hosts = s(route, "hosts");
    let uris = s(route, "paths");
    json!({
        "id": s(service, "id"),
        "name": s(service, "name"),
        "created_at": ms(service),
        "hosts": hosts,
        "uris": uris,
        "methods": s(route, "methods"),
        "strip_uri": s(route, "strip_path"),
        "preserve_host": s(route, "preserve_host"),
        "upstream_url": url,
        "retries": s(service, "retries"),
        "upstream_connect_timeout": s(service, "connect_timeout"),
        "upstream_send_timeout": s(service, "write_timeout"),
        "upstream_read_timeout": s(service, "read_timeout"),
        "https_only": false,
        "http_if_terminated": false,
        "request_host": first(&hosts),
        "public_dns": first(&hosts),
        "request_path": first(&uris),
        "strip_request_path": s(route, "strip_path"),
        "target_url": url,
    })
}

/// Splits a 0.x API body into service and route inputs.
fn api_inputs(body: &Obj, existing: Option<(&Obj, &Obj)>) -> AdminResult<(Obj, Obj)> {
    let mut service = Obj::new();
    let mut route = Obj::new();
    let upstream = text(body.get("upstream_url")).or_else(|| text(body.get("target_url")));
    let hosts =
        list(body.get("hosts")).or_else(|| list(body.get("request_host"))).or_else(|| list(body.get("public_dns")));
    let uris = list(body.get("uris")).or_else(|| list(body.get("request_path"))).or_else(|| list(body.get("path")));
    let name = text(body.get("name"))
        .or_else(|| existing.and_then(|(s, _)| text(s.get("name"))))
        .or_else(|| hosts.as_ref().and_then(|h| h.first()).and_then(Value::as_str).map(str::to_string));
    if existing.is_none() {
        let mut missing = Map::new();
        if upstream.is_none() {
            missing.insert("upstream_url".into(), json!("upstream_url is required"));
        }
        if hosts.is_none() && uris.is_none() && body.get("methods").is_none() {
            missing.insert("message".into(), json!("at least one of 'hosts', 'uris' or 'methods' must be specified"));
        }
        if !missing.is_empty() {
            return Err(AdminError::Legacy(StatusCode::BAD_REQUEST, Value::Object(missing)));
        }
    }
    if let Some(n) = &name {
        service.insert("name".into(), json!(n));
        route.insert("name".into(), json!(n));
    }
    if let Some(u) = upstream {
        service.insert("url".into(), json!(u));
    }
    for (from, to) in [
        ("retries", "retries"),
        ("upstream_connect_timeout", "connect_timeout"),
        ("upstream_send_timeout", "write_timeout"),
        ("upstream_read_timeout", "read_timeout"),
    ] {
        if let Some(v) = body.get(from) {
            service.insert(to.into(), v.clone());
        }
    }
    if let Some(h) = hosts {
        route.insert("hosts".into(), Value::Array(h));
    }
    if let Some(u) = uris {
        route.insert("paths".into(), Value::Array(u));
    }
    if let Some(m) = list(body.get("methods")) {
        route.insert("methods".into(), Value::Array(m));
    }
    let strip = flag(body.get("strip_uri"))
        .or_else(|| flag(body.get("strip_request_path")))
        .or_else(|| flag(body.get("strip_path")));
    if let Some(b) = strip {
        route.insert("strip_path".into(), json!(b));
    }
    if let Some(b) = flag(body.get("preserve_host")) {
        route.insert("preserve_host".into(), json!(b));
    }
    Ok((service, route))
}

impl AdminState {
    /// The service and route of an API, by id or name.
    async fn api(&self, key: &str) -> AdminResult<(Obj, Obj)> {
        let service = self.store.lookup(&self.cp(), Kind::Service, key).await?.ok_or(AdminError::NotFound)?;
        let id = service.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let route = self.store.get(&self.cp(), Kind::Route, &id).await?.ok_or(AdminError::NotFound)?;
        Ok((service, route))
    }

    async fn save_api(&self, service_in: Obj, route_in: Obj, existing: Option<(Obj, Obj)>) -> AdminResult<Value> {
        let (service_mode, route_mode, op) = match existing {
            Some((s, r)) => (Mode::Patch(s), Mode::Patch(r), WriteOp::Update),
            None => {
                let id = json!(uuid::Uuid::new_v4().to_string());
                let (mut service_in, mut route_in) = (service_in, route_in);
                service_in.insert("id".into(), id.clone());
                route_in.insert("id".into(), id);
                return self.insert_api(service_in, route_in).await;
            }
        };
        let service = compile::prepare(Kind::Service, service_in, service_mode)?;
        let mut route_in = route_in;
        route_in.insert("service".into(), json!({"id": service["id"]}));
        let route = compile::prepare(Kind::Route, route_in, route_mode)?;
        let service = self.store.write(&self.cp(), Kind::Service, op, service, None).await?;
        let route = self.store.write(&self.cp(), Kind::Route, op, route, None).await?;
        Ok(api_json(&service, &route))
    }

    async fn insert_api(&self, service_in: Obj, mut route_in: Obj) -> AdminResult<Value> {
        route_in.insert("service".into(), json!({"id": service_in["id"]}));
        let service = compile::prepare(Kind::Service, service_in, Mode::Create);
        let route = compile::prepare(Kind::Route, route_in, Mode::Create);
        let (service, route) = match (service, route) {
            (Ok(s), Ok(r)) => (s, r),
            (Err(EntityError::Schema(mut a)), Err(EntityError::Schema(b))) => {
                a.0.extend(b.0);
                return Err(EntityError::Schema(a).into());
            }
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        };
        let service = self.store.write(&self.cp(), Kind::Service, WriteOp::Insert, service, None).await?;
        let id = service["id"].as_str().unwrap_or_default().to_string();
        match self.store.write(&self.cp(), Kind::Route, WriteOp::Insert, route, None).await {
            Ok(route) => Ok(api_json(&service, &route)),
            Err(e) => {
                self.store.delete(&self.cp(), Kind::Service, &id).await?;
                Err(e.into())
            }
        }
    }
}

async fn create_api(State(st): State<AdminState>, body: AdminBody) -> AdminResult<Response> {
    let (mut service, mut route) = api_inputs(&body.fields, None)?;
    if body.encoding == Encoding::Form {
        compile::coerce(Kind::Service, &mut service, None);
        compile::coerce(Kind::Route, &mut route, None);
    }
    let api = st.save_api(service, route, None).await?;
    Ok((StatusCode::CREATED, Json(api)).into_response())
}

async fn read_api(State(st): State<AdminState>, Path(api): Path<String>) -> AdminResult<Response> {
    let (service, route) = st.api(&api).await?;
    Ok(Json(api_json(&service, &route)).into_response())
}

async fn patch_api(State(st): State<AdminState>, Path(api): Path<String>, body: AdminBody) -> AdminResult<Response> {
    let (service, route) = st.api(&api).await?;
    let (mut service_in, mut route_in) = api_inputs(&body.fields, Some((&service, &route)))?;
    if body.encoding == Encoding::Form {
        compile::coerce(Kind::Service, &mut service_in, None);
        compile::coerce(Kind::Route, &mut route_in, None);
    }
    let api = st.save_api(service_in, route_in, Some((service, route))).await?;
    Ok(Json(api).into_response())
}

async fn delete_api(State(st): State<AdminState>, Path(api): Path<String>) -> AdminResult<Response> {
    if let Ok((service, _)) = st.api(&api).await {
        let id = service["id"].as_str().unwrap_or_default().to_string();
        st.store.delete(&st.cp(), Kind::Route, &id).await?;
        st.store.delete(&st.cp(), Kind::Service, &id).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_apis(State(st): State<AdminState>, RawQuery(q): RawQuery) -> AdminResult<Response> {
    let opts = pagination::parse(q.as_deref())?;
    let query = ListQuery { cp: &st.cp(), parent: None, size: opts.size, offset: opts.offset.clone(), tags: None };
    let page = st.store.list(Kind::Service, &query).await?;
    let mut data = Vec::new();
    for service in &page.data {
        let id = service.get("id").and_then(Value::as_str).unwrap_or_default();
        if let Some(route) = st.store.get(&st.cp(), Kind::Route, id).await? {
            data.push(api_json(service, &route));
        }
    }
    let mut body = json!({"total": data.len(), "data": data});
    if let Some(offset) = page.offset {
        body["next"] = json!(format!(
            "/apis?offset={}&size={}",
            url::form_urlencoded::byte_serialize(offset.as_bytes()).collect::<String>(),
            opts.size
        ));
        body["offset"] = json!(offset);
    }
    Ok(Json(body).into_response())
}

/// The 0.x plugin object.
fn plugin_json(p: &Obj) -> Value {
    json!({
        "id": s(p, "id"),
        "name": s(p, "name"),
        "api_id": fk(p, "service"),
        "consumer_id": fk(p, "consumer"),
        "config": s(p, "config"),
        "value": s(p, "config"),
        "enabled": s(p, "enabled"),
        "created_at": ms(p),
    })
}

/// Turns a 0.x plugin body (`value.*` or `config.*`, `api_id`, `consumer_id`) into a 3.x plugin input.
fn plugin_input(body: AdminBody, api_id: Option<String>) -> Obj {
    let form = body.encoding == Encoding::Form;
    let mut fields = body.fields;
    if let Some(value) = fields.remove("value") {
        fields.entry("config").or_insert(value);
    }
    let api = api_id.or_else(|| fields.remove("api_id").and_then(|v| v.as_str().map(str::to_string)));
    fields.remove("api_id");
    if let Some(api) = api {
        fields.insert("service".into(), json!({"id": api}));
    }
    if let Some(consumer) = fields.remove("consumer_id")
        && !consumer.is_null()
        && consumer != ""
    {
        fields.insert("consumer".into(), json!({ "id": consumer }));
    }
    if form {
        compile::coerce(Kind::Plugin, &mut fields, None);
    }
    fields
}

async fn create_plugin(st: &AdminState, fields: Obj) -> AdminResult<Response> {
    if let Some(api) = fields.get("service").and_then(|s| s.get("id")).and_then(Value::as_str)
        && !is_uuid(api)
    {
        return Err(AdminError::Legacy(StatusCode::BAD_REQUEST, json!({"api_id": "api_id is not a valid uuid"})));
    }
    let record = compile::prepare(Kind::Plugin, fields, Mode::Create)?;
    let stored = st.store.write(&st.cp(), Kind::Plugin, WriteOp::Insert, record, None).await?;
    Ok((StatusCode::CREATED, Json(plugin_json(&stored))).into_response())
}

async fn list_plugins(st: &AdminState, service: Option<String>, q: Option<&str>) -> AdminResult<Response> {
    let opts = pagination::parse(q)?;
    let query = ListQuery {
        cp: &st.cp(),
        parent: service.map(|s| ("service", s)),
        size: opts.size,
        offset: opts.offset.clone(),
        tags: None,
    };
    let page = st.store.list(Kind::Plugin, &query).await?;
    let data: Vec<Value> = page.data.iter().map(plugin_json).collect();
    Ok(Json(json!({"total": data.len(), "data": data})).into_response())
}

async fn list_api_plugins(
    State(st): State<AdminState>,
    Path(api): Path<String>,
    RawQuery(q): RawQuery,
) -> AdminResult<Response> {
    let (service, _) = st.api(&api).await?;
    list_plugins(&st, service["id"].as_str().map(str::to_string), q.as_deref()).await
}

async fn create_api_plugin(
    State(st): State<AdminState>,
    Path(api): Path<String>,
    body: AdminBody,
) -> AdminResult<Response> {
    let (service, _) = st.api(&api).await?;
    create_plugin(&st, plugin_input(body, service["id"].as_str().map(str::to_string))).await
}

async fn read_api_plugin(
    State(st): State<AdminState>,
    Path((api, plugin)): Path<(String, String)>,
) -> AdminResult<Response> {
    let (service, _) = st.api(&api).await?;
    let p = st.store.lookup(&st.cp(), Kind::Plugin, &plugin).await?.ok_or(AdminError::NotFound)?;
    if fk(&p, "service") != service["id"] {
        return Err(AdminError::NotFound);
    }
    Ok(Json(plugin_json(&p)).into_response())
}

async fn delete_api_plugin(
    State(st): State<AdminState>,
    Path((api, plugin)): Path<(String, String)>,
) -> AdminResult<Response> {
    let (service, _) = st.api(&api).await?;
    if let Some(p) = st.store.lookup(&st.cp(), Kind::Plugin, &plugin).await?
        && fk(&p, "service") == service["id"]
    {
        st.store.delete(&st.cp(), Kind::Plugin, p["id"].as_str().unwrap_or_default()).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create_plugin_configuration(State(st): State<AdminState>, body: AdminBody) -> AdminResult<Response> {
    let fields = plugin_input(body, None);
    if let Some(api) = fields.get("service").and_then(|s| s.get("id")).and_then(Value::as_str)
        && st.store.get(&st.cp(), Kind::Service, api).await?.is_none()
    {
        return Err(AdminError::Legacy(
            StatusCode::NOT_FOUND,
            json!({ "api_id": format!("api_id {api} does not exist") }),
        ));
    }
    create_plugin(&st, fields).await
}

async fn list_plugin_configurations(State(st): State<AdminState>, RawQuery(q): RawQuery) -> AdminResult<Response> {
    list_plugins(&st, None, q.as_deref()).await
}

async fn read_plugin_configuration(State(st): State<AdminState>, Path(plugin): Path<String>) -> AdminResult<Response> {
    let p = st.store.lookup(&st.cp(), Kind::Plugin, &plugin).await?.ok_or(AdminError::NotFound)?;
    Ok(Json(plugin_json(&p)).into_response())
}

async fn delete_plugin_configuration(
    State(st): State<AdminState>,
    Path(plugin): Path<String>,
) -> AdminResult<Response> {
    st.delete_entity(Kind::Plugin, None, &[plugin]).await
}

/// The 0.x credential object.
fn credential_json(c: &Obj) -> Value {
    json!({"id": s(c, "id"), "consumer_id": fk(c, "consumer"), "key": s(c, "key"), "created_at": ms(c)})
}

async fn create_keyauth_credential(State(st): State<AdminState>, body: AdminBody) -> AdminResult<Response> {
    let fields = body.fields;
    let key = fields.get("key").and_then(Value::as_str).filter(|k| !k.is_empty()).map(str::to_string);
    let consumer = fields.get("consumer_id").and_then(Value::as_str).filter(|c| !c.is_empty()).map(str::to_string);
    let mut missing = Map::new();
    if key.is_none() {
        missing.insert("key".into(), json!("key is required"));
    }
    if consumer.is_none() {
        missing.insert("consumer_id".into(), json!("consumer_id is required"));
    }
    let (Some(key), Some(consumer)) = (key, consumer) else {
        return Err(AdminError::Legacy(StatusCode::BAD_REQUEST, Value::Object(missing)));
    };
    let Some(owner) = st.store.lookup(&st.cp(), Kind::Consumer, &consumer).await? else {
        return Err(AdminError::Legacy(
            StatusCode::NOT_FOUND,
            json!({ "consumer_id": format!("consumer_id {consumer} does not exist") }),
        ));
    };
    let mut input = Obj::new();
    input.insert("key".into(), json!(key));
    input.insert("consumer".into(), json!({"id": owner["id"]}));
    let record = compile::prepare(Kind::KeyAuth, input, Mode::Create)?;
    match st.store.write(&st.cp(), Kind::KeyAuth, WriteOp::Insert, record, None).await {
        Ok(stored) => Ok((StatusCode::CREATED, Json(credential_json(&stored))).into_response()),
        Err(EntityError::Unique(_)) => Err(AdminError::Legacy(
            StatusCode::CONFLICT,
            json!({ "key": format!("key already exists with value '{key}'") }),
        )),
        Err(e) => Err(e.into()),
    }
}

async fn list_keyauth_credentials(State(st): State<AdminState>, RawQuery(q): RawQuery) -> AdminResult<Response> {
    let opts = pagination::parse(q.as_deref())?;
    let query = ListQuery { cp: &st.cp(), parent: None, size: opts.size, offset: opts.offset.clone(), tags: None };
    let page = st.store.list(Kind::KeyAuth, &query).await?;
    let data: Vec<Value> = page.data.iter().map(credential_json).collect();
    Ok(Json(json!({"total": data.len(), "data": data})).into_response())
}

async fn read_keyauth_credential(State(st): State<AdminState>, Path(cred): Path<String>) -> AdminResult<Response> {
    let c = st.store.lookup(&st.cp(), Kind::KeyAuth, &cred).await?.ok_or(AdminError::NotFound)?;
    Ok(Json(credential_json(&c)).into_response())
}

async fn delete_keyauth_credential(State(st): State<AdminState>, Path(cred): Path<String>) -> AdminResult<Response> {
    st.delete_entity(Kind::KeyAuth, None, &[cred]).await
}
