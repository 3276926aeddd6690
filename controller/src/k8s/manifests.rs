//! Pure builders: `ValidatedTopology` + rendered `Bundle` -> every Kubernetes object of the
//! environment (ConfigMaps, StatefulSets, Deployments, a DaemonSet, Services, PDBs,
//! NetworkPolicies, a ServiceAccount). No client, no I/O; the same output feeds
//! `bssctl render --runtime kubernetes`, `bssctl plan` and the operator's server-side apply.
//!
//! Not here: Secret *values* (see `secrets`: the objects built here only reference the Secret
//! `<env>-secrets` by key), the role/fence decisions of failover (`instance`, `roles`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet,
    StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, ExecAction, HTTPGetAction, HostPathVolumeSource, KeyToPath,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, TCPSocketAction, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::labels;
use crate::render::{Bundle, ComponentBundle, Kind};
use crate::topology::model::ValidatedTopology;
use crate::topology::types::RuntimeKind;

/// Uid and gid every container runs as (non-root; the bssctl images create this user).
pub const RUN_AS: i64 = 10001;
/// Where the Secret's keys are mounted read-only; the PostgreSQL entrypoint copies them to
/// `paths.secrets` (an emptyDir) with the 0600 mode libpq insists on.
pub const SECRET_MOUNT: &str = "/var/run/bssctl-secret";
/// Where the `<env>-postgres-roles` ConfigMap (desired primary, fenced members) is mounted.
pub const ROLES_MOUNT: &str = "/etc/bssctl-roles";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("failed to build manifests for `{name}`: the topology is resolved for the {runtime:?} runtime, not kubernetes (render with --runtime kubernetes)")]
    WrongRuntime { name: String, runtime: RuntimeKind },
    #[error("failed to build manifests: component `{component}` is in the bundle but not in the topology")]
    UnknownComponent { component: String },
    #[error("failed to build manifests: env file {component}/{file} line {line} is not KEY=VALUE")]
    EnvFile {
        component: String,
        file: String,
        line: usize,
    },
    #[error("failed to serialise {kind} {name}: {source}")]
    Serialise {
        kind: String,
        name: String,
        source: serde_json::Error,
    },
}

/// One object, ready to apply: its identity and its JSON body (apiVersion and kind included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// The bssctl component it belongs to; `None` for environment-wide objects.
    pub component: Option<String>,
    pub body: serde_json::Value,
}

impl Manifest {
    /// `Kind/name`, how plans and logs name an object.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// Every object of an environment, in apply order (ConfigMaps and identities before workloads).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Manifests {
    pub namespace: String,
    pub objects: Vec<Manifest>,
}

impl Manifests {
    /// A multi-document YAML stream of every object.
    pub fn to_yaml(&self) -> String {
        self.objects
            .iter()
            .map(|m| {
                format!(
                    "---\n{}",
                    serde_yaml::to_string(&m.body).unwrap_or_default()
                )
            })
            .collect()
    }

    /// The objects grouped into files: `NN-<component>.yaml` in start order, `00-<env>.yaml` for
    /// the environment-wide ones.
    pub fn files(&self, env: &str, bundle: &Bundle) -> BTreeMap<String, String> {
        let mut order: BTreeMap<&str, u8> = BTreeMap::new();
        for (name, c) in bundle.ordered() {
            order.insert(name.as_str(), c.kind.order() + 1);
        }
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for m in &self.objects {
            let file = match &m.component {
                Some(c) => format!(
                    "{:02}-{c}.yaml",
                    order.get(c.as_str()).copied().unwrap_or(0)
                ),
                None => format!("00-{env}.yaml"),
            };
            let doc = format!(
                "---\n{}",
                serde_yaml::to_string(&m.body).unwrap_or_default()
            );
            out.entry(file).or_default().push_str(&doc);
        }
        out
    }

    pub fn get(&self, kind: &str, name: &str) -> Option<&Manifest> {
        self.objects
            .iter()
            .find(|m| m.kind == kind && m.name == name)
    }
}

fn manifest<K>(obj: &K, component: Option<&str>) -> Result<Manifest, BuildError>
where
    K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize,
{
    let name = obj.metadata().name.clone().unwrap_or_default();
    let body = serde_json::to_value(obj).map_err(|source| BuildError::Serialise {
        kind: K::KIND.into(),
        name: name.clone(),
        source,
    })?;
    Ok(Manifest {
        api_version: K::API_VERSION.into(),
        kind: K::KIND.into(),
        name,
        component: component.map(str::to_string),
        body,
    })
}

