//! What each component's container looks like on Docker (pure): image, command, labels, mounts
//! (rendered files and secrets read-only, data in a named volume), ports on 127.0.0.1, the user,
//! and Docker's health check. The Docker runtime creates these; `compose` writes the same values
//! as a Compose file, so both stay equivalent by construction.
//!
//! Owns: the mapping bundle component -> `ContainerSpec` and which secret files a component gets.
//! Does not own: talking to the engine (`client`) or secret values (the state store).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{ContainerSpec, Health, MountSpec};
use super::{container_name, labels, network_name, volume_name};
use crate::render::{ComponentBundle, Kind};
use crate::topology::model::ValidatedTopology;

/// Numeric user the images run components as (`bss`), and PostgreSQL's (`postgres`); fixed in the
/// image recipes so host-side secret files can be owned by them.
pub const BSS_UID: u32 = 10001;
pub const POSTGRES_UID: u32 = 900;

/// Where the host keeps what containers mount: `<root>/config/<component>` (rendered files) and
/// `<root>/secrets/<component>` (that component's secret files).
#[derive(Debug, Clone, PartialEq)]
pub struct HostDirs {
    pub root: PathBuf,
}

impl HostDirs {
    pub fn config(&self, component: &str) -> PathBuf {
        self.root.join("config").join(component)
    }
    pub fn secrets(&self, component: &str) -> PathBuf {
        self.root.join("secrets").join(component)
    }
    pub fn run(&self, component: &str) -> PathBuf {
        self.root.join("run").join(component)
    }
}

/// The uid a component's process runs as inside its container.
pub fn uid_of(kind: Kind) -> u32 {
    match kind {
        Kind::Postgres => POSTGRES_UID,
        _ => BSS_UID,
    }
}

/// Components that keep data across container re-creation (a named volume; the kafka store holds
/// the brokers' log and offsets on storage s3).
pub fn has_data(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Postgres
            | Kind::Redis
            | Kind::Kafka
            | Kind::KafkaStore
            | Kind::Prometheus
            | Kind::Alertmanager
    )
}

/// One file of a component's secret directory: relative path, content, and whether it is an
/// environment variable (`env/<VAR>`, loaded by the entrypoint) rather than a file a config names.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretFile {
    pub rel: String,
    pub content: String,
}

