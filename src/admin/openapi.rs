//! `GET /openapi.json`: the OpenAPI 3.1 document of this node's Admin API, built once, with the
//! router, from the same list of routes the router is built from ([`Routed`]): every path and
//! every method routed, with its path parameters, the entity schemas of `model` (fields, types,
//! required, defaults, enums, bounds) as request and response bodies, Kong's pagination and the
//! error bodies of each surface. It only describes: nothing here serves a request but the one
//! handler that answers the bytes rendered at start.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathItemBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, OneOfBuilder, SchemaFormat, SchemaType, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr,
    Required, ResponseBuilder, Schema,
};

use super::endpoint::{About, Body, Op};
use super::{Routed, Surface};
use crate::model::Kind;
use crate::model::schema::{Auto, Check, Field, Type as FieldType};

/// Where every Kong path is served again for another control plane.
const CORE_ENTITIES: &str = "/v2/control-planes/{id}/core-entities";
const JSON: &str = "application/json";
const PROBLEM: &str = "application/problem+json";
/// What Kong's Admin API reads a body from (`admin::body`).
const KONG_BODIES: [&str; 3] = [JSON, "application/x-www-form-urlencoded", "multipart/form-data"];
const TOKEN_SCHEME: &str = "adminToken";

/// The document as served: rendered once.
pub fn render(routed: &[Routed], admin_auth: bool) -> Bytes {
    match serde_json::to_vec(&document(routed, admin_auth)) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            tracing::error!(error = %e, "the OpenAPI document could not be rendered");
            Bytes::new()
        }
    }
}

/// `GET /openapi.json`.
pub async fn serve(document: Option<Bytes>) -> Response {
    match document.filter(|d| !d.is_empty()) {
        Some(bytes) => ([(header::CONTENT_TYPE, JSON)], bytes).into_response(),
        None => super::error::AdminError::Unexpected.into_response(),
    }
}

/// The OpenAPI document of `routed`. With `admin_auth`, every operation needs an admin token.
pub fn document(routed: &[Routed], admin_auth: bool) -> OpenApi {
    let mut kinds = BTreeSet::new();
    let mut paths = PathsBuilder::new();
    for r in routed {
        for op in &r.ops {
            for body in [op.takes, op.answers] {
                if let Body::Entity(k) | Body::Changes(k) | Body::Page(k) = body {
                    kinds.insert(k);
                }
            }
        }
        paths = paths.path(r.template.clone(), path_item(r, &r.template, false, admin_auth));
        if r.surface == Surface::Kong {
            let prefixed = match r.template.as_str() {
                "/" => CORE_ENTITIES.to_string(),
                t => format!("{CORE_ENTITIES}{t}"),
            };
            paths = paths.path(prefixed.clone(), path_item(r, &prefixed, true, admin_auth));
        }
    }
    let mut components = ComponentsBuilder::new()
        .schema("KongMessage", kong_message())
        .schema("KongEntityError", kong_entity_error())
        .schema("Problem", problem());
    for kind in kinds {
        for usage in [Usage::Answer, Usage::Input, Usage::Changes] {
            components = components.schema(component(kind.table(), usage), entity_schema(kind, usage));
        }
    }
    for plugin in crate::plugins::REGISTRY {
        let config = (plugin.config)();
        for usage in [Usage::Answer, Usage::Input, Usage::Changes] {
            components =
                components.schema(component(&plugin_config(plugin.name), usage), record(&config.fields, usage));
        }
    }
    if admin_auth {
        let bearer = Http::builder()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An admin token (`tollgate tokens create`, `POST /v1/tokens`)"))
            .build();
        components = components.security_scheme(TOKEN_SCHEME, SecurityScheme::Http(bearer));
    }
    let description = format!(
        "Kong {} Admin API paths, each also served for another control plane under \
         `{CORE_ENTITIES}`, and the Konnect-shaped `/v1` and `/v2` APIs.",
        super::info::KONG_COMPAT_VERSION
    );
    let info = InfoBuilder::new().title("Tollgate Admin API").version(crate::VERSION).description(Some(description));
    let mut doc = OpenApiBuilder::new().info(info.build()).paths(paths.build()).components(Some(components.build()));
    if admin_auth {
        doc = doc.security(Some([SecurityRequirement::new(TOKEN_SCHEME, Vec::<String>::new())]));
    }
    doc.build()
}

