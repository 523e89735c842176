//! `client_assertion` checks: an RS256/PS256 JWT signed with the registered certificate's key, or
//! an HS256 federated token from the trusted issuer. Each check fails on its own, with the code
//! Entra ID uses for it, so a test can tell which one a client tripped.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use ring::signature::{self, UnparsedPublicKey};
use serde_json::Value;

use super::assertion::{self, JWT_BEARER};
use super::{Refusal, State, jwt, missing};

/// Clock skew Entra ID tolerates on `nbf`.
const SKEW_SECS: u64 = 60;
/// Longest `exp - nbf` accepted: 10 minutes plus the skew.
const MAX_WINDOW_SECS: u64 = 600 + SKEW_SECS;

pub(super) fn check(
    state: &State,
    client_id: &str,
    assertion_type: Option<&str>,
    token: &str,
) -> Result<(), Refusal> {
    let decoded = assertion::decode_unverified(token);
    if let Some(decoded) = &decoded {
        *state.last_assertion.lock().expect("assertion lock") = Some(decoded.clone());
    }
    match assertion_type {
        Some(JWT_BEARER) => {}
        Some(other) => {
            return Err(Refusal::new(
                400,
                "invalid_request",
                90011,
                format!("Unexpected client assertion type '{other}'."),
            ));
        }
        None => return Err(missing("client_assertion_type")),
    }
    let Some((header, claims)) = decoded else {
        return Err(Refusal::new(
            400,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        ));
    };
    match header["alg"].as_str() {
        Some("HS256") => federated(state, client_id, token),
        Some(alg @ ("PS256" | "RS256")) => {
            certificate(state, client_id, alg, token, &header, &claims)
        }
        _ => Err(invalid(format!(
            "Client assertion failed signature validation. The signing algorithm {} is not \
             supported; use PS256 or RS256.",
            header["alg"]
        ))),
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::new(401, "invalid_client", 700027, message)
}

fn out_of_time(message: impl Into<String>) -> Refusal {
    Refusal::new(401, "invalid_client", 700024, message)
}

fn certificate(
    state: &State,
    client_id: &str,
    alg: &str,
    token: &str,
    header: &Value,
    claims: &Value,
) -> Result<(), Refusal> {
    let cfg = &state.cfg;
    let key_not_found = |thumbprint: &str| {
        invalid(format!(
            "Client assertion failed signature validation. [Reason - The key was not found., \
             Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, \
             Graph Explorer or directly use MS Graph to see configured keys for app Id \
             '{client_id}'.]"
        ))
    };
    let s256 = header.get("x5t#S256").and_then(Value::as_str);
    let sha1 = header.get("x5t").and_then(Value::as_str);
    match (s256, sha1) {
        (None, None) => return Err(key_not_found("(no x5t#S256 or x5t header)")),
        // Current clients identify the key by SHA-256; only the legacy RS256 flavour gets by with SHA-1.
        (None, Some(_)) if alg == "PS256" => return Err(key_not_found("(PS256 without x5t#S256)")),
        _ => {}
    }
    if let Some(s256) = s256.filter(|t| *t != assertion::x5t_s256(&cfg.certificate_der)) {
        return Err(key_not_found(s256));
    }
    if let Some(sha1) = sha1.filter(|t| *t != assertion::x5t(&cfg.certificate_der)) {
        return Err(key_not_found(sha1));
    }
    if let Some(x5c) = header.get("x5c") {
        let first = x5c
            .as_array()
            .and_then(|chain| chain.first())
            .and_then(Value::as_str)
            .and_then(|der| STANDARD.decode(der).ok());
        if first.as_deref() != Some(cfg.certificate_der.as_slice()) {
            return Err(invalid(
                "Client assertion failed signature validation. The first certificate in the \
                 x5c header is not the registered certificate.",
            ));
        }
    }
    let (input, signature) = token
        .rsplit_once('.')
        .expect("decoded tokens have three parts");
    let verification: &'static dyn signature::VerificationAlgorithm = match alg {
        "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
        _ => &signature::RSA_PKCS1_2048_8192_SHA256,
    };
    let verified = B64.decode(signature).ok().is_some_and(|signature| {
        UnparsedPublicKey::new(verification, &cfg.certificate_public_key)
            .verify(input.as_bytes(), &signature)
            .is_ok()
    });
    if !verified {
        return Err(invalid(format!(
            "Client assertion contains an invalid signature. [Reason - The {alg} signature does \
             not verify with the registered certificate's key.]"
        )));
    }

    let token_url = state.token_url();
    if claims["aud"] != token_url.as_str() {
        return Err(invalid(format!(
            "The audience claim of the client assertion is {}; it must be the token endpoint \
             '{token_url}'.",
            claims["aud"]
        )));
    }
    for name in ["iss", "sub"] {
        if claims[name] != client_id {
            return Err(invalid(format!(
                "The '{name}' claim of the client assertion is {}; it must be the client id \
                 '{client_id}'.",
                claims[name]
            )));
        }
    }
    let jti = claims["jti"]
        .as_str()
        .filter(|jti| !jti.is_empty())
        .ok_or_else(|| invalid("The client assertion has no 'jti' claim."))?;
    let (Some(nbf), Some(exp)) = (claims["nbf"].as_u64(), claims["exp"].as_u64()) else {
        return Err(out_of_time(
            "Client assertion is not within its valid time range: 'nbf' and 'exp' must both be \
             numeric dates.",
        ));
    };
    let now = jwt::now();
    if nbf > now + SKEW_SECS || exp <= now {
        return Err(out_of_time(format!(
            "Client assertion is not within its valid time range. Current time: {now}, assertion \
             valid from {nbf}, expiry time of assertion {exp}."
        )));
    }
    if exp.saturating_sub(nbf) > MAX_WINDOW_SECS {
        return Err(out_of_time(format!(
            "Client assertion is valid for {} seconds (nbf {nbf} to exp {exp}); at most \
             {MAX_WINDOW_SECS} are allowed.",
            exp.saturating_sub(nbf)
        )));
    }
    // Checked last, so an assertion refused for another reason does not burn its jti.
    if !state
        .assertion_jtis
        .lock()
        .expect("jti lock")
        .insert(jti.to_owned())
    {
        return Err(invalid(format!(
            "The client assertion with jti '{jti}' was already used; assertions cannot be replayed."
        )));
    }
    Ok(())
}

