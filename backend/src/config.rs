//! Configuration: the YAML file rendered by bssctl, then single-field overrides from the environment.
//! Owns parsing, defaults and secret loading; it does not open any connection.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to parse config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("failed to read secret file {path} (for {field}): {source}")]
    Secret {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid value of environment variable {var}: {reason}")]
    Env { var: &'static str, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: String,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub streams: StreamsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Overload protection: how much work may queue before requests are turned away.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// API requests in flight above which new ones get 429 + Retry-After at once. Default:
    /// 32 per database connection (a queue the pool drains in well under a second).
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Longest wait for a database connection before a request fails with 503 + Retry-After.
    #[serde(default = "default_acquire_timeout")]
    pub acquire_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_in_flight: None,
            acquire_timeout_ms: default_acquire_timeout(),
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatabaseConfig {
    pub write_url: String,
    pub read_url: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Loaded from `password_file` or `BSS_DATABASE_PASSWORD`; never serialised, never logged.
    #[serde(skip)]
    pub password: Option<String>,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("write_url", &self.write_url)
            .field("read_url", &self.read_url)
            .field("password_file", &self.password_file)
            .field("max_connections", &self.max_connections)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// ACL user (Redis 6+); none: the `default` user.
    #[serde(default)]
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(skip)]
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
}

#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    pub api_keys_file: Option<PathBuf>,
    #[serde(skip)]
    pub api_keys: Vec<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("api_keys_file", &self.api_keys_file)
            .field("api_keys", &format_args!("<{} keys>", self.api_keys.len()))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_seconds: default_ttl(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboxConfig {
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    #[serde(default = "default_batch")]
    pub batch_size: i64,
    /// How long the relay waits after a batch that found rows (but not a full batch) before
    /// it polls again; `pollIntervalMs` is the wait after a poll that found nothing. Under load
    /// the relay thus sends one larger batch per window instead of one per poll interval: fewer
    /// produce requests, broker objects and watermark writes, and fewer outbox transactions,
    /// for at most this much more event latency. Never shorter than `pollIntervalMs`.
    #[serde(default = "default_batch_window")]
    pub batch_window_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: default_poll(),
            batch_size: default_batch(),
            batch_window_ms: default_batch_window(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamsConfig {
    #[serde(default = "default_prefix")]
    pub group_prefix: String,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            group_prefix: default_prefix(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_connections() -> u32 {
    20
}
fn default_prefix() -> String {
    "bss".into()
}
fn default_ttl() -> u64 {
    300
}
fn default_poll() -> u64 {
    50
}
fn default_batch() -> i64 {
    500
}
fn default_batch_window() -> u64 {
    150
}
fn default_acquire_timeout() -> u64 {
    1000
}

/// Environment variables that override single fields of the file (documented in README.md).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("BSS_LISTEN", "listen"),
    ("BSS_DATABASE_WRITE_URL", "database.writeUrl"),
    ("BSS_DATABASE_READ_URL", "database.readUrl"),
    ("BSS_DATABASE_PASSWORD_FILE", "database.passwordFile"),
    (
        "BSS_DATABASE_PASSWORD",
        "database password (instead of passwordFile)",
    ),
    ("BSS_DATABASE_MAX_CONNECTIONS", "database.maxConnections"),
    ("BSS_REDIS_URL", "redis.url"),
    ("BSS_REDIS_PASSWORD_FILE", "redis.passwordFile"),
    (
        "BSS_REDIS_PASSWORD",
        "redis password (instead of passwordFile)",
    ),
    ("BSS_KAFKA_BROKERS", "kafka.brokers"),
    ("BSS_KAFKA_TOPIC_PREFIX", "kafka.topicPrefix"),
    ("BSS_AUTH_API_KEYS_FILE", "auth.apiKeysFile"),
    (
        "BSS_API_KEYS",
        "API keys, comma separated (added to apiKeysFile)",
    ),
    ("BSS_CACHE_TTL_SECONDS", "cache.ttlSeconds"),
    ("BSS_OUTBOX_POLL_INTERVAL_MS", "outbox.pollIntervalMs"),
    ("BSS_OUTBOX_BATCH_SIZE", "outbox.batchSize"),
    ("BSS_OUTBOX_BATCH_WINDOW_MS", "outbox.batchWindowMs"),
    ("BSS_STREAMS_GROUP_PREFIX", "streams.groupPrefix"),
    ("BSS_LIMITS_MAX_IN_FLIGHT", "limits.maxInFlight"),
    ("BSS_LIMITS_ACQUIRE_TIMEOUT_MS", "limits.acquireTimeoutMs"),
];

impl Config {
    /// The in-flight limit in force (see `LimitsConfig::max_in_flight`).
    pub fn max_in_flight(&self) -> usize {
        self.limits
            .max_in_flight
            .unwrap_or(32 * self.database.max_connections as usize)
            .max(1)
    }

    /// Reads the file, applies environment overrides from the process environment, loads secrets.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.load_secrets()?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Self, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }

    /// Applies overrides from `get` (the environment in production, a map in tests).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(var: &'static str, v: String) -> Result<T, ConfigError> {
            v.trim().parse().map_err(|_| ConfigError::Env {
                var,
                reason: format!("not a number: {v:?}"),
            })
        }
        if let Some(v) = get("BSS_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("BSS_DATABASE_WRITE_URL") {
            self.database.write_url = v;
        }
        if let Some(v) = get("BSS_DATABASE_READ_URL") {
            self.database.read_url = Some(v);
        }
        if let Some(v) = get("BSS_DATABASE_PASSWORD_FILE") {
            self.database.password_file = Some(v.into());
        }
        if let Some(v) = get("BSS_DATABASE_PASSWORD") {
            self.database.password = Some(v);
        }
        if let Some(v) = get("BSS_DATABASE_MAX_CONNECTIONS") {
            self.database.max_connections = num("BSS_DATABASE_MAX_CONNECTIONS", v)?;
        }
        if let Some(v) = get("BSS_REDIS_URL") {
            self.redis.url = v;
        }
        if let Some(v) = get("BSS_REDIS_PASSWORD_FILE") {
            self.redis.password_file = Some(v.into());
        }
        if let Some(v) = get("BSS_REDIS_PASSWORD") {
            self.redis.password = Some(v);
        }
        if let Some(v) = get("BSS_KAFKA_BROKERS") {
            self.kafka.brokers = v;
        }
        if let Some(v) = get("BSS_KAFKA_TOPIC_PREFIX") {
            self.kafka.topic_prefix = v;
        }
        if let Some(v) = get("BSS_AUTH_API_KEYS_FILE") {
            self.auth.api_keys_file = Some(v.into());
        }
        if let Some(v) = get("BSS_API_KEYS") {
            self.auth.api_keys.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(String::from),
            );
        }
        if let Some(v) = get("BSS_CACHE_TTL_SECONDS") {
            self.cache.ttl_seconds = num("BSS_CACHE_TTL_SECONDS", v)?;
        }
        if let Some(v) = get("BSS_OUTBOX_POLL_INTERVAL_MS") {
            self.outbox.poll_interval_ms = num("BSS_OUTBOX_POLL_INTERVAL_MS", v)?;
        }
        if let Some(v) = get("BSS_OUTBOX_BATCH_SIZE") {
            self.outbox.batch_size = num("BSS_OUTBOX_BATCH_SIZE", v)?;
        }
        if let Some(v) = get("BSS_OUTBOX_BATCH_WINDOW_MS") {
            self.outbox.batch_window_ms = num("BSS_OUTBOX_BATCH_WINDOW_MS", v)?;
        }
        if let Some(v) = get("BSS_STREAMS_GROUP_PREFIX") {
            self.streams.group_prefix = v;
        }
        if let Some(v) = get("BSS_LIMITS_MAX_IN_FLIGHT") {
            self.limits.max_in_flight = Some(num("BSS_LIMITS_MAX_IN_FLIGHT", v)?);
        }
        if let Some(v) = get("BSS_LIMITS_ACQUIRE_TIMEOUT_MS") {
            self.limits.acquire_timeout_ms = num("BSS_LIMITS_ACQUIRE_TIMEOUT_MS", v)?;
        }
        Ok(())
    }

    /// Reads password and key files. An explicit password from the environment wins over the file.
    pub fn load_secrets(&mut self) -> Result<(), ConfigError> {
        fn read(field: &'static str, path: &Path) -> Result<String, ConfigError> {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|source| ConfigError::Secret {
                    field,
                    path: path.to_owned(),
                    source,
                })
        }
        if self.database.password.is_none() {
            if let Some(p) = &self.database.password_file {
                self.database.password = Some(read("database.passwordFile", p)?);
            }
        }
        if self.redis.password.is_none() {
            if let Some(p) = &self.redis.password_file {
                self.redis.password = Some(read("redis.passwordFile", p)?);
            }
        }
        if let Some(p) = &self.auth.api_keys_file {
            let text = read("auth.apiKeysFile", p)?;
            self.auth.api_keys.extend(parse_api_keys(&text));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.database.max_connections == 0 {
            problems.push("database.maxConnections must be > 0".to_string());
        }
        if self.outbox.batch_size <= 0 {
            problems.push("outbox.batchSize must be > 0".to_string());
        }
        if self.kafka.brokers.trim().is_empty() {
            problems.push("kafka.brokers must not be empty".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }

    pub fn topic(&self, entity: &str) -> String {
        format!("{}.{}.events", self.kafka.topic_prefix, entity)
    }

    pub fn read_url(&self) -> &str {
        self.database
            .read_url
            .as_deref()
            .unwrap_or(&self.database.write_url)
    }
}

/// One key per line; blank lines and `#` comments ignored.
pub fn parse_api_keys(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    const SAMPLE: &str = r#"
listen: 127.0.0.1:8080
database:
  writeUrl: postgres://bss_app@127.0.0.1:5436/bss
  readUrl: postgres://bss_app@127.0.0.1:5435/bss
  passwordFile: /nonexistent/postgres-app-password
  maxConnections: 20
redis:
  url: redis://127.0.0.1:6379/0
  passwordFile: /nonexistent/redis-password
kafka:
  brokers: 127.0.0.1:9092
  topicPrefix: bss
auth:
  apiKeysFile: /nonexistent/backend-api-keys
cache:
  ttlSeconds: 300
outbox:
  pollIntervalMs: 50
  batchSize: 500
streams:
  groupPrefix: bss
"#;

    #[test]
    fn parses_the_contract_sample() {
        let c = Config::parse(SAMPLE).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.database.max_connections, 20);
        assert_eq!(c.read_url(), "postgres://bss_app@127.0.0.1:5435/bss");
        assert_eq!(c.outbox.batch_size, 500);
        assert_eq!(c.topic("order"), "bss.order.events");
    }

    #[test]
    fn rejects_unknown_keys() {
        let bad = SAMPLE.replace("ttlSeconds", "ttlSecs");
        assert!(Config::parse(&bad).is_err());
    }

    #[test]
    fn env_overrides_single_fields() {
        let mut c = Config::parse(SAMPLE).unwrap();
        let env: HashMap<&str, &str> = [
            ("BSS_LISTEN", "0.0.0.0:9999"),
            ("BSS_DATABASE_PASSWORD", "s3cret"),
            ("BSS_OUTBOX_BATCH_SIZE", "7"),
        ]
        .into();
        c.apply_env(|k| env.get(k).map(|s| s.to_string())).unwrap();
        c.load_secrets().unwrap_err(); // redis password file does not exist
        assert_eq!(c.listen, "0.0.0.0:9999");
        assert_eq!(c.outbox.batch_size, 7);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn api_keys_skip_blanks_and_comments() {
        assert_eq!(parse_api_keys("a\n\n# c\n b \n"), vec!["a", "b"]);
    }
}
