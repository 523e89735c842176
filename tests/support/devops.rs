//! Fake Azure DevOps: a few REST endpoints, git smart HTTP through the real `git http-backend`,
//! and `/_test/...` endpoints that stress streaming, hop-by-hop headers and failure paths.
//!
//! Every request is recorded before anything else, and only a Bearer JWT signed with the shared
//! key, for the Azure DevOps audience and not expired, gets past the 401; tests can also revoke
//! tokens and restrict the organization's members. Bodies are streamed in both directions and never
//! held whole, so a proxy that buffers shows up in the counters.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

use super::entra::DEVOPS_RESOURCE;
use super::{
    Body, PeerAddr, Server, assertion, body_channel, empty, full, json_response, jwt, query_param,
};

const CHUNK: usize = 64 * 1024;
const GATE_AT: u64 = 1024 * 1024;
const PATTERN_PERIOD: u64 = 251;

pub struct DevOpsConfig {
    pub signing_key: Vec<u8>,
    pub git_root: PathBuf,
}

#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Request target exactly as received (origin-form: path and query).
    pub uri: String,
    pub headers: HeaderMap,
    /// Request body bytes read so far; final once the response has completed.
    pub body_bytes: u64,
    pub authorized: bool,
    /// The proxy's end of the connection the request came on.
    pub peer: Option<std::net::SocketAddr>,
}

struct Recorded {
    req: RecordedRequest,
    body_bytes: Arc<AtomicU64>,
}

struct State {
    cfg: DevOpsConfig,
    url: String,
    requests: Mutex<Vec<Recorded>>,
    upload_bytes: AtomicU64,
    uploads_completed: AtomicU64,
    uploads_broken: AtomicU64,
    download_bytes: AtomicU64,
    gate: Semaphore,
    /// `jti`s of every valid token that has reached the fake.
    seen_jtis: Mutex<HashSet<String>>,
    revoked_jtis: Mutex<HashSet<String>>,
    /// Object ids added to the organization; `None` admits every principal.
    members: Mutex<Option<Vec<String>>>,
    /// git LFS objects by oid, for every repository.
    lfs: Mutex<std::collections::HashMap<String, Bytes>>,
}

/// Why a correctly signed token is still refused.
enum Refused {
    Revoked,
    NotMember(String),
}

impl State {
    fn admit(&self, claims: &Value) -> Result<(), Refused> {
        let jti = claims["jti"].as_str().unwrap_or_default();
        self.seen_jtis
            .lock()
            .expect("seen lock")
            .insert(jti.to_owned());
        if self
            .revoked_jtis
            .lock()
            .expect("revoked lock")
            .contains(jti)
        {
            return Err(Refused::Revoked);
        }
        let oid = claims["oid"].as_str().unwrap_or_default();
        match &*self.members.lock().expect("members lock") {
            Some(members) if !members.iter().any(|m| m == oid) => {
                Err(Refused::NotMember(oid.to_owned()))
            }
            _ => Ok(()),
        }
    }
}

pub struct FakeDevOps {
    state: Arc<State>,
    server: Server,
}

impl FakeDevOps {
    pub async fn start(cfg: DevOpsConfig) -> FakeDevOps {
        // The URL is part of the state (JSON bodies carry it) but only known once bound.
        let slot: Arc<std::sync::OnceLock<Arc<State>>> = Arc::default();
        let handler_slot = slot.clone();
        let server = Server::start(move |req| {
            let state = handler_slot
                .get()
                .expect("state set before serving")
                .clone();
            handle(state, req)
        })
        .await;
        let state = Arc::new(State {
            cfg,
            url: server.url(),
            requests: Mutex::default(),
            upload_bytes: AtomicU64::new(0),
            uploads_completed: AtomicU64::new(0),
            uploads_broken: AtomicU64::new(0),
            download_bytes: AtomicU64::new(0),
            gate: Semaphore::new(0),
            seen_jtis: Mutex::default(),
            revoked_jtis: Mutex::default(),
            members: Mutex::default(),
            lfs: Mutex::default(),
        });
        slot.set(state.clone())
            .unwrap_or_else(|_| unreachable!("set once"));
        FakeDevOps { state, server }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        let requests = self.state.requests.lock().expect("requests lock");
        requests
            .iter()
            .map(|r| RecordedRequest {
                body_bytes: r.body_bytes.load(Ordering::SeqCst),
                ..r.req.clone()
            })
            .collect()
    }

