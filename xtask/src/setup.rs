//! `cargo xtask setup`: install what a fresh machine of this kind lacks for building and
//! testing halod, idempotently. Each step checks first and installs only what is missing,
//! printing one line per thing it installs and nothing when everything is present.
//!
//! The steps follow ../shared/spec/toolchain.md: Debian packages, nightly's rust-src,
//! bpf-linker 0.13.0 built against Debian's LLVM 22, and the bpffs mount.

use std::fmt::Display;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use crate::command::{self, describe};
use crate::workspace;

/// Debian packages needed to build the eBPF toolchain and to run the tests and the demo.
pub const PACKAGES: &[&str] = &[
    "iproute2",     // ip: namespaces, veths, bridges
    "ethtool",      // offload settings of the test bed's veths
    "util-linux",   // nsenter: enter only the network namespace
    "iputils-ping", // ping, for tests and by hand
    "socat",        // TCP/UDP servers and clients in the namespaces
    "iperf3",       // throughput through the gateway
    "netsniff-ng",  // trafgen: packet load generator
    "llvm-22-dev",  // bpf-linker links against LLVM 22
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "python3",
    "prometheus", // promtool: the metrics tests check the exposition format with it
];

/// Tools only `cargo xtask bench` needs: the baselines it compares halod with (HAProxy,
/// IPVS's ipvsadm, nftables) and its TCP load generators (wrk, iperf3).
pub const BENCH_PACKAGES: &[&str] = &["haproxy", "ipvsadm", "nftables", "wrk", "iperf3"];

/// Installs [`BENCH_PACKAGES`] that are missing (only `cargo xtask bench` calls this).
pub fn ensure_bench_packages() -> Result<()> {
    ensure_packages("benchmark packages", BENCH_PACKAGES)
}

/// The bpf-linker release that matches aya 0.14 and nightly's LLVM 22.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major version bpf-linker is built against; it must equal nightly rustc's.
pub const LLVM_MAJOR: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Where the BPF filesystem must be mounted so the daemon can pin maps.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Runs every set-up step.
pub fn run() -> Result<()> {
    ensure_packages("Debian packages", PACKAGES)?;
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    ensure_bpffs()?;
    Ok(())
}

/// A failed step: names the step, says why, and gives the command to run by hand.
fn step_failed(step: &str, manual: &str, cause: impl Display) -> anyhow::Error {
    anyhow!("setup step `{step}` failed: {cause}\nrun by hand: {manual}")
}

fn announce(what: &str) {
    println!("setup: installing {what}");
}

/// Installs the Debian `packages` that are not installed yet (`apt-get update` once, then
/// `apt-get install`). Also used by `bench` for its own extra tools.
pub fn ensure_packages(step: &str, packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for package in packages {
        if !package_installed(package)
            .map_err(|e| step_failed(step, &format!("dpkg-query -W {package}"), format!("{e:#}")))?
        {
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let manual = format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
        missing.join(" ")
    );
    for package in &missing {
        announce(&format!("Debian package {package}"));
    }
    command::run(Command::new("apt-get").args(["update", "-q"]))
        .map_err(|e| step_failed(step, &manual, format!("{e:#}")))?;
    command::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"])
            .args(&missing),
    )
    .map_err(|e| step_failed(step, &manual, format!("{e:#}")))?;
    Ok(())
}

fn package_installed(package: &str) -> Result<bool> {
    // dpkg-query exits 1 for a package it has never heard of; that just means "missing".
    let output = command::output_any_status(Command::new("dpkg-query").args([
        "-W",
        "-f=${Status}",
        package,
    ]))?;
    Ok(output.status.success()
        && String::from_utf8_lossy(&output.stdout).trim() == "install ok installed")
}

/// Nightly rustc builds the eBPF crate with `-Z build-std=core`, which needs rust-src.
fn ensure_nightly_rust_src() -> Result<()> {
    const STEP: &str = "nightly Rust with rust-src";
    let install_toolchain =
        "rustup toolchain install nightly --profile minimal --component rust-src";
    let add_component = "rustup component add rust-src --toolchain nightly";

    let toolchains = command::run(Command::new("rustup").args(["toolchain", "list"]))
        .map_err(|e| step_failed(STEP, install_toolchain, format!("{e:#}")))?;
    let has_nightly = toolchains
        .lines()
        .any(|line| line.starts_with("nightly-") || line.starts_with("nightly "));
    if !has_nightly {
        announce("the nightly Rust toolchain with rust-src");
        command::run(Command::new("rustup").args(install_toolchain.split(' ').skip(1))).map_err(
            |e| {
                step_failed(
                    STEP,
                    install_toolchain,
                    format!("{e:#}\n(this needs access to static.rust-lang.org)"),
                )
            },
        )?;
        return Ok(());
    }
    let installed = command::run(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .map_err(|e| step_failed(STEP, add_component, format!("{e:#}")))?;
    if !installed.lines().any(|line| line.trim() == "rust-src") {
        announce("rust-src for the nightly toolchain");
        command::run(Command::new("rustup").args(add_component.split(' ').skip(1)))
            .map_err(|e| step_failed(STEP, add_component, format!("{e:#}")))?;
    }
    Ok(())
}

/// The `cargo install` command for bpf-linker. `LLVM_PREFIX` is required: without it
/// bpf-linker's build script searches /usr and fails with `unable to find library -lLLVM`.
pub fn bpf_linker_install_command() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{LLVM_MAJOR}"))
        .arg("--locked");
    cmd
}

