//! The table of every configuration key: its name, default and one line of documentation. The README,
//! `tollgate.conf.default` and the parser all come from this one list (a test keeps them in step).

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KeyDef {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    /// Redacted in `GET /`.
    pub secret: bool,
}

const fn key(name: &'static str, default: &'static str, doc: &'static str) -> KeyDef {
    KeyDef { name, default, doc, secret: false }
}

pub const KEYS: &[KeyDef] = &[
    key("prefix", "./tollgate-data", "Working directory: holds the SQLite database and caches."),
    key(
        "role",
        "traditional",
        "`traditional` (proxy and Admin API on one store), `control_plane` (Admin API, `/v1`, `/v2`, cluster listener; no proxy; admin tokens required) or `data_plane` (proxy only, configured by its control plane).",
    ),
    key(
        "admin_auth",
        "off",
        "`on` requires an admin token (`Authorization: Bearer`) on every Admin API path of a traditional node.",
    ),
    key(
        "cluster_listen",
        "0.0.0.0:8005",
        "Where a control plane's data planes connect (reported as `control_plane_endpoint`).",
    ),
    key("cluster_control_plane", "127.0.0.1:8005", "`host:port` of the control plane a data plane joins."),
    KeyDef {
        name: "cluster_token",
        default: "",
        doc: "The data plane token a data plane presents (from `POST /v2/control-planes/{id}/data-plane-tokens`).",
        secret: true,
    },
    key(
        "cluster_max_payload",
        "16777216",
        "The largest configuration message, in bytes, as sent (compressed) and as inflated; the control plane cuts configurations into parts that fit.",
    ),
    key(
        "realm_cache_size",
        "100000",
        "Realm key lookups a data plane keeps cached, hits and misses each (hits for the realm's `ttl`, misses for its `negative_ttl`).",
    ),
    key(
        "proxy_access_log",
        "off",
        "A file (relative to `prefix` unless absolute) the proxy appends every request's log entry to, one JSON object per line in Kong's log serializer shape (as file-log writes), or `off`. Entries go through a bounded queue (10,000); what it cannot take is dropped and counted (`tollgate_log_entries_dropped_total`).",
    ),
    key(
        "prometheus_max_series",
        "200000",
        "The most request series (label sets) the prometheus plugin keeps, each proxy worker's counted apart; requests that would need more are counted in `tollgate_prometheus_series_dropped_total` instead.",
    ),
    key("status_listen", "127.0.0.1:8100", "The status API (`GET /status`, `GET /status/ready`), or `off`."),
    key(
        "proxy_listen",
        "0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl reuseport backlog=16384",
        "Comma-separated `address:port [ssl] [http2] [proxy_protocol] [reuseport] [backlog=N]` the proxy listens on. Cleartext listeners speak HTTP/1.1 and h2c; `ssl` ones TLS, with HTTP/2 by ALPN where `http2` is set.",
    ),
    key(
        "admin_listen",
        "127.0.0.1:8001 reuseport backlog=16384, 127.0.0.1:8444 http2 ssl reuseport backlog=16384",
        "Addresses of the Admin API (same flags as `proxy_listen`), or `off`.",
    ),
    key(
        "admin_gui_listen",
        "0.0.0.0:8002",
        "Addresses of the admin page (Kong Manager's listener; same flags as `admin_listen`, `ssl` with `admin_ssl_cert`), or `off`. Served by traditional and control plane nodes whose Admin API listens.",
    ),
    key(
        "admin_gui_url",
        "",
        "Comma-separated URLs the admin page is reached at (`http://host:8002`): their origins are the ones the Admin API allows in browsers (`Access-Control-Allow-Origin`); empty: any origin.",
    ),
    key(
        "admin_gui_api_url",
        "",
        "Where the admin page's browser reaches the Admin API (`http://host:8001`, or `host:port[/path]` with the page's scheme); empty: the page's host with the port of the first `admin_listen` entry of the page's scheme.",
    ),
    key(
        "ssl_cert",
        "",
        "Comma-separated certificates (file path, inline PEM or base64 of the PEM) of the proxy's TLS listeners, RSA and ECDSA side by side. Empty: a self-signed ECDSA pair is made under `<prefix>/ssl/` on first start.",
    ),
    KeyDef {
        name: "ssl_cert_key",
        default: "",
        doc: "The private keys of `ssl_cert`, in the same order and forms.",
        secret: true,
    },
    key("admin_ssl_cert", "", "Certificates of the Admin API's TLS listeners (as `ssl_cert`)."),
    KeyDef { name: "admin_ssl_cert_key", default: "", doc: "The private keys of `admin_ssl_cert`.", secret: true },
    key("ssl_protocols", "TLSv1.2 TLSv1.3", "TLS versions offered (`TLSv1.1` and older are left out with a warning)."),
    key(
        "ssl_cipher_suite",
        "intermediate",
        "`modern` (TLS 1.3 only), `intermediate` (TLS 1.3 and the ECDHE AEAD suites of TLS 1.2), `old` (the same: rustls has no weaker suites) or `custom` (with `ssl_ciphers`).",
    ),
    key("ssl_ciphers", "", "With `ssl_cipher_suite = custom`: the TLS 1.2 suites, OpenSSL names separated by `:`."),
    key(
        "cluster_mtls",
        "shared",
        "How the cluster link authenticates: `shared` (both ends hold the same `cluster_cert`) or `pki` (certificates signed by `cluster_ca_cert`).",
    ),
    key(
        "cluster_cert",
        "",
        "The cluster certificate of a control or data plane (file path, inline PEM or base64); required in hybrid mode. `tollgate hybrid gen-cert` makes one.",
    ),
    KeyDef { name: "cluster_cert_key", default: "", doc: "The private key of `cluster_cert`.", secret: true },
    key("cluster_ca_cert", "", "With `cluster_mtls = pki`: the CA that signs cluster certificates."),
    key(
        "cluster_server_name",
        "",
        "With `cluster_mtls = pki`: the name a data plane expects in the control plane's certificate (default: the host of `cluster_control_plane`).",
    ),
    key(
        "database",
        "sqlite",
        "`sqlite` (embedded, `<prefix>/tollgate.db`), `postgres` (several nodes) or `off` (DB-less: the configuration is loaded whole from `declarative_config` or `POST /config`, kept in `<prefix>/dbless.db`).",
    ),
    key(
        "declarative_config",
        "",
        "With `database = off`: a declarative file (`.yml`, `.yaml`, `.json`) loaded at start, replacing what the node held.",
    ),
    key(
        "declarative_config_string",
        "",
        "With `database = off`: the declarative configuration itself (JSON or YAML), loaded at start; `declarative_config` wins when both are set.",
    ),
    key("pg_host", "127.0.0.1", "PostgreSQL host."),
    key("pg_port", "5432", "PostgreSQL port."),
    key("pg_user", "tollgate", "PostgreSQL user."),
    KeyDef { name: "pg_password", default: "", doc: "PostgreSQL password (empty: none).", secret: true },
    key("pg_database", "tollgate", "PostgreSQL database."),
    key("pg_timeout", "5000", "PostgreSQL connect and query timeout, in milliseconds."),
    key("pg_max_connections", "10", "Size of the PostgreSQL connection pool."),
    key("log_level", "notice", "One of debug, info, notice, warn, error, crit, alert, emerg."),
    key("worker_threads", "auto", "Proxy and Admin API worker threads; `auto` = one per core."),
    key(
        "db_update_frequency",
        "1",
        "Seconds between checks of the store's configuration version, the fallback when a change notification is lost.",
    ),
    key("trusted_ips", "", "Comma-separated IPs/CIDRs whose X-Forwarded-* headers are trusted and passed on."),
    key("upstream_keepalive_pool_size", "512", "Idle keep-alive connections kept per upstream host."),
    key("upstream_keepalive_idle_timeout", "60", "Seconds an idle upstream connection is kept."),
    key(
        "dns_resolver",
        "",
        "Comma-separated name servers (`ip[:port]`, port 53) for the host names of services and targets; empty: those of `/etc/resolv.conf`.",
    ),
    key("dns_hostsfile", "/etc/hosts", "The hosts file, read once at start and asked before any name server."),
    key(
        "dns_order",
        "LAST,SRV,A,CNAME",
        "Record types tried in turn: `LAST` (the type that answered the name last), `SRV`, `A`, `AAAA`, `CNAME` (addresses through a CNAME chain).",
    ),
    key(
        "dns_valid_ttl",
        "",
        "Seconds every answer is kept, replacing its TTL; empty: the answer's TTL (at least 1 s).",
    ),
    key(
        "dns_stale_ttl",
        "3600",
        "Seconds an answer past its TTL is still served while it is refreshed (and kept when the refresh fails).",
    ),
    key("dns_not_found_ttl", "30", "Seconds a name that does not exist (or has no records) is remembered so."),
    key("dns_error_ttl", "1", "Seconds a failed query is remembered before the name is asked again."),
];
