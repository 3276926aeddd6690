//! Parse errors as a user sees them: every problem at once, each at the `line:column` an editor
//! shows, with the field path and a hint.
//!
//! Expected positions are computed from the fixture text (by finding the offending token), never
//! copied from the parser's output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use controller::diag::Diagnostic;
use controller::topology::parse;

const VALID: &str = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata:
  name: demo
spec:
  postgres: {replicas: 2}
  haproxy: {}
  envoy:
    listeners:
      - name: ingress
        port: 15006
        routes: [{prefix: /api/, cluster: backend}]
";

fn fixture(name: &str) -> (String, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/invalid")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    (path.display().to_string(), text)
}

/// 1-based line and column (in characters) of the `nth` occurrence of `needle` in `text`.
fn find_nth(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let (offset, _) = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("`{needle}` (occurrence {nth}) not in the text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Position of the only occurrence of `needle`.
fn find(text: &str, needle: &str) -> (usize, usize) {
    assert_eq!(
        text.matches(needle).count(),
        1,
        "`{needle}` must occur exactly once in the text"
    );
    find_nth(text, needle, 0)
}

fn errors(src: &str) -> Vec<Diagnostic> {
    match parse::parse_str(src, "topology.yaml") {
        Ok(_) => panic!("expected errors for:\n{src}"),
        Err(diags) => {
            assert!(!diags.is_empty());
            diags
        }
    }
}

fn at(d: &Diagnostic) -> (usize, usize) {
    let l = d
        .location
        .as_ref()
        .unwrap_or_else(|| panic!("no location: {d}"));
    (l.line, l.column)
}

/// The single diagnostic with this path; fails listing all of them otherwise.
fn by_path<'a>(diags: &'a [Diagnostic], path: &str) -> &'a Diagnostic {
    let found: Vec<_> = diags.iter().filter(|d| d.path == path).collect();
    assert_eq!(
        found.len(),
        1,
        "want one diagnostic at `{path}`, got:\n{}",
        render(diags)
    );
    found[0]
}

fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn hint(d: &Diagnostic) -> &str {
    let h = d.hint.as_deref().unwrap_or_default();
    assert!(!h.trim().is_empty(), "no hint: {d}");
    h
}

#[test]
fn valid_minimal_document_parses_with_positions_for_every_node() {
    let parsed = parse::parse_str(VALID, "topology.yaml").unwrap();
    assert_eq!(parsed.topology.metadata.name, "demo");
    let envoy = parsed.topology.spec.envoy.as_ref().unwrap();
    assert_eq!(envoy.listeners[0].port, 15006);
    assert_eq!(parsed.value["spec"]["postgres"]["replicas"], 2);

    let src = &parsed.source;
    assert_eq!(src.value.get(""), Some(&find(VALID, "apiVersion")));
    assert_eq!(src.key.get("apiVersion"), Some(&find(VALID, "apiVersion")));
    assert_eq!(src.value.get("apiVersion"), Some(&find(VALID, "bssctl.io")));
    assert_eq!(
        src.value.get("spec.postgres"),
        Some(&find(VALID, "{replicas"))
    );
    assert_eq!(
        src.value.get("spec.postgres.replicas"),
        Some(&find(VALID, "2}"))
    );
    assert_eq!(src.value.get("spec.haproxy"), Some(&find(VALID, "{}")));
    assert_eq!(src.value.get("spec.envoy"), Some(&find(VALID, "listeners")));
    assert_eq!(
        src.value.get("spec.envoy.listeners[0]"),
        Some(&find(VALID, "name: ingress"))
    );
    assert_eq!(
        src.key.get("spec.envoy.listeners[0].port"),
        Some(&find(VALID, "port"))
    );
    assert_eq!(
        src.value.get("spec.envoy.listeners[0].port"),
        Some(&find(VALID, "15006"))
    );
    assert_eq!(
        src.value.get("spec.envoy.listeners[0].routes[0].cluster"),
        Some(&find(VALID, "backend"))
    );
    let loc = src
        .locate("spec.envoy.listeners[0].routes[0].prefix")
        .unwrap();
    assert_eq!((loc.line, loc.column), find(VALID, "/api/"));
    assert_eq!(loc.file, "topology.yaml");

    // Every node of the JSON value has a position.
    fn walk(v: &serde_json::Value, path: String, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    walk(v, controller::diag::join(&path, k), out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, controller::diag::index(&path, i), out);
                }
            }
            _ => {}
        }
        out.push(path);
    }
    let mut paths = Vec::new();
    walk(&parsed.value, String::new(), &mut paths);
    for p in &paths {
        assert!(src.value.contains_key(p), "no position for `{p}`");
    }
    assert_eq!(src.value.len(), paths.len());
}

