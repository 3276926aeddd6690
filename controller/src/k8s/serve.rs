//! The operator process: `/healthz` and `/metrics` over HTTP, Lease leader election, and the
//! kube-runtime `Controller` over Topology resources, run only while this replica leads. Losing
//! the Lease stops the process (the Deployment restarts it as a follower), so two replicas never
//! act at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::{watcher, Controller};
use kube::Client;

use super::labels;
use super::leader::{self, LeaseConfig};
use super::operator::{self, Context, Metrics};
use super::resource::TopologyResource;

#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// `host:port` of /healthz and /metrics.
    pub listen: String,
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    pub lease_namespace: String,
    pub identity: String,
    /// Only this namespace; all when `None`.
    pub watch_namespace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to build a Kubernetes client (kubeconfig or in-cluster config): {0}")]
    Client(#[source] kube::Error),
    #[error("failed to listen on {addr}: {detail}")]
    Listen { addr: String, detail: String },
    #[error("failed to run leader election on Lease {name}: {source}")]
    Lease { name: String, source: kube::Error },
    #[error("failed to load the templates: {0}")]
    Templates(#[from] crate::render::RenderError),
    #[error("failed to start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("lost the Lease {0}: stopping so that another replica can lead")]
    LostLease(String),
}

/// Serves /healthz and /metrics on a thread of its own.
pub fn serve_http(listen: &str, metrics: Arc<Metrics>) -> Result<(), ServeError> {
    let server = tiny_http::Server::http(listen).map_err(|e| ServeError::Listen {
        addr: listen.into(),
        detail: e.to_string(),
    })?;
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let (code, body, ctype) = match req.url() {
                "/healthz" => (200, "ok\n".to_string(), "text/plain"),
                "/metrics" => (200, metrics.render(), "text/plain; version=0.0.4"),
                _ => (404, "not found\n".to_string(), "text/plain"),
            };
            let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes());
            let mut resp = tiny_http::Response::from_string(body).with_status_code(code);
            if let Ok(h) = header {
                resp = resp.with_header(h);
            }
            let _ = req.respond(resp);
        }
    });
    Ok(())
}

pub async fn run(opts: OperatorOptions, templates: tera::Tera) -> Result<(), ServeError> {
    let client = Client::try_default().await.map_err(ServeError::Client)?;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some(opts.identity.clone()),
        templates,
    ));
    serve_http(&opts.listen, ctx.metrics.clone())?;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
    let cfg = LeaseConfig {
        name: opts.lease_name.clone(),
        namespace: opts.lease_namespace.clone(),
        identity: opts.identity.clone(),
        duration: Duration::from_secs(15),
    };
    let lease_err = |source| ServeError::Lease {
        name: opts.lease_name.clone(),
        source,
    };
    while !leader::step(&leases, &cfg).await.map_err(lease_err)? {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    ctx.metrics.leader.store(1, Ordering::Relaxed);
    tracing::info!(lease = %opts.lease_name, identity = %opts.identity, "leading");

    let renew = async {
        loop {
            tokio::time::sleep(cfg.duration / 3).await;
            match leader::step(&leases, &cfg).await {
                Ok(true) => {}
                Ok(false) => return ServeError::LostLease(cfg.name.clone()),
                Err(e) => tracing::warn!(error = %e, "failed to renew the Lease; retrying"),
            }
        }
    };
    let (topologies, sts, deploys): (Api<TopologyResource>, Api<StatefulSet>, Api<Deployment>) =
        match &opts.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let ours =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let controller = Controller::new(topologies, watcher::Config::default())
        .owns(sts, ours.clone())
        .owns(deploys, ours)
        .shutdown_on_signal()
        .run(operator::reconcile, operator::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile stream");
            }
        });
    let monitors = super::failover::run_monitors(
        client.clone(),
        ctx.templates.clone(),
        opts.watch_namespace.clone(),
    );
    tokio::select! {
        _ = controller => Ok(()),
        _ = monitors => Ok(()),
        e = renew => Err(e),
    }
}

/// Entry point of `bssctl operator`: a multi-threaded runtime around `run`.
pub fn main(opts: OperatorOptions, templates: tera::Tera) -> Result<(), ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?
        .block_on(run(opts, templates))
}
