//! Starts the real proxy (the library's `App`, on 127.0.0.1 port 0) in front of the fakes.

use std::net::SocketAddr;
use std::time::Duration;

use ado_auth_proxy::App;
use ado_auth_proxy::config::Config;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::devops::{DevOpsConfig, FakeDevOps};
use crate::support::entra::{EntraConfig, EntraMode, FakeEntra};
use crate::support::{self, Reply};

/// A PAT as a legacy tool would send it; it must never reach Azure DevOps.
pub const OLD_PAT: &str = "old-pat-4f3b2a1c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a";

pub struct Stack {
    pub entra: FakeEntra,
    pub devops: FakeDevOps,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    _git_root: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ado_auth_proxy::StartError>>>,
}

#[derive(Default)]
pub struct Options {
    pub token_lifetime_secs: Option<u64>,
    /// Extra TOML appended to the generated config (e.g. `[upstream]` timeouts).
    pub upstream_toml: String,
    /// Extra `[listen]` keys; `address` defaults to 127.0.0.1:0.
    pub listen_toml: String,
    /// Start the proxy without waiting for its first token.
    pub no_wait: bool,
    /// How the fake Entra ID answers from the start.
    pub entra_mode: Option<EntraMode>,
    /// `[inbound]` and `[[clients]]` tables; empty means open mode allowing every call.
    pub access_toml: String,
    /// Forward to this upstream instead of the fake Azure DevOps (e.g. a TLS one).
    pub upstream_url: Option<String>,
    /// `[identities.*]` tables, written once the fake Entra ID is up; none means the default
    /// identity with the fake's client secret.
    pub identities: Option<IdentitiesToml>,
}

pub type IdentitiesToml = Box<dyn Fn(&FakeEntra) -> String + Send + Sync>;

/// Open mode, every call allowed: the sidecar setup, for tests about the rest of the path.
pub const OPEN_ALLOW_ALL: &str = r#"
[inbound]
mode = "open"
allow = [{ methods = ["*"], path = "/**" }]
"#;

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Stack {
        let entra = FakeEntra::start(EntraConfig {
            lifetime_secs: options.token_lifetime_secs.unwrap_or(3600),
            ..EntraConfig::default()
        })
        .await;
        if let Some(mode) = options.entra_mode.clone() {
            entra.set_mode(mode);
        }
        let git_root = TempDir::new().expect("temp dir");
        let devops = FakeDevOps::start(DevOpsConfig {
            signing_key: entra.config().signing_key.clone(),
            git_root: git_root.path().to_path_buf(),
        })
        .await;
        Self::start_proxy(entra, devops, git_root, options).await
    }

    pub fn config_toml(entra: &FakeEntra, upstream_url: &str, options: &Options) -> String {
        format!(
            "[listen]\n{listen}\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{upstream_url}\"\n{upstream}\n{identity}\n{access}",
            listen = if options.listen_toml.contains("address") {
                options.listen_toml.clone()
            } else {
                format!("address = \"127.0.0.1:0\"\n{}", options.listen_toml)
            },
            upstream = options.upstream_toml,
            identity = match &options.identities {
                Some(identities) => identities(entra),
                None => entra.identity_toml(None),
            },
            access = if options.access_toml.is_empty() {
                OPEN_ALLOW_ALL
            } else {
                &options.access_toml
            },
        )
    }

    async fn start_proxy(
        entra: FakeEntra,
        devops: FakeDevOps,
        git_root: TempDir,
        options: Options,
    ) -> Stack {
        let upstream = options.upstream_url.clone().unwrap_or_else(|| devops.url());
        let toml = Self::config_toml(&entra, &upstream, &options);
        let config = Config::from_toml(&toml).expect("test config is valid");
        let app = App::build(config).await.expect("proxy starts");
        let (proxy, admin) = (app.proxy_addr(), app.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        let stack = Stack {
            entra,
            devops,
            proxy,
            admin,
            _git_root: git_root,
            stop: Some(stop),
            task: Some(task),
        };
        if !options.no_wait {
            stack.wait_ready().await;
        }
        stack
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.proxy, path_and_query)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub async fn readyz(&self) -> Reply {
        support::get(&self.admin_url("/readyz"), &[]).await
    }

    pub async fn metrics(&self) -> String {
        support::get(&self.admin_url("/metrics"), &[]).await.text()
    }

    /// The value of one exported series (name and labels as `/metrics` prints them).
    pub async fn metric(&self, series: &str) -> f64 {
        let metrics = self.metrics().await;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} is not exported:\n{metrics}"))
    }

    /// Polls `/readyz` until `done` holds for its JSON body; fails after 10 s with the last body.
    pub async fn wait_for_readyz(
        &self,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let body = self.readyz().await.json();
            if done(&body) {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "readyz never got there: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `/readyz` until it answers 200, for at most ten seconds.
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.readyz().await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("proxy not ready after 10 s: {}", self.readyz().await.text());
    }

    /// Signals shutdown and waits for the proxy to drain.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("proxy drains within 30 s")
                .expect("proxy task does not panic")
                .expect("proxy runs");
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Basic auth as git and curl send a PAT: any user name, the PAT as password.
pub fn basic_pat() -> String {
    basic("anything", OLD_PAT)
}

/// An `Authorization: Basic` value, as git and curl build it.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Sends raw bytes on a fresh connection and returns whatever comes back until the server closes
/// or two seconds pass: for request shapes a well-behaved client library refuses to produce.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
