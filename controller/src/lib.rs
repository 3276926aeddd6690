//! bssctl: one `topology.yaml` to a rendered, checked, planned and running BSS stack.
//!
//! Pure core (`topology`, `render`, `plan`) with no I/O beyond reading inputs; side effects live in
//! `check` (real tools) and the runtime.

pub mod diag;
pub mod topology;
