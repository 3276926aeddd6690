//! Scenario tests of the engine on the fake world (`engine::fake`): converge order and health
//! gating, rollback of a failed reload, supervision of crashed components, the detection rules,
//! fence-before-promote ordering, and a failover interrupted half-way finished from its intent.
//! The same engine runs against real components in the e2e and chaos suites.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::failover::{self, EventKind, EventStatus, FailoverEvent, Knowledge, Services};
use super::fake::{FakeClients, FakeRouter, FakeRuntime, FakeStore, Shared, World};
use super::runtime::Runtime;
use super::{detect, Env, NullReporter, RuntimeFactory};
use crate::plan::{self, Action};
use crate::render::{self, Bundle, Kind};
use crate::topology::model::ValidatedTopology;

const STACK: &str = "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: scen}\nspec:\n  postgres: {replicas: 2}\n  haproxy: {}\n  redis: {}\n  kafka: {}\n  backend: {}\n  envoy: {}\n  prometheus: {}\n  alertmanager: {}\n";

fn topology(text: &str) -> ValidatedTopology {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.yaml");
    std::fs::write(&f, text).unwrap();
    let opts = crate::topology::ValidateOptions {
        base_dir: dir.path().to_path_buf(),
        state_dir: Some(dir.path().join("s")),
        runtime: None,
    };
    crate::topology::load(&f, &opts).unwrap().validated
}

fn bundle(t: &ValidatedTopology) -> Bundle {
    render::render(t, &render::load_templates(None).unwrap()).unwrap()
}

fn world() -> Shared {
    let w = World {
        write_server: Some("postgres-0".into()),
        ..Default::default()
    };
    Arc::new(Mutex::new(w))
}

/// Applies `b` on the fake world; returns the result and the log.
fn apply(
    s: &Shared,
    t: &ValidatedTopology,
    b: &Bundle,
    old: Option<&Bundle>,
) -> Result<std::collections::BTreeMap<String, Action>, String> {
    let mut rt = FakeRuntime(s.clone());
    let cl = FakeClients(s.clone());
    let store = FakeStore(s.clone());
    let p = plan::plan(b, old, &plan::Redactor::new(Vec::new()));
    let applied = old.map(|o| crate::state::Applied {
        bundle: o.clone(),
        topology: Some(t.clone()),
        primary: Some("postgres-0".into()),
        applied_at: 0,
        templates: None,
    });
    super::apply(
        &mut rt,
        &cl,
        &store,
        &mut NullReporter,
        t,
        b,
        &p,
        applied.as_ref(),
        None,
    )
    .map(|r| r.actions)
    .map_err(|e| e.to_string())
}

fn starts(s: &Shared) -> Vec<String> {
    s.lock()
        .unwrap()
        .log
        .iter()
        .filter_map(|l| l.strip_prefix("start ").map(String::from))
        .collect()
}

#[test]
fn converge_starts_in_dependency_order_and_is_idempotent() {
    let t = topology(STACK);
    let b = bundle(&t);
    let s = world();
    let done = apply(&s, &t, &b, None).unwrap();
    assert!(done.values().all(|a| *a == Action::Create), "{done:?}");
    let order = starts(&s);
    let kinds: Vec<u8> = order.iter().map(|n| b.components[n].kind.order()).collect();
    assert!(
        kinds.windows(2).all(|w| w[0] <= w[1]),
        "start order follows the kinds' order: {order:?}"
    );
    assert_eq!(order.first().map(String::as_str), Some("postgres-0"));
    // Every replica is created from a base backup after the primary's bootstrap.
    let log = s.lock().unwrap().log.clone();
    let boot = log
        .iter()
        .position(|l| l == "pg postgres-0 Bootstrap")
        .unwrap();
    let bb = log
        .iter()
        .position(|l| l == "exec postgres-1 PgBaseBackup")
        .unwrap();
    assert!(boot < bb, "{log:?}");
    // Same bundle again: nothing is started, stopped or written.
    s.lock().unwrap().log.clear();
    let again = apply(&s, &t, &b, Some(&b)).unwrap();
    assert!(again.values().all(|a| *a == Action::None), "{again:?}");
    let log = s.lock().unwrap().log.clone();
    assert!(
        !log.iter()
            .any(|l| l.starts_with("start ") || l.starts_with("stop ") || l.starts_with("put ")),
        "{log:?}"
    );
}

#[test]
fn a_failed_health_gate_stops_the_apply_before_later_components() {
    let t = topology(STACK);
    let b = bundle(&t);
    let s = world();
    s.lock().unwrap().unhealthy.insert("redis".into());
    let err = apply(&s, &t, &b, None).unwrap_err();
    assert!(err.contains("redis") && err.contains("health"), "{err}");
    let order = starts(&s);
    assert!(order.contains(&"redis".to_string()));
    let redis_order = b.components["redis"].kind.order();
    for n in &order {
        assert!(
            b.components[n].kind.order() <= redis_order,
            "{n} started after a failed gate: {order:?}"
        );
    }
}

