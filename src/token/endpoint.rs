//! The token endpoints' side shared by every credential kind: the HTTP client every token fetch
//! (and `check`) uses, the bounded reading of answers, the token response's checks, and the
//! classification of refusals (AADSTS codes with a hint). Imports nothing else of `token`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde::Deserialize;

use crate::config::Egress;

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

/// Entra ID and the managed identity endpoints answer in a few KiB; more is not a token response.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Never follows redirects (a redirect would carry the secret or assertion to another host),
/// bounded in time.
pub fn build(tls: rustls::ClientConfig, egress: &Egress) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("ado-auth-proxy/", env!("CARGO_PKG_VERSION")));
    crate::egress::reqwest_builder(builder, egress)?.build()
}

/// A token endpoint's answer, read whole (and bounded), with the instant the request left:
/// expiry counts from then, so transfer time only shortens the lifetime assumed.
pub(super) struct Answer {
    pub status: http::StatusCode,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
    pub requested_at: Instant,
}

pub(super) async fn send(request: reqwest::RequestBuilder) -> Result<Answer, FetchError> {
    let requested_at = Instant::now();
    let mut response = request
        .send()
        .await
        .map_err(|e| FetchError::Transport(describe_reqwest_error(&e)))?;
    let status = response.status();
    let retry_after = retry_after(&response);
    let body = read_capped(&mut response).await?;
    Ok(Answer {
        status,
        retry_after,
        body,
        requested_at,
    })
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// What failed, and why, without the URL (reqwest's own message starts with it).
pub fn describe_reqwest_error(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match error.source() {
        Some(cause) => format!("{kind}: {}", crate::error::describe(cause)),
        None => kind.to_string(),
    }
}

pub async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, FetchError> {
    read_at_most(response, MAX_RESPONSE_BYTES).await
}

/// The body, read whole up to `limit` bytes: a longer answer is not what was asked for.
pub async fn read_at_most(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| FetchError::Transport(describe_reqwest_error(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::InvalidResponse(format!(
                "response larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An Azure DevOps answer's JSON, or `Null` when it is none (a sign-in page, an error page).
pub async fn read_json(response: &mut reqwest::Response) -> serde_json::Value {
    read_capped(response)
        .await
        .ok()
        .and_then(|body| serde_json::from_slice(&body).ok())
        .unwrap_or(serde_json::Value::Null)
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

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Whatever a token endpoint answers: no panic, and nothing it says reaches an error
        /// message with control characters (a log line stays one line).
        #[test]
        fn any_token_endpoint_answer_is_a_token_or_an_error(body in proptest::collection::vec(proptest::num::u8::ANY, 0..600), status in 400u16..600) {
            let _ = parse_token(&body, Instant::now());
            let message = refusal(status, &body, false).to_string();
            proptest::prop_assert!(!message.chars().any(char::is_control), "{}", message);
        }

        /// JSON-shaped answers with fields of any type: a token only when every check passes.
        #[test]
        fn json_token_answers_are_checked(
            token in proptest::option::of(proptest::prop_oneof![
                "[!-~]{0,40}".prop_map(serde_json::Value::from),
                proptest::num::i64::ANY.prop_map(serde_json::Value::from),
                proptest::strategy::Just(serde_json::Value::Null),
            ]),
            expires_in in proptest::option::of(proptest::prop_oneof![
                proptest::num::i64::ANY.prop_map(serde_json::Value::from),
                "[0-9a-z ]{0,12}".prop_map(serde_json::Value::from),
            ]),
            description in "\\PC{0,80}",
        ) {
            let mut answer = serde_json::json!({ "error_description": description });
            if let Some(token) = token { answer["access_token"] = token; }
            if let Some(expires_in) = expires_in { answer["expires_in"] = expires_in; }
            let body = answer.to_string();
            if let Ok(issued) = parse_token(body.as_bytes(), Instant::now()) {
                proptest::prop_assert!(!issued.lifetime.is_zero() && issued.lifetime <= MAX_LIFETIME);
                proptest::prop_assert!(issued.bearer.is_sensitive());
            }
            let message = refusal(400, body.as_bytes(), false).to_string();
            proptest::prop_assert!(!message.chars().any(char::is_control), "{}", message);
        }
    }
}
