//! The Helm chart: `helm lint --strict`, `helm template` output under strict OpenAPI validation,
//! the CRD in crds/ identical to what `bssctl crd` generates (drift check), and RBAC that grants
//! exactly what the operator declares it calls (`k8s::rbac`; the mock-API tests check each call).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_support;

use std::collections::BTreeSet;
use std::process::Command;

use controller::k8s::rbac;

fn chart() -> std::path::PathBuf {
    k8s_support::repo_root().join("charts/bssctl-operator")
}

fn helm(args: &[&str]) -> String {
    let out = Command::new(k8s_support::require("helm"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helm {args:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn template(extra: &[&str]) -> Vec<serde_yaml::Value> {
    let c = chart();
    let mut args = vec![
        "template",
        "rel",
        c.to_str().unwrap(),
        "--namespace",
        "ops",
        "--kube-version",
        "1.33.0",
    ];
    args.extend_from_slice(extra);
    let text = helm(&args);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml::Value| !v.is_null())
        .collect()
}

#[test]
fn helm_lint_is_clean() {
    let c = chart();
    let out = helm(&["lint", "--strict", c.to_str().unwrap()]);
    assert!(
        out.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{out}"
    );
}

#[test]
fn values_schema_rejects_bad_values() {
    let c = chart();
    let out = Command::new(k8s_support::require("helm"))
        .args([
            "lint",
            "--strict",
            c.to_str().unwrap(),
            "--set",
            "replicaCount=0",
            "--set",
            "service.type=Bogus",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("replicaCount") && text.contains("service.type"),
        "{text}"
    );
}

#[test]
fn helm_template_passes_strict_openapi_validation() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![];
    for (i, extra) in [
        vec![],
        vec![
            "--set",
            "config.watchNamespace=team-a",
            "--set",
            "serviceAccount.name=custom",
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let docs = template(&extra);
        let kinds: BTreeSet<String> = docs
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_string())
            .collect();
        for k in [
            "Deployment",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
        ] {
            assert!(kinds.contains(k), "chart renders no {k}: {kinds:?}");
        }
        let p = dir.path().join(format!("chart-{i}.yaml"));
        std::fs::write(
            &p,
            docs.iter()
                .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
                .collect::<String>(),
        )
        .unwrap();
        files.push(p);
    }
    k8s_support::validate_strict(&files);
}

#[test]
fn operator_deployment_is_hardened_and_selected_by_the_stack_network_policies() {
    let docs = template(&[]);
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &d["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/name"],
        "bssctl-operator"
    );
    let sc = &pod["spec"]["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["command"][1], "operator");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let path = chart().join("crds/topologies.bssctl.io.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == controller::crd::crd_yaml(),
        "{} is stale: run `cargo run -p controller --bin bssctl -- crd > {}`",
        path.display(),
        path.display()
    );
}

#[test]
fn chart_app_version_is_the_crate_version() {
    let text = std::fs::read_to_string(chart().join("Chart.yaml")).unwrap();
    let c: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(c["appVersion"].as_str(), Some(env!("CARGO_PKG_VERSION")));
}

type Grants = BTreeSet<(String, String, String)>;

fn grants_of(rules: &serde_yaml::Value) -> Grants {
    let mut out = BTreeSet::new();
    for r in rules.as_sequence().unwrap() {
        for g in r["apiGroups"].as_sequence().unwrap() {
            for res in r["resources"].as_sequence().unwrap() {
                for v in r["verbs"].as_sequence().unwrap() {
                    let s = |x: &serde_yaml::Value| x.as_str().unwrap().to_string();
                    assert!(
                        s(v) != "*" && s(res) != "*" && s(g) != "*",
                        "wildcard in RBAC: {r:?}"
                    );
                    out.insert((s(g), s(res), s(v)));
                }
            }
        }
    }
    out
}

fn grants_declared(rules: &[rbac::Rule]) -> Grants {
    rules
        .iter()
        .flat_map(|r| {
            r.resources.iter().flat_map(move |res| {
                r.verbs
                    .iter()
                    .map(move |v| (r.group.to_string(), res.to_string(), v.to_string()))
            })
        })
        .collect()
}

#[test]
fn rbac_grants_exactly_what_the_operator_declares() {
    let docs = template(&[]);
    let cr = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert_eq!(grants_of(&cr["rules"]), grants_declared(rbac::CLUSTER));
    let role = docs.iter().find(|d| d["kind"] == "Role").unwrap();
    assert_eq!(role["metadata"]["namespace"], "ops");
    assert_eq!(
        grants_of(&role["rules"]),
        grants_declared(rbac::LEADER_ELECTION)
    );
}
