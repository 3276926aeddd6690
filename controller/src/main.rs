//! `bssctl`: the command line. Parses arguments, calls the library, prints, sets the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use controller::diag::Diagnostic;
use controller::engine::failover::{self, Services};
use controller::engine::{self, FileStore, RealClients, RuntimeFactory};
use controller::runtime::agent_process as agent;
use controller::topology::types::RuntimeKind;
use controller::topology::{self, Loaded, ValidateOptions};
use controller::{check, crd, plan, render, runtime, state};

#[derive(Parser, Debug)]
#[command(name = "bssctl", version = version_short(), about = "Render, check, plan and run the BSS stack from one topology.yaml", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// State directory (default: `spec.runtime.stateDir`, else `.bssctl` next to the topology file).
    #[arg(long, global = true, env = "BSSCTL_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Runtime to render and run for (default: `spec.runtime.kind`, else local).
    #[arg(long, global = true, value_enum)]
    runtime: Option<RuntimeArg>,
    /// Directory of tera templates overriding the embedded ones.
    #[arg(long, global = true)]
    templates: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RuntimeArg {
    Local,
    Docker,
    Kubernetes,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// `0.1.0 (git 1a2b3c4d5e6f)`: the crate version and the revision it was built from.
fn version_short() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (git ",
        env!("BSSCTL_GIT_REV"),
        ")"
    )
}

/// `--version` (`-V` prints the short form): the short version, then the version of every tool bssctl drives that is found
/// (the first line each prints), or how to install it. Computed only when asked for.
fn version_long() -> String {
    let mut out = version_short().to_string();
    out.push_str("\ntools:");
    for (tool, args) in [
        ("postgres", &["--version"][..]),
        ("haproxy", &["-v"][..]),
        ("envoy", &["--version"][..]),
        ("redis-server", &["--version"][..]),
        ("tansu", &["--version"][..]),
        ("prometheus", &["--version"][..]),
        ("promtool", &["--version"][..]),
        ("prometheus-alertmanager", &["--version"][..]),
        ("amtool", &["--version"][..]),
        ("prometheus-node-exporter", &["--version"][..]),
        ("prometheus-postgres-exporter", &["--version"][..]),
        ("prometheus-redis-exporter", &["--version"][..]),
    ] {
        let line = match controller::tools::find(tool) {
            Err(_) => format!("not found ({})", controller::tools::install_hint(tool)),
            Ok(path) => tool_version(&path, args),
        };
        out.push_str(&format!("\n  {tool:<30} {line}"));
    }
    out
}

/// The first non-empty line a tool prints for its version flag (stdout, else stderr).
fn tool_version(path: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("(no version output)");
            // Some Go tools print their version as a log record: keep its message.
            first
                .split_once("msg=\"")
                .and_then(|(_, m)| m.split_once('"'))
                .map_or(first, |(m, _)| m)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        }
        Err(e) => format!("failed to run {}: {e}", path.display()),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a topology: every problem at once, with file:line:column, field and hint. Exit 0 valid, 1 invalid.
    Validate { file: PathBuf },
    /// Render every config file of every component into DIR (deterministic).
    Render {
        file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// `files` (default), or `compose`: also write DIR/compose.yaml (docker runtime).
        #[arg(long, value_enum, default_value = "files")]
        format: RenderFormat,
    },
    /// Render into a scratch directory and judge every file with the component's own tool.
    Check { file: PathBuf },
    /// Show what apply would change: per component the action and a diff of every changed file.
    Plan {
        file: PathBuf,
        /// Exit 0 when nothing changes, 2 when something does, 1 on errors.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Only the summary table, no diffs.
        #[arg(long)]
        no_diff: bool,
    },
    /// Print the JSON Schema of topology.yaml (for editor completion).
    Schema,
    /// Print the Kubernetes CustomResourceDefinition of the Topology resource.
    Crd,
    /// Apply on the Docker runtime (images built when missing) without starting the agent: `apply
    /// --runtime docker --no-agent`.
    #[command(name = "docker-apply")]
    DockerApply {
        file: PathBuf,
        #[arg(long, short = 'v')]
        verbose: bool,
    },
    /// Remove every container, network and (unless --keep-data) volume of the environment on Docker
    /// (`destroy --runtime docker`).
    #[command(name = "docker-destroy")]
    DockerDestroy {
        file: PathBuf,
        #[arg(long)]
        keep_data: bool,
    },
    /// Container images of the Docker runtime (built here from Debian packages, cached by content).
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Bring the environment to the topology: execute the plan in dependency order, each step
    /// gated on a health check; then leave a controller agent managing it until `destroy`.
    Apply {
        file: PathBuf,
        /// Do not start the background controller agent.
        #[arg(long)]
        no_agent: bool,
        /// Show every step as it starts.
        #[arg(long, short = 'v')]
        verbose: bool,
    },
    /// Like apply, then manage the environment in the foreground; Ctrl-C stops everything (data is kept).
    Up { file: PathBuf },
    /// Each component: state, health, role, pid, ports, replication lag.
    Status { file: PathBuf },
    /// Planned PostgreSQL role change with no lost write: writes paused at HAProxy, clean stop of
    /// the primary, the target replays everything, promotion, reroute, old primary rejoins via
    /// pg_rewind. Runs through the agent when it runs (it owns role changes), else here.
    Switchover {
        file: PathBuf,
        /// Member to promote (default: the best replica by received LSN, then priority).
        #[arg(long)]
        to: Option<String>,
    },
    /// Print (and with -f follow) the log of one component.
    Logs {
        file: PathBuf,
        component: String,
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines from the end to start with.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
    /// Stop every process of the environment and delete its state.
    Destroy {
        file: PathBuf,
        /// Keep data directories and secrets (the next apply reuses them).
        #[arg(long)]
        keep_data: bool,
    },
    /// Run the Kubernetes operator: reconcile Topology resources in the cluster (kubeconfig or
    /// in-cluster config), with Lease leader election, /healthz and /metrics.
    Operator(controller::k8s::cli::OperatorArgs),
    /// The PostgreSQL pod's entrypoint: read the roles ConfigMap, wait while fenced, initialise,
    /// clone, rewind or start the member, then run postgres as its child.
    Instance(controller::k8s::cli::InstanceArgs),
    /// Print a shell completion script: `source <(bssctl completions bash)`, or write it to your
    /// shell's completion directory (zsh: a `_bssctl` file in `$fpath`; fish:
    /// `~/.config/fish/completions/bssctl.fish`).
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Serve the S3 object store of the Kafka brokers (`kafka.storage: s3`; started by apply).
    #[command(hide = true)]
    KafkaStore {
        /// Directory holding the objects, one subdirectory per bucket.
        #[arg(long)]
        root: PathBuf,
        /// host:port to listen on.
        #[arg(long)]
        listen: String,
        /// Bucket to create when missing (repeatable).
        #[arg(long)]
        bucket: Vec<String>,
        #[arg(long, default_value_t = 8)]
        threads: usize,
    },
    /// Run the controller agent of an applied environment (started by `apply`).
    #[command(hide = true)]
    Agent {
        /// State root of the environment (`<stateDir>/<name>`).
        #[arg(long)]
        root: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq)]