    /// Bytes received by `/_test/upload` over all requests, updated per chunk as they arrive.
    pub fn upload_bytes_received(&self) -> u64 {
        self.state.upload_bytes.load(Ordering::SeqCst)
    }

    /// Uploads to `/_test/upload` whose body ended cleanly.
    pub fn uploads_completed(&self) -> u64 {
        self.state.uploads_completed.load(Ordering::SeqCst)
    }

    /// Uploads to `/_test/upload` whose body broke off (the sender aborted).
    pub fn uploads_broken(&self) -> u64 {
        self.state.uploads_broken.load(Ordering::SeqCst)
    }

    /// Bytes `/_test/download` has handed to the connection over all requests (at most one
    /// chunk ahead of the socket).
    pub fn download_bytes_sent(&self) -> u64 {
        self.state.download_bytes.load(Ordering::SeqCst)
    }

    /// Refuses from now on every token (told apart by `jti`) that has reached the fake so far, as
    /// Azure DevOps refuses a token revoked or invalidated (CAE) before its expiry; tokens first
    /// seen later still pass.
    pub fn revoke_seen_tokens(&self) {
        let seen = self.state.seen_jtis.lock().expect("seen lock").clone();
        self.state
            .revoked_jtis
            .lock()
            .expect("revoked lock")
            .extend(seen);
    }

    /// With `Some(object_ids)`, only those principals are members of the organization; any other
    /// valid token gets Azure DevOps' TF400813 refusal. `None` (the default) admits everyone.
    pub fn set_members(&self, object_ids: Option<Vec<String>>) {
        *self.state.members.lock().expect("members lock") = object_ids;
    }

    /// Lets one gated download (waiting now or the next to arrive) continue past its first MiB.
    pub fn release_download(&self) {
        self.state.gate.add_permits(1);
    }

    /// Creates a bare repository with one commit on `main` holding README.md. Blocks briefly.
    pub fn create_repo(&self, org: &str, project: &str, repo: &str) {
        let dir = self.state.cfg.git_root.join(org).join(project);
        std::fs::create_dir_all(&dir).expect("create repo parent directory");
        let bare = dir.join(format!("{repo}.git"));
        git(
            &dir,
            &[
                "init",
                "--quiet",
                "--bare",
                "--initial-branch=main",
                &format!("{repo}.git"),
            ],
            None,
        );
        git(&bare, &["config", "http.receivepack", "true"], None);
        // Plumbing instead of a work tree: no temporary checkout, no global config needed.
        let readme = format!("# {repo}\n\nFake Azure DevOps repository {org}/{project}/{repo}.\n");
        let blob = git(&bare, &["hash-object", "-w", "--stdin"], Some(&readme));
        let tree = git(
            &bare,
            &["mktree"],
            Some(&format!("100644 blob {blob}\tREADME.md\n")),
        );
        let commit = git(&bare, &["commit-tree", &tree, "-m", "Initial commit"], None);
        git(&bare, &["update-ref", "refs/heads/main", &commit], None);
    }
}

fn git(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=Fake DevOps",
            "-c",
            "user.email=fake@devops.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run git");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write git stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("wait for git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Byte `offset` of every `/_test/download` body, so tests can check content without a copy.
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % PATTERN_PERIOD) as u8
}

/// Whether `data` is the download pattern starting at `offset`.
pub fn is_pattern(offset: u64, data: &[u8]) -> bool {
    data.iter()
        .zip(offset..)
        .all(|(b, i)| *b == pattern_byte(i))
}

/// One chunk plus a period of pattern, so any chunk is a zero-copy slice at some phase.
static PATTERN: LazyLock<Bytes> = LazyLock::new(|| {
    (0..CHUNK as u64 + PATTERN_PERIOD)
        .map(pattern_byte)
        .collect()
});

fn pattern_chunk(offset: u64, len: usize) -> Bytes {
    let start = (offset % PATTERN_PERIOD) as usize;
    PATTERN.slice(start..start + len)
}

/// The request body, counted into its recorded request as it is read.
struct ReqBody {
    inner: Incoming,
    counted: Arc<AtomicU64>,
}

