//! The write path: one data-modifying statement per request.
//!
//! A handler builds the new state of its entity in Rust (ids, numbers, totals, timestamps and
//! version are all known before anything is written), then sends ONE statement: a CTE that
//! writes the entity rows (guarded: `WHERE version = $n`, `WHERE EXISTS (…)` for references)
//! and inserts the outbox rows of its events, in autocommit (no BEGIN/COMMIT round trips, no
//! row lock held across round trips). The final SELECT returns how many rows each guarded part
//! wrote, so a guard that did not hold (a concurrent change) is told apart from success.
//!
//! After the statement has committed the cache is invalidated for exactly the rows written
//! (one Redis pipeline); the statement and the invalidation run in their own task, so a client
//! that disconnects can never leave a committed write with a stale cache entry. This module owns
//! that sequence; it does not validate input or decide domain rules (the handlers do).
//!
//! A statement may also name the entities it writes as they will be after it (`remember`):
//! after commit they are kept, with the writing transaction's id (the rows' `xmin`), as this
//! process's recent writes (`Cache::recent`), which a later status change uses instead of a
//! read, guarded by `xmin_guard`.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Row};
use uuid::Uuid;

use super::{AppState, Shared};
use crate::cache::Change;
use crate::error::{ApiResult, AppError};
use crate::events::CloudEvent;
use crate::model::Entity;

/// Now, truncated to the microseconds PostgreSQL stores, so the value a handler returns equals
/// the one a later read returns.
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The cache entries a change of `e` makes stale.
pub fn change_of<E: Entity>(e: &E) -> Change {
    Change {
        entity: E::NAME,
        id: e.id(),
        customer: e.customer_id(),
    }
}

/// One statement under construction: named CTEs, their bound arguments, and the CTEs whose
/// row counts the statement returns.
pub struct Write {
    ctes: Vec<(String, String)>,
    counted: Vec<String>,
    args: PgArguments,
    n: usize,
    error: Option<String>,
    remember: Vec<(&'static str, Uuid, serde_json::Value)>,
    /// `Cache::recent_epoch` when what is remembered was read (None: when the statement runs).
    based_on: Option<u64>,
}

impl Default for Write {
    fn default() -> Self {
        Self::new()
    }
}

impl Write {
    pub fn new() -> Self {
        Write {
            ctes: Vec::new(),
            counted: Vec::new(),
            args: PgArguments::default(),
            n: 0,
            error: None,
            remember: Vec::new(),
            based_on: None,
        }
    }

    /// Binds a value and returns its placeholder (`$n`).
    pub fn bind<'q, T>(&mut self, v: T) -> String
    where
        T: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + 'q,
    {
        if let Err(e) = self.args.add(v) {
            self.error.get_or_insert(e.to_string());
        }
        self.n += 1;
        format!("${}", self.n)
    }

    /// Adds `name AS (sql)`; `counted` makes the statement return its row count.
    pub fn cte(&mut self, name: &str, sql: String, counted: bool) {
        self.ctes.push((name.to_string(), sql));
        if counted {
            self.counted.push(name.to_string());
        }
    }

    /// After a successful run, remember `value` (the JSON of `e` as the statement leaves it)
    /// as a recent write of this process.
    pub fn remember<E: Entity>(&mut self, e: &E) {
        match serde_json::to_value(e) {
            Ok(v) => self.remember.push((E::NAME, e.id(), v)),
            Err(err) => {
                self.error.get_or_insert(err.to_string());
            }
        }
    }

    /// What is remembered was built from what the handler read when the recent writes stood at
    /// `epoch` (`Cache::recent_epoch`, taken before the read).
    pub fn based_on(&mut self, epoch: u64) {
        self.based_on = Some(epoch);
    }

    /// ` AND xmin::text = $n` when `xmin` is given: the row is still exactly the version that
    /// transaction wrote (any update, by any client, gives the row a new `xmin`).
    pub fn xmin_guard(&mut self, xmin: Option<&str>) -> String {
        match xmin {
            Some(x) => format!(" AND xmin::text = {}", self.bind(x.to_string())),
            None => String::new(),
        }
    }

