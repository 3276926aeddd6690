//! The controller agent: keeps an applied environment running after `apply` returns (or in the
//! foreground with `up`). It probes every component, restarts crashed ones with exponential
//! backoff (never the PostgreSQL primary: its loss belongs to failover), and serves a loopback HTTP
//! API: `/status`, `/metrics`, `/health`, `/components/<name>`, `/failover`, `POST /switchover`
//! and `/alerts/<receiver>` (the default Alertmanager webhook sink). PostgreSQL members are left
//! to the failover monitor (`engine::failover`) when failover is enabled.
//!
//! The API (axum on a two-thread tokio runtime) answers only requests whose `Host` is the agent's
//! own and that carry no foreign `Origin`; `POST` routes and `/metrics` need the token generated
//! into `<state>/secrets/agent-token` (0600), and `POST` bodies must be JSON. Connections are
//! bounded in number and in time (request head 5 s, body 10 s), so a slow client cannot hold
//! `/health`; receiver names are bounded in length, charset and number.
//!
//! It works from the applied record in the state store (bundle + validated topology), never from
//! the user's file, and acts only through the runtime it is given.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as AxPath, State};
use axum::http::{self, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
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
    #[error("failed to get the API token {path}: {detail}")]
    Token { path: String, detail: String },
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
    let api_token = ensure_token(&journal_root.join("secrets"))?;
    let fo = Arc::new(Mutex::new(FailoverStatus::default()));
    let (tx, rx) = std::sync::mpsc::channel::<Request>();
    let api = start_api(
        &addr,
        Api {
            snap: snap.clone(),
            fo: fo.clone(),
            requests: Arc::new(Mutex::new(tx)),
            guard: Arc::new(Guard::new(&api_token, &t0.agent.host, t0.agent.port)),
        },
        stop.clone(),
    )?;
    if t0.postgres.is_some() {
        let (svc2, root2, stop2, fo2) = (
            svc.clone(),
            journal_root.to_path_buf(),
            stop.clone(),
            fo.clone(),
        );
        std::thread::spawn(move || failover::monitor(svc2, &root2, stop2, rx, fo2));
    }
    let mut token = store.applied_token();
    let mut sup = Supervisor::default();
    let journal = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(crate::state::o_nofollow())
            .open(journal_root.join("journal.jsonl"))
            .ok()
    };
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
    let _ = api.join();
    Ok(())
}

/// Name of the agent's API token file in the environment's `secrets/` directory.
pub const TOKEN_FILE: &str = "agent-token";
/// Connections served at once; a connection beyond this is closed at once, so a flood of
/// clients cannot queue up behind each other forever.
pub const MAX_CONNECTIONS: usize = 64;
/// A client must have sent its whole request head within this time (slow-loris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must have sent its whole body within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection may live (a switchover waits up to 120 s for the monitor).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(150);
/// Largest request body (an Alertmanager notification is a few KB).
pub const MAX_BODY: usize = 1 << 20;
/// Distinct alert receivers counted; more are refused (bounded memory and metric series).
pub const MAX_RECEIVERS: usize = 64;
/// Longest receiver name.
pub const MAX_RECEIVER_LEN: usize = 64;

/// Where the token lives for an environment whose secrets are in `secrets_dir`.
pub fn token_path(secrets_dir: &Path) -> PathBuf {
    secrets_dir.join(TOKEN_FILE)
}

