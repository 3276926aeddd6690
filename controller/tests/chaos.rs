//! Chaos suite of PostgreSQL failover on the local runtime, with real processes and the root
//! topology's PostgreSQL and HAProxy settings (replication mode overridable with
//! `BSSCTL_CHAOS_MODE=async|sync`, as `dev/bench-failover.sh` does).
//!
//! Load: one unpaced writer (one autocommit connection through HAProxy's write port, no sleep
//! between inserts) writing client-generated keys, so a row lost on the old timeline is never
//! mistaken for a row the new primary numbered the same; a watcher samples every member for a
//! writable primary. Faults: every process of the primary member killed at once (its cgroup: a
//! lost node), its postmaster alone, every process of it stopped (a hung node), failover twice in
//! a row, the replicas' WAL receivers paused, and config changes of every kind after a failover
//! and after a switchover. After each scenario the environment is destroyed and no process of it
//! may be left, checked both by bssctl's own tracking and by an independent scan of /proc.
//!
//! Measured like CloudNativePG: write gap = largest gap between consecutive committed rows
//! (clock_timestamp() column default); lost writes = acknowledged keys missing afterwards. Each
//! scenario prints one `CHAOS key=value ...` line that the benchmark script aggregates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use controller::runtime::process;

/// One stack at a time in this binary (the machine is shared; the scenarios measure timing).
static ONE_STACK: Mutex<()> = Mutex::new(());

struct Env {
    stack: support::StackEnv,
    name: String,
    spec: serde_yaml::Value,
    mode: String,
    _one: MutexGuard<'static, ()>,
}

/// Whatever a failed assertion left (the topology may even be invalid after a failed change, so
/// `destroy` could refuse it): every process of the environment ends by its cgroup first.
impl Drop for Env {
    fn drop(&mut self) {
        let root = self.run_root();
        for pid in process::processes_of(&root) {
            process::signal(pid, "CONT");
        }
        for pid in process::processes_of(&root) {
            process::stop_group(pid, Duration::from_secs(2));
        }
    }
}

impl std::ops::Deref for Env {
    type Target = support::StackEnv;
    fn deref(&self) -> &support::StackEnv {
        &self.stack
    }
}

fn yaml_get<'a>(v: &'a mut serde_yaml::Value, path: &[&str]) -> &'a mut serde_yaml::Value {
    let mut cur = v;
    for k in path {
        if !cur.is_mapping() {
            *cur = serde_yaml::Value::Mapping(Default::default());
        }
        let m = cur.as_mapping_mut().unwrap();
        let key = serde_yaml::Value::String(k.to_string());
        if !m.contains_key(&key) {
            m.insert(key.clone(), serde_yaml::Value::Null);
        }
        cur = m.get_mut(&key).unwrap();
    }
    cur
}

fn set(v: &mut serde_yaml::Value, path: &[&str], value: serde_yaml::Value) {
    *yaml_get(v, path) = value;
}

/// The replication mode; `syncCount` only with `sync` (one synchronous standby unless set).
fn set_mode(spec: &mut serde_yaml::Value, mode: &str) {
    let repl = yaml_get(spec, &["postgres", "replication"]);
    set(repl, &["mode"], s(mode));
    let m = repl.as_mapping_mut().unwrap();
    if mode == "sync" {
        if !m.contains_key("syncCount") {
            m.insert(s("syncCount"), 1u64.into());
        }
    } else {
        m.remove("syncCount");
    }
}

fn s(x: &str) -> serde_yaml::Value {
    serde_yaml::Value::String(x.into())
}

