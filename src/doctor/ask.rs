//! One question put to Azure DevOps with an identity's token, and its answer read as a verdict:
//! seen, or what Azure DevOps said and how to grant what is missing.

use http::{HeaderValue, StatusCode};
use serde_json::Value;

use super::plan::Question;

/// Where feeds are asked about: the Feed Management API.
pub(super) const FEEDS_HOST: &str = "feeds.dev.azure.com";

const API_VERSION: &str = "api-version=7.1";

const JOIN_ORGANIZATION: &str = "add the service principal to the organization (Organization \
     settings > Users, by its object id) with access level Basic: Stakeholder cannot use Repos";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    Seen,
    Refused {
        /// What Azure DevOps answered: the HTTP status and its message (with its TF code).
        answer: String,
        /// How to grant it.
        remedy: String,
    },
    /// The question could not be put (a host the configuration does not serve).
    NotAsked(String),
}

/// Where the questions go: only hosts the configuration serves.
pub(super) struct Hosts {
    /// `upstream.url`'s scheme and authority.
    pub(super) upstream: String,
    /// `upstream.url` names organizations in its path, as dev.azure.com does.
    pub(super) organizations_in_path: bool,
    /// The Feed Management API is among `upstream.hosts`.
    pub(super) feeds: bool,
}

impl Hosts {
    fn url(&self, question: &Question) -> Result<String, String> {
        let upstream = &self.upstream;
        if !matches!(question, Question::Feed { .. }) && !self.organizations_in_path {
            return Err(format!(
                "{upstream} names the organization in its host name, not its path"
            ));
        }
        Ok(match question {
            Question::Organization { org } => {
                format!("{upstream}/{}/_apis/connectionData", seg(org))
            }
            Question::Project { org, project } => format!(
                "{upstream}/{}/_apis/projects/{}?{API_VERSION}",
                seg(org),
                seg(project)
            ),
            Question::Repository { org, project, repo } => format!(
                "{upstream}/{}/{}/_apis/git/repositories/{}?{API_VERSION}",
                seg(org),
                seg(project),
                seg(repo)
            ),
            Question::Feed { org, project, feed } => {
                if !self.feeds {
                    return Err(format!(
                        "{FEEDS_HOST} is not among upstream.hosts, and the token goes to no \
                         other host"
                    ));
                }
                let project = project
                    .as_deref()
                    .map_or(String::new(), |p| format!("/{}", seg(p)));
                format!(
                    "https://{FEEDS_HOST}/{}{project}/_apis/packaging/feeds/{}?{API_VERSION}",
                    seg(org),
                    seg(feed)
                )
            }
        })
    }
}

/// A name as a path segment: escapes written in the rule stay as they are, anything a URL would
/// read as a delimiter is escaped.
fn seg(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub(super) async fn ask(
    http: &reqwest::Client,
    hosts: &Hosts,
    bearer: &HeaderValue,
    question: &Question,
) -> Verdict {
    let url = match hosts.url(question) {
        Ok(url) => url,
        Err(why) => return Verdict::NotAsked(why),
    };
    let answer = crate::egress::get_as(http, &url, bearer).await;
    let mut response = match answer {
        Ok(response) => response,
        Err(error) => {
            let host = url.split('/').nth(2).unwrap_or_default().to_owned();
            return Verdict::Refused {
                answer: format!(
                    "unreachable: {}",
                    crate::token::endpoint::describe_reqwest_error(&error)
                ),
                remedy: format!(
                    "check the way to {host}: DNS, upstream.resolve, the egress proxy, \
                     upstream.ca_file"
                ),
            };
        }
    };
    let status = response.status();
    let body = crate::token::endpoint::read_json(&mut response).await;
    judge(question, status, &body)
}

/// The verdict on an answer: Azure DevOps answers 404 both for what does not exist and for what
/// the principal may not see, so the remedy names both.
pub(super) fn judge(question: &Question, status: StatusCode, body: &Value) -> Verdict {
    let message = printable(body["message"].as_str().unwrap_or_default());
    if status.is_success() && status != StatusCode::NON_AUTHORITATIVE_INFORMATION {
        let user = &body["authenticatedUser"];
        let anonymous = user["descriptor"]
            .as_str()
            .is_some_and(|d| d.starts_with("System:PublicAccess"))
            || user["providerDisplayName"] == "Anonymous";
        if matches!(question, Question::Organization { .. }) && anonymous {
            return Verdict::Refused {
                answer: format!("HTTP {}: answered as anonymous", status.as_u16()),
                remedy: JOIN_ORGANIZATION.into(),
            };
        }
        return Verdict::Seen;
    }
    let answer = if message.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {message}", status.as_u16())
    };
    let remedy = match status {
        StatusCode::UNAUTHORIZED => JOIN_ORGANIZATION.into(),
        StatusCode::NON_AUTHORITATIVE_INFORMATION => {
            "Azure DevOps answered with a sign-in page: the token was not accepted; check that \
             the organization is connected to this tenant"
                .into()
        }
        s if s.is_redirection() => "Azure DevOps answered with a redirect (a sign-in page, or a \
             name that does not exist): check the name, and that the organization is connected \
             to this tenant"
            .into(),
        StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => grant(question),
        StatusCode::TOO_MANY_REQUESTS => {
            "Azure DevOps throttles this identity: run the check again later".into()
        }
        _ => "Azure DevOps could not answer: run the check again later".into(),
    };
    Verdict::Refused { answer, remedy }
}

