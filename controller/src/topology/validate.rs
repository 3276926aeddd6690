//! Validation: `Topology` (as written) -> `ValidatedTopology` (defaults applied, names, ports,
//! addresses and paths resolved for the runtime), reporting every semantic problem at once.
//!
//! Pure: no I/O, no clock. Structural problems (unknown keys, wrong types) are found by `parse`;
//! this module checks meaning: port clashes, references to things that do not exist, modes that
//! cannot work, names that are not DNS-safe, durations and sizes that do not parse.

use super::profile::RuntimeProfile;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::diag::{did_you_mean, index, join, suggest, Diagnostic, SourceMap};

use super::model::*;
use super::syntax;
use super::types::*;

/// Inputs of validation that are not in the file.
#[derive(Debug, Clone, Default)]
pub struct ValidateOptions {
    /// Directory of the topology file; relative paths in it are resolved against this.
    pub base_dir: PathBuf,
    /// Overrides `spec.runtime.stateDir`.
    pub state_dir: Option<PathBuf>,
    /// Overrides `spec.runtime.kind`.
    pub runtime: Option<RuntimeKind>,
}

/// Every secret bssctl knows, with what it is for.
pub const KNOWN_SECRETS: &[(&str, &str)] = &[
    (
        "postgres-superuser-password",
        "PostgreSQL superuser used by bssctl",
    ),
    (
        "postgres-replication-password",
        "PostgreSQL replication role",
    ),
    ("postgres-app-password", "PostgreSQL application role"),
    ("haproxy-stats-password", "HAProxy stats page"),
    ("redis-password", "Redis `admin` ACL user (operators only)"),
    ("redis-backend-password", "Redis ACL user of the backend"),
    (
        "redis-exporter-password",
        "Redis ACL user of redis_exporter",
    ),
    (
        "redis-probe-password",
        "Redis ACL user of bssctl's probes (PING, INFO)",
    ),
    (
        "alertmanager-web-password",
        "basic auth of Alertmanager's HTTP interface",
    ),
    (
        "exporter-web-password",
        "basic auth of the postgres exporters' HTTP interface",
    ),
    ("backend-api-key", "API key of the backend"),
    (
        "slack-webhook-url",
        "Slack incoming webhook of Alertmanager receivers",
    ),
    ("smtp-password", "SMTP authentication of Alertmanager"),
];

/// Components whose image can be set in `spec.images`.
pub const IMAGE_COMPONENTS: &[&str] = &[
    "postgres",
    "haproxy",
    "envoy",
    "redis",
    "kafka",
    "prometheus",
    "alertmanager",
    "node-exporter",
    "postgres-exporter",
    "redis-exporter",
    "backend",
];

pub const SEED_ALERT_GROUPS: &[&str] = &[
    "system",
    "postgresql",
    "redis",
    "kafka",
    "business",
    "capacity",
];
pub const TEAMS: &[&str] = &["database", "cache", "streaming", "sre", "business"];
pub const ENTITIES: &[&str] = &[
    "customer",
    "product",
    "order",
    "subscription",
    "invoice",
    "payment",
];

/// Parameters bssctl sets per member or relies on; overriding them would break replication or
/// failover, so they are refused with a pointer to the field that controls them.
const MANAGED_PARAMETERS: &[(&str, &str)] = &[
    (
        "port",
        "set spec.postgres.port or spec.postgres.members[].port",
    ),
    ("listen_addresses", "bssctl binds to the runtime's address"),
    (
        "unix_socket_directories",
        "bssctl places sockets in the state directory",
    ),
    (
        "primary_conninfo",
        "bssctl points replicas at the current primary",
    ),
    ("primary_slot_name", "set spec.postgres.replication.slots"),
    (
        "synchronous_standby_names",
        "set spec.postgres.replication.mode and syncCount",
    ),
    (
        "hot_standby_feedback",
        "set spec.postgres.replication.hotStandbyFeedback",
    ),
    (
        "max_slot_wal_keep_size",
        "set spec.postgres.replication.maxSlotWalKeepSize",
    ),
    ("cluster_name", "bssctl names each member"),
    ("data_directory", "bssctl owns the data directory"),
    ("hba_file", "bssctl renders pg_hba.conf"),
    (
        "wal_level",
        "streaming replication needs `replica` or higher; bssctl sets it",
    ),
];

/// Parameters that would make the server run a command, load a library or read and write files
/// the topology names. `bssctl check` starts a real postgres on the rendered file (as does
/// apply), so each would run code or touch files chosen by whoever wrote the topology.
const REFUSED_PARAMETERS: &[(&str, &str)] = &[
    ("include", INCLUDES),
    ("include_dir", INCLUDES),
    ("include_if_exists", INCLUDES),
    ("config_file", INCLUDES),
    ("ident_file", FILES),
    ("external_pid_file", FILES),
    ("ssl_cert_file", FILES),
    ("ssl_key_file", FILES),
    ("ssl_ca_file", FILES),
    ("ssl_crl_file", FILES),
    ("ssl_crl_dir", FILES),
    ("ssl_dh_params_file", FILES),
    ("krb_server_keyfile", FILES),
    ("log_directory", FILES),
    ("log_filename", FILES),
    ("stats_temp_directory", FILES),
    ("dynamic_library_path", LIBRARIES),
    ("jit_provider", LIBRARIES),
    ("archive_library", LIBRARIES),
    (
        "standard_conforming_strings",
        "bssctl's SQL relies on `on`: with `off` a backslash in a quoted value escapes the quote",
    ),
];
const INCLUDES: &str = "it makes PostgreSQL read another configuration file; bssctl renders the \
     whole configuration: put the settings themselves under spec.postgres.parameters";
const FILES: &str = "it names a file or directory the server reads or writes; bssctl places every \
     file of the environment in its state directory";
const LIBRARIES: &str = "it loads shared libraries into the server; a topology cannot choose code \
     for PostgreSQL to run";
const COMMANDS: &str = "it runs a shell command as the postgres user (`bssctl check` and apply \
     start a real postgres on the file); commands are not taken from a topology";

/// Why a PostgreSQL parameter is refused, if it is: the list above, plus every `*_command`
/// (archive, restore, ssl passphrase, recovery end, ...) and `*_preload_libraries`.
fn refused_parameter(name: &str) -> Option<&'static str> {
    if let Some((_, why)) = REFUSED_PARAMETERS.iter().find(|(n, _)| *n == name) {
        return Some(why);
    }
    let leaf = name.rsplit('.').next().unwrap_or(name);
    if leaf.ends_with("_command") {
        return Some(COMMANDS);
    }
    if leaf.ends_with("_libraries") || leaf.ends_with("_library") {
        return Some(LIBRARIES);
    }
    None
}

struct Ctx<'a> {
    diags: Vec<Diagnostic>,
    src: &'a SourceMap,
    /// Fields already refused for their characters: a second message about the same value
    /// (`... is not a duration`) would only repeat the first.
    refused: BTreeSet<String>,
}

impl Ctx<'_> {
    fn err(&mut self, path: &str, msg: impl Into<String>, hint: impl Into<String>) {
        if self.refused.contains(path) {
            return;
        }
        let loc = self.src.locate(path);
        self.diags
            .push(Diagnostic::error(path, msg).with_hint(hint).at(loc));
    }

    /// `err`, or (for the empty path: an input from the command line, not the file) the same
    /// error without a position.
    fn err_at_field(&mut self, path: &str, msg: impl Into<String>, hint: impl Into<String>) {
        if path.is_empty() {
            self.diags.push(Diagnostic::error("", msg).with_hint(hint));
        } else {
            self.err(path, msg, hint);
        }
    }

    fn dur(&mut self, path: &str, v: Option<&String>, default: &str) -> Dur {
        let text = v.map(String::as_str).unwrap_or(default);
        match parse_duration(text) {
            Some(ms) => Dur::from_ms(ms),
            None => {
                self.err(
                    path,
                    format!("`{text}` is not a duration"),
                    "write a number with a unit: ms, s, m, h, d, w or y, e.g. `500ms`, `5s`, `15d`",
                );
                Dur::from_ms(parse_duration(default).unwrap_or(0))
            }
        }
    }

    /// A byte size as written (default when absent) and its value; an error when it does not parse.
    fn size(&mut self, path: &str, v: Option<&String>, default: &str) -> (String, u64) {
        let text = v.cloned().unwrap_or_else(|| default.to_string());
        // The text is rendered as written (redis.conf, postgresql.conf): no blanks inside.
        match parse_bytes(&text).filter(|_| !text.contains(char::is_whitespace)) {
            Some(b) => (text, b),
            None => {
                self.err(
                    path,
                    format!("`{text}` is not a size"),
                    format!("a number with a unit, e.g. `{default}`"),
                );
                (text, 0)
            }
        }
    }

    fn ratio(&mut self, path: &str, v: Option<f64>, default: f64) -> f64 {
        let x = v.unwrap_or(default);
        if !(0.0..=1.0).contains(&x) || x.is_nan() {
            self.err(
                path,
                format!("{x} is not a ratio"),
                "use a number between 0 and 1, e.g. 0.85",
            );
        }
        x
    }
}

/// Parses Prometheus-style durations (`1h30m`, `500ms`, `15d`) into milliseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total: u64 = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return None;
        }
        let n: u64 = s[start..i].parse().ok()?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let mult: u64 = match &s[ustart..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(mult)?)?;
    }
    Some(total)
}

/// Parses a byte size (`16MB`, `512kB`, `1GB`, `1024`) into bytes (1024-based, as PostgreSQL does).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if split == 0 {
        return None;
    }
    let n: u64 = t[..split].parse().ok()?;
    let mult: u64 = match t[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// A DNS-1123 label of at most `max` characters.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn synchronous_standby_names(pg: &PostgresModel) -> String {
    if pg.mode != ReplicationMode::Sync {
        return String::new();
    }
    let names: Vec<String> = pg.replicas().map(|m| format!("\"{}\"", m.name)).collect();
    if names.is_empty() {
        return String::new();
    }
    format!("ANY {} ({})", pg.sync_count, names.join(", "))
}

/// Validates `t` and resolves it for its runtime. Returns every error found; warnings are
/// returned alongside a successful result by `validate_with_warnings`.
pub fn validate(
    t: &Topology,
    src: &SourceMap,
    opts: &ValidateOptions,
) -> Result<ValidatedTopology, Vec<Diagnostic>> {
    validate_with_warnings(t, src, opts).map(|(v, _)| v)
}

pub fn validate_with_warnings(
    t: &Topology,
    src: &SourceMap,
    opts: &ValidateOptions,
) -> Result<(ValidatedTopology, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut cx = Ctx {
        diags: Vec::new(),
        src,
        refused: BTreeSet::new(),
    };
    check_strings(t, &mut cx);
    let v = build(t, opts, &mut cx);
    let (errors, warnings): (Vec<_>, Vec<_>) = cx.diags.into_iter().partition(Diagnostic::is_error);
    if errors.is_empty() {
        Ok((v, warnings))
    } else {
        let mut all = errors;
        all.extend(warnings);
        crate::diag::sort(&mut all);
        Err(all)
    }
}

