//! Where this workspace and its build output live, and how to call cargo on it.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the folder holding the top `Cargo.toml`).
pub fn root() -> PathBuf {
    // xtask lives one level below the root; this is fixed at compile time, like aya's xtask.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest folder has a parent")
        .to_path_buf()
}

/// Cargo's target folder: `CARGO_TARGET_DIR` when set, `<root>/target` otherwise.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        }
        _ => root().join("target"),
    }
}

/// The `halod` binary built with `profile` ("debug" or "release").
pub fn halod_binary(profile: &str) -> PathBuf {
    target_dir().join(profile).join("halod")
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, by default `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".cargo").join("bin"))
}

/// `PATH` with cargo's bin folder added at the end when it is missing, so that programs
/// installed by `cargo xtask setup` (bpf-linker) are found even from a shell that lacks it.
pub fn path_with_cargo_bin() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if let Some(bin) = cargo_bin_dir()
        && !dirs.contains(&bin)
    {
        dirs.push(bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// A `cargo` command run in the workspace root.
///
/// The real eBPF object must be built for tests, demo and benchmarks, so the variable that
/// makes halod's build script write an empty stub is removed here.
pub fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root())
        .env_remove("HALOD_SKIP_EBPF")
        .env("PATH", path_with_cargo_bin());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn cargo_never_passes_the_stub_switch_on() {
        let cmd = cargo();
        let removed = cmd
            .get_envs()
            .any(|(key, value)| key == "HALOD_SKIP_EBPF" && value.is_none());
        assert!(
            removed,
            "HALOD_SKIP_EBPF must be removed from cargo's environment"
        );
    }
}