/// Names of the objects of an environment.
pub mod names {
    pub fn object(env: &str, component: &str) -> String {
        format!("{env}-{component}")
    }
    pub fn config(env: &str, component: &str) -> String {
        format!("{env}-{component}-config")
    }
    pub fn secret(env: &str) -> String {
        format!("{env}-secrets")
    }
    pub fn service_account(env: &str) -> String {
        format!("{env}-bss")
    }
    pub fn postgres_rw(env: &str) -> String {
        format!("{env}-postgres-rw")
    }
    pub fn postgres_ro(env: &str) -> String {
        format!("{env}-postgres-ro")
    }
    pub fn roles(env: &str) -> String {
        format!("{env}-postgres-roles")
    }
}

/// CPU/memory requests and limits. The topology has no resources section yet, so these are
/// bssctl's defaults per kind, sized for the seeds' load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: &'static str,
    pub memory_request: &'static str,
    pub memory_limit: &'static str,
}

pub fn resources(kind: Kind) -> Resources {
    let r = |cpu_request, memory_request, memory_limit| Resources {
        cpu_request,
        memory_request,
        memory_limit,
    };
    match kind {
        Kind::Postgres => r("250m", "512Mi", "1Gi"),
        Kind::Redis => r("100m", "128Mi", "384Mi"),
        Kind::Kafka => r("250m", "256Mi", "1Gi"),
        Kind::KafkaStore => r("100m", "64Mi", "512Mi"),
        Kind::Haproxy => r("100m", "64Mi", "256Mi"),
        Kind::Backend => r("250m", "128Mi", "512Mi"),
        Kind::StreamProcessor => r("100m", "64Mi", "256Mi"),
        Kind::Envoy => r("100m", "64Mi", "256Mi"),
        Kind::NodeExporter | Kind::PostgresExporter | Kind::RedisExporter => {
            r("20m", "32Mi", "128Mi")
        }
        Kind::Prometheus => r("200m", "512Mi", "2Gi"),
        Kind::Alertmanager => r("50m", "64Mi", "256Mi"),
    }
}

/// Size of the persistent volume of the kinds that keep data.
fn storage(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Postgres => Some("10Gi"),
        Kind::KafkaStore => Some("10Gi"),
        Kind::Prometheus => Some("10Gi"),
        Kind::Alertmanager => Some("1Gi"),
        _ => None,
    }
}

/// The image of a component: `spec.images.<key>` or `bssctl/<key>:<bssctl version>`.
/// Where PostgreSQL pods find the `bssctl instance` entrypoint.
pub const ENTRYPOINT_DIR: &str = "/bssctl/bin";

