//! Property tests of "a write is compiled before it is committed" (issue 11), over bodies generated
//! from the schemas themselves: every entity kind's schema and every bundled plugin's config schema
//! is walked into a generator of valid values (types, `one_of`, bounds) and of hostile ones
//! (extreme numbers, wrong types, deep nesting, long and odd strings, unknown fields). Checked:
//! `prepare` never panics; what it accepts compiles, survives being stored as JSON text and
//! re-validates to itself; a configuration of accepted records loads with no rejection and builds;
//! any stored row, however broken, loads without panicking and never opens a route whose route or
//! service never compiled.
//!
//! Bounded for the normal suite (64 cases per property). To run longer:
//! `PROPTEST_CASES=5000 cargo nextest run --lib properties` (or `cargo test --lib properties`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::OnceLock;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use uuid::Uuid;

use super::compile;
use super::state::{Changes, ConfigState, LOAD_ORDER, Row};
use crate::model::schema::{Auto, Check, Field, Obj, Type};
use crate::model::{Kind, Mode};
use crate::plugins::{PluginDef, REGISTRY};

type Gen = BoxedStrategy<Value>;

/// Cases per property: 64 unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Plugins with live counters start their flush tasks on a runtime, as a node builds them.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

/// A small pool of ids, so that generated references and rows meet.
const IDS: usize = 6;

fn pool_id(i: usize) -> String {
    Uuid::from_u128(0x7011_6a7e_0000_4000_8000_0000_0000_0000 | (i % IDS) as u128).to_string()
}

fn pool_ids() -> BoxedStrategy<String> {
    (0..IDS).prop_map(pool_id).boxed()
}

// ----- hostile material -------------------------------------------------------------------------

const ODD: &[&str] = &[
    "",
    " ",
    "\0",
    "a\0b",
    "\r\n",
    "a\nb",
    "\t",
    "\u{7f}",
    "a\u{85}b",
    "\u{202e}evil",
    "\u{200f}",
    "\u{feff}",
    "\u{2028}",
    "😀",
    "é",
    "İ",
    "%",
    "%zz",
    "%2",
    "%00",
    "/%2F",
    "/%2e%2e/",
    "~",
    "~*",
    "~*(",
    "~/(",
    "~/[a-",
    "~/a{2000}{2000}",
    "~/(?x)#",
    "~/\\",
    "~/\\p{Nope}",
    "*",
    "*.*",
    "**",
    "*.a.*",
    "a.*.b",
    ".",
    "..",
    "/..",
    "/./",
    "//",
    "/a/../b",
    "/a b",
    "[::1]",
    "[",
    "]:80",
    ":80",
    "a:99999",
    "a:-1",
    "::",
    "1.2.3.4/33",
    "\\",
    "\"",
    "<x>",
    "a,b",
    "a/b",
    "null",
    "1e400",
    "NaN",
    "-0",
    " 5 ",
    "0x10",
    "9007199254740993",
    "-9223372036854775809",
];

const ODD_CHARS: &[char] = &[
    '\0', '\r', '\n', '\t', '\u{7f}', '\u{85}', '\u{202e}', '\u{feff}', '😀', 'é', 'İ', '%', '~', '*', '(', '[', '\\',
    '"', ':', '/', '.', ' ', ',', '?', '#',
];

fn nasty_numbers() -> Vec<Value> {
    vec![
        json!(0),
        json!(-1),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1e20),
        json!(1e308),
        json!(-1e308),
        json!(-0.0),
        json!(0.5),
        json!(-0.5),
        json!(9_007_199_254_740_993_u64),
        json!(9_007_199_254_740_992.0),
        json!(9.2e18),
        json!(4_294_967_296_u64),
        json!(65536),
        json!(2_147_483_647),
        json!(2_147_483_648_u64),
        json!(1e-300),
        json!(3_600.000_000_1),
    ]
}

fn odd_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => select(ODD).prop_map(str::to_string),
        2 => vec(select(ODD_CHARS), 1..12).prop_map(|cs| cs.into_iter().collect()),
        1 => (1usize..5).prop_map(|k| "a".repeat(k * 4096)),
        1 => (select(ODD), 1usize..64).prop_map(|(s, n)| s.repeat(n)),
    ]
    .boxed()
}

