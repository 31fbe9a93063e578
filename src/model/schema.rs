//! A small schema language in the spirit of Kong's (`kong/db/schema`): typed fields with defaults,
//! field checks and entity checks. It validates Admin API input, fills defaults, coerces form values and
//! reports every violation with Kong's wording. It knows nothing about storage or HTTP.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

pub type Obj = Map<String, Value>;

/// What a field holds.
#[derive(Debug, Clone)]
pub enum Type {
    String,
    Integer,
    Number,
    Boolean,
    Array(Box<Field>),
    Set(Box<Field>),
    Map(Box<Field>, Box<Field>),
    Record(Vec<Field>),
    /// A reference to another entity kind (`{"id": …}`, or by its endpoint key before resolution).
    Foreign(&'static str),
    /// Any JSON value; validated by the owner (plugin `config`).
    Any,
}

/// Values the store fills in when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auto {
    No,
    Uuid,
    Timestamp,
    /// Seconds with milliseconds, as a number (Kong's `auto_timestamp_ms`, on targets).
    TimestampMs,
    /// 32 random alphanumerics (key-auth keys).
    Key,
}

/// A check applied to a non-null value.
#[derive(Debug, Clone)]
pub enum Check {
    Between(i64, i64),
    GreaterThan(f64),
    /// An upper bound where Kong has none (documented with the field).
    AtMost(f64),
    OneOf(&'static [&'static str]),
    OneOfInt(&'static [i64]),
    LenMin(usize),
    Custom(fn(&Value) -> Result<(), String>),
}

/// One field of a record.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: &'static str,
    pub ty: Type,
    pub required: bool,
    pub default: Value,
    pub auto: Auto,
    pub immutable: bool,
    pub checks: Vec<Check>,
}

impl Field {
    pub fn new(name: &'static str, ty: Type) -> Field {
        Field { name, ty, required: false, default: Value::Null, auto: Auto::No, immutable: false, checks: Vec::new() }
    }
    pub fn required(mut self) -> Field {
        self.required = true;
        self
    }
    pub fn default(mut self, v: Value) -> Field {
        self.default = v;
        self
    }
    pub fn auto(mut self, a: Auto) -> Field {
        self.auto = a;
        self
    }
    pub fn immutable(mut self) -> Field {
        self.immutable = true;
        self
    }
    pub fn check(mut self, c: Check) -> Field {
        self.checks.push(c);
        self
    }
}

/// A check over the whole record.
#[derive(Debug, Clone)]
pub enum EntityCheck {
    /// Kong's `at_least_one_of`; like Kong, it also runs when fields are missing or invalid.
    AtLeastOneOf(&'static [&'static str]),
    /// Returns entity-level messages (`@entity`) and field messages; runs once every field is valid.
    Custom(fn(&Obj) -> Vec<Violation>),
    /// A check on which fields are set (Kong's `conditional_at_least_one_of`): runs even when fields
    /// are missing or invalid, and sees each field as given (or its default).
    Presence(fn(&Obj) -> Vec<Violation>),
}

/// An entity's or a plugin config's schema.
#[derive(Debug, Clone)]
pub struct Schema {
    pub fields: Vec<Field>,
    pub checks: Vec<EntityCheck>,
}

impl Schema {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

impl Schema {
    /// Kong's schema JSON (`GET /schemas/...`): `{"fields": [{"name": {"type": …}}, …]}`.
    pub fn to_kong_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("fields".into(), Value::Array(self.fields.iter().map(field_json).collect()));
        Value::Object(out)
    }
}

fn field_json(f: &Field) -> Value {
    let mut m = Map::new();
    m.insert(f.name.to_string(), type_json(f));
    Value::Object(m)
}

