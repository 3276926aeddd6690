//! The controller agent: keeps an applied environment running after `apply` returns (or in the
//! foreground with `up`). It probes every component, restarts crashed ones with exponential
//! backoff (never the PostgreSQL primary: its loss belongs to failover), and serves a loopback HTTP
//! API: `/status`, `/metrics`, `/health`, `/components/<name>`, `/failover`, `POST /switchover`
//! and `/alerts/<receiver>` (the default Alertmanager webhook sink). PostgreSQL members are left
//! to the failover monitor (`engine::failover`) when failover is enabled.
//!
//! It works from the applied record in the state store (bundle + validated topology), never from
//! the user's file, and acts only through the runtime it is given.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::converge::ComponentStatus;
use crate::engine::failover::{self, FailoverStatus, Request, Services};
use crate::engine::supervise::{Decision, Seen, Supervisor};
use crate::engine::{Env, NullReporter};
use crate::progress::{Event, Reporter};
use crate::render::Kind;
use crate::topology::model::Role;

/// Component name of the agent (its log, its process record on runtimes that have them).
pub const AGENT: &str = "agent";

#[derive(Debug, Default, Serialize, Clone)]
pub struct Snapshot {
    pub environment: String,
    pub primary: Option<String>,
    pub agent_pid: u32,
    pub started_at: u64,
    pub loops: u64,
    pub last_probe_ms: u128,
    pub components: Vec<ComponentStatus>,
    pub restarts: BTreeMap<String, u64>,
    pub recent_events: VecDeque<Event>,
    pub alerts_received: BTreeMap<String, u64>,
    pub recent_alerts: VecDeque<serde_json::Value>,
    pub failover: FailoverStatus,
}

/// Collects events of restarts into the snapshot and the journal.
struct AgentReporter<'a> {
    snap: &'a Mutex<Snapshot>,
    journal: Option<std::fs::File>,
}

impl Reporter for AgentReporter<'_> {
    fn event(&mut self, e: &Event) {
        if let Some(f) = &mut self.journal {
            use std::io::Write;
            let _ = writeln!(f, "{}", serde_json::to_string(e).unwrap_or_default());
        }
        if e.status != "start" {
            tracing::info!(component = %e.component, step = %e.step, status = %e.status, elapsed_ms = e.elapsed_ms as u64, "{}", e.detail);
            if let Ok(mut s) = self.snap.lock() {
                s.recent_events.push_back(e.clone());
                while s.recent_events.len() > 100 {
                    s.recent_events.pop_front();
                }
            }
        }
    }
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("failed to load the applied state: {0}")]
    State(String),
    #[error("failed to listen on {addr}: {detail}")]
    Listen { addr: String, detail: String },
}

