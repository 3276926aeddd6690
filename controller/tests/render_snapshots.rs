//! Rendering at two levels: golden snapshots of every file of every fixture topology, and targeted
//! assertions on parsed output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use controller::render::{self, Bundle};
use serde_yaml::Value;

fn render_fixture(path: &std::path::Path) -> Bundle {
    let l = support::load_fixed(path);
    let tera = render::load_templates(None).unwrap();
    render::render(&l.validated, &tera).unwrap()
}

#[test]
fn golden_snapshots_of_every_fixture() {
    for (name, path) in support::valid_topologies() {
        let b = render_fixture(&path);
        let mut all = String::new();
        for (comp, cb) in &b.components {
            all.push_str(&format!(
                "=== {comp} ({:?}) launch: {} {}\n",
                cb.kind,
                cb.launch.program,
                cb.launch.args.join(" ")
            ));
            for (file, content) in &cb.files {
                all.push_str(&format!("--- {comp}/{file}\n{content}\n"));
            }
        }
        insta::assert_snapshot!(name, all);
    }
}

#[test]
fn rendering_is_deterministic() {
    for (_, path) in support::valid_topologies() {
        let a = render_fixture(&path);
        let b = render_fixture(&path);
        assert_eq!(a, b, "{} renders differently twice", path.display());
        for (name, c) in &a.components {
            assert_eq!(c.hash(), b.components[name].hash());
        }
    }
}

fn yaml(b: &Bundle, comp: &str, file: &str) -> Value {
    serde_yaml::from_str(&b.components[comp].files[file]).unwrap()
}