fn path_item(r: &Routed, path: &str, prefixed: bool, admin_auth: bool) -> PathItem {
    let mut item = PathItemBuilder::new();
    for op in &r.ops {
        if let Some(method) = http_method(&op.method) {
            item = item.operation(method, operation(r, op, path, prefixed, admin_auth));
        }
    }
    item.build()
}

fn http_method(m: &Method) -> Option<HttpMethod> {
    Some(match *m {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        _ => return None,
    })
}

fn operation(r: &Routed, op: &Op, path: &str, prefixed: bool, admin_auth: bool) -> Operation {
    let kong = r.surface == Surface::Kong;
    let tag = if prefixed { "core-entities" } else { tag(&r.template) };
    let mut o = OperationBuilder::new()
        .tag(tag)
        .summary(Some(summary(r.about, op)))
        .operation_id(Some(operation_id(&op.method, path)));
    for name in path_params(path) {
        let p = ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some(param_description(name, r.surface == Surface::Konnect || (prefixed && name == "id"))))
            .schema(Some(string()));
        o = o.parameter(p.build());
    }
    if let (true, Body::Page(kind)) = (kong, op.answers) {
        for p in page_params(kind, &r.template) {
            o = o.parameter(p);
        }
    }
    if let Some(body) = request_body(op.takes, &op.method, kong) {
        o = o.request_body(Some(body));
    }
    // The answer when all goes well.
    let mut ok = ResponseBuilder::new().description(success(op.status));
    if op.answers == Body::Text {
        ok = ok.content("text/plain; charset=UTF-8", ContentBuilder::new().schema(Some(string())).build());
    } else if let Some(schema) = answer_schema(op.answers) {
        ok = ok.content(JSON, ContentBuilder::new().schema(Some(schema)).build());
    }
    if op.status == StatusCode::METHOD_NOT_ALLOWED {
        ok = ok.content(JSON, content("KongMessage"));
    }
    o = o.response(op.status.as_str(), ok.build());
    // What goes wrong, in this surface's error body.
    let has_params = !path_params(path).is_empty();
    let takes = op.takes != Body::Nothing;
    let lists = matches!(op.answers, Body::Page(_)) || (!kong && op.method == Method::GET && !has_params);
    if kong {
        if takes || lists {
            let either = OneOfBuilder::new().item(reference("KongEntityError")).item(reference("KongMessage"));
            let bad = ContentBuilder::new().schema(Some(either)).build();
            o = o.response("400", ResponseBuilder::new().description("Invalid input").content(JSON, bad).build());
        }
        if has_params {
            let mut missing = ResponseBuilder::new().description("Not found").content(JSON, content("KongMessage"));
            if prefixed {
                missing = missing.content(PROBLEM, content("Problem"));
            }
            o = o.response("404", missing.build());
        }
        if matches!(op.takes, Body::Entity(_) | Body::Changes(_)) {
            let conflict = ResponseBuilder::new()
                .description("A unique field's value is taken")
                .content(JSON, content("KongEntityError"));
            o = o.response("409", conflict.build());
        }
        if takes {
            let large = ResponseBuilder::new().description("Body too large").content(JSON, content("KongMessage"));
            o = o
                .response("413", large.build())
                .response("415", ResponseBuilder::new().description("Unsupported Content-Type").build());
        }
    } else {
        if takes || lists {
            o = o.response("400", problem_response("Invalid input"));
        }
        if has_params {
            o = o.response("404", problem_response("Not found"));
        }
    }
    if admin_auth {
        o = o.response("401", problem_response("No valid admin token"));
        if op.method != Method::GET {
            o = o.response("403", problem_response("The token's role may only read"));
        }
    }
    o.build()
}

