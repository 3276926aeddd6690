//! The PostgreSQL pod's instance entrypoint, as a pure decision: given the member, the roles
//! ConfigMap (desired primary, fenced members) and what its data directory holds, what must happen
//! before `postgres` may start. The kubelet restarts containers on its own, so this check is what
//! keeps a fenced or demoted old primary from ever coming back writable (CloudNativePG's instance
//! manager plays the same part).
//!
//! Not here: carrying the plan out (initdb, pg_basebackup, pg_rewind and exec of postgres are the
//! engine's postgres recipe, shared with the local and docker runtimes).

use super::roles::RoleState;
use crate::topology::model::ValidatedTopology;

/// What the data directory holds when the container starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataDir {
    /// `PG_VERSION` exists: the cluster was initialised or cloned before.
    pub initialised: bool,
    /// `standby.signal` exists: it last ran as a standby.
    pub standby_signal: bool,
}

/// Where a replica streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub member: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Do not start postgres; re-read the roles after `retry_ms`.
    Wait { reason: String, retry_ms: u64 },
    /// initdb, create bssctl's roles, then start as primary.
    InitPrimary,
    /// Remove `standby.signal` if present and start as primary.
    StartPrimary { remove_standby_signal: bool },
    /// pg_basebackup from the upstream, write `standby.signal`, start as replica.
    CloneReplica { upstream: Upstream },
    /// The directory last ran as a primary: pg_rewind against the upstream (re-clone if that
    /// fails), write `standby.signal`, start as replica.
    RewindReplica { upstream: Upstream },
    /// Ensure `standby.signal`, point `primary_conninfo` at the upstream, start as replica.
    StartReplica { upstream: Upstream },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InstanceError {
    #[error("failed to plan the start of `{member}`: it is not a PostgreSQL member of `{env}`")]
    UnknownMember { member: String, env: String },
    #[error(
        "failed to plan the start of `{member}`: the desired primary `{primary}` is not a member"
    )]
    UnknownPrimary { member: String, primary: String },
}

/// How long a fenced member or a replica without a primary waits before reading the roles again.
pub const RETRY_MS: u64 = 2_000;

pub fn decide(
    t: &ValidatedTopology,
    member: &str,
    roles: &RoleState,
    data: DataDir,
) -> Result<Plan, InstanceError> {
    let pg = t
        .postgres
        .as_ref()
        .ok_or_else(|| InstanceError::UnknownMember {
            member: member.into(),
            env: t.name.clone(),
        })?;
    if pg.member(member).is_none() {
        return Err(InstanceError::UnknownMember {
            member: member.into(),
            env: t.name.clone(),
        });
    }
    if roles.fenced.contains(member) {
        return Ok(Plan::Wait {
            reason: format!("{member} is fenced (epoch {})", roles.epoch),
            retry_ms: RETRY_MS,
        });
    }
    let primary = pg
        .member(&roles.primary)
        .ok_or_else(|| InstanceError::UnknownPrimary {
            member: member.into(),
            primary: roles.primary.clone(),
        })?;
    if roles.primary == member {
        return Ok(if data.initialised {
            Plan::StartPrimary {
                remove_standby_signal: data.standby_signal,
            }
        } else {
            Plan::InitPrimary
        });
    }
    if roles.fenced.contains(&roles.primary) {
        return Ok(Plan::Wait {
            reason: format!("desired primary {} is fenced", roles.primary),
            retry_ms: RETRY_MS,
        });
    }
    let upstream = Upstream {
        member: primary.name.clone(),
        host: primary.host.clone(),
        port: primary.port,
    };
    Ok(match (data.initialised, data.standby_signal) {
        (false, _) => Plan::CloneReplica { upstream },
        (true, false) => Plan::RewindReplica { upstream },
        (true, true) => Plan::StartReplica { upstream },
    })
}
