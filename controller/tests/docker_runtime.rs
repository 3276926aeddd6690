//! The Docker runtime under the engine, against the real engine and real components: apply of
//! PostgreSQL (primary + streaming replica), HAProxy and Redis as containers, then psql through
//! HAProxy, a streaming replica, Redis with its password, a no-op re-apply, a verified reload,
//! and teardown leaving no container, network or volume. Builds the images it needs when missing;
//! fails naming the install step when Docker is absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use controller::docker::client::Client;
use controller::docker::runtime::{host_view, Docker};
use controller::engine::clients::Clients;
use controller::engine::{self, FileStore, RealClients, Runtime};
use controller::plan::{self, Action};
use controller::render;
use controller::topology::{self, ValidateOptions};

fn psql(port: u16, user: &str, password: &str, sql: &str) -> (bool, String) {
    let out = Command::new(support::require_tool("psql"))
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            "bss",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn postgres_haproxy_and_redis_converge_as_containers() {
    if let Err(e) = Client::connect() {
        panic!("{e}");
    }
    let name = format!("dkr{}", std::process::id() % 100_000);
    let env = support::StackEnv::new(
        "bssctl-docker-",
        &name,
        "  postgres: {replicas: 1, replication: {mode: async}}\n  haproxy: {check: {interval: 1s, rise: 1, fall: 2, timeout: 1s}}\n  redis: {}\n",
    );
    let opts = ValidateOptions {
        runtime: Some(controller::topology::types::RuntimeKind::Docker),
        ..Default::default()
    };
    let l = topology::load(&env.file, &opts).expect("valid topology");
    let t = l.validated.clone();
    let root = env.root.clone();
    let host = host_view(&t, &root);
    let store = FileStore::new(&host);
    let cl = RealClients::new(&t, Arc::new(FileStore::new(&host)));
    let tera = render::load_templates(None).unwrap();
    let bundle = render::render(&t, &tera).unwrap();
    let mut rt = Docker::new(&t, &root);
    struct Teardown(Docker);
    let apply = |rt: &mut Docker, applied: Option<&controller::state::Applied>| {
        let redactor = plan::Redactor::new(vec![]);
        let mut p = plan::plan(&bundle, applied.map(|a| &a.bundle), &redactor);
        engine::converge::adjust_plan(&mut p, &rt.capabilities());
        let mut rep = controller::progress::TextReporter {
            start: std::time::Instant::now(),
            journal: None,
            verbose: true,
        };
        engine::apply(rt, &cl, &store, &mut rep, &t, &bundle, &p, applied, None)
    };
    let first = apply(&mut rt, None);
    let guard = Teardown(Docker::new(&t, &root));
    let report = first.unwrap_or_else(|e| panic!("apply failed: {e}"));
    assert!(
        report.actions.values().all(|a| *a == Action::Create),
        "{:?}",
        report.actions
    );
    eprintln!("cold apply on docker: {} ms", report.millis);

    let h = t.haproxy.as_ref().unwrap();
    let pg = t.postgres.as_ref().unwrap();
    let app_pw = std::fs::read_to_string(root.join("secret-values/postgres-app-password")).unwrap();
    let (ok, out) = psql(
        h.write.port,
        &pg.user,
        app_pw.trim(),
        "select pg_is_in_recovery()",
    );
    assert!(
        ok && out.trim() == "f",
        "writes through HAProxy reach the primary: {out}"
    );
    let (ok, out) = psql(
        h.write.port,
        &pg.user,
        app_pw.trim(),
        "create table if not exists t(x int); insert into t values (1); select count(*) from t",
    );
    assert!(ok, "{out}");
    let su_pw =
        std::fs::read_to_string(root.join("secret-values/postgres-superuser-password")).unwrap();
    let primary_port = pg.primary_member().unwrap().port;
    let (ok, out) = psql(
        primary_port,
        &pg.superuser,
        su_pw.trim(),
        "select state from pg_stat_replication",
    );
    assert!(ok && out.contains("streaming"), "replica streams: {out}");
    let (ok, out) = psql(
        h.read.port,
        &pg.user,
        app_pw.trim(),
        "select pg_is_in_recovery()",
    );
    assert!(ok && out.trim() == "t", "reads go to the replica: {out}");

    let r = t.redis.as_ref().unwrap();
    cl.redis_ping(
        &rt,
        "redis",
        r.endpoint.port,
        r.password_secret.as_deref(),
        Duration::from_secs(5),
    )
    .expect("redis answers PING with its password");

    // No-op re-apply: nothing restarts.
    let applied = store_applied(&host);
    let again = apply(&mut rt, applied.as_ref()).unwrap();
    assert!(
        again.actions.values().all(|a| *a == Action::None),
        "{:?}",
        again.actions
    );
    eprintln!("no-op apply on docker: {} ms", again.millis);

    let left = {
        let mut g = guard;
        g.0.teardown(Some(&bundle), false).unwrap()
    };
    assert!(left.is_empty(), "left after teardown: {left:?}");
    let c = Client::connect().unwrap();
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

    impl Drop for Teardown {
        fn drop(&mut self) {
            let _ = self.0.teardown(None, false);
        }
    }
}

fn store_applied(
    host: &controller::topology::model::ValidatedTopology,
) -> Option<controller::state::Applied> {
    controller::state::read_applied(host).unwrap()
}
