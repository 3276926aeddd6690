//! `bssctl` subcommands and flags of the Kubernetes runtime, called from `main` in one place each.
//! Owns what is printed; the work is done by the modules beside it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{manifests, secrets};
use crate::render::Bundle;
use crate::topology::model::ValidatedTopology;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Build(#[from] manifests::BuildError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error("failed to write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// What `render --runtime kubernetes` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rendered {
    pub out: PathBuf,
    pub files: Vec<String>,
    pub objects: usize,
    /// The 0600 file holding the Secret (values never printed).
    pub secret_file: PathBuf,
    pub millis: f64,
}

/// Writes the manifests of `t` into `out` (one file per component, in start order) and the
/// Secret into `out/secrets/<env>-secrets.yaml` (0600; values kept across renders).
pub fn render(t: &ValidatedTopology, b: &Bundle, out: &Path) -> Result<Rendered, CliError> {
    let start = Instant::now();
    let m = manifests::build(t, b)?;
    let files = m.files(&t.name, b);
    std::fs::create_dir_all(out).map_err(|source| CliError::Write {
        path: out.display().to_string(),
        source,
    })?;
    for (name, text) in &files {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|source| CliError::Write {
            path: p.display().to_string(),
            source,
        })?;
    }
    let secret_file = secrets::write_render_file(t, out)?;
    Ok(Rendered {
        out: out.to_path_buf(),
        files: files.keys().cloned().collect(),
        objects: m.objects.len(),
        secret_file,
        millis: start.elapsed().as_secs_f64() * 1000.0,
    })
}

/// `bssctl render --runtime kubernetes`: prints the summary (or JSON), never a secret value.
pub fn render_command(
    t: &ValidatedTopology,
    b: &Bundle,
    out: &Path,
    json: bool,
) -> Result<std::process::ExitCode, std::process::ExitCode> {
    match render(t, b, out) {
        Ok(r) if json => {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Ok(r) => {
            println!(
                "rendered {} Kubernetes objects in {} files into {} in {:.1} ms; the Secret is in {} (mode 0600, apply it with kubectl apply -f)",
                r.objects,
                r.files.len(),
                r.out.display(),
                r.millis,
                r.secret_file.display()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(std::process::ExitCode::from(1))
        }
    }
}
