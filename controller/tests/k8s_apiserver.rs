//! The Topology resource's whole life cycle against a REAL API server for custom resources
//! (k8s.io/apiextensions-apiserver built by dev/k8s/build-apiserver.sh, with Debian's etcd): the
//! CRD installed from the chart, schema validation rejecting a bad resource, a Topology created and
//! reconciled, conditions and observedGeneration written through the status subresource, a spec
//! change, deletion through the finalizer. Core kinds (StatefulSet, Service, ...) are not served by
//! that server: the operator's calls for them go to the in-memory fake (`k8s_support::fake_api`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use controller::k8s::operator::{self, Context, FINALIZER};
use controller::k8s::resource::TopologyResource;
use controller::topology::status::{ConditionStatus, ConditionType};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

struct Procs(Vec<Child>, tempfile::TempDir);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// etcd + bssctl-apiextensions on free loopback ports; a client that trusts its self-signed cert.
async fn start() -> (Procs, kube::Client) {
    let etcd = k8s_support::require("etcd");
    let server = k8s_support::require("bssctl-apiextensions");
    let dir = tempfile::tempdir().unwrap();
    let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
    let log = |n: &str| std::fs::File::create(dir.path().join(n)).unwrap();
    let e = Command::new(etcd)
        .args(["--data-dir", dir.path().join("etcd").to_str().unwrap()])
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client_port}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client_port}"),
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
        ])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer_port}"),
        ])
        .args([
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{peer_port}"),
        ])
        .stdout(Stdio::from(log("etcd.log")))
        .stderr(Stdio::from(log("etcd.err")))
        .spawn()
        .unwrap();
    let a = Command::new(server)
        .args(["--etcd-servers", &format!("http://127.0.0.1:{client_port}")])
        .args([
            "--secure-port",
            &api_port.to_string(),
            "--bind-address",
            "127.0.0.1",
        ])
        .args(["--cert-dir", dir.path().join("certs").to_str().unwrap()])
        .stdout(Stdio::from(log("apiserver.log")))
        .stderr(Stdio::from(log("apiserver.err")))
        .spawn()
        .unwrap();
    let procs = Procs(vec![a, e], dir);
    let mut cfg = kube::Config::new(format!("https://127.0.0.1:{api_port}").parse().unwrap());
    cfg.accept_invalid_certs = true;
    cfg.default_namespace = "shop".into();
    let client = kube::Client::try_from(cfg).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .request_text(http::Request::get("/readyz").body(Vec::new()).unwrap())
            .await;
        if matches!(&r, Ok(t) if t.trim() == "ok") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bssctl-apiextensions did not become ready: {r:?}\n{}",
            std::fs::read_to_string(procs.1.path().join("apiserver.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (procs, client)
}

/// Topology and CRD calls to the real server, everything else to the fake.
fn routed(real: kube::Client, fake: k8s_support::fake_api::Shared) -> kube::Client {
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let (real, fake) = (real.clone(), fake.clone());
        async move {
            let p = req.uri().path().to_string();
            if p.starts_with("/apis/bssctl.io/") || p.starts_with("/apis/apiextensions.k8s.io/") {
                real.send(req)
                    .await
                    .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
            } else {
                Ok(k8s_support::fake_api::respond(&fake, req).await)
            }
        }
    });
    kube::Client::new(svc, "shop")
}

fn cond(r: &TopologyResource, t: ConditionType) -> ConditionStatus {
    r.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .unwrap()
        .status
}

