//! The state directory of an environment: the record of the last applied bundle, the journal of
//! steps and the secrets. Owns file formats and permissions; it does not decide what to apply.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::render::Bundle;
use crate::topology::model::{SecretSource, ValidatedTopology};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to parse {path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("failed to get secret `{name}`: {detail}")]
    Secret { name: String, detail: String },
}

/// What was applied last: the bundle and the primary it was rendered for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    pub bundle: Bundle,
    /// The validated topology the bundle was rendered from (the agent works from this, not from
    /// the user's file, which may have been edited since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<ValidatedTopology>,
    #[serde(default)]
    pub primary: Option<String>,
    /// The `--templates` directory the bundle was rendered with (None: the embedded ones), so a
    /// failover re-renders with the same templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<String>,
    /// Unix seconds.
    pub applied_at: u64,
}

pub fn applied_path(t: &ValidatedTopology) -> PathBuf {
    Path::new(&t.paths.root).join("applied.json")
}

pub fn read_applied(t: &ValidatedTopology) -> Result<Option<Applied>, StateError> {
    read_applied_at(Path::new(&t.paths.root))
}

/// The applied record of the environment rooted at `root` (`<stateDir>/<name>`).
pub fn read_applied_at(root: &Path) -> Result<Option<Applied>, StateError> {
    let p = root.join("applied.json");
    match std::fs::read_to_string(&p) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| StateError::Parse {
                path: p.display().to_string(),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read {
            path: p.display().to_string(),
            source,
        }),
    }
}

/// The widest mode `write_atomic` creates: no permission for "other", no group write.
pub const MAX_FILE_MODE: u32 = 0o750;

/// Writes atomically (temp file + rename), so a kill mid-write leaves the old record intact.
///
/// Never through a symbolic link: a link at `path` or as its directory is refused, the temp
/// file is created exclusively with `O_NOFOLLOW` (a planted link at its name fails), and the
/// mode is set on the open file, not by path. Modes are clamped to `MAX_FILE_MODE`.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.display().to_string(),
        source,
    };
    let link = |what: &Path| {
        err(std::io::Error::other(format!(
            "{} is a symbolic link; bssctl never writes through links",
            what.display()
        )))
    };
    let mode = mode & MAX_FILE_MODE;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
        if std::fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(link(d));
        }
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(link(path));
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    // A leftover of a killed write by this pid (or a plant): removed, never opened.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .custom_flags(o_nofollow())
            .open(&tmp)
            .map_err(err)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(err)?;
        f.write_all(content).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// `O_NOFOLLOW` for `custom_flags`: opening a symbolic link fails instead of following it.
pub fn o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

pub fn write_applied(t: &ValidatedTopology, a: &Applied) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(a).map_err(|e| StateError::Parse {
        path: "applied".into(),
        detail: e.to_string(),
    })?;
    write_atomic(&applied_path(t), &json, 0o640)
}

/// Values of the secrets that exist so far (for redaction). Missing files are skipped.
pub fn existing_secret_values(t: &ValidatedTopology) -> Vec<(String, String)> {
    t.secrets
        .values()
        .filter_map(|s| {
            std::fs::read_to_string(&s.file)
                .ok()
                .map(|v| (s.name.clone(), v.trim_end().to_string()))
        })
        .collect()
}

pub fn random_string(len: usize) -> Result<String, std::io::Error> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut buf = vec![0u8; len * 2];
    urandom(&mut buf)?;
    // Rejection sampling keeps the distribution uniform.
    let limit = 256 - (256 % ALPHABET.len());
    let mut out = String::with_capacity(len);
    let mut i = 0;
    while out.len() < len {
        if i == buf.len() {
            urandom(&mut buf)?;
            i = 0;
        }
        let b = buf[i] as usize;
        i += 1;
        if b < limit {
            out.push(ALPHABET[b % ALPHABET.len()] as char);
        }
    }
    Ok(out)
}