/// The secret files a component gets (least privilege: those its files, command line or secret
/// environment refer to), from the secret values by name. Includes the files PostgreSQL and Redis
/// derive from them (pgpass, `derived`: Redis ACL, web configs).
pub fn secret_files(
    t: &ValidatedTopology,
    kind: Kind,
    cb: &ComponentBundle,
    values: &BTreeMap<String, String>,
) -> Vec<SecretFile> {
    let mut out = Vec::new();
    let mentioned = |path: &str| {
        cb.files.values().any(|c| c.contains(path))
            || cb.launch.args.iter().any(|a| a.contains(path))
            || cb.launch.env.values().any(|v| v.contains(path))
    };
    for s in t.secrets.values() {
        if mentioned(&s.file) {
            if let Some(v) = values.get(&s.name) {
                out.push(SecretFile {
                    rel: s.name.clone(),
                    content: v.clone(),
                });
            }
        }
    }
    for (var, secret) in &cb.launch.secret_env {
        if let Some(v) = values.get(secret) {
            out.push(SecretFile {
                rel: format!("env/{var}"),
                content: v.clone(),
            });
        }
    }
    if let (Kind::Postgres, Some(pg)) = (kind, &t.postgres) {
        if let Some(pw) = values.get("postgres-replication-password") {
            out.push(SecretFile {
                rel: rel_to(&t.paths.secrets, &pg.passfile),
                content: format!(
                    "*:*:*:{}:{}\n",
                    pg.replication_user,
                    pw.replace('\\', "\\\\").replace(':', "\\:")
                ),
            });
        }
    }
    // Redis' ACL include, redis_exporter's password map, the basic-auth web configs: each to
    // the component whose files or command line name it.
    if let Ok(files) = crate::derived::files(t, &|n| values.get(n).cloned()) {
        for f in files {
            if mentioned(&f.path) {
                out.push(SecretFile {
                    rel: f.name,
                    content: f.content,
                });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out.dedup_by(|a, b| a.rel == b.rel);
    out
}

fn rel_to(dir: &str, path: &str) -> String {
    Path::new(path)
        .strip_prefix(dir)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| {
            Path::new(path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// Docker's health check of a component: the component's own client where it has one, else an
/// HTTP or TCP probe from inside the container.
pub fn health_of(t: &ValidatedTopology, name: &str, kind: Kind) -> Option<Health> {
    let ports = crate::engine::health::ports_of(t, name, kind);
    let port = *ports.first()?;
    let http = |path: &str, port: u16| {
        vec![
            "curl".to_string(),
            "-fsS".into(),
            "-o".into(),
            "/dev/null".into(),
            "--max-time".into(),
            "2".into(),
            format!("http://127.0.0.1:{port}{path}"),
        ]
    };
    let tcp = |port: u16| {
        vec![
            "bash".to_string(),
            "-c".into(),
            format!("exec 3<>/dev/tcp/127.0.0.1/{port}"),
        ]
    };
    let test = match kind {
        Kind::Postgres => vec![
            "pg_isready".to_string(),
            "-q".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        Kind::Prometheus => http("/-/healthy", port),
        // Basic auth on every path (the password stays out of the container's command lines):
        // the port stands in here; bssctl's own probe sends the credentials.
        Kind::Alertmanager | Kind::PostgresExporter => tcp(port),
        Kind::NodeExporter | Kind::RedisExporter => http("/metrics", port),
        // The stats listener forwards `/ready` to the admin socket once listeners are up.
        Kind::Envoy => http("/ready", port),
        Kind::Redis
        | Kind::Kafka
        | Kind::KafkaStore
        | Kind::Haproxy
        | Kind::Backend
        | Kind::StreamProcessor => tcp(port),
    };
    Some(Health {
        test,
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        retries: 3,
        start_period: Duration::from_secs(if kind == Kind::Postgres { 60 } else { 20 }),
    })
}

/// The container of one component.
pub fn container_spec(
    t: &ValidatedTopology,
    name: &str,
    cb: &ComponentBundle,
    image: &str,
    dirs: &HostDirs,
) -> ContainerSpec {
    let kind = cb.kind;
    let mut env = cb.launch.env.clone();
    let cfg_dir = format!("{}/{name}", t.paths.config);
    if let Some(f) = &cb.launch.env_file {
        env.insert("BSSCTL_ENV_FILE".into(), format!("{cfg_dir}/{f}"));
    }
    let mut mkdir = vec![format!("{}/{name}", t.paths.run)];
    if has_data(kind) && kind != Kind::Postgres {
        mkdir.push(format!("{}/{name}", t.paths.data));
    }
    env.insert("BSSCTL_MKDIR".into(), mkdir.join(" "));
    let mut mounts = vec![
        MountSpec::ReadOnly {
            host: dirs.config(name).display().to_string(),
            target: cfg_dir,
        },
        MountSpec::ReadOnly {
            host: dirs.secrets(name).display().to_string(),
            target: t.paths.secrets.clone(),
        },
    ];
    if has_data(kind) {
        mounts.push(MountSpec::Volume {
            name: volume_name(&t.name, name),
            target: t.paths.data.clone(),
        });
    }
    if kind == Kind::Haproxy {
        // The runtime API socket is where the controller on the host switches writes at once.
        mounts.push(MountSpec::Bind {
            host: dirs.run(name).display().to_string(),
            target: format!("{}/{name}", t.paths.run),
        });
    }
    let mut lbl = super::client::Client::env_labels(&t.name);
    lbl.insert(labels::COMPONENT.into(), name.to_string());
    lbl.insert(labels::CONFIG_HASH.into(), cb.hash());
    let cmd = std::iter::once(cb.launch.program.clone())
        .chain(cb.launch.args.iter().cloned())
        .collect();
    ContainerSpec {
        name: container_name(&t.name, name),
        image: image.to_string(),
        cmd,
        env,
        labels: lbl,
        network: network_name(&t.name),
        aliases: vec![],
        mounts,
        ports: crate::engine::health::ports_of(t, name, kind)
            .into_iter()
            .map(|p| (p, p))
            .collect(),
        user: format!("{0}:{0}", uid_of(kind)),
        memory_bytes: None,
        nano_cpus: None,
        health: health_of(t, name, kind),
        stop_timeout: Some(if kind == Kind::Postgres { 30 } else { 10 }),
        // PostgreSQL: SIGINT is the fast shutdown (SIGTERM waits for clients).
        stop_signal: (kind == Kind::Postgres).then(|| "SIGINT".to_string()),
    }
}
