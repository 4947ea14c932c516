//! `cargo xtask test`: every test of the workspace, in phases, with one summary line.
//!
//! 1. set-up (quiet when everything is present), and a check that we run as root;
//! 2. build of every target, with the real eBPF object (never the stub);
//! 3. unit and property tests (`--lib --bins` of every crate);
//! 4. integration tests of halod: BPF_PROG_TEST_RUN tests (tests/xdp_*.rs) and the
//!    network-namespace end-to-end tests (tests/*.rs, declared as `[[test]]` in halod);
//! 5. the BPF_PROG_TEST_RUN tests (`tests/xdp_*.rs`) again in release, so the
//!    verifier sees the release object of the XDP program too;
//! 6. a short `cargo xtask chaos` run (its checks are counted as tests).
//!
//! Phases select test targets by kind, not by name, so new tests are picked up without
//! touching this file. The last line is `xtask test: N passed, M failed`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::command::describe;
use crate::{setup, workspace};

/// Why the whole run needs root; shown when it is not.
pub const ROOT_REASON: &str =
    "the BPF and network-namespace tests need CAP_SYS_ADMIN/CAP_NET_ADMIN";

/// One step of the run: a cargo command whose test results are counted.
struct Phase {
    title: &'static str,
    /// Arguments to cargo. Builds count as one failure if they fail.
    args: &'static [&'static str],
    /// Whether the command runs tests (and prints `test result:` lines).
    runs_tests: bool,
}

// halod-ebpf is excluded: it only builds for bpfel-unknown-none, through halod's build script.
const PHASES: &[Phase] = &[
    Phase {
        title: "build: every crate and target, real eBPF object",
        args: &[
            "build",
            "--workspace",
            "--exclude",
            "halod-ebpf",
            "--all-targets",
        ],
        runs_tests: false,
    },
    Phase {
        title: "unit and property tests",
        args: &[
            "test",
            "--workspace",
            "--exclude",
            "halod-ebpf",
            "--lib",
            "--bins",
            "--no-fail-fast",
        ],
        runs_tests: true,
    },
    Phase {
        // One test at a time: end-to-end tests share the machine's two cores and some use the
        // default test bed prefix.
        title: "integration tests: BPF_PROG_TEST_RUN and network-namespace end-to-end",
        args: &[
            "test",
            "-p",
            "halod",
            "--test",
            "*",
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ],
        runs_tests: true,
    },
    Phase {
        // The build script builds the XDP program in the host build's profile, so this loads
        // and verifies the release object (the phase above: the dev one) and runs the packet
        // corpus against it.
        title: "BPF_PROG_TEST_RUN tests against the release build of the XDP program",
        args: &[
            "test",
            "--release",
            "-p",
            "halod",
            "--test",
            "xdp_*",
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ],
        runs_tests: true,
    },
    Phase {
        // A short chaos run (docs/operations.md, "Chaos"): every consistency check after
        // every event counts as a test.
        title: "chaos: 20 seeded node and daemon failures under client traffic",
        args: &[
            "run", "-q", "-p", "xtask", "--", "chaos", "--seed", "1", "--events", "20",
        ],
        runs_tests: true,
    },
];

/// Counts over the whole run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }

    /// The line the CI judge reads.
    pub fn summary(&self) -> String {
        format!("xtask test: {} passed, {} failed", self.passed, self.failed)
    }
}

/// Reads libtest's `test result: ok. 3 passed; 1 failed; 2 ignored; ...` line.
pub fn parse_result_line(line: &str) -> Option<Tally> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let mut tally = Tally::default();
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(number), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(number) = number.parse::<u64>() else {
            continue;
        };
        match what {
            "passed" => tally.passed = number,
            "failed" => tally.failed = number,
            "ignored" => tally.ignored = number,
            _ => {}
        }
    }
    Some(tally)
}

/// Runs everything; returns the tally (the caller prints the summary and sets the exit code).
pub fn run() -> Tally {
    let mut tally = Tally::default();
    let started = Instant::now();
    header("set-up");
    if let Err(e) = setup::require_root(ROOT_REASON).and_then(|()| setup::run()) {
        eprintln!("xtask test: {e:#}");
        tally.failed += 1;
        return tally;
    }
    for phase in PHASES {
        header(phase.title);
        let phase_started = Instant::now();
        match run_phase(phase) {
            Ok(result) => {
                println!(
                    "xtask test: {}: {} passed, {} failed ({:.0?})",
                    phase.title,
                    result.passed,
                    result.failed,
                    phase_started.elapsed()
                );
                tally.add(result);
                if !phase.runs_tests && result.failed > 0 {
                    // Go on: a broken bench or example should not hide what the tests say.
                    eprintln!("xtask test: the build failed; running the tests that still build");
                }
            }
            Err(e) => {
                eprintln!("xtask test: {}: {e:#}", phase.title);
                tally.failed += 1;
            }
        }
    }
    if tally.ignored > 0 {
        println!(
            "xtask test: note: {} tests are marked #[ignore] and were not run",
            tally.ignored
        );
    }
    println!("xtask test: total time {:.0?}", started.elapsed());
    tally
}

fn header(title: &str) {
    println!("\n==== {title} ====");
}

fn run_phase(phase: &Phase) -> Result<Tally> {
    let mut cmd = workspace::cargo();
    cmd.args(phase.args);
    let line = describe_cargo(phase.args);
    println!("$ {line}");
    let mut tally = Tally::default();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = child.stdout.take().context("cargo's standard output")?;
    let mut out = std::io::stdout();
    for text in BufReader::new(stdout).lines() {
        let text = text.context("reading cargo's output")?;
        let _ = writeln!(out, "{text}");
        if let Some(result) = parse_result_line(&text) {
            tally.add(result);
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() && tally.failed == 0 {
        // A compile error, or a test binary that crashed before printing its result.
        eprintln!(
            "xtask test: `{line}` failed ({status}) without a failing test result; counted as \
             one failure"
        );
        tally.failed = 1;
    }
    if phase.runs_tests && status.success() && tally.passed + tally.failed == 0 {
        println!("xtask test: note: `{line}` found no tests");
    }
    Ok(tally)
}

/// `cargo ARGS` as a user would type it (not the full path of the cargo binary we run).
fn describe_cargo(args: &[&str]) -> String {
    describe(Command::new("cargo").args(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_counted() {
        let ok = "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.31s";
        assert_eq!(
            parse_result_line(ok),
            Some(Tally {
                passed: 12,
                failed: 0,
                ignored: 1
            })
        );
        let failed = "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s";
        assert_eq!(
            parse_result_line(failed),
            Some(Tally {
                passed: 3,
                failed: 2,
                ignored: 0
            })
        );
        assert_eq!(parse_result_line("test routing::x ... ok"), None);
        assert_eq!(parse_result_line("running 3 tests"), None);
    }

    #[test]
    fn the_summary_has_the_form_the_ci_judge_reads() {
        let tally = Tally {
            passed: 40,
            failed: 0,
            ignored: 0,
        };
        assert_eq!(tally.summary(), "xtask test: 40 passed, 0 failed");
    }

    #[test]
    fn phases_never_build_the_ebpf_crate_for_the_host_and_never_name_tests() {
        for phase in PHASES {
            let args = phase.args.join(" ");
            if args.contains("--workspace") {
                assert!(args.contains("--exclude halod-ebpf"), "{args}");
            }
            assert!(
                !args.contains("--test ")
                    || args.contains("--test *")
                    || args.contains("--test xdp_*"),
                "{args}"
            );
        }
    }
}
