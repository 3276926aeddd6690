//! Chaos of PostgreSQL failover on the Docker runtime, with real containers and the real agent
//! (supervision + failover monitor, in this process) over the Docker runtime: an unpaced writer
//! inserts rows through HAProxy's write port, and each scenario breaks the primary's container:
//! `docker kill`, `docker pause` beyond the detection window, and a network partition
//! (`docker network disconnect`). Measured like the local suite: write gap = largest gap between
//! consecutive committed rows; lost = acknowledged ids missing afterwards; in the partition, no
//! write acknowledged after the promotion may be lost (none came from the fenced old primary).
//! One scenario at a time (one stack at a time on this machine).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use controller::docker::client::Client;
use controller::docker::runtime::{host_view, Docker};
use controller::engine::failover::{HaproxyRouter, Services};
use controller::engine::{FileStore, RealClients, RuntimeFactory, StateStore};
use controller::render;
use controller::topology::model::ValidatedTopology;
use controller::topology::{self, types::RuntimeKind, ValidateOptions};

static ONE_STACK: Mutex<()> = Mutex::new(());

struct Stack {
    env: support::StackEnv,
    t: ValidatedTopology,
    host: ValidatedTopology,
    stop: Arc<AtomicBool>,
    agent: Option<JoinHandle<()>>,
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

impl Stack {
    fn new(name: &str, sync: bool) -> Stack {
        if let Err(e) = Client::connect() {
            panic!("{e}");
        }
        let repl = if sync {
            "\n    replication: {mode: sync, syncCount: 1}"
        } else {
            ""
        };
        let spec = format!("  postgres:\n    replicas: 2{repl}\n  haproxy: {{}}\n");
        let env = support::StackEnv::new("bssctl-docker-chaos-", name, &spec);
        let opts = ValidateOptions {
            runtime: Some(RuntimeKind::Docker),
            ..Default::default()
        };
        let t = topology::load(&env.file, &opts)
            .unwrap_or_else(|d| panic!("{d:?}"))
            .validated;
        let host = host_view(&t, &env.root);
        let bundle = render::render(&t, &render::load_templates(None).unwrap()).unwrap();
        let mut rep = controller::progress::TextReporter {
            start: Instant::now(),
            journal: None,
            verbose: false,
        };
        let state_dir = env.root.parent().unwrap().to_path_buf();
        controller::docker::cli::apply(&t, &bundle, &state_dir, &mut rep, None)
            .unwrap_or_else(|e| panic!("apply failed: {e}"));
        // The agent, as `apply` would start it, over the Docker runtime.
        let store: Arc<dyn StateStore> = Arc::new(FileStore::new(&host));
        let root = env.root.clone();
        let make: RuntimeFactory =
            Arc::new(move |t: &ValidatedTopology| Box::new(Docker::new(t, &root)));
        let svc = Services {
            store: store.clone(),
            clients: Arc::new(RealClients::new(&t, store)),
            runtime: make,
            router: Arc::new(HaproxyRouter),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, jr) = (stop.clone(), env.root.clone());
        let agent = std::thread::spawn(move || {
            let _ = controller::engine::agent::run(&jr, s2, svc);
        });
        Stack {
            env,
            t,
            host,
            stop,
            agent: Some(agent),
        }
    }

    fn secret(&self, name: &str) -> String {
        controller::state::secret_value(&self.host, name).unwrap()
    }

    fn cname(&self, member: &str) -> String {
        controller::docker::container_name(&self.t.name, member)
    }

    fn recorded_primary(&self) -> String {
        controller::state::read_applied(&self.host)
            .unwrap()
            .and_then(|a| a.primary)
            .unwrap_or_default()
    }

    fn history(&self) -> Vec<controller::engine::failover::FailoverEvent> {
        FileStore::new(&self.host).history()
    }

