//! Converge: brings a runtime to a rendered bundle. For each component in dependency order it
//! decides the effective action (the plan's, corrected by what is observed), executes it behind
//! a real health gate, verifies reloads, and puts the previous files back when a reload or
//! restart fails. Every step is idempotent, so an apply killed half-way is finished by the next.
//!
//! The per-component recipes (PostgreSQL bootstrap, base backups, rewind, streaming check,
//! backend migrations, broker topics, HAProxy / Envoy / Prometheus / Alertmanager reloads) live
//! here too; they use only the runtime's primitives and the client seam.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::clients::{ClientError, Method, PgOp, PgReply};
use crate::engine::health::{self, gate_timeout, ports_of};
use crate::engine::runtime::{
    Observed, ReloadStyle, RuntimeError, SecretValue, Signal, StartOpts, StopMode, Task,
};
use crate::engine::Env;
use crate::pgsql;
use crate::plan::{Action, Plan};
use crate::probe;
use crate::render::{Bundle, ComponentBundle, Kind};
use crate::topology::model::{PgMember, PostgresModel, Role};

/// Why a verified reload or a rewind did not take.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("{0} is not in the topology")]
    Missing(&'static str),
    /// The component refused the change, or the check after it failed.
    #[error("{0}")]
    Refused(String),
}

/// State, health and role of one component, as `status` and the agent show it.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub kind: Kind,
    pub state: RunState,
    pub healthy: bool,
    pub health: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub instance: String,
    pub ports: Vec<u16>,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<pgsql::ReplicaStat>,
}

/// Whether a component runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
    Crashed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Stopped => "stopped",
            RunState::Crashed => "crashed",
        }
    }
}

/// The action to take for one component given the plan's action and what is observed. Pure.
///
/// Nothing runs → create. The running instance already has the desired hash → nothing (a
/// restarted apply does not redo finished work). Something else runs but the plan saw no
/// change (the files were changed behind our back, or a create was interrupted) → restart.
pub fn effective_action(observed: Option<&Observed>, desired_hash: &str, plan: Action) -> Action {
    match (observed.filter(|o| o.running), plan) {
        (None, Action::Remove) => Action::Remove,
        (None, _) => Action::Create,
        (Some(o), _) if o.hash == desired_hash => Action::None,
        (Some(_), Action::None) | (Some(_), Action::Create) => Action::Restart,
        (Some(_), a) => a,
    }
}

/// Adjusts a plan to a runtime's capabilities: a reload the runtime cannot do in place becomes
/// a restart, with the reason saying so. Pure.
pub fn adjust_plan(plan: &mut Plan, caps: &crate::engine::runtime::Capabilities) {
    for c in &mut plan.components {
        if c.action == Action::Reload && caps.reload_style(c.kind) == ReloadStyle::Restart {
            c.action = Action::Restart;
            c.reason = format!(
                "{}; the {} runtime cannot reload it in place",
                c.reason, caps.name
            );
        }
    }
}

