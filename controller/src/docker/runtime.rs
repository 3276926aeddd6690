//! The Docker runtime: the engine's primitives over the Docker engine API. One bridge network per
//! environment, a container `<env>-<component>` per component (labels: environment, component,
//! config hash, bssctl version), rendered files and secret files delivered from the host into
//! read-only mounts, data in named volumes, ports on 127.0.0.1 only. Tasks (initdb, base backup,
//! pg_rewind, migrations, `haproxy -c`) run in a one-off task container with the component's
//! image, mounts and network when the component is stopped, or by exec when it runs. Fencing is
//! out of band: `stop(Kill)` kills the container through the API, which works even when the
//! container is cut off from the network.
//!
//! Owns: the primitives only. What to do and when is the engine's; images are `images`'.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::client::{Client, ContainerSpec};
use super::spec::{self, HostDirs};
use super::{container_name, images, labels, network_name, volume_name};
use crate::engine::health::ports_of;
use crate::engine::runtime::{
    Capabilities, DiskSpace, Endpoint, Observed, Runtime, RuntimeError, Signal, StartOpts,
    StopMode, Task,
};
use crate::render::{Bundle, ComponentBundle, Kind};
use crate::state;
use crate::topology::model::ValidatedTopology;

/// Label with the supervised restart count of a container.
const RESTARTS: &str = "io.bssctl.restarts";

/// The topology as the host sees it: the same components, but the controller's own state
/// (applied bundle, secrets, failover records) under `host_root` instead of the container paths.
/// The state store and secret generation use this view; components keep the container paths.
pub fn host_view(t: &ValidatedTopology, host_root: &Path) -> ValidatedTopology {
    let mut h = t.clone();
    let root = host_root.display().to_string();
    h.paths.root = root.clone();
    h.paths.data = format!("{root}/state");
    h.paths.run = format!("{root}/run");
    h.paths.logs = format!("{root}/logs");
    h.paths.config = format!("{root}/config");
    h.paths.secrets = format!("{root}/secret-values");
    for s in h.secrets.values_mut() {
        s.file = format!("{}/{}", h.paths.secrets, s.name);
    }
    h
}

/// The host directory of an environment on Docker: `<stateDir>/<env>` (stateDir: `--state-dir`,
/// `spec.runtime.stateDir`, else `.bssctl` in the current directory).
pub fn host_root(state_dir: Option<&Path>, env: &str) -> PathBuf {
    state_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".bssctl"))
        .join(env)
}

pub struct Docker {
    pub t: ValidatedTopology,
    /// The topology with host paths (see `host_view`).
    pub host: ValidatedTopology,
    pub dirs: HostDirs,
    client: Option<Client>,
    connect_error: String,
    /// Image per component kind (overrides or the content tags built here).
    images: BTreeMap<Kind, String>,
    /// Bundles delivered by `put_config` (task containers of a component not yet applied).
    pending: BTreeMap<String, ComponentBundle>,
}

fn step(name: &str, what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::step(name, what, e)
}

