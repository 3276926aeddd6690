//! Load generator (placeholder).
#[derive(Debug, clap::Args)]
pub struct Args {}
pub async fn run(_a: Args, _c: Option<crate::config::Config>) -> anyhow::Result<i32> {
    Ok(0)
}
