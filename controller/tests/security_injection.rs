//! Attack tests for config injection from topology values (issue 12): the payloads seen in
//! review as regression tests, the state-directory and socket rules, secrets from the user's
//! environment, the parser's bounds, and a property test that puts hostile strings into every
//! string field of the schema and requires that validate refuses the value or that the rendered
//! files read it back exactly and the real tools accept them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use controller::diag::Diagnostic;
use controller::render;
use controller::topology::{self, Loaded, ValidateOptions};

const HEAD: &str = "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: sec}\nspec:\n";

fn opts(state: &Path) -> ValidateOptions {
    ValidateOptions {
        base_dir: PathBuf::from("/srv/checkout"),
        state_dir: Some(state.to_path_buf()),
        runtime: None,
    }
}

fn load(text: &str) -> Result<Loaded, Vec<Diagnostic>> {
    topology::load_str(text, "t.yaml", &opts(Path::new("/var/tmp/bssctl-sec")))
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match load(text) {
        Ok(_) => panic!("validated, but must not:\n{text}"),
        Err(d) => d.into_iter().filter(Diagnostic::is_error).collect(),
    }
}

fn show(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The one error at `path`, which must carry a file:line:column and a hint.
fn error_at<'a>(diags: &'a [Diagnostic], path: &str) -> &'a Diagnostic {
    let at: Vec<_> = diags.iter().filter(|d| d.path == path).collect();
    assert_eq!(at.len(), 1, "one error at {path}:\n{}", show(diags));
    let d = at[0];
    let loc = d
        .location
        .as_ref()
        .unwrap_or_else(|| panic!("no location: {d}"));
    assert_eq!(loc.file, "t.yaml");
    assert!(loc.line > 0 && loc.column > 0, "{d}");
    assert!(
        d.hint.as_deref().is_some_and(|h| !h.is_empty()),
        "no hint: {d}"
    );
    d
}

fn tera() -> tera::Tera {
    render::load_templates(None).unwrap()
}

fn valid(text: &str) -> Loaded {
    load(text).unwrap_or_else(|d| panic!("does not validate:\n{}\n{text}", show(&d)))
}

/// `postgres` refuses to run as root: run it as the `postgres` user then.
fn as_postgres(program: &Path) -> Command {
    if controller::tools::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A scratch directory the `postgres` user can read.
fn world_readable_tempdir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

// ---------------------------------------------------------------------------------------------
// The payloads of the review
// ---------------------------------------------------------------------------------------------

#[test]
fn haproxy_stats_user_with_a_newline_cannot_load_lua() {
    let marker = tempfile::tempdir().unwrap();
    let lua = marker.path().join("evil.lua");
    let flag = marker.path().join("lua-ran");
    std::fs::write(
        &lua,
        format!("io.open('{}', 'w'):write('x')\n", flag.display()),
    )
    .unwrap();
    let payload = format!("admin\\n    lua-load {}", lua.display());
    let text = format!(
        "{HEAD}  postgres: {{replicas: 0}}\n  haproxy: {{stats: {{user: \"{payload}\"}}}}\n"
    );
    let diags = errors(&text);
    let d = error_at(&diags, "spec.haproxy.stats.user");
    assert!(d.message.contains("newline"), "{d}");

    // Words haproxy would interpret are refused too, one line or not.
    for user in ["ad min", "a#b", "${HOME}", "a\\\"b", "a'b"] {
        let text = format!(
            "{HEAD}  postgres: {{replicas: 0}}\n  haproxy: {{stats: {{user: \"{user}\"}}}}\n"
        );
        error_at(&errors(&text), "spec.haproxy.stats.user");
    }

    // `bssctl check` (which runs `haproxy -c`) stops at validation: no Lua runs.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    std::fs::write(&file, text_with(&payload)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bssctl"))
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!flag.exists(), "the Lua file ran");

    // Even a model that skipped validation cannot render the directive: the haproxy.cfg
    // escaping refuses the value instead of writing it.
    let mut l = valid(&format!(
        "{HEAD}  postgres: {{replicas: 0}}\n  haproxy: {{}}\n"
    ));
    l.validated
        .haproxy
        .as_mut()
        .unwrap()
        .stats
        .as_mut()
        .unwrap()
        .user = format!("admin\n    lua-load {}", lua.display());
    let err = render::render(&l.validated, &tera())
        .unwrap_err()
        .to_string();
    assert!(err.contains("hapword"), "{err}");
}

