//! Reconcile scenarios against a mock API server (tower-test's mock service answering from an
//! in-memory store): finalizer added, every object applied server-side with owner references,
//! the Secret generated once, role labels moved, status conditions patched, orphans deleted, the
//! cleanup on deletion, the error policy; and every request checked against the operator's RBAC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use controller::k8s::labels;
use controller::k8s::operator::{self, Category, Context, FINALIZER};
use controller::k8s::rbac;
use controller::k8s::resource::TopologyResource;
use controller::topology::status::{ConditionStatus, ConditionType};
use k8s_support::fake_api::{self, Shared};
use kube::runtime::controller::Action;
use serde_json::json;

const NS: &str = "shop";
const TOPO: &str = "/apis/bssctl.io/v1alpha1/namespaces/shop/topologies";

fn resource(text: &str) -> TopologyResource {
    let l = k8s_support::load_k8s_str(text);
    let mut r = TopologyResource::from_topology(&l.topology, NS);
    r.metadata.uid = Some("topo-uid-1".into());
    r.metadata.generation = Some(1);
    r
}

fn minimal_text() -> String {
    std::fs::read_to_string(
        k8s_support::repo_root().join("controller/tests/fixtures/valid/minimal.yaml"),
    )
    .unwrap()
}

fn setup(text: &str) -> (Shared, Arc<Context>, TopologyResource) {
    let api = fake_api::shared();
    let r = resource(text);
    api.lock()
        .unwrap()
        .insert(TOPO, serde_json::to_value(&r).unwrap());
    let client = fake_api::client(api.clone());
    let ctx = Arc::new(Context::new(
        client,
        Some("test".into()),
        controller::render::load_templates(None).unwrap(),
    ));
    (api, ctx, r)
}

fn stored(api: &Shared, name: &str) -> TopologyResource {
    serde_json::from_value(api.lock().unwrap().get(TOPO, name).unwrap().clone()).unwrap()
}

async fn reconcile_stored(
    api: &Shared,
    ctx: &Arc<Context>,
    name: &str,
) -> Result<Action, operator::ReconcileError> {
    operator::reconcile(Arc::new(stored(api, name)), ctx.clone()).await
}

fn condition(r: &TopologyResource, t: ConditionType) -> (ConditionStatus, String) {
    let c = r
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap();
    (c.status, c.reason.clone())
}

fn coll(kind: &str) -> String {
    match kind {
        "StatefulSet" | "Deployment" | "DaemonSet" => {
            format!("/apis/apps/v1/namespaces/{NS}/{}s", kind.to_lowercase())
        }
        "PodDisruptionBudget" => format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets"),
        "NetworkPolicy" => format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"),
        k => format!("/api/v1/namespaces/{NS}/{}s", k.to_lowercase()),
    }
}

