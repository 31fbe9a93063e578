//! Entity reads and writes: one table per kind, the full record in `body`, unique and foreign-key
//! columns beside it. Unique values, foreign keys and cascades are checked inside the write
//! transaction so the Admin API can answer with Kong's error for the exact field.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use super::changes::{ChangeOp, Touched};
use super::{Backend, Store, db_error};
use crate::clock::now_secs;
use crate::model::schema::{Obj, is_uuid};
use crate::model::{EntityError, Kind, OnDelete};

/// How a write treats an existing row with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    /// The id must be new.
    Insert,
    /// The id must exist.
    Update,
    /// Create or replace.
    Upsert,
}

/// `?tags=` filtering: `a,b` needs all, `a/b` needs any.
#[derive(Debug, Clone)]
pub enum TagFilter {
    All(Vec<String>),
    Any(Vec<String>),
}

/// One page request.
#[derive(Debug, Clone)]
pub struct ListQuery<'a> {
    pub cp: &'a str,
    /// Restrict to children of one parent: (foreign-key field, parent id).
    pub parent: Option<(&'static str, String)>,
    pub size: usize,
    pub offset: Option<String>,
    pub tags: Option<TagFilter>,
}

/// One page of records and the token of the next page.
#[derive(Debug, Clone)]
pub struct Page {
    pub data: Vec<Obj>,
    pub offset: Option<String>,
}

/// A column value bound on write.
enum Col {
    Text(Option<String>),
    Int(Option<i64>),
}

impl Store {
    /// Fetches by id.
    pub async fn get(&self, cp: &str, kind: Kind, id: &str) -> Result<Option<Obj>, EntityError> {
        self.get_by(cp, kind, "id", id).await
    }

    /// Fetches by id when `id_or_key` is a UUID, else by the kind's endpoint key (Kong's rule).
    pub async fn lookup(&self, cp: &str, kind: Kind, id_or_key: &str) -> Result<Option<Obj>, EntityError> {
        if is_uuid(id_or_key) {
            self.get_by(cp, kind, "id", id_or_key).await
        } else {
            self.get_by(cp, kind, kind.key_column(), id_or_key).await
        }
    }

    /// [`Store::lookup`] under a parent (`consumer`, its id): for kinds whose endpoint key is unique
    /// only per parent (a consumer's ACL group).
    pub async fn lookup_under(
        &self,
        cp: &str,
        kind: Kind,
        id_or_key: &str,
        parent: (&str, &str),
    ) -> Result<Option<Obj>, EntityError> {
        if is_uuid(id_or_key) || !kind.key_scoped_to_parent() {
            return self.lookup(cp, kind, id_or_key).await;
        }
        let (select, _) = read_parts(kind);
        let q = self.sql(&format!(
            "SELECT {select} FROM {} WHERE cp = ? AND {} = ? AND {}_id = ?",
            kind.table(),
            kind.key_column(),
            parent.0
        ));
        let row = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(cp.to_string())
            .bind(id_or_key.to_string())
            .bind(parent.1.to_string())
            .fetch_optional(&self.inner.reader)
            .await
            .map_err(db_error)?;
        row.map(|r| decode_row(kind, &r)).transpose()
    }

    /// Fetches by a unique column.
    pub async fn get_by(&self, cp: &str, kind: Kind, column: &str, value: &str) -> Result<Option<Obj>, EntityError> {
        let (select, live) = read_parts(kind);
        let q = self.sql(&format!("SELECT {select} FROM {} WHERE cp = ? AND {column} = ?{live}", kind.table()));
        let mut query = sqlx::query(AssertSqlSafe(q.as_str())).bind(cp.to_string()).bind(value.to_string());
        if kind.has_ttl() {
            query = query.bind(now_secs());
        }
        let row = query.fetch_optional(&self.inner.reader).await.map_err(db_error)?;
        row.map(|r| decode_row(kind, &r)).transpose()
    }

