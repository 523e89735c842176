//! Fake Entra ID: the v2 token endpoint (client credentials with a client secret, a certificate
//! assertion or a federated token), the managed identity endpoints of IMDS and App Service, and
//! the GitHub Actions OIDC token endpoint that feeds federated credentials, all on one server.
//!
//! Validates requests in the order and with the error shapes Entra ID uses, and issues HS256 JWTs
//! that `FakeDevOps` verifies with the same key. Modes inject the failures a proxy must survive.

mod client_assertion;
mod managed_identity;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::assertion::{self, Alg, RsaSigner};
use super::{Body, Server, fixtures, full, json_response, jwt, parse_form};

pub const DEVOPS_RESOURCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";
pub const DEVOPS_SCOPE: &str = "499b84ac-1321-427f-aa17-267ca6975798/.default";
/// Object id of the fake service principal: what Azure DevOps shows as the authenticated user.
pub const OBJECT_ID: &str = "0b7e2f6a-93d4-4c1e-8a57-3f0d9e6c1a24";
/// Object id of the system-assigned managed identity.
pub const SYSTEM_ASSIGNED_OBJECT_ID: &str = "6e1d4c7b-2a9f-4b3e-8c5d-0f7a9e2b4c61";
/// Object id of the user-assigned managed identity.
pub const USER_ASSIGNED_OBJECT_ID: &str = "c4a8e2f1-7d3b-4e6a-9b1c-5f2d8e0a3b79";
/// The audience Entra ID requires of federated (workload identity) tokens.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// A federated identity credential on the app registration: tokens from `issuer` about `subject`
/// for `audience` are accepted as the app. The issuer signs with `key` (HS256), standing in for
/// the JWKS Entra ID would fetch from the issuer.
#[derive(Clone, Debug)]
pub struct FederatedTrust {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
    pub key: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct EntraConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub signing_key: Vec<u8>,
    pub lifetime_secs: u64,
    /// DER of the certificate registered on the app (`fixtures::SP_CERT` by default).
    pub certificate_der: Vec<u8>,
    /// Its RSA public key as RSAPublicKey DER (PKCS#1), what assertion signatures are checked with.
    pub certificate_public_key: Vec<u8>,
    pub federated: FederatedTrust,
    /// Client id of the system-assigned managed identity (IMDS or App Service without `client_id`).
    pub managed_identity_client_id: String,
    /// Client id of the one user-assigned managed identity attached to the "machine".
    pub user_assigned_client_id: String,
    /// The `IDENTITY_HEADER` secret App Service and Container Apps hand their apps.
    pub identity_header: String,
    /// The `ACTIONS_ID_TOKEN_REQUEST_TOKEN` a GitHub Actions job gets.
    pub github_request_token: String,
}

fn random_bytes(n: usize) -> Vec<u8> {
    std::iter::repeat_with(|| fastrand::u8(..))
        .take(n)
        .collect()
}

fn random_secret() -> String {
    format!("{:032x}", fastrand::u128(..))
}

impl Default for EntraConfig {
    fn default() -> Self {
        EntraConfig {
            tenant_id: "8d2f1c3e-5b7a-4e69-9c0d-1a2b3c4d5e6f".into(),
            client_id: "5c9e7a4b-2d1f-4a3e-b6c8-7f9e0d1c2b3a".into(),
            client_secret: "fake-client-secret-value-123".into(),
            signing_key: random_bytes(32),
            lifetime_secs: 3600,
            certificate_der: fixtures::sp_cert_der(),
            certificate_public_key: fixtures::sp_public_key_der(),
            federated: FederatedTrust {
                issuer: "https://oidc.fake.example/".into(),
                subject: "system:serviceaccount:apps:web".into(),
                audience: FEDERATED_AUDIENCE.into(),
                key: random_bytes(32),
            },
            managed_identity_client_id: "3f6c2b8e-9a1d-4e7f-b5c4-2d8e1a0f9b6c".into(),
            user_assigned_client_id: "a7d4e1f2-6b3c-4d9e-8f0a-5c1b2e3d4f6a".into(),
            identity_header: random_secret(),
            github_request_token: random_secret(),
        }
    }
}

