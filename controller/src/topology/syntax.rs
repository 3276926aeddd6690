//! What a topology string may contain, per target format: the validation half of "no topology
//! value breaks out of its file" (the escaping half is `render::escape`).
//!
//! Owns the character rules: every string of the document is one line of printable text; words
//! that reach formats without a quoting bssctl can rely on (haproxy.cfg arguments, env-file
//! values) are restricted further; paths that reach every format (the state directory) use a
//! portable character set, stay clear of system directories and keep unix-socket paths within
//! the kernel's limit. It does not escape (render does) and does not place diagnostics (validate
//! does, with the field path the user wrote).

use std::path::{Component, Path};

/// `sun_path` is 108 bytes on Linux, including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Why a string is refused, as a phrase for "`...` <reason>".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub hint: String,
}

fn refuse(reason: impl Into<String>, hint: impl Into<String>) -> Option<Refusal> {
    Some(Refusal {
        reason: reason.into(),
        hint: hint.into(),
    })
}

/// A character that ends a line or is invisible in some reader of a rendered file: C0 controls
/// (NUL, TAB, LF, CR, ...), DEL, C1 controls (NEL U+0085), the Unicode line and paragraph
/// separators and the byte-order mark.
pub fn is_breaking(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn describe_char(c: char) -> String {
    match c {
        '\0' => "a NUL byte".into(),
        '\n' => "a newline".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        '\u{85}' => "a NEL (U+0085) line break".into(),
        '\u{2028}' => "a Unicode line separator (U+2028)".into(),
        '\u{2029}' => "a Unicode paragraph separator (U+2029)".into(),
        c => format!("the control character U+{:04X}", c as u32),
    }
}

/// Every string of a topology: one line of printable text.
pub fn single_line(s: &str) -> Option<Refusal> {
    let c = s.chars().find(|c| is_breaking(*c))?;
    refuse(
        format!("contains {}", describe_char(c)),
        "write the value on one line of printable text: rendered configuration files are \
         line-based, so a line break or control character would start a new directive",
    )
}

/// Multi-line text (PromQL expressions, alert descriptions): newlines allowed, nothing else
/// that breaks lines or hides.
pub fn text_block(s: &str) -> Option<Refusal> {
    let c = s.chars().find(|c| *c != '\n' && is_breaking(*c))?;
    refuse(
        format!("contains {}", describe_char(c)),
        "only plain newlines may separate lines here; remove control characters and Unicode \
         line separators",
    )
}

/// A word of haproxy.cfg written without quotes (user names, ...): no whitespace, quotes,
/// backslash, `#` (a comment) or `$` (environment expansion).
pub fn haproxy_word(s: &str) -> Option<Refusal> {
    if s.is_empty() {
        return refuse(
            "is empty",
            "write a name of letters, digits, '.', '_' or '-'",
        );
    }
    let bad = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))?;
    refuse(
        format!(
            "contains `{}`, which haproxy.cfg would interpret",
            bad.escape_default()
        ),
        "use letters, digits, '.', '_' and '-' only (haproxy.cfg splits words on blanks and reads \
         quotes, `\\`, `#` and `$` itself)",
    )
}

/// A value of a KEY=VALUE env file (read line by line, trimmed, split at the first `=`).
pub fn env_value(s: &str) -> Option<Refusal> {
    if let Some(r) = single_line(s) {
        return Some(r);
    }
    if s.trim() != s {
        return refuse(
            "starts or ends with blanks, which an env file drops",
            "remove the surrounding spaces",
        );
    }
    None
}

/// An identifier written into rendered files unquoted (Kafka cluster id, ...).
pub fn plain_id(s: &str) -> Option<Refusal> {
    if s.is_empty() || s.len() > 64 {
        return refuse(
            "must have 1 to 64 characters",
            "use letters, digits, '.', '_' and '-'",
        );
    }
    let bad = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))?;
    refuse(
        format!("contains `{}`", bad.escape_default()),
        "use letters, digits, '.', '_' and '-' only",
    )
}