fn type_json(f: &Field) -> Value {
    let mut m = Map::new();
    let ty = match &f.ty {
        Type::String => "string",
        Type::Integer => "integer",
        Type::Number => "number",
        Type::Boolean => "boolean",
        Type::Array(e) => {
            m.insert("elements".into(), type_json(e));
            "array"
        }
        Type::Set(e) => {
            m.insert("elements".into(), type_json(e));
            "set"
        }
        Type::Map(k, v) => {
            m.insert("keys".into(), type_json(k));
            m.insert("values".into(), type_json(v));
            "map"
        }
        Type::Record(fields) => {
            m.insert("fields".into(), Value::Array(fields.iter().map(field_json).collect()));
            "record"
        }
        Type::Foreign(r) => {
            m.insert("reference".into(), Value::String((*r).to_string()));
            "foreign"
        }
        Type::Any => "record",
    };
    m.insert("type".into(), Value::String(ty.into()));
    if f.required {
        m.insert("required".into(), Value::Bool(true));
    }
    if !f.default.is_null() {
        m.insert("default".into(), f.default.clone());
    }
    if f.auto != Auto::No {
        m.insert("auto".into(), Value::Bool(true));
    }
    for c in &f.checks {
        match c {
            Check::Between(a, b) => {
                m.insert("between".into(), Value::from(vec![*a, *b]));
            }
            Check::OneOf(o) => {
                m.insert("one_of".into(), Value::from(o.to_vec()));
            }
            Check::OneOfInt(o) => {
                m.insert("one_of".into(), Value::from(o.to_vec()));
            }
            Check::LenMin(n) => {
                m.insert("len_min".into(), Value::from(*n));
            }
            Check::GreaterThan(x) => {
                m.insert("gt".into(), Value::from(*x));
            }
            Check::AtMost(x) => {
                m.insert("le".into(), Value::from(*x));
            }
            Check::Custom(_) => {}
        }
    }
    Value::Object(m)
}

/// A step in the path to a bad value: a field name, or a 1-based array index as Kong prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathSeg {
    Field(String),
    Index(usize),
}

/// One problem: where (empty path = the entity as a whole) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: Vec<PathSeg>,
    pub message: String,
}

impl Violation {
    pub fn entity(message: impl Into<String>) -> Violation {
        Violation { path: Vec::new(), message: message.into() }
    }
    pub fn field(name: &str, message: impl Into<String>) -> Violation {
        Violation { path: vec![PathSeg::Field(name.to_string())], message: message.into() }
    }
    /// About the record being checked as a whole, reported as its field in the parent (Kong's
    /// `custom_validator` of a record: `fields.config = "…"`), where `validate_nested` places it.
    pub fn record(message: impl Into<String>) -> Violation {
        Violation { path: vec![PathSeg::Field(RECORD.to_string())], message: message.into() }
    }
    fn path_string(&self) -> String {
        let mut s = String::new();
        for (i, seg) in self.path.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            match seg {
                PathSeg::Field(f) => s.push_str(f),
                PathSeg::Index(n) => {
                    let _ = write!(s, "{n}");
                }
            }
        }
        s
    }
}

/// Every violation found in one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    pub fn single(field: &str, message: impl Into<String>) -> Violations {
        Violations(vec![Violation::field(field, message)])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn sorted(&self) -> Vec<&Violation> {
        let mut v: Vec<&Violation> = self.0.iter().collect();
        // Entity-level messages first, then fields by name (Kong's order).
        v.sort_by_key(|a| (!a.path.is_empty(), a.path_string()));
        v
    }

    /// `schema violation (name: required field missing)` or `2 schema violations (a; b)`. Like Kong:
    /// entity-level messages first, then each field by name, or each of its entries one level down
    /// (`config.minute: …`, `paths.2: …`); anything deeper is printed as a Lua table.
    pub fn message(&self) -> String {
        let mut parts: Vec<String> = self.0.iter().filter(|v| v.path.is_empty()).map(|v| v.message.clone()).collect();
        if let Value::Object(tree) = self.fields_tree() {
            for (field, errors) in tree.iter().filter(|(name, _)| *name != "@entity") {
                match errors {
                    Value::Object(entries) => {
                        parts.extend(entries.iter().map(|(k, e)| format!("{field}.{k}: {}", lua_message(e))));
                    }
                    Value::Array(entries) => parts.extend(
                        entries
                            .iter()
                            .enumerate()
                            .filter(|(_, e)| !e.is_null())
                            .map(|(i, e)| format!("{field}.{}: {}", i + 1, lua_message(e))),
                    ),
                    other => parts.push(format!("{field}: {}", lua_message(other))),
                }
            }
        }
        match parts.len() {
            1 => format!("schema violation ({})", parts[0]),
            n => format!("{n} schema violations ({})", parts.join("; ")),
        }
    }

    /// Kong's `fields` object: nested records as objects, array items as arrays, `@entity` as a list.
    pub fn fields_tree(&self) -> Value {
        let mut root = Value::Object(Map::new());
        for v in self.sorted() {
            if v.path.is_empty() {
                if let Value::Object(m) = &mut root {
                    let list = m.entry("@entity").or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(a) = list {
                        a.push(Value::String(v.message.clone()));
                    }
                }
                continue;
            }
            insert_at(&mut root, &v.path, Value::String(v.message.clone()));
        }
        root
    }
}

