//! In-cluster failover by the operator, with the engine's detector and failover sequence over
//! the Kubernetes seams (`k8s::failover`): the core-kind calls go to the in-memory API
//! (`k8s_support::fake_api`), the members' answers come from scripted clients in the style of
//! the engine's fake-runtime scenarios. What is proven: a corroborated primary death leads to
//! fence (roles ConfigMap fence marker, label off, pod deleted at once), promotion of the best
//! replica, `-rw` following the labels, the status record (currentPrimary, targetPrimary cleared,
//! timestamps, history), the old primary unfenced to rejoin by rewinding, and a reconcile
//! afterwards keeping the new roles; every request is allowed by the operator's RBAC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controller::engine::clients::{ClientError, Clients, Method, PgOp, PgReply};
use controller::engine::failover::MemberView;
use controller::engine::runtime::{Endpoint, Runtime};
use controller::k8s::failover::{self, Cluster, Monitor, Round, StatusStore};
use controller::k8s::labels;
use controller::k8s::operator::{self, Context};
use controller::k8s::rbac;
use controller::k8s::resource::TopologyResource;
use controller::k8s::roles::RoleState;
use controller::topology::model::PgMember;
use controller::topology::status::RoleChangeKind;
use k8s_support::fake_api::{self, Shared};
use kube::ResourceExt;
use serde_json::json;

const NS: &str = "shop";
const TOPO: &str = "/apis/bssctl.io/v1alpha1/namespaces/shop/topologies";
const PODS: &str = "/api/v1/namespaces/shop/pods";
const CMS: &str = "/api/v1/namespaces/shop/configmaps";

/// One member as the probes see it.
#[derive(Clone, Debug)]
struct Member {
    up: bool,
    primary: bool,
    lsn: u64,
    /// A replica's WAL receiver still streams from the primary.
    streaming: bool,
}

/// Scripted members: SQL and probes answer from this table (no PostgreSQL here: the real one is
/// exercised by `k8s_instance.rs` and the engine's chaos tests).
#[derive(Default)]
struct Script {
    members: Mutex<BTreeMap<String, Member>>,
    /// The port the replicas' WAL receivers stream from (the primary's).
    primary_port: Mutex<u16>,
    /// When set: a member whose pod was deleted is down, and once the primary is down the
    /// replicas have received its shutdown checkpoint (a clean shutdown sends it).
    pods: Mutex<Option<Shared>>,
    ops: Mutex<Vec<(String, String)>>,
}

impl Script {
    fn set(&self, name: &str, f: impl FnOnce(&mut Member)) {
        f(self.members.lock().unwrap().get_mut(name).unwrap());
    }
}

impl Clients for Script {
    fn pg(
        &self,
        _rt: &dyn Runtime,
        m: &PgMember,
        op: &PgOp,
        _timeout: Duration,
    ) -> Result<PgReply, ClientError> {
        self.ops
            .lock()
            .unwrap()
            .push((m.name.clone(), format!("{op:?}")));
        let mut all = self.members.lock().unwrap();
        let me = all.get_mut(&m.name).unwrap();
        if !me.up {
            return Err(ClientError::Connect {
                target: m.name.clone(),
                detail: "connection refused".into(),
            });
        }
        Ok(match op {
            PgOp::InRecovery => PgReply::Bool(!me.primary),
            PgOp::Promote { .. } => {
                me.primary = true;
                PgReply::Bool(true)
            }
            PgOp::ReloadConf => PgReply::Errors(Vec::new()),
            PgOp::Replication => PgReply::Replication(Vec::new()),
            _ => PgReply::Done,
        })
    }

