//! Rate-limiting counters of the `cluster` policy: one row per counter key and window, incremented
//! by batches from every node and read back as totals. Rows expire with their window.

use std::future::Future;
use std::pin::Pin;

use sqlx::{AssertSqlSafe, Row};

use super::{Store, db_error};
use crate::clock::now_secs;
use crate::model::EntityError;
use crate::plugins::rate_limiting::{Increment, RemoteStore};

/// The `cluster` policy's counters live here.
impl RemoteStore for Store {
    fn add<'a>(
        &'a self,
        batch: &'a [Increment],
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u64>, String>> + Send + 'a>> {
        Box::pin(async move { self.add_counters(batch).await.map_err(|e| e.to_string()) })
    }
}

impl Store {
    /// Adds `(key, hits, ttl seconds)` to each counter in one transaction; returns the totals.
    pub async fn add_counters(&self, batch: &[(String, u64, i64)]) -> Result<Vec<u64>, EntityError> {
        let now = now_secs();
        let upsert = self.sql(
            "INSERT INTO ratelimiting_counters (key, count, expires_at) VALUES (?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET count = ratelimiting_counters.count + excluded.count, \
             expires_at = excluded.expires_at RETURNING count",
        );
        let mut tx = self.inner.writer.begin().await.map_err(db_error)?;
        let mut totals = Vec::with_capacity(batch.len());
        for (key, hits, ttl) in batch {
            let row = sqlx::query(AssertSqlSafe(upsert.as_str()))
                .bind(key.clone())
                .bind(i64::try_from(*hits).unwrap_or(i64::MAX))
                .bind(now + ttl)
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            let total: i64 = row.try_get(0).map_err(db_error)?;
            totals.push(u64::try_from(total).unwrap_or(0));
        }
        let sweep = self.sql("DELETE FROM ratelimiting_counters WHERE expires_at < ?");
        sqlx::query(AssertSqlSafe(sweep.as_str())).bind(now).execute(&mut *tx).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(totals)
    }
}