/// A message, or a nested group of them printed the way Kong prints a Lua table in its error
/// messages (penlight's `pretty.write`).
fn lua_message(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => lua_table(other, 0),
    }
}

fn lua_table(v: &Value, depth: usize) -> String {
    let pad = "  ".repeat(depth + 1);
    let item = |v: &Value| match v {
        Value::String(s) => lua_quote(s),
        other => lua_table(other, depth + 1),
    };
    let Some(entries) = lua_entries(v, " = ", item) else { return v.to_string() };
    let entries: Vec<String> = entries.into_iter().map(|e| format!("{pad}{e}")).collect();
    format!("{{\n{}\n{}}}", entries.join(",\n"), "  ".repeat(depth))
}

/// A value as penlight's `pretty.write(t, "")` prints it on one line (Kong's declarative
/// messages): `{services={{host="required field missing"}}}`, later items of a list with holes
/// keeping their index (`{[2]="…"}`).
pub fn lua_compact(v: &Value) -> String {
    let item = |v: &Value| match v {
        Value::String(s) => lua_quote(s),
        Value::Array(_) | Value::Object(_) => lua_compact(v),
        other => other.to_string(),
    };
    match (v, lua_entries(v, "=", item)) {
        (_, Some(entries)) => format!("{{{}}}", entries.join(",")),
        (Value::String(s), None) => lua_quote(s),
        (other, None) => other.to_string(),
    }
}

/// A list's or a record's entries as Lua writes them (`key<eq>value`; a list's leading run without
/// keys, later items with their index); `None` for a scalar.
fn lua_entries(v: &Value, eq: &str, item: impl Fn(&Value) -> String) -> Option<Vec<String>> {
    let mut entries = Vec::new();
    match v {
        Value::Array(items) => {
            // The leading run is a Lua sequence; later entries keep their index.
            let run = items.iter().take_while(|i| !i.is_null()).count();
            for (i, e) in items.iter().enumerate().filter(|(_, e)| !e.is_null()) {
                let key = if i < run { String::new() } else { format!("[{}]{eq}", i + 1) };
                entries.push(format!("{key}{}", item(e)));
            }
        }
        Value::Object(m) => {
            for (k, e) in m {
                let identifier = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !LUA_KEYWORDS.contains(&k.as_str());
                let key = if identifier { k.clone() } else { format!("[{}]", lua_quote(k)) };
                entries.push(format!("{key}{eq}{}", item(e)));
            }
        }
        _ => return None,
    }
    Some(entries)
}

const LUA_KEYWORDS: &[&str] = &[
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in", "local", "nil",
    "not", "or", "repeat", "return", "then", "true", "until", "while",
];

/// Lua's `%q`: double quotes, with `\`, `"`, newlines and NULs escaped.
fn lua_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn insert_at(node: &mut Value, path: &[PathSeg], leaf: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let slot: &mut Value = match first {
        PathSeg::Field(name) => {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            let Value::Object(m) = node else { return };
            m.entry(name.clone()).or_insert(Value::Null)
        }
        PathSeg::Index(i) => {
            if !node.is_array() {
                *node = Value::Array(Vec::new());
            }
            let Value::Array(a) = node else { return };
            // Indexes are 1-based, as Kong's (Lua's); 0 is taken as 1 rather than trusted.
            let i = (*i).max(1);
            if a.len() < i {
                a.resize(i, Value::Null);
            }
            &mut a[i - 1]
        }
    };
    if rest.is_empty() {
        if slot.is_null() {
            *slot = leaf;
        }
    } else {
        insert_at(slot, rest, leaf);
    }
}

/// Walks values against fields, collecting violations.
struct Walker {
    path: Vec<PathSeg>,
    errors: Vec<Violation>,
}

impl Walker {
    fn fail(&mut self, message: impl Into<String>) {
        self.errors.push(Violation { path: self.path.clone(), message: message.into() });
    }

