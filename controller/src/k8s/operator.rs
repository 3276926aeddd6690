//! `bssctl operator`: a kube-runtime `Controller` over `Topology` resources.
//!
//! One reconcile: validate -> render + build (pure) -> ensure the Secret (generated once) ->
//! server-side apply of every object under one field manager -> delete orphans (our labels + the
//! owner's uid) -> move PostgreSQL role labels -> compute conditions -> patch status; Events on
//! transitions; a finalizer deletes everything on removal. Errors carry a category that decides
//! the retry (invalid spec: wait for a change; transient: backoff).
//!
//! The roles (primary, fenced members, epoch) are read from the live roles ConfigMap first, so a
//! reconcile never undoes a failover. Not here: failure detection and the failover sequence
//! (the engine, run by `failover`); leader election (`leader`); the manifests (`manifests`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::labels;
use super::manifests::{self, names, Manifest, Manifests};
use super::resource::TopologyResource;
use super::roles::{self, RoleState};
use super::secrets;
use crate::render;
use crate::topology::model::ValidatedTopology;
use crate::topology::status::{self, ConditionStatus, ConditionType, Observation, TopologyStatus};
use crate::topology::types::RuntimeKind;
use crate::topology::{self, ValidateOptions};

pub const FINALIZER: &str = "bssctl.io/cleanup";
pub const CONTROLLER_NAME: &str = "bssctl-operator";

/// How an error is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The spec must change first (invalid topology, a secret source that cannot be read).
    WaitForChange,
    /// The API or the network: retry with backoff.
    Transient,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::WaitForChange => "wait_for_change",
            Category::Transient => "transient",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("failed to validate topology {name}: {message}")]
    Invalid { name: String, message: String },
    #[error("failed to render topology {name}: {source}")]
    Render {
        name: String,
        source: Box<render::RenderError>,
    },
    #[error("failed to build manifests of {name}: {source}")]
    Build {
        name: String,
        source: manifests::BuildError,
    },
    #[error("failed to create the Secret of {name}: {source}")]
    Secrets {
        name: String,
        source: secrets::SecretsError,
    },
    #[error("failed to {action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        source: kube::Error,
    },
    #[error("failed to serialise {object}: {source}")]
    Serialise {
        object: String,
        source: serde_json::Error,
    },
    #[error("failed to run the finalizer of {name}: {detail}")]
    Finalizer { name: String, detail: String },
}

impl ReconcileError {
    pub fn category(&self) -> Category {
        match self {
            ReconcileError::Invalid { .. }
            | ReconcileError::Render { .. }
            | ReconcileError::Build { .. }
            | ReconcileError::Secrets { .. } => Category::WaitForChange,
            ReconcileError::Api { .. }
            | ReconcileError::Serialise { .. }
            | ReconcileError::Finalizer { .. } => Category::Transient,
        }
    }

    /// CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Invalid { .. } => "InvalidSpec",
            ReconcileError::Render { .. } => "RenderFailed",
            ReconcileError::Build { .. } => "BuildFailed",
            ReconcileError::Secrets { .. } => "SecretUnavailable",
            ReconcileError::Api { .. } => "ApiError",
            ReconcileError::Serialise { .. } => "SerialiseFailed",
            ReconcileError::Finalizer { .. } => "FinalizerFailed",
        }
    }
}

fn api_err(
    action: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(kube::Error) -> ReconcileError {
    let object = object.into();
    move |source| ReconcileError::Api {
        action,
        object,
        source,
    }
}

/// Prometheus counters of the operator, served on /metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub reconcile_micros: AtomicU64,
    pub leader: AtomicU64,
    pub failures: Mutex<BTreeMap<(String, String), u64>>,
}

