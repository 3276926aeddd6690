//! Replay, time travel and consumer-group offset snapshots over HTTP.

use axum::Router;

use super::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
}