/// Values nesting 30 to 200 levels.
fn deep() -> Gen {
    (30usize..200, any::<bool>(), select(vec![json!(1), json!("x"), json!(null), json!({})]))
        .prop_map(|(depth, arrays, leaf)| {
            let mut v = leaf;
            for i in 0..depth {
                v = if arrays && i % 2 == 0 { json!([v]) } else { json!({ "a": v }) };
            }
            v
        })
        .boxed()
}

fn wrong_type() -> Gen {
    select(vec![
        Value::Null,
        json!(true),
        json!("x"),
        json!(1),
        json!(1.5),
        json!([]),
        json!({}),
        json!([null]),
        json!({ "": null }),
        json!({ "id": null }),
    ])
    .boxed()
}

fn hostile_any() -> Gen {
    prop_oneof![wrong_type(), select(nasty_numbers()), odd_text().prop_map(Value::String), deep(),].boxed()
}

/// A hostile value for `field`: wrong in type, bounds or content.
fn hostile(field: &'static Field) -> Gen {
    let typed: Gen = match &field.ty {
        Type::Integer | Type::Number => prop_oneof![
            3 => select(nasty_numbers()),
            1 => select(ODD).prop_map(Value::from),
        ]
        .boxed(),
        Type::String => prop_oneof![
            odd_text().prop_map(Value::String),
            (valid_text(field), select(ODD_CHARS), any::<Index>()).prop_map(|(s, c, at)| {
                let mut s = s;
                let cut = s.char_indices().map(|(i, _)| i).nth(at.index(s.chars().count() + 1)).unwrap_or(s.len());
                s.insert(cut, c);
                Value::String(s)
            }),
        ]
        .boxed(),
        Type::Boolean => select(vec![json!("true"), json!(1), json!(0), json!("false")]).boxed(),
        Type::Array(e) | Type::Set(e) => prop_oneof![
            vec(hostile(e), 1..4).prop_map(Value::Array),
            Just(json!([])),
            (1usize..3000).prop_map(|n| Value::Array(vec![Value::from("x"); n])),
        ]
        .boxed(),
        Type::Record(_) | Type::Map(..) | Type::Any | Type::Foreign(_) => prop_oneof![
            Just(json!({})),
            (odd_text(), hostile_any()).prop_map(|(k, v)| json!({ k: v })),
            odd_text().prop_map(|id| json!({ "id": id })),
            pool_ids().prop_map(|id| json!({ "id": id, "extra": 1 })),
            odd_text().prop_map(|name| json!({ "username": name })),
        ]
        .boxed(),
    };
    prop_oneof![5 => typed, 1 => wrong_type(), 1 => deep()].boxed()
}

// ----- valid material ---------------------------------------------------------------------------

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "CONNECT", "PURGE"];

/// Rate-limiting periods, shortest first: a longer one may not allow fewer requests.
const PERIODS: &[&str] = &["second", "minute", "hour", "day", "month", "year"];

/// Text for a string field. The schema language checks formats with functions a generator cannot
/// read, so the field's name says which format (hosts, paths, header names...) to draw from.
fn valid_text(field: &'static Field) -> BoxedStrategy<String> {
    if let Some(options) = field.checks.iter().find_map(|c| match c {
        Check::OneOf(o) => Some(*o),
        _ => None,
    }) {
        return select(options).prop_map(str::to_string).boxed();
    }
    let pick = |xs: &'static [&'static str]| select(xs).prop_map(str::to_string).boxed();
    match field.name {
        "id" | "ca" => pool_ids(),
        "host" | "sni" => pick(&[
            "example.com",
            "127.0.0.1",
            "api.test",
            "::1",
            "a-b_c.test",
            "*.example.com",
            "example.*",
            "api.test:8443",
        ]),
        "path" => pick(&[
            "/",
            "/a",
            "/a/b",
            "/v1/users",
            "/%C3%A9t%C3%A9",
            "/a.b~c",
            "/a/",
            "~/v\\d+/items",
            "~/(?<name>[a-z]+)$",
            "~/a|/b",
        ]),
        "method" => pick(METHODS),
        "http_endpoint" => pick(&["http://127.0.0.1:9/log", "https://logs.test/in", "http://u:p@[::1]:8080/"]),
        "header" | "header_name" | "key_name" => pick(&["x-version", "X-Api-Key", "apikey", "x_custom", "accept"]),
        "value" => pick(&["v1", "V2", "~*^v\\d+$", "a b", "application/json"]),
        "ip" => pick(&["10.0.0.1", "10.0.0.0/8", "::1", "fe80::/10", "192.168.1.1/32"]),
        "tag" => pick(&["prod", "team a", "é", "v1.2"]),
        // A certificate (or a CA: certificates and CA certificates share the field) and its key.
        "cert" | "cert_alt" => {
            let ((cert, _), ca) = pem_fixtures();
            select(vec![cert.clone(), ca.clone()]).boxed()
        }
        "key" | "key_alt" => {
            let ((_, key), _) = pem_fixtures();
            prop_oneof![Just(key.clone()), "[A-Za-z0-9._~-]{1,12}"].boxed()
        }
        _ => "[A-Za-z0-9._~-]{1,12}".boxed(),
    }
}