fn text_with(user_payload: &str) -> String {
    format!(
        "{HEAD}  postgres: {{replicas: 0}}\n  haproxy: {{stats: {{user: \"{user_payload}\"}}}}\n"
    )
}

#[test]
fn kafka_cluster_id_with_a_newline_cannot_add_environment_variables() {
    let text = format!(
        "{HEAD}  kafka: {{clusterId: \"bss\\nLD_PRELOAD=/tmp/x.so\\nLISTENER_URL=tcp://0.0.0.0:9092\"}}\n"
    );
    let d = errors(&text);
    assert!(error_at(&d, "spec.kafka.clusterId")
        .message
        .contains("newline"));
    for id in ["a b", "a=b", "a#b", "${X}"] {
        let text = format!("{HEAD}  kafka: {{clusterId: \"{id}\"}}\n");
        error_at(&errors(&text), "spec.kafka.clusterId");
    }
    // Bypassing validation, the env-file escaping refuses the value.
    let mut l = valid(&format!("{HEAD}  kafka: {{}}\n"));
    l.validated.kafka.as_mut().unwrap().cluster_id = "bss\nLD_PRELOAD=/tmp/x.so".into();
    let err = render::render(&l.validated, &tera())
        .unwrap_err()
        .to_string();
    assert!(err.contains("envvalue"), "{err}");
    // The valid default renders exactly one CLUSTER_ID line and no LD_PRELOAD.
    let l = valid(&format!("{HEAD}  kafka: {{}}\n"));
    let b = render::render(&l.validated, &tera()).unwrap();
    let env = &b.components["kafka-0"].files["tansu.env"];
    let vars = controller::runtime::local::parse_env_file(env);
    assert_eq!(vars.iter().filter(|(k, _)| k == "CLUSTER_ID").count(), 1);
    assert!(vars.iter().all(|(k, _)| k != "LD_PRELOAD"), "{env}");
}

#[test]
fn postgres_parameters_that_run_code_or_read_files_are_refused_with_a_hint() {
    let refused = [
        "include",
        "include_dir",
        "include_if_exists",
        "config_file",
        "ssl_passphrase_command",
        "archive_command",
        "restore_command",
        "archive_cleanup_command",
        "recovery_end_command",
        "shared_preload_libraries",
        "session_preload_libraries",
        "local_preload_libraries",
        "dynamic_library_path",
        "jit_provider",
        "archive_library",
        "external_pid_file",
        "ssl_key_file",
        "log_directory",
        "standard_conforming_strings",
        "myext.some_command",
    ];
    let params: Vec<String> = refused
        .iter()
        .map(|p| format!("      {p}: \"/tmp/x\"\n"))
        .collect();
    let text = format!("{HEAD}  postgres:\n    parameters:\n{}", params.concat());
    let diags = errors(&text);
    for p in refused {
        let d = error_at(&diags, &format!("spec.postgres.parameters.{p}"));
        assert!(d.hint.as_deref().unwrap().starts_with("remove it"), "{d}");
    }
    assert_eq!(diags.len(), refused.len(), "{}", show(&diags));
}

