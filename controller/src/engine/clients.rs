//! The client seam: how the controller talks to the components themselves (SQL to PostgreSQL,
//! HTTP to the exporters, Prometheus, Alertmanager, Envoy and the backend, Redis PING, TCP).
//! Addresses come from the runtime (`Runtime::endpoint`), passwords from the state store, so one
//! implementation serves every runtime; the engine's scenario tests swap in a fake world.
//!
//! It decides nothing: what "healthy" means is `engine::health`, what to do is the engine's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::failover::MemberView;
use crate::engine::runtime::{Endpoint, Runtime};
use crate::engine::store::StateStore;
use crate::pgsql;
use crate::probe;
use crate::topology::model::{PgMember, ValidatedTopology, WebAuthModel};

/// A failed exchange with a component.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ClientError {
    #[error("failed to reach {target}: {detail}")]
    Connect { target: String, detail: String },
    #[error("failed on {target}: {detail}")]
    Query { target: String, detail: String },
    #[error("failed to read secret: {0}")]
    Secret(String),
    #[error("failed: {0} is not part of this topology")]
    Unknown(String),
}

impl ClientError {
    pub fn query(target: &str, detail: impl std::fmt::Display) -> ClientError {
        ClientError::Query {
            target: target.into(),
            detail: detail.to_string(),
        }
    }
}

