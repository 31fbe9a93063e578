//! The wire between a control plane and its data planes: JSON text messages over one WebSocket. The
//! control plane sends the whole configuration of the data plane's control plane on connect and
//! after every change (`reconfigure`, versioned, with a hash; a data plane that already runs that
//! hash is not sent it again); the data plane says hello, pings with the hash it runs, and reports
//! each configuration as applied or rejected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::model::{EntityError, Kind};
use crate::snapshot::state::{LOAD_ORDER, Row as LoadRow};
use crate::store::Store;

/// The WebSocket path data planes connect to.
pub const OUTLET_PATH: &str = "/v1/outlet";

/// One stored row: its body as stored, and the expiry of a credential with a `ttl`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    pub b: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<i64>,
}

/// A control plane's configuration: rows by table name.
pub type ConfigRows = BTreeMap<String, Vec<Row>>;

/// Control plane → data plane: `{"type": "reconfigure", "version", "hash", "config"}`. A struct,
/// not a tagged enum, so the configuration stays raw text (serde buffers tagged enums' content).
#[derive(Debug, Serialize, Deserialize)]
pub struct ToDataPlane {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: i64,
    pub hash: String,
    pub config: Box<RawValue>,
}

pub const RECONFIGURE: &str = "reconfigure";

/// Control plane → data plane messages other than configurations.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice {
    /// The answer to a `lookup`: the realm consumer the key belongs to, or none.
    LookupResult { request: u64, found: Option<RealmConsumer>, negative_ttl: u64 },
    /// Realm consumers or keys changed: drop every cached lookup.
    Purge,
}

/// A realm consumer as a data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealmConsumer {
    pub id: String,
    pub username: String,
    pub custom_id: Option<String>,
    pub realm_id: String,
    /// The key that matched (`X-Credential-Identifier`).
    pub key_id: String,
    /// The realm's groups and the consumer's own, by name.
    pub groups: Vec<String>,
    /// Seconds the answer may be cached (the realm's `ttl`).
    pub ttl: u64,
}

/// Only the `type` of a message, to route it.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
}

/// Data plane → control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToControlPlane {
    Hello {
        node_id: String,
        hostname: String,
        version: String,
        config_hash: Option<String>,
    },
    Ping {
        config_hash: Option<String>,
    },
    Applied {
        hash: String,
    },
    Rejected {
        hash: String,
        error: String,
    },
    /// Which realm consumer holds this key (SHA-256 of it), trying `realms` in order.
    Lookup {
        request: u64,
        key_hash: String,
        realms: Vec<String>,
    },
}

/// A configuration ready to send: its message text is built once for every data plane.
#[derive(Debug)]
pub struct Published {
    pub version: i64,
    pub hash: String,
    pub message: String,
}

/// Kong-style 32-hex hash of a configuration's text.
pub fn config_hash(config: &str) -> String {
    let digest = Sha256::digest(config.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Reads control plane `cp`'s whole configuration from the store.
pub async fn export(store: &Store, cp: &str) -> Result<Published, EntityError> {
    let version = store.version().await?;
    let mut rows: ConfigRows = BTreeMap::new();
    for kind in LOAD_ORDER {
        let list = rows.entry(kind.table().to_string()).or_default();
        let mut bad = None;
        store
            .for_each_body(cp, kind, |body, e| match RawValue::from_string(body.to_string()) {
                Ok(b) => list.push(Row { b, e }),
                Err(err) => bad = Some(err.to_string()),
            })
            .await?;
        if let Some(err) = bad {
            return Err(EntityError::Database(format!("corrupt {} row: {err}", kind.table())));
        }
    }
    let config = serde_json::to_string(&rows).map_err(|e| EntityError::Database(e.to_string()))?;
    let hash = config_hash(&config);
    let raw = RawValue::from_string(config).map_err(|e| EntityError::Database(e.to_string()))?;
    let message =
        serde_json::to_string(&ToDataPlane { kind: RECONFIGURE.into(), version, hash: hash.clone(), config: raw })
            .map_err(|e| EntityError::Database(e.to_string()))?;
    Ok(Published { version, hash, message })
}

/// The rows of a received configuration, in the order a data plane loads them; unknown tables are
/// an error (a control plane newer than this data plane).
pub fn rows_in_load_order(rows: &ConfigRows) -> Result<Vec<(Kind, LoadRow<'_>)>, String> {
    if let Some(unknown) = rows.keys().find(|t| Kind::from_table(t).is_none()) {
        return Err(format!("unknown entity table '{unknown}'"));
    }
    let mut out = Vec::new();
    for kind in LOAD_ORDER {
        for row in rows.get(kind.table()).map(Vec::as_slice).unwrap_or_default() {
            out.push((kind, LoadRow { id: None, body: row.b.get(), expires_at: row.e }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let raw = RawValue::from_string(r#"{"consumers":[{"b":{"id":"x"}}]}"#.to_string()).expect("raw");
        let msg = ToDataPlane { kind: RECONFIGURE.into(), version: 3, hash: "h".into(), config: raw };
        let text = serde_json::to_string(&msg).expect("json");
        assert!(text.starts_with(r#"{"type":"reconfigure","version":3"#), "{text}");
        let ToDataPlane { config, .. } = serde_json::from_str(&text).expect("parse");
        let rows: ConfigRows = serde_json::from_str(config.get()).expect("rows");
        let ordered = rows_in_load_order(&rows).expect("known tables");
        assert_eq!(ordered.len(), 1);
        assert_eq!(ordered[0].0, Kind::Consumer);
        let bad: ConfigRows = serde_json::from_str(r#"{"widgets":[]}"#).expect("rows");
        assert!(rows_in_load_order(&bad).is_err());
        let ping = serde_json::to_string(&ToControlPlane::Ping { config_hash: None }).expect("json");
        assert_eq!(ping, r#"{"type":"ping","config_hash":null}"#);
        assert_eq!(config_hash("").len(), 32);
    }
}