    /// One page of a kind, ordered by id.
    pub async fn list(&self, kind: Kind, q: &ListQuery<'_>) -> Result<Page, EntityError> {
        let (select, live) = read_parts(kind);
        let mut sql = format!("SELECT {select} FROM {} WHERE cp = ?{live}", kind.table());
        let mut text_binds: Vec<String> = Vec::new();
        if let Some((field, _)) = &q.parent {
            sql.push_str(&format!(" AND {field}_id = ?"));
        }
        let contains = match self.backend() {
            Backend::Sqlite => "instr(tags, ?) > 0",
            Backend::Postgres => "strpos(tags, ?) > 0",
        };
        match &q.tags {
            Some(TagFilter::All(tags)) | Some(TagFilter::Any(tags)) if !tags.is_empty() => {
                let joiner = if matches!(q.tags, Some(TagFilter::All(_))) { " AND " } else { " OR " };
                let conds: Vec<&str> = tags.iter().map(|_| contains).collect();
                sql.push_str(&format!(" AND tags IS NOT NULL AND ({})", conds.join(joiner)));
                text_binds.extend(tags.iter().map(|t| format!(",{t},")));
            }
            _ => {}
        }
        let after = match &q.offset {
            Some(token) => Some(decode_offset(token)?),
            None => None,
        };
        if after.is_some() {
            sql.push_str(" AND id > ?");
        }
        sql.push_str(" ORDER BY id LIMIT ?");
        let sql = self.sql(&sql);
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(q.cp.to_string());
        if kind.has_ttl() {
            query = query.bind(now_secs());
        }
        if let Some((_, parent)) = &q.parent {
            query = query.bind(parent.clone());
        }
        for t in text_binds {
            query = query.bind(t);
        }
        if let Some(after) = after {
            query = query.bind(after);
        }
        query = query.bind((q.size + 1) as i64);
        let rows = query.fetch_all(&self.inner.reader).await.map_err(db_error)?;
        let mut data = rows.iter().map(|r| decode_row(kind, r)).collect::<Result<Vec<_>, _>>()?;
        let offset = if data.len() > q.size {
            data.truncate(q.size);
            data.last().and_then(|r| r.get("id")).and_then(Value::as_str).map(encode_offset)
        } else {
            None
        };
        Ok(Page { data, offset })
    }

    /// Writes a validated record. Foreign keys given by endpoint key are resolved to ids; unique
    /// values and foreign keys are checked; returns the record as stored.
    pub async fn write(
        &self,
        cp: &str,
        kind: Kind,
        op: WriteOp,
        record: Obj,
        ttl: Option<i64>,
    ) -> Result<Obj, EntityError> {
        self.refuse_in_dbless(kind, op)?;
        let mut tx = self.begin_write().await?;
        let version = self.bump_version(&mut tx).await?;
        let (mut record, change) = self.write_row(&mut tx, cp, kind, op, record, ttl).await?;
        self.record_changes(&mut tx, version, cp, &[change]).await?;
        self.commit(tx, version).await?;
        if let Some(t) = ttl {
            record.insert("ttl".into(), Value::from(t));
        }
        Ok(record)
    }

    /// Kong's DB-less answer to an entity write (405): its words for the operation.
    fn refuse_in_dbless(&self, kind: Kind, op: WriteOp) -> Result<(), EntityError> {
        if !self.declarative_only() {
            return Ok(());
        }
        let verb = match op {
            WriteOp::Insert => "create",
            WriteOp::Update => "update",
            WriteOp::Upsert => "create or update",
        };
        Err(EntityError::Unsupported(format!("cannot {verb} '{}' entities when not using a database", kind.table())))
    }

