//! Attack tests of issue 12 (control plane, filesystem trust, exposure), against the real
//! binary and real components: the agent API without its token / with a foreign Origin / with a
//! foreign Host changes nothing on the primary, a slow client does not block `/health`, no
//! secret value in any command line, file outside `secrets/`, log or status after apply and
//! switchover, no world-readable state file, `destroy` refuses a root bssctl does not own,
//! symbolic links planted in `config/`, `data/` and `secrets/` are not followed, and probes hand
//! no password to an impostor listening on a dead component's port.
//!
//! Two stacks only (a small PostgreSQL pair, a node exporter alone): they are slow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use controller::runtime::owned_root;

/// (status, body) of one raw HTTP/1.1 request to 127.0.0.1:`port`, headers as given.
fn raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(150))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

fn role(env: &support::StackEnv, port: u16) -> String {
    let mut c = postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(env.secret("postgres-superuser-password"))
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5));
    let mut c = c.connect(postgres::NoTls).unwrap();
    let rec: bool = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    if rec { "replica" } else { "primary" }.into()
}

/// No world-readable (or world-writable) regular file or directory under the root; directories
/// may keep o+x (traversal) for the components' users. Sockets are reached through their
/// directory, which this checks.
fn assert_nothing_world_readable(root: &Path) {
    let open = support::exposure::world_readable(root);
    assert!(open.is_empty(), "world-readable state: {open:#?}");
}

/// No secret value anywhere outside secrets/: files (configs, applied.json, journal, history,
/// logs, records), command lines of the environment's processes, status and metrics.
fn assert_no_secret_outside_secrets(env: &support::StackEnv, extra: &[(&str, String)]) {
    let leaks = support::exposure::secret_leaks(env, extra);
    assert!(leaks.is_empty(), "secret values leaked: {leaks:#?}");
}

