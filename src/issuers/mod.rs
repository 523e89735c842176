//! The signing keys of the OIDC issuers that keyless clients name (GitHub Actions, a Kubernetes
//! cluster, Azure Pipelines, Entra ID): found by OIDC discovery over TLS, or read from a JWKS
//! file, kept per issuer across reloads, fetched again every 15 minutes and when a token names a
//! key not yet known, at most once a minute for that reason. Keys are only ever fetched from the
//! issuers the configuration names, and only over https (http only for loopback, as elsewhere).

pub mod verify;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::{ClientProof, Config, IssuerKeySource, is_loopback_host};

/// Keys are fetched again this often, so a key the issuer dropped stops being trusted.
const REFRESH: Duration = Duration::from_secs(15 * 60);
/// A token naming an unknown key makes the proxy fetch again, but no more often than this.
const ON_DEMAND_INTERVAL: Duration = Duration::from_secs(60);
/// After a failed fetch: 10 s, 20 s, 40 s, then every minute.
const RETRY: Duration = Duration::from_secs(10);
/// A discovery document or a JWKS is a few KiB.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// One verification key of an issuer.
pub struct Key {
    pub kid: Option<String>,
    pub decoding: DecodingKey,
    /// The algorithms this key may verify: RS256 and PS256 for RSA, ES256 for P-256; narrowed to
    /// one when the JWK names its `alg`.
    pub algorithms: Vec<Algorithm>,
}

#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    /// The key a token's header names; a token without `kid` may use the only key there is.
    pub fn find(&self, kid: Option<&str>) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|key| key.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

/// The keys of one issuer, from one source, shared by every client naming it.
pub struct IssuerKeys {
    pub issuer: String,
    source: IssuerKeySource,
    keys: ArcSwap<KeySet>,
    /// Counts finished fetches, failed or not: a request waiting for keys waits for the next one.
    fetched: watch::Sender<u64>,
    wanted: Notify,
    /// When a token's unknown key may next make the proxy fetch.
    next_on_demand: Mutex<Instant>,
}

impl IssuerKeys {
    fn new(issuer: String, source: IssuerKeySource) -> Arc<Self> {
        Arc::new(Self {
            issuer,
            source,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetched: watch::Sender::new(0),
            wanted: Notify::new(),
            next_on_demand: Mutex::new(Instant::now()),
        })
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Whether a request naming an unknown key would get a fetch now, rather than waiting out the
    /// once-a-minute limit: if not, it is refused at once instead of waiting for nothing.
    pub fn may_fetch_now(&self) -> bool {
        *self
            .next_on_demand
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            <= Instant::now()
    }

    /// Asks for the keys again and waits, at most `patience`, for that fetch to finish.
    pub async fn refreshed(&self, patience: Duration) {
        let mut fetched = self.fetched.subscribe();
        self.wanted.notify_one();
        let _ = tokio::time::timeout(patience, fetched.changed()).await;
    }
}

/// The issuers in force: a reload keeps the keys of every issuer still named.
#[derive(Default)]
pub struct Issuers {
    live: HashMap<(String, IssuerKeySource), (Arc<IssuerKeys>, JoinHandle<()>)>,
}

impl Issuers {
    /// Starts a refresher for every issuer `config` names that has none. Nothing stops here:
    /// until a reload has succeeded, the configuration in force still uses its issuers (see
    /// [`Issuers::stop_unused`]).
    pub fn start_missing(
        &mut self,
        config: &Config,
        tls: &rustls::ClientConfig,
    ) -> Result<(), String> {
        let wanted = named(config);
        if wanted.iter().all(|key| self.live.contains_key(key)) {
            return Ok(());
        }
        let http = crate::token::endpoint::build(tls.clone(), &config.upstream.egress)
            .map_err(|e| format!("cannot build the client for the issuers' keys: {e}"))?;
        for key in wanted {
            if self.live.contains_key(&key) {
                continue;
            }
            let keys = IssuerKeys::new(key.0.clone(), key.1.clone());
            let refresher = tokio::spawn(run_refresher(keys.clone(), http.clone()));
            self.live.insert(key, (keys, refresher));
        }
        Ok(())
    }

    /// Stops the refreshers of the issuers `config`, now in force, no longer names.
    pub fn stop_unused(&mut self, config: &Config) {
        let wanted = named(config);
        self.live.retain(|key, (_, refresher)| {
            let keep = wanted.contains(key);
            if !keep {
                refresher.abort();
            }
            keep
        });
    }

