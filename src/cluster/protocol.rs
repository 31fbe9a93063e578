//! The wire between a control plane and its data planes: JSON messages over one WebSocket. The
//! control plane sends the whole configuration of the data plane's control plane on connect and
//! after every change, in parts (`config_part`, each a slice of the rows, versioned, with the hash
//! of the whole; a data plane that already runs that hash is not sent it again), compressed as
//! negotiated at connect ([`Encoding`]); the data plane says hello, pings with the hash it runs,
//! and reports each configuration as applied or rejected. Parts keep every message far below
//! `cluster_max_payload` whatever the configuration's size, and let a data plane read a large one
//! part by part.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::model::{EntityError, Kind};
use crate::snapshot::state::{LOAD_ORDER, Row as LoadRow};
use crate::store::Store;

/// The WebSocket path data planes connect to.
pub const OUTLET_PATH: &str = "/v1/outlet";

/// One stored row: its body as stored, the expiry of a credential with a `ttl`, and its id (sent
/// so that a data plane can follow changes by id without reading bodies for it).
#[derive(Debug, Serialize, Deserialize)]
pub struct Row {
    pub b: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i: Option<String>,
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
        /// The configuration version it runs, for deltas.
        #[serde(default)]
        config_version: Option<i64>,
    },
    /// Send the whole configuration: a delta did not follow what it holds or did not apply.
    Resync {
        reason: String,
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

/// Control plane → data plane: one part of a configuration. Every part carries the version and the
/// hash of the whole ([`ConfigDigest`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: i64,
    pub hash: String,
    pub index: usize,
    pub count: usize,
    pub rows: Box<RawValue>,
}

pub const CONFIG_PART: &str = "config_part";

/// How much row text goes in one part at most (a row larger than that travels alone): a MiB, or
/// half of `cluster_max_payload` when that is smaller, so that a part inflated stays within it.
pub fn part_text(max_payload: usize) -> usize {
    (1 << 20).min(max_payload / 2)
}

/// The hash of a configuration: Kong's 32 hex digits, of the wrapping sum of a 128-bit hash of each
/// row (its table, body and expiry). A sum does not depend on how rows are cut into parts or
/// ordered, and a row added, changed or removed moves it by that row's hash alone; an empty
/// configuration hashes to 32 zeros, as in Kong.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDigest(u128);

impl ConfigDigest {
    pub fn row_hash(table: &str, body: &str, expires_at: Option<i64>) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(table.as_bytes());
        h.update(&[0]);
        h.update(body.as_bytes());
        h.update(&[0]);
        h.update(&expires_at.unwrap_or(i64::MIN).to_le_bytes());
        h.digest128()
    }

    pub fn add(&mut self, table: &str, row: &Row) {
        self.add_hash(ConfigDigest::row_hash(table, row.b.get(), row.e));
    }

    pub fn add_hash(&mut self, h: u128) {
        self.0 = self.0.wrapping_add(h);
    }

    pub fn remove(&mut self, h: u128) {
        self.0 = self.0.wrapping_sub(h);
    }

    pub fn hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

/// A configuration ready to send: its parts' message texts, made once for every data plane.
#[derive(Debug)]
pub struct Published {
    pub version: i64,
    pub hash: String,
    pub parts: Vec<String>,
    /// Each row's hash by table and id (what later changes move the hash by).
    pub rows: HashMap<(Kind, String), u128>,
}

