//! Fake Azure DevOps under its real host names: one TLS listener on 127.0.0.1 with a certificate
//! for `dev.azure.com`, `*.dev.azure.com` and `*.visualstudio.com` (tests/fixtures, issued by a
//! test CA the proxy trusts through `upstream.ca_file`), which the proxy reaches through
//! `upstream.resolve`. It tells the hosts apart by `Host` (or h2's `:authority`), lets only a
//! Bearer JWT signed with the shared key past its 401, and answers with the absolute URLs Azure
//! DevOps hands out: resource areas on sibling hosts, feed links, redirects to other hosts and to
//! blob storage.
//!
//! What the principal may see (projects, repositories, feeds, organizations) is in
//! `azure_access`: everything, until a test denies some of it ([`FakeAzure::deny`]).
//!
//! Beside it, a plain-HTTP fake blob store that refuses any request carrying `Authorization`, as
//! Azure Storage does for SAS URLs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::azure_access::Access;
use super::{Body, Server, fixtures, full, json_response, jwt};

/// The feed `internal` of `contoso`, as its service indexes and download links name it.
pub const FEED_ID: &str = "0f1e2d3c-4b5a-4697-8899-aabbccddeeff";

/// The host names the fake answers for, as `upstream.resolve` must map them.
pub const HOSTS: [&str; 6] = [
    "dev.azure.com",
    "feeds.dev.azure.com",
    "pkgs.dev.azure.com",
    "vssps.dev.azure.com",
    "vsrm.dev.azure.com",
    "contoso.visualstudio.com",
];

#[derive(Clone, Debug)]
pub struct Seen {
    pub host: String,
    pub method: String,
    /// Path and query as received.
    pub target: String,
    pub authorization: Option<String>,
    /// A Bearer JWT with the shared key's signature, not expired.
    pub token_valid: bool,
    /// The request body (uploads).
    pub body: Bytes,
}

/// The content type of a set-up answer that is a redirect to its body.
const REDIRECT: &str = "redirect";

/// An answer a test sets up: (host, path, content type, body).
type Canned = (String, String, String, Bytes);

