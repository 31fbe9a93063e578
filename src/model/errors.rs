//! Kong's table of entity error codes and the typed error every entity operation returns. The Admin API
//! maps [`EntityError`] to its HTTP body in one place (`admin::error`); nothing else formats these.

use serde_json::{Map, Value};

use super::schema::Violations;

/// Kong's DAO error codes (`kong/db/errors.lua`): code, name and HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidPrimaryKey = 1,
    SchemaViolation = 2,
    PrimaryKeyViolation = 3,
    ForeignKeyViolation = 4,
    UniqueViolation = 5,
    NotFound = 6,
    InvalidOffset = 7,
    DatabaseError = 8,
    InvalidSize = 9,
    InvalidOptions = 11,
    OperationUnsupported = 12,
    ForeignKeysUnresolved = 13,
    ReferencedByOthers = 19,
}

impl ErrorCode {
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidPrimaryKey => "invalid primary key",
            ErrorCode::SchemaViolation => "schema violation",
            ErrorCode::PrimaryKeyViolation => "primary key violation",
            ErrorCode::ForeignKeyViolation => "foreign key violation",
            ErrorCode::UniqueViolation => "unique constraint violation",
            ErrorCode::NotFound => "not found",
            ErrorCode::InvalidOffset => "invalid offset",
            ErrorCode::DatabaseError => "database error",
            ErrorCode::InvalidSize => "invalid size",
            ErrorCode::InvalidOptions => "invalid options",
            ErrorCode::OperationUnsupported => "operation unsupported",
            ErrorCode::ForeignKeysUnresolved => "foreign keys unresolved",
            ErrorCode::ReferencedByOthers => "referenced by others",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            ErrorCode::UniqueViolation => 409,
            ErrorCode::NotFound => 404,
            ErrorCode::DatabaseError => 500,
            ErrorCode::OperationUnsupported => 405,
            _ => 400,
        }
    }
}

