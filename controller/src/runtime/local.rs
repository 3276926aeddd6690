//! The local runtime: every component a supervised process on 127.0.0.1, data and logs under the
//! environment's state directory.
//!
//! `apply` compares the desired bundle with what runs (process records + liveness), then for each
//! component in dependency order ensures it: create (initdb / pg_basebackup / start), reload
//! (verified), restart, or nothing; every step is gated on a real health check. A failed reload or
//! restart puts the previous files back. All steps are idempotent, so an apply killed half-way is
//! finished by the next one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::process::{self, Record, Spawn};
use super::{Event, Reporter, RuntimeError};
use crate::pgsql;
use crate::plan::{Action, Plan};
use crate::probe;
use crate::render::{Bundle, ComponentBundle, Kind};
use crate::state;
use crate::tools;
use crate::topology::model::{PgMember, Role, ValidatedTopology};

pub struct Local<'a> {
    pub t: &'a ValidatedTopology,
    pub reporter: &'a mut dyn Reporter,
}

/// Binaries a component kind needs.
pub fn programs(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Postgres => &[
            "postgres",
            "initdb",
            "pg_ctl",
            "pg_basebackup",
            "pg_rewind",
            "pg_controldata",
        ],
        Kind::Redis => &["redis-server"],
        Kind::KafkaStore => &["bssctl"],
        Kind::Kafka => &["tansu"],
        Kind::Haproxy => &["haproxy"],
        Kind::Backend | Kind::StreamProcessor => &["bss-backend"],
        Kind::Envoy => &["envoy"],
        Kind::NodeExporter => &["prometheus-node-exporter"],
        Kind::PostgresExporter => &["prometheus-postgres-exporter"],
        Kind::RedisExporter => &["prometheus-redis-exporter"],
        Kind::Prometheus => &["prometheus"],
        Kind::Alertmanager => &["prometheus-alertmanager"],
    }
}

/// Ports a component listens on.
pub fn ports_of(t: &ValidatedTopology, name: &str, kind: Kind) -> Vec<u16> {
    match kind {
        Kind::Postgres => t
            .postgres
            .as_ref()
            .and_then(|p| p.member(name))
            .map(|m| vec![m.port])
            .unwrap_or_default(),
        Kind::Redis => t
            .redis
            .as_ref()
            .map(|r| vec![r.endpoint.port])
            .unwrap_or_default(),
        Kind::KafkaStore => t
            .kafka
            .as_ref()
            .and_then(|k| k.store.as_ref())
            .map(|s| vec![s.endpoint.port])
            .unwrap_or_default(),
        Kind::Kafka => t
            .kafka
            .as_ref()
            .and_then(|k| k.brokers.iter().find(|b| b.name == name))
            .map(|b| vec![b.endpoint.port])
            .unwrap_or_default(),
        Kind::Haproxy => t
            .haproxy
            .as_ref()
            .map(|h| {
                [
                    Some(h.write.port),
                    Some(h.read.port),
                    h.stats.as_ref().map(|s| s.port),
                ]
                .into_iter()
                .flatten()
                .collect()
            })
            .unwrap_or_default(),
        Kind::Backend => t
            .backend
            .as_ref()
            .map(|b| vec![b.endpoint.port])
            .unwrap_or_default(),
        Kind::StreamProcessor => vec![],
        Kind::Envoy => t
            .envoy
            .as_ref()
            .map(|e| {
                std::iter::once(e.admin.port)
                    .chain(e.listeners.iter().map(|l| l.port))
                    .collect()
            })
            .unwrap_or_default(),
        Kind::NodeExporter => t
            .exporters
            .node
            .as_ref()
            .map(|e| vec![e.port])
            .unwrap_or_default(),
        Kind::PostgresExporter => t
            .exporters
            .postgres
            .iter()
            .find(|x| x.name == name)
            .map(|x| vec![x.endpoint.port])
            .unwrap_or_default(),
        Kind::RedisExporter => t
            .exporters
            .redis
            .as_ref()
            .map(|e| vec![e.port])
            .unwrap_or_default(),
        Kind::Prometheus => t
            .prometheus
            .as_ref()
            .map(|p| vec![p.endpoint.port])
            .unwrap_or_default(),
        Kind::Alertmanager => t
            .alertmanager
            .as_ref()
            .map(|a| vec![a.endpoint.port])
            .unwrap_or_default(),
    }
}

/// Marker left by failover fencing next to a member's data directory: the member was a primary
/// that lost its role, so it may hold WAL the new primary never saw and must be rewound
/// (`pg_rewind`, or re-cloned) before it starts again as a replica. Kept outside `run/` so a
/// `destroy --keep-data` does not forget it.
pub fn rewind_marker(t: &ValidatedTopology, name: &str) -> PathBuf {
    Path::new(&t.paths.data).join(format!("{name}.rewind"))
}

/// `Database cluster state` of a data directory (pg_controldata), e.g. `shut down`, `in production`.
pub fn cluster_state(
    data_dir: &str,
    user: Option<(u32, u32)>,
    root: &str,
) -> Result<String, String> {
    let out = run_tool(
        root,
        "pg_controldata",
        &["-D", data_dir],
        &[("LC_ALL", "C")],
        user,
    )?;
    out.lines()
        .find_map(|l| {
            l.strip_prefix("Database cluster state:")
                .map(|v| v.trim().to_string())
        })
        .ok_or_else(|| "pg_controldata printed no cluster state".to_string())
}

/// `Latest checkpoint location` of a stopped data directory as a number.
pub fn checkpoint_lsn(data_dir: &str, user: Option<(u32, u32)>, root: &str) -> Result<u64, String> {
    let out = run_tool(
        root,
        "pg_controldata",
        &["-D", data_dir],
        &[("LC_ALL", "C")],
        user,
    )?;
    let v = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("Latest checkpoint location:")
                .map(|v| v.trim().to_string())
        })
        .ok_or_else(|| "pg_controldata printed no checkpoint location".to_string())?;
    parse_lsn(&v).ok_or_else(|| format!("cannot parse LSN `{v}`"))
}