#[test]
fn positions_match_what_an_editor_shows() {
    let src = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata:
  name: demo
spec:
  haproxy:
  redis: {}
  envoy:
    listeners:
    - name: ingress
      port: 15006
  kafka:
    topics:
      -
        name: orders
";
    let parsed = parse::parse_str(src, "topology.yaml").unwrap();
    let v = |p: &str| parsed.source.value.get(p).copied();
    // An absent value is placed at its key, not at the next token.
    assert_eq!(v("spec.haproxy"), Some(find(src, "haproxy")));
    // A block mapping starts at its first key; a list at its first `-`.
    assert_eq!(v("spec"), Some(find(src, "haproxy")));
    assert_eq!(v("spec.envoy.listeners"), Some(find(src, "- name")));
    assert_eq!(
        v("spec.envoy.listeners[0]"),
        Some(find(src, "name: ingress"))
    );
    assert_eq!(v("spec.kafka.topics"), Some(find(src, "-\n")));
    assert_eq!(v("spec.kafka.topics[0]"), Some(find(src, "name: orders")));
    assert_eq!(v("spec.kafka.topics[0].name"), Some(find(src, "orders")));
}

#[test]
fn five_mistakes_are_all_reported_with_positions_paths_and_hints() {
    let (file, text) = fixture("five-mistakes.yaml");
    let diags = parse::parse_file(Path::new(&file)).unwrap_err();
    assert_eq!(diags.len(), 5, "{}", render(&diags));
    for d in &diags {
        assert_eq!(d.location.as_ref().unwrap().file, file);
        hint(d);
    }

    // 1. A typo in a field name: at the key, with a did-you-mean.
    let d = by_path(&diags, "spec.postgres.replcas");
    assert_eq!(at(d), find(&text, "replcas"));
    assert!(d.message.contains("unknown field"), "{d}");
    assert!(hint(d).contains("`replicas`"), "{d}");

    // 2. A word where a port number goes.
    let d = by_path(&diags, "spec.postgres.port");
    assert_eq!(at(d), find(&text, "fivefourthreetwo"));
    assert!(
        d.message
            .contains("expected an integer, found a string `fivefourthreetwo`"),
        "{d}"
    );

    // 3. A port above 65535.
    let d = by_path(&diags, "spec.haproxy.readPort");
    assert_eq!(at(d), find(&text, "70000"));
    assert!(d.message.contains("out of range"), "{d}");
    assert!(hint(d).contains("65535"), "{d}");

    // 4. An enum value that does not exist.
    let d = by_path(&diags, "spec.haproxy.balance");
    assert_eq!(at(d), find(&text, "roundrobn"));
    assert!(d.message.contains("`roundrobn`"), "{d}");
    assert!(hint(d).contains("did you mean `roundrobin`?"), "{d}");
    assert!(hint(d).contains("leastconn"), "{d}");

    // 5. A listener without its port: at the listener (the mapping that misses it).
    let d = by_path(&diags, "spec.envoy.listeners[0].port");
    assert_eq!(at(d), find(&text, "name: ingress"));
    assert!(d.message.contains("missing required field `port`"), "{d}");
    assert!(hint(d).contains("port"), "{d}");

    // Sorted top-down.
    let positions: Vec<_> = diags.iter().map(at).collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
}

