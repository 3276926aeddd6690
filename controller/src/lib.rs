//! bssctl: one `topology.yaml` to a rendered, checked, planned and running BSS stack.
//!
//! Pure core (`topology`, `render`, `plan`, `crd`) with no I/O beyond reading inputs; side effects
//! live in `check` (real tools), `state` and the runtime.

pub mod agent;
pub mod check;
pub mod crd;
pub mod diag;
pub mod docker;
pub mod failover;
pub mod pgsql;
pub mod plan;
pub mod probe;
pub mod progress;
pub mod render;
pub mod runtime;
pub mod state;
pub mod tools;
pub mod topology;
