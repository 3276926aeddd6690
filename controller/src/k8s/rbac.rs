//! The permissions `bssctl operator` needs, as data: the chart's ClusterRole and leader-election
//! Role must grant exactly these (a test compares them), and the mock-API tests check every request
//! the operator makes against them (`attributes` turns a request into RBAC terms).

/// One RBAC rule: API group, resource (with subresource, `pods/log`), verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Applied server-side (patch; create when the apply creates), listed and deleted as orphans.
const APPLIED: &[&str] = &["list", "create", "patch", "delete"];
/// The same, and watched by the Controller (`owns`): a pod becoming ready triggers a reconcile.
const APPLIED_WATCHED: &[&str] = &["list", "watch", "create", "patch", "delete"];

/// Cluster-wide: Topology resources and every kind the manifests builder produces.
pub const CLUSTER: &[Rule] = &[
    // Watched by the Controller; the finalizer is added and removed with a JSON patch.
    Rule {
        group: "bssctl.io",
        resources: &["topologies"],
        verbs: &["list", "watch", "patch"],
    },
    Rule {
        group: "bssctl.io",
        resources: &["topologies/status"],
        verbs: &["patch"],
    },
    // Owner references with blockOwnerDeletion need update on the owner's finalizers.
    Rule {
        group: "bssctl.io",
        resources: &["topologies/finalizers"],
        verbs: &["update"],
    },
    Rule {
        group: "",
        resources: &["services", "serviceaccounts"],
        verbs: APPLIED,
    },
    // The roles ConfigMap is read before every apply and by the failover monitor.
    Rule {
        group: "",
        resources: &["configmaps"],
        verbs: &["get", "list", "create", "patch", "delete"],
    },
    // Generated once: read to keep existing values, created when missing, never listed or changed.
    Rule {
        group: "",
        resources: &["secrets"],
        verbs: &["get", "create"],
    },
    // Role labels move on pods (the -rw Service follows them).
    Rule {
        group: "",
        resources: &["pods"],
        // get: whether a member's pod serves; delete: fencing (grace 0) and switchover.
        verbs: &["get", "list", "patch", "delete"],
    },
    Rule {
        group: "apps",
        resources: &["statefulsets", "deployments"],
        verbs: APPLIED_WATCHED,
    },
    Rule {
        group: "apps",
        resources: &["daemonsets"],
        verbs: APPLIED,
    },
    Rule {
        group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: APPLIED,
    },
    Rule {
        group: "networking.k8s.io",
        resources: &["networkpolicies"],
        verbs: APPLIED,
    },
    Rule {
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// In the operator's own namespace: its leader-election Lease.
pub const LEADER_ELECTION: &[Rule] = &[Rule {
    group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["get", "create", "update"],
}];

/// Whether `rules` grant `verb` on `group`/`resource`.
pub fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
    rules
        .iter()
        .any(|r| r.group == group && r.resources.contains(&resource) && r.verbs.contains(&verb))
}

/// RBAC attributes of one API request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attributes {
    pub group: String,
    pub resource: String,
    pub verb: String,
}

/// `(method, path?query)` -> RBAC attributes, the way the API server's request-info resolver
/// does it for resource requests. `None` for non-resource paths.
pub fn attributes(method: &str, uri: &str) -> Option<Attributes> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _v, rest @ ..] => (String::new(), rest),
        ["apis", g, _v, rest @ ..] => ((*g).to_string(), rest),
        _ => return None,
    };
    let rest: Vec<&str> = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail.to_vec(),
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [r] => ((*r).to_string(), false),
        [r, _name] => ((*r).to_string(), true),
        [r, _name, sub] => (format!("{r}/{sub}"), true),
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some(Attributes {
        group,
        resource,
        verb: verb.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn request_paths_map_to_rbac_attributes() {
        let a = |m, u| attributes(m, u).map(|x| (x.group, x.resource, x.verb));
        let t = |g: &str, r: &str, v: &str| Some((g.to_string(), r.to_string(), v.to_string()));
        assert_eq!(
            a("GET", "/api/v1/namespaces/x/pods?labelSelector=a%3Db"),
            t("", "pods", "list")
        );
        assert_eq!(
            a(
                "GET",
                "/apis/bssctl.io/v1alpha1/topologies?watch=true&resourceVersion=1"
            ),
            t("bssctl.io", "topologies", "watch")
        );
        assert_eq!(
            a(
                "PATCH",
                "/apis/bssctl.io/v1alpha1/namespaces/x/topologies/e/status"
            ),
            t("bssctl.io", "topologies/status", "patch")
        );
        assert_eq!(
            a(
                "PATCH",
                "/apis/apps/v1/namespaces/x/statefulsets/e-postgres-0?fieldManager=bssctl"
            ),
            t("apps", "statefulsets", "patch")
        );
        assert_eq!(
            a("DELETE", "/api/v1/namespaces/x/configmaps/c"),
            t("", "configmaps", "delete")
        );
        assert_eq!(
            a(
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/ops/leases/l"
            ),
            t("coordination.k8s.io", "leases", "update")
        );
        assert_eq!(a("GET", "/healthz"), None);
        assert!(allows(CLUSTER, "apps", "deployments", "patch"));
        assert!(!allows(CLUSTER, "", "pods", "create"));
        assert!(!allows(CLUSTER, "", "secrets", "list"));
    }
}