/// Why an entity operation failed, in the gateway's words.
#[derive(Debug, thiserror::Error)]
pub enum EntityError {
    #[error("{}", .0.message())]
    Schema(Violations),
    /// Another entity already holds this unique value (or combination of values).
    #[error("UNIQUE violation detected on '{{{}}}'", lua_pairs(.0))]
    Unique(Map<String, Value>),
    /// A foreign key points at nothing.
    #[error("the foreign key '{{{}}}' does not reference an existing '{kind}' entity.", lua_pairs(.key))]
    ForeignKey { field: String, kind: &'static str, key: Map<String, Value> },
    /// A foreign key given by an endpoint key (`{"name": …}`) that does not resolve; Kong names the
    /// field and the key it tried (`service.name: …`).
    #[error("foreign key unresolved ({field}.{}: {})", unresolved_key(.key), unresolved_message(.kind, .key))]
    ForeignUnresolved { field: String, kind: &'static str, key: Map<String, Value> },
    /// Deleting this entity would orphan others that must not be cascaded.
    #[error("an existing '{referencing}' entity references this '{kind}' entity")]
    Referenced { referencing: &'static str, kind: &'static str },
    /// Still named by others outside a foreign key (a CA certificate in a service's
    /// `ca_certificates`); the message is Kong's whole sentence.
    #[error("{0}")]
    ReferencedByOthers(String),
    /// An insert reused an existing id.
    #[error("primary key violation on key '{{id=\"{0}\"}}'")]
    PrimaryKey(String),
    /// An update addressed nothing: `{id = …}` or the endpoint key it was given by.
    #[error(
        "could not find the entity with {}'{{{}}}'",
        if .0.contains_key("id") { "primary key " } else { "" },
        lua_pairs(.0)
    )]
    NotFound(Map<String, Value>),
    #[error("'{0}' is not a valid offset: {1}")]
    InvalidOffset(String, &'static str),
    #[error("{0}")]
    InvalidSize(&'static str),
    #[error("invalid option ({0}: {1})")]
    InvalidOptions(&'static str, String),
    #[error("{0}")]
    Unsupported(String),
    #[error("database error: {0}")]
    Database(String),
}

impl EntityError {
    pub fn code(&self) -> ErrorCode {
        match self {
            EntityError::Schema(_) => ErrorCode::SchemaViolation,
            EntityError::Unique(_) => ErrorCode::UniqueViolation,
            EntityError::ForeignKey { .. } | EntityError::Referenced { .. } => ErrorCode::ForeignKeyViolation,
            EntityError::ForeignUnresolved { .. } => ErrorCode::ForeignKeysUnresolved,
            EntityError::ReferencedByOthers(_) => ErrorCode::ReferencedByOthers,
            EntityError::NotFound(_) => ErrorCode::NotFound,
            EntityError::PrimaryKey(_) => ErrorCode::PrimaryKeyViolation,
            EntityError::InvalidOffset(..) => ErrorCode::InvalidOffset,
            EntityError::InvalidSize(_) => ErrorCode::InvalidSize,
            EntityError::InvalidOptions(..) => ErrorCode::InvalidOptions,
            EntityError::Unsupported(_) => ErrorCode::OperationUnsupported,
            EntityError::Database(_) => ErrorCode::DatabaseError,
        }
    }

    /// The `fields` (or `options`) member of Kong's error body, when the error has one.
    pub fn fields(&self) -> Option<(&'static str, Value)> {
        match self {
            EntityError::Schema(v) => Some(("fields", v.fields_tree())),
            EntityError::Unique(fields) | EntityError::NotFound(fields) => {
                Some(("fields", Value::Object(fields.clone())))
            }
            EntityError::ForeignKey { field, key, .. } => {
                let mut m = Map::new();
                m.insert(field.clone(), Value::Object(key.clone()));
                Some(("fields", Value::Object(m)))
            }
            EntityError::ForeignUnresolved { field, kind, key } => {
                let mut by_key = Map::new();
                by_key.insert(unresolved_key(key).to_string(), Value::String(unresolved_message(kind, key)));
                let mut m = Map::new();
                m.insert(field.clone(), Value::Object(by_key));
                Some(("fields", Value::Object(m)))
            }
            EntityError::Referenced { referencing, .. } => {
                let mut m = Map::new();
                m.insert("@referenced_by".into(), Value::String((*referencing).to_string()));
                Some(("fields", Value::Object(m)))
            }
            EntityError::InvalidOptions(opt, msg) => {
                let mut m = Map::new();
                m.insert((*opt).to_string(), Value::String(msg.clone()));
                Some(("options", Value::Object(m)))
            }
            _ => None,
        }
    }

    pub fn unique(field: &str, value: Value) -> EntityError {
        let mut m = Map::new();
        m.insert(field.to_string(), value);
        EntityError::Unique(m)
    }

    pub fn not_found(field: &str, value: Value) -> EntityError {
        let mut m = Map::new();
        m.insert(field.to_string(), value);
        EntityError::NotFound(m)
    }

    pub fn schema(field: &str, message: impl Into<String>) -> EntityError {
        EntityError::Schema(Violations::single(field, message))
    }
}

impl From<Violations> for EntityError {
    fn from(v: Violations) -> Self {
        EntityError::Schema(v)
    }
}

/// The endpoint-key field an unresolved foreign key was given by (`name`).
fn unresolved_key(key: &Map<String, Value>) -> &str {
    key.keys().next().map_or("id", String::as_str)
}

fn unresolved_message(kind: &str, key: &Map<String, Value>) -> String {
    format!("the foreign key cannot be resolved with '{{{}}}' for an existing '{kind}' entity", lua_pairs(key))
}

/// Renders a JSON value the way Kong's Lua error messages print it (`"bob"` quoted, numbers bare).
fn lua_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Object(m) => format!("{{{}}}", lua_pairs(m)),
        other => other.to_string(),
    }
}

fn lua_pairs(m: &Map<String, Value>) -> String {
    m.iter().map(|(k, v)| format!("{k}={}", lua_value(v))).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unique_message_matches_kong() {
        let e = EntityError::unique("username", json!("bob"));
        assert_eq!(e.to_string(), "UNIQUE violation detected on '{username=\"bob\"}'");
        assert_eq!(e.code().status(), 409);
        assert_eq!(e.fields().map(|f| f.1), Some(json!({"username": "bob"})));
    }

    #[test]
    fn foreign_key_message_matches_kong() {
        let mut key = Map::new();
        key.insert("id".into(), json!("123e4567-e89b-12d3-a456-426614174000"));
        let e = EntityError::ForeignKey { field: "service".into(), kind: "services", key };
        assert_eq!(
            e.to_string(),
            "the foreign key '{id=\"123e4567-e89b-12d3-a456-426614174000\"}' does not reference an existing 'services' entity."
        );
    }
}
