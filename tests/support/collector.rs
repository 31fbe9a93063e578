//! A log collector for http-log tests: records every request it receives (headers and body) and
//! answers 200, or 500 for its first `fail_first` requests; on its own runtime thread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// One request the collector received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

pub struct Collector {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Collector {
    /// On a free port.
    pub fn start(fail_first: usize) -> Collector {
        Collector::start_on(std::net::TcpListener::bind("127.0.0.1:0").expect("bind collector"), fail_first)
    }

    pub fn start_on(listener: std::net::TcpListener, fail_first: usize) -> Collector {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = received.clone();
        let calls = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let serve = async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        let (seen, calls) = (seen.clone(), calls.clone());
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                                let (seen, calls) = (seen.clone(), calls.clone());
                                async move {
                                    let (parts, body) = req.into_parts();
                                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                    let n = calls.fetch_add(1, Ordering::SeqCst);
                                    seen.lock().expect("lock").push(Received {
                                        method: parts.method.to_string(),
                                        path: parts.uri.path().to_string(),
                                        headers: parts.headers,
                                        body,
                                    });
                                    let status = if n < fail_first { 500 } else { 200 };
                                    let mut r = Response::new(Full::new(Bytes::from_static(b"collector says")));
                                    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                                    Ok::<_, Infallible>(r)
                                }
                            });
                            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        });
                    }
                };
                tokio::select! {
                    () = serve => {}
                    _ = stopped => {}
                }
            });
        });
        Collector { addr, received, stop: Some(stop) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for what was received, or `within` passed; returns what was received.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if done(&got) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
