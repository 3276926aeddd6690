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

/// Steps whose start is shown even without `--verbose`: they can take a while.
fn long_step(step: &str) -> bool {
    matches!(step, "basebackup" | "initdb" | "migrate" | "rollback")
}

/// The line printed when a step starts (None: not shown).
fn start_line(at: f64, e: &Event, verbose: bool) -> Option<String> {
    (e.status == "start" && (verbose || long_step(&e.step)))
        .then(|| format!("[{at:6.1}s] {:<20} {:<11} ...", e.component, e.step))
}

/// The lines printed when a step ends.
fn end_lines(at: f64, e: &Event) -> Vec<String> {
    let secs = e.elapsed_ms as f64 / 1000.0;
    if e.status == "ok" {
        let d = if e.detail.is_empty() {
            String::new()
        } else {
            format!("  {}", e.detail)
        };
        return vec![format!(
            "[{at:6.1}s] {:<20} {:<11} ok {secs:>7.2}s{d}",
            e.component, e.step
        )];
    }
    let mut out = vec![format!(
        "[{at:6.1}s] {:<20} {:<11} FAILED after {secs:.2}s",
        e.component, e.step
    )];
    out.extend(e.detail.lines().map(|l| format!("           {l}")));
    out
}

/// Human progress for a log or a pipe: one line per finished step with its time (and a line
/// when a long step starts); failures with their detail. No control characters.
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
        if e.status == "start" {
            if let Some(l) = start_line(at, e, self.verbose) {
                eprintln!("{l}");
            }
            return;
        }
        for l in end_lines(at, e) {
            eprintln!("{l}");
        }
    }
}

impl Reporter for JsonReporter {
    fn event(&mut self, e: &Event) {
        journal(&mut self.journal, e);
        println!("{}", serde_json::to_string(e).unwrap_or_default());
    }
}

/// Steps under way, newest last, with when they started.
#[derive(Default)]
struct Running {
    steps: Vec<(String, String, Instant)>,
    frame: usize,
    /// Whether the status line is on screen (it is erased before anything else is printed).
    shown: bool,
}

/// Erases the status line and moves to its start.
const CLEAR: &str = "\r\x1b[2K";
const FRAMES: &[char] = &['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

impl Running {
    /// The status line: spinner, the running step and its elapsed time (how many more run).
    fn line(&self, start: Instant) -> Option<String> {
        let (component, step, since) = self.steps.last()?;
        let more = match self.steps.len() {
            1 => String::new(),
            n => format!("  (+{} more)", n - 1),
        };
        Some(format!(
            "{} [{:6.1}s] {component:<20} {step:<11} {:.1}s{more}",
            FRAMES[self.frame % FRAMES.len()],
            start.elapsed().as_secs_f64(),
            since.elapsed().as_secs_f64()
        ))
    }

    fn draw(&mut self, out: &mut dyn Write, start: Instant) {
        match self.line(start) {
            Some(l) => {
                let _ = write!(out, "{CLEAR}{l}");
                self.shown = true;
            }
            None if self.shown => {
                let _ = write!(out, "{CLEAR}");
                self.shown = false;
            }
            None => {}
        }
        let _ = out.flush();
    }
}

/// Live progress on a terminal: finished steps as lines (as [`TextReporter`] prints them) and,
/// below them, one status line redrawn ten times a second with a spinner and the elapsed time
/// of the step under way (base backups, health gates, image builds), as cargo and docker show.
pub struct LiveReporter {
    start: Instant,
    journal: Option<std::fs::File>,
    verbose: bool,
    running: std::sync::Arc<std::sync::Mutex<Running>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl LiveReporter {
    /// Draws on stderr, which the caller has checked is a terminal.
    pub fn new(start: Instant, journal: Option<std::fs::File>, verbose: bool) -> LiveReporter {
        let running = std::sync::Arc::new(std::sync::Mutex::new(Running::default()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s) = (running.clone(), stop.clone());
        let ticker = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                while !s.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if let Ok(mut run) = r.lock() {
                        if !run.steps.is_empty() {
                            run.frame += 1;
                            run.draw(&mut std::io::stderr(), start);
                        }
                    }
                }
            })
            .ok();
        LiveReporter {
            start,
            journal,
            verbose,
            running,
            stop,
            ticker,
        }
    }
}