fn events(api: &Shared) -> Vec<String> {
    let a = api.lock().unwrap();
    a.objects
        .get(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"))
        .map(|c| {
            c.values()
                .map(|e| e["reason"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Every request the operator made is granted by the chart's ClusterRole (`rbac::CLUSTER`).
fn assert_requests_granted(api: &Shared) -> BTreeSet<(String, String, String)> {
    let mut seen = BTreeSet::new();
    for (m, uri, _) in &api.lock().unwrap().requests {
        let a =
            rbac::attributes(m, uri).unwrap_or_else(|| panic!("not a resource request: {m} {uri}"));
        assert!(
            rbac::allows(rbac::CLUSTER, &a.group, &a.resource, &a.verb),
            "RBAC does not grant {a:?} ({m} {uri})"
        );
        seen.insert((a.group, a.resource, a.verb));
    }
    seen
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_then_everything_is_applied_and_available() {
    let (api, ctx, r) = setup(&minimal_text());
    let name = r.metadata.name.clone().unwrap();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    let after = stored(&api, &name);
    assert_eq!(after.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    assert!(after.status.is_none(), "the finalizer pass applies nothing");

    let action = reconcile_stored(&api, &ctx, &name).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let (_, want) = operator::desired(&stored(&api, &name), &ctx).unwrap();
    {
        let a = api.lock().unwrap();
        for m in &want.objects {
            let o = a
                .get(&coll(&m.kind), &m.name)
                .unwrap_or_else(|| panic!("{} not applied", m.id()));
            assert_eq!(
                o["metadata"]["labels"][labels::OWNER_UID],
                "topo-uid-1",
                "{}",
                m.id()
            );
            assert_eq!(
                o["metadata"]["ownerReferences"][0]["uid"],
                "topo-uid-1",
                "{}",
                m.id()
            );
            assert_eq!(o["metadata"]["ownerReferences"][0]["controller"], true);
        }
        let patches: Vec<_> = a
            .requests
            .iter()
            .filter(|(m, _, c)| m == "PATCH" && c.contains("apply-patch"))
            .collect();
        assert_eq!(
            patches.len(),
            want.objects.len(),
            "one server-side apply per object"
        );
        assert!(patches
            .iter()
            .all(|(_, u, _)| u.contains("fieldManager=bssctl") && u.contains("force=true")));
        let secret = a
            .get(
                &format!("/api/v1/namespaces/{NS}/secrets"),
                "minimal-secrets",
            )
            .unwrap();
        assert!(secret["data"]["postgres-superuser-password"].is_string());
        assert!(secret["data"]["pgpass"].is_string());
    }
    let done = stored(&api, &name);
    let st = done.status.as_ref().unwrap();
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.current_primary.as_deref(), Some("postgres-0"));
    assert_eq!(st.objects, Some(want.objects.len() as u32));
    assert_eq!(
        condition(&done, ConditionType::Available).0,
        ConditionStatus::True
    );
    assert_eq!(
        condition(&done, ConditionType::Progressing).0,
        ConditionStatus::False
    );
    assert_eq!(
        condition(&done, ConditionType::Degraded).0,
        ConditionStatus::False
    );
    let ev = events(&api);
    assert!(
        ev.contains(&"Applied".to_string()) && ev.contains(&"Available".to_string()),
        "{ev:?}"
    );
    assert_requests_granted(&api);
}

#[tokio::test]
async fn the_secret_is_generated_once_and_never_rewritten() {
    let (api, ctx, r) = setup(&minimal_text());
    let name = r.metadata.name.clone().unwrap();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    let first = api
        .lock()
        .unwrap()
        .get(
            &format!("/api/v1/namespaces/{NS}/secrets"),
            "minimal-secrets",
        )
        .unwrap()
        .clone();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    let second = api
        .lock()
        .unwrap()
        .get(
            &format!("/api/v1/namespaces/{NS}/secrets"),
            "minimal-secrets",
        )
        .unwrap()
        .clone();
    assert_eq!(first["data"], second["data"]);
    let posts = api
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|(m, u, _)| m == "POST" && u.contains("/secrets"))
        .count();
    assert_eq!(posts, 1);
}

#[tokio::test]
async fn pods_not_ready_keep_it_progressing_and_requeue_soon() {
    let (api, ctx, r) = setup(&minimal_text());
    api.lock().unwrap().ready = false;
    let name = r.metadata.name.clone().unwrap();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    let action = reconcile_stored(&api, &ctx, &name).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let s = stored(&api, &name);
    assert_eq!(
        condition(&s, ConditionType::Available),
        (ConditionStatus::False, "WorkloadsNotReady".into())
    );
    assert_eq!(
        condition(&s, ConditionType::Progressing),
        (ConditionStatus::True, "RollingOut".into())
    );
    assert!(s.status.unwrap().ready.unwrap().starts_with("0/"));
}

#[tokio::test]
async fn orphans_of_this_owner_are_deleted_and_nothing_else() {
    let (api, ctx, r) = setup(&minimal_text());
    let name = r.metadata.name.clone().unwrap();
    let cm = |n: &str, uid: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n, "namespace": NS, "labels": {
            labels::MANAGED_BY: labels::MANAGER, labels::ENVIRONMENT: "minimal", labels::OWNER_UID: uid}}, "data": {}})
    };
    {
        let mut a = api.lock().unwrap();
        a.insert(
            &coll("ConfigMap"),
            cm("minimal-oldthing-config", "topo-uid-1"),
        );
        a.insert(
            &coll("ConfigMap"),
            cm("minimal-other-owner", "someone-else"),
        );
    }
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    let names = api.lock().unwrap().names(&coll("ConfigMap"));
    assert!(
        !names.contains(&"minimal-oldthing-config".to_string()),
        "orphan kept"
    );
    assert!(
        names.contains(&"minimal-other-owner".to_string()),
        "another owner's object deleted"
    );
    assert!(events(&api).contains(&"OrphanDeleted".to_string()));
    assert_requests_granted(&api);
}

#[tokio::test]
async fn role_labels_follow_the_current_primary() {
    let (api, ctx, r) = setup(&minimal_text());
    let name = r.metadata.name.clone().unwrap();
    {
        let mut a = api.lock().unwrap();
        for i in 0..3 {
            a.insert(&format!("/api/v1/namespaces/{NS}/pods"), json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": format!("minimal-postgres-{i}-0"), "namespace": NS, "labels": {
                    labels::INSTANCE: "minimal", labels::NAME: "postgres", labels::BSS_COMPONENT: format!("postgres-{i}")}}}));
        }
    }
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    let role = |i: usize| {
        api.lock()
            .unwrap()
            .get(
                &format!("/api/v1/namespaces/{NS}/pods"),
                &format!("minimal-postgres-{i}-0"),
            )
            .unwrap()["metadata"]["labels"][labels::ROLE]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(role(0).as_deref(), Some("primary"));
    assert_eq!(role(1).as_deref(), Some("replica"));
    // A switchover recorded in the roles ConfigMap (and the status) moves the labels: old
    // primary unlabelled first. The roles ConfigMap wins: the failover monitor writes it first.
    let mut s = stored(&api, &name);
    s.status.as_mut().unwrap().current_primary = Some("postgres-2".into());
    {
        let mut a = api.lock().unwrap();
        a.insert(TOPO, serde_json::to_value(&s).unwrap());
        let cms = format!("/api/v1/namespaces/{NS}/configmaps");
        let mut cm = a.get(&cms, "minimal-postgres-roles").unwrap().clone();
        cm["data"]["primary"] = json!("postgres-2");
        cm["data"]["epoch"] = json!("2");
        a.insert(&cms, cm);
    }
    let before = api.lock().unwrap().requests.len();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    assert_eq!(role(2).as_deref(), Some("primary"));
    assert_eq!(role(0).as_deref(), Some("replica"));
    let a = api.lock().unwrap();
    let pod_patches: Vec<&String> = a.requests[before..]
        .iter()
        .filter(|(m, u, _)| m == "PATCH" && u.contains("/pods/"))
        .map(|(_, u, _)| u)
        .collect();
    assert!(
        pod_patches[0].contains("minimal-postgres-0-0"),
        "old primary first: {pod_patches:?}"
    );
    assert_eq!(stored_primary(&a), Some("postgres-2".into()));
}

