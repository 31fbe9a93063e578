//! TLS material as the Admin API and kong.conf take it (`tls::material`): arbitrary bytes as a PEM
//! chain, a private key, a certificate and key pair, and as one DER certificate. Checked: nothing
//! panics, and what parses as a chain reports its key type, CA flag and expiry.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::tls::material;

fuzz_target!(|data: &[u8]| {
    if let Ok(chain) = material::certificates(data) {
        assert!(!chain.is_empty());
        for der in &chain {
            assert!(material::info(der).is_ok(), "a chain certificate that does not parse");
            assert_eq!(material::digest(der).len(), 64);
        }
    }
    let _ = material::private_key(data);
    let (cert, key) = data.split_at(data.len() / 2);
    let _ = material::certified_key(cert, key);
    let _ = material::info(data);
});
