//! List query options (`size`, `offset`, `tags`) with Kong's validation, and the page body
//! `{"data": […], "next": "/things?offset=…", "offset": "…"}`.

use serde_json::{Value, json};

use crate::model::EntityError;
use crate::store::{Page, TagFilter};

/// Parsed list options.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub size: usize,
    pub size_given: bool,
    pub offset: Option<String>,
    pub tags: Option<TagFilter>,
    pub raw_tags: Option<String>,
}

/// Parses `?size=&offset=&tags=` with Kong's errors.
pub fn parse(query: Option<&str>) -> Result<ListOptions, EntityError> {
    let mut opts = ListOptions { size: 100, ..ListOptions::default() };
    let Some(q) = query else { return Ok(opts) };
    for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
        match k.as_ref() {
            "size" => {
                let n: f64 = v.parse().map_err(|_| EntityError::InvalidSize("size must be a number"))?;
                if n.fract() != 0.0 || !(1.0..=1000.0).contains(&n) {
                    return Err(EntityError::InvalidSize("size must be an integer between 1 and 1000"));
                }
                opts.size = n as usize;
                opts.size_given = true;
            }
            "offset" => opts.offset = Some(v.into_owned()),
            "tags" => {
                opts.tags = Some(parse_tags(&v)?);
                opts.raw_tags = Some(v.into_owned());
            }
            _ => {}
        }
    }
    Ok(opts)
}

fn parse_tags(v: &str) -> Result<TagFilter, EntityError> {
    let has_and = v.contains(',');
    let has_or = v.contains('/');
    if has_and && has_or {
        return Err(EntityError::InvalidOptions("tags", "invalid filter: mixing of ',' and '/' is not allowed".into()));
    }
    let split = if has_or { '/' } else { ',' };
    let tags: Vec<String> = v.split(split).map(str::to_string).collect();
    if tags.iter().any(String::is_empty) {
        return Err(EntityError::InvalidOptions("tags", "invalid filter: empty tag".into()));
    }
    Ok(if has_or { TagFilter::Any(tags) } else { TagFilter::All(tags) })
}

/// The page body; `path` is the collection path used to build `next`.
pub fn body(
    page: Page,
    path: &str,
    opts: &ListOptions,
    render: impl Fn(serde_json::Map<String, Value>) -> Value,
) -> Value {
    let data: Vec<Value> = page.data.into_iter().map(render).collect();
    let mut out = json!({ "data": data, "next": Value::Null });
    if let Some(offset) = page.offset {
        let mut next =
            format!("{path}?offset={}", url::form_urlencoded::byte_serialize(offset.as_bytes()).collect::<String>());
        if opts.size_given {
            next.push_str(&format!("&size={}", opts.size));
        }
        if let Some(tags) = &opts.raw_tags {
            next.push_str(&format!(
                "&tags={}",
                url::form_urlencoded::byte_serialize(tags.as_bytes()).collect::<String>()
            ));
        }
        out["next"] = Value::String(next);
        out["offset"] = Value::String(offset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_errors_match_kong() {
        assert_eq!(parse(Some("size=abc")).expect_err("bad").to_string(), "size must be a number");
        assert_eq!(parse(Some("size=0")).expect_err("bad").to_string(), "size must be an integer between 1 and 1000");
        assert_eq!(
            parse(Some("size=1001")).expect_err("bad").to_string(),
            "size must be an integer between 1 and 1000"
        );
        assert_eq!(parse(Some("size=5")).expect("ok").size, 5);
        assert_eq!(parse(None).expect("ok").size, 100);
    }

    #[test]
    fn tags_and_or() {
        assert!(matches!(parse(Some("tags=a,b")).expect("ok").tags, Some(TagFilter::All(v)) if v == ["a", "b"]));
        assert!(matches!(parse(Some("tags=a/b")).expect("ok").tags, Some(TagFilter::Any(v)) if v == ["a", "b"]));
        assert!(parse(Some("tags=a,b/c")).is_err());
    }

    #[test]
    fn next_link_keeps_size_and_tags() {
        let opts = parse(Some("size=2&tags=x")).expect("ok");
        let page = Page { data: vec![], offset: Some("abc=".into()) };
        let b = body(page, "/consumers", &opts, Value::Object);
        assert_eq!(b["next"], json!("/consumers?offset=abc%3D&size=2&tags=x"));
        assert_eq!(b["offset"], json!("abc="));
        let last = body(Page { data: vec![], offset: None }, "/consumers", &opts, Value::Object);
        assert_eq!(last, json!({"data": [], "next": null}));
    }
}