struct Ports {
    used: BTreeMap<u16, String>,
    /// spec.runtime.portOffset, added to every port of the environment, written or default, so
    /// that a copy of a topology with another offset runs beside the original.
    offset: u32,
}

impl Ports {
    /// The port as written (or the default), shifted by the offset; claimed for `what`.
    fn port(
        &mut self,
        cx: &mut Ctx,
        explicit: Option<u16>,
        default: u32,
        path: &str,
        what: &str,
    ) -> u16 {
        let p = explicit.map(u32::from).unwrap_or(default);
        self.claim(cx, p, path, what)
    }

    /// Claims `base` (a port as written or defaulted, before the offset) shifted by the offset.
    fn claim(&mut self, cx: &mut Ctx, base: u32, path: &str, what: &str) -> u16 {
        let port = base + self.offset;
        if base == 0 || port > u16::MAX as u32 {
            let why = if self.offset > 0 && port > u16::MAX as u32 {
                format!(" ({base} + portOffset {} = {port})", self.offset)
            } else {
                String::new()
            };
            cx.err(
                path,
                format!("port {port} of {what} is out of range{why}"),
                "ports are 1-65535 after spec.runtime.portOffset is added; lower the offset or the port",
            );
            return 0;
        }
        let p = port as u16;
        if let Some(other) = self.used.get(&p) {
            let other = other.clone();
            cx.err(
                path,
                format!("port {p} of {what} is already used by {other}"),
                "give each listener its own port (spec.runtime.portOffset shifts every default port)",
            );
        } else {
            self.used.insert(p, what.to_string());
        }
        p
    }
}

fn build(t: &Topology, opts: &ValidateOptions, cx: &mut Ctx) -> ValidatedTopology {
    if t.api_version != API_VERSION {
        cx.err(
            "apiVersion",
            format!("unsupported apiVersion `{}`", t.api_version),
            format!("use `{API_VERSION}`"),
        );
    }
    if t.kind != KIND {
        cx.err(
            "kind",
            format!("unsupported kind `{}`", t.kind),
            format!("use `{KIND}`"),
        );
    }
    let name = t.metadata.name.clone();
    if !is_dns_label(&name, 40) {
        cx.err(
            "metadata.name",
            format!("`{name}` is not a DNS-safe name"),
            "use 1-40 lowercase letters, digits and '-', not starting or ending with '-', e.g. `bss-dev`",
        );
    }
    // The namespace defaults to the name: a bad name is reported once, at `metadata.name`.
    let namespace = t.metadata.namespace.clone().unwrap_or_else(|| name.clone());
    if t.metadata.namespace.is_some() && !is_dns_label(&namespace, 63) {
        cx.err(
            "metadata.namespace",
            format!("`{namespace}` is not a DNS-safe namespace"),
            "use lowercase letters, digits and '-'",
        );
    }
    let s = &t.spec;
    // `haproxy:` with nothing after it is YAML null: serde reads it as an absent section, which
    // would silently leave the component out.
    for key in [
        "postgres",
        "haproxy",
        "envoy",
        "redis",
        "kafka",
        "prometheus",
        "alerts",
        "alertmanager",
        "exporters",
        "backend",
        "streamProcessors",
        "runtime",
    ] {
        let path = format!("spec.{key}");
        let present = serde_json::to_value(&t.spec)
            .ok()
            .and_then(|v| v.get(key).cloned())
            .is_some();
        if cx.src.value.contains_key(&path) && !present {
            cx.err(
                &path,
                format!("`{key}` has no value, so it would be left out"),
                format!("write `{key}: {{}}` to enable it with defaults, or remove the line"),
            );
        }
    }
    let rt_spec = s.runtime.clone().unwrap_or_default();
    let runtime = opts.runtime.or(rt_spec.kind).unwrap_or_default();
    let off = rt_spec.port_offset.unwrap_or(0) as u32;
    let mut ports = Ports {
        used: BTreeMap::new(),
        offset: off,
    };
    let profile = RuntimeProfile::new(runtime, &name, &namespace);
    let host_of = |c: &str| profile.host(c);
    let paths = resolve_paths(&profile, &rt_spec, &name, opts);
    if profile.host_state_dir {
        check_state_dir(&rt_spec, &name, opts, cx);
    }

    let agent_port = ports.port(
        cx,
        rt_spec.agent_port,
        7070,
        "spec.runtime.agentPort",
        "the controller agent",
    );
    let agent = Endpoint {
        host: "127.0.0.1".into(),
        port: agent_port,
    };

    // Images: only known components.
    for k in s.images.keys() {
        if !IMAGE_COMPONENTS.contains(&k.as_str()) {
            let hint = suggest(k, IMAGE_COMPONENTS, "components with images");
            cx.err(
                &join("spec.images", k),
                format!("unknown component `{k}` in images"),
                hint,
            );
        }
    }

    // --- PostgreSQL --------------------------------------------------------------------------
    let postgres = s
        .postgres
        .as_ref()
        .map(|p| build_postgres(p, &paths, &host_of, &mut ports, cx));

    // --- HAProxy -----------------------------------------------------------------------------
    let haproxy = s
        .haproxy
        .as_ref()
        .map(|h| build_haproxy(h, postgres.is_some(), &paths, &host_of, &mut ports, cx));

    // --- Redis -------------------------------------------------------------------------------
    let redis = s.redis.as_ref().map(|r| {
        let path = "spec.redis";
        let port = ports.port(cx, r.port, 6379, &join(path, "port"), "redis");
        let (max_memory, _) = cx.size(&join(path, "maxMemory"), r.max_memory.as_ref(), "256mb");
        let policy = r
            .max_memory_policy
            .clone()
            .unwrap_or_else(|| "allkeys-lru".into());
        const POLICIES: &[&str] = &[
            "noeviction",
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ];
        if !POLICIES.contains(&policy.as_str()) {
            let hint = suggest(&policy, POLICIES, "one of");
            cx.err(
                &join(path, "maxMemoryPolicy"),
                format!("unknown eviction policy `{policy}`"),
                hint,
            );
        }
        RedisModel {
            endpoint: Endpoint {
                host: host_of("redis"),
                port,
            },
            max_memory,
            max_memory_policy: policy,
            append_only: r.append_only.unwrap_or(false),
            password_secret: r.auth.unwrap_or(true).then(|| "redis-password".to_string()),
            data_dir: format!("{}/redis", paths.data),
            acl: r.auth.unwrap_or(true).then(|| redis_acl(&paths)),
        }
    });

    // --- Kafka (tansu) -----------------------------------------------------------------------
    let kafka = s.kafka.as_ref().map(|k| {
        let path = "spec.kafka";
        let n = k.brokers.unwrap_or(1);
        // s3 everywhere: on Docker `kafka-store` runs from an image of its own (the bssctl binary).
        let storage = k.storage.unwrap_or(KafkaStorage::S3);
        if n == 0 {
            cx.err(&join(path, "brokers"), "a Kafka cluster needs at least one broker", "set brokers: 1");
        }
        if n > 1 && storage == KafkaStorage::Memory {
            cx.err(
                &join(path, "brokers"),
                format!("{n} brokers cannot share the in-memory storage engine: each would be a separate cluster"),
                "use storage: s3 (the brokers share one store), or brokers: 1 with storage: memory",
            );
        }
        let store = match storage {
            KafkaStorage::Memory => {
                if k.store.is_some() {
                    cx.err(&join(path, "store"), "a store is only used with storage: s3", "remove `store`, or set storage: s3");
                }
                None
            }
            KafkaStorage::S3 => {
                let spec = k.store.clone().unwrap_or_default();
                let spath = join(path, "store");
                let port = ports.port(cx, spec.port, 9000, &join(&spath, "port"), "kafka store");
                let bucket = spec.bucket.unwrap_or_else(|| "tansu".into());
                let b = bucket.as_bytes();
                let valid = (3..=63).contains(&b.len())
                    && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
                    && b.first().is_some_and(u8::is_ascii_alphanumeric)
                    && b.last().is_some_and(u8::is_ascii_alphanumeric)
                    && !bucket.contains("..");
                if !valid {
                    cx.err(
                        &join(&spath, "bucket"),
                        format!("`{bucket}` is not a valid S3 bucket name"),
                        "use 3-63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
                    );
                }
                Some(KafkaStoreModel {
                    name: "kafka-store".into(),
                    endpoint: Endpoint { host: host_of("kafka-store"), port },
                    bucket,
                    data_dir: format!("{}/kafka-store", paths.data),
                })
            }
        };
        let base = k.port.map(u32::from).unwrap_or(9092);
        let cluster_id = k.cluster_id.clone().unwrap_or_else(|| name.clone());
        check_plain_id(cx, &join(path, "clusterId"), "cluster id", &cluster_id);
        let brokers: Vec<BrokerModel> = (0..n)
            .map(|i| {
                let bname = format!("kafka-{i}");
                let port = ports.claim(cx, base + i as u32, &join(path, "port"), &format!("broker {bname}"));
                let storage_url = match &store {
                    None => format!("memory://{cluster_id}/"),
                    Some(st) => format!("s3://{}/", st.bucket),
                };
                BrokerModel { name: bname.clone(), index: i, endpoint: Endpoint { host: host_of(&bname), port }, storage_url }
            })
            .collect();
        let mut topics: Vec<TopicModel> = Vec::new();
        if k.topics.is_empty() {
            for e in ENTITIES {
                topics.push(TopicModel { name: format!("bss.{e}.events"), partitions: 3, retention: Dur::from_ms(7 * 86_400_000) });
            }
            topics.push(TopicModel { name: "bss.analytics.events".into(), partitions: 3, retention: Dur::from_ms(7 * 86_400_000) });
        }
        let mut seen = BTreeSet::new();
        for (i, tp) in k.topics.iter().enumerate() {
            let tpath = index(&join(path, "topics"), i);
            let valid = !tp.name.is_empty()
                && tp.name.len() <= 249
                && tp.name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
                && tp.name != "."
                && tp.name != "..";
            if !valid {
                cx.err(&join(&tpath, "name"), format!("`{}` is not a valid topic name", tp.name), "use letters, digits, '.', '_' and '-' (at most 249)");
            }
            if !seen.insert(tp.name.clone()) {
                cx.err(&join(&tpath, "name"), format!("topic `{}` is declared twice", tp.name), "remove the duplicate");
            }
            let partitions = tp.partitions.unwrap_or(3);
            if partitions == 0 {
                cx.err(&join(&tpath, "partitions"), "a topic needs at least one partition", "e.g. partitions: 3");
            }
            let retention = cx.dur(&join(&tpath, "retention"), tp.retention.as_ref(), "7d");
            topics.push(TopicModel { name: tp.name.clone(), partitions, retention });
        }
        let bootstrap = brokers.iter().map(|b| b.endpoint.addr()).collect::<Vec<_>>().join(",");
        KafkaModel { cluster_id, storage, brokers, topics, bootstrap, store }
    });

    // --- Backend and processors ----------------------------------------------------------------
    let backend = s.backend.as_ref().map(|b| {
        let path = "spec.backend";
        let port = ports.port(cx, b.port, 8080, &join(path, "port"), "backend");
        let Some(pg) = postgres.as_ref() else {
            cx.err(
                path,
                "the backend needs PostgreSQL, but the topology has no postgres",
                "add `postgres: {}` to spec",
            );
            return None;
        };
        let (write_url, read_url) = match (&haproxy, pg.primary_member()) {
            (Some(h), _) => (
                format!("postgres://{}@{}/{}", pg.user, h.write.addr(), pg.database),
                format!("postgres://{}@{}/{}", pg.user, h.read.addr(), pg.database),
            ),
            (None, Some(m)) => {
                let u = format!(
                    "postgres://{}@{}:{}/{}",
                    pg.user, m.host, m.port, pg.database
                );
                (u.clone(), u)
            }
            (None, None) => (String::new(), String::new()),
        };
        Some(BackendModel {
            endpoint: Endpoint {
                host: host_of("backend"),
                port,
            },
            max_db_connections: b.max_db_connections.unwrap_or(20),
            cache_ttl: cx.dur(&join(path, "cacheTtl"), b.cache_ttl.as_ref(), "5m"),
            outbox_poll_interval: cx.dur(
                &join(path, "outboxPollInterval"),
                b.outbox_poll_interval.as_ref(),
                "50ms",
            ),
            outbox_batch_size: b.outbox_batch_size.unwrap_or(500),
            log_level: b.log_level.clone().unwrap_or_else(|| "info".into()),
            write_url,
            read_url,
            redis_url: redis
                .as_ref()
                .map(|r| format!("redis://{}/0", r.endpoint.addr())),
            kafka_bootstrap: kafka.as_ref().map(|k| k.bootstrap.clone()),
        })
    });
    let backend = backend.flatten();

    let mut processors = Vec::new();
    if let Some(sp) = &s.stream_processors {
        let path = "spec.streamProcessors";
        for (field, pname, spec) in [
            (
                "customerAnalytics",
                "customer-analytics",
                &sp.customer_analytics,
            ),
            ("orderProcessor", "order-processor", &sp.order_processor),
        ] {
            if let Some(p) = spec {
                if p.enabled.unwrap_or(true) {
                    processors.push(ProcessorModel { name: pname.into() });
                    if kafka.is_none() {
                        cx.err(
                            &join(path, field),
                            format!("{pname} consumes Kafka topics, but the topology has no kafka"),
                            "add `kafka: {}` to spec",
                        );
                    }
                }
            }
        }
    }

    // --- Envoy ---------------------------------------------------------------------------------
    let envoy = s
        .envoy
        .as_ref()
        .map(|e| build_envoy(e, &backend, &paths, &host_of, &mut ports, cx));

    // --- Exporters -----------------------------------------------------------------------------
    let exporters = build_exporters(
        s.exporters.as_ref(),
        &paths.secrets,
        postgres.as_ref(),
        redis.is_some(),
        &host_of,
        &mut ports,
        cx,
    );

    // --- Alertmanager ----------------------------------------------------------------------------
    let alertmanager = s
        .alertmanager
        .as_ref()
        .map(|a| build_alertmanager(a, &agent, &paths, &host_of, &mut ports, cx));

    // --- Prometheus and alerts -------------------------------------------------------------------
    let prometheus = s.prometheus.as_ref().map(|p| {
        let scraped = Scraped {
            agent_scraped: profile.agent_beside_stack,
            agent: &agent,
            alertmanager: alertmanager.as_ref(),
            exporters: &exporters,
            haproxy: haproxy.as_ref(),
            envoy: envoy.as_ref(),
            backend: backend.as_ref(),
            kafka_store: kafka
                .as_ref()
                .and_then(|k| k.store.as_ref())
                .map(|st| &st.endpoint),
        };
        build_prometheus(p, scraped, &paths, &host_of, &mut ports, cx)
    });

    let alerts = match (&s.alerts, &prometheus) {
        (Some(_), None) => {
            cx.err(
                "spec.alerts",
                "alert rules are evaluated by Prometheus, but the topology has no prometheus",
                "add `prometheus: {}` to spec",
            );
            None
        }
        (a, Some(_)) => Some(build_alerts(a.clone().unwrap_or_default(), cx)),
        (None, None) => None,
    };

    // --- Secrets --------------------------------------------------------------------------------
    let secrets = build_secrets(
        s,
        UsedSecrets {
            postgres: postgres.as_ref(),
            haproxy: haproxy.as_ref(),
            redis: redis.as_ref(),
            backend: backend.as_ref(),
            alertmanager: alertmanager.as_ref(),
            exporters: &exporters,
        },
        opts,
        &paths,
        cx,
    );

    if profile.host_state_dir {
        check_sockets(
            &rt_spec,
            opts,
            postgres.as_ref(),
            haproxy.as_ref(),
            envoy.as_ref(),
            cx,
        );
    }

    ValidatedTopology {
        name,
        namespace,
        runtime,
        profile,
        paths,
        agent,
        labels: t.metadata.labels.clone(),
        images: s.images.clone(),
        secrets,
        postgres,
        haproxy,
        envoy,
        redis,
        kafka,
        prometheus,
        alerts,
        alertmanager,
        exporters,
        backend,
        processors,
    }
}

