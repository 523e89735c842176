//! Client assertions for certificate credentials: a short-lived JWT signed with the private key of
//! a certificate registered on the app registration, sent instead of a client secret.
//!
//! The files are read at every fetch, so a renewed certificate (cert-manager, Key Vault sync) is
//! used without a restart. The key never leaves this module and is never printed.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaEncoding, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{AssertionAlgorithm, CertificateFiles};

/// Entra ID accepts assertions valid for up to ten minutes; five leaves room for clock skew.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);
pub(super) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A certificate and its private key, ready to sign.
pub(super) struct SigningCertificate {
    key: RsaKeyPair,
    certificate_der: Vec<u8>,
}

impl SigningCertificate {
    /// Reads the certificate and its key: PEM (key in the same file or in `private_key_file`,
    /// PKCS#8 or PKCS#1) or a password-less PKCS#12 file.
    pub(super) fn load(files: &CertificateFiles) -> Result<Self, String> {
        let path = &files.certificate_file;
        let bytes = read(path)?;
        let (certificate_der, key) = if looks_like_pem(&bytes) {
            let certificate = CertificateDer::pem_slice_iter(&bytes)
                .next()
                .ok_or_else(|| format!("{}: holds no PEM CERTIFICATE", path.display()))?
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let key = match &files.private_key_file {
                Some(key_path) => pem_key(key_path, &read(key_path)?)?,
                None => pem_key(path, &bytes)?,
            };
            (certificate.as_ref().to_vec(), key)
        } else {
            if files.private_key_file.is_some() {
                return Err(format!(
                    "{}: a PKCS#12 file carries its own key; remove private_key_file",
                    path.display()
                ));
            }
            pkcs12(path, &bytes)?
        };
        // The RSAPublicKey sits verbatim inside the certificate's SubjectPublicKeyInfo: a key
        // from another pair (a half-done rotation) is caught here, not as AADSTS700027 later.
        let public_key = key.public().as_ref();
        if !certificate_der
            .windows(public_key.len())
            .any(|window| window == public_key)
        {
            return Err(format!(
                "{}: the private key does not belong to the certificate",
                files.private_key_file.as_deref().unwrap_or(path).display()
            ));
        }
        Ok(Self {
            key,
            certificate_der,
        })
    }

    /// A signed client assertion for `client_id` at the token endpoint `audience`.
    pub(super) fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        algorithm: AssertionAlgorithm,
        send_x5c: bool,
    ) -> Result<String, String> {
        let rng = SystemRandom::new();
        let (alg, encoding): (&str, &'static dyn RsaEncoding) = match algorithm {
            AssertionAlgorithm::Ps256 => ("PS256", &RSA_PSS_SHA256),
            AssertionAlgorithm::Rs256 => ("RS256", &RSA_PKCS1_SHA256),
        };
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &self.certificate_der);
        let sha1 = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &self.certificate_der,
        );
        let mut header = serde_json::json!({
            "alg": alg,
            "typ": "JWT",
            "x5t#S256": URL_SAFE_NO_PAD.encode(sha256),
            // Older tenants look the certificate up by its SHA-1 thumbprint.
            "x5t": URL_SAFE_NO_PAD.encode(sha1),
        });
        if send_x5c {
            header["x5c"] = serde_json::json!([STANDARD.encode(&self.certificate_der)]);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is before 1970".to_string())?
            .as_secs();
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": unique_id(&rng)?,
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(encoding, &rng, signing_input.as_bytes(), &mut signature)
            .map_err(|_| "signing the client assertion failed".to_string())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn pem_key(path: &Path, bytes: &[u8]) -> Result<RsaKeyPair, String> {
    let key = PrivateKeyDer::from_pem_slice(bytes).map_err(|_| {
        format!(
            "{}: holds no unencrypted PEM private key (PRIVATE KEY or RSA PRIVATE KEY); \
             set private_key_file if the key is in another file",
            path.display()
        )
    })?;
    let parsed = match &key {
        PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
        _ => return Err(not_rsa(path)),
    };
    parsed.map_err(|e| rejected(path, &e))
}

fn not_rsa(path: &Path) -> String {
    format!(
        "{}: the key is not RSA; Entra ID certificate credentials need an RSA key",
        path.display()
    )
}

/// ring's rejection reasons name the key's shape, never its content.
fn rejected(path: &Path, error: &ring::error::KeyRejected) -> String {
    if error.to_string() == "WrongAlgorithm" {
        not_rsa(path)
    } else {
        format!("{}: unusable RSA private key ({error})", path.display())
    }
}

fn pkcs12(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, RsaKeyPair), String> {
    let store =
        p12_keystore::KeyStore::from_pkcs12(bytes, "", p12_keystore::Pkcs12ImportPolicy::Strict)
            .map_err(|e| {
                format!(
                    "{}: neither PEM nor a password-less PKCS#12 file ({e})",
                    path.display()
                )
            })?;
    let (_, chain) = store.private_key_chain().ok_or_else(|| {
        format!(
            "{}: the PKCS#12 file holds no private key with its certificate",
            path.display()
        )
    })?;
    let certificate = chain
        .certs()
        .first()
        .ok_or_else(|| format!("{}: the PKCS#12 file holds no certificate", path.display()))?;
    let key = RsaKeyPair::from_pkcs8(chain.key().as_der()).map_err(|e| rejected(path, &e))?;
    Ok((certificate.as_der().to_vec(), key))
}

/// A random UUID (version 4 layout), so no two assertions share a `jti`.
fn unique_id(rng: &SystemRandom) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes)
        .map_err(|_| "the system random generator failed".to_string())?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}