/// `16/B374D848` as a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A probe of one component by its own protocol: Ok(detail) healthy, Err(why) not.
pub fn health(t: &ValidatedTopology, name: &str, kind: Kind) -> Result<String, String> {
    let to = Duration::from_millis(1500);
    let local = |port: u16| format!("http://127.0.0.1:{port}");
    match kind {
        Kind::Postgres => {
            let pg = t.postgres.as_ref().ok_or("no postgres")?;
            let m = pg.member(name).ok_or("unknown member")?;
            let pw =
                state::secret_value(t, "postgres-superuser-password").map_err(|e| e.to_string())?;
            let mut c = pgsql::connect(&m.host, m.port, &pg.superuser, &pw, "postgres", to)?;
            let rec = pgsql::in_recovery(&mut c)?;
            Ok(if rec {
                "replica".into()
            } else {
                "primary".into()
            })
        }
        Kind::Redis => {
            let r = t.redis.as_ref().ok_or("no redis")?;
            let pw = match &r.password_secret {
                Some(s) => Some(state::secret_value(t, s).map_err(|e| e.to_string())?),
                None => None,
            };
            probe::redis_ping(&r.endpoint.host, r.endpoint.port, pw.as_deref(), to)
                .map(|_| "PONG".into())
        }
        Kind::KafkaStore => {
            let st = t
                .kafka
                .as_ref()
                .and_then(|k| k.store.as_ref())
                .ok_or("no store")?;
            // ListObjectsV2 on the brokers' bucket: the server answers and the bucket is there.
            let url = format!(
                "{}/{}?list-type=2&max-keys=1",
                local(st.endpoint.port),
                st.bucket
            );
            match probe::http_get(&url, to) {
                Ok((200, _)) => Ok(format!("bucket {} listed", st.bucket)),
                Ok((c, b)) => Err(format!(
                    "listing bucket {} answered {c}: {}",
                    st.bucket,
                    b.chars().take(200).collect::<String>()
                )),
                Err(e) => Err(e),
            }
        }
        Kind::Kafka => {
            let port = *ports_of(t, name, kind).first().ok_or("no port")?;
            if probe::tcp("127.0.0.1", port, to) {
                Ok("accepting connections".into())
            } else {
                Err(format!("nothing answers on 127.0.0.1:{port}"))
            }
        }
        Kind::Haproxy => {
            let h = t.haproxy.as_ref().ok_or("no haproxy")?;
            let servers = probe::haproxy_servers(&h.admin_socket)?;
            let pg = t.postgres.as_ref().ok_or("no postgres")?;
            let write_up = servers.iter().any(|(px, sv, st)| {
                px == "postgres-write" && sv == &pg.primary && st.starts_with("UP")
            });
            if write_up {
                let readers = servers
                    .iter()
                    .filter(|(px, sv, st)| {
                        px == "postgres-read" && sv != "BACKEND" && st.starts_with("UP")
                    })
                    .count();
                Ok(format!(
                    "writes to {} UP, {readers} read servers UP",
                    pg.primary
                ))
            } else {
                Err(format!(
                    "write server {} is not UP: {:?}",
                    pg.primary,
                    servers
                        .iter()
                        .filter(|s| s.0 == "postgres-write")
                        .collect::<Vec<_>>()
                ))
            }
        }
        Kind::Backend => {
            let b = t.backend.as_ref().ok_or("no backend")?;
            match probe::http_get(&format!("{}/health/ready", local(b.endpoint.port)), to) {
                Ok((200, _)) => Ok("ready".into()),
                Ok((c, body)) => Err(format!(
                    "/health/ready answered {c}: {}",
                    body.chars().take(200).collect::<String>()
                )),
                Err(e) => Err(e),
            }
        }
        Kind::StreamProcessor => {
            let r = process::read_record(&t.paths.run, name).ok_or("not started")?;
            if process::alive(&r) {
                Ok("running".into())
            } else {
                Err("not running".into())
            }
        }
        Kind::Envoy => {
            let e = t.envoy.as_ref().ok_or("no envoy")?;
            match probe::http_get(&format!("{}/ready", local(e.admin.port)), to) {
                Ok((200, body)) if body.trim() == "LIVE" => Ok("LIVE".into()),
                Ok((c, body)) => Err(format!("/ready answered {c} {}", body.trim())),
                Err(e) => Err(e),
            }
        }
        Kind::NodeExporter | Kind::PostgresExporter | Kind::RedisExporter => {
            let port = *ports_of(t, name, kind).first().ok_or("no port")?;
            match probe::http_get(&format!("{}/metrics", local(port)), to) {
                Ok((200, body)) => {
                    // The postgres and redis exporters answer 200 even when their target is down.
                    let up = match kind {
                        Kind::PostgresExporter => probe::metric_value(&body, "pg_up"),
                        Kind::RedisExporter => probe::metric_value(&body, "redis_up"),
                        _ => Some(1.0),
                    };
                    if up == Some(1.0) {
                        Ok("serving metrics".into())
                    } else {
                        Err("serving metrics but its target is down".into())
                    }
                }
                Ok((c, _)) => Err(format!("/metrics answered {c}")),
                Err(e) => Err(e),
            }
        }
        Kind::Prometheus | Kind::Alertmanager => {
            let port = *ports_of(t, name, kind).first().ok_or("no port")?;
            match probe::http_get(&format!("{}/-/ready", local(port)), to) {
                Ok((200, _)) => Ok("ready".into()),
                Ok((c, _)) => Err(format!("/-/ready answered {c}")),
                Err(e) => Err(e),
            }
        }
    }
}

fn wait_healthy(
    t: &ValidatedTopology,
    name: &str,
    kind: Kind,
    timeout: Duration,
    rec: Option<&Record>,
) -> Result<String, String> {
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < timeout {
        if let Some(r) = rec {
            if !process::alive(r) {
                return Err(format!(
                    "exited during start-up; last log lines:\n{}",
                    tail_log(t, name, 15)
                ));
            }
        }
        match health(t, name, kind) {
            Ok(d) => return Ok(d),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "not healthy after {}s: {last}\nlast log lines:\n{}",
        timeout.as_secs(),
        tail_log(t, name, 15)
    ))
}

pub fn log_path(t: &ValidatedTopology, name: &str) -> PathBuf {
    Path::new(&t.paths.logs).join(format!("{name}.log"))
}

