//! In-cluster failover: the engine's detector and failover sequence (`engine::detect`,
//! `engine::failover`) over the Kubernetes API. This module only implements the engine's seams:
//!
//! - `ServiceRouter` (`WriteRouter`): fencing writes the member into the roles ConfigMap's fence
//!   marker and takes the role label off its pod (`-rw` selects nobody); routing names the new
//!   primary in the roles ConfigMap and moves the labels (`roles::label_moves`), so `-rw` follows.
//! - `ClusterRuntime` (`Runtime`): members at their Service addresses; a kill deletes the pod
//!   with no grace period (the StatefulSet recreates it, and its entrypoint waits while fenced).
//! - `StatusStore` (`StateStore`): the applied record is the Topology resource (its validated spec
//!   rendered for the roles ConfigMap's primary); `currentPrimary`, `targetPrimary`, their
//!   timestamps and the history go to the resource's status; the secrets are the cluster's.
//! - `Monitor`: one probe round (the engine's `observe_all` -> `Detector` -> `choose` ->
//!   `failover`), then the old primary is unfenced so its entrypoint rewinds it.
//!
//! The seams are synchronous (the engine is): they run on a blocking thread and reach the API
//! through the operator's tokio runtime handle. Not here: the decisions (the engine), the pod's
//! own side of a role change (`entrypoint`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::labels;
use super::manifests::names;
use super::resource::TopologyResource;
use super::roles::{self, RoleState};
use crate::engine::clients::Clients;
use crate::engine::detect::{self, Detector, Verdict};
use crate::engine::failover::{
    self as ef, EventKind, EventStatus, FailoverEvent, Knowledge, RouterError, Services,
    WriteRouter,
};
use crate::engine::runtime::{
    Capabilities, Endpoint, Observed, Runtime, RuntimeError, Signal, StartOpts, StopMode, Task,
};
use crate::engine::store::StateStore;
use crate::progress::Reporter;
use crate::render::{self, Bundle, ComponentBundle, Kind};
use crate::state::{Applied, StateError};
use crate::topology::model::ValidatedTopology;
use crate::topology::status::{RoleChange, RoleChangeKind, TopologyStatus};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("failed to {verb} {what}: {source}")]
    Api {
        verb: &'static str,
        what: String,
        source: kube::Error,
    },
    #[error("failed to read the roles ConfigMap {name}: {source}")]
    Roles {
        name: String,
        source: roles::RolesError,
    },
    #[error("failed to move the roles of {env}: {detail}")]
    Move { env: String, detail: String },
}

fn api_err(
    verb: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(kube::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Api { verb, what, source }
}

/// The API of one environment, usable from the engine's blocking threads.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub handle: tokio::runtime::Handle,
    pub namespace: String,
    pub env: String,
}

impl Cluster {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The roles ConfigMap's state (None before the first reconcile created it).
    pub async fn roles(&self) -> Result<Option<RoleState>, ClusterError> {
        let name = names::roles(&self.env);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(cm) = api
            .get_opt(&name)
            .await
            .map_err(api_err("get", format!("ConfigMap/{name}")))?
        else {
            return Ok(None);
        };
        RoleState::from_data(&cm.data.unwrap_or_default())
            .map(Some)
            .map_err(|source| ClusterError::Roles { name, source })
    }