fn success(status: StatusCode) -> &'static str {
    match status {
        StatusCode::CREATED => "Created",
        StatusCode::NO_CONTENT => "Done, nothing to answer",
        StatusCode::METHOD_NOT_ALLOWED => "Refused when found: Kong never changes this way",
        _ => "OK",
    }
}

fn summary(about: About, op: &Op) -> String {
    let (verb, table) = match (about, &op.method) {
        (About::Other(text), _) => return text.to_string(),
        (About::Collection(k), &Method::GET) => ("List", k.table()),
        (About::Collection(k), &Method::POST) => ("Create one of", k.table()),
        (About::Collection(k) | About::Item(k), &Method::DELETE) if op.status == StatusCode::METHOD_NOT_ALLOWED => {
            ("Cannot delete one of", k.table())
        }
        (About::Collection(k) | About::Item(k), &Method::DELETE) => ("Delete one of", k.table()),
        (About::Collection(k) | About::Item(k), &Method::PATCH) => ("Update one of", k.table()),
        (About::Collection(k) | About::Item(k), &Method::PUT) => ("Create or replace one of", k.table()),
        (About::Collection(k) | About::Item(k), _) => ("Read one of", k.table()),
    };
    format!("{verb} {table}")
}

/// A tag per top-level resource: `consumers`, `v1/realms`, `v2/control-planes`.
fn tag(template: &str) -> &str {
    let mut segments = template.trim_start_matches('/').split('/');
    match segments.next() {
        Some("") | None => "node",
        Some(v @ ("v1" | "v2")) => {
            let end = v.len() + 1 + segments.next().map_or(0, str::len);
            template.get(1..=end).unwrap_or(v)
        }
        Some(first) => first,
    }
}

/// `get /consumers/{consumers}` → `get_consumers_consumers`: unique, since paths are.
fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_ascii_lowercase();
    for c in path.chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c);
        } else if !id.ends_with('_') {
            id.push('_');
        }
    }
    id.trim_end_matches('_').to_string()
}

/// The `{name}`s of a template, in order.
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect()
}

fn param_description(name: &str, konnect: bool) -> String {
    if let Some(kind) = Kind::from_table(name) {
        return match kind.endpoint_key() {
            "id" => format!("The id of one of {name}"),
            key => format!("The id or `{key}` of one of {name}"),
        };
    }
    match name {
        "id" if konnect => "The id of a control plane (or of an admin token under `/v1/tokens`)".into(),
        "name" => "A plugin's name".into(),
        "db_entity_name" => "An entity's name (`consumers`, `services`, …)".into(),
        "address" => "One of the target's addresses (`ip:port`)".into(),
        "apis" => "The id or name of a 0.x API".into(),
        other => format!("The id of the {other}"),
    }
}

/// Kong's list options (`admin::pagination`).
fn page_params(kind: Kind, template: &str) -> Vec<utoipa::openapi::path::Parameter> {
    let query = |name: &str, description: &str, schema: ObjectBuilder| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(Some(description))
            .schema(Some(schema))
            .build()
    };
    let mut params = vec![
        query(
            "size",
            "Entities per page",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(1000))
                .default(Some(json!(100))),
        ),
        query("offset", "Where the page starts: the `offset` of the previous page", string()),
        query("tags", "Only entities with every tag of `a,b`, or any tag of `a/b` (at most 5)", string()),
    ];
    if kind == Kind::Consumer && template == "/consumers" {
        params.push(query("custom_id", "The one consumer with this `custom_id`, or none", string()));
    }
    params
}

