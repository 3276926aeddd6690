//! Failure detection for the PostgreSQL primary, as pure decisions over probe results: when is
//! the primary dead (several failed probes spanning the detection window), and when must the
//! controller still hold back (the replicas keep hearing from the primary: only this controller
//! lost it). Time is passed in, so every rule is testable without waiting.

use std::time::{Duration, Instant};

use crate::engine::failover::MemberView;
use crate::topology::model::ValidatedTopology;

/// Consecutive probe failures of the primary and when it last answered.
#[derive(Debug, Clone)]
pub struct Detector {
    last_ok: Instant,
    fails: u32,
}

/// What the probes say about the primary now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Failed probes, but fewer than needed or within the window.
    Suspect {
        fails: u32,
        down_for: Duration,
    },
    /// Unreachable for at least the window, with at least two failed probes.
    Dead {
        fails: u32,
        down_for: Duration,
    },
}

impl Detector {
    /// A detector that has seen nothing yet: the window starts now, never earlier (a restarted
    /// agent must not fail over on its first failed probe).
    pub fn new(now: Instant) -> Detector {
        Detector {
            last_ok: now,
            fails: 0,
        }
    }

    pub fn reset(&mut self, now: Instant) {
        self.last_ok = now;
        self.fails = 0;
    }

    pub fn fails(&self) -> u32 {
        self.fails
    }

    pub fn down_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_ok)
    }

    /// Feeds one probe result taken at `now`.
    pub fn observe(&mut self, now: Instant, primary_ok: bool, window: Duration) -> Verdict {
        if primary_ok {
            self.reset(now);
            return Verdict::Healthy;
        }
        self.fails += 1;
        let down_for = self.down_for(now);
        if self.fails >= 2 && down_for >= window {
            Verdict::Dead {
                fails: self.fails,
                down_for,
            }
        } else {
            Verdict::Suspect {
                fails: self.fails,
                down_for,
            }
        }
    }
}

/// Why the controller must not fail over although it cannot reach the primary: a replica's WAL
/// receiver streams from the primary and heard from it within the last second. Killing a
/// working primary is not the answer to a controller that lost its view of it.
pub fn primary_heard_by_replicas(t: &ValidatedTopology, views: &[MemberView]) -> Option<String> {
    let pg = t.postgres.as_ref()?;
    let pm = pg.primary_member()?;
    let heard: Vec<&str> = views
        .iter()
        .filter(|v| {
            v.name != pg.primary
                && v.wal_receiver_status.as_deref() == Some("streaming")
                && v.last_msg_age_seconds.is_some_and(|a| a < 1.0)
                && v.sender_port == Some(i32::from(pm.port))
        })
        .map(|v| v.name.as_str())
        .collect();
    (!heard.is_empty()).then(|| {
        format!(
            "replicas still receive WAL from the primary ({}); only this controller cannot reach it",
            heard.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(3);

    #[test]
    fn a_stall_shorter_than_the_window_is_only_suspect() {
        let t0 = Instant::now();
        let mut d = Detector::new(t0);
        for i in 1..=5 {
            let v = d.observe(t0 + Duration::from_millis(500 * i), false, WINDOW);
            assert!(matches!(v, Verdict::Suspect { .. }), "probe {i}: {v:?}");
        }
        // The primary answers again: the count starts over.
        assert_eq!(
            d.observe(t0 + Duration::from_millis(2900), true, WINDOW),
            Verdict::Healthy
        );
        let v = d.observe(t0 + Duration::from_millis(3500), false, WINDOW);
        assert!(matches!(v, Verdict::Suspect { fails: 1, .. }), "{v:?}");
    }

    #[test]
    fn dead_after_the_window_with_two_failures() {
        let t0 = Instant::now();
        let mut d = Detector::new(t0);
        // One failed probe after a long silence is not enough (an agent that just started).
        let v = d.observe(t0 + Duration::from_secs(10), false, WINDOW);
        assert!(matches!(v, Verdict::Suspect { fails: 1, .. }), "{v:?}");
        let v = d.observe(t0 + Duration::from_millis(10_500), false, WINDOW);
        assert!(
            matches!(v, Verdict::Dead { fails: 2, down_for } if down_for >= WINDOW),
            "{v:?}"
        );
    }
}
