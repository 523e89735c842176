//! Real git through the proxy against the real `git http-backend` behind the fake Azure DevOps:
//! a user's only change is the URL, and the PAT in it never reaches Azure DevOps.

use std::path::Path;

use crate::harness::{OLD_PAT, Stack};

/// Runs git with no user or system configuration, no prompts, and a fixed identity.
pub async fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    let home = dir.join(".home");
    std::fs::create_dir_all(&home).expect("home dir");
    tokio::process::Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .env("HOME", &home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .output()
        .await
        .expect("git runs")
}

pub fn assert_ok(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn git_clone_push_and_fetch_work_through_the_proxy() {
    let stack = Stack::start().await;
    stack.devops.create_repo("contoso", "web", "web");
    let work = tempfile::TempDir::new().expect("temp dir");
    let url = format!(
        "http://anything:{OLD_PAT}@{}/contoso/web/_git/web",
        stack.proxy
    );

    let clone = git(work.path(), &["clone", &url, "first"]).await;
    assert_ok(&clone, "git clone");
    let first = work.path().join("first");
    assert!(first.join("README.md").is_file());

    // Enough data that the push is a real pack, not a trivial one.
    let payload: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    std::fs::write(first.join("data.txt"), payload).expect("write file");
    assert_ok(&git(&first, &["add", "data.txt"]).await, "git add");
    assert_ok(
        &git(&first, &["commit", "-q", "-m", "through the proxy"]).await,
        "git commit",
    );
    assert_ok(&git(&first, &["push", "origin", "main"]).await, "git push");

    let second = git(work.path(), &["clone", &url, "second"]).await;
    assert_ok(&second, "second clone");
    let second = work.path().join("second");
    assert!(
        second.join("data.txt").is_file(),
        "the pushed commit is visible"
    );

    std::fs::write(first.join("more.txt"), "more").expect("write");
    assert_ok(&git(&first, &["add", "more.txt"]).await, "git add");
    assert_ok(
        &git(&first, &["commit", "-q", "-m", "second"]).await,
        "git commit",
    );
    assert_ok(
        &git(&first, &["push", "origin", "main"]).await,
        "second push",
    );
    assert_ok(&git(&second, &["fetch", "origin"]).await, "git fetch");
    let log = git(&second, &["log", "--oneline", "origin/main"]).await;
    assert!(String::from_utf8_lossy(&log.stdout).contains("second"));

    let recorded = stack.devops.requests();
    assert!(
        recorded
            .iter()
            .any(|r| r.uri.ends_with("/git-receive-pack"))
    );
    assert!(
        recorded.iter().all(|r| r.authorized),
        "every request carried a valid token"
    );
    for request in &recorded {
        for value in request.headers.values() {
            assert!(!String::from_utf8_lossy(value.as_bytes()).contains(OLD_PAT));
        }
    }
}