fn request_body(takes: Body, method: &Method, kong: bool) -> Option<utoipa::openapi::request_body::RequestBody> {
    let schema: RefOr<Schema> = match takes {
        Body::Nothing | Body::Page(_) => return None,
        Body::Entity(k) => reference(&component(k.table(), Usage::Input)),
        Body::Changes(k) => reference(&component(k.table(), Usage::Changes)),
        Body::Object | Body::Text => object().into(),
    };
    // A PUT names its entity in the path, which may be all it needs.
    let required = matches!(takes, Body::Entity(_)) && *method == Method::POST;
    let mut body = RequestBodyBuilder::new().required(Some(if required { Required::True } else { Required::False }));
    let types: &[&str] = if kong { &KONG_BODIES } else { &[JSON] };
    for t in types {
        body = body.content(*t, ContentBuilder::new().schema(Some(schema.clone())).build());
    }
    Some(body.build())
}

fn answer_schema(answers: Body) -> Option<RefOr<Schema>> {
    match answers {
        Body::Nothing | Body::Text => None,
        Body::Entity(k) | Body::Changes(k) => Some(reference(k.table())),
        Body::Page(k) => Some(page(k).into()),
        Body::Object => Some(object().into()),
    }
}

/// Kong's page: `{"data": […], "next": "/consumers?offset=…" | null, "offset": "…"}`.
fn page(kind: Kind) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("data", ArrayBuilder::new().items(reference(kind.table())))
        .property("next", nullable_string().description(Some("The path of the next page; null on the last one")))
        .property("offset", string().description(Some("The next page's `offset`, when there is one")))
        .required("data")
        .required("next")
}

fn kong_message() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Object).property("message", string()).required("message")
}

fn kong_entity_error() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("Kong's entity error: its code and name, and every bad field"))
        .property("code", ObjectBuilder::new().schema_type(Type::Integer))
        .property("name", string())
        .property("message", string())
        .property("fields", object())
        .required("code")
        .required("name")
        .required("message")
}

fn problem() -> ObjectBuilder {
    let parameter = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("field", string())
        .property("reason", string())
        .property("rule", nullable_string())
        .property("source", string())
        .required("field")
        .required("reason");
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("RFC 9457 problem details, as Konnect answers"))
        .property("status", ObjectBuilder::new().schema_type(Type::Integer))
        .property("title", string())
        .property("detail", string())
        .property("instance", string())
        .property("invalid_parameters", ArrayBuilder::new().items(parameter))
        .required("status")
        .required("title")
        .required("detail")
}

fn problem_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new().description(description).content(PROBLEM, content("Problem")).build()
}

fn content(component: &str) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(reference(component))).build()
}

fn reference(component: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(component))
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable_string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null]))
}

fn object() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Object)
}

/// Which side of the API an entity schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    /// What the node answers: every field, `null` when unset.
    Answer,
    /// What POST and PUT take: required fields without a default must be given.
    Input,
    /// What PATCH takes: any of the fields.
    Changes,
}

fn component(base: &str, usage: Usage) -> String {
    match usage {
        Usage::Answer => base.to_string(),
        Usage::Input => format!("{base}.input"),
        Usage::Changes => format!("{base}.changes"),
    }
}

fn plugin_config(name: &str) -> String {
    format!("plugins.{name}.config")
}

/// An entity's JSON Schema, from its descriptor's schema.
fn entity_schema(kind: Kind, usage: Usage) -> ObjectBuilder {
    let schema = kind.schema();
    let mut o = record(&schema.fields, usage);
    if usage != Usage::Answer {
        for check in &schema.checks {
            if let crate::model::schema::EntityCheck::AtLeastOneOf(names) = check {
                o = o
                    .description(Some(format!("At least one of these fields must be non-empty: {}", names.join(", "))));
            }
        }
        if kind.has_ttl() {
            let ttl = ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
                .minimum(Some(0))
                .maximum(Some(100_000_000))
                .description(Some("Seconds until the entity expires"));
            o = o.property("ttl", ttl);
        }
        if kind == Kind::Service {
            let url =
                nullable_string().description(Some("Shorthand for `protocol`, `host`, `port` and `path` (write only)"));
            o = o.property("url", url);
        }
    }
    if kind == Kind::Plugin {
        // The configuration is the named plugin's.
        let mut any = AnyOfBuilder::new().description(Some("The configuration of the plugin `name` names"));
        for plugin in crate::plugins::REGISTRY {
            any = any.item(reference(&component(&plugin_config(plugin.name), usage)));
        }
        o = o.property("config", any);
    }
    o
}

