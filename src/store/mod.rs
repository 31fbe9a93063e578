//! Persistence: SQLite (embedded, WAL) or PostgreSQL through one sqlx `Any` pool pair, one set of
//! migrations for both (`migrations/`, SQL both dialects accept), entity reads and writes with Kong's unique / foreign-key / cascade rules, and the change
//! feed (`changes` table + config version) that every node replays to update its snapshot. Writes are
//! serialized (one SQLite writer connection; a row lock on the version in PostgreSQL) so versions commit
//! in order. Nothing here validates schemas: callers hand in records that `model` already accepted.

mod changes;
mod control_planes;
mod counters;
mod entities;
mod health;
mod realms;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

use crate::config::{Database, Settings};
use crate::model::{EntityError, Kind};

pub use changes::{Change, ChangeOp, Feed, ReadSnapshot, Touched};
pub use control_planes::{ControlPlaneRow, DEFAULT_CP_ID, DataPlaneToken, StoredToken};
pub use entities::{ListQuery, Page, TagFilter, WriteOp};
pub use health::HealthEvent;
pub use realms::{Cursor, KeyHolder, RealmPage, RealmRow, RealmTable};

/// The default control plane every root Admin API path addresses.
pub const DEFAULT_CP: &str = "default";

/// Every entity table, children before their parents (the order in which they can be emptied).
pub const CHILDREN_FIRST: [Kind; 13] = [
    Kind::Plugin,
    Kind::Route,
    Kind::Service,
    Kind::Target,
    Kind::Upstream,
    Kind::Acl,
    Kind::KeyAuth,
    Kind::GroupMembership,
    Kind::ConsumerGroup,
    Kind::Consumer,
    Kind::CaCertificate,
    Kind::Sni,
    Kind::Certificate,
];

/// A failure to open or migrate the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create prefix directory {path}: {source}")]
    Prefix { path: String, source: std::io::Error },
    #[error("cannot connect to {what}: {source}")]
    Connect { what: String, source: sqlx::Error },
    #[error("store initialisation failed: {0}")]
    Init(String),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// Which SQL dialect the pools speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store handle, cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    backend: Backend,
    /// Writes go through here: one connection on SQLite.
    writer: AnyPool,
    reader: AnyPool,
    /// Wakes this node's snapshot builder right after a local commit.
    /// The latest version committed through this handle; every change feed watches it.
    local_change: tokio::sync::watch::Sender<i64>,
    /// The newest configuration version this node committed.
    committed: AtomicI64,
    /// PostgreSQL URL for LISTEN (None on SQLite).
    listen_url: Option<String>,
    /// DB-less: entities change only by a whole configuration (`replace_all`).
    declarative_only: bool,
}

impl Store {
    /// Connects (creating `<prefix>/tollgate.db` on first start), applies migrations and makes sure
    /// the `default` control plane exists.
    pub async fn open(settings: &Settings) -> Result<Store, StoreError> {
        let mut store = Store::connect(settings).await?;
        if settings.database == Database::Off
            && let Some(inner) = Arc::get_mut(&mut store.inner)
        {
            inner.declarative_only = true;
        }
        store.ensure_default_control_plane().await.map_err(|e| StoreError::Init(e.to_string()))?;
        Ok(store)
    }

