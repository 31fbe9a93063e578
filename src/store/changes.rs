//! The change feed: every committed write bumps one configuration version and logs the entities it
//! touched. A node replays the log from the version its snapshot was built at; when the log no longer
//! reaches back that far it reloads everything. [`Feed`] wakes the snapshot builder on a local commit,
//! on a PostgreSQL NOTIFY, or on the periodic version check that covers lost notifications.

use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row, Transaction};

use super::{Backend, LISTEN_RETRY, Store, db_error};
use crate::model::{EntityError, Kind};

const CHANNEL: &str = "tollgate_changes";
/// Log rows older than this many versions are pruned.
const KEEP_VERSIONS: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Upsert,
    Delete,
}

/// One entity a write touched, with its endpoint key before the write (so a node can drop an index
/// entry under the old key without keeping an id → key map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub kind: Kind,
    pub id: String,
    pub op: ChangeOp,
    pub previous_key: Option<String>,
}

/// One entity touched by one committed write, as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub version: i64,
    pub cp: String,
    pub touched: Touched,
}

impl Store {
    pub(super) async fn bump_version(&self, tx: &mut Transaction<'static, Any>) -> Result<i64, EntityError> {
        // In PostgreSQL the row lock taken here serializes writers, so versions commit in order.
        let q = "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version";
        let row = sqlx::query(q).fetch_one(&mut **tx).await.map_err(db_error)?;
        row.try_get::<i64, _>(0).map_err(db_error)
    }

    pub(super) async fn record_changes(
        &self,
        tx: &mut Transaction<'static, Any>,
        version: i64,
        cp: &str,
        changes: &[Touched],
    ) -> Result<(), EntityError> {
        let q = self.sql(
            "INSERT INTO changes (version, seq, cp, kind, entity_id, op, previous_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
        );
        for (seq, t) in changes.iter().enumerate() {
            let op = match t.op {
                ChangeOp::Upsert => "upsert",
                ChangeOp::Delete => "delete",
            };
            sqlx::query(AssertSqlSafe(q.as_str()))
                .bind(version)
                .bind(seq as i64)
                .bind(cp.to_string())
                .bind(t.kind.table())
                .bind(t.id.clone())
                .bind(op)
                .bind(t.previous_key.clone())
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }
        if version % 1000 == 0 {
            let q = self.sql("DELETE FROM changes WHERE version < ?");
            sqlx::query(AssertSqlSafe(q.as_str()))
                .bind(version - KEEP_VERSIONS)
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }
        if self.backend() == Backend::Postgres {
            let q = self.sql("SELECT pg_notify(?, ?)");
            sqlx::query(AssertSqlSafe(q.as_str()))
                .bind(CHANNEL)
                .bind(version.to_string())
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// The current configuration version.
    pub async fn version(&self) -> Result<i64, EntityError> {
        let mut conn = self.inner.reader.acquire().await.map_err(db_error)?;
        self.version_on(&mut conn).await
    }

    async fn version_on(&self, conn: &mut AnyConnection) -> Result<i64, EntityError> {
        let row = sqlx::query("SELECT version FROM config_version WHERE id = 1")
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        row.try_get::<i64, _>(0).map_err(db_error)
    }

    /// Changes committed after `version`, oldest first, and the version they lead to; `None` when
    /// the log was pruned past `version` or a version in between logged nothing (a whole import):
    /// the caller must reload everything.
    pub async fn changes_since(&self, version: i64) -> Result<Option<(Vec<Change>, i64)>, EntityError> {
        let mut conn = self.inner.reader.acquire().await.map_err(db_error)?;
        self.changes_since_on(&mut conn, version).await
    }

    async fn changes_since_on(
        &self,
        conn: &mut AnyConnection,
        version: i64,
    ) -> Result<Option<(Vec<Change>, i64)>, EntityError> {
        let current = self.version_on(conn).await?;
        if current == version {
            return Ok(Some((Vec::new(), current)));
        }
        let q = self.sql(
            "SELECT version, cp, kind, entity_id, op, previous_key FROM changes \
             WHERE version > ? AND version <= ? ORDER BY version, seq",
        );
        let rows = sqlx::query(AssertSqlSafe(q.as_str()))
            .bind(version)
            .bind(current)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get(2).map_err(db_error)?;
            let Some(kind) = Kind::from_table(&kind) else { continue };
            let op: String = row.try_get(4).map_err(db_error)?;
            out.push(Change {
                version: row.try_get(0).map_err(db_error)?,
                cp: row.try_get(1).map_err(db_error)?,
                touched: Touched {
                    kind,
                    id: row.try_get(3).map_err(db_error)?,
                    op: if op == "delete" { ChangeOp::Delete } else { ChangeOp::Upsert },
                    previous_key: row.try_get(5).map_err(db_error)?,
                },
            });
        }
        // Every version a write made logs what it touched; one without (a whole import) cannot be
        // replayed: the caller reloads everything.
        // `version` may come from a data plane: checked, not trusted to be in range.
        let logged = out.windows(2).filter(|w| w[0].version != w[1].version).count() as i64 + 1;
        if out.first().map(|c| c.version) != version.checked_add(1) || Some(logged) != current.checked_sub(version) {
            return Ok(None);
        }
        Ok(Some((out, current)))
    }

    /// Streams the bodies of every live row of a kind in a control plane, without collecting them.
    pub async fn for_each_body(
        &self,
        cp: &str,
        kind: Kind,
        mut f: impl FnMut(&str, Option<i64>),
    ) -> Result<(), EntityError> {
        let mut conn = self.inner.reader.acquire().await.map_err(db_error)?;
        self.for_each_row_on(&mut conn, cp, kind, |_, body, expires_at| f(body, expires_at)).await
    }

    async fn for_each_row_on(
        &self,
        conn: &mut AnyConnection,
        cp: &str,
        kind: Kind,
        mut f: impl FnMut(&str, &str, Option<i64>),
    ) -> Result<(), EntityError> {
        let select = if kind.has_ttl() { "id, body, expires_at" } else { "id, body, NULL" };
        let q = self.sql(&format!("SELECT {select} FROM {} WHERE cp = ? ORDER BY created_at, id", kind.table()));
        let mut rows = sqlx::query(AssertSqlSafe(q.as_str())).bind(cp.to_string()).fetch(&mut *conn);
        while let Some(row) = rows.try_next().await.map_err(db_error)? {
            let id: String = row.try_get(0).map_err(db_error)?;
            let body: String = row.try_get(1).map_err(db_error)?;
            let expires_at: Option<i64> = if kind.has_ttl() { row.try_get(2).map_err(db_error)? } else { None };
            f(&id, &body, expires_at);
        }
        Ok(())
    }

    /// `(id, body, expiry)` of the given ids of one kind; missing ids are simply absent.
    pub async fn bodies(&self, kind: Kind, ids: &[String]) -> Result<Vec<(String, String, Option<i64>)>, EntityError> {
        let mut conn = self.inner.reader.acquire().await.map_err(db_error)?;
        self.bodies_on(&mut conn, kind, ids).await
    }

    async fn bodies_on(
        &self,
        conn: &mut AnyConnection,
        kind: Kind,
        ids: &[String],
    ) -> Result<Vec<(String, String, Option<i64>)>, EntityError> {
        let mut out = Vec::with_capacity(ids.len());
        let select = if kind.has_ttl() { "id, body, expires_at" } else { "id, body, NULL" };
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let q = self.sql(&format!("SELECT {select} FROM {} WHERE id IN ({marks})", kind.table()));
            let mut query = sqlx::query(AssertSqlSafe(q.as_str()));
            for id in chunk {
                query = query.bind(id.clone());
            }
            for row in query.fetch_all(&mut *conn).await.map_err(db_error)? {
                let id: String = row.try_get(0).map_err(db_error)?;
                let body: String = row.try_get(1).map_err(db_error)?;
                let expires_at: Option<i64> = if kind.has_ttl() { row.try_get(2).map_err(db_error)? } else { None };
                out.push((id, body, expires_at));
            }
        }
        Ok(out)
    }

