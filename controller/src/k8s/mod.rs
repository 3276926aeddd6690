//! The Kubernetes runtime: pure manifest builders (`manifests`, `labels`, `roles`, `instance`),
//! Secret handling (`secrets`) and the command-line entry points (`cli`).
//!
//! Everything here except `cli` is pure: no client, no I/O beyond the render's secret file.
//! Not here: rendering config files (`render`), validation (`topology`).

pub mod cli;
pub mod instance;
pub mod labels;
pub mod manifests;
pub mod rbac;
pub mod roles;
pub mod secrets;
