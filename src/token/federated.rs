//! Federated tokens for workload identity: a JWT issued to this workload by a platform Entra ID
//! trusts (Kubernetes, GitHub Actions), exchanged as a client assertion.
//!
//! Fetched fresh for every exchange: the platform rotates them and they live minutes, not hours.

use std::path::Path;

use serde::Deserialize;

use super::endpoint::{FetchError, describe_reqwest_error, read_capped};
use crate::config::FederatedSource;

pub(super) async fn federated_token(
    source: &FederatedSource,
    http: &reqwest::Client,
) -> Result<String, FetchError> {
    match source {
        FederatedSource::File(path) => from_file(path).await,
        FederatedSource::GitHubActions {
            request_url,
            request_token,
            audience,
        } => from_github(http, request_url, request_token.expose(), audience).await,
    }
}

async fn from_file(path: &Path) -> Result<String, FetchError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| FetchError::Credential(format!("{}: {e}", path.display())))?;
    checked(text.trim(), &path.display().to_string())
}

#[derive(Deserialize)]
struct GitHubToken {
    value: Option<String>,
}

async fn from_github(
    http: &reqwest::Client,
    request_url: &str,
    request_token: &str,
    audience: &str,
) -> Result<String, FetchError> {
    let mut response = http
        .get(request_url)
        .query(&[("audience", audience)])
        .bearer_auth(request_token)
        .send()
        .await
        .map_err(|e| {
            FetchError::Credential(format!(
                "GitHub Actions' OIDC endpoint unreachable: {}",
                describe_reqwest_error(&e)
            ))
        })?;
    let status = response.status();
    let body = read_capped(&mut response).await?;
    if !status.is_success() {
        let hint = match status.as_u16() {
            401 | 403 => "; the job needs `permissions: id-token: write`",
            _ => "",
        };
        return Err(FetchError::Credential(format!(
            "GitHub Actions' OIDC endpoint answered HTTP {}{hint}",
            status.as_u16()
        )));
    }
    let token: GitHubToken = serde_json::from_slice(&body).map_err(|_| {
        FetchError::Credential("GitHub Actions' OIDC endpoint sent no JSON token".into())
    })?;
    checked(
        token.value.as_deref().unwrap_or_default().trim(),
        "GitHub Actions' OIDC token",
    )
}

/// A federated token goes into a form field; anything but a compact JWS is a broken source.
fn checked(token: &str, origin: &str) -> Result<String, FetchError> {
    let parts = token.split('.').count();
    if token.is_empty() {
        return Err(FetchError::Credential(format!("{origin} is empty")));
    }
    if parts != 3
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(FetchError::Credential(format!(
            "{origin} does not hold a JWT"
        )));
    }
    Ok(token.to_string())
}
