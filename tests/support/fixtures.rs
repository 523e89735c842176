//! The committed test keys and certificates in `tests/fixtures/` (see its README).
//!
//! The PEM texts are compiled in, so the fakes work from any working directory (the sandbox
//! example included); `path` is for tests that hand a file name to the proxy.

use std::path::PathBuf;
use std::sync::LazyLock;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// RSA 2048 key of the fake service principal, PKCS#8.
pub const SP_KEY_PK8: &str = "sp-key.pk8.pem";
/// The same key, PKCS#1 (`BEGIN RSA PRIVATE KEY`).
pub const SP_KEY_RSA: &str = "sp-key.rsa.pem";
/// Self-signed certificate for that key: the one `EntraConfig::default()` registers.
pub const SP_CERT: &str = "sp-cert.pem";
/// Certificate followed by the PKCS#8 key, as `AZURE_CLIENT_CERTIFICATE_PATH` files are.
pub const SP_CERT_AND_KEY: &str = "sp-cert-and-key.pem";
/// Password-less PKCS#12 with OpenSSL 3 default algorithms (PBES2/AES-256, SHA-256 MAC).
pub const SP_P12: &str = "sp.p12";
/// Password-less PKCS#12 with legacy algorithms (RC2/3DES, SHA-1 MAC).
pub const SP_LEGACY_P12: &str = "sp-legacy.p12";
/// An unrelated RSA 2048 key, PKCS#8: signs assertions that claim `SP_CERT` but must be refused.
pub const FORGED_KEY_PK8: &str = "forged-key.pk8.pem";
/// Self-signed certificate of the forged key, registered nowhere.
pub const FORGED_CERT: &str = "forged-cert.pem";

const SP_CERT_PEM: &str = include_str!("../fixtures/sp-cert.pem");
const SP_KEY_PK8_PEM: &str = include_str!("../fixtures/sp-key.pk8.pem");
const FORGED_KEY_PK8_PEM: &str = include_str!("../fixtures/forged-key.pk8.pem");

/// Absolute path of a fixture file, e.g. `path(SP_CERT_AND_KEY)`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// DER bytes of `sp-cert.pem`.
pub fn sp_cert_der() -> Vec<u8> {
    CertificateDer::from_pem_slice(SP_CERT_PEM.as_bytes())
        .expect("sp-cert.pem holds a certificate")
        .to_vec()
}

/// PKCS#8 DER bytes of `sp-key.pk8.pem`.
pub fn sp_key_pkcs8() -> Vec<u8> {
    PrivatePkcs8KeyDer::from_pem_slice(SP_KEY_PK8_PEM.as_bytes())
        .expect("sp-key.pk8.pem holds a PKCS#8 key")
        .secret_pkcs8_der()
        .to_vec()
}

/// RSAPublicKey DER (PKCS#1) of `sp-key.pk8.pem`, the key in `sp-cert.pem`. Parsed once: ring
/// validates RSA keys thoroughly, which is slow in unoptimised test builds.
pub fn sp_public_key_der() -> Vec<u8> {
    static KEY: LazyLock<Vec<u8>> = LazyLock::new(|| {
        ring::signature::RsaKeyPair::from_pkcs8(&sp_key_pkcs8())
            .expect("sp-key.pk8.pem is an RSA key ring accepts")
            .public()
            .as_ref()
            .to_vec()
    });
    KEY.clone()
}

/// PKCS#8 DER bytes of `forged-key.pk8.pem`.
pub fn forged_key_pkcs8() -> Vec<u8> {
    PrivatePkcs8KeyDer::from_pem_slice(FORGED_KEY_PK8_PEM.as_bytes())
        .expect("forged-key.pk8.pem holds a PKCS#8 key")
        .secret_pkcs8_der()
        .to_vec()
}
