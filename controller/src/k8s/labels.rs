//! The labels and annotations bssctl puts on every Kubernetes object, and the selectors built from
//! them. Owns the names only; which object carries which label is decided by `manifests`.

use std::collections::BTreeMap;

use crate::render::Kind;

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const PART_OF: &str = "app.kubernetes.io/part-of";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const VERSION: &str = "app.kubernetes.io/version";
/// The environment (Topology name) an object belongs to.
pub const ENVIRONMENT: &str = "bssctl.io/environment";
/// The bssctl component (`postgres-0`, `haproxy`, ...) an object belongs to.
pub const BSS_COMPONENT: &str = "bssctl.io/component";
/// PostgreSQL pods only: `primary` or `replica`; the `-rw`/`-ro` Services select on it.
pub const ROLE: &str = "bssctl.io/role";
/// uid of the Topology resource that owns an object (set by the operator; orphan cleanup keys on it).
pub const OWNER_UID: &str = "bssctl.io/owner-uid";
/// sha256 of the files a pod template uses: a changed file rolls exactly the pods that read it.
pub const CONFIG_HASH: &str = "bssctl.io/config-hash";

pub const MANAGER: &str = "bssctl";
pub const PART_OF_VALUE: &str = "bss";

/// `app.kubernetes.io/name` of a component kind (also the default image name).
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "postgres",
        Kind::Redis => "redis",
        Kind::Kafka => "kafka",
        Kind::KafkaStore => "kafka-store",
        Kind::Haproxy => "haproxy",
        Kind::Backend => "backend",
        Kind::StreamProcessor => "stream-processor",
        Kind::Envoy => "envoy",
        Kind::NodeExporter => "node-exporter",
        Kind::PostgresExporter => "postgres-exporter",
        Kind::RedisExporter => "redis-exporter",
        Kind::Prometheus => "prometheus",
        Kind::Alertmanager => "alertmanager",
    }
}

/// Labels every object of the environment carries.
pub fn environment(env: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE.to_string(), env.to_string()),
        (PART_OF.to_string(), PART_OF_VALUE.to_string()),
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (ENVIRONMENT.to_string(), env.to_string()),
    ])
}

/// Labels of every object of one component.
pub fn component(env: &str, name: &str, kind: Kind) -> BTreeMap<String, String> {
    let mut l = environment(env);
    l.insert(NAME.into(), kind_name(kind).into());
    l.insert(COMPONENT.into(), name.into());
    l.insert(BSS_COMPONENT.into(), name.into());
    l.insert(VERSION.into(), env!("CARGO_PKG_VERSION").into());
    l
}

/// The selector of one component's pods: stable across bssctl versions (no version label).
pub fn selector(env: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE.to_string(), env.to_string()),
        (BSS_COMPONENT.to_string(), name.to_string()),
    ])
}

/// Every pod of one kind in the environment (all PostgreSQL members, all brokers).
pub fn kind_selector(env: &str, kind: Kind) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE.to_string(), env.to_string()),
        (NAME.to_string(), kind_name(kind).to_string()),
    ])
}

/// Label selector string (`a=b,c=d`) for list calls: every object bssctl made for `env`.
pub fn environment_selector(env: &str) -> String {
    format!("{MANAGED_BY}={MANAGER},{ENVIRONMENT}={env}")
}
