//! Runtimes: where the stack runs. `local` (processes on this machine) is the embedded default;
//! docker and kubernetes implement the same steps later.
//!
//! This module owns the apply orchestration shared by every runtime: preflight, state, executing
//! the plan, recording what was applied, the journal and progress events.

pub mod local;
pub mod process;

use std::collections::BTreeMap;
use std::io::Write;
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

/// One progress event: a step of a component started, finished or failed.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u128,
    pub component: String,
    pub step: String,
    /// start | ok | fail
    pub status: String,
    pub elapsed_ms: u128,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Event {
    pub fn step(
        component: &str,
        step: &str,
        status: &str,
        elapsed: Duration,
        detail: String,
    ) -> Event {
        Event {
            ts_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            component: component.into(),
            step: step.into(),
            status: status.into(),
            elapsed_ms: elapsed.as_millis(),
            detail,
        }
    }
}

pub trait Reporter {
    fn event(&mut self, e: &Event);
}

/// Human progress: one line per finished step with its time; failures with their detail.
pub struct TextReporter {
    pub start: Instant,
    pub journal: Option<std::fs::File>,
    pub verbose: bool,
}

/// Machine-readable progress: one JSON object per line on stdout.
pub struct JsonReporter {
    pub journal: Option<std::fs::File>,
}

fn journal(j: &mut Option<std::fs::File>, e: &Event) {
    if let Some(f) = j {
        let _ = writeln!(f, "{}", serde_json::to_string(e).unwrap_or_default());
    }
}

impl Reporter for TextReporter {
    fn event(&mut self, e: &Event) {
        journal(&mut self.journal, e);
        let at = self.start.elapsed().as_secs_f64();
        match e.status.as_str() {
            "start"
                if self.verbose
                    || matches!(
                        e.step.as_str(),
                        "basebackup" | "initdb" | "migrate" | "rollback"
                    ) =>
            {
                eprintln!("[{at:6.1}s] {:<20} {:<11} ...", e.component, e.step);
            }
            "start" => {}
            "ok" => {
                let d = if e.detail.is_empty() {
                    String::new()
                } else {
                    format!("  {}", e.detail)
                };
                eprintln!(
                    "[{at:6.1}s] {:<20} {:<11} ok {:>7.2}s{d}",
                    e.component,
                    e.step,
                    e.elapsed_ms as f64 / 1000.0
                );
            }
            _ => {
                eprintln!(
                    "[{at:6.1}s] {:<20} {:<11} FAILED after {:.2}s",
                    e.component,
                    e.step,
                    e.elapsed_ms as f64 / 1000.0
                );
                for l in e.detail.lines() {
                    eprintln!("           {l}");
                }
            }
        }
    }
}

impl Reporter for JsonReporter {
    fn event(&mut self, e: &Event) {
        journal(&mut self.journal, e);
        println!("{}", serde_json::to_string(e).unwrap_or_default());
    }
}

pub fn open_journal(t: &ValidatedTopology) -> Option<std::fs::File> {
    let _ = std::fs::create_dir_all(&t.paths.root);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&t.paths.root).join("journal.jsonl"))
        .ok()
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