    async fn connect(settings: &Settings) -> Result<Store, StoreError> {
        install_default_drivers();
        match settings.database {
            Database::Sqlite | Database::Off => {
                std::fs::create_dir_all(&settings.prefix)
                    .map_err(|source| StoreError::Prefix { path: settings.prefix.display().to_string(), source })?;
                let path = settings.sqlite_path();
                let url = format!("sqlite://{}?mode=rwc", path.display());
                // WAL with synchronous = NORMAL: a commit is in the OS before it is acknowledged, so it
                // survives the process being killed. Readers keep a small page cache each.
                let connect = |max: u32, pragmas: &'static str| {
                    AnyPoolOptions::new()
                        .max_connections(max)
                        .min_connections(1)
                        .after_connect(move |conn, _meta| {
                            Box::pin(async move {
                                conn.execute(pragmas).await?;
                                Ok(())
                            })
                        })
                        .connect(&url)
                };
                let writer = connect(
                    1,
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
                     PRAGMA foreign_keys = ON;",
                )
                .await
                .map_err(|source| StoreError::Connect { what: url.clone(), source })?;
                sqlx::migrate!().run(&writer).await?;
                let reader = connect(4, "PRAGMA busy_timeout = 5000; PRAGMA cache_size = -512;")
                    .await
                    .map_err(|source| StoreError::Connect { what: url.clone(), source })?;
                Ok(Store::from_pools(Backend::Sqlite, writer, reader, None))
            }
            Database::Postgres => {
                let url = pg_url(settings);
                let shown = format!(
                    "postgres://{}@{}:{}/{}",
                    settings.pg.user, settings.pg.host, settings.pg.port, settings.pg.database
                );
                let pool = AnyPoolOptions::new()
                    .max_connections(settings.pg.max_connections)
                    .acquire_timeout(settings.pg.timeout)
                    .connect(&url)
                    .await
                    .map_err(|source| StoreError::Connect { what: shown, source })?;
                // Several nodes may start together; the migrator takes an advisory lock.
                sqlx::migrate!().run(&pool).await?;
                Ok(Store::from_pools(Backend::Postgres, pool.clone(), pool, Some(url)))
            }
        }
    }

    fn from_pools(backend: Backend, writer: AnyPool, reader: AnyPool, listen_url: Option<String>) -> Store {
        Store {
            inner: Arc::new(Inner {
                backend,
                writer,
                reader,
                local_change: tokio::sync::watch::Sender::new(0),
                committed: AtomicI64::new(0),
                listen_url,
                declarative_only: false,
            }),
        }
    }

    /// Whether this is a DB-less node's store (entities change only by a whole configuration).
    pub fn declarative_only(&self) -> bool {
        self.inner.declarative_only
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Rewrites `?` placeholders as `$1, $2…` for PostgreSQL. Every statement is assembled from
    /// table and column names of the static schema; values are always bound, never spliced in,
    /// which is why callers may wrap the result in `AssertSqlSafe`.
    fn sql(&self, query: &str) -> String {
        match self.inner.backend {
            Backend::Sqlite => query.to_string(),
            Backend::Postgres => {
                let mut out = String::with_capacity(query.len() + 8);
                let mut n = 0;
                for c in query.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// Whether the database answers (for `GET /status`).
    pub async fn reachable(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.inner.reader).await.is_ok()
    }

    /// The newest configuration version committed through this handle (0 before any write).
    pub fn committed_version(&self) -> i64 {
        self.inner.committed.load(Ordering::Acquire)
    }

    pub(crate) fn local_change(&self) -> &tokio::sync::watch::Sender<i64> {
        &self.inner.local_change
    }

    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.reader.close().await;
    }
}

fn pg_url(settings: &Settings) -> String {
    let Ok(mut url) = url::Url::parse("postgres://localhost/") else {
        return String::new();
    };
    let _ = url.set_host(Some(&settings.pg.host));
    let _ = url.set_port(Some(settings.pg.port));
    let _ = url.set_username(&settings.pg.user);
    if let Some(pw) = &settings.pg.password {
        let _ = url.set_password(Some(pw));
    }
    url.set_path(&settings.pg.database);
    let timeout = settings.pg.timeout.as_secs().max(1);
    url.set_query(Some(&format!("connect_timeout={timeout}")));
    url.to_string()
}

/// Maps a database failure to the gateway's error, logging the detail once.
pub(crate) fn db_error(e: sqlx::Error) -> EntityError {
    tracing::error!(error = %e, "database error");
    EntityError::Database(e.to_string())
}

/// How long a PostgreSQL LISTEN connection waits before retrying after a failure.
pub(crate) const LISTEN_RETRY: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use sqlx::{AssertSqlSafe, Row};

    /// Every column the store derives from an entity's descriptor exists in its table, so a
    /// descriptor and the migrations cannot drift apart unnoticed.
    #[tokio::test]
    async fn every_descriptor_matches_its_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = crate::config::load(None).expect("default settings");
        settings.prefix = dir.path().to_path_buf();
        settings.database = Database::Sqlite;
        let store = Store::open(&settings).await.expect("open");
        for kind in Kind::ALL {
            let def = kind.def();
            let q = format!("SELECT name FROM pragma_table_info('{}')", def.table);
            let rows = sqlx::query(AssertSqlSafe(q)).fetch_all(&store.inner.reader).await.expect("table info");
            let columns: Vec<String> = rows.iter().filter_map(|r| r.try_get::<String, _>(0).ok()).collect();
            let mut needed: Vec<String> = ["id", "cp", "created_at", "body", "tags"].map(String::from).to_vec();
            needed.extend(def.unique.iter().map(|f| (*f).to_string()));
            needed.extend(def.foreign_keys.iter().map(|fk| format!("{}_id", fk.field)));
            needed.push(def.key_column.to_string());
            if !def.cache_key.is_empty() {
                needed.push("cache_key".into());
            }
            if def.ttl {
                needed.push("expires_at".into());
            }
            for column in needed {
                assert!(columns.contains(&column), "{}: no column {column} (has {columns:?})", def.table);
            }
        }
        store.close().await;
    }
}