/// Every string of the document (values and mapping keys) is one line of printable text; only
/// PromQL expressions and alert descriptions may span lines. Runs before the sections are built,
/// so a refused field is reported once, here.
fn check_strings(t: &Topology, cx: &mut Ctx) {
    fn multi_line(path: &str) -> bool {
        path.starts_with("spec.alerts.rules[")
            && (path.ends_with(".expr") || path.ends_with(".description"))
    }
    fn walk(v: &serde_json::Value, path: &str, cx: &mut Ctx) {
        match v {
            serde_json::Value::String(s) => {
                let refusal = if multi_line(path) {
                    syntax::text_block(s)
                } else {
                    syntax::single_line(s)
                };
                if let Some(r) = refusal {
                    cx.err(path, format!("`{}` {}", field_of(path), r.reason), r.hint);
                    cx.refused.insert(path.to_string());
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &index(path, i), cx);
                }
            }
            serde_json::Value::Object(map) => {
                for (k, item) in map {
                    let p = join(path, k);
                    if let Some(r) = syntax::single_line(k) {
                        cx.err(
                            &p,
                            format!("the key `{}` {}", k.escape_debug(), r.reason),
                            r.hint,
                        );
                        cx.refused.insert(p.clone());
                    }
                    walk(item, &p, cx);
                }
            }
            _ => {}
        }
    }
    if let Ok(v) = serde_json::to_value(t) {
        walk(&v, "", cx);
    }
}

/// The last segment of a field path, for messages.
fn field_of(path: &str) -> &str {
    let cut = path.rfind(['.', '[']).map_or(0, |i| i + 1);
    path[cut..].trim_end_matches(']')
}

/// Where the state directory came from: the field, or (for `--state-dir`) no field at all.
fn state_dir_field(opts: &ValidateOptions, rt: &RuntimeSpec) -> (&'static str, &'static str) {
    match (&opts.state_dir, &rt.state_dir) {
        (Some(_), _) => (
            "",
            "the state directory given by --state-dir (or BSSCTL_STATE_DIR)",
        ),
        (None, Some(_)) => ("spec.runtime.stateDir", "`stateDir`"),
        (None, None) => ("spec.runtime", "the default state directory `.bssctl`"),
    }
}

/// The state directory must be a directory of bssctl's own: not a system directory, not a
/// shared one as the environment root, not the checkout holding the topology.
fn check_state_dir(rt: &RuntimeSpec, name: &str, opts: &ValidateOptions, cx: &mut Ctx) {
    let (field, what) = state_dir_field(opts, rt);
    if cx.refused.contains(field) {
        return;
    }
    let (written, dir) = match &opts.state_dir {
        Some(d) => (d.to_string_lossy().into_owned(), d.clone()),
        None => {
            let w = rt.state_dir.clone().unwrap_or_else(|| ".bssctl".into());
            let d = PathBuf::from(absolutize(&opts.base_dir, &w));
            (w, d)
        }
    };
    // A name that is not a DNS label is reported at metadata.name; judge the directory alone.
    let leaf = if is_dns_label(name, 40) { name } else { "env" };
    let root = dir.join(leaf);
    if let Some(r) = syntax::state_dir(&written, &dir, &root, &opts.base_dir) {
        cx.err_at_field(
            field,
            format!("{what} `{}` {}", written.escape_debug(), r.reason),
            r.hint,
        );
    }
}

/// Unix sockets bssctl creates under the state directory must fit the kernel's `sun_path`.
fn check_sockets(
    rt: &RuntimeSpec,
    opts: &ValidateOptions,
    postgres: Option<&PostgresModel>,
    haproxy: Option<&HaproxyModel>,
    envoy: Option<&EnvoyModel>,
    cx: &mut Ctx,
) {
    let (field, what) = state_dir_field(opts, rt);
    if cx.refused.contains(field) {
        return;
    }
    let mut sockets: Vec<String> = Vec::new();
    if let Some(pg) = postgres {
        sockets.extend(
            pg.members
                .iter()
                .map(|m| format!("{}/.s.PGSQL.{}", m.socket_dir, m.port)),
        );
    }
    if let Some(h) = haproxy {
        // HAProxy binds `<path>.<pid>.tmp` first and renames it: room for a 7-digit pid.
        sockets.push(format!("{}.4194304.tmp", h.admin_socket));
    }
    if let Some(e) = envoy {
        sockets.push(e.admin_socket.clone());
    }
    if let Some(longest) = sockets.iter().max_by_key(|s| s.len()) {
        if let Some(r) = syntax::socket_path(longest) {
            cx.err_at_field(field, format!("{what} {}", r.reason), r.hint);
        }
    }
}

/// Identifiers written unquoted into env files and URLs (Kafka cluster id).
fn check_plain_id(cx: &mut Ctx, path: &str, what: &str, v: &str) {
    if let Some(r) = syntax::plain_id(v) {
        cx.err(
            path,
            format!("{what} `{}` {}", v.escape_debug(), r.reason),
            r.hint,
        );
    }
}