/// The init container of a PostgreSQL pod: copies the bssctl binary from its own image (the one
/// `kafka-store` runs, which is bssctl itself) into the pod's `bssctl-bin` volume, as
/// CloudNativePG's bootstrap container copies its instance manager.
fn entrypoint_copier(t: &ValidatedTopology) -> Container {
    Container {
        name: "bssctl-entrypoint".into(),
        image: Some(image(t, Kind::KafkaStore)),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            "cp".into(),
            "/usr/local/bin/bssctl".into(),
            format!("{ENTRYPOINT_DIR}/bssctl"),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("64Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "bssctl-bin".into(),
            mount_path: ENTRYPOINT_DIR.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

pub fn image(t: &ValidatedTopology, kind: Kind) -> String {
    let key = match kind {
        Kind::StreamProcessor => "backend",
        k => labels::kind_name(k),
    };
    t.images
        .get(key)
        .cloned()
        .unwrap_or_else(|| format!("bssctl/{key}:{}", env!("CARGO_PKG_VERSION")))
}

/// Named ports a component's container listens on (the names Services target).
pub fn ports(t: &ValidatedTopology, name: &str, kind: Kind) -> Vec<(String, u16)> {
    let one = |n: &str, p: u16| vec![(n.to_string(), p)];
    match kind {
        Kind::Postgres => t
            .postgres
            .as_ref()
            .and_then(|p| p.member(name))
            .map(|m| one("postgres", m.port))
            .unwrap_or_default(),
        Kind::Redis => t
            .redis
            .as_ref()
            .map(|r| one("redis", r.endpoint.port))
            .unwrap_or_default(),
        Kind::Kafka => t
            .kafka
            .as_ref()
            .and_then(|k| k.brokers.iter().find(|b| b.name == name))
            .map(|b| one("kafka", b.endpoint.port))
            .unwrap_or_default(),
        Kind::KafkaStore => t
            .kafka
            .as_ref()
            .and_then(|k| k.store.as_ref())
            .map(|s| one("s3", s.endpoint.port))
            .unwrap_or_default(),
        Kind::Haproxy => t
            .haproxy
            .as_ref()
            .map(|h| {
                let mut v = vec![
                    ("write".to_string(), h.write.port),
                    ("read".to_string(), h.read.port),
                ];
                if let Some(s) = &h.stats {
                    v.push(("stats".into(), s.port));
                }
                v
            })
            .unwrap_or_default(),
        Kind::Backend => t
            .backend
            .as_ref()
            .map(|b| one("http", b.endpoint.port))
            .unwrap_or_default(),
        Kind::StreamProcessor => vec![],
        // The admin port stays on the pod's loopback: never exposed.
        Kind::Envoy => t
            .envoy
            .as_ref()
            .map(|e| {
                e.listeners
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("listener-{i}"), l.port))
                    .collect()
            })
            .unwrap_or_default(),
        Kind::NodeExporter => t
            .exporters
            .node
            .as_ref()
            .map(|e| one("metrics", e.port))
            .unwrap_or_default(),
        Kind::PostgresExporter => t
            .exporters
            .postgres
            .iter()
            .find(|x| x.name == name)
            .map(|x| one("metrics", x.endpoint.port))
            .unwrap_or_default(),
        Kind::RedisExporter => t
            .exporters
            .redis
            .as_ref()
            .map(|e| one("metrics", e.port))
            .unwrap_or_default(),
        Kind::Prometheus => t
            .prometheus
            .as_ref()
            .map(|p| one("http", p.endpoint.port))
            .unwrap_or_default(),
        Kind::Alertmanager => t
            .alertmanager
            .as_ref()
            .map(|a| one("http", a.endpoint.port))
            .unwrap_or_default(),
    }
}

/// Components (by name) that open connections to `target`: the NetworkPolicy of `target` admits
/// exactly these. Scrapes are derived from Prometheus' jobs; the rest from the stack's wiring.
pub fn clients_of(t: &ValidatedTopology, bundle: &Bundle, target: &str) -> BTreeSet<String> {
    let Some(tc) = bundle.components.get(target) else {
        return BTreeSet::new();
    };
    let of = |k: Kind| -> Vec<String> {
        bundle
            .components
            .iter()
            .filter(|(_, c)| c.kind == k)
            .map(|(n, _)| n.clone())
            .collect()
    };
    let mut out = BTreeSet::new();
    match tc.kind {
        Kind::Postgres => {
            out.extend(of(Kind::Postgres));
            out.extend(of(Kind::Haproxy));
            out.extend(of(Kind::PostgresExporter));
            if t.haproxy.is_none() {
                out.extend(of(Kind::Backend));
                out.extend(of(Kind::StreamProcessor));
            }
        }
        Kind::Haproxy => {
            out.extend(of(Kind::Backend));
            out.extend(of(Kind::StreamProcessor));
        }
        Kind::Redis => {
            out.extend(of(Kind::Backend));
            out.extend(of(Kind::StreamProcessor));
            out.extend(of(Kind::RedisExporter));
        }
        Kind::Kafka => {
            out.extend(of(Kind::Kafka));
            out.extend(of(Kind::Backend));
            out.extend(of(Kind::StreamProcessor));
        }
        // The brokers keep their log and group offsets in the store.
        Kind::KafkaStore => out.extend(of(Kind::Kafka)),
        Kind::Backend => out.extend(of(Kind::Envoy)),
        Kind::Alertmanager => out.extend(of(Kind::Prometheus)),
        _ => {}
    }
    out.remove(target);
    if tc.kind == Kind::Postgres {
        // Members replicate from each other.
        out.extend(of(Kind::Postgres).into_iter().filter(|n| n != target));
    }
    if let Some(p) = &t.prometheus {
        let host = host_of_component(t, target);
        let scraped = p
            .jobs
            .iter()
            .flat_map(|j| &j.targets)
            .any(|x| x.address.rsplit_once(':').map(|(h, _)| h) == Some(host.as_str()));
        if scraped && bundle.components.contains_key("prometheus") && target != "prometheus" {
            out.insert("prometheus".into());
        }
    }
    out
}

/// The DNS name other pods use for a component (validate resolves hosts this way).
pub fn host_of_component(t: &ValidatedTopology, component: &str) -> String {
    format!("{}-{component}.{}.svc", t.name, t.namespace)
}

/// Secrets (by logical name) a component reads: referenced by path in its files or launch, or
/// passed as environment variables.
pub fn secrets_of(t: &ValidatedTopology, c: &ComponentBundle) -> BTreeSet<String> {
    let mut texts: Vec<&str> = c.files.values().map(String::as_str).collect();
    texts.extend(c.launch.args.iter().map(String::as_str));
    texts.extend(c.launch.env.values().map(String::as_str));
    let mut out: BTreeSet<String> = t
        .secrets
        .values()
        .filter(|s| texts.iter().any(|x| x.contains(&s.file)))
        .map(|s| s.name.clone())
        .collect();
    out.extend(c.launch.secret_env.values().cloned());
    // Files derived from the secrets (Redis ACL, web configs) are keys of the Secret too.
    out.extend(
        crate::derived::paths(t)
            .into_iter()
            .filter(|(_, p)| texts.iter().any(|x| x.contains(p.as_str())))
            .map(|(n, _)| n),
    );
    out
}

/// sha256 of what a pod's containers read: files, launch, image and the secret keys they mount.
pub fn config_hash(c: &ComponentBundle, image: &str) -> String {
    let mut h = Sha256::new();
    h.update(c.hash().as_bytes());
    h.update([0]);
    h.update(image.as_bytes());
    hex::encode(h.finalize())
}

/// ConfigMap keys allow `[-._a-zA-Z0-9]`: nested paths (`rules/x.yml`) are flattened with `__`.
pub fn config_key(path: &str) -> String {
    path.replace('/', "__")
}

fn parse_env_file(
    component: &str,
    file: &str,
    text: &str,
) -> Result<Vec<(String, String)>, BuildError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (k, v) = l.split_once('=').ok_or_else(|| BuildError::EnvFile {
            component: component.into(),
            file: file.into(),
            line: i + 1,
        })?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

fn meta(name: &str, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

fn selector(m: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(m),
        ..LabelSelector::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

fn tcp_probe(port: &str, period: i32, failures: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.into()),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn http_probe(port: &str, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// (readiness, liveness, startup) from bssctl's own health checks, per kind.
fn probes(
    t: &ValidatedTopology,
    name: &str,
    kind: Kind,
) -> (Option<Probe>, Option<Probe>, Option<Probe>) {
    match kind {
        Kind::Postgres => {
            let m = t.postgres.as_ref().and_then(|p| p.member(name));
            let ready = m.map(|m| Probe {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "pg_isready".into(),
                        "-q".into(),
                        "-h".into(),
                        m.socket_dir.clone(),
                        "-p".into(),
                        m.port.to_string(),
                    ]),
                }),
                period_seconds: Some(2),
                failure_threshold: Some(3),
                timeout_seconds: Some(2),
                ..Probe::default()
            });
            // initdb or pg_basebackup may take minutes before the port opens.
            let startup = Probe {
                failure_threshold: Some(180),
                ..tcp_probe("postgres", 2, 180)
            };
            (ready, Some(tcp_probe("postgres", 5, 6)), Some(startup))
        }
        Kind::Redis => (
            Some(tcp_probe("redis", 2, 3)),
            Some(tcp_probe("redis", 5, 6)),
            None,
        ),
        Kind::Kafka => (
            Some(tcp_probe("kafka", 2, 3)),
            Some(tcp_probe("kafka", 5, 6)),
            None,
        ),
        Kind::KafkaStore => (
            Some(tcp_probe("s3", 2, 3)),
            Some(tcp_probe("s3", 5, 6)),
            None,
        ),
        Kind::Haproxy => (
            Some(tcp_probe("write", 2, 3)),
            Some(tcp_probe("write", 5, 6)),
            None,
        ),
        Kind::Backend => (
            Some(http_probe("http", "/health/ready", 2, 3)),
            Some(http_probe("http", "/health/live", 5, 6)),
            None,
        ),
        // A stream processor is healthy while its process runs: the kubelet restarts it when not.
        Kind::StreamProcessor => (None, None, None),
        // /ready is on the admin port, which stays on loopback; the first listener stands in.
        Kind::Envoy => (
            Some(tcp_probe("listener-0", 2, 3)),
            Some(tcp_probe("listener-0", 5, 6)),
            None,
        ),
        Kind::NodeExporter | Kind::RedisExporter => (
            Some(http_probe("metrics", "/metrics", 5, 3)),
            Some(http_probe("metrics", "/metrics", 10, 6)),
            None,
        ),
        // Basic auth on every path: a kubelet probe would need the password in the manifest,
        // so the port stands in.
        Kind::PostgresExporter => (
            Some(tcp_probe("metrics", 5, 3)),
            Some(tcp_probe("metrics", 10, 6)),
            None,
        ),
        Kind::Alertmanager => (
            Some(tcp_probe("http", 2, 3)),
            Some(tcp_probe("http", 5, 6)),
            None,
        ),
        Kind::Prometheus => (
            Some(http_probe("http", "/-/ready", 2, 3)),
            Some(http_probe("http", "/-/healthy", 5, 6)),
            None,
        ),
    }
}

