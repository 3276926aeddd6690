//! The local runtime: every component a supervised process on 127.0.0.1, data and logs under the
//! environment's state directory (`config/`, `data/`, `logs/`, `run/`, `secrets/`).
//!
//! It implements the engine's primitives only: files into `config/<component>/`, processes
//! started detached in their own process group and recorded in `run/<component>.json`, stops by
//! process group (PostgreSQL with a fast shutdown first), tasks run as the component's user
//! (initdb, pg_basebackup, pg_rewind, migrations, `haproxy -c`), HAProxy's runtime API over its
//! unix socket. When bssctl is root every component runs as its kind's own user (`users`), with
//! its configs, secrets and data handed to that user alone. What to do and when is the engine's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::owned_root;
use super::process::{self, Record, Spawn};
use super::users::{self, User};
use crate::engine::health::ports_of;
use crate::engine::runtime::{
    Capabilities, DiskSpace, Endpoint, Observed, Runtime, RuntimeError, Signal, StartOpts,
    StopMode, Task,
};
use crate::probe;
use crate::render::{Bundle, ComponentBundle, Kind};
use crate::state;
use crate::tools;
use crate::topology::model::{PgMember, ValidatedTopology};

/// The local runtime for one environment (roles as `t` has them).
pub struct Local {
    pub t: ValidatedTopology,
}

