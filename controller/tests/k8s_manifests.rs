//! Kubernetes manifests at three levels: golden snapshots of every fixture, targeted assertions
//! (labels, selectors, hash annotations, securityContext, PDB and Service selectors, secrets never
//! in a manifest), and strict OpenAPI validation of everything with kubernetes-validate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_support;

use std::collections::BTreeMap;

use controller::k8s::labels;
use controller::k8s::manifests::{self, names, Manifests};
use controller::k8s::secrets;
use serde_json::Value;

fn build(path: &std::path::Path) -> (controller::topology::Loaded, Manifests) {
    let l = k8s_support::load_k8s(path);
    let b = k8s_support::bundle(&l);
    let m = manifests::build(&l.validated, &b).unwrap();
    (l, m)
}

fn minimal() -> (controller::topology::Loaded, Manifests) {
    build(&k8s_support::repo_root().join("controller/tests/fixtures/valid/minimal.yaml"))
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
}

fn matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
}

fn pod_templates(m: &Manifests) -> Vec<(&str, &Value)> {
    m.objects
        .iter()
        .filter(|o| matches!(o.kind.as_str(), "StatefulSet" | "Deployment" | "DaemonSet"))
        .map(|o| (o.name.as_str(), &o.body["spec"]["template"]))
        .collect()
}

#[test]
fn golden_snapshots_of_every_fixture() {
    for (name, path) in k8s_support::fixtures() {
        let (_, m) = build(&path);
        insta::assert_snapshot!(format!("k8s-{name}"), m.to_yaml());
    }
}

#[test]
fn building_is_deterministic() {
    for (_, path) in k8s_support::fixtures() {
        assert_eq!(build(&path).1, build(&path).1, "{}", path.display());
    }
}

#[test]
fn every_object_carries_the_environment_labels_and_namespace() {
    let (l, m) = minimal();
    for o in &m.objects {
        let lb = labels_of(&o.body);
        assert_eq!(lb[labels::INSTANCE], "minimal", "{}", o.id());
        assert_eq!(lb[labels::MANAGED_BY], "bssctl", "{}", o.id());
        assert_eq!(lb[labels::PART_OF], "bss", "{}", o.id());
        assert_eq!(
            o.body["metadata"]["namespace"],
            l.validated.namespace.as_str()
        );
    }
}

#[test]
fn every_workload_selector_matches_its_own_pods_only() {
    let (_, m) = minimal();
    let templates = pod_templates(&m);
    assert!(templates.len() >= 15, "{}", templates.len());
    for o in m
        .objects
        .iter()
        .filter(|o| matches!(o.kind.as_str(), "StatefulSet" | "Deployment" | "DaemonSet"))
    {
        let sel = &o.body["spec"]["selector"]["matchLabels"];
        let hits: Vec<&str> = templates
            .iter()
            .filter(|(_, t)| matches(sel, &labels_of(t)))
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(hits, vec![o.name.as_str()], "selector of {}", o.id());
    }
}

