//! Replay of a topic between two instants (offsets for times on every partition), at a chosen
//! speed, into a target topic or back to the caller; an entity's state at an instant and its
//! timeline, reconstructed from its events; consumer-group offset snapshots and restore.
//!
//! The Kafka calls here are blocking librdkafka calls; callers run them on the blocking pool.

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::kafka;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of events a single replay or history request reads.
pub const MAX_EVENTS: usize = 200_000;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("failed to talk to the broker: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {0} does not exist")]
    NoTopic(String),
    #[error("the window holds more than {MAX_EVENTS} events; narrow it")]
    TooMany,
    #[error("failed to publish a replayed event: {0}")]
    Publish(String),
}

/// One event read back from a topic.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: DateTime<Utc>,
    pub key: Option<String>,
    pub event: serde_json::Value,
}

/// Start (inclusive) and end (exclusive) offsets of a window on one partition.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PartitionRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

pub fn consumer(brokers: &str) -> Result<BaseConsumer, ReplayError> {
    Ok(kafka::base_config(brokers)
        .set("group.id", format!("bss-replay-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "20")
        .create()?)
}

fn partitions(c: &BaseConsumer, topic: &str) -> Result<Vec<i32>, ReplayError> {
    let md = c.fetch_metadata(Some(topic), TIMEOUT)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| ReplayError::NoTopic(topic.to_string()))?;
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(ReplayError::NoTopic(topic.to_string()));
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// Offsets for the times `from` and `to` on every partition of `topic`.
pub fn window_offsets(
    c: &BaseConsumer,
    topic: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<PartitionRange>, ReplayError> {
    let parts = partitions(c, topic)?;
    let lookup = |ts: i64| -> Result<HashMap<i32, Offset>, ReplayError> {
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(topic, *p, Offset::Offset(ts))?;
        }
        let res = c.offsets_for_times(tpl, TIMEOUT)?;
        Ok(res
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect())
    };
    let starts = lookup(from.timestamp_millis())?;
    let ends = if to >= Utc::now() {
        HashMap::new()
    } else {
        lookup(to.timestamp_millis())?
    };
    let mut out = Vec::new();
    for p in parts {
        let (low, high) = c.fetch_watermarks(topic, p, TIMEOUT)?;
        // No message at or after the instant: the window starts/ends at the end of the log.
        let resolve = |o: Option<&Offset>| match o {
            Some(Offset::Offset(n)) => (*n).clamp(low, high),
            _ => high,
        };
        let start = resolve(starts.get(&p));
        let end = resolve(ends.get(&p));
        out.push(PartitionRange {
            partition: p,
            start,
            end: end.max(start),
        });
    }
    Ok(out)
}

/// Reads the events of `topic` with `from <= timestamp < to`, all partitions, in
/// (timestamp, partition, offset) order. `key` restricts to one aggregate.
///
/// The start offset of each partition comes from the offsets-for-times lookup; it is only used
/// as a lower bound, and every message is filtered by its own timestamp, so the result is
/// exact even against a broker whose lookup is coarse. tansu 0.6 answers every lookup with the
/// first offset and reports the high watermark per record batch, so the end of the window is
/// not taken from the broker either: a partition is finished once it yields a message stamped
/// `END_GRACE` past `to`, or when the whole log has been read (no message for `IDLE`).
pub fn read_window(
    brokers: &str,
    topic: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    key: Option<&str>,
) -> Result<(Vec<StoredEvent>, Vec<PartitionRange>), ReplayError> {
    const IDLE: Duration = Duration::from_millis(400);
    const END_GRACE_MS: i64 = 5_000;
    // Kafka timestamps start at the Unix epoch; nothing can lie before it.
    let epoch = Utc.timestamp_millis_opt(0).single().unwrap_or_default();
    let from = from.max(epoch);
    if to <= from {
        return Ok((Vec::new(), Vec::new()));
    }
    let c = consumer(brokers)?;
    let mut ranges = window_offsets(&c, topic, from, to)?;
    let mut tpl = TopicPartitionList::new();
    let mut open: HashMap<i32, usize> = HashMap::new();
    for (i, r) in ranges.iter_mut().enumerate() {
        tpl.add_partition_offset(topic, r.partition, Offset::Offset(r.start))?;
        open.insert(r.partition, i);
        r.end = r.start;
    }
    let mut out = Vec::new();
    c.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    let mut last_message = Instant::now();
    while !open.is_empty() && Instant::now() < deadline {
        let Some(m) = c.poll(Duration::from_millis(50)) else {
            if last_message.elapsed() > IDLE {
                break;
            }
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        last_message = Instant::now();
        let p = m.partition();
        let Some(idx) = open.get(&p).copied() else {
            continue;
        };
        let ts = m.timestamp().to_millis().unwrap_or(0);
        if ts >= to_ms + END_GRACE_MS {
            open.remove(&p);
            continue;
        }
        ranges[idx].end = m.offset() + 1;
        if ts < from_ms || ts >= to_ms {
            continue;
        }
        let k = m.key().map(|k| String::from_utf8_lossy(k).to_string());
        if key.is_some() && k.as_deref() != key {
            continue;
        }
        if out.len() >= MAX_EVENTS {
            return Err(ReplayError::TooMany);
        }
        let event = m
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or(serde_json::Value::Null);
        out.push(StoredEvent {
            partition: p,
            offset: m.offset(),
            timestamp: Utc.timestamp_millis_opt(ts).single().unwrap_or_default(),
            key: k,
            event,
        });
    }
    out.sort_by_key(|e| (e.timestamp, e.partition, e.offset));
    Ok((out, ranges))
}

/// How fast a replay re-emits events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// As fast as possible.
    Max,
    /// Scaled real time: 1.0 keeps the original gaps, 10.0 is ten times faster.
    Factor(f64),
}

impl Speed {
    /// Delay before an event given the previous event's time.
    pub fn gap(&self, prev: DateTime<Utc>, next: DateTime<Utc>) -> Duration {
        match self {
            Speed::Max => Duration::ZERO,
            Speed::Factor(f) => {
                let ms = (next - prev).num_milliseconds().max(0) as f64 / f;
                Duration::from_secs_f64((ms / 1000.0).min(3600.0))
            }
        }
    }
}

/// Re-publishes `events` into `target` keyed as the originals, pacing them by `speed`.
/// Headers carry the original coordinates. Returns how many were published.
pub async fn publish(
    producer: &FutureProducer,
    source_topic: &str,
    target: &str,
    events: &[StoredEvent],
    speed: Speed,
    progress: &(dyn Fn(usize) + Send + Sync),
) -> Result<usize, ReplayError> {
    let mut prev: Option<DateTime<Utc>> = None;
    for (i, e) in events.iter().enumerate() {
        if let Some(p) = prev {
            let gap = speed.gap(p, e.timestamp);
            if !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
        }
        prev = Some(e.timestamp);
        let payload = e.event.to_string();
        let origin = format!("{source_topic}:{}:{}", e.partition, e.offset);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "content-type",
                value: Some("application/cloudevents+json; charset=UTF-8"),
            })
            .insert(Header {
                key: "bss-replayed-from",
                value: Some(origin.as_str()),
            });
        let mut rec = FutureRecord::to(target)
            .payload(&payload)
            .timestamp(e.timestamp.timestamp_millis())
            .headers(headers);
        if let Some(k) = &e.key {
            rec = rec.key(k);
        }
        producer
            .send(rec, Duration::from_secs(10))
            .await
            .map_err(|(err, _)| ReplayError::Publish(err.to_string()))?;
        progress(i + 1);
    }
    Ok(events.len())
}

