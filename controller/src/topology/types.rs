//! The user-facing topology document: serde types, one per section of `topology.yaml`.
//!
//! These types are also the spec of the Kubernetes custom resource (`bssctl crd`) and the source of
//! the JSON Schema (`bssctl schema`). Everything is optional except `metadata.name`: defaults are
//! applied by `validate`, never here, so that a rendered bundle only ever sees a `ValidatedTopology`.
//! Unknown keys are rejected everywhere (`deny_unknown_fields`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "bssctl.io/v1alpha1";
pub const KIND: &str = "Topology";

/// A complete environment: the stack bssctl renders, launches and keeps healthy.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Topology {
    /// Always `bssctl.io/v1alpha1`.
    pub api_version: String,
    /// Always `Topology`.
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: TopologySpec,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Environment name: a DNS label (lowercase letters, digits, '-'; at most 40 characters).
    pub name: String,
    /// Kubernetes namespace (kubernetes runtime only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Which components exist and how they are set up. A section that is present (even `{}`) enables
/// its component with good defaults; an absent section leaves the component out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopologySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,
    /// Container image per component (docker and kubernetes runtimes), e.g. `postgres: bssctl/postgres:15`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
    /// Secrets by reference: logical secret name -> where its value comes from. Secrets not listed
    /// are generated once and stored with 0600 permissions in the state directory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<HaproxySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy: Option<EnvoySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertmanagerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exporters: Option<ExportersSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_processors: Option<StreamProcessorsSpec>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    #[default]
    Local,
    Docker,
    Kubernetes,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimeSpec {
    /// `local` (default), `docker` or `kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RuntimeKind>,
    /// Local runtime: directory holding configs, data, logs and secrets of every environment
    /// (relative paths are relative to the topology file). Default `.bssctl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// Added to every port of the environment, the ones written in this file as well as the
    /// defaults (`port: 5432` with `portOffset: 1000` listens on 6432), so a copy of a topology
    /// with another offset and name runs side by side with the original. Addresses of things
    /// outside the environment (cluster endpoints, scrape targets) are not shifted. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_offset: Option<u16>,
    /// Port of the controller agent's HTTP API (loopback), before portOffset. Default 7070.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_port: Option<u16>,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Read the value from this environment variable at apply time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_env: Option<String>,
    /// Read the value from this file at apply time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_file: Option<String>,
    /// Generate a random value of this many characters (default when neither source is given: 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_length: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    #[default]
    Async,
    Sync,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresSpec {
    /// Port of the first member (the initial primary); member i listens on port + i. Default 5432.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Number of streaming replicas. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u8>,
    /// Application database. Default `bss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Application role (password generated as secret `postgres-app-password`). Default `bss_app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSpec>,
    /// Per-member overrides, by member index (0 = initial primary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberSpec>,
    /// postgresql.conf parameters that override bssctl's defaults, e.g. `shared_buffers: 256MB`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ScalarValue>,
}

/// A YAML scalar kept as written: parameters accept strings, numbers and booleans.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum ScalarValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for ScalarValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScalarValue::Bool(b) => write!(f, "{}", if *b { "on" } else { "off" }),
            ScalarValue::Int(i) => write!(f, "{i}"),
            ScalarValue::Float(x) => write!(f, "{x}"),
            ScalarValue::Str(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicationSpec {
    /// `async` (default) or `sync` (RPO = 0: a commit waits for `syncCount` standbys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ReplicationMode>,
    /// Synchronous mode: `ANY n` of the replicas must confirm. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_count: Option<u8>,
    /// One physical replication slot per replica. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<bool>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hot_standby_feedback: Option<bool>,
    /// Upper bound of WAL a slot may retain, e.g. `1GB` (max_slot_wal_keep_size). Default `2GB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slot_wal_keep_size: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailoverSpec {
    /// Automated failover by the controller agent. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Probe period, e.g. `500ms`. Default `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_interval: Option<String>,
    /// The primary must fail every probe for this long before a failover starts. Default `3s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_window: Option<String>,
    /// A replica further behind than this (bytes, e.g. `16MB`) is not promoted. Default `16MB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_on_failover: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberSpec {
    /// Which member this entry overrides (0 = initial primary).
    pub index: u8,
    /// Failover priority: higher wins a tie on received LSN; 0 never becomes primary. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    #[default]
    Roundrobin,
    Leastconn,
    First,
    Source,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HaproxySpec {
    /// Port that always leads to the current primary. Default 5436.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_port: Option<u16>,
    /// Port balanced over the healthy replicas (the primary as fallback). Default 5435.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_port: Option<u16>,
    /// Balance algorithm of the read port. Default `roundrobin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Balance>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsSpec>,
    /// Maximum concurrent client connections. Default 2000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Client/server idle timeout, e.g. `30m`. Default `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckSpec {
    /// Default `1s` (the seeds used 5s; failover needs tighter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u8>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u8>,
    /// Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatsSpec {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Default 8084.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Default `admin`; the password is the secret `haproxy-stats-password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoySpec {
    /// Admin interface (always bound to loopback). Default 15000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_port: Option<u16>,
    /// Default: one listener `ingress` on 15006 with `/api/` and `/health` routed to `backend`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerSpec>,
    /// Upstream clusters besides the implicit `backend` cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TimeoutsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breakers: Option<CircuitBreakerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerSpec {
    pub name: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// Path prefix to match, e.g. `/api/`.
    pub prefix: String,
    /// Upstream cluster name (`backend` or one of `clusters`).
    pub cluster: String,
    /// Replace the matched prefix before forwarding, e.g. `/health/ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Per-route timeout; defaults to `timeouts.request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Apply the local rate limit to this route. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<bool>,
    /// Retry this route per `retries`. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    /// `host:port` endpoints.
    pub endpoints: Vec<String>,
    /// Path of the active HTTP health check; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// Default `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Default `15s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Default `300s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Envoy retry_on conditions. Default `5xx,reset,connect-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Default 100 each; retries default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Bucket size. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Tokens added per fill. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_fill: Option<u32>,
    /// Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_interval: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsSpec {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Exact origins, or `*`. Default `["*"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<String>,
    /// Default GET, POST, PUT, DELETE, OPTIONS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Default content-type, authorization, x-api-key, x-request-id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Default `86400`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckSpec {
    /// Default `/health/ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisSpec {
    /// Default 6379.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Default `256mb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<String>,
    /// Default `allkeys-lru`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_policy: Option<String>,
    /// Append-only persistence. Default false (a cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_only: Option<bool>,
    /// Require the password in secret `redis-password`. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KafkaStorage {
    /// tansu's in-memory engine: one broker per cluster, every event and committed offset lost
    /// when the broker stops.
    Memory,
    /// The default, on every runtime. Objects in an S3 store that bssctl runs as component `kafka-store`
    /// (`bssctl kafka-store`: a directory, atomic conditional writes): the log and the group
    /// offsets survive a restart of the brokers and of the store, and several brokers share it.
    #[default]
    S3,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSpec {
    /// Number of brokers. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<u8>,
    /// Port of the first broker; broker i listens on port + i. Default 9092.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<KafkaStorage>,
    /// The S3 store of `storage: s3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<KafkaStoreSpec>,
    /// Cluster id. Default: the environment name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Default: `bss.<entity>.events` for every entity and `bss.analytics.events`, 3 partitions, 7d.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<TopicSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaStoreSpec {
    /// Port of the S3 endpoint. Default 9000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Bucket holding the brokers' objects. Default `tansu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Default `7d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusSpec {
    /// Default 9090.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_interval: Option<String>,
    /// Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_interval: Option<String>,
    /// Default `15d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// Scrape jobs besides the stack's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_jobs: Vec<ScrapeJobSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScrapeJobSpec {
    pub name: String,
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// Default `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_path: Option<String>,
    /// Default: the global scrape interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// The alert groups of the seeds (system, postgresql, redis, kafka, business, capacity) with
/// overridable thresholds, plus custom rules.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertsSpec {
    /// Groups to leave out, e.g. `[capacity]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<AlertThresholds>,
    /// Rules of your own, rendered into the group `custom`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<CustomRuleSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertThresholds {
    /// How long a target may be down before `ServiceDown` fires. Default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_down_for: Option<String>,
    /// CPU busy ratio 0..1. Default 0.85.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_busy_ratio: Option<f64>,
    /// Memory used ratio 0..1. Default 0.90.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_ratio: Option<f64>,
    /// Filesystem used ratio 0..1. Default 0.85.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_used_ratio: Option<f64>,
    /// Replica lag in seconds. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_lag_seconds: Option<f64>,
    /// Connections used ratio 0..1 of max_connections. Default 0.80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_connections_ratio: Option<f64>,
    /// Redis memory ratio 0..1 of maxmemory. Default 0.90.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_memory_ratio: Option<f64>,
    /// Cache hit ratio below which `CacheHitRatioLow` fires. Default 0.70.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit_ratio: Option<f64>,
    /// Outbox rows not yet published. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_pending: Option<f64>,
    /// HTTP 5xx ratio 0..1. Default 0.01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_error_ratio: Option<f64>,
    /// p99 latency in seconds. Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_p99_seconds: Option<f64>,
    /// Events per second below which `EventThroughputLow` fires while traffic flows. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_events_per_second: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomRuleSpec {
    /// Alert name (CamelCase by convention).
    pub alert: String,
    /// PromQL expression.
    pub expr: String,
    /// Default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "for")]
    pub for_: Option<String>,
    /// `critical`, `warning` or `info`. Default `warning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Routing team. Default `sre`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertmanagerSpec {
    /// Default 9093.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Default: `default`, `critical`, `warning` and one per team (database, cache, streaming, sre,
    /// business), each a webhook to the controller agent's alert sink.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receivers: Vec<ReceiverSpec>,
    /// Default: by severity (critical repeat 15m, warning 2h), then by team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteTreeSpec>,
    /// Default: a critical alert silences warnings with the same alertname and instance; a down
    /// service silences its symptoms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inhibit_rules: Option<Vec<InhibitRuleSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiverSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<EmailSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slack: Vec<SlackSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook: Vec<WebhookSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailSpec {
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_resolved: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlackSpec {
    pub channel: String,
    /// Secret holding the incoming-webhook URL. Default `slack-webhook-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_resolved: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_resolved: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTreeSpec {
    pub receiver: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ChildRouteSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChildRouteSpec {
    pub receiver: String,
    /// Alertmanager matchers, e.g. `severity="critical"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "continue")]
    pub continue_: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<ChildRouteSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InhibitRuleSpec {
    pub source_matchers: Vec<String>,
    pub target_matchers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub equal: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmtpSpec {
    /// `host:port`.
    pub smarthost: String,
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_username: Option<String>,
    /// Secret with the SMTP password. Default `smtp-password` when authUsername is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_password_secret: Option<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_tls: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportersSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ExporterSpec>,
    /// One exporter per PostgreSQL member, on port + member index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<ExporterSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<ExporterSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExporterSpec {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSpec {
    /// Default 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Database pool size. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_db_connections: Option<u32>,
    /// Cache TTL, e.g. `5m`. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,
    /// Outbox relay poll interval. Default `50ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_poll_interval: Option<String>,
    /// Default 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_batch_size: Option<u32>,
    /// `RUST_LOG`-style filter. Default `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamProcessorsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_analytics: Option<ProcessorSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_processor: Option<ProcessorSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessorSpec {
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}
