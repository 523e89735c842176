//! Which keyless client an OIDC token is, if any: the signature against the issuer's keys (RS256,
//! PS256 or ES256 only: never `none`, never a symmetric algorithm, so a public key can never be
//! used as an HMAC secret), `iss` exactly, `aud` among the token's audiences, `exp` and `nbf`
//! with at most 60 s of skew, then the claim patterns. The first client in configuration order
//! whose issuer, audience and claims match is the caller.
//!
//! A verified token is remembered (by its SHA-256, until it expires): git sends the same one with
//! every request of a clone, and a signature check costs more than the rest of a request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::IssuerKeys;
use crate::config::ClientToken;
use crate::error::Unauthenticated;

/// Larger than any issuer's token (GitHub's and Kubernetes' are about 1 KiB, Entra ID's up to 4).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
const SKEW_SECONDS: u64 = 60;
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256];
/// Verified tokens remembered at once; beyond, expired ones are dropped, then all.
const MAX_REMEMBERED: usize = 4096;

/// A token's claims once its signature and lifetime are checked, or why not.
type Checked = Result<Map<String, Value>, Unauthenticated>;

pub struct TokenClient {
    /// The client's index among the snapshot's clients.
    pub index: usize,
    pub rule: ClientToken,
    pub keys: Arc<IssuerKeys>,
}

pub enum Verdict {
    Client(usize),
    Refused(Unauthenticated),
    /// The token names a key its issuer has not shown yet, and a fetch may bring it: wait for
    /// it, then verify again.
    AwaitKeys(Arc<IssuerKeys>),
}

pub struct TokenClients {
    clients: Box<[TokenClient]>,
    /// Token SHA-256 -> (client index, `exp`).
    remembered: Mutex<HashMap<[u8; 32], (usize, u64)>>,
}

impl TokenClients {
    pub fn new(clients: Vec<TokenClient>) -> Self {
        Self {
            clients: clients.into_boxed_slice(),
            remembered: Mutex::default(),
        }
    }

    /// `patient`: a token naming an unknown key may wait for a fetch (the first attempt); the
    /// attempt after that wait refuses it.
    pub fn verify(&self, token: &[u8], patient: bool) -> Verdict {
        if token.len() > MAX_TOKEN_BYTES {
            return Verdict::Refused(Unauthenticated::TokenTooLarge);
        }
        let Ok(token) = std::str::from_utf8(token) else {
            return Verdict::Refused(Unauthenticated::TokenMalformed);
        };
        let digest = crate::keys::sha256(token.as_bytes());
        let now = unix_now();
        if let Some(index) = self.remembered(&digest, now) {
            return Verdict::Client(index);
        }
        let (Some(header), Some(payload)) = (unverified_part(token, 0), unverified_part(token, 1))
        else {
            return Verdict::Refused(Unauthenticated::TokenMalformed);
        };
        // Read as text first: `none` and the HMAC algorithms are refused for what they are, not
        // as a header jsonwebtoken cannot parse.
        let named = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !ALGORITHMS.iter().any(|alg| format!("{alg:?}") == named) {
            return Verdict::Refused(Unauthenticated::TokenAlgorithm);
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Verdict::Refused(Unauthenticated::TokenMalformed);
        };
        let Some(issuer) = payload.get("iss").and_then(Value::as_str) else {
            return Verdict::Refused(Unauthenticated::TokenMalformed);
        };
        let mut refusal = Unauthenticated::TokenIssuer;
        let mut await_keys = None;
        // Clients of one issuer share its keys: the signature is checked once per key set.
        let mut checked: Vec<(&Arc<IssuerKeys>, Checked)> = Vec::new();
        for client in self.clients.iter().filter(|c| c.rule.issuer == issuer) {
            let keys = &client.keys;
            let claims = match checked.iter().find(|(seen, _)| Arc::ptr_eq(seen, keys)) {
                Some((_, claims)) => claims,
                None => {
                    let result = check_signature(token, &header, &client.keys);
                    if result == Err(Unauthenticated::TokenKey)
                        && patient
                        && client.keys.may_fetch_now()
                    {
                        await_keys = Some(client.keys.clone());
                    }
                    checked.push((keys, result));
                    &checked[checked.len() - 1].1
                }
            };
            let claims = match claims {
                Ok(claims) => claims,
                Err(why) => {
                    refusal = *why;
                    continue;
                }
            };
            if !has_audience(claims, &client.rule.audience) {
                refusal = Unauthenticated::TokenAudience;
                continue;
            }
            let matched = client.rule.claims.iter().all(|(name, pattern)| {
                claims
                    .get(name)
                    .and_then(Value::as_str)
                    .is_some_and(|value| pattern.matches(value))
            });
            if !matched {
                refusal = Unauthenticated::TokenClaims;
                continue;
            }
            let expiry = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
            self.remember(digest, client.index, expiry, now);
            return Verdict::Client(client.index);
        }
        match await_keys {
            Some(keys) if refusal == Unauthenticated::TokenKey => Verdict::AwaitKeys(keys),
            _ => Verdict::Refused(refusal),
        }
    }

    fn remembered(&self, digest: &[u8; 32], now: u64) -> Option<usize> {
        let remembered = self
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match remembered.get(digest) {
            Some((index, expiry)) if *expiry > now => Some(*index),
            _ => None,
        }
    }

    fn remember(&self, digest: [u8; 32], index: usize, expiry: u64, now: u64) {
        let mut remembered = self
            .remembered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, (_, expiry)| *expiry > now);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(digest, (index, expiry));
    }
}

/// The signature (with the key the header names), `exp` and `nbf`; the claims when all hold.
fn check_signature(token: &str, header: &jsonwebtoken::Header, keys: &IssuerKeys) -> Checked {
    let keys = keys.current();
    let key = keys
        .find(header.kid.as_deref())
        .ok_or(Unauthenticated::TokenKey)?;
    if !key.algorithms.contains(&header.alg) {
        return Err(Unauthenticated::TokenAlgorithm);
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = SKEW_SECONDS;
    validation.validate_nbf = true;
    // Checked per client: clients of one issuer may name different audiences.
    validation.validate_aud = false;
    jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
        .map(|data| data.claims)
        .map_err(|error| match error.kind() {
            ErrorKind::InvalidSignature => Unauthenticated::TokenSignature,
            ErrorKind::ExpiredSignature => Unauthenticated::TokenExpired,
            ErrorKind::ImmatureSignature => Unauthenticated::TokenNotYetValid,
            ErrorKind::InvalidAlgorithm => Unauthenticated::TokenAlgorithm,
            _ => Unauthenticated::TokenMalformed,
        })
}

/// The header (0) or the claims (1), before the signature is checked: only to pick the
/// algorithm and the keys to check it with.
fn unverified_part(token: &str, index: usize) -> Option<Map<String, Value>> {
    let part = token.split('.').nth(index)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn has_audience(claims: &Map<String, Value>, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience)),
        _ => false,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