/// Status of a background replay into a topic.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayJob {
    pub id: Uuid,
    pub source_topic: String,
    pub target_topic: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub state: JobState,
    pub total: usize,
    pub published: usize,
    pub error: Option<String>,
    pub ranges: Vec<PartitionRange>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Running,
    Completed,
    Failed,
}

#[derive(Clone, Default)]
pub struct Jobs {
    inner: Arc<Mutex<HashMap<Uuid, ReplayJob>>>,
}

impl Jobs {
    pub fn put(&self, job: ReplayJob) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(job.id, job);
        }
    }
    pub fn update(&self, id: Uuid, f: impl FnOnce(&mut ReplayJob)) {
        if let Ok(mut m) = self.inner.lock() {
            if let Some(j) = m.get_mut(&id) {
                f(j);
            }
        }
    }
    pub fn get(&self, id: Uuid) -> Option<ReplayJob> {
        self.inner.lock().ok()?.get(&id).cloned()
    }
}

/// The state of an entity at an instant: the snapshot carried by its last event at or before it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateAt {
    pub entity: String,
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// False before the entity was created or after it was deleted.
    pub exists: bool,
    pub version: Option<i64>,
    pub state: Option<serde_json::Value>,
    pub last_event_id: Option<String>,
    pub last_event_time: Option<DateTime<Utc>>,
}

