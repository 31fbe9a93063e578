//! Kong's declarative configuration: a `kong.yml` (or decK) file read as Kong reads it, into the
//! full records to store, every one validated by the same code as the Admin API's writes. The text
//! is JSON or YAML (`yaml`, bounded against alias bombs); `_format_version` 1.1 and 2.1 have their
//! route paths migrated as Kong migrates them; children nest under their parents
//! (`services[].routes[]`, `consumers[].keyauth_credentials[]`, `consumer_groups[].plugins[]`,
//! decK's `consumers[].groups[]`, …); foreign keys are given by name or id; entities without an id
//! get Kong's deterministic one (UUIDv5 of the cache key or endpoint key), so that a file loads
//! with the ids Kong would give it. Errors come back all at once, in Kong's shape (the nested
//! `fields`, its one-line message, the CLI's indented text and `/config`'s flattened list), in
//! Kong's phases: schema errors, then references, then uniqueness.
//!
//! Must not: do I/O (callers read files and write the store), or accept a file in part.

pub mod yaml;

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::model::schema::{Obj, lua_compact};
use crate::model::{EntityError, Kind, Mode, PluginCatalog};

/// The formats Kong 3 reads.
pub const FORMAT_VERSIONS: [&str; 3] = ["1.1", "2.1", "3.0"];

/// Kong's namespace for deterministic entity ids.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0xfd02801f_0957_4a15_a55a_c8d9606f30b5);

/// Each top-level list of a file, and the kind of its entries.
const TABLES: &[(&str, Kind)] = &[
    ("certificates", Kind::Certificate),
    ("snis", Kind::Sni),
    ("ca_certificates", Kind::CaCertificate),
    ("consumers", Kind::Consumer),
    ("consumer_groups", Kind::ConsumerGroup),
    ("upstreams", Kind::Upstream),
    ("targets", Kind::Target),
    ("services", Kind::Service),
    ("routes", Kind::Route),
    ("plugins", Kind::Plugin),
    ("keyauth_credentials", Kind::KeyAuth),
    ("acls", Kind::Acl),
    ("consumer_group_consumers", Kind::GroupMembership),
    // Kong Enterprise exports consumer-group plugins apart; here they are plugins of a group.
    ("consumer_group_plugins", Kind::Plugin),
];

/// The lists an entry may nest, with their kind and the field that points back at the parent.
fn children(kind: Kind) -> &'static [(&'static str, Kind, &'static str)] {
    match kind {
        Kind::Certificate => &[("snis", Kind::Sni, "certificate")],
        Kind::Upstream => &[("targets", Kind::Target, "upstream")],
        Kind::Service => &[("routes", Kind::Route, "service"), ("plugins", Kind::Plugin, "service")],
        Kind::Route => &[("plugins", Kind::Plugin, "route")],
        Kind::Consumer => &[
            ("plugins", Kind::Plugin, "consumer"),
            ("keyauth_credentials", Kind::KeyAuth, "consumer"),
            ("acls", Kind::Acl, "consumer"),
            ("consumer_group_consumers", Kind::GroupMembership, "consumer"),
            // decK's spelling of a consumer's memberships: `groups: [{name: gold}]`.
            ("groups", Kind::GroupMembership, "consumer"),
        ],
        Kind::ConsumerGroup => &[
            ("plugins", Kind::Plugin, "consumer_group"),
            ("consumer_group_plugins", Kind::Plugin, "consumer_group"),
            ("consumer_group_consumers", Kind::GroupMembership, "consumer_group"),
        ],
        _ => &[],
    }
}

/// Kong's `cache_key` of a kind, from which an entry's id is derived when it has none.
fn kong_cache_key(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::KeyAuth => &["key"],
        Kind::Target | Kind::Plugin | Kind::Acl | Kind::GroupMembership => kind.def().cache_key,
        _ => &[],
    }
}

