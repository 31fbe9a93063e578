//! A running gateway node (`tollgate start`): opens the store, loads the first snapshot, keeps it
//! current, serves the proxy, the Admin API and the admin page, and on SIGTERM/SIGINT stops
//! accepting, lets in-flight requests finish and exits.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Layer;

use crate::admin::{self, AdminInner, AdminState};
use crate::cluster::data_plane::DataPlane;
use crate::cluster::hub::Hub;
use crate::cluster::status::{self, StatusSource};
use crate::config::{Listen, NodeRole, PemPair, Settings};
use crate::proxy::Proxy;
use crate::proxy::stats::Stats;
use crate::proxy::upstream::{self, PoolSettings};
use crate::scrapes::{App, ScrapeThread};
use crate::snapshot::SnapshotHolder;
use crate::store::{DEFAULT_CP, Store, StoreError};
use crate::tls::{self, CertPair, CertificateSource, SniResolver};

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
    #[error("TLS: {0}")]
    Tls(String),
}

/// Runs a node until it is told to stop.
pub fn run(settings: Settings) -> Result<(), NodeError> {
    init_logging(&settings);
    log_panics();
    for warning in &settings.tls_warnings {
        tracing::warn!("{warning}");
    }
    // TLS to Redis (`redis.ssl`) uses rustls' process-wide provider: the same one as upstream TLS.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    upstream::configure(PoolSettings {
        max_idle_per_upstream: settings.upstream_keepalive_pool_size,
        idle_timeout: settings.upstream_keepalive_idle_timeout,
    });
    // The control runtime runs the Admin API, the store and the snapshot builder; the proxy runs on
    // its own single-threaded workers (see `serve_workers`).
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads.clamp(1, 2))
        .thread_name("tollgate-control")
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)?;
    control.block_on(serve(settings))
}

fn init_logging(settings: &Settings) {
    // RUST_LOG refines logging for debugging (TOLLGATE_* names are reserved for configuration keys).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("tollgate={},warn", settings.log_level.tracing_filter()))
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

/// A panic is a bug: it is logged where it happened, and whoever catches it (the request, the Admin
/// API call, the configuration build) answers 500 or keeps the previous configuration.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(panic = %what, at, thread = std::thread::current().name().unwrap_or("?"), "bug: panicked; caught");
    }));
}

/// A listening socket, non-blocking, ready to hand to any runtime.
fn bind(listen: &Listen, reuseport: bool) -> Result<std::net::TcpListener, NodeError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let fail = |source| NodeError::Listen { addr: listen.addr, source };
    let domain = if listen.addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if reuseport {
        socket.set_reuse_port(true).map_err(fail)?;
    }
    socket.bind(&listen.addr.into()).map_err(fail)?;
    socket.listen(i32::try_from(listen.backlog).unwrap_or(i32::MAX)).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    Ok(socket.into())
}

/// The proxy sockets of every worker, each with the index of its `proxy_listen` entry: one shared
/// socket per address, or one per worker with `reuseport` so the kernel spreads connections.
fn proxy_sockets(settings: &Settings) -> Result<Vec<Vec<(std::net::TcpListener, usize)>>, NodeError> {
    let workers = settings.worker_threads;
    let mut per_worker: Vec<Vec<(std::net::TcpListener, usize)>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, listen) in settings.proxy_listen.iter().enumerate() {
        if listen.reuseport {
            for sockets in per_worker.iter_mut() {
                sockets.push((bind(listen, true)?, i));
            }
        } else {
            let shared = bind(listen, false)?;
            for sockets in per_worker.iter_mut() {
                let socket = shared.try_clone().map_err(|source| NodeError::Listen { addr: listen.addr, source })?;
                sockets.push((socket, i));
            }
        }
    }
    Ok(per_worker)
}