fn valid_integer(field: &'static Field) -> Gen {
    for check in &field.checks {
        match check {
            Check::OneOfInt(options) => return select(*options).prop_map(Value::from).boxed(),
            Check::Between(lo, hi) => {
                let (lo, hi) = (*lo, *hi);
                return prop_oneof![Just(lo), Just(hi), lo..=hi, lo..=hi.min(lo + 100)].prop_map(Value::from).boxed();
            }
            _ => {}
        }
    }
    (-1000i64..1000).prop_map(Value::from).boxed()
}

fn valid_number(field: &'static Field) -> Gen {
    if let Some(i) = PERIODS.iter().position(|p| *p == field.name) {
        let lo = 10i64.pow(u32::try_from(i).unwrap_or(0));
        return (lo..lo * 10).prop_map(Value::from).boxed();
    }
    if field.name == "sync_rate" {
        return select(vec![json!(-1), json!(0), json!(0.02), json!(0.5), json!(1), json!(60), json!(3600)]).boxed();
    }
    let (mut lo, mut hi, mut open) = (-100.0, 100.0, false);
    for check in &field.checks {
        match check {
            Check::Between(a, b) => (lo, hi) = (*a as f64, *b as f64),
            Check::GreaterThan(x) => (lo, open) = (*x, true),
            Check::AtMost(x) => hi = *x,
            _ => {}
        }
    }
    let first = if open { lo.floor() as i64 + 1 } else { lo.ceil() as i64 };
    let last = (hi.floor() as i64).min(first + 1000).max(first);
    prop_oneof![
        4 => (first..=last).prop_map(Value::from),
        1 => Just(Value::from(hi)),
        1 => (lo..hi).prop_map(Value::from),
    ]
    .boxed()
}

fn valid(field: &'static Field, noisy: bool) -> Gen {
    match &field.ty {
        Type::String => valid_text(field).prop_map(Value::String).boxed(),
        Type::Integer => valid_integer(field),
        Type::Number => valid_number(field),
        Type::Boolean => any::<bool>().prop_map(Value::Bool).boxed(),
        Type::Array(e) | Type::Set(e) => {
            let min = field.checks.iter().find_map(|c| if let Check::LenMin(n) = c { Some(*n) } else { None });
            // Empty arrays come from `hostile`; short ones here make equal lengths likely.
            let min = min.unwrap_or(1).max(1);
            vec(value(e, noisy), min..min + 3).prop_map(Value::Array).boxed()
        }
        Type::Map(k, v) => {
            btree_map(valid_text(k), value(v, noisy), 0..3).prop_map(|m| Value::Object(m.into_iter().collect())).boxed()
        }
        Type::Record(fields) => record(fields.iter().collect(), noisy),
        Type::Foreign(_) => pool_ids().prop_map(|id| json!({ "id": id })).boxed(),
        Type::Any => select(vec![Value::Null, json!("x"), json!(1), json!(["a"]), json!({ "k": "v" })]).boxed(),
    }
}

/// A value for `field`: valid, or (when `noisy`) now and then hostile.
fn value(field: &'static Field, noisy: bool) -> Gen {
    if noisy { prop_oneof![10 => valid(field, true), 1 => hostile(field)].boxed() } else { valid(field, false) }
}

/// A record of some of `fields` (the required ones without a default always), plus, when
/// `noisy`, now and then a field no schema knows.
fn record(fields: Vec<&'static Field>, noisy: bool) -> Gen {
    let entries: Vec<BoxedStrategy<Option<(String, Value)>>> = fields
        .into_iter()
        .map(|f| {
            let name = f.name.to_string();
            let always = f.required && f.default.is_null() && f.auto == Auto::No;
            // Fewer optional fields, fewer conditional checks failing together.
            let odds = match (always, f.default.is_null()) {
                (true, _) => 1.0,
                _ if f.auto != Auto::No || f.name.ends_with("_at") => 0.3,
                (false, true) => 0.35,
                (false, false) => 0.5,
            };
            (proptest::bool::weighted(odds), value(f, noisy))
                .prop_map(move |(given, v)| given.then(|| (name.clone(), v)))
                .boxed()
        })
        .collect();
    let unknown =
        if noisy { proptest::option::weighted(0.1, (odd_text(), hostile_any())).boxed() } else { Just(None).boxed() };
    (entries, unknown)
        .prop_map(|(entries, unknown)| Value::Object(entries.into_iter().flatten().chain(unknown).collect()))
        .boxed()
}