    fn member_view(&self, _ep: &Endpoint, m: &PgMember, _timeout: Duration) -> MemberView {
        if let Some(api) = self.pods.lock().unwrap().as_ref() {
            let gone = |n: &str| {
                api.lock()
                    .unwrap()
                    .get(PODS, &format!("shop-{n}-0"))
                    .is_none()
            };
            let mut all = self.members.lock().unwrap();
            let primary = all
                .iter()
                .find(|(_, v)| v.primary)
                .map(|(k, v)| (k.clone(), v.lsn));
            if let Some((p, lsn)) = primary {
                if gone(&p) && all[&p].up {
                    all.get_mut(&p).unwrap().up = false;
                    for v in all.values_mut().filter(|v| !v.primary) {
                        v.lsn = lsn + 40;
                        v.streaming = false;
                    }
                }
            }
        }
        let all = self.members.lock().unwrap();
        let me = &all[&m.name];
        if !me.up {
            return MemberView {
                name: m.name.clone(),
                priority: m.priority,
                error: "connection refused".into(),
                ..MemberView::default()
            };
        }
        MemberView {
            name: m.name.clone(),
            priority: m.priority,
            reachable: true,
            role: Some(if me.primary { "primary" } else { "replica" }.into()),
            current_lsn: me.primary.then_some(me.lsn),
            receive_lsn: (!me.primary).then_some(me.lsn),
            replay_lsn: (!me.primary).then_some(me.lsn),
            wal_receiver_status: (!me.primary)
                .then(|| if me.streaming { "streaming" } else { "waiting" }.into()),
            last_msg_age_seconds: (!me.primary && me.streaming).then_some(0.1),
            sender_port: (!me.primary && me.streaming)
                .then_some(i32::from(*self.primary_port.lock().unwrap())),
            ..MemberView::default()
        }
    }

    fn http(
        &self,
        _rt: &dyn Runtime,
        c: &str,
        _port: u16,
        _method: Method,
        _path: &str,
        _timeout: Duration,
    ) -> Result<(u16, String), ClientError> {
        Err(ClientError::Unknown(c.into()))
    }

    fn redis_ping(
        &self,
        _rt: &dyn Runtime,
        c: &str,
        _port: u16,
        _password_secret: Option<&str>,
        _timeout: Duration,
    ) -> Result<(), ClientError> {
        Err(ClientError::Unknown(c.into()))
    }

    fn tcp(&self, _rt: &dyn Runtime, _c: &str, _port: u16, _timeout: Duration) -> bool {
        false
    }
}

fn text() -> String {
    "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: shop}\nspec:\n  postgres: {replicas: 2}\n".into()
}

fn stored(api: &Shared, name: &str) -> TopologyResource {
    serde_json::from_value(api.lock().unwrap().get(TOPO, name).unwrap().clone()).unwrap()
}

fn pod(member: &str, ready: bool) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": format!("shop-{member}-0"), "namespace": NS, "labels": {
            labels::INSTANCE: "shop", labels::NAME: "postgres", labels::BSS_COMPONENT: member}},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "postgres", "ready": ready, "restartCount": 0, "image": "x", "imageID": "x"}]}})
}

fn role_label(api: &Shared, member: &str) -> Option<String> {
    api.lock()
        .unwrap()
        .get(PODS, &format!("shop-{member}-0"))
        .and_then(|p| {
            p["metadata"]["labels"][labels::ROLE]
                .as_str()
                .map(String::from)
        })
}

fn roles(api: &Shared) -> RoleState {
    let a = api.lock().unwrap();
    let cm = a.get(CMS, "shop-postgres-roles").unwrap();
    let data: BTreeMap<String, String> = serde_json::from_value(cm["data"].clone()).unwrap();
    RoleState::from_data(&data).unwrap()
}

