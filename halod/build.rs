//! Builds the XDP program (`halod-ebpf`) for `bpfel-unknown-none` with the nightly
//! toolchain and puts the object at `$OUT_DIR/halod-ebpf.o`, where
//! `src/dataplane/object.rs` embeds it.
//!
//! The object is built with the cargo profile of this build (`dev` for debug
//! builds, `release` for release builds), so `cargo test` and
//! `cargo test --release` each load and verify the object of their own profile.
//! `aya_build::build_ebpf` always builds `--release`, which would leave the dev
//! profile of the program untested; this is the same invocation otherwise.
//!
//! `HALOD_SKIP_EBPF=1` writes an empty object instead (for `cargo check`/clippy
//! on machines without bpf-linker); loading it fails with a message saying so.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const SKIP: &str = "HALOD_SKIP_EBPF";
const TARGET: &str = "bpfel-unknown-none";
const PACKAGE: &str = "halod-ebpf";
const BINARY: &str = "halod";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("halod-ebpf.o");

    if env::var_os(SKIP).is_some_and(|value| !value.is_empty()) {
        println!(
            "cargo:warning={SKIP} is set: the XDP program is not built and this halod cannot start a data plane"
        );
        fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir
        .parent()
        .context("halod has no parent directory")?;
    for input in ["halod-ebpf", "halod-common", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }

    let (profile, profile_dir) = match env::var("PROFILE").as_deref() {
        Ok("release") => ("release", "release"),
        _ => ("dev", "debug"),
    };
    let target_dir = out_dir.join("ebpf-target");
    build(workspace, profile, &target_dir)?;

    let built = target_dir.join(TARGET).join(profile_dir).join(BINARY);
    fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(())
}

fn build(workspace: &Path, profile: &str, target_dir: &Path) -> anyhow::Result<()> {
    // `rustup run nightly` picks the toolchain (build-std and the BPF target need
    // nightly) whatever toolchain runs this build script.
    let mut command = Command::new("rustup");
    command
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--package",
            PACKAGE,
            "--bins",
        ])
        .args([
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace);
    // Same flags as aya-build: BTF for the loader, and the cfg aya-ebpf expects.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
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
    // the other crates, and unoptimised code. The workspace already sets this
    // for halod-ebpf itself; extend it to every crate of this (BPF-only) build.
    // The dev object still differs from release (opt-level 2, no LTO-like
    // single codegen unit), which is why both are tested.
    if profile == "dev" {
        command
            .env("CARGO_PROFILE_DEV_DEBUG_ASSERTIONS", "false")
            .env("CARGO_PROFILE_DEV_OVERFLOW_CHECKS", "false")
            .env("CARGO_PROFILE_DEV_OPT_LEVEL", "2");
    }
    // The outer build's compiler settings must not leak into the nightly build.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
    ] {
        command.env_remove(key);
    }

    let status = command
        .status()
        .map_err(|error| anyhow!("running {command:?}: {error}; is rustup installed?"))?;
    if !status.success() {
        bail!(
            "building the XDP program failed ({status}): {command:?}\n\
             It needs the nightly toolchain with rust-src and bpf-linker \
             (see shared/spec/toolchain.md), or set {SKIP}=1 to skip it for check/clippy."
        );
    }
    Ok(())
}