/// Alert annotations are Go templates that Prometheus expands (and `promtool` checks): only the
/// plain references to the alert's own data are accepted, `{{ $labels.<name> }}`,
/// `{{ $externalLabels.<name> }}` and `{{ $value }}`, each optionally piped into one of the
/// `humanize*` functions. Anything else between `{{` and `}}` would be code run by Prometheus.
pub fn prom_template(s: &str) -> Option<Refusal> {
    let hint = "in summaries and descriptions write only `{{ $labels.name }}`, \
                `{{ $externalLabels.name }}` or `{{ $value }}` (optionally `| humanize`)";
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return refuse("opens a template action `{{` that is never closed", hint);
        };
        let action = after[..close].trim_matches(|c| c == ' ' || c == '-');
        if !template_action(action.trim()) {
            return refuse(
                format!("contains the template action `{{{{{action}}}}}`"),
                hint,
            );
        }
        rest = &after[close + 2..];
    }
    None
}

fn template_action(a: &str) -> bool {
    let (head, pipe) = match a.split_once('|') {
        Some((h, p)) => (h.trim(), Some(p.trim())),
        None => (a, None),
    };
    let ident = |x: &str| {
        !x.is_empty()
            && x.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
            && !x.as_bytes()[0].is_ascii_digit()
    };
    let head_ok = head == "$value"
        || head
            .strip_prefix("$labels.")
            .or_else(|| head.strip_prefix("$externalLabels."))
            .is_some_and(ident);
    let pipe_ok = pipe.is_none_or(|p| {
        matches!(
            p,
            "humanize"
                | "humanize1024"
                | "humanizePercentage"
                | "humanizeDuration"
                | "humanizeTimestamp"
        )
    });
    head_ok && pipe_ok
}

/// Characters a state directory path may use: it is written into haproxy.cfg, redis.conf,
/// postgresql.conf, env files and YAML, some of which have no quoting bssctl could rely on.
fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@' | ',' | '=' | '~')
}

/// Trees bssctl never writes into: a state root inside them would write or delete system files.
const SYSTEM_TREES: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
    "/sys", "/usr",
];

/// Shared directories that may hold a state directory but must not be an environment root
/// (`destroy` deletes the root).
const SHARED_DIRS: &[&str] = &[
    "/",
    "/home",
    "/media",
    "/mnt",
    "/opt",
    "/root",
    "/run",
    "/srv",
    "/tmp",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/log",
    "/var/run",
    "/var/tmp",
    "/usr/local",
];

