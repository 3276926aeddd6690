//! Supervision: which crashed components to restart now, as a pure decision over what is
//! observed, with exponential backoff per component (1 s doubling to 60 s, reset after a minute
//! of health). A PostgreSQL primary is never restarted here: its loss belongs to failover, and
//! restarting it blindly could bring back a second primary — except the one case where the
//! failover monitor held the failover back because the primary's storage is full: nothing was
//! promoted, so once there is room again the same primary is restarted, with the same backoff
//! (`decide_held_primary`). Replicas are rejoined by the failover monitor when failover is on (a
//! former primary must be rewound first).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::render::Kind;

const FIRST: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(60);
const RESET_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Backoff {
    delay: Duration,
    next: Instant,
    healthy_since: Option<Instant>,
}

/// What to do about one component now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It runs: nothing to do.
    Keep,
    /// Down and its backoff has passed: start it.
    Restart,
    /// Down, but the next attempt is due later.
    Wait { until: Instant },
    /// Down, and supervision must not touch it.
    Leave(LeaveReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The PostgreSQL primary: failover decides.
    Primary,
    /// A PostgreSQL replica while failover is on: the monitor rejoins it.
    ReplicaRejoinedByFailover,
}

/// What the supervisor knows about one component for a decision.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub kind: Kind,
    pub running: bool,
    /// PostgreSQL member that is the primary now.
    pub is_primary: bool,
    pub failover_on: bool,
}

/// Backoff state of every component.
#[derive(Debug, Default)]
pub struct Supervisor {
    backoff: BTreeMap<String, Backoff>,
}

impl Supervisor {
    pub fn decide(&mut self, now: Instant, name: &str, s: Seen) -> Decision {
        if s.running {
            let b = self.backoff.entry(name.to_string()).or_insert(Backoff {
                delay: FIRST,
                next: now,
                healthy_since: Some(now),
            });
            let since = *b.healthy_since.get_or_insert(now);
            if now.saturating_duration_since(since) > RESET_AFTER {
                b.delay = FIRST;
            }
            return Decision::Keep;
        }
        if s.kind == Kind::Postgres && s.is_primary {
            return Decision::Leave(LeaveReason::Primary);
        }
        if s.kind == Kind::Postgres && s.failover_on {
            return Decision::Leave(LeaveReason::ReplicaRejoinedByFailover);
        }
        let b = self.backoff.entry(name.to_string()).or_insert(Backoff {
            delay: FIRST,
            next: now,
            healthy_since: None,
        });
        b.healthy_since = None;
        if now < b.next {
            return Decision::Wait { until: b.next };
        }
        Decision::Restart
    }

    /// The primary whose failover is held back because its storage is full (no replica was
    /// promoted, so it is still the only primary): left alone while there is no room, restarted
    /// with backoff once there is (space freed, volume grown), kept while it runs.
    pub fn decide_held_primary(
        &mut self,
        now: Instant,
        name: &str,
        running: bool,
        has_room: bool,
    ) -> Decision {
        if running {
            return self.decide(
                now,
                name,
                Seen {
                    kind: Kind::Postgres,
                    running: true,
                    is_primary: true,
                    failover_on: true,
                },
            );
        }
        if !has_room {
            return Decision::Leave(LeaveReason::Primary);
        }
        // As an ordinary supervised process from here on.
        self.decide(
            now,
            name,
            Seen {
                kind: Kind::Redis,
                running: false,
                is_primary: false,
                failover_on: false,
            },
        )
    }

    /// A restart of `name` was attempted at `now`: the next one waits twice as long.
    pub fn restarted(&mut self, now: Instant, name: &str) {
        let b = self.backoff.entry(name.to_string()).or_insert(Backoff {
            delay: FIRST,
            next: now,
            healthy_since: None,
        });
        b.next = now + b.delay;
        b.delay = (b.delay * 2).min(MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(kind: Kind) -> Seen {
        Seen {
            kind,
            running: false,
            is_primary: false,
            failover_on: true,
        }
    }

    #[test]
    fn restarts_back_off_exponentially_and_reset_after_a_healthy_minute() {
        let t0 = Instant::now();
        let mut s = Supervisor::default();
        assert_eq!(s.decide(t0, "redis", down(Kind::Redis)), Decision::Restart);
        s.restarted(t0, "redis");
        // 1 s, then 2 s, 4 s, ... between attempts.
        let mut at = t0;
        for expect in [1u64, 2, 4, 8, 16, 32, 60, 60] {
            let early = at + Duration::from_millis(expect * 1000 - 1);
            assert!(matches!(
                s.decide(early, "redis", down(Kind::Redis)),
                Decision::Wait { .. }
            ));
            at += Duration::from_secs(expect);
            assert_eq!(s.decide(at, "redis", down(Kind::Redis)), Decision::Restart);
            s.restarted(at, "redis");
        }
        // Healthy for over a minute: the next crash is retried after 1 s again.
        let up = Seen {
            running: true,
            ..down(Kind::Redis)
        };
        let healthy_from = at + Duration::from_secs(60);
        s.decide(healthy_from, "redis", up);
        s.decide(healthy_from + Duration::from_secs(61), "redis", up);
        let crash = healthy_from + Duration::from_secs(62);
        assert_eq!(
            s.decide(crash, "redis", down(Kind::Redis)),
            Decision::Restart
        );
        s.restarted(crash, "redis");
        assert_eq!(
            s.decide(crash + Duration::from_secs(1), "redis", down(Kind::Redis)),
            Decision::Restart
        );
    }

    #[test]
    fn a_primary_held_for_full_storage_restarts_only_with_room() {
        let t0 = Instant::now();
        let mut s = Supervisor::default();
        for i in 0..5 {
            assert_eq!(
                s.decide_held_primary(t0 + Duration::from_secs(i), "postgres-0", false, false),
                Decision::Leave(LeaveReason::Primary)
            );
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            s.decide_held_primary(t1, "postgres-0", false, true),
            Decision::Restart
        );
        s.restarted(t1, "postgres-0");
        // It failed again at once (still too little space): the next attempt backs off.
        assert!(matches!(
            s.decide_held_primary(t1 + Duration::from_millis(500), "postgres-0", false, true),
            Decision::Wait { .. }
        ));
        assert_eq!(
            s.decide_held_primary(t1 + Duration::from_secs(1), "postgres-0", false, true),
            Decision::Restart
        );
        assert_eq!(
            s.decide_held_primary(t1 + Duration::from_secs(2), "postgres-0", true, true),
            Decision::Keep
        );
    }

    #[test]
    fn a_dead_primary_is_never_restarted_blindly() {
        let t0 = Instant::now();
        let mut s = Supervisor::default();
        let primary = Seen {
            is_primary: true,
            failover_on: false,
            ..down(Kind::Postgres)
        };
        for i in 0..10 {
            assert_eq!(
                s.decide(t0 + Duration::from_secs(i * 100), "postgres-0", primary),
                Decision::Leave(LeaveReason::Primary)
            );
        }
        assert_eq!(
            s.decide(t0, "postgres-1", down(Kind::Postgres)),
            Decision::Leave(LeaveReason::ReplicaRejoinedByFailover)
        );
        // Without failover a replica is an ordinary supervised process.
        let replica = Seen {
            failover_on: false,
            ..down(Kind::Postgres)
        };
        assert_eq!(s.decide(t0, "postgres-1", replica), Decision::Restart);
    }
}
