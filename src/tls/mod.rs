//! TLS material and its use: reading certificates and keys as kong.conf and the Admin API give them
//! (`material`), the self-signed pairs the node makes for itself (`generate`), the certificate table
//! a snapshot carries and how a server name picks from it (`certificates`), the rustls server
//! configuration of every TLS listener with its protocol and cipher policy (`server`), and the client
//! configurations of `https` services (`client`).

pub mod certificates;
pub mod client;
pub mod generate;
pub mod material;
pub mod server;

pub use certificates::{CertPair, CertificateTable};
pub use material::{KeyType, MaterialError};
pub use server::{CertificateSource, CipherPolicy, SniResolver, TlsPolicy};

use std::sync::{Arc, OnceLock};

use tokio_rustls::rustls::crypto::CryptoProvider;

/// The one crypto provider every TLS endpoint of the node uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())).clone()
}
