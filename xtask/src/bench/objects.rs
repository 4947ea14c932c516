//! What the benchmarks run: the release `halod` binary, halod's XDP object (built with
//! the recipe `halod/build.rs` uses, `crate::ebpf_build`) and the benchmark's own XDP
//! programs (`bench-ebpf`).

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::ebpf_build::{self, Profile};
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
    println!("bench: building halod (release) and the XDP programs");
    command::run_visible(workspace::cargo().args(["build", "--release", "-p", "halod"]))?;
    // `HALOD_BENCH_HALOD`: another build of halod (an older commit's, for a before/after
    // of the control plane); the XDP objects are still this tree's.
    let halod = match std::env::var_os("HALOD_BENCH_HALOD") {
        Some(path) => PathBuf::from(path),
        None => workspace::halod_binary("release"),
    };
    // Both programs with the recipe `halod/build.rs` uses for the object it embeds
    // in that binary (same sources, flags and profile), in one nightly build.
    let target_dir = workspace::target_dir().join("bench-ebpf");
    let mut build = ebpf_build::command(
        &workspace::root(),
        &["halod-ebpf", "bench-ebpf"],
        Profile::Release,
        &target_dir,
        std::env::consts::ARCH,
        Some(workspace::path_with_cargo_bin()),
    );
    command::run_visible(&mut build)?;
    let objects = Objects {
        halod,
        halod_xdp: ebpf_build::object(&target_dir, Profile::Release, "halod-xdp"),
        bench_xdp: ebpf_build::object(&target_dir, Profile::Release, "bench-ebpf"),
    };
    for object in [&objects.halod_xdp, &objects.bench_xdp] {
        if !object.is_file() {
            bail!("the XDP build did not leave {}", object.display());
        }
    }
    Ok(objects)
}
