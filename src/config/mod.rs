//! Settings: built-in defaults, then a `tollgate.conf` file (kong.conf syntax), then `TOLLGATE_<KEY>`
//! environment overrides, turned into one typed [`Settings`]. Validation collects every error before
//! reporting, so `tollgate check` shows all of them at once. Nothing here opens sockets or files other
//! than the configuration file itself.

mod keys;
mod listen;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use keys::{KEYS, KeyDef};
pub use listen::Listen;

use crate::tls::{self, TlsPolicy};

/// A certificate chain and its private key, in PEM, checked to belong together. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PemPair(<certificate and key>)")
    }
}

/// `cluster_mtls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMtls {
    /// Both ends hold the same certificate.
    Shared,
    /// Certificates signed by `cluster_ca_cert`.
    Pki,
}

/// The TLS side of the cluster link.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub mtls: ClusterMtls,
    /// `cluster_cert` and `cluster_cert_key` (required in hybrid mode).
    pub pair: Option<PemPair>,
    /// `cluster_ca_cert`, PEM.
    pub ca: Option<Vec<u8>>,
    /// `cluster_server_name`.
    pub server_name: Option<String>,
}

/// Which store backs the Admin API and the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Sqlite,
    Postgres,
    /// DB-less: the configuration is loaded whole (`declarative_config`, `POST /config`) into an
    /// embedded store of the node's own, and the Admin API does not write entities.
    Off,
}

impl Database {
    pub fn as_str(self) -> &'static str {
        match self {
            Database::Sqlite => "sqlite",
            Database::Postgres => "postgres",
            Database::Off => "off",
        }
    }
}

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// Proxy and Admin API on one store.
    Traditional,
    /// Admin API, `/v1` and `/v2` for several control planes; no proxy; admin tokens required.
    ControlPlane,
    /// Proxy only, configured by its control plane over the cluster link.
    DataPlane,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Traditional => "traditional",
            NodeRole::ControlPlane => "control_plane",
            NodeRole::DataPlane => "data_plane",
        }
    }
}

/// Connection settings for `database = postgres`.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    pub timeout: Duration,
    pub max_connections: u32,
}

/// Kong's log levels, mapped onto `tracing` levels when the subscriber is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Notice,
    Warn,
    Error,
    Crit,
    Alert,
    Emerg,
}

impl LogLevel {
    pub fn tracing_filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info | LogLevel::Notice => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error | LogLevel::Crit | LogLevel::Alert | LogLevel::Emerg => "error",
        }
    }
}

/// An IP network from `trusted_ips` (`10.0.0.0/8`, `::1`, `0.0.0.0/0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn parse(s: &str) -> Option<IpNet> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The typed configuration every other module reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub prefix: PathBuf,
    pub role: NodeRole,
    /// Whether the Admin API requires a token (always on a control plane).
    pub admin_auth: bool,
    pub cluster_listen: std::net::SocketAddr,
    /// `host:port` of the control plane a data plane joins, and the token it presents.
    pub cluster_control_plane: String,
    pub cluster_token: Option<String>,
    pub cluster_max_payload: usize,
    pub realm_cache_size: u64,
    /// The status API (`None` when `off`).
    pub status_listen: Option<std::net::SocketAddr>,
    pub proxy_listen: Vec<Listen>,
    pub admin_listen: Vec<Listen>,
    /// The admin page's listeners (`admin_gui_listen`; empty when `off`).
    pub admin_gui_listen: Vec<Listen>,
    /// The origins (`scheme://host[:port]`) of `admin_gui_url`, which the Admin API allows in
    /// browsers; empty: any origin.
    pub admin_gui_origins: Vec<String>,
    /// `admin_gui_api_url`: where the page's browser reaches the Admin API.
    pub admin_gui_api_url: Option<String>,
    /// `ssl_cert`/`ssl_cert_key` (empty: the generated default pair).
    pub ssl_certs: Vec<PemPair>,
    /// `admin_ssl_cert`/`admin_ssl_cert_key` (empty: the generated default pair).
    pub admin_ssl_certs: Vec<PemPair>,
    /// `ssl_protocols`, `ssl_cipher_suite`, `ssl_ciphers`.
    pub tls_policy: TlsPolicy,
    /// Protocols asked for that are not offered, logged at start.
    pub tls_warnings: Vec<String>,
    pub cluster_tls: ClusterTls,
    pub database: Database,
    pub pg: PgSettings,
    pub log_level: LogLevel,
    pub worker_threads: usize,
    pub db_update_frequency: Duration,
    pub trusted_ips: Vec<IpNet>,
    pub upstream_keepalive_pool_size: usize,
    pub upstream_keepalive_idle_timeout: Duration,
    /// `dns_*`.
    pub dns: crate::dns::DnsSettings,
    /// With `database = off`: the file loaded at start, or the configuration itself.
    pub declarative_config: Option<PathBuf>,
    pub declarative_config_string: Option<String>,
    /// `proxy_access_log`: the file, or `None` when `off`.
    pub proxy_access_log: Option<PathBuf>,
    pub prometheus_max_series: usize,
    /// Every key with its effective value, for `GET /` (secrets redacted there).
    pub raw: BTreeMap<&'static str, String>,
}