    /// Replaces every entity of `cp` with `records` (a whole declarative configuration, parents
    /// first) in one transaction, and remembers its `hash`. No change rows are written: followers
    /// see a version they cannot reach by changes, and reload the whole configuration.
    pub async fn replace_all(
        &self,
        cp: &str,
        records: &[(Kind, Obj)],
        hash: &str,
    ) -> Result<usize, (Kind, String, EntityError)> {
        let unnamed = |e: EntityError| (Kind::Consumer, String::new(), e);
        let mut tx = self.begin_write().await.map_err(unnamed)?;
        let version = self.bump_version(&mut tx).await.map_err(unnamed)?;
        for kind in crate::store::CHILDREN_FIRST {
            let q = self.sql(&format!("DELETE FROM {} WHERE cp = ?", kind.table()));
            sqlx::query(AssertSqlSafe(q.as_str()))
                .bind(cp.to_string())
                .execute(&mut *tx)
                .await
                .map_err(|e| unnamed(db_error(e)))?;
        }
        self.upsert_rows(&mut tx, cp, records).await?;
        let q = self.sql("DELETE FROM declarative_config WHERE cp = ?");
        sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(cp.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|e| unnamed(db_error(e)))?;
        let q = self.sql("INSERT INTO declarative_config (cp, hash, loaded_at) VALUES (?, ?, ?)");
        sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(cp.to_string())
            .bind(hash.to_string())
            .bind(now_secs())
            .execute(&mut *tx)
            .await
            .map_err(|e| unnamed(db_error(e)))?;
        self.record_changes(&mut tx, version, cp, &[]).await.map_err(unnamed)?;
        self.commit(tx, version).await.map_err(unnamed)?;
        Ok(records.len())
    }

    /// The hash of the declarative configuration `cp` last loaded whole, if any.
    pub async fn declarative_hash(&self, cp: &str) -> Result<Option<String>, EntityError> {
        let q = self.sql("SELECT hash FROM declarative_config WHERE cp = ?");
        let row = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(cp.to_string())
            .fetch_optional(&self.inner.reader)
            .await
            .map_err(db_error)?;
        row.map(|r| r.try_get::<String, _>(0).map_err(db_error)).transpose()
    }

    /// Writes whole records (a declarative file's, parents first) in one transaction: each one
    /// created or replaced, nothing deleted; all or nothing. A refused record is named by its table
    /// and id.
    pub async fn import(&self, cp: &str, records: &[(Kind, Obj)]) -> Result<usize, (Kind, String, EntityError)> {
        let unnamed = |e: EntityError| (Kind::Consumer, String::new(), e);
        let mut tx = self.begin_write().await.map_err(unnamed)?;
        let version = self.bump_version(&mut tx).await.map_err(unnamed)?;
        self.upsert_rows(&mut tx, cp, records).await?;
        // No change rows: followers reload the whole configuration, cheaper than replaying a file.
        self.record_changes(&mut tx, version, cp, &[]).await.map_err(unnamed)?;
        self.commit(tx, version).await.map_err(unnamed)?;
        Ok(records.len())
    }

    /// The bulk path of a whole file: one statement per record (an insert, or an update of the row
    /// with its id), the database's own constraints judging uniqueness and references (the file was
    /// validated whole, its references resolved to ids). A row of another control plane with the
    /// same id is not touched: that is a primary key violation.
    async fn upsert_rows(
        &self,
        tx: &mut Transaction<'static, Any>,
        cp: &str,
        records: &[(Kind, Obj)],
    ) -> Result<(), (Kind, String, EntityError)> {
        for (kind, record) in records {
            let kind = *kind;
            let id = record.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            let body = Value::Object(record.clone()).to_string();
            let created_at = record.get("created_at").and_then(Value::as_i64).unwrap_or_else(now_secs);
            let mut cols = columns(kind, record);
            if kind.has_ttl() {
                cols.push(("expires_at".into(), Col::Int(None)));
            }
            let names: Vec<&str> = cols.iter().map(|(c, _)| c.as_str()).collect();
            let marks = vec!["?"; names.len()].join(", ");
            let sets: Vec<String> = names.iter().map(|c| format!("{c} = excluded.{c}")).collect();
            let table = kind.table();
            let sql = self.sql(&format!(
                "INSERT INTO {table} (created_at, body, {}, cp, id) VALUES (?, ?, {marks}, ?, ?) \
                 ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, body = excluded.body, {} \
                 WHERE {table}.cp = excluded.cp",
                names.join(", "),
                sets.join(", ")
            ));
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(created_at).bind(body);
            for (_, col) in cols {
                query = match col {
                    Col::Text(v) => query.bind(v),
                    Col::Int(v) => query.bind(v),
                };
            }
            let done = query
                .bind(cp.to_string())
                .bind(id.clone())
                .execute(&mut **tx)
                .await
                .map_err(|e| (kind, id.clone(), self.constraint_error(e, kind, record)))?;
            if done.rows_affected() == 0 {
                return Err((kind, id.clone(), EntityError::PrimaryKey(id)));
            }
        }
        Ok(())
    }