fn object(v: Value) -> Obj {
    match v {
        Value::Object(m) => m,
        _ => Obj::new(),
    }
}

const URLS: &[&str] = &[
    "http://example.com",
    "https://example.com:8443/v1",
    "http://127.0.0.1:9/a/b",
    "grpc://h:50051",
    "http://[::1]:8080/",
    "tcp://h:9000",
];

const ODD_URLS: &[&str] = &[
    "invalid url",
    "http://",
    "http://h:99999",
    "//h:x",
    "http://a@b:c@d/",
    "ftp://x/y",
    "http://h/%zz",
    "http://h/a b",
    "http://h:-1",
    "https://*.*:443",
    "http://h\0/",
    ":",
    "http://[::1/",
    "http://h:8080:8080/",
];

fn plugin_body(def: &'static PluginDef, noisy: bool) -> BoxedStrategy<Obj> {
    let fields = Kind::Plugin.schema().fields.iter().filter(|f| f.name != "name" && f.name != "config").collect();
    let names: Vec<&'static str> = match (def.name, noisy) {
        ("key-auth", false) => vec!["key-auth", "key-auth", "keyauth"],
        (name, false) => vec![name],
        (name, true) => vec![name, name, name, name, "nope", "", "KEY-AUTH", "rate_limiting"],
    };
    let config = record((def.config)().fields.iter().collect(), noisy);
    let config = if noisy { prop_oneof![12 => config, 1 => wrong_type()].boxed() } else { config };
    (record(fields, noisy), select(names), config)
        .prop_map(|(rest, name, config)| {
            let mut body = object(rest);
            body.insert("name".into(), json!(name));
            body.insert("config".into(), config);
            body
        })
        .boxed()
}

/// An Admin API body for `kind`: valid, or (when `noisy`) with hostile values here and there.
fn body(kind: Kind, noisy: bool) -> BoxedStrategy<Obj> {
    match kind {
        Kind::Plugin => Union::new(REGISTRY.iter().map(|def| plugin_body(def, noisy))).boxed(),
        Kind::Service => {
            let urls = if noisy { [URLS, ODD_URLS].concat() } else { URLS.to_vec() };
            (record(kind.schema().fields.iter().collect(), noisy), proptest::option::weighted(0.25, select(urls)))
                .prop_map(|(rest, url)| {
                    let mut body = object(rest);
                    if let Some(url) = url {
                        body.insert("url".into(), json!(url));
                    }
                    body
                })
                .boxed()
        }
        // The hashing fields depend on each other (most random pairs are refused, rightly): half
        // the bodies leave them to their defaults; names are host names.
        Kind::Upstream => (
            record(kind.schema().fields.iter().collect(), noisy),
            proptest::bool::ANY,
            select(&["backend.test", "a", "api-v2.internal", "x_y"][..]),
        )
            .prop_map(|(rest, plain, name)| {
                let mut body = object(rest);
                if plain {
                    body.retain(|k, _| !k.starts_with("hash_"));
                    body.remove("algorithm");
                }
                body.entry("name").or_insert_with(|| json!(name));
                if plain {
                    body.insert("name".into(), json!(name));
                }
                body
            })
            .boxed(),
        _ => record(kind.schema().fields.iter().collect(), noisy).prop_map(object).boxed(),
    }
}

/// Any kind's body, valid or noisy, and whether it arrives as a form (strings to coerce).
fn any_write() -> impl Strategy<Value = (Kind, Obj, bool)> {
    let per_kind = Kind::ALL.iter().map(|&kind| {
        let weight = if kind == Kind::Plugin { 4 } else { 1 };
        let bodies = prop_oneof![body(kind, false), body(kind, true)];
        (weight, (Just(kind), bodies, proptest::bool::weighted(0.25)).boxed())
    });
    Union::new_weighted(per_kind.collect())
}