/// A step of the path to an entry in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A file read whole: each entity's full record, parents before children.
#[derive(Debug, Clone)]
pub struct Declared {
    pub format_version: String,
    pub transform: bool,
    pub entities: Vec<(Kind, Obj)>,
    /// What was accepted but means nothing here (`_workspace`).
    pub warnings: Vec<String>,
}

/// Why a file was refused: every error, in Kong's shapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// Kong's `fields`: the file's shape with a message where each error is.
    pub fields: Value,
    /// `/config?flatten_errors=1`'s items, one per entry with errors.
    pub flattened: Vec<Value>,
}

impl Invalid {
    fn top(field: &str, message: impl Into<String>) -> Invalid {
        Invalid { fields: json!({ field: message.into() }), flattened: Vec::new() }
    }

    /// Kong's `message`: `declarative config is invalid: {…}`.
    pub fn message(&self) -> String {
        format!("declarative config is invalid: {}", lua_compact(&self.fields))
    }

    /// The CLI's text: one line per level, `in 'services':`, `- in entry 1 of 'services':`.
    pub fn pretty(&self) -> String {
        let mut out = Vec::new();
        pretty(&self.fields, 0, &mut out);
        out.join("\n")
    }
}

fn pretty(v: &Value, depth: usize, out: &mut Vec<String>) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(m) => {
            for (k, e) in m {
                match e {
                    Value::String(s) => out.push(format!("{pad}in '{k}': {s}")),
                    Value::Array(items) if k != "@entity" => {
                        out.push(format!("{pad}in '{k}':"));
                        for (i, item) in items.iter().enumerate().filter(|(_, i)| !i.is_null()) {
                            match item {
                                Value::String(s) => out.push(format!("{pad}  - in entry {} of '{k}': {s}", i + 1)),
                                other => {
                                    out.push(format!("{pad}  - in entry {} of '{k}':", i + 1));
                                    pretty(other, depth + 2, out);
                                }
                            }
                        }
                    }
                    Value::Array(items) => {
                        for item in items {
                            out.push(format!("{pad}{}", item.as_str().unwrap_or_default()));
                        }
                    }
                    other => {
                        out.push(format!("{pad}in '{k}':"));
                        pretty(other, depth + 1, out);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                pretty(item, depth, out);
            }
        }
        Value::String(s) => out.push(format!("{pad}{s}")),
        other => out.push(format!("{pad}{other}")),
    }
}

/// A text as Kong reads a declarative file: JSON first when the name ends in `json` (or there is no
/// name), YAML when it ends in `yml`/`yaml` (or there is none); `Err` carries Kong's message.
pub fn unserialize(text: &str, filename: Option<&str>) -> Result<Value, String> {
    let lower = filename.map(str::to_ascii_lowercase);
    let json_ok = lower.as_deref().is_none_or(|f| f.ends_with("json"));
    let yaml_ok = lower.as_deref().is_none_or(|f| f.ends_with("yml") || f.ends_with("yaml"));
    if !json_ok && !yaml_ok {
        let name = filename.unwrap_or_default();
        return Err(format!("unknown file type: {name}. (Accepted types: json, yaml)"));
    }
    let mut error = String::new();
    if json_ok {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => return expect_object(v),
            Err(e) => error = e.to_string(),
        }
    }
    if yaml_ok {
        match yaml::to_json(text, yaml::Limits::default()) {
            Ok(v) => return expect_object(v),
            Err(e) => error = e.to_string(),
        }
    }
    Err(format!("failed parsing declarative configuration: {error}"))
}

fn expect_object(v: Value) -> Result<Value, String> {
    if v.is_object() { Ok(v) } else { Err("failed parsing declarative configuration: expected an object".into()) }
}

