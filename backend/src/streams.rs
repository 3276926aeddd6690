//! Stream processors. `customer-analytics` keeps per-customer aggregates from customer and
//! order events; `order-processor` keeps per-order aggregates (status durations, items, totals).
//!
//! Batches: the processor takes what the broker has ready (up to `BATCH_MAX` messages, waiting
//! at most `BATCH_WAIT` after the first) and applies the whole batch in ONE database transaction
//! (one commit per batch instead of one per event), then produces every snapshot without
//! waiting for each acknowledgement, awaits them together, and only then stores the batch's
//! offsets for commit.
//!
//! Exactly-once effects: the batch's event ids are recorded (`stream_processed_events`) in the
//! same transaction as their effects, so a redelivered event (outbox retry, restart before an
//! offset commit, replay) changes nothing. Each snapshot published to `bss.analytics.events`
//! has an id derived from (processor, aggregate, aggregate version), so a re-publish after a
//! crash carries the same id.

use chrono::{DateTime, Utc};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::Config;
use crate::events::CloudEvent;
use crate::kafka;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Processor {
    CustomerAnalytics,
    OrderProcessor,
}

impl Processor {
    pub fn name(self) -> &'static str {
        match self {
            Processor::CustomerAnalytics => "customer-analytics",
            Processor::OrderProcessor => "order-processor",
        }
    }

    pub fn group(self, prefix: &str) -> String {
        format!("{prefix}.{}", self.name())
    }

    pub fn topics(self, prefix: &str) -> Vec<String> {
        match self {
            Processor::CustomerAnalytics => vec![
                format!("{prefix}.customer.events"),
                format!("{prefix}.order.events"),
            ],
            Processor::OrderProcessor => vec![format!("{prefix}.order.events")],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("failed to set up the consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("failed to create topics: {0}")]
    Topics(#[from] kafka::KafkaError),
    #[error("failed to update aggregates: {0}")]
    Db(#[from] sqlx::Error),
    #[error("failed to publish the aggregate: {0}")]
    Publish(String),
}

pub async fn run_until_signal(cfg: Config, p: Processor) -> anyhow::Result<()> {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(run(cfg, p, rx));
    crate::server::shutdown_signal().await;
    let _ = tx.send(true);
    task.await??;
    Ok(())
}

/// Runs the processor until `shutdown` turns true.
pub async fn run(
    cfg: Config,
    p: Processor,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let prefix = &cfg.kafka.topic_prefix;
    let pool = crate::db::pool(
        &cfg.database.write_url,
        cfg.database.password.as_deref(),
        cfg.database.max_connections.min(4),
    )?;
    let mut topics = p.topics(prefix);
    topics.push(format!("{prefix}.analytics.events"));
    kafka::ensure_topics(&cfg.kafka.brokers, &topics).await?;
    let producer = kafka::producer(&cfg.kafka.brokers)?;
    let consumer: StreamConsumer = kafka::base_config(&cfg.kafka.brokers)
        .set("group.id", p.group(&cfg.streams.group_prefix))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "500")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .create()?;
    let owned = p.topics(prefix);
    let subscribe: Vec<&str> = owned.iter().map(String::as_str).collect();
    consumer.subscribe(&subscribe)?;
    let analytics = format!("{prefix}.analytics.events");
    tracing::info!(processor = p.name(), group = %p.group(&cfg.streams.group_prefix), "stream processor started");
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => break,
            m = consumer.recv() => m,
        };
        let first = match first {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH_MAX {
            match tokio::time::timeout_at(until, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                Err(_) => break,
            }
        }
        let events: Vec<Option<CloudEvent>> = batch
            .iter()
            .map(|m| {
                let ev = m
                    .payload()
                    .and_then(|b| serde_json::from_slice::<CloudEvent>(b).ok());
                if ev.is_none() {
                    tracing::warn!(
                        offset = m.offset(),
                        "skipping a message that is not a CloudEvent"
                    );
                }
                ev
            })
            .collect();
        // Retry the batch until it is applied and published: skipping it would lose events.
        let mut backoff = Duration::from_millis(100);
        let snapshots = loop {
            match apply_batch(p, &pool, &events).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, messages = batch.len(), "applying a batch failed, retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let records: Vec<(String, String)> = snapshots
            .into_iter()
            .map(|snap| snapshot_record(p, snap))
            .collect::<Result<_, _>>()?;
        let mut backoff = Duration::from_millis(100);
        loop {
            match publish_all(&producer, &analytics, &records).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "publishing snapshots failed, retrying");
                    tokio::select! {
                        _ = shutdown.changed() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        for m in &batch {
            consumer.store_offset_from_message(m)?;
        }
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    close_bounded(consumer, producer);
    tracing::info!(processor = p.name(), "stream processor stopped");
    Ok(())
}

/// Longest wait for the Kafka clients to close once the offsets are committed.
const CLOSE_WAIT: Duration = Duration::from_millis(300);

/// Drops the clients on a thread of their own and waits at most [`CLOSE_WAIT`] for them.
///
/// A consumer dropped while its group join is still in progress waits for the join to finish
/// (seen: ~2 s for a processor stopped just after it started), which held up every stop of
/// the stack. Nothing is lost by not waiting: the offsets of every applied batch are committed
/// above, and the broker drops a member that left without saying so after its session timeout.
/// A plain thread rather than `spawn_blocking`: the runtime waits for its blocking tasks when it
/// shuts down, the process does not wait for its other threads.
fn close_bounded(consumer: StreamConsumer, producer: FutureProducer) {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(consumer);
            drop(producer);
            let _ = done_tx.send(());
        });
    if spawned.is_ok() && done_rx.recv_timeout(CLOSE_WAIT).is_err() {
        tracing::info!(
            wait_ms = CLOSE_WAIT.as_millis() as u64,
            "the Kafka clients are still closing (group join in progress); not waiting for them"
        );
    }
}

/// Most messages applied in one transaction.
const BATCH_MAX: usize = 500;
/// Longest wait for more messages once one has arrived.
const BATCH_WAIT: Duration = Duration::from_millis(20);

/// Applies a batch of events in one transaction; returns the snapshots to publish, in order.
async fn apply_batch(
    p: Processor,
    pool: &PgPool,
    events: &[Option<CloudEvent>],
) -> Result<Vec<(Uuid, &'static str, Value)>, StreamError> {
    let ids: Vec<String> = events.iter().flatten().map(|e| e.id.clone()).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    // Which of the batch's events are new to this processor (one statement for the batch).
    let fresh: Vec<String> = sqlx::query_scalar(
        "INSERT INTO stream_processed_events (processor, event_id) SELECT $1, unnest($2::text[]) \
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(p.name())
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut fresh: HashSet<String> = fresh.into_iter().collect();
    let mut out = Vec::new();
    for ev in events.iter().flatten() {
        // An id seen twice in one batch is applied once: the first occurrence takes it.
        let is_fresh = fresh.remove(&ev.id);
        let snapshot = match p {
            Processor::CustomerAnalytics => customer_analytics(&mut tx, ev, is_fresh).await?,
            Processor::OrderProcessor => order_processor(&mut tx, ev, is_fresh).await?,
        };
        out.extend(snapshot);
    }
    tx.commit().await?;
    Ok(out)
}

/// The analytics CloudEvent of a snapshot: (key, payload).
fn snapshot_record(
    p: Processor,
    (aggregate, kind, snap): (Uuid, &'static str, Value),
) -> Result<(String, String), StreamError> {
    let version = snap
        .get("aggregateVersion")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("{}:{aggregate}:{version}", p.name()).as_bytes(),
    );
    let mut out = CloudEvent::new(
        "analytics",
        aggregate,
        &format!("{kind}.updated"),
        snap,
        Some(version),
        None,
    );
    out.id = id.to_string();
    out.source = format!("urn:bss:analytics:{}:{aggregate}", p.name());
    let payload = serde_json::to_string(&out).map_err(|e| StreamError::Publish(e.to_string()))?;
    Ok((aggregate.to_string(), payload))
}

/// Produces every record, then awaits all acknowledgements together.
async fn publish_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, String)],
) -> Result<(), StreamError> {
    let mut pending = Vec::with_capacity(records.len());
    for (key, payload) in records {
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/cloudevents+json; charset=UTF-8"),
        });
        let rec = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        match producer.send_result(rec) {
            Ok(f) => pending.push(f),
            Err((e, _)) => {
                // Queue full or similar: let what was queued finish, then report.
                let _ = futures::future::join_all(pending).await;
                return Err(StreamError::Publish(e.to_string()));
            }
        }
    }
    for r in futures::future::join_all(pending).await {
        match r {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(StreamError::Publish(e.to_string())),
            Err(_) => return Err(StreamError::Publish("delivery canceled".into())),
        }
    }
    Ok(())
}

