//! key-auth's configuration schema (Kong 3.x `kong/plugins/key-auth/schema.lua`).

use std::sync::OnceLock;

use serde_json::json;

use crate::model::schema::{Check, Field, Schema, Type};
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
        ],
        checks: vec![],
    })
}
