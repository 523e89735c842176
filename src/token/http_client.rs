//! The HTTP client of every token fetch (and of `check`), and the bounded reading of answers.

use std::time::{Duration, Instant};

use super::source::FetchError;

/// Entra ID and the managed identity endpoints answer in a few KiB; more is not a token response.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Never follows redirects (a redirect would carry the secret or assertion to another host),
/// bounded in time.
pub fn build(tls: rustls::ClientConfig, through_proxy: bool) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("ado-auth-proxy/", env!("CARGO_PKG_VERSION")));
    if !through_proxy {
        builder = builder.no_proxy();
    }
    builder.build()
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
pub(super) fn describe_reqwest_error(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match error.source() {
        Some(cause) => format!("{kind}: {}", crate::forward::describe(cause)),
        None => kind.to_string(),
    }
}

pub async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, FetchError> {
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
