//! The certificates a snapshot serves, by SNI, and Kong's choice among them: the exact name, then
//! `*.suffix` (the first label replaced; three labels or more), then `prefix.*` (the last label
//! replaced), then `*`, then the node's default. Lookups slice the server name and probe hash maps:
//! no allocation and no lock per handshake, whatever the number of certificates.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_rustls::rustls::SignatureScheme;
use tokio_rustls::rustls::sign::CertifiedKey;

use super::material::KeyType;

/// One certificate entity as served: its pair and, if set, the alternative pair of the other key
/// type (`cert_alt`/`key_alt`), chosen by what the client can verify.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub id: uuid::Uuid,
    pub main: Arc<CertifiedKey>,
    pub main_type: KeyType,
    pub alt: Option<(Arc<CertifiedKey>, KeyType)>,
}

impl CertPair {
    /// The pair the client can use: ECDSA when it offers an ECDSA scheme and one is held, else the
    /// other (as OpenSSL picks between the two pairs Kong sets).
    pub fn for_client(&self, schemes: &[SignatureScheme]) -> &Arc<CertifiedKey> {
        let Some((alt, alt_type)) = &self.alt else { return &self.main };
        let ecdsa = schemes.iter().any(|s| {
            matches!(
                s,
                SignatureScheme::ECDSA_NISTP256_SHA256
                    | SignatureScheme::ECDSA_NISTP384_SHA384
                    | SignatureScheme::ECDSA_NISTP521_SHA512
            )
        });
        let wanted = if ecdsa { KeyType::Ecdsa } else { KeyType::Rsa };
        if self.main_type == wanted {
            &self.main
        } else if *alt_type == wanted {
            alt
        } else {
            &self.main
        }
    }
}

/// SNI names to certificates. Wildcard names are kept by their fixed part.
#[derive(Debug, Default, Clone)]
pub struct CertificateTable {
    exact: HashMap<Box<str>, Arc<CertPair>>,
    /// `*.b.example.com` under `.b.example.com`.
    leading: HashMap<Box<str>, Arc<CertPair>>,
    /// `www.example.*` under `www.example.`.
    trailing: HashMap<Box<str>, Arc<CertPair>>,
    catch_all: Option<Arc<CertPair>>,
}

impl CertificateTable {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.leading.is_empty() && self.trailing.is_empty() && self.catch_all.is_none()
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.leading.len() + self.trailing.len() + usize::from(self.catch_all.is_some())
    }

    /// Adds an SNI name (already validated by the `snis` schema, lowercase).
    pub fn insert(&mut self, name: &str, pair: Arc<CertPair>) {
        if name == "*" {
            self.catch_all = Some(pair);
        } else if let Some(rest) = name.strip_prefix('*') {
            self.leading.insert(rest.into(), pair);
        } else if let Some(rest) = name.strip_suffix('*') {
            self.trailing.insert(rest.into(), pair);
        } else {
            self.exact.insert(name.into(), pair);
        }
    }

    /// The certificate for a server name, in Kong's order; `None` means the default.
    pub fn select(&self, server_name: &str) -> Option<&Arc<CertPair>> {
        if let Some(p) = self.exact.get(server_name) {
            return Some(p);
        }
        // A server name that is itself a wildcard is looked up as given.
        if server_name.contains('*') {
            return match (server_name.strip_prefix('*'), server_name.strip_suffix('*')) {
                (Some(""), _) => self.catch_all.as_ref(),
                (Some(rest), _) => self.leading.get(rest),
                (None, Some(rest)) => self.trailing.get(rest),
                (None, None) => None,
            };
        }
        if !self.leading.is_empty()
            && let Some(dot) = server_name.find('.')
        {
            let rest = &server_name[dot..];
            // `*.suffix` needs at least three labels: `a.b.c` → `*.b.c`.
            if rest[1..].contains('.')
                && let Some(p) = self.leading.get(rest)
            {
                return Some(p);
            }
        }
        if !self.trailing.is_empty()
            && let Some(dot) = server_name.rfind('.')
            && let Some(p) = self.trailing.get(&server_name[..=dot])
        {
            return Some(p);
        }
        self.catch_all.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(n: u128) -> Arc<CertPair> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert =
            rcgen::CertificateParams::new(vec!["x.test".into()]).expect("params").self_signed(&key).expect("cert");
        let ck =
            crate::tls::material::certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).expect("pair");
        Arc::new(CertPair { id: uuid::Uuid::from_u128(n), main: ck, main_type: KeyType::Ecdsa, alt: None })
    }

    fn picked(t: &CertificateTable, sni: &str) -> Option<u128> {
        t.select(sni).map(|p| p.id.as_u128())
    }

    #[test]
    fn kong_order_exact_then_leading_then_trailing_then_catch_all() {
        let mut t = CertificateTable::default();
        t.insert("www.example.com", pair(1));
        t.insert("*.example.com", pair(2));
        t.insert("www.example.*", pair(3));
        assert_eq!(picked(&t, "www.example.com"), Some(1));
        assert_eq!(picked(&t, "api.example.com"), Some(2));
        assert_eq!(picked(&t, "www.example.org"), Some(3));
        // `*.example.com` does not cover `example.com` (two labels) nor `a.b.example.com`.
        assert_eq!(picked(&t, "example.com"), None);
        assert_eq!(picked(&t, "a.b.example.com"), None);
        assert_eq!(picked(&t, "other.test"), None);
        t.insert("*", pair(4));
        assert_eq!(picked(&t, "other.test"), Some(4));
        assert_eq!(picked(&t, "localhost"), Some(4));
    }

    #[test]
    fn odd_server_names_fall_to_the_default() {
        let mut t = CertificateTable::default();
        t.insert("*.example.com", pair(1));
        for sni in ["", ".", "..", ".example.com", "*.example.com.x", "a.", "é.example"] {
            let _ = t.select(sni);
        }
        assert_eq!(picked(&t, "*.example.com"), Some(1));
        assert_eq!(picked(&t, "a.*.example.com"), None);
    }
}