/// A form body's values are strings; `coerce` turns them back by schema.
fn as_form(v: Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        Value::Array(a) => Value::Array(a.into_iter().map(as_form).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, as_form(v))).collect()),
        other => other,
    }
}

// ----- what an accepted write must satisfy ------------------------------------------------------

fn without_updated_at(mut record: Obj) -> Obj {
    record.remove("updated_at");
    record
}

/// An accepted record compiles, compiles again once stored as JSON text, and re-validates to itself.
fn check_accepted(kind: Kind, record: &Obj) -> Result<(), TestCaseError> {
    let compiled = compile::check(kind, record);
    prop_assert!(compiled.is_ok(), "accepted {kind:?} does not compile: {compiled:?}\n{record:?}");
    let text = Value::Object(record.clone()).to_string();
    let stored = serde_json::from_str::<Obj>(&text);
    prop_assert!(stored.is_ok(), "accepted {kind:?} cannot be read back: {stored:?}");
    let stored = stored.unwrap_or_default();
    let compiled = compile::check(kind, &stored);
    prop_assert!(compiled.is_ok(), "stored {kind:?} does not compile: {compiled:?}\n{text}");
    let again = compile::prepare(kind, record.clone(), Mode::Create);
    prop_assert!(again.is_ok(), "accepted {kind:?} does not re-validate: {again:?}\n{record:?}");
    let again = again.map(without_updated_at).unwrap_or_default();
    prop_assert_eq!(again, without_updated_at(record.clone()));
    Ok(())
}

const SERVICE: &str = "5e4bf2a0-b6a6-4b4e-a4d5-3b1c4dc5b3b0";
const CONSUMER: &str = "5e4bf2a0-b6a6-4b4e-a4d5-3b1c4dc5b3b1";
const GROUP: &str = "5e4bf2a0-b6a6-4b4e-a4d5-3b1c4dc5b3b2";

/// A stored record of `kind` to PATCH (for plugins, one named like the patch, if it names one).
fn existing(kind: Kind, patch: &Obj) -> Obj {
    let body = match kind {
        Kind::Consumer => json!({ "username": "fixture" }),
        Kind::ConsumerGroup => json!({ "name": "gold" }),
        Kind::Service => json!({ "host": "example.com" }),
        Kind::Route => json!({ "paths": ["/fixture"], "service": { "id": SERVICE } }),
        Kind::Plugin => match patch.get("name").and_then(Value::as_str).and_then(crate::plugins::find) {
            Some(def) if def.name == "acl" => json!({ "name": "acl", "config": { "allow": ["a"] } }),
            Some(def) if def.name == "rate-limiting" => json!({ "name": "rate-limiting", "config": { "minute": 5 } }),
            Some(def) if def.name == "rate-limiting-advanced" => {
                json!({ "name": "rate-limiting-advanced", "config": { "limit": [5], "window_size": [60] } })
            }
            _ => json!({ "name": "key-auth" }),
        },
        Kind::KeyAuth => json!({ "consumer": { "id": CONSUMER }, "key": "fixture-key" }),
        Kind::Acl => json!({ "consumer": { "id": CONSUMER }, "group": "g" }),
        Kind::GroupMembership => json!({ "consumer": { "id": CONSUMER }, "consumer_group": { "id": GROUP } }),
        Kind::Certificate => {
            let (cert, key) = pem_fixtures().0.clone();
            json!({ "cert": cert, "key": key })
        }
        Kind::Sni => json!({ "name": "fixture.test", "certificate": { "id": SERVICE } }),
        Kind::CaCertificate => json!({ "cert": pem_fixtures().1.clone() }),
        Kind::Upstream => json!({ "name": "fixture.upstream" }),
        Kind::Target => json!({ "upstream": { "id": SERVICE }, "target": "10.0.0.1:80" }),
    };
    compile::prepare(kind, object(body), Mode::Create).unwrap_or_default()
}

/// A certificate with its key, and a CA certificate, made once.
fn pem_fixtures() -> &'static ((String, String), String) {
    static PEMS: std::sync::OnceLock<((String, String), String)> = std::sync::OnceLock::new();
    PEMS.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["fixture.test".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).expect("ca");
        ((cert.pem(), key.serialize_pem()), ca.pem())
    })
}