impl Metrics {
    pub fn failure(&self, category: Category, reason: &str) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry((category.as_str().into(), reason.into()))
                .or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP bssctl_operator_reconciles_total Reconciles run.\n# TYPE bssctl_operator_reconciles_total counter\n");
        s.push_str(&format!(
            "bssctl_operator_reconciles_total {}\n",
            self.reconciles.load(Ordering::Relaxed)
        ));
        s.push_str("# HELP bssctl_operator_reconcile_seconds_total Time spent reconciling.\n# TYPE bssctl_operator_reconcile_seconds_total counter\n");
        s.push_str(&format!(
            "bssctl_operator_reconcile_seconds_total {:.6}\n",
            self.reconcile_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
        s.push_str("# HELP bssctl_operator_leader 1 while this replica holds the Lease.\n# TYPE bssctl_operator_leader gauge\n");
        s.push_str(&format!(
            "bssctl_operator_leader {}\n",
            self.leader.load(Ordering::Relaxed)
        ));
        s.push_str("# HELP bssctl_operator_reconcile_failures_total Failed reconciles by category and reason.\n# TYPE bssctl_operator_reconcile_failures_total counter\n");
        if let Ok(f) = self.failures.lock() {
            for ((c, r), n) in f.iter() {
                s.push_str(&format!(
                    "bssctl_operator_reconcile_failures_total{{category=\"{c}\",reason=\"{r}\"}} {n}\n"
                ));
            }
        }
        s
    }
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub templates: tera::Tera,
}

impl Context {
    pub fn new(client: Client, instance: Option<String>, templates: tera::Tera) -> Context {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics: Arc::new(Metrics::default()),
            templates,
        }
    }
}

/// The API resource of a manifest's kind (only kinds the builder produces).
pub fn api_resource(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        "ConfigMap" => ApiResource::erase::<ConfigMap>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        "ServiceAccount" => ApiResource::erase::<ServiceAccount>(&()),
        "StatefulSet" => ApiResource::erase::<StatefulSet>(&()),
        "Deployment" => ApiResource::erase::<Deployment>(&()),
        "DaemonSet" => ApiResource::erase::<DaemonSet>(&()),
        "PodDisruptionBudget" => ApiResource::erase::<PodDisruptionBudget>(&()),
        "NetworkPolicy" => ApiResource::erase::<NetworkPolicy>(&()),
        _ => return None,
    })
}

/// Kinds the operator owns and cleans up (the Secret is left to garbage collection: data).
pub const OWNED_KINDS: &[&str] = &[
    "ConfigMap",
    "Service",
    "ServiceAccount",
    "StatefulSet",
    "Deployment",
    "DaemonSet",
    "PodDisruptionBudget",
    "NetworkPolicy",
];

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Validates the resource's spec for the kubernetes runtime: every problem in one message.
pub fn validate(obj: &TopologyResource) -> Result<ValidatedTopology, ReconcileError> {
    let name = obj.name_any();
    let doc = obj.to_topology();
    let text = serde_yaml::to_string(&doc).map_err(|e| ReconcileError::Invalid {
        name: name.clone(),
        message: e.to_string(),
    })?;
    let opts = ValidateOptions {
        base_dir: "/".into(),
        state_dir: None,
        runtime: Some(RuntimeKind::Kubernetes),
    };
    let file = format!("{}/{}", obj.namespace().unwrap_or_default(), name);
    topology::load_str(&text, &file, &opts)
        .map(|l| l.validated)
        .map_err(|d| ReconcileError::Invalid {
            name,
            message: d
                .iter()
                .filter(|x| x.is_error())
                .map(|x| x.to_string().lines().take(2).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("; "),
        })
}

/// The desired objects of a resource, rendered for its current primary.
pub fn desired(
    obj: &TopologyResource,
    ctx: &Context,
) -> Result<(ValidatedTopology, Manifests), ReconcileError> {
    desired_with_roles(obj, ctx, None)
}

/// The desired objects with the roles as the live roles ConfigMap has them: a failover writes
/// the fence marker and the new primary there first, and a reconcile never undoes them.
pub fn desired_with_roles(
    obj: &TopologyResource,
    ctx: &Context,
    live: Option<&RoleState>,
) -> Result<(ValidatedTopology, Manifests), ReconcileError> {
    let name = obj.name_any();
    let mut t = validate(obj)?;
    let primary = live.map(|s| s.primary.as_str()).or(obj
        .status
        .as_ref()
        .and_then(|s| s.current_primary.as_deref()));
    if let Some(p) = primary {
        if let Some(moved) = t.with_primary(p) {
            t = moved;
        }
    }
    let b = render::render(&t, &ctx.templates).map_err(|source| ReconcileError::Render {
        name: name.clone(),
        source: Box::new(source),
    })?;
    let mut m =
        manifests::build(&t, &b).map_err(|source| ReconcileError::Build { name, source })?;
    if let (Some(s), Some(pg)) = (live, t.postgres.as_ref()) {
        let roles_name = names::roles(&t.name);
        if let Some(o) = m
            .objects
            .iter_mut()
            .find(|o| o.kind == "ConfigMap" && o.name == roles_name)
        {
            let cm = roles::roles_config_map(&t, pg, s);
            o.body["data"] = json!(cm.data);
        }
    }
    Ok((t, m))
}

/// The roles ConfigMap's state in the cluster (None before the first apply, or unreadable:
/// then the rendered roles are applied).
async fn live_roles(
    obj: &TopologyResource,
    ctx: &Context,
) -> Result<Option<RoleState>, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let name = names::roles(&obj.name_any());
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let cm = api
        .get_opt(&name)
        .await
        .map_err(api_err("get", format!("ConfigMap/{name}")))?;
    Ok(cm.and_then(|c| RoleState::from_data(&c.data.unwrap_or_default()).ok()))
}

