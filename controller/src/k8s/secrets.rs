//! The Secret `<env>-secrets`: one key per secret of the topology plus `pgpass` (derived from the
//! replication password). Values are generated once and kept: a value already in the cluster (or in
//! the render's secret file) is reused; `fromEnv`/`fromFile` sources are read when applying.
//!
//! Values never reach a manifest, a plan or a log: `manifests` only references keys; the Secret
//! object itself is built here, for `apply` and for the 0600 file `bssctl render` writes beside the
//! manifests (`secrets/<env>-secrets.yaml`, never printed).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

use super::labels;
use super::manifests::names;
use crate::topology::model::{SecretSource, ValidatedTopology};

pub const PGPASS_KEY: &str = "pgpass";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("failed to generate secret `{name}`: {source}")]
    Generate {
        name: String,
        source: std::io::Error,
    },
    #[error("failed to read secret `{name}`: environment variable {var} is not set")]
    Env { name: String, var: String },
    #[error("failed to read secret `{name}` from {path}: {source}")]
    File {
        name: String,
        path: String,
        source: std::io::Error,
    },
    #[error("failed to read the existing secret file {path}: {detail}")]
    Existing { path: String, detail: String },
    #[error("{detail}")]
    Derive { detail: String },
    #[error("failed to write the secret file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Every key of the Secret.
pub fn keys(t: &ValidatedTopology) -> Vec<String> {
    let mut k: Vec<String> = t.secrets.keys().cloned().collect();
    if t.postgres.is_some() {
        k.push(PGPASS_KEY.into());
    }
    k.extend(crate::derived::paths(t).into_iter().map(|(n, _)| n));
    k.sort();
    k
}

/// libpq password-file escaping: `:` and `\` are escaped with `\`.
fn pgpass_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// The value of every key: `existing` values of generated secrets are kept; the rest is read from
/// its source now; `pgpass` follows the replication password.
pub fn resolve(
    t: &ValidatedTopology,
    existing: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, SecretsError> {
    let mut out = BTreeMap::new();
    for s in t.secrets.values() {
        let v = match &s.source {
            SecretSource::Generate { length } => match existing.get(&s.name) {
                Some(v) if !v.is_empty() => v.clone(),
                _ => crate::state::random_string(*length as usize).map_err(|source| {
                    SecretsError::Generate {
                        name: s.name.clone(),
                        source,
                    }
                })?,
            },
            SecretSource::Env { var } => std::env::var(var).map_err(|_| SecretsError::Env {
                name: s.name.clone(),
                var: var.clone(),
            })?,
            SecretSource::File { path } => std::fs::read_to_string(path)
                .map(|v| v.trim_end().to_string())
                .map_err(|source| SecretsError::File {
                    name: s.name.clone(),
                    path: path.clone(),
                    source,
                })?,
        };
        out.insert(s.name.clone(), v);
    }
    if let Some(pg) = &t.postgres {
        if let Some(pw) = out.get("postgres-replication-password") {
            out.insert(
                PGPASS_KEY.into(),
                format!(
                    "*:*:*:{}:{}\n",
                    pgpass_field(&pg.replication_user),
                    pgpass_field(pw)
                ),
            );
        }
    }
    // Redis' ACL include and the basic-auth web configs (hashes of the values above).
    let derived =
        crate::derived::files(t, &|n| out.get(n).cloned()).map_err(|e| SecretsError::Derive {
            detail: e.to_string(),
        })?;
    for f in derived {
        out.insert(f.name, f.content);
    }
    Ok(out)
}

/// The Secret object carrying `values`. Only `apply` and the 0600 render file ever hold one.
pub fn secret(t: &ValidatedTopology, values: &BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(names::secret(&t.name)),
            namespace: Some(t.namespace.clone()),
            labels: Some(labels::environment(&t.name)),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            values
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Values of a Secret read back (from the cluster or a file).
pub fn values_of(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// Path of the render's secret file under the output directory.
pub fn render_file(out: &Path, env: &str) -> std::path::PathBuf {
    out.join("secrets").join(format!("{env}-secrets.yaml"))
}

/// Writes (or refreshes) the render's secret file with mode 0600 in a 0700 directory, keeping the
/// generated values of a previous render. Returns the path.
pub fn write_render_file(
    t: &ValidatedTopology,
    out: &Path,
) -> Result<std::path::PathBuf, SecretsError> {
    use std::os::unix::fs::PermissionsExt;
    let path = render_file(out, &t.name);
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let s: Secret = serde_yaml::from_str(&text).map_err(|e| SecretsError::Existing {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
            values_of(&s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            return Err(SecretsError::Existing {
                path: path.display().to_string(),
                detail: e.to_string(),
            })
        }
    };
    let values = resolve(t, &existing)?;
    let body = serde_yaml::to_string(&secret(t, &values)).unwrap_or_default();
    let w = |e: std::io::Error| SecretsError::Write {
        path: path.display().to_string(),
        source: e,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(w)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(w)?;
    }
    crate::state::write_atomic(&path, body.as_bytes(), 0o600).map_err(|e| SecretsError::Write {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(path)
}
