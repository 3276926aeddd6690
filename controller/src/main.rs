//! `bssctl`: the command line. Parses arguments, calls the library, prints, sets the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use controller::diag::Diagnostic;
use controller::topology::types::RuntimeKind;
use controller::topology::{self, Loaded, ValidateOptions};
use controller::{check, crd, plan, render, state};

#[derive(Parser, Debug)]
#[command(name = "bssctl", version, about = "Render, check, plan and run the BSS stack from one topology.yaml", long_about = None)]
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
        Command::Render { file, out } => {
            let start = Instant::now();
            let l = load(cli, file)?;
            let b = render_bundle(cli, &l)?;
            let n = b.write_to(out).map_err(|e| {
                eprintln!("error: failed to write {}: {e}", out.display());
                ExitCode::from(1)
            })?;
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
            let p = plan::plan(&b, applied.as_ref().map(|a| &a.bundle), &redactor);
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
        Command::Schema => {
            print!("{}", crd::schema_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
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