/// Removes `.` and resolves `..` lexically (no file system access: validate is pure).
pub fn normalize(p: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Judges the state directory `dir` (absolute, as resolved) and the environment root
/// `dir/<name>` it leads to. `base` is the topology's directory: a state directory that is it
/// or one of its parents would make `destroy` delete the checkout.
pub fn state_dir(written: &str, dir: &Path, root: &Path, base: &Path) -> Option<Refusal> {
    if let Some(r) = single_line(written) {
        return Some(r);
    }
    let shown = dir.to_string_lossy();
    if let Some(c) = shown.chars().find(|c| !path_char(*c)) {
        return refuse(
            format!("contains `{}`", c.escape_default()),
            "use letters, digits and `/ . _ - + @ , = ~` in the state directory: it is written \
             into haproxy.cfg, redis.conf, postgresql.conf and env files",
        );
    }
    let dir_n = normalize(dir);
    let root_n = normalize(root);
    let base_n = normalize(base);
    let system = |p: &Path| SYSTEM_TREES.iter().find(|t| p.starts_with(t)).copied();
    let own =
        "use a directory of its own, e.g. `.bssctl` next to the topology or `/var/tmp/bssctl`";
    if dir_n == Path::new("/") {
        return refuse(
            "is the file system root: the environment would live directly under `/`",
            own,
        );
    }
    if let Some(t) = system(&dir_n).or_else(|| system(&root_n)) {
        return refuse(
            format!(
                "puts the environment root `{}` inside `{t}`, a system directory bssctl would \
                 write into and `destroy` would delete from",
                root_n.display()
            ),
            own,
        );
    }
    let r = root_n.to_string_lossy();
    if SHARED_DIRS.contains(&r.as_ref()) {
        return refuse(
            format!(
                "makes the shared directory `{r}` the environment root, which `destroy` deletes"
            ),
            own,
        );
    }
    if base_n.starts_with(&root_n) {
        return refuse(
            format!(
                "makes `{}` the environment root, which holds the topology file itself: `destroy` \
                 would delete it",
                root_n.display()
            ),
            "use a subdirectory such as `.bssctl`; `..` must not lead back to the checkout",
        );
    }
    None
}

/// The longest unix-socket path bssctl creates under `run` (PostgreSQL's `.s.PGSQL.<port>`,
/// HAProxy's admin socket) must fit `sun_path`.
pub fn socket_path(path: &str) -> Option<Refusal> {
    if path.len() <= MAX_SOCKET_PATH {
        return None;
    }
    refuse(
        format!(
            "leads to the unix socket `{path}` of {} bytes, more than the {MAX_SOCKET_PATH} a \
             socket path may have",
            path.len()
        ),
        "use a shorter stateDir (or environment name), e.g. `/var/tmp/bssctl`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert!(single_line("a b#${X}{{x}}'\"\\").is_none());
        for s in [
            "a\nb",
            "a\rb",
            "a\0",
            "a\u{85}",
            "a\u{2028}",
            "\u{2029}",
            "\t",
            "\u{7f}",
        ] {
            assert!(single_line(s).is_some(), "{s:?}");
        }
        assert!(text_block("up\n== 0").is_none());
        assert!(text_block("up\r\n").is_some());
    }

    #[test]
    fn templates() {
        assert!(
            prom_template("{{ $labels.instance }} is down at {{ $value | humanize }}").is_none()
        );
        assert!(prom_template("plain } {").is_none());
        assert!(prom_template("{{x}}").is_some());
        assert!(prom_template("{{ $labels.a }} {{").is_some());
        assert!(prom_template("{{ printf \"%s\" $value }}").is_some());
    }

    #[test]
    fn words() {
        assert!(haproxy_word("admin").is_none());
        for s in ["", "a b", "a\"", "a'", "a\\", "a#", "${X}", "lua-load\n"] {
            assert!(haproxy_word(s).is_some(), "{s:?}");
        }
        assert!(env_value("x").is_none());
        assert!(env_value(" x").is_some());
        assert!(plain_id("bss-dev").is_none());
        assert!(plain_id("a\nLD_PRELOAD=x").is_some());
    }

    #[test]
    fn state_dirs() {
        let base = Path::new("/home/u/checkout");
        let ok =
            |w: &str, d: &str, n: &str| state_dir(w, Path::new(d), &Path::new(d).join(n), base);
        assert!(ok(".bssctl", "/home/u/checkout/.bssctl", "dev").is_none());
        assert!(ok("/tmp/x", "/tmp/x", "dev").is_none());
        assert!(ok("/tmp", "/tmp", "dev").is_none());
        assert!(ok("/", "/", "etc").is_some());
        assert!(ok("/", "/", "dev").is_some());
        assert!(ok("/var", "/var", "tmp").is_some());
        assert!(ok("/etc", "/etc", "dev").is_some());
        assert!(ok("/usr/local", "/usr/local", "dev").is_some());
        assert!(ok("..", "/home/u/checkout/..", "checkout").is_some());
        assert!(ok("../..", "/home/u/checkout/../..", "u").is_some());
        assert!(ok("a b", "/home/u/checkout/a b", "dev").is_some());
        assert!(ok("x\ny", "/home/u/checkout/x\ny", "dev").is_some());
        assert!(ok("/var/tmp/bssctl", "/var/tmp/bssctl", "dev").is_none());
        assert!(socket_path(&"x".repeat(107)).is_none());
        assert!(socket_path(&"x".repeat(108)).is_some());
    }
}
