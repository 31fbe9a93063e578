//! Realms, realm consumers and their keys: each row keeps its API shape in `body` (never a key's
//! secret, which is kept only as a hash) beside the columns that carry uniqueness and scope.

use sqlx::{AssertSqlSafe, Row};

use super::{Store, db_error};
use crate::model::EntityError;

/// A cursor page request over ids: after one id, or before one.
#[derive(Debug, Clone)]
pub enum Cursor {
    First,
    After(String),
    Before(String),
}

/// One page of bodies, and whether more rows lie beyond each end.
#[derive(Debug, Clone)]
pub struct RealmPage {
    pub bodies: Vec<String>,
    pub more_after: bool,
    pub more_before: bool,
}

/// The tables of this module.
#[derive(Debug, Clone, Copy)]
pub enum RealmTable {
    Realms,
    Consumers,
    Keys,
}

impl RealmTable {
    fn name(self) -> &'static str {
        match self {
            RealmTable::Realms => "realms",
            RealmTable::Consumers => "realm_consumers",
            RealmTable::Keys => "realm_keys",
        }
    }
}

/// A realm key found by its hash, with the body of the consumer holding it.
#[derive(Debug, Clone)]
pub struct KeyHolder {
    pub realm_id: String,
    pub secret_hash: String,
    pub key_body: String,
    pub consumer_body: String,
}

/// Appends ` AND <column> = ?` for each scope column.
fn push_scope(sql: &mut String, scope: &[(&str, String)]) {
    for (col, _) in scope {
        sql.push_str(" AND ");
        sql.push_str(col);
        sql.push_str(" = ?");
    }
}

/// Binds the scope's values, in the order [`push_scope`] wrote their columns.
fn bind_scope<'q>(mut query: AnyQuery<'q>, scope: &[(&str, String)]) -> AnyQuery<'q> {
    for (_, v) in scope {
        query = query.bind(v.clone());
    }
    query
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// `?, ?, …` for an `IN` list of `n` values.
fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// A row to write; `columns` are the constraint columns besides `id`, `body` and `created_at`.
#[derive(Debug, Clone)]
pub struct RealmRow<'a> {
    pub id: &'a str,
    pub body: String,
    pub created_at: i64,
    pub columns: Vec<(&'static str, Option<String>)>,
}

/// A unique constraint hit by a concurrent writer is a conflict, not a server error.
fn unique_or_db(e: sqlx::Error) -> EntityError {
    let msg = e.to_string().to_ascii_lowercase();
    if msg.contains("unique") || msg.contains("duplicate") {
        EntityError::unique("id", serde_json::Value::Null)
    } else {
        db_error(e)
    }
}

impl Store {
    /// One page of a table's rows matching `scope` (column = value), in id order.
    pub async fn realm_page(
        &self,
        table: RealmTable,
        scope: &[(&str, String)],
        cursor: &Cursor,
        size: usize,
    ) -> Result<RealmPage, EntityError> {
        let mut sql = format!("SELECT body, id FROM {} WHERE 1 = 1", table.name());
        push_scope(&mut sql, scope);
        match cursor {
            Cursor::First => sql.push_str(" ORDER BY id LIMIT ?"),
            Cursor::After(_) => sql.push_str(" AND id > ? ORDER BY id LIMIT ?"),
            Cursor::Before(_) => sql.push_str(" AND id < ? ORDER BY id DESC LIMIT ?"),
        }
        let sql = self.sql(&sql);
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
        query = bind_scope(query, scope);
        if let Cursor::After(id) | Cursor::Before(id) = cursor {
            query = query.bind(id.clone());
        }
        query = query.bind((size + 1) as i64);
        let rows = query.fetch_all(&self.inner.reader).await.map_err(db_error)?;
        let mut bodies: Vec<String> =
            rows.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>().map_err(db_error)?;
        let more = bodies.len() > size;
        bodies.truncate(size);
        Ok(match cursor {
            Cursor::First => RealmPage { bodies, more_after: more, more_before: false },
            Cursor::After(_) => RealmPage { bodies, more_after: more, more_before: true },
            Cursor::Before(_) => {
                bodies.reverse();
                RealmPage { bodies, more_after: true, more_before: more }
            }
        })
    }

    /// The body of the row with `id` (and matching `scope`).
    pub async fn realm_get(
        &self,
        table: RealmTable,
        id: &str,
        scope: &[(&str, String)],
    ) -> Result<Option<String>, EntityError> {
        let mut sql = format!("SELECT body FROM {} WHERE id = ?", table.name());
        push_scope(&mut sql, scope);
        let sql = self.sql(&sql);
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(id.to_string());
        query = bind_scope(query, scope);
        let row = query.fetch_optional(&self.inner.reader).await.map_err(db_error)?;
        row.map(|r| r.try_get::<String, _>(0)).transpose().map_err(db_error)
    }

