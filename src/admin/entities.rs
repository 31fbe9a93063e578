//! Generic Admin API handlers for every entity collection, top-level (`/consumers`) or nested under a
//! parent (`/consumers/{c}/key-auth`): list, create, read, PATCH, PUT and DELETE with Kong's
//! addressing (id or endpoint key), status codes and error bodies.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::AdminState;
use super::body::{AdminBody, Encoding};
use super::error::{AdminError, AdminResult};
use super::pagination;
use crate::model::schema::{Obj, is_uuid};
use crate::model::{EntityError, Kind, Mode};
use crate::snapshot::compile;
use crate::store::{ListQuery, WriteOp};

/// A parent in a nested path: the child's foreign-key field and the parent's kind.
#[derive(Debug, Clone, Copy)]
pub struct Parent {
    pub kind: Kind,
    pub field: &'static str,
}

/// Path parameters split into the parent's segment (if nested) and the item's (if any).
struct Segments<'a> {
    parent: Option<&'a str>,
    item: Option<&'a str>,
}

fn segments(parent: Option<Parent>, params: &[String]) -> Segments<'_> {
    match (parent, params) {
        (Some(_), [p, i, ..]) => Segments { parent: Some(p), item: Some(i) },
        (Some(_), [p]) => Segments { parent: Some(p), item: None },
        (None, [i, ..]) => Segments { parent: None, item: Some(i) },
        _ => Segments { parent: None, item: None },
    }
}

fn id_of(obj: &Obj) -> String {
    obj.get("id").and_then(Value::as_str).unwrap_or_default().to_string()
}

fn belongs(child: &Obj, parent: Parent, parent_id: &str) -> bool {
    child.get(parent.field).and_then(|f| f.get("id")).and_then(Value::as_str) == Some(parent_id)
}

impl AdminState {
    async fn parent_obj(&self, parent: Option<Parent>, seg: Option<&str>) -> AdminResult<Option<(Parent, String)>> {
        match (parent, seg) {
            // `/certificates/{SNI name}/snis`: a certificate is also addressed by a name it serves.
            (Some(p), Some(key)) if p.kind == Kind::Certificate && !is_uuid(key) => {
                let sni = self.store.lookup(&self.cp(), Kind::Sni, key).await?.ok_or(AdminError::NotFound)?;
                let cert = sni.get("certificate").and_then(|c| c.get("id")).and_then(Value::as_str).unwrap_or_default();
                Ok(Some((p, cert.to_string())))
            }
            (Some(p), Some(key)) => {
                let obj = self.store.lookup(&self.cp(), p.kind, key).await?.ok_or(AdminError::NotFound)?;
                Ok(Some((p, id_of(&obj))))
            }
            _ => Ok(None),
        }
    }

    /// Finds an item, checking it belongs to the parent when nested.
    async fn item(&self, kind: Kind, parent: &Option<(Parent, String)>, key: &str) -> AdminResult<Option<Obj>> {
        let found = match parent {
            Some((p, pid)) => self.store.lookup_under(&self.cp(), kind, key, (p.field, pid)).await?,
            None => self.store.lookup(&self.cp(), kind, key).await?,
        };
        Ok(match (found, parent) {
            (Some(obj), Some((p, pid))) if !belongs(&obj, *p, pid) => None,
            (found, _) => found,
        })
    }

    pub async fn list_entities(
        &self,
        kind: Kind,
        parent: Option<Parent>,
        params: &[String],
        query: Option<&str>,
        path: &str,
    ) -> AdminResult<Response> {
        let seg = segments(parent, params);
        let parent = self.parent_obj(parent, seg.parent).await?;
        let opts = pagination::parse(query)?;
        // Kong's `GET /consumers?custom_id=…`: the one consumer with it, or none.
        if kind == Kind::Consumer
            && parent.is_none()
            && let Some(custom_id) = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .find(|(k, _)| k == "custom_id")
                .map(|(_, v)| v.into_owned())
        {
            let found = self.store.get_by(&self.cp(), kind, "custom_id", &custom_id).await?;
            let data: Vec<Value> = found.into_iter().map(Value::Object).collect();
            return Ok(Json(serde_json::json!({"data": data, "next": Value::Null})).into_response());
        }
        let q = ListQuery {
            cp: &self.cp(),
            parent: parent.map(|(p, id)| (p.field, id)),
            size: opts.size,
            offset: opts.offset.clone(),
            tags: opts.tags.clone(),
        };
        let page = self.store.list(kind, &q).await?;
        Ok(Json(pagination::body(page, path, q.parent.is_some(), &opts, Value::Object)).into_response())
    }

    pub async fn create_entity(
        &self,
        kind: Kind,
        parent: Option<Parent>,
        params: &[String],
        body: AdminBody,
    ) -> AdminResult<Response> {
        let seg = segments(parent, params);
        let parent = self.parent_obj(parent, seg.parent).await?;
        let (fields, ttl) = self.input(kind, body, parent.as_ref(), None)?;
        let record = compile::prepare(kind, fields, Mode::Create)?;
        let stored = self.store.write(&self.cp(), kind, WriteOp::Insert, record, ttl).await?;
        Ok((StatusCode::CREATED, Json(Value::Object(stored))).into_response())
    }