#[test]
fn a_corroborated_primary_death_fails_over_in_the_cluster() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = fake_api::shared();
    let l = k8s_support::load_k8s_str(&text());
    let mut r = TopologyResource::from_topology(&l.topology, NS);
    r.metadata.uid = Some("topo-uid-1".into());
    r.metadata.generation = Some(1);
    api.lock()
        .unwrap()
        .insert(TOPO, serde_json::to_value(&r).unwrap());
    for m in ["postgres-0", "postgres-1", "postgres-2"] {
        api.lock().unwrap().insert(PODS, pod(m, true));
    }
    let client = rt.block_on(async { fake_api::client(api.clone()) });
    let tera = controller::render::load_templates(None).unwrap();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some("test".into()),
        tera.clone(),
    ));
    // Finalizer, then the objects (the roles ConfigMap, the Secret), labels and status.
    for _ in 0..2 {
        rt.block_on(operator::reconcile(
            Arc::new(stored(&api, "shop")),
            ctx.clone(),
        ))
        .unwrap();
    }
    assert_eq!(role_label(&api, "postgres-0").as_deref(), Some("primary"));
    assert_eq!(roles(&api).primary, "postgres-0");

    let script = Arc::new(Script::default());
    for (m, primary, lsn) in [
        ("postgres-0", true, 1000),
        ("postgres-1", false, 990),
        ("postgres-2", false, 980),
    ] {
        script.members.lock().unwrap().insert(
            m.into(),
            Member {
                up: true,
                primary,
                lsn,
                streaming: !primary,
            },
        );
    }
    let cluster = Cluster {
        client: client.clone(),
        handle: rt.handle().clone(),
        namespace: NS.into(),
        env: "shop".into(),
    };
    let obj = stored(&api, "shop");
    let base = operator::validate(&obj).unwrap();
    *script.primary_port.lock().unwrap() = base.postgres.as_ref().unwrap().members[0].port;
    let window =
        Duration::from_millis(base.postgres.as_ref().unwrap().failover.detection_window.ms);
    let store = Arc::new(
        rt.block_on(StatusStore::load(&cluster, &obj, &base, &tera))
            .unwrap(),
    );
    let svc = failover::services(&cluster, store.clone(), script.clone());
    let mut rep = controller::engine::NullReporter;
    let t0 = Instant::now();
    let mut monitor = Monitor::new(t0);

    // The engine's seams are blocking: run the rounds off the runtime's threads.
    let round = |m: &mut Monitor, at: Instant, rep: &mut controller::engine::NullReporter| {
        std::thread::scope(|s| s.spawn(|| m.round(&svc, &cluster, at, rep)).join().unwrap())
    };
    assert_eq!(round(&mut monitor, t0, &mut rep), Round::Healthy);

    // The primary's pod dies; the replicas lose its WAL stream: a corroborated death.
    script.set("postgres-0", |m| m.up = false);
    script.set("postgres-1", |m| m.streaming = false);
    script.set("postgres-2", |m| m.streaming = false);
    api.lock().unwrap().insert(PODS, pod("postgres-0", false));
    let mut at = t0 + Duration::from_millis(10);
    let mut outcome = round(&mut monitor, at, &mut rep);
    assert!(
        matches!(outcome, Round::Waiting(_)),
        "one failed probe is only suspect: {outcome:?}"
    );
    let mut rounds = 1;
    while !matches!(outcome, Round::FailedOver(_) | Round::Failed(_)) {
        at += Duration::from_millis(500);
        outcome = round(&mut monitor, at, &mut rep);
        rounds += 1;
        assert!(rounds < 200, "no failover: {outcome:?}");
    }
    let Round::FailedOver(ev) = outcome else {
        panic!("the failover did not finish: {outcome:?}")
    };
    // Corroborated: a third of the configured window, not the whole of it.
    assert!(
        at - t0 < window,
        "failed over after {:?}, window {window:?}",
        at - t0
    );
    assert_eq!(
        (ev.from.as_str(), ev.to.as_str()),
        ("postgres-0", "postgres-1")
    );
    assert!(ev.fenced_ms.is_some() && ev.promoted_ms.is_some() && ev.rerouted_ms.is_some());
    // The members follow the roles ConfigMap: no re-point step is refused after the role change.
    assert!(ev.detail.is_empty(), "after the failover: {}", ev.detail);

    // Promoted through SQL at its pod address; the others' slots ensured on it.
    let ops = script.ops.lock().unwrap().clone();
    assert!(ops.contains(&("postgres-1".into(), "Promote { wait_seconds: 30 }".into())));
    assert!(ops
        .iter()
        .any(|(m, o)| m == "postgres-1" && o.contains("EnsureSlot")));

    // Fenced by the pod's deletion; -rw follows the label to postgres-1.
    assert!(
        api.lock().unwrap().get(PODS, "shop-postgres-0-0").is_none(),
        "the old primary's pod was deleted"
    );
    assert!(api
        .lock()
        .unwrap()
        .requests
        .iter()
        .any(|(m, u, _)| m == "DELETE" && u.contains("/pods/shop-postgres-0-0")));
    assert_eq!(role_label(&api, "postgres-1").as_deref(), Some("primary"));
    assert_eq!(role_label(&api, "postgres-2").as_deref(), Some("replica"));
    // Roles: fence (1), promote (2), then unfence (3) so the entrypoint rewinds it.
    let s = roles(&api);
    assert_eq!(s.primary, "postgres-1");
    assert!(s.fenced.is_empty());
    assert_eq!(s.epoch, 3);

    // The record in the status.
    let st = stored(&api, "shop").status.unwrap();
    assert_eq!(st.current_primary.as_deref(), Some("postgres-1"));
    assert!(st.current_primary_timestamp.is_some());
    assert_eq!(st.target_primary, None, "no failover in progress any more");
    assert_eq!(st.history.len(), 1);
    let h = &st.history[0];
    assert_eq!(h.kind, RoleChangeKind::Failover);
    assert_eq!(
        (h.from.as_str(), h.to.as_str()),
        ("postgres-0", "postgres-1")
    );
    assert!(h.finished_at.is_some());
    assert!(h.reason.contains("unreachable"), "{}", h.reason);

    // The StatefulSet recreates the pod: the next reconcile keeps the new roles and labels it a
    // replica, and never writes the old primary back.
    api.lock().unwrap().insert(PODS, pod("postgres-0", false));
    rt.block_on(operator::reconcile(
        Arc::new(stored(&api, "shop")),
        ctx.clone(),
    ))
    .unwrap();
    let s = roles(&api);
    assert_eq!((s.primary.as_str(), s.epoch), ("postgres-1", 3));
    assert_eq!(role_label(&api, "postgres-0").as_deref(), Some("replica"));
    assert_eq!(role_label(&api, "postgres-1").as_deref(), Some("primary"));
    let st = stored(&api, "shop").status.unwrap();
    assert_eq!(st.current_primary.as_deref(), Some("postgres-1"));
    assert_eq!(st.history.len(), 1, "the reconcile keeps the history");

    // A healthy new primary: the next round is quiet.
    script.set("postgres-1", |m| {
        m.primary = true;
        m.lsn = 1100
    });
    assert_eq!(
        round(&mut monitor, at + Duration::from_secs(1), &mut rep),
        Round::Healthy
    );

    for (m, uri, _) in &api.lock().unwrap().requests {
        let a = rbac::attributes(m, uri).unwrap();
        assert!(
            rbac::allows(rbac::CLUSTER, &a.group, &a.resource, &a.verb),
            "RBAC does not grant {a:?} ({m} {uri})"
        );
    }
}