struct Ctx<'a> {
    t: &'a ValidatedTopology,
    bundle: &'a Bundle,
    ns: &'a str,
}

impl Ctx<'_> {
    fn env(&self) -> &str {
        &self.t.name
    }

    fn pod_template(
        &self,
        name: &str,
        c: &ComponentBundle,
        extra_labels: BTreeMap<String, String>,
    ) -> Result<PodTemplateSpec, BuildError> {
        let t = self.t;
        let env = self.env();
        let kind = c.kind;
        let img = image(t, kind);
        let mut pod_labels = labels::component(env, name, kind);
        pod_labels.extend(extra_labels);
        let annotations = BTreeMap::from([(labels::CONFIG_HASH.to_string(), config_hash(c, &img))]);

        let cfg_dir = format!("{}/{name}", t.paths.config);
        let mut volumes = vec![];
        let mut mounts = vec![];
        if !c.files.is_empty() {
            volumes.push(Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names::config(env, name),
                    items: Some(
                        c.files
                            .keys()
                            .map(|p| KeyToPath {
                                key: config_key(p),
                                path: p.clone(),
                                mode: None,
                            })
                            .collect(),
                    ),
                    default_mode: Some(0o444),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "config".into(),
                mount_path: cfg_dir.clone(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        let mut secret_keys: Vec<String> = secrets_of(t, c).into_iter().collect();
        if kind == Kind::Postgres {
            // The entrypoint initialises the cluster, creates bssctl's roles, and rewinds with
            // the superuser (see `entrypoint`): it needs these besides the replicas' passfile.
            secret_keys.extend(
                [
                    "pgpass",
                    "postgres-superuser-password",
                    "postgres-replication-password",
                    "postgres-app-password",
                ]
                .map(String::from),
            );
            secret_keys.sort();
            secret_keys.dedup();
        }
        let file_secrets: Vec<&String> = secret_keys
            .iter()
            .filter(|k| !c.launch.secret_env.values().any(|v| v == *k) || kind == Kind::Postgres)
            .collect();
        if !file_secrets.is_empty() {
            // PostgreSQL's entrypoint copies the keys to paths.secrets with mode 0600 (libpq
            // refuses group-readable password files); everyone else reads them in place, 0440
            // with the pod's fsGroup.
            let mount_at = if kind == Kind::Postgres {
                SECRET_MOUNT.to_string()
            } else {
                t.paths.secrets.clone()
            };
            volumes.push(Volume {
                name: "secrets".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(names::secret(env)),
                    items: Some(
                        file_secrets
                            .iter()
                            .map(|k| KeyToPath {
                                key: (*k).clone(),
                                path: (*k).clone(),
                                mode: None,
                            })
                            .collect(),
                    ),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "secrets".into(),
                mount_path: mount_at,
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        // Writable scratch: the root filesystem is read-only.
        // The component's own run directory (sockets: PostgreSQL's, Envoy's admin), so it
        // exists before the process starts.
        let mut scratch = vec![
            ("tmp", "/tmp".to_string()),
            ("run", format!("{}/{name}", t.paths.run)),
        ];
        if kind == Kind::Postgres {
            scratch.push(("pg-secrets", t.paths.secrets.clone()));
        }
        let data_dir = format!("{}/{name}", t.paths.data);
        let persistent = storage(kind).is_some();
        let data_path = match kind {
            Kind::Postgres => t
                .postgres
                .as_ref()
                .and_then(|p| p.member(name))
                .map(|m| m.data_dir.clone()),
            Kind::Redis => t.redis.as_ref().map(|r| r.data_dir.clone()),
            Kind::Prometheus => t.prometheus.as_ref().map(|p| p.data_dir.clone()),
            Kind::Alertmanager => t.alertmanager.as_ref().map(|a| a.data_dir.clone()),
            Kind::Kafka => Some(data_dir),
            Kind::KafkaStore => t
                .kafka
                .as_ref()
                .and_then(|k| k.store.as_ref())
                .map(|s| s.data_dir.clone()),
            _ => None,
        };
        if let Some(d) = &data_path {
            if persistent {
                // PostgreSQL's data directory is built beside itself and renamed into place
                // (initdb, pg_basebackup): the volume holds its parent, not the directory.
                let at = if kind == Kind::Postgres {
                    std::path::Path::new(d)
                        .parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| d.clone())
                } else {
                    d.clone()
                };
                mounts.push(VolumeMount {
                    name: "data".into(),
                    mount_path: at,
                    ..VolumeMount::default()
                });
            } else {
                scratch.push(("data", d.clone()));
            }
        }
        for (vol, path) in scratch {
            volumes.push(Volume {
                name: vol.into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: vol.into(),
                mount_path: path,
                ..VolumeMount::default()
            });
        }
        if kind == Kind::Postgres {
            // The entrypoint's binary, copied in by the init container (the PostgreSQL image
            // carries no bssctl, so it need not be rebuilt with every bssctl build).
            volumes.push(Volume {
                name: "bssctl-bin".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "bssctl-bin".into(),
                mount_path: ENTRYPOINT_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            volumes.push(Volume {
                name: "roles".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names::roles(env),
                    default_mode: Some(0o444),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "roles".into(),
                mount_path: ROLES_MOUNT.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        if kind == Kind::NodeExporter {
            for (vol, path) in [("proc", "/proc"), ("sys", "/sys")] {
                volumes.push(Volume {
                    name: format!("host-{vol}"),
                    host_path: Some(HostPathVolumeSource {
                        path: path.into(),
                        type_: Some("Directory".into()),
                    }),
                    ..Volume::default()
                });
                mounts.push(VolumeMount {
                    name: format!("host-{vol}"),
                    mount_path: format!("/host{path}"),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
            }
        }

        // Environment: launch env, env files (rendered KEY=VALUE lines), secrets by reference.
        let mut env_vars: Vec<EnvVar> = c
            .launch
            .env
            .iter()
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                ..EnvVar::default()
            })
            .collect();
        if let Some(f) = &c.launch.env_file {
            if let Some(text) = c.files.get(f) {
                for (k, v) in parse_env_file(name, f, text)? {
                    env_vars.push(EnvVar {
                        name: k,
                        value: Some(v),
                        ..EnvVar::default()
                    });
                }
            }
        }
        for (var, secret) in &c.launch.secret_env {
            env_vars.push(EnvVar {
                name: var.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: names::secret(env),
                        key: secret.clone(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }

        let mut command = vec![c.launch.program.clone()];
        command.extend(c.launch.args.iter().cloned());
        if kind == Kind::Postgres {
            // The instance entrypoint reads the desired role and the fence marker first.
            let mut wrapped = vec![
                format!("{ENTRYPOINT_DIR}/bssctl"),
                "instance".into(),
                "--member".into(),
                name.into(),
                "--roles".into(),
                ROLES_MOUNT.into(),
                "--secrets-from".into(),
                SECRET_MOUNT.into(),
                "--secrets-to".into(),
                t.paths.secrets.clone(),
                "--".into(),
            ];
            wrapped.extend(command);
            command = wrapped;
        }
        let (readiness, liveness, startup) = probes(t, name, kind);
        let res = resources(kind);
        let container = Container {
            name: labels::kind_name(kind).into(),
            image: Some(img),
            image_pull_policy: Some("IfNotPresent".into()),
            command: Some(command),
            env: (!env_vars.is_empty()).then_some(env_vars),
            ports: {
                let p: Vec<ContainerPort> = ports(t, name, kind)
                    .into_iter()
                    .map(|(n, p)| ContainerPort {
                        name: Some(n),
                        container_port: i32::from(p),
                        protocol: Some("TCP".into()),
                        ..ContainerPort::default()
                    })
                    .collect();
                (!p.is_empty()).then_some(p)
            },
            readiness_probe: readiness,
            liveness_probe: liveness,
            startup_probe: startup,
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity(res.cpu_request.into())),
                    ("memory".to_string(), Quantity(res.memory_request.into())),
                ])),
                limits: Some(BTreeMap::from([(
                    "memory".to_string(),
                    Quantity(res.memory_limit.into()),
                )])),
                ..ResourceRequirements::default()
            }),
            security_context: Some(container_security()),
            volume_mounts: Some(mounts),
            ..Container::default()
        };
        Ok(PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(pod_labels),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                service_account_name: Some(names::service_account(env)),
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                security_context: Some(pod_security()),
                termination_grace_period_seconds: Some(if kind == Kind::Postgres {
                    60
                } else {
                    30
                }),
                init_containers: (kind == Kind::Postgres).then(|| vec![entrypoint_copier(t)]),
                containers: vec![container],
                volumes: Some(volumes),
                ..PodSpec::default()
            }),
        })
    }

    fn config_map(&self, name: &str, c: &ComponentBundle) -> Result<Option<Manifest>, BuildError> {
        if c.files.is_empty() {
            return Ok(None);
        }
        let cm = ConfigMap {
            metadata: meta(
                &names::config(self.env(), name),
                self.ns,
                labels::component(self.env(), name, c.kind),
            ),
            data: Some(
                c.files
                    .iter()
                    .map(|(p, v)| (config_key(p), v.clone()))
                    .collect(),
            ),
            ..ConfigMap::default()
        };
        manifest(&cm, Some(name)).map(Some)
    }

    fn workload(&self, name: &str, c: &ComponentBundle) -> Result<Manifest, BuildError> {
        let env = self.env();
        let obj_name = names::object(env, name);
        // No role label in the template: the operator sets `bssctl.io/role` on the pods
        // (`roles::label_moves`), so a failover never changes a template (which would restart
        // the pod) and a recreated pod is selected by neither `-rw` nor `-ro` until labelled.
        let extra = BTreeMap::new();
        let template = self.pod_template(name, c, extra)?;
        let meta = meta(&obj_name, self.ns, labels::component(env, name, c.kind));
        let sel = selector(labels::selector(env, name));
        match c.kind {
            Kind::NodeExporter => manifest(
                &DaemonSet {
                    metadata: meta,
                    spec: Some(DaemonSetSpec {
                        selector: sel,
                        template,
                        ..DaemonSetSpec::default()
                    }),
                    ..DaemonSet::default()
                },
                Some(name),
            ),
            Kind::Postgres | Kind::Kafka | Kind::Prometheus | Kind::Alertmanager => {
                let claims = storage(c.kind).map(|size| {
                    vec![PersistentVolumeClaim {
                        metadata: ObjectMeta {
                            name: Some("data".into()),
                            labels: Some(labels::component(env, name, c.kind)),
                            ..ObjectMeta::default()
                        },
                        spec: Some(PersistentVolumeClaimSpec {
                            access_modes: Some(vec!["ReadWriteOnce".into()]),
                            resources: Some(VolumeResourceRequirements {
                                requests: Some(BTreeMap::from([(
                                    "storage".to_string(),
                                    Quantity(size.into()),
                                )])),
                                ..VolumeResourceRequirements::default()
                            }),
                            ..PersistentVolumeClaimSpec::default()
                        }),
                        ..PersistentVolumeClaim::default()
                    }]
                });
                manifest(
                    &StatefulSet {
                        metadata: meta,
                        spec: Some(StatefulSetSpec {
                            replicas: Some(1),
                            service_name: Some(obj_name.clone()),
                            selector: sel,
                            // One pod per member: a member is fenced or restarted alone.
                            pod_management_policy: Some("Parallel".into()),
                            template,
                            volume_claim_templates: claims,
                            ..StatefulSetSpec::default()
                        }),
                        ..StatefulSet::default()
                    },
                    Some(name),
                )
            }
            _ => manifest(
                &Deployment {
                    metadata: meta,
                    spec: Some(DeploymentSpec {
                        replicas: Some(1),
                        selector: sel,
                        strategy: Some(DeploymentStrategy {
                            type_: Some("RollingUpdate".into()),
                            ..DeploymentStrategy::default()
                        }),
                        template,
                        ..DeploymentSpec::default()
                    }),
                    ..Deployment::default()
                },
                Some(name),
            ),
        }
    }

    fn service(&self, name: &str, c: &ComponentBundle) -> Result<Option<Manifest>, BuildError> {
        let p = ports(self.t, name, c.kind);
        if p.is_empty() {
            return Ok(None);
        }
        let env = self.env();
        // StatefulSet members get a headless governing Service: DNS resolves to the pod itself,
        // also before it is ready (replicas bootstrap from a primary that is starting).
        let stateful = matches!(c.kind, Kind::Postgres | Kind::Kafka);
        let svc = Service {
            metadata: meta(
                &names::object(env, name),
                self.ns,
                labels::component(env, name, c.kind),
            ),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                cluster_ip: stateful.then(|| "None".to_string()),
                publish_not_ready_addresses: stateful.then_some(true),
                selector: Some(labels::selector(env, name)),
                ports: Some(service_ports(&p)),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        manifest(&svc, Some(name)).map(Some)
    }

    fn network_policy(
        &self,
        name: &str,
        c: &ComponentBundle,
    ) -> Result<Option<Manifest>, BuildError> {
        let env = self.env();
        let p = ports(self.t, name, c.kind);
        if p.is_empty() {
            return Ok(None);
        }
        let clients = clients_of(self.t, self.bundle, name);
        let mut from: Vec<NetworkPolicyPeer> = clients
            .iter()
            .map(|cl| NetworkPolicyPeer {
                pod_selector: Some(selector(labels::selector(env, cl))),
                ..NetworkPolicyPeer::default()
            })
            .collect();
        if c.kind == Kind::Postgres {
            // The operator probes, promotes and fences members.
            from.push(operator_peer());
        }
        let rule_ports: Vec<NetworkPolicyPort> = p
            .iter()
            .filter(|(n, _)| {
                // Stats and metrics ports only for their scrapers; envoy listeners for everyone.
                c.kind != Kind::Haproxy || n != "stats" || clients.contains("prometheus")
            })
            .map(|(n, _)| NetworkPolicyPort {
                port: Some(IntOrString::String(n.clone())),
                protocol: Some("TCP".into()),
                ..NetworkPolicyPort::default()
            })
            .collect();
        // Envoy is the stack's entry point: its listeners admit any client.
        let ingress = if c.kind == Kind::Envoy {
            vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(rule_ports),
            }]
        } else if from.is_empty() {
            vec![]
        } else {
            vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(rule_ports),
            }]
        };
        let np = NetworkPolicy {
            metadata: meta(
                &names::object(env, name),
                self.ns,
                labels::component(env, name, c.kind),
            ),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(selector(labels::selector(env, name))),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(ingress),
                ..NetworkPolicySpec::default()
            }),
        };
        manifest(&np, Some(name)).map(Some)
    }
}

