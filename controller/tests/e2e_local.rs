//! End-to-end tests of the local runtime with real components and real clients: `bssctl apply`
//! of the whole stack on free ports, then psql through HAProxy, Prometheus' and Alertmanager's
//! APIs, a Kafka round trip, Redis, Envoy (retries, CORS, rate limit), a no-op apply, reloads under
//! load, kill -9 in the middle of an apply, a port conflict, and destroy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::DEFAULT_PORTS;

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
    fn new(name: &str, _seed: u16, spec: &str) -> Env {
        for t in [
            "postgres",
            "initdb",
            "pg_basebackup",
            "haproxy",
            "envoy",
            "tansu",
            "redis-server",
            "prometheus",
            "prometheus-alertmanager",
            "prometheus-node-exporter",
            "prometheus-postgres-exporter",
            "prometheus-redis-exporter",
            "bss-backend",
            "psql",
        ] {
            support::require_tool(t);
        }
        Env {
            stack: support::StackEnv::new("bssctl-e2e-", name, spec),
        }
    }

    fn bssctl(&self, args: &[&str]) -> (i32, String, String) {
        self.run(args, &[])
    }

    fn apply(&self) -> String {
        let (code, out, err) = self.bssctl(&["apply"]);
        assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
        err
    }

    fn pids(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(self.root.join("run"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.path().extension().is_some_and(|x| x == "json")
                    && !e.file_name().to_string_lossy().starts_with("agent")
            })
            .map(|e| {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
                (
                    v["component"].as_str().unwrap().to_string(),
                    v["pid"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn pg(&self, port: u16) -> postgres::Client {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(port)
            .user("bss_app")
            .password(self.secret("postgres-app-password"))
            .dbname("bss")
            .connect_timeout(Duration::from_secs(5));
        c.connect(postgres::NoTls).unwrap()
    }

    fn superuser(&self, port: u16) -> postgres::Client {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password(self.secret("postgres-superuser-password"))
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        c.connect(postgres::NoTls).unwrap()
    }
}

fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<(String, String)>) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut r = agent.get(url);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let resp = match r.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let code = resp.status();
    let hs = resp
        .headers_names()
        .into_iter()
        .map(|h| (h.clone(), resp.header(&h).unwrap_or("").to_string()))
        .collect();
    (code, resp.into_string().unwrap_or_default(), hs)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if start.elapsed() > timeout => {
                panic!("{what} did not hold within {}s: {e}", timeout.as_secs())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

const FULL_STACK: &str = "  postgres: {replicas: 2}
  haproxy: {}
  redis: {}
  kafka: {}
  backend: {}
  envoy: {}
  exporters: {node: {}, postgres: {}, redis: {}}
  prometheus: {scrapeInterval: 1s, evaluationInterval: 1s}
  alerts: {}
  alertmanager: {}
";

#[test]
fn full_stack_applies_serves_reloads_and_is_destroyed() {
    let env = Env::new("e2e-full", 0, FULL_STACK);
    let t0 = Instant::now();
    env.apply();
    eprintln!("cold apply: {:.2}s", t0.elapsed().as_secs_f64());

    // Writes through HAProxy's write port land on the primary.
    let mut w = env.pg(env.port(5436));
    let (port, rec): (i32, bool) = w
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (port as u16, rec),
        (env.port(5432), false),
        "write port must reach the primary"
    );
    w.batch_execute("CREATE TABLE e2e_writes (id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp()); INSERT INTO e2e_writes DEFAULT VALUES;").unwrap();
    let lsn: String = w
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);

    // Both replicas stream.
    let mut su = env.superuser(env.port(5432));
    wait_until("both replicas streaming", Duration::from_secs(20), || {
        let rows = su
            .query(
                "SELECT application_name, state FROM pg_stat_replication ORDER BY 1",
                &[],
            )
            .map_err(|e| e.to_string())?;
        let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if got
            == vec![
                ("postgres-1".to_string(), "streaming".to_string()),
                ("postgres-2".to_string(), "streaming".to_string()),
            ]
        {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });

    // Reads through the read port are served by the replicas in turn, and see the write.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let mut r = env.pg(env.port(5435));
        let row = r.query_one("SELECT inet_server_port(), pg_is_in_recovery(), pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn]).unwrap();
        let (p, rec): (i32, bool) = (row.get(0), row.get(1));
        assert!(
            rec,
            "read port reached a server that is not in recovery (port {p})"
        );
        seen.insert(p as u16);
    }
    assert_eq!(
        seen,
        [env.port(5433), env.port(5434)].into_iter().collect(),
        "round robin over both replicas"
    );

    // Redis answers PING with its password.
    let out = Command::new(support::require_tool("redis-cli"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &env.port(6379).to_string(),
            "--no-auth-warning",
            "--user",
            "admin",
            "-a",
            &env.secret("redis-password"),
            "ping",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");

    // A message produced through the broker is consumed back.
    let broker = format!("tcp://127.0.0.1:{}", env.port(9092));
    let tansu = support::require_tool("tansu");
    let mut p = Command::new(&tansu)
        .args([
            "cat",
            "produce",
            "bss.analytics.events",
            "--broker",
            &broker,
            "-",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        p.stdin.as_mut().unwrap(),
        b"{\"key\": \"e2e\", \"value\": {\"probe\": \"round-trip\"}}\n",
    )
    .unwrap();
    drop(p.stdin.take());
    assert!(p.wait().unwrap().success());
    let out = Command::new(&tansu)
        .args([
            "cat",
            "consume",
            "bss.analytics.events",
            "--broker",
            &broker,
            "--max-wait-time-ms",
            "2000",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("round-trip"),
        "consumed: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Prometheus: every target up, rule files loaded.
    let prom = format!("http://127.0.0.1:{}", env.port(9090));
    wait_until(
        "every Prometheus target up",
        Duration::from_secs(30),
        || {
            let (_, body, _) = get(&format!("{prom}/api/v1/targets"), &[]);
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let targets = v["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let down: Vec<String> = targets
                .iter()
                .filter(|t| t["health"] != "up")
                .map(|t| format!("{} {} {}", t["labels"]["job"], t["health"], t["lastError"]))
                .collect();
            if targets.len() >= 10 && down.is_empty() {
                Ok(())
            } else {
                Err(format!("{} targets, down: {down:?}", targets.len()))
            }
        },
    );
    let (_, body, _) = get(&format!("{prom}/api/v1/rules"), &[]);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let groups: Vec<String> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    for g in [
        "bss-system",
        "bss-postgresql",
        "bss-redis",
        "bss-kafka",
        "bss-business",
        "bss-capacity",
    ] {
        assert!(
            groups.contains(&g.to_string()),
            "rule group {g} not loaded: {groups:?}"
        );
    }

    // Alertmanager reports its config.
    let am_auth =
        controller::probe::basic_auth_header("bssctl", &env.secret("alertmanager-web-password"));
    let (code, body, _) = get(
        &format!("http://127.0.0.1:{}/api/v2/status", env.port(9093)),
        &[("Authorization", &am_auth)],
    );
    assert_eq!(code, 200);
    assert!(
        body.contains("team-database"),
        "alertmanager config not loaded: {body}"
    );

    // Envoy: reaches the backend, CORS headers, retries configured, rate limit answers 429.
    let envoy = format!("http://127.0.0.1:{}", env.port(15006));
    let key = env.secret("backend-api-key");
    let (code, _, hs) = get(
        &format!("{envoy}/api/v1/customers"),
        &[("X-API-Key", &key), ("Origin", "https://app.example.com")],
    );
    assert_eq!(code, 200);
    assert!(
        hs.iter().any(
            |(k, v)| k.eq_ignore_ascii_case("access-control-allow-origin")
                && v == "https://app.example.com"
        ),
        "{hs:?}"
    );
    // The admin is a unix socket (the TCP port serves only /stats/prometheus and /ready).
    let admin = env.root.join("run/envoy/admin.sock").display().to_string();
    let (_, dump) =
        controller::probe::http_get_unix(&admin, "/config_dump", Duration::from_secs(5)).unwrap();
    assert!(
        dump.contains("5xx,reset,connect-failure") && dump.contains("\"num_retries\": 3"),
        "retry policy missing"
    );
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..120 {
        let (c, _, _) = get(&format!("{envoy}/api/v1/customers"), &[("X-API-Key", &key)]);
        *codes.entry(c).or_insert(0) += 1;
    }
    assert!(
        codes.get(&429).copied().unwrap_or(0) > 0,
        "no 429 past the budget: {codes:?}"
    );
    assert!(codes.get(&200).copied().unwrap_or(0) >= 90, "{codes:?}");
    // The health route is exempt from the limit.
    assert_eq!(get(&format!("{envoy}/health"), &[]).0, 200);

    // Agent API: status JSON, metrics.
    let agent = format!("http://127.0.0.1:{}", env.port(7070));
    let (code, body, _) = get(&format!("{agent}/status"), &[]);
    assert_eq!(code, 200);
    assert!(body.contains("\"postgres-1\""));
    let bearer = format!("Bearer {}", env.secret("agent-token"));
    let (_, metrics, _) = get(&format!("{agent}/metrics"), &[("Authorization", &bearer)]);
    assert!(
        metrics.contains("bssctl_component_up{component=\"haproxy\",kind=\"haproxy\"} 1"),
        "{metrics}"
    );
    let (code, body, hs) = get(&format!("{agent}/components/nope"), &[]);
    assert_eq!(code, 404);
    assert!(
        hs.iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v.contains("problem+json")),
        "{body}"
    );

    // Second apply: nothing restarted.
    let before = env.pids();
    let t1 = Instant::now();
    let err = env.apply();
    eprintln!("no-op apply: {:.2}s", t1.elapsed().as_secs_f64());
    assert!(err.contains("0 component(s) changed"), "{err}");
    assert_eq!(env.pids(), before, "a no-op apply restarted something");

    // Changed HAProxy balance and an Envoy route, applied under steady load: zero errors.
    let text = std::fs::read_to_string(&env.file).unwrap();
    let changed = text.replace("  haproxy: {}", "  haproxy: {balance: leastconn}").replace(
        "  envoy: {}",
        "  envoy:\n    listeners:\n      - name: ingress\n        port: PORT\n        routes:\n          - {prefix: /api/, cluster: backend, timeout: 20s}\n          - {prefix: /health, cluster: backend, prefixRewrite: /health/ready, rateLimited: false, retries: false}",
    );
    std::fs::write(
        &env.file,
        // Written as the default port: portOffset shifts written ports too.
        changed.replace("PORT", "15006"),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_pg, err_pg, ok_http, err_http) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut loaders = Vec::new();
    for _ in 0..2 {
        let (stop, ok, er) = (stop.clone(), ok_pg.clone(), err_pg.clone());
        let (port, pw) = (env.port(5435), env.secret("postgres-app-password"));
        loaders.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut c = postgres::Config::new();
                c.host("127.0.0.1")
                    .port(port)
                    .user("bss_app")
                    .password(pw.as_str())
                    .dbname("bss")
                    .connect_timeout(Duration::from_secs(5));
                match c
                    .connect(postgres::NoTls)
                    .and_then(|mut cl| cl.query_one("SELECT 1", &[]))
                {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(_) => er.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for _ in 0..2 {
        let (stop, ok, er) = (stop.clone(), ok_http.clone(), err_http.clone());
        let url = format!("{envoy}/health");
        loaders.push(std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build();
            while !stop.load(Ordering::SeqCst) {
                match agent.get(&url).call() {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => er.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (code, plan, _) = env.bssctl(&["plan", "--no-diff"]);
    assert_eq!(code, 0);
    assert!(
        plan.lines()
            .any(|l| l.starts_with("haproxy ") && l.contains("reload")),
        "{plan}"
    );
    assert!(
        plan.lines()
            .any(|l| l.starts_with("envoy ") && l.contains("reload")),
        "{plan}"
    );
    let t2 = Instant::now();
    let err = env.apply();
    eprintln!("reload apply: {:.2}s\n{err}", t2.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    for l in loaders {
        l.join().unwrap();
    }
    let (okp, erp, okh, erh) = (
        ok_pg.load(Ordering::SeqCst),
        err_pg.load(Ordering::SeqCst),
        ok_http.load(Ordering::SeqCst),
        err_http.load(Ordering::SeqCst),
    );
    eprintln!("under reload: postgres via haproxy {okp} ok / {erp} errors; http via envoy {okh} ok / {erh} errors");
    assert!(
        okp > 20 && okh > 50,
        "too little load to show anything: {okp} {okh}"
    );
    assert_eq!((erp, erh), (0, 0), "requests failed during the reload");
    assert!(err.contains("haproxy") && err.contains("reload"), "{err}");
    let after = env.pids();
    for (name, pid) in &before {
        if name != "haproxy" && name != "envoy" {
            assert!(
                after.contains(&(name.clone(), *pid)),
                "{name} was restarted by a haproxy/envoy change"
            );
        }
    }

    // Destroy: nothing left running, ports free.
    let (code, _, err) = env.bssctl(&["destroy"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        env.marked_processes().is_empty(),
        "left running: {:?}",
        env.marked_processes()
    );
    for p in DEFAULT_PORTS {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", p + env.offset)).is_ok(),
            "port {} still in use after destroy",
            p + env.offset
        );
    }
    assert!(!env.root.exists());
}

#[test]
fn kill_minus_nine_in_the_middle_of_apply_converges() {
    let env = Env::new(
        "e2e-kill",
        1,
        "  postgres: {replicas: 2}\n  haproxy: {}\n  redis: {}\n  prometheus: {}\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_bssctl"))
        .arg("apply")
        .arg(&env.file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it once the first replica's base backup has started.
    let journal = env.root.join("journal.jsonl");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let j = std::fs::read_to_string(&journal).unwrap_or_default();
        if j.contains("\"step\":\"basebackup\"") || j.contains("\"component\":\"postgres-1\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let (code, out, err) = env.bssctl(&["apply"]);
    assert_eq!(code, 0, "second apply did not converge:\n{out}\n{err}");
    let (code, out, _) = env.bssctl(&["status"]);
    assert_eq!(
        code, 0,
        "not every component healthy after converging:\n{out}"
    );
    for name in [
        "postgres-0",
        "postgres-1",
        "postgres-2",
        "redis",
        "haproxy",
        "prometheus",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(name) && l.contains("healthy")),
            "{name}: {out}"
        );
    }
    let mut su = env.superuser(env.port(5432));
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // The interrupted apply leaves no second primary and no stray process.
    let (code, _, _) = env.bssctl(&["destroy"]);
    assert_eq!(code, 0);
    assert!(env.marked_processes().is_empty());
}

#[test]
fn ports_in_use_and_bad_input_are_reported_before_anything_starts() {
    let env = Env::new("e2e-ports", 2, "  redis: {}\n  prometheus: {}\n");
    let _holder = std::net::TcpListener::bind(("127.0.0.1", env.port(9090))).unwrap();
    let (code, _, err) = env.bssctl(&["apply"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "port {} of prometheus is in use by pid {}",
            env.port(9090),
            std::process::id()
        )),
        "{err}"
    );
    assert!(err.contains("nothing was started"), "{err}");
    assert!(
        !Path::new(&env.root.join("run/redis.json")).exists(),
        "redis was started although a port was taken"
    );
    assert!(env.marked_processes().is_empty());
}

#[test]
fn missing_tools_are_reported_with_their_install_step() {
    let env = Env::new(
        "e2e-tools",
        3,
        "  redis: {}\n  haproxy: {}\n  postgres: {replicas: 0}\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bssctl"))
        .arg("apply")
        .arg(&env.file)
        .env("PATH", "/nonexistent")
        .env("BSSCTL_TOOLS", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing was started"), "{err}");
    for tool in ["haproxy", "redis-server"] {
        assert!(
            err.contains(&format!("failed to find `{tool}`: run `bash dev/setup.sh`")),
            "{tool} not reported: {err}"
        );
    }
    assert!(env.marked_processes().is_empty());
}

#[test]
fn adding_and_removing_a_replica_creates_and_drops_its_slot_and_data() {
    let env = Env::new("e2e-scale", 4, "  postgres: {replicas: 1}\n  haproxy: {}\n");
    env.apply();
    let slots = |env: &Env| -> Vec<String> {
        let mut su = env.superuser(env.port(5432));
        su.query("SELECT slot_name FROM pg_replication_slots ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(slots(&env), vec!["postgres_1"]);
    let before = env.pids();

    // Scale out: postgres-2 is cloned with its own slot and streams; HAProxy is reloaded, not restarted.
    let text = std::fs::read_to_string(&env.file).unwrap();
    std::fs::write(&env.file, text.replace("replicas: 1", "replicas: 2")).unwrap();
    let (code, plan, _) = env.bssctl(&["plan", "--no-diff"]);
    assert_eq!(code, 0);
    assert!(
        plan.lines()
            .any(|l| l.starts_with("postgres-2 ") && l.contains("create")),
        "{plan}"
    );
    assert!(
        plan.lines()
            .any(|l| l.starts_with("haproxy ") && l.contains("reload")),
        "{plan}"
    );
    env.apply();
    assert_eq!(slots(&env), vec!["postgres_1", "postgres_2"]);
    let mut su = env.superuser(env.port(5432));
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let after = env.pids();
    for name in ["postgres-0", "postgres-1", "haproxy"] {
        assert_eq!(
            before.iter().find(|p| p.0 == name),
            after.iter().find(|p| p.0 == name),
            "{name} was restarted"
        );
    }

    // Scale in: postgres-2 is stopped, its slot dropped on the primary and its data deleted.
    std::fs::write(&env.file, text).unwrap();
    let (code, plan, _) = env.bssctl(&["plan", "--no-diff"]);
    assert_eq!(code, 0);
    assert!(
        plan.lines()
            .any(|l| l.starts_with("postgres-2 ") && l.contains("remove")),
        "{plan}"
    );
    env.apply();
    assert_eq!(slots(&env), vec!["postgres_1"]);
    assert!(
        !env.root.join("data/postgres-2").exists(),
        "data of the removed replica is still there"
    );
    assert!(env.pids().iter().all(|p| p.0 != "postgres-2"));
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", env.port(5434))).is_ok(),
        "removed replica still listens"
    );
}

/// An HTTP server on a free port answering 503 to every other request and 200 otherwise.
fn flaky_server(stop: Arc<AtomicBool>) -> (u16, Arc<AtomicU64>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let s2 = served.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = [0u8; 4096];
                    // Keep-alive: answer every request on the connection.
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let k = s2.fetch_add(1, Ordering::SeqCst);
                        let (code, body) = if k % 2 == 0 {
                            ("503 Service Unavailable", "no")
                        } else {
                            ("200 OK", "ok")
                        };
                        let resp = format!(
                            "HTTP/1.1 {code}\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if c.write_all(resp.as_bytes()).is_err() {
                            break;
                        }
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (port, served)
}

#[test]
fn envoy_retries_failed_upstream_attempts() {
    let stop = Arc::new(AtomicBool::new(false));
    let (port, served) = flaky_server(stop.clone());
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again at once
    let env = Env::new(
        "e2e-retry",
        5,
        &format!(
            "  envoy:\n    listeners:\n      - name: edge\n        port: {}\n        routes: [{{prefix: /, cluster: flaky, rateLimited: false}}]\n    clusters:\n      - {{name: flaky, endpoints: [\"127.0.0.1:{port}\", \"127.0.0.1:{dead}\"]}}\n",
            "LISTENER_PORT"
        ),
    );
    // The listener is written as Envoy's default proxy port; portOffset moves it to the test's.
    let listener = env.port(15006);
    let text = std::fs::read_to_string(&env.file)
        .unwrap()
        .replace("LISTENER_PORT", "15006");
    std::fs::write(&env.file, text).unwrap();
    env.apply();
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..20 {
        let (c, _, _) = get(&format!("http://127.0.0.1:{listener}/anything"), &[]);
        *codes.entry(c).or_insert(0) += 1;
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        codes.get(&200).copied(),
        Some(20),
        "every request must succeed after retries: {codes:?}"
    );
    let (_, stats) = controller::probe::http_get_unix(
        &env.root.join("run/envoy/admin.sock").display().to_string(),
        "/stats?filter=cluster.flaky.upstream_rq_retry$",
        Duration::from_secs(5),
    )
    .unwrap();
    let retries: u64 = stats
        .split(':')
        .nth(1)
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    eprintln!(
        "20 requests, {retries} retries, {} upstream attempts at the flaky server",
        served.load(Ordering::SeqCst)
    );
    assert!(
        retries >= 10,
        "503s and connect failures must be retried: {stats}"
    );
}