    pub async fn read_entity(&self, kind: Kind, parent: Option<Parent>, params: &[String]) -> AdminResult<Response> {
        let seg = segments(parent, params);
        let parent = self.parent_obj(parent, seg.parent).await?;
        let key = seg.item.ok_or(AdminError::NotFound)?;
        let obj = self.item(kind, &parent, key).await?.ok_or(AdminError::NotFound)?;
        Ok(Json(Value::Object(obj)).into_response())
    }

    pub async fn patch_entity(
        &self,
        kind: Kind,
        parent: Option<Parent>,
        params: &[String],
        body: AdminBody,
    ) -> AdminResult<Response> {
        let seg = segments(parent, params);
        let parent = self.parent_obj(parent, seg.parent).await?;
        let key = seg.item.ok_or(AdminError::NotFound)?;
        let existing = match self.item(kind, &parent, key).await? {
            Some(existing) => existing,
            // Nested paths answer a bare 404; a top-level PATCH says which key found nothing.
            None if parent.is_some() => return Err(AdminError::NotFound),
            None => {
                let field = if is_uuid(key) { "id" } else { kind.endpoint_key() };
                return Err(EntityError::not_found(field, Value::String(key.to_string())).into());
            }
        };
        let (fields, ttl) = self.input(kind, body, parent.as_ref(), Some(&existing))?;
        let record = compile::prepare(kind, fields, Mode::Patch(existing))?;
        let stored = self.store.write(&self.cp(), kind, WriteOp::Update, record, ttl).await?;
        Ok(Json(Value::Object(stored)).into_response())
    }

    pub async fn put_entity(
        &self,
        kind: Kind,
        parent: Option<Parent>,
        params: &[String],
        body: AdminBody,
    ) -> AdminResult<Response> {
        let seg = segments(parent, params);
        let parent = self.parent_obj(parent, seg.parent).await?;
        let key = seg.item.ok_or(AdminError::NotFound)?;
        let existing = self.item(kind, &parent, key).await?;
        let (mut fields, ttl) = self.input(kind, body, parent.as_ref(), None)?;
        if is_uuid(key) {
            fields.insert("id".into(), Value::String(key.to_string()));
        } else {
            fields.insert(kind.endpoint_key().into(), Value::String(key.to_string()));
        }
        let record = compile::prepare(kind, fields, Mode::Replace(existing))?;
        let stored = self.store.write(&self.cp(), kind, WriteOp::Upsert, record, ttl).await?;
        Ok(Json(Value::Object(stored)).into_response())
    }

    pub async fn delete_entity(&self, kind: Kind, parent: Option<Parent>, params: &[String]) -> AdminResult<Response> {
        let seg = segments(parent, params);
        let parent = self.parent_obj(parent, seg.parent).await?;
        let key = seg.item.ok_or(AdminError::NotFound)?;
        match self.item(kind, &parent, key).await? {
            Some(obj) => {
                let id = id_of(&obj);
                if kind == Kind::CaCertificate
                    && let Some(service) = self.store.service_using_ca(&self.cp(), &id).await?
                {
                    let msg = format!("ca certificate {id} is still referenced by services (id = {service})");
                    return Err(EntityError::ReferencedByOthers(msg).into());
                }
                self.store.delete(&self.cp(), kind, &id).await?
            }
            // Deleting nothing is fine at the top level; under a parent Kong answers 404.
            None if parent.is_some() => return Err(AdminError::NotFound),
            None => {}
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    /// The body as entity fields: form values coerced (against the stored entity for a PATCH), the
    /// parent's key set, options taken out.
    fn input(
        &self,
        kind: Kind,
        body: AdminBody,
        parent: Option<&(Parent, String)>,
        stored: Option<&Obj>,
    ) -> AdminResult<(Obj, Option<i64>)> {
        let mut fields = body.fields;
        let mut ttl = None;
        if kind.has_ttl()
            && let Some(v) = fields.remove("ttl")
        {
            let n = match &v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.parse::<i64>().ok(),
                Value::Null => None,
                _ => None,
            };
            match (v.is_null(), n) {
                (true, _) => {}
                (false, Some(n)) if (0..=100_000_000).contains(&n) => ttl = Some(n),
                _ => {
                    let msg = "must be an integer between 0 and 100000000".to_string();
                    return Err(EntityError::InvalidOptions("ttl", msg).into());
                }
            }
        }
        if kind == Kind::Consumer {
            // Kong 0.x took the external id as `consumer_id`; keep accepting it.
            if let Some(v) = fields.remove("consumer_id") {
                fields.entry("custom_id").or_insert(v);
            }
        }
        if body.encoding == Encoding::Form {
            compile::coerce(kind, &mut fields, stored);
        }
        if let Some((p, pid)) = parent {
            let mut fk = Map::new();
            fk.insert("id".into(), Value::String(pid.clone()));
            fields.insert(p.field.into(), Value::Object(fk));
        }
        Ok((fields, ttl))
    }
}
