//! YAML text to a JSON value, built from yaml-rust2's parser events on an explicit stack (no
//! recursion, whatever the nesting), with bounds: nesting depth, and the number of values the
//! document expands to once aliases are copied in, so that a "billion laughs" file is refused
//! after a bounded amount of work instead of filling memory. Plain scalars are typed as lyaml
//! (Kong's loader) types them: null, booleans (YAML 1.1's `yes`/`no`/`on`/`off` too), integers,
//! floats; quoted and block scalars, and anything tagged `!!str`, stay strings. `<<` merge keys
//! are applied.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// How much a document may hold once parsed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_depth: usize,
    /// Values (scalars, lists and maps) after aliases are expanded.
    pub max_values: usize,
    /// Of those, the values aliases copy in (real files alias small shared pieces).
    pub max_alias_values: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_depth: 100, max_values: 20_000_000, max_alias_values: 1_000_000 }
    }
}

/// Why a text is not a YAML document this loader takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    #[error("{0}")]
    Syntax(String),
    #[error("the document expands to more than {0} values (aliases included)")]
    TooLarge(usize),
    #[error("aliases expand to more than {0} values")]
    AliasesTooLarge(usize),
    #[error("the document nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("line {0}: a key must be a scalar")]
    ComplexKey(usize),
}

enum Frame {
    Seq { items: Vec<Value>, anchor: usize, start: usize },
    Map { map: Map<String, Value>, key: Option<String>, anchor: usize, start: usize, merges: Vec<Value> },
}

/// The first document of `text` as a JSON value (`null` for an empty text).
pub fn to_json(text: &str, limits: Limits) -> Result<Value, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    // Each anchor's value and how many values it counts for.
    let mut anchors: HashMap<usize, (Value, usize)> = HashMap::new();
    let mut values = 0usize;
    let mut aliased = 0usize;
    let mut done: Option<Value> = None;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError::Syntax(e.to_string()))?;
        let (node, anchor, size) = match event {
            Event::StreamEnd => break,
            Event::DocumentEnd if done.is_some() => break,
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => continue,
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= limits.max_depth {
                    return Err(YamlError::TooDeep(limits.max_depth));
                }
                if let Some(Frame::Map { key: None, .. }) = stack.last()
                    && matches!(event, Event::SequenceStart(..) | Event::MappingStart(..))
                {
                    return Err(YamlError::ComplexKey(mark.line()));
                }
                let frame = if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq { items: Vec::new(), anchor, start: values }
                } else {
                    Frame::Map { map: Map::new(), key: None, anchor, start: values, merges: Vec::new() }
                };
                values += 1;
                stack.push(frame);
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq { items, anchor, start }) => (Value::Array(items), anchor, values - start),
                _ => return Err(YamlError::Syntax("unbalanced sequence".into())),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map { mut map, anchor, start, merges, .. }) => {
                    // `<<`: keys of the merged maps that the map does not set itself.
                    for merged in merges {
                        let sources = match merged {
                            Value::Array(list) => list,
                            other => vec![other],
                        };
                        for source in sources {
                            if let Value::Object(source) = source {
                                for (k, v) in source {
                                    map.entry(k).or_insert(v);
                                }
                            }
                        }
                    }
                    (Value::Object(map), anchor, values - start)
                }
                _ => return Err(YamlError::Syntax("unbalanced mapping".into())),
            },
            Event::Scalar(text, style, anchor, tag) => {
                values += 1;
                let string = tag.as_ref().is_some_and(|t| t.suffix == "str" || t.suffix.ends_with(":str"));
                let value = if style == TScalarStyle::Plain && !string { plain(&text) } else { Value::String(text) };
                (value, anchor, 1)
            }
            Event::Alias(id) => {
                let Some((value, size)) = anchors.get(&id) else {
                    return Err(YamlError::Syntax(format!("line {}: unknown anchor", mark.line())));
                };
                // Counted before the copy is made: the bound holds what memory it costs.
                aliased = aliased.saturating_add(*size);
                if aliased > limits.max_alias_values {
                    return Err(YamlError::AliasesTooLarge(limits.max_alias_values));
                }
                values = values.saturating_add(*size);
                if values > limits.max_values {
                    return Err(YamlError::TooLarge(limits.max_values));
                }
                (value.clone(), 0, *size)
            }
        };
        if values > limits.max_values {
            return Err(YamlError::TooLarge(limits.max_values));
        }
        if anchor > 0 {
            anchors.insert(anchor, (node.clone(), size.max(1)));
        }
        match stack.last_mut() {
            None => done = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { map, key, merges, .. }) => match key.take() {
                None => {
                    *key = Some(match node {
                        Value::String(s) => s,
                        Value::Null => "null".into(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err(YamlError::ComplexKey(mark.line())),
                    });
                }
                Some(k) if k == "<<" => merges.push(node),
                Some(k) => {
                    map.insert(k, node);
                }
            },
        }
    }
    Ok(done.unwrap_or(Value::Null))
}

