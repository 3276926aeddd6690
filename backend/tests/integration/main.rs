//! Integration tests against real PostgreSQL, Redis and tansu started on free ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod cache;
mod fuzz;
mod outbox;
mod replay;
mod split;
mod streams;
mod test_support;
