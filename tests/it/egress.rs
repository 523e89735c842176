//! The corporate egress proxy, through the real binary: forwarded and token traffic tunnel
//! through `CONNECT` with the proxy's credentials, which go to the proxy only and never into a
//! log or a metric; `upstream.proxy` overrides the environment, `"none"` and `NO_PROXY` go
//! direct.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::cli::{command, run, terminate};
use crate::harness::OPEN_ALLOW_ALL;
use crate::support::azure::{FakeAzure, FakeBlob};
use crate::support::corporate::{ConnectProxy, TlsFront};
use crate::support::entra::{EntraConfig, FakeEntra};
use crate::support::{self};

const USER: &str = "corp-user";
const PASSWORD: &str = "egress-pa55word-7c1e";
/// Entra ID under a name the test certificate covers, reached through the TLS front.
const LOGIN: &str = "https://login.visualstudio.com";

struct Corporate {
    entra: FakeEntra,
    azure: FakeAzure,
    _blob: FakeBlob,
    _front: TlsFront,
    proxy: ConnectProxy,
    dir: tempfile::TempDir,
}

impl Corporate {
    async fn start() -> Corporate {
        let entra = FakeEntra::start(EntraConfig::default()).await;
        let blob = FakeBlob::start().await;
        let azure = FakeAzure::start(blob.url()).await;
        azure.trust(&entra.config().signing_key);
        let entra_addr: SocketAddr = entra
            .authority()
            .trim_start_matches("http://")
            .parse()
            .expect("the fake Entra ID's address");
        let front = TlsFront::start(entra_addr).await;
        let proxy = ConnectProxy::start(
            vec![
                ("dev.azure.com:443".into(), azure.addr()),
                ("login.visualstudio.com:443".into(), front.addr()),
            ],
            USER,
            PASSWORD,
        )
        .await;
        Corporate {
            entra,
            azure,
            _blob: blob,
            _front: front,
            proxy,
            dir: tempfile::TempDir::new().expect("temp dir"),
        }
    }

    fn proxy_url(&self, password: &str) -> String {
        format!("http://{USER}:{password}@{}", self.proxy.addr())
    }

    /// `upstream`: extra `[upstream]` lines; `authority`: where Entra ID is.
    fn config(&self, name: &str, upstream: &str, authority: &str) -> PathBuf {
        let entra = self.entra.config();
        let secret = self.dir.path().join("client-secret");
        std::fs::write(&secret, &entra.client_secret).expect("secret");
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[listen]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
                 [upstream]\nurl = \"https://dev.azure.com\"\nca_file = \"{ca}\"\n{upstream}\n\
                 [identities.default]\ntenant_id = \"{tenant}\"\nclient_id = \"{client}\"\n\
                 authority = \"{authority}\"\n\
                 credential = {{ kind = \"client_secret\", secret_file = \"{secret}\" }}\n\
                 {OPEN_ALLOW_ALL}",
                ca = FakeAzure::ca_file().display(),
                tenant = entra.tenant_id,
                client = entra.client_id,
                secret = secret.display(),
            ),
        )
        .expect("config");
        path
    }

    /// Starts the binary with `env`, waits for its token, GETs a path on dev.azure.com through
    /// it, and returns the status, the metrics text and everything the binary logged.
    async fn one_request(&self, config: &Path, env: &[(&str, &str)]) -> (u16, String, String) {
        let mut binary = command(&["--config", config.to_str().expect("utf-8")]);
        binary.envs(env.iter().copied());
        let child = run(binary).await;
        let url = format!("http://{}/contoso/_apis/through", child.proxy);
        let ready = format!("http://{}/readyz", child.admin);
        for _ in 0..200 {
            if support::get(&ready, &[]).await.status == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let reply = support::get(&url, &[]).await;
        if reply.status == 200 {
            assert!(
                reply
                    .text()
                    .contains(&format!("http://{}/contoso", child.proxy)),
                "the answer's URLs are rewritten: {}",
                reply.text()
            );
        }
        let status = reply.status.as_u16();
        let metrics = support::get(&format!("http://{}/metrics", child.admin), &[])
            .await
            .text();
        let (_, logs) = terminate(child).await;
        (status, metrics, logs)
    }

    fn tunnels_to(&self, target: &str) -> usize {
        self.proxy
            .asked()
            .iter()
            .filter(|asked| asked.tunnelled && asked.target == target)
            .count()
    }
}

