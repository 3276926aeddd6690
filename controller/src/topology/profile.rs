//! What the pure core needs to know about a runtime, in one value: where components listen, how
//! one component names another, which network PostgreSQL admits logins from, where the Envoy
//! admin listener may bind, whether the controller agent runs beside the stack (and is scraped),
//! and whether the component files live in a state directory on this host. Validation, the
//! templates and render read these fields instead of asking "is this the local runtime?".

use serde::{Deserialize, Serialize};

use super::types::RuntimeKind;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeProfile {
    /// Address every server binds to: loopback on the host, every interface in a container
    /// (the container's network is the boundary there).
    pub bind: String,
    /// The network `pg_hba.conf` admits password logins and replication from.
    pub trusted_network: String,
    /// Where Envoy's admin listener binds. It can stop the proxy, so on the host it stays on
    /// loopback; in a container it must be reachable by the controller.
    pub admin_bind: String,
    /// The controller agent runs on the same host as the stack, and Prometheus scrapes it.
    pub agent_beside_stack: bool,
    /// Files, sockets and data live in a state directory on this host, which is checked
    /// (owned, no symlinks, socket paths within the kernel's limit).
    pub host_state_dir: bool,
    naming: Naming,
}

/// How a component reaches another one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Naming {
    /// Everything on 127.0.0.1, told apart by port.
    Loopback,
    /// Containers on the environment's own network, by container name `<env>-<component>`.
    Container { env: String },
    /// Kubernetes Services `<env>-<component>.<namespace>.svc`.
    Service { env: String, namespace: String },
}

impl RuntimeProfile {
    pub fn new(kind: RuntimeKind, env: &str, namespace: &str) -> Self {
        let (bind, trusted, naming) = match kind {
            RuntimeKind::Local => ("127.0.0.1", "127.0.0.1/32", Naming::Loopback),
            RuntimeKind::Docker => (
                "0.0.0.0",
                "0.0.0.0/0",
                Naming::Container { env: env.into() },
            ),
            RuntimeKind::Kubernetes => (
                "0.0.0.0",
                "0.0.0.0/0",
                Naming::Service {
                    env: env.into(),
                    namespace: namespace.into(),
                },
            ),
        };
        let on_host = kind == RuntimeKind::Local;
        RuntimeProfile {
            bind: bind.into(),
            trusted_network: trusted.into(),
            admin_bind: if on_host { "127.0.0.1" } else { bind }.into(),
            agent_beside_stack: on_host,
            host_state_dir: on_host,
            naming,
        }
    }

    /// The host name or address other components use to reach `component`.
    pub fn host(&self, component: &str) -> String {
        match &self.naming {
            Naming::Loopback => "127.0.0.1".into(),
            Naming::Container { env } => format!("{env}-{component}"),
            Naming::Service { env, namespace } => format!("{env}-{component}.{namespace}.svc"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_runtime_names_components_its_own_way() {
        let local = RuntimeProfile::new(RuntimeKind::Local, "prod", "bss");
        let docker = RuntimeProfile::new(RuntimeKind::Docker, "prod", "bss");
        let k8s = RuntimeProfile::new(RuntimeKind::Kubernetes, "prod", "bss");
        assert_eq!(local.host("redis"), "127.0.0.1");
        assert_eq!(docker.host("redis"), "prod-redis");
        assert_eq!(k8s.host("redis"), "prod-redis.bss.svc");
        assert_eq!(
            (local.bind.as_str(), local.admin_bind.as_str()),
            ("127.0.0.1", "127.0.0.1")
        );
        assert_eq!(
            (docker.bind.as_str(), docker.admin_bind.as_str()),
            ("0.0.0.0", "0.0.0.0")
        );
        assert!(local.agent_beside_stack && local.host_state_dir);
        assert!(!docker.agent_beside_stack && !k8s.host_state_dir);
        assert_eq!(local.trusted_network, "127.0.0.1/32");
    }
}
