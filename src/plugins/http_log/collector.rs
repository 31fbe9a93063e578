//! The connection to a log collector: HTTP/1.1 over TCP or TLS (not verified, as Kong's http-log
//! does not verify), kept open for `keepalive` between sends.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::Config;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("failed request to {0}: {1}")]
    Connect(String, String),
    #[error("request to {0} returned status code {1} and body {2}")]
    Status(String, u16, String),
    #[error("failed request to {0}: timeout")]
    Timeout(String),
}

pub struct Collector {
    https: bool,
    host: String,
    port: u16,
    /// `host:port`, for messages and `Host`.
    authority: String,
    path: String,
    method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    keepalive: Duration,
    conn: Option<(SendRequest<Full<Bytes>>, Instant)>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("authority", &self.authority).field("path", &self.path).finish()
    }
}

impl Collector {
    pub fn new(config: &Config) -> Result<Collector, String> {
        let url = url::Url::parse(&config.http_endpoint).map_err(|e| e.to_string())?;
        let https = url.scheme() == "https";
        let host = url.host_str().ok_or("missing host in url")?.trim_matches(['[', ']']).to_string();
        let port = url.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
        let authority = match url.host() {
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        // Kong sends the URL's path only.
        let path = if url.path().is_empty() { "/".to_string() } else { url.path().to_string() };
        let mut headers = vec![
            (http::header::HOST, HeaderValue::from_str(&authority).map_err(|e| e.to_string())?),
            (http::header::CONTENT_TYPE, HeaderValue::from_str(&config.content_type).map_err(|e| e.to_string())?),
        ];
        if !url.username().is_empty() || url.password().is_some() {
            let user = percent(url.username());
            let pass = url.password().map(percent).unwrap_or_default();
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            let v = HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| e.to_string())?;
            headers.push((http::header::AUTHORIZATION, v));
        }
        for (name, value) in config.headers.iter().flatten() {
            let (Ok(name), Some(Ok(value))) =
                (HeaderName::from_bytes(name.as_bytes()), value.as_str().map(HeaderValue::from_str))
            else {
                continue;
            };
            // The plugin's own headers win, as in Kong.
            if !headers.iter().any(|(n, _)| *n == name) {
                headers.push((name, value));
            }
        }
        Ok(Collector {
            https,
            host,
            port,
            authority,
            path,
            method: Method::from_bytes(config.method.as_bytes()).map_err(|e| e.to_string())?,
            headers,
            timeout: Duration::from_millis(config.timeout.max(1.0) as u64),
            keepalive: Duration::from_millis(config.keepalive.max(0.0) as u64),
            conn: None,
        })
    }

    /// Sends one body; `Ok` on a status below 300, as Kong.
    pub async fn send(&mut self, body: Bytes) -> Result<(), SendError> {
        let authority = self.authority.clone();
        match tokio::time::timeout(self.timeout, self.try_send(body)).await {
            Ok(result) => result,
            Err(_) => {
                self.conn = None;
                Err(SendError::Timeout(authority))
            }
        }
    }

    async fn try_send(&mut self, body: Bytes) -> Result<(), SendError> {
        let fail = |e: &dyn std::fmt::Display| SendError::Connect(self.authority.clone(), e.to_string());
        let reusable =
            self.conn.take().filter(|(c, last)| last.elapsed() < self.keepalive && !c.is_closed() && c.is_ready());
        let mut sender = match reusable {
            Some((c, _)) => c,
            None => self.connect().await.map_err(|e| fail(&e))?,
        };
        let mut req = Request::builder().method(self.method.clone()).uri(&self.path);
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        let req = req.header(http::header::CONTENT_LENGTH, body.len()).body(Full::new(body)).map_err(|e| fail(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| fail(&e))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| fail(&e))?.to_bytes();
        self.conn = Some((sender, Instant::now()));
        if status < 300 {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&body[..body.len().min(1024)]).into_owned();
            Err(SendError::Status(self.authority.clone(), status, text))
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        if self.https {
            let config = crate::tls::client::UpstreamTls::default().config()?;
            let name =
                tokio_rustls::rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
            handshake(TokioIo::new(tls)).await
        } else {
            handshake(TokioIo::new(tcp)).await
        }
    }
}

async fn handshake<T>(io: TokioIo<T>) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// URL user info is percent-encoded; the Basic credentials are not.
fn percent(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
