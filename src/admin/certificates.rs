//! `/certificates` as Kong serves it: the `snis` shorthand (names created and deleted with the
//! certificate, in one transaction, always answered as a sorted list) and `/certificates/{x}` where
//! `x` is an SNI name instead of an id (the certificate holding that name; a PUT creates it).

use axum::Json;
use axum::extract::{OriginalUri, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::body::{AdminBody, Encoding};
use super::error::{AdminError, AdminResult};
use super::pagination;
use super::{AdminState, Endpoint};
use crate::model::schema::{Obj, Violation, Violations, is_uuid};
use crate::model::{EntityError, Kind, Mode};
use crate::snapshot::compile;
use crate::store::{ListQuery, WriteOp};

/// `GET` and `POST /certificates`.
pub fn collection() -> Endpoint {
    Endpoint::collection(Kind::Certificate)
        .get(|State(s): State<AdminState>, OriginalUri(uri): OriginalUri| async move {
            s.list_certificates(uri.query(), uri.path()).await
        })
        .post(|State(s): State<AdminState>, body: AdminBody| async move { s.create_certificate(body).await })
}

/// `/certificates/{id or SNI name}`.
pub fn item() -> Endpoint {
    Endpoint::item(Kind::Certificate)
        .get(|State(s): State<AdminState>, Path(key): Path<String>| async move { s.read_certificate(&key).await })
        .patch(|State(s): State<AdminState>, Path(key): Path<String>, body: AdminBody| async move {
            s.patch_certificate(&key, body).await
        })
        .put(|State(s): State<AdminState>, Path(key): Path<String>, body: AdminBody| async move {
            s.put_certificate(&key, body).await
        })
        .delete(|State(s): State<AdminState>, Path(key): Path<String>| async move { s.delete_certificate(&key).await })
}

fn id_of(obj: &Obj) -> String {
    obj.get("id").and_then(Value::as_str).unwrap_or_default().to_string()
}

fn with_snis(mut cert: Obj, snis: Vec<String>) -> Value {
    cert.insert("snis".into(), Value::from(snis));
    Value::Object(cert)
}

/// The body's fields (form values typed), and the `snis` shorthand taken out, checked for
/// duplicates. `Some(names)` when given (null or absent on PUT means none).
fn split_input(body: AdminBody, stored: Option<&Obj>) -> AdminResult<(Obj, Option<Vec<String>>)> {
    let mut fields = body.fields;
    if body.encoding == Encoding::Form {
        compile::coerce(Kind::Certificate, &mut fields, stored);
    }
    let snis = match fields.get("snis") {
        None => None,
        Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(list)) => {
            let names: Vec<String> = list.iter().filter_map(Value::as_str).map(str::to_ascii_lowercase).collect();
            for (i, name) in names.iter().enumerate() {
                if names[..i].contains(name) {
                    let v = Violations(vec![Violation::field("snis", format!("{name} is duplicated"))]);
                    return Err(EntityError::Schema(v).into());
                }
            }
            Some(names)
        }
        // Anything else: the schema names it.
        Some(_) => None,
    };
    Ok((fields, snis))
}

impl AdminState {
    /// The certificate `key` addresses: by id, or the one holding the SNI name `key`.
    async fn certificate(&self, key: &str) -> AdminResult<Option<Obj>> {
        if is_uuid(key) {
            return Ok(self.store.get(&self.cp(), Kind::Certificate, key).await?);
        }
        let Some(sni) = self.store.lookup(&self.cp(), Kind::Sni, key).await? else { return Ok(None) };
        let cert = sni.get("certificate").and_then(|c| c.get("id")).and_then(Value::as_str).unwrap_or_default();
        Ok(self.store.get(&self.cp(), Kind::Certificate, cert).await?)
    }

    fn missing(key: &str) -> AdminError {
        if is_uuid(key) { AdminError::NotFound } else { AdminError::NotFoundMessage("SNI not found".into()) }
    }

    async fn list_certificates(&self, query: Option<&str>, path: &str) -> AdminResult<Response> {
        let opts = pagination::parse(query)?;
        let q = ListQuery {
            cp: &self.cp(),
            parent: None,
            size: opts.size,
            offset: opts.offset.clone(),
            tags: opts.tags.clone(),
        };
        let mut page = self.store.list(Kind::Certificate, &q).await?;
        for cert in &mut page.data {
            let snis = self.store.snis_of(&id_of(cert)).await?;
            cert.insert("snis".into(), Value::from(snis));
        }
        Ok(Json(pagination::body(page, path, false, &opts, Value::Object)).into_response())
    }

    async fn read_certificate(&self, key: &str) -> AdminResult<Response> {
        let cert = self.certificate(key).await?.ok_or_else(|| Self::missing(key))?;
        let snis = self.store.snis_of(&id_of(&cert)).await?;
        Ok(Json(with_snis(cert, snis)).into_response())
    }

    async fn store_certificate(
        &self,
        op: WriteOp,
        mode: Mode,
        fields: Obj,
        snis: Option<Vec<String>>,
    ) -> AdminResult<Value> {
        let mut record = compile::prepare(Kind::Certificate, fields, mode)?;
        record.remove("snis");
        let (stored, names) = self.store.write_certificate(&self.cp(), op, record, snis).await?;
        Ok(with_snis(stored, names))
    }

    async fn create_certificate(&self, body: AdminBody) -> AdminResult<Response> {
        let (fields, snis) = split_input(body, None)?;
        let stored =
            self.store_certificate(WriteOp::Insert, Mode::Create, fields, Some(snis.unwrap_or_default())).await?;
        Ok((StatusCode::CREATED, Json(stored)).into_response())
    }

    async fn patch_certificate(&self, key: &str, body: AdminBody) -> AdminResult<Response> {
        let existing = self.certificate(key).await?.ok_or_else(|| Self::missing(key))?;
        let (fields, snis) = split_input(body, Some(&existing))?;
        let stored = self.store_certificate(WriteOp::Update, Mode::Patch(existing), fields, snis).await?;
        Ok(Json(stored).into_response())
    }

    /// PUT replaces (no `snis`: none); a name that no certificate holds creates one holding it.
    async fn put_certificate(&self, key: &str, body: AdminBody) -> AdminResult<Response> {
        let existing = self.certificate(key).await?;
        let (mut fields, snis) = split_input(body, existing.as_ref())?;
        let mut snis = snis.unwrap_or_default();
        match &existing {
            Some(cert) => {
                fields.insert("id".into(), Value::String(id_of(cert)));
            }
            None if is_uuid(key) => {
                fields.insert("id".into(), Value::String(key.to_string()));
            }
            None => {
                let name = key.to_ascii_lowercase();
                if !snis.contains(&name) {
                    snis.push(name);
                }
            }
        }
        let stored = self.store_certificate(WriteOp::Upsert, Mode::Replace(existing), fields, Some(snis)).await?;
        Ok(Json(stored).into_response())
    }

    async fn delete_certificate(&self, key: &str) -> AdminResult<Response> {
        match self.certificate(key).await? {
            Some(cert) => self.store.delete(&self.cp(), Kind::Certificate, &id_of(&cert)).await?,
            None if !is_uuid(key) => return Err(Self::missing(key)),
            None => {}
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}