#[test]
fn a_primary_the_replicas_still_hear_is_not_failed_over() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = fake_api::shared();
    let l = k8s_support::load_k8s_str(&text());
    let mut r = TopologyResource::from_topology(&l.topology, NS);
    r.metadata.uid = Some("topo-uid-1".into());
    r.metadata.generation = Some(1);
    api.lock()
        .unwrap()
        .insert(TOPO, serde_json::to_value(&r).unwrap());
    for m in ["postgres-0", "postgres-1", "postgres-2"] {
        api.lock().unwrap().insert(PODS, pod(m, true));
    }
    let client = rt.block_on(async { fake_api::client(api.clone()) });
    let tera = controller::render::load_templates(None).unwrap();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some("test".into()),
        tera.clone(),
    ));
    for _ in 0..2 {
        rt.block_on(operator::reconcile(
            Arc::new(stored(&api, "shop")),
            ctx.clone(),
        ))
        .unwrap();
    }
    let script = Arc::new(Script::default());
    for (m, primary) in [
        ("postgres-0", true),
        ("postgres-1", false),
        ("postgres-2", false),
    ] {
        script.members.lock().unwrap().insert(
            m.into(),
            Member {
                up: !primary,
                primary,
                lsn: 100,
                streaming: !primary,
            },
        );
    }
    let cluster = Cluster {
        client,
        handle: rt.handle().clone(),
        namespace: NS.into(),
        env: "shop".into(),
    };
    let obj = stored(&api, "shop");
    let base = operator::validate(&obj).unwrap();
    *script.primary_port.lock().unwrap() = base.postgres.as_ref().unwrap().members[0].port;
    let store = Arc::new(
        rt.block_on(StatusStore::load(&cluster, &obj, &base, &tera))
            .unwrap(),
    );
    let svc = failover::services(&cluster, store, script.clone());
    let t0 = Instant::now();
    let mut monitor = Monitor::new(t0);
    let mut rep = controller::engine::NullReporter;
    // Only the operator lost the primary: its pod serves and the replicas stream from it.
    let mut last = Round::Healthy;
    for i in 1..=120u64 {
        let at = t0 + Duration::from_millis(500 * i);
        last = std::thread::scope(|s| {
            s.spawn(|| monitor.round(&svc, &cluster, at, &mut rep))
                .join()
                .unwrap()
        });
        assert!(matches!(last, Round::Waiting(_)), "round {i}: {last:?}");
    }
    let Round::Waiting(why) = last else {
        unreachable!()
    };
    assert!(why.contains("replicas still receive WAL"), "{why}");
    assert_eq!(roles(&api).epoch, 0, "nothing was fenced");
    assert_eq!(role_label(&api, "postgres-0").as_deref(), Some("primary"));
}

