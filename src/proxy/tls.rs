//! TLS to `https` services (rustls). As in Kong, the upstream certificate is not verified unless the
//! service sets `tls_verify = true`; then it must chain to the system's trusted roots and match the
//! service host. Client configurations are built once per process.

use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// Opens TLS over `stream` for `host`.
pub async fn connect(stream: TcpStream, host: &str, verify: bool) -> std::io::Result<TlsStream<TcpStream>> {
    let config = configs().map_err(std::io::Error::other)?;
    let config = if verify { config.verifying.clone() } else { config.trusting.clone() };
    let name =
        ServerName::try_from(host.to_string()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(config).connect(name, stream).await
}

/// The two client configurations: checking certificates against the system roots, or not.
#[derive(Debug)]
struct Configs {
    verifying: Arc<ClientConfig>,
    trusting: Arc<ClientConfig>,
}

fn configs() -> Result<&'static Configs, &'static str> {
    static CONFIGS: OnceLock<Result<Configs, String>> = OnceLock::new();
    CONFIGS.get_or_init(build).as_ref().map_err(String::as_str)
}

fn build() -> Result<Configs, String> {
    let provider = Arc::new(ring::default_provider());
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "cannot read a system certificate");
    }
    let (added, _) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(roots = added, "trusted roots for upstream TLS");
    let base = || {
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client configuration failed: {e}"))
    };
    let mut verifying = base()?.with_root_certificates(roots).with_no_client_auth();
    let mut trusting = base()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
        .with_no_client_auth();
    verifying.alpn_protocols = vec![b"http/1.1".to_vec()];
    trusting.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Configs { verifying: Arc::new(verifying), trusting: Arc::new(trusting) })
}

/// Accepts any upstream certificate (Kong's default, `tls_verify` unset). Signatures are still
/// checked, so the handshake is a real one.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
