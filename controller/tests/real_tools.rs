//! Every rendered file of the root topology and of every fixture, judged by the real tools
//! (`bssctl check`): envoy, haproxy, promtool, amtool, and real postgres/redis servers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

#[test]
fn every_fixture_passes_the_real_tools() {
    for t in [
        "envoy",
        "haproxy",
        "promtool",
        "amtool",
        "postgres",
        "initdb",
        "pg_ctl",
        "redis-server",
    ] {
        support::require_tool(t);
    }
    let mut failures = Vec::new();
    for (name, path) in support::valid_topologies() {
        let scratch = tempfile::Builder::new()
            .prefix("bssctl-test-check-")
            .tempdir()
            .unwrap();
        let l = support::load_with_state(&path, scratch.path());
        let tera = controller::render::load_templates(None).unwrap();
        let b = controller::render::render(&l.validated, &tera).unwrap();
        let results = controller::check::check(&l.validated, &b);
        assert!(!results.is_empty(), "{name}: nothing was checked");
        for r in results {
            if !r.ok {
                failures.push(format!(
                    "{name}: {} {} via {}:\n{}",
                    r.component, r.file, r.tool, r.output
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