impl ReqBody {
    async fn chunk(&mut self) -> Option<Result<Bytes, hyper::Error>> {
        loop {
            match self.inner.frame().await? {
                Err(e) => return Some(Err(e)),
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.counted.fetch_add(data.len() as u64, Ordering::SeqCst);
                        return Some(Ok(data));
                    }
                }
            }
        }
    }

    async fn count_to_end(mut self) -> Result<u64, hyper::Error> {
        let mut total = 0;
        while let Some(chunk) = self.chunk().await {
            total += chunk?.len() as u64;
        }
        Ok(total)
    }

    /// The whole body (small ones: LFS batches and objects in tests).
    async fn bytes(mut self) -> Bytes {
        let mut all = Vec::new();
        while let Some(Ok(chunk)) = self.chunk().await {
            all.extend_from_slice(&chunk);
        }
        Bytes::from(all)
    }

    /// Keeps reading in the background so `body_bytes` is meaningful for routes that ignore it.
    fn drain(self) {
        tokio::spawn(self.count_to_end());
    }
}

/// The target as the client wrote it. HTTP/2 always carries scheme and authority, so only there
/// is the URI cut down to path and query; an absolute-form HTTP/1.1 target stays visible.
fn request_target(parts: &Parts) -> String {
    match (parts.version, parts.uri.path_and_query()) {
        (http::Version::HTTP_2, Some(pq)) => pq.as_str().to_owned(),
        _ => parts.uri.to_string(),
    }
}

fn authorize(headers: &HeaderMap, key: &[u8]) -> Option<Value> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let claims = jwt::verify(value.strip_prefix("Bearer ")?, key).ok()?;
    (claims["aud"] == DEVOPS_RESOURCE).then_some(claims)
}

