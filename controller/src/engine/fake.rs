//! A fake world for the engine's scenario tests: in-memory components behind the `Runtime`
//! trait, fake PostgreSQL members and HTTP endpoints behind `Clients`, an in-memory
//! `StateStore`, and a write router that records what it was told. Faults are injected by
//! setting fields of the shared `World`; every call is appended to `World::log`, so a test can
//! assert the order of actions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::clients::{ClientError, Clients, Method, PgOp, PgReply};
use crate::engine::failover::{FailoverEvent, MemberView, RouterError, WriteRouter};
use crate::engine::runtime::{
    Capabilities, DiskSpace, Endpoint, Observed, Runtime, RuntimeError, Signal, StartOpts,
    StopMode, Task,
};
use crate::engine::store::StateStore;
use crate::render::{Bundle, ComponentBundle, Kind};
use crate::state::{Applied, StateError};
use crate::topology::model::{PgMember, ValidatedTopology};

#[derive(Debug, Default, Clone)]
pub struct Comp {
    pub running: bool,
    pub hash: String,
    pub files: BTreeMap<String, String>,
    pub restarts: u32,
    pub epoch: u32,
    pub instance: u64,
    pub initialized: bool,
    pub standby: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Pg {
    pub in_recovery: bool,
    pub lsn: u64,
}

#[derive(Debug, Default)]
pub struct World {
    pub comps: BTreeMap<String, Comp>,
    pub pg: BTreeMap<String, Pg>,
    pub log: Vec<String>,
    pub next_instance: u64,
    /// Components whose health probe fails.
    pub unhealthy: BTreeSet<String>,
    /// A file content marker that makes `haproxy -c` / pg_reload_conf reject the files.
    pub reject_marker: Option<String>,
    /// Fail this many promotions before one succeeds (an agent killed mid-failover).
    pub promote_failures: u32,
    /// The member HAProxy routes writes to.
    pub write_server: Option<String>,
    // The state store.
    pub applied: Option<Applied>,
    pub applied_version: u64,
    pub intent: Option<FailoverEvent>,
    pub history: Vec<FailoverEvent>,
    pub rewind: BTreeSet<String>,
    /// Tasks that fail, as `"<component> <task>"` (`"postgres-2 PgBaseBackup"`).
    pub failing_tasks: BTreeSet<String>,
    /// Free space per member (`disk_space`); a member not listed has plenty.
    pub disk: BTreeMap<String, Vec<DiskSpace>>,
}

impl World {
    pub fn index_of(&self, entry: &str) -> Option<usize> {
        self.log.iter().position(|l| l == entry)
    }
}

pub type Shared = Arc<Mutex<World>>;

pub struct FakeRuntime(pub Shared);
pub struct FakeClients(pub Shared);
pub struct FakeStore(pub Shared);
pub struct FakeRouter(pub Shared);

fn w(s: &Shared) -> std::sync::MutexGuard<'_, World> {
    s.lock().expect("the fake world's lock")
}