fn valid_token(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The API token (64 hex digits from /dev/urandom), generated into `secrets_dir` (0600) when
/// missing or malformed. Idempotent: an existing token is kept.
pub fn ensure_token(secrets_dir: &Path) -> Result<String, AgentError> {
    let p = token_path(secrets_dir);
    let terr = |detail: String| AgentError::Token {
        path: p.display().to_string(),
        detail,
    };
    match std::fs::read_to_string(&p) {
        Ok(s) if valid_token(s.trim()) => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(terr(e.to_string())),
    }
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map_err(|e| terr(format!("no randomness: {e}")))?;
    let token = hex::encode(buf);
    crate::state::write_atomic(&p, token.as_bytes(), 0o600).map_err(|e| terr(e.to_string()))?;
    Ok(token)
}

/// Reads the token of an environment (for clients: the CLI).
pub fn read_token(secrets_dir: &Path) -> Result<String, AgentError> {
    let p = token_path(secrets_dir);
    let s = std::fs::read_to_string(&p).map_err(|e| AgentError::Token {
        path: p.display().to_string(),
        detail: e.to_string(),
    })?;
    let s = s.trim();
    if valid_token(s) {
        Ok(s.to_string())
    } else {
        Err(AgentError::Token {
            path: p.display().to_string(),
            detail: "not a bssctl agent token".into(),
        })
    }
}

/// Why a request was refused before any handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub title: &'static str,
    pub detail: String,
}

/// Who may talk to the API: the `Host` names of the agent itself (DNS rebinding sends a foreign
/// one), no foreign `Origin` (a web page in the operator's browser), the token for every route
/// that changes something or exposes metrics, JSON bodies only (a cross-origin form or
/// `text/plain` POST needs no CORS preflight; `application/json` does, and none is granted).
#[derive(Debug, Clone)]
pub struct Guard {
    token: String,
    hosts: Vec<String>,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Guard {
    pub fn new(token: &str, host: &str, port: u16) -> Guard {
        let mut hosts: Vec<String> = ["127.0.0.1", "localhost", "[::1]", host]
            .iter()
            .map(|h| format!("{}:{port}", h.to_ascii_lowercase()))
            .collect();
        hosts.dedup();
        Guard {
            token: token.to_string(),
            hosts,
        }
    }

    /// Pure: the decision for one request head.
    pub fn check(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<(), Refusal> {
        let refuse = |status, title, detail: &str| {
            Err(Refusal {
                status,
                title,
                detail: detail.to_string(),
            })
        };
        let header = |name: http::header::HeaderName| {
            headers
                .get(name)
                .map(|v| v.to_str().unwrap_or("\u{fffd}").trim().to_ascii_lowercase())
        };
        match header(http::header::HOST) {
            Some(h) if self.hosts.contains(&h) => {}
            _ => {
                return refuse(
                    421,
                    "Misdirected request",
                    "the Host header does not name this agent",
                )
            }
        }
        if let Some(o) = header(http::header::ORIGIN) {
            if !self.hosts.iter().any(|h| o == format!("http://{h}")) {
                return refuse(403, "Forbidden", "cross-origin requests are refused");
            }
        }
        let read_only = *method == http::Method::GET || *method == http::Method::HEAD;
        if !read_only || path == "/metrics" {
            let presented = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), self.token.as_bytes())) {
                return refuse(
                    401,
                    "Unauthorized",
                    "this route needs `Authorization: Bearer <token>` (the token is <state>/secrets/agent-token)",
                );
            }
        }
        if !read_only {
            let json = header(http::header::CONTENT_TYPE)
                .is_some_and(|ct| ct.split(';').next().map(str::trim) == Some("application/json"));
            if !json {
                return refuse(
                    415,
                    "Unsupported media type",
                    "POST bodies must be application/json",
                );
            }
        }
        Ok(())
    }
}

/// A receiver name the agent counts: 1-64 characters of `[A-Za-z0-9._-]`.
pub fn valid_receiver(name: &str) -> bool {
    (1..=MAX_RECEIVER_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Clone)]
struct Api {
    snap: Arc<Mutex<Snapshot>>,
    fo: Arc<Mutex<FailoverStatus>>,
    requests: Arc<Mutex<std::sync::mpsc::Sender<Request>>>,
    guard: Arc<Guard>,
}

impl Api {
    fn snapshot(&self) -> Option<Snapshot> {
        let mut s = self.snap.lock().ok()?.clone();
        if let Ok(f) = self.fo.lock() {
            s.failover = f.clone();
        }
        Some(s)
    }
}

