//! Processes of the local runtime: starting them detached (own process group, output to a log
//! file, no descriptor of bssctl inherited, a marker in their environment), tracking them, recording
//! them (`run/<component>.json`), telling whether a recorded process is still the one we started,
//! stopping them (one process, or every process of a component at once), and finding who holds a
//! port.
//!
//! Tracking does not depend on the environment marker (PostgreSQL overwrites it with its process
//! title): every start gets its own cgroup, `bssctl/<environment>/<component>/g<pgid>`, in
//! the cgroup v2 hierarchy (or v1 `freezer` where that is the only writable one). Whatever a
//! component forks stays in it, whatever session or process group it moves to, so "every process
//! of a member" is a cgroup, killed at once with `cgroup.kill` (or frozen, killed, thawed). Where
//! no cgroup is writable, processes are found by the marker, the recorded process group and the
//! parent tree of recorded processes (start times guard against pid reuse); `tracking` says which.
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
    #[error(
        "failed to kill every process of {component}: {left:?} still alive after {waited_ms}ms"
    )]
    StillAlive {
        component: String,
        left: Vec<u32>,
        waited_ms: u128,
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

/// True when `pid` has exited but its parent has not reaped it yet.
pub fn zombie(pid: u32) -> bool {
    matches!(stat(pid), Some(('Z', _, _)))
}

/// The signal of a name as kill(1) spells it (`TERM`, `KILL`, `HUP`, ...).
fn signal_of(name: &str) -> Option<rustix::process::Signal> {
    use rustix::process::Signal as S;
    Some(match name {
        "TERM" => S::TERM,
        "KILL" => S::KILL,
        "INT" => S::INT,
        "QUIT" => S::QUIT,
        "HUP" => S::HUP,
        "USR1" => S::USR1,
        "USR2" => S::USR2,
        "STOP" => S::STOP,
        "CONT" => S::CONT,
        _ => return None,
    })
}

/// Sends a signal to one process (kill(2) through rustix: no kill(1) spawned per signal).
pub fn signal(pid: u32, sig: &str) -> bool {
    let (Some(p), Some(s)) = (rustix::process::Pid::from_raw(pid as i32), signal_of(sig)) else {
        return false;
    };
    rustix::process::kill_process(p, s).is_ok()
}

/// Signals a whole process group (never the caller's own). SIGKILL reaches every process that
/// the start which created the group left in its cgroup too: PostgreSQL's backends and auxiliary
/// processes run in sessions of their own, so the group alone holds only the postmaster.
pub fn signal_group(pgid: u32, sig: &str) -> bool {
    if pgid <= 1 || Some(pgid) == self::pgid(std::process::id()) {
        return false;
    }
    let mut done = false;
    if sig == "KILL" {
        if let Some(leaf) = find_leaf(|n| leaf_group(n) == Some(pgid)) {
            done = kill_cgroup(&leaf);
            wait_cgroup_empty(&leaf, Duration::from_secs(2));
        }
    }
    let ok = match (rustix::process::Pid::from_raw(pgid as i32), signal_of(sig)) {
        (Some(g), Some(s)) => rustix::process::kill_process_group(g, s).is_ok(),
        _ => false,
    };
    ok || done
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
    // bash rather than sh: dash cannot close descriptors above 9. The launcher waits for one line
    // on stdin (bssctl moves it into the component's cgroup meanwhile, so nothing it forks can
    // escape), closes every descriptor but 0-2 (a lock or socket bssctl inherited must not be held
    // by the stack), then starts "$@" in the background and prints its pid. Its output goes to
    // the log we opened (sh's stderr), since the component's user may not be allowed to open it.
    // No redirection on the closing loop: bash saves fd 2 above 9 for it, the loop closes that
    // copy, and the restore leaves stderr pointing nowhere (every component's log stayed empty).
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(LAUNCHER)
        .arg("sh")
        .arg(&s.program)
        .args(&s.args);
    c.stdin(Stdio::piped())
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
    let mut child = c.spawn().map_err(spawn_err)?;
    let launcher = child.id();
    // Not fatal when it fails: tracking falls back to groups and the parent tree.
    let tracked = cgroup_enter(s.env_root, s.component, launcher).is_some();
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        let _ = stdin.write_all(b"go\n");
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| spawn_err(std::io::Error::other("the launcher did not report a pid")))?;
    // The group is the launcher's (pid of `sh`), which the component keeps after sh exits.
    let pgid = pgid(pid).unwrap_or(launcher);
    tracing::debug!(component = s.component, pid, tracked, "started");
    Ok(Started { pid, pgid })
}

