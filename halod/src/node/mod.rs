//! Node agent and client library (placeholder).
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Gateway address, IP:PORT.
    #[arg(long)]
    pub gateway: String,
    /// This node's unique name.
    #[arg(long)]
    pub name: String,
}

pub fn run(_args: NodeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`halod node` is not built yet")
}