/// HAProxy in front of the PostgreSQL members: write and read ports, checks, stats.
fn build_haproxy(
    h: &HaproxySpec,
    has_postgres: bool,
    paths: &Paths,
    host_of: &dyn Fn(&str) -> String,
    ports: &mut Ports,
    cx: &mut Ctx,
) -> HaproxyModel {
    let path = "spec.haproxy";
    if !has_postgres {
        cx.err(
            path,
            "haproxy balances PostgreSQL, but the topology has no postgres",
            "add `postgres: {}` to spec or remove haproxy",
        );
    }
    let write = ports.port(
        cx,
        h.write_port,
        5436,
        &join(path, "writePort"),
        "haproxy write port",
    );
    let read = ports.port(
        cx,
        h.read_port,
        5435,
        &join(path, "readPort"),
        "haproxy read port",
    );
    let check = h.check.clone().unwrap_or_default();
    let cpath = join(path, "check");
    let stats_spec = h.stats.clone().unwrap_or_default();
    let stats = if stats_spec.enabled.unwrap_or(true) {
        let sp = join(path, "stats");
        let port = ports.port(
            cx,
            stats_spec.port,
            8084,
            &join(&sp, "port"),
            "haproxy stats",
        );
        let user = stats_spec.user.clone().unwrap_or_else(|| "admin".into());
        let up = join(&sp, "user");
        if let Some(r) = syntax::haproxy_word(&user) {
            cx.err(
                &up,
                format!("stats user `{}` {}", user.escape_debug(), r.reason),
                r.hint,
            );
        }
        Some(StatsModel {
            port,
            user,
            password_secret: "haproxy-stats-password".into(),
        })
    } else {
        None
    };
    let rise = check.rise.unwrap_or(2);
    let fall = check.fall.unwrap_or(3);
    if rise == 0 {
        cx.err(
            &join(&cpath, "rise"),
            "rise must be at least 1",
            "2 is a good value",
        );
    }
    if fall == 0 {
        cx.err(
            &join(&cpath, "fall"),
            "fall must be at least 1",
            "3 is a good value",
        );
    }
    HaproxyModel {
        write: Endpoint {
            host: host_of("haproxy"),
            port: write,
        },
        read: Endpoint {
            host: host_of("haproxy"),
            port: read,
        },
        balance: serde_plain(&h.balance.unwrap_or_default()),
        check_interval: cx.dur(&join(&cpath, "interval"), check.interval.as_ref(), "1s"),
        check_timeout: cx.dur(&join(&cpath, "timeout"), check.timeout.as_ref(), "1s"),
        rise,
        fall,
        stats,
        max_connections: h.max_connections.unwrap_or(2000),
        idle_timeout: cx.dur(&join(path, "idleTimeout"), h.idle_timeout.as_ref(), "30m"),
        admin_socket: format!("{}/haproxy/admin.sock", paths.run),
        pid_file: format!("{}/haproxy/haproxy.pid", paths.run),
    }
}

/// The node, PostgreSQL (one per member) and Redis exporters.
fn build_exporters(
    spec: Option<&ExportersSpec>,
    secrets: &str,
    postgres: Option<&PostgresModel>,
    has_redis: bool,
    host_of: &dyn Fn(&str) -> String,
    ports: &mut Ports,
    cx: &mut Ctx,
) -> ExportersModel {
    let mut exporters = ExportersModel::default();
    if let Some(x) = spec {
        let path = "spec.exporters";
        if let Some(n) = x.node.as_ref().filter(|n| n.enabled.unwrap_or(true)) {
            let port = ports.port(cx, n.port, 9100, &join(path, "node.port"), "node exporter");
            exporters.node = Some(Endpoint {
                host: host_of("node-exporter"),
                port,
            });
        }
        if let Some(p) = x.postgres.as_ref().filter(|n| n.enabled.unwrap_or(true)) {
            match postgres {
                None => cx.err(
                    &join(path, "postgres"),
                    "the postgres exporter needs the postgres component",
                    "add `postgres: {}` or remove exporters.postgres",
                ),
                Some(pg) => {
                    exporters.postgres_web_auth = Some(WebAuthModel {
                        user: WEB_USER.into(),
                        password_secret: "exporter-web-password".into(),
                        web_config: format!("{secrets}/postgres-exporter-web.yml"),
                    });
                    let base = p.port.map(u32::from).unwrap_or(9187);
                    for m in &pg.members {
                        let xname = format!("postgres-exporter-{}", m.index);
                        let port = ports.claim(
                            cx,
                            base + m.index as u32,
                            &join(path, "postgres.port"),
                            &xname,
                        );
                        exporters.postgres.push(PgExporterModel {
                            name: xname.clone(),
                            member: m.name.clone(),
                            endpoint: Endpoint {
                                host: host_of(&xname),
                                port,
                            },
                        });
                    }
                }
            }
        }
        if let Some(r) = x.redis.as_ref().filter(|n| n.enabled.unwrap_or(true)) {
            if !has_redis {
                cx.err(
                    &join(path, "redis"),
                    "the redis exporter needs the redis component",
                    "add `redis: {}` or remove exporters.redis",
                );
            }
            let port = ports.port(
                cx,
                r.port,
                9121,
                &join(path, "redis.port"),
                "redis exporter",
            );
            exporters.redis = Some(Endpoint {
                host: host_of("redis-exporter"),
                port,
            });
        }
    }
    exporters
}

/// What Prometheus scrapes besides its own extra jobs.
#[derive(Clone, Copy)]
struct Scraped<'a> {
    /// The agent runs beside the stack and gets a scrape job.
    agent_scraped: bool,
    agent: &'a Endpoint,
    alertmanager: Option<&'a AlertmanagerModel>,
    exporters: &'a ExportersModel,
    haproxy: Option<&'a HaproxyModel>,
    envoy: Option<&'a EnvoyModel>,
    backend: Option<&'a BackendModel>,
    kafka_store: Option<&'a Endpoint>,
}

/// Prometheus: a scrape job per component of the stack, then the extra jobs.
fn build_prometheus(
    p: &PrometheusSpec,
    scraped: Scraped,
    paths: &Paths,
    host_of: &dyn Fn(&str) -> String,
    ports: &mut Ports,
    cx: &mut Ctx,
) -> PrometheusModel {
    let Scraped {
        agent_scraped,
        agent,
        alertmanager,
        exporters,
        haproxy,
        envoy,
        backend,
        kafka_store,
    } = scraped;
    let path = "spec.prometheus";
    let port = ports.port(cx, p.port, 9090, &join(path, "port"), "prometheus");
    let endpoint = Endpoint {
        host: host_of("prometheus"),
        port,
    };
    let mut jobs = Vec::new();
    let job = |name: &str, targets: Vec<ScrapeTarget>, metrics_path: &str| ScrapeJobModel {
        name: name.into(),
        targets,
        metrics_path: metrics_path.into(),
        interval: None,
        basic_auth: None,
    };
    let basic_auth = |w: &WebAuthModel| {
        Some(BasicAuthModel {
            username: w.user.clone(),
            password_file: format!("{}/{}", paths.secrets, w.password_secret),
        })
    };
    let plain = |e: &Endpoint| ScrapeTarget {
        address: e.addr(),
        labels: BTreeMap::new(),
    };
    jobs.push(job("prometheus", vec![plain(&endpoint)], "/metrics"));
    if let Some(a) = &alertmanager {
        let mut j = job("alertmanager", vec![plain(&a.endpoint)], "/metrics");
        j.basic_auth = a.web_auth.as_ref().and_then(basic_auth);
        jobs.push(j);
    }
    if agent_scraped {
        jobs.push(job("bssctl", vec![plain(agent)], "/metrics"));
    }
    if let Some(n) = &exporters.node {
        jobs.push(job("node", vec![plain(n)], "/metrics"));
    }
    if !exporters.postgres.is_empty() {
        let targets = exporters
            .postgres
            .iter()
            .map(|x| ScrapeTarget {
                address: x.endpoint.addr(),
                labels: BTreeMap::from([("member".to_string(), x.member.clone())]),
            })
            .collect();
        let mut j = job("postgres", targets, "/metrics");
        j.basic_auth = exporters.postgres_web_auth.as_ref().and_then(basic_auth);
        jobs.push(j);
    }
    if let Some(r) = &exporters.redis {
        jobs.push(job("redis", vec![plain(r)], "/metrics"));
    }
    if let Some(h) = &haproxy {
        if let Some(st) = &h.stats {
            jobs.push(job(
                "haproxy",
                vec![plain(&Endpoint {
                    host: h.write.host.clone(),
                    port: st.port,
                })],
                "/metrics",
            ));
        }
    }
    if let Some(e) = &envoy {
        jobs.push(job("envoy", vec![plain(&e.admin)], "/stats/prometheus"));
    }
    if let Some(b) = &backend {
        jobs.push(job("backend", vec![plain(&b.endpoint)], "/metrics"));
    }
    if let Some(st) = kafka_store {
        // End and committed offsets of every partition, read from the brokers' store.
        jobs.push(job("kafka-store", vec![plain(st)], "/-/metrics"));
    }
    let builtin: BTreeSet<String> = jobs.iter().map(|j| j.name.clone()).collect();
    for (i, x) in p.extra_jobs.iter().enumerate() {
        let jp = index(&join(path, "extraJobs"), i);
        if builtin.contains(&x.name) || jobs.iter().filter(|j| j.name == x.name).count() > 0 {
            cx.err(
                &join(&jp, "name"),
                format!("scrape job `{}` already exists", x.name),
                "pick another job name",
            );
        }
        if x.targets.is_empty() {
            cx.err(
                &join(&jp, "targets"),
                "a scrape job needs at least one target",
                "e.g. targets: [\"127.0.0.1:9000\"]",
            );
        }
        for (ti, tg) in x.targets.iter().enumerate() {
            if !is_host_port(tg) {
                cx.err(
                    &index(&join(&jp, "targets"), ti),
                    format!("`{tg}` is not host:port"),
                    "e.g. `127.0.0.1:9000`",
                );
            }
        }
        let interval = x
            .interval
            .as_ref()
            .map(|iv| cx.dur(&join(&jp, "interval"), Some(iv), "5s"));
        jobs.push(ScrapeJobModel {
            name: x.name.clone(),
            targets: x
                .targets
                .iter()
                .map(|a| ScrapeTarget {
                    address: a.clone(),
                    labels: BTreeMap::new(),
                })
                .collect(),
            metrics_path: x.metrics_path.clone().unwrap_or_else(|| "/metrics".into()),
            interval,
            basic_auth: None,
        });
    }
    PrometheusModel {
        endpoint,
        scrape_interval: cx.dur(
            &join(path, "scrapeInterval"),
            p.scrape_interval.as_ref(),
            "5s",
        ),
        evaluation_interval: cx.dur(
            &join(path, "evaluationInterval"),
            p.evaluation_interval.as_ref(),
            "5s",
        ),
        retention: cx.dur(&join(path, "retention"), p.retention.as_ref(), "15d"),
        jobs,
        data_dir: format!("{}/prometheus", paths.data),
    }
}

