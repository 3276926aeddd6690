//! `ValidatedTopology`: the topology with every default applied and every name, port, address and
//! path resolved for one runtime. Renderers and runtimes only ever see this type.
//!
//! It is a plain serialisable value: the templates receive it as their context, so field names here
//! are the names templates use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::profile::RuntimeProfile;
use super::types::{KafkaStorage, ReplicationMode, RuntimeKind};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ValidatedTopology {
    pub name: String,
    pub namespace: String,
    pub runtime: RuntimeKind,
    /// What differs between runtimes: bind address, component host names, trusted network.
    pub profile: RuntimeProfile,
    pub paths: Paths,
    pub agent: Endpoint,
    pub labels: BTreeMap<String, String>,
    pub images: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, SecretModel>,
    pub postgres: Option<PostgresModel>,
    pub haproxy: Option<HaproxyModel>,
    pub envoy: Option<EnvoyModel>,
    pub redis: Option<RedisModel>,
    pub kafka: Option<KafkaModel>,
    pub prometheus: Option<PrometheusModel>,
    pub alerts: Option<AlertsModel>,
    pub alertmanager: Option<AlertmanagerModel>,
    pub exporters: ExportersModel,
    pub backend: Option<BackendModel>,
    pub processors: Vec<ProcessorModel>,
}

/// Where things live for this environment. Absolute on the local runtime; fixed container paths on
/// docker/kubernetes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Paths {
    /// Root of this environment's state (`<stateDir>/<name>` locally).
    pub root: String,
    /// Rendered configuration, one directory per component: `<config>/<component>/...`.
    pub config: String,
    /// Data directories, one per component.
    pub data: String,
    /// Sockets and pid files.
    pub run: String,
    pub logs: String,
    /// Secret files (0600), one per secret: `<secrets>/<secret-name>`.
    pub secrets: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    /// Host other components use to reach this one.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A duration as written (`500ms`, `5s`, `15d`) with its value, in the forms the tools accept.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dur {
    /// Go/Prometheus/HAProxy style, e.g. `500ms`, `5s`, `2h`, `15d`.
    pub text: String,
    pub ms: u64,
    /// Whole seconds (rounded down).
    pub secs: u64,
    /// Protobuf JSON style for Envoy, e.g. `0.500s`.
    pub pb: String,
}