    fn app_client(&self) -> Result<postgres::Client, String> {
        controller::pgsql::connect(
            "127.0.0.1",
            self.t.haproxy.as_ref().unwrap().write.port,
            "bss_app",
            &self.secret("postgres-app-password"),
            "bss",
            Duration::from_secs(1),
        )
        .map_err(|e| e.to_string())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.agent.take() {
            let _ = h.join();
        }
        let c = Client::connect().unwrap();
        for o in c.containers(&self.t.name).unwrap_or_default() {
            let _ = c.unpause(&o.name);
        }
        let _ = controller::docker::cli::destroy(&self.t, self.env.root.parent().unwrap(), false);
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

/// The unpaced writer through HAProxy: every acknowledged id with the time of its ack.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i64, u128)>>>,
    handle: JoinHandle<()>,
}

fn start_load(s: &Stack) -> Load {
    let mut c = s.app_client().unwrap();
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS chaos (id bigserial PRIMARY KEY, \
         at timestamptz NOT NULL DEFAULT clock_timestamp(), \
         tl int NOT NULL DEFAULT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int)",
    )
    .unwrap();
    drop(c);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (st, ak) = (stop.clone(), acked.clone());
    let port = s.t.haproxy.as_ref().unwrap().write.port;
    let pw = s.secret("postgres-app-password");
    let handle = std::thread::spawn(move || {
        let mut client: Option<postgres::Client> = None;
        while !st.load(Ordering::SeqCst) {
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
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
            let Some(c) = client.as_mut() else { continue };
            match c.query_one("INSERT INTO chaos DEFAULT VALUES RETURNING id", &[]) {
                Ok(r) => ak.lock().unwrap().push((r.get(0), now_ms())),
                Err(_) => {
                    client = None;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    });
    wait_until("the writer commits", Duration::from_secs(10), || {
        (acked.lock().unwrap().len() > 20)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    });
    Load {
        stop,
        acked,
        handle,
    }
}

struct Outcome {
    gap_s: f64,
    /// (id, ack time) acknowledged but missing afterwards.
    lost: Vec<(i64, u128)>,
    acked: usize,
}

fn finish(s: &Stack, load: Load, scenario: &str) -> Outcome {
    let n0 = load.acked.lock().unwrap().len();
    wait_until("writes resume", Duration::from_secs(30), || {
        (load.acked.lock().unwrap().len() > n0 + 20)
            .then_some(())
            .ok_or_else(|| "no new acknowledged writes".to_string())
    });
    load.stop.store(true, Ordering::SeqCst);
    load.handle.join().unwrap();
    let acked = load.acked.lock().unwrap().clone();
    let mut c = s.app_client().unwrap();
    let rows = c
        .query(
            "SELECT id, extract(epoch from at)::float8 FROM chaos ORDER BY at",
            &[],
        )
        .unwrap();
    let ids: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let ats: Vec<f64> = rows.iter().map(|r| r.get(1)).collect();
    let gap_s = ats.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let lost: Vec<(i64, u128)> = acked
        .iter()
        .filter(|(id, _)| !ids.contains(id))
        .copied()
        .collect();
    eprintln!(
        "CHAOS-DOCKER {scenario}: write gap {gap_s:.3}s, acknowledged {}, lost {}",
        acked.len(),
        lost.len()
    );
    let j = std::fs::read_to_string(s.env.root.join("journal.jsonl")).unwrap_or_default();
    for l in j
        .lines()
        .filter(|l| !l.contains("\"health\""))
        .rev()
        .take(14)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        eprintln!("CHAOS-DOCKER journal: {l}");
    }
    if let Some(ev) = s.history().last() {
        let d = |x: Option<u128>| {
            x.map(|v| v.saturating_sub(ev.detected_ms) as i128)
                .unwrap_or(-1)
        };
        let first_lost = acked
            .iter()
            .map(|(_, at)| *at)
            .filter(|at| *at <= ev.detected_ms)
            .max()
            .unwrap_or(0);
        eprintln!(
            "CHAOS-DOCKER {scenario}: last ack before detection {} ms before it; fenced +{} ms, promoted +{} ms, rerouted +{} ms, done +{} ms",
            ev.detected_ms.saturating_sub(first_lost),
            d(ev.fenced_ms),
            d(ev.promoted_ms),
            d(ev.rerouted_ms),
            d(ev.done_ms)
        );
    }
    Outcome {
        gap_s,
        lost,
        acked: acked.len(),
    }
}

/// The last failover of the history (recorded when the whole sequence is done).
fn last_event(s: &Stack) -> controller::engine::failover::FailoverEvent {
    let mut ev = None;
    wait_until(
        "the failover in the history",
        Duration::from_secs(60),
        || {
            ev = s.history().last().cloned();
            ev.is_some()
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    );
    ev.unwrap()
}

fn wait_failover(s: &Stack, from: &str) -> String {
    let mut to = String::new();
    wait_until("a failover", Duration::from_secs(40), || {
        let p = s.recorded_primary();
        if p != from && !p.is_empty() {
            to = p;
            Ok(())
        } else {
            Err(format!("primary still {p}"))
        }
    });
    to
}

#[test]
fn docker_kill_of_the_primary_fails_over_within_5s() {
    let _one = ONE_STACK.lock().unwrap_or_else(|e| e.into_inner());
    let s = Stack::new(&format!("dck{}", std::process::id() % 10_000), false);
    let load = start_load(&s);
    let c = Client::connect().unwrap();
    c.kill(&s.cname("postgres-0"), "KILL").unwrap();
    let to = wait_failover(&s, "postgres-0");
    let o = finish(&s, load, "docker kill primary (async)");
    eprintln!(
        "CHAOS-DOCKER docker kill: promoted {to}; lost {} of {}",
        o.lost.len(),
        o.acked
    );
    assert!(o.gap_s <= 5.0, "write gap {:.3}s above 5 s", o.gap_s);
    assert_eq!(last_event(&s).from, "postgres-0");
}

#[test]
fn docker_kill_of_the_primary_in_sync_mode_loses_no_acknowledged_write() {
    let _one = ONE_STACK.lock().unwrap_or_else(|e| e.into_inner());
    let s = Stack::new(&format!("dcs{}", std::process::id() % 10_000), true);
    let load = start_load(&s);
    Client::connect()
        .unwrap()
        .kill(&s.cname("postgres-0"), "KILL")
        .unwrap();
    wait_failover(&s, "postgres-0");
    let o = finish(&s, load, "docker kill primary (sync)");
    assert!(
        o.lost.is_empty(),
        "sync mode lost {} acknowledged writes",
        o.lost.len()
    );
    assert!(o.gap_s <= 5.0, "write gap {:.3}s", o.gap_s);
}

#[test]
fn docker_pause_beyond_the_window_fences_and_below_it_does_not() {
    let _one = ONE_STACK.lock().unwrap_or_else(|e| e.into_inner());
    let s = Stack::new(&format!("dcp{}", std::process::id() % 10_000), false);
    let c = Client::connect().unwrap();
    let window = s.t.postgres.as_ref().unwrap().failover.detection_window.ms;
    // Below the window: a short stall is not a failure.
    let load = start_load(&s);
    c.pause(&s.cname("postgres-0")).unwrap();
    std::thread::sleep(Duration::from_millis(window / 3));
    c.unpause(&s.cname("postgres-0")).unwrap();
    std::thread::sleep(Duration::from_millis(window * 2));
    assert_eq!(
        s.recorded_primary(),
        "postgres-0",
        "a stall below the window failed over"
    );
    let o = finish(&s, load, "docker pause below the window");
    assert!(o.lost.is_empty());
    // Beyond the window: fenced (its container killed through the API, even while paused) and
    // replaced.
    let load = start_load(&s);
    c.pause(&s.cname("postgres-0")).unwrap();
    let to = wait_failover(&s, "postgres-0");
    let o = finish(&s, load, "docker pause beyond the window");
    eprintln!(
        "CHAOS-DOCKER docker pause: promoted {to}; gap {:.3}s",
        o.gap_s
    );
    assert!(
        o.gap_s <= window as f64 / 1000.0 + 5.0,
        "gap {:.3}s",
        o.gap_s
    );
    let ev = last_event(&s);
    assert!(
        ev.fenced_ms.is_some() && ev.from == "postgres-0",
        "fenced first: {ev:?}"
    );
}

#[test]
fn network_partition_of_the_primary_acknowledges_no_write_from_the_fenced_old_primary() {
    let _one = ONE_STACK.lock().unwrap_or_else(|e| e.into_inner());
    let s = Stack::new(&format!("dcn{}", std::process::id() % 10_000), false);
    let c = Client::connect().unwrap();
    let load = start_load(&s);
    let net = controller::docker::network_name(&s.t.name);
    let before = c.inspect(&s.cname("postgres-0")).unwrap().unwrap().id;
    c.disconnect(&net, &s.cname("postgres-0")).unwrap();
    let to = wait_failover(&s, "postgres-0");
    // The old primary is cut off: the agent fenced it out of band (killed through the Docker
    // API, not over the network); it may only come back as a new container (a rejoined replica).
    let ev = last_event(&s);
    assert!(ev.fenced_ms.is_some(), "fenced before promotion: {ev:?}");
    let old = c.inspect(&s.cname("postgres-0")).unwrap();
    assert!(
        old.as_ref().is_none_or(|o| !o.running || o.id != before),
        "the partitioned old primary still runs as it was: {old:?}"
    );
    let o = finish(&s, load, "network partition of the primary");
    let promoted_ms = last_event(&s).promoted_ms.expect("promotion recorded");
    let after: Vec<_> = o.lost.iter().filter(|(_, at)| *at >= promoted_ms).collect();
    eprintln!(
        "CHAOS-DOCKER partition: promoted {to}; gap {:.3}s; lost {} (acknowledged after the promotion: {})",
        o.gap_s,
        o.lost.len(),
        after.len()
    );
    assert!(
        after.is_empty(),
        "writes acknowledged after the promotion were lost: {after:?}"
    );
}