/// The pair served when nothing else matches: the first of `pairs` (and the first of the other key
/// type beside it, as Kong serves an RSA and an ECDSA pair), or the generated default.
fn default_pair(pairs: &[PemPair], settings: &Settings) -> Result<CertPair, NodeError> {
    let generated;
    let pairs: Vec<(&[u8], &[u8])> = if pairs.is_empty() {
        generated = tls::generate::ensure_default(&settings.prefix).map_err(|e| NodeError::Tls(e.to_string()))?;
        vec![(generated.cert_pem.as_bytes(), generated.key_pem.as_bytes())]
    } else {
        pairs.iter().map(|p| (p.cert.as_slice(), p.key.as_slice())).collect()
    };
    let mut loaded = Vec::new();
    for (cert, key) in pairs {
        let certified = tls::material::certified_key(cert, key).map_err(|e| NodeError::Tls(e.to_string()))?;
        let kind = certified
            .end_entity_cert()
            .ok()
            .and_then(|der| tls::material::info(der).ok())
            .map_or(tls::KeyType::Other, |i| i.key_type);
        loaded.push((certified, kind));
    }
    let mut loaded = loaded.into_iter();
    let (main, main_type) = loaded.next().ok_or_else(|| NodeError::Tls("no certificate".into()))?;
    let alt = loaded.find(|(_, t)| *t != main_type);
    Ok(CertPair { id: uuid::Uuid::nil(), main, main_type, alt })
}

/// The TLS acceptor of each listener entry (`None` for cleartext ones).
fn acceptors(
    listens: &[Listen],
    pairs: &[PemPair],
    settings: &Settings,
    source: Option<Arc<dyn CertificateSource>>,
) -> Result<Vec<Option<tokio_rustls::TlsAcceptor>>, NodeError> {
    if !listens.iter().any(|l| l.ssl) {
        return Ok(vec![None; listens.len()]);
    }
    let default = default_pair(pairs, settings)?;
    listens
        .iter()
        .map(|l| {
            if !l.ssl {
                return Ok(None);
            }
            let resolver = Arc::new(SniResolver::new(default.clone(), source.clone()));
            let config = settings.tls_policy.server_config(resolver, l.http2).map_err(NodeError::Tls)?;
            Ok(Some(tokio_rustls::TlsAcceptor::from(config)))
        })
        .collect()
}

/// Starts the proxy workers: one thread each, with a single-threaded runtime, its own upstream pool
/// and its own accept loops. They stop accepting when `stop` flips, then drain.
fn serve_workers(
    proxy: &'static Proxy,
    sockets: Vec<Vec<(std::net::TcpListener, usize)>>,
    settings: &Settings,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, NodeError> {
    let source: Arc<dyn CertificateSource> = proxy.holder.clone();
    let acceptors = acceptors(&settings.proxy_listen, &settings.ssl_certs, settings, Some(source))?;
    let mut threads = Vec::new();
    for (i, listeners) in sockets.into_iter().enumerate() {
        let stop = stop.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NodeError::Runtime)?;
        let listeners: Vec<_> = listeners
            .into_iter()
            .map(|(socket, entry)| {
                let proxy_protocol = settings.proxy_listen.get(entry).is_some_and(|l| l.proxy_protocol);
                (socket, acceptors.get(entry).cloned().flatten(), proxy_protocol)
            })
            .collect();
        let thread = std::thread::Builder::new().name(format!("tollgate-worker-{i}")).spawn(move || {
            runtime.block_on(async move {
                let drain = crate::proxy::Drain::default();
                let mut serving = Vec::new();
                for (std_listener, tls, proxy_protocol) in listeners {
                    match TcpListener::from_std(std_listener) {
                        Ok(socket) => {
                            let mut stop = stop.clone();
                            let stopped = async move {
                                let _ = stop.changed().await;
                            };
                            let listener = crate::proxy::Listener { socket, tls, proxy_protocol };
                            serving.push(proxy.serve(listener, stopped, &drain));
                        }
                        Err(e) => tracing::error!(error = %e, "proxy listener unusable"),
                    }
                }
                futures_util::future::join_all(serving).await;
                if tokio::time::timeout(DRAIN_TIMEOUT, drain.shutdown()).await.is_err() {
                    tracing::warn!("some connections did not finish within the drain timeout");
                }
            });
        });
        threads.push(thread.map_err(NodeError::Runtime)?);
    }
    Ok(threads)
}

