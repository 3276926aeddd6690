//! Rendering: `ValidatedTopology` -> `Bundle` (every config file of every component), from the tera
//! templates in `templates/` (embedded at build time; `--templates DIR` overrides).
//!
//! Pure and deterministic: the same topology gives byte-identical files. Secret values are never
//! rendered; files refer to secret files or to environment variables the runtime fills in.

use std::collections::BTreeMap;
use std::path::Path;

use include_dir::{include_dir, Dir};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::topology::model::{PgMember, Role, ValidatedTopology};

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../templates");

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("failed to load templates from {dir}: {source}")]
    LoadTemplates { dir: String, source: tera::Error },
    #[error("failed to render {component}/{file} from template {template}: {detail}")]
    Render {
        component: String,
        file: String,
        template: String,
        detail: String,
    },
}

/// What kind of thing a component is; decides how it is started, probed and reloaded.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize, Hash,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Postgres,
    Redis,
    /// The S3 store (s3s-fs) the brokers keep their log and group offsets in.
    KafkaStore,
    Kafka,
    Haproxy,
    Backend,
    StreamProcessor,
    Envoy,
    NodeExporter,
    PostgresExporter,
    RedisExporter,
    Prometheus,
    Alertmanager,
}

impl Kind {
    /// Start order: each step waits for the earlier ones to be healthy.
    pub fn order(self) -> u8 {
        match self {
            Kind::Postgres => 0,
            Kind::Redis => 1,
            Kind::KafkaStore => 2,
            // Same step as HAProxy (independent of each other), after the store.
            Kind::Kafka => 3,
            Kind::Haproxy => 3,
            Kind::Backend => 4,
            Kind::StreamProcessor => 5,
            Kind::Envoy => 6,
            Kind::NodeExporter | Kind::PostgresExporter | Kind::RedisExporter => 7,
            Kind::Prometheus => 8,
            Kind::Alertmanager => 9,
        }
    }

    /// Stop step of a teardown, highest first; the components of one step stop together.
    /// Nothing needs the observers (Prometheus, Alertmanager, exporters), the front door (Envoy)
    /// or the stream processors to shut down cleanly; the processors need their broker and
    /// database while they commit (so they go before those), the backend goes after the front
    /// door that sends it requests; the brokers before their store, HAProxy before the data.
    pub fn stop_step(self) -> u8 {
        match self {
            Kind::Postgres => 0,
            Kind::Redis | Kind::KafkaStore => 1,
            Kind::Kafka | Kind::Haproxy => 2,
            Kind::Backend => 3,
            Kind::StreamProcessor
            | Kind::Envoy
            | Kind::NodeExporter
            | Kind::PostgresExporter
            | Kind::RedisExporter
            | Kind::Prometheus
            | Kind::Alertmanager => 4,
        }
    }
}

/// How to start a component: program, arguments and environment. Secret values are never here:
/// `secret_env` maps an environment variable to the secret whose value the runtime puts in it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct Launch {
    pub program: String,
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// Environment file among the component's rendered files (KEY=VALUE lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<String>,
}

/// The rendered files of one component.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ComponentBundle {
    pub kind: Kind,
    /// Relative path -> content.
    pub files: BTreeMap<String, String>,
    pub launch: Launch,
}

impl ComponentBundle {
    /// sha256 over every file (path and content), hex.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for (p, c) in &self.files {
            h.update(p.as_bytes());
            h.update([0]);
            h.update(c.as_bytes());
            h.update([0]);
        }
        h.update(
            serde_json::to_string(&self.launch)
                .unwrap_or_default()
                .as_bytes(),
        );
        hex::encode(h.finalize())
    }
}

/// Every rendered file of an environment, by component name (`postgres-0`, `haproxy`, ...).
#[derive(Debug, Clone, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct Bundle {
    pub components: BTreeMap<String, ComponentBundle>,
}

