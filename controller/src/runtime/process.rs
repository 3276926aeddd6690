//! Processes of the local runtime: starting them detached (own process group, output to a log
//! file, a marker in their environment), recording them (`run/<component>.json`), telling whether
//! a recorded process is still the one we started, stopping them, and finding who holds a port.
//!
//! It knows nothing about what the components are; `local` decides what to start and when.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Every process bssctl starts carries `BSSCTL_ENV=<environment root>` in its environment, so the
/// whole tree (including workers and backends forked by the components) can be found again.
pub const ENV_MARKER: &str = "BSSCTL_ENV";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("failed to start {component} ({program}): {source}")]
    Spawn {
        component: String,
        program: String,
        source: std::io::Error,
    },
    #[error("failed to open log {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
}

/// What we know about a process we started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub component: String,
    pub pid: u32,
    /// Start time in clock ticks since boot (/proc/<pid>/stat field 22): guards against pid reuse.
    pub start_ticks: u64,
    /// Hash of the component bundle it was started with.
    pub hash: String,
    /// Envoy hot-restart epoch.
    #[serde(default)]
    pub epoch: u32,
    /// Unix seconds.
    pub started_at: u64,
    #[serde(default)]
    pub restarts: u32,
    /// Process group (the component and whatever it forks).
    #[serde(default)]
    pub pgid: u32,
    /// What the component is (decides how it is stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::render::Kind>,
}

/// Every record in the run directory (components started by any apply, finished or not).
pub fn all_records(run_dir: &str) -> Vec<Record> {
    let Ok(rd) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut v: Vec<Record> = rd
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|s| serde_json::from_str(&s).ok())
        .collect();
    v.sort_by(|a, b| a.component.cmp(&b.component));
    v
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn record_path(run_dir: &str, component: &str) -> PathBuf {
    Path::new(run_dir).join(format!("{component}.json"))
}

pub fn read_record(run_dir: &str, component: &str) -> Option<Record> {
    let s = std::fs::read_to_string(record_path(run_dir, component)).ok()?;
    serde_json::from_str(&s).ok()
}

pub fn write_record(run_dir: &str, r: &Record) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(r).unwrap_or_default();
    crate::state::write_atomic(&record_path(run_dir, &r.component), &json, 0o644)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

pub fn remove_record(run_dir: &str, component: &str) {
    let _ = std::fs::remove_file(record_path(run_dir, component));
}

/// Fields of /proc/<pid>/stat after the command name: (state, ppid, start_ticks).
fn stat(pid: u32) -> Option<(char, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] = state (field 3), rest[1] = ppid (4), rest[19] = starttime (22).
    Some((
        f.first()?.chars().next()?,
        f.get(1)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

pub fn start_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.2)
}

/// True when `pid` runs and is the process of the record (same start time), not a zombie.
pub fn alive(r: &Record) -> bool {
    matches!(stat(r.pid), Some((state, _, ticks)) if state != 'Z' && state != 'X' && ticks == r.start_ticks)
}

pub fn pid_alive(pid: u32) -> bool {
    matches!(stat(pid), Some((state, _, _)) if state != 'Z' && state != 'X')
}

/// Sends a signal with kill(1): std has no safe signal API and unsafe code is forbidden here.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Signals a whole process group (never the caller's own).
pub fn signal_group(pgid: u32, sig: &str) -> bool {
    if pgid <= 1 || Some(pgid) == self::pgid(std::process::id()) {
        return false;
    }
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// What to start.
pub struct Spawn<'a> {
    pub component: &'a str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub env_root: &'a str,
    /// Run as this uid/gid (PostgreSQL when bssctl is root).
    pub user: Option<(u32, u32)>,
    pub cwd: Option<PathBuf>,
}

/// A started process: its pid and the process group to signal.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub pid: u32,
    pub pgid: u32,
}