/// SQL the engine runs on a member (as bssctl's superuser).
#[derive(Debug, Clone, PartialEq)]
pub enum PgOp {
    InRecovery,
    /// pg_stat_replication of a primary.
    Replication,
    /// `pg_promote(true, wait_seconds)`; replies whether it left recovery.
    Promote {
        wait_seconds: i32,
    },
    /// `pg_reload_conf()`, then the errors in pg_file_settings.
    ReloadConf,
    Checkpoint,
    /// Roles (replication and application), the database, one slot per replica. Idempotent.
    Bootstrap {
        replication_user: String,
        app_user: String,
        database: String,
        slots: Vec<String>,
    },
    EnsureSlot(String),
    DropSlot(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum PgReply {
    Bool(bool),
    Replication(Vec<pgsql::ReplicaStat>),
    /// Errors found after a reload (empty: none).
    Errors(Vec<String>),
    Done,
}

/// An HTTP request the engine makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

pub trait Clients: Send + Sync {
    fn pg(
        &self,
        rt: &dyn Runtime,
        member: &PgMember,
        op: &PgOp,
        timeout: Duration,
    ) -> Result<PgReply, ClientError>;
    /// Role, WAL positions and receiver state of one member at `ep`, with a hard deadline.
    /// (Takes the endpoint, not the runtime, so members are probed in parallel.)
    fn member_view(&self, ep: &Endpoint, member: &PgMember, timeout: Duration) -> MemberView;
    fn http(
        &self,
        rt: &dyn Runtime,
        component: &str,
        port: u16,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, String), ClientError>;
    /// Redis PING as the ACL user whose password is `password_secret` (bssctl's probe user:
    /// PING and INFO only, so an impostor on a dead port learns nothing that opens anything else).
    fn redis_ping(
        &self,
        rt: &dyn Runtime,
        component: &str,
        port: u16,
        password_secret: Option<&str>,
        timeout: Duration,
    ) -> Result<(), ClientError>;
    fn tcp(&self, rt: &dyn Runtime, component: &str, port: u16, timeout: Duration) -> bool;
}

/// Real clients: PostgreSQL driver, HTTP, Redis protocol, at the runtime's endpoints.
pub struct RealClients {
    superuser: Option<String>,
    store: Arc<dyn StateStore>,
    /// Components whose HTTP interface needs basic auth: component -> (user, password secret).
    web_auth: BTreeMap<String, (String, String)>,
    /// Redis ACL users by the secret holding their password.
    redis_users: BTreeMap<String, String>,
    /// Idle probe connections per member endpoint (see `on_kept`).
    kept: Kept,
}

/// Idle, authenticated probe connections by endpoint. A probe takes one of its endpoint's
/// connections out while it uses it and puts it back only after a whole, successful exchange.
type Kept = Arc<Mutex<HashMap<String, Vec<postgres::Client>>>>;

/// Idle connections kept per endpoint. The agent's failover loop and its health checks read the
/// same member at times at once: with one slot, the reader that found it taken connected afresh,
/// and putting both back closed one of them, a login and a backend exit per overlap (seen: no
/// agent connection older than 3 s in `chaos::node_loss_of_the_primary`).
const KEPT_PER_ENDPOINT: usize = 2;

/// What a probe reads from a member: in recovery, the primary's LSN, the standby's facts.
type Facts = (bool, Option<u64>, Option<pgsql::StandbyStat>);

fn read_facts(c: &mut postgres::Client) -> Result<Facts, String> {
    if pgsql::in_recovery(c)? {
        Ok((true, None, Some(pgsql::standby(c)?)))
    } else {
        Ok((false, Some(pgsql::current_lsn(c)?), None))
    }
}

impl RealClients {
    pub fn new(t: &ValidatedTopology, store: Arc<dyn StateStore>) -> RealClients {
        let mut web_auth = BTreeMap::new();
        let pair = |w: &WebAuthModel| (w.user.clone(), w.password_secret.clone());
        if let Some(w) = t.alertmanager.as_ref().and_then(|a| a.web_auth.as_ref()) {
            web_auth.insert("alertmanager".to_string(), pair(w));
        }
        if let Some(w) = &t.exporters.postgres_web_auth {
            for x in &t.exporters.postgres {
                web_auth.insert(x.name.clone(), pair(w));
            }
        }
        let redis_users = t
            .redis
            .iter()
            .flat_map(|r| &r.acl)
            .flat_map(|a| &a.users)
            .map(|u| (u.password_secret.clone(), u.name.clone()))
            .collect();
        RealClients {
            superuser: t.postgres.as_ref().map(|p| p.superuser.clone()),
            store,
            web_auth,
            redis_users,
            kept: Arc::default(),
        }
    }

    fn superuser(&self) -> Result<(String, String), ClientError> {
        let user = self
            .superuser
            .clone()
            .ok_or_else(|| ClientError::Unknown("postgres".into()))?;
        let pw = self
            .store
            .secret("postgres-superuser-password")
            .map_err(|e| ClientError::Secret(e.to_string()))?;
        Ok((user, pw))
    }
}

/// Runs `op` on a connected member; `target` names the member in errors.
fn run_op(
    c: &mut postgres::Client,
    op: &PgOp,
    store: &dyn StateStore,
    target: &str,
) -> Result<PgReply, ClientError> {
    let q = |d: String| ClientError::query(target, d);
    match op {
        PgOp::InRecovery => pgsql::in_recovery(c).map(PgReply::Bool).map_err(q),
        PgOp::Replication => pgsql::replication(c).map(PgReply::Replication).map_err(q),
        PgOp::Promote { wait_seconds } => pgsql::promote(c, *wait_seconds)
            .map(PgReply::Bool)
            .map_err(q),
        PgOp::ReloadConf => {
            c.query("SELECT pg_reload_conf()", &[])
                .map_err(|e| q(pgsql::describe(&e)))?;
            std::thread::sleep(Duration::from_millis(200));
            pgsql::config_errors(c).map(PgReply::Errors).map_err(q)
        }
        PgOp::Checkpoint => c
            .batch_execute("CHECKPOINT")
            .map(|_| PgReply::Done)
            .map_err(|e| q(pgsql::describe(&e))),
        PgOp::Bootstrap {
            replication_user,
            app_user,
            database,
            slots,
        } => {
            let secret = |e: crate::state::StateError| ClientError::Secret(e.to_string());
            let repl_pw = store
                .secret("postgres-replication-password")
                .map_err(secret)?;
            let app_pw = store.secret("postgres-app-password").map_err(secret)?;
            // In synchronous mode no standby exists yet on a first apply: these bootstrap
            // commits must not wait for one (they are repeated idempotently on every apply).
            c.batch_execute("SET synchronous_commit TO local")
                .map_err(|e| q(pgsql::describe(&e)))?;
            pgsql::ensure_role(c, replication_user, &repl_pw, true).map_err(q)?;
            pgsql::ensure_role(c, app_user, &app_pw, false).map_err(q)?;
            pgsql::ensure_database(c, database, app_user).map_err(q)?;
            for s in slots {
                pgsql::ensure_slot(c, s).map_err(q)?;
            }
            Ok(PgReply::Done)
        }
        PgOp::EnsureSlot(s) => pgsql::ensure_slot(c, s).map(|_| PgReply::Done).map_err(q),
        PgOp::DropSlot(s) => pgsql::drop_slot(c, s).map(|_| PgReply::Done).map_err(q),
    }
}

impl Clients for RealClients {
    fn pg(
        &self,
        rt: &dyn Runtime,
        m: &PgMember,
        op: &PgOp,
        timeout: Duration,
    ) -> Result<PgReply, ClientError> {
        let (user, pw) = self.superuser()?;
        let ep = rt.endpoint(&m.name, m.port);
        // The reads the agent repeats every probe tick (the primary's pg_stat_replication twice
        // a second, the health checks' role) run on the member's kept connection; an operation
        // that changes something gets a connection of its own, so a broken exchange is never
        // retried on another one.
        let read: Option<Read<PgReply>> = match op {
            PgOp::InRecovery => Some(|c| pgsql::in_recovery(c).map(PgReply::Bool)),
            PgOp::Replication => Some(|c| pgsql::replication(c).map(PgReply::Replication)),
            _ => None,
        };
        if let Some(read) = read {
            return on_kept(&self.kept, &ep, user, pw, timeout, read).map_err(|e| match e {
                KeptError::Connect(detail) => ClientError::Connect {
                    target: m.name.clone(),
                    detail,
                },
                KeptError::Query(detail) => ClientError::query(&m.name, detail),
            });
        }
        let mut c =
            connect_scram(&ep, &user, &pw, timeout).map_err(|detail| ClientError::Connect {
                target: m.name.clone(),
                detail,
            })?;
        run_op(&mut c, op, &*self.store, &m.name)
    }

    fn member_view(&self, ep: &Endpoint, m: &PgMember, timeout: Duration) -> MemberView {
        let mut v = MemberView {
            name: m.name.clone(),
            priority: m.priority,
            ..Default::default()
        };
        let (user, pw) = match self.superuser() {
            Ok(x) => x,
            Err(e) => {
                v.error = e.to_string();
                return v;
            }
        };
        let r = on_kept(&self.kept, ep, user, pw, timeout, read_facts).map_err(KeptError::text);
        match r {
            Ok((rec, lsn, sb)) => {
                v.reachable = true;
                v.role = Some(if rec { "replica" } else { "primary" }.into());
                v.current_lsn = lsn;
                if let Some(s) = sb {
                    v.receive_lsn = s.receive_lsn;
                    v.replay_lsn = s.replay_lsn;
                    v.replay_delay_seconds = s.replay_delay_seconds;
                    v.wal_receiver_status = s.wal_receiver_status;
                    v.last_msg_age_seconds = s.last_msg_age_seconds;
                    v.sender_port = s.sender_port;
                }
            }
            Err(e) => v.error = e,
        }
        v
    }

    fn http(
        &self,
        rt: &dyn Runtime,
        component: &str,
        port: u16,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, String), ClientError> {
        let ep = rt.endpoint(component, port);
        let url = format!("http://{ep}{path}");
        let auth = match self.web_auth.get(component) {
            Some((user, secret)) => Some((
                user.clone(),
                self.store
                    .secret(secret)
                    .map_err(|e| ClientError::Secret(e.to_string()))?,
            )),
            None => None,
        };
        let auth = auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
        let post = method == Method::Post;
        let r = probe::http_request(&url, post, auth, timeout);
        r.map_err(|detail| ClientError::Connect {
            target: format!("{component} ({url})"),
            detail,
        })
    }

    fn redis_ping(
        &self,
        rt: &dyn Runtime,
        component: &str,
        port: u16,
        password_secret: Option<&str>,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let pw = match password_secret {
            Some(s) => Some(
                self.store
                    .secret(s)
                    .map_err(|e| ClientError::Secret(e.to_string()))?,
            ),
            None => None,
        };
        let user = password_secret.and_then(|s| self.redis_users.get(s));
        let ep = rt.endpoint(component, port);
        let auth = pw.as_deref().map(|p| (user.map(String::as_str), p));
        probe::redis_ping(&ep.host, ep.port, auth, timeout)
            .map(|_| ())
            .map_err(|detail| ClientError::Connect {
                target: component.into(),
                detail,
            })
    }

    fn tcp(&self, rt: &dyn Runtime, component: &str, port: u16, timeout: Duration) -> bool {
        let ep = rt.endpoint(component, port);
        probe::tcp(&ep.host, ep.port, timeout)
    }
}

/// Why the SCRAM-only relay could not carry a connection.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("failed to resolve {endpoint}: {detail}")]
    Resolve { endpoint: String, detail: String },
    #[error("failed to {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("failed to reach {target}: {source}")]
    Reach {
        target: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("failed: {target} does not speak the PostgreSQL protocol")]
    NotPostgres { target: std::net::SocketAddr },
    #[error("failed: {target} asked for a cleartext or MD5 password (an impostor, or a server not configured for SCRAM); no password was sent")]
    PasswordAsked { target: std::net::SocketAddr },
    #[error("failed: {target} asked for authentication method {method}; only SCRAM is used")]
    OtherMethod {
        target: std::net::SocketAddr,
        method: i32,
    },
}

fn relay_io(what: &str) -> impl FnOnce(std::io::Error) -> RelayError + '_ {
    move |source| RelayError::Io {
        what: what.into(),
        source,
    }
}

