use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use xtask::testbed::{self, Testbed, TestbedOptions};

/// Developer tasks for halod: set-up, test bed, tests, demo, benchmarks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks for building and testing (idempotent; needs root).
    Setup,
    /// Build everything and run every test; ends with "xtask test: N passed, M failed".
    Test,
    /// Build halod, bring up a test bed and show traffic crossing the gateway.
    Demo,
    /// Benchmark halod against nftables, IPVS and HAProxy; writes docs/benchmarks.md.
    Bench {
        /// Shorter runs: the whole benchmark in under 5 minutes.
        #[arg(long)]
        quick: bool,
        /// Run only these sections (the report then holds only them).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<xtask::bench::Section>,
        /// Write the report here instead of docs/benchmarks.md (the chart goes beside it).
        #[arg(long)]
        output: Option<std::path::PathBuf>,
        /// Node counts of the control-plane scale section (default 1000,5000,10000).
        #[arg(long, value_delimiter = ',')]
        scale_nodes: Vec<usize>,
    },
    /// Random node and daemon failures under client traffic, checked after every event.
    Chaos {
        /// Seed of the event sequence (the same seed gives the same sequence).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Run this long.
        #[arg(long)]
        minutes: Option<f64>,
        /// Stop after this many events.
        #[arg(long)]
        events: Option<u64>,
    },
    /// The dedicated fuzz run: packet parse/rewrite and wire decoder, in release.
    Fuzz {
        /// Cases per fuzz target.
        #[arg(long, default_value_t = xtask::fuzz::DEFAULT_CASES)]
        cases: u32,
    },
    /// Network namespaces standing in for a gateway, its clients and its nodes.
    Testbed {
        #[command(subcommand)]
        action: TestbedAction,
    },
}

#[derive(Subcommand)]
enum TestbedAction {
    /// Build a test bed (after removing leftovers with the same prefix) and leave it up.
    Up {
        #[command(flatten)]
        prefix: PrefixArg,
        /// Number of backend nodes (node1..K at 198.19.0.11..).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Number of clients (client1..C at 198.18.0.2..).
        #[arg(long, default_value_t = 1)]
        clients: usize,
    },
    /// Remove the test bed: its namespaces, links and processes, even after a crash.
    Down {
        #[command(flatten)]
        prefix: PrefixArg,
    },
    /// Show namespaces, interfaces, addresses, routes and processes of the test bed.
    Status {
        #[command(flatten)]
        prefix: PrefixArg,
    },
}

#[derive(Args)]
struct PrefixArg {
    /// Prefix of every namespace name.
    #[arg(long, default_value = testbed::DEFAULT_PREFIX)]
    prefix: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Task::Test = cli.command {
        let tally = xtask::test_suite::run();
        println!("{}", tally.summary());
        return if tally.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => xtask::setup::run(),
        Task::Test => unreachable!("handled in main"),
        Task::Demo => xtask::demo::run(),
        Task::Bench {
            quick,
            only,
            output,
            scale_nodes,
        } => xtask::bench::run(&xtask::bench::Options {
            quick,
            only,
            output,
            scale_nodes,
        }),
        Task::Fuzz { cases } => xtask::fuzz::run(cases),
        Task::Chaos {
            seed,
            minutes,
            events,
        } => {
            if minutes.is_none() && events.is_none() {
                anyhow::bail!("give --minutes M or --events N");
            }
            let report = xtask::chaos::run(&xtask::chaos::Options {
                seed,
                minutes,
                events,
            })?;
            report.print();
            if !report.violations.is_empty() {
                anyhow::bail!("{} violations", report.violations.len());
            }
            Ok(())
        }
        Task::Testbed { action } => match action {
            TestbedAction::Up {
                prefix,
                nodes,
                clients,
            } => {
                let bed = Testbed::up(TestbedOptions {
                    prefix: prefix.prefix.clone(),
                    nodes,
                    clients,
                })?;
                bed.keep();
                let status = Testbed::status_prefix(&prefix.prefix)?;
                show(&format!(
                    "{status}enter a namespace with: nsenter --net=/run/netns/{}client1 bash\n\
                     remove it with: cargo xtask testbed down{}\n",
                    prefix.prefix,
                    prefix_flag(&prefix.prefix)
                ));
                Ok(())
            }
            TestbedAction::Down { prefix } => Testbed::down_prefix(&prefix.prefix),
            TestbedAction::Status { prefix } => {
                show(&Testbed::status_prefix(&prefix.prefix)?);
                Ok(())
            }
        },
    }
}

/// Writes to standard output; a closed pipe (`... | head`) is not an error worth a panic.
fn show(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn prefix_flag(prefix: &str) -> String {
    if prefix == testbed::DEFAULT_PREFIX {
        String::new()
    } else {
        format!(" --prefix {prefix}")
    }
}
