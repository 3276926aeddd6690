//! `bssctl` subcommands and flags of the Kubernetes runtime, called from `main` in one place each.
//! Owns what is printed; the work is done by the modules beside it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{manifests, secrets};
use crate::render::Bundle;
use crate::topology::model::ValidatedTopology;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Build(#[from] manifests::BuildError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error("failed to write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// What `render --runtime kubernetes` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rendered {
    pub out: PathBuf,
    pub files: Vec<String>,
    pub objects: usize,
    /// The 0600 file holding the Secret (values never printed).
    pub secret_file: PathBuf,
    pub millis: f64,
}

/// Writes the manifests of `t` into `out` (one file per component, in start order) and the
/// Secret into `out/secrets/<env>-secrets.yaml` (0600; values kept across renders).
pub fn render(t: &ValidatedTopology, b: &Bundle, out: &Path) -> Result<Rendered, CliError> {
    let start = Instant::now();
    let m = manifests::build(t, b)?;
    let files = m.files(&t.name, b);
    std::fs::create_dir_all(out).map_err(|source| CliError::Write {
        path: out.display().to_string(),
        source,
    })?;
    for (name, text) in &files {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|source| CliError::Write {
            path: p.display().to_string(),
            source,
        })?;
    }
    let secret_file = secrets::write_render_file(t, out)?;
    Ok(Rendered {
        out: out.to_path_buf(),
        files: files.keys().cloned().collect(),
        objects: m.objects.len(),
        secret_file,
        millis: start.elapsed().as_secs_f64() * 1000.0,
    })
}

/// `bssctl render --runtime kubernetes`: prints the summary (or JSON), never a secret value.
pub fn render_command(
    t: &ValidatedTopology,
    b: &Bundle,
    out: &Path,
    json: bool,
) -> Result<std::process::ExitCode, std::process::ExitCode> {
    match render(t, b, out) {
        Ok(r) if json => {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Ok(r) => {
            println!(
                "rendered {} Kubernetes objects in {} files into {} in {:.1} ms; the Secret is in {} (mode 0600, apply it with kubectl apply -f)",
                r.objects,
                r.files.len(),
                r.out.display(),
                r.millis,
                r.secret_file.display()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(std::process::ExitCode::from(1))
        }
    }
}

/// Flags of `bssctl operator`.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorArgs {
    /// Address of /healthz and /metrics.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub listen: String,
    /// Lease used for leader election (in the operator's namespace, `POD_NAMESPACE`).
    #[arg(long, default_value = "bssctl-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: `POD_NAMESPACE`, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Identity in the Lease (default: `POD_NAME`, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Watch only this namespace (default: all).
    #[arg(long)]
    pub watch_namespace: Option<String>,
}

/// `bssctl operator`.
pub fn operator(
    args: &OperatorArgs,
    templates: Option<&Path>,
) -> Result<std::process::ExitCode, std::process::ExitCode> {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        std::process::ExitCode::from(1)
    };
    let tera = crate::render::load_templates(templates).map_err(|e| fail(&e))?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| format!("bssctl-operator-{}", std::process::id()))
    });
    let opts = super::serve::OperatorOptions {
        listen: args.listen.clone(),
        lease_name: args.lease_name.clone(),
        lease_namespace: args.lease_namespace.clone(),
        identity,
        watch_namespace: args.watch_namespace.clone(),
    };
    super::serve::main(opts, tera).map_err(|e| fail(&e))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Flags of `bssctl instance` (the manifests pass them; see `manifests::pod_template`).
#[derive(Debug, Clone, clap::Args)]
pub struct InstanceArgs {
    /// The PostgreSQL member this pod runs (`postgres-<index>`).
    #[arg(long)]
    pub member: String,
    /// Directory of the mounted roles ConfigMap (primary, fenced, epoch, topology.json).
    #[arg(long)]
    pub roles: PathBuf,
    /// Directory of the mounted Secret keys.
    #[arg(long, requires = "secrets_to")]
    pub secrets_from: Option<PathBuf>,
    /// Where the secret files are copied with mode 0600.
    #[arg(long, requires = "secrets_from")]
    pub secrets_to: Option<PathBuf>,
    /// Milliseconds between two reads of the roles while postgres runs.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// postgres and its arguments.
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

/// `bssctl instance`: exits with postgres's exit code.
pub fn instance(args: &InstanceArgs) -> Result<std::process::ExitCode, std::process::ExitCode> {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        std::process::ExitCode::from(1)
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    super::entrypoint::watch_signals(stop.clone()).map_err(|e| fail(&e))?;
    let o = super::entrypoint::Options {
        member: args.member.clone(),
        roles: args.roles.clone(),
        secrets_from: args.secrets_from.clone(),
        secrets_to: args.secrets_to.clone(),
        argv: args.argv.clone(),
        poll: std::time::Duration::from_millis(args.poll_ms.max(50)),
    };
    let code = super::entrypoint::run(&o, &stop).map_err(|e| fail(&e))?;
    Ok(std::process::ExitCode::from(
        u8::try_from(code).unwrap_or(1),
    ))
}

fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, super::client::ClientError>>,
) -> Result<T, std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: failed to start the async runtime: {e}");
            std::process::ExitCode::from(1)
        })?;
    rt.block_on(f).map_err(|e| {
        eprintln!("error: {e}");
        std::process::ExitCode::from(1)
    })
}

