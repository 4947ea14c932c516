//! `cargo xtask bench [--quick]`: halod against the alternatives, in one run, on one test
//! bed, so every comparison holds on a noisy machine. Writes docs/benchmarks.md (tables,
//! the command, the machine) and docs/benchmarks.svg (chart), and prints a summary.
//!
//! Sections, each in its own module:
//! - [`churn`]: routes moved per join and per failure: halod, the minimum, Maglev.
//! - [`cost`]: `BPF_PROG_TEST_RUN` ns per packet: halod routed/passed vs a parse-and-pass floor.
//! - [`forwarding`]: UDP and TCP through the gateway: halod, nftables, IPVS, HAProxy.
//! - [`failover`]: node death to first packet at the new owner: halod and HAProxy.
//! - [`scale`]: 1,000-10,000 simulated nodes heartbeating: daemon memory, CPU, detection.
//! - [`drain`]: connections a join resets, with and without the drain of planned moves.
//! - [`heartbeats`]: node protocol version 1 (TCP) against 2 (UDP stamped in XDP) at scale.
//!
//! The "## Routing core" section of docs/benchmarks.md comes from
//! `cargo bench -p halod --bench routing` and is written by hand; it and the hand-written
//! sections after it (A/B comparisons across builds) are kept verbatim.

mod chart;
mod churn;
mod cost;
mod drain;
mod failover;
mod forwarding;
mod halod;
mod heartbeats;
mod objects;
mod process;
mod report;
mod scale;
mod traffic;
mod victims;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::testbed::{Testbed, TestbedOptions};
use crate::{setup, workspace};

/// Prefix of every namespace the benchmarks create (never the default "hd-").
pub const PREFIX: &str = "hd-bench-";

/// The test bed prefix: [`PREFIX`], or `HALOD_BENCH_PREFIX` so that two benchmark sections
/// that start no gateway daemon (churn, cost) can run beside another run.
fn prefix() -> String {
    std::env::var("HALOD_BENCH_PREFIX").unwrap_or_else(|_| PREFIX.to_string())
}

/// The parts of the benchmark, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Churn,
    Cost,
    Forwarding,
    Failover,
    Scale,
    Drain,
    Heartbeats,
}

impl Section {
    pub const ALL: [Section; 7] = [
        Section::Churn,
        Section::Cost,
        Section::Forwarding,
        Section::Failover,
        Section::Scale,
        Section::Drain,
        Section::Heartbeats,
    ];
}

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Shorter runs (under 5 minutes in all).
    pub quick: bool,
    /// Only these sections (all when empty).
    pub only: Vec<Section>,
    /// Where the report goes (default docs/benchmarks.md; the chart goes beside it).
    pub output: Option<PathBuf>,
    /// Node counts of the scale section (the plan's when empty).
    pub scale_nodes: Vec<usize>,
}

/// Durations and sizes for a quick or a full run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub forwarding_seconds: u64,
    pub fixed_rate: u64,
    pub test_run_repeat: u32,
    pub failover_trials: usize,
    pub scale_nodes: Vec<usize>,
    pub scale_window_seconds: u64,
    pub churn_nodes: Vec<usize>,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        Plan {
            quick,
            forwarding_seconds: if quick { 2 } else { 8 },
            fixed_rate: 100_000,
            test_run_repeat: if quick { 200_000 } else { 1_000_000 },
            failover_trials: if quick { 20 } else { 40 },
            scale_nodes: vec![1_000, 5_000, 10_000],
            scale_window_seconds: if quick { 3 } else { 10 },
            churn_nodes: vec![3, 10, 100, 1_000],
        }
    }
}

/// Everything measured; a section that failed holds its error.
#[derive(Debug, Default)]
pub struct Results {
    pub churn: Option<Result<Vec<churn::Churn>, String>>,
    pub cost: Option<Result<cost::Costs, String>>,
    pub forwarding: Option<Result<forwarding::Forwarding, String>>,
    pub failover: Option<Result<failover::Failover, String>>,
    pub scale: Option<Result<scale::Scale, String>>,
    pub drain: Option<Result<drain::Drain, String>>,
    pub heartbeats: Option<Result<heartbeats::Heartbeats, String>>,
}

