//! `bssctl instance`: the PostgreSQL pod's entrypoint (what CloudNativePG's instance manager is
//! to its pods). It reads the roles ConfigMap mounted at `manifests::ROLES_MOUNT` (desired
//! primary, fenced members, epoch, and the topology the operator validated), decides with
//! `instance::decide`, and carries the plan out with the engine's PostgreSQL recipe on the pod's
//! volumes (`pod::PodRuntime`): initdb and bootstrap, pg_basebackup, pg_rewind of a former
//! primary, standby.signal. postgres runs as its child; SIGTERM or SIGINT to the entrypoint is a
//! fast shutdown of postgres, and the entrypoint exits with postgres.
//!
//! While postgres runs it re-reads the roles: fenced -> fast shutdown and wait; promoted -> the
//! primary's settings and pg_promote(); another primary -> re-pointed (a replica) or shut down and
//! rewound (a primary that must not be one). Not here: deciding who is primary (the operator).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::instance::{self, DataDir, InstanceError, Plan};
use super::pod::{self, PodRuntime, PodStore};
use super::roles::{RoleState, RolesError, KEY_EPOCH, KEY_FENCED, KEY_PRIMARY, KEY_TOPOLOGY};
use crate::engine::clients::{Clients, PgOp, PgReply, RealClients};
use crate::engine::runtime::{Runtime, StopMode};
use crate::engine::store::StateStore;
use crate::engine::Env;
use crate::plan::Action;
use crate::progress::{Event, Reporter};
use crate::render::{self, Kind};
use crate::topology::model::{PgMember, ValidatedTopology};