fn ensure_bpf_linker() -> Result<()> {
    const STEP: &str = "bpf-linker";
    let mut install = bpf_linker_install_command();
    let manual = describe(&install);
    if installed_bpf_linker_version().as_deref() == Some(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let nightly_llvm = nightly_llvm_major().map_err(|e| step_failed(STEP, &manual, e))?;
    if nightly_llvm != LLVM_MAJOR {
        return Err(step_failed(
            STEP,
            &manual,
            format!(
                "nightly rustc uses LLVM {nightly_llvm}, but this project builds bpf-linker \
                 against LLVM {LLVM_MAJOR}; install a nightly whose `rustc +nightly -vV` says \
                 LLVM {LLVM_MAJOR}"
            ),
        ));
    }
    announce(&format!(
        "bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (cargo install, about 3 minutes)"
    ));
    // The program proxied by rustup would otherwise pick the toolchain of the calling cargo.
    install
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR");
    command::run(&mut install).map_err(|e| step_failed(STEP, &manual, format!("{e:#}")))?;
    match installed_bpf_linker_version() {
        Some(version) if version == BPF_LINKER_VERSION => Ok(()),
        other => Err(step_failed(
            STEP,
            &manual,
            format!(
                "after installing, `bpf-linker --version` reports {}",
                other.unwrap_or_else(|| "nothing (not found or does not start)".into())
            ),
        )),
    }
}

/// The bpf-linker on `PATH` or in cargo's bin folder, with its version, if it starts.
fn installed_bpf_linker_version() -> Option<String> {
    let mut candidates = vec![PathBuf::from("bpf-linker")];
    if let Some(bin) = workspace::cargo_bin_dir() {
        candidates.push(bin.join("bpf-linker"));
    }
    candidates.into_iter().find_map(|program| {
        let out = command::run(Command::new(program).arg("--version")).ok()?;
        // "bpf-linker 0.13.0"
        out.split_whitespace().nth(1).map(str::to_string)
    })
}

fn nightly_llvm_major() -> Result<u32> {
    let out = command::run(Command::new("rustc").args(["+nightly", "-vV"]))?;
    parse_llvm_major(&out)
        .with_context(|| format!("`rustc +nightly -vV` names no LLVM version:\n{out}"))
}

fn parse_llvm_major(rustc_version: &str) -> Option<u32> {
    rustc_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

fn ensure_bpffs() -> Result<()> {
    const STEP: &str = "bpffs mount";
    let manual = format!("mount -t bpf bpf {BPFFS}");
    let mounts = fs::read_to_string("/proc/mounts")
        .map_err(|e| step_failed(STEP, &manual, format!("cannot read /proc/mounts: {e}")))?;
    if bpffs_mounted(&mounts) {
        return Ok(());
    }
    announce(&format!("the BPF filesystem at {BPFFS}"));
    command::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .map_err(|e| step_failed(STEP, &manual, format!("{e:#}")))?;
    Ok(())
}

fn bpffs_mounted(proc_mounts: &str) -> bool {
    proc_mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    })
}

/// Fails with a clear message unless this process runs as root.
pub fn require_root(why: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("must run as root: {why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_comes_from_rustc_verbose_version() {
        let out = "rustc 1.97.0-nightly (abc 2026-05-01)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(out), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.95.0\n"), None);
    }

    #[test]
    fn bpffs_must_be_a_bpf_mount_at_the_right_place() {
        let mounted = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert!(bpffs_mounted(mounted));
        assert!(!bpffs_mounted("sysfs /sys sysfs rw 0 0\n"));
        assert!(!bpffs_mounted("tmpfs /sys/fs/bpf tmpfs rw 0 0\n"));
        assert!(!bpffs_mounted("bpf /run/bpf bpf rw 0 0\n"));
    }

    #[test]
    fn bpf_linker_is_built_against_debian_llvm() {
        let line = describe(&bpf_linker_install_command());
        assert_eq!(
            line,
            "LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 cargo install \
             bpf-linker --version 0.13.0 --no-default-features --features llvm-22 --locked"
        );
    }

    #[test]
    fn a_failed_step_names_itself_and_the_manual_command() {
        let err = step_failed(
            "bpffs mount",
            "mount -t bpf bpf /sys/fs/bpf",
            "permission denied",
        );
        let text = err.to_string();
        assert!(text.contains("setup step `bpffs mount` failed: permission denied"));
        assert!(text.contains("run by hand: mount -t bpf bpf /sys/fs/bpf"));
    }
}
