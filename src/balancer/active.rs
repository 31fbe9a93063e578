//! Active health checks: each node (and each data plane) probes the targets of the upstreams that
//! ask for it, on its own, as Kong's nodes do. A healthy target is probed every
//! `active.healthy.interval` seconds, an unhealthy one every `active.unhealthy.interval` (0: not in
//! that state); at most `active.concurrency` probes of one upstream run at once, and never two of
//! one target. Probes report into the same counters as passive checks, with the active limits.
//!
//! A probe is Kong's: `tcp` connects; `http` and `https` send
//! `GET <http_path> HTTP/1.0` with the configured headers and `Host` (the upstream's `host_header`
//! or the target's name), read the status line only (at most [`STATUS_LINE_MAX`] bytes, whatever
//! the body), and count a status in `healthy.http_statuses` as a success, one in
//! `unhealthy.http_statuses` or an unreadable answer as an HTTP failure. A connection that fails is
//! a TCP failure; anything slower than `active.timeout` a timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::{Balancer, CheckType, Limits, Report, StatusSet};

/// The most read of a probe's answer: enough for any status line.
pub const STATUS_LINE_MAX: usize = 1024;
/// How often the schedule is looked at.
const TICK: Duration = Duration::from_millis(100);

/// One address of a target, as the schedule knows it.
type Key = (Uuid, Box<str>, std::net::SocketAddr);

#[derive(Debug)]
struct Due {
    next: Instant,
    running: bool,
    seen: bool,
}

/// Runs the checks of the balancers `current` returns (the live configuration's) until `stop`.
pub async fn run<F>(current: F, mut stop: watch::Receiver<bool>)
where
    F: Fn() -> Vec<Arc<Balancer>> + Send + 'static,
{
    let mut schedule: HashMap<Key, Due> = HashMap::new();
    let mut running: HashMap<Uuid, u32> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Key, Duration)>();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            Some((key, wait)) = done_rx.recv() => {
                if let Some(n) = running.get_mut(&key.0) {
                    *n = n.saturating_sub(1);
                }
                if let Some(due) = schedule.get_mut(&key) {
                    due.running = false;
                    due.next = Instant::now() + wait;
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                schedule.values_mut().for_each(|d| d.seen = false);
                for balancer in current() {
                    let checks = &balancer.upstream.healthchecks.active;
                    if checks.healthy.interval == 0.0 && checks.unhealthy.interval == 0.0 {
                        continue;
                    }
                    let upstream = balancer.upstream.id;
                    for (i, peer) in balancer.peers.iter().enumerate() {
                        if peer.weight == 0 {
                            continue;
                        }
                        let key: Key = (upstream, peer.host.clone(), peer.address);
                        // The first probe comes one interval after the target appears, as in Kong.
                        let first = seconds(interval_for(&balancer, i));
                        let due = schedule.entry(key.clone()).or_insert(Due { next: now + first, running: false, seen: true });
                        due.seen = true;
                        let interval = interval_for(&balancer, i);
                        if due.running || due.next > now || interval == 0.0 {
                            if interval == 0.0 && !due.running {
                                // Not probed in this state: look again next tick.
                                due.next = now;
                            }
                            continue;
                        }
                        let busy = running.entry(upstream).or_insert(0);
                        if *busy >= checks.concurrency {
                            continue;
                        }
                        *busy += 1;
                        due.running = true;
                        let (balancer, done) = (balancer.clone(), done_tx.clone());
                        tokio::spawn(async move {
                            if let Some(report) = probe(&balancer, i).await {
                                balancer.report(i, report, &active_limits(&balancer), "active");
                            }
                            let _ = done.send((key, seconds(interval_for(&balancer, i))));
                        });
                    }
                }
                // Targets no longer configured are forgotten (a probe still running finds no entry).
                schedule.retain(|_, d| d.seen || d.running);
            }
        }
    }
}

/// The probing interval of peer `i` in its current health (seconds; 0: not probed).
fn interval_for(balancer: &Balancer, i: usize) -> f64 {
    let active = &balancer.upstream.healthchecks.active;
    let healthy = balancer.peers.get(i).is_none_or(|p| p.health.is_healthy());
    if healthy { active.healthy.interval } else { active.unhealthy.interval }
}

/// A validated number of seconds as a duration (0 to 65535; anything else, one second).
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(1))
}

fn active_limits(balancer: &Balancer) -> Limits {
    let active = &balancer.upstream.healthchecks.active;
    Limits {
        successes: active.healthy.successes,
        http_failures: active.unhealthy.http_failures,
        tcp_failures: active.unhealthy.tcp_failures,
        timeouts: active.unhealthy.timeouts,
    }
}

/// Probes peer `i`; `None` when the answer's status is in neither list.
pub async fn probe(balancer: &Balancer, i: usize) -> Option<Report> {
    let peer = balancer.peers.get(i)?;
    let active = &balancer.upstream.healthchecks.active;
    let limit = seconds(active.timeout);
    let deadline = Instant::now() + limit;
    let connected = tokio::time::timeout_at(deadline, TcpStream::connect(peer.address)).await;
    let stream = match connected {
        Err(_) => return Some(Report::Timeout),
        Ok(Err(_)) => return Some(Report::TcpFailure),
        Ok(Ok(stream)) => stream,
    };
    let host = balancer.upstream.host_header.clone().unwrap_or_else(|| peer.host.to_string());
    let status = match active.kind {
        CheckType::Tcp => return Some(Report::Success),
        CheckType::Https | CheckType::Grpcs => {
            let sni = active.https_sni.clone().unwrap_or_else(|| peer.host.to_string());
            let tls = crate::tls::client::UpstreamTls { verify: active.https_verify_certificate, ..Default::default() };
            let Ok(config) = tls.config() else { return Some(Report::TcpFailure) };
            let Ok(name) = tokio_rustls::rustls::pki_types::ServerName::try_from(sni) else {
                return Some(Report::TcpFailure);
            };
            let handshake = tokio_rustls::TlsConnector::from(config).connect(name, stream);
            match tokio::time::timeout_at(deadline, handshake).await {
                Err(_) => return Some(Report::Timeout),
                Ok(Err(_)) => return Some(Report::TcpFailure),
                Ok(Ok(tls)) => exchange(tls, active, &host, deadline).await,
            }
        }
        CheckType::Http | CheckType::Grpc => exchange(stream, active, &host, deadline).await,
    };
    let status = match status {
        Ok(status) => status,
        Err(report) => return Some(report),
    };
    if StatusSet::of(&active.healthy.http_statuses).contains(status) {
        Some(Report::Success)
    } else if status == 0 || StatusSet::of(&active.unhealthy.http_statuses).contains(status) {
        Some(Report::HttpFailure)
    } else {
        None
    }
}

