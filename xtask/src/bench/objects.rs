//! What the benchmarks run: the release `halod` binary, halod's XDP object (as built by
//! `halod/build.rs`) and the benchmark's own XDP programs (`bench-ebpf`).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use crate::{command, workspace};

/// Paths of everything the benchmarks load or start.
#[derive(Debug, Clone)]
pub struct Objects {
    /// The `halod` binary (release profile).
    pub halod: PathBuf,
    /// halod's XDP object, the one embedded in that binary.
    pub halod_xdp: PathBuf,
    /// `bench-ebpf`: `bench_tx`, `bench_sink`, `bench_floor`.
    pub bench_xdp: PathBuf,
}

pub fn build() -> Result<Objects> {
    println!("bench: building halod (release) and the benchmark's XDP programs");
    command::run_visible(workspace::cargo().args(["build", "--release", "-p", "halod"]))?;
    let halod = workspace::halod_binary("release");
    let halod_xdp = newest_halod_object(&workspace::target_dir().join("release").join("build"))?;
    let bench_xdp = build_bench_ebpf()?;
    Ok(Objects {
        halod,
        halod_xdp,
        bench_xdp,
    })
}

/// `halod/build.rs` leaves the object at `release/build/halod-<hash>/out/halod-ebpf.o`;
/// after rebuilds there may be several, and the newest is the one in the binary.
fn newest_halod_object(build_dir: &Path) -> Result<PathBuf> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let entries =
        fs::read_dir(build_dir).with_context(|| format!("listing {}", build_dir.display()))?;
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("halod-") {
            continue;
        }
        let object = entry.path().join("out").join("halod-ebpf.o");
        let Ok(meta) = fs::metadata(&object) else {
            continue;
        };
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if meta.len() > 0 && newest.as_ref().is_none_or(|(t, _)| modified > *t) {
            newest = Some((modified, object));
        }
    }
    match newest {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no halod XDP object (halod-*/out/halod-ebpf.o, non-empty) under {}: was halod \
             built with HALOD_SKIP_EBPF set?",
            build_dir.display()
        ),
    }
}

/// `cargo +nightly build -p bench-ebpf --release --target bpfel-unknown-none -Z
/// build-std=core`, with the same flags as halod's own XDP build (BTF, bpf_target_arch).
fn build_bench_ebpf() -> Result<PathBuf> {
    let target_dir = workspace::target_dir().join("bench-ebpf");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace::root())
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "-p",
            "bench-ebpf",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", workspace::path_with_cargo_bin());
    let mut flags = OsString::new();
    for (i, flag) in [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            flags.push("\x1f");
        }
        flags.push(flag);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags);
    // The stable build's settings must not leak into the nightly one.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(key);
    }
    command::run_visible(&mut cmd)?;
    Ok(target_dir
        .join("bpfel-unknown-none")
        .join("release")
        .join("bench-ebpf"))
}