/// A plain scalar typed as lyaml types it.
fn plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => return Value::Bool(true),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let negative = text.starts_with('-');
    let radix = |prefix: &str, radix: u32| {
        let body = digits.strip_prefix(prefix)?;
        let n = i64::from_str_radix(body, radix).ok()?;
        Some(Value::from(if negative { -n } else { n }))
    };
    if let Some(v) = radix("0x", 16).or_else(|| radix("0o", 8)) {
        return v;
    }
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<i64>() {
            return Value::from(n);
        }
        if let Ok(n) = text.parse::<u64>() {
            return Value::from(n);
        }
    }
    let float_like = !digits.is_empty()
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().next().is_some_and(|b| b.is_ascii_digit() || b == b'.');
    if float_like && let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(text: &str) -> Value {
        to_json(text, Limits::default()).expect("yaml")
    }

    #[test]
    fn scalars_are_typed_as_kongs_loader_types_them() {
        let v = load(
            "a: 1\nb: -2.5\nc: yes\nd: 'yes'\ne: ~\nf: 0x1F\ng: 1e3\nh: 8000\ni: \"8000\"\nj: !!str 12\nk: v1.2\nl: .inf\n",
        );
        assert_eq!(
            v,
            json!({"a": 1, "b": -2.5, "c": true, "d": "yes", "e": null, "f": 31, "g": 1000.0, "h": 8000,
                   "i": "8000", "j": "12", "k": "v1.2", "l": ".inf"})
        );
    }

    #[test]
    fn nested_lists_maps_anchors_and_merge_keys() {
        let v = load(
            "base: &b {host: a.test, port: 80}\nservices:\n- <<: *b\n  name: one\n- <<: *b\n  name: two\n  port: 81\n",
        );
        assert_eq!(v["services"][0], json!({"name": "one", "host": "a.test", "port": 80}));
        assert_eq!(v["services"][1], json!({"name": "two", "host": "a.test", "port": 81}));
    }

    #[test]
    fn a_billion_laughs_is_refused_after_bounded_work() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for name in 'b'..='j' {
            text.push_str(&format!("{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
            prev = name;
        }
        let started = std::time::Instant::now();
        assert_eq!(to_json(&text, Limits::default()), Err(YamlError::AliasesTooLarge(1_000_000)));
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn deep_nesting_complex_keys_and_syntax_errors_are_refused() {
        let block: String = (0..150).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        assert_eq!(to_json(&block, Limits::default()), Err(YamlError::TooDeep(100)));
        // The parser stops deep flow collections itself.
        let flow = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(matches!(to_json(&flow, Limits::default()), Err(YamlError::Syntax(_) | YamlError::TooDeep(_))));
        assert!(matches!(to_json("? [a]\n: b\n", Limits::default()), Err(YamlError::ComplexKey(_))));
        assert!(matches!(to_json("a: [1, 2\n", Limits::default()), Err(YamlError::Syntax(_))));
        assert!(matches!(to_json("a: *nope\n", Limits::default()), Err(YamlError::Syntax(_))));
        assert_eq!(load(""), Value::Null);
        assert_eq!(load("--- 5\n--- 6\n"), json!(5), "the first document");
    }
}
