//! An upstream's targets as Kong serves them (`kong/api/routes/upstreams.lua`): listed and created
//! under `/upstreams/{u}/targets` only (other methods there are 405, and `/targets` is 404), the raw
//! `/targets/all` page, and one target by id or `host:port`, which PUT updates but never creates. A
//! target named without a port means port 8000, as it was stored.

use axum::extract::{OriginalUri, Path, State};
use axum::routing::{MethodRouter, get};
use serde_json::{Map, Value};

use super::AdminState;
use super::body::AdminBody;
use super::entities::Parent;
use super::error::{AdminError, AdminResult};
use crate::model::Kind;
use crate::model::schema::is_uuid;
use crate::model::upstreams::normalize_target;

const UNDER_UPSTREAM: Option<Parent> = Some(Parent { kind: Kind::Upstream, field: "upstream" });

/// `GET` and `POST /upstreams/{u}/targets` (and `/targets/all`, the same list).
pub fn collection() -> MethodRouter<AdminState> {
    get(|State(s): State<AdminState>, Path(p): Path<Vec<String>>, OriginalUri(uri): OriginalUri| async move {
        s.list_entities(Kind::Target, UNDER_UPSTREAM, &p, uri.query(), uri.path()).await
    })
    .post(|State(s): State<AdminState>, Path(p): Path<Vec<String>>, body: AdminBody| async move {
        s.create_entity(Kind::Target, UNDER_UPSTREAM, &p, body).await
    })
}

/// `GET /upstreams/{u}/targets/all`.
pub fn all() -> MethodRouter<AdminState> {
    get(|State(s): State<AdminState>, Path(p): Path<Vec<String>>, OriginalUri(uri): OriginalUri| async move {
        s.list_entities(Kind::Target, UNDER_UPSTREAM, &p, uri.query(), uri.path()).await
    })
}

/// The path's `[upstream, target]` with the target in its stored form (`host:port`).
fn stored_key(mut params: Vec<String>) -> Vec<String> {
    if let Some(key) = params.get_mut(1).filter(|k| !is_uuid(k)) {
        let mut probe = Map::new();
        probe.insert("target".into(), Value::String(key.clone()));
        normalize_target(&mut probe);
        if let Some(Value::String(t)) = probe.remove("target") {
            *key = t;
        }
    }
    params
}

/// `/upstreams/{u}/targets/{id or host:port}`.
pub fn item() -> MethodRouter<AdminState> {
    get(|State(s): State<AdminState>, Path(p): Path<Vec<String>>| async move {
        s.read_entity(Kind::Target, UNDER_UPSTREAM, &stored_key(p)).await
    })
    .patch(|State(s): State<AdminState>, Path(p): Path<Vec<String>>, body: AdminBody| async move {
        s.patch_entity(Kind::Target, UNDER_UPSTREAM, &stored_key(p), body).await
    })
    .put(|State(s): State<AdminState>, Path(p): Path<Vec<String>>, body: AdminBody| async move {
        s.put_target(stored_key(p), body).await
    })
    .delete(|State(s): State<AdminState>, Path(p): Path<Vec<String>>| async move {
        s.delete_entity(Kind::Target, UNDER_UPSTREAM, &stored_key(p)).await
    })
}

impl AdminState {
    /// Kong's PUT on a target updates one that exists and never creates it.
    async fn put_target(&self, params: Vec<String>, body: AdminBody) -> AdminResult<axum::response::Response> {
        let (Some(upstream), Some(key)) = (params.first(), params.get(1)) else { return Err(AdminError::NotFound) };
        let upstream = self.store.lookup(&self.cp(), Kind::Upstream, upstream).await?.ok_or(AdminError::NotFound)?;
        let upstream_id = upstream.get("id").and_then(Value::as_str).unwrap_or_default();
        let existing = self.store.lookup_under(&self.cp(), Kind::Target, key, ("upstream", upstream_id)).await?;
        let belongs = existing
            .as_ref()
            .and_then(|t| t.get("upstream")?.get("id")?.as_str().map(|id| id == upstream_id))
            .unwrap_or(false);
        if !belongs {
            return Err(AdminError::NotFound);
        }
        self.put_entity(Kind::Target, UNDER_UPSTREAM, &params, body).await
    }
}