impl Env<'_> {
    fn gate(
        &mut self,
        name: &str,
        kind: Kind,
        started: Option<&Observed>,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        let start = Instant::now();
        self.ev(name, "health", "start", Duration::ZERO, "");
        match health::wait_healthy(self.t, self.rt, self.cl, name, kind, timeout, started) {
            Ok(d) => {
                self.ev(name, "health", "ok", start.elapsed(), d.clone());
                Ok(d)
            }
            Err(e) => {
                self.ev(name, "health", "fail", start.elapsed(), e.to_string());
                Err(RuntimeError::step(name, "health", e))
            }
        }
    }

    /// Stops a component (PostgreSQL with a fast shutdown) and waits until nothing is left.
    pub fn stop(&mut self, name: &str, kind: Kind) -> Result<(), RuntimeError> {
        self.rt.stop(name, kind, StopMode::Fast)
    }

    /// Brings one component to the desired bundle. `action` comes from the plan; the observed
    /// state can override it (see `effective_action`).
    pub fn ensure(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        old: Option<&ComponentBundle>,
        action: Action,
    ) -> Result<Action, RuntimeError> {
        let observed = self.rt.observe(name);
        if observed.as_ref().is_some_and(|o| !o.running) {
            // A crashed leader can leave children behind (PostgreSQL backends, HAProxy workers)
            // that hold its ports or data directory: they go first.
            self.rt.stop(name, c.kind, StopMode::Kill)?;
        }
        let running = observed.filter(|o| o.running);
        let effective = effective_action(running.as_ref(), &c.hash(), action);
        match effective {
            Action::None => {
                self.ev(name, "up-to-date", "ok", Duration::ZERO, "");
                Ok(Action::None)
            }
            Action::Create => {
                self.rt.put_config(name, c)?;
                self.create(name, c)?;
                Ok(Action::Create)
            }
            Action::Reload => {
                let Some(o) = running else {
                    return Ok(Action::None);
                };
                self.rt.put_config(name, c)?;
                if let Err(e) = self.reload(name, c, &o) {
                    if let Some(prev) = old {
                        let _ = self.rt.put_config(name, prev);
                        let _ = self.reload(name, prev, &o);
                    }
                    return Err(e);
                }
                Ok(Action::Reload)
            }
            Action::Restart | Action::Recreate => {
                let s = Instant::now();
                self.ev(name, "stop", "start", Duration::ZERO, "");
                self.stop(name, c.kind)?;
                self.ev(name, "stop", "ok", s.elapsed(), "");
                if effective == Action::Recreate && c.kind != Kind::Postgres {
                    self.rt.remove(name, c.kind)?;
                }
                self.rt.put_config(name, c)?;
                let r = self.create(name, c);
                if let (Err(e), Some(prev)) = (&r, old) {
                    // Roll back to the last good files so the component keeps serving.
                    self.ev(name, "rollback", "start", Duration::ZERO, e.to_string());
                    let _ = self.rt.put_config(name, prev);
                    let _ = self.create(name, prev);
                }
                r?;
                Ok(effective)
            }
            Action::Remove => {
                self.remove(name, c.kind)?;
                Ok(Action::Remove)
            }
        }
    }

    fn create(&mut self, name: &str, c: &ComponentBundle) -> Result<(), RuntimeError> {
        self.create_with(name, c, StartOpts::default())
    }

    /// Starts a crashed component again (supervision), counting the restart.
    pub fn restart_crashed(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        restarts: u32,
    ) -> Result<(), RuntimeError> {
        if self.rt.observe(name).is_some_and(|o| !o.running) {
            self.rt.stop(name, c.kind, StopMode::Kill)?;
        }
        self.rt.put_config(name, c)?;
        self.create_with(name, c, StartOpts { epoch: 0, restarts })
    }

    fn create_with(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        opts: StartOpts,
    ) -> Result<(), RuntimeError> {
        match c.kind {
            Kind::Postgres => self.create_postgres(name, c, opts),
            Kind::Backend => {
                let s = Instant::now();
                self.ev(name, "migrate", "start", Duration::ZERO, "");
                if let Err(e) = self.rt.exec(name, &Task::Migrate) {
                    self.ev(name, "migrate", "fail", s.elapsed(), e.to_string());
                    return Err(e);
                }
                self.ev(name, "migrate", "ok", s.elapsed(), "");
                self.start_and_gate(name, c, opts)
            }
            Kind::Kafka => {
                self.start_and_gate(name, c, opts)?;
                self.ensure_topics(name)
            }
            _ => self.start_and_gate(name, c, opts),
        }
    }

    /// Creates components that do not depend on one another (see `starts_in_a_wave`): writes
    /// and starts each, then probes all of them in turn until each is healthy. The first that
    /// exits or misses its gate fails the apply, as it would have one by one; the others of the
    /// wave are left running (independent of it), and the next apply converges from there.
    fn create_wave(&mut self, run: &[(&String, &ComponentBundle)]) -> Result<(), RuntimeError> {
        let mut pending = Vec::with_capacity(run.len());
        for (name, c) in run {
            self.rt.put_config(name, c)?;
            let s = Instant::now();
            self.ev(name, "start", "start", Duration::ZERO, "");
            let o = self.rt.start(name, c, StartOpts::default())?;
            self.ev(name, "start", "ok", s.elapsed(), describe(&o));
            pending.push((name.as_str(), c.kind, o, Instant::now()));
        }
        for (name, ..) in &pending {
            self.ev(name, "health", "start", Duration::ZERO, "");
        }
        let mut pace = health::Pace::default();
        while !pending.is_empty() {
            let mut k = 0;
            while k < pending.len() {
                let (name, kind, o, since) = &pending[k];
                let (name, kind) = (*name, *kind);
                let failed = if !self.rt.instance_alive(o) {
                    Some(health::Unhealthy::Exited {
                        log: self.rt.logs(name, 15),
                    })
                } else {
                    match health::health(self.t, self.rt, self.cl, name, kind) {
                        Ok(d) => {
                            self.ev(name, "health", "ok", since.elapsed(), d);
                            pending.remove(k);
                            continue;
                        }
                        Err(e) if since.elapsed() >= gate_timeout(kind) => {
                            Some(health::Unhealthy::TimedOut {
                                secs: gate_timeout(kind).as_secs(),
                                last: e.to_string(),
                                log: self.rt.logs(name, 15),
                            })
                        }
                        Err(_) => None,
                    }
                };
                if let Some(e) = failed {
                    self.ev(name, "health", "fail", since.elapsed(), e.to_string());
                    return Err(RuntimeError::step(name, "health", e));
                }
                k += 1;
            }
            if !pending.is_empty() {
                pace.sleep();
            }
        }
        Ok(())
    }

    /// When `ordered[i]` begins a run of PostgreSQL replicas that are all to be created from
    /// nothing (never started, empty data directory, no rewind pending) and their primary came
    /// earlier in the order: their base backups run at once. Each member is then created as
    /// usual, finds its data in place and goes on with `standby.signal`, start, gate and the
    /// streaming check. The copies overlap their streaming from the primary and their fsyncs
    /// instead of waiting for one another. A failed copy fails the apply after the others have
    /// finished; a finished copy stays in place for the next apply.
    fn clone_replicas(
        &mut self,
        ordered: &[(&String, &ComponentBundle)],
        i: usize,
        action_of: &dyn Fn(&str) -> Action,
    ) -> Result<(), RuntimeError> {
        let t = self.t;
        let Some(pg) = t.postgres.as_ref() else {
            return Ok(());
        };
        let Some(primary) = pg.primary_member() else {
            return Ok(());
        };
        if !ordered[..i].iter().any(|(n, _)| **n == primary.name) {
            return Ok(());
        }
        let mut run = Vec::new();
        for (name, c) in &ordered[i..] {
            let fresh = c.kind == Kind::Postgres
                && pg.member(name).is_some_and(|m| m.role == Role::Replica)
                && action_of(name) == Action::Create
                && self.rt.observe(name).is_none()
                && !self.store.needs_rewind(name);
            if !fresh {
                break;
            }
            run.push((name.as_str(), *c));
        }
        if run.len() < 2 {
            return Ok(());
        }
        let mut tasks = Vec::with_capacity(run.len());
        for (name, c) in &run {
            let Some(m) = pg.member(name) else { continue };
            if self.rt.exec(name, &Task::PgDataState)?.trim() != "empty" {
                continue;
            }
            // Where the runtime delivers a member's credentials with its files.
            self.rt.put_config(name, c)?;
            tasks.push((*name, self.clone_task(pg, primary, m)?));
        }
        if tasks.len() < 2 {
            return Ok(());
        }
        let s = Instant::now();
        for (name, _) in &tasks {
            let detail = format!("from {}, {} copies at once", primary.name, tasks.len());
            self.ev(name, "basebackup", "start", Duration::ZERO, detail);
        }
        let results = self.rt.exec_each(&tasks);
        let mut first_err = None;
        for ((name, _), r) in tasks.iter().zip(results) {
            match r {
                Ok(_) => self.ev(name, "basebackup", "ok", s.elapsed(), ""),
                Err(e) => {
                    self.ev(name, "basebackup", "fail", s.elapsed(), e.to_string());
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The base backup of replica `m` from `primary`, its replication slot made first (the
    /// copy uses it).
    fn clone_task(
        &mut self,
        pg: &PostgresModel,
        primary: &PgMember,
        m: &PgMember,
    ) -> Result<Task, RuntimeError> {
        if pg.slots {
            self.pg(primary, PgOp::EnsureSlot(m.slot.clone()))
                .map_err(|e| RuntimeError::step(&m.name, "slot", e))?;
        }
        Ok(Task::PgBaseBackup {
            host: primary.host.clone(),
            port: primary.port,
            user: pg.replication_user.clone(),
            slot: pg.slots.then(|| m.slot.clone()),
        })
    }

    fn start_and_gate(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        opts: StartOpts,
    ) -> Result<(), RuntimeError> {
        let s = Instant::now();
        self.ev(name, "start", "start", Duration::ZERO, "");
        let o = self.rt.start(name, c, opts)?;
        self.ev(name, "start", "ok", s.elapsed(), describe(&o));
        self.gate(name, c.kind, Some(&o), gate_timeout(c.kind))?;
        Ok(())
    }

    fn ensure_topics(&mut self, name: &str) -> Result<(), RuntimeError> {
        let t = self.t;
        let Some(k) = &t.kafka else { return Ok(()) };
        let Some(b) = k.brokers.iter().find(|b| b.name == name) else {
            return Ok(());
        };
        if b.index != 0 {
            return Ok(());
        }
        let s = Instant::now();
        self.ev(name, "topics", "start", Duration::ZERO, "");
        let url = format!("tcp://{}:{}", b.endpoint.host, b.endpoint.port);
        let tool = |args: Vec<String>| Task::Tool {
            program: "tansu".into(),
            args,
        };
        let existing = self
            .rt
            .exec(
                name,
                &tool(vec![
                    "topic".into(),
                    "list".into(),
                    "--broker".into(),
                    url.clone(),
                ]),
            )
            .unwrap_or_default();
        let mut created = 0;
        for tp in &k.topics {
            if existing.contains(&format!("\"{}\"", tp.name))
                || existing.lines().any(|l| l.trim() == tp.name)
            {
                continue;
            }
            let args = vec![
                "topic".into(),
                "create".into(),
                tp.name.clone(),
                "--partitions".into(),
                tp.partitions.to_string(),
                "--broker".into(),
                url.clone(),
            ];
            match self.rt.exec(name, &tool(args)) {
                Ok(_) => created += 1,
                Err(e) => {
                    let d = e.to_string();
                    if d.contains("TopicAlreadyExists") || d.contains("already exists") {
                        continue;
                    }
                    self.ev(name, "topics", "fail", s.elapsed(), d);
                    return Err(e);
                }
            }
        }
        self.ev(
            name,
            "topics",
            "ok",
            s.elapsed(),
            format!("{created} created, {} declared", k.topics.len()),
        );
        Ok(())
    }

    fn pg(&mut self, m: &PgMember, op: PgOp) -> Result<PgReply, ClientError> {
        self.cl.pg(self.rt, m, &op, Duration::from_secs(3))
    }

    fn create_postgres(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        opts: StartOpts,
    ) -> Result<(), RuntimeError> {
        let t = self.t;
        let pg = t
            .postgres
            .as_ref()
            .ok_or_else(|| RuntimeError::step(name, "create", "no postgres in the topology"))?;
        let m = pg
            .member(name)
            .ok_or_else(|| RuntimeError::step(name, "create", "unknown member"))?
            .clone();
        let initialized = |env: &mut Self| -> Result<bool, RuntimeError> {
            Ok(env.rt.exec(name, &Task::PgDataState)?.trim() == "initialized")
        };
        if m.role == Role::Replica && self.store.needs_rewind(name) && initialized(self)? {
            // A former primary: never started before its history matches the new primary's.
            let s = Instant::now();
            self.ev(name, "rewind", "start", Duration::ZERO, "");
            match self.rewind(&m) {
                Ok(d) => self.ev(name, "rewind", "ok", s.elapsed(), d),
                Err(e) => {
                    self.ev(
                        name,
                        "rewind",
                        "fail",
                        s.elapsed(),
                        format!("{e}; re-cloning with pg_basebackup"),
                    );
                    self.rt.exec(name, &Task::PgDiscardData)?;
                }
            }
            self.store
                .set_needs_rewind(name, false)
                .map_err(|e| RuntimeError::step(name, "rewind", e))?;
        }
        if !initialized(self)? {
            if m.role == Role::Primary {
                let s = Instant::now();
                self.ev(name, "initdb", "start", Duration::ZERO, "");
                let pw = self
                    .store
                    .secret("postgres-superuser-password")
                    .map_err(|e| RuntimeError::step(name, "initdb", e))?;
                let task = Task::PgInitDb {
                    superuser: pg.superuser.clone(),
                    password: SecretValue(pw),
                };
                if let Err(e) = self.rt.exec(name, &task) {
                    self.ev(name, "initdb", "fail", s.elapsed(), e.to_string());
                    return Err(e);
                }
                self.ev(name, "initdb", "ok", s.elapsed(), "");
            } else {
                let primary = pg
                    .primary_member()
                    .ok_or_else(|| RuntimeError::step(name, "basebackup", "no primary"))?
                    .clone();
                let task = self.clone_task(pg, &primary, &m)?;
                let s = Instant::now();
                self.ev(
                    name,
                    "basebackup",
                    "start",
                    Duration::ZERO,
                    format!("from {}", primary.name),
                );
                if let Err(e) = self.rt.exec(name, &task) {
                    self.ev(name, "basebackup", "fail", s.elapsed(), e.to_string());
                    return Err(e);
                }
                self.ev(name, "basebackup", "ok", s.elapsed(), "");
            }
        }
        // The role file lives in the data directory.
        self.rt.exec(
            name,
            &Task::PgStandbySignal(c.files.contains_key("standby.signal")),
        )?;
        self.start_and_gate(name, c, opts)?;
        if m.role == Role::Primary {
            let s = Instant::now();
            self.ev(name, "roles", "start", Duration::ZERO, "");
            let slots: Vec<String> = if pg.slots {
                pg.replicas().map(|r| r.slot.clone()).collect()
            } else {
                Vec::new()
            };
            self.pg(
                &m,
                PgOp::Bootstrap {
                    replication_user: pg.replication_user.clone(),
                    app_user: pg.user.clone(),
                    database: pg.database.clone(),
                    slots,
                },
            )
            .map_err(|e| RuntimeError::step(name, "roles", e))?;
            self.ev(
                name,
                "roles",
                "ok",
                s.elapsed(),
                format!(
                    "roles {}, {}; database {}; {} slots",
                    pg.replication_user,
                    pg.user,
                    pg.database,
                    pg.replicas().count()
                ),
            );
        } else {
            self.verify_streaming(&m)?;
        }
        Ok(())
    }

    /// Rewinds a stopped former primary onto the current primary's timeline with pg_rewind. A
    /// crashed target is first recovered in single-user mode with its own config (pg_rewind's own
    /// recovery would use the data directory's defaults, without wal_log_hints, and then refuse);
    /// single-user mode takes no connections, so it writes nothing anyone could read as
    /// acknowledged.
    fn rewind(&mut self, m: &PgMember) -> Result<String, StepError> {
        let t = self.t;
        let pg = t.postgres.as_ref().ok_or(StepError::Missing("postgres"))?;
        let primary = pg
            .primary_member()
            .ok_or(StepError::Missing("primary"))?
            .clone();
        if pg.slots {
            self.pg(&primary, PgOp::EnsureSlot(m.slot.clone()))?;
        }
        // pg_rewind reads the source's timeline from its control file, which a just-promoted
        // server updates only at its first checkpoint: without this it answers "no rewind
        // required" for a target that holds WAL the new primary never saw.
        self.pg(&primary, PgOp::Checkpoint)?;
        let name = m.name.as_str();
        // Single-user mode refuses to run with standby.signal; it is written again before the start.
        self.rt.exec(name, &Task::PgStandbySignal(false))?;
        let control = self.rt.exec(name, &Task::PgControlData)?;
        let state = control_field(&control, "Database cluster state:")
            .ok_or(StepError::Missing("pg_controldata printed cluster state"))?;
        if !state.starts_with("shut down") {
            self.rt
                .exec(name, &Task::PgSingleUserRecovery)
                .map_err(|e| {
                    StepError::Refused(format!("single-user recovery before pg_rewind: {e}"))
                })?;
        }
        let pw = self.store.secret("postgres-superuser-password")?;
        let out = self.rt.exec(
            name,
            &Task::PgRewind {
                host: primary.host.clone(),
                port: primary.port,
                user: pg.superuser.clone(),
                password: SecretValue(pw),
            },
        )?;
        let last = out.trim().lines().last().unwrap_or("").to_string();
        Ok(format!("from {}: {last}", primary.name))
    }

    /// Waits until the primary reports the replica as `streaming` in pg_stat_replication.
    fn verify_streaming(&mut self, m: &PgMember) -> Result<(), RuntimeError> {
        let pg = self
            .t
            .postgres
            .as_ref()
            .ok_or_else(|| RuntimeError::step(&m.name, "streaming", "no postgres"))?;
        let primary = pg
            .primary_member()
            .ok_or_else(|| RuntimeError::step(&m.name, "streaming", "no primary"))?
            .clone();
        let s = Instant::now();
        self.ev(&m.name, "streaming", "start", Duration::ZERO, "");
        let mut last = String::new();
        let mut pace = health::Pace::default();
        while s.elapsed() < Duration::from_secs(30) {
            match self.pg(&primary, PgOp::Replication) {
                Ok(PgReply::Replication(rows)) => {
                    if let Some(r) = rows.iter().find(|r| r.application_name == m.name) {
                        if r.state == "streaming" {
                            self.ev(
                                &m.name,
                                "streaming",
                                "ok",
                                s.elapsed(),
                                format!("{} ({})", r.state, r.sync_state),
                            );
                            return Ok(());
                        }
                        last = r.state.clone();
                    }
                }
                Ok(_) => {}
                Err(e) => last = e.to_string(),
            }
            pace.sleep();
        }
        self.ev(&m.name, "streaming", "fail", s.elapsed(), last.clone());
        Err(RuntimeError::step(
            &m.name,
            "streaming",
            format!("not streaming after 30s: {last}"),
        ))
    }

    /// Verified reload: the component takes the new files without dropping connections, and we
    /// check that it really did.
    pub fn reload(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        running: &Observed,
    ) -> Result<(), RuntimeError> {
        let t = self.t;
        let s = Instant::now();
        self.ev(name, "reload", "start", Duration::ZERO, "");
        let r = self.reload_inner(name, c, running);
        match r {
            Ok(detail) => {
                if c.kind != Kind::Envoy {
                    self.rt.mark_config(name, &c.hash())?;
                }
                self.ev(name, "reload", "ok", s.elapsed(), detail);
                Ok(())
            }
            Err(e) => {
                let _ = t;
                self.ev(name, "reload", "fail", s.elapsed(), e.to_string());
                Err(RuntimeError::step(name, "reload", e))
            }
        }
    }

    fn reload_inner(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        running: &Observed,
    ) -> Result<String, StepError> {
        let t = self.t;
        let to = Duration::from_secs(5);
        match self.rt.capabilities().reload_style(c.kind) {
            ReloadStyle::Restart => {
                return Err(StepError::Refused(format!(
                    "{:?} cannot be reloaded in place on the {} runtime",
                    c.kind,
                    self.rt.capabilities().name
                )))
            }
            ReloadStyle::HotRestart | ReloadStyle::InPlace => {}
        }
        match c.kind {
            Kind::Postgres => {
                let m = t
                    .postgres
                    .as_ref()
                    .and_then(|p| p.member(name))
                    .cloned()
                    .ok_or(StepError::Missing("member"))?;
                match self.pg(&m, PgOp::ReloadConf)? {
                    PgReply::Errors(errs) if !errs.is_empty() => Err(StepError::Refused(format!(
                        "PostgreSQL rejected the new settings: {}",
                        errs.join("; ")
                    ))),
                    _ => Ok("pg_reload_conf() applied, pg_file_settings has no errors".into()),
                }
            }
            Kind::Haproxy => {
                self.rt.exec(name, &Task::HaproxyCheck)?;
                let worker = |env: &mut Self| {
                    env.rt
                        .exec(name, &Task::HaproxyAdmin("show info".into()))
                        .ok()
                        .and_then(|o| probe::haproxy_info_pid(&o))
                };
                let before = worker(self);
                self.rt.signal(name, Signal::Usr2)?;
                let start = Instant::now();
                let mut pace = health::Pace::fine();
                loop {
                    let now = worker(self);
                    if now.is_some() && now != before {
                        return Ok(format!(
                            "new worker pid {} (was {})",
                            now.unwrap_or(0),
                            before.unwrap_or(0)
                        ));
                    }
                    if start.elapsed() > Duration::from_secs(10) {
                        return Err(StepError::Refused(format!(
                            "no new worker after 10s; log:\n{}",
                            self.rt.logs(name, 10)
                        )));
                    }
                    pace.sleep();
                }
            }
            Kind::Prometheus | Kind::Alertmanager => {
                // No HTTP lifecycle API (a web page could POST /-/quit): SIGHUP reloads, and
                // the reload metrics say whether the new file was taken.
                let port = *ports_of(t, name, c.kind)
                    .first()
                    .ok_or(StepError::Missing("port"))?;
                let prefix = if c.kind == Kind::Prometheus {
                    "prometheus"
                } else {
                    "alertmanager"
                };
                let ok_metric = format!("{prefix}_config_last_reload_successful");
                let ts_metric = format!("{prefix}_config_last_reload_success_timestamp_seconds");
                let read = |env: &mut Self| -> Result<(Option<f64>, Option<f64>), StepError> {
                    let (code, m) = env
                        .cl
                        .http(env.rt, name, port, Method::Get, "/metrics", to)?;
                    if code != 200 {
                        return Err(StepError::Refused(format!("/metrics answered {code}")));
                    }
                    Ok((
                        probe::metric_value(&m, &ok_metric),
                        probe::metric_value(&m, &ts_metric),
                    ))
                };
                let (_, before) = read(self)?;
                self.rt.signal(name, Signal::Hup)?;
                let start = Instant::now();
                let mut pace = health::Pace::default();
                loop {
                    pace.sleep();
                    match read(self) {
                        Ok((Some(ok), _)) if ok != 1.0 => {
                            return Err(StepError::Refused(format!(
                                "{ok_metric} is {ok} after SIGHUP: the new configuration was rejected; log:\n{}",
                                self.rt.logs(name, 10)
                            )))
                        }
                        Ok((Some(_), Some(ts))) if before.is_none_or(|b| ts > b) => {
                            return Ok(format!("SIGHUP reload ok, {ok_metric} = 1"))
                        }
                        _ => {}
                    }
                    if start.elapsed() > Duration::from_secs(10) {
                        return Err(StepError::Refused(format!(
                            "no successful reload within 10s of SIGHUP ({ts_metric} unchanged)"
                        )));
                    }
                }
            }
            Kind::Envoy => {
                // Hot restart: a new instance with the next epoch takes the listening sockets
                // over from the old one, which drains and exits.
                let epoch = running.epoch + 1;
                let new = self.rt.start(
                    name,
                    c,
                    StartOpts {
                        epoch,
                        restarts: running.restarts,
                    },
                )?;
                // Done when the admin answers from the new epoch (the old one hands its admin
                // over when the new one starts) and that epoch is LIVE: its listeners are then
                // the inherited sockets, and the old epoch only drains its open connections.
                let start = Instant::now();
                let mut pace = health::Pace::default();
                loop {
                    if !self.rt.instance_alive(&new) {
                        return Err(StepError::Refused(format!(
                            "the new envoy (epoch {epoch}) exited:\n{}",
                            self.rt.logs(name, 15)
                        )));
                    }
                    let stats = self
                        .rt
                        .exec(name, &Task::EnvoyAdmin("/stats/prometheus".into()))
                        .unwrap_or_default();
                    // Envoy writes a metric without tags as `name{} value`.
                    let gauge = |n: &str| {
                        probe::metric_value(&stats, &format!("{n}{{}}"))
                            .or_else(|| probe::metric_value(&stats, n))
                    };
                    let serving = gauge("envoy_server_hot_restart_epoch") == Some(f64::from(epoch))
                        && gauge("envoy_server_state") == Some(0.0);
                    if serving {
                        let old = if self.rt.instance_alive(running) {
                            " (old epoch draining)"
                        } else {
                            ""
                        };
                        return Ok(format!(
                            "hot restart to epoch {epoch}, {}{old}",
                            describe(&new)
                        ));
                    }
                    if start.elapsed() > Duration::from_secs(20) {
                        return Err(StepError::Refused(format!(
                            "the new envoy (epoch {epoch}) was not LIVE within 20s"
                        )));
                    }
                    pace.sleep();
                }
            }
            _ => Err(StepError::Refused(format!("{:?} cannot reload", c.kind))),
        }
    }

    /// Stops a removed component and deletes its data; a removed replica's slot is dropped.
    pub fn remove(&mut self, name: &str, kind: Kind) -> Result<(), RuntimeError> {
        let s = Instant::now();
        self.ev(name, "remove", "start", Duration::ZERO, "");
        self.rt.stop(name, kind, StopMode::Fast)?;
        if kind == Kind::Postgres {
            if let Some(primary) = self
                .t
                .postgres
                .as_ref()
                .and_then(|pg| pg.primary_member())
                .cloned()
            {
                let slot = format!("postgres_{}", name.trim_start_matches("postgres-"));
                let _ = self.pg(&primary, PgOp::DropSlot(slot));
            }
        }
        self.rt.remove(name, kind)?;
        self.ev(name, "remove", "ok", s.elapsed(), "stopped, data deleted");
        Ok(())
    }

    /// Executes `plan` against what runs: every desired component in order, then removals
    /// (last-started first), then orphans of this environment that no bundle names. Returns
    /// what was done per component.
    pub fn apply(
        &mut self,
        desired: &Bundle,
        applied: Option<&Bundle>,
        plan: &Plan,
    ) -> Result<BTreeMap<String, Action>, RuntimeError> {
        let mut done = BTreeMap::new();
        let ordered = desired.ordered();
        let action_of = |name: &str| plan.get(name).map(|p| p.action).unwrap_or(Action::Create);
        let mut i = 0;
        while i < ordered.len() {
            // A run of components that nothing later in the run depends on (the edge and the
            // observers), all to be created: started one after another, then gated together.
            let run: Vec<(&String, &ComponentBundle)> = ordered[i..]
                .iter()
                .take_while(|(n, c)| starts_in_a_wave(c.kind) && action_of(n) == Action::Create)
                .copied()
                .collect();
            if run.len() > 1 && run.iter().all(|(n, _)| self.rt.observe(n).is_none()) {
                self.create_wave(&run)?;
                for (n, _) in &run {
                    done.insert((*n).clone(), Action::Create);
                }
                i += run.len();
                continue;
            }
            if self.rt.capabilities().concurrent_tasks {
                self.clone_replicas(&ordered, i, &action_of)?;
            }
            let (name, c) = ordered[i];
            let old = applied.and_then(|a| a.components.get(name));
            let a = self.ensure(name, c, old, action_of(name))?;
            done.insert(name.clone(), a);
            i += 1;
        }
        if let Some(a) = applied {
            let mut gone: Vec<(&String, &ComponentBundle)> = a
                .ordered()
                .into_iter()
                .filter(|(n, _)| !desired.components.contains_key(*n))
                .collect();
            gone.reverse();
            for (name, c) in gone {
                self.remove(name, c.kind)?;
                done.insert(name.clone(), Action::Remove);
            }
        }
        Ok(done)
    }

    /// Status of every component of `bundle`, probed now.
    pub fn status(&mut self, bundle: &Bundle) -> Vec<ComponentStatus> {
        let t = self.t;
        let repl: Vec<pgsql::ReplicaStat> = t
            .postgres
            .as_ref()
            .and_then(|pg| {
                pg.members.iter().find_map(|m| {
                    let to = Duration::from_secs(1);
                    match self.cl.pg(self.rt, m, &PgOp::InRecovery, to).ok()? {
                        PgReply::Bool(false) => {}
                        _ => return None,
                    }
                    match self.cl.pg(self.rt, m, &PgOp::Replication, to).ok()? {
                        PgReply::Replication(rows) => Some(rows),
                        _ => None,
                    }
                })
            })
            .unwrap_or_default();
        bundle
            .ordered()
            .into_iter()
            .map(|(name, c)| {
                let o = self.rt.observe(name);
                let alive = o.as_ref().is_some_and(|o| o.running);
                let state = match (&o, alive) {
                    (None, _) => RunState::Stopped,
                    (Some(_), true) => RunState::Running,
                    (Some(_), false) => RunState::Crashed,
                };
                let (healthy, health_s) = if alive {
                    match health::health(t, self.rt, self.cl, name, c.kind) {
                        Ok(d) => (true, d),
                        Err(e) => (false, e.to_string()),
                    }
                } else {
                    (false, state.as_str().to_string())
                };
                let role = (c.kind == Kind::Postgres && healthy).then(|| health_s.clone());
                ComponentStatus {
                    name: name.clone(),
                    kind: c.kind,
                    state,
                    healthy,
                    health: health_s,
                    role,
                    pid: o.as_ref().filter(|_| alive).and_then(|o| o.pid),
                    instance: o
                        .as_ref()
                        .filter(|_| alive)
                        .map(|o| o.instance.clone())
                        .unwrap_or_default(),
                    ports: ports_of(t, name, c.kind),
                    restarts: o.as_ref().map(|o| o.restarts).unwrap_or(0),
                    replication: repl.iter().find(|r| &r.application_name == name).cloned(),
                }
            })
            .collect()
    }
}

/// A value of `pg_controldata` output (`Database cluster state:`, `Latest checkpoint location:`).
pub fn control_field(text: &str, field: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
}

/// `16/B374D848` as a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Kinds whose start nothing else in the stack waits for, listed last in the start order: the
/// edge proxy and the observers. A run of them is created as one wave (`create_wave`).
fn starts_in_a_wave(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Envoy
            | Kind::NodeExporter
            | Kind::PostgresExporter
            | Kind::RedisExporter
            | Kind::Prometheus
            | Kind::Alertmanager
    )
}

fn describe(o: &Observed) -> String {
    match o.pid {
        Some(p) => format!("pid {p}"),
        None => o.instance.clone(),
    }
}
