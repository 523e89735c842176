//! Managed identity: the platform's local endpoint hands out tokens for the identity assigned to
//! the VM, node or app, with no credential of ours. Two protocols: Azure IMDS, and App Service /
//! Container Apps (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).

use super::endpoint::{self, FetchError, IssuedToken, parse_token, refusal};
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
    let answer = endpoint::send(request.query(&query)).await?;
    let status = answer.status.as_u16();
    match status {
        200..=299 => parse_token(&answer.body, answer.requested_at),
        429 => Err(FetchError::Throttled {
            retry_after: answer.retry_after,
        }),
        // IMDS's guidance: retry these with back-off; any other 4xx will not change by retrying.
        404 | 408 | 410 | 500..=599 => Err(refusal(status, &answer.body, false)),
        _ => Err(refusal(status, &answer.body, true)),
    }
}