fn assert_no_password(text: &str, password: &str) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    assert!(
        !text.contains(password),
        "the proxy password leaked:\n{text}"
    );
    assert!(
        !text.contains(&encoded),
        "the proxy credentials leaked:\n{text}"
    );
}

#[tokio::test]
async fn forwarded_and_token_traffic_tunnel_through_the_proxy_named_in_the_environment() {
    let corp = Corporate::start().await;
    let config = corp.config("env.toml", "", LOGIN);
    let proxy_url = corp.proxy_url(PASSWORD);
    let (status, metrics, logs) = corp
        .one_request(
            &config,
            &[
                ("HTTPS_PROXY", &proxy_url),
                ("NO_PROXY", "example.internal"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{logs}");
    // The token came from Entra ID through the tunnel and was valid at Azure DevOps.
    assert!(
        corp.tunnels_to("login.visualstudio.com:443") >= 1,
        "{:?}",
        corp.proxy.asked()
    );
    assert!(
        corp.tunnels_to("dev.azure.com:443") >= 1,
        "{:?}",
        corp.proxy.asked()
    );
    let seen = corp.azure.seen();
    assert!(
        seen.iter()
            .any(|r| r.target == "/contoso/_apis/through" && r.token_valid),
        "{seen:?}"
    );
    // The proxy only ever tunnelled, with the credentials, and saw no token in clear.
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    for asked in corp.proxy.asked() {
        assert_eq!(asked.method, "CONNECT", "{asked:?}");
        assert_eq!(asked.proxy_authorization.as_deref(), Some(&*expected));
        assert!(
            asked
                .headers
                .iter()
                .all(|h| !h.to_ascii_lowercase().contains("bearer")),
            "{asked:?}"
        );
    }
    assert!(
        logs.contains(&format!("http://{}", corp.proxy.addr())),
        "the log names the proxy without its credentials: {logs}"
    );
    assert_no_password(&logs, PASSWORD);
    assert_no_password(&metrics, PASSWORD);
}

#[tokio::test]
async fn upstream_proxy_overrides_the_environment_and_none_or_no_proxy_go_direct() {
    let corp = Corporate::start().await;
    let good = corp.proxy_url(PASSWORD);
    let dead = "http://127.0.0.1:1";

    // The file's proxy wins over a dead one in the environment.
    let configured = corp.config("file.toml", &format!("proxy = \"{good}\""), LOGIN);
    let (status, _, logs) = corp
        .one_request(&configured, &[("HTTPS_PROXY", dead)])
        .await;
    assert_eq!(status, 200, "{logs}");
    assert_no_password(&logs, PASSWORD);
    let tunnels = corp.proxy.asked().len();
    assert!(tunnels >= 2, "{:?}", corp.proxy.asked());

    // "none": straight to Azure DevOps (by upstream.resolve) and to a loopback Entra ID.
    let direct = corp.config(
        "none.toml",
        &format!("proxy = \"none\"\n{}", corp.azure.resolve_toml()),
        &corp.entra.authority(),
    );
    let (status, _, logs) = corp.one_request(&direct, &[("HTTPS_PROXY", &good)]).await;
    assert_eq!(status, 200, "{logs}");
    assert_eq!(
        corp.proxy.asked().len(),
        tunnels,
        "nothing went through the proxy"
    );

    // NO_PROXY sends dev.azure.com direct while Entra ID still goes through the proxy.
    let no_proxy = corp.config("no-proxy.toml", &corp.azure.resolve_toml(), LOGIN);
    let (status, _, logs) = corp
        .one_request(
            &no_proxy,
            &[("HTTPS_PROXY", &good), ("NO_PROXY", "dev.azure.com")],
        )
        .await;
    assert_eq!(status, 200, "{logs}");
    let later = &corp.proxy.asked()[tunnels..];
    assert!(
        later
            .iter()
            .all(|asked| asked.target == "login.visualstudio.com:443"),
        "{later:?}"
    );
    assert!(!later.is_empty(), "the token still came through the proxy");

    // Wrong credentials: the proxy's 407 is the client's 502, and the log blames the proxy.
    let wrong = "wrong-pa55word";
    let refused = corp.config(
        "wrong.toml",
        &format!("proxy = \"{}\"", corp.proxy_url(wrong)),
        &corp.entra.authority(),
    );
    let (status, _, logs) = corp.one_request(&refused, &[]).await;
    assert_eq!(status, 502, "{logs}");
    assert!(logs.contains("egress proxy"), "{logs}");
    assert_no_password(&logs, wrong);
}