#[test]
fn syntax_error_is_reported_at_its_position() {
    let src = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata:
  name: demo
spec:
  postgres:
    port: 5432
   replicas: 2
";
    let diags = errors(src);
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    let d = &diags[0];
    assert!(d.message.starts_with("invalid YAML"), "{d}");
    let (line, _) = find(src, "replicas");
    assert_eq!(at(d).0, line, "{d}");
    hint(d);
}

#[test]
fn unclosed_flow_mapping_is_a_syntax_error() {
    let src = "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: demo\n";
    let d = &errors(src)[0];
    assert!(d.message.starts_with("invalid YAML"), "{d}");
    assert!(d.location.is_some());
    hint(d);
}

#[test]
fn tab_indentation_gets_a_tab_hint() {
    let src = "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata:\n\tname: demo\n";
    let d = &errors(src)[0];
    assert!(d.message.starts_with("invalid YAML"), "{d}");
    assert!(hint(d).contains("tab"), "{d}");
}

#[test]
fn duplicate_key_is_reported_at_the_second_key() {
    let src = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata:
  name: demo
spec:
  redis:
    port: 6379
    port: 6380
";
    let diags = errors(src);
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    let d = by_path(&diags, "spec.redis.port");
    assert_eq!(at(d), find_nth(src, "port", 1));
    assert!(d.message.contains("duplicate key `port`"), "{d}");
    let (line, col) = find_nth(src, "port", 0);
    assert!(
        hint(d).contains(&format!("line {line}, column {col}")),
        "{d}"
    );
}

#[test]
fn yaml_level_and_schema_problems_are_reported_together() {
    let src = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata:
  name: demo
  name: again
  labelz: {}
spec:
  <<: {redis: {}}
  1: x
";
    let diags = errors(src);
    assert_eq!(diags.len(), 4, "{}", render(&diags));
    assert_eq!(
        at(by_path(&diags, "metadata.name")),
        find(src, "name: again")
    );
    let d = by_path(&diags, "metadata.labelz");
    assert_eq!(at(d), find(src, "labelz"));
    assert!(hint(d).contains("`labels`"), "{d}");
    let d = by_path(&diags, "spec.<<");
    assert_eq!(at(d), find(src, "<<"));
    assert!(d.message.contains("merge keys"), "{d}");
    assert!(d.message.contains("not supported"), "{d}");
    let d = by_path(&diags, "spec");
    assert_eq!(at(d), find(src, "1: x"));
    assert!(d.message.contains("must be strings"), "{d}");
}

#[test]
fn aliases_copy_the_anchored_node() {
    let src = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata:
  name: demo
spec:
  envoy:
    listeners:
      - name: ingress
        port: 15006
        routes: &routes
          - {prefix: /api/, cluster: backend}
      - name: internal
        port: 15007
        routes: *routes
";
    let parsed = parse::parse_str(src, "topology.yaml").unwrap();
    let envoy = parsed.topology.spec.envoy.unwrap();
    assert_eq!(envoy.listeners[1].routes, envoy.listeners[0].routes);
    assert_eq!(envoy.listeners[1].routes[0].cluster, "backend");
    // The alias node is where the alias is; its children are where they are written.
    assert_eq!(
        parsed.source.value.get("spec.envoy.listeners[1].routes"),
        Some(&find(src, "*routes"))
    );
    assert_eq!(
        parsed
            .source
            .value
            .get("spec.envoy.listeners[1].routes[0].cluster"),
        Some(&find(src, "backend"))
    );
}