impl Runtime for FakeRuntime {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "fake",
            envoy_hot_restart: true,
            live_files: true,
            members_follow_roles: false,
            // exec_each stays the default (one after another): the log shows what the engine
            // asked for together.
            concurrent_tasks: true,
        }
    }

    fn preflight(&self, _: &Bundle) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn prepare(&mut self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }

    fn put_config(&mut self, name: &str, c: &ComponentBundle) -> Result<(), RuntimeError> {
        let mut w = w(&self.0);
        w.log.push(format!("put {name}"));
        w.comps.entry(name.into()).or_default().files = c.files.clone();
        Ok(())
    }

    fn start(
        &mut self,
        name: &str,
        c: &ComponentBundle,
        opts: StartOpts,
    ) -> Result<Observed, RuntimeError> {
        let mut w = w(&self.0);
        w.log.push(format!("start {name}"));
        w.next_instance += 1;
        let id = w.next_instance;
        let standby = c.files.contains_key("standby.signal");
        if c.kind == Kind::Postgres {
            let lsn = w.pg.values().map(|p| p.lsn).max().unwrap_or(0);
            let p = w.pg.entry(name.into()).or_default();
            p.in_recovery = standby;
            p.lsn = p.lsn.max(lsn);
        }
        let comp = w.comps.entry(name.into()).or_default();
        comp.running = true;
        comp.hash = c.hash();
        comp.epoch = opts.epoch;
        comp.restarts = opts.restarts;
        comp.instance = id;
        Ok(Observed {
            running: true,
            hash: comp.hash.clone(),
            restarts: comp.restarts,
            started_at: 0,
            instance: id.to_string(),
            pid: None,
            epoch: opts.epoch,
        })
    }

    fn stop(&mut self, name: &str, _: Kind, mode: StopMode) -> Result<(), RuntimeError> {
        let mut w = w(&self.0);
        w.log.push(format!("stop {name} {mode:?}"));
        if let Some(c) = w.comps.get_mut(name) {
            c.running = false;
        }
        Ok(())
    }

    fn signal(&mut self, name: &str, sig: Signal) -> Result<(), RuntimeError> {
        let mut w = w(&self.0);
        w.log.push(format!("signal {name} {}", sig.name()));
        if sig == Signal::Usr2 {
            // A new HAProxy worker.
            w.next_instance += 1;
        }
        Ok(())
    }

    fn exec(&mut self, name: &str, task: &Task) -> Result<String, RuntimeError> {
        let mut w = w(&self.0);
        // A probe (like `http`), not an action: not logged.
        if let Task::EnvoyAdmin(path) = task {
            let comp = w.comps.get(name).filter(|c| c.running);
            return if let (Some(c), false) = (comp, w.unhealthy.contains(name)) {
                Ok(if path.starts_with("/stats") {
                    format!(
                        "envoy_server_hot_restart_epoch{{}} {}\nenvoy_server_state{{}} 0\n",
                        c.epoch
                    )
                } else {
                    "LIVE".into()
                })
            } else {
                Err(RuntimeError::step(name, "admin", "connection refused"))
            };
        }
        let label = match task {
            Task::HaproxyAdmin(cmd) => format!("admin {cmd}"),
            other => format!("{other:?}")
                .split([' ', '(', '{'])
                .next()
                .unwrap_or("")
                .to_string(),
        };
        w.log.push(format!("exec {name} {label}"));
        if w.failing_tasks.contains(&format!("{name} {label}")) {
            return Err(RuntimeError::step(name, &label, "injected failure"));
        }
        let marker = w.reject_marker.clone();
        let next = w.next_instance;
        let primary = w.write_server.clone();
        let comp = w.comps.entry(name.into()).or_default();
        match task {
            Task::PgDataState => Ok(if comp.initialized {
                "initialized"
            } else {
                "empty"
            }
            .into()),
            Task::PgInitDb { .. } | Task::PgBaseBackup { .. } => {
                comp.initialized = true;
                Ok(String::new())
            }
            Task::PgStandbySignal(on) => {
                comp.standby = *on;
                Ok(String::new())
            }
            Task::PgDiscardData => {
                comp.initialized = false;
                Ok(String::new())
            }
            Task::PgControlData => Ok(
                "Database cluster state:               shut down\nLatest checkpoint location:           0/10\n"
                    .into(),
            ),
            Task::HaproxyCheck => match marker {
                Some(m) if comp.files.values().any(|f| f.contains(&m)) => {
                    Err(RuntimeError::step(name, "check config", "haproxy -c: bad config"))
                }
                _ => Ok(String::new()),
            },
            Task::HaproxyAdmin(cmd) if cmd == "show info" => Ok(format!("Pid: {next}\n")),
            Task::HaproxyAdmin(cmd) if cmd == "show stat" => {
                let p = primary.unwrap_or_default();
                Ok(format!(
                    "# pxname,svname,status\npostgres-write,{p},UP\npostgres-read,postgres-1,UP\n"
                ))
            }
            _ => Ok(String::new()),
        }
    }

    fn observe(&self, name: &str) -> Option<Observed> {
        let w = w(&self.0);
        w.comps
            .get(name)
            .filter(|c| !c.hash.is_empty())
            .map(|c| Observed {
                running: c.running,
                hash: c.hash.clone(),
                restarts: c.restarts,
                started_at: 0,
                instance: c.instance.to_string(),
                pid: None,
                epoch: c.epoch,
            })
    }

    fn instance_alive(&self, o: &Observed) -> bool {
        let w = w(&self.0);
        w.comps
            .values()
            .any(|c| c.running && c.instance.to_string() == o.instance)
    }

    fn mark_config(&mut self, name: &str, hash: &str) -> Result<(), RuntimeError> {
        let mut w = w(&self.0);
        if let Some(c) = w.comps.get_mut(name) {
            c.hash = hash.into();
        }
        Ok(())
    }

    fn endpoint(&self, name: &str, port: u16) -> Endpoint {
        Endpoint {
            host: name.into(),
            port,
        }
    }

    fn logs(&self, name: &str, _: usize) -> String {
        format!("(fake log of {name})")
    }

    fn disk_space(&self, name: &str) -> Result<Vec<DiskSpace>, RuntimeError> {
        let w = w(&self.0);
        Ok(w.disk.get(name).cloned().unwrap_or_else(|| {
            vec![DiskSpace {
                path: format!("/fake/{name}"),
                available_bytes: 10 << 30,
                total_bytes: 20 << 30,
            }]
        }))
    }

    fn remove(&mut self, name: &str, _: Kind) -> Result<(), RuntimeError> {
        let mut w = w(&self.0);
        w.log.push(format!("remove {name}"));
        w.comps.remove(name);
        Ok(())
    }

    fn orphans(&self, desired: &Bundle) -> Vec<String> {
        let w = w(&self.0);
        w.comps
            .keys()
            .filter(|n| !desired.components.contains_key(*n))
            .cloned()
            .collect()
    }

    fn teardown(&mut self, _: Option<&Bundle>, _: bool) -> Result<Vec<String>, RuntimeError> {
        w(&self.0).comps.clear();
        Ok(Vec::new())
    }
}