/// A record's fields as a JSON Schema object.
fn record(fields: &[Field], usage: Usage) -> ObjectBuilder {
    let mut o = ObjectBuilder::new().schema_type(Type::Object);
    for f in fields {
        // An answer carries every field; validation filled defaults and generated values.
        let (required, nullable) = match usage {
            Usage::Answer => (true, !(f.required || !f.default.is_null() || f.auto != Auto::No)),
            Usage::Input => (f.required && f.default.is_null() && f.auto == Auto::No, !f.required),
            Usage::Changes => (false, !f.required),
        };
        o = o.property(f.name, field_schema(f, usage, nullable));
        if required {
            o = o.required(f.name);
        }
    }
    o
}

/// One field's JSON Schema: its type (with `null` when it may be unset), checks and default.
fn field_schema(f: &Field, usage: Usage, nullable: bool) -> Schema {
    let types = |t: Type| if nullable { SchemaType::from_iter([t, Type::Null]) } else { SchemaType::new(t) };
    let default = (!f.default.is_null()).then(|| f.default.clone());
    let described = |o: ObjectBuilder| {
        let o = o.default(default.clone());
        match (f.auto, f.immutable) {
            (Auto::Timestamp, _) => o.description(Some("Unix time in seconds, set by the node")),
            (Auto::TimestampMs, _) => o.description(Some("Unix time in seconds with milliseconds, set by the node")),
            (Auto::Uuid, _) => o.format(Some(SchemaFormat::Custom("uuid".into()))),
            (Auto::Key, _) => o.description(Some("Generated when not given")),
            (Auto::No, true) => o.description(Some("Cannot change once set")),
            (Auto::No, false) => o,
        }
    };
    match &f.ty {
        FieldType::String => {
            let mut o = ObjectBuilder::new().schema_type(types(Type::String));
            for c in &f.checks {
                o = match c {
                    Check::OneOf(options) => {
                        o.enum_values(Some(enumerated(options.iter().map(|s| json!(s)), nullable)))
                    }
                    Check::LenMin(n) => o.min_length(Some(*n)),
                    _ => o,
                };
            }
            described(o).into()
        }
        FieldType::Integer | FieldType::Number => {
            let t = if matches!(f.ty, FieldType::Integer) { Type::Integer } else { Type::Number };
            let mut o = ObjectBuilder::new().schema_type(types(t));
            for c in &f.checks {
                o = match c {
                    Check::Between(lo, hi) => o.minimum(Some(*lo)).maximum(Some(*hi)),
                    Check::GreaterThan(x) => o.exclusive_minimum(Some(*x)),
                    Check::AtMost(x) => o.maximum(Some(*x)),
                    Check::OneOfInt(options) => {
                        o.enum_values(Some(enumerated(options.iter().map(|n| json!(n)), nullable)))
                    }
                    _ => o,
                };
            }
            described(o).into()
        }
        FieldType::Boolean => described(ObjectBuilder::new().schema_type(types(Type::Boolean))).into(),
        FieldType::Array(element) | FieldType::Set(element) => {
            let mut a = ArrayBuilder::new()
                .schema_type(types(Type::Array))
                .items(RefOr::T(field_schema(element, usage, false)))
                .unique_items(matches!(f.ty, FieldType::Set(_)))
                .default(default.clone());
            for c in &f.checks {
                if let Check::LenMin(n) = c {
                    a = a.min_items(Some(*n));
                }
            }
            a.into()
        }
        FieldType::Map(key, value) => {
            let o = ObjectBuilder::new()
                .schema_type(types(Type::Object))
                .property_names(Some(field_schema(key, usage, false)))
                .additional_properties(Some(RefOr::T(field_schema(value, usage, false))));
            described(o).into()
        }
        FieldType::Record(fields) => {
            let o = record(fields, usage).schema_type(types(Type::Object));
            described(o).into()
        }
        FieldType::Foreign(table) => {
            let id = string().format(Some(SchemaFormat::Custom("uuid".into())));
            let description = match usage {
                Usage::Answer => format!("One of {table}, by id"),
                _ => format!("One of {table}: `{{\"id\": …}}`, or its endpoint key in place of the id"),
            };
            let o =
                ObjectBuilder::new().schema_type(types(Type::Object)).property("id", id).description(Some(description));
            o.into()
        }
        FieldType::Any => ObjectBuilder::new().schema_type(SchemaType::AnyValue).into(),
    }
}