/// Kong's hash of a configuration: the MD5 of its text, in hex.
pub fn hash(text: &str) -> String {
    use md5::Digest;
    let digest = md5::Md5::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of no configuration at all, as Kong reports it.
pub const EMPTY_HASH: &str = "00000000000000000000000000000000";

/// A text read whole: `unserialize` then `flatten`.
pub fn read(text: &str, filename: Option<&str>, plugins: &dyn PluginCatalog) -> Result<Declared, Invalid> {
    let doc = unserialize(text, filename).map_err(|e| Invalid::top("error", e))?;
    flatten(doc, plugins)
}

/// The entities of a configuration as `POST /config` answers them: by table, then by id.
pub fn by_table(declared: &Declared) -> Value {
    let mut out = Map::new();
    for (kind, record) in &declared.entities {
        let table = out.entry(kind.table()).or_insert_with(|| Value::Object(Map::new()));
        if let (Value::Object(table), Some(id)) = (table, record.get("id").and_then(Value::as_str)) {
            table.insert(id.to_string(), Value::Object(record.clone()));
        }
    }
    Value::Object(out)
}

/// One entry of the file on its way to a record.
#[derive(Debug)]
struct Entry {
    kind: Kind,
    /// Its place in the file (for errors).
    path: Vec<Step>,
    /// As written, without its children, its references made ids; let go once it validates.
    fields: Obj,
    /// The entry it nests under, and the field that points at it.
    parent: Option<(usize, &'static str)>,
    id: Uuid,
}

/// Errors gathered per entry, then shaped as Kong shapes them.
#[derive(Default)]
struct Errors {
    fields: Value,
    flattened: Vec<Value>,
}

impl Errors {
    fn is_empty(&self) -> bool {
        self.fields.as_object().is_none_or(Map::is_empty) && self.flattened.is_empty()
    }

    fn at(&mut self, path: &[Step], leaf: Value) {
        if !self.fields.is_object() {
            self.fields = Value::Object(Map::new());
        }
        let mut node = &mut self.fields;
        for (i, step) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            node = match step {
                Step::Key(k) => {
                    if !node.is_object() {
                        *node = Value::Object(Map::new());
                    }
                    let Some(map) = node.as_object_mut() else { return };
                    map.entry(k.clone()).or_insert(Value::Null)
                }
                Step::Index(n) => {
                    if !node.is_array() {
                        *node = Value::Array(Vec::new());
                    }
                    let Some(list) = node.as_array_mut() else { return };
                    if list.len() <= *n {
                        list.resize(n + 1, Value::Null);
                    }
                    &mut list[*n]
                }
            };
            if last {
                merge(node, leaf);
                return;
            }
        }
    }

    /// An entry's errors: `tree` at its place, and its flattened item (showing `fields`).
    fn entry(&mut self, entry: &Entry, fields: &Obj, tree: Value, items: Vec<Value>) {
        let mut flat = Map::new();
        let table = entry.kind.table();
        flat.insert("entity_type".into(), json!(table.strip_suffix('s').unwrap_or(table)));
        if let Some(name) = fields.get("name").filter(|n| n.is_string()) {
            flat.insert("entity_name".into(), name.clone());
        }
        flat.insert("entity_id".into(), json!(entry.id));
        if let Some(tags) = fields.get("tags").filter(|t| t.is_array()) {
            flat.insert("entity_tags".into(), tags.clone());
        }
        flat.insert("entity".into(), Value::Object(fields.clone()));
        flat.insert("errors".into(), Value::Array(items));
        self.flattened.push(Value::Object(flat));
        self.at(&entry.path, tree);
    }

    fn done(self) -> Result<(), Invalid> {
        if self.is_empty() { Ok(()) } else { Err(Invalid { fields: self.fields, flattened: self.flattened }) }
    }
}

/// Puts `leaf` where `node` is, keeping what is there (an entry's own errors beside its children's).
fn merge(node: &mut Value, leaf: Value) {
    match (node, leaf) {
        (Value::Object(have), Value::Object(add)) => {
            for (k, v) in add {
                merge(have.entry(k).or_insert(Value::Null), v);
            }
        }
        (node, leaf) if node.is_null() => *node = leaf,
        (node, leaf) => *node = leaf,
    }
}

/// Kong's flattened errors of one entry from its violations tree.
fn flat_errors(tree: &Value, prefix: &str, out: &mut Vec<Value>) {
    match tree {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "@entity" {
                    for message in v.as_array().into_iter().flatten() {
                        out.push(json!({"type": "entity", "message": message}));
                    }
                    continue;
                }
                let field = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flat_errors(v, &field, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate().filter(|(_, v)| !v.is_null()) {
                flat_errors(v, &format!("{prefix}.{}", i + 1), out);
            }
        }
        Value::String(s) if prefix.is_empty() => out.push(json!({"type": "entity", "message": s})),
        Value::String(s) => out.push(json!({"type": "field", "field": prefix, "message": s})),
        _ => {}
    }
}

/// Reads a whole declarative configuration: every entry validated and completed, or every error.
pub fn flatten(doc: Value, plugins: &dyn PluginCatalog) -> Result<Declared, Invalid> {
    let Value::Object(mut top) = doc else {
        return Err(Invalid::top("error", "failed parsing declarative configuration: expected an object"));
    };
    let mut errors = Errors::default();
    let format_version = match top.remove("_format_version") {
        None | Some(Value::Null) => {
            errors.at(&[Step::Key("_format_version".into())], json!("required field missing"));
            String::new()
        }
        Some(Value::String(v)) if FORMAT_VERSIONS.contains(&v.as_str()) => v,
        Some(Value::String(_)) => {
            errors.at(&[Step::Key("_format_version".into())], json!("expected one of: 1.1, 2.1, 3.0"));
            String::new()
        }
        Some(_) => {
            errors.at(&[Step::Key("_format_version".into())], json!("expected a string"));
            String::new()
        }
    };
    let transform = match top.remove("_transform") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            errors.at(&[Step::Key("_transform".into())], json!("expected a boolean"));
            true
        }
    };
    let mut warnings = Vec::new();
    if let Some(ws) = top.remove("_workspace") {
        warnings.push(format!("_workspace {ws} is ignored: Tollgate has one workspace"));
    }
    match top.remove("_comment") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(_) => errors.at(&[Step::Key("_comment".into())], json!("expected a string")),
    }
    match top.remove("_ignore") {
        None | Some(Value::Null | Value::Array(_)) => {}
        Some(_) => errors.at(&[Step::Key("_ignore".into())], json!("expected an array")),
    }
    let mut entries: Vec<Entry> = Vec::new();
    for (table, kind) in TABLES {
        match top.remove(*table) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    let path = vec![Step::Key((*table).into()), Step::Index(i)];
                    collect(*kind, item, path, None, &mut entries, &mut errors);
                }
            }
            Some(_) => errors.at(&[Step::Key((*table).into())], json!("expected an array")),
        }
    }
    for key in top.keys() {
        errors.at(&[Step::Key(key.clone())], json!("unknown field"));
    }
    if format_version != "3.0" && !format_version.is_empty() {
        for entry in entries.iter_mut().filter(|e| e.kind == Kind::Route) {
            migrate_paths(&mut entry.fields);
        }
    }
    assign_ids(&mut entries);
    // References are judged once every entry is well formed, as Kong does; their errors are
    // written down now, while each entry still holds what it was given.
    let mut reference_errors = Errors::default();
    for (i, messages) in resolve_references(&mut entries) {
        let items = messages.iter().map(|m| json!({"type": "entity", "message": m})).collect();
        reference_errors.entry(&entries[i], &entries[i].fields, json!(messages), items);
    }
    let mut records = Vec::with_capacity(entries.len());
    for entry in &mut entries {
        match crate::model::prepare(entry.kind, entry.fields.clone(), Mode::Create, plugins) {
            Ok(mut record) => {
                // A file's `updated_at` (an export's) is kept, so that a round trip changes nothing.
                if let Some(at) = entry.fields.get("updated_at").filter(|v| v.is_number()) {
                    record.insert("updated_at".into(), at.clone());
                }
                records.push(record);
                // Its record says the rest: memory holds one copy of a large file, not two.
                entry.fields = Obj::new();
            }
            Err(e) => {
                let tree = match &e {
                    EntityError::Schema(v) => v.fields_tree(),
                    other => json!({"@entity": [other.to_string()]}),
                };
                let mut items = Vec::new();
                flat_errors(&tree, "", &mut items);
                errors.entry(entry, &entry.fields, tree, items);
                records.push(Obj::new());
            }
        }
    }
    errors.done()?;
    reference_errors.done()?;
    let mut errors = Errors::default();
    uniqueness(&entries, &records, &mut errors);
    errors.done()?;
    let mut by_kind: Vec<(Kind, Obj)> = entries.iter().map(|e| e.kind).zip(records).collect();
    let order = |k: Kind| crate::model::Kind::ALL.iter().position(|x| *x == k).unwrap_or(usize::MAX);
    by_kind.sort_by_key(|(k, _)| load_rank(*k).unwrap_or_else(|| order(*k)));
    Ok(Declared { format_version, transform, entities: by_kind, warnings })
}

