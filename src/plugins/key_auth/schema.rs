//! key-auth's configuration schema (Kong 3.x `kong/plugins/key-auth/schema.lua`).

use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::model::schema::{Check, EntityCheck, Field, Obj, PathSeg, Schema, Type, Violation};
use crate::model::typedefs;

pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema {
        fields: vec![
            Field::new(
                "key_names",
                Type::Array(Box::new(
                    Field::new("key_name", Type::String).check(Check::Custom(typedefs::check_header_name)),
                )),
            )
            .required()
            .default(json!(["apikey"])),
            Field::new("hide_credentials", Type::Boolean).required().default(json!(false)),
            Field::new("anonymous", Type::String),
            Field::new("key_in_header", Type::Boolean).required().default(json!(true)),
            Field::new("key_in_query", Type::Boolean).required().default(json!(true)),
            Field::new("key_in_body", Type::Boolean).required().default(json!(false)),
            Field::new("run_on_preflight", Type::Boolean).required().default(json!(true)),
            Field::new("realm", Type::String),
            Field::new(
                "identity_realms",
                Type::Array(Box::new(Field::new(
                    "identity_realm",
                    Type::Record(vec![
                        Field::new("scope", Type::String).required().check(Check::OneOf(&["cp", "realm"])),
                        Field::new("id", Type::String).check(Check::Custom(typedefs::check_uuid)),
                        Field::new("region", Type::String),
                    ]),
                ))),
            )
            .required()
            .default(json!([{"scope": "cp", "id": null, "region": null}])),
        ],
        checks: vec![EntityCheck::Presence(realm_ids)],
    })
}

/// A `realm` entry names its realm.
fn realm_ids(config: &Obj) -> Vec<Violation> {
    let Some(list) = config.get("identity_realms").and_then(Value::as_array) else { return Vec::new() };
    list.iter()
        .enumerate()
        .filter(|(_, r)| {
            r.get("scope").and_then(Value::as_str) == Some("realm") && r.get("id").is_none_or(Value::is_null)
        })
        .map(|(i, _)| Violation {
            // Kong's field paths count array items from 1.
            path: vec![PathSeg::Field("identity_realms".into()), PathSeg::Index(i + 1), PathSeg::Field("id".into())],
            message: "required field missing".into(),
        })
        .collect()
}
