//! What the service principal may see in the fake Azure DevOps, and the answers that show it:
//! who the token is (`connectionData`), a project, a repository, a feed. Everything exists and is
//! visible until a test denies it ([`Access::deny`]); then the fake answers as Azure DevOps does
//! for a principal that cannot see it: 401 with TF400813 outside the organization (as
//! `devops::not_member`), 404 with Azure DevOps' own body for a project (TF200016), a repository
//! (TF401019) or a feed (FeedIdNotFoundException), since it does not tell "missing" from "not
//! yours".

use std::sync::Mutex;

use http::{Response, StatusCode, header};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{Body, json_response};

/// Resources the principal may not see, as `deny` was given them, lower-cased.
#[derive(Default)]
pub struct Access {
    denied: Mutex<Vec<String>>,
}

impl Access {
    /// `org`, `org/project`, `org/project/_git/repo`, `org/_packaging/feed` or
    /// `org/project/_packaging/feed`.
    pub fn deny(&self, resource: &str) {
        self.denied
            .lock()
            .expect("denied lock")
            .push(resource.trim_matches('/').to_ascii_lowercase());
    }

    fn denies(&self, resource: &str) -> bool {
        let resource = resource.to_ascii_lowercase();
        self.denied.lock().expect("denied lock").contains(&resource)
    }

    /// The answer to a request with a valid token whose `claims` are these, if it is one of
    /// the questions above or reaches into a denied organization; `None` leaves it to the rest
    /// of the fake.
    pub fn answer(&self, host: &str, path: &str, claims: &Value) -> Option<Response<Body>> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let oid = claims["oid"].as_str().unwrap_or_default();
        let org_in_path = host == "dev.azure.com" || host.ends_with(".dev.azure.com");
        if org_in_path
            && segments
                .first()
                .is_some_and(|org| !org.starts_with('_') && self.denies(org))
        {
            return Some(not_member(oid));
        }
        match (host, segments.as_slice()) {
            ("dev.azure.com", ["_apis", "connectionData"] | [_, "_apis", "connectionData"]) => {
                Some(connection_data(claims))
            }
            ("dev.azure.com", [org, "_apis", "projects", project]) => {
                Some(self.project(org, project))
            }
            ("dev.azure.com", [org, project, "_apis", "git", "repositories", repo]) => {
                if self.denies(&format!("{org}/{project}")) {
                    return Some(project_missing(project));
                }
                if self.denies(&format!("{org}/{project}/_git/{repo}")) {
                    return Some(repository_missing(repo));
                }
                Some(json_response(
                    StatusCode::OK,
                    &json!({
                        "id": guid(&format!("{org}/{project}/{repo}")),
                        "name": repo,
                        "project": { "id": guid(&format!("{org}/{project}")), "name": project },
                        "defaultBranch": "refs/heads/main",
                        "remoteUrl": format!("https://dev.azure.com/{org}/{project}/_git/{repo}"),
                    }),
                ))
            }
            ("feeds.dev.azure.com", [org, "_apis", "packaging", "feeds", feed]) => {
                Some(self.feed(org, None, feed))
            }
            ("feeds.dev.azure.com", [org, project, "_apis", "packaging", "feeds", feed]) => {
                Some(self.feed(org, Some(project), feed))
            }
            _ => None,
        }
    }

    fn project(&self, org: &str, project: &str) -> Response<Body> {
        if self.denies(&format!("{org}/{project}")) {
            return project_missing(project);
        }
        let id = guid(&format!("{org}/{project}"));
        json_response(
            StatusCode::OK,
            &json!({
                "id": id,
                "name": project,
                "url": format!("https://dev.azure.com/{org}/_apis/projects/{id}"),
                "state": "wellFormed",
                "visibility": "private",
            }),
        )
    }

    fn feed(&self, org: &str, project: Option<&str>, feed: &str) -> Response<Body> {
        let scope = project.map_or(org.to_owned(), |p| format!("{org}/{p}"));
        if self.denies(&format!("{scope}/_packaging/{feed}")) {
            return error(
                StatusCode::NOT_FOUND,
                format!("The feed with ID '{feed}' doesn't exist."),
                "Microsoft.VisualStudio.Services.Feed.WebApi.FeedIdNotFoundException, \
                 Microsoft.VisualStudio.Services.Feed.WebApi",
                "FeedIdNotFoundException",
            );
        }
        let id = if scope == "contoso" && feed == "internal" {
            super::azure::FEED_ID.to_owned()
        } else {
            guid(&format!("{scope}/{feed}"))
        };
        let project = project.map(|p| json!({ "id": guid(&format!("{org}/{p}")), "name": p }));
        json_response(
            StatusCode::OK,
            &json!({ "id": id, "name": feed, "project": project }),
        )
    }
}

/// A stable GUID-shaped id for a name.
fn guid(name: &str) -> String {
    let hex: String = sha2::Sha256::digest(name.to_ascii_lowercase().as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Azure DevOps' error body.
fn error(status: StatusCode, message: String, type_name: &str, type_key: &str) -> Response<Body> {
    json_response(
        status,
        &json!({
            "$id": "1",
            "innerException": null,
            "message": message,
            "typeName": type_name,
            "typeKey": type_key,
            "errorCode": 0,
            "eventId": 3000,
        }),
    )
}

fn project_missing(project: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "TF200016: The following project does not exist: {project}. Verify that the name of \
             the project is correct and that the project exists on the specified Azure DevOps \
             Server."
        ),
        "Microsoft.TeamFoundation.Core.WebApi.ProjectDoesNotExistWithNameException, \
         Microsoft.TeamFoundation.Core.WebApi",
        "ProjectDoesNotExistWithNameException",
    )
}

fn repository_missing(repo: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "TF401019: The Git repository with name or identifier {repo} does not exist or you \
             do not have permissions for the operation you are attempting."
        ),
        "Microsoft.TeamFoundation.Git.Server.GitRepositoryNotFoundException, \
         Microsoft.TeamFoundation.SourceControl.WebServer",
        "GitRepositoryNotFoundException",
    )
}

/// A valid token of a principal that was never added to the organization.
fn not_member(oid: &str) -> Response<Body> {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        format!("TF400813: The user '{oid}' is not authorized to access this resource."),
        "Microsoft.TeamFoundation.Framework.Server.UnauthorizedRequestException, \
         Microsoft.TeamFoundation.Framework.Server",
        "UnauthorizedRequestException",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Bearer authorization_uri=https://login.microsoftonline.com/common"
            .parse()
            .expect("header"),
    );
    response
}

fn connection_data(claims: &Value) -> Response<Body> {
    let oid = claims["oid"].as_str().unwrap_or_default();
    let user = json!({
        "id": oid,
        "descriptor": format!("Microsoft.VisualStudio.Services.Claims.AadServicePrincipal;{oid}"),
        "providerDisplayName": claims["appid"],
        "isActive": true,
    });
    json_response(
        StatusCode::OK,
        &json!({ "authenticatedUser": user, "authorizedUser": user }),
    )
}
