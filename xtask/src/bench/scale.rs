//! Control-plane scale: 1,000 / 5,000 / 10,000 simulated nodes, each on its own TCP
//! connection sending a heartbeat 10 times a second (`heartbeat_ms: 100`), against one
//! `halod run` pinned to CPU 1. Measured: the daemon's resident memory per node (VmRSS
//! after the nodes joined minus before, divided by the nodes), its CPU time over a
//! steady window (utime + stime from /proc/PID/stat), and the failure detection time at
//! that load: a node goes silent (keeps its connection, stops heartbeats) and we time its
//! last heartbeat -> the gateway closing its connection (it fails the node, tells the nodes
//! that take its routes, then closes). Only the victim's own connection is watched: the
//! messages other nodes get may be read late by a busy generator and would be mixed up
//! with the previous victim's.
//!
//! The load generator is a tokio runtime on two threads, on both CPUs at nice 10 (the
//! daemon, on CPU 1, goes first), inside the gateway's namespace: its connections reach the
//! daemon over loopback. Through the test bed's veths and
//! bridge, the kernel's cost per heartbeat (about 10 us on this VM) left one core short of the
//! 100,000 heartbeats a second of 10,000 nodes. Over loopback the kernel receives each
//! heartbeat inline in the generator's `send`, on CPU 0, as a NIC's interrupt would on some
//! core; what the daemon's CPU does is its own work: waking, reading, parsing. Each simulated
//! node has its own name and hello address (198.19.16.1 ...; the gateway only forwards to
//! them, it never connects). 10,000 connections stay under the 20,000 open files of one
//! process and the 28,000 ephemeral ports of one source address, so one process suffices.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::halod::{GatewaySettings, NODES_LISTEN, config_text};
use super::objects::Objects;
use super::process::Process;
use super::traffic::{process_cpu_ns, rss_bytes};
use crate::testbed::{Testbed, netns_command, spawn_in_netns};

pub const HEARTBEAT_MS: u64 = 100;
/// A longer dead window than the default 3: with thousands of nodes, the load generator
/// shares this 2-core machine with the daemon and other work, and its own delays must not
/// fail simulated nodes. Detection is reported against this window.
pub const DEAD_AFTER: u32 = 30;
const VICTIMS: usize = 3;
/// The daemon's CPU; the load generator runs on both, niced.
const DAEMON_CPU: usize = 1;
const GENERATOR_NICE: libc::c_int = 10;
/// Nodes registering at the same time. Each join sends `moved` to the nodes that give up
/// routes; the gateway fails a node with 64 unread messages queued, so a faster mass
/// join makes the daemon (one busy core) fail nodes it cannot write to fast enough.
const JOIN_CONCURRENCY: usize = 16;

#[derive(Debug, Clone)]
pub struct Point {
    pub nodes: usize,
    pub join_seconds: f64,
    pub rss_idle: u64,
    pub rss_loaded: u64,
    pub cpu_percent: f64,
    pub heartbeats_per_second: f64,
    pub detection_ms: Vec<f64>,
}

impl Point {
    pub fn bytes_per_node(&self) -> f64 {
        (self.rss_loaded as f64 - self.rss_idle as f64) / self.nodes as f64
    }
}

#[derive(Debug, Clone)]
pub struct Scale {
    pub window_seconds: u64,
    pub points: Vec<Result<Point, String>>,
}

pub fn run(bed: &Testbed, objects: &Objects, counts: &[usize], window: u64) -> Result<Scale> {
    let mut points = Vec::new();
    for &nodes in counts {
        println!("bench: control plane with {nodes} simulated nodes");
        let point = measure(bed, objects, nodes, window).map_err(|e| format!("{e:#}"));
        match &point {
            Ok(p) => println!(
                "bench:   {:.0} B/node, {:.1}% CPU, detection {:?} ms",
                p.bytes_per_node(),
                p.cpu_percent,
                p.detection_ms
            ),
            Err(e) => println!("bench:   failed: {e}"),
        }
        points.push(point);
    }
    Ok(Scale {
        window_seconds: window,
        points,
    })
}

