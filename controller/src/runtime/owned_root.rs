//! A state root that bssctl provably owns: created by bssctl with an ownership marker
//! (`.bssctl-root`: owner uid, mode, creation time), owned by the uid bssctl runs as, writable by
//! nobody else, and never one of the places that would hurt to delete (`/`, `$HOME`, system
//! directories). `ensure_state` creates or verifies it; `teardown` and the agent's stop refuse a
//! root that fails the check. Also the symlink-safe file primitives the local runtime uses on
//! it: `chown_tree` (lchown, never descends a link) and `set_mode` (never through a link).
//!
//! It does not decide what lives under the root (the runtime does) nor validate topology values
//! (the validator refuses bad `stateDir` values earlier; this is the runtime's own last check).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the ownership marker file at the root of every environment bssctl created.
pub const MARKER: &str = ".bssctl-root";

/// Mode of the root and its top-level directories: the owner everything, the components'
/// users traversal only (no listing).
pub const DIR_MODE: u32 = 0o711;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("failed to use {path} as a state root: {why}")]
    Refused { path: String, why: String },
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Marker {
    managed_by: String,
    uid: u32,
    mode: String,
    created_at: u64,
}

fn refused(p: &Path, why: impl Into<String>) -> RootError {
    RootError::Refused {
        path: p.display().to_string(),
        why: why.into(),
    }
}

fn io(action: &'static str, p: &Path, source: std::io::Error) -> RootError {
    RootError::Io {
        action,
        path: p.display().to_string(),
        source,
    }
}

/// The effective uid of this process (owner of `/proc/self`).
pub fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// Directories that must never be an environment root themselves (they may contain one).
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/sbin",
    "/usr/share",
    "/var/lib",
    "/var/log",
    "/var/tmp",
    "/var/cache",
    "/var/run",
    "/run/user",
];

/// Why `root` is a dangerous place for an environment, if it is (pure apart from reading
/// `$HOME` and resolving existing links).
pub fn dangerous(root: &Path) -> Option<String> {
    if !root.is_absolute() {
        return Some("it is not an absolute path".into());
    }
    if root
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Some("it contains `.` or `..`".into());
    }
    let mut candidates = vec![root.to_path_buf()];
    // The same place through links (`/tmp/x -> /etc` makes `/tmp/x` the real `/etc`).
    if let Ok(c) = std::fs::canonicalize(root) {
        candidates.push(c);
    } else if let (Some(parent), Some(name)) = (root.parent(), root.file_name()) {
        if let Ok(c) = std::fs::canonicalize(parent) {
            candidates.push(c.join(name));
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    for c in &candidates {
        if SYSTEM_DIRS.iter().any(|d| c == Path::new(d)) {
            return Some(format!("{} is a system directory", c.display()));
        }
        if home.as_deref().is_some_and(|h| h == c) {
            return Some(format!("{} is the home directory", c.display()));
        }
    }
    None
}

/// Creates the root with its marker when it does not exist (or exists empty and ours), and
/// verifies it otherwise. Never adopts a non-empty directory without our marker.
pub fn ensure_owned(root: &Path) -> Result<(), RootError> {
    if let Some(why) = dangerous(root) {
        return Err(refused(root, why));
    }
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = root.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
            }
            std::fs::DirBuilder::new()
                .mode(DIR_MODE)
                .create(root)
                .map_err(|e| io("create", root, e))?;
            write_marker(root)
        }
        Err(e) => Err(io("inspect", root, e)),
        Ok(m) => {
            check_dir(root, &m)?;
            if std::fs::symlink_metadata(root.join(MARKER)).is_ok() {
                return verify_owned(root);
            }
            // Empty, or holding only the journal the CLI opened a moment ago (it opens it
            // before the runtime prepares the root).
            let mut entries = std::fs::read_dir(root).map_err(|e| io("list", root, e))?;
            let fresh = entries.all(|e| {
                e.is_ok_and(|e| {
                    e.file_name() == "journal.jsonl"
                        && e.metadata().is_ok_and(|m| m.is_file() && m.uid() == euid())
                })
            });
            if fresh {
                write_marker(root)
            } else {
                Err(refused(
                    root,
                    format!("it exists and was not created by bssctl (no {MARKER} marker); move it away or choose another stateDir"),
                ))
            }
        }
    }
}

