//! Heartbeats at scale, protocol version 1 (TCP `hb` lines) against version 2 (UDP
//! datagrams stamped by the XDP program), in one run on one test bed:
//!
//! - v1: 10,000 nodes x 10 heartbeats a second over TCP (`heartbeat_ms: 100`);
//! - v2: 10,000 nodes x 10 a second, and [`MOST_NODES`] x 10 a second, as UDP datagrams.
//!
//! Not 100,000 nodes x 1/s nor 50,000 x 10/s: every node, version 2 too, holds a TCP
//! connection to the daemon, and on this VM a process may not have more than 20,000 open
//! files (the hard limit, which it cannot raise without CAP_SYS_RESOURCE), so the daemon
//! holds at most about 19,980 nodes. The kernel's part is one array lookup by id per
//! heartbeat, whatever the node count; the daemon's part grows with the nodes (its
//! sweeps read every node's stamp every `heartbeat_ms / 2`).
//!
//! One `halod run` per row, pinned to CPU 1, with its own instance and test bed
//! (prefix `hd-hb-bench-`). Every simulated node registers over TCP with its own name
//! and `hello.addr` (198.18.1.0 and up, then 198.19.1.0 and up; the gateway only
//! forwards to them, it never connects), from the gateway's namespace over loopback,
//! its connections bound to 16 extra source addresses on `lo` (198.19.255.1..=16) so
//! that no single source address runs out of ephemeral ports. A version-1 node then writes `{"type":"hb"}`
//! every interval on its connection (tokio tasks on both CPUs at nice 10, as in the
//! scale section). A version-2 node keeps its connection open and silent, and one
//! thread in the node namespace, pinned to CPU 0, sends every node's datagram from the
//! node's own address (a raw socket, `IP_HDRINCL`, `sendmmsg` batches paced every
//! millisecond) through the test bed's veths and bridge to `int0`, where the XDP program
//! checks and stamps it and drops it.
//!
//! Measured over a steady window: the offered heartbeats a second (what the generator
//! sent), the daemon's CPU time (utime + stime from /proc/PID/stat) as a percentage of
//! one core, the XDP program's own run time over the same window (run_time_ns and
//! run_cnt of the program attached to `int0`, counted while `BPF_ENABLE_STATS` is held,
//! the syscall behind `kernel.bpf_stats_enabled`, which ends with the benchmark), and
//! their sum. The kernel's cost of carrying each datagram to the XDP program (raw socket,
//! veth, bridge) falls on the generator's CPU, as a NIC's would on its interrupt's, and
//! is not counted; neither is the kernel's TCP receive of a version-1 heartbeat, which
//! runs inline in the generator's `send` over loopback. Then failure detection: one node
//! stops heartbeating (version 2: its datagrams stop; its TCP connection stays open),
//! timed from its last heartbeat to the gateway closing its connection, three times.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

use super::halod::NODES_LISTEN;
use super::objects::Objects;
use super::process::Process;
use super::traffic::{pin_thread, process_cpu_ns};
use super::victims::Victims;
use crate::testbed::{Testbed, TestbedOptions, netns_command, run_in_netns, spawn_in_netns};

/// The test bed and instance of this section: never another run's.
pub const PREFIX: &str = "hd-hb-bench-";
const INSTANCE: &str = "hd-hb-bench";
const DAEMON_CPU: usize = 1;
const GENERATOR_CPU: usize = 0;
const GENERATOR_NICE: libc::c_int = 10;
/// Generous (as in the scale section): the generator shares the two cores with the
/// daemon, and its own delays must not fail nodes. Detection is reported against it.
pub const DEAD_AFTER: u32 = 30;
/// Version 1 at 10,000 nodes keeps the daemon's core busy, and a node's heartbeats can
/// wait seconds in the niced generator: a longer window still.
pub const DEAD_AFTER_V1: u32 = 100;