/// Starts a fully detached process: through an intermediate `sh` that exits at once, so the
/// component is not a child of bssctl (Envoy, for one, terminates when its parent exits, and the
/// agent must be restartable without taking components down). The component gets its own process
/// group (Ctrl-C in the terminal does not reach it), stdin closed, output appended to the log.
pub fn spawn(s: Spawn) -> Result<Started, ProcessError> {
    if let Some(d) = s.log.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&s.log)
        .map_err(|source| ProcessError::Log {
            path: s.log.display().to_string(),
            source,
        })?;
    let mut c = Command::new("sh");
    // "$@" = program and arguments; its output goes to the log we opened (sh's stderr), since the
    // component's user may not be allowed to open it. Prints the background pid.
    c.arg("-c")
        .arg(r#""$@" 1>&2 </dev/null & echo $!"#)
        .arg("sh")
        .arg(&s.program)
        .args(&s.args);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .env(ENV_MARKER, s.env_root);
    for (k, v) in &s.env {
        c.env(k, v);
    }
    if let Some(d) = &s.cwd {
        c.current_dir(d);
    }
    if let Some((uid, gid)) = s.user {
        c.uid(uid).gid(gid);
    }
    let spawn_err = |source| ProcessError::Spawn {
        component: s.component.into(),
        program: s.program.display().to_string(),
        source,
    };
    let out = c.output().map_err(spawn_err)?;
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| spawn_err(std::io::Error::other("the launcher did not report a pid")))?;
    // The group is the launcher's (pid of `sh`), which the component keeps after sh exits.
    let pgid = pgid(pid).unwrap_or(pid);
    Ok(Started { pid, pgid })
}

/// Process group of a live process.
pub fn pgid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// One-off tasks (initdb, pg_basebackup, migrations) also carry `BSSCTL_TASK=1`: an apply killed
/// half-way leaves them running, and the next apply ends them before it starts over.
pub const TASK_MARKER: &str = "BSSCTL_TASK";

/// Every live process whose environment carries `BSSCTL_ENV=<root>`.
pub fn processes_of(root: &str) -> Vec<u32> {
    processes_with(root, None)
}

/// Leftover one-off tasks of the environment.
pub fn tasks_of(root: &str) -> Vec<u32> {
    processes_with(root, Some(&format!("{TASK_MARKER}=1")))
}

fn processes_with(root: &str, extra: Option<&str>) -> Vec<u32> {
    let needle = format!("{ENV_MARKER}={root}");
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            let has = |n: &str| env.split(|b| *b == 0).any(|kv| kv == n.as_bytes());
            if has(&needle) && extra.is_none_or(has) && pid_alive(pid) {
                v.push(pid);
            }
        }
    }
    v
}

/// Live members of a process group.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| self::pgid(*pid) == Some(pgid) && pid_alive(*pid))
        .collect()
}

/// TERM, wait up to `grace`, then KILL; the process and its process group (children included).
/// Returns once the whole group is gone, so its ports and files are free.
pub fn stop_group(pid: u32, grace: Duration) {
    // Never our own group (it holds bssctl, and whatever shell or test runner started it).
    let own = pgid(std::process::id());
    let group = pgid(pid).filter(|g| *g > 1 && Some(*g) != own);
    let gone = |pid: u32| !pid_alive(pid) && group.is_none_or(|g| group_members(g).is_empty());
    if gone(pid) {
        return;
    }
    if let Some(g) = group {
        signal_group(g, "TERM");
    }
    signal(pid, "TERM");
    let start = Instant::now();
    while !gone(pid) && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !gone(pid) {
        if let Some(g) = group {
            signal_group(g, "KILL");
        }
        signal(pid, "KILL");
        let start = Instant::now();
        while !gone(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Who listens on 127.0.0.1/0.0.0.0 `port`: "pid 123 (redis-server ...)" where /proc tells.
pub fn port_holder(port: u16) -> Option<String> {
    let mut inodes = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != "0A" {
                continue; // not LISTEN
            }
            let p = cols[1]
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if p == Some(port) {
                inodes.push(cols[9].to_string());
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let rd = std::fs::read_dir("/proc").ok()?;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy();
                if inodes.iter().any(|i| t == format!("socket:[{i}]")) {
                    let cmd = cmdline(pid);
                    let short: String = cmd.chars().take(80).collect();
                    return Some(format!("pid {pid} ({short})"));
                }
            }
        }
    }
    Some("another process (its owner is not visible)".into())
}

/// True when nothing listens on 127.0.0.1:`port` (we can bind it ourselves).
pub fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}
