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
                let whole = (n.fract() == 0.0 && (1.0..=1000.0).contains(&n)).then_some(n as usize);
                opts.size = whole.ok_or(EntityError::InvalidSize("size must be an integer between 1 and 1000"))?;
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
    if v.is_empty() {
        return Err(EntityError::InvalidOptions("tags", "cannot be null".into()));
    }
    let syntax = || EntityError::InvalidOptions("tags", "invalid filter syntax".into());
    let has_and = v.contains(',');
    let has_or = v.contains('/');
    let tag_byte = |b: u8| (0x20..=0x7E).contains(&b) && b != b',' && b != b'/' || (0x80..=0xF4).contains(&b);
    if has_and && has_or {
        return Err(syntax());
    }
    let split = if has_or { '/' } else { ',' };
    let tags: Vec<String> = v.split(split).filter(|t| !t.is_empty()).map(str::to_string).collect();
    if tags.is_empty() || tags.iter().any(|t| !t.bytes().all(tag_byte)) {
        return Err(syntax());
    }
    if tags.len() > 5 {
        return Err(EntityError::InvalidOptions("tags", "cannot query more than 5 tags".into()));
    }
    Ok(if has_or { TagFilter::Any(tags) } else { TagFilter::All(tags) })
}

/// The page body; `path` is the collection path used to build `next` (nested collections' links
/// carry only the offset, as Kong's do).
pub fn body(
    page: Page,
    path: &str,
    nested: bool,
    opts: &ListOptions,
    render: impl Fn(serde_json::Map<String, Value>) -> Value,
) -> Value {
    let data: Vec<Value> = page.data.into_iter().map(render).collect();
    let mut out = json!({ "data": data, "next": Value::Null });
    if let Some(offset) = page.offset {
        let mut next =
            format!("{path}?offset={}", url::form_urlencoded::byte_serialize(offset.as_bytes()).collect::<String>());
        if let (Some(tags), false) = (&opts.raw_tags, nested) {
            next.push_str(&format!(
                "&tags={}",
                url::form_urlencoded::byte_serialize(tags.as_bytes()).collect::<String>()
            ));
        }
        if opts.size_given && !nested {
            next.push_str(&format!("&size={}", opts.size));
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
        assert_eq!(
            parse(Some("tags=a,b/c")).expect_err("mixed").to_string(),
            "invalid option (tags: invalid filter syntax)"
        );
        assert_eq!(parse(Some("tags=")).expect_err("empty").to_string(), "invalid option (tags: cannot be null)");
        assert!(parse(Some("tags=a,b,c,d,e,f")).is_err());
    }

    #[test]
    fn next_link_keeps_size_and_tags() {
        let opts = parse(Some("size=2&tags=x")).expect("ok");
        let page = Page { data: vec![], offset: Some("abc=".into()) };
        let b = body(page, "/consumers", false, &opts, Value::Object);
        assert_eq!(b["next"], json!("/consumers?offset=abc%3D&tags=x&size=2"));
        assert_eq!(b["offset"], json!("abc="));
        let last = body(Page { data: vec![], offset: None }, "/consumers", false, &opts, Value::Object);
        assert_eq!(last, json!({"data": [], "next": null}));
    }
}