fn problem(status: u16, title: &str, detail: &str) -> Response {
    let body = serde_json::json!({"type": "about:blank", "title": title, "status": status, "detail": detail}).to_string();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(http::header::CONTENT_TYPE, "application/problem+json")],
        body,
    )
        .into_response()
}

fn json_response(v: &impl Serialize) -> Response {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(v).unwrap_or_default(),
    )
        .into_response()
}

async fn guard_layer(State(api): State<Api>, req: axum::extract::Request, next: Next) -> Response {
    if let Err(r) = api
        .guard
        .check(req.method(), req.uri().path(), req.headers())
    {
        tracing::warn!(method = %req.method(), path = %req.uri().path(), status = r.status, "agent API request refused: {}", r.detail);
        return problem(r.status, r.title, &r.detail);
    }
    next.run(req).await
}

async fn read_body(body: Body) -> Result<axum::body::Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(problem(
            413,
            "Payload too large",
            &format!("bodies are limited to {MAX_BODY} bytes"),
        )),
        Err(_) => Err(problem(
            408,
            "Request timeout",
            &format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

async fn status_route(State(api): State<Api>) -> Response {
    match api.snapshot() {
        Some(s) => json_response(&s),
        None => problem(500, "Internal error", "status unavailable"),
    }
}

async fn metrics_route(State(api): State<Api>) -> Response {
    match api.snapshot() {
        Some(s) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            metrics(&s),
        )
            .into_response(),
        None => problem(500, "Internal error", "metrics unavailable"),
    }
}

async fn failover_route(State(api): State<Api>) -> Response {
    match api.fo.lock() {
        Ok(f) => json_response(&*f),
        Err(_) => problem(500, "Internal error", "failover status unavailable"),
    }
}

async fn alerts_route(State(api): State<Api>) -> Response {
    match api.snap.lock() {
        Ok(s) => json_response(&s.recent_alerts),
        Err(_) => problem(500, "Internal error", "alerts unavailable"),
    }
}

async fn component_route(State(api): State<Api>, AxPath(name): AxPath<String>) -> Response {
    match api.snap.lock() {
        Ok(s) => match s.components.iter().find(|c| c.name == name) {
            Some(c) => json_response(c),
            None => problem(404, "Not found", &format!("no component `{name}`")),
        },
        Err(_) => problem(500, "Internal error", "status unavailable"),
    }
}

async fn switchover_route(State(api): State<Api>, uri: http::Uri, body: Body) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => v.get("to").and_then(|x| x.as_str()).map(String::from),
            Err(e) => return problem(400, "Bad request", &format!("body is not JSON: {e}")),
        }
    };
    let from_query = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("to="))
            .map(String::from)
    });
    let to = from_body.or(from_query).filter(|v| !v.is_empty());
    if to.as_deref().is_some_and(|v| !valid_receiver(v)) {
        return problem(400, "Bad request", "`to` is not a member name");
    }
    let Some(tx) = api.requests.lock().ok().map(|t| t.clone()) else {
        return problem(500, "Internal error", "failover monitor unavailable");
    };
    let answer = tokio::task::spawn_blocking(move || {
        let (reply, rx) = std::sync::mpsc::channel();
        if tx.send(Request::Switchover { to, reply }).is_err() {
            return problem(
                503,
                "Unavailable",
                "this environment has no failover monitor",
            );
        }
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(ev)) => json_response(&ev),
            Ok(Err(e)) => problem(409, "Switchover refused or failed", &e.to_string()),
            Err(_) => problem(
                504,
                "Timeout",
                "no answer from the failover monitor in 120s",
            ),
        }
    })
    .await;
    answer.unwrap_or_else(|_| problem(500, "Internal error", "switchover task failed"))
}

