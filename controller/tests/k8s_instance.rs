//! `bssctl instance`, the PostgreSQL pod's entrypoint, run for real: local processes with the
//! PostgreSQL 15 binaries, a temporary directory standing in for the pod's volumes (the roles
//! ConfigMap as one file per key, as the kubelet projects it; the Secret keys; the rendered
//! files where the member's ConfigMap is mounted; the data volume). No mock of PostgreSQL.
//!
//! One life: a fenced member waits; the primary is initialised; a replica clones; the fenced one
//! clones once unfenced; the primary dies, the roles fence it and promote a replica (whose
//! entrypoint promotes it; the other re-points); the old primary restarts fenced and waits, then
//! rewinds and streams from the new primary; a running primary is fenced (clean shutdown), another
//! member promoted, and it rewinds once unfenced; SIGTERM is a fast shutdown everywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use controller::k8s::roles::{self, RoleState};
use controller::topology::model::ValidatedTopology;

struct Pod {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    _dir: tempfile::TempDir,
    t: ValidatedTopology,
    roles_dir: PathBuf,
    secret_mount: PathBuf,
    argv: BTreeMap<String, Vec<String>>,
    logs: PathBuf,
    pods: BTreeMap<String, Pod>,
    superuser: String,
    password: String,
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let s = Instant::now();
    while s.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

impl Cluster {
    fn new() -> Cluster {
        support::require_tool("postgres");
        support::require_tool("pg_basebackup");
        support::require_tool("pg_rewind");
        let dir = tempfile::Builder::new()
            .prefix("bssctl-instance-")
            .tempdir()
            .unwrap();
        // PostgreSQL runs as its own user when the test runs as root: it must reach the volumes.
        chmod(dir.path(), 0o755);
        let offset = support::free_offset();
        let file = dir.path().join("topology.yaml");
        std::fs::write(
            &file,
            format!(
                "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {{name: pods}}\nspec:\n  runtime: {{portOffset: {offset}, stateDir: state}}\n  postgres: {{replicas: 2}}\n"
            ),
        )
        .unwrap();
        let t = support::load_with_state(&file, &dir.path().join("state")).validated;
        // The pod's volumes: data (the PVC), run and secrets (emptyDirs), config (the member's
        // ConfigMap), the Secret and the roles ConfigMap.
        for p in [&t.paths.data, &t.paths.run, &t.paths.config] {
            std::fs::create_dir_all(p).unwrap();
            chmod(Path::new(p), 0o755);
        }
        chmod(Path::new(&t.paths.root), 0o755);
        chmod(Path::new(&t.paths.root).parent().unwrap(), 0o755);
        let bundle =
            controller::render::render(&t, &controller::render::load_templates(None).unwrap())
                .unwrap();
        let pg = t.postgres.clone().unwrap();
        let mut argv = BTreeMap::new();
        for m in &pg.members {
            let c = &bundle.components[&m.name];
            let cdir = Path::new(&t.paths.config).join(&m.name);
            std::fs::create_dir_all(&cdir).unwrap();
            chmod(&cdir, 0o755);
            for (rel, text) in &c.files {
                std::fs::write(cdir.join(rel), text).unwrap();
                chmod(&cdir.join(rel), 0o444);
            }
            let mut a = vec![c.launch.program.clone()];
            a.extend(c.launch.args.iter().cloned());
            argv.insert(m.name.clone(), a);
        }
        let secret_mount = dir.path().join("secret-mount");
        std::fs::create_dir_all(&secret_mount).unwrap();
        let values = controller::k8s::secrets::resolve(&t, &BTreeMap::new()).unwrap();
        for (k, v) in &values {
            std::fs::write(secret_mount.join(k), v).unwrap();
            chmod(&secret_mount.join(k), 0o440);
        }
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let roles_dir = dir.path().join("roles");
        std::fs::create_dir_all(&roles_dir).unwrap();
        let pods = pg
            .members
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    Pod {
                        port: m.port,
                        log: logs.join(format!("{}.log", m.name)),
                        child: None,
                    },
                )
            })
            .collect();
        Cluster {
            _dir: dir,
            roles_dir,
            secret_mount,
            argv,
            logs,
            pods,
            superuser: pg.superuser.clone(),
            password: values["postgres-superuser-password"].clone(),
            t,
        }
    }

    /// Writes the roles ConfigMap's data as the kubelet's atomic writer projects it: every key
    /// into a new version directory, `..data` swapped to it with a rename, `<key>` links to
    /// `..data/<key>`, the old version removed.
    fn set_roles(&self, s: &RoleState) {
        use std::os::unix::fs::symlink;
        static VERSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let pg = self.t.postgres.as_ref().unwrap();
        let cm = roles::roles_config_map(&self.t, pg, s);
        let n = VERSION.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let version = format!("..v{n}");
        let vdir = self.roles_dir.join(&version);
        std::fs::create_dir_all(&vdir).unwrap();
        let data = cm.data.unwrap();
        for (k, v) in &data {
            std::fs::write(vdir.join(k), v).unwrap();
        }
        let tmp = self.roles_dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&version, &tmp).unwrap();
        let old = std::fs::read_link(self.roles_dir.join("..data")).ok();
        std::fs::rename(&tmp, self.roles_dir.join("..data")).unwrap();
        for k in data.keys() {
            let link = self.roles_dir.join(k);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{k}"), &link).unwrap();
            }
        }
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(self.roles_dir.join(old));
        }
    }

    fn start(&mut self, member: &str) {
        let argv = self.argv[member].clone();
        let p = self.pods.get_mut(member).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bssctl"))
            .args(["instance", "--member", member, "--roles"])
            .arg(&self.roles_dir)
            .arg("--secrets-from")
            .arg(&self.secret_mount)
            .arg("--secrets-to")
            .arg(&self.t.paths.secrets)
            .args(["--poll-ms", "200", "--"])
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        p.child = Some(child);
    }

    fn log(&self, member: &str) -> String {
        std::fs::read_to_string(&self.pods[member].log).unwrap_or_default()
    }

    fn data_dir(&self, member: &str) -> PathBuf {
        PathBuf::from(
            &self
                .t
                .postgres
                .as_ref()
                .unwrap()
                .member(member)
                .unwrap()
                .data_dir,
        )
    }

    fn postmaster(&self, member: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir(member).join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    fn su(&self, member: &str) -> Result<postgres::Client, String> {
        controller::pgsql::connect(
            "127.0.0.1",
            self.pods[member].port,
            &self.superuser,
            &self.password,
            "postgres",
            Duration::from_secs(2),
        )
    }

    fn in_recovery(&self, member: &str) -> Option<bool> {
        let mut c = self.su(member).ok()?;
        controller::pgsql::in_recovery(&mut c).ok()
    }

    /// Members the primary `on` reports as streaming.
    fn streaming_from(&self, on: &str) -> Vec<String> {
        let Ok(mut c) = self.su(on) else {
            return Vec::new();
        };
        controller::pgsql::replication(&mut c)
            .map(|rows| {
                rows.into_iter()
                    .filter(|r| r.state == "streaming")
                    .map(|r| r.application_name)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn exited(&mut self, member: &str) -> Option<std::process::ExitStatus> {
        self.pods
            .get_mut(member)
            .unwrap()
            .child
            .as_mut()
            .and_then(|c| c.try_wait().unwrap())
    }

    fn dump(&self) -> String {
        self.pods
            .keys()
            .map(|m| format!("--- {m}\n{}", self.log(m)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("entrypoint logs:\n{}", self.dump());
        }
        let members: Vec<String> = self.pods.keys().cloned().collect();
        for m in &members {
            if let Some(c) = self.pods.get_mut(m).unwrap().child.as_mut() {
                signal(c.id(), "TERM");
            }
        }
        for m in &members {
            if let Some(c) = self.pods.get_mut(m).unwrap().child.as_mut() {
                let s = Instant::now();
                while c.try_wait().unwrap().is_none() && s.elapsed() < Duration::from_secs(20) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            if let Some(pid) = self.postmaster(m) {
                if controller::runtime::process::cmdline(pid)
                    .contains(&self.data_dir(m).display().to_string())
                {
                    signal(pid, "KILL");
                }
            }
        }
        let _ = &self.logs;
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn the_entrypoint_initialises_clones_waits_fenced_follows_a_failover_and_rewinds() {
    let mut c = Cluster::new();
    let pg = c.t.postgres.clone().unwrap();
    let [p0, p1, p2] = ["postgres-0", "postgres-1", "postgres-2"];
    let long = Duration::from_secs(60);

    // A member fenced before it ever started waits: no data directory, no postgres.
    let s0 = RoleState::initial(&pg).fence(p2);
    c.set_roles(&s0);
    c.start(p2);
    wait_until("postgres-2 to report that it is fenced", long, || {
        c.log(p2).contains("waiting: postgres-2 is fenced")
    });

    // The desired primary is initialised (initdb + bssctl's roles) and runs as the child.
    c.start(p0);
    wait_until(
        "postgres-0 to be initialised and bootstrapped",
        long,
        || c.log(p0).contains("postgres runs (pid"),
    );
    assert_eq!(c.in_recovery(p0), Some(false));
    let instance0 = c.pods[p0].child.as_ref().unwrap().id();
    let pm0 = c.postmaster(p0).expect("postmaster.pid of postgres-0");
    assert_eq!(
        parent_of(pm0),
        Some(instance0),
        "postgres is the entrypoint's child"
    );
    {
        let mut db = c.su(p0).unwrap();
        let roles = db
            .query(
                "SELECT rolname FROM pg_roles WHERE rolname = $1",
                &[&pg.replication_user],
            )
            .unwrap();
        assert_eq!(roles.len(), 1, "the replication role was created");
        db.batch_execute(
            "CREATE TABLE pods(v text); INSERT INTO pods VALUES ('written on postgres-0');",
        )
        .unwrap();
    }

    // A replica clones from it and streams.
    c.start(p1);
    wait_until("postgres-1 to stream from postgres-0", long, || {
        c.streaming_from(p0).contains(&p1.to_string())
    });
    assert!(!c.data_dir(p2).join("PG_VERSION").exists());
    assert!(c.exited(p2).is_none(), "the fenced member still waits");

    // Unfenced, the waiting member clones too.
    let s1 = s0.unfence(p2);
    c.set_roles(&s1);
    wait_until("postgres-2 to stream from postgres-0", long, || {
        c.streaming_from(p0).contains(&p2.to_string())
    });
    c.su(p0)
        .unwrap()
        .batch_execute("CHECKPOINT; INSERT INTO pods VALUES ('before the failover');")
        .unwrap();
    wait_until("postgres-1 to replay the last write", long, || {
        c.su(p1)
            .ok()
            .and_then(|mut db| {
                db.query("SELECT 1 FROM pods WHERE v = 'before the failover'", &[])
                    .ok()
            })
            .is_some_and(|r| r.len() == 1)
    });

    // The primary dies: its entrypoint exits with postgres (the kubelet would restart it).
    signal(c.postmaster(p0).unwrap(), "KILL");
    wait_until("the entrypoint of postgres-0 to exit", long, || {
        c.exited(p0).is_some()
    });
    let st = c.exited(p0).unwrap();
    assert!(
        !st.success(),
        "a killed postgres is a failed container: {st}"
    );

    // The operator's moves: fence the old primary, then promote postgres-1.
    let s2 = s1.fence(p0);
    let s3 = s2.promote(&pg, p1).unwrap();
    c.set_roles(&s2);
    c.set_roles(&s3);
    wait_until("postgres-1 to be promoted by its entrypoint", long, || {
        c.in_recovery(p1) == Some(false)
    });
    wait_until("postgres-2 to stream from postgres-1", long, || {
        c.streaming_from(p1).contains(&p2.to_string())
    });
    c.su(p1)
        .unwrap()
        .batch_execute("INSERT INTO pods VALUES ('written on postgres-1');")
        .unwrap();

    // The old primary restarts while fenced: it waits and never serves.
    c.start(p0);
    wait_until("postgres-0 to report that it is fenced", long, || {
        c.log(p0).matches("waiting: postgres-0 is fenced").count() >= 1
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(c.su(p0).is_err(), "a fenced former primary accepts nobody");
    assert!(c.exited(p0).is_none());

    // Unfenced, it rewinds onto the new primary's timeline and streams from it.
    let s4 = s3.unfence(p0);
    c.set_roles(&s4);
    wait_until("postgres-0 to stream from postgres-1", long, || {
        c.streaming_from(p1).contains(&p0.to_string())
    });
    assert!(
        c.log(p0).contains("rewind ok"),
        "the former primary was rewound:\n{}",
        c.dump()
    );
    assert_eq!(c.in_recovery(p0), Some(true));
    wait_until("postgres-0 to replay the new primary's write", long, || {
        c.su(p0)
            .ok()
            .and_then(|mut db| {
                db.query("SELECT 1 FROM pods WHERE v = 'written on postgres-1'", &[])
                    .ok()
            })
            .is_some_and(|r| r.len() == 1)
    });

    // A planned role change as the operator's switchover writes it: the running primary is
    // fenced (its entrypoint shuts postgres down cleanly and waits), postgres-2 is promoted, the
    // old primary is unfenced and rewinds onto postgres-2; postgres-0 re-points to postgres-2.
    let s5 = s4.fence(p1);
    c.set_roles(&s5);
    wait_until("postgres-1 to shut down when fenced", long, || {
        c.log(p1).contains("fenced at epoch") && c.su(p1).is_err()
    });
    assert!(
        c.exited(p1).is_none(),
        "a fenced entrypoint waits, it does not exit"
    );
    let s6 = s5.promote(&pg, p2).unwrap();
    c.set_roles(&s6);
    wait_until("postgres-2 to be promoted by its entrypoint", long, || {
        c.in_recovery(p2) == Some(false)
    });
    c.set_roles(&s6.unfence(p1));
    wait_until(
        "postgres-0 and postgres-1 to stream from postgres-2",
        long,
        || {
            let s = c.streaming_from(p2);
            s.contains(&p0.to_string()) && s.contains(&p1.to_string())
        },
    );
    assert_eq!(
        c.log(p1).matches("rewind ok").count(),
        1,
        "the old primary was rewound:\n{}",
        c.log(p1)
    );

    // SIGTERM: fast shutdown of postgres, the entrypoint exits 0 with nothing left behind.
    for m in [p0, p1, p2] {
        let pid = c.pods[m].child.as_ref().unwrap().id();
        let pm = c.postmaster(m).expect("postmaster.pid");
        signal(pid, "TERM");
        wait_until(&format!("the entrypoint of {m} to exit"), long, || {
            c.exited(m).is_some()
        });
        assert!(c.exited(m).unwrap().success(), "{m}:\n{}", c.log(m));
        assert!(
            !controller::runtime::process::pid_alive(pm),
            "postgres of {m} stopped"
        );
        assert!(!c.data_dir(m).join("postmaster.pid").exists());
    }
    // The steps each entrypoint took (shown with --nocapture).
    eprintln!("{}", c.dump());
}
