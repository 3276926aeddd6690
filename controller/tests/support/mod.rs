//! Shared helpers of the controller's integration tests: fixture discovery and loading.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

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
    9188, 9189, 9190, 9121, 9090, 9093, 7070,
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
