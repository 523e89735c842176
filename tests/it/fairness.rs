//! Fair use of one identity's budget: per-client limits (requests in flight, a rate with a
//! burst) answered with 429 and `Retry-After` by the proxy, and, while Azure DevOps throttles the
//! identity, turns by client priority: high goes on, normal waits its share, low waits or is
//! refused, and nothing waits past `inbound.max_throttle_wait`.

use std::time::{Duration, Instant};

use crate::access::Keys;
use crate::harness::{Options, Stack, basic};
use crate::support::{self, Reply};

struct Clients {
    stack: Stack,
    keys: Vec<(String, String)>,
}

impl Clients {
    /// `clients`: (name, extra TOML lines of its entry), all allowed every GET.
    async fn start(inbound: &str, clients: &[(&str, &str)]) -> Clients {
        let keys: Vec<(String, String)> = clients
            .iter()
            .map(|(name, _)| {
                (
                    name.to_string(),
                    ado_auth_proxy::keys::generate().expect("random"),
                )
            })
            .collect();
        let mut access = format!("[inbound]\nmode = \"keys\"\n{inbound}\n");
        for ((name, extra), (_, key)) in clients.iter().zip(&keys) {
            access.push_str(&format!(
                "[[clients]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\n{extra}\n\
                 allow = [{{ methods = [\"GET\"], path = \"/**\" }}]\n",
                Keys::hash(key)
            ));
        }
        let stack = Stack::start_with(Options {
            access_toml: access,
            ..Options::default()
        })
        .await;
        Clients { stack, keys }
    }

    fn key(&self, name: &str) -> &str {
        &self.keys.iter().find(|(n, _)| n == name).expect("client").1
    }

    async fn get(&self, name: &str, path: &str) -> (Reply, Duration) {
        let started = Instant::now();
        let reply = support::get(
            &self.stack.url(path),
            &[("authorization", &basic("tool", self.key(name)))],
        )
        .await;
        (reply, started.elapsed())
    }

    async fn limited(&self, client: &str, limit: &str) -> f64 {
        self.stack
            .metric(&format!(
                "ado_auth_proxy_limited_requests_total{{client=\"{client}\",limit=\"{limit}\"}}"
            ))
            .await
    }
}

fn retry_after(reply: &Reply) -> u64 {
    reply.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds")
}

#[tokio::test]
async fn a_client_over_its_rate_or_concurrency_gets_429_with_retry_after() {
    let clients = Clients::start(
        "",
        &[
            ("bursty", "max_requests_per_second = 0.5\nburst = 2"),
            ("single", "max_concurrent_requests = 1"),
            ("free", ""),
        ],
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            clients
                .get("bursty", "/contoso/_apis/projects")
                .await
                .0
                .status,
            200
        );
    }
    let (over, _) = clients.get("bursty", "/contoso/_apis/projects").await;
    assert_eq!(over.status, 429, "{}", over.text());
    assert!((1..=2).contains(&retry_after(&over)), "{:?}", over.headers);
    assert_eq!(clients.limited("bursty", "rate").await, 1.0);
    // Another client's share is its own.
    for _ in 0..3 {
        assert_eq!(
            clients
                .get("free", "/contoso/_apis/projects")
                .await
                .0
                .status,
            200
        );
    }

    // One request in flight: a second is refused until the first has ended.
    let before = clients.stack.devops.requests().len();
    let slow = {
        let (url, authorization) = (
            clients.stack.url("/_test/slow?ms=1500"),
            basic("tool", clients.key("single")),
        );
        tokio::spawn(async move { support::get(&url, &[("authorization", &authorization)]).await })
    };
    for _ in 0..100 {
        if clients.stack.devops.requests().len() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (second, _) = clients.get("single", "/contoso/_apis/projects").await;
    assert_eq!(second.status, 429);
    assert_eq!(retry_after(&second), 1);
    assert_eq!(clients.limited("single", "concurrency").await, 1.0);
    assert_eq!(slow.await.expect("slow request").status, 200);
    assert_eq!(
        clients
            .get("single", "/contoso/_apis/projects")
            .await
            .0
            .status,
        200
    );
}

#[tokio::test]
async fn while_azure_devops_throttles_an_identity_high_goes_first_and_nothing_waits_past_its_bound()
{
    let clients = Clients::start(
        "max_throttle_wait = \"2s\"",
        &[
            ("ci", "priority = \"high\""),
            ("builds", ""),
            ("exporter", "priority = \"low\""),
        ],
    )
    .await;
    // Azure DevOps holds an answer back and says to retry in 3 s: the identity is held.
    let (delayed, _) = clients.get("exporter", "/_test/delayed").await;
    assert_eq!(delayed.status, 200);

    // High priority goes on at once.
    let (ci, took) = clients.get("ci", "/contoso/_apis/projects").await;
    assert_eq!(ci.status, 200);
    assert!(took < Duration::from_secs(1), "high waited {took:?}");
    // Low priority would wait all 3 s, past the 2 s bound: refused at once, told when.
    let (exporter, took) = clients.get("exporter", "/contoso/_apis/projects").await;
    assert_eq!(exporter.status, 429, "{}", exporter.text());
    assert!(
        took < Duration::from_secs(1),
        "refused without waiting: {took:?}"
    );
    assert!(retry_after(&exporter) >= 2, "{:?}", exporter.headers);
    assert_eq!(clients.limited("exporter", "throttled").await, 1.0);
    // Normal waits half the hold, within the bound, then goes.
    let (builds, took) = clients.get("builds", "/contoso/_apis/projects").await;
    assert_eq!(builds.status, 200);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "normal waited {took:?}"
    );
    assert_eq!(clients.limited("builds", "throttled").await, 0.0);

    // Once the hold is over, everyone goes.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (exporter, took) = clients.get("exporter", "/contoso/_apis/projects").await;
    assert_eq!(exporter.status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
}