#[test]
fn a_rejected_reload_rolls_back_to_the_previous_files() {
    let t = topology(STACK);
    let b = bundle(&t);
    let s = world();
    apply(&s, &t, &b, None).unwrap();
    // A new HAProxy config that `haproxy -c` rejects.
    let mut b2 = b.clone();
    let h = b2.components.get_mut("haproxy").unwrap();
    let cfg = h.files.get_mut("haproxy.cfg").unwrap();
    cfg.push_str("\n# BROKEN\n");
    s.lock().unwrap().reject_marker = Some("BROKEN".into());
    s.lock().unwrap().log.clear();
    let err = apply(&s, &t, &b2, Some(&b)).unwrap_err();
    assert!(err.contains("haproxy") && err.contains("reload"), "{err}");
    let w = s.lock().unwrap();
    assert_eq!(
        w.comps["haproxy"].files, b.components["haproxy"].files,
        "the previous files are back"
    );
    assert!(w.comps["haproxy"].running, "haproxy keeps serving");
    // The rejected files are never signalled; the rollback reloads the previous ones.
    let puts: Vec<usize> = (0..w.log.len())
        .filter(|i| w.log[*i] == "put haproxy")
        .collect();
    assert_eq!(puts.len(), 2, "{:?}", w.log);
    assert!(
        !w.log[puts[0]..puts[1]]
            .iter()
            .any(|l| l == "signal haproxy USR2"),
        "a config the check rejected is never signalled: {:?}",
        w.log
    );
}

#[test]
fn a_reload_is_a_restart_where_the_runtime_cannot_reload() {
    let t = topology(STACK);
    let b = bundle(&t);
    let mut b2 = b.clone();
    let p = b2.components.get_mut("prometheus").unwrap();
    let f = p.files.keys().next().unwrap().clone();
    p.files.get_mut(&f).unwrap().push_str("\n# changed\n");
    let mut pl = plan::plan(&b2, Some(&b), &plan::Redactor::new(Vec::new()));
    assert_eq!(pl.get("prometheus").unwrap().action, Action::Reload);
    let caps = super::Capabilities {
        name: "immutable",
        envoy_hot_restart: false,
        live_files: false,
        members_follow_roles: false,
        concurrent_tasks: false,
    };
    super::converge::adjust_plan(&mut pl, &caps);
    let c = pl.get("prometheus").unwrap();
    assert_eq!(c.action, Action::Restart);
    assert!(c.reason.contains("immutable runtime"), "{}", c.reason);
}

#[test]
fn supervision_restarts_a_crashed_component_but_never_the_primary() {
    let t = topology(STACK);
    let b = bundle(&t);
    let s = world();
    apply(&s, &t, &b, None).unwrap();
    {
        let mut w = s.lock().unwrap();
        w.comps.get_mut("redis").unwrap().running = false;
        w.comps.get_mut("postgres-0").unwrap().running = false;
        w.log.clear();
    }
    let mut sup = super::supervise::Supervisor::default();
    let mut rt = FakeRuntime(s.clone());
    let cl = FakeClients(s.clone());
    let store = FakeStore(s.clone());
    let now = Instant::now();
    for (name, c) in b.ordered() {
        let o = rt.observe(name);
        let seen = super::supervise::Seen {
            kind: c.kind,
            running: o.as_ref().is_some_and(|o| o.running),
            is_primary: name == "postgres-0",
            failover_on: true,
        };
        if sup.decide(now, name, seen) == super::supervise::Decision::Restart {
            Env {
                t: &t,
                rt: &mut rt,
                cl: &cl,
                store: &store,
                rep: &mut NullReporter,
            }
            .restart_crashed(name, c, 1)
            .unwrap();
            sup.restarted(now, name);
        }
    }
    let w = s.lock().unwrap();
    assert!(w.comps["redis"].running);
    assert_eq!(w.comps["redis"].restarts, 1);
    assert!(!w.comps["postgres-0"].running, "{:?}", w.log);
    assert!(!w.log.iter().any(|l| l == "start postgres-0"));
}

fn services(s: &Shared) -> Services {
    let s2 = s.clone();
    let make: RuntimeFactory =
        Arc::new(move |_: &ValidatedTopology| Box::new(FakeRuntime(s2.clone())) as _);
    Services {
        store: Arc::new(FakeStore(s.clone())),
        clients: Arc::new(FakeClients(s.clone())),
        runtime: make,
        router: Arc::new(FakeRouter(s.clone())),
    }
}