/// Parents before children (the order in which rows can be written, and exported).
fn load_rank(kind: Kind) -> Option<usize> {
    EXPORT_ORDER.iter().position(|k| *k == kind)
}

/// Adds `item` (and, after it, the children it nests) to `entries`.
fn collect(
    kind: Kind,
    item: Value,
    path: Vec<Step>,
    parent: Option<(usize, &'static str)>,
    entries: &mut Vec<Entry>,
    errors: &mut Errors,
) {
    let mut fields = match item {
        Value::Object(m) => m,
        // decK's `groups: [gold]` names a group alone.
        Value::String(name) if kind == Kind::GroupMembership => {
            Obj::from_iter([("consumer_group".to_string(), json!(name))])
        }
        _ => {
            errors.at(&path, json!("expected a record"));
            return;
        }
    };
    fields.remove("_comment");
    fields.remove("_ignore");
    let mut nested = Vec::new();
    for (key, child, fk) in children(kind) {
        if let Some(list) = fields.remove(*key) {
            nested.push((*key, *child, *fk, list));
        }
    }
    // decK's `groups: [{name: gold}]`: the group by its name (or id).
    if kind == Kind::GroupMembership
        && !fields.contains_key("consumer_group")
        && parent.is_some_and(|(_, fk)| fk == "consumer")
    {
        let group = fields.remove("name").or_else(|| fields.remove("id"));
        fields.retain(|k, _| k == "consumer" || k == "consumer_group" || k == "tags" || k == "created_at");
        if let Some(group) = group {
            fields.insert("consumer_group".into(), group);
        }
    }
    let index = entries.len();
    entries.push(Entry { kind, path: path.clone(), fields, parent, id: Uuid::nil() });
    for (key, child, fk, list) in nested {
        let mut at = path.clone();
        at.push(Step::Key(key.into()));
        match list {
            Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let mut here = at.clone();
                    here.push(Step::Index(i));
                    collect(child, item, here, Some((index, fk)), entries, errors);
                }
            }
            Value::Null => {}
            _ => errors.at(&at, json!("expected an array")),
        }
    }
}