proptest! {
    #![proptest_config(config())]

    /// POST: whatever the body, `prepare` answers; what it accepts holds up.
    #[test]
    fn a_created_entity_that_is_accepted_compiles_and_revalidates((kind, body, form) in any_write()) {
        let mut input = body;
        if form {
            input = object(as_form(Value::Object(input)));
            compile::coerce(kind, &mut input, None);
        }
        if let Ok(record) = compile::prepare(kind, input, Mode::Create) {
            check_accepted(kind, &record)?;
        }
    }

    /// PATCH or PUT onto a stored record: the same.
    #[test]
    fn an_updated_entity_that_is_accepted_compiles_and_revalidates(
        (kind, body, form) in any_write(),
        patch in any::<bool>(),
    ) {
        let stored = existing(kind, &body);
        prop_assert!(!stored.is_empty(), "the {kind:?} fixture is valid");
        let mut input = body;
        if form {
            input = object(as_form(Value::Object(input)));
            compile::coerce(kind, &mut input, Some(&stored));
        }
        let mode = if patch { Mode::Patch(stored) } else { Mode::Replace(Some(stored)) };
        if let Ok(record) = compile::prepare(kind, input, mode) {
            check_accepted(kind, &record)?;
        }
    }
}

// ----- accepted writes build --------------------------------------------------------------------

/// One entity to write: its body and choices for its foreign keys (indexes into what was
/// accepted before it; some mean null).
#[derive(Debug, Clone)]
struct Draft {
    kind: Kind,
    body: Obj,
    refs: [u8; 4],
}

fn drafts() -> impl Strategy<Value = Vec<Draft>> {
    let counts: [(Kind, std::ops::Range<usize>); 8] = [
        (Kind::Consumer, 0..4),
        (Kind::ConsumerGroup, 0..3),
        (Kind::Service, 1..4),
        (Kind::Route, 0..6),
        (Kind::Plugin, 0..6),
        (Kind::KeyAuth, 0..4),
        (Kind::Acl, 0..4),
        (Kind::GroupMembership, 0..4),
    ];
    let per_kind: Vec<_> = counts
        .into_iter()
        .map(|(kind, n)| {
            let one = (prop_oneof![3 => body(kind, false), 1 => body(kind, true)], any::<[u8; 4]>())
                .prop_map(move |(body, refs)| Draft { kind, body, refs });
            vec(one, n)
        })
        .collect();
    per_kind.prop_map(|kinds| kinds.into_iter().flatten().collect())
}

/// What the store would keep of accepted records: one per id, unique fields and cache keys.
#[derive(Default)]
struct Written {
    records: Vec<(Kind, Obj)>,
    taken: HashSet<(Kind, String, String)>,
}

impl Written {
    fn ids(&self, kind: Kind) -> Vec<String> {
        self.records
            .iter()
            .filter(|(k, _)| *k == kind)
            .filter_map(|(_, r)| r.get("id").and_then(Value::as_str).map(str::to_string))
            .collect()
    }

    /// Points the draft's foreign keys at accepted entities; `None` when a required one cannot be.
    fn resolve(&self, draft: &Draft) -> Option<Obj> {
        let mut body = draft.body.clone();
        for (i, fk) in draft.kind.foreign_keys().iter().enumerate() {
            let ids = self.ids(fk.kind);
            let required = draft.kind.schema().field(fk.field).is_some_and(|f| f.required);
            let choice = usize::from(draft.refs[i % 4]);
            if ids.is_empty() || (!required && choice % 3 == 0) {
                if required {
                    return None;
                }
                body.insert(fk.field.into(), Value::Null);
            } else {
                body.insert(fk.field.into(), json!({ "id": ids[choice % ids.len()] }));
            }
        }
        Some(body)
    }

    /// Keeps a record unless the store's constraints would refuse it.
    fn keep(&mut self, kind: Kind, record: Obj) {
        let mut keys = vec![("id", record.get("id").map(Value::to_string).unwrap_or_default())];
        for f in kind.unique_fields() {
            if let Some(Value::String(v)) = record.get(*f) {
                keys.push((*f, v.clone()));
            }
        }
        if let Some(cache_key) = kind.cache_key(&record) {
            keys.push(("cache_key", cache_key));
        }
        let keys: Vec<(Kind, String, String)> = keys.into_iter().map(|(f, v)| (kind, f.to_string(), v)).collect();
        if keys.iter().any(|k| self.taken.contains(k)) {
            return;
        }
        self.taken.extend(keys);
        self.records.push((kind, record));
    }
}