    fn record(&mut self, fields: &[Field], input: &Obj) -> Obj {
        let mut out = Obj::new();
        for key in input.keys() {
            if !fields.iter().any(|f| f.name == key) {
                self.path.push(PathSeg::Field(key.clone()));
                self.fail("unknown field");
                self.path.pop();
            }
        }
        for field in fields {
            let given = input.get(field.name).cloned().unwrap_or(Value::Null);
            let value = if given.is_null() { default_for(field) } else { given };
            self.path.push(PathSeg::Field(field.name.to_string()));
            let value = self.value(field, value);
            self.path.pop();
            out.insert(field.name.to_string(), value);
        }
        out
    }

    fn value(&mut self, field: &Field, value: Value) -> Value {
        if value.is_null() {
            if field.required {
                self.fail("required field missing");
            }
            return Value::Null;
        }
        let value = match (&field.ty, value) {
            (Type::Any, v) => v,
            (Type::String, Value::String(s)) => {
                if s.is_empty() && !field.checks.iter().any(|c| matches!(c, Check::LenMin(_))) {
                    self.fail("length must be at least 1");
                }
                Value::String(s)
            }
            (Type::String, _) => return self.wrong("expected a string"),
            (Type::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Value::Number(n),
            (Type::Integer, Value::Number(n)) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
                _ => return self.wrong("expected an integer"),
            },
            (Type::Integer, _) => return self.wrong("expected an integer"),
            (Type::Number, Value::Number(n)) => Value::Number(n),
            (Type::Number, _) => return self.wrong("expected a number"),
            (Type::Boolean, Value::Bool(b)) => Value::Bool(b),
            (Type::Boolean, _) => return self.wrong("expected a boolean"),
            (Type::Array(elem), Value::Array(items)) => Value::Array(self.items(elem, items)),
            (Type::Array(_), _) => return self.wrong("expected an array"),
            (Type::Set(elem), Value::Array(items)) => {
                let mut seen: Vec<Value> = Vec::new();
                for v in self.items(elem, items) {
                    if !seen.contains(&v) {
                        seen.push(v);
                    }
                }
                Value::Array(seen)
            }
            (Type::Set(_), _) => return self.wrong("expected a set"),
            (Type::Map(k, v), Value::Object(m)) => {
                // Kong reports only the first bad entry, on the map itself: a key's message as is, a
                // value's errors without the key.
                let before = self.errors.len();
                let mut out = Obj::new();
                for (key, val) in m {
                    if self.errors.len() == before {
                        self.value(k, Value::String(key.clone()));
                    }
                    let val = if self.errors.len() == before { self.value(v, val) } else { val };
                    out.insert(key, val);
                }
                Value::Object(out)
            }
            (Type::Map(..), _) => return self.wrong("expected a map"),
            (Type::Record(fields), Value::Object(m)) => Value::Object(self.record(fields, &m)),
            (Type::Record(_), _) => return self.wrong("expected a record"),
            (Type::Foreign(_), Value::Object(m)) => self.foreign(m),
            (Type::Foreign(_), _) => return self.wrong("expected a record"),
        };
        for check in &field.checks {
            if let Err(msg) = run_check(check, &value) {
                self.fail(msg);
                break;
            }
        }
        value
    }

    fn wrong(&mut self, msg: &str) -> Value {
        self.fail(msg);
        Value::Null
    }

    fn items(&mut self, elem: &Field, items: Vec<Value>) -> Vec<Value> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                self.path.push(PathSeg::Index(i + 1));
                let v = if v.is_null() {
                    self.fail("required field missing");
                    Value::Null
                } else {
                    self.value(elem, v)
                };
                self.path.pop();
                v
            })
            .collect()
    }

    /// A foreign key is `{"id": uuid}`; any other single key is an endpoint key left for the store
    /// to resolve.
    fn foreign(&mut self, m: Obj) -> Value {
        if m.is_empty() {
            self.fail("expected a record");
            return Value::Null;
        }
        if let Some(id) = m.get("id") {
            match id.as_str() {
                Some(s) if is_uuid(s) => {}
                _ => {
                    self.path.push(PathSeg::Field("id".into()));
                    self.fail("expected a valid UUID");
                    self.path.pop();
                }
            }
        }
        Value::Object(m)
    }
}

fn default_for(field: &Field) -> Value {
    match field.auto {
        Auto::No => field.default.clone(),
        Auto::Uuid => Value::String(uuid::Uuid::new_v4().to_string()),
        Auto::Timestamp => Value::from(crate::clock::now_secs()),
        Auto::TimestampMs => Value::from(crate::clock::now_millis() as f64 / 1000.0),
        Auto::Key => Value::String(random_key()),
    }
}

