//! The Docker runtime's I/O: images built here without a registry (`images`), a blocking facade
//! over the Docker engine API via bollard (`client`), the Compose rendering (`compose`, pure) and
//! the command-line entry points (`cli`). The API version is negotiated (the engine here speaks
//! 1.41). What to do and in which order is the engine's; this module only knows Docker.

pub mod cli;
pub mod client;
pub mod compose;
pub mod files;
pub mod images;
pub mod runtime;
pub mod spec;

/// Label keys on everything bssctl creates in the engine (containers, networks, volumes).
pub mod labels {
    pub const MANAGED_BY: &str = "io.bssctl.managed-by";
    pub const ENVIRONMENT: &str = "io.bssctl.environment";
    pub const COMPONENT: &str = "io.bssctl.component";
    pub const CONFIG_HASH: &str = "io.bssctl.config-hash";
    pub const VERSION: &str = "io.bssctl.version";
    /// Value of `MANAGED_BY`.
    pub const BSSCTL: &str = "bssctl";
}

/// Container (and DNS) name of a component: `<env>-<component>`, as the docker profile of
/// `validate` addresses it.
pub fn container_name(env: &str, component: &str) -> String {
    format!("{env}-{component}")
}

/// The bridge network of an environment.
pub fn network_name(env: &str) -> String {
    format!("bssctl-{env}")
}

/// The named data volume of a component.
pub fn volume_name(env: &str, component: &str) -> String {
    format!("bssctl-{env}-{component}-data")
}