fn data_str<'a>(ev: &'a CloudEvent, field: &str) -> Option<&'a str> {
    ev.data.get(field).and_then(Value::as_str)
}

fn data_uuid(ev: &CloudEvent, field: &str) -> Option<Uuid> {
    data_str(ev, field).and_then(|s| Uuid::parse_str(s).ok())
}

type Snapshot = Option<(Uuid, &'static str, Value)>;
/// status, orders total/completed/cancelled, order value, events seen, aggregate version.
type CustomerRow = (Option<String>, i64, i64, i64, Decimal, i64, i64);
/// customer, status, since, durations, items, total, transitions, aggregate version.
type OrderRow = (
    Option<Uuid>,
    String,
    DateTime<Utc>,
    sqlx::types::Json<Value>,
    i64,
    Decimal,
    i64,
    i64,
);

async fn customer_analytics(
    tx: &mut PgConnection,
    ev: &CloudEvent,
    fresh: bool,
) -> Result<Snapshot, StreamError> {
    let (entity, action) = (ev.entity().unwrap_or(""), ev.action().unwrap_or(""));
    let customer = match entity {
        "customer" => data_uuid(ev, "id"),
        "order" => data_uuid(ev, "customerId"),
        _ => None,
    };
    let Some(customer) = customer else {
        return Ok(None);
    };
    const COLUMNS: &str = "status, orders_total, orders_completed, orders_cancelled, order_value, \
                           events_seen, aggregate_version";
    let row: Option<CustomerRow> = if fresh {
        let (mut total, mut completed, mut cancelled) = (0i64, 0i64, 0i64);
        let mut value = Decimal::ZERO;
        let mut status: Option<String> = None;
        match (entity, action) {
            ("customer", _) => status = data_str(ev, "status").map(String::from),
            ("order", "created") => total = 1,
            ("order", "completed") => {
                completed = 1;
                value = data_str(ev, "totalAmount")
                    .and_then(|s| Decimal::from_str(s).ok())
                    .unwrap_or(Decimal::ZERO);
            }
            ("order", "cancelled") => cancelled = 1,
            _ => {}
        }
        // One round trip per event: the upsert returns the new aggregate.
        sqlx::query_as(&format!(
            "INSERT INTO analytics_customers AS a (customer_id, status, orders_total, orders_completed, \
             orders_cancelled, order_value, events_seen, aggregate_version) VALUES ($1,$2,$3,$4,$5,$6,1,1) \
             ON CONFLICT (customer_id) DO UPDATE SET status = COALESCE(EXCLUDED.status, a.status), \
             orders_total = a.orders_total + EXCLUDED.orders_total, \
             orders_completed = a.orders_completed + EXCLUDED.orders_completed, \
             orders_cancelled = a.orders_cancelled + EXCLUDED.orders_cancelled, \
             order_value = a.order_value + EXCLUDED.order_value, events_seen = a.events_seen + 1, \
             aggregate_version = a.aggregate_version + 1, updated_at = now() RETURNING {COLUMNS}"
        ))
        .bind(customer)
        .bind(status)
        .bind(total)
        .bind(completed)
        .bind(cancelled)
        .bind(value)
        .fetch_optional(&mut *tx)
        .await?
    } else {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM analytics_customers WHERE customer_id = $1"
        ))
        .bind(customer)
        .fetch_optional(&mut *tx)
        .await?
    };
    Ok(row.map(|(status, total, completed, cancelled, value, seen, version)| {
        (
            customer,
            "customer",
            json!({"customerId": customer, "status": status, "ordersTotal": total, "ordersCompleted": completed,
                   "ordersCancelled": cancelled, "orderValue": value.to_string(), "eventsSeen": seen,
                   "aggregateVersion": version}),
        )
    }))
}