impl Settings {
    pub fn sqlite_path(&self) -> PathBuf {
        match self.database {
            Database::Off => self.prefix.join("dbless.db"),
            _ => self.prefix.join("tollgate.db"),
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_ips.iter().any(|net| net.contains(ip))
    }
}

/// Where a value came from, so an error can point at it.
#[derive(Debug, Clone)]
enum Origin {
    Default,
    File(usize),
    Env(String),
}

/// Every problem found in a configuration, in the order found.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Loads settings from an optional file and the process environment.
pub fn load(file: Option<&Path>) -> Result<Settings, ConfigErrors> {
    let text = match file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            Err(e) => {
                return Err(ConfigErrors(vec![format!("cannot read configuration file {}: {e}", path.display())]));
            }
        },
        None => None,
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    from_sources(text.as_deref(), &env)
}

/// Merges defaults, file text and environment pairs, then validates every key.
pub fn from_sources(file: Option<&str>, env: &[(String, String)]) -> Result<Settings, ConfigErrors> {
    let mut errors = Vec::new();
    let mut values: BTreeMap<&'static str, (String, Origin)> =
        KEYS.iter().map(|k| (k.name, (k.default.to_string(), Origin::Default))).collect();

    if let Some(text) = file {
        for (n, line) in text.lines().enumerate() {
            let line = strip_comment(line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                errors.push(format!("line {}: expected 'key = value', got '{line}'", n + 1));
                continue;
            };
            let key = key.trim().to_ascii_lowercase();
            match KEYS.iter().find(|k| k.name == key) {
                Some(def) => {
                    values.insert(def.name, (value.trim().to_string(), Origin::File(n + 1)));
                }
                None => errors.push(format!("line {}: unknown configuration key '{key}'", n + 1)),
            }
        }
    }

    for (name, value) in env {
        let Some(key) = name.strip_prefix("TOLLGATE_") else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        match KEYS.iter().find(|k| k.name == key) {
            Some(def) => {
                values.insert(def.name, (value.trim().to_string(), Origin::Env(name.clone())));
            }
            None => errors.push(format!("{name}: unknown configuration key '{key}'")),
        }
    }

    let mut check = Checker { values: &values, errors: &mut errors };
    let prefix = PathBuf::from(check.string("prefix"));
    let role = check.one_of(
        "role",
        &[
            ("traditional", NodeRole::Traditional),
            ("control_plane", NodeRole::ControlPlane),
            ("data_plane", NodeRole::DataPlane),
        ],
    );
    let cluster_control_plane = check.string("cluster_control_plane");
    if cluster_control_plane.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
        check.fail("cluster_control_plane", format!("expected host:port, got '{cluster_control_plane}'"));
    }
    let cluster_token = check.optional("cluster_token");
    let cluster_max_payload = check.int("cluster_max_payload", 1024, 1 << 31).unwrap_or(16 << 20);
    let realm_cache_size = check.int("realm_cache_size", 1, 100_000_000).unwrap_or(100_000);
    if role == Some(NodeRole::DataPlane) && cluster_token.is_none() {
        let msg = "must be set when role = data_plane (mint one with POST /v2/control-planes/{id}/data-plane-tokens)";
        check.fail("cluster_token", msg.into());
    }
    let status_listen = if check.raw("status_listen").0.eq_ignore_ascii_case("off") {
        None
    } else {
        check.socket_addr("status_listen")
    };
    let admin_auth = check.one_of("admin_auth", &[("on", true), ("off", false)]).unwrap_or(false);
    let cluster_listen = check.socket_addr("cluster_listen");
    let proxy_listen = check.listens("proxy_listen", false);
    let admin_listen = check.listens("admin_listen", true);
    if admin_listen.iter().any(|l| l.proxy_protocol) {
        check.fail("admin_listen", "proxy_protocol is offered on proxy_listen only".into());
    }
    let admin_gui_listen = check.listens("admin_gui_listen", true);
    if admin_gui_listen.iter().any(|l| l.proxy_protocol) {
        check.fail("admin_gui_listen", "proxy_protocol is offered on proxy_listen only".into());
    }
    let admin_gui_origins = check.gui_origins();
    let admin_gui_api_url = check.gui_api_url();
    let ssl_certs = check.pem_pairs("ssl_cert", "ssl_cert_key");
    let admin_ssl_certs = check.pem_pairs("admin_ssl_cert", "admin_ssl_cert_key");
    let (tls_policy, tls_warnings) = match TlsPolicy::parse(
        check.raw("ssl_protocols").0,
        check.raw("ssl_cipher_suite").0,
        check.raw("ssl_ciphers").0,
    ) {
        Ok(p) => p,
        Err(e) => {
            let key = e.split(':').next().unwrap_or("ssl_protocols").to_string();
            check.fail(&key, e.split_once(": ").map_or(e.clone(), |(_, m)| m.to_string()));
            (TlsPolicy::default(), Vec::new())
        }
    };
    let cluster_tls = check.cluster_tls(role);
    let database = check
        .one_of("database", &[("sqlite", Database::Sqlite), ("postgres", Database::Postgres), ("off", Database::Off)]);
    let declarative_config = check.optional("declarative_config").map(PathBuf::from);
    let declarative_config_string = check.optional("declarative_config_string");
    let proxy_access_log = match check.raw("proxy_access_log").0.trim() {
        "" | "off" => None,
        path if Path::new(path).is_absolute() => Some(PathBuf::from(path)),
        path => Some(prefix.join(path)),
    };
    let prometheus_max_series = check.int::<usize>("prometheus_max_series", 0, 100_000_000).unwrap_or(200_000);
    let pg = PgSettings {
        host: check.string("pg_host"),
        port: check.int("pg_port", 1, 65535).unwrap_or(5432),
        user: check.string("pg_user"),
        password: check.optional("pg_password"),
        database: check.string("pg_database"),
        timeout: Duration::from_millis(check.int("pg_timeout", 1, 600_000).unwrap_or(5000)),
        max_connections: check.int("pg_max_connections", 1, 1000).unwrap_or(10),
    };
    let log_level = check.one_of(
        "log_level",
        &[
            ("debug", LogLevel::Debug),
            ("info", LogLevel::Info),
            ("notice", LogLevel::Notice),
            ("warn", LogLevel::Warn),
            ("error", LogLevel::Error),
            ("crit", LogLevel::Crit),
            ("alert", LogLevel::Alert),
            ("emerg", LogLevel::Emerg),
        ],
    );
    let worker_threads = check.worker_threads();
    let db_update_frequency = check.seconds("db_update_frequency");
    let trusted_ips = check.trusted_ips();
    let upstream_keepalive_pool_size = check.int("upstream_keepalive_pool_size", 0, 1_000_000).unwrap_or(512);
    let upstream_keepalive_idle_timeout = check.seconds("upstream_keepalive_idle_timeout");
    let dns = check.dns();

    if pg.host.is_empty() && database == Some(Database::Postgres) {
        check.fail("pg_host", "must be set when database = postgres".into());
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let (Some(database), Some(log_level), Some(role), Some(cluster_listen)) =
        (database, log_level, role, cluster_listen)
    else {
        return Err(ConfigErrors(vec!["invalid configuration".into()]));
    };
    Ok(Settings {
        prefix,
        admin_auth: admin_auth || role == NodeRole::ControlPlane,
        role,
        cluster_listen,
        cluster_control_plane,
        cluster_token,
        cluster_max_payload,
        realm_cache_size,
        status_listen,
        proxy_listen,
        admin_listen,
        admin_gui_listen,
        admin_gui_origins,
        admin_gui_api_url,
        ssl_certs,
        admin_ssl_certs,
        tls_policy,
        tls_warnings,
        cluster_tls,
        database,
        pg,
        log_level,
        worker_threads,
        db_update_frequency,
        trusted_ips,
        upstream_keepalive_pool_size,
        upstream_keepalive_idle_timeout,
        dns,
        declarative_config,
        declarative_config_string,
        proxy_access_log,
        prometheus_max_series,
        raw: values.into_iter().map(|(k, (v, _))| (k, v)).collect(),
    })
}

