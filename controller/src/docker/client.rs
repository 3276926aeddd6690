//! A blocking facade over the Docker engine API (bollard on a private current-thread tokio
//! runtime): networks, named volumes, containers (create with labels, read-only config and secret
//! mounts, 127.0.0.1-only ports, limits, health checks; start, stop, kill, pause, remove), exec,
//! logs and network disconnect. The API version is negotiated, so the engine's 1.41 works.
//!
//! Owns: talking to the engine and translating its answers into small typed values. Does not own:
//! what a component's container looks like (the runtime builds `ContainerSpec`s) or when to act.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::container::{
    Config, CreateContainerOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    EndpointSettings, HealthConfig, HostConfig, Mount, MountTypeEnum, PortBinding,
};
use bollard::network::{
    ConnectNetworkOptions, CreateNetworkOptions, DisconnectNetworkOptions, ListNetworksOptions,
};
use bollard::volume::{CreateVolumeOptions, ListVolumesOptions, RemoveVolumeOptions};
use futures_util::StreamExt;

use super::labels;

/// The install step named when the engine is missing.
pub const DOCKER_HINT: &str = "the Docker runtime needs a running Docker engine (Debian: `apt-get install docker.io`, then start dockerd) and `bash dev/setup.sh` for debootstrap";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("failed to start the Docker client's async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("failed to reach the Docker engine: {source}; {DOCKER_HINT}")]
    Connect { source: bollard::errors::Error },
    #[error("failed to {action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        source: bollard::errors::Error,
    },
    #[error("failed to {action} {object}: timed out after {secs}s")]
    Timeout {
        action: &'static str,
        object: String,
        secs: u64,
    },
}

fn api(action: &'static str, object: &str) -> impl FnOnce(bollard::errors::Error) -> ClientError {
    let object = object.to_string();
    move |source| ClientError::Api {
        action,
        object,
        source,
    }
}

fn is_404(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A file or directory the container sees.
#[derive(Debug, Clone, PartialEq)]
pub enum MountSpec {
    /// A host directory, read-only inside (rendered configs, secrets).
    ReadOnly { host: String, target: String },
    /// A host directory, read-write inside (the HAProxy runtime API socket).
    Bind { host: String, target: String },
    /// A named volume (data), read-write.
    Volume { name: String, target: String },
    /// A tmpfs (runtime dirs), owned by the container's user at start.
    Tmpfs { target: String },
}

/// Docker's own health check of a container (bssctl probes besides it).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `CMD` form: program and arguments.
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

/// Everything about one container to create.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Vec<String>,
    /// Non-secret environment only: this is visible in `docker inspect`.
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub network: String,
    /// DNS names on the network besides the container name.
    pub aliases: Vec<String>,
    pub mounts: Vec<MountSpec>,
    /// (container port, host port), published on 127.0.0.1 only.
    pub ports: Vec<(u16, u16)>,
    /// `user[:group]`; empty = the image's `USER`.
    pub user: String,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub health: Option<Health>,
    /// Seconds between SIGTERM and SIGKILL on stop.
    pub stop_timeout: Option<i64>,
    pub stop_signal: Option<String>,
}

/// Docker's view of a container's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// What the engine says about one of our containers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Observed {
    pub name: String,
    pub id: String,
    /// created | running | paused | restarting | removing | exited | dead
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub health: HealthState,
    pub restarts: i64,
    pub started_at: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// Network name -> IPv4 address on it.
    pub ips: BTreeMap<String, String>,
}

/// Result of a command run in a container.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub output: String,
}