fn grant(question: &Question) -> String {
    match question {
        Question::Organization { org } => {
            format!("check that the organization `{org}` exists; then {JOIN_ORGANIZATION}")
        }
        Question::Project { project, .. } => format!(
            "add the service principal to the project's Readers group (Project settings > \
             Permissions; Contributors if the rule writes), or check that the project \
             `{project}` exists"
        ),
        Question::Repository { repo, .. } => format!(
            "give the service principal Read on the repository (Project settings > \
             Repositories > {repo} > Security, e.g. through the project's Readers group), with \
             access level Basic: Stakeholder cannot use Repos; or check that the repository \
             `{repo}` exists"
        ),
        Question::Feed { feed, .. } => format!(
            "give the service principal Reader on the feed (Feed settings > Permissions; Feed \
             and Upstream Reader (Collaborator) to save packages from upstream sources), or \
             check that the feed `{feed}` exists in that organization or project"
        ),
    }
}

/// Text from a remote party, cut short and stripped of control characters before it reaches a
/// terminal.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn project() -> Question {
        Question::Project {
            org: "contoso".into(),
            project: "secret".into(),
        }
    }

    #[test]
    fn answers_become_verdicts_with_the_code_and_a_remedy() {
        assert_eq!(
            judge(&project(), StatusCode::OK, &json!({"name": "secret"})),
            Verdict::Seen
        );
        let Verdict::Refused { answer, remedy } = judge(
            &project(),
            StatusCode::NOT_FOUND,
            &json!({"message": "TF200016: The following project does not exist: secret.\n"}),
        ) else {
            panic!("a 404 is a refusal");
        };
        assert_eq!(
            answer,
            "HTTP 404: TF200016: The following project does not exist: secret."
        );
        assert!(remedy.contains("Readers group"), "{remedy}");
        let Verdict::Refused { remedy, .. } =
            judge(&project(), StatusCode::UNAUTHORIZED, &Value::Null)
        else {
            panic!("a 401 is a refusal");
        };
        assert!(remedy.contains("access level Basic"), "{remedy}");
        let organization = Question::Organization {
            org: "contoso".into(),
        };
        let anonymous = json!({"authenticatedUser": {"descriptor": "System:PublicAccess;x"}});
        assert!(matches!(
            judge(&organization, StatusCode::OK, &anonymous),
            Verdict::Refused { .. }
        ));
        assert!(matches!(
            judge(
                &organization,
                StatusCode::NON_AUTHORITATIVE_INFORMATION,
                &Value::Null
            ),
            Verdict::Refused { .. }
        ));
    }

    #[test]
    fn urls_go_to_the_served_hosts_only_and_escape_delimiters() {
        let mut hosts = Hosts {
            upstream: "https://dev.azure.com".into(),
            organizations_in_path: true,
            feeds: true,
        };
        let repo = Question::Repository {
            org: "my%20org".into(),
            project: "web?x".into(),
            repo: "a#b".into(),
        };
        assert_eq!(
            hosts.url(&repo).expect("url"),
            "https://dev.azure.com/my%20org/web%3Fx/_apis/git/repositories/a%23b?api-version=7.1"
        );
        let feed = Question::Feed {
            org: "contoso".into(),
            project: None,
            feed: "internal".into(),
        };
        assert_eq!(
            hosts.url(&feed).expect("url"),
            "https://feeds.dev.azure.com/contoso/_apis/packaging/feeds/internal?api-version=7.1"
        );
        hosts.feeds = false;
        assert!(hosts.url(&feed).is_err());
        hosts.organizations_in_path = false;
        assert!(hosts.url(&project()).is_err());
    }
}