pub fn state_at(entity: &str, id: Uuid, at: DateTime<Utc>, events: &[StoredEvent]) -> StateAt {
    let last = events.iter().rev().find(|e| e.timestamp <= at);
    let deleted = last
        .and_then(|e| e.event.get("type"))
        .and_then(|t| t.as_str())
        .is_some_and(|t| t.ends_with(".deleted.v1"));
    StateAt {
        entity: entity.to_string(),
        id,
        at,
        exists: last.is_some() && !deleted,
        version: last
            .and_then(|e| e.event.get("bssversion"))
            .and_then(|v| v.as_i64()),
        state: if deleted {
            None
        } else {
            last.and_then(|e| e.event.get("data").cloned())
        },
        last_event_id: last
            .and_then(|e| e.event.get("id"))
            .and_then(|v| v.as_str())
            .map(String::from),
        last_event_time: last.map(|e| e.timestamp),
    }
}

/// Committed offsets of a consumer group on every partition of `topics`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupOffset {
    pub topic: String,
    pub partition: i32,
    /// Next offset to consume; -1 when the group has no committed offset there.
    pub offset: i64,
}

pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topics: &[String],
) -> Result<Vec<GroupOffset>, ReplayError> {
    let c: BaseConsumer = kafka::base_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in partitions(&c, t)? {
            tpl.add_partition(t, p);
        }
    }
    let res = c.committed_offsets(tpl, TIMEOUT)?;
    Ok(res
        .elements()
        .iter()
        .map(|e| GroupOffset {
            topic: e.topic().to_string(),
            partition: e.partition(),
            offset: match e.offset() {
                Offset::Offset(n) => n,
                _ => -1,
            },
        })
        .collect())
}

/// Commits `offsets` for `group` (the group's consumers should be stopped meanwhile).
/// Partitions without an offset in the snapshot are reset to the beginning.
pub fn restore_offsets(
    brokers: &str,
    group: &str,
    offsets: &[GroupOffset],
) -> Result<(), ReplayError> {
    let c: BaseConsumer = kafka::base_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for o in offsets {
        let off = if o.offset >= 0 { o.offset } else { 0 };
        tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(off))?;
    }
    c.commit(&tpl, CommitMode::Sync)?;
    Ok(())
}

/// Header value as text, for tests and tooling.
pub fn header(m: &impl Message, name: &str) -> Option<String> {
    let h = m.headers()?;
    (0..h.count())
        .map(|i| h.get(i))
        .find(|hd| hd.key == name)
        .and_then(|hd| hd.value.map(|v| String::from_utf8_lossy(v).to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn ev(ms: i64, ty: &str, v: i64, name: &str) -> StoredEvent {
        StoredEvent {
            partition: 0,
            offset: ms,
            timestamp: Utc.timestamp_millis_opt(ms).single().unwrap(),
            key: Some("k".into()),
            event: json!({"id": format!("e{ms}"), "type": ty, "bssversion": v, "data": {"name": name}}),
        }
    }

    #[test]
    fn speed_scales_gaps() {
        let t = |ms| Utc.timestamp_millis_opt(ms).single().unwrap();
        assert_eq!(Speed::Max.gap(t(0), t(1000)), Duration::ZERO);
        assert_eq!(
            Speed::Factor(1.0).gap(t(0), t(1000)),
            Duration::from_secs(1)
        );
        assert_eq!(
            Speed::Factor(4.0).gap(t(0), t(1000)),
            Duration::from_millis(250)
        );
        assert_eq!(Speed::Factor(1.0).gap(t(1000), t(0)), Duration::ZERO);
    }

    #[test]
    fn state_at_takes_the_last_snapshot_and_honours_deletes() {
        let evs = vec![
            ev(10, "com.bss.customer.created.v1", 1, "a"),
            ev(20, "com.bss.customer.updated.v1", 2, "b"),
            ev(30, "com.bss.customer.deleted.v1", 2, "b"),
        ];
        let at = |ms| {
            state_at(
                "customer",
                Uuid::nil(),
                Utc.timestamp_millis_opt(ms).single().unwrap(),
                &evs,
            )
        };
        assert!(!at(5).exists);
        assert_eq!(at(15).state.unwrap()["name"], "a");
        assert_eq!(at(20).version, Some(2));
        assert!(!at(31).exists && at(31).state.is_none());
    }
}