    /// A certificate and its SNI names (Kong's `snis` shorthand) in one transaction: names it no
    /// longer lists are deleted, new ones created; a name another certificate holds is refused.
    /// `snis: None` (a PATCH without them) leaves the names as they are. Returns the stored
    /// certificate and its names, sorted.
    pub async fn write_certificate(
        &self,
        cp: &str,
        op: WriteOp,
        record: Obj,
        snis: Option<Vec<String>>,
    ) -> Result<(Obj, Vec<String>), EntityError> {
        self.refuse_in_dbless(Kind::Certificate, op)?;
        let mut tx = self.begin_write().await?;
        let version = self.bump_version(&mut tx).await?;
        let (record, change) = self.write_row(&mut tx, cp, Kind::Certificate, op, record, None).await?;
        let cert_id = change.id.clone();
        let mut changes = vec![change];
        let held = self.snis_of_in(&mut tx, &cert_id).await?;
        if let Some(wanted) = &snis {
            for (id, name) in held.iter().filter(|(_, n)| !wanted.contains(n)) {
                let q = self.sql("DELETE FROM snis WHERE id = ?");
                sqlx::query(AssertSqlSafe(q.as_str())).bind(id.clone()).execute(&mut *tx).await.map_err(db_error)?;
                changes.push(Touched {
                    kind: Kind::Sni,
                    id: id.clone(),
                    op: ChangeOp::Delete,
                    previous_key: Some(name.clone()),
                });
            }
            for name in wanted.iter().filter(|n| !held.iter().any(|(_, h)| h == *n)) {
                let q = self.sql("SELECT certificate_id FROM snis WHERE cp = ? AND name = ?");
                let owner = sqlx::query(AssertSqlSafe(q.as_str()))
                    .bind(cp.to_string())
                    .bind(name.clone())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_error)?;
                if let Some(owner) = owner {
                    let owner: String = owner.try_get(0).map_err(db_error)?;
                    let msg = format!("{name} already associated with existing certificate '{owner}'");
                    return Err(EntityError::schema("snis", &msg));
                }
                let now = now_secs();
                let mut sni = Map::new();
                sni.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
                sni.insert("name".into(), Value::String(name.clone()));
                let mut cert = Map::new();
                cert.insert("id".into(), Value::String(cert_id.clone()));
                sni.insert("certificate".into(), Value::Object(cert));
                sni.insert("created_at".into(), Value::from(now));
                sni.insert("updated_at".into(), Value::from(now));
                sni.insert("tags".into(), Value::Null);
                let (_, touched) = self.write_row(&mut tx, cp, Kind::Sni, WriteOp::Insert, sni, None).await?;
                changes.push(touched);
            }
        }
        self.record_changes(&mut tx, version, cp, &changes).await?;
        self.commit(tx, version).await?;
        let mut names: Vec<String> = match snis {
            Some(wanted) => wanted,
            None => held.into_iter().map(|(_, n)| n).collect(),
        };
        names.sort();
        names.dedup();
        Ok((record, names))
    }

    /// A service of `cp` whose `ca_certificates` names CA certificate `id`, if any.
    pub async fn service_using_ca(&self, cp: &str, id: &str) -> Result<Option<String>, EntityError> {
        let q = self.sql("SELECT id, body FROM services WHERE cp = ? AND body LIKE ?");
        let rows = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(cp.to_string())
            .bind(format!("%{id}%"))
            .fetch_all(&self.inner.reader)
            .await
            .map_err(db_error)?;
        for row in rows {
            let body: String = row.try_get(1).map_err(db_error)?;
            let names = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("ca_certificates").and_then(Value::as_array).cloned())
                .unwrap_or_default();
            if names.iter().any(|n| n.as_str() == Some(id)) {
                return Ok(Some(row.try_get(0).map_err(db_error)?));
            }
        }
        Ok(None)
    }

    /// The SNI names of one certificate, sorted.
    pub async fn snis_of(&self, certificate_id: &str) -> Result<Vec<String>, EntityError> {
        let q = self.sql("SELECT name FROM snis WHERE certificate_id = ? ORDER BY name");
        let rows = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(certificate_id.to_string())
            .fetch_all(&self.inner.reader)
            .await
            .map_err(db_error)?;
        rows.iter().map(|r| r.try_get::<String, _>(0).map_err(db_error)).collect()
    }

    async fn snis_of_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        certificate_id: &str,
    ) -> Result<Vec<(String, String)>, EntityError> {
        let q = self.sql("SELECT id, name FROM snis WHERE certificate_id = ?");
        let rows = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(certificate_id.to_string())
            .fetch_all(&mut **tx)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0).map_err(db_error)?, r.try_get::<String, _>(1).map_err(db_error)?)))
            .collect()
    }

    /// One row's write inside a transaction: foreign keys resolved, unique values checked, the
    /// row inserted or replaced. Returns the record as stored and the change to record.
    async fn write_row(
        &self,
        tx: &mut Transaction<'static, Any>,
        cp: &str,
        kind: Kind,
        op: WriteOp,
        mut record: Obj,
        ttl: Option<i64>,
    ) -> Result<(Obj, Touched), EntityError> {
        let id = record.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        self.resolve_foreign_keys(tx, cp, kind, &mut record).await?;
        self.check_unique(tx, cp, kind, &id, &record).await?;
        let current = self.current_key(tx, kind, &id).await?;
        let exists = current.is_some();
        let in_other_cp = exists && !self.exists_in(tx, cp, kind, &id).await?;
        match (op, exists) {
            (WriteOp::Insert, true) => return Err(EntityError::PrimaryKey(id)),
            (WriteOp::Update, false) => return Err(EntityError::not_found("id", Value::String(id))),
            _ if in_other_cp => return Err(EntityError::PrimaryKey(id)),
            _ => {}
        }
        let expires_at = ttl.map(|t| now_secs() + t);
        let body = Value::Object(record.clone()).to_string();
        let created_at = record.get("created_at").and_then(Value::as_i64).unwrap_or_else(now_secs);
        let mut cols = columns(kind, &record);
        if kind.has_ttl() {
            cols.push(("expires_at".into(), Col::Int(expires_at)));
        }
        let sql = if exists {
            let sets: Vec<String> = cols.iter().map(|(c, _)| format!("{c} = ?")).collect();
            format!("UPDATE {} SET created_at = ?, body = ?, {} WHERE id = ?", kind.table(), sets.join(", "))
        } else {
            let names: Vec<&str> = cols.iter().map(|(c, _)| c.as_str()).collect();
            let marks = vec!["?"; names.len()].join(", ");
            format!(
                "INSERT INTO {} (created_at, body, {}, cp, id) VALUES (?, ?, {marks}, ?, ?)",
                kind.table(),
                names.join(", ")
            )
        };
        let sql = self.sql(&sql);
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(created_at).bind(body);
        for (_, col) in cols {
            query = match col {
                Col::Text(v) => query.bind(v),
                Col::Int(v) => query.bind(v),
            };
        }
        if !exists {
            query = query.bind(cp.to_string());
        }
        query = query.bind(id.clone());
        query.execute(&mut **tx).await.map_err(|e| self.constraint_error(e, kind, &record))?;
        let change = Touched { kind, id, op: ChangeOp::Upsert, previous_key: current.flatten() };
        Ok((record, change))
    }

    /// Deletes one entity and everything that cascades from it. Deleting what does not exist is not
    /// an error (Kong answers 204 either way).
    pub async fn delete(&self, cp: &str, kind: Kind, id: &str) -> Result<(), EntityError> {
        if self.declarative_only() {
            return Err(EntityError::Unsupported(format!(
                "cannot remove '{}' entities when not using a database",
                kind.table()
            )));
        }
        let mut tx = self.begin_write().await?;
        if !self.exists_in(&mut tx, cp, kind, id).await? {
            return Ok(());
        }
        let version = self.bump_version(&mut tx).await?;
        // Depth-first: children are deleted before their parent.
        let mut order: Vec<(Kind, String)> = Vec::new();
        let mut stack: Vec<(Kind, String, bool)> = vec![(kind, id.to_string(), false)];
        while let Some((k, eid, expanded)) = stack.pop() {
            if expanded {
                order.push((k, eid));
                continue;
            }
            stack.push((k, eid.clone(), true));
            for child in Kind::ALL {
                for fk in child.foreign_keys().iter().filter(|fk| fk.kind == k) {
                    let q = self.sql(&format!("SELECT id FROM {} WHERE {}_id = ?", child.table(), fk.field));
                    let rows = sqlx::query(AssertSqlSafe(q.as_str()))
                        .bind(eid.clone())
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db_error)?;
                    if rows.is_empty() {
                        continue;
                    }
                    if fk.on_delete == OnDelete::Restrict {
                        return Err(EntityError::Referenced { referencing: child.table(), kind: k.table() });
                    }
                    for row in rows {
                        let cid: String = row.try_get(0).map_err(db_error)?;
                        stack.push((child, cid, false));
                    }
                }
            }
        }
        order.dedup();
        let mut changes = Vec::with_capacity(order.len());
        for (k, eid) in order {
            let q = self.sql(&format!("DELETE FROM {} WHERE id = ? RETURNING {}", k.table(), k.key_column()));
            let row = sqlx::query(AssertSqlSafe(q.as_str()))
                .bind(eid.clone())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_error)?;
            let previous_key = row.and_then(|r| r.try_get::<Option<String>, _>(0).ok()).flatten();
            changes.push(Touched { kind: k, id: eid, op: ChangeOp::Delete, previous_key });
        }
        self.record_changes(&mut tx, version, cp, &changes).await?;
        self.commit(tx, version).await
    }

    /// The distinct plugin names configured in a control plane (`GET /`'s `enabled_in_cluster`).
    pub async fn plugin_names(&self, cp: &str) -> Result<Vec<String>, EntityError> {
        let q = self.sql("SELECT DISTINCT cache_key FROM plugins WHERE cp = ?");
        let rows = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(cp.to_string())
            .fetch_all(&self.inner.reader)
            .await
            .map_err(db_error)?;
        let mut names: Vec<String> = rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok())
            .filter_map(|k| k.split('|').next().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Any>, EntityError> {
        self.inner.writer.begin().await.map_err(db_error)
    }

    async fn commit(&self, tx: Transaction<'static, Any>, version: i64) -> Result<(), EntityError> {
        tx.commit().await.map_err(db_error)?;
        self.inner.committed.fetch_max(version, std::sync::atomic::Ordering::Release);
        self.inner.local_change.send_replace(version);
        Ok(())
    }

    /// `None` when no row has this id; else the row's endpoint key (which may be null).
    async fn current_key(
        &self,
        tx: &mut Transaction<'static, Any>,
        kind: Kind,
        id: &str,
    ) -> Result<Option<Option<String>>, EntityError> {
        let q = self.sql(&format!("SELECT {} FROM {} WHERE id = ?", kind.key_column(), kind.table()));
        let row = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?;
        row.map(|r| r.try_get::<Option<String>, _>(0).map_err(db_error)).transpose()
    }

    async fn exists_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        cp: &str,
        kind: Kind,
        id: &str,
    ) -> Result<bool, EntityError> {
        let q = self.sql(&format!("SELECT 1 FROM {} WHERE id = ? AND cp = ?", kind.table()));
        let row = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(id.to_string())
            .bind(cp.to_string())
            .fetch_optional(&mut **tx)
            .await;
        Ok(row.map_err(db_error)?.is_some())
    }

    async fn resolve_foreign_keys(
        &self,
        tx: &mut Transaction<'static, Any>,
        cp: &str,
        kind: Kind,
        record: &mut Obj,
    ) -> Result<(), EntityError> {
        for fk in kind.foreign_keys() {
            let Some(Value::Object(key)) = record.get(fk.field).cloned() else {
                continue;
            };
            let (column, value) = match key.iter().next() {
                Some((k, v)) if key.len() == 1 => (k.clone(), v.as_str().unwrap_or_default().to_string()),
                _ => {
                    return Err(EntityError::schema(fk.field, "expected a record"));
                }
            };
            if column != "id" && column != fk.kind.endpoint_key() {
                return Err(EntityError::Schema(crate::model::schema::Violations(vec![
                    crate::model::schema::Violation {
                        path: vec![
                            crate::model::schema::PathSeg::Field(fk.field.to_string()),
                            crate::model::schema::PathSeg::Field(column),
                        ],
                        message: "unknown field".into(),
                    },
                ])));
            }
            let key_column = if column == "id" { "id" } else { fk.kind.key_column() };
            let q = self.sql(&format!("SELECT id FROM {} WHERE cp = ? AND {key_column} = ?", fk.kind.table()));
            let row = sqlx::query(AssertSqlSafe(q.as_str()))
                .bind(cp.to_string())
                .bind(value.clone())
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_error)?;
            match row {
                Some(row) => {
                    let id: String = row.try_get(0).map_err(db_error)?;
                    let mut m = Map::new();
                    m.insert("id".into(), Value::String(id));
                    record.insert(fk.field.to_string(), Value::Object(m));
                }
                None if column == "id" => {
                    return Err(EntityError::ForeignKey { field: fk.field.to_string(), kind: fk.kind.table(), key });
                }
                None => {
                    return Err(EntityError::ForeignUnresolved {
                        field: fk.field.to_string(),
                        kind: fk.kind.table(),
                        key,
                    });
                }
            }
        }
        Ok(())
    }

    async fn check_unique(
        &self,
        tx: &mut Transaction<'static, Any>,
        cp: &str,
        kind: Kind,
        id: &str,
        record: &Obj,
    ) -> Result<(), EntityError> {
        for (column, col) in columns(kind, record) {
            let is_unique = kind.unique_fields().contains(&column.as_str()) || column == "cache_key";
            let Col::Text(Some(value)) = col else { continue };
            if !is_unique {
                continue;
            }
            let q = self.sql(&format!("SELECT 1 FROM {} WHERE cp = ? AND {column} = ? AND id <> ?", kind.table()));
            let clash = sqlx::query(AssertSqlSafe(q.as_str()))
                .bind(cp.to_string())
                .bind(value.clone())
                .bind(id.to_string())
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_error)?;
            if clash.is_some() {
                return Err(if column == "cache_key" {
                    scope_clash(kind, record)
                } else {
                    EntityError::unique(&column, record.get(&column).cloned().unwrap_or(Value::Null))
                });
            }
        }
        Ok(())
    }

    /// A constraint the pre-checks did not see (a concurrent writer on PostgreSQL): still Kong's error.
    fn constraint_error(&self, e: sqlx::Error, kind: Kind, record: &Obj) -> EntityError {
        if let sqlx::Error::Database(db) = &e {
            let msg = db.message().to_ascii_lowercase();
            if msg.contains("unique") || msg.contains("duplicate") {
                for field in kind.unique_fields() {
                    if msg.contains(field) {
                        return EntityError::unique(field, record.get(*field).cloned().unwrap_or(Value::Null));
                    }
                }
                if kind.cache_key(record).is_some() {
                    return scope_clash(kind, record);
                }
            }
        }
        db_error(e)
    }
}

