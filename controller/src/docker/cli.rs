//! Command-line entry points of the Docker runtime: `bssctl images build|list` and the Compose
//! rendering of `bssctl render --format compose`. Parsing stays in `main`; this prints and returns
//! what happened.

use std::time::Instant;

use super::client::{Client, ClientError};
use super::images::{self, ImageError, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Compose(#[from] super::compose::ComposeError),
    #[error("failed to write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Build progress on stderr: `images: <image>: <step>`.
pub struct StderrProgress;

impl images::Progress for StderrProgress {
    fn line(&mut self, image: &str, text: &str) {
        eprintln!("images: {image}: {text}");
    }
}

/// `bssctl images build [NAME...]`: builds every missing image (or the named ones and their base).
pub fn images_build(names: &[String], json: bool) -> Result<Vec<Outcome>, CliError> {
    let start = Instant::now();
    let client = Client::connect()?;
    let host = images::HostInputs::read()?;
    let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
    let out = client.block_on(images::ensure(
        &client.docker,
        &host,
        &wanted,
        &mut StderrProgress,
    ))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"images": out, "millis": start.elapsed().as_millis()})
        );
    } else {
        for o in &out {
            println!(
                "{:<13} {:<36} {} ({:.1}s)",
                o.name,
                o.tag,
                if o.built { "built" } else { "cached" },
                o.millis as f64 / 1000.0
            );
        }
        let built = out.iter().filter(|o| o.built).count();
        println!(
            "{} images ({built} built, {} cached) in {:.1}s",
            out.len(),
            out.len() - built,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(out)
}

/// `bssctl images list`: every image bssctl would use on this machine and whether it is there.
pub fn images_list(json: bool) -> Result<(), CliError> {
    let client = Client::connect()?;
    let host = images::HostInputs::read()?;
    let planned = images::plan(&host)?;
    let mut rows = Vec::new();
    for p in &planned {
        let present = client.block_on(images::exists(&client.docker, &p.tag))?;
        rows.push(serde_json::json!({"name": p.name, "tag": p.tag, "present": present}));
        if !json {
            println!(
                "{:<13} {:<36} {}",
                p.name,
                p.tag,
                if present { "present" } else { "missing" }
            );
        }
    }
    if json {
        println!("{}", serde_json::json!({ "images": rows }));
    }
    Ok(())
}

/// `bssctl render --format compose --out DIR`: the rendered files under `DIR/<component>/` (already
/// written by the caller) plus `DIR/compose.yaml`. Returns the compose file's path.
pub fn render_compose(
    t: &crate::topology::model::ValidatedTopology,
    bundle: &crate::render::Bundle,
    out: &std::path::Path,
) -> Result<std::path::PathBuf, CliError> {
    let host = images::HostInputs::read()?;
    let planned = images::plan(&host)?;
    let text = super::compose::compose(t, bundle, &super::compose::image_refs(t, &planned))?;
    let path = out.join("compose.yaml");
    std::fs::write(&path, text).map_err(|source| CliError::Write {
        path: path.display().to_string(),
        source,
    })?;
    Ok(path)
}

/// The state directory of a topology on the Docker runtime: `--state-dir`, else
/// `spec.runtime.stateDir` (relative to the topology file), else `.bssctl` beside the file.
pub fn state_dir(
    file: &std::path::Path,
    cli_state_dir: Option<&std::path::Path>,
    l: &crate::topology::Loaded,
) -> std::path::PathBuf {
    if let Some(d) = cli_state_dir {
        return d.to_path_buf();
    }
    let base = file
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let rel = l
        .topology
        .spec
        .runtime
        .as_ref()
        .and_then(|r| r.state_dir.clone())
        .unwrap_or_else(|| ".bssctl".into());
    base.join(rel)
}

/// The Docker runtime and its state store for a loaded topology (what `runtime::for_topology`
/// and the binary's `FileStore::new` need on Docker: the store keeps the controller's state on
/// the host, under `<stateDir>/<env>`, not at the container paths).
pub fn runtime_and_store(
    t: &crate::topology::model::ValidatedTopology,
    state_dir: &std::path::Path,
) -> (super::runtime::Docker, crate::engine::FileStore) {
    let root = super::runtime::host_root(Some(state_dir), &t.name);
    let host = super::runtime::host_view(t, &std::path::absolute(&root).unwrap_or(root.clone()));
    (
        super::runtime::Docker::new(t, &root),
        crate::engine::FileStore::new(&host),
    )
}

/// What `docker-apply` did.
#[derive(Debug, serde::Serialize)]
pub struct ApplyOutcome {
    pub actions: std::collections::BTreeMap<String, crate::plan::Action>,
    pub millis: u128,
}

/// `bssctl docker-apply FILE`: the plan executed by the engine on the Docker runtime (images built
/// first when missing, with progress), then recorded as applied. Prints the plan summary.
pub fn apply(
    t: &crate::topology::model::ValidatedTopology,
    bundle: &crate::render::Bundle,
    state_dir: &std::path::Path,
    rep: &mut dyn crate::progress::Reporter,
    templates: Option<String>,
) -> Result<ApplyOutcome, crate::engine::RuntimeError> {
    use crate::engine::{Runtime, StateStore};
    let (mut rt, store) = runtime_and_store(t, state_dir);
    let applied = store
        .applied()
        .map_err(|e| crate::engine::RuntimeError::Prepare(e.to_string()))?;
    let values: Vec<(String, String)> = t
        .secrets
        .keys()
        .filter_map(|k| store.secret(k).ok().map(|v| (k.clone(), v)))
        .collect();
    let mut p = crate::plan::plan(
        bundle,
        applied.as_ref().map(|a| &a.bundle),
        &crate::plan::Redactor::new(values),
    );
    crate::engine::converge::adjust_plan(&mut p, &rt.capabilities());
    eprint!("{}", p.to_text(false));
    let (_, host_store) = runtime_and_store(t, state_dir);
    let cl = crate::engine::RealClients::new(t, std::sync::Arc::new(host_store));
    let r = crate::engine::apply(
        &mut rt,
        &cl,
        &store,
        rep,
        t,
        bundle,
        &p,
        applied.as_ref(),
        templates,
    )?;
    Ok(ApplyOutcome {
        actions: r.actions,
        millis: r.millis,
    })
}

/// `bssctl docker-destroy FILE`: removes every container, network and (unless `keep_data`)
/// volume of the environment; returns what is left (must be empty).
pub fn destroy(
    t: &crate::topology::model::ValidatedTopology,
    state_dir: &std::path::Path,
    keep_data: bool,
) -> Result<Vec<String>, crate::engine::RuntimeError> {
    use crate::engine::{Runtime, StateStore};
    let (mut rt, store) = runtime_and_store(t, state_dir);
    let applied = store.applied().ok().flatten();
    rt.teardown(applied.as_ref().map(|a| &a.bundle), keep_data)
}
