//! `bssctl render --runtime docker --format compose`: the environment as a Compose file (pure),
//! from the same `ContainerSpec`s the Docker runtime creates (same images, command lines, network,
//! volumes, health checks, 127.0.0.1-only ports, users), with `depends_on: service_healthy` for the
//! health-gated start order. Rendered files are bind-mounted from `./<component>/` (where `render`
//! writes them); secret files are expected under `./secrets/<component>/` (listed in the header,
//! never their values). Containers carry `io.bssctl.managed-by=docker-compose`, so bssctl never
//! mistakes them for its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::client::MountSpec;
use super::spec::{self, HostDirs};
use super::{images, labels, network_name};
use crate::render::Bundle;
use crate::topology::model::ValidatedTopology;

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("failed to serialise the Compose file: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

fn secs(d: std::time::Duration) -> String {
    if d.as_millis() % 1000 == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The Compose file of a rendered bundle; `image_of` gives each component's image reference.
pub fn compose(
    t: &ValidatedTopology,
    bundle: &Bundle,
    image_of: &dyn Fn(crate::render::Kind) -> String,
) -> Result<String, ComposeError> {
    // Paths relative to the compose file: `render --out DIR` writes `DIR/<component>/...`.
    let dirs = HostDirs {
        root: PathBuf::from("."),
    };
    let net = network_name(&t.name);
    let mut services = Map::new();
    let mut volumes = Map::new();
    let mut healthy: Vec<String> = Vec::new();
    let mut header = vec![
        format!(
            "# Compose file of environment `{}`, rendered by bssctl {} (equivalent to `bssctl apply --runtime docker`).",
            t.name,
            env!("CARGO_PKG_VERSION")
        ),
        "# Run: docker-compose -p <env> up -d   (from this directory; images: `bssctl images build`).".into(),
        "# Secret files to provide (one value per file, readable by the container's uid):".into(),
    ];
    let empty: BTreeMap<String, String> = t
        .secrets
        .keys()
        .map(|k| (k.clone(), String::new()))
        .collect();
    for (name, cb) in bundle.ordered() {
        let s = spec::container_spec(t, name, cb, &image_of(cb.kind), &dirs);
        let secret_files = spec::secret_files(t, cb.kind, cb, &empty);
        for f in &secret_files {
            header.push(format!(
                "#   ./secrets/{name}/{}  (uid {})",
                f.rel,
                spec::uid_of(cb.kind)
            ));
        }
        let mut svc = Map::new();
        svc.insert("image".into(), json!(s.image));
        svc.insert("container_name".into(), json!(s.name));
        svc.insert("hostname".into(), json!(s.name));
        svc.insert("command".into(), json!(s.cmd));
        svc.insert("user".into(), json!(s.user));
        svc.insert("init".into(), json!(true));
        svc.insert("cap_drop".into(), json!(["ALL"]));
        svc.insert("security_opt".into(), json!(["no-new-privileges"]));
        if !s.env.is_empty() {
            svc.insert("environment".into(), json!(s.env));
        }
        let mut lbl = s.labels.clone();
        lbl.insert(labels::MANAGED_BY.into(), "docker-compose".into());
        svc.insert("labels".into(), json!(lbl));
        if let Some(sig) = &s.stop_signal {
            svc.insert("stop_signal".into(), json!(sig));
        }
        if let Some(t) = s.stop_timeout {
            svc.insert("stop_grace_period".into(), json!(format!("{t}s")));
        }
        if !s.ports.is_empty() {
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|(c, h)| format!("127.0.0.1:{h}:{c}"))
                .collect();
            svc.insert("ports".into(), json!(ports));
        }
        let mut vols = Vec::new();
        for m in &s.mounts {
            match m {
                // Compose needs every bind source to exist: no directory for what is not there.
                MountSpec::ReadOnly { host, .. }
                    if (host.starts_with("./config/") && cb.files.is_empty())
                        || (host.starts_with("./secrets/") && secret_files.is_empty()) => {}
                MountSpec::ReadOnly { host, target } => vols.push(json!({
                    "type": "bind", "source": host.replace("./config/", "./"), "target": target, "read_only": true
                })),
                MountSpec::Bind { host, target } => vols.push(json!({
                    "type": "bind", "source": host, "target": target
                })),
                MountSpec::Volume { name: v, target } => {
                    volumes.insert(
                        v.clone(),
                        json!({"name": v, "labels": {labels::ENVIRONMENT: t.name, labels::COMPONENT: name}}),
                    );
                    vols.push(json!({"type": "volume", "source": v, "target": target}));
                }
                MountSpec::Tmpfs { target } => {
                    vols.push(json!({"type": "tmpfs", "target": target}));
                }
            }
        }
        svc.insert("volumes".into(), Value::Array(vols));
        svc.insert(
            "networks".into(),
            json!({ net.clone(): {"aliases": [s.name]} }),
        );
        if let Some(h) = &s.health {
            let test: Vec<String> = std::iter::once("CMD".to_string())
                .chain(h.test.iter().cloned())
                .collect();
            svc.insert(
                "healthcheck".into(),
                json!({
                    "test": test,
                    "interval": secs(h.interval),
                    "timeout": secs(h.timeout),
                    "retries": h.retries,
                    "start_period": secs(h.start_period),
                }),
            );
        }
        if !healthy.is_empty() {
            let deps: Map<String, Value> = healthy
                .iter()
                .map(|d| (d.clone(), json!({"condition": "service_healthy"})))
                .collect();
            svc.insert("depends_on".into(), Value::Object(deps));
        }
        if s.health.is_some() {
            healthy.push(name.clone());
        }
        services.insert(name.clone(), Value::Object(svc));
    }
    let doc = json!({
        "services": services,
        "networks": { net.clone(): {"name": net, "driver": "bridge", "labels": {labels::ENVIRONMENT: t.name}} },
        "volumes": volumes,
    });
    let body = serde_yaml::to_string(&doc)?;
    Ok(format!("{}\n{body}", header.join("\n")))
}

/// Image references for the Compose file: `spec.images` overrides, else the content tags bssctl
/// builds on this machine.
pub fn image_refs<'a>(
    t: &'a ValidatedTopology,
    planned: &'a [images::Planned],
) -> impl Fn(crate::render::Kind) -> String + 'a {
    move |k| {
        if let Some(o) = t.images.get(images::override_key(k)) {
            return o.clone();
        }
        planned
            .iter()
            .find(|p| p.name == images::image_of(k))
            .map(|p| p.tag.clone())
            .unwrap_or_else(|| format!("{}/{}:latest", images::REPO, images::image_of(k)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn compose_file_mirrors_the_container_specs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.yaml");
        std::fs::write(
            &f,
            "apiVersion: bssctl.io/v1alpha1\nkind: Topology\nmetadata: {name: cmp}\nspec:\n  runtime: {kind: docker, portOffset: 100}\n  postgres: {replicas: 1}\n  redis: {}\n  exporters: {node: {}}\n",
        )
        .unwrap();
        let l = crate::topology::load(&f, &Default::default()).unwrap();
        let t = &l.validated;
        let b = crate::render::render(t, &crate::render::load_templates(None).unwrap()).unwrap();
        let text = compose(t, &b, &|k| format!("img/{}", images::image_of(k))).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let svc = &doc["services"];
        for (name, c) in &b.components {
            let s = &svc[name.as_str()];
            let want = spec::container_spec(t, name, c, "x", &HostDirs { root: ".".into() });
            assert_eq!(s["container_name"].as_str(), Some(want.name.as_str()));
            assert_eq!(
                s["image"].as_str().unwrap(),
                format!("img/{}", images::image_of(c.kind))
            );
            for p in s["ports"].as_sequence().into_iter().flatten() {
                assert!(p.as_str().unwrap().starts_with("127.0.0.1:"), "{p:?}");
            }
            assert_eq!(
                s["healthcheck"].is_mapping(),
                want.health.is_some(),
                "{name}"
            );
        }
        // Start order: the replica waits for a healthy primary, Redis for both members.
        assert!(svc["postgres-1"]["depends_on"]["postgres-0"]["condition"]
            .as_str()
            .is_some_and(|c| c == "service_healthy"));
        assert!(svc["redis"]["depends_on"]["postgres-1"].is_mapping());
        // A component without files or secrets gets no bind mount of a missing directory.
        let ne = svc["node-exporter"]["volumes"].as_sequence().unwrap();
        assert!(ne.is_empty(), "{ne:?}");
        assert_eq!(
            svc["redis"]["labels"]["io.bssctl.managed-by"].as_str(),
            Some("docker-compose")
        );
        assert!(text.contains("./secrets/redis/redis-acl.conf"));
    }
}
