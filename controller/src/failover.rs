//! Automated failover, planned switchover and rejoin of the PostgreSQL members on the local
//! runtime. Owns the decision (`choose`, pure), the sequence detect -> fence -> promote -> reroute
//! -> record, and the persisted intent that lets a restarted agent finish a failover it started.
//! It does not supervise other components (the agent does) and never starts a former primary
//! except as a replica (through the runtime's rewind path).
//!
//! The failure model is written down in docs/failover.md.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::pgsql;
use crate::plan::Action;
use crate::probe;
use crate::render::{self, Bundle, Kind};
use crate::runtime::local::{self, Local};
use crate::runtime::process;
use crate::runtime::{Event, Reporter};
use crate::state::{self, Applied};
use crate::topology::model::{PgMember, Role, ValidatedTopology};
use crate::topology::types::ReplicationMode;

/// One failover or switchover with its timeline (milliseconds since the Unix epoch).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct FailoverEvent {
    pub id: u64,
    /// failover | switchover
    pub kind: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    /// running | done | failed
    pub status: String,
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
}

/// Requests the agent API hands to the monitor (the only thread that changes roles).
pub enum Request {
    Switchover {
        to: Option<String>,
        reply: Sender<Result<FailoverEvent, String>>,
    },
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn intent_path(root: &Path) -> PathBuf {
    root.join("failover-intent.json")
}

fn history_path(root: &Path) -> PathBuf {
    root.join("failover-history.json")
}

/// Past failovers and switchovers (newest last), kept across agent restarts.
pub fn history(root: &Path) -> Vec<FailoverEvent> {
    std::fs::read_to_string(history_path(root))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

fn push_history(root: &Path, e: &FailoverEvent) {
    let mut h = history(root);
    h.retain(|x| x.id != e.id);
    h.push(e.clone());
    let n = h.len().saturating_sub(100);
    h.drain(..n);
    if let Ok(json) = serde_json::to_vec_pretty(&h) {
        let _ = state::write_atomic(&history_path(root), &json, 0o644);
    }
}

/// The applied record with the validated topology it came from and the topology as it is now
/// (roles as the record's primary says).
pub fn load(root: &Path) -> Result<(Applied, ValidatedTopology, ValidatedTopology), String> {
    let p = root.join("applied.json");
    let text =
        std::fs::read_to_string(&p).map_err(|e| format!("failed to read {}: {e}", p.display()))?;
    let a: Applied =
        serde_json::from_str(&text).map_err(|e| format!("failed to parse {}: {e}", p.display()))?;
    let base = a
        .topology
        .clone()
        .ok_or_else(|| format!("{} has no topology record", p.display()))?;
    let cur = match a.primary.as_deref() {
        Some(pr) => base.with_primary(pr).unwrap_or_else(|| base.clone()),
        None => base.clone(),
    };
    Ok((a, base, cur))
}

fn su_password(t: &ValidatedTopology) -> Result<String, String> {
    state::secret_value(t, "postgres-superuser-password").map_err(|e| e.to_string())
}

/// Probes one member with a hard deadline on the whole exchange.
pub fn observe(t: &ValidatedTopology, m: &PgMember, timeout: Duration) -> MemberView {
    let mut v = MemberView {
        name: m.name.clone(),
        priority: m.priority,
        ..Default::default()
    };
    let Some(pg) = t.postgres.as_ref() else {
        return v;
    };
    let pw = match su_password(t) {
        Ok(p) => p,
        Err(e) => {
            v.error = e;
            return v;
        }
    };
    let r = pgsql::with_deadline(&m.host, m.port, &pg.superuser, &pw, timeout, |c| {
        let rec = pgsql::in_recovery(c)?;
        if rec {
            Ok((true, None, Some(pgsql::standby(c)?)))
        } else {
            Ok((false, Some(pgsql::current_lsn(c)?), None))
        }
    });
    match r {
        Ok((rec, lsn, sb)) => {
            v.reachable = true;
            v.role = Some(if rec { "replica" } else { "primary" }.into());
            v.current_lsn = lsn;
            if let Some(s) = sb {
                v.receive_lsn = s.receive_lsn;
                v.replay_lsn = s.replay_lsn;
                v.replay_delay_seconds = s.replay_delay_seconds;
                v.wal_receiver_status = s.wal_receiver_status;
                v.last_msg_age_seconds = s.last_msg_age_seconds;
                v.sender_port = s.sender_port;
            }
        }
        Err(e) => v.error = e,
    }
    v
}

/// Every member, probed in parallel.
pub fn observe_all(t: &ValidatedTopology, timeout: Duration) -> Vec<MemberView> {
    let Some(pg) = t.postgres.as_ref() else {
        return Vec::new();
    };
    std::thread::scope(|s| {
        let hs: Vec<_> = pg
            .members
            .iter()
            .map(|m| s.spawn(move || observe(t, m, timeout)))
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
    /// Standbys the primary last reported as `sync`/`quorum` (empty when unknown).
    pub sync_standbys: BTreeSet<String>,
}

/// Chooses the replica to promote, or says why none may be. Pure.
///
/// Eligible: reachable, in recovery, priority > 0, received WAL within `max_lag_bytes` of the
/// newest position known. Best: highest received LSN, then priority, then name. Synchronous mode:
/// only synchronous standbys, and only when enough replicas answer that at least one of them must
/// hold every acknowledged commit (`reachable >= replicas - sync_count + 1`); otherwise no
/// failover, because promoting a replica that may miss an acknowledged commit would lose it.
pub fn choose(
    t: &ValidatedTopology,
    failed: &str,
    views: &[MemberView],
    k: &Knowledge,
) -> Result<String, String> {
    let pg = t.postgres.as_ref().ok_or("no postgres")?;
    let replicas: Vec<&PgMember> = pg.members.iter().filter(|m| m.name != failed).collect();
    let answering: Vec<&MemberView> = views
        .iter()
        .filter(|v| v.name != failed && v.reachable && v.role.as_deref() == Some("replica"))
        .collect();
    if answering.is_empty() {
        return Err("no replica answers; nothing can be promoted safely".into());
    }
    if pg.mode == ReplicationMode::Sync {
        let need = replicas.len().saturating_sub(pg.sync_count as usize) + 1;
        if answering.len() < need {
            return Err(format!(
                "synchronous mode: only {} of {} replicas answer, {need} are needed to be sure one holds every acknowledged commit",
                answering.len(),
                replicas.len()
            ));
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
        if pg.mode == ReplicationMode::Sync
            && !k.sync_standbys.is_empty()
            && !k.sync_standbys.contains(&v.name)
        {
            why.push(format!("{}: not a synchronous standby", v.name));
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
        .ok_or_else(|| format!("no eligible replica: {}", why.join("; ")))
}

/// Journal + log sink for failover steps.
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
        &format!("{}:{}", ev.kind, ev.id),
        name,
        "ok",
        since,
        format!("{} -> {}: {detail}", ev.from, ev.to),
    ));
}

fn haproxy(t: &ValidatedTopology, cmds: &[String]) -> Result<(), String> {
    let Some(h) = t.haproxy.as_ref() else {
        return Ok(());
    };
    let mut errs = Vec::new();
    for c in cmds {
        match probe::haproxy_cmd(&h.admin_socket, c, Duration::from_secs(2)) {
            Ok(out) if out.trim().is_empty() => {}
            Ok(out) => errs.push(format!("`{c}`: {}", out.trim())),
            Err(e) => errs.push(format!("`{c}`: {e}")),
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

/// Stops writes to `member` through HAProxy at once and cuts its sessions.
pub fn haproxy_fence(t: &ValidatedTopology, member: &str) -> Result<(), String> {
    haproxy(
        t,
        &[
            format!("set server postgres-write/{member} state maint"),
            format!("shutdown sessions server postgres-write/{member}"),
        ],
    )
}

fn haproxy_route(t: &ValidatedTopology, member: &str) -> Result<(), String> {
    haproxy(
        t,
        &[
            format!("set server postgres-write/{member} state ready"),
            format!("set server postgres-write/{member} health up"),
        ],
    )
}

fn write_member_files(t: &ValidatedTopology, bundle: &Bundle, name: &str) -> Result<(), String> {
    let c = bundle
        .components
        .get(name)
        .ok_or_else(|| format!("no component {name} in the bundle"))?;
    for (rel, content) in &c.files {
        let p = Path::new(&t.paths.config).join(name).join(rel);
        state::write_atomic(&p, content.as_bytes(), 0o644).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Postmaster pid of a data directory (first line of postmaster.pid) when it runs.
fn postmaster_of(data_dir: &str) -> Option<u32> {
    let text = std::fs::read_to_string(Path::new(data_dir).join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    (process::pid_alive(pid) && process::cmdline(pid).contains(data_dir)).then_some(pid)
}

/// Kills every process of `member` (its recorded group, and a postmaster someone else started on
/// its data directory) and makes any later start a replica start: the configuration rendered for
/// the new primary, standby.signal, and the rewind marker. Err when something still runs.
fn fence_kill(t_new: &ValidatedTopology, bundle: &Bundle, member: &str) -> Result<String, String> {
    let pg = t_new.postgres.as_ref().ok_or("no postgres")?;
    let m = pg.member(member).ok_or("unknown member")?.clone();
    let mut killed = Vec::new();
    if let Some(r) = process::read_record(&t_new.paths.run, member) {
        if process::alive(&r) {
            if r.pgid > 1 {
                process::signal_group(r.pgid, "KILL");
            }
            process::signal(r.pid, "KILL");
            killed.push(r.pid);
        }
    }
    if let Some(pid) = postmaster_of(&m.data_dir) {
        if let Some(g) = process::pgid(pid) {
            process::signal_group(g, "KILL");
        }
        process::signal(pid, "KILL");
        killed.push(pid);
    }
    mark_replica(t_new, bundle, &m)?;
    let start = Instant::now();
    loop {
        let rec_alive = process::read_record(&t_new.paths.run, member)
            .as_ref()
            .is_some_and(process::alive);
        if !rec_alive && postmaster_of(&m.data_dir).is_none() {
            break;
        }
        if start.elapsed() > Duration::from_secs(5) {
            return Err(format!("{member} still runs after SIGKILL"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(if killed.is_empty() {
        "was not running; files make it a replica".into()
    } else {
        format!("killed {killed:?}; files make it a replica")
    })
}

fn mark_replica(t_new: &ValidatedTopology, bundle: &Bundle, m: &PgMember) -> Result<(), String> {
    write_member_files(t_new, bundle, &m.name)?;
    let user = crate::tools::postgres_user();
    let marker = local::rewind_marker(t_new, &m.name);
    state::write_atomic(&marker, b"", 0o644).map_err(|e| e.to_string())?;
    if Path::new(&m.data_dir).join("PG_VERSION").exists() {
        let sig = Path::new(&m.data_dir).join("standby.signal");
        std::fs::write(&sig, "").map_err(|e| format!("failed to write {}: {e}", sig.display()))?;
        if let Some((u, g)) = user {
            let _ = std::os::unix::fs::lchown(&sig, Some(u), Some(g));
        }
    }
    Ok(())
}

fn client(t: &ValidatedTopology, m: &PgMember) -> Result<postgres::Client, String> {
    let pg = t.postgres.as_ref().ok_or("no postgres")?;
    pgsql::connect(
        &m.host,
        m.port,
        &pg.superuser,
        &su_password(t)?,
        "postgres",
        Duration::from_secs(3),
    )
}

/// After `from` is fenced: promote `to`, reroute writes, record the new primary, re-point the
/// others. Idempotent, so a restarted agent can run it again from the persisted intent.
fn take_over(
    root: &Path,
    ev: &mut FailoverEvent,
    rep: &mut dyn Reporter,
    publish: &mut dyn FnMut(&FailoverEvent),
) -> Result<(), String> {
    let (mut applied, base, _cur) = load(root)?;
    let t_new = base
        .with_primary(&ev.to)
        .ok_or_else(|| format!("unknown member {}", ev.to))?;
    let tera = render::load_templates(None).map_err(|e| e.to_string())?;
    let bundle = render::render(&t_new, &tera).map_err(|e| e.to_string())?;
    let pg = t_new.postgres.as_ref().ok_or("no postgres")?;
    let to = pg.member(&ev.to).ok_or("unknown target")?.clone();

    // Promote: the primary configuration (synchronous_standby_names included, so no commit is
    // acknowledged before a standby has it) is in place before the server leaves recovery.
    let mut c = client(&t_new, &to)?;
    if pgsql::in_recovery(&mut c)? {
        write_member_files(&t_new, &bundle, &to.name)?;
        c.query("SELECT pg_reload_conf()", &[])
            .map_err(|e| pgsql::describe(&e))?;
        if !pgsql::promote(&mut c, 30)? {
            return Err(format!("pg_promote() on {} did not finish in 30s", to.name));
        }
    }
    ev.promoted_ms.get_or_insert_with(now_ms);
    step(rep, ev, "promoted", "pg_promote() done".into());
    publish(ev);

    // Writes to the new primary at once (runtime API), then the slots the others need.
    haproxy_route(&t_new, &to.name)?;
    ev.rerouted_ms.get_or_insert_with(now_ms);
    ev.duration_ms = ev.rerouted_ms.map(|r| r.saturating_sub(ev.detected_ms));
    step(
        rep,
        ev,
        "rerouted",
        "HAProxy writes go to the new primary".into(),
    );
    publish(ev);
    if pg.slots {
        for m in pg.members.iter().filter(|m| m.name != to.name) {
            pgsql::ensure_slot(&mut c, &m.slot)?;
        }
    }
    drop(c);

    // The record: a later apply or agent restart renders for the new primary.
    let old_bundle = applied.bundle.clone();
    applied.bundle = bundle.clone();
    applied.primary = Some(to.name.clone());
    state::write_applied(&base, &applied).map_err(|e| e.to_string())?;

    // Re-point the running replicas and make the processes' records match the new files; the
    // HAProxy config is rewritten and reloaded (verified) so a later reload keeps the routing.
    let mut problems = Vec::new();
    {
        let mut lr = Local {
            t: &t_new,
            reporter: rep,
        };
        for m in &pg.members {
            if m.name == ev.from {
                continue;
            }
            if m.name == to.name {
                // Its files were written and reloaded before the promotion; a verified reload
                // would now report recovery_target_timeline (a restart-only setting that only
                // replicas carry) and roll the primary back to replica files. Only the record's
                // hash follows, so a later apply does not restart it.
                if let (Some(mut r), Some(c_new)) = (
                    process::read_record(&t_new.paths.run, &m.name),
                    bundle.components.get(&m.name),
                ) {
                    r.hash = c_new.hash();
                    let _ = process::write_record(&t_new.paths.run, &r);
                }
                continue;
            }
            let alive = process::read_record(&t_new.paths.run, &m.name)
                .as_ref()
                .is_some_and(process::alive);
            let (Some(c_new), true) = (bundle.components.get(&m.name), alive) else {
                continue;
            };
            if let Err(e) = lr.ensure(
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
            if let Err(e) = lr.ensure(name, c_new, old_bundle.components.get(name), Action::Reload)
            {
                problems.push(e.to_string());
            }
        }
    }
    ev.done_ms = Some(now_ms());
    ev.status = "done".into();
    ev.detail = if problems.is_empty() {
        String::new()
    } else {
        format!("after the role change: {}", problems.join("; "))
    };
    step(rep, ev, "done", ev.detail.clone());
    Ok(())
}

fn write_intent(root: &Path, ev: &FailoverEvent) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(ev).map_err(|e| e.to_string())?;
    state::write_atomic(&intent_path(root), &json, 0o644).map_err(|e| e.to_string())
}

fn read_intent(root: &Path) -> Option<FailoverEvent> {
    std::fs::read_to_string(intent_path(root))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

fn next_id(root: &Path) -> u64 {
    history(root).iter().map(|e| e.id).max().unwrap_or(0) + 1
}

/// Fences `from`, then promotes `to` (see `take_over`). The intent is on disk before anything
/// is touched.
pub fn failover(
    root: &Path,
    ev: &mut FailoverEvent,
    rep: &mut dyn Reporter,
    publish: &mut dyn FnMut(&FailoverEvent),
) -> Result<(), String> {
    write_intent(root, ev)?;
    publish(ev);
    let r = fence_and_take_over(root, ev, rep, publish);
    finish(root, ev, r)
}

fn fence_and_take_over(
    root: &Path,
    ev: &mut FailoverEvent,
    rep: &mut dyn Reporter,
    publish: &mut dyn FnMut(&FailoverEvent),
) -> Result<(), String> {
    let (_a, base, cur) = load(root)?;
    let t_new = base
        .with_primary(&ev.to)
        .ok_or_else(|| format!("unknown member {}", ev.to))?;
    let tera = render::load_templates(None).map_err(|e| e.to_string())?;
    let bundle = render::render(&t_new, &tera).map_err(|e| e.to_string())?;
    // Writes stop first (cheap, instant), then the processes die.
    let hp = haproxy_fence(&cur, &ev.from).err();
    let d = fence_kill(&t_new, &bundle, &ev.from)?;
    ev.fenced_ms.get_or_insert_with(now_ms);
    step(
        rep,
        ev,
        "fenced",
        match hp {
            Some(e) => format!("{d}; HAProxy: {e}"),
            None => d,
        },
    );
    write_intent(root, ev)?;
    publish(ev);
    take_over(root, ev, rep, publish)
}

fn finish(root: &Path, ev: &mut FailoverEvent, r: Result<(), String>) -> Result<(), String> {
    match r {
        Ok(()) => {
            let _ = std::fs::remove_file(intent_path(root));
            push_history(root, ev);
            Ok(())
        }
        Err(e) => {
            // The intent stays: the next loop (or a restarted agent) finishes the job.
            ev.detail = e.clone();
            let _ = write_intent(root, ev);
            Err(e)
        }
    }
}

/// Planned role change with no lost write: writes stop at HAProxy, the primary checkpoints and
/// shuts down cleanly (its WAL reaches the standbys), the target replays up to the shutdown
/// checkpoint, then it is promoted and the old primary rejoins as its replica via pg_rewind.
pub fn switchover(
    root: &Path,
    to: Option<&str>,
    rep: &mut dyn Reporter,
    publish: &mut dyn FnMut(&FailoverEvent),
) -> Result<FailoverEvent, String> {
    if let Some(i) = read_intent(root) {
        return Err(format!(
            "a {} from {} to {} is unfinished; the agent completes it first",
            i.kind, i.from, i.to
        ));
    }
    let (_a, base, cur) = load(root)?;
    let pg = cur
        .postgres
        .as_ref()
        .ok_or("no postgres in this topology")?;
    let from = pg.primary.clone();
    let views = observe_all(&cur, Duration::from_secs(2));
    let pv = views.iter().find(|v| v.name == from);
    if pv.is_none_or(|v| v.role.as_deref() != Some("primary")) {
        return Err(format!(
            "the primary {from} is not healthy; that is a failover, not a switchover"
        ));
    }
    let mut k = Knowledge {
        last_primary_lsn: pv.and_then(|v| v.current_lsn),
        ..Default::default()
    };
    if let Some(m) = pg.primary_member() {
        if let Ok(rows) = client(&cur, m).and_then(|mut c| pgsql::replication(&mut c)) {
            k.sync_standbys = rows
                .iter()
                .filter(|r| r.sync_state == "sync" || r.sync_state == "quorum")
                .map(|r| r.application_name.clone())
                .collect();
        }
    }
    let target = match to {
        Some(t) => {
            let m = pg
                .member(t)
                .ok_or_else(|| format!("no member `{t}`; members: {}", names(&cur)))?;
            if m.name == from {
                return Err(format!("{t} is already the primary"));
            }
            if m.priority == 0 {
                return Err(format!("{t} has priority 0 and is never promoted"));
            }
            if !views
                .iter()
                .any(|v| v.name == t && v.role.as_deref() == Some("replica"))
            {
                return Err(format!("{t} is not a healthy replica"));
            }
            t.to_string()
        }
        None => choose(&cur, &from, &views, &k)?,
    };
    let mut ev = FailoverEvent {
        id: next_id(root),
        kind: "switchover".into(),
        from: from.clone(),
        to: target.clone(),
        reason: "requested".into(),
        status: "running".into(),
        detected_ms: now_ms(),
        ..Default::default()
    };
    publish(&ev);
    let t_new = base.with_primary(&target).ok_or("unknown member")?;
    let tera = render::load_templates(None).map_err(|e| e.to_string())?;
    let bundle = render::render(&t_new, &tera).map_err(|e| e.to_string())?;
    let fm = pg.member(&from).ok_or("unknown primary")?.clone();
    let tm = pg.member(&target).ok_or("unknown target")?.clone();
    // 1. No new writes; cut the sessions.
    haproxy_fence(&cur, &from)?;
    // 2. Checkpoint (a short shutdown checkpoint), 3. clean stop: WAL reaches the standbys.
    if let Ok(mut c) = client(&cur, &fm) {
        let _ = c.batch_execute("CHECKPOINT");
    }
    {
        let mut null = Journal { file: None };
        let mut lr = Local {
            t: &cur,
            reporter: &mut null,
        };
        lr.stop(&from, Kind::Postgres);
    }
    if postmaster_of(&fm.data_dir).is_some() {
        let _ = haproxy_route(&cur, &from);
        return Err(format!(
            "{from} did not stop; switchover abandoned, writes resumed"
        ));
    }
    mark_replica(&t_new, &bundle, &fm)?;
    ev.fenced_ms = Some(now_ms());
    step(
        rep,
        &ev,
        "fenced",
        "stopped cleanly; files make it a replica".into(),
    );
    write_intent(root, &ev)?;
    // 4. The target replays everything up to the shutdown checkpoint.
    let ckpt = local::checkpoint_lsn(&fm.data_dir, crate::tools::postgres_user(), &cur.paths.root)?;
    let start = Instant::now();
    loop {
        let v = observe(&cur, &tm, Duration::from_secs(2));
        if v.replay_lsn.is_some_and(|r| r > ckpt) {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            // Give the primary its role back: it is stopped and fenced only by files.
            let _ = std::fs::remove_file(intent_path(root));
            let _ = std::fs::remove_file(local::rewind_marker(&cur, &from));
            let _ = std::fs::remove_file(Path::new(&fm.data_dir).join("standby.signal"));
            let (a, _, _) = load(root)?;
            let mut null = Journal { file: None };
            let mut lr = Local {
                t: &cur,
                reporter: &mut null,
            };
            if let Some(c) = a.bundle.components.get(&from) {
                let _ = lr.write_files(&from, c);
                let _ = lr.ensure(&from, c, None, Action::Create);
            }
            let _ = haproxy_route(&cur, &from);
            return Err(format!(
                "{target} did not replay up to the shutdown checkpoint of {from} in 30s (at {:?}); switchover abandoned, {from} is primary again",
                v.replay_lsn
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    step(
        rep,
        &ev,
        "caught-up",
        format!("{target} replayed past {ckpt:X}"),
    );
    let r = take_over(root, &mut ev, rep, publish);
    finish(root, &mut ev, r)?;
    // 5. The old primary rejoins as a replica of the new one.
    match rejoin(root, &from, rep) {
        Ok(()) => step(
            rep,
            &ev,
            "rejoined",
            format!("{from} streams from {target}"),
        ),
        Err(e) => {
            ev.detail = format!("{from} did not rejoin yet: {e}");
            push_history(root, &ev);
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
/// primary first; see `Local::create_postgres`). Refuses to start the member the record names
/// as primary.
pub fn rejoin(root: &Path, member: &str, rep: &mut dyn Reporter) -> Result<(), String> {
    let (a, _base, cur) = load(root)?;
    let pg = cur.postgres.as_ref().ok_or("no postgres")?;
    let m = pg.member(member).ok_or("unknown member")?;
    if m.role != Role::Replica {
        return Err(format!(
            "{member} is the primary; it is never restarted blindly"
        ));
    }
    let c = a
        .bundle
        .components
        .get(member)
        .ok_or_else(|| format!("no component {member}"))?;
    let mut lr = Local {
        t: &cur,
        reporter: rep,
    };
    lr.ensure(member, c, None, Action::Create)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The monitor: probes every `probe_interval`, fails over after `detection_window`, rejoins
/// stopped replicas, runs switchovers asked for through the API. Runs until `stop`.
pub fn monitor(
    root: &Path,
    stop: Arc<AtomicBool>,
    requests: Receiver<Request>,
    shared: Arc<Mutex<FailoverStatus>>,
) {
    let mut rep = Journal::open(root);
    let started = Instant::now();
    // A restarted agent has seen nothing yet: the window starts now, never earlier.
    let mut last_ok = started;
    let mut fails: u32 = 0;
    let mut k = Knowledge::default();
    let mut rejoin_at: BTreeMap<String, (Instant, Duration)> = BTreeMap::new();
    let rejoining: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut last_outage_note = String::new();
    let set = |f: &dyn Fn(&mut FailoverStatus)| {
        if let Ok(mut s) = shared.lock() {
            f(&mut s);
        }
    };
    {
        let h = history(root);
        set(&|s| {
            s.failovers_total = h.iter().filter(|e| e.kind == "failover").count() as u64;
            s.switchovers_total = h.iter().filter(|e| e.kind == "switchover").count() as u64;
            s.last_failover_duration_ms = h
                .iter()
                .rev()
                .find(|e| e.kind == "failover")
                .and_then(|e| e.duration_ms);
            s.events = h.iter().rev().take(20).rev().cloned().collect();
        });
    }
    while !stop.load(Ordering::SeqCst) {
        let tick = Instant::now();
        let Ok((_a, _base, t)) = load(root) else {
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
        if let Some(mut ev) = read_intent(root) {
            tracing::warn!(from = %ev.from, to = %ev.to, "finishing an interrupted {}", ev.kind);
            let r = if ev.fenced_ms.is_some() || ev.kind == "switchover" {
                let r = fence_and_take_over(root, &mut ev, &mut rep, &mut publish_ev);
                finish(root, &mut ev, r)
            } else {
                failover(root, &mut ev, &mut rep, &mut publish_ev)
            };
            record(&shared, root, &ev, r.is_ok());
            last_ok = Instant::now();
            fails = 0;
            std::thread::sleep(interval);
            continue;
        }
        while let Ok(req) = requests.try_recv() {
            match req {
                Request::Switchover { to, reply } => {
                    let r = switchover(root, to.as_deref(), &mut rep, &mut publish_ev);
                    if let Ok(ev) = &r {
                        record(&shared, root, ev, true);
                    } else if let Ok(mut s) = shared.lock() {
                        s.in_progress = None;
                    }
                    let _ = reply.send(r);
                    last_ok = Instant::now();
                    fails = 0;
                }
            }
        }
        let Ok((_a, _base, t)) = load(root) else {
            continue;
        };
        let Some(pg) = t.postgres.clone() else {
            continue;
        };
        let probe_timeout = Duration::from_millis((fo.probe_interval.ms * 2).clamp(500, 1000));
        let views = observe_all(&t, probe_timeout);
        let pv = views.iter().find(|v| v.name == pg.primary).cloned();
        let healthy = pv
            .as_ref()
            .is_some_and(|v| v.role.as_deref() == Some("primary"));
        let mut replication = Vec::new();
        if healthy {
            last_ok = Instant::now();
            fails = 0;
            last_outage_note.clear();
            k.last_primary_lsn = pv.as_ref().and_then(|v| v.current_lsn);
            if let Some(m) = pg.primary_member() {
                let pw = su_password(&t).unwrap_or_default();
                if let Ok(rows) = pgsql::with_deadline(
                    &m.host,
                    m.port,
                    &pg.superuser,
                    &pw,
                    probe_timeout,
                    pgsql::replication,
                ) {
                    k.sync_standbys = rows
                        .iter()
                        .filter(|r| r.sync_state == "sync" || r.sync_state == "quorum")
                        .map(|r| r.application_name.clone())
                        .collect();
                    replication = rows;
                }
            }
        } else {
            fails += 1;
        }
        let down_for = last_ok.elapsed();
        set(&|s| {
            s.enabled = fo.enabled;
            s.primary = Some(pg.primary.clone());
            s.primary_healthy = healthy;
            s.consecutive_failures = fails;
            s.unreachable_for_ms = if healthy { 0 } else { down_for.as_millis() };
            s.members = views.clone();
            s.replication = replication.clone();
        });
        if fo.enabled
            && !healthy
            && fails >= 2
            && down_for.as_millis() >= fo.detection_window.ms as u128
        {
            // Replicas that heard from the primary just now prove it is alive: the problem is
            // this controller's view of it, and killing a working primary is not the answer.
            let heard = views.iter().any(|v| {
                v.name != pg.primary
                    && v.wal_receiver_status.as_deref() == Some("streaming")
                    && v.last_msg_age_seconds.is_some_and(|a| a < 1.0)
                    && pg
                        .primary_member()
                        .is_some_and(|m| v.sender_port == Some(i32::from(m.port)))
            });
            let decision = if heard {
                Err("replicas still receive WAL from the primary; only this controller cannot reach it".to_string())
            } else {
                choose(&t, &pg.primary, &views, &k)
            };
            match decision {
                Ok(to) => {
                    let mut ev = FailoverEvent {
                        id: next_id(root),
                        kind: "failover".into(),
                        from: pg.primary.clone(),
                        to: to.clone(),
                        reason: format!(
                            "{fails} failed probes over {}ms: {}",
                            down_for.as_millis(),
                            pv.as_ref().map(|v| v.error.clone()).unwrap_or_default()
                        ),
                        status: "running".into(),
                        detected_ms: now_ms().saturating_sub(0),
                        ..Default::default()
                    };
                    step(&mut rep, &ev, "detected", ev.reason.clone());
                    let r = failover(root, &mut ev, &mut rep, &mut publish_ev);
                    if let Err(e) = &r {
                        tracing::error!(from = %ev.from, to = %ev.to, error = %e, "failover failed; will retry");
                    }
                    record(&shared, root, &ev, r.is_ok());
                    last_ok = Instant::now();
                    fails = 0;
                    continue;
                }
                Err(why) => {
                    if why != last_outage_note {
                        tracing::error!(primary = %pg.primary, "primary unreachable for {}ms; no failover: {why}", down_for.as_millis());
                        rep.event(&Event::step(
                            "failover",
                            "decision",
                            "fail",
                            down_for,
                            format!("no failover: {why}"),
                        ));
                        last_outage_note = why.clone();
                    }
                    set(&|s| s.last_decision = why.clone());
                }
            }
        }
        // Stopped replicas come back (a former primary through pg_rewind), one attempt at a time
        // per member with backoff, only while the primary is healthy.
        if fo.enabled && healthy {
            for m in pg.members.iter().filter(|m| m.role == Role::Replica) {
                let alive = process::read_record(&t.paths.run, &m.name)
                    .as_ref()
                    .is_some_and(process::alive);
                let busy = rejoining
                    .lock()
                    .map(|s| s.contains(&m.name))
                    .unwrap_or(true);
                if alive || busy {
                    if alive {
                        rejoin_at.remove(&m.name);
                    }
                    continue;
                }
                let (at, delay) = rejoin_at
                    .get(&m.name)
                    .copied()
                    .unwrap_or((Instant::now(), Duration::from_secs(1)));
                if Instant::now() < at {
                    continue;
                }
                rejoin_at.insert(
                    m.name.clone(),
                    (
                        Instant::now() + delay,
                        (delay * 2).min(Duration::from_secs(30)),
                    ),
                );
                if let Ok(mut s) = rejoining.lock() {
                    s.insert(m.name.clone());
                }
                let (root2, name, busy2, shared2) = (
                    root.to_path_buf(),
                    m.name.clone(),
                    rejoining.clone(),
                    shared.clone(),
                );
                std::thread::spawn(move || {
                    let mut rep = Journal::open(&root2);
                    tracing::warn!(member = %name, "member is down; rejoining it as a replica");
                    match rejoin(&root2, &name, &mut rep) {
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
        let spent = tick.elapsed();
        if spent < interval {
            std::thread::sleep(interval - spent);
        }
    }
}

fn record(shared: &Mutex<FailoverStatus>, root: &Path, ev: &FailoverEvent, ok: bool) {
    if let Ok(mut s) = shared.lock() {
        s.in_progress = None;
        if ok {
            if ev.kind == "failover" {
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
    let _ = root;
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
            ..Default::default()
        };
        let v = [replica("postgres-1", 100, 1)];
        assert!(choose(&t, "postgres-0", &v, &k)
            .unwrap_err()
            .contains("bytes behind"));
        assert!(choose(&t, "postgres-0", &[], &k).is_err());
    }

    #[test]
    fn sync_mode_needs_a_quorum_and_a_sync_standby() {
        let t = topo("sync");
        let mut k = Knowledge::default();
        // ANY 1 of 2: both must answer to be sure one has every acknowledged commit.
        let v = [replica("postgres-1", 100, 10)];
        assert!(choose(&t, "postgres-0", &v, &k)
            .unwrap_err()
            .contains("needed"));
        k.sync_standbys.insert("postgres-2".into());
        let v = [
            replica("postgres-1", 100, 30),
            replica("postgres-2", 50, 20),
        ];
        assert_eq!(choose(&t, "postgres-0", &v, &k).unwrap(), "postgres-2");
    }
}
