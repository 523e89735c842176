//! One token fetch for one identity: the credential kinds and the request each makes (the
//! endpoint's answer is checked in `endpoint`).
//!
//! One call, one answer: scheduling, caching and retries belong to the refresher. Nothing here
//! keeps or prints a secret, a key, an assertion or a token; errors carry the identity provider's
//! own code and a hint.

use super::assertion::{JWT_BEARER, SigningCertificate};
use super::endpoint::{self, FetchError, IssuedToken, parse_token, refusal};
use super::{federated, managed};
use crate::config::{Credential, Egress, EntraApp, Identity, Proof, SecretSource};
use crate::secret::Secret;

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
    pub fn new(
        identity: &Identity,
        tls: &rustls::ClientConfig,
        egress: &Egress,
    ) -> Result<Self, String> {
        // Entra ID may need the corporate proxy; IMDS and App Service's endpoint refuse proxied
        // requests (and `egress` never proxies plain http or loopback anyway).
        let direct = Egress::default();
        let egress = match &identity.credential {
            Credential::App { .. } => egress,
            Credential::Managed(_) => &direct,
        };
        let http = endpoint::build(tls.clone(), egress).map_err(|e| {
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
        let answer = endpoint::send(self.http.post(endpoint).form(&form)).await?;
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
