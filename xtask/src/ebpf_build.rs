//! The one recipe for building the workspace's XDP programs (`halod-ebpf`, and the
//! benchmark's `bench-ebpf`) for `bpfel-unknown-none` with the nightly toolchain.
//!
//! Two places build them and must build them the same way: `halod/build.rs` (the
//! object embedded in `halod`, in the profile of the host build) and
//! `cargo xtask bench` (the benchmark's programs). So this file has no dependency
//! beyond std: `halod/build.rs` includes it with `#[path]`, and xtask uses it as a
//! module.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The BPF target (little-endian: the hosts halod runs on).
pub const TARGET: &str = "bpfel-unknown-none";

/// The cargo profile of an XDP build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Release,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Dev => "dev",
            Profile::Release => "release",
        }
    }

    /// The folder cargo puts the profile's output in.
    fn directory(self) -> &'static str {
        match self {
            Profile::Dev => "debug",
            Profile::Release => "release",
        }
    }
}

/// `rustup run nightly cargo build -p PACKAGE... --bins --target bpfel-unknown-none
/// -Z build-std=core`, run in `workspace`, output under `target_dir`. `arch` is the
/// architecture of the host the program runs on (`bpf_target_arch`, which aya-ebpf
/// reads for register layouts); `path` is the `PATH` that finds bpf-linker.
pub fn command(
    workspace: &Path,
    packages: &[&str],
    profile: Profile,
    target_dir: &Path,
    arch: &str,
    path: Option<OsString>,
) -> Command {
    // `rustup run nightly` picks the toolchain (build-std and the BPF target need
    // nightly) whatever toolchain runs the caller.
    let mut command = Command::new("rustup");
    command.args(["run", "nightly", "cargo", "build", "--bins"]);
    for package in packages {
        command.args(["--package", package]);
    }
    command
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .args(["--profile", profile.name()])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    // BTF for the loader, and the cfg aya-ebpf expects.
    let mut rustflags = OsString::new();
    for (i, flag) in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    command.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // A BPF program cannot panic or run unoptimised: the verifier rejects the
    // panic paths that debug assertions and overflow checks put into core and
    // the other crates, and unoptimised code. The workspace sets this for the
    // eBPF crates themselves; this extends it to every crate of the (BPF-only)
    // build. The dev object still differs from release (opt-level 2, several
    // codegen units), which is why both are tested.
    if profile == Profile::Dev {
        command
            .env("CARGO_PROFILE_DEV_DEBUG_ASSERTIONS", "false")
            .env("CARGO_PROFILE_DEV_OVERFLOW_CHECKS", "false")
            .env("CARGO_PROFILE_DEV_OPT_LEVEL", "2");
    }
    // The outer (stable) build's settings must not leak into the nightly one.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_TARGET_DIR",
    ] {
        command.env_remove(key);
    }
    command
}

/// Where [`command`] leaves the object of `binary`.
pub fn object(target_dir: &Path, profile: Profile, binary: &str) -> PathBuf {
    target_dir
        .join(TARGET)
        .join(profile.directory())
        .join(binary)
}
