//! Scrapes served on the CPU that proxying leaves. A plain-HTTP connection to the Admin API or the
//! status API whose first request is `GET /metrics` is handed to the node's scrape thread, which
//! runs in Linux's idle scheduling class (`SCHED_IDLE`) with a runtime of its own and serves the
//! connection there whole: the exposition's rendering and its writes into the socket (about half
//! of a large scrape's CPU) then run only when no proxy worker wants the CPU, and a waking worker
//! takes it back at once (a nice-19 thread may first finish its slice, which shows in the proxy's
//! p99). An idle-class thread gets next to nothing on a saturated CPU, so a connection the thread
//! has not taken within [`GRACE`] is served as any other, at normal priority, and so are all
//! scrapes for [`BACK_OFF`] after one that the thread took longer than [`SLOW`] to serve; the
//! thread closes each connection after its response, so that every scrape is placed anew.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// An HTTP application as a listener serves it.
pub type App = tower::util::BoxCloneSyncService<Request, Response, Infallible>;

/// How long a scrape's connection waits for the scrape thread. With any idle CPU the thread takes
/// it within a millisecond; one that waited this long is on a saturated node, where an idle-class
/// scrape could outlast Prometheus' timeout.
pub const GRACE: Duration = Duration::from_millis(200);

/// A scrape the thread took longer than this to serve found the node with too little idle CPU
/// (a large one takes well under a second where there is some)...
pub const SLOW: Duration = Duration::from_secs(1);

/// ...and scrapes are then served at normal priority for this long before the thread is tried again.
pub const BACK_OFF: Duration = Duration::from_secs(60);

/// How long a new connection's first bytes are waited for to tell a scrape from other requests
/// (a scraper sends its request at once; anything slower is served as usual).
const FIRST_BYTES: Duration = Duration::from_secs(1);

/// Connections waiting for the thread, at most; more are served as usual.
const WAITING: usize = 16;

/// The node's scrape thread, as listeners hand connections to it.
#[derive(Debug, Clone)]
pub struct ScrapeThread {
    tx: mpsc::Sender<Handoff>,
    backing_off: Arc<BackOff>,
    /// [`GRACE`] (longer in tests, which run on a loaded machine).
    grace: Duration,
}

/// Until when scrapes skip the thread, in milliseconds from `since` (0: they do not).
#[derive(Debug)]
struct BackOff {
    since: Instant,
    until: AtomicU64,
    slow: Duration,
}

impl BackOff {
    fn new(slow: Duration) -> BackOff {
        BackOff { since: Instant::now(), until: AtomicU64::new(0), slow }
    }

    fn millis(&self) -> u64 {
        self.since.elapsed().as_millis() as u64
    }

    fn active(&self) -> bool {
        self.millis() < self.until.load(Ordering::Relaxed)
    }

    /// A connection the thread served in `took`: a slow one starts a back-off.
    fn served(&self, took: Duration) {
        if took > self.slow {
            tracing::info!(
                took_ms = took.as_millis() as u64,
                "a scrape waited for idle CPU: scrapes are served at normal priority for a while"
            );
            self.until.store(self.millis() + BACK_OFF.as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// A connection offered to the thread: whichever side takes the stream first serves it.
struct Handoff {
    stream: Arc<Mutex<Option<std::net::TcpStream>>>,
    taken: oneshot::Sender<()>,
    app: App,
}

/// What became of an offered connection.
#[derive(Debug)]
pub enum Offer {
    /// The scrape thread serves it (or, where it could not be handed on, it is closed).
    Taken,
    /// Not a scrape, or the thread did not take it in time: the caller serves it.
    Back(TcpStream),
}

/// Why the scrape thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeThreadError {
    #[error("no thread: {0}")]
    Spawn(std::io::Error),
    #[error("no runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the idle scheduling class was refused: {0}")]
    Idle(String),
    #[error("the thread ended before it started")]
    Ended,
}

impl ScrapeThread {
    /// Starts the thread, in the idle scheduling class.
    pub async fn start() -> Result<ScrapeThread, ScrapeThreadError> {
        Self::start_with(true, GRACE, SLOW).await
    }

    async fn start_with(idle: bool, grace: Duration, slow: Duration) -> Result<ScrapeThread, ScrapeThreadError> {
        let (tx, rx) = mpsc::channel(WAITING);
        let backing_off = Arc::new(BackOff::new(slow));
        let served = backing_off.clone();
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("tollgate-idle".into())
            .spawn(move || {
                let ready = (if idle { idle_class() } else { Ok(()) }).and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(ScrapeThreadError::Runtime)
                });
                match ready {
                    Ok(runtime) => {
                        let _ = ready_tx.send(Ok(()));
                        runtime.block_on(serve(rx, served));
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(ScrapeThreadError::Spawn)?;
        ready_rx.await.map_err(|_| ScrapeThreadError::Ended)??;
        Ok(ScrapeThread { tx, backing_off, grace })
    }

    /// Offers a new connection: a scrape goes to the thread, when it takes it within [`GRACE`].
    pub async fn offer(&self, stream: TcpStream, app: &App) -> Offer {
        if self.backing_off.active() || !asks_for_metrics(&stream).await {
            return Offer::Back(stream);
        }
        let Ok(std_stream) = stream.into_std() else {
            // Leaving the runtime failed; the stream is gone with it (its peer sees it closed).
            return Offer::Taken;
        };
        let slot = Arc::new(Mutex::new(Some(std_stream)));
        let (taken, was_taken) = oneshot::channel();
        let handoff = Handoff { stream: slot.clone(), taken, app: app.clone() };
        if self.tx.try_send(handoff).is_ok()
            && tokio::time::timeout(self.grace, was_taken).await.is_ok_and(|r| r.is_ok())
        {
            return Offer::Taken;
        }
        match take(&slot).map(TcpStream::from_std) {
            Some(Ok(stream)) => Offer::Back(stream),
            // Taken meanwhile, or (the error) it could not come back to this runtime.
            Some(Err(_)) | None => Offer::Taken,
        }
    }
}

/// The stream in a slot, once.
fn take(slot: &Mutex<Option<std::net::TcpStream>>) -> Option<std::net::TcpStream> {
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
}

/// Puts the calling thread in the idle scheduling class.
fn idle_class() -> Result<(), ScrapeThreadError> {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    thread_priority::unix::set_thread_priority_and_policy(
        thread_priority::unix::thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
    .map_err(|e| ScrapeThreadError::Idle(format!("{e:?}")))
}

/// The thread's loop: takes each connection still offered and serves it, one request.
async fn serve(mut rx: mpsc::Receiver<Handoff>, backing_off: Arc<BackOff>) {
    while let Some(h) = rx.recv().await {
        let Some(stream) = take(&h.stream) else { continue };
        let _ = h.taken.send(());
        let backing_off = backing_off.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let Ok(stream) = TcpStream::from_std(stream) else { return };
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service(h.app));
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "scrape connection ended with an error");
            }
            backing_off.served(started.elapsed());
        });
    }
}

/// An application as hyper calls it.
pub fn service(
    app: App,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
    })
}

