//! Every node's status API (`status_listen`): `GET /status` (role, configuration hash, link state)
//! and `GET /status/ready`, which answers 200 only once a configuration is being served.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::data_plane::DataPlane;
use crate::config::NodeRole;
use crate::snapshot::SnapshotHolder;

/// What the status API looks at.
#[derive(Debug, Clone)]
pub struct StatusSource {
    pub role: NodeRole,
    pub holder: Arc<SnapshotHolder>,
    pub data_plane: Option<Arc<DataPlane>>,
}

impl StatusSource {
    fn ready(&self) -> bool {
        match &self.data_plane {
            Some(dp) => dp.status().config_hash.is_some(),
            None => self.holder.load().version >= 0,
        }
    }
}

/// `GET /metrics` (Prometheus' text format, Kong's names): written on a thread of its own at the
/// lowest CPU priority and sent in chunks as they are written, so a large scrape neither sits whole
/// in memory nor takes the CPU from proxying (it uses what proxying leaves); a scraper that leaves
/// stops the writing. Asked on the scrape thread ([`crate::scrapes`]), the writing thread is in
/// the idle scheduling class with it (a thread starts in its creator's class).
pub async fn metrics() -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let scrape = move || {
        // Nice 19 for this thread alone (Linux applies it per thread); proxy workers wake ahead of it.
        let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
        crate::plugins::prometheus::scrape_into(|chunk| tx.blocking_send(chunk).is_ok());
    };
    if let Err(e) = std::thread::Builder::new().name("tollgate-scrape".into()).spawn(scrape) {
        tracing::error!(error = %e, "no thread for a scrape");
    }
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    ([(axum::http::header::CONTENT_TYPE, "text/plain; charset=UTF-8")], axum::body::Body::from_stream(chunks))
        .into_response()
}

pub fn router(source: StatusSource) -> Router {
    let status = source.clone();
    Router::new()
        .route(
            "/status",
            get(move || async move {
                let dp = status.data_plane.as_ref().map(|d| d.status());
                let hash = dp.as_ref().and_then(|d| d.config_hash.clone()).unwrap_or_else(|| "0".repeat(32));
                let snapshot = status.holder.load_full();
                let mut body = json!({
                    "role": status.role.as_str(),
                    "ready": status.ready(),
                    "configuration_hash": hash,
                    "configuration": {"version": snapshot.version, "rejected": &*snapshot.rejected},
                    "control_plane_connected": dp.as_ref().map(|d| d.connected),
                    "version": crate::VERSION,
                });
                if let (Some(dp), Some(obj)) = (dp, body.as_object_mut()) {
                    let sync = if dp.rejected.is_some() { "config_rejected" } else { "normal" };
                    obj.insert("sync_status".into(), json!(sync));
                    obj.insert("sync_error".into(), json!(dp.rejected));
                }
                Json(body)
            }),
        )
        .route(
            "/status/ready",
            get(move || async move {
                let r: Response = if source.ready() {
                    Json(json!({"message": "ready"})).into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"message": "no configuration loaded yet"})))
                        .into_response()
                };
                r
            }),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, Json(json!({"message": "Not found"}))) })
}