async fn serve(settings: Settings) -> Result<(), NodeError> {
    if settings.role == NodeRole::DataPlane {
        return serve_data_plane(settings).await;
    }
    let store = Store::open(&settings).await?;
    if settings.database == crate::config::Database::Off {
        load_declarative(&settings, &store).await?;
    }
    let holder = Arc::new(SnapshotHolder::new());
    // A node starts whatever it finds in its store: rows that do not compile are left out (closed,
    // not open) and reported on /status.
    let mut state = crate::sync::load(&store, DEFAULT_CP).await.map_err(|e| NodeError::Load(e.to_string()))?;
    let dns = crate::dns::Dns::new(settings.dns.clone());
    state.use_balancing(crate::balancer::NodeBalancing { health: Arc::default(), dns: dns.clone() });
    let first = crate::sync::build(&mut state, true).ok_or_else(|| NodeError::Load("the first build failed".into()))?;
    holder.store(first);
    tokio::spawn(crate::sync::run(
        store.clone(),
        DEFAULT_CP.to_string(),
        holder.clone(),
        settings.db_update_frequency,
        state,
    ));

    // Lives for the whole process; leaking it gives every connection a plain reference.
    let proxy: &'static Proxy = Box::leak(Box::new(Proxy {
        holder,
        trusted_ips: settings.trusted_ips.clone(),
        stats: Stats::default(),
        access_log: access_log(&settings),
    }));
    // A control plane serves no proxy.
    let proxying = settings.role == NodeRole::Traditional;
    let sockets = if proxying { proxy_sockets(&settings)? } else { Vec::new() };
    let admin_listeners = settings
        .admin_listen
        .iter()
        .map(|l| {
            bind(l, l.reuseport)
                .and_then(|s| TcpListener::from_std(s).map_err(|source| NodeError::Listen { addr: l.addr, source }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let gui_listeners = gui_listeners(&settings)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = serve_workers(proxy, sockets, &settings, &stop_rx)?;
    let node_id = uuid::Uuid::new_v4();
    if settings.role != NodeRole::ControlPlane {
        spawn_balancing(&proxy.holder, dns, &stop_rx);
        tokio::spawn(follow_health_events(store.clone(), proxy.holder.clone(), node_id, stop_rx.clone()));
    }
    let hub = if settings.role == NodeRole::ControlPlane {
        let hub = Hub::new(store.clone(), settings.cluster_max_payload);
        let tls = crate::cluster::tls::server(&settings.cluster_tls).map_err(NodeError::Tls)?;
        let listener = TcpListener::bind(settings.cluster_listen)
            .await
            .map_err(|source| NodeError::Listen { addr: settings.cluster_listen, source })?;
        tokio::spawn(hub.clone().serve(listener, tls));
        tokio::spawn(hub.clone().run_publisher(settings.db_update_frequency));
        Some(hub)
    } else {
        None
    };
    crate::plugins::prometheus::series::registry().set_max_series(settings.prometheus_max_series);
    crate::metrics::register(crate::metrics::NodeGauges {
        node_id: node_id.to_string(),
        stats: proxying.then_some(&proxy.stats),
        holder: proxy.holder.clone(),
        reachable: Some(crate::metrics::watch_store(store.clone())),
        data_plane: None,
        hub: hub.clone(),
        cert_expiry: None,
    });
    let scrapes = scrape_thread().await;
    let source = StatusSource { role: settings.role, holder: proxy.holder.clone(), data_plane: None };
    serve_status(&settings, source, scrapes.clone(), &stop_rx).await?;
    let admin_state = AdminState::new(AdminInner {
        store: store.clone(),
        settings: settings.clone(),
        node_id,
        hostname: hostname(),
        stats: &proxy.stats,
        holder: proxy.holder.clone(),
        hub,
        config_loading: tokio::sync::Mutex::new(()),
    });
    let admin_tls = acceptors(&settings.admin_listen, &settings.admin_ssl_certs, &settings, None)?;
    let mut admin_tasks = Vec::new();
    for (listener, tls) in admin_listeners.into_iter().zip(admin_tls) {
        let app = admin::router(admin_state.clone());
        let app = App::new(tower::util::MapRequestLayer::new(admin::trim_trailing_slash).layer(app));
        let mut stop = stop_rx.clone();
        let scrapes = scrapes.clone();
        admin_tasks.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.changed().await;
            };
            serve_app(listener, tls, app, scrapes, stopped, "Admin API").await;
        }));
    }
    let gui_tls = acceptors(&settings.admin_gui_listen, &settings.admin_ssl_certs, &settings, None)?;
    for (listener, tls) in gui_listeners.into_iter().zip(gui_tls) {
        admin_tasks.push(serve_gui(listener, tls, crate::gui::router(&settings), stop_rx.clone()));
    }
    let addrs: Vec<String> =
        if proxying { settings.proxy_listen.iter().map(|l| l.addr.to_string()).collect() } else { vec!["off".into()] };
    let admin: Vec<String> = settings.admin_listen.iter().map(|l| l.addr.to_string()).collect();
    let gui: Vec<String> = match settings.admin_listen.is_empty() {
        true => Vec::new(),
        false => settings.admin_gui_listen.iter().map(|l| l.addr.to_string()).collect(),
    };
    tracing::info!(proxy = %addrs.join(","), admin = %admin.join(","), gui = %gui.join(","), workers = settings.worker_threads, database = settings.database.as_str(), "Tollgate started");
    eprintln!(
        "Tollgate started (proxy {}, admin {})",
        addrs.join(","),
        if admin.is_empty() { "off".into() } else { admin.join(",") }
    );

    wait_for_signal().await?;
    tracing::info!("stopping: draining in-flight requests");
    let _ = stop_tx.send(true);
    for t in admin_tasks {
        let _ = t.await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// A data plane: no store and no Admin API; the configuration comes from the control plane (or,
/// until it answers, from `<prefix>/config.cache`).
/// How often a node looks for health set by hand on the other nodes of its database.
const HEALTH_EVENTS_EVERY: Duration = Duration::from_secs(1);

/// Applies the health other nodes of this database set by hand (`PUT …/healthy|unhealthy`) to this
/// node's balancers. Clocks may differ a little between nodes: each look reaches back a few seconds
/// and skips the events already applied.
async fn follow_health_events(
    store: Store,
    holder: Arc<SnapshotHolder>,
    node_id: uuid::Uuid,
    mut stop: watch::Receiver<bool>,
) {
    const SKEW_MS: i64 = 5_000;
    let me = node_id.to_string();
    let mut since = crate::clock::now_millis() - SKEW_MS;
    let mut applied: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(HEALTH_EVENTS_EVERY) => {}
        }
        let events = match store.health_events_since(since).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "reading health events failed");
                continue;
            }
        };
        let snapshot = holder.load_full();
        for event in events {
            // `at` comes from the database: no arithmetic on it may overflow.
            since = since.max(event.at.saturating_sub(SKEW_MS));
            if event.node == me || applied.contains_key(&event.id) {
                continue;
            }
            let health =
                if event.healthy { crate::balancer::Health::Healthy } else { crate::balancer::Health::Unhealthy };
            let upstream = uuid::Uuid::parse_str(&event.upstream).ok();
            let address =
                event.host.parse::<std::net::IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, event.port));
            if let (Some(live), Some(address)) = (upstream.and_then(|u| snapshot.balancers.get(&u)), address) {
                live.load().set_health(None, Some(address), health);
            }
            applied.insert(event.id, event.at);
        }
        applied.retain(|_, at| *at >= since);
    }
}

