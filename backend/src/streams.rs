//! Stream processors (placeholder, filled below).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Processor {
    CustomerAnalytics,
    OrderProcessor,
}
pub async fn run_until_signal(_cfg: crate::config::Config, _p: Processor) -> anyhow::Result<()> {
    Ok(())
}
