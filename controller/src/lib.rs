//! bssctl: one `topology.yaml` to a rendered, checked, planned and running BSS stack.
//!
//! Pure core (`topology`, `render`, `plan`, `crd`) with no I/O beyond reading inputs; side effects
//! live in `check` (real tools), `state` and the runtime.

pub mod check;
pub mod crd;
pub mod diag;
pub mod plan;
pub mod render;
pub mod state;
pub mod tools;
pub mod topology;
