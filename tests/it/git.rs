//! Real git through the proxy against the real `git http-backend` behind the fake Azure DevOps:
//! a user's only change is the URL, and the PAT in it never reaches Azure DevOps.

use std::path::Path;

use crate::harness::{OLD_PAT, Stack};

/// Runs git with no user or system configuration, no prompts, and a fixed identity.
pub async fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    git_with(dir, args, &[]).await
}

/// [`git`] with extra environment variables.
pub async fn git_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
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
        .envs(env.iter().copied())
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

/// git LFS follows the absolute `href`s of the batch API; the proxy rewrites them to itself, so
/// objects go up and come down through it, with the token, and never to the real host.
#[tokio::test]
async fn git_lfs_pushes_and_pulls_objects_through_the_proxy() {
    let stack = Stack::start().await;
    stack.devops.create_repo("contoso", "web", "web");
    let work = tempfile::TempDir::new().expect("temp dir");
    let url = format!("http://{}/contoso/web/_git/web", stack.proxy);
    // git-lfs' filters for the clones made from `work` (their HOME; see `git`).
    assert_ok(
        &git(work.path(), &["lfs", "install"]).await,
        "git lfs install",
    );

    assert_ok(
        &git(work.path(), &["clone", &url, "first"]).await,
        "git clone",
    );
    let first = work.path().join("first");
    // Commands in the clone run with a HOME of their own (see `git`): the filters go in the
    // repository's config.
    assert_ok(
        &git(&first, &["lfs", "install", "--local"]).await,
        "git lfs install --local",
    );
    assert_ok(
        &git(&first, &["lfs", "track", "*.bin"]).await,
        "git lfs track",
    );
    let object: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(first.join("model.bin"), &object).expect("write object");
    assert_ok(
        &git(&first, &["add", ".gitattributes", "model.bin"]).await,
        "git add",
    );
    assert_ok(
        &git(&first, &["commit", "-q", "-m", "an LFS object"]).await,
        "commit",
    );
    assert_ok(
        &git(&first, &["push", "origin", "main"]).await,
        "git push (with LFS)",
    );

    assert_ok(
        &git(work.path(), &["clone", &url, "second"]).await,
        "git clone (with LFS)",
    );
    let pulled = std::fs::read(work.path().join("second/model.bin")).expect("checked out");
    assert!(
        pulled == object,
        "the LFS object came back whole, not as a pointer file"
    );

    let requests = stack.devops.requests();
    eprintln!(
        "ALL {:?}",
        requests
            .iter()
            .map(|r| (&r.method, &r.uri))
            .collect::<Vec<_>>()
    );
    let lfs: Vec<_> = requests
        .iter()
        .filter(|r| r.uri.contains("/info/lfs/"))
        .collect();
    assert!(
        lfs.iter().any(|r| r.method == "PUT") && lfs.iter().any(|r| r.method == "GET"),
        "the object went up and came down through the proxy: {:?}",
        lfs.iter().map(|r| (&r.method, &r.uri)).collect::<Vec<_>>()
    );
    assert!(
        lfs.iter().all(|r| r.authorized),
        "every LFS request carried a valid token"
    );
}