#[test]
fn a_switchover_stops_the_primary_cleanly_and_promotes_the_caught_up_target() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = fake_api::shared();
    let l = k8s_support::load_k8s_str(&text());
    let mut r = TopologyResource::from_topology(&l.topology, NS);
    r.metadata.uid = Some("topo-uid-1".into());
    r.metadata.generation = Some(1);
    api.lock()
        .unwrap()
        .insert(TOPO, serde_json::to_value(&r).unwrap());
    for m in ["postgres-0", "postgres-1", "postgres-2"] {
        api.lock().unwrap().insert(PODS, pod(m, true));
    }
    let client = rt.block_on(async { fake_api::client(api.clone()) });
    let tera = controller::render::load_templates(None).unwrap();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some("test".into()),
        tera.clone(),
    ));
    for _ in 0..2 {
        rt.block_on(operator::reconcile(
            Arc::new(stored(&api, "shop")),
            ctx.clone(),
        ))
        .unwrap();
    }
    let script = Arc::new(Script::default());
    for (m, primary) in [
        ("postgres-0", true),
        ("postgres-1", false),
        ("postgres-2", false),
    ] {
        script.members.lock().unwrap().insert(
            m.into(),
            Member {
                up: true,
                primary,
                lsn: 500,
                streaming: !primary,
            },
        );
    }
    *script.pods.lock().unwrap() = Some(api.clone());
    let cluster = Cluster {
        client,
        handle: rt.handle().clone(),
        namespace: NS.into(),
        env: "shop".into(),
    };
    let obj = stored(&api, "shop");
    let base = operator::validate(&obj).unwrap();
    *script.primary_port.lock().unwrap() = base.postgres.as_ref().unwrap().members[0].port;
    let store = Arc::new(
        rt.block_on(StatusStore::load(&cluster, &obj, &base, &tera))
            .unwrap(),
    );
    let svc = failover::services(&cluster, store, script.clone());
    let mut rep = controller::engine::NullReporter;
    let run = |to: Option<&str>, rep: &mut controller::engine::NullReporter| {
        std::thread::scope(|s| {
            s.spawn(|| failover::switchover(&svc, &cluster, to, rep))
                .join()
                .unwrap()
        })
    };
    // Refused without touching anything: the target must be a healthy replica.
    assert!(run(Some("postgres-0"), &mut rep)
        .unwrap_err()
        .contains("already the primary"));
    assert!(run(Some("postgres-9"), &mut rep)
        .unwrap_err()
        .contains("no member"));
    assert_eq!(roles(&api).epoch, 0);

    let ev = run(Some("postgres-2"), &mut rep).unwrap();
    assert_eq!(
        (ev.from.as_str(), ev.to.as_str()),
        ("postgres-0", "postgres-2")
    );
    // The old primary was stopped with its grace period first (a fast shutdown), then the
    // sequence's kill found it gone.
    let deletes: Vec<String> = api
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|(m, u, _)| m == "DELETE" && u.contains("/pods/"))
        .map(|(_, u, _)| u.clone())
        .collect();
    assert!(deletes[0].contains("shop-postgres-0-0"), "{deletes:?}");
    let ops = script.ops.lock().unwrap().clone();
    assert!(ops.contains(&("postgres-2".into(), "Promote { wait_seconds: 30 }".into())));
    let s = roles(&api);
    assert_eq!(s.primary, "postgres-2");
    assert!(s.fenced.is_empty(), "the old primary rejoins by rewinding");
    assert_eq!(role_label(&api, "postgres-2").as_deref(), Some("primary"));
    assert_eq!(role_label(&api, "postgres-1").as_deref(), Some("replica"));
    let st = stored(&api, "shop").status.unwrap();
    assert_eq!(st.current_primary.as_deref(), Some("postgres-2"));
    assert_eq!(st.history.len(), 1);
    assert_eq!(st.history[0].kind, RoleChangeKind::Switchover);
    for (m, uri, _) in &api.lock().unwrap().requests {
        let a = rbac::attributes(m, uri).unwrap();
        assert!(
            rbac::allows(rbac::CLUSTER, &a.group, &a.resource, &a.verb),
            "RBAC does not grant {a:?} ({m} {uri})"
        );
    }
}

