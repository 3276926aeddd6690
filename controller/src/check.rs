//! `check`: every rendered file judged by the component's own tool: `envoy --mode validate`,
//! `haproxy -c`, `promtool check config|rules`, `amtool check-config`, and a real `postgres` /
//! `redis-server` started on their configs.
//!
//! Runs in a scratch state directory: the topology must have been validated with `state_dir` set to
//! it, so every absolute path inside the rendered files points into the scratch tree.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::render::{Bundle, Kind};
use crate::tools;
use crate::topology::model::ValidatedTopology;

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub component: String,
    pub file: String,
    /// The command that judged the file.
    pub tool: String,
    pub ok: bool,
    /// The tool's output when it failed (or a note when it passed).
    pub output: String,
    pub millis: u128,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn run(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                false,
                format!("failed to start {:?}: {e}", cmd.get_program()),
            )
        }
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                if let Some(mut s) = child.stdout.take() {
                    let _ = s.read_to_string(&mut out);
                }
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut out);
                }
                return (status.success(), out);
            }
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return (false, format!("timed out after {}s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return (false, format!("failed to wait: {e}")),
        }
    }
}

struct Job {
    component: String,
    file: String,
    tool: String,
    f: Box<dyn FnOnce() -> (bool, String) + Send>,
}

