//! Broker plumbing: client configuration, topic creation (`ensure_topics`), reachability checks.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

pub const ENTITIES: &[&str] = &[
    "customer",
    "product",
    "order",
    "subscription",
    "invoice",
    "payment",
];
pub const PARTITIONS: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("failed to create Kafka client: {0}")]
    Client(rdkafka::error::KafkaError),
    #[error("failed to create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
}

pub fn base_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("socket.keepalive.enable", "true")
        .set("reconnect.backoff.max.ms", "2000")
        .set("log_level", "3");
    c
}

/// Producer used by the outbox relay and the processors: acks from all replicas, one request in
/// flight per connection so retries cannot reorder messages of one partition, bounded delivery
/// time so a broker outage fails a batch (which is then retried) instead of hanging.
pub fn producer(brokers: &str) -> Result<FutureProducer, KafkaError> {
    base_config(brokers)
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "1")
        .set("message.timeout.ms", "5000")
        .set("linger.ms", "2")
        .set("compression.type", "none")
        .set("partitioner", "murmur2_random")
        // Topics are created explicitly (`ensure_topics`). With auto-creation, a broker that
        // restarted empty would re-create a topic on the producer's metadata refresh in the
        // middle of a batch whose first requests it had acknowledged into the void (tansu does
        // that), and the outbox relay's check that the topic exists would pass.
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(KafkaError::Client)
}

pub fn entity_topics(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = ENTITIES
        .iter()
        .map(|e| format!("{prefix}.{e}.events"))
        .collect();
    v.push(format!("{prefix}.analytics.events"));
    v
}

/// Creates the topics that are missing; existing ones are left alone.
pub async fn ensure_topics(brokers: &str, topics: &[String]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        base_config(brokers).create().map_err(KafkaError::Client)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results =
        admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(|e| KafkaError::CreateTopic {
                topic: topics.join(","),
                reason: e.to_string(),
            })?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(KafkaError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// True when a metadata request succeeds within `timeout`.
pub async fn reachable(producer: &FutureProducer, timeout: Duration) -> bool {
    let p = producer.clone();
    tokio::task::spawn_blocking(move || {
        p.client()
            .fetch_metadata(None, timeout)
            .map(|m| !m.brokers().is_empty())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}