/// A fresh connection to a member as bssctl's superuser, through `ScramOnly`.
fn connect_scram(
    ep: &Endpoint,
    user: &str,
    pw: &str,
    timeout: Duration,
) -> Result<postgres::Client, String> {
    let relay = ScramOnly::relay(ep, timeout).map_err(|e| e.to_string())?;
    pgsql::connect(&relay.host(), relay.port, user, pw, "postgres", timeout)
        .map_err(|d| relay.explain(d))
}

/// A read `on_kept` runs (on a kept connection, or on a fresh one when that fails).
type Read<T> = fn(&mut postgres::Client) -> Result<T, String>;

/// Why a read on a kept (or fresh) connection failed.
enum KeptError {
    /// No connection could be had, or none answered in time.
    Connect(String),
    /// A fresh connection answered the read with an error.
    Query(String),
}

impl KeptError {
    fn text(self) -> String {
        match self {
            KeptError::Connect(d) | KeptError::Query(d) => d,
        }
    }
}

/// One read of a member within `timeout`, on a connection kept from an earlier read of that
/// endpoint when there is one, else on a fresh one through `ScramOnly`. The agent probes every
/// member twice a second and reads the primary's pg_stat_replication as often; a fresh
/// connection each time costs a backend fork and a SCRAM exchange (PBKDF2 on both sides). A
/// kept connection is to the same server process that proved the password before; it fails once
/// that process is gone (a member killed, restarted or replaced), and the read then tries a
/// fresh connection in the time left, so a member is reported unreachable only when a fresh
/// connection fails too, as before. A read that hangs (a stopped server) keeps its connection
/// out of the map, and the next read connects afresh.
fn on_kept<T: Send + 'static>(
    kept: &Kept,
    ep: &Endpoint,
    user: String,
    pw: String,
    timeout: Duration,
    read: Read<T>,
) -> Result<T, KeptError> {
    let key = ep.to_string();
    let reused = kept
        .lock()
        .ok()
        .and_then(|mut k| k.get_mut(&key).and_then(|idle| idle.pop()));
    let (kept, ep2) = (kept.clone(), ep.clone());
    let deadline = Instant::now() + timeout;
    pgsql::bounded(&ep.to_string(), timeout, move || {
        let keep = |c: postgres::Client| {
            if let Ok(mut k) = kept.lock() {
                let idle = k.entry(key.clone()).or_default();
                if idle.len() < KEPT_PER_ENDPOINT {
                    idle.push(c);
                }
            }
        };
        if let Some(mut c) = reused {
            if let Ok(f) = read(&mut c) {
                keep(c);
                return Ok(Ok(f));
            }
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50));
        let mut c = match connect_scram(&ep2, &user, &pw, left) {
            Ok(c) => c,
            Err(e) => return Ok(Err(KeptError::Connect(e))),
        };
        Ok(match read(&mut c) {
            Ok(f) => {
                keep(c);
                Ok(f)
            }
            Err(e) => Err(KeptError::Query(e)),
        })
    })
    .unwrap_or_else(|e| Err(KeptError::Connect(e)))
}