/// Sends the probe request and reads the status (0 when the answer is not an HTTP status line).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    active: &super::ActiveChecks,
    host: &str,
    deadline: Instant,
) -> Result<u16, Report> {
    let mut request = format!("GET {} HTTP/1.0\r\n", active.http_path);
    for (name, values) in active.headers.iter().flatten() {
        for value in values {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    request.push_str(&format!("Host: {host}\r\n\r\n"));
    let io = async {
        stream.write_all(request.as_bytes()).await?;
        let mut line = Vec::with_capacity(128);
        let mut chunk = [0u8; 256];
        while !line.contains(&b'\n') && line.len() < STATUS_LINE_MAX {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            line.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        Ok::<_, std::io::Error>(line)
    };
    match tokio::time::timeout_at(deadline, io).await {
        Err(_) => Err(Report::Timeout),
        Ok(Err(_)) => Err(Report::TcpFailure),
        Ok(Ok(line)) => Ok(status_of(&line)),
    }
}

/// Kong's `^HTTP/\d+\.\d+\s+(\d+)`; 0 when the line is not that.
fn status_of(line: &[u8]) -> u16 {
    let Some(rest) = line.strip_prefix(b"HTTP/") else { return 0 };
    let mut parts = rest.splitn(2, |b| *b == b' ' || *b == b'\t');
    let version = parts.next().unwrap_or_default();
    let valid_version = version.split(|b| *b == b'.').count() == 2
        && version.split(|b| *b == b'.').all(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    let digits: Vec<u8> =
        parts.next().unwrap_or_default().trim_ascii_start().iter().copied().take_while(u8::is_ascii_digit).collect();
    match (valid_version, std::str::from_utf8(&digits).ok().and_then(|d| d.parse::<u16>().ok())) {
        (true, Some(status)) => status,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_as_kong_reads_them() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), 200);
        assert_eq!(status_of(b"HTTP/1.0  503\r\n"), 503);
        assert_eq!(status_of(b"HTTP/2 200\r\n"), 0);
        assert_eq!(status_of(b"garbage"), 0);
        assert_eq!(status_of(b""), 0);
        assert_eq!(status_of(b"HTTP/1.1 99999999 x"), 0);
    }

    /// A server on a free port that answers each connection with `answer` (`None`: accept and
    /// close at once; empty: accept and say nothing).
    async fn server(answer: Option<Vec<u8>>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let Some(answer) = answer else { return };
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request).await;
                    let _ = stream.write_all(&answer).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        port
    }

    async fn probed(port: u16) -> Option<Report> {
        let upstream = super::super::testing::upstream(serde_json::json!({"name": "u",
            "healthchecks": {"active": {"timeout": 0.5, "healthy": {"interval": 1}}}}));
        let balancer = super::super::testing::one_target(upstream, "127.0.0.1", port);
        probe(&balancer, 0).await
    }

    #[tokio::test]
    async fn every_bad_answer_is_a_failure_and_reading_it_stays_bounded() {
        let ok = server(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec())).await;
        assert_eq!(probed(ok).await, Some(Report::Success));
        let failing = server(Some(b"HTTP/1.1 500 Oops\r\n\r\n".to_vec())).await;
        assert_eq!(probed(failing).await, Some(Report::HttpFailure));
        let garbage = server(Some(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec())).await;
        assert_eq!(probed(garbage).await, Some(Report::HttpFailure));
        // 10 MB without a line end: only the first KiB is read, and it is no status line.
        let flood = server(Some(vec![b'x'; 10 * 1024 * 1024])).await;
        assert_eq!(probed(flood).await, Some(Report::HttpFailure));
        // A status line before 10 MB of body: read no further than the line.
        let mut big = b"HTTP/1.1 200 OK\r\ncontent-length: 10485760\r\n\r\n".to_vec();
        big.resize(big.len() + 10 * 1024 * 1024, b'y');
        let big = server(Some(big)).await;
        assert_eq!(probed(big).await, Some(Report::Success));
        // Accepted and closed at once: no status (unreadable); accepted and silent: cut by the timeout.
        let reset = server(None).await;
        assert!(matches!(probed(reset).await, Some(Report::HttpFailure | Report::TcpFailure)));
        let silent = server(Some(Vec::new())).await;
        let started = std::time::Instant::now();
        assert_eq!(probed(silent).await, Some(Report::Timeout));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Nothing listening.
        let closed =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
        assert_eq!(probed(closed).await, Some(Report::TcpFailure));
        // A status in neither list counts for nothing.
        let teapot = server(Some(b"HTTP/1.1 418 Teapot\r\n\r\n".to_vec())).await;
        assert_eq!(probed(teapot).await, None);
    }
}