impl Clients for FakeClients {
    fn pg(
        &self,
        _: &dyn Runtime,
        m: &PgMember,
        op: &PgOp,
        _: Duration,
    ) -> Result<PgReply, ClientError> {
        let mut w = w(&self.0);
        let running = w.comps.get(&m.name).is_some_and(|c| c.running);
        let unhealthy = w.unhealthy.contains(&m.name);
        if !running || unhealthy {
            return Err(ClientError::Connect {
                target: m.name.clone(),
                detail: "connection refused".into(),
            });
        }
        let label = format!("{op:?}")
            .split([' ', '(', '{'])
            .next()
            .unwrap_or("")
            .to_string();
        w.log.push(format!("pg {} {label}", m.name));
        let marker = w.reject_marker.clone();
        match op {
            PgOp::InRecovery => Ok(PgReply::Bool(
                w.pg.get(&m.name).is_none_or(|p| p.in_recovery),
            )),
            PgOp::Replication => {
                let rows = w
                    .pg
                    .iter()
                    .filter(|(n, p)| p.in_recovery && w.comps.get(*n).is_some_and(|c| c.running))
                    .map(|(n, _)| crate::pgsql::ReplicaStat {
                        application_name: n.clone(),
                        state: "streaming".into(),
                        sync_state: "async".into(),
                        sent_lsn: None,
                        write_lsn: None,
                        flush_lsn: None,
                        replay_lsn: None,
                        lag_bytes: Some(0),
                        write_lag_seconds: None,
                        flush_lag_seconds: None,
                        replay_lag_seconds: None,
                        slot_retained_bytes: None,
                    })
                    .collect();
                Ok(PgReply::Replication(rows))
            }
            PgOp::Promote { .. } => {
                if w.promote_failures > 0 {
                    w.promote_failures -= 1;
                    return Err(ClientError::query(&m.name, "the agent died here"));
                }
                if let Some(p) = w.pg.get_mut(&m.name) {
                    p.in_recovery = false;
                }
                Ok(PgReply::Bool(true))
            }
            PgOp::ReloadConf => {
                let bad = marker.is_some_and(|mk| {
                    w.comps
                        .get(&m.name)
                        .is_some_and(|c| c.files.values().any(|f| f.contains(&mk)))
                });
                Ok(PgReply::Errors(if bad {
                    vec!["shared_buffers: bad value".into()]
                } else {
                    vec![]
                }))
            }
            _ => Ok(PgReply::Done),
        }
    }

    fn member_view(&self, ep: &Endpoint, m: &PgMember, _: Duration) -> MemberView {
        let w = w(&self.0);
        let _ = ep;
        let running =
            w.comps.get(&m.name).is_some_and(|c| c.running) && !w.unhealthy.contains(&m.name);
        let p = w.pg.get(&m.name).cloned().unwrap_or_default();
        MemberView {
            name: m.name.clone(),
            priority: m.priority,
            reachable: running,
            role: running.then(|| if p.in_recovery { "replica" } else { "primary" }.into()),
            current_lsn: (running && !p.in_recovery).then_some(p.lsn),
            receive_lsn: (running && p.in_recovery).then_some(p.lsn),
            replay_lsn: (running && p.in_recovery).then_some(p.lsn + 1),
            error: if running {
                String::new()
            } else {
                "connection refused".into()
            },
            ..Default::default()
        }
    }