pub fn run(options: &Options) -> Result<()> {
    setup::run()?;
    setup::ensure_bench_packages()?;
    setup::require_root("the benchmarks build network namespaces and load XDP programs")?;
    let started = Instant::now();
    let machine = report::Machine::describe();
    let mut plan = Plan::new(options.quick);
    if !options.scale_nodes.is_empty() {
        plan.scale_nodes = options.scale_nodes.clone();
    }
    let sections: Vec<Section> = if options.only.is_empty() {
        Section::ALL.to_vec()
    } else {
        options.only.clone()
    };
    let objects = objects::build()?;
    let mut results = Results::default();
    let text = |e: anyhow::Error| format!("{e:#}");
    for section in &sections {
        println!("bench: --- {section:?} ---");
        match section {
            Section::Churn => {
                results.churn = Some(churn::run(&objects.halod, &plan.churn_nodes).map_err(text));
            }
            Section::Cost => {
                results.cost = Some(
                    with_bed(2, |bed| {
                        cost::run(
                            bed,
                            &objects.halod_xdp,
                            &objects.bench_xdp,
                            plan.test_run_repeat,
                        )
                    })
                    .map_err(text),
                );
            }
            Section::Forwarding => {
                results.forwarding = Some(
                    with_bed(2, |bed| {
                        forwarding::run(bed, &objects, plan.forwarding_seconds, plan.fixed_rate)
                    })
                    .map_err(text),
                );
            }
            Section::Failover => {
                results.failover = Some(
                    with_bed(2, |bed| failover::run(bed, &objects, plan.failover_trials))
                        .map_err(text),
                );
            }
            Section::Drain => {
                results.drain = Some(with_bed(3, |bed| drain::run(bed, &objects)).map_err(text));
            }
            Section::Heartbeats => {
                results.heartbeats = Some(
                    heartbeats::run(&objects, &heartbeats::loads(), plan.scale_window_seconds)
                        .map_err(text),
                );
            }
            Section::Scale => {
                results.scale = Some(
                    with_bed(1, |bed| {
                        scale::run(bed, &objects, &plan.scale_nodes, plan.scale_window_seconds)
                    })
                    .map_err(text),
                );
            }
        }
    }
    let output = options
        .output
        .clone()
        .unwrap_or_else(|| workspace::root().join("docs").join("benchmarks.md"));
    let chart_path = output.with_extension("svg");
    let chart_written = chart::write(&chart_path, &results);
    let command = report::command_line(options);
    let previous = std::fs::read_to_string(&output).unwrap_or_default();
    let document = report::render(
        &report::Context {
            command: &command,
            machine: &machine,
            plan: &plan,
            elapsed: started.elapsed(),
            chart: chart_written
                .as_ref()
                .ok()
                .and_then(|()| chart_path.file_name())
                .map(|n| n.to_string_lossy().into_owned()),
            previous: &previous,
        },
        &results,
    );
    std::fs::write(&output, document)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", output.display()))?;
    if let Err(e) = chart_written {
        println!("bench: warning: chart not written: {e:#}");
    }
    println!("{}", report::summary(&results));
    println!(
        "bench: wrote {} and {} in {:.0} s",
        output.display(),
        chart_path.display(),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = [
        results.churn.as_ref().map(|r| ("churn", r.is_err())),
        results.cost.as_ref().map(|r| ("cost", r.is_err())),
        results
            .forwarding
            .as_ref()
            .map(|r| ("forwarding", r.is_err())),
        results.failover.as_ref().map(|r| ("failover", r.is_err())),
        results.scale.as_ref().map(|r| ("scale", r.is_err())),
        results.drain.as_ref().map(|r| ("drain", r.is_err())),
        results
            .heartbeats
            .as_ref()
            .map(|r| ("heartbeats", r.is_err())),
    ]
    .into_iter()
    .flatten()
    .filter(|(_, failed)| *failed)
    .map(|(name, _)| name)
    .collect();
    if !failed.is_empty() {
        bail!(
            "benchmark sections failed: {} (the errors are in the report)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Runs `f` on a fresh test bed with prefix [`prefix()`], torn down afterwards even if `f`
/// fails or panics (the test bed's `Drop`).
fn with_bed<T>(nodes: usize, f: impl FnOnce(&Testbed) -> Result<T>) -> Result<T> {
    let bed = Testbed::up(TestbedOptions {
        prefix: prefix(),
        nodes,
        clients: 1,
    })?;
    let result = f(&bed);
    bed.down()?;
    result
}