pub fn tail_log(t: &ValidatedTopology, name: &str, n: usize) -> String {
    let text = std::fs::read_to_string(log_path(t, name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn run_tool(
    root: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    user: Option<(u32, u32)>,
) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let bin = tools::find(program).map_err(|e| e.to_string())?;
    let mut c = std::process::Command::new(bin);
    c.args(args)
        .stdin(std::process::Stdio::null())
        .env(process::ENV_MARKER, root)
        .env(process::TASK_MARKER, "1")
        .process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some((u, g)) = user {
        c.uid(u).gid(g);
    }
    let out = c
        .output()
        .map_err(|e| format!("failed to run {program}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{program} failed ({}): {}",
            out.status,
            text.trim()
        ))
    }
}

fn chown_tree(p: &Path, ids: Option<(u32, u32)>) -> std::io::Result<()> {
    let Some((uid, gid)) = ids else { return Ok(()) };
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    if p.is_dir() {
        for e in std::fs::read_dir(p)? {
            chown_tree(&e?.path(), ids)?;
        }
    }
    Ok(())
}

/// The first existing ancestor of `p` that user `uid`/`gid` cannot search (no x bit for it).
fn unreachable_ancestor(p: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut dirs: Vec<&Path> = p.ancestors().collect();
    dirs.reverse();
    for d in dirs {
        let Ok(m) = std::fs::metadata(d) else { break };
        let mode = m.mode();
        let ok = if m.uid() == uid {
            mode & 0o100 != 0
        } else if m.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Some(d.to_path_buf());
        }
    }
    None
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}

/// Reads KEY=VALUE lines (comments and blanks skipped).
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub kind: Kind,
    /// running, stopped, crashed.
    pub state: String,
    pub healthy: bool,
    pub health: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub ports: Vec<u16>,
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<pgsql::ReplicaStat>,
}