impl Docker {
    pub fn new(t: &ValidatedTopology, host_root: &Path) -> Docker {
        let host_root = std::path::absolute(host_root).unwrap_or_else(|_| host_root.to_path_buf());
        let (client, connect_error) = match Client::connect() {
            Ok(c) => (Some(c), String::new()),
            Err(e) => (None, e.to_string()),
        };
        Docker {
            t: t.clone(),
            host: host_view(t, &host_root),
            dirs: HostDirs {
                root: host_root.join("docker"),
            },
            client,
            connect_error,
            images: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    fn client(&self, name: &str) -> Result<&Client, RuntimeError> {
        self.client
            .as_ref()
            .ok_or_else(|| step(name, "reach the Docker engine", &self.connect_error))
    }

    fn cname(&self, name: &str) -> String {
        container_name(&self.t.name, name)
    }

    fn kind_of(&self, name: &str) -> Option<Kind> {
        state::read_applied(&self.host)
            .ok()
            .flatten()
            .and_then(|a| a.bundle.components.get(name).map(|c| c.kind))
    }

    fn image(&self, name: &str, kind: Kind) -> Result<String, RuntimeError> {
        if let Some(i) = self.images.get(&kind) {
            return Ok(i.clone());
        }
        if let Some(o) = self.t.images.get(images::override_key(kind)) {
            return Ok(o.clone());
        }
        let planned = planned_images().map_err(|e| step(name, "find its image", e))?;
        planned
            .iter()
            .find(|p| p.name == images::image_of(kind))
            .map(|p| p.tag.clone())
            .ok_or_else(|| step(name, "find its image", "no recipe"))
    }

    fn secret_values(&self) -> BTreeMap<String, String> {
        self.host
            .secrets
            .keys()
            .filter_map(|k| {
                state::secret_value(&self.host, k)
                    .ok()
                    .map(|v| (k.clone(), v))
            })
            .collect()
    }

    fn spec_of(&self, name: &str, c: &ComponentBundle) -> Result<ContainerSpec, RuntimeError> {
        let image = self.image(name, c.kind)?;
        Ok(spec::container_spec(&self.t, name, c, &image, &self.dirs))
    }

    fn hash_file(&self, name: &str) -> PathBuf {
        self.dirs.root.join("run").join(format!("{name}.hash"))
    }

    fn wait_stopped(&self, name: &str, timeout: Duration) -> bool {
        let Ok(c) = self.client(name) else {
            return false;
        };
        let start = Instant::now();
        loop {
            match c.inspect(&self.cname(name)) {
                Ok(Some(o)) if o.running => {}
                _ => return true,
            }
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a shell command for a component: by exec when its container runs, else in a one-off
    /// task container with the component's image, mounts and network. Returns the output; a
    /// non-zero exit is an error carrying it.
    fn run(
        &mut self,
        name: &str,
        kind: Kind,
        what: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        let cname = self.cname(name);
        let client = self.client(name)?;
        let running = client
            .inspect(&cname)
            .map_err(|e| step(name, what, e))?
            .is_some_and(|o| o.running && !o.paused);
        let cmd = vec![
            "/usr/local/bin/bssctl-entry".to_string(),
            "sh".into(),
            "-c".into(),
            script.to_string(),
        ];
        let out = if running {
            client
                .exec(&cname, &cmd, None, timeout)
                .map_err(|e| step(name, what, e))?
        } else {
            let c = self.task_bundle(name, kind);
            let mut s = self.spec_of(name, &c)?;
            s.name = format!("{cname}-task");
            s.cmd = cmd[1..].to_vec();
            s.ports.clear();
            s.health = None;
            s.labels
                .insert(labels::COMPONENT.into(), format!("{name}-task"));
            self.ensure_volume(name, kind)?;
            let client = self.client(name)?;
            let _ = client.remove(&s.name);
            client.create(&s).map_err(|e| step(name, what, e))?;
            client.start(&s.name).map_err(|e| step(name, what, e))?;
            let start = Instant::now();
            let code = loop {
                match client.inspect(&s.name).map_err(|e| step(name, what, e))? {
                    Some(o) if !o.running && o.status != "created" => {
                        break o.exit_code.unwrap_or(-1)
                    }
                    Some(_) => {}
                    None => break -1,
                }
                if start.elapsed() > timeout {
                    let _ = client.remove(&s.name);
                    return Err(step(
                        name,
                        what,
                        format!("timed out after {}s", timeout.as_secs()),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let output = client.logs(&s.name, 200).unwrap_or_default();
            let _ = client.remove(&s.name);
            super::client::ExecOutput {
                exit_code: code,
                output,
            }
        };
        if out.exit_code == 0 {
            Ok(out.output)
        } else {
            Err(step(
                name,
                what,
                format!("exit {}: {}", out.exit_code, out.output.trim()),
            ))
        }
    }

    /// The component's bundle for a task container (the applied one, else an empty one of `kind`).
    fn task_bundle(&self, name: &str, kind: Kind) -> ComponentBundle {
        state::read_applied(&self.host)
            .ok()
            .flatten()
            .and_then(|a| a.bundle.components.get(name).cloned())
            .or_else(|| self.pending.get(name).cloned())
            .unwrap_or(ComponentBundle {
                kind,
                files: BTreeMap::new(),
                launch: Default::default(),
            })
    }

    /// A one-shot secret file for a task (removed by `drop_task_secret`).
    fn task_secret(
        &self,
        name: &str,
        file: &str,
        value: &str,
        uid: u32,
    ) -> Result<String, RuntimeError> {
        let dir = self.dirs.secrets(name);
        let p = dir.join(file);
        std::fs::create_dir_all(&dir).map_err(|e| step(name, "write a task secret", e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&p, value).map_err(|e| step(name, "write a task secret", e))?;
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400));
        let _ = std::os::unix::fs::chown(&p, Some(uid), Some(uid));
        Ok(format!("{}/{file}", self.t.paths.secrets))
    }

    fn drop_task_secret(&self, name: &str, file: &str) {
        let _ = std::fs::remove_file(self.dirs.secrets(name).join(file));
    }

    fn pg_task(&mut self, name: &str, task: &Task) -> Result<String, RuntimeError> {
        let m = self
            .t
            .postgres
            .as_ref()
            .and_then(|p| p.member(name))
            .cloned()
            .ok_or_else(|| step(name, "find", "not a PostgreSQL member"))?;
        let d = sh_quote(&m.data_dir);
        let tmp = sh_quote(&format!("{}.tmp", m.data_dir));
        let long = Duration::from_secs(600);
        let k = Kind::Postgres;
        // Data-directory-only tasks of a stopped member, on a local-driver volume: done on the
        // volume's host directory at once (a failover's fence must not wait for task containers).
        if let Some(dir) = self.stopped_data_dir(name, &m.data_dir) {
            let io = |what: &str, e: std::io::Error| step(name, what, e);
            match task {
                Task::PgDataState => {
                    return Ok(if dir.join("PG_VERSION").exists() {
                        "initialized".into()
                    } else {
                        "empty".into()
                    })
                }
                Task::PgStandbySignal(on) => {
                    let f = dir.join("standby.signal");
                    if *on {
                        std::fs::write(&f, "").map_err(|e| io("standby", e))?;
                        std::os::unix::fs::chown(
                            &f,
                            Some(spec::POSTGRES_UID),
                            Some(spec::POSTGRES_UID),
                        )
                        .map_err(|e| io("standby", e))?;
                    } else if f.exists() {
                        std::fs::remove_file(&f).map_err(|e| io("standby", e))?;
                    }
                    return Ok(String::new());
                }
                _ => {}
            }
        }
        match task {
            Task::PgDataState => self.run(
                name,
                k,
                "inspect data",
                &format!("if [ -f {d}/PG_VERSION ]; then echo initialized; else echo empty; fi"),
                Duration::from_secs(60),
            ),
            Task::PgInitDb {
                superuser,
                password,
            } => {
                let pw = self.task_secret(name, "initdb-pw", &password.0, spec::POSTGRES_UID)?;
                let r = self.run(
                    name,
                    k,
                    "initdb",
                    &format!(
                        "rm -rf {tmp} {d} && initdb -D {tmp} -U {} -A scram-sha-256 -E UTF8 --pwfile {} --no-instructions && mv {tmp} {d}",
                        sh_quote(superuser),
                        sh_quote(&pw)
                    ),
                    long,
                );
                self.drop_task_secret(name, "initdb-pw");
                r
            }
            Task::PgBaseBackup {
                host,
                port,
                user,
                slot,
            } => {
                let pg = self.t.postgres.as_ref().map(|p| p.passfile.clone()).unwrap_or_default();
                let slot = slot
                    .as_ref()
                    .map(|s| format!(" -S {}", sh_quote(s)))
                    .unwrap_or_default();
                self.run(
                    name,
                    k,
                    "basebackup",
                    &format!(
                        "rm -rf {tmp} {d} && mkdir -m 0700 {tmp} && PGPASSFILE={} PGCONNECT_TIMEOUT=5 pg_basebackup -h {} -p {port} -U {} -D {tmp} -X stream --checkpoint=fast --no-password{slot} && mv {tmp} {d}",
                        sh_quote(&pg),
                        sh_quote(host),
                        sh_quote(user)
                    ),
                    long,
                )
            }
            Task::PgStandbySignal(on) => self.run(
                name,
                k,
                "standby",
                &if *on {
                    format!("touch {d}/standby.signal")
                } else {
                    format!("rm -f {d}/standby.signal")
                },
                Duration::from_secs(60),
            ),
            Task::PgControlData => self.run(
                name,
                k,
                "controldata",
                &format!("LC_ALL=C pg_controldata -D {d}"),
                Duration::from_secs(60),
            ),
            Task::PgSingleUserRecovery => self.run(
                name,
                k,
                "recover",
                &format!(
                    "postgres --single -F -D {d} -c config_file={}/{}/postgresql.conf template1 </dev/null",
                    self.t.paths.config, m.name
                ),
                long,
            ),
            Task::PgRewind {
                host,
                port,
                user,
                password,
            } => {
                let pw = self.task_secret(name, "rewind-pw", &password.0, spec::POSTGRES_UID)?;
                let src = format!(
                    "host={host} port={port} user={user} dbname=postgres connect_timeout=5 sslmode=disable"
                );
                let r = self.run(
                    name,
                    k,
                    "rewind",
                    &format!(
                        "PGPASSWORD=$(cat {}) pg_rewind --target-pgdata={d} --source-server={}",
                        sh_quote(&pw),
                        sh_quote(&src)
                    ),
                    long,
                );
                self.drop_task_secret(name, "rewind-pw");
                r
            }
            Task::PgDiscardData => self.run(
                name,
                k,
                "discard",
                &format!("rm -rf {d} {tmp}"),
                Duration::from_secs(120),
            ),
            other => Err(step(name, "exec", format!("{other:?} is not a PostgreSQL task"))),
        }
    }

    /// The host directory of a member's data directory when its container does not run and its
    /// volume uses the local driver (the engine's own bookkeeping, from the volume's inspect).
    fn stopped_data_dir(&self, name: &str, data_dir: &str) -> Option<PathBuf> {
        let client = self.client.as_ref()?;
        if client
            .inspect(&self.cname(name))
            .ok()?
            .is_some_and(|o| o.running)
        {
            return None;
        }
        let v = client
            .block_on(
                client
                    .docker
                    .inspect_volume(&volume_name(&self.t.name, name)),
            )
            .ok()?;
        if v.driver != "local" {
            return None;
        }
        let rel = Path::new(data_dir).strip_prefix(&self.t.paths.data).ok()?;
        let dir = Path::new(&v.mountpoint).join(rel);
        Path::new(&v.mountpoint).is_dir().then_some(dir)
    }

    /// The component's data volume, with our labels (created before any container names it:
    /// a volume the engine creates on the fly would carry none, and `teardown` would miss it).
    fn ensure_volume(&self, name: &str, kind: Kind) -> Result<(), RuntimeError> {
        if !spec::has_data(kind) {
            return Ok(());
        }
        let mut l = Client::env_labels(&self.t.name);
        l.insert(labels::COMPONENT.into(), name.to_string());
        self.client(name)?
            .ensure_volume(&volume_name(&self.t.name, name), &l)
            .map_err(|e| step(name, "create its volume", e))?;
        Ok(())
    }

    fn ensure_network(&self) -> Result<(), RuntimeError> {
        let c = self.client("network")?;
        c.ensure_network(&network_name(&self.t.name), &self.t.name)
            .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        Ok(())
    }
}

/// The image tags of this machine, computed once per process: hashing the copied binaries takes
/// seconds, and a failover's task containers must not wait for it. (Inputs do not change under a
/// running bssctl; a new process sees new binaries.)
fn planned_images() -> Result<&'static [images::Planned], images::ImageError> {
    static PLANNED: std::sync::OnceLock<Vec<images::Planned>> = std::sync::OnceLock::new();
    if let Some(p) = PLANNED.get() {
        return Ok(p);
    }
    let host = images::HostInputs::read()?;
    let p = images::plan(&host)?;
    Ok(PLANNED.get_or_init(|| p))
}

/// A single-quoted shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Unix seconds of an RFC 3339 UTC timestamp as Docker writes it (`2026-12-01T21:40:32.1Z`).
pub fn unix_secs(ts: &str) -> u64 {
    let p = |a: usize, b: usize| ts.get(a..b).and_then(|s| s.parse::<i64>().ok());
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(s)) =
        (p(0, 4), p(5, 7), p(8, 10), p(11, 13), p(14, 16), p(17, 19))
    else {
        return 0;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    if y < 1971 {
        0
    } else {
        secs.max(0) as u64
    }
}

impl Runtime for Docker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "docker",
            // One Envoy per container: a config change restarts it (the backend retries).
            envoy_hot_restart: false,
            // Rendered files are a bind-mounted directory: they change under a running container.
            live_files: true,
            members_follow_roles: false,
            concurrent_tasks: false,
        }
    }

    fn preflight(&self, desired: &Bundle) -> Result<(), RuntimeError> {
        let Some(client) = self.client.as_ref() else {
            return Err(RuntimeError::Preflight(vec![self.connect_error.clone()]));
        };
        let mut problems = Vec::new();
        // Images: build what is missing (progress on stderr), once, cached by content.
        let needed = images::needed(&self.t, desired.components.values().map(|c| c.kind));
        if !needed.is_empty() {
            match images::HostInputs::read() {
                Ok(host) => {
                    if let Err(e) = client.block_on(images::ensure(
                        &client.docker,
                        &host,
                        &needed,
                        &mut super::cli::StderrProgress,
                    )) {
                        problems.push(e.to_string());
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        for (kind, key) in desired
            .components
            .values()
            .map(|c| (c.kind, images::override_key(c.kind)))
        {
            if let Some(img) = self.t.images.get(key) {
                match client.block_on(images::exists(&client.docker, img)) {
                    Ok(true) => {}
                    Ok(false) => problems.push(format!(
                        "image {img} of spec.images.{key} ({kind:?}) is not in the engine: `docker pull` or build it first"
                    )),
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        for (name, c) in &desired.components {
            let ours = client
                .inspect(&self.cname(name))
                .ok()
                .flatten()
                .is_some_and(|o| o.running);
            if ours {
                continue;
            }
            for port in ports_of(&self.t, name, c.kind) {
                if !crate::runtime::process::port_free(port) {
                    problems.push(format!("port {port} of {name} is in use on 127.0.0.1"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::Preflight(problems))
        }
    }

    fn prepare(&mut self) -> Result<Vec<String>, RuntimeError> {
        let mut notes = Vec::new();
        // Marked as ours, as the local runtime's root: `destroy` and the next `apply` stop the
        // agent only under a root bssctl can prove it owns.
        crate::runtime::owned_root::ensure_owned(Path::new(&self.host.paths.root))
            .map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        state::ensure_secrets(&self.host).map_err(|e| RuntimeError::Prepare(e.to_string()))?;
        self.ensure_network()?;
        // Task containers of an apply killed half-way.
        if let Ok(list) = self.client("prepare")?.containers(&self.t.name) {
            for o in list {
                if o.name.ends_with("-task") {
                    let _ = self.client("prepare")?.remove(&o.name);
                    notes.push(format!("removed leftover task container {}", o.name));
                }
            }
        }
        Ok(notes)
    }

    fn put_config(&mut self, name: &str, c: &ComponentBundle) -> Result<(), RuntimeError> {
        super::files::put_config(&self.dirs.config(name), c)
            .map_err(|e| step(name, "write files", e))?;
        let values = self.secret_values();
        let secrets = spec::secret_files(&self.t, c.kind, c, &values);
        super::files::put_secrets(&self.dirs.secrets(name), &secrets, spec::uid_of(c.kind))
            .map_err(|e| step(name, "deliver secrets", e))?;
        if c.kind == Kind::Haproxy {
            super::files::put_run_dir(&self.dirs.run(name), spec::uid_of(c.kind))
                .map_err(|e| step(name, "prepare run dir", e))?;
        }
        self.pending.insert(name.to_string(), c.clone());
        Ok(())
    }

    fn start(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        opts: StartOpts,
    ) -> Result<Observed, RuntimeError> {
        self.ensure_network()?;
        let mut s = self.spec_of(name, c)?;
        s.labels.insert(RESTARTS.into(), opts.restarts.to_string());
        self.ensure_volume(name, c.kind)?;
        let client = self.client(name)?;
        // A container is made from its spec each start: the labels then always tell the truth.
        client.remove(&s.name).map_err(|e| step(name, "start", e))?;
        client.create(&s).map_err(|e| step(name, "start", e))?;
        client.start(&s.name).map_err(|e| step(name, "start", e))?;
        let _ = std::fs::remove_file(self.hash_file(name));
        self.observe(name)
            .ok_or_else(|| step(name, "start", "container vanished"))
    }

    fn stop(&mut self, name: &str, kind: Kind, mode: StopMode) -> Result<(), RuntimeError> {
        let cname = self.cname(name);
        let client = self.client(name)?;
        let Some(o) = client.inspect(&cname).map_err(|e| step(name, "stop", e))? else {
            return Ok(());
        };
        if o.paused {
            let _ = client.unpause(&cname);
        }
        if o.running {
            match (kind, mode) {
                (_, StopMode::Kill) => {
                    let _ = client.kill(&cname, "KILL");
                }
                (Kind::Postgres, m) => {
                    // SIGINT = fast shutdown, SIGTERM = smart (waits for the clients).
                    let sig = if m == StopMode::Fast { "INT" } else { "TERM" };
                    let _ = client.kill(&cname, sig);
                    if !self.wait_stopped(name, Duration::from_secs(20)) {
                        let _ = self.client(name)?.stop(&cname, Duration::from_secs(5));
                    }
                }
                _ => {
                    client
                        .stop(&cname, Duration::from_secs(10))
                        .map_err(|e| step(name, "stop", e))?;
                }
            }
        }
        if self.wait_stopped(name, Duration::from_secs(30)) {
            Ok(())
        } else {
            Err(step(name, "stop", format!("container {cname} still runs")))
        }
    }

    fn signal(&mut self, name: &str, sig: Signal) -> Result<(), RuntimeError> {
        let cname = self.cname(name);
        let client = self.client(name)?;
        match sig {
            Signal::Stop => client.pause(&cname),
            Signal::Cont => client.unpause(&cname),
            s => client.kill(&cname, s.name()),
        }
        .map_err(|e| step(name, "signal", e))
    }

    fn exec(&mut self, name: &str, task: &Task) -> Result<String, RuntimeError> {
        let cfg = format!("{}/{name}", self.t.paths.config);
        match task {
            Task::Migrate => self.run(
                name,
                Kind::Backend,
                "migrate",
                &format!(
                    "bss-backend migrate --config {}",
                    sh_quote(&format!("{cfg}/backend.yaml"))
                ),
                Duration::from_secs(300),
            ),
            Task::HaproxyCheck => {
                let f = sh_quote(&format!("{cfg}/haproxy.cfg"));
                // Checked in a task container: the running HAProxy is not disturbed.
                let cname = self.cname(name);
                let running = self
                    .client(name)?
                    .inspect(&cname)
                    .ok()
                    .flatten()
                    .is_some_and(|o| o.running);
                if running {
                    let out = self
                        .client(name)?
                        .exec(
                            &cname,
                            &[
                                "/usr/local/bin/bssctl-entry".into(),
                                "haproxy".into(),
                                "-c".into(),
                                "-q".into(),
                                "-f".into(),
                                format!("{cfg}/haproxy.cfg"),
                            ],
                            None,
                            Duration::from_secs(30),
                        )
                        .map_err(|e| step(name, "check config", e))?;
                    if out.exit_code == 0 {
                        Ok(out.output)
                    } else {
                        Err(step(name, "check config", out.output.trim()))
                    }
                } else {
                    self.run(
                        name,
                        Kind::Haproxy,
                        "check config",
                        &format!("haproxy -c -q -f {f}"),
                        Duration::from_secs(60),
                    )
                }
            }
            Task::HaproxyAdmin(cmd) => {
                let h = self
                    .t
                    .haproxy
                    .as_ref()
                    .ok_or_else(|| step(name, "admin", "no haproxy"))?;
                let sock_name = Path::new(&h.admin_socket)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // The socket lives in a host directory bind-mounted into the container.
                let sock = self.dirs.run(name).join(sock_name);
                crate::probe::haproxy_cmd(&sock.display().to_string(), cmd, Duration::from_secs(2))
                    .map_err(|e| step(name, "admin", e))
            }
            Task::EnvoyAdmin(path) => {
                // The admin socket lives inside the container; the stats listener (published
                // on the host's 127.0.0.1) forwards only /ready and /stats/prometheus to it.
                let e = self
                    .t
                    .envoy
                    .as_ref()
                    .ok_or_else(|| step(name, "admin", "no envoy"))?;
                let url = format!("http://{}{path}", self.endpoint(name, e.admin.port));
                match crate::probe::http_get(&url, Duration::from_secs(2)) {
                    Ok((c, body)) if (200..300).contains(&c) => Ok(body),
                    Ok((c, body)) => Err(step(
                        name,
                        "admin",
                        format!("{path} answered {c} {}", body.trim()),
                    )),
                    Err(e) => Err(step(name, "admin", e)),
                }
            }
            Task::Tool { program, args } => {
                let kind = self
                    .kind_of(name)
                    .or_else(|| self.pending.get(name).map(|c| c.kind))
                    .unwrap_or(Kind::Kafka);
                let script = std::iter::once(program.as_str())
                    .chain(args.iter().map(String::as_str))
                    .map(sh_quote)
                    .collect::<Vec<_>>()
                    .join(" ");
                self.run(name, kind, program, &script, Duration::from_secs(120))
            }
            pg => self.pg_task(name, pg),
        }
    }

    fn observe(&self, name: &str) -> Option<Observed> {
        let o = self.client.as_ref()?.inspect(&self.cname(name)).ok()??;
        let hash = std::fs::read_to_string(self.hash_file(name))
            .ok()
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| {
                o.labels
                    .get(labels::CONFIG_HASH)
                    .cloned()
                    .unwrap_or_default()
            });
        Some(Observed {
            running: o.running,
            hash,
            restarts: o
                .labels
                .get(RESTARTS)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0),
            started_at: unix_secs(&o.started_at),
            instance: o.id.clone(),
            pid: None,
            epoch: 0,
        })
    }

    fn instance_alive(&self, o: &Observed) -> bool {
        self.client
            .as_ref()
            .and_then(|c| c.inspect(&o.instance).ok().flatten())
            .is_some_and(|x| x.running)
    }

    fn mark_config(&mut self, name: &str, hash: &str) -> Result<(), RuntimeError> {
        let p = self.hash_file(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| step(name, "record", e))?;
        }
        std::fs::write(&p, hash).map_err(|e| step(name, "record", e))
    }

    fn endpoint(&self, name: &str, port: u16) -> Endpoint {
        // The container's address on the environment's network (the host routes to bridge
        // networks); gone when it is cut off, so the controller sees what its peers see.
        let ip = self
            .client
            .as_ref()
            .and_then(|c| c.inspect(&self.cname(name)).ok().flatten())
            .and_then(|o| o.ips.get(&network_name(&self.t.name)).cloned());
        Endpoint {
            host: ip.unwrap_or_else(|| "127.0.0.1".into()),
            port,
        }
    }

    fn logs(&self, name: &str, lines: usize) -> String {
        self.client
            .as_ref()
            .and_then(|c| c.logs(&self.cname(name), lines).ok())
            .unwrap_or_default()
    }

    fn disk_space(&self, name: &str) -> Result<Vec<DiskSpace>, RuntimeError> {
        let Some(m) = self
            .t
            .postgres
            .as_ref()
            .and_then(|p| p.member(name))
            .cloned()
        else {
            return Ok(Vec::new());
        };
        let what = "read its free space";
        // A stopped member on a local-driver volume: its host directory.
        if let Some(dir) = self.stopped_data_dir(name, &m.data_dir) {
            let mut v = Vec::new();
            for d in [dir.clone(), dir.join("pg_wal")] {
                match rustix::fs::statvfs(&d) {
                    Ok(s) => v.push(DiskSpace {
                        path: d.display().to_string(),
                        available_bytes: s.f_bavail.saturating_mul(s.f_frsize),
                        total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
                    }),
                    Err(rustix::io::Errno::NOENT) if d != dir => {}
                    Err(e) => return Err(step(name, what, e)),
                }
            }
            return Ok(v);
        }
        // A running one: statfs inside its container (its mounts, as PostgreSQL sees them).
        let d = sh_quote(&m.data_dir);
        let cmd = vec![
            "sh".to_string(),
            "-c".into(),
            format!("for p in {d} {d}/pg_wal; do [ -e \"$p\" ] && stat -f -L -c \"%a %S %b $p\" \"$p\"; done; true"),
        ];
        let out = self
            .client(name)?
            .exec(&self.cname(name), &cmd, None, Duration::from_secs(5))
            .map_err(|e| step(name, what, e))?
            .output;
        let v: Vec<DiskSpace> = out
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(4, ' ');
                let avail: u64 = f.next()?.parse().ok()?;
                let bsize: u64 = f.next()?.parse().ok()?;
                let blocks: u64 = f.next()?.parse().ok()?;
                Some(DiskSpace {
                    path: f.next()?.to_string(),
                    available_bytes: avail.saturating_mul(bsize),
                    total_bytes: blocks.saturating_mul(bsize),
                })
            })
            .collect();
        if v.is_empty() {
            return Err(step(
                name,
                what,
                format!("unexpected statfs output {out:?}"),
            ));
        }
        Ok(v)
    }

    fn remove(&mut self, name: &str, kind: Kind) -> Result<(), RuntimeError> {
        self.stop(name, kind, StopMode::Fast)?;
        let client = self.client(name)?;
        client
            .remove(&self.cname(name))
            .map_err(|e| step(name, "remove", e))?;
        client
            .remove_volume(&volume_name(&self.t.name, name))
            .map_err(|e| step(name, "remove", e))?;
        for d in [
            self.dirs.config(name),
            self.dirs.secrets(name),
            self.dirs.run(name),
        ] {
            super::files::remove_dir(&d).map_err(|e| step(name, "remove", e))?;
        }
        let _ = std::fs::remove_file(self.hash_file(name));
        self.pending.remove(name);
        Ok(())
    }

    fn orphans(&self, desired: &Bundle) -> Vec<String> {
        let Some(c) = self.client.as_ref() else {
            return vec![];
        };
        c.containers(&self.t.name)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| o.labels.get(labels::COMPONENT).cloned())
            .filter(|n| !desired.components.contains_key(n))
            .collect()
    }

    fn teardown(
        &mut self,
        bundle: Option<&Bundle>,
        keep_data: bool,
    ) -> Result<Vec<String>, RuntimeError> {
        let env = self.t.name.clone();
        if let Some(b) = bundle {
            let mut order = b.ordered();
            order.reverse();
            for (name, c) in order {
                let _ = self.stop(name, c.kind, StopMode::Fast);
            }
        }
        let client = self.client("teardown")?;
        let err = |e: super::client::ClientError| RuntimeError::Prepare(e.to_string());
        // A few passes: a task container (a rejoin still finishing) can appear after the first.
        for pass in 0..3 {
            let list = client.containers(&env).map_err(err)?;
            if list.is_empty() {
                break;
            }
            for o in list {
                client.remove(&o.name).map_err(err)?;
            }
            if pass < 2 {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        if !keep_data {
            for v in client.volumes(&env).map_err(err)? {
                client.remove_volume(&v).map_err(err)?;
            }
            // Volumes of the bundle's components by name, labelled or not.
            for name in bundle
                .map(|b| b.components.keys().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                client
                    .remove_volume(&volume_name(&env, name))
                    .map_err(err)?;
            }
        }
        for n in client.networks(&env).map_err(err)? {
            client.remove_network(&n).map_err(err)?;
        }
        let mut left: Vec<String> = client
            .containers(&env)
            .map_err(err)?
            .into_iter()
            .map(|o| format!("container {}", o.name))
            .collect();
        left.extend(
            client
                .networks(&env)
                .map_err(err)?
                .into_iter()
                .map(|n| format!("network {n}")),
        );
        if !keep_data {
            left.extend(
                client
                    .volumes(&env)
                    .map_err(err)?
                    .into_iter()
                    .map(|v| format!("volume {v}")),
            );
        }
        let _ = super::files::remove_dir(&self.dirs.root);
        if keep_data {
            let _ = std::fs::remove_file(state::applied_path(&self.host));
        } else {
            let _ = std::fs::remove_dir_all(&self.host.paths.root);
        }
        self.pending.clear();
        Ok(left)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_to_unix_seconds() {
        assert_eq!(unix_secs("1970-01-01T00:00:00Z"), 0);
        assert_eq!(unix_secs("2000-03-01T00:00:00.5Z"), 951_868_800);
        assert_eq!(unix_secs("2026-12-01T21:40:32.123456789Z"), 1_796_161_232);
        assert_eq!(unix_secs("0001-01-01T00:00:00Z"), 0, "never started");
        assert_eq!(unix_secs(""), 0);
    }

    #[test]
    fn shell_quoting_keeps_words_whole() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }
}