    /// Writes the role keys of the roles ConfigMap (the topology key is the reconcile's).
    pub async fn set_roles(&self, s: &RoleState) -> Result<(), ClusterError> {
        let name = names::roles(&self.env);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": s.to_data()})),
        )
        .await
        .map_err(api_err("patch", format!("ConfigMap/{name}")))?;
        Ok(())
    }

    /// member -> (pod name, role label) of the PostgreSQL pods.
    pub async fn members(
        &self,
    ) -> Result<BTreeMap<String, (String, Option<String>)>, ClusterError> {
        let sel = labels::kind_selector(&self.env, Kind::Postgres)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&sel))
            .await
            .map_err(api_err("list", format!("PostgreSQL pods of {}", self.env)))?;
        Ok(pods
            .items
            .iter()
            .filter_map(|p| {
                let l = p.labels();
                let m = l.get(labels::BSS_COMPONENT)?;
                Some((m.clone(), (p.name_any(), l.get(labels::ROLE).cloned())))
            })
            .collect())
    }

    /// Moves the role labels to `next` in the order that never lets `-rw` select two pods.
    pub async fn move_labels(&self, next: &RoleState) -> Result<usize, ClusterError> {
        let members = self.members().await?;
        let current: BTreeMap<String, Option<String>> = members
            .iter()
            .map(|(m, (_, r))| (m.clone(), r.clone()))
            .collect();
        let moves = roles::label_moves(&current, next);
        for mv in &moves {
            let Some((pod, _)) = members.get(&mv.member) else {
                continue;
            };
            let patch = json!({"metadata": {"labels": {labels::ROLE: mv.role}}});
            self.pods()
                .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err("label", format!("Pod/{pod}")))?;
        }
        Ok(moves.len())
    }

    fn pod_name(&self, member: &str) -> String {
        // One pod per member: the StatefulSet `<env>-<member>` with one replica.
        format!("{}-0", names::object(&self.env, member))
    }
}

/// Where writes go on Kubernetes: the `-rw` Service, through the role labels, and the roles
/// ConfigMap that every member's entrypoint obeys.
pub struct ServiceRouter {
    pub cluster: Cluster,
}

impl ServiceRouter {
    fn change(
        &self,
        t: &ValidatedTopology,
        f: impl FnOnce(RoleState) -> Result<RoleState, String>,
    ) -> Result<(), String> {
        let pg = t.postgres.as_ref().ok_or("no postgres in this topology")?;
        self.cluster.block_on(async {
            let cur = self
                .cluster
                .roles()
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_else(|| RoleState::initial(pg));
            let next = f(cur.clone())?;
            if next != cur {
                self.cluster
                    .set_roles(&next)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            self.cluster
                .move_labels(&next)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        })
    }
}

impl WriteRouter for ServiceRouter {
    fn fence(
        &self,
        _rt: &mut dyn Runtime,
        t: &ValidatedTopology,
        member: &str,
    ) -> Result<(), RouterError> {
        self.change(t, |s| {
            Ok(if s.fenced.contains(member) {
                s
            } else {
                s.fence(member)
            })
        })
        .map_err(RouterError::Backend)
    }

    fn route(
        &self,
        _rt: &mut dyn Runtime,
        t: &ValidatedTopology,
        member: &str,
    ) -> Result<(), RouterError> {
        let pg = t.postgres.clone().ok_or(RouterError::NoPostgres)?;
        self.change(t, |s| {
            if s.primary == member {
                Ok(s)
            } else {
                s.promote(&pg, member).map_err(|e| e.to_string())
            }
        })
        .map_err(RouterError::Backend)
    }
}

/// The members as the operator reaches them.
pub struct ClusterRuntime {
    cluster: Cluster,
    t: ValidatedTopology,
}

impl ClusterRuntime {
    pub fn new(cluster: &Cluster, t: &ValidatedTopology) -> ClusterRuntime {
        ClusterRuntime {
            cluster: cluster.clone(),
            t: t.clone(),
        }
    }

