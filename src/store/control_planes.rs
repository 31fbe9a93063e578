//! Control planes and admin tokens. A control plane's `cp` key scopes every entity row: `default` for
//! the one the root Admin API paths address, the control plane's id for the others.

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{DEFAULT_CP, Store, db_error};
use crate::clock::now_secs;
use crate::model::EntityError;

/// The default control plane's id (fixed, so every node of a store agrees on it).
pub const DEFAULT_CP_ID: &str = "00000000-0000-4000-8000-000000000001";

/// A control plane as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneRow {
    pub id: String,
    /// The `cp` key of its entities.
    pub cp: String,
    pub name: String,
    pub description: String,
    pub cluster_type: String,
    /// JSON object of labels.
    pub labels: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An admin token as stored (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub id: String,
    pub name: String,
    pub role: String,
    pub token_hash: String,
    pub created_at: i64,
}

const CP_COLUMNS: &str = "id, cp, name, description, cluster_type, labels, created_at, updated_at";

fn control_plane(r: &AnyRow) -> Result<ControlPlaneRow, EntityError> {
    Ok(ControlPlaneRow {
        id: r.try_get(0).map_err(db_error)?,
        cp: r.try_get(1).map_err(db_error)?,
        name: r.try_get(2).map_err(db_error)?,
        description: r.try_get(3).map_err(db_error)?,
        cluster_type: r.try_get(4).map_err(db_error)?,
        labels: r.try_get(5).map_err(db_error)?,
        created_at: r.try_get(6).map_err(db_error)?,
        updated_at: r.try_get(7).map_err(db_error)?,
    })
}

