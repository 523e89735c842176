//! The command line: load and validate configuration before binding anything, set up logging,
//! then run the proxy, check the identities, or probe readiness for a container HEALTHCHECK.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ado_auth_proxy::config::Config;
use ado_auth_proxy::telemetry::audit;
use ado_auth_proxy::telemetry::log_format::LineFormat;
use ado_auth_proxy::telemetry::log_writer::{BatchedStderr, FlushGuard};
use ado_auth_proxy::{App, keys};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(
    version,
    about = "Authenticating reverse proxy for Azure DevOps: replaces PATs with Entra ID service-principal tokens"
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "ADO_AUTH_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Log line format; the level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration, fetch a token per identity, report who it names (never the
    /// token) and ask Azure DevOps who it sees.
    Check {
        /// Azure DevOps organization whose membership to check (`contoso` in dev.azure.com/contoso).
        #[arg(long)]
        organization: Option<String>,
        /// Validate only, with no network: what a reload would load (CI of configuration repos).
        #[arg(long, conflicts_with = "organization")]
        offline: bool,
        /// Also ask Azure DevOps, with each client's identity, whether every rule can work
        /// (organization, project, repository, feed), and say how to grant what is missing.
        #[arg(long, conflicts_with = "offline")]
        rules: bool,
    },
    /// Exit 0 when the admin listener's /readyz answers 200 (for container HEALTHCHECKs).
    Healthcheck,
    /// Client keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Allow rules.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Print, per client, the least allow rules that cover the calls in audit lines (the proxy's
    /// log, text or JSON), as TOML to paste into the configuration.
    Suggest {
        /// The log to read; stdin when absent or `-`.
        file: Option<PathBuf>,
        /// Also show which logged calls this configuration's rules would refuse.
        #[arg(long, value_name = "CONFIG")]
        against: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new client key (once) and the configuration lines that admit it.
    New {
        /// The client's name, as it will appear in logs and metrics.
        #[arg(long)]
        name: String,
    },
    /// Read a secret on stdin (one line) and print the configuration lines that admit it as a
    /// client key: a tool's existing credential string becomes its proxy key. Never echoes it.
    Hash {
        /// The client's name, as it will appear in logs and metrics.
        #[arg(long, default_value = "NAME")]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // These need no configuration of their own (and no logging): answered before either.
    match &cli.command {
        Some(Command::Keys(KeysCommand::New { name })) => return new_key(name),
        Some(Command::Keys(KeysCommand::Hash { name })) => return hash_key(name),
        Some(Command::Rules(RulesCommand::Suggest { file, against })) => {
            return suggest_rules(file.as_deref(), against.as_deref());
        }
        _ => {}
    }
    // Flushes buffered log lines when main returns.
    let _log_flush = init_logging(cli.log_format);
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("ado-auth-proxy: {error}");
            return ExitCode::from(2);
        }
    };
    // The proxy listener is served by its own worker threads (see `App::run`); this runtime
    // only accepts and runs the admin listener, token refreshers and reloads, which one thread
    // keeps up with, and each thread more costs memory (its stack and allocator arena).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ado-auth-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => run(config, cli.config.clone()).await,
            Command::Check { offline: true, .. } => match ado_auth_proxy::check::offline(&config) {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("ado-auth-proxy: {error}");
                    ExitCode::from(2)
                }
            },
            Command::Check {
                organization,
                rules,
                ..
            } => {
                let (report, passed) =
                    ado_auth_proxy::check::check(&config, organization.as_deref(), rules).await;
                print!("{report}");
                if passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Command::Healthcheck => healthcheck(config).await,
            // Answered above, before any configuration is needed.
            Command::Keys(_) | Command::Rules(_) => ExitCode::SUCCESS,
        }
    })
}