/// postgresql.conf values keep quotes, backslashes and everything else exactly: read back by a
/// real postgres (`postgres -C`).
#[test]
fn postgresql_conf_values_are_read_back_exactly_by_postgres() {
    let postgres = support::require_tool("postgres");
    let values = [
        r"back\slash",
        r"trailing\",
        "it's",
        "''",
        "# not a comment",
        "${HOME} {{x}}",
        r#"quote " and \' both"#,
        "x = 'y'",
    ];
    let params: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let json = serde_json::Value::String(v.to_string()).to_string();
            format!("      bss.v{i}: {json}\n")
        })
        .collect();
    let text = format!(
        "{HEAD}  postgres:\n    replicas: 0\n    parameters:\n{}",
        params.concat()
    );
    let l = valid(&text);
    let b = render::render(&l.validated, &tera()).unwrap();
    let conf = &b.components["postgres-0"].files["postgresql.conf"];
    let dir = world_readable_tempdir("bssctl-pgconf-");
    let file = dir.path().join("postgresql.conf");
    std::fs::write(&file, conf).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (i, v) in values.iter().enumerate() {
        let out = as_postgres(&postgres)
            .arg(format!("--config-file={}", file.display()))
            .args(["-D"])
            .arg(dir.path())
            .args(["-C", &format!("bss.v{i}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "postgres -C failed: {out:?}\n{conf}");
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(got.strip_suffix('\n').unwrap_or(&got), *v, "{conf}");
    }
}

// ---------------------------------------------------------------------------------------------
// The state directory
// ---------------------------------------------------------------------------------------------

fn state_dir_errors(dir: &Path, name: &str, state_dir: &str) -> Vec<Diagnostic> {
    let file = dir.join("topology.yaml");
    let text = format!(
        "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {{name: {name}}}\nspec:\n  runtime:\n    stateDir: {state_dir}\n  redis: {{}}\n"
    );
    std::fs::write(&file, text).unwrap();
    let o = ValidateOptions::default();
    match topology::load(&file, &o) {
        Ok(_) => Vec::new(),
        Err(d) => d,
    }
}

#[test]
fn dangerous_state_dirs_are_refused_at_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let checkout = tmp.path().join("checkout");
    std::fs::create_dir(&checkout).unwrap();
    for (name, state_dir) in [
        ("etc", "/"),
        ("dev", "/"),
        ("bss", "/etc"),
        ("bss", "/usr/local"),
        ("bss", "/proc"),
        ("tmp", "/var"),
        ("checkout", ".."),
        ("x", "../../.."),
        ("bss", "\"state\\ndir\""),
        ("bss", "\"state dir\""),
        ("bss", "\"st'ate\""),
    ] {
        let diags = state_dir_errors(&checkout, name, state_dir);
        let at: Vec<_> = diags
            .iter()
            .filter(|d| d.path == "spec.runtime.stateDir")
            .collect();
        assert_eq!(at.len(), 1, "{name} in {state_dir}:\n{}", show(&diags));
        let loc = at[0].location.as_ref().expect("a location");
        assert_eq!((loc.line, loc.column), (6, 15), "{}", at[0]);
        assert!(loc.file.ends_with("topology.yaml"));
        assert!(at[0].hint.is_some());
    }
    // Directories of its own are fine, relative or absolute.
    for (name, state_dir) in [
        ("bss", ".bssctl"),
        ("bss", "/tmp/bssctl-x"),
        ("bss", "../state"),
    ] {
        let diags = state_dir_errors(&checkout, name, state_dir);
        assert!(diags.is_empty(), "{state_dir}: {}", show(&diags));
    }
}

#[test]
fn unix_socket_paths_longer_than_107_bytes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let long = format!("/tmp/{}", "d".repeat(80));
    let file = tmp.path().join("topology.yaml");
    std::fs::write(
        &file,
        format!(
            "{HEAD}  runtime: {{stateDir: {long}}}\n  postgres: {{replicas: 0}}\n  haproxy: {{}}\n"
        ),
    )
    .unwrap();
    let diags = topology::load(&file, &ValidateOptions::default()).unwrap_err();
    let d: Vec<_> = diags
        .iter()
        .filter(|d| d.message.contains("unix socket"))
        .collect();
    assert_eq!(d.len(), 1, "{}", show(&diags));
    assert_eq!(d[0].path, "spec.runtime.stateDir");
    assert!(d[0].message.contains("107"), "{}", d[0]);
    assert!(
        d[0].hint.as_deref().unwrap().contains("shorter"),
        "{}",
        d[0]
    );
    assert!(d[0].location.is_some());
    // 40 bytes shorter fits.
    let short = format!("/tmp/{}", "d".repeat(40));
    std::fs::write(
        &file,
        format!("{HEAD}  runtime: {{stateDir: {short}}}\n  postgres: {{replicas: 0}}\n  haproxy: {{}}\n"),
    )
    .unwrap();
    topology::load(&file, &ValidateOptions::default()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Secrets from the user
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_or_multi_line_secrets_from_env_or_file_are_refused_without_showing_them() {
    let tmp = tempfile::tempdir().unwrap();
    let var = format!("BSSCTL_TEST_SECRET_{}", std::process::id());
    let secret_file = tmp.path().join("redis-pass");
    let text = format!(
        "{HEAD}  secrets:\n    redis-password: {{fromEnv: {var}}}\n    backend-api-key: {{fromFile: {}}}\n  redis: {{}}\n  postgres: {{replicas: 0}}\n  backend: {{}}\n",
        secret_file.display()
    );
    let l = topology::load_str(&text, "t.yaml", &opts(&tmp.path().join("state"))).unwrap();
    let cases: [(&str, &[u8], &str); 5] = [
        ("", b"good-api-key-0123456789\n", "is empty"),
        (
            "pass\nrequirepass x",
            b"good-api-key-0123456789\n",
            "line break",
        ),
        ("  padded  ", b"good-api-key-0123456789\n", "blanks"),
        ("good-redis-password-0123", b"", "is empty"),
        ("good-redis-password-0123", b"abc\0def\n", "NUL"),
    ];
    for (env_value, file_value, expected) in cases {
        std::env::set_var(&var, env_value);
        std::fs::write(&secret_file, file_value).unwrap();
        let err = controller::state::ensure_secrets(&l.validated)
            .expect_err(expected)
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(err.starts_with("failed to get secret"), "{err}");
        for shown in [env_value, &String::from_utf8_lossy(file_value)] {
            let shown = shown.trim();
            if shown.len() > 3 && !shown.starts_with("good") {
                assert!(!err.contains(shown), "the value leaked: {err}");
            }
        }
    }
    // One trailing newline in a file is how files end: accepted, and not part of the value.
    std::env::set_var(&var, "good-redis-password-0123");
    std::fs::write(&secret_file, b"good-api-key-0123456789\n").unwrap();
    controller::state::ensure_secrets(&l.validated).unwrap();
    assert_eq!(
        controller::state::secret_value(&l.validated, "backend-api-key").unwrap(),
        "good-api-key-0123456789"
    );
    std::env::remove_var(&var);
}

// ---------------------------------------------------------------------------------------------
// Parser bounds
// ---------------------------------------------------------------------------------------------

/// A 72 KB document whose aliases expand to gigabytes.
fn alias_bomb() -> String {
    let mut s =
        String::from("apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: bomb}\n");
    s.push_str(&format!("big: &big \"{}\"\n", "x".repeat(60_000)));
    s.push_str("a: &a [*big, *big, *big, *big, *big, *big, *big, *big, *big, *big]\n");
    for i in 1..12u8 {
        let prev = (b'a' + i - 1) as char;
        let name = (b'a' + i) as char;
        let items = vec![format!("*{prev}"); 10].join(", ");
        s.push_str(&format!("{name}: &{name} [{items}]\n"));
    }
    while s.len() < 72 * 1024 {
        s.push_str("# padding to the size seen in review\n");
    }
    s
}

#[test]
fn a_72_kb_alias_bomb_fails_fast_under_a_256_mb_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bomb.yaml");
    let bomb = alias_bomb();
    assert!(bomb.len() >= 72 * 1024 && bomb.len() < 80 * 1024);
    std::fs::write(&file, &bomb).unwrap();
    let start = Instant::now();
    let out = Command::new("prlimit")
        .arg(format!("--as={}", 256u64 << 20))
        .arg(env!("CARGO_BIN_EXE_bssctl"))
        .arg("validate")
        .arg(&file)
        .output()
        .expect("prlimit (util-linux) runs bssctl under a memory limit");
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the document expands to more than"), "{err}");
    assert!(
        err.contains("bomb.yaml:6:"),
        "at the first alias that goes over: {err}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // The file-size bound, without reading the file.
    let huge = dir.path().join("huge.yaml");
    std::fs::write(&huge, "#".repeat(2 << 20)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bssctl"))
        .arg("validate")
        .arg(&huge)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than the 1048576"));
}

// ---------------------------------------------------------------------------------------------
// The property: hostile strings in every string field
// ---------------------------------------------------------------------------------------------

const HOSTILE: &[&str] = &[
    "\n", "\r", "\"", "'", "\\", "#", "${X}", "{{x}}", "\u{2028}", "\u{85}", "\0",
];

fn fixture() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile/every-string.yaml");
    let text = std::fs::read_to_string(p).unwrap();
    let parsed = topology::parse::parse_str(&text, "every-string.yaml").unwrap();
    serde_json::to_value(&parsed.topology).unwrap()
}

/// Every string leaf of the document, as (field path, JSON pointer).
fn string_fields(v: &serde_json::Value, path: &str, ptr: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::String(_) => out.push((path.to_string(), ptr.to_string())),
        serde_json::Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                string_fields(x, &format!("{path}[{i}]"), &format!("{ptr}/{i}"), out);
            }
        }
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let esc = k.replace('~', "~0").replace('/', "~1");
                string_fields(x, &p, &format!("{ptr}/{esc}"), out);
            }
        }
        _ => {}
    }
}

