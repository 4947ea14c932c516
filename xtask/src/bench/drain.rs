//! Planned moves: how many long-lived connections one join resets, with the drain
//! (`nodes.drain_ms: 3000`) and without it (`drain_ms: 0`, the behaviour before it), in
//! the same run. `halod run` with 16 routes; echo backends and a `halod node` agent on
//! node1; client1 holds 12 connections per route, each echoing every 100 ms (what a push
//! client's keep-alives look like); node2 joins and takes half of the routes; the
//! connections are watched for a second after the join.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};

use super::halod::{GatewaySettings, start_agent, start_gateway};
use super::objects::Objects;
use super::process::Process;
use crate::echo::EchoClients;
use crate::testbed::Testbed;

const ROUTES: u16 = 16;
const BASE_PORT: u16 = 8000;
pub const PER_ROUTE: usize = 12;
/// The drain window of the "with drain" run.
pub const DRAIN_MS: u64 = 3000;
const TICK: Duration = Duration::from_millis(100);

/// One join under traffic.
#[derive(Debug, Clone, Copy)]
pub struct Join {
    pub drain_ms: u64,
    /// Connections open before the join.
    pub connections: usize,
    /// Of them, on routes the join moved.
    pub on_moved_routes: usize,
    /// Reset within a second of the join.
    pub reset: usize,
}

#[derive(Debug, Clone)]
pub struct Drain {
    pub without: Join,
    pub with: Join,
}

pub fn run(bed: &Testbed, objects: &Objects) -> Result<Drain> {
    let without = join(bed, &objects.halod, 0).context("a join without drain")?;
    let with = join(bed, &objects.halod, DRAIN_MS).context("a join with drain")?;
    Ok(Drain { without, with })
}

fn join(bed: &Testbed, halod: &Path, drain_ms: u64) -> Result<Join> {
    let settings = GatewaySettings {
        routes: u32::from(ROUTES),
        base_port: BASE_PORT,
        heartbeat_ms: 100,
        dead_after: 3,
        spares: 0,
        max_nodes: 16,
        drain_ms: Some(drain_ms),
    };
    let _gateway = start_gateway(halod, bed, &settings)?;
    let ports: Vec<u16> = (0..ROUTES).map(|r| BASE_PORT + r).collect();
    let _backends = [backend(bed, 1, &ports)?, backend(bed, 2, &ports)?];
    let (_first, _) = start_agent(halod, bed, 1, "node1", None)?;
    let mut clients = EchoClients::new(bed, 1);
    clients.open(ports.iter().copied(), PER_ROUTE)?;
    clients.run_for(Duration::from_millis(300), TICK);
    let connections = clients.open_count();
    let (_second, _) = start_agent(halod, bed, 2, "node2", None)?;
    clients.run_for(Duration::from_millis(1000), TICK);
    // Which routes moved: a fresh connection per route says who serves it now.
    let mut now = EchoClients::new(bed, 1);
    now.open(ports.iter().copied(), 1)?;
    let moved: Vec<u16> = now
        .conns
        .iter()
        .filter(|c| c.node != "node1")
        .map(|c| c.port)
        .collect();
    Ok(Join {
        drain_ms,
        connections,
        on_moved_routes: clients
            .conns
            .iter()
            .filter(|c| moved.contains(&c.port))
            .count(),
        reset: clients.ended().filter(|c| c.reset()).count(),
    })
}

fn backend(bed: &Testbed, i: usize, ports: &[u16]) -> Result<Process> {
    let mut command = bed.backend_command(i, &format!("node{i}"), ports.iter().copied());
    command.stdout(Stdio::piped());
    let mut process = Process::start(&format!("backend node{i}"), &mut command)?;
    process.wait_for("ready", Duration::from_secs(10))?;
    Ok(process)
}