/// The secrets the components need, each from its source (generated when none is given).
fn build_secrets(
    s: &TopologySpec,
    used: UsedSecrets,
    opts: &ValidateOptions,
    paths: &Paths,
    cx: &mut Ctx,
) -> BTreeMap<String, SecretModel> {
    let UsedSecrets {
        postgres,
        haproxy,
        redis,
        backend,
        alertmanager,
        exporters,
    } = used;
    let mut needed: BTreeSet<&str> = BTreeSet::new();
    if postgres.is_some() {
        needed.extend([
            "postgres-superuser-password",
            "postgres-replication-password",
            "postgres-app-password",
        ]);
    }
    if haproxy.as_ref().is_some_and(|h| h.stats.is_some()) {
        needed.insert("haproxy-stats-password");
    }
    if redis.as_ref().is_some_and(|r| r.password_secret.is_some()) {
        needed.insert("redis-password");
    }
    for u in redis.iter().flat_map(|r| &r.acl).flat_map(|a| &a.users) {
        needed.insert(u.password_secret.as_str());
    }
    for w in alertmanager
        .iter()
        .filter_map(|a| a.web_auth.as_ref())
        .chain(exporters.postgres_web_auth.as_ref())
    {
        needed.insert(w.password_secret.as_str());
    }
    if backend.is_some() {
        needed.insert("backend-api-key");
    }
    if let Some(a) = &alertmanager {
        if a.receivers.iter().any(|r| !r.slack.is_empty()) {
            needed.insert("slack-webhook-url");
        }
        if a.smtp
            .as_ref()
            .is_some_and(|s| s.auth_password_file.is_some())
        {
            needed.insert("smtp-password");
        }
    }
    let mut secrets = BTreeMap::new();
    for (k, r) in &s.secrets {
        let p = join("spec.secrets", k);
        if !KNOWN_SECRETS.iter().any(|(n, _)| n == k) {
            let names: Vec<&str> = KNOWN_SECRETS.iter().map(|(n, _)| *n).collect();
            let hint = suggest(k, &names, "known secrets");
            cx.err(&p, format!("unknown secret `{k}`"), hint);
        }
        let sources = [
            r.from_env.is_some(),
            r.from_file.is_some(),
            r.generate_length.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources > 1 {
            cx.err(
                &p,
                format!("secret `{k}` has more than one source"),
                "use exactly one of fromEnv, fromFile, generateLength",
            );
        }
        if let Some(var) = &r.from_env {
            let ok = !var.is_empty()
                && var.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                && !var.as_bytes()[0].is_ascii_digit();
            if !ok {
                cx.err(
                    &join(&p, "fromEnv"),
                    format!("`{}` is not an environment variable name", var.escape_debug()),
                    "use letters, digits and '_', not starting with a digit, e.g. `BSS_REDIS_PASSWORD`",
                );
            }
        }
        if r.generate_length.is_some_and(|n| n < 16) {
            cx.err(
                &join(&p, "generateLength"),
                "generated secrets must have at least 16 characters",
                "use 32",
            );
        }
    }
    for n in needed {
        let source = match s.secrets.get(n) {
            Some(SecretRef {
                from_env: Some(v), ..
            }) => SecretSource::Env { var: v.clone() },
            Some(SecretRef {
                from_file: Some(f), ..
            }) => SecretSource::File {
                path: absolutize(&opts.base_dir, f),
            },
            Some(SecretRef {
                generate_length: Some(l),
                ..
            }) => SecretSource::Generate { length: *l },
            _ => SecretSource::Generate { length: 32 },
        };
        secrets.insert(
            n.to_string(),
            SecretModel {
                name: n.into(),
                file: format!("{}/{n}", paths.secrets),
                source,
            },
        );
    }
    secrets
}

/// The components whose presence decides which secrets exist.
#[derive(Clone, Copy)]
struct UsedSecrets<'a> {
    postgres: Option<&'a PostgresModel>,
    haproxy: Option<&'a HaproxyModel>,
    redis: Option<&'a RedisModel>,
    backend: Option<&'a BackendModel>,
    alertmanager: Option<&'a AlertmanagerModel>,
    exporters: &'a ExportersModel,
}

fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|x| x.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn pg_superuser() -> &'static str {
    "postgres"
}

fn absolutize(base: &Path, p: &str) -> String {
    let pb = Path::new(p);
    if pb.is_absolute() {
        p.to_string()
    } else {
        base.join(pb).to_string_lossy().into_owned()
    }
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((h, p)) => !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// Paths as the components see them: under the state directory on the host, fixed paths in a
/// container.
fn resolve_paths(
    profile: &RuntimeProfile,
    rt: &RuntimeSpec,
    name: &str,
    opts: &ValidateOptions,
) -> Paths {
    match profile.host_state_dir {
        true => {
            let state = match &opts.state_dir {
                Some(d) => d.clone(),
                None => {
                    let d = rt.state_dir.clone().unwrap_or_else(|| ".bssctl".into());
                    PathBuf::from(absolutize(&opts.base_dir, &d))
                }
            };
            let root = state.join(name).to_string_lossy().into_owned();
            Paths {
                config: format!("{root}/config"),
                data: format!("{root}/data"),
                run: format!("{root}/run"),
                logs: format!("{root}/logs"),
                secrets: format!("{root}/secrets"),
                root,
            }
        }
        false => Paths {
            root: "/var/lib/bssctl".into(),
            config: "/etc/bssctl".into(),
            data: "/var/lib/bssctl".into(),
            run: "/run/bssctl".into(),
            logs: "/var/log/bssctl".into(),
            secrets: "/run/secrets/bssctl".into(),
        },
    }
}

fn default_pg_parameters(
    max_slot_wal_keep_size: &str,
    hot_standby_feedback: bool,
) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    for (k, v) in [
        ("max_connections", "200"),
        ("shared_buffers", "128MB"),
        ("wal_level", "replica"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("wal_keep_size", "256MB"),
        ("hot_standby", "on"),
        ("wal_log_hints", "on"),
        ("password_encryption", "scram-sha-256"),
        ("wal_sender_timeout", "5s"),
        ("wal_receiver_timeout", "5s"),
        ("wal_receiver_status_interval", "1s"),
        ("wal_retrieve_retry_interval", "1s"),
        ("log_destination", "stderr"),
        ("logging_collector", "off"),
        ("log_line_prefix", "%m [%p] %q%u@%d "),
        ("log_min_duration_statement", "1s"),
        ("track_io_timing", "on"),
        ("checkpoint_timeout", "5min"),
        ("max_wal_size", "1GB"),
        ("synchronous_commit", "on"),
    ] {
        p.insert(k.to_string(), v.to_string());
    }
    p.insert(
        "max_slot_wal_keep_size".into(),
        max_slot_wal_keep_size.into(),
    );
    p.insert(
        "hot_standby_feedback".into(),
        if hot_standby_feedback { "on" } else { "off" }.into(),
    );
    p
}

#[allow(clippy::too_many_arguments)]
fn build_postgres(
    p: &PostgresSpec,
    paths: &Paths,
    host_of: &dyn Fn(&str) -> String,
    ports: &mut Ports,
    cx: &mut Ctx,
) -> PostgresModel {
    let path = "spec.postgres";
    let replicas = p.replicas.unwrap_or(2);
    if replicas > 15 {
        cx.err(
            &join(path, "replicas"),
            format!("{replicas} replicas is more than bssctl supports"),
            "use at most 15",
        );
    }
    let repl = p.replication.clone().unwrap_or_default();
    let rpath = join(path, "replication");
    let mode = repl.mode.unwrap_or_default();
    let sync_count = repl.sync_count.unwrap_or(1);
    if mode == ReplicationMode::Sync {
        if replicas == 0 {
            cx.err(
                &join(&rpath, "mode"),
                "synchronous replication needs at least one replica: every commit would wait forever",
                "set spec.postgres.replicas to 1 or more, or use mode: async",
            );
        } else if sync_count == 0 || sync_count > replicas {
            cx.err(
                &join(&rpath, "syncCount"),
                format!("syncCount {sync_count} must be between 1 and the number of replicas ({replicas})"),
                "ANY n of the replicas must confirm each commit; 1 is usual",
            );
        }
    } else if repl.sync_count.is_some() {
        cx.err(
            &join(&rpath, "syncCount"),
            "syncCount only applies to mode: sync",
            "remove it or set mode: sync",
        );
    }
    let database = p.database.clone().unwrap_or_else(|| "bss".into());
    let user = p.user.clone().unwrap_or_else(|| "bss_app".into());
    for (field, v) in [("database", &database), ("user", &user)] {
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
            && !v.as_bytes()[0].is_ascii_digit();
        if !ok {
            cx.err(
                &join(path, field),
                format!("`{v}` is not a plain SQL identifier"),
                "use lowercase letters, digits and '_', starting with a letter",
            );
        }
    }
    if ["postgres", "replicator"].contains(&user.as_str()) {
        cx.err(
            &join(path, "user"),
            format!("`{user}` is reserved by bssctl"),
            "use another application role name, e.g. bss_app",
        );
    }
    let (msw, _) = cx.size(
        &join(&rpath, "maxSlotWalKeepSize"),
        repl.max_slot_wal_keep_size.as_ref(),
        "2GB",
    );
    let fo = p.failover.clone().unwrap_or_default();
    let fpath = join(path, "failover");
    let probe_interval = cx.dur(
        &join(&fpath, "probeInterval"),
        fo.probe_interval.as_ref(),
        "500ms",
    );
    let detection_window = cx.dur(
        &join(&fpath, "detectionWindow"),
        fo.detection_window.as_ref(),
        "3s",
    );
    if detection_window.ms < probe_interval.ms * 2 {
        cx.err(
            &join(&fpath, "detectionWindow"),
            format!(
                "detection window {} is shorter than two probe intervals ({})",
                detection_window.text, probe_interval.text
            ),
            "one lost probe would trigger a failover; make the window at least 2x probeInterval",
        );
    }
    let (_, max_lag_bytes) = cx.size(
        &join(&fpath, "maxLagOnFailover"),
        fo.max_lag_on_failover.as_ref(),
        "16MB",
    );

    let base = p.port.map(u32::from).unwrap_or(5432);
    let mut overrides: BTreeMap<u8, &MemberSpec> = BTreeMap::new();
    for (i, m) in p.members.iter().enumerate() {
        let mp = index(&join(path, "members"), i);
        if m.index > replicas {
            cx.err(
                &join(&mp, "index"),
                format!(
                    "member {} does not exist: there are {} members (0-{replicas})",
                    m.index,
                    replicas + 1
                ),
                "index 0 is the initial primary, 1..n the replicas",
            );
        }
        if overrides.insert(m.index, m).is_some() {
            cx.err(
                &join(&mp, "index"),
                format!("member {} is overridden twice", m.index),
                "merge the two entries",
            );
        }
    }
    let members: Vec<PgMember> = (0..=replicas)
        .map(|i| {
            let name = format!("postgres-{i}");
            let ov = overrides.get(&i);
            let (port_path, port) = match ov.and_then(|m| m.port) {
                Some(pt) => {
                    let pos = p.members.iter().position(|m| m.index == i).unwrap_or(0);
                    (join(&index(&join(path, "members"), pos), "port"), pt as u32)
                }
                None => (join(path, "port"), base + i as u32),
            };
            let port = ports.claim(cx, port, &port_path, &format!("postgres member {name}"));
            PgMember {
                name: name.clone(),
                index: i,
                role: if i == 0 { Role::Primary } else { Role::Replica },
                host: host_of(&name),
                port,
                priority: ov.and_then(|m| m.priority).unwrap_or(100),
                slot: format!("postgres_{i}"),
                data_dir: format!("{}/{name}", paths.data),
                socket_dir: format!("{}/{name}", paths.run),
            }
        })
        .collect();
    if mode == ReplicationMode::Sync
        && replicas > 0
        && members.iter().skip(1).all(|m| m.priority == 0)
    {
        cx.err(
            &join(path, "members"),
            "every replica has priority 0: none could take over in synchronous mode",
            "give at least one replica a priority above 0",
        );
    }

    let mut parameters = default_pg_parameters(&msw, repl.hot_standby_feedback.unwrap_or(true));
    for (k, v) in &p.parameters {
        let pp = join(&join(path, "parameters"), k);
        let valid_name = !k.is_empty()
            && k.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'.')
            && k.as_bytes()[0].is_ascii_lowercase();
        if !valid_name {
            cx.err(
                &pp,
                format!("`{k}` is not a PostgreSQL parameter name"),
                "parameter names are lowercase, e.g. shared_buffers",
            );
            continue;
        }
        if let Some((_, why)) = MANAGED_PARAMETERS.iter().find(|(n, _)| n == k) {
            cx.err(&pp, format!("parameter `{k}` is managed by bssctl"), *why);
            continue;
        }
        if let Some(why) = refused_parameter(k) {
            cx.err(
                &pp,
                format!("parameter `{k}` is not accepted from a topology"),
                format!("remove it: {why}"),
            );
            continue;
        }
        let value = v.to_string();
        if value.contains('\n') {
            cx.err(
                &pp,
                "parameter values cannot span lines",
                "write the value on one line",
            );
            continue;
        }
        parameters.insert(k.clone(), value);
    }

    let mut model = PostgresModel {
        database,
        user,
        replication_user: "replicator".into(),
        superuser: pg_superuser().into(),
        passfile: format!("{}/pgpass", paths.secrets),
        primary: "postgres-0".into(),
        members,
        mode,
        sync_count,
        synchronous_standby_names: String::new(),
        slots: repl.slots.unwrap_or(true),
        hot_standby_feedback: repl.hot_standby_feedback.unwrap_or(true),
        max_slot_wal_keep_size: msw,
        failover: FailoverModel {
            enabled: fo.enabled.unwrap_or(true),
            probe_interval,
            detection_window,
            max_lag_bytes,
        },
        parameters,
    };
    model.synchronous_standby_names = synchronous_standby_names(&model);
    model
}

