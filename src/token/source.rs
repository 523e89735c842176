//! Fetches an access token from Entra ID with the OAuth2 client-credentials grant.
//!
//! One call, one answer: scheduling, caching and retries belong to the refresher. Nothing here
//! keeps or prints the client secret or the token; errors carry Entra ID's own code and a hint.

use std::time::{Duration, Instant};

use http::HeaderValue;
use serde::Deserialize;

use crate::config::{Credential, Identity, SecretSource};
use crate::secret::Secret;

/// Entra ID answers in a few KiB; anything larger is not a token response.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
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
    #[error("cannot read the client secret: {0}")]
    Credential(String),
    #[error("Entra ID unreachable: {0}")]
    Transport(String),
    #[error("Entra ID is throttling token requests (HTTP 429)")]
    Throttled { retry_after: Option<Duration> },
    #[error("Entra ID refused the token request (HTTP {status}, {error}): {description}{}", hint.map(|h| format!(" Hint: {h}")).unwrap_or_default())]
    Refused {
        status: u16,
        error: String,
        description: String,
        hint: Option<&'static str>,
    },
    #[error("Entra ID sent an unusable token response: {0}")]
    InvalidResponse(String),
}

impl FetchError {
    /// A short, bounded label for metrics.
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
}

pub struct TokenSource {
    identity: Identity,
    endpoint: String,
    http: reqwest::Client,
}

impl TokenSource {
    pub fn new(identity: Identity, http: reqwest::Client) -> Self {
        let endpoint = identity.token_endpoint();
        Self {
            identity,
            endpoint,
            http,
        }
    }

    pub async fn fetch(&self) -> Result<IssuedToken, FetchError> {
        let Credential::ClientSecret(source) = &self.identity.credential;
        let secret = read_secret(source).await?;
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.identity.client_id.as_str()),
            ("scope", self.identity.scope.as_str()),
            ("client_secret", secret.expose()),
        ];
        let requested_at = Instant::now();
        let mut response = self
            .http
            .post(&self.endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| FetchError::Transport(describe_reqwest_error(&e)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = read_capped(&mut response).await?;
        if status == http::StatusCode::TOO_MANY_REQUESTS {
            return Err(FetchError::Throttled { retry_after });
        }
        if !status.is_success() {
            return Err(refusal(status.as_u16(), &body));
        }
        parse_token(&body, requested_at)
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

fn describe_reqwest_error(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut message = if error.is_timeout() {
        "timed out".to_string()
    } else if error.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::Transport(describe_reqwest_error(&e)))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(FetchError::InvalidResponse(format!(
                "response larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
}

fn parse_token(body: &[u8], requested_at: Instant) -> Result<IssuedToken, FetchError> {
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
    let seconds = match response.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        // Managed identity endpoints and older libraries send the number as a string.
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| invalid("expires_in is missing or not a positive whole number"))?;
    let lifetime = Duration::from_secs(seconds);
    if lifetime.is_zero() || lifetime > MAX_LIFETIME {
        return Err(invalid("expires_in is zero or longer than two days"));
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

fn refusal(status: u16, body: &[u8]) -> FetchError {
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
        let message = refusal(401, body).to_string();
        assert!(message.contains("AADSTS7000215"), "{message}");
        assert!(message.contains("not its id"), "{message}");
        assert!(!message.contains("Trace ID"), "{message}");
        let message = refusal(400, b"<html>oops").to_string();
        assert!(message.contains("HTTP 400"), "{message}");
    }
}
