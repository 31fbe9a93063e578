//! Self-signed pairs the node makes itself: the default certificate of its TLS listeners (Kong's
//! `kong-default-ecdsa` under `<prefix>/ssl/`, made on first start) and the cluster pair of
//! `tollgate hybrid gen-cert` (Kong's `gen_cert`: EC P-384, `CN=kong_clustering`).
//!
//! Kong also makes an RSA 2048 default pair; the ring backend cannot generate RSA keys, so the
//! default here is ECDSA P-256 alone, which every TLS 1.2+ client accepts. An RSA pair given in
//! `ssl_cert` is served beside it as Kong serves both.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SerialNumber};

/// A certificate and its private key, in PEM.
#[derive(Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn now_plus_days(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    let later = now.checked_add(time::Duration::days(i64::from(days))).unwrap_or(now);
    (now, later)
}

/// The default server pair: Kong's subject, valid 20×365 days, CA:FALSE, serverAuth + clientAuth.
pub fn default_pair() -> Result<Pair, GenerateError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::StateOrProvinceName, "California");
    dn.push(DnType::LocalityName, "San Francisco");
    dn.push(DnType::OrganizationName, "Kong");
    dn.push(DnType::OrganizationalUnitName, "IT Department");
    dn.push(DnType::CommonName, "localhost");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(SerialNumber::from(rand::random::<[u8; 16]>().to_vec()));
    (params.not_before, params.not_after) = now_plus_days(20 * 365);
    let cert = params.self_signed(&key)?;
    Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The cluster pair of `hybrid gen-cert`: EC P-384, subject and issuer `CN=kong_clustering`.
pub fn cluster_pair(days: u32) -> Result<Pair, GenerateError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kong_clustering");
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from(rand::random::<[u8; 16]>().to_vec()));
    (params.not_before, params.not_after) = now_plus_days(days);
    let cert = params.self_signed(&key)?;
    Ok(Pair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// The default pair under `<prefix>/ssl/`, made on first use and read back afterwards (so clients
/// that pinned it keep seeing the same certificate across restarts).
pub fn ensure_default(prefix: &Path) -> Result<Pair, GenerateError> {
    let dir = prefix.join("ssl");
    let cert_path = dir.join("tollgate-default-ecdsa.crt");
    let key_path = dir.join("tollgate-default-ecdsa.key");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GenerateError::Io { path, source }
    };
    if let (Ok(cert_pem), Ok(key_pem)) = (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path)) {
        return Ok(Pair { cert_pem, key_pem });
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let pair = default_pair()?;
    write_file(&cert_path, &pair.cert_pem, 0o644).map_err(io(&cert_path))?;
    write_file(&key_path, &pair.key_pem, 0o600).map_err(io(&key_path))?;
    Ok(pair)
}

/// Writes a new file with `mode`, refusing to replace one that exists.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::material::{self, KeyType};

    #[test]
    fn the_default_pair_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let first = ensure_default(dir.path()).expect("made");
        let again = ensure_default(dir.path()).expect("read");
        assert_eq!(first.cert_pem, again.cert_pem);
        assert!(material::certified_key(first.cert_pem.as_bytes(), first.key_pem.as_bytes()).is_ok());
        let der = material::certificates(first.cert_pem.as_bytes()).expect("chain");
        let info = material::info(&der[0]).expect("info");
        assert_eq!(info.key_type, KeyType::Ecdsa);
        assert!(!info.is_ca);
        use std::os::unix::fs::PermissionsExt as _;
        let mode =
            std::fs::metadata(dir.path().join("ssl/tollgate-default-ecdsa.key")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_cluster_pair_is_p384_for_the_days_asked() {
        let pair = cluster_pair(10).expect("made");
        let der = material::certificates(pair.cert_pem.as_bytes()).expect("chain");
        let info = material::info(&der[0]).expect("info");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!((info.not_after - now - 10 * 86400).abs() < 60);
        assert!(material::certified_key(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes()).is_ok());
    }
}