#[test]
fn every_service_selects_pods_that_expose_its_target_ports() {
    let (_, m) = minimal();
    let templates = pod_templates(&m);
    for s in m.objects.iter().filter(|o| o.kind == "Service") {
        let sel = &s.body["spec"]["selector"];
        if sel.get(labels::ROLE).is_some() {
            continue; // -rw/-ro: covered below, they select pods once the operator labels them
        }
        let pods: Vec<&Value> = templates
            .iter()
            .filter(|(_, t)| matches(sel, &labels_of(t)))
            .map(|(_, t)| *t)
            .collect();
        assert!(!pods.is_empty(), "{} selects no pod", s.id());
        for p in s.body["spec"]["ports"].as_array().unwrap() {
            let target = p["targetPort"].as_str().unwrap();
            for pod in &pods {
                let names: Vec<&str> = pod["spec"]["containers"][0]["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|cp| cp["name"].as_str().unwrap())
                    .collect();
                assert!(
                    names.contains(&target),
                    "{} targets {target}, pod has {names:?}",
                    s.id()
                );
            }
        }
    }
}

#[test]
fn rw_service_selects_exactly_the_primary_once_the_operator_labels_the_pods() {
    use controller::k8s::roles::{self, RoleState};
    let (l, m) = minimal();
    let pg = l.validated.postgres.as_ref().unwrap();
    // Templates carry no role: a recreated pod is selected by neither Service until labelled.
    let mut pods: BTreeMap<String, BTreeMap<String, String>> = pod_templates(&m)
        .into_iter()
        .map(|(n, t)| (n.to_string(), labels_of(t)))
        .collect();
    assert!(pods.values().all(|lb| !lb.contains_key(labels::ROLE)));
    let current: BTreeMap<String, Option<String>> = pg
        .members
        .iter()
        .map(|mb| (mb.name.clone(), None))
        .collect();
    for mv in roles::label_moves(&current, &RoleState::initial(pg)) {
        let pod = pods.get_mut(&format!("minimal-{}", mv.member)).unwrap();
        match mv.role {
            Some(r) => pod.insert(labels::ROLE.into(), r.into()),
            None => pod.remove(labels::ROLE),
        };
    }
    let sel = |name: &str| {
        let s = m.get("Service", name).unwrap();
        pods.iter()
            .filter(|(_, lb)| matches(&s.body["spec"]["selector"], lb))
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sel(&names::postgres_rw("minimal")),
        vec![format!("minimal-{}", pg.primary)]
    );
    let replicas: Vec<String> = pg
        .replicas()
        .map(|r| format!("minimal-{}", r.name))
        .collect();
    assert_eq!(sel(&names::postgres_ro("minimal")), replicas);
    assert_eq!(replicas.len(), 2);
}

#[test]
fn postgres_members_are_statefulsets_with_a_claim_and_the_instance_entrypoint() {
    let (_, m) = minimal();
    for i in 0..3 {
        let s = m
            .get("StatefulSet", &format!("minimal-postgres-{i}"))
            .unwrap();
        assert_eq!(s.body["spec"]["replicas"], 1);
        assert_eq!(
            s.body["spec"]["serviceName"],
            format!("minimal-postgres-{i}")
        );
        assert_eq!(
            s.body["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
            "data"
        );
        let cmd: Vec<&str> = s.body["spec"]["template"]["spec"]["containers"][0]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(
            &cmd[..4],
            &[
                "/bssctl/bin/bssctl",
                "instance",
                "--member",
                &format!("postgres-{i}")
            ]
        );
        assert!(cmd.contains(&"postgres"));
        // The binary comes from the init container, which copies it out of the bssctl image
        // into the volume the PostgreSQL container mounts read-only.
        let pod = &s.body["spec"]["template"]["spec"];
        let init = &pod["initContainers"][0];
        assert_eq!(
            init["image"],
            format!("bssctl/kafka-store:{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(init["command"][2], "/bssctl/bin/bssctl");
        assert_eq!(init["volumeMounts"][0]["name"], "bssctl-bin");
        let bin_mount = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "bssctl-bin")
            .unwrap();
        assert_eq!(bin_mount["mountPath"], "/bssctl/bin");
        assert_eq!(bin_mount["readOnly"], true);
        let headless = m.get("Service", &format!("minimal-postgres-{i}")).unwrap();
        assert_eq!(headless.body["spec"]["clusterIP"], "None");
    }
}

#[test]
fn pdb_selects_every_postgres_member() {
    let (_, m) = minimal();
    let pdb = m.get("PodDisruptionBudget", "minimal-postgres").unwrap();
    let sel = &pdb.body["spec"]["selector"]["matchLabels"];
    let hits: Vec<&str> = pod_templates(&m)
        .into_iter()
        .filter(|(_, t)| matches(sel, &labels_of(t)))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        hits,
        vec![
            "minimal-postgres-0",
            "minimal-postgres-1",
            "minimal-postgres-2"
        ]
    );
    assert_eq!(pdb.body["spec"]["maxUnavailable"], 1);
}

#[test]
fn every_container_is_hardened_and_has_resources() {
    let (_, m) = minimal();
    for (name, t) in pod_templates(&m) {
        let pod = &t["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        for c in pod["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}");
            assert!(c["resources"]["requests"]["memory"].is_string(), "{name}");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{name}");
        }
    }
}

#[test]
fn a_changed_file_rolls_exactly_the_pods_that_read_it() {
    let base = std::fs::read_to_string(
        k8s_support::repo_root().join("controller/tests/fixtures/valid/minimal.yaml"),
    )
    .unwrap();
    let changed = base.replacen("  redis: {}", "  redis: {maxMemory: 512mb}", 1);
    assert_ne!(base, changed);
    let hashes = |text: &str| -> BTreeMap<String, String> {
        let l = k8s_support::load_k8s_str(text);
        let m = manifests::build(&l.validated, &k8s_support::bundle(&l)).unwrap();
        pod_templates(&m)
            .into_iter()
            .map(|(n, t)| {
                (
                    n.to_string(),
                    t["metadata"]["annotations"][labels::CONFIG_HASH]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    };
    let (a, b) = (hashes(&base), hashes(&changed));
    let rolled: Vec<&String> = a.keys().filter(|k| a[*k] != b[*k]).collect();
    assert_eq!(rolled, vec!["minimal-redis"]);
}

#[test]
fn network_policies_admit_only_the_stack_flows() {
    let (_, m) = minimal();
    let from = |name: &str| -> Vec<String> {
        let np = m.get("NetworkPolicy", name).unwrap();
        np.body["spec"]["ingress"][0]["from"]
            .as_array()
            .map(|peers| {
                peers
                    .iter()
                    .filter_map(|p| p["podSelector"]["matchLabels"][labels::BSS_COMPONENT].as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let redis = from("minimal-redis");
    assert!(redis.contains(&"backend".to_string()));
    assert!(redis.contains(&"redis-exporter".to_string()));
    assert!(!redis.contains(&"envoy".to_string()));
    let backend = from("minimal-backend");
    assert!(backend.contains(&"envoy".to_string()) && backend.contains(&"prometheus".to_string()));
    assert!(!backend.contains(&"redis".to_string()));
    let pg0 = from("minimal-postgres-0");
    for want in ["haproxy", "postgres-1", "postgres-2", "postgres-exporter-0"] {
        assert!(
            pg0.contains(&want.to_string()),
            "postgres-0 misses {want}: {pg0:?}"
        );
    }
    assert!(
        !pg0.contains(&"backend".to_string()),
        "the backend goes through HAProxy"
    );
    let deny = m.get("NetworkPolicy", "minimal-default-deny").unwrap();
    assert_eq!(deny.body["spec"]["ingress"], serde_json::json!([]));
}

#[test]
fn secrets_are_referenced_never_embedded() {
    let (l, m) = minimal();
    let values = secrets::resolve(&l.validated, &BTreeMap::new()).unwrap();
    assert!(values.contains_key("postgres-superuser-password"));
    assert!(values["pgpass"].contains(&l.validated.postgres.as_ref().unwrap().replication_user));
    let yaml = m.to_yaml();
    for (k, v) in &values {
        assert!(
            !yaml.contains(v.trim()),
            "value of {k} leaked into a manifest"
        );
    }
    assert!(m.objects.iter().all(|o| o.kind != "Secret"));
    assert!(yaml.contains(&names::secret("minimal")));
    // Generated once: existing values are kept.
    let again = secrets::resolve(&l.validated, &values).unwrap();
    assert_eq!(again, values);
}

#[test]
fn render_writes_manifests_and_a_0600_secret_file_that_keeps_its_values() {
    use std::os::unix::fs::PermissionsExt;
    let (l, _) = minimal();
    let b = k8s_support::bundle(&l);
    let dir = tempfile::tempdir().unwrap();
    let r = controller::k8s::cli::render(&l.validated, &b, dir.path()).unwrap();
    assert!(r.files.iter().any(|f| f == "00-minimal.yaml"));
    let mode = std::fs::metadata(&r.secret_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&r.secret_file).unwrap();
    controller::k8s::cli::render(&l.validated, &b, dir.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&r.secret_file).unwrap(), first);
}

#[test]
fn building_for_another_runtime_is_refused() {
    let l = controller::topology::load(
        &k8s_support::repo_root().join("controller/tests/fixtures/valid/minimal.yaml"),
        &controller::topology::ValidateOptions {
            // Short: the local runtime's socket paths must fit in 107 bytes.
            state_dir: Some("/tmp/bssctl-k8s-test".into()),
            ..controller::topology::ValidateOptions::default()
        },
    )
    .unwrap();
    let err = manifests::build(&l.validated, &k8s_support::bundle(&l)).unwrap_err();
    assert!(err.to_string().contains("--runtime kubernetes"), "{err}");
}

#[test]
fn every_fixture_passes_strict_openapi_validation() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![];
    for (name, path) in k8s_support::fixtures() {
        let (l, m) = build(&path);
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, m.to_yaml()).unwrap();
        files.push(p);
        // The Secret, with throwaway values, is validated too.
        let values: BTreeMap<String, String> = secrets::keys(&l.validated)
            .into_iter()
            .map(|k| (k, "placeholder".to_string()))
            .collect();
        let s = dir.path().join(format!("{name}-secret.yaml"));
        std::fs::write(
            &s,
            serde_yaml::to_string(&secrets::secret(&l.validated, &values)).unwrap(),
        )
        .unwrap();
        files.push(s);
    }
    k8s_support::validate_strict(&files);
}
