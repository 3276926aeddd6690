//! Lease leader election, written with kube directly (get / create / update on one
//! `coordination.k8s.io/v1` Lease): two operator replicas never act at once. The decision is pure
//! (`decide`); `step` carries it out with optimistic concurrency (a conflict means someone else won).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Its holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds it and renews it.
    Wait,
}

/// What to do with the Lease as it is now.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseAction {
    let Some(spec) = lease else {
        return LeaseAction::Create;
    };
    if spec.holder_identity.as_deref() == Some(me) {
        return LeaseAction::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let expired = match &spec.renew_time {
        Some(MicroTime(t)) => t.as_second() + duration < now.as_second(),
        None => true,
    };
    if spec.holder_identity.as_deref().unwrap_or("").is_empty() || expired {
        LeaseAction::TakeOver
    } else {
        LeaseAction::Wait
    }
}

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
}

fn spec(
    cfg: &LeaseConfig,
    now: Timestamp,
    acquire: Option<MicroTime>,
    transitions: i32,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.duration.as_secs()).unwrap_or(15)),
        acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// One election round: returns whether we hold the Lease afterwards.
pub async fn step(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    let action = decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &cfg.identity,
        now,
    );
    let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
    match (action, current) {
        (LeaseAction::Wait, _) => Ok(false),
        (LeaseAction::Create, _) | (_, None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(cfg, now, None, 0)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
        (a, Some(mut lease)) => {
            let old = lease.spec.clone().unwrap_or_default();
            let transitions =
                old.lease_transitions.unwrap_or(0) + i32::from(a == LeaseAction::TakeOver);
            let acquire = (a == LeaseAction::Renew)
                .then_some(old.acquire_time)
                .flatten();
            lease.spec = Some(spec(cfg, now, acquire, transitions));
            // replace carries resourceVersion: a concurrent writer makes this a 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if conflict(&e) => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::from_second(renewed).unwrap_or(Timestamp::UNIX_EPOCH),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_replica_is_respected_and_a_stale_one_taken() {
        let now = Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH);
        assert_eq!(decide(None, "a", now), LeaseAction::Create);
        assert_eq!(decide(Some(&held("a", 990)), "a", now), LeaseAction::Renew);
        assert_eq!(decide(Some(&held("b", 990)), "a", now), LeaseAction::Wait);
        assert_eq!(
            decide(Some(&held("b", 980)), "a", now),
            LeaseAction::TakeOver
        );
        assert_eq!(
            decide(Some(&held("", 999)), "a", now),
            LeaseAction::TakeOver
        );
    }
}
