//! What "healthy" means for each component kind, and the ports each one listens on. Probes go
//! through the client seam at the runtime's endpoints, so the same checks gate an apply on every
//! runtime.

use std::time::{Duration, Instant};

use crate::engine::clients::{Clients, Method};
use crate::engine::runtime::{Observed, Runtime, Task};
use crate::probe;
use crate::render::Kind;
use crate::topology::model::ValidatedTopology;

/// Why a component is not healthy, as its own protocol tells it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unhealthy {
    /// The component or member is not in the topology (the caller asked for the wrong one).
    #[error("{what} is not in the topology")]
    NotInTopology { what: String },
    /// Nothing answered at the endpoint, or the client failed.
    #[error("{0}")]
    Unreachable(String),
    /// The component answered, and not as a healthy one does.
    #[error("{0}")]
    Answered(String),
    /// The started instance exited while it was being waited for.
    #[error("exited during start-up; last log lines:\n{log}")]
    Exited { log: String },
    #[error("not healthy after {secs}s: {last}\nlast log lines:\n{log}")]
    TimedOut {
        secs: u64,
        last: String,
        log: String,
    },
}

fn missing(what: &str) -> Unhealthy {
    Unhealthy::NotInTopology { what: what.into() }
}

fn unreachable(e: impl std::fmt::Display) -> Unhealthy {
    Unhealthy::Unreachable(e.to_string())
}

/// Ports a component listens on (as the topology has them).
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

/// HAProxy's servers as (proxy, server, status), read through its runtime API.
pub fn haproxy_servers(
    rt: &mut dyn Runtime,
    name: &str,
) -> Result<Vec<(String, String, String)>, Unhealthy> {
    let out = rt
        .exec(name, &Task::HaproxyAdmin("show stat".into()))
        .map_err(unreachable)?;
    probe::haproxy_stat_rows(&out).map_err(Unhealthy::Answered)
}

/// A probe of one component by its own protocol: Ok(detail) healthy, Err(why) not.
pub fn health(
    t: &ValidatedTopology,
    rt: &mut dyn Runtime,
    cl: &dyn Clients,
    name: &str,
    kind: Kind,
) -> Result<String, Unhealthy> {
    let to = Duration::from_millis(1500);
    let first_port = || {
        ports_of(t, name, kind)
            .first()
            .copied()
            .ok_or_else(|| missing(&format!("a port of {name}")))
    };
    match kind {
        Kind::Postgres => {
            let pg = t.postgres.as_ref().ok_or_else(|| missing("postgres"))?;
            let m = pg.member(name).ok_or_else(|| missing(name))?;
            let rec = cl
                .pg(rt, m, &crate::engine::clients::PgOp::InRecovery, to)
                .map_err(unreachable)?;
            Ok(match rec {
                crate::engine::clients::PgReply::Bool(true) => "replica".into(),
                _ => "primary".into(),
            })
        }
        Kind::Redis => {
            let r = t.redis.as_ref().ok_or_else(|| missing("redis"))?;
            // As the probe user (PING and INFO only), never as admin: whatever answers on a
            // dead Redis port learns a password that opens nothing else.
            let probe_secret = match &r.acl {
                Some(acl) => acl
                    .user(crate::topology::model::REDIS_PROBE_USER)
                    .map(|u| u.password_secret.as_str()),
                None => r.password_secret.as_deref(),
            };
            cl.redis_ping(rt, name, r.endpoint.port, probe_secret, to)
                .map(|_| "PONG".into())
                .map_err(unreachable)
        }
        Kind::KafkaStore => {
            let st = t
                .kafka
                .as_ref()
                .and_then(|k| k.store.as_ref())
                .ok_or_else(|| missing("store"))?;
            // ListObjectsV2 of the brokers' bucket: the server answers and the bucket is there.
            let path = format!("/{}?list-type=2&max-keys=1", st.bucket);
            match cl.http(rt, name, st.endpoint.port, Method::Get, &path, to) {
                Ok((200, _)) => Ok(format!("bucket {} listed", st.bucket)),
                Ok((c, body)) => Err(Unhealthy::Answered(format!(
                    "listing bucket {} answered {c}: {}",
                    st.bucket,
                    body.chars().take(200).collect::<String>()
                ))),
                Err(e) => Err(unreachable(e)),
            }
        }
        Kind::Kafka => {
            let port = first_port()?;
            if cl.tcp(rt, name, port, to) {
                // Say what a broker here is: several brokers are entry points onto one store.
                Ok(match t.kafka.as_ref() {
                    Some(k) if k.store.is_some() => format!(
                        "accepting connections; 1 of {} entry points onto kafka-store, no partition replication",
                        k.brokers.len()
                    ),
                    _ => "accepting connections; memory engine, events lost on restart".into(),
                })
            } else {
                Err(Unhealthy::Unreachable(format!(
                    "nothing answers on {}",
                    rt.endpoint(name, port)
                )))
            }
        }
        Kind::Haproxy => {
            let pg = t.postgres.as_ref().ok_or_else(|| missing("postgres"))?;
            let servers = haproxy_servers(rt, name)?;
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
                Err(Unhealthy::Answered(format!(
                    "write server {} is not UP: {:?}",
                    pg.primary,
                    servers
                        .iter()
                        .filter(|s| s.0 == "postgres-write")
                        .collect::<Vec<_>>()
                )))
            }
        }
        Kind::Backend => {
            let b = t.backend.as_ref().ok_or_else(|| missing("backend"))?;
            match cl.http(rt, name, b.endpoint.port, Method::Get, "/health/ready", to) {
                Ok((200, _)) => Ok("ready".into()),
                Ok((c, body)) => Err(Unhealthy::Answered(format!(
                    "/health/ready answered {c}: {}",
                    body.chars().take(200).collect::<String>()
                ))),
                Err(e) => Err(unreachable(e)),
            }
        }
        Kind::StreamProcessor => match rt.observe(name) {
            Some(o) if o.running => Ok("running".into()),
            Some(_) => Err(Unhealthy::Answered("not running".into())),
            None => Err(Unhealthy::Unreachable("not started".into())),
        },
        Kind::Envoy => {
            // Through the runtime: the admin is a unix socket (the local runtime reads it; a
            // container's runtime goes through the stats listener, which serves only /ready and
            // /stats/prometheus).
            match rt.exec(name, &Task::EnvoyAdmin("/ready".into())) {
                Ok(body) if body.trim() == "LIVE" => Ok("LIVE".into()),
                Ok(body) => Err(Unhealthy::Answered(format!(
                    "/ready answered {}",
                    body.trim()
                ))),
                Err(e) => Err(unreachable(e)),
            }
        }
        Kind::NodeExporter | Kind::PostgresExporter | Kind::RedisExporter => {
            let port = first_port()?;
            match cl.http(rt, name, port, Method::Get, "/metrics", to) {
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
                        Err(Unhealthy::Answered(
                            "serving metrics but its target is down".into(),
                        ))
                    }
                }
                Ok((c, _)) => Err(Unhealthy::Answered(format!("/metrics answered {c}"))),
                Err(e) => Err(unreachable(e)),
            }
        }
        Kind::Prometheus | Kind::Alertmanager => {
            let port = first_port()?;
            match cl.http(rt, name, port, Method::Get, "/-/ready", to) {
                Ok((200, _)) => Ok("ready".into()),
                Ok((c, _)) => Err(Unhealthy::Answered(format!("/-/ready answered {c}"))),
                Err(e) => Err(unreachable(e)),
            }
        }
    }
}