/// Kong-style 32-hex hash of a configuration's text.
pub fn config_hash(config: &str) -> String {
    let digest = Sha256::digest(config.as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Reads control plane `cp`'s whole configuration from the store, in parts of at most
/// `part_text` of rows each ([`part_text`]).
pub async fn export(store: &Store, cp: &str, part_text: usize) -> Result<Published, EntityError> {
    // One read of one moment: the version and the rows (so the hash) agree, which deltas rely on.
    let mut store = store.read_snapshot().await?;
    let version = store.version().await?;
    let mut texts: Vec<String> = Vec::new();
    let mut part: ConfigRows = BTreeMap::new();
    let mut size = 0;
    let mut digest = ConfigDigest::default();
    let mut row_hashes = HashMap::new();
    let close = |part: &mut ConfigRows, texts: &mut Vec<String>| -> Result<(), EntityError> {
        texts.push(serde_json::to_string(&*part).map_err(|e| EntityError::Database(e.to_string()))?);
        part.clear();
        Ok(())
    };
    for kind in LOAD_ORDER {
        let mut rows = Vec::new();
        let mut bad = None;
        store
            .for_each_row(cp, kind, |id, body, e| match RawValue::from_string(body.to_string()) {
                Ok(b) => rows.push(Row { b, e, i: Some(id.to_string()) }),
                Err(err) => bad = Some(err.to_string()),
            })
            .await?;
        if let Some(err) = bad {
            return Err(EntityError::Database(format!("corrupt {} row: {err}", kind.table())));
        }
        for row in rows {
            let h = ConfigDigest::row_hash(kind.table(), row.b.get(), row.e);
            digest.add_hash(h);
            if let Some(id) = &row.i {
                row_hashes.insert((kind, id.clone()), h);
            }
            let len = row.b.get().len() + 16;
            if size > 0 && size + len > part_text {
                close(&mut part, &mut texts)?;
                size = 0;
            }
            size += len;
            part.entry(kind.table().to_string()).or_default().push(row);
        }
    }
    if size > 0 || texts.is_empty() {
        close(&mut part, &mut texts)?;
    }
    let hash = digest.hex();
    let count = texts.len();
    let parts = texts
        .into_iter()
        .enumerate()
        .map(|(index, rows)| {
            let rows = RawValue::from_string(rows).map_err(|e| EntityError::Database(e.to_string()))?;
            let part = ConfigPart { kind: CONFIG_PART.into(), version, hash: hash.clone(), index, count, rows };
            serde_json::to_string(&part).map_err(|e| EntityError::Database(e.to_string()))
        })
        .collect::<Result<Vec<String>, EntityError>>()?;
    Ok(Published { version, hash, parts, rows: row_hashes })
}

/// Control plane → data plane: what changed since the configuration the data plane runs
/// (`from_version`): rows written, as they are now, and ids deleted, by table; with the version
/// and hash of the whole it leads to. A data plane that does not hold `from_version`, or whose
/// hash after the delta differs, asks for the whole configuration ([`ToControlPlane::Resync`]).
#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigDelta {
    #[serde(rename = "type")]
    pub kind: String,
    pub from_version: i64,
    pub version: i64,
    pub hash: String,
    pub tables: BTreeMap<String, TableDelta>,
    /// `(credential id, key it had)`: keys the data plane drops from its index.
    #[serde(default)]
    pub stale_keys: Vec<(String, String)>,
}

pub const CONFIG_DELTA: &str = "config_delta";

/// A delta's rows of one table.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TableDelta {
    #[serde(default)]
    pub upserts: Vec<Row>,
    #[serde(default)]
    pub deletes: Vec<String>,
}

/// A delta touching more entities than this is not made: the whole configuration is sent.
pub const MAX_DELTA_ENTITIES: usize = 10_000;

/// The delta of control plane `cp` from `from` to `to` (the version and `hash` of the configuration
/// published), from the store's change log: `None` when the log does not reach back to `from`, no
/// logged change explains the difference (a whole import), or it touches too many entities; the
/// data plane then gets the whole configuration.
pub async fn delta(store: &Store, cp: &str, from: i64, to: i64, hash: &str) -> Result<Option<String>, EntityError> {
    if from >= to {
        return Ok(None);
    }
    // The rows are read as they are now, which may be after `to`: one read of one moment, and no
    // delta when an entity it touches was written again since `to` (its row would not be `to`'s).
    let mut store = store.read_snapshot().await?;
    let Some((changes, _)) = store.changes_since(from).await? else { return Ok(None) };
    let mut last: BTreeMap<(Kind, &str), crate::store::ChangeOp> = BTreeMap::new();
    let mut stale_keys = Vec::new();
    for c in changes.iter().filter(|c| c.cp == cp && c.version <= to) {
        let t = &c.touched;
        last.insert((t.kind, t.id.as_str()), t.op);
        if let (Kind::KeyAuth, Some(key)) = (t.kind, &t.previous_key) {
            stale_keys.push((t.id.clone(), key.clone()));
        }
    }
    let rewritten = changes.iter().filter(|c| c.cp == cp && c.version > to);
    if last.is_empty()
        || last.len() > MAX_DELTA_ENTITIES
        || rewritten.clone().any(|c| last.contains_key(&(c.touched.kind, c.touched.id.as_str())))
    {
        return Ok(None);
    }
    let mut tables: BTreeMap<String, TableDelta> = BTreeMap::new();
    let mut upserts: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
    for ((kind, id), op) in last {
        match op {
            crate::store::ChangeOp::Upsert => upserts.entry(kind).or_default().push(id.to_string()),
            crate::store::ChangeOp::Delete => {
                tables.entry(kind.table().to_string()).or_default().deletes.push(id.to_string());
            }
        }
    }
    for (kind, ids) in upserts {
        let rows = store.bodies(kind, &ids).await?;
        let list = &mut tables.entry(kind.table().to_string()).or_default().upserts;
        for (id, body, e) in rows {
            let b = RawValue::from_string(body).map_err(|e| EntityError::Database(e.to_string()))?;
            list.push(Row { b, e, i: Some(id) });
        }
    }
    let message = ConfigDelta {
        kind: CONFIG_DELTA.into(),
        from_version: from,
        version: to,
        hash: hash.to_string(),
        tables,
        stale_keys,
    };
    serde_json::to_string(&message).map(Some).map_err(|e| EntityError::Database(e.to_string()))
}

