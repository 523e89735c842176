//! Cost of judging one request against a client's allowlist: path checks plus matching against
//! 100 rules, the worst case being a path that matches none (every rule is tried).
//!
//!     cargo bench --bench allowlist

use std::hint::black_box;

use ado_auth_proxy::policy::{Allowlist, Rule, Segments};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;

fn hundred_rules() -> Allowlist {
    let mut rules = Vec::new();
    for i in 0..98 {
        let methods = vec!["GET".to_string(), "POST".to_string()];
        rules.push(
            Rule::compile(&methods, &format!("/org{i}/project/_git/repo{i}/**")).expect("rule"),
        );
    }
    rules.push(Rule::compile(&["GET".to_string()], "/contoso/*/_apis/build/builds").expect("rule"));
    rules.push(
        Rule::compile(&["GET".to_string()], "/contoso/**/_apis/wit/workitems").expect("rule"),
    );
    Allowlist::new(rules)
}

fn judge(list: &Allowlist, method: &Method, target: &str) -> Option<usize> {
    let (path, query) = target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)));
    let segments = Segments::parse(path).ok()?;
    list.judge(method, &segments, query)
}

fn bench(c: &mut Criterion) {
    let list = hundred_rules();
    let cases = [
        (
            "first_rule",
            "/org0/project/_git/repo0/info/refs?service=git-upload-pack",
        ),
        (
            "last_rule_double_star",
            "/Contoso/a/b/c/_apis/wit/workitems?api-version=7.1",
        ),
        ("no_match", "/fabrikam/web/_git/web/git-upload-pack"),
        (
            "push_preflight_no_match",
            "/org97/project/_git/repo96/info/refs?service=git-receive-pack",
        ),
    ];
    for (name, target) in cases {
        c.bench_function(&format!("allowlist_100_rules/{name}"), |b| {
            b.iter(|| judge(black_box(&list), black_box(&Method::GET), black_box(target)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
