//! Fake Entra ID v2 token endpoint (client credentials with a client secret).
//!
//! Validates requests in the order and with the error shapes Entra ID uses, and issues HS256 JWTs
//! that `FakeDevOps` verifies with the same key. Modes inject the failures a proxy must survive.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Body, Server, full, json_response, jwt, parse_form};

pub const DEVOPS_RESOURCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";
pub const DEVOPS_SCOPE: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";
/// Object id of the fake service principal: what Azure DevOps shows as the authenticated user.
pub const OBJECT_ID: &str = "0b7e2f6a-93d4-4c1e-8a57-3f0d9e6c1a24";

#[derive(Clone, Debug)]
pub struct EntraConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub signing_key: Vec<u8>,
    pub lifetime_secs: u64,
}

impl Default for EntraConfig {
    fn default() -> Self {
        EntraConfig {
            tenant_id: "8d2f1c3e-5b7a-4e69-9c0d-1a2b3c4d5e6f".into(),
            client_id: "5c9e7a4b-2d1f-4a3e-b6c8-7f9e0d1c2b3a".into(),
            client_secret: "fake-client-secret-value-123".into(),
            signing_key: std::iter::repeat_with(|| fastrand::u8(..))
                .take(32)
                .collect(),
            lifetime_secs: 3600,
        }
    }
}

#[derive(Clone, Debug)]
pub enum EntraMode {
    Normal,
    /// Answer every request with this status and an Entra error for `code` ("AADSTS7000222").
    Fail {
        status: u16,
        code: String,
    },
    /// Accept the request and never answer.
    Hang,
    /// 200 with an HTML body, as captive portals and broken proxies produce.
    Garbage,
    Throttle {
        retry_after_secs: u64,
    },
    /// Validate as usual, then send this raw value as `expires_in` (`json!("3599")`, `json!(-5)`).
    ExpiresIn(Value),
    /// Validate as usual, then send this raw value as `access_token` (`json!("")`).
    AccessToken(Value),
}

struct State {
    cfg: EntraConfig,
    mode: Mutex<EntraMode>,
    lifetime: AtomicU64,
    token_requests: AtomicUsize,
    tokens_issued: AtomicUsize,
    jti: AtomicU64,
    last_form: Mutex<Option<Vec<(String, String)>>>,
}

pub struct FakeEntra {
    state: Arc<State>,
    server: Server,
}

impl FakeEntra {
    pub async fn start(cfg: EntraConfig) -> FakeEntra {
        let state = Arc::new(State {
            lifetime: AtomicU64::new(cfg.lifetime_secs),
            cfg,
            mode: Mutex::new(EntraMode::Normal),
            token_requests: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            jti: AtomicU64::new(0),
            last_form: Mutex::new(None),
        });
        let handler_state = state.clone();
        let server = Server::start(move |req| handle(handler_state.clone(), req)).await;
        FakeEntra { state, server }
    }

    /// What the proxy's `authority` setting should be, e.g. "http://127.0.0.1:PORT".
    pub fn authority(&self) -> String {
        self.server.url()
    }

    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority(),
            self.state.cfg.tenant_id
        )
    }

    pub fn config(&self) -> &EntraConfig {
        &self.state.cfg
    }

    /// POSTs to the token path, whatever their outcome.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    pub fn tokens_issued(&self) -> usize {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    pub fn set_mode(&self, mode: EntraMode) {
        *self.state.mode.lock().expect("mode lock") = mode;
    }

    pub fn set_lifetime(&self, secs: u64) {
        self.state.lifetime.store(secs, Ordering::SeqCst);
    }

    /// The `[identities.default]` table that points ado-auth-proxy at this fake, with the client
    /// secret inline or, as an operator would deploy it, read from `secret_file`.
    pub fn identity_toml(&self, secret_file: Option<&std::path::Path>) -> String {
        let cfg = &self.state.cfg;
        let credential = match secret_file {
            Some(file) => format!("secret_file = \"{}\"", file.display()),
            None => format!("secret = \"{}\"", cfg.client_secret),
        };
        format!(
            "[identities.default]\ntenant_id = \"{}\"\nclient_id = \"{}\"\nauthority = \"{}\"\n\
             credential = {{ kind = \"client_secret\", {credential} }}\n",
            cfg.tenant_id,
            cfg.client_id,
            self.authority(),
        )
    }

    pub fn last_form(&self) -> Option<Vec<(String, String)>> {
        self.state.last_form.lock().expect("form lock").clone()
    }
}