impl Load {
    /// The `dead_after` of the row's gateway.
    pub fn dead_after(&self) -> u32 {
        if self.version == 1 {
            DEAD_AFTER_V1
        } else {
            DEAD_AFTER
        }
    }
}
/// Source addresses of the registrations (on `lo` in the gateway namespace).
const SOURCES: u8 = 16;
/// As in the scale section: a faster mass join leaves nodes' `moved` messages unread
/// on the busy generator, and the gateway fails a node with 64 of them queued.
const JOIN_CONCURRENCY: usize = 16;
/// Few active nodes: the others join as spares, which moves no route, so a join of
/// thousands is quick and tells no other node anything.
const MAX_ACTIVE: u32 = 100;
const VICTIMS: usize = 3;
/// Not route ports: no heartbeat's source port is taken for a node's answer.
const ROUTES: u32 = 1000;
const BASE_PORT: u16 = 20000;

/// One row: a protocol version at a node count and heartbeat interval.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub version: u32,
    pub nodes: usize,
    pub heartbeat_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub load: Load,
    pub join_seconds: f64,
    pub offered_per_second: f64,
    /// Daemon utime + stime over the window, % of one core.
    pub daemon_percent: f64,
    /// The XDP program's run time over the window, % of one core, and its runs a second.
    pub xdp_percent: f64,
    pub xdp_runs_per_second: f64,
    pub detection_ms: Vec<f64>,
}

impl Row {
    pub fn total_percent(&self) -> f64 {
        self.daemon_percent + self.xdp_percent
    }
}

#[derive(Debug, Clone)]
pub struct Heartbeats {
    pub window_seconds: u64,
    pub rows: Vec<Result<Row, String>>,
}

/// The most nodes a row registers: the daemon's 20,000 open files, less its own.
pub const MOST_NODES: usize = 19_000;

/// The rows of a run: v1 and v2 at 10,000 x 10/s, v2 at [`MOST_NODES`] x 10/s.
pub fn loads() -> Vec<Load> {
    vec![
        Load {
            version: 1,
            nodes: 10_000,
            heartbeat_ms: 100,
        },
        Load {
            version: 2,
            nodes: 10_000,
            heartbeat_ms: 100,
        },
        Load {
            version: 2,
            nodes: MOST_NODES,
            heartbeat_ms: 100,
        },
    ]
}

pub fn run(objects: &Objects, loads: &[Load], window: u64) -> Result<Heartbeats> {
    let mut rows = Vec::new();
    for load in loads {
        println!(
            "bench: heartbeats, version {} with {} nodes every {} ms",
            load.version, load.nodes, load.heartbeat_ms
        );
        let bed = Testbed::up(TestbedOptions {
            prefix: PREFIX.to_string(),
            nodes: 1,
            clients: 1,
        })?;
        let row = measure(&bed, objects, *load, window).map_err(|e| format!("{e:#}"));
        drop(bed);
        match &row {
            Ok(r) => println!(
                "bench:   {:.0} hb/s offered, daemon {:.1}% + XDP {:.1}% = {:.1}% of one core, \
                 detection {:?} ms",
                r.offered_per_second,
                r.daemon_percent,
                r.xdp_percent,
                r.total_percent(),
                r.detection_ms
            ),
            Err(e) => println!("bench:   failed: {e}"),
        }
        rows.push(row);
    }
    Ok(Heartbeats {
        window_seconds: window,
        rows,
    })
}

/// The hello address of simulated node `i`: 198.18.1.0 and up, then 198.19.1.0 and up
/// (never a test-bed address, never the gateway's own).
pub fn sim_addr(i: usize) -> Ipv4Addr {
    const PER_BLOCK: u32 = 254 * 256;
    let i = i as u32;
    let (base, n) = if i < PER_BLOCK {
        (u32::from(Ipv4Addr::new(198, 18, 1, 0)), i)
    } else {
        (u32::from(Ipv4Addr::new(198, 19, 1, 0)), i - PER_BLOCK)
    };
    Ipv4Addr::from(base + n)
}

fn source_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 255, 1 + (i % SOURCES as usize) as u8)
}

fn config_text(load: Load) -> String {
    let dir = std::env::temp_dir();
    format!(
        "instance: {INSTANCE}\n\
         control:\n  socket: {dir}/{INSTANCE}.sock\n\
         state_file: {dir}/{INSTANCE}.state.json\n\
         interfaces:\n  external: ext0\n  internal: int0\n\
         vip: 198.18.0.1\n\
         routes: {ROUTES}\n\
         listeners:\n  - {{name: bench, base_port: {BASE_PORT}}}\n\
         nodes:\n  listen: {NODES_LISTEN}\n  heartbeat_ms: {hb}\n  dead_after: {dead}\n  \
         reconnect_grace_ms: 0\n  spares: 0\n  max_active: {MAX_ACTIVE}\n  max_nodes: {max}\n  \
         drain_ms: 0\n  flush_pps: 0\n",
        hb = load.heartbeat_ms,
        dead = load.dead_after(),
        max = load.nodes + 16,
        dir = dir.display(),
    )
}

