//! The proxy's own TLS listeners: a certificate and key from PEM files, swapped in place when the
//! files are rotated, so the next handshake gets the new certificate and open connections carry on.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// The certificate a listener presents; [`ListenerCertificate::replace`] swaps it atomically.
#[derive(Debug)]
pub struct ListenerCertificate(ArcSwap<CertifiedKey>);

impl ListenerCertificate {
    pub fn new(certified: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self(ArcSwap::new(certified)))
    }

    pub fn replace(&self, certified: Arc<CertifiedKey>) {
        self.0.store(certified);
    }
}

impl ResolvesServerCert for ListenerCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// TLS 1.2 and 1.3 with rustls' safe defaults, offering `alpn` in order of preference.
pub fn server_config(
    certificate: Arc<ListenerCertificate>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(config)
}

/// A certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1), checked to
/// belong together. `key` is the configuration key holding both, e.g. `listen.tls`.
pub fn load_certificate(
    certificate_file: &Path,
    key_file: &Path,
    key: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_chain(certificate_file, &format!("{key}.certificate_file"))?;
    let key_error = |problem: String| TlsError::File {
        key: format!("{key}.key_file"),
        path: key_file.display().to_string(),
        problem,
    };
    // The parser's message never quotes key material.
    let private_key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        key_error(format!(
            "no PEM private key (PKCS#8, PKCS#1 or SEC1) could be read: {e}"
        ))
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, private_key, &provider)
        .map(Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                key_error("is not the key of the certificate in certificate_file".into())
            }
            other => key_error(format!("cannot be used: {other}")),
        })
}

/// The PEM certificates in `path`, at least one.
pub(super) fn read_chain(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |problem: String| TlsError::File {
        key: key.to_string(),
        path: path.display().to_string(),
        problem,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if chain.is_empty() {
        return Err(error("holds no PEM certificate".into()));
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn keys_load_in_pkcs8_pkcs1_and_sec1() {
        for (cert, key) in [
            ("upstream-cert.pem", "upstream-key.pk8.pem"),
            ("listener-cert.pem", "listener-key.rsa.pem"),
            ("listener-rotated-cert.pem", "listener-rotated-key.ec.pem"),
        ] {
            let loaded = load_certificate(&fixture(cert), &fixture(key), "listen.tls");
            assert!(loaded.is_ok(), "{cert} + {key}: {:?}", loaded.err());
        }
    }

    #[test]
    fn a_key_of_another_certificate_or_a_missing_file_is_named() {
        let mismatch = load_certificate(
            &fixture("listener-cert.pem"),
            &fixture("listener-rotated-key.ec.pem"),
            "listen.tls",
        )
        .expect_err("mismatched");
        let text = mismatch.to_string();
        assert!(text.starts_with("listen.tls.key_file "), "{text}");
        assert!(text.contains("is not the key of the certificate"), "{text}");

        let missing = load_certificate(
            &fixture("nope.pem"),
            &fixture("listener-key.rsa.pem"),
            "admin.tls",
        )
        .expect_err("missing");
        assert!(
            missing
                .to_string()
                .starts_with("admin.tls.certificate_file "),
            "{missing}"
        );
        // A key file given as the certificate: no certificate in it.
        let swapped = load_certificate(
            &fixture("listener-key.rsa.pem"),
            &fixture("listener-cert.pem"),
            "listen.tls",
        )
        .expect_err("swapped");
        let text = swapped.to_string();
        assert!(text.contains("holds no PEM certificate"), "{text}");
        assert!(!text.contains("MII"), "no key material in errors: {text}");
    }
}