/// A comma list; inline PEM values (which hold no commas) pass whole.
fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
}

/// A setting value as an error may show it: a path or a short value, never a PEM body.
fn shown(value: &str) -> String {
    if value.contains("-----BEGIN") || value.len() > 120 { "<inline value>".into() } else { value.to_string() }
}

/// Drops a `#` comment; `\#` stays as a literal `#` (kong.conf rule).
fn strip_comment(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'#') => {
                out.push('#');
                chars.next();
            }
            '#' => break,
            c => out.push(c),
        }
    }
    out
}

struct Checker<'a> {
    values: &'a BTreeMap<&'static str, (String, Origin)>,
    errors: &'a mut Vec<String>,
}

impl Checker<'_> {
    fn raw(&self, key: &'static str) -> (&str, &Origin) {
        match self.values.get(key) {
            Some((v, o)) => (v.as_str(), o),
            None => ("", &Origin::Default),
        }
    }

    fn fail(&mut self, key: &str, msg: String) {
        let at = match self.values.get(key).map(|(_, o)| o).unwrap_or(&Origin::Default) {
            Origin::Default => String::new(),
            Origin::File(line) => format!(" (line {line})"),
            Origin::Env(var) => format!(" (from {var})"),
        };
        self.errors.push(format!("{key}{at}: {msg}"));
    }

    fn string(&mut self, key: &'static str) -> String {
        self.raw(key).0.to_string()
    }

    fn optional(&mut self, key: &'static str) -> Option<String> {
        let v = self.raw(key).0;
        (!v.is_empty()).then(|| v.to_string())
    }

    fn int<T: TryFrom<u64>>(&mut self, key: &'static str, min: u64, max: u64) -> Option<T> {
        let v = self.raw(key).0.to_string();
        match v.parse::<u64>().ok().filter(|n| (min..=max).contains(n)).and_then(|n| T::try_from(n).ok()) {
            Some(n) => Some(n),
            _ => {
                self.fail(key, format!("expected an integer between {min} and {max}, got '{v}'"));
                None
            }
        }
    }

    fn seconds(&mut self, key: &'static str) -> Duration {
        let v = self.raw(key).0.to_string();
        match v.parse::<f64>() {
            Ok(n) if n > 0.0 && n <= 86_400.0 => Duration::try_from_secs_f64(n).unwrap_or(Duration::from_secs(1)),
            _ => {
                self.fail(key, format!("expected a number of seconds between 0 and 86400, got '{v}'"));
                Duration::from_secs(1)
            }
        }
    }

    /// A number of seconds from 0 to 86400.
    fn ttl(&mut self, key: &'static str) -> Duration {
        let v = self.raw(key).0.to_string();
        match v.parse::<f64>() {
            Ok(n) if (0.0..=86_400.0).contains(&n) => Duration::try_from_secs_f64(n).unwrap_or_default(),
            _ => {
                self.fail(key, format!("expected a number of seconds between 0 and 86400, got '{v}'"));
                Duration::ZERO
            }
        }
    }

    fn dns(&mut self) -> crate::dns::DnsSettings {
        use crate::dns::Order;
        let mut resolvers = Vec::new();
        for part in split_list(self.raw("dns_resolver").0) {
            let parsed = part
                .parse::<std::net::SocketAddr>()
                .ok()
                .or_else(|| part.parse::<std::net::IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, 53)));
            match parsed {
                Some(addr) => resolvers.push(addr),
                None => self.fail("dns_resolver", format!("expected ip[:port], got '{part}'")),
            }
        }
        let mut order = Vec::new();
        for part in split_list(self.raw("dns_order").0) {
            match Order::parse(&part) {
                Some(o) => order.push(o),
                None => self.fail("dns_order", format!("invalid entry '{part}': expected LAST, SRV, A, AAAA or CNAME")),
            }
        }
        if !order.is_empty() && order.iter().all(|o| *o == Order::Last) {
            self.fail("dns_order", "must name at least one record type".into());
        }
        let valid_ttl = match self.raw("dns_valid_ttl").0 {
            "" => None,
            _ => Some(self.ttl("dns_valid_ttl")),
        };
        crate::dns::DnsSettings {
            resolvers,
            hostsfile: std::path::PathBuf::from(self.string("dns_hostsfile")),
            order,
            valid_ttl,
            stale_ttl: self.ttl("dns_stale_ttl"),
            not_found_ttl: self.ttl("dns_not_found_ttl"),
            error_ttl: self.ttl("dns_error_ttl"),
        }
    }

    fn one_of<T: Copy>(&mut self, key: &'static str, options: &[(&str, T)]) -> Option<T> {
        let v = self.raw(key).0.to_ascii_lowercase();
        match options.iter().find(|(name, _)| *name == v) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.fail(key, format!("expected one of: {}, got '{v}'", names.join(", ")));
                None
            }
        }
    }

    fn listens(&mut self, key: &'static str, allow_off: bool) -> Vec<Listen> {
        let v = self.raw(key).0.to_string();
        if allow_off && v.eq_ignore_ascii_case("off") {
            return Vec::new();
        }
        let mut out = Vec::new();
        let parts: Vec<&str> = v.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
        for part in &parts {
            match Listen::parse(part) {
                Ok(l) => out.push(l),
                Err(e) => self.fail(key, e),
            }
        }
        if parts.is_empty() {
            self.fail(key, "expected at least one address".into());
        }
        out
    }

    /// A comma list of certificates and the list of their keys, with Kong's messages.
    fn pem_pairs(&mut self, cert_key: &'static str, key_key: &'static str) -> Vec<PemPair> {
        let certs = split_list(self.raw(cert_key).0);
        let keys = split_list(self.raw(key_key).0);
        match (certs.is_empty(), keys.is_empty()) {
            (true, true) => return Vec::new(),
            (false, true) => {
                self.fail(key_key, format!("{key_key} must be specified"));
                return Vec::new();
            }
            (true, false) => {
                self.fail(cert_key, format!("{cert_key} must be specified"));
                return Vec::new();
            }
            _ if certs.len() != keys.len() => {
                let msg = format!(
                    "{cert_key} was specified {} times while {key_key} was specified {} times",
                    certs.len(),
                    keys.len()
                );
                self.fail(cert_key, msg);
                return Vec::new();
            }
            _ => {}
        }
        let mut out = Vec::new();
        for (c, k) in certs.iter().zip(&keys) {
            match self.pem_pair(cert_key, key_key, c, k) {
                Some(pair) => out.push(pair),
                None => continue,
            }
        }
        out
    }

    fn pem_pair(&mut self, cert_key: &'static str, key_key: &'static str, cert: &str, key: &str) -> Option<PemPair> {
        let Some(cert_pem) = tls::material::read_setting(cert) else {
            self.fail(cert_key, format!("failed loading certificate from {}", shown(cert)));
            return None;
        };
        let Some(key_pem) = tls::material::read_setting(key) else {
            self.fail(key_key, format!("failed loading key from {}", shown(key)));
            return None;
        };
        match tls::material::certified_key(&cert_pem, &key_pem) {
            Ok(_) => Some(PemPair { cert: cert_pem, key: key_pem }),
            Err(e @ tls::MaterialError::Key(_)) => {
                self.fail(key_key, format!("failed loading key from {}: {e}", shown(key)));
                None
            }
            Err(e) => {
                self.fail(cert_key, format!("failed loading certificate from {}: {e}", shown(cert)));
                None
            }
        }
    }

    fn cluster_tls(&mut self, role: Option<NodeRole>) -> ClusterTls {
        let mtls = self.one_of("cluster_mtls", &[("shared", ClusterMtls::Shared), ("pki", ClusterMtls::Pki)]);
        let hybrid = matches!(role, Some(NodeRole::ControlPlane | NodeRole::DataPlane));
        let cert = self.raw("cluster_cert").0.trim().to_string();
        let key = self.raw("cluster_cert_key").0.trim().to_string();
        let pair = if cert.is_empty() || key.is_empty() {
            if hybrid {
                self.fail("cluster_cert", "cluster certificate and key must be provided to use Hybrid mode".into());
            }
            None
        } else {
            self.pem_pair("cluster_cert", "cluster_cert_key", &cert, &key)
        };
        let ca_value = self.raw("cluster_ca_cert").0.trim().to_string();
        let ca = if ca_value.is_empty() {
            if hybrid && mtls == Some(ClusterMtls::Pki) && role == Some(NodeRole::ControlPlane) {
                self.fail("cluster_ca_cert", "cluster_ca_cert must be specified when cluster_mtls = \"pki\"".into());
            }
            None
        } else {
            match tls::material::read_setting(&ca_value).filter(|pem| tls::material::certificates(pem).is_ok()) {
                Some(pem) => Some(pem),
                None => {
                    self.fail("cluster_ca_cert", format!("failed loading certificate from {}", shown(&ca_value)));
                    None
                }
            }
        };
        let server_name = self.optional("cluster_server_name");
        ClusterTls { mtls: mtls.unwrap_or(ClusterMtls::Shared), pair, ca, server_name }
    }

    fn socket_addr(&mut self, key: &'static str) -> Option<std::net::SocketAddr> {
        let v = self.raw(key).0.to_string();
        match v.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.fail(key, format!("expected address:port, got '{v}'"));
                None
            }
        }
    }

    /// `admin_gui_url`: each URL's origin (Kong keeps `scheme://authority`, dropping any path).
    fn gui_origins(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for part in split_list(self.raw("admin_gui_url").0) {
            match url::Url::parse(&part) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    out.push(u.origin().ascii_serialization());
                }
                _ => self.fail("admin_gui_url", format!("expected http(s)://host[:port][/path], got '{part}'")),
            }
        }
        out
    }

    /// `admin_gui_api_url`: an `http(s)://` URL, or `host[:port][/path]` (the page's scheme).
    fn gui_api_url(&mut self) -> Option<String> {
        let v = self.optional("admin_gui_api_url")?;
        let full = if v.contains("://") { v.clone() } else { format!("http://{}", v.trim_start_matches("//")) };
        match url::Url::parse(&full) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none() => Some(v),
            _ => {
                self.fail("admin_gui_api_url", format!("expected [http(s)://]host[:port][/path], got '{v}'"));
                None
            }
        }
    }

    fn worker_threads(&mut self) -> usize {
        let v = self.raw("worker_threads").0.to_string();
        if v == "auto" {
            return std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        }
        match v.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => n,
            _ => {
                self.fail("worker_threads", format!("expected 'auto' or an integer between 1 and 1024, got '{v}'"));
                1
            }
        }
    }

    fn trusted_ips(&mut self) -> Vec<IpNet> {
        let v = self.raw("trusted_ips").0.to_string();
        let mut out = Vec::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "unix:" {
                continue;
            }
            match IpNet::parse(part) {
                Some(net) => out.push(net),
                None => self.fail("trusted_ips", format!("invalid IP or CIDR range '{part}'")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let s = from_sources(None, &[]).expect("defaults validate");
        assert_eq!(s.prefix, PathBuf::from("./tollgate-data"));
        assert_eq!(s.database, Database::Sqlite);
        assert_eq!(s.proxy_listen[0].addr.to_string(), "0.0.0.0:8000");
        assert_eq!(s.admin_listen[0].addr.to_string(), "127.0.0.1:8001");
        assert_eq!(s.log_level, LogLevel::Notice);
        assert!(s.worker_threads >= 1);
    }

    #[test]
    fn file_then_env_override() {
        let file = "# comment\nprefix = /tmp/x   # inline\ndatabase = postgres\npg_port = 6543\n";
        let s = from_sources(Some(file), &env(&[("TOLLGATE_PG_PORT", "7000"), ("PATH", "/bin")])).expect("valid");
        assert_eq!(s.prefix, PathBuf::from("/tmp/x"));
        assert_eq!(s.database, Database::Postgres);
        assert_eq!(s.pg.port, 7000);
    }

    #[test]
    fn every_error_is_listed_at_once() {
        let file = "colour = blue\ndatabase = mysql\npg_port = 99999\nproxy_listen = nowhere\n";
        let errs = from_sources(Some(file), &env(&[("TOLLGATE_LOG_LEVEL", "loud"), ("TOLLGATE_NOPE", "1")]))
            .expect_err("invalid");
        let all = errs.0.join("\n");
        for needle in ["colour", "database", "pg_port", "proxy_listen", "log_level", "TOLLGATE_NOPE"] {
            assert!(all.contains(needle), "missing {needle} in {all}");
        }
        assert_eq!(errs.0.len(), 6, "{all}");
    }

    #[test]
    fn tls_settings_are_checked_with_kongs_words() {
        let errs = from_sources(
            Some("admin_listen = 127.0.0.1:8001 proxy_protocol\nssl_cipher_suite = strong\nssl_cert_key = /k.pem\n"),
            &[],
        )
        .expect_err("invalid");
        let all = errs.0.join("\n");
        assert!(all.contains("admin_listen (line 1): proxy_protocol is offered on proxy_listen only"), "{all}");
        assert!(all.contains("ssl_cipher_suite"), "{all}");
        assert!(all.contains("ssl_cert must be specified"), "{all}");
        let s = from_sources(None, &[]).expect("defaults");
        assert!(s.proxy_listen.iter().any(|l| l.ssl && l.http2 && l.addr.port() == 8443));
        assert!(s.admin_listen.iter().any(|l| l.ssl && l.addr.port() == 8444));
        assert!(s.cluster_tls.pair.is_none() && s.ssl_certs.is_empty());
    }

    #[test]
    fn escaped_hash_is_kept() {
        let s = from_sources(Some("pg_password = a\\#b # c\n"), &[]).expect("valid");
        assert_eq!(s.pg.password.as_deref(), Some("a#b"));
    }

    #[test]
    fn trusted_ip_ranges_match() {
        let s = from_sources(Some("trusted_ips = 10.0.0.0/8, ::1\n"), &[]).expect("valid");
        assert!(s.is_trusted("10.1.2.3".parse().expect("ip")));
        assert!(s.is_trusted("::1".parse().expect("ip")));
        assert!(!s.is_trusted("11.0.0.1".parse().expect("ip")));
        assert!(from_sources(Some("trusted_ips = 10.0.0.0/33\n"), &[]).is_err());
    }

    /// `tollgate.conf.default` and the README document every key with its default.
    #[test]
    fn every_key_is_documented() {
        let conf = include_str!("../../tollgate.conf.default");
        let readme = include_str!("../../README.md");
        for key in KEYS {
            let line = conf.lines().find(|l| l.starts_with(&format!("{} =", key.name)));
            let value = line.and_then(|l| l.split_once('=')).map(|(_, v)| v.split('#').next().unwrap_or("").trim());
            assert_eq!(value, Some(key.default), "tollgate.conf.default: {}", key.name);
            let shown = if key.default.is_empty() { "(empty)".to_string() } else { format!("`{}`", key.default) };
            assert!(readme.contains(&format!("| `{}` | {shown} |", key.name)), "README: {}", key.name);
        }
    }

    #[test]
    fn admin_gui_settings() {
        let s = from_sources(None, &[]).expect("defaults");
        assert_eq!(s.admin_gui_listen[0].addr.to_string(), "0.0.0.0:8002");
        assert!(s.admin_gui_origins.is_empty() && s.admin_gui_api_url.is_none());
        let file = "admin_gui_listen = off\nadmin_gui_url = http://a.test:9100/manager, HTTPS://B.test\n\
                    admin_gui_api_url = api.test:8001/admin\n";
        let s = from_sources(Some(file), &[]).expect("valid");
        assert!(s.admin_gui_listen.is_empty());
        assert_eq!(s.admin_gui_origins, ["http://a.test:9100", "https://b.test"]);
        assert_eq!(s.admin_gui_api_url.as_deref(), Some("api.test:8001/admin"));
        let file = "admin_gui_url = ftp://x, nowhere\nadmin_gui_api_url = http://\nadmin_gui_listen = x\n";
        let all = from_sources(Some(file), &[]).expect_err("invalid").0.join("\n");
        assert_eq!(all.matches("admin_gui_url (line 1)").count(), 2, "{all}");
        assert!(all.contains("admin_gui_api_url (line 2)") && all.contains("admin_gui_listen (line 3)"), "{all}");
    }

    #[test]
    fn admin_listen_can_be_off() {
        let s = from_sources(Some("admin_listen = off\n"), &[]).expect("valid");
        assert!(s.admin_listen.is_empty());
    }
}