/// Moves a published configuration's hash to the store's present state by what changed since
/// `version` (rows read in one consistent read); `None` when the change log does not reach back
/// (the caller exports the whole again). Gives the version reached and whether control plane `cp`
/// changed.
pub async fn advance(
    store: &Store,
    cp: &str,
    version: i64,
    digest: &mut ConfigDigest,
    rows: &mut HashMap<(Kind, String), u128>,
) -> Result<Option<(i64, bool)>, EntityError> {
    let mut store = store.read_snapshot().await?;
    let Some((changes, to)) = store.changes_since(version).await? else { return Ok(None) };
    let mut last: BTreeMap<(Kind, &str), crate::store::ChangeOp> = BTreeMap::new();
    for c in changes.iter().filter(|c| c.cp == cp) {
        last.insert((c.touched.kind, c.touched.id.as_str()), c.touched.op);
    }
    let mut upserts: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
    for ((kind, id), op) in &last {
        if let Some(old) = rows.remove(&(*kind, id.to_string())) {
            digest.remove(old);
        }
        if *op == crate::store::ChangeOp::Upsert {
            upserts.entry(*kind).or_default().push(id.to_string());
        }
    }
    for (kind, ids) in upserts {
        for (id, body, e) in store.bodies(kind, &ids).await? {
            let h = ConfigDigest::row_hash(kind.table(), &body, e);
            digest.add_hash(h);
            rows.insert((kind, id), h);
        }
    }
    Ok(Some((to, !last.is_empty())))
}

/// How configuration messages travel: as text, or compressed (binary messages). A data plane says
/// what it takes in its upgrade request (`Accept-Encoding: zstd, gzip`); the control plane picks
/// the first it knows and says so in its answer ([`ENCODING_HEADER`]); without an answer, text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Zstd,
    Gzip,
}

/// The control plane's answer naming the encoding of configuration messages.
pub const ENCODING_HEADER: &str = "tollgate-config-encoding";