/// Claims of the Bearer token a recorded request carried, signature unchecked: which identity
/// (`appid`, `oid`) reached the upstream.
pub fn token_claims_of(req: &RecordedRequest) -> Option<Value> {
    let value = req.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (_, claims) = assertion::decode_unverified(value.strip_prefix("Bearer ")?)?;
    Some(claims)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let claims = authorize(&parts.headers, &state.cfg.signing_key);
    let refused = claims.as_ref().map(|claims| state.admit(claims));
    let body_bytes = Arc::new(AtomicU64::new(0));
    state
        .requests
        .lock()
        .expect("requests lock")
        .push(Recorded {
            req: RecordedRequest {
                method: parts.method.to_string(),
                uri: request_target(&parts),
                headers: parts.headers.clone(),
                body_bytes: 0,
                authorized: matches!(refused, Some(Ok(()))),
                peer: parts.extensions.get::<PeerAddr>().map(|p| p.0),
            },
            body_bytes: body_bytes.clone(),
        });
    let body = ReqBody {
        inner: body,
        counted: body_bytes,
    };
    let claims = match (claims, refused) {
        (Some(claims), Some(Ok(()))) => claims,
        (_, Some(Err(Refused::NotMember(oid)))) => {
            body.drain();
            return not_member(&oid);
        }
        _ => {
            body.drain();
            return unauthorized();
        }
    };

    let path = parts.uri.path().to_owned();
    let query = parts.uri.query();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = &parts.method;
    let get = method == Method::GET;
    match segments.as_slice() {
        [org, project, "_git", repo, rest @ ..]
            if matches!(
                (method.as_str(), rest),
                ("GET", ["info", "refs"])
                    | ("POST", ["git-upload-pack"])
                    | ("POST", ["git-receive-pack"])
            ) =>
        {
            let path_info = format!("/{org}/{project}/{repo}.git/{}", rest.join("/"));
            return git_cgi(&state, &parts, body, &path_info, &claims).await;
        }
        [
            org,
            project,
            "_git",
            repo,
            "info",
            "lfs",
            "objects",
            "batch",
        ] if method == Method::POST => {
            return lfs_batch(&state, body, &format!("/{org}/{project}/_git/{repo}")).await;
        }
        [.., "_git", _, "info", "lfs", "objects", oid] if method == Method::PUT => {
            let data = body.bytes().await;
            state
                .lfs
                .lock()
                .expect("lfs lock")
                .insert((*oid).to_owned(), data);
            return text(StatusCode::OK, "stored");
        }
        [.., "_git", _, "info", "lfs", "objects", oid] if get => {
            let stored = state.lfs.lock().expect("lfs lock").get(*oid).cloned();
            return match stored {
                Some(data) => Response::builder()
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(full(data))
                    .expect("response"),
                None => text(StatusCode::NOT_FOUND, "no such object"),
            };
        }
        ["_test", "echo"] => return echo(&parts, body).await,
        ["_test", "upload"] if method == Method::POST || method == Method::PUT => {
            return upload(&state, body).await;
        }
        _ => body.drain(),
    }
    match segments.as_slice() {
        [org, "_apis", "projects"] if get => json_response(
            StatusCode::OK,
            &json!({
                "count": 1,
                "value": [{
                    "id": "6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c",
                    "name": "web",
                    "url": format!("{}/{org}/_apis/projects/web", state.url),
                    "state": "wellFormed",
                    "revision": 11,
                    "visibility": "private",
                }],
            }),
        ),
        ["_apis", "connectionData"] if get => connection_data(&state, &claims, ""),
        [org, "_apis", "connectionData"] if get => connection_data(&state, &claims, org),
        ["_test", "hop-by-hop"] if get => hop_by_hop(),
        ["_test", "download"] if get => download(&state, query),
        ["_test", "slow"] if get => {
            let ms = query_param(query, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, "slow")
        }
        ["_test", "truncate"] if get => truncate(query),
        ["_test", "status", code] if get => status(code),
        // Azure DevOps slowing an identity down: a 200 that was held back, with Retry-After.
        ["_test", "delayed"] if get => Response::builder()
            .header("x-ratelimit-resource", "Core")
            .header("x-ratelimit-delay", "2.5")
            .header("x-ratelimit-limit", "200")
            .header("x-ratelimit-remaining", "12")
            .header("x-ratelimit-reset", "1796000300")
            .header(header::RETRY_AFTER, "3")
            .body(full("held back\n"))
            .expect("static response"),
        ["_test", "redirect"] if get => Response::builder()
            .status(StatusCode::FOUND)
            .header(
                header::LOCATION,
                "https://example.blob.core.windows.net/x?sig=abc",
            )
            .body(empty())
            .expect("static response"),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The git LFS batch API, as Azure DevOps answers it: every action an absolute `href` on its
/// own host (which the proxy must rewrite, or git-lfs would leave it).
async fn lfs_batch(state: &State, body: ReqBody, repo_path: &str) -> Response<Body> {
    let request: Value = serde_json::from_slice(&body.bytes().await).unwrap_or(Value::Null);
    let operation = request["operation"].as_str().unwrap_or("download");
    let stored = state.lfs.lock().expect("lfs lock");
    let objects: Vec<Value> = request["objects"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|object| {
            let oid = object["oid"].as_str().unwrap_or_default();
            let href = format!("{}{repo_path}/info/lfs/objects/{oid}", state.url);
            let mut answer = json!({ "oid": oid, "size": object["size"], "authenticated": true });
            match operation {
                "upload" if !stored.contains_key(oid) => {
                    answer["actions"] = json!({ "upload": { "href": href } });
                }
                "download" if stored.contains_key(oid) => {
                    answer["actions"] = json!({ "download": { "href": href } });
                }
                "download" => {
                    answer["error"] = json!({ "code": 404, "message": "not found" });
                }
                _ => {}
            }
            answer
        })
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/vnd.git-lfs+json")
        .body(full(
            json!({ "transfer": "basic", "objects": objects }).to_string(),
        ))
        .expect("response")
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(body))
        .expect("static response")
}

/// What Azure DevOps answers without valid credentials: git prompts for a password on this.
fn unauthorized() -> Response<Body> {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(
            header::WWW_AUTHENTICATE,
            "Bearer authorization_uri=https://login.microsoftonline.com/common",
        )
        .header(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"https://dev.azure.com/\"",
        )
        .header(header::WWW_AUTHENTICATE, "TFS-Federated")
        .header("x-tfs-fedauthrealm", "https://dev.azure.com/")
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full("Access Denied: valid Bearer token required\n"))
        .expect("static response")
}