pub struct FakeAzure {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    canned: Arc<Mutex<Vec<Canned>>>,
    /// `Authorization` values refused although correctly signed.
    revoked: Arc<Mutex<Vec<String>>>,
    access: Arc<Access>,
    /// The fake Entra ID's signing key, once it is known.
    key: Arc<OnceLock<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl FakeAzure {
    /// `blob`: the URL of the blob store its redirects point to. Until [`FakeAzure::trust`],
    /// every request gets a 401.
    pub async fn start(blob: String) -> FakeAzure {
        let acceptor = acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorder = seen.clone();
        let key: Arc<OnceLock<Vec<u8>>> = Arc::default();
        let canned: Arc<Mutex<Vec<Canned>>> = Arc::default();
        let revoked: Arc<Mutex<Vec<String>>> = Arc::default();
        let access: Arc<Access> = Arc::default();
        let state = Arc::new((
            key.clone(),
            blob,
            canned.clone(),
            revoked.clone(),
            access.clone(),
        ));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, recorder, state) =
                    (acceptor.clone(), recorder.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (recorder, state) = (recorder.clone(), state.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(
                                    &recorder,
                                    state.0.get(),
                                    &state.1,
                                    &state.2,
                                    &state.3,
                                    &state.4,
                                    request,
                                )
                                .await,
                            )
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeAzure {
            addr,
            seen,
            canned,
            revoked,
            access,
            key,
            task,
        }
    }

    /// From now on the principal may not see `resource`: an organization (`fabrikam`), a
    /// project (`contoso/secret`), a repository (`contoso/web/_git/infra`) or a feed
    /// (`contoso/_packaging/internal`, `contoso/web/_packaging/releases`).
    pub fn deny(&self, resource: &str) {
        self.access.deny(resource);
    }

    /// Answers `https://{host}{path}` (with a valid token) with a redirect to `location`.
    pub fn serve_redirect(&self, host: &str, path: &str, location: &str) {
        self.serve(host, path, REDIRECT, location.to_owned());
    }

    /// Answers `GET https://{host}{path}` (with a valid token) with this body.
    pub fn serve(&self, host: &str, path: &str, content_type: &str, body: impl Into<Bytes>) {
        self.canned.lock().expect("canned lock").push((
            host.to_owned(),
            path.to_owned(),
            content_type.to_owned(),
            body.into(),
        ));
    }

    /// Refuses from now on every token that has reached the fake so far, as Azure DevOps refuses
    /// a revoked one before its expiry.
    pub fn revoke_seen_tokens(&self) {
        let seen = self.seen.lock().expect("seen lock");
        let mut revoked = self.revoked.lock().expect("revoked lock");
        revoked.extend(seen.iter().filter_map(|r| r.authorization.clone()));
    }

    /// Accepts tokens signed with the fake Entra ID's key.
    pub fn trust(&self, signing_key: &[u8]) {
        let _ = self.key.set(signing_key.to_vec());
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `upstream.resolve` lines that send every fake host name here.
    pub fn resolve_toml(&self) -> String {
        let mut toml = String::from("[upstream.resolve]\n");
        for host in HOSTS {
            toml.push_str(&format!("\"{host}\" = \"{}\"\n", self.addr));
        }
        toml
    }

    pub fn ca_file() -> std::path::PathBuf {
        fixtures::path("devops-ca.pem")
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for FakeAzure {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn acceptor() -> tokio_rustls::TlsAcceptor {
    super::tls_upstream::acceptor_with(
        "devops-cert.pem",
        "devops-key.pk8.pem",
        &[b"h2", b"http/1.1"],
    )
}

/// What Azure DevOps' Resource Areas answer looks like: absolute URLs on sibling hosts, one
/// written the way some serializers escape slashes, and a storage URL that must stay as it is.
pub fn resource_areas(blob: &str) -> String {
    format!(
        r#"{{"count":4,"value":[
{{"id":"pkgs","name":"Packaging","locationUrl":"https://pkgs.dev.azure.com/contoso/"}},
{{"id":"release","name":"Release","locationUrl":"https:\/\/vsrm.dev.azure.com\/contoso\/"}},
{{"id":"core","name":"Core","locationUrl":"https://dev.azure.com/contoso/"}},
{{"id":"legacy","name":"Legacy","locationUrl":"https://contoso.visualstudio.com/"}}],
"artifact":"{blob}/c/artifact.zip?sig=abc","elsewhere":"https://evil.example/x"}}"#
    )
}

async fn answer(
    recorder: &Mutex<Vec<Seen>>,
    signing_key: Option<&Vec<u8>>,
    blob: &str,
    canned: &Mutex<Vec<Canned>>,
    revoked: &Mutex<Vec<String>>,
    access: &Access,
    request: Request<Incoming>,
) -> Response<Body> {
    let (request, body) = request.into_parts();
    // Uploads are read whole (bounded): tests look at what arrived.
    let body = match http_body_util::Limited::new(body, 16 << 20).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let host = request
        .uri
        .host()
        .map(str::to_owned)
        .or_else(|| {
            request
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h).to_owned())
        })
        .unwrap_or_default();
    let authorization = request
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let claims = authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| signing_key.and_then(|key| jwt::verify(token, key).ok()));
    let token_valid = claims.is_some()
        && !authorization
            .as_ref()
            .is_some_and(|value| revoked.lock().expect("revoked lock").contains(value));
    let target = request
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    recorder.lock().expect("seen lock").push(Seen {
        host: host.clone(),
        method: request.method.to_string(),
        target: target.clone(),
        authorization,
        token_valid,
        body: body.clone(),
    });
    if !token_valid {
        let mut response = json_response(StatusCode::UNAUTHORIZED, &json!({"message": "TF400813"}));
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer authorization_uri=https://login.microsoftonline.com/x"
                .parse()
                .expect("header"),
        );
        return response;
    }
    let gzip = request
        .headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let path = request.uri.path();
    let set_up = canned
        .lock()
        .expect("canned lock")
        .iter()
        .find(|(h, p, _, _)| *h == host && p == path)
        .map(|(_, _, content_type, body)| (content_type.clone(), body.clone()));
    if let Some((content_type, body)) = set_up {
        if content_type == REDIRECT {
            return redirect(&String::from_utf8_lossy(&body));
        }
        return Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(full(body))
            .expect("response");
    }
    if let Some(answer) = access.answer(&host, path, claims.as_ref().unwrap_or(&Value::Null)) {
        return answer;
    }
    match (host.as_str(), path) {
        // A Maven repository has what was set up, and nothing else.
        ("pkgs.dev.azure.com", p) if p.contains("/maven/v1/") => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": "not in this feed" }),
        ),
        ("pkgs.dev.azure.com", p) if p.contains("/npm/registry/") && p.contains("/-/") => {
            let file = p.rsplit('/').next().unwrap_or_default();
            redirect(&format!("{blob}/c/{file}?sv=2024&sig=abc"))
        }
        ("dev.azure.com", "/contoso/_apis/ResourceAreas") => {
            let body = resource_areas(blob);
            let mut builder = Response::builder()
                .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                .header(header::CONTENT_LENGTH, body.len());
            let body = if gzip && request.uri.query() == Some("gzip") {
                let mut encoder =
                    async_compression::tokio::write::GzipEncoder::new(Vec::<u8>::new());
                encoder.write_all(body.as_bytes()).await.expect("gzip");
                encoder.shutdown().await.expect("gzip");
                let compressed = encoder.into_inner();
                builder = Response::builder()
                    .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                    .header(header::CONTENT_ENCODING, "gzip")
                    .header(header::CONTENT_LENGTH, compressed.len());
                Bytes::from(compressed)
            } else {
                Bytes::from(body)
            };
            builder.body(full(body)).expect("response")
        }
        ("dev.azure.com", "/contoso/_redirect/pkgs") => {
            redirect("https://pkgs.dev.azure.com/contoso/_packaging/feed/pypi/simple/")
        }
        ("dev.azure.com", "/contoso/_redirect/blob") => {
            redirect(&format!("{blob}/c/blob.bin?sv=2024&sig=abc"))
        }
        ("pkgs.dev.azure.com", "/contoso/_packaging/internal/pypi/simple/demo/") => {
            let wheel = "demo-1.0-py3-none-any.whl";
            let html = format!(
                "<!DOCTYPE html><html><body>\n<a href=\"https://pkgs.dev.azure.com/contoso/_packaging/{FEED_ID}/pypi/download/demo/1.0/{wheel}\">{wheel}</a>\n</body></html>\n"
            );
            Response::builder()
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .body(full(html))
                .expect("response")
        }
        ("pkgs.dev.azure.com", p)
            if p.starts_with(&format!("/contoso/_packaging/{FEED_ID}/pypi/download/")) =>
        {
            let file = p.rsplit('/').next().unwrap_or_default();
            redirect(&format!("{blob}/c/{file}?sv=2024&sig=abc"))
        }
        ("dev.azure.com", "/contoso/_apis/binary") => Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(full(Bytes::from_static(
                b"https://dev.azure.com/ stays in a binary",
            )))
            .expect("response"),
        _ => json_response(
            StatusCode::OK,
            &json!({ "host": host, "target": target, "self": format!("https://{host}{path}") }),
        ),
    }
}