/// Kong's migration of route paths from formats 1.1 and 2.1: a path that is not plain (letters,
/// digits, `.-_~/%`) was a regex, and now says so with `~`.
fn migrate_paths(route: &mut Obj) {
    let Some(Value::Array(paths)) = route.get_mut("paths") else { return };
    for path in paths.iter_mut() {
        if let Value::String(p) = path {
            let plain = p.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_~/%".contains(&b));
            if !plain && !p.starts_with('~') {
                *p = format!("~{p}");
            }
        }
    }
}

/// Gives each entry its id: its own, else Kong's deterministic one (from its cache key, or from
/// its endpoint key when unique), else a random one.
fn assign_ids(entries: &mut [Entry]) {
    for i in 0..entries.len() {
        let parent_id = entries[i].parent.map(|(p, fk)| (entries[p].id, fk));
        let entry = &entries[i];
        let given = entry.fields.get("id").and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
        let id = given.or_else(|| deterministic_id(entry, parent_id)).unwrap_or_else(Uuid::new_v4);
        entries[i].id = id;
        if !entries[i].fields.contains_key("id") {
            entries[i].fields.insert("id".into(), json!(id));
        }
    }
}

fn deterministic_id(entry: &Entry, parent: Option<(Uuid, &str)>) -> Option<Uuid> {
    let table = entry.kind.table();
    let cache_key = kong_cache_key(entry.kind);
    let key = if !cache_key.is_empty() {
        let mut parts = vec![table.to_string(), "*".to_string()];
        for field in cache_key {
            match entry.fields.get(*field) {
                Some(Value::String(s)) => parts.push(s.clone()),
                None | Some(Value::Null) => match parent {
                    Some((id, fk)) if fk == *field => parts.push(id.to_string()),
                    // A required part is missing: no id can be derived.
                    _ if is_required(entry.kind, field) => return None,
                    _ => parts.push(String::new()),
                },
                // Kong skips a part given as a record.
                Some(_) => {}
            }
        }
        parts.join(":")
    } else {
        let endpoint = entry.kind.endpoint_key();
        if endpoint == "id" || !entry.kind.unique_fields().contains(&endpoint) {
            return None;
        }
        entry.fields.get(endpoint)?.as_str()?.to_string()
    };
    let namespace = Uuid::new_v5(&ID_NAMESPACE, table.as_bytes());
    Some(Uuid::new_v5(&namespace, key.as_bytes()))
}

