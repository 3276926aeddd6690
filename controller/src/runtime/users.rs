//! Who the components of the local runtime run as. When bssctl runs as root, every component
//! kind gets its own unprivileged system user (`bss-redis`, `bss-envoy`, ...; PostgreSQL keeps
//! Debian's `postgres`; the backend and its stream processors share `bss-backend`, one binary
//! with one configuration and the same secrets), created here when it is missing, and the binary
//! it runs must be reachable by that user: a program under a directory the user cannot enter
//! (envoy and tansu live in `/root/.cache`, mode 0700) is copied to the root-owned, 0755
//! `TOOLS_COPY_DIR`. When bssctl does not run as root, components run as the invoking user.
//!
//! It decides names, creates users and copies binaries; it does not start anything or change
//! files of the state directory (the local runtime does, with the ids this module hands out).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::render::Kind;
use crate::tools;

/// Where binaries that a component's user cannot reach in place are copied (root:root 0755).
pub const TOOLS_COPY_DIR: &str = "/usr/local/lib/bssctl/bin";

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "failed to create system user `{user}` (for {kind}): {detail}; create it yourself \
         (`useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {user}`, or \
         `bash dev/setup.sh`) or run bssctl as a non-root user (components then run as that user)"
    )]
    Create {
        user: String,
        kind: String,
        detail: String,
    },
    #[error(
        "failed to make {program} reachable by user `{user}`: {detail}; install it under a \
         directory every user can enter (root-owned, mode 0755)"
    )]
    Copy {
        program: String,
        user: String,
        detail: String,
    },
}

/// uid and gid of a component's user, with its name (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl User {
    pub fn ids(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }
}

/// The system user a component kind runs as when bssctl is root.
pub fn user_name(kind: Kind) -> &'static str {
    match kind {
        // Debian's postgresql package creates it; `ensure` falls back to `bss-postgres`.
        Kind::Postgres => "postgres",
        Kind::Redis => "bss-redis",
        Kind::KafkaStore => "bss-kafka-store",
        Kind::Kafka => "bss-kafka",
        Kind::Haproxy => "bss-haproxy",
        Kind::Backend | Kind::StreamProcessor => "bss-backend",
        Kind::Envoy => "bss-envoy",
        Kind::NodeExporter => "bss-node-exporter",
        Kind::PostgresExporter => "bss-postgres-exporter",
        Kind::RedisExporter => "bss-redis-exporter",
        Kind::Prometheus => "bss-prometheus",
        Kind::Alertmanager => "bss-alertmanager",
    }
}

/// Every user name `ensure` may create (for dev/setup.d/users.sh and the docs).
pub const ALL_KINDS: &[Kind] = &[
    Kind::Postgres,
    Kind::Redis,
    Kind::KafkaStore,
    Kind::Kafka,
    Kind::Haproxy,
    Kind::Backend,
    Kind::Envoy,
    Kind::NodeExporter,
    Kind::PostgresExporter,
    Kind::RedisExporter,
    Kind::Prometheus,
    Kind::Alertmanager,
];

/// The user of `kind` when bssctl is root, created when it is missing (idempotent, safe when
/// two applies race: a lost race is an existing user). `None`: bssctl is not root, components
/// run as the invoking user.
pub fn ensure(kind: Kind) -> Result<Option<User>, UserError> {
    if !tools::is_root() {
        return Ok(None);
    }
    let name = user_name(kind);
    if let Some(u) = lookup(name) {
        return Ok(Some(u));
    }
    let name = if kind == Kind::Postgres {
        "bss-postgres"
    } else {
        name
    };
    if let Some(u) = lookup(name) {
        return Ok(Some(u));
    }
    create(name, kind).map(Some)
}

fn lookup(name: &str) -> Option<User> {
    tools::user_ids(name).map(|(uid, gid)| User {
        name: name.to_string(),
        uid,
        gid,
    })
}

