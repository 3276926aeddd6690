//! Diagnostics: one problem in a topology, with its field path, its place in the file and a hint.
//!
//! Owns formatting and source positions; it does not decide what is a problem (parse and validate do).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One problem. `path` is the field path in the document, e.g. `spec.envoy.listeners[0].port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub path: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

impl Diagnostic {
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
            hint: None,
            location: None,
        }
    }

    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(path, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn at(mut self, location: Option<Location>) -> Self {
        if self.location.is_none() {
            self.location = location;
        }
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match &self.location {
            Some(loc) => write!(f, "{loc}: {sev}: {}", self.message)?,
            None => write!(f, "{sev}: {}", self.message)?,
        }
        if !self.path.is_empty() {
            write!(f, "\n  field: {}", self.path)?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Sort by position (unknown positions last), then path, so output is stable and reads top-down.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        let ka = a
            .location
            .as_ref()
            .map(|l| (l.line, l.column))
            .unwrap_or((usize::MAX, 0));
        let kb = b
            .location
            .as_ref()
            .map(|l| (l.line, l.column))
            .unwrap_or((usize::MAX, 0));
        ka.cmp(&kb)
            .then_with(|| a.path.cmp(&b.path))
            .then_with(|| a.message.cmp(&b.message))
    });
}

/// Positions of every node of a parsed document, keyed by field path.
/// `value` is where the node's value starts; `key` is where its mapping key starts (if any).
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    pub file: String,
    pub value: BTreeMap<String, (usize, usize)>,
    pub key: BTreeMap<String, (usize, usize)>,
}

impl SourceMap {
    pub fn new(file: impl Into<String>) -> Self {
        SourceMap {
            file: file.into(),
            ..Default::default()
        }
    }

    fn loc(&self, (line, column): (usize, usize)) -> Location {
        Location {
            file: self.file.clone(),
            line,
            column,
        }
    }

    /// Where the value at `path` starts; falls back to the nearest ancestor that exists in the
    /// file (a defaulted field points at the section that would hold it).
    pub fn locate(&self, path: &str) -> Option<Location> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.value.get(&p) {
                return Some(self.loc(*pos));
            }
            p = parent_path(&p)?;
        }
    }

    /// Where the key of the field at `path` starts (for unknown or duplicated keys).
    pub fn locate_key(&self, path: &str) -> Option<Location> {
        match self.key.get(path) {
            Some(pos) => Some(self.loc(*pos)),
            None => self.locate(path),
        }
    }
}

/// `a.b[2].c` -> `a.b[2]` -> `a.b` -> `a` -> `` -> None.
pub fn parent_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}

/// Joins a field name onto a path.
pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Joins a sequence index onto a path.
pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A hint for an unknown value: "did you mean `x`?" when one candidate is close, else the list
/// of allowed values after `label` (e.g. "teams: a, b, c").
pub fn suggest(word: &str, candidates: &[&str], label: &str) -> String {
    match did_you_mean(word, candidates.iter().copied()) {
        Some(m) => format!("did you mean `{m}`?"),
        None => format!("{label}: {}", candidates.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_paths_walk_up() {
        assert_eq!(parent_path("a.b[2].c").as_deref(), Some("a.b[2]"));
        assert_eq!(parent_path("a.b[2]").as_deref(), Some("a.b"));
        assert_eq!(parent_path("a").as_deref(), Some(""));
        assert_eq!(parent_path(""), None);
    }

    #[test]
    fn typo_hint() {
        assert_eq!(
            did_you_mean("replcas", ["replicas", "port"]),
            Some("replicas")
        );
        assert_eq!(did_you_mean("zzz", ["replicas", "port"]), None);
    }
}
