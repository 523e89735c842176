//! `ado-auth-proxy check`: for every identity, get a token, say who it names (from its claims,
//! never the token itself), then ask Azure DevOps who it sees, so a deployment's mistakes show
//! before the first real request: wrong tenant, expired secret, a principal never added to the
//! organization.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use http::HeaderValue;
use serde_json::Value;

use crate::config::{Config, Identity};
use crate::token::TokenSource;

/// Runs the checks and returns the report and whether every identity passed.
/// Everything a start or a reload checks before it touches the network: the configuration
/// (already validated when loaded) and each identity's credential files (a certificate that does
/// not load). Nothing is fetched.
pub fn offline(config: &Config) -> Result<String, String> {
    let tls =
        crate::tls::client_config(config.upstream.ca_file.as_deref()).map_err(|e| e.to_string())?;
    for identity in &config.identities {
        TokenSource::new(identity, &tls, &config.upstream.egress)?;
    }
    Ok(format!(
        "configuration valid: {} identities, {} clients, no network used\n",
        config.identities.len(),
        config.clients.len()
    ))
}

/// With `rules`, each client's rules are then put to Azure DevOps with its identity's token
/// (see [`crate::doctor`]).
pub async fn check(config: &Config, organization: Option<&str>, rules: bool) -> (String, bool) {
    let mut report = String::from("configuration: valid\n");
    if let Some(org) = organization
        && (org.is_empty() || org.starts_with('_') || org.contains(['/', '?', '#', '%', ' ']))
    {
        let _ = writeln!(report, "--organization `{org}` is not an organization name");
        return (report, false);
    }
    let tls = match crate::tls::client_config(config.upstream.ca_file.as_deref()) {
        Ok(tls) => tls,
        Err(error) => {
            let _ = writeln!(report, "{error}");
            return (report, false);
        }
    };
    // The way forwarded requests go (egress proxy, upstream.resolve): check must see what `run`
    // will see.
    let devops = match crate::egress::devops_client(&config.upstream, &tls) {
        Ok(client) => client,
        Err(error) => {
            let _ = writeln!(report, "cannot build the HTTP client: {error}");
            return (report, false);
        }
    };
    let upstream = format!("{}://{}", config.upstream.scheme, config.upstream.authority);
    let connection_data = match organization {
        Some(org) => format!("{upstream}/{org}/_apis/connectionData"),
        None => format!("{upstream}/_apis/connectionData"),
    };
    let mut all_passed = true;
    let mut tokens = HashMap::new();
    for identity in &config.identities {
        let (passed, bearer) = check_identity(
            identity,
            &tls,
            &config.upstream.egress,
            &devops,
            &connection_data,
            &mut report,
        )
        .await;
        all_passed &= passed;
        if let Some(bearer) = bearer {
            tokens.insert(identity.name.clone(), bearer);
        }
    }
    if rules {
        all_passed &= crate::doctor::check_rules(config, &devops, &tokens, &mut report).await;
    } else if organization.is_none() {
        report.push_str(
            "(pass --organization ORG to check that each principal is a member of that organization)\n",
        );
    }
    (report, all_passed)
}

async fn check_identity(
    identity: &Identity,
    tls: &rustls::ClientConfig,
    egress: &crate::config::Egress,
    devops: &reqwest::Client,
    connection_data: &str,
    report: &mut String,
) -> (bool, Option<HeaderValue>) {
    let _ = write!(
        report,
        "identity {} ({}",
        identity.name,
        identity.credential.describe()
    );
    if let Some(tenant) = identity.tenant_id() {
        let _ = write!(report, ", tenant {tenant}");
    }
    if let Some(client_id) = identity.client_id() {
        let _ = write!(report, ", client id {client_id}");
    }
    report.push_str("): ");
    let source = match TokenSource::new(identity, tls, egress) {
        Ok(source) => source,
        Err(error) => {
            let _ = writeln!(report, "FAILED: {error}");
            return (false, None);
        }
    };
    let token = match source.fetch().await {
        Ok(token) => token,
        Err(error) => {
            let _ = writeln!(report, "FAILED: {error}");
            return (false, None);
        }
    };
    let _ = writeln!(
        report,
        "token acquired, valid for {} s",
        token.lifetime.as_secs()
    );
    let claims = token
        .bearer
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(unverified_claims)
        .unwrap_or(Value::Null);
    for (label, claim) in [
        ("tenant (tid)", "tid"),
        ("app id (appid)", "appid"),
        ("object id (oid)", "oid"),
        ("audience (aud)", "aud"),
    ] {
        if let Some(value) = claims.get(claim).and_then(Value::as_str) {
            let _ = writeln!(report, "  {label}: {}", printable(value));
        }
    }
    if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
        let at = UNIX_EPOCH + Duration::from_secs(exp);
        let _ = writeln!(report, "  expires: {}", humantime::format_rfc3339(at));
    }

    let answer = crate::egress::get_as(devops, connection_data, &token.bearer).await;
    let mut response = match answer {
        Ok(response) => response,
        Err(error) => {
            let _ = writeln!(
                report,
                "  Azure DevOps: FAILED: {connection_data} unreachable: {}",
                crate::error::describe(&error)
            );
            return (false, Some(token.bearer));
        }
    };
    let status = response.status();
    let body = crate::token::endpoint::read_json(&mut response).await;
    if status.is_success() && status != http::StatusCode::NON_AUTHORITATIVE_INFORMATION {
        let user = &body["authenticatedUser"];
        let name = user["providerDisplayName"].as_str().unwrap_or("?");
        let descriptor = user["descriptor"].as_str().unwrap_or_default();
        if descriptor.starts_with("System:PublicAccess") || name == "Anonymous" {
            let _ = writeln!(
                report,
                "  Azure DevOps: FAILED: the token was not accepted (answered as anonymous)"
            );
            return (false, Some(token.bearer));
        }
        let _ = writeln!(
            report,
            "  Azure DevOps: authenticated as {} (id {})",
            printable(name),
            printable(user["id"].as_str().unwrap_or("?"))
        );
        return (true, Some(token.bearer));
    }
    let message = body["message"].as_str().unwrap_or_default();
    let _ = writeln!(
        report,
        "  Azure DevOps: FAILED: HTTP {}{}{}",
        status.as_u16(),
        if message.is_empty() { "" } else { ": " },
        printable(message)
    );
    let hint = if message.contains("TF400813") || message.contains("TF401444") {
        Some(
            "the service principal is not a member of this organization: add it by its object id \
             (Organization settings > Users) and give it a Basic access level",
        )
    } else if status == http::StatusCode::UNAUTHORIZED
        || status == http::StatusCode::NON_AUTHORITATIVE_INFORMATION
    {
        Some(
            "Azure DevOps refused the token: check that the organization is connected to this tenant",
        )
    } else {
        None
    };
    if let Some(hint) = hint {
        let _ = writeln!(report, "  Hint: {hint}");
    }
    (false, Some(token.bearer))
}

/// The claims of a JWT, unverified: only for showing who the token says it is.
fn unverified_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Text from a remote party, cut short and stripped of control characters before it reaches a
/// terminal.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}