/// How the token endpoint and the managed identity endpoints answer (the GitHub one ignores it).
#[derive(Clone, Debug)]
pub enum EntraMode {
    Normal,
    /// Answer every request with this status and an Entra error for `code` ("AADSTS7000222").
    /// The managed identity endpoints answer `{"error", "error_description"}`, and take any
    /// `code` ("AADSTS50001" or a bare error such as "service_unavailable").
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
    /// Validate as usual, then send this raw value as `expires_in` (`json!("3599")`, `json!(-5)`)
    /// where the answer has one: the token endpoint and IMDS, not App Service.
    ExpiresIn(Value),
    /// Validate as usual, then send this raw value as `access_token` (`json!("")`).
    AccessToken(Value),
}

struct State {
    cfg: EntraConfig,
    /// The server's own URL, known only once bound; certificate assertions must name it.
    authority: OnceLock<String>,
    mode: Mutex<EntraMode>,
    lifetime: AtomicU64,
    token_requests: AtomicUsize,
    tokens_issued: AtomicUsize,
    managed_identity_requests: AtomicUsize,
    github_requests: AtomicUsize,
    jti: AtomicU64,
    last_form: Mutex<Option<Vec<(String, String)>>>,
    last_assertion: Mutex<Option<(Value, Value)>>,
    /// `jti`s of accepted certificate assertions: Entra ID refuses a replayed one.
    assertion_jtis: Mutex<HashSet<String>>,
}

