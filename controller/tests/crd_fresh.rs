//! The committed CRD must be what `bssctl crd` generates from the types (CI fails on drift).
#![allow(clippy::unwrap_used)]

mod support;

#[test]
fn committed_crd_is_fresh() {
    let path = support::repo_root().join("manifests/crd.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = controller::crd::crd_yaml();
    assert!(committed == generated, "manifests/crd.yaml is stale: run `cargo run -p controller --bin bssctl -- crd > manifests/crd.yaml`");
}

#[test]
fn schema_describes_the_root_topology_fields() {
    let s = controller::crd::schema();
    let text = s.to_string();
    for f in [
        "postgres",
        "haproxy",
        "envoy",
        "redis",
        "kafka",
        "prometheus",
        "alertmanager",
        "alerts",
        "exporters",
        "backend",
        "streamProcessors",
        "runtime",
        "secrets",
        "images",
    ] {
        assert!(
            text.contains(&format!("\"{f}\"")),
            "{f} missing from schema"
        );
    }
}
