//! The dependency direction of the crate, enforced: the pure core (topology, render, plan, crd,
//! diag) names neither the engine nor a runtime; the engine names no runtime implementation.
//! A new runtime (docker, kubernetes) is one more implementation below the engine, never a
//! branch inside it.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            out.push((p.display().to_string(), text));
        }
    }
}

fn offenders(files: &[(String, String)], forbidden: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for (path, text) in files {
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for f in forbidden {
                if code.contains(f) {
                    bad.push(format!("{path}:{}: `{f}` in `{}`", i + 1, line.trim()));
                }
            }
        }
    }
    bad
}

#[test]
fn engine_is_runtime_agnostic() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src.join("engine"), &mut files);
    assert!(files.len() >= 8, "engine sources not found: {files:?}");
    let bad = offenders(
        &files,
        &[
            "runtime::local",
            "runtime::process",
            "crate::runtime::",
            "crate::docker",
            "crate::k8s",
            "docker::",
            "kube::",
            "bollard",
        ],
    );
    assert!(
        bad.is_empty(),
        "the engine names a runtime implementation:\n{}",
        bad.join("\n")
    );
}

#[test]
fn core_does_no_io_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src.join("topology"), &mut files);
    for f in ["render.rs", "plan.rs", "diag.rs"] {
        let p = src.join(f);
        files.push((
            p.display().to_string(),
            std::fs::read_to_string(&p).unwrap_or_default(),
        ));
    }
    let bad = offenders(&files, &["crate::engine", "crate::runtime", "crate::check"]);
    assert!(
        bad.is_empty(),
        "the pure core depends on I/O layers:\n{}",
        bad.join("\n")
    );
}