impl Local {
    pub fn new(t: &ValidatedTopology) -> Local {
        Local { t: t.clone() }
    }
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

pub fn log_path(t: &ValidatedTopology, name: &str) -> PathBuf {
    Path::new(&t.paths.logs).join(format!("{name}.log"))
}

pub fn tail_log(t: &ValidatedTopology, name: &str, n: usize) -> String {
    let text = std::fs::read_to_string(log_path(t, name)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Postmaster pid of a data directory (first line of postmaster.pid) when it runs.
fn postmaster_of(data_dir: &str) -> Option<u32> {
    let text = std::fs::read_to_string(Path::new(data_dir).join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    (process::pid_alive(pid) && process::cmdline(pid).contains(data_dir)).then_some(pid)
}

/// Removes the lock file of a postmaster that was killed but not reaped yet. Components are
/// reparented to init, and some inits reap lazily (seen here: a killed process stayed a zombie
/// for about 6 s); PostgreSQL probes the pid of `postmaster.pid` with kill(0), which succeeds
/// on a zombie, so a rewind or start right after a fence would refuse with "lock file already
/// exists". A zombie holds no memory and no shared-memory attachment, so the lock is stale.
fn clear_zombie_lock(data_dir: &str) {
    let path = Path::new(data_dir).join("postmaster.pid");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
    else {
        return;
    };
    if process::zombie(pid) {
        tracing::debug!(
            pid,
            data_dir,
            "removing the lock file of an unreaped postmaster"
        );
        let _ = std::fs::remove_file(&path);
    }
}

/// Space of the filesystem holding `dir` (statvfs; a link such as a moved `pg_wal` is followed).
fn disk_space_of(dir: &Path) -> std::io::Result<DiskSpace> {
    let v = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(DiskSpace {
        path: dir.display().to_string(),
        available_bytes: v.f_bavail.saturating_mul(v.f_frsize),
        total_bytes: v.f_blocks.saturating_mul(v.f_frsize),
    })
}

fn run_tool(
    root: &str,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    user: Option<&User>,
) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let mut bin = tools::find(program).map_err(|e| e.to_string())?;
    if let Some(u) = user {
        bin = users::reachable_program(&bin, u).map_err(|e| e.to_string())?;
    }
    let mut c = std::process::Command::new(bin);
    c.args(args)
        .stdin(std::process::Stdio::null())
        .env(process::ENV_MARKER, root)
        .env(process::TASK_MARKER, "1")
        .process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    if let Some(u) = user {
        c.uid(u.uid).gid(u.gid);
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

/// lchown, never through a symbolic link (see `owned_root::chown_tree`).
fn chown_tree(p: &Path, ids: Option<(u32, u32)>) -> std::io::Result<()> {
    owned_root::chown_tree(p, ids)
}

/// chmod unless `p` is a symbolic link (see `owned_root::set_mode`).
fn set_mode(p: &Path, mode: u32) {
    let _ = owned_root::set_mode(p, mode);
}

/// Removes the "other" permission bits of every file and directory under `dir` (links are left
/// alone): state written by an older bssctl, or by a tool with a wider umask.
fn tighten(dir: &Path, recurse: bool) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.file_type().is_symlink() {
            continue;
        }
        let mode = m.permissions().mode() & 0o7777;
        // Directories keep o+x (traversal for the components' users), never o+r/o+w.
        let keep = if m.is_dir() { 0o7771 } else { 0o7770 };
        if mode & !keep != 0 {
            set_mode(&p, mode & keep & !0o020);
        }
        if recurse && m.is_dir() {
            tighten(&p, true);
        }
    }
}

/// (uid, gid, mode) of every regular file directly in `dir` (links are skipped).
fn owners_of(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let m = std::fs::symlink_metadata(e.path()).ok()?;
            m.is_file()
                .then(|| (e.path(), (m.uid(), m.gid(), m.mode() & 0o7777)))
        })
        .collect()
}

/// Creates (or opens) a file bssctl appends to, 0640 at most and never through a link.
fn precreate(p: &Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(state::o_nofollow())
        .open(p)
        .map(|_| ())
        .map_err(|e| {
            RuntimeError::Prepare(format!(
                "failed to open {} (a symbolic link is refused): {e}",
                p.display()
            ))
        })
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

/// The files under `secrets_dir` a component's rendered files or launch name, by whole path
/// (`agent-token` is not `agent-token.prometheus`).
fn referenced_secrets(secrets_dir: &str, c: &ComponentBundle) -> Vec<PathBuf> {
    let prefix = format!("{}/", secrets_dir.trim_end_matches('/'));
    let texts = c
        .files
        .values()
        .map(String::as_str)
        .chain(c.launch.args.iter().map(String::as_str))
        .chain(c.launch.env.values().map(String::as_str));
    let mut out = Vec::new();
    for text in texts {
        let mut rest = text;
        while let Some(i) = rest.find(&prefix) {
            let tail = &rest[i + prefix.len()..];
            let len = tail
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')))
                .unwrap_or(tail.len());
            let file = tail[..len].trim_end_matches('.');
            if !file.is_empty() {
                out.push(Path::new(&prefix).join(file));
            }
            rest = &tail[len..];
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Local {
    /// The user PostgreSQL runs as (see `user_of`).
    fn pg_user(&self) -> Result<Option<(u32, u32)>, RuntimeError> {
        self.user_of(Kind::Postgres)
    }

    /// The unprivileged user a component kind runs as when bssctl is root, created when missing
    /// (`users::ensure`); None when bssctl is not root: components then run as the invoking user.
    fn user(&self, kind: Kind) -> Result<Option<User>, RuntimeError> {
        users::ensure(kind).map_err(|e| RuntimeError::Prepare(e.to_string()))
    }

    fn user_of(&self, kind: Kind) -> Result<Option<(u32, u32)>, RuntimeError> {
        Ok(self.user(kind)?.map(|u| u.ids()))
    }

    /// Directories a component writes (its data, sockets, pid files): owned by its user, 0700
    /// (0750 where bssctl's group reads too). Everything else under the root stays root's.
    fn owned_dirs(&self, kind: Kind) -> Vec<(PathBuf, u32)> {
        let t = &self.t;
        let mut v = Vec::new();
        match kind {
            Kind::Redis => {
                if let Some(r) = &t.redis {
                    v.push((PathBuf::from(&r.data_dir), 0o700));
                }
            }
            Kind::KafkaStore => {
                if let Some(st) = t.kafka.as_ref().and_then(|k| k.store.as_ref()) {
                    v.push((PathBuf::from(&st.data_dir), 0o700));
                }
            }
            Kind::Haproxy => {
                if let Some(h) = &t.haproxy {
                    for f in [&h.admin_socket, &h.pid_file] {
                        if let Some(d) = Path::new(f).parent() {
                            v.push((d.to_path_buf(), 0o750));
                        }
                    }
                }
            }
            Kind::Envoy => {
                // Envoy creates its admin socket there (root, bssctl, connects through it).
                if let Some(d) = t
                    .envoy
                    .as_ref()
                    .and_then(|e| Path::new(&e.admin_socket).parent())
                {
                    v.push((d.to_path_buf(), 0o700));
                }
            }
            Kind::Prometheus => {
                if let Some(p) = &t.prometheus {
                    v.push((PathBuf::from(&p.data_dir), 0o700));
                }
            }
            Kind::Alertmanager => {
                if let Some(a) = &t.alertmanager {
                    v.push((PathBuf::from(&a.data_dir), 0o700));
                }
            }
            // PostgreSQL's data and socket directories are handed over by its tasks and start.
            _ => {}
        }
        v.sort();
        v.dedup();
        v
    }

    /// A first start of Envoy (epoch 0) creates its hot-restart shared memory exclusively; one
    /// left by an Envoy of another uid (an older bssctl ran it as root) would make it fail with
    /// EACCES. Only epoch 0 gets here, so no Envoy of this environment is using it.
    fn clear_foreign_envoy_shm(&self, env: &str) -> Result<(), RuntimeError> {
        use std::os::unix::fs::MetadataExt;
        let Some(u) = self.user(Kind::Envoy)? else {
            return Ok(());
        };
        let base = crate::render::envoy_base_id(env);
        for id in [base, base.saturating_mul(10)] {
            let p = PathBuf::from(format!("/dev/shm/envoy_shared_memory_{id}"));
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.uid() != u.uid) {
                tracing::debug!(path = %p.display(), "removing Envoy shared memory of another user");
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(())
    }

    /// Hands a component its own directories and the secret files it reads (root:<its group>
    /// 0640; nobody else's). Preflight refuses a secret named by components of two users.
    fn ensure_ownership(&self, name: &str, c: &ComponentBundle) -> Result<(), RuntimeError> {
        let Some(u) = self.user(c.kind)? else {
            return Ok(());
        };
        let step = |e: String| RuntimeError::step(name, "hand files to its user", e);
        for (d, mode) in self.owned_dirs(c.kind) {
            std::fs::create_dir_all(&d).map_err(|e| step(format!("{}: {e}", d.display())))?;
            chown_tree(&d, Some(u.ids())).map_err(|e| step(format!("{}: {e}", d.display())))?;
            set_mode(&d, mode);
        }
        if c.kind == Kind::Postgres {
            // Its passfile is its own (libpq ignores a group-readable one); see ensure_state.
            return Ok(());
        }
        for f in referenced_secrets(&self.t.paths.secrets, c) {
            // Links are refused by ensure_state; a file not written yet is handed over next start.
            if !std::fs::symlink_metadata(&f).is_ok_and(|m| m.is_file()) {
                continue;
            }
            std::os::unix::fs::lchown(&f, Some(0), Some(u.gid))
                .map_err(|e| step(format!("{}: {e}", f.display())))?;
            owned_root::set_mode(&f, 0o640).map_err(|e| step(e.to_string()))?;
        }
        Ok(())
    }

    fn member(&self, name: &str) -> Result<PgMember, RuntimeError> {
        self.t
            .postgres
            .as_ref()
            .and_then(|p| p.member(name))
            .cloned()
            .ok_or_else(|| RuntimeError::step(name, "find", "not a PostgreSQL member"))
    }

    /// Everything that must hold before anything starts: tools present, ports free.
    fn check_preflight(&self, bundle: &Bundle) -> Result<(), RuntimeError> {
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
            for port in ports_of(&self.t, name, c.kind) {
                if !process::port_free(port) {
                    let who =
                        process::port_holder(port).unwrap_or_else(|| "unknown process".into());
                    problems.push(format!("port {port} of {name} is in use by {who}"));
                }
            }
        }
        // Each kind's user (created here when bssctl is root and it is missing) must reach the
        // state root and bind its ports; a secret file is readable by one user only.
        let unprivileged_from =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(1024);
        let mut readers: BTreeMap<PathBuf, BTreeMap<String, String>> = BTreeMap::new();
        let mut checked = std::collections::BTreeSet::new();
        for (name, c) in &bundle.components {
            let u = match users::ensure(c.kind) {
                Ok(Some(u)) => u,
                Ok(None) => continue,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            };
            if checked.insert(u.name.clone()) {
                if let Some(dir) =
                    users::unreachable_ancestor(Path::new(&self.t.paths.root), u.uid, u.gid)
                {
                    problems.push(format!(
                        "{name} runs as user `{}` and cannot enter {}: allow it (`chmod o+x {}`) or choose a stateDir it can reach",
                        u.name,
                        dir.display(),
                        dir.display()
                    ));
                }
            }
            for port in ports_of(&self.t, name, c.kind) {
                if u32::from(port) < unprivileged_from {
                    problems.push(format!(
                        "port {port} of {name} is below {unprivileged_from} (privileged) and {name} runs as user `{}`: choose a port of {unprivileged_from} or above",
                        u.name
                    ));
                }
            }
            if c.kind != Kind::Postgres {
                for f in referenced_secrets(&self.t.paths.secrets, c) {
                    readers
                        .entry(f)
                        .or_default()
                        .insert(u.name.clone(), name.clone());
                }
            }
        }
        for (f, by) in readers.into_iter().filter(|(_, by)| by.len() > 1) {
            problems.push(format!(
                "secret file {} is read by components of different users ({}): each secret has one reader",
                f.display(),
                by.iter()
                    .map(|(u, c)| format!("{c} as {u}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Preflight(problems))
        }
    }

    /// Directories, secrets (0600) and the files derived from them (pgpass, redis auth include).
    fn ensure_state(&mut self) -> Result<Vec<String>, RuntimeError> {
        let t = &self.t;
        let mut notes = Vec::new();
        // Tasks of an apply that was killed half-way (a base backup still writing, ...).
        for pid in process::tasks_of(&t.paths.root) {
            notes.push(format!(
                "ended leftover task pid {pid}: {}",
                process::cmdline(pid)
            ));
            process::stop_group(pid, Duration::from_secs(5));
        }
        // Files and directories bssctl creates from here on: 0640 / 0750 at most.
        let _ = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o027));
        // The root must be ours provably (marker, owner, mode) and not a dangerous place.
        owned_root::ensure_owned(Path::new(&t.paths.root))
            .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        // Trees only bssctl writes: a symbolic link planted there is refused, never followed.
        for d in [
            &t.paths.config,
            &t.paths.run,
            &t.paths.logs,
            &t.paths.secrets,
        ] {
            owned_root::refuse_links(Path::new(d))
                .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        }
        for d in [&t.paths.data] {
            if std::fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(RuntimeError::Prepare(format!(
                    "failed to use {d}: it is a symbolic link; bssctl never writes through links"
                )));
            }
        }
        // Components' users traverse the tree down to their own directories (no listing);
        // the logs are opened by bssctl itself and stay private.
        for (d, mode) in [
            (&t.paths.config, owned_root::DIR_MODE),
            (&t.paths.data, owned_root::DIR_MODE),
            (&t.paths.run, owned_root::DIR_MODE),
            (&t.paths.logs, 0o700),
        ] {
            std::fs::create_dir_all(d)
                .map_err(|e| RuntimeError::Prepare(format!("failed to create {d}: {e}")))?;
            set_mode(Path::new(d), mode);
        }
        set_mode(Path::new(&t.paths.root), owned_root::DIR_MODE);
        let root = Path::new(&t.paths.root);
        precreate(&root.join("journal.jsonl"))?;
        tighten(root, false);
        for d in [&t.paths.config, &t.paths.logs, &t.paths.run] {
            tighten(Path::new(d), true);
        }
        // A rewritten secret is a new root-owned file: it keeps the owner, group and mode its
        // reader was given (put_config / start hand new ones over).
        let handed_over = owners_of(Path::new(&t.paths.secrets));
        state::ensure_secrets(t).map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        if let Some(pg) = &t.postgres {
            let pw = state::secret_value(t, "postgres-replication-password")
                .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
            let line = format!(
                "*:*:*:{}:{}\n",
                pg.replication_user,
                pw.replace('\\', "\\\\").replace(':', "\\:")
            );
            state::write_atomic(Path::new(&pg.passfile), line.as_bytes(), 0o600)
                .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
            let _ = chown_tree(Path::new(&pg.passfile), self.pg_user()?);
        }
        // Redis' ACL include, redis_exporter's password map, the basic-auth web configs.
        // (`redis-auth.conf` of older versions held the single password in plain text.)
        let _ = std::fs::remove_file(Path::new(&t.paths.secrets).join("redis-auth.conf"));
        let derived = crate::derived::files_reusing(t, &|n| state::secret_value(t, n).ok(), &|p| {
            std::fs::read_to_string(p).ok()
        })
        .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        for f in derived {
            if std::fs::read_to_string(&f.path).ok().as_deref() != Some(f.content.as_str()) {
                state::write_atomic(Path::new(&f.path), f.content.as_bytes(), 0o600)
                    .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
            }
        }
        if let Some(r) = &t.redis {
            std::fs::create_dir_all(&r.data_dir)
                .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        }
        if let Some(d) = t
            .envoy
            .as_ref()
            .and_then(|e| Path::new(&e.admin_socket).parent())
        {
            std::fs::create_dir_all(d).map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        }
        if let Some(h) = &t.haproxy {
            if let Some(d) = Path::new(&h.admin_socket).parent() {
                std::fs::create_dir_all(d).map_err(|e| RuntimeError::Prepare(e.to_string()))?;
            }
        }
        // The agent's API token, and the copies its scrapers / webhook senders read.
        let secrets = Path::new(&t.paths.secrets);
        let token = crate::engine::agent::ensure_token(secrets)
            .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        for consumer in ["prometheus", "alertmanager"] {
            let p = secrets.join(format!("{}.{consumer}", crate::engine::agent::TOKEN_FILE));
            state::write_atomic(&p, token.as_bytes(), 0o600)
                .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        }
        // Secrets: the directory is traversable (components read their own files), not
        // listable; every file is root's 0600 unless handed to its one reader (ensure_ownership).
        set_mode(secrets, 0o711);
        let now = owners_of(secrets);
        for (p, was) in handed_over {
            if now.get(&p).is_some_and(|n| *n != was) {
                let (uid, gid, mode) = was;
                let _ = std::os::unix::fs::lchown(&p, Some(uid), Some(gid));
                set_mode(&p, mode);
            }
        }
        tighten(secrets, false);
        Ok(notes)
    }

    fn start_process(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        opts: StartOpts,
    ) -> Result<Record, RuntimeError> {
        let t = &self.t;
        let program =
            tools::find(&c.launch.program).map_err(|e| RuntimeError::step(name, "start", e))?;
        // As its own user when bssctl is root, from a place that user can reach.
        let user = self.user(c.kind)?;
        let program = match &user {
            Some(u) => users::reachable_program(&program, u)
                .map_err(|e| RuntimeError::step(name, "start", e))?,
            None => program,
        };
        let user = user.map(|u| u.ids());
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
            let v =
                state::secret_value(t, secret).map_err(|e| RuntimeError::step(name, "start", e))?;
            env.push((var.clone(), v));
        }
        let mut args = c.launch.args.clone();
        if c.kind == Kind::Envoy {
            args.push("--restart-epoch".into());
            args.push(opts.epoch.to_string());
        }
        let log = log_path(t, name);
        // 0640 and never through a link (the spawner appends to whatever is there).
        precreate(&log)?;
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
        .map_err(|e| RuntimeError::step(name, "start", e))?;
        let pid = child.pid;
        let rec = Record {
            component: name.into(),
            pid,
            start_ticks: process::start_ticks(pid).unwrap_or(0),
            hash: c.hash(),
            epoch: opts.epoch,
            started_at: process::now_secs(),
            restarts: opts.restarts,
            pgid: child.pgid,
            kind: Some(c.kind),
        };
        process::write_record(&t.paths.run, &rec)
            .map_err(|e| RuntimeError::step(name, "record", e))?;
        Ok(rec)
    }

    /// Sends a running component its stop signal without waiting: PostgreSQL SIGINT (fast
    /// shutdown), everything else SIGTERM to its group and its leader.
    fn request_stop(&self, name: &str, kind: Kind) {
        let Some(r) = process::read_record(&self.t.paths.run, name).filter(process::alive) else {
            return;
        };
        if kind == Kind::Postgres {
            process::signal(r.pid, "INT");
        } else {
            if r.pgid > 1 {
                process::signal_group(r.pgid, "TERM");
            }
            process::signal(r.pid, "TERM");
        }
        if kind == Kind::Envoy {
            // A previous epoch still draining after a hot restart stops with it.
            for pid in self.envoy_epochs() {
                process::signal(pid, "TERM");
            }
        }
    }

    /// Every Envoy process of the environment (each epoch of a hot restart).
    fn envoy_epochs(&self) -> Vec<u32> {
        let t = &self.t;
        let conf = format!("{}/envoy/envoy.yaml", t.paths.config);
        process::processes_of(&t.paths.root)
            .into_iter()
            .filter(|pid| process::cmdline(*pid).contains(&conf))
            .collect()
    }

    fn stop_local(&mut self, name: &str, kind: Kind, mode: StopMode) {
        let t = &self.t;
        if let Some(r) = process::read_record(&t.paths.run, name) {
            if process::alive(&r) {
                match (kind, mode) {
                    (_, StopMode::Kill) => {
                        if r.pgid > 1 {
                            process::signal_group(r.pgid, "KILL");
                        }
                        process::signal(r.pid, "KILL");
                    }
                    (Kind::Postgres, _) => {
                        // SIGINT = fast shutdown: disconnect clients, checkpoint, exit;
                        // SIGTERM = smart shutdown: wait for the clients.
                        let sig = if mode == StopMode::Fast {
                            "INT"
                        } else {
                            "TERM"
                        };
                        process::signal(r.pid, sig);
                        let start = Instant::now();
                        let mut pace = crate::engine::health::Pace::default();
                        while process::alive(&r) && start.elapsed() < Duration::from_secs(20) {
                            pace.sleep();
                        }
                    }
                    _ => {}
                }
                process::stop_group(r.pid, stop_grace(kind, mode));
            } else if r.pgid > 1 && !process::group_members(r.pgid).is_empty() {
                // A crashed leader can leave children behind (PostgreSQL backends, HAProxy
                // workers) that hold its ports or data directory.
                process::signal_group(r.pgid, "KILL");
                let start = Instant::now();
                let mut pace = crate::engine::health::Pace::default();
                while !process::group_members(r.pgid).is_empty()
                    && start.elapsed() < Duration::from_secs(2)
                {
                    pace.sleep();
                }
            }
            process::remove_record(&t.paths.run, name);
        }
        if kind == Kind::Postgres {
            // A postmaster that someone else started on the member's data directory.
            if let Some(m) = t.postgres.as_ref().and_then(|p| p.member(name)) {
                if let Some(pid) = postmaster_of(&m.data_dir) {
                    if mode == StopMode::Kill {
                        if let Some(g) = process::pgid(pid) {
                            process::signal_group(g, "KILL");
                        }
                        process::signal(pid, "KILL");
                    }
                    process::stop_group(pid, Duration::from_secs(10));
                }
            }
        }
        if kind == Kind::Envoy {
            // A hot restart leaves the previous epoch draining; make sure none survives.
            for pid in self.envoy_epochs() {
                process::stop_group(pid, Duration::from_secs(5));
            }
        }
    }

    fn pg_task(&self, name: &str, task: &Task) -> Result<String, RuntimeError> {
        let t = self.t.clone();
        let m = self.member(name)?;
        let pg_user = self.user(Kind::Postgres)?;
        let user = pg_user.as_ref().map(User::ids);
        let tool_user = pg_user.as_ref();
        let root = t.paths.root.as_str();
        let data = PathBuf::from(&m.data_dir);
        let err = |step: &str, e: String| RuntimeError::step(name, step, e);
        let io = |step: &str, e: std::io::Error| RuntimeError::step(name, step, e);
        // Build into a temporary directory and rename: a kill half-way leaves no cluster that
        // looks complete.
        let scratch = |step: &str| -> Result<PathBuf, RuntimeError> {
            std::fs::create_dir_all(&m.socket_dir).map_err(|e| io(step, e))?;
            let _ = chown_tree(Path::new(&m.socket_dir), user);
            let tmp = PathBuf::from(format!("{}.tmp", m.data_dir));
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = std::fs::remove_dir_all(&data);
            // Created by us and handed to PostgreSQL's user: it cannot create entries in data/.
            std::fs::create_dir_all(&tmp).map_err(|e| io(step, e))?;
            set_mode(&tmp, 0o700);
            let _ = chown_tree(&tmp, user);
            Ok(tmp)
        };
        let finish = |tmp: &Path, step: &str| -> Result<String, RuntimeError> {
            std::fs::rename(tmp, &data).map_err(|e| io(step, e))?;
            let _ = chown_tree(&data, user);
            Ok(String::new())
        };
        clear_zombie_lock(&m.data_dir);
        match task {
            Task::PgDataState => Ok(if data.join("PG_VERSION").exists() {
                "initialized".into()
            } else {
                "empty".into()
            }),
            Task::PgInitDb {
                superuser,
                password,
            } => {
                let tmp = scratch("initdb")?;
                let pwfile = Path::new(&t.paths.run).join(format!("{name}.initdb-pw"));
                state::write_atomic(&pwfile, password.0.as_bytes(), 0o600)
                    .map_err(|e| err("initdb", e.to_string()))?;
                let _ = chown_tree(&pwfile, user);
                let tmp_s = tmp.display().to_string();
                let r = run_tool(
                    root,
                    "initdb",
                    &[
                        "-D",
                        &tmp_s,
                        "-U",
                        superuser,
                        "-A",
                        "scram-sha-256",
                        "-E",
                        "UTF8",
                        "--pwfile",
                        &pwfile.display().to_string(),
                        "--no-instructions",
                    ],
                    &[],
                    tool_user,
                );
                let _ = std::fs::remove_file(&pwfile);
                r.map_err(|e| err("initdb", e))?;
                // initdb's own fsync of each file, not `--no-sync` plus one syncfs: a syncfs
                // also writes back every dirty block of the filesystem, and right after a
                // `check` or a `destroy` (thousands of files made and deleted) that took longer
                // than the per-file syncs (2026-12-03: initdb slower in 5 of 5 bench-compare
                // runs, 4 of 4 by hand after a `check`). The cluster is renamed into place only
                // once initdb has made it durable.
                finish(&tmp, "initdb")
            }
            Task::PgBaseBackup {
                host,
                port,
                user: repl_user,
                slot,
            } => {
                let pg = t
                    .postgres
                    .as_ref()
                    .ok_or_else(|| err("basebackup", "no postgres".into()))?;
                let tmp = scratch("basebackup")?;
                let tmp_s = tmp.display().to_string();
                let port = port.to_string();
                let mut args = vec![
                    "-h",
                    host.as_str(),
                    "-p",
                    port.as_str(),
                    "-U",
                    repl_user.as_str(),
                    "-D",
                    tmp_s.as_str(),
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                    "--no-password",
                ];
                if let Some(s) = slot {
                    args.extend(["-S", s.as_str()]);
                }
                run_tool(
                    root,
                    "pg_basebackup",
                    &args,
                    &[
                        ("PGPASSFILE", pg.passfile.as_str()),
                        ("PGCONNECT_TIMEOUT", "5"),
                    ],
                    tool_user,
                )
                .map_err(|e| err("basebackup", e))?;
                // pg_basebackup's own fsync of each file, for the reason given at initdb; the
                // copy is renamed into place only once it is durable.
                finish(&tmp, "basebackup")
            }
            Task::PgStandbySignal(on) => {
                let standby = data.join("standby.signal");
                if *on {
                    std::fs::write(&standby, "").map_err(|e| io("standby", e))?;
                    let _ = chown_tree(&standby, user);
                } else if standby.exists() {
                    std::fs::remove_file(&standby).map_err(|e| io("standby", e))?;
                }
                Ok(String::new())
            }
            Task::PgControlData => run_tool(
                root,
                "pg_controldata",
                &["-D", &m.data_dir],
                &[("LC_ALL", "C")],
                tool_user,
            )
            .map_err(|e| err("controldata", e)),
            Task::PgSingleUserRecovery => {
                let cfg = format!("config_file={}/{}/postgresql.conf", t.paths.config, m.name);
                run_tool(
                    root,
                    "postgres",
                    &["--single", "-F", "-D", &m.data_dir, "-c", &cfg, "template1"],
                    &[],
                    tool_user,
                )
                .map_err(|e| err("recover", e))
            }
            Task::PgRewind {
                host,
                port,
                user: su,
                password,
            } => {
                let src = format!(
                    "host={host} port={port} user={su} dbname=postgres connect_timeout=5 sslmode=disable"
                );
                let target = format!("--target-pgdata={}", m.data_dir);
                let source = format!("--source-server={src}");
                run_tool(
                    root,
                    "pg_rewind",
                    &[target.as_str(), source.as_str()],
                    &[("PGPASSWORD", password.0.as_str())],
                    tool_user,
                )
                .map_err(|e| err("rewind", e))
            }
            Task::PgDiscardData => match std::fs::remove_dir_all(&data) {
                Ok(()) => Ok(String::new()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(io("discard", e)),
            },
            other => Err(err("exec", format!("{other:?} is not a PostgreSQL task"))),
        }
    }
}

impl Local {
    /// A task in a component's context (`Runtime::exec`); shared, so `exec_each` can run
    /// several at once.
    fn run_task(&self, name: &str, task: &Task) -> Result<String, RuntimeError> {
        let t = &self.t;
        match task {
            Task::Migrate => {
                let cfg = format!("{}/{name}/backend.yaml", t.paths.config);
                let u = self.user(Kind::Backend)?;
                run_tool(
                    &t.paths.root,
                    "bss-backend",
                    &["migrate", "--config", &cfg],
                    &[],
                    u.as_ref(),
                )
                .map_err(|e| RuntimeError::step(name, "migrate", e))
            }
            Task::HaproxyCheck => {
                let cfg = format!("{}/{name}/haproxy.cfg", t.paths.config);
                let pw = state::secret_value(t, "haproxy-stats-password").unwrap_or_default();
                run_tool(
                    &t.paths.root,
                    "haproxy",
                    &["-c", "-q", "-f", &cfg],
                    &[("HAPROXY_STATS_PASSWORD", pw.as_str())],
                    self.user(Kind::Haproxy)?.as_ref(),
                )
                .map_err(|e| RuntimeError::step(name, "check config", e))
            }
            Task::HaproxyAdmin(cmd) => {
                let h = t
                    .haproxy
                    .as_ref()
                    .ok_or_else(|| RuntimeError::step(name, "admin", "no haproxy"))?;
                probe::haproxy_cmd(&h.admin_socket, cmd, Duration::from_secs(2))
                    .map_err(|e| RuntimeError::step(name, "admin", e))
            }
            Task::EnvoyAdmin(path) => {
                let e = t
                    .envoy
                    .as_ref()
                    .ok_or_else(|| RuntimeError::step(name, "admin", "no envoy"))?;
                match probe::http_get_unix(&e.admin_socket, path, Duration::from_secs(2)) {
                    Ok((c, body)) if (200..300).contains(&c) => Ok(body),
                    Ok((c, body)) => Err(RuntimeError::step(
                        name,
                        "admin",
                        format!("{path} answered {c} {}", body.trim()),
                    )),
                    Err(e) => Err(RuntimeError::step(name, "admin", e)),
                }
            }
            Task::Tool { program, args } => {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_tool(&t.paths.root, program, &args, &[], None)
                    .map_err(|e| RuntimeError::step(name, program, e))
            }
            pg => self.pg_task(name, pg),
        }
    }
}

impl Runtime for Local {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "local",
            envoy_hot_restart: true,
            live_files: true,
            members_follow_roles: false,
            concurrent_tasks: true,
        }
    }

    fn preflight(&self, desired: &Bundle) -> Result<(), RuntimeError> {
        self.check_preflight(desired)
    }

    fn prepare(&mut self) -> Result<Vec<String>, RuntimeError> {
        self.ensure_state()
    }

    fn put_config(&mut self, name: &str, c: &ComponentBundle) -> Result<(), RuntimeError> {
        let dir = Path::new(&self.t.paths.config).join(name);
        for (rel, content) in &c.files {
            state::write_atomic(&dir.join(rel), content.as_bytes(), 0o640)
                .map_err(|e| RuntimeError::step(name, "write files", e))?;
        }
        // Readable by the component's own user through its group (root:<group> 0640 / 0750),
        // by nobody else.
        if let Some((_, gid)) = self.user_of(c.kind)? {
            let mut paths = vec![dir.clone()];
            paths.extend(c.files.keys().map(|rel| dir.join(rel)));
            paths.extend(
                c.files
                    .keys()
                    .filter_map(|rel| dir.join(rel).parent().map(Path::to_path_buf)),
            );
            for p in paths {
                // A component without files (node-exporter, kafka-store) has no directory.
                if std::fs::symlink_metadata(&p).is_err() {
                    continue;
                }
                std::os::unix::fs::lchown(&p, None, Some(gid))
                    .map_err(|e| RuntimeError::step(name, "write files", e))?;
            }
        }
        self.ensure_ownership(name, c)
    }

    fn start(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        opts: StartOpts,
    ) -> Result<Observed, RuntimeError> {
        if c.kind == Kind::Postgres {
            // Its socket directory and the logs must be reachable by PostgreSQL's user.
            let m = self.member(name)?;
            std::fs::create_dir_all(&m.socket_dir)
                .map_err(|e| RuntimeError::step(name, "start", e))?;
            let _ = chown_tree(Path::new(&m.socket_dir), self.pg_user()?);
            clear_zombie_lock(&m.data_dir);
        }
        // Its directories and secrets (again: a secret rewritten since put_config is root's).
        self.ensure_ownership(name, c)?;
        if c.kind == Kind::Envoy && opts.epoch == 0 {
            self.clear_foreign_envoy_shm(&self.t.name)?;
        }
        let r = self.start_process(name, c, opts)?;
        Ok(observed(&r, true))
    }

    fn stop(&mut self, name: &str, kind: Kind, mode: StopMode) -> Result<(), RuntimeError> {
        self.stop_local(name, kind, mode);
        match process::read_record(&self.t.paths.run, name) {
            Some(r) if process::alive(&r) => Err(RuntimeError::step(
                name,
                "stop",
                format!("pid {} still runs", r.pid),
            )),
            _ => Ok(()),
        }
    }

    fn signal(&mut self, name: &str, sig: Signal) -> Result<(), RuntimeError> {
        let r = process::read_record(&self.t.paths.run, name)
            .filter(process::alive)
            .ok_or_else(|| RuntimeError::step(name, "signal", "not running"))?;
        if process::signal(r.pid, sig.name()) {
            Ok(())
        } else {
            Err(RuntimeError::step(
                name,
                "signal",
                format!("kill -{} {} failed", sig.name(), r.pid),
            ))
        }
    }

    fn exec(&mut self, name: &str, task: &Task) -> Result<String, RuntimeError> {
        self.run_task(name, task)
    }

    /// One thread per task: each is a process of its own (pg_basebackup, initdb, ...).
    fn exec_each(&mut self, tasks: &[(&str, Task)]) -> Vec<Result<String, RuntimeError>> {
        let me = &*self;
        std::thread::scope(|s| {
            let running: Vec<_> = tasks
                .iter()
                .map(|(name, task)| (*name, s.spawn(move || me.run_task(name, task))))
                .collect();
            running
                .into_iter()
                .map(|(name, h)| {
                    h.join().unwrap_or_else(|_| {
                        Err(RuntimeError::step(
                            name,
                            "run its task",
                            "the task's thread panicked",
                        ))
                    })
                })
                .collect()
        })
    }

    fn observe(&self, name: &str) -> Option<Observed> {
        let r = process::read_record(&self.t.paths.run, name)?;
        let alive = process::alive(&r);
        Some(observed(&r, alive))
    }

    fn instance_alive(&self, o: &Observed) -> bool {
        let Some(pid) = o.pid else { return false };
        let ticks: u64 = o
            .instance
            .rsplit('@')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        process::pid_alive(pid) && (ticks == 0 || process::start_ticks(pid) == Some(ticks))
    }

    fn mark_config(&mut self, name: &str, hash: &str) -> Result<(), RuntimeError> {
        let Some(mut r) = process::read_record(&self.t.paths.run, name) else {
            return Ok(());
        };
        r.hash = hash.to_string();
        process::write_record(&self.t.paths.run, &r)
            .map_err(|e| RuntimeError::step(name, "record", e))
    }

    fn endpoint(&self, name: &str, port: u16) -> Endpoint {
        let _ = name;
        Endpoint {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn logs(&self, name: &str, lines: usize) -> String {
        tail_log(&self.t, name, lines)
    }

    fn disk_space(&self, name: &str) -> Result<Vec<DiskSpace>, RuntimeError> {
        let Ok(m) = self.member(name) else {
            return Ok(Vec::new());
        };
        let data = PathBuf::from(&m.data_dir);
        let mut v = Vec::new();
        for dir in [data.clone(), data.join("pg_wal")] {
            match disk_space_of(&dir) {
                Ok(d) => v.push(d),
                // No pg_wal yet (a member never initialized): its data directory is enough.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != data => {}
                Err(e) => return Err(RuntimeError::step(name, "read its free space", e)),
            }
        }
        Ok(v)
    }

    fn remove(&mut self, name: &str, kind: Kind) -> Result<(), RuntimeError> {
        self.stop(name, kind, StopMode::Fast)?;
        let t = &self.t;
        for d in [
            Path::new(&t.paths.data).join(name),
            Path::new(&t.paths.config).join(name),
        ] {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RuntimeError::step(name, "remove", e)),
            }
        }
        Ok(())
    }

    fn orphans(&self, desired: &Bundle) -> Vec<String> {
        process::all_records(&self.t.paths.run)
            .into_iter()
            .filter(|r| {
                r.component != crate::engine::agent::AGENT
                    && !desired.components.contains_key(&r.component)
            })
            .map(|r| r.component)
            .collect()
    }

    fn teardown(
        &mut self,
        bundle: Option<&Bundle>,
        keep_data: bool,
    ) -> Result<Vec<String>, RuntimeError> {
        let t = self.t.clone();
        let root = Path::new(&t.paths.root);
        match std::fs::symlink_metadata(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            // Nothing is stopped or deleted under a root bssctl cannot prove it owns.
            _ => owned_root::verify_owned(root)
                .map_err(|e| RuntimeError::step("environment", "destroy", e))?,
        }
        if let Some(b) = bundle {
            let mut order = b.ordered();
            order.reverse();
            order.sort_by_key(|(_, c)| std::cmp::Reverse(c.kind.stop_step()));
            // In waves (`Kind::stop_step`): the components of a wave are asked to stop together,
            // so their shutdowns overlap, then each is waited for (and escalated) as before. A
            // wave stops while what it uses is still there (a stream processor commits its
            // offsets to a live broker).
            for wave in order.chunk_by(|a, b| a.1.kind.stop_step() == b.1.kind.stop_step()) {
                for (name, c) in wave {
                    self.request_stop(name, c.kind);
                }
                for (name, c) in wave {
                    self.stop_local(name, c.kind, StopMode::Fast);
                }
            }
        }
        // Components an unfinished apply started (no applied bundle names them).
        for r in process::all_records(&t.paths.run) {
            if r.component != crate::engine::agent::AGENT {
                self.stop_local(
                    &r.component,
                    r.kind.unwrap_or(Kind::Backend),
                    StopMode::Fast,
                );
            }
        }
        // Whatever is left with our marker (orphans of an earlier crash, hot-restart leftovers).
        for pid in process::processes_of(&t.paths.root) {
            process::stop_group(pid, Duration::from_secs(5));
        }
        let left: Vec<String> = process::processes_of(&t.paths.root)
            .into_iter()
            .map(|p| format!("pid {p}: {}", process::cmdline(p)))
            .collect();
        if keep_data {
            for d in [&t.paths.run, &t.paths.config] {
                let _ = std::fs::remove_dir_all(d);
            }
            let _ = std::fs::remove_file(state::applied_path(&t));
        } else {
            let _ = std::fs::remove_dir_all(&t.paths.root);
        }
        Ok(left)
    }
}

/// How long a stopping component gets between TERM and KILL.
///
/// A tansu broker keeps nothing that is not already in its storage (it acknowledges a produce
/// once the batch is written to the store; with `memory` storage every stop loses the log
/// anyway), but after its clients have just disconnected it takes up to ~1.2 s to exit on TERM
/// (measured on this machine; 3–14 ms once they have been gone a second). Its fast stop is
/// therefore bounded, as the stream processors bound their own close.
fn stop_grace(kind: Kind, mode: StopMode) -> Duration {
    match (kind, mode) {
        (Kind::Kafka, StopMode::Fast) => Duration::from_millis(300),
        _ => Duration::from_secs(10),
    }
}

fn observed(r: &Record, running: bool) -> Observed {
    Observed {
        running,
        hash: r.hash.clone(),
        restarts: r.restarts,
        started_at: r.started_at,
        instance: format!("{}@{}", r.pid, r.start_ticks),
        pid: Some(r.pid),
        epoch: r.epoch,
    }
}

/// Processes the environment started, by component (for status and tests).
pub fn records(t: &ValidatedTopology) -> BTreeMap<String, Record> {
    process::all_records(&t.paths.run)
        .into_iter()
        .map(|r| (r.component.clone(), r))
        .collect()
}
