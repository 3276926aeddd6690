//! PostgreSQL roles on Kubernetes, as pure functions: the `<env>-postgres-roles` ConfigMap (desired
//! primary, fenced members, epoch) that every member's entrypoint reads before starting postgres,
//! and the order in which role labels move so the `-rw` Service follows a failover without ever
//! selecting two primaries.
//!
//! Not here: deciding *whether* and *to whom* to fail over (the engine's detector and `failover::choose`)
//! and the API calls that carry the moves out (the operator).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};

use super::labels;
use super::manifests::names;
use crate::topology::model::{PostgresModel, Role, ValidatedTopology};

pub const PRIMARY: &str = "primary";
pub const REPLICA: &str = "replica";
/// Keys of the roles ConfigMap.
pub const KEY_PRIMARY: &str = "primary";
pub const KEY_FENCED: &str = "fenced";
pub const KEY_EPOCH: &str = "epoch";
/// The validated topology (JSON) the entrypoint renders its role settings from.
pub const KEY_TOPOLOGY: &str = "topology.json";

pub fn role_label(r: Role) -> &'static str {
    match r {
        Role::Primary => PRIMARY,
        Role::Replica => REPLICA,
    }
}

/// What the members must do: who is primary, who must not start, and a counter that grows with
/// every role change (a member that saw an older epoch re-reads before acting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleState {
    pub primary: String,
    pub fenced: BTreeSet<String>,
    pub epoch: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RolesError {
    #[error("failed to read the roles ConfigMap: key `{key}` is missing")]
    Missing { key: &'static str },
    #[error("failed to read the roles ConfigMap: epoch `{value}` is not a number")]
    Epoch { value: String },
    #[error("failed to move the primary to `{member}`: no such PostgreSQL member")]
    UnknownMember { member: String },
    #[error("failed to move the primary to `{member}`: it is fenced")]
    Fenced { member: String },
}

impl RoleState {
    /// The state of a fresh environment: the rendered primary, nobody fenced, epoch 0.
    pub fn initial(pg: &PostgresModel) -> RoleState {
        RoleState {
            primary: pg.primary.clone(),
            fenced: BTreeSet::new(),
            epoch: 0,
        }
    }

    pub fn to_data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (KEY_PRIMARY.to_string(), self.primary.clone()),
            (
                KEY_FENCED.to_string(),
                self.fenced.iter().cloned().collect::<Vec<_>>().join(","),
            ),
            (KEY_EPOCH.to_string(), self.epoch.to_string()),
        ])
    }

    pub fn from_data(data: &BTreeMap<String, String>) -> Result<RoleState, RolesError> {
        let primary = data
            .get(KEY_PRIMARY)
            .ok_or(RolesError::Missing { key: KEY_PRIMARY })?
            .trim()
            .to_string();
        let fenced = data
            .get(KEY_FENCED)
            .map(|f| {
                f.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let e = data
            .get(KEY_EPOCH)
            .ok_or(RolesError::Missing { key: KEY_EPOCH })?;
        let epoch = e
            .trim()
            .parse()
            .map_err(|_| RolesError::Epoch { value: e.clone() })?;
        Ok(RoleState {
            primary,
            fenced,
            epoch,
        })
    }

    /// Step 1 of a failover: fence the old primary (it must not come back writable).
    pub fn fence(&self, member: &str) -> RoleState {
        let mut s = self.clone();
        s.fenced.insert(member.to_string());
        s.epoch += 1;
        s
    }

    /// Step 2: `member` becomes the desired primary. The old primary stays fenced until it has
    /// rejoined as a replica (`unfence`).
    pub fn promote(&self, pg: &PostgresModel, member: &str) -> Result<RoleState, RolesError> {
        if pg.member(member).is_none() {
            return Err(RolesError::UnknownMember {
                member: member.into(),
            });
        }
        if self.fenced.contains(member) {
            return Err(RolesError::Fenced {
                member: member.into(),
            });
        }
        let mut s = self.clone();
        s.primary = member.to_string();
        s.epoch += 1;
        Ok(s)
    }

    pub fn unfence(&self, member: &str) -> RoleState {
        let mut s = self.clone();
        if s.fenced.remove(member) {
            s.epoch += 1;
        }
        s
    }
}

/// The roles ConfigMap, mounted into every member at `manifests::ROLES_MOUNT`: the role state and
/// the validated topology (no secret values: those stay in the Secret).
pub fn roles_config_map(t: &ValidatedTopology, _pg: &PostgresModel, s: &RoleState) -> ConfigMap {
    let mut data = s.to_data();
    // A ValidatedTopology is plain data; serialising it cannot fail.
    data.insert(
        KEY_TOPOLOGY.to_string(),
        serde_json::to_string(t).unwrap_or_default(),
    );
    let mut l = labels::environment(&t.name);
    l.insert(labels::NAME.into(), "postgres".into());
    ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(names::roles(&t.name)),
            namespace: Some(t.namespace.clone()),
            labels: Some(l),
            ..Default::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// One role-label change on one member's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMove {
    pub member: String,
    /// `None` removes the label: the pod is selected by neither `-rw` nor `-ro`.
    pub role: Option<&'static str>,
}

/// The label changes that make the `-rw` Service follow `next`, in the order they must be made:
/// first every pod that is labelled primary but must not be loses its label (so `-rw` is empty,
/// never doubled), then the new primary gets `primary`, then the others (not fenced) `replica`.
/// `current` maps member -> its pod's role label now (absent: no label).
pub fn label_moves(current: &BTreeMap<String, Option<String>>, next: &RoleState) -> Vec<LabelMove> {
    let mut out = Vec::new();
    for (m, role) in current {
        if role.as_deref() == Some(PRIMARY) && *m != next.primary {
            out.push(LabelMove {
                member: m.clone(),
                role: None,
            });
        }
    }
    for (m, role) in current {
        if next.fenced.contains(m) && role.is_some() && !out.iter().any(|x| x.member == *m) {
            out.push(LabelMove {
                member: m.clone(),
                role: None,
            });
        }
    }
    if current.contains_key(&next.primary)
        && !next.fenced.contains(&next.primary)
        && current.get(&next.primary).and_then(|r| r.as_deref()) != Some(PRIMARY)
    {
        out.push(LabelMove {
            member: next.primary.clone(),
            role: Some(PRIMARY),
        });
    }
    for (m, role) in current {
        if *m != next.primary && !next.fenced.contains(m) && role.as_deref() != Some(REPLICA) {
            out.push(LabelMove {
                member: m.clone(),
                role: Some(REPLICA),
            });
        }
    }
    out
}

/// Members the `-rw` Service selects after applying `moves` to `current` (tests and checks).
pub fn rw_selected(current: &BTreeMap<String, Option<String>>, moves: &[LabelMove]) -> Vec<String> {
    let mut labels: BTreeMap<String, Option<String>> = current.clone();
    for mv in moves {
        labels.insert(mv.member.clone(), mv.role.map(str::to_string));
    }
    labels
        .into_iter()
        .filter(|(_, r)| r.as_deref() == Some(PRIMARY))
        .map(|(m, _)| m)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cur(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(m, r)| (m.to_string(), r.map(str::to_string)))
            .collect()
    }

    fn state(primary: &str, fenced: &[&str], epoch: u64) -> RoleState {
        RoleState {
            primary: primary.into(),
            fenced: fenced.iter().map(|s| s.to_string()).collect(),
            epoch,
        }
    }

    #[test]
    fn failover_unlabels_the_old_primary_before_labelling_the_new_one() {
        let now = cur(&[
            ("postgres-0", Some(PRIMARY)),
            ("postgres-1", Some(REPLICA)),
            ("postgres-2", Some(REPLICA)),
        ]);
        let next = state("postgres-1", &["postgres-0"], 2);
        let moves = label_moves(&now, &next);
        assert_eq!(
            moves,
            vec![
                LabelMove {
                    member: "postgres-0".into(),
                    role: None
                },
                LabelMove {
                    member: "postgres-1".into(),
                    role: Some(PRIMARY)
                },
            ]
        );
        // After every prefix of the moves, -rw selects at most one pod.
        for i in 0..=moves.len() {
            assert!(rw_selected(&now, &moves[..i]).len() <= 1, "prefix {i}");
        }
        assert_eq!(rw_selected(&now, &moves), vec!["postgres-1".to_string()]);
    }

    #[test]
    fn rejoined_member_becomes_a_replica_once_unfenced() {
        let now = cur(&[
            ("postgres-0", None),
            ("postgres-1", Some(PRIMARY)),
            ("postgres-2", Some(REPLICA)),
        ]);
        let next = state("postgres-1", &["postgres-0"], 2).unfence("postgres-0");
        assert_eq!(next.epoch, 3);
        assert_eq!(
            label_moves(&now, &next),
            vec![LabelMove {
                member: "postgres-0".into(),
                role: Some(REPLICA)
            }]
        );
        assert!(label_moves(&now, &state("postgres-1", &["postgres-0"], 2)).is_empty());
    }

    #[test]
    fn converged_labels_need_no_move() {
        let now = cur(&[("postgres-0", Some(PRIMARY)), ("postgres-1", Some(REPLICA))]);
        assert!(label_moves(&now, &state("postgres-0", &[], 0)).is_empty());
    }

    #[test]
    fn two_primaries_are_reduced_to_the_desired_one() {
        let now = cur(&[("postgres-0", Some(PRIMARY)), ("postgres-1", Some(PRIMARY))]);
        let moves = label_moves(&now, &state("postgres-1", &[], 4));
        assert_eq!(rw_selected(&now, &moves), vec!["postgres-1".to_string()]);
        assert_eq!(moves[0].role, None);
    }

    #[test]
    fn role_state_round_trips_through_configmap_data() {
        let s = state("postgres-2", &["postgres-0", "postgres-1"], 7);
        assert_eq!(RoleState::from_data(&s.to_data()).unwrap(), s);
        let mut bad = s.to_data();
        bad.insert(KEY_EPOCH.into(), "x".into());
        assert_eq!(
            RoleState::from_data(&bad),
            Err(RolesError::Epoch { value: "x".into() })
        );
        bad.remove(KEY_PRIMARY);
        assert_eq!(
            RoleState::from_data(&bad),
            Err(RolesError::Missing { key: KEY_PRIMARY })
        );
    }
}
