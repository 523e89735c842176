//! One token fetch for one identity: the credential kinds, the request each makes, and the
//! checks every token response passes before its token may be cached.
//!
//! One call, one answer: scheduling, caching and retries belong to the refresher. Nothing here
//! keeps or prints a secret, a key, an assertion or a token; errors carry the identity provider's
//! own code and a hint.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde::Deserialize;

use super::assertion::{JWT_BEARER, SigningCertificate};
use super::http_client;
use super::{federated, managed};
use crate::config::{Credential, EntraApp, Identity, Proof, SecretSource};
use crate::secret::Secret;

/// Longest lifetime accepted: CAE-capable tokens live up to 28 hours; more is nonsense.
const MAX_LIFETIME: Duration = Duration::from_secs(2 * 24 * 3600);

/// A token as Entra ID issued it, with the moment the request left (expiry counts from then, so
/// transfer time only shortens the lifetime we assume).
pub struct IssuedToken {
    pub bearer: HeaderValue,
    pub lifetime: Duration,
    pub requested_at: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot use the credential: {0}")]
    Credential(String),
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    #[error("the token endpoint is throttling token requests (HTTP 429)")]
    Throttled { retry_after: Option<Duration> },
    #[error("the token request was refused (HTTP {status}, {error}): {description}{}", hint.map(|h| format!(" Hint: {h}")).unwrap_or_default())]
    Refused {
        status: u16,
        error: String,
        description: String,
        hint: Option<&'static str>,
        /// Retrying soon cannot help (a managed identity endpoint's 400: wrong identity).
        permanent: bool,
    },
    #[error("the token endpoint sent an unusable token response: {0}")]
    InvalidResponse(String),
}

/// Every label a token refresh is counted under: success, then each [`FetchError::kind`].
pub const REFRESH_RESULTS: [&str; 6] = [
    "success",
    "credential",
    "transport",
    "throttled",
    "refused",
    "invalid_response",
];

impl FetchError {
    /// A short, bounded label for metrics (one of [`REFRESH_RESULTS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Credential(_) => "credential",
            FetchError::Transport(_) => "transport",
            FetchError::Throttled { .. } => "throttled",
            FetchError::Refused { .. } => "refused",
            FetchError::InvalidResponse(_) => "invalid_response",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Throttled { retry_after } => *retry_after,
            _ => None,
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            FetchError::Refused {
                permanent: true,
                ..
            }
        )
    }
}

pub struct TokenSource {
    kind: SourceKind,
    scope: String,
    http: reqwest::Client,
}

enum SourceKind {
    App {
        app: EntraApp,
        endpoint: String,
        proof: Proof,
    },
    Managed {
        identity: crate::config::ManagedIdentity,
        resource: String,
    },
}

impl TokenSource {
    /// Checks what can be checked before the first fetch (a certificate that does not load fails
    /// start-up, not the first request).
    pub fn new(identity: &Identity, tls: &rustls::ClientConfig) -> Result<Self, String> {
        // Entra ID may need the corporate proxy; IMDS refuses proxied requests, and a plain-http
        // loopback authority (tests, the sandbox) must not carry the secret through one.
        let through_proxy = matches!(
            &identity.credential,
            Credential::App { app, .. } if app.authority.starts_with("https://")
        );
        let http = http_client::build(tls.clone(), through_proxy).map_err(|e| {
            format!(
                "identities.{}: cannot build the HTTP client: {e}",
                identity.name
            )
        })?;
        let kind = match &identity.credential {
            Credential::App { app, proof } => {
                if let Proof::Certificate(files) = proof {
                    SigningCertificate::load(files)
                        .map_err(|e| format!("identities.{}.credential: {e}", identity.name))?;
                }
                SourceKind::App {
                    endpoint: app.token_endpoint(),
                    app: app.clone(),
                    proof: proof.clone(),
                }
            }
            Credential::Managed(managed) => SourceKind::Managed {
                identity: managed.clone(),
                resource: identity.resource().to_string(),
            },
        };
        Ok(Self {
            kind,
            scope: identity.scope.clone(),
            http,
        })
    }

    pub async fn fetch(&self) -> Result<IssuedToken, FetchError> {
        match &self.kind {
            SourceKind::App {
                app,
                endpoint,
                proof,
            } => self.fetch_from_entra(app, endpoint, proof).await,
            SourceKind::Managed { identity, resource } => {
                managed::fetch(identity, resource, &self.http).await
            }
        }
    }