fn redirect(location: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, location)
        .body(full(Bytes::new()))
        .expect("response")
}

/// A blob store behind SAS URLs: any `Authorization` header is refused, as Azure Storage does.
pub struct FakeBlob {
    server: Server,
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
    files: Arc<Mutex<Vec<(String, Bytes)>>>,
}

pub const BLOB_BYTES: &[u8] = b"blob bytes, fetched with the SAS signature only";

impl FakeBlob {
    pub async fn start() -> FakeBlob {
        let authorizations: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let files: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
        let recorder = authorizations.clone();
        let stored = files.clone();
        // Its own host name (127.0.0.2), as storage is in production: clients that keep
        // credentials across a redirect to the same name on another port would be tested for
        // nothing.
        let server = Server::start_on("127.0.0.2:0", move |request: Request<Incoming>| {
            let (recorder, stored) = (recorder.clone(), stored.clone());
            async move {
                let authorization = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                let refused = authorization.is_some();
                recorder.lock().expect("blob lock").push(authorization);
                if refused {
                    return Response::builder()
                        .status(StatusCode::FORBIDDEN)
                        .body(full("AuthenticationFailed: Authorization with a SAS"))
                        .expect("response");
                }
                let path = request.uri().path();
                let file = stored
                    .lock()
                    .expect("files lock")
                    .iter()
                    .find(|(name, _)| path.strip_prefix("/c/") == Some(name.as_str()))
                    .map(|(_, bytes)| bytes.clone());
                Response::new(full(file.unwrap_or(Bytes::from_static(BLOB_BYTES))))
            }
        })
        .await;
        FakeBlob {
            server,
            authorizations,
            files,
        }
    }

    /// Serves `bytes` at `/c/{name}` (anything else gets [`BLOB_BYTES`]).
    pub fn store(&self, name: &str, bytes: Vec<u8>) {
        self.files
            .lock()
            .expect("files lock")
            .push((name.to_owned(), Bytes::from(bytes)));
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The `Authorization` header of every request, `None` where there was none.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.authorizations.lock().expect("blob lock").clone()
    }
}