/// The body the operator applies: with its owner reference and the owner-uid label.
pub fn owned(m: &Manifest, obj: &TopologyResource) -> Result<serde_json::Value, ReconcileError> {
    let mut body = m.body.clone();
    let owner = obj
        .controller_owner_ref(&())
        .map(serde_json::to_value)
        .transpose();
    let owner = owner.map_err(|source| ReconcileError::Serialise {
        object: m.id(),
        source,
    })?;
    if let Some(meta) = body.get_mut("metadata").and_then(|x| x.as_object_mut()) {
        if let Some(o) = owner {
            meta.insert("ownerReferences".into(), json!([o]));
        }
        if let Some(l) = meta.get_mut("labels").and_then(|x| x.as_object_mut()) {
            l.insert(
                labels::OWNER_UID.into(),
                json!(obj.uid().unwrap_or_default()),
            );
        }
    }
    Ok(body)
}

/// Whether an applied workload has all its pods ready (from the object the apply returned).
pub fn workload_ready(kind: &str, body: &serde_json::Value) -> Option<bool> {
    let s = &body["status"];
    let n = |v: &serde_json::Value| v.as_i64().unwrap_or(0);
    match kind {
        "StatefulSet" | "Deployment" => {
            let want = body["spec"]["replicas"].as_i64().unwrap_or(1);
            Some(n(&s["readyReplicas"]) >= want && n(&s["updatedReplicas"]) >= want)
        }
        "DaemonSet" => {
            let want = n(&s["desiredNumberScheduled"]);
            Some(want > 0 && n(&s["numberReady"]) >= want)
        }
        _ => None,
    }
}

async fn ensure_secret(
    obj: &TopologyResource,
    t: &ValidatedTopology,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let ns = t.namespace.as_str();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = names::secret(&t.name);
    if api
        .get_opt(&name)
        .await
        .map_err(api_err("get", format!("Secret/{name}")))?
        .is_some()
    {
        // Generated once: an existing Secret is never rewritten.
        return Ok(());
    }
    let values =
        secrets::resolve(t, &BTreeMap::new()).map_err(|source| ReconcileError::Secrets {
            name: t.name.clone(),
            source,
        })?;
    let mut s = secrets::secret(t, &values);
    if let Some(o) = obj.controller_owner_ref(&()) {
        s.metadata.owner_references = Some(vec![o]);
    }
    match api.create(&PostParams::default(), &s).await {
        Ok(_) => Ok(()),
        // Created concurrently: theirs is as good as ours.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(api_err("create", format!("Secret/{name}"))(e)),
    }
}

async fn delete_orphans(
    obj: &TopologyResource,
    t: &ValidatedTopology,
    desired: &Manifests,
    ctx: &Context,
) -> Result<Vec<String>, ReconcileError> {
    let want: BTreeSet<(String, String)> = desired
        .objects
        .iter()
        .map(|m| (m.kind.clone(), m.name.clone()))
        .collect();
    let selector = format!(
        "{},{}={}",
        labels::environment_selector(&t.name),
        labels::OWNER_UID,
        obj.uid().unwrap_or_default()
    );
    let mut deleted = Vec::new();
    for kind in OWNED_KINDS {
        let Some(ar) = api_resource(kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &t.namespace, &ar);
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(api_err("list", format!("{kind}s of {}", t.name)))?;
        for o in list.items {
            let n = o.name_any();
            if !want.contains(&(kind.to_string(), n.clone())) {
                api.delete(&n, &DeleteParams::background())
                    .await
                    .map_err(api_err("delete", format!("{kind}/{n}")))?;
                deleted.push(format!("{kind}/{n}"));
            }
        }
    }
    Ok(deleted)
}

