//! Target health set by hand, shared by the nodes of one database (Kong's `balancer:post_health`
//! cluster event): each setting is one row, which every other node reads on its next look and
//! applies to its own balancers. Rows are swept after [`KEPT_MS`].

use sqlx::{AssertSqlSafe, Row};

use super::{Store, db_error};
use crate::clock::now_millis;
use crate::model::EntityError;

/// How long an event is kept (every node looks far more often).
pub const KEPT_MS: i64 = 5 * 60 * 1000;

/// One target's health, set by hand on node `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    pub id: String,
    pub node: String,
    pub upstream: String,
    pub host: String,
    pub port: u16,
    pub healthy: bool,
    /// Milliseconds since the epoch, on the writing node's clock.
    pub at: i64,
}

impl Store {
    /// Records `event` (and sweeps old ones).
    pub async fn record_health_event(&self, event: &HealthEvent) -> Result<(), EntityError> {
        let insert = self.sql(
            "INSERT INTO target_health_events (id, node, upstream_id, host, port, healthy, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        );
        let sweep = self.sql("DELETE FROM target_health_events WHERE at < ?");
        let mut tx = self.inner.writer.begin().await.map_err(db_error)?;
        sqlx::query(AssertSqlSafe(insert.as_str()))
            .bind(event.id.clone())
            .bind(event.node.clone())
            .bind(event.upstream.clone())
            .bind(event.host.clone())
            .bind(i64::from(event.port))
            .bind(i64::from(event.healthy))
            .bind(event.at)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query(AssertSqlSafe(sweep.as_str()))
            .bind(now_millis() - KEPT_MS)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }

    /// Events recorded at or after `at`, oldest first.
    pub async fn health_events_since(&self, at: i64) -> Result<Vec<HealthEvent>, EntityError> {
        let q = self.sql(
            "SELECT id, node, upstream_id, host, port, healthy, at FROM target_health_events \
             WHERE at >= ? ORDER BY at, id",
        );
        let rows =
            sqlx::query(AssertSqlSafe(q.as_str())).bind(at).fetch_all(&self.inner.reader).await.map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let port: i64 = r.try_get(4).map_err(db_error)?;
                let healthy: i64 = r.try_get(5).map_err(db_error)?;
                Ok(HealthEvent {
                    id: r.try_get(0).map_err(db_error)?,
                    node: r.try_get(1).map_err(db_error)?,
                    upstream: r.try_get(2).map_err(db_error)?,
                    host: r.try_get(3).map_err(db_error)?,
                    port: u16::try_from(port).unwrap_or(0),
                    healthy: healthy != 0,
                    at: r.try_get(6).map_err(db_error)?,
                })
            })
            .collect()
    }
}