/// Kong reports a second plugin in the same scope (or a second membership, or ACL group) by its
/// cache key fields.
fn scope_clash(kind: Kind, record: &Obj) -> EntityError {
    let mut m = Map::new();
    for &f in kind.def().cache_key {
        m.insert(f.into(), record.get(f).cloned().unwrap_or(Value::Null));
    }
    EntityError::Unique(m)
}

/// What to select and which rows are live (expired rows of ttl kinds are invisible).
fn read_parts(kind: Kind) -> (&'static str, &'static str) {
    if kind.has_ttl() { ("body, expires_at", " AND (expires_at IS NULL OR expires_at > ?)") } else { ("body", "") }
}

fn decode_row(kind: Kind, row: &AnyRow) -> Result<Obj, EntityError> {
    let body: String = row.try_get(0).map_err(db_error)?;
    let mut obj = match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(m)) => m,
        _ => return Err(EntityError::Database(format!("corrupt {} row", kind.table()))),
    };
    if kind.has_ttl() {
        let expires_at: Option<i64> = row.try_get(1).map_err(db_error)?;
        if let Some(at) = expires_at {
            obj.insert("ttl".into(), Value::from((at - now_secs()).max(0)));
        }
    }
    Ok(obj)
}

/// Kong's page token: unpadded base64 of the JSON array of the last primary key (`["<uuid>"]`).
fn encode_offset(id: &str) -> String {
    STANDARD_NO_PAD.encode(Value::Array(vec![Value::String(id.to_string())]).to_string())
}

