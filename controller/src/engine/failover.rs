//! PostgreSQL failover, switchover and rejoin, over the engine's seams: the runtime (fence =
//! kill every process of the member, files, tasks), the clients (promote, slots, probes), a
//! `WriteRouter` (where writes go: HAProxy's runtime API, later a Kubernetes Service selector)
//! and the state store (the intent written before anything is touched, the history, the
//! members to rewind).
//!
//! Sequence of a failover: intent → fence the old primary (writes stopped at the router, every
//! process killed, its files rendered as a replica, marked for rewind) → promote the chosen
//! replica → route writes to it → record the new primary → re-point the others → history.
//! Every step is idempotent: an agent killed half-way finishes from the intent.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::clients::{ClientError, Clients, PgOp, PgReply};
use crate::engine::converge::{control_field, parse_lsn};
use crate::engine::detect::{self, Detector, Storage, Verdict};
use crate::engine::runtime::{Runtime, StopMode, Task};
use crate::engine::store::StateStore;
use crate::engine::supervise::{Decision, Supervisor};
use crate::engine::{Env, RuntimeFactory};
use crate::pgsql;
use crate::plan::Action;
use crate::progress::{Event, Reporter};
use crate::render::{self, Bundle, Kind};
use crate::state::Applied;
use crate::topology::model::{PgMember, Role, ValidatedTopology};
use crate::topology::types::ReplicationMode;

/// A failed failover step, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("failed to load the applied state: {0}")]
    State(String),
    #[error("failed to render for the new primary: {0}")]
    Render(String),
    #[error("failed to fence {member}: {detail}")]
    Fence { member: String, detail: String },
    #[error("failed to promote {member}: {detail}")]
    Promote { member: String, detail: String },
    #[error("failed to route writes to {member}: {detail}")]
    Route { member: String, detail: String },
    #[error("failed to switch over: {0}")]
    Switchover(String),
    #[error("failed to rejoin {member}: {detail}")]
    Rejoin { member: String, detail: String },
    #[error("failed: {0}")]
    Refused(String),
}

fn fence_err(member: &str, detail: impl std::fmt::Display) -> FailoverError {
    FailoverError::Fence {
        member: member.into(),
        detail: detail.to_string(),
    }
}

/// Failover (unplanned) or switchover (planned).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    #[default]
    Failover,
    Switchover,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Failover => "failover",
            EventKind::Switchover => "switchover",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    #[default]
    Running,
    Done,
    Failed,
}

/// One failover or switchover with its timeline (milliseconds since the Unix epoch).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct FailoverEvent {
    pub id: u64,
    pub kind: EventKind,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub status: EventStatus,
    pub detected_ms: u128,
    pub fenced_ms: Option<u128>,
    pub promoted_ms: Option<u128>,
    pub rerouted_ms: Option<u128>,
    pub done_ms: Option<u128>,
    /// detected -> rerouted: how long writes had nowhere to go.
    pub duration_ms: Option<u128>,
    #[serde(default)]
    pub detail: String,
}

/// What the last probe saw of one member.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct MemberView {
    pub name: String,
    pub priority: u8,
    pub reachable: bool,
    /// primary | replica (from pg_is_in_recovery()), None when unreachable.
    pub role: Option<String>,
    pub current_lsn: Option<u64>,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub replay_delay_seconds: Option<f64>,
    pub wal_receiver_status: Option<String>,
    pub last_msg_age_seconds: Option<f64>,
    pub sender_port: Option<i32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Failover state shown in `status`, the agent API and metrics.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FailoverStatus {
    pub enabled: bool,
    pub primary: Option<String>,
    pub primary_healthy: bool,
    pub consecutive_failures: u32,
    pub unreachable_for_ms: u128,
    pub failovers_total: u64,
    pub switchovers_total: u64,
    pub rejoins_total: u64,
    pub last_failover_duration_ms: Option<u128>,
    /// Why the last detected outage did not lead to a failover (empty otherwise).
    pub last_decision: String,
    pub in_progress: Option<FailoverEvent>,
    pub events: VecDeque<FailoverEvent>,
    pub members: Vec<MemberView>,
    pub replication: Vec<pgsql::ReplicaStat>,
    /// Free space of every member's fullest filesystem (data directory or `pg_wal`).
    pub storage: Vec<MemberStorage>,
    /// Why the failover of the unreachable primary is held back (its storage is full); empty
    /// otherwise.
    pub held: String,
}

/// What the monitor last read of one member's storage.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct MemberStorage {
    pub member: String,
    /// The fullest of its filesystems (empty when its space could not be read).
    pub path: String,
    pub available_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    /// Less than `detect::DISK_FULL_BELOW` free (or, space unreadable, its log says so).
    pub full: bool,
}

/// Requests the agent API hands to the monitor (the only thread that changes roles).
pub enum Request {
    Switchover {
        to: Option<String>,
        reply: Sender<Result<FailoverEvent, FailoverError>>,
    },
}

/// Why the write router could not fence or route.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Commands the router's backend refused or failed, each with its answer.
    #[error("{}", .0.join("; "))]
    Refused(Vec<String>),
    /// The router's own API failed (the Kubernetes API, say).
    #[error("{0}")]
    Backend(String),
    #[error("no postgres in this topology")]
    NoPostgres,
}

/// Why no replica can be promoted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoCandidate {
    #[error("no postgres in this topology")]
    NoPostgres,
    #[error("no replica answers; nothing can be promoted safely")]
    NoneAnswers,
    #[error("synchronous mode: only {answering} of {replicas} replicas answer, {need} are needed to be sure one holds every acknowledged commit")]
    SyncQuorum {
        answering: usize,
        replicas: usize,
        need: usize,
    },
    /// Every answering replica is excluded; why, per replica.
    #[error("no eligible replica: {}", .0.join("; "))]
    Ineligible(Vec<String>),
}

/// Where writes go. HAProxy's runtime API locally and on Docker; a Service selector on
/// Kubernetes.
pub trait WriteRouter: Send + Sync {
    /// No new writes reach `member`; its sessions are cut.
    fn fence(
        &self,
        rt: &mut dyn Runtime,
        t: &ValidatedTopology,
        member: &str,
    ) -> Result<(), RouterError>;
    /// Writes go to `member` now.
    fn route(
        &self,
        rt: &mut dyn Runtime,
        t: &ValidatedTopology,
        member: &str,
    ) -> Result<(), RouterError>;
}

/// HAProxy's runtime API (through the runtime's admin channel to the `haproxy` component).
pub struct HaproxyRouter;