/// Azure DevOps' answer to a valid token of a principal never added to the organization. It
/// carries the same challenges as any other 401, so only the body tells it from a bad token.
fn not_member(oid: &str) -> Response<Body> {
    let mut res = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({
            "$id": "1",
            "innerException": null,
            "message": format!(
                "TF400813: The user '{oid}' is not authorized to access this resource."
            ),
            "typeName": "Microsoft.TeamFoundation.Framework.Server.UnauthorizedRequestException, \
                         Microsoft.TeamFoundation.Framework.Server",
            "typeKey": "UnauthorizedRequestException",
            "errorCode": 0,
            "eventId": 3000,
        }),
    );
    let challenges = unauthorized();
    for value in challenges.headers().get_all(header::WWW_AUTHENTICATE) {
        res.headers_mut()
            .append(header::WWW_AUTHENTICATE, value.clone());
    }
    res
}

fn connection_data(state: &State, claims: &Value, org: &str) -> Response<Body> {
    let user = json!({
        "id": claims["oid"],
        "descriptor": format!("Microsoft.VisualStudio.Services.Claims.AadServicePrincipal;{}", claims["oid"].as_str().unwrap_or("")),
        "providerDisplayName": claims["appid"],
        "isActive": true,
    });
    json_response(
        StatusCode::OK,
        &json!({
            "authenticatedUser": user,
            "authorizedUser": user,
            "instanceId": "3b1e6d2c-7a4f-4c2e-9d1b-0f8e7a6c5b4d",
            "locationServiceData": {
                "defaultAccessMappingMoniker": "PublicAccessMapping",
                "accessMappings": [{
                    "moniker": "PublicAccessMapping",
                    "displayName": "Public Access Mapping",
                    "accessPoint": format!("{}/{org}", state.url).trim_end_matches('/'),
                }],
            },
        }),
    )
}

async fn echo(parts: &Parts, body: ReqBody) -> Response<Body> {
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned().into())
            .collect();
        headers.insert(name.as_str().to_owned(), values.into());
    }
    let body_bytes = body.count_to_end().await.unwrap_or(0);
    json_response(
        StatusCode::OK,
        &json!({
            "method": parts.method.as_str(),
            "uri": request_target(parts),
            "headers": headers,
            "body_bytes": body_bytes,
        }),
    )
}

fn hop_by_hop() -> Response<Body> {
    Response::builder()
        .header(header::CONNECTION, "close, X-Secret-Hop")
        .header("x-secret-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header(header::PROXY_AUTHENTICATE, "Basic")
        .header(header::SET_COOKIE, "session=sp-session")
        .header(header::UPGRADE, "h2c")
        .header(header::TRAILER, "x-trailer")
        .header("x-normal", "kept")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full("ok"))
        .expect("static response")
}

