//! Token sources that need no credential in the proxy's configuration: the managed identity
//! endpoints of IMDS (VMs, AKS nodes) and of App Service / Container Apps, and the GitHub Actions
//! OIDC endpoint whose tokens go on to the token endpoint as federated assertions.
//!
//! Each keeps the quirks clients trip over: IMDS' string-typed numbers and its `Metadata` header,
//! App Service's `X-IDENTITY-HEADER` and missing `expires_in`.

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::super::query_param;
use super::{
    Body, DEVOPS_RESOURCE, EntraMode, ErrorStyle, SYSTEM_ASSIGNED_OBJECT_ID, State,
    USER_ASSIGNED_OBJECT_ID, federated_claims, injected_failure, json_response, jwt, mi_error,
};

/// Parameters that name a user-assigned identity, per endpoint.
struct Selectors {
    client_id: &'static str,
    object_id: &'static str,
    resource_id: &'static str,
}

const IMDS_SELECTORS: Selectors = Selectors {
    client_id: "client_id",
    object_id: "object_id",
    resource_id: "msi_res_id",
};

const APP_SERVICE_SELECTORS: Selectors = Selectors {
    client_id: "client_id",
    object_id: "principal_id",
    resource_id: "mi_res_id",
};

/// A successful managed identity exchange, before each endpoint shapes its answer.
struct Issued {
    access_token: Value,
    client_id: String,
    resource: String,
    now: u64,
    lifetime: u64,
}

pub(super) async fn imds(state: &State, req: Request<Incoming>) -> Response<Body> {
    let issued = match exchange(state, &req, &IMDS_SELECTORS, |req| {
        let metadata = req.headers().get("metadata").and_then(|v| v.to_str().ok());
        if !metadata.is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Some(mi_error(
                400,
                "invalid_request",
                "Required metadata header not specified",
            ));
        }
        if query_param(req.uri().query(), "api-version").is_none_or(|v| v.is_empty()) {
            // IMDS' own shape for this one: a sentence in `error` and the versions it knows.
            return Some(json_response(
                StatusCode::BAD_REQUEST,
                &json!({
                    "error": "Bad request. api-version was not specified in the request. For \
                              more information refer to aka.ms/azureimds",
                    "newest-versions": ["2023-07-01", "2021-12-13", "2021-11-15"],
                }),
            ));
        }
        None
    })
    .await
    {
        Ok(issued) => issued,
        Err(res) => return res,
    };
    let expires_in = match state.mode() {
        EntraMode::ExpiresIn(raw) => raw,
        _ => issued.lifetime.to_string().into(),
    };
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": issued.access_token,
            "client_id": issued.client_id,
            "expires_in": expires_in,
            "expires_on": (issued.now + issued.lifetime).to_string(),
            "ext_expires_in": issued.lifetime.to_string(),
            "not_before": issued.now.to_string(),
            "resource": issued.resource,
            "token_type": "Bearer",
        }),
    )
}

pub(super) async fn app_service(state: &State, req: Request<Incoming>) -> Response<Body> {
    let issued = match exchange(state, &req, &APP_SERVICE_SELECTORS, |req| {
        match req.headers().get("x-identity-header") {
            None => {
                return Some(mi_error(
                    400,
                    "invalid_request",
                    "The X-IDENTITY-HEADER header is required.",
                ));
            }
            Some(v) if v.as_bytes() != state.cfg.identity_header.as_bytes() => {
                return Some(mi_error(
                    401,
                    "unauthorized_client",
                    "The X-IDENTITY-HEADER header does not match this app's IDENTITY_HEADER.",
                ));
            }
            Some(_) => {}
        }
        // 2017-09-01 used a `secret` header and date strings; only the current shape is modelled.
        match query_param(req.uri().query(), "api-version").as_deref() {
            Some("2019-08-01") => None,
            other => Some(mi_error(
                400,
                "invalid_request",
                &format!("api-version must be 2019-08-01, got {other:?}."),
            )),
        }
    })
    .await
    {
        Ok(issued) => issued,
        Err(res) => return res,
    };
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": issued.access_token,
            "expires_on": (issued.now + issued.lifetime).to_string(),
            "resource": issued.resource,
            "token_type": "Bearer",
            "client_id": issued.client_id,
        }),
    )
}