fn haproxy_cmds(
    rt: &mut dyn Runtime,
    t: &ValidatedTopology,
    cmds: &[String],
) -> Result<(), RouterError> {
    if t.haproxy.is_none() {
        return Ok(());
    }
    let mut errs = Vec::new();
    for c in cmds {
        match rt.exec("haproxy", &Task::HaproxyAdmin(c.clone())) {
            Ok(out) if out.trim().is_empty() => {}
            Ok(out) => errs.push(format!("`{c}`: {}", out.trim())),
            Err(e) => errs.push(format!("`{c}`: {e}")),
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(RouterError::Refused(errs))
    }
}

impl WriteRouter for HaproxyRouter {
    fn fence(
        &self,
        rt: &mut dyn Runtime,
        t: &ValidatedTopology,
        member: &str,
    ) -> Result<(), RouterError> {
        haproxy_cmds(
            rt,
            t,
            &[
                format!("set server postgres-write/{member} state maint"),
                format!("shutdown sessions server postgres-write/{member}"),
            ],
        )
    }

    fn route(
        &self,
        rt: &mut dyn Runtime,
        t: &ValidatedTopology,
        member: &str,
    ) -> Result<(), RouterError> {
        haproxy_cmds(
            rt,
            t,
            &[
                format!("set server postgres-write/{member} state ready"),
                format!("set server postgres-write/{member} health up"),
            ],
        )
    }
}

/// Everything failover needs besides the topology: made once by the agent (or the CLI).
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn StateStore>,
    pub clients: Arc<dyn Clients>,
    pub runtime: RuntimeFactory,
    pub router: Arc<dyn WriteRouter>,
}

pub(crate) fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The applied record with the validated topology it came from and the topology as it is now
/// (roles as the record's primary says).
pub fn load(
    store: &dyn StateStore,
) -> Result<(Applied, ValidatedTopology, ValidatedTopology), FailoverError> {
    let a = store
        .applied()
        .map_err(|e| FailoverError::State(e.to_string()))?
        .ok_or_else(|| FailoverError::State("nothing applied yet".into()))?;
    let base = a
        .topology
        .clone()
        .ok_or_else(|| FailoverError::State("the applied record has no topology".into()))?;
    let cur = match a.primary.as_deref() {
        Some(pr) => base.with_primary(pr).unwrap_or_else(|| base.clone()),
        None => base.clone(),
    };
    Ok((a, base, cur))
}

/// Renders the bundle for `t` with the templates the last apply used (`--templates`).
pub fn render_for(a: &Applied, t: &ValidatedTopology) -> Result<Bundle, FailoverError> {
    let tera = render::load_templates(a.templates.as_deref().map(Path::new))
        .map_err(|e| FailoverError::Render(e.to_string()))?;
    render::render(t, &tera).map_err(|e| FailoverError::Render(e.to_string()))
}

/// Every member, probed in parallel.
pub fn observe_all(
    t: &ValidatedTopology,
    rt: &dyn Runtime,
    cl: &dyn Clients,
    timeout: Duration,
) -> Vec<MemberView> {
    let Some(pg) = t.postgres.as_ref() else {
        return Vec::new();
    };
    let eps: Vec<_> = pg
        .members
        .iter()
        .map(|m| (m, rt.endpoint(&m.name, m.port)))
        .collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = eps
            .iter()
            .map(|(m, ep)| s.spawn(move || cl.member_view(ep, m, timeout)))
            .collect();
        hs.into_iter()
            .zip(&pg.members)
            .map(|(h, m)| {
                h.join().unwrap_or_else(|_| MemberView {
                    name: m.name.clone(),
                    ..Default::default()
                })
            })
            .collect()
    })
}

/// What the decision needs to know besides the members.
#[derive(Debug, Clone, Default)]
pub struct Knowledge {
    /// The failed primary's last WAL position seen by a probe (None after an agent restart).
    pub last_primary_lsn: Option<u64>,
}

/// Chooses the replica to promote, or says why none may be. Pure.
///
/// Eligible: reachable, in recovery, priority > 0, received WAL within `max_lag_bytes` of the
/// newest position known. Best: highest received LSN, then priority, then name. Synchronous mode
/// (`ANY n`): only when enough replicas answer that at least one of them must hold every
/// acknowledged commit (`reachable >= replicas - sync_count + 1`); otherwise no failover, because
/// promoting a replica that may miss an acknowledged commit would lose it. The replica with the
/// highest received LSN then holds everything any answering one holds, so no replica is left out
/// for missing from the primary's last-read list of quorum standbys (a probe old: see
/// docs/failover.md).
pub fn choose(
    t: &ValidatedTopology,
    failed: &str,
    views: &[MemberView],
    k: &Knowledge,
) -> Result<String, NoCandidate> {
    let pg = t.postgres.as_ref().ok_or(NoCandidate::NoPostgres)?;
    let replicas: Vec<&PgMember> = pg.members.iter().filter(|m| m.name != failed).collect();
    let answering: Vec<&MemberView> = views
        .iter()
        .filter(|v| v.name != failed && v.reachable && v.role.as_deref() == Some("replica"))
        .collect();
    if answering.is_empty() {
        return Err(NoCandidate::NoneAnswers);
    }
    if pg.mode == ReplicationMode::Sync {
        let need = replicas.len().saturating_sub(pg.sync_count as usize) + 1;
        if answering.len() < need {
            return Err(NoCandidate::SyncQuorum {
                answering: answering.len(),
                replicas: replicas.len(),
                need,
            });
        }
    }
    let newest = answering
        .iter()
        .filter_map(|v| v.receive_lsn)
        .chain(k.last_primary_lsn)
        .max()
        .unwrap_or(0);
    let mut why = Vec::new();
    let mut ok: Vec<&MemberView> = Vec::new();
    for v in answering {
        let Some(lsn) = v.receive_lsn else {
            why.push(format!("{}: no received WAL position", v.name));
            continue;
        };
        if v.priority == 0 {
            why.push(format!("{}: priority 0", v.name));
            continue;
        }
        let lag = newest.saturating_sub(lsn);
        if lag > pg.failover.max_lag_bytes {
            why.push(format!(
                "{}: {lag} bytes behind (max {})",
                v.name, pg.failover.max_lag_bytes
            ));
            continue;
        }
        ok.push(v);
    }
    ok.sort_by(|a, b| {
        b.receive_lsn
            .cmp(&a.receive_lsn)
            .then(b.priority.cmp(&a.priority))
            .then(a.name.cmp(&b.name))
    });
    ok.first()
        .map(|v| v.name.clone())
        .ok_or(NoCandidate::Ineligible(why))
}

