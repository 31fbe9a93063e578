//! One listener entry of `proxy_listen` / `admin_listen`: `host:port` plus kong.conf flags.

use std::net::{SocketAddr, ToSocketAddrs};

/// A parsed listen address with its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub reuseport: bool,
    pub backlog: u32,
}

impl Listen {
    /// Parses `0.0.0.0:8000 reuseport backlog=16384`. `http2` is accepted and implied (h2c is always on);
    /// `ssl` is refused because TLS listeners are not offered yet.
    pub fn parse(entry: &str) -> Result<Listen, String> {
        let mut words = entry.split_whitespace();
        let Some(addr) = words.next() else {
            return Err("empty listen address".into());
        };
        let addr = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("invalid listen address '{addr}', expected host:port"))?;
        let mut listen = Listen { addr, reuseport: false, backlog: 1024 };
        for flag in words {
            match flag {
                "reuseport" => listen.reuseport = true,
                "http2" | "deferred" | "bind" => {}
                "ssl" => return Err(format!("'{entry}': ssl listeners are not supported")),
                f => match f.strip_prefix("backlog=").map(str::parse::<u32>) {
                    Some(Ok(n)) if n > 0 => listen.backlog = n,
                    _ => return Err(format!("'{entry}': unknown listen flag '{f}'")),
                },
            }
        }
        Ok(listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_style_flags() {
        let l = Listen::parse("0.0.0.0:8000 reuseport backlog=16384").expect("valid");
        assert!(l.reuseport);
        assert_eq!(l.backlog, 16384);
        assert!(Listen::parse("0.0.0.0:8443 ssl").is_err());
        assert!(Listen::parse("nowhere").is_err());
        assert!(Listen::parse("[::1]:9000").is_ok());
    }
}