fn run_check(check: &Check, v: &Value) -> Result<(), String> {
    match check {
        Check::Between(lo, hi) => match v.as_f64() {
            Some(n) if n >= *lo as f64 && n <= *hi as f64 => Ok(()),
            Some(_) => Err(format!("value should be between {lo} and {hi}")),
            None => Ok(()),
        },
        Check::GreaterThan(x) => match v.as_f64() {
            Some(n) if n > *x => Ok(()),
            Some(_) => Err(format!("value must be greater than {x}")),
            None => Ok(()),
        },
        Check::AtMost(x) => match v.as_f64() {
            Some(n) if n <= *x => Ok(()),
            Some(_) => Err(format!("value must be at most {x}")),
            None => Ok(()),
        },
        Check::OneOf(options) => match v.as_str() {
            Some(s) if options.contains(&s) => Ok(()),
            _ => Err(format!("expected one of: {}", options.join(", "))),
        },
        Check::OneOfInt(options) => match v.as_i64() {
            Some(n) if options.contains(&n) => Ok(()),
            _ => {
                let names: Vec<String> = options.iter().map(i64::to_string).collect();
                Err(format!("expected one of: {}", names.join(", ")))
            }
        },
        Check::LenMin(n) => {
            let len = match v {
                Value::String(s) => s.chars().count(),
                Value::Array(a) => a.len(),
                _ => return Ok(()),
            };
            if len < *n { Err(format!("length must be at least {n}")) } else { Ok(()) }
        }
        Check::Custom(f) => f(v),
    }
}

/// Validates `input` against `schema`, filling defaults and auto values. Returns the full record or
/// every violation found.
pub fn validate(schema: &Schema, input: &Obj) -> Result<Obj, Violations> {
    let mut w = Walker { path: Vec::new(), errors: Vec::new() };
    let out = w.record(&schema.fields, input);
    let fields_valid = w.errors.is_empty();
    // Presence checks count a bad value as given, as Kong runs them on the input.
    let mut given = out.clone();
    given.extend(input.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())));
    for check in &schema.checks {
        match check {
            EntityCheck::AtLeastOneOf(names) => {
                if !names.iter().any(|n| is_nonempty(given.get(*n))) {
                    let list: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
                    let msg = format!("at least one of these fields must be non-empty: {}", list.join(", "));
                    w.errors.push(Violation::entity(msg));
                }
            }
            EntityCheck::Custom(f) if fields_valid => w.errors.extend(f(&out)),
            EntityCheck::Custom(_) => {}
            EntityCheck::Presence(f) => w.errors.extend(f(&given)),
        }
    }
    if w.errors.is_empty() { Ok(out) } else { Err(Violations(w.errors)) }
}

/// Deepest nesting of an entity's values (objects and arrays). No schema nests half this deep; the
/// bound keeps every recursive walk over input, over the stored row and over the configuration sent
/// to data planes (which nests a few levels more) far below serde_json's limit of 128, so that what
/// is accepted can always be read back.
pub const MAX_DEPTH: usize = 32;

/// How deep an object's values nest (an object of scalars is 1), without recursing.
pub fn depth(fields: &Obj) -> usize {
    let mut deepest = 1;
    let mut stack: Vec<(&Value, usize)> = fields.values().map(|v| (v, 1)).collect();
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Object(m) => stack.extend(m.values().map(|c| (c, d + 1))),
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    deepest
}

/// Kong's "non-empty": set, and not `""`, `[]` or `{}`.
pub fn is_nonempty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        Some(_) => true,
    }
}

/// Validates a nested record (a plugin's `config`) and reports violations under `prefix`.
/// The path of a [`Violation::record`] until `validate_nested` names the record.
const RECORD: &str = "@record";

pub fn validate_nested(schema: &Schema, input: &Obj, prefix: &str) -> Result<Obj, Violations> {
    validate(schema, input).map_err(|v| {
        Violations(
            v.0.into_iter()
                .map(|mut viol| {
                    if matches!(viol.path.as_slice(), [PathSeg::Field(f)] if f == RECORD) {
                        viol.path = vec![PathSeg::Field(prefix.to_string())];
                        viol
                    } else if viol.path.is_empty() {
                        viol
                    } else {
                        viol.path.insert(0, PathSeg::Field(prefix.to_string()));
                        viol
                    }
                })
                .collect(),
        )
    })
}