impl Env {
    /// The root topology's `postgres` and `haproxy` sections (its failover and replication
    /// defaults), replication mode from `BSSCTL_CHAOS_MODE` when set.
    fn root_defaults(name: &str) -> Env {
        for t in [
            "postgres",
            "initdb",
            "pg_basebackup",
            "pg_rewind",
            "pg_controldata",
            "haproxy",
        ] {
            support::require_tool(t);
        }
        let one = ONE_STACK.lock().unwrap_or_else(|e| e.into_inner());
        let root: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(support::repo_root().join("topology.yaml")).unwrap(),
        )
        .unwrap();
        let mut spec = serde_yaml::Value::Mapping(Default::default());
        for section in ["postgres", "haproxy"] {
            let v = root["spec"][section].clone();
            assert!(!v.is_null(), "the root topology has no spec.{section}");
            set(&mut spec, &[section], v);
        }
        // Explicit ports are not shifted by the port offset: the defaults (the same numbers) are.
        for (section, key) in [
            ("postgres", "port"),
            ("haproxy", "writePort"),
            ("haproxy", "readPort"),
        ] {
            if let Some(m) = spec[section].as_mapping_mut() {
                m.remove(key);
            }
        }
        if let Some(m) = spec["haproxy"]["stats"].as_mapping_mut() {
            m.remove("port");
        }
        if let Ok(mode) = std::env::var("BSSCTL_CHAOS_MODE") {
            set_mode(&mut spec, &mode);
        }
        let mode = spec["postgres"]["replication"]["mode"]
            .as_str()
            .unwrap_or("async")
            .to_string();
        let mut env = Env {
            stack: support::StackEnv::new("bssctl-chaos-", name, &indent(&spec)),
            name: name.into(),
            spec,
            mode,
            _one: one,
        };
        // HAProxy off the members' range (5432 + index), so one replica more finds its port free.
        // Written as unshifted ports: portOffset shifts written ports too.
        let (w, r) = (5446u16, 5445u16);
        set(&mut env.spec, &["haproxy", "writePort"], (w as u64).into());
        set(&mut env.spec, &["haproxy", "readPort"], (r as u64).into());
        env.write_topology();
        env.apply_holding_a_lock();
        env
    }

    fn write_port(&self) -> u16 {
        self.port(5446)
    }

    fn write_topology(&self) {
        let text = format!(
            "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {{name: {}}}\nspec:\n  runtime: {{portOffset: {}, stateDir: state}}\n{}",
            self.name,
            self.offset,
            indent(&self.spec)
        );
        std::fs::write(&self.file, text).unwrap();
    }

    /// `apply` started with an open, locked descriptor (as under `flock(1)`): no component may
    /// inherit it.
    fn apply_holding_a_lock(&self) {
        let lock = self.root.parent().unwrap().join("caller.lock");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(r#"exec 9>>"$1"; exec "$2" apply "$3""#)
            .arg("bash")
            .arg(&lock)
            .arg(env!("CARGO_BIN_EXE_bssctl"))
            .arg(&self.file)
            .env_remove("BSSCTL_STATE_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "apply failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tails()
        );
        let lock_s = lock.display().to_string();
        for pid in self.marked_processes() {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let target = std::fs::read_link(fd.path()).unwrap_or_default();
                assert!(
                    target.display().to_string() != lock_s,
                    "pid {pid} ({}) inherited the caller's descriptor {}",
                    process::cmdline(pid),
                    fd.path().display()
                );
            }
        }
    }

    /// The last lines of every component's log (kept in a failure message: the environment's
    /// directory is deleted with the test).
    fn log_tails(&self) -> String {
        let mut out = String::new();
        let mut logs: Vec<_> = std::fs::read_dir(self.root.join("logs"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for p in logs {
            let bytes = std::fs::read(&p).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", p.display()));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Rewrites the topology with `change` applied to the spec and runs `apply`.
    fn change(&mut self, what: &str, change: impl FnOnce(&mut serde_yaml::Value)) -> String {
        let good = std::fs::read_to_string(&self.file).unwrap();
        change(&mut self.spec);
        self.write_topology();
        let (_, plan, _) = self.run(&["plan"], &["--no-diff"]);
        let (code, out, err) = self.run(&["apply"], &[]);
        if code != 0 {
            // The last good topology back, so `destroy` still accepts it.
            std::fs::write(&self.file, good).unwrap();
        }
        assert_eq!(
            code,
            0,
            "apply of {what} failed:\n{out}\n{err}\n{}",
            self.log_tails()
        );
        let (code, again, _) = self.run(&["plan"], &["--no-diff"]);
        assert_eq!(code, 0);
        assert!(
            again.contains("No changes"),
            "after applying {what}, the plan is not empty:\n{again}"
        );
        plan
    }

    fn run_root(&self) -> String {
        self.root.display().to_string()
    }

    fn member_port(&self, i: u16) -> u16 {
        self.port(5432 + i)
    }

    fn members(&self) -> u16 {
        1 + self.spec["postgres"]["replicas"].as_u64().unwrap_or(2) as u16
    }

    fn su(&self, i: u16, timeout: Duration) -> Result<postgres::Client, String> {
        controller::pgsql::connect(
            "127.0.0.1",
            self.member_port(i),
            "postgres",
            &self.secret("postgres-superuser-password"),
            "postgres",
            timeout,
        )
    }

    fn in_recovery(&self, i: u16) -> Option<bool> {
        controller::pgsql::with_deadline(
            "127.0.0.1",
            self.member_port(i),
            "postgres",
            &self.secret("postgres-superuser-password"),
            Duration::from_millis(700),
            controller::pgsql::in_recovery,
        )
        .ok()
    }

    fn primaries(&self) -> Vec<u16> {
        (0..self.members())
            .filter(|i| self.in_recovery(*i) == Some(false))
            .collect()
    }

    fn recorded_primary(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.root.join("applied.json")).unwrap())
                .unwrap();
        v["primary"].as_str().unwrap_or("").to_string()
    }

    fn agent_status(&self) -> serde_json::Value {
        let (_, body) = controller::probe::http_get(
            &format!("http://127.0.0.1:{}/failover", self.port(7070)),
            Duration::from_secs(3),
        )
        .unwrap_or((0, "{}".into()));
        serde_json::from_str(&body).unwrap_or_default()
    }

    fn show(&self, i: u16, param: &str) -> String {
        let mut c = self.su(i, Duration::from_secs(3)).unwrap();
        c.query_one(&format!("SHOW {param}"), &[]).unwrap().get(0)
    }

    /// Every running member's settings are those of its rendered files: nothing in
    /// pg_file_settings is unapplied or in error, and no parameter waits for a restart.
    fn assert_settings_match_files(&self, when: &str) {
        for i in 0..self.members() {
            let mut c = self
                .su(i, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("{when}: postgres-{i} does not answer: {e}"));
            let bad: Vec<String> = c
                .query(
                    "SELECT coalesce(name, '?') || ' = ' || coalesce(setting, '') || ': ' || \
                     coalesce(error, 'not applied') FROM pg_file_settings \
                     WHERE NOT applied OR error IS NOT NULL",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let pending: Vec<String> = c
                .query("SELECT name FROM pg_settings WHERE pending_restart", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert!(
                bad.is_empty() && pending.is_empty(),
                "{when}: postgres-{i} runs settings that differ from its files: {bad:?}, pending restart {pending:?}"
            );
        }
    }

    /// `destroy`, then nothing of the environment may run: by bssctl's tracking, and by a scan of
    /// every process's working directory, command line and environment for the state root.
    fn destroy_and_prove(&self) {
        let (code, out, err) = self.run(&["destroy"], &[]);
        assert_eq!(code, 0, "destroy failed:\n{out}\n{err}");
        let root = self.run_root();
        let tracked = process::processes_of(&root);
        assert!(
            tracked.is_empty(),
            "destroy left tracked processes: {:?}",
            tracked
                .iter()
                .map(|p| format!("{p} {}", process::cmdline(*p)))
                .collect::<Vec<_>>()
        );
        let scanned = processes_mentioning(&root);
        assert!(
            scanned.is_empty(),
            "destroy left processes of {root}: {scanned:?}"
        );
        if let Some(cg) = process::env_cgroup(&root) {
            assert!(!cg.exists(), "destroy left the cgroup {}", cg.display());
        }
    }
}

fn indent(spec: &serde_yaml::Value) -> String {
    serde_yaml::to_string(spec)
        .unwrap()
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// Processes whose cwd, command line or environment names `root` (independent of bssctl's
/// tracking: PostgreSQL's processes keep their data directory as cwd).
fn processes_mentioning(root: &str) -> Vec<String> {
    let me = std::process::id();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || !process::pid_alive(pid) {
            continue;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let cmd = process::cmdline(pid);
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let in_env = String::from_utf8_lossy(&environ).contains(root);
        if cwd.starts_with(root) || cmd.contains(root) || in_env {
            v.push(format!("{pid} cwd={cwd} {cmd}"));
        }
    }
    v
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if start.elapsed() > timeout => {
                panic!("{what} did not hold within {}s: {e}", timeout.as_secs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A pseudo-random duration below `max` (the phase of the fault relative to the writer).
fn random_phase(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let x = nanos
        .wrapping_mul(6364136223846793005)
        .wrapping_add(std::process::id() as u64);
    Duration::from_micros((x >> 11) % (max.as_micros() as u64).max(1))
}

/// The writer and the one-primary watcher running during a scenario.
struct Load {
    stop: Arc<AtomicBool>,
    /// Acknowledged keys with the client's clock (seconds since the load started).
    acked: Arc<Mutex<Vec<(i64, f64)>>>,
    errors: Arc<AtomicUsize>,
    max_primaries: Arc<AtomicUsize>,
    zero_primary_samples: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    started: Instant,
    handles: Vec<JoinHandle<()>>,
}

fn start_load(env: &Env) -> Load {
    let mut c = env
        .su(0, Duration::from_secs(3))
        .and_then(|_| {
            controller::pgsql::connect(
                "127.0.0.1",
                env.write_port(),
                "bss_app",
                &env.secret("postgres-app-password"),
                "bss",
                Duration::from_secs(2),
            )
        })
        .unwrap();
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS chaos (k bigint PRIMARY KEY, \
         at timestamptz NOT NULL DEFAULT clock_timestamp(), \
         tl int NOT NULL DEFAULT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int)",
    )
    .unwrap();
    let next_key = c
        .query_one("SELECT coalesce(max(k), 0) + 1 FROM chaos", &[])
        .unwrap()
        .get::<_, i64>(0);
    drop(c);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let max_primaries = Arc::new(AtomicUsize::new(0));
    let zero = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    {
        let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
        let port = env.write_port();
        let pw = env.secret("postgres-app-password");
        let key = Arc::new(AtomicI64::new(next_key));
        handles.push(std::thread::spawn(move || {
            let mut conn: Option<(postgres::Client, postgres::Statement)> = None;
            while !stop.load(Ordering::SeqCst) {
                if conn.is_none() {
                    let c = controller::pgsql::connect(
                        "127.0.0.1",
                        port,
                        "bss_app",
                        &pw,
                        "bss",
                        Duration::from_secs(1),
                    )
                    .and_then(|mut c| {
                        c.prepare("INSERT INTO chaos (k) VALUES ($1)")
                            .map(|st| (c, st))
                            .map_err(|e| e.to_string())
                    });
                    match c {
                        Ok(x) => conn = Some(x),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            // Only a failed connect waits (HAProxy refuses at once while no
                            // server is up); inserts are unpaced.
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    }
                }
                let Some((c, st)) = conn.as_mut() else {
                    continue;
                };
                let k = key.fetch_add(1, Ordering::SeqCst);
                match c.execute(&*st, &[&k]) {
                    Ok(_) => acked
                        .lock()
                        .unwrap()
                        .push((k, started.elapsed().as_secs_f64())),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::SeqCst);
                        conn = None;
                    }
                }
            }
        }));
    }
    {
        let (stop, max_primaries, zero, samples) = (
            stop.clone(),
            max_primaries.clone(),
            zero.clone(),
            samples.clone(),
        );
        // Up to one member more than now: the replica-count change adds one.
        let ports: Vec<u16> = (0..env.members() + 1).map(|i| env.member_port(i)).collect();
        let pw = env.secret("postgres-superuser-password");
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let probes: Vec<_> = ports
                    .iter()
                    .map(|p| {
                        let (p, pw) = (*p, pw.clone());
                        std::thread::spawn(move || {
                            controller::pgsql::with_deadline(
                                "127.0.0.1",
                                p,
                                "postgres",
                                &pw,
                                Duration::from_millis(500),
                                controller::pgsql::in_recovery,
                            ) == Ok(false)
                        })
                    })
                    .collect();
                let n = probes
                    .into_iter()
                    .map(|h| h.join().unwrap_or(false))
                    .filter(|x| *x)
                    .count();
                max_primaries.fetch_max(n, Ordering::SeqCst);
                if n == 0 {
                    zero.fetch_add(1, Ordering::SeqCst);
                }
                samples.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    // Some committed rows before the chaos starts.
    wait_until("the writer commits", Duration::from_secs(20), || {
        (acked.lock().unwrap().len() > 200)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    Load {
        stop,
        acked,
        errors,
        max_primaries,
        zero_primary_samples: zero,
        samples,
        started,
        handles,
    }
}

#[derive(Debug)]
struct Outcome {
    gap_s: f64,
    lost: usize,
    acked: usize,
    timelines: BTreeSet<i32>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Waits for writes to resume, stops the load, reads the final table through HAProxy and prints
/// the `CHAOS` line.
fn finish(env: &Env, load: Load, scenario: &str) -> Outcome {
    let n0 = load.acked.lock().unwrap().len();
    wait_until("writes resume", Duration::from_secs(60), || {
        (load.acked.lock().unwrap().len() > n0 + 200)
            .then_some(())
            .ok_or_else(|| "no new acknowledged writes".to_string())
    });
    load.stop.store(true, Ordering::SeqCst);
    let secs = load.started.elapsed().as_secs_f64();
    for h in load.handles {
        h.join().unwrap();
    }
    let acked = load.acked.lock().unwrap().clone();
    let mut c = controller::pgsql::connect(
        "127.0.0.1",
        env.write_port(),
        "bss_app",
        &env.secret("postgres-app-password"),
        "bss",
        Duration::from_secs(3),
    )
    .unwrap();
    let rows = c
        .query(
            "SELECT k, extract(epoch from at)::float8, tl FROM chaos ORDER BY at",
            &[],
        )
        .unwrap();
    let keys: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let ats: Vec<f64> = rows.iter().map(|r| r.get(1)).collect();
    let timelines: BTreeSet<i32> = rows.iter().map(|r| r.get(2)).collect();
    let gap_s = ats.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let client_gap = acked
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .fold(0.0, f64::max);
    let lost = acked.iter().filter(|(k, _)| !keys.contains(k)).count();
    let max_p = load.max_primaries.load(Ordering::SeqCst);
    // How the agent decided (its last event's reason: "N failed probes over Mms ...").
    let st = env.agent_status();
    // Writes resume at the reroute, before the event is recorded: then it is still in progress.
    let reason = st["events"]
        .as_array()
        .and_then(|e| e.last())
        .or(Some(&st["in_progress"]))
        .and_then(|e| e["reason"].as_str())
        .unwrap_or("")
        .to_string();
    let detected_ms = reason
        .split_whitespace()
        .find_map(|w| {
            w.trim_end_matches(':')
                .strip_suffix("ms")
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map(|n| n.to_string())
        .unwrap_or_else(|| "-".into());
    let corroborated = reason.contains("corroborated");
    // Commit rate outside the gap: acknowledged writes per second of the load.
    let mut per_sec = vec![0f64; secs.ceil() as usize + 1];
    for (_, t) in &acked {
        per_sec[*t as usize] += 1.0;
    }
    let busy: Vec<f64> = per_sec.into_iter().filter(|n| *n > 0.0).collect();
    let rate = median(&mut busy.clone());
    eprintln!(
        "CHAOS scenario={scenario} mode={} gap_s={gap_s:.3} client_gap_s={client_gap:.3} acked={} lost={lost} rate_per_s={rate:.0} client_errors={} timelines={timelines:?} max_primaries={max_p} zero_primary_samples={} samples={} detected_after_ms={detected_ms} corroborated={corroborated}",
        env.mode,
        acked.len(),
        load.errors.load(Ordering::SeqCst),
        load.zero_primary_samples.load(Ordering::SeqCst),
        load.samples.load(Ordering::SeqCst)
    );
    assert!(max_p <= 1, "{scenario}: {max_p} writable primaries at once");
    Outcome {
        gap_s,
        lost,
        acked: acked.len(),
        timelines,
    }
}

/// Every process of `member` now, with start times (so a reused pid is not mistaken for it).
fn snapshot(env: &Env, member: &str) -> Vec<(u32, u64)> {
    let v: Vec<(u32, u64)> = process::component_processes(&env.run_root(), member)
        .into_iter()
        .filter_map(|p| process::start_ticks(p).map(|t| (p, t)))
        .collect();
    assert!(v.len() > 3, "{member} runs only {v:?}");
    v
}

fn assert_all_gone(what: &str, procs: &[(u32, u64)], timeout: Duration) {
    wait_until(what, timeout, || {
        let left: Vec<String> = procs
            .iter()
            .filter(|(p, t)| process::pid_alive(*p) && process::start_ticks(*p) == Some(*t))
            .map(|(p, _)| format!("{p} {}", process::cmdline(*p)))
            .collect();
        left.is_empty()
            .then_some(())
            .ok_or_else(|| format!("still alive: {left:?}"))
    });
}

fn wait_failover(env: &Env, from: &str) -> String {
    let start = Instant::now();
    loop {
        let p = env.recorded_primary();
        if p != from && !p.is_empty() {
            return p;
        }
        if start.elapsed() > Duration::from_secs(30) {
            // The environment's directory goes with the test: keep what says why.
            panic!(
                "a failover did not happen within 30s: primary still {p}\nagent status: {}\n{}",
                env.agent_status(),
                env.log_tails()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_rejoined(env: &Env, member: u16) {
    wait_until(
        &format!("postgres-{member} rejoins as a replica"),
        Duration::from_secs(120),
        || match env.in_recovery(member) {
            Some(true) => Ok(()),
            other => Err(format!("pg_is_in_recovery() = {other:?}")),
        },
    );
    let name = format!("postgres-{member}");
    wait_until(
        "the rejoined member streams",
        Duration::from_secs(60),
        || {
            let p = env.primaries();
            let Some(&pi) = p.first() else {
                return Err("no primary".into());
            };
            let rows = controller::pgsql::with_deadline(
                "127.0.0.1",
                env.member_port(pi),
                "postgres",
                &env.secret("postgres-superuser-password"),
                Duration::from_secs(2),
                controller::pgsql::replication,
            )?;
            rows.iter()
                .any(|r| r.application_name == name && r.state == "streaming")
                .then_some(())
                .ok_or_else(|| format!("{rows:?}"))
        },
    );
}

fn member_index(name: &str) -> u16 {
    name.trim_start_matches("postgres-").parse().unwrap()
}

/// Journal events (`journal.jsonl`) of one component and step.
fn journal(env: &Env, component: &str, step: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(env.root.join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["component"] == component && e["step"] == step)
        .collect()
}

/// Node loss: every process of the primary member at once, at a random phase of the writer.
#[test]
fn node_loss_of_the_primary() {
    let env = Env::root_defaults("chaos-node-loss");
    // The agent probes each member twice a second, and reads the primary's replication as
    // often, on kept connections, not a new login each (that was 5 logins a second). Its
    // failover loop and health checks may overlap, so up to two are kept per member.
    wait_until(
        "the agent's probe connection to the primary is kept",
        Duration::from_secs(15),
        || {
            let mut c = env.su(0, Duration::from_secs(2))?;
            let mut one = |sql: &str| -> Result<i64, String> {
                c.query_one(sql, &[])
                    .map(|r| r.get(0))
                    .map_err(|e| e.to_string())
            };
            let n = one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bssctl' \
                 AND pid <> pg_backend_pid() AND backend_start < now() - interval '3 seconds'",
            )?;
            let logins = "SELECT sum(sessions)::bigint FROM pg_stat_database";
            let before = one(logins)?;
            std::thread::sleep(Duration::from_secs(3));
            let new = one(logins)? - before;
            ((1..=2).contains(&n) && new <= 2)
                .then_some(())
                .ok_or(format!(
                    "{n} agent sessions older than 3 s, {new} new sessions in 3 s"
                ))
        },
    );
    let load = start_load(&env);
    std::thread::sleep(random_phase(Duration::from_millis(1000)));
    let before = snapshot(&env, "postgres-0");
    let killed = process::kill_component(&env.run_root(), "postgres-0", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.len() >= before.len(), "{killed:?} vs {before:?}");
    let to = wait_failover(&env, "postgres-0");
    let o = finish(&env, load, "node-loss");
    if env.mode == "sync" {
        assert_eq!(o.lost, 0, "sync mode lost acknowledged writes: {o:?}");
    }
    assert!(
        o.acked > 0 && o.timelines.len() >= 2,
        "rows from both timelines: {o:?}"
    );
    assert!(o.gap_s <= 10.0, "write gap {:.3}s", o.gap_s);
    wait_rejoined(&env, 0);
    assert_eq!(env.primaries(), vec![member_index(&to)]);
    env.assert_settings_match_files("after the node loss and rejoin");
    let st = env.agent_status();
    assert_eq!(st["failovers_total"], 1, "{st}");

    // `status` on a closed pipe exits quietly; its JSON carries the failover history.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bssctl"))
        .arg("status")
        .arg(&env.file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "status on a closed pipe: {err}"
    );
    let (_, json, _) = env.run(&["status", "-o", "json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let hist = v["failover_history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(hist.len(), 1, "{json}");
    assert_eq!(hist[0]["from"], "postgres-0");
    assert_eq!(hist[0]["to"], to.as_str());
    env.destroy_and_prove();
}

/// The postmaster alone is killed: its backends and WAL sender go on for a moment.
#[test]
fn postmaster_only_kill() {
    let env = Env::root_defaults("chaos-postmaster");
    let load = start_load(&env);
    std::thread::sleep(random_phase(Duration::from_millis(1000)));
    let before = snapshot(&env, "postgres-0");
    let rec = process::read_record(&format!("{}/run", env.run_root()), "postgres-0").unwrap();
    process::signal(rec.pid, "KILL");
    wait_failover(&env, "postgres-0");
    let o = finish(&env, load, "postmaster-kill");
    if env.mode == "sync" {
        assert_eq!(o.lost, 0, "sync mode lost acknowledged writes: {o:?}");
    }
    assert_all_gone(
        "the old primary's processes end",
        &before,
        Duration::from_secs(20),
    );
    wait_rejoined(&env, 0);
    env.assert_settings_match_files("after the postmaster kill and rejoin");
    env.destroy_and_prove();
}

/// A hung node: every process of the primary stopped. It is fenced (every stopped process
/// killed, none left), and rejoins with pg_rewind, not a re-clone.
#[test]
fn hung_primary_is_fenced_and_rejoins_with_pg_rewind() {
    let env = Env::root_defaults("chaos-hung");
    let load = start_load(&env);
    let before = snapshot(&env, "postgres-0");
    let stopped = process::signal_component(&env.run_root(), "postgres-0", "STOP");
    assert!(stopped.len() >= before.len());
    wait_failover(&env, "postgres-0");
    assert_all_gone(
        "every stopped process of the fenced primary is killed",
        &before,
        Duration::from_secs(10),
    );
    let o = finish(&env, load, "hung-primary");
    if env.mode == "sync" {
        assert_eq!(o.lost, 0, "sync mode lost acknowledged writes: {o:?}");
    }
    wait_rejoined(&env, 0);
    let rewinds = journal(&env, "postgres-0", "rewind");
    assert!(
        rewinds.iter().any(|e| e["status"] == "ok")
            && !rewinds.iter().any(|e| e["status"] == "fail"),
        "the old primary did not rejoin with pg_rewind: {rewinds:?}"
    );
    env.assert_settings_match_files("after the hung primary rejoined");
    env.destroy_and_prove();
}

/// Node loss, the old primary rejoins, then the new primary is lost too.
#[test]
fn failover_twice_in_a_row() {
    let env = Env::root_defaults("chaos-twice");
    let load = start_load(&env);
    process::kill_component(&env.run_root(), "postgres-0", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let first = wait_failover(&env, "postgres-0");
    wait_rejoined(&env, 0);
    env.assert_settings_match_files("after the first failover");
    process::kill_component(&env.run_root(), &first, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let second = wait_failover(&env, &first);
    let o = finish(&env, load, "failover-twice");
    if env.mode == "sync" {
        assert_eq!(o.lost, 0, "sync mode lost acknowledged writes: {o:?}");
    }
    assert!(o.timelines.len() >= 3, "three timelines: {o:?}");
    wait_rejoined(&env, member_index(&first));
    assert_eq!(env.primaries(), vec![member_index(&second)]);
    env.assert_settings_match_files("after the second failover");
    assert_eq!(env.agent_status()["failovers_total"], 2);
    env.destroy_and_prove();
}

/// The replicas' WAL receivers paused beyond the detection window: the primary is fine, so
/// nothing is promoted.
#[test]
fn paused_wal_receivers_do_not_fail_over() {
    let env = Env::root_defaults("chaos-receivers");
    let load = start_load(&env);
    let receivers: Vec<u32> = (1..env.members())
        .flat_map(|i| process::component_processes(&env.run_root(), &format!("postgres-{i}")))
        .filter(|p| process::cmdline(*p).contains("walreceiver"))
        .collect();
    assert_eq!(receivers.len(), 2, "WAL receivers: {receivers:?}");
    for p in &receivers {
        process::signal(*p, "STOP");
    }
    std::thread::sleep(Duration::from_secs(8));
    for p in &receivers {
        process::signal(*p, "CONT");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(env.recorded_primary(), "postgres-0");
    let o = finish(&env, load, "paused-wal-receivers");
    assert_eq!(o.lost, 0, "{o:?}");
    assert_eq!(env.primaries(), vec![0]);
    assert_eq!(env.agent_status()["failovers_total"], 0);
    env.destroy_and_prove();
}

/// Config changes of every kind apply cleanly after a failover, and after a switchover; the
/// plan shows the true action for each member, and afterwards every member runs its files.
#[test]
fn config_changes_of_every_kind_after_failover_and_switchover() {
    let mut env = Env::root_defaults("chaos-config");
    process::kill_component(&env.run_root(), "postgres-0", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}"));
    let primary = wait_failover(&env, "postgres-0");
    wait_rejoined(&env, 0);
    env.assert_settings_match_files("after the failover");
    changes_of_every_kind(&mut env, "after a failover", &["16MB", "160MB"]);

    let target = (0..env.members())
        .map(|i| format!("postgres-{i}"))
        .find(|m| *m != env.recorded_primary() && *m != primary)
        .unwrap();
    let (code, out, err) = env.run(&["switchover"], &["--to", &target]);
    assert_eq!(code, 0, "switchover failed:\n{out}\n{err}");
    wait_rejoined(&env, member_index(&primary));
    env.assert_settings_match_files("after the switchover");
    changes_of_every_kind(&mut env, "after a switchover", &["24MB", "192MB"]);
    env.destroy_and_prove();
}

fn changes_of_every_kind(env: &mut Env, when: &str, values: &[&str; 2]) {
    let n = env.members();
    // A reloadable parameter: every member reloads.
    let plan = env.change("work_mem", |s| {
        set(
            s,
            &["postgres", "parameters", "work_mem"],
            self::s(values[0]),
        )
    });
    for i in 0..n {
        assert!(
            plan_line(&plan, &format!("postgres-{i}")).starts_with("reload"),
            "{when}: work_mem plan:\n{plan}"
        );
        assert_eq!(env.show(i, "work_mem"), values[0], "{when}");
    }
    env.assert_settings_match_files(&format!("{when}, work_mem"));
    // A restart-only parameter: every member restarts.
    let plan = env.change("shared_buffers", |s| {
        set(
            s,
            &["postgres", "parameters", "shared_buffers"],
            self::s(values[1]),
        )
    });
    for i in 0..n {
        assert!(
            plan_line(&plan, &format!("postgres-{i}")).starts_with("restart"),
            "{when}: shared_buffers plan:\n{plan}"
        );
        assert_eq!(env.show(i, "shared_buffers"), values[1], "{when}");
    }
    env.assert_settings_match_files(&format!("{when}, shared_buffers"));
    // The replication mode, there and back.
    let modes = if env.mode == "sync" {
        ["async", "sync"]
    } else {
        ["sync", "async"]
    };
    for other in modes {
        env.change("replication mode", |s| set_mode(s, other));
        let p = member_index(&env.recorded_primary());
        let names = env.show(p, "synchronous_standby_names");
        assert_eq!(
            names.is_empty(),
            other == "async",
            "{when}: mode {other}: synchronous_standby_names = {names:?}"
        );
        env.assert_settings_match_files(&format!("{when}, mode {other}"));
    }
    // HAProxy: a different check interval; writes still reach the current primary.
    let plan = env.change("haproxy check", |s| {
        set(s, &["haproxy", "check", "interval"], self::s("2s"))
    });
    assert!(
        plan_line(&plan, "haproxy").starts_with("reload"),
        "{when}: haproxy plan:\n{plan}"
    );
    let mut c = controller::pgsql::connect(
        "127.0.0.1",
        env.write_port(),
        "bss_app",
        &env.secret("postgres-app-password"),
        "bss",
        Duration::from_secs(3),
    )
    .unwrap();
    let in_rec: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(!in_rec, "{when}: HAProxy's write port reaches a replica");
    drop(c);
    env.change("haproxy check back", |s| {
        set(s, &["haproxy", "check", "interval"], self::s("1s"))
    });
    // Prometheus: added, then a reloadable change.
    if !when.contains("switchover") {
        support::require_tool("prometheus");
        let plan = env.change("prometheus added", |s| {
            set(
                s,
                &["prometheus"],
                serde_yaml::from_str("{port: 9090, scrapeInterval: 5s, evaluationInterval: 5s}")
                    .unwrap(),
            )
        });
        assert!(
            plan_line(&plan, "prometheus").starts_with("create"),
            "{when}: prometheus plan:\n{plan}"
        );
        let plan = env.change("prometheus scrape interval", |s| {
            set(s, &["prometheus", "scrapeInterval"], self::s("10s"))
        });
        assert!(
            plan_line(&plan, "prometheus").starts_with("reload"),
            "{when}: prometheus plan:\n{plan}"
        );
    }
    // One replica more: created, streaming from the current primary.
    if !when.contains("switchover") {
        let plan = env.change("replica count", |s| {
            set(
                s,
                &["postgres", "replicas"],
                serde_yaml::Value::Number((n as u64).into()),
            )
        });
        assert!(
            plan_line(&plan, &format!("postgres-{n}")).starts_with("create"),
            "{when}: replicas plan:\n{plan}"
        );
        wait_rejoined(env, n);
        env.assert_settings_match_files(&format!("{when}, one replica more"));
    }
}

/// The action column of `component` in a text plan.
fn plan_line(plan: &str, component: &str) -> String {
    plan.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(component)).then(|| f.collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

/// A small filesystem mounted by the test (a tmpfs: the machine's own disk is far too big to
/// fill), lazily unmounted when dropped so no test leaves a mount behind.
struct SmallFs {
    dir: std::path::PathBuf,
}

impl SmallFs {
    fn mount(dir: std::path::PathBuf, mib: u64) -> SmallFs {
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}M,mode=0711"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("mount(8) from util-linux (apt-get install -y mount)");
        assert!(
            out.status.success(),
            "mounting a {mib} MiB tmpfs at {} failed (the disk-full scenario needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// `GET /metrics` of the agent (with its token).
fn agent_metrics(env: &Env) -> String {
    let bearer = format!("Bearer {}", env.secret("agent-token"));
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
        .get(&format!("http://127.0.0.1:{}/metrics", env.port(7070)))
        .set("Authorization", &bearer)
        .call()
        .ok()
        .and_then(|r| r.into_string().ok())
        .unwrap_or_default()
}

/// The primary's `pg_wal` on a small filesystem of its own (as with a separate WAL volume) that
/// fills up: the primary PANICs and stays down. The agent must NOT fail over (promoting does not
/// fix storage and risks a second primary once space is freed: CloudNativePG's rule) but must
/// say why and alert; once space is freed the same primary comes back, nothing acknowledged is
/// lost and there was never a second timeline.
#[test]
fn full_wal_disk_on_the_primary_holds_the_failover_and_alerts() {
    let env = Env::root_defaults("chaos-disk-full");
    let root = env.run_root();
    // Moving pg_wal is planned work: agent stopped (so the stop is no death), clean shutdown,
    // copy, link, then `apply` starts both again.
    controller::runtime::agent_process::stop(&env.root);
    let rec = process::read_record(&format!("{root}/run"), "postgres-0").unwrap();
    process::signal(rec.pid, "INT");
    wait_until("postgres-0 stops", Duration::from_secs(30), || {
        let left = process::component_processes(&root, "postgres-0");
        left.is_empty()
            .then_some(())
            .ok_or_else(|| format!("{left:?}"))
    });
    let data = env.root.join("data").join("postgres-0");
    let wal = data.join("pg_wal");
    let fs = SmallFs::mount(
        env.root.parent().unwrap().parent().unwrap().join("walfs"),
        160,
    );
    let moved = fs.dir.join("pg_wal");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(&wal)
        .arg(&moved)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&wal).unwrap();
    std::os::unix::fs::symlink(&moved, &wal).unwrap();
    let (code, out, err) = env.run(&["apply"], &[]);
    assert_eq!(code, 0, "apply after moving pg_wal failed:\n{out}\n{err}");
    assert_eq!(env.primaries(), vec![0]);

    let load = start_load(&env);
    // Something else fills the WAL filesystem, and the workload goes on producing WAL (1 MiB
    // logical messages, which touch no data file): the primary needs a new segment and PANICs.
    let fill = fs.dir.join("fill");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&fill).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
    }
    let filling = Arc::new(AtomicBool::new(true));
    let filler = {
        let (filling, port, pw) = (
            filling.clone(),
            env.member_port(0),
            env.secret("postgres-superuser-password"),
        );
        std::thread::spawn(move || {
            while filling.load(Ordering::SeqCst) {
                let c = controller::pgsql::connect(
                    "127.0.0.1",
                    port,
                    "postgres",
                    &pw,
                    "postgres",
                    Duration::from_secs(1),
                );
                let Ok(mut c) = c else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                while filling.load(Ordering::SeqCst)
                    && c.batch_execute(
                        "SELECT pg_logical_emit_message(false, 'chaos-fill', repeat('x', 1048576))",
                    )
                    .is_ok()
                {}
            }
        })
    };
    wait_until(
        "the agent holds the failover back for the full disk",
        Duration::from_secs(60),
        || {
            let st = env.agent_status();
            let held = st["held"].as_str().unwrap_or("");
            held.contains("not failing over: disk full on postgres-0")
                .then_some(())
                .ok_or_else(|| format!("held = {held:?}, last_decision = {}", st["last_decision"]))
        },
    );
    wait_until(
        "postgres-0 runs out of space",
        Duration::from_secs(60),
        || {
            let path = env.root.join("logs").join("postgres-0.log");
            let bytes = std::fs::read(&path).unwrap_or_default();
            let log = String::from_utf8_lossy(&bytes);
            log.contains("No space left on device")
                .then_some(())
                .ok_or_else(|| {
                    let tail: Vec<&str> = log.lines().rev().take(10).collect();
                    format!(
                        "{} ({} bytes) ends with {tail:?}; agent: {}",
                        path.display(),
                        bytes.len(),
                        env.agent_status()["held"]
                    )
                })
        },
    );
    // Several detection windows (3 s) pass with the primary down: nothing is promoted.
    std::thread::sleep(Duration::from_secs(10));
    let st = env.agent_status();
    assert_eq!(st["failovers_total"], 0, "{st}");
    assert_eq!(env.recorded_primary(), "postgres-0");
    assert!(
        !env.primaries().iter().any(|p| *p != 0),
        "a replica was promoted: {:?}",
        env.primaries()
    );
    // Said where an operator looks: status, the journal, the metrics the alert rules use.
    let (_, json, _) = env.run(&["status", "-o", "json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        v["no_failover_because"]
            .as_str()
            .is_some_and(|w| w.contains("not failing over: disk full on postgres-0")),
        "{json}"
    );
    let decisions = journal(&env, "failover", "decision");
    assert!(
        decisions.iter().any(|e| e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not failing over: disk full on postgres-0"))),
        "{decisions:?}"
    );
    let m = agent_metrics(&env);
    assert!(
        m.contains("bssctl_failover_held{member=\"postgres-0\",reason=\"disk_full\"} 1")
            && m.contains("bssctl_postgres_disk_full{member=\"postgres-0\"} 1")
            && m.contains("bssctl_postgres_disk_full{member=\"postgres-1\"} 0"),
        "{m}"
    );

    // Space freed: the same primary comes back (restarted by the agent if it stayed down).
    filling.store(false, Ordering::SeqCst);
    filler.join().unwrap();
    std::fs::remove_file(&fill).unwrap();
    wait_until(
        "postgres-0 is primary again",
        Duration::from_secs(90),
        || {
            (env.primaries() == vec![0])
                .then_some(())
                .ok_or_else(|| format!("primaries {:?}", env.primaries()))
        },
    );
    let o = finish(&env, load, "disk-full");
    assert_eq!(o.lost, 0, "acknowledged writes lost: {o:?}");
    assert_eq!(o.timelines.len(), 1, "a promotion happened: {o:?}");
    for i in 1..env.members() {
        wait_rejoined(&env, i);
    }
    let st = env.agent_status();
    assert_eq!(st["failovers_total"], 0, "{st}");
    assert_eq!(st["held"], "", "{st}");
    wait_until("the metrics clear", Duration::from_secs(15), || {
        let m = agent_metrics(&env);
        (m.contains("bssctl_failover_held{member=\"postgres-0\",reason=\"disk_full\"} 0")
            && m.contains("bssctl_postgres_disk_full{member=\"postgres-0\"} 0"))
        .then_some(())
        .ok_or(m)
    });
    env.assert_settings_match_files("after the full disk");
    env.destroy_and_prove();
    drop(fs);
}
