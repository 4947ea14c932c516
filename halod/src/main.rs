use std::process::ExitCode;

use clap::{Parser, Subcommand};
use halod::api::OperatorRequest;

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
    /// Every route with its ports, node, slot and node address (from a running daemon).
    Routes(halod::operator::Target),
    /// Every node with role, slot, route count, address, last heartbeat, connected since.
    Nodes(halod::operator::Target),
    /// Version, uptime, config summary, counts, XDP mode per interface, last failover.
    Status(halod::operator::Target),
    /// Packets and bytes per route and per node, and the XDP program's verdicts.
    Stats(halod::operator::Target),
    /// Remove a node as a graceful leave: its routes move, it is told first.
    Drain(halod::operator::DrainArgs),
    /// Print the daemon's events as they happen (joins, failures, moves).
    Watch(halod::operator::Target),
    /// Remove what a stopped gateway left: its XDP program, pinned maps and state file.
    Teardown(halod::control::TeardownArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => halod::control::run(args),
        Command::Node(args) => halod::node::run(args),
        Command::Simulate(args) => halod::simulate::run(args),
        Command::Routes(target) => halod::operator::run(OperatorRequest::Routes, target),
        Command::Nodes(target) => halod::operator::run(OperatorRequest::Nodes, target),
        Command::Status(target) => halod::operator::run(OperatorRequest::Status, target),
        Command::Stats(target) => halod::operator::run(OperatorRequest::Stats, target),
        Command::Drain(args) => {
            halod::operator::run(OperatorRequest::Drain { node: args.name }, args.target)
        }
        Command::Watch(target) => halod::operator::run(OperatorRequest::Watch, target),
        Command::Teardown(args) => halod::control::teardown(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            halod::stderr_line!("halod: error: {}", halod::console::error_chain(err.chain()));
            ExitCode::FAILURE
        }
    }
}
