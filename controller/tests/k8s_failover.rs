//! In-cluster failover pieces that are pure: the PostgreSQL entrypoint's decision before it
//! starts postgres, and the roles ConfigMap's fence -> promote -> unfence sequence with the label
//! moves that make `-rw` follow (never selecting two primaries).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod k8s_support;

use std::collections::BTreeMap;

use controller::k8s::instance::{self, DataDir, Plan};
use controller::k8s::roles::{self, RoleState, RolesError, PRIMARY, REPLICA};

fn topology() -> controller::topology::model::ValidatedTopology {
    k8s_support::load_k8s(
        &k8s_support::repo_root().join("controller/tests/fixtures/valid/minimal.yaml"),
    )
    .validated
}

const EMPTY: DataDir = DataDir {
    initialised: false,
    standby_signal: false,
};
const WAS_PRIMARY: DataDir = DataDir {
    initialised: true,
    standby_signal: false,
};
const WAS_REPLICA: DataDir = DataDir {
    initialised: true,
    standby_signal: true,
};

#[test]
fn a_fenced_member_never_starts_whatever_its_data() {
    let t = topology();
    let pg = t.postgres.as_ref().unwrap();
    let s = RoleState::initial(pg).fence("postgres-0");
    for d in [EMPTY, WAS_PRIMARY, WAS_REPLICA] {
        assert!(matches!(
            instance::decide(&t, "postgres-0", &s, d).unwrap(),
            Plan::Wait { .. }
        ));
    }
}

#[test]
fn the_desired_primary_starts_as_primary_or_is_initialised() {
    let t = topology();
    let s = RoleState::initial(t.postgres.as_ref().unwrap());
    assert_eq!(
        instance::decide(&t, "postgres-0", &s, EMPTY).unwrap(),
        Plan::InitPrimary
    );
    assert_eq!(
        instance::decide(&t, "postgres-0", &s, WAS_PRIMARY).unwrap(),
        Plan::StartPrimary {
            remove_standby_signal: false
        }
    );
    // A promoted replica restarting: standby.signal must go.
    assert_eq!(
        instance::decide(&t, "postgres-0", &s, WAS_REPLICA).unwrap(),
        Plan::StartPrimary {
            remove_standby_signal: true
        }
    );
}

#[test]
fn replicas_clone_rewind_or_stream_from_the_desired_primary() {
    let t = topology();
    let pg = t.postgres.as_ref().unwrap();
    let s = RoleState::initial(pg)
        .fence("postgres-0")
        .promote(pg, "postgres-1")
        .unwrap();
    let up = |p: Plan| match p {
        Plan::CloneReplica { upstream }
        | Plan::RewindReplica { upstream }
        | Plan::StartReplica { upstream } => upstream,
        other => panic!("not a replica plan: {other:?}"),
    };
    let p1 = pg.member("postgres-1").unwrap();
    for d in [EMPTY, WAS_PRIMARY, WAS_REPLICA] {
        let u = up(instance::decide(&t, "postgres-2", &s, d).unwrap());
        assert_eq!(
            (u.member.as_str(), u.host.as_str(), u.port),
            ("postgres-1", p1.host.as_str(), p1.port)
        );
    }
    assert!(matches!(
        instance::decide(&t, "postgres-2", &s, EMPTY).unwrap(),
        Plan::CloneReplica { .. }
    ));
    // The old primary, once unfenced, must rewind before it streams.
    let s = s.unfence("postgres-0");
    assert!(matches!(
        instance::decide(&t, "postgres-0", &s, WAS_PRIMARY).unwrap(),
        Plan::RewindReplica { .. }
    ));
    assert!(matches!(
        instance::decide(&t, "postgres-0", &s, WAS_REPLICA).unwrap(),
        Plan::StartReplica { .. }
    ));
}

#[test]
fn promotion_refuses_unknown_or_fenced_members_and_unknown_members_cannot_start() {
    let t = topology();
    let pg = t.postgres.as_ref().unwrap();
    let s = RoleState::initial(pg).fence("postgres-1");
    assert_eq!(
        s.promote(pg, "postgres-9"),
        Err(RolesError::UnknownMember {
            member: "postgres-9".into()
        })
    );
    assert_eq!(
        s.promote(pg, "postgres-1"),
        Err(RolesError::Fenced {
            member: "postgres-1".into()
        })
    );
    assert!(instance::decide(&t, "postgres-9", &s, EMPTY).is_err());
}

#[test]
fn failover_sequence_keeps_at_most_one_pod_behind_rw() {
    let t = topology();
    let pg = t.postgres.as_ref().unwrap();
    let mut labels: BTreeMap<String, Option<String>> = BTreeMap::from([
        ("postgres-0".to_string(), Some(PRIMARY.to_string())),
        ("postgres-1".to_string(), Some(REPLICA.to_string())),
        ("postgres-2".to_string(), Some(REPLICA.to_string())),
    ]);
    let s0 = RoleState::initial(pg);
    let s1 = s0.fence("postgres-0");
    let s2 = s1.promote(pg, "postgres-1").unwrap();
    let s3 = s2.unfence("postgres-0");
    assert!(s1.epoch < s2.epoch && s2.epoch < s3.epoch);
    for s in [&s1, &s2, &s3] {
        let moves = roles::label_moves(&labels, s);
        for i in 0..=moves.len() {
            assert!(roles::rw_selected(&labels, &moves[..i]).len() <= 1);
        }
        for m in moves {
            labels.insert(m.member, m.role.map(str::to_string));
        }
    }
    assert_eq!(labels["postgres-1"].as_deref(), Some(PRIMARY));
    assert_eq!(labels["postgres-0"].as_deref(), Some(REPLICA));
    assert_eq!(
        roles::rw_selected(&labels, &[]),
        vec!["postgres-1".to_string()]
    );
    // The roles ConfigMap carries the state the entrypoints read.
    let cm = roles::roles_config_map(&t, pg, &s3);
    assert_eq!(RoleState::from_data(cm.data.as_ref().unwrap()).unwrap(), s3);
}
