//! Shared helpers of the controller's integration tests: fixture discovery and loading.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

pub mod exposure;

use controller::topology::{self, Loaded, ValidateOptions};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The root topology and every fixture under tests/fixtures/valid, sorted, as (name, path).
pub fn valid_topologies() -> Vec<(String, PathBuf)> {
    let mut v = vec![(
        "root-topology".to_string(),
        repo_root().join("topology.yaml"),
    )];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for f in files {
        v.push((f.file_stem().unwrap().to_string_lossy().into_owned(), f));
    }
    v
}

/// Loads a topology with a fixed state dir so rendered paths are the same on every machine.
pub fn load_fixed(path: &Path) -> Loaded {
    load_with_state(path, Path::new("/var/lib/bssctl-test"))
}

pub fn load_with_state(path: &Path, state: &Path) -> Loaded {
    let opts = ValidateOptions {
        base_dir: PathBuf::from("/etc/bssctl-test"),
        state_dir: Some(state.to_path_buf()),
        runtime: None,
    };
    match topology::load(path, &opts) {
        Ok(l) => l,
        Err(d) => panic!(
            "{} does not validate:\n{}",
            path.display(),
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// Fails with the install step when a tool is missing (never a silent skip).
pub fn require_tool(tool: &str) -> PathBuf {
    match controller::tools::find(tool) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Every default port of the stack (the seeds' ports and the agent's).
pub const DEFAULT_PORTS: &[u16] = &[
    5432, 5433, 5434, 5435, 5436, 5437, 5438, 8084, 6379, 9092, 8080, 15000, 15006, 9100, 9187,
    9188, 9189, 9190, 9121, 9090, 9093, 9094, 7070, 9000,
];

/// A `spec.runtime.portOffset` under which every default port is free. Offsets are handed out
/// 200 apart within a test binary (so parallel tests never share one) and kept below the kernel's
/// ephemeral range (32768+), where client sockets of other processes could take a port between
/// our check and the component's bind.
pub fn free_offset() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const SLOTS: u16 = 37; // offsets 10000..=17200: highest port 15006 + 17200 < 32768
    let start = (std::process::id() % SLOTS as u32) as u16;
    for _ in 0..SLOTS * 2 {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let o = 10000 + ((start + n) % SLOTS) * 200;
        if DEFAULT_PORTS
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p + o)).is_ok())
        {
            return o;
        }
    }
    panic!("no free port range below 32768 for a test environment");
}

/// An environment of one test: a temp dir with `topology.yaml` (state under `state/`), on its own
/// port offset. Dropping it always destroys the environment, even after a failed assertion.
pub struct StackEnv {
    _dir: tempfile::TempDir,
    pub file: PathBuf,
    pub root: PathBuf,
    pub offset: u16,
}

impl StackEnv {
    /// Writes the topology `name` with `spec` (lines under `spec:`, indented two spaces).
    pub fn new(prefix: &str, name: &str, spec: &str) -> StackEnv {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let offset = free_offset();
        let text = format!("apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {{name: {name}}}\nspec:\n  runtime: {{portOffset: {offset}, stateDir: state}}\n{spec}");
        let file = dir.path().join("topology.yaml");
        std::fs::write(&file, text).unwrap();
        let root = dir.path().join("state").join(name);
        StackEnv {
            _dir: dir,
            file,
            root,
            offset,
        }
    }

    pub fn port(&self, default: u16) -> u16 {
        default + self.offset
    }

    /// `bssctl <args> <topology> <extra>`: exit code, stdout, stderr.
    pub fn run(&self, args: &[&str], extra: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bssctl"))
            .args(args)
            .arg(&self.file)
            .args(extra)
            .env_remove("BSSCTL_STATE_DIR")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn secret(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join("secrets").join(name))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn marked_processes(&self) -> Vec<u32> {
        controller::runtime::process::processes_of(&self.root.display().to_string())
    }
}

impl Drop for StackEnv {
    fn drop(&mut self) {
        // SIGCONT first: a stopped (SIGSTOP) process cannot be shut down.
        for pid in self.marked_processes() {
            controller::runtime::process::signal(pid, "CONT");
        }
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_bssctl"))
            .arg("destroy")
            .arg(&self.file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
