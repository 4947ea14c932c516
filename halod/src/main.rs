use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// halod: route each port of a gateway to the comet/push node that owns it, at XDP speed.
#[derive(Parser)]
#[command(name = "halod", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon: node registrations, failover, XDP data plane.
    Run(halod::control::RunArgs),
    /// Run the node agent: register with a gateway, heartbeat, follow route changes.
    Node(halod::node::NodeArgs),
    /// Show what a sequence of joins, failures and leaves does to the route table.
    Simulate(halod::simulate::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => halod::control::run(args),
        Command::Node(args) => halod::node::run(args),
        Command::Simulate(args) => halod::simulate::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("halod: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