    pub fn keys(&self, issuer: &str, source: &IssuerKeySource) -> Option<Arc<IssuerKeys>> {
        self.live
            .get(&(issuer.to_string(), source.clone()))
            .map(|(keys, _)| keys.clone())
    }
}

impl Drop for Issuers {
    fn drop(&mut self) {
        for (_, refresher) in self.live.values() {
            refresher.abort();
        }
    }
}

fn named(config: &Config) -> Vec<(String, IssuerKeySource)> {
    config
        .clients
        .iter()
        .filter_map(|client| match &client.proof {
            ClientProof::Token(token) => Some((token.issuer.clone(), token.keys.clone())),
            ClientProof::Key(_) => None,
        })
        .collect()
}

async fn run_refresher(keys: Arc<IssuerKeys>, http: reqwest::Client) {
    let mut failures = 0u32;
    loop {
        match fetch(&keys.issuer, &keys.source, &http).await {
            Ok(set) => {
                failures = 0;
                tracing::info!(issuer = %keys.issuer, keys = set.keys.len(), "issuer keys fetched");
                keys.keys.store(Arc::new(set));
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(issuer = %keys.issuer, %error, "cannot fetch the issuer's keys");
            }
        }
        keys.fetched.send_modify(|count| *count += 1);
        let wait = if failures == 0 {
            REFRESH
        } else {
            (RETRY * 2u32.saturating_pow(failures - 1)).min(ON_DEMAND_INTERVAL)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = keys.wanted.notified() => {
                let earliest = {
                    let mut next = keys
                        .next_on_demand
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let earliest = (*next).max(Instant::now());
                    *next = earliest + ON_DEMAND_INTERVAL;
                    earliest
                };
                tokio::time::sleep_until(earliest.into()).await;
            }
        }
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

async fn fetch(
    issuer: &str,
    source: &IssuerKeySource,
    http: &reqwest::Client,
) -> Result<KeySet, String> {
    let jwks = match source {
        IssuerKeySource::File(path) => {
            let too_large = || format!("{}: larger than a JWKS can be", path.display());
            let length = tokio::fs::metadata(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len();
            if length > MAX_DOCUMENT_BYTES as u64 {
                return Err(too_large());
            }
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if bytes.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            bytes
        }
        IssuerKeySource::Discovery => {
            let url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let discovery: Discovery = serde_json::from_slice(&get(http, &url).await?)
                .map_err(|e| format!("{url}: not an OIDC discovery document: {e}"))?;
            // OIDC Discovery 1.0, section 4.3: the document must name the issuer it was asked for.
            if discovery.issuer != issuer {
                return Err(format!(
                    "{url} names issuer `{}`, not `{issuer}`",
                    discovery.issuer
                ));
            }
            check_fetchable(&discovery.jwks_uri)?;
            get(http, &discovery.jwks_uri).await?
        }
    };
    key_set(&jwks)
}

/// https, or http on a loopback host: keys are the trust anchor and must not be tampered with
/// on the way.
fn check_fetchable(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("jwks_uri `{url}` is not a URL"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(_)) => Ok(()),
        (Some("http"), Some(host)) if is_loopback_host(host) => Ok(()),
        _ => Err(format!("jwks_uri `{url}` must be an https:// URL")),
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = http.get(url).send().await.map_err(|e| {
        format!(
            "{url}: {}",
            crate::token::endpoint::describe_reqwest_error(&e)
        )
    })?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    crate::token::endpoint::read_at_most(&mut response, MAX_DOCUMENT_BYTES)
        .await
        .map_err(|e| format!("{url}: {e}"))
}

/// The signing keys of a JWKS the proxy can use: RSA, and EC on P-256. Others (encryption keys,
/// other curves, symmetric keys) are left out, so no token can name them.
pub fn key_set(jwks: &[u8]) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct Entries {
        keys: Vec<serde_json::Value>,
    }
    let set: Entries = serde_json::from_slice(jwks).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    // One by one: a key of a kind jsonwebtoken cannot read (another curve, an encryption key)
    // is left out, not a reason to refuse the issuer's other keys.
    for jwk in set
        .keys
        .into_iter()
        .filter_map(|entry| serde_json::from_value::<Jwk>(entry).ok())
    {
        if matches!(jwk.common.public_key_use, Some(ref use_) if *use_ != PublicKeyUse::Signature) {
            continue;
        }
        let family: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => &[Algorithm::RS256, Algorithm::PS256],
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                &[Algorithm::ES256]
            }
            _ => continue,
        };
        let named = match jwk.common.key_algorithm {
            None => None,
            Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
            Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
            // A key meant for another algorithm is no key for these.
            Some(_) => continue,
        };
        let algorithms = match named {
            None => family.to_vec(),
            Some(alg) if family.contains(&alg) => vec![alg],
            Some(_) => continue,
        };
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id,
            decoding,
            algorithms,
        });
    }
    Ok(KeySet { keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_the_proxy_cannot_use_are_left_out_not_the_whole_set() {
        let jwks = br#"{"keys": [
            {"kty": "EC", "crv": "secp256k1", "kid": "odd", "x": "AAAA", "y": "AAAA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "RSA", "kid": "sig", "alg": "RS256", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
        ]}"#;
        let set = key_set(jwks).expect("a JWKS with one usable key");
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("sig")]);
        assert_eq!(set.keys[0].algorithms, [Algorithm::RS256]);
        assert!(key_set(b"{\"keys\": 1}").is_err());
    }
}