/// A one-connection relay that lets the PostgreSQL driver talk to a member only if the member
/// asks for SCRAM (or for nothing): the driver connects to a private unix socket (a 0700 temp
/// directory), the relay connects to the member and forwards, reading every server message
/// until authentication is over. An `AuthenticationCleartextPassword` or
/// `AuthenticationMD5Password` request (what an impostor on a dead member's port asks for, to
/// learn the password) closes both sides before the driver sees it, so no password leaves.
/// The driver has no switch for this (`channel_binding=require` needs TLS).
pub struct ScramOnly {
    dir: tempfile::TempDir,
    pub port: u16,
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl ScramOnly {
    pub fn relay(ep: &Endpoint, timeout: Duration) -> Result<ScramOnly, RelayError> {
        use std::net::ToSocketAddrs;
        let resolve = |detail: String| RelayError::Resolve {
            endpoint: ep.to_string(),
            detail,
        };
        let target = (ep.host.as_str(), ep.port)
            .to_socket_addrs()
            .map_err(|e| resolve(e.to_string()))?
            .next()
            .ok_or_else(|| resolve("no address".into()))?;
        let dir = tempfile::Builder::new()
            .prefix("bssctl-pg-")
            .tempdir()
            .map_err(relay_io("create the relay directory"))?;
        let port = ep.port;
        let sock = dir.path().join(format!(".s.PGSQL.{port}"));
        let bind = format!("bind {}", sock.display());
        let listener = std::os::unix::net::UnixListener::bind(&sock).map_err(relay_io(&bind))?;
        let refused = Arc::new(std::sync::Mutex::new(None));
        let flag = refused.clone();
        std::thread::spawn(move || {
            if let Err(why) = relay_one(&listener, target, timeout) {
                if let Ok(mut f) = flag.lock() {
                    *f = Some(why.to_string());
                }
            }
        });
        Ok(ScramOnly { dir, port, refused })
    }

    /// The socket directory the driver connects to (its "host").
    pub fn host(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The relay's reason when it cut the exchange, else the driver's error.
    pub fn explain(&self, driver: String) -> String {
        match self.refused.lock().ok().and_then(|f| f.clone()) {
            Some(why) => why,
            None => driver,
        }
    }
}

fn relay_one(
    listener: &std::os::unix::net::UnixListener,
    target: std::net::SocketAddr,
    timeout: Duration,
) -> Result<(), RelayError> {
    use std::io::{Read, Write};
    listener
        .set_nonblocking(true)
        .map_err(relay_io("poll the relay socket"))?;
    let start = std::time::Instant::now();
    let mut client = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > timeout + Duration::from_secs(1) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(relay_io("accept on the relay socket")(e)),
        }
    };
    client
        .set_nonblocking(false)
        .map_err(relay_io("set up the relay"))?;
    let mut server = std::net::TcpStream::connect_timeout(&target, timeout)
        .map_err(|source| RelayError::Reach { target, source })?;
    server
        .set_read_timeout(Some(timeout))
        .map_err(relay_io("set up the relay"))?;
    let (mut c2, mut s2) = (
        client.try_clone().map_err(relay_io("set up the relay"))?,
        server.try_clone().map_err(relay_io("set up the relay"))?,
    );
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(std::net::Shutdown::Both);
    });
    let cut = |client: &std::os::unix::net::UnixStream, server: &std::net::TcpStream| {
        let _ = server.shutdown(std::net::Shutdown::Both);
        let _ = client.shutdown(std::net::Shutdown::Both);
    };
    loop {
        let mut head = [0u8; 5];
        if server.read_exact(&mut head).is_err() {
            cut(&client, &server);
            return Ok(());
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=1 << 20).contains(&len) {
            cut(&client, &server);
            return Err(RelayError::NotPostgres { target });
        }
        let mut body = vec![0u8; len - 4];
        if server.read_exact(&mut body).is_err() {
            cut(&client, &server);
            return Ok(());
        }
        let mut authed = false;
        if head[0] == b'R' && body.len() >= 4 {
            match i32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
                0 => authed = true,
                3 | 5 => {
                    cut(&client, &server);
                    return Err(RelayError::PasswordAsked { target });
                }
                // SASL (SCRAM) and its continuation messages.
                10..=12 => {}
                other => {
                    cut(&client, &server);
                    return Err(RelayError::OtherMethod {
                        target,
                        method: other,
                    });
                }
            }
        }
        if client
            .write_all(&head)
            .and_then(|_| client.write_all(&body))
            .is_err()
        {
            cut(&client, &server);
            return Ok(());
        }
        if authed || head[0] == b'E' {
            break;
        }
    }
    // Authenticated: plain copying from here on, without a read deadline (a promotion may wait).
    let _ = server.set_read_timeout(None);
    let _ = std::io::copy(&mut server, &mut client);
    cut(&client, &server);
    Ok(())
}