enum RenderFormat {
    Files,
    Compose,
}

#[derive(Subcommand, Debug)]
enum ImagesCommand {
    /// Build every missing image (or the named ones); present images with the same inputs are kept.
    Build { names: Vec<String> },
    /// Every image bssctl uses on this machine, its content tag and whether the engine has it.
    List,
}

fn opts(cli: &Cli) -> ValidateOptions {
    ValidateOptions {
        base_dir: PathBuf::new(),
        state_dir: cli
            .state_dir
            .clone()
            .map(|d| std::path::absolute(&d).unwrap_or(d)),
        runtime: cli.runtime.map(|r| match r {
            RuntimeArg::Local => RuntimeKind::Local,
            RuntimeArg::Docker => RuntimeKind::Docker,
            RuntimeArg::Kubernetes => RuntimeKind::Kubernetes,
        }),
    }
}

fn print_diags(diags: &[Diagnostic], output: Output) {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "valid": !diags.iter().any(Diagnostic::is_error), "diagnostics": diags })).unwrap_or_default());
        return;
    }
    for d in diags {
        eprintln!("{d}\n");
    }
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    if errors > 0 {
        eprintln!(
            "{errors} error{}{}",
            if errors == 1 { "" } else { "s" },
            if warnings > 0 {
                format!(", {warnings} warning(s)")
            } else {
                String::new()
            }
        );
    }
}

fn load(cli: &Cli, file: &Path) -> Result<Loaded, ExitCode> {
    match topology::load(file, &opts(cli)) {
        Ok(l) => {
            if !l.warnings.is_empty() && cli.output == Output::Text {
                print_diags(&l.warnings, cli.output);
            }
            Ok(l)
        }
        Err(diags) => {
            print_diags(&diags, cli.output);
            Err(ExitCode::from(1))
        }
    }
}

fn render_bundle(cli: &Cli, l: &Loaded) -> Result<render::Bundle, ExitCode> {
    let tera = render::load_templates(cli.templates.as_deref()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })?;
    render::render(&l.validated, &tera).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })
}

/// Whether `file` is to be run on Kubernetes (`--runtime kubernetes` or `spec.runtime.kind`).
fn on_kubernetes(cli: &Cli, file: &Path) -> bool {
    matches!(cli.runtime, Some(RuntimeArg::Kubernetes))
        || topology::load(file, &opts(cli))
            .is_ok_and(|l| l.validated.runtime == RuntimeKind::Kubernetes)
}