/// Active health checks of the upstreams in the live configuration, on this node, and the
/// refresh of their targets' DNS answers.
fn spawn_balancing(holder: &Arc<SnapshotHolder>, dns: Arc<crate::dns::Dns>, stop: &watch::Receiver<bool>) {
    let live = holder.clone();
    let current = move || live.load_full().balancers.values().map(|b| b.load()).collect();
    tokio::spawn(crate::balancer::active::run(current, stop.clone()));
    let live = holder.clone();
    let current = move || live.load_full().balancers.values().cloned().collect();
    tokio::spawn(crate::balancer::follow_dns(current, dns, stop.clone()));
}

/// The writer of `proxy_access_log`, when on.
fn access_log(settings: &Settings) -> Option<Arc<crate::plugins::log::Queue>> {
    let path = settings.proxy_access_log.as_ref()?;
    let dropped = &crate::plugins::log::dropped().access_log;
    Some(Arc::new(crate::plugins::file_log::writer(path.display().to_string(), false, Default::default(), dropped)))
}

async fn serve_data_plane(settings: Settings) -> Result<(), NodeError> {
    let holder = Arc::new(SnapshotHolder::new());
    let dp = DataPlane::new(&settings, hostname(), holder.clone());
    dp.load_cache();
    tokio::spawn(dp.clone().run());
    let proxy: &'static Proxy = Box::leak(Box::new(Proxy {
        holder: holder.clone(),
        trusted_ips: settings.trusted_ips.clone(),
        stats: Stats::default(),
        access_log: access_log(&settings),
    }));
    let sockets = proxy_sockets(&settings)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = serve_workers(proxy, sockets, &settings, &stop_rx)?;
    spawn_balancing(&holder, dp.dns(), &stop_rx);
    crate::plugins::prometheus::series::registry().set_max_series(settings.prometheus_max_series);
    crate::metrics::register(crate::metrics::NodeGauges {
        node_id: dp.node_id.to_string(),
        stats: Some(&proxy.stats),
        holder: holder.clone(),
        reachable: None,
        data_plane: Some(dp.clone()),
        hub: None,
        cert_expiry: settings.cluster_tls.pair.as_ref().and_then(|p| crate::metrics::cert_expiry(&p.cert)),
    });
    let scrapes = scrape_thread().await;
    let source = StatusSource { role: settings.role, holder, data_plane: Some(dp) };
    serve_status(&settings, source, scrapes.clone(), &stop_rx).await?;
    let addrs: Vec<String> = settings.proxy_listen.iter().map(|l| l.addr.to_string()).collect();
    tracing::info!(proxy = %addrs.join(","), control_plane = %settings.cluster_control_plane, "Tollgate data plane started");
    eprintln!(
        "Tollgate data plane started (proxy {}, control plane {})",
        addrs.join(","),
        settings.cluster_control_plane
    );
    wait_for_signal().await?;
    tracing::info!("stopping: draining in-flight requests");
    let _ = stop_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves an application (the Admin API, the status API) until `stop` resolves, then lets open