/// `promtool check web-config` of a derived basic-auth web config (Alertmanager, exporters).
fn web_config_job(component: &str, path: &str) -> Job {
    let file = std::path::Path::new(path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    tool_job(
        component,
        &file,
        "promtool",
        vec!["check".into(), "web-config".into(), path.to_string()],
        vec![],
    )
}

fn tool_job(
    component: &str,
    file: &str,
    tool: &str,
    args: Vec<String>,
    env: Vec<(String, String)>,
) -> Job {
    let (tool_s, component_s, file_s) = (tool.to_string(), component.to_string(), file.to_string());
    let shown = format!("{tool} {}", args.join(" "));
    Job {
        component: component_s,
        file: file_s,
        tool: shown,
        f: Box::new(move || match tools::find(&tool_s) {
            Err(e) => (false, e.to_string()),
            Ok(bin) => {
                let mut c = Command::new(bin);
                c.args(&args);
                for (k, v) in env {
                    c.env(k, v);
                }
                run(&mut c, Duration::from_secs(60))
            }
        }),
    }
}

/// Prepares the scratch tree (directories, dummy secrets) and runs every check in parallel.
pub fn check(t: &ValidatedTopology, bundle: &Bundle) -> Vec<CheckResult> {
    let cfg = PathBuf::from(&t.paths.config);
    if let Err(e) = prepare(t, bundle) {
        return vec![CheckResult {
            component: "-".into(),
            file: "-".into(),
            tool: "prepare".into(),
            ok: false,
            output: e.to_string(),
            millis: 0,
        }];
    }
    let mut jobs: Vec<Job> = Vec::new();
    let p = |c: &str, f: &str| cfg.join(c).join(f).to_string_lossy().into_owned();
    for (name, c) in &bundle.components {
        match c.kind {
            Kind::Envoy => jobs.push(tool_job(
                name,
                "envoy.yaml",
                "envoy",
                vec![
                    "--mode".into(),
                    "validate".into(),
                    "-c".into(),
                    p(name, "envoy.yaml"),
                    "--log-level".into(),
                    "error".into(),
                ],
                vec![],
            )),
            Kind::Haproxy => jobs.push(tool_job(
                name,
                "haproxy.cfg",
                "haproxy",
                vec![
                    "-c".into(),
                    "-q".into(),
                    "-f".into(),
                    p(name, "haproxy.cfg"),
                ],
                vec![(
                    "HAPROXY_STATS_PASSWORD".into(),
                    "check-only-password".into(),
                )],
            )),
            Kind::Prometheus => {
                jobs.push(tool_job(
                    name,
                    "prometheus.yml",
                    "promtool",
                    vec!["check".into(), "config".into(), p(name, "prometheus.yml")],
                    vec![],
                ));
                let rules: Vec<String> = c
                    .files
                    .keys()
                    .filter(|f| f.starts_with("rules/"))
                    .map(|f| p(name, f))
                    .collect();
                if !rules.is_empty() {
                    let mut args = vec!["check".to_string(), "rules".to_string()];
                    args.extend(rules);
                    jobs.push(tool_job(
                        name,
                        "rules/*.rules.yml",
                        "promtool",
                        args,
                        vec![],
                    ));
                }
            }
            Kind::Alertmanager => {
                jobs.push(tool_job(
                    name,
                    "alertmanager.yml",
                    "amtool",
                    vec!["check-config".into(), p(name, "alertmanager.yml")],
                    vec![],
                ));
                if let Some(w) = t.alertmanager.as_ref().and_then(|a| a.web_auth.as_ref()) {
                    jobs.push(web_config_job(name, &w.web_config));
                }
            }
            Kind::Redis => {
                let conf = p(name, "redis.conf");
                jobs.push(Job {
                    component: name.clone(),
                    file: "redis.conf".into(),
                    tool: "redis-server (started on it)".into(),
                    f: Box::new(move || start_redis(&conf)),
                });
            }
            _ => {}
        }
    }
    // One web config for every postgres exporter: checked once.
    if let (Some(w), Some(x)) = (&t.exporters.postgres_web_auth, t.exporters.postgres.first()) {
        jobs.push(web_config_job(&x.name, &w.web_config));
    }
    if let Some(pg) = &t.postgres {
        let t2 = t.clone();
        let names: Vec<String> = pg.members.iter().map(|m| m.name.clone()).collect();
        // One job for all members: they share one initdb template.
        jobs.push(Job {
            component: names.join(","),
            file: "postgresql.conf, pg_hba.conf".into(),
            tool: "postgres (started on it)".into(),
            f: Box::new(move || start_postgres_members(&t2)),
        });
    }
    let mut results: Vec<CheckResult> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|j| {
                s.spawn(move || {
                    let start = Instant::now();
                    let (ok, output) = (j.f)();
                    CheckResult {
                        component: j.component,
                        file: j.file,
                        tool: j.tool,
                        ok,
                        output,
                        millis: start.elapsed().as_millis(),
                    }
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    results.sort_by(|a, b| {
        a.component
            .cmp(&b.component)
            .then_with(|| a.file.cmp(&b.file))
    });
    results
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

fn prepare(t: &ValidatedTopology, bundle: &Bundle) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = Path::new(&t.paths.root);
    for d in [
        &t.paths.config,
        &t.paths.data,
        &t.paths.run,
        &t.paths.logs,
        &t.paths.secrets,
    ] {
        std::fs::create_dir_all(d)?;
    }
    // The scratch root may be a 0700 temp dir; postgres runs as another user and must traverse it.
    let mut cur = Some(root);
    while let Some(d) = cur {
        if d.starts_with(std::env::temp_dir()) && d != std::env::temp_dir() {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        }
        cur = d.parent();
    }
    bundle.write_to(Path::new(&t.paths.config))?;
    std::fs::create_dir_all(format!("{}/haproxy", t.paths.run))?;
    for s in t.secrets.values() {
        std::fs::write(&s.file, "check-only-secret-value")?;
        std::fs::set_permissions(&s.file, std::fs::Permissions::from_mode(0o600))?;
    }
    // Redis' ACL include and the web configs, as the runtime derives them.
    let derived = crate::derived::files(t, &|_| Some("check-only-secret-value".into()))
        .map_err(std::io::Error::other)?;
    for f in derived {
        std::fs::write(&f.path, f.content)?;
        std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o600))?;
    }
    // The copies of the agent's API token that Prometheus and Alertmanager read (promtool checks
    // that a credentials_file exists).
    for consumer in ["prometheus", "alertmanager"] {
        let f = format!(
            "{}/{}.{consumer}",
            t.paths.secrets,
            crate::engine::agent::TOKEN_FILE
        );
        std::fs::write(&f, "check-only-secret-value")?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600))?;
    }
    if let Some(r) = &t.redis {
        std::fs::create_dir_all(&r.data_dir)?;
    }
    Ok(())
}

