//! Entities, their schemas and validation, and Kong's error-code table. [`prepare`] turns Admin API
//! input into the full record to store (defaults filled, shorthands expanded, PATCH merged, plugin
//! configs checked against their plugin's schema) or lists every violation. No I/O here.

pub mod calendar;
pub mod entities;
pub mod errors;
pub mod schema;
pub mod typedefs;

use serde_json::Value;

use crate::clock::now_secs;
pub use entities::{EntityDef, ForeignKey, Handlers, Kind, OnDelete};
pub use errors::{EntityError, ErrorCode};
use schema::{Obj, Violation, Violations};

/// How the input relates to what is stored.
#[derive(Debug, Clone)]
pub enum Mode {
    /// POST: a new entity.
    Create,
    /// PUT: create or replace; omitted fields take their defaults.
    Replace(Option<Obj>),
    /// PATCH: merge into the stored entity.
    Patch(Obj),
}

/// Applies form-value coercion using the kind's schema (and the plugin's config schema).
pub fn coerce(kind: Kind, input: &mut Obj) {
    coerce_against(kind, input, None);
}

/// [`coerce`] for input applied to a stored entity (PATCH): a body that does not name the plugin has
/// its config coerced with the stored plugin's schema, as Kong re-decodes once it knows the name.
pub fn coerce_against(kind: Kind, input: &mut Obj, stored: Option<&Obj>) {
    schema::coerce_form(&kind.schema().fields, input);
    if kind == Kind::Plugin {
        let name = input
            .get("name")
            .or_else(|| stored.and_then(|s| s.get("name")))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let (Some(def), Some(Value::Object(config))) =
            (name.as_deref().and_then(crate::plugins::find), input.get_mut("config"))
        {
            schema::coerce_form(&(def.config)().fields, config);
        }
    }
}

/// Validates input and returns the complete record to store.
pub fn prepare(kind: Kind, mut input: Obj, mode: Mode) -> Result<Obj, EntityError> {
    let mut early = Vec::new();
    if kind == Kind::Service {
        // Kong expands shorthands before validating; a bad `url` is the only error reported.
        entities::expand_service_url(&mut input).map_err(|v| Violations(vec![v]))?;
    }
    if kind == Kind::Plugin
        && let Some(Value::String(name)) = input.get_mut("name")
    {
        *name = crate::plugins::canonical_name(name).to_string();
    }
    let fields = &kind.schema().fields;
    let record = match &mode {
        Mode::Create => input,
        Mode::Replace(existing) => {
            if let Some(existing) = existing {
                // Kong's upsert keeps the row's id and, like Kong, starts `created_at` anew.
                if let Some(v) = existing.get("id") {
                    input.insert("id".into(), v.clone());
                }
            }
            input
        }
        Mode::Patch(existing) => {
            for field in fields.iter().filter(|f| f.immutable) {
                if let Some(v) = input.get(field.name)
                    && existing.get(field.name) != Some(v)
                {
                    early.push(Violation::field(field.name, "immutable field cannot be updated"));
                }
            }
            let mut merged = schema::merge(existing, &input, fields);
            merged.remove("ttl");
            merged
        }
    };
    let mut record = record;
    if fields.iter().any(|f| f.name == "updated_at") {
        record.insert("updated_at".into(), Value::from(now_secs()));
    }
    if kind == Kind::Plugin {
        return prepare_plugin(record, early);
    }
    match schema::validate(kind.schema(), &record) {
        Ok(out) if early.is_empty() => Ok(out),
        Ok(_) => Err(Violations(early).into()),
        Err(mut v) => {
            v.0.extend(early);
            Err(v.into())
        }
    }
}