fn urandom(buf: &mut [u8]) -> std::io::Result<()> {
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, buf)
}

/// Makes sure every secret of the topology has its 0600 file: generated once, or copied from its
/// source (env var or file) every time so a rotated source is picked up. Returns the names of
/// secrets whose value changed.
pub fn ensure_secrets(t: &ValidatedTopology) -> Result<Vec<String>, StateError> {
    std::fs::create_dir_all(&t.paths.secrets).map_err(|source| StateError::Write {
        path: t.paths.secrets.clone(),
        source,
    })?;
    let _ = std::fs::set_permissions(&t.paths.secrets, std::fs::Permissions::from_mode(0o700));
    let mut changed = Vec::new();
    for s in t.secrets.values() {
        let current = std::fs::read_to_string(&s.file).ok();
        let want = match &s.source {
            SecretSource::Generate { length } => match &current {
                Some(v) if !v.trim().is_empty() => continue,
                _ => random_string(*length as usize).map_err(|e| StateError::Secret {
                    name: s.name.clone(),
                    detail: e.to_string(),
                })?,
            },
            SecretSource::Env { var } => {
                let v = std::env::var(var).map_err(|e| StateError::Secret {
                    name: s.name.clone(),
                    detail: match e {
                        std::env::VarError::NotPresent => {
                            format!("environment variable {var} is not set")
                        }
                        std::env::VarError::NotUnicode(_) => {
                            format!("environment variable {var} is not valid UTF-8")
                        }
                    },
                })?;
                check_secret_value(&s.name, &format!("environment variable {var}"), &v)?;
                v
            }
            SecretSource::File { path } => {
                let v = std::fs::read_to_string(path).map_err(|e| StateError::Secret {
                    name: s.name.clone(),
                    detail: format!("cannot read {path}: {e}"),
                })?;
                // One trailing line break is how files end (`echo x > f`); nothing else is cut.
                let v = v
                    .strip_suffix('\n')
                    .map(|x| x.strip_suffix('\r').unwrap_or(x))
                    .unwrap_or(&v)
                    .to_string();
                check_secret_value(&s.name, &format!("file {path}"), &v)?;
                v
            }
        };
        if current.as_deref().map(str::trim_end) != Some(want.as_str()) {
            write_atomic(Path::new(&s.file), want.as_bytes(), 0o600)?;
            changed.push(s.name.clone());
        }
    }
    Ok(changed)
}

/// A secret from the user's environment or file must be usable in every place it lands (Redis
/// `requirepass`, env variables, pgpass lines, HTTP headers): not empty, one line, no NUL or
/// other control characters. The value itself is never part of the message.
pub fn check_secret_value(name: &str, source: &str, value: &str) -> Result<(), StateError> {
    let problem = if value.is_empty() {
        Some("is empty: an empty password would disable authentication".to_string())
    } else if value.contains('\0') {
        Some("contains a NUL byte".to_string())
    } else if value.contains(['\n', '\r']) {
        Some("contains a line break (only one trailing newline is allowed in a file)".to_string())
    } else if value.chars().any(char::is_control) {
        Some("contains a control character".to_string())
    } else if value.trim() != value {
        Some("starts or ends with blanks".to_string())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(StateError::Secret {
            name: name.into(),
            detail: format!(
                "the value from {source} {p}; set a single-line value of printable characters"
            ),
        }),
    }
}

/// Reads one secret's value.
pub fn secret_value(t: &ValidatedTopology, name: &str) -> Result<String, StateError> {
    let s = t.secrets.get(name).ok_or_else(|| StateError::Secret {
        name: name.into(),
        detail: "not part of this topology".into(),
    })?;
    std::fs::read_to_string(&s.file)
        .map(|v| v.trim_end().to_string())
        .map_err(|source| StateError::Read {
            path: s.file.clone(),
            source,
        })
}