fn federated(state: &State, client_id: &str, token: &str) -> Result<(), Refusal> {
    let trust = &state.cfg.federated;
    let no_match = |claims: &Value| {
        let text = |name: &str| {
            claims[name]
                .as_str()
                .map_or_else(|| claims[name].to_string(), str::to_owned)
        };
        Refusal::new(
            401,
            "invalid_client",
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion \
                 Issuer: '{}'. Assertion Subject: '{}'. Assertion Audience: '{}'. Application: \
                 '{client_id}'.",
                text("iss"),
                text("sub"),
                text("aud"),
            ),
        )
    };
    // Entra ID finds the credential by issuer before it can fetch that issuer's signing keys.
    let (_, unverified) = assertion::decode_unverified(token).expect("decoded by the caller");
    if unverified["iss"] != trust.issuer.as_str() {
        return Err(no_match(&unverified));
    }
    let claims = jwt::verify_signature(token, &trust.key).map_err(|e| {
        invalid(format!(
            "Client assertion contains an invalid signature. [Reason - {e}; the token is not \
             signed by a key of issuer '{}'.]",
            trust.issuer
        ))
    })?;
    let audience_matches = match &claims["aud"] {
        Value::String(aud) => *aud == trust.audience,
        Value::Array(auds) => auds.iter().any(|aud| *aud == trust.audience.as_str()),
        _ => false,
    };
    if claims["sub"] != trust.subject.as_str() || !audience_matches {
        return Err(no_match(&claims));
    }
    let now = jwt::now();
    let exp = claims["exp"].as_u64();
    let nbf = claims["nbf"].as_u64().unwrap_or(0);
    if exp.is_none_or(|exp| exp <= now) || nbf > now + SKEW_SECS {
        return Err(out_of_time(format!(
            "Client assertion is not within its valid time range. Current time: {now}, assertion \
             valid from {nbf}, expiry time of assertion {}.",
            claims["exp"]
        )));
    }
    Ok(())
}