/// What a data plane offers, in its order of preference.
pub const OFFERED_ENCODINGS: &str = "zstd, gzip";

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    pub fn parse(name: &str) -> Option<Encoding> {
        match name.trim().to_ascii_lowercase().as_str() {
            "identity" => Some(Encoding::Identity),
            "zstd" => Some(Encoding::Zstd),
            "gzip" => Some(Encoding::Gzip),
            _ => None,
        }
    }

    /// The first encoding of an `Accept-Encoding` list this side knows (`q` values are ignored:
    /// the list's order is the preference), else text.
    pub fn negotiate(accept: &str) -> Encoding {
        accept
            .split(',')
            .filter_map(|e| Encoding::parse(e.split(';').next().unwrap_or("")))
            .next()
            .unwrap_or(Encoding::Identity)
    }

    /// Compresses a message (zstd level 3; gzip level 4).
    pub fn encode(self, text: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Identity => Ok(text.to_vec()),
            Encoding::Zstd => zstd::bulk::compress(text, 3).map_err(|e| e.to_string()),
            Encoding::Gzip => {
                use std::io::Write as _;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(4));
                gz.write_all(text).map_err(|e| e.to_string())?;
                gz.finish().map_err(|e| e.to_string())
            }
        }
    }

    /// Inflates a message, refusing one that would inflate past `max` bytes before inflating
    /// more than that (a decompression bomb costs `max` bytes at most).
    pub fn decode(self, data: &[u8], max: usize) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let limit = max as u64 + 1;
        let read = match self {
            Encoding::Identity => data.take(limit).read_to_end(&mut out),
            Encoding::Zstd => {
                zstd::stream::read::Decoder::new(data).map_err(|e| e.to_string())?.take(limit).read_to_end(&mut out)
            }
            Encoding::Gzip => flate2::read::GzDecoder::new(data).take(limit).read_to_end(&mut out),
        };
        read.map_err(|e| format!("undecodable {} message: {e}", self.name()))?;
        if out.len() > max {
            return Err(format!("a configuration message inflates past cluster_max_payload ({max} bytes)"));
        }
        Ok(out)
    }
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
pub(crate) mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let raw = RawValue::from_string(r#"{"consumers":[{"b":{"id":"x"}}]}"#.to_string()).expect("raw");
        let part = ConfigPart { kind: CONFIG_PART.into(), version: 3, hash: "h".into(), index: 0, count: 1, rows: raw };
        let text = serde_json::to_string(&part).expect("json");
        assert!(text.starts_with(r#"{"type":"config_part","version":3"#), "{text}");
        let ConfigPart { rows, .. } = serde_json::from_str(&text).expect("parse");
        let rows: ConfigRows = serde_json::from_str(rows.get()).expect("rows");
        let ordered = rows_in_load_order(&rows).expect("known tables");
        assert_eq!(ordered.len(), 1);
        assert_eq!(ordered[0].0, Kind::Consumer);
        let bad: ConfigRows = serde_json::from_str(r#"{"widgets":[]}"#).expect("rows");
        assert!(rows_in_load_order(&bad).is_err());
        let ping = serde_json::to_string(&ToControlPlane::Ping { config_hash: None }).expect("json");
        assert_eq!(ping, r#"{"type":"ping","config_hash":null}"#);
        assert_eq!(config_hash("").len(), 32);
        let row = |body: &str| Row { b: RawValue::from_string(body.to_string()).expect("raw"), e: None, i: None };
        let (a, b) = (row(r#"{"id":"a"}"#), row(r#"{"id":"b"}"#));
        let (mut ab, mut ba) = (ConfigDigest::default(), ConfigDigest::default());
        ab.add("routes", &a);
        ab.add("routes", &b);
        ba.add("routes", &b);
        ba.add("routes", &a);
        assert_eq!(ab, ba, "the hash does not depend on the rows' order");
        assert_eq!(ConfigDigest::default().hex(), "0".repeat(32), "an empty configuration, as in Kong");
        let mut other = ConfigDigest::default();
        other.add("services", &a);
        other.add("routes", &b);
        assert_ne!(ab, other, "a row's table counts");
    }

    #[test]
    fn the_first_offered_encoding_known_is_chosen() {
        assert_eq!(Encoding::negotiate("zstd, gzip"), Encoding::Zstd);
        assert_eq!(Encoding::negotiate("br;q=1, GZIP;q=0.5"), Encoding::Gzip);
        assert_eq!(Encoding::negotiate("br"), Encoding::Identity);
        assert_eq!(Encoding::negotiate(""), Encoding::Identity);
    }

    #[test]
    fn messages_compress_and_inflate_in_every_encoding() {
        let text = r#"{"type":"config_part","rows":{}}"#.repeat(1000);
        for e in [Encoding::Identity, Encoding::Zstd, Encoding::Gzip] {
            let packed = e.encode(text.as_bytes()).expect("encode");
            if e != Encoding::Identity {
                assert!(packed.len() < text.len() / 10, "{e:?} compresses repeated text");
            }
            assert_eq!(e.decode(&packed, text.len()).expect("decode"), text.as_bytes());
            assert!(e.decode(&packed, text.len() - 1).is_err(), "{e:?}: one byte over the bound is refused");
        }
        assert!(Encoding::Zstd.decode(b"not zstd", 100).is_err());
        assert!(Encoding::Gzip.decode(b"not gzip", 100).is_err());
    }

    #[test]
    fn a_decompression_bomb_is_refused_without_inflating_it_whole() {
        // 64 MiB of zeros, a few tens of kilobytes compressed, against a bound of 1 MiB: decoding
        // stops one byte past the bound.
        let zeros = vec![0u8; 64 << 20];
        for e in [Encoding::Zstd, Encoding::Gzip] {
            let bomb = match e {
                Encoding::Zstd => zstd::bulk::compress(&zeros, 3).expect("zstd"),
                _ => {
                    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    std::io::Write::write_all(&mut g, &zeros).expect("write");
                    g.finish().expect("finish")
                }
            };
            assert!(bomb.len() < 1 << 20, "{e:?}: {} bytes", bomb.len());
            let err = e.decode(&bomb, 1 << 20).expect_err("refused");
            assert!(err.contains("inflates past cluster_max_payload"), "{err}");
        }
    }

    pub(crate) async fn store(dir: &std::path::Path) -> Store {
        let mut settings = crate::config::load(None).expect("default settings");
        settings.prefix = dir.to_path_buf();
        settings.database = crate::config::Database::Sqlite;
        Store::open(&settings).await.expect("open")
    }

    pub(crate) fn consumer(n: u32, name: &str) -> crate::model::schema::Obj {
        let v = serde_json::json!({"id": format!("00000000-0000-4000-8000-{n:012}"), "username": name,
            "custom_id": null, "tags": null, "created_at": 1, "updated_at": 1});
        v.as_object().cloned().expect("object")
    }

    #[tokio::test]
    async fn deltas_follow_the_change_log_and_give_way_to_the_whole_when_they_cannot() {
        use crate::store::WriteOp;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let cp = "cp";
        let first = export(&store, cp, 1 << 20).await.expect("export");
        store.write(cp, Kind::Consumer, WriteOp::Insert, consumer(1, "one"), None).await.expect("write");
        store.write(cp, Kind::Consumer, WriteOp::Insert, consumer(2, "two"), None).await.expect("write");
        let second = export(&store, cp, 1 << 20).await.expect("export");
        assert_eq!(second.version, first.version + 2);

        // What changed in between, leading to the second's hash from the first's rows.
        let text = delta(&store, cp, first.version, second.version, &second.hash).await.expect("read").expect("delta");
        let d: ConfigDelta = serde_json::from_str(&text).expect("delta");
        assert_eq!((d.from_version, d.version), (first.version, second.version));
        let mut digest = ConfigDigest::default();
        first.rows.values().for_each(|h| digest.add_hash(*h));
        for row in &d.tables["consumers"].upserts {
            digest.add("consumers", row);
        }
        assert_eq!(digest.hex(), second.hash, "the delta moves the hash to the second's exactly");

        // A control plane behind the data plane (restored from an older backup): the whole.
        assert!(delta(&store, cp, second.version + 5, second.version, &second.hash).await.expect("read").is_none());
        // A version no store has (a data plane says what it likes): the whole, no overflow.
        assert!(delta(&store, cp, i64::MIN, second.version, &second.hash).await.expect("read").is_none());
        // Another control plane's changes only: nothing to say in a delta.
        assert!(delta(&store, "other", first.version, second.version, "h").await.expect("read").is_none());

        // An entity of the delta written again since: its row now is not the second's, so no delta.
        store.write(cp, Kind::Consumer, WriteOp::Upsert, consumer(1, "uno"), None).await.expect("write");
        assert!(delta(&store, cp, first.version, second.version, &second.hash).await.expect("read").is_none());

        // The publisher's side: the second's hash moved by what changed since equals a whole export.
        let mut rows = second.rows.clone();
        let mut digest = ConfigDigest::default();
        rows.values().for_each(|h| digest.add_hash(*h));
        let reached = advance(&store, cp, second.version, &mut digest, &mut rows).await.expect("read");
        let third = export(&store, cp, 1 << 20).await.expect("export");
        assert_eq!(reached, Some((third.version, true)));
        assert_eq!(digest.hex(), third.hash);
        assert_eq!(rows, third.rows);
    }
}
