//! Feed rules: `{ feed = "contoso/internal" }` admits the calls of one Azure Artifacts feed, made
//! by its name or by the GUIDs Azure DevOps hands out for it in service indexes and download
//! links (`/{org}/{projectId}/_packaging/{feedId}/...`), and no other feed's. The GUIDs are
//! learned at run time (see `feeds`); until then, only the name is admitted.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::host::RequestHost;
use super::path::{Segments, segment_eq};
use super::pattern::PatternError;

/// The hosts feeds are served from: packages, and the Feed Management API.
const PACKAGES: &str = "pkgs.dev.azure.com";
const MANAGEMENT: &str = "feeds.dev.azure.com";

/// A feed named in a rule, and its GUIDs once they are known.
#[derive(Clone)]
pub struct Feed {
    org: Box<str>,
    project: Option<Box<str>>,
    name: Box<str>,
    ids: Arc<ArcSwapOption<FeedIds>>,
}

/// What Azure DevOps calls the feed (and its project) by in links.
#[derive(Debug, PartialEq, Eq)]
pub struct FeedIds {
    pub feed: Box<str>,
    pub project: Option<Box<str>>,
}

impl Feed {
    /// `org/feed` for an organization's feed, `org/project/feed` for a project's.
    pub fn parse(text: &str) -> Result<Feed, PatternError> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |part: &&str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !parts.iter().all(valid) {
            return Err(PatternError::new(format!(
                "feed `{text}`: write it as org/feed or org/project/feed"
            )));
        }
        let (org, project, name) = match parts.as_slice() {
            [org, name] => (org, None, name),
            [org, project, name] => (org, Some(project), name),
            _ => {
                return Err(PatternError::new(format!(
                    "feed `{text}`: write it as org/feed or org/project/feed"
                )));
            }
        };
        Ok(Feed {
            org: (*org).into(),
            project: project.map(|p| (*p).into()),
            name: (*name).into(),
            ids: Arc::default(),
        })
    }

    pub fn org(&self) -> &str {
        &self.org
    }

    /// The Feed Management API's path for this feed, on `feeds.dev.azure.com`.
    pub fn lookup_path(&self) -> String {
        match &self.project {
            Some(project) => format!(
                "/{}/{project}/_apis/packaging/feeds/{}",
                self.org, self.name
            ),
            None => format!("/{}/_apis/packaging/feeds/{}", self.org, self.name),
        }
    }

    /// Where the resolver puts the GUIDs it learns.
    pub fn ids(&self) -> &Arc<ArcSwapOption<FeedIds>> {
        &self.ids
    }

    /// `/{org}[/{project}]/_packaging/{feed}/...` on the package host, and
    /// `/{org}[/{project}]/_apis/packaging/[feeds/]{feed}[/...]` on either, where each of project
    /// and feed is its name or its GUID.
    pub fn admits(&self, host: &RequestHost<'_>, path: &Segments<'_>) -> bool {
        let packages = host.name.eq_ignore_ascii_case(PACKAGES);
        if host.is_default || !(packages || host.name.eq_ignore_ascii_case(MANAGEMENT)) {
            return false;
        }
        let ids = self.ids.load();
        let segments = path.as_slice();
        let is = |i: usize, literal: &str| {
            segments
                .get(i)
                .is_some_and(|s| segment_eq(s, path.escaped >> i & 1 != 0, literal))
        };
        let names =
            |i: usize, name: &str, id: Option<&str>| is(i, name) || id.is_some_and(|id| is(i, id));
        if !is(0, &self.org) {
            return false;
        }
        let rest = match &self.project {
            None => 1,
            Some(project) => {
                let id = ids.as_ref().and_then(|ids| ids.project.as_deref());
                if !names(1, project, id) {
                    return false;
                }
                2
            }
        };
        let feed = |i: usize| names(i, &self.name, ids.as_ref().map(|ids| &*ids.feed));
        (packages && is(rest, "_packaging") && feed(rest + 1))
            || (is(rest, "_apis")
                && is(rest + 1, "packaging")
                && (feed(rest + 2) || (is(rest + 2, "feeds") && feed(rest + 3))))
    }
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("org", &self.org)
            .field("project", &self.project)
            .field("name", &self.name)
            .field("ids", &self.ids.load())
            .finish()
    }
}

impl fmt::Display for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.project {
            Some(project) => write!(f, "{}/{project}/{}", self.org, self.name),
            None => write!(f, "{}/{}", self.org, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEED_ID: &str = "0f1e2d3c-4b5a-4697-8899-aabbccddeeff";
    const PROJECT_ID: &str = "6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c";

    fn admits(feed: &Feed, host: &str, path: &str) -> bool {
        let host = RequestHost {
            name: host,
            is_default: false,
        };
        feed.admits(&host, &Segments::parse(path).expect("path"))
    }

    #[test]
    fn a_feed_is_reached_by_name_and_once_known_by_its_guids_and_no_other_feed() {
        let feed = Feed::parse("contoso/web/internal").expect("feed");
        assert_eq!(
            feed.lookup_path(),
            "/contoso/web/_apis/packaging/feeds/internal"
        );
        let by_name = "/contoso/web/_packaging/internal/pypi/simple/";
        let by_ids = format!("/contoso/{PROJECT_ID}/_packaging/{FEED_ID}/nuget/v3/flat2/x");
        assert!(admits(&feed, PACKAGES, by_name));
        assert!(admits(
            &feed,
            PACKAGES,
            "/CONTOSO/Web/_packaging/Internal/npm/registry/x"
        ));
        assert!(admits(
            &feed,
            MANAGEMENT,
            "/contoso/web/_apis/packaging/feeds/internal"
        ));
        assert!(
            !admits(&feed, PACKAGES, &by_ids),
            "not before the GUIDs are known"
        );
        feed.ids().store(Some(Arc::new(FeedIds {
            feed: FEED_ID.into(),
            project: Some(PROJECT_ID.into()),
        })));
        assert!(admits(&feed, PACKAGES, &by_ids));
        assert!(admits(
            &feed,
            PACKAGES,
            &format!("/contoso/web/_apis/packaging/{FEED_ID}/x")
        ));
        for other in [
            "/contoso/web/_packaging/other/pypi/simple/",
            "/contoso/web/_packaging/0f1e2d3c-0000-4697-8899-aabbccddeeff/x",
            "/contoso/other/_packaging/internal/x",
            "/fabrikam/web/_packaging/internal/x",
            "/contoso/web/_git/internal",
            "/contoso/web",
        ] {
            assert!(!admits(&feed, PACKAGES, other), "{other}");
        }
        assert!(
            !admits(&feed, "vssps.dev.azure.com", by_name),
            "only the feeds' hosts"
        );
        assert!(!feed.admits(
            &RequestHost::DEFAULT,
            &Segments::parse(by_name).expect("path")
        ));
    }

    #[test]
    fn feed_names_are_checked() {
        for bad in [
            "contoso",
            "contoso/",
            "/internal",
            "a/b/c/d",
            "contoso/in ternal",
            "contoso/**",
        ] {
            assert!(Feed::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Feed::parse("contoso/internal").expect("feed").to_string(),
            "contoso/internal"
        );
    }
}