#[test]
fn agent_api_refuses_without_token_foreign_origin_or_host_and_a_slow_client_does_not_block_health()
{
    for t in ["postgres", "initdb", "pg_basebackup", "haproxy"] {
        support::require_tool(t);
    }
    let env = support::StackEnv::new(
        "bssctl-sec-",
        "sec-agent",
        "  postgres: {replicas: 1}\n  haproxy: {}\n",
    );
    let (code, out, err) = env.run(&["apply"], &[]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    let port = env.port(7070);
    let (p0, p1) = (env.port(5432), env.port(5433));
    assert_eq!(role(&env, p0), "primary");
    let token_file = env.root.join("secrets/agent-token");
    let m = std::fs::metadata(&token_file).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600, "token file mode");
    let token = env.secret("agent-token");
    let host = ("Host", format!("127.0.0.1:{port}"));
    let auth = ("Authorization", format!("Bearer {token}"));
    let json = ("Content-Type", "application/json".to_string());

    // The attacks: each one is refused and the primary stays where it is.
    type Attack<'a> = (&'a str, Vec<(&'a str, String)>, u16);
    let attacks: Vec<Attack> = vec![
        ("no token", vec![host.clone(), json.clone()], 401),
        (
            "wrong token",
            vec![
                host.clone(),
                json.clone(),
                ("Authorization", "Bearer 00".into()),
            ],
            401,
        ),
        (
            "foreign Origin (a web page)",
            vec![
                host.clone(),
                json.clone(),
                auth.clone(),
                ("Origin", "http://evil.example".into()),
            ],
            403,
        ),
        (
            "Origin null",
            vec![
                host.clone(),
                json.clone(),
                auth.clone(),
                ("Origin", "null".into()),
            ],
            403,
        ),
        (
            "foreign Host (DNS rebinding)",
            vec![
                ("Host", format!("evil.example:{port}")),
                json.clone(),
                auth.clone(),
            ],
            421,
        ),
        (
            "simple cross-origin form POST (text/plain)",
            vec![
                host.clone(),
                auth.clone(),
                ("Content-Type", "text/plain".into()),
            ],
            415,
        ),
    ];
    for (what, headers, want) in &attacks {
        let (code, body) = raw(port, "POST", "/switchover", headers, "{}");
        assert_eq!(code, *want, "{what}: {body}");
        let (code, _) = raw(port, "POST", "/alerts/default", headers, "{}");
        assert_eq!(code, *want, "{what} on /alerts");
    }
    assert_eq!(
        role(&env, p0),
        "primary",
        "a refused request changed the primary"
    );
    assert_eq!(role(&env, p1), "replica");
    let (_, fo) = raw(port, "GET", "/failover", std::slice::from_ref(&host), "");
    let fo: serde_json::Value = serde_json::from_str(&fo).unwrap();
    assert_eq!(fo["switchovers_total"], 0, "{fo}");

    // Metrics need the token too; Prometheus' scrape job carries it (credentials_file).
    assert_eq!(
        raw(port, "GET", "/metrics", std::slice::from_ref(&host), "").0,
        401
    );
    let (code, metrics) = raw(port, "GET", "/metrics", &[host.clone(), auth.clone()], "");
    assert_eq!(code, 200);
    assert!(metrics.contains("bssctl_up 1"), "{metrics}");

    // Receivers: bounded names, bounded count.
    let ok = vec![host.clone(), json.clone(), auth.clone()];
    assert_eq!(raw(port, "POST", "/alerts/default", &ok, "{}").0, 200);
    let long = "a".repeat(200);
    assert_eq!(
        raw(port, "POST", &format!("/alerts/{long}"), &ok, "{}").0,
        400
    );
    assert_eq!(raw(port, "POST", "/alerts/a%0Ab", &ok, "{}").0, 400);
    let mut refused_at = None;
    for i in 0..100 {
        let (code, _) = raw(port, "POST", &format!("/alerts/r{i}"), &ok, "{}");
        if code == 429 {
            refused_at = Some(i);
            break;
        }
        assert_eq!(code, 200);
    }
    let refused_at = refused_at.expect("distinct receivers are not bounded");
    assert!(refused_at < 100, "{refused_at}");

    // A slow client (one byte per second) holds a connection; /health answers within 1 s
    // meanwhile, and the slow connection is cut once its request head is overdue.
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let start = Instant::now();
        for b in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa"
            .iter()
        {
            if s.write_all(&[*b]).is_err() || s.flush().is_err() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_secs(1));
            if start.elapsed() > Duration::from_secs(20) {
                break;
            }
        }
        None
    });
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let t = Instant::now();
        let (code, body) = raw(port, "GET", "/health", std::slice::from_ref(&host), "");
        let took = t.elapsed();
        assert_eq!(code, 200, "{body}");
        worst = worst.max(took);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        worst < Duration::from_secs(1),
        "/health took {worst:?} next to a slow client"
    );
    let cut = slow.join().unwrap();
    let cut = cut.expect("the slow client was never disconnected");
    assert!(
        cut < Duration::from_secs(15),
        "slow client cut after {cut:?}"
    );
    eprintln!(
        "/health worst latency next to a slow client: {worst:?}; slow client cut after {cut:?}"
    );

    // The CLI sends the token: a real switchover through the agent.
    let (code, out, err) = env.run(&["switchover"], &[]);
    assert_eq!(code, 0, "switchover via the CLI failed:\n{out}\n{err}");
    assert_eq!(role(&env, p1), "primary");

    // Exposure after apply + switchover: no secret outside secrets/, nothing world-readable.
    let (_, status) = raw(port, "GET", "/status", std::slice::from_ref(&host), "");
    let (_, metrics) = raw(port, "GET", "/metrics", &[host.clone(), auth.clone()], "");
    let (_, plan_out, plan_err) = env.run(&["plan"], &[]);
    let (_, st_out, st_err) = env.run(&["status"], &[]);
    assert_no_secret_outside_secrets(
        &env,
        &[
            ("agent /status", status),
            ("agent /metrics", metrics),
            ("bssctl plan", format!("{plan_out}{plan_err}")),
            ("bssctl status", format!("{st_out}{st_err}")),
        ],
    );
    assert_nothing_world_readable(&env.root);
}

fn victim(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, "victim content\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn assert_victim_intact(p: &Path) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{} is gone: {e}", p.display()));
    assert_eq!(
        std::fs::read_to_string(p).unwrap(),
        "victim content\n",
        "{}",
        p.display()
    );
    assert_eq!(
        m.permissions().mode() & 0o777,
        0o644,
        "{} mode changed",
        p.display()
    );
    assert_eq!(m.uid(), 0, "{} owner changed", p.display());
}

