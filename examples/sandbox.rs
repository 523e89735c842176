//! Try the proxy without an Azure account: starts the in-process stand-ins for Entra ID and Azure
//! DevOps (the same fakes the tests use), creates a repository, runs the real proxy in front of
//! them, and prints commands to try. Ctrl-C stops everything.
//!
//!     cargo run --example sandbox

#[path = "../tests/support/mod.rs"]
mod support;

use ado_auth_proxy::App;
use ado_auth_proxy::config::Config;
use support::devops::{DevOpsConfig, FakeDevOps};
use support::entra::{EntraConfig, FakeEntra};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let proxy_address = std::env::var("SANDBOX_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let admin_address = std::env::var("SANDBOX_ADMIN").unwrap_or_else(|_| "127.0.0.1:9090".into());

    let entra = FakeEntra::start(EntraConfig::default()).await;
    let git_root = tempfile::TempDir::new()?;
    let devops = FakeDevOps::start(DevOpsConfig {
        signing_key: entra.config().signing_key.clone(),
        git_root: git_root.path().to_path_buf(),
    })
    .await;
    devops.create_repo("contoso", "web", "web");

    let config = Config::from_toml(&format!(
        "[listen]\naddress = \"{proxy_address}\"\n[admin]\naddress = \"{admin_address}\"\n\
         [upstream]\nurl = \"{upstream}\"\n{identity}\n\
         [inbound]\nmode = \"open\"\nallow = [{{ methods = [\"*\"], path = \"/**\" }}]\n",
        upstream = devops.url(),
        identity = entra.identity_toml(None),
    ))?;
    let app = App::build(config).await?;
    let (proxy, admin) = (app.proxy_addr(), app.admin_addr());

    println!(
        "\nado-auth-proxy sandbox\n\
         fake Entra ID:     {authority}\n\
         fake Azure DevOps: {upstream} (repository contoso/web/_git/web)\n\
         proxy:             http://{proxy}\n\
         admin:             http://{admin}/metrics  /healthz  /readyz\n\n\
         Try, in another terminal:\n  \
           git clone http://anything:old-pat@{proxy}/contoso/web/_git/web\n  \
           cd web && echo hi > hi.txt && git add hi.txt && git commit -m hi && git push\n  \
           curl -u :old-pat http://{proxy}/contoso/_apis/projects?api-version=7.1\n  \
           curl http://{admin}/metrics\n\n\
         The PAT is thrown away; the fake Azure DevOps accepts only the proxy's signed token.\n\
         Ctrl-C to stop.\n",
        authority = entra.authority(),
        upstream = devops.url(),
    );
    app.run(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