/// Runs until `stop` is set: supervision every second, the failover monitor on its own thread,
/// the HTTP API on another. `journal_root` is where the journal of its steps goes.
pub fn run(journal_root: &Path, stop: Arc<AtomicBool>, svc: Services) -> Result<(), AgentError> {
    let store = svc.store.clone();
    let mut applied = store
        .applied()
        .map_err(|e| AgentError::State(e.to_string()))?
        .ok_or_else(|| AgentError::State("nothing applied yet".into()))?;
    let t0 = applied.topology.clone().ok_or_else(|| {
        AgentError::State("the applied record has no topology; run `bssctl apply` again".into())
    })?;
    let snap = Arc::new(Mutex::new(Snapshot {
        environment: t0.name.clone(),
        agent_pid: std::process::id(),
        started_at: crate::engine::failover::now_ms() as u64 / 1000,
        ..Default::default()
    }));
    let addr = format!("{}:{}", t0.agent.host, t0.agent.port);
    let server = tiny_http::Server::http(&addr).map_err(|e| AgentError::Listen {
        addr: addr.clone(),
        detail: e.to_string(),
    })?;
    let server = Arc::new(server);
    let fo = Arc::new(Mutex::new(FailoverStatus::default()));
    let (tx, rx) = std::sync::mpsc::channel::<Request>();
    if t0.postgres.is_some() {
        let (svc2, root2, stop2, fo2) = (
            svc.clone(),
            journal_root.to_path_buf(),
            stop.clone(),
            fo.clone(),
        );
        std::thread::spawn(move || failover::monitor(svc2, &root2, stop2, rx, fo2));
    }
    {
        let snap = snap.clone();
        let server = server.clone();
        let fo = fo.clone();
        std::thread::spawn(move || serve(&server, &snap, &fo, &tx));
    }
    let mut token = store.applied_token();
    let mut sup = Supervisor::default();
    let journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal_root.join("journal.jsonl"))
        .ok();
    let mut reporter = AgentReporter {
        snap: &snap,
        journal,
    };
    while !stop.load(Ordering::SeqCst) {
        let loop_start = Instant::now();
        // Pick up a new apply.
        let now_token = store.applied_token();
        if now_token != token {
            if let Ok(Some(a)) = store.applied() {
                applied = a;
                token = now_token;
            }
        }
        let Some(t) = applied.topology.clone() else {
            break;
        };
        let t = match applied.primary.as_deref() {
            Some(p) => t.with_primary(p).unwrap_or(t),
            None => t,
        };
        let mut rt = (svc.runtime)(&t);
        let failover_on = t.postgres.as_ref().is_some_and(|p| p.failover.enabled);
        for (name, c) in applied.bundle.ordered() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let observed = rt.observe(name);
            let seen = Seen {
                kind: c.kind,
                running: observed.as_ref().is_some_and(|o| o.running),
                is_primary: c.kind == Kind::Postgres
                    && t.postgres
                        .as_ref()
                        .and_then(|p| p.member(name))
                        .is_some_and(|m| m.role == Role::Primary),
                failover_on,
            };
            if sup.decide(Instant::now(), name, seen) != Decision::Restart {
                continue;
            }
            tracing::warn!(component = %name, "component is down; restarting");
            let restarts = observed.map(|o| o.restarts + 1).unwrap_or(1);
            let result = Env {
                t: &t,
                rt: rt.as_mut(),
                cl: &*svc.clients,
                store: &*store,
                rep: &mut reporter,
            }
            .restart_crashed(name, c, restarts);
            sup.restarted(Instant::now(), name);
            if let Ok(mut s) = snap.lock() {
                *s.restarts.entry(name.clone()).or_default() += 1;
            }
            if let Err(e) = result {
                tracing::error!(component = %name, error = %e, "restart failed; will retry with backoff");
            }
        }
        let probe_start = Instant::now();
        let statuses = Env {
            t: &t,
            rt: rt.as_mut(),
            cl: &*svc.clients,
            store: &*store,
            rep: &mut NullReporter,
        }
        .status(&applied.bundle);
        drop(rt);
        if let Ok(mut s) = snap.lock() {
            s.components = statuses;
            s.primary = t.postgres.as_ref().map(|p| p.primary.clone());
            s.loops += 1;
            s.last_probe_ms = probe_start.elapsed().as_millis();
        }
        let spent = loop_start.elapsed();
        let period = Duration::from_secs(1);
        if spent < period {
            std::thread::sleep(period - spent);
        }
    }
    server.unblock();
    Ok(())
}

fn problem(
    status: u16,
    title: &str,
    detail: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let body = serde_json::json!({"type": "about:blank", "title": title, "status": status, "detail": detail}).to_string();
    let mut r = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", "application/problem+json") {
        r.add_header(h);
    }
    r
}

fn json_response(v: &impl Serialize) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut r =
        tiny_http::Response::from_string(serde_json::to_string_pretty(v).unwrap_or_default());
    if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", "application/json") {
        r.add_header(h);
    }
    r
}