fn check_dir(root: &Path, m: &std::fs::Metadata) -> Result<(), RootError> {
    if m.file_type().is_symlink() {
        return Err(refused(root, "it is a symbolic link"));
    }
    if !m.is_dir() {
        return Err(refused(root, "it is not a directory"));
    }
    let me = euid();
    if m.uid() != me {
        return Err(refused(
            root,
            format!("it is owned by uid {}, not by uid {me} (bssctl)", m.uid()),
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(refused(
            root,
            format!(
                "it is writable by other users (mode {:o})",
                m.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

fn write_marker(root: &Path) -> Result<(), RootError> {
    let m = Marker {
        managed_by: "bssctl".into(),
        uid: euid(),
        mode: format!("{DIR_MODE:o}"),
        created_at: super::process::now_secs(),
    };
    let json = serde_json::to_vec_pretty(&m).unwrap_or_default();
    crate::state::write_atomic(&root.join(MARKER), &json, 0o600)
        .map_err(|e| refused(root, format!("cannot write its marker: {e}")))
}

/// Ok when `root` is a directory bssctl created (our marker, owned by our uid, not writable by
/// others, not a link, not a dangerous place). `destroy` and the agent's stop call this first.
pub fn verify_owned(root: &Path) -> Result<(), RootError> {
    if let Some(why) = dangerous(root) {
        return Err(refused(root, why));
    }
    let m = std::fs::symlink_metadata(root).map_err(|e| io("inspect", root, e))?;
    check_dir(root, &m)?;
    let mp = root.join(MARKER);
    let mm = std::fs::symlink_metadata(&mp).map_err(|_| {
        refused(
            root,
            format!("it has no {MARKER} marker: bssctl did not create it"),
        )
    })?;
    if !mm.file_type().is_file() {
        return Err(refused(root, format!("{MARKER} is not a regular file")));
    }
    let me = euid();
    if mm.uid() != me || mm.mode() & 0o077 != 0 {
        return Err(refused(
            root,
            format!(
                "{MARKER} is owned by uid {} with mode {:o} (want uid {me}, 0600)",
                mm.uid(),
                mm.mode() & 0o7777
            ),
        ));
    }
    let text = std::fs::read_to_string(&mp).map_err(|e| io("read", &mp, e))?;
    match serde_json::from_str::<Marker>(&text) {
        Ok(mk) if mk.managed_by == "bssctl" && mk.uid == me => Ok(()),
        Ok(mk) => Err(refused(
            root,
            format!("{MARKER} names uid {}, not {me}", mk.uid),
        )),
        Err(e) => Err(refused(root, format!("{MARKER} is not bssctl's: {e}"))),
    }
}

/// Refuses any symbolic link, and anything not owned by us, in a tree only bssctl writes
/// (`config/`, `secrets/`, `run/`, `logs/`): a link planted there would make root write, read
/// or chown through it.
pub fn refuse_links(dir: &Path) -> Result<(), RootError> {
    let m = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("inspect", dir, e)),
    };
    if m.file_type().is_symlink() {
        return Err(refused(
            dir,
            "it is a symbolic link; bssctl never writes through links",
        ));
    }
    if m.is_dir() {
        for e in std::fs::read_dir(dir).map_err(|e| io("list", dir, e))? {
            let e = e.map_err(|e| io("list", dir, e))?;
            refuse_links(&e.path())?;
        }
    }
    Ok(())
}

/// lchown of `p` and, when `p` is a real directory (not a link to one), of everything below it.
/// Links are chowned themselves and never followed.
pub fn chown_tree(p: &Path, ids: Option<(u32, u32)>) -> std::io::Result<()> {
    let Some((uid, gid)) = ids else { return Ok(()) };
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    let m = std::fs::symlink_metadata(p)?;
    if m.is_dir() {
        for e in std::fs::read_dir(p)? {
            chown_tree(&e?.path(), ids)?;
        }
    }
    Ok(())
}

/// chmod of `p` unless it is a symbolic link (chmod would change the link's target).
pub fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(p)?;
    if m.file_type().is_symlink() {
        return Err(std::io::Error::other(format!(
            "{} is a symbolic link; not changing its target's mode",
            p.display()
        )));
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}
