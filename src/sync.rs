//! Follows the store: loads one control plane's configuration into a [`ConfigState`], then replays
//! the change feed into it and swaps each new snapshot in. The I/O half of keeping a node current;
//! compiling is `snapshot::state`'s. A store that cannot be read keeps the previous snapshot, and a
//! build that panics (a bug) is caught and logged: the node keeps serving what it had.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use uuid::Uuid;

use crate::model::{EntityError, Kind};
use crate::plugins::rate_limiting::Counters;
use crate::snapshot::state::{Changes, ConfigState, LOAD_ORDER, Row};
use crate::snapshot::{Snapshot, SnapshotHolder};
use crate::store::{ChangeOp, Store};

/// Collects writes that land close together into one build.
const DEBOUNCE: Duration = Duration::from_millis(2);

/// Loads everything of `cp` from the store.
pub async fn load(store: &Store, cp: &str) -> Result<ConfigState, EntityError> {
    // The version is read first: changes committed during the load are replayed afterwards.
    let version = store.version().await?;
    let counters = Arc::new(Counters::new(Some(Arc::new(store.clone()))));
    let mut state = ConfigState::new(version, counters);
    for kind in LOAD_ORDER {
        store
            .for_each_body(cp, kind, |body, expires_at| state.load_row(kind, Row { id: None, body, expires_at }))
            .await?;
    }
    Ok(state)
}

/// Builds a snapshot, catching a panic (a bug) so that it costs this build, not the node.
pub fn build(state: &mut ConfigState, routing: bool) -> Option<Snapshot> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.build(routing))) {
        Ok(snapshot) => Some(snapshot),
        Err(_) => {
            tracing::error!("building the configuration panicked; keeping the previous one");
            None
        }
    }
}

/// Keeps `holder` current for control plane `cp` until the process ends.
pub async fn run(store: Store, cp: String, holder: Arc<SnapshotHolder>, poll: Duration, mut state: ConfigState) {
    let mut feed = store.feed(poll);
    loop {
        feed.wait().await;
        tokio::time::sleep(DEBOUNCE).await;
        let refreshed = std::panic::AssertUnwindSafe(refresh(&store, &cp, &mut state)).catch_unwind().await;
        match refreshed {
            Ok(Ok(Some(snapshot))) => holder.store(snapshot),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "configuration update failed; keeping the previous snapshot"),
            Err(_) => {
                // The mirror may be half-updated: start again from the store.
                tracing::error!("configuration update panicked; reloading the configuration");
                match load(&store, &cp).await {
                    Ok(fresh) => {
                        let (counters, balancing) = (state.counters(), state.balancing());
                        state = fresh;
                        state.use_counters(counters);
                        state.use_balancing(balancing);
                    }
                    Err(e) => tracing::error!(error = %e, "reload failed; keeping the previous snapshot"),
                }
            }
        }
    }
}

/// Brings `state` up to the store's version; returns a new snapshot when anything changed.
pub async fn refresh(store: &Store, cp: &str, state: &mut ConfigState) -> Result<Option<Snapshot>, EntityError> {
    let started = Instant::now();
    let routing = match store.changes_since(state.version()).await? {
        Some((changes, _)) if changes.is_empty() => return Ok(None),
        Some((changes, to)) => {
            let batch = collect(store, cp, &changes, to).await?;
            state.apply(&batch)
        }
        None => {
            tracing::info!("change log does not reach back far enough; reloading the configuration");
            let (counters, balancing) = (state.counters(), state.balancing());
            *state = load(store, cp).await?;
            state.use_counters(counters);
            state.use_balancing(balancing);
            true
        }
    };
    let Some(snapshot) = build(state, routing) else { return Ok(None) };
    tracing::debug!(version = snapshot.version, elapsed_ms = started.elapsed().as_millis() as u64, "snapshot built");
    Ok(Some(snapshot))
}

/// Reads the rows a batch of changes of `cp` touched, as they are now.
async fn collect(store: &Store, cp: &str, changes: &[crate::store::Change], to: i64) -> Result<Changes, EntityError> {
    let mut batch = Changes { version: to, ..Changes::default() };
    // Only the last operation on an entity matters; every key it had during the batch is stale.
    let mut last: HashMap<(Kind, &str), ChangeOp> = HashMap::new();
    for c in changes.iter().filter(|c| c.cp == cp).map(|c| &c.touched) {
        last.insert((c.kind, c.id.as_str()), c.op);
        if let (Kind::KeyAuth, Some(key), Ok(id)) = (c.kind, &c.previous_key, Uuid::parse_str(&c.id)) {
            batch.stale_keys.push((id, key.clone()));
        }
    }
    let mut upserts: HashMap<Kind, Vec<String>> = HashMap::new();
    for ((kind, id), op) in last {
        match op {
            ChangeOp::Upsert => upserts.entry(kind).or_default().push(id.to_string()),
            ChangeOp::Delete => batch.kinds.entry(kind).or_default().deletes.push(id.to_string()),
        }
    }
    for (kind, ids) in upserts {
        let rows = store.bodies(kind, &ids).await?;
        batch.kinds.entry(kind).or_default().upserts.extend(rows);
    }
    Ok(batch)
}
