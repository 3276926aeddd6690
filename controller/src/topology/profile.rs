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
    /// The networks `pg_hba.conf` admits (SCRAM) logins and replication from: loopback on the
    /// host; on Docker `samenet`, the subnet of the environment's own bridge network (the only
    /// one its containers join; the host reaches them from that network's gateway); on
    /// Kubernetes the private ranges pod networks use, narrowed further by the NetworkPolicies.
    /// Never the whole Internet.
    pub trusted_networks: Vec<String>,
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
        let (bind, trusted, naming): (&str, &[&str], Naming) = match kind {
            RuntimeKind::Local => ("127.0.0.1", &["127.0.0.1/32"], Naming::Loopback),
            RuntimeKind::Docker => (
                "0.0.0.0",
                &["samenet"],
                Naming::Container { env: env.into() },
            ),
            RuntimeKind::Kubernetes => (
                "0.0.0.0",
                &[
                    "10.0.0.0/8",
                    "172.16.0.0/12",
                    "192.168.0.0/16",
                    "100.64.0.0/10",
                ],
                Naming::Service {
                    env: env.into(),
                    namespace: namespace.into(),
                },
            ),
        };
        let on_host = kind == RuntimeKind::Local;
        RuntimeProfile {
            bind: bind.into(),
            trusted_networks: trusted.iter().map(|n| n.to_string()).collect(),
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
        assert_eq!(local.trusted_networks, vec!["127.0.0.1/32"]);
        for p in [&local, &docker, &k8s] {
            assert!(
                !p.trusted_networks
                    .iter()
                    .any(|n| n == "0.0.0.0/0" || n == "all" || n.ends_with("/0")),
                "{p:?}"
            );
        }
    }
}