/// Moves `bssctl.io/role` on the PostgreSQL pods so `-rw` selects exactly the desired primary.
async fn ensure_role_labels(
    t: &ValidatedTopology,
    live: Option<&RoleState>,
    ctx: &Context,
) -> Result<usize, ReconcileError> {
    let Some(pg) = &t.postgres else { return Ok(0) };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &t.namespace);
    let sel = labels::kind_selector(&t.name, crate::render::Kind::Postgres)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = api
        .list(&ListParams::default().labels(&sel))
        .await
        .map_err(api_err("list", format!("PostgreSQL pods of {}", t.name)))?;
    let mut pod_of: BTreeMap<String, String> = BTreeMap::new();
    let mut current: BTreeMap<String, Option<String>> = BTreeMap::new();
    for p in &pods.items {
        let l = p.labels();
        if let Some(member) = l.get(labels::BSS_COMPONENT) {
            pod_of.insert(member.clone(), p.name_any());
            current.insert(member.clone(), l.get(labels::ROLE).cloned());
        }
    }
    let want = live.cloned().unwrap_or_else(|| RoleState::initial(pg));
    let moves = roles::label_moves(&current, &want);
    for mv in &moves {
        let Some(pod) = pod_of.get(&mv.member) else {
            continue;
        };
        let patch = json!({"metadata": {"labels": {labels::ROLE: mv.role}}});
        api.patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("label", format!("Pod/{pod}")))?;
    }
    Ok(moves.len())
}

async fn publish(
    ctx: &Context,
    obj: &TopologyResource,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "failed to publish an Event");
    }
}

async fn patch_status(
    obj: &TopologyResource,
    st: &TopologyStatus,
    ctx: &Context,
) -> Result<(), ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<TopologyResource> = Api::namespaced(ctx.client.clone(), &ns);
    // The role change fields belong to the failover monitor (`failover::StatusStore`): a
    // reconcile that started before a failover must not write its stale copy back.
    let mut st = serde_json::to_value(st).unwrap_or_default();
    if let Some(m) = st.as_object_mut() {
        for k in ["history", "targetPrimary", "targetPrimaryTimestamp"] {
            m.remove(k);
        }
    }
    let body = json!({ "status": st });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map_err(api_err("patch the status of", format!("Topology/{name}")))?;
    Ok(())
}

fn available(st: &TopologyStatus) -> bool {
    st.conditions
        .iter()
        .any(|c| c.type_ == ConditionType::Available && c.status == ConditionStatus::True)
}

/// Records a failed observation in the status and an Event (both best effort).
async fn record_failure(obj: &TopologyResource, err: &ReconcileError, ctx: &Context) {
    let prev = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation.unwrap_or(0);
    let obs = match err {
        ReconcileError::Invalid { message, .. } => Observation::Invalid {
            message: message.clone(),
        },
        e => Observation::Failed {
            reason: e.reason().into(),
            message: e.to_string(),
        },
    };
    let st = TopologyStatus {
        observed_generation: Some(generation),
        conditions: status::conditions(&prev.conditions, &obs, generation, &now()),
        ..prev.clone()
    };
    if st.conditions != prev.conditions {
        publish(
            ctx,
            obj,
            EventType::Warning,
            err.reason(),
            "Reconcile",
            err.to_string(),
        )
        .await;
    }
    if let Err(e) = patch_status(obj, &st, ctx).await {
        tracing::warn!(error = %e, "failed to record a failure in the status");
    }
}

async fn apply(obj: Arc<TopologyResource>, ctx: &Context) -> Result<Action, ReconcileError> {
    let live = match live_roles(&obj, ctx).await {
        Ok(l) => l,
        Err(e) => {
            record_failure(&obj, &e, ctx).await;
            return Err(e);
        }
    };
    let (t, m) = match desired_with_roles(&obj, ctx, live.as_ref()) {
        Ok(x) => x,
        Err(e) => {
            record_failure(&obj, &e, ctx).await;
            return Err(e);
        }
    };
    let result = apply_objects(&obj, &t, &m, live.as_ref(), ctx).await;
    match result {
        Ok(action) => Ok(action),
        Err(e) => {
            record_failure(&obj, &e, ctx).await;
            Err(e)
        }
    }
}