/// `bssctl apply --runtime kubernetes`: Secret (if missing), Topology, then follow to Available.
pub fn apply(
    l: &crate::topology::Loaded,
    timeout_secs: u64,
) -> Result<std::process::ExitCode, std::process::ExitCode> {
    let t = &l.validated;
    block_on(async {
        let c = super::client::connect().await?;
        if super::client::ensure_secret(&c, l).await? {
            println!(
                "created Secret {}/{} (values not shown)",
                t.namespace,
                manifests::names::secret(&t.name)
            );
        }
        let generation = super::client::submit(&c, l).await?;
        println!(
            "applied Topology {}/{} (generation {generation}); waiting for the operator",
            t.namespace, t.name
        );
        let start = Instant::now();
        super::client::follow(
            &c,
            &t.namespace,
            &t.name,
            generation,
            std::time::Duration::from_secs(timeout_secs),
            &mut |line| {
                println!("[{:>6.1}s] {line}", start.elapsed().as_secs_f64());
            },
        )
        .await?;
        println!(
            "{} is Available ({:.1} s)",
            t.name,
            start.elapsed().as_secs_f64()
        );
        Ok(std::process::ExitCode::SUCCESS)
    })
}

/// `bssctl plan --runtime kubernetes`: per object create/update/unchanged/remove, with diffs.
pub fn plan(
    l: &crate::topology::Loaded,
    b: &Bundle,
    detailed_exitcode: bool,
    no_diff: bool,
    json: bool,
) -> Result<std::process::ExitCode, std::process::ExitCode> {
    let t = &l.validated;
    let m = manifests::build(t, b).map_err(|e| {
        eprintln!("error: {e}");
        std::process::ExitCode::from(1)
    })?;
    let p = block_on(async {
        let c = super::client::connect().await?;
        super::client::plan(&c, t, &m).await
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
    } else {
        for o in &p {
            println!("{:<10} {}", o.action, o.id);
            if !no_diff && !o.diff.is_empty() {
                print!("{}", o.diff);
            }
        }
    }
    let changes = p.iter().any(|o| o.action != "unchanged");
    Ok(if detailed_exitcode && changes {
        std::process::ExitCode::from(2)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

pub fn status(
    l: &crate::topology::Loaded,
) -> Result<std::process::ExitCode, std::process::ExitCode> {
    let t = &l.validated;
    let s = block_on(async {
        let c = super::client::connect().await?;
        super::client::status_text(&c, &t.namespace, &t.name).await
    })?;
    print!("{s}");
    Ok(std::process::ExitCode::SUCCESS)
}

pub fn logs(
    l: &crate::topology::Loaded,
    component: &str,
    lines: usize,
) -> Result<std::process::ExitCode, std::process::ExitCode> {
    let t = &l.validated;
    let s = block_on(async {
        let c = super::client::connect().await?;
        super::client::logs(
            &c,
            &t.namespace,
            &t.name,
            component,
            i64::try_from(lines).unwrap_or(100),
        )
        .await
    })?;
    print!("{s}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// `bssctl switchover --runtime kubernetes [--to MEMBER]`.
pub fn switchover(
    l: &crate::topology::Loaded,
    to: Option<&str>,
) -> Result<std::process::ExitCode, std::process::ExitCode> {
    let t = &l.validated;
    let rc = block_on(async {
        let c = super::client::connect().await?;
        super::client::switchover(
            &c,
            &t.namespace,
            &t.name,
            to,
            std::time::Duration::from_secs(300),
        )
        .await
    })?;
    println!(
        "switchover {} -> {} done (started {}, finished {})",
        rc.from,
        rc.to,
        rc.started_at,
        rc.finished_at.as_deref().unwrap_or("-")
    );
    Ok(std::process::ExitCode::SUCCESS)
}

pub fn destroy(
    l: &crate::topology::Loaded,
) -> Result<std::process::ExitCode, std::process::ExitCode> {
    let t = &l.validated;
    let gone = block_on(async {
        let c = super::client::connect().await?;
        super::client::destroy(
            &c,
            &t.namespace,
            &t.name,
            std::time::Duration::from_secs(300),
        )
        .await
    })?;
    println!(
        "{}",
        if gone {
            format!("deleted Topology {}/{}", t.namespace, t.name)
        } else {
            format!("Topology {}/{} does not exist", t.namespace, t.name)
        }
    );
    Ok(std::process::ExitCode::SUCCESS)
}
