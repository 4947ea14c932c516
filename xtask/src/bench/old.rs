//! `cargo xtask bench`: set-up, then halod's benchmarks (`cargo bench -p halod`).
//! Results go to docs/benchmarks.md with the command that produced them.

use anyhow::Result;

use crate::{command, setup, workspace};

/// Tools only the benchmarks need, beyond [`setup::PACKAGES`]. Add the baselines' tools here
/// (haproxy, ipvsadm, nftables, wrk) when a benchmark uses them.
pub const PACKAGES: &[&str] = &[];

/// Runs the benchmarks; `args` go to `cargo bench` after `--` (e.g. a benchmark filter).
pub fn run(args: &[String]) -> Result<()> {
    setup::run()?;
    setup::ensure_packages("benchmark packages", PACKAGES)?;
    let mut cmd = workspace::cargo();
    cmd.args(["bench", "-p", "halod"]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    command::run_visible(&mut cmd)
}