/// connections finish. Over TLS when an acceptor is given; in clear text a scrape's connection
/// goes to the scrape thread when there is one (see [`crate::scrapes`]).
async fn serve_app(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: App,
    scrapes: Option<ScrapeThread>,
    stop: impl std::future::Future<Output = ()>,
    what: &'static str,
) {
    let graceful = GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let (tls, app, builder, scrapes) = (tls.clone(), app.clone(), builder.clone(), scrapes.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = crate::scrapes::service(app.clone());
            let ended = match tls {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        _ => {
                            tracing::debug!(client = %peer, "{what} TLS handshake failed");
                            return;
                        }
                    };
                    let connection = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service);
                    watcher.watch(connection.into_owned()).await
                }
                None => {
                    let stream = match scrapes {
                        Some(thread) => match thread.offer(stream, &app).await {
                            crate::scrapes::Offer::Taken => return,
                            crate::scrapes::Offer::Back(stream) => stream,
                        },
                        None => stream,
                    };
                    let connection =
                        builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
                    watcher.watch(connection.into_owned()).await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "{what} connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("some {what} connections did not finish within the drain timeout");
    }
}

/// The admin page's sockets (`admin_gui_listen`), bound at start so that a port in use stops the
/// node. As in Kong, the page is not served when the Admin API does not listen (it would have
/// nothing to talk to).
fn gui_listeners(settings: &Settings) -> Result<Vec<TcpListener>, NodeError> {
    if settings.admin_listen.is_empty() {
        if !settings.admin_gui_listen.is_empty() {
            tracing::warn!("the admin page is not served because the Admin API does not listen (admin_listen = off)");
        }
        return Ok(Vec::new());
    }
    settings
        .admin_gui_listen
        .iter()
        .map(|l| {
            bind(l, l.reuseport)
                .and_then(|s| TcpListener::from_std(s).map_err(|source| NodeError::Listen { addr: l.addr, source }))
        })
        .collect()
}

/// Serves the admin page on one listener until `stop` flips.
fn serve_gui(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.changed().await;
        };
        serve_app(listener, tls, App::new(app), None, stopped, "admin page").await;
    })
}

