//! Builds the XDP program (`halod-ebpf`) for `bpfel-unknown-none` with the nightly
//! toolchain and puts the object at `$OUT_DIR/halod-ebpf.o`, where
//! `src/dataplane/object.rs` embeds it.
//!
//! The object is built with the cargo profile of this build (`dev` for debug
//! builds, `release` for release builds), so `cargo test` and
//! `cargo test --release` each load and verify the object of their own profile.
//! The build command itself is the workspace's one recipe,
//! `xtask/src/ebpf_build.rs`, which `cargo xtask bench` uses too.
//!
//! `HALOD_SKIP_EBPF=1` writes an empty object instead (for `cargo check`/clippy
//! on machines without bpf-linker); loading it fails with a message saying so.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow, bail};

#[path = "../xtask/src/ebpf_build.rs"]
mod ebpf_build;

use ebpf_build::Profile;

const SKIP: &str = "HALOD_SKIP_EBPF";
const PACKAGE: &str = "halod-ebpf";
const BINARY: &str = "halod-xdp";

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
    for input in [
        "halod-ebpf",
        "halod-common",
        "Cargo.toml",
        "Cargo.lock",
        "xtask/src/ebpf_build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }

    let profile = match env::var("PROFILE").as_deref() {
        Ok("release") => Profile::Release,
        _ => Profile::Dev,
    };
    let target_dir = out_dir.join("ebpf-target");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let mut command = ebpf_build::command(workspace, &[PACKAGE], profile, &target_dir, &arch, None);
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

    let built = ebpf_build::object(&target_dir, profile, BINARY);
    fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(())
}
