//! HTTP endpoints of replay, time travel (state at an instant, timeline) and consumer-group
//! offset snapshots. The broker work runs on the blocking pool.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, TimeZone, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

use super::input::{json_object, path_id, Fields, QueryFields};
use super::Shared;
use crate::error::{ApiResult, AppError};
use crate::kafka;
use crate::replay::{
    self, GroupOffset, JobState, ReplayError, ReplayJob, Speed, StateAt, StoredEvent,
};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/replay", post(start_replay))
        .route("/replay/{id}", get(replay_status))
        .route("/history/{entity}/{id}", get(entity_state_at))
        .route("/history/{entity}/{id}/timeline", get(timeline))
        .route(
            "/consumer-groups/{group}/snapshots",
            post(take_snapshot).get(list_snapshots),
        )
        .route(
            "/consumer-groups/{group}/snapshots/{snapshot}/restore",
            post(restore_snapshot),
        )
}

impl From<ReplayError> for AppError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::NoTopic(_) | ReplayError::TooMany => {
                AppError::Unprocessable(e.to_string())
            }
            ReplayError::Kafka(_) | ReplayError::Publish(_) => AppError::Unavailable(e.to_string()),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ReplayError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::from)
}

/// Result of an inline replay: the events of the window, in time order.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayResult {
    pub topic: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub count: usize,
    pub ranges: Vec<replay::PartitionRange>,
    pub events: Vec<StoredEvent>,
}

fn parse_instant(f: &mut Fields<'_>, name: &str, required: bool) -> Option<DateTime<Utc>> {
    let s = f.string(name, required, 64)?;
    match DateTime::parse_from_rfc3339(&s) {
        Ok(d) => Some(d.with_timezone(&Utc)),
        Err(_) => {
            f.error(name, "must be an RFC 3339 date-time");
            None
        }
    }
}

fn topic_ok(st: &Shared, t: &str) -> bool {
    t.starts_with(&format!("{}.", st.topic_prefix))
        && t.len() <= 200
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// `POST /replay`: without `targetTopic` the window's events are returned; with it they are
/// re-published there by a background job (202 + Location of the job).
pub async fn start_replay(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let obj = json_object(&headers, &body)?;
    let mut f = Fields::new(&obj);
    let topic = f.string("topic", true, 200);
    let from = parse_instant(&mut f, "from", true);
    let to = parse_instant(&mut f, "to", true);
    let target = f.string("targetTopic", false, 200);
    let speed = match f.raw("speed") {
        None => Speed::Max,
        Some(serde_json::Value::String(s)) if s == "max" => Speed::Max,
        Some(v) => match v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        {
            Some(x) if x > 0.0 && x <= 1_000_000.0 => Speed::Factor(x),
            _ => {
                f.error("speed", "must be \"max\" or a factor > 0 (1 = real time)");
                Speed::Max
            }
        },
    };
    if let Some(t) = &topic {
        if !topic_ok(&st, t) {
            f.error(
                "topic",
                format!("must be a topic named {}.<name>", st.topic_prefix),
            );
        }
    }
    if let Some(t) = &target {
        if !topic_ok(&st, t) {
            f.error(
                "targetTopic",
                format!("must be a topic named {}.<name>", st.topic_prefix),
            );
        }
        if Some(t) == topic.as_ref() {
            f.error("targetTopic", "must differ from topic");
        }
    }
    if let (Some(a), Some(b)) = (from, to) {
        if a >= b {
            f.error("to", "must be after from");
        }
    }
    f.into_result()?;
    let (Some(topic), Some(from), Some(to)) = (topic, from, to) else {
        return Err(AppError::field("body", "incomplete"));
    };
    let brokers = st.brokers.clone();
    match target {
        None => {
            let t2 = topic.clone();
            let (events, ranges) =
                blocking(move || replay::read_window(&brokers, &t2, from, to, None)).await?;
            Ok(Json(ReplayResult {
                topic,
                from,
                to,
                count: events.len(),
                ranges,
                events,
            })
            .into_response())
        }
        Some(target) => {
            let producer = st
                .producer
                .clone()
                .ok_or_else(|| AppError::Unavailable("no broker configured".into()))?;
            kafka::ensure_topics(&brokers, std::slice::from_ref(&target))
                .await
                .map_err(|e| AppError::Unavailable(e.to_string()))?;
            let id = Uuid::new_v4();
            let job = ReplayJob {
                id,
                source_topic: topic.clone(),
                target_topic: target.clone(),
                from,
                to,
                state: JobState::Running,
                total: 0,
                published: 0,
                error: None,
                ranges: Vec::new(),
            };
            st.replay_jobs.put(job.clone());
            let jobs = st.replay_jobs.clone();
            tokio::spawn(async move {
                let t2 = topic.clone();
                let read = tokio::task::spawn_blocking(move || {
                    replay::read_window(&brokers, &t2, from, to, None)
                })
                .await;
                let (events, ranges) = match read {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        jobs.update(id, |j| {
                            j.state = JobState::Failed;
                            j.error = Some(e.to_string());
                        });
                        return;
                    }
                    Err(e) => {
                        jobs.update(id, |j| {
                            j.state = JobState::Failed;
                            j.error = Some(e.to_string());
                        });
                        return;
                    }
                };
                jobs.update(id, |j| {
                    j.total = events.len();
                    j.ranges = ranges;
                });
                let j2 = jobs.clone();
                let progress = move |n: usize| j2.update(id, |j| j.published = n);
                let r =
                    replay::publish(&producer, &topic, &target, &events, speed, &progress).await;
                jobs.update(id, |j| match r {
                    Ok(_) => j.state = JobState::Completed,
                    Err(e) => {
                        j.state = JobState::Failed;
                        j.error = Some(e.to_string());
                    }
                });
            });
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, format!("/api/v1/replay/{id}"))],
                Json(job),
            )
                .into_response())
        }
    }
}