/// The node's scrape thread; none where the idle scheduling class is refused (scrapes are then
/// served as other requests are).
async fn scrape_thread() -> Option<ScrapeThread> {
    match ScrapeThread::start().await {
        Ok(thread) => Some(thread),
        Err(e) => {
            tracing::warn!(error = %e, "scrapes are served at normal priority");
            None
        }
    }
}

/// Serves the status API on `status_listen` until `stop` flips.
async fn serve_status(
    settings: &Settings,
    source: StatusSource,
    scrapes: Option<ScrapeThread>,
    stop: &watch::Receiver<bool>,
) -> Result<(), NodeError> {
    let Some(addr) = settings.status_listen else { return Ok(()) };
    let listener = TcpListener::bind(addr).await.map_err(|source| NodeError::Listen { addr, source })?;
    let mut stop = stop.clone();
    let app = App::new(status::router(source));
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.changed().await;
        };
        serve_app(listener, None, app, scrapes, stopped, "status API").await;
    });
    Ok(())
}

/// `tollgate tokens create`: mints an admin token in the node's store; returns its secret.
pub fn create_token(settings: &Settings, name: String, role: crate::auth::Role) -> Result<String, NodeError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NodeError::Runtime)?;
    runtime.block_on(async {
        let store = Store::open(settings).await?;
        let (token, secret) = admin::tokens::mint(name, role);
        store.insert_token(&token).await.map_err(|e| NodeError::Load(e.to_string()))?;
        store.close().await;
        Ok(secret)
    })
}

/// DB-less: the configuration of `declarative_config` (or `declarative_config_string`) loaded whole
/// at start, replacing what the node held; without either, the node keeps what it last loaded.
async fn load_declarative(settings: &Settings, store: &Store) -> Result<(), NodeError> {
    let (text, name) = match (&settings.declarative_config, &settings.declarative_config_string) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| NodeError::Load(format!("declarative_config {}: {e}", path.display())))?;
            (text, Some(path.to_string_lossy().into_owned()))
        }
        (None, Some(text)) => (text.clone(), None),
        (None, None) => return Ok(()),
    };
    let declared = crate::declarative::read(&text, name.as_deref(), &crate::plugins::Catalog)
        .map_err(|e| NodeError::Load(format!("declarative_config is invalid:\n{}", e.pretty())))?;
    for warning in &declared.warnings {
        tracing::warn!("{warning}");
    }
    let hash = crate::declarative::hash(&text);
    store
        .replace_all(DEFAULT_CP, &declared.entities, &hash)
        .await
        .map_err(|(kind, id, e)| NodeError::Load(format!("declarative_config: {} {id}: {e}", kind.table())))?;
    tracing::info!(entities = declared.entities.len(), hash, "declarative configuration loaded");
    Ok(())
}

/// `tollgate config db-import`: a declarative file's entities written to the node's store, created
/// or replaced, in one transaction. Returns how many were written.
pub fn db_import(settings: &Settings, declared: &crate::declarative::Declared) -> Result<usize, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let store = Store::open(settings).await.map_err(|e| e.to_string())?;
        let written = store.import(DEFAULT_CP, &declared.entities).await;
        store.close().await;
        written.map_err(|(kind, id, e)| match id.is_empty() {
            true => e.to_string(),
            false => format!("{} {id}: {e}", kind.table()),
        })
    })
}

/// `tollgate config db-export`: the node's store as a declarative file (Kong's export shape).
pub fn db_export(settings: &Settings) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let store = Store::open(settings).await.map_err(|e| e.to_string())?;
        let mut tables = Vec::new();
        for kind in crate::declarative::export_order() {
            let mut rows = Vec::new();
            let mut broken = None;
            let read = store.for_each_body(DEFAULT_CP, *kind, |body, _| match serde_json::from_str(body) {
                Ok(serde_json::Value::Object(row)) => rows.push(row),
                _ => broken = Some(kind.table()),
            });
            read.await.map_err(|e| e.to_string())?;
            if let Some(table) = broken {
                return Err(format!("a stored row of '{table}' is not a JSON object"));
            }
            tables.push((*kind, rows));
        }
        store.close().await;
        Ok(crate::declarative::export(&tables))
    })
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
