//! End-to-end test of the Docker runtime with real components in containers: the whole stack of
//! the local e2e (PostgreSQL primary + 2 replicas, HAProxy, Redis, the broker, the backend, Envoy,
//! the exporters, Prometheus with the alert rules, Alertmanager) converged by the engine on the
//! Docker runtime, then psql through HAProxy, reads on replicas, streaming replicas, Redis, a
//! broker round trip, every Prometheus target up, rule groups loaded, Alertmanager's config,
//! CRUD through Envoy with CORS and 429, a no-op re-apply, a verified Prometheus reload of a
//! changed rule, and teardown leaving no container, network or volume. Builds the images it needs
//! when missing; fails naming the install step when Docker is absent (never skips).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::docker::client::Client;
use controller::docker::runtime::{host_view, Docker};
use controller::engine::{self, FileStore, RealClients, Runtime, Task};
use controller::plan::{self, Action};
use controller::render;
use controller::state::Applied;
use controller::topology::model::ValidatedTopology;
use controller::topology::{self, types::RuntimeKind, ValidateOptions};

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

struct Stack {
    env: support::StackEnv,
    t: ValidatedTopology,
    host: ValidatedTopology,
    rt: Docker,
}

impl Stack {
    fn new(name: &str, spec: &str) -> Stack {
        if let Err(e) = Client::connect() {
            panic!("{e}");
        }
        let env = support::StackEnv::new("bssctl-e2e-docker-", name, spec);
        let opts = ValidateOptions {
            runtime: Some(RuntimeKind::Docker),
            ..Default::default()
        };
        let t = topology::load(&env.file, &opts)
            .unwrap_or_else(|d| panic!("{d:?}"))
            .validated;
        let host = host_view(&t, &env.root);
        let rt = Docker::new(&t, &env.root);
        Stack { env, t, host, rt }
    }

    fn secret(&self, name: &str) -> String {
        controller::state::secret_value(&self.host, name).unwrap()
    }

    fn applied(&self) -> Option<Applied> {
        controller::state::read_applied(&self.host).unwrap()
    }

    /// One apply of the current topology file; returns (actions, millis).
    fn apply(&mut self) -> (std::collections::BTreeMap<String, Action>, u128) {
        let opts = ValidateOptions {
            runtime: Some(RuntimeKind::Docker),
            ..Default::default()
        };
        self.t = topology::load(&self.env.file, &opts)
            .unwrap_or_else(|d| panic!("{d:?}"))
            .validated;
        self.rt = Docker::new(&self.t, &self.env.root);
        let t = self.t.clone();
        let store = FileStore::new(&self.host);
        let cl = RealClients::new(&t, Arc::new(FileStore::new(&self.host)));
        let bundle = render::render(&t, &templates()).unwrap();
        let applied = self.applied();
        let mut p = plan::plan(
            &bundle,
            applied.as_ref().map(|a| &a.bundle),
            &plan::Redactor::new(vec![]),
        );
        engine::converge::adjust_plan(&mut p, &self.rt.capabilities());
        let mut rep = controller::progress::TextReporter {
            start: Instant::now(),
            journal: None,
            verbose: false,
        };
        let r = engine::apply(
            &mut self.rt,
            &cl,
            &store,
            &mut rep,
            &t,
            &bundle,
            &p,
            applied.as_ref(),
            None,
        )
        .unwrap_or_else(|e| panic!("apply failed: {e}"));
        (r.actions, r.millis)
    }

    fn pg(&self, port: u16, user: &str, secret: &str, db: &str) -> postgres::Client {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(port)
            .user(user)
            .password(self.secret(secret))
            .dbname(db)
            .connect_timeout(Duration::from_secs(5));
        c.connect(postgres::NoTls).unwrap()
    }
}