fn rows_of(records: &[(Kind, String, String)]) -> Vec<(Kind, Row<'_>)> {
    let mut rows: Vec<(Kind, Row<'_>)> = records
        .iter()
        .map(|(kind, id, body)| (*kind, Row { id: Some(id.as_str()), body: body.as_str(), expires_at: None }))
        .collect();
    rows.sort_by_key(|(kind, _)| LOAD_ORDER.iter().position(|k| k == kind));
    rows
}

proptest! {
    #![proptest_config(config())]

    /// Records accepted on write, stored together, load with no rejection and build: every HTTP
    /// or gRPC route is routed (unless its service is disabled), unbroken, no stream route is, and
    /// every key authenticates.
    #[test]
    fn what_is_accepted_on_write_builds(drafts in drafts()) {
        let mut written = Written::default();
        for draft in &drafts {
            let Some(body) = written.resolve(draft) else { continue };
            if let Ok(record) = compile::prepare(draft.kind, body, Mode::Create) {
                written.keep(draft.kind, record);
            }
        }
        let texts: Vec<(Kind, String, String)> = written
            .records
            .iter()
            .map(|(kind, r)| {
                let id = r.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                (*kind, id, Value::Object(r.clone()).to_string())
            })
            .collect();
        let mut state = ConfigState::from_rows(1, rows_of(&texts));
        prop_assert!(state.rejected().is_empty(), "accepted records rejected on load: {:?}", state.rejected());
        let snapshot = {
            let _rt = runtime().enter();
            state.build(true)
        };
        prop_assert!(state.rejected().is_empty(), "accepted records rejected on build: {:?}", state.rejected());
        let enabled: BTreeMap<&str, bool> = written
            .records
            .iter()
            .filter(|(k, _)| *k == Kind::Service)
            .filter_map(|(_, r)| Some((r.get("id")?.as_str()?, r.get("enabled")?.as_bool()?)))
            .collect();
        // Stream routes (tcp, tls, udp, tls_passthrough only) are no HTTP route.
        let serves_http = |r: &Obj| {
            let protocols = r.get("protocols").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            protocols.iter().filter_map(Value::as_str).any(|p| matches!(p, "http" | "https" | "grpc" | "grpcs"))
        };
        let routed = written
            .records
            .iter()
            .filter(|(k, r)| *k == Kind::Route && serves_http(r))
            .filter(|(_, r)| match r.get("service").and_then(|s| s.get("id")).and_then(Value::as_str) {
                Some(s) => enabled.get(s).copied().unwrap_or(false),
                None => true,
            })
            .count();
        prop_assert_eq!(snapshot.router.len(), routed, "routes: {:?}", written.records.iter().filter(|(k, _)| *k == Kind::Route).collect::<Vec<_>>());
        prop_assert!(snapshot.router.targets().all(|t| !t.broken));
        for (_, key) in written.records.iter().filter(|(k, _)| *k == Kind::KeyAuth) {
            let text = key.get("key").and_then(Value::as_str).unwrap_or_default();
            let consumer = key.get("consumer").and_then(|c| c.get("id")).and_then(Value::as_str);
            let found = snapshot.identity.authenticate(text).map(|a| a.consumer.id.to_string());
            prop_assert_eq!(found.as_deref(), consumer, "key {:?}", text);
        }
    }
}

// ----- any stored row -----------------------------------------------------------------------------

/// Where a stored row's body comes from.
#[derive(Debug, Clone)]
enum Stored {
    /// A generated body, written through `prepare` when it passes, stored as is otherwise.
    Written(Obj),
    /// Any JSON value.
    Json(Value),
    /// Not JSON at all.
    Text(String),
}

fn stored_row() -> impl Strategy<Value = (Kind, usize, Stored)> {
    let per_kind = LOAD_ORDER.iter().map(|&kind| {
        let source = prop_oneof![
            4 => prop_oneof![body(kind, false), body(kind, true)].prop_map(Stored::Written),
            1 => hostile_any().prop_map(Stored::Json),
            1 => prop_oneof![odd_text(), Just("{\"id\":".to_string())].prop_map(Stored::Text),
        ];
        (Just(kind), 0..IDS, source).boxed()
    });
    Union::new(per_kind)
}

/// A row's id and JSON text: generated bodies take a pool id, so versions of one entity meet.
fn materialize(kind: Kind, id: usize, source: &Stored) -> (String, String) {
    let id = pool_id(id);
    let text = match source {
        Stored::Written(body) => {
            let mut record = compile::prepare(kind, body.clone(), Mode::Create).unwrap_or_else(|_| body.clone());
            record.insert("id".into(), json!(id));
            Value::Object(record).to_string()
        }
        Stored::Json(v) => v.to_string(),
        Stored::Text(t) => t.clone(),
    };
    (id, text)
}

/// The ids of `kind` that have a version compiling on its own, after `rows` (in order) and
/// `deleted`.
#[derive(Default)]
struct GoodVersions(BTreeSet<(Kind, String)>);

impl GoodVersions {
    fn saw(&mut self, kind: Kind, id: &str, text: &str) {
        let compiles = serde_json::from_str::<Obj>(text).is_ok_and(|obj| compile::check(kind, &obj).is_ok());
        if compiles {
            self.0.insert((kind, id.to_string()));
        }
    }

    fn has(&self, kind: Kind, id: &str) -> bool {
        self.0.contains(&(kind, id.to_string()))
    }
}

/// No route is routed unbroken unless it and its service have a version that compiles.
fn check_routed(snapshot: &super::Snapshot, good: &GoodVersions) -> Result<(), TestCaseError> {
    for target in snapshot.router.targets().filter(|t| !t.broken) {
        let id = target.id.to_string();
        prop_assert!(good.has(Kind::Route, &id), "route {id} routed though no version of it compiles");
        if let Some(service) = &target.service {
            let sid = service.id.to_string();
            prop_assert!(good.has(Kind::Service, &sid), "service {sid} used though no version of it compiles");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any stored rows, then any batch of changes: loading, applying and building never panic,
    /// and nothing that never compiled is routed.
    #[test]
    fn any_stored_rows_load_and_never_open_what_does_not_compile(
        rows in vec(stored_row(), 0..24),
        upserts in vec(stored_row(), 0..8),
        deletes in vec((select(LOAD_ORDER.to_vec()), 0..IDS), 0..4),
    ) {
        let mut good = GoodVersions::default();
        let mut texts: Vec<(Kind, String, String)> =
            rows.iter().map(|(kind, id, source)| {
                let (id, text) = materialize(*kind, *id, source);
                (*kind, id, text)
            }).collect();
        texts.sort_by_key(|(kind, ..)| LOAD_ORDER.iter().position(|k| k == kind));
        for (kind, id, text) in &texts {
            good.saw(*kind, id, text);
        }
        let mut state = ConfigState::from_rows(1, rows_of(&texts));
        let _rt = runtime().enter();
        let snapshot = state.build(true);
        check_routed(&snapshot, &good)?;

        let mut changes = Changes { version: 2, ..Changes::default() };
        for (kind, id) in &deletes {
            changes.kinds.entry(*kind).or_default().deletes.push(pool_id(*id));
        }
        for (kind, id, source) in &upserts {
            let (id, text) = materialize(*kind, *id, source);
            changes.kinds.entry(*kind).or_default().upserts.push((id, text, None));
        }
        // Applied kind by kind, deletes before upserts, as `apply` does.
        for (kind, batch) in &changes.kinds {
            for id in &batch.deletes {
                good.0.remove(&(*kind, id.clone()));
            }
            for (id, text, _) in &batch.upserts {
                good.saw(*kind, id, text);
            }
        }
        let routing = state.apply(&changes);
        let snapshot = state.build(routing);
        check_routed(&snapshot, &good)?;
        // A router edited by the changes (when only routes changed) is the one a whole build gives.
        let whole = state.rebuild_whole();
        prop_assert_eq!(snapshot.router.layout(), whole.router.layout());
    }
}

/// The generators stay useful: valid bodies of every kind and plugin are mostly accepted, so the
/// properties above are about accepted writes, not only refusals.
#[test]
fn valid_bodies_are_mostly_accepted() {
    let mut runner = TestRunner::deterministic();
    let mut cases: Vec<(String, Kind, BoxedStrategy<Obj>)> =
        Kind::ALL.iter().filter(|k| **k != Kind::Plugin).map(|&k| (format!("{k:?}"), k, body(k, false))).collect();
    cases.extend(REGISTRY.iter().map(|def| (def.name.to_string(), Kind::Plugin, plugin_body(def, false))));
    for (name, kind, strategy) in cases {
        let accepted = (0..100)
            .filter(|_| {
                let body = strategy.new_tree(&mut runner).map(|t| t.current()).unwrap_or_default();
                compile::prepare(kind, body, Mode::Create).is_ok()
            })
            .count();
        assert!(accepted >= 5, "{name}: only {accepted} of 100 valid bodies accepted");
    }
}