fn wait_log(child: &mut Child, log: &Path, needles: &[&str], timeout: Duration) -> (bool, String) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if needles.iter().any(|n| text.contains(n)) {
            return (true, String::new());
        }
        if let Ok(Some(st)) = child.try_wait() {
            return (
                false,
                format!("exited with {st} before it was ready:\n{text}"),
            );
        }
        if start.elapsed() > timeout {
            return (
                false,
                format!("not ready after {}s:\n{text}", timeout.as_secs()),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_redis(conf: &str) -> (bool, String) {
    let bin = match tools::find("redis-server") {
        Ok(b) => b,
        Err(e) => return (false, e.to_string()),
    };
    let dir = Path::new(conf)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let log = dir.join("check.log");
    let Ok(out) = std::fs::File::create(&log) else {
        return (false, "failed to create log".into());
    };
    let Ok(err) = out.try_clone() else {
        return (false, "failed to create log".into());
    };
    let port = free_port();
    let child = Command::new(bin)
        .arg(conf)
        .args(["--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("failed to start redis-server: {e}")),
    };
    let r = wait_log(
        &mut child,
        &log,
        &["Ready to accept connections"],
        Duration::from_secs(15),
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    r
}

fn start_postgres_members(t: &ValidatedTopology) -> (bool, String) {
    let Some(pg) = &t.postgres else {
        return (true, String::new());
    };
    let ids = tools::postgres_user();
    let as_pg = |c: &mut Command| {
        if let Some((uid, gid)) = ids {
            c.uid(uid).gid(gid);
        }
    };
    let (initdb, postgres) = match (tools::find("initdb"), tools::find("postgres")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return (false, e.to_string()),
    };
    let template = PathBuf::from(&t.paths.data).join("initdb-template");
    let pwfile = PathBuf::from(&t.paths.run).join("check-pw");
    if std::fs::write(&pwfile, "check-only-secret-value\n").is_err() {
        return (false, "failed to write the password file".into());
    }
    let _ = chown_tree(Path::new(&t.paths.data), ids);
    let _ = chown_tree(Path::new(&t.paths.run), ids);
    let mut c = Command::new(&initdb);
    c.args(["-D"])
        .arg(&template)
        .args([
            "-U",
            &pg.superuser,
            "-A",
            "scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--pwfile",
        ])
        .arg(&pwfile);
    as_pg(&mut c);
    let (ok, out) = run(&mut c, Duration::from_secs(60));
    if !ok {
        return (false, format!("initdb failed: {out}"));
    }
    // The members start side by side, each on its own copy of the template: the job takes
    // initdb plus the slowest member, not the sum of them.
    let reports: Vec<(bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = pg
            .members
            .iter()
            .map(|m| s.spawn(|| start_member(t, m, &template, &postgres, ids)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (false, "the check of a member panicked".into()))
            })
            .collect()
    });
    let all_ok = reports.iter().all(|(ok, _)| *ok);
    let report = reports.into_iter().map(|(_, r)| r).collect();
    (all_ok, report)
}

/// One member: a copy of the initdb template (a standby gets `standby.signal`), `postgres` started
/// on the rendered `postgresql.conf` until it is ready, then an immediate shutdown (SIGQUIT).
fn start_member(
    t: &ValidatedTopology,
    m: &crate::topology::model::PgMember,
    template: &Path,
    postgres: &Path,
    ids: Option<(u32, u32)>,
) -> (bool, String) {
    let data = PathBuf::from(&m.data_dir);
    let _ = std::fs::remove_dir_all(&data);
    let (ok, out) = run(
        Command::new("cp").arg("-a").arg(template).arg(&data),
        Duration::from_secs(60),
    );
    if !ok {
        return (
            false,
            format!("{}: copying the cluster failed: {out}\n", m.name),
        );
    }
    if m.role == crate::topology::model::Role::Replica {
        let _ = std::fs::write(data.join("standby.signal"), "");
    }
    let _ = std::fs::create_dir_all(&m.socket_dir);
    let _ = chown_tree(&data, ids);
    let _ = chown_tree(Path::new(&m.socket_dir), ids);
    let log = PathBuf::from(&t.paths.logs).join(format!("{}-check.log", m.name));
    let (Ok(out), Ok(err)) = (
        std::fs::File::create(&log),
        std::fs::File::create(&log).and_then(|f| f.try_clone()),
    ) else {
        return (
            false,
            format!("{}: failed to create the log file\n", m.name),
        );
    };
    let conf = format!("{}/{}/postgresql.conf", t.paths.config, m.name);
    let port = free_port();
    let mut c = Command::new(postgres);
    c.arg("-D")
        .arg(&data)
        .arg("-c")
        .arg(format!("config_file={conf}"))
        .args(["-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some((uid, gid)) = ids {
        c.uid(uid).gid(gid);
    }
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            return (
                false,
                format!("{}: failed to start postgres: {e}\n", m.name),
            )
        }
    };
    let (ok, out) = wait_log(
        &mut child,
        &log,
        &[
            "ready to accept connections",
            "ready to accept read-only connections",
        ],
        Duration::from_secs(30),
    );
    // SIGQUIT is PostgreSQL's immediate shutdown: the postmaster stops its children and exits;
    // SIGKILL only if it is still there after 10 s.
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    if ok {
        (true, format!("{}: started ({})\n", m.name, m.role_str()))
    } else {
        (false, format!("{}: {out}\n", m.name))
    }
}

impl crate::topology::model::PgMember {
    fn role_str(&self) -> &'static str {
        match self.role {
            crate::topology::model::Role::Primary => "primary",
            crate::topology::model::Role::Replica => "hot standby",
        }
    }
}