impl Local<'_> {
    fn ev(
        &mut self,
        component: &str,
        step: &str,
        status: &str,
        elapsed: Duration,
        detail: impl Into<String>,
    ) {
        self.reporter.event(&Event::step(
            component,
            step,
            status,
            elapsed,
            detail.into(),
        ));
    }

    fn pg_user(&self) -> Option<(u32, u32)> {
        tools::postgres_user()
    }

    /// Everything that must hold before anything starts: tools present, ports free.
    pub fn preflight(&self, bundle: &Bundle) -> Result<(), RuntimeError> {
        let mut problems = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for c in bundle.components.values() {
            for p in programs(c.kind) {
                if seen.insert(*p) {
                    if let Err(e) = tools::find(p) {
                        problems.push(e.to_string());
                    }
                }
            }
        }
        for (name, c) in &bundle.components {
            let ours =
                process::read_record(&self.t.paths.run, name).is_some_and(|r| process::alive(&r));
            if ours {
                continue;
            }
            for port in ports_of(self.t, name, c.kind) {
                if !process::port_free(port) {
                    let who =
                        process::port_holder(port).unwrap_or_else(|| "unknown process".into());
                    problems.push(format!("port {port} of {name} is in use by {who}"));
                }
            }
        }
        if let (Some((uid, gid)), true) = (
            self.pg_user(),
            bundle.components.values().any(|c| c.kind == Kind::Postgres),
        ) {
            if let Some(dir) = unreachable_ancestor(Path::new(&self.t.paths.root), uid, gid) {
                problems.push(format!(
                    "PostgreSQL runs as user `postgres` (it refuses to run as root) and cannot enter {}: allow it (`chmod o+x {}`) or choose a stateDir it can reach",
                    dir.display(),
                    dir.display()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Preflight(problems))
        }
    }

    /// Directories, secrets (0600) and the files derived from them (pgpass, redis auth include).
    pub fn ensure_state(&mut self) -> Result<(), RuntimeError> {
        let t = self.t;
        // Tasks of an apply that was killed half-way (a base backup still writing, ...).
        for pid in process::tasks_of(&t.paths.root) {
            self.ev(
                "-",
                "cleanup",
                "ok",
                Duration::ZERO,
                format!("ended leftover task pid {pid}: {}", process::cmdline(pid)),
            );
            process::stop_group(pid, Duration::from_secs(5));
        }
        for d in [
            &t.paths.root,
            &t.paths.config,
            &t.paths.data,
            &t.paths.run,
            &t.paths.logs,
        ] {
            std::fs::create_dir_all(d)
                .map_err(|e| RuntimeError::Io(format!("failed to create {d}: {e}")))?;
        }
        // PostgreSQL (another user when we are root) must traverse the tree down to its dirs.
        for d in [
            &t.paths.root,
            &t.paths.config,
            &t.paths.data,
            &t.paths.run,
            &t.paths.logs,
        ] {
            set_mode(Path::new(d), 0o755);
        }
        state::ensure_secrets(t).map_err(|e| RuntimeError::Io(e.to_string()))?;
        if let Some(pg) = &t.postgres {
            let pw = state::secret_value(t, "postgres-replication-password")
                .map_err(|e| RuntimeError::Io(e.to_string()))?;
            let line = format!(
                "*:*:*:{}:{}\n",
                pg.replication_user,
                pw.replace('\\', "\\\\").replace(':', "\\:")
            );
            state::write_atomic(Path::new(&pg.passfile), line.as_bytes(), 0o600)
                .map_err(|e| RuntimeError::Io(e.to_string()))?;
            let _ = chown_tree(Path::new(&pg.passfile), self.pg_user());
            // The superuser secret is read by the postgres exporter (DATA_SOURCE_PASS_FILE); it
            // runs as root, like bssctl. The secrets dir stays 0700 except for PostgreSQL's user,
            // which needs the passfile: give it traversal only.
            if let Some((uid, gid)) = self.pg_user() {
                let _ = std::os::unix::fs::lchown(&t.paths.secrets, Some(0), Some(gid));
                let _ = uid;
                set_mode(Path::new(&t.paths.secrets), 0o710);
            }
        }
        if let Some(r) = &t.redis {
            if let Some(sec) = &r.password_secret {
                let pw =
                    state::secret_value(t, sec).map_err(|e| RuntimeError::Io(e.to_string()))?;
                let text = format!(
                    "requirepass \"{}\"\n",
                    pw.replace('\\', "\\\\").replace('"', "\\\"")
                );
                state::write_atomic(
                    &Path::new(&t.paths.secrets).join("redis-auth.conf"),
                    text.as_bytes(),
                    0o600,
                )
                .map_err(|e| RuntimeError::Io(e.to_string()))?;
            }
            std::fs::create_dir_all(&r.data_dir).map_err(|e| RuntimeError::Io(e.to_string()))?;
        }
        if let Some(h) = &t.haproxy {
            if let Some(d) = Path::new(&h.admin_socket).parent() {
                std::fs::create_dir_all(d).map_err(|e| RuntimeError::Io(e.to_string()))?;
            }
        }
        Ok(())
    }

    pub fn write_files(&self, name: &str, c: &ComponentBundle) -> Result<(), RuntimeError> {
        let dir = Path::new(&self.t.paths.config).join(name);
        for (rel, content) in &c.files {
            let p = dir.join(rel);
            state::write_atomic(&p, content.as_bytes(), 0o644)
                .map_err(|e| RuntimeError::Io(e.to_string()))?;
        }
        Ok(())
    }

    fn start_process(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        epoch: u32,
        restarts: u32,
    ) -> Result<Record, RuntimeError> {
        let t = self.t;
        let program = tools::find(&c.launch.program).map_err(|e| RuntimeError::Step {
            component: name.into(),
            step: "start".into(),
            detail: e.to_string(),
        })?;
        let mut env: Vec<(String, String)> = c
            .launch
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(f) = &c.launch.env_file {
            env.extend(parse_env_file(
                c.files.get(f).map(String::as_str).unwrap_or(""),
            ));
        }
        for (var, secret) in &c.launch.secret_env {
            let v = state::secret_value(t, secret).map_err(|e| RuntimeError::Step {
                component: name.into(),
                step: "start".into(),
                detail: e.to_string(),
            })?;
            env.push((var.clone(), v));
        }
        let mut args = c.launch.args.clone();
        if c.kind == Kind::Envoy {
            args.push("--restart-epoch".into());
            args.push(epoch.to_string());
        }
        let user = if c.kind == Kind::Postgres {
            self.pg_user()
        } else {
            None
        };
        let log = log_path(t, name);
        let child = process::spawn(Spawn {
            component: name,
            program,
            args,
            env,
            log: log.clone(),
            env_root: &t.paths.root,
            user,
            cwd: Some(PathBuf::from(&t.paths.root)),
        })
        .map_err(|e| RuntimeError::Step {
            component: name.into(),
            step: "start".into(),
            detail: e.to_string(),
        })?;
        let pid = child.pid;
        let rec = Record {
            component: name.into(),
            pid,
            start_ticks: process::start_ticks(pid).unwrap_or(0),
            hash: c.hash(),
            epoch,
            started_at: process::now_secs(),
            restarts,
            pgid: child.pgid,
            kind: Some(c.kind),
        };
        process::write_record(&t.paths.run, &rec).map_err(|e| RuntimeError::Io(e.to_string()))?;
        Ok(rec)
    }

    /// Stops a component's processes (PostgreSQL with a fast shutdown), waits, removes its record.
    pub fn stop(&mut self, name: &str, kind: Kind) {
        let t = self.t;
        if let Some(r) = process::read_record(&t.paths.run, name) {
            if process::alive(&r) {
                if kind == Kind::Postgres {
                    // SIGINT = fast shutdown: disconnect clients, checkpoint, exit.
                    process::signal(r.pid, "INT");
                    let start = Instant::now();
                    while process::alive(&r) && start.elapsed() < Duration::from_secs(20) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                process::stop_group(r.pid, Duration::from_secs(10));
            }
            process::remove_record(&t.paths.run, name);
        }
        if kind == Kind::Envoy {
            // A hot restart leaves the previous epoch draining; make sure none survives.
            for pid in process::processes_of(&t.paths.root) {
                if process::cmdline(pid).contains(&format!("{}/envoy/envoy.yaml", t.paths.config)) {
                    process::stop_group(pid, Duration::from_secs(5));
                }
            }
        }
    }

    fn gate(
        &mut self,
        name: &str,
        kind: Kind,
        rec: Option<&Record>,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        let start = Instant::now();
        self.ev(name, "health", "start", Duration::ZERO, "");
        match wait_healthy(self.t, name, kind, timeout, rec) {
            Ok(d) => {
                self.ev(name, "health", "ok", start.elapsed(), d.clone());
                Ok(d)
            }
            Err(e) => {
                self.ev(name, "health", "fail", start.elapsed(), e.clone());
                Err(RuntimeError::Step {
                    component: name.into(),
                    step: "health".into(),
                    detail: e,
                })
            }
        }
    }

    fn gate_timeout(kind: Kind) -> Duration {
        match kind {
            Kind::Postgres => Duration::from_secs(60),
            Kind::Backend => Duration::from_secs(60),
            Kind::StreamProcessor => Duration::from_secs(3),
            _ => Duration::from_secs(30),
        }
    }

    /// Brings one component to the desired bundle. `action` comes from the plan; the observed
    /// state can override it (a crashed component is started, a running one with the same hash
    /// is left alone).
    pub fn ensure(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        old: Option<&ComponentBundle>,
        action: Action,
    ) -> Result<Action, RuntimeError> {
        let t = self.t;
        let recorded = process::read_record(&t.paths.run, name);
        if let Some(dead) = recorded.as_ref().filter(|r| !process::alive(r)) {
            // A crashed leader can leave children behind (PostgreSQL backends, HAProxy workers)
            // that hold its ports or data directory: its process group goes first.
            process::signal_group(if dead.pgid > 1 { dead.pgid } else { dead.pid }, "KILL");
            std::thread::sleep(Duration::from_millis(100));
        }
        let rec = recorded.filter(process::alive);
        let hash = c.hash();
        let effective = match (&rec, action) {
            (None, _) => Action::Create,
            (Some(r), _) if r.hash == hash => Action::None,
            (Some(_), Action::None) | (Some(_), Action::Create) => Action::Restart,
            (Some(_), a) => a,
        };
        match effective {
            Action::None => {
                self.ev(name, "up-to-date", "ok", Duration::ZERO, "");
                Ok(Action::None)
            }
            Action::Create => {
                self.write_files(name, c)?;
                self.create(name, c)?;
                Ok(Action::Create)
            }
            Action::Reload => {
                let Some(r) = rec else {
                    return Ok(Action::None);
                };
                self.write_files(name, c)?;
                if let Err(e) = self.reload(name, c, &r) {
                    if let Some(o) = old {
                        let _ = self.write_files(name, o);
                        let _ = self.reload(name, o, &r);
                    }
                    return Err(e);
                }
                Ok(Action::Reload)
            }
            Action::Restart | Action::Recreate => {
                let restarts = rec.as_ref().map(|r| r.restarts).unwrap_or(0);
                let s = Instant::now();
                self.ev(name, "stop", "start", Duration::ZERO, "");
                self.stop(name, c.kind);
                self.ev(name, "stop", "ok", s.elapsed(), "");
                if effective == Action::Recreate && c.kind != Kind::Postgres {
                    let _ = std::fs::remove_dir_all(Path::new(&t.paths.data).join(name));
                }
                self.write_files(name, c)?;
                let r = self.create(name, c);
                if let (Err(e), Some(o)) = (&r, old) {
                    // Roll back to the last good files so the component keeps serving.
                    self.ev(name, "rollback", "start", Duration::ZERO, e.to_string());
                    let _ = self.write_files(name, o);
                    let _ = self.create(name, o);
                }
                r?;
                let _ = restarts;
                Ok(effective)
            }
            Action::Remove => {
                self.remove(name, c.kind);
                Ok(Action::Remove)
            }
        }
    }

    fn create(&mut self, name: &str, c: &ComponentBundle) -> Result<(), RuntimeError> {
        match c.kind {
            Kind::Postgres => self.create_postgres(name, c),
            Kind::Backend => {
                let s = Instant::now();
                self.ev(name, "migrate", "start", Duration::ZERO, "");
                let cfg = format!("{}/{name}/backend.yaml", self.t.paths.config);
                run_tool(
                    &self.t.paths.root,
                    "bss-backend",
                    &["migrate", "--config", &cfg],
                    &[],
                    None,
                )
                .map_err(|e| {
                    self.ev(name, "migrate", "fail", s.elapsed(), e.clone());
                    RuntimeError::Step {
                        component: name.into(),
                        step: "migrate".into(),
                        detail: e,
                    }
                })?;
                self.ev(name, "migrate", "ok", s.elapsed(), "");
                self.start_and_gate(name, c, 0)
            }
            Kind::Kafka => {
                self.start_and_gate(name, c, 0)?;
                self.ensure_topics(name)
            }
            Kind::Envoy => {
                let epoch = 0;
                self.start_and_gate(name, c, epoch)
            }
            _ => self.start_and_gate(name, c, 0),
        }
    }

    fn start_and_gate(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        epoch: u32,
    ) -> Result<(), RuntimeError> {
        let s = Instant::now();
        self.ev(name, "start", "start", Duration::ZERO, "");
        let rec = self.start_process(name, c, epoch, 0)?;
        self.ev(name, "start", "ok", s.elapsed(), format!("pid {}", rec.pid));
        self.gate(name, c.kind, Some(&rec), Self::gate_timeout(c.kind))?;
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
        let existing = run_tool(
            &self.t.paths.root,
            "tansu",
            &["topic", "list", "--broker", &url],
            &[],
            None,
        )
        .unwrap_or_default();
        let mut created = 0;
        for tp in &k.topics {
            if existing.contains(&format!("\"{}\"", tp.name))
                || existing.lines().any(|l| l.trim() == tp.name)
            {
                continue;
            }
            match run_tool(
                &self.t.paths.root,
                "tansu",
                &[
                    "topic",
                    "create",
                    &tp.name,
                    "--partitions",
                    &tp.partitions.to_string(),
                    "--broker",
                    &url,
                ],
                &[],
                None,
            ) {
                Ok(_) => created += 1,
                Err(e) if e.contains("TopicAlreadyExists") || e.contains("already exists") => {}
                Err(e) => {
                    self.ev(name, "topics", "fail", s.elapsed(), e.clone());
                    return Err(RuntimeError::Step {
                        component: name.into(),
                        step: "topics".into(),
                        detail: e,
                    });
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

    fn superuser_client(&self, m: &PgMember) -> Result<postgres::Client, String> {
        let pg = self.t.postgres.as_ref().ok_or("no postgres")?;
        let pw = state::secret_value(self.t, "postgres-superuser-password")
            .map_err(|e| e.to_string())?;
        pgsql::connect(
            &m.host,
            m.port,
            &pg.superuser,
            &pw,
            "postgres",
            Duration::from_secs(3),
        )
    }

    fn create_postgres(&mut self, name: &str, c: &ComponentBundle) -> Result<(), RuntimeError> {
        let t = self.t;
        let pg = t
            .postgres
            .as_ref()
            .ok_or_else(|| RuntimeError::Io("no postgres".into()))?;
        let m = pg
            .member(name)
            .ok_or_else(|| RuntimeError::Io(format!("unknown member {name}")))?
            .clone();
        let user = self.pg_user();
        let data = PathBuf::from(&m.data_dir);
        let step_err = |step: &str, detail: String| RuntimeError::Step {
            component: name.into(),
            step: step.into(),
            detail,
        };
        std::fs::create_dir_all(&m.socket_dir).map_err(|e| RuntimeError::Io(e.to_string()))?;
        let _ = chown_tree(Path::new(&m.socket_dir), user);
        let _ = chown_tree(Path::new(&t.paths.logs), None);
        let marker = rewind_marker(t, name);
        if m.role == Role::Replica && marker.exists() && data.join("PG_VERSION").exists() {
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
                    let _ = std::fs::remove_dir_all(&data);
                }
            }
            let _ = std::fs::remove_file(&marker);
        }
        if !data.join("PG_VERSION").exists() {
            // Build into a temporary directory and rename: a kill half-way leaves no cluster that
            // looks complete.
            let tmp = PathBuf::from(format!("{}.tmp", m.data_dir));
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = std::fs::remove_dir_all(&data);
            // Created by us and handed to PostgreSQL's user: it cannot create entries in data/.
            std::fs::create_dir_all(&tmp).map_err(|e| RuntimeError::Io(e.to_string()))?;
            set_mode(&tmp, 0o700);
            let _ = chown_tree(&tmp, user);
            if m.role == Role::Primary {
                let s = Instant::now();
                self.ev(name, "initdb", "start", Duration::ZERO, "");
                let pwfile = Path::new(&t.paths.run).join(format!("{name}.initdb-pw"));
                let pw = state::secret_value(t, "postgres-superuser-password")
                    .map_err(|e| RuntimeError::Io(e.to_string()))?;
                state::write_atomic(&pwfile, pw.as_bytes(), 0o600)
                    .map_err(|e| RuntimeError::Io(e.to_string()))?;
                let _ = chown_tree(&pwfile, user);
                let tmp_s = tmp.display().to_string();
                let r = run_tool(
                    &self.t.paths.root,
                    "initdb",
                    &[
                        "-D",
                        &tmp_s,
                        "-U",
                        &pg.superuser,
                        "-A",
                        "scram-sha-256",
                        "-E",
                        "UTF8",
                        "--pwfile",
                        &pwfile.display().to_string(),
                        "--no-instructions",
                    ],
                    &[],
                    user,
                );
                let _ = std::fs::remove_file(&pwfile);
                r.map_err(|e| {
                    self.ev(name, "initdb", "fail", s.elapsed(), e.clone());
                    step_err("initdb", e)
                })?;
                self.ev(name, "initdb", "ok", s.elapsed(), "");
            } else {
                let primary = pg
                    .primary_member()
                    .ok_or_else(|| RuntimeError::Io("no primary".into()))?
                    .clone();
                // The slot must exist before the base backup uses it.
                let mut cl = self
                    .superuser_client(&primary)
                    .map_err(|e| step_err("slot", e))?;
                if pg.slots {
                    pgsql::ensure_slot(&mut cl, &m.slot).map_err(|e| step_err("slot", e))?;
                }
                let s = Instant::now();
                self.ev(
                    name,
                    "basebackup",
                    "start",
                    Duration::ZERO,
                    format!("from {}", primary.name),
                );
                let tmp_s = tmp.display().to_string();
                let port = primary.port.to_string();
                let mut args = vec![
                    "-h",
                    primary.host.as_str(),
                    "-p",
                    port.as_str(),
                    "-U",
                    pg.replication_user.as_str(),
                    "-D",
                    tmp_s.as_str(),
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                    "--no-password",
                ];
                if pg.slots {
                    args.extend(["-S", m.slot.as_str()]);
                }
                run_tool(
                    &self.t.paths.root,
                    "pg_basebackup",
                    &args,
                    &[
                        ("PGPASSFILE", pg.passfile.as_str()),
                        ("PGCONNECT_TIMEOUT", "5"),
                    ],
                    user,
                )
                .map_err(|e| {
                    self.ev(name, "basebackup", "fail", s.elapsed(), e.clone());
                    step_err("basebackup", e)
                })?;
                self.ev(name, "basebackup", "ok", s.elapsed(), "");
            }
            std::fs::rename(&tmp, &data).map_err(|e| RuntimeError::Io(e.to_string()))?;
        }
        // Role files live in the data directory.
        let standby = data.join("standby.signal");
        if c.files.contains_key("standby.signal") {
            std::fs::write(&standby, "").map_err(|e| RuntimeError::Io(e.to_string()))?;
            let _ = chown_tree(&standby, user);
        } else if standby.exists() {
            let _ = std::fs::remove_file(&standby);
        }
        let _ = chown_tree(&data, user);
        self.start_and_gate(name, c, 0)?;
        let mut cl = self
            .superuser_client(&m)
            .map_err(|e| step_err("connect", e))?;
        if m.role == Role::Primary {
            let s = Instant::now();
            self.ev(name, "roles", "start", Duration::ZERO, "");
            let repl_pw = state::secret_value(t, "postgres-replication-password")
                .map_err(|e| RuntimeError::Io(e.to_string()))?;
            let app_pw = state::secret_value(t, "postgres-app-password")
                .map_err(|e| RuntimeError::Io(e.to_string()))?;
            // In synchronous mode no standby exists yet on a first apply: these bootstrap
            // commits must not wait for one (they are repeated idempotently on every apply).
            cl.batch_execute("SET synchronous_commit TO local")
                .map_err(|e| step_err("roles", pgsql::describe(&e)))?;
            pgsql::ensure_role(&mut cl, &pg.replication_user, &repl_pw, true)
                .map_err(|e| step_err("roles", e))?;
            pgsql::ensure_role(&mut cl, &pg.user, &app_pw, false)
                .map_err(|e| step_err("roles", e))?;
            pgsql::ensure_database(&mut cl, &pg.database, &pg.user)
                .map_err(|e| step_err("roles", e))?;
            if pg.slots {
                for r in pg.replicas() {
                    pgsql::ensure_slot(&mut cl, &r.slot).map_err(|e| step_err("slots", e))?;
                }
            }
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

    /// Rewinds a stopped former primary onto the current primary's timeline with pg_rewind (as
    /// PostgreSQL's user). A crashed target is first recovered in single-user mode with our own
    /// config (pg_rewind's own recovery would use the data directory's defaults, without
    /// wal_log_hints, and then refuse); single-user mode takes no connections, so it writes nothing
    /// anyone could read as acknowledged.
    fn rewind(&mut self, m: &PgMember) -> Result<String, String> {
        let t = self.t;
        let pg = t.postgres.as_ref().ok_or("no postgres")?;
        let primary = pg.primary_member().ok_or("no primary")?.clone();
        let user = self.pg_user();
        let mut cl = self.superuser_client(&primary)?;
        if pg.slots {
            pgsql::ensure_slot(&mut cl, &m.slot)?;
        }
        // pg_rewind reads the source's timeline from its control file, which a just-promoted
        // server updates only at its first checkpoint: without this it answers "no rewind
        // required" for a target that holds WAL the new primary never saw.
        cl.batch_execute("CHECKPOINT")
            .map_err(|e| pgsql::describe(&e))?;
        drop(cl);
        let data = m.data_dir.clone();
        // Single-user mode refuses to run with standby.signal; it is written again before the start.
        let _ = std::fs::remove_file(Path::new(&data).join("standby.signal"));
        let state = cluster_state(&data, user, &t.paths.root)?;
        if !state.starts_with("shut down") {
            let cfg = format!("config_file={}/{}/postgresql.conf", t.paths.config, m.name);
            run_tool(
                &t.paths.root,
                "postgres",
                &["--single", "-F", "-D", &data, "-c", &cfg, "template1"],
                &[],
                user,
            )
            .map_err(|e| format!("single-user recovery before pg_rewind: {e}"))?;
        }
        let pw =
            state::secret_value(t, "postgres-superuser-password").map_err(|e| e.to_string())?;
        let src = format!(
            "host={} port={} user={} dbname=postgres connect_timeout=5 sslmode=disable",
            primary.host, primary.port, pg.superuser
        );
        let target = format!("--target-pgdata={data}");
        let source = format!("--source-server={src}");
        let out = run_tool(
            &t.paths.root,
            "pg_rewind",
            &[target.as_str(), source.as_str()],
            &[("PGPASSWORD", pw.as_str())],
            user,
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
            .ok_or_else(|| RuntimeError::Io("no postgres".into()))?;
        let primary = pg
            .primary_member()
            .ok_or_else(|| RuntimeError::Io("no primary".into()))?
            .clone();
        let s = Instant::now();
        self.ev(&m.name, "streaming", "start", Duration::ZERO, "");
        let mut last = String::new();
        while s.elapsed() < Duration::from_secs(30) {
            match self
                .superuser_client(&primary)
                .and_then(|mut c| pgsql::replication(&mut c))
            {
                Ok(rows) => {
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
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.ev(&m.name, "streaming", "fail", s.elapsed(), last.clone());
        Err(RuntimeError::Step {
            component: m.name.clone(),
            step: "streaming".into(),
            detail: format!("not streaming after 30s: {last}"),
        })
    }

    /// Verified reload: the component takes the new files without dropping connections, and we
    /// check that it really did.
    pub fn reload(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        rec: &Record,
    ) -> Result<(), RuntimeError> {
        let t = self.t;
        let s = Instant::now();
        self.ev(name, "reload", "start", Duration::ZERO, "");
        let fail = |this: &mut Self, e: String| {
            this.ev(name, "reload", "fail", s.elapsed(), e.clone());
            RuntimeError::Step {
                component: name.into(),
                step: "reload".into(),
                detail: e,
            }
        };
        let to = Duration::from_secs(5);
        let detail = match c.kind {
            Kind::Postgres => {
                let m = t
                    .postgres
                    .as_ref()
                    .and_then(|p| p.member(name))
                    .cloned()
                    .ok_or_else(|| fail(self, "unknown member".into()))?;
                let mut cl = self.superuser_client(&m).map_err(|e| fail(self, e))?;
                cl.query("SELECT pg_reload_conf()", &[])
                    .map_err(|e| fail(self, pgsql::describe(&e)))?;
                std::thread::sleep(Duration::from_millis(200));
                let errs = pgsql::config_errors(&mut cl).map_err(|e| fail(self, e))?;
                if !errs.is_empty() {
                    return Err(fail(
                        self,
                        format!("PostgreSQL rejected the new settings: {}", errs.join("; ")),
                    ));
                }
                "pg_reload_conf() applied, pg_file_settings has no errors".to_string()
            }
            Kind::Haproxy => {
                let h = t
                    .haproxy
                    .as_ref()
                    .ok_or_else(|| fail(self, "no haproxy".into()))?;
                let cfg = format!("{}/{name}/haproxy.cfg", t.paths.config);
                let pw = state::secret_value(t, "haproxy-stats-password").unwrap_or_default();
                run_tool(
                    &self.t.paths.root,
                    "haproxy",
                    &["-c", "-q", "-f", &cfg],
                    &[("HAPROXY_STATS_PASSWORD", pw.as_str())],
                    None,
                )
                .map_err(|e| fail(self, e))?;
                let before = probe::haproxy_worker_pid(&h.admin_socket);
                process::signal(rec.pid, "USR2");
                let start = Instant::now();
                loop {
                    let now = probe::haproxy_worker_pid(&h.admin_socket);
                    if now.is_some() && now != before {
                        break format!(
                            "new worker pid {} (was {})",
                            now.unwrap_or(0),
                            before.unwrap_or(0)
                        );
                    }
                    if start.elapsed() > Duration::from_secs(10) {
                        return Err(fail(
                            self,
                            format!("no new worker after 10s; log:\n{}", tail_log(t, name, 10)),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Kind::Prometheus | Kind::Alertmanager => {
                let port = *ports_of(t, name, c.kind)
                    .first()
                    .ok_or_else(|| fail(self, "no port".into()))?;
                let (code, body) = probe::http_post(
                    &format!("http://127.0.0.1:{port}/-/reload"),
                    Duration::from_secs(10),
                )
                .map_err(|e| fail(self, e))?;
                if code != 200 {
                    return Err(fail(
                        self,
                        format!("/-/reload answered {code}: {}", body.trim()),
                    ));
                }
                let metric = if c.kind == Kind::Prometheus {
                    "prometheus_config_last_reload_successful"
                } else {
                    "alertmanager_config_last_reload_successful"
                };
                let (_, m) = probe::http_get(&format!("http://127.0.0.1:{port}/metrics"), to)
                    .map_err(|e| fail(self, e))?;
                if probe::metric_value(&m, metric) != Some(1.0) {
                    return Err(fail(self, format!("{metric} is not 1 after the reload")));
                }
                format!("/-/reload ok, {metric} = 1")
            }
            Kind::Envoy => {
                // Hot restart: a new process with the next epoch takes the listening sockets over
                // from the old one, which drains and exits.
                let epoch = rec.epoch + 1;
                let new = self.start_process(name, c, epoch, rec.restarts)?;
                let start = Instant::now();
                loop {
                    if !process::alive(&new) {
                        return Err(fail(
                            self,
                            format!(
                                "the new envoy (epoch {epoch}) exited:\n{}",
                                tail_log(t, name, 15)
                            ),
                        ));
                    }
                    if health(t, name, Kind::Envoy).is_ok() && !process::alive(rec) {
                        break format!("hot restart to epoch {epoch}, pid {}", new.pid);
                    }
                    if health(t, name, Kind::Envoy).is_ok()
                        && start.elapsed() > Duration::from_secs(1)
                    {
                        // The old epoch drains in the background (parent-shutdown-time).
                        break format!(
                            "hot restart to epoch {epoch}, pid {} (old epoch draining)",
                            new.pid
                        );
                    }
                    if start.elapsed() > Duration::from_secs(20) {
                        return Err(fail(
                            self,
                            "the new envoy did not become LIVE in 20s".into(),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            _ => return Err(fail(self, format!("{:?} cannot reload", c.kind))),
        };
        if c.kind != Kind::Envoy {
            let mut r = rec.clone();
            r.hash = c.hash();
            process::write_record(&t.paths.run, &r).map_err(|e| RuntimeError::Io(e.to_string()))?;
        }
        self.ev(name, "reload", "ok", s.elapsed(), detail);
        Ok(())
    }

    /// Stops a removed component and deletes its data; a removed replica's slot is dropped.
    pub fn remove(&mut self, name: &str, kind: Kind) {
        let s = Instant::now();
        self.ev(name, "remove", "start", Duration::ZERO, "");
        self.stop(name, kind);
        let t = self.t;
        if kind == Kind::Postgres {
            if let Some(pg) = &t.postgres {
                if let Some(primary) = pg.primary_member().cloned() {
                    let slot = format!("postgres_{}", name.trim_start_matches("postgres-"));
                    if let Ok(mut c) = self.superuser_client(&primary) {
                        let _ = pgsql::drop_slot(&mut c, &slot);
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(Path::new(&t.paths.data).join(name));
        let _ = std::fs::remove_dir_all(Path::new(&t.paths.config).join(name));
        self.ev(name, "remove", "ok", s.elapsed(), "stopped, data deleted");
    }

    /// Executes `plan` against what runs. Returns what was done per component.
    pub fn apply(
        &mut self,
        desired: &Bundle,
        applied: Option<&Bundle>,
        plan: &Plan,
    ) -> Result<BTreeMap<String, Action>, RuntimeError> {
        let mut done = BTreeMap::new();
        for (name, c) in desired.ordered() {
            let action = plan.get(name).map(|p| p.action).unwrap_or(Action::Create);
            let old = applied.and_then(|a| a.components.get(name));
            let a = self.ensure(name, c, old, action)?;
            done.insert(name.clone(), a);
        }
        // Removals, last-started first.
        if let Some(a) = applied {
            let mut gone: Vec<(&String, &ComponentBundle)> = a
                .ordered()
                .into_iter()
                .filter(|(n, _)| !desired.components.contains_key(*n))
                .collect();
            gone.reverse();
            for (name, c) in gone {
                self.remove(name, c.kind);
                done.insert(name.clone(), Action::Remove);
            }
        }
        Ok(done)
    }

    /// Status of every component of `bundle`, probed now.
    pub fn status(&self, bundle: &Bundle) -> Vec<ComponentStatus> {
        let t = self.t;
        let repl: Vec<pgsql::ReplicaStat> = t
            .postgres
            .as_ref()
            .and_then(|pg| {
                let pw = state::secret_value(t, "postgres-superuser-password").ok()?;
                pg.members.iter().find_map(|m| {
                    let mut c = pgsql::connect(
                        &m.host,
                        m.port,
                        &pg.superuser,
                        &pw,
                        "postgres",
                        Duration::from_secs(1),
                    )
                    .ok()?;
                    if pgsql::in_recovery(&mut c).ok()? {
                        None
                    } else {
                        pgsql::replication(&mut c).ok()
                    }
                })
            })
            .unwrap_or_default();
        bundle
            .ordered()
            .into_iter()
            .map(|(name, c)| {
                let rec = process::read_record(&t.paths.run, name);
                let alive = rec.as_ref().is_some_and(process::alive);
                let state = match (&rec, alive) {
                    (None, _) => "stopped",
                    (Some(_), true) => "running",
                    (Some(_), false) => "crashed",
                };
                let (healthy, health_s) = if alive {
                    match health(t, name, c.kind) {
                        Ok(d) => (true, d),
                        Err(e) => (false, e),
                    }
                } else {
                    (false, state.to_string())
                };
                let role = (c.kind == Kind::Postgres && healthy).then(|| health_s.clone());
                ComponentStatus {
                    name: name.clone(),
                    kind: c.kind,
                    state: state.into(),
                    healthy,
                    health: health_s,
                    role,
                    pid: rec.as_ref().filter(|_| alive).map(|r| r.pid),
                    ports: ports_of(t, name, c.kind),
                    restarts: rec.as_ref().map(|r| r.restarts).unwrap_or(0),
                    replication: repl.iter().find(|r| &r.application_name == name).cloned(),
                }
            })
            .collect()
    }

    /// Stops everything of the environment (and anything else carrying its marker); deletes the
    /// state unless `keep_data`.
    pub fn destroy(
        &mut self,
        bundle: Option<&Bundle>,
        keep_data: bool,
    ) -> Result<Vec<u32>, RuntimeError> {
        let t = self.t;
        if let Some(b) = bundle {
            let mut order = b.ordered();
            order.reverse();
            for (name, c) in order {
                let s = Instant::now();
                self.stop(name, c.kind);
                self.ev(name, "stop", "ok", s.elapsed(), "");
            }
        }
        // Components an unfinished apply started (no applied bundle names them).
        for r in process::all_records(&t.paths.run) {
            if r.component != crate::agent::AGENT {
                self.stop(&r.component, r.kind.unwrap_or(Kind::Backend));
            }
        }
        // Whatever is left with our marker (orphans of an earlier crash, hot-restart leftovers).
        for pid in process::processes_of(&t.paths.root) {
            process::stop_group(pid, Duration::from_secs(5));
        }
        let left = process::processes_of(&t.paths.root);
        if keep_data {
            for d in [&t.paths.run, &t.paths.config] {
                let _ = std::fs::remove_dir_all(d);
            }
            let _ = std::fs::remove_file(state::applied_path(t));
        } else {
            let _ = std::fs::remove_dir_all(&t.paths.root);
        }
        Ok(left)
    }
}
