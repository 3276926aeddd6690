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

/// A derived value is reported once, at the field the user wrote: a bad name is not reported a
/// second time as the namespace it defaults.
#[test]
fn a_bad_name_is_reported_once_at_metadata_name() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: Bad_Name}\nspec:\n  redis: {}\n",
    )
    .unwrap();
    let (code, out, _) = bssctl(
        &["validate", bad.to_str().unwrap(), "-o", "json"],
        tmp.path(),
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let diags = v["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 1, "{out}");
    assert_eq!(diags[0]["path"], "metadata.name");
    assert_eq!(diags[0]["location"]["line"], 3);
    let col = "metadata: {name: Bad_Name}".find("Bad_Name").unwrap() + 1;
    assert_eq!(diags[0]["location"]["column"], col);
    assert!(diags[0]["hint"].as_str().unwrap().contains("lowercase"));
    assert!(!out.contains("namespace"), "{out}");
    // An explicit bad namespace is still its own error.
    std::fs::write(
        &bad,
        "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: ok, namespace: Bad_Ns}\nspec:\n  redis: {}\n",
    )
    .unwrap();
    let (code, _, err) = bssctl(&["validate", bad.to_str().unwrap()], tmp.path());
    assert_eq!(code, 1);
    let col = "metadata: {name: ok, namespace: Bad_Ns}"
        .find("Bad_Ns")
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("bad.yaml:3:{col}")) && err.contains("metadata.namespace"),
        "{err}"
    );
}

/// Unknown references get a "did you mean" like unknown fields do.
#[test]
fn unknown_references_suggest_the_close_name() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("refs.yaml");
    let text = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata: {name: refs}
spec:
  envoy:
    listeners:
      - name: ingress
        port: 15006
        routes: [{prefix: /api/, cluster: backendd}]
  prometheus: {}
  alerts:
    rules:
      - {alert: A, expr: up == 0, severity: critcal}
";
    std::fs::write(&f, text).unwrap();
    let (code, _, err) = bssctl(&["validate", f.to_str().unwrap()], tmp.path());
    assert_eq!(code, 1, "{err}");
    let at = |needle: &str| {
        let (i, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .unwrap();
        format!("refs.yaml:{}:{}", i + 1, line.find(needle).unwrap() + 1)
    };
    // No backend in this topology: the hint still names the close cluster and says how it exists.
    assert!(err.contains(&at("backendd")), "{err}");
    assert!(
        err.contains("did you mean `backend`? (the `backend` cluster exists when the topology has `backend: {}`)"),
        "{err}"
    );
    assert!(err.contains(&at("critcal")), "{err}");
    assert!(err.contains("did you mean `critical`?"), "{err}");
}

/// portOffset shifts written ports too; a port pushed past 65535 is reported at the field with
/// the arithmetic.
#[test]
fn port_offset_applies_to_written_ports_and_reports_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("off.yaml");
    std::fs::write(
        &f,
        "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: off}\nspec:\n  runtime: {portOffset: 1000}\n  redis: {port: 65000}\n",
    )
    .unwrap();
    let (code, _, err) = bssctl(&["validate", f.to_str().unwrap()], tmp.path());
    assert_eq!(code, 1);
    assert!(err.contains("off.yaml:6:17"), "{err}");
    assert!(err.contains("65000 + portOffset 1000 = 66000"), "{err}");
    // Two written ports that collide only after the shift are still a clash.
    std::fs::write(
        &f,
        "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: off}\nspec:\n  runtime: {portOffset: 10}\n  redis: {port: 7000}\n  prometheus: {port: 7000}\n",
    )
    .unwrap();
    let (code, _, err) = bssctl(&["validate", f.to_str().unwrap()], tmp.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("port 7010 of prometheus is already used by redis"),
        "{err}"
    );
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = bssctl(&["completions", shell], tmp.path());
        assert_eq!(code, 0, "{err}");
        for word in [
            "validate",
            "apply",
            "switchover",
            "completions",
            "state-dir",
        ] {
            assert!(out.contains(word), "{shell} completion lacks {word}");
        }
    }
    // The bash script is valid bash and defines the completion function.
    let (_, out, _) = bssctl(&["completions", "bash"], tmp.path());
    let script = tmp.path().join("bssctl.bash");
    std::fs::write(&script, &out).unwrap();
    let check = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p bssctl", script.display()))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("bssctl"));
    let (code, _, err) = bssctl(&["completions", "powershell"], tmp.path());
    assert_eq!(code, 2, "{err}");
}

#[test]
fn version_names_the_git_revision_and_the_tools_found() {
    let tmp = tempfile::tempdir().unwrap();
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(support::repo_root())
        .output()
        .unwrap();
    let rev = String::from_utf8_lossy(&rev.stdout).trim().to_string();
    let (code, short, _) = bssctl(&["-V"], tmp.path());
    assert_eq!(code, 0);
    assert_eq!(
        short.trim(),
        format!("bssctl {} (git {rev})", env!("CARGO_PKG_VERSION"))
    );
    let (code, long, _) = bssctl(&["--version"], tmp.path());
    assert_eq!(code, 0);
    assert!(long.starts_with(short.trim()), "{long}");
    // Each tool found is listed with the first line of its own version output.
    for (tool, flag) in [
        ("postgres", "--version"),
        ("haproxy", "-v"),
        ("promtool", "--version"),
    ] {
        let path = support::require_tool(tool);
        let own = Command::new(&path).arg(flag).output().unwrap();
        let first = String::from_utf8_lossy(&own.stdout)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap()
            .to_string();
        let line = long
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{tool} ")))
            .unwrap_or_else(|| panic!("no line for {tool}:\n{long}"));
        let first = first.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(line.ends_with(&first), "{line} vs {first}");
    }
}

/// A dangerous state directory from the command line is refused too, without a file position
/// (it is not in the file).
#[test]
fn a_dangerous_state_dir_option_is_refused() {
    let root = support::repo_root().join("topology.yaml");
    for dir in ["/", "/etc", "/usr/lib"] {
        let (code, _, err) = bssctl(&["validate", root.to_str().unwrap()], Path::new(dir));
        assert_eq!(code, 1, "{dir}: {err}");
        assert!(
            err.starts_with("error: the state directory given by --state-dir"),
            "{err}"
        );
        assert!(!err.contains("topology.yaml:"), "{err}");
        assert!(err.contains("hint:"), "{err}");
    }
}