async fn order_processor(
    tx: &mut PgConnection,
    ev: &CloudEvent,
    fresh: bool,
) -> Result<Snapshot, StreamError> {
    if ev.entity() != Some("order") {
        return Ok(None);
    }
    let Some(order) = data_uuid(ev, "id") else {
        return Ok(None);
    };
    let status = data_str(ev, "status").unwrap_or("UNKNOWN").to_string();
    let time: DateTime<Utc> = ev.time;
    let items = ev
        .data
        .get("items")
        .and_then(Value::as_array)
        .map(|a| a.len() as i64)
        .unwrap_or(0);
    let total = data_str(ev, "totalAmount")
        .and_then(|s| Decimal::from_str(s).ok())
        .unwrap_or(Decimal::ZERO);
    const COLUMNS: &str = "customer_id, status, status_since, status_durations, item_count, \
                           total_amount, transitions, aggregate_version";
    let row: Option<OrderRow> = if fresh {
        // One round trip per event. On a status change the time spent in the previous status
        // (whole milliseconds, never negative) is added to its duration, in the statement.
        sqlx::query_as(&format!(
            "INSERT INTO analytics_orders AS a (order_id, customer_id, status, status_since, item_count, \
             total_amount, transitions, aggregate_version) VALUES ($1,$2,$3,$4,$5,$6,0,1) \
             ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, \
             status_since = CASE WHEN a.status <> EXCLUDED.status THEN EXCLUDED.status_since ELSE a.status_since END, \
             status_durations = CASE WHEN a.status <> EXCLUDED.status THEN a.status_durations || \
               jsonb_build_object(a.status, COALESCE((a.status_durations ->> a.status)::bigint, 0) + \
               GREATEST(0, trunc(extract(epoch FROM EXCLUDED.status_since - a.status_since) * 1000)::bigint)) \
               ELSE a.status_durations END, \
             item_count = EXCLUDED.item_count, total_amount = EXCLUDED.total_amount, \
             transitions = a.transitions + CASE WHEN a.status <> EXCLUDED.status THEN 1 ELSE 0 END, \
             aggregate_version = a.aggregate_version + 1, updated_at = now() RETURNING {COLUMNS}"
        ))
        .bind(order)
        .bind(data_uuid(ev, "customerId"))
        .bind(&status)
        .bind(time)
        .bind(items)
        .bind(total)
        .fetch_optional(&mut *tx)
        .await?
    } else {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM analytics_orders WHERE order_id = $1"
        ))
        .bind(order)
        .fetch_optional(&mut *tx)
        .await?
    };
    Ok(row.map(|(customer, status, since, durations, items, total, transitions, version)| {
        (
            order,
            "order",
            json!({"orderId": order, "customerId": customer, "status": status, "statusSince": since,
                   "statusDurationsMs": durations.0, "itemCount": items, "totalAmount": total.to_string(),
                   "transitions": transitions, "aggregateVersion": version}),
        )
    }))
}