/// Probes until healthy or `timeout`; fails at once when the started instance exits.
/// The pace of a wait for something that usually happens within a few tens of milliseconds (a
/// process binding its port, a reload taking effect): 10 ms first, doubling up to 100 ms, so a
/// fast component is seen ready almost at once and a slow one costs no more probes than a fixed
/// 100 ms poll.
pub struct Pace(Duration, Duration);

impl Default for Pace {
    fn default() -> Self {
        Pace(Duration::from_millis(10), Duration::from_millis(100))
    }
}

impl Pace {
    /// A fixed 10 ms poll, for a wait whose probe is nearly free (a command on a local admin
    /// socket) and whose event lands 50-150 ms in, where the doubling pace would overshoot by
    /// up to 80 ms.
    pub fn fine() -> Self {
        Pace(Duration::from_millis(10), Duration::from_millis(10))
    }

    pub fn sleep(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(self.1);
    }
}

pub fn wait_healthy(
    t: &ValidatedTopology,
    rt: &mut dyn Runtime,
    cl: &dyn Clients,
    name: &str,
    kind: Kind,
    timeout: Duration,
    started: Option<&Observed>,
) -> Result<String, Unhealthy> {
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    let mut pace = Pace::default();
    while start.elapsed() < timeout {
        if let Some(o) = started {
            if !rt.instance_alive(o) {
                return Err(Unhealthy::Exited {
                    log: rt.logs(name, 15),
                });
            }
        }
        match health(t, rt, cl, name, kind) {
            Ok(d) => return Ok(d),
            Err(e) => last = e.to_string(),
        }
        pace.sleep();
    }
    Err(Unhealthy::TimedOut {
        secs: timeout.as_secs(),
        last,
        log: rt.logs(name, 15),
    })
}

/// How long a start may take to become healthy.
pub fn gate_timeout(kind: Kind) -> Duration {
    match kind {
        Kind::Postgres => Duration::from_secs(60),
        Kind::Backend => Duration::from_secs(60),
        Kind::StreamProcessor => Duration::from_secs(3),
        _ => Duration::from_secs(30),
    }
}