    /// Adds the outbox row of `ev` (topic of `E`) and its `outbox_pending` entry, written only
    /// if `source` wrote a row.
    pub fn event<E: Entity>(&mut self, st: &AppState, source: &str, e: &E, ev: &CloudEvent) {
        let payload = match serde_json::to_value(ev) {
            Ok(p) => p,
            Err(err) => {
                self.error.get_or_insert(err.to_string());
                serde_json::Value::Null
            }
        };
        let event_id = Uuid::parse_str(&ev.id).unwrap_or_else(|_| Uuid::new_v4());
        let sql = format!(
            "INSERT INTO outbox (event_id, topic, aggregate_id, event_type, payload, created_at) \
             SELECT {}, {}, {}, {}, {}, {} FROM {source} RETURNING seq",
            self.bind(event_id),
            self.bind(st.topic(E::NAME)),
            self.bind(e.id()),
            self.bind(ev.type_.clone()),
            self.bind(payload),
            self.bind(ev.time),
        );
        let name = format!("ev{}", self.ctes.len());
        let pending = format!("INSERT INTO outbox_pending (seq) SELECT seq FROM {name}");
        self.cte(&name, sql, false);
        // Listed for the relay in the same statement (see migration 0003).
        self.cte(&format!("{name}p"), pending, false);
    }

    fn sql(&self) -> String {
        let ctes: Vec<String> = self
            .ctes
            .iter()
            .map(|(n, s)| format!("{n} AS ({s})"))
            .collect();
        let mut counts: Vec<String> = self
            .counted
            .iter()
            .map(|n| format!("(SELECT count(*) FROM {n})"))
            .collect();
        if !self.remember.is_empty() {
            // The id of this (autocommit) transaction as the rows' `xmin` shows it: the low
            // 32 bits of the epoch-extended id.
            counts.push("mod(pg_current_xact_id()::text::int8, 4294967296)::text".into());
        }
        format!(
            "WITH {} SELECT {}",
            ctes.join(", "),
            if counts.is_empty() {
                "0::int8".to_string()
            } else {
                counts.join(", ")
            }
        )
    }

    /// Runs the statement and then invalidates `changes` (only when every counted CTE wrote a
    /// row, i.e. the write happened). Returns the counts.
    pub async fn run(self, st: &Shared, changes: Vec<Change>) -> ApiResult<Vec<i64>> {
        if let Some(e) = self.error {
            return Err(AppError::internal(format!("failed to encode a write: {e}")));
        }
        let sql = self.sql();
        let counted = self.counted.len();
        let args = self.args;
        let remember = self.remember;
        let based_on = self.based_on;
        let st = st.clone();
        let task = tokio::spawn(async move {
            let epoch = based_on.unwrap_or_else(|| st.cache.recent_epoch());
            let row = sqlx::query_with(&sql, args).fetch_one(&st.write).await?;
            let mut counts = Vec::with_capacity(counted);
            for i in 0..counted {
                counts.push(row.try_get::<i64, _>(i)?);
            }
            if counts.iter().all(|c| *c > 0) {
                invalidate(&st, &changes).await;
                if !remember.is_empty() {
                    let xmin: String = row.try_get(counted)?;
                    for (entity, id, v) in remember {
                        st.cache.remember(epoch, entity, id, xmin.clone(), v);
                    }
                }
            }
            Ok::<_, AppError>(counts)
        });
        task.await
            .map_err(|e| AppError::internal(format!("write task failed: {e}")))?
    }
}

/// Commits a multi-statement transaction and invalidates `changes`, in a task of its own (see
/// the module header: a dropped request must not separate the two).
pub async fn commit(
    st: &Shared,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    changes: Vec<Change>,
) -> ApiResult<()> {
    let st = st.clone();
    tokio::spawn(async move {
        tx.commit().await?;
        invalidate(&st, &changes).await;
        Ok::<_, AppError>(())
    })
    .await
    .map_err(|e| AppError::internal(format!("commit task failed: {e}")))?
}

async fn invalidate(st: &AppState, changes: &[Change]) {
    for c in changes {
        if let Some(table) = super::plural_of(c.entity) {
            st.metrics
                .cache_invalidations_total
                .with_label_values(&[table])
                .inc();
        }
    }
    if let Err(e) = st.cache.invalidate_many(changes).await {
        // The write is committed; its cache entries must not survive. Reads bypass the cache
        // until the listener has resynchronised (global generation bump).
        tracing::warn!(error = %e, "cache invalidation after commit failed; resynchronising");
        st.cache.request_resync();
    }
}
