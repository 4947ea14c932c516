//! Running halod itself in the test bed: the gateway daemon (`halod run`) in the gateway
//! namespace and node agents (`halod node`) in node namespaces.

use std::fs;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::process::Process;
use crate::testbed::{Testbed, netns_command};

/// Where nodes register: the gateway's internal address.
pub const NODES_LISTEN: &str = "198.19.0.1:7000";
/// The pin directory name (`/sys/fs/bpf/halod/<instance>`): our own, never "default".
pub const INSTANCE: &str = "hd-bench";

/// Settings that differ between benchmarks.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub routes: u32,
    pub base_port: u16,
    pub heartbeat_ms: u64,
    pub dead_after: u32,
    pub spares: u32,
    pub max_nodes: u32,
    /// `nodes.drain_ms`; `None` leaves the key out (the default, 30 s).
    pub drain_ms: Option<u64>,
    /// `nodes.flush_pps`; `None` leaves the key out (the default: on).
    pub flush_pps: Option<u64>,
}

/// The config file text (keys as in deploy/halod.example.yaml). The control socket and
/// the state file are our own, so a benchmark neither meets another gateway's socket nor
/// restores an earlier run's nodes.
pub fn config_text(s: &GatewaySettings) -> String {
    let dir = std::env::temp_dir();
    format!(
        "instance: {INSTANCE}\n\
         control:\n  socket: {dir}/{INSTANCE}.sock\n\
         state_file: {dir}/{INSTANCE}.state.json\n\
         interfaces:\n  external: ext0\n  internal: int0\n\
         vip: 198.18.0.1\n\
         routes: {routes}\n\
         listeners:\n  - {{name: bench, base_port: {base}}}\n\
         nodes:\n  listen: {NODES_LISTEN}\n  heartbeat_ms: {hb}\n  dead_after: {dead}\n  \
         reconnect_grace_ms: 0\n  spares: {spares}\n  max_nodes: {max}\n{drain}",
        routes = s.routes,
        base = s.base_port,
        hb = s.heartbeat_ms,
        dead = s.dead_after,
        spares = s.spares,
        max = s.max_nodes,
        drain = s
            .drain_ms
            .map_or(String::new(), |ms| format!("  drain_ms: {ms}\n"))
            + &s.flush_pps
                .map_or(String::new(), |pps| format!("  flush_pps: {pps}\n")),
        dir = dir.display(),
    )
}

/// A running `halod run`. When the guard goes the daemon is stopped and then
/// `halod teardown` removes what a stopped gateway deliberately leaves for a hitless restart
/// (its attached program, pinned maps and links, the state file), so no run leaks pins.
pub struct Gateway {
    process: Option<Process>,
    halod: PathBuf,
    config: PathBuf,
}

impl Gateway {
    pub fn new(process: Process, halod: &Path, config: &Path) -> Gateway {
        Gateway {
            process: Some(process),
            halod: halod.to_path_buf(),
            config: config.to_path_buf(),
        }
    }

    /// A new daemon in place of the one this guard held (which must have exited, or is
    /// stopped now), for a restart.
    pub fn replace(&mut self, process: Process) {
        drop(self.process.replace(process));
    }
}

impl Deref for Gateway {
    type Target = Process;
    fn deref(&self) -> &Process {
        self.process.as_ref().expect("present until drop")
    }
}

impl DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut Process {
        self.process.as_mut().expect("present until drop")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        drop(self.process.take());
        let _ = Command::new(&self.halod)
            .args(["teardown", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Starts `halod run` in the gateway namespace and waits until it serves.
pub fn start_gateway(halod: &Path, bed: &Testbed, settings: &GatewaySettings) -> Result<Gateway> {
    let path = config_path(bed);
    remove_state();
    fs::write(&path, config_text(settings))
        .with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = netns_command(&bed.gateway_ns(), &halod.display().to_string());
    cmd.arg("run")
        .arg("--config")
        .arg(&path)
        .env("HALOD_LOG", "info");
    let mut gateway = Gateway::new(Process::start("halod run", &mut cmd)?, halod, &path);
    gateway.wait_for("gateway running", Duration::from_secs(20))?;
    Ok(gateway)
}

/// Starts `halod node` for node `i` of the test bed under `name`; waits until it is
/// registered and returns it with its role ("active" or "spare").
pub fn start_agent(
    halod: &Path,
    bed: &Testbed,
    i: usize,
    name: &str,
    addr: Option<&str>,
) -> Result<(Process, String)> {
    let mut cmd = netns_command(&bed.node_ns(i), &halod.display().to_string());
    cmd.args(["node", "--gateway", NODES_LISTEN, "--name", name]);
    if let Some(addr) = addr {
        cmd.args(["--addr", addr]);
    }
    let mut agent = Process::start(&format!("halod node {name}"), &mut cmd)?;
    // `... INFO halod::node: registered as active node=NAME gateway=... routes=N`
    let line = agent.wait_for("registered as ", Duration::from_secs(10))?;
    let role = line
        .split("registered as ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|role| role.trim_end_matches(|c: char| !c.is_ascii_alphabetic()))
        .unwrap_or("?")
        .to_string();
    Ok((agent, role))
}

fn config_path(bed: &Testbed) -> PathBuf {
    std::env::temp_dir().join(format!("{}halod.yaml", bed.prefix()))
}

/// Removes the state file an earlier gateway of ours left, so each start is fresh.
pub fn remove_state() {
    let _ = fs::remove_file(std::env::temp_dir().join(format!("{INSTANCE}.state.json")));
}

/// Removes our instance's pins (`/sys/fs/bpf/halod/hd-bench`), which detaches a program
/// whose links a killed gateway left pinned.
pub fn clear_pins() -> Result<()> {
    let dir = Path::new("/sys/fs/bpf/halod").join(INSTANCE);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {
            println!("bench:   removed leftover pins under {}", dir.display());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}