/// Every place of the schema that holds a string (enums included), as a pattern: `[]` for any
/// list index, `*` for any key of a free-form mapping.
fn schema_string_fields(
    root: &serde_json::Value,
    node: &serde_json::Value,
    path: &str,
    stack: &mut Vec<String>,
    out: &mut Vec<String>,
) {
    if let Some(r) = node.get("$ref").and_then(|r| r.as_str()) {
        let name = r.trim_start_matches("#/definitions/").to_string();
        // A recursive definition (child routes) is the same fields again: visit it once.
        if stack.contains(&name) {
            return;
        }
        stack.push(name.clone());
        schema_string_fields(root, &root["definitions"][&name], path, stack, out);
        stack.pop();
        return;
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for b in node
            .get(key)
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
        {
            schema_string_fields(root, b, path, stack, out);
        }
    }
    let types: Vec<&str> = match node.get("type") {
        Some(serde_json::Value::String(t)) => vec![t.as_str()],
        Some(serde_json::Value::Array(ts)) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ => vec![],
    };
    let is_enum_of_strings = node
        .get("enum")
        .and_then(|e| e.as_array())
        .is_some_and(|e| e.iter().all(|v| v.is_string()));
    if (types.contains(&"string") || is_enum_of_strings) && !out.iter().any(|p| p == path) {
        out.push(path.to_string());
    }
    if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            schema_string_fields(root, v, &p, stack, out);
        }
    }
    if let Some(extra) = node.get("additionalProperties").filter(|a| a.is_object()) {
        schema_string_fields(root, extra, &format!("{path}.*"), stack, out);
    }
    if let Some(items) = node.get("items") {
        schema_string_fields(root, items, &format!("{path}[]"), stack, out);
    }
}

