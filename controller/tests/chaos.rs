//! Chaos suite of PostgreSQL failover on the local runtime, with real processes: a writer inserts
//! rows through HAProxy's write port (reconnecting on error, recording every acknowledged id),
//! a watcher checks at every sample that at most one member is a writable primary, and each
//! scenario breaks something: kill -9 / SIGSTOP / clean stop of the primary, kill -9 of a replica,
//! a short SIGSTOP, the agent killed mid-failover, a planned switchover.
//!
//! Measured like CloudNativePG: write gap = largest gap between consecutive committed rows
//! (clock_timestamp() column default); lost writes = acknowledged ids missing afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use controller::runtime::process;

struct Env {
    stack: support::StackEnv,
}

impl std::ops::Deref for Env {
    type Target = support::StackEnv;
    fn deref(&self) -> &support::StackEnv {
        &self.stack
    }
}

impl Env {
    fn new(name: &str, _seed: u16, sync: bool) -> Env {
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
        let repl = if sync {
            "\n    replication: {mode: sync, syncCount: 1}"
        } else {
            ""
        };
        let spec = format!("  postgres:\n    replicas: 2{repl}\n  haproxy: {{}}\n");
        let env = Env {
            stack: support::StackEnv::new("bssctl-chaos-", name, &spec),
        };
        let (code, out, err) = env.bssctl(&["apply"], &[]);
        assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
        env
    }

    fn member_port(&self, i: u16) -> u16 {
        self.port(5432 + i)
    }

    fn bssctl(&self, args: &[&str], extra: &[&str]) -> (i32, String, String) {
        self.run(args, extra)
    }

    fn record(&self, component: &str) -> Option<process::Record> {
        process::read_record(&self.root.join("run").display().to_string(), component)
    }

    /// pg_is_in_recovery() of member i, None when it does not answer within 700ms.
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
        (0..3)
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

    fn app_client(&self, port: u16) -> Result<postgres::Client, String> {
        controller::pgsql::connect(
            "127.0.0.1",
            port,
            "bss_app",
            &self.secret("postgres-app-password"),
            "bss",
            Duration::from_secs(1),
        )
        .map_err(|e| e.to_string())
    }
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

/// The writer and the one-primary watcher running during a scenario.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    errors: Arc<AtomicUsize>,
    max_primaries: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    handles: Vec<JoinHandle<()>>,
}

