//! CloudEvents 1.0 envelopes of state changes, and writing them to the transactional outbox.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

/// A CloudEvents 1.0 event in structured JSON mode. `bssversion` (entity version after the
/// change) and `bsspreviousstatus` are extension attributes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bssversion: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bsspreviousstatus: Option<String>,
}

impl CloudEvent {
    pub fn new(
        entity: &str,
        id: Uuid,
        action: &str,
        data: serde_json::Value,
        version: Option<i64>,
        previous_status: Option<String>,
    ) -> Self {
        CloudEvent {
            specversion: "1.0".into(),
            id: Uuid::new_v4().to_string(),
            source: format!("urn:bss:{entity}:{id}"),
            type_: event_type(entity, action),
            subject: Some(id.to_string()),
            time: Utc::now(),
            datacontenttype: "application/json".into(),
            data,
            bssversion: version,
            bsspreviousstatus: previous_status,
        }
    }

    /// `customer` from `com.bss.customer.created.v1`.
    pub fn entity(&self) -> Option<&str> {
        self.type_.strip_prefix("com.bss.")?.split('.').next()
    }

    /// `created` from `com.bss.customer.created.v1`.
    pub fn action(&self) -> Option<&str> {
        self.type_.strip_prefix("com.bss.")?.split('.').nth(1)
    }
}

pub fn event_type(entity: &str, action: &str) -> String {
    format!("com.bss.{entity}.{action}.v1")
}

/// Writes the event into the outbox, and its seq into `outbox_pending` for the relay, inside
/// the caller's transaction: the change and its event commit together or not at all.
pub async fn record(
    conn: &mut PgConnection,
    topic: &str,
    aggregate_id: Uuid,
    event: &CloudEvent,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_value(event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let event_id = Uuid::parse_str(&event.id).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query(
        "WITH e AS (INSERT INTO outbox (event_id, topic, aggregate_id, event_type, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq) \
         INSERT INTO outbox_pending (seq) SELECT seq FROM e",
    )
    .bind(event_id)
    .bind(topic)
    .bind(aggregate_id)
    .bind(&event.type_)
    .bind(payload)
    .bind(event.time)
    .execute(conn)
    .await?;
    Ok(())
}
