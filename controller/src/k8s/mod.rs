//! The Kubernetes runtime: pure manifest builders (`manifests`, `labels`, `roles`, `instance`,
//! `rbac`), Secret handling (`secrets`), the operator (`operator`, `leader`, `serve`,
//! `resource`), in-cluster failover over the engine's seams (`failover`), the PostgreSQL pod's
//! entrypoint (`entrypoint`, over `pod`) and the command-line entry points (`cli`, `client`).
//!
//! The builders are pure; API calls live in `operator`, `leader`, `serve`, `failover` and
//! `client` only. Not here: rendering config files (`render`), validation (`topology`), the
//! failure detector and the failover sequence themselves (`engine`).

pub mod cli;
pub mod client;
pub mod entrypoint;
pub mod failover;
pub mod instance;
pub mod labels;
pub mod leader;
pub mod manifests;
pub mod operator;
pub mod pod;
pub mod rbac;
pub mod resource;
pub mod roles;
pub mod secrets;
pub mod serve;