/// Whether a concrete field path matches a schema pattern.
fn matches_pattern(pattern: &str, path: &str) -> bool {
    let norm = |p: &str| -> Vec<String> {
        let mut segs = Vec::new();
        for part in p.split('.') {
            let name_end = part.find('[').unwrap_or(part.len());
            segs.push(part[..name_end].to_string());
            let mut rest = &part[name_end..];
            while let Some(close) = rest.find(']') {
                segs.push("[]".to_string());
                rest = &rest[close + 1..];
            }
        }
        segs
    };
    let (ps, xs) = (norm(pattern), norm(path));
    // A free-form key may itself contain dots (`bss.note`): `*` then swallows the rest.
    let mut i = 0;
    for (j, p) in ps.iter().enumerate() {
        if p == "*" && j + 1 == ps.len() {
            return i < xs.len();
        }
        if p == "*" && i < xs.len() {
            i += 1;
            continue;
        }
        if xs.get(i) != Some(p) {
            return false;
        }
        i += 1;
    }
    i == xs.len()
}

/// Reads the strings a file holds, the way its consumer reads them.
fn read_back(file: &str, content: &str) -> Vec<String> {
    let mut out = Vec::new();
    if file.ends_with(".yml") || file.ends_with(".yaml") {
        fn walk(v: &serde_yaml::Value, out: &mut Vec<String>) {
            match v {
                serde_yaml::Value::String(s) => out.push(s.clone()),
                serde_yaml::Value::Sequence(xs) => xs.iter().for_each(|x| walk(x, out)),
                serde_yaml::Value::Mapping(m) => {
                    for (k, x) in m {
                        walk(k, out);
                        walk(x, out);
                    }
                }
                serde_yaml::Value::Tagged(t) => walk(&t.value, out),
                _ => {}
            }
        }
        let v: serde_yaml::Value = serde_yaml::from_str(content)
            .unwrap_or_else(|e| panic!("{file} is not YAML any more: {e}\n{content}"));
        walk(&v, &mut out);
    } else if file == "postgresql.conf" {
        for line in content.lines() {
            if let Some((_, v)) = line.split_once(" = ") {
                out.push(pg_conf_value(v));
            }
        }
    } else if file.ends_with(".env") {
        out.extend(
            controller::runtime::local::parse_env_file(content)
                .into_iter()
                .map(|(_, v)| v),
        );
    } else {
        // haproxy.cfg, redis.conf, pg_hba.conf: words up to a comment.
        for line in content.lines() {
            let line = line.split('#').next().unwrap_or("");
            out.extend(line.split_whitespace().map(String::from));
        }
    }
    out
}