#[test]
fn the_command_line_asks_for_a_switchover_reads_logs_and_destroys() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = fake_api::shared();
    let l = k8s_support::load_k8s_str(&text());
    let mut r = TopologyResource::from_topology(&l.topology, NS);
    r.metadata.uid = Some("topo-uid-1".into());
    r.metadata.generation = Some(1);
    api.lock()
        .unwrap()
        .insert(TOPO, serde_json::to_value(&r).unwrap());
    for m in ["postgres-0", "postgres-1", "postgres-2"] {
        api.lock().unwrap().insert(PODS, pod(m, true));
    }
    let client = rt.block_on(async { fake_api::client(api.clone()) });
    let tera = controller::render::load_templates(None).unwrap();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some("test".into()),
        tera.clone(),
    ));
    for _ in 0..2 {
        rt.block_on(operator::reconcile(
            Arc::new(stored(&api, "shop")),
            ctx.clone(),
        ))
        .unwrap();
    }

    // `bssctl logs --runtime kubernetes`: the component's pod, the last lines only.
    rt.block_on(controller::k8s::client::logs(
        &client,
        NS,
        "shop",
        "postgres-1",
        5,
    ))
    .unwrap();
    assert!(api
        .lock()
        .unwrap()
        .requests
        .iter()
        .any(|(m, u, _)| m == "GET"
            && u.contains("/pods/shop-postgres-1-0/log")
            && u.contains("tailLines=5")));
    let err = rt
        .block_on(controller::k8s::client::logs(
            &client, NS, "shop", "nope", 5,
        ))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("failed to find a pod of component `nope`"),
        "{err}"
    );

    // `bssctl switchover --runtime kubernetes --to postgres-1`: the annotation, the operator's
    // switchover, the history entry the command waits for, the annotation removed.
    let script = Arc::new(Script::default());
    for (m, primary) in [
        ("postgres-0", true),
        ("postgres-1", false),
        ("postgres-2", false),
    ] {
        script.members.lock().unwrap().insert(
            m.into(),
            Member {
                up: true,
                primary,
                lsn: 700,
                streaming: !primary,
            },
        );
    }
    *script.pods.lock().unwrap() = Some(api.clone());
    let cluster = Cluster {
        client: client.clone(),
        handle: rt.handle().clone(),
        namespace: NS.into(),
        env: "shop".into(),
    };
    let asked = rt.spawn({
        let client = client.clone();
        async move {
            controller::k8s::client::switchover(
                &client,
                NS,
                "shop",
                Some("postgres-1"),
                Duration::from_secs(60),
            )
            .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let obj = loop {
        let o = stored(&api, "shop");
        if o.annotations()
            .contains_key(failover::SWITCHOVER_ANNOTATION)
        {
            break o;
        }
        assert!(Instant::now() < deadline, "no switchover annotation");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        obj.annotations()[failover::SWITCHOVER_ANNOTATION],
        "postgres-1"
    );
    let base = operator::validate(&obj).unwrap();
    *script.primary_port.lock().unwrap() = base.postgres.as_ref().unwrap().members[0].port;
    let store = Arc::new(
        rt.block_on(StatusStore::load(&cluster, &obj, &base, &tera))
            .unwrap(),
    );
    let svc = failover::services(&cluster, store, script.clone());
    let mut rep = controller::engine::NullReporter;
    let done = std::thread::scope(|s| {
        s.spawn(|| failover::switchover_if_annotated(&svc, &cluster, &obj, &mut rep))
            .join()
            .unwrap()
    })
    .expect("the annotation asks for a switchover")
    .unwrap();
    assert_eq!(done.to, "postgres-1");
    let rc = rt.block_on(asked).unwrap().unwrap();
    assert_eq!(
        (rc.from.as_str(), rc.to.as_str()),
        ("postgres-0", "postgres-1")
    );
    assert_eq!(rc.kind, RoleChangeKind::Switchover);
    assert!(!stored(&api, "shop")
        .annotations()
        .contains_key(failover::SWITCHOVER_ANNOTATION));

    // `bssctl destroy --runtime kubernetes`: deleted (the fake has no finalizer semantics; the
    // real API server test covers the finalizer), then a second destroy finds nothing.
    assert!(rt
        .block_on(controller::k8s::client::destroy(
            &client,
            NS,
            "shop",
            Duration::from_secs(5)
        ))
        .unwrap());
    assert!(!rt
        .block_on(controller::k8s::client::destroy(
            &client,
            NS,
            "shop",
            Duration::from_secs(5)
        ))
        .unwrap());
}