    fn unsupported(name: &str, what: &str) -> RuntimeError {
        RuntimeError::step(
            name,
            what,
            "not done by the operator on Kubernetes (the StatefulSet and the pod's entrypoint do it)",
        )
    }
}

/// Whether a pod serves: running, not being deleted, every container ready.
pub fn pod_serves(p: &Pod) -> bool {
    let Some(st) = &p.status else { return false };
    p.metadata.deletion_timestamp.is_none()
        && st.phase.as_deref() == Some("Running")
        && st
            .container_statuses
            .as_ref()
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}

impl Runtime for ClusterRuntime {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "kubernetes",
            envoy_hot_restart: false,
            live_files: false,
            members_follow_roles: true,
            concurrent_tasks: false,
        }
    }
    fn preflight(&self, _desired: &Bundle) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn prepare(&mut self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }
    /// The reconcile applies the ConfigMaps; on Kubernetes a member's role settings come from
    /// the roles ConfigMap (its entrypoint writes them), not from these files.
    fn put_config(&mut self, _name: &str, _c: &ComponentBundle) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn start(
        &mut self,
        name: &str,
        _c: &ComponentBundle,
        _opts: StartOpts,
    ) -> Result<Observed, RuntimeError> {
        Err(Self::unsupported(name, "start"))
    }
    /// Deletes the member's pod: at once for a kill (fencing), with its grace period otherwise
    /// (SIGTERM, which the entrypoint turns into a fast shutdown).
    fn stop(&mut self, name: &str, _kind: Kind, mode: StopMode) -> Result<(), RuntimeError> {
        let pod = self.cluster.pod_name(name);
        let dp = match mode {
            StopMode::Kill => DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
            StopMode::Fast | StopMode::Graceful => DeleteParams::default(),
        };
        self.cluster.block_on(async {
            match self.cluster.pods().delete(&pod, &dp).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(RuntimeError::step(name, "delete the pod", e)),
            }
        })
    }
    fn signal(&mut self, name: &str, _sig: Signal) -> Result<(), RuntimeError> {
        Err(Self::unsupported(name, "signal"))
    }
    fn exec(&mut self, name: &str, task: &Task) -> Result<String, RuntimeError> {
        match task {
            // The entrypoint writes standby.signal itself from the roles ConfigMap; the
            // operator has nothing to mark in the data directory, so it reports none.
            Task::PgStandbySignal(_) => Ok(String::new()),
            Task::PgDataState => Ok("empty".into()),
            _ => Err(Self::unsupported(name, "exec")),
        }
    }
    fn observe(&self, name: &str) -> Option<Observed> {
        let pod = self.cluster.pod_name(name);
        let p = self
            .cluster
            .block_on(async { self.cluster.pods().get_opt(&pod).await })
            .ok()
            .flatten()?;
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count.max(0) as u32).sum())
            .unwrap_or(0);
        Some(Observed {
            running: pod_serves(&p),
            hash: String::new(),
            restarts,
            started_at: 0,
            instance: p.name_any(),
            pid: None,
            epoch: 0,
        })
    }
    fn instance_alive(&self, o: &Observed) -> bool {
        o.running
    }
    fn mark_config(&mut self, _name: &str, _hash: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn endpoint(&self, name: &str, port: u16) -> Endpoint {
        let host = self
            .t
            .postgres
            .as_ref()
            .and_then(|p| p.member(name))
            .map(|m| m.host.clone())
            .unwrap_or_else(|| names::object(&self.cluster.env, name));
        Endpoint { host, port }
    }
    fn logs(&self, _name: &str, _lines: usize) -> String {
        String::new()
    }
    fn remove(&mut self, name: &str, _kind: Kind) -> Result<(), RuntimeError> {
        Err(Self::unsupported(name, "remove"))
    }
    fn orphans(&self, _desired: &Bundle) -> Vec<String> {
        Vec::new()
    }
    fn teardown(
        &mut self,
        _bundle: Option<&Bundle>,
        _keep_data: bool,
    ) -> Result<Vec<String>, RuntimeError> {
        Err(Self::unsupported("-", "teardown"))
    }
}

fn rfc3339(ms: u128) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn ms_of(ts: &str) -> u128 {
    ts.parse::<jiff::Timestamp>()
        .map(|t| u128::try_from(t.as_millisecond()).unwrap_or(0))
        .unwrap_or(0)
}

/// How a failover or switchover is shown in the status.
pub fn role_change(ev: &FailoverEvent) -> RoleChange {
    RoleChange {
        kind: match ev.kind {
            EventKind::Failover => RoleChangeKind::Failover,
            EventKind::Switchover => RoleChangeKind::Switchover,
        },
        from: ev.from.clone(),
        to: ev.to.clone(),
        started_at: rfc3339(ev.detected_ms),
        finished_at: ev.done_ms.map(rfc3339),
        reason: ev.reason.clone(),
    }
}

