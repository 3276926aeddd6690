//! Helpers of the Kubernetes tests: fixtures resolved for the kubernetes runtime, the offline
//! validators (kubernetes-validate, helm), each failing with its install step when missing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use controller::render::{self, Bundle};
use controller::topology::types::RuntimeKind;
use controller::topology::{self, Loaded, ValidateOptions};

pub const K8S_HINT: &str =
    "run `bash dev/setup.sh` (dev/setup.d/k8s.sh installs helm, kubectl, kubernetes-validate, etcd and builds bssctl-apiextensions)";
/// The Kubernetes version manifests are validated against (k8s-openapi's earliest, v1_33).
pub const K8S_VERSION: &str = "1.33.0";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixtures() -> Vec<(String, PathBuf)> {
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

pub fn load_k8s(path: &Path) -> Loaded {
    let opts = ValidateOptions {
        base_dir: PathBuf::from("/etc/bssctl-test"),
        state_dir: None,
        runtime: Some(RuntimeKind::Kubernetes),
    };
    topology::load(path, &opts).unwrap_or_else(|d| {
        panic!(
            "{} does not validate for kubernetes:\n{}",
            path.display(),
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

pub fn load_k8s_str(text: &str) -> Loaded {
    let opts = ValidateOptions {
        base_dir: PathBuf::from("/etc/bssctl-test"),
        state_dir: None,
        runtime: Some(RuntimeKind::Kubernetes),
    };
    topology::load_str(text, "test.yaml", &opts).unwrap_or_else(|d| {
        panic!(
            "does not validate:\n{}",
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

pub fn bundle(l: &Loaded) -> Bundle {
    let tera = render::load_templates(None).unwrap();
    render::render(&l.validated, &tera).unwrap()
}

/// A tool of the Kubernetes setup, or a failure naming the install step (never a silent skip).
pub fn require(tool: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    for d in dirs.into_iter().chain([controller::tools::tools_dir()]) {
        let p = d.join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{tool}` not found: {K8S_HINT}");
}

/// Runs kubernetes-validate in strict mode over `files`; panics with its output on any failure.
pub fn validate_strict(files: &[PathBuf]) {
    let kv = require("kubernetes-validate");
    let out = std::process::Command::new(&kv)
        .arg("--strict")
        .arg("-k")
        .arg(K8S_VERSION)
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict failed:\n{text}"
    );
    let passed = text
        .lines()
        .filter(|l| l.starts_with("INFO") && l.contains("passed"))
        .count();
    assert!(passed > 0, "kubernetes-validate validated nothing:\n{text}");
}
