//! `bss-backend`: serve the API, run a stream processor, generate load, or migrate the database.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mimalloc instead of the system allocator: the request path allocates and frees many small
/// buffers on every task (JSON, SQL arguments, headers), and glibc's malloc/free were ~10 % of
/// `serve`'s CPU under load (docs/backend-performance.md). Safe code: the crate implements
/// `GlobalAlloc`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "bss-backend", version, about = "The BSS backend service")]
struct Cli {
    /// Configuration file rendered by bssctl (YAML).
    #[arg(long, env = "BSS_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API, the outbox relay and the cache invalidation listener.
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Run a stream processor.
    Stream {
        #[arg(value_enum)]
        processor: backend::streams::Processor,
    },
    /// Open-loop load generator.
    Loadgen(backend::loadgen::Args),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BSS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<backend::config::Config> {
    let path = path.context("--config PATH (or BSS_CONFIG) is required")?;
    Ok(backend::config::Config::load(&path)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            let cfg = load_config(cli.config)?;
            backend::server::serve(cfg).await?;
        }
        Command::Migrate => {
            let cfg = load_config(cli.config)?;
            let pool =
                backend::db::pool(&cfg.database.write_url, cfg.database.password.as_deref(), 2)?;
            backend::db::migrate(&pool)
                .await
                .context("failed to run migrations")?;
            tracing::info!("migrations applied");
        }
        Command::Stream { processor } => {
            let cfg = load_config(cli.config)?;
            backend::streams::run_until_signal(cfg, processor).await?;
        }
        Command::Loadgen(args) => {
            let cfg = match cli.config {
                Some(p) => Some(backend::config::Config::load(&p)?),
                None => None,
            };
            let code = backend::loadgen::run(args, cfg).await?;
            std::process::exit(code);
        }
    }
    Ok(())
}