fn is_required(kind: Kind, field: &str) -> bool {
    kind.schema().field(field).is_some_and(|f| f.required)
}

/// Points each entry's foreign keys at the entries they name (by name or id); returns the entries
/// whose references name nothing, with Kong's messages. An unresolved reference is left as a
/// well-formed one, so that the entry's other errors are still found.
fn resolve_references(entries: &mut [Entry]) -> Vec<(usize, Vec<String>)> {
    let mut by_id: HashMap<(Kind, Uuid), usize> = HashMap::new();
    let mut by_key: HashMap<(Kind, String), usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        by_id.entry((e.kind, e.id)).or_insert(i);
        let endpoint = e.kind.endpoint_key();
        if endpoint != "id"
            && let Some(Value::String(k)) = e.fields.get(endpoint)
        {
            by_key.entry((e.kind, k.clone())).or_insert(i);
        }
    }
    let find = |kind: Kind, value: &Value| -> Option<Uuid> {
        let index = match value {
            Value::String(s) => by_key
                .get(&(kind, s.clone()))
                .copied()
                .or_else(|| Uuid::parse_str(s).ok().and_then(|id| by_id.get(&(kind, id)).copied())),
            Value::Object(m) => match m.get("id").and_then(Value::as_str) {
                Some(id) => Uuid::parse_str(id).ok().and_then(|id| by_id.get(&(kind, id)).copied()),
                None => m.values().find_map(|v| v.as_str()).and_then(|k| by_key.get(&(kind, k.to_string())).copied()),
            },
            _ => None,
        };
        index.map(|i| entries[i].id)
    };
    let mut unresolved = Vec::new();
    let mut changes = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let mut messages = Vec::new();
        for fk in e.kind.foreign_keys() {
            if let Some((p, field)) = e.parent
                && field == fk.field
            {
                changes.push((i, fk.field, json!({"id": entries[p].id})));
                continue;
            }
            let value = match e.fields.get(fk.field) {
                None | Some(Value::Null) => continue,
                Some(v) => v,
            };
            match find(fk.kind, value) {
                Some(id) => changes.push((i, fk.field, json!({"id": id}))),
                None => {
                    let shown = match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    messages.push(format!(
                        "invalid reference '{}: {shown}' (no such entry in '{}')",
                        fk.field,
                        fk.kind.table()
                    ));
                    changes.push((i, fk.field, json!({"id": Uuid::nil()})));
                }
            }
        }
        if !messages.is_empty() {
            unresolved.push((i, messages));
        }
    }
    for (i, field, value) in changes {
        entries[i].fields.insert(field.into(), value);
    }
    unresolved
}