/// Journal + log sink for failover steps (the state store's journal and tracing).
pub struct Journal {
    file: Option<std::fs::File>,
}

impl Journal {
    pub fn open(root: &Path) -> Journal {
        Journal {
            file: std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(root.join("journal.jsonl"))
                .ok(),
        }
    }

    pub fn none() -> Journal {
        Journal { file: None }
    }
}

impl Reporter for Journal {
    fn event(&mut self, e: &Event) {
        if let Some(f) = &mut self.file {
            use std::io::Write;
            let _ = writeln!(f, "{}", serde_json::to_string(e).unwrap_or_default());
        }
        if e.status != "start" {
            tracing::info!(component = %e.component, step = %e.step, status = %e.status, elapsed_ms = e.elapsed_ms as u64, "{}", e.detail);
        }
    }
}

fn step(rep: &mut dyn Reporter, ev: &FailoverEvent, name: &str, detail: String) {
    let since = Duration::from_millis(now_ms().saturating_sub(ev.detected_ms) as u64);
    rep.event(&Event::step(
        &format!("{}:{}", ev.kind.as_str(), ev.id),
        name,
        "ok",
        since,
        format!("{} -> {}: {detail}", ev.from, ev.to),
    ));
}

/// Makes any later start of `m` a replica start: the files rendered for the new primary,
/// standby.signal when it has a data directory, and the rewind marker.
fn mark_replica(
    rt: &mut dyn Runtime,
    store: &dyn StateStore,
    bundle: &Bundle,
    m: &PgMember,
) -> Result<(), FailoverError> {
    let c = bundle
        .components
        .get(&m.name)
        .ok_or_else(|| fence_err(&m.name, "not in the bundle"))?;
    rt.put_config(&m.name, c)
        .map_err(|e| fence_err(&m.name, e))?;
    store
        .set_needs_rewind(&m.name, true)
        .map_err(|e| fence_err(&m.name, e))?;
    let initialized = rt
        .exec(&m.name, &Task::PgDataState)
        .map_err(|e| fence_err(&m.name, e))?;
    if initialized.trim() == "initialized" {
        rt.exec(&m.name, &Task::PgStandbySignal(true))
            .map_err(|e| fence_err(&m.name, e))?;
    }
    Ok(())
}

/// Kills every process of `member` and makes any later start a replica start. Err when
/// something of it still runs.
fn fence_kill(
    rt: &mut dyn Runtime,
    store: &dyn StateStore,
    bundle: &Bundle,
    m: &PgMember,
) -> Result<String, FailoverError> {
    let was = rt.observe(&m.name).filter(|o| o.running);
    rt.stop(&m.name, Kind::Postgres, StopMode::Kill)
        .map_err(|e| fence_err(&m.name, e))?;
    mark_replica(rt, store, bundle, m)?;
    if rt.observe(&m.name).is_some_and(|o| o.running) {
        return Err(fence_err(&m.name, "still runs after SIGKILL"));
    }
    Ok(match was {
        None => "was not running; files make it a replica".into(),
        Some(o) => format!(
            "killed {}; files make it a replica",
            o.pid.map(|p| format!("pid {p}")).unwrap_or(o.instance)
        ),
    })
}

fn pg_op(
    cl: &dyn Clients,
    rt: &dyn Runtime,
    m: &PgMember,
    op: PgOp,
) -> Result<PgReply, ClientError> {
    cl.pg(rt, m, &op, Duration::from_secs(3))
}

/// After `from` is fenced: promote `to`, reroute writes, record the new primary, re-point the
/// others. Idempotent, so a restarted agent can run it again from the persisted intent.
fn take_over(
    svc: &Services,
    ev: &mut FailoverEvent,
    rep: &mut dyn Reporter,
    publish: &mut dyn FnMut(&FailoverEvent),
) -> Result<(), FailoverError> {
    let store = &*svc.store;
    let (mut applied, base, _cur) = load(store)?;
    let t_new = base
        .with_primary(&ev.to)
        .ok_or_else(|| FailoverError::Refused(format!("unknown member {}", ev.to)))?;
    let bundle = render_for(&applied, &t_new)?;
    let pg = t_new
        .postgres
        .as_ref()
        .ok_or_else(|| FailoverError::Refused("no postgres".into()))?;
    let to = pg
        .member(&ev.to)
        .ok_or_else(|| FailoverError::Refused("unknown target".into()))?
        .clone();
    let mut rt = (svc.runtime)(&t_new);
    let cl = &*svc.clients;
    let promote_err = |detail: &dyn std::fmt::Display| FailoverError::Promote {
        member: to.name.clone(),
        detail: detail.to_string(),
    };

    // Promote: the primary configuration (synchronous_standby_names included, so no commit is
    // acknowledged before a standby has it) is in place before the server leaves recovery.
    if pg_op(cl, rt.as_ref(), &to, PgOp::InRecovery).map_err(|e| promote_err(&e))?
        == PgReply::Bool(true)
    {
        if let Some(c) = bundle.components.get(&to.name) {
            rt.put_config(&to.name, c).map_err(|e| promote_err(&e))?;
        }
        pg_op(cl, rt.as_ref(), &to, PgOp::ReloadConf).map_err(|e| promote_err(&e))?;
        match pg_op(cl, rt.as_ref(), &to, PgOp::Promote { wait_seconds: 30 })
            .map_err(|e| promote_err(&e))?
        {
            PgReply::Bool(true) => {}
            _ => return Err(promote_err(&"pg_promote() did not finish in 30s")),
        }
    }
    ev.promoted_ms.get_or_insert_with(now_ms);
    step(rep, ev, "promoted", "pg_promote() done".into());
    publish(ev);

    // Writes to the new primary at once, then the slots the others need.
    svc.router
        .route(rt.as_mut(), &t_new, &to.name)
        .map_err(|e| FailoverError::Route {
            member: to.name.clone(),
            detail: e.to_string(),
        })?;
    ev.rerouted_ms.get_or_insert_with(now_ms);
    ev.duration_ms = ev.rerouted_ms.map(|r| r.saturating_sub(ev.detected_ms));
    step(rep, ev, "rerouted", "writes go to the new primary".into());
    publish(ev);
    if pg.slots {
        for m in pg.members.iter().filter(|m| m.name != to.name) {
            pg_op(cl, rt.as_ref(), &to, PgOp::EnsureSlot(m.slot.clone()))
                .map_err(|e| promote_err(&e))?;
        }
    }

    // The record: a later apply or agent restart renders for the new primary.
    let old_bundle = applied.bundle.clone();
    applied.bundle = bundle.clone();
    applied.primary = Some(to.name.clone());
    store
        .write_applied(&applied)
        .map_err(|e| FailoverError::State(e.to_string()))?;

    // Re-point the running replicas and make what runs match the new files; the HAProxy config
    // is rewritten and reloaded (verified) so a later reload keeps the routing.
    let mut problems = Vec::new();
    let follow = rt.capabilities().members_follow_roles;
    if follow {
        step(
            rep,
            ev,
            "re-point",
            "the members follow the recorded roles themselves".into(),
        );
    }
    {
        let mut env = Env {
            t: &t_new,
            rt: rt.as_mut(),
            cl,
            store,
            rep,
        };
        for m in &pg.members {
            if m.name == ev.from {
                continue;
            }
            let Some(c_new) = bundle.components.get(&m.name) else {
                continue;
            };
            if m.name == to.name {
                // Its files were written and reloaded before the promotion; only the record of
                // what runs follows, so a later apply does not restart it.
                let _ = env.rt.mark_config(&m.name, &c_new.hash());
                continue;
            }
            if follow {
                continue;
            }
            if !env.rt.observe(&m.name).is_some_and(|o| o.running) {
                continue;
            }
            if let Err(e) = env.ensure(
                &m.name,
                c_new,
                old_bundle.components.get(&m.name),
                Action::Reload,
            ) {
                problems.push(e.to_string());
            }
        }
        for (name, c_new) in bundle
            .components
            .iter()
            .filter(|(_, c)| c.kind == Kind::Haproxy)
        {
            if let Err(e) = env.ensure(name, c_new, old_bundle.components.get(name), Action::Reload)
            {
                problems.push(e.to_string());
            }
        }
    }
    ev.done_ms = Some(now_ms());
    ev.status = EventStatus::Done;
    ev.detail = if problems.is_empty() {
        String::new()
    } else {
        format!("after the role change: {}", problems.join("; "))
    };
    step(rep, ev, "done", ev.detail.clone());
    Ok(())
}

