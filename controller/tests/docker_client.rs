//! The Docker client layer against the real engine: a Redis container made the way the Docker
//! runtime makes every component (labels, read-only config, 0400 secret files owned by the
//! component's uid and no secret in `docker inspect`, 127.0.0.1-only ports, Docker health check,
//! non-root user), then exec, logs, pause, network disconnect, kill and removal leaving nothing.
//! Builds the images it needs when they are missing; fails naming the install step when Docker is
//! not there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use controller::docker::client::{Client, HealthState};
use controller::docker::{self, files, images, spec};
use controller::render::{self, Kind};
use controller::topology::{self, ValidateOptions};

fn connect() -> Client {
    match Client::connect() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

struct Progress;
impl images::Progress for Progress {
    fn line(&mut self, image: &str, text: &str) {
        eprintln!("images: {image}: {text}");
    }
}

fn redis_roundtrip(port: u16, password: &str, timeout: Duration) -> std::io::Result<String> {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "AUTH admin {password}\r\nPING\r\n")?;
    let mut buf = [0u8; 64];
    let mut got = String::new();
    while !got.contains("PONG") && !got.contains("ERR") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(got)
}

#[test]
fn a_component_container_is_made_observed_and_removed_through_the_engine() {
    let client = connect();
    assert_eq!(
        client.api_version(),
        "1.41",
        "the engine here speaks API 1.41"
    );
    let host = images::HostInputs::read().expect("host apt sources");
    let built = client
        .block_on(images::ensure(
            &client.docker,
            &host,
            &["redis"],
            &mut Progress,
        ))
        .expect("images build");
    let redis_image = built
        .iter()
        .find(|o| o.name == "redis")
        .unwrap()
        .tag
        .clone();

    let env = format!("dkt{}", std::process::id());
    let offset = 20000 + (std::process::id() % 5000) as u16;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {{name: {env}}}\nspec:\n  runtime: {{kind: docker, portOffset: {offset}}}\n  redis: {{}}\n"
        ),
    )
    .unwrap();
    let l = topology::load(&file, &ValidateOptions::default()).expect("valid topology");
    let t = &l.validated;
    let bundle = render::render(t, &render::load_templates(None).unwrap()).unwrap();
    let cb = &bundle.components["redis"];
    assert_eq!(cb.kind, Kind::Redis);
    let password = "s3cret-Value-for-the-test-0123456789".to_string();
    // Every user's password the same here: the admin user answers the round trips below.
    let values: BTreeMap<String, String> = t
        .secrets
        .keys()
        .map(|k| (k.clone(), password.clone()))
        .collect();
    let dirs = spec::HostDirs {
        root: dir.path().join("docker"),
    };
    let s = spec::container_spec(t, "redis", cb, &redis_image, &dirs);
    let port = s.ports[0].1;
    files::put_config(&dirs.config("redis"), cb).unwrap();
    let secrets = spec::secret_files(t, Kind::Redis, cb, &values);
    assert!(secrets.iter().any(|f| f.rel == "redis-acl.conf"));
    assert!(
        secrets.iter().all(|f| !f.content.contains(&password)),
        "the ACL file holds hashes, never a password: {secrets:?}"
    );
    files::put_secrets(&dirs.secrets("redis"), &secrets, spec::uid_of(Kind::Redis)).unwrap();

    let net = docker::network_name(&env);
    let vol = docker::volume_name(&env, "redis");
    let cleanup = |c: &Client| {
        let _ = c.remove(&s.name);
        let _ = c.remove_volume(&vol);
        let _ = c.remove_network(&net);
    };
    cleanup(&client);
    assert!(
        client.ensure_network(&net, &env).unwrap(),
        "network created"
    );
    assert!(
        !client.ensure_network(&net, &env).unwrap(),
        "second ensure is a no-op"
    );
    assert!(client
        .ensure_volume(&vol, &Client::env_labels(&env))
        .unwrap());
    client.create(&s).unwrap();
    client.start(&s.name).unwrap();

    // Healthy by Docker's own check, within the start period.
    let start = Instant::now();
    let obs = loop {
        let o = client.inspect(&s.name).unwrap().expect("container exists");
        if o.health == HealthState::Healthy {
            break o;
        }
        assert!(
            o.running,
            "container stopped: {}",
            client.logs(&s.name, 50).unwrap()
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not healthy: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(obs.labels["io.bssctl.environment"], env);
    assert_eq!(obs.labels["io.bssctl.component"], "redis");
    assert_eq!(obs.labels["io.bssctl.config-hash"], cb.hash());
    assert!(
        obs.ips.contains_key(&net),
        "on the environment's network: {obs:?}"
    );

    // The secret reaches Redis (AUTH works through the 127.0.0.1 port) but not the inspect output.
    let reply = redis_roundtrip(port, &password, Duration::from_secs(2)).unwrap();
    assert!(reply.contains("+OK") && reply.contains("+PONG"), "{reply}");
    let raw = client
        .block_on(client.docker.inspect_container(&s.name, None))
        .unwrap();
    let inspect = serde_json::to_string(&raw).unwrap();
    assert!(
        !inspect.contains(&password),
        "secret value visible in docker inspect"
    );
    let bindings = raw.host_config.unwrap().port_bindings.unwrap();
    for b in bindings.values().flatten().flatten() {
        assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"), "{b:?}");
    }

    let sh = |cmd: &str| {
        client
            .exec(
                &s.name,
                &["sh".into(), "-c".into(), cmd.into()],
                None,
                Duration::from_secs(10),
            )
            .unwrap()
    };
    let who = sh("id -u; stat -c '%a %u' /run/secrets/bssctl/redis-acl.conf");
    assert_eq!(who.exit_code, 0, "{who:?}");
    assert_eq!(
        who.output.split_whitespace().collect::<Vec<_>>(),
        ["10001", "400", "10001"]
    );
    let ro = sh("touch /etc/bssctl/redis/x");
    assert_ne!(ro.exit_code, 0, "config must be read-only: {ro:?}");
    assert!(ro.output.contains("Read-only"), "{ro:?}");
    let logs = client.logs(&s.name, 100).unwrap();
    assert!(logs.contains("Ready to accept connections"), "{logs}");

    // Pause: the port stops answering; unpause: it answers again.
    client.pause(&s.name).unwrap();
    assert!(client.inspect(&s.name).unwrap().unwrap().paused);
    assert!(redis_roundtrip(port, &password, Duration::from_millis(500)).is_err());
    client.unpause(&s.name).unwrap();
    assert!(redis_roundtrip(port, &password, Duration::from_secs(2))
        .unwrap()
        .contains("PONG"));

    // Partition: off the network, still controlled by the engine; back on, under its name.
    client.disconnect(&net, &s.name).unwrap();
    let o = client.inspect(&s.name).unwrap().unwrap();
    assert!(!o.ips.contains_key(&net) && o.running, "{o:?}");
    client.connect_network(&net, &s.name, &[]).unwrap();
    assert!(client
        .inspect(&s.name)
        .unwrap()
        .unwrap()
        .ips
        .contains_key(&net));

    // Fencing out of band: SIGKILL through the API.
    client.kill(&s.name, "KILL").unwrap();
    let o = client.inspect(&s.name).unwrap().unwrap();
    assert!(!o.running, "{o:?}");
    assert_eq!(
        client.containers(&env).unwrap().len(),
        1,
        "listed by our labels"
    );

    assert!(client.remove(&s.name).unwrap());
    assert!(client.remove_volume(&vol).unwrap());
    assert!(client.remove_network(&net).unwrap());
    assert!(client.containers(&env).unwrap().is_empty());
    assert!(client.volumes(&env).unwrap().is_empty());
    assert!(client.networks(&env).unwrap().is_empty());
    cleanup(&client);
}
