//! The status of a `Topology` resource (the CRD's typed `status`), and the pure computation of its
//! conditions from what a reconcile observed, keeping transition times (operator-rs style).
//!
//! Not here: reading the observation from the cluster or patching the status (the operator).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopologyStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The PostgreSQL member that is primary now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,
    /// The member a failover or switchover in progress is promoting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,
    /// RFC 3339 time at which `currentPrimary` became primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary_timestamp: Option<String>,
    /// RFC 3339 time at which `targetPrimary` was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary_timestamp: Option<String>,
    /// Every failover and switchover, oldest first (the last 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RoleChange>,
    /// Objects applied by the last successful reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<u32>,
    /// Workloads whose pods are all ready, e.g. `14/16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
}

/// `Available`: every workload is applied and ready. `Progressing`: the spec is being rolled out
/// (objects applied, pods not all ready yet). `Degraded`: the last reconcile failed, or the spec
/// is invalid.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum ConditionType {
    Available,
    Progressing,
    Degraded,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: ConditionType,
    pub status: ConditionStatus,
    /// CamelCase reason, e.g. `Reconciled`, `InvalidSpec`, `ApplyFailed`.
    pub reason: String,
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoleChangeKind {
    Failover,
    Switchover,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleChange {
    pub kind: RoleChangeKind,
    pub from: String,
    pub to: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub reason: String,
}

/// What one reconcile saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The spec does not validate: nothing was applied.
    Invalid { message: String },
    /// Applying failed (API error, missing secret source, ...).
    Failed { reason: String, message: String },
    /// Everything was applied; `ready` of `total` workloads have all their pods ready.
    Applied { ready: usize, total: usize },
}

fn cond(
    t: ConditionType,
    on: bool,
    reason: &str,
    message: &str,
    generation: i64,
    prev: &[Condition],
    now: &str,
) -> Condition {
    let status = if on {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    let last_transition_time = prev
        .iter()
        .find(|c| c.type_ == t && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition {
        type_: t,
        status,
        reason: reason.into(),
        message: message.into(),
        last_transition_time,
        observed_generation: Some(generation),
    }
}

/// The three conditions after an observation. A condition whose status did not change keeps its
/// `lastTransitionTime`; `now` is RFC 3339.
pub fn conditions(
    prev: &[Condition],
    obs: &Observation,
    generation: i64,
    now: &str,
) -> Vec<Condition> {
    use ConditionType::*;
    let was_available = prev
        .iter()
        .any(|c| c.type_ == Available && c.status == ConditionStatus::True);
    match obs {
        Observation::Invalid { message } => vec![
            // What runs keeps running: Available stays as it was.
            cond(
                Available,
                was_available,
                "InvalidSpec",
                message,
                generation,
                prev,
                now,
            ),
            cond(
                Progressing,
                false,
                "InvalidSpec",
                "waiting for a valid spec",
                generation,
                prev,
                now,
            ),
            cond(
                Degraded,
                true,
                "InvalidSpec",
                message,
                generation,
                prev,
                now,
            ),
        ],
        Observation::Failed { reason, message } => vec![
            cond(
                Available,
                was_available,
                reason,
                message,
                generation,
                prev,
                now,
            ),
            cond(Progressing, true, reason, "retrying", generation, prev, now),
            cond(Degraded, true, reason, message, generation, prev, now),
        ],
        Observation::Applied { ready, total } => {
            let all = ready == total;
            let msg = format!("{ready}/{total} workloads ready");
            vec![
                cond(
                    Available,
                    all,
                    if all { "AllReady" } else { "WorkloadsNotReady" },
                    &msg,
                    generation,
                    prev,
                    now,
                ),
                cond(
                    Progressing,
                    !all,
                    if all { "Reconciled" } else { "RollingOut" },
                    &msg,
                    generation,
                    prev,
                    now,
                ),
                cond(Degraded, false, "Reconciled", &msg, generation, prev, now),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn get(c: &[Condition], t: ConditionType) -> &Condition {
        c.iter().find(|x| x.type_ == t).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let a = conditions(&[], &Observation::Applied { ready: 1, total: 3 }, 1, "t1");
        assert_eq!(
            get(&a, ConditionType::Progressing).status,
            ConditionStatus::True
        );
        assert_eq!(
            get(&a, ConditionType::Available).status,
            ConditionStatus::False
        );
        let b = conditions(&a, &Observation::Applied { ready: 2, total: 3 }, 1, "t2");
        assert_eq!(get(&b, ConditionType::Available).last_transition_time, "t1");
        assert_eq!(
            get(&b, ConditionType::Available).message,
            "2/3 workloads ready"
        );
        let c = conditions(&b, &Observation::Applied { ready: 3, total: 3 }, 2, "t3");
        assert_eq!(
            get(&c, ConditionType::Available).status,
            ConditionStatus::True
        );
        assert_eq!(get(&c, ConditionType::Available).last_transition_time, "t3");
        assert_eq!(get(&c, ConditionType::Degraded).last_transition_time, "t1");
        assert!(c.iter().all(|x| x.observed_generation == Some(2)));
    }

    #[test]
    fn an_invalid_spec_degrades_but_keeps_availability() {
        let ok = conditions(&[], &Observation::Applied { ready: 2, total: 2 }, 1, "t1");
        let bad = conditions(
            &ok,
            &Observation::Invalid {
                message: "spec.postgres.replicas: too many".into(),
            },
            2,
            "t2",
        );
        assert_eq!(
            get(&bad, ConditionType::Available).status,
            ConditionStatus::True
        );
        assert_eq!(
            get(&bad, ConditionType::Degraded).status,
            ConditionStatus::True
        );
        assert_eq!(get(&bad, ConditionType::Degraded).reason, "InvalidSpec");
        assert_eq!(
            get(&bad, ConditionType::Progressing).status,
            ConditionStatus::False
        );
    }
}