fn applied_stack(s: &Shared) -> (ValidatedTopology, Bundle) {
    let t = topology(STACK);
    let b = bundle(&t);
    apply(s, &t, &b, None).unwrap();
    (t, b)
}

fn failover_event(to: &str) -> FailoverEvent {
    FailoverEvent {
        id: 1,
        kind: EventKind::Failover,
        from: "postgres-0".into(),
        to: to.into(),
        reason: "test".into(),
        status: EventStatus::Running,
        detected_ms: failover::now_ms(),
        ..Default::default()
    }
}

#[test]
fn failover_fences_before_it_promotes_and_records_the_new_primary() {
    let s = world();
    applied_stack(&s);
    {
        let mut w = s.lock().unwrap();
        w.comps.get_mut("postgres-0").unwrap().running = false;
        w.log.clear();
    }
    let svc = services(&s);
    let mut ev = failover_event("postgres-1");
    failover::failover(&svc, &mut ev, &mut NullReporter, &mut |_| {}).unwrap();
    let w = s.lock().unwrap();
    let at = |e: &str| {
        w.index_of(e)
            .unwrap_or_else(|| panic!("no `{e}` in {:?}", w.log))
    };
    let fence_router = at("router fence postgres-0");
    let kill = at("stop postgres-0 Kill");
    let promote = at("pg postgres-1 Promote");
    let route = at("router route postgres-1");
    let record = at("record primary postgres-1");
    assert!(fence_router < kill && kill < promote, "{:?}", w.log);
    assert!(promote < route && route < record, "{:?}", w.log);
    assert!(
        w.rewind.contains("postgres-0"),
        "the old primary must be rewound"
    );
    assert!(
        w.comps["postgres-0"].standby,
        "it may only come back as a replica"
    );
    assert!(w.intent.is_none());
    assert_eq!(w.history.len(), 1);
    assert_eq!(w.history[0].status, EventStatus::Done);
    assert_eq!(
        w.applied
            .as_ref()
            .and_then(|a| a.primary.clone())
            .as_deref(),
        Some("postgres-1")
    );
}

#[test]
fn an_agent_killed_mid_failover_finishes_from_the_intent() {
    let s = world();
    applied_stack(&s);
    {
        let mut w = s.lock().unwrap();
        w.comps.get_mut("postgres-0").unwrap().running = false;
        // The first promotion attempt dies with the agent.
        w.promote_failures = 1;
    }
    let svc = services(&s);
    let mut ev = failover_event("postgres-1");
    assert!(failover::failover(&svc, &mut ev, &mut NullReporter, &mut |_| {}).is_err());
    let intent = s.lock().unwrap().intent.clone().expect("the intent stays");
    assert!(intent.fenced_ms.is_some(), "fenced before it died");
    assert_eq!(
        s.lock()
            .unwrap()
            .applied
            .as_ref()
            .and_then(|a| a.primary.clone())
            .as_deref(),
        Some("postgres-0"),
        "nothing recorded yet"
    );
    // A new agent: it finds the intent and finishes the same failover.
    let mut ev = svc.store.intent().unwrap();
    failover::resume(&svc, &mut ev, &mut NullReporter, &mut |_| {}).unwrap();
    let w = s.lock().unwrap();
    assert!(w.intent.is_none());
    assert_eq!(w.history.len(), 1);
    assert_eq!(w.history[0].to, "postgres-1");
    assert_eq!(
        w.applied
            .as_ref()
            .and_then(|a| a.primary.clone())
            .as_deref(),
        Some("postgres-1")
    );
    assert_eq!(w.write_server.as_deref(), Some("postgres-1"));
}