/// Shared by the generator's tasks and the measuring thread.
struct Shared {
    base: Instant,
    stop: AtomicBool,
    joined: AtomicU64,
    failed: AtomicU64,
    /// Heartbeats sent (both versions).
    sent: AtomicU64,
    victims: Victims,
}

impl Shared {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

fn measure(bed: &Testbed, objects: &Objects, load: Load, window: u64) -> Result<Row> {
    for i in 0..SOURCES {
        crate::command::run(netns_command(&bed.gateway_ns(), "ip").args([
            "addr",
            "add",
            &format!("{}/32", source_addr(i as usize)),
            "dev",
            "lo",
        ]))?;
    }
    let path = std::env::temp_dir().join(format!("{INSTANCE}.yaml"));
    let _ = std::fs::remove_file(std::env::temp_dir().join(format!("{INSTANCE}.state.json")));
    std::fs::write(&path, config_text(load))?;
    let mut cmd = netns_command(&bed.gateway_ns(), "taskset");
    cmd.args(["-c", &DAEMON_CPU.to_string()])
        .arg(&objects.halod)
        .args(["run", "--config"])
        .arg(&path)
        .env("HALOD_LOG", "warn");
    let mut daemon = super::halod::Gateway::new(
        Process::start("halod run", &mut cmd)?,
        &objects.halod,
        &path,
    );
    wait_for_port(bed)?;
    let pid = daemon.pid();
    // The daemon binds its sockets before it attaches the program.
    let deadline = Instant::now() + Duration::from_secs(20);
    let program = loop {
        match attached_program(bed) {
            Ok(program) => break program,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    };

    let shared = Arc::new(Shared {
        base: Instant::now(),
        stop: AtomicBool::new(false),
        joined: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        victims: Victims::default(),
    });
    // Each node's id and key, from its welcome (0: not registered yet): the UDP
    // generator sends for every registered node from the start, so that the first to
    // join do not go silent while the others join.
    let keys: Arc<Vec<(AtomicU64, AtomicU64)>> = Arc::new(
        (0..load.nodes)
            .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
            .collect(),
    );
    let mut sender = None;
    if load.version == 2 {
        let (shared, keys) = (shared.clone(), keys.clone());
        let interval = Duration::from_millis(load.heartbeat_ms);
        sender = Some(spawn_in_netns(&bed.node_ns(1), move || {
            udp_heartbeats(&keys, interval, &shared)
        })?);
    }
    let registrations = {
        let (shared, keys) = (shared.clone(), keys.clone());
        spawn_in_netns(&bed.gateway_ns(), move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .on_thread_start(|| {
                    // SAFETY: plain syscall on the calling thread.
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, GENERATOR_NICE) };
                })
                .enable_all()
                .build()?;
            runtime.block_on(nodes(load, shared, keys))
        })?
    };
    let result = (|| -> Result<Row> {
        let start = Instant::now();
        while (shared.joined.load(Ordering::SeqCst) as usize) < load.nodes {
            if shared.failed.load(Ordering::SeqCst) > 0 {
                let said = daemon.drain();
                bail!(
                    "{} simulated nodes could not register or were failed (joined {}); the \
                     daemon's last lines: {:?}",
                    shared.failed.load(Ordering::SeqCst),
                    shared.joined.load(Ordering::SeqCst),
                    &said[said.len().saturating_sub(3)..]
                );
            }
            if start.elapsed() > Duration::from_secs(600) {
                bail!(
                    "only {} of {} nodes joined in 600 s",
                    shared.joined.load(Ordering::SeqCst),
                    load.nodes
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        let join_seconds = start.elapsed().as_secs_f64();
        println!(
            "bench:   {} nodes joined in {join_seconds:.1} s",
            load.nodes
        );
        // Settle, then a steady window.
        thread::sleep(Duration::from_secs(2));
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
        let (xdp_before, cpu_before) = (program_stats(program)?, process_cpu_ns(pid)?);
        let sent_before = shared.sent.load(Ordering::SeqCst);
        let t = Instant::now();
        thread::sleep(Duration::from_secs(window));
        let sent = shared.sent.load(Ordering::SeqCst) - sent_before;
        let cpu = process_cpu_ns(pid)? - cpu_before;
        let xdp = program_stats(program)?;
        let elapsed = t.elapsed().as_secs_f64();
        drop(stats);
        let offered = sent as f64 / elapsed;
        let xdp_ns = xdp.0.saturating_sub(xdp_before.0);
        let xdp_runs = xdp.1.saturating_sub(xdp_before.1);

        let dead = Duration::from_millis(load.heartbeat_ms * u64::from(load.dead_after()));
        let detection_ms = shared.victims.measure(
            load.nodes,
            VICTIMS,
            Duration::from_millis(load.heartbeat_ms * 3 + 2000),
            dead + Duration::from_secs(10),
        )?;
        Ok(Row {
            load,
            join_seconds,
            offered_per_second: offered,
            daemon_percent: 100.0 * cpu as f64 / 1e9 / elapsed,
            xdp_percent: 100.0 * xdp_ns as f64 / 1e9 / elapsed,
            xdp_runs_per_second: xdp_runs as f64 / elapsed,
            detection_ms,
        })
    })();
    shared.stop.store(true, Ordering::SeqCst);
    let sent = sender.map(|sender| sender.join());
    let registered = registrations.join();
    drop(daemon);
    let row = result?;
    if let Some(sent) = sent {
        match sent {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) | Ok(Err(e)) => return Err(e.context("the UDP heartbeat generator")),
            Err(_) => bail!("the UDP heartbeat generator panicked"),
        }
    }
    match registered {
        Ok(Ok(Ok(()))) => Ok(row),
        Ok(Ok(Err(e))) | Ok(Err(e)) => Err(e.context("the simulated nodes")),
        Err(_) => bail!("the simulated nodes panicked"),
    }
}

fn wait_for_port(bed: &Testbed) -> Result<()> {
    let addr: std::net::SocketAddr = NODES_LISTEN.parse()?;
    for _ in 0..200 {
        let ok = run_in_netns(&bed.node_ns(1), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        })?;
        if ok {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("halod run does not listen on {NODES_LISTEN} after 10 s")
}

/// The id of the XDP program attached to the gateway's `int0`.
fn attached_program(bed: &Testbed) -> Result<u32> {
    let output = crate::command::run(
        netns_command(&bed.gateway_ns(), "ip").args(["-j", "-d", "link", "show", "dev", "int0"]),
    )?;
    let links: serde_json::Value = serde_json::from_str(&output)?;
    links[0]["xdp"]["prog"]["id"]
        .as_u64()
        .map(|id| id as u32)
        .with_context(|| format!("no XDP program on int0: {output}"))
}

/// The program's accumulated run time (ns) and run count.
fn program_stats(id: u32) -> Result<(u64, u64)> {
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if info.id() == id {
            return Ok((info.run_time().as_nanos() as u64, info.run_count()));
        }
    }
    bail!("program {id} is not loaded any more")
}

/// Registers every node over TCP (version `load.version`), then, for version 1, sends
/// its heartbeats; every node notes when the gateway closes its connection.
async fn nodes(
    load: Load,
    shared: Arc<Shared>,
    keys: Arc<Vec<(AtomicU64, AtomicU64)>>,
) -> Result<()> {
    let joining = Arc::new(Semaphore::new(JOIN_CONCURRENCY));
    let mut tasks = Vec::with_capacity(load.nodes);
    for i in 0..load.nodes {
        let (shared, joining, keys) = (shared.clone(), joining.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = node(i, load, &shared, &joining, &keys).await {
                shared.failed.fetch_add(1, Ordering::SeqCst);
                eprintln!("bench: simulated node h{i}: {e:#}");
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

async fn node(
    i: usize,
    load: Load,
    shared: &Shared,
    joining: &Semaphore,
    keys: &[(AtomicU64, AtomicU64)],
) -> Result<()> {
    let permit = joining.acquire().await?;
    let socket = TcpSocket::new_v4()?;
    socket.bind((source_addr(i), 0).into())?;
    let stream = socket
        .connect(NODES_LISTEN.parse()?)
        .await
        .with_context(|| format!("connecting to {NODES_LISTEN} from {}", source_addr(i)))?;
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let hello = format!(
        "{{\"type\":\"hello\",\"version\":{},\"name\":\"h{i}\",\"addr\":\"{}\"}}\n",
        load.version,
        sim_addr(i)
    );
    writer.write_all(hello.as_bytes()).await?;
    let welcome = lines
        .next_line()
        .await?
        .context("the gateway closed the connection before welcome")?;
    let welcome: serde_json::Value = serde_json::from_str(&welcome)
        .with_context(|| format!("welcome is not JSON: {welcome}"))?;
    if welcome["type"] != "welcome" {
        bail!("expected welcome, got {welcome}");
    }
    if load.version == 2 {
        let hb = &welcome["hb_udp"];
        let id = hb["id"].as_u64().context("welcome without hb_udp.id")? as u32;
        let key = hb["key"]
            .as_str()
            .and_then(|key| u64::from_str_radix(key, 16).ok())
            .context("welcome without a valid hb_udp.key")?;
        if key == 0 {
            bail!("welcome with key 0");
        }
        keys[i].0.store(u64::from(id), Ordering::Relaxed);
        keys[i].1.store(key, Ordering::Release);
    }
    drop(permit);
    shared.joined.fetch_add(1, Ordering::SeqCst);
    let interval = Duration::from_millis(load.heartbeat_ms);
    let offset = interval.mul_f64(i as f64 / load.nodes as f64);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent = false;
    let mut last_sent = 0;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        tokio::select! {
            // Version 2's heartbeats come from the UDP generator.
            _ = ticks.tick(), if load.version == 1 => {
                if silent {
                    continue;
                }
                if shared.victims.is(i) {
                    silent = true;
                    shared.victims.stopped(last_sent);
                    continue;
                }
                writer.write_all(b"{\"type\":\"hb\"}\n").await?;
                last_sent = shared.now();
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            line = lines.next_line() => match line? {
                Some(_) => {}
                None => {
                    let is_victim = shared.victims.is(i);
                    if is_victim {
                        shared.victims.failed(shared.now());
                    } else if !shared.stop.load(Ordering::Relaxed) {
                        bail!("the gateway closed the connection of a live node");
                    }
                    while !shared.stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// A heartbeat datagram from `source` to the gateway (IPv4 + UDP header + payload);
/// the kernel fills in the IPv4 checksum, and UDP over IPv4 may go without one.
fn datagram(source: Ipv4Addr, id: u32, key: u64) -> [u8; 44] {
    let gateway: std::net::SocketAddr = NODES_LISTEN.parse().expect("a socket address");
    let std::net::IpAddr::V4(destination) = gateway.ip() else {
        unreachable!("NODES_LISTEN is IPv4")
    };
    let mut packet = [0u8; 44];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&44u16.to_be_bytes());
    packet[8] = 64;
    packet[9] = 17;
    packet[12..16].copy_from_slice(&source.octets());
    packet[16..20].copy_from_slice(&destination.octets());
    packet[20..22].copy_from_slice(&45000u16.to_be_bytes());
    packet[22..24].copy_from_slice(&gateway.port().to_be_bytes());
    packet[24..26].copy_from_slice(&24u16.to_be_bytes());
    packet[28..44].copy_from_slice(&halod_common::heartbeat::encode(
        halod_common::heartbeat::Heartbeat { id, key },
    ));
    packet
}

/// Sends every node's heartbeat once per `interval`, spread evenly, from a raw socket
/// pinned to the generator CPU, until `shared.stop`; the victim's stop when asked.
fn udp_heartbeats(
    keys: &[(AtomicU64, AtomicU64)],
    interval: Duration,
    shared: &Shared,
) -> Result<()> {
    pin_thread(GENERATOR_CPU)?;
    // Built when the node's key is known.
    let mut packets: Vec<Option<[u8; 44]>> = vec![None; keys.len()];
    let mut last_sent = [0u64; VICTIMS];
    // SAFETY: plain socket syscalls with valid arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    let gateway: std::net::SocketAddr = NODES_LISTEN.parse()?;
    let std::net::IpAddr::V4(destination) = gateway.ip() else {
        bail!("NODES_LISTEN is not IPv4")
    };
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(destination.octets()),
        },
        sin_zero: [0; 8],
    };
    const BATCH: usize = 256;
    let result = (|| -> Result<()> {
        let start = Instant::now();
        let per_ns = packets.len() as f64 / interval.as_nanos() as f64;
        let mut next: u64 = 0;
        let mut silenced: Option<usize> = None;
        let mut victim_seen = u64::MAX;
        // Behind by more than this (the thread did not run), the missed heartbeats are
        // skipped, not sent in a burst: the offered rate never exceeds the nominal one.
        let most_behind = (per_ns * 10e6) as u64 + BATCH as u64;
        while !shared.stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_nanos() as f64 * per_ns) as u64;
            next = next.max(due.saturating_sub(most_behind));
            while next < due {
                let count = ((due - next) as usize).min(BATCH);
                let mut iovecs = Vec::with_capacity(count);
                let mut headers = Vec::with_capacity(count);
                for k in 0..count {
                    let i = ((next + k as u64) % packets.len() as u64) as usize;
                    let victim = shared.victims.current();
                    if victim != victim_seen && victim as usize == i {
                        // Its next heartbeat is the one it does not send.
                        victim_seen = victim;
                        silenced = Some(i);
                        let last = packets.len() - 1 - i;
                        let last = last_sent.get(last).copied().unwrap_or(0);
                        shared.victims.stopped(last);
                    }
                    if silenced == Some(i) {
                        continue;
                    }
                    if packets[i].is_none() {
                        let key = keys[i].1.load(Ordering::Acquire);
                        if key == 0 {
                            continue;
                        }
                        let id = keys[i].0.load(Ordering::Relaxed) as u32;
                        packets[i] = Some(datagram(sim_addr(i), id, key));
                    }
                    let Some(packet) = &packets[i] else { continue };
                    // The victims are the last nodes: when each last sent.
                    if let Some(sent) = last_sent.get_mut(packets.len() - 1 - i) {
                        *sent = shared.now();
                    }
                    iovecs.push(libc::iovec {
                        iov_base: packet.as_ptr() as *mut libc::c_void,
                        iov_len: packet.len(),
                    });
                }
                for iovec in iovecs.iter_mut() {
                    // SAFETY: an all-zero mmsghdr is valid; the pointers set here live
                    // until sendmmsg returns.
                    let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                    header.msg_hdr.msg_name = &address as *const _ as *mut libc::c_void;
                    header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                    header.msg_hdr.msg_iov = iovec;
                    header.msg_hdr.msg_iovlen = 1;
                    headers.push(header);
                }
                let mut sent = 0;
                while sent < headers.len() {
                    // SAFETY: `headers[sent..]` are valid mmsghdrs (see above).
                    let n = unsafe {
                        libc::sendmmsg(
                            fd,
                            headers[sent..].as_mut_ptr(),
                            (headers.len() - sent) as u32,
                            0,
                        )
                    };
                    if n < 0 {
                        let error = std::io::Error::last_os_error();
                        if error.kind() == std::io::ErrorKind::Interrupted {
                            continue;
                        }
                        bail!("sendmmsg: {error}");
                    }
                    sent += n as usize;
                }
                shared.sent.fetch_add(sent as u64, Ordering::Relaxed);
                next += count as u64;
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })();
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd) };
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_addresses_are_distinct_and_clear_of_the_test_bed() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000 {
            let addr = sim_addr(i);
            let [a, b, c, _] = addr.octets();
            assert!(a == 198 && (b == 18 || b == 19), "{addr}");
            assert!(
                (1..255).contains(&c),
                "{addr}: not in a test-bed subnet nor a source"
            );
            assert!(seen.insert(addr), "{addr} twice");
        }
    }

    #[test]
    fn a_datagram_is_a_heartbeat_to_the_nodes_port() {
        let packet = datagram(Ipv4Addr::new(198, 18, 1, 5), 7, 0xabcd);
        assert_eq!(&packet[12..16], &[198, 18, 1, 5]);
        assert_eq!(u16::from_be_bytes([packet[22], packet[23]]), 7000);
        assert_eq!(
            halod_common::heartbeat::parse(&packet[28..]),
            Some(halod_common::heartbeat::Heartbeat { id: 7, key: 0xabcd })
        );
    }
}
