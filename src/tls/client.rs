//! TLS client configurations for `https` services, built when the configuration is compiled (never
//! per request): as in Kong, the upstream certificate is checked only with `tls_verify = true`,
//! against the service's `ca_certificates` (or the system roots) and its host, with
//! `tls_verify_depth` bounding the chain; `client_certificate` is presented for mutual TLS. The
//! common cases (verify or not, no client certificate, system roots) share one configuration each.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// What a service asks of its upstream TLS.
#[derive(Default)]
pub struct UpstreamTls {
    /// `tls_verify`.
    pub verify: bool,
    /// `tls_verify_depth`: most intermediate certificates accepted in the upstream's chain.
    pub depth: Option<u8>,
    /// The certificates of `ca_certificates` (`None`: the system roots).
    pub roots: Option<Vec<CertificateDer<'static>>>,
    /// `client_certificate`, presented to the upstream.
    pub client: Option<Arc<CertifiedKey>>,
}

impl UpstreamTls {
    /// The client configuration for this service; the shared one where nothing is specific.
    pub fn config(&self) -> Result<Arc<ClientConfig>, String> {
        let plain = self.depth.is_none() && self.roots.is_none() && self.client.is_none();
        if plain {
            let shared = shared()?;
            return Ok(if self.verify { shared.verifying.clone() } else { shared.trusting.clone() });
        }
        let provider = super::provider();
        let verifier: Arc<dyn ServerCertVerifier> = if self.verify && self.roots.as_ref().is_some_and(Vec::is_empty) {
            // None of the service's CAs exists: nothing can verify (Kong's handshake then fails too).
            Arc::new(Pinned::new(Trust::Nothing))
        } else if self.verify {
            let roots = match &self.roots {
                Some(list) => {
                    let mut store = RootCertStore::empty();
                    store.add_parsable_certificates(list.iter().cloned());
                    Arc::new(store)
                }
                None => system_roots(),
            };
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("upstream TLS verifier: {e}"))?;
            Arc::new(Depth { inner, depth: self.depth })
        } else {
            Arc::new(Pinned::new(Trust::Any))
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("upstream TLS configuration: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client {
            Some(key) => builder.with_client_cert_resolver(Arc::new(Fixed(key.clone()))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

struct Shared {
    verifying: Arc<ClientConfig>,
    trusting: Arc<ClientConfig>,
}

fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "cannot read a system certificate");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(roots = added, "trusted roots for upstream TLS");
            Arc::new(roots)
        })
        .clone()
}

fn shared() -> Result<&'static Shared, String> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let provider = super::provider();
            let base = || {
                ClientConfig::builder_with_provider(provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("upstream TLS configuration: {e}"))
            };
            let mut verifying = base()?.with_root_certificates(system_roots()).with_no_client_auth();
            let mut trusting = base()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned::new(Trust::Any)))
                .with_no_client_auth();
            verifying.alpn_protocols = vec![b"http/1.1".to_vec()];
            trusting.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Shared { verifying: Arc::new(verifying), trusting: Arc::new(trusting) })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Always presents the service's client certificate.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl tokio_rustls::rustls::client::ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// WebPKI verification with a bound on the chain's intermediates (`tls_verify_depth`).
#[derive(Debug)]
struct Depth {
    inner: Arc<WebPkiServerVerifier>,
    depth: Option<u8>,
}

impl ServerCertVerifier for Depth {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(depth) = self.depth
            && intermediates.len() > usize::from(depth)
        {
            return Err(Error::General(format!("certificate chain too long (tls_verify_depth {depth})")));
        }
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Which upstream certificates a [`Pinned`] verifier accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Any (Kong's default, `tls_verify` unset).
    Any,
    /// None (a service whose `ca_certificates` are all missing).
    Nothing,
    /// Exactly this certificate (a `shared` cluster certificate).
    Exactly(CertificateDer<'static>),
}

/// A server certificate check that does not chain to roots: any, none, or one given certificate.
/// Handshake signatures are still checked, so the handshake is a real one.
pub struct Pinned {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    pub fn new(trust: Trust) -> Pinned {
        Pinned { trust, provider: super::provider() }
    }

    /// A client configuration that accepts whatever certificate the server presents (tools that
    /// look at the server, not trust it).
    pub fn any_server_config() -> Result<ClientConfig, String> {
        Ok(ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned::new(Trust::Any)))
            .with_no_client_auth())
    }
}

impl fmt::Debug for Pinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinned").field("trust", &self.trust).finish_non_exhaustive()
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match &self.trust {
            Trust::Any => Ok(ServerCertVerified::assertion()),
            Trust::Exactly(own) if own.as_ref() == end_entity.as_ref() => Ok(ServerCertVerified::assertion()),
            Trust::Exactly(_) => Err(Error::General("the server's certificate is not the expected one".into())),
            Trust::Nothing => Err(Error::General("none of the service's ca_certificates exists".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
