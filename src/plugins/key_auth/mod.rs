//! key-auth: finds an API key in a header, the query string or the body, looks it up in the identity
//! directory's credential index (one hash lookup) and attaches the consumer. Kong 3.x messages, statuses and
//! `WWW-Authenticate`. Everything derivable from the configuration is computed when the plugin is built.

mod schema;

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};

use super::request::{self, Found};
use serde::Deserialize;

use super::{AccessCtx, AccessFuture, BuildEnv, Flow, Plugin, PluginDef, RealmScope, Reply, UpstreamIdentity, typed};
use crate::identity::{Authenticated, Consumer};
use crate::model::schema::{Obj, Violations};

pub const DEF: PluginDef = PluginDef {
    name: "key-auth",
    priority: 1250,
    version: env!("CARGO_PKG_VERSION"),
    config: schema::schema,
    no_consumer: true,
    shorthands: None,
    build,
};

/// One entry of `key_names`: the query/body name and the header spellings that match it (Kong treats
/// `_` and `-` in header names as the same).
#[derive(Debug)]
struct KeyName {
    name: String,
    headers: Vec<HeaderName>,
}

/// What to do when authentication fails and `anonymous` is set.
#[derive(Debug)]
enum Anonymous {
    Off,
    Consumer(Arc<Consumer>),
    Missing(Reply),
}

/// One step of `identity_realms`, in order: the control plane's own consumers, or realms (a run of
/// realm entries is one lookup).
#[derive(Debug)]
enum Identity {
    ControlPlane,
    /// The realms' lookups (None where no resolver exists: a node that is not a data plane).
    Realms(Vec<String>, Option<Arc<dyn RealmScope>>),
}

#[derive(Debug)]
pub struct KeyAuth {
    identity: Vec<Identity>,
    /// Whether some realm can be asked (the access phase then waits on lookups).
    resolves_realms: bool,
    key_names: Vec<KeyName>,
    hide_credentials: bool,
    key_in_header: bool,
    key_in_query: bool,
    key_in_body: bool,
    run_on_preflight: bool,
    anonymous: Anonymous,
    no_key: Reply,
    invalid: Reply,
    duplicate: Reply,
}

/// key-auth's configuration, as validated.
#[derive(Debug, Deserialize)]
struct Config {
    key_names: Vec<String>,
    hide_credentials: bool,
    anonymous: Option<String>,
    key_in_header: bool,
    key_in_query: bool,
    key_in_body: bool,
    run_on_preflight: bool,
    realm: Option<String>,
    identity_realms: Vec<IdentityRealm>,
}

