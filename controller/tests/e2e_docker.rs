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
        .args(["-a", &s.secret("redis-password"), "ping"])
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
    let (code, body, _) = get(
        &format!("http://127.0.0.1:{}/api/v2/status", port(9093)),
        &[],
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
    let (actions, ms) = s.apply();
    eprintln!("no-op apply on docker: {:.2}s", ms as f64 / 1000.0);
    assert!(actions.values().all(|a| *a == Action::None), "{actions:?}");
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