#[test]
fn minimal_file_expands_to_the_full_stack() {
    let b =
        render_fixture(&support::repo_root().join("controller/tests/fixtures/valid/minimal.yaml"));
    let names: Vec<&str> = b.components.keys().map(String::as_str).collect();
    for want in [
        "postgres-0",
        "postgres-1",
        "postgres-2",
        "haproxy",
        "redis",
        "kafka-0",
        "backend",
        "customer-analytics",
        "order-processor",
        "envoy",
        "node-exporter",
        "postgres-exporter-0",
        "postgres-exporter-1",
        "postgres-exporter-2",
        "redis-exporter",
        "prometheus",
        "alertmanager",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // Seeds' defaults.
    assert!(b.components["postgres-0"].files["postgresql.conf"].contains("port = 5432"));
    assert!(b.components["postgres-2"].files["postgresql.conf"].contains("port = 5434"));
    assert!(b.components["haproxy"].files["haproxy.cfg"].contains(":5435"));
    let prom = yaml(&b, "prometheus", "prometheus.yml");
    let jobs: Vec<&str> = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    for j in [
        "prometheus",
        "alertmanager",
        "node",
        "postgres",
        "redis",
        "haproxy",
        "envoy",
        "backend",
        "bssctl",
    ] {
        assert!(jobs.contains(&j), "job {j} missing: {jobs:?}");
    }
}

#[test]
fn replicas_stream_from_the_primary_with_their_slot() {
    let b = render_fixture(&support::repo_root().join("topology.yaml"));
    let primary = &b.components["postgres-0"];
    assert!(!primary.files.contains_key("standby.signal"));
    assert!(!primary.files["postgresql.conf"].contains("primary_conninfo"));
    for (i, name) in ["postgres-1", "postgres-2"].iter().enumerate() {
        let c = &b.components[*name];
        assert_eq!(c.files.get("standby.signal").map(String::as_str), Some(""));
        let conf = &c.files["postgresql.conf"];
        assert!(
            conf.contains("primary_conninfo = 'host=127.0.0.1 port=5432 user=replicator"),
            "{conf}"
        );
        assert!(conf.contains(&format!("primary_slot_name = 'postgres_{}'", i + 1)));
        assert!(conf.contains(&format!("application_name={name}")));
    }
}

#[test]
fn sync_mode_lists_any_n_standbys_and_priorities() {
    let l = support::load_fixed(
        &support::repo_root().join("controller/tests/fixtures/valid/sync-replication.yaml"),
    );
    let pg = l.validated.postgres.as_ref().unwrap();
    assert_eq!(
        pg.synchronous_standby_names,
        "ANY 2 (\"postgres-1\", \"postgres-2\", \"postgres-3\")"
    );
    assert_eq!(pg.member("postgres-1").unwrap().priority, 200);
    assert_eq!(pg.member("postgres-3").unwrap().priority, 0);
    assert_eq!(pg.members[0].port, 5532, "portOffset 100 shifts 5432");
    // After a failover to postgres-1 the standby list names the others.
    let moved = l.validated.with_primary("postgres-1").unwrap();
    assert_eq!(
        moved.postgres.unwrap().synchronous_standby_names,
        "ANY 2 (\"postgres-0\", \"postgres-2\", \"postgres-3\")"
    );
}

#[test]
fn envoy_enforces_the_seeds_rate_limit_retries_and_breakers() {
    let b = render_fixture(&support::repo_root().join("topology.yaml"));
    let text = &b.components["envoy"].files["envoy.yaml"];
    let e = yaml(&b, "envoy", "envoy.yaml");
    // The admin on a unix socket (0600); the seeds' admin port serves only
    // GET /stats/prometheus and /ready, on loopback.
    assert!(e["admin"]["address"]["socket_address"].is_null());
    assert_eq!(e["admin"]["address"]["pipe"]["mode"].as_u64(), Some(0o600));
    let stats = e["static_resources"]["listeners"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|l| l["name"].as_str() == Some("bssctl_admin_stats"))
        .unwrap();
    assert_eq!(
        stats["address"]["socket_address"]["address"].as_str(),
        Some("127.0.0.1")
    );
    assert_eq!(
        stats["address"]["socket_address"]["port_value"].as_u64(),
        Some(15000)
    );
    assert!(text.contains("max_tokens: 100"), "{text}");
    assert!(text.contains("tokens_per_fill: 10"));
    assert!(text.contains("fill_interval: 60s"));
    assert!(text.contains("5xx,reset,connect-failure"));
    assert!(text.contains("num_retries: 3"));
    for k in [
        "max_connections: 100",
        "max_pending_requests: 100",
        "max_requests: 100",
        "max_retries: 3",
    ] {
        assert!(text.contains(k), "{k} missing");
    }
    assert!(text.contains("envoy.filters.http.cors"));
    assert!(text.contains("/health/ready"));
}

#[test]
fn haproxy_writes_only_to_the_primary_and_reads_from_replicas() {
    let b = render_fixture(&support::repo_root().join("topology.yaml"));
    let cfg = &b.components["haproxy"].files["haproxy.cfg"];
    let server_lines = |section_port: &str| -> Vec<String> {
        let start = cfg
            .find(section_port)
            .unwrap_or_else(|| panic!("{section_port} not in\n{cfg}"));
        cfg[start..]
            .lines()
            .skip(1)
            .take_while(|l| {
                !l.trim_start().starts_with("listen")
                    && !l.trim_start().starts_with("frontend")
                    && !l.trim_start().starts_with("backend")
            })
            .filter(|l| l.trim_start().starts_with("server"))
            .map(String::from)
            .collect()
    };
    let _ = server_lines;
    assert!(
        cfg.contains("pgsql-check"),
        "PostgreSQL must be checked with its own protocol, not HTTP"
    );
    let lines: Vec<&str> = cfg
        .lines()
        .filter(|l| l.trim_start().starts_with("server "))
        .collect();
    let p0: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("127.0.0.1:5432"))
        .collect();
    assert!(
        p0.iter()
            .any(|l| !l.contains("disabled") && !l.contains("backup")),
        "primary must be an enabled write server: {lines:?}"
    );
    assert!(
        p0.iter().any(|l| l.contains("backup")),
        "primary is the read fallback: {lines:?}"
    );
    for port in ["5433", "5434"] {
        let r: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains(&format!("127.0.0.1:{port}")))
            .collect();
        assert!(
            r.iter().any(|l| l.contains("disabled")),
            "replica {port} is a disabled write server: {lines:?}"
        );
        assert!(
            r.iter()
                .any(|l| !l.contains("disabled") && !l.contains("backup")),
            "replica {port} serves reads: {lines:?}"
        );
    }
    assert!(
        cfg.contains("${HAPROXY_STATS_PASSWORD}") || cfg.contains("\"$HAPROXY_STATS_PASSWORD\""),
        "stats password comes from the environment"
    );
    assert!(
        cfg.contains("expose-fd listeners"),
        "seamless reload needs the listeners passed over"
    );
}

#[test]
fn no_secret_value_is_rendered() {
    for (_, path) in support::valid_topologies() {
        let l = support::load_fixed(&path);
        let b = render_fixture(&path);
        for (comp, c) in &b.components {
            for (f, content) in &c.files {
                assert!(!content.contains("check-only-secret-value"), "{comp}/{f}");
                for name in l.validated.secrets.keys() {
                    // Secrets appear only as file references.
                    for line in content.lines().filter(|x| x.contains(name.as_str())) {
                        assert!(
                            line.contains("/secrets/") || line.contains("secrets"),
                            "{comp}/{f}: {line}"
                        );
                    }
                }
            }
        }
    }
}
