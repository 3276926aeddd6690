//! The event tier against the real components: tansu brokers on the `bssctl kafka-store` store,
//! the backend's outbox, the customer-analytics processor and the bssctl agent.
//!
//! - one broker: `kill -9` of the broker, then of the store, under API load; the agent restarts
//!   each; every acknowledged customer's event is read back with kcat, the processor counts each
//!   exactly once and its committed offsets reach the end of the log.
//! - three brokers: `kill -9` of each broker in turn under load: zero failed API requests, zero
//!   lost events.
//! - rendering and validation of the tier (no stack): alert rules of three brokers under promtool,
//!   the errors of impossible combinations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::StackEnv;

const STACK: &str = "  postgres: {replicas: 0}\n  haproxy: {}\n  redis: {}\n  backend: {}\n  streamProcessors: {customerAnalytics: {}}\n";

fn kcat() -> std::path::PathBuf {
    let p = controller::tools::tools_dir().join("kcat");
    assert!(
        p.is_file(),
        "{} is missing: run `bash dev/setup.sh` (dev/setup.d/events.sh installs the kcat wrapper)",
        p.display()
    );
    p
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match f() {
            Ok(()) => return,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what}: not reached within {timeout:?}: {last}");
}

/// Status of every component: name -> (pid, healthy).
fn status(env: &StackEnv) -> BTreeMap<String, (Option<u32>, bool)> {
    let (_, out, _) = env.run(&["status", "-o", "json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["components"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_string(),
                        (
                            c["pid"].as_u64().map(|p| p as u32),
                            c["healthy"].as_bool().unwrap_or(false),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `kill -9` of a component, then waits until the agent has it running and healthy again.
fn kill_and_wait_for_restart(env: &StackEnv, component: &str) -> Duration {
    let before = status(env);
    let pid = before
        .get(component)
        .and_then(|s| s.0)
        .unwrap_or_else(|| panic!("{component} has no pid: {before:?}"));
    controller::runtime::process::signal(pid, "KILL");
    let killed = Instant::now();
    wait_until(
        &format!("agent restarts {component}"),
        Duration::from_secs(40),
        || match status(env).get(component) {
            Some((Some(p), true)) if *p != pid => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    killed.elapsed()
}

/// Creates customers through the backend until stopped; records every answer.
struct Load {
    stop: Arc<AtomicBool>,
    created: Arc<Mutex<Vec<String>>>,
    failed: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(env: &StackEnv, tag: &str) -> Load {
        let url = format!("http://127.0.0.1:{}/api/v1/customers", env.port(8080));
        let key = env.secret("backend-api-key");
        let stop = Arc::new(AtomicBool::new(false));
        let created = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (s, c, f, tag) = (
            stop.clone(),
            created.clone(),
            failed.clone(),
            tag.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build();
            let mut i = 0u64;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                let body = serde_json::json!({
                    "firstName": "Event", "lastName": format!("Tier{i}"),
                    "email": format!("{tag}-{i}@example.com"),
                });
                match agent
                    .post(&url)
                    .set("X-API-Key", &key)
                    .set("Content-Type", "application/json")
                    .send_string(&body.to_string())
                {
                    Ok(r) if r.status() == 201 => {
                        let v: serde_json::Value =
                            serde_json::from_str(&r.into_string().unwrap_or_default())
                                .unwrap_or_default();
                        c.lock()
                            .unwrap()
                            .push(v["id"].as_str().unwrap_or_default().to_string());
                    }
                    Ok(r) => f.lock().unwrap().push(format!("{}", r.status())),
                    Err(e) => f.lock().unwrap().push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Load {
            stop,
            created,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops the load: (created ids, failures).
    fn finish(mut self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let c = self.created.lock().unwrap().clone();
        let f = self.failed.lock().unwrap().clone();
        (c, f)
    }
}

/// Customer ids of every `customer.created` event in the topic, read with kcat from the start.
fn created_events(env: &StackEnv) -> Vec<String> {
    let out = Command::new(kcat())
        .args([
            "-b",
            &format!("127.0.0.1:{}", env.port(9092)),
            "-C",
            "-t",
            "bss.customer.events",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-m",
            "10",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kcat -C failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.contains("customer.created"))
        })
        .filter_map(|e| e["data"]["id"].as_str().map(String::from))
        .collect()
}

/// The store's metrics: sums of end and committed offsets of `bss.customer.events` for the
/// customer-analytics group, and its total lag.
fn group_offsets(env: &StackEnv) -> (f64, f64, f64) {
    let url = format!("http://127.0.0.1:{}/-/metrics", env.port(9000));
    let body = ureq::get(&url)
        .call()
        .map(|r| r.into_string().unwrap_or_default())
        .unwrap_or_default();
    let sum = |metric: &str, group: bool| {
        body.lines()
            .filter(|l| l.starts_with(metric) && l.contains("topic=\"bss.customer.events\""))
            .filter(|l| !group || l.contains("customer-analytics"))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum::<f64>()
    };
    (
        sum("bssctl_kafka_partition_end_offset", false),
        sum("bssctl_kafka_group_committed_offset", true),
        sum("bssctl_kafka_consumer_lag", true),
    )
}

fn analytics(env: &StackEnv) -> BTreeMap<String, i64> {
    let mut c = postgres::Config::new();
    c.host("127.0.0.1")
        .port(env.port(5436))
        .user("bss_app")
        .password(env.secret("postgres-app-password"))
        .dbname("bss")
        .connect_timeout(Duration::from_secs(5));
    let mut c = c.connect(postgres::NoTls).unwrap();
    c.query(
        "SELECT customer_id::text, events_seen FROM analytics_customers",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Every acknowledged customer has exactly one created event in the log, and the processor has
/// counted each exactly once and committed up to the end of the log.
fn assert_nothing_lost_or_double_counted(env: &StackEnv, created: &[String]) {
    let want: BTreeSet<String> = created.iter().cloned().collect();
    assert_eq!(want.len(), created.len(), "the API returned duplicate ids");
    wait_until(
        "every created customer's event is in the log",
        Duration::from_secs(60),
        || {
            let got = created_events(env);
            let set: BTreeSet<String> = got.iter().cloned().collect();
            let missing: Vec<_> = want.difference(&set).take(5).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} of {} missing, e.g. {missing:?}",
                    want.difference(&set).count(),
                    want.len()
                ))
            }
        },
    );
    let got = created_events(env);
    let phantom: Vec<_> = got.iter().filter(|id| !want.contains(*id)).collect();
    assert!(
        phantom.is_empty(),
        "events of customers the API never created: {phantom:?}"
    );
    wait_until(
        "the processor has counted every customer once and committed to the end",
        Duration::from_secs(60),
        || {
            let a = analytics(env);
            let counted = want.iter().filter(|id| a.contains_key(*id)).count();
            let (end, committed, lag) = group_offsets(env);
            if counted == want.len() && lag == 0.0 && committed >= end && end > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "{counted} of {} counted; end {end}, committed {committed}, lag {lag}",
                    want.len()
                ))
            }
        },
    );
    let a = analytics(env);
    let twice: Vec<_> = want
        .iter()
        .filter(|id| a.get(*id).copied() != Some(1))
        .map(|id| (id, a.get(id)))
        .take(5)
        .collect();
    assert!(
        twice.is_empty(),
        "customers not counted exactly once: {twice:?}"
    );
}

#[test]
fn broker_and_store_kill_minus_nine_lose_no_event_and_count_none_twice() {
    let env = StackEnv::new(
        "bssctl-events-1-",
        "ev1",
        &format!("{STACK}  kafka: {{brokers: 1}}\n"),
    );
    let (code, out, err) = env.run(&["apply"], &[]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    let load = Load::start(&env, "one");
    std::thread::sleep(Duration::from_secs(3));
    let broker = kill_and_wait_for_restart(&env, "kafka-0");
    // The processor rejoins its group on the restarted broker and commits again.
    let mut committed_before = 0.0;
    wait_until(
        "the processor commits after the broker's restart",
        Duration::from_secs(30),
        || {
            committed_before = group_offsets(&env).1;
            if committed_before > 0.0 {
                Ok(())
            } else {
                Err("nothing committed".into())
            }
        },
    );
    let store = kill_and_wait_for_restart(&env, "kafka-store");
    let (_, committed_after, _) = group_offsets(&env);
    std::thread::sleep(Duration::from_secs(3));
    let (created, failed) = load.finish();
    eprintln!(
        "broker back after {broker:?}, store after {store:?}; {} customers created, {} failed",
        created.len(),
        failed.len()
    );
    assert!(created.len() > 50, "too little load: {}", created.len());
    // With one broker the API keeps answering: events wait in the outbox while it is down.
    assert!(failed.is_empty(), "failed API requests: {failed:?}");
    assert!(
        committed_after >= committed_before && committed_before > 0.0,
        "committed offsets went back over the store's restart: {committed_before} -> {committed_after}"
    );
    assert_nothing_lost_or_double_counted(&env, &created);
}

#[test]
fn three_brokers_lose_any_one_under_load_without_a_failed_request_or_lost_event() {
    let env = StackEnv::new(
        "bssctl-events-3-",
        "ev3",
        &format!("{STACK}  kafka: {{brokers: 3}}\n"),
    );
    let (code, out, err) = env.run(&["apply"], &[]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    let (_, st, _) = env.run(&["status"], &[]);
    assert!(
        st.contains("1 of 3 entry points onto kafka-store, no partition replication"),
        "{st}"
    );
    let load = Load::start(&env, "three");
    std::thread::sleep(Duration::from_secs(3));
    for b in ["kafka-0", "kafka-1", "kafka-2"] {
        let back = kill_and_wait_for_restart(&env, b);
        eprintln!("{b} back after {back:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
    let (created, failed) = load.finish();
    eprintln!(
        "{} customers created, {} failed",
        created.len(),
        failed.len()
    );
    assert!(created.len() > 100, "too little load: {}", created.len());
    assert!(failed.is_empty(), "failed API requests: {failed:?}");
    assert_nothing_lost_or_double_counted(&env, &created);
}

#[test]
fn three_broker_alert_rules_pass_their_promtool_tests() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    std::fs::write(
        &file,
        "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: r3}\nspec:\n  kafka: {brokers: 3}\n  backend: {}\n  postgres: {}\n  haproxy: {}\n  prometheus: {}\n  alerts: {}\n",
    )
    .unwrap();
    let l = support::load_fixed(&file);
    let tera = controller::render::load_templates(None).unwrap();
    let b = controller::render::render(&l.validated, &tera).unwrap();
    let prom = &b.components["prometheus"];
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("kafka.rules.yml"),
        &prom.files["rules/kafka.rules.yml"],
    )
    .unwrap();
    let src = support::repo_root().join("controller/tests/alerts/brokers-3/kafka.test.yml");
    std::fs::copy(&src, rules.join("kafka.test.yml")).unwrap();
    let out = Command::new(support::require_tool("promtool"))
        .args(["test", "rules", "kafka.test.yml"])
        .current_dir(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The store is scraped for the lag metrics the rules use.
    let scrape = &prom.files["prometheus.yml"];
    assert!(scrape.contains("job_name: \"kafka-store\""), "{scrape}");
    assert!(scrape.contains("metrics_path: \"/-/metrics\""), "{scrape}");
}

#[test]
fn impossible_event_tiers_are_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "kafka: {brokers: 3, storage: memory}",
            "spec.kafka.brokers",
            "storage: s3",
        ),
        (
            "kafka: {storage: memory, store: {port: 9010}}",
            "spec.kafka.store",
            "storage: s3",
        ),
        (
            "kafka: {store: {bucket: Bad_Bucket}}",
            "spec.kafka.store.bucket",
            "3-63 lowercase",
        ),
        ("kafka: {storage: postgres}", "spec.kafka.storage", "memory"),
    ];
    for (i, (spec, path, hint)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("t{i}.yaml"));
        std::fs::write(
            &file,
            format!("apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {{name: bad}}\nspec:\n  {spec}\n"),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_bssctl"))
            .args(["validate"])
            .arg(&file)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{spec}: {text}");
        assert!(text.contains(path) && text.contains(hint), "{spec}: {text}");
    }
}