fn useradd() -> Option<PathBuf> {
    ["/usr/sbin/useradd", "/sbin/useradd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| tools::find("useradd").ok())
}

fn create(name: &str, kind: Kind) -> Result<User, UserError> {
    let fail = |detail: String| UserError::Create {
        user: name.to_string(),
        kind: format!("{kind:?}").to_lowercase(),
        detail,
    };
    let bin = useradd().ok_or_else(|| fail("useradd is not installed".into()))?;
    let mut last = String::new();
    // Another apply may hold the passwd lock at the same moment: retry, then look again.
    for attempt in 0..5 {
        let out = std::process::Command::new(&bin)
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                &format!("bssctl {}", user_name(kind)),
                name,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| fail(format!("failed to run {}: {e}", bin.display())))?;
        if let Some(u) = lookup(name) {
            if !out.status.success() {
                tracing::debug!(user = name, "created by a concurrent apply");
            } else {
                tracing::info!(user = name, uid = u.uid, "created a system user");
            }
            return Ok(u);
        }
        last = format!(
            "{} exited with {}: {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
    }
    Err(fail(last))
}

/// The first existing ancestor of `p` (or `p` itself) that `uid`/`gid` cannot search.
pub fn unreachable_ancestor(p: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    let mut dirs: Vec<&Path> = p.ancestors().collect();
    dirs.reverse();
    for d in dirs {
        let Ok(m) = std::fs::metadata(d) else { break };
        if !m.is_dir() {
            break;
        }
        if !allowed(&m, uid, gid, 0o1) {
            return Some(d.to_path_buf());
        }
    }
    None
}

/// Whether `uid`/`gid` has permission `bits` (r=4, w=2, x=1) on a file (owner, group, other).
fn allowed(m: &std::fs::Metadata, uid: u32, gid: u32, bits: u32) -> bool {
    let mode = m.mode();
    let have = if m.uid() == uid {
        (mode >> 6) & 7
    } else if m.gid() == gid {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    have & bits == bits
}

/// True when `uid`/`gid` can execute `program` where it is (every directory searchable, the
/// file itself readable and executable; links resolved).
pub fn can_run(program: &Path, uid: u32, gid: u32) -> bool {
    let Ok(real) = std::fs::canonicalize(program) else {
        return false;
    };
    let dirs_ok = real
        .parent()
        .is_none_or(|d| unreachable_ancestor(d, uid, gid).is_none());
    dirs_ok && std::fs::metadata(&real).is_ok_and(|m| m.is_file() && allowed(&m, uid, gid, 0o5))
}

/// `program` itself when `user` can run it, else a root-owned 0755 copy in `TOOLS_COPY_DIR`
/// (refreshed when the source's size or modification time changes).
pub fn reachable_program(program: &Path, user: &User) -> Result<PathBuf, UserError> {
    if can_run(program, user.uid, user.gid) {
        return Ok(program.to_path_buf());
    }
    let fail = |detail: String| UserError::Copy {
        program: program.display().to_string(),
        user: user.name.clone(),
        detail,
    };
    let src = std::fs::canonicalize(program).map_err(|e| fail(e.to_string()))?;
    let meta = std::fs::metadata(&src).map_err(|e| fail(e.to_string()))?;
    let file = program
        .file_name()
        .ok_or_else(|| fail("no file name".into()))?;
    let dir = Path::new(TOOLS_COPY_DIR);
    copy_if_changed(&src, &meta, dir, file).map_err(|e| fail(e.to_string()))
}

fn copy_if_changed(
    src: &Path,
    meta: &std::fs::Metadata,
    dir: &Path,
    file: &std::ffi::OsStr,
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true).mode(0o755);
    b.create(dir)?;
    // bssctl's umask (027) applies to the directories it just created: open them up for
    // traversal (the copy dir and its `bssctl` parent are ours).
    for d in dir.ancestors().take(2) {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    // The copy directory is trusted by every component: it must be root's, writable by root
    // only and traversable by everyone, and so must every directory above it.
    for d in dir.ancestors() {
        let m = std::fs::symlink_metadata(d)?;
        if m.file_type().is_symlink()
            || m.uid() != 0
            || m.mode() & 0o022 != 0
            || m.mode() & 0o001 == 0
        {
            return Err(std::io::Error::other(format!(
                "{} is not a root-owned directory that only root writes and everyone may enter",
                d.display()
            )));
        }
    }
    let dst = dir.join(file);
    let mtime = meta.modified()?;
    if let Ok(m) = std::fs::symlink_metadata(&dst) {
        if m.is_file() && m.len() == meta.len() && m.modified().ok() == Some(mtime) {
            return Ok(dst);
        }
    }
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        file.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut out = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o755)
            .custom_flags(crate::state::o_nofollow())
            .open(&tmp)?;
        let mut input = std::fs::File::open(src)?;
        std::io::copy(&mut input, &mut out)?;
        out.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        out.set_modified(mtime)?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, &dst)?;
    tracing::info!(from = %src.display(), to = %dst.display(), "copied a binary where the components' users can run it");
    Ok(dst)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_user_per_kind_backend_and_stream_processors_share_one() {
        let mut names: Vec<&str> = ALL_KINDS.iter().map(|k| user_name(*k)).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL_KINDS.len());
        assert_eq!(user_name(Kind::Backend), user_name(Kind::StreamProcessor));
        assert!(names.iter().all(|n| n.len() <= 32));
    }

    #[test]
    fn reachability_follows_every_directory() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("a");
        std::fs::create_dir(&inner).unwrap();
        let prog = inner.join("tool");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // uid/gid that own nothing here: "other" bits decide.
        assert!(!can_run(&prog, 65_000, 65_000));
        assert_eq!(
            unreachable_ancestor(&prog, 65_000, 65_000).as_deref(),
            Some(inner.as_path())
        );
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert!(can_run(&prog, 65_000, 65_000));
    }
}
