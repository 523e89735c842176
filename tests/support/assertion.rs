//! Client assertions signed the way Entra ID clients sign them (RFC 7523 JWTs with PS256 or RS256),
//! so tests can present certificate credentials to `FakeEntra` without the proxy. The proxy has
//! its own signer; this one exists so the fake's checks can be proven to bite.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair};
use serde_json::{Value, json};

use super::{fixtures, jwt};

/// The only `client_assertion_type` Entra ID accepts.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PSS with SHA-256: what current Entra ID documentation asks for.
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256: what older clients send, with a SHA-1 `x5t`.
    Rs256,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::Ps256 => "PS256",
            Alg::Rs256 => "RS256",
        }
    }
}

pub struct RsaSigner {
    key: RsaKeyPair,
}

impl RsaSigner {
    pub fn from_pkcs8(der: &[u8]) -> RsaSigner {
        RsaSigner {
            key: RsaKeyPair::from_pkcs8(der).expect("an RSA PKCS#8 key ring accepts"),
        }
    }

    /// The key that belongs to the registered certificate (`fixtures::SP_CERT`).
    pub fn sp() -> RsaSigner {
        Self::from_pkcs8(&fixtures::sp_key_pkcs8())
    }

    /// A key unrelated to the registered certificate.
    pub fn forged() -> RsaSigner {
        Self::from_pkcs8(&fixtures::forged_key_pkcs8())
    }

    /// The RSAPublicKey DER (PKCS#1) that ring verifies against.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.public().as_ref().to_vec()
    }

    /// Signs `claims` under `header` with `alg` set; the header is taken as given otherwise, so
    /// tests can leave out or falsify thumbprints.
    pub fn sign(&self, alg: Alg, header: &Value, claims: &Value) -> String {
        let mut header = header.clone();
        header["alg"] = alg.name().into();
        self.sign_raw(alg, &header, claims)
    }

    /// Signs with `alg` under `header` exactly as given, even if its `alg` names another
    /// algorithm or none: for proving the verifier goes by what it trusts, not by the label.
    pub fn sign_raw(&self, alg: Alg, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let encoding: &'static dyn signature::RsaEncoding = match alg {
            Alg::Ps256 => &signature::RSA_PSS_SHA256,
            Alg::Rs256 => &signature::RSA_PKCS1_SHA256,
        };
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(encoding, &SystemRandom::new(), input.as_bytes(), &mut sig)
            .expect("RSA signing with a valid key and a modulus-sized buffer");
        format!("{input}.{}", B64.encode(sig))
    }
}

/// `x5t#S256`: base64url SHA-256 of the certificate DER.
pub fn x5t_s256(cert_der: &[u8]) -> String {
    B64.encode(ring::digest::digest(&ring::digest::SHA256, cert_der))
}

/// `x5t`: base64url SHA-1 of the certificate DER (the legacy thumbprint).
pub fn x5t(cert_der: &[u8]) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        cert_der,
    ))
}

/// One `x5c` entry: standard (not URL-safe) base64 of the DER, as RFC 7515 says.
pub fn x5c_entry(cert_der: &[u8]) -> String {
    STANDARD.encode(cert_der)
}

/// The header a current client sends: `x5t#S256`, plus `x5t` for RS256 as older clients send.
pub fn certificate_header(alg: Alg, cert_der: &[u8]) -> Value {
    let mut header = json!({ "typ": "JWT", "x5t#S256": x5t_s256(cert_der) });
    if alg == Alg::Rs256 {
        header["x5t"] = x5t(cert_der).into();
    }
    header
}

/// Claims of a valid assertion: `iss` = `sub` = client id, `aud` = the token URL, a fresh `jti`,
/// valid from now for 10 minutes.
pub fn assertion_claims(client_id: &str, token_url: &str) -> Value {
    let now = jwt::now();
    json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": unique_id(),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    })
}

/// A complete, valid certificate assertion for `client_id` at `token_url`.
pub fn certificate_assertion(
    signer: &RsaSigner,
    alg: Alg,
    cert_der: &[u8],
    client_id: &str,
    token_url: &str,
) -> String {
    signer.sign(
        alg,
        &certificate_header(alg, cert_der),
        &assertion_claims(client_id, token_url),
    )
}

/// Header and claims of a compact JWS, signature unchecked.
pub fn decode_unverified(token: &str) -> Option<(Value, Value)> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let decode = |part: &str| -> Option<Value> {
        serde_json::from_slice(&B64.decode(part).ok()?)
            .ok()
            .filter(Value::is_object)
    };
    Some((decode(header)?, decode(payload)?))
}

/// Sets each top-level member of `overrides` on `base`; a `null` removes the member instead.
pub fn merge(base: &mut Value, overrides: &Value) {
    let (Some(base), Some(overrides)) = (base.as_object_mut(), overrides.as_object()) else {
        panic!("merge works on JSON objects only");
    };
    for (name, value) in overrides {
        if value.is_null() {
            base.remove(name);
        } else {
            base.insert(name.clone(), value.clone());
        }
    }
}

/// A random GUID-shaped id, for `jti` claims.
pub fn unique_id() -> String {
    let h = format!("{:032x}", fastrand::u128(..));
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}
