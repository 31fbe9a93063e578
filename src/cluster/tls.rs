//! TLS on the cluster link, Kong's two ways (`cluster_mtls`). `shared`: both ends hold the same
//! `cluster_cert`; the control plane asks for a client certificate and accepts only its own (by
//! SHA-256 digest, as Kong's `validate_client_cert`), and the data plane accepts only that same
//! certificate from the control plane. `pki`: both certificates chain to `cluster_ca_cert`; the
//! control plane requires a client certificate signed by it, and the data plane checks the control
//! plane's against it and `cluster_server_name` (default: the host of `cluster_control_plane`).
//! The data plane token stays a second check on top.

use std::fmt;
use std::sync::Arc;

use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::config::{ClusterMtls, ClusterTls, PemPair};
use crate::tls::client::{Pinned, Trust};
use crate::tls::{self, material};

/// The name a `shared` data plane expects: the subject of `hybrid gen-cert`'s certificate.
pub const SHARED_SERVER_NAME: &str = "kong_clustering";

/// Why the cluster's TLS could not be set up (a configuration problem, found at start).
fn setup(e: impl fmt::Display) -> String {
    format!("cluster TLS: {e}")
}

fn pair(settings: &ClusterTls) -> Result<&PemPair, String> {
    settings.pair.as_ref().ok_or_else(|| "cluster certificate and key must be provided to use Hybrid mode".to_string())
}

fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for cert in material::certificates(ca_pem).map_err(setup)? {
        store.add(cert).map_err(setup)?;
    }
    Ok(Arc::new(store))
}

/// What the control plane checks after the handshake (the `shared` digest).
#[derive(Debug, Clone)]
pub struct ClientCheck {
    own_digest: Option<String>,
}

impl ClientCheck {
    /// `Err` with Kong's words when the data plane's certificate is not acceptable.
    pub fn check(&self, presented: Option<&CertificateDer<'_>>) -> Result<(), &'static str> {
        let Some(own) = &self.own_digest else { return Ok(()) };
        match presented {
            None => Err("data plane failed to present client certificate during handshake"),
            Some(cert) if material::digest(cert) != *own => Err(
                "data plane presented incorrect client certificate during handshake (digest does not match the control plane certificate)",
            ),
            Some(_) => Ok(()),
        }
    }
}

/// The control plane's server configuration and its post-handshake check.
pub fn server(settings: &ClusterTls) -> Result<(Arc<ServerConfig>, ClientCheck), String> {
    let pair = pair(settings)?;
    let certified = material::certified_key(&pair.cert, &pair.key).map_err(setup)?;
    let provider = tls::provider();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(setup)?;
    let (builder, check) = match settings.mtls {
        ClusterMtls::Shared => {
            let own = certified.end_entity_cert().map_err(setup)?;
            let check = ClientCheck { own_digest: Some(material::digest(own)) };
            (builder.with_client_cert_verifier(Arc::new(AnyClient(provider))), check)
        }
        ClusterMtls::Pki => {
            let ca = settings.ca.as_deref().ok_or("cluster_ca_cert must be specified when cluster_mtls = \"pki\"")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider).build().map_err(setup)?;
            (builder.with_client_cert_verifier(verifier), ClientCheck { own_digest: None })
        }
    };
    let config = builder.with_cert_resolver(Arc::new(Single(certified)));
    Ok((Arc::new(config), check))
}

/// The data plane's client configuration and the server name it sends.
pub fn client(settings: &ClusterTls, control_plane: &str) -> Result<(Arc<ClientConfig>, ServerName<'static>), String> {
    let pair = pair(settings)?;
    let chain = material::certificates(&pair.cert).map_err(setup)?;
    let key = material::private_key(&pair.key).map_err(setup)?;
    let provider = tls::provider();
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(setup)?;
    let (builder, name) = match settings.mtls {
        ClusterMtls::Shared => {
            // The control plane must present exactly the data plane's own cluster certificate.
            let own = chain.first().cloned().ok_or("cluster_cert: no certificate")?;
            let verifier = Pinned::new(Trust::Exactly(own));
            (builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)), SHARED_SERVER_NAME.to_string())
        }
        ClusterMtls::Pki => {
            let ca = settings.ca.as_deref().ok_or("cluster_ca_cert must be specified when cluster_mtls = \"pki\"")?;
            let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider).build().map_err(setup)?;
            let host = control_plane.rsplit_once(':').map_or(control_plane, |(h, _)| h);
            let name = settings.server_name.clone().unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
            (builder.dangerous().with_custom_certificate_verifier(verifier), name)
        }
    };
    let config = builder.with_client_auth_cert(chain, key).map_err(setup)?;
    let name = ServerName::try_from(name).map_err(|e| setup(format!("cluster_server_name: {e}")))?;
    Ok((Arc::new(config), name))
}

#[derive(Debug)]
struct Single(Arc<tokio_rustls::rustls::sign::CertifiedKey>);

impl tokio_rustls::rustls::server::ResolvesServerCert for Single {
    fn resolve(
        &self,
        _: tokio_rustls::rustls::server::ClientHello<'_>,
    ) -> Option<Arc<tokio_rustls::rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// `shared` on the control plane: any client certificate passes the handshake (its signature
/// checked); [`ClientCheck`] then compares it with the control plane's own.
struct AnyClient(Arc<CryptoProvider>);

impl fmt::Debug for AnyClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyClient")
    }
}

impl ClientCertVerifier for AnyClient {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
