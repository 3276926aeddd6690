//! The engine's seams as the PostgreSQL pod sees them, for `bssctl instance`: a `Runtime` whose
//! one component is the member this pod runs (postgres is the entrypoint's child process), and a
//! `StateStore` over the pod's secret files.
//!
//! The PostgreSQL tasks (initdb, pg_basebackup, standby.signal, pg_controldata, single-user
//! recovery, pg_rewind) are the local runtime's, run on the pod's volumes; the recipe that orders
//! them is the engine's (`converge`). Not here: deciding what to do (`instance::decide`), the
//! operator's side of a failover.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::failover::FailoverEvent;
use crate::engine::runtime::{
    Capabilities, Endpoint, Observed, Runtime, RuntimeError, Signal, StartOpts, StopMode, Task,
};
use crate::engine::store::StateStore;
use crate::render::{Bundle, ComponentBundle, Kind};
use crate::runtime::local::Local;
use crate::state::{self, Applied, StateError};
use crate::tools;
use crate::topology::model::{PgMember, ValidatedTopology};

/// Settings that depend on the member's current role. The ConfigMap's postgresql.conf was
/// rendered for the roles of the last apply, which a failover changes before the ConfigMap does;
/// the entrypoint writes these into `postgresql.auto.conf` (read after postgresql.conf, so it
/// wins) from its own rendering for the roles ConfigMap.
pub const ROLE_SETTINGS: &[&str] = &[
    "primary_conninfo",
    "primary_slot_name",
    "synchronous_standby_names",
];

