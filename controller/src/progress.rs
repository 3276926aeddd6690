//! Progress of long operations (apply, failover, switchover): events, the human and JSON
//! reporters, and the journal every event is appended to. Owns presentation only; what happens is
//! decided by the runtime and the engine.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::topology::model::ValidatedTopology;

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
