//! Issue 15 end to end: two copies of the root topology, the second with only `metadata.name` and
//! `spec.runtime.portOffset` changed, applied side by side and both healthy; live progress on a
//! pseudo-terminal (`script`) and plain lines without one; a no-op apply keeps the agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A copy of the root topology in a temp dir, destroyed on drop.
struct Copy {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl Copy {
    fn new(name: &str, offset: Option<u16>) -> Copy {
        let root = std::fs::read_to_string(support::repo_root().join("topology.yaml")).unwrap();
        let mut text = root.replacen("  name: bss-dev\n", &format!("  name: {name}\n"), 1);
        assert_ne!(
            text, root,
            "the root topology names its environment `bss-dev`"
        );
        if let Some(o) = offset {
            let before = text.clone();
            text = text.replacen(
                "  runtime:\n",
                &format!("  runtime:\n    portOffset: {o}\n"),
                1,
            );
            assert_ne!(text, before, "the root topology has a runtime section");
        }
        let dir = tempfile::Builder::new()
            .prefix("bssctl-two-")
            .tempdir()
            .unwrap();
        let file = dir.path().join("topology.yaml");
        std::fs::write(&file, text).unwrap();
        Copy { _dir: dir, file }
    }

    fn bssctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_bssctl"))
            .args(args)
            .arg(&self.file)
            .env_remove("BSSCTL_STATE_DIR")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `bssctl apply` on a pseudo-terminal (util-linux `script`): what the terminal showed.
    fn apply_on_a_tty(&self) -> (i32, String) {
        let cmd = format!(
            "{} apply {}",
            shell_quote(Path::new(env!("CARGO_BIN_EXE_bssctl"))),
            shell_quote(&self.file)
        );
        let out = Command::new("script")
            .args(["-q", "-e", "-c", &cmd, "/dev/null"])
            .env("TERM", "xterm")
            .env_remove("BSSCTL_STATE_DIR")
            .output()
            .expect("`script` (util-linux) gives bssctl a pseudo-terminal");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn agent_pid(&self) -> Option<u64> {
        let (code, out, err) = self.bssctl(&["status", "-o", "json"]);
        assert_eq!(code, 0, "status failed:\n{out}\n{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["agent_pid"].as_u64()
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_bssctl"))
            .arg("destroy")
            .arg(&self.file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Every port an environment's processes listen on, from `status -o json`.
fn ports(c: &Copy) -> Vec<u64> {
    let (_, out, _) = c.bssctl(&["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["components"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_u64())
        .collect()
}

#[test]
fn the_root_topology_twice_side_by_side_with_live_and_plain_progress() {
    for t in [
        "postgres",
        "pg_basebackup",
        "haproxy",
        "envoy",
        "tansu",
        "redis-server",
        "prometheus",
        "prometheus-alertmanager",
        "bss-backend",
    ] {
        support::require_tool(t);
    }
    // Offsets under which every default port is free: the copies differ in nothing else. Other
    // test processes on this machine pick offsets too; one that takes ports between our check
    // and the apply makes the preflight refuse (nothing started), and the copy moves on.
    let claimed = |out: &str| out.contains("failed preflight checks") && out.contains("in use");
    let mut tries = 0;
    let (a, oa, tty) = loop {
        let o = support::free_offset();
        let a = Copy::new("bss-two-a", Some(o));
        // A on a terminal: a status line redrawn in place (carriage return, erase line,
        // spinner, elapsed time) while a long step such as a replica's base backup runs.
        let (code, tty) = a.apply_on_a_tty();
        tries += 1;
        if code != 0 && claimed(&tty) && tries < 4 {
            continue;
        }
        assert_eq!(code, 0, "apply of A failed:\n{tty}");
        break (a, o, tty);
    };
    assert!(tty.contains("\r\x1b[2K"), "no live status line:\n{tty}");
    let status_lines: Vec<&str> = tty
        .split("\r\x1b[2K")
        .filter(|s| s.starts_with(['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏']))
        .collect();
    assert!(
        status_lines.iter().any(|l| l.contains("basebackup")),
        "no live line for the base backup:\n{status_lines:?}"
    );
    assert!(
        status_lines.iter().any(|l| l.trim_end().ends_with('s')),
        "no elapsed time: {status_lines:?}"
    );
    assert!(
        tty.lines()
            .any(|l| l.contains("postgres-1") && l.contains("basebackup") && l.contains(" ok ")),
        "no finished base backup line:\n{tty}"
    );

    // B through a pipe: plain lines, one per step, no control characters.
    let mut tries = 0;
    let (b, ob, err) = loop {
        let o = support::free_offset();
        if o == oa {
            continue;
        }
        let b = Copy::new("bss-two-b", Some(o));
        let (code, out, err) = b.bssctl(&["apply"]);
        tries += 1;
        if code != 0 && claimed(&err) && tries < 4 {
            continue;
        }
        assert_eq!(code, 0, "apply of B failed:\n{out}\n{err}");
        break (b, o, err);
    };
    assert!(
        !err.contains('\r') && !err.contains('\x1b'),
        "control characters:\n{err:?}"
    );
    for line in err.lines().filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with('[') || line.starts_with("applied ") || line.starts_with("  "),
            "not a step line: {line:?}"
        );
    }
    assert!(err.contains("basebackup  ok"), "{err}");

    // Both run and are healthy, on disjoint ports shifted by their offsets.
    for c in [&a, &b] {
        let (code, out, err) = c.bssctl(&["status"]);
        assert_eq!(code, 0, "status:\n{out}\n{err}");
    }
    let (pa, pb) = (ports(&a), ports(&b));
    assert!(pa.contains(&(5432 + u64::from(oa))), "{pa:?}");
    assert!(pb.contains(&(5432 + u64::from(ob))), "{pb:?}");
    assert!(pa.iter().all(|p| !pb.contains(p)), "{pa:?} / {pb:?}");

    // A no-op apply keeps the running agent: same pid, and says so.
    let before = a.agent_pid().expect("A's agent runs");
    let (code, out, err) = a.bssctl(&["apply"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("0 component(s) changed"), "{err}");
    assert!(err.contains("agent") && err.contains("keep"), "{err}");
    assert_eq!(
        a.agent_pid(),
        Some(before),
        "the agent was replaced:\n{err}"
    );
    // `-o json` streams events, no status line.
    let (code, out, _) = a.bssctl(&["apply", "-o", "json"]);
    assert_eq!(code, 0);
    for line in out.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
    }
    assert_eq!(a.agent_pid(), Some(before));
}

/// Without an offset and with one, every port the file writes is shifted: validate, render and
/// plan agree (plan is computed from the same rendered files).
#[test]
fn port_offset_shifts_explicit_ports_in_render() {
    let plain = Copy::new("bss-off-a", None);
    let shifted = Copy::new("bss-off-b", Some(1000));
    let out = tempfile::tempdir().unwrap();
    for (c, dir) in [(&plain, "a"), (&shifted, "b")] {
        let (code, o, e) = c.bssctl(&["render", "--out", out.path().join(dir).to_str().unwrap()]);
        assert_eq!(code, 0, "{o}\n{e}");
    }
    let read = |d: &str, f: &str| std::fs::read_to_string(out.path().join(d).join(f)).unwrap();
    assert!(read("a", "postgres-0/postgresql.conf").contains("port = 5432\n"));
    assert!(read("b", "postgres-0/postgresql.conf").contains("port = 6432\n"));
    assert!(read("b", "postgres-1/postgresql.conf").contains("port = 6433\n"));
    let hb = read("b", "haproxy/haproxy.cfg");
    assert!(
        hb.contains(":6436\n") && hb.contains(":6435\n") && hb.contains(":9084\n"),
        "{hb}"
    );
    assert!(hb.contains("127.0.0.1:6432 check"), "{hb}");
    assert!(read("b", "redis/redis.conf").contains("port 7379\n"));
    let envoy = read("b", "envoy/envoy.yaml");
    assert!(envoy.contains("port_value: 16006") && envoy.contains("port_value: 16000"));
    // plan shows the same ports (it diffs the rendered files), and `bssctl schema` says so.
    let (code, plan, err) = shifted.bssctl(&["plan"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        plan.contains("+port = 6432") && plan.contains("+port = 6434"),
        "{plan}"
    );
    let schema = Command::new(env!("CARGO_BIN_EXE_bssctl"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(schema.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    let doc = schema["definitions"]["RuntimeSpec"]["properties"]["portOffset"]["description"]
        .as_str()
        .unwrap();
    assert!(
        doc.contains("written in this file as well as the defaults"),
        "{doc}"
    );
    let prom = read("b", "prometheus/prometheus.yml");
    for p in ["10100", "10187", "10188", "10189", "10121", "9080", "8070"] {
        assert!(prom.contains(&format!("127.0.0.1:{p}")), "{p} in\n{prom}");
    }
}