/// What both endpoints share: counting, failure modes, the endpoint's own checks (`refuse`
/// answers the refusal, if any), the resource, the identity, and a token signed for it.
async fn exchange(
    state: &State,
    req: &Request<Incoming>,
    selectors: &Selectors,
    refuse: impl FnOnce(&Request<Incoming>) -> Option<Response<Body>>,
) -> Result<Issued, Response<Body>> {
    state
        .managed_identity_requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if req.method() != Method::GET {
        return Err(mi_error(
            405,
            "invalid_request",
            "Only GET is supported on the identity endpoint.",
        ));
    }
    let mode = state.mode();
    if let Some(injected) = injected_failure(&mode, ErrorStyle::ManagedIdentity).await {
        return Err(injected);
    }
    if let Some(refusal) = refuse(req) {
        return Err(refusal);
    }
    let query = req.uri().query();
    let resource = match query_param(query, "resource") {
        Some(resource) if resource == DEVOPS_RESOURCE => resource,
        Some(resource) => {
            return Err(mi_error(
                400,
                "invalid_resource",
                &format!(
                    "AADSTS500011: The resource principal named {resource} was not found in the \
                     tenant named {}. This can happen if the application has not been installed \
                     by the administrator of the tenant or consented to by any user in the tenant.",
                    state.cfg.tenant_id
                ),
            ));
        }
        None => {
            return Err(mi_error(
                400,
                "invalid_request",
                "Required audience parameter not specified",
            ));
        }
    };
    let cfg = &state.cfg;
    let named = |name| query_param(query, name);
    let (client_id, object_id) = match (
        named(selectors.client_id),
        named(selectors.object_id),
        named(selectors.resource_id),
    ) {
        (None, None, None) => (&cfg.managed_identity_client_id, SYSTEM_ASSIGNED_OBJECT_ID),
        (Some(id), None, None) if id == cfg.user_assigned_client_id => {
            (&cfg.user_assigned_client_id, USER_ASSIGNED_OBJECT_ID)
        }
        (None, Some(id), None) if id == USER_ASSIGNED_OBJECT_ID => {
            (&cfg.user_assigned_client_id, USER_ASSIGNED_OBJECT_ID)
        }
        // Resource ids are not modelled: naming one finds nothing, like a typo would.
        _ => return Err(mi_error(400, "invalid_request", "Identity not found")),
    };
    Ok(Issued {
        access_token: state.issue(&mode, client_id, object_id),
        client_id: client_id.clone(),
        resource,
        now: jwt::now(),
        lifetime: state.lifetime.load(std::sync::atomic::Ordering::SeqCst),
    })
}

/// `ACTIONS_ID_TOKEN_REQUEST_URL`: a federated token for the trust's issuer and subject, with the
/// audience the caller asks for, so the token endpoint accepts it only when that audience is right.
pub(super) fn github(state: &State, req: &Request<Incoming>) -> Response<Body> {
    state
        .github_requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if req.method() != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "message": "Only GET is supported." }),
        );
    }
    let expected = format!("Bearer {}", state.cfg.github_request_token);
    let authorization = req.headers().get(header::AUTHORIZATION);
    if authorization.is_none_or(|v| v.as_bytes() != expected.as_bytes()) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "message": "Bad credentials: ACTIONS_ID_TOKEN_REQUEST_TOKEN expected." }),
        );
    }
    // Without `audience` GitHub uses the repository owner's URL, which Entra ID will not accept.
    let audience = query_param(req.uri().query(), "audience")
        .unwrap_or_else(|| "https://github.com/contoso".to_owned());
    let trust = &state.cfg.federated;
    // GitHub's tokens live about five minutes.
    let token = jwt::sign(&federated_claims(trust, &audience, 300), &trust.key);
    json_response(StatusCode::OK, &json!({ "count": 1, "value": token }))
}
