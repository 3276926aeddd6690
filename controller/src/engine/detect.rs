//! Failure detection for the PostgreSQL primary, as pure decisions over probe results: when is
//! the primary dead (several failed probes spanning the detection window), when is that death
//! corroborated by more than the controller's own probes (its process is gone and every answering
//! replica's WAL receiver has lost it: then a shorter window suffices), when is the next probe due
//! (never later than the moment the window closes), and when must the controller still hold back
//! (the replicas keep hearing from the primary: only this controller lost it). Time is passed in,
//! so every rule is testable without waiting.

use std::time::{Duration, Instant};

use crate::engine::failover::MemberView;
use crate::engine::runtime::DiskSpace;
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

/// Below this many free bytes a member's filesystem counts as full: less than two WAL segments
/// (16 MiB each), so a primary can neither switch to its next segment nor finish crash recovery
/// (its end-of-recovery checkpoint needs WAL space too).
pub const DISK_FULL_BELOW: u64 = 32 << 20;

/// What the log says when PostgreSQL ran out of space (the errno text, locale C).
pub const ENOSPC_TEXT: &str = "No space left on device";

/// Whether a member's storage is full, and the evidence: the fullest of its filesystems (data
/// directory, `pg_wal`) by statvfs, and the last log line naming `No space left on device`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Storage {
    /// Some filesystem of the member has less than `DISK_FULL_BELOW` free.
    pub full: bool,
    /// The fullest filesystem (None: its space could not be read).
    pub fullest: Option<DiskSpace>,
    /// The last log line of the tail that reports running out of space.
    pub enospc_line: Option<String>,
}

impl Storage {
    /// Judges `space` (None: unreadable) and the member's `log_tail`. With the space unreadable
    /// (a stopped container on a remote volume), the log alone decides.
    pub fn judge(space: Option<&[DiskSpace]>, log_tail: &str) -> Storage {
        let enospc_line = log_tail
            .lines()
            .rev()
            .find(|l| l.contains(ENOSPC_TEXT))
            .map(|l| l.trim().chars().take(300).collect::<String>());
        let fullest = space.and_then(|v| v.iter().min_by_key(|d| d.available_bytes).cloned());
        let full = match (&fullest, space) {
            (Some(d), _) => d.available_bytes < DISK_FULL_BELOW,
            (None, Some(_)) => false,
            (None, None) => enospc_line.is_some(),
        };
        Storage {
            full,
            fullest,
            enospc_line,
        }
    }

    /// Whether a restart has room to succeed: the space is known and not full.
    pub fn has_room(&self) -> bool {
        self.fullest.is_some() && !self.full
    }
}

/// Why a failover of the unreachable primary `member` must be held back: its storage is full.
/// Promoting a replica does not help when the cause is storage (the new primary's disk is no
/// bigger, and the old one still has every acknowledged commit), and a primary that recovers
/// once space is freed would be a second one (CloudNativePG holds back too).
pub fn hold_for_storage(member: &str, s: &Storage) -> Option<String> {
    if !s.full {
        return None;
    }
    let mut why = format!("not failing over: disk full on {member}");
    if let Some(d) = &s.fullest {
        why.push_str(&format!(
            " ({} has {} KiB free of {} MiB)",
            d.path,
            d.available_bytes / 1024,
            d.total_bytes >> 20
        ));
    }
    if let Some(l) = &s.enospc_line {
        why.push_str(&format!("; its log: {l}"));
    }
    why.push_str(
        "; promoting a replica does not fix storage; free space and the primary is started again",
    );
    Some(why)
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

    fn space(path: &str, avail_mib: u64) -> DiskSpace {
        DiskSpace {
            path: path.into(),
            available_bytes: avail_mib << 20,
            total_bytes: 160 << 20,
        }
    }

    #[test]
    fn a_full_wal_filesystem_holds_the_failover_back() {
        let log = "LOG:  checkpoint starting\nPANIC:  could not write to file \"pg_wal/xlogtemp.77\": No space left on device\nLOG:  server process (PID 77) was terminated by signal 6: Aborted";
        // pg_wal on its own small filesystem, the data directory on a big one.
        let v = [
            space("/d/postgres-0", 9000),
            space("/d/postgres-0/pg_wal", 0),
        ];
        let s = Storage::judge(Some(&v), log);
        assert!(s.full && !s.has_room());
        let why = hold_for_storage("postgres-0", &s).unwrap();
        assert!(why.starts_with("not failing over: disk full on postgres-0 (/d/postgres-0/pg_wal has 0 KiB free of 160 MiB)"), "{why}");
        assert!(why.contains("xlogtemp.77"), "{why}");
        // Space freed: no hold, room to restart, though the old PANIC is still in the log.
        let v = [
            space("/d/postgres-0", 9000),
            space("/d/postgres-0/pg_wal", 120),
        ];
        let s = Storage::judge(Some(&v), log);
        assert!(!s.full && s.has_room());
        assert_eq!(hold_for_storage("postgres-0", &s), None);
        // A dead primary with space left and no such log line: an ordinary failover.
        let s = Storage::judge(Some(&[space("/d", 500)]), "LOG:  database system is ready");
        assert_eq!(hold_for_storage("postgres-0", &s), None);
        // Space unreadable: the log alone decides, and a restart is not known to have room.
        let s = Storage::judge(None, log);
        assert!(s.full && !s.has_room());
        let s = Storage::judge(None, "FATAL:  the database system is shutting down");
        assert!(!s.full && !s.has_room());
        // Just under two WAL segments free counts as full.
        let s = Storage::judge(Some(&[space("/d", 31)]), "");
        assert!(s.full);
    }

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