impl Reporter for LiveReporter {
    fn event(&mut self, e: &Event) {
        journal(&mut self.journal, e);
        let at = self.start.elapsed().as_secs_f64();
        let Ok(mut run) = self.running.lock() else {
            return;
        };
        let mut err = std::io::stderr().lock();
        if run.shown {
            let _ = write!(err, "{CLEAR}");
            run.shown = false;
        }
        if e.status == "start" {
            if self.verbose {
                if let Some(l) = start_line(at, e, true) {
                    let _ = writeln!(err, "{l}");
                }
            }
            run.steps
                .push((e.component.clone(), e.step.clone(), Instant::now()));
        } else {
            if let Some(i) = run
                .steps
                .iter()
                .rposition(|(c, s, _)| *c == e.component && *s == e.step)
            {
                run.steps.remove(i);
            }
            for l in end_lines(at, e) {
                let _ = writeln!(err, "{l}");
            }
        }
        run.draw(&mut err, self.start);
    }
}

impl Drop for LiveReporter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Ok(mut run) = self.running.lock() {
            run.steps.clear();
            run.draw(&mut std::io::stderr(), self.start);
        }
    }
}

/// Whether live progress can be drawn: stderr is a terminal that understands cursor control.
pub fn stderr_is_live_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

pub fn open_journal(t: &ValidatedTopology) -> Option<std::fs::File> {
    let _ = std::fs::create_dir_all(&t.paths.root);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(&t.paths.root).join("journal.jsonl"))
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(status: &str, ms: u128, detail: &str) -> Event {
        Event {
            ts_ms: 0,
            component: "postgres-1".into(),
            step: "basebackup".into(),
            status: status.into(),
            elapsed_ms: ms,
            detail: detail.into(),
        }
    }

    #[test]
    fn the_status_line_is_drawn_in_place_and_erased() {
        let start = Instant::now();
        let mut run = Running::default();
        let mut out = Vec::new();
        run.draw(&mut out, start);
        assert!(out.is_empty(), "nothing runs: nothing drawn");
        run.steps
            .push(("postgres-1".into(), "basebackup".into(), Instant::now()));
        run.steps
            .push(("postgres-2".into(), "basebackup".into(), Instant::now()));
        run.draw(&mut out, start);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with(CLEAR), "{text:?}");
        assert!(
            !text.contains('\n'),
            "a status line never ends a line: {text:?}"
        );
        assert!(
            text.contains(FRAMES[0]) && text.contains("postgres-2"),
            "{text:?}"
        );
        assert!(text.contains("(+1 more)"), "{text:?}");
        run.steps.clear();
        out.clear();
        run.draw(&mut out, start);
        assert_eq!(String::from_utf8(out).unwrap(), CLEAR);
    }

    #[test]
    fn plain_lines_carry_no_control_characters() {
        let ok = end_lines(1.5, &ev("ok", 5290, "done"));
        assert_eq!(ok.len(), 1);
        assert!(ok[0].contains("basebackup") && ok[0].contains("5.29s") && ok[0].ends_with("done"));
        let fail = end_lines(2.0, &ev("fail", 100, "line one\nline two"));
        assert_eq!(fail.len(), 3);
        assert!(fail[0].contains("FAILED after 0.10s"));
        assert!(
            start_line(0.0, &ev("start", 0, ""), false).is_some(),
            "long steps show"
        );
        let mut quick = ev("start", 0, "");
        quick.step = "health".into();
        assert!(start_line(0.0, &quick, false).is_none());
        assert!(start_line(0.0, &quick, true).is_some());
        for l in ok.iter().chain(&fail) {
            assert!(!l.chars().any(|c| c.is_control()), "{l:?}");
        }
    }
}
