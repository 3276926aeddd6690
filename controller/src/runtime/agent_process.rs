//! The controller agent as a local process: started detached by `apply` (its own process group,
//! output to `logs/agent.log`), recorded in `run/agent.json` so `destroy` finds it, found and
//! stopped again. The agent itself (`engine::agent`) knows nothing of this.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::process::{self, Record};
use crate::engine::agent::AGENT;

/// Records the calling process as the environment's agent (an agent started by hand or by a
/// test), unless a live one is recorded.
pub fn register_self(root: &Path) {
    let run_dir = root.join("run").display().to_string();
    if process::read_record(&run_dir, AGENT).is_some_and(|r| process::alive(&r)) {
        return;
    }
    let me = std::process::id();
    let _ = process::write_record(
        &run_dir,
        &Record {
            component: AGENT.into(),
            pid: me,
            start_ticks: process::start_ticks(me).unwrap_or(0),
            hash: String::new(),
            epoch: 0,
            started_at: process::now_secs(),
            restarts: 0,
            pgid: process::pgid(me).unwrap_or(me),
            kind: None,
        },
    );
}

/// Starts the agent detached (its own process group, output to logs/agent.log) and waits until
/// its API answers.
pub fn start_detached(root: &Path, agent_port: u16) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("failed to find bssctl itself: {e}"))?;
    let log = root.join("logs").join("agent.log");
    let root_s = root.display().to_string();
    let child = process::spawn(process::Spawn {
        component: AGENT,
        program: exe,
        args: vec!["agent".into(), "--root".into(), root_s.clone()],
        env: vec![(
            "BSSCTL_LOG".into(),
            std::env::var("BSSCTL_LOG").unwrap_or_else(|_| "info".into()),
        )],
        log,
        env_root: &root_s,
        user: None,
        cwd: Some(root.to_path_buf()),
    })
    .map_err(|e| e.to_string())?;
    let pid = child.pid;
    let run = root.join("run").display().to_string();
    let rec = Record {
        component: AGENT.into(),
        pid,
        start_ticks: process::start_ticks(pid).unwrap_or(0),
        hash: String::new(),
        epoch: 0,
        started_at: process::now_secs(),
        restarts: 0,
        pgid: child.pgid,
        kind: None,
    };
    process::write_record(&run, &rec).map_err(|e| e.to_string())?;
    let start = Instant::now();
    // Probed at 10 ms, doubling to 100 ms: the agent answers within a few tens of ms, and a
    // fixed 50 ms pause cost every changing apply up to 50 ms.
    let mut pace = crate::engine::health::Pace::default();
    while start.elapsed() < Duration::from_secs(10) {
        if crate::probe::http_ok(
            &format!("http://127.0.0.1:{agent_port}/health"),
            Duration::from_millis(500),
        ) {
            return Ok(pid);
        }
        if !process::alive(&rec) {
            return Err(format!(
                "the agent exited; see {}/logs/agent.log",
                root.display()
            ));
        }
        pace.sleep();
    }
    Err(format!(
        "the agent did not answer on 127.0.0.1:{agent_port} within 10s"
    ))
}

/// Stops a running agent of this environment, if any. Nothing is signalled under a root bssctl
/// cannot prove it owns (a forged `run/agent.json` must not make root kill an arbitrary group).
pub fn stop(root: &Path) {
    if super::owned_root::verify_owned(root).is_err() {
        return;
    }
    let run = root.join("run").display().to_string();
    if let Some(r) = process::read_record(&run, AGENT) {
        if process::alive(&r) {
            process::stop_group(r.pid, Duration::from_secs(5));
        }
        process::remove_record(&run, AGENT);
    }
}

pub fn running(root: &Path) -> Option<u32> {
    let run = root.join("run").display().to_string();
    process::read_record(&run, AGENT)
        .filter(process::alive)
        .map(|r| r.pid)
}

/// Root of an environment from the validated topology.
pub fn root_of(t: &crate::topology::ValidatedTopology) -> PathBuf {
    PathBuf::from(&t.paths.root)
}