impl Bundle {
    /// Writes every file under `dir/<component>/<file>`.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<usize> {
        let mut n = 0;
        for (name, c) in &self.components {
            for (rel, content) in &c.files {
                let p = dir.join(name).join(rel);
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&p, content)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Components in start order (kind order, then name).
    pub fn ordered(&self) -> Vec<(&String, &ComponentBundle)> {
        let mut v: Vec<_> = self.components.iter().collect();
        v.sort_by(|a, b| {
            a.1.kind
                .order()
                .cmp(&b.1.kind.order())
                .then_with(|| a.0.cmp(b.0))
        });
        v
    }
}

/// Loads the templates: embedded ones, or every `*.tera` file under `dir`.
pub fn load_templates(dir: Option<&Path>) -> Result<tera::Tera, RenderError> {
    let mut tera = tera::Tera::default();
    tera.autoescape_on(vec![]);
    match dir {
        Some(d) => {
            let glob = format!("{}/**/*.tera", d.display());
            tera = tera::Tera::new(&glob).map_err(|source| RenderError::LoadTemplates {
                dir: d.display().to_string(),
                source,
            })?;
            tera.autoescape_on(vec![]);
        }
        None => {
            let mut files = Vec::new();
            collect(&EMBEDDED, &mut files);
            tera.add_raw_templates(files)
                .map_err(|source| RenderError::LoadTemplates {
                    dir: "(embedded)".into(),
                    source,
                })?;
        }
    }
    register_filters(&mut tera);
    Ok(tera)
}

fn collect(dir: &'static Dir<'static>, out: &mut Vec<(String, &'static str)>) {
    for f in dir.files() {
        let p = f.path().to_string_lossy().into_owned();
        if p.ends_with(".tera") {
            if let Some(s) = f.contents_utf8() {
                out.push((p, s));
            }
        }
    }
    for d in dir.dirs() {
        collect(d, out);
    }
}

/// Escaping for every target format, in one place each. Validation (`topology::syntax`) keeps
/// line breaks and control characters out of the topology; these functions make what remains
/// (quotes, backslashes, `#`, `$`, `{{`) mean itself in the file it lands in, and refuse what a
/// format cannot carry at all, so a template can never emit an injected line.
pub mod escape {
    use crate::topology::syntax;

    /// A quoted postgresql.conf value: `'` doubled and `\` doubled (the server's configuration
    /// lexer reads backslash escapes inside quotes). Refuses line breaks, which a quoted value
    /// cannot hold.
    pub fn pg_conf(s: &str) -> Result<String, String> {
        if let Some(r) = syntax::single_line(s) {
            return Err(format!("a postgresql.conf value {}", r.reason));
        }
        Ok(format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''")))
    }

    /// A double-quoted YAML scalar that every YAML reader of the stack (Go's yaml for
    /// Prometheus and Alertmanager, yaml-cpp for Envoy, serde for the backend) reads back as
    /// `s`: quotes and backslashes escaped, and every control character, NEL, the Unicode line
    /// and paragraph separators and the BOM written as `\uXXXX` (YAML 1.1 readers fold them
    /// as line breaks otherwise).
    pub fn yaml_str(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if syntax::is_breaking(c) => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// A double-quoted redis.conf argument (Redis splits lines with `sdssplitargs`, which reads
    /// `\"`, `\\` and `\xHH` inside double quotes). Refuses line breaks.
    pub fn redis_str(s: &str) -> Result<String, String> {
        if let Some(r) = syntax::single_line(s) {
            return Err(format!("a redis.conf argument {}", r.reason));
        }
        Ok(format!(
            "\"{}\"",
            s.replace('\\', "\\\\").replace('"', "\\\"")
        ))
    }

    /// A word of haproxy.cfg written as is: HAProxy splits on blanks and interprets quotes,
    /// backslashes, `#` and `${...}` itself, so anything beyond a portable set is refused.
    pub fn haproxy_word(s: &str) -> Result<String, String> {
        let portable = !s.is_empty()
            && s.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '/' | '.' | '_' | '-' | '+' | '@' | ',' | '=' | '~' | ':')
            });
        if portable {
            Ok(s.to_string())
        } else {
            Err(format!(
                "`{}` cannot be written into haproxy.cfg",
                s.escape_debug()
            ))
        }
    }

    /// A field of a libpq password file line (`host:port:db:user:password`): `\\` and `:`
    /// escaped with a backslash. Refuses line breaks, which would start another entry.
    pub fn pgpass_field(s: &str) -> Result<String, String> {
        if let Some(r) = syntax::single_line(s) {
            return Err(format!("a pgpass field {}", r.reason));
        }
        Ok(s.replace('\\', "\\\\").replace(':', "\\:"))
    }

    /// The value of a KEY=VALUE env file line (read trimmed, split at the first `=`).
    pub fn env_value(s: &str) -> Result<String, String> {
        match syntax::env_value(s) {
            None => Ok(s.to_string()),
            Some(r) => Err(format!("an env file value {}", r.reason)),
        }
    }
}

fn register_filters(tera: &mut tera::Tera) {
    type Filter = fn(&str) -> Result<String, String>;
    let filters: [(&str, Filter); 5] = [
        ("pgquote", escape::pg_conf),
        ("yamlstr", |s| Ok(escape::yaml_str(s))),
        ("redisquote", escape::redis_str),
        ("hapword", escape::haproxy_word),
        ("envvalue", escape::env_value),
    ];
    for (name, f) in filters {
        tera.register_filter(
            name,
            move |v: &tera::Value, _: &std::collections::HashMap<String, tera::Value>| {
                let s = match v {
                    tera::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                f(&s).map(tera::Value::String).map_err(|e| {
                    tera::Error::msg(format!("failed to escape a value for `{name}`: {e}"))
                })
            },
        );
    }
}

struct Renderer<'a> {
    tera: &'a tera::Tera,
    t: &'a ValidatedTopology,
}

impl Renderer<'_> {
    fn file(
        &self,
        component: &str,
        file: &str,
        template: &str,
        extra: &[(&str, serde_json::Value)],
    ) -> Result<String, RenderError> {
        let mut ctx = tera::Context::new();
        ctx.insert("t", self.t);
        ctx.insert("component", component);
        for (k, v) in extra {
            ctx.insert(*k, v);
        }
        self.tera
            .render(template, &ctx)
            .map_err(|e| RenderError::Render {
                component: component.into(),
                file: file.into(),
                template: template.into(),
                detail: error_chain(&e),
            })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Renders every file of every component of `t`.
pub fn render(t: &ValidatedTopology, tera: &tera::Tera) -> Result<Bundle, RenderError> {
    let r = Renderer { tera, t };
    let mut b = Bundle::default();
    let mut add = |name: &str, kind: Kind, files: Vec<(String, String)>| {
        let launch = launch(t, name, kind);
        b.components.insert(
            name.to_string(),
            ComponentBundle {
                kind,
                files: files.into_iter().collect(),
                launch,
            },
        );
    };

    if let Some(pg) = &t.postgres {
        let primary: Option<&PgMember> = pg.primary_member();
        for m in &pg.members {
            let extra = [("member", json(m)), ("primary_member", json(&primary))];
            let mut files = vec![
                (
                    "postgresql.conf".to_string(),
                    r.file(
                        &m.name,
                        "postgresql.conf",
                        "postgres/postgresql.conf.tera",
                        &extra,
                    )?,
                ),
                (
                    "pg_hba.conf".to_string(),
                    r.file(&m.name, "pg_hba.conf", "postgres/pg_hba.conf.tera", &extra)?,
                ),
            ];
            if m.role == Role::Replica {
                // An empty standby.signal makes the server start as a standby.
                files.push(("standby.signal".to_string(), String::new()));
            }
            add(&m.name, Kind::Postgres, files);
        }
    }
    if t.redis.is_some() {
        add(
            "redis",
            Kind::Redis,
            vec![(
                "redis.conf".into(),
                r.file("redis", "redis.conf", "redis/redis.conf.tera", &[])?,
            )],
        );
    }
    if let Some(k) = &t.kafka {
        if let Some(st) = &k.store {
            add(&st.name, Kind::KafkaStore, vec![]);
        }
        for br in &k.brokers {
            let extra = [("broker", json(br))];
            add(
                &br.name,
                Kind::Kafka,
                vec![(
                    "tansu.env".into(),
                    r.file(&br.name, "tansu.env", "kafka/tansu.env.tera", &extra)?,
                )],
            );
        }
    }
    if t.haproxy.is_some() {
        add(
            "haproxy",
            Kind::Haproxy,
            vec![(
                "haproxy.cfg".into(),
                r.file("haproxy", "haproxy.cfg", "haproxy/haproxy.cfg.tera", &[])?,
            )],
        );
    }
    if t.backend.is_some() {
        add(
            "backend",
            Kind::Backend,
            vec![(
                "backend.yaml".into(),
                r.file("backend", "backend.yaml", "backend/backend.yaml.tera", &[])?,
            )],
        );
        for p in &t.processors {
            add(
                &p.name,
                Kind::StreamProcessor,
                vec![(
                    "backend.yaml".into(),
                    r.file(&p.name, "backend.yaml", "backend/backend.yaml.tera", &[])?,
                )],
            );
        }
    }
    if t.envoy.is_some() {
        add(
            "envoy",
            Kind::Envoy,
            vec![(
                "envoy.yaml".into(),
                r.file("envoy", "envoy.yaml", "envoy/envoy.yaml.tera", &[])?,
            )],
        );
    }
    if t.exporters.node.is_some() {
        add("node-exporter", Kind::NodeExporter, vec![]);
    }
    for x in &t.exporters.postgres {
        let extra = [
            ("exporter", json(x)),
            (
                "member",
                json(&t.postgres.as_ref().and_then(|p| p.member(&x.member))),
            ),
        ];
        add(
            &x.name,
            Kind::PostgresExporter,
            vec![(
                "exporter.env".into(),
                r.file(
                    &x.name,
                    "exporter.env",
                    "exporters/postgres-exporter.env.tera",
                    &extra,
                )?,
            )],
        );
    }
    if t.exporters.redis.is_some() {
        add(
            "redis-exporter",
            Kind::RedisExporter,
            vec![(
                "exporter.env".into(),
                r.file(
                    "redis-exporter",
                    "exporter.env",
                    "exporters/redis-exporter.env.tera",
                    &[],
                )?,
            )],
        );
    }
    if let Some(p) = &t.prometheus {
        let _ = p;
        let mut files = vec![(
            "prometheus.yml".to_string(),
            r.file(
                "prometheus",
                "prometheus.yml",
                "prometheus/prometheus.yml.tera",
                &[],
            )?,
        )];
        if let Some(a) = &t.alerts {
            for g in &a.groups {
                let file = format!("rules/{g}.rules.yml");
                let tpl = format!("prometheus/rules/{g}.rules.yml.tera");
                files.push((file.clone(), r.file("prometheus", &file, &tpl, &[])?));
            }
            if !a.custom.is_empty() {
                files.push((
                    "rules/custom.rules.yml".into(),
                    r.file(
                        "prometheus",
                        "rules/custom.rules.yml",
                        "prometheus/rules/custom.rules.yml.tera",
                        &[],
                    )?,
                ));
            }
        }
        add("prometheus", Kind::Prometheus, files);
    }
    if t.alertmanager.is_some() {
        add(
            "alertmanager",
            Kind::Alertmanager,
            vec![(
                "alertmanager.yml".into(),
                r.file(
                    "alertmanager",
                    "alertmanager.yml",
                    "alertmanager/alertmanager.yml.tera",
                    &[],
                )?,
            )],
        );
    }
    Ok(b)
}

/// The command line of a component. Paths come from the validated topology, so the same function
/// serves the local runtime (state directory) and containers (fixed paths).
pub fn launch(t: &ValidatedTopology, name: &str, kind: Kind) -> Launch {
    let cfg = format!("{}/{name}", t.paths.config);
    let data = format!("{}/{name}", t.paths.data);
    let s = |x: &str| x.to_string();
    let mut l = Launch::default();
    match kind {
        Kind::Postgres => {
            let dir = t
                .postgres
                .as_ref()
                .and_then(|p| p.member(name))
                .map(|m| m.data_dir.clone())
                .unwrap_or(data);
            l.program = s("postgres");
            l.args = vec![
                s("-D"),
                dir,
                s("-c"),
                format!("config_file={cfg}/postgresql.conf"),
            ];
        }
        Kind::Redis => {
            l.program = s("redis-server");
            l.args = vec![format!("{cfg}/redis.conf")];
        }
        Kind::KafkaStore => {
            l.program = s("bssctl");
            if let Some(st) = t.kafka.as_ref().and_then(|k| k.store.as_ref()) {
                l.args = vec![
                    s("kafka-store"),
                    s("--root"),
                    st.data_dir.clone(),
                    s("--listen"),
                    format!("{}:{}", t.profile.bind, st.endpoint.port),
                    s("--bucket"),
                    st.bucket.clone(),
                ];
                l.env.insert(s("RUST_LOG"), s("warn"));
            }
        }
        Kind::Kafka => {
            l.program = s("tansu");
            l.args = vec![s("broker")];
            l.env_file = Some(s("tansu.env"));
        }
        Kind::Haproxy => {
            l.program = s("haproxy");
            // Master-worker in the foreground; SIGUSR2 reloads seamlessly (listeners passed over).
            let pid = t
                .haproxy
                .as_ref()
                .map(|h| h.pid_file.clone())
                .unwrap_or_default();
            l.args = vec![
                s("-W"),
                s("-db"),
                s("-f"),
                format!("{cfg}/haproxy.cfg"),
                s("-p"),
                pid,
            ];
            if t.haproxy.as_ref().is_some_and(|h| h.stats.is_some()) {
                l.secret_env
                    .insert(s("HAPROXY_STATS_PASSWORD"), s("haproxy-stats-password"));
            }
        }
        Kind::Backend => {
            l.program = s("bss-backend");
            l.args = vec![s("serve"), s("--config"), format!("{cfg}/backend.yaml")];
            if let Some(b) = &t.backend {
                l.env.insert(s("RUST_LOG"), b.log_level.clone());
            }
        }
        Kind::StreamProcessor => {
            l.program = s("bss-backend");
            l.args = vec![
                s("stream"),
                s(name),
                s("--config"),
                format!("{cfg}/backend.yaml"),
            ];
            if let Some(b) = &t.backend {
                l.env.insert(s("RUST_LOG"), b.log_level.clone());
            }
        }
        Kind::Envoy => {
            l.program = s("envoy");
            let base_id = envoy_base_id(&t.name);
            l.args = vec![
                s("-c"),
                format!("{cfg}/envoy.yaml"),
                s("--base-id"),
                base_id.to_string(),
                s("--drain-time-s"),
                s("2"),
                s("--parent-shutdown-time-s"),
                s("4"),
                s("--log-level"),
                s("warn"),
            ];
        }
        Kind::NodeExporter => {
            l.program = s("prometheus-node-exporter");
            let addr = t
                .exporters
                .node
                .as_ref()
                .map(|e| format!("{}:{}", t.profile.bind, e.port))
                .unwrap_or_default();
            l.args = vec![
                format!("--web.listen-address={addr}"),
                s("--no-collector.systemd"),
            ];
        }
        Kind::PostgresExporter => {
            l.program = s("prometheus-postgres-exporter");
            l.env_file = Some(s("exporter.env"));
            // Basic auth on every path (`/metrics` and the multi-target `/probe`).
            if let Some(w) = &t.exporters.postgres_web_auth {
                l.args.push(format!("--web.config.file={}", w.web_config));
            }
            if let Some(sec) = t.secrets.get("postgres-superuser-password") {
                l.env.insert(s("DATA_SOURCE_PASS_FILE"), sec.file.clone());
            }
        }
        Kind::RedisExporter => {
            // Its user and password map come from the env file (no secret in the environment).
            l.program = s("prometheus-redis-exporter");
            l.env_file = Some(s("exporter.env"));
        }
        Kind::Prometheus => {
            l.program = s("prometheus");
            if let Some(p) = &t.prometheus {
                l.args = vec![
                    format!("--config.file={cfg}/prometheus.yml"),
                    format!("--storage.tsdb.path={}", p.data_dir),
                    format!("--storage.tsdb.retention.time={}", p.retention.text),
                    format!(
                        "--web.listen-address={}:{}",
                        t.profile.bind, p.endpoint.port
                    ),
                    // No --web.enable-lifecycle: /-/reload and /-/quit stay off (a web page could
                    // POST them); bssctl reloads with SIGHUP. CORS only for its own origin (the
                    // default `.*` lets any page read every series).
                    format!(
                        "--web.cors.origin=http://(127\\.0\\.0\\.1|localhost):{}",
                        p.endpoint.port
                    ),
                ];
            }
        }
        Kind::Alertmanager => {
            l.program = s("prometheus-alertmanager");
            if let Some(a) = &t.alertmanager {
                l.args = vec![
                    format!("--config.file={cfg}/alertmanager.yml"),
                    format!("--storage.path={}", a.data_dir),
                    format!(
                        "--web.listen-address={}:{}",
                        t.profile.bind, a.endpoint.port
                    ),
                    // Single node: no gossip port to collide with anything.
                    s("--cluster.listen-address="),
                ];
                // Basic auth on the whole HTTP interface: a page cannot create silences or
                // POST /-/reload (Alertmanager 0.25 has no switch for its lifecycle API).
                if let Some(w) = &a.web_auth {
                    l.args.push(format!("--web.config.file={}", w.web_config));
                }
            }
        }
    }
    l
}

/// Envoy's shared-memory base id for hot restart: stable per environment, distinct between them.
pub fn envoy_base_id(env: &str) -> u32 {
    let h = Sha256::digest(env.as_bytes());
    1000 + (u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % 60_000)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::escape;

    #[test]
    fn escaping_per_format() {
        assert_eq!(escape::pg_conf(r"a\b'c").unwrap(), r"'a\\b''c'");
        assert!(escape::pg_conf("a\nb").is_err());
        assert_eq!(
            escape::yaml_str("q\"b\\n\nl\u{2028}s\u{85}e\u{0}"),
            r#""q\"b\\n\nl\u2028s\u0085e\u0000""#
        );
        assert_eq!(escape::redis_str(r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        assert!(escape::redis_str("a\rb").is_err());
        assert_eq!(escape::haproxy_word("/run/x.sock").unwrap(), "/run/x.sock");
        for bad in ["a b", "a#b", "${X}", "a\"", ""] {
            assert!(escape::haproxy_word(bad).is_err(), "{bad:?}");
        }
        assert_eq!(escape::pgpass_field(r"p:w\d").unwrap(), r"p\:w\\d");
        assert!(escape::env_value("x\nY=1").is_err());
        assert_eq!(escape::env_value("x=y").unwrap(), "x=y");
    }
}