#[test]
fn destroy_refuses_a_root_it_does_not_own_and_apply_refuses_to_adopt_it() {
    support::require_tool("prometheus-node-exporter");
    // A non-empty directory bssctl did not create (no marker): neither adopted nor deleted.
    let env = support::StackEnv::new("bssctl-sec-", "sec-foreign", "  exporters: {node: {}}\n");
    std::fs::create_dir_all(&env.root).unwrap();
    let precious = victim(&env.root, "precious.txt");
    let (code, out, err) = env.run(&["destroy"], &[]);
    assert_ne!(
        code, 0,
        "destroy of a foreign root succeeded:\n{out}\n{err}"
    );
    assert!(err.contains("marker"), "{err}");
    assert_victim_intact(&precious);
    let (code, out, err) = env.run(&["apply", "--no-agent"], &[]);
    assert_ne!(code, 0, "apply adopted a foreign root:\n{out}\n{err}");
    assert!(err.contains("not created by bssctl"), "{err}");
    assert_victim_intact(&precious);
    assert!(
        !env.root.join("secrets").exists(),
        "secrets written into a foreign root"
    );

    // A marker copied into a directory another user owns: refused too.
    std::fs::remove_file(&precious).unwrap();
    let (code, out, err) = env.run(&["apply", "--no-agent"], &[]);
    assert_eq!(code, 0, "apply on an empty root failed:\n{out}\n{err}");
    owned_root::verify_owned(&env.root).unwrap();
    let nobody = controller::tools::user_ids("nobody").expect("user nobody");
    std::os::unix::fs::chown(&env.root, Some(nobody.0), None).unwrap();
    let e = owned_root::verify_owned(&env.root).unwrap_err().to_string();
    assert!(e.contains("owned by uid"), "{e}");
    let (code, _, err) = env.run(&["destroy"], &[]);
    assert_ne!(
        code, 0,
        "destroy of a root owned by another user succeeded: {err}"
    );
    assert!(env.root.join(owned_root::MARKER).exists());
    std::os::unix::fs::chown(&env.root, Some(0), None).unwrap();
    // Group- or world-writable: someone else could have planted anything.
    std::fs::set_permissions(&env.root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = owned_root::verify_owned(&env.root).unwrap_err().to_string();
    assert!(e.contains("writable by other users"), "{e}");
    std::fs::set_permissions(&env.root, std::fs::Permissions::from_mode(0o711)).unwrap();
    let (code, _, err) = env.run(&["destroy"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!env.root.exists());

    // Dangerous places are refused at runtime whatever the validator let through.
    for p in ["/", "/etc", "/usr", "/var/lib", "/tmp"] {
        assert!(
            owned_root::dangerous(Path::new(p)).is_some(),
            "{p} accepted"
        );
        assert!(
            owned_root::verify_owned(Path::new(p)).is_err(),
            "{p} verified"
        );
        assert!(
            owned_root::ensure_owned(Path::new(p)).is_err(),
            "{p} adopted"
        );
    }
    let home = std::env::var("HOME").unwrap();
    assert!(owned_root::dangerous(Path::new(&home)).is_some());
    assert!(owned_root::dangerous(Path::new("/tmp/x/../etc")).is_some());
    let d = tempfile::tempdir().unwrap();
    let link = d.path().join("etc-link");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    assert!(
        owned_root::dangerous(&link).is_some(),
        "a link to /etc accepted"
    );
}

#[test]
fn symlink_plants_in_config_data_and_secrets_are_not_followed() {
    support::require_tool("prometheus-node-exporter");
    let outside = tempfile::tempdir().unwrap();
    let env = support::StackEnv::new("bssctl-sec-", "sec-links", "  exporters: {node: {}}\n");
    let (code, out, err) = env.run(&["apply", "--no-agent"], &[]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    assert_nothing_world_readable(&env.root);

    // secrets/: a secret replaced by a link to a file elsewhere is refused, not read or written.
    let v1 = victim(outside.path(), "v1");
    let tok = env.root.join("secrets/agent-token.prometheus");
    std::fs::remove_file(&tok).unwrap();
    std::os::unix::fs::symlink(&v1, &tok).unwrap();
    let (code, _, err) = env.run(&["apply", "--no-agent"], &[]);
    assert_ne!(code, 0, "apply wrote through a link in secrets/");
    assert!(err.contains("symbolic link"), "{err}");
    assert_victim_intact(&v1);
    std::fs::remove_file(&tok).unwrap();

    // config/: a link where a rendered file goes, and a directory link.
    let v2 = victim(outside.path(), "v2");
    let cfg = env.root.join("config/node-exporter");
    std::fs::create_dir_all(&cfg).unwrap();
    std::os::unix::fs::symlink(&v2, cfg.join("planted.conf")).unwrap();
    let (code, _, err) = env.run(&["apply", "--no-agent"], &[]);
    assert_ne!(code, 0, "a link in config/ was accepted");
    assert!(err.contains("symbolic link"), "{err}");
    assert_victim_intact(&v2);
    std::fs::remove_file(cfg.join("planted.conf")).unwrap();
    let (code, out, err) = env.run(&["apply", "--no-agent"], &[]);
    assert_eq!(
        code, 0,
        "apply after removing the plants failed:\n{out}\n{err}"
    );

    // data/: a component's user can plant links in its own data directory; bssctl's chown and
    // delete never follow them.
    let vdir = outside.path().join("vdir");
    std::fs::create_dir(&vdir).unwrap();
    let v3 = victim(&vdir, "v3");
    let data = env.root.join("data/planted");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(&vdir, data.join("to-dir")).unwrap();
    std::os::unix::fs::symlink(&v3, data.join("to-file")).unwrap();
    let nobody = controller::tools::user_ids("nobody").expect("user nobody");
    owned_root::chown_tree(&data, Some(nobody)).unwrap();
    assert_eq!(
        std::fs::symlink_metadata(data.join("to-file"))
            .unwrap()
            .uid(),
        nobody.0
    );
    assert_victim_intact(&v3);
    assert_eq!(
        std::fs::metadata(&vdir).unwrap().uid(),
        0,
        "chown followed a directory link"
    );
    assert!(owned_root::set_mode(&data.join("to-file"), 0o777).is_err());
    assert_victim_intact(&v3);
    let (code, _, err) = env.run(&["destroy"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!env.root.exists());
    assert_victim_intact(&v3);

    // write_atomic: a link at the target, as the directory, or at the temp file's name.
    let d = tempfile::tempdir().unwrap();
    let v4 = victim(outside.path(), "v4");
    let target = d.path().join("file");
    std::os::unix::fs::symlink(&v4, &target).unwrap();
    assert!(controller::state::write_atomic(&target, b"x", 0o600).is_err());
    assert_victim_intact(&v4);
    let ldir = d.path().join("ldir");
    std::os::unix::fs::symlink(outside.path(), &ldir).unwrap();
    assert!(controller::state::write_atomic(&ldir.join("v4"), b"x", 0o600).is_err());
    assert_victim_intact(&v4);
    let real = d.path().join("real");
    let tmp = real.with_extension(format!("tmp.{}", std::process::id()));
    std::os::unix::fs::symlink(&v4, &tmp).unwrap();
    controller::state::write_atomic(&real, b"new", 0o644).unwrap();
    assert_victim_intact(&v4);
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
    let mode = std::fs::metadata(&real).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "write_atomic created {mode:o}");
}

fn http(url: &str, method: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<String>) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut r = agent.request(method, url);
    for (k, v) in headers {
        r = r.set(k, v);
    }
    let resp = match r.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let code = resp.status();
    let names = resp.headers_names();
    (code, resp.into_string().unwrap_or_default(), names)
}

#[test]
fn prometheus_has_no_lifecycle_api_reloads_by_sighup_and_scrapes_the_agent_with_its_token() {
    for t in [
        "prometheus",
        "prometheus-alertmanager",
        "prometheus-node-exporter",
    ] {
        support::require_tool(t);
    }
    let env = support::StackEnv::new(
        "bssctl-sec-",
        "sec-prom",
        "  exporters: {node: {}}\n  prometheus: {scrapeInterval: 1s, evaluationInterval: 1s}\n  alertmanager: {}\n",
    );
    let (code, out, err) = env.run(&["apply"], &[]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    let prom = format!("http://127.0.0.1:{}", env.port(9090));

    // The agent's scrape job carries the token: the target is up.
    let start = Instant::now();
    loop {
        let (_, body, _) = http(
            &format!("{prom}/api/v1/query?query=up%7Bjob%3D%22bssctl%22%7D"),
            "GET",
            &[],
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["data"]["result"][0]["value"][1] == "1" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent's scrape is not up: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // No lifecycle API: a page cannot quit or reload it; no CORS for foreign origins.
    for path in ["/-/quit", "/-/reload"] {
        let (code, body, _) = http(&format!("{prom}{path}"), "POST", &[]);
        assert_ne!(code, 200, "{path} answered 200: {body}");
    }
    let (code, _, _) = http(&format!("{prom}/-/ready"), "GET", &[]);
    assert_eq!(code, 200, "Prometheus went away after POST /-/quit");
    let (_, _, names) = http(
        &format!("{prom}/api/v1/status/buildinfo"),
        "GET",
        &[("Origin", "http://evil.example")],
    );
    assert!(
        !names
            .iter()
            .any(|h| h.eq_ignore_ascii_case("access-control-allow-origin")),
        "CORS granted to a foreign origin: {names:?}"
    );

    // A changed scrape interval is reloaded in place by SIGHUP (same process), and taken.
    let pid = |name: &str| {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(env.root.join(format!("run/{name}.json"))).unwrap(),
        )
        .unwrap();
        v["pid"].as_u64().unwrap()
    };
    let before = pid("prometheus");
    let text = std::fs::read_to_string(&env.file).unwrap();
    std::fs::write(
        &env.file,
        text.replace("scrapeInterval: 1s", "scrapeInterval: 2s"),
    )
    .unwrap();
    let (code, out, err) = env.run(&["apply"], &[]);
    assert_eq!(code, 0, "re-apply failed:\n{out}\n{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("prometheus") && l.contains("SIGHUP reload ok")),
        "{err}"
    );
    assert_eq!(
        pid("prometheus"),
        before,
        "Prometheus was restarted, not reloaded"
    );
    let (_, cfg, _) = http(&format!("{prom}/api/v1/status/config"), "GET", &[]);
    assert!(cfg.contains("scrape_interval: 2s"), "{cfg}");
}

/// A fake PostgreSQL on a dead member's port that asks for a cleartext password: the probes
/// (the same client the agent and the failover monitor use) send it nothing.
#[test]
fn a_fake_postgres_asking_for_a_cleartext_password_receives_no_password() {
    use controller::engine::clients::{Clients, PgOp};
    use controller::engine::runtime::Endpoint;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.yaml");
    std::fs::write(
        &file,
        "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: sec-fake}\nspec:\n  postgres: {replicas: 1}\n",
    )
    .unwrap();
    let l = support::load_with_state(&file, &dir.path().join("state"));
    let t = l.validated;
    let secret = "fake-server-must-never-see-this-0123456789";
    let sfile = &t.secrets["postgres-superuser-password"].file;
    std::fs::create_dir_all(Path::new(sfile).parent().unwrap()).unwrap();
    std::fs::write(sfile, secret).unwrap();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let (g2, stop) = (
        got.clone(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    let s2 = stop.clone();
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let mut connections = 0;
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            let Ok((mut c, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            connections += 1;
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            // Startup message, then AuthenticationCleartextPassword, then whatever comes.
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(2) {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => g2.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        }
        connections
    });

    let store: std::sync::Arc<dyn controller::engine::StateStore> =
        std::sync::Arc::new(controller::engine::FileStore::new(&t));
    let clients = controller::engine::RealClients::new(&t, store);
    let member = t.postgres.as_ref().unwrap().members[0].clone();
    let ep = Endpoint {
        host: "127.0.0.1".into(),
        port,
    };
    let view = clients.member_view(&ep, &member, Duration::from_secs(2));
    assert!(!view.reachable, "{view:?}");
    // Either the relay names the refused method or (on a loaded machine) the cut connection
    // reaches the driver first; what matters is asserted below: no password message was sent.
    assert!(
        view.error.contains("cleartext") || view.error.contains("closed"),
        "{}",
        view.error
    );
    let rt = controller::runtime::local::Local::new(&{
        let mut t2 = t.clone();
        t2.postgres.as_mut().unwrap().members[0].port = port;
        t2
    });
    let mut m2 = member.clone();
    m2.port = port;
    let r = clients.pg(&rt, &m2, &PgOp::InRecovery, Duration::from_secs(2));
    assert!(r.is_err(), "{r:?}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let connections = server.join().unwrap();
    assert!(connections >= 2, "the probes never reached the fake server");
    let got = got.lock().unwrap();
    assert!(
        !String::from_utf8_lossy(&got).contains(secret) && !got.contains(&b'p'),
        "the fake server received a password message: {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// `redis-cli` as `user` (password from the environment, never on its command line).
fn redis_cli(port: u16, user: Option<&str>, password: Option<&str>, args: &[&str]) -> String {
    let mut c = std::process::Command::new(support::require_tool("redis-cli"));
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--no-auth-warning",
    ]);
    if let Some(u) = user {
        c.args(["--user", u]);
    }
    if let Some(p) = password {
        c.env("REDISCLI_AUTH", p);
    }
    let out = c.args(args).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

/// A listener that records every byte sent to it (for `secs`), answering nothing.
fn recorder(secs: u64) -> (u16, std::thread::JoinHandle<(usize, Vec<u8>)>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let (mut n, mut got) = (0, Vec::new());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            let Ok((mut c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            n += 1;
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(k) = c.read(&mut buf) {
                if k == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..k]);
            }
        }
        (n, got)
    });
    (port, h)
}

/// `raw` with the `Host` header a browser sends.
fn rawh(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    let mut h = vec![("Host", format!("127.0.0.1:{port}"))];
    h.extend(headers.iter().cloned());
    raw(port, method, path, &h, body)
}

/// What a web page (or any local user without the credentials) can do to the components'
/// own endpoints: nothing. Alertmanager's API and `/-/reload` and the postgres exporter's
/// `/metrics` and `/probe` want basic auth; redis_exporter's `/scrape?target=` sends no password
/// anywhere else; Envoy's admin is not on TCP (the stats port answers 404 to `/quitquitquit`);
/// the backend works as its Redis ACL user and is refused admin commands; `default` is off.
#[test]
fn component_endpoints_refuse_browsers_and_callers_without_credentials() {
    for t in [
        "prometheus",
        "prometheus-alertmanager",
        "prometheus-postgres-exporter",
        "prometheus-redis-exporter",
        "redis-server",
        "envoy",
    ] {
        support::require_tool(t);
    }
    let env = support::StackEnv::new(
        "bssctl-sec-",
        "sec-ends",
        "  postgres: {replicas: 0}\n  redis: {}\n  kafka: {}\n  backend: {}\n  envoy: {}\n  exporters: {postgres: {}, redis: {}}\n  prometheus: {scrapeInterval: 1s, evaluationInterval: 1s}\n  alertmanager: {}\n",
    );
    let (code, out, err) = env.run(&["apply"], &[]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    let evil = ("Origin", "http://evil.example".to_string());
    let am_auth = (
        "Authorization",
        controller::probe::basic_auth_header("bssctl", &env.secret("alertmanager-web-password")),
    );

    // Alertmanager: a simple cross-origin POST (text/plain, no preflight) creates no silence,
    // /-/reload and the API answer 401 without the credentials.
    let am = env.port(9093);
    let silence = r#"{"matchers":[{"name":"alertname","value":".*","isRegex":true}],"startsAt":"2020-01-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z","createdBy":"evil","comment":"x"}"#;
    for (method, path, body) in [
        ("POST", "/api/v2/silences", silence),
        ("POST", "/api/v1/silences", silence),
        ("GET", "/api/v2/silences", ""),
        ("POST", "/-/reload", ""),
        ("GET", "/-/ready", ""),
    ] {
        let (code, body) = rawh(
            am,
            method,
            path,
            &[evil.clone(), ("Content-Type", "text/plain".into())],
            body,
        );
        assert_eq!(
            code, 401,
            "{method} {path} without credentials: {code} {body}"
        );
    }
    let (code, body) = rawh(
        am,
        "GET",
        "/api/v2/silences",
        std::slice::from_ref(&am_auth),
        "",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.trim(), "[]", "a silence was created: {body}");

    // Prometheus sends every credential: Alertmanager discovered, every scrape up.
    let prom = format!("http://127.0.0.1:{}", env.port(9090));
    let start = Instant::now();
    loop {
        let (_, up, _) = http(&format!("{prom}/api/v1/query?query=up"), "GET", &[]);
        let (_, ams, _) = http(&format!("{prom}/api/v1/alertmanagers"), "GET", &[]);
        let v: serde_json::Value = serde_json::from_str(&up).unwrap();
        let a: serde_json::Value = serde_json::from_str(&ams).unwrap();
        let jobs: Vec<(String, String)> = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["metric"]["job"].as_str().unwrap_or("").to_string(),
                    r["value"][1].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let wanted = ["alertmanager", "postgres", "redis", "envoy", "backend"];
        let all_up = wanted
            .iter()
            .all(|j| jobs.iter().any(|(n, u)| n == j && u == "1"));
        let am_found = a["data"]["activeAlertmanagers"]
            .as_array()
            .is_some_and(|x| !x.is_empty());
        if all_up && am_found {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "scrapes not all up or Alertmanager not discovered: {jobs:?} {ams}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // postgres_exporter: /metrics and the multi-target /probe want the credentials; a probe of
    // a listener of ours is never even attempted.
    let (fake, rec) = recorder(4);
    let pgx = env.port(9187);
    for path in [
        "/metrics".to_string(),
        format!("/probe?target=127.0.0.1:{fake}"),
    ] {
        let (code, body) = rawh(pgx, "GET", &path, std::slice::from_ref(&evil), "");
        assert_eq!(code, 401, "GET {path}: {code} {body}");
    }
    let x_auth = (
        "Authorization",
        controller::probe::basic_auth_header("bssctl", &env.secret("exporter-web-password")),
    );
    let (code, body) = rawh(pgx, "GET", "/metrics", &[x_auth], "");
    assert!(code == 200 && body.contains("pg_up 1"), "{code}");

    // redis_exporter 1.45 has no basic auth: /scrape?target= answers, but what it sends to a
    // foreign target carries no password (the password map names only our Redis).
    let (rfake, rrec) = recorder(4);
    let (code, _) = rawh(
        env.port(9121),
        "GET",
        &format!("/scrape?target=redis://127.0.0.1:{rfake}"),
        std::slice::from_ref(&evil),
        "",
    );
    assert_eq!(code, 200);
    let (pg_conns, _) = rec.join().unwrap();
    assert_eq!(
        pg_conns, 0,
        "postgres_exporter probed a target without credentials"
    );
    let (n, got) = rrec.join().unwrap();
    assert!(n >= 1, "redis_exporter did not reach the fake target");
    let got = String::from_utf8_lossy(&got).to_string();
    for s in [
        "redis-password",
        "redis-exporter-password",
        "redis-backend-password",
        "redis-probe-password",
    ] {
        assert!(
            !got.contains(&env.secret(s)),
            "{s} sent to a foreign target: {got:?}"
        );
    }
    assert!(!got.to_ascii_uppercase().contains("AUTH"), "{got:?}");

    // Envoy: the admin is a 0600 unix socket; the TCP port serves only GET /stats/prometheus
    // and /ready, so /quitquitquit from a page (or anyone) does nothing.
    let sock = env.root.join("run/envoy/admin.sock");
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()),
        "{sock:?}"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let admin_tcp = env.port(15000);
    for (method, path) in [
        ("POST", "/quitquitquit"),
        ("POST", "/healthcheck/fail"),
        ("POST", "/runtime_modify?x=1"),
        ("GET", "/config_dump"),
        ("POST", "/stats/prometheus"),
        ("GET", "/stats/prometheus/../../quitquitquit"),
        ("GET", "/stats/prometheus%2F..%2Fquitquitquit"),
    ] {
        let (code, body) = rawh(admin_tcp, method, path, std::slice::from_ref(&evil), "");
        assert!(
            code == 404 || code == 400,
            "{method} {path} on the stats port: {code} {body}"
        );
    }
    let (code, body) = rawh(admin_tcp, "GET", "/stats/prometheus", &[], "");
    assert!(code == 200 && body.contains("envoy_"), "{code}");
    let (code, body) = rawh(admin_tcp, "GET", "/ready", &[], "");
    assert!(
        code == 200 && body.contains("LIVE"),
        "envoy went away: {code} {body}"
    );

    // Redis: `default` is off; the backend's user works and is refused admin commands.
    let rp = env.port(6379);
    let out = redis_cli(rp, None, None, &["PING"]);
    assert!(out.contains("NOAUTH"), "{out}");
    let out = redis_cli(rp, Some("default"), Some("anything"), &["PING"]);
    assert!(!out.contains("PONG"), "{out}");
    // From here on the ACL log must stay empty while the backend, the exporter and the
    // probes work (the refusals above are logged).
    let admin = env.secret("redis-password");
    let out = redis_cli(rp, Some("admin"), Some(&admin), &["ACL", "LOG", "RESET"]);
    assert_eq!(out, "OK");
    let key = env.secret("backend-api-key");
    let backend = env.port(8080);
    let (code, body) = rawh(
        backend,
        "POST",
        "/api/v1/customers",
        &[
            ("X-API-Key", key.clone()),
            ("Content-Type", "application/json".into()),
        ],
        r#"{"firstName": "Ada", "lastName": "Acl", "email": "ada-acl@example.com"}"#,
    );
    assert_eq!(code, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        let (code, body) = rawh(
            backend,
            "GET",
            &format!("/api/v1/customers/{id}"),
            &[("X-API-Key", key.clone())],
            "",
        );
        assert_eq!(code, 200, "{body}");
    }
    std::thread::sleep(Duration::from_secs(2)); // a few scrapes and probes
    let keys = redis_cli(rp, Some("admin"), Some(&admin), &["KEYS", "bss:*"]);
    assert!(
        keys.contains(&id),
        "the backend cached nothing as its ACL user: {keys}\nACL LOG: {}\nbackend log: {}",
        redis_cli(rp, Some("admin"), Some(&admin), &["ACL", "LOG"]),
        std::fs::read_to_string(env.root.join("logs/backend.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Nobody was refused a command it needs (backend, exporter, probe): the ACL log is empty.
    let log = redis_cli(rp, Some("admin"), Some(&admin), &["ACL", "LOG"]);
    assert!(log.is_empty(), "a client was refused a command:\n{log}");
    let be = env.secret("redis-backend-password");
    for args in [
        &["FLUSHALL"][..],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["ACL", "LIST"],
        &["SET", "other:key", "1"],
        &["SUBSCRIBE", "x"],
    ] {
        let out = redis_cli(rp, Some("backend"), Some(&be), args);
        assert!(out.contains("NOPERM"), "backend may run {args:?}: {out}");
    }
    let probe = env.secret("redis-probe-password");
    let out = redis_cli(rp, Some("bssctl-probe"), Some(&probe), &["GET", "bss:x"]);
    assert!(out.contains("NOPERM"), "{out}");
}

/// A fake Redis on a dead Redis port: the health probe (the agent's and apply's) sends the
/// probe user's name and password, which open PING and INFO only; never the admin's, the
/// backend's or the exporter's.
#[test]
fn a_fake_redis_on_a_dead_port_receives_only_the_probe_users_password() {
    use controller::render::Kind;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.yaml");
    std::fs::write(
        &file,
        "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: sec-fake-redis}\nspec:\n  redis: {}\n  exporters: {redis: {}}\n",
    )
    .unwrap();
    let l = support::load_with_state(&file, &dir.path().join("state"));
    let mut t = l.validated;
    let mut values = Vec::new();
    for (name, s) in &t.secrets {
        let v = format!("{name}-value-the-impostor-must-not-see-0123456789");
        std::fs::create_dir_all(Path::new(&s.file).parent().unwrap()).unwrap();
        std::fs::write(&s.file, &v).unwrap();
        values.push((name.clone(), v));
    }
    let (port, rec) = recorder(3);
    t.redis.as_mut().unwrap().endpoint.port = port;
    let store: std::sync::Arc<dyn controller::engine::StateStore> =
        std::sync::Arc::new(controller::engine::FileStore::new(&t));
    let clients = controller::engine::RealClients::new(&t, store);
    let mut rt = controller::runtime::local::Local::new(&t);
    let r = controller::engine::health::health(&t, &mut rt, &clients, "redis", Kind::Redis);
    assert!(r.is_err(), "{r:?}");
    let (n, got) = rec.join().unwrap();
    assert!(n >= 1, "the probe never reached the fake server");
    let got = String::from_utf8_lossy(&got).to_string();
    for (name, v) in &values {
        if name == "redis-probe-password" {
            assert!(got.contains(v.as_str()), "the probe sent: {got:?}");
        } else {
            assert!(
                !got.contains(v.as_str()),
                "{name} sent to the impostor: {got:?}"
            );
        }
    }
    assert!(got.contains("bssctl-probe"), "{got:?}");
}
