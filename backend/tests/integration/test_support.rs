//! Real services for tests: PostgreSQL (initdb from a cached template), Redis and the tansu
//! broker, each on a free port in a temp dir, stopped on drop. A missing tool fails the test
//! with a message naming `bash dev/setup.sh`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backend::config::Config;
use serde_json::{json, Value};
use tempfile::TempDir;

pub const API_KEY: &str = "test-key-0123456789";
pub const DB_PASSWORD: &str = "app-pw-!x";
pub const REDIS_PASSWORD: &str = "redis-pw-y";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Finds a tool on PATH, in $BSSCTL_TOOLS/bin (default ~/.cache/bssctl/tools/bin) or in the
/// Debian PostgreSQL directory; panics with the install step otherwise.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let tools = std::env::var("BSSCTL_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/bssctl/tools")
        });
    dirs.push(tools.join("bin"));
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("bin")).collect();
        v.sort();
        dirs.extend(v.into_iter().rev());
    }
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required tool `{name}` not found on PATH or in {tools:?}/bin: run `bash dev/setup.sh` to install it");
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn stop_child(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ------------------------------------------------------------------ PostgreSQL

/// PostgreSQL refuses to run as root: when the tests run as root, its processes run as the
/// `postgres` user (created by the Debian package) through `setpriv`, which execs in place so
/// the child pid is the server itself.
fn pg_command(bin: &Path) -> Command {
    let uid = |args: &[&str]| -> String {
        let o = Command::new("id").args(args).output().expect("run id");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    if uid(&["-u"]) == "0" {
        let (u, g) = (uid(&["-u", "postgres"]), uid(&["-g", "postgres"]));
        assert!(
            !u.is_empty(),
            "running as root needs the `postgres` user: run `bash dev/setup.sh`"
        );
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={u}"))
            .arg(format!("--regid={g}"))
            .arg("--clear-groups")
            .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn chown_pg(path: &Path) {
    let o = Command::new("id").arg("-u").output().expect("run id");
    if String::from_utf8_lossy(&o.stdout).trim() == "0" {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "chown of {path:?} failed");
    }
}

pub struct Postgres {
    pub port: u16,
    pub dir: TempDir,
    child: Child,
}

/// initdb once into a template directory shared by all tests (atomic rename), then copy.
fn pg_template() -> PathBuf {
    // One initdb per process (tests are threads); across processes (nextest) the atomic
    // rename of a uniquely named staging directory decides.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let base = std::env::temp_dir();
    let initdb = tool("initdb");
    let version = Command::new(&initdb).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .last()
        .unwrap_or("x")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect::<String>();
    let template = base.join(format!("pg-template-{v}-v1"));
    if template.join("PG_VERSION").exists() {
        return template;
    }
    let staging = base.join(format!(
        "pg-template-staging-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).unwrap();
    chown_pg(&staging);
    let out = pg_command(&initdb)
        .args(["-D"])
        .arg(&staging)
        .args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C.UTF-8",
        ])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        staging.join("pg_hba.conf"),
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    chown_pg(&staging);
    if std::fs::rename(&staging, &template).is_err() {
        let _ = std::fs::remove_dir_all(&staging); // another test won the race
    }
    template
}

impl Postgres {
    pub async fn start() -> Postgres {
        let template = pg_template();
        let dir = tempfile::Builder::new()
            .prefix("bss-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let st = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .unwrap();
        assert!(st.success(), "copy of the PostgreSQL template failed");
        chown_pg(dir.path());
        let postgres = tool("postgres");
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
            chown_pg(dir.path());
            let mut child = pg_command(&postgres)
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
                .args(["-c", "max_connections=200", "-c", "shared_buffers=64MB"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start postgres");
            if wait_port(port, Duration::from_secs(20)) {
                let pg = Postgres { port, dir, child };
                pg.bootstrap().await;
                return pg;
            }
            stop_child(&mut child, "-INT");
        }
        panic!(
            "PostgreSQL did not start; see its log under {:?}",
            dir.path()
        );
    }

    pub fn admin_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn app_url(&self) -> String {
        format!("postgres://bss_app@127.0.0.1:{}/bss", self.port)
    }

    async fn bootstrap(&self) {
        use sqlx::ConnectOptions;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut conn = loop {
            let opts: sqlx::postgres::PgConnectOptions =
                self.admin_url("postgres").parse().unwrap();
            match opts.connect().await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("cannot connect to test PostgreSQL: {e}"),
            }
        };
        sqlx::raw_sql(&format!(
            "CREATE ROLE bss_app LOGIN PASSWORD '{DB_PASSWORD}'"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::raw_sql("CREATE DATABASE bss OWNER bss_app")
            .execute(&mut conn)
            .await
            .unwrap();
    }

    /// Runs SQL with the real `psql` client, as a person would.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(tool("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "bss",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop_child(&mut self.child, "-INT");
    }
}

// ------------------------------------------------------------------ Redis

pub struct Redis {
    pub port: u16,
    pub dir: TempDir,
    child: Child,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("bss-redis-")
            .tempdir()
            .unwrap();
        let bin = tool("redis-server");
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--appendonly", "no", "--requirepass", REDIS_PASSWORD])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            if wait_port(port, Duration::from_secs(10)) {
                return Redis { port, dir, child };
            }
            stop_child(&mut child, "-TERM");
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        stop_child(&mut self.child, "-TERM");
    }
}

// ------------------------------------------------------------------ tansu (Kafka protocol)

pub struct Tansu {
    pub port: u16,
    pub dir: TempDir,
    child: Option<Child>,
}

impl Tansu {
    pub fn start() -> Tansu {
        let dir = tempfile::Builder::new()
            .prefix("bss-tansu-")
            .tempdir()
            .unwrap();
        let mut t = Tansu {
            port: free_port(),
            dir,
            child: None,
        };
        for _ in 0..5 {
            if t.spawn() {
                return t;
            }
            t.stop();
            t.port = free_port();
        }
        panic!("tansu did not start");
    }

    fn spawn(&mut self) -> bool {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        let child = Command::new(tool("tansu"))
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(15))
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (memory storage: its data is gone).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, "-TERM");
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "tansu did not restart on port {}", self.port);
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------ whole stack

pub struct Stack {
    pub pg: Postgres,
    pub redis: Redis,
    pub kafka: Tansu,
    pub dir: TempDir,
    pub config_path: PathBuf,
}

impl Stack {
    pub async fn start() -> Stack {
        let (pg, redis, kafka) = tokio::join!(Postgres::start(), async { Redis::start() }, async {
            Tansu::start()
        });
        let dir = tempfile::Builder::new()
            .prefix("bss-stack-")
            .tempdir()
            .unwrap();
        let config_path = write_config(dir.path(), &pg, &redis, &kafka.brokers(), "127.0.0.1:0");
        let s = Stack {
            pg,
            redis,
            kafka,
            dir,
            config_path,
        };
        let cfg = s.config();
        let pool = backend::db::pool(&cfg.database.write_url, cfg.database.password.as_deref(), 2)
            .unwrap();
        backend::db::migrate(&pool).await.unwrap();
        pool.close().await;
        s
    }

    pub fn config(&self) -> Config {
        let mut c = Config::load(&self.config_path).unwrap();
        c.outbox.poll_interval_ms = 20;
        c
    }
}

pub fn write_config(
    dir: &Path,
    pg: &Postgres,
    redis: &Redis,
    brokers: &str,
    listen: &str,
) -> PathBuf {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(
        secrets.join("postgres-app-password"),
        format!("{DB_PASSWORD}\n"),
    )
    .unwrap();
    std::fs::write(secrets.join("redis-password"), REDIS_PASSWORD).unwrap();
    std::fs::write(
        secrets.join("backend-api-keys"),
        format!("# keys\n{API_KEY}\nother-key\n"),
    )
    .unwrap();
    let yaml = format!(
        r#"listen: {listen}
database:
  writeUrl: {w}
  readUrl: {w}
  passwordFile: {s}/postgres-app-password
  maxConnections: 10
redis:
  url: {r}
  passwordFile: {s}/redis-password
kafka:
  brokers: {brokers}
  topicPrefix: bss
auth:
  apiKeysFile: {s}/backend-api-keys
cache:
  ttlSeconds: 300
outbox:
  pollIntervalMs: 20
  batchSize: 500
streams:
  groupPrefix: bss
"#,
        w = pg.app_url(),
        r = redis.url(),
        s = secrets.display()
    );
    let p = dir.join("backend.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

// ------------------------------------------------------------------ HTTP client

pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Api {
    pub fn new(addr: std::net::SocketAddr) -> Api {
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Resp {
        let url = format!("{}{}", self.base, path);
        let mut rb = self
            .client
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(k) = key {
            rb = rb.header("x-api-key", k);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp {
            status,
            body,
            headers,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, None, Some(API_KEY)).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send("POST", path, Some(body), Some(API_KEY)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.send("PUT", path, Some(body), Some(API_KEY)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, None, Some(API_KEY)).await
    }
}

/// Reads every message of `topic` (all partitions, from the beginning) until `want` messages
/// arrived or `timeout` passed. Returns (key, payload JSON, partition, offset, timestamp ms).
pub fn consume_all(
    brokers: &str,
    topic: &str,
    want: usize,
    timeout: Duration,
) -> Vec<(String, Value, i32, i64, i64)> {
    consume_until(brokers, topic, timeout, |v| v.len() >= want)
}

/// Like `consume_all`, stopping when `done` holds for what was read so far.
pub fn consume_until(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[(String, Value, i32, i64, i64)]) -> bool,
) -> Vec<(String, Value, i32, i64, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let c: BaseConsumer = backend::kafka::base_config(brokers)
        .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..backend::kafka::PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let key = m
                .key()
                .map(|k| String::from_utf8_lossy(k).to_string())
                .unwrap_or_default();
            let v: Value = m
                .payload()
                .and_then(|p| serde_json::from_slice(p).ok())
                .unwrap_or(Value::Null);
            out.push((
                key,
                v,
                m.partition(),
                m.offset(),
                m.timestamp().to_millis().unwrap_or(0),
            ));
        }
    }
    out
}

/// A backend started on the real stack, and a client for its API.
pub struct Fixture {
    #[allow(dead_code)]
    pub stack: Stack,
    pub running: backend::server::Running,
    pub api: Api,
}

pub async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

/// A fixture whose backend configuration `adjust` changes first (a smaller pool, say).
pub async fn fixture_with(adjust: impl FnOnce(&mut Config)) -> Fixture {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BSS_LOG").unwrap_or_else(|_| "off".into()),
        )
        .with_test_writer()
        .try_init();
    let stack = Stack::start().await;
    let mut cfg = stack.config();
    adjust(&mut cfg);
    let running = backend::server::start(cfg).await.unwrap();
    assert!(backend::invalidate::wait_live(&running.state.cache, Duration::from_secs(10)).await);
    let api = Api::new(running.addr);
    Fixture {
        stack,
        running,
        api,
    }
}

pub async fn customer(api: &Api, n: &str) -> Value {
    let r = api
        .post(
            "/api/v1/customers",
            json!({"firstName": "Ada", "lastName": n, "email": format!("{n}-{}@example.com", uuid::Uuid::new_v4())}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}