fn next_id(store: &dyn StateStore) -> u64 {
    store.history().iter().map(|e| e.id).max().unwrap_or(0) + 1
}

/// Fences `from`, then promotes `to` (see `take_over`). The intent is stored before anything
/// is touched.
pub fn failover(
    svc: &Services,
    ev: &mut FailoverEvent,
    rep: &mut dyn Reporter,
    publish: &mut dyn FnMut(&FailoverEvent),
) -> Result<(), FailoverError> {
    svc.store
        .set_intent(Some(ev))
        .map_err(|e| FailoverError::State(e.to_string()))?;
    publish(ev);
    let r = fence_and_take_over(svc, ev, rep, publish);
    finish(&*svc.store, ev, r)
}

fn fence_and_take_over(
    svc: &Services,
    ev: &mut FailoverEvent,
    rep: &mut dyn Reporter,
    publish: &mut dyn FnMut(&FailoverEvent),
) -> Result<(), FailoverError> {
    let store = &*svc.store;
    let (a, base, cur) = load(store)?;
    let t_new = base
        .with_primary(&ev.to)
        .ok_or_else(|| FailoverError::Refused(format!("unknown member {}", ev.to)))?;
    let bundle = render_for(&a, &t_new)?;
    let from = t_new
        .postgres
        .as_ref()
        .and_then(|p| p.member(&ev.from))
        .ok_or_else(|| FailoverError::Refused(format!("unknown member {}", ev.from)))?
        .clone();
    let mut rt = (svc.runtime)(&cur);
    // Writes stop first (cheap, instant), then the processes die.
    let hp = svc.router.fence(rt.as_mut(), &cur, &ev.from).err();
    let d = fence_kill(rt.as_mut(), store, &bundle, &from)?;
    ev.fenced_ms.get_or_insert_with(now_ms);
    step(
        rep,
        ev,
        "fenced",
        match hp {
            Some(e) => format!("{d}; router: {e}"),
            None => d,
        },
    );
    store
        .set_intent(Some(ev))
        .map_err(|e| FailoverError::State(e.to_string()))?;
    publish(ev);
    drop(rt);
    take_over(svc, ev, rep, publish)
}

fn finish(
    store: &dyn StateStore,
    ev: &mut FailoverEvent,
    r: Result<(), FailoverError>,
) -> Result<(), FailoverError> {
    match r {
        Ok(()) => {
            let _ = store.set_intent(None);
            let _ = store.push_history(ev);
            Ok(())
        }
        Err(e) => {
            // The intent stays: the next loop (or a restarted agent) finishes the job.
            ev.detail = e.to_string();
            let _ = store.set_intent(Some(ev));
            Err(e)
        }
    }
}

/// Finishes a failover or switchover left unfinished by a killed agent, from its intent.
pub fn resume(
    svc: &Services,
    ev: &mut FailoverEvent,
    rep: &mut dyn Reporter,
    publish: &mut dyn FnMut(&FailoverEvent),
) -> Result<(), FailoverError> {
    if ev.fenced_ms.is_some() || ev.kind == EventKind::Switchover {
        let r = fence_and_take_over(svc, ev, rep, publish);
        finish(&*svc.store, ev, r)
    } else {
        failover(svc, ev, rep, publish)
    }
}