fn download(state: &Arc<State>, query: Option<&str>) -> Response<Body> {
    let Some(total) = query_param(query, "bytes").and_then(|v| v.parse::<u64>().ok()) else {
        return text(StatusCode::BAD_REQUEST, "bytes=N required");
    };
    let gated = query_param(query, "gate").as_deref() == Some("1");
    let (tx, body) = body_channel(1);
    let state = state.clone();
    tokio::spawn(async move {
        let mut sent = 0u64;
        let mut waited = false;
        while sent < total {
            if gated && !waited && sent == GATE_AT {
                waited = true;
                // A missing release is a test bug, not a reason to hang it forever.
                if let Ok(Ok(permit)) =
                    tokio::time::timeout(Duration::from_secs(30), state.gate.acquire()).await
                {
                    permit.forget();
                }
            }
            let mut len = (total - sent).min(CHUNK as u64);
            if gated && !waited {
                len = len.min(GATE_AT - sent);
            }
            if tx
                .send(Ok(pattern_chunk(sent, len as usize)))
                .await
                .is_err()
            {
                return;
            }
            sent += len;
            state.download_bytes.fetch_add(len, Ordering::SeqCst);
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, total)
        .body(body)
        .expect("static response")
}

async fn upload(state: &State, mut body: ReqBody) -> Response<Body> {
    let mut total = 0u64;
    while let Some(chunk) = body.chunk().await {
        match chunk {
            Ok(data) => {
                total += data.len() as u64;
                state
                    .upload_bytes
                    .fetch_add(data.len() as u64, Ordering::SeqCst);
            }
            Err(_) => {
                state.uploads_broken.fetch_add(1, Ordering::SeqCst);
                return text(StatusCode::BAD_REQUEST, "upload body broke off");
            }
        }
    }
    state.uploads_completed.fetch_add(1, Ordering::SeqCst);
    json_response(StatusCode::OK, &json!({ "bytes": total }))
}

fn truncate(query: Option<&str>) -> Response<Body> {
    let Some(total) = query_param(query, "bytes").and_then(|v| v.parse::<u64>().ok()) else {
        return text(StatusCode::BAD_REQUEST, "bytes=N required");
    };
    let (tx, body) = body_channel(1);
    tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < total / 2 {
            let len = (total / 2 - sent).min(CHUNK as u64);
            if tx
                .send(Ok(pattern_chunk(sent, len as usize)))
                .await
                .is_err()
            {
                return;
            }
            sent += len;
        }
        // An error mid-body makes hyper drop the connection short of content-length.
        let _ = tx.send(Err("truncated on purpose".into())).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, total)
        .body(body)
        .expect("static response")
}

fn status(code: &str) -> Response<Body> {
    let Some(status) = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
    else {
        return text(StatusCode::BAD_REQUEST, "status must be 200..=599");
    };
    let mut res = Response::builder().status(status);
    res = match status.as_u16() {
        429 => res
            .header(header::RETRY_AFTER, "7")
            .header("x-ratelimit-resource", "Core")
            .header("x-ratelimit-delay", "30")
            .header("x-ratelimit-limit", "200")
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", "1796000300"),
        401 => return unauthorized(),
        _ => res,
    };
    let body = if matches!(status.as_u16(), 204 | 304) {
        empty()
    } else {
        full(format!("status {}\n", status.as_u16()))
    };
    res.header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body)
        .expect("static response")
}

/// Runs `git http-backend` as a CGI script, streaming the request body into it and its output
/// back, so packs of any size pass through without being held.
async fn git_cgi(
    state: &State,
    parts: &Parts,
    mut body: ReqBody,
    path_info: &str,
    claims: &Value,
) -> Response<Body> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &state.cfg.git_root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", &state.cfg.git_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REMOTE_USER", claims["appid"].as_str().unwrap_or("unknown"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(PeerAddr(peer)) = parts.extensions.get::<PeerAddr>() {
        cmd.env("REMOTE_ADDR", peer.ip().to_string());
    }
    for (name, value) in &parts.headers {
        let Ok(value) = value.to_str() else { continue };
        let var = match name.as_str() {
            "authorization" => continue,
            "content-type" => "CONTENT_TYPE".to_owned(),
            "content-length" => "CONTENT_LENGTH".to_owned(),
            // Carries HTTP_CONTENT_ENCODING (gzip bodies) and HTTP_GIT_PROTOCOL (protocol v2).
            other => format!("HTTP_{}", other.to_ascii_uppercase().replace('-', "_")),
        };
        cmd.env(var, value);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("fake devops: cannot run git http-backend: {e}");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "git http-backend failed");
        }
    };

    let mut stdin = child.stdin.take().expect("piped stdin");
    tokio::spawn(async move {
        while let Some(Ok(chunk)) = body.chunk().await {
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
        // Dropping stdin is the EOF git reads to when there is no CONTENT_LENGTH (chunked).
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        if !text.trim().is_empty() {
            eprintln!("fake devops: git http-backend: {}", text.trim_end());
        }
    });

    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut res = Response::builder();
    let mut line = String::new();
    loop {
        line.clear();
        match stdout.read_line(&mut line).await {
            Ok(0) | Err(_) => {
                let _ = child.kill().await;
                return text(StatusCode::BAD_GATEWAY, "git http-backend ended early");
            }
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            res = res.status(code);
        } else if let Ok(value) = HeaderValue::from_str(value) {
            res = res.header(name, value);
        }
    }

    let (tx, out) = body_channel(2);
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        let _ = child.start_kill();
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    let _ = child.start_kill();
                    break;
                }
            }
        }
        // Reap the child so no zombies outlive the request.
        let _ = child.wait().await;
    });
    res.body(out).unwrap_or_else(|e| {
        eprintln!("fake devops: bad CGI header from git http-backend: {e}");
        text(StatusCode::BAD_GATEWAY, "bad CGI header")
    })
}