fn run(cli: &Cli) -> Result<ExitCode, ExitCode> {
    match &cli.command {
        Command::Validate { file } => {
            let l = load(cli, file)?;
            if cli.output == Output::Json {
                print_diags(&l.warnings, cli.output);
            } else {
                let v = &l.validated;
                let count = [
                    v.postgres.is_some(),
                    v.haproxy.is_some(),
                    v.envoy.is_some(),
                    v.redis.is_some(),
                    v.kafka.is_some(),
                    v.prometheus.is_some(),
                    v.alertmanager.is_some(),
                    v.backend.is_some(),
                ]
                .iter()
                .filter(|x| **x)
                .count();
                println!(
                    "{}: valid ({} runtime, {count} main components)",
                    file.display(),
                    serde_json::to_value(v.runtime)
                        .ok()
                        .and_then(|x| x.as_str().map(String::from))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Render { file, out, format } => {
            let start = Instant::now();
            let l = load(cli, file)?;
            let b = render_bundle(cli, &l)?;
            if l.validated.runtime == RuntimeKind::Kubernetes {
                return controller::k8s::cli::render_command(
                    &l.validated,
                    &b,
                    out,
                    cli.output == Output::Json,
                );
            }
            let n = b.write_to(out).map_err(|e| {
                eprintln!("error: failed to write {}: {e}", out.display());
                ExitCode::from(1)
            })?;
            if *format == RenderFormat::Compose {
                if l.validated.runtime != RuntimeKind::Docker {
                    eprintln!("error: `--format compose` renders for the docker runtime: add `--runtime docker`");
                    return Err(ExitCode::from(1));
                }
                let p = controller::docker::cli::render_compose(&l.validated, &b, out).map_err(
                    |e| {
                        eprintln!("error: {e}");
                        ExitCode::from(1)
                    },
                )?;
                eprintln!("wrote {}", p.display());
            }
            if cli.output == Output::Json {
                let files: Vec<String> = b
                    .components
                    .iter()
                    .flat_map(|(c, cb)| cb.files.keys().map(move |f| format!("{c}/{f}")))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"out": out, "files": files, "millis": start.elapsed().as_secs_f64() * 1000.0})
                );
            } else {
                println!(
                    "rendered {n} files of {} components into {} in {:.1} ms",
                    b.components.len(),
                    out.display(),
                    start.elapsed().as_secs_f64() * 1000.0
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file } => {
            let scratch = tempfile::Builder::new()
                .prefix("bssctl-check-")
                .tempdir()
                .map_err(|e| {
                    eprintln!("error: failed to create a scratch directory: {e}");
                    ExitCode::from(1)
                })?;
            let mut o = opts(cli);
            o.state_dir = Some(scratch.path().to_path_buf());
            let l = topology::load(file, &o).map_err(|d| {
                print_diags(&d, cli.output);
                ExitCode::from(1)
            })?;
            let b = render_bundle(cli, &l)?;
            let results = check::check(&l.validated, &b);
            let failed = results.iter().filter(|r| !r.ok).count();
            if cli.output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&results).unwrap_or_default()
                );
            } else {
                for r in &results {
                    println!(
                        "{:<4} {:<28} {:<30} {} ({} ms)",
                        if r.ok { "ok" } else { "FAIL" },
                        r.component,
                        r.file,
                        r.tool,
                        r.millis
                    );
                    if !r.ok {
                        for line in r.output.lines().take(40) {
                            println!("       {line}");
                        }
                    }
                }
                println!("\n{} passed, {} failed", results.len() - failed, failed);
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Apply { file, .. } if on_kubernetes(cli, file) => {
            controller::k8s::cli::apply(&load(cli, file)?, 600)
        }
        Command::Plan {
            file,
            detailed_exitcode,
            no_diff,
        } if on_kubernetes(cli, file) => {
            let l = load(cli, file)?;
            let b = render_bundle(cli, &l)?;
            controller::k8s::cli::plan(
                &l,
                &b,
                *detailed_exitcode,
                *no_diff,
                cli.output == Output::Json,
            )
        }
        Command::Status { file } if on_kubernetes(cli, file) => {
            controller::k8s::cli::status(&load(cli, file)?)
        }
        Command::Logs {
            file,
            component,
            lines,
            ..
        } if on_kubernetes(cli, file) => {
            controller::k8s::cli::logs(&load(cli, file)?, component, *lines)
        }
        Command::Destroy { file, .. } if on_kubernetes(cli, file) => {
            controller::k8s::cli::destroy(&load(cli, file)?)
        }
        Command::Plan {
            file,
            detailed_exitcode,
            no_diff,
        } => {
            let l = load(cli, file)?;
            let applied = state::read_applied(&l.validated).map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(1)
            })?;
            // Render for the primary the environment has now (failover may have moved it).
            let current = match applied.as_ref().and_then(|a| a.primary.as_deref()) {
                Some(p) => l
                    .validated
                    .with_primary(p)
                    .unwrap_or_else(|| l.validated.clone()),
                None => l.validated.clone(),
            };
            let l2 = Loaded {
                validated: current,
                ..l.clone()
            };
            let b = render_bundle(cli, &l2)?;
            let redactor = plan::Redactor::new(state::existing_secret_values(&l.validated));
            let mut p = plan::plan(&b, applied.as_ref().map(|a| &a.bundle), &redactor);
            if let Ok(rt) = runtime::for_topology(&l2.validated) {
                engine::converge::adjust_plan(&mut p, &rt.capabilities());
            }
            if cli.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
            } else {
                print!("{}", p.to_text(!no_diff));
            }
            Ok(if *detailed_exitcode && p.has_changes() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::DockerApply { file, verbose } => docker_apply(cli, file, *verbose, false),
        Command::DockerDestroy { file, keep_data } => docker_destroy(cli, file, *keep_data),
        Command::Images { command } => {
            let json = cli.output == Output::Json;
            let r = match command {
                ImagesCommand::Build { names } => {
                    controller::docker::cli::images_build(names, json).map(|_| ())
                }
                ImagesCommand::List => controller::docker::cli::images_list(json),
            };
            r.map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(1)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            print!("{}", crd::schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply {
            file,
            no_agent,
            verbose,
        } => {
            if effective_runtime(cli, file) == Some(RuntimeKind::Docker) {
                return docker_apply(cli, file, *verbose, !*no_agent);
            }
            apply(cli, file, !*no_agent, *verbose).map(|_| ExitCode::SUCCESS)
        }
        Command::Up { file } => up(cli, file),
        Command::Status { file } => status(cli, file),
        Command::Switchover { file, to } if on_kubernetes(cli, file) => {
            controller::k8s::cli::switchover(&load(cli, file)?, to.as_deref())
        }
        Command::Switchover { file, to } => switchover(cli, file, to.as_deref()),
        Command::Logs {
            file,
            component,
            follow,
            lines,
        } => logs(cli, file, component, *follow, *lines),
        Command::Destroy { file, keep_data } => {
            if effective_runtime(cli, file) == Some(RuntimeKind::Docker) {
                return docker_destroy(cli, file, *keep_data);
            }
            destroy(cli, file, *keep_data)
        }
        Command::Operator(args) => controller::k8s::cli::operator(args, cli.templates.as_deref()),
        Command::Instance(args) => controller::k8s::cli::instance(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut cmd, "bssctl", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::KafkaStore {
            root,
            listen,
            bucket,
            threads,
        } => match controller::objstore::Store::open(root, bucket).and_then(|st| {
            controller::objstore::serve(st, listen, *threads, controller::kafka_lag::metrics)
        }) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("error: {e}");
                Err(ExitCode::from(1))
            }
        },
        Command::Agent { root } => {
            let stop = Arc::new(AtomicBool::new(false));
            let s2 = stop.clone();
            let _ = ctrlc::set_handler(move || s2.store(true, Ordering::SeqCst));
            let applied = state::read_applied_at(root).map_err(fail)?;
            let Some(t) = applied.and_then(|a| a.topology) else {
                return Err(fail(format!(
                    "{} holds no applied topology; run `bssctl apply` again",
                    root.display()
                )));
            };
            agent::register_self(root);
            match engine::agent::run(root, stop, services_at(&t, Some(root))) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("error: {e}");
                    Err(ExitCode::from(1))
                }
            }
        }
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

/// The topology as it is now: validated, with the primary failover may have moved.
fn current(cli: &Cli, file: &Path) -> Result<(Loaded, Option<state::Applied>), ExitCode> {
    let l = load(cli, file)?;
    let applied = state::read_applied(&l.validated).map_err(fail)?;
    let t = match applied.as_ref().and_then(|a| a.primary.as_deref()) {
        Some(p) => l
            .validated
            .with_primary(p)
            .unwrap_or_else(|| l.validated.clone()),
        None => l.validated.clone(),
    };
    Ok((Loaded { validated: t, ..l }, applied))
}

/// Where an environment's controller state is: on Docker under `<stateDir>/<env>` on the host
/// (the host view of the topology), else at the topology's own paths.
struct Site {
    /// The topology as it is now (the primary failover may have moved), container paths on Docker.
    t: topology::ValidatedTopology,
    /// The topology with the controller's host paths (the same as `t` off Docker).
    host: topology::ValidatedTopology,
    /// The agent's root (`--root`).
    root: PathBuf,
    applied: Option<state::Applied>,
    /// On Docker: the state directory the environment's root lies in.
    docker: Option<PathBuf>,
}

impl Site {
    fn runtime(&self) -> Result<Box<dyn engine::Runtime + Send>, ExitCode> {
        if self.docker.is_some() {
            Ok(Box::new(controller::docker::runtime::Docker::new(
                &self.t, &self.root,
            )))
        } else {
            runtime::for_topology(&self.t).map_err(fail)
        }
    }

    /// Directory of the agent's API token.
    fn token_dir(&self) -> PathBuf {
        if self.docker.is_some() {
            self.root.join("secrets")
        } else {
            PathBuf::from(&self.t.paths.secrets)
        }
    }
}

/// The site of `file`: `current` off Docker; on Docker the host view under the state directory.
fn site(cli: &Cli, file: &Path) -> Result<Site, ExitCode> {
    if effective_runtime(cli, file) != Some(RuntimeKind::Docker) {
        let (l, applied) = current(cli, file)?;
        return Ok(Site {
            root: agent::root_of(&l.validated),
            host: l.validated.clone(),
            t: l.validated,
            applied,
            docker: None,
        });
    }
    docker_site(cli, file).map(|(s, _)| s)
}

/// `file` loaded for the Docker runtime, its state directory and the environment's host root.
fn docker_root(cli: &Cli, file: &Path) -> Result<(Loaded, PathBuf, PathBuf), ExitCode> {
    let mut o = opts(cli);
    o.runtime = Some(RuntimeKind::Docker);
    let l = topology::load(file, &o).map_err(|d| {
        print_diags(&d, cli.output);
        ExitCode::from(1)
    })?;
    let dir = controller::docker::cli::state_dir(file, cli.state_dir.as_deref(), &l);
    let root = std::path::absolute(controller::docker::runtime::host_root(
        Some(&dir),
        &l.validated.name,
    ))
    .map_err(fail)?;
    Ok((l, dir, root))
}

/// The Docker site of `file` whatever its `spec.runtime.kind` says (`docker-apply`,
/// `docker-destroy`), with the loaded document for rendering.
fn docker_site(cli: &Cli, file: &Path) -> Result<(Site, Loaded), ExitCode> {
    let (l, dir, root) = docker_root(cli, file)?;
    let host = controller::docker::runtime::host_view(&l.validated, &root);
    let applied = state::read_applied(&host).map_err(fail)?;
    // The primary failover or a switchover moved to stays the primary (as `current` does).
    let t = match applied.as_ref().and_then(|a| a.primary.as_deref()) {
        Some(p) => l
            .validated
            .with_primary(p)
            .unwrap_or_else(|| l.validated.clone()),
        None => l.validated.clone(),
    };
    let host = controller::docker::runtime::host_view(&t, &root);
    let site = Site {
        t: t.clone(),
        host,
        root,
        applied,
        docker: Some(dir),
    };
    Ok((site, Loaded { validated: t, ..l }))
}

fn reporter(
    cli: &Cli,
    t: &topology::ValidatedTopology,
    verbose: bool,
) -> Box<dyn runtime::Reporter> {
    let journal = runtime::open_journal(t);
    if cli.output == Output::Json {
        Box::new(runtime::JsonReporter { journal })
    } else if controller::progress::stderr_is_live_terminal() {
        Box::new(controller::progress::LiveReporter::new(
            Instant::now(),
            journal,
            verbose,
        ))
    } else {
        Box::new(runtime::TextReporter {
            start: Instant::now(),
            journal,
            verbose,
        })
    }
}

fn apply(
    cli: &Cli,
    file: &Path,
    with_agent: bool,
    verbose: bool,
) -> Result<(Loaded, render::Bundle), ExitCode> {
    let start = Instant::now();
    let (l, applied) = current(cli, file)?;
    let t = &l.validated;
    let mut rt = runtime::for_topology(t).map_err(fail)?;
    let b = render_bundle(cli, &l)?;
    let redactor = plan::Redactor::new(state::existing_secret_values(t));
    let mut p = plan::plan(&b, applied.as_ref().map(|a| &a.bundle), &redactor);
    engine::converge::adjust_plan(&mut p, &rt.capabilities());
    let root = agent::root_of(t);
    // The agent restarts crashed components; it must not race an apply that changes anything.
    // When nothing is to change and it runs healthy, it stays: replacing it would leave a gap in
    // failover monitoring for nothing.
    let kept_agent = if with_agent {
        keepable_agent(t, &root, &b, &p)
    } else {
        None
    };
    if kept_agent.is_none() {
        agent::stop(&root);
    }
    let mut rep = reporter(cli, t, verbose);
    let store = FileStore::new(t);
    let cl = RealClients::new(t, Arc::new(FileStore::new(t)));
    let templates = cli.templates.as_ref().map(|d| {
        std::path::absolute(d)
            .unwrap_or_else(|_| d.clone())
            .display()
            .to_string()
    });
    let report = engine::apply(
        rt.as_mut(),
        &cl,
        &store,
        rep.as_mut(),
        t,
        &b,
        &p,
        applied.as_ref(),
        templates,
    )
    .map_err(fail);
    let report = match report {
        Ok(r) => r,
        Err(code) => {
            // Keep whatever runs managed even when this apply failed.
            if with_agent && state::read_applied(t).ok().flatten().is_some() {
                let _ = agent::start_detached(&root, t.agent.port);
            }
            return Err(code);
        }
    };
    let changed = report
        .actions
        .values()
        .filter(|a| **a != plan::Action::None)
        .count();
    let kept_agent = kept_agent.filter(|_| changed == 0);
    if let Some(pid) = kept_agent {
        rep.event(&runtime::Event::step(
            "agent",
            "keep",
            "ok",
            Duration::ZERO,
            format!("pid {pid} unchanged, API http://127.0.0.1:{}", t.agent.port),
        ));
    } else if with_agent {
        // Something changed after all (a crashed component restarted, a secret rotated): the
        // agent starts afresh from the new applied record.
        agent::stop(&root);
        match agent::start_detached(&root, t.agent.port) {
            Ok(pid) => rep.event(&runtime::Event::step(
                "agent",
                "start",
                "ok",
                Duration::ZERO,
                format!("pid {pid}, API http://127.0.0.1:{}", t.agent.port),
            )),
            Err(e) => return Err(fail(e)),
        }
    }
    drop(rep);
    if cli.output == Output::Text {
        eprintln!(
            "\napplied {} in {:.2}s: {changed} component(s) changed, {} unchanged",
            t.name,
            start.elapsed().as_secs_f64(),
            report.actions.len() - changed
        );
    }
    Ok((l, b))
}

/// The pid of the running agent when it can stay through this apply: the plan changes nothing,
/// the agent answers `/health` on this topology's port and every component has a live process
/// (a dead one is restarted by the apply, which must not race the agent doing the same).
fn keepable_agent(
    t: &topology::ValidatedTopology,
    root: &Path,
    b: &render::Bundle,
    p: &plan::Plan,
) -> Option<u32> {
    if p.has_changes() {
        return None;
    }
    let pid = agent::running(root)?;
    let all_alive = b.components.keys().all(|name| {
        runtime::process::read_record(&t.paths.run, name)
            .is_some_and(|r| runtime::process::alive(&r))
    });
    let healthy = controller::probe::http_ok(
        &format!("http://127.0.0.1:{}/health", t.agent.port),
        Duration::from_millis(500),
    );
    (all_alive && healthy).then_some(pid)
}

fn up(cli: &Cli, file: &Path) -> Result<ExitCode, ExitCode> {
    let (l, b) = apply(cli, file, false, false)?;
    let root = agent::root_of(&l.validated);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    ctrlc::set_handler(move || s2.store(true, Ordering::SeqCst)).map_err(fail)?;
    eprintln!(
        "managing {} in the foreground; API on http://127.0.0.1:{}; Ctrl-C stops everything",
        l.validated.name, l.validated.agent.port
    );
    agent::register_self(&root);
    let r = engine::agent::run(&root, stop, services(&l.validated));
    eprintln!("stopping {} ...", l.validated.name);
    let mut rt = runtime::for_topology(&l.validated).map_err(fail)?;
    let left = rt.teardown(Some(&b), true).map_err(fail)?;
    if !left.is_empty() {
        return Err(fail(format!("processes still running: {left:?}")));
    }
    r.map_err(fail)?;
    Ok(ExitCode::SUCCESS)
}

/// `writeln!` into a String (cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Writes `text` to stdout; a reader that has gone away (broken pipe) is not an error.
fn emit_stdout(text: &str) {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes()).and_then(|()| o.flush());
}

