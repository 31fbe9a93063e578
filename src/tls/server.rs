//! The rustls server side of a TLS listener: the protocol and cipher policy from `ssl_protocols`
//! and `ssl_cipher_suite`, ALPN (`h2` where the listener has `http2`), session resumption, and the
//! certificate resolver that asks the current configuration first and falls back to the node's
//! default pair.
//!
//! `ssl_cipher_suite` maps onto what rustls offers (AEAD suites with forward secrecy only):
//! `modern` is TLS 1.3 alone; `intermediate` is TLS 1.3 plus the six ECDHE AES-GCM and
//! ChaCha20-Poly1305 suites of TLS 1.2 (Mozilla's intermediate list, exactly); `old` is the same,
//! since rustls implements none of the CBC, RSA key exchange or 3DES suites `old` adds; `custom`
//! takes `ssl_ciphers` in OpenSSL's names, keeping those rustls has.

use std::fmt;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring::{Ticketer, cipher_suite as cs};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::{ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

use super::certificates::CertPair;

/// How many TLS sessions a listener remembers for resumption (Kong: `shared:SSL:10m`, ~40,000).
const SESSION_CACHE: usize = 40_000;

/// `ssl_cipher_suite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CipherPolicy {
    Modern,
    Intermediate,
    Old,
    /// `custom` with `ssl_ciphers`: the TLS 1.2 suites named.
    Custom(Vec<&'static str>),
}

/// The versions and suites a TLS listener offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    pub tls12: bool,
    pub tls13: bool,
    pub ciphers: CipherPolicy,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        TlsPolicy { tls12: true, tls13: true, ciphers: CipherPolicy::Intermediate }
    }
}