fn build_envoy(
    e: &EnvoySpec,
    backend: &Option<BackendModel>,
    paths: &Paths,
    host_of: &dyn Fn(&str) -> String,
    ports: &mut Ports,
    cx: &mut Ctx,
) -> EnvoyModel {
    let path = "spec.envoy";
    let admin_port = ports.port(
        cx,
        e.admin_port,
        15000,
        &join(path, "adminPort"),
        "envoy admin",
    );
    let t = e.timeouts.clone().unwrap_or_default();
    let tp = join(path, "timeouts");
    let connect_timeout = cx.dur(&join(&tp, "connect"), t.connect.as_ref(), "1s");
    let request_timeout = cx.dur(&join(&tp, "request"), t.request.as_ref(), "15s");
    let idle_timeout = cx.dur(&join(&tp, "idle"), t.idle.as_ref(), "300s");
    let r = e.retries.clone().unwrap_or_default();
    let rp = join(path, "retries");
    let retry_on = r
        .retry_on
        .clone()
        .unwrap_or_else(|| "5xx,reset,connect-failure".into());
    const RETRY_ON: &[&str] = &[
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
    ];
    for cond in retry_on.split(',') {
        if !RETRY_ON.contains(&cond.trim()) {
            let hint = suggest(cond.trim(), RETRY_ON, "conditions");
            cx.err(
                &join(&rp, "retryOn"),
                format!("unknown retry condition `{}`", cond.trim()),
                hint,
            );
        }
    }
    let per_try_timeout = cx.dur(
        &join(&rp, "perTryTimeout"),
        r.per_try_timeout.as_ref(),
        "5s",
    );
    let cb = e.circuit_breakers.clone().unwrap_or_default();

    // Clusters: the implicit backend cluster, then the declared ones.
    let mut clusters: Vec<ClusterModel> = Vec::new();
    if let Some(b) = backend {
        clusters.push(ClusterModel {
            name: "backend".into(),
            endpoints: vec![b.endpoint.clone()],
            health_path: None,
        });
    }
    for (i, c) in e.clusters.iter().enumerate() {
        let cp = index(&join(path, "clusters"), i);
        if !is_dns_label(&c.name, 63) {
            cx.err(
                &join(&cp, "name"),
                format!("cluster name `{}` is not DNS-safe", c.name),
                "use lowercase letters, digits and '-'",
            );
        }
        if clusters.iter().any(|x| x.name == c.name) {
            let why = if c.name == "backend" {
                " (the backend component defines it)"
            } else {
                ""
            };
            cx.err(
                &join(&cp, "name"),
                format!("cluster `{}` is defined twice{why}", c.name),
                "rename one of them",
            );
        }
        if c.endpoints.is_empty() {
            cx.err(
                &join(&cp, "endpoints"),
                format!("cluster `{}` has no endpoints", c.name),
                "add at least one `host:port`",
            );
        }
        let mut eps = Vec::new();
        for (j, ep) in c.endpoints.iter().enumerate() {
            match ep
                .rsplit_once(':')
                .and_then(|(h, p)| p.parse::<u16>().ok().filter(|p| *p > 0).map(|p| (h, p)))
            {
                Some((h, p)) if !h.is_empty() => eps.push(Endpoint {
                    host: h.into(),
                    port: p,
                }),
                _ => cx.err(
                    &index(&join(&cp, "endpoints"), j),
                    format!("`{ep}` is not host:port"),
                    "e.g. `127.0.0.1:8081`",
                ),
            }
        }
        clusters.push(ClusterModel {
            name: c.name.clone(),
            endpoints: eps,
            health_path: c.health_path.clone(),
        });
    }
    let hc = e.health_check.clone().unwrap_or_default();
    let hp = join(path, "healthCheck");
    let health_check = HealthCheckModel {
        path: hc.path.clone().unwrap_or_else(|| "/health/ready".into()),
        interval: cx.dur(&join(&hp, "interval"), hc.interval.as_ref(), "5s"),
        timeout: cx.dur(&join(&hp, "timeout"), hc.timeout.as_ref(), "2s"),
        unhealthy_threshold: hc.unhealthy_threshold.unwrap_or(3),
        healthy_threshold: hc.healthy_threshold.unwrap_or(2),
    };
    if let Some(b) = clusters.iter_mut().find(|c| c.name == "backend") {
        b.health_path = Some(health_check.path.clone());
    }

    let default_listener = ListenerSpec {
        name: "ingress".into(),
        port: 15006,
        routes: vec![
            RouteSpec {
                prefix: "/api/".into(),
                cluster: "backend".into(),
                ..Default::default()
            },
            RouteSpec {
                prefix: "/health".into(),
                cluster: "backend".into(),
                prefix_rewrite: Some("/health/ready".into()),
                rate_limited: Some(false),
                retries: Some(false),
                timeout: None,
            },
        ],
    };
    let using_default = e.listeners.is_empty();
    let specs: Vec<ListenerSpec> = if using_default {
        vec![default_listener]
    } else {
        e.listeners.clone()
    };
    let mut names = BTreeSet::new();
    let mut listeners = Vec::new();
    for (i, l) in specs.iter().enumerate() {
        let lp = if using_default {
            path.to_string()
        } else {
            index(&join(path, "listeners"), i)
        };
        if !is_dns_label(&l.name, 63) {
            cx.err(
                &join(&lp, "name"),
                format!("listener name `{}` is not DNS-safe", l.name),
                "use lowercase letters, digits and '-'",
            );
        }
        if !names.insert(l.name.clone()) {
            cx.err(
                &join(&lp, "name"),
                format!("listener `{}` is defined twice", l.name),
                "rename one of them",
            );
        }
        let port = ports.claim(
            cx,
            u32::from(l.port),
            &join(&lp, "port"),
            &format!("envoy listener {}", l.name),
        );
        if l.routes.is_empty() {
            cx.err(
                &join(&lp, "routes"),
                format!("listener `{}` has no routes", l.name),
                "add e.g. `{prefix: /api/, cluster: backend}`",
            );
        }
        let mut routes = Vec::new();
        for (j, rt) in l.routes.iter().enumerate() {
            let rp = if using_default {
                path.to_string()
            } else {
                index(&join(&lp, "routes"), j)
            };
            if !rt.prefix.starts_with('/') {
                cx.err(
                    &join(&rp, "prefix"),
                    format!("route prefix `{}` must start with '/'", rt.prefix),
                    "e.g. `/api/`",
                );
            }
            if !clusters.iter().any(|c| c.name == rt.cluster) {
                let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
                // `backend` is a candidate even when the topology has no backend: it is the
                // cluster a typo most likely meant.
                let mut candidates = known.clone();
                if !candidates.contains(&"backend") {
                    candidates.push("backend");
                }
                let no_backend = "the `backend` cluster exists when the topology has `backend: {}`";
                let hint = match did_you_mean(&rt.cluster, candidates.iter().copied()) {
                    Some("backend") if !known.contains(&"backend") && rt.cluster != "backend" => {
                        format!("did you mean `backend`? ({no_backend})")
                    }
                    _ if rt.cluster == "backend" => format!(
                        "{no_backend}; add it or declare the cluster under spec.envoy.clusters"
                    ),
                    Some(m) => format!("did you mean `{m}`?"),
                    None if known.is_empty() => "declare it under spec.envoy.clusters".to_string(),
                    None => format!(
                        "known clusters: {}; or declare it under spec.envoy.clusters",
                        known.join(", ")
                    ),
                };
                cx.err(
                    &join(&rp, "cluster"),
                    format!(
                        "route `{}` goes to unknown cluster `{}`",
                        rt.prefix, rt.cluster
                    ),
                    hint,
                );
            }
            let timeout = match &rt.timeout {
                Some(tv) => cx.dur(&join(&rp, "timeout"), Some(tv), "15s"),
                None => request_timeout.clone(),
            };
            routes.push(RouteModel {
                prefix: rt.prefix.clone(),
                cluster: rt.cluster.clone(),
                prefix_rewrite: rt.prefix_rewrite.clone(),
                timeout,
                rate_limited: rt.rate_limited.unwrap_or(true),
                retries: rt.retries.unwrap_or(true),
            });
        }
        listeners.push(ListenerModel {
            name: l.name.clone(),
            port,
            routes,
        });
    }

    let rl = e.rate_limit.clone().unwrap_or_default();
    let rlp = join(path, "rateLimit");
    let rate_limit = if rl.enabled.unwrap_or(true) {
        let max_tokens = rl.max_tokens.unwrap_or(100);
        let tokens_per_fill = rl.tokens_per_fill.unwrap_or(10);
        if max_tokens == 0 {
            cx.err(
                &join(&rlp, "maxTokens"),
                "maxTokens must be at least 1",
                "the seeds use 100",
            );
        }
        if tokens_per_fill == 0 {
            cx.err(
                &join(&rlp, "tokensPerFill"),
                "tokensPerFill must be at least 1",
                "the seeds use 10",
            );
        }
        let fill_interval = cx.dur(
            &join(&rlp, "fillInterval"),
            rl.fill_interval.as_ref(),
            "60s",
        );
        if fill_interval.ms < 50 {
            cx.err(
                &join(&rlp, "fillInterval"),
                "Envoy's token bucket needs a fill interval of at least 50ms",
                "e.g. `1s`",
            );
        }
        Some(RateLimitModel {
            max_tokens,
            tokens_per_fill,
            fill_interval,
        })
    } else {
        None
    };
    let cors_spec = e.cors.clone().unwrap_or_default();
    let cors = cors_spec.enabled.unwrap_or(true).then(|| {
        let origins = if cors_spec.allow_origins.is_empty() {
            vec!["*".to_string()]
        } else {
            cors_spec.allow_origins.clone()
        };
        let methods = if cors_spec.allow_methods.is_empty() {
            vec!["GET", "POST", "PUT", "DELETE", "OPTIONS"]
                .into_iter()
                .map(String::from)
                .collect()
        } else {
            cors_spec.allow_methods.clone()
        };
        let headers = if cors_spec.allow_headers.is_empty() {
            vec!["content-type", "authorization", "x-api-key", "x-request-id"]
                .into_iter()
                .map(String::from)
                .collect()
        } else {
            cors_spec.allow_headers.clone()
        };
        CorsModel {
            any_origin: origins.iter().any(|o| o == "*"),
            allow_origins: origins.into_iter().filter(|o| o != "*").collect(),
            allow_methods: methods.join(","),
            allow_headers: headers.join(","),
            max_age_seconds: cors_spec.max_age_seconds.unwrap_or(86400),
        }
    });
    EnvoyModel {
        admin: Endpoint {
            host: host_of("envoy"),
            port: admin_port,
        },
        admin_socket: format!("{}/envoy/admin.sock", paths.run),
        listeners,
        clusters,
        connect_timeout,
        request_timeout,
        idle_timeout,
        retry_on,
        num_retries: r.num_retries.unwrap_or(3),
        per_try_timeout,
        max_connections: cb.max_connections.unwrap_or(100),
        max_pending_requests: cb.max_pending_requests.unwrap_or(100),
        max_requests: cb.max_requests.unwrap_or(100),
        max_retries: cb.max_retries.unwrap_or(3),
        rate_limit,
        cors,
        health_check,
    }
}

