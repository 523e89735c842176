//! Minimal HS256 JWTs: enough for the fakes to issue tokens and to refuse forged or expired ones.
//! Real Entra ID signs with RS256; a shared HMAC key keeps the fakes dependency-free while the
//! check stays cryptographic. The fake workload-identity issuer (federated tokens) uses it too.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn mac(key: &[u8], signing_input: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(signing_input.as_bytes());
    mac
}

pub fn sign(claims: &Value, key: &[u8]) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let signature = B64.encode(mac(key, &input).finalize().into_bytes());
    format!("{input}.{signature}")
}

/// Returns the claims of a token signed with `key` whose `exp` is still in the future.
pub fn verify(token: &str, key: &[u8]) -> Result<Value, String> {
    let claims = verify_signature(token, key)?;
    let exp = claims["exp"]
        .as_u64()
        .ok_or("exp missing or not a number")?;
    if exp <= now() {
        return Err(format!("expired at {exp}"));
    }
    Ok(claims)
}

/// Returns the claims of a token signed with `key`, leaving every claim to the caller: the fake
/// Entra ID tells a bad signature apart from a bad time window.
pub fn verify_signature(token: &str, key: &[u8]) -> Result<Value, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS (three dot-separated parts)".into());
    };
    let decode_json = |part: &str, what: &str| -> Result<Value, String> {
        let bytes = B64
            .decode(part)
            .map_err(|e| format!("{what} is not base64url: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{what} is not JSON: {e}"))
    };
    // Checked before the signature so "alg":"none" and key-confusion tricks never get that far.
    let alg = decode_json(header, "header")?["alg"].clone();
    if alg != "HS256" {
        return Err(format!("alg must be HS256, got {alg}"));
    }
    let signature = B64
        .decode(signature)
        .map_err(|e| format!("signature is not base64url: {e}"))?;
    mac(key, &format!("{header}.{payload}"))
        .verify_slice(&signature)
        .map_err(|_| "bad signature".to_owned())?;
    decode_json(payload, "payload")
}