pub struct Client {
    pub docker: bollard::Docker,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// Connects to the local engine (DOCKER_HOST or the unix socket) and negotiates the version.
    pub fn connect() -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        let docker = rt.block_on(async {
            let d = bollard::Docker::connect_with_local_defaults()
                .map_err(|source| ClientError::Connect { source })?;
            let d = d
                .negotiate_version()
                .await
                .map_err(|source| ClientError::Connect { source })?;
            d.ping()
                .await
                .map_err(|source| ClientError::Connect { source })?;
            Ok::<_, ClientError>(d)
        })?;
        Ok(Client { docker, rt })
    }

    /// Runs one async engine call to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The negotiated API version (e.g. `1.41`).
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// Ownership labels of everything of an environment.
    pub fn env_labels(env: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::MANAGED_BY.to_string(), labels::BSSCTL.to_string()),
            (labels::ENVIRONMENT.to_string(), env.to_string()),
            (
                labels::VERSION.to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ])
    }

    fn env_filter(env: &str) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}={}", labels::MANAGED_BY, labels::BSSCTL),
                format!("{}={env}", labels::ENVIRONMENT),
            ],
        )])
    }

    /// Creates the environment's bridge network unless it exists. Returns whether it was created.
    pub fn ensure_network(&self, name: &str, env: &str) -> Result<bool, ClientError> {
        self.block_on(async {
            match self.docker.inspect_network::<String>(name, None).await {
                Ok(_) => return Ok(false),
                Err(e) if is_404(&e) => {}
                Err(e) => return Err(api("inspect network", name)(e)),
            }
            let labels: HashMap<String, String> = Self::env_labels(env).into_iter().collect();
            self.docker
                .create_network(CreateNetworkOptions {
                    name: name.to_string(),
                    check_duplicate: true,
                    driver: "bridge".to_string(),
                    labels,
                    ..Default::default()
                })
                .await
                .map_err(api("create network", name))?;
            Ok(true)
        })
    }

    /// Creates a named volume unless it exists. Returns whether it was created.
    pub fn ensure_volume(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, ClientError> {
        self.block_on(async {
            match self.docker.inspect_volume(name).await {
                Ok(_) => return Ok(false),
                Err(e) if is_404(&e) => {}
                Err(e) => return Err(api("inspect volume", name)(e)),
            }
            self.docker
                .create_volume(CreateVolumeOptions {
                    name: name.to_string(),
                    driver: "local".to_string(),
                    labels: labels.clone().into_iter().collect(),
                    ..Default::default()
                })
                .await
                .map_err(api("create volume", name))?;
            Ok(true)
        })
    }

    /// Creates (does not start) a container.
    pub fn create(&self, spec: &ContainerSpec) -> Result<String, ClientError> {
        let config = container_config(spec);
        self.block_on(async {
            let r = self
                .docker
                .create_container(
                    Some(CreateContainerOptions {
                        name: spec.name.clone(),
                        platform: None,
                    }),
                    config,
                )
                .await
                .map_err(api("create container", &spec.name))?;
            Ok(r.id)
        })
    }

    pub fn start(&self, name: &str) -> Result<(), ClientError> {
        self.block_on(
            self.docker
                .start_container(name, None::<StartContainerOptions<String>>),
        )
        .map_err(api("start container", name))
    }

    /// SIGTERM (or the image's stop signal), then SIGKILL after `grace`.
    pub fn stop(&self, name: &str, grace: Duration) -> Result<(), ClientError> {
        let t = grace.as_secs() as i64;
        match self.block_on(
            self.docker
                .stop_container(name, Some(StopContainerOptions { t })),
        ) {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(api("stop container", name)(e)),
        }
    }

    /// Sends a signal (`KILL`, `HUP`, `USR2`, ...) to the container's main process.
    pub fn kill(&self, name: &str, signal: &str) -> Result<(), ClientError> {
        self.block_on(self.docker.kill_container(
            name,
            Some(KillContainerOptions {
                signal: signal.to_string(),
            }),
        ))
        .map_err(api("signal container", name))
    }

    pub fn pause(&self, name: &str) -> Result<(), ClientError> {
        self.block_on(self.docker.pause_container(name))
            .map_err(api("pause container", name))
    }

    pub fn unpause(&self, name: &str) -> Result<(), ClientError> {
        self.block_on(self.docker.unpause_container(name))
            .map_err(api("unpause container", name))
    }

    /// Removes a container (killing it if it runs) with its anonymous volumes. Absent is fine.
    pub fn remove(&self, name: &str) -> Result<bool, ClientError> {
        match self.block_on(self.docker.remove_container(
            name,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            }),
        )) {
            Ok(()) => Ok(true),
            Err(e) if is_404(&e) => Ok(false),
            Err(e) => Err(api("remove container", name)(e)),
        }
    }

    pub fn remove_volume(&self, name: &str) -> Result<bool, ClientError> {
        match self.block_on(
            self.docker
                .remove_volume(name, Some(RemoveVolumeOptions { force: true })),
        ) {
            Ok(()) => Ok(true),
            Err(e) if is_404(&e) => Ok(false),
            Err(e) => Err(api("remove volume", name)(e)),
        }
    }

    pub fn remove_network(&self, name: &str) -> Result<bool, ClientError> {
        match self.block_on(self.docker.remove_network(name)) {
            Ok(()) => Ok(true),
            Err(e) if is_404(&e) => Ok(false),
            Err(e) => Err(api("remove network", name)(e)),
        }
    }

    /// Cuts a container off the network (a partition); the engine still controls it.
    pub fn disconnect(&self, network: &str, container: &str) -> Result<(), ClientError> {
        self.block_on(self.docker.disconnect_network(
            network,
            DisconnectNetworkOptions {
                container: container.to_string(),
                force: true,
            },
        ))
        .map_err(api("disconnect from the network", container))
    }

    /// Joins a container to the network again, under its aliases.
    pub fn connect_network(
        &self,
        network: &str,
        container: &str,
        aliases: &[String],
    ) -> Result<(), ClientError> {
        self.block_on(self.docker.connect_network(
            network,
            ConnectNetworkOptions {
                container: container.to_string(),
                endpoint_config: EndpointSettings {
                    aliases: Some(aliases.to_vec()),
                    ..Default::default()
                },
            },
        ))
        .map_err(api("connect to the network", container))
    }

    /// One container by name; `None` when there is none.
    pub fn inspect(&self, name: &str) -> Result<Option<Observed>, ClientError> {
        match self.block_on(self.docker.inspect_container(name, None)) {
            Ok(c) => Ok(Some(observed(c))),
            Err(e) if is_404(&e) => Ok(None),
            Err(e) => Err(api("inspect container", name)(e)),
        }
    }

    /// Every container of an environment (any state), by our labels.
    pub fn containers(&self, env: &str) -> Result<Vec<Observed>, ClientError> {
        let list = self
            .block_on(self.docker.list_containers(Some(ListContainersOptions {
                all: true,
                filters: Self::env_filter(env),
                ..Default::default()
            })))
            .map_err(api("list containers of", env))?;
        let mut out = Vec::new();
        for c in list {
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            if let Some(o) = self.inspect(&name)? {
                out.push(o);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Names of the environment's volumes.
    pub fn volumes(&self, env: &str) -> Result<Vec<String>, ClientError> {
        let r = self
            .block_on(self.docker.list_volumes(Some(ListVolumesOptions {
                filters: Self::env_filter(env),
            })))
            .map_err(api("list volumes of", env))?;
        let mut v: Vec<String> = r
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        v.sort();
        Ok(v)
    }

    /// Names of the environment's networks.
    pub fn networks(&self, env: &str) -> Result<Vec<String>, ClientError> {
        let r = self
            .block_on(self.docker.list_networks(Some(ListNetworksOptions {
                filters: Self::env_filter(env),
            })))
            .map_err(api("list networks of", env))?;
        let mut v: Vec<String> = r.into_iter().filter_map(|n| n.name).collect();
        v.sort();
        Ok(v)
    }

    /// Runs a command in a running container and waits for it (at most `timeout`).
    pub fn exec(
        &self,
        container: &str,
        cmd: &[String],
        user: Option<&str>,
        timeout: Duration,
    ) -> Result<ExecOutput, ClientError> {
        let fut = async {
            let created = self
                .docker
                .create_exec(
                    container,
                    CreateExecOptions {
                        cmd: Some(cmd.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        user: user.map(str::to_string),
                        ..Default::default()
                    },
                )
                .await
                .map_err(api("create exec in", container))?;
            let mut text = String::new();
            if let StartExecResults::Attached { mut output, .. } = self
                .docker
                .start_exec(&created.id, None)
                .await
                .map_err(api("start exec in", container))?
            {
                while let Some(chunk) = output.next().await {
                    match chunk {
                        Ok(c) => text.push_str(&c.to_string()),
                        Err(e) => return Err(api("read exec output of", container)(e)),
                    }
                }
            }
            // The output can end before the engine has recorded the exit code: wait for it.
            let mut exit_code = None;
            for _ in 0..200 {
                let info = self
                    .docker
                    .inspect_exec(&created.id)
                    .await
                    .map_err(api("inspect exec in", container))?;
                if info.running != Some(true) && info.exit_code.is_some() {
                    exit_code = info.exit_code;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Ok(ExecOutput {
                exit_code: exit_code.unwrap_or(-1),
                output: text,
            })
        };
        self.block_on(async {
            tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| ClientError::Timeout {
                    action: "run a command in",
                    object: container.to_string(),
                    secs: timeout.as_secs(),
                })?
        })
    }

    /// The last `tail` lines of a container's output (stdout and stderr).
    pub fn logs(&self, container: &str, tail: usize) -> Result<String, ClientError> {
        self.block_on(async {
            let mut s = self.docker.logs(
                container,
                Some(LogsOptions::<String> {
                    stdout: true,
                    stderr: true,
                    tail: tail.to_string(),
                    ..Default::default()
                }),
            );
            let mut text = String::new();
            while let Some(chunk) = s.next().await {
                text.push_str(&chunk.map_err(api("read logs of", container))?.to_string());
            }
            Ok(text)
        })
    }

    /// Follows a container's output, calling `sink` per chunk until the container stops.
    pub fn follow_logs(
        &self,
        container: &str,
        tail: usize,
        sink: &mut dyn FnMut(&str),
    ) -> Result<(), ClientError> {
        self.block_on(async {
            let mut s = self.docker.logs(
                container,
                Some(LogsOptions::<String> {
                    stdout: true,
                    stderr: true,
                    follow: true,
                    tail: tail.to_string(),
                    ..Default::default()
                }),
            );
            while let Some(chunk) = s.next().await {
                sink(&chunk.map_err(api("follow logs of", container))?.to_string());
            }
            Ok(())
        })
    }

    /// Copies a tar archive into a (created or running) container at `dir`.
    pub fn upload(&self, container: &str, dir: &str, tar: Vec<u8>) -> Result<(), ClientError> {
        self.block_on(self.docker.upload_to_container(
            container,
            Some(bollard::container::UploadToContainerOptions {
                path: dir.to_string(),
                ..Default::default()
            }),
            bytes::Bytes::from(tar),
        ))
        .map_err(api("copy files into", container))
    }
}

fn ns(d: Duration) -> i64 {
    d.as_nanos() as i64
}

/// The engine's create-container body of a spec (pure).
pub fn container_config(spec: &ContainerSpec) -> Config<String> {
    let mut mounts = Vec::new();
    let mut tmpfs = HashMap::new();
    for m in &spec.mounts {
        match m {
            MountSpec::ReadOnly { host, target } => mounts.push(Mount {
                target: Some(target.clone()),
                source: Some(host.clone()),
                typ: Some(MountTypeEnum::BIND),
                read_only: Some(true),
                ..Default::default()
            }),
            MountSpec::Bind { host, target } => mounts.push(Mount {
                target: Some(target.clone()),
                source: Some(host.clone()),
                typ: Some(MountTypeEnum::BIND),
                read_only: Some(false),
                ..Default::default()
            }),
            MountSpec::Volume { name, target } => mounts.push(Mount {
                target: Some(target.clone()),
                source: Some(name.clone()),
                typ: Some(MountTypeEnum::VOLUME),
                read_only: Some(false),
                ..Default::default()
            }),
            MountSpec::Tmpfs { target } => {
                tmpfs.insert(target.clone(), "rw,nosuid,nodev,mode=1777".to_string());
            }
        }
    }
    let mut port_bindings = HashMap::new();
    let mut exposed = HashMap::new();
    for (c, h) in &spec.ports {
        let key = format!("{c}/tcp");
        exposed.insert(key.clone(), HashMap::new());
        port_bindings.insert(
            key,
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".to_string()),
                host_port: Some(h.to_string()),
            }]),
        );
    }
    let host_config = HostConfig {
        mounts: Some(mounts),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        port_bindings: Some(port_bindings),
        memory: spec.memory_bytes,
        nano_cpus: spec.nano_cpus,
        // Restarts are the controller's (with backoff, never a dead primary blindly).
        restart_policy: None,
        cap_drop: Some(vec!["ALL".to_string()]),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        init: Some(true),
        ..Default::default()
    };
    let healthcheck = spec.health.as_ref().map(|h| HealthConfig {
        test: Some(
            std::iter::once("CMD".to_string())
                .chain(h.test.iter().cloned())
                .collect(),
        ),
        interval: Some(ns(h.interval)),
        timeout: Some(ns(h.timeout)),
        retries: Some(h.retries as i64),
        start_period: Some(ns(h.start_period)),
        ..Default::default()
    });
    Config {
        image: Some(spec.image.clone()),
        hostname: Some(spec.name.clone()),
        cmd: Some(spec.cmd.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        user: (!spec.user.is_empty()).then(|| spec.user.clone()),
        exposed_ports: Some(exposed),
        healthcheck,
        stop_timeout: spec.stop_timeout,
        stop_signal: spec.stop_signal.clone(),
        host_config: Some(host_config),
        networking_config: Some(bollard::container::NetworkingConfig {
            endpoints_config: HashMap::from([(
                spec.network.clone(),
                EndpointSettings {
                    aliases: Some(
                        std::iter::once(spec.name.clone())
                            .chain(spec.aliases.iter().cloned())
                            .collect(),
                    ),
                    ..Default::default()
                },
            )]),
        }),
        ..Default::default()
    }
}

fn observed(c: bollard::models::ContainerInspectResponse) -> Observed {
    let st = c.state.unwrap_or_default();
    let health = match st
        .health
        .as_ref()
        .and_then(|h| h.status)
        .unwrap_or(bollard::models::HealthStatusEnum::NONE)
    {
        bollard::models::HealthStatusEnum::STARTING => HealthState::Starting,
        bollard::models::HealthStatusEnum::HEALTHY => HealthState::Healthy,
        bollard::models::HealthStatusEnum::UNHEALTHY => HealthState::Unhealthy,
        _ => HealthState::None,
    };
    let cfg = c.config.unwrap_or_default();
    let ips = c
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.ip_address.filter(|ip| !ip.is_empty()).map(|ip| (k, ip)))
        .collect();
    Observed {
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        id: c.id.unwrap_or_default(),
        status: st
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into()),
        running: st.running.unwrap_or(false),
        paused: st.paused.unwrap_or(false),
        exit_code: st.exit_code,
        oom_killed: st.oom_killed.unwrap_or(false),
        health,
        restarts: c.restart_count.unwrap_or(0),
        started_at: st.started_at.unwrap_or_default(),
        image: cfg.image.unwrap_or_default(),
        labels: cfg.labels.unwrap_or_default().into_iter().collect(),
        ips,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_published_on_loopback_only_and_configs_read_only() {
        let spec = ContainerSpec {
            name: "e-redis".into(),
            image: "img".into(),
            network: "net".into(),
            ports: vec![(6379, 16379)],
            mounts: vec![
                MountSpec::ReadOnly {
                    host: "/h/c".into(),
                    target: "/etc/bssctl/redis".into(),
                },
                MountSpec::Volume {
                    name: "v".into(),
                    target: "/var/lib/bssctl".into(),
                },
            ],
            ..Default::default()
        };
        let c = container_config(&spec);
        let hc = c.host_config.expect("host config");
        let b = hc.port_bindings.expect("bindings");
        let pb = b["6379/tcp"].as_ref().expect("binding")[0].clone();
        assert_eq!(pb.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(pb.host_port.as_deref(), Some("16379"));
        let m = hc.mounts.expect("mounts");
        assert_eq!(m[0].read_only, Some(true));
        assert_eq!(m[0].typ, Some(MountTypeEnum::BIND));
        assert_eq!(m[1].typ, Some(MountTypeEnum::VOLUME));
        assert_eq!(hc.restart_policy, None, "restarts are the controller's");
    }
}