fn start_load(env: &Env) -> Load {
    let mut c = env.app_client(env.port(5436)).unwrap();
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS chaos (id bigserial PRIMARY KEY, \
         at timestamptz NOT NULL DEFAULT clock_timestamp(), \
         tl int NOT NULL DEFAULT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int)",
    )
    .unwrap();
    drop(c);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let max_primaries = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    {
        let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
        let port = env.port(5436);
        let pw = env.secret("postgres-app-password");
        handles.push(std::thread::spawn(move || {
            let mut client: Option<postgres::Client> = None;
            while !stop.load(Ordering::SeqCst) {
                if client.is_none() {
                    client = controller::pgsql::connect(
                        "127.0.0.1",
                        port,
                        "bss_app",
                        &pw,
                        "bss",
                        Duration::from_secs(1),
                    )
                    .ok();
                    if client.is_none() {
                        errors.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
                let Some(c) = client.as_mut() else { continue };
                match c.query_one("INSERT INTO chaos DEFAULT VALUES RETURNING id", &[]) {
                    Ok(r) => acked.lock().unwrap().push(r.get(0)),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::SeqCst);
                        client = None;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    {
        let (stop, max_primaries, samples) = (stop.clone(), max_primaries.clone(), samples.clone());
        let ports: Vec<u16> = (0..3).map(|i| env.member_port(i)).collect();
        let pw = env.secret("postgres-superuser-password");
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let n = ports
                    .iter()
                    .filter(|p| {
                        controller::pgsql::with_deadline(
                            "127.0.0.1",
                            **p,
                            "postgres",
                            &pw,
                            Duration::from_millis(500),
                            controller::pgsql::in_recovery,
                        ) == Ok(false)
                    })
                    .count();
                max_primaries.fetch_max(n, Ordering::SeqCst);
                samples.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }
    // Some committed rows before the chaos starts.
    wait_until("the writer commits", Duration::from_secs(10), || {
        (acked.lock().unwrap().len() > 20)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    Load {
        stop,
        acked,
        errors,
        max_primaries,
        samples,
        handles,
    }
}

struct Outcome {
    gap_s: f64,
    lost: usize,
    acked: usize,
    timelines: BTreeSet<i32>,
}

/// Stops the load, then reads the final table on the primary through HAProxy.
fn finish(env: &Env, load: Load, scenario: &str) -> Outcome {
    // Writes after the recovery as well, so the gap is closed by a committed row.
    let n0 = load.acked.lock().unwrap().len();
    wait_until("writes resume", Duration::from_secs(30), || {
        (load.acked.lock().unwrap().len() > n0 + 20)
            .then_some(())
            .ok_or_else(|| "no new acknowledged writes".to_string())
    });
    load.stop.store(true, Ordering::SeqCst);
    for h in load.handles {
        h.join().unwrap();
    }
    let acked = load.acked.lock().unwrap().clone();
    let mut c = env.app_client(env.port(5436)).unwrap();
    let rows = c
        .query(
            "SELECT id, extract(epoch from at)::float8, tl FROM chaos ORDER BY at",
            &[],
        )
        .unwrap();
    let ids: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let ats: Vec<f64> = rows.iter().map(|r| r.get(1)).collect();
    let timelines: BTreeSet<i32> = rows.iter().map(|r| r.get(2)).collect();
    let gap_s = ats.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let lost = acked.iter().filter(|id| !ids.contains(id)).count();
    let max_p = load.max_primaries.load(Ordering::SeqCst);
    eprintln!(
        "CHAOS {scenario}: write gap {gap_s:.3}s, acknowledged {}, lost {lost}, client errors {}, timelines {timelines:?}, max primaries at once {max_p} over {} samples",
        acked.len(),
        load.errors.load(Ordering::SeqCst),
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

fn primary_pid(env: &Env, member: &str) -> (u32, u32) {
    let r = env.record(member).unwrap();
    assert!(process::alive(&r), "{member} is not running");
    (r.pid, r.pgid)
}

fn wait_failover(env: &Env, from: &str) -> String {
    let mut to = String::new();
    wait_until("a failover", Duration::from_secs(30), || {
        let p = env.recorded_primary();
        if p != from && !p.is_empty() {
            to = p;
            Ok(())
        } else {
            Err(format!("primary still {p}"))
        }
    });
    to
}

fn wait_rejoined(env: &Env, member: u16) {
    wait_until(
        &format!("postgres-{member} rejoins as a replica"),
        Duration::from_secs(90),
        || match env.in_recovery(member) {
            Some(true) => Ok(()),
            other => Err(format!("pg_is_in_recovery() = {other:?}")),
        },
    );
    // It streams from the new primary and has the rows committed after the failover.
    let name = format!("postgres-{member}");
    wait_until(
        "the rejoined member streams",
        Duration::from_secs(30),
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
                .ok_or_else(|| {
                    let j =
                        std::fs::read_to_string(env.root.join("journal.jsonl")).unwrap_or_default();
                    let log = std::fs::read_to_string(env.root.join(format!("logs/{name}.log")))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    format!(
                        "{rows:?}\njournal:\n{}\nlog:\n{}",
                        j.lines()
                            .filter(|l| l.contains(&name) || l.contains("failover"))
                            .collect::<Vec<_>>()
                            .join("\n"),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
        },
    );
}

#[test]
fn kill9_primary_fails_over_within_5s_and_old_primary_rejoins() {
    let env = Env::new("chaos-kill9", 0, false);
    let load = start_load(&env);
    let (pid, pgid) = primary_pid(&env, "postgres-0");
    process::signal(pid, "KILL");
    let _ = pgid;
    let to = wait_failover(&env, "postgres-0");
    let o = finish(&env, load, "kill -9 primary (async)");
    eprintln!(
        "CHAOS kill -9 primary (async): promoted {to}; lost {} of {} acknowledged writes",
        o.lost, o.acked
    );
    assert!(
        o.gap_s <= 5.0,
        "write gap {:.3}s is above 5s for kill -9 with default settings",
        o.gap_s
    );
    assert!(
        o.timelines.len() >= 2,
        "rows from both timelines: {:?}",
        o.timelines
    );
    // The old primary comes back only as a replica (pg_rewind), never as a second primary.
    wait_rejoined(&env, 0);
    assert_eq!(env.primaries().len(), 1);
    let st = env.agent_status();
    assert_eq!(st["failovers_total"], 1, "{st}");
    let (_, out, _) = env.bssctl(&["status"], &[]);
    assert!(
        out.contains("failover"),
        "status shows the failover:\n{out}"
    );
}

#[test]
fn kill9_primary_in_sync_mode_loses_no_acknowledged_write() {
    let env = Env::new("chaos-sync", 1, true);
    let load = start_load(&env);
    let (pid, _) = primary_pid(&env, "postgres-0");
    process::signal(pid, "KILL");
    let to = wait_failover(&env, "postgres-0");
    let o = finish(&env, load, "kill -9 primary (sync)");
    eprintln!("CHAOS kill -9 primary (sync): promoted {to}");
    assert_eq!(o.lost, 0, "synchronous mode lost acknowledged writes");
    assert!(o.gap_s <= 5.0, "write gap {:.3}s", o.gap_s);
}

#[test]
fn sigstop_primary_beyond_window_is_fenced_and_replaced() {
    let env = Env::new("chaos-stop", 2, true);
    let load = start_load(&env);
    let (pid, pgid) = primary_pid(&env, "postgres-0");
    process::signal_group(pgid, "STOP");
    let to = wait_failover(&env, "postgres-0");
    // Fenced: the stopped primary was killed, so a SIGCONT cannot revive it as a primary.
    wait_until(
        "the stopped primary is killed",
        Duration::from_secs(10),
        || {
            (!process::pid_alive(pid))
                .then_some(())
                .ok_or_else(|| "still there".to_string())
        },
    );
    process::signal_group(pgid, "CONT");
    let o = finish(&env, load, "SIGSTOP primary beyond the window (sync)");
    eprintln!("CHAOS SIGSTOP primary: promoted {to}");
    assert_eq!(o.lost, 0, "synchronous mode lost acknowledged writes");
    wait_rejoined(&env, 0);
}

#[test]
fn clean_stop_of_the_primary_fails_over() {
    let env = Env::new("chaos-clean", 3, false);
    let load = start_load(&env);
    let (pid, _) = primary_pid(&env, "postgres-0");
    process::signal(pid, "INT");
    let to = wait_failover(&env, "postgres-0");
    let o = finish(&env, load, "clean stop of the primary (async)");
    eprintln!("CHAOS clean stop: promoted {to}; lost {}", o.lost);
    wait_rejoined(&env, 0);
}

#[test]
fn kill9_replica_and_short_sigstop_do_not_fail_over() {
    let env = Env::new("chaos-nofo", 4, false);
    let load = start_load(&env);
    // A dead replica: restarted, no failover.
    let (rpid, _) = primary_pid(&env, "postgres-1");
    process::signal(rpid, "KILL");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(env.recorded_primary(), "postgres-0");
    wait_rejoined(&env, 1);
    // A primary stalled for less than the window (3s): no failover.
    let (_, pgid) = primary_pid(&env, "postgres-0");
    process::signal_group(pgid, "STOP");
    std::thread::sleep(Duration::from_millis(2000));
    process::signal_group(pgid, "CONT");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(env.recorded_primary(), "postgres-0");
    let o = finish(&env, load, "kill -9 replica + SIGSTOP 2s < window");
    assert_eq!(o.lost, 0);
    assert_eq!(env.primaries(), vec![0]);
    let st = env.agent_status();
    assert_eq!(st["failovers_total"], 0, "{st}");
}

#[test]
fn agent_killed_during_failover_converges_to_one_primary() {
    let env = Env::new("chaos-agent", 5, false);
    let load = start_load(&env);
    let agent = env.record("agent").unwrap();
    let (pid, _) = primary_pid(&env, "postgres-0");
    let journal = env.root.join("journal.jsonl");
    let before = std::fs::read_to_string(&journal).unwrap_or_default().len();
    process::signal(pid, "KILL");
    // Kill the agent the moment it starts the failover.
    wait_until("the failover starts", Duration::from_secs(20), || {
        let j = std::fs::read_to_string(&journal).unwrap_or_default();
        j.get(before..)
            .is_some_and(|s| s.contains("\"detected\""))
            .then_some(())
            .ok_or_else(|| "not detected yet".to_string())
    });
    process::signal(agent.pid, "KILL");
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    // Restart it the way an operator (or systemd) would.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bssctl"));
    cmd.args(["agent", "--root"])
        .arg(&env.root)
        .env(process::ENV_MARKER, env.root.display().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    // Reaped when `destroy` (Drop) ends it.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let to = wait_failover(&env, "postgres-0");
    let o = finish(&env, load, "agent killed during failover, restarted");
    eprintln!(
        "CHAOS agent killed mid-failover: promoted {to}, converged {:.1}s after the kill; lost {}",
        killed_at.elapsed().as_secs_f64(),
        o.lost
    );
    wait_rejoined(&env, 0);
    assert_eq!(env.primaries().len(), 1);
}

#[test]
fn switchover_loses_nothing_and_old_primary_rejoins() {
    let env = Env::new("chaos-switch", 6, false);
    let load = start_load(&env);
    let (code, out, err) = env.bssctl(&["switchover"], &["--to", "postgres-2"]);
    assert_eq!(code, 0, "switchover failed:\n{out}\n{err}");
    assert_eq!(env.recorded_primary(), "postgres-2");
    let o = finish(&env, load, "switchover to postgres-2");
    assert_eq!(o.lost, 0, "a switchover lost acknowledged writes");
    wait_rejoined(&env, 0);
    assert_eq!(env.primaries(), vec![2]);
}
