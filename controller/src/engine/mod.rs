//! The engine: everything between the pure core (parse → validate → render → plan) and a
//! runtime's primitives, written once for every runtime.
//!
//! - `runtime`: the `Runtime` trait of primitives (put_config, start, stop, signal, exec,
//!   observe, endpoint, logs, remove, orphans, teardown) and its `Capabilities`.
//! - `clients`, `store`: the other two seams — how the controller talks to components (SQL,
//!   HTTP, Redis) and where it keeps its own state (applied bundle, secrets, failover intent).
//! - `health`: what "healthy" means per component kind, probed through the seams.
//! - `converge`: the ordered, health-gated apply with verified reloads and rollback, and the
//!   per-component recipes (PostgreSQL bootstrap, base backups, rewind, broker topics, backend
//!   migrations, HAProxy / Envoy / Prometheus reloads).
//! - `supervise`: the restart-with-backoff decision over observations (pure) and its loop step.
//! - `failover`: the detector (pure), the fence → promote → reroute → record sequence over a
//!   `WriteRouter`, switchover and rejoin.
//! - `agent`: the long-running controller (supervision + failover monitor + HTTP API).
//!
//! Dependency direction: core ← engine ← runtime implementations ← the `bssctl` binary. No file
//! in this module names a runtime implementation (a test, `engine_is_runtime_agnostic`, greps
//! for it).

pub mod agent;
pub mod clients;
pub mod converge;
pub mod detect;
pub mod failover;
pub mod health;
pub mod runtime;
pub mod store;
pub mod supervise;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod scenarios;

use std::time::Duration;

use crate::progress::{Event, Reporter};
use crate::topology::model::ValidatedTopology;

pub use clients::{Clients, RealClients};
pub use runtime::{Capabilities, Observed, Runtime, RuntimeError, StopMode, Task};
pub use store::{FileStore, StateStore};

/// Builds a runtime for a topology (the binary decides which: local, docker, ...). The agent
/// and the failover monitor make one per loop, for the topology as the current primary has it.
pub type RuntimeFactory =
    std::sync::Arc<dyn Fn(&ValidatedTopology) -> Box<dyn Runtime + Send> + Send + Sync>;

/// What every engine operation works with: the topology (roles as they are now), the runtime,
/// the clients, the state store and where progress goes.
pub struct Env<'a> {
    pub t: &'a ValidatedTopology,
    pub rt: &'a mut dyn Runtime,
    pub cl: &'a dyn Clients,
    pub store: &'a dyn StateStore,
    pub rep: &'a mut dyn Reporter,
}

impl Env<'_> {
    pub(crate) fn ev(
        &mut self,
        component: &str,
        step: &str,
        status: &str,
        elapsed: Duration,
        detail: impl Into<String>,
    ) {
        self.rep.event(&Event::step(
            component,
            step,
            status,
            elapsed,
            detail.into(),
        ));
    }
}

/// A reporter that drops every event (probes, status).
pub struct NullReporter;

impl Reporter for NullReporter {
    fn event(&mut self, _: &Event) {}
}

/// What one apply did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub actions: std::collections::BTreeMap<String, crate::plan::Action>,
    pub millis: u128,
}

/// Runs a plan on a runtime: preflight, state, every component in order behind its health gate,
/// then records the bundle as applied (with the templates it was rendered with). Safe to repeat
/// after a crash or kill.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    rt: &mut dyn Runtime,
    cl: &dyn Clients,
    store: &dyn StateStore,
    rep: &mut dyn Reporter,
    t: &ValidatedTopology,
    desired: &crate::render::Bundle,
    plan: &crate::plan::Plan,
    applied: Option<&crate::state::Applied>,
    templates: Option<String>,
) -> Result<ApplyReport, RuntimeError> {
    let start = std::time::Instant::now();
    rt.preflight(desired)?;
    for note in rt.prepare()? {
        rep.event(&Event::step("-", "cleanup", "ok", Duration::ZERO, note));
    }
    let actions = Env {
        t,
        rt,
        cl,
        store,
        rep,
    }
    .apply(desired, applied.map(|a| &a.bundle), plan)?;
    store
        .write_applied(&crate::state::Applied {
            bundle: desired.clone(),
            topology: Some(t.clone()),
            primary: t.postgres.as_ref().map(|p| p.primary.clone()),
            applied_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            templates,
        })
        .map_err(|e| RuntimeError::Prepare(format!("failed to record the applied state: {e}")))?;
    Ok(ApplyReport {
        actions,
        millis: start.elapsed().as_millis(),
    })
}
