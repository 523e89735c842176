//! The GUIDs of the feeds that rules name (`{ feed = "contoso/internal" }`): asked of the Feed
//! Management API on `feeds.dev.azure.com` with the identity's token, kept in the rule, asked
//! again every fifteen minutes. Until an answer comes, a feed rule admits calls by the feed's name
//! only; links by GUID are refused (403), and the log says why.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::config::{Config, DEFAULT_IDENTITY, InboundMode};
use crate::policy::{Feed, FeedIds};
use crate::token::TokenCache;

const MANAGEMENT_HOST: &str = "feeds.dev.azure.com";
const REFRESH: Duration = Duration::from_secs(15 * 60);
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(5 * 60);

#[derive(Deserialize)]
struct FeedAnswer {
    id: String,
    project: Option<ProjectAnswer>,
}

#[derive(Deserialize)]
struct ProjectAnswer {
    id: String,
}

/// One task per feed rule, asking with the token of the identity its client acts as.
pub fn spawn_resolvers(
    config: &Config,
    tls: &rustls::ClientConfig,
    token_of: impl Fn(&str) -> Option<Arc<TokenCache>>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut feeds = Vec::new();
    for client in &config.clients {
        for rule in client.allow.rules() {
            feeds.extend(
                rule.feed()
                    .map(|feed| (feed.clone(), client.identity.as_str())),
            );
        }
    }
    if let InboundMode::Open { allow } = &config.inbound.mode {
        for rule in allow.rules() {
            feeds.extend(rule.feed().map(|feed| (feed.clone(), DEFAULT_IDENTITY)));
        }
    }
    if feeds.is_empty() {
        return Ok(Vec::new());
    }
    if !config.upstream.hosts.allows(MANAGEMENT_HOST) {
        return Err(format!(
            "feed rules need {MANAGEMENT_HOST} among upstream.hosts: the proxy asks it for the \
             feeds' GUIDs with the identity's token"
        ));
    }
    let http = crate::egress::devops_client(&config.upstream, tls)
        .map_err(|e| format!("cannot build the feed lookup client: {e}"))?;
    feeds
        .into_iter()
        .map(|(feed, identity)| {
            let token = token_of(identity)
                .ok_or_else(|| format!("identity `{identity}` is not configured"))?;
            Ok(tokio::spawn(resolve(feed, token, http.clone())))
        })
        .collect()
}

async fn resolve(feed: Feed, token: Arc<TokenCache>, http: reqwest::Client) {
    let url = format!(
        "https://{MANAGEMENT_HOST}{}?api-version=7.1",
        feed.lookup_path()
    );
    let mut retry = FIRST_RETRY;
    loop {
        match lookup(&url, &token, &http).await {
            Ok(ids) => {
                if feed.ids().load().as_deref() != Some(&ids) {
                    tracing::info!(feed = %feed, id = %ids.feed, "feed GUID known: links by GUID are admitted");
                    feed.ids().store(Some(Arc::new(ids)));
                }
                retry = FIRST_RETRY;
                tokio::time::sleep(REFRESH).await;
            }
            Err(why) => {
                tracing::warn!(
                    feed = %feed,
                    problem = %why,
                    retry_seconds = retry.as_secs(),
                    "cannot learn the feed's GUID: calls by GUID are refused until it is known"
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LAST_RETRY);
            }
        }
    }
}

async fn lookup(url: &str, token: &TokenCache, http: &reqwest::Client) -> Result<FeedIds, String> {
    let bearer = token.bearer().ok_or("no valid token yet")?;
    let response = http
        .get(url)
        .header(http::header::AUTHORIZATION, bearer)
        .send()
        .await
        .map_err(|e| crate::token::endpoint::describe_reqwest_error(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!(
            "the Feed Management API answered {status} (is the principal a reader of the feed?)"
        ));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| crate::token::endpoint::describe_reqwest_error(&e))?;
    let answer: FeedAnswer = serde_json::from_slice(&body)
        .map_err(|_| "the Feed Management API's answer is not a feed".to_string())?;
    Ok(FeedIds {
        feed: answer.id.into(),
        project: answer.project.map(|p| p.id.into()),
    })
}
