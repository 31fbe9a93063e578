//! Load balancing over an upstream's targets: the typed configuration of upstreams and targets as
//! the balancer reads it (parsed once from stored rows, after the model has validated them).
//! Selection and health checking build on these types.

use serde::Deserialize;
use uuid::Uuid;

/// How a target is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    RoundRobin,
    ConsistentHashing,
    LeastConnections,
    Latency,
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    None,
    Consumer,
    Ip,
    Header,
    Cookie,
    Path,
    QueryArg,
    UriCapture,
}

/// An upstream's active and passive health checks (every field has Kong's default once stored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Healthchecks {
    pub active: ActiveChecks,
    pub passive: PassiveChecks,
    /// Percentage of weight that must be available for the balancer to be healthy.
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Tcp,
    Http,
    Https,
    Grpc,
    Grpcs,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ActiveChecks {
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// Seconds.
    pub timeout: f64,
    pub concurrency: u32,
    pub http_path: String,
    pub https_sni: Option<String>,
    pub https_verify_certificate: bool,
    pub headers: Option<std::collections::BTreeMap<String, Vec<String>>>,
    pub healthy: ActiveHealthy,
    pub unhealthy: ActiveUnhealthy,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ActiveHealthy {
    /// Seconds between probes of a healthy target; 0: none.
    pub interval: f64,
    pub http_statuses: Vec<u16>,
    pub successes: u8,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ActiveUnhealthy {
    pub interval: f64,
    pub http_statuses: Vec<u16>,
    pub tcp_failures: u8,
    pub timeouts: u8,
    pub http_failures: u8,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PassiveChecks {
    #[serde(rename = "type")]
    pub kind: CheckType,
    pub healthy: PassiveHealthy,
    pub unhealthy: PassiveUnhealthy,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PassiveHealthy {
    pub http_statuses: Vec<u16>,
    pub successes: u8,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PassiveUnhealthy {
    pub http_statuses: Vec<u16>,
    pub tcp_failures: u8,
    pub timeouts: u8,
    pub http_failures: u8,
}

impl Healthchecks {
    /// Kong's `is_upstream_using_healthcheck`: probing or passive failure counting is on.
    pub fn enabled(&self) -> bool {
        let u = &self.passive.unhealthy;
        self.active.healthy.interval != 0.0
            || self.active.unhealthy.interval != 0.0
            || u.tcp_failures != 0
            || u.timeouts != 0
            || u.http_failures != 0
    }
}

/// An upstream, as stored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UpstreamConfig {
    pub id: Uuid,
    pub name: String,
    pub algorithm: Algorithm,
    pub hash_on: HashOn,
    pub hash_fallback: HashOn,
    pub hash_on_header: Option<String>,
    pub hash_fallback_header: Option<String>,
    pub hash_on_cookie: Option<String>,
    pub hash_on_cookie_path: String,
    pub hash_on_query_arg: Option<String>,
    pub hash_fallback_query_arg: Option<String>,
    pub hash_on_uri_capture: Option<String>,
    pub hash_fallback_uri_capture: Option<String>,
    pub slots: u32,
    pub healthchecks: Healthchecks,
    pub host_header: Option<String>,
    pub use_srv_name: bool,
}

/// A target, as stored: `host:port` (the port always written) and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    pub id: Uuid,
    pub upstream: Uuid,
    /// The name or address, without brackets.
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// Why a stored target cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target '{0}' is not host:port")]
pub struct BadTarget(pub String);

impl TargetConfig {
    /// Splits a stored `host:port` (`[v6]:port` for IPv6).
    pub fn new(id: Uuid, upstream: Uuid, target: &str, weight: u32) -> Result<TargetConfig, BadTarget> {
        let bad = || BadTarget(target.to_string());
        let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || (host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err()) {
            return Err(bad());
        }
        Ok(TargetConfig { id, upstream, host: host.to_string(), port, weight })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_host_and_port() {
        let id = Uuid::nil();
        let t = TargetConfig::new(id, id, "[::1]:8000", 5).expect("v6");
        assert_eq!((t.host.as_str(), t.port), ("::1", 8000));
        let t = TargetConfig::new(id, id, "svc.test:81", 5).expect("name");
        assert_eq!((t.host.as_str(), t.port), ("svc.test", 81));
        assert!(TargetConfig::new(id, id, "svc.test", 5).is_err());
        assert!(TargetConfig::new(id, id, "a:b:80", 5).is_err());
    }
}
