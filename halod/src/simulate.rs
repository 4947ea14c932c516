//! `halod simulate` (placeholder).
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Number of routes.
    #[arg(long)]
    pub routes: u32,
}

pub fn run(_args: SimulateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`halod simulate` is not built yet")
}
