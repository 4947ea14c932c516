//! `cargo xtask fuzz [--cases N]`: the dedicated fuzz run. Runs the proptest fuzz
//! targets in release with `HALOD_FUZZ_CASES=N` (default 100,000):
//!
//! - `halod-common` `packet::tests::fuzz_parse_and_rewrite`: mutated frames through
//!   the XDP program's header checks and checksum rewrite, judged by etherparse;
//! - `halod` `protocol::fuzz::*`: the node wire decoder (arbitrary lines, arbitrary
//!   JSON, byte streams cut into arbitrary reads) and the encoder's round trip (a
//!   tenth of the cases: each serializes hundreds of routes).
//!
//! `cargo xtask test` runs the same targets with the default of 10,000 cases.

use anyhow::{Result, bail};

use crate::{command::describe, workspace};

/// Cases of the dedicated run.
pub const DEFAULT_CASES: u32 = 100_000;

pub fn run(cases: u32) -> Result<()> {
    let mut cmd = workspace::cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "halod-common",
        "-p",
        "halod",
        "--lib",
        "fuzz_",
    ])
    .env("HALOD_FUZZ_CASES", cases.to_string());
    println!("$ HALOD_FUZZ_CASES={cases} {}", describe(&cmd));
    let status = cmd.status()?;
    if !status.success() {
        bail!(
            "a fuzz target failed ({status}); the failing input is printed above as \
             `minimal failing input`"
        );
    }
    println!("xtask fuzz: every fuzz target passed {cases} cases");
    Ok(())
}