#[test]
fn errors_inside_an_alias_copy_are_found() {
    let src = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata:
  name: demo
spec:
  postgres: &pg {port: 5432}
  redis: *pg
";
    // `port` is a redis field too: the copy is valid.
    let parsed = parse::parse_str(src, "topology.yaml").unwrap();
    assert_eq!(parsed.topology.spec.redis.unwrap().port, Some(5432));
    // `replicas` is not: reported under the alias' path, at the place it is written.
    let src2 = src.replace("{port: 5432}", "{port: 5432, replicas: 1}");
    let diags = errors(&src2);
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    let d = by_path(&diags, "spec.redis.replicas");
    assert!(d.message.contains("unknown field"), "{d}");
    assert_eq!(at(d), find(&src2, "replicas"));
}

#[test]
fn multiple_documents_are_rejected() {
    let src = format!("{VALID}---\n{VALID}");
    let diags = errors(&src);
    let d = diags
        .iter()
        .find(|d| d.message.contains("more than one YAML document"))
        .unwrap_or_else(|| panic!("{}", render(&diags)));
    assert_eq!(at(d), find(&src, "---"));
    hint(d);
}

#[test]
fn empty_file_is_an_empty_topology() {
    for src in ["", "\n\n", "# only a comment\n", "---\n", "~\n"] {
        let diags = errors(src);
        assert_eq!(diags.len(), 1, "{src:?}: {}", render(&diags));
        let d = &diags[0];
        assert!(d.message.contains("empty topology"), "{d}");
        assert!(hint(d).contains("apiVersion: bssctl.io/v1alpha1"), "{d}");
        assert!(hint(d).contains("kind: Topology"), "{d}");
        assert!(d.location.is_some());
    }
}

#[test]
fn wrong_api_version_and_kind() {
    let src = VALID
        .replace("bssctl.io/v1alpha1", "bssctl.io/v2")
        .replace("kind: Topology", "kind: Topolgy");
    let diags = errors(&src);
    assert_eq!(diags.len(), 2, "{}", render(&diags));
    let d = by_path(&diags, "apiVersion");
    assert_eq!(at(d), find(&src, "bssctl.io/v2"));
    assert!(d.message.contains("bssctl.io/v2"), "{d}");
    assert!(hint(d).contains("bssctl.io/v1alpha1"), "{d}");
    let d = by_path(&diags, "kind");
    assert_eq!(at(d), find(&src, "Topolgy"));
    assert!(hint(d).contains("kind: Topology"), "{d}");
}

#[test]
fn missing_root_fields_are_reported_at_the_root() {
    let src = "spec: {}\n";
    let diags = errors(src);
    for field in ["apiVersion", "kind", "metadata"] {
        let d = by_path(&diags, field);
        assert_eq!(at(d), (1, 1));
        assert!(hint(d).contains(field), "{d}");
    }
}

#[test]
fn wrong_types_explain_what_was_expected() {
    let src = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata:
  name: [a, b]
  labels: {team: 5}
spec:
  postgres: yes
  redis: {appendOnly: 'true'}
  alerts: {thresholds: {cpuBusyRatio: .inf}}
  envoy: {listeners: {name: x}}
  runtime: {kind: dockerr, portOffset: -1}
  kafka: {storage: disk}
";
    let diags = errors(src);
    let expect = [
        ("metadata.name", "[a, b]", "expected a string, found a list"),
        (
            "metadata.labels.team",
            "5}",
            "expected a string, found an integer `5`",
        ),
        (
            "spec.postgres",
            "yes",
            "expected a mapping, found a string `yes`",
        ),
        (
            "spec.redis.appendOnly",
            "'true'",
            "expected a boolean, found a string `true`",
        ),
        ("spec.alerts.thresholds.cpuBusyRatio", ".inf", "infinite"),
        (
            "spec.envoy.listeners",
            "{name: x}",
            "expected a list, found a mapping",
        ),
        (
            "spec.runtime.kind",
            "dockerr",
            "`dockerr` is not an allowed value",
        ),
        ("spec.runtime.portOffset", "-1", "out of range"),
        (
            "spec.kafka.storage",
            "disk",
            "`disk` is not an allowed value",
        ),
    ];
    assert_eq!(diags.len(), expect.len(), "{}", render(&diags));
    for (path, token, message) in expect {
        let d = by_path(&diags, path);
        assert_eq!(at(d), find(src, token), "{d}");
        assert!(d.message.contains(message), "{d}");
        hint(d);
    }
    assert!(hint(by_path(&diags, "spec.runtime.kind")).contains("did you mean `docker`?"));
    let storage = hint(by_path(&diags, "spec.kafka.storage"));
    assert!(
        storage.contains("memory") && storage.contains("s3"),
        "{storage}"
    );
}