fn decode_offset(token: &str) -> Result<String, EntityError> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes =
        LENIENT.decode(token).map_err(|_| EntityError::InvalidOffset(token.to_string(), "bad base64 encoding"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Array(a)) if a.len() == 1 && a[0].is_string() => Ok(a[0].as_str().unwrap_or_default().to_string()),
        _ => Err(EntityError::InvalidOffset(token.to_string(), "bad json encoding")),
    }
}

fn fk_id(record: &Obj, field: &str) -> Option<String> {
    record.get(field)?.get("id")?.as_str().map(str::to_string)
}

/// The constraint-carrying columns of a record.
fn columns(kind: Kind, record: &Obj) -> Vec<(String, Col)> {
    let mut cols: Vec<(String, Col)> = Vec::new();
    for field in kind.unique_fields() {
        let v = record.get(*field).and_then(Value::as_str).map(str::to_string);
        cols.push(((*field).to_string(), Col::Text(v)));
    }
    for fk in kind.foreign_keys() {
        cols.push((format!("{}_id", fk.field), Col::Text(fk_id(record, fk.field))));
    }
    // The endpoint key's column, unless it is the id or a unique field's (written above).
    if kind.key_column() != "id" && !kind.unique_fields().contains(&kind.key_column()) {
        let v = record.get(kind.endpoint_key()).and_then(Value::as_str).map(str::to_string);
        cols.push((kind.key_column().to_string(), Col::Text(v)));
    }
    if let Some(key) = kind.cache_key(record) {
        cols.push(("cache_key".into(), Col::Text(Some(key))));
    }
    let tags = record.get("tags").and_then(Value::as_array).filter(|a| !a.is_empty()).map(|a| {
        let list: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
        format!(",{},", list.join(","))
    });
    cols.push(("tags".into(), Col::Text(tags)));
    cols
}