async fn apply_objects(
    obj: &TopologyResource,
    t: &ValidatedTopology,
    m: &Manifests,
    live: Option<&RoleState>,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    ensure_secret(obj, t, ctx).await?;
    let pp = PatchParams::apply(labels::MANAGER).force();
    let (mut ready, mut total) = (0usize, 0usize);
    for man in &m.objects {
        let Some(ar) = api_resource(&man.kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &t.namespace, &ar);
        let body = owned(man, obj)?;
        let applied = api
            .patch(&man.name, &pp, &Patch::Apply(&body))
            .await
            .map_err(api_err("apply", man.id()))?;
        let applied = serde_json::to_value(&applied).unwrap_or_default();
        if let Some(r) = workload_ready(&man.kind, &applied) {
            total += 1;
            ready += usize::from(r);
        }
    }
    let deleted = delete_orphans(obj, t, m, ctx).await?;
    for d in &deleted {
        publish(
            ctx,
            obj,
            EventType::Normal,
            "OrphanDeleted",
            "Delete",
            format!("deleted {d}: no longer in the topology"),
        )
        .await;
    }
    ensure_role_labels(t, live, ctx).await?;

    let prev = obj.status.clone().unwrap_or_default();
    let generation = obj.metadata.generation.unwrap_or(0);
    let ts = now();
    let primary = t.postgres.as_ref().map(|p| p.primary.clone());
    let st = TopologyStatus {
        observed_generation: Some(generation),
        conditions: status::conditions(
            &prev.conditions,
            &Observation::Applied { ready, total },
            generation,
            &ts,
        ),
        current_primary: primary.clone(),
        current_primary_timestamp: if prev.current_primary == primary {
            prev.current_primary_timestamp.clone().or(Some(ts.clone()))
        } else {
            Some(ts.clone())
        },
        objects: u32::try_from(m.objects.len()).ok(),
        ready: Some(format!("{ready}/{total}")),
        ..prev.clone()
    };
    if prev.observed_generation != Some(generation) {
        publish(
            ctx,
            obj,
            EventType::Normal,
            "Applied",
            "Apply",
            format!(
                "applied {} objects for generation {generation}",
                m.objects.len()
            ),
        )
        .await;
    }
    if available(&st) && !available(&prev) {
        publish(
            ctx,
            obj,
            EventType::Normal,
            "Available",
            "Reconcile",
            format!("{ready}/{total} workloads ready"),
        )
        .await;
    }
    patch_status(obj, &st, ctx).await?;
    Ok(if ready == total {
        Action::requeue(Duration::from_secs(300))
    } else {
        Action::requeue(Duration::from_secs(5))
    })
}

async fn cleanup(obj: Arc<TopologyResource>, ctx: &Context) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let env = obj.name_any();
    let selector = format!(
        "{},{}={}",
        labels::environment_selector(&env),
        labels::OWNER_UID,
        obj.uid().unwrap_or_default()
    );
    let mut n = 0;
    for kind in OWNED_KINDS {
        let Some(ar) = api_resource(kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(api_err("list", format!("{kind}s of {env}")))?;
        for o in list.items {
            let name = o.name_any();
            api.delete(&name, &DeleteParams::background())
                .await
                .map_err(api_err("delete", format!("{kind}/{name}")))?;
            n += 1;
        }
    }
    publish(
        ctx,
        &obj,
        EventType::Normal,
        "Deleted",
        "Delete",
        format!("deleted {n} objects; volumes and the Secret are left to garbage collection"),
    )
    .await;
    Ok(Action::await_change())
}

/// One reconcile of one Topology (the Controller's callback; also called directly by tests).
pub async fn reconcile(
    obj: Arc<TopologyResource>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let start = Instant::now();
    ctx.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<TopologyResource> = Api::namespaced(ctx.client.clone(), &ns);
    let c = ctx.clone();
    let r = finalizer(&api, FINALIZER, obj, |ev| async move {
        match ev {
            Finalizer::Apply(o) => apply(o, &c).await,
            Finalizer::Cleanup(o) => cleanup(o, &c).await,
        }
    })
    .await;
    ctx.metrics.reconcile_micros.fetch_add(
        u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    r.map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => ReconcileError::Finalizer {
            name,
            detail: other.to_string(),
        },
    })
}

/// The retry of a failed reconcile, by category.
pub fn error_policy(
    _obj: Arc<TopologyResource>,
    err: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let cat = err.category();
    ctx.metrics.failure(cat, err.reason());
    tracing::warn!(error = %err, category = cat.as_str(), "reconcile failed");
    match cat {
        Category::WaitForChange => Action::await_change(),
        Category::Transient => Action::requeue(Duration::from_secs(5)),
    }
}