fn status(cli: &Cli, file: &Path) -> Result<ExitCode, ExitCode> {
    let site = site(cli, file)?;
    let Some(applied) = site.applied.as_ref() else {
        return Err(fail(format!(
            "{} has not been applied (no {})",
            site.t.name,
            state::applied_path(&site.host).display()
        )));
    };
    let mut rt = site.runtime()?;
    let store = FileStore::new(&site.host);
    let cl = RealClients::new(&site.t, Arc::new(FileStore::new(&site.host)));
    let st = engine::Env {
        t: &site.t,
        rt: rt.as_mut(),
        cl: &cl,
        store: &store,
        rep: &mut engine::NullReporter,
    }
    .status(&applied.bundle);
    let agent_pid = agent::running(&site.root);
    let hist = engine::StateStore::history(&store);
    // Why the agent promoted nothing during an outage (maxLagOnFailover, quorum), when it runs.
    let no_failover = agent_pid
        .and_then(|_| {
            let url = format!("http://127.0.0.1:{}/failover", site.t.agent.port);
            controller::probe::http_get(&url, std::time::Duration::from_secs(2)).ok()
        })
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| v["last_decision"].as_str().map(String::from))
        .filter(|d| !d.is_empty());
    // Written at once at the end: a closed pipe (`status | head -3`) ends it quietly.
    let mut out = String::new();
    if cli.output == Output::Json {
        let doc = serde_json::json!({"environment": site.t.name, "agent_pid": agent_pid, "primary": applied.primary, "components": st, "failover_history": hist, "no_failover_because": no_failover});
        outln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).unwrap_or_default()
        );
    } else {
        outln!(
            out,
            "environment {}  agent {}",
            site.t.name,
            agent_pid
                .map(|p| format!("pid {p} on 127.0.0.1:{}", site.t.agent.port))
                .unwrap_or_else(|| "not running".into())
        );
        outln!(
            out,
            "{:<20} {:<9} {:<8} {:<8} {:>8} {:<18} {:<12} detail",
            "component",
            "state",
            "health",
            "role",
            "pid",
            "ports",
            "lag"
        );
        for c in &st {
            let lag = c
                .replication
                .as_ref()
                .map(|r| format!("{}B {}", r.lag_bytes.unwrap_or(0), r.state))
                .unwrap_or_default();
            let ports = c
                .ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",");
            outln!(
                out,
                "{:<20} {:<9} {:<8} {:<8} {:>8} {:<18} {:<12} {}",
                c.name,
                c.state.as_str(),
                if c.healthy { "healthy" } else { "DOWN" },
                c.role.clone().unwrap_or_default(),
                c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                ports,
                lag,
                // A healthy broker still says what it is (entry point onto the store, no replication).
                if c.healthy && c.kind != render::Kind::Kafka {
                    String::new()
                } else {
                    c.health.lines().next().unwrap_or("").to_string()
                }
            );
        }
    }
    if let (Output::Text, Some(why)) = (cli.output, &no_failover) {
        outln!(out, "\nprimary unreachable, nothing promoted: {why}");
    }
    if cli.output == Output::Text && !hist.is_empty() {
        outln!(
            out,
            "\nrole changes (ms after detection: fenced / promoted / rerouted / done)"
        );
        for e in hist.iter().rev().take(5).rev() {
            let rel = |x: Option<u128>| {
                x.map(|v| v.saturating_sub(e.detected_ms).to_string())
                    .unwrap_or_else(|| "-".into())
            };
            outln!(
                out,
                "#{} {:<10} {} -> {}  {}  {} / {} / {} / {}  {}",
                e.id,
                e.kind.as_str(),
                e.from,
                e.to,
                format!("{:?}", e.status).to_lowercase(),
                rel(e.fenced_ms),
                rel(e.promoted_ms),
                rel(e.rerouted_ms),
                rel(e.done_ms),
                e.reason
            );
        }
    }
    emit_stdout(&out);
    let all = st.iter().all(|c| c.healthy);
    Ok(if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn switchover(cli: &Cli, file: &Path, to: Option<&str>) -> Result<ExitCode, ExitCode> {
    let site = site(cli, file)?;
    if site.applied.is_none() {
        return Err(fail(format!("{} has not been applied", site.t.name)));
    }
    let root = site.root.clone();
    let ev = if agent::running(&root).is_some() {
        let url = format!("http://127.0.0.1:{}/switchover", site.t.agent.port);
        let token = engine::agent::read_token(&site.token_dir()).map_err(fail)?;
        let body = serde_json::json!({ "to": to }).to_string();
        let http = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(150))
            .build();
        let (code, body) = match http
            .post(&url)
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/json")
            .send_string(&body)
        {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
            Err(e) => return Err(fail(format!("failed to reach the agent at {url}: {e}"))),
        };
        if code != 200 {
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["detail"].as_str().map(String::from))
                .unwrap_or(body);
            return Err(fail(format!("switchover failed: {detail}")));
        }
        serde_json::from_str::<failover::FailoverEvent>(&body).map_err(fail)?
    } else {
        let mut journal = failover::Journal::open(&root);
        let svc = if site.docker.is_some() {
            services_at(&site.t, Some(&root))
        } else {
            services(&site.t)
        };
        failover::switchover(&svc, to, &mut journal, &mut |_| {}).map_err(fail)?
    };
    if cli.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&ev).unwrap_or_default());
    } else {
        eprintln!(
            "switchover {} -> {} done: writes paused for {:.2}s{}",
            ev.from,
            ev.to,
            ev.duration_ms.unwrap_or(0) as f64 / 1000.0,
            if ev.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", ev.detail)
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(
    cli: &Cli,
    file: &Path,
    component: &str,
    follow: bool,
    lines: usize,
) -> Result<ExitCode, ExitCode> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let site = site(cli, file)?;
    if site.docker.is_some() && component != engine::agent::AGENT {
        return docker_logs(&site, component, follow, lines);
    }
    let path = if component == engine::agent::AGENT {
        site.root.join("logs/agent.log")
    } else {
        runtime::local::log_path(&site.t, component)
    };
    let mut f = std::fs::File::open(&path).map_err(|e| {
        fail(format!(
            "no log for `{component}` at {}: {e}",
            path.display()
        ))
    })?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(fail)?;
    let all: Vec<&str> = text.lines().collect();
    let mut out = std::io::stdout();
    for line in &all[all.len().saturating_sub(lines)..] {
        let _ = writeln!(out, "{line}");
    }
    if follow {
        let mut pos = f.seek(SeekFrom::End(0)).map_err(fail)?;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(pos);
            if len < pos {
                pos = 0;
            }
            if len > pos {
                let _ = f.seek(SeekFrom::Start(pos));
                let mut buf = Vec::new();
                let _ = (&mut f).take(len - pos).read_to_end(&mut buf);
                let _ = out.write_all(&buf);
                let _ = out.flush();
                pos = len;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `logs` of a component on Docker: its container's output (stdout and stderr) through the engine
/// API, the last `lines` lines, then followed until the container stops when `follow`.
fn docker_logs(
    site: &Site,
    component: &str,
    follow: bool,
    lines: usize,
) -> Result<ExitCode, ExitCode> {
    use std::io::Write;
    let known = site
        .applied
        .as_ref()
        .is_some_and(|a| a.bundle.components.contains_key(component));
    if !known {
        return Err(fail(format!(
            "no component `{component}` in the applied {} (see `bssctl status`)",
            site.t.name
        )));
    }
    let client = controller::docker::client::Client::connect().map_err(fail)?;
    let cname = controller::docker::container_name(&site.t.name, component);
    let mut out = std::io::stdout();
    if follow {
        client
            .follow_logs(&cname, lines, &mut |chunk| {
                let _ = out.write_all(chunk.as_bytes());
                let _ = out.flush();
            })
            .map_err(fail)?;
    } else {
        let text = client.logs(&cname, lines).map_err(fail)?;
        let _ = out.write_all(text.as_bytes());
    }
    Ok(ExitCode::SUCCESS)
}

fn destroy(cli: &Cli, file: &Path, keep_data: bool) -> Result<ExitCode, ExitCode> {
    let (l, applied) = current(cli, file)?;
    let root = agent::root_of(&l.validated);
    agent::stop(&root);
    let mut rt = runtime::for_topology(&l.validated).map_err(fail)?;
    let left = rt
        .teardown(applied.as_ref().map(|a| &a.bundle), keep_data)
        .map_err(fail)?;
    if !left.is_empty() {
        return Err(fail(format!(
            "processes of {} still running: {left:?}",
            l.validated.name
        )));
    }
    if cli.output == Output::Text {
        eprintln!(
            "destroyed {}: no process left{}",
            l.validated.name,
            if keep_data {
                "; data and secrets kept"
            } else {
                "; state deleted"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `apply` on the Docker runtime: images built when missing, the plan executed by the engine on
/// containers, recorded on the host; then the agent (a host process) keeps it managed.
fn docker_apply(
    cli: &Cli,
    file: &Path,
    verbose: bool,
    with_agent: bool,
) -> Result<ExitCode, ExitCode> {
    let (site, l) = docker_site(cli, file)?;
    let dir = site.docker.clone().unwrap_or_default();
    let b = render_bundle(cli, &l)?;
    let mut rep = reporter(cli, &l.validated, verbose);
    let templates = cli.templates.as_ref().map(|d| d.display().to_string());
    let r = controller::docker::cli::apply(&l.validated, &b, &dir, rep.as_mut(), templates)
        .map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(1)
        })?;
    let changed = r
        .actions
        .values()
        .filter(|a| **a != plan::Action::None)
        .count();
    if cli.output == Output::Json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        eprintln!(
            "applied on docker: {changed} component(s) changed in {:.1}s",
            r.millis as f64 / 1000.0
        );
    }
    if with_agent {
        let root = &site.root;
        agent::stop(root);
        let pid = agent::start_detached(root, l.validated.agent.port).map_err(fail)?;
        if cli.output == Output::Text {
            eprintln!(
                "agent pid {pid}, API http://127.0.0.1:{}",
                l.validated.agent.port
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `destroy` on the Docker runtime: the agent, every container, the network and (unless
/// `--keep-data`) the volumes of the environment; proves nothing is left.
fn docker_destroy(cli: &Cli, file: &Path, keep_data: bool) -> Result<ExitCode, ExitCode> {
    // No applied record is read: destroy works whatever state an interrupted apply left.
    let (l, dir, root) = docker_root(cli, file)?;
    agent::stop(&root);
    let left = controller::docker::cli::destroy(&l.validated, &dir, keep_data).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })?;
    if left.is_empty() {
        eprintln!(
            "destroyed: no container, network{} of {} left",
            if keep_data { "" } else { " or volume" },
            l.validated.name
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: still there: {}", left.join(", "));
        Err(ExitCode::from(1))
    }
}

/// The runtime a command acts on: `--runtime`, else the file's `spec.runtime.kind` (None when the
/// file does not load; the command itself then reports why).
fn effective_runtime(cli: &Cli, file: &Path) -> Option<RuntimeKind> {
    topology::load(file, &opts(cli))
        .ok()
        .map(|l| l.validated.runtime)
}

/// The engine's services for an environment: its file store, the real clients, the runtime the
/// topology names (one per call, for the roles the caller has) and HAProxy as the write router.
fn services(t: &topology::ValidatedTopology) -> Services {
    services_at(t, None)
}

/// The services of an environment whose controller state lives at `root` (the agent's
/// `--root`): on Docker the state store is the host view and the runtime the containers.
fn services_at(t: &topology::ValidatedTopology, root: Option<&Path>) -> Services {
    let (store, make): (Arc<dyn engine::StateStore>, RuntimeFactory) = match (t.runtime, root) {
        (RuntimeKind::Docker, Some(root)) => {
            let root = root.to_path_buf();
            let host = controller::docker::runtime::host_view(t, &root);
            (
                Arc::new(FileStore::new(&host)),
                Arc::new(move |t: &topology::ValidatedTopology| {
                    Box::new(controller::docker::runtime::Docker::new(t, &root))
                        as Box<dyn engine::Runtime + Send>
                }),
            )
        }
        _ => (
            Arc::new(FileStore::new(t)),
            Arc::new(|t: &topology::ValidatedTopology| {
                runtime::for_topology(t).unwrap_or_else(|_| Box::new(runtime::local::Local::new(t)))
            }),
        ),
    };
    Services {
        store: store.clone(),
        clients: Arc::new(RealClients::new(t, store)),
        runtime: make,
        router: Arc::new(failover::HaproxyRouter),
    }
}

fn main() -> ExitCode {
    // Probing the tools takes a moment, so only `--version` itself pays for it.
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("bssctl {}", version_long());
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BSSCTL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(&cli) {
        Ok(c) | Err(c) => c,
    }
}