/// Planned role change with no lost write: writes stop at the router, the primary checkpoints
/// and shuts down cleanly (its WAL reaches the standbys), the target replays up to the shutdown
/// checkpoint, then it is promoted and the old primary rejoins as its replica via pg_rewind.
pub fn switchover(
    svc: &Services,
    to: Option<&str>,
    rep: &mut dyn Reporter,
    publish: &mut dyn FnMut(&FailoverEvent),
) -> Result<FailoverEvent, FailoverError> {
    let store = &*svc.store;
    let cl = &*svc.clients;
    if let Some(i) = store.intent() {
        return Err(FailoverError::Refused(format!(
            "a {} from {} to {} is unfinished; the agent completes it first",
            i.kind.as_str(),
            i.from,
            i.to
        )));
    }
    let (a, base, cur) = load(store)?;
    let pg = cur
        .postgres
        .as_ref()
        .ok_or_else(|| FailoverError::Refused("no postgres in this topology".into()))?;
    let from = pg.primary.clone();
    let mut rt = (svc.runtime)(&cur);
    let views = observe_all(&cur, rt.as_ref(), cl, Duration::from_secs(2));
    let pv = views.iter().find(|v| v.name == from);
    if pv.is_none_or(|v| v.role.as_deref() != Some("primary")) {
        return Err(FailoverError::Refused(format!(
            "the primary {from} is not healthy; that is a failover, not a switchover"
        )));
    }
    let k = Knowledge {
        last_primary_lsn: pv.and_then(|v| v.current_lsn),
    };
    let target = match to {
        Some(t) => {
            let m = pg.member(t).ok_or_else(|| {
                FailoverError::Refused(format!("no member `{t}`; members: {}", names(&cur)))
            })?;
            if m.name == from {
                return Err(FailoverError::Refused(format!(
                    "{t} is already the primary"
                )));
            }
            if m.priority == 0 {
                return Err(FailoverError::Refused(format!(
                    "{t} has priority 0 and is never promoted"
                )));
            }
            if !views
                .iter()
                .any(|v| v.name == t && v.role.as_deref() == Some("replica"))
            {
                return Err(FailoverError::Refused(format!(
                    "{t} is not a healthy replica"
                )));
            }
            t.to_string()
        }
        None => {
            choose(&cur, &from, &views, &k).map_err(|e| FailoverError::Refused(e.to_string()))?
        }
    };
    let mut ev = FailoverEvent {
        id: next_id(store),
        kind: EventKind::Switchover,
        from: from.clone(),
        to: target.clone(),
        reason: "requested".into(),
        status: EventStatus::Running,
        detected_ms: now_ms(),
        ..Default::default()
    };
    publish(&ev);
    let t_new = base
        .with_primary(&target)
        .ok_or_else(|| FailoverError::Refused("unknown member".into()))?;
    let bundle = render_for(&a, &t_new)?;
    let fm = pg
        .member(&from)
        .ok_or_else(|| FailoverError::Refused("unknown primary".into()))?
        .clone();
    let tm = pg
        .member(&target)
        .ok_or_else(|| FailoverError::Refused("unknown target".into()))?
        .clone();
    // 1. No new writes; cut the sessions.
    svc.router
        .fence(rt.as_mut(), &cur, &from)
        .map_err(|e| FailoverError::Switchover(format!("failed to stop writes: {e}")))?;
    // 2. Checkpoint (a short shutdown checkpoint), 3. clean stop: WAL reaches the standbys.
    let _ = pg_op(cl, rt.as_ref(), &fm, PgOp::Checkpoint);
    if rt.stop(&from, Kind::Postgres, StopMode::Fast).is_err()
        || rt.observe(&from).is_some_and(|o| o.running)
    {
        let _ = svc.router.route(rt.as_mut(), &cur, &from);
        return Err(FailoverError::Switchover(format!(
            "{from} did not stop; switchover abandoned, writes resumed"
        )));
    }
    mark_replica(rt.as_mut(), store, &bundle, &fm)?;
    ev.fenced_ms = Some(now_ms());
    step(
        rep,
        &ev,
        "fenced",
        "stopped cleanly; files make it a replica".into(),
    );
    store
        .set_intent(Some(&ev))
        .map_err(|e| FailoverError::State(e.to_string()))?;
    // 4. The target replays everything up to the shutdown checkpoint.
    let control = rt
        .exec(&from, &Task::PgControlData)
        .map_err(|e| FailoverError::Switchover(e.to_string()))?;
    let ckpt = control_field(&control, "Latest checkpoint location:")
        .and_then(|v| parse_lsn(&v))
        .ok_or_else(|| {
            FailoverError::Switchover("pg_controldata printed no checkpoint location".into())
        })?;
    let start = Instant::now();
    loop {
        let v = cl.member_view(&rt.endpoint(&tm.name, tm.port), &tm, Duration::from_secs(2));
        if v.replay_lsn.is_some_and(|r| r > ckpt) {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            // Give the primary its role back: it is stopped and fenced only by files.
            let _ = store.set_intent(None);
            let _ = store.set_needs_rewind(&from, false);
            let _ = rt.exec(&from, &Task::PgStandbySignal(false));
            let (a, _, _) = load(store)?;
            let mut null = Journal::none();
            let mut env = Env {
                t: &cur,
                rt: rt.as_mut(),
                cl,
                store,
                rep: &mut null,
            };
            if let Some(c) = a.bundle.components.get(&from) {
                let _ = env.rt.put_config(&from, c);
                let _ = env.ensure(&from, c, None, Action::Create);
            }
            let _ = svc.router.route(rt.as_mut(), &cur, &from);
            return Err(FailoverError::Switchover(format!(
                "{target} did not replay up to the shutdown checkpoint of {from} in 30s (at {:?}); switchover abandoned, {from} is primary again",
                v.replay_lsn
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    step(
        rep,
        &ev,
        "caught-up",
        format!("{target} replayed past {ckpt:X}"),
    );
    drop(rt);
    let r = take_over(svc, &mut ev, rep, publish);
    finish(store, &mut ev, r)?;
    // 5. The old primary rejoins as a replica of the new one.
    match rejoin(svc, &from, rep) {
        Ok(()) => step(
            rep,
            &ev,
            "rejoined",
            format!("{from} streams from {target}"),
        ),
        Err(e) => {
            ev.detail = format!("{from} did not rejoin yet: {e}");
            let _ = store.push_history(&ev);
        }
    }
    Ok(ev)
}

fn names(t: &ValidatedTopology) -> String {
    t.postgres
        .as_ref()
        .map(|p| {
            p.members
                .iter()
                .map(|m| m.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Starts a stopped non-primary member as a replica of the current primary (rewinding a former
/// primary first). Refuses to start the member the record names as primary.
pub fn rejoin(svc: &Services, member: &str, rep: &mut dyn Reporter) -> Result<(), FailoverError> {
    let (a, _base, cur) = load(&*svc.store)?;
    let rejoin_err = |detail: String| FailoverError::Rejoin {
        member: member.into(),
        detail,
    };
    let pg = cur
        .postgres
        .as_ref()
        .ok_or_else(|| rejoin_err("no postgres".into()))?;
    let m = pg
        .member(member)
        .ok_or_else(|| rejoin_err("unknown member".into()))?;
    if m.role != Role::Replica {
        return Err(rejoin_err(
            "it is the primary; it is never restarted blindly".into(),
        ));
    }
    start_member(svc, &a, &cur, member, rep, rejoin_err)
}

/// Brings `member` up from the applied bundle with the engine's recipe (a replica rewinds or
/// clones as needed); `err` turns the reason into the caller's error.
fn start_member(
    svc: &Services,
    a: &crate::state::Applied,
    cur: &ValidatedTopology,
    member: &str,
    rep: &mut dyn Reporter,
    err: impl Fn(String) -> FailoverError,
) -> Result<(), FailoverError> {
    let c = a
        .bundle
        .components
        .get(member)
        .ok_or_else(|| err("not in the applied bundle".into()))?;
    let mut rt = (svc.runtime)(cur);
    let mut env = Env {
        t: cur,
        rt: rt.as_mut(),
        cl: &*svc.clients,
        store: &*svc.store,
        rep,
    };
    env.ensure(member, c, None, Action::Create)
        .map(|_| ())
        .map_err(|e| err(e.to_string()))
}

/// What the monitor carries from one loop to the next.
struct MonitorState {
    detector: Detector,
    k: Knowledge,
    rejoin_at: BTreeMap<String, (Instant, Duration)>,
    last_outage_note: String,
    /// Storage of every member, read every `STORAGE_EVERY` (the primary every probe while it
    /// fails).
    storage: BTreeMap<String, Storage>,
    storage_read: Option<Instant>,
    /// The failover is held back because the primary's storage is full: the reason, and since
    /// when the storage has had room again (the primary is restarted meanwhile).
    held: Option<String>,
    room_since: Option<Instant>,
    /// Backoff of the held primary's restarts.
    sup: Supervisor,
}

/// How often every member's free space is read.
const STORAGE_EVERY: Duration = Duration::from_secs(5);

/// A held primary whose storage has room again gets this long (restarted with backoff) to
/// answer before the hold lifts and an ordinary failover may follow: then the cause is no
/// longer storage.
const HOLD_AFTER_ROOM: Duration = Duration::from_secs(60);

fn read_storage(rt: &dyn Runtime, member: &str) -> Storage {
    let space = rt.disk_space(member).ok();
    Storage::judge(space.as_deref(), &rt.logs(member, 30))
}

/// Starts the recorded primary again after its failover was held back for full storage: no
/// replica was promoted, so it is still the only primary. Refuses anything else (another member,
/// a member marked for rewind, an unfinished role change).
pub fn restart_held_primary(
    svc: &Services,
    member: &str,
    rep: &mut dyn Reporter,
) -> Result<(), FailoverError> {
    let (a, _base, cur) = load(&*svc.store)?;
    let err = |detail: String| FailoverError::Refused(format!("restart {member}: {detail}"));
    let pg = cur
        .postgres
        .as_ref()
        .ok_or_else(|| err("no postgres".into()))?;
    if pg.primary != member {
        return Err(err(format!("the recorded primary is {}", pg.primary)));
    }
    if svc.store.needs_rewind(member) || svc.store.intent().is_some() {
        return Err(err("it was fenced; it rejoins as a replica instead".into()));
    }
    start_member(svc, &a, &cur, member, rep, err)
}

/// The monitor: probes every `probe_interval`, fails over after `detection_window`, rejoins
/// stopped replicas, runs switchovers asked for through the API. Runs until `stop`.
pub fn monitor(
    svc: Services,
    journal_root: &Path,
    stop: Arc<AtomicBool>,
    requests: Receiver<Request>,
    shared: Arc<Mutex<FailoverStatus>>,
) {
    let mut rep = Journal::open(journal_root);
    let store = &*svc.store;
    let mut st = MonitorState {
        detector: Detector::new(Instant::now()),
        k: Knowledge::default(),
        rejoin_at: BTreeMap::new(),
        last_outage_note: String::new(),
        storage: BTreeMap::new(),
        storage_read: None,
        held: None,
        room_since: None,
        sup: Supervisor::default(),
    };
    let rejoining: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let set = |f: &dyn Fn(&mut FailoverStatus)| {
        if let Ok(mut s) = shared.lock() {
            f(&mut s);
        }
    };
    {
        let h = store.history();
        set(&|s| {
            s.failovers_total = h.iter().filter(|e| e.kind == EventKind::Failover).count() as u64;
            s.switchovers_total =
                h.iter().filter(|e| e.kind == EventKind::Switchover).count() as u64;
            s.last_failover_duration_ms = h
                .iter()
                .rev()
                .find(|e| e.kind == EventKind::Failover)
                .and_then(|e| e.duration_ms);
            s.events = h.iter().rev().take(20).rev().cloned().collect();
        });
    }
    while !stop.load(Ordering::SeqCst) {
        let tick = Instant::now();
        let Ok((_a, _base, t)) = load(store) else {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        let Some(pg) = t.postgres.clone() else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let fo = pg.failover.clone();
        let interval = Duration::from_millis(fo.probe_interval.ms.max(100));
        let mut publish_ev = |e: &FailoverEvent| {
            if let Ok(mut s) = shared.lock() {
                s.in_progress = Some(e.clone());
            }
        };
        // An unfinished failover (this agent was killed half-way) is finished first.
        if let Some(mut ev) = store.intent() {
            tracing::warn!(from = %ev.from, to = %ev.to, "finishing an interrupted {}", ev.kind.as_str());
            let r = resume(&svc, &mut ev, &mut rep, &mut publish_ev);
            record(&shared, &ev, r.is_ok());
            st.detector.reset(Instant::now());
            std::thread::sleep(interval);
            continue;
        }
        while let Ok(req) = requests.try_recv() {
            match req {
                Request::Switchover { to, reply } => {
                    let r = switchover(&svc, to.as_deref(), &mut rep, &mut publish_ev);
                    if let Ok(ev) = &r {
                        record(&shared, ev, true);
                    } else if let Ok(mut s) = shared.lock() {
                        s.in_progress = None;
                    }
                    let _ = reply.send(r);
                    st.detector.reset(Instant::now());
                }
            }
        }
        let Ok((_a, _base, t)) = load(store) else {
            continue;
        };
        let Some(pg) = t.postgres.clone() else {
            continue;
        };
        let rt = (svc.runtime)(&t);
        let probe_timeout = Duration::from_millis((fo.probe_interval.ms * 2).clamp(500, 1000));
        let probe_start = Instant::now();
        let views = observe_all(&t, rt.as_ref(), &*svc.clients, probe_timeout);
        let probe_took = probe_start.elapsed();
        let pv = views.iter().find(|v| v.name == pg.primary).cloned();
        let healthy = pv
            .as_ref()
            .is_some_and(|v| v.role.as_deref() == Some("primary"));
        let mut replication = Vec::new();
        // Corroborated death (process gone, every answering replica lost it): a third of the
        // window. A stall, or a primary the replicas still hear, waits the whole window.
        let corroborated = !healthy
            && detect::primary_gone(
                &t,
                &views,
                rt.observe(&pg.primary).is_some_and(|o| o.running),
            );
        let window = detect::effective_window(
            Duration::from_millis(fo.detection_window.ms),
            interval,
            corroborated,
        );
        let verdict = st.detector.observe(Instant::now(), healthy, window);
        // Storage: every member now and then (metrics, alerts), the failing primary every probe.
        if st
            .storage_read
            .is_none_or(|at| at.elapsed() >= STORAGE_EVERY)
        {
            for m in &pg.members {
                st.storage
                    .insert(m.name.clone(), read_storage(rt.as_ref(), &m.name));
            }
            st.storage_read = Some(Instant::now());
        } else if !healthy {
            st.storage
                .insert(pg.primary.clone(), read_storage(rt.as_ref(), &pg.primary));
        }
        if healthy {
            if let Some(h) = st.held.take() {
                tracing::warn!(primary = %pg.primary, "the primary answers again after its storage was full; no failover happened ({h})");
                rep.event(&Event::step(
                    "failover",
                    "decision",
                    "ok",
                    Duration::ZERO,
                    format!("{} answers again; the held failover is off", pg.primary),
                ));
            }
            st.room_since = None;
            st.last_outage_note.clear();
            st.k.last_primary_lsn = pv.as_ref().and_then(|v| v.current_lsn);
            if let Some(m) = pg.primary_member() {
                if let Ok(PgReply::Replication(rows)) =
                    svc.clients
                        .pg(rt.as_ref(), m, &PgOp::Replication, probe_timeout)
                {
                    replication = rows;
                }
            }
        }
        let down_for = st.detector.down_for(Instant::now());
        let fails = st.detector.fails();
        set(&|s| {
            s.enabled = fo.enabled;
            s.primary = Some(pg.primary.clone());
            s.primary_healthy = healthy;
            s.consecutive_failures = fails;
            s.unreachable_for_ms = if healthy { 0 } else { down_for.as_millis() };
            s.members = views.clone();
            s.replication = replication.clone();
            s.storage = pg
                .members
                .iter()
                .map(|m| {
                    let x = st.storage.get(&m.name);
                    let d = x.and_then(|x| x.fullest.as_ref());
                    MemberStorage {
                        member: m.name.clone(),
                        path: d.map(|d| d.path.clone()).unwrap_or_default(),
                        available_bytes: d.map(|d| d.available_bytes),
                        total_bytes: d.map(|d| d.total_bytes),
                        full: x.is_some_and(|x| x.full),
                    }
                })
                .collect();
            s.held = st.held.clone().unwrap_or_default();
            if healthy {
                // The outage that explained a non-promotion is over.
                s.last_decision.clear();
            }
        });
        // Full storage on the failing primary holds the failover back (CloudNativePG's rule:
        // promoting does not fix storage, and the old primary would come back as a second one
        // once space is freed). With room again it is restarted, as the only primary.
        let primary_storage = st.storage.get(&pg.primary).cloned().unwrap_or_default();
        if fo.enabled && !healthy {
            if let Some(why) = detect::hold_for_storage(&pg.primary, &primary_storage) {
                if st.held.as_deref() != Some(why.as_str()) {
                    if st.held.is_none() {
                        tracing::error!(primary = %pg.primary, "{why}");
                        rep.event(&Event::step(
                            "failover",
                            "decision",
                            "fail",
                            down_for,
                            why.clone(),
                        ));
                    }
                    st.held = Some(why.clone());
                }
                st.room_since = None;
                set(&|s| {
                    s.last_decision = why.clone();
                    s.held = why.clone();
                });
            } else if st.held.is_some() {
                let since = *st.room_since.get_or_insert_with(Instant::now);
                if since.elapsed() > HOLD_AFTER_ROOM {
                    tracing::error!(primary = %pg.primary, "the storage of the primary has had room for {}s but it does not answer; the failover is no longer held back", HOLD_AFTER_ROOM.as_secs());
                    st.held = None;
                    st.room_since = None;
                    set(&|s| s.held.clear());
                    // A later failover waits a whole window from here.
                    let now = Instant::now();
                    st.detector.reset(now);
                    st.detector.observe(now, false, window);
                }
            }
        }
        if let Some(why) = st.held.clone().filter(|_| fo.enabled && !healthy) {
            let running = rt.observe(&pg.primary).is_some_and(|o| o.running);
            let busy = rejoining
                .lock()
                .map(|s| s.contains(&pg.primary))
                .unwrap_or(true);
            let now = Instant::now();
            if !busy
                && st
                    .sup
                    .decide_held_primary(now, &pg.primary, running, primary_storage.has_room())
                    == Decision::Restart
            {
                st.sup.restarted(now, &pg.primary);
                if let Ok(mut s) = rejoining.lock() {
                    s.insert(pg.primary.clone());
                }
                let (svc2, name, busy2, root2) = (
                    svc.clone(),
                    pg.primary.clone(),
                    rejoining.clone(),
                    journal_root.to_path_buf(),
                );
                tracing::warn!(member = %name, "its storage has room again; starting the primary again (no failover happened)");
                std::thread::spawn(move || {
                    let mut rep = Journal::open(&root2);
                    if let Err(e) = restart_held_primary(&svc2, &name, &mut rep) {
                        tracing::error!(member = %name, error = %e, "restart of the held primary failed; will retry");
                    }
                    if let Ok(mut s) = busy2.lock() {
                        s.remove(&name);
                    }
                });
            }
            set(&|s| s.last_decision = why.clone());
            drop(rt);
            let next = detect::next_probe_at(tick, interval, None);
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            continue;
        }
        if let (true, Verdict::Dead { fails, down_for }) = (fo.enabled, verdict) {
            let decision = match detect::primary_heard_by_replicas(&t, &views) {
                Some(why) => Err(why),
                None => choose(&t, &pg.primary, &views, &st.k).map_err(|e| e.to_string()),
            };
            match decision {
                Ok(to) => {
                    let mut ev = FailoverEvent {
                        id: next_id(store),
                        kind: EventKind::Failover,
                        from: pg.primary.clone(),
                        to: to.clone(),
                        reason: format!(
                            "{fails} failed probes over {}ms{}: {}",
                            down_for.as_millis(),
                            if corroborated {
                                " (corroborated: its process is gone and the replicas lost it)"
                            } else {
                                ""
                            },
                            pv.as_ref().map(|v| v.error.clone()).unwrap_or_default()
                        ),
                        status: EventStatus::Running,
                        detected_ms: now_ms(),
                        ..Default::default()
                    };
                    step(&mut rep, &ev, "detected", ev.reason.clone());
                    drop(rt);
                    let r = failover(&svc, &mut ev, &mut rep, &mut publish_ev);
                    if let Err(e) = &r {
                        tracing::error!(from = %ev.from, to = %ev.to, error = %e, "failover failed; will retry");
                    }
                    record(&shared, &ev, r.is_ok());
                    st.detector.reset(Instant::now());
                    continue;
                }
                Err(why) => {
                    if why != st.last_outage_note {
                        tracing::error!(primary = %pg.primary, "primary unreachable for {}ms; no failover: {why}", down_for.as_millis());
                        rep.event(&Event::step(
                            "failover",
                            "decision",
                            "fail",
                            down_for,
                            format!("no failover: {why}"),
                        ));
                        st.last_outage_note = why.clone();
                    }
                    set(&|s| s.last_decision = why.clone());
                }
            }
        }
        // Stopped replicas come back (a former primary through pg_rewind), one attempt at a time
        // per member with backoff, only while the primary is healthy.
        if fo.enabled && healthy {
            for m in pg.members.iter().filter(|m| m.role == Role::Replica) {
                let alive = rt.observe(&m.name).is_some_and(|o| o.running);
                let busy = rejoining
                    .lock()
                    .map(|s| s.contains(&m.name))
                    .unwrap_or(true);
                if alive || busy {
                    if alive {
                        st.rejoin_at.remove(&m.name);
                    }
                    continue;
                }
                let (at, delay) = st
                    .rejoin_at
                    .get(&m.name)
                    .copied()
                    .unwrap_or((Instant::now(), Duration::from_secs(1)));
                if Instant::now() < at {
                    continue;
                }
                st.rejoin_at.insert(
                    m.name.clone(),
                    (
                        Instant::now() + delay,
                        (delay * 2).min(Duration::from_secs(30)),
                    ),
                );
                if let Ok(mut s) = rejoining.lock() {
                    s.insert(m.name.clone());
                }
                let (svc2, name, busy2, shared2, root2) = (
                    svc.clone(),
                    m.name.clone(),
                    rejoining.clone(),
                    shared.clone(),
                    journal_root.to_path_buf(),
                );
                std::thread::spawn(move || {
                    let mut rep = Journal::open(&root2);
                    tracing::warn!(member = %name, "member is down; rejoining it as a replica");
                    match rejoin(&svc2, &name, &mut rep) {
                        Ok(()) => {
                            if let Ok(mut s) = shared2.lock() {
                                s.rejoins_total += 1;
                            }
                        }
                        Err(e) => {
                            tracing::error!(member = %name, error = %e, "rejoin failed; will retry")
                        }
                    }
                    if let Ok(mut s) = busy2.lock() {
                        s.remove(&name);
                    }
                });
            }
        }
        drop(rt);
        // The next probe's result is known when the window closes, not up to one interval (or
        // one probe timeout, for a stalled primary that lets probes time out) after it.
        let lead = if healthy || probe_took < probe_timeout.mul_f32(0.9) {
            Duration::ZERO
        } else {
            probe_timeout
        };
        let deadline = st
            .detector
            .deadline(window)
            .map(|d| d.checked_sub(lead).unwrap_or(d));
        let next = detect::next_probe_at(tick, interval, deadline);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
}

fn record(shared: &Mutex<FailoverStatus>, ev: &FailoverEvent, ok: bool) {
    if let Ok(mut s) = shared.lock() {
        s.in_progress = None;
        if ok {
            if ev.kind == EventKind::Failover {
                s.failovers_total += 1;
                s.last_failover_duration_ms = ev.duration_ms;
            } else {
                s.switchovers_total += 1;
            }
            s.events.push_back(ev.clone());
            while s.events.len() > 20 {
                s.events.pop_front();
            }
        }
    }
}
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn topo(mode: &str) -> ValidatedTopology {
        let sc = if mode == "sync" { ", syncCount: 1" } else { "" };
        let text = format!(
            "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {{name: t}}\nspec:\n  postgres:\n    replicas: 2\n    replication: {{mode: {mode}{sc}}}\n    members: [{{index: 2, priority: 50}}]\n  haproxy: {{}}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.yaml");
        std::fs::write(&f, text).unwrap();
        let opts = crate::topology::ValidateOptions {
            base_dir: dir.path().to_path_buf(),
            state_dir: Some(dir.path().join("s")),
            runtime: None,
        };
        crate::topology::load(&f, &opts).unwrap().validated
    }

    fn replica(name: &str, prio: u8, lsn: u64) -> MemberView {
        MemberView {
            name: name.into(),
            priority: prio,
            reachable: true,
            role: Some("replica".into()),
            receive_lsn: Some(lsn),
            ..Default::default()
        }
    }

    #[test]
    fn highest_lsn_wins_then_priority() {
        let t = topo("async");
        let k = Knowledge::default();
        let v = [
            replica("postgres-1", 100, 10),
            replica("postgres-2", 50, 20),
        ];
        assert_eq!(choose(&t, "postgres-0", &v, &k).unwrap(), "postgres-2");
        let v = [
            replica("postgres-1", 100, 20),
            replica("postgres-2", 50, 20),
        ];
        assert_eq!(choose(&t, "postgres-0", &v, &k).unwrap(), "postgres-1");
        let v = [replica("postgres-1", 0, 30), replica("postgres-2", 50, 20)];
        assert_eq!(choose(&t, "postgres-0", &v, &k).unwrap(), "postgres-2");
    }

    #[test]
    fn lagging_or_absent_replicas_are_not_promoted() {
        let t = topo("async");
        let k = Knowledge {
            last_primary_lsn: Some(100 << 20),
        };
        let v = [replica("postgres-1", 100, 1)];
        assert!(matches!(
            choose(&t, "postgres-0", &v, &k),
            Err(NoCandidate::Ineligible(why)) if why.iter().any(|w| w.contains("bytes behind"))
        ));
        assert_eq!(
            choose(&t, "postgres-0", &[], &k),
            Err(NoCandidate::NoneAnswers)
        );
    }

    #[test]
    fn sync_mode_needs_a_quorum_and_takes_the_most_advanced_replica() {
        let t = topo("sync");
        let k = Knowledge::default();
        // ANY 1 of 2: both must answer to be sure one has every acknowledged commit.
        let v = [replica("postgres-1", 100, 10)];
        assert_eq!(
            choose(&t, "postgres-0", &v, &k),
            Err(NoCandidate::SyncQuorum {
                answering: 1,
                replicas: 2,
                need: 2
            })
        );
        // Whatever the primary last listed as its quorum standbys: the most advanced replica may
        // hold commits that it alone confirmed.
        let v = [
            replica("postgres-1", 100, 30),
            replica("postgres-2", 50, 20),
        ];
        assert_eq!(choose(&t, "postgres-0", &v, &k).unwrap(), "postgres-1");
    }
}