#[test]
fn scalar_values_follow_the_yaml_1_2_core_schema() {
    let src = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata:
  name: demo
spec:
  postgres:
    port: 0x1538
    replicas: 0o2
    parameters:
      shared_buffers: 256MB
      fsync: on
      synchronous_commit: false
      max_connections: 200
      random_page_cost: 1.1
      quoted: '42'
";
    let parsed = parse::parse_str(src, "topology.yaml").unwrap();
    let pg = parsed.topology.spec.postgres.unwrap();
    assert_eq!(pg.port, Some(0x1538));
    assert_eq!(pg.replicas, Some(2));
    let p = |k: &str| parsed.value["spec"]["postgres"]["parameters"][k].clone();
    assert_eq!(p("shared_buffers"), "256MB");
    assert_eq!(p("fsync"), "on");
    assert_eq!(p("synchronous_commit"), false);
    assert_eq!(p("max_connections"), 200);
    assert_eq!(p("random_page_cost"), 1.1);
    assert_eq!(p("quoted"), "42");
}

#[test]
fn missing_file_is_one_diagnostic_with_a_hint() {
    let diags = parse::parse_file(Path::new("/nonexistent/topology.yaml")).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert!(
        diags[0].message.starts_with("failed to read"),
        "{}",
        diags[0]
    );
    hint(&diags[0]);
}

#[test]
fn deep_nesting_and_alias_bombs_are_refused() {
    let deep = format!("a: {}{}", "[".repeat(150), "]".repeat(150));
    assert!(!errors(&deep).is_empty());
    let deep_block: String = (0..300)
        .map(|i| format!("{}- \n", "  ".repeat(i)))
        .collect();
    assert!(!errors(&deep_block).is_empty());

    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let prev = (b'a' + i - 1) as char;
        let name = (b'a' + i) as char;
        bomb.push_str(&format!("{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let diags = errors(&bomb);
    assert!(
        diags.iter().any(|d| d.message.contains("more than")),
        "{}",
        render(&diags)
    );
}

#[test]
fn crlf_and_non_ascii_text_keep_editor_columns() {
    let src = VALID
        .replace(
            "name: demo",
            "name: demo\n  labels: {owner: \"Zoë Ünal\", team: 5}",
        )
        .replace('\n', "\r\n");
    let diags = errors(&src);
    assert_eq!(diags.len(), 1, "{}", render(&diags));
    let d = by_path(&diags, "metadata.labels.team");
    assert_eq!(at(d), find(&src, "5}"));
}

/// The sample topology and the valid fixtures parse, and read the same as serde_yaml reads them
/// (the core-schema scalar resolution agrees).
#[test]
fn valid_topologies_parse_like_serde_yaml() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("../topology.yaml")];
    if let Ok(dir) = std::fs::read_dir(root.join("tests/fixtures/valid")) {
        files.extend(dir.map(|e| e.unwrap().path()));
    }
    for f in files.iter().filter(|f| f.exists()) {
        let parsed =
            parse::parse_file(f).unwrap_or_else(|d| panic!("{}:\n{}", f.display(), render(&d)));
        let text = std::fs::read_to_string(f).unwrap();
        let expected: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(parsed.value, expected, "{}", f.display());
    }
}