impl Store {
    /// Creates the `default` control plane on first start.
    pub async fn ensure_default_control_plane(&self) -> Result<(), EntityError> {
        let now = now_secs();
        let q = self.sql(&format!(
            "INSERT INTO control_planes ({CP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
        ));
        sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(DEFAULT_CP_ID)
            .bind(DEFAULT_CP)
            .bind("default")
            .bind("The control plane the root Admin API paths address.")
            .bind("CLUSTER_TYPE_CONTROL_PLANE")
            .bind("{}")
            .bind(now)
            .bind(now)
            .execute(&self.inner.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn control_planes(&self) -> Result<Vec<ControlPlaneRow>, EntityError> {
        let q = format!("SELECT {CP_COLUMNS} FROM control_planes ORDER BY created_at, id");
        let rows = sqlx::query(AssertSqlSafe(q.as_str())).fetch_all(&self.inner.reader).await.map_err(db_error)?;
        rows.iter().map(control_plane).collect()
    }

    pub async fn control_plane(&self, id: &str) -> Result<Option<ControlPlaneRow>, EntityError> {
        let q = self.sql(&format!("SELECT {CP_COLUMNS} FROM control_planes WHERE id = ?"));
        let row = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(id.to_string())
            .fetch_optional(&self.inner.reader)
            .await
            .map_err(db_error)?;
        row.as_ref().map(control_plane).transpose()
    }

    /// Inserts or replaces by id. A name held by another control plane is a unique violation.
    pub async fn put_control_plane(&self, cp: &ControlPlaneRow) -> Result<(), EntityError> {
        let mut tx = self.inner.writer.begin().await.map_err(db_error)?;
        let clash = self.sql("SELECT 1 FROM control_planes WHERE name = ? AND id <> ?");
        let taken = sqlx::query(AssertSqlSafe(clash.as_str()))
            .bind(cp.name.clone())
            .bind(cp.id.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        if taken.is_some() {
            return Err(EntityError::unique("name", serde_json::Value::String(cp.name.clone())));
        }
        let q = self.sql(&format!(
            "INSERT INTO control_planes ({CP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description, \
             labels = excluded.labels, updated_at = excluded.updated_at"
        ));
        sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(cp.id.clone())
            .bind(cp.cp.clone())
            .bind(cp.name.clone())
            .bind(cp.description.clone())
            .bind(cp.cluster_type.clone())
            .bind(cp.labels.clone())
            .bind(cp.created_at)
            .bind(cp.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }

    /// Deletes a control plane and every entity it holds.
    pub async fn delete_control_plane(&self, id: &str) -> Result<(), EntityError> {
        let Some(cp) = self.control_plane(id).await? else { return Ok(()) };
        // Entities first, through the normal delete so the change feed sees them.
        for kind in crate::model::Kind::ALL.iter().rev() {
            loop {
                let q = crate::store::ListQuery { cp: &cp.cp, parent: None, size: 1000, offset: None, tags: None };
                let page = self.list(*kind, &q).await?;
                if page.data.is_empty() {
                    break;
                }
                for e in page.data {
                    if let Some(eid) = e.get("id").and_then(serde_json::Value::as_str) {
                        self.delete(&cp.cp, *kind, eid).await?;
                    }
                }
            }
        }
        let q = self.sql("DELETE FROM control_planes WHERE id = ?");
        sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(id.to_string())
            .execute(&self.inner.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    pub async fn tokens(&self) -> Result<Vec<StoredToken>, EntityError> {
        let rows =
            sqlx::query("SELECT id, name, role, token_hash, created_at FROM admin_tokens ORDER BY created_at, id")
                .fetch_all(&self.inner.reader)
                .await
                .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                Ok(StoredToken {
                    id: r.try_get(0).map_err(db_error)?,
                    name: r.try_get(1).map_err(db_error)?,
                    role: r.try_get(2).map_err(db_error)?,
                    token_hash: r.try_get(3).map_err(db_error)?,
                    created_at: r.try_get(4).map_err(db_error)?,
                })
            })
            .collect()
    }

    pub async fn insert_token(&self, t: &StoredToken) -> Result<(), EntityError> {
        let q = self.sql("INSERT INTO admin_tokens (id, name, role, token_hash, created_at) VALUES (?, ?, ?, ?, ?)");
        sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(t.id.clone())
            .bind(t.name.clone())
            .bind(t.role.clone())
            .bind(t.token_hash.clone())
            .bind(t.created_at)
            .execute(&self.inner.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Returns whether a token was deleted.
    pub async fn delete_token(&self, id: &str) -> Result<bool, EntityError> {
        let q = self.sql("DELETE FROM admin_tokens WHERE id = ?");
        let done = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(id.to_string())
            .execute(&self.inner.writer)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}

/// A data plane token as stored (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPlaneToken {
    pub id: String,
    pub control_plane_id: String,
    pub name: String,
    pub token_hash: String,
    pub created_at: i64,
}

impl Store {
    /// Every data plane token, or those of one control plane.
    pub async fn data_plane_tokens(&self, control_plane_id: Option<&str>) -> Result<Vec<DataPlaneToken>, EntityError> {
        let base = "SELECT id, control_plane_id, name, token_hash, created_at FROM data_plane_tokens";
        let q = match control_plane_id {
            Some(_) => self.sql(&format!("{base} WHERE control_plane_id = ? ORDER BY created_at, id")),
            None => format!("{base} ORDER BY created_at, id"),
        };
        let mut query = sqlx::query(AssertSqlSafe(q.as_str()));
        if let Some(cp) = control_plane_id {
            query = query.bind(cp.to_string());
        }
        let rows = query.fetch_all(&self.inner.reader).await.map_err(db_error)?;
        rows.iter()
            .map(|r| {
                Ok(DataPlaneToken {
                    id: r.try_get(0).map_err(db_error)?,
                    control_plane_id: r.try_get(1).map_err(db_error)?,
                    name: r.try_get(2).map_err(db_error)?,
                    token_hash: r.try_get(3).map_err(db_error)?,
                    created_at: r.try_get(4).map_err(db_error)?,
                })
            })
            .collect()
    }

    pub async fn insert_data_plane_token(&self, t: &DataPlaneToken) -> Result<(), EntityError> {
        let q = self.sql(
            "INSERT INTO data_plane_tokens (id, control_plane_id, name, token_hash, created_at) VALUES (?, ?, ?, ?, ?)",
        );
        sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(t.id.clone())
            .bind(t.control_plane_id.clone())
            .bind(t.name.clone())
            .bind(t.token_hash.clone())
            .bind(t.created_at)
            .execute(&self.inner.writer)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Returns whether the control plane had that token.
    pub async fn delete_data_plane_token(&self, control_plane_id: &str, id: &str) -> Result<bool, EntityError> {
        let q = self.sql("DELETE FROM data_plane_tokens WHERE id = ? AND control_plane_id = ?");
        let done = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(id.to_string())
            .bind(control_plane_id.to_string())
            .execute(&self.inner.writer)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }
}
