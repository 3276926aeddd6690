//! The topology: its document types, parsing with positions, validation into a `ValidatedTopology`.

pub mod model;
pub mod parse;
pub mod profile;
pub mod status;
pub mod syntax;
pub mod types;
pub mod validate;

use std::path::Path;

pub use model::ValidatedTopology;
pub use types::Topology;
pub use validate::ValidateOptions;

use crate::diag::{Diagnostic, SourceMap};

/// A topology file read, checked and resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub topology: Topology,
    pub source: SourceMap,
    pub validated: ValidatedTopology,
    pub warnings: Vec<Diagnostic>,
}

/// Parses and validates `path`. `opts.base_dir` defaults to the file's directory.
pub fn load(path: &Path, opts: &ValidateOptions) -> Result<Loaded, Vec<Diagnostic>> {
    let parsed = parse::parse_file(path)?;
    let mut opts = opts.clone();
    if opts.base_dir.as_os_str().is_empty() {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        opts.base_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    }
    let (validated, warnings) =
        validate::validate_with_warnings(&parsed.topology, &parsed.source, &opts)?;
    Ok(Loaded {
        topology: parsed.topology,
        source: parsed.source,
        validated,
        warnings,
    })
}

/// Parses and validates topology text (tests and tools). `file` names it in diagnostics.
pub fn load_str(text: &str, file: &str, opts: &ValidateOptions) -> Result<Loaded, Vec<Diagnostic>> {
    let parsed = parse::parse_str(text, file)?;
    let (validated, warnings) =
        validate::validate_with_warnings(&parsed.topology, &parsed.source, opts)?;
    Ok(Loaded {
        topology: parsed.topology,
        source: parsed.source,
        validated,
        warnings,
    })
}
