//! Managed identity: the platform's local endpoint hands out tokens for the identity assigned to
//! the VM, node or app, with no credential of ours. Two protocols: Azure IMDS, and App Service /
//! Container Apps (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).

use std::time::Instant;

use super::http_client::{describe_reqwest_error, read_capped, retry_after};
use super::source::{FetchError, IssuedToken, parse_token, refusal};
use crate::config::{ManagedIdentity, ManagedProtocol};

const IMDS_API_VERSION: &str = "2018-02-01";
const APP_SERVICE_API_VERSION: &str = "2019-08-01";

pub(super) async fn fetch(
    identity: &ManagedIdentity,
    resource: &str,
    http: &reqwest::Client,
) -> Result<IssuedToken, FetchError> {
    let (api_version, request) = match &identity.protocol {
        ManagedProtocol::Imds => (
            IMDS_API_VERSION,
            http.get(&identity.endpoint).header("Metadata", "true"),
        ),
        ManagedProtocol::AppService { identity_header } => {
            let mut header =
                http::HeaderValue::from_str(identity_header.expose()).map_err(|_| {
                    FetchError::Credential(
                        "IDENTITY_HEADER holds characters not allowed in a header".into(),
                    )
                })?;
            header.set_sensitive(true);
            (
                APP_SERVICE_API_VERSION,
                http.get(&identity.endpoint)
                    .header("X-IDENTITY-HEADER", header),
            )
        }
    };
    let mut query = vec![("api-version", api_version), ("resource", resource)];
    if let Some(client_id) = &identity.client_id {
        query.push(("client_id", client_id));
    }
    let requested_at = Instant::now();
    let mut response = request
        .query(&query)
        .send()
        .await
        .map_err(|e| FetchError::Transport(describe_reqwest_error(&e)))?;
    let status = response.status();
    let retry_after = retry_after(&response);
    let body = read_capped(&mut response).await?;
    match status.as_u16() {
        200..=299 => parse_token(&body, requested_at),
        429 => Err(FetchError::Throttled { retry_after }),
        // IMDS's guidance: retry these with back-off; any other 4xx will not change by retrying.
        404 | 408 | 410 | 500..=599 => Err(refusal(status.as_u16(), &body, false)),
        _ => Err(refusal(status.as_u16(), &body, true)),
    }
}