/// An enum's values, with `null` when the field may be unset (JSON Schema checks `enum` on null too).
fn enumerated(values: impl Iterator<Item = Value>, nullable: bool) -> Vec<Value> {
    let mut out: Vec<Value> = values.collect();
    if nullable {
        out.push(Value::Null);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed() -> Vec<Routed> {
        super::super::routes().finish(false).1
    }

    fn doc_of(routed: &[Routed], admin_auth: bool) -> Value {
        serde_json::to_value(document(routed, admin_auth)).expect("serializes")
    }

    /// Every routed `METHOD template` the document lacks (Kong paths also under the
    /// core-entities prefix).
    fn undescribed(routed: &[Routed], doc: &Value) -> Vec<String> {
        let mut missing = Vec::new();
        for r in routed {
            let mut paths = vec![r.template.clone()];
            if r.surface == Surface::Kong {
                paths.push(if r.template == "/" {
                    CORE_ENTITIES.into()
                } else {
                    format!("{CORE_ENTITIES}{}", r.template)
                });
            }
            for path in paths {
                for op in &r.ops {
                    let method = op.method.as_str().to_ascii_lowercase();
                    if !doc["paths"][&path][&method].is_object() {
                        missing.push(format!("{} {path}", op.method));
                    }
                }
            }
        }
        missing
    }

    #[test]
    fn every_routed_path_and_method_is_described() {
        let routed = routed();
        let doc = doc_of(&routed, false);
        assert_eq!(undescribed(&routed, &doc), Vec::<String>::new());
        let templates: Vec<&str> = routed.iter().map(|r| r.template.as_str()).collect();
        for expected in
            ["/", "/endpoints", "/openapi.json", "/consumers/{consumers}", "/v1/realms", "/v2/control-planes"]
        {
            assert!(templates.contains(&expected), "{expected} not routed");
        }
        // Nothing described that is not routed: Kong paths twice, the others once.
        let kong = routed.iter().filter(|r| r.surface == Surface::Kong).count();
        let described = doc["paths"].as_object().map_or(0, serde_json::Map::len);
        assert_eq!(described, routed.len() + kong);
    }

    /// The check above can fail: a template or a method left out of the document is named.
    #[test]
    fn a_route_left_out_of_the_document_is_reported() {
        let routed = routed();
        let mut partial: Vec<Routed> =
            routed.iter().filter(|r| r.template != "/consumers/{consumers}").cloned().collect();
        for r in partial.iter_mut().filter(|r| r.template == "/v1/realms") {
            r.ops.retain(|op| op.method != Method::POST);
        }
        let doc = doc_of(&partial, false);
        let missing = undescribed(&routed, &doc);
        for expected in [
            "GET /consumers/{consumers}",
            "DELETE /consumers/{consumers}",
            "PUT /v2/control-planes/{id}/core-entities/consumers/{consumers}",
            "POST /v1/realms",
        ] {
            assert!(missing.iter().any(|m| m == expected), "{expected} not reported in {missing:?}");
        }
        assert!(!missing.iter().any(|m| m == "GET /v1/realms"), "{missing:?}");
    }

    /// Routes are added only through `Routes`, so the checks above see them all.
    #[test]
    fn nothing_is_routed_around_the_list() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin");
        let mut routing = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("src/admin") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("readable");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for call in [".route(", ".route_service(", ".nest(", ".nest_service(", ".merge("] {
                routing.extend(code.matches(call).map(|_| format!("{} {call}", path.display())));
            }
        }
        // The one in `Routes::on`.
        assert_eq!(routing.len(), 1, "{routing:#?}");
    }

    #[test]
    fn the_document_is_openapi_3_1_with_unique_operation_ids() {
        let doc = doc_of(&routed(), true);
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "Tollgate Admin API");
        assert_eq!(doc["security"], json!([{"adminToken": []}]));
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let id = op["operationId"].as_str().expect("operationId").to_string();
                assert!(ids.insert(id.clone()), "{method} {path}: {id} twice");
                let params: Vec<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                assert_eq!(params, path_params(path), "{method} {path}");
                assert!(op["responses"]["401"].is_object(), "{method} {path}");
            }
        }
        assert!(doc_of(&routed(), false).get("security").is_none());
    }

    #[test]
    fn a_service_schema_carries_its_enum_bounds_defaults_and_required_fields() {
        let answer = serde_json::to_value(entity_schema(Kind::Service, Usage::Answer).build()).expect("json");
        let protocol = &answer["properties"]["protocol"];
        assert_eq!(protocol["type"], "string");
        assert_eq!(protocol["default"], "http");
        assert_eq!(protocol["enum"], json!(crate::model::typedefs::ALL_PROTOCOLS));
        let port = &answer["properties"]["port"];
        assert_eq!(
            (port["type"].clone(), port["minimum"].clone(), port["maximum"].clone()),
            (json!("integer"), json!(0), json!(65535))
        );
        assert_eq!(port["default"], 80);
        // Unset optional fields are answered as null.
        assert_eq!(answer["properties"]["path"]["type"], json!(["string", "null"]));
        assert_eq!(answer["properties"]["tags"]["uniqueItems"], true);
        assert!(answer["required"].as_array().expect("required").contains(&json!("tls_verify")));

        let input = serde_json::to_value(entity_schema(Kind::Service, Usage::Input).build()).expect("json");
        // `host` must be given; `protocol` and `port` have defaults.
        assert_eq!(input["required"], json!(["host"]));
        assert_eq!(input["properties"]["url"]["type"], json!(["string", "null"]));
        let changes = serde_json::to_value(entity_schema(Kind::Service, Usage::Changes).build()).expect("json");
        assert!(changes.get("required").is_none_or(|r| r.as_array().is_some_and(Vec::is_empty)), "{changes}");
    }

    #[test]
    fn integer_enums_nullable_enums_and_plugin_configs() {
        let route = serde_json::to_value(entity_schema(Kind::Route, Usage::Answer).build()).expect("json");
        assert_eq!(route["properties"]["https_redirect_status_code"]["enum"], json!([426, 301, 302, 307, 308]));
        assert_eq!(route["properties"]["service"]["properties"]["id"]["format"], "uuid");
        let input = serde_json::to_value(entity_schema(Kind::Route, Usage::Input).build()).expect("json");
        // An optional enum may be sent as null.
        assert_eq!(input["properties"]["path_handling"]["enum"], json!(["v0", "v1", null]));
        let plugin = serde_json::to_value(entity_schema(Kind::Plugin, Usage::Input).build()).expect("json");
        let configs = plugin["properties"]["config"]["anyOf"].as_array().expect("anyOf");
        assert!(
            configs.contains(&json!({"$ref": "#/components/schemas/plugins.key-auth.config.input"})),
            "{configs:?}"
        );
        let key_auth = serde_json::to_value(entity_schema(Kind::KeyAuth, Usage::Input).build()).expect("json");
        assert_eq!(key_auth["properties"]["ttl"]["maximum"], 100_000_000);
    }
}