#[tokio::test]
async fn topology_life_cycle_on_a_real_api_server() {
    let (_procs, real) = start().await;

    // The CRD, exactly as the chart ships it.
    let crd_text = std::fs::read_to_string(
        k8s_support::repo_root().join("charts/bssctl-operator/crds/topologies.bssctl.io.yaml"),
    )
    .unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&crd_text).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(real.clone());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = crds.get("topologies.bssctl.io").await.unwrap();
        let established = c
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            break;
        }
        assert!(Instant::now() < deadline, "CRD not established");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let topologies: Api<TopologyResource> = Api::namespaced(real.clone(), "shop");
    // Schema validation: a string where the schema wants an integer is refused.
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        real.clone(),
        "shop",
        &kube::api::ApiResource::erase::<TopologyResource>(&()),
    );
    let bad: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "bssctl.io/v1alpha1", "kind": "Topology",
        "metadata": {"name": "bad", "namespace": "shop"},
        "spec": {"postgres": {"replicas": "three"}}
    }))
    .unwrap();
    let err = raw.create(&PostParams::default(), &bad).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(
                s.message.contains("spec.postgres.replicas"),
                "{}",
                s.message
            );
        }
        other => panic!("expected a 422, got {other}"),
    }

    let text = std::fs::read_to_string(
        k8s_support::repo_root().join("controller/tests/fixtures/valid/minimal.yaml"),
    )
    .unwrap();
    let text = text.replace(
        "metadata: {name: minimal}",
        "metadata: {name: minimal, namespace: shop}",
    );
    let l = k8s_support::load_k8s_str(&text);
    assert_eq!(l.validated.namespace, "shop");
    let fake = k8s_support::fake_api::shared();
    let client = routed(real.clone(), fake.clone());
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some("test".into()),
        controller::render::load_templates(None).unwrap(),
    ));
    let get = || async { topologies.get("minimal").await.unwrap() };

    // `bssctl apply --runtime kubernetes`: Secret from local sources, the resource, then follow
    // status and Events while an operator loop reconciles.
    assert!(controller::k8s::client::ensure_secret(&client, &l)
        .await
        .unwrap());
    let t0 = Instant::now();
    let generation = controller::k8s::client::submit(&client, &l).await.unwrap();
    assert_eq!(generation, 1);
    let op = {
        let (ctx, topologies) = (ctx.clone(), topologies.clone());
        tokio::spawn(async move {
            for _ in 0..2 {
                let r = topologies.get("minimal").await.unwrap();
                operator::reconcile(Arc::new(r), ctx.clone()).await.unwrap();
            }
        })
    };
    let mut lines = Vec::new();
    controller::k8s::client::follow(
        &client,
        "shop",
        "minimal",
        generation,
        Duration::from_secs(30),
        &mut |l| lines.push(l.to_string()),
    )
    .await
    .unwrap();
    let apply_to_available = t0.elapsed();
    op.await.unwrap();
    assert!(
        lines.iter().any(|l| l.contains("Available=True")),
        "{lines:?}"
    );
    assert_eq!(
        get().await.metadata.finalizers,
        Some(vec![FINALIZER.to_string()])
    );
    // One more reconcile on the converged resource: the round trip.
    let t1 = Instant::now();
    operator::reconcile(Arc::new(get().await), ctx.clone())
        .await
        .unwrap();
    let round_trip = t1.elapsed();
    let r = get().await;
    let st = r.status.clone().unwrap();
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(cond(&r, ConditionType::Available), ConditionStatus::True);
    assert_eq!(st.current_primary.as_deref(), Some("postgres-0"));
    assert!(fake
        .lock()
        .unwrap()
        .get(
            "/apis/apps/v1/namespaces/shop/statefulsets",
            "minimal-postgres-0"
        )
        .is_some());
    println!(
        "apply -> Available: {:.1} ms; converged reconcile round trip ({} objects applied, status through the real API server): {:.1} ms",
        apply_to_available.as_secs_f64() * 1000.0,
        st.objects.unwrap_or(0),
        round_trip.as_secs_f64() * 1000.0
    );

    // `bssctl plan --runtime kubernetes` on the converged environment: nothing to change.
    let b = k8s_support::bundle(&l);
    let m = controller::k8s::manifests::build(&l.validated, &b).unwrap();
    let p = controller::k8s::client::plan(&client, &l.validated, &m)
        .await
        .unwrap();
    let changed: Vec<_> = p.iter().filter(|o| o.action != "unchanged").collect();
    assert!(changed.is_empty(), "plan after convergence: {changed:#?}");
    let status = controller::k8s::client::status_text(&client, "shop", "minimal")
        .await
        .unwrap();
    assert!(
        status.contains("primary postgres-0") && status.contains("Available"),
        "{status}"
    );

    // The status subresource: a spec patch does not touch status, and bumps the generation.
    let patched = topologies
        .patch(
            "minimal",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"redis": {"maxMemory": "512mb"}}, "status": {"objects": 1}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(
        patched.status.as_ref().unwrap().objects,
        st.objects,
        "status changed through the main resource"
    );
    let before = fake
        .lock()
        .unwrap()
        .get("/api/v1/namespaces/shop/configmaps", "minimal-redis-config")
        .unwrap()["data"]
        .clone();
    operator::reconcile(Arc::new(get().await), ctx.clone())
        .await
        .unwrap();
    let r = get().await;
    assert_eq!(r.status.as_ref().unwrap().observed_generation, Some(2));
    assert!(r
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(2)));
    let after = fake
        .lock()
        .unwrap()
        .get("/api/v1/namespaces/shop/configmaps", "minimal-redis-config")
        .unwrap()["data"]
        .clone();
    assert_ne!(
        before, after,
        "the spec change did not reach the redis ConfigMap"
    );

    // Deletion waits for the finalizer; the cleanup removes every object and releases it.
    topologies
        .delete("minimal", &DeleteParams::default())
        .await
        .unwrap();
    let pending = get().await;
    assert!(pending.metadata.deletion_timestamp.is_some());
    operator::reconcile(Arc::new(pending), ctx.clone())
        .await
        .unwrap();
    assert!(fake
        .lock()
        .unwrap()
        .names("/apis/apps/v1/namespaces/shop/statefulsets")
        .is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while topologies.get_opt("minimal").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "Topology not deleted after its finalizer was released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