    async fn fetch_from_entra(
        &self,
        app: &EntraApp,
        endpoint: &str,
        proof: &Proof,
    ) -> Result<IssuedToken, FetchError> {
        // Held as a `Secret` until the form is encoded, so no error path can print it.
        let (field, value): (&str, Secret) = match proof {
            Proof::Secret(source) => ("client_secret", read_secret(source).await?),
            Proof::Certificate(files) => {
                let files = files.clone();
                let (client_id, audience) = (app.client_id.clone(), endpoint.to_string());
                // File reads and an RSA signature: off the async threads.
                let assertion = tokio::task::spawn_blocking(move || {
                    SigningCertificate::load(&files)?.assertion(
                        &client_id,
                        &audience,
                        files.algorithm,
                        files.send_x5c,
                    )
                })
                .await
                .map_err(|_| FetchError::Credential("signing task failed".into()))?
                .map_err(FetchError::Credential)?;
                ("client_assertion", Secret::new(assertion))
            }
            Proof::Federated(source) => (
                "client_assertion",
                Secret::new(federated::federated_token(source, &self.http).await?),
            ),
        };
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", app.client_id.as_str()),
            ("scope", self.scope.as_str()),
            (field, value.expose()),
        ];
        if field == "client_assertion" {
            form.push(("client_assertion_type", JWT_BEARER));
        }
        let answer = http_client::send(self.http.post(endpoint).form(&form)).await?;
        if answer.status == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(FetchError::Throttled {
                retry_after: answer.retry_after,
            });
        }
        if !answer.status.is_success() {
            return Err(refusal(answer.status.as_u16(), &answer.body, false));
        }
        parse_token(&answer.body, answer.requested_at)
    }
}

async fn read_secret(source: &SecretSource) -> Result<Secret, FetchError> {
    match source {
        SecretSource::Value(secret) => Ok(secret.clone()),
        SecretSource::File(path) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| FetchError::Credential(format!("{}: {e}", path.display())))?;
            // Kubernetes secrets and `echo` leave a trailing newline that is not part of the secret.
            let secret = Secret::new(text.trim_end_matches(['\r', '\n']));
            if secret.is_empty() {
                return Err(FetchError::Credential(format!(
                    "{} is empty",
                    path.display()
                )));
            }
            Ok(secret)
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
    /// App Service's managed identity endpoint gives only the expiry instant (Unix seconds).
    expires_on: Option<serde_json::Value>,
}

/// A whole number sent as a JSON number or, as managed identity endpoints do, a digit string.
fn whole_number(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
}