/// The status history as the engine's events (ids by position).
pub fn events_of(history: &[RoleChange]) -> Vec<FailoverEvent> {
    history
        .iter()
        .enumerate()
        .map(|(i, r)| FailoverEvent {
            id: i as u64 + 1,
            kind: match r.kind {
                RoleChangeKind::Failover => EventKind::Failover,
                RoleChangeKind::Switchover => EventKind::Switchover,
            },
            from: r.from.clone(),
            to: r.to.clone(),
            reason: r.reason.clone(),
            status: if r.finished_at.is_some() {
                EventStatus::Done
            } else {
                EventStatus::Failed
            },
            detected_ms: ms_of(&r.started_at),
            done_ms: r.finished_at.as_deref().map(ms_of),
            ..FailoverEvent::default()
        })
        .collect()
}

/// How many role changes the status keeps.
pub const HISTORY: usize = 20;

/// The engine's state store over one Topology resource.
pub struct StatusStore {
    cluster: Cluster,
    name: String,
    base: ValidatedTopology,
    tera: tera::Tera,
    secrets: BTreeMap<String, String>,
    inner: Mutex<StoreInner>,
}

struct StoreInner {
    status: TopologyStatus,
    intent: Option<FailoverEvent>,
}

impl StatusStore {
    /// `base`: the resource's spec validated for Kubernetes; `status`: its status now. Reads the
    /// environment's Secret (the superuser password the probes and the promotion use).
    pub async fn load(
        cluster: &Cluster,
        obj: &TopologyResource,
        base: &ValidatedTopology,
        tera: &tera::Tera,
    ) -> Result<StatusStore, ClusterError> {
        let sname = names::secret(&base.name);
        let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let secrets = api
            .get_opt(&sname)
            .await
            .map_err(api_err("get", format!("Secret/{sname}")))?
            .map(|s| super::secrets::values_of(&s))
            .unwrap_or_default();
        Ok(StatusStore {
            cluster: cluster.clone(),
            name: obj.name_any(),
            base: base.clone(),
            tera: tera.clone(),
            secrets,
            inner: Mutex::new(StoreInner {
                status: obj.status.clone().unwrap_or_default(),
                intent: None,
            }),
        })
    }

    pub fn status(&self) -> TopologyStatus {
        self.inner
            .lock()
            .map(|i| i.status.clone())
            .unwrap_or_default()
    }