fn prepare_plugin(mut record: Obj, mut violations: Vec<Violation>) -> Result<Obj, EntityError> {
    let name = record.get("name").and_then(Value::as_str).map(str::to_string);
    let def = name.as_deref().and_then(crate::plugins::find);
    if let (Some(n), None) = (&name, def) {
        violations.push(Violation::field(
            "name",
            format!("plugin '{n}' not enabled; add it to the 'plugins' configuration property"),
        ));
    }
    if let Some(def) = def {
        if record.get("protocols").is_none_or(Value::is_null) {
            record.insert("protocols".into(), serde_json::json!(typedefs::HTTP_PROTOCOLS));
        }
        if def.no_consumer && record.get("consumer").is_some_and(|c| !c.is_null()) {
            violations.push(Violation::field("consumer", "value must be null"));
        }
    }
    let config_in = match record.get("config") {
        None | Some(Value::Null) => Some(Obj::new()),
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => {
            violations.push(Violation::field("config", "expected a record"));
            None
        }
    };
    let mut out = match schema::validate(Kind::Plugin.schema(), &record) {
        Ok(out) => Some(out),
        Err(v) => {
            violations.extend(v.0);
            None
        }
    };
    if let (Some(def), Some(config)) = (def, config_in) {
        match schema::validate_nested((def.config)(), &config, "config") {
            Ok(config) => {
                if let Some(out) = out.as_mut() {
                    out.insert("config".into(), Value::Object(config));
                }
            }
            Err(v) => violations.extend(v.0),
        }
    }
    match out {
        Some(out) if violations.is_empty() => Ok(out),
        _ => Err(Violations(violations).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Obj {
        match v {
            Value::Object(m) => m,
            _ => Obj::new(),
        }
    }

    #[test]
    fn plugin_config_gets_defaults_and_alias() {
        let p = prepare(Kind::Plugin, obj(json!({"name": "keyauth"})), Mode::Create).expect("valid");
        assert_eq!(p["name"], json!("key-auth"));
        assert_eq!(p["config"]["key_names"], json!(["apikey"]));
        assert_eq!(p["config"]["hide_credentials"], json!(false));
        assert_eq!(p["protocols"], json!(["grpc", "grpcs", "http", "https"]));
        assert_eq!(p["enabled"], json!(true));
    }

    #[test]
    fn unknown_plugin_and_bad_config_are_listed_together() {
        let err = prepare(Kind::Plugin, obj(json!({"name": "nope"})), Mode::Create).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "schema violation (name: plugin 'nope' not enabled; add it to the 'plugins' configuration property)"
        );
        let err = prepare(
            Kind::Plugin,
            obj(json!({"name": "key-auth", "config": {"key_names": ["bad key"], "colour": 1}, "consumer": {"id": "5e4bf2a0-b6a6-4b4e-a4d5-3b1c4dc5b3b0"}})),
            Mode::Create,
        )
        .expect_err("invalid");
        let msg = err.to_string();
        assert!(msg.starts_with("3 schema violations"), "{msg}");
        assert!(msg.contains("config.colour: unknown field"), "{msg}");
        assert!(msg.contains("config.key_names: {\n  \"bad header name 'bad key'"), "{msg}");
        assert!(msg.contains("consumer: value must be null"), "{msg}");
    }

    #[test]
    fn patch_merges_config_and_keeps_immutables() {
        let current = prepare(Kind::Plugin, obj(json!({"name": "key-auth"})), Mode::Create).expect("valid");
        let patched =
            prepare(Kind::Plugin, obj(json!({"config": {"hide_credentials": true}})), Mode::Patch(current.clone()))
                .expect("valid");
        assert_eq!(patched["config"]["hide_credentials"], json!(true));
        assert_eq!(patched["config"]["key_names"], json!(["apikey"]));
        assert_eq!(patched["id"], current["id"]);
        let err = prepare(Kind::Plugin, obj(json!({"name": "other"})), Mode::Patch(current)).expect_err("immutable");
        assert!(err.to_string().contains("name: immutable field cannot be updated"), "{err}");
    }

    #[test]
    fn consumer_needs_username_or_custom_id() {
        let err = prepare(Kind::Consumer, Obj::new(), Mode::Create).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "schema violation (at least one of these fields must be non-empty: 'custom_id', 'username')"
        );
    }

    #[test]
    fn put_keeps_id() {
        let first = prepare(Kind::Consumer, obj(json!({"username": "a"})), Mode::Create).expect("valid");
        let second =
            prepare(Kind::Consumer, obj(json!({"username": "b"})), Mode::Replace(Some(first.clone()))).expect("valid");
        assert_eq!(second["id"], first["id"]);
        assert_eq!(second["username"], json!("b"));
    }
}