#[derive(Debug, thiserror::Error)]
pub enum EntrypointError {
    #[error("failed to read the roles at {path}: {source}")]
    ReadRoles {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to read the roles at {path}: {source}")]
    Roles { path: String, source: RolesError },
    #[error("failed to read the topology at {path}: {detail}")]
    Topology { path: String, detail: String },
    #[error("failed to decide how to start: {0}")]
    Decide(#[from] InstanceError),
    #[error("failed to copy the secrets from {from} to {to}: {source}")]
    Secrets {
        from: String,
        to: String,
        source: std::io::Error,
    },
    #[error("failed to render the files of {member}: {detail}")]
    Render { member: String, detail: String },
    #[error("failed to install the signal handlers: {0}")]
    Signals(String),
}

/// What `bssctl instance` was given (the manifests pass these; see `manifests::pod_template`).
#[derive(Debug, Clone)]
pub struct Options {
    pub member: String,
    /// The mounted roles ConfigMap: one file per key.
    pub roles: PathBuf,
    pub secrets_from: Option<PathBuf>,
    pub secrets_to: Option<PathBuf>,
    /// postgres and its arguments.
    pub argv: Vec<String>,
    /// How often the roles are re-read while postgres runs.
    pub poll: Duration,
}

/// What the mounted roles say.
#[derive(Debug, Clone)]
pub struct Roles {
    pub state: RoleState,
    /// The topology as the operator validated it (roles as it rendered them).
    pub topology: ValidatedTopology,
}

impl Roles {
    /// The topology with the roles ConfigMap's primary.
    pub fn current(&self, member: &str) -> Result<ValidatedTopology, InstanceError> {
        self.topology
            .with_primary(&self.state.primary)
            .ok_or_else(|| InstanceError::UnknownPrimary {
                member: member.into(),
                primary: self.state.primary.clone(),
            })
    }
}

/// Reads the roles ConfigMap as the kubelet projects it (one file per key). The kubelet swaps a
/// `..data` symlink to update every key at once: the keys are read from the directory it points
/// to, so one read never mixes two versions.
pub fn read_roles(dir: &Path) -> Result<Roles, EntrypointError> {
    let resolved = std::fs::canonicalize(dir.join("..data")).unwrap_or_else(|_| dir.to_path_buf());
    let dir = resolved.as_path();
    let path = dir.display().to_string();
    let mut data = std::collections::BTreeMap::new();
    for key in [KEY_PRIMARY, KEY_FENCED, KEY_EPOCH] {
        match std::fs::read_to_string(dir.join(key)) {
            Ok(v) => {
                data.insert(key.to_string(), v);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && key == KEY_FENCED => {}
            Err(source) => {
                return Err(EntrypointError::ReadRoles {
                    path: dir.join(key).display().to_string(),
                    source,
                })
            }
        }
    }
    let state = RoleState::from_data(&data).map_err(|source| EntrypointError::Roles {
        path: path.clone(),
        source,
    })?;
    let tpath = dir.join(KEY_TOPOLOGY);
    let text = std::fs::read_to_string(&tpath).map_err(|source| EntrypointError::ReadRoles {
        path: tpath.display().to_string(),
        source,
    })?;
    let topology = serde_json::from_str(&text).map_err(|e| EntrypointError::Topology {
        path: tpath.display().to_string(),
        detail: e.to_string(),
    })?;
    Ok(Roles { state, topology })
}

fn data_dir_state(m: &PgMember) -> DataDir {
    let d = Path::new(&m.data_dir);
    DataDir {
        initialised: d.join("PG_VERSION").exists(),
        standby_signal: d.join("standby.signal").exists(),
    }
}

/// The engine's progress events, one line each on stderr (the pod's log).
struct LogReporter {
    member: String,
}

impl Reporter for LogReporter {
    fn event(&mut self, e: &Event) {
        if e.status == "start" {
            return;
        }
        eprintln!(
            "bssctl instance {}: {} {} {} ({} ms){}",
            self.member,
            e.component,
            e.step,
            e.status,
            e.elapsed_ms,
            if e.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", e.detail)
            }
        );
    }
}

fn say(member: &str, msg: impl std::fmt::Display) {
    eprintln!("bssctl instance {member}: {msg}");
}

/// Sets `stop` on SIGTERM (the kubelet) or SIGINT. Returns once the handlers are installed.
pub fn watch_signals(stop: Arc<AtomicBool>) -> Result<(), EntrypointError> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (mut term, mut int) = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(t), Ok(i)) => (t, i),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(Ok(()));
            let t = Box::pin(term.recv());
            let i = Box::pin(int.recv());
            let _ = futures::future::select(t, i).await;
            stop.store(true, Ordering::SeqCst);
        });
    });
    rx.recv()
        .map_err(|e| EntrypointError::Signals(e.to_string()))?
        .map_err(EntrypointError::Signals)
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let s = Instant::now();
    while s.elapsed() < d && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50).min(d));
    }
}

