//! bss-backend: the BSS service. See README.md for the configuration contract.

pub mod api;
pub mod cache;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod invalidate;
pub mod kafka;
pub mod loadgen;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod outbox;
pub mod replay;
pub mod server;
pub mod store;
pub mod streams;