fn build_alertmanager(
    a: &AlertmanagerSpec,
    agent: &Endpoint,
    paths: &Paths,
    host_of: &dyn Fn(&str) -> String,
    ports: &mut Ports,
    cx: &mut Ctx,
) -> AlertmanagerModel {
    let path = "spec.alertmanager";
    let port = ports.port(cx, a.port, 9093, &join(path, "port"), "alertmanager");
    // Alertmanager also opens a cluster (gossip) port; bssctl runs it single-node with gossip off.
    let sink = |r: &str| WebhookModel {
        url: format!("http://{}/alerts/{r}", agent.addr()),
        send_resolved: true,
    };
    let receivers: Vec<ReceiverModel> = if a.receivers.is_empty() {
        let mut v = vec!["default".to_string(), "critical".into(), "warning".into()];
        v.extend(TEAMS.iter().map(|t| format!("team-{t}")));
        v.into_iter()
            .map(|n| ReceiverModel {
                webhook: vec![sink(&n)],
                name: n,
                email: vec![],
                slack: vec![],
            })
            .collect()
    } else {
        let mut names = BTreeSet::new();
        a.receivers
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let rp = index(&join(path, "receivers"), i);
                if !names.insert(r.name.clone()) {
                    cx.err(
                        &join(&rp, "name"),
                        format!("receiver `{}` is defined twice", r.name),
                        "receiver names must be unique",
                    );
                }
                if r.name.trim().is_empty() {
                    cx.err(
                        &join(&rp, "name"),
                        "receiver name is empty",
                        "give the receiver a name",
                    );
                }
                for (j, w) in r.webhook.iter().enumerate() {
                    if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                        cx.err(
                            &join(&index(&join(&rp, "webhook"), j), "url"),
                            format!("`{}` is not an http(s) URL", w.url),
                            "e.g. `http://127.0.0.1:5001/hook`",
                        );
                    }
                }
                for (j, e) in r.email.iter().enumerate() {
                    if !e.to.contains('@') {
                        cx.err(
                            &join(&index(&join(&rp, "email"), j), "to"),
                            format!("`{}` is not an e-mail address", e.to),
                            "e.g. `oncall@example.com`",
                        );
                    }
                }
                for (j, s) in r.slack.iter().enumerate() {
                    if let Some(sec) = &s.api_url_secret {
                        if sec != "slack-webhook-url" {
                            cx.err(
                                &join(&index(&join(&rp, "slack"), j), "apiUrlSecret"),
                                format!("unknown secret `{sec}`"),
                                "use `slack-webhook-url` (set its source under spec.secrets)",
                            );
                        }
                    }
                }
                ReceiverModel {
                    name: r.name.clone(),
                    email: r
                        .email
                        .iter()
                        .map(|e| EmailModel {
                            to: e.to.clone(),
                            send_resolved: e.send_resolved.unwrap_or(true),
                        })
                        .collect(),
                    slack: r
                        .slack
                        .iter()
                        .map(|s| SlackModel {
                            channel: s.channel.clone(),
                            api_url_file: format!("{}/slack-webhook-url", paths.secrets),
                            send_resolved: s.send_resolved.unwrap_or(true),
                        })
                        .collect(),
                    webhook: r
                        .webhook
                        .iter()
                        .map(|w| WebhookModel {
                            url: w.url.clone(),
                            send_resolved: w.send_resolved.unwrap_or(true),
                        })
                        .collect(),
                }
            })
            .collect()
    };
    let names: Vec<String> = receivers.iter().map(|r| r.name.clone()).collect();
    let mut check_receiver = |cx: &mut Ctx, p: &str, r: &str| {
        if !names.iter().any(|n| n == r) {
            let hint = suggest(
                r,
                &names.iter().map(String::as_str).collect::<Vec<_>>(),
                "receivers",
            );
            cx.err(p, format!("route goes to unknown receiver `{r}`"), hint);
        }
    };
    let route = match &a.route {
        None => {
            let mut routes = vec![
                ChildRouteModel {
                    receiver: "critical".into(),
                    matchers: vec!["severity=\"critical\"".into()],
                    group_wait: Some(Dur::from_ms(5_000)),
                    repeat_interval: Some(Dur::from_ms(15 * 60_000)),
                    continue_: true,
                    routes: vec![],
                },
                ChildRouteModel {
                    receiver: "warning".into(),
                    matchers: vec!["severity=\"warning\"".into()],
                    group_wait: Some(Dur::from_ms(30_000)),
                    repeat_interval: Some(Dur::from_ms(2 * 3_600_000)),
                    continue_: true,
                    routes: vec![],
                },
            ];
            for t in TEAMS {
                routes.push(ChildRouteModel {
                    receiver: format!("team-{t}"),
                    matchers: vec![format!("team=\"{t}\"")],
                    group_wait: None,
                    repeat_interval: None,
                    continue_: false,
                    routes: vec![],
                });
            }
            if !a.receivers.is_empty() {
                // Custom receivers without a route tree: everything goes to the first receiver.
                routes.clear();
            }
            RouteTreeModel {
                receiver: names.first().cloned().unwrap_or_else(|| "default".into()),
                group_by: vec!["alertname".into(), "service".into(), "severity".into()],
                group_wait: Dur::from_ms(10_000),
                group_interval: Dur::from_ms(60_000),
                repeat_interval: Dur::from_ms(4 * 3_600_000),
                routes,
            }
        }
        Some(rt) => {
            let rp = join(path, "route");
            check_receiver(cx, &join(&rp, "receiver"), &rt.receiver);
            fn child(
                cx: &mut Ctx,
                p: &str,
                c: &ChildRouteSpec,
                check: &mut dyn FnMut(&mut Ctx, &str, &str),
            ) -> ChildRouteModel {
                check(cx, &join(p, "receiver"), &c.receiver);
                for (i, m) in c.matchers.iter().enumerate() {
                    if !is_matcher(m) {
                        cx.err(&index(&join(p, "matchers"), i), format!("`{m}` is not a matcher"), "write label=\"value\", label!=\"value\", label=~\"regex\" or label!~\"regex\"");
                    }
                }
                let group_wait = c
                    .group_wait
                    .as_ref()
                    .map(|g| cx.dur(&join(p, "groupWait"), Some(g), "30s"));
                let repeat_interval = c
                    .repeat_interval
                    .as_ref()
                    .map(|g| cx.dur(&join(p, "repeatInterval"), Some(g), "4h"));
                ChildRouteModel {
                    receiver: c.receiver.clone(),
                    matchers: c.matchers.clone(),
                    group_wait,
                    repeat_interval,
                    continue_: c.continue_.unwrap_or(false),
                    routes: c
                        .routes
                        .iter()
                        .enumerate()
                        .map(|(i, cc)| child(cx, &index(&join(p, "routes"), i), cc, check))
                        .collect(),
                }
            }
            let routes = rt
                .routes
                .iter()
                .enumerate()
                .map(|(i, c)| child(cx, &index(&join(&rp, "routes"), i), c, &mut check_receiver))
                .collect();
            check_label_names(cx, &join(&rp, "groupBy"), &rt.group_by, true);
            RouteTreeModel {
                receiver: rt.receiver.clone(),
                group_by: if rt.group_by.is_empty() {
                    vec!["alertname".into(), "service".into()]
                } else {
                    rt.group_by.clone()
                },
                group_wait: cx.dur(&join(&rp, "groupWait"), rt.group_wait.as_ref(), "10s"),
                group_interval: cx.dur(
                    &join(&rp, "groupInterval"),
                    rt.group_interval.as_ref(),
                    "1m",
                ),
                repeat_interval: cx.dur(
                    &join(&rp, "repeatInterval"),
                    rt.repeat_interval.as_ref(),
                    "4h",
                ),
                routes,
            }
        }
    };
    let inhibit_rules = match &a.inhibit_rules {
        None => vec![
            InhibitRuleModel {
                source_matchers: vec!["severity=\"critical\"".into()],
                target_matchers: vec!["severity=\"warning\"".into()],
                equal: vec!["service".into(), "instance".into()],
            },
            InhibitRuleModel {
                source_matchers: vec!["alertname=\"ServiceDown\"".into()],
                target_matchers: vec!["alertname!=\"ServiceDown\"".into()],
                equal: vec!["service".into()],
            },
        ],
        Some(rules) => rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let ip = index(&join(path, "inhibitRules"), i);
                for (f, ms) in [("sourceMatchers", &r.source_matchers), ("targetMatchers", &r.target_matchers)] {
                    for (j, m) in ms.iter().enumerate() {
                        if !is_matcher(m) {
                            cx.err(&index(&join(&ip, f), j), format!("`{m}` is not a matcher"), "write label=\"value\", label!=\"value\", label=~\"regex\" or label!~\"regex\"");
                        }
                    }
                }
                check_label_names(cx, &join(&ip, "equal"), &r.equal, false);
                InhibitRuleModel { source_matchers: r.source_matchers.clone(), target_matchers: r.target_matchers.clone(), equal: r.equal.clone() }
            })
            .collect(),
    };
    let smtp = a.smtp.as_ref().map(|s| {
        if let Some(sec) = s.auth_password_secret.as_deref() {
            if sec != "smtp-password" {
                cx.err(
                    &join(path, "smtp.authPasswordSecret"),
                    format!("unknown secret `{}`", sec.escape_debug()),
                    "use `smtp-password` (set its source under spec.secrets)",
                );
            }
        }
        if !is_host_port(&s.smarthost) {
            cx.err(
                &join(path, "smtp.smarthost"),
                format!("`{}` is not host:port", s.smarthost),
                "e.g. `smtp.example.com:587`",
            );
        }
        SmtpModel {
            smarthost: s.smarthost.clone(),
            from: s.from.clone(),
            auth_username: s.auth_username.clone(),
            auth_password_file: s
                .auth_username
                .as_ref()
                .map(|_| format!("{}/smtp-password", paths.secrets)),
            require_tls: s.require_tls.unwrap_or(true),
        }
    });
    if smtp.is_none() {
        if let Some(i) = a.receivers.iter().position(|r| !r.email.is_empty()) {
            cx.err(
                &join(&index(&join(path, "receivers"), i), "email"),
                "e-mail receivers need an SMTP server",
                "add spec.alertmanager.smtp with smarthost and from",
            );
        }
    }
    AlertmanagerModel {
        endpoint: Endpoint {
            host: host_of("alertmanager"),
            port,
        },
        receivers,
        route,
        inhibit_rules,
        smtp,
        data_dir: format!("{}/alertmanager", paths.data),
        web_auth: Some(WebAuthModel {
            user: WEB_USER.into(),
            password_secret: "alertmanager-web-password".into(),
            web_config: format!("{}/alertmanager-web.yml", paths.secrets),
        }),
    }
}