/// Whether a connection's first request is `GET /metrics` (its first bytes, peeked).
async fn asks_for_metrics(stream: &TcpStream) -> bool {
    let mut head = [0u8; 13];
    match tokio::time::timeout(FIRST_BYTES, stream.peek(&mut head)).await {
        Ok(Ok(n)) => is_metrics(&head[..n]),
        _ => false,
    }
}

/// `GET /metrics` followed by the end of the path (a space, or a query).
fn is_metrics(head: &[u8]) -> bool {
    head.len() == 13 && head.starts_with(b"GET /metrics") && matches!(head[12], b' ' | b'?')
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_a_get_of_metrics_is_a_scrape() {
        assert!(is_metrics(b"GET /metrics HTTP/1.1"[..13].as_ref()));
        assert!(is_metrics(b"GET /metrics?"));
        for head in [&b"GET /metricsx"[..], b"GET /metrics", b"POST /metrics", b"GET /status H", b""] {
            assert!(!is_metrics(head), "{head:?}");
        }
    }

    /// A grace no loaded machine outlasts, for tests where the thread must take the scrape.
    const TAKES: Duration = Duration::from_secs(30);

    /// `/metrics` answers `m 1` (after `?slow`, 300 ms late).
    fn app() -> App {
        let metrics = |q: axum::extract::RawQuery| async move {
            if q.0.as_deref() == Some("slow") {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            "m 1\n"
        };
        App::new(axum::Router::new().route("/metrics", axum::routing::get(metrics)))
    }

    /// Connects to `addr`, sends `request`, and reads the answer to its end (the server closes).
    async fn ask(addr: std::net::SocketAddr, request: &str) -> String {
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        answer
    }

    /// A listener whose every connection is offered to `thread`, served here when it comes back.
    async fn listen(thread: ScrapeThread) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let thread = thread.clone();
                tokio::spawn(async move {
                    if let Offer::Back(stream) = thread.offer(stream, &app()).await {
                        let served = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service(app()))
                            .await;
                        drop(served);
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_scrape_is_served_by_the_thread_and_closed_after_its_answer() {
        // Not the idle class here: the test runs beside others on a busy machine.
        let addr = listen(ScrapeThread::start_with(false, TAKES, SLOW).await.expect("thread")).await;
        let answer = ask(addr, "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
        assert!(answer.ends_with("m 1\n"), "{answer}");
    }

    #[tokio::test]
    async fn a_scrape_the_thread_does_not_take_in_time_is_served_as_usual() {
        // A thread that never takes anything: its receiver is held and never read.
        let (tx, rx) = mpsc::channel(WAITING);
        let addr = listen(ScrapeThread { tx, backing_off: Arc::new(BackOff::new(SLOW)), grace: GRACE }).await;
        let started = std::time::Instant::now();
        let answer = ask(addr, "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("m 1\n"), "{answer}");
        assert!(started.elapsed() >= GRACE);
        drop(rx);
    }

    #[tokio::test]
    async fn other_requests_are_never_offered() {
        let (tx, mut rx) = mpsc::channel(WAITING);
        let addr = listen(ScrapeThread { tx, backing_off: Arc::new(BackOff::new(SLOW)), grace: GRACE }).await;
        let answer = ask(addr, "GET /status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn after_a_slow_scrape_scrapes_are_served_as_usual_for_a_while() {
        let thread = ScrapeThread::start_with(false, TAKES, Duration::from_millis(200)).await.expect("thread");
        let addr = listen(thread.clone()).await;
        let close = |a: &str| a.to_ascii_lowercase().contains("connection: close");
        let answer = ask(addr, "GET /metrics?slow HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(answer.ends_with("m 1\n") && close(&answer), "{answer}");
        // The thread notes how long it took once the connection is over.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.backing_off.active() {
            assert!(Instant::now() < deadline, "no back-off after a slow scrape");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Served here now: the connection stays open after the answer (the client closes it).
        let answer = ask(addr, "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        assert!(answer.ends_with("m 1\n"), "{answer}");
        let mut rx_probe = TcpStream::connect(addr).await.expect("connect");
        rx_probe.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("write");
        let mut buf = vec![0u8; 4096];
        let n = rx_probe.read(&mut buf).await.expect("read");
        let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200") && !head.contains("connection: close"), "{head}");
    }
}