pub async fn replay_status(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> ApiResult<Json<ReplayJob>> {
    let id = path_id(&id)?;
    st.replay_jobs.get(id).map(Json).ok_or(AppError::NotFound {
        entity: "replay job",
        id: id.to_string(),
    })
}

fn entity_name(raw: &str) -> ApiResult<&'static str> {
    kafka::ENTITIES
        .iter()
        .find(|e| **e == raw)
        .copied()
        .ok_or_else(|| {
            AppError::field(
                "entity",
                format!("must be one of: {}", kafka::ENTITIES.join(", ")),
            )
        })
}

fn epoch() -> DateTime<Utc> {
    Utc.timestamp_millis_opt(0).single().unwrap_or_default()
}

pub async fn entity_state_at(
    State(st): State<Shared>,
    Path((entity, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<StateAt>> {
    let entity = entity_name(&entity)?;
    let id = path_id(&id)?;
    let mut f = QueryFields::new(&q);
    let at = f.datetime("at").unwrap_or_else(Utc::now);
    f.finish()?;
    let topic = st.topic(entity);
    let brokers = st.brokers.clone();
    let key = id.to_string();
    let end = at + chrono::Duration::milliseconds(1);
    let (events, _) =
        blocking(move || replay::read_window(&brokers, &topic, epoch(), end, Some(&key))).await?;
    Ok(Json(replay::state_at(entity, id, at, &events)))
}

/// One entry of an entity's timeline.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub time: DateTime<Utc>,
    pub event_id: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub version: Option<i64>,
    pub status: Option<String>,
    pub previous_status: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    pub entity: String,
    pub id: Uuid,
    pub events: Vec<TimelineEntry>,
}

pub async fn timeline(
    State(st): State<Shared>,
    Path((entity, id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Timeline>> {
    let entity = entity_name(&entity)?;
    let id = path_id(&id)?;
    let mut f = QueryFields::new(&q);
    let from = f.datetime("from").unwrap_or_else(epoch);
    let to = f
        .datetime("to")
        .unwrap_or_else(|| Utc::now() + chrono::Duration::seconds(1));
    if from >= to {
        f.error("to", "must be after from");
    }
    f.finish()?;
    let topic = st.topic(entity);
    let brokers = st.brokers.clone();
    let key = id.to_string();
    let (events, _) =
        blocking(move || replay::read_window(&brokers, &topic, from, to, Some(&key))).await?;
    let mut seen = std::collections::HashSet::new();
    let entries = events
        .into_iter()
        .filter_map(|e| {
            let ev = e.event;
            let event_id = ev.get("id")?.as_str()?.to_string();
            // Consumers deduplicate by event id; so does the timeline.
            if !seen.insert(event_id.clone()) {
                return None;
            }
            Some(TimelineEntry {
                time: e.timestamp,
                event_id,
                type_: ev.get("type")?.as_str()?.to_string(),
                version: ev.get("bssversion").and_then(|v| v.as_i64()),
                status: ev
                    .get("data")
                    .and_then(|d| d.get("status"))
                    .and_then(|s| s.as_str())
                    .map(String::from),
                previous_status: ev
                    .get("bsspreviousstatus")
                    .and_then(|s| s.as_str())
                    .map(String::from),
            })
        })
        .collect();
    Ok(Json(Timeline {
        entity: entity.to_string(),
        id,
        events: entries,
    }))
}

/// A stored snapshot of a consumer group's committed offsets.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct OffsetSnapshot {
    pub id: Uuid,
    pub group_id: String,
    pub taken_at: DateTime<Utc>,
    #[sqlx(json)]
    pub offsets: Vec<GroupOffset>,
}

fn group_ok(g: &str) -> ApiResult<()> {
    if g.is_empty()
        || g.len() > 200
        || !g
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(AppError::field(
            "group",
            "must be 1-200 characters of letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

pub async fn take_snapshot(
    State(st): State<Shared>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    group_ok(&group)?;
    let mut topics = kafka::entity_topics(&st.topic_prefix);
    if !body.is_empty() {
        let obj = json_object(&headers, &body)?;
        let mut f = Fields::new(&obj);
        if let Some(arr) = f.array("topics", false) {
            let mut list = Vec::new();
            for (i, t) in arr.iter().enumerate() {
                match t.as_str() {
                    Some(t) if topic_ok(&st, t) => list.push(t.to_string()),
                    _ => f.error(&format!("topics[{i}]"), "must be a topic name"),
                }
            }
            if list.is_empty() && !f.has_errors() {
                f.error("topics", "must not be empty");
            }
            topics = list;
        }
        f.into_result()?;
    }
    let brokers = st.brokers.clone();
    let g2 = group.clone();
    let offsets = blocking(move || replay::committed_offsets(&brokers, &g2, &topics)).await?;
    let snap: OffsetSnapshot = sqlx::query_as(
        "INSERT INTO offset_snapshots (id, group_id, offsets) VALUES ($1, $2, $3) \
         RETURNING id, group_id, taken_at, offsets",
    )
    .bind(Uuid::new_v4())
    .bind(&group)
    .bind(sqlx::types::Json(&offsets))
    .fetch_one(&st.write)
    .await?;
    Ok((StatusCode::CREATED, Json(snap)).into_response())
}

pub async fn list_snapshots(
    State(st): State<Shared>,
    Path(group): Path<String>,
) -> ApiResult<Json<Vec<OffsetSnapshot>>> {
    group_ok(&group)?;
    let rows: Vec<OffsetSnapshot> = sqlx::query_as(
        "SELECT id, group_id, taken_at, offsets FROM offset_snapshots WHERE group_id = $1 \
         ORDER BY taken_at DESC LIMIT 100",
    )
    .bind(&group)
    .fetch_all(&st.read)
    .await?;
    Ok(Json(rows))
}

pub async fn restore_snapshot(
    State(st): State<Shared>,
    Path((group, snapshot)): Path<(String, String)>,
) -> ApiResult<Json<OffsetSnapshot>> {
    group_ok(&group)?;
    let sid =
        Uuid::parse_str(&snapshot).map_err(|_| AppError::field("snapshot", "must be a UUID"))?;
    let snap: OffsetSnapshot = sqlx::query_as(
        "SELECT id, group_id, taken_at, offsets FROM offset_snapshots WHERE id = $1 AND group_id = $2",
    )
    .bind(sid)
    .bind(&group)
    .fetch_optional(&st.write)
    .await?
    .ok_or(AppError::NotFound {
        entity: "offset snapshot",
        id: sid.to_string(),
    })?;
    let brokers = st.brokers.clone();
    let offsets = snap.offsets.clone();
    blocking(move || replay::restore_offsets(&brokers, &group, &offsets)).await?;
    Ok(Json(snap))
}