impl State {
    fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority.get().map_or("", String::as_str),
            self.cfg.tenant_id
        )
    }

    fn mode(&self) -> EntraMode {
        self.mode.lock().expect("mode lock").clone()
    }

    /// A signed access token for the principal `(client_id, object_id)`, or the raw value that
    /// `EntraMode::AccessToken` asks for.
    fn issue(&self, mode: &EntraMode, client_id: &str, object_id: &str) -> Value {
        if let EntraMode::AccessToken(raw) = mode {
            return raw.clone();
        }
        let jti = format!("fake-jti-{}", self.jti.fetch_add(1, Ordering::SeqCst));
        self.tokens_issued.fetch_add(1, Ordering::SeqCst);
        let lifetime = self.lifetime.load(Ordering::SeqCst);
        let claims = token_claims_for(&self.cfg, client_id, object_id, lifetime, &jti);
        jwt::sign(&claims, &self.cfg.signing_key).into()
    }
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
            authority: OnceLock::new(),
            mode: Mutex::new(EntraMode::Normal),
            token_requests: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            managed_identity_requests: AtomicUsize::new(0),
            github_requests: AtomicUsize::new(0),
            jti: AtomicU64::new(0),
            last_form: Mutex::new(None),
            last_assertion: Mutex::new(None),
            assertion_jtis: Mutex::default(),
        });
        let handler_state = state.clone();
        let server = Server::start(move |req| handle(handler_state.clone(), req)).await;
        // Nobody knows the port before `start` returns, so no request can arrive before this.
        state
            .authority
            .set(server.url())
            .unwrap_or_else(|_| unreachable!("set once"));
        FakeEntra { state, server }
    }

    /// What the proxy's `authority` setting should be, e.g. "http://127.0.0.1:PORT".
    pub fn authority(&self) -> String {
        self.server.url()
    }

    /// The token endpoint, which is also the `aud` a certificate assertion must carry.
    pub fn token_url(&self) -> String {
        self.state.token_url()
    }

    /// IMDS' token path, here instead of at http://169.254.169.254.
    pub fn imds_url(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.authority())
    }

    /// App Service / Container Apps `IDENTITY_ENDPOINT`.
    pub fn app_service_url(&self) -> String {
        format!("{}/msi/token", self.authority())
    }

    /// App Service / Container Apps `IDENTITY_HEADER`.
    pub fn identity_header(&self) -> &str {
        &self.state.cfg.identity_header
    }

    /// `ACTIONS_ID_TOKEN_REQUEST_URL`; clients append `&audience=...`.
    pub fn github_request_url(&self) -> String {
        format!("{}/_github/idtoken?api-version=2.0", self.authority())
    }

    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`.
    pub fn github_request_token(&self) -> &str {
        &self.state.cfg.github_request_token
    }

    pub fn config(&self) -> &EntraConfig {
        &self.state.cfg
    }

    /// POSTs to the token path, whatever their outcome.
    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Access tokens signed so far, by any endpoint.
    pub fn tokens_issued(&self) -> usize {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    /// Requests to the IMDS and App Service paths, whatever their outcome.
    pub fn managed_identity_requests(&self) -> usize {
        self.state.managed_identity_requests.load(Ordering::SeqCst)
    }

    /// Requests to the GitHub OIDC path, whatever their outcome.
    pub fn github_requests(&self) -> usize {
        self.state.github_requests.load(Ordering::SeqCst)
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
        let credential = match secret_file {
            Some(file) => format!("secret_file = \"{}\"", file.display()),
            None => format!("secret = \"{}\"", self.state.cfg.client_secret),
        };
        self.identity_toml_with(
            "default",
            &format!("{{ kind = \"client_secret\", {credential} }}"),
        )
    }

    /// An `[identities.NAME]` table for this fake's app registration with any credential table.
    pub fn identity_toml_with(&self, name: &str, credential: &str) -> String {
        let cfg = &self.state.cfg;
        format!(
            "[identities.{name}]\ntenant_id = \"{}\"\nclient_id = \"{}\"\nauthority = \"{}\"\n\
             credential = {credential}\n",
            cfg.tenant_id,
            cfg.client_id,
            self.authority(),
        )
    }

    pub fn last_form(&self) -> Option<Vec<(String, String)>> {
        self.state.last_form.lock().expect("form lock").clone()
    }

    /// Header and claims of the last decodable `client_assertion`, accepted or not.
    pub fn last_assertion(&self) -> Option<(Value, Value)> {
        self.state
            .last_assertion
            .lock()
            .expect("assertion lock")
            .clone()
    }

    /// A valid certificate assertion for this fake, signed with the registered certificate's key.
    pub fn certificate_assertion(&self, alg: Alg) -> String {
        let cfg = &self.state.cfg;
        assertion::certificate_assertion(
            &RsaSigner::sp(),
            alg,
            &cfg.certificate_der,
            &cfg.client_id,
            &self.token_url(),
        )
    }

    /// A fresh federated token the trust accepts: as a Kubernetes projected service account token
    /// or a GitHub Actions OIDC token would be, valid for 10 minutes.
    pub fn federated_token(&self) -> String {
        self.federated_token_with(json!({}))
    }

    /// `federated_token` with claims replaced (`{"sub": "other"}`) or, for `null`, removed.
    pub fn federated_token_with(&self, overrides: Value) -> String {
        let trust = &self.state.cfg.federated;
        let mut claims = federated_claims(trust, &trust.audience, 600);
        assertion::merge(&mut claims, &overrides);
        jwt::sign(&claims, &trust.key)
    }

    /// A federated token with the trust's claims, signed with a key the trust does not know.
    pub fn forged_federated_token(&self) -> String {
        let trust = &self.state.cfg.federated;
        let claims = federated_claims(trust, &trust.audience, 600);
        jwt::sign(&claims, &random_bytes(32))
    }
}

/// Claims of a token as Entra ID would issue it for `cfg` (v1 tokens: Azure DevOps asks for them).
/// Public so tests can tamper with a field and sign the result themselves.
pub fn token_claims(cfg: &EntraConfig, lifetime_secs: u64, jti: &str) -> Value {
    token_claims_for(cfg, &cfg.client_id, OBJECT_ID, lifetime_secs, jti)
}

/// `token_claims` for another principal of the tenant, such as a managed identity.
pub fn token_claims_for(
    cfg: &EntraConfig,
    client_id: &str,
    object_id: &str,
    lifetime_secs: u64,
    jti: &str,
) -> Value {
    let now = jwt::now();
    json!({
        "aud": DEVOPS_RESOURCE,
        "iss": format!("https://sts.windows.net/{}/", cfg.tenant_id),
        "tid": cfg.tenant_id,
        "appid": client_id,
        "oid": object_id,
        "sub": object_id,
        "idtyp": "app",
        "ver": "1.0",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_secs,
        "jti": jti,
    })
}

fn federated_claims(trust: &FederatedTrust, audience: &str, lifetime_secs: u64) -> Value {
    let now = jwt::now();
    json!({
        "iss": trust.issuer,
        "sub": trust.subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_secs,
        "jti": assertion::unique_id(),
    })
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/metadata/identity/oauth2/token" => return managed_identity::imds(&state, req).await,
        "/msi/token" => return managed_identity::app_service(&state, req).await,
        "/_github/idtoken" => return managed_identity::github(&state, &req),
        _ => {}
    }
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
    let mode = state.mode();
    if let Some(injected) = injected_failure(&mode, ErrorStyle::Entra).await {
        return injected;
    }
    if let Err(refusal) = validate(&state, tenant, &form) {
        return refusal.into_response();
    }
    let lifetime = state.lifetime.load(Ordering::SeqCst);
    let access_token = state.issue(&mode, &state.cfg.client_id, OBJECT_ID);
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum ErrorStyle {
    /// `error`, `error_description` ("AADSTSnnnn: ..."), `error_codes`, ids: the token endpoint.
    Entra,
    /// Just `error` and `error_description`: IMDS and App Service.
    ManagedIdentity,
}

/// The answer a failure mode forces, before any validation; `None` in the validating modes.
async fn injected_failure(mode: &EntraMode, style: ErrorStyle) -> Option<Response<Body>> {
    let res = match mode {
        EntraMode::Normal | EntraMode::ExpiresIn(_) | EntraMode::AccessToken(_) => return None,
        EntraMode::Hang => {
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            entra_error(504, "temporarily_unavailable", 50001, "Hung.")
        }
        EntraMode::Garbage => Response::builder()
            .header(header::CONTENT_TYPE, "text/html")
            .body(full("<html>not json"))
            .expect("static response"),
        EntraMode::Throttle { retry_after_secs } => {
            let message = "The server is throttling this client. Retry later.";
            let mut res = match style {
                ErrorStyle::Entra => entra_error(429, "temporarily_unavailable", 50196, message),
                ErrorStyle::ManagedIdentity => mi_error(429, "too_many_requests", message),
            };
            res.headers_mut()
                .insert(header::RETRY_AFTER, (*retry_after_secs).into());
            res
        }
        EntraMode::Fail { status, code } => {
            let number = code.trim_start_matches("AADSTS").parse().ok();
            match (style, number) {
                (ErrorStyle::Entra, number) => {
                    let number = number.unwrap_or(0);
                    entra_error(*status, error_for(number), number, "Injected failure.")
                }
                (ErrorStyle::ManagedIdentity, Some(number)) => mi_error(
                    *status,
                    error_for(number),
                    &format!("AADSTS{number}: Injected failure."),
                ),
                (ErrorStyle::ManagedIdentity, None) => mi_error(*status, code, "Injected failure."),
            }
        }
    };
    Some(res)
}

fn validate(state: &State, tenant: &str, form: &[(String, String)]) -> Result<(), Refusal> {
    let cfg = &state.cfg;
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
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
    match (field("client_secret"), field("client_assertion")) {
        (Some(secret), _) if secret == cfg.client_secret => {}
        (Some(_), _) => {
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
        (None, Some(client_assertion)) => client_assertion::check(
            state,
            client_id,
            field("client_assertion_type"),
            client_assertion,
        )?,
        (None, None) => {
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

fn missing(name: &str) -> Refusal {
    Refusal::new(
        400,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{name}'."),
    )
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
        500011 => "invalid_resource",
        7000215 | 7000218 | 7000222 | 700024 | 700027 | 70021 | 700211 | 700212 => "invalid_client",
        50196 | 50001 => "temporarily_unavailable",
        _ => "invalid_request",
    }
}

fn entra_error(status: u16, error: &str, code: u32, message: &str) -> Response<Body> {
    let (trace_id, correlation_id) = (assertion::unique_id(), assertion::unique_id());
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

/// The managed identity endpoints' error shape: no codes list, no trace ids.
fn mi_error(status: u16, error: &str, description: &str) -> Response<Body> {
    let status = StatusCode::from_u16(status).expect("Fail status is a valid HTTP status");
    json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    )
}