/// The user name Prometheus and bssctl's probes send to basic-auth protected components.
pub const WEB_USER: &str = "bssctl";

/// Redis' ACL users. Each client gets only what it sends: the backend its cache commands on
/// `bss:*` keys (backend/src/cache.rs: MGET, SETEX, INCRBY (redis-rs `incr`), EXPIRE, DEL, SCAN and
/// UNLINK for resync, PING; no pub/sub, invalidation comes from PostgreSQL), redis_exporter its
/// metrics commands and no keys, bssctl's probe PING and INFO. `default` is off.
fn redis_acl(paths: &Paths) -> RedisAclModel {
    let user = |name: &str, secret: &str, rules: &str| RedisUserModel {
        name: name.into(),
        password_secret: secret.into(),
        rules: rules.into(),
    };
    RedisAclModel {
        file: format!("{}/redis-acl.conf", paths.secrets),
        exporter_password_map: format!("{}/redis-exporter-passwords.json", paths.secrets),
        users: vec![
            user(REDIS_ADMIN_USER, "redis-password", "~* &* +@all"),
            user(
                REDIS_BACKEND_USER,
                "redis-backend-password",
                "~bss:* resetchannels -@all +ping +select +mget +setex +set +incr +incrby +expire +del +unlink +scan",
            ),
            user(
                REDIS_EXPORTER_USER,
                "redis-exporter-password",
                "resetkeys resetchannels -@all +ping +select +info +client|setname +client|list +config|get +slowlog|get +slowlog|len +latency|latest +latency|histogram +memory|stats +module|list +cluster|info",
            ),
            user(
                REDIS_PROBE_USER,
                "redis-probe-password",
                "resetkeys resetchannels -@all +ping +info",
            ),
        ],
    }
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

fn check_label_names(cx: &mut Ctx, path: &str, names: &[String], allow_all: bool) {
    for (i, n) in names.iter().enumerate() {
        if !(is_label_name(n) || (allow_all && n == "...")) {
            cx.err(
                &index(path, i),
                format!("`{}` is not a label name", n.escape_debug()),
                "label names are letters, digits and '_', not starting with a digit, e.g. `alertname`",
            );
        }
    }
}

fn is_matcher(m: &str) -> bool {
    for op in ["!=", "=~", "!~", "="] {
        if let Some((l, r)) = m.split_once(op) {
            let l = l.trim();
            let r = r.trim();
            return !l.is_empty()
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                && !l.as_bytes()[0].is_ascii_digit()
                && r.len() >= 2
                && r.starts_with('"')
                && r.ends_with('"')
                && go_quoted_body(&r[1..r.len() - 1]);
        }
    }
    false
}

/// The inside of a Go double-quoted string: every `"` escaped, no dangling backslash.
fn go_quoted_body(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => return false,
            '"' => return false,
            _ => {}
        }
    }
    true
}

fn build_alerts(a: AlertsSpec, cx: &mut Ctx) -> AlertsModel {
    let path = "spec.alerts";
    for (i, g) in a.disabled_groups.iter().enumerate() {
        if !SEED_ALERT_GROUPS.contains(&g.as_str()) {
            let hint = suggest(g, SEED_ALERT_GROUPS, "groups");
            cx.err(
                &index(&join(path, "disabledGroups"), i),
                format!("unknown alert group `{g}`"),
                hint,
            );
        }
    }
    let groups = SEED_ALERT_GROUPS
        .iter()
        .filter(|g| !a.disabled_groups.iter().any(|d| d == *g))
        .map(|g| g.to_string())
        .collect();
    let th = a.thresholds.clone().unwrap_or_default();
    let tp = join(path, "thresholds");
    let pos = |cx: &mut Ctx, f: &str, v: Option<f64>, d: f64| {
        let x = v.unwrap_or(d);
        if x.is_nan() || x < 0.0 {
            cx.err(
                &join(&tp, f),
                format!("{x} must be a positive number"),
                "e.g. 30",
            );
        }
        x
    };
    let thresholds = ThresholdsModel {
        service_down_for: cx.dur(
            &join(&tp, "serviceDownFor"),
            th.service_down_for.as_ref(),
            "1m",
        ),
        cpu_busy_ratio: cx.ratio(&join(&tp, "cpuBusyRatio"), th.cpu_busy_ratio, 0.85),
        memory_used_ratio: cx.ratio(&join(&tp, "memoryUsedRatio"), th.memory_used_ratio, 0.90),
        disk_used_ratio: cx.ratio(&join(&tp, "diskUsedRatio"), th.disk_used_ratio, 0.85),
        replication_lag_seconds: pos(
            cx,
            "replicationLagSeconds",
            th.replication_lag_seconds,
            30.0,
        ),
        pg_connections_ratio: cx.ratio(
            &join(&tp, "pgConnectionsRatio"),
            th.pg_connections_ratio,
            0.80,
        ),
        redis_memory_ratio: cx.ratio(&join(&tp, "redisMemoryRatio"), th.redis_memory_ratio, 0.90),
        cache_hit_ratio: cx.ratio(&join(&tp, "cacheHitRatio"), th.cache_hit_ratio, 0.70),
        outbox_pending: pos(cx, "outboxPending", th.outbox_pending, 1000.0),
        http_error_ratio: cx.ratio(&join(&tp, "httpErrorRatio"), th.http_error_ratio, 0.01),
        http_p99_seconds: pos(cx, "httpP99Seconds", th.http_p99_seconds, 0.5),
        min_events_per_second: pos(cx, "minEventsPerSecond", th.min_events_per_second, 1.0),
    };
    let mut custom = Vec::new();
    let mut names = BTreeSet::new();
    for (i, r) in a.rules.iter().enumerate() {
        let rp = index(&join(path, "rules"), i);
        let valid = !r.alert.is_empty()
            && r.alert
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_')
            && !r.alert.as_bytes()[0].is_ascii_digit();
        if !valid {
            cx.err(
                &join(&rp, "alert"),
                format!("`{}` is not a valid alert name", r.alert),
                "use letters, digits and '_', e.g. `OrdersStuck`",
            );
        }
        if !names.insert(r.alert.clone()) {
            cx.err(
                &join(&rp, "alert"),
                format!("custom alert `{}` is defined twice", r.alert),
                "rename one of them",
            );
        }
        if r.expr.trim().is_empty() {
            cx.err(
                &join(&rp, "expr"),
                "the alert has no expression",
                "write a PromQL expression, e.g. `up == 0`",
            );
        }
        let severity = r.severity.clone().unwrap_or_else(|| "warning".into());
        if !["critical", "warning", "info"].contains(&severity.as_str()) {
            cx.err(
                &join(&rp, "severity"),
                format!("unknown severity `{severity}`"),
                suggest(&severity, &["critical", "warning", "info"], "one of"),
            );
        }
        let team = r.team.clone().unwrap_or_else(|| "sre".into());
        if !TEAMS.contains(&team.as_str()) {
            let hint = suggest(&team, TEAMS, "teams");
            cx.err(&join(&rp, "team"), format!("unknown team `{team}`"), hint);
        }
        for (field, v) in [("summary", &r.summary), ("description", &r.description)] {
            if let Some(r) = v.as_deref().and_then(syntax::prom_template) {
                cx.err(&join(&rp, field), format!("`{field}` {}", r.reason), r.hint);
            }
        }
        custom.push(CustomRuleModel {
            alert: r.alert.clone(),
            expr: r.expr.clone(),
            for_: cx.dur(&join(&rp, "for"), r.for_.as_ref(), "1m"),
            severity,
            team,
            summary: r.summary.clone().unwrap_or_else(|| r.alert.clone()),
            description: r.description.clone().unwrap_or_default(),
        });
    }
    AlertsModel {
        groups,
        thresholds,
        custom,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration("15d"), Some(15 * 86_400_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(Dur::from_ms(500).pb, "0.500s");
        assert_eq!(Dur::from_ms(90_000).text, "90s");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("16MB"), Some(16 << 20));
        assert_eq!(parse_bytes("256mb"), Some(256 << 20));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("MB"), None);
    }

    #[test]
    fn matchers() {
        assert!(is_matcher("severity=\"critical\""));
        assert!(is_matcher("alertname!=\"ServiceDown\""));
        assert!(is_matcher("team=~\"db|cache\""));
        assert!(!is_matcher("severity=critical"));
        assert!(!is_matcher("=\"x\""));
        assert!(!is_matcher("a=\"x\"\""));
        assert!(!is_matcher("a=\"x\\\""));
        assert!(is_matcher("a=\"x\\\"y\""));
    }
}