/// Shared between the load generator's tasks and the measuring thread.
struct Shared {
    base: Instant,
    stop: AtomicBool,
    joined: AtomicU64,
    failed: AtomicU64,
    heartbeats: AtomicU64,
    /// Index of the node that must go silent, or u64::MAX.
    victim: AtomicU64,
    victim_last_hb: AtomicU64,
    /// After this instant (ns since base), the first failure message is noted.
    armed_at: AtomicU64,
    first_event: AtomicU64,
}

impl Shared {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

fn sim_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 16 + (i / 250) as u8, 1 + (i % 250) as u8)
}

fn measure(bed: &Testbed, objects: &Objects, nodes: usize, window: u64) -> Result<Point> {
    let settings = GatewaySettings {
        routes: 65_535,
        base_port: 1,
        heartbeat_ms: HEARTBEAT_MS,
        dead_after: DEAD_AFTER,
        spares: 0,
        max_nodes: (nodes + 16) as u32,
        drain_ms: None,
        flush_pps: None,
    };
    let path = std::env::temp_dir().join(format!("{}scale.yaml", bed.prefix()));
    super::halod::remove_state();
    std::fs::write(&path, config_text(&settings))?;
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
    // With HALOD_LOG=warn the daemon says nothing when ready: wait for its port.
    wait_for_port(bed)?;
    thread::sleep(Duration::from_millis(300));
    let pid = daemon.pid();
    let rss_idle = rss_bytes(pid)?;

    let shared = Arc::new(Shared {
        base: Instant::now(),
        stop: AtomicBool::new(false),
        joined: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        heartbeats: AtomicU64::new(0),
        victim: AtomicU64::new(u64::MAX),
        victim_last_hb: AtomicU64::new(0),
        armed_at: AtomicU64::new(u64::MAX),
        first_event: AtomicU64::new(0),
    });
    let generator = {
        let shared = shared.clone();
        spawn_in_netns(&bed.gateway_ns(), move || -> Result<()> {
            // Both cores, at a lower priority than the daemon: the generator takes what the
            // daemon leaves of CPU 1 and never delays it.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .on_thread_start(|| {
                    // SAFETY: plain syscall on the calling thread (0 = this thread's id).
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, GENERATOR_NICE) };
                })
                .enable_all()
                .build()?;
            runtime.block_on(load(nodes, shared))
        })?
    };
    let result = (|| -> Result<Point> {
        let start = Instant::now();
        while (shared.joined.load(Ordering::SeqCst) as usize) < nodes {
            if shared.failed.load(Ordering::SeqCst) > 0 {
                bail!(
                    "{} simulated nodes could not register (joined {}); the daemon said: {:?}",
                    shared.failed.load(Ordering::SeqCst),
                    shared.joined.load(Ordering::SeqCst),
                    daemon.drain()
                );
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!(
                    "only {} of {nodes} nodes joined in 120 s",
                    shared.joined.load(Ordering::SeqCst)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        let join_seconds = start.elapsed().as_secs_f64();
        // Let the heartbeats settle, then measure a steady window.
        thread::sleep(Duration::from_secs(2));
        let cpu_before = process_cpu_ns(pid)?;
        let hb_before = shared.heartbeats.load(Ordering::SeqCst);
        let t = Instant::now();
        thread::sleep(Duration::from_secs(window));
        let cpu = process_cpu_ns(pid)? - cpu_before;
        let elapsed = t.elapsed().as_secs_f64();
        let heartbeats = (shared.heartbeats.load(Ordering::SeqCst) - hb_before) as f64 / elapsed;
        let rss_loaded = rss_bytes(pid)?;

        let mut detection_ms = Vec::new();
        for v in 0..VICTIMS {
            // The last joined nodes hold the last slots: each failure returns only their
            // routes to the slots they came from.
            let victim = nodes - 1 - v;
            shared.first_event.store(0, Ordering::SeqCst);
            shared.victim_last_hb.store(0, Ordering::SeqCst);
            shared.victim.store(victim as u64, Ordering::SeqCst);
            // The victim notes its last heartbeat when it sees it must stop.
            let deadline = Instant::now() + Duration::from_secs(2);
            while shared.victim_last_hb.load(Ordering::SeqCst) == 0 {
                if Instant::now() > deadline {
                    bail!("the victim node did not stop its heartbeats");
                }
                thread::sleep(Duration::from_millis(1));
            }
            let last_hb = shared.victim_last_hb.load(Ordering::SeqCst);
            shared.armed_at.store(last_hb, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(10);
            let first = loop {
                let first = shared.first_event.load(Ordering::SeqCst);
                if first != 0 {
                    break first;
                }
                if Instant::now() > deadline {
                    bail!("the silent node {victim} was not failed within 10 s");
                }
                thread::sleep(Duration::from_millis(1));
            };
            detection_ms.push((first.saturating_sub(last_hb)) as f64 / 1e6);
            shared.armed_at.store(u64::MAX, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(200));
        }
        Ok(Point {
            nodes,
            join_seconds,
            rss_idle,
            rss_loaded,
            cpu_percent: 100.0 * cpu as f64 / 1e9 / elapsed,
            heartbeats_per_second: heartbeats,
            detection_ms,
        })
    })();
    shared.stop.store(true, Ordering::SeqCst);
    let generated = generator.join();
    drop(daemon); // stops the daemon, then `halod teardown`
    let point = result?;
    match generated {
        Ok(Ok(Ok(()))) => Ok(point),
        Ok(Ok(Err(e))) | Ok(Err(e)) => Err(e.context("the load generator")),
        Err(_) => bail!("the load generator panicked"),
    }
}

fn wait_for_port(bed: &Testbed) -> Result<()> {
    let addr: std::net::SocketAddr = NODES_LISTEN.parse()?;
    for _ in 0..200 {
        let ok = crate::testbed::run_in_netns(&bed.node_ns(1), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
        })?;
        if ok {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("halod run does not listen on {NODES_LISTEN} after 10 s")
}

async fn load(nodes: usize, shared: Arc<Shared>) -> Result<()> {
    let joining = Arc::new(Semaphore::new(JOIN_CONCURRENCY));
    let mut tasks = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let shared = shared.clone();
        let joining = joining.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = node(i, nodes, &shared, &joining).await {
                shared.failed.fetch_add(1, Ordering::SeqCst);
                eprintln!("bench: simulated node s{i}: {e:#}");
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}

async fn node(i: usize, nodes: usize, shared: &Shared, joining: &Semaphore) -> Result<()> {
    let permit = joining.acquire().await?;
    let stream = TcpStream::connect(NODES_LISTEN)
        .await
        .with_context(|| format!("connecting to {NODES_LISTEN}"))?;
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    let hello = format!(
        "{{\"type\":\"hello\",\"version\":1,\"name\":\"s{i}\",\"addr\":\"{}\"}}\n",
        sim_addr(i)
    );
    writer.write_all(hello.as_bytes()).await?;
    let welcome = lines
        .next_line()
        .await?
        .context("the gateway closed the connection before welcome")?;
    if !welcome.contains("\"welcome\"") {
        bail!("expected welcome, got {welcome}");
    }
    drop(permit);
    shared.joined.fetch_add(1, Ordering::SeqCst);
    // Spread the heartbeats of all nodes over the interval.
    let offset = Duration::from_micros((HEARTBEAT_MS * 1000) * i as u64 / nodes as u64);
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + offset,
        Duration::from_millis(HEARTBEAT_MS),
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let note_event = || {
        let now = shared.now();
        if now >= shared.armed_at.load(Ordering::SeqCst)
            && shared.first_event.load(Ordering::SeqCst) == 0
        {
            shared.first_event.store(now, Ordering::SeqCst);
        }
    };
    let mut silent = false;
    // When this node's last heartbeat left (ns since base).
    let mut last_sent = 0;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        tokio::select! {
            _ = ticks.tick() => {
                if silent {
                    continue;
                }
                if shared.victim.load(Ordering::Relaxed) == i as u64 {
                    silent = true;
                    shared.victim_last_hb.store(last_sent.max(1), Ordering::SeqCst);
                    continue;
                }
                writer.write_all(b"{\"type\":\"hb\"}\n").await?;
                last_sent = shared.now();
                shared.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            line = lines.next_line() => {
                match line? {
                    // What the gateway tells a live node is not timed.
                    Some(_) => {}
                    None => {
                        if silent {
                            note_event();
                        } else if !shared.stop.load(Ordering::Relaxed) {
                            bail!("the gateway closed the connection");
                        }
                        // A failed (silent) node's connection is closed by the gateway.
                        loop {
                            if shared.stop.load(Ordering::Relaxed) {
                                return Ok(());
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }
    }
}
