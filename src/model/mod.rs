//! Entities (one descriptor each), their schemas and validation, and Kong's error-code table.
//! [`prepare`] turns Admin API input into the full record to store (defaults filled, shorthands
//! expanded, PATCH merged, plugin configs checked against their plugin's schema) or lists every
//! violation. No I/O here, and no plugin knowledge: what validation needs of plugins comes through
//! [`PluginCatalog`].

pub mod calendar;
pub mod entities;
pub mod errors;
pub mod schema;
pub mod typedefs;
pub mod upstreams;

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

/// What validating a plugin entity needs to know about plugins; the plugin registry provides it.
pub trait PluginCatalog {
    /// The plugin named `name` (by its current name or an older one), if this build has it.
    fn plugin(&self, name: &str) -> Option<PluginInfo>;
}

/// One plugin as validation sees it.
#[derive(Debug, Clone, Copy)]
pub struct PluginInfo {
    /// Its current name (`key-auth` for `keyauth`).
    pub name: &'static str,
    pub config: &'static schema::Schema,
    /// Kong's `typedefs.no_consumer`: may not be scoped to a consumer.
    pub no_consumer: bool,
    /// Kong's `shorthand_fields` of the config: deprecated fields rewritten before validation.
    pub shorthands: Option<fn(&mut Obj)>,
}

/// Applies form-value coercion using the kind's schema (and the plugin's config schema). For input
/// applied to a stored entity (PATCH), a body that does not name the plugin has its config coerced
/// with the stored plugin's schema, as Kong re-decodes once it knows the name.
pub fn coerce(kind: Kind, input: &mut Obj, stored: Option<&Obj>, plugins: &dyn PluginCatalog) {
    schema::coerce_form(&kind.schema().fields, input);
    if kind == Kind::Plugin {
        let name = input
            .get("name")
            .or_else(|| stored.and_then(|s| s.get("name")))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let (Some(plugin), Some(Value::Object(config))) =
            (name.as_deref().and_then(|n| plugins.plugin(n)), input.get_mut("config"))
        {
            schema::coerce_form(&plugin.config.fields, config);
        }
    }
}

/// Validates input and returns the complete record to store.
pub fn prepare(kind: Kind, mut input: Obj, mode: Mode, plugins: &dyn PluginCatalog) -> Result<Obj, EntityError> {
    let mut early = Vec::new();
    if kind == Kind::Service {
        // Kong expands shorthands before validating; a bad `url` is the only error reported.
        entities::expand_service_url(&mut input).map_err(|v| Violations(vec![v]))?;
    }
    if kind == Kind::Upstream {
        upstreams::apply_shorthands(&mut input);
    }
    if kind == Kind::Target {
        upstreams::normalize_target(&mut input);
    }
    if kind == Kind::Plugin
        && let Some(Value::String(name)) = input.get_mut("name")
        && let Some(plugin) = plugins.plugin(name)
    {
        *name = plugin.name.to_string();
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
            // A plugin renamed (another plugin) takes its config from the body alone: the old
            // plugin's settings mean nothing to the new one.
            let renamed = kind == Kind::Plugin
                && input.get("name").is_some_and(|n| n.as_str() != existing.get("name").and_then(Value::as_str));
            let base = if renamed {
                let mut base = existing.clone();
                base.remove("config");
                std::borrow::Cow::Owned(base)
            } else {
                std::borrow::Cow::Borrowed(existing)
            };
            let mut merged = schema::merge(&base, &input, fields);
            merged.remove("ttl");
            merged
        }
    };
    let mut record = record;
    // Whatever the transport bounded, a record nesting deeper could not be read back once stored.
    if schema::depth(&record) > schema::MAX_DEPTH {
        let message = format!("value nests deeper than {} levels", schema::MAX_DEPTH);
        return Err(Violations(vec![Violation::entity(message)]).into());
    }
    match fields.iter().find(|f| f.name == "updated_at").map(|f| f.auto) {
        Some(schema::Auto::TimestampMs) => {
            record.insert("updated_at".into(), Value::from(crate::clock::now_millis() as f64 / 1000.0));
        }
        Some(_) => {
            record.insert("updated_at".into(), Value::from(now_secs()));
        }
        None => {}
    }
    if kind == Kind::Plugin {
        return prepare_plugin(record, early, plugins);
    }
    match schema::validate(kind.schema(), &record) {
        Ok(mut out) if early.is_empty() => {
            if kind == Kind::CaCertificate {
                set_cert_digest(&mut out);
            }
            Ok(out)
        }
        Ok(_) => Err(Violations(early).into()),
        Err(mut v) => {
            v.0.extend(early);
            Err(v.into())
        }
    }
}

/// Kong's `cert_digest`: the lowercase hex SHA-256 of the CA certificate's DER, set on every write.
fn set_cert_digest(record: &mut Obj) {
    let pem = record.get("cert").and_then(Value::as_str).unwrap_or_default();
    if let Ok(chain) = crate::tls::material::certificates(pem.as_bytes())
        && let Some(der) = chain.first()
    {
        record.insert("cert_digest".into(), Value::String(crate::tls::material::digest(der)));
    }
}

fn prepare_plugin(
    mut record: Obj,
    mut violations: Vec<Violation>,
    plugins: &dyn PluginCatalog,
) -> Result<Obj, EntityError> {
    let name = record.get("name").and_then(Value::as_str).map(str::to_string);
    let def = name.as_deref().and_then(|n| plugins.plugin(n));
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
        Some(Value::Object(m)) => {
            let mut config = m.clone();
            if let Some(shorthands) = def.and_then(|d| d.shorthands) {
                shorthands(&mut config);
            }
            Some(config)
        }
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
        match schema::validate_nested(def.config, &config, "config") {
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

    /// Model tests need no plugin; the plugin paths are tested with the registry in
    /// `snapshot::compile`.
    struct NoPlugins;

    impl PluginCatalog for NoPlugins {
        fn plugin(&self, _name: &str) -> Option<PluginInfo> {
            None
        }
    }

    #[test]
    fn consumer_needs_username_or_custom_id() {
        let err = prepare(Kind::Consumer, Obj::new(), Mode::Create, &NoPlugins).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "schema violation (at least one of these fields must be non-empty: 'custom_id', 'username')"
        );
    }

    /// Found by `snapshot::properties`: a foreign key given by a nested endpoint key was accepted
    /// however deep, and a row nesting past 128 levels could not be read back once stored.
    #[test]
    fn records_nesting_too_deep_are_refused() {
        let nested = |levels: usize| (0..levels).fold(json!("bob"), |v, _| json!({ "username": v }));
        let err = prepare(Kind::KeyAuth, obj(json!({"consumer": nested(200)})), Mode::Create, &NoPlugins)
            .expect_err("too deep");
        assert_eq!(err.to_string(), "schema violation (value nests deeper than 32 levels)");
        let ok =
            prepare(Kind::KeyAuth, obj(json!({"consumer": nested(schema::MAX_DEPTH - 1)})), Mode::Create, &NoPlugins);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn put_keeps_id() {
        let first = prepare(Kind::Consumer, obj(json!({"username": "a"})), Mode::Create, &NoPlugins).expect("valid");
        let second =
            prepare(Kind::Consumer, obj(json!({"username": "b"})), Mode::Replace(Some(first.clone())), &NoPlugins)
                .expect("valid");
        assert_eq!(second["id"], first["id"]);
        assert_eq!(second["username"], json!("b"));
    }
}