/// Logs go to stderr in batches (see `log_writer`): one audit line per request must not cost a
/// system call per request.
fn init_logging(format: LogFormat) -> FlushGuard {
    let (writer, guard) = BatchedStderr::start();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = match format {
        LogFormat::Text => LineFormat::Text,
        LogFormat::Json => LineFormat::Json,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .event_format(format)
        .init();
    // After the subscriber: the sink asks it once whether audit lines are wanted.
    audit::install(format, writer);
    guard
}

/// The key goes to stdout once; the configuration keeps only its SHA-256.
fn new_key(name: &str) -> ExitCode {
    if !keys::valid_client_name(name) {
        eprintln!("ado-auth-proxy: --name must be 1 to 64 letters, digits, '-', '_' or '.'");
        return ExitCode::from(2);
    }
    let Ok(key) = keys::generate() else {
        eprintln!("ado-auth-proxy: the operating system's random source failed");
        return ExitCode::FAILURE;
    };
    let entry = keys::client_entry(name, &keys::sha256(key.as_bytes()));
    println!(
        "Client key for \"{name}\" (shown once; give it to the client as the password it sends, where it \
         sent a PAT):\n\n  {key}\n\nAdd this client to the proxy's configuration and list what it may call:\n\n{entry}"
    );
    ExitCode::SUCCESS
}

/// A credential string a tool already sends (after it was revoked in Azure DevOps, if it was a
/// PAT) made a client key: only its SHA-256 is printed, the secret never.
fn hash_key(name: &str) -> ExitCode {
    if !keys::valid_client_name(name) {
        eprintln!("ado-auth-proxy: --name must be 1 to 64 letters, digits, '-', '_' or '.'");
        return ExitCode::from(2);
    }
    let mut secret = Vec::new();
    if let Err(error) = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut secret) {
        eprintln!("ado-auth-proxy: cannot read the secret from stdin: {error}");
        return ExitCode::from(2);
    }
    // One trailing line break is how `echo` and a terminal end the line, not part of the secret.
    let line = secret
        .strip_suffix(b"\r\n")
        .or_else(|| secret.strip_suffix(b"\n"))
        .unwrap_or(&secret);
    if line.is_empty() {
        eprintln!("ado-auth-proxy: stdin held no secret: write it as one line on stdin");
        return ExitCode::from(2);
    }
    if line.contains(&b'\n') {
        eprintln!("ado-auth-proxy: stdin held more than one line: the secret is one line");
        return ExitCode::from(2);
    }
    let entry = keys::client_entry(name, &keys::sha256(line));
    secret.fill(0);
    println!(
        "# The client sends this secret where it sent a PAT; the configuration holds only its SHA-256.\n\
         # If it is an Azure DevOps PAT, revoke it in Azure DevOps first: it must not work there any more.\n{entry}"
    );
    ExitCode::SUCCESS
}

/// `rules suggest`: exit 2 only when the log or the configuration cannot be read.
fn suggest_rules(file: Option<&std::path::Path>, against: Option<&std::path::Path>) -> ExitCode {
    use ado_auth_proxy::suggest;
    let config = match against.map(|path| (path, Config::load(Some(path)))) {
        None => None,
        Some((path, Ok(config))) => Some((path, config)),
        Some((path, Err(error))) => {
            eprintln!("ado-auth-proxy: --against {}: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    let evidence = match file.filter(|path| path.as_os_str() != "-") {
        None => suggest::Evidence::read(std::io::stdin().lock())
            .map_err(|error| format!("cannot read the log from stdin: {error}")),
        Some(path) => std::fs::File::open(path)
            .and_then(|log| suggest::Evidence::read(std::io::BufReader::new(log)))
            .map_err(|error| format!("cannot read the log {}: {error}", path.display())),
    };
    let evidence = match evidence {
        Ok(evidence) => evidence,
        Err(message) => {
            eprintln!("ado-auth-proxy: {message}");
            return ExitCode::from(2);
        }
    };
    let default_host = config
        .as_ref()
        .map_or(suggest::DEFAULT_HOST.to_string(), |(_, config)| {
            config.upstream.authority.host().to_ascii_lowercase()
        });
    print!("{}", suggest::render(&evidence, &default_host));
    if let Some((path, config)) = config {
        print!(
            "{}",
            suggest::against(&evidence, &config, &path.display().to_string())
        );
    }
    ExitCode::SUCCESS
}

async fn run(config: Config, config_file: Option<std::path::PathBuf>) -> ExitCode {
    let reloads = ado_auth_proxy::reload::triggers(config_file, &config);
    if config.inbound.open_beyond_loopback {
        tracing::warn!(
            address = %config.listen.address,
            "inbound.mode = \"open\" on a non-loopback address: anyone who can reach it acts as the service principal"
        );
    }
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        proxy = %app.proxy_addr(),
        admin = %app.admin_addr(),
        version = env!("CARGO_PKG_VERSION"),
        "ado-auth-proxy listening"
    );
    if let Err(error) = app.run_with_reloads(shutdown_signal(), reloads).await {
        tracing::error!("{error}");
        return ExitCode::FAILURE;
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// A minimal HTTP/1.1 GET of /readyz, so images without curl can use it as their HEALTHCHECK.
/// Over TLS when the admin listener has it, trusting exactly its configured certificate.
async fn healthcheck(config: Config) -> ExitCode {
    let mut address = config.admin.address;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let tls = match &config.admin.tls {
        Some(files) => match ado_auth_proxy::tls::pinned_client_config(
            &files.certificate_file,
            "admin.tls.certificate_file",
        ) {
            Ok(tls) => Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))),
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let probe = async {
        let stream = tokio::net::TcpStream::connect(address).await?;
        let request =
            format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        match tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::IpAddress(address.ip().into());
                read_head(tls.connect(name, stream).await?, &request).await
            }
            None => read_head(stream, &request).await,
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Ok(head)) if head.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(Ok(head)) => {
            eprintln!("not ready: {}", head.lines().next().unwrap_or_default());
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("admin listener {address} unreachable: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("admin listener {address} did not answer within 5 s");
            ExitCode::FAILURE
        }
    }
}

async fn read_head(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    request: &str,
) -> std::io::Result<String> {
    stream.write_all(request.as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await?;
    Ok(String::from_utf8_lossy(&head[..n]).into_owned())
}
