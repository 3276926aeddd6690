//! Operational endpoints: liveness, readiness (database, Redis, broker), metrics, OpenAPI.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::time::Duration;

use super::Shared;
use crate::error::AppError;

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "UP"}))
}

pub async fn ready(State(st): State<Shared>) -> Response {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&st.write),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let read_db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&st.read),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let cache = tokio::time::timeout(Duration::from_secs(2), st.cache.ping())
        .await
        .unwrap_or(false);
    let broker = match &st.producer {
        Some(p) => crate::kafka::reachable(p, Duration::from_secs(2)).await,
        None => false,
    };
    let checks = json!({
        "database": up(db), "databaseRead": up(read_db), "cache": up(cache), "broker": up(broker),
        "cacheInvalidation": up(st.cache.is_live()),
    });
    if db && read_db && cache && broker {
        Json(json!({"status": "UP", "checks": checks})).into_response()
    } else {
        let mut problem = AppError::Unavailable("a dependency is unreachable".into()).problem();
        problem.detail = format!("not ready: {checks}");
        let mut body = serde_json::to_value(&problem).unwrap_or_default();
        body["checks"] = checks;
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

fn up(b: bool) -> &'static str {
    if b {
        "UP"
    } else {
        "DOWN"
    }
}

pub async fn metrics(State(st): State<Shared>) -> Response {
    for (name, pool) in [("write", &st.write), ("read", &st.read)] {
        let idle = pool.num_idle() as i64;
        let size = pool.size() as i64;
        st.metrics
            .db_pool_connections
            .with_label_values(&[name, "idle"])
            .set(idle);
        st.metrics
            .db_pool_connections
            .with_label_values(&[name, "active"])
            .set(size - idle);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

pub async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
