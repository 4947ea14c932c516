//! Node protocol server, failure detection, control socket (placeholder).
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Path of the gateway's YAML config.
    #[arg(long)]
    pub config: std::path::PathBuf,
}

pub fn run(_args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`halod run` is not built yet")
}
