//! Configuration: figment layers (defaults < TOML file < `ADO_AUTH_PROXY_*` environment, plus the
//! standard `AZURE_*` variables for the default identity) deserialized into raw structs, then
//! validated once into [`Config`], which the rest of the program uses and never re-parses.
//!
//! Every error names the key, where its value came from, and what is wrong. No error message ever
//! quotes a secret's value.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

mod network;
mod raw;
mod types;
mod validate;

pub use network::Network;
pub use types::{
    Admin, AssertionAlgorithm, CertificateFiles, ClientConfig, ClientProof, ClientToken,
    Credential, Egress, EntraApp, FederatedSource, Identity, Inbound, InboundMode, IssuerKeySource,
    Listen, ManagedIdentity, ManagedProtocol, Proof, SecretSource, TlsFiles, Upstream,
};
pub use types::{ClientLimits, Priority};
pub use validate::is_loopback_host;

use raw::RawConfig;
use validate::Validator;

/// Azure DevOps' application id; `.default` asks for the permissions granted to the principal.
pub const AZURE_DEVOPS_SCOPE: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
pub const DEFAULT_IDENTITY: &str = "default";
const ENV_PREFIX: &str = "ADO_AUTH_PROXY_";
const MAX_REPLAY_BODY_BYTES: usize = 16 * 1024 * 1024;
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
const IMDS_HOST: &str = "169.254.169.254";
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration key `{key}` (from {origin}): {problem}")]
    Invalid {
        key: String,
        origin: String,
        problem: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub admin: Admin,
    pub upstream: Upstream,
    pub identities: Vec<Identity>,
    pub inbound: Inbound,
    pub clients: Vec<ClientConfig>,
}

impl Config {
    /// Files named here that a reload reads again: the listeners' certificates and keys.
    pub fn reloaded_files(&self) -> impl Iterator<Item = &Path> {
        [&self.listen.tls, &self.admin.tls]
            .into_iter()
            .flatten()
            .flat_map(|files| [files.certificate_file.as_path(), files.key_file.as_path()])
    }

    /// Loads from the optional TOML file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Parse(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]));
        Self::from_figment(&figment, &Env::var)
    }

    /// Loads from TOML text alone (tests, `check` of an inline config). In-memory configuration:
    /// the process environment is not read, neither `ADO_AUTH_PROXY_*` nor the `AZURE_*`,
    /// `IDENTITY_*` and GitHub Actions variables, so the result depends on `text` alone.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with_env(text, &|_| None)
    }

    /// [`Config::from_toml`] with the Azure and platform variables that `env` gives.
    fn from_toml_with_env(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_figment(&Figment::from(Toml::string(text)), env)
    }

    fn from_figment(
        figment: &Figment,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = figment
            .extract()
            .map_err(|e| ConfigError::Parse(describe_figment_error(e)))?;
        Validator { figment, env }.validate(raw)
    }
}

fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type.
mod tests;