    /// Whether another row has this value in a unique column (within `scope`).
    pub async fn realm_taken(
        &self,
        table: RealmTable,
        column: &str,
        value: &str,
        except_id: &str,
        scope: &[(&str, String)],
    ) -> Result<bool, EntityError> {
        let mut sql = format!("SELECT 1 FROM {} WHERE {column} = ? AND id <> ?", table.name());
        push_scope(&mut sql, scope);
        let sql = self.sql(&sql);
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(value.to_string()).bind(except_id.to_string());
        query = bind_scope(query, scope);
        Ok(query.fetch_optional(&self.inner.reader).await.map_err(db_error)?.is_some())
    }

    /// Inserts, or replaces the row with the same id.
    pub async fn realm_put(&self, table: RealmTable, row: &RealmRow<'_>) -> Result<(), EntityError> {
        let names: Vec<&str> = row.columns.iter().map(|(c, _)| *c).collect();
        let marks = vec!["?"; names.len() + 3].join(", ");
        let updates: Vec<String> =
            ["body", "created_at"].iter().chain(names.iter()).map(|c| format!("{c} = excluded.{c}")).collect();
        let sql = self.sql(&format!(
            "INSERT INTO {} (id, body, created_at{}{}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET {}",
            table.name(),
            if names.is_empty() { "" } else { ", " },
            names.join(", "),
            updates.join(", ")
        ));
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(row.id.to_string())
            .bind(row.body.clone())
            .bind(row.created_at);
        for (_, v) in &row.columns {
            query = query.bind(v.clone());
        }
        query.execute(&self.inner.writer).await.map_err(unique_or_db)?;
        Ok(())
    }

    /// Deletes rows by id (and scope); returns how many went.
    pub async fn realm_delete(
        &self,
        table: RealmTable,
        id: &str,
        scope: &[(&str, String)],
    ) -> Result<u64, EntityError> {
        let mut sql = format!("DELETE FROM {} WHERE id = ?", table.name());
        push_scope(&mut sql, scope);
        let sql = self.sql(&sql);
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(id.to_string());
        query = bind_scope(query, scope);
        Ok(query.execute(&self.inner.writer).await.map_err(db_error)?.rows_affected())
    }

    /// How many rows of a table match `scope`.
    pub async fn realm_count(&self, table: RealmTable, scope: &[(&str, String)]) -> Result<i64, EntityError> {
        let mut sql = format!("SELECT COUNT(*) FROM {} WHERE 1 = 1", table.name());
        push_scope(&mut sql, scope);
        let sql = self.sql(&sql);
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
        query = bind_scope(query, scope);
        let row = query.fetch_one(&self.inner.reader).await.map_err(db_error)?;
        row.try_get::<i64, _>(0).map_err(db_error)
    }

    /// The bodies of the realms among `ids`, by id.
    pub async fn realm_bodies(&self, ids: &[&str]) -> Result<Vec<(String, String)>, EntityError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.sql(&format!("SELECT id, body FROM realms WHERE id IN ({})", placeholders(ids.len())));
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
        for id in ids {
            query = query.bind(id.to_string());
        }
        let rows = query.fetch_all(&self.inner.reader).await.map_err(db_error)?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, sqlx::Error>>().map_err(db_error)
    }

    /// The keys among `hashes` held in one of `realm_ids`, each with its consumer, in one query (a
    /// data plane's lookups are answered in batches).
    pub async fn realm_key_holders(&self, realm_ids: &[&str], hashes: &[&str]) -> Result<Vec<KeyHolder>, EntityError> {
        if realm_ids.is_empty() || hashes.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.sql(&format!(
            "SELECT k.realm_id, k.secret_hash, k.body, c.body FROM realm_keys k \
             JOIN realm_consumers c ON c.id = k.consumer_id AND c.realm_id = k.realm_id \
             WHERE k.realm_id IN ({}) AND k.secret_hash IN ({})",
            placeholders(realm_ids.len()),
            placeholders(hashes.len())
        ));
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
        for v in realm_ids.iter().chain(hashes) {
            query = query.bind(v.to_string());
        }
        let rows = query.fetch_all(&self.inner.reader).await.map_err(db_error)?;
        rows.iter()
            .map(|r| {
                Ok(KeyHolder {
                    realm_id: r.try_get(0)?,
                    secret_hash: r.try_get(1)?,
                    key_body: r.try_get(2)?,
                    consumer_body: r.try_get(3)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db_error)
    }

    /// Moves a consumer (and its keys) to another realm.
    pub async fn realm_move_consumer(&self, consumer_id: &str, to: &str, body: String) -> Result<(), EntityError> {
        let mut tx = self.inner.writer.begin().await.map_err(db_error)?;
        let q = self.sql("UPDATE realm_consumers SET realm_id = ?, body = ? WHERE id = ?");
        sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(to.to_string())
            .bind(body)
            .bind(consumer_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let q = self.sql("UPDATE realm_keys SET realm_id = ? WHERE consumer_id = ?");
        sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(to.to_string())
            .bind(consumer_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(unique_or_db)?;
        tx.commit().await.map_err(db_error)
    }
}
