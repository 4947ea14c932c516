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
    /// A machine dies under idle clients: with the dead-node flush, and without.
    pub flush: Death,
    pub no_flush: Death,
}

/// Idle clients of a node whose machine dies (its link goes down, then its
/// processes are killed).
#[derive(Debug, Clone)]
pub struct Death {
    pub flush_pps: u64,
    /// Idle connections on the dead node.
    pub idle: usize,
    /// When each of them was reset, after the link went down (within [`WATCH`]).
    pub reset_after: Vec<Duration>,
    /// Connections on the live node that ended (must be 0).
    pub others_ended: usize,
}

/// How long the idle clients are watched after a machine dies.
pub const WATCH: Duration = Duration::from_secs(3);

pub fn run(bed: &Testbed, objects: &Objects) -> Result<Drain> {
    let without = join(bed, &objects.halod, 0).context("a join without drain")?;
    let with = join(bed, &objects.halod, DRAIN_MS).context("a join with drain")?;
    // A dead machine's link stays down (and its routes gone): each run kills
    // another node.
    let flush = death(bed, &objects.halod, None, 2).context("a machine death, flush on")?;
    let no_flush = death(bed, &objects.halod, Some(0), 3).context("a machine death, flush off")?;
    Ok(Drain {
        without,
        with,
        flush,
        no_flush,
    })
}

/// node1 and node `victim` serve; client1 holds idle connections to every route;
/// the victim's link goes down and its agent and backend are killed.
fn death(bed: &Testbed, halod: &Path, flush_pps: Option<u64>, victim: usize) -> Result<Death> {
    let settings = GatewaySettings {
        routes: u32::from(ROUTES),
        base_port: BASE_PORT,
        heartbeat_ms: 100,
        dead_after: 3,
        spares: 0,
        max_nodes: 16,
        drain_ms: Some(0),
        flush_pps,
    };
    let _gateway = start_gateway(halod, bed, &settings)?;
    let ports: Vec<u16> = (0..ROUTES).map(|r| BASE_PORT + r).collect();
    let name = format!("node{victim}");
    let _backend1 = backend(bed, 1, &ports)?;
    let dying_backend = backend(bed, victim, &ports)?;
    let (_first, _) = start_agent(halod, bed, 1, "node1", None)?;
    let (dying_agent, _) = start_agent(halod, bed, victim, &name, None)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut clients = EchoClients::new(bed, 1);
    clients.open(ports.iter().copied(), PER_ROUTE)?;
    let idle = clients.conns.iter().filter(|c| c.node == name).count();
    crate::command::run(std::process::Command::new("ip").args([
        "-n",
        &bed.node_ns(victim),
        "link",
        "set",
        crate::testbed::HOST_IF,
        "down",
    ]))?;
    let died = std::time::Instant::now();
    dying_agent.kill();
    dying_backend.kill();
    let ended = clients.await_idle(died, WATCH);
    let reset_after = ended
        .iter()
        .filter(|(i, _, why)| clients.conns[*i].node == name && why.starts_with("ConnectionReset"))
        .map(|(_, after, _)| *after)
        .collect();
    let others_ended = ended
        .iter()
        .filter(|(i, _, _)| clients.conns[*i].node != name)
        .count();
    Ok(Death {
        flush_pps: flush_pps.unwrap_or(halod_default_flush_pps()),
        idle,
        reset_after,
        others_ended,
    })
}

/// `nodes.flush_pps` when the config leaves it out.
fn halod_default_flush_pps() -> u64 {
    10_000
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
        flush_pps: None,
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
