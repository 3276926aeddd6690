//! Failure detection for the PostgreSQL primary, as pure decisions over probe results: when is
//! the primary dead (several failed probes spanning the detection window), when is that death
//! corroborated by more than the controller's own probes (its process is gone and every answering
//! replica's WAL receiver has lost it: then a shorter window suffices), when is the next probe due
//! (never later than the moment the window closes), and when must the controller still hold back
//! (the replicas keep hearing from the primary: only this controller lost it). Time is passed in,
//! so every rule is testable without waiting.

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

    /// When `window` closes for the current outage (None while the primary answers).
    pub fn deadline(&self, window: Duration) -> Option<Instant> {
        (self.fails > 0).then(|| self.last_ok + window)
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

/// When the next probe is due: one interval after this one started, or the moment the detection
/// window closes if that comes first, so a death is declared when the window ends rather than up
/// to one interval later (probes take time, so a fixed sleep drifts past the deadline).
pub fn next_probe_at(tick: Instant, interval: Duration, deadline: Option<Instant>) -> Instant {
    let next = tick + interval;
    match deadline {
        Some(d) if d > tick && d < next => d,
        _ => next,
    }
}

/// The window to apply: the configured one, or a third of it (at least one probe interval) when
/// the death is corroborated. A stalled primary (processes still there) or one the replicas still
/// hear from never gets the shorter window.
pub fn effective_window(window: Duration, interval: Duration, corroborated: bool) -> Duration {
    if corroborated {
        (window / 3).max(interval).min(window)
    } else {
        window
    }
}

/// Evidence beyond the failed probes that the primary is gone: the runtime reports its process
/// (container, pod) not running, and at least one replica answers and every answering replica's
/// WAL receiver has lost it (not streaming from the primary's port, or silent for a second).
pub fn primary_gone(t: &ValidatedTopology, views: &[MemberView], primary_running: bool) -> bool {
    let Some(pg) = t.postgres.as_ref() else {
        return false;
    };
    let Some(pm) = pg.primary_member() else {
        return false;
    };
    if primary_running {
        return false;
    }
    let answering: Vec<&MemberView> = views
        .iter()
        .filter(|v| v.name != pg.primary && v.reachable && v.role.as_deref() == Some("replica"))
        .collect();
    !answering.is_empty()
        && answering.iter().all(|v| {
            v.wal_receiver_status.as_deref() != Some("streaming")
                || v.sender_port != Some(i32::from(pm.port))
                || v.last_msg_age_seconds.is_none_or(|a| a >= 1.0)
        })
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn topology() -> ValidatedTopology {
        let text = "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: d}\nspec:\n  postgres: {replicas: 2}\n";
        crate::topology::load_str(
            text,
            "d.yaml",
            &crate::topology::ValidateOptions {
                state_dir: Some("/var/lib/bssctl-test".into()),
                ..Default::default()
            },
        )
        .unwrap()
        .validated
    }

    fn replica(name: &str, status: Option<&str>, port: i32, age: f64) -> MemberView {
        MemberView {
            name: name.into(),
            reachable: true,
            role: Some("replica".into()),
            wal_receiver_status: status.map(String::from),
            sender_port: Some(port),
            last_msg_age_seconds: Some(age),
            ..Default::default()
        }
    }

    /// Probes every 500ms that each take 80ms: a fixed cadence reaches 3s only with the 7th
    /// failed probe (~3.5s); with the deadline as a wake-up the death is declared at 3s.
    #[test]
    fn the_window_closes_on_time_not_one_probe_late() {
        let t0 = Instant::now();
        let (interval, latency) = (Duration::from_millis(500), Duration::from_millis(80));
        let mut d = Detector::new(t0);
        assert_eq!(d.observe(t0, true, WINDOW), Verdict::Healthy);
        let mut tick = t0;
        let mut declared = None;
        for _ in 0..20 {
            tick = next_probe_at(tick, interval, d.deadline(WINDOW));
            // The probe's result is known `latency` after it started; the deadline wake-up
            // probes a dead server, which refuses at once.
            let seen = if d.deadline(WINDOW) == Some(tick) {
                tick
            } else {
                tick + latency
            };
            if let Verdict::Dead { down_for, .. } = d.observe(seen, false, WINDOW) {
                declared = Some(down_for);
                break;
            }
        }
        let down_for = declared.unwrap();
        assert!(
            down_for >= WINDOW && down_for < WINDOW + Duration::from_millis(50),
            "declared after {down_for:?}"
        );
    }

    #[test]
    fn the_next_probe_is_never_after_the_deadline() {
        let t0 = Instant::now();
        let i = Duration::from_millis(500);
        assert_eq!(next_probe_at(t0, i, None), t0 + i);
        assert_eq!(
            next_probe_at(t0, i, Some(t0 + Duration::from_millis(200))),
            t0 + Duration::from_millis(200)
        );
        assert_eq!(
            next_probe_at(t0, i, Some(t0 + Duration::from_secs(2))),
            t0 + i
        );
        // A deadline already passed does not make the loop spin.
        assert_eq!(next_probe_at(t0 + i, i, Some(t0)), t0 + i + i);
    }

    #[test]
    fn only_a_corroborated_death_gets_the_short_window() {
        let t = topology();
        let port = i32::from(t.postgres.as_ref().unwrap().primary_member().unwrap().port);
        let lost = vec![
            replica("postgres-1", Some("waiting"), port, 3.0),
            replica("postgres-2", None, port, 0.0),
        ];
        assert!(primary_gone(&t, &lost, false));
        // Its process still runs (a stall, a hung node): no corroboration.
        assert!(!primary_gone(&t, &lost, true));
        // One replica still streams from it and heard from it just now: no corroboration.
        let heard = vec![
            replica("postgres-1", Some("waiting"), port, 3.0),
            replica("postgres-2", Some("streaming"), port, 0.2),
        ];
        assert!(!primary_gone(&t, &heard, false));
        // No replica answers: nothing corroborates.
        assert!(!primary_gone(&t, &[], false));
        let i = Duration::from_millis(500);
        assert_eq!(effective_window(WINDOW, i, true), Duration::from_secs(1));
        assert_eq!(effective_window(WINDOW, i, false), WINDOW);
        assert_eq!(
            effective_window(Duration::from_millis(1000), i, true),
            Duration::from_millis(500)
        );
    }

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