fn stored_primary(a: &fake_api::FakeApi) -> Option<String> {
    a.get(TOPO, "minimal").unwrap()["status"]["currentPrimary"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn deletion_runs_the_cleanup_and_releases_the_finalizer() {
    let (api, ctx, r) = setup(&minimal_text());
    let name = r.metadata.name.clone().unwrap();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    assert!(!api.lock().unwrap().names(&coll("StatefulSet")).is_empty());
    let mut s = stored(&api, &name);
    s.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    api.lock()
        .unwrap()
        .insert(TOPO, serde_json::to_value(&s).unwrap());
    let action = reconcile_stored(&api, &ctx, &name).await.unwrap();
    assert_eq!(action, Action::await_change());
    let a = api.lock().unwrap();
    for kind in operator::OWNED_KINDS {
        assert!(
            a.names(&coll(kind)).is_empty(),
            "{kind} left after cleanup: {:?}",
            a.names(&coll(kind))
        );
    }
    let topo = a.get(TOPO, &name).unwrap();
    assert!(
        topo["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty()),
        "{topo}"
    );
    drop(a);
    assert!(events(&api).contains(&"Deleted".to_string()));
    assert_requests_granted(&api);
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_waits_for_a_change() {
    let bad = "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: broken}\nspec:\n  postgres: {}\n";
    let (api, ctx, _) = setup(bad);
    // Make the stored spec invalid in a way the schema allows: haproxy without postgres.
    let mut s = stored(&api, "broken");
    s.spec.postgres = None;
    s.spec.haproxy = Some(Default::default());
    api.lock()
        .unwrap()
        .insert(TOPO, serde_json::to_value(&s).unwrap());
    reconcile_stored(&api, &ctx, "broken").await.unwrap(); // finalizer
    let err = reconcile_stored(&api, &ctx, "broken").await.unwrap_err();
    assert_eq!(err.category(), Category::WaitForChange);
    assert!(err.to_string().contains("haproxy"), "{err}");
    assert_eq!(
        operator::error_policy(Arc::new(s), &err, ctx.clone()),
        Action::await_change()
    );
    let st = stored(&api, "broken");
    assert_eq!(
        condition(&st, ConditionType::Degraded),
        (ConditionStatus::True, "InvalidSpec".into())
    );
    assert!(
        api.lock().unwrap().names(&coll("StatefulSet")).is_empty(),
        "nothing applied"
    );
    assert!(events(&api).contains(&"InvalidSpec".to_string()));
    assert!(ctx
        .metrics
        .render()
        .contains("category=\"wait_for_change\",reason=\"InvalidSpec\"} 1"));
}

#[tokio::test]
async fn api_failures_are_transient_and_retried() {
    let (api, ctx, r) = setup(&minimal_text());
    let name = r.metadata.name.clone().unwrap();
    reconcile_stored(&api, &ctx, &name).await.unwrap();
    // An API server that answers 503 to everything (etcd down).
    let bad = Arc::new(stored(&api, &name));
    let client = kube::Client::new(
        tower::service_fn(|_req: http::Request<kube::client::Body>| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(503)
                    .body(kube::client::Body::from(serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "reason": "ServiceUnavailable", "message": "etcd is down"})).unwrap()))
                    .unwrap(),
            )
        }),
        NS,
    );
    let down = Arc::new(Context::new(
        client,
        None,
        controller::render::load_templates(None).unwrap(),
    ));
    let err = operator::reconcile(bad.clone(), down.clone())
        .await
        .unwrap_err();
    assert_eq!(err.category(), Category::Transient, "{err}");
    assert_eq!(
        operator::error_policy(bad, &err, down),
        Action::requeue(Duration::from_secs(5))
    );
}

