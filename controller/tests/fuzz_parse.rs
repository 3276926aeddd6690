//! Property tests: whatever text arrives, `parse_str` answers with a topology or with located
//! diagnostics, never a panic; and what it accepts, `validate` can take.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use controller::diag::Diagnostic;
use controller::topology::parse::{self, Parsed};
use controller::topology::validate::{self, ValidateOptions};
use proptest::prelude::*;
use serde_yaml::{Mapping, Value as Yaml};

const VALID: &str = "\
apiVersion: bssctl.io/v1alpha1
kind: Topology
metadata:
  name: demo
spec:
  postgres: {replicas: 2}
  haproxy: {}
  backend: {}
  envoy:
    listeners:
      - name: ingress
        port: 15006
        routes: [{prefix: /api/, cluster: backend}]
";

/// Field names of the schema (and a merge key), so that generated documents reach deep into it.
const FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "spec",
    "runtime",
    "portOffset",
    "images",
    "secrets",
    "fromEnv",
    "postgres",
    "port",
    "replicas",
    "members",
    "index",
    "priority",
    "parameters",
    "replication",
    "mode",
    "syncCount",
    "haproxy",
    "balance",
    "readPort",
    "check",
    "envoy",
    "listeners",
    "routes",
    "prefix",
    "cluster",
    "clusters",
    "endpoints",
    "redis",
    "kafka",
    "storage",
    "topics",
    "alerts",
    "thresholds",
    "cpuBusyRatio",
    "alertmanager",
    "receivers",
    "route",
    "continue",
    "exporters",
    "backend",
    "streamProcessors",
    "enabled",
    "<<",
];

/// `cases` per property, unless `PROPTEST_CASES` asks for a longer run.
fn config(cases: u32) -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            cases
        },
        // Shrunk failures are printed; no regression files are written into the source tree.
        failure_persistence: None,
        ..default
    }
}

/// The contract: Ok, or at least one diagnostic, every one of them placed in the file; and an
/// accepted topology goes through `validate` without a panic.
fn check(src: &str) -> Result<(), TestCaseError> {
    match parse::parse_str(src, "fuzz.yaml") {
        Ok(parsed) => {
            check_source_map(&parsed)?;
            let _ = validate::validate(
                &parsed.topology,
                &parsed.source,
                &ValidateOptions::default(),
            );
        }
        Err(diags) => {
            prop_assert!(!diags.is_empty(), "Err without diagnostics for {src:?}");
            for d in &diags {
                check_diagnostic(d, src)?;
            }
        }
    }
    Ok(())
}

fn check_diagnostic(d: &Diagnostic, src: &str) -> Result<(), TestCaseError> {
    let loc = d.location.as_ref();
    prop_assert!(loc.is_some(), "no location: {d} for {src:?}");
    let loc = loc.unwrap();
    prop_assert_eq!(&loc.file, "fuzz.yaml");
    prop_assert!(loc.line >= 1 && loc.column >= 1, "not 1-based: {d}");
    prop_assert!(!d.message.is_empty());
    prop_assert!(
        d.hint.as_deref().is_some_and(|h| !h.is_empty()),
        "no hint: {d}"
    );
    Ok(())
}

/// Every node of the accepted document has a position.
fn check_source_map(parsed: &Parsed) -> Result<(), TestCaseError> {
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
    for p in paths {
        prop_assert!(
            parsed.source.value.contains_key(&p),
            "no position for `{}`",
            p
        );
    }
    Ok(())
}

/// Bytes that matter to YAML, to make mutations hit the syntax rather than only the words.
fn interesting() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(":".to_string()),
        Just("-".to_string()),
        Just(" ".to_string()),
        Just("  ".to_string()),
        Just("\n".to_string()),
        Just("\t".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just("#".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("? ".to_string()),
        Just("|".to_string()),
        Just(">".to_string()),
        Just("!!str ".to_string()),
        Just("!x ".to_string()),
        Just("<<: ".to_string()),
        Just("\n---\n".to_string()),
        Just("...".to_string()),
        Just("%YAML 1.2\n".to_string()),
        Just("\r".to_string()),
        Just("\u{feff}".to_string()),
        Just("é".to_string()),
        any::<char>().prop_map(String::from),
        "[a-zA-Z0-9_.~]{1,8}",
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..8).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), interesting()).prop_map(|(at, s)| Edit::Insert(at, s)),
        (any::<usize>(), interesting()).prop_map(|(at, s)| Edit::Replace(at, s)),
    ]
}