pub(super) fn parse_token(body: &[u8], requested_at: Instant) -> Result<IssuedToken, FetchError> {
    let invalid = |what: &str| FetchError::InvalidResponse(what.to_string());
    let response: TokenResponse =
        serde_json::from_slice(body).map_err(|_| invalid("not a JSON token response"))?;
    let token = match response.access_token {
        Some(serde_json::Value::String(token)) => token,
        Some(_) => return Err(invalid("access_token is not a string")),
        None => return Err(invalid("access_token is missing")),
    };
    // Only visible ASCII can be sent in a header without being reinterpreted by someone.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "access_token is empty or holds characters not allowed in a header",
        ));
    }
    let seconds = match (&response.expires_in, &response.expires_on) {
        (Some(expires_in), _) => whole_number(expires_in),
        (None, Some(expires_on)) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            whole_number(expires_on).map(|at| at.saturating_sub(now))
        }
        (None, None) => None,
    }
    .ok_or_else(|| {
        invalid("expires_in (or expires_on) is missing or not a positive whole number")
    })?;
    let lifetime = Duration::from_secs(seconds);
    if lifetime.is_zero() || lifetime > MAX_LIFETIME {
        return Err(invalid(if response.expires_in.is_some() {
            "expires_in is zero or longer than two days"
        } else {
            "expires_on is not between now and two days ahead (check this machine's clock)"
        }));
    }
    let mut bearer = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| invalid("access_token is not header-safe"))?;
    bearer.set_sensitive(true);
    Ok(IssuedToken {
        bearer,
        lifetime,
        requested_at,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EntraError {
    error: String,
    error_description: String,
    error_codes: Vec<u64>,
}

pub(super) fn refusal(status: u16, body: &[u8], permanent: bool) -> FetchError {
    let parsed: EntraError = serde_json::from_slice(body).unwrap_or_default();
    // Entra ID's description runs on with trace and correlation ids over several lines; the first
    // line carries the AADSTS code and the reason, which is what an operator needs.
    let description = parsed
        .error_description
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(400)
        .collect::<String>();
    let code = parsed
        .error_codes
        .first()
        .copied()
        .or_else(|| aadsts_code(&description));
    FetchError::Refused {
        status,
        error: if parsed.error.is_empty() {
            "no error code".to_string()
        } else {
            parsed
                .error
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect()
        },
        description: if description.is_empty() {
            "no description".to_string()
        } else {
            description
        },
        hint: code.and_then(hint_for),
        permanent,
    }
}

fn aadsts_code(description: &str) -> Option<u64> {
    let digits = description.strip_prefix("AADSTS")?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// One line per common mistake; Microsoft advises against branching on these codes, so they only
/// shape the message.
fn hint_for(code: u64) -> Option<&'static str> {
    Some(match code {
        7000215 => {
            "the client secret is wrong; check that you copied the secret's value, not its id"
        }
        7000222 => "the client secret has expired; create a new one for the app registration",
        700016 => {
            "no application with this client_id exists in this tenant; check client_id and tenant_id"
        }
        90002 => "the tenant does not exist; check tenant_id (and authority for sovereign clouds)",
        700027 => {
            "the certificate is not registered on the app registration or the signature is wrong"
        }
        700024 => "the client assertion is outside its validity window; check the clock",
        70021 | 700211 | 700212 => {
            "no federated credential matches this token's issuer, subject and audience"
        }
        70011 => "the scope is invalid; leave scope unset to use Azure DevOps' default",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fetch_error_kind_is_a_refresh_result() {
        let errors = [
            FetchError::Credential(String::new()),
            FetchError::Transport(String::new()),
            FetchError::Throttled { retry_after: None },
            FetchError::Refused {
                status: 400,
                error: String::new(),
                description: String::new(),
                hint: None,
                permanent: false,
            },
            FetchError::InvalidResponse(String::new()),
        ];
        for error in &errors {
            // No `_` arm: a new variant does not compile until it is added to `errors` above.
            match error {
                FetchError::Credential(_)
                | FetchError::Transport(_)
                | FetchError::Throttled { .. }
                | FetchError::Refused { .. }
                | FetchError::InvalidResponse(_) => {}
            }
            assert!(REFRESH_RESULTS.contains(&error.kind()), "{}", error.kind());
        }
        // Success plus one label per kind, each pre-registered at start-up.
        assert_eq!(REFRESH_RESULTS.len(), errors.len() + 1);
        assert_eq!(REFRESH_RESULTS[0], "success");
    }

    #[test]
    fn expires_in_is_accepted_as_number_or_digit_string() {
        for body in [
            r#"{"access_token":"abc.def","expires_in":3599}"#,
            r#"{"access_token":"abc.def","expires_in":"3599"}"#,
        ] {
            let token = parse_token(body.as_bytes(), Instant::now()).expect("valid");
            assert_eq!(token.lifetime, Duration::from_secs(3599));
            assert!(token.bearer.is_sensitive());
        }
    }

    #[test]
    fn unusable_token_responses_are_refused() {
        for body in [
            r#"{"expires_in":3599}"#,
            r#"{"access_token":"","expires_in":3599}"#,
            r#"{"access_token":"a b","expires_in":3599}"#,
            r#"{"access_token":"a\nb","expires_in":3599}"#,
            r#"{"access_token":"ab","expires_in":0}"#,
            r#"{"access_token":"ab","expires_in":-5}"#,
            r#"{"access_token":"ab","expires_in":"soon"}"#,
            r#"{"access_token":"ab","expires_in":9999999}"#,
            r#"{"access_token":"ab"}"#,
            "<html>",
        ] {
            assert!(
                parse_token(body.as_bytes(), Instant::now()).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn entra_errors_keep_the_code_and_add_a_hint() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x\r\nCorrelation ID: y","error_codes":[7000215]}"#;
        let message = refusal(401, body, false).to_string();
        assert!(message.contains("AADSTS7000215"), "{message}");
        assert!(message.contains("not its id"), "{message}");
        assert!(!message.contains("Trace ID"), "{message}");
        let message = refusal(400, b"<html>oops", false).to_string();
        assert!(message.contains("HTTP 400"), "{message}");
    }
}
