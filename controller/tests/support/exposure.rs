//! Exposure checks shared by the security suites: every file of a state root, the secret values
//! of an environment, "no secret value outside secrets/" (files, command lines, extra texts such
//! as status, plan and metrics) and "nothing world-readable".

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::StackEnv;

/// Every file under `dir` (links and sockets included), without following links.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        // Files come and go under a running stack (WAL segments, temp files).
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        out.push(p.clone());
        if m.is_dir() {
            walk(&p, out);
        }
    }
}

/// Secret values of the environment (every file in secrets/ of 8 characters or more).
pub fn secret_values(root: &Path) -> Vec<(String, String)> {
    std::fs::read_dir(root.join("secrets"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path())
                    .unwrap()
                    .trim()
                    .to_string(),
            )
        })
        .filter(|(_, v)| v.len() >= 8)
        .collect()
}

/// Where secret values appear outside secrets/: files (configs, applied.json, journal, history,
/// logs, records, data), command lines of the environment's processes, and the `extra` texts.
pub fn secret_leaks(env: &StackEnv, extra: &[(&str, String)]) -> Vec<String> {
    let secrets = secret_values(&env.root);
    assert!(secrets.len() >= 3, "{secrets:?}");
    let mut files = Vec::new();
    walk(&env.root, &mut files);
    let mut leaks = Vec::new();
    for p in files
        .iter()
        .filter(|p| !p.starts_with(env.root.join("secrets")))
    {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            continue;
        };
        // PostgreSQL's data directories hold SCRAM verifiers (not the values) in pg_authid.
        if !m.file_type().is_file() || m.len() > 64 << 20 {
            continue;
        }
        let Ok(bytes) = std::fs::read(p) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for (name, v) in &secrets {
            if text.contains(v.as_str()) {
                leaks.push(format!("{name} in {}", p.display()));
            }
        }
    }
    for pid in env.marked_processes() {
        let cmd = controller::runtime::process::cmdline(pid);
        for (name, v) in &secrets {
            if cmd.contains(v.as_str()) {
                leaks.push(format!("{name} in the command line of pid {pid}: {cmd}"));
            }
        }
    }
    for (what, text) in extra {
        for (name, v) in &secrets {
            if text.contains(v.as_str()) {
                leaks.push(format!("{name} in {what}"));
            }
        }
    }
    leaks
}

/// Regular files and directories under `root` that "other" may read or write (directories may
/// keep o+x for traversal).
pub fn world_readable(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    walk(root, &mut files);
    assert!(files.len() > 5, "nothing under {}", root.display());
    files
        .iter()
        .filter_map(|p| {
            let m = std::fs::symlink_metadata(p).ok()?;
            let ft = m.file_type();
            let mode = m.permissions().mode() & 0o7777;
            let bad = (ft.is_file() || ft.is_dir()) && mode & 0o006 != 0;
            bad.then(|| format!("{} {:o}", p.display(), mode))
        })
        .collect()
}
