//! `bssctl apply|plan|status|logs|destroy --runtime kubernetes`: the command line against a
//! cluster (kubeconfig found as kubectl finds it). `apply` submits the Topology resource (and the
//! Secret, resolved locally, when the cluster has none) and follows its status and Events until it
//! is Available or fails; `plan` asks the API server for a server-side-apply dry run of every object
//! and shows what would change. Every function takes a `kube::Client` so tests can pass their own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};

use super::labels;
use super::manifests::{self, names, Manifests};
use super::resource::TopologyResource;
use super::secrets;
use crate::topology::status::{ConditionStatus, ConditionType};
use crate::topology::Loaded;

/// Field manager of the command line (the operator's is `bssctl`).
pub const CLI_MANAGER: &str = "bssctl-cli";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to find a cluster (kubeconfig, KUBECONFIG or in-cluster config): {0}")]
    Connect(#[source] kube::Error),
    #[error("failed to {action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        source: kube::Error,
    },
    #[error("failed to resolve the secrets of {env}: {source}")]
    Secrets {
        env: String,
        source: secrets::SecretsError,
    },
    #[error(transparent)]
    Build(#[from] manifests::BuildError),
    #[error("failed to render: {0}")]
    Render(#[from] crate::render::RenderError),
    #[error("{env} is Degraded: {reason}: {message}")]
    Degraded {
        env: String,
        reason: String,
        message: String,
    },
    #[error("timed out after {secs} s waiting for {env} to become Available (last: {last})")]
    Timeout {
        env: String,
        secs: u64,
        last: String,
    },
    #[error("failed to prepare {object} for the dry run: {detail}")]
    Prepare { object: String, detail: String },
    #[error("failed to find a pod of component `{component}` in {env}")]
    NoPod { env: String, component: String },
    #[error("failed to switch over {env}: {detail}")]
    Switchover { env: String, detail: String },
}

fn api_err(
    action: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(kube::Error) -> ClientError {
    let object = object.into();
    move |source| ClientError::Api {
        action,
        object,
        source,
    }
}

pub async fn connect() -> Result<Client, ClientError> {
    Client::try_default().await.map_err(ClientError::Connect)
}

/// Creates `<env>-secrets` from local sources (generated, env, file) unless the cluster has it.
pub async fn ensure_secret(client: &Client, l: &Loaded) -> Result<bool, ClientError> {
    let t = &l.validated;
    let api: Api<Secret> = Api::namespaced(client.clone(), &t.namespace);
    let name = names::secret(&t.name);
    if api
        .get_opt(&name)
        .await
        .map_err(api_err("get", format!("Secret/{name}")))?
        .is_some()
    {
        return Ok(false);
    }
    let values = secrets::resolve(t, &BTreeMap::new()).map_err(|source| ClientError::Secrets {
        env: t.name.clone(),
        source,
    })?;
    match api
        .create(&PostParams::default(), &secrets::secret(t, &values))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(api_err("create", format!("Secret/{name}"))(e)),
    }
}

/// Submits the Topology resource (server-side apply); returns its generation.
pub async fn submit(client: &Client, l: &Loaded) -> Result<i64, ClientError> {
    let t = &l.validated;
    let api: Api<TopologyResource> = Api::namespaced(client.clone(), &t.namespace);
    let r = TopologyResource::from_topology(&l.topology, &t.namespace);
    let applied = api
        .patch(
            &t.name,
            &PatchParams::apply(CLI_MANAGER).force(),
            &Patch::Apply(&r),
        )
        .await
        .map_err(api_err("apply", format!("Topology/{}", t.name)))?;
    Ok(applied.metadata.generation.unwrap_or(0))
}

/// One line of progress: a condition change or an Event.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// Follows the resource until its status describes `generation` with Available=True; fails on
/// Degraded (after `grace` to let a transient error clear) or after `timeout`.
pub async fn follow(
    client: &Client,
    namespace: &str,
    env: &str,
    generation: i64,
    timeout: Duration,
    progress: Progress<'_>,
) -> Result<(), ClientError> {
    let api: Api<TopologyResource> = Api::namespaced(client.clone(), namespace);
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), namespace);
    let start = Instant::now();
    let mut seen_events: BTreeSet<String> = BTreeSet::new();
    let mut last = String::from("not reconciled yet");
    loop {
        let r = api
            .get(env)
            .await
            .map_err(api_err("get", format!("Topology/{env}")))?;
        // Events are best effort: a user may not be allowed to list them.
        if let Ok(list) = events
            .list(&ListParams::default().fields(&format!("regarding.name={env}")))
            .await
        {
            for e in list.items {
                let id = e.name_any();
                if seen_events.insert(id) {
                    progress(&format!(
                        "event {}: {}",
                        e.reason.unwrap_or_default(),
                        e.note.unwrap_or_default()
                    ));
                }
            }
        }
        if let Some(st) = &r.status {
            let line = st
                .conditions
                .iter()
                .map(|c| format!("{:?}={:?} ({})", c.type_, c.status, c.message))
                .collect::<Vec<_>>()
                .join(", ");
            if line != last && !line.is_empty() {
                progress(&line);
                last = line;
            }
            if st.observed_generation == Some(generation) {
                let get = |t: ConditionType| st.conditions.iter().find(|c| c.type_ == t);
                if get(ConditionType::Available).is_some_and(|c| c.status == ConditionStatus::True)
                    && get(ConditionType::Progressing)
                        .is_none_or(|c| c.status == ConditionStatus::False)
                {
                    return Ok(());
                }
                if let Some(d) =
                    get(ConditionType::Degraded).filter(|c| c.status == ConditionStatus::True)
                {
                    if d.reason == "InvalidSpec" || start.elapsed() > timeout / 4 {
                        return Err(ClientError::Degraded {
                            env: env.into(),
                            reason: d.reason.clone(),
                            message: d.message.clone(),
                        });
                    }
                }
            }
        }
        if start.elapsed() > timeout {
            return Err(ClientError::Timeout {
                env: env.into(),
                secs: timeout.as_secs(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What `plan` found for one object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectPlan {
    pub id: String,
    /// `create`, `update`, `unchanged` or `remove`.
    pub action: &'static str,
    /// Unified diff of the live object and the dry-run result (metadata noise removed).
    pub diff: String,
}

fn comparable(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for k in [
            "managedFields",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "uid",
        ] {
            m.remove(k);
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    v
}

/// Per object: what an apply would change, from the API server's own server-side-apply dry run.
pub async fn plan(
    client: &Client,
    t: &crate::topology::model::ValidatedTopology,
    m: &Manifests,
) -> Result<Vec<ObjectPlan>, ClientError> {
    let mut out = Vec::new();
    // The operator applies each object with its owner reference: so does the dry run.
    let owner = Api::<TopologyResource>::namespaced(client.clone(), &t.namespace)
        .get_opt(&t.name)
        .await
        .map_err(api_err("get", format!("Topology/{}", t.name)))?;
    let pp = PatchParams::apply(labels::MANAGER).force().dry_run();
    for man in &m.objects {
        let Some(ar) = super::operator::api_resource(&man.kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &t.namespace, &ar);
        let live = api
            .get_opt(&man.name)
            .await
            .map_err(api_err("get", man.id()))?;
        let body = match &owner {
            Some(o) => super::operator::owned(man, o).map_err(|e| ClientError::Prepare {
                object: man.id(),
                detail: e.to_string(),
            })?,
            None => man.body.clone(),
        };
        let dry = api
            .patch(&man.name, &pp, &Patch::Apply(&body))
            .await
            .map_err(api_err("dry-run apply", man.id()))?;
        let after =
            serde_yaml::to_string(&comparable(serde_json::to_value(&dry).unwrap_or_default()))
                .unwrap_or_default();
        let (action, diff) = match live {
            None => ("create", String::new()),
            Some(l) => {
                let before = serde_yaml::to_string(&comparable(
                    serde_json::to_value(&l).unwrap_or_default(),
                ))
                .unwrap_or_default();
                if before == after {
                    ("unchanged", String::new())
                } else {
                    let d = similar::TextDiff::from_lines(&before, &after)
                        .unified_diff()
                        .header(
                            &format!("live {}", man.id()),
                            &format!("applied {}", man.id()),
                        )
                        .to_string();
                    ("update", d)
                }
            }
        };
        out.push(ObjectPlan {
            id: man.id(),
            action,
            diff,
        });
    }
    let want: BTreeSet<String> = m.objects.iter().map(|o| o.id()).collect();
    for kind in super::operator::OWNED_KINDS {
        let Some(ar) = super::operator::api_resource(kind) else {
            continue;
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &t.namespace, &ar);
        let list = api
            .list(&ListParams::default().labels(&labels::environment_selector(&t.name)))
            .await
            .map_err(api_err("list", format!("{kind}s of {}", t.name)))?;
        for o in list.items {
            let id = format!("{kind}/{}", o.name_any());
            if !want.contains(&id) {
                out.push(ObjectPlan {
                    id,
                    action: "remove",
                    diff: String::new(),
                });
            }
        }
    }
    Ok(out)
}

/// `status`: the resource's conditions and every pod of the environment.
pub async fn status_text(
    client: &Client,
    namespace: &str,
    env: &str,
) -> Result<String, ClientError> {
    let api: Api<TopologyResource> = Api::namespaced(client.clone(), namespace);
    let r = api
        .get(env)
        .await
        .map_err(api_err("get", format!("Topology/{env}")))?;
    let mut s = format!("{namespace}/{env}\n");
    if let Some(st) = &r.status {
        s.push_str(&format!(
            "  primary {}  ready {}  observed generation {:?} of {:?}\n",
            st.current_primary.as_deref().unwrap_or("-"),
            st.ready.as_deref().unwrap_or("-"),
            st.observed_generation,
            r.metadata.generation
        ));
        for c in &st.conditions {
            s.push_str(&format!(
                "  {:<12} {:<8} {:<18} {}\n",
                format!("{:?}", c.type_),
                format!("{:?}", c.status),
                c.reason,
                c.message
            ));
        }
    } else {
        s.push_str("  not reconciled yet (is the operator running?)\n");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("{}={env}", labels::INSTANCE)))
        .await
        .map_err(api_err("list", format!("pods of {env}")))?;
    for p in list.items {
        let st = p.status.clone().unwrap_or_default();
        let ready = st
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let restarts: i32 = st
            .container_statuses
            .unwrap_or_default()
            .iter()
            .map(|c| c.restart_count)
            .sum();
        s.push_str(&format!(
            "  {:<40} {:<10} {:<6} {:<8} restarts {restarts}\n",
            p.name_any(),
            st.phase.unwrap_or_default(),
            if ready { "ready" } else { "-" },
            p.labels().get(labels::ROLE).cloned().unwrap_or_default()
        ));
    }
    Ok(s)
}

/// `logs`: the log of the first pod of a component.
pub async fn logs(
    client: &Client,
    namespace: &str,
    env: &str,
    component: &str,
    lines: i64,
) -> Result<String, ClientError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let sel = labels::selector(env, component)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = pods
        .list(&ListParams::default().labels(&sel))
        .await
        .map_err(api_err("list", format!("pods of {env}/{component}")))?;
    let pod = list.items.first().ok_or_else(|| ClientError::NoPod {
        env: env.into(),
        component: component.into(),
    })?;
    let lp = LogParams {
        tail_lines: Some(lines),
        ..LogParams::default()
    };
    pods.logs(&pod.name_any(), &lp).await.map_err(api_err(
        "read the log of",
        format!("Pod/{}", pod.name_any()),
    ))
}

/// `destroy`: deletes the resource (the operator's finalizer removes its objects) and waits.
pub async fn destroy(
    client: &Client,
    namespace: &str,
    env: &str,
    timeout: Duration,
) -> Result<bool, ClientError> {
    let api: Api<TopologyResource> = Api::namespaced(client.clone(), namespace);
    match api.delete(env, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
        Err(e) => return Err(api_err("delete", format!("Topology/{env}"))(e)),
    }
    let start = Instant::now();
    while api
        .get_opt(env)
        .await
        .map_err(api_err("get", format!("Topology/{env}")))?
        .is_some()
    {
        if start.elapsed() > timeout {
            return Err(ClientError::Timeout {
                env: env.into(),
                secs: timeout.as_secs(),
                last: "deletion waits for the operator's finalizer".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(true)
}

/// `bssctl switchover --runtime kubernetes`: asks the operator through the
/// `bssctl.io/switchover` annotation (a member, or `auto`), then waits until the status history
/// shows the switchover or the operator removed the annotation without one (refused).
pub async fn switchover(
    client: &Client,
    namespace: &str,
    name: &str,
    to: Option<&str>,
    timeout: Duration,
) -> Result<crate::topology::status::RoleChange, ClientError> {
    use super::failover::SWITCHOVER_ANNOTATION;
    let api: Api<TopologyResource> = Api::namespaced(client.clone(), namespace);
    let obj = api
        .get(name)
        .await
        .map_err(api_err("get", format!("Topology/{name}")))?;
    let before = obj.status.as_ref().map(|s| s.history.len()).unwrap_or(0);
    let patch = serde_json::json!({"metadata": {"annotations": {SWITCHOVER_ANNOTATION: to.unwrap_or("auto")}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err("annotate", format!("Topology/{name}")))?;
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let o = api
            .get(name)
            .await
            .map_err(api_err("get", format!("Topology/{name}")))?;
        let history = o.status.map(|s| s.history).unwrap_or_default();
        if let Some(rc) = history.get(before..).and_then(|h| {
            h.iter()
                .find(|r| r.kind == crate::topology::status::RoleChangeKind::Switchover)
        }) {
            return Ok(rc.clone());
        }
        if !o
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(SWITCHOVER_ANNOTATION)
        {
            return Err(ClientError::Switchover {
                env: name.into(),
                detail: "the operator removed the request without switching over (see its log and the Events)".into(),
            });
        }
        if start.elapsed() > timeout {
            return Err(ClientError::Switchover {
                env: name.into(),
                detail: format!("no switchover after {} s", timeout.as_secs()),
            });
        }
    }
}
