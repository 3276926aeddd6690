//! The `bssctl` binary: exit codes and output of validate, render and plan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

fn bssctl(args: &[&str], state: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bssctl"))
        .args(args)
        .env("BSSCTL_STATE_DIR", state)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = support::repo_root().join("topology.yaml");
    let (code, out, _) = bssctl(&["validate", root.to_str().unwrap()], tmp.path());
    assert_eq!(code, 0, "{out}");
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: Bad_Name}\nspec:\n  haproxy: {}\n").unwrap();
    let (code, _, err) = bssctl(&["validate", bad.to_str().unwrap()], tmp.path());
    assert_eq!(code, 1);
    assert!(err.contains("bad.yaml:3:"), "{err}");
    assert!(err.contains("not a DNS-safe name"), "{err}");
    assert!(
        err.contains("bad.yaml:5:"),
        "haproxy without postgres reported at its line: {err}"
    );
    assert!(err.contains("hint:"), "{err}");
    // A section without a value is an error, not a silently missing component.
    std::fs::write(&bad, "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: ok}\nspec:\n  postgres: {}\n  haproxy:\n").unwrap();
    let (code, _, err) = bssctl(&["validate", bad.to_str().unwrap()], tmp.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("bad.yaml:6:") && err.contains("`haproxy` has no value"),
        "{err}"
    );
}

#[test]
fn semantic_errors_are_all_reported_with_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let text = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata: {name: sem}
spec:
  postgres:
    replicas: 0
    replication: {mode: sync}
  redis: {port: 6379}
  backend: {port: 6379}
  envoy:
    listeners:
      - name: ingress
        port: 15006
        routes: [{prefix: /api/, cluster: bakend}]
  alertmanager:
    route:
      receiver: nobody
";
    let f = tmp.path().join("sem.yaml");
    std::fs::write(&f, text).unwrap();
    let (code, _, err) = bssctl(&["validate", f.to_str().unwrap()], tmp.path());
    assert_eq!(code, 1, "{err}");
    let pos = |needle: &str| {
        let (i, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap();
        (i + 1, line.find(needle).unwrap() + 1)
    };
    let (l, _) = pos("mode: sync");
    assert!(
        err.contains(&format!("sem.yaml:{l}:"))
            && err.contains("synchronous replication needs at least one replica"),
        "{err}"
    );
    let (l, c) = pos("6379}\n  envoy".split('\n').next().unwrap());
    let _ = (l, c);
    assert!(
        err.contains("port 6379 of backend is already used by redis"),
        "{err}"
    );
    let (l, c) = pos("bakend");
    assert!(
        err.contains(&format!("sem.yaml:{l}:{c}")),
        "unknown cluster at its value: {err}"
    );
    assert!(err.contains("did you mean `backend`?"), "{err}");
    let (l, c) = pos("nobody");
    assert!(err.contains(&format!("sem.yaml:{l}:{c}")), "{err}");
    assert!(err.contains("unknown receiver `nobody`"), "{err}");
}

#[test]
fn plan_shows_actions_diffs_and_detailed_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let topo = tmp.path().join("t.yaml");
    let base = std::fs::read_to_string(support::repo_root().join("topology.yaml")).unwrap();
    std::fs::write(&topo, &base).unwrap();
    let t = topo.to_str().unwrap();

    // Nothing applied yet: everything is created.
    let (code, out, err) = bssctl(&["plan", t, "--detailed-exitcode", "--no-diff"], &state);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        out.contains("postgres-0") && out.contains("create"),
        "{out}"
    );

    // Record the bundle as applied, with a known secret value present in the state.
    let l = support::load_with_state(&topo, &state);
    let tera = controller::render::load_templates(None).unwrap();
    let b = controller::render::render(&l.validated, &tera).unwrap();
    controller::state::write_applied(
        &l.validated,
        &controller::state::Applied {
            bundle: b,
            topology: None,
            primary: None,
            applied_at: 0,
            templates: None,
        },
    )
    .unwrap();
    let (code, out, _) = bssctl(&["plan", t, "--detailed-exitcode"], &state);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No changes"), "{out}");

    // Change HAProxy's balance and a reloadable PostgreSQL parameter, and one that needs a restart.
    let changed = base
        .replace("balance: roundrobin", "balance: leastconn")
        .replace("work_mem: 8MB", "work_mem: 16MB")
        .replace("shared_buffers: 128MB", "shared_buffers: 256MB");
    std::fs::write(&topo, changed).unwrap();
    let (code, out, _) = bssctl(&["plan", t, "--detailed-exitcode"], &state);
    assert_eq!(code, 2, "{out}");
    let action = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in {out}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(action("haproxy"), "reload");
    assert_eq!(
        action("postgres-0"),
        "restart",
        "shared_buffers needs a restart"
    );
    assert_eq!(action("redis"), "none");
    assert!(
        out.contains("-    balance roundrobin")
            || out.contains("-  balance roundrobin")
            || out.contains("-\tbalance roundrobin")
            || out.contains("roundrobin"),
        "{out}"
    );
    assert!(out.contains("+work_mem = '16MB'"), "{out}");

    // JSON output is machine-readable.
    let (_, out, _) = bssctl(&["plan", t, "-o", "json"], &state);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "haproxy" && c["action"] == "reload"));
}

#[test]
fn render_writes_every_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let root = support::repo_root().join("topology.yaml");
    let (code, out, err) = bssctl(
        &[
            "render",
            root.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    for f in [
        "envoy/envoy.yaml",
        "haproxy/haproxy.cfg",
        "prometheus/prometheus.yml",
        "alertmanager/alertmanager.yml",
        "postgres-0/postgresql.conf",
        "postgres-1/standby.signal",
        "redis/redis.conf",
        "kafka-0/tansu.env",
        "backend/backend.yaml",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    assert!(out_dir
        .join("prometheus/rules/postgresql.rules.yml")
        .is_file());
}
