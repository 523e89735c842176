//! What a rule needs of Azure DevOps, read from the part of it written literally: membership of
//! the organization, a project, a repository or a feed. Wildcards end what can be asked; what
//! they leave open is said, not guessed.

use crate::policy::Rule;

/// One thing the service principal must be able to see. Names are lower-cased: Azure DevOps
/// compares them ignoring case, so two spellings are one question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Question {
    Organization {
        org: String,
    },
    Project {
        org: String,
        project: String,
    },
    Repository {
        org: String,
        project: String,
        repo: String,
    },
    Feed {
        org: String,
        project: Option<String>,
        feed: String,
    },
}

impl Question {
    /// How the report names it.
    pub(super) fn describe(&self) -> String {
        match self {
            Question::Organization { org } => format!("organization {org}"),
            Question::Project { org, project } => format!("project {org}/{project}"),
            Question::Repository { org, project, repo } => {
                format!("repository {org}/{project}/_git/{repo}")
            }
            Question::Feed { org, project, feed } => match project {
                Some(project) => format!("feed {org}/{project}/{feed}"),
                None => format!("feed {org}/{feed}"),
            },
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// The broadest first: each is asked only when the one before it was answered.
    pub(super) questions: Vec<Question>,
    /// What the rule reaches that no question covers.
    pub(super) unchecked: Vec<String>,
    /// Methods the rule admits beyond reading: a read proves none of them.
    pub(super) writes: Vec<String>,
}

/// `rule` as its `Display` writes it (`METHODS [host]path`, or `METHODS feed org/[project/]feed`,
/// the form audit lines name it by) taken apart into questions.
pub(super) fn plan(rule: &Rule) -> Plan {
    let text = rule.to_string();
    let (methods, target) = text.split_once(' ').unwrap_or((&text, ""));
    let mut plan = Plan {
        writes: methods
            .split(',')
            .map(str::to_ascii_uppercase)
            .filter(|m| !matches!(m.as_str(), "GET" | "HEAD" | "OPTIONS"))
            .collect(),
        ..Plan::default()
    };
    if let Some(feed) = rule.feed() {
        let name = feed.to_string().to_ascii_lowercase();
        let parts: Vec<&str> = name.split('/').collect();
        let (org, project, feed) = match parts.as_slice() {
            [org, feed] => (*org, None, *feed),
            [org, project, feed] => (*org, Some(*project), *feed),
            _ => {
                plan.unchecked
                    .push(format!("feed `{name}` is not org/[project/]feed"));
                return plan;
            }
        };
        plan.questions.push(organization(org));
        plan.questions.push(Question::Feed {
            org: org.into(),
            project: project.map(str::to_owned),
            feed: feed.into(),
        });
        return plan;
    }
    let (host, path) = match target.find('/') {
        Some(at) => target.split_at(at),
        None => (target, "/"),
    };
    if host == "visualstudio.com" || host.ends_with(".visualstudio.com") {
        plan.unchecked.push(format!(
            "on {host} the organization is part of the host name: write the rule for \
             dev.azure.com to have it checked"
        ));
        return plan;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    from_path(&segments, &mut plan);
    plan
}

fn organization(org: &str) -> Question {
    Question::Organization { org: org.into() }
}

fn wild(segment: &str) -> bool {
    segment == "*" || segment == "**"
}

fn is(segment: Option<&&str>, literal: &str) -> bool {
    segment.is_some_and(|s| s.eq_ignore_ascii_case(literal))
}

fn from_path(segments: &[&str], plan: &mut Plan) {
    let Some(first) = segments.first() else {
        plan.unchecked.push("the rule names no organization".into());
        return;
    };
    if wild(first) {
        plan.unchecked
            .push("the organization is a wildcard: there is nothing to ask".into());
        return;
    }
    // Organization names cannot start with `_`: this is a service-wide path.
    if first.starts_with('_') {
        plan.unchecked
            .push("the path is not an organization's: there is nothing to ask".into());
        return;
    }
    let org = first.to_ascii_lowercase();
    plan.questions.push(organization(&org));
    let Some(second) = segments.get(1) else {
        return;
    };
    if wild(second) {
        plan.unchecked.push(
            "the project is a wildcard: only membership of the organization was asked".into(),
        );
        return;
    }
    if second.starts_with('_') {
        area(&org, None, &segments[1..], plan);
        return;
    }
    let project = second.to_ascii_lowercase();
    let rest = &segments[2..];
    // A project's feed carries its own permissions: asking for the project would fail a
    // principal that is a reader of the feed only.
    let feed_path = is(rest.first(), "_packaging")
        || (is(rest.first(), "_apis") && is(rest.get(1), "packaging"));
    if !feed_path {
        plan.questions.push(Question::Project {
            org: org.clone(),
            project: project.clone(),
        });
    }
    area(&org, Some(&project), rest, plan);
}

/// What follows the organization or the project: a repository, a feed, or anything else (which
/// the question already asked covers).
fn area(org: &str, project: Option<&str>, rest: &[&str], plan: &mut Plan) {
    let named = |i: usize| rest.get(i).filter(|s| !wild(s));
    if is(rest.first(), "_git") {
        match (project, named(1)) {
            (Some(project), Some(repo)) => plan.questions.push(Question::Repository {
                org: org.into(),
                project: project.into(),
                repo: repo.to_ascii_lowercase(),
            }),
            (None, Some(_)) => plan.unchecked.push(
                "the repository is named without its project: only the organization was asked"
                    .into(),
            ),
            (_, None) if rest.len() > 1 => plan
                .unchecked
                .push("the repository is a wildcard: no repository was asked".into()),
            (_, None) => {}
        }
        return;
    }
    let feed_at = if is(rest.first(), "_packaging") {
        Some(1)
    } else if is(rest.first(), "_apis") && is(rest.get(1), "packaging") {
        Some(if is(rest.get(2), "feeds") { 3 } else { 2 })
    } else {
        None
    };
    let Some(at) = feed_at else {
        return;
    };
    match named(at) {
        Some(feed) => {
            // A view (`internal@Release`) is read through its feed.
            let feed = feed.split('@').next().unwrap_or(feed);
            plan.questions.push(Question::Feed {
                org: org.into(),
                project: project.map(str::to_owned),
                feed: feed.to_ascii_lowercase(),
            });
        }
        None if rest.len() > at => plan
            .unchecked
            .push("the feed is a wildcard: no feed was asked".into()),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Feed, HostPattern};

    fn rule(methods: &[&str], path: &str) -> Rule {
        let methods: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
        Rule::compile(&methods, path).expect("rule")
    }

    fn on(host: &str, methods: &[&str], path: &str) -> Rule {
        rule(methods, path).on_host(HostPattern::compile(host).expect("host"))
    }

    fn org(org: &str) -> Question {
        organization(org)
    }

    fn project(org: &str, project: &str) -> Question {
        Question::Project {
            org: org.into(),
            project: project.into(),
        }
    }

    fn feed(org: &str, project: Option<&str>, feed: &str) -> Question {
        Question::Feed {
            org: org.into(),
            project: project.map(str::to_owned),
            feed: feed.into(),
        }
    }

    #[test]
    fn literal_prefixes_become_questions_from_the_organization_down() {
        let repo = plan(&rule(&["GET", "post"], "/Contoso/Web/_git/Web/**"));
        assert_eq!(
            repo.questions,
            vec![
                org("contoso"),
                project("contoso", "web"),
                Question::Repository {
                    org: "contoso".into(),
                    project: "web".into(),
                    repo: "web".into()
                }
            ]
        );
        assert_eq!(repo.writes, vec!["POST"]);
        assert!(repo.unchecked.is_empty());
        assert_eq!(
            plan(&rule(&["GET"], "/contoso/_apis/**")).questions,
            vec![org("contoso")]
        );
        let rest = plan(&rule(&["*"], "/contoso/web/_apis/build/**"));
        assert_eq!(
            rest.questions,
            vec![org("contoso"), project("contoso", "web")]
        );
        assert_eq!(rest.writes, vec!["*"]);
    }

    #[test]
    fn feeds_by_rule_and_by_path_skip_the_project_question() {
        let by_rule = Rule::for_feed(
            &["GET".into()],
            Feed::parse("contoso/web/releases").expect("feed"),
        )
        .expect("rule");
        assert_eq!(
            plan(&by_rule).questions,
            vec![org("contoso"), feed("contoso", Some("web"), "releases")]
        );
        let org_feed = on(
            "pkgs.dev.azure.com",
            &["GET"],
            "/contoso/_packaging/internal@Release/npm/**",
        );
        assert_eq!(
            plan(&org_feed).questions,
            vec![org("contoso"), feed("contoso", None, "internal")]
        );
        let management = on(
            "feeds.dev.azure.com",
            &["GET"],
            "/contoso/web/_apis/packaging/feeds/releases",
        );
        assert_eq!(
            plan(&management).questions,
            vec![org("contoso"), feed("contoso", Some("web"), "releases")]
        );
    }

    #[test]
    fn wildcards_stop_the_questions_and_say_what_was_left_unchecked() {
        let any_project = plan(&rule(&["GET"], "/contoso/*/_git/web/**"));
        assert_eq!(any_project.questions, vec![org("contoso")]);
        assert!(
            any_project.unchecked[0].contains("project"),
            "{any_project:?}"
        );
        let any_feed = plan(&on(
            "pkgs.dev.azure.com",
            &["GET"],
            "/contoso/_packaging/**",
        ));
        assert_eq!(any_feed.questions, vec![org("contoso")]);
        assert!(any_feed.unchecked[0].contains("feed"), "{any_feed:?}");
        let any_repo = plan(&rule(&["GET"], "/contoso/web/_git/*/info/refs"));
        assert_eq!(
            any_repo.questions,
            vec![org("contoso"), project("contoso", "web")]
        );
        assert!(any_repo.unchecked[0].contains("repository"));
        for nothing in ["/**", "/*/_apis/**", "/_apis/connectionData"] {
            let nothing = plan(&rule(&["GET"], nothing));
            assert!(nothing.questions.is_empty(), "{nothing:?}");
            assert_eq!(nothing.unchecked.len(), 1, "{nothing:?}");
        }
        let legacy = plan(&on("*.visualstudio.com", &["GET"], "/**"));
        assert!(legacy.questions.is_empty());
        assert!(legacy.unchecked[0].contains("host name"), "{legacy:?}");
        let vsrm = plan(&on("vsrm.dev.azure.com", &["GET"], "/fabrikam/**"));
        assert_eq!(vsrm.questions, vec![org("fabrikam")]);
        assert!(vsrm.writes.is_empty());
    }
}
