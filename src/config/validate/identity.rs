use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Validator;
use crate::config::raw::{RawCredential, RawIdentity};
use crate::config::{
    AZURE_DEVOPS_SCOPE, AssertionAlgorithm, CertificateFiles, ConfigError, Credential,
    DEFAULT_AUTHORITY, DEFAULT_IDENTITY, EntraApp, FEDERATED_AUDIENCE, FederatedSource,
    IMDS_ENDPOINT, IMDS_HOST, Identity, ManagedIdentity, ManagedProtocol, Proof, SecretSource,
};
use crate::secret::Secret;

impl Validator<'_> {
    pub(super) fn identities(
        &self,
        raw: BTreeMap<String, RawIdentity>,
    ) -> Result<Vec<Identity>, ConfigError> {
        let mut raw = raw;
        // With no identity in the file, the standard Azure variables describe the default one, as
        // the Azure SDKs read them.
        if raw.is_empty() {
            raw.insert(DEFAULT_IDENTITY.to_string(), RawIdentity::default());
        }
        let mut identities = Vec::with_capacity(raw.len());
        for (name, identity) in raw {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(self.error(
                    &format!("identities.{name}"),
                    "identity names may hold only letters, digits, '-' and '_'",
                ));
            }
            identities.push(self.identity(name, identity)?);
        }
        Ok(identities)
    }

    fn identity(&self, name: String, raw: RawIdentity) -> Result<Identity, ConfigError> {
        let is_default = name == DEFAULT_IDENTITY;
        // The standard Azure variables describe one workload, so they fill the default identity only.
        let from_env = |var: &str| {
            if is_default {
                self.non_empty_env(var)
            } else {
                None
            }
        };
        let key = |field: &str| format!("identities.{name}.{field}");
        let scope = raw.scope.unwrap_or_else(|| AZURE_DEVOPS_SCOPE.to_string());
        if scope.is_empty() || scope.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(self.error(
                &key("scope"),
                "must be one resource scope such as 499b84ac-1321-427f-aa17-267ca6975798/.default",
            ));
        }
        let credential = match raw.credential {
            Some(credential) => credential,
            None => self.credential_from_env(&key("credential"), is_default, &from_env)?,
        };
        let client_id = raw.client_id.or_else(|| from_env("AZURE_CLIENT_ID"));
        if let Some(client_id) = &client_id
            && (client_id.is_empty()
                || !client_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(self.error(
                &key("client_id"),
                "must be the application (client) id, a GUID",
            ));
        }
        let proof = match credential {
            RawCredential::ManagedIdentity {
                endpoint,
                identity_header,
            } => {
                for (field, given) in [
                    ("tenant_id", raw.tenant_id.is_some()),
                    ("authority", raw.authority.is_some()),
                ] {
                    if given {
                        return Err(self.error(
                            &key(field),
                            "does not apply to a managed identity: its endpoint knows the tenant",
                        ));
                    }
                }
                let managed =
                    self.managed_identity(&key("credential"), endpoint, identity_header)?;
                return Ok(Identity {
                    name,
                    scope,
                    credential: Credential::Managed(ManagedIdentity {
                        client_id,
                        ..managed
                    }),
                });
            }
            RawCredential::ClientSecret {
                secret_file,
                secret,
            } => Proof::Secret(self.secret_source(
                &key("credential"),
                secret_file,
                secret.or_else(|| from_env("AZURE_CLIENT_SECRET").map(Secret::new)),
            )?),
            RawCredential::ClientCertificate {
                certificate_file,
                private_key_file,
                send_x5c,
                algorithm,
            } => Proof::Certificate(
                self.certificate_files(
                    &key("credential"),
                    certificate_file
                        .or_else(|| from_env("AZURE_CLIENT_CERTIFICATE_PATH").map(PathBuf::from)),
                    private_key_file,
                    send_x5c,
                    algorithm,
                )?,
            ),
            RawCredential::WorkloadIdentity {
                token_file,
                source,
                audience,
            } => Proof::Federated(self.federated_source(
                &key("credential"),
                token_file.or_else(|| from_env("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from)),
                source,
                audience,
            )?),
        };
        let tenant_id = raw
            .tenant_id
            .or_else(|| from_env("AZURE_TENANT_ID"))
            .ok_or_else(|| {
                self.error(
                    &key("tenant_id"),
                    "is missing; set it in the file or set AZURE_TENANT_ID",
                )
            })?;
        if tenant_id.is_empty()
            || !tenant_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(self.error(
                &key("tenant_id"),
                "must be a tenant GUID or domain (letters, digits, '-' and '.')",
            ));
        }
        let client_id = client_id.ok_or_else(|| {
            self.error(
                &key("client_id"),
                "is missing; set it in the file or set AZURE_CLIENT_ID",
            )
        })?;
        let authority_text = raw
            .authority
            .or_else(|| from_env("AZURE_AUTHORITY_HOST"))
            .unwrap_or_else(|| DEFAULT_AUTHORITY.to_string());
        let authority_uri = self.http_url(&key("authority"), &authority_text)?;
        if authority_uri.path() != "/" || authority_uri.query().is_some() {
            return Err(self.error(
                &key("authority"),
                "must be a scheme and host only, such as https://login.microsoftonline.com",
            ));
        }
        let authority = format!(
            "{}://{}",
            authority_uri.scheme_str().unwrap_or("https"),
            authority_uri
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default()
        );
        Ok(Identity {
            name,
            scope,
            credential: Credential::App {
                app: EntraApp {
                    tenant_id,
                    client_id,
                    authority,
                },
                proof,
            },
        })
    }

    /// No `credential` in the file: the variables the Azure SDKs read pick one, in their order.
    fn credential_from_env(
        &self,
        key: &str,
        is_default: bool,
        from_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RawCredential, ConfigError> {
        let credential = if from_env("AZURE_CLIENT_SECRET").is_some() {
            RawCredential::ClientSecret {
                secret_file: None,
                secret: None,
            }
        } else if from_env("AZURE_CLIENT_CERTIFICATE_PATH").is_some() {
            RawCredential::ClientCertificate {
                certificate_file: None,
                private_key_file: None,
                send_x5c: false,
                algorithm: None,
            }
        } else if from_env("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            RawCredential::WorkloadIdentity {
                token_file: None,
                source: None,
                audience: None,
            }
        } else if from_env("ACTIONS_ID_TOKEN_REQUEST_URL").is_some() {
            RawCredential::WorkloadIdentity {
                token_file: None,
                source: Some("github_actions".into()),
                audience: None,
            }
        } else if from_env("IDENTITY_ENDPOINT").is_some() {
            RawCredential::ManagedIdentity {
                endpoint: None,
                identity_header: None,
            }
        } else {
            let kinds = "is missing; set credential = { kind = \"client_secret\" | \
                         \"client_certificate\" | \"workload_identity\" | \"managed_identity\", ... }";
            return Err(self.error(
                key,
                if is_default {
                    format!(
                        "{kinds} or one of AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, \
                         AZURE_FEDERATED_TOKEN_FILE"
                    )
                } else {
                    kinds.to_string()
                },
            ));
        };
        Ok(credential)
    }

    fn secret_source(
        &self,
        key: &str,
        file: Option<PathBuf>,
        value: Option<Secret>,
    ) -> Result<SecretSource, ConfigError> {
        match (file, value) {
            (Some(file), _) => {
                self.existing_file(&format!("{key}.secret_file"), &file)?;
                Ok(SecretSource::File(file))
            }
            (None, Some(secret)) if !secret.is_empty() => Ok(SecretSource::Value(secret)),
            (None, _) => Err(self.error(
                key,
                "client_secret needs secret_file (preferred) or a secret from the environment \
                 (AZURE_CLIENT_SECRET)",
            )),
        }
    }

    fn certificate_files(
        &self,
        key: &str,
        certificate_file: Option<PathBuf>,
        private_key_file: Option<PathBuf>,
        send_x5c: bool,
        algorithm: Option<String>,
    ) -> Result<CertificateFiles, ConfigError> {
        let certificate_file = certificate_file.ok_or_else(|| {
            self.error(
                &format!("{key}.certificate_file"),
                "is missing; set it (PEM certificate, optionally with its key, or a password-less \
                 PKCS#12 file) or set AZURE_CLIENT_CERTIFICATE_PATH",
            )
        })?;
        self.existing_file(&format!("{key}.certificate_file"), &certificate_file)?;
        if let Some(file) = &private_key_file {
            self.existing_file(&format!("{key}.private_key_file"), file)?;
        }
        let algorithm = match algorithm.as_deref() {
            None | Some("PS256") => AssertionAlgorithm::Ps256,
            Some("RS256") => AssertionAlgorithm::Rs256,
            Some(other) => {
                return Err(self.error(
                    &format!("{key}.algorithm"),
                    format!("`{other}` is not supported; use \"PS256\" (default) or \"RS256\""),
                ));
            }
        };
        Ok(CertificateFiles {
            certificate_file,
            private_key_file,
            send_x5c,
            algorithm,
        })
    }

    fn federated_source(
        &self,
        key: &str,
        token_file: Option<PathBuf>,
        source: Option<String>,
        audience: Option<String>,
    ) -> Result<FederatedSource, ConfigError> {
        match source.as_deref() {
            None | Some("file") => {
                let file = token_file.ok_or_else(|| {
                    self.error(
                        &format!("{key}.token_file"),
                        "is missing; set it or set AZURE_FEDERATED_TOKEN_FILE (AKS workload \
                         identity sets it), or use source = \"github_actions\"",
                    )
                })?;
                if audience.is_some() {
                    return Err(self.error(
                        &format!("{key}.audience"),
                        "applies to source = \"github_actions\" only; a token file holds a token \
                         already issued for its audience",
                    ));
                }
                self.existing_file(&format!("{key}.token_file"), &file)?;
                Ok(FederatedSource::File(file))
            }
            Some("github_actions") => {
                // The runner sets these for a job with `permissions: id-token: write`.
                let missing = || {
                    self.error(
                        key,
                        "source = \"github_actions\" needs ACTIONS_ID_TOKEN_REQUEST_URL and \
                         ACTIONS_ID_TOKEN_REQUEST_TOKEN; give the job `permissions: id-token: write`",
                    )
                };
                let request_url = self
                    .non_empty_env("ACTIONS_ID_TOKEN_REQUEST_URL")
                    .ok_or_else(missing)?;
                let request_token = self
                    .non_empty_env("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
                    .ok_or_else(missing)?;
                self.http_url("ACTIONS_ID_TOKEN_REQUEST_URL", &request_url)?;
                Ok(FederatedSource::GitHubActions {
                    request_url,
                    request_token: Secret::new(request_token),
                    audience: audience.unwrap_or_else(|| FEDERATED_AUDIENCE.to_string()),
                })
            }
            Some(other) => Err(self.error(
                &format!("{key}.source"),
                format!(
                    "`{other}` is not a federated token source; use \"file\" or \"github_actions\""
                ),
            )),
        }
    }

    fn managed_identity(
        &self,
        key: &str,
        endpoint: Option<String>,
        identity_header: Option<Secret>,
    ) -> Result<ManagedIdentity, ConfigError> {
        // App Service and Container Apps announce their endpoint to the whole container, so it
        // serves every managed identity; everything else has IMDS.
        let platform_endpoint = self.non_empty_env("IDENTITY_ENDPOINT");
        let from_platform = endpoint.is_none() || endpoint == platform_endpoint;
        let identity_header = identity_header.or_else(|| {
            from_platform
                .then(|| self.non_empty_env("IDENTITY_HEADER").map(Secret::new))
                .flatten()
        });
        let endpoint = match (endpoint, platform_endpoint) {
            (Some(endpoint), _) => endpoint,
            (None, Some(platform)) => {
                if identity_header.is_none() {
                    return Err(self.error(
                        key,
                        "IDENTITY_ENDPOINT is set without IDENTITY_HEADER (Azure Arc?), a managed \
                         identity protocol this proxy does not speak; set endpoint explicitly",
                    ));
                }
                platform
            }
            (None, None) => IMDS_ENDPOINT.to_string(),
        };
        let endpoint_key = format!("{key}.endpoint");
        // IMDS speaks plain http on its link-local address only; App Service's endpoint is local.
        let uri = self.http_url_allowing(&endpoint_key, &endpoint, Some(IMDS_HOST))?;
        if uri.query().is_some() {
            return Err(self.error(
                &endpoint_key,
                "must be the token URL without a query; the proxy adds api-version and resource",
            ));
        }
        let protocol = match identity_header {
            Some(identity_header) if !identity_header.is_empty() => {
                ManagedProtocol::AppService { identity_header }
            }
            _ => ManagedProtocol::Imds,
        };
        Ok(ManagedIdentity {
            endpoint,
            protocol,
            client_id: None,
        })
    }
}
