//! The runtime seam: the primitives a place to run components (local processes, Docker
//! containers, Kubernetes objects) offers the engine. Everything above this trait (converge,
//! recipes, supervision, failover) is written once; an implementation only knows how to put
//! files, start, stop, signal, run a task inside a component's context, and observe.
//!
//! It owns no decision: what to start, in which order, when to fail over, is the engine's.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::render::{Bundle, ComponentBundle, Kind};

/// One failed primitive, with the context a reader needs.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("failed preflight checks, nothing was started:\n  - {}", .0.join("\n  - "))]
    Preflight(Vec<String>),
    #[error("failed to {step} {component}: {detail}")]
    Step {
        component: String,
        step: String,
        detail: String,
    },
    #[error("failed to prepare the environment: {0}")]
    Prepare(String),
    #[error("failed to use runtime {0}: not implemented on this build (use the local runtime)")]
    Unsupported(String),
}

impl RuntimeError {
    pub fn step(component: &str, step: &str, detail: impl fmt::Display) -> RuntimeError {
        RuntimeError::Step {
            component: component.into(),
            step: step.into(),
            detail: detail.to_string(),
        }
    }

    /// Whether repeating the same action later can succeed (transient) or the input must change
    /// first (preflight problems, unsupported runtime).
    pub fn category(&self) -> Category {
        match self {
            RuntimeError::Preflight(_) | RuntimeError::Unsupported(_) => Category::NeedsChange,
            RuntimeError::Step { .. } | RuntimeError::Prepare(_) => Category::Transient,
        }
    }
}

/// Retry policy class of an error (zookeeper-operator's `ReconcilerError::category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Try again with backoff.
    Transient,
    /// Wait for a changed input.
    NeedsChange,
}

/// How to stop a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Let it finish what it does (SIGTERM, PostgreSQL smart shutdown).
    Graceful,
    /// Stop now but cleanly (PostgreSQL fast shutdown: clients cut, checkpoint, exit).
    Fast,
    /// Kill every process of the component at once (fencing, node loss).
    Kill,
}

/// Signals the engine sends to a running component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// HAProxy master-worker: seamless reload.
    Usr2,
    Hup,
    Term,
    Kill,
    Stop,
    Cont,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Usr2 => "USR2",
            Signal::Hup => "HUP",
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// A value that must never be printed (passwords handed to a task).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(pub String);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One-off work run in a component's context (on the host, in its container, in its pod).
/// Addresses in a task are the ones the *component* uses (the topology's hosts), not the
/// controller's.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Whether the member's data directory holds a cluster: output `initialized` or `empty`.
    PgDataState,
    /// initdb into a scratch directory, renamed into place only when complete.
    PgInitDb {
        superuser: String,
        password: SecretValue,
    },
    /// pg_basebackup from the primary (with its slot), into a scratch directory, renamed when done.
    PgBaseBackup {
        host: String,
        port: u16,
        user: String,
        slot: Option<String>,
    },
    /// Writes (true) or removes (false) `standby.signal` in the data directory.
    PgStandbySignal(bool),
    /// pg_controldata of the data directory (its text).
    PgControlData,
    /// Crash recovery of a stopped data directory in single-user mode with the member's own
    /// configuration (before pg_rewind).
    PgSingleUserRecovery,
    /// pg_rewind onto the given source server.
    PgRewind {
        host: String,
        port: u16,
        user: String,
        password: SecretValue,
    },
    /// Deletes the member's data directory (a failed rewind falls back to a re-clone).
    PgDiscardData,
    /// The backend's database migrations.
    Migrate,
    /// `haproxy -c` of the component's current files.
    HaproxyCheck,
    /// One command on HAProxy's runtime API (admin socket); output is its answer.
    HaproxyAdmin(String),
    /// GET of a path on Envoy's admin interface (a unix socket; on runtimes where the controller
    /// cannot reach it, the path-restricted stats listener); output is the body of a 2xx answer.
    EnvoyAdmin(String),
    /// Any tool of the component's image / the host's tools (tansu topic ..., for instance).
    Tool { program: String, args: Vec<String> },
}

/// Options of a start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartOpts {
    /// Envoy hot-restart epoch: a start with epoch > 0 runs beside the previous instance, which
    /// hands its sockets over and drains.
    pub epoch: u32,
    /// Restarts so far (kept across supervised restarts).
    pub restarts: u32,
}

/// What the runtime sees of one component now.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Observed {
    /// The component's processes / container run.
    pub running: bool,
    /// Hash of the bundle the running instance was started with or last reloaded to.
    pub hash: String,
    pub restarts: u32,
    /// Unix seconds.
    pub started_at: u64,
    /// The runtime's own name for it: a pid, a container id, a pod name.
    pub instance: String,
    /// Process id where the runtime has one (local).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Envoy hot-restart epoch of the running instance.
    pub epoch: u32,
}

/// Space left on the filesystem that holds one of a component's directories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct DiskSpace {
    /// The directory, as the component sees it (a PostgreSQL member: its data directory and its
    /// `pg_wal`, which may be a mount or a link of its own).
    pub path: String,
    /// Bytes the component's (unprivileged) user can still allocate there.
    pub available_bytes: u64,
    pub total_bytes: u64,
}