impl Dur {
    pub fn from_ms(ms: u64) -> Dur {
        let text = if ms == 0 {
            "0s".to_string()
        } else if ms % 86_400_000 == 0 {
            format!("{}d", ms / 86_400_000)
        } else if ms % 3_600_000 == 0 {
            format!("{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            format!("{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        };
        let pb = if ms % 1000 == 0 {
            format!("{}s", ms / 1000)
        } else {
            format!("{}.{:03}s", ms / 1000, ms % 1000)
        };
        Dur {
            text,
            ms,
            secs: ms / 1000,
            pb,
        }
    }
}

/// A secret the stack needs. Its value never appears in a rendered file: configs refer to `file`
/// (or to an environment variable the runtime fills from it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SecretModel {
    pub name: String,
    /// Absolute path of the 0600 file holding the value.
    pub file: String,
    pub source: SecretSource,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SecretSource {
    Generate { length: u16 },
    Env { var: String },
    File { path: String },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PostgresModel {
    pub database: String,
    pub user: String,
    /// Role used by replicas and pg_rewind.
    pub replication_user: String,
    /// Superuser bssctl uses for setup, probes and promotion.
    pub superuser: String,
    /// libpq password file replicas use for `primary_conninfo` (written by the runtime, 0600).
    pub passfile: String,
    /// Name of the member that is primary in this rendering (member 0 unless failover moved it).
    pub primary: String,
    pub members: Vec<PgMember>,
    pub mode: ReplicationMode,
    pub sync_count: u8,
    /// `ANY n (a, b)` or empty in async mode.
    pub synchronous_standby_names: String,
    pub slots: bool,
    pub hot_standby_feedback: bool,
    pub max_slot_wal_keep_size: String,
    pub failover: FailoverModel,
    /// Final postgresql.conf parameters shared by every member (defaults merged with overrides),
    /// sorted by name. Member-specific lines (port, primary_conninfo, ...) are added by the template.
    pub parameters: BTreeMap<String, String>,
}

impl PostgresModel {
    pub fn member(&self, name: &str) -> Option<&PgMember> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn primary_member(&self) -> Option<&PgMember> {
        self.member(&self.primary)
    }

    pub fn replicas(&self) -> impl Iterator<Item = &PgMember> {
        self.members.iter().filter(|m| m.role == Role::Replica)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PgMember {
    /// `postgres-<index>`; stable across failovers (roles move, names do not).
    pub name: String,
    pub index: u8,
    pub role: Role,
    pub host: String,
    pub port: u16,
    pub priority: u8,
    /// Physical slot this member uses when it is a replica (`postgres_<index>`).
    pub slot: String,
    /// Data directory.
    pub data_dir: String,
    /// Unix socket directory.
    pub socket_dir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailoverModel {
    pub enabled: bool,
    pub probe_interval: Dur,
    pub detection_window: Dur,
    pub max_lag_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HaproxyModel {
    pub write: Endpoint,
    pub read: Endpoint,
    pub balance: String,
    pub check_interval: Dur,
    pub check_timeout: Dur,
    pub rise: u8,
    pub fall: u8,
    pub stats: Option<StatsModel>,
    pub max_connections: u32,
    pub idle_timeout: Dur,
    /// Runtime API socket (admin level), used for instant failover switches.
    pub admin_socket: String,
    pub pid_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsModel {
    pub port: u16,
    pub user: String,
    /// Secret whose value is the stats password (passed to haproxy as an environment variable).
    pub password_secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnvoyModel {
    /// The stats listener: only `GET /stats/prometheus` and `GET /ready`, forwarded to the admin.
    pub admin: Endpoint,
    /// The admin interface itself: a unix socket (mode 0600), never TCP.
    #[serde(default)]
    pub admin_socket: String,
    pub listeners: Vec<ListenerModel>,
    pub clusters: Vec<ClusterModel>,
    pub connect_timeout: Dur,
    pub request_timeout: Dur,
    pub idle_timeout: Dur,
    pub retry_on: String,
    pub num_retries: u32,
    pub per_try_timeout: Dur,
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    pub rate_limit: Option<RateLimitModel>,
    pub cors: Option<CorsModel>,
    pub health_check: HealthCheckModel,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListenerModel {
    pub name: String,
    pub port: u16,
    pub routes: Vec<RouteModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteModel {
    pub prefix: String,
    pub cluster: String,
    pub prefix_rewrite: Option<String>,
    pub timeout: Dur,
    pub rate_limited: bool,
    pub retries: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterModel {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    /// Active HTTP health check path, if any.
    pub health_path: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RateLimitModel {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Dur,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CorsModel {
    pub allow_origins: Vec<String>,
    /// True when `*` is among the origins.
    pub any_origin: bool,
    pub allow_methods: String,
    pub allow_headers: String,
    pub max_age_seconds: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthCheckModel {
    pub path: String,
    pub interval: Dur,
    pub timeout: Dur,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RedisModel {
    pub endpoint: Endpoint,
    pub max_memory: String,
    pub max_memory_policy: String,
    pub append_only: bool,
    /// Secret holding the admin user's password, when auth is on (the `admin` ACL user; no
    /// component and no probe of bssctl uses it).
    pub password_secret: Option<String>,
    pub data_dir: String,
    /// Per-client ACL users, when auth is on.
    #[serde(default)]
    pub acl: Option<RedisAclModel>,
}

/// Redis ACL users: one per client, each limited to the commands it sends. `default` is off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RedisAclModel {
    /// The `user` lines (SHA-256 of each password, never the password), included by redis.conf;
    /// written by the runtime from the secrets, 0600.
    pub file: String,
    /// redis_exporter's password map (JSON: its Redis URL -> password), 0600: `/scrape?target=`
    /// of any other address connects without a password.
    pub exporter_password_map: String,
    pub users: Vec<RedisUserModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RedisUserModel {
    pub name: String,
    pub password_secret: String,
    /// ACL rules after `on #<hash>` (keys, channels, commands).
    pub rules: String,
}

pub const REDIS_ADMIN_USER: &str = "admin";
pub const REDIS_BACKEND_USER: &str = "backend";
pub const REDIS_EXPORTER_USER: &str = "redis-exporter";
pub const REDIS_PROBE_USER: &str = "bssctl-probe";

impl RedisAclModel {
    pub fn user(&self, name: &str) -> Option<&RedisUserModel> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// Basic auth of a component's HTTP interface (exporter-toolkit's `--web.config.file`): the web
/// config holds a bcrypt hash of the password; Prometheus and bssctl's probes send the password.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebAuthModel {
    pub user: String,
    /// Secret whose value is the password (Prometheus reads it as `password_file`).
    pub password_secret: String,
    /// The web config file (derived from the secret by the runtime, 0600, in the secrets dir).
    pub web_config: String,
}

/// Credentials a scrape job sends (`basic_auth` with `password_file`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BasicAuthModel {
    pub username: String,
    pub password_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KafkaModel {
    pub cluster_id: String,
    pub storage: KafkaStorage,
    pub brokers: Vec<BrokerModel>,
    pub topics: Vec<TopicModel>,
    /// `host:port,host:port` bootstrap list.
    pub bootstrap: String,
    /// The S3 store every broker keeps its log and group offsets in (`storage: s3`).
    pub store: Option<KafkaStoreModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KafkaStoreModel {
    /// `kafka-store`.
    pub name: String,
    pub endpoint: Endpoint,
    pub bucket: String,
    /// Root directory of the store; each bucket is a directory in it.
    pub data_dir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BrokerModel {
    /// `kafka-<index>`.
    pub name: String,
    pub index: u8,
    pub endpoint: Endpoint,
    pub storage_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicModel {
    pub name: String,
    pub partitions: u32,
    pub retention: Dur,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrometheusModel {
    pub endpoint: Endpoint,
    pub scrape_interval: Dur,
    pub evaluation_interval: Dur,
    pub retention: Dur,
    /// Every scrape job: the stack's own first, then the extra ones.
    pub jobs: Vec<ScrapeJobModel>,
    pub data_dir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScrapeJobModel {
    pub name: String,
    pub targets: Vec<ScrapeTarget>,
    pub metrics_path: String,
    pub interval: Option<Dur>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScrapeTarget {
    pub address: String,
    /// Extra labels, e.g. `member: postgres-1`.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertsModel {
    /// Names of the seed groups that are rendered (system, postgresql, redis, kafka, business, capacity).
    pub groups: Vec<String>,
    pub thresholds: ThresholdsModel,
    pub custom: Vec<CustomRuleModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThresholdsModel {
    pub service_down_for: Dur,
    pub cpu_busy_ratio: f64,
    pub memory_used_ratio: f64,
    pub disk_used_ratio: f64,
    pub replication_lag_seconds: f64,
    pub pg_connections_ratio: f64,
    pub redis_memory_ratio: f64,
    pub cache_hit_ratio: f64,
    pub outbox_pending: f64,
    pub http_error_ratio: f64,
    pub http_p99_seconds: f64,
    pub min_events_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CustomRuleModel {
    pub alert: String,
    pub expr: String,
    pub for_: Dur,
    pub severity: String,
    pub team: String,
    pub summary: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertmanagerModel {
    pub endpoint: Endpoint,
    pub receivers: Vec<ReceiverModel>,
    pub route: RouteTreeModel,
    pub inhibit_rules: Vec<InhibitRuleModel>,
    pub smtp: Option<SmtpModel>,
    pub data_dir: String,
    /// Basic auth of the whole HTTP interface (API, silences, `/-/reload`, UI).
    #[serde(default)]
    pub web_auth: Option<WebAuthModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceiverModel {
    pub name: String,
    pub email: Vec<EmailModel>,
    pub slack: Vec<SlackModel>,
    pub webhook: Vec<WebhookModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmailModel {
    pub to: String,
    pub send_resolved: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlackModel {
    pub channel: String,
    /// File holding the webhook URL (alertmanager's `api_url_file`).
    pub api_url_file: String,
    pub send_resolved: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WebhookModel {
    pub url: String,
    pub send_resolved: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteTreeModel {
    pub receiver: String,
    pub group_by: Vec<String>,
    pub group_wait: Dur,
    pub group_interval: Dur,
    pub repeat_interval: Dur,
    pub routes: Vec<ChildRouteModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChildRouteModel {
    pub receiver: String,
    pub matchers: Vec<String>,
    pub group_wait: Option<Dur>,
    pub repeat_interval: Option<Dur>,
    pub continue_: bool,
    pub routes: Vec<ChildRouteModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InhibitRuleModel {
    pub source_matchers: Vec<String>,
    pub target_matchers: Vec<String>,
    pub equal: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SmtpModel {
    pub smarthost: String,
    pub from: String,
    pub auth_username: Option<String>,
    pub auth_password_file: Option<String>,
    pub require_tls: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExportersModel {
    pub node: Option<Endpoint>,
    /// One per PostgreSQL member, same order as `postgres.members`.
    pub postgres: Vec<PgExporterModel>,
    pub redis: Option<Endpoint>,
    /// Basic auth of the postgres exporters' `/metrics` and `/probe` (one password for all).
    #[serde(default)]
    pub postgres_web_auth: Option<WebAuthModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PgExporterModel {
    /// `postgres-exporter-<index>`.
    pub name: String,
    pub member: String,
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendModel {
    pub endpoint: Endpoint,
    pub max_db_connections: u32,
    pub cache_ttl: Dur,
    pub outbox_poll_interval: Dur,
    pub outbox_batch_size: u32,
    pub log_level: String,
    /// `postgres://user@host:port/db` through HAProxy's write port (or the primary directly).
    pub write_url: String,
    pub read_url: String,
    pub redis_url: Option<String>,
    pub kafka_bootstrap: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessorModel {
    /// `customer-analytics` or `order-processor`.
    pub name: String,
}

impl ValidatedTopology {
    /// The same topology with `member` as the primary: roles, replica settings and the
    /// synchronous standby list follow. Used after a failover or switchover.
    pub fn with_primary(&self, member: &str) -> Option<ValidatedTopology> {
        let mut t = self.clone();
        let pg = t.postgres.as_mut()?;
        pg.member(member)?;
        pg.primary = member.to_string();
        for m in &mut pg.members {
            m.role = if m.name == member {
                Role::Primary
            } else {
                Role::Replica
            };
        }
        pg.synchronous_standby_names = super::validate::synchronous_standby_names(pg);
        Some(t)
    }
}
