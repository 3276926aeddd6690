//! The client seam: how the controller talks to the components themselves (SQL to PostgreSQL,
//! HTTP to the exporters, Prometheus, Alertmanager, Envoy and the backend, Redis PING, TCP).
//! Addresses come from the runtime (`Runtime::endpoint`), passwords from the state store, so one
//! implementation serves every runtime; the engine's scenario tests swap in a fake world.
//!
//! It decides nothing: what "healthy" means is `engine::health`, what to do is the engine's.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::failover::MemberView;
use crate::engine::runtime::{Endpoint, Runtime};
use crate::engine::store::StateStore;
use crate::pgsql;
use crate::probe;
use crate::topology::model::{PgMember, ValidatedTopology};

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
    /// Redis PING with the password from `password_secret`.
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
}

impl RealClients {
    pub fn new(t: &ValidatedTopology, store: Arc<dyn StateStore>) -> RealClients {
        RealClients {
            superuser: t.postgres.as_ref().map(|p| p.superuser.clone()),
            store,
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

fn run_op(c: &mut postgres::Client, op: &PgOp, store: &dyn StateStore) -> Result<PgReply, String> {
    match op {
        PgOp::InRecovery => pgsql::in_recovery(c).map(PgReply::Bool),
        PgOp::Replication => pgsql::replication(c).map(PgReply::Replication),
        PgOp::Promote { wait_seconds } => pgsql::promote(c, *wait_seconds).map(PgReply::Bool),
        PgOp::ReloadConf => {
            c.query("SELECT pg_reload_conf()", &[])
                .map_err(|e| pgsql::describe(&e))?;
            std::thread::sleep(Duration::from_millis(200));
            pgsql::config_errors(c).map(PgReply::Errors)
        }
        PgOp::Checkpoint => c
            .batch_execute("CHECKPOINT")
            .map(|_| PgReply::Done)
            .map_err(|e| pgsql::describe(&e)),
        PgOp::Bootstrap {
            replication_user,
            app_user,
            database,
            slots,
        } => {
            let repl_pw = store
                .secret("postgres-replication-password")
                .map_err(|e| e.to_string())?;
            let app_pw = store
                .secret("postgres-app-password")
                .map_err(|e| e.to_string())?;
            // In synchronous mode no standby exists yet on a first apply: these bootstrap
            // commits must not wait for one (they are repeated idempotently on every apply).
            c.batch_execute("SET synchronous_commit TO local")
                .map_err(|e| pgsql::describe(&e))?;
            pgsql::ensure_role(c, replication_user, &repl_pw, true)?;
            pgsql::ensure_role(c, app_user, &app_pw, false)?;
            pgsql::ensure_database(c, database, app_user)?;
            for s in slots {
                pgsql::ensure_slot(c, s)?;
            }
            Ok(PgReply::Done)
        }
        PgOp::EnsureSlot(s) => pgsql::ensure_slot(c, s).map(|_| PgReply::Done),
        PgOp::DropSlot(s) => pgsql::drop_slot(c, s).map(|_| PgReply::Done),
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
        let mut c = pgsql::connect(&ep.host, ep.port, &user, &pw, "postgres", timeout).map_err(
            |detail| ClientError::Connect {
                target: m.name.clone(),
                detail,
            },
        )?;
        run_op(&mut c, op, &*self.store).map_err(|d| ClientError::query(&m.name, d))
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
        let r = pgsql::with_deadline(&ep.host, ep.port, &user, &pw, timeout, |c| {
            let rec = pgsql::in_recovery(c)?;
            if rec {
                Ok((true, None, Some(pgsql::standby(c)?)))
            } else {
                Ok((false, Some(pgsql::current_lsn(c)?), None))
            }
        });
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
        let r = match method {
            Method::Get => probe::http_get(&url, timeout),
            Method::Post => probe::http_post(&url, timeout),
        };
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
        let ep = rt.endpoint(component, port);
        probe::redis_ping(&ep.host, ep.port, pw.as_deref(), timeout)
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