/// Applies edits to the bytes of `base`; invalid UTF-8 is replaced, as a reader of bytes would.
fn mutate(base: &str, edits: &[Edit]) -> String {
    let mut bytes = base.as_bytes().to_vec();
    for e in edits {
        let len = bytes.len();
        match e {
            Edit::Delete(at, n) if len > 0 => {
                let at = at % len;
                let end = (at + n).min(len);
                bytes.drain(at..end);
            }
            Edit::Insert(at, s) => {
                let at = at % (len + 1);
                bytes.splice(at..at, s.bytes());
            }
            Edit::Replace(at, s) if len > 0 => {
                let at = at % len;
                bytes.splice(at..at + 1, s.bytes());
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(FIELDS).prop_map(str::to_string),
        1 => "[a-zA-Z][a-zA-Z0-9_.-]{0,10}",
        1 => any::<String>(),
    ]
}

fn scalar() -> impl Strategy<Value = Yaml> {
    prop_oneof![
        Just(Yaml::Null),
        any::<bool>().prop_map(Yaml::Bool),
        any::<i64>().prop_map(Yaml::from),
        any::<u64>().prop_map(Yaml::from),
        (0u32..70_000).prop_map(Yaml::from),
        any::<f64>().prop_map(Yaml::from),
        prop_oneof![
            Just("bssctl.io/v1alpha1"),
            Just("Topology"),
            Just("docker"),
            Just("sync"),
            Just("roundrobin"),
            Just("memory"),
            Just("yes"),
            Just("0x1F"),
            Just("~"),
            Just(""),
            Just("15006"),
            Just("/api/"),
        ]
        .prop_map(|s| Yaml::String(s.to_string())),
        any::<String>().prop_map(Yaml::String),
    ]
}

fn yaml_value() -> impl Strategy<Value = Yaml> {
    scalar().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Yaml::Sequence),
            proptest::collection::vec((key(), inner), 0..6).prop_map(|entries| {
                let mut m = Mapping::new();
                for (k, v) in entries {
                    m.insert(Yaml::String(k), v);
                }
                Yaml::Mapping(m)
            }),
        ]
    })
}

/// A document with a valid head and a random spec, so that the walk reaches into the spec.
fn topology_shaped() -> impl Strategy<Value = Yaml> {
    yaml_value().prop_map(|spec| {
        let mut metadata = Mapping::new();
        metadata.insert("name".into(), "demo".into());
        let mut root = Mapping::new();
        root.insert("apiVersion".into(), "bssctl.io/v1alpha1".into());
        root.insert("kind".into(), "Topology".into());
        root.insert("metadata".into(), Yaml::Mapping(metadata));
        root.insert("spec".into(), spec);
        Yaml::Mapping(root)
    })
}

#[test]
fn the_base_document_parses_and_validates() {
    let parsed = parse::parse_str(VALID, "fuzz.yaml").unwrap();
    check_source_map(&parsed).unwrap();
    let validated = validate::validate(
        &parsed.topology,
        &parsed.source,
        &ValidateOptions::default(),
    );
    assert!(validated.is_ok(), "{:?}", validated.err());
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_text_never_panics(src in any::<String>()) {
        check(&src)?;
    }

    #[test]
    fn yaml_looking_text_never_panics(
        parts in proptest::collection::vec(prop_oneof![interesting(), key().prop_map(|k| k + ": ")], 0..40)
    ) {
        check(&parts.concat())?;
    }

    #[test]
    fn mutated_valid_topology_never_panics(edits in proptest::collection::vec(edit(), 1..6)) {
        check(&mutate(VALID, &edits))?;
    }
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn generated_yaml_documents_never_panic(
        doc in prop_oneof![yaml_value(), topology_shaped()]
    ) {
        let text = serde_yaml::to_string(&doc).unwrap();
        check(&text)?;
        // What serde_yaml writes is YAML: a syntax error here would be ours.
        if let Err(diags) = parse::parse_str(&text, "fuzz.yaml") {
            for d in &diags {
                prop_assert!(!d.message.starts_with("invalid YAML"), "{d}\n--- text:\n{text}");
            }
        }
    }
}