    fn patch(&self, body: serde_json::Value) -> Result<(), StateError> {
        let api: Api<TopologyResource> =
            Api::namespaced(self.cluster.client.clone(), &self.cluster.namespace);
        let r = self.cluster.block_on(api.patch_status(
            &self.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": body })),
        ));
        match r {
            Ok(o) => {
                if let (Some(st), Ok(mut i)) = (o.status, self.inner.lock()) {
                    i.status = st;
                }
                Ok(())
            }
            Err(e) => Err(StateError::Write {
                path: format!("Topology/{} status", self.name),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    fn primary(&self) -> Option<String> {
        let roles = self.cluster.block_on(self.cluster.roles()).ok().flatten();
        roles
            .map(|r| r.primary)
            .or_else(|| self.status().current_primary)
            .or_else(|| self.base.postgres.as_ref().map(|p| p.primary.clone()))
    }
}

impl StateStore for StatusStore {
    fn secret(&self, name: &str) -> Result<String, StateError> {
        self.secrets
            .get(name)
            .cloned()
            .ok_or_else(|| StateError::Secret {
                name: name.into(),
                detail: format!("not in Secret {}", names::secret(&self.base.name)),
            })
    }

    fn applied(&self) -> Result<Option<Applied>, StateError> {
        let primary = self.primary();
        let t = primary
            .as_deref()
            .and_then(|p| self.base.with_primary(p))
            .unwrap_or_else(|| self.base.clone());
        let bundle = render::render(&t, &self.tera).map_err(|e| StateError::Parse {
            path: format!("Topology/{}", self.name),
            detail: e.to_string(),
        })?;
        Ok(Some(Applied {
            bundle,
            topology: Some(self.base.clone()),
            primary,
            applied_at: 0,
            templates: None,
        }))
    }

    /// The record of a role change: the new primary and when it became one.
    fn write_applied(&self, a: &Applied) -> Result<(), StateError> {
        if a.primary == self.status().current_primary {
            return Ok(());
        }
        self.patch(json!({
            "currentPrimary": a.primary,
            "currentPrimaryTimestamp": jiff::Timestamp::now().to_string(),
        }))
    }

    fn applied_token(&self) -> Option<String> {
        None
    }

    fn intent(&self) -> Option<FailoverEvent> {
        self.inner.lock().ok().and_then(|i| i.intent.clone())
    }

    fn set_intent(&self, ev: Option<&FailoverEvent>) -> Result<(), StateError> {
        if let Ok(mut i) = self.inner.lock() {
            i.intent = ev.cloned();
        }
        match ev {
            Some(e) => self.patch(json!({
                "targetPrimary": e.to,
                "targetPrimaryTimestamp": rfc3339(e.detected_ms),
            })),
            None => self.patch(json!({"targetPrimary": null, "targetPrimaryTimestamp": null})),
        }
    }

    fn history(&self) -> Vec<FailoverEvent> {
        events_of(&self.status().history)
    }

    fn push_history(&self, ev: &FailoverEvent) -> Result<(), StateError> {
        let mut h = self.status().history;
        h.push(role_change(ev));
        let skip = h.len().saturating_sub(HISTORY);
        let h: Vec<RoleChange> = h.into_iter().skip(skip).collect();
        self.patch(json!({ "history": h }))
    }

    /// The pod's entrypoint rewinds a former primary by itself (its data directory says it ran
    /// as a primary); nothing to remember here.
    fn needs_rewind(&self, _member: &str) -> bool {
        false
    }

    fn set_needs_rewind(&self, _member: &str, _on: bool) -> Result<(), StateError> {
        Ok(())
    }
}

/// What one probe round did.
#[derive(Debug, Clone, PartialEq)]
pub enum Round {
    /// The primary answers.
    Healthy,
    /// Failed probes, not (yet) a death; or a death that must not lead to a failover (why).
    Waiting(String),
    /// A failover ran to the end: `from` fenced and unfenced again, `to` promoted.
    FailedOver(Box<FailoverEvent>),
    /// A failover started but did not finish (its intent stays; the next round resumes it).
    Failed(String),
}

/// The detector's memory between rounds, for one Topology.
pub struct Monitor {
    detector: Detector,
    k: Knowledge,
}

impl Monitor {
    pub fn new(now: Instant) -> Monitor {
        Monitor {
            detector: Detector::new(now),
            k: Knowledge::default(),
        }
    }

    /// One round: probe every member at its pod address, feed the detector, and on a death
    /// (corroborated: a shorter window) choose and fail over with the engine's sequence.
    /// Blocking: run it on a blocking thread.
    pub fn round(
        &mut self,
        svc: &Services,
        cluster: &Cluster,
        now: Instant,
        rep: &mut dyn Reporter,
    ) -> Round {
        let store = &*svc.store;
        if let Some(mut ev) = store.intent() {
            let r = ef::resume(svc, &mut ev, rep, &mut |_| {});
            return self.finished(svc, cluster, ev, r, now);
        }
        let Ok((_, _, cur)) = ef::load(store) else {
            return Round::Waiting("nothing applied yet".into());
        };
        let Some(pg) = cur.postgres.as_ref() else {
            return Round::Healthy;
        };
        if !pg.failover.enabled {
            return Round::Waiting("failover is disabled".into());
        }
        let rt = (svc.runtime)(&cur);
        let views = ef::observe_all(&cur, rt.as_ref(), &*svc.clients, Duration::from_secs(2));
        let primary = pg.primary.clone();
        let pv = views.iter().find(|v| v.name == primary);
        let ok = pv.is_some_and(|v| v.reachable && v.role.as_deref() == Some("primary"));
        if let Some(lsn) = pv.filter(|_| ok).and_then(|v| v.current_lsn) {
            self.k.last_primary_lsn = Some(lsn);
        }
        let running = rt.observe(&primary).is_some_and(|o| o.running);
        let corroborated = detect::primary_gone(&cur, &views, running);
        let window = detect::effective_window(
            Duration::from_millis(pg.failover.detection_window.ms),
            Duration::from_millis(pg.failover.probe_interval.ms),
            corroborated,
        );
        drop(rt);
        match self.detector.observe(now, ok, window) {
            Verdict::Healthy => Round::Healthy,
            Verdict::Suspect { fails, down_for } => Round::Waiting(format!(
                "{primary} failed {fails} probes in {} ms",
                down_for.as_millis()
            )),
            Verdict::Dead { fails, down_for } => {
                if let Some(why) = detect::primary_heard_by_replicas(&cur, &views) {
                    return Round::Waiting(why);
                }
                let to = match ef::choose(&cur, &primary, &views, &self.k) {
                    Ok(to) => to,
                    Err(why) => return Round::Waiting(why.to_string()),
                };
                let mut ev = FailoverEvent {
                    id: store.history().iter().map(|e| e.id).max().unwrap_or(0) + 1,
                    kind: EventKind::Failover,
                    from: primary.clone(),
                    to,
                    reason: format!(
                        "{primary} unreachable for {} ms ({fails} probes{})",
                        down_for.as_millis(),
                        if corroborated {
                            ", its pod down and the replicas without it"
                        } else {
                            ""
                        }
                    ),
                    status: EventStatus::Running,
                    detected_ms: ef::now_ms(),
                    ..FailoverEvent::default()
                };
                let r = ef::failover(svc, &mut ev, rep, &mut |_| {});
                self.finished(svc, cluster, ev, r, now)
            }
        }
    }

    fn finished(
        &mut self,
        svc: &Services,
        cluster: &Cluster,
        ev: FailoverEvent,
        r: Result<(), ef::FailoverError>,
        now: Instant,
    ) -> Round {
        if let Err(e) = r {
            return Round::Failed(e.to_string());
        }
        self.detector.reset(now);
        self.k = Knowledge::default();
        // The roles name the new primary: the old one may start again, and its entrypoint
        // rewinds it onto the new timeline (it never starts as a primary: it is not the
        // desired one).
        if let Err(e) = unfence(svc, cluster, &ev.from) {
            return Round::Failed(format!(
                "{} -> {} done, but {} stays fenced: {e}",
                ev.from, ev.to, ev.from
            ));
        }
        Round::FailedOver(Box::new(ev))
    }
}

fn unfence(svc: &Services, cluster: &Cluster, member: &str) -> Result<(), ClusterError> {
    let _ = svc;
    cluster.block_on(async {
        let Some(s) = cluster.roles().await? else {
            return Ok(());
        };
        if s.primary == member || !s.fenced.contains(member) {
            return Ok(());
        }
        let next = s.unfence(member);
        cluster.set_roles(&next).await?;
        cluster.move_labels(&next).await?;
        Ok(())
    })
}

/// The engine's seams for one Topology: state in its status, routing by its Services, members
/// at their pod addresses, the probes with the cluster's superuser password.
pub fn services(cluster: &Cluster, store: Arc<StatusStore>, clients: Arc<dyn Clients>) -> Services {
    let c = cluster.clone();
    Services {
        store,
        clients,
        runtime: Arc::new(move |t: &ValidatedTopology| {
            Box::new(ClusterRuntime::new(&c, t)) as Box<dyn Runtime + Send>
        }),
        router: Arc::new(ServiceRouter {
            cluster: cluster.clone(),
        }),
    }
}

/// The annotation that asks the operator for a switchover: a member's name, or `auto` (the best
/// replica). The operator removes it when the switchover is done or refused.
pub const SWITCHOVER_ANNOTATION: &str = "bssctl.io/switchover";

/// Planned role change with no lost write: writes stop (fence marker, `-rw` empty), the primary's
/// pod is deleted with its grace period (its entrypoint turns SIGTERM into a fast shutdown, whose
/// WAL reaches the standbys), the target replays everything it received, then the engine's
/// failover sequence promotes it and the old primary is unfenced to rejoin by rewinding. Blocking.
pub fn switchover(
    svc: &Services,
    cluster: &Cluster,
    to: Option<&str>,
    rep: &mut dyn Reporter,
) -> Result<FailoverEvent, String> {
    let store = &*svc.store;
    let cl = &*svc.clients;
    if let Some(i) = store.intent() {
        return Err(format!(
            "a {} from {} to {} is unfinished",
            i.kind.as_str(),
            i.from,
            i.to
        ));
    }
    let (_, _, cur) = ef::load(store).map_err(|e| e.to_string())?;
    let pg = cur.postgres.clone().ok_or("no postgres in this topology")?;
    let from = pg.primary.clone();
    let mut rt = (svc.runtime)(&cur);
    let views = ef::observe_all(&cur, rt.as_ref(), cl, Duration::from_secs(2));
    let pv = views.iter().find(|v| v.name == from);
    if pv.is_none_or(|v| v.role.as_deref() != Some("primary")) {
        return Err(format!(
            "the primary {from} is not healthy; that is a failover, not a switchover"
        ));
    }
    let k = Knowledge {
        last_primary_lsn: pv.and_then(|v| v.current_lsn),
    };
    let target = match to {
        Some(t) => {
            let m = pg.member(t).ok_or_else(|| format!("no member `{t}`"))?;
            if m.name == from {
                return Err(format!("{t} is already the primary"));
            }
            if m.priority == 0 {
                return Err(format!("{t} has priority 0 and is never promoted"));
            }
            if !views
                .iter()
                .any(|v| v.name == t && v.role.as_deref() == Some("replica"))
            {
                return Err(format!("{t} is not a healthy replica"));
            }
            t.to_string()
        }
        None => ef::choose(&cur, &from, &views, &k).map_err(|e| e.to_string())?,
    };
    let tm = pg.member(&target).ok_or("unknown target")?.clone();
    let fm = pg.member(&from).ok_or("unknown primary")?.clone();
    svc.router
        .fence(rt.as_mut(), &cur, &from)
        .map_err(|e| format!("failed to stop writes: {e}"))?;
    let before = cl
        .member_view(&rt.endpoint(&from, fm.port), &fm, Duration::from_secs(2))
        .current_lsn
        .or(k.last_primary_lsn)
        .unwrap_or(0);
    rt.stop(&from, Kind::Postgres, StopMode::Fast)
        .map_err(|e| e.to_string())?;
    let back = |why: String| -> String {
        let _ = unfence(svc, cluster, &from);
        format!("{why}; switchover abandoned, {from} is primary again")
    };
    let s = Instant::now();
    while cl
        .member_view(&rt.endpoint(&from, fm.port), &fm, Duration::from_secs(1))
        .reachable
    {
        if s.elapsed() > Duration::from_secs(90) {
            return Err(back(format!("{from} did not shut down in 90 s")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // After a clean shutdown the standby has every WAL record the primary wrote, the shutdown
    // checkpoint included: wait until it has replayed all it received.
    loop {
        let v = cl.member_view(&rt.endpoint(&target, tm.port), &tm, Duration::from_secs(2));
        if let (Some(r), Some(p)) = (v.receive_lsn, v.replay_lsn) {
            if r > before && p >= r {
                break;
            }
        }
        if s.elapsed() > Duration::from_secs(120) {
            return Err(back(format!(
                "{target} did not replay past {before:X} (at {:?})",
                v.replay_lsn
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(rt);
    let mut ev = FailoverEvent {
        id: store.history().iter().map(|e| e.id).max().unwrap_or(0) + 1,
        kind: EventKind::Switchover,
        from: from.clone(),
        to: target,
        reason: "requested".into(),
        status: EventStatus::Running,
        detected_ms: ef::now_ms(),
        ..FailoverEvent::default()
    };
    ef::failover(svc, &mut ev, rep, &mut |_| {}).map_err(|e| e.to_string())?;
    unfence(svc, cluster, &from).map_err(|e| e.to_string())?;
    Ok(ev)
}

/// The switchover the resource's annotation asks for (None: none asked), then the annotation
/// removed. Blocking.
pub fn switchover_if_annotated(
    svc: &Services,
    cluster: &Cluster,
    obj: &TopologyResource,
    rep: &mut dyn Reporter,
) -> Option<Result<FailoverEvent, String>> {
    let want = obj.annotations().get(SWITCHOVER_ANNOTATION)?.clone();
    let to = (want != "auto").then_some(want.as_str());
    let r = switchover(svc, cluster, to, rep);
    let api: Api<TopologyResource> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let patch = json!({"metadata": {"annotations": {SWITCHOVER_ANNOTATION: null}}});
    if let Err(e) = cluster.block_on(api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )) {
        tracing::warn!(error = %e, "failed to remove the switchover annotation");
    }
    Some(r)
}

/// Progress of the failover sequence in the operator's log.
struct LogReporter;

impl Reporter for LogReporter {
    fn event(&mut self, e: &crate::progress::Event) {
        if e.status != "start" {
            tracing::info!(component = %e.component, step = %e.step, status = %e.status, elapsed_ms = e.elapsed_ms as u64, "{}", e.detail);
        }
    }
}

/// The failover monitor of the leading operator: every second, one probe round per Topology
/// with PostgreSQL (and a switchover where the annotation asks for one). Runs until dropped.
pub async fn run_monitors(client: Client, tera: tera::Tera, namespace: Option<String>) {
    let mut monitors: BTreeMap<(String, String), Monitor> = BTreeMap::new();
    loop {
        let api: Api<TopologyResource> = match &namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for obj in list.items {
                    let key = (obj.namespace().unwrap_or_default(), obj.name_any());
                    let m = monitors
                        .remove(&key)
                        .unwrap_or_else(|| Monitor::new(Instant::now()));
                    if let Some(m) = monitor_one(&client, &tera, obj, m).await {
                        monitors.insert(key, m);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "failed to list Topologies for the failover monitor")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn monitor_one(
    client: &Client,
    tera: &tera::Tera,
    obj: TopologyResource,
    m: Monitor,
) -> Option<Monitor> {
    if obj.metadata.deletion_timestamp.is_some() || obj.status.is_none() {
        return None;
    }
    let base = super::operator::validate(&obj).ok()?;
    base.postgres.as_ref()?;
    let cluster = Cluster {
        client: client.clone(),
        handle: tokio::runtime::Handle::current(),
        namespace: base.namespace.clone(),
        env: base.name.clone(),
    };
    let store = match StatusStore::load(&cluster, &obj, &base, tera).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::warn!(error = %e, topology = %base.name, "failover monitor");
            return Some(m);
        }
    };
    let clients: Arc<dyn Clients> = Arc::new(crate::engine::clients::RealClients::new(
        &base,
        store.clone(),
    ));
    let svc = services(&cluster, store, clients);
    let name = base.name.clone();
    let r = tokio::task::spawn_blocking(move || {
        let mut m = m;
        let mut rep = LogReporter;
        if let Some(r) = switchover_if_annotated(&svc, &cluster, &obj, &mut rep) {
            m.detector.reset(Instant::now());
            match r {
                Ok(ev) => tracing::info!(topology = %name, from = %ev.from, to = %ev.to, "switchover done"),
                Err(e) => tracing::warn!(topology = %name, error = %e, "switchover refused or failed"),
            }
            return m;
        }
        match m.round(&svc, &cluster, Instant::now(), &mut rep) {
            Round::Healthy => {}
            Round::Waiting(why) => tracing::debug!(topology = %name, "{why}"),
            Round::FailedOver(ev) => tracing::warn!(topology = %name, from = %ev.from, to = %ev.to, duration_ms = ev.duration_ms.unwrap_or(0) as u64, "failed over"),
            Round::Failed(e) => tracing::error!(topology = %name, error = %e, "failover did not finish; retrying"),
        }
        m
    })
    .await;
    r.ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn history_round_trips_through_the_status() {
        let ev = FailoverEvent {
            id: 1,
            kind: EventKind::Switchover,
            from: "postgres-0".into(),
            to: "postgres-1".into(),
            reason: "requested".into(),
            status: EventStatus::Done,
            detected_ms: 1_700_000_000_123,
            done_ms: Some(1_700_000_001_456),
            ..FailoverEvent::default()
        };
        let rc = role_change(&ev);
        assert_eq!(rc.kind, RoleChangeKind::Switchover);
        assert_eq!(rc.started_at, "2023-11-14T22:13:20.123Z");
        let back = events_of(&[rc]);
        assert_eq!(back[0].detected_ms, ev.detected_ms);
        assert_eq!(back[0].done_ms, ev.done_ms);
        assert_eq!(back[0].status, EventStatus::Done);
        assert_eq!(
            (back[0].from.as_str(), back[0].to.as_str()),
            ("postgres-0", "postgres-1")
        );
    }
}