/// `postgresql.auto.conf` for the member's role: the role settings of its rendered
/// postgresql.conf, the others set empty (a primary streams from nobody, a replica waits for no
/// standby).
pub fn role_overrides(rendered_conf: &str, epoch: u64) -> String {
    let mut out = format!(
        "# Written by `bssctl instance` for the roles of epoch {epoch}; overrides postgresql.conf.\n"
    );
    for key in ROLE_SETTINGS {
        let line = rendered_conf.lines().map(str::trim).find(|l| {
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        match line {
            Some(l) => out.push_str(&format!("{l}\n")),
            None => out.push_str(&format!("{key} = ''\n")),
        }
    }
    out
}

/// The member this pod runs, as a runtime of one component.
pub struct PodRuntime {
    t: ValidatedTopology,
    member: PgMember,
    /// postgres and its arguments, as the manifest passes them after `--`.
    argv: Vec<String>,
    /// What `start` writes to postgresql.auto.conf first.
    overrides: String,
    tasks: Local,
    child: Option<Child>,
    started_at: u64,
}

impl PodRuntime {
    pub fn new(
        t: &ValidatedTopology,
        member: &PgMember,
        argv: Vec<String>,
        overrides: String,
    ) -> PodRuntime {
        PodRuntime {
            t: t.clone(),
            member: member.clone(),
            argv,
            overrides,
            tasks: Local::new(t),
            child: None,
            started_at: 0,
        }
    }

    /// Same pod, roles as `t` has them now (the running child is kept).
    pub fn retarget(&mut self, t: &ValidatedTopology, overrides: String) {
        self.t = t.clone();
        self.tasks = Local::new(t);
        self.overrides = overrides;
    }

    /// Writes the role settings into the data directory (before a start, or before a reload).
    pub fn write_overrides(&self) -> Result<(), RuntimeError> {
        let path = Path::new(&self.member.data_dir).join("postgresql.auto.conf");
        state::write_atomic(&path, self.overrides.as_bytes(), 0o600)
            .map_err(|e| RuntimeError::step(&self.member.name, "write role settings", e))?;
        if let Some((u, g)) = tools::postgres_user() {
            let _ = rustix::fs::chown(
                &path,
                Some(rustix::process::Uid::from_raw(u)),
                Some(rustix::process::Gid::from_raw(g)),
            );
        }
        Ok(())
    }

    /// The child's exit status once it has exited (reaped), None while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn own(&self, name: &str) -> Result<(), RuntimeError> {
        if name == self.member.name {
            Ok(())
        } else {
            Err(RuntimeError::step(
                name,
                "run",
                format!("this pod runs {} only", self.member.name),
            ))
        }
    }

    fn send(&self, sig: rustix::process::Signal) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| rustix::process::Pid::from_raw(c.id() as i32))
        {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// Signals the child and waits for it to exit; SIGKILL after `grace`.
    fn stop_child(&mut self, sig: rustix::process::Signal, grace: Duration) {
        if self.child.is_none() {
            return;
        }
        self.send(sig);
        let s = Instant::now();
        while self.exited().is_none() {
            if s.elapsed() > grace {
                self.send(rustix::process::Signal::KILL);
                if let Some(c) = self.child.as_mut() {
                    let _ = c.wait();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Runtime for PodRuntime {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "kubernetes",
            envoy_hot_restart: false,
            live_files: false,
            members_follow_roles: false,
            concurrent_tasks: false,
        }
    }

    fn preflight(&self, _desired: &Bundle) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn prepare(&mut self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }

    /// The files are the mounted ConfigMap (read-only); the role settings go to
    /// postgresql.auto.conf at start.
    fn put_config(&mut self, name: &str, _c: &ComponentBundle) -> Result<(), RuntimeError> {
        self.own(name)
    }

    fn start(
        &mut self,
        name: &str,
        _c: &ComponentBundle,
        _opts: StartOpts,
    ) -> Result<Observed, RuntimeError> {
        self.own(name)?;
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| RuntimeError::step(name, "start", "no postgres command after `--`"))?;
        let user = tools::postgres_user();
        // The pod's emptyDir is fresh after every pod start; the data directory keeps the mode
        // PostgreSQL insists on even where a volume's fsGroup handling widened it.
        std::fs::create_dir_all(&self.member.socket_dir)
            .map_err(|e| RuntimeError::step(name, "socket directory", e))?;
        if let Some((u, g)) = user {
            let _ = rustix::fs::chown(
                Path::new(&self.member.socket_dir),
                Some(rustix::process::Uid::from_raw(u)),
                Some(rustix::process::Gid::from_raw(g)),
            );
        }
        let _ = rustix::fs::chmod(
            Path::new(&self.member.data_dir),
            rustix::fs::Mode::from_raw_mode(0o700),
        );
        self.write_overrides()?;
        let bin = tools::find(program).map_err(|e| RuntimeError::step(name, "start", e))?;
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(std::process::Stdio::null());
        if let Some((u, g)) = user {
            cmd.uid(u).gid(g);
        }
        let child = cmd
            .spawn()
            .map_err(|e| RuntimeError::step(name, "start", format!("{program}: {e}")))?;
        self.started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let pid = child.id();
        self.child = Some(child);
        Ok(Observed {
            running: true,
            hash: String::new(),
            restarts: 0,
            started_at: self.started_at,
            instance: format!("pid {pid}"),
            pid: Some(pid),
            epoch: 0,
        })
    }

    fn stop(&mut self, name: &str, _kind: Kind, mode: StopMode) -> Result<(), RuntimeError> {
        self.own(name)?;
        use rustix::process::Signal as S;
        match mode {
            // SIGTERM is PostgreSQL's smart shutdown, SIGINT its fast one.
            StopMode::Graceful => self.stop_child(S::TERM, Duration::from_secs(60)),
            StopMode::Fast => self.stop_child(S::INT, Duration::from_secs(30)),
            StopMode::Kill => self.stop_child(S::KILL, Duration::from_secs(5)),
        }
        self.child = None;
        Ok(())
    }

    fn signal(&mut self, name: &str, sig: Signal) -> Result<(), RuntimeError> {
        self.own(name)?;
        use rustix::process::Signal as S;
        self.send(match sig {
            Signal::Usr2 => S::USR2,
            Signal::Hup => S::HUP,
            Signal::Term => S::TERM,
            Signal::Kill => S::KILL,
            Signal::Stop => S::STOP,
            Signal::Cont => S::CONT,
        });
        Ok(())
    }

    fn exec(&mut self, name: &str, task: &Task) -> Result<String, RuntimeError> {
        self.own(name)?;
        match task {
            Task::PgDataState
            | Task::PgInitDb { .. }
            | Task::PgBaseBackup { .. }
            | Task::PgStandbySignal(_)
            | Task::PgControlData
            | Task::PgSingleUserRecovery
            | Task::PgRewind { .. }
            | Task::PgDiscardData => self.tasks.exec(name, task),
            other => Err(RuntimeError::step(
                name,
                "exec",
                format!("{other:?} is not a PostgreSQL task"),
            )),
        }
    }

    fn observe(&self, name: &str) -> Option<Observed> {
        if name != self.member.name {
            return None;
        }
        let pid = self.child.as_ref()?.id();
        // `exited` needs &mut; a process that has exited but is not reaped is a zombie.
        let running =
            crate::runtime::process::pid_alive(pid) && !crate::runtime::process::zombie(pid);
        Some(Observed {
            running,
            hash: String::new(),
            restarts: 0,
            started_at: self.started_at,
            instance: format!("pid {pid}"),
            pid: Some(pid),
            epoch: 0,
        })
    }

    fn instance_alive(&self, o: &Observed) -> bool {
        o.pid.is_some()
            && o.pid == self.pid()
            && self.observe(&self.member.name).is_some_and(|x| x.running)
    }

    fn mark_config(&mut self, _name: &str, _hash: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// This pod's server over loopback; the others at their Service addresses.
    fn endpoint(&self, name: &str, port: u16) -> Endpoint {
        let host = if name == self.member.name {
            "127.0.0.1".to_string()
        } else {
            self.t
                .postgres
                .as_ref()
                .and_then(|p| p.member(name))
                .map(|m| m.host.clone())
                .unwrap_or_else(|| name.to_string())
        };
        Endpoint { host, port }
    }

    fn logs(&self, _name: &str, _lines: usize) -> String {
        String::new()
    }

    fn remove(&mut self, name: &str, _kind: Kind) -> Result<(), RuntimeError> {
        Err(RuntimeError::step(
            name,
            "remove",
            "the pod's volumes are removed with its PersistentVolumeClaim",
        ))
    }

    fn orphans(&self, _desired: &Bundle) -> Vec<String> {
        Vec::new()
    }

    fn teardown(
        &mut self,
        _bundle: Option<&Bundle>,
        _keep_data: bool,
    ) -> Result<Vec<String>, RuntimeError> {
        let name = self.member.name.clone();
        self.stop(&name, Kind::Postgres, StopMode::Fast)?;
        Ok(Vec::new())
    }
}

/// The pod's state: its secret files; a former primary to rewind, for this start only. The pod
/// keeps no applied record, intent or history (the operator's Topology status has them).
pub struct PodStore {
    t: ValidatedTopology,
    rewind: Mutex<BTreeSet<String>>,
}

impl PodStore {
    pub fn new(t: &ValidatedTopology) -> PodStore {
        PodStore {
            t: t.clone(),
            rewind: Mutex::new(BTreeSet::new()),
        }
    }
}

impl StateStore for PodStore {
    fn secret(&self, name: &str) -> Result<String, StateError> {
        state::secret_value(&self.t, name)
    }
    fn applied(&self) -> Result<Option<Applied>, StateError> {
        Ok(None)
    }
    fn write_applied(&self, _a: &Applied) -> Result<(), StateError> {
        Ok(())
    }
    fn applied_token(&self) -> Option<String> {
        None
    }
    fn intent(&self) -> Option<FailoverEvent> {
        None
    }
    fn set_intent(&self, _ev: Option<&FailoverEvent>) -> Result<(), StateError> {
        Ok(())
    }
    fn history(&self) -> Vec<FailoverEvent> {
        Vec::new()
    }
    fn push_history(&self, _ev: &FailoverEvent) -> Result<(), StateError> {
        Ok(())
    }
    fn needs_rewind(&self, member: &str) -> bool {
        self.rewind.lock().is_ok_and(|s| s.contains(member))
    }
    fn set_needs_rewind(&self, member: &str, on: bool) -> Result<(), StateError> {
        if let Ok(mut s) = self.rewind.lock() {
            if on {
                s.insert(member.to_string());
            } else {
                s.remove(member);
            }
        }
        Ok(())
    }
}

/// Copies the mounted Secret keys to `to` with mode 0600 (libpq refuses group-readable password
/// files), owned by PostgreSQL's user when the entrypoint runs as root (tests).
pub fn copy_secrets(from: &Path, to: &Path) -> Result<usize, std::io::Error> {
    std::fs::create_dir_all(to)?;
    let user = tools::postgres_user();
    let mut n = 0;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        let name_s = name.to_string_lossy();
        // Kubernetes projects keys through `..data` symlinks; only the keys themselves count.
        if name_s.starts_with("..") || !e.path().is_file() {
            continue;
        }
        let dest: PathBuf = to.join(&name);
        let value = std::fs::read(e.path())?;
        state::write_atomic(&dest, &value, 0o600)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Some((u, g)) = user {
            rustix::fs::chown(
                &dest,
                Some(rustix::process::Uid::from_raw(u)),
                Some(rustix::process::Gid::from_raw(g)),
            )?;
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_settings_come_from_the_rendering_and_the_others_are_cleared() {
        let replica = "port = 5433\nprimary_conninfo = 'host=a port=1'\nprimary_slot_name = 'postgres_1'\nwal_level = 'replica'\n";
        let o = role_overrides(replica, 3);
        assert!(o.contains("primary_conninfo = 'host=a port=1'\n"));
        assert!(o.contains("primary_slot_name = 'postgres_1'\n"));
        assert!(o.contains("synchronous_standby_names = ''\n"));
        assert!(!o.contains("wal_level"));
        let primary = "synchronous_standby_names = 'ANY 1 (postgres_1)'\n";
        let o = role_overrides(primary, 4);
        assert!(o.contains("primary_conninfo = ''\n"));
        assert!(o.contains("synchronous_standby_names = 'ANY 1 (postgres_1)'\n"));
        assert!(o.contains("epoch 4"));
    }
}
