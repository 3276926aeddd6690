//! The outbox relay: publishes unsent outbox rows (those listed in `outbox_pending`) to their
//! topic, keyed by aggregate id, and deletes their pending entries in the same transaction that
//! locked them; the outbox rows themselves are never updated (migration 0003). A broker outage
//! makes a batch fail and roll back; it is retried until the broker returns, so no event is
//! lost. A partially delivered batch is re-sent, so consumers deduplicate by event id
//! (at-least-once).

use chrono::{DateTime, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use uuid::Uuid;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("failed to read or mark outbox rows: {0}")]
    Db(#[from] sqlx::Error),
    #[error("failed to publish event {event_id} to {topic}: {reason}")]
    Publish {
        event_id: Uuid,
        topic: String,
        reason: String,
    },
}

pub struct Relay {
    pub pool: PgPool,
    /// Used to re-create topics after a broker came back empty (tansu's memory storage).
    pub brokers: String,
    pub topics: Vec<String>,
    pub producer: FutureProducer,
    pub batch_size: i64,
    /// Wait after a poll that found nothing.
    pub poll_interval: Duration,
    /// Wait after a batch that found rows but fewer than `batch_size` (≥ `poll_interval`): under
    /// load the rows of one window go out as one batch (see `OutboxConfig::batch_window_ms`).
    pub batch_window: Duration,
    pub metrics: Metrics,
}

#[derive(sqlx::FromRow)]
struct Row {
    seq: i64,
    event_id: Uuid,
    topic: String,
    aggregate_id: Uuid,
    event_type: String,
    payload: String,
    created_at: DateTime<Utc>,
}

/// The relay's wait after a batch of `sent` rows that was not full: events keep arriving, so
/// collect a window's worth; nothing arrived, so poll again soon (the first event after a quiet
/// spell waits at most one poll interval).
fn next_wait(sent: usize, poll_interval: Duration, batch_window: Duration) -> Duration {
    if sent == 0 {
        poll_interval
    } else {
        batch_window.max(poll_interval)
    }
}

impl Relay {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = self.poll_interval;
        // The backlog gauge is refreshed independently: a publish attempt may block for the
        // whole delivery timeout while the broker is down, which is exactly when it matters.
        let (pool, metrics, mut stop) = (self.pool.clone(), self.metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox_pending")
                    .fetch_one(&pool)
                    .await
                {
                    metrics.outbox_pending.set(n);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
        let mut last_cleanup = Instant::now();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let wait = match self.relay_once().await {
                Ok(n) if n as i64 >= self.batch_size => Duration::ZERO,
                Ok(n) => {
                    backoff = self.poll_interval;
                    next_wait(n, self.poll_interval, self.batch_window)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox batch not published, will retry");
                    if matches!(e, RelayError::Publish { .. }) {
                        if let Err(e) =
                            crate::kafka::ensure_topics(&self.brokers, &self.topics).await
                        {
                            tracing::debug!(error = %e, "topics not ensured");
                        }
                    }
                    self.metrics
                        .outbox_publish_failures_total
                        .with_label_values(&[match e {
                            RelayError::Db(_) => "database",
                            RelayError::Publish { .. } => "broker",
                        }])
                        .inc();
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    backoff
                }
            };
            if last_cleanup.elapsed() > Duration::from_secs(60) {
                last_cleanup = Instant::now();
                // Published rows are kept an hour (replay checks, debugging); pending ones stay.
                let _ = sqlx::query(
                    "DELETE FROM outbox o WHERE o.created_at < now() - interval '1 hour' \
                     AND NOT EXISTS (SELECT 1 FROM outbox_pending p WHERE p.seq = o.seq)",
                )
                .execute(&self.pool)
                .await;
            }
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// The first of `topics` the broker does not report (or could not be asked about).
    async fn missing_topic(&self, topics: &[String]) -> Option<String> {
        let producer = self.producer.clone();
        let wanted = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            let md = match producer
                .client()
                .fetch_metadata(None, Duration::from_secs(5))
            {
                Ok(md) => md,
                Err(_) => return wanted.first().cloned(),
            };
            wanted.into_iter().find(|w| {
                !md.topics()
                    .iter()
                    .any(|t| t.name() == w && t.error().is_none() && !t.partitions().is_empty())
            })
        })
        .await
        .unwrap_or_else(|_| topics.first().cloned())
    }

    /// Publishes one batch; returns how many rows were sent.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        // One relay at a time across all backend instances keeps per-aggregate order.
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(7461626)")
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT o.seq, o.event_id, o.topic, o.aggregate_id, o.event_type, \
             o.payload::text AS payload, o.created_at \
             FROM outbox_pending p JOIN outbox o ON o.seq = p.seq ORDER BY p.seq LIMIT $1",
        )
        .bind(self.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let start = Instant::now();
        let mut pending = Vec::with_capacity(rows.len());
        for r in &rows {
            let key = r.aggregate_id.to_string();
            let id = r.event_id.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "content-type",
                    value: Some("application/cloudevents+json; charset=UTF-8"),
                })
                .insert(Header {
                    key: "ce_id",
                    value: Some(id.as_str()),
                })
                .insert(Header {
                    key: "ce_type",
                    value: Some(r.event_type.as_str()),
                });
            let rec = FutureRecord::to(&r.topic)
                .key(&key)
                .payload(&r.payload)
                .timestamp(r.created_at.timestamp_millis())
                .headers(headers);
            match self.producer.send_result(rec) {
                Ok(f) => pending.push(f),
                Err((e, _)) => {
                    return Err(RelayError::Publish {
                        event_id: r.event_id,
                        topic: r.topic.clone(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        let results = futures::future::join_all(pending).await;
        for (r, res) in rows.iter().zip(results) {
            let failed = match res {
                Ok(Ok(_)) => None,
                Ok(Err((e, _))) => Some(e.to_string()),
                Err(_) => Some("delivery canceled".to_string()),
            };
            if let Some(reason) = failed {
                return Err(RelayError::Publish {
                    event_id: r.event_id,
                    topic: r.topic.clone(),
                    reason,
                });
            }
        }
        // tansu acknowledges produce requests for a topic it does not have (after a restart of
        // its memory storage), dropping the data. Before marking anything sent, confirm every
        // topic of the batch exists; otherwise roll back, so the batch is re-created and re-sent.
        let mut topics: Vec<String> = rows.iter().map(|r| r.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        if let Some(missing) = self.missing_topic(&topics).await {
            return Err(RelayError::Publish {
                event_id: rows[0].event_id,
                topic: missing,
                reason: "topic missing on the broker after delivery; re-sending".into(),
            });
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        sqlx::query("DELETE FROM outbox_pending WHERE seq = ANY($1)")
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let elapsed = start.elapsed().as_secs_f64();
        for r in &rows {
            self.metrics
                .events_total
                .with_label_values(&[&r.event_type])
                .inc();
        }
        if let Some(first) = rows.first() {
            self.metrics
                .event_publish_duration_seconds
                .with_label_values(&[&first.topic])
                .observe(elapsed);
        }
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_a_window_after_rows_and_a_poll_interval_after_none() {
        let (poll, window) = (Duration::from_millis(50), Duration::from_millis(150));
        assert_eq!(next_wait(0, poll, window), poll);
        assert_eq!(next_wait(1, poll, window), window);
        assert_eq!(next_wait(499, poll, window), window);
        // A window shorter than the poll interval never makes the relay poll faster.
        assert_eq!(next_wait(3, poll, Duration::from_millis(10)), poll);
    }
}