    /// A read of the store as of one moment: every read through it sees the same committed state
    /// (a read transaction; repeatable read on PostgreSQL), so a version and the rows read with it
    /// agree.
    pub async fn read_snapshot(&self) -> Result<ReadSnapshot, EntityError> {
        let mut tx = self.inner.reader.begin().await.map_err(db_error)?;
        if self.backend() == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        Ok(ReadSnapshot { store: self.clone(), tx })
    }

    /// A waiter for "the configuration may have changed".
    pub fn feed(&self, poll: Duration) -> Feed {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        if let Some(url) = self.inner.listen_url.clone() {
            tokio::spawn(listen(url, tx));
        }
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Feed { local: self.local_change().subscribe(), notified: rx, ticker }
    }
}

/// Wakes on local commits, PostgreSQL notifications and a periodic tick.
#[derive(Debug)]
pub struct Feed {
    /// Local commits (every feed sees every one; several feeds may follow one store).
    local: tokio::sync::watch::Receiver<i64>,
    notified: tokio::sync::mpsc::Receiver<()>,
    ticker: tokio::time::Interval,
}

impl Feed {
    pub async fn wait(&mut self) {
        tokio::select! {
            Ok(()) = self.local.changed() => {}
            Some(()) = self.notified.recv() => {}
            _ = self.ticker.tick() => {}
        }
    }
}

/// Keeps a LISTEN connection open, reconnecting after failures; every notification (and every
/// reconnect, since notifications may have been missed) wakes the builder.
async fn listen(url: String, wake: tokio::sync::mpsc::Sender<()>) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(CHANNEL).await {
                    tracing::warn!(error = %e, "LISTEN failed");
                } else {
                    let _ = wake.try_send(());
                    loop {
                        match listener.recv().await {
                            Ok(_) => {
                                let _ = wake.try_send(());
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "change notifications interrupted");
                                break;
                            }
                        }
                        if wake.is_closed() {
                            return;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot LISTEN for changes"),
        }
        if wake.is_closed() {
            return;
        }
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

/// Reads of one moment of the store ([`Store::read_snapshot`]).
pub struct ReadSnapshot {
    store: Store,
    tx: Transaction<'static, Any>,
}

impl std::fmt::Debug for ReadSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSnapshot").finish_non_exhaustive()
    }
}

impl ReadSnapshot {
    pub async fn version(&mut self) -> Result<i64, EntityError> {
        self.store.version_on(&mut self.tx).await
    }

    pub async fn changes_since(&mut self, version: i64) -> Result<Option<(Vec<Change>, i64)>, EntityError> {
        self.store.changes_since_on(&mut self.tx, version).await
    }

    /// Every live row of a kind in a control plane: `(id, body, expiry)`.
    pub async fn for_each_row(
        &mut self,
        cp: &str,
        kind: Kind,
        f: impl FnMut(&str, &str, Option<i64>),
    ) -> Result<(), EntityError> {
        self.store.for_each_row_on(&mut self.tx, cp, kind, f).await
    }

    pub async fn bodies(
        &mut self,
        kind: Kind,
        ids: &[String],
    ) -> Result<Vec<(String, String, Option<i64>)>, EntityError> {
        self.store.bodies_on(&mut self.tx, kind, ids).await
    }
}
