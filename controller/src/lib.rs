//! bssctl: one `topology.yaml` to a rendered, checked, planned and running BSS stack.
//!
//! Dependency direction: the pure core (`topology`, `render`, `plan`, `crd`, `diag`) ← the engine
//! (`engine`: converge, supervision, failover, agent — generic over the runtime, client and
//! state-store seams) ← the runtime implementations (`runtime::local`) ← the `bssctl` binary.
//! `check` (real tools on rendered files), `state` (files of the state directory), `pgsql` and
//! `probe` (protocol clients) are leaves the engine and runtimes use; `derived` (files derived from
//! secret values: Redis' ACL include, basic-auth web configs) is pure and shared by every runtime.

pub mod check;
pub mod crd;
pub mod derived;
pub mod diag;
pub mod docker;
pub mod engine;
pub mod k8s;
pub mod kafka_lag;
pub mod objstore;
pub mod pgsql;
pub mod plan;
pub mod probe;
pub mod progress;
pub mod render;
pub mod runtime;
pub mod state;
pub mod tools;
pub mod topology;