    fn http(
        &self,
        _: &dyn Runtime,
        component: &str,
        _: u16,
        method: Method,
        path: &str,
        _: Duration,
    ) -> Result<(u16, String), ClientError> {
        let mut w = w(&self.0);
        if method == Method::Post {
            w.log.push(format!("http POST {component} {path}"));
        }
        let running = w.comps.get(component).is_some_and(|c| c.running);
        if !running || w.unhealthy.contains(component) {
            return Err(ClientError::Connect {
                target: component.into(),
                detail: "connection refused".into(),
            });
        }
        Ok(match path {
            "/ready" => (200, "LIVE".into()),
            "/metrics" => (
                200,
                "pg_up 1\nredis_up 1\nprometheus_config_last_reload_successful 1\nalertmanager_config_last_reload_successful 1\n"
                    .into(),
            ),
            _ => (200, "ok".into()),
        })
    }

    fn redis_ping(
        &self,
        _: &dyn Runtime,
        component: &str,
        _: u16,
        _: Option<&str>,
        _: Duration,
    ) -> Result<(), ClientError> {
        let w = w(&self.0);
        if w.comps.get(component).is_some_and(|c| c.running) && !w.unhealthy.contains(component) {
            Ok(())
        } else {
            Err(ClientError::Connect {
                target: component.into(),
                detail: "connection refused".into(),
            })
        }
    }

    fn tcp(&self, _: &dyn Runtime, component: &str, _: u16, _: Duration) -> bool {
        let w = w(&self.0);
        w.comps.get(component).is_some_and(|c| c.running) && !w.unhealthy.contains(component)
    }
}

impl StateStore for FakeStore {
    fn secret(&self, name: &str) -> Result<String, StateError> {
        Ok(format!("secret-{name}"))
    }
    fn applied(&self) -> Result<Option<Applied>, StateError> {
        Ok(w(&self.0).applied.clone())
    }
    fn write_applied(&self, a: &Applied) -> Result<(), StateError> {
        let mut w = w(&self.0);
        w.log.push(format!(
            "record primary {}",
            a.primary.clone().unwrap_or_default()
        ));
        w.applied = Some(a.clone());
        w.applied_version += 1;
        Ok(())
    }
    fn applied_token(&self) -> Option<String> {
        Some(w(&self.0).applied_version.to_string())
    }
    fn intent(&self) -> Option<FailoverEvent> {
        w(&self.0).intent.clone()
    }
    fn set_intent(&self, ev: Option<&FailoverEvent>) -> Result<(), StateError> {
        w(&self.0).intent = ev.cloned();
        Ok(())
    }
    fn history(&self) -> Vec<FailoverEvent> {
        w(&self.0).history.clone()
    }
    fn push_history(&self, ev: &FailoverEvent) -> Result<(), StateError> {
        let mut w = w(&self.0);
        w.history.retain(|e| e.id != ev.id);
        w.history.push(ev.clone());
        Ok(())
    }
    fn needs_rewind(&self, member: &str) -> bool {
        w(&self.0).rewind.contains(member)
    }
    fn set_needs_rewind(&self, member: &str, on: bool) -> Result<(), StateError> {
        let mut w = w(&self.0);
        if on {
            w.rewind.insert(member.into());
        } else {
            w.rewind.remove(member);
        }
        Ok(())
    }
}

impl WriteRouter for FakeRouter {
    fn fence(
        &self,
        _: &mut dyn Runtime,
        _: &ValidatedTopology,
        member: &str,
    ) -> Result<(), RouterError> {
        let mut w = w(&self.0);
        w.log.push(format!("router fence {member}"));
        if w.write_server.as_deref() == Some(member) {
            w.write_server = None;
        }
        Ok(())
    }
    fn route(
        &self,
        _: &mut dyn Runtime,
        _: &ValidatedTopology,
        member: &str,
    ) -> Result<(), RouterError> {
        let mut w = w(&self.0);
        w.log.push(format!("router route {member}"));
        w.write_server = Some(member.into());
        Ok(())
    }
}