/// The postgresql.conf lexer's reading of a quoted value (`''` and backslash escapes).
fn pg_conf_value(v: &str) -> String {
    let Some(inner) = v
        .trim()
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
    else {
        return v.trim().to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(x) => out.push(x),
                None => {}
            },
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    out
}

/// Every file's strings as its consumer reads them.
fn strings_of(b: &render::Bundle) -> Vec<String> {
    let mut all = Vec::new();
    for c in b.components.values() {
        for (f, content) in &c.files {
            let name = f.rsplit('/').next().unwrap_or(f);
            all.extend(read_back(name, content));
        }
    }
    all
}

fn yaml_text(v: &serde_json::Value) -> String {
    serde_yaml::to_string(v).unwrap()
}

/// The value a field gets: the hostile string appended to what the fixture has. A PromQL
/// expression is a language of its own that `bssctl check` (promtool) judges, not validate: there
/// a printable hostile string goes inside the expression's quoted label value, escaped as PromQL
/// escapes (`\\`, `\"`), which is how a user writes such text in an expression. Line breaks and
/// control characters are appended raw everywhere.
fn mutate(path: &str, v0: &str, h: &str) -> String {
    let breaking = h.chars().any(controller::topology::syntax::is_breaking);
    if path.ends_with(".expr") && !breaking {
        if let Some(close) = v0.rfind("\"}") {
            let esc = h.replace('\\', "\\\\").replace('"', "\\\"");
            return format!("{}{esc}{}", &v0[..close], &v0[close..]);
        }
    }
    format!("{v0}{h}")
}