/// What the supervision of a running postgres ended with.
enum Outcome {
    /// The entrypoint exits with this code.
    Exit(i32),
    /// postgres was stopped for a role change: decide again.
    Replan,
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// The role settings for `t`, from the member's rendering.
fn overrides_for(
    t: &ValidatedTopology,
    tera: &tera::Tera,
    member: &str,
    epoch: u64,
) -> Result<String, EntrypointError> {
    let bundle = render::render(t, tera).map_err(|e| EntrypointError::Render {
        member: member.into(),
        detail: e.to_string(),
    })?;
    let conf = bundle
        .components
        .get(member)
        .and_then(|c| c.files.get("postgresql.conf"))
        .ok_or_else(|| EntrypointError::Render {
            member: member.into(),
            detail: "no postgresql.conf rendered".into(),
        })?;
    Ok(pod::role_overrides(conf, epoch))
}

/// Runs the entrypoint until postgres exits or a signal stops it; returns the exit code.
pub fn run(o: &Options, stop: &AtomicBool) -> Result<i32, EntrypointError> {
    let member = o.member.as_str();
    if let (Some(from), Some(to)) = (&o.secrets_from, &o.secrets_to) {
        let n = pod::copy_secrets(from, to).map_err(|source| EntrypointError::Secrets {
            from: from.display().to_string(),
            to: to.display().to_string(),
            source,
        })?;
        say(
            member,
            format!("{n} secret files copied to {} (0600)", to.display()),
        );
    }
    let tera = render::load_templates(None).map_err(|e| EntrypointError::Render {
        member: member.into(),
        detail: e.to_string(),
    })?;
    let mut last_wait = String::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            say(member, "stopped before postgres started");
            return Ok(0);
        }
        let roles = match read_roles(&o.roles) {
            Ok(r) => r,
            // A volume being updated or not mounted yet: read again (a bad value is fatal).
            Err(e @ EntrypointError::ReadRoles { .. }) => {
                say(
                    member,
                    format!("{e}; reading again in {} ms", instance::RETRY_MS),
                );
                sleep_unless(stop, Duration::from_millis(instance::RETRY_MS));
                continue;
            }
            Err(e) => return Err(e),
        };
        let t = roles.current(member)?;
        let m = t
            .postgres
            .as_ref()
            .and_then(|p| p.member(member))
            .cloned()
            .ok_or_else(|| InstanceError::UnknownMember {
                member: member.into(),
                env: t.name.clone(),
            })?;
        let plan = instance::decide(&t, member, &roles.state, data_dir_state(&m))?;
        if let Plan::Wait { reason, retry_ms } = &plan {
            if *reason != last_wait {
                say(member, format!("waiting: {reason}"));
                last_wait = reason.clone();
            }
            sleep_unless(stop, Duration::from_millis(*retry_ms));
            continue;
        }
        last_wait.clear();
        say(member, format!("epoch {}: {plan:?}", roles.state.epoch));
        let overrides = overrides_for(&t, &tera, member, roles.state.epoch)?;
        let bundle = render::render(&t, &tera).map_err(|e| EntrypointError::Render {
            member: member.into(),
            detail: e.to_string(),
        })?;
        let Some(c) = bundle.components.get(member) else {
            return Err(EntrypointError::Render {
                member: member.into(),
                detail: "not in the rendered bundle".into(),
            });
        };
        let mut rt = PodRuntime::new(&t, &m, o.argv.clone(), overrides);
        let store = Arc::new(PodStore::new(&t));
        if matches!(plan, Plan::RewindReplica { .. }) {
            let _ = store.set_needs_rewind(member, true);
        }
        let cl = RealClients::new(&t, store.clone());
        let mut rep = LogReporter {
            member: member.into(),
        };
        let r = Env {
            t: &t,
            rt: &mut rt,
            cl: &cl,
            store: &*store,
            rep: &mut rep,
        }
        .ensure(member, c, None, Action::Create);
        if let Err(e) = r {
            say(
                member,
                format!("{e}; retrying in {} ms", instance::RETRY_MS),
            );
            if let Some(code) = rt.exited().map(exit_code) {
                say(member, format!("postgres exited with {code}"));
            }
            let _ = rt.stop(member, Kind::Postgres, StopMode::Fast);
            sleep_unless(stop, Duration::from_millis(instance::RETRY_MS));
            continue;
        }
        say(
            member,
            format!(
                "postgres runs (pid {}) as {}",
                rt.pid().unwrap_or(0),
                if roles.state.primary == member {
                    "primary"
                } else {
                    "replica"
                }
            ),
        );
        match supervise(o, &tera, &mut rt, &cl, roles, stop) {
            Outcome::Exit(code) => return Ok(code),
            Outcome::Replan => continue,
        }
    }
}