fn service_ports(p: &[(String, u16)]) -> Vec<ServicePort> {
    p.iter()
        .map(|(n, port)| ServicePort {
            name: Some(n.clone()),
            port: i32::from(*port),
            target_port: Some(IntOrString::String(n.clone())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        })
        .collect()
}

/// Pods of the bssctl operator (any namespace).
fn operator_peer() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(selector(BTreeMap::from([(
            labels::NAME.to_string(),
            "bssctl-operator".to_string(),
        )]))),
        ..NetworkPolicyPeer::default()
    }
}

/// Builds every object of the environment. `t` must be resolved for the kubernetes runtime.
pub fn build(t: &ValidatedTopology, bundle: &Bundle) -> Result<Manifests, BuildError> {
    if t.runtime != RuntimeKind::Kubernetes {
        return Err(BuildError::WrongRuntime {
            name: t.name.clone(),
            runtime: t.runtime,
        });
    }
    let ns = t.namespace.as_str();
    let env = t.name.as_str();
    let cx = Ctx { t, bundle, ns };
    let mut objects = Vec::new();

    let sa = ServiceAccount {
        metadata: meta(&names::service_account(env), ns, labels::environment(env)),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    objects.push(manifest(&sa, None)?);

    if let Some(pg) = &t.postgres {
        objects.push(manifest(
            &super::roles::roles_config_map(t, pg, &super::roles::RoleState::initial(pg)),
            None,
        )?);
        let pg_ports = vec![(
            "postgres".to_string(),
            pg.members.first().map(|m| m.port).unwrap_or(5432),
        )];
        for (name, role) in [
            (names::postgres_rw(env), super::roles::PRIMARY),
            (names::postgres_ro(env), super::roles::REPLICA),
        ] {
            let mut sel = labels::kind_selector(env, Kind::Postgres);
            sel.insert(labels::ROLE.into(), role.into());
            let mut l = labels::environment(env);
            l.insert(labels::NAME.into(), "postgres".into());
            let svc = Service {
                metadata: meta(&name, ns, l),
                spec: Some(ServiceSpec {
                    type_: Some("ClusterIP".into()),
                    selector: Some(sel),
                    ports: Some(service_ports(&pg_ports)),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            };
            objects.push(manifest(&svc, None)?);
        }
        let mut l = labels::environment(env);
        l.insert(labels::NAME.into(), "postgres".into());
        let pdb = PodDisruptionBudget {
            metadata: meta(&names::object(env, "postgres"), ns, l),
            spec: Some(PodDisruptionBudgetSpec {
                // A drain takes one member at a time; the others keep quorum for failover.
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(selector(labels::kind_selector(env, Kind::Postgres))),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        };
        objects.push(manifest(&pdb, None)?);
    }
    if t.kafka.as_ref().is_some_and(|k| k.brokers.len() > 1) {
        let mut l = labels::environment(env);
        l.insert(labels::NAME.into(), "kafka".into());
        let pdb = PodDisruptionBudget {
            metadata: meta(&names::object(env, "kafka"), ns, l),
            spec: Some(PodDisruptionBudgetSpec {
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(selector(labels::kind_selector(env, Kind::Kafka))),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        };
        objects.push(manifest(&pdb, None)?);
    }
    // Everything not admitted below is denied: one policy selecting every pod of the environment.
    let deny = NetworkPolicy {
        metadata: meta(
            &names::object(env, "default-deny"),
            ns,
            labels::environment(env),
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(BTreeMap::from([(
                labels::INSTANCE.to_string(),
                env.to_string(),
            )]))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![]),
            ..NetworkPolicySpec::default()
        }),
    };
    objects.push(manifest(&deny, None)?);

    for (name, c) in bundle.ordered() {
        if !known(t, name, c.kind) {
            return Err(BuildError::UnknownComponent {
                component: name.clone(),
            });
        }
        if let Some(cm) = cx.config_map(name, c)? {
            objects.push(cm);
        }
        if let Some(s) = cx.service(name, c)? {
            objects.push(s);
        }
        if let Some(np) = cx.network_policy(name, c)? {
            objects.push(np);
        }
        objects.push(cx.workload(name, c)?);
    }
    Ok(Manifests {
        namespace: ns.to_string(),
        objects,
    })
}

fn known(t: &ValidatedTopology, name: &str, kind: Kind) -> bool {
    match kind {
        Kind::Postgres => t
            .postgres
            .as_ref()
            .is_some_and(|p| p.member(name).is_some()),
        Kind::Kafka => t
            .kafka
            .as_ref()
            .is_some_and(|k| k.brokers.iter().any(|b| b.name == name)),
        Kind::PostgresExporter => t.exporters.postgres.iter().any(|x| x.name == name),
        Kind::StreamProcessor => t.processors.iter().any(|p| p.name == name),
        _ => true,
    }
}
