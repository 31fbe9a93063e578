//! One listener entry of `proxy_listen` / `admin_listen`: `host:port` plus kong.conf's flags.

use std::net::{SocketAddr, ToSocketAddrs};

/// Kong's words for a malformed entry.
const FORM: &str = "must be of form: [off] | <ip>:<port> [ssl] [http2] [proxy_protocol] [deferred] [bind] \
                    [reuseport] [backlog=%d+] [ipv6only=on] [ipv6only=off] [so_keepalive=on] \
                    [so_keepalive=off] [so_keepalive=%w*:%w*:%d*], [... next entry ...]";

/// A parsed listen address with its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    /// TLS on this address (`ssl`).
    pub ssl: bool,
    /// HTTP/2 offered by ALPN on a TLS listener; h2c (prior knowledge) is always accepted in cleartext.
    pub http2: bool,
    /// Each connection starts with a PROXY protocol (v1 or v2) header.
    pub proxy_protocol: bool,
    pub reuseport: bool,
    pub backlog: u32,
}

impl Listen {
    /// Parses `0.0.0.0:8443 http2 ssl reuseport backlog=16384`. `deferred`, `bind`, `ipv6only` and
    /// `so_keepalive` are accepted and have no effect here.
    pub fn parse(entry: &str) -> Result<Listen, String> {
        let mut words = entry.split_whitespace();
        let addr = words
            .next()
            .and_then(|a| a.to_socket_addrs().ok())
            .and_then(|mut a| a.next())
            .ok_or_else(|| FORM.to_string())?;
        let mut listen =
            Listen { addr, ssl: false, http2: false, proxy_protocol: false, reuseport: false, backlog: 511 };
        for flag in words {
            match flag {
                "ssl" => listen.ssl = true,
                "http2" => listen.http2 = true,
                "proxy_protocol" => listen.proxy_protocol = true,
                "reuseport" => listen.reuseport = true,
                "deferred" | "bind" | "ipv6only=on" | "ipv6only=off" | "so_keepalive=on" | "so_keepalive=off" => {}
                f if f.starts_with("so_keepalive=") && f.matches(':').count() == 2 => {}
                f => match f.strip_prefix("backlog=").map(str::parse::<u32>) {
                    Some(Ok(n)) if n > 0 => listen.backlog = n,
                    _ => return Err(FORM.to_string()),
                },
            }
        }
        Ok(listen)
    }

    /// The scheme clients use on this listener.
    pub fn scheme(&self) -> &'static str {
        if self.ssl { "https" } else { "http" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_style_flags() {
        let l = Listen::parse("0.0.0.0:8000 reuseport backlog=16384").expect("valid");
        assert!(l.reuseport && !l.ssl);
        assert_eq!(l.backlog, 16384);
        let l = Listen::parse("0.0.0.0:8443 http2 ssl reuseport backlog=16384").expect("valid");
        assert!(l.ssl && l.http2 && l.reuseport);
        assert_eq!(l.scheme(), "https");
        let l = Listen::parse("127.0.0.1:9000 proxy_protocol so_keepalive=30s:10s:3 deferred").expect("valid");
        assert!(l.proxy_protocol);
        for bad in ["nowhere", "0.0.0.0:8000 tls", "0.0.0.0:8000 backlog=0", "0.0.0.0:8000 backlog=x", ""] {
            assert!(Listen::parse(bad).expect_err(bad).starts_with("must be of form"), "{bad}");
        }
        assert!(Listen::parse("[::1]:9000").is_ok());
    }
}