/// OpenSSL names of the TLS 1.2 suites rustls has.
const TLS12_SUITES: &[(&str, &SupportedCipherSuite)] = &[
    ("ECDHE-ECDSA-AES128-GCM-SHA256", &cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    ("ECDHE-RSA-AES128-GCM-SHA256", &cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
    ("ECDHE-ECDSA-AES256-GCM-SHA384", &cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ("ECDHE-RSA-AES256-GCM-SHA384", &cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", &cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ("ECDHE-RSA-CHACHA20-POLY1305", &cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
];

const TLS13_SUITES: &[&SupportedCipherSuite] =
    &[&cs::TLS13_AES_128_GCM_SHA256, &cs::TLS13_AES_256_GCM_SHA384, &cs::TLS13_CHACHA20_POLY1305_SHA256];

impl TlsPolicy {
    /// From `ssl_protocols`, `ssl_cipher_suite` and `ssl_ciphers`. Returns the policy and the
    /// warnings to log (protocols rustls does not offer are left out, not refused, so a kong.conf
    /// listing `TLSv1.1` still starts).
    pub fn parse(protocols: &str, suite: &str, ciphers: &str) -> Result<(TlsPolicy, Vec<String>), String> {
        let mut policy = TlsPolicy { tls12: false, tls13: false, ciphers: CipherPolicy::Intermediate };
        let mut warnings = Vec::new();
        for p in protocols.split([' ', ',']).filter(|p| !p.is_empty()) {
            match p {
                "TLSv1.2" => policy.tls12 = true,
                "TLSv1.3" => policy.tls13 = true,
                "TLSv1" | "TLSv1.1" | "SSLv2" | "SSLv3" => {
                    warnings.push(format!("ssl_protocols: {p} is not offered (TLS 1.2 and 1.3 only)"));
                }
                other => return Err(format!("ssl_protocols: unknown protocol '{other}'")),
            }
        }
        policy.ciphers = match suite.trim() {
            "modern" => CipherPolicy::Modern,
            "intermediate" => CipherPolicy::Intermediate,
            "old" => CipherPolicy::Old,
            "custom" => {
                let named: Vec<&'static str> = ciphers
                    .split([':', ' ', ','])
                    .filter_map(|n| TLS12_SUITES.iter().find(|(name, _)| *name == n).map(|(name, _)| *name))
                    .collect();
                if named.is_empty() && policy.tls12 {
                    return Err("ssl_ciphers: names no cipher suite this gateway offers".into());
                }
                CipherPolicy::Custom(named)
            }
            other => {
                return Err(format!(
                    "ssl_cipher_suite: expected one of modern, intermediate, old, custom, got '{other}'"
                ));
            }
        };
        if policy.ciphers == CipherPolicy::Modern {
            policy.tls12 = false;
            policy.tls13 = true;
        }
        if !policy.tls12 && !policy.tls13 {
            return Err("ssl_protocols: must include TLSv1.2 or TLSv1.3".into());
        }
        Ok((policy, warnings))
    }

    fn versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        let mut v = Vec::new();
        if self.tls13 {
            v.push(&TLS13);
        }
        if self.tls12 {
            v.push(&TLS12);
        }
        v
    }

    fn suites(&self) -> Vec<SupportedCipherSuite> {
        let mut v: Vec<SupportedCipherSuite> = TLS13_SUITES.iter().map(|s| **s).collect();
        match &self.ciphers {
            CipherPolicy::Modern => {}
            CipherPolicy::Intermediate | CipherPolicy::Old => v.extend(TLS12_SUITES.iter().map(|(_, s)| **s)),
            CipherPolicy::Custom(names) => {
                v.extend(TLS12_SUITES.iter().filter(|(n, _)| names.contains(n)).map(|(_, s)| **s));
            }
        }
        v
    }

    /// A server configuration with this policy, ALPN and session resumption.
    pub fn server_config(
        &self,
        resolver: Arc<dyn ResolvesServerCert>,
        http2: bool,
    ) -> Result<Arc<ServerConfig>, String> {
        let mut config = self.builder()?.with_no_client_auth().with_cert_resolver(resolver);
        self.finish(&mut config, http2)?;
        Ok(Arc::new(config))
    }

    /// The builder up to client authentication, for listeners that verify clients (the cluster).
    pub fn builder(
        &self,
    ) -> Result<tokio_rustls::rustls::ConfigBuilder<ServerConfig, tokio_rustls::rustls::WantsVerifier>, String> {
        let mut provider = (*super::provider()).clone();
        provider.cipher_suites = self.suites();
        ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&self.versions())
            .map_err(|e| format!("TLS configuration: {e}"))
    }

    /// ALPN and resumption on a built configuration.
    pub fn finish(&self, config: &mut ServerConfig, http2: bool) -> Result<(), String> {
        config.alpn_protocols =
            if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = Ticketer::new().map_err(|e| format!("TLS session tickets: {e}"))?;
        Ok(())
    }
}

/// Where a listener finds the certificates of the current configuration.
pub trait CertificateSource: Send + Sync {
    /// The certificate for a server name, or `None` for the default.
    fn select(&self, server_name: &str) -> Option<Arc<CertPair>>;
}

/// Picks the certificate of each handshake: the configuration's for the SNI, else the default.
pub struct SniResolver {
    default: CertPair,
    source: Option<Arc<dyn CertificateSource>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").field("default", &self.default.id).finish_non_exhaustive()
    }
}

impl SniResolver {
    pub fn new(default: CertPair, source: Option<Arc<dyn CertificateSource>>) -> SniResolver {
        SniResolver { default, source }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        if let (Some(name), Some(source)) = (hello.server_name(), &self.source)
            && let Some(pair) = source.select(name)
        {
            return Some(pair.for_client(schemes).clone());
        }
        Some(self.default.for_client(schemes).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kong_defaults_and_the_named_policies() {
        let (p, w) = TlsPolicy::parse("TLSv1.2 TLSv1.3", "intermediate", "").expect("valid");
        assert_eq!(p, TlsPolicy::default());
        assert!(w.is_empty());
        assert_eq!(p.suites().len(), 9);
        let (p, _) = TlsPolicy::parse("TLSv1.2 TLSv1.3", "modern", "").expect("valid");
        assert!(!p.tls12 && p.tls13);
        assert_eq!(p.suites().len(), 3);
        let (_, w) = TlsPolicy::parse("TLSv1.1 TLSv1.2", "old", "").expect("valid with a warning");
        assert_eq!(w.len(), 1);
        let (p, _) =
            TlsPolicy::parse("TLSv1.2", "custom", "ECDHE-ECDSA-AES128-GCM-SHA256:DES-CBC3-SHA").expect("valid");
        assert_eq!(p.suites().len(), 4);
        assert!(TlsPolicy::parse("TLSv1.1", "intermediate", "").is_err());
        assert!(TlsPolicy::parse("TLSv9", "intermediate", "").is_err());
        assert!(TlsPolicy::parse("TLSv1.2", "strong", "").is_err());
        assert!(TlsPolicy::parse("TLSv1.2", "custom", "RC4-MD5").is_err());
    }
}