/// Claims of a token as Entra ID would issue it for `cfg` (v1 tokens: Azure DevOps asks for them).
/// Public so tests can tamper with a field and sign the result themselves.
pub fn token_claims(cfg: &EntraConfig, lifetime_secs: u64, jti: &str) -> Value {
    let now = jwt::now();
    json!({
        "aud": DEVOPS_RESOURCE,
        "iss": format!("https://sts.windows.net/{}/", cfg.tenant_id),
        "tid": cfg.tenant_id,
        "appid": cfg.client_id,
        "oid": OBJECT_ID,
        "sub": OBJECT_ID,
        "idtyp": "app",
        "ver": "1.0",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_secs,
        "jti": jti,
    })
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let Some(tenant) = path
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix("/oauth2/v2.0/token"))
        .filter(|t| !t.is_empty() && !t.contains('/'))
    else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full("not found"))
            .expect("static response");
    };
    if req.method() != Method::POST {
        return entra_error(
            400,
            "invalid_request",
            900561,
            "The endpoint only accepts POST requests. Received a GET request.",
        );
    }
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    // Token requests are a few hundred bytes; reading them whole is what Entra ID does too.
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return entra_error(400, "invalid_request", 900144, "Unreadable body."),
    };
    let form = parse_form(&String::from_utf8_lossy(&body));
    *state.last_form.lock().expect("form lock") = Some(form.clone());
    let mode = state.mode.lock().expect("mode lock").clone();
    match mode {
        EntraMode::Hang => {
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            entra_error(504, "temporarily_unavailable", 50001, "Hung.")
        }
        EntraMode::Garbage => Response::builder()
            .header(header::CONTENT_TYPE, "text/html")
            .body(full("<html>not json"))
            .expect("static response"),
        EntraMode::Throttle { retry_after_secs } => {
            let mut res = entra_error(
                429,
                "temporarily_unavailable",
                50196,
                "The server is throttling this client. Retry later.",
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs.into());
            res
        }
        EntraMode::Fail { status, code } => {
            let number = code.trim_start_matches("AADSTS").parse().unwrap_or(0);
            entra_error(status, error_for(number), number, "Injected failure.")
        }
        EntraMode::Normal | EntraMode::ExpiresIn(_) | EntraMode::AccessToken(_) => {
            if let Err(refusal) = validate(&state.cfg, tenant, &form) {
                return refusal.into_response();
            }
            let lifetime = state.lifetime.load(Ordering::SeqCst);
            let access_token = match &mode {
                EntraMode::AccessToken(raw) => raw.clone(),
                _ => {
                    let jti = format!("fake-jti-{}", state.jti.fetch_add(1, Ordering::SeqCst));
                    state.tokens_issued.fetch_add(1, Ordering::SeqCst);
                    Value::from(jwt::sign(
                        &token_claims(&state.cfg, lifetime, &jti),
                        &state.cfg.signing_key,
                    ))
                }
            };
            let expires_in = match mode {
                EntraMode::ExpiresIn(raw) => raw,
                _ => lifetime.into(),
            };
            let mut res = json_response(
                StatusCode::OK,
                &json!({
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "ext_expires_in": lifetime,
                    "access_token": access_token,
                }),
            );
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                "no-store, no-cache".parse().expect("valid"),
            );
            res
        }
    }
}

fn validate(cfg: &EntraConfig, tenant: &str, form: &[(String, String)]) -> Result<(), Refusal> {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let missing = |name: &str| {
        Refusal::new(
            400,
            "invalid_request",
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    if tenant != cfg.tenant_id {
        return Err(Refusal::new(
            400,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID \
                 and are signing into the correct cloud."
            ),
        ));
    }
    let grant_type = field("grant_type").ok_or_else(|| missing("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(Refusal::new(
            400,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = field("client_id").ok_or_else(|| missing("client_id"))?;
    if client_id != cfg.client_id {
        return Err(Refusal::new(
            400,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{tenant}'. This can happen if the application has not been installed by the \
                 administrator of the tenant or consented to by any user in the tenant."
            ),
        ));
    }
    match field("client_secret") {
        Some(secret) if secret == cfg.client_secret => {}
        Some(_) => {
            return Err(Refusal::new(
                401,
                "invalid_client",
                7000215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request \
                     is the client secret value, not the client secret ID, for a secret added to \
                     app '{client_id}'."
                ),
            ));
        }
        // This fake knows no certificates or federated credentials, so any assertion is refused.
        None if field("client_assertion").is_some() => {
            return Err(Refusal::new(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation.",
            ));
        }
        None => {
            return Err(Refusal::new(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or \
                 'client_secret'.",
            ));
        }
    }
    match field("scope") {
        Some(DEVOPS_SCOPE) => Ok(()),
        Some(scope) => Err(Refusal::new(
            400,
            "invalid_scope",
            70011,
            format!(
                "The provided request must include a 'scope' input parameter. The provided value \
                 for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        )),
        None => Err(missing("scope")),
    }
}

/// An Entra ID error before it becomes a response (a `Response` is too big for an `Err`).
struct Refusal {
    status: u16,
    error: &'static str,
    code: u32,
    message: String,
}

impl Refusal {
    fn new(status: u16, error: &'static str, code: u32, message: impl Into<String>) -> Refusal {
        let message = message.into();
        Refusal {
            status,
            error,
            code,
            message,
        }
    }

    fn into_response(self) -> Response<Body> {
        entra_error(self.status, self.error, self.code, &self.message)
    }
}

fn error_for(code: u32) -> &'static str {
    match code {
        700016 => "unauthorized_client",
        70011 => "invalid_scope",
        70003 => "unsupported_grant_type",
        7000215 | 7000218 | 7000222 | 700024 | 700027 | 70021 | 700211 | 700212 => "invalid_client",
        50196 | 50001 => "temporarily_unavailable",
        _ => "invalid_request",
    }
}

fn guid() -> String {
    let r = fastrand::u128(..);
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn entra_error(status: u16, error: &str, code: u32, message: &str) -> Response<Body> {
    let (trace_id, correlation_id) = (guid(), guid());
    let status = StatusCode::from_u16(status).expect("Fail status is a valid HTTP status");
    json_response(
        status,
        &json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {message} Trace ID: {trace_id} Correlation ID: {correlation_id}"
            ),
            "error_codes": [code],
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}
