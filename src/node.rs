//! A running gateway node (`tollgate start`): opens the store, loads the first snapshot, keeps it
//! current, serves the proxy and the Admin API, and on SIGTERM/SIGINT stops accepting, lets in-flight
//! requests finish and exits.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tower::Layer;

use crate::admin::{self, AdminInner, AdminState};
use crate::config::{Listen, Settings};
use crate::proxy::Proxy;
use crate::proxy::stats::Stats;
use crate::proxy::upstream::Clients;
use crate::snapshot::SnapshotHolder;
use crate::snapshot::builder::{self, ConfigState};
use crate::store::{DEFAULT_CP, Store, StoreError};

/// How long in-flight requests get to finish after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot load the configuration from the store: {0}")]
    Load(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs a node until it is told to stop.
pub fn run(settings: Settings) -> Result<(), NodeError> {
    init_logging(&settings);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads)
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)?;
    runtime.block_on(serve(settings))
}

fn init_logging(settings: &Settings) {
    // RUST_LOG refines logging for debugging (TOLLGATE_* names are reserved for configuration keys).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("tollgate={},warn", settings.log_level.tracing_filter()))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

fn bind(listen: &Listen) -> Result<TcpListener, NodeError> {
    let fail = |source| NodeError::Listen { addr: listen.addr, source };
    let socket = if listen.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    if listen.reuseport {
        socket.set_reuseport(true).map_err(fail)?;
    }
    socket.bind(listen.addr).map_err(fail)?;
    socket.listen(listen.backlog).map_err(fail)
}

async fn serve(settings: Settings) -> Result<(), NodeError> {
    let store = Store::open(&settings).await?;
    let clients = Clients::new(settings.upstream_keepalive_pool_size, settings.upstream_keepalive_idle_timeout);
    let holder = Arc::new(SnapshotHolder::new());
    let mut state = ConfigState::load(&store, DEFAULT_CP).await.map_err(|e| NodeError::Load(e.to_string()))?;
    holder.store(state.build(&clients, true).map_err(NodeError::Load)?);
    tokio::spawn(builder::run(
        store.clone(),
        DEFAULT_CP.to_string(),
        holder.clone(),
        clients,
        settings.db_update_frequency,
        state,
    ));

    // Both live for the whole process; leaking them gives every connection a plain reference.
    let proxy: &'static Proxy =
        Box::leak(Box::new(Proxy { holder, trusted_ips: settings.trusted_ips.clone(), stats: Stats::default() }));
    let proxy_listeners = settings.proxy_listen.iter().map(bind).collect::<Result<Vec<_>, _>>()?;
    let admin_listeners = settings.admin_listen.iter().map(bind).collect::<Result<Vec<_>, _>>()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let mut tasks = Vec::new();
    for listener in proxy_listeners {
        let mut stop = stop_rx.clone();
        let graceful = graceful.clone();
        tasks.push(tokio::spawn(async move {
            proxy
                .serve(
                    listener,
                    async move {
                        let _ = stop.changed().await;
                    },
                    &graceful,
                )
                .await;
        }));
    }
    let admin_state = AdminState::new(AdminInner {
        store: store.clone(),
        settings: settings.clone(),
        node_id: uuid::Uuid::new_v4(),
        hostname: hostname(),
        stats: &proxy.stats,
    });
    for listener in admin_listeners {
        let app = admin::router(admin_state.clone());
        let app = tower::util::MapRequestLayer::new(admin::trim_trailing_slash).layer(app);
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let make = axum::ServiceExt::<axum::extract::Request>::into_make_service(app);
            if let Err(e) = axum::serve(listener, make)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
            {
                tracing::error!(error = %e, "Admin API stopped");
            }
        }));
    }
    let addrs: Vec<String> = settings.proxy_listen.iter().map(|l| l.addr.to_string()).collect();
    let admin: Vec<String> = settings.admin_listen.iter().map(|l| l.addr.to_string()).collect();
    tracing::info!(proxy = %addrs.join(","), admin = %admin.join(","), database = settings.database.as_str(), "Tollgate started");
    eprintln!(
        "Tollgate started (proxy {}, admin {})",
        addrs.join(","),
        if admin.is_empty() { "off".into() } else { admin.join(",") }
    );

    wait_for_signal().await?;
    tracing::info!("stopping: draining in-flight requests");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("some connections did not finish within the drain timeout");
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> Result<(), NodeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(NodeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(NodeError::Signals)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
