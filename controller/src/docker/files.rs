//! Host side of what containers mount: the rendered files of a component (`config/<component>`,
//! mounted read-only) and its secret files (`secrets/<component>`, mounted read-only, files 0400
//! owned by the uid the component runs as, directory 0500). Files are replaced by rename inside the
//! mounted directory, so a running container sees the new content at once (a reload can follow).
//!
//! Owns: writing and removing those host directories. Does not own: secret values or which
//! secrets a component gets (`spec::secret_files`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::spec::SecretFile;
use crate::render::ComponentBundle;

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("failed to write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to hand {path} to uid {uid}: {source} (bssctl must run as root, or as the owner of the Docker engine's user namespace, to deliver secret files)")]
    Chown {
        path: String,
        uid: u32,
        source: std::io::Error,
    },
}

fn write_err(p: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError::Write {
        path: p.display().to_string(),
        source,
    }
}

fn atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), FilesError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    std::fs::write(&tmp, content).map_err(write_err(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(write_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(write_err(path))?;
    Ok(())
}

/// Writes the component's rendered files (0444) into `dir`, removing files no longer rendered.
/// Returns whether anything changed.
pub fn put_config(dir: &Path, cb: &ComponentBundle) -> Result<bool, FilesError> {
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let mut changed = false;
    for (rel, content) in &cb.files {
        let p = dir.join(rel);
        if std::fs::read_to_string(&p).ok().as_deref() != Some(content.as_str()) {
            atomic(&p, content.as_bytes(), 0o444)?;
            changed = true;
        }
    }
    changed |= prune(dir, dir, &|rel| cb.files.contains_key(rel))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(write_err(dir))?;
    Ok(changed)
}

fn prune(root: &Path, dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<bool, FilesError> {
    let mut changed = false;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(false);
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            changed |= prune(root, &p, keep)?;
            continue;
        }
        let rel = p
            .strip_prefix(root)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !keep(&rel) {
            std::fs::remove_file(&p).map_err(write_err(&p))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Writes a component's secret files into `dir`: each 0400 and owned by `uid`, the directories
/// 0500 and owned by `uid` (nobody else on the host or in the container reads them). Returns
/// whether anything changed.
pub fn put_secrets(dir: &Path, files: &[SecretFile], uid: u32) -> Result<bool, FilesError> {
    std::fs::create_dir_all(dir.join("env")).map_err(write_err(dir))?;
    // Writable for the writer while it writes.
    for d in [dir.to_path_buf(), dir.join("env")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
            .map_err(write_err(&d))?;
    }
    let mut changed = false;
    for f in files {
        let p = dir.join(&f.rel);
        if std::fs::read_to_string(&p).ok().as_deref() != Some(f.content.as_str()) {
            atomic(&p, f.content.as_bytes(), 0o400)?;
            changed = true;
        }
        chown(&p, uid)?;
    }
    changed |= prune(dir, dir, &|rel| files.iter().any(|f| f.rel == rel))?;
    for d in [dir.join("env"), dir.to_path_buf()] {
        chown(&d, uid)?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o500))
            .map_err(write_err(&d))?;
    }
    Ok(changed)
}

fn chown(p: &Path, uid: u32) -> Result<(), FilesError> {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).map_err(|source| FilesError::Chown {
        path: p.display().to_string(),
        uid,
        source,
    })
}

/// A directory the component writes into through a read-write bind (HAProxy's runtime socket).
pub fn put_run_dir(dir: &Path, uid: u32) -> Result<(), FilesError> {
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    chown(dir, uid)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(write_err(dir))
}

/// Removes a component's host directories (after its container is gone).
pub fn remove_dir(dir: &Path) -> Result<(), FilesError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FilesError::Write {
            path: dir.display().to_string(),
            source,
        }),
    }
}