/// Merges a PATCH body into the current record: records merge field by field, everything else
/// (arrays included) is replaced.
pub fn merge(current: &Obj, patch: &Obj, fields: &[Field]) -> Obj {
    let mut out = current.clone();
    for (k, v) in patch {
        let nested = fields.iter().find(|f| f.name == k).and_then(|f| match &f.ty {
            Type::Record(sub) => Some(sub.as_slice()),
            Type::Any => Some(&[][..]),
            _ => None,
        });
        match (nested, out.get(k), v) {
            (Some(sub), Some(Value::Object(cur)), Value::Object(p)) => {
                let merged = merge(cur, p, sub);
                out.insert(k.clone(), Value::Object(merged));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// Turns form strings into the types the schema expects: `"true"` → true, `"5"` → 5, a lone value for
/// an array field → a one-element array, `{"1": a, "2": b}` (from `paths[1]=a`) → an array, `""` → null.
pub fn coerce_form(fields: &[Field], input: &mut Obj) {
    for (key, value) in input.iter_mut() {
        if let Some(field) = fields.iter().find(|f| f.name == key) {
            coerce_value(&field.ty, value);
        } else if let Value::String(s) = value
            && s.is_empty()
        {
            *value = Value::Null;
        }
    }
}

pub fn coerce_value(ty: &Type, value: &mut Value) {
    if let Value::String(s) = value
        && s.is_empty()
    {
        *value = Value::Null;
        return;
    }
    match ty {
        Type::Boolean => {
            if let Value::String(s) = value {
                match s.as_str() {
                    "true" => *value = Value::Bool(true),
                    "false" => *value = Value::Bool(false),
                    _ => {}
                }
            }
        }
        Type::Integer | Type::Number => {
            if let Value::String(s) = value {
                if let Ok(i) = s.trim().parse::<i64>() {
                    *value = Value::from(i);
                } else if let Ok(f) = s.trim().parse::<f64>()
                    && let Some(n) = serde_json::Number::from_f64(f)
                {
                    *value = Value::Number(n);
                }
            }
        }
        Type::Array(elem) | Type::Set(elem) => {
            let mut items = match std::mem::take(value) {
                Value::Array(a) => a,
                Value::Object(m) if m.keys().all(|k| k.parse::<usize>().is_ok()) => {
                    let mut indexed: BTreeMap<usize, Value> = BTreeMap::new();
                    for (k, v) in m {
                        indexed.insert(k.parse::<usize>().unwrap_or(0), v);
                    }
                    indexed.into_values().collect()
                }
                Value::Null => {
                    *value = Value::Null;
                    return;
                }
                other @ Value::Object(_) => {
                    *value = other;
                    return;
                }
                other => vec![other],
            };
            for item in &mut items {
                coerce_value(&elem.ty, item);
            }
            *value = Value::Array(items);
        }
        Type::Map(_, v) => {
            if let Value::Object(m) = value {
                for item in m.values_mut() {
                    coerce_value(&v.ty, item);
                }
            }
        }
        Type::Record(fields) => {
            if let Value::Object(m) = value {
                coerce_form(fields, m);
            }
        }
        Type::String | Type::Foreign(_) | Type::Any => {}
    }
}

/// A JSON object's map (empty for anything else).
pub fn into_obj(v: Value) -> Obj {
    match v {
        Value::Object(m) => m,
        _ => Obj::new(),
    }
}

pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

/// A fresh credential key: 32 characters from `[A-Za-z0-9]`, like Kong 3.x.
pub fn random_key() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect()
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

    fn sample() -> Schema {
        Schema {
            fields: vec![
                Field::new("name", Type::String).required(),
                Field::new("port", Type::Integer).default(json!(80)).check(Check::Between(0, 65535)),
                Field::new("tags", Type::Set(Box::new(Field::new("tag", Type::String)))),
                Field::new(
                    "config",
                    Type::Record(vec![
                        Field::new("minute", Type::Number).check(Check::GreaterThan(0.0)),
                        Field::new("names", Type::Array(Box::new(Field::new("n", Type::String)))),
                    ]),
                )
                .default(json!({})),
            ],
            checks: vec![],
        }
    }

    #[test]
    fn fills_defaults_and_nulls() {
        let out = validate(&sample(), &obj(json!({"name": "a"}))).expect("valid");
        assert_eq!(
            Value::Object(out),
            json!({"name": "a", "port": 80, "tags": null, "config": {"minute": null, "names": null}})
        );
    }

    #[test]
    fn lists_every_violation_with_kong_wording() {
        let err =
            validate(&sample(), &obj(json!({"port": 70000, "extra": 1, "config": {"minute": -1, "names": ["ok", 5]}})))
                .expect_err("invalid");
        assert_eq!(
            err.message(),
            "5 schema violations (config.minute: value must be greater than 0; config.names: {\n  [2] = \"expected a string\"\n}; extra: unknown field; name: required field missing; port: value should be between 0 and 65535)"
        );
        assert_eq!(
            err.fields_tree(),
            json!({
                "config": {"minute": "value must be greater than 0", "names": [null, "expected a string"]},
                "extra": "unknown field",
                "name": "required field missing",
                "port": "value should be between 0 and 65535"
            })
        );
    }

    #[test]
    fn errors_deeper_than_one_level_print_as_lua_tables() {
        let at = |path: &[&str], message: &str| Violation {
            path: path
                .iter()
                .map(|p| p.parse().map_or_else(|_| PathSeg::Field((*p).to_string()), PathSeg::Index))
                .collect(),
            message: message.into(),
        };
        let v = Violations(vec![at(&["config", "a", "b"], "x"), at(&["config", "list", "1"], "bad \\ \"one\"")]);
        assert_eq!(
            v.message(),
            "2 schema violations (config.a: {\n  b = \"x\"\n}; config.list: {\n  \"bad \\\\ \\\"one\\\"\"\n})"
        );
        let v = Violations(vec![at(&["config", "deep", "end", "2", "x-y"], "m")]);
        assert_eq!(
            v.message(),
            "schema violation (config.deep: {\n  [\"end\"] = {\n    [2] = {\n      [\"x-y\"] = \"m\"\n    }\n  }\n})"
        );
    }

    #[test]
    fn a_map_reports_its_first_bad_entry_on_itself() {
        let schema = Schema {
            fields: vec![Field::new(
                "headers",
                Type::Map(
                    Box::new(Field::new("name", Type::String).check(Check::LenMin(2))),
                    Box::new(Field::new("values", Type::Array(Box::new(Field::new("v", Type::String))))),
                ),
            )],
            checks: vec![],
        };
        let err = validate(&schema, &obj(json!({"headers": {"a": ["x"], "bb": [1]}}))).expect_err("invalid");
        assert_eq!(err.fields_tree(), json!({"headers": "length must be at least 2"}));
        let err = validate(&schema, &obj(json!({"headers": {"bb": ["x", 1]}}))).expect_err("invalid");
        assert_eq!(err.message(), "schema violation (headers.2: expected a string)");
    }

    #[test]
    fn entity_checks_come_first() {
        let schema = Schema {
            fields: vec![Field::new("username", Type::String), Field::new("custom_id", Type::String)],
            checks: vec![EntityCheck::AtLeastOneOf(&["custom_id", "username"])],
        };
        let err = validate(&schema, &Obj::new()).expect_err("invalid");
        assert_eq!(
            err.message(),
            "schema violation (at least one of these fields must be non-empty: 'custom_id', 'username')"
        );
        assert_eq!(
            err.fields_tree(),
            json!({"@entity": ["at least one of these fields must be non-empty: 'custom_id', 'username'"]})
        );
    }

    #[test]
    fn form_values_are_coerced_by_type() {
        let schema = sample();
        let mut input = obj(
            json!({"name": "a", "port": "8080", "tags": "one", "config": {"minute": "5", "names": {"2": "b", "1": "a"}}}),
        );
        coerce_form(&schema.fields, &mut input);
        assert_eq!(
            Value::Object(input),
            json!({"name": "a", "port": 8080, "tags": ["one"], "config": {"minute": 5, "names": ["a", "b"]}})
        );
    }

    #[test]
    fn patch_merges_records_and_replaces_arrays() {
        let schema = sample();
        let cur = obj(json!({"name": "a", "config": {"minute": 5, "names": ["x"]}}));
        let patched = merge(&cur, &obj(json!({"config": {"names": ["y"]}})), &schema.fields);
        assert_eq!(Value::Object(patched), json!({"name": "a", "config": {"minute": 5, "names": ["y"]}}));
    }

    #[test]
    fn generated_keys_are_32_alphanumerics() {
        let k = random_key();
        assert_eq!(k.len(), 32);
        assert!(k.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(k, random_key());
    }
}