const LAUNCHER: &str = r#"read -r _ || exit 1
for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done
"$@" 1>&2 </dev/null & echo $!"#;

/// Process group of a live process.
pub fn pgid(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// One-off tasks (initdb, pg_basebackup, migrations) also carry `BSSCTL_TASK=1`: an apply killed
/// half-way leaves them running, and the next apply ends them before it starts over.
pub const TASK_MARKER: &str = "BSSCTL_TASK";

/// Every live process of the environment: its cgroups (whatever the processes did to their
/// environment, session or group), anything carrying `BSSCTL_ENV=<root>`, and the descendants of
/// recorded processes (`<root>/run`) by parent and start time. Empty cgroups of the environment
/// are removed on the way, so after `destroy` nothing of it is left in the cgroup tree either.
pub fn processes_of(root: &str) -> Vec<u32> {
    let mut v = processes_with(root, None);
    if let Some(dir) = env_cgroup(root) {
        // Cgroups whose processes are all gone are removed on the way (only empty ones can be).
        prune(&dir);
        v.extend(cgroup_pids(&dir));
    }
    let run = Path::new(root).join("run");
    let recorded: Vec<u32> = all_records(&run.display().to_string())
        .iter()
        .filter(|r| alive(r))
        .map(|r| r.pid)
        .collect();
    v.extend(descendants(&recorded));
    v.extend(recorded);
    v.retain(|p| *p != std::process::id());
    v.sort_unstable();
    v.dedup();
    v
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

/// TERM, wait up to `grace`, then KILL; the process, its process group and its cgroup (children
/// in sessions of their own included). Returns once all of them are gone, so its ports and files
/// are free.
pub fn stop_group(pid: u32, grace: Duration) {
    // Never our own group (it holds bssctl, and whatever shell or test runner started it).
    let own = pgid(std::process::id());
    let group = pgid(pid).filter(|g| *g > 1 && Some(*g) != own);
    let leaf = cgroup_of(pid);
    // Without a cgroup: what the process forked into other sessions, while we can still see it.
    let kids: Vec<(u32, u64)> = descendants(&[pid])
        .into_iter()
        .filter_map(|k| start_ticks(k).map(|t| (k, t)))
        .collect();
    let kid_alive = |k: &(u32, u64)| pid_alive(k.0) && start_ticks(k.0) == Some(k.1);
    let gone = |pid: u32| {
        !pid_alive(pid)
            && group.is_none_or(|g| group_members(g).is_empty())
            && leaf.as_ref().is_none_or(|l| cgroup_pids(l).is_empty())
            && !kids.iter().any(kid_alive)
    };
    if !gone(pid) {
        if let Some(g) = group {
            signal_group(g, "TERM");
        }
        signal(pid, "TERM");
        let start = Instant::now();
        let mut pause = Duration::from_millis(5);
        while !gone(pid) && start.elapsed() < grace {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
    if !gone(pid) {
        if let Some(l) = &leaf {
            kill_cgroup(l);
        }
        if let Some(g) = group {
            signal_group(g, "KILL");
        }
        signal(pid, "KILL");
        let left: Vec<u32> = kids.iter().filter(|k| kid_alive(k)).map(|k| k.0).collect();
        kill_all(&left);
        let start = Instant::now();
        while !gone(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(l) = &leaf {
        prune_upwards(l);
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

/// How this machine lets bssctl find every process of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tracking {
    /// cgroup v2 (the hierarchy's mount point): killed at once with `cgroup.kill`.
    CgroupV2(PathBuf),
    /// cgroup v1 `freezer` hierarchy: frozen, every process killed, thawed.
    CgroupV1Freezer(PathBuf),
    /// No writable cgroup: the marker, the recorded process group and the parent tree.
    ProcessTree,
}

impl Tracking {
    fn dir(&self) -> Option<&Path> {
        match self {
            Tracking::CgroupV2(p) | Tracking::CgroupV1Freezer(p) => Some(p),
            Tracking::ProcessTree => None,
        }
    }
}

/// Where bssctl's cgroups live on this machine (decided once per process).
pub fn tracking() -> Tracking {
    static T: std::sync::OnceLock<Tracking> = std::sync::OnceLock::new();
    T.get_or_init(detect_tracking).clone()
}

fn detect_tracking() -> Tracking {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Tracking::ProcessTree;
    };
    let mut v2 = None;
    let mut v1 = None;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split_whitespace().nth(4) else {
            continue;
        };
        let r: Vec<&str> = right.split_whitespace().collect();
        match r.first() {
            Some(&"cgroup2") => v2 = v2.or(Some(PathBuf::from(mount))),
            Some(&"cgroup")
                if r.get(2)
                    .is_some_and(|o| o.split(',').any(|x| x == "freezer")) =>
            {
                v1 = v1.or(Some(PathBuf::from(mount)))
            }
            _ => {}
        }
    }
    // Usable when bssctl may create its directory there (and so move processes into it).
    let usable = |m: &Path| std::fs::create_dir_all(m.join(CGROUP_BASE)).is_ok();
    if let Some(m) = v2.filter(|m| usable(m)) {
        return Tracking::CgroupV2(m.join(CGROUP_BASE));
    }
    if let Some(m) = v1.filter(|m| usable(m)) {
        return Tracking::CgroupV1Freezer(m.join(CGROUP_BASE));
    }
    Tracking::ProcessTree
}

const CGROUP_BASE: &str = "bssctl";

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect()
}

/// The cgroup of an environment: its directory name and a hash of its state root (two
/// environments of the same name in different state dirs never share one).
pub fn env_cgroup(root: &str) -> Option<PathBuf> {
    use sha2::{Digest, Sha256};
    let base = tracking().dir()?.to_path_buf();
    let name = Path::new(root)
        .file_name()
        .map(|n| sanitize(&n.to_string_lossy()))
        .unwrap_or_default();
    let h = hex::encode(Sha256::digest(root.as_bytes()));
    Some(base.join(format!("{name}-{}", &h[..12])))
}

/// The cgroup holding every process of one component (one sub-cgroup per start).
pub fn component_cgroup(root: &str, component: &str) -> Option<PathBuf> {
    Some(env_cgroup(root)?.join(sanitize(component)))
}

/// Creates the cgroup of one start and moves the (waiting) launcher into it.
fn cgroup_enter(root: &str, component: &str, launcher: u32) -> Option<PathBuf> {
    let dir = component_cgroup(root, component)?.join(format!("g{launcher}"));
    // A concurrent prune of empty cgroups may remove the parents in between: try again.
    for _ in 0..3 {
        if std::fs::create_dir_all(&dir).is_ok()
            && std::fs::write(dir.join("cgroup.procs"), launcher.to_string()).is_ok()
        {
            return Some(dir);
        }
    }
    let _ = std::fs::remove_dir(&dir);
    None
}

/// The process group a start cgroup is named after (`g<pgid>`: the launcher's pid, which is the
/// group the component keeps). cgroup v2 cannot rename a cgroup, so the name is fixed up front.
fn leaf_group(name: &str) -> Option<u32> {
    name.strip_prefix('g')?.parse().ok()
}

/// The start cgroup (`<base>/<env>/<component>/<start>`) whose name matches.
fn find_leaf(matches: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let base = tracking().dir()?.to_path_buf();
    let subdirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    for env in subdirs(&base) {
        for comp in subdirs(&env) {
            for leaf in subdirs(&comp) {
                if leaf
                    .file_name()
                    .is_some_and(|n| matches(&n.to_string_lossy()))
                {
                    return Some(leaf);
                }
            }
        }
    }
    None
}

/// The bssctl cgroup a live process is in, if any.
pub fn cgroup_of(pid: u32) -> Option<PathBuf> {
    let t = tracking();
    let base = t.dir()?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (id, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        let wanted = match t {
            Tracking::CgroupV2(_) => id == "0" && ctrl.is_empty(),
            Tracking::CgroupV1Freezer(_) => ctrl.split(',').any(|c| c == "freezer"),
            Tracking::ProcessTree => false,
        };
        wanted.then(|| path.to_string())
    })?;
    let mount = base.parent()?;
    let full = mount.join(rel.trim_start_matches('/'));
    full.starts_with(base).then_some(full)
}

/// Live processes in a cgroup and every cgroup below it.
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            v.extend(
                text.lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .filter(|p| pid_alive(*p)),
            );
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// SIGKILLs every process of a cgroup (and below) at once: none can fork or be signalled
/// half-way. True when the kill was issued.
fn kill_cgroup(dir: &Path) -> bool {
    match tracking() {
        Tracking::CgroupV2(_) => {
            if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                return true;
            }
            // Kernels before 5.14: freeze, kill each, thaw (a frozen process cannot fork).
            let frozen = std::fs::write(dir.join("cgroup.freeze"), "1").is_ok();
            let ok = kill_all(&cgroup_pids(dir));
            if frozen {
                let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
            }
            ok
        }
        Tracking::CgroupV1Freezer(_) => {
            let mut dirs = vec![dir.to_path_buf()];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
                    dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
                i += 1;
            }
            for d in &dirs {
                let _ = std::fs::write(d.join("freezer.state"), "FROZEN");
            }
            let ok = kill_all(&cgroup_pids(dir));
            for d in &dirs {
                let _ = std::fs::write(d.join("freezer.state"), "THAWED");
            }
            ok
        }
        Tracking::ProcessTree => false,
    }
}

/// One kill(1) for many pids: as close to "at once" as signalling them one by one gets.
fn kill_all(pids: &[u32]) -> bool {
    signal_all(pids, "KILL")
}

fn signal_all(pids: &[u32], sig: &str) -> bool {
    if pids.is_empty() {
        return true;
    }
    // Like kill(1) with several pids: every one is signalled; true when each was delivered.
    let delivered = pids.iter().filter(|p| signal(**p, sig)).count();
    delivered == pids.len()
}

fn wait_cgroup_empty(dir: &Path, timeout: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left = cgroup_pids(dir);
        if left.is_empty() || start.elapsed() >= timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes empty cgroups at and below `dir` (a cgroup with processes stays).
fn prune(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                prune(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes `leaf`, then its component's and its environment's cgroups when they are empty.
fn prune_upwards(leaf: &Path) {
    let _ = std::fs::remove_dir(leaf);
    if let Some(comp) = leaf.parent() {
        let _ = std::fs::remove_dir(comp);
        if let Some(env) = comp.parent() {
            let _ = std::fs::remove_dir(env);
        }
    }
}

/// (ppid, start_ticks) of every live process.
fn process_table() -> Vec<(u32, u32, u64)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter_map(|pid| {
            let (state, ppid, ticks) = stat(pid)?;
            (state != 'Z' && state != 'X').then_some((pid, ppid, ticks))
        })
        .collect()
}

/// Every live descendant of `roots` (by parent pid; a child never starts before its parent).
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    if roots.is_empty() {
        return Vec::new();
    }
    let table = process_table();
    let ticks = |p: u32| table.iter().find(|r| r.0 == p).map(|r| r.2);
    let mut out = Vec::new();
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(p) = frontier.pop() {
        let Some(pt) = ticks(p) else { continue };
        for (c, _, _) in table.iter().filter(|r| r.1 == p && r.2 >= pt) {
            if !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

/// Every live process of one component: its cgroup, or (without cgroups) its recorded process,
/// that process's group and its descendants.
pub fn component_processes(root: &str, component: &str) -> Vec<u32> {
    let mut v = Vec::new();
    if let Some(dir) = component_cgroup(root, component) {
        v.extend(cgroup_pids(&dir));
    }
    let run = Path::new(root).join("run").display().to_string();
    if let Some(r) = read_record(&run, component).filter(alive) {
        v.push(r.pid);
        if r.pgid > 1 && Some(r.pgid) != pgid(std::process::id()) {
            v.extend(group_members(r.pgid));
        }
        v.extend(descendants(&[r.pid]));
    }
    v.retain(|p| *p != std::process::id());
    v.sort_unstable();
    v.dedup();
    v
}

/// Sends `sig` to every process of a component in one call (e.g. STOP for a hung node); returns
/// the pids signalled.
pub fn signal_component(root: &str, component: &str, sig: &str) -> Vec<u32> {
    let pids = component_processes(root, component);
    signal_all(&pids, sig);
    pids
}

/// Kills every process of a component at once (a lost node: postmaster, backends, WAL sender and
/// auxiliary processes in the same instant; stopped processes too) and waits until none is left.
/// Returns the pids killed.
pub fn kill_component(
    root: &str,
    component: &str,
    timeout: Duration,
) -> Result<Vec<u32>, ProcessError> {
    let pids = component_processes(root, component);
    let dir = component_cgroup(root, component);
    let via_cgroup = dir.as_deref().is_some_and(kill_cgroup);
    if !via_cgroup {
        kill_all(&pids);
    }
    let start = Instant::now();
    loop {
        let left: Vec<u32> = component_processes(root, component);
        if left.is_empty() {
            break;
        }
        if start.elapsed() >= timeout {
            return Err(ProcessError::StillAlive {
                component: component.into(),
                left,
                waited_ms: start.elapsed().as_millis(),
            });
        }
        // Whatever a dying process forked in between.
        if !via_cgroup {
            kill_all(&left);
        } else if let Some(d) = &dir {
            kill_cgroup(d);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(d) = &dir {
        prune(d);
        if let Some(env) = d.parent() {
            let _ = std::fs::remove_dir(env);
        }
    }
    Ok(pids)
}

/// After destroy: removes the environment's empty cgroups; returns the processes still in them
/// (nothing, when destroy did its work).
pub fn release(root: &str) -> Vec<u32> {
    let Some(dir) = env_cgroup(root) else {
        return Vec::new();
    };
    prune(&dir);
    cgroup_pids(&dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A component that forks children into sessions of their own (as PostgreSQL does) and
    /// rewrites its environment is still found whole, and killed whole, stopped processes too.
    #[test]
    fn every_process_of_a_component_is_tracked_and_killed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("env").display().to_string();
        std::fs::create_dir_all(Path::new(&root).join("run")).unwrap();
        let started = spawn(Spawn {
            component: "db",
            program: PathBuf::from("bash"),
            // Two grandchildren in new sessions, environment cleared, then the leader waits.
            args: vec![
                "-c".into(),
                "echo to-stdout; echo to-stderr >&2; setsid env -i sleep 300 & setsid env -i sleep 300 & exec sleep 300".into(),
            ],
            env: vec![],
            log: dir.path().join("db.log"),
            env_root: &root,
            user: None,
            cwd: None,
        })
        .unwrap();
        let want = 3;
        let start = Instant::now();
        let mut procs = component_processes(&root, "db");
        while procs.len() < want && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
            procs = component_processes(&root, "db");
        }
        assert_eq!(procs.len(), want, "{procs:?}");
        assert!(procs.contains(&started.pid));
        // Only 0, 1 and 2 are open in the component.
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", started.pid))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(fds.len() <= 3, "inherited descriptors: {fds:?}");
        // Both of its output streams reach its log.
        let log = std::fs::read_to_string(dir.path().join("db.log")).unwrap();
        assert!(
            log.contains("to-stdout") && log.contains("to-stderr"),
            "log: {log:?}"
        );
        if tracking() != Tracking::ProcessTree {
            // The marker is gone from the grandchildren (env -i), the cgroup still has them.
            let all = processes_of(&root);
            assert!(
                procs.iter().all(|p| all.contains(p)),
                "{all:?} vs {procs:?}"
            );
            let cg = cgroup_of(started.pid).unwrap();
            assert!(cg.starts_with(component_cgroup(&root, "db").unwrap()));
        }
        let stopped = signal_component(&root, "db", "STOP");
        assert_eq!(stopped.len(), want);
        let killed = kill_component(&root, "db", Duration::from_secs(5)).unwrap();
        assert_eq!(killed.len(), want);
        for p in &procs {
            assert!(!pid_alive(*p), "{p} survived");
        }
        assert!(component_processes(&root, "db").is_empty());
        assert!(release(&root).is_empty());
        if let Some(cg) = env_cgroup(&root) {
            assert!(!cg.exists(), "{} left behind", cg.display());
        }
    }

    /// `stop_group` of the leader ends what the leader forked into other sessions.
    #[test]
    fn stopping_the_leader_ends_its_whole_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("env2").display().to_string();
        let started = spawn(Spawn {
            component: "web",
            program: PathBuf::from("bash"),
            args: vec!["-c".into(), "setsid sleep 300 & exec sleep 300".into()],
            env: vec![],
            log: dir.path().join("web.log"),
            env_root: &root,
            user: None,
            cwd: None,
        })
        .unwrap();
        let start = Instant::now();
        while component_processes(&root, "web").len() < 2
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let procs = component_processes(&root, "web");
        assert_eq!(procs.len(), 2, "{procs:?}");
        stop_group(started.pid, Duration::from_millis(200));
        for p in &procs {
            assert!(!pid_alive(*p), "{p} survived stop_group");
        }
        assert!(processes_of(&root).is_empty());
        if let Some(cg) = env_cgroup(&root) {
            assert!(!cg.exists(), "{} left behind", cg.display());
        }
    }
}