/// Whether `h` must be refused at `path`: line breaks and control characters, except the plain
/// newline of the two multi-line fields (PromQL expressions and alert descriptions).
fn must_refuse(path: &str, h: &str) -> bool {
    let multi_line = path.starts_with("spec.alerts.rules[")
        && (path.ends_with(".expr") || path.ends_with(".description"));
    h.chars()
        .any(|c| controller::topology::syntax::is_breaking(c) && !(multi_line && c == '\n'))
}

fn set(doc: &serde_json::Value, ptr: &str, value: &str) -> serde_json::Value {
    let mut d = doc.clone();
    *d.pointer_mut(ptr).unwrap() = serde_json::Value::String(value.to_string());
    d
}

#[test]
fn hostile_strings_in_every_string_field_are_refused_or_read_back_exactly() {
    let started = Instant::now();
    let base = fixture();
    let mut fields = Vec::new();
    string_fields(&base, "", "", &mut fields);
    // The fixture reaches every string field of the schema.
    let schema: serde_json::Value = serde_json::from_str(&controller::crd::schema_json()).unwrap();
    let mut wanted = Vec::new();
    schema_string_fields(&schema, &schema, "", &mut Vec::new(), &mut wanted);
    assert!(wanted.len() > 60, "{wanted:?}");
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !fields.iter().any(|(p, _)| matches_pattern(w, p)))
        .collect();
    assert!(
        missing.is_empty(),
        "tests/fixtures/hostile/every-string.yaml lacks these string fields: {missing:?}"
    );
    let state = Path::new("/var/tmp/bssctl-hostile");
    let o = ValidateOptions {
        base_dir: PathBuf::from("/srv/checkout"),
        state_dir: Some(state.to_path_buf()),
        runtime: None,
    };
    let tera = tera();
    let baseline = topology::load_str(&yaml_text(&base), "t.yaml", &o).unwrap();
    render::render(&baseline.validated, &tera).unwrap();

    let (mut refused, mut accepted) = (0, 0);
    let mut per_field_reaches: BTreeMap<String, bool> = BTreeMap::new();
    // Accepted variants per hostile string, for the real tools.
    let mut by_hostile: BTreeMap<&str, Vec<(String, String, String)>> = BTreeMap::new();
    for (path, ptr) in &fields {
        let v0 = base
            .pointer(ptr)
            .and_then(|v| v.as_str())
            .unwrap()
            .to_string();
        // Does the field reach a rendered file (as its consumer reads it)? Seen with an innocent
        // suffix, so common words that appear anyway do not count.
        let innocent = format!("{v0}zq9");
        let reaches = topology::load_str(&yaml_text(&set(&base, ptr, &innocent)), "t.yaml", &o)
            .ok()
            .and_then(|l| render::render(&l.validated, &tera).ok())
            .is_some_and(|b| strings_of(&b).iter().any(|s| s.contains(&innocent)));
        per_field_reaches.insert(ptr.clone(), reaches);
        for h in HOSTILE {
            let value = mutate(path, &v0, h);
            let doc = set(&base, ptr, &value);
            match topology::load_str(&yaml_text(&doc), "t.yaml", &o) {
                Err(diags) => {
                    refused += 1;
                    let errs: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
                    assert!(!errs.is_empty());
                    for d in &errs {
                        assert!(d.location.is_some(), "{path} = {value:?}: no location: {d}");
                    }
                    if must_refuse(path, h) {
                        assert!(
                            errs.iter().any(|d| d.path == *path),
                            "{path} = {value:?}: refused, but not at the field:\n{}",
                            show(&diags)
                        );
                    }
                }
                Ok(l) => {
                    accepted += 1;
                    assert!(!must_refuse(path, h), "{path} accepted {value:?}");
                    let b = render::render(&l.validated, &tera)
                        .unwrap_or_else(|e| panic!("{path} = {value:?}: {e}"));
                    if reaches {
                        let back = strings_of(&b);
                        assert!(
                            back.iter().any(|s| s.contains(&value)),
                            "{path} = {value:?} is not read back from any rendered file"
                        );
                    }
                    by_hostile
                        .entry(*h)
                        .or_default()
                        .push((path.clone(), ptr.clone(), value));
                }
            }
        }
    }
    assert!(
        refused > 0 && accepted > 0,
        "refused {refused}, accepted {accepted}"
    );
    let judged = Instant::now();

    // The real tools judge the accepted values. Each field gets every hostile string it accepted
    // at once (appended together; one at a time if the combination does not validate), and as
    // many fields as validate together share one topology, checked by every tool at once.
    for tool in [
        "envoy",
        "haproxy",
        "promtool",
        "amtool",
        "postgres",
        "redis-server",
    ] {
        support::require_tool(tool);
    }
    let mut per_field: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for (h, variants) in &by_hostile {
        for (path, ptr, _) in variants {
            per_field
                .entry((path.clone(), ptr.clone()))
                .or_default()
                .push(h);
        }
    }
    // (field path, pointer, value, what it holds)
    let mut candidates: Vec<(String, String, String, String)> = Vec::new();
    for ((path, ptr), hs) in &per_field {
        let v0 = base.pointer(ptr).and_then(|v| v.as_str()).unwrap();
        let all = hs.iter().fold(v0.to_string(), |v, h| mutate(path, &v, h));
        if topology::load_str(&yaml_text(&set(&base, ptr, &all)), "t.yaml", &o).is_ok() {
            candidates.push((path.clone(), ptr.clone(), all, format!("{:?}", hs.concat())));
        } else {
            for h in hs {
                candidates.push((
                    path.clone(),
                    ptr.clone(),
                    mutate(path, v0, h),
                    format!("{h:?}"),
                ));
            }
        }
    }
    let mut checked = 0;
    let mut refusals = Vec::new();
    let mut pending: Vec<&(String, String, String, String)> = candidates.iter().collect();
    while !pending.is_empty() {
        let mut doc = base.clone();
        let mut taken: Vec<&(String, String, String, String)> = Vec::new();
        let mut rest = Vec::new();
        for v in pending {
            if taken.iter().any(|t| t.1 == v.1) {
                rest.push(v);
                continue;
            }
            let trial = set(&doc, &v.1, &v.2);
            if topology::load_str(&yaml_text(&trial), "t.yaml", &o).is_ok() {
                doc = trial;
                taken.push(v);
            } else {
                rest.push(v);
            }
        }
        assert!(!taken.is_empty());
        let scratch = tempfile::Builder::new()
            .prefix("bssctl-hostile-")
            .tempdir()
            .unwrap();
        let mut so = o.clone();
        so.state_dir = Some(scratch.path().to_path_buf());
        let l = topology::load_str(&yaml_text(&doc), "t.yaml", &so).unwrap();
        let b = render::render(&l.validated, &tera).unwrap();
        let back = strings_of(&b);
        for t in &taken {
            let reaches = per_field_reaches.get(&t.1).copied().unwrap_or(false);
            assert!(
                !reaches || back.iter().any(|s| s.contains(&t.2)),
                "{} = {:?} is not read back from any rendered file",
                t.0,
                t.2
            );
        }
        let results = controller::check::check(&l.validated, &b);
        let failed: Vec<_> = results.iter().filter(|r| !r.ok).collect();
        if !failed.is_empty() {
            refusals.push(format!(
                "{:?}: the real tools refuse the rendered files:\n{}",
                taken
                    .iter()
                    .map(|t| format!("{} with {}", t.0, t.3))
                    .collect::<Vec<_>>(),
                failed
                    .iter()
                    .map(|r| format!("{} {} ({}):\n{}", r.component, r.file, r.tool, r.output))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        checked += 1;
        pending = rest;
    }
    assert!(refusals.is_empty(), "{}", refusals.join("\n\n"));
    eprintln!(
        "{} fields x {} hostile strings: {refused} refused, {accepted} accepted ({:.1}s), {checked} real-tool checks ({:.1}s)",
        fields.len(),
        HOSTILE.len(),
        (judged - started).as_secs_f64(),
        judged.elapsed().as_secs_f64()
    );
}
