//! Consumer group memberships, from both sides (Kong EE's shapes): `/consumer_groups/{g}` with its
//! members, `/consumer_groups/{g}/consumers[/{c}]` and `/consumers/{c}/consumer_groups[/{g}]`. The groups
//! themselves and their plugins are plain entities served by `entities`.

use axum::Json;
use axum::extract::{OriginalUri, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::body::AdminBody;
use super::error::{AdminError, AdminResult};
use super::pagination;
use super::{AdminState, Body, Endpoint};
use crate::model::schema::Obj;
use crate::model::{EntityError, Kind, Mode};
use crate::snapshot::compile;
use crate::store::{ListQuery, WriteOp};

/// One side of a membership: the entity in the path and the one named in the body.
#[derive(Debug, Clone, Copy)]
struct Side {
    /// The kind addressed by the path.
    kind: Kind,
    /// Its foreign-key field on a membership.
    field: &'static str,
    /// The other side's kind, field, body field and plural response key.
    other: Kind,
    other_field: &'static str,
    body_field: &'static str,
    plural: &'static str,
}

const GROUP: Side = Side {
    kind: Kind::ConsumerGroup,
    field: "consumer_group",
    other: Kind::Consumer,
    other_field: "consumer",
    body_field: "consumer",
    plural: "consumers",
};

const CONSUMER: Side = Side {
    kind: Kind::Consumer,
    field: "consumer",
    other: Kind::ConsumerGroup,
    other_field: "consumer_group",
    body_field: "group",
    plural: "consumer_groups",
};

/// `GET /consumer_groups/{g}`: the group and its consumers; the rest of the item methods are the
/// generic ones.
pub fn group_item(generic: Endpoint) -> Endpoint {
    generic
        .get(|State(s): State<AdminState>, Path(g): Path<String>| async move {
            let group = s.find(Kind::ConsumerGroup, &g).await?;
            let members = s.members(GROUP, &id(&group), 1000, None).await?.0;
            Ok::<_, AdminError>(Json(json!({ "consumer_group": group, "consumers": members })))
        })
        .answers(Body::Object)
}

/// `/consumer_groups/{g}/consumers` and `/consumers/{c}/consumer_groups`.
pub fn memberships(consumer_side: bool) -> Endpoint {
    let side = if consumer_side { CONSUMER } else { GROUP };
    let about = if consumer_side { "A consumer's groups" } else { "A consumer group's consumers" };
    Endpoint::other(about)
        .get(move |State(s): State<AdminState>, Path(key): Path<String>, OriginalUri(uri): OriginalUri| async move {
            s.list_members(side, &key, uri.query(), uri.path()).await
        })
        .post(move |State(s): State<AdminState>, Path(key): Path<String>, body: AdminBody| async move {
            s.add_members(side, &key, body).await
        })
        .delete(move |State(s): State<AdminState>, Path(key): Path<String>| async move {
            s.remove_members(side, &key, None).await
        })
}

/// `/consumer_groups/{g}/consumers/{c}` and `/consumers/{c}/consumer_groups/{g}`.
pub fn membership(consumer_side: bool) -> Endpoint {
    let side = if consumer_side { CONSUMER } else { GROUP };
    let about = if consumer_side { "A consumer's membership of a group" } else { "A consumer group's member" };
    Endpoint::other(about)
        .get(move |State(s): State<AdminState>, Path((key, other)): Path<(String, String)>| async move {
            s.read_member(side, &key, &other).await
        })
        .delete(move |State(s): State<AdminState>, Path((key, other)): Path<(String, String)>| async move {
            s.remove_members(side, &key, Some(&other)).await
        })
}

fn id(obj: &Obj) -> String {
    obj.get("id").and_then(Value::as_str).unwrap_or_default().to_string()
}

fn fk(obj: &Obj, field: &str) -> String {
    obj.get(field).and_then(|v| v.get("id")).and_then(Value::as_str).unwrap_or_default().to_string()
}

impl AdminState {
    async fn find(&self, kind: Kind, key: &str) -> AdminResult<Obj> {
        self.store.lookup(&self.cp(), kind, key).await?.ok_or(AdminError::NotFound)
    }

    /// The entities on the other side of `side`'s memberships, one page.
    async fn members(
        &self,
        side: Side,
        side_id: &str,
        size: usize,
        offset: Option<String>,
    ) -> AdminResult<(Vec<Value>, Option<String>)> {
        let q = ListQuery { cp: &self.cp(), parent: Some((side.field, side_id.to_string())), size, offset, tags: None };
        let page = self.store.list(Kind::GroupMembership, &q).await?;
        let mut out = Vec::with_capacity(page.data.len());
        for m in &page.data {
            if let Some(obj) = self.store.get(&self.cp(), side.other, &fk(m, side.other_field)).await? {
                out.push(Value::Object(obj));
            }
        }
        Ok((out, page.offset))
    }

    async fn list_members(&self, side: Side, key: &str, query: Option<&str>, path: &str) -> AdminResult<Response> {
        let owner = self.find(side.kind, key).await?;
        let opts = pagination::parse(query)?;
        let (data, offset) = self.members(side, &id(&owner), opts.size, opts.offset.clone()).await?;
        let page = crate::store::Page { data: Vec::new(), offset };
        let mut body = pagination::body(page, path, true, &opts, Value::Object);
        body["data"] = Value::Array(data);
        Ok(Json(body).into_response())
    }

    /// Adds one or several (`consumer` / `group` as a string or an array) memberships.
    async fn add_members(&self, side: Side, key: &str, body: AdminBody) -> AdminResult<Response> {
        let owner = self.find(side.kind, key).await?;
        let names: Vec<String> = match body.fields.get(side.body_field) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => {
                a.iter().filter_map(Value::as_str).map(str::to_string).collect()
            }
            Some(_) => {
                let msg = "expected a string or an array of strings";
                return Err(EntityError::schema(side.body_field, msg).into());
            }
            None => return Err(EntityError::schema(side.body_field, "required field missing").into()),
        };
        // Every name is resolved before anything is written.
        let mut others = Vec::with_capacity(names.len());
        for name in &names {
            match self.store.lookup(&self.cp(), side.other, name).await? {
                Some(o) => others.push(o),
                None => {
                    let what = if side.other == Kind::Consumer { "consumer" } else { "consumer group" };
                    return Err(AdminError::NotFoundMessage(format!("{what} '{name}' not found")));
                }
            }
        }
        for other in &others {
            let mut fields = Map::new();
            fields.insert(side.field.into(), json!({ "id": id(&owner) }));
            fields.insert(side.other_field.into(), json!({ "id": id(other) }));
            let record = compile::prepare(Kind::GroupMembership, fields, Mode::Create)?;
            self.store.write(&self.cp(), Kind::GroupMembership, WriteOp::Insert, record, None).await?;
        }
        let own_key = if side.kind == Kind::Consumer { "consumer" } else { "consumer_group" };
        let others: Vec<Value> = others.into_iter().map(Value::Object).collect();
        let body = json!({ own_key: owner, side.plural: others });
        Ok((StatusCode::CREATED, Json(body)).into_response())
    }

    async fn read_member(&self, side: Side, key: &str, other: &str) -> AdminResult<Response> {
        let owner = self.find(side.kind, key).await?;
        let other = self.find(side.other, other).await?;
        self.membership_of(side, &id(&owner), &id(&other)).await?.ok_or(AdminError::NotFound)?;
        let key = if side.other == Kind::Consumer { "consumer" } else { "consumer_group" };
        Ok(Json(json!({ key: other })).into_response())
    }

    async fn membership_of(&self, side: Side, owner: &str, other: &str) -> AdminResult<Option<Obj>> {
        let (group, consumer) = if side.kind == Kind::ConsumerGroup { (owner, other) } else { (other, owner) };
        let key = format!("{group}|{consumer}");
        Ok(self.store.get_by(&self.cp(), Kind::GroupMembership, "cache_key", &key).await?)
    }

    /// Removes one membership, or all of the owner's.
    async fn remove_members(&self, side: Side, key: &str, other: Option<&str>) -> AdminResult<Response> {
        let owner = self.find(side.kind, key).await?;
        let owner_id = id(&owner);
        let ids: Vec<String> = match other {
            Some(other) => {
                let other = self.find(side.other, other).await?;
                let m = self.membership_of(side, &owner_id, &id(&other)).await?.ok_or(AdminError::NotFound)?;
                vec![id(&m)]
            }
            None => {
                let mut ids = Vec::new();
                let mut offset = None;
                loop {
                    let q = ListQuery {
                        cp: &self.cp(),
                        parent: Some((side.field, owner_id.clone())),
                        size: 1000,
                        offset,
                        tags: None,
                    };
                    let page = self.store.list(Kind::GroupMembership, &q).await?;
                    ids.extend(page.data.iter().map(id));
                    match page.offset {
                        Some(o) => offset = Some(o),
                        None => break,
                    }
                }
                ids
            }
        };
        for m in ids {
            self.store.delete(&self.cp(), Kind::GroupMembership, &m).await?;
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}