async fn alert_route(
    State(api): State<Api>,
    AxPath(receiver): AxPath<String>,
    body: Body,
) -> Response {
    if !valid_receiver(&receiver) {
        return problem(
            400,
            "Bad request",
            &format!("receiver names are 1-{MAX_RECEIVER_LEN} characters of [A-Za-z0-9._-]"),
        );
    }
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let v = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => v,
        Err(e) => return problem(400, "Bad request", &format!("body is not JSON: {e}")),
    };
    let Ok(mut s) = api.snap.lock() else {
        return problem(500, "Internal error", "alerts unavailable");
    };
    if !s.alerts_received.contains_key(&receiver) && s.alerts_received.len() >= MAX_RECEIVERS {
        return problem(
            429,
            "Too many receivers",
            &format!("at most {MAX_RECEIVERS} distinct receivers are counted"),
        );
    }
    *s.alerts_received.entry(receiver.clone()).or_default() += 1;
    s.recent_alerts
        .push_back(serde_json::json!({"receiver": receiver, "payload": v}));
    while s.recent_alerts.len() > 50 {
        s.recent_alerts.pop_front();
    }
    "ok\n".into_response()
}

async fn not_found(uri: http::Uri) -> Response {
    problem(
        404,
        "Not found",
        &format!(
            "no route {}; try /status, /metrics, /health, /components/<name>",
            uri.path()
        ),
    )
}

fn router(api: Api) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/status", get(status_route))
        .route("/metrics", get(metrics_route))
        .route("/failover", get(failover_route))
        .route("/switchover", post(switchover_route))
        .route("/alerts", get(alerts_route))
        .route("/alerts/{receiver}", post(alert_route))
        .route("/components/{name}", get(component_route))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(api.clone(), guard_layer))
        .with_state(api)
}

/// Binds `addr` (errors surface here, before any thread starts) and serves the API on its own
/// small tokio runtime until `stop` is set: at most `MAX_CONNECTIONS` at once, each with a
/// request-head deadline, no keep-alive, a body deadline and a lifetime cap.
fn start_api(
    addr: &str,
    api: Api,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, AgentError> {
    let listen_err = |detail: String| AgentError::Listen {
        addr: addr.to_string(),
        detail,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(|e| listen_err(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| listen_err(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agent-api")
        .enable_all()
        .build()
        .map_err(|e| listen_err(format!("failed to start the API runtime: {e}")))?;
    Ok(std::thread::spawn(move || {
        rt.block_on(accept_loop(listener, api, stop));
    }))
}

async fn accept_loop(listener: std::net::TcpListener, api: Api, stop: Arc<AtomicBool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "failed to serve the agent API");
            return;
        }
    };
    let app = router(api);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    while !stop.load(Ordering::SeqCst) {
        let stream = match tokio::time::timeout(Duration::from_millis(250), listener.accept()).await
        {
            Ok(Ok((s, _))) => s,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "agent API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => continue,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("agent API: {MAX_CONNECTIONS} connections open; closing a new one");
            drop(stream);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
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
    let _ = writeln!(o, "# HELP bssctl_failover_held 1 while the failover of the unreachable primary is held back because its storage is full.\n# TYPE bssctl_failover_held gauge");
    if let Some(p) = f.primary.as_deref() {
        let _ = writeln!(
            o,
            "bssctl_failover_held{{member=\"{}\",reason=\"disk_full\"}} {}",
            esc(p),
            u8::from(!f.held.is_empty())
        );
    }
    let _ = writeln!(o, "# HELP bssctl_postgres_disk_full 1 when the fullest filesystem of the member (data directory or pg_wal) has less than two WAL segments free.\n# TYPE bssctl_postgres_disk_full gauge");
    for d in &f.storage {
        let _ = writeln!(
            o,
            "bssctl_postgres_disk_full{{member=\"{}\"}} {}",
            esc(&d.member),
            u8::from(d.full)
        );
    }
    let _ = writeln!(o, "# HELP bssctl_postgres_disk_available_bytes Free bytes on the fullest filesystem of the member (data directory or pg_wal).\n# TYPE bssctl_postgres_disk_available_bytes gauge");
    for d in &f.storage {
        if let Some(b) = d.available_bytes {
            let _ = writeln!(
                o,
                "bssctl_postgres_disk_available_bytes{{member=\"{}\",path=\"{}\"}} {b}",
                esc(&d.member),
                esc(&d.path)
            );
        }
    }
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