#[test]
fn rbac_grants_nothing_the_operator_does_not_call() {
    // Requests of the scenarios above, plus what happens outside reconcile: the Controller's
    // watches and the Lease. Grants no request shows are listed with why they are needed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen = rt.block_on(async {
        let (api, ctx, r) = setup(&minimal_text());
        let name = r.metadata.name.clone().unwrap();
        {
            let mut a = api.lock().unwrap();
            a.insert(&format!("/api/v1/namespaces/{NS}/pods"), json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": "minimal-postgres-0-0", "namespace": NS, "labels": {
                    labels::INSTANCE: "minimal", labels::NAME: "postgres", labels::BSS_COMPONENT: "postgres-0"}}}));
        }
        reconcile_stored(&api, &ctx, &name).await.unwrap();
        reconcile_stored(&api, &ctx, &name).await.unwrap();
        let mut s = stored(&api, &name);
        s.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        api.lock().unwrap().insert(TOPO, serde_json::to_value(&s).unwrap());
        reconcile_stored(&api, &ctx, &name).await.unwrap();
        assert_requests_granted(&api)
    });
    let granted: BTreeSet<(String, String, String)> = rbac::CLUSTER
        .iter()
        .flat_map(|r| {
            r.resources.iter().flat_map(move |res| {
                r.verbs
                    .iter()
                    .map(move |v| (r.group.to_string(), res.to_string(), v.to_string()))
            })
        })
        .collect();
    let unused: BTreeSet<_> = granted.difference(&seen).cloned().collect();
    let justified = |(g, r, v): &(String, String, String)| -> bool {
        // An apply that creates needs `create`; the Controller watches Topologies and the
        // workloads it owns; blockOwnerDeletion needs update on topologies/finalizers.
        v == "create" && r != "secrets" && r != "events"
            || v == "watch" && ["topologies", "statefulsets", "deployments"].contains(&r.as_str())
            || v == "list" && r == "topologies" // the Controller's watcher lists before it watches
            || r == "topologies/finalizers" && v == "update"
            || g == "events.k8s.io" && v == "patch" // a repeated Event is patched (series)
            // The failover monitor reads and deletes PostgreSQL pods (k8s_failover_cluster.rs
            // checks its requests against the same rules).
            || r == "pods" && (v == "get" || v == "delete")
    };
    let unexplained: Vec<_> = unused.iter().filter(|x| !justified(x)).collect();
    assert!(
        unexplained.is_empty(),
        "granted but never called: {unexplained:?}"
    );
}

#[tokio::test]
async fn only_one_replica_holds_the_lease_and_a_stale_holder_is_replaced() {
    use controller::k8s::leader::{self, LeaseConfig};
    use k8s_openapi::api::coordination::v1::Lease;
    let api = fake_api::shared();
    let leases: kube::Api<Lease> = kube::Api::namespaced(fake_api::client(api.clone()), "ops");
    let cfg = |id: &str, secs: u64| LeaseConfig {
        name: "bssctl-operator".into(),
        namespace: "ops".into(),
        identity: id.into(),
        duration: Duration::from_secs(secs),
    };
    assert!(
        leader::step(&leases, &cfg("a", 15)).await.unwrap(),
        "first replica acquires"
    );
    assert!(
        !leader::step(&leases, &cfg("b", 15)).await.unwrap(),
        "second replica must wait"
    );
    assert!(
        leader::step(&leases, &cfg("a", 15)).await.unwrap(),
        "holder renews"
    );
    // The holder stops renewing: make its renewTime old, then b takes over.
    {
        let mut a = api.lock().unwrap();
        let coll = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
        let mut l = a.get(coll, "bssctl-operator").unwrap().clone();
        l["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z");
        a.insert(coll, l);
    }
    assert!(
        leader::step(&leases, &cfg("b", 15)).await.unwrap(),
        "stale lease taken over"
    );
    let l = leases.get("bssctl-operator").await.unwrap();
    let spec = l.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert!(
        !leader::step(&leases, &cfg("a", 15)).await.unwrap(),
        "the old holder now waits"
    );
    for (m, uri, _) in &api.lock().unwrap().requests {
        let a = rbac::attributes(m, uri).unwrap();
        assert!(
            rbac::allows(rbac::LEADER_ELECTION, &a.group, &a.resource, &a.verb),
            "Role does not grant {a:?}"
        );
    }
}