/// The repository's templates, loaded from the directory (as `--templates` would).
fn templates() -> tera::Tera {
    render::load_templates(Some(&support::repo_root().join("templates"))).unwrap()
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.rt.teardown(None, false);
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
        Err(e) => return (0, e.to_string(), vec![]),
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

/// Runs `during` while unpaced clients query PostgreSQL on `pg_ports` (a fresh connection per
/// query, as the e2e of the local runtime does) and GET `url`; returns (ok, failed) as
/// ((postgres, http), (postgres, http)).
fn under_load(
    pg_ports: &[u16],
    password: &str,
    url: &str,
    during: impl FnOnce(),
) -> ((u64, u64), (u64, u64)) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..4).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut loaders = Vec::new();
    for &port in pg_ports {
        let (stop, ok, er, pw) = (
            stop.clone(),
            counters[0].clone(),
            counters[1].clone(),
            password.to_string(),
        );
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
        let (stop, ok, er, url) = (
            stop.clone(),
            counters[2].clone(),
            counters[3].clone(),
            url.to_string(),
        );
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
    during();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    for l in loaders {
        l.join().unwrap();
    }
    let v: Vec<u64> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    ((v[0], v[2]), (v[1], v[3]))
}

#[test]
fn full_stack_on_docker_applies_serves_reloads_and_is_destroyed() {
    let name = format!("e2ed{}", std::process::id() % 10_000);
    let mut s = Stack::new(&name, FULL_STACK);
    let offset = s.env.offset;
    let port = move |p: u16| p + offset;
    let (actions, ms) = s.apply();
    assert!(
        actions.values().all(|a| *a == Action::Create),
        "{actions:?}"
    );
    eprintln!("cold apply on docker: {:.2}s", ms as f64 / 1000.0);

    // Writes through HAProxy's write port land on the primary.
    let mut w = s.pg(port(5436), "bss_app", "postgres-app-password", "bss");
    let (p, rec): (i32, bool) = w
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((p as u16, rec), (port(5432), false));
    w.batch_execute(
        "CREATE TABLE e2e_writes (id serial PRIMARY KEY); INSERT INTO e2e_writes DEFAULT VALUES;",
    )
    .unwrap();
    let lsn: String = w
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);

    // Both replicas stream from the primary (over the environment's network).
    let mut su = s.pg(
        port(5432),
        "postgres",
        "postgres-superuser-password",
        "postgres",
    );
    wait_until("both replicas streaming", Duration::from_secs(20), || {
        let rows = su
            .query(
                "SELECT application_name, state FROM pg_stat_replication ORDER BY 1",
                &[],
            )
            .map_err(|e| e.to_string())?;
        let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let want = vec![
            ("postgres-1".to_string(), "streaming".to_string()),
            ("postgres-2".to_string(), "streaming".to_string()),
        ];
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });

    // Reads through the read port: both replicas in turn, and they have the write.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let mut r = s.pg(port(5435), "bss_app", "postgres-app-password", "bss");
        let row = r
            .query_one(
                "SELECT inet_server_port(), pg_is_in_recovery(), pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap();
        let (p, rec): (i32, bool) = (row.get(0), row.get(1));
        assert!(rec, "read port reached a server not in recovery ({p})");
        seen.insert(p as u16);
    }
    assert_eq!(seen, [port(5433), port(5434)].into_iter().collect());

    // Redis answers PING with its password on its 127.0.0.1 port.
    let out = std::process::Command::new(support::require_tool("redis-cli"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port(6379).to_string(),
            "--no-auth-warning",
        ])
        .args(["--user", "admin", "-a", &s.secret("redis-password"), "ping"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");

    // Broker round trip, from inside the broker's container (its advertised address is the
    // container name, which resolves on the environment's network).
    let k = s.t.kafka.as_ref().unwrap().brokers[0].clone();
    let broker = format!("tcp://{}:{}", k.endpoint.host, k.endpoint.port);
    let produce = format!(
        "echo '{{\"key\": \"e2e\", \"value\": {{\"probe\": \"round-trip\"}}}}' | tansu cat produce bss.analytics.events --broker {broker} -"
    );
    s.rt.exec(
        &k.name,
        &Task::Tool {
            program: "sh".into(),
            args: vec!["-c".into(), produce],
        },
    )
    .unwrap();
    let consumed =
        s.rt.exec(
            &k.name,
            &Task::Tool {
                program: "tansu".into(),
                args: [
                    "cat",
                    "consume",
                    "bss.analytics.events",
                    "--broker",
                    &broker,
                    "--max-wait-time-ms",
                    "2000",
                ]
                .map(String::from)
                .to_vec(),
            },
        )
        .unwrap();
    assert!(consumed.contains("round-trip"), "consumed: {consumed}");

    // Prometheus: every target up (scraped over the network by container name), rules loaded.
    let prom = format!("http://127.0.0.1:{}", port(9090));
    wait_until(
        "every Prometheus target up",
        Duration::from_secs(40),
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
    let groups = |prom: &str| -> Vec<String> {
        let (_, body, _) = get(&format!("{prom}/api/v1/rules"), &[]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .flat_map(|g| {
                let mut names = vec![g["name"].as_str().unwrap_or("").to_string()];
                for r in g["rules"].as_array().cloned().unwrap_or_default() {
                    names.push(r["name"].as_str().unwrap_or("").to_string());
                }
                names
            })
            .collect()
    };
    let loaded = groups(&prom);
    for g in [
        "bss-system",
        "bss-postgresql",
        "bss-redis",
        "bss-kafka",
        "bss-business",
        "bss-capacity",
    ] {
        assert!(
            loaded.contains(&g.to_string()),
            "rule group {g} not loaded: {loaded:?}"
        );
    }

    // Alertmanager reports its config.
    let am_auth =
        controller::probe::basic_auth_header("bssctl", &s.secret("alertmanager-web-password"));
    let (code, body, _) = get(
        &format!("http://127.0.0.1:{}/api/v2/status", port(9093)),
        &[("Authorization", &am_auth)],
    );
    assert_eq!(code, 200);
    assert!(
        body.contains("team-database"),
        "alertmanager config not loaded: {body}"
    );

    // Envoy: CRUD reaches the backend, CORS headers, rate limit answers 429.
    let envoy = format!("http://127.0.0.1:{}", port(15006));
    let key = s.secret("backend-api-key");
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
    let created = ureq::post(&format!("{envoy}/api/v1/customers"))
        .set("X-API-Key", &key)
        .send_json(serde_json::json!({"firstName": "Docker", "lastName": "E2e", "email": format!("{name}@example.com"), "phone": "+49 170 1234567"}));
    let status = match created {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(c, r)) => panic!(
            "create customer: {c} {}",
            r.into_string().unwrap_or_default()
        ),
        Err(e) => panic!("create customer: {e}"),
    };
    assert_eq!(status, 201);
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..120 {
        let (c, _, _) = get(&format!("{envoy}/api/v1/customers"), &[("X-API-Key", &key)]);
        *codes.entry(c).or_insert(0) += 1;
    }
    assert!(
        codes.get(&429).copied().unwrap_or(0) > 0,
        "no 429 past the budget: {codes:?}"
    );
    assert_eq!(get(&format!("{envoy}/health"), &[]).0, 200);
    // Envoy's admin is a socket inside the container: the published stats port serves only
    // GET /stats/prometheus and /ready.
    let stats = format!("http://127.0.0.1:{}", port(15000));
    assert_eq!(get(&format!("{stats}/ready"), &[]).0, 200);
    assert_eq!(get(&format!("{stats}/config_dump"), &[]).0, 404);
    let quit = ureq::post(&format!("{stats}/quitquitquit")).call();
    assert!(matches!(quit, Err(ureq::Error::Status(404, _))), "{quit:?}");
    assert_eq!(get(&format!("{stats}/ready"), &[]).0, 200);
    // Alertmanager wants its credentials.
    assert_eq!(
        get(
            &format!("http://127.0.0.1:{}/api/v2/silences", port(9093)),
            &[]
        )
        .0,
        401
    );

    // No-op re-apply: nothing restarted (same container ids).
    let c = Client::connect().unwrap();
    let ids = |c: &Client| -> Vec<(String, String)> {
        c.containers(&name)
            .unwrap()
            .into_iter()
            .map(|o| (o.name, o.id))
            .collect()
    };
    let before = ids(&c);
    let mut noop = Vec::new();
    for _ in 0..3 {
        let (actions, ms) = s.apply();
        assert!(actions.values().all(|a| *a == Action::None), "{actions:?}");
        noop.push(ms);
    }
    noop.sort();
    eprintln!(
        "no-op apply on docker (3 runs): min {:.2}s median {:.2}s max {:.2}s",
        noop[0] as f64 / 1000.0,
        noop[1] as f64 / 1000.0,
        noop[2] as f64 / 1000.0
    );
    assert_eq!(ids(&c), before, "a no-op apply re-created a container");

    // A changed alert rule: Prometheus reloads it in place (same container) and serves it.
    let text = std::fs::read_to_string(&s.env.file).unwrap();
    std::fs::write(
        &s.env.file,
        text.replace(
            "  alerts: {}",
            "  alerts:\n    rules:\n      - {alert: DockerE2eProbe, expr: vector(1) > 2, for: 1m, severity: warning, team: sre, summary: probe}",
        ),
    )
    .unwrap();
    let (actions, _) = s.apply();
    assert_eq!(
        actions.get("prometheus"),
        Some(&Action::Reload),
        "{actions:?}"
    );
    assert!(
        groups(&prom).contains(&"DockerE2eProbe".to_string()),
        "the new rule is served"
    );
    assert_eq!(
        ids(&c)
            .into_iter()
            .find(|(n, _)| n.ends_with("-prometheus")),
        before.into_iter().find(|(n, _)| n.ends_with("-prometheus")),
        "reloaded in place, not re-created"
    );

    // A reloadable change under unpaced load: HAProxy's balance changes (master-worker reload)
    // while clients hammer PostgreSQL through HAProxy's read and write ports and the backend
    // through Envoy (whose /health reaches PostgreSQL through HAProxy): zero failed requests,
    // and nothing but HAProxy is touched.
    let before = ids(&c);
    let text = std::fs::read_to_string(&s.env.file).unwrap();
    std::fs::write(
        &s.env.file,
        text.replace("  haproxy: {}", "  haproxy: {balance: leastconn}"),
    )
    .unwrap();
    let (ok, failed) = under_load(
        &[port(5435), port(5436)],
        &s.secret("postgres-app-password"),
        &format!("{envoy}/health"),
        || {
            let (actions, _) = s.apply();
            assert_eq!(actions.get("haproxy"), Some(&Action::Reload), "{actions:?}");
        },
    );
    eprintln!("under an haproxy reload on docker: {ok:?} ok / {failed:?} failed (pg, http)");
    assert!(
        ok.0 > 20 && ok.1 > 50,
        "too little load to show anything: {ok:?}"
    );
    assert_eq!(failed, (0, 0), "requests failed during the reload");
    assert_eq!(ids(&c), before, "a reload re-created a container");

    // Destroy keeping data: no container or network left, the data volumes stay and a new apply
    // finds the data (the table written above).
    let left =
        s.rt.teardown(s.applied().map(|a| a.bundle).as_ref(), true)
            .unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(c.containers(&name).unwrap().is_empty());
    assert!(c.networks(&name).unwrap().is_empty());
    let kept = c.volumes(&name).unwrap();
    for v in [
        "postgres-0",
        "postgres-1",
        "postgres-2",
        "redis",
        "prometheus",
    ] {
        assert!(
            kept.contains(&format!("bssctl-{name}-{v}-data")),
            "volume of {v} not kept: {kept:?}"
        );
    }
    let (actions, _) = s.apply();
    assert!(
        actions.values().all(|a| *a == Action::Create),
        "{actions:?}"
    );
    let mut w = s.pg(port(5436), "bss_app", "postgres-app-password", "bss");
    let n: i64 = w
        .query_one("SELECT count(*) FROM e2e_writes", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the kept data is served again");
    drop(w);

    // Teardown: no container, network or volume of the environment is left.
    let left = s.rt.teardown(None, false).unwrap();
    assert!(left.is_empty(), "{left:?}");
    assert!(c.containers(&name).unwrap().is_empty());
    assert!(c.volumes(&name).unwrap().is_empty());
    // Also by name: a volume the engine made on the fly would carry no label.
    let out = std::process::Command::new("docker")
        .args([
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("name=bssctl-{name}-"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "volumes left"
    );
    assert!(c.networks(&name).unwrap().is_empty());
}

/// The CLI on Docker: `apply` killed with SIGKILL in the middle converges on the next apply;
/// `status` (text and `-o json`), `logs` and `switchover` answer as on the local runtime; the
/// brokers run on storage s3 (the kafka-store container) and a produced event is consumed; a
/// replica is scaled out and in (slot, container and volume); `destroy --keep-data` keeps only
/// the volumes and `destroy` leaves nothing.
#[test]
fn cli_on_docker_converges_after_kill_reports_switches_scales_and_destroys() {
    let name = format!("e2ec{}", std::process::id() % 10_000);
    let mut s = Stack::new(
        &name,
        "  postgres: {replicas: 1}\n  haproxy: {}\n  kafka: {storage: s3}\n",
    );
    let offset = s.env.offset;
    let port = move |p: u16| p + offset;
    let c = Client::connect().unwrap();
    let file = s.env.file.clone();
    // `bssctl --runtime docker <args> FILE <extra>`.
    let cli_with = |args: &[&str], extra: &[&str]| -> (i32, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bssctl"))
            .args(["--runtime", "docker"])
            .args(args)
            .arg(&file)
            .args(extra)
            .env_remove("BSSCTL_STATE_DIR")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cli = |args: &[&str]| cli_with(args, &[]);
    let names = |c: &Client| -> Vec<String> {
        let mut v: Vec<String> = c
            .containers(&name)
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        v.sort();
        v
    };

    // kill -9 of bssctl once the replica's base backup (or the replica) has started.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bssctl"))
        .args(["--runtime", "docker", "apply", "--no-agent"])
        .arg(&s.env.file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let replica = format!("{name}-postgres-1");
    wait_until(
        "the replica's task or container to appear",
        Duration::from_secs(600),
        || {
            let n = names(&c);
            if n.iter().any(|x| x.starts_with(&replica)) {
                Ok(())
            } else {
                Err(format!("{n:?}"))
            }
        },
    );
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let (code, _, err) = cli(&["apply", "--no-agent"]);
    assert_eq!(code, 0, "the apply after kill -9 did not converge:\n{err}");

    // status: every component healthy, same columns as on the local runtime.
    let (code, out, _) = cli(&["status"]);
    assert_eq!(code, 0, "not every component healthy:\n{out}");
    assert!(
        out.starts_with(&format!("environment {name}  agent not running")),
        "{out}"
    );
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("component")
                && l.contains("state")
                && l.contains("health")
                && l.contains("role")),
        "{out}"
    );
    for (comp, role) in [
        ("postgres-0", "primary"),
        ("postgres-1", "replica"),
        ("haproxy", ""),
        ("kafka-store", ""),
        ("kafka-0", ""),
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{comp} "))
                && l.contains("healthy")
                && l.contains(role)),
            "{comp}: {out}"
        );
    }
    let (code, out, _) = cli(&["-o", "json", "status"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["environment"], name.as_str());
    let comps = v["components"].as_array().unwrap();
    assert_eq!(comps.len(), 5, "{out}");
    assert!(comps.iter().all(|c| c["healthy"] == true), "{out}");

    // logs: the container's own output.
    let (code, out, err) = cli_with(&["logs"], &["postgres-0", "-n", "50"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("database system is ready to accept connections"),
        "{out}"
    );
    let (code, _, err) = cli_with(&["logs"], &["nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("no component `nosuch`"), "{err}");

    // The brokers on storage s3: the store is a container of its own with a data volume, and
    // an event produced through the broker is consumed back.
    assert!(names(&c).contains(&format!("{name}-kafka-store")));
    assert!(c
        .volumes(&name)
        .unwrap()
        .contains(&format!("bssctl-{name}-kafka-store-data")));
    let k = s.t.kafka.as_ref().unwrap().brokers[0].clone();
    assert!(k.storage_url.starts_with("s3://"), "{}", k.storage_url);
    let broker = format!("tcp://{}:{}", k.endpoint.host, k.endpoint.port);
    let produce = format!(
        "echo '{{\"key\": \"s3\", \"value\": {{\"probe\": \"on-s3\"}}}}' | tansu cat produce bss.analytics.events --broker {broker} -"
    );
    s.rt.exec(
        &k.name,
        &Task::Tool {
            program: "sh".into(),
            args: vec!["-c".into(), produce],
        },
    )
    .unwrap();
    let consume = |s: &mut Stack| -> String {
        s.rt.exec(
            &k.name,
            &Task::Tool {
                program: "tansu".into(),
                args: [
                    "cat",
                    "consume",
                    "bss.analytics.events",
                    "--broker",
                    &broker,
                    "--max-wait-time-ms",
                    "2000",
                ]
                .map(String::from)
                .to_vec(),
            },
        )
        .unwrap()
    };
    assert!(consume(&mut s).contains("on-s3"));
    // The event is in the store, not in the broker: it survives a re-created broker.
    c.remove(&format!("{name}-kafka-0")).unwrap();
    let (code, _, err) = cli(&["apply", "--no-agent"]);
    assert_eq!(code, 0, "{err}");
    let after = consume(&mut s);
    assert!(after.contains("on-s3"), "lost with the broker: {after}");

    let slots = |s: &Stack, p: u16| -> Vec<String> {
        let mut su = s.pg(p, "postgres", "postgres-superuser-password", "postgres");
        su.query("SELECT slot_name FROM pg_replication_slots ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(slots(&s, port(5432)), vec!["postgres_1"]);

    // Scale out: postgres-2 is cloned with its own slot and streams; HAProxy reloads in place.
    let text = std::fs::read_to_string(&s.env.file).unwrap();
    let ids = |c: &Client| -> Vec<(String, String)> {
        c.containers(&name)
            .unwrap()
            .into_iter()
            .map(|o| (o.name, o.id))
            .collect()
    };
    let before = ids(&c);
    std::fs::write(&s.env.file, text.replace("replicas: 1", "replicas: 2")).unwrap();
    let (code, _, err) = cli(&["apply", "--no-agent"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(slots(&s, port(5432)), vec!["postgres_1", "postgres_2"]);
    wait_until("postgres-2 streaming", Duration::from_secs(30), || {
        let mut su = s.pg(
            port(5432),
            "postgres",
            "postgres-superuser-password",
            "postgres",
        );
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .map_err(|e| e.to_string())?
            .get(0);
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} streaming"))
        }
    });
    let now = ids(&c);
    for comp in ["postgres-0", "postgres-1", "haproxy"] {
        let id =
            |v: &[(String, String)]| v.iter().find(|x| x.0 == format!("{name}-{comp}")).cloned();
        assert_eq!(
            id(&before),
            id(&now),
            "{comp} was re-created by the scale-out"
        );
    }

    // Scale in: postgres-2's container, slot and volume are gone.
    std::fs::write(&s.env.file, &text).unwrap();
    let (code, _, err) = cli(&["apply", "--no-agent"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(slots(&s, port(5432)), vec!["postgres_1"]);
    assert!(!names(&c).contains(&format!("{name}-postgres-2")));
    assert!(!c
        .volumes(&name)
        .unwrap()
        .contains(&format!("bssctl-{name}-postgres-2-data")));

    // switchover without an agent: postgres-1 becomes the primary, HAProxy follows.
    let (code, _, err) = cli_with(&["switchover"], &["--to", "postgres-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("switchover postgres-0 -> postgres-1 done"),
        "{err}"
    );
    let (code, out, _) = cli(&["-o", "json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["primary"], "postgres-1", "{out}");
    let role = |n: &str| {
        v["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .map(|c| c["role"].clone())
    };
    assert_eq!(role("postgres-1"), Some("primary".into()), "{out}");
    assert_eq!(code, 0, "{out}");
    let mut w = s.pg(port(5436), "bss_app", "postgres-app-password", "bss");
    let p: i32 = w
        .query_one("SELECT inet_server_port()", &[])
        .unwrap()
        .get(0);
    assert_eq!(p as u16, port(5433), "writes go to the new primary");
    drop(w);

    // With the agent (a host process): status names it, and switchover goes through its API
    // (token under the host state root) back to postgres-0.
    let (code, _, err) = cli(&["apply"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cli(&["status"]);
    assert!(
        out.lines().next().is_some_and(|l| l.contains("agent pid ")),
        "{out}"
    );
    let (code, _, err) = cli_with(&["switchover"], &["--to", "postgres-0"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("switchover postgres-1 -> postgres-0 done"),
        "{err}"
    );
    let (_, out, _) = cli(&["-o", "json", "status"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["primary"], "postgres-0", "{out}");
    assert!(v["agent_pid"].is_u64(), "{out}");

    // destroy --keep-data: only the volumes are left; destroy: nothing is left.
    let (code, _, err) = cli(&["destroy", "--keep-data"]);
    assert_eq!(code, 0, "{err}");
    assert!(names(&c).is_empty());
    assert!(c.networks(&name).unwrap().is_empty());
    assert!(
        !c.volumes(&name).unwrap().is_empty(),
        "--keep-data kept no volume"
    );
    let (code, _, err) = cli(&["destroy"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("no container, network or volume"), "{err}");
    assert!(names(&c).is_empty());
    assert!(c.networks(&name).unwrap().is_empty());
    assert!(c.volumes(&name).unwrap().is_empty());
}
