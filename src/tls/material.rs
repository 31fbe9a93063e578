//! Certificates and private keys from what a user writes: a file path, inline PEM or base64 of the
//! PEM (kong.conf's three forms), or a PEM body (the Admin API). Nothing here panics on any input,
//! and no error carries key material.

use std::sync::Arc;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;

/// Why a certificate or key could not be used. The text is Kong's where Kong has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaterialError {
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("invalid key: {0}")]
    Key(String),
    #[error("certificate does not match key")]
    Mismatch,
}

/// The key algorithm of a certificate, which decides which clients it can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    Ecdsa,
    Ed25519,
    Other,
}

/// What the gateway needs to know of a certificate beyond its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertInfo {
    pub key_type: KeyType,
    /// `basicConstraints CA:TRUE`.
    pub is_ca: bool,
    /// "Not After", in seconds since the epoch.
    pub not_after: i64,
}

/// A PEM value from kong.conf: inline PEM, a file path, or base64 of the PEM.
pub fn read_setting(value: &str) -> Option<Vec<u8>> {
    let value = value.trim();
    if value.contains("-----BEGIN") {
        return Some(value.as_bytes().to_vec());
    }
    if let Ok(bytes) = std::fs::read(value) {
        return Some(bytes);
    }
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(compact.as_bytes()))
        .ok()?;
    decoded.windows(10).any(|w| w == b"-----BEGIN").then_some(decoded)
}

/// Every certificate of a PEM chain, leaf first; each must parse as X.509.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let mut chain = Vec::new();
    for section in CertificateDer::pem_slice_iter(pem) {
        let der = section.map_err(|e| MaterialError::Certificate(pem_error(&e)))?;
        info(&der)?;
        chain.push(der);
    }
    if chain.is_empty() {
        return Err(MaterialError::Certificate("no PEM certificate found".into()));
    }
    Ok(chain)
}

/// The first private key of a PEM (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, MaterialError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| MaterialError::Key(pem_error(&e)))
}

/// A chain and its key, checked to belong together, ready to serve.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, MaterialError> {
    let chain = certificates(cert_pem)?;
    let key = private_key(key_pem)?;
    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|_| MaterialError::Key("unsupported or malformed private key".into()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        Err(_) => Err(MaterialError::Mismatch),
    }
}

/// Key type, CA flag and expiry of one DER certificate.
pub fn info(der: &[u8]) -> Result<CertInfo, MaterialError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| MaterialError::Certificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(MaterialError::Certificate("trailing data after the certificate".into()));
    }
    let key_type = match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(_)) => KeyType::Rsa,
        Ok(x509_parser::public_key::PublicKey::EC(_)) => KeyType::Ecdsa,
        _ if cert.public_key().algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => KeyType::Ed25519,
        _ => KeyType::Other,
    };
    Ok(CertInfo { key_type, is_ca: cert.is_ca(), not_after: cert.validity().not_after.timestamp() })
}

/// Lowercase hex SHA-256 of a DER certificate (Kong's `cert_digest`, and how a `shared` cluster
/// certificate is compared).
pub fn digest(der: &[u8]) -> String {
    let sum = Sha256::digest(der);
    let mut out = String::with_capacity(64);
    for b in sum {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn pem_error(e: &tokio_rustls::rustls::pki_types::pem::Error) -> String {
    use tokio_rustls::rustls::pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "no PEM data found".into(),
        E::MissingSectionEnd { .. } => "PEM section without its END line".into(),
        E::IllegalSectionStart { .. } => "malformed PEM BEGIN line".into(),
        E::Base64Decode(_) => "PEM body is not valid base64".into(),
        _ => "unreadable PEM".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(alg).expect("key");
        let cert =
            rcgen::CertificateParams::new(vec!["a.test".into()]).expect("params").self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_pair_that_belongs_together_is_served_and_a_foreign_key_is_named() {
        let (cert, key) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(certified_key(cert.as_bytes(), key.as_bytes()).is_ok());
        assert_eq!(certified_key(cert.as_bytes(), other.as_bytes()).err(), Some(MaterialError::Mismatch));
        let der = certificates(cert.as_bytes()).expect("chain");
        let info = info(&der[0]).expect("info");
        assert_eq!(info.key_type, KeyType::Ecdsa);
        assert!(!info.is_ca);
    }

    #[test]
    fn garbage_is_refused_with_kong_prefixes_and_without_echoing_it() {
        for junk in ["", "hello", "-----BEGIN CERTIFICATE-----\nzzzz\n-----END CERTIFICATE-----\n"] {
            let e = certificates(junk.as_bytes()).expect_err("refused");
            assert!(e.to_string().starts_with("invalid certificate: "), "{e}");
        }
        let fake_key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";
        let (cert, _) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let e = certified_key(cert.as_bytes(), fake_key.as_bytes()).expect_err("refused");
        assert!(e.to_string().starts_with("invalid key: "), "{e}");
        assert!(!e.to_string().contains("c2VjcmV0"));
    }

    #[test]
    fn settings_take_inline_pem_a_path_or_base64() {
        let (cert, _) = pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(read_setting(&cert).as_deref(), Some(cert.trim().as_bytes()));
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_bytes());
        assert_eq!(read_setting(&b64).as_deref(), Some(cert.as_bytes()));
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("c.pem");
        std::fs::write(&path, &cert).expect("write");
        assert_eq!(read_setting(path.to_str().expect("utf8")).as_deref(), Some(cert.as_bytes()));
        assert_eq!(read_setting("/nowhere/c.pem"), None);
    }
}