/// Kong's uniqueness errors: a second entry with the id, or a unique field's value, of an earlier
/// one of its kind.
fn uniqueness(entries: &[Entry], records: &[Obj], errors: &mut Errors) {
    let mut seen: HashMap<(Kind, &str, String), usize> = HashMap::new();
    for (entry, record) in entries.iter().zip(records) {
        let table = entry.kind.table();
        let mut message = None;
        if seen.insert((entry.kind, "id", entry.id.to_string()), 0).is_some() {
            message = Some(format!(
                "uniqueness violation: '{table}' entity with primary key set to '{}' already declared",
                entry.id
            ));
        }
        for field in entry.kind.unique_fields() {
            let value = match record.get(*field) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            if message.is_none() && seen.insert((entry.kind, field, value.clone()), 0).is_some() {
                message = Some(format!(
                    "uniqueness violation: '{table}' entity with {field} set to '{value}' already declared"
                ));
            }
        }
        if let Some(m) = message {
            errors.entry(entry, record, json!(m), vec![json!({"type": "entity", "message": m})]);
        }
    }
}

/// The file `config init` writes: one of each common entity, as Kong's example does.
pub const EXAMPLE: &str = r#"# A Tollgate (Kong 3) declarative configuration. Apply it with
# `tollgate config db-import kong.yml`, or load it whole with `database = off` and
# `declarative_config = kong.yml`.
_format_version: "3.0"
_transform: true

services:
- name: example-service
  url: http://example.com
  routes:
  - name: example-route
    paths:
    - /
  plugins:
  - name: key-auth

consumers:
- username: example-user
  keyauth_credentials:
  - key: my-key
  plugins:
  - name: rate-limiting
    config:
      policy: local
      second: 5
"#;

/// The order in which `export` lists tables (parents first).
const EXPORT_ORDER: [Kind; 13] = [
    Kind::Certificate,
    Kind::Sni,
    Kind::CaCertificate,
    Kind::Consumer,
    Kind::ConsumerGroup,
    Kind::GroupMembership,
    Kind::KeyAuth,
    Kind::Acl,
    Kind::Upstream,
    Kind::Target,
    Kind::Service,
    Kind::Route,
    Kind::Plugin,
];

/// Kinds in the order `export` writes them.
pub fn export_order() -> &'static [Kind] {
    &EXPORT_ORDER
}

/// Stored records as Kong exports them (`kong config db_export`, `GET /config`): YAML with
/// `_format_version: "3.0"` and `_transform: false`, flat top-level lists parents first, foreign
/// keys as bare ids, nulls written out.
pub fn export(tables: &[(Kind, Vec<Obj>)]) -> String {
    use yaml_rust2::yaml::{Hash, Yaml};
    let mut doc = Hash::new();
    doc.insert(Yaml::String("_format_version".into()), Yaml::String("3.0".into()));
    doc.insert(Yaml::String("_transform".into()), Yaml::Boolean(false));
    for kind in EXPORT_ORDER {
        let rows: Vec<Yaml> = tables
            .iter()
            .filter(|(k, _)| *k == kind)
            .flat_map(|(_, rows)| rows)
            .map(|row| {
                let mut row = row.clone();
                for fk in kind.foreign_keys() {
                    if let Some(id) = row.get(fk.field).and_then(|v| v.get("id")).cloned() {
                        row.insert(fk.field.into(), id);
                    }
                }
                to_yaml(&Value::Object(row))
            })
            .collect();
        if !rows.is_empty() {
            doc.insert(Yaml::String(kind.table().into()), Yaml::Array(rows));
        }
    }
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    // Writing to a String cannot fail.
    let _ = emitter.dump(&Yaml::Hash(doc));
    out.push('\n');
    out
}

fn to_yaml(v: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml).collect()),
        Value::Object(m) => {
            let mut hash = yaml_rust2::yaml::Hash::new();
            for (k, v) in m {
                hash.insert(Yaml::String(k.clone()), to_yaml(v));
            }
            Yaml::Hash(hash)
        }
    }
}

#[cfg(test)]
mod tests;
