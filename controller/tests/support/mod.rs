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