/// How a config-only change reaches a running component on this runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadStyle {
    /// Reload in place (signal, admin API, SQL): no restart.
    InPlace,
    /// A new instance beside the old one takes its sockets over (Envoy hot restart).
    HotRestart,
    /// Only a restart picks the change up on this runtime.
    Restart,
}

/// What a runtime can do; `plan` consults it so the action and its reason are true here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub name: &'static str,
    /// Envoy can hot restart (a second process shares the listening sockets).
    pub envoy_hot_restart: bool,
    /// Files change inside a running component (local files, bind mounts); false where a new
    /// config needs a new instance (immutable ConfigMap mounts with subPath, for instance).
    pub live_files: bool,
    /// Each PostgreSQL member follows the recorded roles by itself (the Kubernetes instance
    /// entrypoint watches the roles ConfigMap), so a failover re-points no member itself.
    pub members_follow_roles: bool,
    /// `exec_each` runs the tasks of different components at once (the local runtime: one
    /// thread each), so the engine clones fresh replicas together; elsewhere one after another,
    /// each right before its member starts.
    pub concurrent_tasks: bool,
}

impl Capabilities {
    pub fn reload_style(&self, kind: Kind) -> ReloadStyle {
        match kind {
            Kind::Envoy if self.envoy_hot_restart => ReloadStyle::HotRestart,
            Kind::Envoy => ReloadStyle::Restart,
            Kind::Postgres | Kind::Haproxy | Kind::Prometheus | Kind::Alertmanager
                if self.live_files =>
            {
                ReloadStyle::InPlace
            }
            _ => ReloadStyle::Restart,
        }
    }
}

/// An address the controller can connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The primitives of a runtime. Component names are the bundle's (`postgres-0`, `haproxy`, ...).
pub trait Runtime {
    fn capabilities(&self) -> Capabilities;
    /// Everything that must hold before anything starts (tools/images, ports, permissions).
    fn preflight(&self, desired: &Bundle) -> Result<(), RuntimeError>;
    /// Directories, networks, volumes; the secret files derived from the state store's secrets;
    /// leftovers of an interrupted apply ended. Returns a note per thing it cleaned up.
    fn prepare(&mut self) -> Result<Vec<String>, RuntimeError>;
    /// Delivers the component's rendered files where it reads them.
    fn put_config(&mut self, name: &str, c: &ComponentBundle) -> Result<(), RuntimeError>;
    /// Starts the component with its delivered files. With `opts.epoch > 0` (hot restart) the
    /// previous instance keeps running until it has handed over.
    fn start(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        opts: StartOpts,
    ) -> Result<Observed, RuntimeError>;
    /// Stops every process of the component and waits until none is left.
    fn stop(&mut self, name: &str, kind: Kind, mode: StopMode) -> Result<(), RuntimeError>;
    fn signal(&mut self, name: &str, sig: Signal) -> Result<(), RuntimeError>;
    /// Runs a task in the component's context; returns its output.
    fn exec(&mut self, name: &str, task: &Task) -> Result<String, RuntimeError>;
    /// Runs tasks of different components that do not depend on one another; results in the
    /// order given. At once where `capabilities().concurrent_tasks`; the default runs them one
    /// after another.
    fn exec_each(&mut self, tasks: &[(&str, Task)]) -> Vec<Result<String, RuntimeError>> {
        tasks.iter().map(|(n, t)| self.exec(n, t)).collect()
    }
    /// What runs of one component (None: never started or removed).
    fn observe(&self, name: &str) -> Option<Observed>;
    /// Whether this particular instance still runs (an old Envoy epoch, say).
    fn instance_alive(&self, o: &Observed) -> bool;
    /// Records that the running instance now runs `hash` (after a verified reload).
    fn mark_config(&mut self, name: &str, hash: &str) -> Result<(), RuntimeError>;
    /// Where the controller reaches `port` of the component.
    fn endpoint(&self, name: &str, port: u16) -> Endpoint;
    /// The last `lines` lines of the component's output.
    fn logs(&self, name: &str, lines: usize) -> String;
    /// Space left on the filesystems of the component's data directories (PostgreSQL: the data
    /// directory and `pg_wal`). Empty for a component without data; Err when it cannot be read
    /// (a stopped container on a remote volume, for instance). The default, for a runtime that
    /// cannot read it: Err, so failover judges storage by the member's log alone.
    fn disk_space(&self, name: &str) -> Result<Vec<DiskSpace>, RuntimeError> {
        Err(RuntimeError::step(
            name,
            "read its free space",
            format!("the {} runtime cannot read it", self.capabilities().name),
        ))
    }
    /// Stops the component and deletes its data and files.
    fn remove(&mut self, name: &str, kind: Kind) -> Result<(), RuntimeError>;
    /// Things of this environment the runtime runs that `desired` does not name.
    fn orphans(&self, desired: &Bundle) -> Vec<String>;
    /// Stops everything of the environment; deletes its state unless `keep_data`. Returns what
    /// is still left (processes, containers), which must be empty.
    fn teardown(
        &mut self,
        bundle: Option<&Bundle>,
        keep_data: bool,
    ) -> Result<Vec<String>, RuntimeError>;
}

/// Observations of every component of a bundle.
pub fn observe_all(rt: &dyn Runtime, bundle: &Bundle) -> BTreeMap<String, Option<Observed>> {
    bundle
        .components
        .keys()
        .map(|n| (n.clone(), rt.observe(n)))
        .collect()
}