/// Waits on postgres; follows role changes of the roles ConfigMap while it runs.
fn supervise(
    o: &Options,
    tera: &tera::Tera,
    rt: &mut PodRuntime,
    cl: &dyn Clients,
    mut seen: Roles,
    stop: &AtomicBool,
) -> Outcome {
    let member = o.member.as_str();
    loop {
        if let Some(s) = rt.exited() {
            let code = exit_code(s);
            say(member, format!("postgres exited with {code}"));
            return Outcome::Exit(code);
        }
        if stop.load(Ordering::SeqCst) {
            say(member, "signal received: fast shutdown of postgres");
            let _ = rt.stop(member, Kind::Postgres, StopMode::Fast);
            return Outcome::Exit(0);
        }
        sleep_unless(stop, o.poll);
        let now = match read_roles(&o.roles) {
            Ok(r) => r,
            Err(e) => {
                say(member, format!("{e}; keeping the current role"));
                continue;
            }
        };
        if now.state == seen.state {
            continue;
        }
        match follow(member, tera, rt, cl, &now) {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => seen = now,
            Err(e) => say(member, format!("{e}; trying again")),
        }
    }
}

/// One role change while postgres runs. `Ok(None)`: done, postgres keeps running.
fn follow(
    member: &str,
    tera: &tera::Tera,
    rt: &mut PodRuntime,
    cl: &dyn Clients,
    now: &Roles,
) -> Result<Option<Outcome>, String> {
    if now.state.fenced.contains(member) {
        say(
            member,
            format!("fenced at epoch {}: fast shutdown", now.state.epoch),
        );
        let _ = rt.stop(member, Kind::Postgres, StopMode::Fast);
        return Ok(Some(Outcome::Replan));
    }
    let t = now.current(member).map_err(|e| e.to_string())?;
    let m = t
        .postgres
        .as_ref()
        .and_then(|p| p.member(member))
        .cloned()
        .ok_or("not a member any more")?;
    let in_recovery = cl
        .pg(rt, &m, &PgOp::InRecovery, Duration::from_secs(3))
        .map_err(|e| e.to_string())?
        == PgReply::Bool(true);
    let overrides = overrides_for(&t, tera, member, now.state.epoch).map_err(|e| e.to_string())?;
    rt.retarget(&t, overrides);
    let primary = now.state.primary == member;
    if !primary && !in_recovery {
        say(
            member,
            format!(
                "{} is the primary now: fast shutdown, then rewind",
                now.state.primary
            ),
        );
        let _ = rt.stop(member, Kind::Postgres, StopMode::Fast);
        return Ok(Some(Outcome::Replan));
    }
    let pg = t.postgres.as_ref().ok_or("no postgres")?;
    if !primary && pg.slots {
        // The new primary may not have this replica's slot yet (the operator creates them too,
        // whichever comes first): streaming with `primary_slot_name` needs it.
        let up = pg.primary_member().ok_or("no primary")?;
        cl.pg(
            rt,
            up,
            &PgOp::EnsureSlot(m.slot.clone()),
            Duration::from_secs(3),
        )
        .map_err(|e| format!("slot {} on {}: {e}", m.slot, up.name))?;
    }
    rt.write_overrides().map_err(|e| e.to_string())?;
    cl.pg(rt, &m, &PgOp::ReloadConf, Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    if primary && in_recovery {
        match cl
            .pg(
                rt,
                &m,
                &PgOp::Promote { wait_seconds: 30 },
                Duration::from_secs(35),
            )
            .map_err(|e| e.to_string())?
        {
            PgReply::Bool(true) => say(member, format!("promoted at epoch {}", now.state.epoch)),
            other => return Err(format!("pg_promote() did not finish: {other:?}")),
        }
    } else if primary {
        say(
            member,
            format!("primary settings reloaded (epoch {})", now.state.epoch),
        );
    } else {
        say(
            member,
            format!(
                "streams from {} now (epoch {})",
                now.state.primary, now.state.epoch
            ),
        );
    }
    if primary && pg.slots {
        for r in pg.members.iter().filter(|r| r.name != member) {
            cl.pg(
                rt,
                &m,
                &PgOp::EnsureSlot(r.slot.clone()),
                Duration::from_secs(3),
            )
            .map_err(|e| format!("slot {}: {e}", r.slot))?;
        }
    }
    Ok(None)
}
