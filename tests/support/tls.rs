//! A TLS client for the tests, on rustls: connects with a chosen SNI and ALPN, trusting given roots
//! (or, to look at what the server presents, anything), optionally with a client certificate, and
//! speaks raw HTTP/1.1 over it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A certificate and key made for a test, in PEM.
#[derive(Clone)]
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCert {
    /// A self-signed ECDSA P-256 certificate for `names`.
    pub fn ecdsa(names: &[&str]) -> TestCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A self-signed ECDSA P-256 certificate for `names` that expired yesterday.
    pub fn expired(names: &[&str]) -> TestCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).expect("cert");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("cert pem")
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key pem")
    }
}

/// A certificate authority made for a test (CA:TRUE), signing leaf certificates.
pub struct TestCa {
    pub cert_pem: String,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa { cert_pem: cert.pem(), params, key }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("intermediate");
        TestCa { cert_pem: cert.pem(), params, key }
    }

    /// A leaf certificate for `names`, signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> TestCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("signed");
        TestCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("ca pem")
    }
}

/// How a test connects.
#[derive(Clone, Default)]
pub struct Connect {
    /// Trusted roots; empty: accept whatever the server presents.
    pub roots: Vec<CertificateDer<'static>>,
    pub alpn: Vec<&'static str>,
    pub client_cert: Option<TestCert>,
    /// Offer only RSA signature schemes (a client that cannot verify ECDSA).
    pub rsa_only: bool,
}

/// The RSA fixture (`tests/fixtures/rsa.*`, for `proxy.test` and `shop.test`).
pub fn rsa_fixture() -> TestCert {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    TestCert {
        cert_pem: std::fs::read_to_string(dir.join("rsa.crt")).expect("rsa.crt"),
        key_pem: std::fs::read_to_string(dir.join("rsa.key")).expect("rsa.key"),
    }
}

/// Accepts any server certificate but says it can verify RSA signatures only.
#[derive(Debug)]
struct RsaOnly(tollgate::tls::client::Pinned);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for RsaOnly {
    fn verify_server_cert(
        &self,
        e: &CertificateDer<'_>,
        i: &[CertificateDer<'_>],
        n: &ServerName<'_>,
        o: &[u8],
        t: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error> {
        self.0.verify_server_cert(e, i, n, o, t)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<tokio_rustls::rustls::client::danger::HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<tokio_rustls::rustls::client::danger::HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        use tokio_rustls::rustls::SignatureScheme as S;
        vec![S::RSA_PSS_SHA256, S::RSA_PSS_SHA384, S::RSA_PKCS1_SHA256, S::RSA_PKCS1_SHA384]
    }
}

fn config(c: &Connect) -> ClientConfig {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder =
        ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().expect("versions");
    let builder = if c.rsa_only {
        let any = tollgate::tls::client::Pinned::new(tollgate::tls::client::Trust::Any);
        builder.dangerous().with_custom_certificate_verifier(Arc::new(RsaOnly(any)))
    } else if c.roots.is_empty() {
        // Any server certificate: for tests that look at which one was presented.
        let any = tollgate::tls::client::Pinned::new(tollgate::tls::client::Trust::Any);
        builder.dangerous().with_custom_certificate_verifier(Arc::new(any))
    } else {
        let mut roots = RootCertStore::empty();
        for r in &c.roots {
            roots.add(r.clone()).expect("root");
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match &c.client_cert {
        Some(cert) => builder.with_client_auth_cert(vec![cert.der()], cert.key()).expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = c.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

/// A TLS connection to `addr`, sending `sni` as the server name (an IP sends no SNI).
pub async fn connect(addr: SocketAddr, sni: &str, c: &Connect) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| std::io::Error::other(e.to_string()))?;
    TlsConnector::from(Arc::new(config(c))).connect(name, tcp).await
}

/// The leaf certificate the server presented.
pub fn peer_leaf(tls: &TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("server certificate").clone().into_owned()
}

/// The ALPN protocol agreed on.
pub fn alpn(tls: &TlsStream<tokio::net::TcpStream>) -> Option<String> {
    tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())
}

/// An HTTP/1.1 response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// A header's value (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// `GET path` over a fresh TLS connection with `Connection: close`.
pub async fn get(addr: SocketAddr, sni: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut tls = connect(addr, sni, &Connect::default()).await.expect("TLS connection");
    request(&mut tls, host, path, headers).await
}

/// One request on an open TLS connection; reads until the server closes.
pub async fn request(
    tls: &mut TlsStream<tokio::net::TcpStream>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_string(), body: body.to_string() }
}
