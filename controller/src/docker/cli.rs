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
