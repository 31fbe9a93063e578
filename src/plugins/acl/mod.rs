//! acl: lets a request through only when its consumer's groups (ACL credentials, and with
//! `include_consumer_groups` the consumer groups' names) satisfy `allow` or `deny`. Kong 3.x
//! statuses and messages; the groups go upstream in `X-Consumer-Groups` unless hidden.

use std::sync::{Arc, OnceLock};

use http::{HeaderValue, StatusCode};
use serde_json::Value;

use serde::Deserialize;

use super::{AccessCtx, BuildEnv, Flow, Plugin, PluginDef, Reply, typed};
use crate::headers as h;
use crate::identity::Consumer;
use crate::model::schema::{EntityCheck, Field, Obj, Schema, Type, Violation, Violations, is_nonempty};

pub const DEF: PluginDef = PluginDef {
    name: "acl",
    priority: 950,
    version: env!("CARGO_PKG_VERSION"),
    config: schema,
    no_consumer: true,
    shorthands: None,
    build,
};

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let groups = |name| Field::new(name, Type::Array(Box::new(Field::new("group", Type::String))));
        Schema {
            fields: vec![
                groups("allow"),
                groups("deny"),
                Field::new("hide_groups_header", Type::Boolean).required().default(Value::Bool(false)),
                Field::new("always_use_authenticated_groups", Type::Boolean).required().default(Value::Bool(false)),
                Field::new("include_consumer_groups", Type::Boolean).required().default(Value::Bool(false)),
            ],
            checks: vec![EntityCheck::Presence(allow_or_deny)],
        }
    })
}

/// Kong's `only_one_of` and `at_least_one_of` on `config.allow` / `config.deny`.
fn allow_or_deny(config: &Obj) -> Vec<Violation> {
    match (is_nonempty(config.get("allow")), is_nonempty(config.get("deny"))) {
        (true, true) => {
            vec![Violation::entity("only one of these fields must be non-empty: 'config.allow', 'config.deny'")]
        }
        (false, false) => {
            vec![Violation::entity("at least one of these fields must be non-empty: 'config.allow', 'config.deny'")]
        }
        _ => Vec::new(),
    }
}

#[derive(Debug)]
struct Acl {
    /// `true` for an allow list, `false` for a deny list.
    allow: bool,
    groups: Box<[Box<str>]>,
    hide_groups_header: bool,
    include_consumer_groups: bool,
    unauthorized: Reply,
    forbidden: Reply,
}

/// acl's configuration, as validated (Kong's `only_one_of` makes exactly one list non-empty).
/// `always_use_authenticated_groups` is accepted but has no effect: no auth plugin here produces
/// groups of its own.
#[derive(Debug, Deserialize)]
struct Config {
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    hide_groups_header: bool,
    include_consumer_groups: bool,
}

fn build(config: &Obj, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, Violations> {
    let config: Config = typed(config)?;
    let (allow, groups) = match (config.allow.filter(|a| !a.is_empty()), config.deny) {
        (Some(allow), _) => (true, allow),
        (None, deny) => (false, deny.unwrap_or_default()),
    };
    Ok(Arc::new(Acl {
        allow,
        groups: groups.into_iter().map(Into::into).collect(),
        hide_groups_header: config.hide_groups_header,
        include_consumer_groups: config.include_consumer_groups,
        unauthorized: Reply::message(StatusCode::UNAUTHORIZED, "Unauthorized"),
        forbidden: Reply::message(StatusCode::FORBIDDEN, "You cannot consume this service"),
    }))
}

impl Acl {
    fn has(&self, consumer: &Consumer, group: &str) -> bool {
        consumer.acl_groups.as_ref().is_some_and(|g| g.contains_name(group))
            || (self.include_consumer_groups && consumer.groups.as_ref().is_some_and(|g| g.contains_name(group)))
    }

    /// The groups sent upstream: ACL groups, plus consumer groups when they count.
    fn header(&self, consumer: &Consumer) -> Option<HeaderValue> {
        let acl = consumer.acl_groups.as_ref();
        let cg = consumer.groups.as_ref().filter(|_| self.include_consumer_groups);
        match (acl, cg) {
            (Some(a), None) => Some(a.header.clone()),
            (None, Some(g)) => Some(g.header.clone()),
            (None, None) => None,
            (Some(a), Some(g)) => {
                let mut names: Vec<&str> = a.entries.iter().chain(g.entries.iter()).map(|e| &*e.name).collect();
                names.sort_unstable();
                names.dedup();
                HeaderValue::from_str(&names.join(", ")).ok()
            }
        }
    }
}

impl Plugin for Acl {
    fn access(&self, ctx: &mut AccessCtx<'_>) -> Flow {
        let Some(consumer) = ctx.consumer.clone() else {
            return Flow::Respond(self.unauthorized.clone());
        };
        let has_groups = consumer.acl_groups.is_some() || (self.include_consumer_groups && consumer.groups.is_some());
        let allowed = if !has_groups {
            // A deny list lets a consumer without groups through; an allow list does not.
            if self.allow {
                let reply = if ctx.credential_id.is_some() { &self.forbidden } else { &self.unauthorized };
                return Flow::Respond(reply.clone());
            }
            true
        } else {
            let listed = self.groups.iter().any(|g| self.has(&consumer, g));
            listed == self.allow
        };
        if !allowed {
            return Flow::Respond(self.forbidden.clone());
        }
        if !self.hide_groups_header {
            let groups = self.header(&consumer);
            match (&mut ctx.upstream_identity, groups) {
                (Some(identity), groups) => identity.groups = groups,
                (None, Some(v)) => drop(ctx.parts.headers.insert(h::X_CONSUMER_GROUPS, v)),
                (None, None) => drop(ctx.parts.headers.remove(h::X_CONSUMER_GROUPS)),
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::validate;
    use serde_json::json;

    fn obj(v: Value) -> Obj {
        match v {
            Value::Object(m) => m,
            _ => Obj::new(),
        }
    }

    #[test]
    fn exactly_one_of_allow_and_deny() {
        let both = validate(schema(), &obj(json!({"allow": ["a"], "deny": ["b"]}))).expect_err("both");
        assert!(both.message().contains("only one of these fields must be non-empty"), "{}", both.message());
        let none = validate(schema(), &obj(json!({}))).expect_err("none");
        assert!(none.message().contains("at least one of these fields must be non-empty"), "{}", none.message());
        let ok = validate(schema(), &obj(json!({"allow": ["a"]}))).expect("valid");
        assert_eq!(ok["hide_groups_header"], json!(false));
    }
}