fn serve(
    server: &tiny_http::Server,
    snap: &Mutex<Snapshot>,
    fo: &Mutex<FailoverStatus>,
    requests: &std::sync::mpsc::Sender<Request>,
) {
    for mut req in server.incoming_requests() {
        let full = req.url().to_string();
        let url = full.split('?').next().unwrap_or("").to_string();
        let query = full
            .split_once('?')
            .map(|(_, q)| q.to_string())
            .unwrap_or_default();
        let with_fo = |s: &Snapshot| {
            let mut s = s.clone();
            if let Ok(f) = fo.lock() {
                s.failover = f.clone();
            }
            s
        };
        let method = req.method().clone();
        let resp = match (method, url.as_str()) {
            (tiny_http::Method::Get, "/health") => tiny_http::Response::from_string("ok\n"),
            (tiny_http::Method::Get, "/status") => match snap.lock() {
                Ok(s) => json_response(&with_fo(&s)),
                Err(_) => problem(500, "Internal error", "status unavailable"),
            },
            (tiny_http::Method::Get, "/metrics") => match snap.lock() {
                Ok(s) => {
                    let mut r = tiny_http::Response::from_string(metrics(&with_fo(&s)));
                    if let Ok(h) =
                        tiny_http::Header::from_bytes("Content-Type", "text/plain; version=0.0.4")
                    {
                        r.add_header(h);
                    }
                    r
                }
                Err(_) => problem(500, "Internal error", "metrics unavailable"),
            },
            (tiny_http::Method::Get, "/failover") => match fo.lock() {
                Ok(f) => json_response(&*f),
                Err(_) => problem(500, "Internal error", "failover status unavailable"),
            },
            (tiny_http::Method::Post, "/switchover") => {
                let to = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("to="))
                    .filter(|v| !v.is_empty())
                    .map(String::from);
                let (reply, rx) = std::sync::mpsc::channel();
                if requests.send(Request::Switchover { to, reply }).is_err() {
                    problem(
                        503,
                        "Unavailable",
                        "this environment has no failover monitor",
                    )
                } else {
                    match rx.recv_timeout(Duration::from_secs(120)) {
                        Ok(Ok(ev)) => json_response(&ev),
                        Ok(Err(e)) => problem(409, "Switchover refused or failed", &e),
                        Err(_) => problem(
                            504,
                            "Timeout",
                            "no answer from the failover monitor in 120s",
                        ),
                    }
                }
            }
            (tiny_http::Method::Get, "/alerts") => match snap.lock() {
                Ok(s) => json_response(&s.recent_alerts),
                Err(_) => problem(500, "Internal error", "alerts unavailable"),
            },
            (tiny_http::Method::Post, p) if p.starts_with("/alerts/") => {
                let receiver = p.trim_start_matches("/alerts/").to_string();
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(
                    &mut std::io::Read::take(req.as_reader(), 1 << 20),
                    &mut body,
                );
                match serde_json::from_str::<serde_json::Value>(&body) {
                    Ok(v) => {
                        if let Ok(mut s) = snap.lock() {
                            *s.alerts_received.entry(receiver.clone()).or_default() += 1;
                            s.recent_alerts
                                .push_back(serde_json::json!({"receiver": receiver, "payload": v}));
                            while s.recent_alerts.len() > 50 {
                                s.recent_alerts.pop_front();
                            }
                        }
                        tiny_http::Response::from_string("ok\n")
                    }
                    Err(e) => problem(400, "Bad request", &format!("body is not JSON: {e}")),
                }
            }
            (tiny_http::Method::Get, p) if p.starts_with("/components/") => {
                let name = p.trim_start_matches("/components/");
                match snap.lock() {
                    Ok(s) => match s.components.iter().find(|c| c.name == name) {
                        Some(c) => json_response(c),
                        None => problem(404, "Not found", &format!("no component `{name}`")),
                    },
                    Err(_) => problem(500, "Internal error", "status unavailable"),
                }
            }
            (_, p) => problem(
                404,
                "Not found",
                &format!("no route {p}; try /status, /metrics, /health, /components/<name>"),
            ),
        };
        let _ = req.respond(resp);
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of the agent's view.
pub fn metrics(s: &Snapshot) -> String {
    let mut o = String::new();
    let kind = |k: Kind| {
        serde_json::to_value(k)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    };
    let _ = writeln!(
        o,
        "# HELP bssctl_up The bssctl agent is running.\n# TYPE bssctl_up gauge\nbssctl_up 1"
    );
    let _ = writeln!(o, "# HELP bssctl_agent_loops_total Supervision loops run.\n# TYPE bssctl_agent_loops_total counter\nbssctl_agent_loops_total {}", s.loops);
    let _ = writeln!(o, "# HELP bssctl_probe_duration_seconds Time of the last probe round.\n# TYPE bssctl_probe_duration_seconds gauge\nbssctl_probe_duration_seconds {}", s.last_probe_ms as f64 / 1000.0);
    let _ = writeln!(o, "# HELP bssctl_component_up 1 when the component passes its health probe.\n# TYPE bssctl_component_up gauge");
    for c in &s.components {
        let _ = writeln!(
            o,
            "bssctl_component_up{{component=\"{}\",kind=\"{}\"}} {}",
            esc(&c.name),
            kind(c.kind),
            u8::from(c.healthy)
        );
    }
    let _ = writeln!(o, "# HELP bssctl_component_running 1 when the component's process runs.\n# TYPE bssctl_component_running gauge");
    for c in &s.components {
        let _ = writeln!(
            o,
            "bssctl_component_running{{component=\"{}\",kind=\"{}\"}} {}",
            esc(&c.name),
            kind(c.kind),
            u8::from(c.state == crate::engine::converge::RunState::Running)
        );
    }
    let _ = writeln!(o, "# HELP bssctl_component_restarts_total Restarts by the agent.\n# TYPE bssctl_component_restarts_total counter");
    for c in &s.components {
        let _ = writeln!(
            o,
            "bssctl_component_restarts_total{{component=\"{}\"}} {}",
            esc(&c.name),
            s.restarts.get(&c.name).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(o, "# HELP bssctl_postgres_role 1 for the member's current role.\n# TYPE bssctl_postgres_role gauge");
    for c in s.components.iter().filter(|c| c.kind == Kind::Postgres) {
        if let Some(r) = &c.role {
            let _ = writeln!(
                o,
                "bssctl_postgres_role{{member=\"{}\",role=\"{}\"}} 1",
                esc(&c.name),
                esc(r)
            );
        }
    }
    let _ = writeln!(o, "# HELP bssctl_replication_lag_bytes WAL not yet replayed by the replica.\n# TYPE bssctl_replication_lag_bytes gauge");
    for c in &s.components {
        if let Some(r) = &c.replication {
            let _ = writeln!(
                o,
                "bssctl_replication_lag_bytes{{member=\"{}\"}} {}",
                esc(&c.name),
                r.lag_bytes.unwrap_or(0)
            );
        }
    }
    let _ = writeln!(o, "# HELP bssctl_replication_lag_seconds Replay lag reported by the primary.\n# TYPE bssctl_replication_lag_seconds gauge");
    for c in &s.components {
        if let Some(r) = &c.replication {
            let _ = writeln!(
                o,
                "bssctl_replication_lag_seconds{{member=\"{}\"}} {}",
                esc(&c.name),
                r.replay_lag_seconds.unwrap_or(0.0)
            );
        }
    }
    let _ = writeln!(o, "# HELP bssctl_replication_streaming 1 when the replica streams from the primary.\n# TYPE bssctl_replication_streaming gauge");
    for c in s
        .components
        .iter()
        .filter(|c| c.kind == Kind::Postgres && c.role.as_deref() != Some("primary"))
    {
        let streaming = c
            .replication
            .as_ref()
            .is_some_and(|r| r.state == "streaming");
        let _ = writeln!(
            o,
            "bssctl_replication_streaming{{member=\"{}\"}} {}",
            esc(&c.name),
            u8::from(streaming)
        );
    }
    let f = &s.failover;
    let _ = writeln!(o, "# HELP bssctl_failovers_total Automated failovers.\n# TYPE bssctl_failovers_total counter\nbssctl_failovers_total {}", f.failovers_total);
    let _ = writeln!(o, "# HELP bssctl_switchovers_total Planned switchovers.\n# TYPE bssctl_switchovers_total counter\nbssctl_switchovers_total {}", f.switchovers_total);
    let _ = writeln!(o, "# HELP bssctl_rejoins_total Members rejoined as replicas by the agent.\n# TYPE bssctl_rejoins_total counter\nbssctl_rejoins_total {}", f.rejoins_total);
    let _ = writeln!(o, "# HELP bssctl_last_failover_duration_seconds Detection to rerouted writes of the last failover.\n# TYPE bssctl_last_failover_duration_seconds gauge\nbssctl_last_failover_duration_seconds {}", f.last_failover_duration_ms.unwrap_or(0) as f64 / 1000.0);
    let _ = writeln!(o, "# HELP bssctl_failover_in_progress 1 while a failover or switchover runs.\n# TYPE bssctl_failover_in_progress gauge\nbssctl_failover_in_progress {}", u8::from(f.in_progress.is_some()));
    let _ = writeln!(o, "# HELP bssctl_primary_healthy 1 when the last probe of the primary succeeded.\n# TYPE bssctl_primary_healthy gauge\nbssctl_primary_healthy {}", u8::from(f.primary_healthy));
    let _ = writeln!(o, "# HELP bssctl_primary_unreachable_seconds How long the primary has failed every probe.\n# TYPE bssctl_primary_unreachable_seconds gauge\nbssctl_primary_unreachable_seconds {}", f.unreachable_for_ms as f64 / 1000.0);
    let _ = writeln!(o, "# HELP bssctl_member_role 1 for the role each member reports (pg_is_in_recovery), by the failover monitor.\n# TYPE bssctl_member_role gauge");
    for m in &f.members {
        let _ = writeln!(
            o,
            "bssctl_member_role{{member=\"{}\",role=\"{}\"}} 1",
            esc(&m.name),
            esc(m.role.as_deref().unwrap_or("down"))
        );
    }
    let _ = writeln!(o, "# HELP bssctl_replica_replay_delay_seconds Seconds since the last replayed commit on the replica.\n# TYPE bssctl_replica_replay_delay_seconds gauge");
    for m in f
        .members
        .iter()
        .filter(|m| m.role.as_deref() == Some("replica"))
    {
        let _ = writeln!(
            o,
            "bssctl_replica_replay_delay_seconds{{member=\"{}\"}} {}",
            esc(&m.name),
            m.replay_delay_seconds.unwrap_or(0.0)
        );
    }
    let _ = writeln!(o, "# HELP bssctl_replication_slot_retained_bytes WAL a replica's slot holds on the primary.\n# TYPE bssctl_replication_slot_retained_bytes gauge");
    for r in &f.replication {
        if let Some(b) = r.slot_retained_bytes {
            let _ = writeln!(
                o,
                "bssctl_replication_slot_retained_bytes{{member=\"{}\"}} {b}",
                esc(&r.application_name)
            );
        }
    }
    let _ = writeln!(o, "# HELP bssctl_alerts_received_total Alert notifications received by receiver.\n# TYPE bssctl_alerts_received_total counter");
    for (r, n) in &s.alerts_received {
        let _ = writeln!(
            o,
            "bssctl_alerts_received_total{{receiver=\"{}\"}} {n}",
            esc(r)
        );
    }
    o
}
