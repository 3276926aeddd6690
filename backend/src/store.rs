//! Generic database access for any `Entity`: fetch, lock for update, and paged, filtered lists.
//! Entity-specific inserts and updates live with their handlers.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::error::{ApiResult, AppError};
use crate::model::{Entity, Page};

pub async fn fetch<E: Entity>(conn: &mut PgConnection, id: Uuid) -> ApiResult<Option<E>> {
    let sql = format!("{} WHERE t.id = $1", E::SELECT);
    Ok(sqlx::query_as::<_, E>(&sql)
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

pub async fn fetch_pool<E: Entity>(pool: &PgPool, id: Uuid) -> ApiResult<Option<E>> {
    let mut conn = pool.acquire().await?;
    fetch::<E>(&mut conn, id).await
}

/// Locks the row for the rest of the transaction and returns it, or 404 (one round trip).
pub async fn lock<E: Entity>(conn: &mut PgConnection, id: Uuid) -> ApiResult<E> {
    let sql = format!("{} WHERE t.id = $1 FOR UPDATE OF t", E::SELECT);
    sqlx::query_as::<_, E>(&sql)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| not_found::<E>(id))
}

pub fn not_found<E: Entity>(id: Uuid) -> AppError {
    AppError::NotFound {
        entity: E::NAME,
        id: id.to_string(),
    }
}

/// Optimistic locking: the client must send the version it read.
pub fn check_version<E: Entity>(current: &E, expected: i64) -> ApiResult<()> {
    if current.version() != expected {
        return Err(AppError::StaleVersion {
            expected,
            current: current.version(),
        });
    }
    Ok(())
}

/// A validated list request.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub page: i64,
    pub size: i64,
    pub sort_column: &'static str,
    pub descending: bool,
    pub status: Option<String>,
    pub customer_id: Option<Uuid>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
    /// Invoices only.
    pub overdue: Option<bool>,
}

impl ListQuery {
    /// Stable text form, used in cache keys.
    pub fn cache_suffix(&self) -> String {
        format!(
            "p{}:s{}:{}:{}:{}:{}:{}:{}",
            self.page,
            self.size,
            self.sort_column,
            if self.descending { "d" } else { "a" },
            self.status.as_deref().unwrap_or("-"),
            self.created_from.map(|d| d.timestamp_micros()).unwrap_or(0),
            self.created_to.map(|d| d.timestamp_micros()).unwrap_or(0),
            self.overdue.map(|b| b.to_string()).unwrap_or_default(),
        )
    }
}

fn push_filters<E: Entity>(qb: &mut QueryBuilder<'_, Postgres>, q: &ListQuery) {
    qb.push(" WHERE TRUE");
    if let Some(s) = &q.status {
        qb.push(" AND t.status = ").push_bind(s.clone());
    }
    if let (true, Some(c)) = (E::HAS_CUSTOMER, q.customer_id) {
        qb.push(" AND t.customer_id = ").push_bind(c);
    }
    if let Some(f) = q.created_from {
        qb.push(" AND t.created_at >= ").push_bind(f);
    }
    if let Some(to) = q.created_to {
        qb.push(" AND t.created_at < ").push_bind(to);
    }
    if let Some(o) = q.overdue {
        let cond = "(t.status IN ('SENT','VIEWED') AND t.due_date < current_date)";
        if o {
            qb.push(format!(" AND {cond}"));
        } else {
            qb.push(format!(" AND NOT {cond}"));
        }
    }
}

pub async fn list<E: Entity>(pool: &PgPool, q: &ListQuery) -> ApiResult<Page<E>> {
    let select = E::SELECT.replacen("SELECT ", "SELECT count(*) OVER () AS total_count__, ", 1);
    let mut qb = QueryBuilder::<Postgres>::new(select);
    push_filters::<E>(&mut qb, q);
    qb.push(format!(
        " ORDER BY t.{} {}, t.id LIMIT ",
        q.sort_column,
        if q.descending { "DESC" } else { "ASC" }
    ));
    qb.push_bind(q.size);
    qb.push(" OFFSET ").push_bind(q.page.saturating_mul(q.size));
    let rows = qb.build().fetch_all(pool).await?;
    let mut items = Vec::with_capacity(rows.len());
    let mut total: Option<i64> = None;
    for row in &rows {
        total = Some(row.try_get("total_count__")?);
        items.push(E::from_row(row)?);
    }
    let total_items = match total {
        Some(t) => t,
        // An empty first page: nothing matches (a customer without orders yet, the common case
        // of a customer's lists), no count query needed.
        None if q.page == 0 => 0,
        None => {
            let mut qb =
                QueryBuilder::<Postgres>::new(format!("SELECT count(*) FROM {} t", E::PLURAL));
            push_filters::<E>(&mut qb, q);
            qb.build_query_scalar::<i64>().fetch_one(pool).await?
        }
    };
    Ok(Page {
        items,
        page: q.page,
        size: q.size,
        total_items,
        total_pages: (total_items + q.size - 1) / q.size,
    })
}

/// Human-readable unique numbers (`ORD-3F2A…`): a prefix plus 12 hex digits of a fresh UUID.
pub fn new_number(prefix: &str) -> String {
    let u = Uuid::new_v4().simple().to_string().to_uppercase();
    format!("{prefix}-{}", &u[..12])
}
