//! git's push, judged as what it is: the advertisement request that starts a push is judged as
//! the push itself.

use http::Method;

use super::path::{Segments, segment_eq};

/// `…/info/refs?service=git-receive-pack` is the first step of a push: judge it as the
/// `POST …/git-receive-pack` it announces, so a read-only client fails before uploading a pack.
pub(super) fn push_preflight<'a>(
    path: &Segments<'a>,
    method: &Method,
    query: Option<&str>,
) -> Option<Segments<'a>> {
    let items = path.as_slice();
    let [.., info, refs] = items else { return None };
    if method != Method::GET
        || !segment_eq(info, true, "info")
        || !segment_eq(refs, true, "refs")
        || !query.is_some_and(announces_receive_pack)
    {
        return None;
    }
    let mut push = Segments {
        items: path.items,
        len: path.len - 1,
        escaped: path.escaped,
    };
    push.items[push.len - 1] = "git-receive-pack";
    push.escaped &= !(1 << (push.len - 1));
    Some(push)
}

fn announces_receive_pack(query: &str) -> bool {
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        segment_eq(name, true, "service") && segment_eq(value, true, "git-receive-pack")
    })
}
