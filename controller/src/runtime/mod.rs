//! Runtimes: where the stack runs. `local` (processes on this machine) is the embedded default;
//! docker and kubernetes implement the same steps later.
//!
//! This module owns the apply orchestration shared by every runtime: preflight, state, executing
//! the plan, recording what was applied, the journal and progress events.

pub mod local;
pub mod process;

pub use crate::progress::{open_journal, Event, JsonReporter, Reporter, TextReporter};

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::plan::{Action, Plan};
use crate::render::Bundle;
use crate::state;
use crate::topology::model::ValidatedTopology;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("failed preflight checks, nothing was started:\n  - {}", .0.join("\n  - "))]
    Preflight(Vec<String>),
    #[error("failed to {step} {component}: {detail}")]
    Step {
        component: String,
        step: String,
        detail: String,
    },
    #[error("failed: {0}")]
    Io(String),
    #[error("failed to use runtime {0}: not implemented on this build (use the local runtime)")]
    Unsupported(String),
}

/// What one apply did.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub actions: std::collections::BTreeMap<String, Action>,
    pub millis: u128,
}

/// What a runtime does with a rendered bundle. The local runtime implements it; docker and
/// kubernetes implement the same steps (containers / objects instead of processes).
pub trait Runtime {
    /// Everything that must hold before anything starts (tools, ports, permissions).
    fn preflight(&self, desired: &Bundle) -> Result<(), RuntimeError>;
    /// Directories, secrets and files derived from them.
    fn prepare(&mut self) -> Result<(), RuntimeError>;
    /// Executes the plan in dependency order behind health gates; returns what was done.
    fn converge(
        &mut self,
        desired: &Bundle,
        applied: Option<&Bundle>,
        plan: &Plan,
    ) -> Result<BTreeMap<String, Action>, RuntimeError>;
    /// Probes every component of the bundle now.
    fn observe(&self, bundle: &Bundle) -> Vec<local::ComponentStatus>;
    /// Stops everything of the environment; returns processes (or objects) still left.
    fn teardown(
        &mut self,
        bundle: Option<&Bundle>,
        keep_data: bool,
    ) -> Result<Vec<u32>, RuntimeError>;
}

impl Runtime for local::Local<'_> {
    fn preflight(&self, desired: &Bundle) -> Result<(), RuntimeError> {
        local::Local::preflight(self, desired)
    }
    fn prepare(&mut self) -> Result<(), RuntimeError> {
        self.ensure_state()
    }
    fn converge(
        &mut self,
        desired: &Bundle,
        applied: Option<&Bundle>,
        plan: &Plan,
    ) -> Result<BTreeMap<String, Action>, RuntimeError> {
        self.apply(desired, applied, plan)
    }
    fn observe(&self, bundle: &Bundle) -> Vec<local::ComponentStatus> {
        self.status(bundle)
    }
    fn teardown(
        &mut self,
        bundle: Option<&Bundle>,
        keep_data: bool,
    ) -> Result<Vec<u32>, RuntimeError> {
        self.destroy(bundle, keep_data)
    }
}

/// `apply` on the local runtime.
pub fn apply_local(
    t: &ValidatedTopology,
    desired: &Bundle,
    plan: &Plan,
    applied: Option<&state::Applied>,
    reporter: &mut dyn Reporter,
) -> Result<ApplyReport, RuntimeError> {
    let mut rt = local::Local { t, reporter };
    apply(&mut rt, t, desired, plan, applied)
}

/// Runs a plan on a runtime: preflight, state, every component in order behind its health gate,
/// then records the bundle as applied. Safe to repeat after a crash or kill.
pub fn apply(
    rt: &mut dyn Runtime,
    t: &ValidatedTopology,
    desired: &Bundle,
    plan: &Plan,
    applied: Option<&state::Applied>,
) -> Result<ApplyReport, RuntimeError> {
    let start = Instant::now();
    rt.preflight(desired)?;
    rt.prepare()?;
    let actions = rt.converge(desired, applied.map(|a| &a.bundle), plan)?;
    let primary = t.postgres.as_ref().map(|p| p.primary.clone());
    state::write_applied(
        t,
        &state::Applied {
            bundle: desired.clone(),
            topology: Some(t.clone()),
            primary,
            applied_at: process::now_secs(),
        },
    )
    .map_err(|e| RuntimeError::Io(e.to_string()))?;
    Ok(ApplyReport {
        actions,
        millis: start.elapsed().as_millis(),
    })
}