/// One entry of `identity_realms` (`region` is accepted and ignored).
#[derive(Debug, Deserialize)]
struct IdentityRealm {
    scope: RealmScopeKind,
    id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RealmScopeKind {
    Cp,
    Realm,
}

fn build(config: &Obj, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, Violations> {
    let config: Config = typed(config)?;
    let key_names = config
        .key_names
        .into_iter()
        .map(|name| {
            let lower = name.to_ascii_lowercase();
            let mut spellings = vec![lower.clone(), lower.replace('_', "-"), lower.replace('-', "_")];
            spellings.sort();
            spellings.dedup();
            let headers = spellings
                .iter()
                .map(|s| HeaderName::from_bytes(s.as_bytes()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| Violations::single("key_names", format!("bad header name '{name}'")))?;
            Ok(KeyName { name, headers })
        })
        .collect::<Result<Vec<_>, Violations>>()?;
    let www = match &config.realm {
        Some(r) => format!("Key realm=\"{r}\""),
        None => "Key".to_string(),
    };
    let www = HeaderValue::from_str(&www)
        .map_err(|_| Violations::single("realm", "invalid value: must not contain control characters"))?;
    let unauthorized = |msg: &str| {
        let mut r = Reply::message(StatusCode::UNAUTHORIZED, msg);
        r.headers.push((http::header::WWW_AUTHENTICATE, www.clone()));
        r
    };
    let anonymous = match &config.anonymous {
        None => Anonymous::Off,
        Some(id) => match env.consumers.find(id) {
            Some(c) => Anonymous::Consumer(c),
            None => Anonymous::Missing(Reply::message(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("anonymous consumer {id} is configured but doesn't exist"),
            )),
        },
    };
    let mut identity: Vec<Identity> = Vec::new();
    for entry in config.identity_realms {
        match (entry.scope, entry.id) {
            (RealmScopeKind::Realm, Some(id)) => match identity.last_mut() {
                Some(Identity::Realms(list, _)) => list.push(id),
                _ => identity.push(Identity::Realms(vec![id], None)),
            },
            (RealmScopeKind::Realm, None) => {
                return Err(Violations::single("identity_realms", "a realm entry needs its 'id'"));
            }
            (RealmScopeKind::Cp, _) => identity.push(Identity::ControlPlane),
        }
    }
    if identity.is_empty() {
        identity.push(Identity::ControlPlane);
    }
    if let Some(resolver) = env.realms {
        for step in identity.iter_mut() {
            if let Identity::Realms(list, scope) = step {
                *scope = Some(resolver.scope(list));
            }
        }
    }
    let resolves_realms = identity.iter().any(|i| matches!(i, Identity::Realms(_, Some(_))));
    Ok(Arc::new(KeyAuth {
        resolves_realms,
        identity,
        key_names,
        hide_credentials: config.hide_credentials,
        key_in_header: config.key_in_header,
        key_in_query: config.key_in_query,
        key_in_body: config.key_in_body,
        run_on_preflight: config.run_on_preflight,
        anonymous,
        no_key: unauthorized("No API key found in request"),
        invalid: unauthorized("Unauthorized"),
        duplicate: unauthorized("Duplicate API key found"),
    }))
}

impl KeyAuth {
    /// Finds the key in the request (for each key name in turn: headers, query, body), borrowed from
    /// it: a key costs no allocation on its way to the credential index.
    fn find<'r>(
        &self,
        parts: &'r http::request::Parts,
        body: Option<&'r Bytes>,
    ) -> Result<(Cow<'r, str>, &KeyName), &Reply> {
        for key_name in &self.key_names {
            let mut found = Found::None;
            if self.key_in_header {
                for header in &key_name.headers {
                    let mut values = parts.headers.get_all(header).iter();
                    if let Some(v) = values.next() {
                        if values.next().is_some() || found != Found::None {
                            return Err(&self.duplicate);
                        }
                        found = Found::One(String::from_utf8_lossy(v.as_bytes()));
                    }
                }
            }
            if found == Found::None
                && self.key_in_query
                && let Some(q) = parts.uri.query()
            {
                found = request::find_pair(q, &key_name.name);
            }
            if found == Found::None
                && self.key_in_body
                && let Some(body) = body
            {
                found = request::find_in_body(request::body_kind(&parts.headers), body, &key_name.name);
            }
            match found {
                Found::None => continue,
                Found::Many => return Err(&self.duplicate),
                Found::One(key) => return Ok((key, key_name)),
            }
        }
        Err(&self.no_key)
    }

    /// Removes the key from where it was found (`hide_credentials`).
    fn hide(&self, ctx: &mut AccessCtx<'_>, key_name: &KeyName) {
        for header in &key_name.headers {
            ctx.parts.headers.remove(header);
        }
        if let Some(q) = ctx.parts.uri.query()
            && let Some(rest) = request::remove_pair(q, &key_name.name)
        {
            ctx.parts.uri = request::with_query(&ctx.parts.uri, &rest);
        }
        if self.key_in_body {
            let kind = request::body_kind(&ctx.parts.headers);
            let removed = ctx.body.as_ref().and_then(|b| request::remove_from_body(kind, b, &key_name.name));
            if let Some(new_body) = removed {
                ctx.body = Some(new_body);
            }
        }
    }

    fn authenticate(&self, ctx: &mut AccessCtx<'_>) -> Result<(), Reply> {
        let (found, key_name) = {
            let (key, key_name) = self.find(ctx.parts, ctx.body.as_ref()).map_err(Clone::clone)?;
            let found = if key.is_empty() {
                Err(&self.no_key)
            } else if !self.identity.iter().any(|i| matches!(i, Identity::ControlPlane)) {
                // Realms need a lookup: only the control plane's own consumers are tried here.
                Err(&self.invalid)
            } else {
                ctx.identity.authenticate(&key).ok_or(&self.invalid)
            };
            (found, key_name)
        };
        if self.hide_credentials {
            self.hide(ctx, key_name);
        }
        attach(ctx, found.map_err(Clone::clone)?);
        Ok(())
    }

    /// [`KeyAuth::authenticate`] through `identity_realms` in order, asking the resolver for realm
    /// keys. A lookup that fails (control plane unreachable) refuses the key: never open.
    async fn authenticate_with_realms(&self, ctx: &mut AccessCtx<'_>) -> Result<(), Reply> {
        let (key, key_name) = {
            let (key, key_name) = self.find(ctx.parts, ctx.body.as_ref()).map_err(Clone::clone)?;
            (key.into_owned(), key_name)
        };
        if self.hide_credentials {
            self.hide(ctx, key_name);
        }
        if key.is_empty() {
            return Err(self.no_key.clone());
        }
        let identity = ctx.identity;
        for step in &self.identity {
            let found = match step {
                Identity::ControlPlane => identity.authenticate(&key),
                Identity::Realms(_, scope) => match scope {
                    Some(scope) => match scope.resolve(&key, identity).await {
                        Ok(found) => found,
                        Err(e) => {
                            tracing::warn!(error = %e, "realm key lookup failed; key refused");
                            None
                        }
                    },
                    None => None,
                },
            };
            if let Some(auth) = found {
                attach(ctx, auth);
                return Ok(());
            }
        }
        Err(self.invalid.clone())
    }

    /// What a failed authentication leads to: the anonymous consumer, or the reply.
    fn conclude(&self, ctx: &mut AccessCtx<'_>, result: Result<(), Reply>) -> Flow {
        match (&self.anonymous, result) {
            (_, Ok(())) => Flow::Continue,
            (Anonymous::Off, Err(reply)) => Flow::Respond(reply),
            (Anonymous::Consumer(c), Err(_)) => {
                set_consumer(ctx, c, None);
                ctx.consumer = Some(c.clone());
                ctx.anonymous = true;
                Flow::Continue
            }
            (Anonymous::Missing(reply), Err(_)) => Flow::Respond(reply.clone()),
        }
    }

    /// Nothing to do: a preflight left alone, or (with `anonymous`) an earlier auth plugin already
    /// identified the client ("logical OR").
    fn skip(&self, ctx: &AccessCtx<'_>) -> bool {
        (!self.run_on_preflight && ctx.parts.method == Method::OPTIONS)
            || (!matches!(self.anonymous, Anonymous::Off) && ctx.credential_id.is_some())
    }
}

fn attach(ctx: &mut AccessCtx<'_>, auth: Authenticated) {
    set_consumer(ctx, &auth.consumer, Some(auth.id));
    ctx.consumer = Some(auth.consumer);
    ctx.credential_id = Some(auth.id);
}

impl Plugin for KeyAuth {
    fn access(&self, ctx: &mut AccessCtx<'_>) -> Flow {
        if self.skip(ctx) {
            return Flow::Continue;
        }
        let result = self.authenticate(ctx);
        self.conclude(ctx, result)
    }

    fn is_async(&self) -> bool {
        self.resolves_realms
    }

    fn access_async<'a>(&'a self, ctx: &'a mut AccessCtx<'_>) -> AccessFuture<'a> {
        Box::pin(async move {
            if self.skip(ctx) {
                return Flow::Continue;
            }
            let result = self.authenticate_with_realms(ctx).await;
            self.conclude(ctx, result)
        })
    }

    fn needs_body(&self) -> bool {
        self.key_in_body
    }
}

/// Sets the consumer headers sent upstream, as every auth plugin does (written when the upstream
/// request is encoded; see [`UpstreamIdentity`]).
pub fn set_consumer(ctx: &mut AccessCtx<'_>, consumer: &Arc<Consumer>, credential: Option<uuid::Uuid>) {
    ctx.upstream_identity = Some(UpstreamIdentity {
        consumer: consumer.clone(),
        credential,
        groups: consumer.groups.as_ref().map(|g| g.header.clone()),
    });
}