#[test]
fn no_failover_for_a_dead_replica_or_while_replicas_hear_the_primary() {
    let s = world();
    let (t, _) = applied_stack(&s);
    let rt = FakeRuntime(s.clone());
    let cl = FakeClients(s.clone());
    let window = Duration::from_secs(3);
    // A dead replica: the primary keeps answering, the detector stays healthy.
    s.lock()
        .unwrap()
        .comps
        .get_mut("postgres-2")
        .unwrap()
        .running = false;
    let mut d = detect::Detector::new(Instant::now());
    let t0 = Instant::now();
    for i in 1..=20 {
        let views = failover::observe_all(&t, &rt, &cl, Duration::from_millis(100));
        let ok = views
            .iter()
            .any(|v| v.name == "postgres-0" && v.role.as_deref() == Some("primary"));
        assert_eq!(
            d.observe(t0 + Duration::from_millis(500 * i), ok, window),
            detect::Verdict::Healthy
        );
    }
    // The primary is unreachable for this controller, but a replica streams from it.
    let mut views = failover::observe_all(&t, &rt, &cl, Duration::from_millis(100));
    let port = t.postgres.as_ref().unwrap().primary_member().unwrap().port;
    for v in &mut views {
        if v.name == "postgres-1" {
            v.wal_receiver_status = Some("streaming".into());
            v.last_msg_age_seconds = Some(0.2);
            v.sender_port = Some(i32::from(port));
        }
    }
    assert!(detect::primary_heard_by_replicas(&t, &views).is_some());
    // And when no replica answers at all, nothing is promoted.
    let none: Vec<_> = views
        .iter()
        .filter(|v| v.name == "postgres-0")
        .cloned()
        .collect();
    assert!(failover::choose(&t, "postgres-0", &none, &Knowledge::default()).is_err());
    let _ = Kind::Postgres;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn failover_renders_with_the_templates_the_apply_used() {
    let s = world();
    let (t, b) = applied_stack(&s);
    // A --templates directory whose HAProxy template differs from the embedded one.
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates");
    copy_dir(&repo, dir.path());
    let tpl = dir.path().join("haproxy/haproxy.cfg.tera");
    let mut text = std::fs::read_to_string(&tpl).unwrap();
    text.push_str("\n# rendered from the user's templates\n");
    std::fs::write(&tpl, text).unwrap();
    {
        let mut w = s.lock().unwrap();
        let a = w.applied.as_mut().unwrap();
        a.templates = Some(dir.path().display().to_string());
        w.comps.get_mut("postgres-0").unwrap().running = false;
    }
    let svc = services(&s);
    let mut ev = failover_event("postgres-1");
    failover::failover(&svc, &mut ev, &mut NullReporter, &mut |_| {}).unwrap();
    let w = s.lock().unwrap();
    let cfg = &w.comps["haproxy"].files["haproxy.cfg"];
    assert!(cfg.contains("rendered from the user's templates"), "{cfg}");
    assert_ne!(cfg, &b.components["haproxy"].files["haproxy.cfg"]);
    let _ = t;
}

#[test]
fn the_observers_start_as_one_wave_and_a_failed_gate_in_it_fails_the_apply() {
    let t = topology(STACK);
    let b = bundle(&t);
    let wave: Vec<String> = b
        .ordered()
        .into_iter()
        .filter(|(_, c)| c.kind == Kind::Prometheus || c.kind == Kind::Alertmanager)
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(wave.len(), 2, "the stack has both observers: {wave:?}");
    let s = world();
    s.lock().unwrap().unhealthy.insert(wave[0].clone());
    let err = apply(&s, &t, &b, None).unwrap_err();
    assert!(err.contains(&wave[0]) && err.contains("health"), "{err}");
    // Every member of the wave was started before the gate failed (they do not depend on one
    // another), and nothing of an earlier kind was left out.
    let order = starts(&s);
    for n in &wave {
        assert!(order.contains(n), "{n} not started: {order:?}");
    }
    assert_eq!(order.len(), b.components.len(), "{order:?}");
}

#[test]
fn fresh_replicas_are_cloned_together_and_a_failed_copy_is_taken_up_by_the_next_apply() {
    let t = topology(STACK);
    let b = bundle(&t);
    let s = world();
    s.lock()
        .unwrap()
        .failing_tasks
        .insert("postgres-2 PgBaseBackup".into());
    let err = apply(&s, &t, &b, None).unwrap_err();
    assert!(
        err.contains("postgres-2") && err.contains("injected failure"),
        "{err}"
    );
    {
        let w = s.lock().unwrap();
        let at = |e: &str| {
            w.index_of(e)
                .unwrap_or_else(|| panic!("no {e:?} in {:?}", w.log))
        };
        // Both copies were asked for before either replica started, after the primary's roles.
        let (b1, b2) = (
            at("exec postgres-1 PgBaseBackup"),
            at("exec postgres-2 PgBaseBackup"),
        );
        assert!(at("start postgres-0") < b1.min(b2), "{:?}", w.log);
        assert!(w.index_of("start postgres-1").is_none(), "{:?}", w.log);
        assert!(w.comps["postgres-1"].initialized);
        assert!(!w.comps["postgres-2"].initialized);
    }
    // The next apply keeps the finished copy and clones only the one that failed.
    s.lock().unwrap().failing_tasks.clear();
    let before = s.lock().unwrap().log.len();
    apply(&s, &t, &b, None).unwrap();
    let w = s.lock().unwrap();
    let again: Vec<&String> = w.log[before..]
        .iter()
        .filter(|l| l.ends_with("PgBaseBackup"))
        .collect();
    assert_eq!(again, ["exec postgres-2 PgBaseBackup"], "{:?}", w.log);
    for m in ["postgres-1", "postgres-2"] {
        assert!(
            w.comps[m].running && w.comps[m].standby,
            "{m}: {:?}",
            w.comps[m]
        );
    }
}
